//! What both drivers decide about shards with replicas, without I/O:
//! whether a request may go to a replica (and, under
//! [`ReadFrom::LowestLatency`], to which node), what a failed request says of
//! its shard's primary (follow a failover and send it again, or report an
//! unknown outcome), and the `WAIT` that makes a write count only once
//! replicas have it.

use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, ConnectionAddr, RedisError, RedisResult, Value};

use crate::exec::{Cmds, Request, closed, read_only};
use crate::options::{Acks, Options, ReadFrom};
use crate::routing::Topology;
use crate::server::Server;
use crate::shard::{NodeLatency, UNKNOWN};

/// Whether `request` goes to one of its shard's replicas under `policy`:
/// every command read-only by the table, none blocking.
pub(crate) fn to_replica(policy: ReadFrom, server: &Server, request: &Request<'_>) -> bool {
    policy != ReadFrom::Primary
        && request.block.is_none()
        && server.shard().is_some()
        && request.cmds.iter().all(read_only)
}

/// Where one request of the shard path goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The shard's primary (or the plain server).
    Primary,
    /// One of the shard's replicas, in turn; with none up, as the policy
    /// says ([`ReplicaSet::pick`]).
    Replica,
    /// The replica at this address, the fastest now
    /// ([`ReadFrom::LowestLatency`]); one in turn if it is no longer
    /// listed.
    ReplicaAt(ConnectionAddr),
}

impl Target {
    /// It goes to a replica.
    pub(crate) fn replica(&self) -> bool {
        !matches!(self, Target::Primary)
    }

    /// The replica it names, if one.
    pub(crate) fn addr(&self) -> Option<&ConnectionAddr> {
        match self {
            Target::ReplicaAt(addr) => Some(addr),
            _ => None,
        }
    }
}

/// How much slower than the fastest node a node may be and still share
/// the reads: 20 % of the fastest's estimate, at least 200 µs.
fn tolerance(best: u64) -> u64 {
    (best / 5).max(200)
}

/// Of nodes with these estimates (microseconds, [`UNKNOWN`]: none), the
/// one that takes the next read: those within [`tolerance`] of the
/// fastest take reads in turn (`turn` counts them). `None` without any
/// estimate.
pub(crate) fn fastest(estimates: impl Iterator<Item = u64> + Clone, turn: usize) -> Option<usize> {
    let best = estimates.clone().filter(|&m| m != UNKNOWN).min()?;
    let limit = best.saturating_add(tolerance(best));
    let close = |m: &u64| *m != UNKNOWN && *m <= limit;
    let n = estimates.clone().filter(close).count();
    estimates
        .enumerate()
        .filter(|(_, m)| close(m))
        .nth(turn % n.max(1))
        .map(|(i, _)| i)
}

/// Where `request` goes under `policy`: the primary unless it may go to
/// a replica ([`to_replica`]); then, under [`ReadFrom::LowestLatency`],
/// the fastest node now ([`fastest`]; before any estimate, a replica in
/// turn as under [`ReadFrom::PreferReplica`]).
pub(crate) fn target(policy: ReadFrom, server: &Server, request: &Request<'_>) -> Target {
    if !to_replica(policy, server, request) {
        return Target::Primary;
    }
    let Some(shard) = server.shard().filter(|_| policy == ReadFrom::LowestLatency) else {
        return Target::Replica;
    };
    let nodes = shard.latencies();
    match fastest(nodes.iter().map(NodeLatency::micros), shard.next_turn()) {
        None => Target::Replica,
        Some(j) if nodes[j].primary => Target::Primary,
        Some(j) => Target::ReplicaAt(nodes[j].addr.clone()),
    }
}

/// What a request's outcome says of a Sentinel shard's primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing to do with a failover.
    Fine,
    /// The primary refused it or could not be reached before anything was
    /// sent (`-READONLY`, `-LOADING`, `-MASTERDOWN`, a refused
    /// connection, no primary known), or it is read-only: ask Sentinel,
    /// and send it again once to the new primary.
    Again,
    /// A write was sent and no reply came (a timeout, a closed
    /// connection): it may have run on the old primary. Ask Sentinel, but
    /// do not send it again.
    Unknown,
}

/// Reads `result` (of `cmds` on `server`).
pub(crate) fn verdict(server: &Server, cmds: &Cmds<'_>, result: &RedisResult<Vec<Value>>) -> Verdict {
    if server.shard().and_then(|s| s.master()).is_none() {
        return Verdict::Fine;
    }
    match result {
        Ok(values) => {
            let refused = values.iter().any(
                |v| matches!(v, Value::ServerError(e) if matches!(e.code(), "READONLY" | "LOADING" | "MASTERDOWN")),
            );
            if refused { Verdict::Again } else { Verdict::Fine }
        }
        Err(e) if e.is_connection_refusal() => Verdict::Again,
        Err(e) if e.is_timeout() || closed(e) || e.is_io_error() => {
            if cmds.iter().all(read_only) {
                Verdict::Again
            } else {
                Verdict::Unknown
            }
        }
        Err(_) => Verdict::Fine,
    }
}

/// The error of a write whose outcome is unknown: its connection to the
/// primary failed or timed out after it was written. Says what happened,
/// not more: the primary is checked with Sentinel (if the shard has one),
/// but a timeout is not a failover.
pub(crate) fn unknown_outcome(server: &Server, e: RedisError) -> RedisError {
    let what = if e.is_timeout() {
        "the primary did not reply in time"
    } else {
        "the connection to the primary failed"
    };
    RedisError::from((
        e.kind(),
        "mredis",
        format!(
            "shard `{}`: {}; {what}: the write may have run and is not sent again",
            server.name(),
            crate::error::error_text(&e)
        ),
    ))
}

/// The error of a request that waited for a new primary in vain.
pub(crate) fn no_new_primary(
    server: &Server,
    waited: std::time::Duration,
    last: RedisResult<Vec<Value>>,
) -> RedisError {
    let why = match last {
        Err(e) => crate::error::error_text(&e),
        Ok(values) => values
            .iter()
            .find_map(|v| match v {
                Value::ServerError(e) => Some(format!("{} {}", e.code(), e.details().unwrap_or(""))),
                _ => None,
            })
            .unwrap_or_else(|| "refused".to_string()),
    };
    crate::error::client_error(format!(
        "shard `{}`: {why}; Sentinel named no new primary within {} ms (nothing was sent again)",
        server.name(),
        waited.as_millis()
    ))
}

/// The `WAIT` that makes a write count only once `acks.replicas`
/// replicas have it.
pub(crate) fn wait_cmd(acks: Acks) -> Cmd {
    let mut wait = redis::cmd("WAIT");
    wait.arg(acks.replicas).arg(acks.timeout.as_millis() as u64);
    wait
}

/// The request with `WAIT` appended if it has a write (`None`: no write).
pub(crate) fn with_wait<'a>(request: &Request<'a>, acks: Acks) -> Option<Request<'a>> {
    if request.block.is_some() || request.cmds.iter().all(read_only) {
        return None;
    }
    let mut cmds: Vec<Cmd> = request.cmds.iter().cloned().collect();
    cmds.push(wait_cmd(acks));
    Some(Request {
        server: request.server,
        cmds: cmds.into(),
        block: None,
    })
}

/// Checks the reply to a `WAIT` sent after a write that ran: an error if
/// fewer replicas than asked acknowledged it.
pub(crate) fn check_ack(server: &Server, acks: Acks, reply: RedisResult<Value>) -> RedisResult<()> {
    let got = match reply? {
        Value::Int(n) => n,
        Value::ServerError(e) => return Err(RedisError::from(e)),
        other => {
            return Err(crate::error::client_error(format!(
                "{}: unexpected reply to WAIT: {other:?}",
                server.name()
            )));
        }
    };
    if got < i64::from(acks.replicas) {
        return Err(crate::error::client_error(format!(
            "shard `{}`: the write happened on the primary, but only {got} of {} replicas acknowledged it \
             within {} ms: it may be lost on a failover",
            server.name(),
            acks.replicas,
            acks.timeout.as_millis()
        )));
    }
    Ok(())
}

/// Takes the `WAIT` reply off `result`: an error if fewer replicas than
/// asked acknowledged the write (none is asked of a request whose every
/// command the server refused: nothing ran).
pub(crate) fn check_wait(server: &Server, acks: Acks, result: RedisResult<Vec<Value>>) -> RedisResult<Vec<Value>> {
    let mut values = result?;
    let wait = values
        .pop()
        .ok_or_else(|| crate::error::client_error("no reply to WAIT".to_string()));
    if values.iter().any(|v| !matches!(v, Value::ServerError(_))) {
        check_ack(server, acks, wait)?;
    }
    Ok(values)
}

/// What a failed request on a held connection leads to (both drivers).
pub(crate) enum AfterHeld {
    /// Wait for Sentinel's new primary (the shard is suspected already),
    /// then run it again from the start; the error if none comes.
    AwaitPrimary(RedisError),
    /// Fail with this error (name the server).
    Fail(RedisError),
}

/// Decides what a failed request on a held connection of `server` leads
/// to, by [`held_verdict`]: a refusal awaits the new primary, a cut or late
/// reply is an unknown outcome; either suspects the shard.
pub(crate) fn after_held(server: &Server, e: RedisError) -> AfterHeld {
    match (held_verdict(server, &e), server.shard()) {
        (Verdict::Again, Some(shard)) => {
            shard.suspect();
            AfterHeld::AwaitPrimary(e)
        }
        (Verdict::Unknown, Some(shard)) => {
            shard.suspect();
            AfterHeld::Fail(unknown_outcome(server, e))
        }
        _ => AfterHeld::Fail(e),
    }
}

/// The error of a transaction whose shard failed over twice while it ran
/// (it did not run).
pub(crate) fn failed_over_twice(server: &Server) -> RedisError {
    crate::error::client_error(format!(
        "shard `{}` failed over twice during one transaction; it did not run",
        server.name()
    ))
}

/// What a failed exchange on a connection the caller holds (a
/// transaction's WATCH ... EXEC) says of its shard's primary: refused as
/// by a replica or a primary going away (`Again`: nothing ran; run it
/// again once the shard has a new primary), cut or timed out after it was
/// written (`Unknown`), or an answer like any other (`Fine`).
pub(crate) fn held_verdict(server: &Server, e: &RedisError) -> Verdict {
    if server.shard().and_then(|s| s.master()).is_none() {
        return Verdict::Fine;
    }
    let refused = |code: Option<&str>| matches!(code, Some("READONLY" | "LOADING" | "MASTERDOWN"));
    // A transaction the server aborted carries each queued command's error.
    let queued = e
        .clone()
        .into_server_errors()
        .is_some_and(|all| all.iter().any(|(_, se)| refused(Some(se.code()))));
    if refused(e.code()) || queued || e.is_connection_refusal() {
        Verdict::Again
    } else if e.is_timeout() || closed(e) || e.is_io_error() {
        Verdict::Unknown
    } else {
        Verdict::Fine
    }
}

/// One `Send` step's requests as the shard path sends them, and what to
/// do with each reply: the same decisions for the sync and the async
/// driver, which only send and wait.
pub(crate) struct ShardPlan<'r> {
    core: &'r Topology,
    acks: Option<Acks>,
    policy: ReadFrom,
    failover_wait: Duration,
    /// The requests, with `WAIT` appended to those with a write.
    pub(crate) requests: Vec<Request<'r>>,
    waited: Vec<bool>,
    /// Where each goes.
    pub(crate) targets: Vec<Target>,
    /// Each server's address epoch before sending.
    epochs: Vec<u64>,
}

/// What to do after a request's first reply: send it again, to that
/// target, after waiting (`Some((epoch, within))`) for the shard's
/// primary to change from that epoch, or at once.
pub(crate) type Again = Option<(Target, Option<(u64, Duration)>)>;

impl<'r> ShardPlan<'r> {
    pub(crate) fn new(core: &'r Topology, options: &Options, policy: ReadFrom, requests: &'r [Request<'_>]) -> Self {
        let mut out = Vec::with_capacity(requests.len());
        let mut waited = Vec::with_capacity(requests.len());
        for r in requests {
            match options.acks.and_then(|a| with_wait(r, a)) {
                Some(w) => {
                    out.push(w);
                    waited.push(true);
                }
                None => {
                    out.push(Request {
                        server: r.server,
                        cmds: r.cmds.borrowed(),
                        block: r.block,
                    });
                    waited.push(false);
                }
            }
        }
        let targets = out.iter().map(|r| target(policy, core.server(r.server), r)).collect();
        let epochs = out.iter().map(|r| core.server(r.server).epoch()).collect();
        ShardPlan {
            core,
            acks: options.acks,
            policy,
            failover_wait: options.failover_wait,
            requests: out,
            waited,
            targets,
            epochs,
        }
    }

    /// Reads request `i`'s first reply; whether (and how) to send it again.
    /// A write whose outcome is unknown gets its error here.
    pub(crate) fn after(&self, i: usize, reply: &mut RedisResult<Vec<Value>>) -> Again {
        let request = &self.requests[i];
        let server = self.core.server(request.server);
        if self.targets[i].replica() {
            // A replica that does not answer: the primary, once; and the
            // lowest-latency choice avoids it until it answers a PING.
            let failed = matches!(reply, Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_refusal());
            if failed && let (Some(addr), Some(shard)) = (self.targets[i].addr(), server.shard()) {
                shard.record(addr, None);
            }
            let fall_back = matches!(self.policy, ReadFrom::PreferReplica | ReadFrom::LowestLatency);
            return (failed && fall_back).then_some((Target::Primary, None));
        }
        match verdict(server, &request.cmds, reply) {
            Verdict::Fine => None,
            Verdict::Again => {
                let shard = server.shard()?;
                shard.suspect();
                // The sentinels answered and named no primary (a master
                // name they do not know, a primary that refuses ROLE): a
                // configuration problem, said at once, not waited out.
                let state = shard.state();
                if state.primary.is_none() && state.problem.is_some() {
                    return None;
                }
                Some((Target::Primary, Some((self.epochs[i], self.failover_wait))))
            }
            Verdict::Unknown => {
                if let Some(shard) = server.shard() {
                    shard.suspect();
                }
                if let Err(e) = reply {
                    let e = std::mem::replace(e, crate::error::client_error(String::new()));
                    *reply = Err(unknown_outcome(server, e));
                }
                None
            }
        }
    }

    /// Request `i`'s reply once sent again (`None`: no new primary came
    /// within the wait, so it was not).
    /// Whether request `i` is a write with its `WAIT` appended.
    pub(crate) fn waited(&self, i: usize) -> bool {
        self.waited.get(i).copied().unwrap_or(false)
    }

    pub(crate) fn settle(&self, i: usize, reply: &mut RedisResult<Vec<Value>>, again: Option<RedisResult<Vec<Value>>>) {
        match again {
            Some(r) => *reply = r,
            None => {
                let server = self.core.server(self.requests[i].server);
                let first = std::mem::replace(reply, Ok(Vec::new()));
                *reply = Err(no_new_primary(server, self.failover_wait, first));
            }
        }
    }

    /// Takes the `WAIT` reply off request `i`'s replies (an error if too
    /// few replicas acknowledged).
    pub(crate) fn finish(&self, i: usize, reply: &mut RedisResult<Vec<Value>>) {
        if let (true, Some(acks)) = (self.waited[i], self.acks) {
            let server = self.core.server(self.requests[i].server);
            let r = std::mem::replace(reply, Ok(Vec::new()));
            *reply = check_wait(server, acks, r);
        }
    }
}

/// Each replica, its address and as a server, with what a client keeps
/// for it.
type Nodes<T> = Arc<Vec<(ConnectionAddr, Server, T)>>;

/// What a client keeps per replica of one shard (a sync pool, an async
/// shared connection), made for the shard's replicas' epoch and taken in
/// turn: the same for both clients.
pub(crate) struct ReplicaSet<T> {
    /// The epoch it was made for, plus one (0: not yet), and each replica
    /// as a server with its connection(s).
    built: std::sync::RwLock<(u64, Nodes<T>)>,
    next: std::sync::atomic::AtomicUsize,
    /// Replicas (by name) that failed a request, and until when they are
    /// passed over ([`REPLICA_REST`]).
    down: std::sync::Mutex<Vec<(String, std::time::Instant)>>,
    /// Whether `down` may hold a replica (read without the lock).
    any_down: std::sync::atomic::AtomicBool,
}

/// How long a replica that failed a read (a timeout, a refused or broken
/// connection) is passed over: reads go to the shard's other replicas, or
/// its primary, meanwhile. Then it is tried again (one read finds out).
pub(crate) const REPLICA_REST: Duration = Duration::from_secs(5);

impl<T> Default for ReplicaSet<T> {
    fn default() -> Self {
        ReplicaSet {
            built: std::sync::RwLock::new((0, Arc::new(Vec::new()))),
            next: std::sync::atomic::AtomicUsize::new(0),
            down: std::sync::Mutex::new(Vec::new()),
            any_down: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl<T> ReplicaSet<T> {
    /// Passes over replica `node` for [`REPLICA_REST`]: it failed a read.
    pub(crate) fn mark_down(&self, node: &Server) {
        let until = std::time::Instant::now() + REPLICA_REST;
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.retain(|(name, _)| name != node.name());
        down.push((node.name().to_string(), until));
        self.any_down.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether replica `name` is passed over now.
    fn is_down(&self, name: &str) -> bool {
        let now = std::time::Instant::now();
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.retain(|(_, until)| *until > now);
        if down.is_empty() {
            self.any_down.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        down.iter().any(|(n, _)| n == name)
    }
}

impl<T: Clone> ReplicaSet<T> {
    /// The replica of `server`'s shard at `at`, or (`None`, or no longer
    /// listed) the next one, and its `T`, made with `make` for replicas
    /// new since the last call (kept for those that stay); `Ok(None)`
    /// when the shard has no replica up and `policy` falls back to the
    /// primary; an error under [`ReadFrom::ReplicaOnly`].
    pub(crate) fn pick(
        &self,
        server: &Server,
        policy: ReadFrom,
        at: Option<&ConnectionAddr>,
        make: impl Fn(&Server) -> RedisResult<T>,
    ) -> RedisResult<Option<(Server, T)>> {
        let epoch = server.replicas_epoch();
        let current = {
            let b = self.built.read().unwrap_or_else(|p| p.into_inner());
            (b.0 == epoch + 1).then(|| b.1.clone())
        };
        let all = match current {
            Some(all) => all,
            None => {
                let mut b = self.built.write().unwrap_or_else(|p| p.into_inner());
                let old = b.1.clone();
                let mut fresh = Vec::new();
                for addr in server.shard().map(|s| s.replicas()).unwrap_or_default() {
                    let node = server.replica_node(&addr);
                    match old.iter().find(|(_, n, _)| n.name() == node.name()) {
                        Some(kept) => fresh.push(kept.clone()),
                        None => {
                            let t = make(&node).map_err(|e| crate::error::name_server(&node, e))?;
                            fresh.push((addr, node, t));
                        }
                    }
                }
                *b = (epoch + 1, Arc::new(fresh));
                b.1.clone()
            }
        };
        // Most of the time no replica is passed over: no lock, no copy.
        let resting = self.any_down.load(std::sync::atomic::Ordering::Relaxed);
        let up = |i: &usize| !resting || !self.is_down(all[*i].1.name());
        let count = (0..all.len()).filter(up).count();
        if count == 0 {
            return match policy {
                ReadFrom::ReplicaOnly => Err(crate::error::client_error(format!(
                    "shard `{}` has no replica up (read policy: replica only)",
                    server.name()
                ))),
                _ => Ok(None),
            };
        }
        let chosen = at.and_then(|a| (0..all.len()).filter(up).find(|i| &all[*i].0 == a));
        let i = match chosen {
            Some(i) => i,
            None => {
                let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % count;
                (0..all.len()).filter(up).nth(turn).unwrap_or(0)
            }
        };
        let (_, node, t) = &all[i];
        Ok(Some((node.clone(), t.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::{UNKNOWN, fastest, unknown_outcome};

    #[test]
    fn a_write_with_no_reply_says_what_happened_and_not_more() {
        let server = crate::Server::from_url("redis://127.0.0.1:6379/0").unwrap();
        let late = unknown_outcome(&server, std::io::Error::from(std::io::ErrorKind::TimedOut).into()).to_string();
        assert!(late.contains("did not reply in time"), "{late}");
        assert!(late.contains("may have run and is not sent again"), "{late}");
        // A timeout on the current primary is not a failover.
        assert!(!late.contains("old primary") && !late.contains("Sentinel"), "{late}");
        let cut = unknown_outcome(
            &server,
            std::io::Error::from(std::io::ErrorKind::ConnectionReset).into(),
        )
        .to_string();
        assert!(cut.contains("the connection to the primary failed"), "{cut}");
    }

    fn picks(estimates: &[u64], turns: usize) -> Vec<Option<usize>> {
        (0..turns).map(|t| fastest(estimates.iter().copied(), t)).collect()
    }

    #[test]
    fn without_any_estimate_there_is_no_choice() {
        assert_eq!(picks(&[], 2), [None, None]);
        assert_eq!(picks(&[UNKNOWN, UNKNOWN, UNKNOWN], 2), [None, None]);
    }

    #[test]
    fn the_fastest_alone_takes_every_read() {
        // 20 % of 5 000 µs is 1 000 µs: 6 200 is out.
        assert_eq!(picks(&[5_000, 6_200, UNKNOWN], 3), [Some(0), Some(0), Some(0)]);
        assert_eq!(picks(&[UNKNOWN, 900, 300], 2), [Some(2), Some(2)]);
    }

    #[test]
    fn nodes_about_as_fast_share_the_reads_in_turn() {
        // Within 200 µs of 100 µs (20 % would be 20 µs): 0 and 1, not 2.
        assert_eq!(
            picks(&[100, 290, 301, UNKNOWN], 4),
            [Some(0), Some(1), Some(0), Some(1)]
        );
        // Within 20 % of 10 ms: all three.
        assert_eq!(picks(&[10_000, 11_900, 12_000], 3), [Some(0), Some(1), Some(2)]);
    }

    #[test]
    fn a_node_not_answering_is_never_chosen() {
        for t in 0..10 {
            assert_ne!(fastest([UNKNOWN, 50, 60].into_iter(), t), Some(0));
        }
    }
}
