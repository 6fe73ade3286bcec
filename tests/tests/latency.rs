//! `ReadFrom::LowestLatency` over real processes: one shard, a primary and
//! two replicas (`--replicaof`). Where reads and writes went is what the
//! servers themselves counted (`INFO commandstats`); the prober's view is
//! read through `Server::latencies`, and every wait is for a condition,
//! never for a time. Skipped when no `redis-server` is installed.

use std::time::Duration;

use mredis::{MRedis, ReadFrom, Server};
use mredis_tests::{RedisServer, SentinelFleet, redis_server_available, wait_replicated, wait_until};

/// How long the prober gets to measure (or give up on) a node: a few of
/// its rounds (500 ms apart, 1 s deadline each), on a loaded machine.
const MEASURED: Duration = Duration::from_secs(15);

fn skip() -> bool {
    if !redis_server_available() {
        eprintln!("skipped: redis-server is not installed");
        return true;
    }
    false
}

/// A primary and two replicas, linked.
struct Shard {
    primary: RedisServer,
    replicas: Vec<RedisServer>,
}

impl Shard {
    fn start() -> Shard {
        let primary = RedisServer::new();
        let port = primary.port().to_string();
        let replicas: Vec<RedisServer> = (0..2)
            .map(|_| RedisServer::with_args(&["--replicaof", "127.0.0.1", &port]))
            .collect();
        for r in &replicas {
            wait_until("the replica linked", Duration::from_secs(10), || {
                let info: String = redis::cmd("INFO").arg("replication").query(&mut r.conn()).unwrap();
                info.contains("master_link_status:up")
            });
        }
        Shard { primary, replicas }
    }

    fn nodes(&self) -> impl Iterator<Item = &RedisServer> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }

    /// The shard as a server: the primary with its replicas.
    fn server(&self) -> Server {
        Server::from_url(&self.primary.url())
            .unwrap()
            .with_replicas(self.replicas.iter().map(RedisServer::url))
            .unwrap()
    }

    fn builder(&self, server: Server, policy: ReadFrom) -> mredis::Builder {
        MRedis::builder()
            .servers([server])
            .read_from(policy)
            .connect_timeout(Duration::from_millis(500))
            .response_timeout(Some(Duration::from_secs(2)))
    }

    fn replicated(&self) {
        for r in &self.replicas {
            wait_replicated(&mut self.primary.conn(), &mut r.conn());
        }
    }

    fn reset_stats(&self) {
        for n in self.nodes() {
            let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut n.conn()).unwrap();
        }
    }

    /// GETs counted by each node: primary, replica 0, replica 1.
    fn gets(&self) -> Vec<u64> {
        self.nodes().map(|n| stat(n, "get", "calls")).collect()
    }
}

/// Field `field` of `cmdstat_<name>` on `node` (0 if it has none).
fn stat(node: &RedisServer, name: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut node.conn()).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:")))
        .and_then(|rest| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Waits until the prober has an estimate of each of the `n` nodes of
/// `server`.
fn wait_measured_n(server: &Server, n: usize) {
    wait_until("every node of the shard measured", MEASURED, || {
        let nodes = server.latencies();
        nodes.len() == n && nodes.iter().all(|n| n.estimate.is_some())
    });
}

fn wait_measured(server: &Server) {
    wait_measured_n(server, 3);
}

/// After writes through a LowestLatency client: every SET ran on the
/// primary, and no replica refused one (a SET sent to a replica is
/// refused with -READONLY, which its `rejected_calls` counts; the SETs it
/// replicates from its primary are counted as calls, so calls alone
/// would not tell).
fn assert_writes_on_the_primary(shard: &Shard, writes: u64) {
    assert_eq!(stat(&shard.primary, "set", "calls"), writes, "every SET on the primary");
    for (i, r) in shard.replicas.iter().enumerate() {
        assert_eq!(stat(r, "set", "rejected_calls"), 0, "a SET was sent to replica {i}");
    }
}

fn keys() -> Vec<String> {
    (0..30).map(|i| format!("latency:{i}")).collect()
}

#[test]
fn lowest_latency_reads_stay_in_the_shard_and_writes_on_the_primary() {
    let _quiet = mredis_tests::quiet();
    if skip() {
        return;
    }
    let shard = Shard::start();
    let server = shard.server();
    let mr = shard.builder(server.clone(), ReadFrom::LowestLatency).build().unwrap();
    // The primary first, then the replicas, as configured.
    let listed: Vec<(String, bool)> = server.latencies().into_iter().map(|n| (n.node, n.primary)).collect();
    let expected: Vec<(String, bool)> = shard.nodes().enumerate().map(|(i, n)| (n.addr(), i == 0)).collect();
    assert_eq!(listed, expected);

    let keys = keys();
    shard.reset_stats();
    for (i, k) in keys.iter().enumerate() {
        mr.set::<_, _, ()>(k, i).unwrap();
    }
    assert_writes_on_the_primary(&shard, keys.len() as u64);
    shard.replicated();
    wait_measured(&server);

    shard.reset_stats();
    for _ in 0..10 {
        for (i, k) in keys.iter().enumerate() {
            let v: i64 = mr.get(k).unwrap();
            assert_eq!(v, i as i64);
        }
    }
    let values: Vec<i64> = mr.mget(&keys).unwrap();
    assert_eq!(values, (0..30).collect::<Vec<i64>>());
    let gets = shard.gets();
    eprintln!("GETs per node (primary, replica 0, replica 1): {gets:?}");
    assert_eq!(
        gets.iter().sum::<u64>(),
        300,
        "each GET ran once, on a node of the shard: {gets:?}"
    );
    let mgets: u64 = shard.nodes().map(|n| stat(n, "mget", "calls")).sum();
    assert_eq!(mgets, 1, "the MGET ran once, on one node");

    // Writes made while reads go by latency (`incr` sends INCRBY): still
    // on the primary.
    shard.reset_stats();
    for k in &keys {
        let n: i64 = mr.incr(k, 1).unwrap();
        assert!(n >= 1);
    }
    assert_eq!(stat(&shard.primary, "incrby", "calls"), 30);
    for r in &shard.replicas {
        assert_eq!(
            stat(r, "incrby", "rejected_calls"),
            0,
            "an INCRBY was sent to a replica"
        );
    }

    // Per call: the primary only.
    shard.reset_stats();
    let v: i64 = mr.reading_from(ReadFrom::Primary).get(&keys[0]).unwrap();
    assert_eq!(v, 1);
    assert_eq!(shard.gets(), vec![1, 0, 0]);
}

#[test]
fn lowest_latency_per_call_starts_the_prober_of_a_primary_client() {
    let _quiet = mredis_tests::quiet();
    if skip() {
        return;
    }
    let shard = Shard::start();
    let server = shard.server();
    let mr = shard.builder(server.clone(), ReadFrom::Primary).build().unwrap();
    mr.set::<_, _, ()>("latency:one", "v").unwrap();
    shard.replicated();
    // No prober yet: a Primary client measures nothing.
    assert!(server.latencies().iter().all(|n| n.estimate.is_none()));
    let fast = mr.reading_from(ReadFrom::LowestLatency);
    let v: String = fast.get("latency:one").unwrap();
    assert_eq!(v, "v");
    // That read started it.
    wait_measured(&server);
    shard.reset_stats();
    for _ in 0..50 {
        let v: String = fast.get("latency:one").unwrap();
        assert_eq!(v, "v");
    }
    assert_eq!(shard.gets().iter().sum::<u64>(), 50);
}

#[test]
fn lowest_latency_async_reads_stay_in_the_shard_and_writes_on_the_primary() {
    let _quiet = mredis_tests::quiet();
    if skip() {
        return;
    }
    let shard = Shard::start();
    let server = shard.server();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mr = rt
        .block_on(shard.builder(server.clone(), ReadFrom::LowestLatency).build_async())
        .unwrap();
    let keys = keys();
    shard.reset_stats();
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            mr.set::<_, _, ()>(k, i).await.unwrap();
        }
    });
    assert_writes_on_the_primary(&shard, keys.len() as u64);
    shard.replicated();
    wait_measured(&server);
    shard.reset_stats();
    rt.block_on(async {
        // Concurrent tasks, as a server would read.
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (mr, keys) = (mr.clone(), keys.clone());
                tokio::spawn(async move {
                    for (i, k) in keys.iter().enumerate() {
                        let v: i64 = mr.get(k).await.unwrap();
                        assert_eq!(v, i as i64);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let gets = shard.gets();
    assert_eq!(
        gets.iter().sum::<u64>(),
        300,
        "each GET ran once, on a node of the shard: {gets:?}"
    );
    let v: i64 = rt.block_on(mr.reading_from(ReadFrom::Primary).get(&keys[3])).unwrap();
    assert_eq!(v, 3);
    assert_eq!(shard.gets()[0], gets[0] + 1, "the per-call Primary read on the primary");
}

#[test]
fn a_stopped_replica_is_avoided_once_the_prober_sees_it_sync_and_async() {
    let _quiet = mredis_tests::quiet();
    if skip() {
        return;
    }
    let shard = Shard::start();
    let server = shard.server();
    let mr = shard.builder(server.clone(), ReadFrom::LowestLatency).build().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The same shard state: both clients see the one prober's estimates
    // (and each runs its own).
    let amr = rt
        .block_on(shard.builder(server.clone(), ReadFrom::LowestLatency).build_async())
        .unwrap();
    let keys = keys();
    for (i, k) in keys.iter().enumerate() {
        mr.set::<_, _, ()>(k, i).unwrap();
    }
    shard.replicated();
    wait_measured(&server);
    // Reads before the stop: every client has its replica connections.
    for k in &keys {
        let _: i64 = mr.get(k).unwrap();
        let _: i64 = rt.block_on(amr.get(k)).unwrap();
    }
    let stopped = &shard.replicas[0];
    let stopped_addr = stopped.addr();
    let before = stat(stopped, "get", "calls");
    // (A stopped server is killed on drop, so a failing assertion below
    // leaves no process behind.)
    stopped.sigstop();
    wait_until("the prober to mark the stopped replica not answering", MEASURED, || {
        server
            .latencies()
            .iter()
            .any(|n| n.node == stopped_addr && n.estimate.is_none())
    });
    let others = [&shard.primary, &shard.replicas[1]];
    for n in others {
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut n.conn()).unwrap();
    }
    for _ in 0..5 {
        for (i, k) in keys.iter().enumerate() {
            let v: i64 = mr.get(k).unwrap();
            assert_eq!(v, i as i64, "sync read of {k}");
            let v: i64 = rt.block_on(amr.get(k)).unwrap();
            assert_eq!(v, i as i64, "async read of {k}");
        }
    }
    stopped.sigcont();
    assert_eq!(
        stat(stopped, "get", "calls"),
        before,
        "a read reached the replica that was stopped"
    );
    // The others served them all.
    let served: u64 = others.iter().map(|n| stat(n, "get", "calls")).sum();
    assert_eq!(served, 300, "GETs on the primary and the other replica");
    // Once it answers again, it is measured again.
    wait_until("the resumed replica measured again", MEASURED, || {
        server
            .latencies()
            .iter()
            .any(|n| n.node == stopped_addr && n.estimate.is_some())
    });
}

#[test]
fn a_sentinel_shard_is_measured_and_read_by_latency() {
    let _quiet = mredis_tests::quiet();
    if skip() {
        return;
    }
    let fleet = SentinelFleet::start(1);
    let sh = &fleet.shards[0];
    let server = Server::sentinel(&sh.name, fleet.sentinel_urls()).unwrap();
    let mr = MRedis::builder()
        .servers([server.clone()])
        .read_from(ReadFrom::LowestLatency)
        .response_timeout(Some(Duration::from_secs(2)))
        .build()
        .unwrap();
    // The nodes Sentinel named: its primary, then its replica.
    wait_measured_n(&server, 2);
    let listed: Vec<(String, bool)> = server.latencies().into_iter().map(|n| (n.node, n.primary)).collect();
    assert_eq!(listed, vec![(sh.primary.addr(), true), (sh.replica.addr(), false)]);
    let keys = keys();
    for (i, k) in keys.iter().enumerate() {
        mr.set::<_, _, ()>(k, i).unwrap();
    }
    wait_replicated(&mut sh.primary.conn(), &mut sh.replica.conn());
    for n in [&sh.primary, &sh.replica] {
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut n.conn()).unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        let v: i64 = mr.get(k).unwrap();
        assert_eq!(v, i as i64);
    }
    mr.set::<_, _, ()>("latency:write", 1).unwrap();
    let gets: u64 = [&sh.primary, &sh.replica].iter().map(|n| stat(n, "get", "calls")).sum();
    assert_eq!(gets, 30, "each GET once, on a node of the shard");
    assert_eq!(stat(&sh.primary, "set", "calls"), 1, "the SET on the primary");
    assert_eq!(
        stat(&sh.replica, "set", "rejected_calls"),
        0,
        "a SET was sent to the replica"
    );
}
