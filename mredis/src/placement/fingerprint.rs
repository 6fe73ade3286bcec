//! The fingerprint of a placement: a short digest of everything that
//! decides where a key lives (mode, hash, hash tags, the servers' names,
//! order and weights), and the connection names built from it.
//!
//! Every mredis connection names itself (`CLIENT SETNAME`) with the
//! fingerprint of the configuration it routes by, and, while it is
//! migration-aware, the fingerprint of the one it is moving from:
//!
//! ```text
//! mredis:<fingerprint>[:from:<fingerprint>][:<your part>]
//! ```
//!
//! so `CLIENT LIST` on any server tells which configuration each client
//! runs (`mredis clients` prints it, and `mredis rebalance` checks it
//! before it moves anything).

use super::{Mode, placement_name};
use crate::server::Server;

/// The prefix of every mredis connection name.
pub const NAME_PREFIX: &str = "mredis:";

/// The name of a subscriber's connections. A subscribed connection
/// cannot be renamed, and it follows a reconfigure by itself (its channels
/// are subscribed again on their new owners), so it carries no
/// configuration's fingerprint; the census does not count it.
pub const SUBSCRIBER_NAME: &str = "mredis:subscriber";

/// The name of the rebalance tool's own connections (the census skips
/// them).
pub const TOOL_NAME: &str = "mredis:tool";

/// The part added to the name of the connection that asks for a
/// migration's finish marker ([`crate::finish`]).
pub const WATCH_PART: &str = "watch";

/// The fingerprint (12 hex digits) of a placement. Two configurations
/// that place every key alike for the same servers have the same one;
/// listing the servers in another order (where order matters), another
/// weight, alias, database, mode, hash or hash-tag rule gives another.
pub fn fingerprint(mode: Mode, servers: &[Server], hash_tags: Option<bool>) -> String {
    use std::fmt::Write;
    // The hash-tag rule in effect (the default depends on the mode).
    let tags = match mode {
        Mode::Standard => hash_tags.unwrap_or(false),
        Mode::Rendezvous => hash_tags.unwrap_or(true),
        Mode::Ketama { .. } | Mode::Modula { .. } => false,
    };
    let mut text = format!("v1|{mode:?}|tags={tags}");
    // Standard and modula place by position (and weight), ketama and
    // rendezvous by the servers' placement names (an alias, or the name).
    let by_name = matches!(mode, Mode::Ketama { .. } | Mode::Rendezvous);
    for s in servers {
        let _ = write!(text, "|{}/{}", s.name(), s.weight());
        if by_name {
            let _ = write!(text, "/{}", placement_name(s));
        }
    }
    let digest = xxhash_rust::xxh64::xxh64(text.as_bytes(), 0);
    format!("{:012x}", digest >> 16)
}

/// A connection name: `mredis:<fp>[:from:<old>][:<user>]`.
pub(crate) fn connection_name(fp: &str, from: Option<&str>, user: Option<&str>) -> String {
    let mut name = format!("{NAME_PREFIX}{fp}");
    if let Some(old) = from {
        name.push_str(":from:");
        name.push_str(old);
    }
    if let Some(user) = user {
        name.push(':');
        name.push_str(user);
    }
    name
}

/// What an mredis connection name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameParts {
    /// The fingerprint of the configuration the client routes by.
    pub fingerprint: String,
    /// While migration-aware: the fingerprint of the configuration it is
    /// moving from.
    pub from: Option<String>,
    /// The part the application added ([`Builder::client_name`](crate::Builder::client_name)).
    pub user: Option<String>,
}

/// Reads a connection name; `None` if it is not an mredis client's (or is
/// the rebalance tool's own).
pub fn parse_name(name: &str) -> Option<NameParts> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (fp, mut rest) = match rest.split_once(':') {
        Some((fp, rest)) => (fp, Some(rest)),
        None => (rest, None),
    };
    if fp.len() != 12 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut from = None;
    if let Some(r) = rest
        && let Some(after) = r.strip_prefix("from:")
    {
        let (old, more) = match after.split_once(':') {
            Some((old, more)) => (old, Some(more)),
            None => (after, None),
        };
        if old.len() != 12 || !old.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        from = Some(old.to_string());
        rest = more;
    }
    Some(NameParts {
        fingerprint: fp.to_string(),
        from,
        user: rest.map(str::to_string),
    })
}

/// A user's part of the connection name: no spaces or newlines (the
/// server refuses them), not empty.
pub(crate) fn check_user_part(part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err("the client name part is empty".to_string());
    }
    if let Some(c) = part.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "the client name part may hold printable ASCII only (no spaces or newlines); found {c:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::IntoServer;

    fn servers(urls: &[&str]) -> Vec<Server> {
        urls.iter().map(|u| u.into_server().unwrap()).collect()
    }

    #[test]
    fn the_fingerprint_follows_what_places_keys() {
        let a = servers(&["redis://h:1/0", "redis://h:2/0"]);
        let b = servers(&["redis://h:2/0", "redis://h:1/0"]);
        let fa = fingerprint(Mode::Standard, &a, None);
        assert_eq!(fa.len(), 12);
        assert_eq!(
            fa,
            fingerprint(Mode::Standard, &a, Some(false)),
            "the default rule is the same rule"
        );
        assert_ne!(fa, fingerprint(Mode::Standard, &b, None), "order");
        assert_ne!(fa, fingerprint(Mode::Standard, &a, Some(true)), "tags");
        assert_ne!(fa, fingerprint(Mode::Rendezvous, &a, None), "mode");
        let heavy = vec![a[0].clone().with_weight(2), a[1].clone()];
        assert_ne!(fa, fingerprint(Mode::Standard, &heavy, None), "weight");
    }

    #[test]
    fn names_read_back() {
        let plain = connection_name("0123456789ab", None, None);
        assert_eq!(plain, "mredis:0123456789ab");
        let p = parse_name(&plain).unwrap();
        assert_eq!((p.fingerprint.as_str(), p.from, p.user), ("0123456789ab", None, None));
        let moving = connection_name("0123456789ab", Some("ba9876543210"), Some("billing:eu"));
        let p = parse_name(&moving).unwrap();
        assert_eq!(p.from.as_deref(), Some("ba9876543210"));
        assert_eq!(p.user.as_deref(), Some("billing:eu"));
        let own = connection_name("0123456789ab", None, Some("app"));
        assert_eq!(parse_name(&own).unwrap().user.as_deref(), Some("app"));
        for other in ["", "redis-cli", TOOL_NAME, "mredis:xyz", "mredis:0123456789ab:from:12"] {
            assert_eq!(parse_name(other), None, "{other}");
        }
        assert!(check_user_part("a b").is_err());
        assert!(check_user_part("").is_err());
        assert!(check_user_part("svc-1").is_ok());
    }
}
