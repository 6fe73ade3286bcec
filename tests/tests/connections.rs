//! One place opens every connection: a client with every kind of
//! connection at once (pooled, shared, dedicated, subscriber, Sentinel,
//! health checks, latency probes, the finish watcher) names each as the
//! census expects and counts each in `connections_opened`; no connection
//! of the client on any server or sentinel is left unnamed (none bypassed
//! the setup). Real `redis-server` processes and sentinels.

use std::time::Duration;

use mredis::health::HealthCheck;
use mredis::{MRedis, ReadFrom, Server};
use mredis_tests::{RedisServer, SentinelFleet, redis_server_available, wait_until};

/// `CLIENT LIST` of a server or sentinel: (name, lib-name, flags) per
/// connection, the caller's own left out.
fn clients(con: &mut redis::Connection) -> Vec<(String, String, String)> {
    let me: u64 = redis::cmd("CLIENT").arg("ID").query(con).unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(con).unwrap();
    list.lines()
        .filter_map(|line| {
            let field = |key: &str| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                    .unwrap_or("")
                    .to_string()
            };
            (field("id") != me.to_string()).then(|| (field("name"), field("lib-name"), field("flags")))
        })
        .collect()
}

#[test]
fn every_kind_of_connection_is_opened_named_and_counted_in_one_place() {
    if !redis_server_available() {
        return;
    }
    let _quiet = mredis_tests::quiet();
    let fleet = SentinelFleet::start(1);
    let plain: Vec<RedisServer> = (0..2).map(|_| RedisServer::new()).collect();
    let named = |s: &RedisServer, i: usize| Server::from_url(&s.url()).unwrap().with_alias(format!("p{i}"));
    let shard = Server::sentinel(&fleet.shards[0].name, fleet.sentinel_urls()).unwrap();
    let builder = || {
        MRedis::builder()
            .servers(vec![named(&plain[0], 0), named(&plain[1], 1), shard.clone()])
            // Migration-aware (from the first server alone): a finish watcher.
            .migrating_from(MRedis::builder().servers(vec![named(&plain[0], 0)]))
            .health_check(HealthCheck {
                interval: Duration::from_millis(100),
                ..Default::default()
            })
            // The latency prober, started at build.
            .read_from(ReadFrom::LowestLatency)
    };
    let mr = builder().build().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let amr = rt.block_on(builder().build_async()).unwrap();
    // Pooled (sync), shared (async), dedicated (an async blocking command),
    // subscriber.
    for i in 0..30 {
        let k = format!("kinds:{i}");
        mr.set::<_, _, ()>(&k, i).unwrap();
        assert_eq!(rt.block_on(amr.get::<_, i64>(&k)).unwrap(), i);
    }
    let popped: Option<(String, String)> = rt.block_on(amr.blpop("kinds:empty", 0.1)).unwrap();
    assert_eq!(popped, None);
    let subscriber = rt.block_on(async { amr.subscriber() }).unwrap();
    rt.block_on(subscriber.subscribe("kinds:news")).unwrap();

    // Counted by kind, sync client and async client each.
    wait_until("every background kind counted", Duration::from_secs(10), || {
        let n = mr.connections_opened();
        n.pooled > 0 && n.sentinel > 0 && n.health > 0 && n.latency > 0 && n.finish > 0
    });
    let n = amr.connections_opened();
    assert!(n.shared > 0 && n.dedicated > 0 && n.subscriber > 0, "{n:?}");
    let s = mr.connections_opened();
    assert_eq!(
        (s.shared, s.dedicated, s.subscriber),
        (0, 0, 0),
        "the sync client opened no async connection: {s:?}"
    );

    // Named as the census expects, on every server and sentinel.
    let mut names = Vec::new();
    let mut cons: Vec<redis::Connection> = plain.iter().map(RedisServer::conn).collect();
    cons.push(fleet.conn(fleet.shards[0].primary.port()));
    cons.push(fleet.conn(fleet.shards[0].replica.port()));
    for c in &mut cons {
        for (name, lib, flags) in clients(c) {
            // Replication links and the sentinels' own connections aside,
            // every connection is one of the two clients': named.
            if flags.contains('S') || flags.contains('M') || name.starts_with("sentinel-") {
                continue;
            }
            assert!(
                name.starts_with("mredis:"),
                "a connection ({name:?}, lib {lib:?}) was opened without the setup"
            );
            names.push(name);
        }
    }
    for url in fleet.sentinel_urls() {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        for (name, _, _) in clients(&mut c) {
            if name.starts_with("sentinel-") {
                continue;
            }
            assert!(name.starts_with("mredis:"), "a sentinel connection {name:?} is unnamed");
            names.push(name);
        }
    }
    let client_name = names
        .iter()
        .find(|n| n.contains(":from:") && !n.ends_with(":watch"))
        .expect("the clients' data connections")
        .clone();
    assert!(
        names.contains(&format!("{client_name}:watch")),
        "the finish watcher: {names:?}"
    );
    assert!(names.iter().any(|n| n == "mredis:subscriber"), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with(&client_name) || n == "mredis:subscriber"),
        "every connection carries the client's configuration: {names:?}"
    );
    // Not more connections open than were opened through the one place.
    let total = |n: mredis::ConnectionsOpened| {
        n.pooled + n.shared + n.dedicated + n.subscriber + n.sentinel + n.health + n.latency + n.finish
    };
    assert!(
        names.len() as u64 <= total(mr.connections_opened()) + total(amr.connections_opened()),
        "{} named connections, {:?} + {:?} opened",
        names.len(),
        mr.connections_opened(),
        amr.connections_opened()
    );
    drop(subscriber);
}
