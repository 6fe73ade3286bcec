//! How the replies of a command sent to every server combine into the one
//! reply redis-rs code expects: the table's `reply` (or, for a command the
//! table does not know, the servers' response policy). Part of a route
//! ([`Route::All`](crate::routing::Route::All)), decided with it.

use redis::{RedisResult, Value};

use crate::error::client_error;

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        _ => 0,
    }
}

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
        match r.and_then(extract_errors) {
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

/// `value` with its error replies made the error, as redis-rs's
/// `Value::extract_error`, which rebuilds every array it walks: this walks
/// by reference first and rebuilds only a reply that holds an error.
#[inline]
pub(crate) fn extract_errors(value: Value) -> RedisResult<Value> {
    if holds_error(&value) {
        value.extract_error()
    } else {
        Ok(value)
    }
}

/// Whether `value` is, or holds at any depth, an error reply.
fn holds_error(value: &Value) -> bool {
    match value {
        Value::ServerError(_) => true,
        Value::Array(items) | Value::Set(items) | Value::Push { data: items, .. } => items.iter().any(holds_error),
        Value::Map(pairs) => pairs.iter().any(|(k, v)| holds_error(k) || holds_error(v)),
        Value::Attribute { data, attributes } => {
            holds_error(data) || attributes.iter().any(|(k, v)| holds_error(k) || holds_error(v))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error reply as a server sends it, parsed by redis-rs.
    fn error_reply(text: &str) -> Value {
        redis::parse_redis_value(format!("-{text}\r\n").as_bytes()).expect("an error reply parses")
    }

    #[test]
    fn extract_errors_agrees_with_redis_rs_on_every_shape() {
        let nested = |inner: Value| {
            vec![
                inner.clone(),
                Value::Array(vec![Value::Int(1), inner.clone()]),
                Value::Set(vec![Value::Nil, Value::Array(vec![inner.clone()])]),
                Value::Map(vec![(Value::Int(1), inner.clone())]),
                Value::Map(vec![(inner.clone(), Value::Int(1))]),
                Value::Attribute {
                    data: Box::new(inner.clone()),
                    attributes: vec![],
                },
                Value::Attribute {
                    data: Box::new(Value::Okay),
                    attributes: vec![(Value::Int(1), inner.clone())],
                },
            ]
        };
        let error = error_reply("WRONGTYPE Operation against a key holding the wrong kind of value");
        for shape in nested(error) {
            let ours = extract_errors(shape.clone()).expect_err("an error inside is the error");
            let theirs = shape.extract_error().expect_err("redis-rs finds it too");
            assert_eq!(ours.code(), theirs.code());
            assert_eq!(ours.to_string(), theirs.to_string());
        }
        for shape in nested(Value::BulkString(b"fine".to_vec())) {
            assert_eq!(extract_errors(shape.clone()).ok(), Some(shape.clone()));
            assert_eq!(shape.clone().extract_error().ok(), Some(shape));
        }
    }
}
