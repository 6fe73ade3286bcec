//! Moving keys when the server list changes: walk every server with SCAN and
//! move each key whose owner changes to its new server with Redis's own
//! MIGRATE (atomic per key, TTL kept). Running it again finishes an
//! interrupted run; a key that already exists on its new server is reported
//! and left alone unless `replace` is set; a final pass verifies placement.

use std::collections::BTreeMap;

use redis::{Connection, RedisResult, Value};

use crate::MRedis;
use crate::config::Server;
use crate::routing::show_key;

/// A progress callback.
pub type ProgressFn = Box<dyn FnMut(&Progress)>;

/// Options of a rebalance run.
#[derive(Default)]
pub struct RebalanceOptions {
    /// Count what would move; move nothing.
    pub dry_run: bool,
    /// Overwrite a key that already exists on its new server (MIGRATE REPLACE).
    pub replace: bool,
    /// Stop after moving this many keys (the rest is moved by running again).
    pub limit: Option<u64>,
    /// MIGRATE timeout in milliseconds (default 5000).
    pub migrate_timeout_ms: Option<u64>,
    /// Called after every SCAN page with the progress so far.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for RebalanceOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RebalanceOptions")
            .field("dry_run", &self.dry_run)
            .field("replace", &self.replace)
            .field("limit", &self.limit)
            .finish()
    }
}

/// Progress of a running rebalance.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Server being scanned.
    pub server: String,
    /// Keys looked at so far.
    pub scanned: u64,
    /// Keys moved (or, in a dry run, that would move) so far.
    pub moved: u64,
    /// Keys in the whole fleet before the run (DBSIZE), for a progress bar.
    pub total: u64,
}

/// A key that exists on both its old and its new server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The key, printable.
    pub key: String,
    /// Where it is now.
    pub from: String,
    /// Where the new configuration puts it (it exists there too).
    pub to: String,
}

/// What a rebalance did.
#[derive(Debug, Clone, Default)]
pub struct RebalanceReport {
    /// Keys looked at.
    pub scanned: u64,
    /// Keys moved (in a dry run: that would move).
    pub moved: u64,
    /// Moves per (from, to) server pair.
    pub moves: BTreeMap<(String, String), u64>,
    /// Keys left on both servers because the target already had them.
    pub conflicts: Vec<Conflict>,
    /// The run stopped at `limit`; run again to finish.
    pub interrupted: bool,
    /// Keys the verification pass found away from their new owner
    /// (conflicts included); 0 means every key is where the new config says.
    pub misplaced: u64,
}

fn connect(server: &Server) -> RedisResult<Connection> {
    let client = server.client()?;
    client
        .get_connection_with_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| crate::routing::name_server(server.name(), e))
}

fn scan_page(con: &mut Connection, cursor: u64) -> RedisResult<(u64, Vec<Vec<u8>>)> {
    redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(500).query(con)
}

/// Servers of both configurations, by name, each once.
fn union(from: &MRedis, to: &MRedis) -> Vec<Server> {
    let mut out: Vec<Server> = from.servers().to_vec();
    for s in to.servers() {
        if !out.iter().any(|o| o.name() == s.name()) {
            out.push(s.clone());
        }
    }
    out
}

/// Moves every key of the fleet to where `to` places it.
///
/// `from` is the configuration the data was written with; servers of `to`
/// that `from` lacks are scanned too, so running again after an
/// interruption finishes the job. Returns what was done; errors name the
/// server.
pub fn rebalance(from: &MRedis, to: &MRedis, mut options: RebalanceOptions) -> RedisResult<RebalanceReport> {
    let servers = union(from, to);
    let mut report = RebalanceReport::default();
    let mut progress = Progress::default();
    let mut cons = Vec::with_capacity(servers.len());
    for s in &servers {
        let mut con = connect(s)?;
        progress.total += redis::cmd("DBSIZE")
            .query::<u64>(&mut con)
            .map_err(|e| crate::routing::name_server(s.name(), e))?;
        cons.push(con);
    }
    let timeout = options.migrate_timeout_ms.unwrap_or(5000);
    'servers: for (si, source) in servers.iter().enumerate() {
        progress.server = source.name().to_string();
        let mut cursor = 0;
        loop {
            let (next, keys) =
                scan_page(&mut cons[si], cursor).map_err(|e| crate::routing::name_server(source.name(), e))?;
            for key in keys {
                report.scanned += 1;
                let target = &to.servers()[to.server_index_for(&key)];
                if target.name() == source.name() {
                    continue;
                }
                if options.limit.is_some_and(|l| report.moved >= l) {
                    report.interrupted = true;
                    break 'servers;
                }
                if options.dry_run {
                    report.moved += 1;
                    *report
                        .moves
                        .entry((source.name().to_string(), target.name().to_string()))
                        .or_default() += 1;
                    continue;
                }
                match migrate(&mut cons[si], &key, target, timeout, options.replace) {
                    Ok(Moved::Yes) => {
                        report.moved += 1;
                        *report
                            .moves
                            .entry((source.name().to_string(), target.name().to_string()))
                            .or_default() += 1;
                    }
                    Ok(Moved::Gone) => {}
                    Ok(Moved::Conflict) => report.conflicts.push(Conflict {
                        key: show_key(&key),
                        from: source.name().to_string(),
                        to: target.name().to_string(),
                    }),
                    Err(e) => {
                        return Err(redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "mredis: rebalance failed",
                            format!(
                                "moving `{}` from {} to {}: {e} (moved {} keys so far; run again to continue)",
                                show_key(&key),
                                source.name(),
                                target.name(),
                                report.moved
                            ),
                        )));
                    }
                }
            }
            progress.scanned = report.scanned;
            progress.moved = report.moved;
            if let Some(callback) = options.progress.as_mut() {
                callback(&progress);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    if !options.dry_run {
        report.misplaced = verify_with(&servers, &mut cons, to)?;
    }
    Ok(report)
}

enum Moved {
    Yes,
    Gone,
    Conflict,
}

fn migrate(con: &mut Connection, key: &[u8], target: &Server, timeout: u64, replace: bool) -> RedisResult<Moved> {
    let mut cmd = redis::cmd("MIGRATE");
    cmd.arg(target.host())
        .arg(target.port())
        .arg(key)
        .arg(target.db())
        .arg(timeout);
    if replace {
        cmd.arg("REPLACE");
    }
    let info = target.connection_info();
    let settings = info.redis_settings();
    if let Some(password) = settings.password() {
        match settings.username() {
            Some(user) => cmd.arg("AUTH2").arg(user).arg(password),
            None => cmd.arg("AUTH").arg(password),
        };
    }
    match cmd.query::<Value>(con) {
        Ok(Value::SimpleString(s)) if s == "NOKEY" => Ok(Moved::Gone),
        Ok(_) => Ok(Moved::Yes),
        Err(e) if e.code() == Some("BUSYKEY") || e.to_string().contains("BUSYKEY") => Ok(Moved::Conflict),
        Err(e) => Err(e),
    }
}

fn verify_with(servers: &[Server], cons: &mut [Connection], to: &MRedis) -> RedisResult<u64> {
    let mut misplaced = 0;
    for (si, server) in servers.iter().enumerate() {
        let mut cursor = 0;
        loop {
            let (next, keys) =
                scan_page(&mut cons[si], cursor).map_err(|e| crate::routing::name_server(server.name(), e))?;
            for key in keys {
                if to.servers()[to.server_index_for(&key)].name() != server.name() {
                    misplaced += 1;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(misplaced)
}

/// Counts keys that are not where `config` places them, over the servers of
/// `config` and `others`. 0 means every key is in place.
pub fn verify(config: &MRedis, others: &MRedis) -> RedisResult<u64> {
    let servers = union(config, others);
    let mut cons = Vec::new();
    for s in &servers {
        cons.push(connect(s)?);
    }
    verify_with(&servers, &mut cons, config)
}
