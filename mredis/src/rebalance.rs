//! Moving keys when the server list changes.
//!
//! [`rebalance`] walks every server with `SCAN` and moves each key whose
//! owner changes to its new server with Redis's own `MIGRATE` (atomic per
//! key, TTL kept), in batches of keys (`MIGRATE ... KEYS k1 k2 ...`),
//! several batches per round trip, one thread per source server. A final
//! pass checks that every key is on its new owner.
//!
//! # What it will not do
//!
//! - **Overwrite a key blindly.** A key that is on both its source A and its
//!   destination B is one of two things:
//!   - the leftover of a `MIGRATE` that timed out after B had applied the
//!     `RESTORE` (A keeps its copy when it does not hear back from B). Under
//!     the documented procedure (migration-aware clients serve a moving key
//!     from A while A has it, and from B only once it is gone from A)
//!     nobody writes a key on B while A still holds it, so A's copy is
//!     authoritative. When `DUMP` of both copies is
//!     byte-identical, B's copy carries nothing A's lacks, and
//!     `MIGRATE ... REPLACE` from A loses nothing: it is resolved silently
//!     (counted in [`RebalanceReport::leftovers`]; A's TTL is kept, `DUMP`
//!     has none). The comparison errs on the safe side only: servers of
//!     different versions or encoding settings (e.g.
//!     `hash-max-listpack-entries`) may serialise one value differently, and
//!     such a leftover then shows as a conflict, never the other way round.
//!   - otherwise a **conflict**: someone outside the procedure wrote it (for
//!     example a client still on the old configuration wrote A after the key
//!     had moved). Both copies are kept and the key is listed in
//!     [`RebalanceReport::conflicts`], unless [`RebalanceOptions::prefer`]
//!     picks a side; then every copy it is about to discard is first handed
//!     to [`RebalanceOptions::before_discard`], and only then discarded.
//!
//!   A leftover is not always identical: clients keep writing A's copy after
//!   the `MIGRATE` that left B's copy timed out. So the keys of every batch
//!   are written to a journal ([`RebalanceOptions::journal`]; the CLI always
//!   keeps one) before the batch is sent, and marked done once its reply is
//!   read. A key found on both servers whose batch never got its reply (a
//!   timeout, a stalled server, this process killed) is the tool's own
//!   leftover: it is replaced from A too. Without the journal entry, a key
//!   with different copies is a conflict.
//! - **Move keys to a server without persistence** (`save ""` and
//!   `appendonly no`), or one whose persistence cannot be read (`CONFIG GET`
//!   renamed or denied), unless [`RebalanceOptions::allow_volatile`]: a
//!   restart of that server would lose the moved keys, and since they are no
//!   longer on their old server, a rerun could not bring them back.
//!   The check counts which servers would receive keys first (a volatile
//!   server that receives nothing is no reason to refuse); keys that writers
//!   create later for a volatile server are not moved either and show up as
//!   misplaced in the verification.
//! - **Move keys between two names of one server** (`localhost:7001` and
//!   `127.0.0.1:7001`): servers are identified by `run_id` (`INFO server`)
//!   and database number; names that are the same server are reported in
//!   [`RebalanceReport::same_server`] and nothing moves between them.
//!
//! # Failures
//!
//! Every connection has a read timeout a little above the `MIGRATE`
//! timeout (the timeout plus half of it, at least 1 s more), so a server
//! that stops answering gives an error naming it instead of a hang. A
//! source blocked in `MIGRATE` towards a destination that stopped answering
//! looks like a silent source; the destinations are then probed with
//! `PING`, so the error names the server that really stopped. Errors are
//! always safe to retry: running again (after the server is back) finishes
//! the job, whatever moment the previous run was stopped at, including
//! `kill -9`.
//!
//! # Concurrency
//!
//! One thread per distinct server scans it and moves its keys. A server
//! running `MIGRATE` is blocked until its destination answers, so two
//! servers migrating into each other at the same time would wait for each
//! other until the timeout; a round trip from X to Y therefore only starts
//! while nobody migrates into X and Y migrates to nobody.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::{Connection, ErrorKind, RedisError, RedisResult, Value};

use crate::MRedis;
use crate::routing::show_key;
use crate::server::Server;

/// A progress callback, called from the calling thread about every 100 ms
/// and at the end of each phase.
pub type ProgressFn = Box<dyn FnMut(&Progress)>;

/// Called once, before anything is discarded, with every copy that
/// [`RebalanceOptions::prefer`] is about to discard.
pub type DiscardFn = Box<dyn FnMut(&[Discard])>;

/// Which copy wins when a key is on both its source and its destination
/// with different contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefer {
    /// Keep the copy on the source (the old owner): it replaces the
    /// destination's (`MIGRATE ... REPLACE`).
    Source,
    /// Keep the copy on the destination (the new owner): the source's copy
    /// is deleted (`DEL`).
    Destination,
}

/// Options of a rebalance run.
#[derive(Default)]
pub struct RebalanceOptions {
    /// Count what would move; move nothing.
    pub dry_run: bool,
    /// Resolve conflicts (a key with different contents on its source and
    /// its destination) by keeping this side. `None` (the default) keeps
    /// both copies and lists the key.
    pub prefer: Option<Prefer>,
    /// Move keys to destinations without persistence (or whose persistence
    /// cannot be read) anyway.
    pub allow_volatile: bool,
    /// Stop after moving about this many keys (the rest is moved by running
    /// again).
    pub limit: Option<u64>,
    /// MIGRATE timeout in milliseconds (default 5000). Connections time out
    /// reading a little later (this plus half of it, at least 1 s more).
    pub migrate_timeout_ms: Option<u64>,
    /// Keys per `MIGRATE ... KEYS` batch (default 100).
    pub batch_size: Option<usize>,
    /// `SCAN` `COUNT` (default 1000).
    pub scan_count: Option<usize>,
    /// Called with the progress so far.
    pub progress: Option<ProgressFn>,
    /// Called with every copy [`RebalanceOptions::prefer`] will discard,
    /// before any is discarded.
    pub before_discard: Option<DiscardFn>,
    /// A file recording the keys of every `MIGRATE` batch in flight, kept
    /// across runs (the CLI always keeps one). A batch whose outcome the
    /// tool did not see (a timeout, a stalled server, the tool killed) may
    /// have left a copy on the destination while the source kept its own;
    /// migration-aware clients keep writing the source's copy, so the two
    /// differ later. Such a key, found on both servers, is recognised from
    /// the journal as the tool's own leftover and replaced from the source
    /// (the copy clients served). Without a journal it is reported as a
    /// conflict. The file is removed after a run that leaves nothing to do.
    /// Use one journal per pair of configurations and never share one
    /// between two runs at once (the CLI names it after both server lists).
    pub journal: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for RebalanceOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RebalanceOptions")
            .field("dry_run", &self.dry_run)
            .field("prefer", &self.prefer)
            .field("allow_volatile", &self.allow_volatile)
            .field("limit", &self.limit)
            .field("migrate_timeout_ms", &self.migrate_timeout_ms)
            .field("batch_size", &self.batch_size)
            .field("scan_count", &self.scan_count)
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

/// What a run is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Connecting, identifying servers, checking persistence (and, when a
    /// destination has none, counting which servers would receive keys:
    /// `scanned` and `moved` then count that pass).
    #[default]
    Checking,
    /// Scanning and moving keys (or counting, in a dry run).
    Moving,
    /// Resolving conflicts with [`RebalanceOptions::prefer`].
    Resolving,
    /// The final verification pass.
    Verifying,
}

/// Progress of a running rebalance.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The current phase.
    pub phase: Phase,
    /// Keys looked at so far in the moving phase (at most `total` per
    /// server: `SCAN` may return a key twice).
    pub scanned: u64,
    /// Keys moved (or, in a dry run, that would move) so far.
    pub moved: u64,
    /// Conflicts found so far.
    pub conflicts: u64,
    /// Keys on the distinct servers before the run (`DBSIZE`).
    pub total: u64,
}

/// A key with different contents on its source and its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The key, printable.
    pub key: String,
    /// The key's bytes.
    pub raw_key: Vec<u8>,
    /// Where it is now (the source).
    pub from: String,
    /// Where the new configuration puts it (it exists there too).
    pub to: String,
}

/// A copy discarded because of [`RebalanceOptions::prefer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discard {
    /// The key, printable.
    pub key: String,
    /// The server whose copy is discarded.
    pub discarded_from: String,
    /// The server whose copy is kept (the key's new owner afterwards).
    pub kept: String,
}

/// A key the verification pass found away from its new owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misplaced {
    /// The key, printable.
    pub key: String,
    /// Where it is.
    pub on: String,
    /// Where the new configuration puts it.
    pub owner: String,
    /// Whether the owner has a copy too (the key is on two servers).
    pub on_both: bool,
}

/// At most this many misplaced keys are listed (all are counted).
pub const MISPLACED_LISTED: usize = 1000;

/// What a rebalance did.
#[derive(Debug, Clone, Default)]
pub struct RebalanceReport {
    /// Keys on the distinct servers before the run (`DBSIZE`).
    pub keys: u64,
    /// Keys looked at (each server's count is capped at its `DBSIZE`,
    /// since `SCAN` may return a key twice).
    pub scanned: u64,
    /// Keys moved (in a dry run: that would move).
    pub moved: u64,
    /// Moves per (from, to) server pair.
    pub moves: BTreeMap<(String, String), u64>,
    /// Keys found on both servers with identical contents (the leftover of
    /// a timed-out `MIGRATE`) and resolved by moving the source's copy.
    pub leftovers: u64,
    /// Keys left on both servers because their contents differ (not
    /// resolved: [`RebalanceOptions::prefer`] was not set).
    pub conflicts: Vec<Conflict>,
    /// Copies discarded because of [`RebalanceOptions::prefer`].
    pub discarded: Vec<Discard>,
    /// Names that are one server (same `run_id` and database), each group
    /// in configuration order.
    pub same_server: Vec<Vec<String>>,
    /// Destinations without persistence that keys were moved to because of
    /// [`RebalanceOptions::allow_volatile`] (in a dry run: that a real run
    /// would refuse without it), with the reason.
    pub volatile: Vec<String>,
    /// The run stopped at `limit`; run again to finish.
    pub interrupted: bool,
    /// Pages tried again after a transient MIGRATE timeout (a destination
    /// or source that was busy for a moment but answers).
    pub retries: u64,
    /// Keys the verification pass found away from their new owner
    /// (conflicts included); 0 means every key is where the new
    /// configuration puts it. Not computed in a dry run.
    pub misplaced: u64,
    /// The first [`MISPLACED_LISTED`] of them.
    pub misplaced_keys: Vec<Misplaced>,
    /// This was a dry run: counts only, nothing moved, no verification.
    pub dry_run: bool,
}

impl RebalanceReport {
    /// Every key is on its new owner, none is on two servers, and there are
    /// no conflicts left (false for a dry run that would move keys).
    pub fn is_complete(&self) -> bool {
        self.misplaced == 0 && self.conflicts.is_empty() && !self.interrupted && !(self.dry_run && self.moved > 0)
    }
}

/// One distinct server (run_id + db), under every name it was given.
struct Node {
    names: Vec<String>,
    server: Server,
    run_id: Option<String>,
    keys: u64,
    /// A server of the old configuration (clients on it may write here).
    in_from: bool,
}

impl Node {
    fn name(&self) -> &str {
        &self.names[0]
    }
}

struct Settings {
    timeout_ms: u64,
    io_timeout: Duration,
    batch: usize,
    scan_count: usize,
}

struct MovePlan<'a> {
    nodes: Vec<Node>,
    to: &'a MRedis,
    /// Node of each server of `to`.
    to_node: Vec<usize>,
    settings: Settings,
    traffic: Traffic,
    /// Per node: volatile and not allowed. Keys are never moved there, even
    /// ones written after the check; they stay and show as misplaced.
    forbidden: Vec<bool>,
}

/// Which servers are busy as a MIGRATE source or destination.
///
/// A server running MIGRATE is blocked until its destination answers, so
/// two MIGRATEs in opposite directions (A -> B while B -> A) wait for each
/// other until they time out. Workers therefore only start a round trip
/// from X to Ys when nobody is migrating into X and no Y is migrating out;
/// each reservation is taken all at once and released after a bounded time
/// (the timeouts), so this cannot deadlock.
#[derive(Default)]
struct Traffic {
    /// Per node: (migrating out, migrations coming in).
    state: Mutex<Vec<(bool, u32)>>,
    changed: std::sync::Condvar,
}

struct Reservation<'a> {
    traffic: &'a Traffic,
    src: usize,
    dests: Vec<usize>,
}

impl Traffic {
    fn new(nodes: usize) -> Traffic {
        Traffic {
            state: Mutex::new(vec![(false, 0); nodes]),
            changed: std::sync::Condvar::new(),
        }
    }

    /// Waits until `src` may migrate to `dests`; `None` if `abort` is set.
    fn reserve(&self, src: usize, dests: Vec<usize>, abort: &AtomicBool) -> Option<Reservation<'_>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if abort.load(Ordering::Relaxed) {
                return None;
            }
            if state[src].1 == 0 && dests.iter().all(|&d| !state[d].0) {
                state[src].0 = true;
                for &d in &dests {
                    state[d].1 += 1;
                }
                return Some(Reservation {
                    traffic: self,
                    src,
                    dests,
                });
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut state = self.traffic.state.lock().unwrap_or_else(|e| e.into_inner());
        state[self.src].0 = false;
        for &d in &self.dests {
            state[d].1 -= 1;
        }
        drop(state);
        self.traffic.changed.notify_all();
    }
}

#[derive(Default)]
struct Shared {
    journal: Journal,
    scanned: AtomicU64,
    moved: AtomicU64,
    conflicts: AtomicU64,
    abort: AtomicBool,
    interrupted: AtomicBool,
    retries: AtomicU64,
    budget: Option<AtomicU64>,
}

/// Keys of MIGRATE batches whose outcome was not seen, kept in a file so a
/// later run can tell its own leftovers from conflicts. Lines are
/// `B <source> <hex key>` when a batch is sent and `E <source> <hex key>`
/// once its outcome is known; the keys begun and not ended are uncertain.
#[derive(Default)]
struct Journal {
    path: Option<std::path::PathBuf>,
    file: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
    // (dropped with the journal: the file is closed before `finish` removes it)
    pending: Mutex<std::collections::HashSet<(String, Vec<u8>)>>,
    /// Keys of batches sent and not answered yet.
    inflight: Mutex<std::collections::HashSet<(String, Vec<u8>)>>,
}

fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

impl Journal {
    /// Opens (or creates) the journal at `path`, keeping only the keys still
    /// uncertain.
    fn open(path: Option<&std::path::Path>) -> RedisResult<Journal> {
        let Some(path) = path else {
            return Ok(Journal::default());
        };
        let mut pending = std::collections::HashSet::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines() {
                let mut parts = line.splitn(3, ' ');
                let (Some(kind), Some(src), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                let Some(key) = unhex(key) else { continue };
                match kind {
                    "B" => {
                        pending.insert((src.to_string(), key));
                    }
                    "E" => {
                        pending.remove(&(src.to_string(), key));
                    }
                    _ => {}
                }
            }
        }
        let io = |e: std::io::Error| error(format!("journal {}: {e}", path.display()));
        let file = std::fs::File::create(path).map_err(io)?;
        let mut file = std::io::BufWriter::new(file);
        for (src, key) in &pending {
            use std::io::Write;
            writeln!(file, "B {src} {}", hex(key)).map_err(io)?;
        }
        std::io::Write::flush(&mut file).map_err(io)?;
        Ok(Journal {
            path: Some(path.to_path_buf()),
            file: Some(Mutex::new(file)),
            pending: Mutex::new(pending),
            inflight: Mutex::default(),
        })
    }

    fn write(&self, kind: char, src: &str, keys: &[Vec<u8>]) -> RedisResult<()> {
        let Some(file) = &self.file else { return Ok(()) };
        use std::io::Write;
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        let io = |e: std::io::Error| error(format!("writing the rebalance journal: {e}"));
        for k in keys {
            writeln!(f, "{kind} {src} {}", hex(k)).map_err(io)?;
        }
        f.flush().map_err(io)
    }

    /// Before sending a batch: its keys are in flight.
    fn begin(&self, src: &str, keys: &[Vec<u8>]) -> RedisResult<()> {
        let mut f = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            f.insert((src.to_string(), k.clone()));
        }
        drop(f);
        self.write('B', src, keys)
    }

    /// The batch was answered (BUSYKEY): not in flight any more, but an
    /// uncertainty left by an earlier batch stays until the key is settled.
    fn answered(&self, src: &str, keys: &[Vec<u8>]) {
        let mut f = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            f.remove(&(src.to_string(), k.clone()));
        }
    }

    /// The key is settled (moved, gone, resolved or listed as a conflict).
    fn end(&self, src: &str, keys: &[Vec<u8>]) -> RedisResult<()> {
        self.answered(src, keys);
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for k in keys {
                p.remove(&(src.to_string(), k.clone()));
            }
        }
        self.write('E', src, keys)
    }

    /// The replies of `src`'s batches in flight were not seen (a timeout):
    /// their keys are uncertain for the retry.
    fn lost(&self, src: &str) {
        let mut f = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        f.retain(|(s, k)| {
            if s == src {
                p.insert((s.clone(), k.clone()));
                false
            } else {
                true
            }
        });
    }

    /// Was `key` in a batch from `src` whose outcome was not seen?
    fn uncertain(&self, src: &str, key: &[u8]) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(src.to_string(), key.to_vec()))
    }

    /// After a run that verified every key on its owner and no key on two
    /// servers: nothing in the journal can matter any more.
    fn finish(&self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[derive(Default)]
struct WorkerOut {
    scanned: u64,
    moved: u64,
    moves: BTreeMap<(String, String), u64>,
    conflicts: Vec<Conflict>,
    leftovers: u64,
    misplaced: u64,
    misplaced_keys: Vec<Misplaced>,
}

fn error(detail: String) -> RedisError {
    RedisError::from((ErrorKind::Io, "rebalance failed", detail))
}

/// Describes a client-side error on a connection to `server`.
fn describe(server: &str, e: &RedisError, io_timeout: Duration) -> String {
    if e.is_timeout() {
        format!(
            "{server} did not answer within {} ms (stopped or overloaded?)",
            io_timeout.as_millis()
        )
    } else if let Some(detail) = e.detail() {
        format!("{server}: {detail}")
    } else {
        format!("{server}: {e}")
    }
}

const RERUN: &str = "nothing was lost; rerunning is safe and continues where this run stopped";

fn connect(server: &Server, io_timeout: Duration) -> RedisResult<Connection> {
    let con = server
        .client()
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .map_err(|e| {
            error(format!(
                "cannot connect to {}: {}; {RERUN}",
                server.name(),
                e.detail().map(str::to_string).unwrap_or_else(|| e.to_string())
            ))
        })?;
    con.set_read_timeout(Some(io_timeout))?;
    con.set_write_timeout(Some(io_timeout))?;
    Ok(con)
}

/// Runs `cmd` on `con`, turning a failure into an error naming `server`.
fn query<T: redis::FromRedisValue>(
    cmd: &redis::Cmd,
    con: &mut Connection,
    server: &str,
    io_timeout: Duration,
) -> RedisResult<T> {
    cmd.query(con)
        .map_err(|e| error(format!("{}; {RERUN}", describe(server, &e, io_timeout))))
}

fn server_error_text(e: &redis::ServerError) -> String {
    match e.details() {
        Some(d) => format!("{} {d}", e.code()),
        None => e.code().to_string(),
    }
}

fn run_id(con: &mut Connection, server: &str, io_timeout: Duration) -> RedisResult<Option<String>> {
    let info: RedisResult<String> = redis::cmd("INFO").arg("server").query(con);
    match info {
        Ok(text) => Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|s| s.trim().to_string())),
        Err(e) if e.code().is_some() => Ok(None),
        Err(e) => Err(error(format!("{}; {RERUN}", describe(server, &e, io_timeout)))),
    }
}

/// Connects to every server of both configurations and groups names that
/// are one server. Returns the nodes (with one connection each) and the
/// node of every server of `to`.
fn identify(from: &MRedis, to: &MRedis, io_timeout: Duration) -> RedisResult<(Vec<Node>, Vec<Connection>, Vec<usize>)> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut cons = Vec::new();
    let mut to_node = Vec::new();
    let all = from
        .servers()
        .iter()
        .map(|s| (false, s))
        .chain(to.servers().iter().map(|s| (true, s)));
    for (is_to, server) in all {
        let existing = nodes.iter().position(|n| n.names.iter().any(|x| x == server.name()));
        let index = match existing {
            Some(i) => i,
            None => {
                let mut con = connect(server, io_timeout)?;
                let id = run_id(&mut con, server.name(), io_timeout)?;
                let same = nodes
                    .iter()
                    .position(|n| n.server.db() == server.db() && id.is_some() && n.run_id.as_deref() == id.as_deref());
                match same {
                    Some(i) => {
                        nodes[i].names.push(server.name().to_string());
                        i
                    }
                    None => {
                        let keys = query(&redis::cmd("DBSIZE"), &mut con, server.name(), io_timeout)?;
                        nodes.push(Node {
                            names: vec![server.name().to_string()],
                            server: server.clone(),
                            run_id: id,
                            keys,
                            in_from: false,
                        });
                        cons.push(con);
                        nodes.len() - 1
                    }
                }
            }
        };
        if is_to {
            to_node.push(index);
        } else {
            nodes[index].in_from = true;
        }
    }
    Ok((nodes, cons, to_node))
}

/// `None` when the server persists writes; otherwise why not. A server
/// that does not answer is an error, not a reason.
fn volatility(con: &mut Connection, server: &str, io_timeout: Duration) -> RedisResult<Option<String>> {
    let mut get = |name: &str| -> RedisResult<Result<String, String>> {
        match redis::cmd("CONFIG").arg("GET").arg(name).query::<Vec<String>>(con) {
            Ok(pair) => Ok(pair
                .get(1)
                .cloned()
                .ok_or_else(|| format!("CONFIG GET {name} returned nothing"))),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                Err(error(format!("{}; {RERUN}", describe(server, &e, io_timeout))))
            }
            Err(e) => Ok(Err(e.detail().map(str::to_string).unwrap_or_else(|| e.to_string()))),
        }
    };
    let save = get("save")?;
    let aof = get("appendonly")?;
    Ok(match (save, aof) {
        (Ok(save), Ok(aof)) => {
            if save.trim().is_empty() && aof != "yes" {
                Some("it has no persistence (save \"\" and appendonly no)".to_string())
            } else {
                None
            }
        }
        (Err(e), _) | (_, Err(e)) => Some(format!("its persistence cannot be read (CONFIG GET failed: {e})")),
    })
}

/// Moves every key of the fleet to where `to` places it.
///
/// `from` is the configuration the data was written with; servers of `to`
/// that `from` lacks are scanned too, so running again after an
/// interruption finishes the job. Returns what was done; errors name the
/// server and are safe to retry (see the [module docs](self)).
pub fn rebalance(from: &MRedis, to: &MRedis, mut options: RebalanceOptions) -> RedisResult<RebalanceReport> {
    let timeout_ms = options.migrate_timeout_ms.unwrap_or(5000).max(1);
    let io_timeout = Duration::from_millis(timeout_ms + (timeout_ms / 2).max(1000));
    let (nodes, mut cons, to_node) = identify(from, to, io_timeout)?;
    let mut plan = MovePlan {
        traffic: Traffic::new(nodes.len()),
        forbidden: vec![false; nodes.len()],
        nodes,
        to,
        to_node,
        settings: Settings {
            timeout_ms,
            io_timeout,
            batch: options.batch_size.unwrap_or(100).max(1),
            scan_count: options.scan_count.unwrap_or(1000).max(1),
        },
    };
    let mut report = RebalanceReport {
        keys: plan.nodes.iter().map(|n| n.keys).sum(),
        same_server: plan
            .nodes
            .iter()
            .filter(|n| n.names.len() > 1)
            .map(|n| n.names.clone())
            .collect(),
        dry_run: options.dry_run,
        ..Default::default()
    };
    let mut progress = Progress {
        total: report.keys,
        ..Default::default()
    };
    let mut tick = |p: &Progress| {
        if let Some(callback) = options.progress.as_mut() {
            callback(p);
        }
    };
    tick(&progress);

    // Persistence of every destination.
    let mut volatile: BTreeMap<usize, String> = BTreeMap::new();
    let dests: BTreeSet<usize> = plan.to_node.iter().copied().collect();
    for &n in &dests {
        if let Some(why) = volatility(&mut cons[n], plan.nodes[n].name(), io_timeout)? {
            volatile.insert(n, why);
        }
    }
    drop(cons);
    if !options.allow_volatile {
        for &n in volatile.keys() {
            plan.forbidden[n] = true;
        }
    }
    if !volatile.is_empty() && !options.allow_volatile && !options.dry_run {
        // Only destinations that would receive keys matter: count first.
        let shared = Shared::default();
        let counted = run_workers(&plan, &shared, Mode::Count, &mut tick, &mut progress)?;
        let receiving: BTreeSet<String> = counted.moves.keys().map(|(_, to)| to.clone()).collect();
        let refused: Vec<String> = volatile
            .iter()
            .filter(|(n, _)| plan.nodes[**n].names.iter().any(|name| receiving.contains(name)))
            .map(|(n, why)| format!("{}: {why}", plan.nodes[*n].name()))
            .collect();
        if !refused.is_empty() {
            return Err(RedisError::from((
                ErrorKind::Client,
                "rebalance refused",
                format!(
                    "refusing to move keys to {}. A restart of such a server would lose the keys moved there, \
                     and since they are no longer on their old server a rerun could not bring them back. \
                     Enable persistence (e.g. CONFIG SET appendonly yes) or pass --allow-volatile \
                     (RebalanceOptions::allow_volatile). Nothing was moved",
                    refused.join("; ")
                ),
            )));
        }
    }

    // Move (or count).
    progress.phase = Phase::Moving;
    progress.scanned = 0;
    progress.moved = 0;
    let mut shared = Shared {
        budget: options.limit.map(AtomicU64::new),
        journal: if options.dry_run {
            Journal::default()
        } else {
            Journal::open(options.journal.as_deref())?
        },
        ..Default::default()
    };
    let mode = if options.dry_run { Mode::Count } else { Mode::Move };
    let out = run_workers(&plan, &shared, mode, &mut tick, &mut progress)?;
    report.scanned = out.scanned;
    report.moved = out.moved;
    report.moves = out.moves;
    report.leftovers = out.leftovers;
    report.conflicts = out.conflicts;
    report.interrupted = shared.interrupted.load(Ordering::Relaxed);
    report.retries = shared.retries.load(Ordering::Relaxed);
    let shared_journal = std::mem::take(&mut shared.journal);
    // Volatile servers that received (or in a dry run would receive) keys.
    let receiving: BTreeSet<&String> = report.moves.keys().map(|(_, to)| to).collect();
    report.volatile = volatile
        .iter()
        .filter(|(n, _)| plan.nodes[**n].names.iter().any(|name| receiving.contains(name)))
        .map(|(n, why)| format!("{}: {why}", plan.nodes[*n].name()))
        .collect();
    if options.dry_run {
        return Ok(report);
    }

    // Conflicts: keep both, or discard the side not preferred.
    if let (Some(prefer), false) = (options.prefer, report.conflicts.is_empty()) {
        progress.phase = Phase::Resolving;
        tick(&progress);
        let discards: Vec<Discard> = report
            .conflicts
            .iter()
            .map(|c| {
                let (discarded_from, kept) = match prefer {
                    Prefer::Source => (c.to.clone(), c.from.clone()),
                    Prefer::Destination => (c.from.clone(), c.to.clone()),
                };
                Discard {
                    key: c.key.clone(),
                    discarded_from,
                    kept,
                }
            })
            .collect();
        if let Some(callback) = options.before_discard.as_mut() {
            callback(&discards);
        }
        let conflicts = std::mem::take(&mut report.conflicts);
        for (c, d) in conflicts.iter().zip(discards) {
            resolve(&plan, c, prefer)?;
            if prefer == Prefer::Source {
                report.moved += 1;
                *report.moves.entry((c.from.clone(), c.to.clone())).or_default() += 1;
            }
            report.discarded.push(d);
        }
    }

    // Verification.
    progress.phase = Phase::Verifying;
    let shared = Shared::default();
    let checked = run_workers(&plan, &shared, Mode::Verify, &mut tick, &mut progress)?;
    report.misplaced = checked.misplaced;
    report.misplaced_keys = checked.misplaced_keys;
    if report.misplaced == 0 && report.conflicts.is_empty() && !report.interrupted {
        shared_journal.finish();
    }
    Ok(report)
}

/// Keeps one side of a conflict.
fn resolve(plan: &MovePlan, c: &Conflict, prefer: Prefer) -> RedisResult<()> {
    let io = plan.settings.io_timeout;
    let ti = plan.to.server_index_for(&c.raw_key);
    let dest = &plan.to.servers()[ti];
    let src = plan
        .nodes
        .iter()
        .position(|n| n.name() == c.from)
        .ok_or_else(|| error(format!("{} is not a server of either configuration", c.from)))?;
    let mut con = connect(&plan.nodes[src].server, io)?;
    match prefer {
        Prefer::Destination => {
            query::<i64>(redis::cmd("DEL").arg(&c.raw_key), &mut con, &c.from, io)?;
        }
        Prefer::Source => {
            let same = same_server_db(plan, src, plan.to_node[ti]);
            match move_one(&mut con, dest, same, &c.raw_key, true, &plan.settings)
                .map_err(|e| error(format!("{}; {RERUN}", describe(&c.from, &e, io))))?
            {
                Reply::Ok | Reply::NoKey => {}
                Reply::Busy => return Err(error(format!("{}: MIGRATE REPLACE failed with BUSYKEY", c.from))),
                Reply::Err(e) => {
                    return Err(error(format!(
                        "moving `{}` from {} to {}: {e}; {RERUN}",
                        c.key,
                        c.from,
                        dest.name()
                    )));
                }
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Count,
    Move,
    Verify,
}

/// Runs `mode` on every node in parallel, one thread each, calling `tick`
/// from this thread about every 100 ms.
fn run_workers(
    plan: &MovePlan,
    shared: &Shared,
    mode: Mode,
    tick: &mut dyn FnMut(&Progress),
    progress: &mut Progress,
) -> RedisResult<WorkerOut> {
    let results: Mutex<Vec<RedisResult<WorkerOut>>> = Mutex::new(Vec::new());
    let (finished, wait) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        for n in 0..plan.nodes.len() {
            let results = &results;
            let finished = finished.clone();
            scope.spawn(move || {
                let r = worker(plan, shared, mode, n);
                if r.is_err() {
                    shared.abort.store(true, Ordering::Relaxed);
                }
                results.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                let _ = finished.send(());
            });
        }
        drop(finished);
        tick(progress);
        let mut running = plan.nodes.len();
        loop {
            // Woken by a worker that ends, or every 100 ms for progress.
            match wait.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => running -= 1,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                // A worker panicked: the scope propagates it.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => running = 0,
            }
            if mode != Mode::Verify {
                progress.scanned = shared.scanned.load(Ordering::Relaxed);
                progress.moved = shared.moved.load(Ordering::Relaxed);
                progress.conflicts = shared.conflicts.load(Ordering::Relaxed);
            }
            tick(progress);
            if running == 0 {
                break;
            }
        }
    });
    let mut total = WorkerOut::default();
    let mut first_error = None;
    for r in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
        match r {
            Ok(out) => {
                total.scanned += out.scanned;
                total.moved += out.moved;
                for (k, v) in out.moves {
                    *total.moves.entry(k).or_default() += v;
                }
                total.conflicts.extend(out.conflicts);
                total.leftovers += out.leftovers;
                total.misplaced += out.misplaced;
                total.misplaced_keys.extend(out.misplaced_keys);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        let moved = shared.moved.load(Ordering::Relaxed);
        return Err(match mode {
            Mode::Move => error(format!(
                "{} (this run moved {moved} keys before it stopped)",
                e.detail().unwrap_or("rebalance failed")
            )),
            _ => e,
        });
    }
    total.misplaced_keys.truncate(MISPLACED_LISTED);
    total.conflicts.sort_by(|a, b| a.raw_key.cmp(&b.raw_key));
    Ok(total)
}

/// The database on the same server that `dest` is, when `src` and `dest`
/// are two databases of one server (MIGRATE would connect to itself).
fn same_server_db(plan: &MovePlan, src: usize, dest: usize) -> Option<i64> {
    let (a, b) = (&plan.nodes[src], &plan.nodes[dest]);
    (a.run_id.is_some() && a.run_id == b.run_id).then(|| b.server.db())
}

enum Reply {
    Ok,
    NoKey,
    Busy,
    Err(String),
}

fn classify(v: &Value) -> Reply {
    match v {
        Value::Okay => Reply::Ok,
        Value::SimpleString(s) if s == "OK" => Reply::Ok,
        Value::SimpleString(s) if s == "NOKEY" => Reply::NoKey,
        Value::ServerError(e) if e.code() == "BUSYKEY" || e.details().is_some_and(|d| d.contains("BUSYKEY")) => {
            Reply::Busy
        }
        Value::ServerError(e) => Reply::Err(server_error_text(e)),
        other => Reply::Err(format!("unexpected reply {other:?}")),
    }
}

/// `MIGRATE host port "" db timeout [REPLACE] [AUTH ...] KEYS keys...`.
/// The password goes only into the command, never into a message.
fn migrate_cmd(dest: &Server, timeout_ms: u64, replace: bool, keys: &[Vec<u8>]) -> redis::Cmd {
    let mut cmd = redis::cmd("MIGRATE");
    cmd.arg(dest.host())
        .arg(dest.port())
        .arg("")
        .arg(dest.db())
        .arg(timeout_ms);
    if replace {
        cmd.arg("REPLACE");
    }
    let info = dest.connection_info();
    let settings = info.redis_settings();
    if let Some(password) = settings.password() {
        match settings.username() {
            Some(user) => cmd.arg("AUTH2").arg(user).arg(password),
            None => cmd.arg("AUTH").arg(password),
        };
    }
    cmd.arg("KEYS");
    for k in keys {
        cmd.arg(k);
    }
    cmd
}

/// Runs `pipe` on `con`, server errors as values; a connection failure
/// becomes an error naming `server`.
fn pquery(
    pipe: &mut redis::Pipeline,
    con: &mut Connection,
    server: &str,
    io_timeout: Duration,
) -> RedisResult<Vec<Value>> {
    pipe.ignore_errors()
        .query(con)
        .map_err(|e| error(format!("{}; {RERUN}", describe(server, &e, io_timeout))))
}

/// Moves one key from the server on `con` to `dest`. A connection failure
/// comes back as redis-rs's own error, for the caller to explain.
fn move_one(
    con: &mut Connection,
    dest: &Server,
    same_server_db: Option<i64>,
    key: &[u8],
    replace: bool,
    s: &Settings,
) -> RedisResult<Reply> {
    let mut pipe = redis::pipe();
    match same_server_db {
        None => {
            pipe.add_command(migrate_cmd(dest, s.timeout_ms, replace, &[key.to_vec()]));
            let v: Vec<Value> = pipe.ignore_errors().query(con)?;
            Ok(v.first().map(classify).unwrap_or(Reply::Err("no reply".into())))
        }
        Some(db) => {
            // Two databases of one server: COPY (+ DEL) or MOVE, atomic.
            if replace {
                pipe.atomic()
                    .cmd("COPY")
                    .arg(key)
                    .arg(key)
                    .arg("DB")
                    .arg(db)
                    .arg("REPLACE")
                    .cmd("DEL")
                    .arg(key);
            } else {
                pipe.cmd("MOVE").arg(key).arg(db).cmd("EXISTS").arg(key);
            }
            let v: Vec<Value> = pipe.ignore_errors().query(con)?;
            let int = |i: usize| match v.get(i) {
                Some(Value::Int(n)) => Ok(*n),
                Some(Value::ServerError(e)) => Err(server_error_text(e)),
                other => Err(format!("unexpected reply {other:?}")),
            };
            Ok(match (int(0), int(1)) {
                (Ok(1), _) => Reply::Ok,
                (Ok(_), Ok(0)) => Reply::NoKey,
                (Ok(_), Ok(_)) => {
                    if replace {
                        Reply::NoKey
                    } else {
                        Reply::Busy
                    }
                }
                (Err(e), _) | (_, Err(e)) => Reply::Err(e),
            })
        }
    }
}

/// A `SCAN` page: the next cursor and the keys.
type Page = (u64, Vec<Vec<u8>>);

/// Why a page failed.
enum PageFailure {
    /// A MIGRATE to this destination (index in `to`) timed out.
    Timeout(usize, String),
    /// Reading from the source timed out while MIGRATEs to these
    /// destinations (indexes in `to`) were pending.
    Stalled(Vec<usize>),
    /// Anything else.
    Fatal(RedisError),
}

impl From<RedisError> for PageFailure {
    fn from(e: RedisError) -> Self {
        PageFailure::Fatal(e)
    }
}

/// Whether `server` answers `PING` within a second, on a new connection.
fn answers_ping(server: &Server) -> bool {
    let probe = Duration::from_millis(1000);
    server
        .client()
        .and_then(|c| c.get_connection_with_timeout(probe))
        .and_then(|mut c| {
            c.set_read_timeout(Some(probe))?;
            redis::cmd("PING").query::<String>(&mut c)
        })
        .is_ok()
}

/// One source's worker: connections to the source and, lazily, to
/// destinations, and what it did.
struct Worker<'a> {
    plan: &'a MovePlan<'a>,
    shared: &'a Shared,
    src: usize,
    name: String,
    con: Connection,
    dest_cons: HashMap<usize, Connection>,
    out: WorkerOut,
}

fn worker(plan: &MovePlan, shared: &Shared, mode: Mode, src: usize) -> RedisResult<WorkerOut> {
    let s = &plan.settings;
    let node = &plan.nodes[src];
    if mode != Mode::Verify && node.keys == 0 && !node.in_from {
        // A new server that was empty: whatever arrives during the run is
        // moved there by this run or written by clients of the new
        // configuration, so it is in place (the verification checks).
        return Ok(WorkerOut::default());
    }
    let mut w = Worker {
        plan,
        shared,
        src,
        name: node.name().to_string(),
        con: connect(&node.server, s.io_timeout)?,
        dest_cons: HashMap::new(),
        out: WorkerOut::default(),
    };
    let scan = |cursor: u64| {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor).arg("COUNT").arg(s.scan_count);
        cmd
    };
    let mut page: Page = query(&scan(0), &mut w.con, &w.name, s.io_timeout)?;
    let mut returned: u64 = 0;
    loop {
        if shared.abort.load(Ordering::Relaxed) {
            break;
        }
        let (next, keys) = std::mem::take(&mut page);
        // SCAN may return a key twice: never count more than the server had.
        let before = returned.min(node.keys);
        returned += keys.len() as u64;
        let counted = returned.min(node.keys) - before;
        let mut groups: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
        for key in keys {
            let ti = plan.to.server_index_for(&key);
            let dest = plan.to_node[ti];
            if dest != src && !(mode == Mode::Move && plan.forbidden[dest]) {
                groups.entry(ti).or_default().push(key);
            }
        }
        for ks in groups.values_mut() {
            // A page can hold a key twice; EXISTS would count it twice.
            ks.sort_unstable();
            ks.dedup();
        }
        let mut stop = next == 0;
        match mode {
            Mode::Count => {
                w.out.scanned += counted;
                shared.scanned.fetch_add(counted, Ordering::Relaxed);
                for (ti, ks) in groups {
                    w.record(ti, ks.len() as u64);
                }
            }
            Mode::Verify => w.verify_page(groups)?,
            Mode::Move => {
                w.out.scanned += counted;
                shared.scanned.fetch_add(counted, Ordering::Relaxed);
                if let Some(budget) = &shared.budget {
                    let wanted: u64 = groups.values().map(|k| k.len() as u64).sum();
                    let granted = reserve(budget, wanted);
                    if granted < wanted {
                        shared.interrupted.store(true, Ordering::Relaxed);
                        stop = true;
                        let mut left = granted as usize;
                        for ks in groups.values_mut() {
                            ks.truncate(left);
                            left -= ks.len();
                        }
                        groups.retain(|_, ks| !ks.is_empty());
                    }
                }
                let mut dests: Vec<usize> = groups
                    .keys()
                    .map(|&ti| plan.to_node[ti])
                    .filter(|&d| same_server_db(plan, src, d).is_none())
                    .collect();
                dests.sort_unstable();
                dests.dedup();
                let reservation = if dests.is_empty() {
                    None
                } else {
                    match plan.traffic.reserve(src, dests, &shared.abort) {
                        Some(r) => Some(r),
                        None => break,
                    }
                };
                let next_page = w.move_page(groups, (!stop).then_some(next))?;
                drop(reservation);
                if let Some(p) = next_page {
                    page = p;
                    continue;
                }
            }
        }
        if stop {
            break;
        }
        page = query(&scan(next), &mut w.con, &w.name, s.io_timeout)?;
    }
    Ok(w.out)
}

/// Takes up to `wanted` from `budget`; returns how much was taken.
fn reserve(budget: &AtomicU64, wanted: u64) -> u64 {
    let mut current = budget.load(Ordering::Relaxed);
    loop {
        let take = current.min(wanted);
        match budget.compare_exchange(current, current - take, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return take,
            Err(actual) => current = actual,
        }
    }
}

fn dump_of(v: Option<&Value>) -> Result<Option<Vec<u8>>, String> {
    match v {
        Some(Value::BulkString(b)) => Ok(Some(b.clone())),
        Some(Value::Nil) => Ok(None),
        Some(Value::ServerError(e)) => Err(server_error_text(e)),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

impl Worker<'_> {
    fn dest(&self, ti: usize) -> &Server {
        &self.plan.to.servers()[ti]
    }

    fn record(&mut self, ti: usize, n: u64) {
        if n == 0 {
            return;
        }
        self.out.moved += n;
        self.shared.moved.fetch_add(n, Ordering::Relaxed);
        let pair = (self.name.clone(), self.dest(ti).name().to_string());
        *self.out.moves.entry(pair).or_default() += n;
    }

    fn conflict(&mut self, ti: usize, key: Vec<u8>) {
        self.shared.conflicts.fetch_add(1, Ordering::Relaxed);
        self.out.conflicts.push(Conflict {
            key: show_key(&key),
            raw_key: key,
            from: self.name.clone(),
            to: self.dest(ti).name().to_string(),
        });
    }

    fn dest_con(&mut self, ti: usize) -> RedisResult<&mut Connection> {
        if !self.dest_cons.contains_key(&ti) {
            let con = connect(&self.plan.to.servers()[ti], self.plan.settings.io_timeout)?;
            self.dest_cons.insert(ti, con);
        }
        Ok(self.dest_cons.get_mut(&ti).expect("just inserted"))
    }

    /// Explains a failure of the connection to the source while MIGRATEs to
    /// `dest_tis` were pending: a read that timed out is either the source
    /// stopped or a destination that does not answer (the source then waits
    /// the MIGRATE timeout for every queued batch). Each destination gets a
    /// `PING` on a new connection; one that does not answer is named.
    fn source_error(&self, e: RedisError, dest_tis: &[usize]) -> RedisError {
        let s = &self.plan.settings;
        if e.is_timeout() {
            return self.stall_error(dest_tis);
        }
        error(format!("{}; {RERUN}", describe(&self.name, &e, s.io_timeout)))
    }

    /// A read from the source timed out in the middle of a page.
    fn page_error(&self, e: RedisError, dest_tis: &[usize]) -> PageFailure {
        if e.is_timeout() {
            PageFailure::Stalled(dest_tis.to_vec())
        } else {
            PageFailure::Fatal(self.source_error(e, dest_tis))
        }
    }

    /// Names whoever stopped answering: a destination that does not
    /// answer `PING`, else the source.
    fn stall_error(&self, dest_tis: &[usize]) -> RedisError {
        let s = &self.plan.settings;
        for &ti in dest_tis {
            let dest = self.dest(ti);
            if !answers_ping(dest) {
                return error(format!(
                    "moving keys from {} to {}: {} does not answer (stopped or overloaded?); {}'s MIGRATE \
                     to it timed out after {} ms; {RERUN}",
                    self.name,
                    dest.name(),
                    dest.name(),
                    self.name,
                    s.timeout_ms
                ));
            }
        }
        error(format!(
            "{} did not answer within {} ms (stopped or overloaded? a key too large to move within \
             the MIGRATE timeout needs a larger --timeout-ms); {RERUN}",
            self.name,
            s.io_timeout.as_millis()
        ))
    }

    fn move_error(&self, ti: usize, e: &str) -> RedisError {
        let dest = self.dest(ti).name();
        let what = if e.starts_with("IOERR") {
            format!(
                "{dest} did not answer {}'s MIGRATE within {} ms ({e})",
                self.name, self.plan.settings.timeout_ms
            )
        } else {
            e.to_string()
        };
        error(format!("moving keys from {} to {dest}: {what}; {RERUN}", self.name))
    }

    /// Moves one page of keys (grouped by destination), all in one round
    /// trip together with the next `SCAN` page, which it returns.
    ///
    /// A MIGRATE that timed out while its destination still answers `PING`
    /// is transient (typically a client's MIGRATE in the opposite direction
    /// at the same moment: both servers wait for each other until the
    /// timeout): the page is tried again on a new connection, up to 3
    /// times. Keys the failed attempt did move are gone from the source
    /// (NOKEY), and copies it left on both servers are identical, so trying
    /// again is safe.
    fn move_page(&mut self, groups: BTreeMap<usize, Vec<Vec<u8>>>, next: Option<u64>) -> RedisResult<Option<Page>> {
        let mut attempt = 0;
        loop {
            match self.move_page_once(&groups, next) {
                Ok(page) => return Ok(page),
                Err(PageFailure::Fatal(e)) => return Err(e),
                Err(PageFailure::Timeout(ti, e)) => {
                    self.shared.journal.lost(&self.name);
                    if attempt == 3 || !answers_ping(self.dest(ti)) {
                        return Err(self.move_error(ti, &e));
                    }
                    attempt += 1;
                    self.shared.retries.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100 * attempt));
                    self.con = connect(&self.plan.nodes[self.src].server, self.plan.settings.io_timeout)?;
                }
                Err(PageFailure::Stalled(dest_tis)) => {
                    self.shared.journal.lost(&self.name);
                    // Either a destination stopped (the source then waits
                    // for it on every queued batch), or the source did, or
                    // the source was only slow. Name the one that stopped.
                    let source_answers = dest_tis.iter().all(|&ti| answers_ping(self.dest(ti)))
                        && answers_ping(&self.plan.nodes[self.src].server);
                    if attempt == 3 || !source_answers {
                        return Err(self.stall_error(&dest_tis));
                    }
                    attempt += 1;
                    self.shared.retries.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100 * attempt));
                    self.con = connect(&self.plan.nodes[self.src].server, self.plan.settings.io_timeout)?;
                }
            }
        }
    }

    fn move_page_once(
        &mut self,
        groups: &BTreeMap<usize, Vec<Vec<u8>>>,
        next: Option<u64>,
    ) -> Result<Option<Page>, PageFailure> {
        let s = &self.plan.settings;
        let mut pipe = redis::pipe();
        let mut batches: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
        let mut local: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
        for (&ti, keys) in groups {
            if same_server_db(self.plan, self.src, self.plan.to_node[ti]).is_some() {
                local.push((ti, keys.clone()));
                continue;
            }
            for chunk in keys.chunks(s.batch) {
                // EXISTS and MIGRATE in one transaction: the count of keys
                // MIGRATE moved is exact even with writers running.
                pipe.cmd("MULTI")
                    .cmd("EXISTS")
                    .arg(chunk)
                    .add_command(migrate_cmd(self.dest(ti), s.timeout_ms, false, chunk))
                    .cmd("EXEC");
                batches.push((ti, chunk.to_vec()));
            }
        }
        if let Some(cursor) = next {
            pipe.cmd("SCAN").arg(cursor).arg("COUNT").arg(s.scan_count);
        }
        // Read the replies one by one and stop at the first failed batch.
        // A source whose destination stopped answering spends the MIGRATE
        // timeout on every queued batch and may send no reply before the
        // last; a read that times out is therefore diagnosed (which server
        // does not answer) instead of blamed on the source.
        let dest_tis: Vec<usize> = {
            let mut v: Vec<usize> = batches.iter().map(|(ti, _)| *ti).collect();
            v.dedup();
            v
        };
        // The batches are in flight until their replies are read: a batch
        // whose reply is never seen stays in the journal.
        let in_flight: Vec<Vec<u8>> = batches.iter().flat_map(|(_, c)| c.iter().cloned()).collect();
        self.shared.journal.begin(&self.name, &in_flight)?;
        if !pipe.is_empty()
            && let Err(e) = self.con.send_packed_command(&pipe.get_packed_pipeline())
        {
            return Err(PageFailure::Fatal(self.source_error(e, &dest_tis)));
        }
        let mut busy_batches = Vec::new();
        for (ti, chunk) in batches {
            let mut exec = Ok(Value::Nil);
            for i in 0..4 {
                let v = match self.con.recv_response() {
                    Ok(v) => Ok(v),
                    Err(e) => match e.code() {
                        Some(code) => Err(format!("{code} {}", e.detail().unwrap_or(""))),
                        None => return Err(self.page_error(e, &dest_tis)),
                    },
                };
                if i == 3 {
                    exec = v;
                }
            }
            let exec = match exec {
                Ok(v) => v,
                Err(e) => return Err(self.move_error(ti, &e).into()),
            };
            let (existing, reply) = match &exec {
                Value::Array(items) if items.len() == 2 => {
                    let existing = match &items[0] {
                        Value::Int(n) => *n as u64,
                        _ => 0,
                    };
                    (existing, classify(&items[1]))
                }
                Value::ServerError(e) => (0, Reply::Err(server_error_text(e))),
                other => (0, Reply::Err(format!("unexpected reply {other:?}"))),
            };
            match reply {
                Reply::Ok => {
                    self.record(ti, existing);
                    self.shared.journal.end(&self.name, &chunk)?;
                }
                Reply::NoKey => self.shared.journal.end(&self.name, &chunk)?,
                Reply::Busy => {
                    self.shared.journal.answered(&self.name, &chunk);
                    busy_batches.push((ti, chunk, existing));
                }
                Reply::Err(e) if e.starts_with("IOERR") => return Err(PageFailure::Timeout(ti, e)),
                Reply::Err(e) => return Err(PageFailure::Fatal(self.move_error(ti, &e))),
            }
        }
        let page = match next {
            Some(_) => {
                let v = match self.con.recv_response() {
                    Ok(v) => v,
                    Err(e) => return Err(self.page_error(e, &dest_tis)),
                };
                Some(redis::from_redis_value(v).map_err(|e| error(format!("{}: SCAN: {e}", self.name)))?)
            }
            None => None,
        };
        for (ti, chunk, existing) in busy_batches {
            self.batch_fallback(ti, chunk, existing)?;
        }
        for (ti, keys) in local {
            let db = same_server_db(self.plan, self.src, self.plan.to_node[ti]);
            let mut busy = Vec::new();
            for key in keys {
                let dest = self.plan.to.servers()[ti].clone();
                match move_one(&mut self.con, &dest, db, &key, false, &self.plan.settings)
                    .map_err(|e| self.source_error(e, &[ti]))?
                {
                    Reply::Ok => self.record(ti, 1),
                    Reply::NoKey => {}
                    Reply::Busy => busy.push(key),
                    Reply::Err(e) => return Err(PageFailure::Fatal(self.move_error(ti, &e))),
                }
            }
            self.settle_busy(ti, busy)?;
        }
        Ok(page)
    }

    /// A batch failed with BUSYKEY. Redis 7 has already moved (and deleted
    /// from the source) every key of it whose RESTORE succeeded; find the
    /// rest and move them one by one.
    fn batch_fallback(&mut self, ti: usize, chunk: Vec<Vec<u8>>, existing: u64) -> RedisResult<()> {
        let s = &self.plan.settings;
        let mut pipe = redis::pipe();
        for k in &chunk {
            pipe.cmd("EXISTS").arg(k);
        }
        let v = pquery(&mut pipe, &mut self.con, &self.name, s.io_timeout)?;
        let chunk_keys = chunk.clone();
        let left: Vec<Vec<u8>> = chunk
            .into_iter()
            .zip(v)
            .filter(|(_, v)| !matches!(v, Value::Int(0)))
            .map(|(k, _)| k)
            .collect();
        self.record(ti, existing.saturating_sub(left.len() as u64));
        let gone: Vec<Vec<u8>> = chunk_keys.iter().filter(|k| !left.contains(k)).cloned().collect();
        self.shared.journal.end(&self.name, &gone)?;
        let mut pipe = redis::pipe();
        for k in &left {
            pipe.add_command(migrate_cmd(self.dest(ti), s.timeout_ms, false, std::slice::from_ref(k)));
        }
        self.shared.journal.begin(&self.name, &left)?;
        let v: Vec<Value> = match pipe.ignore_errors().query(&mut self.con) {
            Ok(v) => v,
            Err(e) => return Err(self.source_error(e, &[ti])),
        };
        let mut busy = Vec::new();
        for (k, v) in left.into_iter().zip(v) {
            match classify(&v) {
                Reply::Ok | Reply::NoKey => {
                    if matches!(classify(&v), Reply::Ok) {
                        self.record(ti, 1);
                    }
                    self.shared.journal.end(&self.name, std::slice::from_ref(&k))?;
                }
                Reply::Busy => {
                    self.shared.journal.answered(&self.name, std::slice::from_ref(&k));
                    busy.push(k);
                }
                Reply::Err(e) => return Err(self.move_error(ti, &e)),
            }
        }
        self.settle_busy(ti, busy)
    }

    /// Keys on both the source and the destination: byte-identical copies
    /// are the leftover of a timed-out MIGRATE and are resolved with
    /// MIGRATE REPLACE; others are conflicts, kept.
    fn settle_busy(&mut self, ti: usize, busy: Vec<Vec<u8>>) -> RedisResult<()> {
        if busy.is_empty() {
            return Ok(());
        }
        let s = &self.plan.settings;
        let dest_name = self.dest(ti).name().to_string();
        let mut pipe = redis::pipe();
        for k in &busy {
            pipe.cmd("DUMP").arg(k);
        }
        let here = pquery(&mut pipe, &mut self.con, &self.name, s.io_timeout)?;
        let io = s.io_timeout;
        let there = pquery(&mut pipe, self.dest_con(ti)?, &dest_name, io)?;
        let db = same_server_db(self.plan, self.src, self.plan.to_node[ti]);
        let dest = self.dest(ti).clone();
        for (i, key) in busy.into_iter().enumerate() {
            let a = dump_of(here.get(i)).map_err(|e| error(format!("{}: DUMP: {e}", self.name)))?;
            let b = dump_of(there.get(i)).map_err(|e| error(format!("{dest_name}: DUMP: {e}")))?;
            let uncertain = self.shared.journal.uncertain(&self.name, &key);
            let outcome = match (a, b) {
                (None, _) => {
                    self.shared.journal.end(&self.name, std::slice::from_ref(&key))?;
                    continue;
                }
                (Some(a), Some(b)) if a == b || uncertain => {
                    let r = move_one(&mut self.con, &dest, db, &key, true, &self.plan.settings)
                        .map_err(|e| self.source_error(e, &[ti]))?;
                    if matches!(r, Reply::Ok) {
                        self.out.leftovers += 1;
                    }
                    r
                }
                (Some(_), None) => move_one(&mut self.con, &dest, db, &key, false, &self.plan.settings)
                    .map_err(|e| self.source_error(e, &[ti]))?,
                (Some(_), Some(_)) => Reply::Busy,
            };
            match outcome {
                Reply::Ok | Reply::NoKey => {
                    if matches!(outcome, Reply::Ok) {
                        self.record(ti, 1);
                    }
                    self.shared.journal.end(&self.name, std::slice::from_ref(&key))?;
                }
                Reply::Busy => {
                    self.shared.journal.end(&self.name, std::slice::from_ref(&key))?;
                    self.conflict(ti, key);
                }
                Reply::Err(e) => return Err(self.move_error(ti, &e)),
            }
        }
        Ok(())
    }

    /// Verification: counts keys of this page away from their owner and
    /// lists the first ones, saying whether the owner has a copy too.
    fn verify_page(&mut self, groups: BTreeMap<usize, Vec<Vec<u8>>>) -> RedisResult<()> {
        let io = self.plan.settings.io_timeout;
        for (ti, keys) in groups {
            self.out.misplaced += keys.len() as u64;
            let room = MISPLACED_LISTED.saturating_sub(self.out.misplaced_keys.len());
            if room == 0 {
                continue;
            }
            let listed = &keys[..keys.len().min(room)];
            let owner = self.dest(ti).name().to_string();
            let mut pipe = redis::pipe();
            for k in listed {
                pipe.cmd("EXISTS").arg(k);
            }
            let v = pquery(&mut pipe, self.dest_con(ti)?, &owner, io)?;
            for (k, v) in listed.iter().zip(v) {
                self.out.misplaced_keys.push(Misplaced {
                    key: show_key(k),
                    on: self.name.clone(),
                    owner: owner.clone(),
                    on_both: matches!(v, Value::Int(n) if n > 0),
                });
            }
        }
        Ok(())
    }
}

/// Counts keys that are not where `config` places them, over the servers of
/// `config` and `others` (each distinct server once). 0 means every key is
/// in place.
pub fn verify(config: &MRedis, others: &MRedis) -> RedisResult<u64> {
    let io_timeout = Duration::from_secs(10);
    let (nodes, cons, to_node) = identify(others, config, io_timeout)?;
    drop(cons);
    let plan = MovePlan {
        traffic: Traffic::new(nodes.len()),
        forbidden: vec![false; nodes.len()],
        nodes,
        to: config,
        to_node,
        settings: Settings {
            timeout_ms: 5000,
            io_timeout,
            batch: 100,
            scan_count: 1000,
        },
    };
    let out = run_workers(
        &plan,
        &Shared::default(),
        Mode::Verify,
        &mut |_| {},
        &mut Progress::default(),
    )?;
    Ok(out.misplaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_shared_and_never_exceeded() {
        let budget = AtomicU64::new(10);
        assert_eq!(reserve(&budget, 4), 4);
        assert_eq!(reserve(&budget, 10), 6);
        assert_eq!(reserve(&budget, 1), 0);
    }

    #[test]
    fn opposite_migrations_never_overlap() {
        let traffic = Traffic::new(3);
        let abort = AtomicBool::new(false);
        let a_to_b = traffic.reserve(0, vec![1], &abort).unwrap();
        // C may migrate into B at the same time...
        let c_to_b = traffic.reserve(2, vec![1], &abort).unwrap();
        drop(c_to_b);
        // ...but B may not migrate into A (or anywhere) meanwhile: it waits,
        // and gives up when the run aborts.
        let stop = AtomicBool::new(true);
        assert!(traffic.reserve(1, vec![0], &stop).is_none());
        assert!(traffic.reserve(1, vec![2], &stop).is_none());
        drop(a_to_b);
        assert!(traffic.reserve(1, vec![0], &abort).is_some());
    }

    #[test]
    fn migrate_replies() {
        assert!(matches!(classify(&Value::Okay), Reply::Ok));
        assert!(matches!(classify(&Value::SimpleString("NOKEY".into())), Reply::NoKey));
        let parse = |resp: &[u8]| redis::parse_redis_value(resp).unwrap();
        let busy = parse(b"-ERR Target instance replied with error: BUSYKEY Target key name already exists.\r\n");
        assert!(matches!(classify(&busy), Reply::Busy), "{busy:?}");
        let timeout = parse(b"-IOERR error or timeout reading to target instance\r\n");
        assert!(matches!(classify(&timeout), Reply::Err(e) if e.starts_with("IOERR")));
    }
}
