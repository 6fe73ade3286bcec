//! Configuration: the server list (URLs or seed-style `(host, port, db)`
//! entries), its validation, server names, and the options a [`Builder`]
//! carries. Passwords are kept only inside the `redis::ConnectionInfo` and
//! never printed: every Debug/Display here redacts them.

use std::fmt;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError, RedisResult};

use crate::placement::Mode;

/// One Redis server of the fleet.
///
/// Its name is `host:port:db`, as in the original MRedis (`127.0.0.1:6379:0`);
/// per-server results ([`PerServer`](crate::PerServer)) and errors use it.
#[derive(Clone)]
pub struct Server {
    name: String,
    host: String,
    port: u16,
    db: i64,
    tls: bool,
    weight: u32,
    alias: Option<String>,
    info: ConnectionInfo,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls_root_cert: Option<std::sync::Arc<Vec<u8>>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .field("tls", &self.tls)
            .field("weight", &self.weight)
            .field("alias", &self.alias)
            .field("username", &self.info.redis_settings().username())
            .field("password", &self.info.redis_settings().password().map(|_| "<redacted>"))
            .finish()
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Server {
    /// Parses a `redis://[user:pass@]host:port[/db]` or `rediss://` URL.
    pub fn from_url(url: &str) -> RedisResult<Server> {
        let info = url.into_connection_info().map_err(|e| {
            config_error(format!(
                "invalid server URL `{}`: {}",
                redact_url(url),
                scrub(&e.to_string(), url)
            ))
        })?;
        Server::from_info(info, &redact_url(url))
    }

    /// A server given as in the original MRedis: `host`, `port`, `db`.
    pub fn from_parts(host: &str, port: u16, db: i64) -> RedisResult<Server> {
        if host.is_empty() {
            return Err(config_error("server with an empty host".to_string()));
        }
        if port == 0 {
            return Err(config_error(format!("server `{host}`: port 0 is not a valid port")));
        }
        if db < 0 {
            return Err(config_error(format!(
                "server `{host}:{port}`: database {db} is negative"
            )));
        }
        let host_part = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        Server::from_url(&format!("redis://{host_part}:{port}/{db}"))
    }

    fn from_info(info: ConnectionInfo, shown: &str) -> RedisResult<Server> {
        let (host, port, tls) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host.clone(), *port, false),
            ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port, true),
            ConnectionAddr::Unix(path) => (path.display().to_string(), 0, false),
            #[allow(unreachable_patterns)]
            _ => return Err(config_error(format!("server `{shown}`: unsupported address type"))),
        };
        if host.is_empty() {
            return Err(config_error(format!("server `{shown}`: empty host")));
        }
        let db = info.redis_settings().db();
        if db < 0 {
            return Err(config_error(format!("server `{shown}`: database {db} is negative")));
        }
        let name = format!("{host}:{port}:{db}");
        Ok(Server {
            name,
            host,
            port,
            db,
            tls,
            weight: 1,
            alias: None,
            info,
            tls_root_cert: None,
        })
    }

    /// The server's name, `host:port:db`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host as configured.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Database number.
    pub fn db(&self) -> i64 {
        self.db
    }

    /// Whether the connection uses TLS (`rediss://`).
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// Placement weight (1 unless set; used by the weighted placement modes).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Sets the placement weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The explicit placement name (twemproxy `name`, go-redis shard name),
    /// if one was given.
    pub fn alias(&self) -> Option<&str> {
        self.alias.as_deref()
    }

    /// Sets an explicit placement name, so placement survives an address change.
    pub fn with_alias(mut self, alias: impl Into<String>) -> Self {
        self.alias = Some(alias.into());
        self
    }

    /// Trusts this PEM root certificate (instead of the system's) for a
    /// `rediss://` server, e.g. a private CA.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn with_tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(std::sync::Arc::new(pem.into()));
        self
    }

    pub(crate) fn connection_info(&self) -> ConnectionInfo {
        self.info.clone()
    }

    /// A redis-rs client for this server, with its TLS roots if any.
    pub(crate) fn client(&self) -> RedisResult<redis::Client> {
        #[cfg(feature = "tls")]
        if let Some(root) = &self.tls_root_cert {
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root.as_ref().clone()),
            };
            return redis::Client::build_with_tls(self.info.clone(), certs);
        }
        redis::Client::open(self.info.clone())
    }
}

/// Anything that names a server: a URL (`&str`, `String`), a seed-style
/// `(host, port, db)` tuple, or a [`Server`].
pub trait IntoServer {
    /// Converts into a [`Server`], with a clear error for malformed input.
    fn into_server(self) -> RedisResult<Server>;
}

impl IntoServer for Server {
    fn into_server(self) -> RedisResult<Server> {
        Ok(self)
    }
}

impl IntoServer for &str {
    fn into_server(self) -> RedisResult<Server> {
        Server::from_url(self)
    }
}

impl IntoServer for String {
    fn into_server(self) -> RedisResult<Server> {
        Server::from_url(&self)
    }
}

impl IntoServer for &String {
    fn into_server(self) -> RedisResult<Server> {
        Server::from_url(self)
    }
}

impl<H: AsRef<str>> IntoServer for (H, u16, i64) {
    fn into_server(self) -> RedisResult<Server> {
        Server::from_parts(self.0.as_ref(), self.1, self.2)
    }
}

impl<H: AsRef<str>> IntoServer for (H, u16) {
    fn into_server(self) -> RedisResult<Server> {
        Server::from_parts(self.0.as_ref(), self.1, 0)
    }
}

/// Validates a whole server list: not empty, no duplicates.
pub(crate) fn collect_servers<I>(servers: I) -> RedisResult<Vec<Server>>
where
    I: IntoIterator,
    I::Item: IntoServer,
{
    let mut out: Vec<Server> = Vec::new();
    for (i, entry) in servers.into_iter().enumerate() {
        let server = entry.into_server().map_err(|e| {
            config_error(format!(
                "server entry {}: {}",
                i + 1,
                e.detail().unwrap_or(&e.to_string())
            ))
        })?;
        if let Some(j) = out.iter().position(|s| s.name == server.name) {
            return Err(config_error(format!(
                "duplicate server {} (entries {} and {}); each server may appear once",
                server.name,
                j + 1,
                i + 1
            )));
        }
        if let Some(alias) = &server.alias
            && out.iter().any(|s| s.alias.as_deref() == Some(alias))
        {
            return Err(config_error(format!(
                "duplicate server name `{alias}` (entry {})",
                i + 1
            )));
        }
        out.push(server);
    }
    if out.is_empty() {
        return Err(config_error(
            "the server list is empty; give at least one server".to_string(),
        ));
    }
    Ok(out)
}

pub(crate) fn config_error(detail: String) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, "mredis: invalid configuration", detail))
}

/// Replaces the password of a URL with `****` so it can be shown.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let user = match userinfo.find(':') {
        Some(colon) => format!("{}:****", &userinfo[..colon]),
        None => "****".to_string(),
    };
    format!("{}://{}@{}", &url[..scheme_end], user, &rest[at + 1..])
}

/// Removes any password of `url` that an underlying error message may echo.
fn scrub(message: &str, url: &str) -> String {
    let redacted = redact_url(url);
    if redacted == url {
        return message.to_string();
    }
    let mut out = message.replace(url, &redacted);
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        if let Some(at) = rest.find('@') {
            let userinfo = &rest[..at];
            let secret = userinfo.split_once(':').map(|(_, p)| p).unwrap_or(userinfo);
            if !secret.is_empty() {
                out = out.replace(secret, "****");
            }
        }
    }
    out
}

/// Options shared by the sync and async clients.
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Option<Duration>,
    pub(crate) pool_size: u32,
    pub(crate) hash_tags: Option<bool>,
    pub(crate) mode: Mode,
    pub(crate) retries: usize,
    pub(crate) migrating_from: Option<std::sync::Arc<OldConfig>>,
    pub(crate) max_arg_size: usize,
}

/// The configuration a client is moving away from (see
/// [`Builder::migrating_from`]).
#[derive(Debug, Clone)]
pub(crate) struct OldConfig {
    pub(crate) servers: Vec<Server>,
    pub(crate) options: Options,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Some(Duration::from_secs(5)),
            pool_size: 16,
            hash_tags: None,
            mode: Mode::Standard,
            retries: 1,
            migrating_from: None,
            max_arg_size: 512 * 1024 * 1024,
        }
    }
}

/// Builds an [`MRedis`](crate::MRedis) or [`aio::MRedis`](crate::aio::MRedis)
/// with options.
///
/// ```no_run
/// # fn main() -> redis::RedisResult<()> {
/// use std::time::Duration;
/// let mr = mredis::MRedis::builder()
///     .servers(["redis://10.0.0.1:6379/0", "redis://10.0.0.2:6379/0"])
///     .connect_timeout(Duration::from_millis(500))
///     .hash_tags(true)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Builder {
    servers: Vec<Server>,
    error: Option<RedisError>,
    options: Options,
}

impl Builder {
    /// A builder with default options and no servers.
    pub fn new() -> Self {
        Builder::default()
    }

    /// Sets the server list (replacing any earlier one).
    pub fn servers<I>(mut self, servers: I) -> Self
    where
        I: IntoIterator,
        I::Item: IntoServer,
    {
        match collect_servers(servers) {
            Ok(list) => self.servers = list,
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// How long to wait for a TCP connection (default 2 s). A server that is
    /// down or blackholed fails its commands after this, naming the server.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// How long to wait for a reply (default 5 s; `None` waits forever).
    pub fn response_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.options.response_timeout = timeout;
        self
    }

    /// Connections kept per server by the sync client (default 16).
    pub fn pool_size(mut self, size: u32) -> Self {
        self.options.pool_size = size.max(1);
        self
    }

    /// Hash tags: when on, only the part of a key inside the first non-empty
    /// `{...}` is hashed (the Redis Cluster rule), so `{user:42}:cart` and
    /// `{user:42}:orders` share a server. Off by default in `standard`
    /// placement, because the original MRedis hashed whole keys and data it
    /// placed must still be found; on by default in `rendezvous` (as go-redis).
    pub fn hash_tags(mut self, on: bool) -> Self {
        self.options.hash_tags = Some(on);
        self
    }

    /// The placement mode (default [`Mode::Standard`], the original MRedis).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.options.mode = mode;
        self
    }

    /// The largest argument (key or value) mredis sends, in bytes (default
    /// 512 MiB, the server's default `proto-max-bulk-len`). A larger one is
    /// an error before anything is sent; a server would close the
    /// connection instead. Set it to the servers' `proto-max-bulk-len` if
    /// you changed that.
    pub fn max_arg_size(mut self, bytes: usize) -> Self {
        self.options.max_arg_size = bytes;
        self
    }

    /// Reconnect attempts of the async client per failed connection (default 1).
    pub fn reconnect_retries(mut self, retries: usize) -> Self {
        self.options.retries = retries;
        self
    }

    /// Makes this a migration-aware configuration: the fleet is moving from
    /// `old` (its servers and placement; its timeouts are ignored) to this
    /// one. Keys whose owner is the same in both are routed as usual. A
    /// command on a key whose owner changes first MIGRATEs the key from its
    /// old server to its new one (atomically, by the server; a key that is
    /// not there any more is fine), then runs on the new server, so a key
    /// is never served from two places and keys created during the move are
    /// created on their new server. Fan-out commands reach the servers of
    /// both configurations. Deploy this to every client, run
    /// `mredis rebalance --from OLD --to NEW`, then deploy the plain new
    /// configuration (see the crate docs, "Adding or removing servers").
    ///
    /// The old servers must be able to reach the new ones at the addresses
    /// given here (MIGRATE connects from server to server).
    pub fn migrating_from(mut self, old: Builder) -> Self {
        match old.into_parts() {
            Ok((servers, options)) => {
                self.options.migrating_from = Some(std::sync::Arc::new(OldConfig { servers, options }));
            }
            Err(e) => {
                self.error = Some(RedisError::from((
                    e.kind(),
                    "mredis: invalid configuration",
                    format!("the configuration migrated from: {}", e.detail().unwrap_or("invalid")),
                )))
            }
        }
        self
    }

    /// The servers and options, validated.
    pub(crate) fn into_parts(self) -> RedisResult<(Vec<Server>, Options)> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.servers.is_empty() {
            return Err(config_error(
                "the server list is empty; give at least one server".to_string(),
            ));
        }
        Ok((self.servers, self.options))
    }

    /// Builds the sync client. Connections are made lazily, so a server that
    /// is down does not stop the others from being used.
    pub fn build(self) -> RedisResult<crate::MRedis> {
        let (servers, options) = self.into_parts()?;
        crate::MRedis::from_parts(servers, options)
    }

    /// Builds the async client (needs a running tokio runtime).
    pub async fn build_async(self) -> RedisResult<crate::aio::MRedis> {
        let (servers, options) = self.into_parts()?;
        crate::aio::MRedis::from_parts(servers, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_host_port_db() {
        let s = Server::from_url("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!(s.name(), "127.0.0.1:6380:2");
        let s = ("localhost", 6379, 0).into_server().unwrap();
        assert_eq!(s.name(), "localhost:6379:0");
    }

    #[test]
    fn bad_lists_are_clear_errors() {
        let empty: Vec<&str> = vec![];
        let e = collect_servers(empty).unwrap_err();
        assert!(e.to_string().contains("server list is empty"), "{e}");
        let e = collect_servers(["redis://a:1/0", "redis://b:1/0", "redis://a:1/0"]).unwrap_err();
        assert!(
            e.to_string().contains("duplicate server a:1:0 (entries 1 and 3)"),
            "{e}"
        );
        let e = collect_servers(["redis://a:notaport/0"]).unwrap_err();
        assert!(e.to_string().contains("server entry 1"), "{e}");
        let e = collect_servers([("", 1u16, 0i64)]).unwrap_err();
        assert!(e.to_string().contains("empty host"), "{e}");
        let e = collect_servers([("h", 0u16, 0i64)]).unwrap_err();
        assert!(e.to_string().contains("port 0"), "{e}");
    }

    #[test]
    fn passwords_never_show() {
        let s = Server::from_url("redis://user:hunter2secret@127.0.0.1:6379/0").unwrap();
        assert!(!format!("{s:?}").contains("hunter2secret"));
        assert!(!format!("{s}").contains("hunter2secret"));
        let e = collect_servers(["redis://user:hunter2secret@127.0.0.1:notaport/0"]).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("hunter2secret"), "{e:?}");
        assert_eq!(redact_url("redis://u:p@h:1/0"), "redis://u:****@h:1/0");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn parsing_any_text_never_panics(s in ".{0,80}") {
            let _ = Server::from_url(&s);
            let _ = redact_url(&s);
        }

        #[test]
        fn any_password_is_redacted(user in "[a-z]{1,8}", pass in "[A-Za-z0-9]{6,20}", port in 1u16..) {
            let url = format!("redis://{user}:{pass}@127.0.0.1:{port}/0");
            prop_assert!(!redact_url(&url).contains(&pass));
            if let Ok(s) = Server::from_url(&url) {
                let shown = format!("{s:?}");
                prop_assert!(!shown.contains(&pass));
            }
            let bad = format!("redis://{user}:{pass}@127.0.0.1:{port}x/0");
            if let Err(e) = Server::from_url(&bad) {
                let shown = format!("{e} {e:?}");
                prop_assert!(!shown.contains(&pass));
            }
        }

        #[test]
        fn tuples_with_any_host_never_panic(host in ".{0,40}", port in any::<u16>(), db in any::<i64>()) {
            let _ = (host.as_str(), port, db).into_server();
        }
    }
}
