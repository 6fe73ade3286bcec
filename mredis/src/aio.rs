//! The async client (tokio): one multiplexed, self-reconnecting connection
//! per server (redis-rs `ConnectionManager`, opened lazily so a server that
//! is down does not keep the others from working). Fan-out and
//! scatter-gather send to all servers concurrently. The routed methods are
//! generated from `commands.toml`.

use std::sync::Arc;

use futures::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, RedisResult, Value};

use crate::client::collect_fan_out;
use crate::config::{IntoServer, Options, Server, collect_servers};
use crate::per_server::{FanOutError, PerServer};
use crate::pipeline::KeyPipeline;
use crate::routing::{Core, Merge, name_server};

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
}

impl std::fmt::Debug for MRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("aio::MRedis")
            .field(
                "servers",
                &self.core.servers.iter().map(Server::name).collect::<Vec<_>>(),
            )
            .field("mode", &self.core.placement.mode())
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

    /// A [`Builder`](crate::Builder) for options; finish with `build_async().await`.
    pub fn builder() -> crate::Builder {
        crate::Builder::new()
    }

    pub(crate) fn from_parts(servers: Vec<Server>, options: Options) -> RedisResult<MRedis> {
        let mut connections = Vec::with_capacity(servers.len());
        for server in &servers {
            let client = server.client().map_err(|e| name_server(server.name(), e))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(options.response_timeout)
                .set_number_of_retries(options.retries);
            let manager =
                ConnectionManager::new_lazy_with_config(client, config).map_err(|e| name_server(server.name(), e))?;
            connections.push(manager);
        }
        let core = Core::new(servers, &options)?;
        Ok(MRedis {
            core,
            connections: Arc::new(connections),
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

    /// A pipeline bound to the server that owns `key`; run it with
    /// [`KeyPipeline::query_async`].
    pub fn pipeline<K: redis::ToRedisArgs>(&self, key: K) -> RedisResult<KeyPipeline> {
        let index = self.core.route_key("pipeline", &key)?;
        Ok(KeyPipeline::new(self.core.clone(), index))
    }

    /// A pipeline over the whole fleet; run it with
    /// [`FleetPipeline::query_async`](crate::FleetPipeline::query_async).
    pub fn pipeline_all(&self) -> crate::FleetPipeline {
        crate::FleetPipeline::new(self.core.clone())
    }

    /// Runs any command on the server that owns `key`.
    pub async fn query_routed<K: redis::ToRedisArgs, RV: FromRedisValue>(&self, key: K, cmd: &Cmd) -> RedisResult<RV> {
        let index = self.core.route_key("query_routed", &key)?;
        self.query_on(index, cmd).await
    }

    /// Runs any command on every server, concurrently.
    pub async fn query_all<RV: FromRedisValue>(&self, cmd: &Cmd) -> Result<PerServer<RV>, FanOutError<RV>> {
        self.fan_out(cmd).await
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub(crate) fn connection(&self, index: usize) -> RedisResult<ConnectionManager> {
        self.connections
            .get(index)
            .cloned()
            .ok_or_else(|| crate::routing::client_error(format!("no server {index}")))
    }

    pub(crate) async fn value_on(&self, index: usize, cmd: &Cmd) -> RedisResult<Value> {
        let mut con = self.connection(index)?;
        cmd.query_async::<Value>(&mut con)
            .await
            .map_err(|e| name_server(self.core.name(index), e))
    }

    pub(crate) async fn query_on<RV: FromRedisValue>(&self, index: usize, cmd: &Cmd) -> RedisResult<RV> {
        let value = self.value_on(index, cmd).await?;
        Ok(RV::from_redis_value(value)?)
    }

    pub(crate) async fn pipeline_on(&self, index: usize, pipe: &redis::Pipeline) -> RedisResult<Vec<Value>> {
        let mut con = self.connection(index)?;
        pipe.query_async::<Vec<Value>>(&mut con)
            .await
            .map_err(|e| name_server(self.core.name(index), e))
    }

    pub(crate) fn route_key<K: redis::ToRedisArgs>(&self, command: &str, key: &K) -> RedisResult<usize> {
        self.core.route_key(command, key)
    }

    pub(crate) fn route_colocated(&self, command: &str, keys: &[Vec<u8>]) -> RedisResult<usize> {
        self.core.route_colocated(command, keys)
    }

    pub(crate) async fn fan_out<RV: FromRedisValue>(&self, cmd: &Cmd) -> Result<PerServer<RV>, FanOutError<RV>> {
        let replies = join_all((0..self.core.servers.len()).map(|i| self.value_on(i, cmd))).await;
        collect_fan_out(&self.core, cmd, replies)
    }

    pub(crate) async fn scatter<RV: FromRedisValue>(&self, cmd: &Cmd, stride: usize, merge: Merge) -> RedisResult<RV> {
        let plan = self.core.plan(cmd, stride)?;
        if plan.whole {
            let (server, _) = plan.groups[0];
            return self.query_on(server, cmd).await;
        }
        let cmds: Vec<(usize, Cmd)> = plan
            .groups
            .iter()
            .map(|(s, items)| (*s, plan.command_for(items)))
            .collect();
        let replies = join_all(cmds.iter().map(|(s, c)| self.value_on(*s, c))).await;
        let value = plan.merge(&self.core, merge, replies)?;
        Ok(RV::from_redis_value(value)?)
    }
}

mredis_macros::async_methods!();
