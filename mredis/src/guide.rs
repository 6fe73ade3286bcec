//! The guide: every feature of mredis at length, one chapter per topic.
//!
//! The README is the front page; these chapters hold the details. Each is a
//! module with documentation only, so it reads on docs.rs beside the API,
//! and every Rust example in it is compiled as a doc test.
//!
//! | chapter | what it covers |
//! |---|---|
//! | [`placement`] | placement modes and which server owns a key (`server_for`, `mredis locate`), weights, names, hash tags |
//! | [`commands`] | the command table, whole-fleet operations (SCAN, `pipeline_all`, transactions, scripts), omitted commands |
//! | [`handles`] | routed connection handles: code written for a redis-rs connection, run on the fleet |
//! | [`pubsub`] | publishing and one subscriber for the whole fleet |
//! | [`sentinel`] | replicas and Sentinel: failover, read policies, writes acknowledged by replicas |
//! | [`resharding`] | adding or removing servers: migration-aware clients, `mredis rebalance`, the census, fencing, exit codes |
//! | [`caching`] | client-side caching: hot keys read from memory, and what stays correct |
//! | [`health`] | health checks and ejection, tracing, counting connections |
//! | [`errors`] | what an error means; failures, timeouts, security, ACL rights |
//! | [`cli`] | the `mredis` tool and fleet files |
//! | [`testing`] | the test suite, how CI runs it, the repository's layout |

#[doc = include_str!("guide/placement.md")]
pub mod placement {}

#[doc = include_str!("guide/commands.md")]
pub mod commands {}

#[doc = include_str!("guide/handles.md")]
pub mod handles {}

#[doc = include_str!("guide/pubsub.md")]
pub mod pubsub {}

#[doc = include_str!("guide/sentinel.md")]
pub mod sentinel {}

#[doc = include_str!("guide/resharding.md")]
pub mod resharding {}

#[doc = include_str!("guide/caching.md")]
pub mod caching {}

#[doc = include_str!("guide/health.md")]
pub mod health {}

#[doc = include_str!("guide/errors.md")]
pub mod errors {}

#[doc = include_str!("guide/cli.md")]
pub mod cli {}

#[doc = include_str!("guide/testing.md")]
pub mod testing {}
