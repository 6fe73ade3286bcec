//! Pub/Sub under faults, on real servers: a consumer that does not poll
//! keeps at most its buffer and every dropped message is counted; a
//! `subscribe` to a stopped (SIGSTOP) server returns within its timeout
//! while the other servers' messages keep arriving; a `subscribe` made
//! while its server is killed is honoured after the restart; with health
//! checking and ejection, subscriptions follow the placement out and back.
//!
//! No sleep synchronises anything: conditions are polled under a 30 s
//! deadline.

use std::time::{Duration, Instant};

use mredis::health::HealthCheck;
use mredis::placement::KeyHash;
use mredis::pubsub::SubscriberOptions;
use mredis::{Event, MRedis, Mode, Server};
use mredis_tests::{RedisServer, servers, urls, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

/// The servers named `s0`, `s1`, ... for placement (ketama puts every key
/// in the same place on every run, whatever the ports).
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

/// A channel owned by server `i` of `mr`, the `nth` one found with `prefix`.
fn channel_on(mr: &MRedis, i: usize, prefix: &str, nth: usize) -> String {
    (0..)
        .map(|j| format!("{prefix}{j}"))
        .filter(|c| mr.server_index_for(c.as_bytes()) == i)
        .nth(nth)
        .unwrap()
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

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// The next message of the sync subscriber within 30 s, skipping other
/// events (returned in `others`).
fn next_message(sub: &mut mredis::Subscriber, others: &mut Vec<Event>) -> mredis::Message {
    let started = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(started.elapsed());
        match sub.next_event(Some(left)) {
            Some(Event::Message(m)) => return m,
            Some(e) => others.push(e),
            None => panic!("no message within {DEADLINE:?}; events: {others:?}"),
        }
    }
}

#[test]
fn a_consumer_that_does_not_poll_keeps_its_buffer_bound_and_every_drop_is_counted() {
    if !mredis_tests::in_own_process(
        module_path!(),
        "a_consumer_that_does_not_poll_keeps_its_buffer_bound_and_every_drop_is_counted",
    ) {
        return;
    }
    let s = servers(2);
    // Exact accounting needs the server not to cut the subscriber off
    // while the test publishes faster than a debug build reads.
    for x in &s {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("client-output-buffer-limit")
            .arg("pubsub 0 0 0")
            .query(&mut x.conn())
            .unwrap();
    }
    let mr = MRedis::new(urls(&s)).unwrap();
    let channel = channel_on(&mr, 0, "flood:", 0);
    let cap = 10_000usize;
    let mut sub = mr
        .subscriber_with(SubscriberOptions {
            max_messages: cap,
            ..Default::default()
        })
        .unwrap();
    sub.subscribe(&channel).unwrap();
    let before = rss();
    let total = 300_000usize;
    let size = 1000usize;
    let bound_bytes = cap * (size + channel.len());
    let mut con = s[0].conn();
    let mut highest = (0usize, 0usize);
    for batch in 0..total / 1000 {
        let mut pipe = redis::pipe();
        for i in 0..1000 {
            let mut payload = format!("{:08}", batch * 1000 + i).into_bytes();
            payload.resize(size, b'.');
            pipe.cmd("PUBLISH").arg(&channel).arg(payload).ignore();
        }
        pipe.query::<()>(&mut con).unwrap();
        let b = sub.backlog();
        highest = (highest.0.max(b.messages), highest.1.max(b.bytes));
        assert!(b.messages <= cap && b.bytes <= bound_bytes, "{b:?}");
    }
    // Every message read: waiting in the buffer or counted as dropped.
    wait_until("all 300 000 messages read", DEADLINE, || {
        let b = sub.backlog();
        highest = (highest.0.max(b.messages), highest.1.max(b.bytes));
        b.messages as u64 + sub.dropped() == total as u64
    });
    let grown = rss().saturating_sub(before);
    eprintln!(
        "backlog at most {} messages / {} bytes; RSS grew {} MB; dropped {}",
        highest.0,
        highest.1,
        grown / 1_000_000,
        sub.dropped()
    );
    assert_eq!(highest.0, cap, "the buffer filled up to its bound and no further");
    assert!(highest.1 <= bound_bytes);
    // Was +535 MB for 300k messages with the unbounded queues.
    assert!(grown < 100_000_000, "RSS grew {grown} bytes");
    let mut received = Vec::new();
    let mut dropped_events = 0u64;
    while let Some(e) = sub.try_next_event() {
        match e {
            Event::Message(m) => received.push(m.payload_str()[..8].parse::<usize>().unwrap()),
            Event::Dropped { server, count } => {
                assert_eq!(server, s[0].name());
                dropped_events += count;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // published = received + dropped, exactly; the newest were kept.
    assert_eq!(received.len(), cap);
    assert_eq!(dropped_events, (total - cap) as u64);
    assert_eq!(sub.dropped(), (total - cap) as u64);
    assert_eq!(received, ((total - cap)..total).collect::<Vec<_>>());
    assert_eq!(sub.backlog().messages, 0);
    assert_eq!(sub.backlog().bytes, 0);
}

#[test]
fn subscribe_to_a_stopped_server_returns_within_its_timeout_and_the_stream_flows() {
    let s = servers(2);
    let sync = MRedis::new(urls(&s)).unwrap();
    let on_stopped = channel_on(&sync, 0, "frozen:", 0);
    let on_stopped_too = channel_on(&sync, 0, "frozen:", 1);
    let on_live = channel_on(&sync, 1, "live:", 0);
    let timeout = Duration::from_secs(1);
    let pid = s[0].pid().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mr = mredis::aio::MRedis::connect(urls(&s)).await.unwrap();
        let mut sub = mr
            .subscriber_with(SubscriberOptions {
                confirm_timeout: timeout,
                ..Default::default()
            })
            .unwrap();
        sub.subscribe(&on_live).await.unwrap();
        signal("STOP", pid);
        // From another task, while this one consumes the stream.
        let handle = sub.subscriptions();
        let started = Instant::now();
        let channel = on_stopped.clone();
        let pending = tokio::spawn(async move {
            let r = handle.subscribe(&channel).await;
            (r, started.elapsed())
        });
        let n: usize = mr.publish(&on_live, "while waiting").await.unwrap();
        assert_eq!(n, 1);
        let m = match tokio::time::timeout(DEADLINE, sub.next_event()).await.unwrap().unwrap() {
            Event::Message(m) => m,
            other => panic!("unexpected {other:?}"),
        };
        let arrived = started.elapsed();
        assert_eq!(m.payload_str(), "while waiting");
        let (r, took) = pending.await.unwrap();
        let err = r.unwrap_err().to_string();
        eprintln!("subscribe gave up after {took:?}; the other server's message arrived after {arrived:?}: {err}");
        assert!(err.contains("recorded"), "{err}");
        assert!(took >= timeout && took < timeout * 3, "{took:?}");
        assert!(arrived < took, "the message arrived while subscribe waited");
        // The subscriber's own method: bounded as well, and messages of the
        // live server wait in the buffer meanwhile.
        let n: usize = mr.publish(&on_live, "buffered meanwhile").await.unwrap();
        assert_eq!(n, 1);
        let started = Instant::now();
        let err = sub.subscribe(&on_stopped_too).await.unwrap_err().to_string();
        let took = started.elapsed();
        assert!(err.contains("recorded"), "{err}");
        assert!(took < timeout * 3, "{took:?}");
        match sub.try_next_event() {
            Some(Event::Message(m)) => assert_eq!(m.payload_str(), "buffered meanwhile"),
            other => panic!("{other:?}"),
        }
        signal("CONT", pid);
        // Both recorded channels get subscribed once the server answers.
        for c in [&on_stopped, &on_stopped_too] {
            let started = Instant::now();
            loop {
                let n: usize = mr.publish(c, format!("hello {c}")).await.unwrap();
                if n == 1 {
                    break;
                }
                assert!(started.elapsed() < DEADLINE, "{c} never subscribed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let m = match tokio::time::timeout(DEADLINE, sub.next_event()).await.unwrap().unwrap() {
                Event::Message(m) => m,
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(m.payload_str(), format!("hello {c}"));
            assert_eq!(m.server(), s[0].name());
        }
    });
}

#[test]
fn a_subscribe_made_while_its_server_is_killed_is_honoured_after_the_restart() {
    let mut s = servers(2);
    let mr = MRedis::new(urls(&s)).unwrap();
    let mut sub = mr
        .subscriber_with(SubscriberOptions {
            confirm_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .unwrap();
    let elsewhere = channel_on(&mr, 1, "steady:", 0);
    sub.subscribe(&elsewhere).unwrap();
    let mut others = Vec::new();
    // Four rounds: the subscribe races the connection's end differently.
    let mut channels = Vec::new();
    for round in 0..4 {
        let channel = channel_on(&mr, 0, "after-kill:", round);
        s[0].stop(); // SIGKILL
        let err = sub.subscribe(&channel).unwrap_err().to_string();
        assert!(err.contains("recorded"), "round {round}: {err}");
        channels.push(channel);
        s[0].restart();
        // Every channel recorded so far is subscribed again: messages arrive.
        for c in &channels {
            let started = Instant::now();
            let probe = format!("round {round} {c}");
            loop {
                let n = publish(&mr, c, &probe);
                if n == 1 {
                    break;
                }
                assert!(started.elapsed() < DEADLINE, "round {round}: {c} not resubscribed");
                std::thread::sleep(Duration::from_millis(5));
            }
            let m = next_message(&mut sub, &mut others);
            assert_eq!(
                (m.channel_str().as_ref(), m.payload_str().as_ref()),
                (c.as_str(), probe.as_str())
            );
        }
        let n: usize = mr.publish(&elsewhere, "still here").unwrap();
        assert_eq!(n, 1);
        assert_eq!(next_message(&mut sub, &mut others).payload_str(), "still here");
    }
    // Each kill was reported, and each restart.
    let name = s[0].name();
    let lost = others
        .iter()
        .filter(|e| matches!(e, Event::Lost { server, .. } if *server == name))
        .count();
    let back = others
        .iter()
        .filter(|e| matches!(e, Event::Resubscribed { server, .. } if *server == name))
        .count();
    assert_eq!((lost, back), (4, 4), "{others:?}");
}

/// PUBLISH through `mr`, its receivers. A pooled connection from before a
/// restart fails once: such a PUBLISH is sent again.
fn publish(mr: &MRedis, channel: &str, payload: &str) -> usize {
    let mut tries = 0;
    loop {
        match mr.publish(channel, payload) {
            Ok(r) => return r,
            Err(e) if tries < 8 && e.is_io_error() => tries += 1,
            Err(e) => panic!("PUBLISH {channel} {payload}: {e}"),
        }
    }
}

/// Publishes `n` messages on `channel`; each must reach one subscriber.
fn publish_all(mr: &MRedis, channel: &str, tag: &str, n: usize) {
    for i in 0..n {
        assert_eq!(publish(mr, channel, &format!("{tag} {i}")), 1, "{tag} {i} on {channel}");
    }
}

/// Receives messages until `n` of `channel` tagged `tag` arrived (others
/// are kept in `events`).
fn receive_all(sub: &mut mredis::Subscriber, channel: &str, tag: &str, n: usize, events: &mut Vec<Event>) -> usize {
    let mut got = 0;
    while got < n {
        let m = next_message(sub, events);
        if m.channel() == channel.as_bytes() && m.payload_str().starts_with(tag) {
            got += 1;
        }
    }
    got
}

/// Waits for a `Resubscribed` of `server` that follows a `Lost` of it,
/// among the events received from now on (messages are kept aside).
fn wait_for_gap_closed(sub: &mut mredis::Subscriber, server: &str, events: &mut Vec<Event>) -> (String, Duration) {
    let started = Instant::now();
    let mut lost = None;
    loop {
        let left = DEADLINE.saturating_sub(started.elapsed());
        let e = sub
            .next_event(Some(left))
            .unwrap_or_else(|| panic!("no Lost/Resubscribed of {server} within {DEADLINE:?}: {events:?}"));
        events.push(e.clone());
        match e {
            Event::Lost { server: s, reason } if s == server => lost = Some(reason),
            Event::Resubscribed { server: s, after } if s == server => {
                if let Some(reason) = lost.take() {
                    return (reason, after);
                }
            }
            _ => {}
        }
    }
}

#[test]
fn subscriptions_follow_ejection_out_and_back_with_every_gap_marked() {
    let mut s = servers(3);
    let interval = Duration::from_millis(100);
    let mr = MRedis::builder()
        .servers(list(&s))
        .mode(Mode::Ketama {
            hash: KeyHash::Fnv1a64,
            hash_tag: None,
        })
        .connect_timeout(Duration::from_millis(200))
        .health_check(HealthCheck {
            interval,
            down_after: 2,
            eject: true,
            ..Default::default()
        })
        .build()
        .unwrap();
    wait_until("every server checked", DEADLINE, || {
        mr.health().iter().all(|h| h.up && h.checks >= 2)
    });
    let victim = 0;
    let before = channel_on(&mr, victim, "news:", 0);
    let during = channel_on(&mr, victim, "news:", 1);
    let mut sub = mr
        .subscriber_with(SubscriberOptions {
            confirm_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        })
        .unwrap();
    let mut events = Vec::new();
    sub.subscribe(&before).unwrap();
    publish_all(&mr, &before, "before", 100);
    assert_eq!(receive_all(&mut sub, &before, "before", 100, &mut events), 100);

    // Out: the victim is killed and ejected; its channels are published on
    // a fallback server, where the subscriber follows them.
    s[victim].stop();
    // Marked down first, then ejected (the placement without it is built
    // after the health state changes): wait for both.
    wait_until("the victim marked down and ejected", DEADLINE, || {
        !mr.health()[victim].up && mr.server_index_for(before.as_bytes()) != victim
    });
    let fallback = mr.server_index_for(before.as_bytes());
    let (reason, after) = wait_for_gap_closed(&mut sub, &s[fallback].name(), &mut events);
    eprintln!("moved to the fallback after {after:?}: {reason}");
    assert!(reason.contains("move here from"), "{reason}");
    // Was 0 of 100: every message published after the resubscription arrives.
    publish_all(&mr, &before, "ejected", 100);
    assert_eq!(receive_all(&mut sub, &before, "ejected", 100, &mut events), 100);
    // A channel subscribed while its server is ejected goes to the fallback.
    let fallback_of_during = mr.server_index_for(during.as_bytes());
    assert_ne!(fallback_of_during, victim);
    sub.subscribe(&during).unwrap();
    publish_all(&mr, &during, "ejected", 100);
    assert_eq!(receive_all(&mut sub, &during, "ejected", 100, &mut events), 100);

    // Back: the victim returns; PUBLISH goes to it again, and so do the
    // subscriptions. A Lost of the victim was reported (its connection
    // died), and its Resubscribed comes only once both channels are there.
    s[victim].restart();
    // As for the ejection: the state says up just before the routing
    // changes back (the guard of the keys to move back goes in first).
    wait_until("the victim marked up and routed to again", DEADLINE, || {
        mr.health()[victim].up && mr.server_index_for(before.as_bytes()) == victim
    });
    assert_eq!(mr.server_index_for(before.as_bytes()), victim);
    assert_eq!(mr.server_index_for(during.as_bytes()), victim);
    let name = s[victim].name();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Lost { server, .. } if *server == name)),
        "{events:?}"
    );
    let started = Instant::now();
    let mut stale = false;
    loop {
        // The Resubscribed that closes the victim's gap: after it, both
        // channels are subscribed there. One from before the placement
        // moved back must be followed by a Lost for the moving channels.
        let left = DEADLINE.saturating_sub(started.elapsed());
        let e = sub.next_event(Some(left)).expect("the victim's Resubscribed");
        events.push(e.clone());
        match &e {
            Event::Lost { server, .. } if *server == name => stale = false,
            Event::Resubscribed { server, .. } if *server == name => {
                assert!(!stale, "a second Resubscribed without a Lost in between: {events:?}");
                let receivers: Vec<usize> = [&before, &during].iter().map(|c| publish(&mr, c, "probe")).collect();
                if receivers == [1, 1] {
                    break;
                }
                eprintln!("{receivers:?} receivers after {e:?}: a Lost must follow");
                stale = true;
            }
            _ => {}
        }
    }
    publish_all(&mr, &before, "back", 100);
    publish_all(&mr, &during, "back", 100);
    assert_eq!(receive_all(&mut sub, &before, "back", 100, &mut events), 100);
    assert_eq!(receive_all(&mut sub, &during, "back", 100, &mut events), 100);
    // Every gap opened with a Lost and closed with a Resubscribed, per server.
    for x in &s {
        let name = x.name();
        let lost = events
            .iter()
            .filter(|e| matches!(e, Event::Lost { server, .. } if *server == name))
            .count();
        let back = events
            .iter()
            .filter(|e| matches!(e, Event::Resubscribed { server, .. } if *server == name))
            .count();
        assert_eq!(lost, back, "{name}: {events:?}");
    }
}

/// `subscriber()` takes the client's own timeouts: a subscribe to a
/// stopped server gives up after the client's response timeout (not the
/// subscriber's 5 s default), and says how long it waited.
#[test]
fn a_clients_subscriber_uses_the_clients_timeouts() {
    let s = servers(2);
    let mr = MRedis::builder()
        .servers(
            urls(&s)
                .into_iter()
                .map(|u| mredis::Server::from_url(&u).unwrap())
                .collect::<Vec<_>>(),
        )
        .response_timeout(Some(Duration::from_millis(700)))
        .build()
        .unwrap();
    let on_stopped = channel_on(&mr, 0, "frozen:", 0);
    let mut sub = mr.subscriber().unwrap();
    let pid = s[0].pid().unwrap();
    signal("STOP", pid);
    let err = sub.subscribe(&on_stopped).unwrap_err().to_string();
    signal("CONT", pid);
    assert!(err.contains("within 700ms"), "{err}");
}
