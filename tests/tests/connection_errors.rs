//! What a caller sees when a server cannot be reached or does not answer:
//! the error names the server and says what happened, at once for a
//! refused connection, after the response timeout for a silent one.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use mredis::MRedis;

#[test]
fn a_closed_port_fails_at_once_saying_connection_refused() {
    let closed = mredis_tests::closed_port();
    let port = closed.port();
    let name = format!("127.0.0.1:{port}:0");
    // The default connect timeout (2 s) must not be waited for.
    let mr = MRedis::new([format!("redis://127.0.0.1:{port}/0")]).unwrap();
    let started = Instant::now();
    let e = mr.get::<_, Option<String>>("k").unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}: {e}");
    let text = e.to_string();
    assert!(text.contains("connection refused"), "{text}");
    assert!(text.contains(&name), "{text}");
    assert!(e.is_connection_refusal(), "{e:?}");
    // Fan-out too.
    let started = Instant::now();
    let e = mr.dbsize::<i64>().unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(
        e.to_string().contains("connection refused") && e.to_string().contains(&name),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_fails_at_once_async() {
    let closed = mredis_tests::closed_port();
    let port = closed.port();
    let name = format!("127.0.0.1:{port}:0");
    let mr = mredis::aio::MRedis::connect([format!("redis://127.0.0.1:{port}/0")])
        .await
        .unwrap();
    let started = Instant::now();
    let e = mr.get::<_, Option<String>>("k").await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}: {e}");
    let text = e.to_string();
    assert!(text.to_lowercase().contains("connection refused"), "{text}");
    assert!(text.contains(&name), "{text}");
}

/// A listener that accepts connections (the kernel does, from its backlog)
/// and never answers.
fn silent_listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, format!("redis://127.0.0.1:{port}/0"))
}

#[test]
fn a_silent_server_times_out_saying_nothing_was_sent() {
    let (listener, url) = silent_listener();
    let name = format!("127.0.0.1:{}:0", listener.local_addr().unwrap().port());
    let mr = MRedis::builder()
        .servers([url.as_str()])
        .response_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let started = Instant::now();
    let e = mr.set::<_, _, ()>("k", 1).unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "gave up after {elapsed:?}: {e}");
    // A new connection's handshake is bounded by the connect timeout (2 s by
    // default), not the response timeout, with one deadline for the whole
    // setup (redis-rs alone waits it once per setup command: about 4 s here).
    assert!(elapsed < Duration::from_millis(3500), "took {elapsed:?}: {e}");
    // The server never answered the connection's handshake: the command
    // itself was never sent, and the error says so, with the time waited.
    let text = e.to_string();
    let waited = text
        .strip_prefix(&format!("mredis: {name}: could not connect within "))
        .and_then(|t| t.strip_suffix(" s; nothing was sent"))
        .unwrap_or_else(|| panic!("{text}"));
    let waited: f64 = waited.parse().unwrap_or_else(|_| panic!("{text}"));
    assert!(
        (1.99..=elapsed.as_secs_f64() + 0.01).contains(&waited),
        "{text} after {elapsed:?}"
    );
    assert!(e.is_timeout(), "{e:?}");
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out_async() {
    let (listener, url) = silent_listener();
    let name = format!("127.0.0.1:{}:0", listener.local_addr().unwrap().port());
    let mr = MRedis::builder()
        .servers([url.as_str()])
        .response_timeout(Some(Duration::from_millis(300)))
        .connect_timeout(Duration::from_millis(500))
        .reconnect_retries(0)
        .build_async()
        .await
        .unwrap();
    let started = Instant::now();
    let e = mr.set::<_, _, ()>("k", 1).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}: {e}");
    let text = e.to_string();
    assert!(text.contains("no reply in time"), "{text}");
    assert!(text.contains("may have run"), "{text}");
    assert!(text.contains(&name), "{text}");
    drop(listener);
}

/// A script that keeps the server busy for 700 ms (a reply slower than a
/// 300 ms response timeout). A blocking command is not that: it waits its
/// block time plus the response timeout (tests/tests/connection_faults.rs).
fn slow_script() -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(
        "local s = redis.call('TIME') local t0 = s[1] * 1000000 + s[2] \
         repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - t0 > 700000 return 1",
    )
    .arg(0);
    c
}

/// Polls until a GET of `warm` answers 1 (the server is free again).
fn usable_again(get: impl Fn() -> redis::RedisResult<i64>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while get().ok() != Some(1) {
        assert!(Instant::now() < deadline, "the server stayed unusable");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A live connection whose reply does not come in time: the timeout is the
/// response timeout.
#[test]
fn a_slow_reply_times_out_after_the_response_timeout() {
    let s = mredis_tests::RedisServer::new();
    let mr = MRedis::builder()
        .servers([s.url()])
        .response_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    mr.set::<_, _, ()>("warm", 1).unwrap();
    let started = Instant::now();
    let e = mr.query_routed::<_, i64>("k", &slow_script()).unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(650), "took {elapsed:?}: {e}");
    let text = e.to_string();
    assert!(
        text.contains("no reply in time") && text.contains("may have run"),
        "{text}"
    );
    assert!(text.contains(&s.name()), "{text}");
    assert!(e.is_timeout(), "{e:?}");
    // The server is usable again once the script ends.
    usable_again(|| mr.get("warm"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reply_times_out_async() {
    let s = mredis_tests::RedisServer::new();
    let mr = MRedis::builder()
        .servers([s.url()])
        .response_timeout(Some(Duration::from_millis(300)))
        .build_async()
        .await
        .unwrap();
    mr.set::<_, _, ()>("warm", 1).await.unwrap();
    let started = Instant::now();
    let e = mr.query_routed::<_, i64>("k", &slow_script()).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(650), "took {elapsed:?}: {e}");
    let text = e.to_string();
    assert!(
        text.contains("no reply in time") && text.contains("may have run"),
        "{text}"
    );
    assert!(text.contains(&s.name()), "{text}");
}
