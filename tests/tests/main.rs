//! The integration tests: one test binary, a module per suite.
//!
//! Every suite used to be a test binary of its own (36 of them, each
//! linking mredis, redis, tokio, rustls and tracing, run one after another);
//! as modules of one binary they link once, and the suites that mostly wait
//! on servers and timeouts overlap. `cargo test --workspace` runs them all
//! (the binary runs more tests at once than the machine has cores: see
//! `.cargo/config.toml`); one suite runs with
//! `cargo test -p mredis-tests --test integration -- shards::`.
//!
//! Suites that need a quiet machine (Sentinel failovers, the health
//! checker's and the latency prober's timing) take
//! [`mredis_tests::quiet`] first: at most three run at once, never beside
//! the compile-fail build, while the other tests go on beside them (see
//! `.config/nextest.toml` for the same groups under `cargo nextest run`).

// The API: what a caller sees, against real servers.
mod architecture;
mod async_client;
mod client_core;
mod compile_fail;
mod connections;
mod error_codes;
mod error_texts;
mod fleet;
mod handle;
mod handle_agrees;
mod handle_memory;
mod hostile_input;
mod more_methods;
mod multi_key;
mod pubsub;
mod redis_rs_port;
mod security;
mod table_vs_server;
mod tracing_spans;
mod twemproxy_compat;
mod usability;

// Faults: servers stopped, killed, frozen or failed over under the client.
mod connection_errors;
mod connection_faults;
mod failures;
mod health;
mod latency;
mod pubsub_faults;
mod sentinel_harness;
mod shards;
mod soak;
mod write_doors;

// Operations: moving keys, reconfiguring, the census.
mod cache;
mod census;
mod durable_rebalance;
mod fencing;
mod migration;
mod rebalance;
mod reconfigure;
