//! The sync client. Each server has a small pool of idle connections; a
//! call takes one (or opens one, on the calling thread, so a refused
//! connection fails at once) and gives it back when the exchange ended
//! cleanly. Calls on several servers write every request first and then
//! read every reply, on the calling thread, under one deadline for the
//! whole call. The routed methods are generated from `commands.toml`; this
//! file holds the I/O they end in.
//!
//! # Idle connections the server closed
//!
//! A pooled connection may have been closed by the server while it sat in
//! the pool (a restart, the server's idle `timeout`, `CLIENT KILL`).
//! redis-rs's `Connection` gives no access to its socket (no peek without
//! a round trip) and `is_open` turns false only after a failed read, so
//! such a connection is found by using it. When a request fails on a
//! connection taken from the pool with end of file, a reset or a broken
//! pipe (never a timeout), every idle connection of that server is dropped,
//! and the request is sent again, once, on a new connection, if that
//! cannot run it twice:
//!
//! - the write failed: nothing reached a live server (a pipeline written
//!   in part only if it is one command: an incomplete command never runs);
//! - the write succeeded but no reply came: the server may have read and
//!   run it before it went away, so it is sent again only if every command
//!   is read-only by the command table (`access = "read"`) and none blocks.
//!
//! Before that, a connection that sat in the pool for a second or more is
//! checked with a PING when it is taken (a client that reuses its
//! connections sooner never pays the round trip), and replaced, with the
//! rest of the pool, when the check fails. So after a restart or an idle
//! timeout, reads see no error, and neither do writes made once the pool
//! had been idle a second; a write that meets a dead connection used within
//! the last second fails once (the pool is emptied then), and the calls
//! after it get new connections. A reply begun and cut, a timeout,
//! or a failure on a connection opened for the call is never retried.
//!
//! # Blocking commands
//!
//! A blocking command (BLPOP, XREAD BLOCK, ...; the table's `block` field)
//! runs on a pooled connection whose read timeout, for that call, is the
//! block time plus the response timeout (none for a block time of 0). A
//! call that times out drops its connection: closed, the server unblocks
//! that client and pops nothing more for it; an element is lost only if
//! the server popped it and its reply was still in flight when the
//! deadline passed (a server a whole response timeout late).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::{Cmd, Connection, ConnectionLike, FromRedisValue, RedisError, RedisResult, Value};

use crate::background::Running;
use crate::connect::{Clients, Kind};
use crate::driver::Driver;
use crate::error::client_error;
use crate::exec::{Cmds, Held, Machine, Request, Step, closed, read_only};
use crate::options::{Options, ReadFrom};
use crate::per_server::{FanOutError, PerServer};
use crate::replicas::{ReplicaSet, ShardPlan, Target};
use crate::routing::{Lineage, Move, Route, Topology, name_server};
use crate::server::{IntoServer, Server, collect_servers};
use crate::telemetry::Span;

/// A server's pool as one configuration ([`Fleet`]) uses it: the
/// connections, shared with the configurations before and after it while
/// the server stays ([`Conns`]), and this configuration's own limits.
pub(crate) struct Pool {
    conns: Arc<Conns>,
    /// The server as this configuration names it (errors).
    server: Server,
    max_idle: usize,
    connect_timeout: Duration,
    response_timeout: Option<Duration>,
}

/// The connections of one server, kept across
/// [`reconfigure`](crate::MRedis::reconfigure) while the server stays (the
/// same address, database, user and password).
pub(crate) struct Conns {
    server: Server,
    /// The redis-rs clients for the server's current address (made on
    /// first use; made anew when a Sentinel shard's primary changes), and
    /// the address epoch they are for.
    clients: Mutex<Option<Clients>>,
    /// The address epoch of the idle connections.
    epoch: std::sync::atomic::AtomicU64,
    /// The client's, which counts the connections opened.
    lineage: Arc<Lineage>,
    /// False while the last attempt to open a connection failed at the
    /// transport (refused, unreachable, no answer in time); true again
    /// once one opens or an exchange ends cleanly.
    reachable: std::sync::atomic::AtomicBool,
    /// The name connections give themselves and the socket timeout they
    /// keep, as the newest configuration says, with its generation.
    naming: RwLock<Naming>,
    /// `naming`'s generation, for the check at every checkout (one load).
    generation: AtomicU64,
    /// Idle connections, with when each was given back.
    idle: Mutex<Vec<(Pooled, Instant)>>,
}

/// What a connection of a [`Conns`] is set to (see [`Conns::naming`]).
struct Naming {
    generation: u64,
    name: Option<String>,
    response_timeout: Option<Duration>,
}

/// A pooled connection and the naming generation it carries (an older one
/// is renamed, `CLIENT SETNAME`, before it is used or kept again).
pub(crate) struct Pooled {
    con: Connection,
    generation: u64,
}

impl std::ops::Deref for Pooled {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.con
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.con
    }
}

/// How long a pooled connection may sit idle before it is checked (PING)
/// on its next use: after a server restart, calls made once the pool has
/// been idle this long find no dead connection.
const CHECK_AFTER: Duration = Duration::from_secs(1);

impl Conns {
    fn new(
        server: &Server,
        name: Option<String>,
        response_timeout: Option<Duration>,
        lineage: Arc<Lineage>,
    ) -> RedisResult<Conns> {
        let clients = match server.shard() {
            // A Sentinel shard's primary may not be known yet.
            Some(_) => None,
            None => Some(Clients::of(server)?),
        };
        Ok(Conns {
            server: server.clone(),
            clients: Mutex::new(clients),
            epoch: AtomicU64::new(server.epoch()),
            lineage,
            reachable: std::sync::atomic::AtomicBool::new(true),
            naming: RwLock::new(Naming {
                generation: 0,
                name,
                response_timeout,
            }),
            generation: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The current naming generation and name.
    fn name(&self) -> (u64, Option<String>) {
        let n = self.naming.read().unwrap_or_else(|p| p.into_inner());
        (n.generation, n.name.clone())
    }

    /// Gives every connection a new name (and socket timeout): the idle
    /// ones now, each within `within` (one deadline for all of them; one
    /// that fails is dropped), the ones in use when they are given back or
    /// taken next, and new ones when they open.
    pub(crate) fn rename(
        &self,
        name: Option<String>,
        response_timeout: Option<Duration>,
        within: Duration,
        max_idle: usize,
    ) {
        {
            let mut n = self.naming.write().unwrap_or_else(|p| p.into_inner());
            n.generation += 1;
            n.name = name;
            n.response_timeout = response_timeout;
            self.generation.store(n.generation, Ordering::Release);
        }
        let mut idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        // The newest kept: a smaller pool size drops the rest.
        if idle.len() > max_idle {
            idle.drain(..idle.len() - max_idle);
        }
        let deadline = Instant::now() + within;
        let (generation, name) = self.name();
        let (pipe, checks) = crate::fence::renaming(name.as_deref());
        let packed = pipe.get_packed_pipeline();
        // Every rename written first, then every reply read.
        let sent: Vec<(Pooled, Instant)> = idle
            .into_iter()
            .filter_map(|(mut p, since)| {
                p.con.send_packed_command(&packed).ok()?;
                Some((p, since))
            })
            .collect();
        let mut kept = Vec::with_capacity(sent.len());
        for (mut p, since) in sent {
            let renamed = read_rename(&mut p.con, pipe.len(), deadline, |replies| {
                checks.verdict(name.as_deref(), &replies[checks.first..]).is_ok()
            });
            if renamed && self.set_timeouts(&mut p.con) {
                p.generation = generation;
                kept.push((p, since));
            }
        }
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).extend(kept);
    }

    /// Sets a connection's socket timeouts to the newest configuration's.
    fn set_timeouts(&self, con: &mut Connection) -> bool {
        let timeout = self.naming.read().unwrap_or_else(|p| p.into_inner()).response_timeout;
        con.set_read_timeout(timeout).is_ok() && con.set_write_timeout(timeout).is_ok()
    }

    /// Renames a connection of an older naming generation (one round
    /// trip, within `budget`); false if it failed on the way (it is then
    /// dropped). A refusal (an ACL without `CLIENT`) leaves it as it is.
    fn refresh(&self, p: &mut Pooled, budget: Duration) -> bool {
        let (generation, name) = self.name();
        let deadline = Instant::now() + budget.max(Duration::from_millis(1));
        let (pipe, checks) = crate::fence::renaming(name.as_deref());
        let ok = p.con.send_packed_command(&pipe.get_packed_pipeline()).is_ok()
            && read_rename(&mut p.con, pipe.len(), deadline, |replies| {
                checks.verdict(name.as_deref(), &replies[checks.first..]).is_ok()
            })
            && self.set_timeouts(&mut p.con);
        if ok {
            p.generation = generation;
        }
        ok
    }

    /// Whether a connection carries the current name.
    #[inline]
    fn current(&self, p: &Pooled) -> bool {
        p.generation == self.generation.load(Ordering::Acquire)
    }
}

/// Reads the `count` replies of a rename ([`crate::fence::renaming`])
/// sent on `con` before `deadline`; whether they all came and `accept`s
/// them (false: a configuration retired meanwhile, or the connection is
/// broken; it is dropped, and a new one reports why).
fn read_rename(con: &mut Connection, count: usize, deadline: Instant, accept: impl Fn(&[Value]) -> bool) -> bool {
    let mut replies = Vec::with_capacity(count);
    for _ in 0..count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || con.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match con.recv_response() {
            Ok(v) => replies.push(v),
            Err(_) => return false,
        }
    }
    accept(&replies)
}

impl Pool {
    fn new(server: &Server, options: &Options, name: Option<String>, lineage: Arc<Lineage>) -> RedisResult<Pool> {
        let conns = Conns::new(server, name, options.response_timeout, lineage)?;
        Ok(Pool::with(Arc::new(conns), server, options))
    }

    /// This configuration's pool over connections kept from the one before.
    fn with(conns: Arc<Conns>, server: &Server, options: &Options) -> Pool {
        Pool {
            conns,
            server: server.clone(),
            max_idle: options.pool_size as usize,
            connect_timeout: options.connect_timeout,
            response_timeout: options.response_timeout,
        }
    }

    /// An idle connection, or a new one opened now.
    fn get(&self) -> RedisResult<Pooled> {
        self.get_within(self.connect_timeout)
    }

    /// The same, spending at most `budget` on opening one (the rest of a
    /// call's deadline).
    fn get_within(&self, budget: Duration) -> RedisResult<Pooled> {
        self.take(budget).map(|(con, _)| con)
    }

    /// An idle connection (`true`: it was in the pool, and may have been
    /// closed by the server while it sat there) or a new one (`false`).
    fn take(&self, budget: Duration) -> RedisResult<(Pooled, bool)> {
        self.follow_epoch();
        let idle = self.conns.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some((mut con, since)) = idle {
            if !self.conns.current(&con) {
                // Named after an older configuration: renamed first (the
                // round trip checks it too).
                if self.conns.refresh(&mut con, budget) {
                    return Ok((con, true));
                }
                self.clear();
                return self.fresh(budget).map(|con| (con, false));
            }
            // One that sat idle a while may have been closed by a restart:
            // a PING first (a busy client, reusing its connections within
            // `CHECK_AFTER`, never pays for it).
            if since.elapsed() < CHECK_AFTER {
                return Ok((con, true));
            }
            // Within what is left of the call's budget, not a whole
            // response timeout (a stopped server costs one deadline).
            let alive = con.set_read_timeout(Some(budget.max(Duration::from_millis(1)))).is_ok()
                && con.check_connection()
                && con.set_read_timeout(self.response_timeout).is_ok();
            if alive {
                return Ok((con, true));
            }
            self.clear();
        }
        self.fresh(budget).map(|con| (con, false))
    }

    /// A connection opened now, whatever is idle.
    fn fresh(&self, budget: Duration) -> RedisResult<Pooled> {
        let timeout = self.connect_timeout.min(budget).max(Duration::from_millis(1));
        let started = Instant::now();
        let con = self.open(timeout).map_err(|e| {
            if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() {
                self.conns.reachable.store(false, Ordering::Relaxed);
            }
            crate::error::name_server_after(&self.server, e, Some(started.elapsed()), None)
        })?;
        self.conns.reachable.store(true, Ordering::Relaxed);
        con.set_read_timeout(self.response_timeout)?;
        con.set_write_timeout(self.response_timeout)?;
        Ok(con)
    }

    /// Drops every idle connection: one of them was found closed by the
    /// server (a restart, `timeout`, CLIENT KILL), and the others, as old,
    /// most likely are too.
    fn clear(&self) {
        self.conns.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The shard's address changed (a failover): idle connections, to the
    /// old address, are dropped, and clients for the new one made on the
    /// next open. One atomic load when nothing changed.
    #[inline]
    fn follow_epoch(&self) {
        let conns = &self.conns;
        let now = conns.server.epoch();
        if now != conns.epoch.load(Ordering::Acquire) {
            self.clear();
            *conns.clients.lock().unwrap_or_else(|p| p.into_inner()) = None;
            conns.epoch.store(now, Ordering::Release);
        }
    }

    /// The clients for the current address.
    fn clients(&self) -> RedisResult<Clients> {
        let mut slot = self.conns.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let made = Clients::of(&self.conns.server)?;
        *slot = Some(made.clone());
        Ok(made)
    }

    /// A new connection: TCP (and TLS) and the setup commands all within
    /// `timeout`, named as the newest configuration says.
    fn open(&self, timeout: Duration) -> RedisResult<Pooled> {
        let clients = self.clients()?;
        // The generation read with the name: a rename after this renames
        // the connection again when it is next used or kept.
        let (generation, name) = self.conns.name();
        let con = crate::connect::open_with(
            &clients,
            Kind::Pooled,
            name.as_deref(),
            timeout,
            self.response_timeout,
            &self.conns.lineage.opened,
        )?;
        Ok(Pooled { con, generation })
    }

    /// Keeps a connection whose last exchange ended cleanly, unless the
    /// shard's address changed since the call began (`epoch`). One named
    /// after an older configuration is renamed first.
    fn put(&self, mut con: Pooled, epoch: u64) {
        if !con.is_open() || epoch != self.conns.server.epoch() {
            return;
        }
        self.conns.reachable.store(true, Ordering::Relaxed);
        if !self.conns.current(&con) && !self.conns.refresh(&mut con, self.connect_timeout) {
            return;
        }
        let mut idle = self.conns.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push((con, Instant::now()));
        }
    }
}

impl Pool {
    /// The server's ids (`CLIENT ID`) of the connections idle in the pool
    /// now; one that does not answer is dropped.
    fn idle_ids(&self) -> Vec<u64> {
        let mut idle = self.conns.idle.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids = Vec::new();
        idle.retain_mut(|(p, _)| match redis::cmd("CLIENT").arg("ID").query::<u64>(&mut p.con) {
            Ok(id) => {
                ids.push(id);
                true
            }
            Err(_) => false,
        });
        ids
    }
}

/// The ids of the connections idle in `mr`'s pools, per server name (the
/// census does not count a rebalance's own clients).
pub(crate) fn idle_connection_ids(mr: &MRedis) -> Vec<(String, u64)> {
    let fleet = mr.fleet();
    let mut out = Vec::new();
    for (i, pool) in fleet.pools.iter().enumerate() {
        for id in pool.idle_ids() {
            out.push((fleet.core.name(i).to_string(), id));
        }
    }
    out
}

/// A primary's pool or a replica's.
pub(crate) enum PoolRef<'a> {
    Primary(&'a Pool),
    Replica(Arc<Pool>),
}

impl std::ops::Deref for PoolRef<'_> {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        match self {
            PoolRef::Primary(p) => p,
            PoolRef::Replica(p) => p,
        }
    }
}

/// A request to one server: packed bytes and how many replies it gets.
pub(crate) struct Job<'a> {
    pub(crate) server: usize,
    pub(crate) packed: &'a [u8],
    pub(crate) replies: usize,
}

/// Several Redis servers behaving like one (sync).
///
/// Every single-key command goes to the server that owns the key; server-wide
/// commands go to every server and return a [`PerServer`]; multi-key commands
/// are split by server where that is safe. Method names and signatures are
/// those of redis-rs's `Commands`, with `&self` instead of `&mut self`.
///
/// Cheap to clone; clones (and [`reading_from`](Self::reading_from) views)
/// share the connections and the configuration, which
/// [`reconfigure`](Self::reconfigure) switches for all of them at once.
///
/// ```no_run
/// # fn main() -> redis::RedisResult<()> {
/// let mr = mredis::MRedis::new([("localhost", 6379, 0), ("localhost", 6380, 0)])?;
/// mr.set::<_, _, ()>("key", 42)?;
/// let v: Option<i64> = mr.get("key")?;
/// let keys: mredis::PerServer<Vec<String>> = mr.keys("key*")?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MRedis {
    live: Arc<Live<Fleet>>,
    /// [`MRedis::reading_from`]'s policy, over the configuration's.
    read_from: Option<ReadFrom>,
}

/// The configuration in force, shared by a client and every clone of it:
/// each call takes one snapshot ([`MRedis::fleet`]) and runs on it to the
/// end; [`reconfigure`](MRedis::reconfigure) swaps it.
pub(crate) struct Live<F> {
    pub(crate) fleet: arc_swap::ArcSwap<F>,
    /// Held while a reconfiguration builds and renames, so two run one
    /// after the other (the last one's names win, as its fleet does).
    pub(crate) switching: Mutex<()>,
    /// The configuration in force, for the subscribers that follow it.
    pub(crate) topology: tokio::sync::watch::Sender<Arc<Running>>,
}

impl<F> Live<F> {
    pub(crate) fn new(fleet: F, running: Arc<Running>) -> Arc<Live<F>> {
        Arc::new(Live {
            fleet: arc_swap::ArcSwap::from_pointee(fleet),
            switching: Mutex::new(()),
            topology: tokio::sync::watch::Sender::new(running),
        })
    }
}

/// One call's view of the configuration: the one in force when it began
/// (with a [`reading_from`](MRedis::reading_from) view's policy).
pub(crate) enum Snapshot<F> {
    Live(Arc<F>),
    Viewed(F),
}

/// A fleet that a [`reading_from`](MRedis::reading_from) view can copy
/// with a read policy of its own (the sync and the async client's).
pub(crate) trait Viewable: Clone {
    fn read_from(&self) -> ReadFrom;
    fn set_read_from(&mut self, policy: ReadFrom);
}

impl<F: Viewable> Snapshot<F> {
    /// The configuration in `live` for one call, under the view's policy
    /// (`view`, if it has one of its own).
    #[inline]
    pub(crate) fn of(live: &arc_swap::ArcSwap<F>, view: Option<ReadFrom>) -> Snapshot<F> {
        let fleet = live.load_full();
        match view {
            Some(policy) if policy != fleet.read_from() => {
                let mut own = F::clone(&fleet);
                own.set_read_from(policy);
                Snapshot::Viewed(own)
            }
            _ => Snapshot::Live(fleet),
        }
    }
}

impl Viewable for Fleet {
    fn read_from(&self) -> ReadFrom {
        self.read_from
    }
    fn set_read_from(&mut self, policy: ReadFrom) {
        self.read_from = policy;
    }
}

impl<F: Clone> Clone for Snapshot<F> {
    fn clone(&self) -> Self {
        match self {
            Snapshot::Live(f) => Snapshot::Live(f.clone()),
            Snapshot::Viewed(f) => Snapshot::Viewed(f.clone()),
        }
    }
}

impl<F> std::ops::Deref for Snapshot<F> {
    type Target = F;
    #[inline]
    fn deref(&self) -> &F {
        match self {
            Snapshot::Live(f) => f,
            Snapshot::Viewed(f) => f,
        }
    }
}

/// One sync call's view of the configuration: the one in force when it
/// began, held by an `arc_swap` guard (no shared reference count touched,
/// so calls on many threads do not contend), or a snapshot for a
/// [`reading_from`](MRedis::reading_from) view with a policy of its own.
pub(crate) enum Call {
    Guarded(arc_swap::Guard<Arc<Fleet>>),
    Snapshot(Snapshot<Fleet>),
}

impl std::ops::Deref for Call {
    type Target = Fleet;
    #[inline]
    fn deref(&self) -> &Fleet {
        match self {
            Call::Guarded(f) => f,
            Call::Snapshot(f) => f,
        }
    }
}

impl std::fmt::Debug for MRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.fleet().fmt(f)
    }
}

/// One configuration of a sync client: its topology and the pools it
/// uses. Every call runs on one (see [`MRedis::fleet`]).
#[derive(Clone)]
pub(crate) struct Fleet {
    core: Arc<Topology>,
    pools: Arc<Vec<Pool>>,
    /// Per server, its shard's replicas' pools (empty for a plain server).
    replicas: Arc<Vec<ReplicaSet<Arc<Pool>>>>,
    options: Arc<Options>,
    /// Where read-only commands go ([`MRedis::reading_from`]).
    read_from: ReadFrom,
    /// The servers' COMMAND metadata, for routed handles (fetched once).
    book: Arc<std::sync::OnceLock<Arc<crate::command_book::CommandBook>>>,
    /// Keeps the topology's background threads running (see [`Running`]).
    running: Arc<Running>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MRedis")
            .field(
                "servers",
                &self.core.servers.iter().map(Server::name).collect::<Vec<_>>(),
            )
            .field("mode", &self.core.placement.mode())
            .field("migrating", &self.core.migration.is_some())
            .finish()
    }
}

impl MRedis {
    /// Connects to a list of servers: URLs (`redis://[user:pass@]host:port/db`,
    /// `rediss://` with the `tls` feature) or `(host, port, db)` tuples.
    /// Connections are opened on first use. An empty list, a duplicate
    /// server or a malformed entry is an error.
    pub fn new<I>(servers: I) -> RedisResult<MRedis>
    where
        I: IntoIterator,
        I::Item: IntoServer,
    {
        MRedis::from_parts(collect_servers(servers)?, Options::default())
    }

    pub(crate) fn from_parts(servers: Vec<Server>, options: Options) -> RedisResult<MRedis> {
        let (fleet, _) = Fleet::build(servers, options, None)?;
        let running = fleet.running.clone();
        Ok(MRedis {
            live: Live::new(fleet, running),
            read_from: None,
        })
    }

    /// The configuration in force now, for one call (one atomic load and
    /// a reference count; a [`reading_from`](Self::reading_from) view with
    /// a policy of its own also copies a few pointers).
    #[inline]
    pub(crate) fn fleet(&self) -> Snapshot<Fleet> {
        Snapshot::of(&self.live.fleet, self.read_from)
    }

    /// The configuration in force now, for one call made and finished on
    /// this thread (the generated methods'; see [`Call`]).
    #[inline]
    pub(crate) fn call(&self) -> Call {
        match self.read_from {
            None => Call::Guarded(self.live.fleet.load()),
            Some(_) => Call::Snapshot(self.fleet()),
        }
    }

    /// The client's configurations from now on, for a subscriber that
    /// follows them.
    pub(crate) fn topology(&self) -> tokio::sync::watch::Receiver<Arc<Running>> {
        self.live.topology.subscribe()
    }

    /// [`reconfigure`](Self::reconfigure) with the builder's parts.
    pub(crate) fn reconfigure_parts(&self, servers: Vec<Server>, options: Options) -> RedisResult<()> {
        let _one_at_a_time = self.live.switching.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.live.fleet.load_full();
        let (fleet, kept) = Fleet::build(servers, options, Some(&old))?;
        let name = fleet.core.client_name.clone();
        let (response_timeout, within) = (fleet.options.response_timeout, fleet.options.connect_timeout);
        // The new fleet first, then the names: a connection never carries
        // the new configuration's name while calls starting on it could
        // still route by the old one.
        let running = fleet.running.clone();
        self.live.fleet.store(Arc::new(fleet));
        drop(old);
        self.live.topology.send_replace(running);
        // Every server's at once: a server that does not answer costs the
        // connect timeout once, not once per server.
        std::thread::scope(|scope| {
            for (conns, max_idle) in &kept {
                let name = name.clone();
                scope.spawn(move || conns.rename(name, response_timeout, within, *max_idle));
            }
        });
        Ok(())
    }

    /// The servers of the current configuration, in configuration order.
    pub fn servers(&self) -> Vec<Server> {
        self.fleet().core.current_servers().to_vec()
    }

    /// The name (`host:port:db`) of the server that owns `key`.
    pub fn server_for<K: redis::ToRedisArgs>(&self, key: K) -> RedisResult<String> {
        let fleet = self.fleet();
        let Route::One { server, .. } = fleet.core.route_key("server_for", &key)? else {
            unreachable!("one key has one server")
        };
        Ok(fleet.core.name(server).to_string())
    }

    /// The index (in configuration order) of the server that owns `key`:
    /// the server [`server_for`](Self::server_for) names, where commands on
    /// `key` go (also while a server is ejected by health checking).
    pub fn server_index_for(&self, key: &[u8]) -> usize {
        self.fleet().core.owner(key).0
    }

    /// Runs `func` as a WATCH/MULTI/EXEC transaction on the server that owns
    /// `keys`, retrying while a watched key changes (redis-rs's
    /// `transaction`, on one shard). The keys must all live on one server
    /// (use hash tags); otherwise it fails before anything is sent. `func`
    /// gets that server's connection, to read the watched keys, and the
    /// atomic pipeline to fill; return `Ok(None)` to retry. The whole
    /// transaction, retries included, runs on the configuration in force
    /// when it began.
    pub fn transaction<K, T, F>(&self, keys: &[K], func: F) -> RedisResult<T>
    where
        K: redis::ToRedisArgs,
        F: FnMut(&mut Connection, &mut redis::Pipeline) -> RedisResult<Option<T>>,
    {
        self.fleet().transaction(keys, func)
    }

    /// Each server's health as the opt-in health checking sees it
    /// ([`Builder::health_check`](crate::Builder::health_check)); empty
    /// without it. Includes the idle connections kept per server.
    pub fn health(&self) -> Vec<crate::health::ServerHealth> {
        self.fleet().health()
    }

    /// Runs any command on the server that owns `key`: the escape hatch for
    /// commands or options the generated methods do not cover.
    pub fn query_routed<K: redis::ToRedisArgs, RV: FromRedisValue>(&self, key: K, cmd: &Cmd) -> RedisResult<RV> {
        let fleet = self.call();
        let route = fleet.core.route_key("query_routed", &key)?;
        fleet.run(route, cmd)
    }

    /// Runs any command on every server.
    pub fn query_all<RV: FromRedisValue>(&self, cmd: &Cmd) -> Result<PerServer<RV>, FanOutError<RV>> {
        self.call().fan_out(cmd)
    }

    /// Starts measuring how fast each node of each shard answers (the
    /// prober of [`ReadFrom::LowestLatency`]), if it is not running yet,
    /// for [`Server::latencies`] without a read under that policy (`mredis
    /// stats` does this). Nothing to measure without shards with replicas
    /// or Sentinel; the first estimates come within a round (500 ms, plus
    /// up to 1 s per node that does not answer).
    pub fn probe_latencies(&self) {
        self.fleet().running.probe_latencies();
    }

    /// How many connections this client has opened since it was built
    /// (across its reconfigures, its handles, pipelines and subscribers
    /// included), by what they are for. Every one is opened the same way
    /// (authenticated, named, and checked for a fence of its
    /// configuration); a count that keeps growing under steady traffic
    /// means connections are being lost and opened again.
    pub fn connections_opened(&self) -> crate::ConnectionsOpened {
        self.fleet().core.lineage.opened.snapshot()
    }

    /// This client with another read policy, for the calls made through
    /// it (cheap: it shares everything else with `self`, and follows
    /// [`reconfigure`](Self::reconfigure) with it). Read-only
    /// commands only; see [`ReadFrom`].
    ///
    /// ```no_run
    /// # fn demo(mr: &mredis::MRedis) -> redis::RedisResult<()> {
    /// use mredis::ReadFrom;
    /// let v: Option<String> = mr.reading_from(ReadFrom::PreferReplica).get("profile:42")?;
    /// # Ok(()) }
    /// ```
    pub fn reading_from(&self, policy: ReadFrom) -> MRedis {
        MRedis {
            live: self.live.clone(),
            read_from: Some(policy),
        }
    }
}

impl Fleet {
    /// A configuration's fleet; with `old`, the configuration it replaces,
    /// whose connections to servers that stay (the same address, database,
    /// user and password) it keeps, returned with it to be renamed.
    #[allow(clippy::type_complexity)]
    fn build(
        servers: Vec<Server>,
        options: Options,
        old: Option<&Fleet>,
    ) -> RedisResult<(Fleet, Vec<(Arc<Conns>, usize)>)> {
        let lineage = old.map(|o| o.core.lineage.clone()).unwrap_or_default();
        let core = Topology::new_in(servers, &options, lineage)?;
        let options_read_from = options.read_from;
        let mut pools = Vec::with_capacity(core.servers.len());
        let mut kept = Vec::new();
        for server in &core.servers {
            let staying = old.and_then(|o| o.pools.iter().find(|p| p.conns.server.same_connection(server)));
            match staying {
                Some(p) => {
                    kept.push((p.conns.clone(), options.pool_size as usize));
                    pools.push(Pool::with(p.conns.clone(), server, &options));
                }
                None => pools.push(
                    Pool::new(server, &options, core.client_name.clone(), core.lineage.clone())
                        .map_err(|e| name_server(server, e))?,
                ),
            }
        }
        let replicas = core.servers.iter().map(|_| ReplicaSet::default()).collect();
        Ok((
            Fleet {
                running: Arc::new(Running::start(core.clone(), &options)?),
                core,
                pools: Arc::new(pools),
                replicas: Arc::new(replicas),
                options: Arc::new(options),
                read_from: options_read_from,
                book: Arc::default(),
            },
            kept,
        ))
    }

    /// Each server's health (see [`MRedis::health`]).
    pub(crate) fn health(&self) -> Vec<crate::health::ServerHealth> {
        let Some(h) = &self.core.health else { return Vec::new() };
        let mut all = h.snapshot();
        for (s, pool) in all.iter_mut().zip(self.pools.iter()) {
            s.idle_connections = Some(pool.conns.idle.lock().map(|i| i.len()).unwrap_or(0));
        }
        all
    }

    /// Runs `func` as a WATCH/MULTI/EXEC transaction on the server that owns
    /// `keys`, retrying while a watched key changes (redis-rs's
    /// `transaction`, on one shard). The keys must all live on one server
    /// (use hash tags); otherwise it fails before anything is sent. `func`
    /// gets that server's connection, to read the watched keys, and the
    /// atomic pipeline to fill; return `Ok(None)` to retry.
    pub(crate) fn transaction<K, T, F>(&self, keys: &[K], func: F) -> RedisResult<T>
    where
        K: redis::ToRedisArgs,
        F: FnMut(&mut Connection, &mut redis::Pipeline) -> RedisResult<Option<T>>,
    {
        let mut all = Vec::new();
        for k in keys {
            crate::routing::push_keys(&mut all, k);
        }
        let Route::One { server, moves } = self.core.route_colocated("transaction", &all)? else {
            unreachable!("co-located keys have one server")
        };
        let mut func = func;
        let mut patience = crate::migration::Patience::default();
        let mut failovers = 0;
        loop {
            // During a migration the keys are served by their old server
            // while they are all there, by the new one once none is.
            let target = if moves.is_empty() {
                server
            } else {
                self.where_moving(&moves, server)?
            };
            let mut marked = false;
            let attempt = self.hold(target).and_then(|mut held| {
                let ran = self.watch_and_run(
                    &mut held,
                    keys,
                    target != server,
                    &moves,
                    server,
                    target,
                    &mut marked,
                    &mut func,
                );
                // EXEC's promises (WAIT, a failover), as for any write.
                let settled = self.settle_held(&mut held, ran, Option::is_some);
                self.release(held);
                settled
            });
            let attempt = attempt?;
            match attempt {
                Held::Done(Some(result)) => return Ok(result),
                Held::Done(None) => {}
                Held::FailedOver if failovers == 0 => failovers += 1,
                Held::FailedOver => return Err(crate::replicas::failed_over_twice(self.core.server(target))),
            }
            if marked {
                match patience.next_wait() {
                    Some(wait) => std::thread::sleep(wait),
                    None => {
                        let m = &moves[0];
                        return Err(crate::migration::still_moving(&self.core, &m.key, m.from, m.to));
                    }
                }
            }
        }
    }

    /// One try of [`transaction`](Self::transaction) on `con`: WATCH the
    /// keys (and on a migration's old server, its marks), then `func`.
    /// `Ok(None)`: run it again.
    #[allow(clippy::too_many_arguments)]
    fn watch_and_run<K, T, F>(
        &self,
        con: &mut Connection,
        keys: &[K],
        on_old_server: bool,
        moves: &[Move],
        server: usize,
        target: usize,
        marked: &mut bool,
        func: &mut F,
    ) -> RedisResult<Option<T>>
    where
        K: redis::ToRedisArgs,
        F: FnMut(&mut Connection, &mut redis::Pipeline) -> RedisResult<Option<T>>,
    {
        redis::cmd("WATCH").arg(keys).exec(con)?;
        if on_old_server {
            // On the old server: a rebalance marking a key (or any key) as
            // moving changes the marks, which aborts the EXEC; a key
            // marked already waits.
            redis::cmd("WATCH").arg(crate::mover::MARKS).exec(con)?;
            let marks: Vec<Option<String>> = redis::cmd("HMGET").arg(crate::mover::MARKS).arg(keys).query(con)?;
            if marks.iter().any(Option::is_some) {
                redis::cmd("UNWATCH").exec(con)?;
                *marked = true;
                return Ok(None);
            }
        }
        if !moves.is_empty() && self.where_moving(moves, server)? != target {
            // Moved between the check and the WATCH: decide again.
            redis::cmd("UNWATCH").exec(con)?;
            return Ok(None);
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        match func(con, &mut pipe)? {
            Some(result) => {
                redis::cmd("UNWATCH").exec(con)?;
                Ok(Some(result))
            }
            None => Ok(None),
        }
    }

    /// After `e`, a refusal by a replica or a primary gone (see
    /// [`crate::replicas::held_verdict`]) on server `index` (a shard whose
    /// address epoch was `since`): waits for Sentinel's new primary; an
    /// error if none is named within the failover wait.
    fn await_new_primary(&self, index: usize, since: u64, e: RedisError) -> RedisResult<()> {
        let server = self.core.server(index);
        let Some(shard) = server.shard() else {
            return Err(self.named(index, e));
        };
        shard.suspect();
        if shard.wait_change(since, self.options.failover_wait) {
            Ok(())
        } else {
            Err(crate::replicas::no_new_primary(
                server,
                self.options.failover_wait,
                Err(e),
            ))
        }
    }

    /// Where keys being moved are served now: their old server while all of
    /// them are there (and they share it), the new one once none is;
    /// otherwise a retryable TRYAGAIN error.
    pub(crate) fn where_moving(&self, moves: &[Move], server: usize) -> RedisResult<usize> {
        let mut froms: Vec<usize> = moves.iter().map(|m| m.from).collect();
        froms.sort_unstable();
        froms.dedup();
        let mut here: i64 = 0;
        for f in &froms {
            let mut c = redis::cmd("EXISTS");
            for m in moves.iter().filter(|m| m.from == *f) {
                c.arg(&m.key[..]);
            }
            here += i64::from_redis_value(self.value_on(*f, &c)?)?;
        }
        if here == 0 {
            Ok(server)
        } else if here == moves.len() as i64 && froms.len() == 1 {
            Ok(froms[0])
        } else {
            Err(crate::migration::try_again(
                &self.core,
                &moves[0].key,
                moves[0].from,
                server,
            ))
        }
    }

    /// What keeps this configuration's background threads running.
    pub(crate) fn running(&self) -> Arc<Running> {
        self.running.clone()
    }

    /// The servers' COMMAND metadata, for routed handles (fetched once, on
    /// the first command the table does not know).
    pub(crate) fn command_book(&self) -> &std::sync::OnceLock<Arc<crate::command_book::CommandBook>> {
        &self.book
    }

    /// Server `index`'s pool, or (a replica `target`) one of its shard's
    /// replicas' pools: the one named, or the next in turn; without a
    /// replica up, the primary's under [`ReadFrom::PreferReplica`] and
    /// [`ReadFrom::LowestLatency`], an error under [`ReadFrom::ReplicaOnly`].
    fn pool_for(&self, index: usize, target: &Target) -> RedisResult<PoolRef<'_>> {
        if !target.replica() {
            return self.pool(index).map(PoolRef::Primary);
        }
        let server = self.core.server(index);
        let set = self
            .replicas
            .get(index)
            .ok_or_else(|| client_error(format!("no server {index}")))?;
        match set.pick(server, self.read_from, target.addr(), |node| {
            Pool::new(
                node,
                &self.options,
                self.core.client_name.clone(),
                self.core.lineage.clone(),
            )
            .map(Arc::new)
        })? {
            Some((_, pool)) => Ok(PoolRef::Replica(pool)),
            None => self.pool(index).map(PoolRef::Primary),
        }
    }

    fn pool(&self, index: usize) -> RedisResult<&Pool> {
        self.pools
            .get(index)
            .ok_or_else(|| client_error(format!("no server {index}")))
    }

    /// Whether some server of this configuration may be reachable: false
    /// once the last attempt to connect to each of them failed at the
    /// transport (a handle's `is_open`).
    pub(crate) fn any_reachable(&self) -> bool {
        self.pools.iter().any(|p| p.conns.reachable.load(Ordering::Relaxed))
    }

    /// Runs `f` on a connection to server `index`; the connection goes back
    /// to the pool unless the exchange failed below the server's own reply.
    pub(crate) fn with_connection<T>(
        &self,
        index: usize,
        f: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let pool = self.pool(index)?;
        let epoch = self.core.server(index).epoch();
        let (mut con, reused) = pool
            .take(pool.connect_timeout)
            .map_err(|e| name_server(self.core.server(index), e))?;
        match f(&mut con) {
            Ok(v) => {
                pool.put(con, epoch);
                Ok(v)
            }
            Err(e) => {
                if e.code().is_some() {
                    pool.put(con, epoch);
                } else if reused && closed(&e) {
                    // Not sent again (what `f` sent is unknown), but the
                    // other idle connections, as old, go too.
                    pool.clear();
                }
                Err(self.named(index, e))
            }
        }
    }

    /// `e`, a failure of a request on `pool`: if `pool` is one of server
    /// `index`'s replicas' and the failure is of the replica (a timeout, a
    /// refused or broken connection), the replica is passed over for a
    /// while ([`crate::replicas::REPLICA_REST`]).
    fn replica_failed(&self, index: usize, pool: &PoolRef<'_>, e: RedisError) -> RedisError {
        if let (PoolRef::Replica(p), Some(set)) = (pool, self.replicas.get(index))
            && (e.is_timeout() || e.is_io_error() || e.is_connection_refusal())
        {
            set.mark_down(&p.server);
        }
        e
    }

    /// An error of server `index` naming it, and for a timeout how long
    /// the reply was waited for.
    fn named(&self, index: usize, e: RedisError) -> RedisError {
        let after = self.pools.get(index).and_then(|p| p.response_timeout);
        crate::error::name_server_after(self.core.server(index), e, None, after)
    }

    /// One packed command, as the caller packed it, on server `index`
    /// (not blocking); server error replies are errors. `read_only`: it may
    /// be sent again on a new connection if the pooled one was closed.
    pub(crate) fn packed_on(&self, index: usize, bytes: &[u8], read_only: bool) -> RedisResult<Value> {
        Span::server(&self.core, index).run(|| {
            self.exchange_packed(index, bytes, None, &|| read_only, &Target::Primary, None)
                .and_then(crate::merge::extract_errors)
        })
    }

    pub(crate) fn value_on(&self, index: usize, cmd: &Cmd) -> RedisResult<Value> {
        Span::server(&self.core, index)
            .run(|| self.with_connection(index, |con| con.req_command(cmd).and_then(crate::merge::extract_errors)))
    }

    /// Carries requests: one command to one server on a pooled
    /// connection as is, anything else written to every server before any
    /// reply is read. `targets[i]`: where request `i` goes (its primary
    /// if empty). `since`: when the call began, for a request sent again
    /// within the call's one deadline (the response timeout from then).
    fn send(
        &self,
        requests: &[Request<'_>],
        targets: &[Target],
        since: Option<Instant>,
    ) -> Vec<RedisResult<Vec<Value>>> {
        let replica = |i: usize| targets.get(i).unwrap_or(&Target::Primary);
        match requests {
            [one] if let Some(cmd) = one.cmds.single() => {
                vec![
                    Span::server(&self.core, one.server)
                        .run(|| self.exchange(one.server, cmd, one.block, replica(0), since))
                        .map(|v| vec![v]),
                ]
            }
            _ => {
                let packed: Vec<Vec<u8>> = requests.iter().map(|r| r.cmds.packed()).collect();
                let jobs: Vec<Job<'_>> = requests
                    .iter()
                    .zip(&packed)
                    .map(|(r, p)| Job {
                        server: r.server,
                        packed: p,
                        replies: r.cmds.len(),
                    })
                    .collect();
                let how: Vec<JobKind<'_>> = requests
                    .iter()
                    .enumerate()
                    .map(|(i, r)| JobKind {
                        cmds: Some(&r.cmds),
                        block: r.block,
                        target: replica(i),
                    })
                    .collect();
                self.send_many_in(&jobs, &how, since)
            }
        }
    }

    /// [`send`](Self::send) on a fleet with shards that have replicas or
    /// Sentinel: reads go where the read policy says, writes get their
    /// `WAIT` ([`Builder::replica_acks`](crate::Builder::replica_acks)),
    /// and a request that failed as it does during a failover waits for
    /// Sentinel's new primary and is sent again once, when that cannot
    /// run it twice (see [`crate::replicas`]).
    fn send_to_shards(&self, requests: &[Request<'_>]) -> Vec<RedisResult<Vec<Value>>> {
        let start = Instant::now();
        if self.read_from == ReadFrom::LowestLatency {
            self.running.probe_latencies();
        }
        let plan = ShardPlan::new(&self.core, &self.options, self.read_from, requests);
        let mut replies = self.send(&plan.requests, &plan.targets, None);
        for (i, reply) in replies.iter_mut().enumerate() {
            let again = plan.after(i, reply);
            // A read a replica failed goes to the primary within the call's
            // one deadline; with none left, the replica's error stands.
            let fallback = matches!(again, Some((_, None)));
            let spent = self.options.response_timeout.is_some_and(|t| start.elapsed() >= t);
            if let Some((target, wait)) = again.filter(|_| !(fallback && spent)) {
                let server = self.core.server(plan.requests[i].server);
                let changed = match wait {
                    Some((since, within)) => server.shard().is_some_and(|s| s.wait_change(since, within)),
                    None => true,
                };
                let one = std::slice::from_ref(&plan.requests[i]);
                let retry = if changed {
                    self.send(one, std::slice::from_ref(&target), fallback.then_some(start))
                        .pop()
                } else {
                    None
                };
                plan.settle(i, reply, retry);
            }
            plan.finish(i, reply);
        }
        replies
    }

    /// One command on a connection of server `index`: its reply, error
    /// replies kept as values. See [`retry_allowed`] for when a connection
    /// found closed is replaced and the command sent again.
    fn exchange(
        &self,
        index: usize,
        cmd: &Cmd,
        block: Option<Duration>,
        target: &Target,
        since: Option<Instant>,
    ) -> RedisResult<Value> {
        self.exchange_packed(
            index,
            &cmd.get_packed_command(),
            block,
            &|| block.is_none() && read_only(cmd),
            target,
            since,
        )
    }

    /// [`exchange`](Self::exchange) of a command already packed;
    /// `repeatable`: running it twice changes nothing (read-only, not
    /// blocking); asked only after a failure (a table lookup).
    fn exchange_packed(
        &self,
        index: usize,
        packed: &[u8],
        block: Option<Duration>,
        repeatable: &dyn Fn() -> bool,
        target: &Target,
        since: Option<Instant>,
    ) -> RedisResult<Value> {
        let epoch = self.core.server(index).epoch();
        let pool = self.pool_for(index, target)?;
        let mut wait = reply_wait(pool.response_timeout, block);
        let mut connect = pool.connect_timeout;
        // Sent again within a call's deadline: what is left of it.
        let cut = since.is_some() && block.is_none() && wait.is_some();
        if let (true, Some(since), Some(t)) = (cut, since, wait) {
            let left = t.saturating_sub(since.elapsed()).max(Duration::from_millis(1));
            wait = Some(left);
            connect = connect.min(left);
        }
        let set_wait = (block.is_some() || cut).then_some(wait);
        let (mut con, reused) = pool
            .take(connect)
            .map_err(|e| self.replica_failed(index, &pool, name_server(&pool.server, e)))?;
        let mut outcome = round_trip(&mut con, packed, set_wait);
        if let Err((written, e)) = &outcome
            && reused
            && closed(e)
        {
            pool.clear();
            if retry_allowed(*written, repeatable) {
                con = pool
                    .fresh(connect)
                    .map_err(|e| self.replica_failed(index, &pool, name_server(&pool.server, e)))?;
                outcome = round_trip(&mut con, packed, set_wait);
            }
        }
        match outcome {
            Ok(v) => {
                if set_wait.is_none() || con.set_read_timeout(pool.response_timeout).is_ok() {
                    pool.put(con, epoch);
                }
                Ok(v)
            }
            // The connection is dropped: a reply may still be on its way.
            Err((_, e)) => Err(self.replica_failed(
                index,
                &pool,
                crate::error::name_server_after(&pool.server, e, None, wait),
            )),
        }
    }

    /// Writes every job's request, then reads every reply, on this thread,
    /// with one deadline (the response timeout) for the whole call. A
    /// server that fails costs only its own part; its connection is dropped.
    /// `how` says of each job whether it may be sent twice and whether it
    /// blocks.
    fn send_many_in(
        &self,
        jobs: &[Job<'_>],
        how: &[JobKind<'_>],
        since: Option<Instant>,
    ) -> Vec<RedisResult<Vec<Value>>> {
        let start = since.unwrap_or_else(Instant::now);
        let kind = |i: usize| how.get(i).copied().unwrap_or_default();
        let spans: Vec<Span> = jobs.iter().map(|j| Span::server(&self.core, j.server)).collect();
        let mut cons: Vec<Option<(Pooled, bool)>> = Vec::with_capacity(jobs.len());
        let mut out: Vec<RedisResult<Vec<Value>>> = Vec::with_capacity(jobs.len());
        let epochs: Vec<u64> = jobs.iter().map(|j| self.core.server(j.server).epoch()).collect();
        let pools: Vec<RedisResult<PoolRef<'_>>> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| self.pool_for(j.server, kind(i).target))
            .collect();
        for (i, (job, span)) in jobs.iter().zip(&spans).enumerate() {
            let sent = span
                .in_scope(|| pools[i].as_ref().map_err(Clone::clone))
                .and_then(|pool| {
                    // A connection opened now gets what is left of the deadline.
                    let budget = pool
                        .response_timeout
                        .map_or(pool.connect_timeout, |t| t.saturating_sub(start.elapsed()));
                    let (mut con, reused) = pool.take(budget)?;
                    match con.send_packed_command(job.packed) {
                        Ok(()) => Ok((con, reused)),
                        Err(e) if reused && closed(&e) => {
                            pool.clear();
                            // Nothing of a one-command request can have run.
                            if !retry_allowed(false, || kind(i).repeatable() || job.replies == 1) {
                                return Err(e);
                            }
                            let mut con = pool.fresh(budget)?;
                            con.send_packed_command(job.packed)?;
                            Ok((con, false))
                        }
                        Err(e) => Err(e),
                    }
                });
            match sent {
                Ok(con) => {
                    cons.push(Some(con));
                    out.push(Ok(Vec::with_capacity(job.replies)));
                }
                Err(e) => {
                    cons.push(None);
                    out.push(Err(match &pools[i] {
                        Ok(pool) => self.replica_failed(
                            job.server,
                            pool,
                            crate::error::name_server_after(&pool.server, e, None, pool.response_timeout),
                        ),
                        Err(_) => e,
                    }));
                }
            }
        }
        for (i, ((job, slot), result)) in jobs.iter().zip(cons.iter_mut()).zip(out.iter_mut()).enumerate() {
            let Some((mut con, reused)) = slot.take() else { continue };
            let Ok(pool) = &pools[i] else { continue };
            let block = kind(i).block;
            let wait = reply_wait(pool.response_timeout, block);
            // Shorten the socket's wait to what is left of the deadline,
            // once a tenth of it has gone (cheaper than a syscall per read);
            // a blocking job's wait is always set (and put back after).
            let mut shortened = false;
            if let Some(timeout) = wait {
                let elapsed = start.elapsed();
                if block.is_some() || elapsed > timeout / 10 {
                    let left = timeout.saturating_sub(elapsed).max(Duration::from_millis(1));
                    shortened = con.set_read_timeout(Some(left)).is_ok();
                }
            } else if block.is_some() {
                shortened = con.set_read_timeout(None).is_ok();
            }
            let Ok(values) = result else { continue };
            let mut failed = read_replies(&mut con, job.replies, values);
            if let Some(e) = &failed
                && reused
                && values.is_empty()
                && closed(e)
            {
                pool.clear();
                if retry_allowed(true, || kind(i).repeatable()) {
                    let left = wait.map_or(pool.connect_timeout, |t| t.saturating_sub(start.elapsed()));
                    failed = match pool.fresh(left).and_then(|mut c| {
                        c.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
                        c.send_packed_command(job.packed)?;
                        Ok(c)
                    }) {
                        Ok(c) => {
                            con = c;
                            shortened = true;
                            read_replies(&mut con, job.replies, values)
                        }
                        Err(e) => Some(e),
                    };
                }
            }
            match failed {
                Some(e) => {
                    *result = Err(self.replica_failed(
                        job.server,
                        pool,
                        crate::error::name_server_after(&pool.server, e, None, wait),
                    ))
                }
                None => {
                    if !shortened || con.set_read_timeout(pool.response_timeout).is_ok() {
                        pool.put(con, epochs[i]);
                    }
                }
            }
        }
        for (span, result) in spans.iter().zip(&out) {
            span.outcome(result);
        }
        out
    }
}

/// A connection of one server held across requests (see [`Driver::hold`]).
pub(crate) struct HeldConnection {
    index: usize,
    /// The server's address epoch when it was taken (a failover since
    /// changes it).
    since: u64,
    con: Pooled,
    /// A request on it failed below the server's reply: not given back.
    broken: bool,
}

impl std::ops::Deref for HeldConnection {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.con
    }
}

impl std::ops::DerefMut for HeldConnection {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.con
    }
}

impl Driver for Fleet {
    type Held = HeldConnection;

    fn core(&self) -> &Arc<Topology> {
        &self.core
    }

    /// The sync driver: carries a machine's requests (each a pipeline to
    /// one server, all written before any reply is read, with one
    /// deadline) until it is done. One command to one server goes on a
    /// pooled connection as is. A blocking command's deadline is its block
    /// time plus the response timeout (none if it blocks until answered).
    fn drive<M: Machine>(&self, mut machine: M) -> RedisResult<M::Output> {
        let mut step = machine.start();
        loop {
            let replies = match step {
                Step::Done(result) => return result,
                Step::Wait(d) => {
                    std::thread::sleep(d);
                    Vec::new()
                }
                Step::Send(requests) if self.core.shards => self.send_to_shards(&requests),
                Step::Send(requests) => self.send(&requests, &[], None),
            };
            step = machine.next(replies);
        }
    }

    fn hold(&self, index: usize) -> RedisResult<HeldConnection> {
        let server = self.core.server(index);
        let mut since = server.epoch();
        let con = match self.pool(index)?.get() {
            Ok(con) => con,
            // The primary refused the connection (gone in a failover): the
            // failover wait, as for any request, then once more.
            Err(e) if crate::replicas::held_verdict(server, &e) == crate::replicas::Verdict::Again => {
                self.await_new_primary(index, since, e)?;
                since = server.epoch();
                self.pool(index)?.get().map_err(|e| name_server(server, e))?
            }
            Err(e) => return Err(name_server(server, e)),
        };
        Ok(HeldConnection {
            index,
            since,
            con,
            broken: false,
        })
    }

    fn release(&self, held: HeldConnection) {
        if let (false, Ok(pool)) = (held.broken, self.pool(held.index)) {
            pool.put(held.con, held.since);
        }
    }

    fn settle_held<T>(
        &self,
        held: &mut HeldConnection,
        result: RedisResult<T>,
        wrote: impl FnOnce(&T) -> bool,
    ) -> RedisResult<Held<T>> {
        use crate::replicas::AfterHeld;
        let index = held.index;
        let server = self.core.server(index);
        match result {
            Ok(v) => {
                if let Some(acks) = self.options.acks.filter(|_| server.shard().is_some())
                    && wrote(&v)
                {
                    let reply = held.con.req_command(&crate::replicas::wait_cmd(acks)).map_err(|e| {
                        held.broken = true;
                        self.named(index, e)
                    });
                    crate::replicas::check_ack(server, acks, reply)?;
                }
                Ok(Held::Done(v))
            }
            Err(e) => {
                // A failure below the server's reply (an aborted
                // transaction carries the queued commands' replies).
                if e.code().is_none() && e.clone().into_server_errors().is_none() {
                    held.broken = true;
                }
                match crate::replicas::after_held(server, e) {
                    AfterHeld::AwaitPrimary(e) => {
                        self.await_new_primary(index, held.since, e).map(|()| Held::FailedOver)
                    }
                    AfterHeld::Fail(e) => Err(self.named(index, e)),
                }
            }
        }
    }
}

/// What the driver knows of a job beyond its bytes.
#[derive(Clone, Copy)]
struct JobKind<'a> {
    /// Its commands, if known (to tell whether running it twice changes
    /// nothing; looked up only after a failure).
    cmds: Option<&'a Cmds<'a>>,
    /// It blocks on the server this long (`ZERO`: until answered).
    block: Option<Duration>,
    /// Where it goes.
    target: &'a Target,
}

impl Default for JobKind<'_> {
    fn default() -> Self {
        JobKind {
            cmds: None,
            block: None,
            target: &Target::Primary,
        }
    }
}

impl JobKind<'_> {
    /// Every command is read-only by the table and none blocks.
    fn repeatable(&self) -> bool {
        self.block.is_none() && self.cmds.is_some_and(|c| c.iter().all(read_only))
    }
}

/// How long a reply is waited for: the response timeout, plus the block
/// time for a blocking command; `None` (no client deadline) for a command
/// that blocks until answered or without a response timeout.
fn reply_wait(response_timeout: Option<Duration>, block: Option<Duration>) -> Option<Duration> {
    match block {
        Some(b) if b.is_zero() => None,
        Some(b) => response_timeout.map(|t| t.saturating_add(b)),
        None => response_timeout,
    }
}

/// Sends one packed command and reads its reply (pushes skipped, as
/// redis-rs does), the read timeout set to `wait` first if given. The
/// error says whether the command was written.
fn round_trip(
    con: &mut Connection,
    packed: &[u8],
    wait: Option<Option<Duration>>,
) -> Result<Value, (bool, RedisError)> {
    if let Some(wait) = wait {
        con.set_read_timeout(wait).map_err(|e| (false, e))?;
    }
    con.send_packed_command(packed).map_err(|e| (false, e))?;
    loop {
        match con.recv_response() {
            Ok(Value::Push { .. }) => continue,
            Ok(v) => return Ok(v),
            Err(e) => return Err((true, e)),
        }
    }
}

/// Reads `count` replies into `values`; the first failure, if any.
fn read_replies(con: &mut Connection, count: usize, values: &mut Vec<Value>) -> Option<RedisError> {
    while values.len() < count {
        match con.recv_response() {
            Ok(v) => values.push(v),
            Err(e) => return Some(e),
        }
    }
    None
}

/// Whether a request that failed on a pooled connection found closed by
/// the server (end of file or reset, on a connection that sat idle in the
/// pool) is sent again, once, on a new connection. The pool cannot see a
/// closed socket before use (redis-rs's `Connection` gives no access to
/// its socket, and `is_open` only turns false after a failed read), so the
/// closed connection is found by using it. The rule:
///
/// - the write failed (`written` false): the server had closed the
///   connection before the request was written, so none of it reached a
///   live server; sent again whatever it is (for a pipeline written in
///   part, only if it has one command: an incomplete command never runs);
/// - the write succeeded and the end of file came before any byte of a
///   reply: the server may have read and run the command before it went
///   away (a kill mid-call, an output-buffer limit), so it is sent again
///   only if running it twice changes nothing: every command read-only by
///   the table (`access = "read"`: GET, MGET, HGETALL, ...) and none
///   blocking. A write (SET, INCR, LPOP) then fails with the error, once.
///
/// A reply begun and cut, a timeout, or a connection opened for this call
/// is never retried.
fn retry_allowed(written: bool, repeatable: impl FnOnce() -> bool) -> bool {
    !written || repeatable()
}

mredis_macros::sync_methods!();
