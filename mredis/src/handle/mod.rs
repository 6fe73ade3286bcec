//! Routed connection handles: [`Connection`] implements
//! `redis::ConnectionLike` and [`aio::Connection`](crate::aio::Connection)
//! `redis::aio::ConnectionLike`, so code written for redis-rs (`cmd().query`,
//! `pipe().query`, `redis::transaction`, `Script::invoke`, `Commands`,
//! `TypedCommands`, ...) runs on the whole fleet unchanged.
//!
//! This is the runtime-checked door: each command is routed when it is
//! sent, by the same command table as [`MRedis`](crate::MRedis)'s methods
//! (`mredis::COMMANDS`, generated from `commands.toml`: each row's class,
//! key positions, split and merge), so a command goes to the same servers
//! through a handle as through its method. The servers' own `COMMAND`
//! metadata is fetched (once per client) only for a command the table does
//! not know, and a server is asked for the keys (`COMMAND GETKEYS`) only
//! where the table says their place depends on the arguments (SORT ...
//! STORE, XREAD, MIGRATE, GEORADIUS ... STORE):
//!
//! - a command on keys goes to the keys' server; keys on different servers
//!   are a `CROSSSLOT` error, nothing sent;
//! - MGET, MSET, DEL, EXISTS, ... (the table's `multi` rows) are split by
//!   server and merged as their method merges them (the row's `merge`);
//! - server-wide commands (the table's `all` rows) go to every server, and
//!   the replies combine into one as the row's `reply` says
//!   ([`Reply`](crate::Reply)): DBSIZE summed, KEYS and CLIENT LIST
//!   concatenated, FLUSHDB / SAVE / CONFIG SET answer once every server
//!   succeeded, RANDOMKEY the first key found, SCRIPT EXISTS and-ed, PUBSUB
//!   NUMSUB summed by channel, INFO / CONFIG GET / LASTSAVE a map of server
//!   name to that server's reply;
//! - commands the table does not know (module commands) follow the
//!   servers' `COMMAND` metadata: routed by their keys, or, when keyless
//!   with a request policy, sent to every server and merged by its
//!   response policy; a keyless one without a policy is an error naming
//!   it (use `MRedis::query_all`);
//! - `SCAN` walks every server: its cursor carries the server;
//! - `HSCAN`, `SSCAN`, `ZSCAN` go to their key's server (the cursor is
//!   that key's), so redis-rs's `hscan`/`sscan`/`zscan` iterators work;
//! - pipelines keep call order; MULTI/EXEC (an atomic pipeline) and WATCH
//!   need all their keys on one server (PING and ECHO in a transaction run
//!   on that server); WATCH keeps a connection of the handle's until EXEC,
//!   UNWATCH or DISCARD, on both handles (`redis::transaction` and
//!   `redis::aio::transaction_async` run unchanged), and a transaction
//!   gets what every write gets (replica acknowledgements, a failover
//!   waited for: after a failover under a WATCH, EXEC reports the
//!   transaction aborted, so the helpers run it again);
//! - a command that cannot be routed (no key and no policy, or omitted from
//!   mredis with a reason) is an error naming it.
//!
//! [`MRedis`](crate::MRedis) keeps its compile-time guarantees: omitted
//! commands do not exist there.

use std::sync::Arc;

use redis::{Cmd, ConnectionLike, RedisResult, Value};

use crate::driver::{AsyncDriver, Driver};
use crate::error::client_error;
use crate::exec::{Held, Machine, Request, Step};
use crate::routed::Routed;
use crate::routing::{Merge, Route, Topology};
use crate::spec::RouteClass;

mod machines;
mod plan;
mod reply;

pub(crate) use crate::command_book::*;
pub(crate) use machines::*;
pub(crate) use plan::*;
pub(crate) use reply::*;

/// A routed connection handle over the sync client; see the module docs.
/// Made by [`MRedis::get_connection`](crate::MRedis::get_connection).
///
/// ```no_run
/// # fn main() -> redis::RedisResult<()> {
/// use redis::Commands;
/// let mr = mredis::MRedis::new(["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/0"])?;
/// let mut con = mr.get_connection()?;
/// redis::cmd("SET").arg("k").arg(1).exec(&mut con)?;
/// let v: i64 = con.get("k")?;
/// let (a, b): (i64, i64) = redis::pipe().incr("a", 1).incr("b", 1).query(&mut con)?;
/// # Ok(()) }
/// ```
pub struct Connection {
    mr: crate::MRedis,
    /// A WATCH's server and connection, and the configuration it was made
    /// on (the commands until EXEC, UNWATCH or DISCARD run on it).
    watched: Option<Watched>,
}

/// A sync handle's WATCH.
struct Watched {
    /// The configuration the WATCH was made on.
    fleet: Snap,
    server: usize,
    /// The connection the WATCH runs on, held from the driver.
    con: crate::client::HeldConnection,
}

/// The sync client's configuration for one command (see [`crate::MRedis::reconfigure`]).
type Snap = crate::client::Snapshot<crate::client::Fleet>;
/// The async client's.
type AsyncSnap = crate::client::Snapshot<crate::async_client::Fleet>;

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mredis::Connection")
            .field("client", &self.mr)
            .field(
                "watching",
                &self.watched.as_ref().map(|w| w.fleet.core().name(w.server).to_string()),
            )
            .finish()
    }
}

impl Connection {
    pub(crate) fn new(mr: crate::MRedis) -> Connection {
        Connection { mr, watched: None }
    }

    /// The configuration a command runs on: a WATCH's while watching, else
    /// the one in force.
    fn snapshot(&self) -> Snap {
        match &self.watched {
            Some(w) => w.fleet.clone(),
            None => self.mr.fleet(),
        }
    }

    /// Plans a command: by the table; for a command the table does not
    /// know, by the servers' COMMAND metadata (fetched once per client);
    /// movable keys the table cannot read are asked of a server.
    fn plan(&self, f: &Snap, cmd: &Cmd) -> RedisResult<Dispatch> {
        let core = f.core();
        let mut book = f.command_book().get().cloned();
        let mut dispatch = plan(core, book.as_deref(), cmd, None)?;
        if let Dispatch::Describe = dispatch {
            let fetched = self.describe(f)?.ok_or_else(|| no_command_permission(cmd))?;
            dispatch = plan(core, Some(&fetched), cmd, None)?;
            book = Some(fetched);
        }
        if let Dispatch::GetKeys = dispatch {
            let keys: Vec<Vec<u8>> = redis::from_redis_value(f.value_on(0, &getkeys_cmd(cmd))?)?;
            dispatch = plan(core, book.as_deref(), cmd, Some(keys))?;
        }
        Ok(dispatch)
    }

    /// Where this handle sends a command, without sending it (GETKEYS and
    /// COMMAND aside): the kind (`one`, `split`, `all`, `scan`, `watch`,
    /// `unwatch`) and the servers' indices. For mredis's own tests.
    #[cfg(feature = "table-examples")]
    #[doc(hidden)]
    pub fn route_of(&self, cmd: &Cmd) -> RedisResult<(&'static str, Vec<usize>)> {
        let f = self.snapshot();
        Ok(match self.plan(&f, cmd)? {
            Dispatch::Run(Route::One { server, .. }) => ("one", vec![server]),
            Dispatch::Run(Route::Split(plan)) => ("split", plan.groups.iter().map(|g| g.0).collect()),
            Dispatch::Run(Route::All(_)) => ("all", (0..f.core().all()).collect()),
            Dispatch::Scan(step, _) => ("scan", vec![step]),
            Dispatch::Watch(server) => ("watch", vec![server]),
            Dispatch::Unwatch => ("unwatch", Vec::new()),
            Dispatch::GetKeys | Dispatch::Describe => ("unplanned", Vec::new()),
        })
    }

    /// The servers' COMMAND metadata, from the first server that answers
    /// (None: this user may not run COMMAND).
    pub(crate) fn describe(&self, f: &Snap) -> RedisResult<Option<Arc<CommandBook>>> {
        if let Some(book) = f.command_book().get() {
            return Ok(Some(book.clone()));
        }
        let mut tried = Vec::new();
        for server in 0..f.core().all() {
            // A command of its own, in its own span (no orphan server span
            // in traces).
            let cmd = redis::cmd("COMMAND");
            let reply = crate::telemetry::Span::command(&cmd, "metadata").run(|| f.value_on(server, &cmd));
            let done = reply.is_ok();
            tried.push(reply);
            if done {
                break;
            }
        }
        book_from(f.command_book(), tried)
    }

    /// Runs one command; server error replies are errors.
    fn exec(&mut self, f: &Snap, cmd: &Cmd) -> RedisResult<Value> {
        let plan = self.plan(f, cmd)?;
        self.exec_plan(f, cmd, plan)
    }

    /// A pipeline of several commands, parsed (see `req_packed_commands`).
    /// Every command is planned before anything is sent.
    fn pipeline(&mut self, f: &Snap, cmd: &[u8], cmds: &[Cmd], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        if is_atomic(cmds) {
            return self.atomic(f, cmd, cmds, offset, count);
        }
        // A command that cannot be routed (keys on several servers, one
        // the servers do not know) gets its refusal as its reply, and the
        // others run, as a server answers an error in a pipeline: with
        // `ignore_errors()` the caller sees every other reply beside it.
        let mut plans: Vec<Option<RedisResult<Dispatch>>> = cmds.iter().map(|c| Some(self.plan(f, c))).collect();
        let core = f.core().clone();
        let mut values: Vec<Value> = Vec::with_capacity(cmds.len());
        let mut from = 0;
        while from < cmds.len() {
            // WATCH and UNWATCH run on this handle's own connection, in
            // their place; the commands between them (and the refused
            // ones) are one batch.
            let to = (from..cmds.len())
                .find(|&j| !matches!(plans[j], Some(Ok(ref p)) if !matches!(p, Dispatch::Watch(_) | Dispatch::Unwatch)))
                .unwrap_or(cmds.len());
            if to > from {
                let batch: Vec<Dispatch> = plans[from..to]
                    .iter_mut()
                    .filter_map(|p| p.take().and_then(Result::ok))
                    .collect();
                values.extend(f.drive(Batch::new(&core, &cmds[from..to], &batch))?);
            }
            if to < cmds.len() {
                let v = match plans[to].take() {
                    Some(Ok(plan)) => match self.watch(f, &cmds[to], &plan) {
                        Ok(v) => v,
                        Err(e) => error_value(&e).ok_or(e)?,
                    },
                    Some(Err(e)) => refusal_value(&e),
                    None => unreachable!("each plan is taken once"),
                };
                values.push(v);
            }
            from = to + 1;
        }
        Ok(values.into_iter().skip(offset).take(count).collect())
    }

    /// Runs one command already planned.
    fn exec_plan(&mut self, f: &Snap, cmd: &Cmd, plan: Dispatch) -> RedisResult<Value> {
        match plan {
            Dispatch::Run(route) => f.run::<Value>(route, cmd),
            Dispatch::Watch(_) | Dispatch::Unwatch => self.watch(f, cmd, &plan),
            plan => f.drive(Planned::new(f.core(), &plan, cmd)),
        }
    }

    /// WATCH (on the keys' server, on a connection this handle keeps until
    /// EXEC, UNWATCH or DISCARD) and UNWATCH.
    fn watch(&mut self, f: &Snap, cmd: &Cmd, plan: &Dispatch) -> RedisResult<Value> {
        match *plan {
            Dispatch::Watch(server) => {
                if let Some(w) = self.watched.as_mut() {
                    if w.server != server {
                        return Err(cannot(
                            "WATCH",
                            "keys on another server than the keys already watched; watched keys must share a server",
                        ));
                    }
                    return w.con.req_command(cmd).and_then(Value::extract_error);
                }
                let mut con = f.hold(server)?;
                let reply = con.req_command(cmd).and_then(Value::extract_error);
                let reply = match f.settle_held(&mut con, reply, |_| false)? {
                    Held::Done(reply) => reply,
                    // Refused by a replica: the shard's new primary is in
                    // place; WATCH there.
                    Held::FailedOver => {
                        con = f.hold(server)?;
                        con.req_command(cmd).and_then(Value::extract_error)?
                    }
                };
                self.watched = Some(Watched {
                    fleet: f.clone(),
                    server,
                    con,
                });
                Ok(reply)
            }
            _ => match self.watched.take() {
                Some(mut w) => {
                    let reply = w.con.req_command(cmd).and_then(Value::extract_error);
                    if reply.is_ok() {
                        w.fleet.release(w.con);
                    }
                    reply
                }
                None => Ok(Value::Okay),
            },
        }
    }

    /// MULTI ... EXEC: the keys of every command must share a server.
    fn atomic(&mut self, f: &Snap, bytes: &[u8], cmds: &[Cmd], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        let inner = &cmds[1..cmds.len() - 1];
        let mut target: Option<(usize, Vec<crate::routing::Move>)> = None;
        let mut keyless = false;
        for c in inner {
            if answered_by_any_server(c) {
                keyless = true;
                continue;
            }
            let plan = self.plan(f, c)?;
            join_transaction(f.core(), &mut target, c, plan)?;
        }
        if target.is_none() && keyless {
            target = Some((0, Vec::new()));
        }
        let Some((server, moves)) = target else {
            return Ok(vec![Value::Array(vec![])]);
        };
        if !moves.is_empty() {
            if self.watched.is_some() {
                return Err(crate::migration::try_again(
                    f.core(),
                    &moves[0].key,
                    moves[0].from,
                    server,
                ));
            }
            let value = f.drive(crate::migration::One::new(f.core(), inner, true, server, &moves))?;
            return Ok(vec![value]);
        }
        if let Some(w) = self.watched.take_if(|w| w.server == server) {
            // EXEC ends the WATCH. Its promises are the driver's (WAIT, a
            // failover); after a failover what was watched is gone, so the
            // EXEC reports the transaction aborted (nil), as when a watched
            // key changed: `redis::transaction` runs it again.
            let Watched { fleet, mut con, .. } = w;
            let reply = con.req_packed_commands(bytes, offset, count);
            let settled = fleet.settle_held(&mut con, reply, exec_wrote);
            fleet.release(con);
            return match settled? {
                Held::Done(values) => Ok(values),
                Held::FailedOver => Ok(vec![Value::Nil; count]),
            };
        }
        // redis-rs's own read of a transaction, so its aborted-transaction
        // error (with each queued command's error and index) is the same;
        // the driver's promises after it. Nothing watched: after a
        // failover before it ran, it runs again on the new primary.
        for _ in 0..2 {
            let mut con = f.hold(server)?;
            let reply = con.req_packed_commands(bytes, offset, count);
            let settled = f.settle_held(&mut con, reply, exec_wrote);
            f.release(con);
            if let Held::Done(values) = settled? {
                return Ok(values);
            }
        }
        Err(crate::replicas::failed_over_twice(f.core().server(server)))
    }
}

/// Whether a transaction's replies say it ran (EXEC's reply is not nil:
/// no watched key changed).
#[allow(clippy::ptr_arg)] // passed where a `FnOnce(&Vec<Value>)` is taken
fn exec_wrote(values: &Vec<Value>) -> bool {
    !matches!(values.last(), Some(Value::Nil) | None)
}

impl Connection {
    /// A command on one server's keys (a `key` or `colocated` row, keys
    /// read from its `key_spec`, nothing moving, not blocking): the caller's
    /// packed bytes go to that server as they are, with no copy of the
    /// arguments (a big value is not copied twice). Anything else (None)
    /// takes the general path, which also gives every error.
    fn as_sent(&self, f: &Snap, bytes: &[u8]) -> Option<RedisResult<Value>> {
        if f.core().shards {
            // Read policies, WAIT and failovers are the driver's.
            return None;
        }
        let args = parse_args(bytes)?;
        let name = std::str::from_utf8(args.first()?).ok()?.to_ascii_uppercase();
        if matches!(
            name.as_str(),
            "WATCH" | "UNWATCH" | "DISCARD" | "MULTI" | "EXEC" | "SELECT" | "SCAN"
        ) {
            return None;
        }
        let sub = args.get(1).and_then(|s| std::str::from_utf8(s).ok());
        let entry = crate::spec::lookup(&name, sub)?;
        if !matches!(entry.class, RouteClass::Key | RouteClass::Colocated) || entry.block.is_some() {
            return None;
        }
        let core = f.core();
        if args.iter().any(|a| a.len() > core.max_arg_size) {
            return None;
        }
        let crate::CommandKeys::Known(keys) = entry.keys(&args) else {
            return None;
        };
        if keys.is_empty() {
            return None;
        }
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
        let Ok(Route::One { server, moves }) = core.route_colocated(&name, &keys) else {
            return None;
        };
        if !moves.is_empty() {
            return None;
        }
        let read_only = entry.access == crate::Access::Read;
        Some(crate::telemetry::Span::named(&name, "key").run(|| f.packed_on(server, bytes, read_only)))
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        if cmd.is_empty() {
            return Err(empty_command());
        }
        let f = self.snapshot();
        if let Some(reply) = self.as_sent(&f, cmd) {
            return reply;
        }
        let mut cmds = parse_packed(cmd)?;
        if cmds.len() != 1 {
            return Err(client_error(format!("expected one command, got {}", cmds.len())));
        }
        let cmd = cmds.pop().unwrap_or_default();
        self.exec(&f, &cmd)
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        if cmd.is_empty() {
            return Err(empty_command());
        }
        let cmds = parse_packed(cmd)?;
        // As the client's pipelines: nothing sent if any argument is too
        // large, one span for the whole pipeline.
        let f = self.snapshot();
        for c in &cmds {
            f.core().check_size(c)?;
        }
        crate::telemetry::Span::pipeline(cmds.len()).run(|| self.pipeline(&f, cmd, &cmds, offset, count))
    }

    fn get_db(&self) -> i64 {
        0
    }

    fn check_connection(&mut self) -> bool {
        let f = self.snapshot();
        self.exec(&f, &redis::cmd("PING")).is_ok()
    }

    /// For a fleet: `false` once the last attempt to connect to every
    /// server failed (refused, unreachable, no answer in time), so no call
    /// can succeed until one is back; `true` while some server may answer
    /// (calls on the keys of a server that is down fail with an error
    /// naming it). A pool that discards handles that are not open (r2d2's
    /// `has_broken`) thus drops them when the whole fleet is gone, not
    /// for one server down. A successful call on any handle of the client
    /// makes it `true` again.
    fn is_open(&self) -> bool {
        match &self.watched {
            Some(w) => w.fleet.any_reachable(),
            None => self.mr.fleet().any_reachable(),
        }
    }
}

/// A routed connection handle over the async client, implementing
/// `redis::aio::ConnectionLike` (so `AsyncCommands`, `AsyncTypedCommands`,
/// `cmd().query_async`, `pipe().query_async`, `Script::invoke_async` work).
/// Cheap to clone; clones share the client's connections. Made by
/// [`aio::MRedis::get_connection`](crate::aio::MRedis::get_connection).
///
/// WATCH runs on a connection of its own, which the handle keeps until
/// EXEC, UNWATCH or DISCARD, so `redis::aio::transaction_async` and
/// hand-written WATCH ... MULTI/EXEC work unchanged (watched keys must share
/// a server). As with redis-rs's multiplexed connections, clones share the
/// WATCH: run one transaction at a time per handle (and its clones); each
/// [`get_connection`](crate::aio::MRedis::get_connection) gives a handle
/// of its own.
#[derive(Clone)]
pub struct AsyncConnection {
    mr: crate::async_client::MRedis,
    /// A WATCH's connection, shared by the handle's clones (taken out while
    /// a command runs on it).
    watched: Arc<std::sync::Mutex<Option<AsyncWatched>>>,
}

/// An async handle's WATCH.
struct AsyncWatched {
    /// The configuration the WATCH was made on.
    fleet: AsyncSnap,
    server: usize,
    held: crate::async_client::HeldConnection,
}

impl std::fmt::Debug for AsyncConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mredis::aio::Connection")
            .field("client", &self.mr)
            .finish()
    }
}

impl AsyncConnection {
    pub(crate) fn new(mr: crate::async_client::MRedis) -> AsyncConnection {
        AsyncConnection {
            mr,
            watched: Arc::default(),
        }
    }

    /// The handle's WATCH, taken out (put it back with
    /// [`put_watch`](Self::put_watch)).
    fn take_watch(&self, server: Option<usize>) -> Option<AsyncWatched> {
        let mut slot = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        match server {
            Some(s) => slot.take_if(|w| w.server == s),
            None => slot.take(),
        }
    }

    fn put_watch(&self, w: AsyncWatched) {
        *self.watched.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
    }

    /// WATCH on the keys' server, on a connection this handle keeps until
    /// EXEC, UNWATCH or DISCARD.
    async fn watch(&self, f: &AsyncSnap, cmd: &Cmd, server: usize) -> RedisResult<Value> {
        let deadline = f.response_timeout();
        let mut w = match self.take_watch(None) {
            Some(w) if w.server != server => {
                self.put_watch(w);
                return Err(cannot(
                    "WATCH",
                    "keys on another server than the keys already watched; watched keys must share a server",
                ));
            }
            Some(w) => w,
            None => AsyncWatched {
                fleet: f.clone(),
                server,
                held: f.hold(server).await?,
            },
        };
        let reply = w.held.command(cmd, deadline).await.and_then(Value::extract_error);
        let reply =
            reply.map_err(|e| crate::error::name_server_after(w.fleet.core().server(server), e, None, deadline));
        if reply.is_ok() {
            self.put_watch(w);
        }
        reply
    }

    /// UNWATCH or DISCARD: on the watched connection, which goes back.
    async fn unwatch(&self, cmd: &Cmd) -> RedisResult<Value> {
        let Some(mut w) = self.take_watch(None) else {
            return Ok(Value::Okay);
        };
        let deadline = w.fleet.response_timeout();
        let reply = w.held.command(cmd, deadline).await.and_then(Value::extract_error);
        if reply.is_ok() {
            w.fleet.release(w.held);
        }
        reply
    }

    /// An atomic pipeline (MULTI ... EXEC) on server `server`: on the
    /// watched connection if the handle watches keys there (a failover
    /// since the WATCH reports the transaction aborted, as in the sync
    /// handle), else on a dedicated connection with the driver's promises
    /// when the fleet has shards, else on the shared connection.
    async fn atomic_on(
        &self,
        f: &AsyncSnap,
        server: usize,
        pipe: &redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let deadline = f.response_timeout();
        if let Some(mut w) = self.take_watch(Some(server)) {
            let reply = w.held.pipeline(pipe, offset, count, deadline).await;
            let fleet = w.fleet.clone();
            return match fleet.settle_held(&mut w.held, reply, exec_wrote).await? {
                Held::Done(values) => {
                    fleet.release(w.held);
                    Ok(values)
                }
                Held::FailedOver => Ok(vec![Value::Nil; count]),
            };
        }
        if !f.core().shards {
            let mut con = f.connection(server)?;
            return redis::aio::ConnectionLike::req_packed_commands(&mut con, pipe, offset, count)
                .await
                .map_err(|e| crate::error::name_server(f.core().server(server), e));
        }
        for _ in 0..2 {
            let mut held = f.hold(server).await?;
            let reply = held.pipeline(pipe, offset, count, deadline).await;
            match f.settle_held(&mut held, reply, exec_wrote).await? {
                Held::Done(values) => {
                    f.release(held);
                    return Ok(values);
                }
                Held::FailedOver => {}
            }
        }
        Err(crate::replicas::failed_over_twice(f.core().server(server)))
    }

    /// Plans a command, as the sync handle does.
    async fn plan(&self, f: &AsyncSnap, cmd: &Cmd) -> RedisResult<Dispatch> {
        let core = f.core();
        let mut book = f.command_book().get().cloned();
        let mut dispatch = plan(core, book.as_deref(), cmd, None)?;
        if let Dispatch::Describe = dispatch {
            let fetched = self.describe(f).await?.ok_or_else(|| no_command_permission(cmd))?;
            dispatch = plan(core, Some(&fetched), cmd, None)?;
            book = Some(fetched);
        }
        if let Dispatch::GetKeys = dispatch {
            let keys: Vec<Vec<u8>> = redis::from_redis_value(f.value_on(0, &getkeys_cmd(cmd)).await?)?;
            dispatch = plan(core, book.as_deref(), cmd, Some(keys))?;
        }
        Ok(dispatch)
    }

    /// The servers' COMMAND metadata, from the first server that answers
    /// (None: this user may not run COMMAND).
    pub(crate) async fn describe(&self, f: &AsyncSnap) -> RedisResult<Option<Arc<CommandBook>>> {
        if let Some(book) = f.command_book().get() {
            return Ok(Some(book.clone()));
        }
        let mut tried = Vec::new();
        for server in 0..f.core().all() {
            let cmd = redis::cmd("COMMAND");
            let reply = crate::telemetry::Span::command(&cmd, "metadata")
                .run_async(f.value_on(server, &cmd))
                .await;
            let done = reply.is_ok();
            tried.push(reply);
            if done {
                break;
            }
        }
        book_from(f.command_book(), tried)
    }

    /// Runs one command on the configuration in force.
    async fn exec(&self, cmd: &Cmd) -> RedisResult<Value> {
        let f = self.mr.fleet();
        let plan = self.plan(&f, cmd).await?;
        self.exec_plan(&f, cmd, plan).await
    }

    /// Runs one command already planned.
    async fn exec_plan(&self, f: &AsyncSnap, cmd: &Cmd, plan: Dispatch) -> RedisResult<Value> {
        match plan {
            Dispatch::Run(route) => f.run::<Value>(route, cmd).await,
            Dispatch::Watch(server) => self.watch(f, cmd, server).await,
            Dispatch::Unwatch => self.unwatch(cmd).await,
            plan => f.drive(Planned::new(f.core(), &plan, cmd)).await,
        }
    }

    async fn pipeline(
        &self,
        f: &AsyncSnap,
        pipe: &redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let cmds: Vec<&Cmd> = pipe.cmd_iter().collect();
        let core = f.core().clone();
        if pipe.is_transaction() {
            let mut target: Option<(usize, Vec<crate::routing::Move>)> = None;
            let mut keyless = false;
            for c in &cmds {
                if answered_by_any_server(c) {
                    keyless = true;
                    continue;
                }
                let plan = self.plan(f, c).await?;
                join_transaction(&core, &mut target, c, plan)?;
            }
            if target.is_none() && keyless {
                target = Some((0, Vec::new()));
            }
            let Some((server, moves)) = target else {
                return Ok(vec![Value::Array(vec![])]);
            };
            if !moves.is_empty() {
                if self.watched.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                    return Err(crate::migration::try_again(&core, &moves[0].key, moves[0].from, server));
                }
                let owned: Vec<Cmd> = cmds.iter().map(|c| (*c).clone()).collect();
                let value = f
                    .drive(crate::migration::One::new(&core, &owned, true, server, &moves))
                    .await?;
                return Ok(vec![value]);
            }
            return self.atomic_on(f, server, pipe, offset, count).await;
        }
        // Every command planned before anything is sent; then one batch
        // machine, as the sync handle.
        // A command that cannot be routed gets its refusal as its reply
        // and the others run (see the sync handle's `pipeline`).
        let mut owned: Vec<Cmd> = Vec::with_capacity(cmds.len());
        let mut plans = Vec::with_capacity(cmds.len());
        let mut refused: Vec<Option<Value>> = Vec::with_capacity(cmds.len());
        for c in &cmds {
            match self.plan(f, c).await {
                Ok(plan) => {
                    owned.push((*c).clone());
                    plans.push(plan);
                    refused.push(None);
                }
                Err(e) => refused.push(Some(refusal_value(&e))),
            }
        }
        let mut ran = if owned.is_empty() {
            Vec::new()
        } else {
            f.drive(Batch::new(&core, &owned, &plans)).await?
        }
        .into_iter();
        let mut values = Vec::with_capacity(refused.len());
        for slot in refused {
            match slot {
                Some(v) => values.push(v),
                None => values.push(
                    ran.next()
                        .ok_or_else(|| client_error("a reply is missing".to_string()))?,
                ),
            }
        }
        Ok(values.into_iter().skip(offset).take(count).collect())
    }
}

impl redis::aio::ConnectionLike for AsyncConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        Box::pin(async move {
            if cmd.args_iter().len() == 0 {
                return Err(empty_command());
            }
            if cmd.in_scan_mode() {
                // A `cursor_arg` cursor (redis-rs's `iter_async`, `scan`)
                // is kept outside the arguments, which show it as
                // `Arg::Cursor`; packing writes its value in.
                let plain = parse_packed(&cmd.get_packed_command())?
                    .pop()
                    .ok_or_else(|| client_error("an empty command".to_string()))?;
                return self.exec(&plain).await;
            }
            self.exec(cmd).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            if cmd.cmd_iter().next().is_none() {
                return Err(empty_command());
            }
            // As the client's pipelines: nothing sent if any argument is
            // too large, one span for the whole pipeline.
            let f = self.mr.fleet();
            for c in cmd.cmd_iter() {
                f.core().check_size(c)?;
            }
            crate::telemetry::Span::pipeline(cmd.len())
                .run_async(self.pipeline(&f, cmd, offset, count))
                .await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// The sync client's routed handles.
impl crate::MRedis {
    /// A routed connection handle implementing `redis::ConnectionLike`, for
    /// code written against redis-rs connections (`cmd().query`,
    /// `pipe().query`, `redis::transaction`, `Script::invoke`, `Commands`,
    /// `TypedCommands`). Commands are routed when sent, by the command
    /// table (`commands.toml`: class, key positions, split and merge), as
    /// the generated methods route them; only a command the table does not
    /// know (a module's) needs the servers' `COMMAND` metadata, fetched by
    /// the client's first handle from the first server that answers (so a
    /// wrong password or a fleet that is down fails here, as with
    /// redis-rs). See the
    /// [`handle`](crate::handle) module for the rules. Omitted commands are
    /// errors here rather than compile errors. A handle follows
    /// [`reconfigure`](Self::reconfigure): each command runs on the
    /// configuration in force when it is sent (a WATCH ... EXEC on the one
    /// in force at the WATCH).
    pub fn get_connection(&self) -> RedisResult<Connection> {
        // Connects now, as redis-rs's `get_connection` does (a wrong
        // password or a fleet that is down fails here), and learns the
        // servers' COMMAND metadata for commands the table does not know.
        let con = Connection::new(self.clone());
        let f = self.fleet();
        con.describe(&f)?;
        // The metadata is fetched once per client: when the last attempts
        // reached no server (the handle before was not `is_open`), one
        // must answer now.
        if !f.any_reachable() {
            let mut last = None;
            for i in 0..f.core().servers.len() {
                match f.with_connection(i, |c| redis::cmd("PING").query::<()>(c)) {
                    Ok(()) => return Ok(con),
                    Err(e) => last = Some(e),
                }
            }
            if let Some(e) = last {
                return Err(e);
            }
        }
        Ok(con)
    }
}

/// The async client's routed handles.
impl crate::async_client::MRedis {
    /// A routed connection handle implementing `redis::aio::ConnectionLike`,
    /// for code written against redis-rs async connections; see
    /// [`handle`](crate::handle) for the routing rules. Cheap to clone.
    /// Each command runs on the configuration in force when it is sent
    /// (it follows [`reconfigure`](Self::reconfigure)).
    pub async fn get_connection(&self) -> RedisResult<AsyncConnection> {
        // Connects now, as redis-rs's `get_multiplexed_async_connection`
        // does, and learns the servers' COMMAND metadata for commands the
        // table does not know.
        let con = AsyncConnection::new(self.clone());
        con.describe(&self.fleet()).await?;
        Ok(con)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_commands_parse_back() {
        let mut p = redis::pipe();
        p.cmd("SET").arg("k").arg(&b"a\r\nb"[..]).cmd("GET").arg("k");
        let cmds = parse_packed(&p.get_packed_pipeline()).unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(
            cmds[0].get_packed_command(),
            redis::cmd("SET").arg("k").arg(&b"a\r\nb"[..]).get_packed_command()
        );
        assert!(parse_packed(b"*1\r\n$5\r\nab").is_err());
    }

    #[test]
    fn scan_cursors_carry_the_server() {
        let page = |cursor: &str| {
            Value::Array(vec![
                Value::BulkString(cursor.as_bytes().to_vec()),
                Value::Array(vec![]),
            ])
        };
        let next = |v: Value| match v {
            Value::Array(p) => text(&p[0]).unwrap(),
            _ => panic!(),
        };
        assert_eq!(
            next(scan_page(1, 3, page("17"), |_| true).unwrap()),
            (17 * 3 + 1).to_string()
        );
        assert_eq!(next(scan_page(1, 3, page("0"), |_| true).unwrap()), "2");
        assert_eq!(next(scan_page(2, 3, page("0"), |_| true).unwrap()), "0");
    }
}
