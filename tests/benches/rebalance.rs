//! Speed of `mredis::rebalance::rebalance` against a hand-written loop
//! over raw redis-rs connections (SCAN + pipelined `MIGRATE ... KEYS`,
//! 100 keys per batch), on identical data: N small keys on 3 servers moved
//! to 4 (ketama, so about a quarter moves), refilled before every run.
//!
//!     cargo bench -p mredis-tests --bench rebalance
//!     MREDIS_BENCH_KEYS=1000000 cargo bench -p mredis-tests --bench rebalance
//!
//! `MREDIS_BENCH_KEYS` sets N (default 200 000), `MREDIS_BENCH_RUNS` the
//! runs per side (default 3, at least 2). With `MREDIS_BENCH_REPLICAS=1`
//! every server gets a replica and is given as a shard with it
//! (`with_replicas`), so rebalance moves keys in steps its replicas
//! acknowledge; the hand-written loop then does the least that is safe on
//! such servers: DUMP + PTTL on the source, RESTORE + WAIT 1 on the
//! destination, DEL + WAIT 1 on the source, 100 keys per batch. The two sides run alternately;
//! ranges (min..max) over the runs are printed. rebalance's time includes
//! everything a real run does: identifying servers, persistence checks and
//! the final verification pass.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mredis::rebalance::{Phase, RebalanceOptions, rebalance};
use mredis::{MRedis, Mode, Server};
use mredis_tests::{RedisServer, servers};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn config(servers: &[RedisServer], replicas: &[RedisServer]) -> MRedis {
    let list: Vec<Server> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let server = Server::from_parts("127.0.0.1", s.port(), 0).unwrap();
            match replicas.get(i) {
                Some(r) => server.with_replicas([r.url()]).unwrap(),
                None => server,
            }
        })
        .collect();
    MRedis::builder()
        .servers(list)
        .mode(Mode::Ketama {
            hash: mredis::placement::KeyHash::Fnv1a64,
            hash_tag: None,
        })
        .build()
        .unwrap()
}

/// Empties every server and writes `n` small keys through `from`.
fn fill(all: &[RedisServer], from: &MRedis, n: usize) {
    for s in all {
        redis::cmd("FLUSHALL").exec(&mut s.conn()).unwrap();
    }
    // (Replicas follow their primaries' FLUSHALL.)
    for start in (0..n).step_by(20_000) {
        let mut pipe = from.pipeline_all();
        for i in start..(start + 20_000).min(n) {
            pipe.set(format!("bench:{i}"), i).ignore();
        }
        pipe.query::<()>(from).unwrap();
    }
}

/// One `SCAN COUNT 1000` page of the server on `con` (port `port`): the
/// next cursor and the keys whose owner under `to` is another server, by
/// owner.
fn moving_page(
    con: &mut redis::Connection,
    cursor: u64,
    port: u16,
    to: &MRedis,
) -> (u64, BTreeMap<usize, Vec<Vec<u8>>>) {
    let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
        .arg(cursor)
        .arg("COUNT")
        .arg(1000)
        .query(con)
        .unwrap();
    let mut groups: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
    for k in keys {
        let owner = to.server_index_for(&k);
        if to.servers()[owner].port() != port {
            groups.entry(owner).or_default().push(k);
        }
    }
    (next, groups)
}

/// The hand-written loop: each source in turn, SCAN COUNT 1000, moving keys
/// grouped by destination with pipelined MIGRATE ... KEYS (100 per batch).
/// Returns the keys it sent.
fn baseline(sources: &[RedisServer], to: &MRedis) -> u64 {
    let mut moved = 0;
    for s in sources {
        let mut con = s.conn();
        let mut cursor: u64 = 0;
        loop {
            let (next, groups) = moving_page(&mut con, cursor, s.port(), to);
            let mut pipe = redis::pipe();
            for (owner, keys) in &groups {
                let dest = &to.servers()[*owner];
                for chunk in keys.chunks(100) {
                    pipe.cmd("MIGRATE")
                        .arg(dest.host())
                        .arg(dest.port())
                        .arg("")
                        .arg(0)
                        .arg(5000)
                        .arg("KEYS")
                        .arg(chunk)
                        .ignore();
                    moved += chunk.len() as u64;
                }
            }
            if !groups.is_empty() {
                pipe.query::<()>(&mut con).unwrap();
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    moved
}

/// The hand-written loop on servers with one replica each: per batch of
/// 100 keys, DUMP + PTTL on the source, RESTORE + WAIT 1 on the
/// destination, DEL + WAIT 1 on the source. Returns the keys it moved.
fn baseline_with_replicas(sources: &[RedisServer], all: &[RedisServer], to: &MRedis) -> u64 {
    let mut moved = 0;
    let mut dests: Vec<redis::Connection> = all.iter().map(|s| s.conn()).collect();
    for s in sources {
        let mut con = s.conn();
        let mut cursor: u64 = 0;
        loop {
            let (next, groups) = moving_page(&mut con, cursor, s.port(), to);
            for (owner, keys) in &groups {
                for chunk in keys.chunks(100) {
                    let mut pipe = redis::pipe();
                    for k in chunk {
                        pipe.cmd("PTTL").arg(k).cmd("DUMP").arg(k);
                    }
                    let got: Vec<redis::Value> = pipe.query(&mut con).unwrap();
                    let mut pipe = redis::pipe();
                    for (i, k) in chunk.iter().enumerate() {
                        let ttl = match &got[2 * i] {
                            redis::Value::Int(t) if *t > 0 => *t,
                            _ => 0,
                        };
                        if let redis::Value::BulkString(payload) = &got[2 * i + 1] {
                            pipe.cmd("RESTORE").arg(k).arg(ttl).arg(payload).ignore();
                        }
                    }
                    pipe.cmd("WAIT").arg(1).arg(5000);
                    let _: (i64,) = pipe.query(&mut dests[*owner]).unwrap();
                    let (deleted, _): (u64, i64) = redis::pipe()
                        .cmd("DEL")
                        .arg(chunk)
                        .cmd("WAIT")
                        .arg(1)
                        .arg(5000)
                        .query(&mut con)
                        .unwrap();
                    moved += deleted;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    moved
}

fn range(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn main() {
    let n = env_number("MREDIS_BENCH_KEYS", 200_000);
    let runs = env_number("MREDIS_BENCH_RUNS", 3).max(2);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("rebalance speed: {n} keys, 3 -> 4 servers (ketama), {runs} runs per side, {cores} cores");
    let with_replicas = std::env::var("MREDIS_BENCH_REPLICAS").is_ok_and(|v| v == "1");
    let s = servers(4);
    let replicas: Vec<RedisServer> = if with_replicas {
        s.iter()
            .map(|p| RedisServer::with_args(&["--replicaof", "127.0.0.1", &p.port().to_string()]))
            .collect()
    } else {
        Vec::new()
    };
    if with_replicas {
        println!("each server with one replica: acknowledged steps (rebalance) vs DUMP/RESTORE/WAIT/DEL/WAIT (loop)");
        for r in &replicas {
            let mut c = r.conn();
            mredis_tests::wait_until("the replica linked", Duration::from_secs(10), || {
                let info: String = redis::cmd("INFO").arg("replication").query(&mut c).unwrap();
                info.contains("master_link_status:up")
            });
        }
    }
    let from = config(&s[..3], &replicas);
    let to = config(&s, &replicas);

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut our_secs, mut their_secs) = (Vec::new(), Vec::new());
    let mut verify_secs = Vec::new();
    let mut moved_keys = 0;
    for run in 0..runs {
        fill(&s, &from, n);
        let t = Instant::now();
        let verifying_since = std::rc::Rc::new(std::cell::Cell::new(None));
        let seen = verifying_since.clone();
        let report = rebalance(
            &from,
            &to,
            RebalanceOptions {
                allow_volatile: true,
                progress: Some(Box::new(move |p| {
                    if p.phase == Phase::Verifying && seen.get().is_none() {
                        seen.set(Some(Instant::now()));
                    }
                })),
                ..Default::default()
            },
        )
        .unwrap();
        let ours_time = t.elapsed();
        let verify_time = verifying_since.get().map(|v| v.elapsed()).unwrap_or_default();
        verify_secs.push(verify_time.as_secs_f64());
        assert!(report.is_complete(), "run {run}: {report:?}");
        moved_keys = report.moved;

        fill(&s, &from, n);
        let t = Instant::now();
        let sent = if with_replicas {
            baseline_with_replicas(&s[..3], &s, &to)
        } else {
            baseline(&s[..3], &to)
        };
        let theirs_time = t.elapsed();
        assert_eq!(sent, report.moved, "identical data, identical moves");
        assert_eq!(
            s.iter().map(|x| x.dbsize()).sum::<i64>() as usize,
            n,
            "the baseline lost nothing"
        );

        let rate = |moved: u64, d: Duration| moved as f64 / d.as_secs_f64();
        ours.push(rate(report.moved, ours_time));
        theirs.push(rate(sent, theirs_time));
        our_secs.push(ours_time.as_secs_f64());
        their_secs.push(theirs_time.as_secs_f64());
        println!(
            "  run {}: rebalance {:.2} s ({:.0} keys moved/s; verification pass {:.2} s), \
             hand-written loop {:.2} s ({:.0} keys moved/s)",
            run + 1,
            ours_time.as_secs_f64(),
            ours[run],
            verify_time.as_secs_f64(),
            theirs_time.as_secs_f64(),
            theirs[run]
        );
    }
    let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| a / b).collect();
    let (o1, o2) = range(&ours);
    let (t1, t2) = range(&theirs);
    let (r1, r2) = range(&ratios);
    let scale = 1_000_000.0 / n as f64;
    let (os1, os2) = range(&our_secs);
    let (ts1, ts2) = range(&their_secs);
    println!("keys moved per run: {moved_keys} of {n}");
    println!("rebalance:         {o1:.0}..{o2:.0} keys moved/s");
    println!("hand-written loop: {t1:.0}..{t2:.0} keys moved/s");
    println!("ratio rebalance / loop: {r1:.2}..{r2:.2} (target >= 0.8)");
    println!(
        "extrapolated for 1 000 000 keys (same share moving): rebalance {:.1}..{:.1} s, loop {:.1}..{:.1} s",
        os1 * scale,
        os2 * scale,
        ts1 * scale,
        ts2 * scale
    );
}
