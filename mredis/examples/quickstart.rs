//! The original MRedis README example, in Rust: 100 keys over two servers,
//! KEYS per server, every key read back.
//!
//! `cargo run --example quickstart` starts two local `redis-server`s on free
//! ports (and stops them at the end) unless `MREDIS_SERVERS` lists servers:
//! `MREDIS_SERVERS=redis://10.0.0.1:6379/0,redis://10.0.0.2:6379/0`. On
//! servers of yours it touches only keys under its own prefix
//! (`mredis-quickstart:<pid>:`) and deletes them at the end; it prints
//! server names (`host:port:db`), never the URLs' passwords.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mredis::{MRedis, PerServer};

/// A redis-server started for the demo, stopped on drop.
struct LocalServer {
    child: Child,
    port: u16,
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_local_server() -> Result<LocalServer, Box<dyn std::error::Error>> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("cannot start redis-server ({e}); install it (apt-get install redis-server) or set MREDIS_SERVERS")
        })?;
    let server = LocalServer { child, port };
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(200))
            && redis::cmd("PING").query::<String>(&mut con).is_ok()
        {
            return Ok(server);
        }
        if Instant::now() > deadline {
            return Err(format!("redis-server on port {port} did not answer within 10 s").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut _local = Vec::new();
    let servers: Vec<String> = match std::env::var("MREDIS_SERVERS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').map(|s| s.trim().to_string()).collect(),
        _ => {
            for _ in 0..2 {
                _local.push(start_local_server()?);
            }
            _local
                .iter()
                .map(|s| format!("redis://127.0.0.1:{}/0", s.port))
                .collect()
        }
    };
    let mr = MRedis::new(&servers)?;
    let names: Vec<String> = mr.servers().iter().map(|s| s.name().to_string()).collect();
    println!("servers: {}", names.join(", "));
    let prefix = format!("mredis-quickstart:{}:", std::process::id());

    // Build a set of keys for operations.
    let mut keys = std::collections::BTreeSet::new();
    while keys.len() < 100 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
        keys.insert(format!("{prefix}key:{now:.8}:{}", keys.len()));
    }
    let outcome = demo(&mr, &prefix, &keys);
    // Remove what the demo wrote, whatever happened.
    let written: Vec<&String> = keys.iter().collect();
    let removed: usize = mr.del(&written)?;
    println!("removed the demo's {removed} keys");
    outcome
}

fn demo(
    mr: &MRedis,
    prefix: &str,
    keys: &std::collections::BTreeSet<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    // Set these keys across the servers.
    for key in keys {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
        mr.set::<_, _, ()>(key, now)?;
    }

    // Get the keys from all servers, by server.
    let fetched: PerServer<Vec<String>> = mr.keys(format!("{prefix}key:*"))?;

    // Read every key back from the server that owns it.
    let mut results = Vec::new();
    for (server, server_keys) in &fetched {
        println!("{server}: {} keys", server_keys.len());
        for key in server_keys {
            let value: String = mr.get(key)?;
            results.push(format!("{key}->{value}"));
        }
    }
    println!("{} keys fetched", results.len());
    if results.len() != keys.len() {
        return Err(format!("expected {} keys, fetched {}", keys.len(), results.len()).into());
    }
    Ok(())
}
