//! Client-side caching (`Builder::client_cache`) against real servers: a
//! cached read is answered from memory, dropped when another client
//! writes the key, never older than this client's own write, flushed when
//! its invalidations could have been missed (listener killed, server
//! restarted), bounded in memory, and replaced on a reconfigure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use mredis::MRedis;
use mredis_tests::{RedisServer, servers, urls, wait_until};

fn cached(rt: &tokio::runtime::Runtime, s: &[RedisServer], bytes: usize) -> mredis::aio::MRedis {
    rt.block_on(MRedis::builder().servers(urls(s)).client_cache(bytes).build_async())
        .unwrap()
}

/// The server of `s` that holds `key` (set beforehand).
fn owner<'a>(s: &'a [RedisServer], key: &str) -> &'a RedisServer {
    s.iter()
        .find(|x| x.keys().iter().any(|k| k == key))
        .expect("the key is on some server")
}

#[test]
fn a_cached_read_is_answered_from_memory_until_another_client_writes_the_key() {
    let s = servers(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mr = cached(&rt, &s, 1 << 20);
    let plain = MRedis::new(urls(&s)).unwrap();
    // The listeners connect in the background: wait until reads are kept.
    plain.set::<_, _, ()>("c:k", "v1").unwrap();
    wait_until("the cache keeps reads", Duration::from_secs(10), || {
        rt.block_on(mr.get::<_, String>("c:k")).unwrap();
        mr.cache_stats().unwrap().entries.iter().map(|(_, n)| n).sum::<usize>() > 0
    });
    let before = mr.cache_stats().unwrap();
    for _ in 0..100 {
        assert_eq!(rt.block_on(mr.get::<_, String>("c:k")).unwrap(), "v1");
    }
    let after = mr.cache_stats().unwrap();
    assert_eq!(after.hits - before.hits, 100, "{after:?}");
    assert_eq!(after.misses, before.misses, "{after:?}");
    // The server really saw no read meanwhile: one GET in its stats at most.
    let mut con = owner(&s, "c:k").conn();
    let calls = |con: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
        info.lines()
            .find(|l| l.starts_with("cmdstat_get:"))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let served = calls(&mut con);
    for _ in 0..50 {
        rt.block_on(mr.get::<_, String>("c:k")).unwrap();
    }
    assert_eq!(calls(&mut con), served, "cached reads reached the server");
    // Another client writes: the server's invalidation drops the entry.
    let _: () = redis::cmd("SET").arg("c:k").arg("v2").query(&mut con).unwrap();
    wait_until("the write is seen", Duration::from_secs(5), || {
        rt.block_on(mr.get::<_, String>("c:k")).unwrap() == "v2"
    });
    assert!(mr.cache_stats().unwrap().invalidations > after.invalidations);
    // An uncached view reads from the server.
    let hits = mr.cache_stats().unwrap().hits;
    assert_eq!(rt.block_on(mr.uncached().get::<_, String>("c:k")).unwrap(), "v2");
    assert_eq!(mr.cache_stats().unwrap().hits, hits);
    // Expiry: a key with a time to live is not served past it.
    plain.pset_ex::<_, _, ()>("c:ttl", "short", 300).unwrap();
    assert_eq!(
        rt.block_on(mr.get::<_, Option<String>>("c:ttl")).unwrap().as_deref(),
        Some("short")
    );
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(rt.block_on(mr.get::<_, Option<String>>("c:ttl")).unwrap(), None);
}

/// Writers on another client and this client's own writes, readers on
/// the cached client: a reader never sees a counter go back, a read after
/// this client's own write sees that write, and once the writers stop
/// every reader sees the last value.
#[test]
fn readers_never_go_back_and_see_their_own_writes() {
    let s = servers(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mr = cached(&rt, &s, 1 << 20);
    let plain = MRedis::new(urls(&s)).unwrap();
    let keys: Vec<String> = (0..8).map(|i| format!("c:n{i}")).collect();
    for k in &keys {
        plain.set::<_, _, ()>(k, 0).unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicI64::new(0));
    let writer = {
        let (plain, keys, done, last) = (plain.clone(), keys.clone(), done.clone(), last.clone());
        std::thread::spawn(move || {
            for n in 1..=300i64 {
                for k in &keys {
                    plain.set::<_, _, ()>(k, n).unwrap();
                }
                last.store(n, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let backwards = rt.block_on(async {
        let mut tasks = Vec::new();
        for r in 0..4 {
            let (mr, keys, done) = (mr.clone(), keys.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut seen = vec![0i64; keys.len()];
                let mut backwards = 0;
                while !done.load(Ordering::SeqCst) {
                    for (i, k) in keys.iter().enumerate() {
                        let v: i64 = mr.get(k).await.unwrap();
                        if v < seen[i] {
                            backwards += 1;
                        }
                        seen[i] = seen[i].max(v);
                    }
                    // This client's own write, read back at once.
                    let own = format!("c:own{r}");
                    let stamp = seen[0];
                    mr.set::<_, _, ()>(&own, stamp).await.unwrap();
                    assert_eq!(mr.get::<_, i64>(&own).await.unwrap(), stamp, "read-your-writes");
                }
                backwards
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    });
    writer.join().unwrap();
    assert_eq!(backwards, 0, "a reader saw a value older than one it had read");
    let final_value = last.load(Ordering::SeqCst);
    wait_until("every reader sees the last write", Duration::from_secs(5), || {
        keys.iter()
            .all(|k| rt.block_on(mr.get::<_, i64>(k)).unwrap() == final_value)
    });
    let stats = mr.cache_stats().unwrap();
    assert!(stats.hits > 0 && stats.invalidations > 0, "{stats:?}");
}

#[test]
fn every_entry_of_a_server_goes_when_its_invalidations_could_be_missed() {
    let mut s = servers(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mr = cached(&rt, &s, 1 << 20);
    let plain = MRedis::new(urls(&s)).unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("c:f{i}")).collect();
    for k in &keys {
        plain.set::<_, _, ()>(k, "old").unwrap();
    }
    let entries = |mr: &mredis::aio::MRedis| mr.cache_stats().unwrap().entries.iter().map(|(_, n)| n).sum::<usize>();
    let read_all = |mr: &mredis::aio::MRedis| {
        for k in &keys {
            rt.block_on(mr.get::<_, String>(k)).unwrap();
        }
    };
    wait_until("entries kept", Duration::from_secs(10), || {
        read_all(&mr);
        entries(&mr) == keys.len()
    });
    // The listener's connection killed: its server's entries go.
    let flushes = mr.cache_stats().unwrap().flushes;
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut s[0].conn())
        .unwrap();
    wait_until("the server's entries dropped", Duration::from_secs(5), || {
        mr.cache_stats().unwrap().flushes > flushes
    });
    // A restart: whatever was written while it was down (here: the data
    // is gone) is not served from memory.
    wait_until("entries kept again", Duration::from_secs(10), || {
        read_all(&mr);
        entries(&mr) == keys.len()
    });
    let flushes = mr.cache_stats().unwrap().flushes;
    s[1].stop();
    wait_until("the stop is noticed", Duration::from_secs(5), || {
        mr.cache_stats().unwrap().flushes > flushes
    });
    s[1].restart();
    let on_restarted: Vec<&String> = keys
        .iter()
        .filter(|k| plain.server_for(k.as_str()).unwrap() == s[1].name())
        .collect();
    assert!(!on_restarted.is_empty());
    let mut con = s[1].conn();
    for k in &on_restarted {
        let _: () = redis::cmd("SET").arg(k.as_str()).arg("new").query(&mut con).unwrap();
    }
    for k in &on_restarted {
        assert_eq!(rt.block_on(mr.get::<_, String>(k.as_str())).unwrap(), "new", "{k}");
    }
}

#[test]
fn the_cache_stays_within_its_memory_bound() {
    let s = servers(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bound = 64 * 1024;
    let mr = cached(&rt, &s, bound);
    let plain = MRedis::new(urls(&s)).unwrap();
    let items: Vec<(String, String)> = (0..3000).map(|i| (format!("c:m{i}"), "x".repeat(100))).collect();
    plain.mset::<_, _, ()>(&items).unwrap();
    wait_until("the listeners up", Duration::from_secs(10), || {
        rt.block_on(mr.get::<_, String>("c:m0")).unwrap();
        mr.cache_stats().unwrap().bytes > 0
    });
    for (k, _) in &items {
        let v: String = rt.block_on(mr.get(k)).unwrap();
        assert_eq!(v.len(), 100);
        assert!(mr.cache_stats().unwrap().bytes <= bound);
    }
    let stats = mr.cache_stats().unwrap();
    assert!(stats.evictions > 0 && stats.bytes <= bound, "{stats:?}");
    assert!(mr.connections_opened().cache >= 4, "{:?}", mr.connections_opened());
}
