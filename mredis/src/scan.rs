//! Cursor iteration over the fleet. `SCAN` walks every server's cursor in
//! turn, so each key is yielded once when nothing changes; `HSCAN`, `SSCAN`
//! and `ZSCAN` walk one key on the server that owns it. The sync client
//! gets iterators, the async one streams; both yield `RedisResult<T>` like
//! redis-rs's `Iter`/`AsyncIter`.

use std::collections::VecDeque;
use std::marker::PhantomData;

use futures::stream::BoxStream;
use redis::{Cmd, FromRedisValue, RedisResult, ToRedisArgs, Value};

use std::collections::HashSet;

use crate::error::client_error;
use crate::exec::ByRef;
use crate::migration::One;
use crate::routing::{Core, Move, Route};

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
pub(crate) fn fleet_walk(core: &Core) -> Vec<(usize, Phase)> {
    if core.migration.is_some() {
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
    core: &Core,
    server: usize,
    phase: Phase,
    key: &[u8],
    seen: Option<&mut HashSet<Vec<u8>>>,
) -> bool {
    if phase == Phase::All {
        return true;
    }
    let (owner, from) = core.owner(key);
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
    pub(crate) fn keys(core: &Core, pattern: Option<Vec<u8>>) -> ScanSpec {
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
            Route::Split(_) => (0, Vec::new()),
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
        }
    }

    /// The next page to fetch, or `None` when every server is finished.
    fn next_request(&self) -> Option<(usize, Cmd)> {
        if self.done {
            return None;
        }
        Some((self.spec.servers[self.position].0, self.spec.page(self.cursor)))
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

    fn take_page(&mut self, core: &Core, value: Value) -> RedisResult<()> {
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

/// A cursor iteration over the sync client; yields `RedisResult<T>`.
pub struct ScanIter<'a, T> {
    mr: &'a crate::MRedis,
    state: ScanState<T>,
    failed: bool,
    _t: PhantomData<T>,
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
            if let Some(item) = self.state.buffer.pop_front() {
                return Some(Ok(item));
            }
            if self.failed {
                return None;
            }
            let (server, cmd) = self.state.next_request()?;
            let page = if self.state.spec.moves.is_empty() {
                self.mr.value_on(server, &cmd)
            } else {
                let moves = self.state.spec.moves.clone();
                let mut machine = One::new(self.mr.core(), std::slice::from_ref(&cmd), false, server, &moves);
                let fetched = {
                    let m = &mut machine;
                    self.mr.drive(ByRef(m))
                };
                let on_old = machine.served_on != server;
                match fetched.and_then(Value::extract_error) {
                    Ok(v) if self.state.served(on_old) => Ok(v),
                    Ok(_) => continue,
                    Err(e) => Err(e),
                }
            };
            let core = self.mr.core().clone();
            let page = page.and_then(|v| self.state.take_page(&core, v));
            if let Err(e) = page {
                // Stop after reporting: a cursor cannot be resumed reliably.
                self.failed = true;
                return Some(Err(e));
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
                    let route = self.core().route_key($cmd, &key)?;
                    let spec = ScanSpec::of_key($cmd, single_arg("key", &key)?, route, None);
                    Ok(self.scan_with(spec))
                }

                #[doc = concat!("Iterates the elements of one key matching `pattern` with `", $cmd, " ... MATCH`.")]
                #[doc(alias = $cmd)]
                pub fn $name_match<K: ToRedisArgs, P: ToRedisArgs, RV: FromRedisValue>(
                    &self,
                    key: K,
                    pattern: P,
                ) -> RedisResult<ScanIter<'_, RV>> {
                    let route = self.core().route_key($cmd, &key)?;
                    let spec =
                        ScanSpec::of_key($cmd, single_arg("key", &key)?, route, Some(single_arg("pattern", &pattern)?));
                    Ok(self.scan_with(spec))
                }
            )*
        }

        impl crate::aio::MRedis {
            $(
                #[doc = concat!("Streams the elements of one key with `", $cmd, "` on the server that owns it.")]
                #[doc(alias = $cmd)]
                pub async fn $name<K: ToRedisArgs, RV: FromRedisValue + Send + 'static>(
                    &self,
                    key: K,
                ) -> RedisResult<BoxStream<'_, RedisResult<RV>>> {
                    let route = self.core().route_key($cmd, &key)?;
                    let spec = ScanSpec::of_key($cmd, single_arg("key", &key)?, route, None);
                    Ok(self.scan_with(spec))
                }

                #[doc = concat!("Streams the elements of one key matching `pattern` with `", $cmd, " ... MATCH`.")]
                #[doc(alias = $cmd)]
                pub async fn $name_match<K: ToRedisArgs, P: ToRedisArgs, RV: FromRedisValue + Send + 'static>(
                    &self,
                    key: K,
                    pattern: P,
                ) -> RedisResult<BoxStream<'_, RedisResult<RV>>> {
                    let route = self.core().route_key($cmd, &key)?;
                    let spec =
                        ScanSpec::of_key($cmd, single_arg("key", &key)?, route, Some(single_arg("pattern", &pattern)?));
                    Ok(self.scan_with(spec))
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
    fn scan_with<RV: FromRedisValue>(&self, spec: ScanSpec) -> ScanIter<'_, RV> {
        ScanIter {
            mr: self,
            state: ScanState::new(spec),
            failed: false,
            _t: PhantomData,
        }
    }

    /// Iterates every key of every server (`SCAN` on each server in turn,
    /// in configuration order). Each key is yielded once when nothing
    /// changes during the walk.
    #[doc(alias = "SCAN")]
    pub fn scan<RV: FromRedisValue>(&self) -> RedisResult<ScanIter<'_, RV>> {
        Ok(self.scan_with(ScanSpec::keys(self.core(), None)))
    }

    /// Iterates the keys of every server with `SCAN` options (`MATCH`,
    /// `COUNT`, `TYPE`), as redis-rs's `scan_options`.
    #[doc(alias = "SCAN")]
    pub fn scan_options<RV: FromRedisValue>(&self, opts: redis::ScanOptions) -> RedisResult<ScanIter<'_, RV>> {
        let mut spec = ScanSpec::keys(self.core(), None);
        spec.options = opts.to_redis_args();
        Ok(self.scan_with(spec))
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
        Ok(self.scan_with(ScanSpec::keys(self.core(), Some(pattern))))
    }
}

impl crate::aio::MRedis {
    fn scan_with<RV: FromRedisValue + Send + 'static>(&self, spec: ScanSpec) -> BoxStream<'_, RedisResult<RV>> {
        let state = ScanState::<RV>::new(spec);
        let stream = futures::stream::unfold((state, false), move |(mut state, failed)| async move {
            loop {
                if let Some(item) = state.buffer.pop_front() {
                    return Some((Ok(item), (state, failed)));
                }
                if failed {
                    return None;
                }
                let (server, cmd) = state.next_request()?;
                let fetched = if state.spec.moves.is_empty() {
                    self.value_on(server, &cmd).await
                } else {
                    let moves = state.spec.moves.clone();
                    let mut machine = One::new(self.core(), std::slice::from_ref(&cmd), false, server, &moves);
                    let fetched = self.drive(ByRef(&mut machine)).await;
                    let on_old = machine.served_on != server;
                    match fetched.and_then(Value::extract_error) {
                        Ok(v) if state.served(on_old) => Ok(v),
                        Ok(_) => continue,
                        Err(e) => Err(e),
                    }
                };
                let page = match fetched {
                    Ok(v) => state.take_page(self.core(), v),
                    Err(e) => Err(e),
                };
                if let Err(e) = page {
                    return Some((Err(e), (state, true)));
                }
            }
        });
        Box::pin(stream)
    }

    /// Streams every key of every server (`SCAN` on each server in turn).
    #[doc(alias = "SCAN")]
    pub async fn scan<RV: FromRedisValue + Send + 'static>(&self) -> RedisResult<BoxStream<'_, RedisResult<RV>>> {
        Ok(self.scan_with(ScanSpec::keys(self.core(), None)))
    }

    /// Streams the keys of every server with `SCAN` options (`MATCH`,
    /// `COUNT`, `TYPE`), as redis-rs's `scan_options`.
    #[doc(alias = "SCAN")]
    pub async fn scan_options<RV: FromRedisValue + Send + 'static>(
        &self,
        opts: redis::ScanOptions,
    ) -> RedisResult<BoxStream<'_, RedisResult<RV>>> {
        let mut spec = ScanSpec::keys(self.core(), None);
        spec.options = opts.to_redis_args();
        Ok(self.scan_with(spec))
    }

    /// Streams the keys matching `pattern` on every server (`SCAN ... MATCH`).
    #[doc(alias = "SCAN")]
    pub async fn scan_match<P: ToRedisArgs, RV: FromRedisValue + Send + 'static>(
        &self,
        pattern: P,
    ) -> RedisResult<BoxStream<'_, RedisResult<RV>>> {
        let pattern = single_arg("pattern", &pattern)?;
        Ok(self.scan_with(ScanSpec::keys(self.core(), Some(pattern))))
    }
}
