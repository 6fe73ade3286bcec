//! Failure behaviour with real servers that are stopped, restarted, hung or
//! full: only the affected server's keys fail, within the timeouts, with
//! errors naming the server; the same client recovers by itself.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use mredis::{MRedis, PerServer};
use mredis_tests::{RedisServer, original_index as index, servers, urls};
use redis::Commands;

/// A key owned by server `i` of `n`.
fn key_on(i: usize, n: usize, prefix: &str) -> String {
    (0..10_000)
        .map(|j| format!("{prefix}{j}"))
        .find(|k| index(k.as_bytes(), n) == i)
        .unwrap()
}

fn quick(urls: Vec<String>) -> MRedis {
    MRedis::builder()
        .servers(urls)
        .connect_timeout(Duration::from_millis(300))
        .response_timeout(Some(Duration::from_millis(500)))
        .build()
        .unwrap()
}

#[test]
fn a_stopped_server_affects_only_its_keys_and_the_client_recovers() {
    let mut s = servers(3);
    let mr = quick(urls(&s));
    let keys: Vec<String> = (0..3).map(|i| key_on(i, 3, "k")).collect();
    for k in &keys {
        mr.set::<_, _, ()>(k, "before").unwrap();
    }
    s[1].stop();
    let dead = s[1].name();
    // Other servers keep working with the same client.
    mr.set::<_, _, ()>(&keys[0], "during").unwrap();
    assert_eq!(mr.get::<_, String>(&keys[2]).unwrap(), "before");
    // The stopped server's keys fail quickly, naming it.
    let started = Instant::now();
    let err = mr.get::<_, String>(&keys[1]).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains(&dead), "{err}");
    // Fan-out reports exactly that server and keeps the others' results.
    let fan = mr.dbsize::<i64>().unwrap_err();
    assert_eq!(
        fan.failed().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        vec![dead.as_str()]
    );
    assert_eq!(fan.succeeded().len(), 2);
    // It comes back empty: no error, no stale answer.
    s[1].restart();
    let mut recovered = None;
    for _ in 0..50 {
        match mr.get::<_, Option<String>>(&keys[1]) {
            Ok(v) => {
                recovered = Some(v);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    assert_eq!(recovered, Some(None), "the restarted server is empty and answers");
    mr.set::<_, _, ()>(&keys[1], "after").unwrap();
    assert_eq!(s[1].conn().get::<_, String>(&keys[1]).unwrap(), "after");
    let sizes: PerServer<i64> = mr.dbsize().unwrap();
    assert_eq!(sizes.values().sum::<i64>(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_client_recovers_without_being_rebuilt() {
    let mut s = servers(2);
    let mr = mredis::aio::MRedis::builder()
        .servers(urls(&s))
        .connect_timeout(Duration::from_millis(300))
        .response_timeout(Some(Duration::from_millis(500)))
        .build_async()
        .await
        .unwrap();
    let k0 = key_on(0, 2, "a");
    let k1 = key_on(1, 2, "a");
    mr.set::<_, _, ()>(&k0, 1).await.unwrap();
    mr.set::<_, _, ()>(&k1, 1).await.unwrap();
    s[1].stop();
    let err = mr.get::<_, i64>(&k1).await.unwrap_err();
    assert!(err.to_string().contains(&s[1].name()), "{err}");
    assert_eq!(mr.get::<_, i64>(&k0).await.unwrap(), 1);
    let fan = mr.ping::<String>().await.unwrap_err();
    assert_eq!(fan.failed().len(), 1);
    s[1].restart();
    let mut ok = false;
    for _ in 0..100 {
        if mr.set::<_, _, ()>(&k1, 2).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the async client reconnected by itself");
    assert_eq!(s[1].conn().get::<_, i64>(&k1).unwrap(), 2);
}

#[test]
fn a_server_that_accepts_but_never_answers_times_out() {
    // A listener that never reads: connections succeed, replies never come.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    let s = servers(1);
    let mr = quick(vec![s[0].url(), format!("redis://127.0.0.1:{port}/0")]);
    let key = key_on(1, 2, "h");
    let started = Instant::now();
    let err = mr.get::<_, Option<String>>(&key).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}:0")), "{err}");
    mr.set::<_, _, ()>(key_on(0, 2, "h"), 1).unwrap();
    drop(hole);
}

#[test]
fn server_errors_pass_through_clearly() {
    let s = vec![RedisServer::with_args(&[
        "--maxmemory-policy",
        "noeviction",
        "--busy-reply-threshold",
        "100",
    ])];
    let mr = MRedis::new(urls(&s)).unwrap();
    // WRONGTYPE keeps its code, as with redis-rs.
    mr.set::<_, _, ()>("str", "v").unwrap();
    let err = mr.lpush::<_, _, usize>("str", "x").unwrap_err();
    assert_eq!(err.code(), Some("WRONGTYPE"));
    // A memory limit 1 MB above what the server uses now (Redis and Valkey
    // start at different sizes).
    let mut admin = s[0].conn();
    let info: String = redis::cmd("INFO").arg("memory").query(&mut admin).unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + 1024 * 1024)
        .exec(&mut admin)
        .unwrap();
    // OOM: the write fails with the server's error, nothing is half-written.
    let big = vec![b'x'; 512 * 1024];
    let mut oom = None;
    for i in 0..20 {
        if let Err(e) = mr.set::<_, _, ()>(format!("big{i}"), &big[..]) {
            oom = Some(e);
            break;
        }
    }
    let oom = oom.expect("the server runs out of memory");
    assert_eq!(oom.code(), Some("OOM"), "{oom}");
    // BUSY: a long script blocks the server; other commands get BUSY.
    let blocker = std::thread::spawn({
        let url = s[0].url();
        move || {
            let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
            let _: redis::RedisResult<()> = redis::cmd("EVAL")
                .arg("local t = redis.call('TIME') while true do end")
                .arg(0)
                .query(&mut con);
        }
    });
    // Until the script has started (and run past the 100 ms threshold), GET
    // still answers; then it gets BUSY.
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        match mr.get::<_, Option<String>>("str") {
            Err(e) => break e,
            Ok(v) => assert_eq!(v.as_deref(), Some("v")),
        }
        assert!(Instant::now() < deadline, "the script never made the server busy");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(err.code(), Some("BUSY"), "{err}");
    let _: redis::RedisResult<()> = redis::cmd("SCRIPT").arg("KILL").query(&mut s[0].conn());
    blocker.join().unwrap();
    assert_eq!(mr.get::<_, String>("str").unwrap(), "v");
}

#[test]
fn a_server_loading_its_data_answers_loading_then_the_data() {
    let mut s = [RedisServer::with_args(&["--enable-debug-command", "yes"])];
    let mut con = s[0].conn();
    redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(3_000_000)
        .arg("pop")
        .exec(&mut con)
        .unwrap();
    redis::cmd("SET").arg("marker").arg("kept").exec(&mut con).unwrap();
    redis::cmd("SAVE").exec(&mut con).unwrap();
    let port = s[0].port();
    let dir = s[0].dir().to_path_buf();
    s[0].stop();
    // Start it by hand so nothing waits for the load to finish.
    let mut child = std::process::Command::new(mredis_tests::server_binary())
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mr = quick(vec![format!("redis://127.0.0.1:{port}/0")]);
    let mut saw_loading = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    let value = loop {
        match mr.get::<_, Option<String>>("marker") {
            Ok(v) => break v,
            Err(e) if e.code() == Some("LOADING") => saw_loading = true,
            Err(e) => assert!(e.to_string().contains(&format!("127.0.0.1:{port}:0")), "{e}"),
        }
        assert!(Instant::now() < deadline, "the server never finished loading");
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(saw_loading, "the server answered LOADING while loading 3M keys");
    assert_eq!(
        value.as_deref(),
        Some("kept"),
        "after loading, the data is there: no wrong answer before"
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

/// A server that stops answering (SIGSTOP) costs a whole call one response
/// timeout: a 50-command pipeline, a fleet pipeline and a fan-out each fail
/// after about one timeout, not one per command or per server.
#[test]
fn a_stopped_server_costs_one_deadline_per_call() {
    let s = servers(3);
    // Long enough that the two healthy servers answer within it even on a
    // loaded machine (their replies count only if they come in time: the
    // whole call has this one deadline).
    let timeout = Duration::from_millis(1000);
    let mr = MRedis::builder()
        .servers(urls(&s))
        .response_timeout(Some(timeout))
        .build()
        .unwrap();
    let k = key_on(0, 3, "d");
    let other = key_on(1, 3, "e");
    // Warm the pools so the connections exist before the server stops.
    for _ in 0..4 {
        let _: PerServer<i64> = mr.dbsize().unwrap();
        mr.set::<_, _, ()>(&k, 1).unwrap();
    }
    let pid = s[0].pid().unwrap();
    signal("STOP", pid);
    let mut pipe = mr.pipeline(&k).unwrap();
    for _ in 0..50 {
        pipe.incr(&k, 1);
    }
    let started = Instant::now();
    let err = pipe.query::<Vec<i64>>(&mr).unwrap_err();
    let key_pipeline = started.elapsed();

    let mut fleet = mr.pipeline_all();
    for i in 0..50 {
        fleet.get(if i % 2 == 0 { &k } else { &other });
    }
    let started = Instant::now();
    let fleet_err = fleet.query::<Vec<Option<i64>>>(&mr).unwrap_err();
    let fleet_pipeline = started.elapsed();

    let started = Instant::now();
    let fan_err = mr.dbsize::<i64>().unwrap_err();
    let fan_out = started.elapsed();
    signal("CONT", pid);

    let name = format!("127.0.0.1:{}:0", s[0].port());
    for (what, text) in [
        ("key pipeline", err.to_string()),
        ("fleet pipeline", fleet_err.to_string()),
        ("fan-out", fan_err.to_string()),
    ] {
        assert!(
            text.contains(&name) && (text.contains("no reply in time") || text.contains("could not connect within")),
            "{what}: {text}"
        );
    }
    // Generous bounds (the machine may be loaded), far below 50 timeouts.
    for (what, took) in [
        ("key pipeline", key_pipeline),
        ("fleet pipeline", fleet_pipeline),
        ("fan-out", fan_out),
    ] {
        assert!(took < timeout * 5, "{what} took {took:?} for a {timeout:?} timeout");
    }
    // The fan-out kept the other servers' answers.
    assert_eq!(fan_err.succeeded().len(), 2);
    // After SIGCONT the same client works (the stopped server's timed-out
    // connections were dropped, not reused out of step).
    assert!(mr.get::<_, i64>(&k).unwrap() >= 1);
    let _: PerServer<i64> = mr.dbsize().unwrap();
}
