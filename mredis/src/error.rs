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
        "mredis",
        format!(
            "{command} needs all its keys on one server, but `{}` is on {sa} and `{}` is on {sb}; \
             nothing was sent. Put related keys together with hash tags ({{user:1}}:a, {{user:1}}:b) \
             and enable them with Builder::hash_tags(true)",
            show_key(a),
            show_key(b)
        ),
    ))
}

/// One line in words for an error of this crate or of redis-rs, without
/// redis-rs's framing (`... - AuthenticationFailed: ...`,
/// `Server(CrossSlot)`, quoted codes): what the `mredis` command-line tool
/// prints.
///
/// redis-rs's own `Display` of a [`RedisError`] always shows the error's
/// kind as a Rust enum name (`mredis - AuthenticationFailed: ...`); this
/// crate keeps those kinds, so that [`RedisError::kind`],
/// [`RedisError::code`] and [`RedisError::is_timeout`] answer as redis-rs's
/// own errors do, and this function gives the same error as a sentence:
///
/// - this crate's errors: `mredis: ` and the text, naming the server
///   (`mredis: 127.0.0.1:6380:0: authentication failed as user `default`:
///   wrong password, or the user does not exist or is disabled`);
/// - a server's own error reply: its code and text, as `redis-cli` shows it
///   (`WRONGTYPE Operation against a key holding the wrong kind of value`);
/// - anything else: redis-rs's text on one line.
///
/// ```no_run
/// # fn main() -> redis::RedisResult<()> {
/// let mr = mredis::MRedis::new(["redis://127.0.0.1:6379/0"])?;
/// if let Err(e) = mr.get::<_, Option<String>>("key") {
///     eprintln!("{}", mredis::error_text(&e));
/// }
/// # Ok(()) }
/// ```
pub fn error_text(err: &RedisError) -> String {
    let text = err.to_string();
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    // redis-rs's general errors: `{desc} - {kind:?}` and `: {detail}`.
    let frame = format!(" - {:?}", err.kind());
    let tail = match err.detail() {
        Some(detail) => format!("{frame}: {detail}"),
        None => frame,
    };
    if let Some(desc) = text.strip_suffix(tail.as_str()) {
        return one_line(&match err.detail() {
            Some(detail) => format!("{desc}: {detail}"),
            None => desc.to_string(),
        });
    }
    // A server's reply: `CODE detail`, as the server wrote it.
    if let Some(code) = err.code()
        && (err.kind() == ErrorKind::Extension || matches!(err.kind(), ErrorKind::Server(_)))
    {
        return one_line(&match err.detail() {
            Some(detail) => format!("{code} {detail}"),
            None => code.to_string(),
        });
    }
    one_line(&text)
}

/// Adds the server's name to errors that are not the server's own reply
/// (connection refused, timeouts, ...). Server replies (WRONGTYPE, ...) pass
/// through unchanged, as redis-rs returns them, so `code()` still works.
pub(crate) fn name_server(server: &crate::server::Server, err: RedisError) -> RedisError {
    name_server_after(server, err, None, None)
}

/// The io error inside a redis-rs I/O error, if it has one.
fn io_error(err: &RedisError) -> Option<&std::io::Error> {
    std::error::Error::source(err).and_then(|s| s.downcast_ref::<std::io::Error>())
}

/// An I/O error of `kind` with this crate's text, so `is_timeout()`,
/// `is_connection_refusal()` and `is_connection_dropped()` answer for it as
/// for redis-rs's own, and its `Display` is the text alone.
fn io_text(kind: std::io::ErrorKind, text: String) -> RedisError {
    RedisError::from(std::io::Error::new(kind, text))
}

/// [`name_server`], saying how long was waited: `connect` for opening the
/// connection (the time it took; nothing was sent), `reply` for the reply
/// (the response timeout).
pub(crate) fn name_server_after(
    config: &crate::server::Server,
    err: RedisError,
    connect: Option<std::time::Duration>,
    reply: Option<std::time::Duration>,
) -> RedisError {
    let server = config.name();
    if err.to_string().starts_with("mredis") && (err.is_io_error() || err.to_string().contains(server)) {
        return err; // named already
    }
    // A refused password: redis-rs reports AUTH's refusal as
    // AuthenticationFailed ("Password authentication failed"), and HELLO's
    // (RESP3) as the server's WRONGPASS reply; neither names the server
    // nor the user. Say both (the user as configured; never the password).
    if err.kind() == ErrorKind::AuthenticationFailed || err.code() == Some("WRONGPASS") {
        // The user as configured for this server (never the password).
        let settings = config.connection_info();
        let settings = settings.redis_settings();
        let who = match (settings.password(), settings.username()) {
            (None, _) => "with the configured credentials".to_string(),
            (Some(_), Some(user)) => format!("as user `{user}`"),
            (Some(_), None) => "as user `default`".to_string(),
        };
        return RedisError::from((
            ErrorKind::AuthenticationFailed,
            "mredis",
            format!(
                "{server}: authentication failed {who}: wrong password, or the user does not exist or \
                 is disabled"
            ),
        ));
    }
    // Something that is not a Redis server answered (an HTTP server, ...):
    // redis-rs's parser says where its reply stopped parsing.
    if err.kind() == ErrorKind::Parse && err.detail().is_some_and(|d| d.starts_with("Parse error")) {
        return RedisError::from((
            ErrorKind::Parse,
            "mredis",
            format!(
                "{server}: the server did not answer like a Redis server (its reply is not Redis's \
                 protocol); is something else listening there?"
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
    // The OS's text ("Resource temporarily unavailable (os error 11)": a
    // socket timeout) is left out: it says less than ours, and misleads.
    if err.is_timeout() {
        let text = match (connect, reply) {
            (Some(t), _) => format!(
                "mredis: {server}: could not connect within {}; nothing was sent",
                duration(t)
            ),
            (None, Some(t)) => format!(
                "mredis: {server}: no reply in time (waited {}); the command may have run there",
                duration(t)
            ),
            (None, None) => format!("mredis: {server}: no reply in time; the command may have run there"),
        };
        return io_text(std::io::ErrorKind::TimedOut, text);
    }
    if err.is_connection_refusal() {
        return io_text(
            std::io::ErrorKind::ConnectionRefused,
            format!("mredis: {server}: connection refused; nothing was sent"),
        );
    }
    if let Some(io) = io_error(&err) {
        return io_text(io.kind(), format!("mredis: {server}: {}", error_text(&err)));
    }
    RedisError::from((err.kind(), "mredis", format!("{server}: {}", error_text(&err))))
}

/// A duration as people write it: `300 ms`, `2 s`, `1.02 s`.
fn duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.2} s", d.as_secs_f64())
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
        // Each failure once, in words: `server: what happened`.
        let failed: Vec<String> = self
            .failed
            .iter()
            .map(|(s, e)| {
                let text = error_text(e);
                let text = text.strip_prefix("mredis: ").unwrap_or(&text);
                let text = text
                    .strip_prefix(s.as_str())
                    .and_then(|t| t.strip_prefix(": "))
                    .unwrap_or(text);
                format!("{s}: {text}")
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
            "mredis",
            format!(
                "{} failed on {} of {} servers: {}. Succeeded on: {ok}",
                self.command,
                self.failed.len(),
                self.failed.len() + self.succeeded.len(),
                failed.join(". ")
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
