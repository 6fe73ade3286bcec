//! Fences: a configuration that a rebalance retired can no longer read or
//! write through mredis.
//!
//! Before it moves anything, a rebalance leaves on every server it touches
//! a fence naming the configuration it moves from: a function library
//! `mredis_fence_<old fingerprint>` (`FUNCTION LOAD`, Redis 7.0 or later,
//! Valkey), whose one function, flagged `no-writes`, returns the new
//! configuration's fingerprint. A library rather than a key, as the finish
//! marker ([`crate::finish`]): persisted and replicated, but in no
//! database, so `DBSIZE`, `KEYS` and `SCAN` do not see it.
//!
//! Every connection of a client's data path (the sync pool, the async
//! shared and dedicated connections) asks for the fence of its own
//! configuration when it opens, pipelined with the rest of its setup (no
//! round trip of its own): `FCALL_RO mredis_fence_<fingerprint> 0`. A
//! fenced configuration's connection is refused with [`fenced`], so a
//! client on a retired configuration (one the census could not see: idle
//! with its connections closed by the servers, or built and not yet used)
//! fails its calls instead of reading and writing where no current client
//! does. Clients of the new configuration, and migration-aware clients of
//! the move (they route by the new configuration), check another name.
//!
//! A connection kept across a reconfiguration makes the same checks, for
//! its new configuration, when it is renamed ([`renaming`]).
//!
//! A rebalance to a configuration lowers that configuration's fence first
//! (a fleet moved back, 4 -> 3 after 3 -> 4, is current again). A fence is
//! otherwise left in place: it costs nothing, and only a client of the
//! retired configuration ever asks for it.
//!
//! Not checked (the connection opens as before): servers older than 7.0
//! (no functions), users without the `FCALL_RO` right (the reply is
//! `NOPERM`), and clients whose connections carry no mredis name
//! ([`Builder::client_name`](crate::Builder::client_name) off). For those
//! the census before a rebalance is the only guard.

use redis::{Cmd, RedisError, Value};

use crate::placement::fingerprint::{SUBSCRIBER_NAME, TOOL_NAME, parse_name};

/// The prefix of fence libraries' names.
pub(crate) const PREFIX: &str = "mredis_fence_";

/// The fence library (and function) of configuration `fingerprint`.
pub(crate) fn name(fingerprint: &str) -> String {
    format!("{PREFIX}{fingerprint}")
}

/// The command that fences configuration `retired`, naming `successor`.
pub(crate) fn raise(retired: &str, successor: &str) -> Cmd {
    let library = name(retired);
    let code = format!(
        "#!lua name={library}\nredis.register_function{{function_name='{library}', \
         callback=function() return '{successor}' end, flags={{'no-writes'}}}}\n"
    );
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD").arg("REPLACE").arg(code);
    cmd
}

/// The command that lowers configuration `fingerprint`'s fence (an error
/// reply if there is none, which is fine).
pub(crate) fn lower(fingerprint: &str) -> Cmd {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("DELETE").arg(name(fingerprint));
    cmd
}

/// The check a connection named `connection_name` sends at open: `None`
/// for a name that is not a client's configuration (the rebalance tool,
/// a subscriber, no mredis name).
pub(crate) fn check(connection_name: Option<&str>) -> Option<Cmd> {
    let named = connection_name.filter(|n| !n.starts_with(TOOL_NAME) && !n.starts_with(SUBSCRIBER_NAME))?;
    let parts = parse_name(named)?;
    let mut cmd = redis::cmd("FCALL_RO");
    cmd.arg(name(&parts.fingerprint)).arg(0);
    Some(cmd)
}

/// The reply to [`check`]: an error if the configuration is fenced. An
/// error reply (no such function, no functions on this server) lets the
/// connection open; `NOPERM` (no right to call it) is judged by
/// [`Checks::verdict`].
pub(crate) fn verdict(connection_name: Option<&str>, reply: &Value) -> Result<(), RedisError> {
    let successor = match reply {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => return Ok(()),
    };
    // A fence names its successor by fingerprint (12 hex digits); any
    // other answer (a proxy's, a module's) is not a fence.
    if successor.len() != 12 || !successor.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let retired = connection_name
        .and_then(parse_name)
        .map(|p| p.fingerprint)
        .unwrap_or_default();
    Err(fenced(&retired, &successor))
}

/// The checks of the rights a migration-aware connection needs, sent at
/// open with the rest of its setup: such a client runs every command on a
/// key being moved inside a script (`EVAL` / `EVALSHA`), so a user without
/// those rights would fail call by call, only on keys that move. Empty for
/// a connection that is not migration-aware.
pub(crate) fn rights_checks(connection_name: Option<&str>) -> Vec<Cmd> {
    let aware = connection_name.and_then(parse_name).is_some_and(|p| p.from.is_some());
    if !aware {
        return Vec::new();
    }
    let mut eval = redis::cmd("EVAL");
    eval.arg("return 1").arg(0);
    // A script no server has: NOSCRIPT if the user may run EVALSHA.
    let mut evalsha = redis::cmd("EVALSHA");
    evalsha.arg("0".repeat(40)).arg(0);
    vec![eval, evalsha]
}

/// Whether one of `replies` is a refusal for lack of a right (`NOPERM`).
fn refused(replies: &[Value]) -> bool {
    replies
        .iter()
        .any(|v| matches!(v, Value::ServerError(e) if e.code() == "NOPERM"))
}

/// The error of a user that lacks `rights` (each with what needs it).
fn lacks(rights: &[(&str, &str)]) -> RedisError {
    let names: Vec<&str> = rights.iter().map(|(r, _)| *r).collect();
    let mut detail = String::from("the server refused this user (NOPERM):");
    for (right, why) in rights {
        detail.push_str(&format!(" {right}: {why};"));
    }
    detail.push_str(&format!(" grant {0} (ACL SETUSER <user> {0})", names.join(" ")));
    RedisError::from((
        redis::ErrorKind::Client,
        "mredis: this user lacks a right this client needs",
        detail,
    ))
}

/// Why a connection needs `+fcall_ro`, and the way out.
const FCALL_RO: &str = "every connection asks at open whether a rebalance retired this client's configuration \
                        (FCALL_RO of a fence); without it a client left on a retired configuration would read and \
                        write where no current client does. To run without fences (the census before a rebalance \
                        is then this client's only guard), build it with name_connections(false)";

/// Why a migration-aware connection needs `+eval +evalsha`.
const EVAL: &str = "a migration-aware client (Builder::migrating_from) runs each command on a key being moved \
                    inside a script (EVAL / EVALSHA); or build the client without migrating_from";

/// The checks a connection makes at open ([`check`], then
/// [`rights_checks`]), appended to its setup pipeline so they cost no
/// round trip of their own.
pub(crate) struct Checks {
    /// The index of the first check in the pipeline; the checks are last.
    pub(crate) first: usize,
    fence: bool,
}

impl Checks {
    /// Appends the checks of a connection named `name` to `pipe`.
    pub(crate) fn add(pipe: &mut redis::Pipeline, name: Option<&str>) -> Checks {
        let first = pipe.len();
        let fence = check(name).map(|c| pipe.add_command(c)).is_some();
        for c in rights_checks(name) {
            pipe.add_command(c);
        }
        Checks { first, fence }
    }

    /// No checks (a connection that is not a client's data connection).
    pub(crate) fn none(pipe: &redis::Pipeline) -> Checks {
        Checks {
            first: pipe.len(),
            fence: false,
        }
    }

    /// The verdict on the checks' replies (the pipeline's replies from
    /// [`first`](Self::first) on): an error if the configuration is fenced
    /// or the user lacks a right it needs.
    pub(crate) fn verdict(&self, name: Option<&str>, replies: &[Value]) -> Result<(), RedisError> {
        let mut missing = Vec::new();
        let rights = match (self.fence, replies.split_first()) {
            (true, Some((fence, rest))) => {
                verdict(name, fence)?;
                if refused(std::slice::from_ref(fence)) {
                    missing.push(("+fcall_ro", FCALL_RO));
                }
                rest
            }
            _ => replies,
        };
        if refused(rights) {
            missing.push(("+eval +evalsha", EVAL));
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(lacks(&missing))
    }
}

/// What renames a connection kept across a reconfiguration: `CLIENT
/// SETNAME name` (an empty name clears it), then the checks a connection
/// of that name makes at open ([`Checks::add`]). A kept connection is thus
/// refused as a new one would be when the configuration it now serves was
/// retired, or its user lacks a right that configuration needs.
pub(crate) fn renaming(name: Option<&str>) -> (redis::Pipeline, Checks) {
    let mut pipe = redis::pipe();
    pipe.cmd("CLIENT").arg("SETNAME").arg(name.unwrap_or(""));
    let checks = Checks::add(&mut pipe, name);
    (pipe, checks)
}

/// The error of a client whose configuration was retired.
pub(crate) fn fenced(retired: &str, successor: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Client,
        "mredis: this client's configuration was retired",
        format!(
            "a rebalance moved the fleet from configuration {retired} (this client's) to {successor}; \
             reading or writing on the old configuration would miss the moved keys, so every call \
             fails. Build the client anew, or call reconfigure, with the new server list (with the \
             `watch` feature, a watched fleet file does it when the file changes)"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clients_configurations_are_checked() {
        let c = check(Some("mredis:0123456789ab")).unwrap();
        assert_eq!(
            c.get_packed_command(),
            redis::cmd("FCALL_RO")
                .arg("mredis_fence_0123456789ab")
                .arg(0)
                .get_packed_command()
        );
        // A migration-aware client checks the configuration it routes by.
        let aware = check(Some("mredis:0123456789ab:from:ba9876543210")).unwrap();
        assert_eq!(aware.get_packed_command(), c.get_packed_command());
        assert!(check(Some(TOOL_NAME)).is_none());
        assert!(check(Some(SUBSCRIBER_NAME)).is_none());
        assert!(check(Some("billing")).is_none());
        assert!(check(None).is_none());
    }

    #[test]
    fn a_fence_says_what_happened_and_what_to_do() {
        let name = Some("mredis:0123456789ab");
        let e = verdict(name, &Value::BulkString(b"ba9876543210".to_vec())).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("0123456789ab") && text.contains("ba9876543210"), "{text}");
        assert!(text.contains("retired") && text.contains("reconfigure"), "{text}");
        assert!(verdict(name, &Value::Nil).is_ok() && verdict(name, &Value::Int(0)).is_ok());
        assert!(verdict(name, &Value::SimpleString("OK".into())).is_ok());
    }

    #[test]
    fn a_user_without_the_rights_is_told_which_to_grant() {
        let noperm =
            redis::parse_redis_value(b"-NOPERM User app has no permissions to run the 'x' command\r\n").unwrap();
        let ok = Value::Int(1);
        let plain = Some("mredis:0123456789ab");
        let aware = Some("mredis:0123456789ab:from:ba9876543210");
        let mut pipe = redis::pipe();
        let checks = Checks::add(&mut pipe, plain);
        assert_eq!(pipe.len(), 1);
        let text = checks
            .verdict(plain, std::slice::from_ref(&noperm))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("+fcall_ro") && text.contains("name_connections(false)"),
            "{text}"
        );
        assert!(!text.contains("evalsha"), "{text}");
        let mut pipe = redis::pipe();
        let checks = Checks::add(&mut pipe, aware);
        assert_eq!(pipe.len(), 3);
        let both = checks
            .verdict(aware, &[noperm.clone(), noperm.clone(), ok.clone()])
            .unwrap_err()
            .to_string();
        assert!(both.contains("grant +fcall_ro +eval +evalsha"), "{both}");
        let eval = checks
            .verdict(aware, &[Value::Nil, ok.clone(), noperm])
            .unwrap_err()
            .to_string();
        assert!(
            eval.contains("+eval +evalsha") && !eval.contains("grant +fcall_ro"),
            "{eval}"
        );
        assert!(checks.verdict(aware, &[Value::Nil, ok.clone(), ok]).is_ok());
    }
}
