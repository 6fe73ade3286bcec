//! Opening connections: the one place mredis opens a connection to a
//! server, whatever it is for (see [`Kind`]).
//!
//! An open is the transport (TCP, TLS) within the connect timeout, then
//! one pipelined setup whose replies are all read before the same
//! deadline: `AUTH`, `SELECT`, `CLIENT SETINFO`, `CLIENT SETNAME` (see
//! [`name_of`] for each kind's name) and, on a client's data connections,
//! the checks of [`crate::fence`] (a retired configuration, missing
//! rights). Then the socket gets the timeouts of the connection's work.
//! (For RESP3, redis-rs's own `HELLO` handshake runs first and the setup
//! sends the rest.)
//!
//! Every open is counted, by kind, in the client's [`Counts`], which
//! [`MRedis::connections_opened`](crate::MRedis::connections_opened)
//! reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Connection, RedisError, RedisResult, Value};

use crate::placement::fingerprint::{SUBSCRIBER_NAME, TOOL_NAME, WATCH_PART};
use crate::server::Server;

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The sync client's pooled connections.
    Pooled,
    /// The async client's shared (multiplexed) connection to a server.
    Shared,
    /// The async client's dedicated connections (blocking commands, writes
    /// that wait for replicas, held transactions).
    Dedicated,
    /// A subscriber's connection.
    Subscriber,
    /// A connection to a sentinel.
    Sentinel,
    /// The health checker's.
    Health,
    /// The latency prober's (`ReadFrom::LowestLatency`).
    Latency,
    /// The finish watcher's (a migration-aware client).
    Finish,
    /// The rebalance tool's.
    Tool,
    /// A client-side cache's tracked connection for cached reads.
    Tracked,
    /// A client-side cache's invalidation listener.
    Invalidation,
}

const KINDS: usize = 11;

impl Kind {
    fn index(self) -> usize {
        self as usize
    }

    /// A client's data connection: checked for a fence when opened.
    fn data(self) -> bool {
        matches!(self, Kind::Pooled | Kind::Shared | Kind::Dedicated | Kind::Tracked)
    }
}

/// The name a connection of `kind` gives itself, for a client named
/// `client` (`None`: naming is off). The census reads these names:
/// a client's data connections, health checks and latency probes carry
/// its configuration; the finish watcher adds `:watch`; subscribers and
/// the rebalance tool have names of their own, which the census skips.
pub(crate) fn name_of(kind: Kind, client: Option<&str>) -> Option<String> {
    match kind {
        Kind::Subscriber => client.map(|_| SUBSCRIBER_NAME.to_string()),
        Kind::Tool => Some(TOOL_NAME.to_string()),
        Kind::Finish => client.map(|n| format!("{n}:{WATCH_PART}")),
        _ => client.map(str::to_string),
    }
}

/// How many connections of each kind a client opened (kept across its
/// reconfigures).
#[derive(Debug, Default)]
pub(crate) struct Counts([AtomicU64; KINDS]);

impl Counts {
    /// One more connection of `kind` opened.
    pub(crate) fn note(&self, kind: Kind) {
        self.0[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub(crate) fn snapshot(&self) -> ConnectionsOpened {
        let n = |k: Kind| self.0[k.index()].load(Ordering::Relaxed);
        ConnectionsOpened {
            pooled: n(Kind::Pooled),
            shared: n(Kind::Shared),
            dedicated: n(Kind::Dedicated),
            subscriber: n(Kind::Subscriber),
            sentinel: n(Kind::Sentinel),
            health: n(Kind::Health),
            latency: n(Kind::Latency),
            finish: n(Kind::Finish),
            cache: n(Kind::Tracked) + n(Kind::Invalidation),
        }
    }
}

/// How many connections a client has opened since it was built, by what
/// they are for ([`MRedis::connections_opened`](crate::MRedis::connections_opened)).
/// A number that keeps growing under steady traffic means connections are
/// being lost and opened again (servers closing idle ones, timeouts,
/// restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionsOpened {
    /// The sync client's pooled connections.
    pub pooled: u64,
    /// The async client's shared connections (one per server at a time).
    pub shared: u64,
    /// The async client's dedicated connections (blocking commands, writes
    /// waiting for replicas, transactions).
    pub dedicated: u64,
    /// Subscribers' connections.
    pub subscriber: u64,
    /// Connections to sentinels.
    pub sentinel: u64,
    /// The health checker's.
    pub health: u64,
    /// The latency prober's.
    pub latency: u64,
    /// The finish watcher's (migration-aware clients).
    pub finish: u64,
    /// The client-side cache's (its invalidation listeners and tracked
    /// read connections).
    pub cache: u64,
}

/// The builder's connect and response timeouts (the response one 5 s when
/// off), for every connection that is not a client's data connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) response: Duration,
}

/// What a client's background work opens its connections with: the
/// client's name, its timeouts and its counts.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    /// The client's connection name (`None`: naming is off).
    pub(crate) name: Option<String>,
    pub(crate) timeouts: Timeouts,
    pub(crate) counts: Arc<Counts>,
}

impl Connector {
    /// A connection of `kind` to `server`, named for its kind, answering
    /// within `response`.
    pub(crate) fn open(&self, server: &Server, kind: Kind, response: Duration) -> RedisResult<Connection> {
        self.open_with(&Clients::of(server)?, kind, response)
    }

    /// The same with `clients` (a sentinel's, a placeholder's).
    pub(crate) fn open_with(&self, clients: &Clients, kind: Kind, response: Duration) -> RedisResult<Connection> {
        self.open_within(clients, kind, self.timeouts.connect, response)
    }

    /// The same, opened within `connect` rather than the client's connect
    /// timeout (a health check's deadline covers its connection too).
    pub(crate) fn open_within(
        &self,
        clients: &Clients,
        kind: Kind,
        connect: Duration,
        response: Duration,
    ) -> RedisResult<Connection> {
        let name = name_of(kind, self.name.as_deref());
        open_with(clients, kind, name.as_deref(), connect, Some(response), &self.counts)
    }
}

/// A server's redis-rs clients: `full` does redis-rs's own setup; `bare`,
/// when there is one (RESP2), opens the transport alone, and the setup is
/// this module's, pipelined under the connect deadline.
#[derive(Clone)]
pub(crate) struct Clients {
    pub(crate) full: redis::Client,
    pub(crate) bare: Option<redis::Client>,
}

impl Clients {
    /// `server`'s, at its current address (a Sentinel shard's primary of
    /// now).
    pub(crate) fn of(server: &Server) -> RedisResult<Clients> {
        Ok(Clients {
            full: server.client()?,
            bare: server.bare_client()?,
        })
    }

    /// A client that does redis-rs's setup only (a sentinel's address).
    pub(crate) fn full(full: redis::Client) -> Clients {
        Clients { full, bare: None }
    }
}

/// Opens a connection of the rebalance tool to `server` (named
/// `mredis:tool`, which the census skips): the setup within 5 s, then
/// `response` on reads and writes. Not a client's: counted nowhere.
pub(crate) fn open_tool(server: &Server, response: Duration) -> RedisResult<Connection> {
    open_with(
        &Clients::of(server)?,
        Kind::Tool,
        name_of(Kind::Tool, None).as_deref(),
        Duration::from_secs(5),
        Some(response),
        &Counts::default(),
    )
}

/// Opens a connection with `clients` (see the module docs): the setup
/// within `connect`, then `response` on reads and writes.
pub(crate) fn open_with(
    clients: &Clients,
    kind: Kind,
    name: Option<&str>,
    connect: Duration,
    response: Option<Duration>,
    counts: &Counts,
) -> RedisResult<Connection> {
    let connect = connect.max(Duration::from_millis(1));
    let deadline = Instant::now() + connect;
    counts.note(kind);
    let (mut con, setup) = match &clients.bare {
        Some(bare) => (
            bare.get_connection_with_timeout(connect)?,
            Setup::of(clients.full.get_connection_info().redis_settings()),
        ),
        None => (clients.full.get_connection_with_timeout(connect)?, Setup::default()),
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    con.set_write_timeout(Some(left))?;
    setup.run(&mut con, deadline, name, kind.data())?;
    con.set_read_timeout(response)?;
    con.set_write_timeout(response)?;
    Ok(con)
}

/// Opens a multiplexed connection with `client` (redis-rs's setup within
/// `config`'s timeouts), then names and checks it in one round trip.
pub(crate) async fn open_multiplexed(
    client: &redis::Client,
    config: &AsyncConnectionConfig,
    kind: Kind,
    name: Option<&str>,
    counts: &Counts,
) -> RedisResult<MultiplexedConnection> {
    counts.note(kind);
    let mut con = client.get_multiplexed_async_connection_with_config(config).await?;
    let mut pipe = redis::pipe();
    if let Some(name) = name {
        pipe.cmd("CLIENT").arg("SETNAME").arg(name);
    }
    let checks = kind.data().then(|| crate::fence::Checks::add(&mut pipe, name));
    if pipe.is_empty() {
        return Ok(con);
    }
    let replies = con.req_packed_commands(&pipe, 0, pipe.len()).await?;
    if let Some(checks) = checks {
        checks.verdict(name, replies.get(checks.first..).unwrap_or_default())?;
    }
    Ok(con)
}

/// The setup commands of a connection whose handshake is the caller's
/// (a subscriber's, which hands its socket to redis-rs afterwards): `AUTH`
/// if `info` has a password, then `CLIENT SETNAME name`. Counted as a
/// connection of `kind`.
pub(crate) fn handshake(info: &redis::RedisConnectionInfo, kind: Kind, name: &str, counts: &Counts) -> redis::Pipeline {
    counts.note(kind);
    let mut pipe = redis::pipe();
    if let Some(password) = info.password() {
        let auth = pipe.cmd("AUTH");
        if let Some(user) = info.username() {
            auth.arg(user);
        }
        auth.arg(password);
    }
    pipe.cmd("CLIENT").arg("SETNAME").arg(name);
    pipe
}

/// The TCP transport of a connection whose handshake the caller runs over
/// it (a subscriber's, which wraps the socket in its flow gate): no
/// Nagle delay, as redis-rs sets.
pub(crate) async fn tcp(host: &str, port: u16) -> RedisResult<tokio::net::TcpStream> {
    // tokio's `net` is on through redis-rs's `tokio-comp`.
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The Unix socket transport of such a connection.
#[cfg(unix)]
pub(crate) async fn unix(path: &std::path::Path) -> RedisResult<tokio::net::UnixStream> {
    Ok(tokio::net::UnixStream::connect(path).await?)
}

/// A subscriber connection opened by redis-rs (addresses whose transport
/// the caller does not open itself: TLS), counted as `kind`.
pub(crate) async fn redis_rs_pubsub(
    client: &redis::Client,
    kind: Kind,
    counts: &Counts,
) -> RedisResult<redis::aio::PubSub> {
    counts.note(kind);
    client.get_async_pubsub().await
}

/// What a new connection sends before its first command: AUTH, SELECT and
/// CLIENT SETINFO (as library `mredis` unless the URL names one), and its
/// name, as redis-rs would. No `Debug`: it holds the password.
#[derive(Default)]
struct Setup {
    username: Option<String>,
    password: Option<String>,
    db: i64,
    lib: Option<(String, String)>,
}

impl Setup {
    fn of(info: &redis::RedisConnectionInfo) -> Setup {
        Setup {
            username: info.username().map(str::to_string),
            password: info.password().map(str::to_string),
            db: info.db(),
            lib: (!info.skip_set_lib_name()).then(|| {
                (
                    info.lib_name().unwrap_or("mredis").to_string(),
                    info.lib_ver().unwrap_or(env!("CARGO_PKG_VERSION")).to_string(),
                )
            }),
        }
    }

    /// The setup commands, with or without the username in AUTH (servers
    /// before Redis 6 know only `AUTH password`), ending with the
    /// connection's name (`CLIENT SETNAME`) if it has one; the indexes of
    /// AUTH and SELECT if sent.
    fn pipeline(&self, with_username: bool, name: Option<&str>) -> (redis::Pipeline, Option<usize>, Option<usize>) {
        let mut pipe = redis::pipe();
        let mut auth = None;
        let mut select = None;
        if let Some(password) = &self.password {
            let c = pipe.cmd("AUTH");
            if let (true, Some(user)) = (with_username, &self.username) {
                c.arg(user);
            }
            c.arg(password);
            auth = Some(0);
        }
        if self.db != 0 {
            select = Some(pipe.len());
            pipe.cmd("SELECT").arg(self.db);
        }
        if let Some((name, ver)) = &self.lib {
            pipe.cmd("CLIENT").arg("SETINFO").arg("LIB-NAME").arg(name);
            pipe.cmd("CLIENT").arg("SETINFO").arg("LIB-VER").arg(ver);
        }
        if let Some(name) = name {
            pipe.cmd("CLIENT").arg("SETNAME").arg(name);
        }
        (pipe, auth, select)
    }

    /// Runs the setup on `con`, every reply read before `deadline` (redis-rs
    /// waits its timeout once per setup command); with `checks`, those of
    /// [`crate::fence`] last, in the same round trip.
    fn run(&self, con: &mut Connection, deadline: Instant, name: Option<&str>, checks: bool) -> RedisResult<()> {
        for with_username in [true, false] {
            let (mut pipe, auth, select) = self.pipeline(with_username, name);
            let checks = if checks {
                crate::fence::Checks::add(&mut pipe, name)
            } else {
                crate::fence::Checks::none(&pipe)
            };
            let mut checked = Vec::new();
            if pipe.is_empty() {
                return Ok(());
            }
            con.send_packed_command(&pipe.get_packed_pipeline())?;
            let mut retry = false;
            for i in 0..pipe.len() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
                }
                con.set_read_timeout(Some(left))?;
                let err = match con.recv_response()? {
                    reply if i >= checks.first => {
                        checked.push(reply);
                        continue;
                    }
                    Value::ServerError(e) => RedisError::from(e),
                    _ => continue,
                };
                if Some(i) == auth {
                    let old_server = err
                        .detail()
                        .is_some_and(|d| d.contains("wrong number of arguments for 'auth' command"));
                    if with_username && self.username.is_some() && old_server {
                        retry = true;
                        continue;
                    }
                    return Err(RedisError::from((
                        redis::ErrorKind::AuthenticationFailed,
                        "Password authentication failed",
                    )));
                }
                if retry {
                    continue; // refused for want of AUTH: sent again below
                }
                // CLIENT SETINFO's errors are ignored (older servers), as
                // redis-rs does, and so are SETNAME's (an ACL without
                // CLIENT); SELECT's is the server's reply.
                if Some(i) == select {
                    return Err(err);
                }
            }
            if !retry {
                return checks.verdict(name, &checked);
            }
        }
        Ok(())
    }
}
