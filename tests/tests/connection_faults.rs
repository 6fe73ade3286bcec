//! Connections that go bad under the client, and blocking commands.
//!
//! - A pooled connection the server closed (idle `timeout`, a restart) is
//!   replaced, and a read sent again, without the caller seeing an error.
//! - A blocking command (BLPOP) waits its block time plus the response
//!   timeout, and in the async client runs on a connection of its own, so
//!   the server's other commands are not held up behind it.
//! - A BLPOP whose future is dropped loses no element: each is received
//!   by a caller or still in the list.
//!
//! Every wait here polls the server (CLIENT LIST) for the state it waits
//! for; none sleeps and assumes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mredis::MRedis;
use mredis_tests::{RedisServer, wait_until};

/// The server's CLIENT LIST, on a connection of its own.
fn client_list(server: &RedisServer) -> String {
    redis::cmd("CLIENT").arg("LIST").query(&mut server.conn()).unwrap()
}

/// How many clients other than the one asking are connected.
fn other_clients(server: &RedisServer) -> usize {
    client_list(server)
        .lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .count()
}

/// How many clients are blocked in BLPOP now (flag `b`; an idle
/// connection whose last command was BLPOP shows `cmd=blpop` too).
fn blocked_in_blpop(server: &RedisServer) -> usize {
    client_list(server)
        .lines()
        .filter(|l| {
            l.contains(" cmd=blpop ")
                && l.split(' ')
                    .any(|f| f.strip_prefix("flags=").is_some_and(|flags| flags.contains('b')))
        })
        .count()
}

fn sync_client(server: &RedisServer, response_timeout: Duration) -> MRedis {
    MRedis::builder()
        .servers([server.url()])
        .pool_size(16)
        .response_timeout(Some(response_timeout))
        .build()
        .unwrap()
}

async fn async_client(server: &RedisServer, response_timeout: Duration) -> mredis::aio::MRedis {
    mredis::aio::MRedis::builder()
        .servers([server.url()])
        .pool_size(16)
        .response_timeout(Some(response_timeout))
        .build_async()
        .await
        .unwrap()
}

/// Fills the sync client's pool: 16 transactions holding their
/// connections at once, so 16 connections, all given back.
fn fill_pool(mr: &MRedis) {
    let barrier = std::sync::Barrier::new(16);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                mr.transaction(&["k"], |_con, _pipe| {
                    barrier.wait();
                    Ok(Some(()))
                })
                .unwrap();
            });
        }
    });
}

#[test]
fn sync_gets_succeed_after_the_server_closed_idle_pooled_connections() {
    let server = RedisServer::new();
    let mr = sync_client(&server, Duration::from_secs(2));
    mr.set::<_, _, ()>("k", "v").unwrap();
    fill_pool(&mr);
    let pooled = other_clients(&server);
    assert_eq!(pooled, 16, "the pool holds {pooled} connections");
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("timeout")
        .arg(1)
        .exec(&mut server.conn())
        .unwrap();
    wait_until("the server closed the idle clients", Duration::from_secs(10), || {
        other_clients(&server) == 0
    });
    let mut failures = Vec::new();
    for i in 0..40 {
        if let Err(e) = mr.get::<_, Option<String>>("k") {
            failures.push(format!("GET {i}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 40 GETs failed: {failures:?}",
        failures.len()
    );
}

#[test]
fn sync_calls_started_after_a_restart_succeed() {
    let mut server = RedisServer::new();
    let mr = sync_client(&server, Duration::from_secs(2));
    mr.set::<_, _, ()>("k", "v").unwrap();
    fill_pool(&mr);
    server.restart();
    let mut failures = Vec::new();
    for i in 0..40 {
        match mr.get::<_, Option<String>>("k") {
            Ok(None) => {}
            Ok(Some(v)) => failures.push(format!("GET {i}: {v} from an emptied server")),
            Err(e) => failures.push(format!("GET {i}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 40 GETs failed: {failures:?}",
        failures.len()
    );
    // A write on a dead pooled connection is not sent twice: at most the
    // first fails (the pool is emptied then), the rest succeed.
    fill_pool(&mr);
    server.restart();
    let errors = (0..20)
        .filter(|i| mr.set::<_, _, ()>(format!("w{i}"), i).is_err())
        .count();
    assert!(errors <= 1, "{errors} of 20 SETs failed after a restart");
    // Once the pool has been idle a second, its connections are checked
    // before use: writes after a restart see no error at all.
    fill_pool(&mr);
    let idle_since = std::time::Instant::now();
    server.restart();
    let idle = Duration::from_millis(1100).saturating_sub(idle_since.elapsed());
    std::thread::sleep(idle); // the pool's age, not a synchronisation
    let errors: Vec<String> = (0..20)
        .filter_map(|i| mr.set::<_, _, ()>(format!("x{i}"), i).err().map(|e| e.to_string()))
        .collect();
    assert!(
        errors.is_empty(),
        "{} of 20 SETs failed after a restart: {errors:?}",
        errors.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_gets_succeed_after_idle_timeout_and_restart() {
    let mut server = RedisServer::new();
    let mr = async_client(&server, Duration::from_secs(2)).await;
    mr.set::<_, _, ()>("k", "v").await.unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("timeout")
        .arg(1)
        .exec(&mut server.conn())
        .unwrap();
    wait_until("the server closed the idle client", Duration::from_secs(10), || {
        other_clients(&server) == 0
    });
    let mut failures = Vec::new();
    for i in 0..40 {
        if let Err(e) = mr.get::<_, Option<String>>("k").await {
            failures.push(format!("GET {i} after the idle timeout: {e}"));
        }
    }
    server.restart();
    for i in 0..40 {
        if let Err(e) = mr.get::<_, Option<String>>("k").await {
            failures.push(format!("GET {i} after the restart: {e}"));
        }
    }
    assert!(failures.is_empty(), "{} GETs failed: {failures:?}", failures.len());
    // Writes too, once the connection had been idle a second: a PING
    // first finds the closed connection and the write goes on a new one.
    let idle_since = Instant::now();
    server.restart();
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(idle_since.elapsed())).await; // idle age, not a synchronisation
    let mut errors = Vec::new();
    for i in 0..20 {
        if let Err(e) = mr.set::<_, _, ()>(format!("w{i}"), i).await {
            errors.push(format!("SET {i}: {e}"));
        }
    }
    assert!(
        errors.is_empty(),
        "{} SETs failed after a restart: {errors:?}",
        errors.len()
    );
}

#[test]
fn sync_blpop_longer_than_the_response_timeout_gets_its_element() {
    let server = RedisServer::new();
    let mr = sync_client(&server, Duration::from_secs(1));
    let started = Instant::now();
    let got = std::thread::scope(|s| {
        let pop = s.spawn(|| mr.blpop::<_, Option<(String, String)>>("L", 3.0));
        // Pushes at 2 s, while the client is still blocked (past its 1 s
        // response timeout).
        wait_until("BLPOP blocks past 2 s", Duration::from_secs(10), || {
            blocked_in_blpop(&server) == 1 && started.elapsed() >= Duration::from_secs(2)
        });
        redis::cmd("RPUSH").arg("L").arg("x").exec(&mut server.conn()).unwrap();
        pop.join().unwrap()
    });
    assert_eq!(got.unwrap(), Some(("L".to_string(), "x".to_string())));
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_blpop_longer_than_the_response_timeout_gets_its_element() {
    let server = RedisServer::new();
    let mr = async_client(&server, Duration::from_secs(1)).await;
    let started = Instant::now();
    let pop = tokio::spawn({
        let mr = mr.clone();
        async move { mr.blpop::<_, Option<(String, String)>>("L", 3.0).await }
    });
    let admin = &server;
    tokio::task::block_in_place(|| {
        wait_until("BLPOP blocks past 2 s", Duration::from_secs(10), || {
            blocked_in_blpop(admin) == 1 && started.elapsed() >= Duration::from_secs(2)
        });
        redis::cmd("RPUSH").arg("L").arg("x").exec(&mut admin.conn()).unwrap();
    });
    let got = pop.await.unwrap();
    assert_eq!(got.unwrap(), Some(("L".to_string(), "x".to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_gets_to_a_server_are_answered_while_a_blpop_blocks_there() {
    let server = RedisServer::new();
    let mr = async_client(&server, Duration::from_secs(1)).await;
    for i in 0..20 {
        mr.set::<_, _, ()>(format!("k{i}"), i).await.unwrap();
    }
    let pop = tokio::spawn({
        let mr = mr.clone();
        async move { mr.blpop::<_, Option<(String, String)>>("L", 30.0).await }
    });
    let admin = &server;
    tokio::task::block_in_place(|| {
        wait_until("BLPOP blocks", Duration::from_secs(10), || blocked_in_blpop(admin) == 1)
    });
    for i in 0..20 {
        let v: i64 = mr.get(format!("k{i}")).await.unwrap();
        assert_eq!(v, i);
    }
    // Every GET was answered while the BLPOP still blocks on that server.
    assert_eq!(blocked_in_blpop(&server), 1);
    assert!(!pop.is_finished());
    redis::cmd("RPUSH").arg("L").arg("x").exec(&mut server.conn()).unwrap();
    assert_eq!(pop.await.unwrap().unwrap(), Some(("L".to_string(), "x".to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_async_blpops_lose_no_element() {
    const ELEMENTS: usize = 10_000;
    let server = RedisServer::new();
    let mr = async_client(&server, Duration::from_secs(1)).await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let (mr, done) = (mr.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut dropped = 0usize;
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (w + 1);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let deadline = Duration::from_micros(50 + (seed >> 33) % 3_000);
                let block = if seed.is_multiple_of(3) { 0.0 } else { 2.0 };
                match tokio::time::timeout(deadline, mr.blpop::<_, Option<(String, String)>>("L", block)).await {
                    Ok(Ok(Some((_, v)))) => got.push(v),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => panic!("BLPOP failed: {e}"),
                    Err(_) => dropped += 1,
                }
            }
            (got, dropped)
        }));
    }
    // The producer, on its own connection.
    let producer = tokio::task::spawn_blocking({
        let url = server.url();
        move || {
            let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
            for i in 0..ELEMENTS {
                redis::cmd("RPUSH")
                    .arg("L")
                    .arg(format!("e{i}"))
                    .exec(&mut con)
                    .unwrap();
                if i % 5 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    });
    producer.await.unwrap();
    // Until the list is drained or a while has passed, then stop.
    let admin = &server;
    let llen = |s: &RedisServer| -> usize { redis::cmd("LLEN").arg("L").query(&mut s.conn()).unwrap() };
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    tokio::task::block_in_place(|| {
        while llen(admin) > 0 && Instant::now() < drain_deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut received = Vec::new();
    let mut dropped = 0;
    for w in workers {
        let (got, d) = w.await.unwrap();
        received.extend(got);
        dropped += d;
    }
    assert!(dropped > 50, "only {dropped} calls were dropped: the test did not test");
    // A dropped call's rescue may still be giving an element back: poll
    // until received + left add up (or fail with the counts).
    let left = || -> Vec<String> {
        redis::cmd("LRANGE")
            .arg("L")
            .arg(0)
            .arg(-1)
            .query(&mut admin.conn())
            .unwrap()
    };
    let mut in_list = Vec::new();
    let settle = Instant::now() + Duration::from_secs(10);
    tokio::task::block_in_place(|| {
        loop {
            in_list = left();
            let blocked = blocked_in_blpop(admin);
            if (received.len() + in_list.len() == ELEMENTS && blocked == 0) || Instant::now() >= settle {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    eprintln!(
        "received {}, in the list {}, dropped calls {dropped}, blocked {}",
        received.len(),
        in_list.len(),
        blocked_in_blpop(&server)
    );
    let all: HashSet<&String> = received.iter().chain(&in_list).collect();
    assert_eq!(
        all.len(),
        received.len() + in_list.len(),
        "an element was received twice or is both received and in the list"
    );
    assert_eq!(
        received.len() + in_list.len(),
        ELEMENTS,
        "received {}, left in the list {}, dropped calls {dropped}: {} lost",
        received.len(),
        in_list.len(),
        ELEMENTS - received.len() - in_list.len()
    );
}

#[test]
fn sync_blpop_with_block_zero_has_no_client_deadline() {
    let server = RedisServer::new();
    let mr = sync_client(&server, Duration::from_millis(300));
    let started = Instant::now();
    let got = std::thread::scope(|s| {
        let pop = s.spawn(|| mr.blpop::<_, Option<(String, String)>>("L", 0.0));
        wait_until("BLPOP blocks for 3 response timeouts", Duration::from_secs(10), || {
            blocked_in_blpop(&server) == 1 && started.elapsed() >= Duration::from_millis(900)
        });
        assert!(!pop.is_finished());
        redis::cmd("RPUSH").arg("L").arg("x").exec(&mut server.conn()).unwrap();
        pop.join().unwrap()
    });
    assert_eq!(got.unwrap(), Some(("L".to_string(), "x".to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_blpop_with_block_zero_has_no_client_deadline() {
    let server = RedisServer::new();
    let mr = async_client(&server, Duration::from_millis(300)).await;
    let started = Instant::now();
    let pop = tokio::spawn({
        let mr = mr.clone();
        async move { mr.blpop::<_, Option<(String, String)>>("L", 0.0).await }
    });
    let admin = &server;
    tokio::task::block_in_place(|| {
        wait_until("BLPOP blocks for 3 response timeouts", Duration::from_secs(10), || {
            blocked_in_blpop(admin) == 1 && started.elapsed() >= Duration::from_millis(900)
        });
    });
    assert!(!pop.is_finished());
    redis::cmd("RPUSH").arg("L").arg("x").exec(&mut server.conn()).unwrap();
    assert_eq!(pop.await.unwrap().unwrap(), Some(("L".to_string(), "x".to_string())));
}
