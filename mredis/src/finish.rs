//! The automatic finish of a migration.
//!
//! Once `mredis rebalance` has verified that every key is on its new
//! owner, it leaves a marker on every server of the new configuration: a
//! function library named `mredis_finished_<old fingerprint>_<new
//! fingerprint>` (`FUNCTION LOAD`; Redis 7.0 or later, Valkey). A library
//! rather than a key: it is persisted and replicated like one, but it is
//! in no database, so `DBSIZE`, `KEYS` and `SCAN` do not see it. A
//! migration-aware client ([`Builder::migrating_from`]) asks one server of
//! the new configuration (the first that answers) for the marker of its
//! own move once per [`POLL`], on one connection of its own (named as the
//! client's other connections, with `:watch` added: [`WATCH_PART`]); when
//! the marker is there, the
//! client closes that connection and stops its migration
//! checks: a command on a key that moved costs one round trip again, as
//! on a client built for the new configuration alone, without a second
//! deploy. A marker of another move (a client whose configuration
//! disagrees with the rebalance's) is not its marker: it changes nothing
//! and logs nothing, and the census of the next rebalance lists that
//! client.
//!
//! A rebalance that starts moving deletes every marker on the servers it
//! touches first, so a client migration-aware for a move that is run
//! again never takes an old run's marker for this one's. A client whose
//! user may not run `FUNCTION LIST`, or servers older than 7.0, never see
//! a marker: such clients keep their migration checks (correct, two round
//! trips for a moved key) until they are rebuilt without
//! `migrating_from`.
//!
//! [`Builder::migrating_from`]: crate::Builder::migrating_from

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::server::Server;

/// The prefix of the marker libraries' names.
pub const PREFIX: &str = "mredis_finished_";

/// The part added to the name of the connection that asks for the marker.
pub const WATCH_PART: &str = "watch";

/// How often a migration-aware client asks for the marker: it stops its
/// migration checks at most this long (plus one round trip to a server
/// that answers) after the rebalance left the marker.
pub const POLL: Duration = Duration::from_secs(1);

/// The marker library's name for the move from `from` to `to`
/// (fingerprints).
pub fn marker(from: &str, to: &str) -> String {
    format!("{PREFIX}{from}_{to}")
}

/// The command that leaves the marker `library`.
pub(crate) fn leave(library: &str) -> redis::Cmd {
    let code = format!("#!lua name={library}\nredis.register_function('{library}', function() return 1 end)\n");
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD").arg("REPLACE").arg(code);
    cmd
}

/// Deletes every marker on `con`'s server. Servers without functions
/// (before 7.0) have none.
pub(crate) fn clear(con: &mut redis::Connection) -> redis::RedisResult<()> {
    let listed: redis::Value = match redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg(format!("{PREFIX}*"))
        .query(con)
    {
        Ok(v) => v,
        // No FUNCTION (before 7.0) or not for this user: no marker was
        // left by it either.
        Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in library_names(&listed) {
        let _: redis::Value = redis::cmd("FUNCTION").arg("DELETE").arg(name).query(con)?;
    }
    Ok(())
}

/// The `library_name`s of a `FUNCTION LIST` reply (RESP2 or RESP3).
fn library_names(listed: &redis::Value) -> Vec<String> {
    let mut out = Vec::new();
    let redis::Value::Array(libraries) = listed else {
        return out;
    };
    for lib in libraries {
        let fields: Vec<(&redis::Value, &redis::Value)> = match lib {
            redis::Value::Array(items) => items.chunks(2).filter_map(|p| Some((p.first()?, p.get(1)?))).collect(),
            redis::Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
            _ => continue,
        };
        for (k, v) in fields {
            let is_name = matches!(k, redis::Value::BulkString(b) if b == b"library_name")
                || matches!(k, redis::Value::SimpleString(s) if s == "library_name");
            if is_name && let Ok(name) = redis::from_redis_value_ref::<String>(v) {
                out.push(name);
            }
        }
    }
    out
}

/// The watcher of one client's marker; stops when dropped.
#[derive(Debug)]
pub(crate) struct Watch {
    stop: Arc<(Mutex<bool>, Condvar)>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
    }
}

/// Starts asking the first of `servers` that answers for the marker
/// library `field` every [`POLL`], on a connection of its own (named as
/// the client's); sets `finished` when it is there, and stops (closing the
/// connection).
pub(crate) fn watch(servers: Vec<Server>, field: String, finished: Arc<AtomicBool>, name: Option<String>) -> Watch {
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let flag = stop.clone();
    let spawned = std::thread::Builder::new()
        .name("mredis-finish".to_string())
        .spawn(move || {
            // One connection, to the first server of the new configuration
            // that answers (each has the marker once it is left).
            let mut at = 0;
            let mut con: Option<redis::Connection> = None;
            loop {
                for _ in 0..servers.len() {
                    match ask(&servers[at], &mut con, &field, name.as_deref()) {
                        Some(true) => {
                            finished.store(true, Ordering::Release);
                            return;
                        }
                        Some(false) => break,
                        None => at = (at + 1) % servers.len(),
                    }
                }
                let (lock, wake) = &*flag;
                let stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (stopped, _) = wake
                    .wait_timeout_while(stopped, POLL, |s| !*s)
                    .unwrap_or_else(|e| e.into_inner());
                if *stopped {
                    return;
                }
            }
        });
    // A thread that cannot start leaves the client doing its migration
    // checks: slower, never wrong.
    drop(spawned);
    Watch { stop }
}

/// Whether `server` has the marker; `None` if it does not answer (the
/// connection is then dropped).
fn ask(server: &Server, con: &mut Option<redis::Connection>, field: &str, name: Option<&str>) -> Option<bool> {
    if con.is_none() {
        let opened = server
            .client()
            .and_then(|c| c.get_connection_with_timeout(POLL))
            .and_then(|mut c| {
                c.set_read_timeout(Some(POLL))?;
                c.set_write_timeout(Some(POLL))?;
                crate::server::name_connection(&mut c, name);
                Ok(c)
            });
        *con = opened.ok();
    }
    let c = con.as_mut()?;
    match redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg(field)
        .query::<redis::Value>(c)
    {
        Ok(listed) => Some(library_names(&listed).iter().any(|n| n == field)),
        // Refused (no FUNCTION before 7.0, or not for this user): asked
        // again next time, it never has the marker.
        Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => Some(false),
        Err(_) => {
            *con = None;
            None
        }
    }
}
