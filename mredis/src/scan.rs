//! Cursor iteration over the fleet. `SCAN` walks every server's cursor in
//! turn, so each key is yielded once when nothing changes; `HSCAN`, `SSCAN`
//! and `ZSCAN` walk one key on the server that owns it. The sync client
//! gets iterators, the async one streams; both yield `RedisResult<T>` like
//! redis-rs's `Iter`/`AsyncIter`.

use std::collections::{HashSet, VecDeque};

use futures::stream::BoxStream;
use redis::{Cmd, FromRedisValue, RedisError, RedisResult, ToRedisArgs, Value};

use crate::driver::{AsyncDriver, Driver};
use crate::error::client_error;
use crate::exec::{Cmds, Machine, Request, Step, one};
use crate::migration::One;
use crate::routing::{Move, Route, Topology};

/// Page size asked of the server.
const COUNT: usize = 100;

/// Which keys of a server's SCAN pages are yielded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// All (no migration).
    All,
    /// During a migration, first walk: keys that do not move, and moving
    /// keys still on their old server.
    Old,
    /// Second walk, after the first: moving keys on their new server not
    /// yielded by the first. A key moves only from old to new, so one that
    /// existed throughout is found by one walk or the other.
    New,
}

/// The servers a fleet-wide SCAN walks, in order: every server once; during
/// a migration, every server of both configurations (keys that stay, and
/// moving keys still on their old server), then the new configuration's
/// servers again (moving keys already on their new server).
pub(crate) fn fleet_walk(core: &Topology) -> Vec<(usize, Phase)> {
    if core.migrating() {
        (0..core.all())
            .map(|s| (s, Phase::Old))
            .chain((0..core.current).map(|s| (s, Phase::New)))
            .collect()
    } else {
        (0..core.all()).map(|s| (s, Phase::All)).collect()
    }
}

/// Whether `key`, found on `server` in `phase` of the [`fleet_walk`], is
/// yielded there: a key that exists throughout is yielded by one step or
/// the other. With `seen` (the moving keys already yielded), never twice;
/// without (a cursor that carries no state), a key that moves while the
/// walk runs may come twice, as SCAN allows.
pub(crate) fn on_walk(
    core: &Topology,
    server: usize,
    phase: Phase,
    key: &[u8],
    seen: Option<&mut HashSet<Vec<u8>>>,
) -> bool {
    if phase == Phase::All {
        return true;
    }
    // A walk with old and new phases started during the migration: it
    // keeps the migration's rules if the finish comes meanwhile.
    let (owner, from) = core.owner_in(key, true);
    let moving = from.is_some();
    match phase {
        Phase::Old if moving && server == owner => false,
        Phase::Old => {
            if moving && let Some(seen) = seen {
                seen.insert(key.to_vec());
            }
            true
        }
        Phase::New => moving && server == owner && seen.is_none_or(|seen| !seen.contains(key)),
        Phase::All => true,
    }
}

/// What to scan: which servers, which command.
#[derive(Debug, Clone)]
pub(crate) struct ScanSpec {
    command: &'static str,
    key: Option<Vec<u8>>,
    pattern: Option<Vec<u8>>,
    servers: Vec<(usize, Phase)>,
    /// HSCAN & co. on a key being moved: guarded pages on its old server.
    moves: Vec<Move>,
    /// Options given as `redis::ScanOptions` (MATCH, COUNT, TYPE).
    options: Vec<Vec<u8>>,
}

impl ScanSpec {
    pub(crate) fn keys(core: &Topology, pattern: Option<Vec<u8>>) -> ScanSpec {
        ScanSpec {
            command: "SCAN",
            key: None,
            pattern,
            servers: fleet_walk(core),
            moves: Vec::new(),
            options: Vec::new(),
        }
    }

    pub(crate) fn of_key(command: &'static str, key: Vec<u8>, route: Route, pattern: Option<Vec<u8>>) -> ScanSpec {
        let (server, moves) = match route {
            Route::One { server, moves } => (server, moves),
            Route::Split(_) | Route::All(_) => (0, Vec::new()),
        };
        ScanSpec {
            command,
            key: Some(key),
            pattern,
            servers: vec![(server, Phase::All)],
            moves,
            options: Vec::new(),
        }
    }

    fn page(&self, cursor: u64) -> Cmd {
        let mut cmd = redis::cmd(self.command);
        if let Some(key) = &self.key {
            cmd.arg(&key[..]);
        }
        cmd.arg(cursor);
        if let Some(p) = &self.pattern {
            cmd.arg("MATCH").arg(&p[..]);
        }
        for o in &self.options {
            cmd.arg(&o[..]);
        }
        if !self.options.iter().any(|o| o.eq_ignore_ascii_case(b"COUNT")) {
            cmd.arg("COUNT").arg(COUNT);
        }
        cmd
    }
}

/// Splits a `[cursor, [items]]` reply.
fn split_page(value: Value) -> RedisResult<(u64, Vec<Value>)> {
    let Value::Array(mut parts) = value else {
        return Err(client_error(format!("unexpected SCAN reply {value:?}")));
    };
    if parts.len() != 2 {
        return Err(client_error(format!(
            "unexpected SCAN reply with {} parts",
            parts.len()
        )));
    }
    let items = match parts.pop() {
        Some(Value::Array(items)) => items,
        other => return Err(client_error(format!("unexpected SCAN items {other:?}"))),
    };
    let cursor: u64 = match parts.pop() {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(&b)
            .parse()
            .map_err(|_| client_error("bad cursor".into()))?,
        Some(Value::Int(n)) => n as u64,
        other => return Err(client_error(format!("unexpected SCAN cursor {other:?}"))),
    };
    Ok((cursor, items))
}

/// Where the iteration stands.
#[derive(Debug)]
struct ScanState<T> {
    spec: ScanSpec,
    position: usize,
    cursor: u64,
    buffer: VecDeque<T>,
    done: bool,
    /// Moving keys yielded by the first walk of a migration.
    seen: HashSet<Vec<u8>>,
    /// A page of a moving key came from its old server.
    paged_on_old: bool,
    /// The error that ends the iteration, not yet yielded.
    error: Option<RedisError>,
    /// An error ended it: a cursor cannot be resumed reliably.
    failed: bool,
}

/// What an iteration does next.
enum Next<T> {
    Yield(RedisResult<T>),
    End,
    Fetch(Fetch),
}

/// A page to fetch: its server, its command, and the moving keys that
/// guard it (HSCAN & co. on a key being moved).
struct Fetch {
    server: usize,
    cmd: Cmd,
    moves: Vec<Move>,
}

impl Fetch {
    /// The machine that fetches the page into `state`.
    fn run<'a, T>(&'a self, core: &'a Topology, state: &'a mut ScanState<T>) -> PageRun<'a, T> {
        let step = if self.moves.is_empty() {
            PageStep::Direct(&self.cmd)
        } else {
            PageStep::Moving(One::new(
                core,
                std::slice::from_ref(&self.cmd),
                false,
                self.server,
                &self.moves,
            ))
        };
        PageRun {
            core,
            state,
            server: self.server,
            step,
        }
    }
}

/// Fetches one page of a scan and takes it into the iteration's state.
struct PageRun<'a, T> {
    core: &'a Topology,
    state: &'a mut ScanState<T>,
    server: usize,
    step: PageStep<'a>,
}

enum PageStep<'a> {
    /// The page command on its server.
    Direct(&'a Cmd),
    /// Guarded by the migration machine while the key is moving.
    Moving(One<'a>),
}

impl<T: FromRedisValue> PageRun<'_, T> {
    /// After a step of the migration machine: once done, the page is
    /// taken unless the key left its old server meanwhile (then the next
    /// fetch starts its walk again on the new server).
    fn guarded(&mut self, step: Step<'static, Value>, served_on: usize) -> Step<'static, ()> {
        match step {
            Step::Send(requests) => Step::Send(requests),
            Step::Wait(d) => Step::Wait(d),
            Step::Done(page) => Step::Done(match page.and_then(Value::extract_error) {
                Ok(v) if self.state.served(served_on != self.server) => self.state.take_page(self.core, v),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }),
        }
    }
}

impl<T: FromRedisValue> Machine for PageRun<'_, T> {
    type Output = ();

    fn start(&mut self) -> Step<'_, ()> {
        match &mut self.step {
            PageStep::Direct(cmd) => Step::Send(vec![Request {
                server: self.server,
                block: None,
                cmds: Cmds::one(cmd),
            }]),
            PageStep::Moving(m) => {
                let step = m.start().into_owned();
                let served_on = m.served_on;
                self.guarded(step, served_on)
            }
        }
    }

    fn next(&mut self, replies: Vec<RedisResult<Vec<Value>>>) -> Step<'_, ()> {
        match &mut self.step {
            PageStep::Direct(_) => Step::Done(
                one(replies.into_iter().next())
                    .and_then(Value::extract_error)
                    .and_then(|v| self.state.take_page(self.core, v)),
            ),
            PageStep::Moving(m) => {
                let step = m.next(replies).into_owned();
                let served_on = m.served_on;
                self.guarded(step, served_on)
            }
        }
    }
}

impl<T: FromRedisValue> ScanState<T> {
    fn new(spec: ScanSpec) -> Self {
        let done = spec.servers.is_empty();
        ScanState {
            spec,
            position: 0,
            cursor: 0,
            buffer: VecDeque::new(),
            done,
            seen: HashSet::new(),
            paged_on_old: false,
            error: None,
            failed: false,
        }
    }

    /// The next item, the end, or the next page to fetch (run its machine,
    /// then give the result to [`fetched`](Self::fetched)).
    fn advance(&mut self) -> Next<T> {
        if let Some(item) = self.buffer.pop_front() {
            return Next::Yield(Ok(item));
        }
        if let Some(e) = self.error.take() {
            return Next::Yield(Err(e));
        }
        if self.failed || self.done {
            return Next::End;
        }
        Next::Fetch(Fetch {
            server: self.spec.servers[self.position].0,
            cmd: self.spec.page(self.cursor),
            moves: self.spec.moves.clone(),
        })
    }

    /// After a fetch: an error is yielded next, and ends the iteration.
    fn fetched(&mut self, result: RedisResult<()>) {
        if let Err(e) = result {
            self.error = Some(e);
            self.failed = true;
        }
    }

    /// After a page of a moving key: false when it must be fetched again
    /// (the key left its old server, so the walk restarts on the new one;
    /// SCAN may return an element more than once, never miss one).
    fn served(&mut self, on_old: bool) -> bool {
        if on_old {
            self.paged_on_old = true;
            return true;
        }
        self.spec.moves.clear();
        if self.paged_on_old {
            self.cursor = 0;
            return false;
        }
        true
    }

    fn take_page(&mut self, core: &Topology, value: Value) -> RedisResult<()> {
        let (cursor, mut items) = split_page(value)?;
        let (server, phase) = self.spec.servers[self.position];
        if phase != Phase::All {
            items.retain(|item| {
                let Value::BulkString(key) = item else { return true };
                on_walk(core, server, phase, key, Some(&mut self.seen))
            });
        }
        let converted: Vec<T> = Vec::<T>::from_redis_value(Value::Array(items))?;
        self.buffer.extend(converted);
        if cursor == 0 {
            self.position += 1;
            self.cursor = 0;
            self.done = self.position >= self.spec.servers.len();
        } else {
            self.cursor = cursor;
        }
        Ok(())
    }
}

/// A cursor iteration over the sync client; yields `RedisResult<T>`. It
/// runs to its end on the configuration in force when it began, also
/// after a [`reconfigure`](crate::MRedis::reconfigure).
pub struct ScanIter<'a, T> {
    fleet: crate::client::Snapshot<crate::client::Fleet>,
    state: ScanState<T>,
    _client: std::marker::PhantomData<&'a crate::MRedis>,
}

impl<T> std::fmt::Debug for ScanIter<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanIter")
            .field("command", &self.state.spec.command)
            .finish()
    }
}

impl<T: FromRedisValue> Iterator for ScanIter<'_, T> {
    type Item = RedisResult<T>;

    fn next(&mut self) -> Option<RedisResult<T>> {
        loop {
            match self.state.advance() {
                Next::Yield(item) => return Some(item),
                Next::End => return None,
                Next::Fetch(page) => {
                    let fetched = self.fleet.drive(page.run(self.fleet.core(), &mut self.state));
                    self.state.fetched(fetched);
                }
            }
        }
    }
}

fn single_arg<K: ToRedisArgs>(what: &str, value: &K) -> RedisResult<Vec<u8>> {
    let mut args = value.to_redis_args();
    if args.len() != 1 {
        return Err(client_error(format!("{what} must be one argument, got {}", args.len())));
    }
    Ok(args.pop().unwrap_or_default())
}

macro_rules! key_scans {
    ($( $name:ident, $name_match:ident, $cmd:literal );* $(;)?) => {
        impl crate::MRedis {
            $(
                #[doc = concat!("Iterates the elements of one key with `", $cmd, "` on the server that owns it.")]
                #[doc(alias = $cmd)]
                pub fn $name<K: ToRedisArgs, RV: FromRedisValue>(&self, key: K) -> RedisResult<ScanIter<'_, RV>> {
                    let fleet = self.fleet();
                    let route = fleet.core().route_key($cmd, &key)?;
                    let spec = ScanSpec::of_key($cmd, single_arg("key", &key)?, route, None);
                    Ok(self.scan_with(fleet, spec))
                }

                #[doc = concat!("Iterates the elements of one key matching `pattern` with `", $cmd, " ... MATCH`.")]
                #[doc(alias = $cmd)]
                pub fn $name_match<K: ToRedisArgs, P: ToRedisArgs, RV: FromRedisValue>(
                    &self,
                    key: K,
                    pattern: P,
                ) -> RedisResult<ScanIter<'_, RV>> {
                    let fleet = self.fleet();
                    let route = fleet.core().route_key($cmd, &key)?;
                    let spec =
                        ScanSpec::of_key($cmd, single_arg("key", &key)?, route, Some(single_arg("pattern", &pattern)?));
                    Ok(self.scan_with(fleet, spec))
                }
            )*
        }

        impl crate::async_client::MRedis {
            $(
                #[doc = concat!("Streams the elements of one key with `", $cmd, "` on the server that owns it.")]
                #[doc(alias = $cmd)]
                pub async fn $name<K: ToRedisArgs, RV: FromRedisValue + Send + 'static>(
                    &self,
                    key: K,
                ) -> RedisResult<BoxStream<'_, RedisResult<RV>>> {
                    let fleet = self.fleet();
                    let route = fleet.core().route_key($cmd, &key)?;
                    let spec = ScanSpec::of_key($cmd, single_arg("key", &key)?, route, None);
                    Ok(self.scan_with(fleet, spec))
                }

                #[doc = concat!("Streams the elements of one key matching `pattern` with `", $cmd, " ... MATCH`.")]
                #[doc(alias = $cmd)]
                pub async fn $name_match<K: ToRedisArgs, P: ToRedisArgs, RV: FromRedisValue + Send + 'static>(
                    &self,
                    key: K,
                    pattern: P,
                ) -> RedisResult<BoxStream<'_, RedisResult<RV>>> {
                    let fleet = self.fleet();
                    let route = fleet.core().route_key($cmd, &key)?;
                    let spec =
                        ScanSpec::of_key($cmd, single_arg("key", &key)?, route, Some(single_arg("pattern", &pattern)?));
                    Ok(self.scan_with(fleet, spec))
                }
            )*
        }
    };
}

key_scans! {
    hscan, hscan_match, "HSCAN";
    sscan, sscan_match, "SSCAN";
    zscan, zscan_match, "ZSCAN";
}

impl crate::MRedis {
    fn scan_with<RV: FromRedisValue>(
        &self,
        fleet: crate::client::Snapshot<crate::client::Fleet>,
        spec: ScanSpec,
    ) -> ScanIter<'_, RV> {
        ScanIter {
            fleet,
            state: ScanState::new(spec),
            _client: std::marker::PhantomData,
        }
    }

    /// Iterates every key of every server (`SCAN` on each server in turn,
    /// in configuration order). Each key is yielded once when nothing
    /// changes during the walk.
    #[doc(alias = "SCAN")]
    pub fn scan<RV: FromRedisValue>(&self) -> RedisResult<ScanIter<'_, RV>> {
        let fleet = self.fleet();
        let spec = ScanSpec::keys(fleet.core(), None);
        Ok(self.scan_with(fleet, spec))
    }

    /// Iterates the keys of every server with `SCAN` options (`MATCH`,
    /// `COUNT`, `TYPE`), as redis-rs's `scan_options`.
    #[doc(alias = "SCAN")]
    pub fn scan_options<RV: FromRedisValue>(&self, opts: redis::ScanOptions) -> RedisResult<ScanIter<'_, RV>> {
        let fleet = self.fleet();
        let mut spec = ScanSpec::keys(fleet.core(), None);
        spec.options = opts.to_redis_args();
        Ok(self.scan_with(fleet, spec))
    }

    /// Same as [`MRedis::scan`](crate::MRedis::scan).
    #[doc(alias = "SCAN")]
    pub fn scan_iter<RV: FromRedisValue>(&self) -> RedisResult<ScanIter<'_, RV>> {
        self.scan()
    }

    /// Iterates the keys matching `pattern` on every server (`SCAN ... MATCH`).
    #[doc(alias = "SCAN")]
    pub fn scan_match<P: ToRedisArgs, RV: FromRedisValue>(&self, pattern: P) -> RedisResult<ScanIter<'_, RV>> {
        let pattern = single_arg("pattern", &pattern)?;
        let fleet = self.fleet();
        let spec = ScanSpec::keys(fleet.core(), Some(pattern));
        Ok(self.scan_with(fleet, spec))
    }
}

impl crate::async_client::MRedis {
    fn scan_with<RV: FromRedisValue + Send + 'static>(
        &self,
        fleet: crate::client::Snapshot<crate::async_client::Fleet>,
        spec: ScanSpec,
    ) -> BoxStream<'_, RedisResult<RV>> {
        let state = ScanState::<RV>::new(spec);
        let fleet = std::sync::Arc::new(fleet);
        let stream = futures::stream::unfold(state, move |mut state| {
            let fleet = fleet.clone();
            async move {
                loop {
                    match state.advance() {
                        Next::Yield(item) => return Some((item, state)),
                        Next::End => return None,
                        Next::Fetch(page) => {
                            let fetched = fleet.drive(page.run(fleet.core(), &mut state)).await;
                            state.fetched(fetched);
                        }
                    }
                }
            }
        });
        Box::pin(stream)
    }

    /// Streams every key of every server (`SCAN` on each server in turn).
    #[doc(alias = "SCAN")]
    pub async fn scan<RV: FromRedisValue + Send + 'static>(&self) -> RedisResult<BoxStream<'_, RedisResult<RV>>> {
        let fleet = self.fleet();
        let spec = ScanSpec::keys(fleet.core(), None);
        Ok(self.scan_with(fleet, spec))
    }

    /// Streams the keys of every server with `SCAN` options (`MATCH`,
    /// `COUNT`, `TYPE`), as redis-rs's `scan_options`.
    #[doc(alias = "SCAN")]
    pub async fn scan_options<RV: FromRedisValue + Send + 'static>(
        &self,
        opts: redis::ScanOptions,
    ) -> RedisResult<BoxStream<'_, RedisResult<RV>>> {
        let fleet = self.fleet();
        let mut spec = ScanSpec::keys(fleet.core(), None);
        spec.options = opts.to_redis_args();
        Ok(self.scan_with(fleet, spec))
    }

    /// Streams the keys matching `pattern` on every server (`SCAN ... MATCH`).
    #[doc(alias = "SCAN")]
    pub async fn scan_match<P: ToRedisArgs, RV: FromRedisValue + Send + 'static>(
        &self,
        pattern: P,
    ) -> RedisResult<BoxStream<'_, RedisResult<RV>>> {
        let pattern = single_arg("pattern", &pattern)?;
        let fleet = self.fleet();
        let spec = ScanSpec::keys(fleet.core(), Some(pattern));
        Ok(self.scan_with(fleet, spec))
    }
}
