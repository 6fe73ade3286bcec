//! Per-key pipelines: a redis-rs pipeline bound to the server that owns one
//! key. Unlike the original MRedis, where a command on another server's key
//! silently went to the wrong server, such a command makes execution fail
//! before anything is sent, naming the key and both servers.

use std::sync::Arc;

use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisResult, ToRedisArgs, Value};

use crate::routing::{Core, client_error};

/// Pipelines run only on the client (and so the server list) they were built for.
fn same_client(running: &Arc<Core>, built: &Arc<Core>) -> RedisResult<()> {
    if Arc::ptr_eq(running, built) {
        Ok(())
    } else {
        Err(client_error(
            "this pipeline was made by another MRedis; run it on the client that created it".to_string(),
        ))
    }
}

/// A pipeline bound to one server; see [`MRedis::pipeline`](crate::MRedis::pipeline).
///
/// ```no_run
/// # fn main() -> redis::RedisResult<()> {
/// # let mr = mredis::MRedis::new(["redis://127.0.0.1:6379/0"])?;
/// let (len, items): (usize, Vec<String>) = mr
///     .pipeline("list")?
///     .rpush("list", "a").ignore()
///     .rpush("list", "b").ignore()
///     .llen("list")
///     .lrange("list", 0, -1)
///     .query(&mr)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KeyPipeline {
    core: Arc<Core>,
    server: usize,
    pipe: Pipeline,
    problem: Option<RedisError>,
}

impl std::fmt::Debug for KeyPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPipeline")
            .field("server", &self.core.name(self.server))
            .field("commands", &self.pipe.len())
            .field("problem", &self.problem)
            .finish()
    }
}

impl KeyPipeline {
    pub(crate) fn new(core: Arc<Core>, server: usize) -> KeyPipeline {
        KeyPipeline {
            core,
            server,
            pipe: Pipeline::new(),
            problem: None,
        }
    }

    /// The server this pipeline runs on (`host:port:db`).
    pub fn server(&self) -> &str {
        self.core.name(self.server)
    }

    /// Runs the commands as one MULTI/EXEC transaction on the server.
    pub fn atomic(&mut self) -> &mut Self {
        self.pipe.atomic();
        self
    }

    /// Drops the reply of the last command added from the results.
    pub fn ignore(&mut self) -> &mut Self {
        self.pipe.ignore();
        self
    }

    /// Adds a command built by hand (e.g. `redis::cmd("OBJECT")...`) whose
    /// key is `key`; it must belong to this pipeline's server.
    pub fn add_routed<K: ToRedisArgs>(&mut self, key: K, cmd: Cmd) -> &mut Self {
        self.check_key("add_routed", &key);
        self.add_command(cmd)
    }

    /// Number of commands added.
    pub fn len(&self) -> usize {
        self.pipe.len()
    }

    /// True when no command was added.
    pub fn is_empty(&self) -> bool {
        self.pipe.is_empty()
    }

    pub(crate) fn add_command(&mut self, cmd: Cmd) -> &mut Self {
        self.pipe.add_command(cmd);
        self
    }

    pub(crate) fn check_key<K: ToRedisArgs>(&mut self, command: &str, key: &K) {
        let keys = key.to_redis_args();
        self.check_keys(command, &keys);
    }

    pub(crate) fn check_keys(&mut self, command: &str, keys: &[Vec<u8>]) {
        if self.problem.is_some() {
            return;
        }
        for key in keys {
            let owner = self.core.placement.index(key);
            if owner != self.server {
                self.problem = Some(RedisError::from((
                    redis::ErrorKind::Client,
                    "mredis: key of another server in a pipeline",
                    format!(
                        "{command} in a pipeline bound to {} uses key `{}`, which belongs to {}; nothing was sent",
                        self.core.name(self.server),
                        crate::routing::show_key(key),
                        self.core.name(owner)
                    ),
                )));
                return;
            }
        }
    }

    fn ready(&self, core: &Arc<Core>) -> RedisResult<()> {
        if let Some(problem) = &self.problem {
            return Err(problem.clone());
        }
        same_client(core, &self.core)?;
        Ok(())
    }

    /// Sends the pipeline on the sync client and converts the replies, like
    /// redis-rs's `Pipeline::query`.
    pub fn query<T: FromRedisValue>(&self, mr: &crate::MRedis) -> RedisResult<T> {
        self.ready(mr.core())?;
        if self.pipe.is_empty() {
            return Ok(T::from_redis_value(Value::Array(vec![]))?);
        }
        let values = mr.pipeline_on(self.server, &self.pipe)?;
        Ok(T::from_redis_value(Value::Array(values))?)
    }

    /// Sends the pipeline on the async client and converts the replies.
    pub async fn query_async<T: FromRedisValue>(&self, mr: &crate::aio::MRedis) -> RedisResult<T> {
        self.ready(mr.core())?;
        if self.pipe.is_empty() {
            return Ok(T::from_redis_value(Value::Array(vec![]))?);
        }
        let values = mr.pipeline_on(self.server, &self.pipe).await?;
        Ok(T::from_redis_value(Value::Array(values))?)
    }

    /// Sends the pipeline and discards the replies.
    pub fn exec(&self, mr: &crate::MRedis) -> RedisResult<()> {
        self.query::<Value>(mr).map(|_| ())
    }
}

mredis_macros::pipeline_methods!();

/// A pipeline over the whole fleet: commands on any keys, in any order.
///
/// Each command is routed on its own key(s); executing it sends one
/// redis-rs pipeline per server involved (concurrently with the async
/// client) and returns the replies in call order. It is not atomic across
/// servers. A co-located or multi-key command whose keys span servers makes
/// execution fail before anything is sent.
///
/// ```no_run
/// # fn main() -> redis::RedisResult<()> {
/// # let mr = mredis::MRedis::new(["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/0"])?;
/// let (a, b): (Option<String>, Option<String>) = mr.pipeline_all().get("a").get("b").query(&mr)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FleetPipeline {
    core: Arc<Core>,
    /// Per server (by index): its pipeline and the call-order position of each command.
    shares: Vec<Option<(Pipeline, Vec<usize>)>>,
    ignored: Vec<bool>,
    problem: Option<RedisError>,
}

impl std::fmt::Debug for FleetPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetPipeline")
            .field("commands", &self.ignored.len())
            .field("problem", &self.problem)
            .finish()
    }
}

impl FleetPipeline {
    pub(crate) fn new(core: Arc<Core>) -> FleetPipeline {
        let shares = vec![None; core.servers.len()];
        FleetPipeline {
            core,
            shares,
            ignored: Vec::new(),
            problem: None,
        }
    }

    /// Drops the reply of the last command added from the results.
    pub fn ignore(&mut self) -> &mut Self {
        if let Some(last) = self.ignored.last_mut() {
            *last = true;
        }
        self
    }

    /// Adds a command built by hand, routed by `key`.
    pub fn add_routed<K: ToRedisArgs>(&mut self, key: K, cmd: Cmd) -> &mut Self {
        let server = self.route_key("add_routed", &key);
        self.add_routed_command(server, cmd)
    }

    /// Number of commands added.
    pub fn len(&self) -> usize {
        self.ignored.len()
    }

    /// True when no command was added.
    pub fn is_empty(&self) -> bool {
        self.ignored.is_empty()
    }

    fn record(&mut self, result: RedisResult<usize>) -> Option<usize> {
        match result {
            Ok(server) => Some(server),
            Err(e) => {
                if self.problem.is_none() {
                    self.problem = Some(e);
                }
                None
            }
        }
    }

    pub(crate) fn route_key<K: ToRedisArgs>(&mut self, command: &str, key: &K) -> Option<usize> {
        let result = self.core.route_key(command, key);
        self.record(result)
    }

    pub(crate) fn route_keys(&mut self, command: &str, keys: &[Vec<u8>]) -> Option<usize> {
        let result = self.core.route_colocated(command, keys);
        self.record(result)
    }

    pub(crate) fn add_routed_command(&mut self, server: Option<usize>, cmd: Cmd) -> &mut Self {
        let Some(server) = server else { return self };
        let position = self.ignored.len();
        if let Some(slot) = self.shares.get_mut(server) {
            let (pipe, positions) = slot.get_or_insert_with(|| (Pipeline::new(), Vec::new()));
            pipe.add_command(cmd);
            positions.push(position);
            self.ignored.push(false);
        }
        self
    }

    /// (server, pipeline) of every server with commands.
    fn jobs(&self, core: &Arc<Core>) -> RedisResult<Vec<(usize, &Pipeline)>> {
        if let Some(problem) = &self.problem {
            return Err(problem.clone());
        }
        same_client(core, &self.core)?;
        Ok(self
            .shares
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|(p, _)| (i, p)))
            .collect())
    }

    fn assemble<T: FromRedisValue>(
        &self,
        jobs: &[(usize, &Pipeline)],
        replies: Vec<RedisResult<Vec<Value>>>,
    ) -> RedisResult<T> {
        let mut slots: Vec<Option<Value>> = vec![None; self.ignored.len()];
        let mut failed = Vec::new();
        let mut succeeded = Vec::new();
        for ((server, _), reply) in jobs.iter().zip(replies) {
            match reply {
                Ok(values) => {
                    succeeded.push(self.core.name(*server).to_string());
                    if let Some(Some((_, positions))) = self.shares.get(*server) {
                        for (&p, v) in positions.iter().zip(values) {
                            slots[p] = Some(v);
                        }
                    }
                }
                Err(e) => failed.push(format!("{}: {e}", self.core.name(*server))),
            }
        }
        if !failed.is_empty() {
            return Err(RedisError::from((
                redis::ErrorKind::Io,
                "mredis: pipeline failed on some servers",
                format!(
                    "failed on {}; the commands for {} were executed",
                    failed.join("; "),
                    if succeeded.is_empty() {
                        "no server".to_string()
                    } else {
                        succeeded.join(", ")
                    }
                ),
            )));
        }
        let values: Vec<Value> = slots
            .into_iter()
            .zip(&self.ignored)
            .filter(|(_, ignored)| !**ignored)
            .map(|(v, _)| v.unwrap_or(Value::Nil))
            .collect();
        Ok(T::from_redis_value(Value::Array(values))?)
    }

    /// Sends the commands (one pipeline per server, in parallel) on the sync
    /// client and returns the replies in call order.
    pub fn query<T: FromRedisValue>(&self, mr: &crate::MRedis) -> RedisResult<T> {
        let jobs = self.jobs(mr.core())?;
        let replies = mr.on_each(&jobs, |s, p| mr.pipeline_on(s, p));
        self.assemble(&jobs, replies)
    }

    /// Sends the commands on the async client, all servers concurrently.
    pub async fn query_async<T: FromRedisValue>(&self, mr: &crate::aio::MRedis) -> RedisResult<T> {
        let jobs = self.jobs(mr.core())?;
        let replies = futures::future::join_all(jobs.iter().map(|(server, pipe)| mr.pipeline_on(*server, pipe))).await;
        self.assemble(&jobs, replies)
    }
}

mredis_macros::fleet_pipeline_methods!();
