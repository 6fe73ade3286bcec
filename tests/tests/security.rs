//! Security: ACL users with passwords, TLS (`rediss://`) against a real
//! redis-server with certificates made here, and a password that never
//! shows up in any Debug, Display or error text.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mredis::{MRedis, PerServer, Server};
use mredis_tests::{RedisServer, servers};

const SECRET: &str = "LeakCanary-7f3a9e";

fn acl_server() -> RedisServer {
    let rule = format!(">{SECRET}");
    RedisServer::with_args(&[
        "--user", "default", "off", "--user", "alice", "on", &rule, "~*", "&*", "+@all",
    ])
}

fn url_with_password(s: &RedisServer, password: &str) -> String {
    format!("redis://alice:{password}@127.0.0.1:{}/0", s.port())
}

#[test]
fn acl_users_with_passwords_work_per_server() {
    let a = acl_server();
    let b = acl_server();
    let mr = MRedis::new([url_with_password(&a, SECRET), url_with_password(&b, SECRET)]).unwrap();
    for i in 0..20 {
        mr.set::<_, _, ()>(format!("k{i}"), i).unwrap();
    }
    let who: PerServer<String> = mr.acl_whoami().unwrap();
    assert!(who.values().all(|w| w == "alice"));
    let sizes: PerServer<i64> = mr.dbsize().unwrap();
    assert_eq!(sizes.values().sum::<i64>(), 20);
    // Without the password the server refuses, and the error says so.
    let anon = MRedis::new([a.url()]).unwrap();
    let err = anon.get::<_, Option<String>>("k1").unwrap_err();
    assert!(
        err.to_string().contains("NOAUTH") || err.to_string().to_lowercase().contains("auth"),
        "{err}"
    );
}

/// Every text a user or a log could see of these values.
fn texts_of<T: std::fmt::Debug>(value: &T) -> String {
    format!("{value:?} {value:#?}")
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} shows the password: {text}");
}

#[test]
fn the_password_never_appears_in_debug_display_or_errors() {
    let a = acl_server();
    let good = url_with_password(&a, SECRET);
    let mr = MRedis::new([good.clone()]).unwrap();
    mr.set::<_, _, ()>("k", 1).unwrap();
    assert_no_secret("MRedis", &texts_of(&mr));
    assert_no_secret("Server", &texts_of(&mr.servers()[0]));
    assert_no_secret("Server Display", &mr.servers()[0].to_string());
    assert_no_secret("KeyPipeline", &texts_of(&mr.pipeline("k").unwrap()));
    assert_no_secret("FleetPipeline", &texts_of(&mr.pipeline_all()));
    let builder = MRedis::builder().servers([good.clone()]);
    assert_no_secret("Builder", &texts_of(&builder));

    // A wrong password: the error must not echo either password.
    let wrong_secret = format!("{SECRET}-wrong");
    let bad = MRedis::new([url_with_password(&a, &wrong_secret)]).unwrap();
    let err = bad.get::<_, Option<String>>("k").unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(&wrong_secret), "{text}");
    assert_no_secret("auth error", &text);

    // An unreachable server with a password in its URL.
    let closed = mredis_tests::closed_port();
    let port = closed.port();
    let down = MRedis::builder()
        .servers([format!("redis://alice:{SECRET}@127.0.0.1:{port}/0")])
        .connect_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = down.get::<_, Option<String>>("k").unwrap_err();
    assert_no_secret("connection error", &format!("{err} {err:?}"));
    let fan = down.dbsize::<i64>().unwrap_err();
    assert_no_secret("fan-out error", &format!("{fan} {fan:?}"));
    assert_no_secret(
        "fan-out error as RedisError",
        &format!("{:?}", redis::RedisError::from(fan)),
    );

    // Malformed configuration that contains a password.
    for url in [
        format!("redis://alice:{SECRET}@127.0.0.1:notaport/0"),
        format!("redis://alice:{SECRET}@/0"),
        format!("redis://alice:{SECRET}@127.0.0.1:1/notadb"),
    ] {
        let err = MRedis::new([url.clone()]).unwrap_err();
        assert_no_secret("configuration error", &format!("{err} {err:?}"));
    }
    let dup = MRedis::new([good.clone(), good]).unwrap_err();
    assert_no_secret("duplicate error", &format!("{dup} {dup:?}"));
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        status.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl CLI.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=mredis-test-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server's arguments for a TLS port with the certificates of
/// [`make_certs`] in `dir` (clients need no certificate).
fn tls_args(dir: &Path, port: u16) -> Vec<String> {
    let path = |f: &str| dir.join(f).display().to_string();
    vec![
        "--tls-port".to_string(),
        port.to_string(),
        "--tls-cert-file".to_string(),
        path("server.crt"),
        "--tls-key-file".to_string(),
        path("server.key"),
        "--tls-ca-cert-file".to_string(),
        path("ca.crt"),
        "--tls-auth-clients".to_string(),
        "no".to_string(),
    ]
}

#[test]
fn tls_servers_work_with_rediss_urls() {
    if !mredis_tests::server_has_tls() {
        // The valkey-server and redis-server 8.2 the CI takes from PyPI
        // wheels are built without TLS; TLS is tested against Debian's
        // redis-server.
        eprintln!("skipped: this server binary has no TLS support");
        return;
    }
    let scratch = mredis_tests::TempDir::new("tls");
    let dir = scratch.path();
    make_certs(dir);
    let tls_server = || {
        let port = free_port();
        let args = tls_args(dir, port);
        let server = RedisServer::with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
        (server, port)
    };
    let (_a, pa) = tls_server();
    let (_b, pb) = tls_server();
    let urls = [
        format!("rediss://127.0.0.1:{pa}/0#insecure"),
        format!("rediss://127.0.0.1:{pb}/0#insecure"),
    ];
    let mr = MRedis::new(urls.clone()).unwrap();
    assert!(mr.servers().iter().all(|s| s.tls()));
    for i in 0..20 {
        mr.set::<_, _, ()>(format!("t{i}"), i).unwrap();
    }
    let sizes: PerServer<i64> = mr.dbsize().unwrap();
    assert_eq!(sizes.values().sum::<i64>(), 20);
    assert!(sizes.values().all(|&n| n > 0));
    // Without TLS the TLS port does not answer like Redis.
    let plain = MRedis::builder()
        .servers([format!("redis://127.0.0.1:{pa}/0")])
        .response_timeout(Some(Duration::from_millis(500)))
        .build()
        .unwrap();
    assert!(plain.get::<_, Option<String>>("t1").is_err());
    // A certificate from an unknown CA is refused when verification is on.
    let strict = MRedis::new([format!("rediss://127.0.0.1:{pa}/0")]).unwrap();
    assert!(strict.get::<_, Option<String>>("t1").is_err());
    // Trusting the test CA, verification passes (certificate for IP 127.0.0.1).
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();
    let verified: Vec<Server> = [pa, pb]
        .iter()
        .map(|p| {
            Server::from_url(&format!("rediss://127.0.0.1:{p}/0"))
                .unwrap()
                .with_tls_root_cert(ca.clone())
        })
        .collect();
    let verified = MRedis::new(verified).unwrap();
    assert_eq!(verified.get::<_, i64>("t1").unwrap(), 1);
    let sizes: PerServer<i64> = verified.dbsize().unwrap();
    assert_eq!(sizes.values().sum::<i64>(), 20);
    drop(servers(0));
}

/// A Sentinel shard whose data servers speak only TLS to their clients
/// and to each other (`tls-replication yes`, the sentinel too): mredis asks
/// the sentinel (plain) for the primary and replicas and reaches them with
/// TLS, certificates verified against the test CA; reads on the replica,
/// and writes after a failover, over TLS.
#[test]
fn sentinel_shards_reach_their_data_servers_with_tls() {
    if !mredis_tests::server_has_tls() {
        eprintln!("skipped: this server binary has no TLS support");
        return;
    }
    let scratch = mredis_tests::TempDir::new("tls-sentinel");
    let dir = scratch.path();
    make_certs(dir);
    let path = |f: &str| dir.join(f).display().to_string();
    let tls_args = |port: u16| {
        let mut args = tls_args(dir, port);
        args.extend(["--tls-replication", "yes", "--repl-diskless-sync-delay", "0"].map(String::from));
        args
    };
    let (tp, tr) = (free_port(), free_port());
    let args = tls_args(tp);
    let mut primary = RedisServer::with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut args = tls_args(tr);
    args.extend(["--replicaof".to_string(), "127.0.0.1".to_string(), tp.to_string()]);
    let _replica = RedisServer::with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let sentinel = mredis_tests::Sentinel::start(&format!(
        "tls-replication yes\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\n\
         sentinel monitor shard-t 127.0.0.1 {tp} 1\nsentinel down-after-milliseconds shard-t 1000\n\
         sentinel failover-timeout shard-t 5000\n",
        path("server.crt"),
        path("server.key"),
        path("ca.crt")
    ));
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();
    let shard = || {
        Server::sentinel("shard-t", [sentinel.url()])
            .unwrap()
            .with_tls()
            .unwrap()
            .with_tls_root_cert(ca.clone())
    };
    let mr = MRedis::builder()
        .servers([shard()])
        .failover_wait(Duration::from_secs(20))
        .build()
        .unwrap();
    assert_eq!(mr.servers()[0].primary_address(), Some(format!("127.0.0.1:{tp}")));
    mr.set::<_, _, ()>("tls:k", "v").unwrap();
    // The replica, as the sentinel reports it (its TLS port), serves reads.
    mredis_tests::wait_until("the sentinel reporting the replica", Duration::from_secs(20), || {
        mr.servers()[0].replica_addresses() == vec![format!("127.0.0.1:{tr}")]
    });
    let replica_only = mr.reading_from(mredis::ReadFrom::ReplicaOnly);
    mredis_tests::wait_until("the write on the replica", Duration::from_secs(10), || {
        replica_only.get::<_, Option<String>>("tls:k").unwrap().as_deref() == Some("v")
    });
    // A failover: the replica, over TLS, becomes the primary.
    primary.stop();
    mredis_tests::wait_until("a write after the failover", Duration::from_secs(30), || {
        mr.set::<_, _, ()>("tls:after", 1).is_ok()
    });
    assert_eq!(mr.servers()[0].primary_address(), Some(format!("127.0.0.1:{tr}")));
    assert_eq!(mr.get::<_, String>("tls:k").unwrap(), "v");
    // Without TLS the data servers' TLS ports do not answer like Redis.
    let plain = MRedis::builder()
        .servers([Server::sentinel("shard-t", [sentinel.url()]).unwrap()])
        .response_timeout(Some(Duration::from_millis(500)))
        .failover_wait(Duration::from_millis(200))
        .build()
        .unwrap();
    assert!(plain.get::<_, Option<String>>("tls:k").is_err());
}

// ---------------------------------------------------------------------------
// The canary: one recognisable password, looked for in every text a user or
// a log could see, on every path a password can take.

const CANARY: &str = "CanaryPw-7f3a";

/// Display and Debug (plain and pretty) of anything that has them.
fn all_texts<T: std::fmt::Display + std::fmt::Debug>(value: &T) -> String {
    format!("{value} {value:?} {value:#?}")
}

fn assert_no_canary(what: &str, text: &str) {
    assert!(!text.contains(CANARY), "{what} shows the password: {text}");
}

/// Every hostile way to write a password into a server address, each of
/// which is an error (the form is ambiguous or wrong) that must not show it.
fn hostile_urls(port: u16) -> Vec<String> {
    [
        // Raw `/`, `#`, `?` in the password: the URL cuts the authority there.
        "redis://:{C}/x@127.0.0.1:{P}",
        "redis://u:{C}/x@127.0.0.1:{P}/0",
        "redis://:{C}#x@127.0.0.1:{P}",
        "redis://u:{C}?x@127.0.0.1:{P}/0",
        // No scheme.
        ":{C}@127.0.0.1:{P}",
        "u:{C}@127.0.0.1:{P}",
        // A password where the user name goes.
        "redis://{C}@127.0.0.1:{P}/0",
        // Other mistakes next to a password.
        "redis://u:{C}@127.0.0.1:99999/0",
        "redis://u:{C}@127.0.0.1:{P}/0?db=3",
        "redis://u:{C}@127.0.0.1:{P}/0?password={C}",
        "redis://u:{C}@127.0.0.1:x{P}/0",
        "redis://u:{C}@/0",
        "redis://u:{C}@127.0.0.1:{P}/notadb",
        "http://u:{C}@127.0.0.1:{P}/0",
    ]
    .iter()
    .map(|u| u.replace("{C}", CANARY).replace("{P}", &port.to_string()))
    .collect()
}

/// Every way to build a client from `url`, each of which must fail without
/// showing the password.
fn assert_every_builder_refuses(url: &str) {
    let e = Server::from_url(url).unwrap_err();
    assert_no_canary(&format!("Server::from_url({url})"), &all_texts(&e));
    let e = MRedis::new([url]).unwrap_err();
    assert_no_canary(&format!("MRedis::new({url})"), &all_texts(&e));
    let builder = MRedis::builder().servers([url]);
    assert_no_canary(&format!("Builder Debug ({url})"), &format!("{builder:?} {builder:#?}"));
    let e = builder.clone().build().unwrap_err();
    assert_no_canary(&format!("Builder::build({url})"), &all_texts(&e));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt.block_on(builder.build_async()).unwrap_err();
    assert_no_canary(&format!("Builder::build_async({url})"), &all_texts(&e));
    let e = rt.block_on(mredis::aio::MRedis::connect([url])).unwrap_err();
    assert_no_canary(&format!("aio::MRedis::connect({url})"), &all_texts(&e));
    // The same URL in a fleet file, as a plain entry, a table, and in [migrating_from].
    let escaped = url.replace('\\', "\\\\").replace('"', "\\\"");
    for toml in [
        format!("servers = [\"{escaped}\"]\n"),
        format!("mode = \"ketama\"\nservers = [{{ url = \"{escaped}\", weight = 2, name = \"a\" }}]\n"),
        format!("servers = [\"redis://127.0.0.1:1/0\"]\n[migrating_from]\nservers = [\"{escaped}\"]\n"),
    ] {
        let e = mredis::builder_from_toml(&toml).unwrap_err();
        assert_no_canary(&format!("builder_from_toml({toml})"), &all_texts(&e));
    }
}

#[test]
fn hostile_urls_are_refused_without_showing_the_password() {
    for url in hostile_urls(6379) {
        assert_every_builder_refuses(&url);
    }
    // The reasons are told, not only "did not parse".
    let reason = |url: &str| Server::from_url(url).unwrap_err().to_string();
    assert!(reason(&hostile_urls(6379)[0]).contains("percent-encode"));
    assert!(reason(&hostile_urls(6379)[4]).contains("missing redis:// scheme"));
    assert!(reason(&hostile_urls(6379)[7]).contains("port 99999 out of range"));
    assert!(reason(&hostile_urls(6379)[8]).contains("`db`"));
    assert!(reason(&hostile_urls(6379)[9]).contains("unknown query parameter `password`"));
}

#[test]
fn twemproxy_files_never_show_the_password() {
    for line in [
        format!("{CANARY}@127.0.0.1:6379:1"),
        format!("u:{CANARY}@127.0.0.1:6379:1 name"),
        format!(":{CANARY}@127.0.0.1:6379:1"),
    ] {
        let yaml = format!("p:\n  distribution: ketama\n  servers:\n   - {line}\n");
        let e = mredis::builder_from_twemproxy_yaml(&yaml, "p").unwrap_err();
        assert_no_canary("twemproxy server line", &all_texts(&e));
        let yaml = format!("p:\n  redis_auth: {CANARY}\n  servers:\n   - {line}\n");
        let e = mredis::builder_from_twemproxy_yaml(&yaml, "p").unwrap_err();
        assert_no_canary("twemproxy server line with redis_auth", &all_texts(&e));
        let e = mredis::server_from_twemproxy_line(&line).unwrap_err();
        assert_no_canary("server_from_twemproxy_line", &all_texts(&e));
    }
    // A broken file around the password.
    let yaml = format!("p:\n  redis_auth: \"{CANARY}\n  servers: [\n");
    let e = mredis::builder_from_twemproxy_yaml(&yaml, "p").unwrap_err();
    assert_no_canary("broken twemproxy file", &all_texts(&e));
}

/// A server that wants `CANARY` as the default user's password, and the
/// same password for ACL user `alice`.
fn canary_server() -> RedisServer {
    let rule = format!(">{CANARY}");
    RedisServer::with_args(&[
        "--requirepass",
        CANARY,
        "--user",
        "alice",
        "on",
        &rule,
        "~*",
        "&*",
        "+@all",
    ])
}

/// Runs a command, a fleet pipeline and a fan-out on `mr` (sync) and on an
/// async client over the same servers; returns their errors' texts.
fn failures_of(builder: mredis::Builder) -> Vec<(String, String)> {
    let mut out = Vec::new();
    assert_no_canary("Builder", &format!("{builder:?} {builder:#?}"));
    let mr = builder.clone().build().unwrap();
    assert_no_canary("MRedis", &format!("{mr:?} {mr:#?}"));
    for s in &mr.servers() {
        assert_no_canary("Server", &all_texts(s));
    }
    let e = mr.get::<_, Option<String>>("k").unwrap_err();
    out.push(("get".to_string(), all_texts(&e)));
    let e = mr
        .pipeline_all()
        .set("a", 1)
        .get("b")
        .query::<((), Option<i64>)>(&mr)
        .unwrap_err();
    out.push(("pipeline_all".to_string(), all_texts(&e)));
    let e = mr.dbsize::<i64>().unwrap_err();
    out.push(("dbsize".to_string(), all_texts(&e)));
    out.push((
        "dbsize as RedisError".to_string(),
        all_texts(&redis::RedisError::from(e)),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let amr = builder.build_async().await.unwrap();
        assert_no_canary("aio::MRedis", &format!("{amr:?} {amr:#?}"));
        let e = amr.get::<_, Option<String>>("k").await.unwrap_err();
        out.push(("async get".to_string(), all_texts(&e)));
        let e = amr
            .pipeline_all()
            .set("a", 1)
            .get("b")
            .query_async::<((), Option<i64>)>(&amr)
            .await
            .unwrap_err();
        out.push(("async pipeline_all".to_string(), all_texts(&e)));
        let e = amr.dbsize::<i64>().await.unwrap_err();
        out.push(("async dbsize".to_string(), all_texts(&e)));
    });
    for (what, text) in &out {
        assert_no_canary(what, text);
    }
    out
}

#[test]
fn a_wrong_password_says_authentication_failed_naming_server_and_user() {
    let s = canary_server();
    let wrong = format!("{CANARY}-wrong");
    for (url, user) in [
        (format!("redis://alice:{wrong}@127.0.0.1:{}/0", s.port()), "alice"),
        (format!("redis://:{wrong}@127.0.0.1:{}/0", s.port()), "default"),
        // RESP3: the refusal comes as HELLO's WRONGPASS reply.
        (
            format!("redis://alice:{wrong}@127.0.0.1:{}/0?protocol=3", s.port()),
            "alice",
        ),
    ] {
        let builder = MRedis::builder().servers([url.as_str()]);
        for (what, text) in failures_of(builder) {
            assert!(text.contains("authentication failed"), "{what}: {text}");
            assert!(text.contains(&s.name()), "{what} does not name the server: {text}");
            assert!(
                text.contains(&format!("`{user}`")),
                "{what} does not name the user: {text}"
            );
            assert!(!text.contains(&wrong), "{what}: {text}");
        }
    }
    // The right password works, on every path, and is shown nowhere.
    for url in [
        format!("redis://alice:{CANARY}@127.0.0.1:{}/0", s.port()),
        format!("redis://:{CANARY}@127.0.0.1:{}/0?protocol=3", s.port()),
    ] {
        let mr = MRedis::new([url.as_str()]).unwrap();
        mr.set::<_, _, ()>("k", 1).unwrap();
        assert_eq!(mr.get::<_, i64>("k").unwrap(), 1);
        assert_no_canary("MRedis", &format!("{mr:?}"));
        let e = mr.get::<_, i64>("missing").unwrap_err();
        assert_no_canary("type error", &all_texts(&e));
    }
    // The same through a fleet file, in both tables.
    let url = format!("redis://alice:{CANARY}@127.0.0.1:{}/0", s.port());
    let toml = format!("servers = [\"{url}\"]\n[migrating_from]\nservers = [{{ url = \"{url}\", name = \"a\" }}]\n");
    let builder = mredis::builder_from_toml(&toml).unwrap();
    assert_no_canary("Builder from TOML", &format!("{builder:?} {builder:#?}"));
    let mr = builder.build().unwrap();
    assert_no_canary("MRedis from TOML", &format!("{mr:?} {mr:#?}"));
    assert_eq!(mr.get::<_, i64>("k").unwrap(), 1);
}

#[test]
fn a_password_with_a_raw_at_sign_works() {
    let password = format!("{CANARY}@x");
    let s = RedisServer::with_args(&["--requirepass", &password]);
    let mr = MRedis::new([format!("redis://:{password}@127.0.0.1:{}/0", s.port())]).unwrap();
    mr.set::<_, _, ()>("k", 1).unwrap();
    assert_eq!(mr.servers()[0].name(), s.name());
    assert_no_canary("MRedis", &format!("{mr:?} {:?}", mr.servers()));
    // Percent-encoded, `/` and `#` work too.
    let password = format!("{CANARY}/y#z");
    let t = RedisServer::with_args(&["--requirepass", &password]);
    let encoded = password.replace('/', "%2F").replace('#', "%23");
    let mr = MRedis::new([format!("redis://:{encoded}@127.0.0.1:{}/0", t.port())]).unwrap();
    mr.set::<_, _, ()>("k", 1).unwrap();
}

#[test]
fn unreachable_servers_never_show_the_password() {
    let closed = mredis_tests::closed_port();
    let port = closed.port();
    let builder = MRedis::builder()
        .servers([format!("redis://alice:{CANARY}@127.0.0.1:{port}/0")])
        .connect_timeout(Duration::from_millis(300));
    for (what, text) in failures_of(builder) {
        assert!(text.contains(&format!("127.0.0.1:{port}:0")), "{what}: {text}");
    }
}

#[test]
fn twemproxy_redis_auth_reaches_every_server() {
    let a = canary_server();
    let b = canary_server();
    let pool = |auth: &str| {
        format!(
            "p:\n  listen: 127.0.0.1:22121\n  hash: md5\n  distribution: ketama\n  redis: true\n  \
             redis_auth: {auth}\n  servers:\n   - 127.0.0.1:{}:1\n   - 127.0.0.1:{}:1\n",
            a.port(),
            b.port()
        )
    };
    let builder = mredis::builder_from_twemproxy_yaml(&pool(CANARY), "p").unwrap();
    assert_no_canary("twemproxy Builder", &format!("{builder:?} {builder:#?}"));
    let mr = builder.build().unwrap();
    assert_no_canary("MRedis", &format!("{mr:?}"));
    for i in 0..40 {
        mr.set::<_, _, ()>(format!("k{i}"), i).unwrap();
    }
    let sizes: PerServer<i64> = mr.dbsize().unwrap();
    assert_eq!(sizes.values().sum::<i64>(), 40);
    assert!(sizes.values().all(|&n| n > 0), "{sizes:?}");
    // Without redis_auth the pool cannot be used (NOAUTH), as with nutcracker.
    let yaml = pool(CANARY).replace(&format!("  redis_auth: {CANARY}\n"), "");
    let none = mredis::builder_from_twemproxy_yaml(&yaml, "p")
        .unwrap()
        .build()
        .unwrap();
    let e = none.get::<_, Option<i64>>("k1").unwrap_err();
    assert_eq!(e.code(), Some("NOAUTH"), "{e}");
    // A wrong redis_auth: authentication failed, naming the server, no password.
    let builder = mredis::builder_from_twemproxy_yaml(&pool(&format!("{CANARY}-wrong")), "p").unwrap();
    for (what, text) in failures_of(builder) {
        assert!(text.contains("authentication failed"), "{what}: {text}");
        assert!(text.contains("`default`"), "{what}: {text}");
    }
}

#[test]
fn two_clients_with_different_users_each_name_their_own() {
    // No process-wide registry of users: each client's error names the user
    // it was configured with, however many clients the process has.
    let s = acl_server();
    let text = |user: &str| {
        let mr = MRedis::builder()
            .servers([format!("redis://{user}:{CANARY}-wrong@127.0.0.1:{}/0", s.port())])
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        mredis::error_text(&mr.get::<_, Option<String>>("k").unwrap_err())
    };
    let (alice, bob) = (text("alice"), text("bob"));
    assert!(alice.contains("as user `alice`") && !alice.contains("bob"), "{alice}");
    assert!(bob.contains("as user `bob`") && !bob.contains("alice"), "{bob}");
    assert_no_canary("alice", &alice);
    assert_no_canary("bob", &bob);
}
