//! Opt-in health checking: a stopped server is marked down within a few
//! intervals and an event fires; with ejection (ketama), its keys go to the
//! other servers and come back when it does; ejection is refused where it
//! would move every key; without the option nothing moves.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mredis::health::{HealthCheck, HealthEvent};
use mredis::placement::KeyHash;
use mredis::{MRedis, Mode, Server};
use mredis_tests::{RedisServer, servers};

/// The servers, named `s0`, `s1`, ... for placement, so ketama puts every
/// key in the same place on every run (not by the random ports).
fn list(s: &[RedisServer]) -> Vec<Server> {
    s.iter()
        .enumerate()
        .map(|(i, x)| {
            Server::from_parts("127.0.0.1", x.port(), 0)
                .unwrap()
                .with_alias(format!("s{i}"))
        })
        .collect()
}

/// `fleet` with each server given the replica of the same place in
/// `replicas` (none when `replicas` is empty).
fn with_replicas(fleet: Vec<Server>, replicas: &[RedisServer]) -> Vec<Server> {
    if replicas.is_empty() {
        return fleet;
    }
    fleet
        .into_iter()
        .zip(replicas)
        .map(|(server, r)| server.with_replicas([r.url()]).unwrap())
        .collect()
}

fn ketama() -> Mode {
    Mode::Ketama {
        hash: KeyHash::Fnv1a64,
        hash_tag: None,
    }
}

fn wait_for(events: &Mutex<Vec<HealthEvent>>, what: impl Fn(&HealthEvent) -> bool, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if events.lock().unwrap().iter().any(&what) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "no such event within {within:?}: {:?}",
            events.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(sig: &str, pid: u32) {
    assert!(
        std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn a_stopped_server_is_marked_down_within_a_few_intervals_then_up() {
    let _quiet = mredis_tests::quiet();
    let s = servers(3);
    let events: Arc<Mutex<Vec<HealthEvent>>> = Arc::default();
    let seen = events.clone();
    let interval = Duration::from_millis(200);
    let mr = MRedis::builder()
        .servers(list(&s))
        .health_check(HealthCheck {
            interval,
            down_after: 2,
            on_event: Some(Arc::new(move |e: &HealthEvent| seen.lock().unwrap().push(e.clone()))),
            ..Default::default()
        })
        .build()
        .unwrap();
    let started = Instant::now();
    while !mr.health().iter().all(|h| h.up && h.checks >= 2) {
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", mr.health());
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = s[1].pid().unwrap();
    let name = s[1].name();
    signal("STOP", pid);
    let took = wait_for(
        &events,
        |e| matches!(e, HealthEvent::Down { server, .. } if *server == name),
        interval * 6,
    );
    signal("CONT", pid);
    // down_after = 2 failed checks, each waiting at most one interval for
    // its reply: about 3 intervals (617 ms measured with 200 ms on an idle
    // machine); the bound leaves room for a loaded one.
    eprintln!("marked down {took:?} after the stop ({interval:?} interval)");
    assert!(took <= interval * 6, "marked down after {took:?}");
    let h = mr.health();
    let down = h.iter().find(|x| x.server == name).unwrap();
    assert!(down.failures >= 2, "{down:?}");
    wait_for(
        &events,
        |e| matches!(e, HealthEvent::Up { server } if *server == name),
        Duration::from_secs(30),
    );
    assert!(mr.health().iter().all(|h| h.up));
    // Without ejection, placement never moved: every key kept its server.
    assert!(
        !events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, HealthEvent::Down { server, .. } if *server != name))
    );
}

#[test]
fn ejection_on_ketama_sends_a_down_servers_keys_elsewhere_and_back() {
    let _quiet = mredis_tests::quiet();
    let mut s = servers(3);
    let events: Arc<Mutex<Vec<HealthEvent>>> = Arc::default();
    let seen = events.clone();
    let interval = Duration::from_millis(200);
    let mr = MRedis::builder()
        .servers(list(&s))
        .mode(ketama())
        .connect_timeout(Duration::from_millis(200))
        .health_check(HealthCheck {
            interval,
            down_after: 2,
            eject: true,
            on_event: Some(Arc::new(move |e: &HealthEvent| seen.lock().unwrap().push(e.clone()))),
            ..Default::default()
        })
        .build()
        .unwrap();
    // Every server checked and up before looking at placement.
    let started = Instant::now();
    while !mr.health().iter().all(|h| h.up && h.checks >= 2) {
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", mr.health());
        std::thread::sleep(Duration::from_millis(20));
    }
    let keys: Vec<String> = (0..600).map(|i| format!("cache:{i}")).collect();
    // Stop the server owning the most keys.
    let victim = (0..3)
        .max_by_key(|&i| {
            keys.iter()
                .filter(|k| mr.server_for(k.as_str()).unwrap() == s[i].name())
                .count()
        })
        .unwrap();
    let on_dead: Vec<&String> = keys
        .iter()
        .filter(|k| mr.server_for(k.as_str()).unwrap() == s[victim].name())
        .collect();
    let elsewhere: Vec<&String> = keys
        .iter()
        .filter(|k| mr.server_for(k.as_str()).unwrap() != s[victim].name())
        .collect();
    assert!(on_dead.len() >= 200, "the largest of three shares: {}", on_dead.len());
    let owners_before: Vec<String> = elsewhere
        .iter()
        .map(|k| mr.server_for(k.as_str()).unwrap().to_string())
        .collect();
    s[victim].stop();
    let name = s[victim].name();
    wait_for(
        &events,
        |e| matches!(e, HealthEvent::Down { server, .. } if *server == name),
        Duration::from_secs(30),
    );
    // Its keys now go to the others, and writes to them succeed there.
    for k in &on_dead {
        let owner = mr.server_for(k.as_str()).unwrap().to_string();
        assert_ne!(owner, name, "{k} still on the ejected server");
        assert_eq!(
            s[mr.server_index_for(k.as_bytes())].name(),
            owner,
            "{k}: index and name agree"
        );
        mr.set::<_, _, ()>(k.as_str(), "while ejected").unwrap();
    }
    // Only the ejected server's keys moved (ketama).
    let owners_during: Vec<String> = elsewhere
        .iter()
        .map(|k| mr.server_for(k.as_str()).unwrap().to_string())
        .collect();
    assert_eq!(owners_before, owners_during);
    let stored: usize = s
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, x)| x.keys().len())
        .sum();
    assert_eq!(stored, on_dead.len());
    // It comes back (empty after the restart): its keys go to it again, and
    // the writes made while it was out are moved back to it (the default,
    // `Rejoin::MoveBack`).
    s[victim].restart();
    wait_for(
        &events,
        |e| matches!(e, HealthEvent::Up { server } if *server == name),
        Duration::from_secs(30),
    );
    for k in &on_dead {
        assert_eq!(mr.server_for(k.as_str()).unwrap(), name);
        assert_eq!(
            mr.get::<_, Option<String>>(k.as_str()).unwrap().as_deref(),
            Some("while ejected")
        );
    }
}

#[test]
fn ejection_is_refused_for_modulo_placements_and_migrations() {
    let _quiet = mredis_tests::quiet();
    let s = servers(2);
    for mode in [
        Mode::Standard,
        Mode::Modula {
            hash: KeyHash::Fnv1a64,
            hash_tag: None,
        },
    ] {
        let err = MRedis::builder()
            .servers(list(&s))
            .mode(mode)
            .health_check(HealthCheck {
                eject: true,
                ..Default::default()
            })
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("ketama or rendezvous"), "{err}");
    }
    // Checking alone is fine with any placement.
    MRedis::builder()
        .servers(list(&s))
        .health_check(HealthCheck::default())
        .build()
        .unwrap();
    let err = MRedis::builder()
        .servers(list(&s))
        .mode(ketama())
        .migrating_from(MRedis::builder().servers(list(&s[..1])).mode(ketama()))
        .health_check(HealthCheck {
            eject: true,
            ..Default::default()
        })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("migrating_from"), "{err}");
    // Without the option there is no health state at all.
    assert!(MRedis::new(list(&s)).unwrap().health().is_empty());
}

/// What the ejection scenario left: keys that read an older value than
/// their last acknowledged write, keys held by a server that does not own
/// them (copies left behind), and the writes acknowledged while the
/// server was out.
struct Outcome {
    stale: usize,
    stray_copies: usize,
    acked_while_out: u64,
    keys_of_victim: usize,
}

/// 4 servers, ketama, health checking with ejection; a writer thread per
/// server's keys SETs rising values and records the last acknowledged one
/// per key. One server is SIGSTOPped until it is ejected and its keys have
/// been written elsewhere (two full rounds), then SIGCONTed; the writers go
/// on until it is back and served (and, with `MoveBack`, the move back is
/// done) and `rounds_after` more rounds; with `rounds_after` 0 they stop
/// before it is resumed. Then every key is read through the client and
/// looked up on every server directly.
///
/// With `replicas`, each server is a shard with a linked replica, so the
/// move back takes the durable path (keys marked, steps acknowledged).
fn ejection_scenario(rejoin: mredis::health::Rejoin, rounds_after: u64, replicas: bool) -> Outcome {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let (s, replica_servers): (Vec<RedisServer>, Vec<RedisServer>) = if replicas {
        (0..4).map(|_| shard()).unzip()
    } else {
        (servers(4), Vec::new())
    };
    let fleet = with_replicas(list(&s), &replica_servers);
    let mr = MRedis::builder()
        .servers(fleet)
        .mode(ketama())
        .connect_timeout(Duration::from_millis(200))
        .response_timeout(Some(Duration::from_millis(500)))
        .health_check(HealthCheck {
            interval: Duration::from_millis(100),
            down_after: 2,
            eject: true,
            rejoin,
            ..Default::default()
        })
        .build()
        .unwrap();
    let started = Instant::now();
    while !mr.health().iter().all(|h| h.up && h.checks >= 2) {
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", mr.health());
        std::thread::sleep(Duration::from_millis(10));
    }
    let keys: Vec<String> = (0..400).map(|i| format!("acct:{i}")).collect();
    let mut by_owner: Vec<Vec<String>> = vec![Vec::new(); 4];
    for k in &keys {
        by_owner[mr.server_index_for(k.as_bytes())].push(k.clone());
    }
    // The server with the most keys (the names decide, not the ports).
    let victim = (0..4).max_by_key(|&i| by_owner[i].len()).unwrap();
    assert!(
        by_owner[victim].len() >= 100,
        "{:?}",
        by_owner.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(AtomicBool::new(false));
    let acked_while_out = Arc::new(AtomicU64::new(0));
    // Full rounds each writer completed.
    let rounds: Vec<Arc<AtomicU64>> = (0..4).map(|_| Arc::default()).collect();
    let mut writers = Vec::new();
    for (w, mine) in by_owner.iter().cloned().enumerate() {
        let (mr, stop, out, acked_out, rounds) = (
            mr.clone(),
            stop.clone(),
            out.clone(),
            acked_while_out.clone(),
            rounds[w].clone(),
        );
        writers.push(std::thread::spawn(move || {
            // key -> (last acknowledged, last attempted)
            let mut last: std::collections::HashMap<String, (u64, u64)> = Default::default();
            let mut r = 0u64;
            while !stop.load(Ordering::Relaxed) {
                r += 1;
                for k in &mine {
                    last.entry(k.clone()).or_default().1 = r;
                    if mr.set::<_, _, ()>(k.as_str(), r).is_ok() {
                        last.get_mut(k).unwrap().0 = r;
                        if out.load(Ordering::Relaxed) {
                            acked_out.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            last
        }));
    }
    let wait_rounds = |w: usize, more: u64| {
        let target = rounds[w].load(Ordering::Relaxed) + more;
        let started = Instant::now();
        while rounds[w].load(Ordering::Relaxed) < target {
            assert!(started.elapsed() < Duration::from_secs(60), "writer {w} stuck");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_rounds(victim, 2);
    let pid = s[victim].pid().unwrap();
    signal("STOP", pid);
    let started = Instant::now();
    while mr.health()[victim].up {
        assert!(started.elapsed() < Duration::from_secs(30), "never marked down");
        std::thread::sleep(Duration::from_millis(5));
    }
    out.store(true, Ordering::Relaxed);
    // Its keys are written elsewhere, acknowledged, two full rounds.
    wait_rounds(victim, 2);
    out.store(false, Ordering::Relaxed);
    let mut last = std::collections::HashMap::new();
    if rounds_after == 0 {
        // Nothing written once it is back: what its keys read then is what
        // the rejoin made of them.
        stop.store(true, Ordering::Relaxed);
        for w in writers.drain(..) {
            last.extend(w.join().unwrap());
        }
    }
    signal("CONT", pid);
    let started = Instant::now();
    while !mr.health()[victim].up || mr.health()[victim].rejoining {
        assert!(started.elapsed() < Duration::from_secs(60), "{:?}", mr.health());
        std::thread::sleep(Duration::from_millis(5));
    }
    // Or the writers went on through the rejoin, and now `rounds_after`
    // more rounds on the rejoined server, then stop.
    if rounds_after > 0 {
        wait_rounds(victim, rounds_after);
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        last.extend(w.join().unwrap());
    }
    let mut stale = 0;
    for (k, (acked, attempted)) in &last {
        let v: Option<u64> = mr.get(k.as_str()).unwrap();
        // A write that timed out may still have run: at most the last tried.
        if !v.is_some_and(|v| v >= *acked && v <= *attempted) {
            stale += 1;
        }
    }
    let mut stray_copies = 0;
    for (i, server) in s.iter().enumerate() {
        for k in server.keys() {
            if mr.server_index_for(k.as_bytes()) != i {
                stray_copies += 1;
            }
        }
    }
    Outcome {
        stale,
        stray_copies,
        acked_while_out: acked_while_out.load(Ordering::Relaxed),
        keys_of_victim: by_owner[victim].len(),
    }
}

/// Ejection's default, `Rejoin::MoveBack`: the writes acknowledged while a
/// server was out are what its keys read once it is back (0 stale, 0 lost),
/// and no copy is left on the other servers for a later outage to bring
/// back.
#[test]
fn ejection_by_default_loses_no_acknowledged_write() {
    let _quiet = mredis_tests::quiet();
    nothing_lost(
        "MoveBack",
        ejection_scenario(mredis::health::Rejoin::MoveBack, 1, false),
    );
}

/// Prints a MoveBack scenario's outcome and checks it: writes were
/// acknowledged while the server was out (two rounds), and afterwards no
/// key reads an older value than acknowledged and no copy is left.
fn nothing_lost(label: &str, o: Outcome) {
    println!(
        "{label}: {} writes of {} keys acknowledged while out; {} stale, {} copies left",
        o.acked_while_out, o.keys_of_victim, o.stale, o.stray_copies
    );
    assert!(
        o.acked_while_out >= 2 * o.keys_of_victim as u64,
        "{}",
        o.acked_while_out
    );
    assert_eq!(o.stale, 0, "keys reading an older value than acknowledged");
    assert_eq!(o.stray_copies, 0, "copies left on servers that do not own them");
}

/// The same on shards with replicas: the move back is the durable one
/// (keys marked while they move, each step acknowledged by the replicas),
/// with the writers running through it: 0 stale, 0 copies left.
#[test]
fn ejection_on_shards_with_replicas_loses_no_acknowledged_write() {
    let _quiet = mredis_tests::quiet();
    nothing_lost(
        "MoveBack, shards with replicas",
        ejection_scenario(mredis::health::Rejoin::MoveBack, 1, true),
    );
}

/// `Rejoin::Keep` (twemproxy's behaviour) measured: the server's keys read
/// what it held before (every write acknowledged meanwhile is lost to the
/// client) and those writes stay elsewhere as copies.
#[test]
fn ejection_that_keeps_loses_the_writes_made_meanwhile() {
    let _quiet = mredis_tests::quiet();
    let o = ejection_scenario(mredis::health::Rejoin::Keep, 0, false);
    println!(
        "Keep: {} writes of {} keys acknowledged while out; {} stale, {} copies left",
        o.acked_while_out, o.keys_of_victim, o.stale, o.stray_copies
    );
    assert!(o.acked_while_out >= 2 * o.keys_of_victim as u64);
    // Every key of the server that was out reads its value from before.
    assert_eq!(o.stale, o.keys_of_victim, "keys reading what the server held before");
    assert_eq!(
        o.stray_copies, o.keys_of_victim,
        "each written-while-out key left a copy"
    );
}

/// A primary with one linked replica.
fn shard() -> (RedisServer, RedisServer) {
    mredis_tests::linked_shard(&[])
}

/// How many of `keys` `server` holds.
fn held(server: &RedisServer, keys: &[&String]) -> usize {
    let mut con = server.conn();
    keys.iter()
        .filter(|k| redis::cmd("EXISTS").arg(k.as_str()).query::<i64>(&mut con).unwrap() == 1)
        .count()
}

/// On shards with replicas, the move back is the rebalance's durable
/// mover: a key leaves the server it was written on during the ejection
/// only once the returning shard's replica acknowledged its copy. With
/// that replica stopped, the mover asks for the acknowledgement (`WAIT`
/// on the returning primary) and gets none, so every key stays where it
/// was written, and reads return it; once the replica is back, every key
/// is moved, replaces the older copy, and is on the replica too.
#[test]
fn move_back_on_shards_with_replicas_waits_for_the_returning_replica() {
    let _quiet = mredis_tests::quiet();
    let (primaries, replicas): (Vec<RedisServer>, Vec<RedisServer>) = (0..3).map(|_| shard()).unzip();
    let fleet = with_replicas(list(&primaries), &replicas);
    let events: Arc<Mutex<Vec<HealthEvent>>> = Arc::default();
    let seen = events.clone();
    let mr = MRedis::builder()
        .servers(fleet)
        .mode(ketama())
        .connect_timeout(Duration::from_millis(200))
        .response_timeout(Some(Duration::from_millis(500)))
        .health_check(HealthCheck {
            interval: Duration::from_millis(200),
            down_after: 2,
            eject: true,
            on_event: Some(Arc::new(move |e: &HealthEvent| seen.lock().unwrap().push(e.clone()))),
            ..Default::default()
        })
        .build()
        .unwrap();
    mredis_tests::wait_until("every server checked", Duration::from_secs(10), || {
        mr.health().iter().all(|h| h.up && h.checks >= 2)
    });
    let keys: Vec<String> = (0..300).map(|i| format!("order:{i}")).collect();
    for k in &keys {
        mr.set::<_, _, ()>(k.as_str(), "before").unwrap();
    }
    let (victim, primary) = primaries.iter().enumerate().max_by_key(|(_, p)| p.dbsize()).unwrap();
    let replica = &replicas[victim];
    let name = primary.name();
    let theirs: Vec<&String> = keys
        .iter()
        .filter(|k| mr.server_for(k.as_str()).unwrap() == name)
        .collect();
    assert!(theirs.len() >= 60, "the largest of three shares: {}", theirs.len());
    let others: Vec<&RedisServer> = primaries
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, p)| p)
        .collect();

    primary.sigstop();
    wait_for(
        &events,
        |e| matches!(e, HealthEvent::Down { server, .. } if *server == name),
        Duration::from_secs(30),
    );
    mredis_tests::wait_until("its keys routed elsewhere", Duration::from_secs(10), || {
        theirs.iter().all(|k| mr.server_for(k.as_str()).unwrap() != name)
    });
    for k in &theirs {
        mr.set::<_, _, ()>(k.as_str(), "while ejected").unwrap();
    }
    let on_others = |keys: &[&String]| others.iter().map(|s| held(s, keys)).sum::<usize>();
    assert_eq!(on_others(&theirs), theirs.len());

    // The returning shard's replica is stopped before its primary resumes.
    replica.sigstop();
    primary.sigcont();
    wait_for(
        &events,
        |e| matches!(e, HealthEvent::Up { server } if *server == name),
        Duration::from_secs(30),
    );
    // The mover asks the returning primary for its replica's
    // acknowledgement (`WAIT`, which only the durable mover sends there),
    // and gets none, twice.
    let mut con = primary.conn();
    mredis_tests::wait_until("the mover waits for the replica", Duration::from_secs(30), || {
        mredis_tests::command_calls(&mut con, "wait") >= 2
    });
    // Not acknowledged by the replica: nothing left the servers it was
    // written on, and every read finds the newer value.
    assert_eq!(on_others(&theirs), theirs.len());
    for k in &theirs {
        let v: Option<String> = mr.get(k.as_str()).unwrap();
        assert_eq!(v.as_deref(), Some("while ejected"), "{k} during the move back");
    }
    assert!(mr.health()[victim].rejoining, "{:?}", mr.health());

    replica.sigcont();
    mredis_tests::wait_until("the move back done", Duration::from_secs(60), || {
        !mr.health()[victim].rejoining
    });
    assert_eq!(on_others(&theirs), 0, "copies left behind");
    assert_eq!(held(primary, &theirs), theirs.len());
    mredis_tests::wait_replicated(&mut primary.conn(), &mut replica.conn());
    let mut on_replica = replica.conn();
    for k in &theirs {
        let v: Option<String> = redis::cmd("GET").arg(k.as_str()).query(&mut primary.conn()).unwrap();
        assert_eq!(v.as_deref(), Some("while ejected"), "{k} on the returning primary");
        let r: Option<String> = redis::cmd("GET").arg(k.as_str()).query(&mut on_replica).unwrap();
        assert_eq!(r.as_deref(), Some("while ejected"), "{k} on its replica");
        assert_eq!(
            mr.get::<_, Option<String>>(k.as_str()).unwrap().as_deref(),
            Some("while ejected")
        );
    }
    // No mark is left on any server.
    for p in &primaries {
        assert_eq!(
            redis::cmd("EXISTS")
                .arg("__mredis:moving")
                .query::<i64>(&mut p.conn())
                .unwrap(),
            0
        );
    }
}
