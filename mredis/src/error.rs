//! Errors: one way to say that a call failed on some servers, and the
//! helpers that name the server in errors that are not the server's own
//! reply.
//!
//! Codes a caller can match with [`redis::RedisError::code`]:
//! - a server's own reply (WRONGTYPE, OOM, NOSCRIPT, BUSYKEY, READONLY, ...)
//!   passes through unchanged, on every path, when it is the only failure;
//! - `CROSSSLOT`: the keys of one command live on different servers; nothing
//!   was sent (Redis Cluster's code for the same thing);
//! - `TRYAGAIN`: a key is being moved by a migration and the command could
//!   not run now; nothing was run, retrying is safe (Redis Cluster's code).

use redis::{ErrorKind, RedisError, ServerErrorKind};

pub(crate) fn client_error(detail: String) -> RedisError {
    RedisError::from((ErrorKind::Client, "mredis", detail))
}

/// A key as shown in errors: printable, shortened.
pub(crate) fn show_key(key: &[u8]) -> String {
    let mut s: String = key.escape_ascii().to_string();
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

pub(crate) fn cross_server_error(command: &str, a: &[u8], sa: &str, b: &[u8], sb: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Server(ServerErrorKind::CrossSlot),
        "mredis: keys on different servers",
        format!(
            "{command} needs all its keys on one server, but `{}` is on {sa} and `{}` is on {sb}; \
             nothing was sent. Put related keys together with hash tags ({{user:1}}:a, {{user:1}}:b) \
             and enable them with Builder::hash_tags(true)",
            show_key(a),
            show_key(b)
        ),
    ))
}

/// Adds the server's name to errors that are not the server's own reply
/// (connection refused, timeouts, ...). Server replies (WRONGTYPE, ...) pass
/// through unchanged, as redis-rs returns them, so `code()` still works.
pub(crate) fn name_server(server: &str, err: RedisError) -> RedisError {
    name_server_after(server, err, None, None)
}

/// [`name_server`], saying how long was waited: `connect` for opening the
/// connection (nothing was sent), `reply` for the reply.
pub(crate) fn name_server_after(
    server: &str,
    err: RedisError,
    connect: Option<std::time::Duration>,
    reply: Option<std::time::Duration>,
) -> RedisError {
    if err.is_io_error() && err.to_string().starts_with("mredis: ") {
        return err; // named already
    }
    // A refused password: redis-rs reports AUTH's refusal as
    // AuthenticationFailed ("Password authentication failed"), and HELLO's
    // (RESP3) as the server's WRONGPASS reply; neither names the server
    // nor the user. Say both (the user as configured; never the password).
    if err.kind() == ErrorKind::AuthenticationFailed || err.code() == Some("WRONGPASS") {
        let users = crate::config::users_of(server);
        let who = match users.as_slice() {
            [] => "with the configured credentials".to_string(),
            [user] => format!("as user `{user}`"),
            several => format!(
                "as user {} (this process configures several users for this server)",
                several
                    .iter()
                    .map(|u| format!("`{u}`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        };
        return RedisError::from((
            ErrorKind::AuthenticationFailed,
            "mredis: server error",
            format!(
                "{server}: authentication failed {who}: wrong password, or the user does not exist or \
                 is disabled ({err})"
            ),
        ));
    }
    if err.code().is_some() || matches!(err.kind(), ErrorKind::Server(_)) {
        return err;
    }
    if err.kind() == ErrorKind::Extension {
        // redis-rs's pipeline failure: the first failed command's own reply,
        // so its code (OOM, WRONGTYPE, ...) still works.
        if let Some(first) = err
            .clone()
            .into_server_errors()
            .and_then(|e| e.first().map(|(_, s)| s.clone()))
        {
            return first.into();
        }
        return err;
    }
    // Timeouts and refusals stay I/O errors of the same io kind, so
    // `is_timeout()` and `is_connection_refusal()` still answer for them.
    if err.is_timeout() {
        let text = match (connect, reply) {
            (Some(t), _) => format!(
                "mredis: {server}: could not connect within {} ({err}); nothing was sent",
                millis(t)
            ),
            (None, Some(t)) => format!(
                "mredis: {server}: no reply in time, within {} ({err}); the command may have run there",
                millis(t)
            ),
            (None, None) => format!("mredis: {server}: no reply in time ({err}); the command may have run there"),
        };
        return RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, text));
    }
    if err.is_connection_refusal() {
        return RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("mredis: {server}: connection refused ({err}); nothing was sent"),
        ));
    }
    let (kind, text) = if err.is_io_error() {
        (ErrorKind::Io, format!("{server}: {err}"))
    } else {
        (err.kind(), format!("{server}: {err}"))
    };
    RedisError::from((kind, "mredis: server error", text))
}

/// A duration as people write it: `300 ms`, `2 s`.
fn millis(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

/// A call that went to several servers failed on some: the one type every
/// path (fan-out, scatter-gather, fleet pipeline) reports it with.
///
/// With one failed server whose error is the server's own reply, that reply
/// is returned unchanged (its code still works). Otherwise the error names
/// every failed server with its error and the servers that did run their
/// part; its kind is the first failure's.
#[derive(Debug)]
pub(crate) struct Failure<'c> {
    command: &'c str,
    failed: Vec<(String, RedisError)>,
    /// (server, items): borrowed, as most calls succeed and never format it.
    succeeded: Vec<(&'c str, usize)>,
}

impl<'c> Failure<'c> {
    pub(crate) fn new(command: &'c str) -> Self {
        Failure {
            command,
            failed: Vec::new(),
            succeeded: Vec::new(),
        }
    }

    pub(crate) fn succeeded(&mut self, server: &'c str, items: usize) {
        self.succeeded.push((server, items));
    }

    pub(crate) fn failed(&mut self, server: &str, err: RedisError) {
        self.failed.push((server.to_string(), err));
    }

    pub(crate) fn into_result(mut self) -> Result<(), RedisError> {
        if self.failed.is_empty() {
            return Ok(());
        }
        if self.failed.len() == 1 && self.failed[0].1.code().is_some() {
            return Err(self.failed.remove(0).1);
        }
        let kind = self.failed[0].1.kind();
        let failed: Vec<String> = self
            .failed
            .iter()
            .map(|(s, e)| {
                let text = e.to_string();
                if text.contains(s.as_str()) {
                    text
                } else {
                    format!("{s}: {text}")
                }
            })
            .collect();
        let ok = if self.succeeded.is_empty() {
            "none".to_string()
        } else {
            self.succeeded
                .iter()
                .map(|(s, n)| format!("{s} ({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(RedisError::from((
            kind,
            "mredis: failed on some servers",
            format!(
                "{} failed on {} of {} servers ({}); succeeded on: {ok}",
                self.command,
                self.failed.len(),
                self.failed.len() + self.succeeded.len(),
                failed.join("; ")
            ),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_shown_printable_and_short() {
        assert_eq!(show_key(b"a\xff\n"), "a\\xff\\n");
        assert!(show_key(&[b'k'; 200]).ends_with("..."));
    }

    #[test]
    fn cross_server_errors_have_redis_clusters_code() {
        let e = cross_server_error("RENAME", b"a", "s1", b"b", "s2");
        assert_eq!(e.code(), Some("CROSSSLOT"));
        assert!(e.to_string().contains("`a` is on s1"));
    }
}
