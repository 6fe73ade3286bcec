//! Every operation of the clients as a sans-I/O step machine.
//!
//! A machine says which commands to send to which servers ([`Step::Send`]),
//! reads their replies, and says what to send next or what the result is
//! ([`Step::Done`]). It does no I/O. The sync client and the async client
//! each have one driver (`drive`) that carries a machine's requests over
//! their connections; that is the only place the two differ. Routed
//! commands ([`Routed`]), fan-outs ([`FanOut`]) and the migration machines
//! ([`crate::migration`]) are all driven the same way.

use std::borrow::Cow;
use std::time::Duration;

use redis::{Arg, Cmd, RedisError, RedisResult, Value};

use crate::error::client_error;
use crate::per_server::{FanOutError, PerServer};
use crate::routing::{Topology, args_of, command_name};

/// Requests to servers: each a list of commands sent as one pipeline; its
/// reply is the list of replies (error replies kept as values). Commands
/// the caller already holds are borrowed, not copied.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub(crate) server: usize,
    pub(crate) cmds: Cmds<'a>,
    /// A one-command request that blocks on the server (BLPOP, XREAD
    /// BLOCK, WAIT, ...) and for how long (`ZERO`: until answered), from
    /// the command table ([`block_of`]). The drivers give it a connection
    /// of its own and a deadline of the block time plus the response
    /// timeout (none for `ZERO`).
    pub(crate) block: Option<Duration>,
}

/// A request's commands: a list (borrowed or owned), or a redis-rs
/// pipeline the caller built (a fleet pipeline's share of one server), which
/// the async driver hands to the multiplexed connection as it is.
#[derive(Debug)]
pub(crate) enum Cmds<'a> {
    List(Cow<'a, [Cmd]>),
    Pipeline(&'a redis::Pipeline),
}

impl<'a> Cmds<'a> {
    /// How many commands.
    pub(crate) fn len(&self) -> usize {
        match self {
            Cmds::List(list) => list.len(),
            Cmds::Pipeline(pipe) => pipe.len(),
        }
    }

    /// The commands in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Cmd> + '_ {
        let (list, pipe) = match self {
            Cmds::List(list) => (Some(list.iter()), None),
            Cmds::Pipeline(pipe) => (None, Some(pipe.cmd_iter())),
        };
        list.into_iter().flatten().chain(pipe.into_iter().flatten())
    }

    /// The command of a one-command request.
    pub(crate) fn single(&self) -> Option<&Cmd> {
        let mut all = self.iter();
        match (all.next(), all.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }

    /// The list, owned from here on (a pipeline's commands copied once),
    /// to change.
    pub(crate) fn to_mut(&mut self) -> &mut Vec<Cmd> {
        if let Cmds::Pipeline(pipe) = self {
            *self = Cmds::List(Cow::Owned(pipe.cmd_iter().cloned().collect()));
        }
        match self {
            Cmds::List(list) => list.to_mut(),
            Cmds::Pipeline(_) => unreachable!("made a list above"),
        }
    }

    /// The commands with nothing borrowed.
    pub(crate) fn into_owned(self) -> Cmds<'static> {
        Cmds::List(Cow::Owned(match self {
            Cmds::List(list) => list.into_owned(),
            Cmds::Pipeline(pipe) => pipe.cmd_iter().cloned().collect(),
        }))
    }

    /// The same commands, borrowed.
    pub(crate) fn borrowed(&self) -> Cmds<'_> {
        match self {
            Cmds::List(list) => Cmds::List(Cow::Borrowed(&list[..])),
            Cmds::Pipeline(pipe) => Cmds::Pipeline(pipe),
        }
    }

    /// One borrowed command.
    pub(crate) fn one(cmd: &'a Cmd) -> Self {
        Cmds::List(Cow::Borrowed(std::slice::from_ref(cmd)))
    }

    /// The commands packed one after another, as one pipeline.
    pub(crate) fn packed(&self) -> Vec<u8> {
        match self {
            Cmds::Pipeline(pipe) => pipe.get_packed_pipeline(),
            Cmds::List(list) => match &list[..] {
                [one] => one.get_packed_command(),
                all => {
                    let mut out = Vec::new();
                    for c in all {
                        c.write_packed_command(&mut out);
                    }
                    out
                }
            },
        }
    }
}

impl From<Vec<Cmd>> for Cmds<'_> {
    fn from(cmds: Vec<Cmd>) -> Self {
        Cmds::List(Cow::Owned(cmds))
    }
}

impl<'a> From<&'a [Cmd]> for Cmds<'a> {
    fn from(cmds: &'a [Cmd]) -> Self {
        Cmds::List(Cow::Borrowed(cmds))
    }
}

/// How long `cmd` blocks on the server, by the command table's `block`
/// field: `None` for a command that does not block (most), `Some(ZERO)`
/// for one that blocks until answered.
pub(crate) fn block_of(cmd: &Cmd) -> Option<Duration> {
    let mut args = cmd.args_iter();
    let Some(Arg::Simple(name)) = args.next() else {
        return None;
    };
    // Every blocking command starts with B (BLPOP, BZPOPMIN, ...), X
    // (XREAD, XREADGROUP) or W (WAIT, WAITAOF): the table is read only
    // for those, so GET and SET cost one byte compare.
    if !matches!(name.first(), Some(b'B' | b'b' | b'X' | b'x' | b'W' | b'w')) {
        return None;
    }
    let name = std::str::from_utf8(name).ok()?.to_ascii_uppercase();
    let spec = crate::spec::lookup(&name, None)?;
    spec.block?;
    spec.block_time(&args_of(cmd))
}

/// The connection was closed or reset by the other end (end of file,
/// reset, broken pipe; not a timeout: after a timeout the server may still
/// be running the command).
pub(crate) fn closed(e: &RedisError) -> bool {
    use std::io::ErrorKind as K;
    if e.is_timeout() || e.is_connection_refusal() {
        return false;
    }
    let io_kind = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    e.is_connection_dropped()
        || matches!(
            io_kind,
            Some(K::BrokenPipe | K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::NotConnected)
        )
}

/// The command is read-only by the table (`access = "read"`) and does not
/// block: running it twice changes nothing.
pub(crate) fn read_only(cmd: &Cmd) -> bool {
    let mut args = cmd.args_iter();
    let Some(Arg::Simple(name)) = args.next() else {
        return false;
    };
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    let sub = match args.next() {
        Some(Arg::Simple(s)) => std::str::from_utf8(s).ok(),
        _ => None,
    };
    let name = if name.bytes().any(|b| b.is_ascii_lowercase()) {
        Cow::Owned(name.to_ascii_uppercase())
    } else {
        Cow::Borrowed(name)
    };
    crate::spec::lookup(&name, sub).is_some_and(|spec| spec.access == crate::spec::Access::Read && spec.block.is_none())
}

/// What a machine wants next.
pub(crate) enum Step<'a, T> {
    Send(Vec<Request<'a>>),
    /// Nothing to send for this long, then `next` with no replies (a key
    /// a rebalance is moving this moment).
    Wait(Duration),
    Done(RedisResult<T>),
}

impl<T> Step<'_, T> {
    /// The same step with nothing borrowed, so a machine that keeps a
    /// sub-machine can store it while the sub-machine's requests are out.
    pub(crate) fn into_owned(self) -> Step<'static, T> {
        match self {
            Step::Done(result) => Step::Done(result),
            Step::Wait(d) => Step::Wait(d),
            Step::Send(requests) => Step::Send(
                requests
                    .into_iter()
                    .map(|r| Request {
                        server: r.server,
                        block: r.block,
                        cmds: r.cmds.into_owned(),
                    })
                    .collect(),
            ),
        }
    }
}

/// A conversation with the servers, carried by a client's driver.
pub(crate) trait Machine {
    type Output;
    /// The first step.
    fn start(&mut self) -> Step<'_, Self::Output>;
    /// The step after the replies to the last `Send` (one per request, in
    /// request order; an I/O failure is that request's error, named).
    fn next(&mut self, replies: Vec<RedisResult<Vec<Value>>>) -> Step<'_, Self::Output>;
}

/// What became of a request on a connection the caller holds across
/// requests (a transaction's WATCH ... EXEC), once the driver applied the
/// promises every write has (see the drivers' `settle_held`).
#[derive(Debug)]
pub(crate) enum Held<T> {
    /// It ran (and, with replica acknowledgements on, replicas have it).
    Done(T),
    /// The shard's primary changed under it before anything ran (a
    /// replica's READONLY, a refused connection) and the new primary is in
    /// place: what the connection watched is gone; run it again from the
    /// start on a new connection.
    FailedOver,
}

/// The one reply of a one-command request.
pub(crate) fn one(reply: Option<RedisResult<Vec<Value>>>) -> RedisResult<Value> {
    let mut v = reply.unwrap_or_else(|| Err(client_error("no reply".to_string())))?;
    v.pop().ok_or_else(|| client_error("no reply".to_string()))
}

/// `cmd` to every server, as is.
pub(crate) fn every_server<'a>(core: &Topology, cmd: &'a Cmd) -> Vec<Request<'a>> {
    let block = block_of(cmd);
    (0..core.all())
        .map(|server| Request {
            server,
            cmds: Cmds::one(cmd),
            block,
        })
        .collect()
}

/// A command sent to every server; its output is each server's reply (an
/// error reply or an I/O failure as that server's error), for
/// [`fan_out_result`].
pub(crate) struct FanOut<'a> {
    core: &'a Topology,
    cmd: &'a Cmd,
}

impl<'a> FanOut<'a> {
    pub(crate) fn new(core: &'a Topology, cmd: &'a Cmd) -> Self {
        FanOut { core, cmd }
    }
}

impl Machine for FanOut<'_> {
    type Output = Vec<RedisResult<Value>>;

    fn start(&mut self) -> Step<'_, Self::Output> {
        if let Err(e) = self.core.check_size(self.cmd) {
            return Step::Done(Err(e));
        }
        Step::Send(every_server(self.core, self.cmd))
    }

    fn next(&mut self, replies: Vec<RedisResult<Vec<Value>>>) -> Step<'_, Self::Output> {
        Step::Done(Ok(replies.into_iter().map(|r| one(Some(r))).collect()))
    }
}

/// The result of a fan-out: one typed reply per server, or the failure
/// naming every server that failed (a failure before anything was sent,
/// such as an argument over `max_arg_size`, is the fleet's own).
pub(crate) fn fan_out_result<RV: redis::FromRedisValue>(
    core: &Topology,
    cmd: &Cmd,
    replies: RedisResult<Vec<RedisResult<Value>>>,
) -> Result<PerServer<RV>, FanOutError<RV>> {
    match replies {
        Ok(replies) => crate::per_server::collect(core, &command_name(cmd), replies),
        Err(e) => Err(FanOutError::new(
            command_name(cmd),
            PerServer::from_entries(Vec::new()),
            vec![("mredis".to_string(), e)],
        )),
    }
}
