//! The Sentinel harness itself ([`SentinelFleet`]): what the Sentinel tests
//! rely on, checked against real `redis-server` and `--sentinel` processes.
//! Skipped when no `redis-server` is installed.

use std::time::{Duration, Instant};

use mredis_tests::{SentinelFleet, redis_server_available, wait_until};

/// How long a failover may take (down-after 1 s, then a vote and the
/// promotion; a failed vote is retried only after 2 x failover-timeout).
const FAILOVER: Duration = Duration::from_secs(15);

fn skip() -> bool {
    if !redis_server_available() {
        eprintln!("skipped: redis-server is not installed");
        return true;
    }
    false
}

/// The first element of `ROLE` on the data server on `port`.
fn role(fleet: &SentinelFleet, port: u16) -> String {
    let role: redis::Value = redis::cmd("ROLE").query(&mut fleet.conn(port)).unwrap();
    match role {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(redis::Value::SimpleString(s)) => s.clone(),
            other => panic!("ROLE on {port}: unexpected first element {other:?}"),
        },
        other => panic!("ROLE on {port}: unexpected reply {other:?}"),
    }
}

#[test]
fn start_reports_the_primaries_and_replicates_to_the_replicas() {
    let _quiet = mredis_tests::quiet();
    if skip() {
        return;
    }
    let started = Instant::now();
    let fleet = SentinelFleet::start(3);
    eprintln!("SentinelFleet::start(3) ready for failovers in {:?}", started.elapsed());
    assert_eq!(fleet.shards.len(), 3);
    assert_eq!(fleet.sentinels.len(), 3);
    let urls = fleet.sentinel_urls();
    assert_eq!(urls.len(), 3);
    for (url, s) in urls.iter().zip(&fleet.sentinels) {
        assert_eq!(url, &format!("redis://127.0.0.1:{}", s.port()));
        let pong: String = redis::cmd("PING").query(&mut s.conn()).unwrap();
        assert_eq!(pong, "PONG");
    }
    for (i, shard) in fleet.shards.iter().enumerate() {
        assert_eq!(shard.name, format!("shard-{i}"));
        assert_eq!(fleet.master_port(i), shard.primary.port(), "{}", shard.name);
        assert_eq!(fleet.server_on_port(shard.primary.port()).port(), shard.primary.port());
        assert_eq!(fleet.server_on_port(shard.replica.port()).port(), shard.replica.port());
        assert_eq!(role(&fleet, shard.primary.port()), "master");
        assert_eq!(role(&fleet, shard.replica.port()), "slave");

        let key = format!("harness:{i}");
        redis::cmd("SET")
            .arg(&key)
            .arg(i)
            .exec(&mut shard.primary.conn())
            .unwrap();
        let mut replica = shard.replica.conn();
        wait_until(
            &format!("{key} to reach the replica of {}", shard.name),
            Duration::from_secs(10),
            || {
                redis::cmd("GET")
                    .arg(&key)
                    .query::<Option<usize>>(&mut replica)
                    .unwrap()
                    == Some(i)
            },
        );
    }
}

#[test]
fn a_killed_primary_is_replaced_by_its_replica() {
    let _quiet = mredis_tests::quiet();
    if skip() {
        return;
    }
    let mut fleet = SentinelFleet::start(3);
    let before: Vec<u16> = (0..3).map(|i| fleet.master_port(i)).collect();
    let old = fleet.shards[1].primary.port();
    assert_eq!(before[1], old);

    let killed = Instant::now();
    fleet.shards[1].primary.stop(); // SIGKILL
    let new = fleet.wait_for_new_master(1, old, FAILOVER);
    let took = killed.elapsed();
    eprintln!("SIGKILL of shard-1's primary to promotion seen by all sentinels: {took:?}");

    let replica = fleet.shards[1].replica.port();
    assert_eq!(new, replica);
    assert_eq!(fleet.master_port(1), replica);
    assert!(std::ptr::eq(fleet.server_on_port(new), &fleet.shards[1].replica));
    assert_eq!(role(&fleet, new), "master");
    redis::cmd("SET")
        .arg("after-failover")
        .arg(1)
        .exec(&mut fleet.conn(new))
        .unwrap();
    let got: Option<i64> = redis::cmd("GET")
        .arg("after-failover")
        .query(&mut fleet.conn(new))
        .unwrap();
    assert_eq!(got, Some(1));
    assert_eq!(fleet.master_port(0), before[0], "shard-0 keeps its master");
    assert_eq!(fleet.master_port(2), before[2], "shard-2 keeps its master");
}

#[test]
fn a_frozen_primary_is_replaced_then_follows_the_new_master() {
    let _quiet = mredis_tests::quiet();
    if skip() {
        return;
    }
    let fleet = SentinelFleet::start(1);
    let shard = &fleet.shards[0];
    let old = shard.primary.port();
    assert_eq!(fleet.master_port(0), old);

    let frozen = Instant::now();
    shard.primary.sigstop();
    let new = fleet.wait_for_new_master(0, old, FAILOVER);
    eprintln!(
        "SIGSTOP of the primary to promotion seen by all sentinels: {:?}",
        frozen.elapsed()
    );
    assert_eq!(new, shard.replica.port());
    assert_eq!(role(&fleet, new), "master");

    let resumed = Instant::now();
    shard.primary.sigcont();
    // A sentinel converts a returning old master once it has reported its
    // stale role for 8 s (and it polls replicas' INFO every 10 s).
    wait_until(
        "the old primary to become a replica of the new master",
        Duration::from_secs(60),
        || {
            fleet
                .replication_info(old)
                .is_some_and(|i| i.contains("role:slave") && i.contains(&format!("master_port:{new}")))
        },
    );
    eprintln!(
        "SIGCONT to the old primary being a replica again: {:?}",
        resumed.elapsed()
    );
    assert_eq!(fleet.master_port(0), new);
    assert_eq!(role(&fleet, old), "slave");
}

#[test]
fn a_fleet_with_a_password_syncs_and_fails_over() {
    let _quiet = mredis_tests::quiet();
    if skip() {
        return;
    }
    let mut fleet = SentinelFleet::start_with(1, &["--requirepass", "s3cret"]);
    assert_eq!(fleet.password(), Some("s3cret"));
    let old = fleet.shards[0].primary.port();
    assert_eq!(fleet.master_port(0), old);
    let refused = redis::cmd("SET")
        .arg("k")
        .arg(1)
        .exec(&mut fleet.shards[0].primary.conn());
    assert!(refused.is_err(), "the data servers want the password");
    redis::cmd("SET").arg("k").arg(1).exec(&mut fleet.conn(old)).unwrap();
    let replica = fleet.shards[0].replica.port();
    wait_until("k to reach the replica", Duration::from_secs(10), || {
        redis::cmd("GET")
            .arg("k")
            .query::<Option<i64>>(&mut fleet.conn(replica))
            .unwrap()
            == Some(1)
    });

    let killed = Instant::now();
    fleet.shards[0].primary.stop();
    let new = fleet.wait_for_new_master(0, old, FAILOVER);
    eprintln!("with a password, SIGKILL to promotion: {:?}", killed.elapsed());
    assert_eq!(new, replica);
    let got: Option<i64> = redis::cmd("GET").arg("k").query(&mut fleet.conn(new)).unwrap();
    assert_eq!(got, Some(1), "the promoted replica keeps the key");
}
