//! Opt-in health checking ([`Builder::health_check`](crate::Builder::health_check)).
//!
//! A background thread checks every server at a fixed interval (PING, or a
//! check of your own) on a connection of its own, and keeps per-server
//! state: up or down, the last latency, checks and failures. A server is
//! marked down after `down_after` failed checks in a row and up again after
//! `up_after` good ones; a check slower than `slow_after` is reported too.
//! Each change is an [`HealthEvent`], given to your callback.
//!
//! Without [`HealthCheck::eject`] nothing else changes: placement never
//! moves on its own, and a down server's keys keep failing (naming it).
//!
//! **Ejection** (twemproxy's `auto_eject_hosts`, go-redis Ring's shard
//! removal) is a separate opt-in for cache fleets: while a server is down,
//! its keys are placed as if it were not in the list, so they go to the
//! other servers; when it is back, they go to it again. Data consequences:
//! keys written to other servers while it was out stay there (stale copies
//! once it is back, until they expire or are deleted), and what it held is
//! served again, possibly stale, when it returns. Only placements where
//! removing a server moves only that server's keys allow it (ketama,
//! rendezvous); for `standard` and `modula`, removing one server would move
//! almost every key, so [`Builder::build`](crate::Builder::build) refuses it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::RedisResult;

use crate::placement::{Mode, Placement};
use crate::server::Server;

/// A user-supplied check of one server's connection.
pub type CheckFn = Arc<dyn Fn(&mut redis::Connection) -> RedisResult<()> + Send + Sync>;

/// A callback for [`HealthEvent`]s.
pub type EventFn = Arc<dyn Fn(&HealthEvent) + Send + Sync>;

/// Health checking options (see the module docs).
#[derive(Clone)]
pub struct HealthCheck {
    /// Time between checks of a server (default 500 ms, as go-redis Ring).
    pub interval: Duration,
    /// Failed checks in a row that mark a server down (default 3).
    pub down_after: u32,
    /// Good checks in a row that mark it up again (default 1).
    pub up_after: u32,
    /// A check slower than this raises [`HealthEvent::Slow`] (default 100 ms).
    pub slow_after: Duration,
    /// Place a down server's keys on the others (ketama and rendezvous only).
    pub eject: bool,
    /// The check (default: `PING`).
    pub check: Option<CheckFn>,
    /// Called with every event, from the checking thread.
    pub on_event: Option<EventFn>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            interval: Duration::from_millis(500),
            down_after: 3,
            up_after: 1,
            slow_after: Duration::from_millis(100),
            eject: false,
            check: None,
            on_event: None,
        }
    }
}

impl std::fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthCheck")
            .field("interval", &self.interval)
            .field("down_after", &self.down_after)
            .field("up_after", &self.up_after)
            .field("slow_after", &self.slow_after)
            .field("eject", &self.eject)
            .field("custom_check", &self.check.is_some())
            .finish()
    }
}

/// A change of a server's health.
///
/// With [`HealthCheck::eject`], routing has already changed when a `Down` or
/// `Up` event reaches [`HealthCheck::on_event`]: a key looked up from the
/// callback (or after it) goes to its server under the new placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthEvent {
    /// Marked down after failed checks (the last error, without secrets).
    Down {
        /// The server.
        server: String,
        /// Why the last check failed.
        reason: String,
    },
    /// Marked up again.
    Up {
        /// The server.
        server: String,
    },
    /// A check took longer than `slow_after`.
    Slow {
        /// The server.
        server: String,
        /// How long it took.
        took: Duration,
    },
}

/// What is known of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHealth {
    /// The server (`host:port:db`).
    pub server: String,
    /// Up (or not checked yet) or down.
    pub up: bool,
    /// How long the last good check took.
    pub latency: Option<Duration>,
    /// Checks made.
    pub checks: u64,
    /// Checks that failed.
    pub failures: u64,
    /// Idle connections the sync client keeps for it (`None` for the async client).
    pub idle_connections: Option<usize>,
}

/// The state shared by the checking thread and the client.
#[derive(Debug)]
pub(crate) struct Health {
    pub(crate) states: Mutex<Vec<ServerHealth>>,
    /// Some server is ejected: routing reads `ejected`.
    pub(crate) any_ejected: AtomicBool,
    /// The placement over the up servers, with its index -> server index map.
    pub(crate) ejected: RwLock<Option<(Placement, Vec<usize>)>>,
    stop: AtomicBool,
}

impl Health {
    pub(crate) fn new(servers: &[Server]) -> Arc<Health> {
        Arc::new(Health {
            states: Mutex::new(
                servers
                    .iter()
                    .map(|s| ServerHealth {
                        server: s.name().to_string(),
                        up: true,
                        latency: None,
                        checks: 0,
                        failures: 0,
                        idle_connections: None,
                    })
                    .collect(),
            ),
            any_ejected: AtomicBool::new(false),
            ejected: RwLock::new(None),
            stop: AtomicBool::new(false),
        })
    }

    /// The server a key goes to while some are ejected.
    #[inline]
    pub(crate) fn reroute(&self, key: &[u8]) -> Option<usize> {
        if !self.any_ejected.load(Ordering::Acquire) {
            return None;
        }
        let guard = self.ejected.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|(p, map)| map[p.index(key)])
    }

    /// The servers keys are placed on while some are ejected (`None`: all
    /// of them, the configured placement). Read-only; a subscriber polls it
    /// to follow placement changes.
    pub(crate) fn placed_on(&self) -> Option<Vec<usize>> {
        if !self.any_ejected.load(Ordering::Acquire) {
            return None;
        }
        let guard = self.ejected.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|(_, up)| up.clone())
    }

    pub(crate) fn snapshot(&self) -> Vec<ServerHealth> {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn shut_down(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether ejection is allowed for `mode`.
pub(crate) fn check_ejection(mode: Mode) -> RedisResult<()> {
    match mode {
        Mode::Ketama { .. } | Mode::Rendezvous => Ok(()),
        _ => Err(crate::server::config_error(format!(
            "ejection needs a placement where removing a server moves only that server's keys (ketama or \
             rendezvous); with {mode:?} it would move almost every key. Use health checking without eject, \
             or change the placement"
        ))),
    }
}

/// Starts the checking thread.
pub(crate) fn start(
    health: Arc<Health>,
    servers: Vec<Server>,
    mode: Mode,
    hash_tags: Option<bool>,
    options: HealthCheck,
) -> RedisResult<()> {
    let mut clients = Vec::new();
    for s in &servers {
        clients.push(s.client().map_err(|e| crate::error::name_server(s, e))?);
    }
    std::thread::Builder::new()
        .name("mredis-health".to_string())
        .spawn(move || run(health, servers, clients, mode, hash_tags, options))
        .map_err(|e| crate::error::client_error(format!("cannot start the health checking thread: {e}")))?;
    Ok(())
}

fn run(
    health: Arc<Health>,
    servers: Vec<Server>,
    clients: Vec<redis::Client>,
    mode: Mode,
    hash_tags: Option<bool>,
    options: HealthCheck,
) {
    let n = servers.len();
    let mut cons: Vec<Option<redis::Connection>> = (0..n).map(|_| None).collect();
    let mut bad = vec![0u32; n];
    let mut good = vec![0u32; n];
    let timeout = options.interval.max(Duration::from_millis(10));
    while !health.stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        for i in 0..n {
            let mut changed = false;
            let started = Instant::now();
            let result = check_one(&clients[i], &mut cons[i], timeout, options.check.as_ref());
            let took = started.elapsed();
            let mut events = Vec::new();
            {
                let mut states = health.states.lock().unwrap_or_else(|e| e.into_inner());
                let st = &mut states[i];
                st.checks += 1;
                match &result {
                    Ok(()) => {
                        st.latency = Some(took);
                        bad[i] = 0;
                        good[i] += 1;
                        if !st.up && good[i] >= options.up_after.max(1) {
                            st.up = true;
                            changed = true;
                            events.push(HealthEvent::Up {
                                server: st.server.clone(),
                            });
                        }
                        if took > options.slow_after {
                            events.push(HealthEvent::Slow {
                                server: st.server.clone(),
                                took,
                            });
                        }
                    }
                    Err(e) => {
                        st.failures += 1;
                        good[i] = 0;
                        bad[i] += 1;
                        cons[i] = None;
                        if st.up && bad[i] >= options.down_after.max(1) {
                            st.up = false;
                            changed = true;
                            events.push(HealthEvent::Down {
                                server: st.server.clone(),
                                reason: e.to_string(),
                            });
                        }
                    }
                }
            }
            // Routing changes before anyone hears of it: a `Down` or `Up`
            // callback that looks at placement sees the new one.
            if changed && options.eject {
                apply_ejection(&health, &servers, mode, hash_tags);
            }
            if let Some(cb) = &options.on_event {
                for e in &events {
                    cb(e);
                }
            }
        }
        let spent = round.elapsed();
        if spent < options.interval {
            std::thread::sleep(options.interval - spent);
        }
    }
}

/// Routes around the servers that are down now (or stops doing so when all
/// are up, or none is: with every server down there is nowhere else to go).
fn apply_ejection(health: &Health, servers: &[Server], mode: Mode, hash_tags: Option<bool>) {
    let up: Vec<usize> = health
        .snapshot()
        .iter()
        .enumerate()
        .filter(|(_, s)| s.up)
        .map(|(i, _)| i)
        .collect();
    let placement = if up.len() == servers.len() || up.is_empty() {
        None
    } else {
        let subset: Vec<Server> = up.iter().map(|&i| servers[i].clone()).collect();
        Placement::new(mode, &subset, hash_tags).ok().map(|p| (p, up))
    };
    let any = placement.is_some();
    *health.ejected.write().unwrap_or_else(|e| e.into_inner()) = placement;
    health.any_ejected.store(any, Ordering::Release);
}

fn check_one(
    client: &redis::Client,
    con: &mut Option<redis::Connection>,
    timeout: Duration,
    check: Option<&CheckFn>,
) -> RedisResult<()> {
    if con.is_none() {
        let c = client.get_connection_with_timeout(timeout)?;
        c.set_read_timeout(Some(timeout))?;
        c.set_write_timeout(Some(timeout))?;
        *con = Some(c);
    }
    let Some(c) = con.as_mut() else {
        unreachable!("just set")
    };
    match check {
        Some(f) => f(c),
        None => redis::cmd("PING").query::<()>(c),
    }
}
