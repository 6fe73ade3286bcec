//! Run-time reconfiguration (`MRedis::reconfigure`, `aio::MRedis::reconfigure`)
//! against real servers: clones made before follow; writers see no error
//! while the fleet goes plain(3) -> migration-aware(3 -> 4) -> (rebalance)
//! -> plain(4), and every acknowledged increment is found exactly once;
//! connections to servers that stay are kept (CLIENT LIST ids) and carry
//! the new name; an invalid configuration changes nothing; the fleet file
//! watcher applies a changed file and refuses a bad one without showing
//! its password.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mredis::rebalance::{RebalanceOptions, rebalance};
use mredis::{Builder, MRedis};
use mredis_tests::{RedisServer, TempDir, original_index, servers, wait_until};
use redis::Commands;

/// How long a condition the test waits for may take.
const WITHIN: Duration = Duration::from_secs(20);

/// The plain configuration of `servers`, in that order (standard
/// placement: a key's server is `original_index(key, n)`).
fn plain(servers: &[&RedisServer]) -> Builder {
    MRedis::builder().servers(servers.iter().map(|s| s.url()))
}

/// Migration-aware: `new` moving from `old`.
fn aware(new: &[&RedisServer], old: &[&RedisServer]) -> Builder {
    plain(new).migrating_from(plain(old))
}

fn refs(s: &[RedisServer]) -> Vec<&RedisServer> {
    s.iter().collect()
}

/// Servers that keep RDB snapshots (rebalance accepts them as destinations).
fn persistent_servers(n: usize) -> Vec<RedisServer> {
    (0..n).map(|_| RedisServer::with_args(&["--save", "3600 1"])).collect()
}

/// The indexes (in `all`) of the servers holding `key`.
fn holders(all: &[&RedisServer], key: &str) -> Vec<usize> {
    all.iter()
        .enumerate()
        .filter(|(_, s)| s.conn().exists::<_, bool>(key).unwrap())
        .map(|(i, _)| i)
        .collect()
}

/// The mredis connections a server sees (CLIENT LIST): id -> name.
fn mredis_clients(server: &RedisServer) -> BTreeMap<i64, String> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut server.conn()).unwrap();
    list.lines()
        .filter_map(|line| {
            let field = |k: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                    .map(str::to_string)
            };
            let id: i64 = field("id")?.parse().ok()?;
            let name = field("name")?;
            // The connection asking for the finish marker (a migration-aware
            // client's own, named `...:watch`) is not a pooled one.
            (name.starts_with("mredis:") && !name.ends_with(":watch")).then_some((id, name))
        })
        .collect()
}

/// The name a client built from `builder` gives its connections (read
/// off the first server, after a call on a client of its own, which is
/// then dropped and its connections waited out on every server).
fn name_of(builder: Builder, servers: &[RedisServer]) -> String {
    let before: Vec<BTreeSet<i64>> = servers
        .iter()
        .map(|s| mredis_clients(s).into_keys().collect())
        .collect();
    let probe = builder.build().unwrap();
    let _: PerServerDbsize = probe.dbsize().unwrap();
    let probes: Vec<BTreeMap<i64, String>> = servers
        .iter()
        .zip(&before)
        .map(|(s, b)| {
            mredis_clients(s)
                .into_iter()
                .filter(|(id, _)| !b.contains(id))
                .collect()
        })
        .collect();
    let name = probes[0]
        .values()
        .next()
        .expect("the probe client's connection")
        .clone();
    drop(probe);
    wait_until("the probe's connections closed", WITHIN, || {
        servers
            .iter()
            .zip(&probes)
            .all(|(s, p)| mredis_clients(s).keys().all(|id| !p.contains_key(id)))
    });
    name
}

type PerServerDbsize = mredis::PerServer<i64>;

#[test]
fn a_clone_made_before_uses_the_new_fleet() {
    let s = servers(4);
    let all = refs(&s);
    let mr = plain(&all[..3]).build().unwrap();
    let clone = mr.clone();
    let view = mr.reading_from(mredis::ReadFrom::Primary);
    let pipe_before = {
        let mut p = mr.pipeline_all();
        for i in 0..40 {
            p.set(format!("piped:{i}"), i).ignore();
        }
        p
    };
    mr.set::<_, _, ()>("before", 1).unwrap();
    assert_eq!(holders(&all, "before"), vec![original_index(b"before", 3)]);

    mr.reconfigure(plain(&all)).unwrap();
    assert_eq!(clone.servers().len(), 4);
    assert_eq!(view.servers().len(), 4);
    for i in 0..200 {
        let key = format!("after:{i}");
        clone.set::<_, _, ()>(&key, i).unwrap();
        assert_eq!(holders(&all, &key), vec![original_index(key.as_bytes(), 4)], "{key}");
        assert_eq!(
            clone.server_index_for(key.as_bytes()),
            original_index(key.as_bytes(), 4)
        );
        let read: i64 = view.get(&key).unwrap();
        assert_eq!(read, i);
    }
    // Some keys of 200 have each of the 4 servers as owner: D is used.
    assert!(s[3].dbsize() > 0);
    // A pipeline built before runs routed on the new fleet.
    pipe_before.query::<()>(&clone).unwrap();
    for i in 0..40 {
        let key = format!("piped:{i}");
        assert_eq!(holders(&all, &key), vec![original_index(key.as_bytes(), 4)], "{key}");
    }
    // A handle made before follows too.
    let mut con = clone.get_connection().unwrap();
    mr.reconfigure(plain(&all[..2])).unwrap();
    redis::cmd("SET").arg("handled").arg(1).exec(&mut con).unwrap();
    assert_eq!(holders(&all, "handled"), vec![original_index(b"handled", 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_clone_made_before_uses_the_new_fleet() {
    let s = servers(4);
    let all = refs(&s);
    let mr = plain(&all[..3]).build_async().await.unwrap();
    let clone = mr.clone();
    mr.set::<_, _, ()>("before", 1).await.unwrap();
    let pipe_before = {
        let mut p = mr.pipeline_all();
        for i in 0..40 {
            p.set(format!("piped:{i}"), i).ignore();
        }
        p
    };
    mr.reconfigure(plain(&all)).await.unwrap();
    assert_eq!(clone.servers().len(), 4);
    for i in 0..200 {
        let key = format!("after:{i}");
        clone.set::<_, _, ()>(&key, i).await.unwrap();
        assert_eq!(holders(&all, &key), vec![original_index(key.as_bytes(), 4)], "{key}");
    }
    assert!(s[3].dbsize() > 0);
    pipe_before.query_async::<()>(&clone).await.unwrap();
    for i in 0..40 {
        let key = format!("piped:{i}");
        assert_eq!(holders(&all, &key), vec![original_index(key.as_bytes(), 4)], "{key}");
    }
    let mut con = clone.get_connection().await.unwrap();
    mr.reconfigure(plain(&all[..2])).await.unwrap();
    redis::cmd("SET")
        .arg("handled")
        .arg(1)
        .exec_async(&mut con)
        .await
        .unwrap();
    assert_eq!(holders(&all, "handled"), vec![original_index(b"handled", 2)]);
}

/// Counters incremented by the writers: per key, the increments the
/// client acknowledged; and every error a writer got.
struct Counters {
    keys: Vec<String>,
    acked: Vec<AtomicU64>,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Counters {
    fn new(n: usize) -> Arc<Counters> {
        Arc::new(Counters {
            keys: (0..n).map(|i| format!("counter:{i}")).collect(),
            acked: (0..n).map(|_| AtomicU64::new(0)).collect(),
            errors: Mutex::default(),
            stop: AtomicBool::new(false),
        })
    }

    fn total(&self) -> u64 {
        self.acked.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    /// Waits until `more` increments beyond now were acknowledged.
    fn wait_for(&self, more: u64) {
        let target = self.total() + more;
        wait_until("writers make progress", WITHIN, || self.total() >= target);
    }

    fn record(&self, i: usize, result: redis::RedisResult<i64>) {
        match result {
            Ok(_) => {
                self.acked[i].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.errors.lock().unwrap().push(mredis::error_text(&e)),
        }
    }

    /// No error, every acknowledged increment found once, each key on its
    /// plain(4) owner alone.
    fn check(&self, all: &[&RedisServer]) {
        let errors = self.errors.lock().unwrap();
        assert!(
            errors.is_empty(),
            "{} calls failed: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        assert!(self.total() > 0);
        for (key, acked) in self.keys.iter().zip(&self.acked) {
            let on = holders(all, key);
            let found: u64 = on.iter().map(|&i| all[i].conn().get::<_, u64>(key).unwrap()).sum();
            assert_eq!(found, acked.load(Ordering::Relaxed), "{key}: found on {on:?}");
            if found > 0 {
                assert_eq!(on, vec![original_index(key.as_bytes(), all.len())], "{key}");
            }
        }
    }
}

#[test]
fn writers_see_no_error_while_the_fleet_grows() {
    let s = persistent_servers(4);
    let all = refs(&s);
    let mr = plain(&all[..3]).build().unwrap();
    let counters = Counters::new(64);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (mr, c) = (mr.clone(), counters.clone());
            std::thread::spawn(move || {
                let mut n = t * 17;
                while !c.stop.load(Ordering::Relaxed) {
                    let i = n % c.keys.len();
                    c.record(i, mr.incr(&c.keys[i], 1));
                    n += 1;
                }
            })
        })
        .collect();
    counters.wait_for(500);
    mr.reconfigure(aware(&all, &all[..3])).unwrap();
    counters.wait_for(500);
    // The documented procedure: rebalance while every client is
    // migration-aware, then the plain new list.
    let (old, new) = (plain(&all[..3]).build().unwrap(), plain(&all).build().unwrap());
    rebalance(&old, &new, RebalanceOptions::default()).unwrap();
    counters.wait_for(500);
    mr.reconfigure(plain(&all)).unwrap();
    counters.wait_for(500);
    counters.stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    counters.check(&all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_writers_see_no_error_while_the_fleet_grows() {
    let s = persistent_servers(4);
    let all = refs(&s);
    let mr = plain(&all[..3]).build_async().await.unwrap();
    let counters = Counters::new(64);
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let (mr, c) = (mr.clone(), counters.clone());
            tokio::spawn(async move {
                let mut n = t * 17;
                while !c.stop.load(Ordering::Relaxed) {
                    let i = n % c.keys.len();
                    c.record(i, mr.incr(&c.keys[i], 1).await);
                    n += 1;
                }
            })
        })
        .collect();
    let wait = |c: Arc<Counters>| tokio::task::spawn_blocking(move || c.wait_for(500));
    wait(counters.clone()).await.unwrap();
    mr.reconfigure(aware(&all, &all[..3])).await.unwrap();
    wait(counters.clone()).await.unwrap();
    let urls: Vec<String> = s.iter().map(|x| x.url()).collect();
    tokio::task::spawn_blocking(move || {
        let old = MRedis::builder().servers(&urls[..3]).build().unwrap();
        let new = MRedis::builder().servers(&urls).build().unwrap();
        rebalance(&old, &new, RebalanceOptions::default()).unwrap();
    })
    .await
    .unwrap();
    wait(counters.clone()).await.unwrap();
    mr.reconfigure(plain(&all)).await.unwrap();
    wait(counters.clone()).await.unwrap();
    counters.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    counters.check(&all);
}

/// Makes every one of a sync client's pools hold a few connections: calls
/// from several threads at once, on every server.
fn warm(mr: &MRedis) {
    std::thread::scope(|scope| {
        for t in 0..4 {
            scope.spawn(move || {
                for i in 0..100 {
                    mr.set::<_, _, ()>(format!("warm:{t}:{i}"), i).unwrap();
                }
            });
        }
    });
}

#[test]
fn connections_to_staying_servers_are_kept_and_renamed() {
    let s = servers(4);
    let all = refs(&s);
    let mr = plain(&all[..3]).client_name("app").build().unwrap();
    warm(&mr);
    let before: Vec<BTreeMap<i64, String>> = s[..3].iter().map(mredis_clients).collect();
    let old_name = name_of(plain(&all[..3]).client_name("app"), &s);
    for b in &before {
        assert!(!b.is_empty());
        assert!(b.values().all(|n| *n == old_name), "{b:?}");
    }

    for (next, staying) in [
        (aware(&all, &all[..3]).client_name("app"), 3),
        (plain(&all).client_name("app"), 4),
    ] {
        let name = name_of(next.clone(), &s);
        assert_ne!(name, old_name);
        let ids_before: Vec<BTreeSet<i64>> = s[..staying]
            .iter()
            .map(|x| mredis_clients(x).into_keys().collect())
            .collect();
        mr.reconfigure(next).unwrap();
        // Before any call: the connections were kept, and every mredis
        // connection on every server has the new name.
        for (x, ids) in s[..staying].iter().zip(&ids_before) {
            let now = mredis_clients(x);
            assert!(
                now.keys().any(|id| ids.contains(id)),
                "the connections to {} were kept",
                x.port()
            );
            assert!(now.values().all(|n| *n == name), "{now:?}, expected {name}");
        }
        for x in &s {
            assert!(mredis_clients(x).values().all(|n| *n == name), "on {}", x.port());
        }
        // Calls (one at a time, so the pools need no more) reuse them: no
        // new connection to a staying server, all still there.
        for i in 0..200 {
            mr.set::<_, _, ()>(format!("again:{i}"), i).unwrap();
        }
        for (x, ids) in s[..staying].iter().zip(&ids_before) {
            let now: BTreeSet<i64> = mredis_clients(x).into_keys().collect();
            assert!(now.is_subset(ids), "reopened on {}: {now:?} vs {ids:?}", x.port());
            assert!(!now.is_empty());
            assert!(mredis_clients(x).values().all(|n| *n == name));
        }
        // The new server's connections are named so from the start.
        assert!(mredis_clients(&s[3]).values().all(|n| *n == name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_connections_to_staying_servers_are_kept_and_renamed() {
    let s = servers(4);
    let all = refs(&s);
    let mr = plain(&all[..3]).client_name("app").build_async().await.unwrap();
    let _: PerServerDbsize = mr.dbsize().await.unwrap();
    let before: Vec<BTreeMap<i64, String>> = s[..3].iter().map(mredis_clients).collect();
    for b in &before {
        assert_eq!(b.len(), 1, "one multiplexed connection: {b:?}");
    }
    for next in [
        aware(&all, &all[..3]).client_name("app"),
        plain(&all).client_name("app"),
    ] {
        let name = name_of(next.clone(), &s);
        mr.reconfigure(next).await.unwrap();
        for (x, b) in s[..3].iter().zip(&before) {
            let now = mredis_clients(x);
            assert_eq!(
                now.keys().filter(|id| b.contains_key(id)).count(),
                1,
                "the connection to {} was kept",
                x.port()
            );
            assert!(now.values().all(|n| *n == name), "{now:?}, expected {name}");
        }
        let _: PerServerDbsize = mr.dbsize().await.unwrap();
        for (x, b) in s[..3].iter().zip(&before) {
            let ids: BTreeSet<i64> = mredis_clients(x).into_keys().collect();
            assert!(ids.iter().all(|id| b.contains_key(id)), "reopened on {}", x.port());
        }
        assert!(mredis_clients(&s[3]).values().all(|n| *n == name));
    }
}

/// Invalid configurations, each refused.
fn invalid(all: &[&RedisServer]) -> Vec<Builder> {
    vec![
        Builder::new().servers(Vec::<String>::new()),
        Builder::new().servers(["not a url"]),
        Builder::new().servers(["redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0"]),
        plain(all).migrating_from(Builder::new().servers(["redis://127.0.0.1:70000/0"])),
        // Ejection needs ketama or rendezvous: refused by the topology.
        plain(all).health_check(mredis::health::HealthCheck {
            eject: true,
            ..Default::default()
        }),
    ]
}

#[test]
fn an_invalid_configuration_leaves_the_old_fleet_working() {
    let s = servers(4);
    let all = refs(&s);
    let mr = plain(&all[..3]).build().unwrap();
    for bad in invalid(&all) {
        assert!(mr.reconfigure(bad).is_err());
        assert_eq!(mr.servers().len(), 3);
        for i in 0..30 {
            let key = format!("k:{i}");
            mr.set::<_, _, ()>(&key, i).unwrap();
            assert_eq!(holders(&all, &key), vec![original_index(key.as_bytes(), 3)]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_configuration_leaves_the_old_async_fleet_working() {
    let s = servers(4);
    let all = refs(&s);
    let mr = plain(&all[..3]).build_async().await.unwrap();
    for bad in invalid(&all) {
        assert!(mr.reconfigure(bad).await.is_err());
        assert_eq!(mr.servers().len(), 3);
        for i in 0..30 {
            let key = format!("k:{i}");
            mr.set::<_, _, ()>(&key, i).await.unwrap();
            assert_eq!(holders(&all, &key), vec![original_index(key.as_bytes(), 3)]);
        }
    }
}

/// Every `tracing` event of this process, as text (the watcher logs from its
/// own thread, so the subscriber is the global one; the test that installs
/// it runs in a process of its own).
fn logged() -> &'static Mutex<Vec<String>> {
    static LOG: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(Recorder);
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    LOG.get_or_init(Mutex::default)
}

struct Recorder;

struct Text<'a>(&'a mut String);

impl tracing::field::Visit for Text<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut text = format!("{} {}", event.metadata().level(), event.metadata().target());
        event.record(&mut Text(&mut text));
        logged().lock().unwrap().push(text);
    }
}

/// Writes a fleet file as deployment tools do: a new file renamed over it.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn fleet_toml(servers: &[&RedisServer]) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.url())).collect();
    format!("servers = [{}]\n", list.join(", "))
}

const CANARY: &str = "Hunter2-watch-5e1f";

#[test]
fn the_file_watcher_applies_a_changed_file_and_refuses_a_bad_one() {
    // The watcher logs from its own thread, so this test installs a global
    // subscriber: alone in a process, it sees only its own watcher's events.
    if !mredis_tests::in_own_process(
        module_path!(),
        "the_file_watcher_applies_a_changed_file_and_refuses_a_bad_one",
    ) {
        return;
    }
    let log = logged();
    let s = servers(4);
    let all = refs(&s);
    let dir = TempDir::new("fleet-watch");
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, fleet_toml(&all[..3])).unwrap();
    let mr = mredis::builder_from_toml(&std::fs::read_to_string(&path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let clone = mr.clone();
    let watch = mredis::watch_fleet_file_with(&path, mr, |b| b.client_name("watched")).unwrap();

    // Replaced by a rename: applied.
    replace(&path, &fleet_toml(&all));
    wait_until("the 4-server file applied", WITHIN, || clone.servers().len() == 4);
    assert_eq!(watch.applied(), 1);
    for i in 0..50 {
        let key = format!("w:{i}");
        clone.set::<_, _, ()>(&key, i).unwrap();
        assert_eq!(holders(&all, &key), vec![original_index(key.as_bytes(), 4)]);
    }
    assert!(mredis_clients(&s[3]).values().all(|n| n.ends_with(":watched")));

    // Written in place: applied too.
    std::fs::write(&path, fleet_toml(&all[..2])).unwrap();
    wait_until("the 2-server file applied", WITHIN, || clone.servers().len() == 2);

    // Malformed, with a password in it: refused, fleet kept, never shown.
    let bad = [
        format!("servers = [\"redis://:{CANARY}@127.0.0.1:{}/0\"\n", s[0].port()),
        format!("servers = [\"redis://:{CANARY}@127.0.0.1:notaport/0\"]\n"),
        format!(
            "servers = [{{ url = \"redis://127.0.0.1:{}/0\", password = \"{CANARY}\" }}]\n",
            s[0].port()
        ),
        format!(
            "servers = [\"redis://u:{CANARY}@127.0.0.1:{}/0\"]\n{CANARY} = 1\n",
            s[0].port()
        ),
    ];
    for text in &bad {
        let applied = watch.applied();
        replace(&path, text);
        wait_until("the bad file refused", WITHIN, || watch.last_error().is_some());
        let error = watch.last_error().unwrap();
        assert!(!error.contains(CANARY), "{error}");
        assert_eq!(watch.applied(), applied);
        assert_eq!(clone.servers().len(), 2);
        clone.set::<_, _, ()>("still", 1).unwrap();
        assert_eq!(holders(&all, "still"), vec![original_index(b"still", 2)]);
        // A good file again clears the error.
        replace(
            &path,
            &fleet_toml(&all[..2]).replace("servers", "mode = \"standard\"\nservers"),
        );
        wait_until("the good file applied", WITHIN, || watch.last_error().is_none());
    }
    let log = log.lock().unwrap();
    let refusals: Vec<&String> = log.iter().filter(|l| l.starts_with("ERROR")).collect();
    assert!(refusals.len() >= bad.len(), "{log:?}");
    assert!(log.iter().all(|l| !l.contains(CANARY)), "{log:?}");
}

#[test]
fn the_old_configurations_health_checker_stops() {
    let s = servers(3);
    let all = refs(&s);
    let checked = |b: Builder| {
        b.health_check(mredis::health::HealthCheck {
            interval: Duration::from_millis(50),
            ..Default::default()
        })
    };
    let old_name = name_of(plain(&all[..2]).client_name("hc"), &s);
    let mr = checked(plain(&all[..2]).client_name("hc")).build().unwrap();
    wait_until("the health checker connects", WITHIN, || {
        mredis_clients(&s[0]).values().any(|n| *n == old_name)
    });
    mr.set::<_, _, ()>("k", 1).unwrap();
    // A pipeline and a clone made before do not keep it alive.
    let pipe = mr.pipeline_all();
    let clone = mr.clone();
    mr.reconfigure(checked(plain(&all).client_name("hc"))).unwrap();
    assert_eq!(mr.health().len(), 3);
    // The old checker's connection (the only one left with the old name:
    // the pool's were renamed) closes once the old configuration is gone.
    wait_until("the old health checker stopped", WITHIN, || {
        mredis_clients(&s[0]).values().all(|n| *n != old_name)
    });
    drop((pipe, clone));
}

/// Whether every channel is subscribed on its owner among the first `n`
/// servers only, and one pattern on each of those `n` and none elsewhere.
fn subscribed_as(all: &[&RedisServer], n: usize, channels: &[String]) -> bool {
    all.iter().enumerate().all(|(i, s)| {
        let mut con = s.conn();
        let numsub: Vec<(String, usize)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channels)
            .query(&mut con)
            .unwrap();
        let numpat: usize = redis::cmd("PUBSUB").arg("NUMPAT").query(&mut con).unwrap();
        numpat == usize::from(i < n)
            && numsub
                .iter()
                .all(|(c, count)| *count == usize::from(original_index(c.as_bytes(), n) == i))
    })
}

#[test]
fn a_subscriber_follows_the_client() {
    let s = servers(4);
    let all = refs(&s);
    let mr = plain(&all[..3]).build().unwrap();
    let mut sub = mr.subscriber().unwrap();
    let channels: Vec<String> = (0..40).map(|i| format!("ch:{i}")).collect();
    for c in &channels {
        sub.subscribe(c).unwrap();
    }
    sub.psubscribe("pat:*").unwrap();
    assert!(subscribed_as(&all, 3, &channels));
    for n in [4, 2] {
        mr.reconfigure(plain(&all[..n])).unwrap();
        wait_until("the subscriptions follow", WITHIN, || subscribed_as(&all, n, &channels));
        for (i, c) in channels.iter().enumerate() {
            let receivers: usize = mr.publish(c, i).unwrap();
            assert_eq!(receivers, 1, "{c}");
        }
        let receivers: usize = s[n - 1].conn().publish("pat:x", "p").unwrap();
        assert_eq!(receivers, 1);
        let mut got = BTreeSet::new();
        let mut pattern = false;
        while got.len() < channels.len() || !pattern {
            match sub.next_event(Some(WITHIN)) {
                Some(mredis::Event::Message(m)) if m.pattern().is_some() => pattern = true,
                Some(mredis::Event::Message(m)) => {
                    got.insert(m.channel_str().to_string());
                }
                Some(_) => {}
                None => panic!("no message within {WITHIN:?}: {} of {}", got.len(), channels.len()),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_subscriber_follows_the_client() {
    let s = servers(4);
    let all = refs(&s);
    let mr = plain(&all[..3]).build_async().await.unwrap();
    let mut sub = mr.subscriber().unwrap();
    let channels: Vec<String> = (0..40).map(|i| format!("ch:{i}")).collect();
    for c in &channels {
        sub.subscribe(c).await.unwrap();
    }
    sub.psubscribe("pat:*").await.unwrap();
    mr.reconfigure(plain(&all)).await.unwrap();
    let check = {
        let channels = channels.clone();
        let urls: Vec<u16> = s.iter().map(|x| x.port()).collect();
        move || {
            urls.iter().enumerate().all(|(i, port)| {
                let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
                    .unwrap()
                    .get_connection()
                    .unwrap();
                let numsub: Vec<(String, usize)> = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(&channels)
                    .query(&mut con)
                    .unwrap();
                let numpat: usize = redis::cmd("PUBSUB").arg("NUMPAT").query(&mut con).unwrap();
                numpat == 1
                    && numsub
                        .iter()
                        .all(|(c, count)| *count == usize::from(original_index(c.as_bytes(), 4) == i))
            })
        }
    };
    tokio::task::spawn_blocking(move || wait_until("the subscriptions follow", WITHIN, check))
        .await
        .unwrap();
    for (i, c) in channels.iter().enumerate() {
        let receivers: usize = mr.publish(c, i).await.unwrap();
        assert_eq!(receivers, 1, "{c}");
    }
    let mut got = BTreeSet::new();
    while got.len() < channels.len() {
        match tokio::time::timeout(WITHIN, sub.next_event()).await {
            Ok(Some(mredis::Event::Message(m))) => {
                got.insert(m.channel_str().to_string());
            }
            Ok(Some(_)) => {}
            _ => panic!("no message within {WITHIN:?}: {} of {}", got.len(), channels.len()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_watcher_reconfigures_an_async_client() {
    let s = servers(3);
    let all = refs(&s);
    let dir = TempDir::new("fleet-watch-async");
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, fleet_toml(&all[..2])).unwrap();
    let mr = mredis::builder_from_toml(&fleet_toml(&all[..2]))
        .unwrap()
        .build_async()
        .await
        .unwrap();
    let watch = mredis::watch_fleet_file_async(&path, mr.clone(), |b| b).unwrap();
    replace(&path, &fleet_toml(&all));
    let clone = mr.clone();
    tokio::task::spawn_blocking(move || wait_until("the 3-server file applied", WITHIN, || clone.servers().len() == 3))
        .await
        .unwrap();
    assert_eq!(watch.applied(), 1);
    for i in 0..30 {
        let key = format!("wa:{i}");
        mr.set::<_, _, ()>(&key, i).await.unwrap();
        assert_eq!(holders(&all, &key), vec![original_index(key.as_bytes(), 3)]);
    }
}
