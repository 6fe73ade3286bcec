//! The latency prober of [`ReadFrom::LowestLatency`](crate::ReadFrom::LowestLatency):
//! one background thread per client configuration whose shards have
//! replicas (or Sentinel) sends `PING` to every node of every shard every
//! [`INTERVAL`], on connections of its own with a [`DEADLINE`], and
//! records each round trip (or that the node did not answer) in the
//! shard's state ([`crate::shard`]), where the shared, I/O-free choice
//! (`crate::replicas`) reads it. No lock is held while a `PING` is out:
//! the node list is a snapshot taken before each shard's round.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, RedisResult};

use crate::server::Server;

/// Time between the starts of two rounds.
pub(crate) const INTERVAL: Duration = Duration::from_millis(500);

/// How long a node has to accept a connection and to answer one `PING`.
pub(crate) const DEADLINE: Duration = Duration::from_secs(1);

/// How often a sleeping prober looks whether it should stop.
const TICK: Duration = Duration::from_millis(50);

/// The prober of one client configuration; stops when dropped.
#[derive(Debug)]
pub(crate) struct Prober {
    stop: Arc<AtomicBool>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Prober {
    /// Stops the prober's thread (at its next tick).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts the prober for the shards among `servers` (none with replicas
/// or Sentinel: no thread).
pub(crate) fn start(servers: &[Server], name: Option<String>) -> RedisResult<Option<Prober>> {
    let shards: Vec<Server> = servers
        .iter()
        .filter(|s| {
            s.shard()
                .is_some_and(|sh| sh.master().is_some() || !sh.replicas().is_empty())
        })
        .cloned()
        .collect();
    if shards.is_empty() {
        return Ok(None);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("mredis-latency".to_string())
        .spawn(move || run(&shards, &flag, name.as_deref()))
        .map_err(|e| crate::error::client_error(format!("cannot start the latency probing thread: {e}")))?;
    Ok(Some(Prober { stop }))
}

fn run(shards: &[Server], stop: &AtomicBool, name: Option<&str>) {
    // Per shard and node address, the connection kept between rounds.
    let mut cons: Vec<(usize, ConnectionAddr, redis::Connection)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        for (i, server) in shards.iter().enumerate() {
            let Some(shard) = server.shard() else { continue };
            let nodes = shard.latencies();
            for node in nodes.iter() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let kept = cons
                    .iter()
                    .position(|(j, addr, _)| *j == i && addr == &node.addr)
                    .map(|at| cons.swap_remove(at).2);
                let took = probe(server, &node.addr, kept, name).map(|(took, con)| {
                    cons.push((i, node.addr.clone(), con));
                    took
                });
                shard.record(&node.addr, took.ok());
            }
            // Nodes no longer listed (a failover, new replicas) are dropped.
            cons.retain(|(j, addr, _)| *j != i || nodes.iter().any(|n| &n.addr == addr));
        }
        while round.elapsed() < INTERVAL && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(TICK.min(INTERVAL.saturating_sub(round.elapsed())));
        }
    }
}

/// One `PING` of the node at `addr` of `server`'s shard, on `con` or a
/// new connection: its round trip and the connection to keep. A failed
/// connection is dropped (a late reply must not answer the next `PING`).
fn probe(
    server: &Server,
    addr: &ConnectionAddr,
    con: Option<redis::Connection>,
    name: Option<&str>,
) -> RedisResult<(Duration, redis::Connection)> {
    let mut con = match con {
        Some(con) => con,
        None => {
            let mut con = server
                .replica_node(addr)
                .client()?
                .get_connection_with_timeout(DEADLINE)?;
            con.set_read_timeout(Some(DEADLINE))?;
            con.set_write_timeout(Some(DEADLINE))?;
            crate::server::name_connection(&mut con, name);
            con
        }
    };
    let started = Instant::now();
    redis::cmd("PING").query::<()>(&mut con)?;
    Ok((started.elapsed(), con))
}
