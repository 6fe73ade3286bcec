//! Pipelines. A [`KeyPipeline`] is bound to the server that owns one key: a
//! command on another server's key makes execution fail before anything is
//! sent (the original MRedis silently sent it to the wrong server). A
//! [`FleetPipeline`] routes each command on its own and sends one pipeline
//! per server, replies in call order.

use std::borrow::Cow;
use std::sync::Arc;

use redis::{Cmd, FromRedisValue, RedisError, RedisResult, ToRedisArgs, Value};

use crate::driver::{AsyncDriver, Driver};
use crate::error::{Failure, client_error, show_key};
use crate::exec::{Cmds, Machine, Request, Step};
use crate::migration::{One, Pipe, PipeCommand};
use crate::routing::{Move, Route, Topology};
use crate::telemetry::Span;

/// A command's old server and its keys there, while a migration moves them.
type Moving = Option<(usize, Vec<Vec<u8>>)>;

/// The moving keys of one command as (old server, keys); several old
/// servers for one command cannot be guarded together.
fn moving_of(core: &Topology, command: &str, moves: &[Move]) -> Result<Moving, RedisError> {
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
fn same_client(running: &Arc<Topology>, built: &Arc<Topology>) -> RedisResult<()> {
    if Arc::ptr_eq(running, built) {
        Ok(())
    } else {
        Err(client_error(
            "this pipeline was made by another MRedis; run it on the client that created it".to_string(),
        ))
    }
}

/// Whether a pipeline built on `built` is to be routed again to run on
/// `running`: the same client, reconfigured since
/// ([`MRedis::reconfigure`](crate::MRedis::reconfigure)).
fn reconfigured(running: &Arc<Topology>, built: &Arc<Topology>) -> bool {
    !Arc::ptr_eq(running, built) && Arc::ptr_eq(&running.lineage, &built.lineage)
}

/// Every command's keys, as added, so a pipeline can be routed again on a
/// later configuration of its client. The keys lie end to end in one
/// buffer (no allocation per key).
#[derive(Clone, Default)]
struct KeyLog {
    bytes: Vec<u8>,
    /// Where each key starts in `bytes` (it ends where the next starts).
    starts: Vec<usize>,
    /// Per command, the end of its keys in `starts`.
    ends: Vec<usize>,
    /// `starts` and `bytes` as the last command added left them (what the
    /// keys of a command not added are cut back to).
    pending: (usize, usize),
}

impl KeyLog {
    fn push<K: ToRedisArgs>(&mut self, key: &K) {
        key.write_redis_args(self);
    }

    fn push_all(&mut self, keys: &[Vec<u8>]) {
        for key in keys {
            redis::RedisWrite::write_arg(self, key);
        }
    }

    /// The keys pushed since the last command belong to the one added now.
    fn added(&mut self) {
        self.ends.push(self.starts.len());
        self.pending = (self.starts.len(), self.bytes.len());
    }

    /// The keys pushed since the last command were of one not added.
    fn dropped(&mut self) {
        self.starts.truncate(self.pending.0);
        self.bytes.truncate(self.pending.1);
    }

    /// Command `i`'s keys.
    fn of(&self, i: usize) -> Vec<Vec<u8>> {
        let first = if i == 0 { 0 } else { self.ends[i - 1] };
        (first..self.ends[i])
            .map(|k| {
                let end = self.starts.get(k + 1).copied().unwrap_or(self.bytes.len());
                self.bytes[self.starts[k]..end].to_vec()
            })
            .collect()
    }
}

impl redis::RedisWrite for KeyLog {
    fn write_arg(&mut self, arg: &[u8]) {
        self.starts.push(self.bytes.len());
        self.bytes.extend_from_slice(arg);
    }

    fn write_arg_fmt(&mut self, arg: impl std::fmt::Display) {
        use std::io::Write;
        self.starts.push(self.bytes.len());
        // Writing to a Vec does not fail.
        let _ = write!(self.bytes, "{arg}");
    }

    fn writer_for_next_arg(&mut self) -> impl std::io::Write + '_ {
        self.starts.push(self.bytes.len());
        &mut self.bytes
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

/// A step of an inner machine with its result mapped by `f`.
fn then<'s, T, U>(step: Step<'s, T>, f: impl FnOnce(RedisResult<T>) -> RedisResult<U>) -> Step<'s, U> {
    match step {
        Step::Send(requests) => Step::Send(requests),
        Step::Wait(d) => Step::Wait(d),
        Step::Done(result) => Step::Done(f(result)),
    }
}

/// The reply of a request (one per pipeline run: the first).
fn first(replies: Vec<RedisResult<Vec<Value>>>) -> RedisResult<Vec<Value>> {
    replies
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(client_error("no reply".to_string())))
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
    core: Arc<Topology>,
    server: usize,
    /// The commands between a MULTI and an EXEC, which are sent only when
    /// atomic: the request borrows the commands either way (no copy).
    framed: Vec<Cmd>,
    atomic: bool,
    ignored: Vec<bool>,
    /// Every moving key of the pipeline, and per command its moving keys.
    moves: Vec<Move>,
    moving: Vec<Moving>,
    pending: Vec<Move>,
    problem: Option<RedisError>,
    /// The key it was bound by, and every command's keys (to route it again
    /// after a reconfiguration).
    bound: Vec<u8>,
    log: KeyLog,
}

impl std::fmt::Debug for KeyPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPipeline")
            .field("server", &self.core.name(self.server))
            .field("commands", &self.len())
            .field("problem", &self.problem)
            .finish()
    }
}

impl KeyPipeline {
    pub(crate) fn new<K: ToRedisArgs>(core: Arc<Topology>, key: &K, route: Route) -> RedisResult<KeyPipeline> {
        let bound = key.to_redis_args().pop().unwrap_or_default();
        KeyPipeline::bound_to(core, bound, route)
    }

    fn bound_to(core: Arc<Topology>, bound: Vec<u8>, route: Route) -> RedisResult<KeyPipeline> {
        let Route::One { server, moves } = route else {
            return Err(client_error("a pipeline is bound to one key".to_string()));
        };
        Ok(KeyPipeline {
            bound,
            log: KeyLog::default(),
            core,
            server,
            framed: vec![redis::cmd("MULTI"), redis::cmd("EXEC")],
            atomic: false,
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

    /// Runs the commands as one MULTI/EXEC transaction on the server. A
    /// transaction the server aborts (a command refused while queued) fails
    /// with EXEC's own `EXECABORT` reply, on both clients; a command that
    /// fails while it runs, with that command's error.
    pub fn atomic(&mut self) -> &mut Self {
        self.atomic = true;
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
        self.framed.len() - 2
    }

    /// True when no command was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The commands added, in order.
    fn commands(&self) -> &[Cmd] {
        &self.framed[1..self.framed.len() - 1]
    }

    /// What is sent: the commands, inside MULTI/EXEC when atomic.
    fn sent(&self) -> &[Cmd] {
        if self.atomic { &self.framed } else { self.commands() }
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
        // Before the EXEC at the end (moves only that one).
        self.framed.insert(self.framed.len() - 1, cmd);
        self.ignored.push(false);
        self.log.added();
        self
    }

    /// This pipeline as it would have been built on `core`, a later
    /// configuration of its client: bound by the same key, every command
    /// checked again (a command whose keys are now on another server than
    /// the bound key's makes it fail before anything is sent).
    fn rerouted(&self, core: &Arc<Topology>) -> RedisResult<KeyPipeline> {
        let route = core.route_key("pipeline", &&self.bound[..])?;
        let mut again = KeyPipeline::bound_to(core.clone(), self.bound.clone(), route)?;
        again.atomic = self.atomic;
        again.problem = self.problem.clone();
        for (i, cmd) in self.commands().iter().enumerate() {
            // (Its keys logged again by the check.)
            again.check_keys(&crate::routing::command_name(cmd), &self.log.of(i));
            again.add_command(cmd.clone());
            again.ignored[i] = self.ignored[i];
        }
        Ok(again)
    }

    /// The pipeline to run on `core`: this one, or routed again if its
    /// client was reconfigured since it was built.
    fn on(&self, core: &Arc<Topology>) -> RedisResult<Cow<'_, KeyPipeline>> {
        if reconfigured(core, &self.core) {
            Ok(Cow::Owned(self.rerouted(core)?))
        } else {
            Ok(Cow::Borrowed(self))
        }
    }

    pub(crate) fn check_key<K: ToRedisArgs>(&mut self, command: &str, key: &K) {
        if self.problem.is_some() {
            return;
        }
        match self.core.route_key(command, key) {
            Ok(route) => {
                self.log.push(key);
                self.check_route(command, route, || key.to_redis_args())
            }
            Err(e) => self.problem = Some(e),
        }
    }

    pub(crate) fn check_keys(&mut self, command: &str, keys: &[Vec<u8>]) {
        if self.problem.is_some() {
            return;
        }
        self.log.push_all(keys);
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

    fn ready(&self, core: &Arc<Topology>) -> RedisResult<()> {
        if let Some(problem) = &self.problem {
            return Err(problem.clone());
        }
        same_client(core, &self.core)?;
        self.commands().iter().try_for_each(|c| self.core.check_size(c))
    }

    fn finish(&self, values: Vec<Value>) -> RedisResult<Value> {
        let Some(values) = unpack(self.atomic, values)? else {
            return Ok(Value::Nil);
        };
        Ok(Value::Array(kept(values, &self.ignored)))
    }

    /// The commands with their server and moving keys, for a plain
    /// pipeline some of whose keys are moving (empty otherwise: nothing
    /// copied).
    fn moving_list(&self) -> Vec<PipeCommand> {
        if self.moves.is_empty() || self.atomic {
            return Vec::new();
        }
        self.commands()
            .iter()
            .zip(&self.moving)
            .map(|(c, m)| (c.clone(), self.server, m.clone()))
            .collect()
    }

    /// The pipeline as a machine run by `core`'s client; `list` is its
    /// [`moving_list`](Self::moving_list).
    fn run<'a>(&'a self, core: &Arc<Topology>, list: &'a [PipeCommand]) -> KeyRun<'a> {
        let state = match self.ready(core) {
            Err(e) => KeyState::Ready(Some(Err(e))),
            Ok(()) if self.is_empty() => KeyState::Ready(Some(Ok(Value::Array(vec![])))),
            Ok(()) if self.moves.is_empty() => KeyState::Direct,
            Ok(()) if self.atomic => {
                KeyState::Atomic(One::new(&self.core, self.commands(), true, self.server, &self.moves))
            }
            Ok(()) => KeyState::Moving(Pipe::new(&self.core, list)),
        };
        KeyRun { pipeline: self, state }
    }

    /// Sends the pipeline on the sync client and converts the replies, like
    /// redis-rs's `Pipeline::query`.
    ///
    /// A pipeline built before a [`reconfigure`](crate::MRedis::reconfigure)
    /// of its client is routed again on the configuration in force when it
    /// runs (the same checks as when it was built).
    pub fn query<T: FromRedisValue>(&self, mr: &crate::MRedis) -> RedisResult<T> {
        let fleet = mr.fleet();
        let this = self.on(fleet.core())?;
        let list = this.moving_list();
        let value = Span::pipeline(this.len()).run(|| fleet.drive(this.run(fleet.core(), &list)))?;
        Ok(T::from_redis_value(value)?)
    }

    /// Sends the pipeline on the async client and converts the replies
    /// (routed again after a reconfiguration, as [`query`](Self::query)).
    pub async fn query_async<T: FromRedisValue>(&self, mr: &crate::async_client::MRedis) -> RedisResult<T> {
        let fleet = mr.fleet();
        let this = self.on(fleet.core())?;
        let list = this.moving_list();
        let value = Span::pipeline(this.len())
            .run_async(fleet.drive(this.run(fleet.core(), &list)))
            .await?;
        Ok(T::from_redis_value(value)?)
    }

    /// Sends the pipeline and discards the replies.
    pub fn exec(&self, mr: &crate::MRedis) -> RedisResult<()> {
        self.query::<Value>(mr).map(|_| ())
    }
}

/// A key pipeline's run: one request to its server (MULTI, the commands,
/// EXEC when atomic; the EXEC reply is the result), or the migration
/// machines while some of its keys are moving.
struct KeyRun<'a> {
    pipeline: &'a KeyPipeline,
    state: KeyState<'a>,
}

enum KeyState<'a> {
    /// Decided before sending anything (refused, or empty).
    Ready(Option<RedisResult<Value>>),
    /// Nothing moving: the pipeline's own commands, borrowed.
    Direct,
    /// Atomic, keys moving: guarded on the old server or MULTI/EXEC on the new.
    Atomic(One<'a>),
    /// Plain, keys moving: each command where its keys are.
    Moving(Pipe<'a>),
}

impl Machine for KeyRun<'_> {
    type Output = Value;

    fn start(&mut self) -> Step<'_, Value> {
        let p = self.pipeline;
        match &mut self.state {
            KeyState::Ready(result) => Step::Done(
                result
                    .take()
                    .unwrap_or_else(|| Err(client_error("no reply".to_string()))),
            ),
            KeyState::Direct => Step::Send(vec![Request {
                server: p.server,
                block: None,
                cmds: p.sent().into(),
            }]),
            KeyState::Atomic(m) => then(m.start(), |exec| p.finish(vec![exec?])),
            KeyState::Moving(m) => then(m.start(), |slots| {
                p.finish(slots?.into_iter().collect::<RedisResult<_>>()?)
            }),
        }
    }

    fn next(&mut self, replies: Vec<RedisResult<Vec<Value>>>) -> Step<'_, Value> {
        let p = self.pipeline;
        match &mut self.state {
            KeyState::Ready(_) => Step::Done(Err(client_error("no reply".to_string()))),
            KeyState::Direct => Step::Done(first(replies).and_then(|mut values| {
                if p.atomic {
                    // MULTI's OK and the QUEUED replies come first; EXEC's is last.
                    values = vec![values.pop().unwrap_or(Value::Nil)];
                }
                p.finish(values)
            })),
            KeyState::Atomic(m) => then(m.next(replies), |exec| p.finish(vec![exec?])),
            KeyState::Moving(m) => then(m.next(replies), |slots| {
                p.finish(slots?.into_iter().collect::<RedisResult<_>>()?)
            }),
        }
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
    core: Arc<Topology>,
    /// Per server (by index): its commands (a redis-rs pipeline, which the
    /// async client sends as it is) and the call-order position of each.
    shares: Vec<Option<(redis::Pipeline, Vec<usize>)>>,
    ignored: Vec<bool>,
    /// Per command (call order): its server and moving keys.
    placed: Vec<(usize, Moving)>,
    pending: Moving,
    any_moving: bool,
    problem: Option<RedisError>,
    /// Every command's keys (to route it again after a reconfiguration).
    log: KeyLog,
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
    pub(crate) fn new(core: Arc<Topology>) -> FleetPipeline {
        let shares = vec![None; core.all()];
        FleetPipeline {
            core,
            shares,
            ignored: Vec::new(),
            placed: Vec::new(),
            pending: None,
            any_moving: false,
            problem: None,
            log: KeyLog::default(),
        }
    }

    /// This pipeline as it would have been built on `core`, a later
    /// configuration of its client: every command routed again.
    fn rerouted(&self, core: &Arc<Topology>) -> FleetPipeline {
        let mut again = FleetPipeline::new(core.clone());
        again.problem = self.problem.clone();
        let mut cmds: Vec<Option<&Cmd>> = vec![None; self.placed.len()];
        for (share, positions) in self.shares.iter().flatten() {
            for (c, &p) in share.cmd_iter().zip(positions) {
                cmds[p] = Some(c);
            }
        }
        for (i, cmd) in cmds.into_iter().enumerate() {
            let Some(cmd) = cmd else { continue };
            let server = again.route_keys(&crate::routing::command_name(cmd), &self.log.of(i));
            again.add_routed_command(server, cmd.clone());
            if self.ignored[i] {
                again.ignore();
            }
        }
        again
    }

    /// The pipeline to run on `core`: this one, or routed again if its
    /// client was reconfigured since it was built.
    fn on(&self, core: &Arc<Topology>) -> Cow<'_, FleetPipeline> {
        if reconfigured(core, &self.core) {
            Cow::Owned(self.rerouted(core))
        } else {
            Cow::Borrowed(self)
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
        // A key and a co-located row route to one server; anything else
        // fails the pipeline rather than leave the command out.
        let result = result.and_then(|route| match route {
            Route::Split(_) | Route::All(_) => Err(client_error(format!(
                "{command} is not a command on one server's keys and cannot be in a fleet pipeline"
            ))),
            one => Ok(one),
        });
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
            Ok(Route::Split(_) | Route::All(_)) => None,
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
        self.log.push(key);
        self.record(command, result)
    }

    pub(crate) fn route_keys(&mut self, command: &str, keys: &[Vec<u8>]) -> Option<usize> {
        let result = self.core.route_colocated(command, keys);
        self.log.push_all(keys);
        self.record(command, result)
    }

    pub(crate) fn add_routed_command(&mut self, server: Option<usize>, cmd: Cmd) -> &mut Self {
        let Some(server) = server else {
            self.log.dropped();
            return self;
        };
        let position = self.ignored.len();
        if let Some(slot) = self.shares.get_mut(server) {
            let (cmds, positions) = slot.get_or_insert_with(|| (redis::pipe(), Vec::new()));
            cmds.add_command(cmd);
            positions.push(position);
            self.ignored.push(false);
            self.placed.push((server, self.pending.take()));
            self.log.added();
        } else {
            self.log.dropped();
        }
        self
    }

    /// Every command in call order with its server and moving keys, when
    /// some keys are moving (empty otherwise: nothing copied).
    fn moving_list(&self) -> Vec<PipeCommand> {
        if !self.any_moving {
            return Vec::new();
        }
        let mut cmds: Vec<Option<Cmd>> = vec![None; self.placed.len()];
        for (share, positions) in self.shares.iter().flatten() {
            for (c, &p) in share.cmd_iter().zip(positions) {
                cmds[p] = Some(c.clone());
            }
        }
        cmds.into_iter()
            .zip(&self.placed)
            .map(|(c, (server, m))| (c.unwrap_or_default(), *server, m.clone()))
            .collect()
    }

    /// Call-order replies of the migration path, as the plain path gives them.
    fn assemble_slots(&self, slots: Vec<RedisResult<Value>>) -> RedisResult<Value> {
        let values = slots.into_iter().collect::<RedisResult<Vec<Value>>>()?;
        let values = unpack(false, values)?.unwrap_or_default();
        Ok(Value::Array(kept(values, &self.ignored)))
    }

    /// Every server with commands, in server order.
    fn jobs(&self, core: &Arc<Topology>) -> RedisResult<Vec<usize>> {
        if let Some(problem) = &self.problem {
            return Err(problem.clone());
        }
        same_client(core, &self.core)?;
        for (cmds, _) in self.shares.iter().flatten() {
            cmds.cmd_iter().try_for_each(|c| self.core.check_size(c))?;
        }
        Ok(self
            .shares
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|_| i))
            .collect())
    }

    fn assemble(&self, jobs: &[usize], replies: Vec<RedisResult<Vec<Value>>>) -> RedisResult<Value> {
        let mut slots: Vec<Option<Value>> = vec![None; self.ignored.len()];
        let mut failure = Failure::new("pipeline");
        for (server, reply) in jobs.iter().zip(replies) {
            let Some(Some((cmds, positions))) = self.shares.get(*server) else {
                continue;
            };
            match reply {
                Ok(values) => {
                    failure.succeeded(self.core.name(*server), cmds.len());
                    for (&p, v) in positions.iter().zip(values) {
                        slots[p] = Some(v);
                    }
                }
                Err(e) => failure.failed(self.core.name(*server), e),
            }
        }
        failure.into_result()?;
        // The first error reply in call order is the error, as with redis-rs.
        let values = slots.into_iter().map(|v| v.unwrap_or(Value::Nil)).collect::<Vec<_>>();
        let values = unpack(false, values)?.unwrap_or_default();
        Ok(Value::Array(kept(values, &self.ignored)))
    }

    /// The pipeline as a machine run by `core`'s client; `list` is its
    /// [`moving_list`](Self::moving_list).
    fn run<'a>(&'a self, core: &Arc<Topology>, list: &'a [PipeCommand]) -> FleetRun<'a> {
        let state = match self.jobs(core) {
            Err(e) => FleetState::Refused(Some(e)),
            Ok(_) if self.any_moving => FleetState::Moving(Pipe::new(&self.core, list)),
            Ok(jobs) => FleetState::Direct(jobs),
        };
        FleetRun { pipeline: self, state }
    }

    /// Sends the commands on the sync client (every server's pipeline
    /// written before any reply is read) and returns the replies in call
    /// order.
    ///
    /// A pipeline built before a [`reconfigure`](crate::MRedis::reconfigure)
    /// of its client is routed again, command by command, on the
    /// configuration in force when it runs.
    pub fn query<T: FromRedisValue>(&self, mr: &crate::MRedis) -> RedisResult<T> {
        let fleet = mr.fleet();
        let this = self.on(fleet.core());
        let list = this.moving_list();
        let value = Span::pipeline(this.len()).run(|| fleet.drive(this.run(fleet.core(), &list)))?;
        Ok(T::from_redis_value(value)?)
    }

    /// Sends the commands on the async client, all servers concurrently
    /// (routed again after a reconfiguration, as [`query`](Self::query)).
    pub async fn query_async<T: FromRedisValue>(&self, mr: &crate::async_client::MRedis) -> RedisResult<T> {
        let fleet = mr.fleet();
        let this = self.on(fleet.core());
        let list = this.moving_list();
        let value = Span::pipeline(this.len())
            .run_async(fleet.drive(this.run(fleet.core(), &list)))
            .await?;
        Ok(T::from_redis_value(value)?)
    }
}

/// A fleet pipeline's run: one request per server with commands (each
/// borrowing that server's commands), or the migration machine while some
/// keys are moving.
struct FleetRun<'a> {
    pipeline: &'a FleetPipeline,
    state: FleetState<'a>,
}

enum FleetState<'a> {
    /// Refused before sending anything.
    Refused(Option<RedisError>),
    /// Nothing moving: the servers with commands.
    Direct(Vec<usize>),
    /// Keys moving: each command where its keys are.
    Moving(Pipe<'a>),
}

impl Machine for FleetRun<'_> {
    type Output = Value;

    fn start(&mut self) -> Step<'_, Value> {
        let p = self.pipeline;
        match &mut self.state {
            FleetState::Refused(e) => Step::Done(Err(e.take().unwrap_or_else(|| client_error("no reply".to_string())))),
            FleetState::Direct(jobs) if jobs.is_empty() => Step::Done(p.assemble(&[], Vec::new())),
            FleetState::Direct(jobs) => Step::Send(
                jobs.iter()
                    .filter_map(|&server| {
                        let (cmds, _) = p.shares.get(server)?.as_ref()?;
                        Some(Request {
                            server,
                            block: None,
                            cmds: Cmds::Pipeline(cmds),
                        })
                    })
                    .collect(),
            ),
            FleetState::Moving(m) => then(m.start(), |slots| p.assemble_slots(slots?)),
        }
    }

    fn next(&mut self, replies: Vec<RedisResult<Vec<Value>>>) -> Step<'_, Value> {
        let p = self.pipeline;
        match &mut self.state {
            FleetState::Refused(_) => Step::Done(Err(client_error("no reply".to_string()))),
            FleetState::Direct(jobs) => Step::Done(p.assemble(jobs, replies)),
            FleetState::Moving(m) => then(m.next(replies), |slots| p.assemble_slots(slots?)),
        }
    }
}

mredis_macros::fleet_pipeline_methods!();

/// The sync client's pipelines.
impl crate::MRedis {
    /// A pipeline bound to the server that owns `key`. Every command added
    /// must use keys of that server; otherwise executing it fails before
    /// anything is sent, naming the key and both servers.
    pub fn pipeline<K: redis::ToRedisArgs>(&self, key: K) -> RedisResult<KeyPipeline> {
        let fleet = self.fleet();
        KeyPipeline::new(fleet.core().clone(), &key, fleet.core().route_key("pipeline", &key)?)
    }

    /// A pipeline over the whole fleet: commands on any keys, split per
    /// server when executed, replies in call order.
    pub fn pipeline_all(&self) -> crate::FleetPipeline {
        crate::FleetPipeline::new(self.fleet().core().clone())
    }
}

/// The async client's pipelines.
impl crate::async_client::MRedis {
    /// A pipeline bound to the server that owns `key`; run it with
    /// [`KeyPipeline::query_async`].
    pub fn pipeline<K: redis::ToRedisArgs>(&self, key: K) -> RedisResult<KeyPipeline> {
        let fleet = self.fleet();
        KeyPipeline::new(fleet.core().clone(), &key, fleet.core().route_key("pipeline", &key)?)
    }

    /// A pipeline over the whole fleet; run it with
    /// [`FleetPipeline::query_async`](crate::FleetPipeline::query_async).
    pub fn pipeline_all(&self) -> crate::FleetPipeline {
        crate::FleetPipeline::new(self.fleet().core().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::KeyLog;

    /// A key type that serialises through `writer_for_next_arg` and
    /// `write_arg_fmt`, as some custom `ToRedisArgs` types do.
    struct Written(&'static str, u32);

    impl redis::ToRedisArgs for Written {
        fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
            use std::io::Write;
            let _ = out.writer_for_next_arg().write_all(self.0.as_bytes());
            out.write_arg_fmt(self.1);
        }
    }

    #[test]
    fn the_key_log_gives_back_each_commands_keys_and_forgets_a_dropped_ones() {
        let mut log = KeyLog::default();
        log.push(&"a");
        log.added();
        log.push(&"dropped");
        log.dropped();
        log.push_all(&[b"{t}x".to_vec(), Vec::new(), b"{t}y".to_vec()]);
        log.added();
        log.push(&Written("w", 42));
        log.added();
        log.push(&"");
        log.added();
        assert_eq!(log.of(0), vec![b"a".to_vec()]);
        assert_eq!(log.of(1), vec![b"{t}x".to_vec(), Vec::new(), b"{t}y".to_vec()]);
        assert_eq!(log.of(2), vec![b"w".to_vec(), b"42".to_vec()]);
        assert_eq!(log.of(3), vec![Vec::<u8>::new()]);
    }
}
