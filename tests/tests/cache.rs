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

/// How many entries `mr`'s cache holds now, over every server.
fn entries(mr: &mredis::aio::MRedis) -> usize {
    mr.cache_stats().unwrap().entries.iter().map(|(_, n)| n).sum()
}

/// Reads every key of `keys` until the cache holds an entry for each (its
/// invalidation listeners connect in the background).
fn keep_all(rt: &tokio::runtime::Runtime, mr: &mredis::aio::MRedis, keys: &[String], what: &str) {
    wait_until(what, Duration::from_secs(10), || {
        for k in keys {
            rt.block_on(mr.get::<_, redis::Value>(k)).unwrap();
        }
        entries(mr) == keys.len()
    });
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
        entries(&mr) > 0
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
    // Time itself is the condition: the key's 300 ms run out, with nothing
    // touching it on the server (which would expire it there and send an
    // invalidation); the entry must end by its own time to live.
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
    keep_all(&rt, &mr, &keys, "entries kept");
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
    keep_all(&rt, &mr, &keys, "entries kept again");
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

/// A Sentinel failover: entries read from the old primary are not served
/// once the client follows the new one; what is written on the new
/// primary is read.
#[test]
fn a_failover_drops_the_shards_entries() {
    if !mredis_tests::redis_server_available() {
        return;
    }
    let _quiet = mredis_tests::quiet();
    let mut fleet = mredis_tests::SentinelFleet::start(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let shard = mredis::Server::sentinel(&fleet.shards[0].name, fleet.sentinel_urls()).unwrap();
    let mr = rt
        .block_on(
            MRedis::builder()
                .servers(vec![shard])
                .connect_timeout(Duration::from_millis(500))
                .response_timeout(Some(Duration::from_secs(2)))
                .client_cache(1 << 20)
                .build_async(),
        )
        .unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("c:fo{i}")).collect();
    for k in &keys {
        rt.block_on(mr.set::<_, _, ()>(k, "before")).unwrap();
    }
    mredis_tests::wait_replicated(&mut fleet.shards[0].primary.conn(), &mut fleet.shards[0].replica.conn());
    keep_all(&rt, &mr, &keys, "entries kept");
    let old = fleet.master_port(0);
    fleet.shards[0].primary.stop();
    let new = fleet.wait_for_new_master(0, old, Duration::from_secs(30));
    // Written on the new primary behind the client's back.
    let mut con = fleet.conn(new);
    for k in &keys {
        let _: () = redis::cmd("SET").arg(k).arg("after").query(&mut con).unwrap();
    }
    // The client follows the failover (its first calls may fail while it
    // does); from then on no read returns the old primary's value.
    wait_until("the client follows", Duration::from_secs(30), || {
        rt.block_on(mr.uncached().get::<_, String>(&keys[0]))
            .is_ok_and(|v| v == "after")
    });
    for k in &keys {
        assert_eq!(rt.block_on(mr.get::<_, String>(k)).unwrap(), "after", "{k}");
    }
    assert!(mr.cache_stats().unwrap().flushes > 0);
}

/// A reconfigure makes a new cache: reads after it see what was written
/// meanwhile by another client, on the servers of the new configuration.
#[test]
fn a_reconfigure_starts_a_new_cache() {
    let s = servers(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mr = cached(&rt, &s[..2], 1 << 20);
    let plain = MRedis::new(urls(&s[..2])).unwrap();
    let keys: Vec<String> = (0..30).map(|i| format!("c:rc{i}")).collect();
    for k in &keys {
        plain.set::<_, _, ()>(k, "two").unwrap();
    }
    keep_all(&rt, &mr, &keys, "entries kept");
    // The keys, as the three-server configuration places them.
    let three = MRedis::new(urls(&s)).unwrap();
    for k in &keys {
        three.set::<_, _, ()>(k, "three").unwrap();
    }
    rt.block_on(mr.reconfigure(MRedis::builder().servers(urls(&s)).client_cache(1 << 20)))
        .unwrap();
    for k in &keys {
        assert_eq!(rt.block_on(mr.get::<_, String>(k)).unwrap(), "three", "{k}");
    }
    let stats = mr.cache_stats().unwrap();
    assert_eq!(stats.entries.len(), 3, "{stats:?}");
}

/// Ejection and MoveBack with a cache: a key read (and kept) from its
/// server, written elsewhere while that server is SIGSTOPped and ejected,
/// reads as that write from then on: while ejected, after the server
/// comes back, and after its keys are moved back. Never the older value.
#[test]
fn ejection_and_rejoin_never_serve_the_older_value() {
    let _quiet = mredis_tests::quiet();
    let s = servers(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let list: Vec<mredis::Server> = s
        .iter()
        .enumerate()
        .map(|(i, x)| {
            mredis::Server::from_parts("127.0.0.1", x.port(), 0)
                .unwrap()
                .with_alias(format!("s{i}"))
        })
        .collect();
    let mr = rt
        .block_on(
            MRedis::builder()
                .servers(list)
                .mode(mredis::Mode::Ketama {
                    hash: mredis::placement::hashkit::KeyHash::Fnv1a64,
                    hash_tag: None,
                })
                .connect_timeout(Duration::from_millis(200))
                .response_timeout(Some(Duration::from_secs(2)))
                .health_check(mredis::health::HealthCheck {
                    interval: Duration::from_millis(100),
                    down_after: 2,
                    eject: true,
                    ..Default::default()
                })
                .client_cache(1 << 20)
                .build_async(),
        )
        .unwrap();
    wait_until("every server checked", Duration::from_secs(10), || {
        mr.health().iter().all(|h| h.up && h.checks >= 2)
    });
    let keys: Vec<String> = (0..60).map(|i| format!("c:ej{i}")).collect();
    for k in &keys {
        rt.block_on(mr.set::<_, _, ()>(k, "old")).unwrap();
    }
    keep_all(&rt, &mr, &keys, "entries kept");
    let victim = 1;
    let on_victim: Vec<&String> = keys
        .iter()
        .filter(|k| rt.block_on(async { mr.server_for(k.as_str()) }).unwrap() == s[victim].name())
        .collect();
    assert!(!on_victim.is_empty());
    s[victim].sigstop();
    // The state says down just before the routing changes: wait for both.
    wait_until("ejected", Duration::from_secs(10), || {
        !mr.health()[victim].up && mr.server_for(on_victim[0].as_str()).unwrap() != s[victim].name()
    });
    for k in &on_victim {
        rt.block_on(mr.set::<_, _, ()>(k.as_str(), "new")).unwrap();
    }
    // Cached and uncached: neither ever reads the returning server's
    // older copy (the guard of the keys to move back is in place before
    // the routing changes).
    let read_all = |what: &str| {
        for k in &on_victim {
            for (how, mr) in [("cached", mr.clone()), ("uncached", mr.uncached())] {
                if let Ok(v) = rt.block_on(mr.get::<_, String>(k.as_str())) {
                    assert_eq!(v, "new", "{what}, {how}: {k}");
                }
            }
        }
    };
    read_all("while ejected");
    s[victim].sigcont();
    wait_until("back up", Duration::from_secs(10), || mr.health()[victim].up);
    // While the keys move back and after: always the newer value.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        read_all("after the rejoin");
    }
    let mut con = s[victim].conn();
    wait_until("the keys moved back", Duration::from_secs(15), || {
        read_all("while they move back");
        on_victim.iter().all(|k| {
            redis::cmd("GET")
                .arg(k.as_str())
                .query::<Option<String>>(&mut con)
                .unwrap()
                .as_deref()
                == Some("new")
        })
    });
    read_all("after the move");
    assert!(mr.cache_stats().unwrap().flushes > 0);
}

/// A rebalance from 3 servers to 4 under cached readers and a writer: the
/// readers switch to the migration-aware configuration, the keys move
/// (each MIGRATE invalidates the source's entries), the readers switch to
/// the new configuration; no reader ever sees a counter go back, and at
/// the end every key reads as its last write.
#[test]
fn a_rebalance_under_cached_readers_serves_no_older_value() {
    let s = servers(4);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let named = |list: &[RedisServer]| -> Vec<mredis::Server> {
        list.iter()
            .enumerate()
            .map(|(i, x)| mredis::Server::from_url(&x.url()).unwrap().with_alias(format!("s{i}")))
            .collect()
    };
    let old = || MRedis::builder().servers(named(&s[..3]));
    let new = || MRedis::builder().servers(named(&s));
    let mr = rt.block_on(old().client_cache(1 << 20).build_async()).unwrap();
    let keys: Vec<String> = (0..60).map(|i| format!("c:rb{i}")).collect();
    let writer_client = old().build().unwrap();
    for k in &keys {
        writer_client.set::<_, _, ()>(k, 0).unwrap();
    }
    keep_all(&rt, &mr, &keys, "entries kept");
    // Everyone migration-aware, then the move, with a writer and readers.
    rt.block_on(mr.reconfigure(new().migrating_from(old()).client_cache(1 << 20)))
        .unwrap();
    writer_client.reconfigure(new().migrating_from(old())).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicI64::new(0));
    let writer = {
        let (w, keys, done, last) = (writer_client.clone(), keys.clone(), done.clone(), last.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                for k in &keys {
                    w.set::<_, _, ()>(k, n).unwrap();
                }
                last.store(n, Ordering::SeqCst);
            }
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (mr, keys, done) = (mr.clone(), keys.clone(), done.clone());
            rt.spawn(async move {
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
                }
                backwards
            })
        })
        .collect();
    let report = mredis::rebalance::rebalance(
        &old().build().unwrap(),
        &new().build().unwrap(),
        mredis::rebalance::RebalanceOptions {
            allow_volatile: true,
            // The old configuration's cache connections close as its
            // background tasks see their stop (within a tenth of a second).
            census: mredis::rebalance::census::CensusOptions {
                wait: Some(Duration::from_secs(10)),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report.moved > 0, "{report:?}");
    rt.block_on(mr.reconfigure(new().client_cache(1 << 20))).unwrap();
    writer_client.reconfigure(new()).unwrap();
    // A few rounds of writes on the new configuration under the readers.
    let switched = last.load(Ordering::SeqCst);
    wait_until("writes on the new configuration", Duration::from_secs(10), || {
        last.load(Ordering::SeqCst) >= switched + 3
    });
    done.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let backwards: usize = readers.into_iter().map(|r| rt.block_on(r).unwrap()).sum();
    assert_eq!(backwards, 0, "a reader saw a counter go back");
    let final_value = last.load(Ordering::SeqCst);
    wait_until("the last write read everywhere", Duration::from_secs(5), || {
        keys.iter()
            .all(|k| rt.block_on(mr.get::<_, i64>(k)).unwrap() == final_value)
    });
}

/// A listener whose server stops answering without closing the connection
/// (SIGSTOP stands for a network cut) is treated as broken within its
/// `PING` interval plus the response timeout: the server's entries go,
/// and after the server is back the cache works again.
#[test]
fn a_listener_cut_off_without_a_close_drops_its_servers_entries() {
    let s = servers(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mr = rt
        .block_on(
            MRedis::builder()
                .servers(urls(&s))
                .response_timeout(Some(Duration::from_millis(500)))
                .client_cache(1 << 20)
                .build_async(),
        )
        .unwrap();
    let plain = MRedis::new(urls(&s)).unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("c:cut{i}")).collect();
    for k in &keys {
        plain.set::<_, _, ()>(k, "v").unwrap();
    }
    keep_all(&rt, &mr, &keys, "entries kept");
    let flushes = mr.cache_stats().unwrap().flushes;
    s[0].sigstop();
    wait_until("the cut is noticed", Duration::from_secs(10), || {
        mr.cache_stats().unwrap().flushes > flushes
    });
    let on_cut = mr.cache_stats().unwrap().entries[0].1;
    assert_eq!(on_cut, 0, "the cut server's entries are gone");
    s[0].sigcont();
    wait_until("entries kept again", Duration::from_secs(10), || {
        for k in &keys {
            let _ = rt.block_on(mr.get::<_, String>(k));
        }
        entries(&mr) == keys.len()
    });
}
