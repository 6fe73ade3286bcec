//! Client-side caching, side by side in one process against servers this
//! program starts itself:
//!
//!     cargo bench -p mredis-tests --bench cache
//!
//! Rows (each the median of `ROUNDS` alternating rounds, `PASSES` passes,
//! `MREDIS_BENCH_PASSES` to change):
//! - hot GET: 100 keys of 100 bytes read over and over through the async
//!   client with `client_cache`, against an async client built without
//!   one (target: the cached read at most 1/50 of the time);
//! - the same hot GET against a raw redis-rs `MultiplexedConnection` to
//!   the key's server (information);
//! - miss: every read a key not read before (each miss sends the read and
//!   `PTTL` on the tracked connection and keeps the reply), against a GET
//!   of other keys on the client without a cache (target: at most 1.05x);
//! - memory per entry: the bytes the cache counts for the hot keys.

use std::time::{Duration, Instant};

use mredis::MRedis;
use mredis_tests::servers;
use redis::AsyncCommands;

const ROUNDS: usize = 9;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let passes: usize = std::env::var("MREDIS_BENCH_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let s = servers(3);
    let urls: Vec<String> = s.iter().map(|x| x.url()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "client-side cache: {passes} passes x {ROUNDS} alternating rounds, medians; {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let plain = MRedis::new(urls.clone()).unwrap();
    let hot: Vec<String> = (0..100).map(|i| format!("hot:{i}")).collect();
    let value = "v".repeat(100);
    for k in &hot {
        plain.set::<_, _, ()>(k, &value).unwrap();
    }
    // Keys for misses: each read once, across all passes.
    let cold_reads = 200;
    let cold_total = cold_reads * (ROUNDS + 1) * passes;
    let cold: Vec<(String, String)> = (0..cold_total * 2)
        .map(|i| (format!("cold:{i}"), value.clone()))
        .collect();
    plain.mset::<_, _, ()>(&cold).unwrap();
    let (cached, mut raw) = rt.block_on(async {
        let cached = MRedis::builder()
            .servers(urls.clone())
            .client_cache(64 << 20)
            .build_async()
            .await
            .unwrap();
        let mut raw = Vec::new();
        for x in &s {
            raw.push(x.client().get_multiplexed_async_connection().await.unwrap());
        }
        (cached, raw)
    });
    // The uncached side: an async client built without a cache.
    let uncached = rt.block_on(mredis::aio::MRedis::connect(urls.clone())).unwrap();
    // Wait for the listeners, then warm the hot set.
    rt.block_on(async {
        let started = Instant::now();
        while cached.cache_stats().unwrap().bytes == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the cache never kept a read"
            );
            let _: String = cached.get(&hot[0]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for k in &hot {
            let _: String = cached.get(k).await.unwrap();
        }
    });
    let owner: Vec<usize> = hot.iter().map(|k| plain.server_index_for(k.as_bytes())).collect();
    let reps = 20;
    let mut rows: Vec<(&str, f64, Vec<f64>, String)> = vec![
        (
            "hot GET: cached / uncached (target <= 0.02)",
            0.02,
            Vec::new(),
            String::new(),
        ),
        (
            "hot GET: cached / raw connection (information)",
            f64::INFINITY,
            Vec::new(),
            String::new(),
        ),
        ("miss / uncached GET (target <= 1.05)", 1.05, Vec::new(), String::new()),
    ];
    let mut next_cold = 0;
    for pass in 0..passes {
        eprintln!("pass {}/{passes}", pass + 1);
        let (mut tc, mut tu, mut tr) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let t = Instant::now();
            rt.block_on(async {
                for _ in 0..reps {
                    for k in &hot {
                        let v: String = cached.get(k).await.unwrap();
                        std::hint::black_box(v);
                    }
                }
            });
            tc.push(t.elapsed());
            let t = Instant::now();
            rt.block_on(async {
                for k in &hot {
                    let v: String = uncached.get(k).await.unwrap();
                    std::hint::black_box(v);
                }
            });
            tu.push(t.elapsed() * reps as u32);
            let t = Instant::now();
            rt.block_on(async {
                for (k, &o) in hot.iter().zip(&owner) {
                    let v: String = raw[o].get(k).await.unwrap();
                    std::hint::black_box(v);
                }
            });
            tr.push(t.elapsed() * reps as u32);
        }
        let per = (reps * hot.len()) as f64;
        let (c, u, r) = (median(tc), median(tu), median(tr));
        rows[0].2.push(c.as_secs_f64() / u.as_secs_f64());
        rows[0].3 = format!(
            "cached {:.3} us, uncached {:.2} us per GET",
            c.as_secs_f64() * 1e6 / per,
            u.as_secs_f64() * 1e6 / per
        );
        rows[1].2.push(c.as_secs_f64() / r.as_secs_f64());
        rows[1].3 = format!(
            "cached {:.3} us, raw {:.2} us per GET",
            c.as_secs_f64() * 1e6 / per,
            r.as_secs_f64() * 1e6 / per
        );
        // Misses against uncached reads of other cold keys, alternating.
        let (mut tm, mut tn) = (Vec::new(), Vec::new());
        for _ in 0..=ROUNDS {
            let miss_keys = &cold[next_cold..next_cold + cold_reads];
            let plain_keys = &cold[cold_total + next_cold..cold_total + next_cold + cold_reads];
            next_cold += cold_reads;
            let t = Instant::now();
            rt.block_on(async {
                for (k, _) in miss_keys {
                    let v: String = cached.get(k).await.unwrap();
                    std::hint::black_box(v);
                }
            });
            tm.push(t.elapsed());
            let t = Instant::now();
            rt.block_on(async {
                for (k, _) in plain_keys {
                    let v: String = uncached.get(k).await.unwrap();
                    std::hint::black_box(v);
                }
            });
            tn.push(t.elapsed());
        }
        // The first round warms the tracked connections: left out.
        let (m, n) = (median(tm[1..].to_vec()), median(tn[1..].to_vec()));
        rows[2].2.push(m.as_secs_f64() / n.as_secs_f64());
        rows[2].3 = format!(
            "miss {:.2} us, uncached {:.2} us per GET",
            m.as_secs_f64() * 1e6 / cold_reads as f64,
            n.as_secs_f64() * 1e6 / cold_reads as f64
        );
    }
    println!();
    println!("{:<48} {:>17} {:>8}  last pass", "row", "ratio (range)", "verdict");
    for (name, target, ratios, detail) in &rows {
        let lo = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().cloned().fold(0.0, f64::max);
        let verdict = if target.is_infinite() {
            "info"
        } else if hi <= *target {
            "ok"
        } else {
            "MISSED"
        };
        println!("{name:<48} {lo:>7.4} - {hi:<7.4} {verdict:>8}  {detail}");
    }
    let stats = cached.cache_stats().unwrap();
    let entries: usize = stats.entries.iter().map(|(_, n)| n).sum();
    println!(
        "memory: {} bytes counted for {entries} entries ({:.0} bytes per entry of a 100-byte value; GET key of ~8 bytes)",
        stats.bytes,
        stats.bytes as f64 / entries.max(1) as f64
    );
    println!("stats: {stats:?}");
}
