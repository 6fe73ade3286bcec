//! Pipelines. A [`KeyPipeline`] is bound to the server that owns one key: a
//! command on another server's key makes execution fail before anything is
//! sent (the original MRedis silently sent it to the wrong server). A
//! [`FleetPipeline`] routes each command on its own and sends one pipeline
//! per server, replies in call order.

use std::sync::Arc;

use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisResult, ToRedisArgs, Value};

use crate::error::{Failure, client_error, show_key};
use crate::migration::{One, Pipe};
use crate::routing::{Core, Move, Route};
use crate::telemetry::Span;

/// A command's old server and its keys there, while a migration moves them.
type Moving = Option<(usize, Vec<Vec<u8>>)>;

/// The moving keys of one command as (old server, keys); several old
/// servers for one command cannot be guarded together.
fn moving_of(core: &Core, command: &str, moves: &[Move]) -> Result<Moving, RedisError> {
    let Some(first) = moves.first() else { return Ok(None) };
    if moves.iter().any(|m| m.from != first.from) {
        return Err(crate::migration::try_again(core, &first.key, first.from, first.to)).map_err(|e| {
            RedisError::from((
                e.kind(),
                "mredis: keys being moved from several servers",
                format!("{command}: {}", e.detail().unwrap_or_default()),
            ))
        });
    }
    Ok(Some((first.from, moves.iter().map(|m| m.key.clone()).collect())))
}

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

/// The replies of one server's pipeline in the caller's terms: an atomic
/// pipeline's EXEC reply unpacked (nil when a WATCHed key changed), the
/// first error reply returned as the error (its code intact).
fn unpack(atomic: bool, mut values: Vec<Value>) -> RedisResult<Option<Vec<Value>>> {
    if atomic {
        match values.pop() {
            Some(Value::Array(items)) => values = items,
            Some(Value::Nil) | None => return Ok(None),
            Some(other) => {
                other.extract_error()?;
                return Err(client_error("unexpected EXEC reply".to_string()));
            }
        }
    }
    for v in &values {
        if let Value::ServerError(_) = v {
            v.clone().extract_error()?;
        }
    }
    Ok(Some(values))
}

/// The replies of the commands not marked `ignore()`, in call order.
fn kept(values: Vec<Value>, ignored: &[bool]) -> Vec<Value> {
    values
        .into_iter()
        .zip(ignored)
        .filter(|(_, ignored)| !**ignored)
        .map(|(v, _)| v)
        .collect()
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
    ignored: Vec<bool>,
    /// Every moving key of the pipeline, and per command its moving keys.
    moves: Vec<Move>,
    moving: Vec<Moving>,
    pending: Vec<Move>,
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
    pub(crate) fn new(core: Arc<Core>, route: Route) -> RedisResult<KeyPipeline> {
        let Route::One { server, moves } = route else {
            return Err(client_error("a pipeline is bound to one key".to_string()));
        };
        Ok(KeyPipeline {
            core,
            server,
            pipe: Pipeline::new(),
            ignored: Vec::new(),
            moves: Vec::new(),
            moving: Vec::new(),
            pending: moves,
            problem: None,
        })
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
        if let Some(last) = self.ignored.last_mut() {
            *last = true;
        }
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
        let pending = std::mem::take(&mut self.pending);
        match moving_of(&self.core, &crate::routing::command_name(&cmd), &pending) {
            Ok(m) => self.moving.push(m),
            Err(e) => {
                self.moving.push(None);
                if self.problem.is_none() {
                    self.problem = Some(e);
                }
            }
        }
        self.moves.extend(pending);
        self.pipe.add_command(cmd);
        self.ignored.push(false);
        self
    }

    pub(crate) fn check_key<K: ToRedisArgs>(&mut self, command: &str, key: &K) {
        if self.problem.is_some() {
            return;
        }
        match self.core.route_key(command, key) {
            Ok(route) => self.check_route(command, route, || key.to_redis_args()),
            Err(e) => self.problem = Some(e),
        }
    }

    pub(crate) fn check_keys(&mut self, command: &str, keys: &[Vec<u8>]) {
        if self.problem.is_some() {
            return;
        }
        for key in keys {
            let (owner, from) = self.core.owner(key);
            if owner != self.server {
                self.problem = Some(self.wrong_server(command, key, owner));
                return;
            }
            if let Some(from) = from {
                self.pending.push(Move {
                    from,
                    to: owner,
                    key: key.clone(),
                });
            }
        }
    }

    fn check_route(&mut self, command: &str, route: Route, keys: impl FnOnce() -> Vec<Vec<u8>>) {
        if let Route::One { server, moves } = route {
            if server != self.server {
                let key = keys().pop().unwrap_or_default();
                self.problem = Some(self.wrong_server(command, &key, server));
                return;
            }
            self.pending.extend(moves);
        }
    }

    fn wrong_server(&self, command: &str, key: &[u8], owner: usize) -> RedisError {
        RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot),
            "mredis",
            format!(
                "{command} in a pipeline bound to {} uses key `{}`, which belongs to {}; nothing was sent",
                self.core.name(self.server),
                show_key(key),
                self.core.name(owner)
            ),
        ))
    }

    fn ready(&self, core: &Arc<Core>) -> RedisResult<()> {
        if let Some(problem) = &self.problem {
            return Err(problem.clone());
        }
        same_client(core, &self.core)?;
        self.pipe.cmd_iter().try_for_each(|c| self.core.check_size(c))
    }

    fn finish<T: FromRedisValue>(&self, values: Vec<Value>) -> RedisResult<T> {
        let Some(values) = unpack(self.pipe.is_transaction(), values)? else {
            return Ok(T::from_redis_value(Value::Nil)?);
        };
        Ok(T::from_redis_value(Value::Array(kept(values, &self.ignored)))?)
    }

    /// Sends the pipeline on the sync client and converts the replies, like
    /// redis-rs's `Pipeline::query`.
    pub fn query<T: FromRedisValue>(&self, mr: &crate::MRedis) -> RedisResult<T> {
        let value = Span::pipeline(self.pipe.len()).run(|| self.query_value(mr))?;
        Ok(T::from_redis_value(value)?)
    }

    fn query_value(&self, mr: &crate::MRedis) -> RedisResult<Value> {
        type T = Value;
        self.ready(mr.core())?;
        if self.pipe.is_empty() {
            return Ok(T::from_redis_value(Value::Array(vec![]))?);
        }
        if self.moves.is_empty() {
            let values = mr.pipeline_on(self.server, &self.pipe)?;
            return self.finish(values);
        }
        let cmds: Vec<Cmd> = self.pipe.cmd_iter().cloned().collect();
        if self.pipe.is_transaction() {
            let value = mr.drive(One::new(&self.core, &cmds, true, self.server, &self.moves))?;
            return self.finish(vec![value]);
        }
        let list = self.moving_list(cmds);
        let slots = mr.drive(Pipe::new(&self.core, &list))?;
        self.finish(slots.into_iter().collect::<RedisResult<Vec<Value>>>()?)
    }

    fn moving_list(&self, cmds: Vec<Cmd>) -> Vec<(Cmd, usize, Moving)> {
        cmds.into_iter()
            .zip(&self.moving)
            .map(|(c, m)| (c, self.server, m.clone()))
            .collect()
    }

    /// Sends the pipeline on the async client and converts the replies.
    pub async fn query_async<T: FromRedisValue>(&self, mr: &crate::aio::MRedis) -> RedisResult<T> {
        let value = Span::pipeline(self.pipe.len())
            .run_async(self.query_value_async(mr))
            .await?;
        Ok(T::from_redis_value(value)?)
    }

    async fn query_value_async(&self, mr: &crate::aio::MRedis) -> RedisResult<Value> {
        type T = Value;
        self.ready(mr.core())?;
        if self.pipe.is_empty() {
            return Ok(T::from_redis_value(Value::Array(vec![]))?);
        }
        if self.moves.is_empty() {
            let values = mr.pipeline_on(self.server, &self.pipe).await?;
            return self.finish(values);
        }
        let cmds: Vec<Cmd> = self.pipe.cmd_iter().cloned().collect();
        if self.pipe.is_transaction() {
            let value = mr
                .drive(One::new(&self.core, &cmds, true, self.server, &self.moves))
                .await?;
            return self.finish(vec![value]);
        }
        let list = self.moving_list(cmds);
        let slots = mr.drive(Pipe::new(&self.core, &list)).await?;
        self.finish(slots.into_iter().collect::<RedisResult<Vec<Value>>>()?)
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
/// redis-rs pipeline per server involved (all written before any reply is
/// read, or concurrently with the async client) and returns the replies in
/// call order. It is not atomic across servers. A co-located or multi-key
/// command whose keys span servers makes execution fail before anything is
/// sent.
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
    /// Per command (call order): its server and moving keys.
    placed: Vec<(usize, Moving)>,
    pending: Moving,
    any_moving: bool,
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
        let shares = vec![None; core.all()];
        FleetPipeline {
            core,
            shares,
            ignored: Vec::new(),
            placed: Vec::new(),
            pending: None,
            any_moving: false,
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

    fn record(&mut self, command: &str, result: RedisResult<Route>) -> Option<usize> {
        match result {
            Ok(Route::One { server, moves }) => match moving_of(&self.core, command, &moves) {
                Ok(m) => {
                    self.any_moving |= m.is_some();
                    self.pending = m;
                    Some(server)
                }
                Err(e) => {
                    if self.problem.is_none() {
                        self.problem = Some(e);
                    }
                    None
                }
            },
            Ok(Route::Split(_)) => None,
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
        self.record(command, result)
    }

    pub(crate) fn route_keys(&mut self, command: &str, keys: &[Vec<u8>]) -> Option<usize> {
        let result = self.core.route_colocated(command, keys);
        self.record(command, result)
    }

    pub(crate) fn add_routed_command(&mut self, server: Option<usize>, cmd: Cmd) -> &mut Self {
        let Some(server) = server else { return self };
        let position = self.ignored.len();
        if let Some(slot) = self.shares.get_mut(server) {
            let (pipe, positions) = slot.get_or_insert_with(|| (Pipeline::new(), Vec::new()));
            pipe.add_command(cmd);
            positions.push(position);
            self.ignored.push(false);
            self.placed.push((server, self.pending.take()));
        }
        self
    }

    /// Every command in call order with its server and moving keys.
    fn moving_list(&self) -> Vec<(Cmd, usize, Moving)> {
        let mut cmds: Vec<Option<Cmd>> = vec![None; self.placed.len()];
        for (pipe, positions) in self.shares.iter().flatten() {
            for (c, &p) in pipe.cmd_iter().zip(positions) {
                cmds[p] = Some(c.clone());
            }
        }
        cmds.into_iter()
            .zip(&self.placed)
            .map(|(c, (server, m))| (c.unwrap_or_default(), *server, m.clone()))
            .collect()
    }

    /// Call-order replies of the migration path, as the plain path gives them.
    fn assemble_slots<T: FromRedisValue>(&self, slots: Vec<RedisResult<Value>>) -> RedisResult<T> {
        let values = slots.into_iter().collect::<RedisResult<Vec<Value>>>()?;
        let values = unpack(false, values)?.unwrap_or_default();
        Ok(T::from_redis_value(Value::Array(kept(values, &self.ignored)))?)
    }

    /// (server, pipeline) of every server with commands.
    fn jobs(&self, core: &Arc<Core>) -> RedisResult<Vec<(usize, &Pipeline)>> {
        if let Some(problem) = &self.problem {
            return Err(problem.clone());
        }
        same_client(core, &self.core)?;
        for (pipe, _) in self.shares.iter().flatten() {
            pipe.cmd_iter().try_for_each(|c| self.core.check_size(c))?;
        }
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
        let mut failure = Failure::new("pipeline");
        for ((server, pipe), reply) in jobs.iter().zip(replies) {
            match reply {
                Ok(values) => {
                    failure.succeeded(self.core.name(*server), pipe.len());
                    if let Some(Some((_, positions))) = self.shares.get(*server) {
                        for (&p, v) in positions.iter().zip(values) {
                            slots[p] = Some(v);
                        }
                    }
                }
                Err(e) => failure.failed(self.core.name(*server), e),
            }
        }
        failure.into_result()?;
        // The first error reply in call order is the error, as with redis-rs.
        let values = slots.into_iter().map(|v| v.unwrap_or(Value::Nil)).collect::<Vec<_>>();
        let values = unpack(false, values)?.unwrap_or_default();
        Ok(T::from_redis_value(Value::Array(kept(values, &self.ignored)))?)
    }

    /// Sends the commands on the sync client (every server's pipeline
    /// written before any reply is read) and returns the replies in call
    /// order.
    pub fn query<T: FromRedisValue>(&self, mr: &crate::MRedis) -> RedisResult<T> {
        let value = Span::pipeline(self.len()).run(|| self.query_value(mr))?;
        Ok(T::from_redis_value(value)?)
    }

    fn query_value(&self, mr: &crate::MRedis) -> RedisResult<Value> {
        let jobs = self.jobs(mr.core())?;
        if self.any_moving {
            let list = self.moving_list();
            return self.assemble_slots(mr.drive(Pipe::new(&self.core, &list))?);
        }
        let packed: Vec<Vec<u8>> = jobs.iter().map(|(_, p)| p.get_packed_pipeline()).collect();
        let requests: Vec<crate::client::Job<'_>> = jobs
            .iter()
            .zip(&packed)
            .map(|((server, pipe), bytes)| crate::client::Job {
                server: *server,
                packed: bytes,
                replies: pipe.len(),
            })
            .collect();
        let replies = mr.send_many(&requests);
        self.assemble(&jobs, replies)
    }

    /// Sends the commands on the async client, all servers concurrently.
    pub async fn query_async<T: FromRedisValue>(&self, mr: &crate::aio::MRedis) -> RedisResult<T> {
        let value = Span::pipeline(self.len()).run_async(self.query_value_async(mr)).await?;
        Ok(T::from_redis_value(value)?)
    }

    async fn query_value_async(&self, mr: &crate::aio::MRedis) -> RedisResult<Value> {
        let jobs = self.jobs(mr.core())?;
        if self.any_moving {
            let list = self.moving_list();
            return self.assemble_slots(mr.drive(Pipe::new(&self.core, &list)).await?);
        }
        let replies = futures::future::join_all(jobs.iter().map(|(server, pipe)| mr.pipeline_on(*server, pipe))).await;
        self.assemble(&jobs, replies)
    }
}

mredis_macros::fleet_pipeline_methods!();
