//! The sync client: a connection pool per server (r2d2), so one `MRedis`
//! shared by many threads (`&self` methods, `Send + Sync`) never serialises
//! them behind one lock. The routed methods are generated from
//! `commands.toml`; this file holds what they call.

use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, Connection, ConnectionLike, FromRedisValue, RedisError, RedisResult, Value};

use crate::config::{IntoServer, Options, Server, collect_servers};
use crate::per_server::{FanOutError, PerServer};
use crate::pipeline::KeyPipeline;
use crate::routing::{Core, Merge, name_server};

/// Opens connections for r2d2 with mredis's timeouts.
#[derive(Debug)]
pub(crate) struct Manager {
    client: redis::Client,
    connect_timeout: Duration,
    response_timeout: Option<Duration>,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Connection;
    type Error = RedisError;

    fn connect(&self) -> Result<Connection, RedisError> {
        let con = self.client.get_connection_with_timeout(self.connect_timeout)?;
        con.set_read_timeout(self.response_timeout)?;
        con.set_write_timeout(self.response_timeout)?;
        Ok(con)
    }

    fn is_valid(&self, con: &mut Connection) -> Result<(), RedisError> {
        redis::cmd("PING").query::<()>(con)
    }

    fn has_broken(&self, con: &mut Connection) -> bool {
        !con.is_open()
    }
}

/// Keeps r2d2 quiet: errors reach the caller, naming the server, instead of a log.
#[derive(Debug)]
struct SilentErrors;

impl r2d2::HandleError<RedisError> for SilentErrors {
    fn handle_error(&self, _error: RedisError) {}
}

/// Several Redis servers behaving like one (sync).
///
/// Every single-key command goes to the server that owns the key; server-wide
/// commands go to every server and return a [`PerServer`]; multi-key commands
/// are split by server where that is safe. Method names and signatures are
/// those of redis-rs's `Commands`, with `&self` instead of `&mut self`.
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
    core: Arc<Core>,
    pools: Arc<Vec<r2d2::Pool<Manager>>>,
}

impl std::fmt::Debug for MRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MRedis")
            .field(
                "servers",
                &self.core.servers.iter().map(Server::name).collect::<Vec<_>>(),
            )
            .field("mode", &self.core.placement.mode())
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

    /// A [`Builder`](crate::Builder) for options (timeouts, hash tags, placement mode).
    pub fn builder() -> crate::Builder {
        crate::Builder::new()
    }

    pub(crate) fn from_parts(servers: Vec<Server>, options: Options) -> RedisResult<MRedis> {
        let mut pools = Vec::with_capacity(servers.len());
        for server in &servers {
            // One connection-opening thread per server (r2d2's default is
            // three): few threads, yet a hung server cannot delay the others.
            let housekeeping = Arc::new(scheduled_thread_pool::ScheduledThreadPool::new(1));
            let client = server.client().map_err(|e| name_server(server.name(), e))?;
            let manager = Manager {
                client,
                connect_timeout: options.connect_timeout,
                response_timeout: options.response_timeout,
            };
            let pool = r2d2::Pool::builder()
                .max_size(options.pool_size)
                .min_idle(Some(0))
                .test_on_check_out(false)
                .connection_timeout(options.connect_timeout)
                .error_handler(Box::new(SilentErrors))
                .thread_pool(housekeeping)
                .build_unchecked(manager);
            pools.push(pool);
        }
        let core = Core::new(servers, &options)?;
        Ok(MRedis {
            core,
            pools: Arc::new(pools),
        })
    }

    /// The servers, in configuration order.
    pub fn servers(&self) -> &[Server] {
        &self.core.servers
    }

    /// The name (`host:port:db`) of the server that owns `key`.
    pub fn server_for<K: redis::ToRedisArgs>(&self, key: K) -> RedisResult<&str> {
        let index = self.core.route_key("server_for", &key)?;
        Ok(self.core.name(index))
    }

    /// The index (in configuration order) of the server that owns `key`.
    pub fn server_index_for(&self, key: &[u8]) -> usize {
        self.core.placement.index(key)
    }

    /// A pipeline bound to the server that owns `key`. Every command added
    /// must use keys of that server; otherwise executing it fails before
    /// anything is sent, naming the key and both servers.
    pub fn pipeline<K: redis::ToRedisArgs>(&self, key: K) -> RedisResult<KeyPipeline> {
        let index = self.core.route_key("pipeline", &key)?;
        Ok(KeyPipeline::new(self.core.clone(), index))
    }

    /// A pipeline over the whole fleet: commands on any keys, split per
    /// server when executed, replies in call order.
    pub fn pipeline_all(&self) -> crate::FleetPipeline {
        crate::FleetPipeline::new(self.core.clone())
    }

    /// Runs `func` as a WATCH/MULTI/EXEC transaction on the server that owns
    /// `keys`, retrying while a watched key changes (redis-rs's
    /// `transaction`, on one shard). The keys must all live on one server
    /// (use hash tags); otherwise it fails before anything is sent. `func`
    /// gets that server's connection, to read the watched keys, and the
    /// atomic pipeline to fill; return `Ok(None)` to retry.
    pub fn transaction<K, T, F>(&self, keys: &[K], func: F) -> RedisResult<T>
    where
        K: redis::ToRedisArgs,
        F: FnMut(&mut Connection, &mut redis::Pipeline) -> RedisResult<Option<T>>,
    {
        let mut all = Vec::new();
        for k in keys {
            crate::routing::push_keys(&mut all, k);
        }
        let index = self.core.route_colocated("transaction", &all)?;
        let mut con = self.connection(index)?;
        redis::transaction(&mut *con, keys, func).map_err(|e| name_server(self.core.name(index), e))
    }

    /// Runs any command on the server that owns `key`: the escape hatch for
    /// commands or options the generated methods do not cover.
    pub fn query_routed<K: redis::ToRedisArgs, RV: FromRedisValue>(&self, key: K, cmd: &Cmd) -> RedisResult<RV> {
        let index = self.core.route_key("query_routed", &key)?;
        self.query_on(index, cmd)
    }

    /// Runs any command on every server.
    pub fn query_all<RV: FromRedisValue>(&self, cmd: &Cmd) -> Result<PerServer<RV>, FanOutError<RV>> {
        self.fan_out(cmd)
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// A pooled connection to server `index`, with errors naming the server.
    pub(crate) fn connection(&self, index: usize) -> RedisResult<r2d2::PooledConnection<Manager>> {
        let pool = self
            .pools
            .get(index)
            .ok_or_else(|| crate::routing::client_error(format!("no server {index}")))?;
        pool.get().map_err(|e| {
            RedisError::from((
                redis::ErrorKind::Io,
                "mredis: cannot connect",
                format!("{}: {e}", self.core.name(index)),
            ))
        })
    }

    pub(crate) fn value_on(&self, index: usize, cmd: &Cmd) -> RedisResult<Value> {
        let mut con = self.connection(index)?;
        cmd.query::<Value>(&mut *con)
            .map_err(|e| name_server(self.core.name(index), e))
    }

    pub(crate) fn query_on<RV: FromRedisValue>(&self, index: usize, cmd: &Cmd) -> RedisResult<RV> {
        let value = self.value_on(index, cmd)?;
        Ok(RV::from_redis_value(value)?)
    }

    pub(crate) fn pipeline_on(&self, index: usize, pipe: &redis::Pipeline) -> RedisResult<Vec<Value>> {
        let mut con = self.connection(index)?;
        pipe.query::<Vec<Value>>(&mut *con)
            .map_err(|e| name_server(self.core.name(index), e))
    }

    pub(crate) fn route_key<K: redis::ToRedisArgs>(&self, command: &str, key: &K) -> RedisResult<usize> {
        self.core.route_key(command, key)
    }

    pub(crate) fn route_colocated(&self, command: &str, keys: &[Vec<u8>]) -> RedisResult<usize> {
        self.core.route_colocated(command, keys)
    }

    pub(crate) fn fan_out<RV: FromRedisValue>(&self, cmd: &Cmd) -> Result<PerServer<RV>, FanOutError<RV>> {
        let jobs: Vec<(usize, &Cmd)> = (0..self.core.servers.len()).map(|i| (i, cmd)).collect();
        let replies = self.on_each(&jobs, |i, c| self.value_on(i, c));
        collect_fan_out(&self.core, cmd, replies)
    }

    /// Runs one job per server, in parallel threads when there are several
    /// (a round trip each, so waiting for them one by one would add up).
    pub(crate) fn on_each<J: Sync, T: Send>(
        &self,
        jobs: &[(usize, J)],
        run: impl Fn(usize, &J) -> RedisResult<T> + Sync,
    ) -> Vec<RedisResult<T>> {
        if jobs.len() <= 1 {
            return jobs.iter().map(|(i, j)| run(*i, j)).collect();
        }
        std::thread::scope(|scope| {
            let run = &run;
            let handles: Vec<_> = jobs[1..].iter().map(|(i, j)| scope.spawn(move || run(*i, j))).collect();
            let mut out = vec![run(jobs[0].0, &jobs[0].1)];
            for h in handles {
                out.push(
                    h.join()
                        .unwrap_or_else(|_| Err(crate::routing::client_error("a worker thread panicked".to_string()))),
                );
            }
            out
        })
    }

    pub(crate) fn scatter<RV: FromRedisValue>(&self, cmd: &Cmd, stride: usize, merge: Merge) -> RedisResult<RV> {
        let plan = self.core.plan(cmd, stride)?;
        if plan.whole {
            let (server, _) = plan.groups[0];
            return self.query_on(server, cmd);
        }
        let jobs: Vec<(usize, Cmd)> = plan
            .groups
            .iter()
            .map(|(s, items)| (*s, plan.command_for(items)))
            .collect();
        let replies = self.on_each(&jobs, |s, c| self.value_on(s, c));
        let value = plan.merge(&self.core, merge, replies)?;
        Ok(RV::from_redis_value(value)?)
    }
}

/// Turns per-server replies into a `PerServer`, or a `FanOutError` that
/// keeps the successful ones.
pub(crate) fn collect_fan_out<RV: FromRedisValue>(
    core: &Core,
    cmd: &Cmd,
    replies: Vec<RedisResult<Value>>,
) -> Result<PerServer<RV>, FanOutError<RV>> {
    let mut ok = Vec::with_capacity(replies.len());
    let mut failed = Vec::new();
    for (i, reply) in replies.into_iter().enumerate() {
        let name = core.name(i).to_string();
        match reply.and_then(|v| RV::from_redis_value(v).map_err(RedisError::from)) {
            Ok(v) => ok.push((name, v)),
            Err(e) => failed.push((name, e)),
        }
    }
    if failed.is_empty() {
        Ok(PerServer::from_entries(ok))
    } else {
        let command = crate::routing::command_name(cmd);
        Err(FanOutError::new(command, PerServer::from_entries(ok), failed))
    }
}

mredis_macros::sync_methods!();
