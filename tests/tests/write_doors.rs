//! Every door a write can take keeps the replica-acknowledgement promise
//! (`Builder::replica_acks`): plain commands, key pipelines, atomic
//! pipelines, `MRedis::transaction`, `redis::transaction` and
//! `redis::aio::transaction_async` on the routed handles. One shard (a
//! primary and its replica, real `redis-server` processes); with the replica
//! SIGSTOPped no write through any door may report success, and each write
//! is on the primary all the same (the error says so). On the async client
//! a write waiting for acknowledgements holds up no other request.

use std::time::{Duration, Instant};

use mredis::{MRedis, ReadFrom, Server};
use mredis_tests::{RedisServer, redis_server_available, wait_replicated, wait_until};
use redis::{AsyncCommands, Commands};

/// A primary and its replica, linked, the replica having acknowledged the
/// primary's offset (Redis counts a replica for WAIT only after its first
/// `REPLCONF ACK`).
fn shard() -> (RedisServer, RedisServer) {
    let primary = RedisServer::new();
    let replica = RedisServer::with_args(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
    wait_until("the replica acknowledges its primary", Duration::from_secs(10), || {
        let _: () = primary.conn().set("probe", 1).unwrap();
        let acked: i64 = redis::cmd("WAIT").arg(1).arg(100).query(&mut primary.conn()).unwrap();
        acked == 1
    });
    wait_replicated(&mut primary.conn(), &mut replica.conn());
    (primary, replica)
}

fn servers(primary: &RedisServer, replica: &RedisServer) -> Vec<Server> {
    vec![
        Server::from_url(&primary.url())
            .unwrap()
            .with_replicas([replica.url()])
            .unwrap(),
    ]
}

fn builder(primary: &RedisServer, replica: &RedisServer) -> mredis::Builder {
    MRedis::builder()
        .servers(servers(primary, replica))
        .replica_acks(1, Duration::from_millis(200))
        .response_timeout(Some(Duration::from_secs(2)))
        .connect_timeout(Duration::from_millis(500))
}

/// The error of a write no replica acknowledged.
fn unacknowledged<T: std::fmt::Debug>(door: &str, r: redis::RedisResult<T>) {
    let e = r.expect_err(&format!("{door}: reported success with the replica stopped"));
    let text = e.to_string();
    assert!(
        text.contains("only 0 of 1 replicas acknowledged"),
        "{door}: not the acknowledgement error: {text}"
    );
}

fn sync_doors(mr: &MRedis) -> Vec<(&'static str, redis::RedisResult<()>)> {
    let mut handle = mr.get_connection().unwrap();
    vec![
        ("SET", mr.set("d:plain", 1)),
        (
            "atomic key pipeline",
            mr.pipeline("d:kp").unwrap().atomic().set("d:kp", 1).query::<()>(mr),
        ),
        (
            "MRedis::transaction",
            mr.transaction(&["d:tx"], |con, pipe| {
                let v: Option<i64> = con.get("d:tx")?;
                pipe.set("d:tx", v.unwrap_or(0) + 1).ignore().query(con)
            }),
        ),
        (
            "redis::transaction on a handle",
            redis::transaction(&mut handle, &["d:rt"], |con, pipe| {
                let v: Option<i64> = con.get("d:rt")?;
                pipe.set("d:rt", v.unwrap_or(0) + 1).ignore().query(con)
            }),
        ),
        (
            "atomic pipeline on a handle",
            redis::pipe().atomic().set("d:ap", 1).ignore().query(&mut handle),
        ),
    ]
}

async fn async_doors(amr: &mredis::aio::MRedis) -> Vec<(&'static str, redis::RedisResult<()>)> {
    let mut handle = amr.get_connection().await.unwrap();
    let mut out = vec![
        ("async SET", amr.set("a:plain", 1).await),
        (
            "async atomic key pipeline",
            amr.pipeline("a:kp")
                .unwrap()
                .atomic()
                .set("a:kp", 1)
                .query_async::<()>(amr)
                .await,
        ),
        (
            "async atomic pipeline on a handle",
            redis::pipe()
                .atomic()
                .set("a:ap", 1)
                .ignore()
                .query_async(&mut handle)
                .await,
        ),
    ];
    let tx = redis::aio::transaction_async(handle.clone(), &["a:rt"], |mut con, mut pipe| async move {
        let v: Option<i64> = con.get("a:rt").await?;
        pipe.set("a:rt", v.unwrap_or(0) + 1)
            .ignore()
            .query_async(&mut con)
            .await
    })
    .await;
    out.push(("redis::aio::transaction_async on a handle", tx));
    out
}

const SYNC_KEYS: [&str; 5] = ["d:plain", "d:kp", "d:tx", "d:rt", "d:ap"];
const ASYNC_KEYS: [&str; 4] = ["a:plain", "a:kp", "a:ap", "a:rt"];

#[test]
fn every_write_door_refuses_a_write_no_replica_acknowledged() {
    let _quiet = mredis_tests::quiet();
    if !redis_server_available() {
        return;
    }
    let (primary, replica) = shard();
    let mr = builder(&primary, &replica).build().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let amr = rt.block_on(builder(&primary, &replica).build_async()).unwrap();

    // With the replica up, every door succeeds: the doors are right.
    for (door, r) in sync_doors(&mr) {
        r.unwrap_or_else(|e| panic!("{door} with the replica up: {e}"));
    }
    for (door, r) in rt.block_on(async_doors(&amr)) {
        r.unwrap_or_else(|e| panic!("{door} with the replica up: {e}"));
    }
    for k in SYNC_KEYS.iter().chain(&ASYNC_KEYS) {
        let _: () = primary.conn().del(k).unwrap();
    }
    wait_replicated(&mut primary.conn(), &mut replica.conn());

    replica.sigstop();
    for (door, r) in sync_doors(&mr) {
        unacknowledged(door, r);
    }
    for (door, r) in rt.block_on(async_doors(&amr)) {
        unacknowledged(door, r);
    }
    replica.sigcont();
    // Each refused write did run on the primary: the error says it may be
    // lost on a failover, not that it did not happen.
    let mut con = primary.conn();
    for k in SYNC_KEYS.iter().chain(&ASYNC_KEYS) {
        let v: Option<i64> = con.get(k).unwrap();
        assert_eq!(v, Some(1), "{k} on the primary");
    }
}

/// The replica stopped, 30 async tasks writing with acknowledgements on:
/// every async GET answers (each write waits for its WAIT on a connection
/// of its own, not on the shared one the GETs use).
#[test]
fn async_reads_are_not_held_up_by_writes_waiting_for_replicas() {
    let _quiet = mredis_tests::quiet();
    if !redis_server_available() {
        return;
    }
    let (primary, replica) = shard();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let amr = rt
        .block_on(
            builder(&primary, &replica)
                .replica_acks(1, Duration::from_millis(100))
                .read_from(ReadFrom::Primary)
                .build_async(),
        )
        .unwrap();
    let _: () = primary.conn().set("r:read", "v").unwrap();
    replica.sigstop();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..30)
        .map(|w| {
            let (amr, stop) = (amr.clone(), stop.clone());
            rt.spawn(async move {
                let mut refused = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if amr.incr::<_, _, i64>(format!("r:w{w}"), 1).await.is_err() {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    // A write is waiting in WAIT on the primary before the first read.
    wait_until("a write blocked in WAIT", Duration::from_secs(10), || {
        let info: String = redis::cmd("INFO").arg("clients").query(&mut primary.conn()).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .is_some_and(|n| n.trim() != "0")
    });
    let gets: Vec<_> = (0..10).map(|_| rt.block_on(amr.get::<_, String>("r:read"))).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes: u32 = writers.into_iter().map(|w| rt.block_on(w).unwrap()).sum();
    replica.sigcont();
    assert!(writes >= 30, "every writer had its writes refused ({writes})");
    for g in gets {
        assert_eq!(g.unwrap(), "v");
    }
}

/// PreferReplica with the only replica stopped: a read that timed out on
/// the replica is not sent again with a new deadline; the call costs one
/// response timeout, and later reads go to the primary.
#[test]
fn a_failed_prefer_replica_read_costs_one_response_timeout() {
    let _quiet = mredis_tests::quiet();
    if !redis_server_available() {
        return;
    }
    let (primary, replica) = shard();
    let timeout = Duration::from_millis(1000);
    let mr = MRedis::builder()
        .servers(servers(&primary, &replica))
        .read_from(ReadFrom::PreferReplica)
        .response_timeout(Some(timeout))
        .build()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let amr = rt
        .block_on(
            MRedis::builder()
                .servers(servers(&primary, &replica))
                .read_from(ReadFrom::PreferReplica)
                .response_timeout(Some(timeout))
                .build_async(),
        )
        .unwrap();
    let _: () = primary.conn().set("p:k", "v").unwrap();
    wait_replicated(&mut primary.conn(), &mut replica.conn());
    // Both clients have a connection to the replica (a running client's
    // state): the stopped replica then costs a response timeout, not a
    // connect timeout.
    let replica_gets = || mredis_tests::command_calls(&mut replica.conn(), "get");
    let _: String = mr.get("p:k").unwrap();
    let _: String = rt.block_on(amr.get("p:k")).unwrap();
    assert_eq!(replica_gets(), 2, "prefer-replica reads went to the replica");
    replica.sigstop();
    let t = Instant::now();
    let first = mr.get::<_, String>("p:k");
    let sync_took = t.elapsed();
    let t = Instant::now();
    let first_async = rt.block_on(amr.get::<_, String>("p:k"));
    let async_took = t.elapsed();
    // Then the replica is known to be down: the primary answers.
    let later: String = mr.get("p:k").unwrap();
    let later_async: String = rt.block_on(amr.get("p:k")).unwrap();
    replica.sigcont();
    assert_eq!((later.as_str(), later_async.as_str()), ("v", "v"));
    for (what, r, took) in [("sync", first, sync_took), ("async", first_async, async_took)] {
        // Either answered by the primary in time, or a timeout naming the
        // replica; never a second full timeout on the primary.
        assert!(
            took < timeout + timeout / 2,
            "{what}: one read took {took:?} with a {timeout:?} response timeout"
        );
        if let Err(e) = r {
            let text = e.to_string();
            let replica_addr = format!("replica 127.0.0.1:{}", replica.port());
            assert!(
                text.contains(&replica_addr) && text.contains("waited 1 s"),
                "{what}: not the replica's timeout: {text}"
            );
        }
    }
}
