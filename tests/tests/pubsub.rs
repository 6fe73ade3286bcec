//! Pub/Sub across servers: channels subscribed on their owner server,
//! patterns on every server, one stream; keyspace notifications of the
//! whole fleet; a restarted server resubscribed by itself.

use std::collections::BTreeSet;
use std::time::Duration;

use mredis::{Event, MRedis};
use mredis_tests::{servers, urls};
use redis::Commands;

/// The next message (skipping other events), within 30 s (a bound for a
/// busy machine; messages arrive at once).
async fn next_message(sub: &mut mredis::aio::Subscriber) -> mredis::Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), sub.next_event()).await {
            Ok(Some(Event::Message(m))) => return m,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the subscriber ended"),
            Err(_) => panic!("no message within 30 s"),
        }
    }
}

/// A channel owned by each server of `mr`.
fn channel_per_server(mr: &MRedis, prefix: &str) -> Vec<String> {
    (0..mr.servers().len())
        .map(|i| {
            (0..)
                .map(|j| format!("{prefix}{j}"))
                .find(|c| mr.server_index_for(c.as_bytes()) == i)
                .unwrap()
        })
        .collect()
}

#[test]
fn messages_published_to_every_server_reach_one_subscriber() {
    let s = servers(4);
    let sync = MRedis::new(urls(&s)).unwrap();
    let channels = channel_per_server(&sync, "chan:");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mr = mredis::aio::MRedis::connect(urls(&s)).await.unwrap();
        let mut sub = mr.subscriber().unwrap();
        for c in &channels {
            sub.subscribe(c).await.unwrap();
        }
        for (i, c) in channels.iter().enumerate() {
            // PUBLISH is routed by channel: one receiver, on the owner.
            let receivers: usize = mr.publish(c, format!("hello {i}")).await.unwrap();
            assert_eq!(receivers, 1, "{c}");
        }
        let mut got = BTreeSet::new();
        for _ in 0..channels.len() {
            let m = next_message(&mut sub).await;
            let i = channels.iter().position(|c| c.as_bytes() == m.channel()).unwrap();
            assert_eq!(m.server(), s[i].name(), "tagged with its server");
            assert_eq!(m.payload_str(), format!("hello {i}"));
            got.insert(i);
        }
        assert_eq!(got.len(), 4);
        // Unsubscribe while running: no more messages from that channel.
        sub.unsubscribe(&channels[0]).await.unwrap();
        let receivers: usize = mr.publish(&channels[0], "gone").await.unwrap();
        assert_eq!(receivers, 0);
    });
}

#[test]
fn a_pattern_matches_on_every_server() {
    let s = servers(4);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mr = mredis::aio::MRedis::connect(urls(&s)).await.unwrap();
        let mut sub = mr.subscriber().unwrap();
        sub.psubscribe("news.*").await.unwrap();
        // Published on each server directly, whatever owns the channel.
        for (i, server) in s.iter().enumerate() {
            let n: usize = server.conn().publish(format!("news.{i}"), i).unwrap();
            assert_eq!(n, 1, "the pattern is subscribed on {}", server.name());
        }
        let mut from = BTreeSet::new();
        for _ in 0..4 {
            let m = next_message(&mut sub).await;
            assert_eq!(m.pattern(), Some(&b"news.*"[..]));
            from.insert(m.server().to_string());
        }
        assert_eq!(from.len(), 4, "{from:?}");
    });
}

#[test]
fn keyspace_expiry_events_arrive_from_every_server() {
    let s = servers(4);
    let sync = MRedis::new(urls(&s)).unwrap();
    let _: mredis::PerServer<()> = sync.config_set(&["notify-keyspace-events", "Ex"]).unwrap();
    let keys = channel_per_server(&sync, "short-lived:");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mr = mredis::aio::MRedis::connect(urls(&s)).await.unwrap();
        let mut sub = mr.subscriber().unwrap();
        sub.psubscribe("__keyevent@0__:expired").await.unwrap();
        for k in &keys {
            mr.pset_ex::<_, _, ()>(k, 1, 50).await.unwrap();
        }
        let mut expired = BTreeSet::new();
        while expired.len() < keys.len() {
            let m = next_message(&mut sub).await;
            let i = keys.iter().position(|k| k.as_bytes() == m.payload()).unwrap();
            assert_eq!(m.server(), s[i].name());
            expired.insert(i);
        }
    });
}

#[test]
fn a_restarted_server_is_resubscribed_and_later_messages_arrive() {
    let mut s = servers(3);
    let sync = MRedis::new(urls(&s)).unwrap();
    let channels = channel_per_server(&sync, "live:");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut sub = rt.block_on(async {
        let mr = mredis::aio::MRedis::connect(urls(&s)).await.unwrap();
        let sub = mr.subscriber().unwrap();
        for c in &channels {
            sub.subscribe(c).await.unwrap();
        }
        sub.psubscribe("any.*").await.unwrap();
        sub
    });
    s[1].restart(); // stopped, then started again, empty
    let name = s[1].name();
    rt.block_on(async {
        let mut lost = false;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), sub.next_event()).await {
                Ok(Some(Event::Lost { server, .. })) => {
                    assert_eq!(server, name);
                    lost = true;
                }
                Ok(Some(Event::Resubscribed { server, .. })) => {
                    assert_eq!(server, name);
                    assert!(lost, "a loss is reported before the resubscription");
                    break;
                }
                Ok(Some(other)) => panic!("unexpected {other:?}"),
                Ok(None) | Err(_) => panic!("no resubscription within 10 s"),
            }
        }
    });
    // Messages after the restart arrive, on the channel and the pattern.
    let n: usize = sync.publish(&channels[1], "after").unwrap();
    assert_eq!(n, 1);
    let n: usize = s[1].conn().publish("any.thing", "x").unwrap();
    assert_eq!(n, 1);
    rt.block_on(async {
        let m = next_message(&mut sub).await;
        assert_eq!((m.server(), m.payload_str().as_ref()), (name.as_str(), "after"));
        let m = next_message(&mut sub).await;
        assert_eq!(m.pattern(), Some(&b"any.*"[..]));
    });
}

#[test]
fn the_sync_subscriber_is_an_iterator() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    let channels = channel_per_server(&mr, "sync:");
    let mut sub = mr.subscriber().unwrap();
    for c in &channels {
        sub.subscribe(c).unwrap();
    }
    for c in &channels {
        let n: usize = mr.publish(c, c).unwrap();
        assert_eq!(n, 1);
    }
    let got: BTreeSet<String> = sub
        .by_ref()
        .take(3)
        .map(|e| match e {
            Event::Message(m) => m.payload_str().into_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, channels.iter().cloned().collect());
    assert_eq!(sub.next_event(Some(Duration::from_millis(100))), None);
}
