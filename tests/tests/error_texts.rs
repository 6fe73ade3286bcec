//! The whole text of the errors a caller sees, against real servers: each
//! thing said once, in words, naming the server; `mredis::error_text` gives
//! it on one line without redis-rs's enum names, while `Display` keeps
//! redis-rs's frame (`mredis - Kind: ...`) around the same words, and
//! `kind()`, `code()`, `is_timeout()`, `is_connection_refusal()` answer as
//! before.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use mredis::{MRedis, error_text};
use mredis_tests::{RedisServer, servers};
use redis::ErrorKind;

/// A key of `mr` that lives on the server named `name`.
fn key_on(mr: &MRedis, name: &str) -> String {
    (0..)
        .map(|i| format!("k{i}"))
        .find(|k| mr.server_for(k).unwrap() == name)
        .unwrap()
}

/// No Rust enum name or nested repeat in a one-line text.
fn assert_words(text: &str) {
    for word in [
        "AuthenticationFailed",
        "CrossSlot",
        "TryAgain",
        "IoError",
        "- Io",
        "Server(",
        "os error",
        "mredis: mredis",
    ] {
        assert!(!text.contains(word), "`{word}` in: {text}");
    }
    assert!(!text.contains('\n'), "{text}");
}

#[test]
fn a_wrong_password_says_so_once_for_one_command_and_a_fan_out() {
    let s = servers(2);
    let guarded = RedisServer::with_args(&["--requirepass", "right-one"]);
    let mr = MRedis::new([s[0].url(), format!("redis://:wrong-one@127.0.0.1:{}/0", guarded.port())]).unwrap();
    let (ok, bad) = (s[0].name(), guarded.name());
    let said = format!(
        "{bad}: authentication failed as user `default`: wrong password, or the user does not exist or is disabled"
    );
    let e = mr.get::<_, Option<String>>(key_on(&mr, &bad)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
    assert_eq!(error_text(&e), format!("mredis: {said}"));
    assert_eq!(e.to_string(), format!("mredis - AuthenticationFailed: {said}"));
    assert_words(&error_text(&e));
    assert!(!e.to_string().contains("wrong-one"));

    let e = redis::RedisError::from(mr.dbsize::<u64>().unwrap_err());
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
    assert_eq!(
        error_text(&e),
        format!("mredis: DBSIZE failed on 1 of 2 servers: {said}. Succeeded on: {ok} (1)")
    );
    assert_words(&error_text(&e));
    assert!(!e.to_string().contains("wrong-one"));
}

#[test]
fn keys_on_two_servers_say_where_each_is() {
    let s = servers(2);
    let mr = MRedis::new([s[0].url(), s[1].url()]).unwrap();
    let (a, b) = (key_on(&mr, &s[0].name()), key_on(&mr, &s[1].name()));
    let e = mr.rename::<_, _, ()>(&a, &b).unwrap_err();
    assert_eq!(e.code(), Some("CROSSSLOT"));
    let said = format!(
        "RENAME needs all its keys on one server, but `{a}` is on {} and `{b}` is on {}; nothing was sent. \
         Put related keys together with hash tags ({{user:1}}:a, {{user:1}}:b) and enable them with \
         Builder::hash_tags(true)",
        s[0].name(),
        s[1].name()
    );
    assert_eq!(error_text(&e), format!("mredis: {said}"));
    assert_eq!(e.to_string(), format!("mredis - Server(CrossSlot): {said}"));
    assert_words(&error_text(&e));
}

#[test]
fn a_refused_connection_and_a_partial_fan_out() {
    let s = RedisServer::new();
    let closed = mredis_tests::closed_port();
    let port = closed.port();
    let closed = format!("127.0.0.1:{port}:0");
    let mr = MRedis::new([s.url(), format!("redis://127.0.0.1:{port}/0")]).unwrap();
    let e = mr.get::<_, Option<String>>(key_on(&mr, &closed)).unwrap_err();
    assert!(e.is_connection_refusal(), "{e}");
    assert!(e.is_io_error(), "{e}");
    let said = format!("{closed}: connection refused; nothing was sent");
    assert_eq!(e.to_string(), format!("mredis: {said}"));
    assert_eq!(error_text(&e), format!("mredis: {said}"));

    let e = redis::RedisError::from(mr.dbsize::<u64>().unwrap_err());
    assert!(e.is_io_error(), "{e}");
    assert_eq!(
        error_text(&e),
        format!(
            "mredis: DBSIZE failed on 1 of 2 servers: {said}. Succeeded on: {} (1)",
            s.name()
        )
    );
    assert_words(&error_text(&e));
}

/// Stops a server with SIGSTOP; SIGCONT on drop so it can be shut down.
struct Stopped(u32);

impl Stopped {
    fn new(s: &RedisServer) -> Stopped {
        let pid = s.pid().unwrap();
        assert!(
            Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

/// `text` is `prefix`, a duration (`N ms` or `N.NN s`), `suffix`; the
/// duration in seconds.
fn waited(text: &str, prefix: &str, suffix: &str) -> f64 {
    let middle = text
        .strip_prefix(prefix)
        .and_then(|t| t.strip_suffix(suffix))
        .unwrap_or_else(|| panic!("not `{prefix}<duration>{suffix}`: {text}"));
    if let Some(ms) = middle.strip_suffix(" ms") {
        ms.parse::<f64>().unwrap() / 1000.0
    } else if let Some(s) = middle.strip_suffix(" s") {
        s.parse::<f64>().unwrap()
    } else {
        panic!("no duration in {text}")
    }
}

#[test]
fn a_stopped_server_times_out_with_one_deadline_for_the_whole_setup() {
    let s = RedisServer::new();
    // Database 3: the setup is SELECT and two CLIENT SETINFO, three replies
    // that redis-rs would each wait the connect timeout for.
    let mr = MRedis::builder()
        .servers([s.url_db(3)])
        .connect_timeout(Duration::from_secs(1))
        .response_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let name = format!("127.0.0.1:{}:3", s.port());
    let _stopped = Stopped::new(&s);
    let started = Instant::now();
    let e = mr.set::<_, _, ()>("k", 1).unwrap_err();
    let elapsed = started.elapsed();
    assert!(e.is_timeout(), "{e}");
    let text = e.to_string();
    assert_eq!(error_text(&e), text);
    let secs = waited(
        &text,
        &format!("mredis: {name}: could not connect within "),
        "; nothing was sent",
    );
    assert!(secs >= 0.99, "{text}");
    // One deadline: about 1 s, not 3 (room for a loaded machine).
    assert!(elapsed < Duration::from_millis(2500), "took {elapsed:?}: {text}");
    assert!(secs <= elapsed.as_secs_f64() + 0.01, "{text} after {elapsed:?}");
}

#[test]
fn a_server_stopped_under_a_live_connection_gives_no_reply_in_time() {
    let s = RedisServer::new();
    let mr = MRedis::builder()
        .servers([s.url()])
        .response_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    mr.set::<_, _, ()>("k", 1).unwrap();
    let _stopped = Stopped::new(&s);
    let e = mr.get::<_, i64>("k").unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "mredis: {}: no reply in time (waited 300 ms); the command may have run there",
            s.name()
        )
    );
    assert_eq!(error_text(&e), e.to_string());
}

#[test]
fn a_server_that_is_not_redis_is_named() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let http = std::thread::spawn(move || {
        // Answers every connection like an HTTP server would.
        for stream in listener.incoming().take(1) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 512];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let mr = MRedis::new([format!("redis://127.0.0.1:{port}/0")]).unwrap();
    let e = mr.get::<_, Option<String>>("k").unwrap_err();
    let said = format!(
        "127.0.0.1:{port}:0: the server did not answer like a Redis server (its reply is not Redis's protocol); \
         is something else listening there?"
    );
    assert_eq!(e.kind(), ErrorKind::Parse);
    assert_eq!(error_text(&e), format!("mredis: {said}"));
    assert_eq!(e.to_string(), format!("mredis - Parse: {said}"));
    http.join().unwrap();
}

#[test]
fn a_servers_own_reply_is_its_code_and_text() {
    let s = RedisServer::new();
    let mr = MRedis::new([s.url()]).unwrap();
    mr.set::<_, _, ()>("k", "v").unwrap();
    let e = mr.lpush::<_, _, ()>("k", 1).unwrap_err();
    assert_eq!(e.code(), Some("WRONGTYPE"));
    assert_eq!(
        error_text(&e),
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
}
