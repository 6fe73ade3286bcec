//! Load without loss: many threads on the sync client and many tasks on the
//! async one, mixing reads, writes, fan-outs and pipelines over 4 servers;
//! afterwards every key written is checked on the server that owns it.
//!
//! Bounded for CI; `MREDIS_SOAK_SECS=60 cargo test -p mredis-tests --test integration -- soak::` runs longer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mredis::{MRedis, PerServer};
use mredis_tests::{RedisServer, original_index as index, servers, urls};
use redis::Commands;

fn duration() -> Duration {
    let secs = std::env::var("MREDIS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    Duration::from_secs(secs)
}

/// Checks that each written key holds its last value on its owner and nowhere else.
fn verify(s: &[RedisServer], written: &HashMap<String, i64>) {
    let mut cons: Vec<redis::Connection> = s.iter().map(|x| x.conn()).collect();
    let mut lost = 0;
    let mut misplaced = 0;
    for (key, value) in written {
        let owner = index(key.as_bytes(), s.len());
        let got: Option<i64> = cons[owner].get(key).unwrap();
        if got != Some(*value) {
            lost += 1;
        }
        for (i, con) in cons.iter_mut().enumerate() {
            if i != owner && con.exists::<_, bool>(key).unwrap() {
                misplaced += 1;
            }
        }
    }
    assert_eq!((lost, misplaced), (0, 0), "of {} keys", written.len());
    let total: i64 = s.iter().map(|x| x.dbsize()).sum();
    assert_eq!(total as usize, written.len(), "no stray keys");
}

#[test]
fn sync_soak_16_threads() {
    let s = servers(4);
    let mr = MRedis::new(urls(&s)).unwrap();
    let written = Mutex::new(HashMap::new());
    let until = Instant::now() + duration();
    std::thread::scope(|scope| {
        for t in 0..16 {
            let (mr, written) = (&mr, &written);
            scope.spawn(move || {
                let mut mine = HashMap::new();
                let mut i: i64 = 0;
                while Instant::now() < until {
                    let key = format!("s{t}:{}", i % 500);
                    match i % 10 {
                        0 => {
                            let _: PerServer<i64> = mr.dbsize().unwrap();
                        }
                        1 => {
                            let (v,): (i64,) = mr
                                .pipeline(&key)
                                .unwrap()
                                .set(&key, i)
                                .ignore()
                                .get(&key)
                                .query(mr)
                                .unwrap();
                            assert_eq!(v, i);
                            mine.insert(key, i);
                        }
                        2 => {
                            let k2 = format!("s{t}:{}", (i + 1) % 500);
                            mr.mset::<_, _, ()>(&[(&key, i), (&k2, i)]).unwrap();
                            mine.insert(key, i);
                            mine.insert(k2, i);
                        }
                        3 | 4 => {
                            let got: Option<i64> = mr.get(&key).unwrap();
                            assert_eq!(got, mine.get(&key).copied(), "{key}");
                        }
                        _ => {
                            mr.set::<_, _, ()>(&key, i).unwrap();
                            mine.insert(key, i);
                        }
                    }
                    i += 1;
                }
                written.lock().unwrap().extend(mine);
            });
        }
    });
    let written = written.into_inner().unwrap();
    assert!(written.len() > 1000, "only {} keys written", written.len());
    verify(&s, &written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_soak_1000_tasks() {
    let s = servers(4);
    let mr = mredis::aio::MRedis::connect(urls(&s)).await.unwrap();
    let until = Instant::now() + duration();
    let mut tasks = Vec::new();
    for t in 0..1000 {
        let mr = mr.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = HashMap::new();
            let mut i: i64 = 0;
            while Instant::now() < until {
                let key = format!("a{t}:{}", i % 20);
                match i % 8 {
                    0 if t % 50 == 0 => {
                        let _: PerServer<i64> = mr.dbsize().await.unwrap();
                    }
                    1 => {
                        let (v,): (i64,) = mr
                            .pipeline(&key)
                            .unwrap()
                            .set(&key, i)
                            .ignore()
                            .get(&key)
                            .query_async(&mr)
                            .await
                            .unwrap();
                        assert_eq!(v, i);
                        mine.insert(key, i);
                    }
                    2 | 3 => {
                        let got: Option<i64> = mr.get(&key).await.unwrap();
                        assert_eq!(got, mine.get(&key).copied(), "{key}");
                    }
                    _ => {
                        mr.set::<_, _, ()>(&key, i).await.unwrap();
                        mine.insert(key, i);
                    }
                }
                i += 1;
            }
            mine
        }));
    }
    let mut written = HashMap::new();
    for task in tasks {
        written.extend(task.await.unwrap());
    }
    assert!(written.len() > 1000, "only {} keys written", written.len());
    verify(&s, &written);
}
