//! What both drivers decide about shards with replicas, without I/O:
//! whether a request may go to a replica, what a failed request says of
//! its shard's primary (follow a failover and send it again, or report an
//! unknown outcome), and the `WAIT` that makes a write count only once
//! replicas have it.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, RedisError, RedisResult, Value};

use crate::exec::{Request, closed, read_only};
use crate::options::{Acks, Options, ReadFrom};
use crate::routing::Topology;
use crate::server::Server;

/// Whether `request` goes to one of its shard's replicas under `policy`:
/// every command read-only by the table, none blocking.
pub(crate) fn to_replica(policy: ReadFrom, server: &Server, request: &Request<'_>) -> bool {
    policy != ReadFrom::Primary
        && request.block.is_none()
        && server.shard().is_some()
        && request.cmds.iter().all(read_only)
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
pub(crate) fn verdict(server: &Server, cmds: &[Cmd], result: &RedisResult<Vec<Value>>) -> Verdict {
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

/// The error of a write whose outcome is unknown after a failover began.
pub(crate) fn unknown_outcome(server: &Server, e: RedisError) -> RedisError {
    RedisError::from((
        e.kind(),
        "mredis",
        format!(
            "shard `{}`: {}; the write may have run on the old primary and is not sent again \
             (the shard's primary is being looked up in Sentinel)",
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

/// The request with `WAIT` appended if it has a write (`None`: no write).
pub(crate) fn with_wait<'a>(request: &Request<'a>, acks: Acks) -> Option<Request<'a>> {
    if request.block.is_some() || request.cmds.iter().all(read_only) {
        return None;
    }
    let mut cmds = request.cmds.to_vec();
    let mut wait = redis::cmd("WAIT");
    wait.arg(acks.replicas).arg(acks.timeout.as_millis() as u64);
    cmds.push(wait);
    Some(Request {
        server: request.server,
        cmds: Cow::Owned(cmds),
        block: None,
    })
}

/// Takes the `WAIT` reply off `result`: an error if fewer replicas than
/// asked acknowledged the write.
pub(crate) fn check_wait(server: &Server, acks: Acks, result: RedisResult<Vec<Value>>) -> RedisResult<Vec<Value>> {
    let mut values = result?;
    let got = match values.pop() {
        Some(Value::Int(n)) => n,
        Some(Value::ServerError(e)) => return Err(RedisError::from(e)),
        other => {
            return Err(crate::error::client_error(format!(
                "{}: unexpected reply to WAIT: {other:?}",
                server.name()
            )));
        }
    };
    if got < i64::from(acks.replicas) && values.iter().any(|v| !matches!(v, Value::ServerError(_))) {
        return Err(crate::error::client_error(format!(
            "shard `{}`: the write happened on the primary, but only {got} of {} replicas acknowledged it \
             within {} ms: it may be lost on a failover",
            server.name(),
            acks.replicas,
            acks.timeout.as_millis()
        )));
    }
    Ok(values)
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
    /// Which go to a replica.
    pub(crate) to_replica: Vec<bool>,
    /// Each server's address epoch before sending.
    epochs: Vec<u64>,
}

/// What to do after a request's first reply: send it again, to a replica
/// or not, after waiting (`Some((epoch, within))`) for the shard's
/// primary to change from that epoch, or at once.
pub(crate) type Again = Option<(bool, Option<(u64, Duration)>)>;

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
                        cmds: Cow::Borrowed(&r.cmds[..]),
                        block: r.block,
                    });
                    waited.push(false);
                }
            }
        }
        let to_replica = out
            .iter()
            .map(|r| to_replica(policy, core.server(r.server), r))
            .collect();
        let epochs = out.iter().map(|r| core.server(r.server).epoch()).collect();
        ShardPlan {
            core,
            acks: options.acks,
            policy,
            failover_wait: options.failover_wait,
            requests: out,
            waited,
            to_replica,
            epochs,
        }
    }

    /// Reads request `i`'s first reply; whether (and how) to send it again.
    /// A write whose outcome is unknown gets its error here.
    pub(crate) fn after(&self, i: usize, reply: &mut RedisResult<Vec<Value>>) -> Again {
        let request = &self.requests[i];
        let server = self.core.server(request.server);
        if self.to_replica[i] {
            // A replica that does not answer: the primary, once.
            let failed = matches!(reply, Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_refusal());
            return (failed && self.policy == ReadFrom::PreferReplica).then_some((false, None));
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
                Some((false, Some((self.epochs[i], self.failover_wait))))
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

/// Each replica, as a server, with what a client keeps for it.
type Nodes<T> = Arc<Vec<(Server, T)>>;

/// What a client keeps per replica of one shard (a sync pool, an async
/// shared connection), made for the shard's replicas' epoch and taken in
/// turn: the same for both clients.
pub(crate) struct ReplicaSet<T> {
    /// The epoch it was made for, plus one (0: not yet), and each replica
    /// as a server with its connection(s).
    built: std::sync::RwLock<(u64, Nodes<T>)>,
    next: std::sync::atomic::AtomicUsize,
}

impl<T> Default for ReplicaSet<T> {
    fn default() -> Self {
        ReplicaSet {
            built: std::sync::RwLock::new((0, Arc::new(Vec::new()))),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl<T: Clone> ReplicaSet<T> {
    /// The next replica of `server`'s shard and its `T`, made with `make`
    /// for replicas new since the last call (kept for those that stay);
    /// `Ok(None)` when the shard has no replica up and `policy` falls back
    /// to the primary; an error under [`ReadFrom::ReplicaOnly`].
    pub(crate) fn pick(
        &self,
        server: &Server,
        policy: ReadFrom,
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
                    match old.iter().find(|(n, _)| n.name() == node.name()) {
                        Some(kept) => fresh.push(kept.clone()),
                        None => {
                            let t = make(&node).map_err(|e| crate::error::name_server(&node, e))?;
                            fresh.push((node, t));
                        }
                    }
                }
                *b = (epoch + 1, Arc::new(fresh));
                b.1.clone()
            }
        };
        if all.is_empty() {
            return match policy {
                ReadFrom::ReplicaOnly => Err(crate::error::client_error(format!(
                    "shard `{}` has no replica up (read policy: replica only)",
                    server.name()
                ))),
                _ => Ok(None),
            };
        }
        let j = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % all.len();
        Ok(Some(all[j].clone()))
    }
}
