//! A worker per source server: scans its keys and MIGRATEs the ones whose
//! owner changed, within the traffic budget.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::{RedisResult, Value};

use super::*;

/// The database on the same server that `dest` is, when `src` and `dest`
/// are two databases of one server (MIGRATE would connect to itself).
pub(super) fn same_server_db(plan: &MovePlan, src: usize, dest: usize) -> Option<i64> {
    let (a, b) = (&plan.nodes[src], &plan.nodes[dest]);
    (a.run_id.is_some() && a.run_id == b.run_id).then(|| b.server.db())
}

/// One source's worker: the mover from its server to `to`'s, and what it
/// found.
pub(super) struct Worker<'a> {
    pub(super) plan: &'a MovePlan<'a>,
    pub(super) shared: &'a Shared,
    pub(super) src: usize,
    pub(super) mv: Mover<'a>,
    pub(super) out: WorkerOut,
}

pub(super) fn worker(plan: &MovePlan, shared: &Shared, mode: Mode, src: usize) -> RedisResult<WorkerOut> {
    let node = &plan.nodes[src];
    if mode != Mode::Verify && node.keys == 0 && !node.in_from {
        // A new server that was empty: whatever arrives during the run is
        // moved there by this run or written by clients of the new
        // configuration, so it is in place (the verification checks).
        return Ok(WorkerOut::default());
    }
    let same_db = (0..plan.to_servers.len())
        .map(|ti| same_server_db(plan, src, plan.to_node[ti]))
        .collect();
    let mv = Mover::open(
        &node.server,
        node.name().to_string(),
        &plan.to_servers,
        same_db,
        &plan.settings,
        &shared.journal,
        &shared.counters,
        Resolve::Keep,
        // The tool's own connections.
        &connect,
    )?;
    let mut w = Worker {
        plan,
        shared,
        src,
        mv,
        out: WorkerOut::default(),
    };
    let result = run(&mut w, mode);
    let moved = std::mem::take(&mut w.mv.out);
    w.out.moved += moved.moved;
    w.out.moves = moved.moves;
    w.out.leftovers += moved.leftovers;
    w.out.conflicts = moved
        .conflicts
        .into_iter()
        .map(|(key, ti)| Conflict {
            key: show_key(&key),
            raw_key: key,
            from: w.mv.name.clone(),
            to: plan.to_servers[ti].name().to_string(),
        })
        .collect();
    result.map(|()| w.out)
}

/// The walk, and on shards with replicas its restarts: a failure
/// (typically a failover of the source or of a destination) is followed:
/// once the servers answer again on their current primaries, the walk
/// starts again, first completing the moves left marked.
fn run(w: &mut Worker, mode: Mode) -> RedisResult<()> {
    let plan = w.plan;
    if !durable(plan.nodes.iter().map(|n| &n.server)) || mode == Mode::Count {
        return walk(w, mode);
    }
    let src = w.src;
    let dest_of = |key: &[u8]| {
        let ti = plan.to.server_index_for(key);
        (plan.to_node[ti] != src).then_some(ti)
    };
    let mut restarts = 0;
    loop {
        let result = if mode == Mode::Move {
            w.mv.resume_marked(&dest_of)
                .and_then(|()| walk(w, mode))
                .and_then(|()| w.mv.forget_arrivals())
        } else {
            walk(w, mode)
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if restarts < 5 && !w.shared.abort.load(Ordering::Relaxed) => {
                w.shared.journal.lost(&w.mv.name);
                if !w.mv.servers_answer_again() {
                    return Err(e);
                }
                restarts += 1;
                w.shared.counters.retries.fetch_add(1, Ordering::Relaxed);
                w.mv.reopen()?;
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
    let durable = durable(plan.nodes.iter().map(|n| &n.server));
    let scan = |cursor: u64| {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor).arg("COUNT").arg(s.scan_count);
        cmd
    };
    let mut page: Page = query(&scan(0), &mut w.mv.con, &w.mv.name, s.io_timeout)?;
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
            if is_bookkeeping(&key) {
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
                    w.mv.record(ti, ks.len() as u64);
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
                    w.mv.move_groups_durable(groups)?;
                    if stop {
                        break;
                    }
                    page = query(&scan(next), &mut w.mv.con, &w.mv.name, s.io_timeout)?;
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
                let next_page = w.mv.move_page(groups, (!stop).then_some(next))?;
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
        page = query(&scan(next), &mut w.mv.con, &w.mv.name, s.io_timeout)?;
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

impl Worker<'_> {
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
            let owner = self.plan.to_servers[ti].name().to_string();
            let mut pipe = redis::pipe();
            for k in listed {
                pipe.cmd("EXISTS").arg(k);
            }
            let v = pquery(&mut pipe, self.mv.dest_con(ti)?, &owner, io)?;
            for (k, v) in listed.iter().zip(v) {
                self.out.misplaced_keys.push(Misplaced {
                    key: show_key(k),
                    on: self.mv.name.clone(),
                    owner: owner.clone(),
                    on_both: matches!(v, Value::Int(n) if n > 0),
                });
            }
        }
        Ok(())
    }
}
