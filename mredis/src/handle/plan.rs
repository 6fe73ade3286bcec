//! Planning a handle's command: by the table's row, or for a command the
//! table does not know by the servers' metadata.

use std::sync::Arc;

use redis::{Cmd, ErrorKind, RedisError, RedisResult, Value};

use super::*;

/// What to do with one command sent through a handle.
#[derive(Debug)]
pub(crate) enum Dispatch {
    /// Routed like an MRedis method (or, a `class = "all"` row, to every
    /// server with the replies merged by the row's `reply`).
    Run(Route),
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
pub(super) fn no_command_permission(cmd: &Cmd) -> RedisError {
    cannot(
        &crate::routing::command_name(cmd),
        "not in mredis's command table, and this user may not run COMMAND to learn where its keys are \
         (grant +command, or use MRedis::query_routed / query_all)",
    )
}

pub(super) fn cannot(command: &str, why: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "mredis: command cannot be routed",
        format!("{command}: {why}"),
    ))
}

/// The keys of a command the table does not know, from the servers'
/// metadata; None when the server must be asked (movable keys).
pub(super) fn keys_of(info: &Info, args: &[&[u8]], known: Option<Vec<Vec<u8>>>) -> Option<Vec<Vec<u8>>> {
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
pub(super) fn answered_by_any_server(cmd: &Cmd) -> bool {
    let name = crate::routing::command_name(cmd);
    name.eq_ignore_ascii_case("PING") || name.eq_ignore_ascii_case("ECHO")
}

/// Decides what to do with one command.
pub(crate) fn plan(
    core: &Topology,
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
                Route::Split(_) | Route::All(_) => Err(cannot("WATCH", "keys on several servers")),
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
            return Ok(Dispatch::Run(Route::All(info.response)));
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
pub(super) fn plan_by_table(
    core: &Topology,
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
            return Ok(Dispatch::Run(Route::All(
                entry.reply.unwrap_or(crate::Reply::PerServer).into(),
            )));
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

/// What redis-rs's own connections answer to nothing to send (an empty
/// `Cmd` or `Pipeline`).
pub(super) fn empty_command() -> RedisError {
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
pub(super) fn join_transaction(
    core: &Topology,
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

/// The arguments of exactly one packed command, borrowed (None when the
/// bytes are not one well-formed command).
pub(crate) fn parse_args(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    fn line(bytes: &mut &[u8], prefix: u8) -> Option<usize> {
        if bytes.first() != Some(&prefix) {
            return None;
        }
        let end = bytes.iter().position(|&b| b == b'\r')?;
        if bytes.get(end + 1) != Some(&b'\n') {
            return None;
        }
        let n = std::str::from_utf8(&bytes[1..end]).ok()?.parse().ok()?;
        *bytes = &bytes[end + 2..];
        Some(n)
    }
    let argc = line(&mut bytes, b'*')?;
    let mut out = Vec::with_capacity(argc.min(1024));
    for _ in 0..argc {
        let len = line(&mut bytes, b'$')?;
        if bytes.len() < len.checked_add(2)? {
            return None;
        }
        out.push(&bytes[..len]);
        bytes = &bytes[len + 2..];
    }
    (bytes.is_empty() && !out.is_empty()).then_some(out)
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

/// A command refused before it was sent, as the reply in its pipeline
/// slot: its code (`ERR` if it has none) and its text in words.
pub(crate) fn refusal_value(e: &RedisError) -> Value {
    let code = e.code().unwrap_or("ERR");
    let text = crate::error::error_text(e).replace(['\r', '\n'], " ");
    let detail = text.strip_prefix(code).map(str::trim_start).unwrap_or(&text);
    redis::parse_redis_value(format!("-{code} {detail}\r\n").as_bytes())
        .unwrap_or_else(|_| Value::SimpleString(format!("{code} {detail}")))
}

/// Is this pipeline MULTI ... EXEC?
pub(crate) fn is_atomic(cmds: &[Cmd]) -> bool {
    let name = |c: &Cmd| crate::routing::command_name(c).to_ascii_uppercase();
    cmds.len() >= 2 && name(&cmds[0]) == "MULTI" && name(&cmds[cmds.len() - 1]) == "EXEC"
}
