//! Moving a live data set between configurations: 10 000 keys of every
//! Redis type, many with TTLs, from 3 servers to 4 and back, checked value
//! by value (DUMP) and TTL by TTL through the new configuration; a run
//! stopped half-way and run again ends in the same state.

use std::collections::HashMap;

use mredis::rebalance::{Prefer, RebalanceOptions, rebalance, verify};
use mredis::{MRedis, Mode, Server};
use mredis_tests::{RedisServer, servers};

const KEYS: usize = 10_000;

/// Options for tests where persistence does not matter (the harness's
/// servers have none).
fn volatile_ok() -> RebalanceOptions {
    RebalanceOptions {
        allow_volatile: true,
        ..Default::default()
    }
}

fn config(servers: &[&RedisServer], mode: Mode) -> MRedis {
    let list: Vec<Server> = servers
        .iter()
        .map(|s| Server::from_parts("127.0.0.1", s.port(), 0).unwrap())
        .collect();
    MRedis::builder().servers(list).mode(mode).build().unwrap()
}

/// Writes KEYS keys of every type through `mr`, a third with TTLs.
fn fill(mr: &MRedis) {
    let mut pipe = mr.pipeline_all();
    for i in 0..KEYS {
        let key = format!("k:{i}");
        match i % 8 {
            0 => pipe.set(&key, i),
            1 => pipe.rpush(&key, &[i, i + 1, i + 2][..]),
            2 => pipe.sadd(&key, &[i, i * 2][..]),
            3 => pipe.zadd(&key, "m", i as f64),
            4 => pipe.hset_multiple(&key, &[("a", i), ("b", i + 1)]),
            5 => pipe.xadd(&key, "*", &[("f", i)]),
            6 => pipe.pfadd(&key, &[i, i + 7][..]),
            _ => pipe.geo_add(&key, (13.36, 38.11, format!("p{i}"))),
        };
        pipe.ignore();
        if i % 3 == 0 {
            pipe.expire(&key, 3600 + i as i64).ignore();
        }
    }
    pipe.query::<()>(mr).unwrap();
}

/// (DUMP, TTL in ms) of every key, read through `mr`.
fn snapshot(mr: &MRedis) -> HashMap<String, (Vec<u8>, i64)> {
    let mut pipe = mr.pipeline_all();
    for i in 0..KEYS {
        let key = format!("k:{i}");
        pipe.add_routed(&key, redis::cmd("DUMP").arg(&key).clone());
        pipe.pttl(&key);
    }
    let values: Vec<redis::Value> = pipe.query(mr).unwrap();
    let mut out = HashMap::new();
    for (i, pair) in values.chunks(2).enumerate() {
        let dump = match &pair[0] {
            redis::Value::BulkString(b) => b.clone(),
            other => panic!("k:{i} is missing through this configuration: {other:?}"),
        };
        let ttl = match pair[1] {
            redis::Value::Int(t) => t,
            ref other => panic!("ttl {other:?}"),
        };
        out.insert(format!("k:{i}"), (dump, ttl));
    }
    out
}

fn assert_same(before: &HashMap<String, (Vec<u8>, i64)>, after: &HashMap<String, (Vec<u8>, i64)>) {
    assert_eq!(before.len(), after.len());
    for (key, (dump, ttl)) in before {
        let (dump2, ttl2) = &after[key];
        assert_eq!(dump, dump2, "{key} changed");
        if *ttl < 0 {
            assert_eq!(*ttl2, *ttl, "{key} gained a TTL");
        } else {
            assert!(
                *ttl2 <= *ttl && *ttl2 > *ttl - 120_000,
                "{key}: ttl {ttl} became {ttl2}"
            );
        }
    }
}

#[test]
fn three_to_four_and_back_keeps_every_value_and_ttl() {
    let s = servers(4);
    let three = [&s[0], &s[1], &s[2]];
    let four = [&s[0], &s[1], &s[2], &s[3]];
    let mode = Mode::Ketama {
        hash: mredis::placement::KeyHash::Fnv1a64,
        hash_tag: None,
    };
    let from = config(&three, mode);
    let to = config(&four, mode);
    fill(&from);
    let before = snapshot(&from);

    let dry = rebalance(
        &from,
        &to,
        RebalanceOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        dry.moved > 1000 && dry.moved < 4000,
        "ketama moves about 1/4: {}",
        dry.moved
    );
    assert_eq!(s[3].dbsize(), 0, "a dry run moves nothing");

    // Stop half-way, then run again: the same end state.
    let half = rebalance(
        &from,
        &to,
        RebalanceOptions {
            limit: Some(dry.moved / 2),
            ..volatile_ok()
        },
    )
    .unwrap();
    assert!(half.interrupted);
    assert_eq!(half.moved, dry.moved / 2);
    let rest = rebalance(&from, &to, volatile_ok()).unwrap();
    assert!(!rest.interrupted);
    assert_eq!(half.moved + rest.moved, dry.moved, "nothing moved twice, nothing left");
    assert_eq!(rest.misplaced, 0);
    assert!(rest.conflicts.is_empty());
    assert_eq!(verify(&to, &from).unwrap(), 0);
    assert_eq!(s.iter().map(|x| x.dbsize()).sum::<i64>() as usize, KEYS);
    assert_same(&before, &snapshot(&to));

    // And back from 4 to 3.
    let back = rebalance(&to, &from, volatile_ok()).unwrap();
    assert_eq!(back.misplaced, 0);
    assert_eq!(s[3].dbsize(), 0);
    assert_same(&before, &snapshot(&from));
}

#[test]
fn standard_placement_moves_most_keys_and_conflicts_are_kept() {
    let s = servers(3);
    let from = config(&[&s[0], &s[1]], Mode::Standard);
    let to = config(&[&s[0], &s[1], &s[2]], Mode::Standard);
    for i in 0..300 {
        from.set::<_, _, ()>(format!("c{i}"), i).unwrap();
    }
    // A key that already exists where the new config wants it.
    let clash = (0..300)
        .map(|i| format!("c{i}"))
        .find(|k| from.server_for(k).unwrap() != to.server_for(k).unwrap())
        .unwrap();
    let target = to.server_index_for(clash.as_bytes());
    redis::cmd("SET")
        .arg(&clash)
        .arg("newer")
        .exec(&mut s[target].conn())
        .unwrap();

    let report = rebalance(&from, &to, volatile_ok()).unwrap();
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(report.conflicts[0].key, clash);
    assert_eq!(report.misplaced, 1, "the conflicting key stays where it was");
    let old: String = redis::cmd("GET")
        .arg(&clash)
        .query(&mut s[from.server_index_for(clash.as_bytes())].conn())
        .unwrap();
    assert_eq!(old, clash.trim_start_matches('c'), "the old copy is left alone");
    let newer: String = to.get(&clash).unwrap();
    assert_eq!(newer, "newer", "the existing copy is not overwritten");

    let replaced = rebalance(
        &from,
        &to,
        RebalanceOptions {
            prefer: Some(Prefer::Source),
            ..volatile_ok()
        },
    )
    .unwrap();
    assert_eq!(replaced.moved, 1);
    assert_eq!(replaced.discarded.len(), 1);
    assert_eq!(replaced.discarded[0].discarded_from, to.server_for(&clash).unwrap());
    assert_eq!(replaced.misplaced, 0);
    let v: String = to.get(&clash).unwrap();
    assert_eq!(v, clash.trim_start_matches('c'));
    for i in 0..300 {
        assert_eq!(to.get::<_, i64>(format!("c{i}")).unwrap(), i);
    }
}
