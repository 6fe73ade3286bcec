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
//!   on that server);
//! - a command that cannot be routed (no key and no policy, or omitted from
//!   mredis with a reason) is an error naming it.
//!
//! [`MRedis`](crate::MRedis) keeps its compile-time guarantees: omitted
//! commands do not exist there.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use redis::{Cmd, ConnectionLike, ErrorKind, RedisError, RedisResult, Value};

use crate::error::client_error;
use crate::exec::{FanOut, Machine, Request, Routed, Step};
use crate::routing::{Core, Merge, Route};
use crate::spec::RouteClass;

/// How a server-wide command's replies combine (Redis's response policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Response {
    None,
    AggSum,
    AllSucceeded,
    OneSucceeded,
    AggAnd,
    AggOr,
    AggMin,
    AggMax,
    Special,
    /// Arrays concatenated, text joined line by line (the table's `concat`).
    Concat,
    /// The first reply that is not nil (the table's `first`).
    First,
    /// Name/count pairs, counts added up by name (the table's `sum-pairs`).
    SumPairs,
    /// Every server must answer alike (the table's `same`).
    Same,
}

impl From<crate::Reply> for Response {
    fn from(reply: crate::Reply) -> Response {
        use crate::Reply;
        match reply {
            Reply::Sum => Response::AggSum,
            Reply::Concat => Response::Concat,
            Reply::AllOk => Response::AllSucceeded,
            Reply::OneOk => Response::OneSucceeded,
            Reply::First => Response::First,
            Reply::And => Response::AggAnd,
            Reply::SumPairs => Response::SumPairs,
            Reply::Same => Response::Same,
            Reply::PerServer => Response::Special,
        }
    }
}

/// What the server says about one command.
#[derive(Debug, Clone)]
struct Info {
    first: i64,
    last: i64,
    step: i64,
    movable: bool,
    all_servers: bool,
    response: Response,
    has_subcommands: bool,
}

/// The servers' `COMMAND` output, by lower-case name (`config|get`).
#[derive(Debug, Default)]
pub(crate) struct CommandBook {
    infos: HashMap<String, Info>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        _ => 0,
    }
}

impl CommandBook {
    pub(crate) fn parse(reply: &Value) -> CommandBook {
        let mut book = CommandBook::default();
        if let Value::Array(entries) = reply {
            for e in entries {
                book.add(e);
            }
        }
        book
    }

    fn add(&mut self, entry: &Value) {
        let Value::Array(f) = entry else { return };
        if f.len() < 6 {
            return;
        }
        let Some(name) = text(&f[0]) else { return };
        let flags: Vec<String> = match &f[2] {
            Value::Array(items) | Value::Set(items) => items.iter().filter_map(text).collect(),
            _ => Vec::new(),
        };
        let tips: Vec<String> = match f.get(7) {
            Some(Value::Array(items)) => items.iter().filter_map(text).collect(),
            _ => Vec::new(),
        };
        let subcommands = match f.get(9) {
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        let response = tips
            .iter()
            .find_map(|t| t.strip_prefix("response_policy:"))
            .map(response_of)
            .unwrap_or(Response::None);
        let all_servers = tips
            .iter()
            .any(|t| t == "request_policy:all_shards" || t == "request_policy:all_nodes");
        self.infos.insert(
            name.to_ascii_lowercase(),
            Info {
                first: int(&f[3]),
                last: int(&f[4]),
                step: int(&f[5]),
                movable: flags.iter().any(|x| x == "movablekeys"),
                all_servers,
                response,
                has_subcommands: !subcommands.is_empty(),
            },
        );
        for sub in &subcommands {
            self.add(sub);
        }
    }
}

fn response_of(policy: &str) -> Response {
    match policy {
        "none" => Response::None,
        "agg_sum" => Response::AggSum,
        "all_succeeded" => Response::AllSucceeded,
        "one_succeeded" => Response::OneSucceeded,
        "agg_logical_and" => Response::AggAnd,
        "agg_logical_or" => Response::AggOr,
        "agg_min" => Response::AggMin,
        "agg_max" => Response::AggMax,
        _ => Response::Special,
    }
}

/// What to do with one command sent through a handle.
#[derive(Debug)]
pub(crate) enum Dispatch {
    /// Routed like an MRedis method.
    Run(Route),
    /// Every server, replies merged by `response`.
    All(Response),
    /// One page of a fleet-wide SCAN: server, that server's cursor.
    Scan(usize, u64),
    /// WATCH on the keys' server.
    Watch(usize),
    /// UNWATCH (or DISCARD): on the watched server, if any.
    Unwatch,
    /// Ask a server for the keys (`COMMAND GETKEYS`), then plan again.
    GetKeys,
    /// Not in the command table: fetch the servers' `COMMAND` metadata,
    /// then plan again.
    Describe,
}

/// A command the table does not know, for a user who may not read the
/// servers' COMMAND metadata.
fn no_command_permission(cmd: &Cmd) -> RedisError {
    cannot(
        &crate::routing::command_name(cmd),
        "not in mredis's command table, and this user may not run COMMAND to learn where its keys are \
         (grant +command, or use MRedis::query_routed / query_all)",
    )
}

fn cannot(command: &str, why: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "mredis: command cannot be routed",
        format!("{command}: {why}"),
    ))
}

/// The keys of a command the table does not know, from the servers'
/// metadata; None when the server must be asked (movable keys).
fn keys_of(info: &Info, args: &[&[u8]], known: Option<Vec<Vec<u8>>>) -> Option<Vec<Vec<u8>>> {
    if info.movable {
        return known;
    }
    if info.first <= 0 || info.step <= 0 {
        return Some(Vec::new());
    }
    let last = if info.last < 0 {
        args.len() as i64 + info.last
    } else {
        info.last.min(args.len() as i64 - 1)
    };
    let mut out = Vec::new();
    let mut i = info.first;
    while i <= last && (i as usize) < args.len() {
        out.push(args[i as usize].to_vec());
        i += info.step;
    }
    Some(out)
}

/// Keyless commands any server answers alike (PING, ECHO): in a
/// transaction they run on the transaction's server.
fn answered_by_any_server(cmd: &Cmd) -> bool {
    let name = crate::routing::command_name(cmd);
    name.eq_ignore_ascii_case("PING") || name.eq_ignore_ascii_case("ECHO")
}

/// Decides what to do with one command.
pub(crate) fn plan(
    core: &Core,
    book: Option<&CommandBook>,
    cmd: &Cmd,
    known_keys: Option<Vec<Vec<u8>>>,
) -> RedisResult<Dispatch> {
    let args = crate::routing::args_of(cmd);
    let Some(first) = args.first() else {
        return Err(client_error("an empty command".to_string()));
    };
    let name = String::from_utf8_lossy(first).to_ascii_uppercase();
    match name.as_str() {
        "WATCH" => {
            let keys: Vec<Vec<u8>> = args[1..].iter().map(|k| k.to_vec()).collect();
            return match core.route_colocated("WATCH", &keys)? {
                Route::One { server, moves } if moves.is_empty() => Ok(Dispatch::Watch(server)),
                Route::One { .. } => Err(crate::migration::try_again(core, &keys[0], 0, 0)),
                Route::Split(_) => Err(cannot("WATCH", "keys on several servers")),
            };
        }
        "UNWATCH" | "DISCARD" => return Ok(Dispatch::Unwatch),
        "SCAN" => {
            // The fleet cursor is server + n * that server's cursor.
            let cursor: u64 = args
                .get(1)
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| cannot("SCAN", "the cursor is not a number"))?;
            // The fleet cursor is step + steps * that step's server cursor,
            // over the servers of the fleet-wide walk (both configurations'
            // while migrating).
            let n = crate::scan::fleet_walk(core).len().max(1) as u64;
            return Ok(Dispatch::Scan((cursor % n) as usize, cursor / n));
        }
        "MULTI" | "EXEC" => {
            return Err(cannot(
                &name,
                "send transactions as an atomic pipeline (redis::pipe().atomic() or redis::transaction), \
                 whose keys must share a server",
            ));
        }
        "SELECT" => return Err(cannot("SELECT", "put the database in each server's URL")),
        _ => {}
    }
    let sub = args.get(1).map(|s| String::from_utf8_lossy(s).into_owned());
    if let Some(entry) = crate::spec::lookup(&name, sub.as_deref()) {
        return plan_by_table(core, entry, cmd, &name, &args, known_keys);
    }
    // Not in the table (a module's command): the servers' COMMAND metadata.
    let Some(book) = book else {
        return Ok(Dispatch::Describe);
    };
    let lower = name.to_ascii_lowercase();
    let top = book.infos.get(&lower);
    let info = match (top, &sub) {
        (Some(t), Some(s)) if t.has_subcommands => {
            book.infos.get(&format!("{lower}|{}", s.to_ascii_lowercase())).or(top)
        }
        (t, _) => t,
    };
    let Some(info) = info else {
        return Err(cannot(
            &name,
            "not in mredis's command table nor in the servers' COMMAND table",
        ));
    };
    let Some(keys) = keys_of(info, &args, known_keys) else {
        return Ok(Dispatch::GetKeys);
    };
    if keys.is_empty() {
        if info.all_servers {
            return Ok(Dispatch::All(info.response));
        }
        return Err(cannot(
            &name,
            "not in mredis's command table and without a key: it is not known which server, or whether \
             every server, should run it; use MRedis::query_all (one reply per server) or MRedis::query_routed (a key's server)",
        ));
    }
    Ok(Dispatch::Run(core.route_colocated(&name, &keys)?))
}

/// Decides what to do with a command of the table, by its row alone: the
/// same class, keys, split and merge as its generated method.
fn plan_by_table(
    core: &Core,
    entry: &crate::CommandSpec,
    cmd: &Cmd,
    name: &str,
    args: &[&[u8]],
    known_keys: Option<Vec<Vec<u8>>>,
) -> RedisResult<Dispatch> {
    // HSCAN, SSCAN and ZSCAN are omitted from MRedis's methods only because
    // MRedis has iterators in their place; their cursor belongs to one key,
    // on that key's server, so here they are key commands like any other
    // (redis-rs's `hscan`/`sscan`/`zscan` iterators send them).
    let cursor_of_one_key = matches!(name, "HSCAN" | "SSCAN" | "ZSCAN");
    match entry.class {
        RouteClass::Omitted if !cursor_of_one_key => {
            return Err(cannot(
                entry.name,
                entry.reason.unwrap_or("not supported across servers"),
            ));
        }
        RouteClass::Multi => {
            // Split and merged as the generated method does (the table's
            // `stride` and `merge`).
            let (stride, merge) = entry
                .methods
                .iter()
                .find_map(|m| Some((m.stride?, m.merge?)))
                .unwrap_or((1, Merge::Ordered));
            return Ok(Dispatch::Run(core.route_split(cmd, stride, merge)));
        }
        RouteClass::All => {
            // Every server, as the generated method; the table says how the
            // replies combine into the one reply redis-rs code expects.
            return Ok(Dispatch::All(entry.reply.unwrap_or(crate::Reply::PerServer).into()));
        }
        _ => {}
    }
    let keys: Vec<Vec<u8>> = match known_keys {
        Some(keys) => keys,
        None => match entry.keys(args) {
            crate::CommandKeys::Known(keys) => keys.iter().map(|k| k.to_vec()).collect(),
            crate::CommandKeys::AskServer => return Ok(Dispatch::GetKeys),
            crate::CommandKeys::BadCount => {
                return Err(cannot(
                    name,
                    "its number of keys is not a number, or names more keys than it has arguments",
                ));
            }
        },
    };
    if keys.is_empty() {
        return Err(cannot(
            name,
            "no key to route by (a keyless script or function needs MRedis::query_routed or query_all)",
        ));
    }
    Ok(Dispatch::Run(core.route_colocated(name, &keys)?))
}

/// Merges every server's reply to a server-wide command into one.
pub(crate) fn merge_all(
    command: &str,
    response: Response,
    names: &[&str],
    replies: Vec<RedisResult<Value>>,
) -> RedisResult<Value> {
    let mut failure = crate::error::Failure::new(command);
    let mut ok = Vec::with_capacity(replies.len());
    for (name, r) in names.iter().zip(replies) {
        match r.and_then(Value::extract_error) {
            Ok(v) => {
                failure.succeeded(name, 1);
                ok.push((*name, v));
            }
            Err(e) => failure.failed(name, e),
        }
    }
    if response == Response::OneSucceeded {
        if let Some((_, v)) = ok.into_iter().next() {
            return Ok(v);
        }
        failure.into_result()?;
        return Ok(Value::Nil);
    }
    failure.into_result()?;
    let bad = |v: &Value| client_error(format!("{command}: cannot merge the reply {v:?}"));
    match response {
        Response::AggSum | Response::AggMin | Response::AggMax => {
            let mut acc: Option<i64> = None;
            for (_, v) in &ok {
                let Value::Int(n) = v else { return Err(bad(v)) };
                acc = Some(match (acc, response) {
                    (None, _) => *n,
                    (Some(a), Response::AggSum) => a + n,
                    (Some(a), Response::AggMin) => a.min(*n),
                    (Some(a), _) => a.max(*n),
                });
            }
            Ok(Value::Int(acc.unwrap_or(0)))
        }
        Response::AggAnd | Response::AggOr => {
            let and = response == Response::AggAnd;
            let mut acc: Option<Vec<i64>> = None;
            for (_, v) in &ok {
                let items: Vec<i64> = match v {
                    Value::Array(items) => items.iter().map(int).collect(),
                    Value::Int(n) => vec![*n],
                    other => return Err(bad(other)),
                };
                acc = Some(match acc {
                    None => items,
                    Some(a) => a
                        .iter()
                        .zip(&items)
                        .map(|(x, y)| {
                            if and {
                                (*x != 0 && *y != 0) as i64
                            } else {
                                (*x != 0 || *y != 0) as i64
                            }
                        })
                        .collect(),
                });
            }
            let acc = acc.unwrap_or_default();
            Ok(match ok.first().map(|(_, v)| v) {
                Some(Value::Int(_)) => Value::Int(acc.first().copied().unwrap_or(0)),
                _ => Value::Array(acc.into_iter().map(Value::Int).collect()),
            })
        }
        Response::AllSucceeded => Ok(ok.into_iter().next().map(|(_, v)| v).unwrap_or(Value::Okay)),
        Response::Special => Ok(Value::Map(
            ok.into_iter()
                .map(|(name, v)| (Value::BulkString(name.as_bytes().to_vec()), v))
                .collect(),
        )),
        Response::Concat => {
            if let Some(all) = concat_arrays(&mut ok) {
                return Ok(all);
            }
            // Text (CLIENT LIST): each server's lines, one after the other.
            let mut text: Vec<u8> = Vec::new();
            for (_, v) in &ok {
                let part: &[u8] = match v {
                    Value::BulkString(b) => b,
                    Value::SimpleString(t) => t.as_bytes(),
                    Value::VerbatimString { text: t, .. } => t.as_bytes(),
                    other => return Err(bad(other)),
                };
                if !text.is_empty() && !text.ends_with(b"\n") && !part.is_empty() {
                    text.push(b'\n');
                }
                text.extend_from_slice(part);
            }
            Ok(Value::BulkString(text))
        }
        Response::First => Ok(ok
            .into_iter()
            .map(|(_, v)| v)
            .find(|v| *v != Value::Nil)
            .unwrap_or(Value::Nil)),
        Response::SumPairs => {
            // [name, count, name, count, ...] (or a map in RESP3), in the
            // order the names first appear.
            let mut sums: Vec<(Value, i64)> = Vec::new();
            for (_, v) in &ok {
                let pairs: Vec<(&Value, &Value)> = match v {
                    Value::Array(items) if items.len() % 2 == 0 => items.chunks(2).map(|p| (&p[0], &p[1])).collect(),
                    Value::Map(entries) => entries.iter().map(|(k, n)| (k, n)).collect(),
                    other => return Err(bad(other)),
                };
                for (name, n) in pairs {
                    let Value::Int(n) = n else { return Err(bad(v)) };
                    match sums.iter_mut().find(|(k, _)| k == name) {
                        Some((_, total)) => *total += n,
                        None => sums.push((name.clone(), *n)),
                    }
                }
            }
            Ok(Value::Array(
                sums.into_iter().flat_map(|(name, n)| [name, Value::Int(n)]).collect(),
            ))
        }
        Response::Same => {
            let first = ok.first().map(|(_, v)| v.clone()).unwrap_or(Value::Nil);
            match ok.iter().find(|(_, v)| *v != first) {
                None => Ok(first),
                Some((other, _)) => Err(client_error(format!(
                    "{command}: {} and {other} answered differently; use MRedis::query_all for one reply per \
                     server",
                    ok[0].0
                ))),
            }
        }
        Response::None | Response::OneSucceeded => {
            // Arrays (KEYS, ...) are concatenated; anything else must agree.
            if let Some(all) = concat_arrays(&mut ok) {
                return Ok(all);
            }
            let first = ok.first().map(|(_, v)| v.clone()).unwrap_or(Value::Nil);
            if ok.iter().all(|(_, v)| *v == first) {
                Ok(first)
            } else {
                Err(client_error(format!(
                    "{command}: the servers answered differently and the command has no rule to merge them; \
                     use MRedis::query_all for one reply per server"
                )))
            }
        }
    }
}

/// Puts each server's replies of a batch at their commands' places (after
/// the replies already in `values`), sync and async alike; a server that
/// failed fails the pipeline, naming it and the servers that ran theirs.
/// `per` holds each server's share: the server, its commands (packed, or
/// as a pipeline), and their places in the pipeline.
fn place_batch<P>(
    core: &Core,
    per: &[(usize, P, Vec<usize>)],
    replies: Vec<RedisResult<Vec<Value>>>,
    values: &mut Vec<Value>,
) -> RedisResult<()> {
    let start = values.len();
    let first = per.iter().flat_map(|p| p.2.iter()).min().copied().unwrap_or(0);
    let total: usize = per.iter().map(|p| p.2.len()).sum();
    values.extend(std::iter::repeat_n(Value::Nil, total));
    let mut failure = crate::error::Failure::new("pipeline");
    for ((server, _, ats), reply) in per.iter().zip(replies) {
        match reply {
            Ok(vs) => {
                failure.succeeded(core.name(*server), ats.len());
                for (at, v) in ats.iter().zip(vs) {
                    values[start + (at - first)] = v;
                }
            }
            Err(e) => failure.failed(core.name(*server), e),
        }
    }
    failure.into_result()
}

/// A step with nothing borrowed (the sub-machine a pipeline keeps can
/// then be stored while its requests are out).
fn owned<T>(step: Step<'_, T>) -> Step<'static, T> {
    match step {
        Step::Done(result) => Step::Done(result),
        Step::Send(requests) => Step::Send(
            requests
                .into_iter()
                .map(|r| Request {
                    server: r.server,
                    cmds: Cow::Owned(r.cmds.into_owned()),
                })
                .collect(),
        ),
    }
}

/// One planned command of a handle as a machine (WATCH and UNWATCH, which
/// need the sync handle's own connection, are the handles' own).
pub(crate) enum Planned<'a> {
    /// Routed like the generated method.
    Routed(Routed<'a>),
    /// Every server, the replies merged into one.
    All {
        fan: FanOut<'a>,
        response: Response,
        core: &'a Core,
        cmd: &'a Cmd,
    },
    /// One page of the fleet-wide SCAN.
    Scan {
        core: &'a Core,
        step: usize,
        steps: usize,
        server: usize,
        phase: crate::scan::Phase,
        scan: Option<Cmd>,
    },
    /// Decided without asking a server.
    Now(Option<RedisResult<Value>>),
}

impl<'a> Planned<'a> {
    pub(crate) fn new(core: &'a Core, plan: &'a Dispatch, cmd: &'a Cmd) -> Self {
        match plan {
            Dispatch::Run(route) => Planned::Routed(Routed::new(core, route, cmd)),
            Dispatch::All(response) => Planned::All {
                fan: FanOut::new(core, cmd),
                response: *response,
                core,
                cmd,
            },
            Dispatch::Scan(step, cursor) => {
                let walk = crate::scan::fleet_walk(core);
                match walk.get(*step) {
                    Some(&(server, phase)) => Planned::Scan {
                        core,
                        step: *step,
                        steps: walk.len(),
                        server,
                        phase,
                        scan: Some(scan_cmd(cmd, *cursor)),
                    },
                    None => Planned::Now(Some(Err(cannot("SCAN", "this cursor was not made by this fleet")))),
                }
            }
            Dispatch::Watch(_) => Planned::Now(Some(Err(cannot(
                "WATCH",
                "needs a connection of its own; use the sync handle (MRedis::get_connection) or MRedis::transaction",
            )))),
            // Nothing watched on this handle (the sync handle runs its own).
            Dispatch::Unwatch => Planned::Now(Some(Ok(Value::Okay))),
            Dispatch::GetKeys | Dispatch::Describe => Planned::Now(Some(Err(cannot(
                &crate::routing::command_name(cmd),
                "its keys could not be found",
            )))),
        }
    }
}

impl Machine for Planned<'_> {
    type Output = Value;

    fn start(&mut self) -> Step<'_, Value> {
        match self {
            Planned::Routed(m) => m.start(),
            Planned::All { fan, .. } => match fan.start() {
                Step::Done(Err(e)) => Step::Done(Err(e)),
                Step::Done(Ok(_)) => Step::Done(Err(client_error("no server".to_string()))),
                Step::Send(requests) => Step::Send(requests),
            },
            Planned::Scan { server, scan, .. } => Step::Send(vec![Request {
                server: *server,
                cmds: Cow::Owned(scan.take().into_iter().collect()),
            }]),
            Planned::Now(result) => Step::Done(
                result
                    .take()
                    .unwrap_or_else(|| Err(client_error("no reply".to_string()))),
            ),
        }
    }

    fn next(&mut self, replies: Vec<RedisResult<Vec<Value>>>) -> Step<'_, Value> {
        match self {
            Planned::Routed(m) => m.next(replies),
            Planned::All {
                fan,
                response,
                core,
                cmd,
            } => {
                let replies = match fan.next(replies) {
                    Step::Done(r) => r,
                    Step::Send(_) => Err(client_error("unexpected request".to_string())),
                };
                let names: Vec<&str> = (0..core.all()).map(|i| core.name(i)).collect();
                Step::Done(
                    replies
                        .and_then(|replies| merge_all(&crate::routing::command_name(cmd), *response, &names, replies)),
                )
            }
            Planned::Scan {
                core,
                step,
                steps,
                server,
                phase,
                ..
            } => {
                let (core, server, phase) = (*core, *server, *phase);
                Step::Done(crate::exec::one(replies.into_iter().next()).and_then(|reply| {
                    scan_page(*step, *steps, reply, |key| {
                        crate::scan::on_walk(core, server, phase, key, None)
                    })
                }))
            }
            Planned::Now(result) => Step::Done(
                result
                    .take()
                    .unwrap_or_else(|| Err(client_error("no reply".to_string()))),
            ),
        }
    }
}

/// A handle's pipeline (not a transaction), every command planned: in call
/// order, runs of commands that each go to one server (nothing moving) are
/// sent together, one pipeline per server, all servers at once; any other
/// command runs on its own between them, its server error reply in its
/// place. A server that fails a batch fails the pipeline, naming it.
pub(crate) struct Batch<'a> {
    core: &'a Core,
    cmds: &'a [Cmd],
    plans: &'a [Dispatch],
    values: Vec<Value>,
    next: usize,
    state: BatchState<'a>,
}

enum BatchState<'a> {
    Idle,
    /// A batch is out: each server's places in the pipeline.
    Sent(Vec<(usize, (), Vec<usize>)>),
    /// A command of its own is out.
    One(Box<Planned<'a>>),
}

impl<'a> Batch<'a> {
    pub(crate) fn new(core: &'a Core, cmds: &'a [Cmd], plans: &'a [Dispatch]) -> Self {
        Batch {
            core,
            cmds,
            plans,
            values: Vec::with_capacity(cmds.len()),
            next: 0,
            state: BatchState::Idle,
        }
    }

    fn advance(&mut self) -> Step<'static, Vec<Value>> {
        loop {
            if self.next >= self.cmds.len() {
                self.state = BatchState::Idle;
                return Step::Done(Ok(std::mem::take(&mut self.values)));
            }
            let mut per: Vec<(usize, (), Vec<usize>)> = Vec::new();
            let mut j = self.next;
            while let Some(Dispatch::Run(Route::One { server, moves })) = self.plans.get(j)
                && moves.is_empty()
            {
                match per.iter_mut().find(|p| p.0 == *server) {
                    Some(p) => p.2.push(j),
                    None => per.push((*server, (), vec![j])),
                }
                j += 1;
            }
            if !per.is_empty() {
                let requests = per
                    .iter()
                    .map(|(server, _, ats)| Request {
                        server: *server,
                        cmds: Cow::Owned(ats.iter().map(|&at| self.cmds[at].clone()).collect()),
                    })
                    .collect();
                self.next = j;
                self.state = BatchState::Sent(per);
                return Step::Send(requests);
            }
            let at = self.next;
            let mut one = Box::new(Planned::new(self.core, &self.plans[at], &self.cmds[at]));
            match owned(one.start()) {
                Step::Send(requests) => {
                    self.state = BatchState::One(one);
                    return Step::Send(requests);
                }
                Step::Done(result) => {
                    if let Err(e) = self.place_one(result) {
                        return Step::Done(Err(e));
                    }
                }
            }
        }
    }

    /// The reply of a command run on its own; a server's error reply is
    /// kept in its place, any other failure ends the pipeline.
    fn place_one(&mut self, result: RedisResult<Value>) -> RedisResult<()> {
        let v = match result {
            Ok(v) => v,
            Err(e) => error_value(&e).ok_or(e)?,
        };
        self.values.push(v);
        self.next += 1;
        Ok(())
    }
}

impl Machine for Batch<'_> {
    type Output = Vec<Value>;

    fn start(&mut self) -> Step<'_, Vec<Value>> {
        self.advance()
    }

    fn next(&mut self, replies: Vec<RedisResult<Vec<Value>>>) -> Step<'_, Vec<Value>> {
        match std::mem::replace(&mut self.state, BatchState::Idle) {
            BatchState::Idle => Step::Done(Err(client_error("unexpected replies".to_string()))),
            BatchState::Sent(per) => {
                if let Err(e) = place_batch(self.core, &per, replies, &mut self.values) {
                    return Step::Done(Err(e));
                }
                self.advance()
            }
            BatchState::One(mut one) => match owned(one.next(replies)) {
                Step::Send(requests) => {
                    self.state = BatchState::One(one);
                    Step::Send(requests)
                }
                Step::Done(result) => match self.place_one(result) {
                    Ok(()) => self.advance(),
                    Err(e) => Step::Done(Err(e)),
                },
            },
        }
    }
}

/// The servers' arrays one after the other, when every reply is an array
/// (the replies are taken; `ok` is left as it was otherwise).
fn concat_arrays(ok: &mut Vec<(&str, Value)>) -> Option<Value> {
    if !ok.iter().all(|(_, v)| matches!(v, Value::Array(_))) {
        return None;
    }
    let mut all = Vec::new();
    for (_, v) in ok.drain(..) {
        if let Value::Array(items) = v {
            all.extend(items);
        }
    }
    Some(Value::Array(all))
}

/// A SCAN page of one server as a page of the fleet-wide walk.
/// `keep` says which keys of the page are yielded (see `scan::on_walk`).
pub(crate) fn scan_page(
    server: usize,
    n_servers: usize,
    reply: Value,
    keep: impl Fn(&[u8]) -> bool,
) -> RedisResult<Value> {
    let Value::Array(mut parts) = reply.extract_error()? else {
        return Err(client_error("unexpected SCAN reply".to_string()));
    };
    if parts.len() != 2 {
        return Err(client_error("unexpected SCAN reply".to_string()));
    }
    let mut items = parts.pop().unwrap_or(Value::Nil);
    if let Value::Array(keys) = &mut items {
        keys.retain(|k| match k {
            Value::BulkString(key) => keep(key),
            _ => true,
        });
    }
    let cursor: u64 = text(&parts[0])
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| client_error(format!("SCAN: the server's cursor {:?} is not a number", parts[0])))?;
    let n = n_servers.max(1) as u64;
    let next = if cursor != 0 {
        cursor
            .checked_mul(n)
            .and_then(|c| c.checked_add(server as u64))
            .ok_or_else(|| client_error("SCAN cursor too large to carry the server".to_string()))?
    } else if server + 1 < n_servers {
        (server + 1) as u64
    } else {
        0
    };
    Ok(Value::Array(vec![
        Value::BulkString(next.to_string().into_bytes()),
        items,
    ]))
}

/// A SCAN command for one server with that server's cursor.
pub(crate) fn scan_cmd(cmd: &Cmd, cursor: u64) -> Cmd {
    let mut out = Cmd::new();
    for (i, a) in cmd.args_iter().enumerate() {
        match (i, a) {
            (1, _) => {
                out.arg(cursor);
            }
            (_, redis::Arg::Simple(b)) => {
                out.arg(b);
            }
            _ => {}
        }
    }
    out
}

/// What redis-rs's own connections answer to nothing to send (an empty
/// `Cmd` or `Pipeline`).
fn empty_command() -> RedisError {
    RedisError::from((ErrorKind::Client, "empty command"))
}

/// The command book from the replies to `COMMAND` (the last one tried
/// first), kept for the client's later handles; None for a user who may
/// not run COMMAND; or the error.
pub(crate) fn book_from(
    cache: &std::sync::OnceLock<Arc<CommandBook>>,
    mut tried: Vec<RedisResult<Value>>,
) -> RedisResult<Option<Arc<CommandBook>>> {
    match tried.pop() {
        Some(Ok(v)) => {
            let book = Arc::new(CommandBook::parse(&v));
            Ok(Some(cache.get_or_init(|| book).clone()))
        }
        Some(Err(e)) if e.code() == Some("NOPERM") => Ok(None),
        Some(Err(e)) => Err(e),
        None => Err(client_error("no server".to_string())),
    }
}

/// Adds one command of a transaction to the transaction's server: every
/// command must be on keys of that one server.
fn join_transaction(
    core: &Core,
    target: &mut Option<(usize, Vec<crate::routing::Move>)>,
    cmd: &Cmd,
    plan: Dispatch,
) -> RedisResult<()> {
    let (server, moves) = match plan {
        Dispatch::Run(Route::One { server, moves }) => (server, moves),
        _ => {
            return Err(cannot(
                &crate::routing::command_name(cmd),
                "in a transaction, every command must be on keys of one server",
            ));
        }
    };
    match target {
        None => *target = Some((server, moves)),
        Some((s, m)) if *s == server => m.extend(moves),
        Some((s, _)) => {
            return Err(RedisError::from((
                ErrorKind::Server(redis::ServerErrorKind::CrossSlot),
                "mredis",
                format!(
                    "a transaction's commands are on keys of {} and {}; nothing was sent",
                    core.name(*s),
                    core.name(server)
                ),
            )));
        }
    }
    Ok(())
}

/// Parses packed RESP commands (what `redis::ConnectionLike` receives).
pub(crate) fn parse_packed(mut bytes: &[u8]) -> RedisResult<Vec<Cmd>> {
    fn line(bytes: &mut &[u8], prefix: u8) -> RedisResult<usize> {
        let end = bytes
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| client_error("malformed packed command".to_string()))?;
        if bytes.first() != Some(&prefix) {
            return Err(client_error("malformed packed command".to_string()));
        }
        let n = std::str::from_utf8(&bytes[1..end])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| client_error("malformed packed command".to_string()))?;
        *bytes = &bytes[end + 2..];
        Ok(n)
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let argc = line(&mut bytes, b'*')?;
        let mut cmd = Cmd::new();
        for _ in 0..argc {
            let len = line(&mut bytes, b'$')?;
            if bytes.len() < len + 2 {
                return Err(client_error("malformed packed command".to_string()));
            }
            cmd.arg(&bytes[..len]);
            bytes = &bytes[len + 2..];
        }
        out.push(cmd);
    }
    Ok(out)
}

/// `COMMAND GETKEYS` for `cmd`.
pub(crate) fn getkeys_cmd(cmd: &Cmd) -> Cmd {
    let mut c = redis::cmd("COMMAND");
    c.arg("GETKEYS");
    for a in cmd.args_iter() {
        if let redis::Arg::Simple(b) = a {
            c.arg(b);
        }
    }
    c
}

/// An error as a pipeline reply value (the server's own form), when it has
/// a code; `None` for errors that are not replies (I/O, ...).
pub(crate) fn error_value(e: &RedisError) -> Option<Value> {
    let code = e.code()?;
    let detail = e.detail().unwrap_or("").replace(['\r', '\n'], " ");
    redis::parse_redis_value(format!("-{code} {detail}\r\n").as_bytes()).ok()
}

/// Is this pipeline MULTI ... EXEC?
pub(crate) fn is_atomic(cmds: &[Cmd]) -> bool {
    let name = |c: &Cmd| crate::routing::command_name(c).to_ascii_uppercase();
    cmds.len() >= 2 && name(&cmds[0]) == "MULTI" && name(&cmds[cmds.len() - 1]) == "EXEC"
}

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
    watched: Option<(usize, redis::Connection)>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mredis::Connection")
            .field("client", &self.mr)
            .field("watching", &self.watched.as_ref().map(|(s, _)| self.mr.core().name(*s)))
            .finish()
    }
}

impl Connection {
    pub(crate) fn new(mr: crate::MRedis) -> Connection {
        Connection { mr, watched: None }
    }

    /// Plans a command: by the table; for a command the table does not
    /// know, by the servers' COMMAND metadata (fetched once per client);
    /// movable keys the table cannot read are asked of a server.
    fn plan(&self, cmd: &Cmd) -> RedisResult<Dispatch> {
        let core = self.mr.core();
        let mut book = self.mr.command_book().get().cloned();
        let mut dispatch = plan(core, book.as_deref(), cmd, None)?;
        if let Dispatch::Describe = dispatch {
            let fetched = self.describe()?.ok_or_else(|| no_command_permission(cmd))?;
            dispatch = plan(core, Some(&fetched), cmd, None)?;
            book = Some(fetched);
        }
        if let Dispatch::GetKeys = dispatch {
            let keys: Vec<Vec<u8>> = redis::from_redis_value(self.mr.value_on(0, &getkeys_cmd(cmd))?)?;
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
        Ok(match self.plan(cmd)? {
            Dispatch::Run(Route::One { server, .. }) => ("one", vec![server]),
            Dispatch::Run(Route::Split(plan)) => ("split", plan.groups.iter().map(|g| g.0).collect()),
            Dispatch::All(_) => ("all", (0..self.mr.core().all()).collect()),
            Dispatch::Scan(step, _) => ("scan", vec![step]),
            Dispatch::Watch(server) => ("watch", vec![server]),
            Dispatch::Unwatch => ("unwatch", Vec::new()),
            Dispatch::GetKeys | Dispatch::Describe => ("unplanned", Vec::new()),
        })
    }

    /// The servers' COMMAND metadata, from the first server that answers
    /// (None: this user may not run COMMAND).
    pub(crate) fn describe(&self) -> RedisResult<Option<Arc<CommandBook>>> {
        if let Some(book) = self.mr.command_book().get() {
            return Ok(Some(book.clone()));
        }
        let mut tried = Vec::new();
        for server in 0..self.mr.core().all() {
            // A command of its own, in its own span (no orphan server span
            // in traces).
            let cmd = redis::cmd("COMMAND");
            let reply = crate::telemetry::Span::command(&cmd, "metadata").run(|| self.mr.value_on(server, &cmd));
            let done = reply.is_ok();
            tried.push(reply);
            if done {
                break;
            }
        }
        book_from(self.mr.command_book(), tried)
    }

    /// Runs one command; server error replies are errors.
    fn exec(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let plan = self.plan(cmd)?;
        self.exec_plan(cmd, plan)
    }

    /// A pipeline of several commands, parsed (see `req_packed_commands`).
    /// Every command is planned before anything is sent.
    fn pipeline(&mut self, cmd: &[u8], cmds: &[Cmd], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        if is_atomic(cmds) {
            return self.atomic(cmd, cmds, offset, count);
        }
        let mut plans = Vec::with_capacity(cmds.len());
        for c in cmds {
            plans.push(self.plan(c)?);
        }
        let core = self.mr.core().clone();
        let mut values: Vec<Value> = Vec::with_capacity(cmds.len());
        let mut from = 0;
        while from < cmds.len() {
            // WATCH and UNWATCH run on this handle's own connection, in
            // their place; the commands between them are one batch.
            let to = (from..cmds.len())
                .find(|&j| matches!(plans[j], Dispatch::Watch(_) | Dispatch::Unwatch))
                .unwrap_or(cmds.len());
            if to > from {
                values.extend(self.mr.drive(Batch::new(&core, &cmds[from..to], &plans[from..to]))?);
            }
            if to < cmds.len() {
                let v = match self.watch(&cmds[to], &plans[to]) {
                    Ok(v) => v,
                    Err(e) => error_value(&e).ok_or(e)?,
                };
                values.push(v);
            }
            from = to + 1;
        }
        Ok(values.into_iter().skip(offset).take(count).collect())
    }

    /// Runs one command already planned.
    fn exec_plan(&mut self, cmd: &Cmd, plan: Dispatch) -> RedisResult<Value> {
        match plan {
            Dispatch::Run(route) => self.mr.run::<Value>(route, cmd),
            Dispatch::Watch(_) | Dispatch::Unwatch => self.watch(cmd, &plan),
            plan => {
                let core = self.mr.core().clone();
                self.mr.drive(Planned::new(&core, &plan, cmd))
            }
        }
    }

    /// WATCH (on the keys' server, on a connection this handle keeps until
    /// EXEC, UNWATCH or DISCARD) and UNWATCH.
    fn watch(&mut self, cmd: &Cmd, plan: &Dispatch) -> RedisResult<Value> {
        match *plan {
            Dispatch::Watch(server) => {
                if let Some((watching, con)) = self.watched.as_mut() {
                    if *watching != server {
                        return Err(cannot(
                            "WATCH",
                            "keys on another server than the keys already watched; watched keys must share a server",
                        ));
                    }
                    return con.req_command(cmd).and_then(Value::extract_error);
                }
                let mut con = self.mr.checkout(server)?;
                let reply = con.req_command(cmd).and_then(Value::extract_error)?;
                self.watched = Some((server, con));
                Ok(reply)
            }
            _ => match self.watched.take() {
                Some((server, mut con)) => {
                    let reply = con.req_command(cmd).and_then(Value::extract_error);
                    if reply.is_ok() {
                        self.mr.checkin(server, con);
                    }
                    reply
                }
                None => Ok(Value::Okay),
            },
        }
    }

    /// MULTI ... EXEC: the keys of every command must share a server.
    fn atomic(&mut self, bytes: &[u8], cmds: &[Cmd], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        let inner = &cmds[1..cmds.len() - 1];
        let mut target: Option<(usize, Vec<crate::routing::Move>)> = None;
        let mut keyless = false;
        for c in inner {
            if answered_by_any_server(c) {
                keyless = true;
                continue;
            }
            let plan = self.plan(c)?;
            join_transaction(self.mr.core(), &mut target, c, plan)?;
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
                    self.mr.core(),
                    &moves[0].key,
                    moves[0].from,
                    server,
                ));
            }
            let core = self.mr.core().clone();
            let value = self
                .mr
                .drive(crate::migration::One::new(&core, inner, true, server, &moves))?;
            return Ok(vec![value]);
        }
        if let Some((watching, _)) = &self.watched
            && *watching == server
            && let Some((_, mut con)) = self.watched.take()
        {
            // EXEC ends the WATCH.
            let reply = con.req_packed_commands(bytes, offset, count);
            if reply.is_ok() {
                self.mr.checkin(server, con);
            }
            return reply;
        }
        // redis-rs's own read of a transaction, so its aborted-transaction
        // error (with each queued command's error and index) is the same.
        self.mr
            .with_connection(server, |con| con.req_packed_commands(bytes, offset, count))
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        if cmd.is_empty() {
            return Err(empty_command());
        }
        let mut cmds = parse_packed(cmd)?;
        if cmds.len() != 1 {
            return Err(client_error(format!("expected one command, got {}", cmds.len())));
        }
        let cmd = cmds.pop().unwrap_or_default();
        self.exec(&cmd)
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        if cmd.is_empty() {
            return Err(empty_command());
        }
        let cmds = parse_packed(cmd)?;
        // As the client's pipelines: nothing sent if any argument is too
        // large, one span for the whole pipeline.
        for c in &cmds {
            self.mr.core().check_size(c)?;
        }
        crate::telemetry::Span::pipeline(cmds.len()).run(|| self.pipeline(cmd, &cmds, offset, count))
    }

    fn get_db(&self) -> i64 {
        0
    }

    fn check_connection(&mut self) -> bool {
        self.exec(&redis::cmd("PING")).is_ok()
    }

    fn is_open(&self) -> bool {
        true
    }
}

/// A routed connection handle over the async client, implementing
/// `redis::aio::ConnectionLike` (so `AsyncCommands`, `AsyncTypedCommands`,
/// `cmd().query_async`, `pipe().query_async`, `Script::invoke_async` work).
/// Cheap to clone; clones share the client's connections. Made by
/// [`aio::MRedis::get_connection`](crate::aio::MRedis::get_connection).
/// WATCH needs a connection of its own, which a multiplexed connection is
/// not: use the sync handle or [`MRedis::transaction`](crate::MRedis::transaction).
#[derive(Clone)]
pub struct AsyncConnection {
    mr: crate::aio::MRedis,
}

impl std::fmt::Debug for AsyncConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mredis::aio::Connection")
            .field("client", &self.mr)
            .finish()
    }
}

impl AsyncConnection {
    pub(crate) fn new(mr: crate::aio::MRedis) -> AsyncConnection {
        AsyncConnection { mr }
    }

    /// Plans a command, as the sync handle does.
    async fn plan(&self, cmd: &Cmd) -> RedisResult<Dispatch> {
        let core = self.mr.core();
        let mut book = self.mr.command_book().get().cloned();
        let mut dispatch = plan(core, book.as_deref(), cmd, None)?;
        if let Dispatch::Describe = dispatch {
            let fetched = self.describe().await?.ok_or_else(|| no_command_permission(cmd))?;
            dispatch = plan(core, Some(&fetched), cmd, None)?;
            book = Some(fetched);
        }
        if let Dispatch::GetKeys = dispatch {
            let keys: Vec<Vec<u8>> = redis::from_redis_value(self.mr.value_on(0, &getkeys_cmd(cmd)).await?)?;
            dispatch = plan(core, book.as_deref(), cmd, Some(keys))?;
        }
        Ok(dispatch)
    }

    /// The servers' COMMAND metadata, from the first server that answers
    /// (None: this user may not run COMMAND).
    pub(crate) async fn describe(&self) -> RedisResult<Option<Arc<CommandBook>>> {
        if let Some(book) = self.mr.command_book().get() {
            return Ok(Some(book.clone()));
        }
        let mut tried = Vec::new();
        for server in 0..self.mr.core().all() {
            let cmd = redis::cmd("COMMAND");
            let reply = crate::telemetry::Span::command(&cmd, "metadata")
                .run_async(self.mr.value_on(server, &cmd))
                .await;
            let done = reply.is_ok();
            tried.push(reply);
            if done {
                break;
            }
        }
        book_from(self.mr.command_book(), tried)
    }

    async fn exec(&self, cmd: &Cmd) -> RedisResult<Value> {
        let plan = self.plan(cmd).await?;
        self.exec_plan(cmd, plan).await
    }

    /// Runs one command already planned.
    async fn exec_plan(&self, cmd: &Cmd, plan: Dispatch) -> RedisResult<Value> {
        match plan {
            Dispatch::Run(route) => self.mr.run::<Value>(route, cmd).await,
            plan => {
                let core = self.mr.core().clone();
                self.mr.drive(Planned::new(&core, &plan, cmd)).await
            }
        }
    }

    async fn pipeline(&self, pipe: &redis::Pipeline, offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        let cmds: Vec<&Cmd> = pipe.cmd_iter().collect();
        let core = self.mr.core().clone();
        if pipe.is_transaction() {
            let mut target: Option<(usize, Vec<crate::routing::Move>)> = None;
            let mut keyless = false;
            for c in &cmds {
                if answered_by_any_server(c) {
                    keyless = true;
                    continue;
                }
                let plan = self.plan(c).await?;
                join_transaction(&core, &mut target, c, plan)?;
            }
            if target.is_none() && keyless {
                target = Some((0, Vec::new()));
            }
            let Some((server, moves)) = target else {
                return Ok(vec![Value::Array(vec![])]);
            };
            if !moves.is_empty() {
                let owned: Vec<Cmd> = cmds.iter().map(|c| (*c).clone()).collect();
                let value = self
                    .mr
                    .drive(crate::migration::One::new(&core, &owned, true, server, &moves))
                    .await?;
                return Ok(vec![value]);
            }
            let mut con = self.mr.connection(server)?;
            return redis::aio::ConnectionLike::req_packed_commands(&mut con, pipe, offset, count)
                .await
                .map_err(|e| crate::error::name_server(core.server(server), e));
        }
        // Every command planned before anything is sent; then one batch
        // machine, as the sync handle.
        let owned: Vec<Cmd> = cmds.iter().map(|c| (*c).clone()).collect();
        let mut plans = Vec::with_capacity(owned.len());
        for c in &owned {
            plans.push(self.plan(c).await?);
        }
        let values = self.mr.drive(Batch::new(&core, &owned, &plans)).await?;
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
            for c in cmd.cmd_iter() {
                self.mr.core().check_size(c)?;
            }
            crate::telemetry::Span::pipeline(cmd.len())
                .run_async(self.pipeline(cmd, offset, count))
                .await
        })
    }

    fn get_db(&self) -> i64 {
        0
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
