//! Test harness: real `redis-server` (and `nutcracker`) processes on free
//! loopback ports, each in its own temporary directory, stopped on drop.
//!
//! Tests use [`RedisServer::conn`] to check what a server really holds,
//! without going through mredis, and [`Nutcracker`] to compare placement
//! with twemproxy's.
//!
//! A server counts as started once it answers `PING` on its port and is
//! its own process there: the process id its `INFO` gives, or, for
//! nutcracker and servers that need a password (`NOAUTH`), a listening
//! socket of the process (checked through `/proc` where there is one). A
//! start that fails because the port got taken in the meantime is retried
//! on another port; any other failure panics with the port and the server's
//! output.

#![warn(missing_docs)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(10);
/// How many fresh ports a start tries when the port keeps getting taken.
const PORT_ATTEMPTS: usize = 8;
/// What servers print when their port is taken.
const PORT_TAKEN: &str = "Address already in use";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free loopback port: {e}"))
}

/// A loopback port nothing listens on, kept so while this lives: a socket
/// is bound to it and never listens, so connecting is refused at once, and
/// no server started meanwhile (by this test or one beside it) can be
/// given the port. (A port bound and released at once can be: the tests
/// that start servers pick free ports the same way.)
pub struct ClosedPort {
    _socket: socket2::Socket,
    port: u16,
}

impl ClosedPort {
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// See [`ClosedPort`].
pub fn closed_port() -> ClosedPort {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .unwrap_or_else(|e| panic!("cannot open a socket: {e}"));
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("an address");
    socket
        .bind(&any.into())
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
    let port = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .unwrap_or_else(|| panic!("a bound socket without a port"));
    ClosedPort { _socket: socket, port }
}

/// A new, empty directory under the system temp dir, unique to this process.
fn scratch_dir(kind: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mredis-{kind}-{}-{n}", std::process::id()));
    // A leftover from an earlier process with the same pid.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// A new, empty scratch directory (under the system temp dir, unique to this
/// process and call), removed with everything in it when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `mredis-<kind>-<pid>-<n>`.
    pub fn new(kind: &str) -> TempDir {
        TempDir(scratch_dir(kind))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Finds an executable on `PATH`, then in the usual system directories
/// (`nutcracker` lives in `/usr/sbin`, which is not always on `PATH`).
fn find_binary(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let fallback = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    std::env::split_paths(&path)
        .chain(fallback.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The server the tests start: `redis-server`, or the binary named by
/// `MREDIS_TEST_SERVER` (e.g. a `valkey-server`), so the same suite runs
/// against Redis and Valkey.
fn redis_server_binary() -> Option<&'static Path> {
    static BINARY: OnceLock<Option<PathBuf>> = OnceLock::new();
    BINARY
        .get_or_init(|| match std::env::var_os("MREDIS_TEST_SERVER") {
            Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
            _ => find_binary("redis-server"),
        })
        .as_deref()
}

/// The server binary the tests start (see `MREDIS_TEST_SERVER`).
pub fn server_binary() -> PathBuf {
    redis_server_binary()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

fn nutcracker_binary() -> Option<&'static Path> {
    static BINARY: OnceLock<Option<PathBuf>> = OnceLock::new();
    BINARY.get_or_init(|| find_binary("nutcracker")).as_deref()
}

/// Whether `redis-server` is installed (on `PATH` or in a system directory).
pub fn redis_server_available() -> bool {
    redis_server_binary().is_some()
}

/// Whether `nutcracker` (twemproxy) is installed (on `PATH` or in a system
/// directory such as `/usr/sbin`).
pub fn nutcracker_available() -> bool {
    nutcracker_binary().is_some()
}

/// Who answers on `127.0.0.1:port`.
enum Answer {
    /// Nobody yet (refused, `LOADING`, no reply).
    Nobody,
    /// A server with this process id (its `INFO server`).
    Pid(u32),
    /// A server that did not say its process id: one that wants a password
    /// (`NOAUTH`), or one that was not asked.
    Up,
}

/// Reads one RESP line (without its `\r\n`) from `stream`.
fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end + 2);
            return Some(line);
        }
        if buf.len() > 1 << 16 {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends `PING` (and, with `ask_pid`, `INFO server`) to `127.0.0.1:port`.
/// `PONG`, or `NOAUTH` from one that wants a password, means up; `LOADING`
/// and the like mean "not yet".
fn who_answers(port: u16, ask_pid: bool) -> Answer {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(250)) else {
        return Answer::Nobody;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
    let mut request = b"*1\r\n$4\r\nPING\r\n".to_vec();
    if ask_pid {
        request.extend_from_slice(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n");
    }
    if stream.write_all(&request).is_err() {
        return Answer::Nobody;
    }
    let mut buf = Vec::new();
    match read_line(&mut stream, &mut buf) {
        Some(l) if l == "+PONG" && ask_pid => {}
        Some(l) if l == "+PONG" || l.starts_with("-NOAUTH") => return Answer::Up,
        _ => return Answer::Nobody,
    }
    // The INFO reply: `$LEN`, then lines up to `process_id:PID`.
    match read_line(&mut stream, &mut buf) {
        Some(l) if l.starts_with('$') => {}
        _ => return Answer::Nobody,
    }
    while let Some(line) = read_line(&mut stream, &mut buf) {
        if let Some(pid) = line.strip_prefix("process_id:") {
            return pid.trim().parse().map(Answer::Pid).unwrap_or(Answer::Nobody);
        }
    }
    Answer::Nobody
}

/// Whether process `pid` has a TCP socket listening on `port`; `None` where
/// `/proc` cannot tell. This tells our server from another process that
/// took the port between [`free_port`] and the server's own bind.
fn listens_on(pid: u32, port: u16) -> Option<bool> {
    let mut inodes = Vec::new();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if !readable {
        return None;
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .map(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
            .unwrap_or(false)
    }))
}

/// stdout and stderr of a child, both appended to `log`.
fn output_to(log: &Path) -> (Stdio, Stdio) {
    let file = File::create(log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
    let copy = file
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot share {}: {e}", log.display()));
    (Stdio::from(file), Stdio::from(copy))
}

fn read_log(log: &Path) -> String {
    match std::fs::read_to_string(log) {
        Ok(text) if text.trim().is_empty() => "(empty)".to_string(),
        Ok(text) => text,
        Err(e) => format!("(cannot read {}: {e})", log.display()),
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Why a start failed.
enum StartError {
    /// Another process took the port: try another one.
    PortTaken(String),
    /// Anything else: give up.
    Fatal(String),
}

/// All of `logs`, each under its file name.
fn read_logs(logs: &[&Path]) -> String {
    let mut text = String::new();
    for log in logs {
        let name = log.file_name().unwrap_or_default().to_string_lossy();
        text.push_str(&format!("--- {name} ---\n{}\n", read_log(log).trim_end()));
    }
    text
}

/// Waits until `child` listens on `port` and answers `PING` there.
/// On failure the child is killed and the error carries `logs`.
///
/// Servers that say their process id (`tells_pid`: redis-server, Sentinel)
/// are ours when it is the child's; others (nutcracker, a server that wants
/// a password) when the child has a socket listening on the port (`/proc`),
/// which tells them from another process that took the port between
/// [`free_port`] and the child's own bind.
fn wait_ready(what: &str, tells_pid: bool, child: &mut Child, port: u16, logs: &[&Path]) -> Result<(), StartError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let text = read_logs(logs);
            let message = format!("{what} on 127.0.0.1:{port} exited with {status}; its output:\n{text}");
            return Err(if text.contains(PORT_TAKEN) {
                StartError::PortTaken(message)
            } else {
                StartError::Fatal(message)
            });
        }
        let ours = match who_answers(port, tells_pid) {
            Answer::Nobody => false,
            Answer::Pid(pid) => pid == child.id(),
            Answer::Up => listens_on(child.id(), port) != Some(false),
        };
        if ours {
            // The process could have died right after someone else answered.
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(());
            }
            continue;
        }
        if Instant::now() >= deadline {
            kill(child);
            return Err(StartError::Fatal(format!(
                "{what} on 127.0.0.1:{port} did not answer PING within {} s; its output:\n{}",
                START_TIMEOUT.as_secs(),
                read_logs(logs)
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// A `redis-server` process on a free loopback port, in its own temporary
/// directory, with no persistence. Killed, and its directory removed, on drop.
///
/// ```no_run
/// let s = mredis_tests::RedisServer::new();
/// redis::cmd("SET").arg("k").arg(1).exec(&mut s.conn()).unwrap();
/// assert_eq!(s.keys(), ["k"]);
/// ```
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Mutex<Option<Child>>,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("dir", &self.dir)
            .field("extra", &self.extra)
            .finish_non_exhaustive()
    }
}

impl RedisServer {
    /// Starts a server with the default test settings: `--bind 127.0.0.1
    /// --save "" --appendonly no --daemonize no --dir <own temp dir>`.
    ///
    /// Panics if `redis-server` is not installed or does not come up.
    pub fn new() -> RedisServer {
        RedisServer::with_args(&[])
    }

    /// Starts a server with extra command-line flags after the default ones
    /// (e.g. `--requirepass x`, `--maxmemory 1mb`, `--tls-port N ...`).
    /// They must not change `--port`, `--bind` or `--dir`.
    pub fn with_args(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: 0,
            dir: scratch_dir("redis"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: Mutex::new(None),
        };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(StartError::PortTaken(message)) => last = message,
                Err(StartError::Fatal(message)) => panic!("could not start redis-server: {message}"),
            }
        }
        panic!("could not start redis-server: {PORT_ATTEMPTS} ports were taken; last: {last}");
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Starts the process on `self.port` and waits until it answers.
    fn spawn(&self) -> Result<(), StartError> {
        let Some(binary) = redis_server_binary() else {
            panic!("redis-server not found on PATH: install it (apt-get install redis-server)");
        };
        let log = self.log_path();
        let (stdout, stderr) = output_to(&log);
        let mut child = Command::new(binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| StartError::Fatal(format!("cannot run {}: {e}", binary.display())))?;
        wait_ready("redis-server", true, &mut child, self.port, &[&log])?;
        *self.child() = Some(child);
        Ok(())
    }

    /// The server's working directory (where `SAVE` writes `dump.rdb`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the server printed (its log) since it was last started.
    pub fn log(&self) -> String {
        read_log(&self.log_path())
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

    /// A redis-rs client for db 0 of this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid redis:// URL")
    }

    /// A direct connection to db 0, to check what the server really holds.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("cannot connect to redis-server on {}: {e}", self.addr()))
    }

    /// All keys of db 0 (`KEYS *`), sorted; bytes that are not UTF-8 show
    /// as U+FFFD.
    pub fn keys(&self) -> Vec<String> {
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut self.conn())
            .unwrap_or_else(|e| panic!("KEYS * on {}: {e}", self.addr()));
        let mut keys: Vec<String> = keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
        keys.sort();
        keys
    }

    /// The names of the client connections (`CLIENT LIST`), this one's
    /// aside.
    pub fn client_names(&self) -> Vec<String> {
        let mut con = self.conn();
        let me: u64 = redis::cmd("CLIENT").arg("ID").query(&mut con).unwrap();
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut con)
            .unwrap_or_else(|e| panic!("CLIENT LIST on {}: {e}", self.addr()));
        list.lines()
            .filter(|l| !l.starts_with(&format!("id={me} ")))
            .map(|l| {
                l.split(' ')
                    .find_map(|kv| kv.strip_prefix("name="))
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    /// `DBSIZE` of db 0.
    pub fn dbsize(&self) -> i64 {
        redis::cmd("DBSIZE")
            .query(&mut self.conn())
            .unwrap_or_else(|e| panic!("DBSIZE on {}: {e}", self.addr()))
    }

    /// Kills the server (SIGKILL) and waits for it to exit. The port and
    /// the directory are kept, for [`RedisServer::restart`]. Does nothing
    /// if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child().take() {
            kill(&mut child);
        }
    }

    /// Starts the server again on the same port, empty: whatever a `SAVE`
    /// left in its directory is removed first. Kills it first if it runs.
    ///
    /// Panics if it does not come up (e.g. another process took the port
    /// and kept it for 5 s).
    pub fn restart(&mut self) {
        self.stop();
        self.clear_dir();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(StartError::PortTaken(message)) if Instant::now() >= deadline => {
                    panic!("could not restart redis-server: {message}")
                }
                Err(StartError::PortTaken(_)) => std::thread::sleep(Duration::from_millis(50)),
                Err(StartError::Fatal(message)) => panic!("could not restart redis-server: {message}"),
            }
        }
    }

    /// Removes everything in the directory (dump, AOF), so a start is empty.
    fn clear_dir(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
    }

    /// Whether the process is running (started and not stopped, nor dead).
    pub fn is_running(&self) -> bool {
        matches!(self.child().as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The process id while it is running.
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(|c| c.id())
    }

    /// Freezes the process (SIGSTOP) and waits until the kernel reports it
    /// stopped: it keeps its port and connections but answers nothing, as
    /// a hung server would. [`RedisServer::sigcont`] resumes it; a stopped
    /// server is still killed by [`RedisServer::stop`] and on drop.
    ///
    /// Panics if it is not running. (For a crash, [`RedisServer::stop`]
    /// already sends SIGKILL.)
    pub fn sigstop(&self) {
        self.signal("STOP", true);
    }

    /// Resumes a process frozen by [`RedisServer::sigstop`] (SIGCONT) and
    /// waits until the kernel reports it running again.
    ///
    /// Panics if it is not running.
    pub fn sigcont(&self) {
        self.signal("CONT", false);
    }

    /// Sends `SIG<name>` with `kill`, then waits until `/proc` shows the
    /// process stopped (or no longer stopped), where `/proc` can tell.
    fn signal(&self, name: &str, stopped: bool) {
        let Some(pid) = self.pid() else {
            panic!("SIG{name}: redis-server on {} is not running", self.addr());
        };
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill -{name} {pid}: {e}"));
        assert!(
            status.success(),
            "kill -{name} {pid} (redis-server on {}): {status}",
            self.addr()
        );
        wait_until(
            &format!(
                "redis-server on {} (pid {pid}) to be {}",
                self.addr(),
                if stopped { "stopped" } else { "resumed" }
            ),
            START_TIMEOUT,
            || process_stopped(pid).is_none_or(|s| s == stopped),
        );
    }
}

/// Whether process `pid` is stopped (state `T`, by a signal); `None` where
/// `/proc` cannot tell.
fn process_stopped(pid: u32) -> Option<bool> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) STATE ...`: comm may hold spaces and parentheses.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    Some(state == "T")
}

impl Default for RedisServer {
    /// Same as [`RedisServer::new`].
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

/// Starts `n` servers ([`RedisServer::new`]) in parallel, in that order.
/// If one fails, the others are stopped and the first failure's panic goes on.
pub fn servers(n: usize) -> Vec<RedisServer> {
    if n <= 1 {
        return (0..n).map(|_| RedisServer::new()).collect();
    }
    let started: Vec<std::thread::Result<RedisServer>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n).map(|_| scope.spawn(RedisServer::new)).collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut ok = Vec::with_capacity(n);
    let mut failure = None;
    for result in started {
        match result {
            Ok(server) => ok.push(server),
            Err(panic) => failure = failure.or(Some(panic)),
        }
    }
    if let Some(panic) = failure {
        drop(ok);
        std::panic::resume_unwind(panic);
    }
    ok
}

/// A `nutcracker` (twemproxy) process with one pool, `mredis_test`, in front
/// of real servers; killed, and its directory removed, on drop.
pub struct Nutcracker {
    port: u16,
    stats_port: u16,
    dir: PathBuf,
    child: Child,
}

impl std::fmt::Debug for Nutcracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nutcracker")
            .field("port", &self.port)
            .field("stats_port", &self.stats_port)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Nutcracker {
    /// Starts nutcracker with one pool `mredis_test` listening on a free
    /// loopback port, with `redis: true`, `timeout: 2000`, the given `hash`
    /// (e.g. `fnv1a_64`), `distribution` (`ketama`, `modula` or `random`),
    /// optional two-character `hash_tag` (e.g. `{}`), and `servers` lines
    /// written verbatim, such as `127.0.0.1:7001:1` or `127.0.0.1:7001:1 name`.
    ///
    /// Waits until a `PING` through it answers; panics with its log if it
    /// does not start (e.g. a bad setting) or nutcracker is not installed.
    pub fn start(hash: &str, distribution: &str, hash_tag: Option<&str>, servers: &[String]) -> Nutcracker {
        let Some(binary) = nutcracker_binary() else {
            panic!("nutcracker not found on PATH: install it (apt-get install nutcracker)");
        };
        let dir = scratch_dir("nutcracker");
        let conf = dir.join("nutcracker.yml");
        let log = dir.join("nutcracker.log");
        let output = dir.join("output.log");
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let stats_port = free_port();
            let yaml = config(port, hash, distribution, hash_tag, servers);
            std::fs::write(&conf, &yaml).unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
            let _ = std::fs::remove_file(&log);
            let (stdout, stderr) = output_to(&output);
            let mut child = Command::new(binary)
                .arg("-c")
                .arg(&conf)
                .args(["-s", &stats_port.to_string(), "-a", "127.0.0.1", "-o"])
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
            match wait_ready("nutcracker", false, &mut child, port, &[&output, &log]) {
                Ok(()) => {
                    return Nutcracker {
                        port,
                        stats_port,
                        dir,
                        child,
                    };
                }
                Err(StartError::PortTaken(message)) => last = message,
                Err(StartError::Fatal(message)) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    panic!("could not start nutcracker: {message}--- config ---\n{yaml}")
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("could not start nutcracker: {PORT_ATTEMPTS} ports were taken; last: {last}");
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The stats port (JSON stats on connect), on 127.0.0.1.
    pub fn stats_port(&self) -> u16 {
        self.stats_port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// nutcracker's log so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.join("nutcracker.log"))
    }

    /// A connection through the proxy. twemproxy closes connections that
    /// send commands it does not know, so redis-rs's `CLIENT SETINFO` is off.
    pub fn conn(&self) -> redis::Connection {
        use redis::IntoConnectionInfo;
        let info = self.url().into_connection_info().expect("a valid redis:// URL");
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let info = info.set_redis_settings(settings);
        redis::Client::open(info)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("cannot connect to nutcracker on {}: {e}", self.addr()))
    }
}

/// The YAML config of a one-pool nutcracker.
fn config(port: u16, hash: &str, distribution: &str, hash_tag: Option<&str>, servers: &[String]) -> String {
    let mut yaml = format!(
        "mredis_test:\n  listen: 127.0.0.1:{port}\n  hash: {hash}\n  distribution: {distribution}\n  \
         redis: true\n  timeout: 2000\n  auto_eject_hosts: false\n"
    );
    if let Some(tag) = hash_tag {
        // Single-quoted YAML: only `'` needs escaping, as `''`.
        yaml.push_str(&format!("  hash_tag: '{}'\n", tag.replace('\'', "''")));
    }
    yaml.push_str("  servers:\n");
    for s in servers {
        yaml.push_str(&format!("   - {s}\n"));
    }
    yaml
}

impl Drop for Nutcracker {
    fn drop(&mut self) {
        kill(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `cond` until it holds; fails the test (naming `what`) after
/// `within`.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until no server of `servers` lists a connection named `name`: a
/// dropped client's connections are gone once each server has seen them
/// close.
pub fn wait_until_no_client_named(servers: &[&RedisServer], name: &str) {
    wait_until(
        &format!("the connections named {name} closed"),
        Duration::from_secs(10),
        || servers.iter().all(|s| !s.client_names().iter().any(|n| n == name)),
    );
}

/// The URLs of `servers`, in order.
pub fn urls(servers: &[RedisServer]) -> Vec<String> {
    servers.iter().map(RedisServer::url).collect()
}

/// Where the original Python MRedis puts `key` among `n` servers,
/// `((crc32(key) >> 16) & 0x7fff) % n`, computed here without mredis so
/// tests check mredis's placement against an independent value.
pub fn original_index(key: &[u8], n: usize) -> usize {
    ((crc32fast::hash(key) >> 16) & 0x7fff) as usize % n
}

/// Polls `cond` until it holds or `within` has passed; whether it held.
/// Like [`wait_until`], for callers that panic with more context.
fn poll_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while !cond() {
        if started.elapsed() >= within {
            return false;
        }
        std::thread::sleep(POLL);
    }
    true
}

/// How long the harness waits for one reply from a server or sentinel.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`SentinelFleet::start`] waits for replication and for the
/// sentinels to know each other (hello messages go out every 2 s).
const FLEET_TIMEOUT: Duration = Duration::from_secs(30);
/// How many sentinels a [`SentinelFleet`] has.
const SENTINELS: usize = 3;

/// A connection to `127.0.0.1:port`, db 0, authenticated with `password`
/// if any, whose connect and every reply time out after [`REPLY_TIMEOUT`]
/// (a frozen server must not hang the harness).
fn connect(port: u16, password: Option<&str>) -> redis::RedisResult<redis::Connection> {
    use redis::IntoConnectionInfo;
    let mut info = format!("redis://127.0.0.1:{port}").into_connection_info()?;
    if let Some(password) = password {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    let conn = redis::Client::open(info)?.get_connection_with_timeout(REPLY_TIMEOUT)?;
    conn.set_read_timeout(Some(REPLY_TIMEOUT))?;
    conn.set_write_timeout(Some(REPLY_TIMEOUT))?;
    Ok(conn)
}

/// Starts `n` things in parallel, in that order. If one start panics, the
/// others are dropped and the first panic goes on.
fn start_all<T: Send>(n: usize, start: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let start = &start;
    let started: Vec<std::thread::Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n).map(|i| scope.spawn(move || start(i))).collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut ok = Vec::with_capacity(n);
    let mut failure = None;
    for result in started {
        match result {
            Ok(item) => ok.push(item),
            Err(panic) => failure = failure.or(Some(panic)),
        }
    }
    if let Some(panic) = failure {
        drop(ok);
        std::panic::resume_unwind(panic);
    }
    ok
}

/// A Redis Sentinel: `<server binary> <conf> --sentinel` (the binary of
/// [`server_binary`], so Valkey's with `MREDIS_TEST_SERVER`) on a free
/// loopback port, with its own temporary directory holding its config file
/// (which Sentinel rewrites) and its log. Killed, and its directory
/// removed, on drop.
pub struct Sentinel {
    port: u16,
    dir: TempDir,
    child: Child,
}

impl std::fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinel")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Sentinel {
    /// Starts a sentinel whose config is `port P`, `bind 127.0.0.1`,
    /// `dir <own dir>`, then `monitors` verbatim (`sentinel monitor ...`
    /// lines). Waits until it answers `PING`; retries on another port if
    /// the port got taken; panics with its log and config otherwise.
    pub fn start(monitors: &str) -> Sentinel {
        let Some(binary) = redis_server_binary() else {
            panic!("redis-server not found on PATH: install it (apt-get install redis-server)");
        };
        let dir = TempDir::new("sentinel");
        let conf = dir.path().join("sentinel.conf");
        let log = dir.path().join("sentinel.log");
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n{monitors}",
                config_string(&dir.path().to_string_lossy())
            );
            std::fs::write(&conf, &text).unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
            let (stdout, stderr) = output_to(&log);
            let mut child = Command::new(binary)
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {} --sentinel: {e}", binary.display()));
            match wait_ready("sentinel", true, &mut child, port, &[&log]) {
                Ok(()) => return Sentinel { port, dir, child },
                Err(StartError::PortTaken(message)) => last = message,
                Err(StartError::Fatal(message)) => {
                    panic!("could not start sentinel: {message}--- config ---\n{text}")
                }
            }
        }
        panic!("could not start sentinel: {PORT_ATTEMPTS} ports were taken; last: {last}");
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// What the sentinel printed (its log, with its `+sdown`, `+odown`,
    /// `+switch-master` ... events).
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("sentinel.log"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A connection to the sentinel (for `SENTINEL ...` commands), whose
    /// replies time out after 2 s.
    pub fn conn(&self) -> redis::Connection {
        connect(self.port, None)
            .unwrap_or_else(|e| panic!("cannot connect to sentinel on 127.0.0.1:{}: {e}", self.port))
    }

    /// `SENTINEL get-master-addr-by-name <name>`: the port of the master it
    /// knows by that name; `None` if it does not answer or know it.
    fn master_port(&self, name: &str) -> Option<u16> {
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(name)
            .query(&mut connect(self.port, None).ok()?)
            .ok()?;
        addr.map(|(_, port)| port)
    }

    /// Whether it knows master `name` as up, with `replica_port` as a
    /// healthy replica (its INFO seen, link to the master ok) and the
    /// other `others` sentinels: all a failover of `name` needs.
    fn ready_for_failover(&self, name: &str, replica_port: u16, others: usize) -> bool {
        let Ok(mut conn) = connect(self.port, None) else {
            return false;
        };
        let Ok(master) = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(name)
            .query::<Vec<String>>(&mut conn)
        else {
            return false;
        };
        let field = |fields: &[String], key: &str| {
            fields
                .chunks(2)
                .find(|kv| kv[0] == key)
                .and_then(|kv| kv.get(1).cloned())
                .unwrap_or_default()
        };
        let replicas_known = field(&master, "num-slaves").parse::<usize>().is_ok_and(|n| n >= 1);
        let sentinels_known = field(&master, "num-other-sentinels").parse::<usize>() == Ok(others);
        if field(&master, "flags") != "master" || !replicas_known || !sentinels_known {
            return false;
        }
        let Ok(replicas) = redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(name)
            .query::<Vec<Vec<String>>>(&mut conn)
        else {
            return false;
        };
        replicas.iter().any(|r| {
            field(r, "port") == replica_port.to_string()
                && field(r, "flags") == "slave"
                && field(r, "master-link-status") == "ok"
        })
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// `s` as a double-quoted Redis config string.
fn config_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// One shard of a [`SentinelFleet`]: a primary and its replica, started
/// with `--replicaof 127.0.0.1 <primary port>`. After a failover the roles
/// are swapped on the servers, not in these field names: ask the fleet
/// ([`SentinelFleet::master_port`]) who is master now.
#[derive(Debug)]
pub struct SentinelShard {
    /// The name the sentinels monitor it by: `shard-0`, `shard-1`, ...
    pub name: String,
    /// The server that was master at the start.
    pub primary: RedisServer,
    /// The server that was its replica at the start.
    pub replica: RedisServer,
}

/// N shards, each a primary and one replica (`--replicaof`), watched by 3
/// sentinels, all real processes on loopback, killed on drop.
///
/// Each sentinel monitors every shard with quorum 2,
/// `down-after-milliseconds 1000`, `failover-timeout 5000` and
/// `parallel-syncs 1`, so a primary that is killed or frozen is replaced
/// by its replica within a few seconds.
///
/// ```no_run
/// let mut fleet = mredis_tests::SentinelFleet::start(2);
/// let old = fleet.master_port(1);
/// fleet.shards[1].primary.stop();
/// let new = fleet.wait_for_new_master(1, old, std::time::Duration::from_secs(15));
/// assert_eq!(new, fleet.shards[1].replica.port());
/// ```
#[derive(Debug)]
pub struct SentinelFleet {
    /// The shards, in order: `shards[i].name` is `shard-i`.
    pub shards: Vec<SentinelShard>,
    /// The 3 sentinels.
    pub sentinels: Vec<Sentinel>,
    /// The data servers' `--requirepass`, if any.
    password: Option<String>,
}

impl SentinelFleet {
    /// Starts `shards` shards and 3 sentinels with the default settings;
    /// see [`SentinelFleet::start_with`].
    pub fn start(shards: usize) -> SentinelFleet {
        SentinelFleet::start_with(shards, &[])
    }

    /// Starts `shards` primaries and one replica of each, with
    /// `--repl-diskless-sync-delay 0` (a full sync starts at once) and then
    /// `extra` on every data server (as [`RedisServer::with_args`]), then 3
    /// sentinels monitoring them all.
    ///
    /// With `--requirepass X` in `extra`, the data servers also get
    /// `--masterauth X` (unless `extra` has one), so replicas sync, and
    /// the old primary can follow the new one after a failover, and the
    /// sentinels get `sentinel auth-pass shard-i X`.
    ///
    /// Returns once every replica reports `master_link_status:up` and every
    /// sentinel knows, for every shard, the master as up, its replica as
    /// healthy and the 2 other sentinels; panics (with the sentinels' logs)
    /// if that does not happen within 30 s.
    pub fn start_with(shards: usize, extra: &[&str]) -> SentinelFleet {
        let password = extra
            .windows(2)
            .find(|w| w[0] == "--requirepass")
            .map(|w| w[1].to_string());
        // A primary waits 5 s (by default) for more replicas before a
        // diskless full sync; here there is only ever one.
        let mut data: Vec<&str> = vec!["--repl-diskless-sync-delay", "0"];
        data.extend(extra);
        if let Some(password) = &password
            && !extra.contains(&"--masterauth")
        {
            data.extend(["--masterauth", password]);
        }
        let primaries = start_all(shards, |_| RedisServer::with_args(&data));
        let ports: Vec<String> = primaries.iter().map(|p| p.port().to_string()).collect();
        let replicas = start_all(shards, |i| {
            let mut args = data.clone();
            args.extend(["--replicaof", "127.0.0.1", &ports[i]]);
            RedisServer::with_args(&args)
        });
        let mut fleet = SentinelFleet {
            shards: primaries
                .into_iter()
                .zip(replicas)
                .enumerate()
                .map(|(i, (primary, replica))| SentinelShard {
                    name: format!("shard-{i}"),
                    primary,
                    replica,
                })
                .collect(),
            sentinels: Vec::new(),
            password,
        };
        for shard in &fleet.shards {
            let port = shard.replica.port();
            let linked = poll_until(FLEET_TIMEOUT, || {
                fleet
                    .replication_info(port)
                    .is_some_and(|info| info.contains("master_link_status:up"))
            });
            assert!(
                linked,
                "replica 127.0.0.1:{port} of {} did not sync within {FLEET_TIMEOUT:?}; its log:\n{}",
                shard.name,
                shard.replica.log()
            );
        }
        // Only now: a sentinel learns a master's replicas from its INFO,
        // which it asks for again only every 10 s.
        let monitors = fleet.sentinel_config();
        fleet.sentinels = start_all(SENTINELS, |_| Sentinel::start(&monitors));
        for sentinel in &fleet.sentinels {
            for shard in &fleet.shards {
                let ready = poll_until(FLEET_TIMEOUT, || {
                    sentinel.ready_for_failover(&shard.name, shard.replica.port(), SENTINELS - 1)
                });
                assert!(
                    ready,
                    "sentinel 127.0.0.1:{} did not see {} (its replica, the other sentinels) within {FLEET_TIMEOUT:?}\n{}",
                    sentinel.port(),
                    shard.name,
                    fleet.sentinel_logs()
                );
            }
        }
        fleet
    }

    /// The `sentinel ...` lines of every shard, for each sentinel's config.
    fn sentinel_config(&self) -> String {
        let mut text = String::new();
        for shard in &self.shards {
            let name = &shard.name;
            text.push_str(&format!(
                "sentinel monitor {name} 127.0.0.1 {} 2\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n\
                 sentinel parallel-syncs {name} 1\n",
                shard.primary.port()
            ));
            if let Some(password) = &self.password {
                text.push_str(&format!("sentinel auth-pass {name} {}\n", config_string(password)));
            }
        }
        text
    }

    /// The sentinels' URLs, `redis://127.0.0.1:PORT`, in order.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(Sentinel::url).collect()
    }

    /// The data servers' password (`--requirepass`), if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The shard's master port according to the sentinels right now
    /// (`SENTINEL get-master-addr-by-name shard-i`): the answer of a
    /// majority of them if there is one, else the first answer.
    ///
    /// Panics (with their logs) if no sentinel answers.
    pub fn master_port(&self, shard: usize) -> u16 {
        let answers = self.master_answers(shard);
        let answered: Vec<u16> = answers.iter().flatten().copied().collect();
        let majority = answered
            .iter()
            .copied()
            .find(|&p| answered.iter().filter(|&&q| q == p).count() * 2 > self.sentinels.len());
        majority.or(answered.first().copied()).unwrap_or_else(|| {
            panic!(
                "no sentinel knows the master of {}\n{}",
                self.shards[shard].name,
                self.sentinel_logs()
            )
        })
    }

    /// Each sentinel's answer for the shard's master port, in order.
    fn master_answers(&self, shard: usize) -> Vec<Option<u16>> {
        let name = &self.shards[shard].name;
        self.sentinels.iter().map(|s| s.master_port(name)).collect()
    }

    /// Waits until the sentinels have failed the shard over away from
    /// `old_port`: a majority of them answer, every one that answers names
    /// the same new master, and the server there reports `role:master`.
    /// Returns the new master's port.
    ///
    /// Panics, with what each sentinel says and their logs, if that does
    /// not happen within `within`.
    pub fn wait_for_new_master(&self, shard: usize, old_port: u16, within: Duration) -> u16 {
        let started = Instant::now();
        loop {
            let answers = self.master_answers(shard);
            let answered: Vec<u16> = answers.iter().flatten().copied().collect();
            if let Some(&new) = answered.first()
                && new != old_port
                && answered.len() * 2 > self.sentinels.len()
                && answered.iter().all(|&p| p == new)
                && self.replication_info(new).is_some_and(|i| i.contains("role:master"))
            {
                return new;
            }
            if started.elapsed() >= within {
                panic!(
                    "no failover of {} away from 127.0.0.1:{old_port} within {within:?}; the sentinels say {answers:?}\n{}",
                    self.shards[shard].name,
                    self.sentinel_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The data server (a primary or a replica) on `port`.
    ///
    /// Panics if no server of the fleet has that port.
    pub fn server_on_port(&self, port: u16) -> &RedisServer {
        self.shards
            .iter()
            .flat_map(|s| [&s.primary, &s.replica])
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no server of the fleet is on port {port}"))
    }

    /// A connection to the data server on `port`, authenticated with the
    /// fleet's password if any, whose replies time out after 2 s.
    pub fn conn(&self, port: u16) -> redis::Connection {
        connect(port, self.password())
            .unwrap_or_else(|e| panic!("cannot connect to redis-server on 127.0.0.1:{port}: {e}"))
    }

    /// `INFO replication` of the data server on `port` (`role:...`,
    /// `master_port:...`, `master_link_status:...`); `None` if it does not
    /// answer within 2 s.
    pub fn replication_info(&self, port: u16) -> Option<String> {
        redis::cmd("INFO")
            .arg("replication")
            .query(&mut connect(port, self.password()).ok()?)
            .ok()
    }

    /// Every sentinel's log, each under its port.
    pub fn sentinel_logs(&self) -> String {
        let mut text = String::new();
        for s in &self.sentinels {
            text.push_str(&format!(
                "--- sentinel 127.0.0.1:{} ---\n{}\n",
                s.port(),
                s.log().trim_end()
            ));
        }
        text
    }
}

/// `calls` of `cmdstat_<name>` in `INFO commandstats` of the server on
/// `con` (0 if the command was never called).
pub fn command_calls(con: &mut redis::Connection, name: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A primary and a `--replicaof` replica of it (both started with
/// `extra`), returned once the replica reports its link up.
pub fn linked_shard(extra: &[&str]) -> (RedisServer, RedisServer) {
    let primary = RedisServer::with_args(extra);
    let port = primary.port().to_string();
    let mut args = vec!["--replicaof", "127.0.0.1", &port];
    args.extend_from_slice(extra);
    let replica = RedisServer::with_args(&args);
    wait_until("the replica linked", Duration::from_secs(10), || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica.conn())
            .unwrap();
        info.contains("master_link_status:up")
    });
    (primary, replica)
}

/// Waits until the replica on `replica` has everything the primary on
/// `primary` had when this was called (its `slave_repl_offset` reached
/// the primary's `master_repl_offset`). `WAIT` on a new connection would
/// not do: it waits only for that connection's own writes.
pub fn wait_replicated(primary: &mut redis::Connection, replica: &mut redis::Connection) {
    fn offset(con: &mut redis::Connection, field: &str) -> Option<i64> {
        let info: String = redis::cmd("INFO").arg("replication").query(con).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().parse().ok())
    }
    let target = offset(primary, "master_repl_offset:").expect("the primary's replication offset");
    wait_until(
        "the replica caught up with its primary",
        Duration::from_secs(10),
        || offset(replica, "slave_repl_offset:").is_some_and(|o| o >= target),
    );
}

/// The name the test harness gives test function `function` of the module
/// `module_path` (pass `module_path!()`): the module path without the
/// crate's name, e.g. `migration::child_rebalance`, for a test that runs
/// another test of its own binary in a child process
/// (`std::env::current_exe()` with `--exact` and this name).
pub fn test_name(module_path: &str, function: &str) -> String {
    match module_path.split_once("::") {
        Some((_crate, module)) => format!("{module}::{function}"),
        None => function.to_string(),
    }
}

/// Runs test `function` of the module `module_path` (pass `module_path!()`)
/// alone in a child process of this test binary and fails unless it passed
/// there. Returns true in that child, where the test goes on, and false in
/// the parent, where it is done. For tests that measure the process (its
/// resident set) or change it for good (a global `tracing` subscriber),
/// which the other tests of the one integration binary must not share.
pub fn in_own_process(module_path: &str, function: &str) -> bool {
    const CHILD: &str = "MREDIS_TEST_OWN_PROCESS";
    let name = test_name(module_path, function);
    if std::env::var(CHILD).is_ok_and(|n| n == name) {
        return true;
    }
    let out = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, &name)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name} in a child process: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "{name} failed in its own process");
    assert!(text.contains("1 passed"), "{name} did not run: {text}");
    false
}

/// How many quiet tests run at once: each starts a handful of processes and
/// mostly waits (for a failover, a probe interval), so a few overlap
/// without one slowing another's timing.
pub const QUIET_AT_ONCE: usize = 3;

/// Who may run beside whom in the one integration binary: how many quiet
/// tests and busy builds run now.
struct Running {
    quiet: usize,
    busy: usize,
}

static MACHINE: Mutex<Running> = Mutex::new(Running { quiet: 0, busy: 0 });
static MACHINE_CHANGED: std::sync::Condvar = std::sync::Condvar::new();

/// What a test holds while it runs as [`quiet`] or [`busy`]; gives its
/// place back when dropped.
#[must_use = "the test holds its place until this is dropped"]
pub struct Place {
    quiet: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut running = MACHINE.lock().unwrap_or_else(|p| p.into_inner());
        if self.quiet {
            running.quiet -= 1;
        } else {
            running.busy -= 1;
        }
        MACHINE_CHANGED.notify_all();
    }
}

fn take_place(quiet: bool) -> Place {
    let mut running = MACHINE.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let free = if quiet {
            running.quiet < QUIET_AT_ONCE && running.busy == 0
        } else {
            running.quiet == 0
        };
        if free {
            break;
        }
        running = MACHINE_CHANGED.wait(running).unwrap_or_else(|p| p.into_inner());
    }
    if quiet {
        running.quiet += 1;
    } else {
        running.busy += 1;
    }
    Place { quiet }
}

/// Held by a test that needs a quiet machine (a Sentinel failover, a timing
/// the health checker or the latency prober measures): it runs beside at
/// most [`QUIET_AT_ONCE`]` - 1` other quiet tests and never beside a
/// [`busy`] one (the compile-fail build); the other tests, which mostly
/// wait on their servers, go on beside it. Take it first, before starting
/// servers: `let _quiet = mredis_tests::quiet();`.
///
/// Under `cargo nextest run` every test is a process of its own, and the
/// same limits are nextest test groups (`.config/nextest.toml`).
pub fn quiet() -> Place {
    take_place(true)
}

/// Held by a test that loads the whole machine (the compile-fail tests'
/// build): it never runs beside a [`quiet`] test.
pub fn busy() -> Place {
    take_place(false)
}

/// Whether the server binary the tests start was built with TLS support
/// (Debian's redis-server is; the valkey-server and redis-server 8.2 that CI
/// takes from PyPI wheels are not). Asked once: the binary is started with a
/// TLS port and no certificate, which a build with TLS refuses for the
/// certificate and one without for TLS itself.
pub fn server_has_tls() -> bool {
    static HAS_TLS: OnceLock<bool> = OnceLock::new();
    *HAS_TLS.get_or_init(|| {
        let Some(binary) = redis_server_binary() else {
            return false;
        };
        let dir = TempDir::new("tls-probe");
        let out = Command::new(binary)
            .args(["--port", "0", "--tls-port", &free_port().to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("Failed finding TLS support") {
            return false;
        }
        assert!(
            text.contains("tls-cert-file"),
            "{} with a TLS port and no certificate said neither that it has no TLS support nor that \
             the certificate is missing:\n{text}",
            binary.display()
        );
        true
    })
}
