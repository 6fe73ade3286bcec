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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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

#[test]
fn tls_servers_work_with_rediss_urls() {
    let dir = std::env::temp_dir().join(format!("mredis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certs(&dir);
    let path = |f: &str| dir.join(f).display().to_string();
    let tls_server = || {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = RedisServer::with_args(&[
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path("server.crt"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.crt"),
            "--tls-auth-clients",
            "no",
        ]);
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
    let _ = std::fs::remove_dir_all(&dir);
    drop(servers(0));
}
