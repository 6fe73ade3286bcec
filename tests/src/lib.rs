//! Test harness: real `redis-server` (and `nutcracker`) processes on free
//! loopback ports, each in its own temporary directory, stopped on drop.
//! Tests use [`RedisServer::conn`] to check what a server really holds,
//! without going through mredis.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot find a free loopback port")
}

fn scratch_dir(kind: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("mredis-{kind}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cannot create a temporary directory");
    dir
}

/// Whether `redis-server` can be started.
pub fn redis_server_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A `redis-server` process on a free loopback port; killed on drop.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server with default test settings (no persistence).
    pub fn new() -> RedisServer {
        RedisServer::with_args(&[])
    }

    /// Starts a server with extra command-line flags (e.g. `--requirepass x`).
    pub fn with_args(extra: &[&str]) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let dir = scratch_dir("redis");
        let mut last_error = String::new();
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                dir: dir.clone(),
                extra: extra.clone(),
                child: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        if !redis_server_available() {
            panic!("redis-server not found on PATH: install it (apt-get install redis-server)");
        }
        let log = self.dir.join(format!("redis-{}.log", self.port));
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--daemonize", "no", "--dir"])
        .arg(&self.dir)
        .arg("--logfile")
        .arg(&log)
        .args(&self.extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| format!("spawn failed: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("port {}: exited with {status}: {text}", self.port));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Err(format!("port {}: no PING reply within 10 s: {text}", self.port))
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        match redis::cmd("PING").query::<String>(&mut con) {
            Ok(_) => true,
            // A password-protected server answers NOAUTH: it is up.
            Err(e) => e.code() == Some("NOAUTH"),
        }
    }

    /// The server's working directory (where `SAVE` writes `dump.rdb`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        self.url_db(0)
    }

    /// `redis://127.0.0.1:PORT/DB`.
    pub fn url_db(&self, db: i64) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// The mredis name of this server with db 0: `127.0.0.1:PORT:0`.
    pub fn name(&self) -> String {
        format!("127.0.0.1:{}:0", self.port)
    }

    /// A redis-rs client for this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid URL")
    }

    /// A direct connection, to check what the server really holds.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("cannot connect to redis-server on port {}: {e}", self.port))
    }

    /// All keys of db 0, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut self.conn()).expect("KEYS");
        keys.sort();
        keys
    }

    /// DBSIZE of db 0.
    pub fn dbsize(&self) -> i64 {
        redis::cmd("DBSIZE").query(&mut self.conn()).expect("DBSIZE")
    }

    /// Kills the server (the port stays reserved for `restart`).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("could not restart redis-server: {e}");
        }
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Default for RedisServer {
    fn default() -> Self {
        RedisServer::new()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `n` servers.
pub fn servers(n: usize) -> Vec<RedisServer> {
    (0..n).map(|_| RedisServer::new()).collect()
}

/// A `nutcracker` (twemproxy 0.5.0) process in front of real servers.
pub struct Nutcracker {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Nutcracker {
    /// Starts nutcracker with one pool `mredis_test` and the given settings;
    /// `servers` are twemproxy lines such as `127.0.0.1:7001:1` or
    /// `127.0.0.1:7001:1 name`.
    pub fn start(hash: &str, distribution: &str, hash_tag: Option<&str>, servers: &[String]) -> Nutcracker {
        let dir = scratch_dir("nutcracker");
        let port = free_port();
        let stats = free_port();
        let mut yaml = format!(
            "mredis_test:\n  listen: 127.0.0.1:{port}\n  hash: {hash}\n  distribution: {distribution}\n  redis: true\n  timeout: 2000\n  auto_eject_hosts: false\n"
        );
        if let Some(tag) = hash_tag {
            yaml.push_str(&format!("  hash_tag: \"{tag}\"\n"));
        }
        yaml.push_str("  servers:\n");
        for s in servers {
            yaml.push_str(&format!("   - {s}\n"));
        }
        let conf = dir.join("nutcracker.yml");
        std::fs::write(&conf, yaml).expect("write nutcracker config");
        let child = Command::new("nutcracker")
            .arg("-c")
            .arg(&conf)
            .args(["-s", &stats.to_string(), "-o"])
            .arg(dir.join("nutcracker.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nutcracker ({e}): apt-get install nutcracker"));
        let nc = Nutcracker { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return nc;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = std::fs::read_to_string(nc.dir.join("nutcracker.log")).unwrap_or_default();
        panic!("nutcracker did not listen on {port} within 10 s: {log}");
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection through the proxy. twemproxy closes connections that
    /// send commands it does not know, so redis-rs's `CLIENT SETINFO` is off.
    pub fn conn(&self) -> redis::Connection {
        use redis::IntoConnectionInfo;
        let info = self.url().into_connection_info().expect("valid URL");
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let info = info.set_redis_settings(settings);
        redis::Client::open(info)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("connect to nutcracker")
    }
}

impl Drop for Nutcracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
