//! Side-by-side speed measurements: each figure is a ratio of two workloads
//! measured in the same run, against servers this program starts itself.
//!
//!     cargo bench -p mredis-tests --bench speed
//!
//! Each pair runs alternately for several rounds and the median of each is
//! compared, so drift on a shared machine hits both sides alike.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mredis::{MRedis, PerServer};
use mredis_tests::{Nutcracker, RedisServer, servers};
use redis::{AsyncCommands, Commands};

const ROUNDS: usize = 7;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `a` and `b` alternately; returns (median a, median b).
fn pair(mut a: impl FnMut(), mut b: impl FnMut()) -> (Duration, Duration) {
    a();
    b();
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        a();
        ta.push(t.elapsed());
        let t = Instant::now();
        b();
        tb.push(t.elapsed());
    }
    (median(ta), median(tb))
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc_rusage = unsafe { std::mem::zeroed() };
    unsafe { getrusage(0, &mut usage) };
    let tv = |t: Timeval| Duration::from_secs(t.sec as u64) + Duration::from_micros(t.usec as u64);
    tv(usage.utime) + tv(usage.stime)
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Timeval {
    sec: i64,
    usec: i64,
}

#[repr(C)]
struct libc_rusage {
    utime: Timeval,
    stime: Timeval,
    rest: [i64; 14],
}

unsafe extern "C" {
    fn getrusage(who: i32, usage: *mut libc_rusage) -> i32;
}

fn report(name: &str, target: &str, ours: Duration, theirs: Duration, per: usize) {
    println!(
        "{name:<58} mredis {:>9.2} us  baseline {:>9.2} us  ratio {:>6.3}  (target {target})",
        ours.as_secs_f64() * 1e6 / per as f64,
        theirs.as_secs_f64() * 1e6 / per as f64,
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
}

fn main() {
    let n_ops = 5_000;
    let s = servers(8);
    println!(
        "mredis speed, {} rounds per figure, medians; machine: {} cores",
        ROUNDS,
        num_cpus()
    );

    // 1. GET/SET one at a time, sync: mredis over one server vs a redis-rs connection to it.
    {
        let mr = MRedis::new([s[0].url()]).unwrap();
        let mut con = s[0].conn();
        let (ours, theirs) = pair(
            || {
                for i in 0..n_ops {
                    let k = format!("k{}", i % 100);
                    mr.set::<_, _, ()>(&k, i).unwrap();
                    let _: i64 = mr.get(&k).unwrap();
                }
            },
            || {
                for i in 0..n_ops {
                    let k = format!("k{}", i % 100);
                    con.set::<_, _, ()>(&k, i).unwrap();
                    let _: i64 = con.get(&k).unwrap();
                }
            },
        );
        report(
            "GET+SET one at a time, sync (time per op)",
            "<= 1.05",
            ours,
            theirs,
            2 * n_ops,
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // 2. The same, async.
    {
        let (ours, theirs) = rt.block_on(async {
            let mr = mredis::aio::MRedis::connect([s[0].url()]).await.unwrap();
            let mut con = s[0].client().get_multiplexed_async_connection().await.unwrap();
            let (mut ta, mut tb) = (Vec::new(), Vec::new());
            for round in 0..=ROUNDS {
                let t = Instant::now();
                for i in 0..n_ops {
                    let k = format!("k{}", i % 100);
                    mr.set::<_, _, ()>(&k, i).await.unwrap();
                    let _: i64 = mr.get(&k).await.unwrap();
                }
                let a = t.elapsed();
                let t = Instant::now();
                for i in 0..n_ops {
                    let k = format!("k{}", i % 100);
                    con.set::<_, _, ()>(&k, i).await.unwrap();
                    let _: i64 = con.get(&k).await.unwrap();
                }
                if round > 0 {
                    ta.push(a);
                    tb.push(t.elapsed());
                }
            }
            (median(ta), median(tb))
        });
        report(
            "GET+SET one at a time, async (time per op)",
            "<= 1.05",
            ours,
            theirs,
            2 * n_ops,
        );
    }

    // 3. Routing decision for a 16-byte key over 16 servers vs one crc32fast call.
    {
        let urls: Vec<String> = (0..16).map(|i| format!("redis://127.0.0.1:{}/0", 20000 + i)).collect();
        let mr = MRedis::new(urls).unwrap();
        let keys: Vec<[u8; 16]> = (0..1024u32)
            .map(|i| *format!("user:{i:011}").as_bytes().first_chunk().unwrap())
            .collect();
        let iters = 2_000_000;
        let (ours, theirs) = pair(
            || {
                for i in 0..iters {
                    black_box(mr.server_index_for(black_box(&keys[i % 1024])));
                }
            },
            || {
                for i in 0..iters {
                    black_box(crc32fast::hash(black_box(&keys[i % 1024])));
                }
            },
        );
        report(
            "routing decision, 16-byte key, 16 servers (vs crc32)",
            "<= 3",
            ours,
            theirs,
            iters,
        );
    }

    // 4. Fan-out DBSIZE over 4 servers (async) vs one DBSIZE to one server.
    {
        let (ours, theirs) = rt.block_on(async {
            let mr = mredis::aio::MRedis::connect(s[..4].iter().map(|x| x.url()))
                .await
                .unwrap();
            let mut con = s[0].client().get_multiplexed_async_connection().await.unwrap();
            let reps = 2000;
            let (mut ta, mut tb) = (Vec::new(), Vec::new());
            for round in 0..=ROUNDS {
                let t = Instant::now();
                for _ in 0..reps {
                    let _: PerServer<i64> = mr.dbsize().await.unwrap();
                }
                let a = t.elapsed();
                let t = Instant::now();
                for _ in 0..reps {
                    let _: i64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
                }
                if round > 0 {
                    ta.push(a);
                    tb.push(t.elapsed());
                }
            }
            (median(ta), median(tb))
        });
        report(
            "fan-out DBSIZE over 4 servers, async (latency)",
            "<= 1.5",
            ours,
            theirs,
            2000,
        );
    }

    // 5. MGET of 1000 keys over 4 servers vs one MGET on one server, and vs 1000 GETs.
    {
        let mr = MRedis::new(s[..4].iter().map(|x| x.url())).unwrap();
        let keys: Vec<String> = (0..1000).map(|i| format!("mget:{i}")).collect();
        let items: Vec<(String, i64)> = keys.iter().map(|k| (k.clone(), 1)).collect();
        mr.mset::<_, _, ()>(&items).unwrap();
        let mut con = s[4].conn();
        con.mset::<_, _, ()>(&items).unwrap();
        let reps = 100;
        let (ours, theirs) = pair(
            || {
                for _ in 0..reps {
                    let v: Vec<Option<i64>> = mr.mget(&keys).unwrap();
                    black_box(v);
                }
            },
            || {
                for _ in 0..reps {
                    let v: Vec<Option<i64>> = con.mget(&keys).unwrap();
                    black_box(v);
                }
            },
        );
        report(
            "MGET 1000 keys over 4 servers vs one server",
            "<= 1.5",
            ours,
            theirs,
            reps,
        );
        let (ours, gets) = pair(
            || {
                let v: Vec<Option<i64>> = mr.mget(&keys).unwrap();
                black_box(v);
            },
            || {
                for k in &keys {
                    let v: Option<i64> = mr.get(k).unwrap();
                    black_box(v);
                }
            },
        );
        println!(
            "{:<58} MGET {:>9.2} us  1000 GETs {:>9.2} us  speed-up {:>6.1}x  (target >= 20x)",
            "MGET 1000 keys vs 1000 GETs, 4 servers",
            ours.as_secs_f64() * 1e6,
            gets.as_secs_f64() * 1e6,
            gets.as_secs_f64() / ours.as_secs_f64()
        );
    }

    // 6. Cross-server pipeline of 10 000 SETs over 4 servers vs a redis-rs pipeline on one server.
    {
        let mr = MRedis::new(s[..4].iter().map(|x| x.url())).unwrap();
        let mut con = s[4].conn();
        let n = 10_000;
        let (ours, theirs) = pair(
            || {
                let mut p = mr.pipeline_all();
                for i in 0..n {
                    p.set(format!("p{i}"), i).ignore();
                }
                p.query::<()>(&mr).unwrap();
            },
            || {
                let mut p = redis::pipe();
                for i in 0..n {
                    p.set(format!("p{i}"), i).ignore();
                }
                p.query::<()>(&mut con).unwrap();
            },
        );
        println!(
            "{:<58} mredis {:>9.0} ops/s  baseline {:>9.0} ops/s  ratio {:>6.3}  (target >= 0.8)",
            "pipeline 10k SETs: 4 servers vs one server (throughput)",
            n as f64 / ours.as_secs_f64(),
            n as f64 / theirs.as_secs_f64(),
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }

    // 7. Pipelined GET/SET over 2 servers: mredis vs the same through nutcracker.
    {
        let backends: Vec<&RedisServer> = vec![&s[5], &s[6]];
        let nc = Nutcracker::start(
            "crc32",
            "modula",
            None,
            &backends
                .iter()
                .map(|b| format!("127.0.0.1:{}:1", b.port()))
                .collect::<Vec<_>>(),
        );
        let mr = MRedis::new(backends.iter().map(|b| b.url())).unwrap();
        let mut proxy = nc.conn();
        let n = 5_000;
        let (ours, theirs) = pair(
            || {
                let mut p = mr.pipeline_all();
                for i in 0..n {
                    p.set(format!("n{i}"), i).ignore().get(format!("n{i}"));
                }
                black_box(p.query::<Vec<i64>>(&mr).unwrap());
            },
            || {
                let mut p = redis::pipe();
                for i in 0..n {
                    p.set(format!("n{i}"), i).ignore().get(format!("n{i}"));
                }
                black_box(p.query::<Vec<i64>>(&mut proxy).unwrap());
            },
        );
        println!(
            "{:<58} mredis {:>9.0} ops/s  nutcracker {:>9.0} ops/s  ratio {:>6.2}x  (target >= 2x)",
            "pipelined GET/SET over 2 servers vs nutcracker",
            2.0 * n as f64 / ours.as_secs_f64(),
            2.0 * n as f64 / theirs.as_secs_f64(),
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }

    // 8. Scaling from 1 to 8 servers: throughput of a cross-server pipeline and client CPU per op.
    {
        println!("scaling (pipelined SETs, 20k per run):");
        for n_servers in [1, 2, 4, 8] {
            let mr = MRedis::new(s[..n_servers].iter().map(|x| x.url())).unwrap();
            let n = 20_000;
            let mut times = Vec::new();
            let mut cpus = Vec::new();
            for _ in 0..ROUNDS {
                let cpu = cpu_time();
                let t = Instant::now();
                let mut p = mr.pipeline_all();
                for i in 0..n {
                    p.set(format!("sc{i}"), i).ignore();
                }
                p.query::<()>(&mr).unwrap();
                times.push(t.elapsed());
                cpus.push(cpu_time() - cpu);
            }
            let t = median(times);
            let c = median(cpus);
            println!(
                "  {n_servers} servers: {:>9.0} ops/s, client CPU {:>6.2} us/op",
                n as f64 / t.as_secs_f64(),
                c.as_secs_f64() * 1e6 / n as f64
            );
        }
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
