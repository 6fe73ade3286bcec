//! Routing as a value: where a command goes ([`Route`]), decided from the
//! command table's class and the placement, without touching a socket.
//! The sync client, the async client, both pipelines, scripts and the
//! table test all route through here; only the I/O differs between them.
//!
//! A key is hashed where it lies: [`Topology::route_key`] feeds the caller's
//! argument straight to the placement through a [`redis::RedisWrite`] that
//! hashes instead of copying. A multi-key command is split by reading the
//! caller's arguments in place ([`Plan`]) into one command per server.
//! The routed handle decides by the same functions, from the table's row
//! (its class and `key_spec`), so a command reaches the same servers
//! through a handle as through its method.
//!
//! While a migration is configured ([`Builder::migrating_from`]), or a
//! server is back from an ejection and the keys written elsewhere meanwhile
//! are being moved back to it ([`crate::health::Rejoin::MoveBack`]), a key
//! whose owner changes carries a [`Move`] (old and new server): the
//! migration state machines run the command on the old server while the
//! key is still there and on the new one once it is gone; the client never
//! MIGRATEs a key itself on a command's path (the rebalance, or the
//! health checker's mover, does).
//!
//! [`Builder::migrating_from`]: crate::Builder::migrating_from

use std::sync::Arc;

use redis::{Arg, Cmd, RedisResult, RedisWrite, ToRedisArgs, Value};

use crate::error::{Failure, client_error};
use crate::merge::Response;
use crate::options::Options;
use crate::placement::Placement;
use crate::server::Server;

pub(crate) use crate::error::{cross_server_error, name_server, show_key};

pub(crate) use crate::spec::Merge;

/// The configuration a client is moving away from.
#[derive(Debug)]
pub(crate) struct Migration {
    placement: Placement,
    /// Old placement index -> index in `Topology::servers`.
    map: Vec<usize>,
    /// The rebalance has verified this move and left its marker
    /// ([`crate::finish`]): no migration checks any more.
    finished: Arc<std::sync::atomic::AtomicBool>,
}

impl Migration {
    /// Whether the move is over (the rebalance's finish marker was seen).
    #[inline]
    pub(crate) fn finished(&self) -> bool {
        self.finished.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The fleet's topology, shared by every client, handle and pipeline of one
/// configuration: the servers, the placement, a migration in progress and
/// the health checker's routing around ejected servers.
///
/// `servers` holds the current configuration's servers first (placement
/// index = position), then, while migrating, the old configuration's
/// servers that the new one lacks.
#[derive(Debug)]
pub(crate) struct Topology {
    pub(crate) servers: Vec<Server>,
    pub(crate) placement: Placement,
    /// How many of `servers` the current configuration has.
    pub(crate) current: usize,
    pub(crate) migration: Option<Migration>,
    /// The largest argument sent (`Builder::max_arg_size`).
    pub(crate) max_arg_size: usize,
    /// Opt-in health checking (and ejection).
    pub(crate) health: Option<Arc<crate::health::Health>>,
    /// Some server is a shard with replicas or Sentinel: requests go
    /// through the drivers' shard path (read policy, WAIT, failover).
    pub(crate) shards: bool,
    /// The builder's connect and response timeouts (the response one 5 s
    /// when off), for connections other than the clients' own (Sentinel's,
    /// the subscribers').
    pub(crate) timeouts: crate::connect::Timeouts,
    /// The placement's fingerprint (the census compares connection names
    /// with it).
    pub(crate) fingerprint: String,
    /// While migrating: the fingerprint of the configuration moved from.
    pub(crate) from_fingerprint: Option<String>,
    /// The name every connection gives itself (`CLIENT SETNAME`), unless
    /// turned off.
    pub(crate) client_name: Option<String>,
    /// The client this configuration belongs to, shared by every
    /// configuration a [`reconfigure`](crate::MRedis::reconfigure) makes of
    /// it: pipelines built on one run on the client's later ones.
    pub(crate) lineage: Arc<Lineage>,
}

/// What a client's configurations share (compared by address: the same
/// client): the count of the connections it opened.
#[derive(Debug, Default)]
pub(crate) struct Lineage {
    /// Connections opened, by kind ([`crate::connect`]).
    pub(crate) opened: Arc<crate::connect::Counts>,
}

/// A key to bring from its old server to its new one before a command on
/// it runs (a migration is under way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Move {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) key: Vec<u8>,
}

/// Where a command goes.
#[derive(Debug)]
pub(crate) enum Route {
    /// One server; `moves` are keys whose owner changes, served from their
    /// old server while they are still there (empty, and not allocated,
    /// unless a migration is under way).
    One { server: usize, moves: Vec<Move> },
    /// A multi-key command split by server.
    Split(Plan),
    /// Every server, the replies merged into one by this policy (a
    /// `class = "all"` row's `reply`, for the routed handle; the generated
    /// methods give one reply per server instead).
    All(Response),
}

/// Hashes the one argument a key parameter writes, without copying it.
struct KeyRoute<'c> {
    core: &'c Topology,
    args: usize,
    server: usize,
    from: Option<usize>,
    key: Option<Vec<u8>>,
    buf: Vec<u8>,
}

impl KeyRoute<'_> {
    fn take(&mut self, arg: &[u8]) {
        self.args += 1;
        let (server, from) = self.core.owner(arg);
        self.server = server;
        self.from = from;
        if from.is_some() {
            self.key = Some(arg.to_vec());
        }
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() || self.args == 0 {
            let buf = std::mem::take(&mut self.buf);
            self.take(&buf);
            self.buf = buf;
        }
    }
}

impl RedisWrite for KeyRoute<'_> {
    fn write_arg(&mut self, arg: &[u8]) {
        self.take(arg);
    }

    fn write_arg_fmt(&mut self, arg: impl std::fmt::Display) {
        let text = arg.to_string();
        self.take(text.as_bytes());
    }

    fn writer_for_next_arg(&mut self) -> impl std::io::Write + '_ {
        // Rare (custom ToRedisArgs types): buffer, hash in `flush`.
        self.args += 1;
        self.buf.clear();
        &mut self.buf
    }
}

impl Topology {
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn new(servers: Vec<Server>, options: &Options) -> RedisResult<Arc<Topology>> {
        Topology::new_in(servers, options, Arc::default())
    }

    /// A topology of the client `lineage` stands for.
    pub(crate) fn new_in(servers: Vec<Server>, options: &Options, lineage: Arc<Lineage>) -> RedisResult<Arc<Topology>> {
        let placement = Placement::new(options.mode, &servers, options.hash_tags)?;
        let current = servers.len();
        let fingerprint = crate::placement::fingerprint::fingerprint(options.mode, &servers, options.hash_tags);
        let from_fingerprint = options.migrating_from.as_ref().map(|old| {
            crate::placement::fingerprint::fingerprint(old.options.mode, &old.servers, old.options.hash_tags)
        });
        let client_name = options.name_connections.then(|| {
            crate::placement::fingerprint::connection_name(
                &fingerprint,
                from_fingerprint.as_deref(),
                options.client_name.as_deref(),
            )
        });
        let timeouts = crate::connect::Timeouts {
            connect: options.connect_timeout,
            response: options.response_timeout.unwrap_or(std::time::Duration::from_secs(5)),
        };
        let health = match &options.health {
            None => None,
            Some(h) => {
                if h.eject {
                    crate::health::check_ejection(options.mode)?;
                    if options.migrating_from.is_some() {
                        return Err(crate::server::config_error(
                            "ejection and migrating_from cannot be combined: finish the migration first".to_string(),
                        ));
                    }
                }
                Some(crate::health::Health::new(&servers))
            }
        };
        let mut servers = servers;
        let migration = match &options.migrating_from {
            None => None,
            Some(old) => {
                let placement = Placement::new(old.options.mode, &old.servers, old.options.hash_tags)?;
                let mut map = Vec::with_capacity(old.servers.len());
                for s in &old.servers {
                    match servers.iter().position(|n| n.name() == s.name()) {
                        Some(i) => map.push(i),
                        None => {
                            servers.push(s.clone());
                            map.push(servers.len() - 1);
                        }
                    }
                }
                Some(Migration {
                    placement,
                    map,
                    finished: Arc::default(),
                })
            }
        };
        let shards = options.acks.is_some() || servers.iter().any(|s| s.shard().is_some());
        Ok(Arc::new(Topology {
            lineage,
            fingerprint,
            from_fingerprint,
            client_name,
            shards,
            timeouts,
            servers,
            placement,
            current,
            migration,
            max_arg_size: options.max_arg_size,
            health,
        }))
    }

    /// What this configuration's connections other than the data path's
    /// are opened with ([`crate::connect`]).
    pub(crate) fn connector(&self) -> crate::connect::Connector {
        crate::connect::Connector {
            name: self.client_name.clone(),
            timeouts: self.timeouts,
            counts: self.lineage.opened.clone(),
        }
    }

    /// The migration's finish marker and the flag it sets, while
    /// migrating ([`crate::finish`]).
    pub(crate) fn finish_marker(&self) -> Option<(String, Arc<std::sync::atomic::AtomicBool>)> {
        let m = self.migration.as_ref()?;
        let old = self.from_fingerprint.as_deref()?;
        Some((crate::finish::marker(old, &self.fingerprint), m.finished.clone()))
    }

    /// An argument over the servers' `proto-max-bulk-len` would make the
    /// server drop the connection: refuse it before sending.
    #[inline]
    pub(crate) fn check_size(&self, cmd: &Cmd) -> RedisResult<()> {
        for (i, arg) in cmd.args_iter().enumerate() {
            if let Arg::Simple(bytes) = arg
                && bytes.len() > self.max_arg_size
            {
                return Err(client_error(format!(
                    "{}: argument {i} is {} bytes, over the limit of {} bytes (the server's proto-max-bulk-len; \
                     Builder::max_arg_size); nothing was sent",
                    command_name(cmd),
                    bytes.len(),
                    self.max_arg_size
                )));
            }
        }
        Ok(())
    }

    /// Server `index` (of both configurations while migrating).
    pub(crate) fn server(&self, index: usize) -> &Server {
        &self.servers[index]
    }

    pub(crate) fn name(&self, index: usize) -> &str {
        self.servers.get(index).map(Server::name).unwrap_or("<unknown server>")
    }

    /// The current configuration's servers.
    pub(crate) fn current_servers(&self) -> &[Server] {
        &self.servers[..self.current]
    }

    /// A migration under way (configured, and not finished).
    #[inline]
    pub(crate) fn migrating(&self) -> bool {
        self.migration.as_ref().is_some_and(|m| !m.finished())
    }

    /// Every server a fan-out reaches: the current ones and, while
    /// migrating, the old configuration's others.
    pub(crate) fn all(&self) -> usize {
        self.servers.len()
    }

    /// The server owning `key`, and the one it is moving from (if any).
    #[inline]
    pub(crate) fn owner(&self, key: &[u8]) -> (usize, Option<usize>) {
        self.owner_in(key, false)
    }

    /// As [`owner`](Self::owner), but as if the migration were not
    /// finished (a SCAN walk that started before the finish keeps its
    /// rules to the end).
    pub(crate) fn owner_in(&self, key: &[u8], walk: bool) -> (usize, Option<usize>) {
        let server = match self.health.as_ref().and_then(|h| h.reroute(key)) {
            Some(s) => s,
            None => self.placement.index(key),
        };
        let from = match &self.migration {
            Some(m) if walk || !m.finished() => {
                let old = m.map.get(m.placement.index(key)).copied().unwrap_or(server);
                (old != server).then_some(old)
            }
            Some(_) => None,
            // A server back from an ejection: a newer copy may still be
            // where the key went meanwhile.
            None => self
                .health
                .as_ref()
                .and_then(|h| h.rejoin_from(key, server, &self.placement)),
        };
        (server, from)
    }

    /// The route of a command on one key, given as the caller's argument.
    #[inline]
    pub(crate) fn route_key<K: ToRedisArgs>(&self, command: &str, key: &K) -> RedisResult<Route> {
        let mut r = KeyRoute {
            core: self,
            args: 0,
            server: 0,
            from: None,
            key: None,
            buf: Vec::new(),
        };
        key.write_redis_args(&mut r);
        r.flush();
        if r.args != 1 {
            return Err(client_error(format!(
                "{command} is routed by one key, but its key argument gave {} values",
                r.args
            )));
        }
        let moves = match (r.from, r.key) {
            (Some(from), Some(key)) => vec![Move {
                from,
                to: r.server,
                key,
            }],
            _ => Vec::new(),
        };
        Ok(Route::One {
            server: r.server,
            moves,
        })
    }

    /// The one server owning all `keys`, or an error naming two that differ.
    pub(crate) fn route_colocated(&self, command: &str, keys: &[Vec<u8>]) -> RedisResult<Route> {
        let Some(first) = keys.first() else {
            return Err(client_error(format!("{command} needs at least one key")));
        };
        let (server, _) = self.owner(first);
        let mut moves = Vec::new();
        for key in keys {
            let (other, from) = self.owner(key);
            if other != server {
                return Err(cross_server_error(
                    command,
                    first,
                    self.name(server),
                    key,
                    self.name(other),
                ));
            }
            if let Some(from) = from {
                moves.push(Move {
                    from,
                    to: server,
                    key: key.clone(),
                });
            }
        }
        Ok(Route::One { server, moves })
    }

    /// Splits a multi-key command by server: `stride` arguments per key
    /// (1 for MGET/DEL, 2 for MSET). All keys on one server (and none
    /// moving) gives `Route::One`, which sends the caller's command as is.
    pub(crate) fn route_split(&self, cmd: &Cmd, stride: usize, merge: Merge) -> Route {
        let stride = stride.max(1);
        let total = cmd.args_iter().len().saturating_sub(1);
        if total == 0 || !total.is_multiple_of(stride) {
            // Let the server produce its own "wrong number of arguments".
            return Route::One {
                server: 0,
                moves: Vec::new(),
            };
        }
        let count = total / stride;
        let mut owner_of = Vec::with_capacity(count);
        let mut moves = Vec::new();
        for arg in cmd.args_iter().skip(1).step_by(stride) {
            let key = match arg {
                Arg::Simple(bytes) => bytes,
                _ => b"0",
            };
            let (server, from) = self.owner(key);
            owner_of.push(server);
            if let Some(from) = from {
                moves.push(Move {
                    from,
                    to: server,
                    key: key.to_vec(),
                });
            }
        }
        let first = owner_of[0];
        if moves.is_empty() && owner_of.iter().all(|&s| s == first) {
            return Route::One { server: first, moves };
        }
        let mut by_server: Vec<Vec<usize>> = vec![Vec::new(); self.current];
        for (i, &server) in owner_of.iter().enumerate() {
            by_server[server].push(i);
        }
        let groups: Vec<(usize, Vec<usize>)> = by_server
            .into_iter()
            .enumerate()
            .filter(|(_, items)| !items.is_empty())
            .collect();
        Route::Split(Plan {
            groups,
            stride,
            count,
            merge,
            moves,
        })
    }
}

/// The keys a key argument routes by (for tests of the table: the same
/// extraction [`Topology::route_key`] uses).
#[cfg_attr(not(feature = "table-examples"), allow(dead_code))]
pub fn key_args<K: ToRedisArgs>(key: &K) -> Vec<Vec<u8>> {
    key.to_redis_args()
}

/// The keys of a multi-key command as [`Topology::route_split`] reads them.
#[cfg_attr(not(feature = "table-examples"), allow(dead_code))]
pub fn split_keys(cmd: &Cmd, stride: usize) -> Vec<Vec<u8>> {
    cmd.args_iter()
        .skip(1)
        .step_by(stride.max(1))
        .map(|a| match a {
            Arg::Simple(b) => b.to_vec(),
            _ => b"0".to_vec(),
        })
        .collect()
}

/// A multi-key command split by server.
#[derive(Debug)]
pub(crate) struct Plan {
    /// (server index, indices of the keys it owns), in server order.
    pub(crate) groups: Vec<(usize, Vec<usize>)>,
    stride: usize,
    count: usize,
    merge: Merge,
    pub(crate) moves: Vec<Move>,
}

impl Plan {
    /// Each group's command as a `Cmd` (for the async client, whose
    /// connections take commands rather than bytes).
    pub(crate) fn commands(&self, cmd: &Cmd) -> Vec<(usize, Cmd)> {
        let args = args_of(cmd);
        self.groups
            .iter()
            .map(|(server, items)| {
                let argc = 1 + items.len() * self.stride;
                let bytes = args[0].len()
                    + items
                        .iter()
                        .flat_map(|&i| &args[1 + i * self.stride..1 + (i + 1) * self.stride])
                        .map(|a| a.len())
                        .sum::<usize>();
                let mut c = Cmd::with_capacity(argc, bytes);
                c.arg(args[0]);
                for &i in items {
                    for j in 0..self.stride {
                        c.arg(args[1 + i * self.stride + j]);
                    }
                }
                (*server, c)
            })
            .collect()
    }

    /// Merges per-group replies (in `groups` order) into one reply.
    pub(crate) fn merge(&self, core: &Topology, command: &str, replies: Vec<RedisResult<Value>>) -> RedisResult<Value> {
        let mut failure = Failure::new(command);
        let mut parts = Vec::with_capacity(replies.len());
        for ((server, items), reply) in self.groups.iter().zip(replies) {
            // Replies arrive with errors extracted (`value_on`, `send_many`'s caller).
            let reply = reply.and_then(|v| match v {
                Value::ServerError(e) => Err(e.into()),
                v => Ok(v),
            });
            match reply {
                Ok(v) => {
                    failure.succeeded(core.name(*server), items.len());
                    parts.push((&items[..], v));
                }
                Err(e) => failure.failed(core.name(*server), e),
            }
        }
        failure.into_result()?;
        merge_parts(command, self.merge, self.count, parts)
    }

    pub(crate) fn stride(&self) -> usize {
        self.stride
    }

    pub(crate) fn merge_policy(&self) -> Merge {
        self.merge
    }
}

/// Merges the replies of parts of a multi-key command (each: the indices
/// of its keys, and its reply) into the reply one server would have given
/// for all `count` keys.
pub(crate) fn merge_parts<I: AsRef<[usize]>>(
    command: &str,
    merge: Merge,
    count: usize,
    parts: Vec<(I, Value)>,
) -> RedisResult<Value> {
    match merge {
        Merge::Ordered => {
            let mut out = Vec::with_capacity(count);
            out.resize_with(count, || Value::Nil);
            for (items, v) in parts {
                let Value::Array(values) = v else {
                    return Err(client_error(format!("{command}: expected an array reply, got {v:?}")));
                };
                let items = items.as_ref();
                if values.len() != items.len() {
                    return Err(client_error(format!(
                        "{command}: expected {} replies from a server, got {}",
                        items.len(),
                        values.len()
                    )));
                }
                for (&i, part) in items.iter().zip(values) {
                    out[i] = part;
                }
            }
            Ok(Value::Array(out))
        }
        Merge::Sum => {
            let mut total: i64 = 0;
            for (_, v) in parts {
                match v {
                    Value::Int(n) => total += n,
                    other => {
                        return Err(client_error(format!(
                            "{command}: expected an integer reply, got {other:?}"
                        )));
                    }
                }
            }
            Ok(Value::Int(total))
        }
        Merge::Ok => {
            for (_, v) in parts {
                if !matches!(v, Value::Okay) {
                    return Err(client_error(format!("{command}: expected OK, got {v:?}")));
                }
            }
            Ok(Value::Okay)
        }
    }
}

/// A command's arguments as bytes (a cursor argument reads as 0).
pub(crate) fn args_of(cmd: &Cmd) -> Vec<&[u8]> {
    cmd.args_iter()
        .map(|a| match a {
            Arg::Simple(b) => b,
            _ => b"0",
        })
        .collect()
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
    fn split_commands_hold_each_servers_keys() {
        let servers: Vec<Server> = (0..4).map(|i| Server::from_parts("h", 7000 + i, 0).unwrap()).collect();
        let core = Topology::new(servers, &Options::default()).unwrap();
        let mut cmd = redis::cmd("MSET");
        for i in 0..40 {
            cmd.arg(format!("k{i}")).arg(i);
        }
        let Route::Split(plan) = core.route_split(&cmd, 2, Merge::Ok) else {
            panic!("40 keys on 4 servers must split")
        };
        for (server, part) in plan.commands(&cmd) {
            let mut expect = redis::cmd("MSET");
            for i in 0..40 {
                let key = format!("k{i}");
                if core.owner(key.as_bytes()).0 == server {
                    expect.arg(key).arg(i);
                }
            }
            assert_eq!(part.get_packed_command(), expect.get_packed_command());
        }
    }

    #[test]
    fn a_key_routes_without_copy_like_its_bytes() {
        let servers: Vec<Server> = (0..5).map(|i| Server::from_parts("h", 7000 + i, 0).unwrap()).collect();
        let core = Topology::new(servers, &Options::default()).unwrap();
        for key in ["a", "b", "user:1", ""] {
            let Route::One { server, moves } = core.route_key("GET", &key).unwrap() else {
                panic!()
            };
            assert_eq!(server, core.placement.index(key.as_bytes()));
            assert!(moves.is_empty());
        }
        let Route::One { server, .. } = core.route_key("GET", &42i64).unwrap() else {
            panic!()
        };
        assert_eq!(server, core.placement.index(b"42"));
        assert!(core.route_key("GET", &vec!["a", "b"]).is_err());
    }
}
