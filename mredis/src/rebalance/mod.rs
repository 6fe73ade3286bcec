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
//! # Shards with replicas
//!
//! When a server of either configuration is a shard with replicas or a
//! Sentinel master ([`Server::with_replicas`], [`Server::sentinel`]),
//! keys do not move with `MIGRATE`, which deletes the source's copy as
//! soon as the destination's primary has it: a failover of the
//! destination before its replica had the key would lose it, and one of
//! the source before its replica had the delete would bring an old copy
//! back while clients write the new one. Each batch moves instead in steps
//! that the shard's replicas acknowledge (`WAIT` for every replica the
//! shard lists) before the next:
//!
//! 1. on the source, the keys are marked as moving (the hash
//!    `__mredis:moving`: key -> move id) and dumped (`DUMP`, `PEXPIRETIME`);
//!    migration-aware clients' calls on a marked key wait and ask again
//!    (every few ms, at most 10 s, then a `TRYAGAIN` error that says a
//!    rebalance stopped in the middle);
//! 2. on the destination, one script restores them and notes their
//!    arrival (`__mredis:arrived`: key -> move id);
//! 3. on the source, each key whose mark is still this move's is deleted
//!    with its mark;
//! 4. on the destination, the arrivals are forgotten.
//!
//! A failover at any step leaves each key unmarked on the source (clients
//! use it there; the copy a destination may hold is replaced on the next
//! attempt), marked on the source (clients wait), or only on the
//! destination. A worker whose source or destination fails waits (up to
//! 60 s) until both answer on their current primaries, completes the moves
//! left marked (skipping the copy when the destination noted its arrival
//! with the same move id), and scans again. A key already on the
//! destination is a leftover when its bytes are the same or the journal
//! says an earlier attempt may have left it (replaced), else a conflict
//! (unmarked, kept on both, listed). A step whose `WAIT` falls short (a
//! replica down or far behind) unmarks its keys, which stay where clients
//! find them; after a few attempts the run stops with an error naming the
//! shard, and a rerun continues. Each step first checks that neither side
//! changed primary since its connection was opened (a stopped primary that
//! resumes must not be moved from). Expiries move as deadlines
//! (`PEXPIRETIME`, `RESTORE ... ABSTTL`). The two bookkeeping keys, `__mredis:moving`
//! and `__mredis:arrived`, are never moved; the notes of arrival are
//! deleted once a run has verified every key in place.
//!
//! # Concurrency
//!
//! One thread per distinct server scans it and moves its keys. A server
//! running `MIGRATE` is blocked until its destination answers, so two
//! servers migrating into each other at the same time would wait for each
//! other until the timeout; a round trip from X to Y therefore only starts
//! while nobody migrates into X and Y migrates to nobody.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::{ErrorKind, RedisError, RedisResult};

use crate::MRedis;
use crate::driver::Driver;
use crate::routing::show_key;
use crate::server::Server;

pub mod census;
mod servers;
mod worker;

use crate::mover::{
    Counters, Journal, Mover, Page, RERUN, Reply, Resolve, Settings, connect, describe, durable, error, is_bookkeeping,
    move_one, pquery, query,
};
use servers::*;
use worker::*;

/// A progress callback, called from the calling thread about every 100 ms
/// and at the end of each phase.
pub type ProgressFn = Box<dyn FnMut(&Progress)>;

/// Called once, before anything is discarded, with every copy that
/// [`RebalanceOptions::prefer`] is about to discard.
pub type DiscardFn = Box<dyn FnMut(&[Discard])>;

/// Which copy wins when a key is on both its source and its destination
/// with different contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Prefer {
    /// Keep the copy on the source (the old owner): it replaces the
    /// destination's (`MIGRATE ... REPLACE`).
    Source,
    /// Keep the copy on the destination (the new owner): the source's copy
    /// is deleted (`DEL`).
    Destination,
}

/// Options of a rebalance run.
///
/// Build it with `..Default::default()` after the fields you set: fields
/// are added in minor releases, each with a default that keeps the
/// behaviour you had. (Not `#[non_exhaustive]`, which would forbid that
/// struct expression.)
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
    /// Run without the census (see [`census`]): move even while clients
    /// that are not migration-aware for this move are connected.
    pub skip_census: bool,
    /// How the census decides (unknown connections, waiting).
    pub census: census::CensusOptions,
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
            .field("skip_census", &self.skip_census)
            .field("census", &self.census)
            .finish_non_exhaustive()
    }
}

/// What a run is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
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
#[non_exhaustive]
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
#[non_exhaustive]
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
#[non_exhaustive]
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
#[non_exhaustive]
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
#[non_exhaustive]
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
    /// The census taken before anything moved (`None` with
    /// [`RebalanceOptions::skip_census`]). In a dry run it is taken and
    /// reported, never refused.
    pub census: Option<census::Census>,
    /// The census taken again before the final verification.
    pub census_after: Option<census::Census>,
    /// The move was verified complete and the finish marker left on the
    /// new configuration's servers: migration-aware clients of this move
    /// stop their migration checks (see [`crate::finish`]).
    pub finished: bool,
    /// Servers that refused the finish marker, and why (servers before
    /// Redis 7.0, a user without `FUNCTION`).
    pub finish_refused: Vec<String>,
    /// Servers that refused the fence of the old configuration, and why
    /// (servers before Redis 7.0, a user without `FUNCTION`): a client of
    /// the old configuration that connects to them is not refused (see
    /// the crate's fencing docs in the README); only the census guards.
    pub fence_refused: Vec<String>,
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

struct MovePlan<'a> {
    nodes: Vec<Node>,
    to: &'a MRedis,
    /// `to`'s servers (as they were when the plan was made).
    to_servers: Vec<Server>,
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
    counters: Counters,
    abort: AtomicBool,
    interrupted: AtomicBool,
    budget: Option<AtomicU64>,
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

/// Moves every key of the fleet to where `to` places it.
///
/// `from` is the configuration the data was written with; servers of `to`
/// that `from` lacks are scanned too, so running again after an
/// interruption finishes the job. Returns what was done; errors name the
/// server and are safe to retry (see the [module docs](self)).
pub fn rebalance(from: &MRedis, to: &MRedis, mut options: RebalanceOptions) -> RedisResult<RebalanceReport> {
    let settings = Settings::new(
        options.migrate_timeout_ms.unwrap_or(5000),
        options.batch_size.unwrap_or(100),
        options.scan_count.unwrap_or(1000),
    );
    let io_timeout = settings.io_timeout;
    let ((from_servers, from_fp), (to_servers, to_fp)) = (census_view(from), census_view(to));
    let fleets = ((&from_servers[..], &from_fp[..]), (&to_servers[..], &to_fp[..]));
    // The clients given here are the tool's: their idle connections are
    // not counted (one busy with a call is, as any other client's).
    let own = || {
        let mut ids = crate::client::idle_connection_ids(from);
        ids.extend(crate::client::idle_connection_ids(to));
        ids
    };
    let first_census = if options.skip_census {
        None
    } else if options.dry_run {
        Some(census::take(
            fleets.0,
            fleets.1,
            &own(),
            &options.census.client_users,
            io_timeout,
        )?)
    } else {
        Some(census::until_clear(
            fleets.0,
            fleets.1,
            census::Stage::BeforeMove,
            &options.census,
            &own,
            io_timeout,
        )?)
    };
    let (nodes, mut cons, to_node) = identify(from, to, io_timeout)?;
    let mut plan = MovePlan {
        traffic: Traffic::new(nodes.len()),
        forbidden: vec![false; nodes.len()],
        nodes,
        to,
        to_servers: to.servers(),
        to_node,
        settings,
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
        census: first_census,
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

    if !options.dry_run {
        // A marker of an earlier run of a move must not be taken for this
        // run's (see `crate::finish`).
        for (n, con) in cons.iter_mut().enumerate() {
            crate::finish::clear(con).map_err(|e| {
                error(format!(
                    "cannot delete the finish markers of earlier runs: {}",
                    describe(plan.nodes[n].name(), &e, io_timeout)
                ))
            })?;
        }
    }

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

    // The fence: from here on, a client of the old configuration that
    // opens a connection is refused (see `crate::fence`); the new
    // configuration's own fence, left by a move away from it earlier, goes.
    if !options.dry_run && from_fp != to_fp {
        for node in &plan.nodes {
            let mut con = connect(&node.server, io_timeout)?;
            let _: RedisResult<redis::Value> = crate::fence::lower(&to_fp).query(&mut con);
            if let Err(e) = crate::fence::raise(&from_fp, &to_fp).query::<String>(&mut con) {
                report.fence_refused.push(describe(node.name(), &e, io_timeout));
            }
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
    report.retries = shared.counters.retries.load(Ordering::Relaxed);
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

    // Verification, after a second census: a client on the old (or a
    // third) configuration that connected while keys moved may have
    // written where they no longer are.
    if !options.skip_census {
        report.census_after = Some(census::until_clear(
            fleets.0,
            fleets.1,
            census::Stage::BeforeVerify,
            &options.census,
            &own,
            io_timeout,
        )?);
    }
    progress.phase = Phase::Verifying;
    let shared = Shared::default();
    let checked = run_workers(&plan, &shared, Mode::Verify, &mut tick, &mut progress)?;
    report.misplaced = checked.misplaced;
    report.misplaced_keys = checked.misplaced_keys;
    if report.misplaced == 0 && report.conflicts.is_empty() && !report.interrupted {
        shared_journal.finish();
        // The finish marker: migration-aware clients of this move stop
        // their migration checks.
        // A server that refuses it (before 7.0, or no FUNCTION for this
        // user) leaves the clients doing their checks: `finished` false.
        let library = crate::finish::marker(&from_fp, &to_fp);
        let dests: BTreeSet<usize> = plan.to_node.iter().copied().collect();
        let mut left = 0;
        for &n in &dests {
            let mut con = connect(&plan.nodes[n].server, io_timeout)?;
            match crate::finish::leave(&library).query::<String>(&mut con) {
                Ok(_) => left += 1,
                Err(e) => report
                    .finish_refused
                    .push(describe(plan.nodes[n].name(), &e, io_timeout)),
            }
        }
        report.finished = left == dests.len();
        if durable(plan.nodes.iter().map(|n| &n.server)) {
            // Every key is in place: the arrival notes (only read to resume
            // a marked move; a killed run leaves some) can go. One that a
            // concurrent run still needed costs it an identical copy.
            for node in &plan.nodes {
                if let Ok(mut con) = connect(&node.server, io_timeout) {
                    let _: RedisResult<i64> = redis::cmd("DEL").arg(crate::mover::ARRIVED).query(&mut con);
                }
            }
        }
    }
    Ok(report)
}

/// A configuration's servers and fingerprint, from one snapshot.
fn census_view(mr: &MRedis) -> (Vec<Server>, String) {
    let fleet = mr.fleet();
    (
        fleet.core().current_servers().to_vec(),
        fleet.core().fingerprint.clone(),
    )
}

/// Takes the census of the clients connected to the servers of `from`
/// and `to` (primaries, and the replicas their shards list): which
/// configuration each mredis client runs, and the connections that are not
/// mredis clients. See [`census`](mod@census) for what a rebalance
/// refuses.
pub fn take_census(from: &MRedis, to: &MRedis) -> RedisResult<census::Census> {
    let mut own = crate::client::idle_connection_ids(from);
    own.extend(crate::client::idle_connection_ids(to));
    let ((from_servers, from_fp), (to_servers, to_fp)) = (census_view(from), census_view(to));
    census::take(
        (&from_servers, &from_fp),
        (&to_servers, &to_fp),
        &own,
        &[],
        Duration::from_secs(10),
    )
}

/// Keeps one side of a conflict.
fn resolve(plan: &MovePlan, c: &Conflict, prefer: Prefer) -> RedisResult<()> {
    let io = plan.settings.io_timeout;
    let ti = plan.to.server_index_for(&c.raw_key);
    let dest = &plan.to_servers[ti];
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
                progress.moved = shared.counters.moved.load(Ordering::Relaxed);
                progress.conflicts = shared.counters.conflicts.load(Ordering::Relaxed);
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
        let moved = shared.counters.moved.load(Ordering::Relaxed);
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
        to_servers: config.servers(),
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
}
