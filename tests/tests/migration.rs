//! Migration-aware clients (`Builder::migrating_from`): a key whose owner
//! changes is served by its old server while it is there (checked
//! atomically with the command) and by its new one after, so it is never
//! served from two places; fan-out reaches both server sets. Checked against what each real server holds,
//! and under load: 8 threads and 200 tasks writing while `rebalance` runs
//! and the source server is stopped (SIGSTOP) for 2 s.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mredis::placement::KeyHash;
use mredis::rebalance::{RebalanceOptions, rebalance};
use mredis::{Builder, MRedis, Mode, Server};
use mredis_tests::RedisServer;
use redis::Commands;

/// Servers that keep RDB snapshots (so rebalance accepts them as destinations).
fn persistent_servers(n: usize) -> Vec<RedisServer> {
    (0..n).map(|_| RedisServer::with_args(&["--save", "3600 1"])).collect()
}

/// A configuration of `servers`, named `s0`, `s1`, ... by their place in
/// the list for placement, so ketama puts every key in the same place on
/// every run (not by the random ports). Tests list the servers of both
/// configurations in the same order (one extends the other).
fn builder(servers: &[&RedisServer], mode: Mode) -> Builder {
    MRedis::builder()
        .servers(named(servers.iter().map(|s| s.port())))
        .mode(mode)
}

/// Servers on 127.0.0.1 at `ports`, named `s0`, `s1`, ... (see [`builder`]).
fn named(ports: impl IntoIterator<Item = u16>) -> Vec<Server> {
    ports
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            Server::from_parts("127.0.0.1", p, 0)
                .unwrap()
                .with_alias(format!("s{i}"))
        })
        .collect()
}

/// Every key of every server: key -> the ports it is on.
fn where_keys_are(all: &[&RedisServer]) -> HashMap<String, Vec<u16>> {
    let mut out: HashMap<String, Vec<u16>> = HashMap::new();
    for s in all {
        for k in s.keys() {
            out.entry(k).or_default().push(s.port());
        }
    }
    out
}

fn owner_port(mr: &MRedis, key: &str) -> u16 {
    mr.servers()[mr.server_index_for(key.as_bytes())].port()
}

fn ketama() -> Mode {
    Mode::Ketama {
        hash: KeyHash::Fnv1a64,
        hash_tag: None,
    }
}

/// Moves `key` from the server on `from_port` to the one on `to_port`, as
/// `mredis rebalance` does (MIGRATE, atomic on the source).
fn migrate(from: &RedisServer, to: &RedisServer, key: &str) {
    let reply: redis::Value = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(to.port())
        .arg(key)
        .arg(0)
        .arg(5000)
        .query(&mut from.conn())
        .unwrap();
    assert_eq!(reply, redis::Value::Okay, "MIGRATE {key}");
}

fn server_on(s: &[RedisServer], port: u16) -> &RedisServer {
    s.iter().find(|x| x.port() == port).unwrap()
}

#[test]
fn moving_keys_are_served_by_their_old_server_until_moved_then_by_the_new() {
    let s = persistent_servers(4);
    let old_refs: Vec<&RedisServer> = s[..3].iter().collect();
    let new_refs: Vec<&RedisServer> = s.iter().collect();
    let old = builder(&old_refs, Mode::Standard).build().unwrap();
    let plain_new = builder(&new_refs, Mode::Standard).build().unwrap();
    let mr = builder(&new_refs, Mode::Standard)
        .migrating_from(builder(&old_refs, Mode::Standard))
        .build()
        .unwrap();

    // 400 keys written with the old configuration.
    let keys: Vec<String> = (0..400).map(|i| format!("key:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        old.set::<_, _, ()>(k, i).unwrap();
    }
    let num = |k: &str| k[4..].parse::<i64>().unwrap();
    let moving: Vec<&String> = keys
        .iter()
        .filter(|k| owner_port(&old, k) != owner_port(&plain_new, k))
        .collect();
    let staying: Vec<&String> = keys
        .iter()
        .filter(|k| owner_port(&old, k) == owner_port(&plain_new, k))
        .collect();
    assert!(moving.len() > 100 && staying.len() > 50, "{} moving", moving.len());
    // Half of the moving keys are moved now (as a running rebalance would).
    let (moved, unmoved) = moving.split_at(moving.len() / 2);
    for k in moved {
        migrate(
            server_on(&s, owner_port(&old, k)),
            server_on(&s, owner_port(&plain_new, k)),
            k,
        );
    }
    let before = where_keys_are(&new_refs);

    // Fan-out reaches the union (here the new set contains the old one).
    let sizes: mredis::PerServer<usize> = mr.dbsize().unwrap();
    assert_eq!(sizes.len(), 4);
    assert_eq!(sizes.values().sum::<usize>(), 400);

    // Every key reads right, wherever it is now; reading moves nothing.
    for k in &keys {
        assert_eq!(mr.get::<_, i64>(k).unwrap(), num(k), "{k}");
    }
    assert_eq!(where_keys_are(&new_refs), before, "reads move nothing");

    // Writes land where the key is: the old server while it is there.
    let k = unmoved[0];
    assert_eq!(mr.incr::<_, _, i64>(k, 1).unwrap(), num(k) + 1);
    let direct: i64 = server_on(&s, owner_port(&old, k)).conn().get(k).unwrap();
    assert_eq!(direct, num(k) + 1, "{k} was written on its old server");
    let k = moved[0];
    assert_eq!(mr.incr::<_, _, i64>(k, 1).unwrap(), num(k) + 1);
    let direct: i64 = server_on(&s, owner_port(&plain_new, k)).conn().get(k).unwrap();
    assert_eq!(direct, num(k) + 1, "{k} was written on its new server");

    // A key created during the migration is created on its new owner only.
    let fresh: Vec<String> = (0..200).map(|i| format!("fresh:{i}")).collect();
    for f in &fresh {
        mr.set::<_, _, ()>(f, "v").unwrap();
    }
    let places = where_keys_are(&new_refs);
    for f in &fresh {
        assert_eq!(places[f.as_str()], vec![owner_port(&plain_new, f)], "{f}");
    }

    // Scatter-gather over moved, unmoved and staying keys alike.
    let mix: Vec<&String> = moved[1..20]
        .iter()
        .chain(&unmoved[1..20])
        .chain(&staying[1..20])
        .copied()
        .collect();
    let values: Vec<Option<i64>> = mr.mget(&mix).unwrap();
    for (k, v) in mix.iter().zip(values) {
        assert_eq!(v, Some(num(k)), "{k}");
    }
    let n: usize = mr.exists(&mix).unwrap();
    assert_eq!(n, mix.len());
    let gone: Vec<&String> = moved[20..25].iter().chain(&unmoved[20..25]).copied().collect();
    let n: usize = mr.del(&gone).unwrap();
    assert_eq!(n, 10, "DEL counts each key where it is");
    let mset: Vec<(String, i64)> = moved[25..30]
        .iter()
        .chain(&unmoved[25..30])
        .map(|k| (k.to_string(), -1))
        .collect();
    mr.mset::<_, _, ()>(&mset).unwrap();
    for (k, _) in &mset {
        assert_eq!(mr.get::<_, i64>(k).unwrap(), -1, "{k}");
    }

    // Per-key pipeline (plain and atomic), fleet pipeline, transaction,
    // script and HSCAN, on unmoved and moved keys.
    for k in [unmoved[30], moved[30]] {
        let (v,): (i64,) = mr.pipeline(k).unwrap().get(k).query(&mr).unwrap();
        assert_eq!(v, num(k), "{k}");
        let (v,): (i64,) = mr.pipeline(k).unwrap().atomic().incr(k, 1).query(&mr).unwrap();
        assert_eq!(v, num(k) + 1, "{k}");
    }
    let (a, b, c): (i64, i64, i64) = mr
        .pipeline_all()
        .get(unmoved[31])
        .get(moved[31])
        .get(staying[31])
        .query(&mr)
        .unwrap();
    assert_eq!((a, b, c), (num(unmoved[31]), num(moved[31]), num(staying[31])));
    for k in [unmoved[32], moved[32]] {
        let t: (i64,) = mr.transaction(&[k], |con, pipe| pipe.incr(k, 1).query(con)).unwrap();
        assert_eq!(t.0, num(k) + 1, "{k}");
    }
    let script = mredis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    for k in [unmoved[33], moved[33]] {
        let v: i64 = script.key(k).arg(10).invoke(&mr).unwrap();
        assert_eq!(v, num(k) + 10, "{k}");
    }
    let hk = (0..)
        .map(|i| format!("hash:{i}"))
        .find(|k| owner_port(&old, k) != owner_port(&plain_new, k))
        .unwrap();
    old.hset_multiple::<_, _, _, ()>(&hk, &[("a", 1), ("b", 2)]).unwrap();
    let mut fields: Vec<(String, i64)> = mr.hscan(&hk).unwrap().collect::<Result<_, _>>().unwrap();
    fields.sort();
    assert_eq!(fields, vec![("a".to_string(), 1), ("b".to_string(), 2)]);

    // SCAN over the union sees every key once.
    let places = where_keys_are(&new_refs);
    let scanned: Vec<String> = mr.scan().unwrap().collect::<Result<_, _>>().unwrap();
    let unique: HashSet<&String> = scanned.iter().collect();
    assert_eq!(unique.len(), scanned.len(), "no key twice");
    assert_eq!(scanned.len(), places.len(), "every key");

    // Nothing was ever on two servers; the rebalance then finishes the move.
    for (k, ports) in &places {
        assert_eq!(ports.len(), 1, "{k} is on {ports:?}");
    }
    let report = rebalance(&old, &plain_new, volatile_ok()).unwrap();
    assert!(report.conflicts.is_empty());
    for (k, ports) in &where_keys_are(&new_refs) {
        assert_eq!(ports, &vec![owner_port(&plain_new, k)], "{k}");
    }

    // FLUSHDB empties both sets.
    let _: mredis::PerServer<()> = mr.flushdb().unwrap();
    assert!(where_keys_are(&new_refs).is_empty());
}

/// Rebalance options for test servers (they keep RDB snapshots, but say so anyway).
fn volatile_ok() -> RebalanceOptions {
    RebalanceOptions::default()
}

#[test]
fn a_retired_server_is_still_reached_until_emptied() {
    let s = persistent_servers(4);
    let old_refs: Vec<&RedisServer> = s.iter().collect();
    let new_refs: Vec<&RedisServer> = s[..3].iter().collect();
    let old = builder(&old_refs, Mode::Standard).build().unwrap();
    let plain_new = builder(&new_refs, Mode::Standard).build().unwrap();
    let mr = builder(&new_refs, Mode::Standard)
        .migrating_from(builder(&old_refs, Mode::Standard))
        .build()
        .unwrap();
    for i in 0..300 {
        old.set::<_, _, ()>(format!("r:{i}"), i).unwrap();
    }
    // DBSIZE and KEYS reach the retired server too.
    let sizes: mredis::PerServer<usize> = mr.dbsize().unwrap();
    assert_eq!(sizes.len(), 4);
    assert_eq!(sizes.values().sum::<usize>(), 300);
    let keys: mredis::PerServer<Vec<String>> = mr.keys("r:*").unwrap();
    assert_eq!(keys.values().map(Vec::len).sum::<usize>(), 300);
    for i in 0..300 {
        assert_eq!(mr.incr::<_, _, i64>(format!("r:{i}"), 1).unwrap(), i + 1);
    }
    assert!(s[3].dbsize() > 0, "keys of the retired server are still served there");
    rebalance(&old, &plain_new, volatile_ok()).unwrap();
    assert_eq!(s[3].dbsize(), 0);
    for i in 0..300 {
        assert_eq!(mr.get::<_, i64>(format!("r:{i}")).unwrap(), i + 1);
    }
    for (k, ports) in &where_keys_are(&old_refs) {
        assert_eq!(ports, &vec![owner_port(&plain_new, k)], "{k}");
    }
}

#[test]
fn keys_split_between_old_and_new_server_are_a_retryable_error() {
    let s = persistent_servers(3);
    let old_refs: Vec<&RedisServer> = s[..2].iter().collect();
    let new_refs: Vec<&RedisServer> = s.iter().collect();
    let tags = |b: Builder| b.hash_tags(true);
    let old = tags(builder(&old_refs, Mode::Standard)).build().unwrap();
    let plain_new = tags(builder(&new_refs, Mode::Standard)).build().unwrap();
    let mr = tags(builder(&new_refs, Mode::Standard))
        .migrating_from(tags(builder(&old_refs, Mode::Standard)))
        .build()
        .unwrap();
    let tag = (0..)
        .map(|i| format!("{{u{i}}}"))
        .find(|t| owner_port(&old, t) != owner_port(&plain_new, t))
        .unwrap();
    let (a, b) = (format!("{tag}:a"), format!("{tag}:b"));
    old.sadd::<_, _, ()>(&a, &[1, 2, 3][..]).unwrap();
    old.sadd::<_, _, ()>(&b, &[2, 3, 4][..]).unwrap();
    // Both on the old server: the co-located command runs there.
    let inter: HashSet<i64> = mr.sinter(&[&a, &b]).unwrap();
    assert_eq!(inter, HashSet::from([2, 3]));
    // One moved, one not: TRYAGAIN naming the servers, nothing changed.
    let from = server_on(&s, owner_port(&old, &a));
    let to = server_on(&s, owner_port(&plain_new, &a));
    migrate(from, to, &a);
    let dest = format!("{tag}:dest");
    let err = mr.sinterstore::<_, _, i64>(&dest, &[&a, &b]).unwrap_err();
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
    assert_eq!(
        mredis::error_text(&err),
        format!(
            "mredis: some keys of this command (e.g. `{dest}`) are still on {} (their old server) and some are \
             not; nothing was run. Retry: the rebalance moves them to {}",
            from.name(),
            to.name()
        )
    );
    assert!(!where_keys_are(&new_refs).contains_key(&dest));
    // Both moved: it runs on the new server.
    migrate(from, to, &b);
    let n: i64 = mr.sinterstore(&dest, &[&a, &b]).unwrap();
    assert_eq!(n, 2);
    assert_eq!(where_keys_are(&new_refs)[&dest], vec![to.port()]);
    // Scripts and functions that cannot be wrapped: run on the new server
    // once no key is left on the old one, TRYAGAIN before.
    let c = format!("{tag}:c");
    old.set::<_, _, ()>(&c, 1).unwrap();
    let err = mr
        .eval::<_, _, _, i64>("return redis.call('INCR', KEYS[1])", &[&c], &[] as &[i64])
        .unwrap_err();
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
    migrate(from, to, &c);
    let v: i64 = mr
        .eval("return redis.call('INCR', KEYS[1])", &[&c], &[] as &[i64])
        .unwrap();
    assert_eq!(v, 2);
}

#[test]
fn the_async_client_serves_moving_keys_too() {
    let s = persistent_servers(3);
    let old_refs: Vec<&RedisServer> = s[..2].iter().collect();
    let new_refs: Vec<&RedisServer> = s.iter().collect();
    let old = builder(&old_refs, ketama()).build().unwrap();
    let plain_new = builder(&new_refs, ketama()).build().unwrap();
    for i in 0..300 {
        old.set::<_, _, ()>(format!("a:{i}"), i).unwrap();
    }
    let keys: Vec<String> = (0..300).map(|i| format!("a:{i}")).collect();
    // A third moved already.
    for k in keys.iter().step_by(3) {
        let (o, n) = (owner_port(&old, k), owner_port(&plain_new, k));
        if o != n {
            migrate(server_on(&s, o), server_on(&s, n), k);
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mr = builder(&new_refs, ketama())
            .migrating_from(builder(&old_refs, ketama()))
            .build_async()
            .await
            .unwrap();
        let values: Vec<i64> = mr.mget(&keys[..150]).await.unwrap();
        assert_eq!(values, (0..150).collect::<Vec<i64>>());
        for (i, k) in keys[150..].iter().enumerate() {
            let n: i64 = mr.incr(k, 1).await.unwrap();
            assert_eq!(n, 150 + i as i64 + 1);
        }
        let (v, w): (i64, i64) = mr
            .pipeline_all()
            .get(&keys[0])
            .get(&keys[1])
            .query_async(&mr)
            .await
            .unwrap();
        assert_eq!((v, w), (0, 1));
        let script = mredis::Script::new("return redis.call('GET', KEYS[1])");
        let v: i64 = script.key(&keys[2]).invoke_async(&mr).await.unwrap();
        assert_eq!(v, 2);
        use futures::StreamExt;
        let scanned: Vec<String> = mr.scan().await.unwrap().map(|k| k.unwrap()).collect().await;
        assert_eq!(scanned.len(), 300);
    });
    for (k, ports) in &where_keys_are(&new_refs) {
        assert_eq!(ports.len(), 1, "{k}");
    }
    rebalance(&old, &plain_new, volatile_ok()).unwrap();
    for (k, ports) in &where_keys_are(&new_refs) {
        assert_eq!(ports, &vec![owner_port(&plain_new, k)], "{k}");
    }
}

/// What a writer knows about one key: acknowledged effects, and effects of
/// calls that failed in a way that leaves it unknown whether they ran.
#[derive(Debug, Default, Clone)]
struct Model {
    /// Counters: acknowledged increments, and unknown ones.
    acked: i64,
    unknown: i64,
    /// Registers: the last acknowledged value, and values of later unknown writes.
    last: Option<String>,
    maybe: Vec<Option<String>>,
    /// Calls that failed in a way that says they did not run.
    refused: i64,
}

/// A failure after which the command surely did not run.
fn surely_not_run(e: &redis::RedisError) -> bool {
    e.code() == Some("TRYAGAIN") || e.to_string().contains("connection refused")
}

fn count(models: &Mutex<HashMap<String, Model>>, key: &str, by: i64, r: &redis::RedisResult<i64>) {
    let mut m = models.lock().unwrap();
    let e = m.entry(key.to_string()).or_default();
    match r {
        Ok(_) => e.acked += by,
        Err(err) if surely_not_run(err) => e.refused += 1,
        Err(_) => e.unknown += by,
    }
}

fn put(models: &Mutex<HashMap<String, Model>>, key: &str, value: Option<String>, ok: Result<(), bool>) {
    let mut m = models.lock().unwrap();
    let e = m.entry(key.to_string()).or_default();
    match ok {
        Ok(()) => {
            e.last = value;
            e.maybe.clear();
        }
        Err(true) => e.refused += 1,
        Err(false) => e.maybe.push(value),
    }
}

fn outcome<T>(r: &redis::RedisResult<T>) -> Result<(), bool> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(surely_not_run(e)),
    }
}

/// How the writers' clients become migration-aware.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Switch {
    /// Built migration-aware (the two-deploy procedure's first deploy).
    Built,
    /// Built on the old configuration, writing, then switched by
    /// `reconfigure` (sync and async) while they write.
    AtRunTime,
}

fn writers_during_rebalance(old_n: usize, new_n: usize, mode: Mode, stop_destination: bool) {
    writers_during(old_n, new_n, mode, stop_destination, Switch::Built)
}

fn writers_during(old_n: usize, new_n: usize, mode: Mode, stop_destination: bool, switch: Switch) {
    let total = old_n.max(new_n);
    let s = persistent_servers(total);
    let old_refs: Vec<&RedisServer> = s[..old_n].iter().collect();
    let new_refs: Vec<&RedisServer> = s[..new_n].iter().collect();
    let all_refs: Vec<&RedisServer> = s.iter().collect();
    let timeouts = |b: Builder| b.response_timeout(Some(Duration::from_millis(800)));
    let old = builder(&old_refs, mode).build().unwrap();
    let plain_new = builder(&new_refs, mode).build().unwrap();
    let aware_builder = || timeouts(builder(&new_refs, mode)).migrating_from(builder(&old_refs, mode));
    let aware = match switch {
        Switch::Built => aware_builder().build().unwrap(),
        Switch::AtRunTime => timeouts(builder(&old_refs, mode)).build().unwrap(),
    };

    // Data written before the move, through the old configuration.
    let mut pipe = old.pipeline_all();
    for i in 0..20_000 {
        pipe.set(format!("pre:{i}"), i).ignore();
    }
    pipe.query::<()>(&old).unwrap();
    let models: Arc<Mutex<HashMap<String, Model>>> = Arc::default();
    for t in 0..8 {
        for i in 0..25 {
            let c = format!("t{t}:c{i}");
            old.set::<_, _, ()>(&c, 0).unwrap();
            models.lock().unwrap().insert(c, Model::default());
        }
    }
    // The seeding client is done: a client on the old configuration still
    // connected is what the rebalance's census refuses to move under.
    drop(old);
    let old_name = format!(
        "mredis:{}",
        mredis::placement::fingerprint::fingerprint(mode, &named(old_refs.iter().map(|s| s.port())), None)
    );
    mredis_tests::wait_until_no_client_named(&old_refs, &old_name);
    let old = builder(&old_refs, mode).build().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let script = mredis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let mut threads = Vec::new();
    for t in 0..8 {
        let mr = aware.clone();
        let models = models.clone();
        let stop = stop.clone();
        let script = script.clone();
        threads.push(std::thread::spawn(move || {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let i = round % 25;
                let c = format!("t{t}:c{i}");
                let r = mr.incr::<_, _, i64>(&c, 1);
                count(&models, &c, 1, &r);
                let r: redis::RedisResult<i64> = script.key(&c).arg(2).invoke(&mr);
                count(&models, &c, 2, &r);
                let sk = format!("t{t}:s{i}");
                let v = format!("v{round}");
                let r = mr.set::<_, _, ()>(&sk, &v);
                put(&models, &sk, Some(v), outcome(&r));
                let _ = mr.expire::<_, ()>(&sk, 100_000);
                let hk = format!("t{t}:h{i}");
                let v = format!("h{round}");
                let r = mr.hset::<_, _, _, ()>(&hk, "f", &v);
                put(&models, &format!("{hk}#f"), Some(v), outcome(&r));
                let ak = format!("t{t}:a{i}");
                let r = mr.append::<_, _, i64>(&ak, "x");
                count(&models, &ak, 1, &r);
                let dk = format!("t{t}:d{i}");
                if round.is_multiple_of(2) {
                    let r = mr.set::<_, _, ()>(&dk, "here");
                    put(&models, &dk, Some("here".into()), outcome(&r));
                } else {
                    let r = mr.del::<_, i64>(&dk);
                    put(&models, &dk, None, outcome(&r));
                }
                // MSET over two keys that usually straddle servers, then read them back.
                let m1 = format!("t{t}:m{i}");
                let m2 = format!("t{t}:n{i}");
                let v = format!("m{round}");
                let r = mr.mset::<_, _, ()>(&[(&m1, &v), (&m2, &v)]);
                put(&models, &m1, Some(v.clone()), outcome(&r));
                put(&models, &m2, Some(v.clone()), outcome(&r));
                if r.is_ok()
                    && let Ok(got) = mr.mget::<_, Vec<Option<String>>>(&[&m1, &m2])
                {
                    assert_eq!(got, vec![Some(v.clone()), Some(v)], "read your writes: {m1}, {m2}");
                }
                // A fleet pipeline: SET + INCR.
                let pk = format!("t{t}:p{i}");
                let pc = format!("t{t}:q{i}");
                let v = format!("p{round}");
                let r = mr
                    .pipeline_all()
                    .set(&pk, &v)
                    .ignore()
                    .incr(&pc, 1)
                    .query::<(i64,)>(&mr);
                put(&models, &pk, Some(v), outcome(&r));
                let rc = r.map(|(n,)| n);
                count(&models, &pc, 1, &rc);
            }
        }));
    }
    // 200 async tasks on the async client.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let async_models = models.clone();
    let async_stop = stop.clone();
    let new_urls = named(new_refs.iter().map(|s| s.port()));
    let old_urls = named(old_refs.iter().map(|s| s.port()));
    let async_aware = || {
        MRedis::builder()
            .servers(new_urls.clone())
            .mode(mode)
            .response_timeout(Some(Duration::from_millis(800)))
            .migrating_from(MRedis::builder().servers(old_urls.clone()).mode(mode))
    };
    let amr = rt.block_on(async {
        match switch {
            Switch::Built => async_aware().build_async().await.unwrap(),
            Switch::AtRunTime => MRedis::builder()
                .servers(old_urls.clone())
                .mode(mode)
                .response_timeout(Some(Duration::from_millis(800)))
                .build_async()
                .await
                .unwrap(),
        }
    });
    let async_mr = amr.clone();
    let async_handle = rt.spawn(async move {
        let mr = async_mr;
        let mut tasks = Vec::new();
        for task in 0..200 {
            let mr = mr.clone();
            let models = async_models.clone();
            let stop = async_stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let c = format!("task{task}:c{}", round % 5);
                    let r = mr.incr::<_, _, i64>(&c, 1).await;
                    count(&models, &c, 1, &r);
                    let sk = format!("task{task}:s{}", round % 5);
                    let v = format!("v{round}");
                    let r = mr.set::<_, _, ()>(&sk, &v).await;
                    put(&models, &sk, Some(v), outcome(&r));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });

    if switch == Switch::AtRunTime {
        // The writers are writing through plain clients of the old
        // configuration: switch them (and every clone) while they write.
        let acked = || models.lock().unwrap().values().map(|m| m.acked).sum::<i64>();
        let at = acked();
        mredis_tests::wait_until("the plain writers writing", Duration::from_secs(30), || {
            acked() > at + 500
        });
        aware.reconfigure(aware_builder()).unwrap();
        rt.block_on(amr.reconfigure(async_aware())).unwrap();
        let at = acked();
        mredis_tests::wait_until("the switched writers writing", Duration::from_secs(30), || {
            acked() > at + 2000
        });
        // No call failed because of the switch (nothing moves yet, and
        // every server answers: any failure would be the switch's).
        let models = models.lock().unwrap();
        let failed: Vec<_> = models
            .iter()
            .filter(|(_, m)| m.unknown > 0 || !m.maybe.is_empty() || m.refused > 0)
            .collect();
        assert!(failed.is_empty(), "calls failed across the switch: {failed:?}");
    }

    // The rebalance, with the first old server stopped for 2 s mid-way.
    let started = Instant::now();
    // The first old server, or the last server (a destination), stops for 2 s.
    let stopped = if stop_destination {
        s[total - 1].pid().unwrap()
    } else {
        s[0].pid().unwrap()
    };
    // One journal per fleet (the tests run in parallel; two rebalances of
    // different fleets must not share one, as they would not in use).
    let scratch = mredis_tests::TempDir::new("migration");
    let journal = scratch.path().join("rebalance.journal");
    // The rebalance runs in a child process: started, the server stopped
    // for 2 s under it, the child killed (SIGKILL) right after, then run
    // again until it exits 0.
    let ports = |list: &[&RedisServer]| list.iter().map(|x| x.port().to_string()).collect::<Vec<_>>().join(",");
    let spec = format!(
        "{};{};{};{}",
        if mode == Mode::Standard { "standard" } else { "ketama" },
        ports(&old_refs),
        ports(&new_refs),
        journal.display()
    );
    let mut first = spawn_rebalance(&spec);
    std::thread::sleep(Duration::from_millis(300));
    signal("STOP", stopped);
    std::thread::sleep(Duration::from_secs(2));
    signal("CONT", stopped);
    std::thread::sleep(Duration::from_millis(150));
    let killed = first.try_wait().unwrap().is_none();
    if killed {
        signal("KILL", first.id());
    }
    let _ = first.wait();
    let mut runs = 1;
    let mut failures = Vec::new();
    loop {
        runs += 1;
        let out = spawn_rebalance(&spec).wait_with_output().unwrap();
        if out.status.success() {
            break;
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let why = text
            .lines()
            .find(|l| l.contains("conflicts under") || l.contains("rebalance failed"))
            .map(str::to_string)
            .unwrap_or(text.lines().last().unwrap_or_default().to_string());
        failures.push(why);
        assert!(runs < 20, "rebalance keeps failing: {failures:#?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Keep writing a little after the rebalance, then stop.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    rt.block_on(async_handle).unwrap();
    // Writers may have moved keys after the last pass: finish (this is the
    // documented last step, and must find nothing misplaced but those).
    let final_report = rebalance(
        &old,
        &plain_new,
        RebalanceOptions {
            journal: Some(journal.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!journal.exists(), "a clean run removes its journal");
    assert!(final_report.conflicts.is_empty());
    eprintln!(
        "{old_n} -> {new_n}: rebalance took {runs} runs (the first {}), {:?}; then {} moved, {} leftovers",
        if killed {
            "killed with SIGKILL"
        } else {
            "finished before the kill"
        },
        started.elapsed(),
        final_report.moved,
        final_report.leftovers
    );

    // Every key is on its new owner only.
    let places = where_keys_are(&all_refs);
    for (k, ports) in &places {
        assert_eq!(ports, &vec![owner_port(&plain_new, k)], "{k} is on {ports:?}");
    }
    for i in (0..20_000).step_by(7) {
        assert_eq!(plain_new.get::<_, i64>(format!("pre:{i}")).unwrap(), i);
    }
    // Every counter equals its acknowledged increments (plus, at most, the
    // ones whose outcome is unknown); every register its last acknowledged write.
    let models = models.lock().unwrap();
    let mut checked = 0;
    for (key, m) in models.iter() {
        if let Some(hk) = key.strip_suffix("#f") {
            let got: Option<String> = plain_new.hget(hk, "f").unwrap();
            assert!(got == m.last || m.maybe.contains(&got), "{key}: {got:?} vs {m:?}");
        } else if key.contains(":a") {
            let got: usize = plain_new.strlen(key).unwrap();
            let got = got as i64;
            assert!(got >= m.acked && got <= m.acked + m.unknown, "{key}: {got} vs {m:?}");
        } else if key.contains(":c") || key.contains(":q") {
            let got: Option<i64> = plain_new.get(key).unwrap();
            let got = got.unwrap_or(0);
            assert!(got >= m.acked && got <= m.acked + m.unknown, "{key}: {got} vs {m:?}");
        } else {
            let got: Option<String> = plain_new.get(key).unwrap();
            assert!(got == m.last || m.maybe.contains(&got), "{key}: {got:?} vs {m:?}");
        }
        checked += 1;
    }
    assert!(checked > 1000, "only {checked} keys written");
    let acked: i64 = models.values().map(|m| m.acked).sum();
    eprintln!("checked {checked} keys, {acked} acknowledged increments");
}

/// Starts this test binary's `child_rebalance` in a child process.
fn spawn_rebalance(spec: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            &mredis_tests::test_name(module_path!(), "child_rebalance"),
            "--test-threads",
            "1",
            "-q",
        ])
        .env("MREDIS_CHILD_REBALANCE", spec)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Not a test of its own: the rebalance the writers tests run in a child
/// process (so they can SIGKILL it), from `MREDIS_CHILD_REBALANCE`
/// (`mode;old ports;new ports;journal`). Exits non-zero on an error or a
/// conflict.
#[test]
#[ignore = "the child process of the writers tests"]
fn child_rebalance() {
    let Ok(spec) = std::env::var("MREDIS_CHILD_REBALANCE") else {
        return;
    };
    let parts: Vec<&str> = spec.split(';').collect();
    let mode = if parts[0] == "standard" {
        Mode::Standard
    } else {
        ketama()
    };
    let list = |ports: &str| named(ports.split(',').map(|p| p.parse::<u16>().unwrap()));
    let old = MRedis::builder().servers(list(parts[1])).mode(mode).build().unwrap();
    let new = MRedis::builder().servers(list(parts[2])).mode(mode).build().unwrap();
    let options = RebalanceOptions {
        migrate_timeout_ms: Some(1000),
        journal: Some(std::path::PathBuf::from(parts[3])),
        ..Default::default()
    };
    let report = rebalance(&old, &new, options).unwrap();
    assert!(
        report.conflicts.is_empty(),
        "conflicts under the procedure: {:?}",
        report.conflicts.iter().take(4).collect::<Vec<_>>()
    );
}

fn signal(sig: &str, pid: u32) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

#[test]
fn writers_lose_nothing_while_growing_3_to_4_standard() {
    writers_during_rebalance(3, 4, Mode::Standard, false);
}

#[test]
fn writers_lose_nothing_while_growing_3_to_4_standard_with_the_destination_stopped() {
    writers_during_rebalance(3, 4, Mode::Standard, true);
}

/// The writers switch at run time (`reconfigure`) from the old
/// configuration to migration-aware while they write, then the same
/// faults: the source stopped 2 s, the rebalance killed and rerun.
#[test]
fn writers_switched_at_run_time_lose_nothing_while_growing_3_to_4_standard() {
    writers_during(3, 4, Mode::Standard, false, Switch::AtRunTime);
}

#[test]
fn writers_lose_nothing_while_growing_3_to_4_ketama() {
    writers_during_rebalance(3, 4, ketama(), false);
}

#[test]
fn writers_lose_nothing_while_shrinking_4_to_3_standard() {
    writers_during_rebalance(4, 3, Mode::Standard, false);
}

#[test]
fn toml_migrating_from_builds_an_aware_client() {
    let s = persistent_servers(3);
    let text = format!(
        "servers = [\"{}\", \"{}\", \"{}\"]\n\n[migrating_from]\nservers = [\"{}\", \"{}\"]\n",
        s[0].url(),
        s[1].url(),
        s[2].url(),
        s[0].url(),
        s[1].url()
    );
    let old = builder(&[&s[0], &s[1]], Mode::Standard).build().unwrap();
    for i in 0..100 {
        old.set::<_, _, ()>(format!("t:{i}"), i).unwrap();
    }
    let mr = mredis::builder_from_toml(&text).unwrap().build().unwrap();
    let plain_new = builder(&[&s[0], &s[1], &s[2]], Mode::Standard).build().unwrap();
    for i in 0..100 {
        assert_eq!(mr.get::<_, i64>(format!("t:{i}")).unwrap(), i);
    }
    rebalance(&old, &plain_new, volatile_ok()).unwrap();
    for i in 0..100 {
        assert_eq!(mr.get::<_, i64>(format!("t:{i}")).unwrap(), i);
    }
    let places = where_keys_are(&[&s[0], &s[1], &s[2]]);
    for (k, ports) in &places {
        assert_eq!(ports, &vec![owner_port(&mr, k)], "{k}");
    }
    // Errors in the migrating_from table name the line, not the value.
    let bad = "servers = [\"redis://127.0.0.1:1/0\"]\n[migrating_from]\nservers = [\"redis://:hunter2secret@127.0.0.1:2/0\", 7]\n";
    let err = mredis::builder_from_toml(bad).unwrap_err().to_string();
    assert!(!err.contains("hunter2secret"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn commands_too_big_for_the_guard_run_on_the_new_server_or_say_tryagain() {
    let s = persistent_servers(3);
    let old_refs: Vec<&RedisServer> = s[..2].iter().collect();
    let new_refs: Vec<&RedisServer> = s.iter().collect();
    let old = builder(&old_refs, Mode::Standard).build().unwrap();
    let plain_new = builder(&new_refs, Mode::Standard).build().unwrap();
    let mr = builder(&new_refs, Mode::Standard)
        .migrating_from(builder(&old_refs, Mode::Standard))
        .build()
        .unwrap();
    let mut moving = (0..)
        .map(|i| format!("big:{i}"))
        .filter(|k| owner_port(&old, k) != owner_port(&plain_new, k));
    let (on_old, gone, fresh) = (moving.next().unwrap(), moving.next().unwrap(), moving.next().unwrap());
    old.sadd::<_, _, ()>(&on_old, 0).unwrap();
    old.sadd::<_, _, ()>(&gone, 0).unwrap();
    migrate(
        server_on(&s, owner_port(&old, &gone)),
        server_on(&s, owner_port(&plain_new, &gone)),
        &gone,
    );
    let members: Vec<i64> = (1..=9000).collect();
    // Still on its old server: cannot be wrapped, so TRYAGAIN, nothing written.
    let err = mr.sadd::<_, _, i64>(&on_old, &members[..]).unwrap_err();
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
    assert_eq!(old.scard::<_, i64>(&on_old).unwrap(), 1);
    let err = mr
        .pipeline_all()
        .sadd(&on_old, &members[..])
        .query::<(i64,)>(&mr)
        .unwrap_err();
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
    // Moved, or new: runs on the new server.
    assert_eq!(mr.sadd::<_, _, i64>(&gone, &members[..]).unwrap(), 9000);
    let (n,): (i64,) = mr.pipeline_all().sadd(&fresh, &members[..]).query(&mr).unwrap();
    assert_eq!(n, 9000);
    assert_eq!(where_keys_are(&new_refs)[&fresh], vec![owner_port(&plain_new, &fresh)]);
}

/// One page of SCAN through a routed handle: (next cursor, keys).
fn handle_scan_page(con: &mut dyn redis::ConnectionLike, cursor: u64) -> (u64, Vec<String>) {
    redis::cmd("SCAN")
        .arg(cursor)
        .arg("COUNT")
        .arg(10_000)
        .query(con)
        .unwrap()
}

#[test]
fn a_handle_scan_finds_keys_that_move_while_it_walks() {
    // 2 -> 3 servers, standard placement: keys move between the old servers
    // too. The walk reads s0 first; then the keys moving from s1 to s0 are
    // moved; they are on neither server when the walk passes it, unless the
    // walk (as the method's ScanIter) looks at the new owners again.
    let s = persistent_servers(3);
    let old_refs: Vec<&RedisServer> = s[..2].iter().collect();
    let new_refs: Vec<&RedisServer> = s.iter().collect();
    let old = builder(&old_refs, Mode::Standard).build().unwrap();
    let plain_new = builder(&new_refs, Mode::Standard).build().unwrap();
    let mr = builder(&new_refs, Mode::Standard)
        .migrating_from(builder(&old_refs, Mode::Standard))
        .build()
        .unwrap();
    let keys: Vec<String> = (0..600).map(|i| format!("walk:{i}")).collect();
    for k in &keys {
        old.set::<_, _, ()>(k, 1).unwrap();
    }
    let late: Vec<&String> = keys
        .iter()
        .filter(|k| owner_port(&old, k) == s[1].port() && owner_port(&plain_new, k) == s[0].port())
        .collect();
    assert!(!late.is_empty(), "some keys move from s1 to s0");

    let mut con = mr.get_connection().unwrap();
    let (mut cursor, mut found) = handle_scan_page(&mut con, 0);
    assert!(cursor != 0, "the walk goes on after the first server");
    for k in &late {
        migrate(&s[1], &s[0], k);
    }
    while cursor != 0 {
        let (next, page) = handle_scan_page(&mut con, cursor);
        found.extend(page);
        cursor = next;
    }
    let found: std::collections::HashSet<String> = found.into_iter().collect();
    let missing: Vec<&&String> = late.iter().filter(|k| !found.contains(k.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{} of {} moved keys missed",
        missing.len(),
        late.len()
    );
    assert_eq!(found.len(), keys.len(), "every key, none invented");
}

/// A key a rebalance has marked as moving (on fleets with replicas it
/// marks each key on its source, copies it, then deletes it and the mark):
/// calls of migration-aware clients on it wait, asking again, and run
/// once the mark is gone; sync and async; single keys, split commands,
/// pipelines and scripts.
#[test]
fn calls_on_a_key_marked_as_moving_wait_for_the_mark_to_go() {
    let s = persistent_servers(3);
    let old_refs: Vec<&RedisServer> = s[..2].iter().collect();
    let new_refs: Vec<&RedisServer> = s.iter().collect();
    let old = builder(&old_refs, Mode::Standard).build().unwrap();
    let plain_new = builder(&new_refs, Mode::Standard).build().unwrap();
    let aware = || builder(&new_refs, Mode::Standard).migrating_from(builder(&old_refs, Mode::Standard));
    let mr = aware().build().unwrap();
    let key = (0..1000)
        .map(|i| format!("marked:{i}"))
        .find(|k| owner_port(&old, k) != owner_port(&plain_new, k))
        .unwrap();
    let source = server_on(&s, owner_port(&old, &key));
    old.set::<_, _, ()>(&key, "v").unwrap();
    let mut src = source.conn();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let amr = rt.block_on(aware().build_async()).unwrap();

    type Call = Box<dyn FnOnce() -> String + Send>;
    let calls: Vec<(&str, Call)> = vec![
        ("get", {
            let (mr, k) = (mr.clone(), key.clone());
            Box::new(move || mr.get::<_, String>(&k).unwrap())
        }),
        ("mget", {
            let (mr, k) = (mr.clone(), key.clone());
            Box::new(move || mr.mget::<_, Vec<String>>(&[&k, &k]).unwrap().concat())
        }),
        ("fleet pipeline", {
            let (mr, k) = (mr.clone(), key.clone());
            Box::new(move || {
                let (v, w): (String, String) = mr.pipeline_all().get(&k).get(&k).query(&mr).unwrap();
                v + &w
            })
        }),
        ("key pipeline", {
            let (mr, k) = (mr.clone(), key.clone());
            Box::new(move || {
                let (v,): (String,) = mr.pipeline(&k).unwrap().get(&k).query(&mr).unwrap();
                v
            })
        }),
        ("script", {
            let (mr, k) = (mr.clone(), key.clone());
            Box::new(move || {
                mredis::Script::new("return redis.call('GET', KEYS[1])")
                    .key(&k)
                    .invoke::<String>(&mr)
                    .unwrap()
            })
        }),
        ("async get", {
            let (amr, k) = (amr.clone(), key.clone());
            let handle = rt.handle().clone();
            Box::new(move || handle.block_on(amr.get::<_, String>(&k)).unwrap())
        }),
    ];
    for (what, call) in calls {
        let _: i64 = redis::cmd("HSET")
            .arg("__mredis:moving")
            .arg(&key)
            .arg("test-move")
            .query(&mut src)
            .unwrap();
        let asked = mredis_tests::command_calls(&mut src, "evalsha") + mredis_tests::command_calls(&mut src, "eval");
        let call = std::thread::spawn(call);
        // It asks again while the mark is there (at least 3 times), and
        // nothing it runs changes the key meanwhile.
        mredis_tests::wait_until(&format!("{what}: asking again"), Duration::from_secs(5), || {
            mredis_tests::command_calls(&mut src, "evalsha") + mredis_tests::command_calls(&mut src, "eval")
                >= asked + 3
        });
        assert!(!call.is_finished(), "{what} finished while the key was marked");
        let _: i64 = redis::cmd("HDEL")
            .arg("__mredis:moving")
            .arg(&key)
            .query(&mut src)
            .unwrap();
        let v = call.join().unwrap();
        assert!(v == "v" || v == "vv", "{what}: {v}");
    }
}
