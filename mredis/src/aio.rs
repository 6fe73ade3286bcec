//! The async client (tokio): one multiplexed, self-reconnecting connection
//! per server (redis-rs `ConnectionManager`, opened lazily so a server that
//! is down does not keep the others from working). Routing, splitting and
//! merging are the sync client's (`routing`); only the I/O differs: calls on
//! several servers are sent concurrently and awaited together.

use std::sync::Arc;

use futures::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, RedisResult, Value};

use crate::error::client_error;
use crate::exec::{FanOut, Machine, Routed, Step, fan_out_result};
pub use crate::handle::AsyncConnection as Connection;
use crate::options::Options;
use crate::per_server::{FanOutError, PerServer};
use crate::pipeline::KeyPipeline;
pub use crate::pubsub::Subscriber;
use crate::routing::{Core, Route, name_server};
use crate::server::{IntoServer, Server, collect_servers};
use crate::telemetry::Span;

/// Several Redis servers behaving like one (async, tokio).
///
/// Cheap to clone; clones share the connections. Method names and
/// signatures are those of redis-rs's `AsyncCommands`, with `&self`.
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
    core: Arc<Core>,
    connections: Arc<Vec<ConnectionManager>>,
    response_timeout: Option<std::time::Duration>,
    /// The servers' COMMAND metadata, for routed handles (fetched once).
    book: Arc<std::sync::OnceLock<Arc<crate::handle::CommandBook>>>,
}

impl std::fmt::Debug for MRedis {
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
        let core = Core::new(servers, &options)?;
        let mut connections = Vec::with_capacity(core.servers.len());
        for server in &core.servers {
            let client = server.client().map_err(|e| name_server(server, e))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(options.response_timeout)
                .set_number_of_retries(options.retries);
            let manager =
                ConnectionManager::new_lazy_with_config(client, config).map_err(|e| name_server(server, e))?;
            connections.push(manager);
        }
        Ok(MRedis {
            core,
            connections: Arc::new(connections),
            response_timeout: options.response_timeout,
            book: Arc::default(),
        })
    }

    /// The servers of the current configuration, in configuration order.
    pub fn servers(&self) -> &[Server] {
        self.core.current_servers()
    }

    /// The name (`host:port:db`) of the server that owns `key`.
    pub fn server_for<K: redis::ToRedisArgs>(&self, key: K) -> RedisResult<&str> {
        let Route::One { server, .. } = self.core.route_key("server_for", &key)? else {
            unreachable!("one key has one server")
        };
        Ok(self.core.name(server))
    }

    /// A pipeline bound to the server that owns `key`; run it with
    /// [`KeyPipeline::query_async`].
    pub fn pipeline<K: redis::ToRedisArgs>(&self, key: K) -> RedisResult<KeyPipeline> {
        KeyPipeline::new(self.core.clone(), self.core.route_key("pipeline", &key)?)
    }

    /// A pipeline over the whole fleet; run it with
    /// [`FleetPipeline::query_async`](crate::FleetPipeline::query_async).
    pub fn pipeline_all(&self) -> crate::FleetPipeline {
        crate::FleetPipeline::new(self.core.clone())
    }

    /// A routed connection handle implementing `redis::aio::ConnectionLike`,
    /// for code written against redis-rs async connections; see
    /// [`handle`](crate::handle) for the routing rules. Cheap to clone.
    pub async fn get_connection(&self) -> RedisResult<Connection> {
        // Connects now, as redis-rs's `get_multiplexed_async_connection`
        // does, and learns the servers' COMMAND metadata for commands the
        // table does not know.
        let con = Connection::new(self.clone());
        con.describe().await?;
        Ok(con)
    }

    /// A subscriber over every server: channels on their owner server,
    /// patterns on all, one stream of events; it reconnects and subscribes
    /// again by itself. See [`pubsub`](crate::pubsub). Needs a tokio runtime.
    pub fn subscriber(&self) -> RedisResult<Subscriber> {
        Subscriber::start(self.core.clone())
    }

    /// Each server's health as the opt-in health checking sees it; empty
    /// without it.
    pub fn health(&self) -> Vec<crate::health::ServerHealth> {
        self.core.health.as_ref().map(|h| h.snapshot()).unwrap_or_default()
    }

    /// Runs any command on the server that owns `key`.
    pub async fn query_routed<K: redis::ToRedisArgs, RV: FromRedisValue>(&self, key: K, cmd: &Cmd) -> RedisResult<RV> {
        let route = self.core.route_key("query_routed", &key)?;
        self.run(route, cmd).await
    }

    /// Runs any command on every server, concurrently.
    pub async fn query_all<RV: FromRedisValue>(&self, cmd: &Cmd) -> Result<PerServer<RV>, FanOutError<RV>> {
        self.fan_out(cmd).await
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The servers' COMMAND metadata, for routed handles (fetched once, on
    /// the first command the table does not know).
    pub(crate) fn command_book(&self) -> &std::sync::OnceLock<Arc<crate::handle::CommandBook>> {
        &self.book
    }

    pub(crate) fn connection(&self, index: usize) -> RedisResult<ConnectionManager> {
        self.connections
            .get(index)
            .cloned()
            .ok_or_else(|| client_error(format!("no server {index}")))
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
            .and_then(Value::extract_error)
            .map_err(|e| crate::error::name_server_after(self.core.server(index), e, None, self.response_timeout))
    }

    /// Runs a routed command on one server, or split over several
    /// (concurrently); keys being moved by a migration go through the
    /// migration machines, as in the sync client.
    pub(crate) async fn run<RV: FromRedisValue>(&self, route: Route, cmd: &Cmd) -> RedisResult<RV> {
        let value = Span::command(cmd, Routed::class(&route))
            .run_async(self.drive(Routed::new(&self.core, &route, cmd)))
            .await?;
        Ok(RV::from_redis_value(value)?)
    }

    pub(crate) async fn fan_out<RV: FromRedisValue>(&self, cmd: &Cmd) -> Result<PerServer<RV>, FanOutError<RV>> {
        let span = Span::command(cmd, "all");
        let result = span
            .run_async(async {
                Ok(fan_out_result(
                    &self.core,
                    cmd,
                    self.drive(FanOut::new(&self.core, cmd)).await,
                ))
            })
            .await
            .unwrap_or_else(|e| fan_out_result(&self.core, cmd, Err(e)));
        span.fan_out_outcome(&result);
        result
    }

    /// The async driver: carries a machine's requests (each a pipeline to
    /// one server, all servers concurrently) until it is done. One command
    /// goes on the server's multiplexed connection as is.
    pub(crate) async fn drive<M: Machine>(&self, mut machine: M) -> RedisResult<M::Output> {
        let mut step = machine.start();
        loop {
            let replies = match step {
                Step::Done(result) => return result,
                Step::Send(requests) => join_all(requests.iter().map(|r| self.request_on(r.server, &r.cmds))).await,
            };
            step = machine.next(replies);
        }
    }

    /// One request's replies, error replies kept as values.
    async fn request_on(&self, index: usize, cmds: &[Cmd]) -> RedisResult<Vec<Value>> {
        let span = Span::server(&self.core, index);
        let mut con = self.connection(index)?;
        let replies = match cmds {
            [cmd] => span.run_async(con.req_packed_command(cmd)).await.map(|v| vec![v]),
            _ => {
                let mut pipe = redis::pipe();
                for c in cmds {
                    pipe.add_command(c.clone());
                }
                span.run_async(con.req_packed_commands(&pipe, 0, cmds.len())).await
            }
        };
        replies.map_err(|e| crate::error::name_server_after(self.core.server(index), e, None, self.response_timeout))
    }
}

mredis_macros::async_methods!();
