//! Moving keys from one server to others: the one engine behind the
//! rebalance ([`crate::rebalance`]) and the health checker's move back
//! after an ejection ([`crate::health::Rejoin::MoveBack`]).
//!
//! A [`Mover`] holds a connection to one source server and, opened as
//! needed, one to each destination. It moves groups of keys (by
//! destination) in one of two ways:
//!
//! - between plain servers: `MIGRATE` batches (atomic per key), sent with
//!   the next `SCAN` page in one round trip. A batch that times out while
//!   its destination still answers is tried again; a read that stalls
//!   names the server that stopped answering; keys a lost reply left on
//!   both servers are settled by comparing their `DUMP`s (the
//!   [`Journal`] remembers which batches' outcomes were not seen);
//! - when any server is a shard with replicas: in four steps, each
//!   acknowledged by the replicas, with the keys marked as moving on the
//!   source meanwhile ([`durable`]), so a failover at any moment loses no
//!   key and leaves none where clients would use two copies.
//!
//! What a copy already on the destination means is the caller's
//! [`Resolve`]: for the rebalance, anything but its own leftover is a
//! conflict to keep; for the move back, the source's copy is the newer
//! one and replaces it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{Connection, ErrorKind, RedisError, RedisResult, Value};

use crate::server::Server;

pub(crate) mod durable;
pub(crate) mod journal;

pub(crate) use journal::Journal;

/// On a shard with replicas, the hash of the keys being moved at this
/// moment (key -> move id). The mover marks a key here, waits for the
/// source's replicas to have the mark, copies the key to its destination
/// (and waits for the destination's replicas), then deletes it and the
/// mark. Commands on a marked key wait (they neither run on the old copy
/// nor on the new one), so a failover of either side at any moment leaves
/// the key in exactly one place that clients use.
pub(crate) const MARKS: &str = "__mredis:moving";
/// On a destination shard, the keys whose copy arrived (key -> move id),
/// so a move resumed after a failover does not copy a key twice.
pub(crate) const ARRIVED: &str = "__mredis:arrived";

/// Whether `key` is one of mredis's own bookkeeping keys ([`MARKS`],
/// [`ARRIVED`]), which are never moved.
pub(crate) fn is_bookkeeping(key: &[u8]) -> bool {
    key == MARKS.as_bytes() || key == ARRIVED.as_bytes()
}

pub(crate) fn error(detail: String) -> RedisError {
    RedisError::from((ErrorKind::Io, "rebalance failed", detail))
}

/// Describes a client-side error on a connection to `server`.
pub(crate) fn describe(server: &str, e: &RedisError, io_timeout: Duration) -> String {
    if e.is_timeout() {
        format!(
            "{server} did not answer within {} ms (stopped or overloaded?)",
            io_timeout.as_millis()
        )
    } else if let Some(detail) = e.detail() {
        format!("{server}: {detail}")
    } else {
        format!("{server}: {e}")
    }
}

pub(crate) const RERUN: &str = "nothing was lost; rerunning is safe and continues where this run stopped";

/// A connection named as the rebalance tool's (`mredis:tool`: the census
/// skips the tool's own connections).
pub(crate) fn connect(server: &Server, io_timeout: Duration) -> RedisResult<Connection> {
    crate::connect::open_tool(server, io_timeout).map_err(|e| {
        error(format!(
            "cannot connect to {}: {}; {RERUN}",
            server.name(),
            e.detail().map(str::to_string).unwrap_or_else(|| e.to_string())
        ))
    })
}

/// Runs `cmd` on `con`, turning a failure into an error naming `server`.
pub(crate) fn query<T: redis::FromRedisValue>(
    cmd: &redis::Cmd,
    con: &mut Connection,
    server: &str,
    io_timeout: Duration,
) -> RedisResult<T> {
    cmd.query(con)
        .map_err(|e| error(format!("{}; {RERUN}", describe(server, &e, io_timeout))))
}

/// Runs `pipe` on `con`, server errors as values; a connection failure
/// becomes an error naming `server`.
pub(crate) fn pquery(
    pipe: &mut redis::Pipeline,
    con: &mut Connection,
    server: &str,
    io_timeout: Duration,
) -> RedisResult<Vec<Value>> {
    pipe.ignore_errors()
        .query(con)
        .map_err(|e| error(format!("{}; {RERUN}", describe(server, &e, io_timeout))))
}

pub(crate) fn server_error_text(e: &redis::ServerError) -> String {
    match e.details() {
        Some(d) => format!("{} {d}", e.code()),
        None => e.code().to_string(),
    }
}

/// How keys move: the `MIGRATE` timeout, the read timeout, the keys per
/// `MIGRATE` and the `SCAN` count.
pub(crate) struct Settings {
    pub(crate) timeout_ms: u64,
    pub(crate) io_timeout: Duration,
    pub(crate) batch: usize,
    pub(crate) scan_count: usize,
}

impl Settings {
    /// `MIGRATE` within `timeout_ms`; reads wait that long plus half of it
    /// (at least a second): a server answers a `MIGRATE` only once its
    /// destination did.
    pub(crate) fn new(timeout_ms: u64, batch: usize, scan_count: usize) -> Settings {
        let timeout_ms = timeout_ms.max(1);
        Settings {
            timeout_ms,
            io_timeout: Duration::from_millis(timeout_ms + (timeout_ms / 2).max(1000)),
            batch: batch.max(1),
            scan_count: scan_count.max(1),
        }
    }
}

/// Counters shared by the movers of one run, read for progress.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) moved: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) retries: AtomicU64,
}

/// What a key already on the destination means.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Resolve {
    /// The same bytes (or the leftover of a move whose outcome was not
    /// seen) are replaced; anything else is a conflict: kept on both.
    Keep,
    /// The source's copy is the newer one: it replaces the destination's.
    Replace,
}

/// What one mover did.
#[derive(Default)]
pub(crate) struct Moved {
    pub(crate) moved: u64,
    /// Keys moved per (source name, destination name).
    pub(crate) moves: BTreeMap<(String, String), u64>,
    /// Keys kept on both the source and destination `usize`.
    pub(crate) conflicts: Vec<(Vec<u8>, usize)>,
    /// Copies a lost reply had left on the destination, replaced.
    pub(crate) leftovers: u64,
}

/// Opens a connection to a server the mover uses (the caller's kind:
/// the tool's, or a client's background connection).
pub(crate) type Open<'a> = &'a (dyn Fn(&Server, Duration) -> RedisResult<Connection> + Sync);

/// What a `MIGRATE` answered.
pub(crate) enum Reply {
    Ok,
    NoKey,
    Busy,
    Err(String),
}

pub(crate) fn classify(v: &Value) -> Reply {
    match v {
        Value::Okay => Reply::Ok,
        Value::SimpleString(s) if s == "OK" => Reply::Ok,
        Value::SimpleString(s) if s == "NOKEY" => Reply::NoKey,
        Value::ServerError(e) if e.code() == "BUSYKEY" || e.details().is_some_and(|d| d.contains("BUSYKEY")) => {
            Reply::Busy
        }
        Value::ServerError(e) => Reply::Err(server_error_text(e)),
        other => Reply::Err(format!("unexpected reply {other:?}")),
    }
}

/// Moves one key from the server on `con` to `dest`. A connection failure
/// comes back as redis-rs's own error, for the caller to explain.
pub(crate) fn move_one(
    con: &mut Connection,
    dest: &Server,
    same_server_db: Option<i64>,
    key: &[u8],
    replace: bool,
    s: &Settings,
) -> RedisResult<Reply> {
    let mut pipe = redis::pipe();
    match same_server_db {
        None => {
            pipe.add_command(dest.migrate_cmd(s.timeout_ms, replace, &[key.to_vec()]));
            let v: Vec<Value> = pipe.ignore_errors().query(con)?;
            Ok(v.first().map(classify).unwrap_or(Reply::Err("no reply".into())))
        }
        Some(db) => {
            // Two databases of one server: COPY (+ DEL) or MOVE, atomic.
            if replace {
                pipe.atomic()
                    .cmd("COPY")
                    .arg(key)
                    .arg(key)
                    .arg("DB")
                    .arg(db)
                    .arg("REPLACE")
                    .cmd("DEL")
                    .arg(key);
            } else {
                pipe.cmd("MOVE").arg(key).arg(db).cmd("EXISTS").arg(key);
            }
            let v: Vec<Value> = pipe.ignore_errors().query(con)?;
            let int = |i: usize| match v.get(i) {
                Some(Value::Int(n)) => Ok(*n),
                Some(Value::ServerError(e)) => Err(server_error_text(e)),
                other => Err(format!("unexpected reply {other:?}")),
            };
            Ok(match (int(0), int(1)) {
                (Ok(1), _) => Reply::Ok,
                (Ok(_), Ok(0)) => Reply::NoKey,
                (Ok(_), Ok(_)) => {
                    if replace {
                        Reply::NoKey
                    } else {
                        Reply::Busy
                    }
                }
                (Err(e), _) | (_, Err(e)) => Reply::Err(e),
            })
        }
    }
}

/// A `SCAN` page: the next cursor and the keys.
pub(crate) type Page = (u64, Vec<Vec<u8>>);

/// Why a page failed.
pub(crate) enum PageFailure {
    /// A MIGRATE to this destination (index in `to`) timed out.
    Timeout(usize, String),
    /// Reading from the source timed out while MIGRATEs to these
    /// destinations (indexes in `to`) were pending.
    Stalled(Vec<usize>),
    /// Anything else.
    Fatal(RedisError),
}

impl From<RedisError> for PageFailure {
    fn from(e: RedisError) -> Self {
        PageFailure::Fatal(e)
    }
}

/// Whether keys between `servers` move in acknowledged steps
/// ([`durable`]): some server is a shard with replicas or a Sentinel
/// master.
pub(crate) fn durable<'s>(mut servers: impl Iterator<Item = &'s Server>) -> bool {
    servers.any(|s| s.shard().is_some())
}

/// How long a mover waits for its servers to answer again after a
/// failure on a fleet with Sentinel shards (a failover takes Sentinel's
/// `down-after-milliseconds` plus an election).
pub(crate) const FOLLOW_FAILOVER: Duration = Duration::from_secs(60);

/// Moves keys from one source server to destinations (by index).
pub(crate) struct Mover<'a> {
    pub(crate) src: Server,
    pub(crate) name: String,
    pub(crate) con: Connection,
    /// The source's shard epoch when `con` was opened (a failover since
    /// means `con` may reach an old primary).
    pub(crate) src_epoch: u64,
    dests: &'a [Server],
    /// Per destination: the database on the same server that it is, when
    /// it and the source are two databases of one server (MIGRATE would
    /// connect to itself).
    same_db: Vec<Option<i64>>,
    dest_cons: HashMap<usize, Connection>,
    /// The same as `src_epoch` for each destination connection.
    dest_epochs: HashMap<usize, u64>,
    /// Keys whose arrival to forget on each destination (durable moves).
    forget: HashMap<usize, Vec<Vec<u8>>>,
    pub(crate) settings: &'a Settings,
    pub(crate) journal: &'a Journal,
    pub(crate) counters: &'a Counters,
    resolve: Resolve,
    open: Open<'a>,
    pub(crate) out: Moved,
}

impl<'a> Mover<'a> {
    /// A mover from `src` (shown as `name`) to `dests`; `same_db` as the
    /// field says (empty: none).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        src: &Server,
        name: String,
        dests: &'a [Server],
        same_db: Vec<Option<i64>>,
        settings: &'a Settings,
        journal: &'a Journal,
        counters: &'a Counters,
        resolve: Resolve,
        open: Open<'a>,
    ) -> RedisResult<Mover<'a>> {
        let src_epoch = src.epoch();
        let con = open(src, settings.io_timeout)?;
        Ok(Mover {
            src: src.clone(),
            name,
            con,
            src_epoch,
            dests,
            same_db,
            dest_cons: HashMap::new(),
            dest_epochs: HashMap::new(),
            forget: HashMap::new(),
            settings,
            journal,
            counters,
            resolve,
            open,
            out: Moved::default(),
        })
    }

    /// After a failure: new connections, to the current primaries.
    pub(crate) fn reopen(&mut self) -> RedisResult<()> {
        self.src_epoch = self.src.epoch();
        self.con = (self.open)(&self.src, self.settings.io_timeout)?;
        self.dest_cons.clear();
        self.dest_epochs.clear();
        Ok(())
    }

    /// Whether `server` answers `PING` within a second, on a new
    /// connection.
    fn answers(&self, server: &Server) -> bool {
        (self.open)(server, Duration::from_secs(1))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    pub(crate) fn dest(&self, ti: usize) -> &Server {
        &self.dests[ti]
    }

    fn same_db(&self, ti: usize) -> Option<i64> {
        self.same_db.get(ti).copied().flatten()
    }

    pub(crate) fn record(&mut self, ti: usize, n: u64) {
        if n == 0 {
            return;
        }
        self.out.moved += n;
        self.counters.moved.fetch_add(n, Ordering::Relaxed);
        let pair = (self.name.clone(), self.dest(ti).name().to_string());
        *self.out.moves.entry(pair).or_default() += n;
    }

    pub(crate) fn conflict(&mut self, ti: usize, key: Vec<u8>) {
        self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
        self.out.conflicts.push((key, ti));
    }

    pub(crate) fn dest_con(&mut self, ti: usize) -> RedisResult<&mut Connection> {
        if !self.dest_cons.contains_key(&ti) {
            self.dest_epochs.insert(ti, self.dests[ti].epoch());
            let con = (self.open)(&self.dests[ti], self.settings.io_timeout)?;
            self.dest_cons.insert(ti, con);
        }
        Ok(self.dest_cons.get_mut(&ti).expect("just inserted"))
    }

    /// After a failure: waits until the source and every destination
    /// answer `PING` on their current primaries. False if they did not
    /// within [`FOLLOW_FAILOVER`].
    pub(crate) fn servers_answer_again(&self) -> bool {
        let deadline = Instant::now() + FOLLOW_FAILOVER;
        loop {
            if self.answers(&self.src) && self.dests.iter().all(|d| self.answers(d)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Explains a failure of the connection to the source while MIGRATEs to
    /// `dest_tis` were pending: a read that timed out is either the source
    /// stopped or a destination that does not answer (the source then waits
    /// the MIGRATE timeout for every queued batch). Each destination gets a
    /// `PING` on a new connection; one that does not answer is named.
    pub(crate) fn source_error(&self, e: RedisError, dest_tis: &[usize]) -> RedisError {
        if e.is_timeout() {
            return self.stall_error(dest_tis);
        }
        error(format!(
            "{}; {RERUN}",
            describe(&self.name, &e, self.settings.io_timeout)
        ))
    }

    /// A read from the source timed out in the middle of a page.
    fn page_error(&self, e: RedisError, dest_tis: &[usize]) -> PageFailure {
        if e.is_timeout() {
            PageFailure::Stalled(dest_tis.to_vec())
        } else {
            PageFailure::Fatal(self.source_error(e, dest_tis))
        }
    }

    /// Names whoever stopped answering: a destination that does not
    /// answer `PING`, else the source.
    fn stall_error(&self, dest_tis: &[usize]) -> RedisError {
        let s = self.settings;
        for &ti in dest_tis {
            let dest = self.dest(ti);
            if !self.answers(dest) {
                return error(format!(
                    "moving keys from {} to {}: {} does not answer (stopped or overloaded?); {}'s MIGRATE \
                     to it timed out after {} ms; {RERUN}",
                    self.name,
                    dest.name(),
                    dest.name(),
                    self.name,
                    s.timeout_ms
                ));
            }
        }
        error(format!(
            "{} did not answer within {} ms (stopped or overloaded? a key too large to move within \
             the MIGRATE timeout needs a larger --timeout-ms); {RERUN}",
            self.name,
            s.io_timeout.as_millis()
        ))
    }

    fn move_error(&self, ti: usize, e: &str) -> RedisError {
        let dest = self.dest(ti).name();
        let what = if e.starts_with("IOERR") {
            format!(
                "{dest} did not answer {}'s MIGRATE within {} ms ({e})",
                self.name, self.settings.timeout_ms
            )
        } else {
            e.to_string()
        };
        error(format!("moving keys from {} to {dest}: {what}; {RERUN}", self.name))
    }

    /// Moves `groups` (keys by destination), the durable way when any
    /// server is a shard with replicas, else by `MIGRATE`.
    pub(crate) fn move_groups(&mut self, groups: BTreeMap<usize, Vec<Vec<u8>>>, durable: bool) -> RedisResult<()> {
        if durable {
            self.move_groups_durable(groups)
        } else {
            self.move_page(groups, None).map(drop)
        }
    }

    /// Moves one page of keys (grouped by destination) by `MIGRATE`, all
    /// in one round trip together with the next `SCAN` page, which it
    /// returns.
    ///
    /// A MIGRATE that timed out while its destination still answers `PING`
    /// is transient (typically another MIGRATE in the opposite direction
    /// at the same moment: both servers wait for each other until the
    /// timeout): the page is tried again on a new connection, up to 3
    /// times. Keys the failed attempt did move are gone from the source
    /// (NOKEY), and copies it left on both servers are identical, so trying
    /// again is safe.
    pub(crate) fn move_page(
        &mut self,
        groups: BTreeMap<usize, Vec<Vec<u8>>>,
        next: Option<u64>,
    ) -> RedisResult<Option<Page>> {
        let mut attempt = 0;
        loop {
            match self.move_page_once(&groups, next) {
                Ok(page) => return Ok(page),
                Err(PageFailure::Fatal(e)) => return Err(e),
                Err(PageFailure::Timeout(ti, e)) => {
                    self.journal.lost(&self.name);
                    if attempt == 3 || !self.answers(self.dest(ti)) {
                        return Err(self.move_error(ti, &e));
                    }
                    attempt += 1;
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100 * attempt));
                    self.con = (self.open)(&self.src, self.settings.io_timeout)?;
                }
                Err(PageFailure::Stalled(dest_tis)) => {
                    self.journal.lost(&self.name);
                    // Either a destination stopped (the source then waits
                    // for it on every queued batch), or the source did, or
                    // the source was only slow. Name the one that stopped.
                    let source_answers =
                        dest_tis.iter().all(|&ti| self.answers(self.dest(ti))) && self.answers(&self.src);
                    if attempt == 3 || !source_answers {
                        return Err(self.stall_error(&dest_tis));
                    }
                    attempt += 1;
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100 * attempt));
                    self.con = (self.open)(&self.src, self.settings.io_timeout)?;
                }
            }
        }
    }

    fn move_page_once(
        &mut self,
        groups: &BTreeMap<usize, Vec<Vec<u8>>>,
        next: Option<u64>,
    ) -> Result<Option<Page>, PageFailure> {
        let s = self.settings;
        let replace = self.resolve == Resolve::Replace;
        let mut pipe = redis::pipe();
        let mut batches: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
        let mut local: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
        for (&ti, keys) in groups {
            if self.same_db(ti).is_some() {
                local.push((ti, keys.clone()));
                continue;
            }
            for chunk in keys.chunks(s.batch) {
                // EXISTS and MIGRATE in one transaction: the count of keys
                // MIGRATE moved is exact even with writers running.
                pipe.cmd("MULTI")
                    .cmd("EXISTS")
                    .arg(chunk)
                    .add_command(self.dest(ti).migrate_cmd(s.timeout_ms, replace, chunk))
                    .cmd("EXEC");
                batches.push((ti, chunk.to_vec()));
            }
        }
        if let Some(cursor) = next {
            pipe.cmd("SCAN").arg(cursor).arg("COUNT").arg(s.scan_count);
        }
        // Read the replies one by one and stop at the first failed batch.
        // A source whose destination stopped answering spends the MIGRATE
        // timeout on every queued batch and may send no reply before the
        // last; a read that times out is therefore diagnosed (which server
        // does not answer) instead of blamed on the source.
        let dest_tis: Vec<usize> = {
            let mut v: Vec<usize> = batches.iter().map(|(ti, _)| *ti).collect();
            v.dedup();
            v
        };
        // The batches are in flight until their replies are read: a batch
        // whose reply is never seen stays in the journal.
        let in_flight: Vec<Vec<u8>> = batches.iter().flat_map(|(_, c)| c.iter().cloned()).collect();
        self.journal.begin(&self.name, &in_flight)?;
        if !pipe.is_empty()
            && let Err(e) = self.con.send_packed_command(&pipe.get_packed_pipeline())
        {
            return Err(PageFailure::Fatal(self.source_error(e, &dest_tis)));
        }
        let mut busy_batches = Vec::new();
        for (ti, chunk) in batches {
            let mut exec = Ok(Value::Nil);
            for i in 0..4 {
                let v = match self.con.recv_response() {
                    Ok(v) => Ok(v),
                    Err(e) => match e.code() {
                        Some(code) => Err(format!("{code} {}", e.detail().unwrap_or(""))),
                        None => return Err(self.page_error(e, &dest_tis)),
                    },
                };
                if i == 3 {
                    exec = v;
                }
            }
            let exec = match exec {
                Ok(v) => v,
                Err(e) => return Err(self.move_error(ti, &e).into()),
            };
            let (existing, reply) = match &exec {
                Value::Array(items) if items.len() == 2 => {
                    let existing = match &items[0] {
                        Value::Int(n) => *n as u64,
                        _ => 0,
                    };
                    (existing, classify(&items[1]))
                }
                Value::ServerError(e) => (0, Reply::Err(server_error_text(e))),
                other => (0, Reply::Err(format!("unexpected reply {other:?}"))),
            };
            match reply {
                Reply::Ok => {
                    self.record(ti, existing);
                    self.journal.end(&self.name, &chunk)?;
                }
                Reply::NoKey => self.journal.end(&self.name, &chunk)?,
                Reply::Busy => {
                    self.journal.answered(&self.name, &chunk);
                    busy_batches.push((ti, chunk, existing));
                }
                Reply::Err(e) if e.starts_with("IOERR") => return Err(PageFailure::Timeout(ti, e)),
                Reply::Err(e) => return Err(PageFailure::Fatal(self.move_error(ti, &e))),
            }
        }
        let page = match next {
            Some(_) => {
                let v = match self.con.recv_response() {
                    Ok(v) => v,
                    Err(e) => return Err(self.page_error(e, &dest_tis)),
                };
                Some(redis::from_redis_value(v).map_err(|e| error(format!("{}: SCAN: {e}", self.name)))?)
            }
            None => None,
        };
        for (ti, chunk, existing) in busy_batches {
            self.batch_fallback(ti, chunk, existing)?;
        }
        for (ti, keys) in local {
            let db = self.same_db(ti);
            let mut busy = Vec::new();
            for key in keys {
                let dest = self.dests[ti].clone();
                match move_one(&mut self.con, &dest, db, &key, replace, s).map_err(|e| self.source_error(e, &[ti]))? {
                    Reply::Ok => self.record(ti, 1),
                    Reply::NoKey => {}
                    Reply::Busy => busy.push(key),
                    Reply::Err(e) => return Err(PageFailure::Fatal(self.move_error(ti, &e))),
                }
            }
            self.settle_busy(ti, busy)?;
        }
        Ok(page)
    }

    /// A batch failed with BUSYKEY. Redis 7 has already moved (and deleted
    /// from the source) every key of it whose RESTORE succeeded; find the
    /// rest and move them one by one.
    fn batch_fallback(&mut self, ti: usize, chunk: Vec<Vec<u8>>, existing: u64) -> RedisResult<()> {
        let s = self.settings;
        let mut pipe = redis::pipe();
        for k in &chunk {
            pipe.cmd("EXISTS").arg(k);
        }
        let v = pquery(&mut pipe, &mut self.con, &self.name, s.io_timeout)?;
        let chunk_keys = chunk.clone();
        let left: Vec<Vec<u8>> = chunk
            .into_iter()
            .zip(v)
            .filter(|(_, v)| !matches!(v, Value::Int(0)))
            .map(|(k, _)| k)
            .collect();
        self.record(ti, existing.saturating_sub(left.len() as u64));
        let gone: Vec<Vec<u8>> = chunk_keys.iter().filter(|k| !left.contains(k)).cloned().collect();
        self.journal.end(&self.name, &gone)?;
        let mut pipe = redis::pipe();
        for k in &left {
            pipe.add_command(self.dest(ti).migrate_cmd(s.timeout_ms, false, std::slice::from_ref(k)));
        }
        self.journal.begin(&self.name, &left)?;
        let v: Vec<Value> = match pipe.ignore_errors().query(&mut self.con) {
            Ok(v) => v,
            Err(e) => return Err(self.source_error(e, &[ti])),
        };
        let mut busy = Vec::new();
        for (k, v) in left.into_iter().zip(v) {
            match classify(&v) {
                Reply::Ok | Reply::NoKey => {
                    if matches!(classify(&v), Reply::Ok) {
                        self.record(ti, 1);
                    }
                    self.journal.end(&self.name, std::slice::from_ref(&k))?;
                }
                Reply::Busy => {
                    self.journal.answered(&self.name, std::slice::from_ref(&k));
                    busy.push(k);
                }
                Reply::Err(e) => return Err(self.move_error(ti, &e)),
            }
        }
        self.settle_busy(ti, busy)
    }

    /// Keys on both the source and the destination: byte-identical copies
    /// are the leftover of a timed-out MIGRATE and are resolved with
    /// MIGRATE REPLACE; others are conflicts, kept.
    fn settle_busy(&mut self, ti: usize, busy: Vec<Vec<u8>>) -> RedisResult<()> {
        if busy.is_empty() {
            return Ok(());
        }
        let s = self.settings;
        let dest_name = self.dest(ti).name().to_string();
        let mut pipe = redis::pipe();
        for k in &busy {
            pipe.cmd("DUMP").arg(k);
        }
        let here = pquery(&mut pipe, &mut self.con, &self.name, s.io_timeout)?;
        let io = s.io_timeout;
        let there = pquery(&mut pipe, self.dest_con(ti)?, &dest_name, io)?;
        let db = self.same_db(ti);
        let dest = self.dest(ti).clone();
        for (i, key) in busy.into_iter().enumerate() {
            let a = dump_of(here.get(i)).map_err(|e| error(format!("{}: DUMP: {e}", self.name)))?;
            let b = dump_of(there.get(i)).map_err(|e| error(format!("{dest_name}: DUMP: {e}")))?;
            let uncertain = self.journal.uncertain(&self.name, &key);
            let outcome = match (a, b) {
                (None, _) => {
                    self.journal.end(&self.name, std::slice::from_ref(&key))?;
                    continue;
                }
                (Some(a), Some(b)) if a == b || uncertain => {
                    let r =
                        move_one(&mut self.con, &dest, db, &key, true, s).map_err(|e| self.source_error(e, &[ti]))?;
                    if matches!(r, Reply::Ok) {
                        self.out.leftovers += 1;
                    }
                    r
                }
                (Some(_), None) => {
                    move_one(&mut self.con, &dest, db, &key, false, s).map_err(|e| self.source_error(e, &[ti]))?
                }
                (Some(_), Some(_)) => Reply::Busy,
            };
            match outcome {
                Reply::Ok | Reply::NoKey => {
                    if matches!(outcome, Reply::Ok) {
                        self.record(ti, 1);
                    }
                    self.journal.end(&self.name, std::slice::from_ref(&key))?;
                }
                Reply::Busy => {
                    self.journal.end(&self.name, std::slice::from_ref(&key))?;
                    self.conflict(ti, key);
                }
                Reply::Err(e) => return Err(self.move_error(ti, &e)),
            }
        }
        Ok(())
    }
}

pub(crate) fn dump_of(v: Option<&Value>) -> Result<Option<Vec<u8>>, String> {
    match v {
        Some(Value::BulkString(b)) => Ok(Some(b.clone())),
        Some(Value::Nil) => Ok(None),
        Some(Value::ServerError(e)) => Err(server_error_text(e)),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_replies() {
        assert!(matches!(classify(&Value::Okay), Reply::Ok));
        assert!(matches!(classify(&Value::SimpleString("NOKEY".into())), Reply::NoKey));
        let parse = |resp: &[u8]| redis::parse_redis_value(resp).unwrap();
        let busy = parse(b"-ERR Target instance replied with error: BUSYKEY Target key name already exists.\r\n");
        assert!(matches!(classify(&busy), Reply::Busy), "{busy:?}");
        let timeout = parse(b"-IOERR error or timeout reading to target instance\r\n");
        assert!(matches!(classify(&timeout), Reply::Err(e) if e.starts_with("IOERR")));
    }
}
