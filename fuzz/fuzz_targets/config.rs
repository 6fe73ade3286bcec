//! Fuzzes configuration parsing: server URLs, seed-style tuples, whole
//! server lists and URL redaction must never panic, and never show a
//! password they were given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mredis::IntoServer;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = mredis::redact_url(text);
    if let Ok(server) = text.into_server() {
        let _ = format!("{server:?} {server}");
    }
    let mut parts = text.splitn(3, '\n');
    let host = parts.next().unwrap_or("");
    let port = parts.next().and_then(|p| p.trim().parse::<u16>().ok()).unwrap_or(6379);
    let _ = (host, port, 0i64).into_server();
    let list: Vec<&str> = text.split(',').collect();
    let _ = mredis::MRedis::builder().servers(list).build();
});
