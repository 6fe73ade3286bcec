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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, RwLock};
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
    /// Sync waiters for a change.
    changed: Condvar,
    lock: Mutex<()>,
    /// Async waiters for a change.
    notify: tokio::sync::Notify,
    /// When Sentinel was last asked (the watcher asks at most every 50 ms
    /// on suspicion).
    asked: Mutex<Option<Instant>>,
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
        Shard {
            source,
            state: RwLock::new(State {
                primary,
                replicas,
                ..State::default()
            }),
            epoch: AtomicU64::new(0),
            replicas_epoch: AtomicU64::new(0),
            suspect: AtomicBool::new(false),
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
        drop(state);
        if replicas_changed {
            self.replicas_epoch.fetch_add(1, Ordering::AcqRel);
        }
        if moved {
            self.bump();
        }
        moved
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
