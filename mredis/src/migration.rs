//! Serving keys while the fleet moves ([`Builder::migrating_from`]).
//!
//! The model is Redis Cluster's ASK redirection, done in the client: while
//! a key whose owner changes (old server A, new server B) still exists on
//! A, commands on it run on A, atomically with the check that it is there
//! (a Lua guard: `EXISTS` then the command, in one script); once it is
//! gone from A they run on B. A only ever loses such keys: the migration-
//! aware clients never create them there (a key missing from A is created
//! on B), and `mredis rebalance` moves them from A to B with MIGRATE, which
//! is atomic. So a key is never served from two places, and no client ever
//! issues MIGRATE itself (two MIGRATEs in opposite directions block both
//! servers until they time out).
//!
//! Commands on several moving keys run on A when all of them are there and
//! on B when none is; when only some are, the call fails with a retryable
//! `TRYAGAIN` error naming a key, as Redis Cluster does. Scatter-gather
//! commands (MGET, MSET, DEL, ...) are split per key and never fail so.
//! Scripts and functions that cannot be wrapped run on B when none of their
//! keys is left on A, and fail with `TRYAGAIN` otherwise (mredis's own
//! [`Script`](crate::Script) is wrapped, so it runs on A as well).
//!
//! The logic is written once, as state machines that ask for requests and
//! read their replies; the sync and async clients only carry the requests.
//!
//! [`Builder::migrating_from`]: crate::Builder::migrating_from

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::{Cmd, ErrorKind, RedisError, RedisResult, Value};

use crate::error::show_key;
use crate::exec::{Machine, Request, Step, one};
use crate::mover::MARKS;
use crate::routing::{Merge, Move, Topology, args_of};

/// Error code of the guard when the keys are not on the old server.
pub(crate) const ABSENT: &str = "MREDISABSENT";
/// Error code of the guard when only some of the keys are.
pub(crate) const PARTIAL: &str = "MREDISPARTIAL";
/// Error code of the guard when a rebalance is moving one of the keys at
/// this moment (shards with replicas: see [`MARKS`]).
pub(crate) const MOVING: &str = "MREDISMOVING";
/// How long a call waits for keys a rebalance is moving before it fails.
pub(crate) const MOVING_WAIT: Duration = Duration::from_secs(10);

/// How long to wait before asking again about a key a rebalance is moving:
/// 2 ms, doubling up to 50 ms, for at most [`MOVING_WAIT`] in all.
#[derive(Debug, Default)]
pub(crate) struct Patience {
    since: Option<Instant>,
    attempt: u32,
}

impl Patience {
    /// The next wait, or `None` once [`MOVING_WAIT`] has passed.
    pub(crate) fn next_wait(&mut self) -> Option<Duration> {
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= MOVING_WAIT {
            return None;
        }
        let ms = (2u64 << self.attempt.min(5)).min(50);
        self.attempt += 1;
        Some(Duration::from_millis(ms))
    }
}

/// The error of a call on a key a rebalance kept marked as moving for
/// longer than [`MOVING_WAIT`].
pub(crate) fn still_moving(core: &Topology, key: &[u8], from: usize, to: usize) -> RedisError {
    RedisError::from((
        ErrorKind::Server(redis::ServerErrorKind::TryAgain),
        "mredis",
        format!(
            "`{}` has been marked as moving from {} to {} by a rebalance for {} s (a rebalance that stopped \
             in the middle: run it again to finish the move); nothing was run",
            show_key(key),
            core.name(from),
            core.name(to),
            MOVING_WAIT.as_secs()
        ),
    ))
}

/// Runs commands on this server only if every key in KEYS exists here.
/// ARGV: number of commands (`*N`: reply with an array even for one), then
/// for each its argument count and arguments. One command: its reply as
/// is. Several: an array of replies (errors kept in place, as MULTI/EXEC
/// would).
const GUARD_CODE: &str = r#"
local here = 0
for i = 1, #KEYS do here = here + redis.call('EXISTS', KEYS[i]) end
if here == 0 then return redis.error_reply('MREDISABSENT the keys are not on this server') end
if redis.call('EXISTS', '__mredis:moving') == 1 then
  for i = 1, #KEYS do
    if redis.call('HEXISTS', '__mredis:moving', KEYS[i]) == 1 then return redis.error_reply('MREDISMOVING a rebalance is moving this key') end
  end
end
if here < #KEYS then return redis.error_reply('MREDISPARTIAL only some keys are on this server') end
local arr = string.sub(ARGV[1], 1, 1) == '*'
local n = tonumber(arr and string.sub(ARGV[1], 2) or ARGV[1])
local pos = 2
local out = {}
for c = 1, n do
  local argc = tonumber(ARGV[pos])
  local args = {}
  for j = 1, argc do args[j] = ARGV[pos + j] end
  pos = pos + argc + 1
  if n == 1 and not arr then return redis.call(unpack(args)) end
  out[c] = redis.pcall(unpack(args))
end
return out
"#;

/// Runs one multi-key command key by key, for the keys that exist here.
/// ARGV: command name, arguments per key (stride), then the other
/// arguments of each key. Reply: a string of '1'/'0' per key (here or
/// not), then the reply of each key that was here.
const EACH_CODE: &str = r#"
local name = ARGV[1]
local per = tonumber(ARGV[2]) - 1
local flags = {}
local out = {''}
if redis.call('EXISTS', '__mredis:moving') == 1 then
  for i = 1, #KEYS do
    if redis.call('HEXISTS', '__mredis:moving', KEYS[i]) == 1 then return redis.error_reply('MREDISMOVING a rebalance is moving this key') end
  end
end
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local args = {name, KEYS[i]}
    for j = 1, per do args[#args + 1] = ARGV[2 + (i - 1) * per + j] end
    flags[i] = '1'
    out[#out + 1] = redis.pcall(unpack(args))
  else
    flags[i] = '0'
  end
end
out[1] = table.concat(flags)
return out
"#;

static GUARD: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GUARD_CODE));
static EACH: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(EACH_CODE));

/// Lua's `unpack` takes at most about 8000 values.
const MAX_WRAPPED_ARGS: usize = 7000;

/// Commands that cannot run inside the guard script: scripts and functions
/// (Redis runs no script from a script), and commands with more arguments
/// than Lua can pass on.
fn unwrappable(cmd: &Cmd) -> bool {
    if cmd.args_iter().len() > MAX_WRAPPED_ARGS {
        return true;
    }
    // The EVAL and FCALL families: the table's scripting rows that run on
    // keys (SCRIPT and FUNCTION subcommands go to every server).
    let name = crate::routing::command_name(cmd).to_ascii_uppercase();
    crate::spec::lookup(&name, None).is_some_and(|e| e.group == "scripting" && e.class != crate::RouteClass::All)
}

/// The guard around `cmds`, by SHA (or with its code, after NOSCRIPT).
fn guard(keys: &[&[u8]], cmds: &[&Cmd], array: bool, with_code: bool) -> Cmd {
    let mut c = if with_code {
        let mut c = redis::cmd("EVAL");
        c.arg(GUARD_CODE);
        c
    } else {
        let mut c = redis::cmd("EVALSHA");
        c.arg(GUARD.get_hash());
        c
    };
    c.arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    if array {
        c.arg(format!("*{}", cmds.len()));
    } else {
        c.arg(cmds.len());
    }
    for cmd in cmds {
        let args = args_of(cmd);
        c.arg(args.len());
        for a in args {
            c.arg(a);
        }
    }
    c
}

fn each(name: &[u8], stride: usize, keys: &[&[u8]], rest: &[&[u8]], with_code: bool) -> Cmd {
    let mut c = if with_code {
        let mut c = redis::cmd("EVAL");
        c.arg(EACH_CODE);
        c
    } else {
        let mut c = redis::cmd("EVALSHA");
        c.arg(EACH.get_hash());
        c
    };
    c.arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    c.arg(name).arg(stride);
    for r in rest {
        c.arg(*r);
    }
    c
}

/// The server error code of a reply, if it is an error reply.
fn code_of(v: &Value) -> Option<&str> {
    match v {
        Value::ServerError(e) => Some(e.code()),
        _ => None,
    }
}

pub(crate) fn try_again(core: &Topology, key: &[u8], from: usize, to: usize) -> RedisError {
    RedisError::from((
        ErrorKind::Server(redis::ServerErrorKind::TryAgain),
        "mredis",
        format!(
            "some keys of this command (e.g. `{}`) are still on {} (their old server) and some are not; \
             nothing was run. Retry: the rebalance moves them to {}",
            show_key(key),
            core.name(from),
            core.name(to)
        ),
    ))
}

/// A command on one server (key or co-located keys) some of whose keys
/// are moving.
pub(crate) struct One<'a> {
    core: &'a Topology,
    /// The commands: one, or an atomic pipeline's (MULTI/EXEC on the new
    /// server, one guard script on the old one).
    cmds: &'a [Cmd],
    atomic: bool,
    server: usize,
    moves: &'a [Move],
    state: OneState,
    patience: Patience,
    /// The server that ran the command.
    pub(crate) served_on: usize,
}

#[derive(Clone, Copy)]
enum OneState {
    Checking,
    Guarding {
        with_code: bool,
    },
    /// A rebalance is moving a key: the guard goes again after a wait.
    Waiting {
        with_code: bool,
    },
    Final,
}

impl<'a> One<'a> {
    pub(crate) fn new(core: &'a Topology, cmds: &'a [Cmd], atomic: bool, server: usize, moves: &'a [Move]) -> Self {
        One {
            core,
            cmds,
            atomic,
            server,
            moves,
            state: OneState::Final,
            patience: Patience::default(),
            served_on: server,
        }
    }

    fn from(&self) -> Option<usize> {
        let first = self.moves.first()?.from;
        self.moves.iter().all(|m| m.from == first).then_some(first)
    }

    fn guard_request(&self, with_code: bool) -> Vec<Request<'a>> {
        let keys: Vec<&[u8]> = self.moves.iter().map(|m| &m.key[..]).collect();
        let cmds: Vec<&Cmd> = self.cmds.iter().collect();
        vec![Request {
            server: self.from().unwrap_or(self.server),
            cmds: vec![guard(&keys, &cmds, self.atomic, with_code)].into(),
            block: None,
        }]
    }

    fn on_new(&mut self) -> Step<'a, Value> {
        self.state = OneState::Final;
        self.served_on = self.server;
        let cmds = if self.atomic {
            let mut cmds = vec![redis::cmd("MULTI")];
            cmds.extend(self.cmds.iter().cloned());
            cmds.push(redis::cmd("EXEC"));
            cmds
        } else {
            return Step::Send(vec![Request {
                server: self.server,
                cmds: self.cmds.into(),
                block: None,
            }]);
        };
        Step::Send(vec![Request {
            server: self.server,
            cmds: cmds.into(),
            block: None,
        }])
    }
}

impl<'a> Machine for One<'a> {
    type Output = Value;

    fn start(&mut self) -> Step<'_, Value> {
        if self.moves.is_empty() {
            return self.on_new();
        }
        if self.cmds.iter().any(unwrappable) || self.from().is_none() {
            // Are any of the keys still on their old servers?
            self.state = OneState::Checking;
            let mut requests: Vec<Request<'a>> = Vec::new();
            for m in self.moves {
                match requests.iter_mut().find(|r| r.server == m.from) {
                    Some(r) => {
                        r.cmds.to_mut()[0].arg(&m.key[..]);
                    }
                    None => {
                        let mut c = redis::cmd("EXISTS");
                        c.arg(&m.key[..]);
                        requests.push(Request {
                            server: m.from,
                            cmds: vec![c].into(),
                            block: None,
                        });
                    }
                }
            }
            return Step::Send(requests);
        }
        self.state = OneState::Guarding { with_code: false };
        Step::Send(self.guard_request(false))
    }

    fn next(&mut self, replies: Vec<RedisResult<Vec<Value>>>) -> Step<'_, Value> {
        match self.state {
            OneState::Waiting { with_code } => {
                self.state = OneState::Guarding { with_code };
                Step::Send(self.guard_request(with_code))
            }
            OneState::Final => {
                let reply = replies.into_iter().next().map(|r| one(Some(r)));
                Step::Done(reply.unwrap_or_else(|| Err(crate::error::client_error("no reply".to_string()))))
            }
            OneState::Checking => {
                let mut here = 0i64;
                for reply in replies {
                    match one(Some(reply)).and_then(Value::extract_error) {
                        Ok(Value::Int(n)) => here += n,
                        Ok(other) => {
                            return Step::Done(Err(crate::error::client_error(format!(
                                "unexpected EXISTS reply {other:?}"
                            ))));
                        }
                        Err(e) => return Step::Done(Err(e)),
                    }
                }
                if here == 0 {
                    self.on_new()
                } else {
                    let m = &self.moves[0];
                    Step::Done(Err(try_again(self.core, &m.key, m.from, m.to)))
                }
            }
            OneState::Guarding { with_code } => {
                let reply = match replies.into_iter().next().map(|r| one(Some(r))) {
                    Some(Ok(v)) => v,
                    Some(Err(e)) => return Step::Done(Err(e)),
                    None => return Step::Done(Err(crate::error::client_error("no reply".to_string()))),
                };
                match code_of(&reply) {
                    Some("NOSCRIPT") if !with_code => {
                        self.state = OneState::Guarding { with_code: true };
                        Step::Send(self.guard_request(true))
                    }
                    Some(ABSENT) => self.on_new(),
                    Some(PARTIAL) => {
                        let m = &self.moves[0];
                        Step::Done(Err(try_again(self.core, &m.key, m.from, m.to)))
                    }
                    Some(MOVING) => match self.patience.next_wait() {
                        Some(wait) => {
                            self.state = OneState::Waiting { with_code };
                            Step::Wait(wait)
                        }
                        None => {
                            let m = &self.moves[0];
                            Step::Done(Err(still_moving(self.core, &m.key, m.from, m.to)))
                        }
                    },
                    _ => {
                        self.served_on = self.from().unwrap_or(self.server);
                        Step::Done(Ok(reply))
                    }
                }
            }
        }
    }
}

/// A multi-key command (MGET, MSET, DEL, ...) split per server, some of
/// whose keys are moving: those are served key by key on their old server
/// while they are there, the rest on their new one; replies merged as one
/// server would answer.
pub(crate) struct Split<'a> {
    core: &'a Topology,
    args: Vec<&'a [u8]>,
    stride: usize,
    merge: Merge,
    /// New owner of each key.
    owner_of: Vec<usize>,
    /// Old server of each moving key.
    from_of: Vec<Option<usize>>,
    /// (items, reply) gathered so far.
    parts: Vec<(Vec<usize>, Value)>,
    /// What the requests in flight are: a group on its new server, or the
    /// moving keys of one old server.
    inflight: Vec<Part>,
    /// Keys of one old server a rebalance is moving at this moment: asked
    /// again after a wait.
    waiting: Vec<Vec<usize>>,
    /// The wait for `waiting` is over.
    waited: bool,
    patience: Patience,
    command: String,
}

enum Part {
    Group(Vec<usize>),
    Each { items: Vec<usize>, with_code: bool },
}

impl<'a> Split<'a> {
    pub(crate) fn new(core: &'a Topology, cmd: &'a Cmd, stride: usize, merge: Merge) -> Self {
        let args = args_of(cmd);
        let stride = stride.max(1);
        let count = (args.len() - 1) / stride;
        let mut owner_of = Vec::with_capacity(count);
        let mut from_of = Vec::with_capacity(count);
        for i in 0..count {
            let (server, from) = core.owner(args[1 + i * stride]);
            owner_of.push(server);
            from_of.push(from);
        }
        Split {
            core,
            args,
            stride,
            merge,
            owner_of,
            from_of,
            parts: Vec::new(),
            inflight: Vec::new(),
            waiting: Vec::new(),
            waited: false,
            patience: Patience::default(),
            command: crate::routing::command_name(cmd),
        }
    }

    fn group_cmd(&self, items: &[usize]) -> Cmd {
        let mut c = Cmd::new();
        c.arg(self.args[0]);
        for &i in items {
            for j in 0..self.stride {
                c.arg(self.args[1 + i * self.stride + j]);
            }
        }
        c
    }

    fn each_cmd(&self, items: &[usize], with_code: bool) -> Cmd {
        let keys: Vec<&[u8]> = items.iter().map(|&i| self.args[1 + i * self.stride]).collect();
        let mut rest: Vec<&[u8]> = Vec::new();
        for &i in items {
            for j in 1..self.stride {
                rest.push(self.args[1 + i * self.stride + j]);
            }
        }
        each(self.args[0], self.stride, &keys, &rest, with_code)
    }

    /// The moving keys `items` on their old server `from`, key by key
    /// (recorded as in flight).
    fn each_request(&mut self, from: usize, items: Vec<usize>, with_code: bool) -> Request<'a> {
        let request = Request {
            server: from,
            cmds: vec![self.each_cmd(&items, with_code)].into(),
            block: None,
        };
        self.inflight.push(Part::Each { items, with_code });
        request
    }

    /// Requests for `items` on their new servers.
    fn groups(&mut self, items: impl Iterator<Item = usize>, out: &mut Vec<Request<'a>>) {
        let mut by_server: Vec<Vec<usize>> = vec![Vec::new(); self.core.all()];
        for i in items {
            by_server[self.owner_of[i]].push(i);
        }
        for (server, items) in by_server.into_iter().enumerate() {
            if !items.is_empty() {
                out.push(Request {
                    server,
                    cmds: vec![self.group_cmd(&items)].into(),
                    block: None,
                });
                self.inflight.push(Part::Group(items));
            }
        }
    }
}

impl<'a> Machine for Split<'a> {
    type Output = Value;

    fn start(&mut self) -> Step<'_, Value> {
        let mut requests = Vec::new();
        let count = self.owner_of.len();
        let staying: Vec<usize> = (0..count).filter(|&i| self.from_of[i].is_none()).collect();
        self.groups(staying.into_iter(), &mut requests);
        let mut by_from: Vec<Vec<usize>> = vec![Vec::new(); self.core.all()];
        for i in 0..count {
            if let Some(from) = self.from_of[i] {
                by_from[from].push(i);
            }
        }
        for (from, items) in by_from.into_iter().enumerate() {
            if !items.is_empty() {
                requests.push(self.each_request(from, items, false));
            }
        }
        Step::Send(requests)
    }

    fn next(&mut self, replies: Vec<RedisResult<Vec<Value>>>) -> Step<'_, Value> {
        let inflight = std::mem::take(&mut self.inflight);
        // (The command's name, copied: the requests below borrow `self`.)
        let command = self.command.clone();
        let mut failure = crate::error::Failure::new(&command);
        let mut absent: Vec<usize> = Vec::new();
        let mut retry: Vec<Request<'a>> = Vec::new();
        for (part, reply) in inflight.into_iter().zip(replies) {
            let reply = one(Some(reply));
            match part {
                Part::Group(items) => match reply.and_then(Value::extract_error) {
                    Ok(v) => self.parts.push((items, v)),
                    Err(e) => {
                        let server = self.owner_of[items[0]];
                        failure.failed(self.core.name(server), e)
                    }
                },
                Part::Each { items, with_code } => {
                    let from = self.from_of[items[0]].unwrap_or(0);
                    let v = match reply {
                        Ok(v) => v,
                        Err(e) => {
                            failure.failed(self.core.name(from), e);
                            continue;
                        }
                    };
                    if code_of(&v) == Some("NOSCRIPT") && !with_code {
                        let request = self.each_request(from, items, true);
                        retry.push(request);
                        continue;
                    }
                    if code_of(&v) == Some(MOVING) {
                        self.waiting.push(items);
                        continue;
                    }
                    let Value::Array(mut out) = v else {
                        failure.failed(
                            self.core.name(from),
                            v.extract_error()
                                .err()
                                .unwrap_or_else(|| crate::error::client_error("unexpected guard reply".to_string())),
                        );
                        continue;
                    };
                    let flags = match out.first() {
                        Some(Value::BulkString(b)) => b.clone(),
                        _ => Vec::new(),
                    };
                    let mut values = out.drain(1..);
                    for (&i, flag) in items.iter().zip(flags.iter().chain(std::iter::repeat(&b'0'))) {
                        if *flag == b'1' {
                            let v = values.next().unwrap_or(Value::Nil);
                            match v.extract_error() {
                                Ok(v) => self.parts.push((vec![i], v)),
                                Err(e) => failure.failed(self.core.name(from), e),
                            }
                        } else {
                            absent.push(i);
                        }
                    }
                }
            }
        }
        if let Err(e) = failure.into_result() {
            return Step::Done(Err(e));
        }
        if !absent.is_empty() {
            // Keys gone from their old server are served by their new one
            // (they cannot come back).
            for &i in &absent {
                self.from_of[i] = None;
            }
            self.groups(absent.into_iter(), &mut retry);
        }
        if !retry.is_empty() {
            return Step::Send(retry);
        }
        if !self.waiting.is_empty() {
            if !self.waited {
                self.waited = true;
                return match self.patience.next_wait() {
                    Some(wait) => Step::Wait(wait),
                    None => {
                        let i = self.waiting[0][0];
                        let key = self.args[1 + i * self.stride];
                        let from = self.from_of[i].unwrap_or(0);
                        Step::Done(Err(still_moving(self.core, key, from, self.owner_of[i])))
                    }
                };
            }
            self.waited = false;
            for items in std::mem::take(&mut self.waiting) {
                let from = self.from_of[items[0]].unwrap_or(0);
                let request = self.each_request(from, items, false);
                retry.push(request);
            }
            return Step::Send(retry);
        }
        let parts = std::mem::take(&mut self.parts);
        Step::Done(crate::routing::merge_parts(
            &self.command,
            self.merge,
            self.owner_of.len(),
            parts,
        ))
    }
}

/// A pipeline command: the command, its server, and while its keys are
/// moving, their old server and the keys.
pub(crate) type PipeCommand = (Cmd, usize, Option<(usize, Vec<Vec<u8>>)>);

/// A pipeline (fleet, or a key pipeline's non-atomic one) with commands on
/// moving keys: those go guarded to their old server first; the ones whose
/// keys are gone run on their new server after. Replies in call order.
pub(crate) struct Pipe<'a> {
    core: &'a Topology,
    /// Each command with its server and, when moving, (old server, keys).
    cmds: &'a [PipeCommand],
    slots: Vec<Option<RedisResult<Value>>>,
    /// Positions of the commands of each request in flight, and how they
    /// were sent.
    inflight: Vec<(Vec<usize>, Sent)>,
    /// Positions of guarded commands a rebalance is moving a key of at
    /// this moment: sent again after a wait.
    waiting: Vec<usize>,
    waited: bool,
    patience: Patience,
}

/// How a pipeline command went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// As is, to its server.
    Plain,
    /// In the guard, to its old server (by SHA, or with the code).
    Guard { with_code: bool },
    /// Too big for the guard: `EXISTS` of its keys on the old server first.
    Exists,
}

impl<'a> Pipe<'a> {
    pub(crate) fn new(core: &'a Topology, cmds: &'a [PipeCommand]) -> Self {
        Pipe {
            core,
            cmds,
            slots: (0..cmds.len()).map(|_| None).collect(),
            inflight: Vec::new(),
            waiting: Vec::new(),
            waited: false,
            patience: Patience::default(),
        }
    }

    fn requests(&mut self, positions: &[usize], guarded: bool, with_code: bool) -> Vec<Request<'a>> {
        let mut requests: Vec<Request<'a>> = Vec::new();
        let base = self.inflight.len();
        for &p in positions {
            let (cmd, server, moving) = &self.cmds[p];
            let (target, c, kind) = match (guarded, moving) {
                (true, Some((from, keys))) if unwrappable(cmd) => {
                    let mut c = redis::cmd("EXISTS");
                    for k in keys {
                        c.arg(&k[..]);
                    }
                    (*from, c, Sent::Exists)
                }
                (true, Some((from, keys))) => {
                    let keys: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
                    (*from, guard(&keys, &[cmd], false, with_code), Sent::Guard { with_code })
                }
                _ => (*server, cmd.clone(), Sent::Plain),
            };
            match requests
                .iter_mut()
                .zip(self.inflight[base..].iter_mut())
                .find(|(r, (_, k))| r.server == target && *k == kind)
            {
                Some((r, (ps, _))) => {
                    r.cmds.to_mut().push(c);
                    ps.push(p);
                }
                None => {
                    requests.push(Request {
                        server: target,
                        cmds: vec![c].into(),
                        block: None,
                    });
                    self.inflight.push((vec![p], kind));
                }
            }
        }
        requests
    }
}

impl<'a> Machine for Pipe<'a> {
    type Output = Vec<RedisResult<Value>>;

    fn start(&mut self) -> Step<'_, Self::Output> {
        let plain: Vec<usize> = (0..self.cmds.len()).filter(|&p| self.cmds[p].2.is_none()).collect();
        let moving: Vec<usize> = (0..self.cmds.len()).filter(|&p| self.cmds[p].2.is_some()).collect();
        let mut requests = self.requests(&plain, false, false);
        requests.extend(self.requests(&moving, true, false));
        Step::Send(requests)
    }

    fn next(&mut self, replies: Vec<RedisResult<Vec<Value>>>) -> Step<'_, Self::Output> {
        let inflight = std::mem::take(&mut self.inflight);
        let mut absent = Vec::new();
        let mut noscript = Vec::new();
        for ((positions, kind), reply) in inflight.into_iter().zip(replies) {
            match reply {
                Err(e) => {
                    for p in positions {
                        self.slots[p] = Some(Err(e.clone()));
                    }
                }
                Ok(values) => {
                    for (p, v) in positions.into_iter().zip(values) {
                        let partial = match (kind, &v) {
                            (Sent::Exists, Value::Int(0)) => {
                                absent.push(p);
                                continue;
                            }
                            (Sent::Exists, Value::Int(_)) => true,
                            _ => false,
                        };
                        match (kind, code_of(&v)) {
                            (Sent::Guard { with_code: false }, Some("NOSCRIPT")) => noscript.push(p),
                            (Sent::Guard { .. }, Some(MOVING)) => self.waiting.push(p),
                            (Sent::Guard { .. }, Some(ABSENT)) => absent.push(p),
                            (Sent::Guard { .. }, Some(PARTIAL)) | (Sent::Exists, None)
                                if partial || kind != Sent::Exists =>
                            {
                                let (_, server, moving) = &self.cmds[p];
                                let (from, keys) = moving.as_ref().map(|(f, k)| (*f, &k[..])).unwrap_or((0, &[]));
                                let key = keys.first().map(|k| &k[..]).unwrap_or(b"");
                                self.slots[p] = Some(Err(try_again(self.core, key, from, *server)));
                            }
                            _ => self.slots[p] = Some(Ok(v)),
                        }
                    }
                }
            }
        }
        let mut requests = self.requests(&noscript, true, true);
        absent.sort_unstable();
        requests.extend(self.requests(&absent, false, false));
        if !requests.is_empty() {
            return Step::Send(requests);
        }
        if !self.waiting.is_empty() {
            if !self.waited {
                self.waited = true;
                if let Some(wait) = self.patience.next_wait() {
                    return Step::Wait(wait);
                }
                for p in std::mem::take(&mut self.waiting) {
                    let (_, server, moving) = &self.cmds[p];
                    let (from, keys) = moving.as_ref().map(|(f, k)| (*f, &k[..])).unwrap_or((0, &[]));
                    let key = keys.first().map(|k| &k[..]).unwrap_or(b"");
                    self.slots[p] = Some(Err(still_moving(self.core, key, from, *server)));
                }
            } else {
                self.waited = false;
                let mut waiting = std::mem::take(&mut self.waiting);
                waiting.sort_unstable();
                return Step::Send(self.requests(&waiting, true, false));
            }
        }
        let slots = std::mem::take(&mut self.slots);
        Step::Done(Ok(slots
            .into_iter()
            .map(|s| s.unwrap_or_else(|| Err(crate::error::client_error("no reply".to_string()))))
            .collect()))
    }
}

/// A guarded Lua script: runs `code` only if every key is on this server
/// (mredis's `Script` during a migration).
pub(crate) fn guarded_script(code: &str) -> String {
    let (shebang, body) = match code.strip_prefix("#!") {
        Some(_) => match code.split_once('\n') {
            Some((first, rest)) => (format!("{first}\n"), rest),
            None => (format!("{code}\n"), ""),
        },
        None => (String::new(), code),
    };
    format!(
        "{shebang}local __mredis_here = 0\n\
         for i = 1, #KEYS do __mredis_here = __mredis_here + redis.call('EXISTS', KEYS[i]) end\n\
         if __mredis_here == 0 then return redis.error_reply('{ABSENT} the keys are not on this server') end\n\
         if redis.call('EXISTS', '{MARKS}') == 1 then for i = 1, #KEYS do \
         if redis.call('HEXISTS', '{MARKS}', KEYS[i]) == 1 then \
         return redis.error_reply('{MOVING} a rebalance is moving this key') end end end\n\
         if __mredis_here < #KEYS then return redis.error_reply('{PARTIAL} only some keys are on this server') end\n\
         return (function()\n{body}\nend)()\n"
    )
}
