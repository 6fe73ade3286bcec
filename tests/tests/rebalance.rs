//! Moving a live data set between configurations: 10 000 keys of every
//! Redis type, many with TTLs, from 3 servers to 4 and back, checked value
//! by value (DUMP) and TTL by TTL through the new configuration; a run
//! stopped half-way and run again ends in the same state.

use std::collections::HashMap;

use mredis::rebalance::{Prefer, RebalanceOptions, rebalance, verify};
use mredis::{MRedis, Mode, Server};
use mredis_tests::{RedisServer, TempDir, servers};

const KEYS: usize = 10_000;

/// Options for tests where persistence does not matter (the harness's
/// servers have none).
fn volatile_ok() -> RebalanceOptions {
    RebalanceOptions {
        allow_volatile: true,
        ..Default::default()
    }
}

/// A configuration of `servers`, named `s0`, `s1`, ... by their place in
/// the list for placement, so ketama puts every key in the same place on
/// every run (not by the random ports). Tests list the servers of both
/// configurations in the same order (the new one extends the old one).
fn config(servers: &[&RedisServer], mode: Mode) -> MRedis {
    let list: Vec<Server> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Server::from_parts("127.0.0.1", s.port(), 0)
                .unwrap()
                .with_alias(format!("s{i}"))
        })
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

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Keys that are on more than one of `servers`.
fn on_two_servers(servers: &[RedisServer]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut twice = Vec::new();
    for s in servers {
        for k in s.keys() {
            if !seen.insert(k.clone()) {
                twice.push(k);
            }
        }
    }
    twice
}

fn ketama() -> Mode {
    Mode::Ketama {
        hash: mredis::placement::KeyHash::Fnv1a64,
        hash_tag: None,
    }
}

/// Raw DUMP of `key` on `server` (None if absent).
fn dump(server: &RedisServer, key: &str) -> Option<Vec<u8>> {
    redis::cmd("DUMP").arg(key).query(&mut server.conn()).unwrap()
}

#[test]
fn redis_moves_the_other_keys_of_a_multi_key_migrate_that_fails_with_busykey() {
    // The per-key fallback relies on this (Redis >= 3.2 / 7): keys whose
    // RESTORE succeeded are deleted from the source even though the
    // command as a whole fails.
    let s = servers(2);
    for k in ["a", "b", "c"] {
        redis::cmd("SET").arg(k).arg(k).exec(&mut s[0].conn()).unwrap();
    }
    redis::cmd("SET").arg("b").arg("other").exec(&mut s[1].conn()).unwrap();
    let err = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(s[1].port())
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(&["a", "b", "c", "missing"][..])
        .exec(&mut s[0].conn())
        .unwrap_err();
    assert!(err.to_string().contains("BUSYKEY"), "{err}");
    assert_eq!(s[0].keys(), ["b"]);
    assert_eq!(s[1].keys(), ["a", "b", "c"]);
}

#[test]
fn volatile_destinations_are_refused_unless_allowed() {
    let persistent = || RedisServer::with_args(&["--appendonly", "yes"]);
    let s = [persistent(), persistent(), RedisServer::new()];
    let from = config(&[&s[0], &s[1]], Mode::Standard);
    let to = config(&[&s[0], &s[1], &s[2]], Mode::Standard);
    for i in 0..500 {
        from.set::<_, _, ()>(format!("v{i}"), i).unwrap();
    }
    let err = rebalance(&from, &to, RebalanceOptions::default()).unwrap_err();
    let text = format!("{err}");
    assert!(
        text.contains(&s[2].name()) && text.contains("no persistence") && text.contains("allow-volatile"),
        "{text}"
    );
    assert!(
        !text.contains(&s[0].name()),
        "persistent servers are not blamed: {text}"
    );
    assert_eq!(s[2].dbsize(), 0, "nothing moved");
    assert_eq!(s[0].dbsize() + s[1].dbsize(), 500);

    let report = rebalance(&from, &to, volatile_ok()).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.volatile.len(), 1, "{:?}", report.volatile);
    assert!(report.volatile[0].contains(&s[2].name()));
    for i in 0..500 {
        assert_eq!(to.get::<_, i64>(format!("v{i}")).unwrap(), i);
    }
}

#[test]
fn only_destinations_that_receive_keys_need_persistence() {
    // Ketama from 2 to 3 servers moves keys to the new server only: the two
    // old, volatile ones receive nothing and are no reason to refuse.
    let s = [
        RedisServer::new(),
        RedisServer::new(),
        RedisServer::with_args(&["--save", "60 1"]),
    ];
    let from = config(&[&s[0], &s[1]], ketama());
    let to = config(&[&s[0], &s[1], &s[2]], ketama());
    for i in 0..500 {
        from.set::<_, _, ()>(format!("p{i}"), i).unwrap();
    }
    // The keys that change server (fixed: the servers are named s0..s2),
    // all of them to the new, persistent one.
    let moving: Vec<String> = (0..500)
        .map(|i| format!("p{i}"))
        .filter(|k| from.server_index_for(k.as_bytes()) != to.server_index_for(k.as_bytes()))
        .collect();
    assert!(!moving.is_empty(), "some key moves to s2");
    assert!(moving.iter().all(|k| to.server_index_for(k.as_bytes()) == 2));
    let report = rebalance(&from, &to, RebalanceOptions::default()).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.moved, moving.len() as u64);
    assert_eq!(s[2].dbsize(), moving.len() as i64);
}

#[test]
fn unreadable_persistence_is_refused_unless_allowed() {
    let s = [
        RedisServer::new(),
        RedisServer::with_args(&["--rename-command", "CONFIG", ""]),
    ];
    let from = config(&[&s[0]], Mode::Standard);
    let to = config(&[&s[1]], Mode::Standard);
    for i in 0..50 {
        from.set::<_, _, ()>(format!("u{i}"), i).unwrap();
    }
    let err = rebalance(&from, &to, RebalanceOptions::default()).unwrap_err();
    let text = format!("{err}");
    assert!(text.contains(&s[1].name()) && text.contains("cannot be read"), "{text}");
    assert_eq!(s[1].dbsize(), 0);
    let report = rebalance(&from, &to, volatile_ok()).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(s[1].dbsize(), 50);
}

#[test]
fn conflicts_are_kept_and_listed_then_prefer_destination_discards_the_source_copy() {
    let s = servers(3);
    let from = config(&[&s[0], &s[1]], Mode::Standard);
    let to = config(&[&s[0], &s[1], &s[2]], Mode::Standard);
    for i in 0..1000 {
        from.set::<_, _, ()>(format!("x{i}"), i).unwrap();
    }
    // Three keys written on their new server by someone outside the
    // procedure, with other values.
    let clashes: Vec<String> = (0..1000)
        .map(|i| format!("x{i}"))
        .filter(|k| from.server_index_for(k.as_bytes()) != to.server_index_for(k.as_bytes()))
        .take(3)
        .collect();
    for k in &clashes {
        redis::cmd("SET")
            .arg(k)
            .arg("outside")
            .exec(&mut s[to.server_index_for(k.as_bytes())].conn())
            .unwrap();
    }
    let report = rebalance(&from, &to, volatile_ok()).unwrap();
    let mut listed: Vec<String> = report.conflicts.iter().map(|c| c.key.clone()).collect();
    listed.sort();
    let mut expected = clashes.clone();
    expected.sort();
    assert_eq!(listed, expected);
    for c in &report.conflicts {
        assert_eq!(c.from, from.server_for(&c.key).unwrap());
        assert_eq!(c.to, to.server_for(&c.key).unwrap());
    }
    assert!(!report.is_complete());
    assert_eq!(report.misplaced, 3, "every other key of the batches moved");
    assert!(report.misplaced_keys.iter().all(|m| m.on_both));
    for k in &clashes {
        let i: i64 = k[1..].parse().unwrap();
        let old: i64 = redis::cmd("GET")
            .arg(k)
            .query(&mut s[from.server_index_for(k.as_bytes())].conn())
            .unwrap();
        assert_eq!(old, i, "source copy kept");
        assert_eq!(to.get::<_, String>(k).unwrap(), "outside", "destination copy kept");
    }

    // A rerun without --prefer changes nothing and still reports them.
    let again = rebalance(&from, &to, volatile_ok()).unwrap();
    assert_eq!(again.conflicts.len(), 3);
    assert_eq!(again.moved, 0);

    let announced = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let seen = announced.clone();
    let resolved = rebalance(
        &from,
        &to,
        RebalanceOptions {
            prefer: Some(Prefer::Destination),
            before_discard: Some(Box::new(move |d| seen.borrow_mut().extend(d.iter().cloned()))),
            ..volatile_ok()
        },
    )
    .unwrap();
    assert!(resolved.is_complete(), "{resolved:?}");
    assert_eq!(*announced.borrow(), resolved.discarded, "announced before, all of them");
    assert_eq!(resolved.discarded.len(), 3);
    for d in &resolved.discarded {
        assert_eq!(d.discarded_from, from.server_for(&d.key).unwrap());
        assert_eq!(d.kept, to.server_for(&d.key).unwrap());
    }
    for k in &clashes {
        assert_eq!(to.get::<_, String>(k).unwrap(), "outside");
    }
    assert!(on_two_servers(&s).is_empty());
    assert_eq!(s.iter().map(|x| x.dbsize()).sum::<i64>(), 1000);
}

#[test]
fn identical_leftover_of_a_timed_out_migrate_is_resolved_silently() {
    let s = servers(3);
    let from = config(&[&s[0], &s[1]], Mode::Standard);
    let to = config(&[&s[0], &s[1], &s[2]], Mode::Standard);
    for i in 0..300 {
        from.set::<_, _, ()>(format!("l{i}"), i).unwrap();
    }
    from.expire::<_, ()>("l1", 1000).unwrap();
    // What a MIGRATE that timed out after the RESTORE leaves: the same
    // value on both servers.
    let leftovers: Vec<String> = (0..300)
        .map(|i| format!("l{i}"))
        .filter(|k| from.server_index_for(k.as_bytes()) != to.server_index_for(k.as_bytes()))
        .take(2)
        .collect();
    for k in &leftovers {
        let a = &s[from.server_index_for(k.as_bytes())];
        let b = &s[to.server_index_for(k.as_bytes())];
        let value = dump(a, k).unwrap();
        redis::cmd("RESTORE")
            .arg(k)
            .arg(0)
            .arg(value)
            .exec(&mut b.conn())
            .unwrap();
    }
    let report = rebalance(&from, &to, volatile_ok()).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.leftovers, 2);
    assert!(report.conflicts.is_empty());
    assert!(on_two_servers(&s).is_empty());
    for i in 0..300 {
        assert_eq!(to.get::<_, i64>(format!("l{i}")).unwrap(), i);
    }
}

#[test]
fn two_names_for_one_server_move_nothing() {
    let s = servers(2);
    let named = |host: &str| {
        let list: Vec<Server> = s
            .iter()
            .map(|x| Server::from_parts(host, x.port(), 0).unwrap())
            .collect();
        MRedis::builder().servers(list).mode(Mode::Standard).build().unwrap()
    };
    let from = named("localhost");
    let to = named("127.0.0.1");
    for i in 0..2000 {
        from.set::<_, _, ()>(format!("n{i}"), i).unwrap();
    }
    let before: Vec<Vec<String>> = s.iter().map(|x| x.keys()).collect();
    let started = std::time::Instant::now();
    let report = rebalance(&from, &to, RebalanceOptions::default()).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "no stall");
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.moved, 0);
    assert_eq!(report.same_server.len(), 2, "{:?}", report.same_server);
    assert_eq!(report.keys, 2000, "each server counted once");
    assert!(report.scanned <= 2000);
    let after: Vec<Vec<String>> = s.iter().map(|x| x.keys()).collect();
    assert_eq!(before, after);
}

/// Fills `n` string keys through `mr`, in pipelined chunks.
fn fill_strings(mr: &MRedis, prefix: &str, n: usize) {
    for start in (0..n).step_by(10_000) {
        let mut pipe = mr.pipeline_all();
        for i in start..(start + 10_000).min(n) {
            pipe.set(format!("{prefix}{i}"), i).ignore();
        }
        pipe.query::<()>(mr).unwrap();
    }
}

/// A run during which `victim` is stopped (SIGSTOP) fails naming it; the
/// server is resumed once the run has returned (or after 20 s, should it
/// hang), and a rerun finishes, with no key on two servers and every value
/// intact.
fn stall_and_rerun(victim: usize) {
    const N: usize = 60_000;
    let s = servers(4);
    let from = config(&[&s[0], &s[1], &s[2]], ketama());
    let to = config(&[&s[0], &s[1], &s[2], &s[3]], ketama());
    fill_strings(&from, "s", N);
    let pid = s[victim].pid().unwrap();
    let stopped = std::rc::Rc::new(std::cell::Cell::new(false));
    let flag = stopped.clone();
    let resume = std::sync::Arc::new(std::sync::Mutex::new(None));
    let resume_slot = resume.clone();
    let (returned, wait_for_return) = std::sync::mpsc::channel::<()>();
    let wait_for_return = std::sync::Arc::new(std::sync::Mutex::new(Some(wait_for_return)));
    let started = std::time::Instant::now();
    let result = rebalance(
        &from,
        &to,
        RebalanceOptions {
            migrate_timeout_ms: Some(1000),
            batch_size: Some(10),
            scan_count: Some(100),
            progress: Some(Box::new(move |p| {
                if !flag.get() && p.moved > 0 {
                    flag.set(true);
                    kill(pid, "STOP");
                    let wait = wait_for_return.lock().unwrap().take().unwrap();
                    *resume_slot.lock().unwrap() = Some(std::thread::spawn(move || {
                        let _ = wait.recv_timeout(std::time::Duration::from_secs(20));
                        kill(pid, "CONT");
                    }));
                }
            })),
            ..volatile_ok()
        },
    );
    let _ = returned.send(());
    if let Some(handle) = resume.lock().unwrap().take() {
        handle.join().unwrap();
    }
    assert!(stopped.get(), "the run ended before it could be stopped");
    let err = result.expect_err("a stopped server is an error");
    let text = format!("{err}");
    assert!(text.contains(&s[victim].name()), "names the server: {text}");
    assert!(text.contains("rerunning is safe"), "{text}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "reported within the timeout, not hung"
    );

    let report = rebalance(&from, &to, volatile_ok()).unwrap();
    eprintln!(
        "stopped {}: {text}\nrerun moved {}, resolved {} identical leftovers",
        s[victim].name(),
        report.moved,
        report.leftovers
    );
    assert!(report.is_complete(), "{report:?}");
    assert!(report.conflicts.is_empty(), "leftovers are identical, not conflicts");
    assert!(on_two_servers(&s).is_empty());
    assert_eq!(s.iter().map(|x| x.dbsize()).sum::<i64>() as usize, N);
    let mut pipe = to.pipeline_all();
    for i in 0..N {
        pipe.get(format!("s{i}"));
    }
    let values: Vec<i64> = pipe.query(&to).unwrap();
    assert_eq!(values, (0..N as i64).collect::<Vec<_>>());
}

#[test]
fn stopped_source_is_named_and_a_rerun_finishes() {
    stall_and_rerun(0);
}

#[test]
fn stopped_destination_is_named_and_a_rerun_cleans_up_timed_out_migrates() {
    stall_and_rerun(3);
}

#[test]
fn two_databases_of_one_server_use_move_not_migrate() {
    // MIGRATE from a server to itself would block it until the timeout.
    let s = servers(1);
    let db = |n: i64| {
        MRedis::builder()
            .servers([Server::from_parts("127.0.0.1", s[0].port(), n).unwrap()])
            .build()
            .unwrap()
    };
    let (from, to) = (db(0), db(1));
    for i in 0..500 {
        from.set::<_, _, ()>(format!("d{i}"), i).unwrap();
    }
    from.expire::<_, ()>("d3", 1000).unwrap();
    to.set::<_, _, ()>("d1", "outside").unwrap();
    let leftover = dump(&s[0], "d2").unwrap();
    let mut db1 = redis::Client::open(s[0].url_db(1)).unwrap().get_connection().unwrap();
    redis::cmd("RESTORE")
        .arg("d2")
        .arg(0)
        .arg(leftover)
        .exec(&mut db1)
        .unwrap();
    let started = std::time::Instant::now();
    let report = rebalance(&from, &to, volatile_ok()).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "no stall");
    assert_eq!(report.moved, 499, "{report:?}");
    assert_eq!(report.leftovers, 1);
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(report.conflicts[0].key, "d1");
    assert_eq!(s[0].dbsize(), 1, "only the conflict is left in db 0");
    assert_eq!(to.get::<_, String>("d1").unwrap(), "outside");
    assert!(to.ttl::<_, i64>("d3").unwrap() > 900, "TTL kept");
    let resolved = rebalance(
        &from,
        &to,
        RebalanceOptions {
            prefer: Some(Prefer::Source),
            ..volatile_ok()
        },
    )
    .unwrap();
    assert!(resolved.is_complete(), "{resolved:?}");
    assert_eq!(to.get::<_, i64>("d1").unwrap(), 1);
    assert_eq!(s[0].dbsize(), 0);
}

#[test]
fn an_old_client_writing_during_the_move_is_detected_and_nothing_is_overwritten() {
    // A client still on the old configuration writes keys on their old
    // server after they moved: the run must not end "complete", must list
    // them, and must keep both copies. (Its connections are unnamed, so
    // neither the census nor the fence sees it; a named one is refused by
    // the fence, see tests/tests/fencing.rs.)
    const N: usize = 40_000;
    let s = servers(4);
    let from = config(&[&s[0], &s[1], &s[2]], ketama());
    let to = config(&[&s[0], &s[1], &s[2], &s[3]], ketama());
    fill_strings(&from, "w", N);
    let ports: Vec<u16> = s.iter().map(|x| x.port()).collect();
    let written = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let log = written.clone();
    let report = rebalance(
        &from,
        &to,
        RebalanceOptions {
            batch_size: Some(10),
            scan_count: Some(100),
            progress: Some(Box::new(move |p| {
                if !log.borrow().is_empty() || p.moved == 0 {
                    return;
                }
                let old = MRedis::builder()
                    .servers(
                        ports[..3]
                            .iter()
                            .enumerate()
                            .map(|(i, p)| {
                                Server::from_parts("127.0.0.1", *p, 0)
                                    .unwrap()
                                    .with_alias(format!("s{i}"))
                            })
                            .collect::<Vec<_>>(),
                    )
                    .mode(ketama())
                    .name_connections(false)
                    .build()
                    .unwrap();
                let mut new_server = redis::Client::open(format!("redis://127.0.0.1:{}/0", ports[3]))
                    .unwrap()
                    .get_connection()
                    .unwrap();
                for i in 0..N {
                    let key = format!("w{i}");
                    let moved: bool = redis::cmd("EXISTS").arg(&key).query(&mut new_server).unwrap();
                    if moved {
                        old.set::<_, _, ()>(&key, "stale-write").unwrap();
                        log.borrow_mut().push(key);
                        if log.borrow().len() == 5 {
                            break;
                        }
                    }
                }
            })),
            ..volatile_ok()
        },
    )
    .unwrap();
    let written = written.borrow().clone();
    assert_eq!(written.len(), 5, "the writer ran during the move");
    assert!(!report.is_complete(), "{report:?}");
    for key in &written {
        let listed = report.misplaced_keys.iter().find(|m| &m.key == key);
        let listed = listed.unwrap_or_else(|| panic!("{key} not listed: {report:?}"));
        assert!(listed.on_both, "{listed:?}");
        assert_eq!(listed.owner, s[3].name());
        let i: i64 = key[1..].parse().unwrap();
        assert_eq!(to.get::<_, i64>(key).unwrap(), i, "the moved copy is not overwritten");
        assert_eq!(
            from.get::<_, String>(key).unwrap(),
            "stale-write",
            "the old client's write is kept"
        );
    }
    // Running again lists them as conflicts and still keeps both.
    let again = rebalance(&from, &to, volatile_ok()).unwrap();
    let mut conflicts: Vec<String> = again.conflicts.iter().map(|c| c.key.clone()).collect();
    conflicts.sort();
    let mut expected = written.clone();
    expected.sort();
    assert_eq!(conflicts, expected);
    assert_eq!(again.misplaced, 5);
}

#[test]
fn a_destination_busy_for_a_moment_is_retried_not_reported() {
    // DEBUG SLEEP blocks the destination for 1 s, longer than the MIGRATE
    // timeout, as a client's MIGRATE in the opposite direction would: the
    // source's MIGRATE times out, the destination answers again, the page
    // is tried again and the run finishes.
    const N: usize = 60_000;
    let s = [
        RedisServer::new(),
        RedisServer::with_args(&["--enable-debug-command", "yes"]),
    ];
    let from = config(&[&s[0]], ketama());
    let to = config(&[&s[0], &s[1]], ketama());
    fill_strings(&from, "b", N);
    let url = s[1].url();
    let sleeper = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = sleeper.clone();
    let report = rebalance(
        &from,
        &to,
        RebalanceOptions {
            migrate_timeout_ms: Some(300),
            batch_size: Some(10),
            scan_count: Some(100),
            progress: Some(Box::new(move |p| {
                let mut slot = slot.lock().unwrap();
                if slot.is_none() && p.moved > 0 {
                    let url = url.clone();
                    // Connected before the server sleeps.
                    let mut probe = redis::Client::open(url.clone()).unwrap().get_connection().unwrap();
                    let sleep_url = url.clone();
                    *slot = Some(std::thread::spawn(move || {
                        let mut con = redis::Client::open(sleep_url).unwrap().get_connection().unwrap();
                        redis::cmd("DEBUG").arg("SLEEP").arg(1).exec(&mut con).unwrap();
                    }));
                    // Go on only once the destination really is asleep: a
                    // PING that gets no answer within 50 ms.
                    probe
                        .set_read_timeout(Some(std::time::Duration::from_millis(50)))
                        .unwrap();
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                    while redis::cmd("PING").exec(&mut probe).is_ok() {
                        assert!(std::time::Instant::now() < deadline, "DEBUG SLEEP never started");
                    }
                }
            })),
            ..volatile_ok()
        },
    )
    .unwrap();
    sleeper.lock().unwrap().take().expect("slept").join().unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert!(report.retries >= 1, "{report:?}");
    assert!(on_two_servers(&s).is_empty());
    assert_eq!(s.iter().map(|x| x.dbsize()).sum::<i64>() as usize, N);
}

/// A key left on both servers by a MIGRATE whose reply was never seen, then
/// written on its source by migration-aware clients (which serve it from
/// there while it is there): the copies differ. The journal says it was
/// the tool's own batch, so the source's copy wins; without the journal
/// entry the same state is a conflict, kept.
#[test]
fn a_journaled_leftover_is_replaced_from_the_source_even_when_the_copies_differ() {
    let s = servers(3);
    let old = config(&[&s[0], &s[1]], Mode::Standard);
    let new = config(&[&s[0], &s[1], &s[2]], Mode::Standard);
    let mut moving = (0..)
        .map(|i| format!("j:{i}"))
        .filter(|k| old.server_index_for(k.as_bytes()) != new.server_index_for(k.as_bytes()));
    let (journaled, unjournaled) = (moving.next().unwrap(), moving.next().unwrap());
    let mut places = Vec::new();
    for key in [&journaled, &unjournaled] {
        let a = &s[old.server_index_for(key.as_bytes())];
        let b = &s[new.server_index_for(key.as_bytes())];
        // The leftover: B got the value as it was when the batch was sent;
        // clients then wrote A's copy.
        redis::cmd("SET").arg(key).arg("v1").exec(&mut b.conn()).unwrap();
        redis::cmd("SET")
            .arg(key)
            .arg("v2, written after")
            .exec(&mut a.conn())
            .unwrap();
        places.push((a.port(), b.port()));
    }
    let dir = TempDir::new("journal");
    let journal = dir.path().join("rebalance.journal");
    let hex: String = journaled.bytes().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&journal, format!("B 127.0.0.1:{}:0 {hex}\n", places[0].0)).unwrap();

    let options = RebalanceOptions {
        journal: Some(journal.clone()),
        ..volatile_ok()
    };
    let report = rebalance(&old, &new, options).unwrap();
    // The journaled key: the source's (newer) copy is on the new owner only.
    let b = s.iter().find(|x| x.port() == places[0].1).unwrap();
    let a = s.iter().find(|x| x.port() == places[0].0).unwrap();
    assert_eq!(dump(a, &journaled), None);
    let got: String = redis::cmd("GET").arg(&journaled).query(&mut b.conn()).unwrap();
    assert_eq!(got, "v2, written after");
    // The other: a conflict, both copies kept.
    assert_eq!(report.conflicts.len(), 1, "{:?}", report.conflicts);
    assert_eq!(report.conflicts[0].key, unjournaled);
    let a2 = s.iter().find(|x| x.port() == places[1].0).unwrap();
    let b2 = s.iter().find(|x| x.port() == places[1].1).unwrap();
    assert!(dump(a2, &unjournaled).is_some() && dump(b2, &unjournaled).is_some());
    // Settled keys are marked done in the journal; the file stays while a
    // conflict is left.
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(text.contains(&format!("E 127.0.0.1:{}:0 {hex}", places[0].0)), "{text}");
    // Resolving the conflict leaves nothing to do: the journal is removed.
    let options = RebalanceOptions {
        journal: Some(journal.clone()),
        prefer: Some(Prefer::Source),
        ..volatile_ok()
    };
    let report = rebalance(&old, &new, options).unwrap();
    assert_eq!(report.misplaced, 0);
    assert!(!journal.exists(), "the journal is removed once nothing is left");
}
