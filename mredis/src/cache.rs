//! Client-side caching ([`Builder::client_cache`](crate::Builder::client_cache)):
//! replies of the reads the command table marks `cacheable` (GET, HGET,
//! HGETALL, LRANGE, SMEMBERS, ZRANGE, ... of one key) are kept in memory
//! and served without a round trip until the server says the key changed.
//!
//! It is Redis's server-assisted caching in its `REDIRECT` mode, which
//! works with RESP2 and any server since 6.0: per server, one connection
//! of the client's own listens for invalidations (it subscribes to
//! `__redis__:invalidate`), and the cached reads go on one tracked
//! connection (`CLIENT TRACKING ON REDIRECT <the listener's id>`), so the
//! server tells the listener about every key a cached read returned as
//! soon as that key changes (written, deleted, expired, evicted, moved
//! away by `MIGRATE`, flushed). A miss sends `PTTL` with the read, so an
//! entry also ends when the key's time to live does.
//!
//! **The guarantee.** A cached read returns what the server held at some
//! moment after the last invalidation of that key this client received:
//! never a value older than one whose invalidation has already arrived,
//! and never older than the client's own write of the key (a write through
//! this client drops the key's entries before it is sent and again once it
//! is answered), nor older than a value a read of this client already got
//! from the server (concurrent misses of one key keep nothing unless they
//! agree). A value can be stale only for the time an invalidation
//! takes to reach the client (one network hop, as for any reply). Every
//! entry of a server is dropped whenever its invalidations could have been
//! missed: the listening or the tracked connection broke or was opened
//! again (a restart, `CLIENT KILL`, `timeout`; a listener whose server does
//! not answer its `PING`, sent every second, within the response timeout
//! counts as broken, so a connection cut silently by the network costs at
//! most that long), the shard failed over, the
//! health checker ejected a server or let one rejoin, or the configuration
//! changed ([`MRedis::reconfigure`](crate::MRedis::reconfigure) builds a
//! new cache). A read that was on its way while any invalidation, flush or
//! own write of its server happened is answered but not kept. A command on
//! a key being moved by a migration, and reads under a read policy other
//! than the primary, are not cached.
//!
//! Memory: at most the configured number of bytes of keys, commands and
//! replies (with a fixed overhead per entry); beyond it the oldest entries
//! go first.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, RedisResult, Value};

use crate::connect::{Connector, Kind};
use crate::server::Server;
use crate::task::{Stop, Task};

/// The bytes an entry costs besides its key, command and reply (maps,
/// order list, bookkeeping).
const OVERHEAD: usize = 96;

/// How often a listener looks at its stop flag and the shard's address.
const TICK: Duration = Duration::from_millis(100);

/// How often a listener checks that its server still answers (`PING`): a
/// connection cut without a close (a network partition) loses
/// invalidations without an error, so an unanswered `PING` counts as a
/// broken connection.
const PING_EVERY: Duration = Duration::from_secs(1);

/// What the cache has done since the client was built
/// ([`aio::MRedis::cache_stats`](crate::aio::MRedis::cache_stats)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads answered from memory.
    pub hits: u64,
    /// Cacheable reads that went to the server.
    pub misses: u64,
    /// Keys the servers said changed (each drops the key's entries).
    pub invalidations: u64,
    /// Entries dropped to stay within the memory bound.
    pub evictions: u64,
    /// Times every entry of a server was dropped (see the guarantee in
    /// the module docs).
    pub flushes: u64,
    /// Entries now, per server name.
    pub entries: Vec<(String, usize)>,
    /// Bytes counted against the bound now.
    pub bytes: usize,
}

/// A kept reply.
struct Entry {
    value: Value,
    expires: Option<Instant>,
    size: usize,
}

/// Key -> packed command -> reply.
type Entries = HashMap<Vec<u8>, HashMap<Vec<u8>, Entry>>;

/// Insertion order, for eviction: (server, key, packed command).
type Order = VecDeque<(usize, Vec<u8>, Vec<u8>)>;

/// One server's part of the cache.
#[derive(Default)]
struct Shelf {
    entries: Mutex<Entries>,
    /// Bumped by every invalidation, flush and own write: a read that
    /// started before one is not kept.
    seq: AtomicU64,
    /// The listener's connection id while it listens, with a generation
    /// bumped at every (re)connection.
    link: Mutex<Option<(u64, i64)>>,
    generation: AtomicU64,
    /// The shard's address epoch the entries are for (a failover changes
    /// it: the entries are dropped at the next read).
    epoch: AtomicU64,
    /// The tracked connection for cached reads: the link generation and
    /// the shard's address epoch it was made for.
    reader: tokio::sync::Mutex<Option<(u64, u64, MultiplexedConnection)>>,
}

/// A fleet's cache (one per client configuration).
pub(crate) struct Cache {
    max_bytes: usize,
    names: Vec<String>,
    shelves: Vec<Shelf>,
    order: Mutex<Order>,
    bytes: AtomicUsize,
    /// The health checker's routing epoch the entries are for.
    routing: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    evictions: AtomicU64,
    flushes: AtomicU64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("max_bytes", &self.max_bytes).finish()
    }
}

/// A read the cache may serve: its server, key and packed command.
pub(crate) struct Cacheable<'a> {
    pub(crate) server: usize,
    pub(crate) key: &'a [u8],
    pub(crate) packed: Vec<u8>,
}

/// `cmd`'s key if the table marks it cacheable.
pub(crate) fn cacheable_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter();
    let redis::Arg::Simple(name) = args.next()? else {
        return None;
    };
    let redis::Arg::Simple(key) = args.next()? else {
        return None;
    };
    let name = std::str::from_utf8(name).ok()?;
    let upper;
    let name = if name.bytes().any(|b| b.is_ascii_lowercase()) {
        upper = name.to_ascii_uppercase();
        upper.as_str()
    } else {
        name
    };
    crate::spec::lookup(name, None).filter(|s| s.cacheable).map(|_| key)
}

impl Cache {
    /// A cache of at most `max_bytes` for `servers`.
    pub(crate) fn new(max_bytes: usize, servers: &[Server]) -> Cache {
        Cache {
            max_bytes,
            names: servers.iter().map(|s| s.name().to_string()).collect(),
            shelves: servers.iter().map(|_| Shelf::default()).collect(),
            order: Mutex::new(VecDeque::new()),
            bytes: AtomicUsize::new(0),
            routing: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    /// The statistics now.
    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            entries: self
                .names
                .iter()
                .zip(&self.shelves)
                .map(|(n, s)| {
                    (
                        n.clone(),
                        s.entries
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .values()
                            .map(HashMap::len)
                            .sum(),
                    )
                })
                .collect(),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// Drops every entry if the health checker's routing changed since
    /// they were kept (a server ejected or back).
    pub(crate) fn follow_routing(&self, epoch: u64) {
        if self.routing.swap(epoch, Ordering::AcqRel) != epoch {
            for i in 0..self.shelves.len() {
                self.flush(i);
            }
        }
    }

    /// A kept reply, if any (counts a hit or a miss). `epoch`: the
    /// server's address epoch now (entries of another are dropped).
    pub(crate) fn get(&self, read: &Cacheable<'_>, epoch: u64) -> Option<Value> {
        let shelf = self.shelves.get(read.server)?;
        if shelf.epoch.load(Ordering::Acquire) != epoch {
            self.flush(read.server);
            shelf.epoch.store(epoch, Ordering::Release);
        }
        let found = {
            let mut entries = shelf.entries.lock().unwrap_or_else(|e| e.into_inner());
            match entries.get(read.key).and_then(|m| m.get(&read.packed)) {
                Some(e) if e.expires.is_none_or(|t| Instant::now() < t) => Some(e.value.clone()),
                Some(_) => {
                    // Expired: dropped here.
                    let size = entries
                        .get_mut(read.key)
                        .and_then(|m| m.remove(&read.packed))
                        .map_or(0, |e| e.size);
                    self.bytes.fetch_sub(size, Ordering::Relaxed);
                    None
                }
                None => None,
            }
        };
        match found {
            Some(v) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(v)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Reads `cmd` on server `read.server`'s tracked connection and keeps
    /// the reply unless an invalidation, flush or own write of that server
    /// came meanwhile. `None`: the server's invalidations are not being
    /// received now (its listener is reconnecting, or the server refused
    /// tracking): the caller reads the usual way, uncached.
    pub(crate) async fn read(
        &self,
        read: &Cacheable<'_>,
        cmd: &Cmd,
        core: &crate::routing::Topology,
    ) -> Option<RedisResult<Value>> {
        let shelf = self.shelves.get(read.server)?;
        let server = core.server(read.server);
        let seq = shelf.seq.load(Ordering::Acquire);
        let (generation, mut con) = self.reader(read.server, server, core).await?;
        let mut pipe = redis::pipe();
        pipe.add_command(cmd.clone()).cmd("PTTL").arg(read.key);
        // The tracked connection has the client's response timeout.
        let mut replies = match con.req_packed_commands(&pipe, 0, 2).await {
            Ok(r) => r,
            Err(e) => {
                // Its tracking may have ended with it: nothing kept is safe.
                if e.is_unrecoverable_error() || e.is_timeout() {
                    self.drop_reader(read.server).await;
                }
                return Some(Err(crate::error::name_server_after(
                    server,
                    e,
                    None,
                    Some(core.timeouts.response),
                )));
            }
        };
        let ttl = replies.pop();
        let value = replies.pop().unwrap_or(Value::Nil);
        if let Value::ServerError(e) = &value {
            return Some(Err(redis::RedisError::from(e.clone())));
        }
        let expires = match ttl {
            Some(Value::Int(ms)) if ms > 0 => Some(Instant::now() + Duration::from_millis(ms as u64)),
            // -1: no time to live; -2: no key (a nil reply, kept until the
            // key is created).
            Some(Value::Int(_)) => None,
            _ => {
                self.forget(read.server, &[read.key], false);
                return Some(Ok(value));
            }
        };
        let current = shelf.seq.load(Ordering::Acquire) == seq
            && shelf.epoch.load(Ordering::Acquire) == server.epoch()
            && shelf
                .link
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|(g, _)| g == generation);
        let kept = current && self.keep(read, value.clone(), expires, seq);
        if !kept {
            // Not kept: a read of the same key that started earlier may
            // still be on its way with an older reply (its invalidation
            // not yet here). Moving the sequence stops it from being kept,
            // so no read is answered from memory with a value older than
            // one a read from the server already returned.
            self.forget(read.server, &[read.key], false);
        }
        Some(Ok(value))
    }

    /// The tracked connection of server `index`, opened (and tracking
    /// turned on, redirected to the listener) if needed.
    async fn reader(
        &self,
        index: usize,
        server: &Server,
        core: &crate::routing::Topology,
    ) -> Option<(u64, MultiplexedConnection)> {
        let shelf = &self.shelves[index];
        let (generation, id) = (*shelf.link.lock().unwrap_or_else(|e| e.into_inner()))?;
        let epoch = server.epoch();
        let mut slot = shelf.reader.lock().await;
        if let Some((g, e, con)) = slot.as_ref()
            && *g == generation
            && *e == epoch
        {
            return Some((generation, con.clone()));
        }
        if slot.take().is_some() {
            // Entries read through the old one are no longer tracked.
            self.flush(index);
        }
        let c = core.connector();
        let client = server.client().ok()?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(c.timeouts.connect))
            .set_response_timeout(Some(c.timeouts.response));
        let name = crate::connect::name_of(Kind::Tracked, c.name.as_deref());
        let mut con = crate::connect::open_multiplexed(&client, &config, Kind::Tracked, name.as_deref(), &c.counts)
            .await
            .ok()?;
        let on = con
            .req_packed_command(redis::cmd("CLIENT").arg("TRACKING").arg("ON").arg("REDIRECT").arg(id))
            .await;
        if !matches!(on, Ok(Value::Okay) | Ok(Value::SimpleString(_))) {
            return None;
        }
        *slot = Some((generation, epoch, con.clone()));
        Some((generation, con))
    }

    async fn drop_reader(&self, index: usize) {
        *self.shelves[index].reader.lock().await = None;
        self.flush(index);
    }

    /// Keeps a reply, evicting the oldest entries beyond the bound.
    /// Keeps a reply read while the server's sequence was `seq`, unless
    /// it moved since: checked under the entries' lock, which every
    /// invalidation and flush holds while it moves the sequence, so an
    /// invalidation either comes first (nothing is kept) or after (it
    /// drops what was kept).
    fn keep(&self, read: &Cacheable<'_>, value: Value, expires: Option<Instant>, seq: u64) -> bool {
        let size = OVERHEAD + read.key.len() + read.packed.len() + size_of_value(&value);
        if size > self.max_bytes {
            return false;
        }
        {
            let shelf = &self.shelves[read.server];
            let mut entries = shelf.entries.lock().unwrap_or_else(|e| e.into_inner());
            if shelf.seq.load(Ordering::Acquire) != seq {
                return false;
            }
            let per_key = entries.entry(read.key.to_vec()).or_default();
            // Another read of the same command kept its reply meanwhile:
            // the two replies are from the same tracking period, but which
            // is newer is not known here (their tasks may keep them in
            // either order). A different one drops both, so no read is
            // answered with the older after the newer.
            if let Some(existing) = per_key.get(&read.packed) {
                if existing.value != value {
                    let gone = per_key.remove(&read.packed).map_or(0, |e| e.size);
                    self.bytes.fetch_sub(gone, Ordering::Relaxed);
                    return false;
                }
                return true;
            }
            per_key.insert(read.packed.clone(), Entry { value, expires, size });
            self.order.lock().unwrap_or_else(|e| e.into_inner()).push_back((
                read.server,
                read.key.to_vec(),
                read.packed.clone(),
            ));
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
        while self.bytes.load(Ordering::Relaxed) > self.max_bytes {
            let Some((server, key, packed)) = self.order.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else {
                break;
            };
            let mut entries = self.shelves[server].entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = entries.get_mut(&key)
                && let Some(e) = m.remove(&packed)
            {
                self.bytes.fetch_sub(e.size, Ordering::Relaxed);
                self.evictions.fetch_add(1, Ordering::Relaxed);
                if m.is_empty() {
                    entries.remove(&key);
                }
            }
        }
        true
    }

    /// Drops `keys`' entries on server `index` (an invalidation, or this
    /// client's own write) and stops reads under way from being kept.
    pub(crate) fn forget(&self, index: usize, keys: &[&[u8]], counted: bool) {
        let Some(shelf) = self.shelves.get(index) else { return };
        let mut entries = shelf.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock: see `keep`.
        shelf.seq.fetch_add(1, Ordering::AcqRel);
        for key in keys {
            if counted {
                self.invalidations.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(m) = entries.remove(*key) {
                let size: usize = m.values().map(|e| e.size).sum();
                self.bytes.fetch_sub(size, Ordering::Relaxed);
            }
        }
    }

    /// Drops every entry of server `index`.
    pub(crate) fn flush(&self, index: usize) {
        let Some(shelf) = self.shelves.get(index) else { return };
        let drained: usize = {
            let mut entries = shelf.entries.lock().unwrap_or_else(|e| e.into_inner());
            // Under the lock: see `keep`.
            shelf.seq.fetch_add(1, Ordering::AcqRel);
            let size = entries.values().flat_map(HashMap::values).map(|e| e.size).sum();
            entries.clear();
            size
        };
        self.bytes.fetch_sub(drained, Ordering::Relaxed);
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// This client's own requests to server `index`: every command that
    /// may write drops its keys' entries (a script's too); all of the
    /// server's when its keys are not known (FLUSHDB, a module's command).
    pub(crate) fn own_writes<'c>(&self, index: usize, cmds: impl Iterator<Item = &'c Cmd>) {
        for cmd in cmds {
            let args: Vec<&[u8]> = cmd
                .args_iter()
                .map(|a| match a {
                    redis::Arg::Simple(b) => b,
                    redis::Arg::Cursor => &b"0"[..],
                    _ => &b""[..],
                })
                .collect();
            let name = args.first().map(|n| String::from_utf8_lossy(n).to_ascii_uppercase());
            let sub = args.get(1).and_then(|s| std::str::from_utf8(s).ok());
            let spec = name.as_deref().and_then(|n| crate::spec::lookup(n, sub));
            let Some(spec) = spec else {
                // A command the table does not know (a module's): it may
                // write anything on this server.
                self.flush(index);
                continue;
            };
            let keys = match spec.keys(&args) {
                crate::spec::CommandKeys::Known(keys) => Some(keys),
                _ => None,
            };
            match (spec.access, keys) {
                (crate::spec::Access::Read, _) => {}
                (_, Some(keys)) if !keys.is_empty() => self.forget(index, &keys, false),
                // A write of no key it names (FLUSHDB, SWAPDB, ...), or of
                // keys only the server can tell.
                (crate::spec::Access::Write, _) => self.flush(index),
                // Neither flagged read nor write, and no key (PING, INFO,
                // MULTI, EXEC, CLIENT ...): nothing of the cache's.
                _ => {}
            }
        }
    }

    fn link_up(&self, index: usize, id: i64) {
        let shelf = &self.shelves[index];
        let generation = shelf.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.flush(index);
        *shelf.link.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, id));
    }

    fn link_down(&self, index: usize) {
        *self.shelves[index].link.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.flush(index);
    }
}

/// An estimate of the memory a reply holds.
fn size_of_value(v: &Value) -> usize {
    match v {
        Value::BulkString(b) => b.len() + 24,
        Value::SimpleString(s) => s.len() + 24,
        Value::Array(items) | Value::Set(items) => 24 + items.iter().map(size_of_value).sum::<usize>(),
        Value::Map(pairs) => {
            24 + pairs
                .iter()
                .map(|(k, v)| size_of_value(k) + size_of_value(v))
                .sum::<usize>()
        }
        _ => 32,
    }
}

/// Starts one invalidation listener per server of `cache` (the first
/// `servers.len()`).
pub(crate) fn start(cache: &Arc<Cache>, servers: &[Server], c: &Connector) -> RedisResult<Vec<Task>> {
    let mut tasks = Vec::new();
    for (index, server) in servers.iter().enumerate() {
        let (cache, server, c) = (cache.clone(), server.clone(), c.clone());
        tasks.push(Task::spawn("mredis-cache", move |stop| {
            listen(&cache, index, &server, &c, &stop)
        })?);
    }
    Ok(tasks)
}

/// Listens for server `index`'s invalidations until stopped, connecting
/// again after a failure (each connection flushes the server's entries).
fn listen(cache: &Cache, index: usize, server: &Server, c: &Connector, stop: &Stop) {
    let mut backoff = Duration::from_millis(50);
    while !stop.stopped() {
        let epoch = server.epoch();
        let opened = c
            .open(server, Kind::Invalidation, c.timeouts.response)
            .and_then(|mut con| {
                let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut con)?;
                con.set_read_timeout(Some(TICK))?;
                Ok((id, con))
            });
        let Ok((id, mut con)) = opened else {
            cache.link_down(index);
            if stop.wait(backoff) {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        };
        let mut pubsub = con.as_pubsub();
        if pubsub.subscribe("__redis__:invalidate").is_err() {
            cache.link_down(index);
            if stop.wait(backoff) {
                return;
            }
            continue;
        }
        backoff = Duration::from_millis(50);
        cache.link_up(index, id);
        let mut pinged = std::time::Instant::now();
        while !stop.stopped() && server.epoch() == epoch {
            if pinged.elapsed() >= PING_EVERY {
                // Invalidations that arrive meanwhile are kept for
                // `get_message`.
                let answered = pubsub.set_read_timeout(Some(c.timeouts.response)).is_ok()
                    && pubsub.ping::<Value>().is_ok()
                    && pubsub.set_read_timeout(Some(TICK)).is_ok();
                if !answered {
                    break;
                }
                pinged = std::time::Instant::now();
            }
            match pubsub.get_message() {
                Ok(msg) => match msg.get_payload::<Option<Vec<Vec<u8>>>>() {
                    Ok(Some(keys)) => {
                        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                        cache.forget(index, &keys, true);
                    }
                    // A flush of the database (or a payload not understood).
                    _ => cache.flush(index),
                },
                Err(e) if e.is_timeout() => {}
                Err(_) => break,
            }
        }
        cache.link_down(index);
    }
}
