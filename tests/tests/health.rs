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
    // It comes back: its keys go to it again (empty after the restart).
    s[victim].restart();
    wait_for(
        &events,
        |e| matches!(e, HealthEvent::Up { server } if *server == name),
        Duration::from_secs(30),
    );
    for k in &on_dead {
        assert_eq!(mr.server_for(k.as_str()).unwrap(), name);
        assert_eq!(mr.get::<_, Option<String>>(k.as_str()).unwrap(), None);
    }
}

#[test]
fn ejection_is_refused_for_modulo_placements_and_migrations() {
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
