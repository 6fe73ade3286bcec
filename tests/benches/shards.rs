//! Shards with replicas and Sentinel, side by side in one run, against
//! servers this program starts itself (2 shards, each a primary and one
//! replica, 3 sentinels):
//!
//!     cargo bench -p mredis-tests --bench shards
//!
//! Rows (medians of alternating rounds, `MREDIS_BENCH_PASSES` passes,
//! default 3; each prints the range of its ratio):
//! - single-key GET, sync and async: a client over the two Sentinel shards
//!   against a client over the same two primaries given as plain servers
//!   (target <= 1.05: following Sentinel costs nothing when nothing fails);
//! - GET throughput of 64 async tasks: `PreferReplica` against `Primary`
//!   (the replicas take the reads; info, no target);
//! - the same with `LowestLatency` against `Primary` (the reads go to the
//!   nodes the prober measures fastest, measured before the rounds start;
//!   info, no target);
//! - async GET p99 on a shard whose replica is SIGSTOPped, 30 writer tasks
//!   running on the same client: with `replica_acks(1, 100 ms)` (each
//!   write waits 100 ms for a WAIT that cannot succeed) against acks off
//!   (target <= 2.0: a write waiting for replicas holds up no read; the
//!   shard's Sentinel may mark the stopped replica down meanwhile, which
//!   changes nothing for the primary). Runs last: it stops a replica.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mredis::aio::MRedis as AsyncMRedis;
use mredis::{MRedis, ReadFrom, Server};
use mredis_tests::SentinelFleet;

const ROUNDS: usize = 15;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn row(name: &str, target: Option<f64>, ratios: &[f64]) {
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    let verdict = match target {
        Some(t) if hi <= t => format!("<= {t:.2} met"),
        Some(t) if lo <= t => format!("<= {t:.2} met in some passes"),
        Some(t) => format!("<= {t:.2} MISSED"),
        None => "info".to_string(),
    };
    println!("{name:<62} {lo:.3} - {hi:.3}   {verdict}");
}

fn main() {
    let passes: usize = std::env::var("MREDIS_BENCH_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let fleet = SentinelFleet::start(2);
    let sentinel: Vec<Server> = fleet
        .shards
        .iter()
        .map(|s| Server::sentinel(&s.name, fleet.sentinel_urls()).unwrap())
        .collect();
    // The same primaries as plain servers, named like the shards, so both
    // clients place every key alike.
    let plain: Vec<Server> = fleet
        .shards
        .iter()
        .map(|s| Server::from_url(&s.primary.url()).unwrap().with_alias(s.name.clone()))
        .collect();
    let ms = MRedis::builder().servers(sentinel.clone()).build().unwrap();
    let mp = MRedis::builder().servers(plain.clone()).build().unwrap();
    let keys: Vec<String> = (0..1000).map(|i| format!("bench:shard:{i}")).collect();
    for k in &keys {
        mp.set::<_, _, ()>(k, "value").unwrap();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (ams, amp, primary, replica, fastest) = rt.block_on(async {
        let b = |s: Vec<Server>| MRedis::builder().servers(s);
        (
            b(sentinel.clone()).build_async().await.unwrap(),
            b(plain.clone()).build_async().await.unwrap(),
            b(sentinel.clone())
                .read_from(ReadFrom::Primary)
                .build_async()
                .await
                .unwrap(),
            b(sentinel.clone())
                .read_from(ReadFrom::PreferReplica)
                .build_async()
                .await
                .unwrap(),
            b(sentinel.clone())
                .read_from(ReadFrom::LowestLatency)
                .build_async()
                .await
                .unwrap(),
        )
    });
    // Every node measured before the rounds (else LowestLatency reads as
    // PreferReplica does).
    let measured = || {
        fastest
            .servers()
            .iter()
            .all(|s| s.latencies().len() == 2 && s.latencies().iter().all(|n| n.estimate.is_some()))
    };
    mredis_tests::wait_until("the shards' nodes measured", Duration::from_secs(30), measured);
    for s in &fleet.shards {
        mredis_tests::wait_replicated(&mut s.primary.conn(), &mut s.replica.conn());
    }
    println!("shards: {passes} passes x {ROUNDS} alternating rounds, medians");
    let (mut sync_r, mut async_r, mut tput, mut fast_tput) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..passes {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // Which goes first alternates, so drift hits both alike.
            for side in [round % 2, 1 - round % 2] {
                let (mr, out) = if side == 0 { (&ms, &mut a) } else { (&mp, &mut b) };
                let t = Instant::now();
                for k in &keys {
                    black_box(mr.get::<_, String>(k).unwrap());
                }
                out.push(t.elapsed());
            }
        }
        sync_r.push(median(a).as_secs_f64() / median(b).as_secs_f64());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        rt.block_on(async {
            for round in 0..ROUNDS {
                for side in [round % 2, 1 - round % 2] {
                    let (mr, out) = if side == 0 { (&ams, &mut a) } else { (&amp, &mut b) };
                    let t = Instant::now();
                    for k in &keys {
                        black_box(mr.get::<_, String>(k).await.unwrap());
                    }
                    out.push(t.elapsed());
                }
            }
        });
        async_r.push(median(a).as_secs_f64() / median(b).as_secs_f64());
        // Throughput ratios: GETs/s under each policy over GETs/s under
        // Primary, measured side by side.
        tput.push(throughput_ratio(&rt, &replica, &primary, &keys));
        fast_tput.push(throughput_ratio(&rt, &fastest, &primary, &keys));
    }
    row(
        "sync single-key GET: Sentinel shards / plain servers",
        Some(1.05),
        &sync_r,
    );
    row(
        "async single-key GET: Sentinel shards / plain servers",
        Some(1.05),
        &async_r,
    );
    row("64 async tasks GET throughput: prefer-replica / primary", None, &tput);
    row(
        "64 async tasks GET throughput: lowest-latency / primary",
        None,
        &fast_tput,
    );
    let p99 = rt.block_on(acks_p99(&fleet, &sentinel, passes));
    row(
        "async GET p99, replica stopped, 30 writers: acks on / acks off",
        Some(2.0),
        &p99,
    );
    for s in fastest.servers() {
        let shown: Vec<String> = s
            .latencies()
            .iter()
            .map(|n| {
                let role = if n.primary { "primary" } else { "replica" };
                let rtt = n
                    .estimate
                    .map_or_else(|| "-".to_string(), |d| format!("{} us", d.as_micros()));
                format!("{role} {rtt}")
            })
            .collect();
        println!("  {} latencies at the end: {}", s.name(), shown.join(", "));
    }
}

/// 64 tasks doing 200 GETs each, on `a` and on `b` in alternating order
/// each round: `a`'s throughput over `b`'s (medians of the rounds).
fn throughput_ratio(rt: &tokio::runtime::Runtime, a: &AsyncMRedis, b: &AsyncMRedis, keys: &[String]) -> f64 {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 {
            [(a, &mut ta), (b, &mut tb)]
        } else {
            [(b, &mut tb), (a, &mut ta)]
        };
        for (mr, out) in order {
            let t = Instant::now();
            rt.block_on(async {
                let tasks: Vec<_> = (0..64)
                    .map(|i| {
                        let (mr, keys) = (mr.clone(), keys.to_vec());
                        tokio::spawn(async move {
                            for j in 0..200 {
                                let k = &keys[(i * 7 + j) % keys.len()];
                                black_box(mr.get::<_, String>(k).await.unwrap());
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            out.push(t.elapsed());
        }
    }
    median(tb).as_secs_f64() / median(ta).as_secs_f64()
}

/// Per pass, the p99 of async GETs on shard 0 with acknowledgements on
/// over the p99 with them off, shard 0's replica stopped and 30 writer
/// tasks writing to shard 0 on the client being sampled.
async fn acks_p99(fleet: &SentinelFleet, servers: &[Server], passes: usize) -> Vec<f64> {
    let base = || {
        MRedis::builder()
            .servers(servers.to_vec())
            .read_from(ReadFrom::Primary)
            .response_timeout(Some(Duration::from_secs(2)))
    };
    let acked = base()
        .replica_acks(1, Duration::from_millis(100))
        .build_async()
        .await
        .unwrap();
    let plain = base().build_async().await.unwrap();
    let shard = fleet.shards[0].name.clone();
    let keys: Vec<String> = (0..10_000)
        .map(|i| format!("bench:acks:{i}"))
        .filter(|k| plain.server_for(k).unwrap() == shard)
        .take(64)
        .collect();
    for k in &keys {
        plain.set::<_, _, ()>(k, "v").await.unwrap();
    }
    fleet.shards[0].replica.sigstop();
    let p99 = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() * 99 / 100]
    };
    let mut out = Vec::new();
    for _ in 0..passes {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for round in 0..6 {
            for side in [round % 2, 1 - round % 2] {
                let (mr, samples) = if side == 0 {
                    (&acked, &mut on)
                } else {
                    (&plain, &mut off)
                };
                let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let writers: Vec<_> = (0..30)
                    .map(|w| {
                        let (mr, stop, key) = (mr.clone(), stop.clone(), keys[w].clone());
                        let started = started.clone();
                        tokio::spawn(async move {
                            started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                                let _ = mr.incr::<_, _, i64>(format!("{key}:n"), 1).await;
                            }
                        })
                    })
                    .collect();
                // Every writer running before the first sampled GET.
                while started.load(std::sync::atomic::Ordering::Relaxed) < 30 {
                    tokio::task::yield_now().await;
                }
                for i in 0..100 {
                    let t = Instant::now();
                    black_box(mr.get::<_, String>(&keys[32 + i % 32]).await.unwrap());
                    samples.push(t.elapsed());
                }
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                for w in writers {
                    w.await.unwrap();
                }
            }
        }
        let (a, b) = (p99(on), p99(off));
        println!(
            "  acks p99: {:.3} ms with acks on, {:.3} ms off",
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3
        );
        out.push(a.as_secs_f64() / b.as_secs_f64());
    }
    fleet.shards[0].replica.sigcont();
    out
}
