//! The latency prober of [`ReadFrom::LowestLatency`](crate::ReadFrom::LowestLatency):
//! one background thread per client configuration whose shards have
//! replicas (or Sentinel) sends `PING` to every node of every shard every
//! [`INTERVAL`], on connections of its own with a [`DEADLINE`], and
//! records each round trip (or that the node did not answer) in the
//! shard's state ([`crate::shard`]), where the shared, I/O-free choice
//! (`crate::replicas`) reads it. No lock is held while a `PING` is out:
//! the node list is a snapshot taken before each shard's round.

use std::time::{Duration, Instant};

use redis::{ConnectionAddr, RedisResult};

use crate::connect::{Connector, Kind};
use crate::server::Server;
use crate::task::{Stop, Task};

/// Time between the starts of two rounds.
pub(crate) const INTERVAL: Duration = Duration::from_millis(500);

/// How long a node has to answer one `PING` (a connection is opened
/// within the client's connect timeout).
pub(crate) const DEADLINE: Duration = Duration::from_secs(1);

/// Starts the prober for the shards among `servers` (none with replicas
/// or Sentinel: no thread).
pub(crate) fn start(servers: &[Server], c: &Connector) -> RedisResult<Option<Task>> {
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
    let c = c.clone();
    Task::spawn("mredis-latency", move |stop| run(&shards, &stop, &c)).map(Some)
}

fn run(shards: &[Server], stop: &Stop, c: &Connector) {
    // Per shard and node address, the connection kept between rounds.
    let mut cons: Vec<(usize, ConnectionAddr, redis::Connection)> = Vec::new();
    while !stop.stopped() {
        let round = Instant::now();
        for (i, server) in shards.iter().enumerate() {
            let Some(shard) = server.shard() else { continue };
            let nodes = shard.latencies();
            for node in nodes.iter() {
                if stop.stopped() {
                    return;
                }
                let kept = cons
                    .iter()
                    .position(|(j, addr, _)| *j == i && addr == &node.addr)
                    .map(|at| cons.swap_remove(at).2);
                let took = probe(server, &node.addr, kept, c).map(|(took, con)| {
                    cons.push((i, node.addr.clone(), con));
                    took
                });
                shard.record(&node.addr, took.ok());
            }
            // Nodes no longer listed (a failover, new replicas) are dropped.
            cons.retain(|(j, addr, _)| *j != i || nodes.iter().any(|n| &n.addr == addr));
        }
        stop.wait(INTERVAL.saturating_sub(round.elapsed()));
    }
}

/// One `PING` of the node at `addr` of `server`'s shard, on `con` or a
/// new connection: its round trip and the connection to keep. A failed
/// connection is dropped (a late reply must not answer the next `PING`).
fn probe(
    server: &Server,
    addr: &ConnectionAddr,
    con: Option<redis::Connection>,
    c: &Connector,
) -> RedisResult<(Duration, redis::Connection)> {
    let mut con = match con {
        Some(con) => con,
        None => c.open(&server.replica_node(addr), Kind::Latency, DEADLINE)?,
    };
    let started = Instant::now();
    redis::cmd("PING").query::<()>(&mut con)?;
    Ok((started.elapsed(), con))
}
