//! How the replies of a command sent to several servers combine into the
//! one reply redis-rs code expects (the table's `reply`), and a SCAN page of
//! the fleet-wide walk.

use redis::{Cmd, RedisResult, Value};

use super::*;

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
pub(super) fn place_batch<P>(
    core: &Topology,
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

/// The servers' arrays one after the other, when every reply is an array
/// (the replies are taken; `ok` is left as it was otherwise).
pub(super) fn concat_arrays(ok: &mut Vec<(&str, Value)>) -> Option<Value> {
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
