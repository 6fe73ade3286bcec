//! A worker per source server: scans its keys and MIGRATEs the ones whose
//! owner changed, within the traffic budget.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::{Connection, RedisError, RedisResult, Value};

use super::*;

/// The database on the same server that `dest` is, when `src` and `dest`
/// are two databases of one server (MIGRATE would connect to itself).
pub(super) fn same_server_db(plan: &MovePlan, src: usize, dest: usize) -> Option<i64> {
    let (a, b) = (&plan.nodes[src], &plan.nodes[dest]);
    (a.run_id.is_some() && a.run_id == b.run_id).then(|| b.server.db())
}

pub(super) enum Reply {
    Ok,
    NoKey,
    Busy,
    Err(String),
}

pub(super) fn classify(v: &Value) -> Reply {
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

/// Runs `pipe` on `con`, server errors as values; a connection failure
/// becomes an error naming `server`.
pub(super) fn pquery(
    pipe: &mut redis::Pipeline,
    con: &mut Connection,
    server: &str,
    io_timeout: Duration,
) -> RedisResult<Vec<Value>> {
    pipe.ignore_errors()
        .query(con)
        .map_err(|e| error(format!("{}; {RERUN}", describe(server, &e, io_timeout))))
}

/// Moves one key from the server on `con` to `dest`. A connection failure
/// comes back as redis-rs's own error, for the caller to explain.
pub(super) fn move_one(
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
pub(super) type Page = (u64, Vec<Vec<u8>>);

/// Why a page failed.
pub(super) enum PageFailure {
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

/// Whether `server` answers `PING` within a second, on a new connection.
pub(super) fn answers_ping(server: &Server) -> bool {
    let probe = Duration::from_millis(1000);
    crate::connect::open_tool(server, probe)
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_ok()
}

/// One source's worker: connections to the source and, lazily, to
/// destinations, and what it did.
pub(super) struct Worker<'a> {
    pub(super) plan: &'a MovePlan<'a>,
    pub(super) shared: &'a Shared,
    pub(super) src: usize,
    pub(super) name: String,
    pub(super) con: Connection,
    pub(super) dest_cons: HashMap<usize, Connection>,
    pub(super) out: WorkerOut,
    /// Keys whose arrival to forget on each destination (durable moves).
    pub(super) forget: HashMap<usize, Vec<Vec<u8>>>,
    /// The source's shard epoch when `con` was opened (a failover since
    /// means `con` may reach an old primary).
    pub(super) src_epoch: u64,
    /// The same for each destination connection.
    pub(super) dest_epochs: HashMap<usize, u64>,
}

pub(super) fn worker(plan: &MovePlan, shared: &Shared, mode: Mode, src: usize) -> RedisResult<WorkerOut> {
    let s = &plan.settings;
    let node = &plan.nodes[src];
    if mode != Mode::Verify && node.keys == 0 && !node.in_from {
        // A new server that was empty: whatever arrives during the run is
        // moved there by this run or written by clients of the new
        // configuration, so it is in place (the verification checks).
        return Ok(WorkerOut::default());
    }
    let mut w = Worker {
        plan,
        shared,
        src,
        name: node.name().to_string(),
        con: connect(&node.server, s.io_timeout)?,
        dest_cons: HashMap::new(),
        out: WorkerOut::default(),
        forget: HashMap::new(),
        src_epoch: node.server.epoch(),
        dest_epochs: HashMap::new(),
    };
    if !durable(plan) || mode == Mode::Count {
        walk(&mut w, mode)?;
        return Ok(w.out);
    }
    // Shards with replicas: a failure (typically a failover of the source
    // or of a destination) is followed: once the servers answer again on
    // their current primaries, the walk starts again, first completing the
    // moves left marked.
    let mut restarts = 0;
    loop {
        let result = if mode == Mode::Move {
            w.resume_marked()
                .and_then(|()| walk(&mut w, mode))
                .and_then(|()| w.forget_arrivals())
        } else {
            walk(&mut w, mode)
        };
        match result {
            Ok(()) => return Ok(w.out),
            Err(e) if restarts < 5 && !shared.abort.load(Ordering::Relaxed) => {
                shared.journal.lost(&w.name);
                if !servers_answer_again(plan, src) {
                    return Err(e);
                }
                restarts += 1;
                restarted(shared);
                w.src_epoch = node.server.epoch();
                w.con = connect(&node.server, s.io_timeout)?;
                w.dest_cons.clear();
                w.dest_epochs.clear();
            }
            Err(e) => return Err(e),
        }
    }
}

/// Walks the source with `SCAN`, moving (or counting, or checking) the
/// keys whose owner changed.
fn walk(w: &mut Worker, mode: Mode) -> RedisResult<()> {
    let plan = w.plan;
    let shared = w.shared;
    let src = w.src;
    let s = &plan.settings;
    let node = &plan.nodes[src];
    let durable = durable(plan);
    let scan = |cursor: u64| {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor).arg("COUNT").arg(s.scan_count);
        cmd
    };
    let mut page: Page = query(&scan(0), &mut w.con, &w.name, s.io_timeout)?;
    let mut returned: u64 = 0;
    loop {
        if shared.abort.load(Ordering::Relaxed) {
            break;
        }
        let (next, keys) = std::mem::take(&mut page);
        // SCAN may return a key twice: never count more than the server had.
        let before = returned.min(node.keys);
        returned += keys.len() as u64;
        let counted = returned.min(node.keys) - before;
        let mut groups: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
        for key in keys {
            if crate::migration::is_bookkeeping(&key) {
                continue;
            }
            let ti = plan.to.server_index_for(&key);
            let dest = plan.to_node[ti];
            if dest != src && !(mode == Mode::Move && plan.forbidden[dest]) {
                groups.entry(ti).or_default().push(key);
            }
        }
        for ks in groups.values_mut() {
            // A page can hold a key twice; EXISTS would count it twice.
            ks.sort_unstable();
            ks.dedup();
        }
        let mut stop = next == 0;
        match mode {
            Mode::Count => {
                w.out.scanned += counted;
                shared.scanned.fetch_add(counted, Ordering::Relaxed);
                for (ti, ks) in groups {
                    w.record(ti, ks.len() as u64);
                }
            }
            Mode::Verify => w.verify_page(groups)?,
            Mode::Move => {
                w.out.scanned += counted;
                shared.scanned.fetch_add(counted, Ordering::Relaxed);
                if let Some(budget) = &shared.budget {
                    let wanted: u64 = groups.values().map(|k| k.len() as u64).sum();
                    let granted = reserve(budget, wanted);
                    if granted < wanted {
                        shared.interrupted.store(true, Ordering::Relaxed);
                        stop = true;
                        let mut left = granted as usize;
                        for ks in groups.values_mut() {
                            ks.truncate(left);
                            left -= ks.len();
                        }
                        groups.retain(|_, ks| !ks.is_empty());
                    }
                }
                if durable {
                    w.move_groups_durable(groups)?;
                    if stop {
                        break;
                    }
                    page = query(&scan(next), &mut w.con, &w.name, s.io_timeout)?;
                    continue;
                }
                let mut dests: Vec<usize> = groups
                    .keys()
                    .map(|&ti| plan.to_node[ti])
                    .filter(|&d| same_server_db(plan, src, d).is_none())
                    .collect();
                dests.sort_unstable();
                dests.dedup();
                let reservation = if dests.is_empty() {
                    None
                } else {
                    match plan.traffic.reserve(src, dests, &shared.abort) {
                        Some(r) => Some(r),
                        None => break,
                    }
                };
                let next_page = w.move_page(groups, (!stop).then_some(next))?;
                drop(reservation);
                if let Some(p) = next_page {
                    page = p;
                    continue;
                }
            }
        }
        if stop {
            break;
        }
        page = query(&scan(next), &mut w.con, &w.name, s.io_timeout)?;
    }
    Ok(())
}

/// Takes up to `wanted` from `budget`; returns how much was taken.
pub(super) fn reserve(budget: &AtomicU64, wanted: u64) -> u64 {
    let mut current = budget.load(Ordering::Relaxed);
    loop {
        let take = current.min(wanted);
        match budget.compare_exchange(current, current - take, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return take,
            Err(actual) => current = actual,
        }
    }
}

pub(super) fn dump_of(v: Option<&Value>) -> Result<Option<Vec<u8>>, String> {
    match v {
        Some(Value::BulkString(b)) => Ok(Some(b.clone())),
        Some(Value::Nil) => Ok(None),
        Some(Value::ServerError(e)) => Err(server_error_text(e)),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

impl Worker<'_> {
    pub(super) fn dest(&self, ti: usize) -> &Server {
        &self.plan.to_servers[ti]
    }

    pub(super) fn record(&mut self, ti: usize, n: u64) {
        if n == 0 {
            return;
        }
        self.out.moved += n;
        self.shared.moved.fetch_add(n, Ordering::Relaxed);
        let pair = (self.name.clone(), self.dest(ti).name().to_string());
        *self.out.moves.entry(pair).or_default() += n;
    }

    pub(super) fn conflict(&mut self, ti: usize, key: Vec<u8>) {
        self.shared.conflicts.fetch_add(1, Ordering::Relaxed);
        self.out.conflicts.push(Conflict {
            key: show_key(&key),
            raw_key: key,
            from: self.name.clone(),
            to: self.dest(ti).name().to_string(),
        });
    }

    pub(super) fn dest_con(&mut self, ti: usize) -> RedisResult<&mut Connection> {
        if !self.dest_cons.contains_key(&ti) {
            self.dest_epochs.insert(ti, self.plan.to_servers[ti].epoch());
            let con = connect(&self.plan.to_servers[ti], self.plan.settings.io_timeout)?;
            self.dest_cons.insert(ti, con);
        }
        Ok(self.dest_cons.get_mut(&ti).expect("just inserted"))
    }

    /// Explains a failure of the connection to the source while MIGRATEs to
    /// `dest_tis` were pending: a read that timed out is either the source
    /// stopped or a destination that does not answer (the source then waits
    /// the MIGRATE timeout for every queued batch). Each destination gets a
    /// `PING` on a new connection; one that does not answer is named.
    pub(super) fn source_error(&self, e: RedisError, dest_tis: &[usize]) -> RedisError {
        let s = &self.plan.settings;
        if e.is_timeout() {
            return self.stall_error(dest_tis);
        }
        error(format!("{}; {RERUN}", describe(&self.name, &e, s.io_timeout)))
    }

    /// A read from the source timed out in the middle of a page.
    pub(super) fn page_error(&self, e: RedisError, dest_tis: &[usize]) -> PageFailure {
        if e.is_timeout() {
            PageFailure::Stalled(dest_tis.to_vec())
        } else {
            PageFailure::Fatal(self.source_error(e, dest_tis))
        }
    }

    /// Names whoever stopped answering: a destination that does not
    /// answer `PING`, else the source.
    pub(super) fn stall_error(&self, dest_tis: &[usize]) -> RedisError {
        let s = &self.plan.settings;
        for &ti in dest_tis {
            let dest = self.dest(ti);
            if !answers_ping(dest) {
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

    pub(super) fn move_error(&self, ti: usize, e: &str) -> RedisError {
        let dest = self.dest(ti).name();
        let what = if e.starts_with("IOERR") {
            format!(
                "{dest} did not answer {}'s MIGRATE within {} ms ({e})",
                self.name, self.plan.settings.timeout_ms
            )
        } else {
            e.to_string()
        };
        error(format!("moving keys from {} to {dest}: {what}; {RERUN}", self.name))
    }

    /// Moves one page of keys (grouped by destination), all in one round
    /// trip together with the next `SCAN` page, which it returns.
    ///
    /// A MIGRATE that timed out while its destination still answers `PING`
    /// is transient (typically a client's MIGRATE in the opposite direction
    /// at the same moment: both servers wait for each other until the
    /// timeout): the page is tried again on a new connection, up to 3
    /// times. Keys the failed attempt did move are gone from the source
    /// (NOKEY), and copies it left on both servers are identical, so trying
    /// again is safe.
    pub(super) fn move_page(
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
                    self.shared.journal.lost(&self.name);
                    if attempt == 3 || !answers_ping(self.dest(ti)) {
                        return Err(self.move_error(ti, &e));
                    }
                    attempt += 1;
                    self.shared.retries.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100 * attempt));
                    self.con = connect(&self.plan.nodes[self.src].server, self.plan.settings.io_timeout)?;
                }
                Err(PageFailure::Stalled(dest_tis)) => {
                    self.shared.journal.lost(&self.name);
                    // Either a destination stopped (the source then waits
                    // for it on every queued batch), or the source did, or
                    // the source was only slow. Name the one that stopped.
                    let source_answers = dest_tis.iter().all(|&ti| answers_ping(self.dest(ti)))
                        && answers_ping(&self.plan.nodes[self.src].server);
                    if attempt == 3 || !source_answers {
                        return Err(self.stall_error(&dest_tis));
                    }
                    attempt += 1;
                    self.shared.retries.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100 * attempt));
                    self.con = connect(&self.plan.nodes[self.src].server, self.plan.settings.io_timeout)?;
                }
            }
        }
    }

    pub(super) fn move_page_once(
        &mut self,
        groups: &BTreeMap<usize, Vec<Vec<u8>>>,
        next: Option<u64>,
    ) -> Result<Option<Page>, PageFailure> {
        let s = &self.plan.settings;
        let mut pipe = redis::pipe();
        let mut batches: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
        let mut local: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
        for (&ti, keys) in groups {
            if same_server_db(self.plan, self.src, self.plan.to_node[ti]).is_some() {
                local.push((ti, keys.clone()));
                continue;
            }
            for chunk in keys.chunks(s.batch) {
                // EXISTS and MIGRATE in one transaction: the count of keys
                // MIGRATE moved is exact even with writers running.
                pipe.cmd("MULTI")
                    .cmd("EXISTS")
                    .arg(chunk)
                    .add_command(self.dest(ti).migrate_cmd(s.timeout_ms, false, chunk))
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
        self.shared.journal.begin(&self.name, &in_flight)?;
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
                    self.shared.journal.end(&self.name, &chunk)?;
                }
                Reply::NoKey => self.shared.journal.end(&self.name, &chunk)?,
                Reply::Busy => {
                    self.shared.journal.answered(&self.name, &chunk);
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
            let db = same_server_db(self.plan, self.src, self.plan.to_node[ti]);
            let mut busy = Vec::new();
            for key in keys {
                let dest = self.plan.to_servers[ti].clone();
                match move_one(&mut self.con, &dest, db, &key, false, &self.plan.settings)
                    .map_err(|e| self.source_error(e, &[ti]))?
                {
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
    pub(super) fn batch_fallback(&mut self, ti: usize, chunk: Vec<Vec<u8>>, existing: u64) -> RedisResult<()> {
        let s = &self.plan.settings;
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
        self.shared.journal.end(&self.name, &gone)?;
        let mut pipe = redis::pipe();
        for k in &left {
            pipe.add_command(self.dest(ti).migrate_cmd(s.timeout_ms, false, std::slice::from_ref(k)));
        }
        self.shared.journal.begin(&self.name, &left)?;
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
                    self.shared.journal.end(&self.name, std::slice::from_ref(&k))?;
                }
                Reply::Busy => {
                    self.shared.journal.answered(&self.name, std::slice::from_ref(&k));
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
    pub(super) fn settle_busy(&mut self, ti: usize, busy: Vec<Vec<u8>>) -> RedisResult<()> {
        if busy.is_empty() {
            return Ok(());
        }
        let s = &self.plan.settings;
        let dest_name = self.dest(ti).name().to_string();
        let mut pipe = redis::pipe();
        for k in &busy {
            pipe.cmd("DUMP").arg(k);
        }
        let here = pquery(&mut pipe, &mut self.con, &self.name, s.io_timeout)?;
        let io = s.io_timeout;
        let there = pquery(&mut pipe, self.dest_con(ti)?, &dest_name, io)?;
        let db = same_server_db(self.plan, self.src, self.plan.to_node[ti]);
        let dest = self.dest(ti).clone();
        for (i, key) in busy.into_iter().enumerate() {
            let a = dump_of(here.get(i)).map_err(|e| error(format!("{}: DUMP: {e}", self.name)))?;
            let b = dump_of(there.get(i)).map_err(|e| error(format!("{dest_name}: DUMP: {e}")))?;
            let uncertain = self.shared.journal.uncertain(&self.name, &key);
            let outcome = match (a, b) {
                (None, _) => {
                    self.shared.journal.end(&self.name, std::slice::from_ref(&key))?;
                    continue;
                }
                (Some(a), Some(b)) if a == b || uncertain => {
                    let r = move_one(&mut self.con, &dest, db, &key, true, &self.plan.settings)
                        .map_err(|e| self.source_error(e, &[ti]))?;
                    if matches!(r, Reply::Ok) {
                        self.out.leftovers += 1;
                    }
                    r
                }
                (Some(_), None) => move_one(&mut self.con, &dest, db, &key, false, &self.plan.settings)
                    .map_err(|e| self.source_error(e, &[ti]))?,
                (Some(_), Some(_)) => Reply::Busy,
            };
            match outcome {
                Reply::Ok | Reply::NoKey => {
                    if matches!(outcome, Reply::Ok) {
                        self.record(ti, 1);
                    }
                    self.shared.journal.end(&self.name, std::slice::from_ref(&key))?;
                }
                Reply::Busy => {
                    self.shared.journal.end(&self.name, std::slice::from_ref(&key))?;
                    self.conflict(ti, key);
                }
                Reply::Err(e) => return Err(self.move_error(ti, &e)),
            }
        }
        Ok(())
    }

    /// Verification: counts keys of this page away from their owner and
    /// lists the first ones, saying whether the owner has a copy too.
    pub(super) fn verify_page(&mut self, groups: BTreeMap<usize, Vec<Vec<u8>>>) -> RedisResult<()> {
        let io = self.plan.settings.io_timeout;
        for (ti, keys) in groups {
            self.out.misplaced += keys.len() as u64;
            let room = MISPLACED_LISTED.saturating_sub(self.out.misplaced_keys.len());
            if room == 0 {
                continue;
            }
            let listed = &keys[..keys.len().min(room)];
            let owner = self.dest(ti).name().to_string();
            let mut pipe = redis::pipe();
            for k in listed {
                pipe.cmd("EXISTS").arg(k);
            }
            let v = pquery(&mut pipe, self.dest_con(ti)?, &owner, io)?;
            for (k, v) in listed.iter().zip(v) {
                self.out.misplaced_keys.push(Misplaced {
                    key: show_key(k),
                    on: self.name.clone(),
                    owner: owner.clone(),
                    on_both: matches!(v, Value::Int(n) if n > 0),
                });
            }
        }
        Ok(())
    }
}
