//! Moving keys between shards with replicas, so that a failover of the
//! source or of the destination at any moment of a move loses no key and
//! leaves none where clients would use two copies.
//!
//! `MIGRATE` deletes the key on the source as soon as the destination's
//! primary has it: a failover of the destination before its replica has
//! the key loses it, and a failover of the source before its replica has
//! the delete brings an old copy back while clients write the new one.
//! So on such fleets each batch of keys is moved in steps, each
//! acknowledged by the shard's replicas (`WAIT`) before the next:
//!
//! 1. on the source: mark the keys as moving (a hash, [`MARKS`]); commands
//!    of migration-aware clients on a marked key wait (neither copy is
//!    used), then `DUMP` them;
//! 2. on the destination: `RESTORE` them and note their arrival
//!    ([`ARRIVED`]), in one script;
//! 3. on the source: delete each key whose mark is still this move's, and
//!    the mark;
//! 4. on the destination: forget the arrivals.
//!
//! A failover at any step leaves the key either unmarked on the source
//! (clients use it there), or marked on the source (clients wait; the
//! rebalance, resuming, finds the mark and completes the move, skipping
//! the copy when the destination noted its arrival), or only on the
//! destination.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::LazyLock;

use redis::{RedisResult, Value};

use crate::server::Server;

use super::{ARRIVED, MARKS, Mover, RERUN, Resolve, error, pquery, query, server_error_text};

/// Marks each existing key (KEYS) as moving with id ARGV[1], unless it is
/// marked already; replies with each key's mark (nil: no such key).
const MARK_CODE: &str = r#"
local out = {}
local new = {}
local cur = redis.call('HMGET', '__mredis:moving', unpack(KEYS))
for i = 1, #KEYS do
  if cur[i] then
    out[i] = cur[i]
  elseif redis.call('EXISTS', KEYS[i]) == 1 then
    new[#new + 1] = KEYS[i]
    new[#new + 1] = ARGV[1]
    out[i] = ARGV[1]
  else
    out[i] = false
  end
end
if #new > 0 then redis.call('HSET', '__mredis:moving', unpack(new)) end
return out
"#;

/// Restores each key (KEYS) from ARGV (per key: move id, "1" to replace,
/// the expiry as a Unix time in ms or 0 for none, DUMP payload, and when
/// replacing the `DUMP` the copy here must still have, else `CHANGED`; an
/// expiry already past creates nothing) and notes its arrival; replies per key with 1
/// or the error.
const RESTORE_CODE: &str = r#"
local out = {}
local arrived = {}
for i = 1, #KEYS do
  local b = (i - 1) * 5
  local r
  local args = {KEYS[i], ARGV[b + 3], ARGV[b + 4]}
  if ARGV[b + 2] == '1' then args[#args + 1] = 'REPLACE' end
  if ARGV[b + 3] ~= '0' then args[#args + 1] = 'ABSTTL' end
  if ARGV[b + 2] == '1' and redis.call('DUMP', KEYS[i]) ~= ARGV[b + 5] then
    r = {err = 'CHANGED the copy here changed since it was compared'}
  else
    r = redis.pcall('RESTORE', unpack(args))
  end
  if type(r) == 'table' and r.err then
    out[i] = r.err
  else
    arrived[#arrived + 1] = KEYS[i]
    arrived[#arrived + 1] = ARGV[b + 1]
    out[i] = 1
  end
end
if #arrived > 0 then redis.call('HSET', '__mredis:arrived', unpack(arrived)) end
return out
"#;

/// For each key (KEYS) whose mark is still ARGV[1 + i]: deletes the key
/// (unless ARGV[1] is "keep") and the mark; replies per key with the count
/// deleted, or -1 when the mark was not this move's.
const FINISH_CODE: &str = r#"
local out = {}
local mine = {}
local cur = redis.call('HMGET', '__mredis:moving', unpack(KEYS))
for i = 1, #KEYS do
  if cur[i] == ARGV[1 + i] then
    mine[#mine + 1] = KEYS[i]
    out[i] = 0
  else
    out[i] = -1
  end
end
if #mine > 0 then
  if ARGV[1] ~= 'keep' then
    for i = 1, #KEYS do
      if out[i] == 0 then out[i] = redis.call('DEL', KEYS[i]) end
    end
  end
  redis.call('HDEL', '__mredis:moving', unpack(mine))
end
return out
"#;

static MARK: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(MARK_CODE));
static RESTORE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RESTORE_CODE));
static FINISH: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FINISH_CODE));

/// A new move id: random enough that two runs never share one.
fn move_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:016x}", h.finish())
}

/// `script` by its SHA, with its code loaded first (a `SCRIPT LOAD` in
/// the same pipeline costs nothing extra and never fails on NOSCRIPT).
fn invoke(pipe: &mut redis::Pipeline, script: &redis::Script, code: &str) -> Cmd {
    pipe.cmd("SCRIPT").arg("LOAD").arg(code).ignore();
    let mut c = redis::cmd("EVALSHA");
    c.arg(script.get_hash());
    c
}

use redis::Cmd;

/// The FINISH script on `keys` whose marks must still be `marks`: `how`
/// is "del" (delete the keys and the marks) or "keep" (only the marks).
fn finish_cmd(keys: &[&[u8]], marks: &[&str], how: &str) -> Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(FINISH.get_hash()).arg(keys.len()).arg(keys).arg(how).arg(marks);
    c
}

impl Mover<'_> {
    /// The replicas that must acknowledge each step on `server`: every
    /// replica its shard lists now (for Sentinel: those up and linked).
    fn replicas_to_wait_for(server: &Server) -> usize {
        server.replica_addresses().len()
    }

    /// Checks a `WAIT` reply: fewer acknowledgements than replicas is an
    /// error naming the shard (the step is done again after a rerun or a
    /// failover; nothing is lost).
    fn check_acks(&self, server: &Server, wanted: usize, reply: Option<&Value>) -> RedisResult<()> {
        let got = match reply {
            Some(Value::Int(n)) => *n as usize,
            Some(Value::ServerError(e)) => {
                return Err(error(format!("{}: WAIT: {}", server.name(), server_error_text(e))));
            }
            _ => 0,
        };
        if got < wanted {
            return Err(error(format!(
                "moving keys from {}: only {got} of {wanted} replicas of {} acknowledged within {} ms (a replica \
                 down or far behind?); the keys of this batch stay where clients find them; {RERUN}",
                self.name,
                server.name(),
                self.settings.timeout_ms
            )));
        }
        Ok(())
    }

    /// Fails (for the worker to follow the failover) when the source or
    /// one of `dests` changed primary since its connection was opened: the
    /// connection may reach an old primary, stopped and resumed.
    fn still_primaries(&self, dests: &[usize]) -> RedisResult<()> {
        let src = &self.src;
        let mut changed = (src.epoch() != self.src_epoch).then(|| src.name().to_string());
        for ti in dests {
            if let Some(&e) = self.dest_epochs.get(ti)
                && self.dest(*ti).epoch() != e
            {
                changed.get_or_insert_with(|| self.dest(*ti).name().to_string());
            }
        }
        match changed {
            Some(name) => Err(error(format!(
                "{name}: its primary changed (a failover) while keys moved from {}; {RERUN}",
                self.name
            ))),
            None => Ok(()),
        }
    }

    /// Unmarks `marked` (key, mark) on the source, after a step that failed
    /// before any delete: the keys stay where clients find them. Best
    /// effort: if the source does not answer, the marks stay for the next
    /// run (or the resumed worker) to finish.
    fn unmark(&mut self, marked: &[(Vec<u8>, String)]) {
        if marked.is_empty() {
            return;
        }
        let keys: Vec<&[u8]> = marked.iter().map(|(k, _)| &k[..]).collect();
        let ids: Vec<&str> = marked.iter().map(|(_, m)| m.as_str()).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("SCRIPT").arg("LOAD").arg(FINISH_CODE).ignore();
        pipe.add_command(finish_cmd(&keys, &ids, "keep"));
        let _: RedisResult<Vec<Value>> = pipe.ignore_errors().query(&mut self.con);
    }

    fn wait_cmd(&self, wanted: usize) -> Cmd {
        let mut c = redis::cmd("WAIT");
        c.arg(wanted).arg(self.settings.timeout_ms);
        c
    }

    /// Before scanning: completes the moves a stopped run (or a failover)
    /// left marked on this source. `dest_of` says where a key goes now
    /// (`None`: it stays here, and only loses its mark).
    pub(crate) fn resume_marked(&mut self, dest_of: &dyn Fn(&[u8]) -> Option<usize>) -> RedisResult<()> {
        let io = self.settings.io_timeout;
        let marked: Vec<Vec<u8>> = query(redis::cmd("HKEYS").arg(MARKS), &mut self.con, &self.name, io)?;
        if marked.is_empty() {
            return Ok(());
        }
        let mut groups: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
        let mut stay = Vec::new();
        for key in marked {
            match dest_of(&key) {
                Some(ti) => groups.entry(ti).or_default().push(key),
                None => stay.push(key),
            }
        }
        if !stay.is_empty() {
            // Marked for a move this configuration does not make: unmark.
            query::<i64>(redis::cmd("HDEL").arg(MARKS).arg(&stay), &mut self.con, &self.name, io)?;
        }
        self.move_groups_durable(groups)
    }

    /// Moves `groups` (keys by destination index in `to`): all of them
    /// in one round of the four steps (one exchange with the source per
    /// step, one with each destination), in rounds of at most
    /// [`ROUND_KEYS`] keys.
    pub(crate) fn move_groups_durable(&mut self, groups: BTreeMap<usize, Vec<Vec<u8>>>) -> RedisResult<()> {
        let mut round: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
        let mut size = 0;
        for (ti, keys) in groups {
            for chunk in keys.chunks(ROUND_KEYS) {
                if size + chunk.len() > ROUND_KEYS && !round.is_empty() {
                    self.move_round(std::mem::take(&mut round))?;
                    size = 0;
                }
                size += chunk.len();
                round.push((ti, chunk.to_vec()));
            }
        }
        if !round.is_empty() {
            self.move_round(round)?;
        }
        Ok(())
    }

    /// One round, in the four acknowledged steps of the module docs.
    fn move_round(&mut self, round: Vec<(usize, Vec<Vec<u8>>)>) -> RedisResult<()> {
        let io = self.settings.io_timeout;
        let src_server = self.src.clone();
        let id = move_id();
        let all: Vec<Vec<u8>> = round.iter().flat_map(|(_, keys)| keys.iter().cloned()).collect();
        let dest_tis: Vec<usize> = round.iter().map(|(ti, _)| *ti).collect();
        self.still_primaries(&dest_tis)?;
        self.journal.begin(&self.name, &all)?;

        // 1. Mark, wait for the source's replicas, dump.
        let src_acks = Self::replicas_to_wait_for(&src_server);
        let mut pipe = redis::pipe();
        pipe.cmd("SCRIPT").arg("LOAD").arg(MARK_CODE).ignore();
        for (_, keys) in &round {
            pipe.cmd("EVALSHA")
                .arg(MARK.get_hash())
                .arg(keys.len())
                .arg(keys)
                .arg(&id);
        }
        pipe.add_command(self.wait_cmd(src_acks));
        pipe.cmd("MULTI").ignore();
        for k in &all {
            // The expiry as a deadline (not a TTL, which would grow by
            // the time the move takes, and reads 0 for a key in its last
            // millisecond).
            pipe.cmd("PEXPIRETIME").arg(k).ignore().cmd("DUMP").arg(k).ignore();
        }
        pipe.cmd("EXEC");
        let v = pquery(&mut pipe, &mut self.con, &self.name, io)?;
        let n = round.len();
        let mut marks: Vec<Option<String>> = Vec::with_capacity(all.len());
        for reply in &v[..n.min(v.len())] {
            match reply {
                Value::Array(items) => marks.extend(items.iter().map(|m| match m {
                    Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    _ => None,
                })),
                Value::ServerError(e) => return Err(error(format!("{}: {}", self.name, server_error_text(e)))),
                other => return Err(error(format!("{}: unexpected reply {other:?}", self.name))),
            }
        }
        let marked: Vec<(Vec<u8>, String)> = all
            .iter()
            .zip(&marks)
            .filter_map(|(k, m)| m.clone().map(|m| (k.clone(), m)))
            .collect();
        let mut unmark_on_error = true;
        let result = (|| -> RedisResult<()> {
            self.check_acks(&src_server, src_acks, v.get(n))?;
            let dumped: Vec<Value> = match v.get(n + 1) {
                Some(Value::Array(items)) => items.clone(),
                Some(Value::ServerError(e)) => return Err(error(format!("{}: {}", self.name, server_error_text(e)))),
                other => return Err(error(format!("{}: unexpected reply {other:?}", self.name))),
            };
            // Per group: (key, mark, ttl, payload) of each key there; marked
            // keys gone meanwhile (expired) only lose their mark.
            let mut todos: Vec<Vec<Todo>> = Vec::with_capacity(n);
            let mut gone: Vec<(Vec<u8>, String)> = Vec::new();
            let mut at = 0;
            for (_, keys) in &round {
                let mut todo = Vec::new();
                for key in keys {
                    let i = at;
                    at += 1;
                    let Some(m) = marks.get(i).cloned().flatten() else {
                        continue;
                    };
                    let ttl = match dumped.get(2 * i) {
                        Some(Value::Int(t)) if *t > 0 => *t,
                        _ => 0,
                    };
                    match dumped.get(2 * i + 1) {
                        Some(Value::BulkString(p)) => todo.push((key.clone(), m, ttl, p.clone())),
                        _ => gone.push((key.clone(), m)),
                    }
                }
                todos.push(todo);
            }

            // 2. Copy to each destination unless a resumed move's copy arrived.
            let mut conflicts: Vec<Vec<usize>> = vec![Vec::new(); n];
            self.still_primaries(&dest_tis)?;
            for (g, (ti, _)) in round.iter().enumerate() {
                let ti = *ti;
                let todo = &todos[g];
                let dest = self.dest(ti).clone();
                let dest_acks = Self::replicas_to_wait_for(&dest);
                let resumed: Vec<usize> = (0..todo.len()).filter(|&i| todo[i].1 != id).collect();
                let mut arrived = vec![false; todo.len()];
                if !resumed.is_empty() {
                    let mut c = redis::cmd("HMGET");
                    c.arg(ARRIVED);
                    for &i in &resumed {
                        c.arg(&todo[i].0);
                    }
                    let there: Vec<Option<String>> = query(&c, self.dest_con(ti)?, dest.name(), io)?;
                    for (&i, t) in resumed.iter().zip(there) {
                        arrived[i] = t.as_deref() == Some(todo[i].1.as_str());
                    }
                }
                let copy: Vec<usize> = (0..todo.len()).filter(|&i| !arrived[i]).collect();
                let busy = self.restore(ti, todo, &copy, None, dest_acks)?;
                if busy.is_empty() {
                    continue;
                }
                // Already on the destination: the same bytes, or the tool's own
                // leftover (a copy made under a mark a failover lost, since
                // written on the source), is replaced; so is any copy when
                // the source's is the newer one (`Resolve::Replace`, the
                // move back); anything else is a conflict, unmarked and kept
                // on both.
                let mut pipe = redis::pipe();
                for &i in &busy {
                    pipe.cmd("DUMP").arg(&todo[i].0);
                }
                let there = pquery(&mut pipe, self.dest_con(ti)?, dest.name(), io)?;
                let mut replace = Vec::new();
                let mut seen = Vec::new();
                for (&i, t) in busy.iter().zip(&there) {
                    let same = matches!(t, Value::BulkString(b) if *b == todo[i].3);
                    let newer = self.resolve == Resolve::Replace;
                    if same || newer || self.journal.uncertain(&self.name, &todo[i].0) {
                        self.out.leftovers += u64::from(!same && !newer);
                        replace.push(i);
                        seen.push(match t {
                            Value::BulkString(b) => b.clone(),
                            _ => Vec::new(),
                        });
                    } else {
                        conflicts[g].push(i);
                    }
                }
                // Replaced only if unchanged since compared (another run may
                // have finished the move and clients written the new copy).
                let still = self.restore(ti, todo, &replace, Some(&seen), dest_acks)?;
                conflicts[g].extend(still);
            }

            // 3. Delete on the source what arrived; unmark conflicts.
            self.still_primaries(&dest_tis)?;
            unmark_on_error = false;
            let mut pipe = redis::pipe();
            pipe.cmd("SCRIPT").arg("LOAD").arg(FINISH_CODE).ignore();
            let finish = |pipe: &mut redis::Pipeline, keys: &[&[u8]], marks: &[&str], how: &str| {
                pipe.add_command(finish_cmd(keys, marks, how));
            };
            for (g, todo) in todos.iter().enumerate() {
                let done: Vec<usize> = (0..todo.len()).filter(|i| !conflicts[g].contains(i)).collect();
                if !done.is_empty() {
                    let keys: Vec<&[u8]> = done.iter().map(|&i| &todo[i].0[..]).collect();
                    let ids: Vec<&str> = done.iter().map(|&i| todo[i].1.as_str()).collect();
                    finish(&mut pipe, &keys, &ids, "del");
                }
                if !conflicts[g].is_empty() {
                    let keys: Vec<&[u8]> = conflicts[g].iter().map(|&i| &todo[i].0[..]).collect();
                    let ids: Vec<&str> = conflicts[g].iter().map(|&i| todo[i].1.as_str()).collect();
                    finish(&mut pipe, &keys, &ids, "keep");
                }
            }
            if !gone.is_empty() {
                let keys: Vec<&[u8]> = gone.iter().map(|(k, _)| &k[..]).collect();
                let ids: Vec<&str> = gone.iter().map(|(_, m)| m.as_str()).collect();
                finish(&mut pipe, &keys, &ids, "del");
            }
            pipe.add_command(self.wait_cmd(src_acks));
            let v = pquery(&mut pipe, &mut self.con, &self.name, io)?;
            for reply in &v[..v.len().saturating_sub(1)] {
                if let Value::ServerError(e) = reply {
                    return Err(error(format!("{}: {}", self.name, server_error_text(e))));
                }
            }
            self.check_acks(&src_server, src_acks, v.last())?;
            // Count what each group's delete removed (its reply comes first).
            let mut replies = v.iter();
            for (g, todo) in todos.iter().enumerate() {
                let has_done = todo.len() > conflicts[g].len();
                if has_done {
                    let deleted = match replies.next() {
                        Some(Value::Array(items)) => items.iter().filter(|d| matches!(d, Value::Int(1))).count() as u64,
                        _ => 0,
                    };
                    self.record(round[g].0, deleted);
                }
                if !conflicts[g].is_empty() {
                    // A conflict is one this run unmarked; a mark that was no
                    // longer this move's (another run finished or unmarked the
                    // key) is nobody's conflict here.
                    if let Some(Value::Array(items)) = replies.next() {
                        let kept: Vec<usize> = conflicts[g]
                            .iter()
                            .zip(items)
                            .filter(|(_, r)| matches!(r, Value::Int(0)))
                            .map(|(&i, _)| i)
                            .collect();
                        conflicts[g] = kept;
                    }
                }
            }

            // 4. Forget the arrivals, with the next exchange with each
            // destination (a leftover entry is harmless: its id is never used
            // again).
            for (g, todo) in todos.iter().enumerate() {
                let ti = round[g].0;
                self.forget
                    .entry(ti)
                    .or_default()
                    .extend(todo.iter().map(|(k, ..)| k.clone()));
                for &i in &conflicts[g] {
                    let key = todo[i].0.clone();
                    self.conflict(ti, key);
                }
            }
            self.journal.end(&self.name, &all)?;
            Ok(())
        })();
        if result.is_err() && unmark_on_error {
            self.unmark(&marked);
        }
        result
    }

    /// Forgets the arrivals noted on the destinations (step 4 of the rounds
    /// whose next exchange with that destination did not come).
    pub(crate) fn forget_arrivals(&mut self) -> RedisResult<()> {
        let io = self.settings.io_timeout;
        for (ti, keys) in std::mem::take(&mut self.forget) {
            if keys.is_empty() {
                continue;
            }
            let name = self.dest(ti).name().to_string();
            let mut c = redis::cmd("HDEL");
            c.arg(ARRIVED).arg(&keys);
            query::<i64>(&c, self.dest_con(ti)?, &name, io)?;
        }
        Ok(())
    }

    /// Restores `which` of `todo` on destination `ti` and waits for its
    /// replicas; returns those already there (BUSYKEY). `replacing`: the
    /// `DUMP` each copy there had when compared; it is replaced only if it
    /// still has it (else returned too).
    /// The arrivals to forget there go first, in the same exchange.
    fn restore(
        &mut self,
        ti: usize,
        todo: &[Todo],
        which: &[usize],
        replacing: Option<&[Vec<u8>]>,
        acks: usize,
    ) -> RedisResult<Vec<usize>> {
        if which.is_empty() {
            return Ok(Vec::new());
        }
        let io = self.settings.io_timeout;
        let dest = self.dest(ti).clone();
        let mut pipe = redis::pipe();
        if let Some(keys) = self.forget.remove(&ti).filter(|k| !k.is_empty()) {
            pipe.cmd("HDEL").arg(ARRIVED).arg(keys).ignore();
        }
        let mut c = invoke(&mut pipe, &RESTORE, RESTORE_CODE);
        c.arg(which.len());
        for &i in which {
            c.arg(&todo[i].0);
        }
        for (j, &i) in which.iter().enumerate() {
            let (_, m, ttl, payload) = &todo[i];
            let seen: &[u8] = replacing.and_then(|r| r.get(j)).map(Vec::as_slice).unwrap_or(b"");
            c.arg(m)
                .arg(if replacing.is_some() { "1" } else { "0" })
                .arg(*ttl)
                .arg(payload)
                .arg(seen);
        }
        pipe.add_command(c);
        pipe.add_command(self.wait_cmd(acks));
        let v = pquery(&mut pipe, self.dest_con(ti)?, dest.name(), io)?;
        let replies = match v.first() {
            Some(Value::Array(items)) => items.clone(),
            Some(Value::ServerError(e)) => return Err(error(format!("{}: {}", dest.name(), server_error_text(e)))),
            other => return Err(error(format!("{}: unexpected reply {other:?}", dest.name()))),
        };
        let mut busy = Vec::new();
        for (&i, r) in which.iter().zip(&replies) {
            match r {
                Value::Int(1) => {}
                Value::BulkString(e) if e.starts_with(b"BUSYKEY") || e.starts_with(b"CHANGED") => busy.push(i),
                Value::BulkString(e) => {
                    return Err(error(format!(
                        "moving keys from {} to {}: RESTORE: {}; {RERUN}",
                        self.name,
                        dest.name(),
                        String::from_utf8_lossy(e)
                    )));
                }
                other => return Err(error(format!("{}: unexpected reply {other:?}", dest.name()))),
            }
        }
        self.check_acks(&dest, acks, v.last())?;
        Ok(busy)
    }
}

/// A key to move: the key, its mark, its expiry (Unix time in ms, 0 for
/// none), its `DUMP`.
type Todo = (Vec<u8>, String, i64, Vec<u8>);

/// At most this many keys are marked at once by one worker.
const ROUND_KEYS: usize = 1000;
