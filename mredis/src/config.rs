//! The [`Builder`]: a server list and options, built into a sync or async
//! client.

use std::time::Duration;

use redis::{RedisError, RedisResult};

use crate::options::{OldConfig, Options};
use crate::placement::Mode;
use crate::server::{IntoServer, Server, collect_servers, config_error};

/// Builds an [`MRedis`](crate::MRedis) or [`aio::MRedis`](crate::aio::MRedis)
/// with options.
///
/// ```no_run
/// # fn main() -> redis::RedisResult<()> {
/// use std::time::Duration;
/// let mr = mredis::MRedis::builder()
///     .servers(["redis://10.0.0.1:6379/0", "redis://10.0.0.2:6379/0"])
///     .connect_timeout(Duration::from_millis(500))
///     .hash_tags(true)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Builder {
    servers: Vec<Server>,
    error: Option<RedisError>,
    options: Options,
}

impl Builder {
    /// A builder with default options and no servers.
    pub fn new() -> Self {
        Builder::default()
    }

    /// Sets the server list (replacing any earlier one).
    pub fn servers<I>(mut self, servers: I) -> Self
    where
        I: IntoIterator,
        I::Item: IntoServer,
    {
        match collect_servers(servers) {
            Ok(list) => self.servers = list,
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// How long to wait for a TCP connection (default 2 s). A server that is
    /// down or blackholed fails its commands after this, naming the server.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// How long to wait for a reply (default 5 s; `None` waits forever). A
    /// blocking command (BLPOP, XREAD BLOCK, ...) waits its block time plus
    /// this; one that blocks until answered (block time 0) has no client
    /// deadline.
    pub fn response_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.options.response_timeout = timeout;
        self
    }

    /// Connections kept per server by the sync client (default 16); for the
    /// async client, the dedicated connections of blocking commands kept
    /// idle per server.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.options.pool_size = size.max(1);
        self
    }

    /// Hash tags: when on, only the part of a key inside the first non-empty
    /// `{...}` is hashed (the Redis Cluster rule), so `{user:42}:cart` and
    /// `{user:42}:orders` share a server. Off by default in `standard`
    /// placement, because the original MRedis hashed whole keys and data it
    /// placed must still be found; on by default in `rendezvous` (as go-redis).
    pub fn hash_tags(mut self, on: bool) -> Self {
        self.options.hash_tags = Some(on);
        self
    }

    /// The placement mode (default [`Mode::Standard`], the original MRedis).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.options.mode = mode;
        self
    }

    /// The largest argument (key or value) mredis sends, in bytes (default
    /// 512 MiB, the server's default `proto-max-bulk-len`). A larger one is
    /// an error before anything is sent; a server would close the
    /// connection instead. Set it to the servers' `proto-max-bulk-len` if
    /// you changed that.
    pub fn max_arg_size(mut self, bytes: usize) -> Self {
        self.options.max_arg_size = bytes;
        self
    }

    /// Turns on health checking (off by default): a background thread
    /// checks every server and keeps its state ([`MRedis::health`](crate::MRedis::health)),
    /// with events for your callback; with [`HealthCheck::eject`](crate::health::HealthCheck::eject)
    /// a down server's keys go to the others (ketama and rendezvous only;
    /// refused for other placements). See the [`health`](crate::health) module.
    pub fn health_check(mut self, options: crate::health::HealthCheck) -> Self {
        self.options.health = Some(options);
        self
    }

    /// Turns on client-side caching for the async client (off by default),
    /// keeping at most `max_bytes` of keys, commands and replies in
    /// memory: the reads the command table marks cacheable (GET, HGET,
    /// HGETALL, LRANGE, SMEMBERS, ZRANGE, ... of one key; see
    /// [`CommandSpec::cacheable`](crate::CommandSpec::cacheable)) are
    /// answered from memory until the server says the key changed
    /// (Redis 6.0 or later: `CLIENT TRACKING` with `REDIRECT`, one
    /// invalidation listener and one tracked connection per server). The
    /// [`cache`](crate::cache) module states the guarantee; per call,
    /// [`aio::MRedis::uncached`](crate::aio::MRedis::uncached) reads from
    /// the server; [`aio::MRedis::cache_stats`](crate::aio::MRedis::cache_stats)
    /// counts hits, misses, invalidations and evictions. The sync client
    /// ignores it (its calls are not cached).
    pub fn client_cache(mut self, max_bytes: usize) -> Self {
        self.options.cache = Some(max_bytes);
        self
    }

    /// Where read-only commands go on shards with replicas (default
    /// [`ReadFrom::Primary`](crate::ReadFrom::Primary)); per call, see
    /// [`MRedis::reading_from`](crate::MRedis::reading_from). Only commands
    /// the command table marks read-only go to a replica, and a replica
    /// may lag: read a key you just wrote from the primary.
    pub fn read_from(mut self, policy: crate::ReadFrom) -> Self {
        self.options.read_from = policy;
        self
    }

    /// Writes acknowledged by replicas (off by default): every request
    /// with a write (a command, a pipeline, each server's part of a split
    /// command, a transaction's EXEC, whichever door it takes: the
    /// client's methods, [`MRedis::transaction`](crate::MRedis::transaction),
    /// `redis::transaction` or an atomic `redis::pipe()` on a handle) is
    /// followed on the same connection by `WAIT replicas timeout`, and
    /// counts as done only when that many replicas have it.
    /// If fewer acknowledge it within `timeout`, the call fails with an
    /// error saying the write happened on the primary but may be lost on
    /// a failover. With it, a write the client reported done survives a
    /// failover to a replica that acknowledged it (Sentinel promotes the
    /// most up-to-date replica); plain replication promises nothing.
    ///
    /// - **The timeout**: a replica counts only once it has acknowledged
    ///   the primary's offset, which it does about once a second; a
    ///   replica that has just finished its sync may take up to a second
    ///   to count. A timeout under a second can fail the first writes
    ///   after a replica (re)joins: 1 to 2 s is a safe choice. It is also
    ///   how long a write waits when a replica is down.
    /// - **The async client** sends each write and its `WAIT` on a
    ///   dedicated connection (from a small per-server pool, as blocking
    ///   commands), never on the shared multiplexed one: a write waiting
    ///   for replicas holds up no other request.
    pub fn replica_acks(mut self, replicas: u32, timeout: Duration) -> Self {
        self.options.acks = Some(crate::Acks { replicas, timeout });
        self
    }

    /// How long a request that a Sentinel shard's primary refused, or
    /// could not receive (a refused connection, `-READONLY`, `-LOADING`),
    /// waits for Sentinel to name a new primary before it is sent again
    /// there (default 5 s). Set it above your sentinels'
    /// `down-after-milliseconds` plus the failover time to see no error
    /// during a failover.
    pub fn failover_wait(mut self, wait: Duration) -> Self {
        self.options.failover_wait = wait;
        self
    }

    /// Reconnect attempts of the async client per failed connection (default 1).
    pub fn reconnect_retries(mut self, retries: usize) -> Self {
        self.options.retries = retries;
        self
    }

    /// Adds the application's own part to the name every connection of
    /// this client gives itself (`CLIENT SETNAME`). mredis names each
    /// connection `mredis:<fingerprint>[:from:<fingerprint>]` after the
    /// placement it routes by (and, while migration-aware, the one it is
    /// moving from), so `mredis clients` and `mredis rebalance` can tell
    /// which configuration every client runs; with a part the name is
    /// `mredis:<fingerprint>[:from:<fingerprint>]:<part>`. Printable ASCII,
    /// no spaces; anything else is an error at build.
    pub fn client_name(mut self, part: impl Into<String>) -> Self {
        let part = part.into();
        match crate::placement::fingerprint::check_user_part(&part) {
            Ok(()) => self.options.client_name = Some(part),
            Err(e) => self.error = Some(config_error(e)),
        }
        self
    }

    /// Turns connection naming on (the default) or off. Off, connections
    /// keep the server's default (no name), and `mredis rebalance` sees
    /// this client's connections as unknown (a warning, or a refusal with
    /// `--refuse-unknown`).
    pub fn name_connections(mut self, on: bool) -> Self {
        self.options.name_connections = on;
        self
    }

    /// Makes this a migration-aware configuration: the fleet is moving from
    /// `old` (its servers and placement; its timeouts are ignored) to this
    /// one. Keys whose owner is the same in both are routed as usual. A
    /// command on a key whose owner changes runs on its old server while
    /// the key is still there (atomically with that check, by a Lua guard)
    /// and on its new server once it is gone from the old one, so a key is
    /// never served from two places and keys created during the move are
    /// created on their new server. The client never moves a key itself:
    /// `mredis rebalance` moves them (MIGRATE, atomic on the server). Fan-out
    /// commands reach the servers of both configurations. Switch every
    /// client to this (at run time with [`MRedis::reconfigure`](crate::MRedis::reconfigure),
    /// or by a deploy), then run `mredis rebalance --from OLD --to NEW`: it
    /// refuses to start while a client is not migration-aware for this move
    /// (its connections are named after both configurations, see
    /// [`crate::placement::fingerprint`]). Once the rebalance has verified
    /// the move it leaves a marker; within about a second
    /// ([`crate::finish::POLL`]) this client stops its migration checks and
    /// a command on a moved key costs one round trip again
    /// ([`crate::finish`]). See the crate docs, "Adding or removing servers".
    ///
    /// The old servers must be able to reach the new ones at the addresses
    /// given here (the rebalance's MIGRATE connects from server to server).
    pub fn migrating_from(mut self, old: Builder) -> Self {
        match old.into_parts() {
            Ok((servers, options)) => {
                self.options.migrating_from = Some(std::sync::Arc::new(OldConfig { servers, options }));
            }
            Err(e) => {
                self.error = Some(RedisError::from((
                    e.kind(),
                    "mredis: invalid configuration",
                    format!("the configuration migrated from: {}", e.detail().unwrap_or("invalid")),
                )))
            }
        }
        self
    }

    /// The servers and options, validated.
    pub(crate) fn into_parts(self) -> RedisResult<(Vec<Server>, Options)> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.servers.is_empty() {
            return Err(config_error(
                "the server list is empty; give at least one server".to_string(),
            ));
        }
        Ok((self.servers, self.options))
    }

    /// Builds the sync client. Connections are made lazily, so a server that
    /// is down does not stop the others from being used.
    pub fn build(self) -> RedisResult<crate::MRedis> {
        let (servers, options) = self.into_parts()?;
        crate::MRedis::from_parts(servers, options)
    }

    /// Builds the async client (needs a running tokio runtime).
    pub async fn build_async(self) -> RedisResult<crate::async_client::MRedis> {
        let (servers, options) = self.into_parts()?;
        crate::async_client::MRedis::from_parts(servers, options)
    }
}

impl crate::MRedis {
    /// A [`Builder`] for options (timeouts, hash tags, placement mode).
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// Switches this client, and every clone of it, to the configuration
    /// `builder` describes: another server list, placement, migration
    /// (for example from plain servers to [`Builder::migrating_from`] and,
    /// after the rebalance, to the plain new list), and its other options
    /// (timeouts, pool size, read policy, health checking, connection
    /// names). The builder's `build` is not called; its servers and
    /// options are.
    ///
    /// - **Calls.** Every call takes the configuration in force when it
    ///   begins and finishes on it, so calls in flight finish on the old
    ///   one and none fails because of the switch. Every call that begins
    ///   after this returns, in every clone, [`reading_from`](crate::MRedis::reading_from)
    ///   view and [routed handle](crate::MRedis::get_connection), uses the
    ///   new one. Pipelines made before and run after are routed again on
    ///   the new one when they run. A [`Subscriber`](crate::Subscriber)
    ///   follows: channels whose owner changed are subscribed on their new
    ///   owner (see [`pubsub`](crate::pubsub), "After a reconfiguration").
    ///   A [`ScanIter`](crate::ScanIter) begun before runs to its end on
    ///   the old configuration.
    /// - **Connections.** The pooled connections to servers that stay (the
    ///   same address, database, user, password, protocol and TLS) are kept,
    ///   not reopened, and renamed (`CLIENT SETNAME`) to the new
    ///   configuration's name: the idle ones before this returns (each
    ///   server's within the connect timeout; one that fails is dropped),
    ///   the ones in use by a call of the old configuration when it gives
    ///   them back. New names are given only after the switch, so a
    ///   connection never carries the new name while a call starting on it
    ///   could route by the old configuration. Shards with replicas or
    ///   Sentinel get new connections. The other servers' connections close
    ///   when the last call of the old configuration ends.
    /// - **Background work** (health checking, Sentinel watching, latency
    ///   probing) is the new configuration's; the old one's stops when its
    ///   last call ends.
    /// - **Errors.** An invalid configuration (an empty or malformed server
    ///   list, ejection with a migration, ...) is an error, and the
    ///   configuration in force stays as it was.
    ///
    /// Reconfigurations of one client run one after the other.
    ///
    /// ```no_run
    /// # fn main() -> redis::RedisResult<()> {
    /// use mredis::Builder;
    /// let (a, b, c, d) = ("redis://10.0.0.1/0", "redis://10.0.0.2/0", "redis://10.0.0.3/0", "redis://10.0.0.4/0");
    /// let mr = Builder::new().servers([a, b, c]).build()?;
    /// // Adding D: first every client migration-aware...
    /// mr.reconfigure(Builder::new().servers([a, b, c, d]).migrating_from(Builder::new().servers([a, b, c])))?;
    /// // ... `mredis rebalance` ..., then the plain new list.
    /// mr.reconfigure(Builder::new().servers([a, b, c, d]))?;
    /// # Ok(()) }
    /// ```
    pub fn reconfigure(&self, builder: Builder) -> RedisResult<()> {
        let (servers, options) = builder.into_parts()?;
        self.reconfigure_parts(servers, options)
    }
}

impl crate::async_client::MRedis {
    /// A [`Builder`] for options; finish with `build_async().await`.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// Switches this client, and every clone of it, to the configuration
    /// `builder` describes, as the sync client's
    /// [`MRedis::reconfigure`](crate::MRedis::reconfigure) does (the same
    /// rules for calls in flight, connections, background work and
    /// errors). The shared multiplexed connections to servers that stay
    /// are kept when the connection options (connect and response
    /// timeouts, reconnect retries) are unchanged, and renamed before this
    /// returns (each within the connect timeout); a change of those
    /// options opens new ones. The dedicated connections of blocking
    /// commands are kept likewise.
    ///
    /// An `async fn`: it waits for the renames. Needs a tokio runtime (as
    /// the client does).
    pub async fn reconfigure(&self, builder: Builder) -> RedisResult<()> {
        let (servers, options) = builder.into_parts()?;
        self.reconfigure_parts(servers, options).await
    }
}
