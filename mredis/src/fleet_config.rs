//! Fleet configuration files: the server list, placement mode, weights and
//! names as TOML (used by the `mredis` command-line tool), and twemproxy
//! pool definitions as YAML, so a pool served by nutcracker can be opened
//! directly with the same placement.

use redis::RedisResult;
use serde::Deserialize;

use crate::config::Builder;
use crate::placement::{KeyHash, Mode};
use crate::server::{Server, config_error};

/// One server entry of a TOML configuration: a URL, or a table with weight
/// and name.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Entry {
    Url(String),
    Full {
        /// The server (a plain shard, or a static primary with `replicas`).
        #[serde(default)]
        url: Option<String>,
        #[serde(default)]
        weight: Option<u32>,
        #[serde(default)]
        name: Option<String>,
        /// A static primary's replicas (URLs; their addresses only).
        #[serde(default)]
        replicas: Vec<String>,
        /// A Sentinel shard's master name ...
        #[serde(default)]
        sentinel_master: Option<String>,
        /// ... and its sentinels' URLs (their own credentials).
        #[serde(default)]
        sentinels: Vec<String>,
        /// A Sentinel shard's data servers' credentials and database.
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
        #[serde(default)]
        db: Option<i64>,
        /// TLS to the data servers (a Sentinel shard's; a `url` entry can
        /// say `rediss://` instead).
        #[serde(default)]
        tls: Option<bool>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    hash_tag: Option<String>,
    #[serde(default)]
    hash_tags: Option<bool>,
    /// `primary` (default), `prefer-replica`, `replica-only` or
    /// `lowest-latency`.
    #[serde(default)]
    read_from: Option<String>,
    servers: Vec<Entry>,
    /// The configuration the fleet is moving away from (same fields).
    #[serde(default)]
    migrating_from: Option<Box<FileConfig>>,
}

/// A TOML error without the text of the offending value (it may hold a
/// URL with a password): the line and what was wrong.
fn toml_error(text: &str, e: &toml::de::Error) -> redis::RedisError {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    let mut message = without_quoted(e.message());
    if message.starts_with("unknown field") {
        // The known names hold no secret; the unknown one might (a pasted
        // password as a key): it is named only when it is a misspelling of
        // a known one.
        const FIELDS: &str = "the fields are mode, hash, hash_tag, hash_tags, read_from, servers and [migrating_from]";
        message = match unknown_field(e.message()).and_then(|f| near_field(f).map(|near| (f, near))) {
            Some((field, near)) => format!("unknown field `{field}`, did you mean `{near}`? ({FIELDS})"),
            None => format!("unknown field, not shown as it is not near any field's name ({FIELDS})"),
        };
    }
    if message.contains("untagged enum Entry") {
        message =
            "a server entry must be a URL string or a table { url = \"...\", weight = N, name = \"...\" }".to_string();
    }
    let place = line.map(|l| format!("line {l}: ")).unwrap_or_default();
    config_error(format!("fleet configuration, {place}{}", message.trim()))
}

/// The name in serde's "unknown field `name`, expected ...".
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

/// The known field `name` is a misspelling of (at most two edits away),
/// if any.
fn near_field(name: &str) -> Option<&'static str> {
    const KNOWN: [&str; 7] = [
        "mode",
        "hash",
        "hash_tag",
        "hash_tags",
        "read_from",
        "servers",
        "migrating_from",
    ];
    let lower = name.to_ascii_lowercase();
    KNOWN
        .iter()
        .map(|k| (edits(&lower, k), *k))
        .filter(|(d, _)| *d <= 2 && *d < name.len())
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != b[j])).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A parser's message with anything quoted (a value it may echo) cut out.
fn without_quoted(text: &str) -> String {
    let mut message = String::new();
    let mut in_quotes = false;
    for c in text.chars() {
        if c == '"' || c == '`' {
            if !in_quotes {
                message.push_str("\"...");
            }
            in_quotes = !in_quotes;
            if !in_quotes {
                message.push('"');
            }
            continue;
        }
        if !in_quotes {
            message.push(c);
        }
    }
    if in_quotes {
        message.push('"');
    }
    message
}

fn tag_chars(tag: &str) -> RedisResult<[u8; 2]> {
    match tag.as_bytes() {
        [a, b] => Ok([*a, *b]),
        _ => Err(config_error(format!(
            "hash_tag must be exactly two characters, like \"{{}}\", not {tag:?}"
        ))),
    }
}

fn mode_of(mode: Option<&str>, hash: Option<&str>, tag: Option<&str>) -> RedisResult<Mode> {
    let hash = match hash {
        None => KeyHash::Fnv1a64,
        Some(h) => KeyHash::from_name(h).ok_or_else(|| config_error(format!("unknown hash `{h}`")))?,
    };
    let hash_tag = tag.map(tag_chars).transpose()?;
    Ok(match mode.unwrap_or("standard") {
        "standard" => Mode::Standard,
        "ketama" => Mode::Ketama { hash, hash_tag },
        "modula" => Mode::Modula { hash, hash_tag },
        "rendezvous" => Mode::Rendezvous,
        other => {
            return Err(config_error(format!(
                "unknown mode `{other}` (standard, ketama, modula or rendezvous)"
            )));
        }
    })
}

/// Reads a fleet configuration in TOML:
///
/// ```toml
/// mode = "ketama"          # standard (default) | ketama | modula | rendezvous
/// hash = "fnv1a_64"        # ketama/modula key hash (twemproxy names)
/// hash_tag = "{}"          # ketama/modula hash tag characters
/// # hash_tags = true       # standard/rendezvous: Redis Cluster tags on/off
/// servers = [
///   "redis://10.0.0.1:6379/0",
///   { url = "redis://10.0.0.2:6379/0", weight = 2, name = "cache-b" },
/// ]
/// ```
///
/// Shards with replicas: a static primary lists its `replicas`; a
/// Sentinel shard gives its master name, its sentinels (their own
/// credentials in their URLs) and the data servers' credentials (and
/// `tls = true` to reach them with TLS, with the `tls` feature); reads go
/// where `read_from` says (`primary`, `prefer-replica`, `replica-only`,
/// `lowest-latency`; see [`ReadFrom`](crate::ReadFrom)):
///
/// ```toml
/// read_from = "prefer-replica"
/// servers = [
///   { url = "redis://10.0.0.1:6379/0", replicas = ["redis://10.0.0.11:6379"] },
///   { sentinel_master = "shard-b", sentinels = ["redis://10.0.0.21:26379", "redis://10.0.0.22:26379"],
///     password = "data-secret", db = 0 },
/// ]
/// ```
///
/// A migration-aware configuration (see [`Builder::migrating_from`]) adds
/// the configuration it is moving away from as a `[migrating_from]` table
/// with the same fields:
///
/// ```toml
/// servers = ["redis://10.0.0.1:6379/0", "redis://10.0.0.2:6379/0", "redis://10.0.0.3:6379/0"]
///
/// [migrating_from]
/// servers = ["redis://10.0.0.1:6379/0", "redis://10.0.0.2:6379/0"]
/// ```
///
/// Errors name the line and never repeat the offending value.
pub fn builder_from_toml(text: &str) -> RedisResult<Builder> {
    let file: FileConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let mut builder = builder_from_file(file.clone_shallow(), "")?;
    if let Some(old) = file.migrating_from {
        if old.migrating_from.is_some() {
            return Err(config_error(
                "fleet configuration: [migrating_from] cannot itself have a [migrating_from]".to_string(),
            ));
        }
        builder = builder.migrating_from(builder_from_file(*old, "[migrating_from] ")?);
    }
    Ok(builder)
}

impl FileConfig {
    /// The top level without its `migrating_from`.
    fn clone_shallow(&self) -> FileConfig {
        FileConfig {
            mode: self.mode.clone(),
            hash: self.hash.clone(),
            hash_tag: self.hash_tag.clone(),
            hash_tags: self.hash_tags,
            read_from: self.read_from.clone(),
            servers: self.servers.clone(),
            migrating_from: None,
        }
    }
}

fn builder_from_file(file: FileConfig, table: &str) -> RedisResult<Builder> {
    let mode = mode_of(file.mode.as_deref(), file.hash.as_deref(), file.hash_tag.as_deref())?;
    let mut servers = Vec::new();
    for (i, entry) in file.servers.into_iter().enumerate() {
        // Which entry, so a bad URL can be found without showing it whole.
        let parse = |url: &str| {
            Server::from_url(url).map_err(|e| {
                config_error(format!(
                    "fleet configuration, {table}servers entry {}: {}",
                    i + 1,
                    e.detail().unwrap_or("invalid")
                ))
            })
        };
        let server = match entry {
            Entry::Url(url) => parse(&url)?,
            Entry::Full {
                url,
                weight,
                name,
                replicas,
                sentinel_master,
                sentinels,
                username,
                password,
                db,
                tls,
            } => {
                let at = |e: redis::RedisError| {
                    config_error(format!(
                        "fleet configuration, {table}servers entry {}: {}",
                        i + 1,
                        e.detail().unwrap_or("invalid")
                    ))
                };
                let mut s = match (url, sentinel_master) {
                    (Some(url), None) => {
                        if username.is_some() || password.is_some() || db.is_some() {
                            return Err(at(config_error(
                                "username, password and db belong to Sentinel shards; put them in the url".to_string(),
                            )));
                        }
                        let s = parse(&url)?;
                        if replicas.is_empty() {
                            s
                        } else {
                            s.with_replicas(&replicas).map_err(at)?
                        }
                    }
                    (None, Some(master)) => {
                        if !replicas.is_empty() {
                            return Err(at(config_error(
                                "a Sentinel shard's replicas are the ones Sentinel reports; remove `replicas`"
                                    .to_string(),
                            )));
                        }
                        let mut s = Server::sentinel(&master, &sentinels).map_err(at)?;
                        if let Some(u) = username {
                            s = s.with_username(u);
                        }
                        if let Some(p) = password {
                            s = s.with_password(p);
                        }
                        if let Some(d) = db {
                            s = s.with_db(d).map_err(at)?;
                        }
                        s
                    }
                    (Some(_), Some(_)) => {
                        return Err(at(config_error(
                            "give either url (a server) or sentinel_master and sentinels (a Sentinel shard), not both"
                                .to_string(),
                        )));
                    }
                    (None, None) => {
                        return Err(at(config_error(
                            "missing url (or sentinel_master and sentinels for a Sentinel shard)".to_string(),
                        )));
                    }
                };
                if tls == Some(true) {
                    #[cfg(feature = "tls")]
                    {
                        s = s.with_tls().map_err(at)?;
                    }
                    #[cfg(not(feature = "tls"))]
                    return Err(at(config_error(
                        "tls = true needs mredis built with its `tls` feature".to_string(),
                    )));
                }
                if let Some(w) = weight {
                    s = s.with_weight(w);
                }
                if let Some(n) = name {
                    s = s.with_alias(n);
                }
                s
            }
        };
        servers.push(server);
    }
    let mut builder = Builder::new().servers(servers).mode(mode);
    match file.read_from.as_deref() {
        None | Some("primary") => {}
        Some("prefer-replica") => builder = builder.read_from(crate::ReadFrom::PreferReplica),
        Some("replica-only") => builder = builder.read_from(crate::ReadFrom::ReplicaOnly),
        Some("lowest-latency") => builder = builder.read_from(crate::ReadFrom::LowestLatency),
        Some(other) => {
            return Err(config_error(format!(
                "fleet configuration: unknown {table}read_from `{}` (primary, prefer-replica, replica-only or \
                 lowest-latency)",
                other.chars().take(40).collect::<String>()
            )));
        }
    }
    if let Some(tags) = file.hash_tags {
        builder = builder.hash_tags(tags);
    }
    Ok(builder)
}

/// Reads a twemproxy (nutcracker) configuration and returns a builder for
/// pool `pool` with the same servers, weights, names, hash, distribution
/// and hash tag. `servers:` lines are `host:port:weight [name]`.
///
/// As nutcracker does, the pool's `redis_auth:` password is sent (`AUTH`)
/// to every server of the pool, and its `redis_db:` (default 0) is the
/// database used on each of them; placement does not depend on either.
/// Server lines cannot carry a user or password (`secret@host:port:1` is an
/// error that does not show the secret). Errors never show the password.
pub fn builder_from_twemproxy_yaml(text: &str, pool: &str) -> RedisResult<Builder> {
    let docs: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
        .map_err(|e| config_error(format!("twemproxy configuration: {}", without_quoted(&e.to_string()))))?;
    let pool_cfg = docs
        .get(pool)
        .ok_or_else(|| config_error(format!("no pool `{pool}` in the twemproxy configuration")))?;
    let get_str = |k: &str| pool_cfg.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let distribution = get_str("distribution").unwrap_or_else(|| "ketama".to_string());
    if distribution == "random" {
        return Err(config_error(
            "distribution `random` places no key anywhere in particular; it cannot be followed".into(),
        ));
    }
    let mode = mode_of(
        Some(&distribution),
        get_str("hash").as_deref(),
        get_str("hash_tag").as_deref(),
    )?;
    let lines = pool_cfg
        .get("servers")
        .and_then(|v| v.as_sequence())
        .ok_or_else(|| config_error(format!("pool `{pool}` has no `servers:` list")))?;
    // A YAML scalar as text: `redis_auth: 12345` is a number to YAML.
    let scalar = |k: &str| -> RedisResult<Option<String>> {
        match pool_cfg.get(k) {
            None | Some(serde_yaml_ng::Value::Null) => Ok(None),
            Some(serde_yaml_ng::Value::String(s)) => Ok(Some(s.clone())),
            Some(serde_yaml_ng::Value::Number(n)) => Ok(Some(n.to_string())),
            Some(serde_yaml_ng::Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(_) => Err(config_error(format!("pool `{pool}`: `{k}` must be a single value"))),
        }
    };
    let auth = scalar("redis_auth")?.filter(|a| !a.is_empty());
    let db = match scalar("redis_db")? {
        None => 0,
        Some(db) => db
            .parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| config_error(format!("pool `{pool}`: `redis_db` must be a database number")))?,
    };
    let mut servers = Vec::new();
    for line in lines {
        let line = line
            .as_str()
            .ok_or_else(|| config_error("each twemproxy server must be a string".into()))?;
        let mut server = server_from_twemproxy_line_db(line, db)?;
        if let Some(auth) = &auth {
            server = server.with_password(auth);
        }
        servers.push(server);
    }
    Ok(Builder::new().servers(servers).mode(mode))
}

/// Parses one twemproxy server line: `host:port:weight [name]` (database 0).
pub fn server_from_twemproxy_line(line: &str) -> RedisResult<Server> {
    server_from_twemproxy_line_db(line, 0)
}

fn server_from_twemproxy_line_db(line: &str, db: i64) -> RedisResult<Server> {
    if line.contains('@') {
        return Err(config_error(format!(
            "twemproxy server `{}`: server lines have no user or password (host:port:weight [name]); \
             give the pool's password as `redis_auth:`",
            crate::server::redact_url(line)
        )));
    }
    let mut parts = line.split_whitespace();
    let address = parts
        .next()
        .ok_or_else(|| config_error("empty twemproxy server line".into()))?;
    let name = parts.next();
    let mut fields = address.rsplitn(3, ':');
    let weight = fields.next().and_then(|w| w.parse::<u32>().ok());
    let port = fields.next().and_then(|p| p.parse::<u16>().ok());
    let host = fields.next();
    let (Some(host), Some(port), Some(weight)) = (host, port, weight) else {
        return Err(config_error(format!(
            "twemproxy server `{line}` is not host:port:weight [name]"
        )));
    };
    let mut server = Server::from_parts(host, port, db)?.with_weight(weight);
    if let Some(name) = name {
        server = server.with_alias(name);
    }
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_configs() {
        let b = builder_from_toml(
            "mode = \"ketama\"\nhash = \"md5\"\nhash_tag = \"{}\"\nservers = [\"redis://a:1/0\", { url = \"redis://b:2/0\", weight = 3, name = \"bee\" }]\n",
        )
        .unwrap();
        let (servers, options) = b.into_parts().unwrap();
        assert_eq!(servers[1].weight(), 3);
        assert_eq!(servers[1].alias(), Some("bee"));
        assert_eq!(
            options.mode,
            Mode::Ketama {
                hash: KeyHash::Md5,
                hash_tag: Some(*b"{}")
            }
        );
        assert!(builder_from_toml("mode = \"x\"\nservers = [\"redis://a:1/0\"]").is_err());
        assert!(builder_from_toml("servers = [\"redis://a:1/0\"]\nsurprise = 1").is_err());
    }

    #[test]
    fn twemproxy_yaml() {
        let yaml = "alpha:\n  listen: 127.0.0.1:22121\n  hash: fnv1a_64\n  distribution: ketama\n  hash_tag: \"{}\"\n  redis: true\n  servers:\n   - 127.0.0.1:7001:1\n   - 127.0.0.1:7002:2 second\n";
        let (servers, options) = builder_from_twemproxy_yaml(yaml, "alpha")
            .unwrap()
            .into_parts()
            .unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[1].weight(), 2);
        assert_eq!(servers[1].alias(), Some("second"));
        assert_eq!(servers[0].name(), "127.0.0.1:7001:0");
        assert_eq!(
            options.mode,
            Mode::Ketama {
                hash: KeyHash::Fnv1a64,
                hash_tag: Some(*b"{}")
            }
        );
        assert!(builder_from_twemproxy_yaml(yaml, "beta").is_err());
        assert!(server_from_twemproxy_line("127.0.0.1:7001").is_err());
    }

    const CANARY: &str = "CanaryPw-7f3a";

    fn shows(e: &redis::RedisError) -> String {
        format!("{e} {e:?}")
    }

    #[test]
    fn toml_errors_never_echo_the_line() {
        let url = format!("redis://u:{CANARY}@127.0.0.1:6379/0");
        let cases = [
            // Syntax: an unclosed string, a missing comma, a bad key.
            format!("servers = [\"{url}]\n"),
            format!("servers = [\"{url}\" \"{url}\"]\n"),
            format!("servers = [\"{url}\"]\n{CANARY} = 1\n"),
            // Types: a string for the list, a number for an entry, a string weight.
            format!("servers = \"{url}\"\n"),
            format!("servers = [\"{url}\", 7]\n"),
            format!("servers = [{{ url = \"{url}\", weight = \"{CANARY}\" }}]\n"),
            format!("servers = [\"{url}\"]\nmode = [\"{url}\"]\n"),
            // The same in [migrating_from].
            format!("servers = [\"redis://a:1/0\"]\n[migrating_from]\nservers = [\"{url}]\n"),
            format!("servers = [\"redis://a:1/0\"]\n[migrating_from]\nservers = \"{url}\"\n"),
            format!(
                "servers = [\"redis://a:1/0\"]\n[migrating_from]\nservers = [{{ url = \"{url}\", weight = -1 }}]\n"
            ),
            format!("servers = [\"redis://a:1/0\"]\n[migrating_from]\nservers = [\"{url}\"]\n{CANARY} = 2\n"),
            // Bad URLs inside well-formed files.
            format!("servers = [\"redis://u:{CANARY}@127.0.0.1:99999/0\"]\n"),
            format!("servers = [\"redis://a:1/0\"]\n[migrating_from]\nservers = [\"redis://:{CANARY}/x@h:1\"]\n"),
        ];
        for text in cases {
            let e = builder_from_toml(&text).unwrap_err();
            assert!(!shows(&e).contains(CANARY), "{text}\n-> {e:?}");
            assert!(
                shows(&e).contains("line") || shows(&e).contains("URL"),
                "{text}\n-> {e}"
            );
        }
    }

    #[test]
    fn twemproxy_lines_never_keep_user_info() {
        let yaml = format!("p:\n  servers:\n   - {CANARY}@127.0.0.1:7001:1\n");
        let e = builder_from_twemproxy_yaml(&yaml, "p").unwrap_err();
        assert!(!shows(&e).contains(CANARY), "{e:?}");
        assert!(e.to_string().contains("redis_auth"), "{e}");
        let e = server_from_twemproxy_line(&format!("u:{CANARY}@127.0.0.1:7001:1 name")).unwrap_err();
        assert!(!shows(&e).contains(CANARY), "{e:?}");
        // A YAML syntax error around a password.
        let yaml = format!("p:\n  redis_auth: \"{CANARY}\n  servers: [\n");
        let e = builder_from_twemproxy_yaml(&yaml, "p").unwrap_err();
        assert!(!shows(&e).contains(CANARY), "{e:?}");
    }

    #[test]
    fn twemproxy_redis_auth_and_db_reach_every_server() {
        let yaml = format!(
            "p:\n  redis_auth: {CANARY}\n  redis_db: 3\n  servers:\n   - 127.0.0.1:7001:1\n   - 127.0.0.1:7002:1 b\n"
        );
        let b = builder_from_twemproxy_yaml(&yaml, "p").unwrap();
        assert!(!format!("{b:?}").contains(CANARY));
        let (servers, _) = b.into_parts().unwrap();
        for s in &servers {
            assert_eq!(s.connection_info().redis_settings().password(), Some(CANARY));
            assert_eq!(s.db(), 3);
            assert!(!format!("{s} {s:?}").contains(CANARY));
        }
        // A numeric password is a number to YAML: still a password.
        let yaml = "p:\n  redis_auth: 12345\n  servers:\n   - 127.0.0.1:7001:1\n";
        let (servers, _) = builder_from_twemproxy_yaml(yaml, "p").unwrap().into_parts().unwrap();
        assert_eq!(servers[0].connection_info().redis_settings().password(), Some("12345"));
        let yaml = "p:\n  redis_db: x\n  servers:\n   - 127.0.0.1:7001:1\n";
        assert!(builder_from_twemproxy_yaml(yaml, "p").is_err());
    }

    #[test]
    fn a_sentinel_entry_with_tls() {
        let text = "servers = [{ sentinel_master = \"m\", sentinels = [\"redis://127.0.0.1:26379\"], tls = true }]";
        let b = builder_from_toml(text);
        #[cfg(feature = "tls")]
        assert!(b.unwrap().into_parts().unwrap().0[0].tls());
        #[cfg(not(feature = "tls"))]
        assert!(b.unwrap_err().to_string().contains("`tls` feature"));
    }

    #[test]
    fn shard_entries_sentinel_and_static_replicas() {
        let text = format!(
            "read_from = \"prefer-replica\"\nservers = [\n  {{ url = \"redis://127.0.0.1:7001/0\", replicas = [\"redis://127.0.0.1:7011\"] }},\n  {{ sentinel_master = \"shard-b\", sentinels = [\"redis://:{CANARY}@127.0.0.1:26379\"], password = \"{CANARY}\", db = 2 }},\n]\n"
        );
        let b = builder_from_toml(&text).unwrap();
        assert!(!format!("{b:?}").contains(CANARY), "{b:?}");
        let (servers, options) = b.into_parts().unwrap();
        assert_eq!(options.read_from, crate::ReadFrom::PreferReplica);
        assert_eq!(servers[0].replica_addresses(), vec!["127.0.0.1:7011".to_string()]);
        assert_eq!(servers[1].name(), "shard-b");
        assert_eq!(servers[1].alias(), Some("shard-b"));
        assert_eq!(servers[1].db(), 2);
        assert_eq!(servers[1].connection_info().redis_settings().password(), Some(CANARY));
        assert_eq!(servers[1].primary_address(), None);
        for s in &servers {
            assert!(!format!("{s} {s:?}").contains(CANARY));
        }
        // Mistakes, each named, none showing the password.
        for (bad, says) in [
            (
                format!("servers = [{{ sentinel_master = \"m\", sentinels = [\"redis://:{CANARY}@h:1/3\"] }}]"),
                "a sentinel has no database",
            ),
            (
                "servers = [{ sentinel_master = \"m\", sentinels = [] }]".to_string(),
                "no sentinel given",
            ),
            (
                format!("servers = [{{ url = \"redis://:{CANARY}@h:1\", sentinel_master = \"m\" }}]"),
                "not both",
            ),
            ("servers = [{ weight = 2 }]".to_string(), "missing url"),
            (
                "servers = [{ url = \"redis://h:1\", replicas = [\"redis://h:1\"] }]".to_string(),
                "listed twice",
            ),
            (
                format!("read_from = \"{CANARY}\"\nservers = [\"redis://h:1\"]"),
                "unknown read_from",
            ),
        ] {
            let e = builder_from_toml(&bad)
                .and_then(|b| b.into_parts().map(|_| ()))
                .unwrap_err();
            let shown = shows(&e);
            assert!(shown.contains(says), "{bad}: {shown}");
            if !says.contains("read_from") {
                assert!(!shown.contains(CANARY), "{shown}");
            }
        }
    }

    #[test]
    fn read_from_lowest_latency() {
        let text = "read_from = \"lowest-latency\"\nservers = [\n  { url = \"redis://127.0.0.1:7001/0\", replicas = [\"redis://127.0.0.1:7011\", \"redis://127.0.0.1:7012\"] },\n]\n";
        let (servers, options) = builder_from_toml(text).unwrap().into_parts().unwrap();
        assert_eq!(options.read_from, crate::ReadFrom::LowestLatency);
        assert_eq!(
            servers[0].replica_addresses(),
            vec!["127.0.0.1:7011".to_string(), "127.0.0.1:7012".to_string()]
        );
        // Every node listed, primary first, none measured yet.
        let nodes: Vec<(String, bool, Option<std::time::Duration>)> = servers[0]
            .latencies()
            .into_iter()
            .map(|n| (n.node, n.primary, n.estimate))
            .collect();
        assert_eq!(
            nodes,
            vec![
                ("127.0.0.1:7001".to_string(), true, None),
                ("127.0.0.1:7011".to_string(), false, None),
                ("127.0.0.1:7012".to_string(), false, None),
            ]
        );
        // The error for an unknown value lists every policy.
        let e = builder_from_toml("read_from = \"fastest\"\nservers = [\"redis://h:1\"]").unwrap_err();
        let shown = shows(&e);
        for policy in ["primary", "prefer-replica", "replica-only", "lowest-latency"] {
            assert!(shown.contains(policy), "{shown}");
        }
        assert!(shown.contains("unknown read_from `fastest`"), "{shown}");
    }
}
