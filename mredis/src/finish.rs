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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::connect::{Connector, Kind};
use crate::server::Server;
use crate::task::Task;

/// The prefix of the marker libraries' names.
pub const PREFIX: &str = "mredis_finished_";

pub use crate::placement::fingerprint::WATCH_PART;

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

/// Starts asking the first of `servers` that answers for the marker
/// library `field` every [`POLL`], on a connection of its own (named as
/// the client's, with [`WATCH_PART`]); sets `finished` when it is there,
/// and stops (closing the connection). `None` if the thread cannot start.
pub(crate) fn watch(servers: Vec<Server>, field: String, finished: Arc<AtomicBool>, c: &Connector) -> Option<Task> {
    let c = c.clone();
    Task::spawn("mredis-finish", move |stop| {
        // One connection, to the first server of the new configuration
        // that answers (each has the marker once it is left).
        let mut at = 0;
        let mut con: Option<redis::Connection> = None;
        loop {
            for _ in 0..servers.len() {
                match ask(&servers[at], &mut con, &field, &c) {
                    Some(true) => {
                        finished.store(true, Ordering::Release);
                        return;
                    }
                    Some(false) => break,
                    None => at = (at + 1) % servers.len(),
                }
            }
            if stop.wait(POLL) {
                return;
            }
        }
    })
    .ok()
}

/// Whether `server` has the marker; `None` if it does not answer (the
/// connection is then dropped).
fn ask(server: &Server, con: &mut Option<redis::Connection>, field: &str, c: &Connector) -> Option<bool> {
    if con.is_none() {
        *con = c.open(server, Kind::Finish, POLL).ok();
    }
    let listing = con.as_mut()?;
    match redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg(field)
        .query::<redis::Value>(listing)
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
