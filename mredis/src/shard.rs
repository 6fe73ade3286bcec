//! Shards that are more than one server: a primary with replicas, given
//! statically ([`Server::with_replicas`](crate::Server::with_replicas)) or
//! managed by Sentinel ([`Server::sentinel`](crate::Server::sentinel)).
//!
//! A shard keeps its placement name whatever its primary's address: a
//! failover moves no key. Its current primary and replicas live here, in
//! a state shared by every client, handle and pipeline built from the same
//! [`Server`](crate::Server) value; the Sentinel watcher
//! (`crate::sentinel`) updates it, and every change bumps an epoch, so a
//! connection pool sees a change by comparing one number per request.
//!
//! The shard also keeps a smoothed round-trip estimate of each of its
//! nodes (primary and replicas), written by the latency prober
//! (`crate::latency`) and read by [`ReadFrom::LowestLatency`](crate::ReadFrom::LowestLatency):
//! one atomic per node, in a list made anew, keeping the estimates of the
//! nodes that stay, whenever the primary or the replicas change.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use redis::{ConnectionAddr, ConnectionInfo};

/// Where a shard's primary and replicas come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// Fixed at configuration: the primary is the server's own address.
    Static,
    /// Asked of Sentinel: the master name and the sentinels' addresses
    /// (with their own credentials, if any).
    Sentinel {
        master: String,
        sentinels: Vec<ConnectionInfo>,
    },
}

/// A failover the client followed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Failover {
    /// When the client learned of it.
    pub at: SystemTime,
    /// The primary before (`host:port`), if one was known.
    pub from: Option<String>,
    /// The primary after (`host:port`).
    pub to: String,
}

/// What is known of a shard now.
#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    /// The primary's address; `None` for a Sentinel shard no sentinel has
    /// named yet.
    pub(crate) primary: Option<ConnectionAddr>,
    /// The replicas' addresses (for Sentinel: those it reports up and
    /// linked to their primary).
    pub(crate) replicas: Vec<ConnectionAddr>,
    /// The last failover followed.
    pub(crate) last_failover: Option<Failover>,
    /// Why the primary is unknown, if it is (the last sentinel error).
    pub(crate) problem: Option<String>,
}

/// One node of a shard and how fast it answers now
/// ([`Server::latencies`](crate::Server::latencies)), as the latency
/// prober of [`ReadFrom::LowestLatency`](crate::ReadFrom::LowestLatency)
/// measured it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Latency {
    /// The node's address, `host:port`.
    pub node: String,
    /// Whether it is the shard's primary (else a replica).
    pub primary: bool,
    /// Its smoothed `PING` round trip; `None` while it does not answer
    /// (its last `PING` failed or got no reply within the deadline), or
    /// before it was measured (the prober starts with the first read
    /// under `LowestLatency`, or at build if that is the client's policy).
    pub estimate: Option<Duration>,
}

/// An estimate of [`NodeLatency`]: not answering, or not measured yet.
pub(crate) const UNKNOWN: u64 = u64::MAX;

/// The weight of a new sample in a node's smoothed estimate (a quarter:
/// one slow PING moves it a little, a lasting change within a few rounds).
const SAMPLE_WEIGHT: u64 = 4;

/// One node of a shard and its smoothed PING round trip.
#[derive(Debug)]
pub(crate) struct NodeLatency {
    pub(crate) addr: ConnectionAddr,
    /// The shard's primary (else a replica).
    pub(crate) primary: bool,
    /// Microseconds; [`UNKNOWN`] when not answering or not measured yet.
    micros: AtomicU64,
}

impl NodeLatency {
    fn new(addr: ConnectionAddr, primary: bool, micros: u64) -> NodeLatency {
        NodeLatency {
            addr,
            primary,
            micros: AtomicU64::new(micros),
        }
    }

    /// The estimate in microseconds ([`UNKNOWN`]: none).
    pub(crate) fn micros(&self) -> u64 {
        self.micros.load(Ordering::Relaxed)
    }

    /// As shown to operators.
    pub(crate) fn shown(&self) -> Latency {
        let micros = self.micros();
        Latency {
            node: show_addr(&self.addr),
            primary: self.primary,
            estimate: (micros != UNKNOWN).then(|| Duration::from_micros(micros)),
        }
    }
}

/// The nodes of a shard with their estimates, primary first.
pub(crate) type Latencies = Arc<Vec<NodeLatency>>;

/// A shard's shared, changing state.
#[derive(Debug)]
pub(crate) struct Shard {
    pub(crate) source: Source,
    state: RwLock<State>,
    /// Bumped on every change of primary (connections to the primary are
    /// made anew).
    epoch: AtomicU64,
    /// Bumped on every change of the replicas (their pools are made anew;
    /// the primary's connections stay).
    replicas_epoch: AtomicU64,
    /// Set by a request that failed as a failover fails: ask Sentinel now.
    suspect: AtomicBool,
    /// The highest configuration epoch a sentinel's accepted answer had
    /// (an answer with a lower one is from a sentinel behind a failover).
    pub(crate) config_epoch: AtomicU64,
    /// Sync waiters for a change.
    changed: Condvar,
    lock: Mutex<()>,
    /// Async waiters for a change.
    notify: tokio::sync::Notify,
    /// When Sentinel was last asked (the watcher asks at most every 50 ms
    /// on suspicion).
    asked: Mutex<Option<Instant>>,
    /// Each node's latency estimate, made anew on every change of nodes.
    latencies: RwLock<Latencies>,
    /// Turns among the nodes that are about as fast as the fastest.
    turn: AtomicUsize,
}

/// `host:port` of an address (a Unix socket's path).
pub(crate) fn show_addr(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(h, p) => format!("{h}:{p}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
        ConnectionAddr::Unix(path) => path.display().to_string(),
        #[allow(unreachable_patterns)]
        _ => "?".to_string(),
    }
}

impl Shard {
    pub(crate) fn new(source: Source, primary: Option<ConnectionAddr>, replicas: Vec<ConnectionAddr>) -> Shard {
        let latencies = RwLock::new(nodes_of(primary.as_ref(), &replicas, &[]));
        Shard {
            source,
            latencies,
            turn: AtomicUsize::new(0),
            state: RwLock::new(State {
                primary,
                replicas,
                ..State::default()
            }),
            epoch: AtomicU64::new(0),
            replicas_epoch: AtomicU64::new(0),
            suspect: AtomicBool::new(false),
            config_epoch: AtomicU64::new(0),
            changed: Condvar::new(),
            lock: Mutex::new(()),
            notify: tokio::sync::Notify::new(),
            asked: Mutex::new(None),
        }
    }

    /// The Sentinel master name, for a Sentinel shard.
    pub(crate) fn master(&self) -> Option<&str> {
        match &self.source {
            Source::Sentinel { master, .. } => Some(master),
            Source::Static => None,
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn replicas_epoch(&self) -> u64 {
        self.replicas_epoch.load(Ordering::Acquire)
    }

    pub(crate) fn state(&self) -> State {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn primary(&self) -> Option<ConnectionAddr> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).primary.clone()
    }

    pub(crate) fn replicas(&self) -> Vec<ConnectionAddr> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).replicas.clone()
    }

    /// Records what Sentinel said: a new primary bumps the epoch and wakes
    /// the waiters; new replicas bump the replicas' epoch. Returns whether
    /// the primary changed.
    pub(crate) fn update(&self, primary: ConnectionAddr, replicas: Vec<ConnectionAddr>) -> bool {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.problem = None;
        let moved = state.primary.as_ref() != Some(&primary);
        if !moved && state.replicas == replicas {
            return false;
        }
        if moved {
            if state.primary.is_some() {
                state.last_failover = Some(Failover {
                    at: SystemTime::now(),
                    from: state.primary.as_ref().map(show_addr),
                    to: show_addr(&primary),
                });
            }
            state.primary = Some(primary);
        }
        let replicas_changed = state.replicas != replicas;
        state.replicas = replicas;
        {
            let mut latencies = self.latencies.write().unwrap_or_else(|e| e.into_inner());
            *latencies = nodes_of(state.primary.as_ref(), &state.replicas, &latencies);
        }
        drop(state);
        if replicas_changed {
            self.replicas_epoch.fetch_add(1, Ordering::AcqRel);
        }
        if moved {
            self.bump();
        }
        moved
    }

    /// The nodes (primary first, then the replicas) with their estimates.
    pub(crate) fn latencies(&self) -> Latencies {
        self.latencies.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a PING of the node at `addr`: its round trip, or `None`
    /// when it did not answer (the estimate becomes [`UNKNOWN`]). A node
    /// no longer listed is not recorded.
    pub(crate) fn record(&self, addr: &ConnectionAddr, took: Option<Duration>) {
        let latencies = self.latencies();
        let Some(node) = latencies.iter().find(|n| &n.addr == addr) else {
            return;
        };
        let next = match took {
            None => UNKNOWN,
            Some(took) => {
                let sample = u64::try_from(took.as_micros()).unwrap_or(UNKNOWN - 1).min(UNKNOWN - 1);
                match node.micros() {
                    UNKNOWN => sample,
                    old => (old * (SAMPLE_WEIGHT - 1) / SAMPLE_WEIGHT + sample / SAMPLE_WEIGHT).min(UNKNOWN - 1),
                }
            }
        };
        node.micros.store(next, Ordering::Relaxed);
    }

    /// The next turn among nodes about as fast as each other.
    pub(crate) fn next_turn(&self) -> usize {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }

    /// Records why the primary could not be learned.
    pub(crate) fn problem(&self, why: String) {
        self.state.write().unwrap_or_else(|e| e.into_inner()).problem = Some(why);
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.notify_all();
        self.notify.notify_waiters();
    }

    /// A request failed as it does when the primary is gone or demoted:
    /// the watcher asks Sentinel at once.
    pub(crate) fn suspect(&self) {
        self.suspect.store(true, Ordering::Release);
    }

    /// Whether a request suspected a failover since the last call (and
    /// at least 50 ms passed since Sentinel was last asked).
    pub(crate) fn take_suspicion(&self) -> bool {
        if !self.suspect.load(Ordering::Acquire) {
            return false;
        }
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        if asked.is_some_and(|t| t.elapsed() < Duration::from_millis(50)) {
            return false;
        }
        *asked = Some(Instant::now());
        self.suspect.store(false, Ordering::Release);
        true
    }

    /// Waits (blocking) until the epoch differs from `since`, at most
    /// `within`; whether it did.
    pub(crate) fn wait_change(&self, since: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.epoch() != since {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = self
                .changed
                .wait_timeout(guard, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// [`wait_change`](Self::wait_change) for async callers.
    pub(crate) async fn wait_change_async(&self, since: u64, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            if self.epoch() != since {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.epoch() != since;
            }
        }
    }
}

/// The latency list of `primary` and `replicas`, keeping the estimates
/// of the nodes `old` already had.
fn nodes_of(primary: Option<&ConnectionAddr>, replicas: &[ConnectionAddr], old: &[NodeLatency]) -> Latencies {
    let kept = |addr: &ConnectionAddr| {
        old.iter()
            .find(|n| &n.addr == addr)
            .map_or(UNKNOWN, NodeLatency::micros)
    };
    let mut nodes = Vec::with_capacity(replicas.len() + 1);
    if let Some(p) = primary {
        nodes.push(NodeLatency::new(p.clone(), true, kept(p)));
    }
    for r in replicas.iter().filter(|r| Some(*r) != primary) {
        nodes.push(NodeLatency::new(r.clone(), false, kept(r)));
    }
    Arc::new(nodes)
}

impl Shard {
    /// A description without secrets, for `Debug`.
    pub(crate) fn describe(&self) -> String {
        let state = self.state();
        let primary = state.primary.as_ref().map_or_else(|| "unknown".to_string(), show_addr);
        let replicas: Vec<String> = state.replicas.iter().map(show_addr).collect();
        match &self.source {
            Source::Static => format!("primary {primary}, replicas {replicas:?}"),
            Source::Sentinel { master, sentinels } => format!(
                "Sentinel master `{master}` ({} sentinels: {:?}), primary {primary}, replicas {replicas:?}",
                sentinels.len(),
                sentinels.iter().map(|s| show_addr(s.addr())).collect::<Vec<_>>()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use redis::ConnectionAddr;

    use super::{Shard, Source, UNKNOWN};

    fn addr(port: u16) -> ConnectionAddr {
        ConnectionAddr::Tcp("127.0.0.1".to_string(), port)
    }

    fn estimates(shard: &Shard) -> Vec<(u16, bool, u64)> {
        shard
            .latencies()
            .iter()
            .map(|n| match &n.addr {
                ConnectionAddr::Tcp(_, p) => (*p, n.primary, n.micros()),
                _ => unreachable!("tcp only here"),
            })
            .collect()
    }

    #[test]
    fn estimates_are_smoothed_and_reset_when_a_node_does_not_answer() {
        let shard = Shard::new(Source::Static, Some(addr(1)), vec![addr(2)]);
        assert_eq!(estimates(&shard), [(1, true, UNKNOWN), (2, false, UNKNOWN)]);
        shard.record(&addr(2), Some(Duration::from_micros(400)));
        assert_eq!(estimates(&shard)[1].2, 400, "the first sample sets it");
        shard.record(&addr(2), Some(Duration::from_micros(800)));
        assert_eq!(estimates(&shard)[1].2, 500, "a new sample weighs a quarter");
        shard.record(&addr(2), None);
        assert_eq!(estimates(&shard)[1].2, UNKNOWN);
        // A node not listed is not recorded.
        shard.record(&addr(9), Some(Duration::from_micros(1)));
        assert_eq!(estimates(&shard).len(), 2);
    }

    #[test]
    fn a_failover_keeps_the_estimates_of_nodes_that_stay() {
        let shard = Shard::new(Source::Static, Some(addr(1)), vec![addr(2), addr(3)]);
        shard.record(&addr(1), Some(Duration::from_micros(100)));
        shard.record(&addr(2), Some(Duration::from_micros(200)));
        // 2 is promoted; 1 is gone; 4 is new.
        shard.update(addr(2), vec![addr(3), addr(4)]);
        assert_eq!(
            estimates(&shard),
            [(2, true, 200), (3, false, UNKNOWN), (4, false, UNKNOWN)]
        );
    }
}
