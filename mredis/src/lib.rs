//! # mredis: several Redis servers behaving like one
//!
//! `mredis` routes each single-key command to the server that owns the key,
//! sends server-wide commands (KEYS, DBSIZE, INFO, FLUSHDB, ...) to every
//! server and returns one result per server ([`PerServer`]), splits
//! multi-key commands (MGET, MSET, DEL, ...) by server where that is safe,
//! and leaves out the commands that cannot work across servers, so misuse
//! does not compile. It is the Rust successor of the Python MRedis and
//! places keys exactly where that library did.
//!
//! Method names and signatures are those of redis-rs 1.x (`Commands` /
//! `AsyncCommands`), so switching is a type change:
//!
//! ```no_run
//! # fn main() -> redis::RedisResult<()> {
//! let mr = mredis::MRedis::new(["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/0"])?;
//! mr.set::<_, _, ()>("k", 42)?;
//! let v: Option<String> = mr.get("k")?;
//! mr.set_ex::<_, _, ()>("session", "v", 10)?;
//! let n: i64 = mr.incr("counter", 1)?;
//! let per_server: mredis::PerServer<Vec<String>> = mr.keys("k*")?;
//! // The fleet as one: a total, or one list.
//! let keys: usize = mr.dbsize::<usize>()?.sum();
//! let all: Vec<String> = per_server.flatten();
//! // Which server owns a key (`host:port:db`).
//! let owner: String = mr.server_for("k")?;
//! # Ok(()) }
//! ```
//!
//! [`MRedis::server_for`] names the server that owns a key (as `mredis
//! locate` prints it).
//!
//! The async client is [`aio::MRedis`]. Every method is generated from the
//! command table `commands.toml`; [`commands`] lists every Redis command
//! with what mredis does with it (routed, fan-out, scatter-gather,
//! co-located, or omitted and why), and [`COMMANDS`] has the same as data.
//!
//! The [`guide`] explains every feature at length, one chapter per topic
//! (placement, commands, handles, Pub/Sub, Sentinel, resharding, health,
//! errors, the CLI, testing).
//!
//! ## Placement
//!
//! The default placement is the original MRedis's:
//! `((crc32(key) >> 16) & 0x7fff) % number_of_servers` over the raw key
//! bytes, servers in configuration order. Hash tags (`{user:1}:cart`) are off
//! by default, because the original had none; turn them on with
//! [`Builder::hash_tags`] to co-locate related keys. twemproxy (ketama,
//! modula) and go-redis Ring (rendezvous) placements are [`Mode`]s; the
//! [`placement`] module has the exact rules.
//!
//! ## Replicas and Sentinel
//!
//! A shard can be a primary with fixed replicas
//! ([`Server::with_replicas`]) or a Sentinel master name
//! ([`Server::sentinel`]); it is placed by its name, so a failover moves
//! no key. A background thread follows each Sentinel shard (asked at
//! build, every 2 s, on `+switch-master` and when a request fails as a
//! failover fails; every exchange with a deadline), and every path (sync,
//! async, handles, pipelines, blocking commands, subscribers, health
//! checks) moves to the new primary. A request the primary refused
//! (`-READONLY`, `-LOADING`, `-MASTERDOWN`) or that could not be sent
//! waits up to [`Builder::failover_wait`] for a new primary and is sent
//! there once, as is a read that got no reply; a write that was sent and
//! got no reply may have run, so it is not sent again and its error says
//! so. Read policies: [`ReadFrom`] ([`Builder::read_from`],
//! [`MRedis::reading_from`]): the primary, a replica in turn, replicas
//! only, or [`ReadFrom::LowestLatency`], the node of the shard (primary
//! or replica) that answers fastest, as a background prober measures it
//! ([`Server::latencies`]); only commands the table marks read-only go
//! to a replica, and a replica may lag. Writes acknowledged by replicas:
//! [`Builder::replica_acks`] (`WAIT` after each request with a write; too
//! few acknowledgements is an error saying the write may be lost on a
//! failover). [`rebalance`] moves keys between such
//! shards in steps their replicas acknowledge, marking each key as moving
//! on its source meanwhile (migration-aware calls on a marked key wait,
//! at most 10 s), and follows a failover of either side by itself; see
//! its module docs, "Shards with replicas".
//!
//! ## Errors and timeouts
//!
//! - Server replies (`WRONGTYPE`, `OOM`, `NOSCRIPT`, ...) come back
//!   unchanged with their [`code`](redis::RedisError::code) on every path.
//! - Keys of one command on different servers: code `CROSSSLOT`, nothing
//!   sent. Keys split by a running migration: code `TRYAGAIN`, nothing run,
//!   retryable.
//! - A call on several servers that fails on some names each failed server
//!   and those that ran their part; fan-out keeps the answers it got
//!   ([`FanOutError`]).
//! - Connection errors name the server: refused (at once, nothing sent), no
//!   reply within the response timeout (the command may have run), or
//!   authentication failed. Timeouts: [`Builder::connect_timeout`] (2 s),
//!   [`Builder::response_timeout`] (5 s), one deadline for a whole call on
//!   several servers.
//! - [`error_text`] gives any error as one line in words, naming the server
//!   (what the `mredis` tool prints); redis-rs's `Display` frames the same
//!   words with the error kind's Rust name (`mredis - AuthenticationFailed:
//!   ...`).
//! - No password appears in any `Debug`, `Display` or error text; mredis
//!   writes no logs (but for the `watch` feature's file watcher, which
//!   logs a refused fleet file with `tracing`, without any password).
//!
//! ## Adding or removing servers
//!
//! A client built with [`Builder::migrating_from`] serves a fleet that is
//! moving from one server list to another: a key whose owner changes is
//! served by its old server while it is there (checked atomically, in one
//! Lua script, with the command) and by its new server once
//! [`rebalance`](rebalance::rebalance) (or `mredis rebalance`) has moved
//! it. The procedure: deploy the migration-aware configuration to every
//! client, run the rebalance, deploy the new configuration.
//!
//! A running client switches configuration with [`MRedis::reconfigure`]
//! (async: [`aio::MRedis::reconfigure`]), for itself and every clone:
//! calls in flight finish on the old configuration, the next ones use the
//! new one, and the connections to servers that stay are kept and renamed.
//! With the `watch` feature, `watch_fleet_file` does it whenever a fleet
//! file changes.
//!
//! ## Pub/Sub, health, tracing
//!
//! [`MRedis::subscriber`] (async: [`aio::MRedis::subscriber`]) subscribes
//! across the fleet ([`pubsub`]). [`Builder::health_check`] turns on
//! background health checking and, for ketama or rendezvous fleets,
//! optional ejection ([`health`]). The `tracing` feature adds a span per
//! command.
//!
//! ## Features
//!
//! - `tls`: `rediss://` URLs (rustls); `Server::with_tls_root_cert` for a
//!   private CA. `tls-insecure`: `#insecure` URLs, for tests.
//! - `tracing`: one span per command with OpenTelemetry database attributes
//!   (`db.system.name`, `db.operation.name`, `server.address`, ...), the
//!   route class and the outcome, and a child span per server; never keys,
//!   values or credentials.
//! - `cli`: the `mredis` command-line tool (`locate`, `stats`, `rebalance`)
//!   over TOML fleet files ([`builder_from_toml`]) or twemproxy YAML pools
//!   ([`builder_from_twemproxy_yaml`]).
//! - `watch`: `watch_fleet_file` reloads a TOML fleet file when it changes
//!   and [reconfigures](MRedis::reconfigure) the client (the `notify`
//!   crate; refused changes are logged with `tracing`).
//! - `bloom`: the Bloom filter methods (`bf_add`, `bf_exists`, `bf_reserve`,
//!   ...), as redis-rs's feature of that name; the servers need the
//!   RedisBloom module (or valkey-bloom).
//! - `vector-sets`: the vector set methods (`vadd`, `vsim`, `vcard`, ...), as
//!   redis-rs's feature of that name; the servers need Redis 8.0 or newer.
//!
//! # Every command
//!
//! The [`commands`] module lists every Redis command by class, with the
//! reason for each one that has no method.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod aio;
mod async_client;
mod background;
pub mod cache;
mod client;
mod command_book;
mod config;
mod connect;
mod driver;
mod error;
mod exec;
mod fence;
pub mod finish;
mod fleet_config;
pub mod guide;
pub mod handle;
pub mod health;
mod latency;
mod merge;
mod migration;
mod mover;
mod multiplexed;
mod options;
mod per_server;
mod pipeline;
pub mod placement;
pub mod pubsub;
pub mod rebalance;
mod replicas;
mod routed;
mod routing;
mod scan;
mod script;
mod sentinel;
mod server;
mod shard;
mod spec;
mod task;
mod telemetry;
#[cfg(feature = "watch")]
#[cfg_attr(docsrs, doc(cfg(feature = "watch")))]
pub mod watch;

pub use cache::CacheStats;
pub use client::MRedis;
pub use config::Builder;
pub use connect::ConnectionsOpened;
pub use error::error_text;
pub use fleet_config::{builder_from_toml, builder_from_twemproxy_yaml, server_from_twemproxy_line};
pub use handle::Connection;
pub use options::{Acks, ReadFrom};
pub use per_server::{FanOutError, PerServer};
pub use pipeline::{FleetPipeline, KeyPipeline};
pub use placement::Mode;
pub use pubsub::{Event, Message, Subscriber};
pub use scan::ScanIter;
pub use script::{Script, ScriptInvocation};
pub use server::{IntoServer, Server, redact_url};
pub use shard::{Failover, Latency};
#[cfg(feature = "table-examples")]
pub use spec::examples;
pub use spec::{
    Access, Block, BlockAt, COMMANDS, CommandKeys, CommandSpec, Example, KeySpec, Merge, MethodSpec, Reply, RouteClass,
    TimeUnit,
};
#[cfg(feature = "watch")]
pub use watch::{FleetWatch, watch_fleet_file, watch_fleet_file_async, watch_fleet_file_with};

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// Every Redis command and what mredis does with it (generated from `commands.toml`).
///
#[doc = mredis_macros::command_docs!()]
pub mod commands {}
