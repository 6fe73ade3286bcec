//! The async client's driver: one multiplexed, self-reconnecting
//! connection per server, dedicated connections for blocking commands,
//! WATCH and writes that wait for replicas. Public as [`crate::aio`].

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, RedisResult, Value};

use crate::background::Running;
use crate::client::{Snapshot, Viewable};
use crate::driver::AsyncDriver;
use crate::error::client_error;
use crate::exec::{Cmds, Held, Machine, Request, Step, closed, read_only};
use crate::multiplexed::Shared as ConnectionManager;
use crate::options::Options;
use crate::per_server::{FanOutError, PerServer};
use crate::replicas::{ReplicaSet, ShardPlan, Target};
use crate::routing::{Route, Topology, name_server};
use crate::server::{IntoServer, Server, collect_servers};
use crate::telemetry::Span;

/// Several Redis servers behaving like one (async, tokio).
///
/// Cheap to clone; clones share the connections and the configuration,
/// which [`reconfigure`](Self::reconfigure) switches for all of them at
/// once. Method names and signatures are those of redis-rs's
/// `AsyncCommands`, with `&self`.
///
/// ```no_run
/// # async fn demo() -> redis::RedisResult<()> {
/// let mr = mredis::aio::MRedis::connect(["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/0"]).await?;
/// mr.set::<_, _, ()>("key", 42).await?;
/// let v: Option<i64> = mr.get("key").await?;
/// let sizes: mredis::PerServer<usize> = mr.dbsize().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MRedis {
    live: Arc<Live>,
    /// [`MRedis::reading_from`]'s policy, over the configuration's.
    read_from: Option<crate::options::ReadFrom>,
    /// [`MRedis::uncached`]: reads go to the servers.
    uncached: bool,
}

/// The configuration in force, shared by a client and every clone of it
/// (the sync client's [`Live`](crate::client::Live), with a lock that a
/// reconfiguration holds across its renames).
struct Live {
    fleet: arc_swap::ArcSwap<Fleet>,
    switching: tokio::sync::Mutex<()>,
    /// The configuration in force, for the subscribers that follow it.
    topology: tokio::sync::watch::Sender<Arc<Running>>,
}

/// One configuration of an async client: its topology and the
/// connections it uses. Every call runs on one (see [`MRedis::fleet`]).
#[derive(Clone)]
pub(crate) struct Fleet {
    core: Arc<Topology>,
    connections: Arc<Vec<Shared>>,
    /// Per server, its shard's replicas' shared connections.
    replicas: Arc<Vec<ReplicaSet<ConnectionManager>>>,
    options: Arc<Options>,
    /// Where read-only commands go ([`MRedis::reading_from`]).
    read_from: crate::options::ReadFrom,
    /// Per server, the dedicated connections of blocking commands.
    blocking: Arc<Vec<BlockingPool>>,
    response_timeout: Option<std::time::Duration>,
    /// The servers' COMMAND metadata, for routed handles (fetched once).
    book: Arc<std::sync::OnceLock<Arc<crate::command_book::CommandBook>>>,
    /// Per server, when its shared connection was last used (milliseconds
    /// since `born`): a write after a second of silence is preceded by a
    /// PING, so a connection the server closed meanwhile (a restart) is
    /// replaced before the write, not found by it.
    last_used: Arc<Vec<std::sync::atomic::AtomicU64>>,
    born: std::time::Instant,
    /// Keeps the topology's background threads running (see [`Running`]).
    running: Arc<Running>,
    /// Reads may be served by the client-side cache (not in an
    /// [`MRedis::uncached`] view).
    cached: bool,
}

impl Viewable for Fleet {
    fn read_from(&self) -> crate::options::ReadFrom {
        self.read_from
    }
    fn set_read_from(&mut self, policy: crate::options::ReadFrom) {
        self.read_from = policy;
    }
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("aio::MRedis")
            .field(
                "servers",
                &self.core.servers.iter().map(Server::name).collect::<Vec<_>>(),
            )
            .field("mode", &self.core.placement.mode())
            .field("migrating", &self.core.migration.is_some())
            .finish()
    }
}

impl std::fmt::Debug for MRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.fleet().fmt(f)
    }
}

impl MRedis {
    /// Connects to a list of servers (URLs or `(host, port, db)` tuples).
    /// Connections are opened lazily; an empty list, a duplicate server or a
    /// malformed entry is an error. Must run inside a tokio runtime.
    pub async fn connect<I>(servers: I) -> RedisResult<MRedis>
    where
        I: IntoIterator,
        I::Item: IntoServer,
    {
        MRedis::from_parts(collect_servers(servers)?, Options::default())
    }

    pub(crate) fn from_parts(servers: Vec<Server>, options: Options) -> RedisResult<MRedis> {
        let (fleet, _) = Fleet::build(servers, options, None)?;
        Ok(MRedis {
            live: Arc::new(Live {
                topology: tokio::sync::watch::Sender::new(fleet.running.clone()),
                fleet: arc_swap::ArcSwap::from_pointee(fleet),
                switching: tokio::sync::Mutex::new(()),
            }),
            read_from: None,
            uncached: false,
        })
    }

    /// The configuration in force now, for one call (owned, so the call's
    /// future stays `Send`; see the sync client's).
    #[inline]
    pub(crate) fn fleet(&self) -> Snapshot<Fleet> {
        let snapshot = Snapshot::of(&self.live.fleet, self.read_from);
        if !self.uncached || snapshot.running.cache.is_none() {
            return snapshot;
        }
        let mut own = Fleet::clone(&snapshot);
        own.cached = false;
        Snapshot::Viewed(own)
    }

    /// The configuration for one call (the generated methods'): an owned
    /// snapshot, which the call's future keeps across its awaits.
    #[inline]
    pub(crate) fn call(&self) -> Snapshot<Fleet> {
        self.fleet()
    }

    /// The client's configurations from now on, for a subscriber that
    /// follows them.
    pub(crate) fn topology(&self) -> tokio::sync::watch::Receiver<Arc<Running>> {
        self.live.topology.subscribe()
    }

    /// [`reconfigure`](Self::reconfigure) with the builder's parts.
    pub(crate) async fn reconfigure_parts(&self, servers: Vec<Server>, options: Options) -> RedisResult<()> {
        // Held to the end, renames included: the last reconfiguration's
        // names win, as its fleet does.
        let _one_at_a_time = self.live.switching.lock().await;
        let old = self.live.fleet.load_full();
        let (fleet, kept) = Fleet::build(servers, options, Some(&old))?;
        drop(old);
        let name = fleet.core.client_name.clone();
        let within = fleet.options.connect_timeout;
        // The new fleet first, then the names (see the sync client's).
        let running = fleet.running.clone();
        self.live.fleet.store(Arc::new(fleet));
        self.live.topology.send_replace(running);
        join_all(kept.iter().map(|m| {
            let name = name.clone();
            async move {
                let _ = tokio::time::timeout(within, m.rename(name)).await;
            }
        }))
        .await;
        Ok(())
    }

    /// Starts the latency prober of
    /// [`ReadFrom::LowestLatency`](crate::ReadFrom::LowestLatency) if it is
    /// not running yet (see the sync client's
    /// [`probe_latencies`](crate::MRedis::probe_latencies)).
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
    /// commands only; see [`ReadFrom`](crate::ReadFrom).
    pub fn reading_from(&self, policy: crate::ReadFrom) -> MRedis {
        MRedis {
            live: self.live.clone(),
            read_from: Some(policy),
            uncached: self.uncached,
        }
    }

    /// This client with its calls read from the servers, not the
    /// client-side cache ([`Builder::client_cache`](crate::Builder::client_cache));
    /// cheap, it shares everything else with `self`. Its writes still
    /// drop the cache's entries of the keys they write.
    pub fn uncached(&self) -> MRedis {
        MRedis {
            live: self.live.clone(),
            read_from: self.read_from,
            uncached: true,
        }
    }

    /// What the client-side cache has done ([`Builder::client_cache`](crate::Builder::client_cache)):
    /// hits, misses, invalidations, evictions, flushes, entries per
    /// server; `None` without a cache.
    pub fn cache_stats(&self) -> Option<crate::CacheStats> {
        self.fleet().running.cache.as_ref().map(|c| c.stats())
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

    /// Each server's health as the opt-in health checking sees it; empty
    /// without it.
    pub fn health(&self) -> Vec<crate::health::ServerHealth> {
        self.fleet()
            .core
            .health
            .as_ref()
            .map(|h| h.snapshot())
            .unwrap_or_default()
    }

    /// Runs any command on the server that owns `key`.
    pub async fn query_routed<K: redis::ToRedisArgs, RV: FromRedisValue>(&self, key: K, cmd: &Cmd) -> RedisResult<RV> {
        let fleet = self.fleet();
        let route = fleet.core.route_key("query_routed", &key)?;
        fleet.run(route, cmd).await
    }

    /// Runs any command on every server, concurrently.
    pub async fn query_all<RV: FromRedisValue>(&self, cmd: &Cmd) -> Result<PerServer<RV>, FanOutError<RV>> {
        self.fleet().fan_out(cmd).await
    }
}

impl Fleet {
    /// A configuration's fleet; with `old`, the configuration it replaces,
    /// whose shared connections to servers that stay (the same address,
    /// database, user and password, and the same connection options) it
    /// keeps, returned with it to be renamed, and whose idle dedicated
    /// connections it takes over.
    fn build(
        servers: Vec<Server>,
        options: Options,
        old: Option<&Fleet>,
    ) -> RedisResult<(Fleet, Vec<ConnectionManager>)> {
        let lineage = old.map(|o| o.core.lineage.clone()).unwrap_or_default();
        let core = Topology::new_in(servers, &options, lineage)?;
        let core_len = core.servers.len();
        let same_options = old.is_some_and(|o| {
            o.options.connect_timeout == options.connect_timeout
                && o.options.response_timeout == options.response_timeout
                && o.options.retries == options.retries
        });
        let mut kept = Vec::new();
        let mut connections = Vec::with_capacity(core.servers.len());
        let mut blocking = Vec::with_capacity(core.servers.len());
        for server in &core.servers {
            let staying = old.and_then(|o| {
                o.blocking
                    .iter()
                    .position(|b| b.server.same_connection(server))
                    .map(|i| (o, i))
            });
            blocking.push(BlockingPool {
                server: server.clone(),
                client: Default::default(),
                // Idle dedicated connections carry their configuration's
                // name: kept only while it is the same (the old ones close
                // with the old configuration).
                idle: staying
                    .filter(|(o, _)| o.core.client_name == core.client_name)
                    .map(|(o, i)| o.blocking[i].idle.clone())
                    .unwrap_or_default(),
                max_idle: options.pool_size as usize,
                connect_timeout: options.connect_timeout,
                name: core.client_name.clone(),
                lineage: core.lineage.clone(),
            });
            // A Sentinel shard's primary may not be known yet: its manager
            // is made on first use (and again after each failover).
            let fixed = match (server.shard(), staying) {
                (Some(_), _) => None,
                (None, Some((o, i))) if same_options && o.connections[i].fixed.is_some() => {
                    let m = o.connections[i].fixed.clone();
                    kept.extend(m.clone());
                    m
                }
                (None, _) => Some(manager(server, &options, &core).map_err(|e| name_server(server, e))?),
            };
            connections.push(Shared {
                fixed,
                current: Default::default(),
            });
        }
        let replicas = core.servers.iter().map(|_| ReplicaSet::default()).collect();
        Ok((
            Fleet {
                running: Arc::new(Running::start_with(core.clone(), &options, true)?),
                cached: true,
                core,
                connections: Arc::new(connections),
                replicas: Arc::new(replicas),
                read_from: options.read_from,
                blocking: Arc::new(blocking),
                response_timeout: options.response_timeout,
                book: Arc::default(),
                last_used: Arc::new((0..core_len).map(|_| std::sync::atomic::AtomicU64::new(0)).collect()),
                born: std::time::Instant::now(),
                options: Arc::new(options),
            },
            kept,
        ))
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

    pub(crate) fn connection(&self, index: usize) -> RedisResult<ConnectionManager> {
        let shared = self
            .connections
            .get(index)
            .ok_or_else(|| client_error(format!("no server {index}")))?;
        if let Some(m) = &shared.fixed {
            return Ok(m.clone());
        }
        // A shard's: the manager for its current primary (made anew when
        // the address epoch changed).
        let server = self.core.server(index);
        let epoch = server.epoch();
        {
            let current = shared.current.read().unwrap_or_else(|p| p.into_inner());
            if let Some((e, m)) = current.as_ref()
                && *e == epoch
            {
                return Ok(m.clone());
            }
        }
        let made = manager(server, &self.options, &self.core).map_err(|e| name_server(server, e))?;
        *shared.current.write().unwrap_or_else(|p| p.into_inner()) = Some((epoch, made.clone()));
        Ok(made)
    }

    /// Server `index`'s shared connection, or (a replica `target`) one of
    /// its shard's replicas' (the rules of the sync client's `pool_for`);
    /// with the server it goes to.
    fn connection_for(&self, index: usize, target: &Target) -> RedisResult<(ConnectionManager, Option<Server>)> {
        if !target.replica() {
            return self.connection(index).map(|c| (c, None));
        }
        let server = self.core.server(index);
        let set = self
            .replicas
            .get(index)
            .ok_or_else(|| client_error(format!("no server {index}")))?;
        match set.pick(server, self.read_from, target.addr(), |node| {
            manager(node, &self.options, &self.core)
        })? {
            Some((node, m)) => Ok((m, Some(node))),
            None => self.connection(index).map(|c| (c, None)),
        }
    }

    pub(crate) async fn value_on(&self, index: usize, cmd: &Cmd) -> RedisResult<Value> {
        Span::server(&self.core, index)
            .run_async(self.value_on_in(index, cmd))
            .await
    }

    async fn value_on_in(&self, index: usize, cmd: &Cmd) -> RedisResult<Value> {
        let mut con = self.connection(index)?;
        con.req_packed_command(cmd)
            .await
            .and_then(crate::merge::extract_errors)
            .map_err(|e| crate::error::name_server_after(self.core.server(index), e, None, self.response_timeout))
    }

    /// The async driver: carries a machine's requests (each a pipeline to
    /// one server, all servers concurrently) until it is done. One command
    /// goes on the server's multiplexed connection as is; a blocking one
    /// on a dedicated connection (see [`blocking_on`](Self::blocking_on)).
    async fn drive_machine<M: Machine>(&self, mut machine: M) -> RedisResult<M::Output> {
        let mut step = machine.start();
        loop {
            let replies = match step {
                Step::Done(result) => return result,
                Step::Wait(d) => {
                    tokio::time::sleep(d).await;
                    Vec::new()
                }
                // With a client-side cache, the writes of this client drop
                // their keys' entries before they are sent and again once
                // answered (read-your-writes; see `crate::cache`).
                Step::Send(requests) if self.running.cache.is_some() => {
                    self.own_writes(&requests);
                    let replies = Box::pin(self.send(&requests)).await;
                    self.own_writes(&requests);
                    replies
                }
                Step::Send(requests) => self.send(&requests).await,
            };
            step = machine.next(replies);
        }
    }

    /// Sends one step's requests and waits for their replies.
    async fn send(&self, requests: &[Request<'_>]) -> Vec<RedisResult<Vec<Value>>> {
        // Shards (replicas, failover waits) are the rarer path: boxed,
        // so the common call's future stays small.
        if self.core.shards {
            return Box::pin(self.send_to_shards(requests)).await;
        }
        // One server (a single-key command): awaited in place.
        if let [r] = requests {
            return vec![self.request_on(r.server, &r.cmds, r.block, &Target::Primary).await];
        }
        join_all(
            requests
                .iter()
                .map(|r| self.request_on(r.server, &r.cmds, r.block, &Target::Primary)),
        )
        .await
    }

    /// Drops the client-side cache's entries of the keys `requests` write.
    fn own_writes(&self, requests: &[Request<'_>]) {
        if let Some(cache) = &self.running.cache {
            for r in requests {
                cache.own_writes(r.server, r.cmds.iter());
            }
        }
    }

    /// The sync client's `send_to_shards`, awaited: the same
    /// [`ShardPlan`] decides, this only sends and waits. A write with its
    /// `WAIT` goes on a dedicated connection ([`acked_on`](Self::acked_on)):
    /// on the shared one, the WAIT would hold up every request behind it.
    async fn send_to_shards(&self, requests: &[Request<'_>]) -> Vec<RedisResult<Vec<Value>>> {
        let start = std::time::Instant::now();
        if self.read_from == crate::options::ReadFrom::LowestLatency {
            self.running.probe_latencies();
        }
        let plan = ShardPlan::new(&self.core, &self.options, self.read_from, requests);
        let mut replies = join_all(
            plan.targets
                .iter()
                .enumerate()
                .map(|(i, target)| self.shard_request(&plan, i, target)),
        )
        .await;
        for (i, reply) in replies.iter_mut().enumerate() {
            let again = plan.after(i, reply);
            // A read a replica failed goes to the primary within the call's
            // one deadline; with none left, the replica's error stands.
            let fallback = matches!(again, Some((_, None)));
            let left = self.response_timeout.map(|t| t.saturating_sub(start.elapsed()));
            if let Some((target, wait)) = again.filter(|_| !(fallback && left.is_some_and(|l| l.is_zero()))) {
                let r = &plan.requests[i];
                let server = self.core.server(r.server);
                let changed = match (wait, server.shard()) {
                    (Some((since, within)), Some(shard)) => shard.wait_change_async(since, within).await,
                    (Some(_), None) => false,
                    (None, _) => true,
                };
                let retry = match (changed, fallback, left) {
                    (false, _, _) => None,
                    (true, true, Some(left)) => Some(
                        tokio::time::timeout(left, self.shard_request(&plan, i, &target))
                            .await
                            .unwrap_or_else(|_| {
                                Err(crate::error::name_server_after(
                                    server,
                                    std::io::Error::from(std::io::ErrorKind::TimedOut).into(),
                                    None,
                                    self.response_timeout,
                                ))
                            }),
                    ),
                    (true, _, _) => Some(self.shard_request(&plan, i, &target).await),
                };
                plan.settle(i, reply, retry);
            }
            plan.finish(i, reply);
        }
        replies
    }

    /// Request `i` of `plan`, to `target`.
    async fn shard_request(&self, plan: &ShardPlan<'_>, i: usize, target: &Target) -> RedisResult<Vec<Value>> {
        let r = &plan.requests[i];
        if plan.waited(i) {
            Box::pin(self.acked_on(r.server, &r.cmds)).await
        } else {
            self.request_on(r.server, &r.cmds, r.block, target).await
        }
    }

    /// A write and its `WAIT` on a dedicated connection of server `index`
    /// (taken from the blocking commands' pool and given back after its
    /// replies), with a deadline of the response timeout plus the WAIT's.
    async fn acked_on(&self, index: usize, cmds: &Cmds<'_>) -> RedisResult<Vec<Value>> {
        let server = self.core.server(index);
        let span = Span::server(&self.core, index);
        let extra = self.options.acks.map_or(Duration::ZERO, |a| a.timeout);
        let deadline = self.response_timeout.map(|t| t.saturating_add(extra));
        let run = async {
            let mut held = self.hold_connection(index).await?;
            let mut pipe = redis::pipe();
            for c in cmds.iter() {
                pipe.add_command(c.clone());
            }
            let reply = held.pipeline(&pipe, 0, cmds.len(), deadline).await;
            self.release_connection(held);
            reply
        };
        span.run_async(run)
            .await
            .map_err(|e| crate::error::name_server_after(server, e, None, deadline))
    }

    /// The response timeout: the deadline of a request on a held
    /// connection.
    pub(crate) fn response_timeout(&self) -> Option<Duration> {
        self.response_timeout
    }

    /// A dedicated connection of server `index`, held across requests
    /// (a handle's WATCH ... EXEC, a write and its WAIT); give it back with
    /// [`release`](Self::release).
    async fn hold_connection(&self, index: usize) -> RedisResult<HeldConnection> {
        let server = self.core.server(index);
        let pool = self
            .blocking
            .get(index)
            .ok_or_else(|| client_error(format!("no server {index}")))?;
        let mut since = server.epoch();
        let started = std::time::Instant::now();
        let named = |e| crate::error::name_server_after(server, e, Some(started.elapsed()), None);
        let dedicated = match pool.take().await {
            Ok(d) => d,
            // The primary refused the connection (gone in a failover): the
            // failover wait, as for any request, then once more.
            Err(e) if crate::replicas::held_verdict(server, &e) == crate::replicas::Verdict::Again => {
                self.await_new_primary(index, since, e).await?;
                since = server.epoch();
                pool.take().await.map_err(named)?
            }
            Err(e) => return Err(named(e)),
        };
        Ok(HeldConnection {
            index,
            since,
            dedicated: Some(dedicated),
        })
    }

    /// After `e`, a refusal by a replica or a primary gone on server
    /// `index` (a shard whose address epoch was `since`): waits for
    /// Sentinel's new primary; an error if none is named within the
    /// failover wait.
    async fn await_new_primary(&self, index: usize, since: u64, e: redis::RedisError) -> RedisResult<()> {
        let server = self.core.server(index);
        let Some(shard) = server.shard() else {
            return Err(crate::error::name_server_after(server, e, None, self.response_timeout));
        };
        shard.suspect();
        if shard.wait_change_async(since, self.options.failover_wait).await {
            Ok(())
        } else {
            Err(crate::replicas::no_new_primary(
                server,
                self.options.failover_wait,
                Err(e),
            ))
        }
    }

    /// Gives back a held connection (dropped if a reply is outstanding).
    fn release_connection(&self, mut held: HeldConnection) {
        if let (Some(d), Some(pool)) = (held.dedicated.take(), self.blocking.get(held.index)) {
            pool.put(d);
        }
    }

    /// The async [`settle_held`](crate::client::Fleet::settle_held): the
    /// promises every write has, after a request on a held connection.
    async fn settle_held_connection<T>(
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
                let wrote = wrote(&v);
                // A transaction's writes: the cache does not know their
                // keys here, so the server's entries go.
                if let (true, Some(cache)) = (wrote, &self.running.cache) {
                    cache.flush(index);
                }
                if let Some(acks) = self.options.acks.filter(|_| server.shard().is_some())
                    && wrote
                {
                    let deadline = self.response_timeout.map(|t| t.saturating_add(acks.timeout));
                    let reply = held
                        .command(&crate::replicas::wait_cmd(acks), deadline)
                        .await
                        .map_err(|e| crate::error::name_server_after(server, e, None, deadline));
                    crate::replicas::check_ack(server, acks, reply)?;
                }
                Ok(Held::Done(v))
            }
            Err(e) => match crate::replicas::after_held(server, e) {
                AfterHeld::AwaitPrimary(e) => {
                    self.await_new_primary(index, held.since, e).await?;
                    Ok(Held::FailedOver)
                }
                AfterHeld::Fail(e) => Err(crate::error::name_server_after(server, e, None, self.response_timeout)),
            },
        }
    }

    /// One request's replies, error replies kept as values, on `target`.
    async fn request_on(
        &self,
        index: usize,
        cmds: &Cmds<'_>,
        block: Option<Duration>,
        target: &Target,
    ) -> RedisResult<Vec<Value>> {
        let span = Span::server(&self.core, index);
        if let (Some(block), Some(cmd)) = (block, cmds.single()) {
            // Boxed: its state is large and most calls never block.
            return span
                .run_async(Box::pin(self.blocking_on(index, cmd, block)))
                .await
                .map(|v| vec![v]);
        }
        let (mut con, node) = self.connection_for(index, target)?;
        if self.idle_a_second(index) && !cmds.iter().all(read_only) {
            // Its failure makes redis-rs's manager reconnect; the write then
            // goes on the new connection.
            let _ = con.req_packed_command(&redis::cmd("PING")).await;
        }
        let mut replies = self.send_on(&mut con, &span, cmds).await;
        // The shared connection found closed (the server restarted or
        // closed it while idle; redis-rs's manager reconnects on such an
        // error, and without RESP3 it learns of the close only then): a
        // request that changes nothing if run twice (every command
        // read-only by the table) is sent once more, on the new connection.
        // A write is not: it may have reached the server before the close.
        if let Err(e) = &replies
            && closed(e)
            && cmds.iter().all(read_only)
        {
            replies = self.send_on(&mut con, &span, cmds).await;
        }
        if let (Err(e), Some(node), Some(set)) = (&replies, &node, self.replicas.get(index))
            && (e.is_timeout() || e.is_io_error() || e.is_connection_refusal())
        {
            // A replica that failed a read is passed over a while.
            set.mark_down(node);
        }
        let named = node.as_ref().unwrap_or_else(|| self.core.server(index));
        replies.map_err(|e| crate::error::name_server_after(named, e, None, self.response_timeout))
    }

    /// Whether server `index`'s shared connection was idle a second or more
    /// (and marks it used now).
    fn idle_a_second(&self, index: usize) -> bool {
        let Some(slot) = self.last_used.get(index) else {
            return false;
        };
        let now = self.born.elapsed().as_millis() as u64;
        let last = slot.swap(now, std::sync::atomic::Ordering::Relaxed);
        now.saturating_sub(last) >= 1000
    }

    /// One request on the shared connection.
    /// A fleet pipeline's share goes as the `redis::Pipeline` it is; a list
    /// of commands is copied into one (redis-rs's async connections take a
    /// `Pipeline`).
    async fn send_on(&self, con: &mut ConnectionManager, span: &Span, cmds: &Cmds<'_>) -> RedisResult<Vec<Value>> {
        if let Some(cmd) = cmds.single() {
            return span.run_async(con.command(cmd)).await.map(|v| vec![v]);
        }
        match cmds {
            Cmds::Pipeline(pipe) => span.run_async(con.commands(pipe, 0, pipe.len())).await,
            Cmds::List(list) => {
                let mut pipe = redis::pipe();
                for c in list.iter() {
                    pipe.add_command(c.clone());
                }
                span.run_async(con.commands(&pipe, 0, list.len())).await
            }
        }
    }

    /// A blocking command (BLPOP, XREAD BLOCK, ...) on a dedicated
    /// connection of server `index`, never on the shared multiplexed one
    /// (where it would hold up every other command to that server). Its
    /// deadline is its block time plus the response timeout (none if it
    /// blocks until answered). If the deadline passes or the future is
    /// dropped before the reply, the command is ended on the server and
    /// what it took is given back ([`rescue`]); the connection is reused
    /// only after its reply was read.
    async fn blocking_on(&self, index: usize, cmd: &Cmd, block: Duration) -> RedisResult<Value> {
        let server = self.core.server(index);
        let pool = self
            .blocking
            .get(index)
            .ok_or_else(|| client_error(format!("no server {index}")))?;
        let wait = reply_wait(self.response_timeout, block);
        let started = std::time::Instant::now();
        let dedicated = pool
            .take()
            .await
            .map_err(|e| crate::error::name_server_after(server, e, Some(started.elapsed()), None))?;
        let mut con = dedicated.con.clone();
        let owned = cmd.clone();
        let task = tokio::spawn(async move { con.req_packed_command(&owned).await });
        let mut call = Outstanding {
            task: Some(task),
            dedicated: Some(dedicated),
            mr: self.clone(),
            index,
            cmd: cmd.clone(),
        };
        let task = call.task.as_mut().expect("just set");
        let reply = match wait {
            Some(wait) => tokio::time::timeout(wait, task).await,
            None => Ok(task.await),
        };
        let reply = match reply {
            // The deadline passed: `call` is dropped, and rescued.
            Err(_elapsed) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
            Ok(joined) => {
                call.task = None;
                let dedicated = call.dedicated.take();
                match joined {
                    Ok(Ok(value)) => {
                        if let Some(d) = dedicated {
                            pool.put(d);
                        }
                        Ok(value)
                    }
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(client_error(format!("the blocking command's task ended: {e}"))),
                }
            }
        };
        reply.map_err(|e| crate::error::name_server_after(server, e, None, wait))
    }
}
impl Fleet {
    /// A routed command (see [`Driver::run`](crate::driver::Driver::run)),
    /// through the seam.
    pub(crate) async fn run<RV: FromRedisValue>(&self, route: Route, cmd: &Cmd) -> RedisResult<RV> {
        if let (true, Some(cache), Route::One { server, moves }) = (self.cached, &self.running.cache, &route)
            && moves.is_empty()
            && self.read_from == crate::options::ReadFrom::Primary
            && let Some(key) = crate::cache::cacheable_key(cmd)
        {
            if let Some(h) = &self.core.health {
                cache.follow_routing(h.routing_epoch());
            }
            let read = crate::cache::Cacheable {
                server: *server,
                key,
                packed: cmd.get_packed_command(),
            };
            if let Some(v) = cache.get(&read, self.core.server(*server).epoch()) {
                return Ok(RV::from_redis_value(v)?);
            }
            if let Some(reply) = cache.read(&read, cmd, &self.core).await {
                return Ok(RV::from_redis_value(reply?)?);
            }
        }
        crate::driver::run_async(self, route, cmd).await
    }

    /// `cmd` on every server, through the seam.
    pub(crate) async fn fan_out<RV: FromRedisValue>(&self, cmd: &Cmd) -> Result<PerServer<RV>, FanOutError<RV>> {
        crate::driver::fan_out_async(self, cmd).await
    }
}

impl AsyncDriver for Fleet {
    type Held = HeldConnection;

    fn core(&self) -> &Arc<Topology> {
        &self.core
    }

    fn drive<M>(&self, machine: M) -> impl std::future::Future<Output = RedisResult<M::Output>> + Send
    where
        M: Machine + Send,
        M::Output: Send,
    {
        self.drive_machine(machine)
    }

    fn hold(&self, index: usize) -> impl std::future::Future<Output = RedisResult<HeldConnection>> + Send {
        self.hold_connection(index)
    }

    fn release(&self, held: HeldConnection) {
        self.release_connection(held)
    }

    fn settle_held<T: Send>(
        &self,
        held: &mut HeldConnection,
        result: RedisResult<T>,
        wrote: impl FnOnce(&T) -> bool + Send,
    ) -> impl std::future::Future<Output = RedisResult<Held<T>>> + Send {
        self.settle_held_connection(held, result, wrote)
    }
}

/// A server's shared multiplexed connection: made once for a plain
/// server; for a shard, made for its current primary, with the address
/// epoch it is for.
struct Shared {
    fixed: Option<ConnectionManager>,
    current: std::sync::RwLock<Option<(u64, ConnectionManager)>>,
}

/// A lazily connecting, self-reconnecting manager for `server`'s current
/// address.
fn manager(server: &Server, options: &Options, core: &Topology) -> RedisResult<ConnectionManager> {
    Ok(ConnectionManager::new_lazy(
        server.client()?,
        options.connect_timeout,
        options.response_timeout,
        options.retries,
        core.client_name.clone(),
        core.lineage.clone(),
    ))
}

/// A server's dedicated connections for blocking commands (BLPOP, XREAD
/// BLOCK, ...): plain multiplexed connections, each used by one call at a
/// time, so a blocked command never holds up the server's shared
/// connection. Kept idle after a call that got its reply; a connection
/// with a reply outstanding is never put back.
struct BlockingPool {
    server: Server,
    /// The client for the server's current address and its epoch.
    client: std::sync::Mutex<Option<(u64, redis::Client)>>,
    /// Kept by the next configuration while the server stays.
    idle: Arc<std::sync::Mutex<Vec<Dedicated>>>,
    max_idle: usize,
    connect_timeout: Duration,
    /// The name new connections give themselves (`CLIENT SETNAME`).
    name: Option<String>,
    /// The client's, which counts the connections opened.
    lineage: Arc<crate::routing::Lineage>,
}

/// A dedicated connection and its id on the server (`CLIENT ID`, for
/// `CLIENT UNBLOCK`; `None` if the server refused to say).
struct Dedicated {
    con: MultiplexedConnection,
    id: Option<i64>,
}

impl BlockingPool {
    /// The client for the current address; idle connections to an old
    /// one (before a failover) are dropped.
    fn client(&self) -> RedisResult<redis::Client> {
        let epoch = self.server.epoch();
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some((e, c)) if *e == epoch => Ok(c.clone()),
            before => {
                // Idle connections to an old address go (those kept from
                // the configuration before are to the same one).
                if before.is_some() {
                    self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
                }
                let c = self.server.client()?;
                *slot = Some((epoch, c.clone()));
                Ok(c)
            }
        }
    }

    async fn take(&self) -> RedisResult<Dedicated> {
        let client = self.client()?;
        if let Some(d) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(d);
        }
        // No response timeout of redis-rs's: the call sets its own
        // deadline, and a late reply must not be dropped unread.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None);
        // Named, and checked for a fence, as the shared connection.
        let mut con = tokio::time::timeout(
            self.connect_timeout,
            crate::connect::open_multiplexed(
                &client,
                &config,
                crate::connect::Kind::Dedicated,
                self.name.as_deref(),
                &self.lineage.opened,
            ),
        )
        .await
        .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()))?;
        let id = match tokio::time::timeout(
            self.connect_timeout,
            con.req_packed_command(redis::cmd("CLIENT").arg("ID")),
        )
        .await
        {
            Ok(Ok(Value::Int(id))) => Some(id),
            _ => None,
        };
        Ok(Dedicated { con, id })
    }

    fn put(&self, d: Dedicated) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(d);
        }
    }
}

/// A dedicated connection of one server held across requests (see
/// [`Fleet::hold`]). A request on it has a deadline; one that passes it
/// leaves a reply outstanding, and the connection is then not given back.
pub(crate) struct HeldConnection {
    index: usize,
    /// The server's address epoch when it was taken (a failover since
    /// changes it).
    since: u64,
    dedicated: Option<Dedicated>,
}

impl HeldConnection {
    /// The connection (an error once a request on it failed).
    fn con(&self) -> RedisResult<MultiplexedConnection> {
        self.dedicated
            .as_ref()
            .map(|d| d.con.clone())
            .ok_or_else(|| client_error("the held connection failed before".to_string()))
    }

    /// One command, within `deadline`.
    pub(crate) async fn command(&mut self, cmd: &Cmd, deadline: Option<Duration>) -> RedisResult<Value> {
        let mut con = self.con()?;
        let reply = within(deadline, con.req_packed_command(cmd)).await;
        self.after(&reply);
        reply
    }

    /// `count` replies of `pipe` from `offset` on, within `deadline`
    /// (an atomic pipeline's aborted transaction as redis-rs reports it).
    pub(crate) async fn pipeline(
        &mut self,
        pipe: &redis::Pipeline,
        offset: usize,
        count: usize,
        deadline: Option<Duration>,
    ) -> RedisResult<Vec<Value>> {
        let mut con = self.con()?;
        let reply = within(deadline, con.req_packed_commands(pipe, offset, count)).await;
        self.after(&reply);
        reply
    }

    /// A failure below the server's reply leaves the connection unusable.
    fn after<T>(&mut self, reply: &RedisResult<T>) {
        if let Err(e) = reply
            && (e.is_timeout() || e.is_io_error() || e.is_connection_dropped() || closed(e))
        {
            self.dedicated = None;
        }
    }
}

/// `f`, or a timeout error once `deadline` passed.
async fn within<T>(deadline: Option<Duration>, f: impl std::future::Future<Output = RedisResult<T>>) -> RedisResult<T> {
    match deadline {
        Some(d) => tokio::time::timeout(d, f)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())),
        None => f.await,
    }
}

/// A blocking command in flight on a dedicated connection. If the call
/// ends without its reply (its deadline passed, or its future was
/// dropped), dropping this hands the command to [`rescue`].
struct Outstanding {
    task: Option<tokio::task::JoinHandle<RedisResult<Value>>>,
    dedicated: Option<Dedicated>,
    mr: Fleet,
    index: usize,
    cmd: Cmd,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        let (Some(task), Some(dedicated)) = (self.task.take(), self.dedicated.take()) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let (mr, index, cmd) = (self.mr.clone(), self.index, self.cmd.clone());
                rt.spawn(rescue(mr, index, cmd, task, dedicated));
            }
            // No runtime to rescue it on: closing the connection makes the
            // server unblock the command without popping for it.
            Err(_) => task.abort(),
        }
    }
}

/// Ends a blocking command whose caller went away: asks the server to
/// unblock it (`CLIENT UNBLOCK`, on the shared connection), reads its
/// reply, and gives back what the server took for it (an element BLPOP
/// popped is pushed back to the head of its list, see [`give_back`]). If
/// the server cannot be asked, or no reply comes within the response
/// timeout, the connection is closed (the task aborted): the server then
/// unblocks the command itself and pops nothing for it.
async fn rescue(
    mr: Fleet,
    index: usize,
    cmd: Cmd,
    mut task: tokio::task::JoinHandle<RedisResult<Value>>,
    dedicated: Dedicated,
) {
    let grace = mr.response_timeout.unwrap_or(Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    let reply = loop {
        let Some(id) = dedicated.id else { break None };
        let Ok(mut shared) = mr.connection(index) else {
            break None;
        };
        let unblock = redis::cmd("CLIENT").arg("UNBLOCK").arg(id).clone();
        if !matches!(
            tokio::time::timeout(grace, shared.req_packed_command(&unblock)).await,
            Ok(Ok(Value::Int(_)))
        ) {
            break None;
        }
        // Unblocked (a nil reply is on its way), already answered, or not
        // yet arrived (then asked again).
        if let Ok(reply) = tokio::time::timeout(Duration::from_millis(20), &mut task).await {
            break Some(reply);
        }
        if started.elapsed() >= grace {
            break None;
        }
    };
    match reply {
        Some(Ok(Ok(value))) => {
            give_back(&mr, index, &cmd, value).await;
            mr.blocking[index].put(dedicated);
        }
        Some(_) => {}
        None => task.abort(),
    }
}

/// Puts back what a blocking command took for a caller that is gone: the
/// elements of BLPOP, BRPOP and BLMPOP (to the end they came from, in
/// their order), the members of BZPOPMIN, BZPOPMAX and BZMPOP (with their
/// scores). BLMOVE and BRPOPLPUSH moved theirs to the destination list,
/// XREADGROUP's entries are pending in the group, XREAD and WAIT take
/// nothing: those have nothing to give back.
async fn give_back(mr: &Fleet, index: usize, cmd: &Cmd, value: Value) {
    let args = crate::routing::args_of(cmd);
    let name = args.first().map(|n| n.to_ascii_uppercase()).unwrap_or_default();
    let bytes = |v: &Value| -> Option<Vec<u8>> {
        match v {
            Value::BulkString(b) => Some(b.clone()),
            Value::SimpleString(s) => Some(s.clone().into_bytes()),
            Value::Int(i) => Some(i.to_string().into_bytes()),
            Value::Double(d) => Some(d.to_string().into_bytes()),
            _ => None,
        }
    };
    let items = |v: &Value| -> Vec<Value> {
        match v {
            Value::Array(a) => a.clone(),
            _ => Vec::new(),
        }
    };
    let parts = items(&value);
    let mut back = Vec::new();
    match (name.as_slice(), &parts[..]) {
        (b"BLPOP" | b"BRPOP", [key, elem]) => {
            let push = if name == b"BLPOP" { "LPUSH" } else { "RPUSH" };
            if let (Some(k), Some(e)) = (bytes(key), bytes(elem)) {
                back.push(redis::cmd(push).arg(k).arg(e).clone());
            }
        }
        (b"BZPOPMIN" | b"BZPOPMAX", [key, member, score]) => {
            if let (Some(k), Some(m), Some(s)) = (bytes(key), bytes(member), bytes(score)) {
                back.push(redis::cmd("ZADD").arg(k).arg(s).arg(m).clone());
            }
        }
        (b"BLMPOP", [key, elems]) => {
            // BLMPOP timeout numkeys key... LEFT|RIGHT [COUNT n]
            let numkeys: usize = args
                .get(2)
                .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
                .unwrap_or(0);
            let left = args.get(3 + numkeys).is_some_and(|d| d.eq_ignore_ascii_case(b"LEFT"));
            if let Some(k) = bytes(key) {
                let mut c = redis::cmd(if left { "LPUSH" } else { "RPUSH" });
                c.arg(k);
                let elems: Vec<Vec<u8>> = items(elems).iter().filter_map(bytes).collect();
                for e in elems.iter().rev() {
                    c.arg(e);
                }
                if !elems.is_empty() {
                    back.push(c);
                }
            }
        }
        (b"BZMPOP", [key, members]) => {
            if let Some(k) = bytes(key) {
                let mut c = redis::cmd("ZADD");
                c.arg(k);
                let mut any = false;
                for pair in items(members) {
                    if let [m, s] = &items(&pair)[..]
                        && let (Some(m), Some(s)) = (bytes(m), bytes(s))
                    {
                        c.arg(s).arg(m);
                        any = true;
                    }
                }
                if any {
                    back.push(c);
                }
            }
        }
        _ => {}
    }
    for c in back {
        // Nothing more can be done if the server refuses it (it is down,
        // or the key now holds another type); the error is traced.
        let _reply = mr.value_on(index, &c).await;
        #[cfg(feature = "tracing")]
        if let Err(e) = &_reply {
            tracing::warn!(
                server = mr.core.name(index),
                error = %crate::error_text(e),
                "mredis: could not give back what a cancelled blocking command took"
            );
        }
    }
}

/// How long a blocking command's reply is waited for: its block time plus
/// the response timeout; `None` (no client deadline) if it blocks until
/// answered or there is no response timeout.
fn reply_wait(response_timeout: Option<Duration>, block: Duration) -> Option<Duration> {
    if block.is_zero() {
        return None;
    }
    response_timeout.map(|t| t.saturating_add(block))
}

mredis_macros::async_methods!();
