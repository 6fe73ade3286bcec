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
//! removal) is a separate opt-in: while a server is down, its keys are
//! placed as if it were not in the list, so they go to the other servers
//! (its data is out of reach meanwhile: a read of one of its keys finds
//! what was written there since, or nothing). What happens when it is back
//! is [`HealthCheck::rejoin`]:
//!
//! - [`Rejoin::MoveBack`] (the default): the keys written on the other
//!   servers during the ejection are the newer copies, so they are moved
//!   back to it before it serves them again, by the mover the rebalance
//!   uses ([`crate::rebalance`]): `MIGRATE ... REPLACE` between plain
//!   servers (atomic per key); on shards with replicas, each key marked
//!   as moving and copied in steps that the replicas of both shards
//!   acknowledge (`WAIT`) before the next, so a failover during the move
//!   back loses no key (with a replica down, the keys stay where they
//!   were written and the move is tried again until it acknowledges). Meanwhile each of its keys is served where it is, as
//!   during a resharding ([`Builder::migrating_from`](crate::Builder::migrating_from)):
//!   on the server it went to while a copy is there (checked and run in
//!   one script), on its own server otherwise; nothing creates it on the
//!   other server any more. The move ends after a pass that found nothing
//!   to move and started one response timeout after the server came back
//!   (commands routed before that have finished). Result: a write
//!   acknowledged during the ejection is what the key reads afterwards,
//!   and no copy is left behind to come back at the next outage. Limits,
//!   stated plainly: writes that depend on the old value (INCR, APPEND,
//!   HSET of one field, ...) made during the ejection started from what
//!   the other server had (usually nothing), and that result replaces the
//!   older one; a DEL or EXPIRE made during the ejection of a key that was
//!   not written there is not carried back (the server returns with the
//!   key); several client processes each decide on their own, so one
//!   that has not yet seen the server return can still write the key to
//!   the other server for up to its own check interval, and such a write
//!   is carried back only while the move is running.
//! - [`Rejoin::Keep`]: twemproxy's behaviour, for caches: the server serves
//!   its keys again at once with what it held; writes made elsewhere
//!   during the ejection are no longer read (lost to the client) and stay
//!   there as stale copies that come back at the next outage.
//! - Without ejection a down server's keys fail fast (naming it): nothing
//!   stale, nothing lost, but those keys are unavailable meanwhile.
//!
//! Only placements where removing a server moves only that server's keys
//! allow ejection (ketama, rendezvous); for `standard` and `modula`,
//! removing one server would move almost every key, so
//! [`Builder::build`](crate::Builder::build) refuses it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::RedisResult;

use crate::connect::{Clients, Connector, Kind};
use crate::mover::{Counters, Journal, Mover, Open, Page, Resolve, Settings, is_bookkeeping, query};
use crate::placement::{Mode, Placement};
use crate::server::Server;
use crate::task::{Stop, Task};

/// A user-supplied check of one server's connection.
pub type CheckFn = Arc<dyn Fn(&mut redis::Connection) -> RedisResult<()> + Send + Sync>;

/// A callback for [`HealthEvent`]s.
pub type EventFn = Arc<dyn Fn(&HealthEvent) + Send + Sync>;

/// Health checking options (see the module docs).
///
/// Build it with `..Default::default()` after the fields you set: fields
/// are added in minor releases, each with a default that keeps the
/// behaviour you had. (Not `#[non_exhaustive]`, which would forbid that
/// struct expression.)
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
    /// With `eject`: what happens to the keys written on the other servers
    /// while a server was out, once it is back (default: moved back).
    pub rejoin: Rejoin,
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
            rejoin: Rejoin::MoveBack,
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
            .field("rejoin", &self.rejoin)
            .field("custom_check", &self.check.is_some())
            .finish()
    }
}

/// What an ejected server's return does with the keys written on the other
/// servers while it was out (see the module docs for the guarantees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Rejoin {
    /// They are moved back to it (they are the newer copies) before it
    /// serves them again; meanwhile each is served where it is.
    #[default]
    MoveBack,
    /// It serves its keys again at once with what it held (twemproxy's
    /// behaviour): writes made elsewhere meanwhile are no longer read.
    Keep,
}

/// A change of a server's health.
///
/// With [`HealthCheck::eject`], routing has already changed when a `Down` or
/// `Up` event reaches [`HealthCheck::on_event`]: a key looked up from the
/// callback (or after it) goes to its server under the new placement.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
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
    /// Back from an ejection, and the keys written on the other servers
    /// meanwhile are being moved back to it ([`Rejoin::MoveBack`]).
    pub rejoining: bool,
}

/// The state shared by the checking thread and the client.
#[derive(Debug)]
pub(crate) struct Health {
    pub(crate) states: Mutex<Vec<ServerHealth>>,
    /// Some server is ejected: routing reads `ejected`.
    pub(crate) any_ejected: AtomicBool,
    /// The placement over the up servers, with its index -> server index map.
    pub(crate) ejected: RwLock<Option<(Placement, Vec<usize>)>>,
    /// A server came back and the keys written elsewhere meanwhile are
    /// being moved back: routing reads `rejoin`.
    rejoining: AtomicBool,
    rejoin: RwLock<Option<Arc<RejoinState>>>,
    /// Bumped at every routing change; a mover stops when it moves on.
    epoch: AtomicU64,
}

/// The routing in force before a server came back, and the servers up now.
#[derive(Debug)]
struct RejoinState {
    /// None: every server was up (the full placement).
    before: Option<(Placement, Vec<usize>)>,
    up: Vec<bool>,
}

impl RejoinState {
    fn before(&self, key: &[u8], full: &Placement) -> usize {
        match &self.before {
            Some((p, map)) => map[p.index(key)],
            None => full.index(key),
        }
    }
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
                        rejoining: false,
                    })
                    .collect(),
            ),
            any_ejected: AtomicBool::new(false),
            ejected: RwLock::new(None),
            rejoining: AtomicBool::new(false),
            rejoin: RwLock::new(None),
            epoch: AtomicU64::new(0),
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

    /// While keys are being moved back to a server that returned: the
    /// server a key was routed to before (where a newer copy may be), when
    /// it differs from `now` and is up.
    #[inline]
    pub(crate) fn rejoin_from(&self, key: &[u8], now: usize, full: &Placement) -> Option<usize> {
        if !self.rejoining.load(Ordering::Acquire) {
            return None;
        }
        let guard = self.rejoin.read().unwrap_or_else(|e| e.into_inner());
        let state = guard.as_ref()?;
        let before = state.before(key, full);
        (before != now && state.up.get(before).copied().unwrap_or(false)).then_some(before)
    }

    /// The routing in force now, as (placement, index -> server) when some
    /// server is ejected.
    fn routing(&self) -> Option<(Placement, Vec<usize>)> {
        self.ejected.read().unwrap_or_else(|e| e.into_inner()).clone()
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

    /// Bumped at every routing change (a server ejected or back).
    pub(crate) fn routing_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn snapshot(&self) -> Vec<ServerHealth> {
        let mut all = self.states.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if self.rejoining.load(Ordering::Acquire)
            && let Some(state) = self.rejoin.read().unwrap_or_else(|e| e.into_inner()).as_ref()
            && let Some((_, up_before)) = &state.before
        {
            for (i, s) in all.iter_mut().enumerate() {
                s.rejoining = s.up && !up_before.contains(&i);
            }
        }
        all
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
/// `grace`: how long a command routed before a change may still be in
/// flight (the client's response timeout).
pub(crate) fn start(
    health: Arc<Health>,
    servers: Vec<Server>,
    mode: Mode,
    hash_tags: Option<bool>,
    options: HealthCheck,
    grace: Duration,
    c: &Connector,
) -> RedisResult<Task> {
    let mut clients = Vec::new();
    for s in &servers {
        // A Sentinel shard whose primary is not known yet is checked at
        // its placeholder (and fails) until the watcher names one.
        let made = match (Clients::of(s), s.shard()) {
            (Ok(c), _) => c,
            (Err(_), Some(_)) => {
                Clients::full(redis::Client::open(s.connection_info()).map_err(|e| crate::error::name_server(s, e))?)
            }
            (Err(e), None) => return Err(crate::error::name_server(s, e)),
        };
        clients.push(made);
    }
    let c = c.clone();
    Task::spawn("mredis-health", move |stop| {
        run(health, servers, clients, mode, hash_tags, options, grace, &c, &stop)
    })
}

#[allow(clippy::too_many_arguments)]
fn run(
    health: Arc<Health>,
    servers: Vec<Server>,
    clients: Vec<Clients>,
    mode: Mode,
    hash_tags: Option<bool>,
    options: HealthCheck,
    grace: Duration,
    c: &Connector,
    stop: &Stop,
) {
    let n = servers.len();
    let mut clients = clients;
    let mut epochs: Vec<u64> = servers.iter().map(Server::epoch).collect();
    let mut cons: Vec<Option<redis::Connection>> = (0..n).map(|_| None).collect();
    let mut bad = vec![0u32; n];
    let mut good = vec![0u32; n];
    let timeout = options.interval.max(Duration::from_millis(10));
    while !stop.stopped() {
        let round = Instant::now();
        for i in 0..n {
            let mut changed = false;
            // A shard that failed over is checked at its new primary.
            if servers[i].epoch() != epochs[i]
                && let Ok(client) = Clients::of(&servers[i])
            {
                epochs[i] = servers[i].epoch();
                clients[i] = client;
                cons[i] = None;
            }
            let started = Instant::now();
            let result = check_one(&clients[i], &mut cons[i], timeout, options.check.as_ref(), c);
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
                let came_back = events.iter().any(|e| matches!(e, HealthEvent::Up { .. }));
                let before = health.routing();
                let moving_back =
                    options.rejoin == Rejoin::MoveBack && (came_back || health.rejoining.load(Ordering::Acquire));
                // The guard of the keys to move back is in place before the
                // routing changes: a command on a key written elsewhere
                // meanwhile never reaches the returning server's older copy.
                let rejoin = if moving_back {
                    prepare_rejoin(&health, &servers, mode, hash_tags, before)
                } else {
                    None
                };
                apply_ejection(&health, &servers, mode, hash_tags);
                let epoch = health.epoch.fetch_add(1, Ordering::AcqRel) + 1;
                if let Some((full, state)) = rejoin {
                    start_rejoin(&health, &servers, full, state, epoch, grace, c, stop);
                }
            }
            if let Some(cb) = &options.on_event {
                for e in &events {
                    cb(e);
                }
            }
        }
        stop.wait(options.interval.saturating_sub(round.elapsed()));
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

/// Sets up (or, after another change, renews) the guard of the keys that
/// the routing before sent elsewhere: routing serves each where it is
/// until the mover has moved them all back. The full placement and the
/// state, for [`start_rejoin`].
fn prepare_rejoin(
    health: &Arc<Health>,
    servers: &[Server],
    mode: Mode,
    hash_tags: Option<bool>,
    before: Option<(Placement, Vec<usize>)>,
) -> Option<(Placement, Arc<RejoinState>)> {
    let up: Vec<bool> = health.snapshot().iter().map(|s| s.up).collect();
    let full = Placement::new(mode, servers, hash_tags).ok()?;
    let state = {
        let mut slot = health.rejoin.write().unwrap_or_else(|e| e.into_inner());
        // A change during a move keeps the first routing: the keys to move
        // back are where it sent them.
        let before = slot.as_ref().map_or(before, |old| old.before.clone());
        let state = Arc::new(RejoinState { before, up });
        *slot = Some(state.clone());
        state
    };
    health.rejoining.store(true, Ordering::Release);
    Some((full, state))
}

/// Starts the mover thread of a prepared rejoin, for routing `epoch`.
#[allow(clippy::too_many_arguments)]
fn start_rejoin(
    health: &Arc<Health>,
    servers: &[Server],
    full: Placement,
    state: Arc<RejoinState>,
    epoch: u64,
    grace: Duration,
    c: &Connector,
    stop: &Stop,
) {
    let health = health.clone();
    let servers = servers.to_vec();
    let c = c.clone();
    // Under the checker's stop flag: it stops with the checker.
    let _ = stop.spawn("mredis-rejoin", move |stop| {
        move_back(&health, &servers, &full, &state, epoch, grace, &c, &stop)
    });
}

/// Moves back every key whose routing before differs from now's, pass after
/// pass, until a pass that started after `grace` moved nothing; then
/// routing goes direct again (unless routing changed meanwhile).
///
/// The keys move with the rebalance's mover ([`crate::mover`]): `MIGRATE`
/// between plain servers; on shards with replicas, marked and in steps
/// each acknowledged by the replicas, so a failover during the move back
/// loses no key. The copy being moved back is the newer one: it replaces
/// the returning server's.
#[allow(clippy::too_many_arguments)]
fn move_back(
    health: &Health,
    servers: &[Server],
    full: &Placement,
    state: &RejoinState,
    epoch: u64,
    grace: Duration,
    c: &Connector,
    stop: &Stop,
) {
    let started = Instant::now();
    let current = |h: &Health| h.epoch.load(Ordering::Acquire) == epoch && !stop.stopped();
    let settings = Settings::new(grace.max(Duration::from_secs(1)).as_millis() as u64, 100, 1000);
    // What this move back saw of its batches, across passes: a batch whose
    // reply was lost is settled by the next pass.
    let journal = Journal::default();
    let durable = crate::mover::durable(servers.iter());
    let open = |server: &Server, response: Duration| c.open(server, Kind::Health, response);
    let mut retry = Duration::from_millis(100);
    while current(health) {
        let pass = Instant::now();
        let now = health.routing();
        let owner = |key: &[u8]| match &now {
            Some((p, map)) => map[p.index(key)],
            None => full.index(key),
        };
        let mut moved = 0u64;
        let mut failed = false;
        for from in 0..servers.len() {
            if !state.up.get(from).copied().unwrap_or(false) || !current(health) {
                continue;
            }
            let back = Back {
                from,
                servers,
                full,
                state,
                owner: &owner,
            };
            match back.run(&settings, &journal, &open, durable) {
                Ok(n) => moved += n,
                // Tried again after a moment (the keys stay where clients
                // find them meanwhile).
                Err(_) => failed = true,
            }
        }
        if moved == 0 && !failed && pass.duration_since(started) >= grace {
            break;
        }
        if moved == 0 {
            // Nothing to do until the grace is over (then one last pass), or,
            // after a failed pass, a retry in a moment (longer after each
            // failure in a row, up to 2 s: a server that keeps refusing is
            // not asked ten times a second).
            let rest = (started + grace).saturating_duration_since(Instant::now());
            stop.wait(if rest.is_zero() { retry } else { rest });
        }
        retry = if failed {
            (retry * 2).min(Duration::from_secs(2))
        } else {
            Duration::from_millis(100)
        };
    }
    if current(health) {
        health.rejoining.store(false, Ordering::Release);
        *health.rejoin.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// One pass of the move back over one server.
struct Back<'a> {
    from: usize,
    servers: &'a [Server],
    full: &'a Placement,
    state: &'a RejoinState,
    owner: &'a dyn Fn(&[u8]) -> usize,
}

impl Back<'_> {
    /// Where `key`, found on this server, goes: the server now's routing
    /// puts it on, if the routing before put it here.
    fn dest_of(&self, key: &[u8]) -> Option<usize> {
        let to = (self.owner)(key);
        (to != self.from && self.state.before(key, self.full) == self.from).then_some(to)
    }

    /// Moves every key of this server that goes elsewhere; how many.
    fn run(&self, settings: &Settings, journal: &Journal, open: Open, durable: bool) -> RedisResult<u64> {
        let counters = Counters::default();
        let src = &self.servers[self.from];
        let mut mv = Mover::open(
            src,
            src.name().to_string(),
            self.servers,
            Vec::new(),
            settings,
            journal,
            &counters,
            Resolve::Replace,
            open,
        )?;
        if durable {
            // Keys a pass cut short (a failover) left marked: finished
            // towards their owner now, or unmarked when that is here.
            let owner = |key: &[u8]| Some((self.owner)(key)).filter(|&to| to != self.from);
            mv.resume_marked(&owner)?;
        }
        let io = settings.io_timeout;
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("COUNT").arg(settings.scan_count);
            let (next, keys): Page = query(&scan, &mut mv.con, &mv.name, io)?;
            let mut groups: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
            for key in keys {
                if let Some(to) = self.dest_of(&key).filter(|_| !is_bookkeeping(&key)) {
                    groups.entry(to).or_default().push(key);
                }
            }
            for keys in groups.values_mut() {
                keys.sort_unstable();
                keys.dedup();
            }
            mv.move_groups(groups, durable)?;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if durable {
            mv.forget_arrivals()?;
        }
        if let Some((key, to)) = mv.out.conflicts.first() {
            // Changed on the returning server while being compared: the
            // next pass moves it again.
            return Err(crate::error::client_error(format!(
                "{}: `{}` changed on {} during the move back",
                mv.name,
                crate::error::show_key(key),
                self.servers[*to].name()
            )));
        }
        Ok(mv.out.moved)
    }
}

fn check_one(
    client: &Clients,
    con: &mut Option<redis::Connection>,
    timeout: Duration,
    check: Option<&CheckFn>,
    connector: &Connector,
) -> RedisResult<()> {
    if con.is_none() {
        // Within the check's own deadline, not the client's connect
        // timeout: a stopped server is one failed check.
        *con = Some(connector.open_within(client, Kind::Health, timeout, timeout)?);
    }
    let Some(c) = con.as_mut() else {
        unreachable!("just set")
    };
    match check {
        Some(f) => f(c),
        None => redis::cmd("PING").query::<()>(c),
    }
}
