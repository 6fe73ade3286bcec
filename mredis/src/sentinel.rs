//! Following Sentinel: one background thread per client configuration with
//! Sentinel shards asks the sentinels for each shard's primary and
//! replicas, listens for `+switch-master` on one sentinel at a time, and
//! asks again at once when a request suspects a failover (a refused
//! connection, `-READONLY`, `-LOADING`, a timeout), and every
//! [`REFRESH`] in any case. What it learns goes into the shards' shared
//! state ([`crate::shard`]); the clients' pools compare epochs and open
//! connections to the new primary.
//!
//! Every exchange with a sentinel or a data server here has a deadline
//! (the client's connect and response timeouts): a SIGSTOPped sentinel
//! costs one timeout, then the next sentinel is asked. (redis-rs's own
//! `sentinel` module opens its sentinel connections without timeouts,
//! which is why this is written here.)

use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo, RedisResult, Value};

use crate::connect::{Clients, Connector, Kind};
use crate::server::Server;
use crate::shard::{Shard, show_addr};
use crate::task::{Stop, Task};

/// How often every shard is asked again even without news.
pub(crate) const REFRESH: Duration = Duration::from_secs(2);

/// How often the watcher looks for suspicions between messages.
const TICK: Duration = Duration::from_millis(25);

/// Starts the watcher for the Sentinel shards among `servers` (none: no
/// thread) after asking each once, so a client built while the sentinels
/// answer knows its primaries before its first command.
pub(crate) fn start(servers: &[Server], c: &Connector) -> RedisResult<Option<Task>> {
    let shards: Vec<Server> = servers
        .iter()
        .filter(|s| s.shard().is_some_and(|sh| sh.master().is_some()))
        .cloned()
        .collect();
    if shards.is_empty() {
        return Ok(None);
    }
    for s in &shards {
        refresh(s, c);
    }
    let c = c.clone();
    Task::spawn("mredis-sentinel", move |stop| run(&shards, &c, &stop)).map(Some)
}

fn run(shards: &[Server], c: &Connector, stop: &Stop) {
    // The sentinels of all shards, each once (by address).
    let mut sentinels: Vec<ConnectionInfo> = Vec::new();
    for s in shards {
        if let Some(crate::shard::Source::Sentinel { sentinels: list, .. }) = s.shard().map(|sh| &sh.source) {
            for info in list {
                if !sentinels.iter().any(|x| x.addr() == info.addr()) {
                    sentinels.push(info.clone());
                }
            }
        }
    }
    let mut next = 0;
    let mut last_refresh = Instant::now();
    while !stop.stopped() {
        // Listen on one sentinel until it fails; then the next.
        let info = sentinels[next % sentinels.len()].clone();
        next += 1;
        let listened = listen(&info, shards, c, stop, &mut last_refresh);
        if listened.is_err() {
            // Still follow suspicions and refreshes while no sentinel can
            // be listened to.
            let until = Instant::now() + TICK * 4;
            while Instant::now() < until && !stop.stopped() {
                housekeeping(shards, c, &mut last_refresh);
                stop.wait(TICK);
            }
        }
    }
}

/// Subscribes to `+switch-master` on one sentinel and follows it.
fn listen(
    info: &ConnectionInfo,
    shards: &[Server],
    c: &Connector,
    stop: &Stop,
    last_refresh: &mut Instant,
) -> RedisResult<()> {
    let mut con = connect(info, c)?;
    con.set_read_timeout(Some(TICK))?;
    let mut pubsub = con.as_pubsub();
    pubsub.subscribe("+switch-master")?;
    while !stop.stopped() {
        match pubsub.get_message() {
            Ok(msg) => {
                let text: String = msg.get_payload().unwrap_or_default();
                // "<master> <old-ip> <old-port> <new-ip> <new-port>"
                let master = text.split(' ').next().unwrap_or_default();
                for s in shards
                    .iter()
                    .filter(|s| s.shard().and_then(|sh| sh.master()) == Some(master))
                {
                    refresh(s, c);
                }
            }
            Err(e) if e.is_timeout() => {}
            Err(e) => return Err(e),
        }
        housekeeping(shards, c, last_refresh);
    }
    Ok(())
}

/// Asks for the shards a request suspected, and for all every [`REFRESH`].
fn housekeeping(shards: &[Server], c: &Connector, last_refresh: &mut Instant) {
    let all = last_refresh.elapsed() >= REFRESH;
    if all {
        *last_refresh = Instant::now();
    }
    for s in shards {
        let suspected = s.shard().is_some_and(|sh| sh.take_suspicion());
        if all || suspected {
            refresh(s, c);
        }
    }
}

/// Asks the sentinels for one shard's primary and replicas and records
/// the answer (or why there is none).
pub(crate) fn refresh(server: &Server, c: &Connector) {
    let Some(shard) = server.shard() else { return };
    match ask(server, shard, c) {
        Ok((primary, replicas)) => {
            shard.update(primary, replicas);
        }
        Err(why) => shard.problem(why),
    }
}

/// A sentinel's answer: its configuration epoch, the primary it names,
/// the replicas it reports up.
type Named = (u64, ConnectionAddr, Vec<ConnectionAddr>);

/// The first valid answer of the sentinels, in their order: a primary
/// that a sentinel names with a configuration epoch no lower than the
/// newest this client accepted (a failover raises it: a sentinel that has
/// not caught up with one names the old primary with a lower epoch, and a
/// restarted old primary may answer as a master for a moment, so the
/// epoch is checked first), that says it is a master (`ROLE`), and, if it
/// is not the primary the client follows now, that most sentinels name;
/// and the replicas that sentinel reports up and linked.
fn ask(server: &Server, shard: &Shard, c: &Connector) -> Result<(ConnectionAddr, Vec<ConnectionAddr>), String> {
    let crate::shard::Source::Sentinel { master, sentinels } = &shard.source else {
        return Err("not a Sentinel shard".to_string());
    };
    let newest = shard.config_epoch.load(std::sync::atomic::Ordering::Acquire);
    let mut problems = Vec::new();
    for info in sentinels {
        let who = show_addr(info.addr());
        let answer = (|| -> RedisResult<Result<Named, String>> {
            let mut con = connect(info, c)?;
            let state: std::collections::HashMap<String, String> =
                match redis::cmd("SENTINEL").arg("MASTER").arg(master).query(&mut con) {
                    Ok(state) => state,
                    // An unknown master name is an error reply.
                    Err(e) if e.code().is_some() => {
                        return Ok(Err(format!("sentinel {who} does not know master `{master}`")));
                    }
                    Err(e) => return Err(e),
                };
            let (Some(host), Some(port)) = (state.get("ip"), state.get("port").and_then(|p| p.parse().ok())) else {
                return Ok(Err(format!("sentinel {who} gave no address for `{master}`")));
            };
            let epoch: u64 = state.get("config-epoch").and_then(|e| e.parse().ok()).unwrap_or(0);
            let primary = server.node_addr(host.clone(), port);
            if epoch < newest {
                return Ok(Err(format!(
                    "sentinel {who} is behind a failover (it names {} at configuration epoch {epoch}, \
                     {newest} was seen)",
                    show_addr(&primary)
                )));
            }
            let replicas: Vec<std::collections::HashMap<String, String>> =
                redis::cmd("SENTINEL").arg("REPLICAS").arg(master).query(&mut con)?;
            // The named primary must say it is one (it may be a demoted
            // old primary the sentinel has not caught up with).
            let node = server.replica_node(&primary);
            let mut data = c.open(&node, Kind::Sentinel, c.timeouts.response)?;
            let role: Value = redis::cmd("ROLE").query(&mut data)?;
            let is_master = matches!(&role, Value::Array(items)
                if matches!(items.first(), Some(Value::BulkString(b)) if b.as_slice() == b"master"));
            if !is_master {
                return Ok(Err(format!(
                    "sentinel {who} names {} as `{master}`'s primary, but it is not a master",
                    show_addr(&primary)
                )));
            }
            let replicas = replicas
                .iter()
                .filter(|r| {
                    let flags = r.get("flags").map(String::as_str).unwrap_or("");
                    !flags.contains("s_down")
                        && !flags.contains("o_down")
                        && !flags.contains("disconnected")
                        && r.get("master-link-status").map(String::as_str) == Some("ok")
                })
                .filter_map(|r| {
                    let port = r.get("port")?.parse().ok()?;
                    Some(server.node_addr(r.get("ip")?.clone(), port))
                })
                .collect();
            Ok(Ok((epoch, primary, replicas)))
        })();
        match answer {
            Ok(Ok((epoch, primary, replicas))) => {
                // A new primary needs most sentinels behind it: one that
                // lags (or a restarted old primary answering as a master
                // for a moment) does not move the client alone.
                let current = shard.primary();
                if current.is_some() && current.as_ref() != Some(&primary) {
                    let others = sentinels
                        .iter()
                        .filter(|other| other.addr() != info.addr())
                        .filter(|other| names(other, master, c).is_some_and(|(h, p)| server.node_addr(h, p) == primary))
                        .count();
                    if (1 + others) * 2 <= sentinels.len() {
                        problems.push(format!(
                            "sentinel {who} names {} as `{master}`'s new primary, but only {} of {} sentinels do",
                            show_addr(&primary),
                            1 + others,
                            sentinels.len()
                        ));
                        continue;
                    }
                }
                shard.config_epoch.fetch_max(epoch, std::sync::atomic::Ordering::AcqRel);
                return Ok((primary, replicas));
            }
            Ok(Err(why)) => problems.push(why),
            Err(e) => problems.push(format!("sentinel {who}: {}", crate::error::error_text(&e))),
        }
    }
    Err(problems.join("; "))
}

/// The primary sentinel `info` names for `master` (`None`: no answer).
fn names(info: &ConnectionInfo, master: &str, c: &Connector) -> Option<(String, u16)> {
    let mut con = connect(info, c).ok()?;
    redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query::<Option<(String, u16)>>(&mut con)
        .ok()
        .flatten()
}

/// A connection to the sentinel at `info`, with the client's deadlines.
fn connect(info: &ConnectionInfo, c: &Connector) -> RedisResult<redis::Connection> {
    let client = redis::Client::open(info.clone())?;
    c.open_with(&Clients::full(client), Kind::Sentinel, c.timeouts.response)
}
