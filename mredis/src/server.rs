//! Servers: the server list (URLs or seed-style `(host, port, db)`
//! entries), its validation, server names, and redaction. Passwords are kept
//! only inside the `redis::ConnectionInfo` and never printed: every
//! Debug/Display here redacts them.

use std::fmt;

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError, RedisResult};

use crate::shard::{Failover, Latency, Shard, Source, show_addr};

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
    /// A primary with replicas, or a Sentinel-managed shard.
    shard: Option<std::sync::Arc<Shard>>,
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
            .field("shard", &self.shard.as_ref().map(|s| s.describe()))
            .finish()
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Server {
    /// Parses a `redis://[[user]:password@]host[:port][/db][?protocol=3]` URL
    /// (`rediss://` for TLS, `valkey://`/`valkeys://` as synonyms), or a Unix
    /// socket URL `redis+unix:///path/redis.sock?db=N&user=U&pass=P`.
    ///
    /// The port defaults to 6379 and the database to 0.
    ///
    /// **Passwords.** The password is everything between the first `:` after
    /// the user name and the last `@` before the host, so a raw `@` in it
    /// works. A raw `/`, `?` or `#` in a password cannot be told apart from
    /// the path, query or fragment, so such a URL is rejected with an error
    /// that says to percent-encode them (`/` as `%2F`, `?` as `%3F`, `#` as
    /// `%23`; `%` itself as `%25`). No error, Debug or Display ever shows
    /// the password.
    ///
    /// **Query parameters.** Only the ones redis-rs 1.8 acts on are accepted:
    /// `protocol` (`2`/`resp2` or `3`/`resp3`) in `redis://` URLs, and `db`,
    /// `user`, `pass` and `protocol` in Unix socket URLs. Any other one
    /// (for example `?db=3` on a TCP URL, where the database is the path)
    /// is an error naming it, instead of being silently ignored. The only
    /// fragment is `#insecure` on `rediss://` URLs (no certificate
    /// verification; needs the `tls-insecure` feature).
    ///
    /// A URL without a scheme (`host:6379`, `user:pw@host:6379`), an
    /// unsupported scheme, a port out of range (1-65535), a missing host
    /// or a database that is not a number each get their own message.
    pub fn from_url(url: &str) -> RedisResult<Server> {
        let shown = redact_url(url);
        check_url(url).map_err(|why| config_error(format!("invalid server URL `{shown}`: {}", scrub(&why, url))))?;
        let info = url
            .into_connection_info()
            .map_err(|e| config_error(format!("invalid server URL `{shown}`: {}", scrub(&e.to_string(), url))))?;
        Server::from_info(info, &shown)
    }

    /// A server given as in the original MRedis: `host`, `port`, `db`.
    pub fn from_parts(host: &str, port: u16, db: i64) -> RedisResult<Server> {
        if host.is_empty() {
            return Err(config_error("server with an empty host".to_string()));
        }
        if let Some(c) = host
            .chars()
            .find(|c| "@/?#%".contains(*c) || c.is_whitespace() || c.is_control())
        {
            // The host is put into a URL: these would make part of it a user
            // name, password, path, query or fragment. Never shown whole:
            // whatever precedes an `@` may be a password.
            return Err(config_error(format!(
                "server `{}`: a host name cannot contain {:?}; give a user or password in a URL \
                 (redis://user:password@host:port/db), not in the host",
                redact_url(host),
                c
            )));
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
            shard: None,
        })
    }

    /// A shard managed by Sentinel: `master` is the name the sentinels
    /// monitor it by (`sentinel monitor <master> ...`), `sentinels` their
    /// URLs (`redis://[[user]:password@]host:port`, the sentinels' own
    /// credentials; `rediss://` for TLS). The shard is placed by its master
    /// name (its [`name`](Self::name) and [`alias`](Self::alias)), never by
    /// its current address, so a failover moves no key.
    ///
    /// The data servers' credentials and database are set on the result:
    /// [`with_password`](Self::with_password),
    /// [`with_username`](Self::with_username), [`with_db`](Self::with_db).
    /// The primary is asked of the sentinels when the client is built (and
    /// again on every failover; see the crate docs, "Replicas and
    /// Sentinel"); nothing is asked here. Its [`host`](Self::host) is the
    /// master name and its [`port`](Self::port) 0; the address it is
    /// reached at now is [`primary_address`](Self::primary_address).
    pub fn sentinel<I>(master: &str, sentinels: I) -> RedisResult<Server>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        if master.is_empty() || master.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(config_error(format!(
                "Sentinel master name `{}`: give the name the sentinels monitor, without spaces",
                show_piece(master)
            )));
        }
        let mut infos = Vec::new();
        for (i, url) in sentinels.into_iter().enumerate() {
            let url = url.as_ref();
            let sentinel = Server::from_url(url).map_err(|e| {
                config_error(format!(
                    "shard `{master}`, sentinel {}: {}",
                    i + 1,
                    e.detail().unwrap_or("invalid")
                ))
            })?;
            if sentinel.db != 0 {
                return Err(config_error(format!(
                    "shard `{master}`, sentinel {}: a sentinel has no database; give the data database with \
                     Server::with_db",
                    i + 1
                )));
            }
            infos.push(sentinel.info);
        }
        if infos.is_empty() {
            return Err(config_error(format!(
                "shard `{master}`: no sentinel given; list at least one sentinel URL"
            )));
        }
        let placeholder = ConnectionAddr::Tcp(master.to_string(), 0).into_connection_info()?;
        Ok(Server {
            name: master.to_string(),
            host: master.to_string(),
            port: 0,
            db: 0,
            tls: false,
            weight: 1,
            alias: Some(master.to_string()),
            info: placeholder,
            tls_root_cert: None,
            shard: Some(std::sync::Arc::new(Shard::new(
                Source::Sentinel {
                    master: master.to_string(),
                    sentinels: infos,
                },
                None,
                Vec::new(),
            ))),
        })
    }

    /// This server as a shard's primary with fixed replicas (URLs; only
    /// their addresses are used: the credentials and database are the
    /// primary's). Read-only commands may then be sent to the replicas
    /// ([`Builder::read_from`](crate::Builder::read_from)); everything else
    /// goes to this server. A static primary is not failed over: use
    /// [`Server::sentinel`] for that.
    pub fn with_replicas<I>(mut self, replicas: I) -> RedisResult<Server>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        if self.shard.as_ref().is_some_and(|s| s.master().is_some()) {
            return Err(config_error(format!(
                "shard `{}`: a Sentinel shard's replicas are the ones Sentinel reports",
                self.name
            )));
        }
        let mut addrs = Vec::new();
        for (i, url) in replicas.into_iter().enumerate() {
            let replica = Server::from_url(url.as_ref()).map_err(|e| {
                config_error(format!(
                    "server {}, replica {}: {}",
                    self.name,
                    i + 1,
                    e.detail().unwrap_or("invalid")
                ))
            })?;
            if replica.name == self.name || addrs.contains(replica.info.addr()) {
                return Err(config_error(format!(
                    "server {}: replica {} is listed twice (or is the primary)",
                    self.name, replica.name
                )));
            }
            addrs.push(replica.info.addr().clone());
        }
        self.shard = Some(std::sync::Arc::new(Shard::new(
            Source::Static,
            Some(self.info.addr().clone()),
            addrs,
        )));
        Ok(self)
    }

    /// Sets the user name sent with `AUTH` on every new connection.
    pub fn with_username(mut self, username: impl AsRef<str>) -> Self {
        let settings = self.info.redis_settings().clone().set_username(username);
        self.info = self.info.set_redis_settings(settings);
        self
    }

    /// Sets the database (`SELECT`) of every new connection; for a Sentinel
    /// shard, the data servers' database.
    pub fn with_db(mut self, db: i64) -> RedisResult<Self> {
        if db < 0 {
            return Err(config_error(format!(
                "server `{}`: database {db} is negative",
                self.name
            )));
        }
        let settings = self.info.redis_settings().clone().set_db(db);
        self.info = self.info.set_redis_settings(settings);
        self.db = db;
        if self.shard.as_ref().is_none_or(|s| s.master().is_none()) {
            self.name = format!("{}:{}:{db}", self.host, self.port);
        }
        Ok(self)
    }

    /// The shard's current primary (`host:port`): the server's own address,
    /// or, for a Sentinel shard, the one the sentinels last named (`None`
    /// before any did).
    pub fn primary_address(&self) -> Option<String> {
        match &self.shard {
            Some(shard) => shard.primary().as_ref().map(show_addr),
            None => Some(show_addr(self.info.addr())),
        }
    }

    /// The shard's replicas (`host:port`): as configured, or as Sentinel
    /// last reported them; empty for a plain server.
    pub fn replica_addresses(&self) -> Vec<String> {
        self.shard
            .as_ref()
            .map(|s| s.replicas().iter().map(show_addr).collect())
            .unwrap_or_default()
    }

    /// How fast each node of the shard (its primary first, then its
    /// replicas) answers now, as measured for
    /// [`ReadFrom::LowestLatency`](crate::ReadFrom::LowestLatency); empty
    /// for a plain server. `mredis stats` prints these.
    ///
    /// ```no_run
    /// # fn demo(mr: &mredis::MRedis) {
    /// for server in mr.servers() {
    ///     for node in server.latencies() {
    ///         match node.estimate {
    ///             Some(rtt) => println!("{} {}: {} µs", server.name(), node.node, rtt.as_micros()),
    ///             None => println!("{} {}: not answering (or not measured yet)", server.name(), node.node),
    ///         }
    ///     }
    /// }
    /// # }
    /// ```
    pub fn latencies(&self) -> Vec<Latency> {
        self.shard
            .as_ref()
            .map(|s| s.latencies().iter().map(|n| n.shown()).collect())
            .unwrap_or_default()
    }

    /// The shard's last failover the client followed, if any.
    pub fn last_failover(&self) -> Option<Failover> {
        self.shard.as_ref().and_then(|s| s.state().last_failover)
    }

    pub(crate) fn shard(&self) -> Option<&std::sync::Arc<Shard>> {
        self.shard.as_ref()
    }

    /// The epoch of the shard's addresses (0 for a plain server): a
    /// change means connections must be opened anew.
    #[inline]
    pub(crate) fn epoch(&self) -> u64 {
        self.shard.as_ref().map_or(0, |s| s.epoch())
    }

    /// The epoch of the shard's replicas (with the primary's): a change
    /// means the replicas' pools are made anew.
    #[inline]
    pub(crate) fn replicas_epoch(&self) -> u64 {
        self.shard
            .as_ref()
            .map_or(0, |s| s.replicas_epoch().wrapping_mul(1 << 32).wrapping_add(s.epoch()))
    }

    /// A plain server for one of this shard's replicas (its address, the
    /// shard's credentials and database), named `<shard> replica host:port`.
    pub(crate) fn replica_node(&self, addr: &ConnectionAddr) -> Server {
        let mut node = self.clone();
        node.shard = None;
        node.info = self.info.clone().set_addr(addr.clone());
        node.name = format!("{} replica {}", self.name, show_addr(addr));
        node
    }

    /// The connection info of the current primary.
    pub(crate) fn current_info(&self) -> RedisResult<ConnectionInfo> {
        let Some(shard) = &self.shard else {
            return Ok(self.info.clone());
        };
        match shard.primary() {
            Some(addr) => Ok(self.info.clone().set_addr(addr)),
            // A refusal (nothing was sent): a request waits for a primary.
            None => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!(
                    "mredis: shard `{}`: no sentinel has named its primary yet{}; nothing was sent",
                    self.name,
                    shard.state().problem.map(|p| format!(" ({p})")).unwrap_or_default()
                ),
            ))),
        }
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

    /// Sets the password sent with `AUTH` (or `HELLO`) on every new
    /// connection, keeping the user name of the URL if any (without one,
    /// Redis checks it against the `default` user, as `requirepass` does).
    /// twemproxy's `redis_auth:` sets this for every server of its pool.
    pub fn with_password(mut self, password: impl AsRef<str>) -> Self {
        let settings = self.info.redis_settings().clone().set_password(password);
        self.info = self.info.set_redis_settings(settings);
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

    /// Connects to this server with TLS. For a Sentinel shard
    /// ([`Server::sentinel`]) this is how its data servers (the primary and
    /// replicas the sentinels name) are reached with TLS; the sentinels
    /// themselves follow their own URLs (`rediss://` for TLS). A plain
    /// server usually takes TLS from its URL (`rediss://`); this does the
    /// same. Certificates are verified against the system's roots, or the
    /// root given with [`Server::with_tls_root_cert`]. A Unix socket has no
    /// TLS: an error.
    ///
    /// ```no_run
    /// # fn main() -> redis::RedisResult<()> {
    /// let shard = mredis::Server::sentinel("shard-a", ["redis://10.0.0.21:26379"])?
    ///     .with_tls()?
    ///     .with_tls_root_cert(std::fs::read("ca.crt")?);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn with_tls(mut self) -> RedisResult<Self> {
        let addr = match self.info.addr() {
            ConnectionAddr::Tcp(host, port) => ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: false,
                tls_params: None,
            },
            ConnectionAddr::TcpTls { .. } => return Ok(self),
            _ => {
                return Err(config_error(format!(
                    "{}: a Unix socket has no TLS; give a host and port",
                    self.name
                )));
            }
        };
        self.info = self.info.clone().set_addr(addr);
        self.tls = true;
        Ok(self)
    }

    /// A data node of this shard at `host:port`, reached as this server is
    /// (TLS or not).
    pub(crate) fn node_addr(&self, host: String, port: u16) -> ConnectionAddr {
        match self.info.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host, port),
        }
    }

    /// Trusts this PEM root certificate (instead of the system's) for a
    /// `rediss://` server, e.g. a private CA.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn with_tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(std::sync::Arc::new(pem.into()));
        self
    }

    /// `MIGRATE` of `keys` from the server it is sent to, to this server
    /// (its database, and its credentials when it has a password).
    pub(crate) fn migrate_cmd(&self, timeout_ms: u64, replace: bool, keys: &[Vec<u8>]) -> redis::Cmd {
        let mut cmd = redis::cmd("MIGRATE");
        let (host, port) = match self.shard.as_ref().and_then(|s| s.primary()) {
            Some(ConnectionAddr::Tcp(h, p)) | Some(ConnectionAddr::TcpTls { host: h, port: p, .. }) => (h, p),
            _ => (self.host.clone(), self.port),
        };
        cmd.arg(host).arg(port).arg("").arg(self.db()).arg(timeout_ms);
        if replace {
            cmd.arg("REPLACE");
        }
        let info = self.connection_info();
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => cmd.arg("AUTH2").arg(user).arg(password),
                None => cmd.arg("AUTH").arg(password),
            };
        }
        cmd.arg("KEYS");
        for k in keys {
            cmd.arg(k);
        }
        cmd
    }

    /// Whether connections to `other` are connections to this server: the
    /// same name, address (and TLS), database, user, password, protocol
    /// and client library, and both plain servers (a shard's connections
    /// follow its primary, which only its own configuration tracks).
    pub(crate) fn same_connection(&self, other: &Server) -> bool {
        let (a, b) = (self.info.redis_settings(), other.info.redis_settings());
        self.shard.is_none()
            && other.shard.is_none()
            && self.name == other.name
            && self.info.addr() == other.info.addr()
            && a.db() == b.db()
            && a.username() == b.username()
            && a.password() == b.password()
            && a.protocol() == b.protocol()
            && a.skip_set_lib_name() == b.skip_set_lib_name()
            && a.lib_name() == b.lib_name()
            && a.lib_ver() == b.lib_ver()
            && self.tls_root_cert == other.tls_root_cert
    }

    pub(crate) fn connection_info(&self) -> ConnectionInfo {
        self.info.clone()
    }

    /// A redis-rs client for this server, with its TLS roots if any.
    pub(crate) fn client(&self) -> RedisResult<redis::Client> {
        self.client_of(self.current_info()?)
    }

    /// A client for this server whose connections skip redis-rs's setup
    /// (no AUTH, SELECT or CLIENT SETINFO), for a caller that runs the
    /// setup itself under one deadline; `None` for RESP3, whose HELLO
    /// redis-rs must send itself.
    pub(crate) fn bare_client(&self) -> RedisResult<Option<redis::Client>> {
        if self.info.redis_settings().protocol().supports_resp3() {
            return Ok(None);
        }
        let bare = self
            .current_info()?
            .set_redis_settings(redis::RedisConnectionInfo::default().set_skip_set_lib_name());
        self.client_of(bare).map(Some)
    }

    fn client_of(&self, info: ConnectionInfo) -> RedisResult<redis::Client> {
        #[cfg(feature = "tls")]
        if let Some(root) = &self.tls_root_cert {
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root.as_ref().clone()),
            };
            return redis::Client::build_with_tls(info, certs);
        }
        redis::Client::open(info)
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

const TCP_SCHEMES: [&str; 4] = ["redis", "rediss", "valkey", "valkeys"];
const UNIX_SCHEMES: [&str; 3] = ["unix", "redis+unix", "valkey+unix"];

/// Query parameters whose values may be shown (no secret in them).
const SHOWN_PARAMETERS: [&str; 3] = ["protocol", "db", "user"];

/// Where the scheme ends (`Some(i)` with `&url[..i]` the scheme and
/// `&url[i + 3..]` the rest), if `url` starts with `scheme://`.
fn scheme_end(url: &str) -> Option<usize> {
    let end = url.find("://")?;
    let scheme = &url[..end];
    let valid = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    valid.then_some(end)
}

/// A short, printable form of a piece of a URL that holds no secret.
fn show_piece(piece: &str) -> String {
    let mut s: String = piece.chars().flat_map(char::escape_default).collect();
    if s.len() > 40 {
        let mut cut = 37;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// What is wrong with a server URL, checked before redis-rs parses it so
/// each mistake gets its own message and nothing is silently ignored.
/// Never returns any part of the user name or password.
fn check_url(url: &str) -> Result<(), String> {
    let Some(end) = scheme_end(url) else {
        return Err("missing redis:// scheme: write redis://HOST:PORT/DB (rediss:// for TLS)".to_string());
    };
    let scheme = url[..end].to_ascii_lowercase();
    let rest = &url[end + 3..];
    let unix = UNIX_SCHEMES.contains(&scheme.as_str());
    if !unix && !TCP_SCHEMES.contains(&scheme.as_str()) {
        return Err(format!(
            "unsupported scheme `{}`: use redis://, rediss:// (TLS), valkey://, valkeys:// or redis+unix://",
            show_piece(&url[..end])
        ));
    }
    let (before_fragment, fragment) = match rest.rfind('@') {
        // The fragment is looked for after the user info: a `#` in it is
        // reported below.
        Some(at) => match rest[at..].find('#') {
            Some(h) => (&rest[..at + h], Some(&rest[at + h + 1..])),
            None => (rest, None),
        },
        None => match rest.split_once('#') {
            Some((a, f)) => (a, Some(f)),
            None => (rest, None),
        },
    };
    let (before_query, query) = match before_fragment.rfind('@') {
        Some(at) => match before_fragment[at..].find('?') {
            Some(q) => (&before_fragment[..at + q], Some(&before_fragment[at + q + 1..])),
            None => (before_fragment, None),
        },
        None => match before_fragment.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (before_fragment, None),
        },
    };
    if !unix {
        let host_and_path = match before_query.rfind('@') {
            Some(at) => {
                if before_query[..at].contains(['/', '?', '#']) {
                    return Err(
                        "the user name or password contains a raw `/`, `?` or `#` (or an `@` follows \
                                the host): percent-encode them in the password (`/` as %2F, `?` as %3F, \
                                `#` as %23, `@` as %40, `%` as %25)"
                            .to_string(),
                    );
                }
                let userinfo = &before_query[..at];
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                if !user.is_empty() && password.is_empty() {
                    // redis-rs sends no AUTH without a password: the user
                    // name would be ignored (and is often a misplaced password).
                    return Err("a user name without a password is ignored: write \
                                redis://USER:PASSWORD@HOST or redis://:PASSWORD@HOST"
                        .to_string());
                }
                &before_query[at + 1..]
            }
            None => before_query,
        };
        let (authority, path) = match host_and_path.find('/') {
            Some(slash) => (&host_and_path[..slash], &host_and_path[slash..]),
            None => (host_and_path, ""),
        };
        check_authority(authority)?;
        let db = path.trim_matches('/');
        if !db.is_empty() && db.parse::<i64>().is_err() {
            return Err(format!(
                "the path must be the database number (like /0), not `{}`",
                show_piece(path)
            ));
        }
    }
    if let Some(query) = query {
        let allowed: &[&str] = if unix {
            &["db", "user", "pass", "protocol"]
        } else {
            &["protocol"]
        };
        let mut unknown = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            if allowed.contains(&key) {
                continue;
            }
            if key == "db" {
                return Err(
                    "query parameter `db` is not used in redis:// URLs: give the database as the \
                            path, as in redis://HOST:PORT/3"
                        .to_string(),
                );
            }
            let printable = !key.is_empty()
                && key.len() <= 32
                && key.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            unknown.push(if printable {
                format!("`{key}`")
            } else {
                "(an unprintable or long name)".to_string()
            });
        }
        if !unknown.is_empty() {
            return Err(format!(
                "unknown query parameter{} {} (accepted here: {})",
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join(", "),
                allowed.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    if let Some(fragment) = fragment {
        let tls = scheme == "rediss" || scheme == "valkeys";
        if !(tls && fragment == "insecure") {
            return Err("the only URL fragment is #insecure, on rediss:// URLs".to_string());
        }
    }
    Ok(())
}

/// Checks `host[:port]` (the part after any user info).
fn check_authority(authority: &str) -> Result<(), String> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some(close) = bracketed.find(']') else {
            return Err("an IPv6 address needs its closing `]`, as in redis://[::1]:6379".to_string());
        };
        let after = &bracketed[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("after `]` only `:PORT` may follow".to_string()),
        };
        (&bracketed[..close], port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => {
                if port.contains(':') {
                    return Err("an IPv6 address must be in brackets, as in redis://[::1]:6379".to_string());
                }
                (host, Some(port))
            }
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".to_string());
    }
    match port {
        None | Some("") => Ok(()),
        Some(port) if !port.bytes().all(|b| b.is_ascii_digit()) => {
            Err(format!("port `{}` is not a number", show_piece(port)))
        }
        Some(port) => match port.parse::<u64>() {
            Ok(0) => Err("port 0 is not a valid port".to_string()),
            Ok(p) if p <= u64::from(u16::MAX) => Ok(()),
            _ => Err(format!("port {} out of range (1-65535)", show_piece(port))),
        },
    }
}

/// A URL (or any `user:password@host...` text) with its password hidden,
/// so it can be shown.
///
/// Everything before the last `@` is user info: only the user name (up to
/// its first `:`) is kept, the rest becomes `****`. Without a `:` the whole
/// user info is hidden (`redis://password@host` is a common slip). Query
/// values other than `protocol`, `db` and `user` are hidden too
/// (`redis+unix:///s.sock?pass=...`). Works on text without a scheme as
/// well (`user:pw@host:6379` becomes `user:****@host:6379`).
pub fn redact_url(url: &str) -> String {
    let (prefix, rest) = match scheme_end(url) {
        Some(end) => (&url[..end + 3], &url[end + 3..]),
        None => ("", url),
    };
    let mut out = prefix.to_string();
    let tail: &str = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                Some((user, _)) if !user.contains(['/', '?', '#', '@']) => {
                    out.push_str(user);
                    out.push_str(":****@");
                }
                _ => out.push_str("****@"),
            }
            &rest[at + 1..]
        }
        None => rest,
    };
    // The password repeated after the host (a slip) is hidden there too.
    let mut tail = tail.to_string();
    for secret in secrets_of(url) {
        tail = tail.replace(&secret, "****");
    }
    match tail.split_once('?') {
        None => out.push_str(&tail),
        Some((before, query)) => {
            out.push_str(before);
            out.push('?');
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, v)) if SHOWN_PARAMETERS.contains(&k) => format!("{k}={v}"),
                    Some((k, _)) => format!("{k}=****"),
                    None => pair.to_string(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
        }
    }
    out
}

/// The secrets of `url` as they could appear in a message: the password
/// (raw and percent-decoded) and any hidden query value.
fn secrets_of(url: &str) -> Vec<String> {
    let rest = scheme_end(url).map_or(url, |end| &url[end + 3..]);
    let mut secrets = Vec::new();
    if let Some(at) = rest.rfind('@') {
        let userinfo = &rest[..at];
        secrets.push(userinfo.split_once(':').map_or(userinfo, |(_, p)| p).to_string());
    }
    if let Some((_, query)) = rest.split_once('?') {
        for pair in query.split(['&', '#']) {
            if let Some((k, v)) = pair.split_once('=')
                && !SHOWN_PARAMETERS.contains(&k)
            {
                secrets.push(v.to_string());
            }
        }
    }
    let decoded: Vec<String> = secrets.iter().map(|s| percent_decode(s)).collect();
    secrets.extend(decoded);
    secrets.retain(|s| !s.is_empty());
    // Longest first, so a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(bytes[i + 1]) * 16 + hex(bytes[i + 2]));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes any password of `url` that an underlying error message may echo.
pub(crate) fn scrub(message: &str, url: &str) -> String {
    let mut out = message.replace(url, &redact_url(url));
    for secret in secrets_of(url) {
        out = out.replace(&secret, "****");
    }
    out
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

    const CANARY: &str = "CanaryPw-7f3a";

    /// Every hostile way to write a password, with what each must become.
    fn hostile_urls() -> Vec<String> {
        [
            "redis://:{C}/x@127.0.0.1:6379",
            "redis://u:{C}@x@127.0.0.1:6379/0",
            "redis://:{C}#x@127.0.0.1:1",
            "redis://u:{C}?x@127.0.0.1:1",
            ":{C}@127.0.0.1:6379",
            "u:{C}@127.0.0.1:6379",
            "{C}@127.0.0.1:6379",
            "redis://{C}@127.0.0.1:6379",
            "redis://u:{C}@127.0.0.1:99999/0",
            "redis://u:{C}@127.0.0.1:6379/0?db=3",
            "redis://u:{C}@127.0.0.1:6379/0?password={C}",
            "redis://u:{C}@127.0.0.1:6379/x{C}",
            "redis://u:{C}@127.0.0.1:notaport/0",
            "redis://u:{C}@/0",
            "http://u:{C}@127.0.0.1:6379/0",
            "redis+unix:///tmp/x.sock?pass={C}&bogus=1",
            "redis://u:{C}@127.0.0.1:6379/0#{C}",
            "redis://u:{C}@127.0.0.1:6379/0?protocol={C}",
        ]
        .iter()
        .map(|u| u.replace("{C}", CANARY))
        .collect()
    }

    #[test]
    fn hostile_urls_never_show_the_password() {
        for url in hostile_urls() {
            let shown = redact_url(&url);
            assert!(!shown.contains(CANARY), "{url} -> {shown}");
            match Server::from_url(&url) {
                Ok(s) => assert!(!format!("{s} {s:?}").contains(CANARY), "{url}: {s:?}"),
                Err(e) => assert!(!format!("{e} {e:?}").contains(CANARY), "{url}: {e:?}"),
            }
        }
        assert_eq!(redact_url("redis://:pa/ss@h:6379"), "redis://:****@h:6379");
        assert_eq!(redact_url("redis://u:p@ss@h:6379/0"), "redis://u:****@h:6379/0");
        assert_eq!(redact_url("redis://:se#cret@h:1"), "redis://:****@h:1");
        assert_eq!(redact_url(":secret@host:6379"), ":****@host:6379");
        assert_eq!(redact_url("user:secret@host:6379"), "user:****@host:6379");
        assert_eq!(redact_url("secret@host:6379:1"), "****@host:6379:1");
        assert_eq!(
            redact_url("redis+unix:///s.sock?db=1&pass=secret"),
            "redis+unix:///s.sock?db=1&pass=****"
        );
    }

    fn error_of(url: &str) -> String {
        Server::from_url(url)
            .map(|s| s.name().to_string())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn each_url_mistake_says_what_is_wrong() {
        for (url, says) in [
            ("redis://:pa/ss@h:6379", "percent-encode"),
            ("redis://secret@h:6379", "user name without a password"),
            ("redis://:se#cret@h:1", "percent-encode"),
            ("redis://u:pa?ss@h:1", "percent-encode"),
            (":secret@host:6379", "missing redis:// scheme"),
            ("host:6379", "missing redis:// scheme"),
            ("http://host:6379", "unsupported scheme `http`"),
            ("redis://h:99999/0", "port 99999 out of range"),
            ("redis://h:0/0", "port 0"),
            ("redis://h:x1/0", "port `x1` is not a number"),
            ("redis://:6379/0", "missing host"),
            ("redis://::1:6379/0", "in brackets"),
            ("redis://h:1/zero", "database number"),
            ("redis://h:1/0?db=3", "query parameter `db`"),
            (
                "redis://h:1/0?protocol=3&foo=1&bar",
                "unknown query parameters `foo`, `bar`",
            ),
            ("redis://h:1/0#insecure", "#insecure, on rediss://"),
            ("redis+unix:///tmp/s.sock?x=1", "unknown query parameter `x`"),
        ] {
            let e = error_of(url);
            assert!(e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn urls_redis_rs_understands_still_parse() {
        // A raw `@` in the password: the last `@` ends it (as the URL standard says).
        let s = Server::from_url("redis://u:p@ss@h:6379/2").unwrap();
        assert_eq!(s.name(), "h:6379:2");
        assert_eq!(s.connection_info().redis_settings().password(), Some("p@ss"));
        let s = Server::from_url("redis://:pa%2Fss%23x@h:6379").unwrap();
        assert_eq!(s.connection_info().redis_settings().password(), Some("pa/ss#x"));
        let s = Server::from_url("redis://h:6379/0?protocol=3").unwrap();
        assert!(s.connection_info().redis_settings().protocol().supports_resp3());
        assert!(Server::from_url("redis://[::1]:6379/0").is_ok());
        assert!(Server::from_url("redis://h").is_ok());
        assert!(Server::from_url("redis://h:6379/").is_ok());
        assert!(Server::from_url("valkey://h:6379/0").is_ok());
        assert!(Server::from_url("redis+unix:///tmp/s.sock?db=1&pass=x").is_ok());
    }

    #[test]
    fn hosts_cannot_smuggle_user_info() {
        let e = ("CanaryPw-7f3a@h", 1u16, 0i64).into_server().unwrap_err();
        assert!(!format!("{e} {e:?}").contains(CANARY), "{e}");
        assert!(e.to_string().contains("cannot contain '@'"), "{e}");
        for host in ["h/1", "h?x", "h#x", "h x"] {
            assert!((host, 1u16, 0i64).into_server().is_err(), "{host}");
        }
    }

    #[test]
    fn with_password_sets_it_and_hides_it() {
        let s = Server::from_url("redis://h:1/0").unwrap().with_password(CANARY);
        assert_eq!(s.connection_info().redis_settings().password(), Some(CANARY));
        assert!(!format!("{s:?}").contains(CANARY));
        assert_eq!(
            s.connection_info().redis_settings().username(),
            None,
            "the default user"
        );
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
        fn any_password_text_is_never_shown(
            user in "[a-z]{0,8}",
            pass in "[!-~\u{a0}-\u{17f}]{6,24}",
            port in 1u16..,
            tail in prop_oneof![Just(""), Just("/0"), Just("/x"), Just("/0?db=1"), Just("/0#f")],
        ) {
            let url = format!("redis://{user}:{pass}@127.0.0.1:{port}{tail}");
            prop_assume!(!format!("redis://{user}:@127.0.0.1:{port}{tail}").contains(&pass));
            // A password that starts a query or fragment is cut short by the
            // parser; what is shown must not hold any of it either way.
            let shown = redact_url(&url);
            prop_assert!(!shown.contains(&pass), "{} -> {}", url, shown);
            match Server::from_url(&url) {
                Ok(s) => {
                    let text = format!("{s} {s:?}");
                    prop_assert!(!text.contains(&pass), "{}", text);
                }
                Err(e) => {
                    let text = format!("{e} {e:?}");
                    prop_assert!(!text.contains(&pass), "{}", text);
                }
            }
        }

        #[test]
        fn tuples_with_any_host_never_panic(host in ".{0,40}", port in any::<u16>(), db in any::<i64>()) {
            let _ = (host.as_str(), port, db).into_server();
        }
    }
}
