//! Routed connection handles: [`Connection`] implements
//! `redis::ConnectionLike` and [`aio::Connection`](crate::aio::Connection)
//! `redis::aio::ConnectionLike`, so code written for redis-rs (`cmd().query`,
//! `pipe().query`, `redis::transaction`, `Script::invoke`, `Commands`,
//! `TypedCommands`, ...) runs on the whole fleet unchanged.
//!
//! This is the runtime-checked door: each command is routed when it is
//! sent, by the same command table as [`MRedis`](crate::MRedis)'s methods
//! (`mredis::COMMANDS`, generated from `commands.toml`), so a command goes
//! to the same servers through a handle as through its method. The
//! servers' own `COMMAND` metadata (fetched once, or Redis 7.0's built in)
//! only says where the keys of a command are:
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

use std::collections::HashMap;
use std::sync::Arc;

use redis::{Cmd, ConnectionLike, ErrorKind, RedisError, RedisResult, Value};

use crate::error::client_error;
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

/// Redis 7.0's `COMMAND` metadata (name, first key, last key, step,
/// movable keys, sent to every server, response policy, has subcommands),
/// for when the servers do not let this client run `COMMAND` (an ACL user
/// without `+command`). A test compares it with the live server's.
type BuiltIn = (&'static str, i64, i64, i64, bool, bool, &'static str, bool);

const BUILT_IN: &[BuiltIn] = &[
    ("acl", 0, 0, 0, false, false, "none", true),
    ("acl|cat", 0, 0, 0, false, false, "none", false),
    ("acl|deluser", 0, 0, 0, false, false, "none", false),
    ("acl|dryrun", 0, 0, 0, false, false, "none", false),
    ("acl|genpass", 0, 0, 0, false, false, "none", false),
    ("acl|getuser", 0, 0, 0, false, false, "none", false),
    ("acl|help", 0, 0, 0, false, false, "none", false),
    ("acl|list", 0, 0, 0, false, false, "none", false),
    ("acl|load", 0, 0, 0, false, false, "none", false),
    ("acl|log", 0, 0, 0, false, false, "none", false),
    ("acl|save", 0, 0, 0, false, false, "none", false),
    ("acl|setuser", 0, 0, 0, false, false, "none", false),
    ("acl|users", 0, 0, 0, false, false, "none", false),
    ("acl|whoami", 0, 0, 0, false, false, "none", false),
    ("append", 1, 1, 1, false, false, "none", false),
    ("asking", 0, 0, 0, false, false, "none", false),
    ("auth", 0, 0, 0, false, false, "none", false),
    ("bgrewriteaof", 0, 0, 0, false, false, "none", false),
    ("bgsave", 0, 0, 0, false, false, "none", false),
    ("bitcount", 1, 1, 1, false, false, "none", false),
    ("bitfield", 1, 1, 1, false, false, "none", false),
    ("bitfield_ro", 1, 1, 1, false, false, "none", false),
    ("bitop", 2, -1, 1, false, false, "none", false),
    ("bitpos", 1, 1, 1, false, false, "none", false),
    ("blmove", 1, 2, 1, false, false, "none", false),
    ("blmpop", 0, 0, 0, true, false, "none", false),
    ("blpop", 1, -2, 1, false, false, "none", false),
    ("brpop", 1, -2, 1, false, false, "none", false),
    ("brpoplpush", 1, 2, 1, false, false, "none", false),
    ("bzmpop", 0, 0, 0, true, false, "none", false),
    ("bzpopmax", 1, -2, 1, false, false, "none", false),
    ("bzpopmin", 1, -2, 1, false, false, "none", false),
    ("client", 0, 0, 0, false, false, "none", true),
    ("client|caching", 0, 0, 0, false, false, "none", false),
    ("client|getname", 0, 0, 0, false, false, "none", false),
    ("client|getredir", 0, 0, 0, false, false, "none", false),
    ("client|help", 0, 0, 0, false, false, "none", false),
    ("client|id", 0, 0, 0, false, false, "none", false),
    ("client|info", 0, 0, 0, false, false, "none", false),
    ("client|kill", 0, 0, 0, false, false, "none", false),
    ("client|list", 0, 0, 0, false, false, "none", false),
    ("client|no-evict", 0, 0, 0, false, false, "none", false),
    ("client|pause", 0, 0, 0, false, false, "none", false),
    ("client|reply", 0, 0, 0, false, false, "none", false),
    ("client|setname", 0, 0, 0, false, false, "none", false),
    ("client|tracking", 0, 0, 0, false, false, "none", false),
    ("client|trackinginfo", 0, 0, 0, false, false, "none", false),
    ("client|unblock", 0, 0, 0, false, false, "none", false),
    ("client|unpause", 0, 0, 0, false, false, "none", false),
    ("cluster", 0, 0, 0, false, false, "none", true),
    ("cluster|addslots", 0, 0, 0, false, false, "none", false),
    ("cluster|addslotsrange", 0, 0, 0, false, false, "none", false),
    ("cluster|bumpepoch", 0, 0, 0, false, false, "none", false),
    ("cluster|count-failure-reports", 0, 0, 0, false, false, "none", false),
    ("cluster|countkeysinslot", 0, 0, 0, false, false, "none", false),
    ("cluster|delslots", 0, 0, 0, false, false, "none", false),
    ("cluster|delslotsrange", 0, 0, 0, false, false, "none", false),
    ("cluster|failover", 0, 0, 0, false, false, "none", false),
    ("cluster|flushslots", 0, 0, 0, false, false, "none", false),
    ("cluster|forget", 0, 0, 0, false, false, "none", false),
    ("cluster|getkeysinslot", 0, 0, 0, false, false, "none", false),
    ("cluster|help", 0, 0, 0, false, false, "none", false),
    ("cluster|info", 0, 0, 0, false, false, "none", false),
    ("cluster|keyslot", 0, 0, 0, false, false, "none", false),
    ("cluster|links", 0, 0, 0, false, false, "none", false),
    ("cluster|meet", 0, 0, 0, false, false, "none", false),
    ("cluster|myid", 0, 0, 0, false, false, "none", false),
    ("cluster|nodes", 0, 0, 0, false, false, "none", false),
    ("cluster|replicas", 0, 0, 0, false, false, "none", false),
    ("cluster|replicate", 0, 0, 0, false, false, "none", false),
    ("cluster|reset", 0, 0, 0, false, false, "none", false),
    ("cluster|saveconfig", 0, 0, 0, false, false, "none", false),
    ("cluster|set-config-epoch", 0, 0, 0, false, false, "none", false),
    ("cluster|setslot", 0, 0, 0, false, false, "none", false),
    ("cluster|shards", 0, 0, 0, false, false, "none", false),
    ("cluster|slaves", 0, 0, 0, false, false, "none", false),
    ("cluster|slots", 0, 0, 0, false, false, "none", false),
    ("command", 0, 0, 0, false, false, "none", true),
    ("command|count", 0, 0, 0, false, false, "none", false),
    ("command|docs", 0, 0, 0, false, false, "none", false),
    ("command|getkeys", 0, 0, 0, false, false, "none", false),
    ("command|getkeysandflags", 0, 0, 0, false, false, "none", false),
    ("command|help", 0, 0, 0, false, false, "none", false),
    ("command|info", 0, 0, 0, false, false, "none", false),
    ("command|list", 0, 0, 0, false, false, "none", false),
    ("config", 0, 0, 0, false, false, "none", true),
    ("config|get", 0, 0, 0, false, false, "none", false),
    ("config|help", 0, 0, 0, false, false, "none", false),
    ("config|resetstat", 0, 0, 0, false, false, "none", false),
    ("config|rewrite", 0, 0, 0, false, false, "none", false),
    ("config|set", 0, 0, 0, false, true, "all_succeeded", false),
    ("copy", 1, 2, 1, false, false, "none", false),
    ("dbsize", 0, 0, 0, false, true, "agg_sum", false),
    ("debug", 0, 0, 0, false, false, "none", false),
    ("decr", 1, 1, 1, false, false, "none", false),
    ("decrby", 1, 1, 1, false, false, "none", false),
    ("del", 1, -1, 1, false, false, "agg_sum", false),
    ("discard", 0, 0, 0, false, false, "none", false),
    ("dump", 1, 1, 1, false, false, "none", false),
    ("echo", 0, 0, 0, false, false, "none", false),
    ("eval", 0, 0, 0, true, false, "none", false),
    ("eval_ro", 0, 0, 0, true, false, "none", false),
    ("evalsha", 0, 0, 0, true, false, "none", false),
    ("evalsha_ro", 0, 0, 0, true, false, "none", false),
    ("exec", 0, 0, 0, false, false, "none", false),
    ("exists", 1, -1, 1, false, false, "agg_sum", false),
    ("expire", 1, 1, 1, false, false, "none", false),
    ("expireat", 1, 1, 1, false, false, "none", false),
    ("expiretime", 1, 1, 1, false, false, "none", false),
    ("failover", 0, 0, 0, false, false, "none", false),
    ("fcall", 0, 0, 0, true, false, "none", false),
    ("fcall_ro", 0, 0, 0, true, false, "none", false),
    ("flushall", 0, 0, 0, false, true, "all_succeeded", false),
    ("flushdb", 0, 0, 0, false, true, "all_succeeded", false),
    ("function", 0, 0, 0, false, false, "none", true),
    ("function|delete", 0, 0, 0, false, true, "all_succeeded", false),
    ("function|dump", 0, 0, 0, false, false, "none", false),
    ("function|flush", 0, 0, 0, false, true, "all_succeeded", false),
    ("function|help", 0, 0, 0, false, false, "none", false),
    ("function|kill", 0, 0, 0, false, true, "one_succeeded", false),
    ("function|list", 0, 0, 0, false, false, "none", false),
    ("function|load", 0, 0, 0, false, true, "all_succeeded", false),
    ("function|restore", 0, 0, 0, false, true, "all_succeeded", false),
    ("function|stats", 0, 0, 0, false, true, "special", false),
    ("geoadd", 1, 1, 1, false, false, "none", false),
    ("geodist", 1, 1, 1, false, false, "none", false),
    ("geohash", 1, 1, 1, false, false, "none", false),
    ("geopos", 1, 1, 1, false, false, "none", false),
    ("georadius", 1, 1, 1, true, false, "none", false),
    ("georadius_ro", 1, 1, 1, false, false, "none", false),
    ("georadiusbymember", 1, 1, 1, true, false, "none", false),
    ("georadiusbymember_ro", 1, 1, 1, false, false, "none", false),
    ("geosearch", 1, 1, 1, false, false, "none", false),
    ("geosearchstore", 1, 2, 1, false, false, "none", false),
    ("get", 1, 1, 1, false, false, "none", false),
    ("getbit", 1, 1, 1, false, false, "none", false),
    ("getdel", 1, 1, 1, false, false, "none", false),
    ("getex", 1, 1, 1, false, false, "none", false),
    ("getrange", 1, 1, 1, false, false, "none", false),
    ("getset", 1, 1, 1, false, false, "none", false),
    ("hdel", 1, 1, 1, false, false, "none", false),
    ("hello", 0, 0, 0, false, false, "none", false),
    ("hexists", 1, 1, 1, false, false, "none", false),
    ("hget", 1, 1, 1, false, false, "none", false),
    ("hgetall", 1, 1, 1, false, false, "none", false),
    ("hincrby", 1, 1, 1, false, false, "none", false),
    ("hincrbyfloat", 1, 1, 1, false, false, "none", false),
    ("hkeys", 1, 1, 1, false, false, "none", false),
    ("hlen", 1, 1, 1, false, false, "none", false),
    ("hmget", 1, 1, 1, false, false, "none", false),
    ("hmset", 1, 1, 1, false, false, "none", false),
    ("hrandfield", 1, 1, 1, false, false, "none", false),
    ("hscan", 1, 1, 1, false, false, "none", false),
    ("hset", 1, 1, 1, false, false, "none", false),
    ("hsetnx", 1, 1, 1, false, false, "none", false),
    ("hstrlen", 1, 1, 1, false, false, "none", false),
    ("hvals", 1, 1, 1, false, false, "none", false),
    ("incr", 1, 1, 1, false, false, "none", false),
    ("incrby", 1, 1, 1, false, false, "none", false),
    ("incrbyfloat", 1, 1, 1, false, false, "none", false),
    ("info", 0, 0, 0, false, true, "special", false),
    ("keys", 0, 0, 0, false, true, "none", false),
    ("lastsave", 0, 0, 0, false, false, "none", false),
    ("latency", 0, 0, 0, false, false, "none", true),
    ("latency|doctor", 0, 0, 0, false, true, "special", false),
    ("latency|graph", 0, 0, 0, false, true, "special", false),
    ("latency|help", 0, 0, 0, false, false, "none", false),
    ("latency|histogram", 0, 0, 0, false, true, "special", false),
    ("latency|history", 0, 0, 0, false, true, "special", false),
    ("latency|latest", 0, 0, 0, false, true, "special", false),
    ("latency|reset", 0, 0, 0, false, true, "all_succeeded", false),
    ("lcs", 1, 2, 1, false, false, "none", false),
    ("lindex", 1, 1, 1, false, false, "none", false),
    ("linsert", 1, 1, 1, false, false, "none", false),
    ("llen", 1, 1, 1, false, false, "none", false),
    ("lmove", 1, 2, 1, false, false, "none", false),
    ("lmpop", 0, 0, 0, true, false, "none", false),
    ("lolwut", 0, 0, 0, false, false, "none", false),
    ("lpop", 1, 1, 1, false, false, "none", false),
    ("lpos", 1, 1, 1, false, false, "none", false),
    ("lpush", 1, 1, 1, false, false, "none", false),
    ("lpushx", 1, 1, 1, false, false, "none", false),
    ("lrange", 1, 1, 1, false, false, "none", false),
    ("lrem", 1, 1, 1, false, false, "none", false),
    ("lset", 1, 1, 1, false, false, "none", false),
    ("ltrim", 1, 1, 1, false, false, "none", false),
    ("memory", 0, 0, 0, false, false, "none", true),
    ("memory|doctor", 0, 0, 0, false, true, "special", false),
    ("memory|help", 0, 0, 0, false, false, "none", false),
    ("memory|malloc-stats", 0, 0, 0, false, true, "special", false),
    ("memory|purge", 0, 0, 0, false, true, "all_succeeded", false),
    ("memory|stats", 0, 0, 0, false, true, "special", false),
    ("memory|usage", 2, 2, 1, false, false, "none", false),
    ("mget", 1, -1, 1, false, false, "none", false),
    ("migrate", 3, 3, 1, true, false, "none", false),
    ("module", 0, 0, 0, false, false, "none", true),
    ("module|help", 0, 0, 0, false, false, "none", false),
    ("module|list", 0, 0, 0, false, false, "none", false),
    ("module|load", 0, 0, 0, false, false, "none", false),
    ("module|loadex", 0, 0, 0, false, false, "none", false),
    ("module|unload", 0, 0, 0, false, false, "none", false),
    ("monitor", 0, 0, 0, false, false, "none", false),
    ("move", 1, 1, 1, false, false, "none", false),
    ("mset", 1, -1, 2, false, false, "all_succeeded", false),
    ("msetnx", 1, -1, 2, false, false, "agg_min", false),
    ("multi", 0, 0, 0, false, false, "none", false),
    ("object", 0, 0, 0, false, false, "none", true),
    ("object|encoding", 2, 2, 1, false, false, "none", false),
    ("object|freq", 2, 2, 1, false, false, "none", false),
    ("object|help", 0, 0, 0, false, false, "none", false),
    ("object|idletime", 2, 2, 1, false, false, "none", false),
    ("object|refcount", 2, 2, 1, false, false, "none", false),
    ("persist", 1, 1, 1, false, false, "none", false),
    ("pexpire", 1, 1, 1, false, false, "none", false),
    ("pexpireat", 1, 1, 1, false, false, "none", false),
    ("pexpiretime", 1, 1, 1, false, false, "none", false),
    ("pfadd", 1, 1, 1, false, false, "none", false),
    ("pfcount", 1, -1, 1, false, false, "none", false),
    ("pfdebug", 2, 2, 1, false, false, "none", false),
    ("pfmerge", 1, -1, 1, false, false, "none", false),
    ("pfselftest", 0, 0, 0, false, false, "none", false),
    ("ping", 0, 0, 0, false, true, "all_succeeded", false),
    ("psetex", 1, 1, 1, false, false, "none", false),
    ("psubscribe", 0, 0, 0, false, false, "none", false),
    ("psync", 0, 0, 0, false, false, "none", false),
    ("pttl", 1, 1, 1, false, false, "none", false),
    ("publish", 0, 0, 0, false, false, "none", false),
    ("pubsub", 0, 0, 0, false, false, "none", true),
    ("pubsub|channels", 0, 0, 0, false, false, "none", false),
    ("pubsub|help", 0, 0, 0, false, false, "none", false),
    ("pubsub|numpat", 0, 0, 0, false, false, "none", false),
    ("pubsub|numsub", 0, 0, 0, false, false, "none", false),
    ("pubsub|shardchannels", 0, 0, 0, false, false, "none", false),
    ("pubsub|shardnumsub", 0, 0, 0, false, false, "none", false),
    ("punsubscribe", 0, 0, 0, false, false, "none", false),
    ("quit", 0, 0, 0, false, false, "none", false),
    ("randomkey", 0, 0, 0, false, true, "none", false),
    ("readonly", 0, 0, 0, false, false, "none", false),
    ("readwrite", 0, 0, 0, false, false, "none", false),
    ("rename", 1, 2, 1, false, false, "none", false),
    ("renamenx", 1, 2, 1, false, false, "none", false),
    ("replconf", 0, 0, 0, false, false, "none", false),
    ("replicaof", 0, 0, 0, false, false, "none", false),
    ("reset", 0, 0, 0, false, false, "none", false),
    ("restore", 1, 1, 1, false, false, "none", false),
    ("restore-asking", 1, 1, 1, false, false, "none", false),
    ("role", 0, 0, 0, false, false, "none", false),
    ("rpop", 1, 1, 1, false, false, "none", false),
    ("rpoplpush", 1, 2, 1, false, false, "none", false),
    ("rpush", 1, 1, 1, false, false, "none", false),
    ("rpushx", 1, 1, 1, false, false, "none", false),
    ("sadd", 1, 1, 1, false, false, "none", false),
    ("save", 0, 0, 0, false, false, "none", false),
    ("scan", 0, 0, 0, false, false, "none", false),
    ("scard", 1, 1, 1, false, false, "none", false),
    ("script", 0, 0, 0, false, false, "none", true),
    ("script|debug", 0, 0, 0, false, false, "none", false),
    ("script|exists", 0, 0, 0, false, true, "agg_logical_and", false),
    ("script|flush", 0, 0, 0, false, true, "all_succeeded", false),
    ("script|help", 0, 0, 0, false, false, "none", false),
    ("script|kill", 0, 0, 0, false, true, "one_succeeded", false),
    ("script|load", 0, 0, 0, false, true, "all_succeeded", false),
    ("sdiff", 1, -1, 1, false, false, "none", false),
    ("sdiffstore", 1, -1, 1, false, false, "none", false),
    ("select", 0, 0, 0, false, false, "none", false),
    ("set", 1, 1, 1, false, false, "none", false),
    ("setbit", 1, 1, 1, false, false, "none", false),
    ("setex", 1, 1, 1, false, false, "none", false),
    ("setnx", 1, 1, 1, false, false, "none", false),
    ("setrange", 1, 1, 1, false, false, "none", false),
    ("shutdown", 0, 0, 0, false, false, "none", false),
    ("sinter", 1, -1, 1, false, false, "none", false),
    ("sintercard", 0, 0, 0, true, false, "none", false),
    ("sinterstore", 1, -1, 1, false, false, "none", false),
    ("sismember", 1, 1, 1, false, false, "none", false),
    ("slaveof", 0, 0, 0, false, false, "none", false),
    ("slowlog", 0, 0, 0, false, false, "none", true),
    ("slowlog|get", 0, 0, 0, false, true, "none", false),
    ("slowlog|help", 0, 0, 0, false, false, "none", false),
    ("slowlog|len", 0, 0, 0, false, true, "agg_sum", false),
    ("slowlog|reset", 0, 0, 0, false, true, "all_succeeded", false),
    ("smembers", 1, 1, 1, false, false, "none", false),
    ("smismember", 1, 1, 1, false, false, "none", false),
    ("smove", 1, 2, 1, false, false, "none", false),
    ("sort", 1, 1, 1, true, false, "none", false),
    ("sort_ro", 1, 1, 1, true, false, "none", false),
    ("spop", 1, 1, 1, false, false, "none", false),
    ("spublish", 1, 1, 1, false, false, "none", false),
    ("srandmember", 1, 1, 1, false, false, "none", false),
    ("srem", 1, 1, 1, false, false, "none", false),
    ("sscan", 1, 1, 1, false, false, "none", false),
    ("ssubscribe", 1, -1, 1, false, false, "none", false),
    ("strlen", 1, 1, 1, false, false, "none", false),
    ("subscribe", 0, 0, 0, false, false, "none", false),
    ("substr", 1, 1, 1, false, false, "none", false),
    ("sunion", 1, -1, 1, false, false, "none", false),
    ("sunionstore", 1, -1, 1, false, false, "none", false),
    ("sunsubscribe", 1, -1, 1, false, false, "none", false),
    ("swapdb", 0, 0, 0, false, false, "none", false),
    ("sync", 0, 0, 0, false, false, "none", false),
    ("time", 0, 0, 0, false, false, "none", false),
    ("touch", 1, -1, 1, false, false, "agg_sum", false),
    ("ttl", 1, 1, 1, false, false, "none", false),
    ("type", 1, 1, 1, false, false, "none", false),
    ("unlink", 1, -1, 1, false, false, "agg_sum", false),
    ("unsubscribe", 0, 0, 0, false, false, "none", false),
    ("unwatch", 0, 0, 0, false, false, "none", false),
    ("wait", 0, 0, 0, false, true, "agg_min", false),
    ("watch", 1, -1, 1, false, false, "none", false),
    ("xack", 1, 1, 1, false, false, "none", false),
    ("xadd", 1, 1, 1, false, false, "none", false),
    ("xautoclaim", 1, 1, 1, false, false, "none", false),
    ("xclaim", 1, 1, 1, false, false, "none", false),
    ("xdel", 1, 1, 1, false, false, "none", false),
    ("xgroup", 0, 0, 0, false, false, "none", true),
    ("xgroup|create", 2, 2, 1, false, false, "none", false),
    ("xgroup|createconsumer", 2, 2, 1, false, false, "none", false),
    ("xgroup|delconsumer", 2, 2, 1, false, false, "none", false),
    ("xgroup|destroy", 2, 2, 1, false, false, "none", false),
    ("xgroup|help", 0, 0, 0, false, false, "none", false),
    ("xgroup|setid", 2, 2, 1, false, false, "none", false),
    ("xinfo", 0, 0, 0, false, false, "none", true),
    ("xinfo|consumers", 2, 2, 1, false, false, "none", false),
    ("xinfo|groups", 2, 2, 1, false, false, "none", false),
    ("xinfo|help", 0, 0, 0, false, false, "none", false),
    ("xinfo|stream", 2, 2, 1, false, false, "none", false),
    ("xlen", 1, 1, 1, false, false, "none", false),
    ("xpending", 1, 1, 1, false, false, "none", false),
    ("xrange", 1, 1, 1, false, false, "none", false),
    ("xread", 0, 0, 0, true, false, "none", false),
    ("xreadgroup", 0, 0, 0, true, false, "none", false),
    ("xrevrange", 1, 1, 1, false, false, "none", false),
    ("xsetid", 1, 1, 1, false, false, "none", false),
    ("xtrim", 1, 1, 1, false, false, "none", false),
    ("zadd", 1, 1, 1, false, false, "none", false),
    ("zcard", 1, 1, 1, false, false, "none", false),
    ("zcount", 1, 1, 1, false, false, "none", false),
    ("zdiff", 0, 0, 0, true, false, "none", false),
    ("zdiffstore", 1, 1, 1, true, false, "none", false),
    ("zincrby", 1, 1, 1, false, false, "none", false),
    ("zinter", 0, 0, 0, true, false, "none", false),
    ("zintercard", 0, 0, 0, true, false, "none", false),
    ("zinterstore", 1, 1, 1, true, false, "none", false),
    ("zlexcount", 1, 1, 1, false, false, "none", false),
    ("zmpop", 0, 0, 0, true, false, "none", false),
    ("zmscore", 1, 1, 1, false, false, "none", false),
    ("zpopmax", 1, 1, 1, false, false, "none", false),
    ("zpopmin", 1, 1, 1, false, false, "none", false),
    ("zrandmember", 1, 1, 1, false, false, "none", false),
    ("zrange", 1, 1, 1, false, false, "none", false),
    ("zrangebylex", 1, 1, 1, false, false, "none", false),
    ("zrangebyscore", 1, 1, 1, false, false, "none", false),
    ("zrangestore", 1, 2, 1, false, false, "none", false),
    ("zrank", 1, 1, 1, false, false, "none", false),
    ("zrem", 1, 1, 1, false, false, "none", false),
    ("zremrangebylex", 1, 1, 1, false, false, "none", false),
    ("zremrangebyrank", 1, 1, 1, false, false, "none", false),
    ("zremrangebyscore", 1, 1, 1, false, false, "none", false),
    ("zrevrange", 1, 1, 1, false, false, "none", false),
    ("zrevrangebylex", 1, 1, 1, false, false, "none", false),
    ("zrevrangebyscore", 1, 1, 1, false, false, "none", false),
    ("zrevrank", 1, 1, 1, false, false, "none", false),
    ("zscan", 1, 1, 1, false, false, "none", false),
    ("zscore", 1, 1, 1, false, false, "none", false),
    ("zunion", 0, 0, 0, true, false, "none", false),
    ("zunionstore", 1, 1, 1, true, false, "none", false),
];

impl CommandBook {
    /// The built-in copy of Redis 7.0's metadata.
    pub(crate) fn built_in() -> CommandBook {
        let mut book = CommandBook::default();
        for &(name, first, last, step, movable, all_servers, response, has_subcommands) in BUILT_IN {
            book.infos.insert(
                name.to_string(),
                Info {
                    first,
                    last,
                    step,
                    movable,
                    all_servers,
                    response: response_of(response),
                    has_subcommands,
                },
            );
        }
        book
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

/// Differences between the built-in metadata and a live server's `COMMAND`
/// reply, for commands both know (for mredis's own tests).
#[cfg(feature = "table-examples")]
#[doc(hidden)]
pub fn built_in_differences(reply: &Value) -> Vec<String> {
    let live = CommandBook::parse(reply);
    let built = CommandBook::built_in();
    let mut out = Vec::new();
    for (name, b) in &built.infos {
        match live.infos.get(name) {
            None => out.push(format!("{name}: not on the server")),
            Some(l) => {
                let same = (
                    l.first,
                    l.last,
                    l.step,
                    l.movable,
                    l.all_servers,
                    l.response,
                    l.has_subcommands,
                ) == (
                    b.first,
                    b.last,
                    b.step,
                    b.movable,
                    b.all_servers,
                    b.response,
                    b.has_subcommands,
                );
                if !same {
                    out.push(format!("{name}: built-in {b:?}, server {l:?}"));
                }
            }
        }
    }
    for name in live.infos.keys() {
        if !built.infos.contains_key(name) {
            out.push(format!("{name}: not built in"));
        }
    }
    out.sort();
    out
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
}

/// The command table's entry for a command (and its subcommand).
fn table_entry(name: &str, sub: Option<&str>) -> Option<&'static crate::CommandSpec> {
    static BY_NAME: std::sync::LazyLock<HashMap<&'static str, &'static crate::CommandSpec>> =
        std::sync::LazyLock::new(|| crate::COMMANDS.iter().map(|c| (c.name, c)).collect());
    if let Some(sub) = sub {
        let full = format!("{name} {}", sub.to_ascii_uppercase());
        if let Some(c) = BY_NAME.get(full.as_str()) {
            return Some(c);
        }
    }
    BY_NAME.get(name).copied()
}

fn cannot(command: &str, why: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "mredis: command cannot be routed",
        format!("{command}: {why}"),
    ))
}

/// The keys of a command, from the server's metadata.
fn keys_of(info: &Info, name: &str, args: &[&[u8]], known: Option<Vec<Vec<u8>>>) -> Option<Vec<Vec<u8>>> {
    if matches!(name, "PUBLISH" | "SPUBLISH") {
        // Routed by channel, as go-redis does.
        return Some(args.get(1).map(|c| vec![c.to_vec()]).unwrap_or_default());
    }
    if info.movable {
        if matches!(
            name,
            "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO"
        ) {
            let n: usize = args
                .get(2)
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            return Some(args.iter().skip(3).take(n).map(|k| k.to_vec()).collect());
        }
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
    book: &CommandBook,
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
    let lower = name.to_ascii_lowercase();
    let top = book.infos.get(&lower);
    let sub = args.get(1).map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
    let info = match (top, &sub) {
        (Some(t), Some(s)) if t.has_subcommands => book.infos.get(&format!("{lower}|{s}")).or(top),
        (t, _) => t,
    };
    let entry = table_entry(&name, sub.as_deref().filter(|_| info.is_some()));
    // HSCAN, SSCAN and ZSCAN are omitted from MRedis's methods only because
    // MRedis has iterators in their place; their cursor belongs to one key,
    // on that key's server, so here they are key commands like any other
    // (redis-rs's `hscan`/`sscan`/`zscan` iterators send them).
    let cursor_of_one_key = matches!(name.as_str(), "HSCAN" | "SSCAN" | "ZSCAN");
    if let Some(e) = entry
        && e.class == RouteClass::Omitted
        && !cursor_of_one_key
    {
        return Err(cannot(e.name, e.reason.unwrap_or("not supported across servers")));
    }
    let Some(info) = info else {
        return Err(cannot(&name, "unknown to the servers' COMMAND table"));
    };
    let class = entry.map(|e| e.class);
    match class {
        Some(RouteClass::Multi) => {
            // Split and merged as the generated method does (the table's
            // `stride` and `merge`), whatever the server's tips say.
            let split = entry
                .and_then(|e| e.methods.iter().find_map(|m| Some((m.stride?, m.merge?))))
                .unwrap_or((1, Merge::Ordered));
            return Ok(Dispatch::Run(core.route_split(cmd, split.0, split.1)));
        }
        Some(RouteClass::All) => {
            // Every server, as the generated method; the table says how the
            // replies combine into the one reply redis-rs code expects.
            let reply = entry.and_then(|e| e.reply).unwrap_or(crate::Reply::PerServer);
            return Ok(Dispatch::All(reply.into()));
        }
        _ => {}
    }
    let Some(keys) = keys_of(info, &name, &args, known_keys) else {
        return Ok(Dispatch::GetKeys);
    };
    if keys.is_empty() {
        if info.all_servers {
            return Ok(Dispatch::All(info.response));
        }
        if class.is_none() && info.first == 0 && !info.movable {
            return Err(cannot(
                &name,
                "not in mredis's command table and without a key: it is not known which server, or whether \
                 every server, should run it; use MRedis::query_all (one reply per server) or MRedis::query_routed (a key's server)",
            ));
        }
        return Err(cannot(
            &name,
            "no key to route by (a keyless script or function needs MRedis::query_routed or query_all)",
        ));
    }
    Ok(Dispatch::Run(core.route_colocated(&name, &keys)?))
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
/// first): the servers' own, kept for later handles; for a user who may not
/// run COMMAND, Redis 7.0's built-in copy (not kept, so a later handle asks
/// again); otherwise the error.
pub(crate) fn book_from(
    cache: &std::sync::OnceLock<Arc<CommandBook>>,
    mut tried: Vec<RedisResult<Value>>,
) -> RedisResult<Arc<CommandBook>> {
    match tried.pop() {
        Some(Ok(v)) => {
            let book = Arc::new(CommandBook::parse(&v));
            Ok(cache.get_or_init(|| book).clone())
        }
        Some(Err(e)) if e.code() == Some("NOPERM") => Ok(Arc::new(CommandBook::built_in())),
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
    book: Arc<CommandBook>,
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
    pub(crate) fn new(mr: crate::MRedis, book: Arc<CommandBook>) -> Connection {
        Connection {
            mr,
            book,
            watched: None,
        }
    }

    fn plan(&self, cmd: &Cmd) -> RedisResult<Dispatch> {
        let core = self.mr.core();
        match plan(core, &self.book, cmd, None)? {
            Dispatch::GetKeys => {
                let keys: Vec<Vec<u8>> = redis::from_redis_value(self.mr.value_on(0, &getkeys_cmd(cmd))?)?;
                plan(core, &self.book, cmd, Some(keys))
            }
            p => Ok(p),
        }
    }

    /// Runs one command; server error replies are errors.
    fn exec(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let plan = self.plan(cmd)?;
        self.exec_plan(cmd, plan)
    }

    /// A pipeline of several commands, parsed (see `req_packed_commands`).
    fn pipeline(&mut self, cmd: &[u8], cmds: &[Cmd], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        if is_atomic(cmds) {
            return self.atomic(cmd, cmds, offset, count);
        }
        // In call order; runs of commands on one server each are sent
        // together, one pipeline per server.
        let mut values: Vec<Value> = Vec::with_capacity(cmds.len());
        let mut i = 0;
        // The plan of the command that ended the last batch (each command
        // is planned once; a plan may have cost a COMMAND GETKEYS).
        let mut pending: Option<Dispatch> = None;
        while i < cmds.len() {
            let mut batch: Vec<(usize, usize)> = Vec::new();
            while i < cmds.len() {
                let plan = match pending.take() {
                    Some(p) => p,
                    None => self.plan(&cmds[i])?,
                };
                match plan {
                    Dispatch::Run(Route::One { server, moves }) if moves.is_empty() => {
                        batch.push((i, server));
                        i += 1;
                    }
                    other => {
                        pending = Some(other);
                        break;
                    }
                }
            }
            if batch.is_empty() {
                let plan = match pending.take() {
                    Some(p) => p,
                    None => self.plan(&cmds[i])?,
                };
                let v = match self.exec_plan(&cmds[i], plan) {
                    Ok(v) => v,
                    Err(e) => error_value(&e).ok_or(e)?,
                };
                values.push(v);
                i += 1;
                continue;
            }
            let core = self.mr.core();
            let mut per: Vec<(usize, Vec<u8>, Vec<usize>)> = Vec::new();
            for (at, server) in batch {
                let packed = cmds[at].get_packed_command();
                match per.iter_mut().find(|p| p.0 == server) {
                    Some(p) => {
                        p.1.extend(packed);
                        p.2.push(at);
                    }
                    None => per.push((server, packed, vec![at])),
                }
            }
            let jobs: Vec<crate::client::Job<'_>> = per
                .iter()
                .map(|(server, packed, ats)| crate::client::Job {
                    server: *server,
                    packed,
                    replies: ats.len(),
                })
                .collect();
            let replies = self.mr.send_many(&jobs);
            place_batch(core, &per, replies, &mut values)?;
        }
        Ok(values.into_iter().skip(offset).take(count).collect())
    }

    /// Runs one command already planned.
    fn exec_plan(&mut self, cmd: &Cmd, plan: Dispatch) -> RedisResult<Value> {
        let core = self.mr.core().clone();
        match plan {
            Dispatch::Run(route) => self.mr.run::<Value>(route, cmd),
            Dispatch::All(response) => {
                let names: Vec<&str> = (0..core.all()).map(|i| core.name(i)).collect();
                let packed = cmd.get_packed_command();
                let jobs: Vec<crate::client::Job<'_>> = (0..core.all())
                    .map(|server| crate::client::Job {
                        server,
                        packed: &packed,
                        replies: 1,
                    })
                    .collect();
                let replies = self
                    .mr
                    .send_many(&jobs)
                    .into_iter()
                    .map(crate::client::first_reply)
                    .collect();
                merge_all(&crate::routing::command_name(cmd), response, &names, replies)
            }
            Dispatch::Scan(step, cursor) => {
                let walk = crate::scan::fleet_walk(&core);
                let Some(&(server, phase)) = walk.get(step) else {
                    return Err(cannot("SCAN", "this cursor was not made by this fleet"));
                };
                let reply = self.mr.value_on(server, &scan_cmd(cmd, cursor))?;
                scan_page(step, walk.len(), reply, |key| {
                    crate::scan::on_walk(&core, server, phase, key, None)
                })
            }
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
            Dispatch::Unwatch => match self.watched.take() {
                Some((server, mut con)) => {
                    let reply = con.req_command(cmd).and_then(Value::extract_error);
                    if reply.is_ok() {
                        self.mr.checkin(server, con);
                    }
                    reply
                }
                None => Ok(Value::Okay),
            },
            Dispatch::GetKeys => Err(cannot(
                &crate::routing::command_name(cmd),
                "its keys could not be found",
            )),
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
    book: Arc<CommandBook>,
}

impl std::fmt::Debug for AsyncConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mredis::aio::Connection")
            .field("client", &self.mr)
            .finish()
    }
}

impl AsyncConnection {
    pub(crate) fn new(mr: crate::aio::MRedis, book: Arc<CommandBook>) -> AsyncConnection {
        AsyncConnection { mr, book }
    }

    async fn plan(&self, cmd: &Cmd) -> RedisResult<Dispatch> {
        let core = self.mr.core();
        match plan(core, &self.book, cmd, None)? {
            Dispatch::GetKeys => {
                let keys: Vec<Vec<u8>> = redis::from_redis_value(self.mr.value_on(0, &getkeys_cmd(cmd)).await?)?;
                plan(core, &self.book, cmd, Some(keys))
            }
            p => Ok(p),
        }
    }

    async fn exec(&self, cmd: &Cmd) -> RedisResult<Value> {
        let plan = self.plan(cmd).await?;
        self.exec_plan(cmd, plan).await
    }

    /// Runs one command already planned.
    async fn exec_plan(&self, cmd: &Cmd, plan: Dispatch) -> RedisResult<Value> {
        let core = self.mr.core().clone();
        match plan {
            Dispatch::Run(route) => self.mr.run::<Value>(route, cmd).await,
            Dispatch::All(response) => {
                let names: Vec<&str> = (0..core.all()).map(|i| core.name(i)).collect();
                let replies = futures::future::join_all((0..core.all()).map(|i| self.mr.value_on(i, cmd))).await;
                merge_all(&crate::routing::command_name(cmd), response, &names, replies)
            }
            Dispatch::Scan(step, cursor) => {
                let walk = crate::scan::fleet_walk(&core);
                let Some(&(server, phase)) = walk.get(step) else {
                    return Err(cannot("SCAN", "this cursor was not made by this fleet"));
                };
                let reply = self.mr.value_on(server, &scan_cmd(cmd, cursor)).await?;
                scan_page(step, walk.len(), reply, |key| {
                    crate::scan::on_walk(&core, server, phase, key, None)
                })
            }
            Dispatch::Watch(_) => Err(cannot(
                "WATCH",
                "needs a connection of its own; use the sync handle (MRedis::get_connection) or MRedis::transaction",
            )),
            Dispatch::Unwatch => Ok(Value::Okay),
            Dispatch::GetKeys => Err(cannot(
                &crate::routing::command_name(cmd),
                "its keys could not be found",
            )),
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
        // One command at a time would cost a round trip each: commands on
        // one server's keys go in that server's pipeline, all servers at
        // once; other commands run in call order between them.
        let mut values: Vec<Value> = Vec::with_capacity(cmds.len());
        let mut i = 0;
        // The plan of the command that ended the last batch (planned once).
        let mut pending: Option<Dispatch> = None;
        while i < cmds.len() {
            let mut per: Vec<(usize, redis::Pipeline, Vec<usize>)> = Vec::new();
            while i < cmds.len() {
                let plan = match pending.take() {
                    Some(p) => p,
                    None => self.plan(cmds[i]).await?,
                };
                match plan {
                    Dispatch::Run(Route::One { server, moves }) if moves.is_empty() => {
                        match per.iter_mut().find(|p| p.0 == server) {
                            Some(p) => {
                                p.1.add_command(cmds[i].clone());
                                p.2.push(i);
                            }
                            None => {
                                let mut p = redis::pipe();
                                p.add_command(cmds[i].clone());
                                per.push((server, p, vec![i]));
                            }
                        }
                        i += 1;
                    }
                    other => {
                        pending = Some(other);
                        break;
                    }
                }
            }
            if per.is_empty() {
                let plan = match pending.take() {
                    Some(p) => p,
                    None => self.plan(cmds[i]).await?,
                };
                let v = match self.exec_plan(cmds[i], plan).await {
                    Ok(v) => v,
                    Err(e) => error_value(&e).ok_or(e)?,
                };
                values.push(v);
                i += 1;
                continue;
            }
            let replies =
                futures::future::join_all(per.iter().map(|(server, p, _)| self.mr.pipeline_on(*server, p))).await;
            place_batch(&core, &per, replies, &mut values)?;
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
