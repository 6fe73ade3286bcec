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
//! # Ok(()) }
//! ```
//!
//! The async client is [`aio::MRedis`]. Every method is generated from the
//! command table `commands.toml`; [`commands`] lists every Redis command
//! with what mredis does with it (routed, fan-out, scatter-gather,
//! co-located, or omitted and why), and [`COMMANDS`] has the same as data.
//!
//! ## Placement
//!
//! The default placement is the original MRedis's:
//! `((crc32(key) >> 16) & 0x7fff) % number_of_servers` over the raw key
//! bytes, servers in configuration order. Hash tags (`{user:1}:cart`) are off
//! by default, because the original had none; turn them on with
//! [`Builder::hash_tags`] to co-locate related keys.
//!
//! # Every command
//!
//! The [`commands`] module lists every Redis command by class, with the
//! reason for each one that has no method.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod aio;
mod client;
mod config;
mod error;
mod fleet_config;
mod migration;
mod per_server;
mod pipeline;
pub mod placement;
pub mod rebalance;
mod routing;
mod scan;
mod script;
mod spec;

pub use client::MRedis;
pub use config::{Builder, IntoServer, Server, redact_url};
pub use fleet_config::{builder_from_toml, builder_from_twemproxy_yaml, server_from_twemproxy_line};
pub use per_server::{FanOutError, PerServer};
pub use pipeline::{FleetPipeline, KeyPipeline};
pub use placement::Mode;
pub use scan::ScanIter;
pub use script::{Script, ScriptInvocation};
#[cfg(feature = "table-examples")]
pub use spec::examples;
pub use spec::{COMMANDS, CommandSpec, Example, MethodSpec, RouteClass};

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// Every Redis command and what mredis does with it (generated from `commands.toml`).
///
#[doc = mredis_macros::command_docs!()]
pub mod commands {}
