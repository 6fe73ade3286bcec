//! A handle pipeline's replies put back in call order, and a SCAN page of
//! the fleet-wide walk.

use redis::{Cmd, RedisResult, Value};

use super::*;

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
