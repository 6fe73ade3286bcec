//! The census: who is connected to the fleet, and with which
//! configuration.
//!
//! Every mredis connection names itself (`CLIENT SETNAME`) after the
//! fingerprint of the placement it routes by, and while migration-aware,
//! the one it moves from ([`crate::placement::fingerprint`]). `CLIENT LIST`
//! on every server of both configurations (primaries and the replicas a
//! shard lists) therefore says which clients are ready for a move:
//!
//! | name | kind | before the move | before the verification |
//! |---|---|---|---|
//! | `mredis:<new>:from:<old>` | [`ClientKind::Ready`] | fine | fine |
//! | `mredis:<new>` | [`ClientKind::New`] | refused: it reads the new owner of keys not moved yet | fine |
//! | `mredis:<old>` | [`ClientKind::Old`] | refused: it writes keys where they no longer are once moved | refused |
//! | any other `mredis:` fingerprint | [`ClientKind::Other`] | refused | refused |
//! | no name, of a user mredis clients use who may not run `CLIENT SETNAME` | [`ClientKind::Unnamed`] | refused: it may be an old client | refused |
//! | anything else (redis-cli, other libraries, no name) | [`ClientKind::Unknown`] | a warning, or refused with [`CensusOptions::refuse_unknown`] | the same |
//!
//! Skipped: the rebalance tool's own connections (`mredis:tool`),
//! subscribers' connections (`mredis:subscriber`: they touch no key and
//! follow a reconfigure by themselves), the servers' replication links
//! (flags `S` and `M`) and Sentinel's connections (`sentinel-*`). A client connected while the census runs
//! is seen by the next one: the census is taken before anything moves and
//! again before the final verification.

use std::time::{Duration, Instant};

use redis::RedisResult;

use crate::mover::{connect, error};
use crate::placement::fingerprint::{SUBSCRIBER_NAME, TOOL_NAME, parse_name};
use crate::server::Server;

/// What a connection's name says about its client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientKind {
    /// An mredis client migration-aware for exactly this move (routes by
    /// the new configuration, moving from the old one).
    Ready,
    /// An mredis client on the new configuration, not migration-aware.
    New,
    /// An mredis client still on the old configuration.
    Old,
    /// An mredis client on another configuration (a third server list, or
    /// migration-aware for another move).
    Other {
        /// The fingerprint it routes by.
        fingerprint: String,
        /// The fingerprint it moves from, if migration-aware.
        from: Option<String>,
    },
    /// Not an mredis client (no name, or another name): redis-cli, another
    /// library, a monitoring agent, or an mredis client with naming turned
    /// off.
    Unknown,
    /// A connection with no name, logged in as a user mredis clients use
    /// (one the configurations' server lists name,
    /// [`CensusOptions::client_users`], or one seen on a named mredis
    /// connection) whose ACL refuses `CLIENT SETNAME` (`ACL DRYRUN` says
    /// so): an mredis client of that user cannot name its connections, so
    /// this may be one on any configuration, the old one included.
    Unnamed,
}

impl std::fmt::Display for ClientKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientKind::Ready => f.write_str("migration-aware for this move"),
            ClientKind::New => f.write_str("new configuration, not migration-aware"),
            ClientKind::Old => f.write_str("old configuration"),
            ClientKind::Other {
                fingerprint,
                from: None,
            } => write!(f, "another configuration ({fingerprint})"),
            ClientKind::Other {
                fingerprint,
                from: Some(from),
            } => write!(f, "migration-aware for another move ({from} -> {fingerprint})"),
            ClientKind::Unknown => f.write_str("not an mredis client"),
            ClientKind::Unnamed => f.write_str(
                "no name, and its user may not name connections: possibly an mredis client on the old configuration",
            ),
        }
    }
}

/// One client connection, as a server lists it (`CLIENT LIST`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetClient {
    /// The server (or replica, `host:port`) it is connected to.
    pub server: String,
    /// Its connection id on that server.
    pub id: u64,
    /// Its address, as the server sees it (`ip:port`).
    pub addr: String,
    /// Its connection name (empty when it has none).
    pub name: String,
    /// The ACL user it is logged in as (never a password: servers do not
    /// list them).
    pub user: String,
    /// The library it says it is (`CLIENT SETINFO lib-name`), if any.
    pub lib: String,
    /// Seconds since it connected.
    pub age_secs: u64,
    /// What its name says.
    pub kind: ClientKind,
}

/// Who is connected to the servers of both configurations.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Census {
    /// The old configuration's fingerprint.
    pub from: String,
    /// The new configuration's fingerprint.
    pub to: String,
    /// Every client connection found (the skipped ones aside).
    pub clients: Vec<FleetClient>,
}

/// When the census is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Before anything moves: only [`ClientKind::Ready`] clients may be
    /// connected.
    BeforeMove,
    /// Before the final verification (every key moved): clients on the new
    /// configuration are fine too.
    BeforeVerify,
}

/// How the census decides.
///
/// Build it with `..Default::default()` after the fields you set: fields
/// are added in minor releases, each with a default that keeps the
/// behaviour you had. (Not `#[non_exhaustive]`, which would forbid that
/// struct expression.)
#[derive(Debug, Clone, Default)]
pub struct CensusOptions {
    /// Refuse to move while connections that are not mredis clients
    /// ([`ClientKind::Unknown`]) are connected (default: a warning).
    pub refuse_unknown: bool,
    /// Wait up to this long for the clients in the way to go (or to
    /// reconfigure), taking the census again every second; `None` refuses
    /// at once.
    pub wait: Option<Duration>,
    /// The ACL users the application's mredis clients log in as, when the
    /// rebalance's own configurations name another (an admin user). An
    /// unnamed connection of one of them whose ACL refuses `CLIENT
    /// SETNAME` counts as a possible old client ([`ClientKind::Unnamed`]).
    /// The users in either configuration's server lists, and those seen on
    /// named mredis connections, are counted without being listed.
    pub client_users: Vec<String>,
}

impl Census {
    /// The clients in the way at `stage`.
    pub fn in_the_way(&self, stage: Stage, options: &CensusOptions) -> Vec<&FleetClient> {
        self.clients
            .iter()
            .filter(|c| match &c.kind {
                ClientKind::Ready => false,
                ClientKind::New => stage == Stage::BeforeMove,
                ClientKind::Old | ClientKind::Other { .. } | ClientKind::Unnamed => true,
                ClientKind::Unknown => options.refuse_unknown,
            })
            .collect()
    }

    /// The connections that are not mredis clients.
    pub fn unknown(&self) -> Vec<&FleetClient> {
        self.clients.iter().filter(|c| c.kind == ClientKind::Unknown).collect()
    }

    /// One line per client, for people: server, address, name, kind.
    pub fn describe(clients: &[&FleetClient]) -> String {
        let mut text = String::new();
        for c in clients {
            let name = if c.name.is_empty() { "(no name)" } else { &c.name };
            let lib = if c.lib.is_empty() {
                String::new()
            } else {
                format!(", lib {}", c.lib)
            };
            text.push_str(&format!(
                "\n  {} on {}: {} (user {}{lib}, connected {} s): {}",
                c.addr, c.server, name, c.user, c.age_secs, c.kind
            ));
        }
        text
    }
}

/// Every node to ask: each server of both configurations once, and the
/// replicas its shard lists.
fn nodes(from: &[Server], to: &[Server]) -> Vec<(String, Server)> {
    let mut out: Vec<(String, Server)> = Vec::new();
    for s in from.iter().chain(to) {
        if out.iter().any(|(n, _)| n == s.name()) {
            continue;
        }
        out.push((s.name().to_string(), s.clone()));
        if let Some(shard) = s.shard() {
            for addr in shard.replicas() {
                let replica = s.replica_node(&addr);
                let label = format!("{} (replica of {})", replica.name(), s.name());
                if !out.iter().any(|(_, r)| r.name() == replica.name()) {
                    out.push((label, replica));
                }
            }
        }
    }
    out
}

/// Reads one `CLIENT LIST` reply.
fn parse_list(server: &str, list: &str, from: &str, to: &str) -> Vec<FleetClient> {
    let mut out = Vec::new();
    for line in list.lines() {
        let field = |key: &str| -> &str {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .unwrap_or("")
        };
        let name = field("name");
        let flags = field("flags");
        if name == TOOL_NAME
            || name == SUBSCRIBER_NAME
            || name.starts_with("sentinel-")
            || flags.contains('S')
            || flags.contains('M')
        {
            continue;
        }
        let kind = match parse_name(name) {
            None => ClientKind::Unknown,
            Some(p) => match (p.fingerprint.as_str(), p.from.as_deref()) {
                (fp, Some(old)) if fp == to && old == from => ClientKind::Ready,
                (fp, None) if fp == to => ClientKind::New,
                (fp, None) if fp == from => ClientKind::Old,
                _ => ClientKind::Other {
                    fingerprint: p.fingerprint,
                    from: p.from,
                },
            },
        };
        out.push(FleetClient {
            server: server.to_string(),
            id: field("id").parse().unwrap_or(0),
            addr: field("addr").to_string(),
            name: name.to_string(),
            user: field("user").to_string(),
            lib: field("lib-name").to_string(),
            age_secs: field("age").parse().unwrap_or(0),
            kind,
        });
    }
    out
}

/// Takes the census over the servers of both configurations.
/// `own`: the connections (server name, id) of the clients the rebalance
/// was given, which are not counted.
pub(super) fn take(
    from: (&[Server], &str),
    to: (&[Server], &str),
    own: &[(String, u64)],
    client_users: &[String],
    io_timeout: Duration,
) -> RedisResult<Census> {
    let mut census = Census {
        from: from.1.to_string(),
        to: to.1.to_string(),
        clients: Vec::new(),
    };
    // One server under several names (two databases, `localhost` and
    // `127.0.0.1`) lists the same clients: asked once, by `run_id`.
    let mut asked: Vec<(String, Option<String>)> = Vec::new();
    let mut lists = Vec::new();
    let mut checked = Vec::new();
    for (label, server) in nodes(from.0, to.0) {
        let mut con = connect(&server, io_timeout)?;
        let info: String = redis::cmd("INFO").arg("server").query(&mut con).unwrap_or_default();
        let run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_string());
        let seen = run_id.is_some() && asked.iter().any(|(_, r)| *r == run_id);
        asked.push((server.name().to_string(), run_id.clone()));
        if seen {
            continue;
        }
        lists.push((label, server, con, run_id));
    }
    // The tool's own connections, by server process.
    let process_of = |name: &str| asked.iter().find(|(n, _)| n == name).and_then(|(_, r)| r.clone());
    for (label, server, mut con, run_id) in lists {
        let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut con).map_err(|e| {
            error(format!(
                "the census cannot read CLIENT LIST on {label}: {} (the rebalance tool's user needs \
                 +client|list; RebalanceOptions::census = None / --skip-census runs without it)",
                e.detail().map(str::to_string).unwrap_or_else(|| e.to_string())
            ))
        })?;
        let here = |name: &str| match &run_id {
            Some(r) => process_of(name).as_ref() == Some(r),
            None => name == server.name(),
        };
        let mine = |c: &FleetClient| own.iter().any(|(name, id)| *id == c.id && here(name));
        let found: Vec<FleetClient> = parse_list(&label, &list, from.1, to.1)
            .into_iter()
            .filter(|c| !mine(c))
            .collect();
        checked.push((census.clients.len(), found.len(), con));
        census.clients.extend(found);
    }
    // Unnamed connections of users mredis clients use: possibly mredis
    // clients whose ACL refuses them a name.
    let mut users: Vec<String> = client_users.to_vec();
    for s in from.0.iter().chain(to.0) {
        if let Some(u) = s.connection_info().redis_settings().username() {
            users.push(u.to_string());
        }
    }
    users.extend(
        census
            .clients
            .iter()
            .filter(|c| c.kind != ClientKind::Unknown)
            .map(|c| c.user.clone()),
    );
    for (start, len, mut con) in checked {
        let mut verdicts: Vec<(String, bool)> = Vec::new();
        for c in &mut census.clients[start..start + len] {
            if c.kind != ClientKind::Unknown || !c.name.is_empty() || !users.contains(&c.user) {
                continue;
            }
            let refused = match verdicts.iter().find(|(u, _)| *u == c.user) {
                Some((_, r)) => *r,
                None => {
                    let r = may_not_name(&mut con, &c.user);
                    verdicts.push((c.user.clone(), r));
                    r
                }
            };
            if refused {
                c.kind = ClientKind::Unnamed;
            }
        }
    }
    Ok(census)
}

/// Whether `user`'s ACL refuses `CLIENT SETNAME` (`ACL DRYRUN`, Redis 7.0
/// or later, Valkey). Unknown (an older server, a tool's user without
/// `+acl|dryrun`): `false`, the connection stays [`ClientKind::Unknown`].
fn may_not_name(con: &mut redis::Connection, user: &str) -> bool {
    let reply: RedisResult<redis::Value> = redis::cmd("ACL")
        .arg("DRYRUN")
        .arg(user)
        .arg("CLIENT")
        .arg("SETNAME")
        .arg("mredis")
        .query(con);
    // OK: it may; a text saying why not: it may not.
    matches!(reply, Ok(redis::Value::BulkString(_)))
}

/// The error of a move refused by the census.
pub(super) fn refused(stage: Stage, clients: &[&FleetClient]) -> redis::RedisError {
    let what = match stage {
        Stage::BeforeMove => "nothing was moved",
        Stage::BeforeVerify => "the keys were moved, but these clients may have written the old servers meanwhile",
    };
    redis::RedisError::from((
        redis::ErrorKind::Client,
        REFUSED,
        format!(
            "{} client connection(s) are not migration-aware for this move ({what}); reconfigure or stop them, \
             then run again:{}",
            clients.len(),
            Census::describe(clients)
        ),
    ))
}

/// The category of the error a census refusal gives.
pub const REFUSED: &str = "clients not ready";

/// Whether `e` is a refusal by the census (the CLI exits 3 on it).
pub fn is_refusal(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Client && e.to_string().starts_with(REFUSED)
}

/// Takes the census until nobody is in the way, or `options.wait` is
/// over; the last census and the clients still in the way.
pub(super) fn until_clear(
    from: (&[Server], &str),
    to: (&[Server], &str),
    stage: Stage,
    options: &CensusOptions,
    own: &dyn Fn() -> Vec<(String, u64)>,
    io_timeout: Duration,
) -> RedisResult<Census> {
    let deadline = options.wait.map(|w| Instant::now() + w);
    loop {
        let census = take(from, to, &own(), &options.client_users, io_timeout)?;
        let blocking = census.in_the_way(stage, options);
        if blocking.is_empty() {
            return Ok(census);
        }
        match deadline {
            Some(d) if Instant::now() < d => std::thread::sleep(Duration::from_secs(1).min(d - Instant::now())),
            _ => return Err(refused(stage, &blocking)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_list_lines_are_classified() {
        let (old, new) = ("aaaaaaaaaaaa", "bbbbbbbbbbbb");
        let list = "id=3 addr=127.0.0.1:5001 laddr=x fd=8 name=mredis:bbbbbbbbbbbb:from:aaaaaaaaaaaa age=4 idle=0 flags=N db=0 user=default lib-name=redis-rs\n\
                    id=4 addr=127.0.0.1:5002 laddr=x fd=9 name=mredis:aaaaaaaaaaaa:billing age=1 idle=0 flags=N db=0 user=app lib-name=\n\
                    id=5 addr=127.0.0.1:5003 laddr=x fd=10 name= age=1 idle=0 flags=N db=0 user=default lib-name=\n\
                    id=6 addr=127.0.0.1:5004 laddr=x fd=11 name=mredis:tool age=1 idle=0 flags=N db=0 user=default\n\
                    id=7 addr=127.0.0.1:5005 laddr=x fd=12 name= age=1 idle=0 flags=S db=0 user=default\n\
                    id=8 addr=127.0.0.1:5006 laddr=x fd=13 name=mredis:bbbbbbbbbbbb age=1 idle=0 flags=N db=0 user=default\n\
                    id=9 addr=127.0.0.1:5007 laddr=x fd=14 name=mredis:cccccccccccc age=1 idle=0 flags=N db=0 user=default\n\
                    id=10 addr=127.0.0.1:5008 laddr=x fd=15 name=sentinel-1a2b3c4d-cmd age=1 idle=0 flags=N db=0 user=default\n\
                    id=11 addr=127.0.0.1:5009 laddr=x fd=16 name=mredis:subscriber age=1 idle=0 flags=P db=0 user=default\n";
        let clients = parse_list("s1", list, old, new);
        let kinds: Vec<(u64, &ClientKind)> = clients.iter().map(|c| (c.id, &c.kind)).collect();
        assert_eq!(kinds.len(), 5, "{kinds:?}");
        assert_eq!(kinds[0], (3, &ClientKind::Ready));
        assert_eq!(kinds[1], (4, &ClientKind::Old));
        assert_eq!(kinds[2], (5, &ClientKind::Unknown));
        assert_eq!(kinds[3], (8, &ClientKind::New));
        assert!(matches!(kinds[4], (9, ClientKind::Other { .. })));
        let census = Census {
            from: old.into(),
            to: new.into(),
            clients,
        };
        let lenient = CensusOptions::default();
        let ids = |v: Vec<&FleetClient>| v.iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids(census.in_the_way(Stage::BeforeMove, &lenient)), [4, 8, 9]);
        assert_eq!(ids(census.in_the_way(Stage::BeforeVerify, &lenient)), [4, 9]);
        let strict = CensusOptions {
            refuse_unknown: true,
            ..Default::default()
        };
        assert_eq!(ids(census.in_the_way(Stage::BeforeMove, &strict)), [4, 5, 8, 9]);
        let text = Census::describe(&census.in_the_way(Stage::BeforeMove, &strict));
        assert!(
            text.contains("127.0.0.1:5002 on s1: mredis:aaaaaaaaaaaa:billing (user app"),
            "{text}"
        );
        assert!(is_refusal(&refused(Stage::BeforeMove, &census.unknown())));
    }
}
