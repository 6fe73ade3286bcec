//! Routing: which server a command goes to. Shared by the sync and async
//! clients and the pipelines: key extraction from arguments, co-location
//! checks, and the scatter-gather plan (split a multi-key command by server,
//! then merge the replies the way one server would have answered).

use std::sync::Arc;

use redis::{Arg, Cmd, ErrorKind, RedisError, RedisResult, ToRedisArgs, Value};

use crate::config::{Options, Server};
use crate::placement::Placement;

/// How the replies of a scatter-gather command are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// One array in the caller's key order (MGET).
    Ordered,
    /// Integer replies added up (DEL, EXISTS, UNLINK, TOUCH).
    Sum,
    /// Every server answered OK (MSET).
    Ok,
}

/// What both clients share: the servers and the placement.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) servers: Vec<Server>,
    pub(crate) placement: Placement,
}

impl Core {
    pub(crate) fn new(servers: Vec<Server>, options: &Options) -> RedisResult<Arc<Core>> {
        let placement = Placement::new(options.mode, &servers, options.hash_tags)?;
        Ok(Arc::new(Core { servers, placement }))
    }

    pub(crate) fn name(&self, index: usize) -> &str {
        self.servers.get(index).map(Server::name).unwrap_or("<unknown server>")
    }

    /// The server owning one key given as a command argument.
    pub(crate) fn route_key<K: ToRedisArgs>(&self, command: &str, key: &K) -> RedisResult<usize> {
        let mut args = key.to_redis_args();
        if args.len() != 1 {
            return Err(client_error(format!(
                "{command} is routed by one key, but its key argument gave {} values",
                args.len()
            )));
        }
        let key = args.pop().unwrap_or_default();
        Ok(self.placement.index(&key))
    }

    /// The one server owning all `keys`, or an error naming them.
    pub(crate) fn route_colocated(&self, command: &str, keys: &[Vec<u8>]) -> RedisResult<usize> {
        let Some(first) = keys.first() else {
            return Err(client_error(format!("{command} needs at least one key")));
        };
        let server = self.placement.index(first);
        for key in &keys[1..] {
            let other = self.placement.index(key);
            if other != server {
                return Err(cross_server_error(
                    command,
                    first,
                    self.name(server),
                    key,
                    self.name(other),
                ));
            }
        }
        Ok(server)
    }

    /// Splits the arguments of a multi-key command by server.
    pub(crate) fn plan(&self, cmd: &Cmd, stride: usize) -> RedisResult<Plan> {
        let mut args = cmd.args_iter().map(|a| match a {
            Arg::Simple(bytes) => bytes.to_vec(),
            _ => b"0".to_vec(),
        });
        let name = args.next().unwrap_or_default();
        let rest: Vec<Vec<u8>> = args.collect();
        let command = command_name(cmd);
        let stride = stride.max(1);
        if rest.is_empty() || rest.len() % stride != 0 {
            // Let the server produce its own "wrong number of arguments".
            return Ok(Plan {
                command,
                name,
                groups: vec![(0, Vec::new())],
                chunks: rest,
                stride,
                whole: true,
            });
        }
        let chunks: Vec<Vec<u8>> = rest;
        let count = chunks.len() / stride;
        let mut owner_of = Vec::with_capacity(count);
        for i in 0..count {
            owner_of.push(self.placement.index(&chunks[i * stride]));
        }
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for server in 0..self.servers.len() {
            let items: Vec<usize> = (0..count).filter(|&i| owner_of[i] == server).collect();
            if !items.is_empty() {
                groups.push((server, items));
            }
        }
        let whole = groups.len() == 1;
        Ok(Plan {
            command,
            name,
            groups,
            chunks,
            stride,
            whole,
        })
    }
}

/// A multi-key command split by server.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) command: String,
    name: Vec<u8>,
    /// (server index, indices of the key chunks it owns), in server order.
    pub(crate) groups: Vec<(usize, Vec<usize>)>,
    chunks: Vec<Vec<u8>>,
    stride: usize,
    /// All keys on one server: send the original command unchanged.
    pub(crate) whole: bool,
}

impl Plan {
    /// The command for one group.
    pub(crate) fn command_for(&self, items: &[usize]) -> Cmd {
        let mut cmd = Cmd::new();
        cmd.arg(&self.name[..]);
        for &i in items {
            for j in 0..self.stride {
                cmd.arg(&self.chunks[i * self.stride + j][..]);
            }
        }
        cmd
    }

    fn key_count(&self) -> usize {
        self.chunks.len() / self.stride.max(1)
    }

    /// Merges per-group replies (in `groups` order) into one reply.
    pub(crate) fn merge(&self, core: &Core, merge: Merge, replies: Vec<RedisResult<Value>>) -> RedisResult<Value> {
        let mut failed = Vec::new();
        let mut succeeded = Vec::new();
        let mut values = Vec::with_capacity(replies.len());
        for ((server, items), reply) in self.groups.iter().zip(replies) {
            match reply {
                Ok(v) => {
                    succeeded.push(format!("{} ({} keys)", core.name(*server), items.len()));
                    values.push((items, v));
                }
                Err(e) => failed.push((core.name(*server).to_string(), e)),
            }
        }
        if !failed.is_empty() {
            return Err(partial_failure(&self.command, &failed, &succeeded));
        }
        match merge {
            Merge::Ordered => {
                let mut out = vec![Value::Nil; self.key_count()];
                for (items, v) in values {
                    let Value::Array(parts) = v else {
                        return Err(client_error(format!(
                            "{}: expected an array reply, got {v:?}",
                            self.command
                        )));
                    };
                    if parts.len() != items.len() {
                        return Err(client_error(format!(
                            "{}: expected {} replies from a server, got {}",
                            self.command,
                            items.len(),
                            parts.len()
                        )));
                    }
                    for (&i, part) in items.iter().zip(parts) {
                        out[i] = part;
                    }
                }
                Ok(Value::Array(out))
            }
            Merge::Sum => {
                let mut total: i64 = 0;
                for (_, v) in values {
                    match v {
                        Value::Int(n) => total += n,
                        other => {
                            return Err(client_error(format!(
                                "{}: expected an integer reply, got {other:?}",
                                self.command
                            )));
                        }
                    }
                }
                Ok(Value::Int(total))
            }
            Merge::Ok => {
                for (_, v) in values {
                    if !matches!(v, Value::Okay) {
                        return Err(client_error(format!("{}: expected OK, got {v:?}", self.command)));
                    }
                }
                Ok(Value::Okay)
            }
        }
    }
}

/// The command's name (its first argument), for messages.
pub(crate) fn command_name(cmd: &Cmd) -> String {
    match cmd.args_iter().next() {
        Some(Arg::Simple(name)) => String::from_utf8_lossy(name).into_owned(),
        _ => String::new(),
    }
}

/// Appends every argument `arg` writes to `keys` (a list contributes each element).
pub fn push_keys<T: ToRedisArgs>(keys: &mut Vec<Vec<u8>>, arg: &T) {
    keys.extend(arg.to_redis_args());
}

/// Appends the keys of a (key, value) pair list: every other argument.
pub fn push_pair_keys<T: ToRedisArgs>(keys: &mut Vec<Vec<u8>>, arg: &T) {
    keys.extend(arg.to_redis_args().into_iter().step_by(2));
}

/// A key as shown in errors: printable, shortened.
pub(crate) fn show_key(key: &[u8]) -> String {
    let mut s: String = key.escape_ascii().to_string();
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

pub(crate) fn client_error(detail: String) -> RedisError {
    RedisError::from((ErrorKind::Client, "mredis", detail))
}

pub(crate) fn cross_server_error(command: &str, a: &[u8], sa: &str, b: &[u8], sb: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "mredis: keys on different servers",
        format!(
            "{command} needs all its keys on one server, but `{}` is on {sa} and `{}` is on {sb}; \
             nothing was sent. Put related keys together with hash tags ({{user:1}}:a, {{user:1}}:b) \
             and enable them with Builder::hash_tags(true)",
            show_key(a),
            show_key(b)
        ),
    ))
}

fn partial_failure(command: &str, failed: &[(String, RedisError)], succeeded: &[String]) -> RedisError {
    let failed_text: Vec<String> = failed.iter().map(|(s, e)| format!("{s}: {e}")).collect();
    let ok_text = if succeeded.is_empty() {
        "none".to_string()
    } else {
        succeeded.join(", ")
    };
    let kind = failed.first().map(|(_, e)| e.kind()).unwrap_or(ErrorKind::Io);
    RedisError::from((
        kind,
        "mredis: scatter-gather failed on some servers",
        format!(
            "{command} failed on {} of {} servers ({}); succeeded on: {ok_text}",
            failed.len(),
            failed.len() + succeeded.len(),
            failed_text.join("; ")
        ),
    ))
}

/// Adds the server's name to errors that are not the server's own reply
/// (connection refused, timeouts, ...). Server replies (WRONGTYPE, ...) pass
/// through unchanged, as redis-rs returns them, so `code()` still works.
pub(crate) fn name_server(server: &str, err: RedisError) -> RedisError {
    // Anything with an error code is the server's own reply.
    if err.code().is_some() || matches!(err.kind(), ErrorKind::Server(_)) {
        return err;
    }
    let kind = if err.is_timeout() || err.is_io_error() || err.is_connection_refusal() {
        ErrorKind::Io
    } else {
        err.kind()
    };
    RedisError::from((kind, "mredis: server error", format!("{server}: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_keys_take_every_other_argument() {
        let mut keys = Vec::new();
        push_pair_keys(&mut keys, &&[("a", 1), ("b", 2)][..]);
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
        let mut keys = Vec::new();
        push_keys(&mut keys, &vec!["x", "y"]);
        push_keys(&mut keys, &"z");
        assert_eq!(keys, vec![b"x".to_vec(), b"y".to_vec(), b"z".to_vec()]);
    }

    #[test]
    fn keys_are_shown_printable_and_short() {
        assert_eq!(show_key(b"a\xff\n"), "a\\xff\\n");
        assert!(show_key(&[b'k'; 200]).ends_with("..."));
    }
}
