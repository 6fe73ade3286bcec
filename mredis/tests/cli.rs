//! The `mredis` command-line tool against real servers: locate, stats and
//! rebalance with TOML and twemproxy configurations, exit codes, conflicts,
//! and a rebalance killed with SIGKILL at several moments, then finished.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mredis_tests::{RedisServer, servers};
use redis::Commands;

fn mredis(dir: &Dir, args: &[&str]) -> (bool, String) {
    let (code, text) = mredis_code(dir, args);
    (code == 0, text)
}

/// Runs the tool in `dir`; returns its exit code and stdout + stderr.
fn mredis_code(dir: &Dir, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mredis"))
        .args(args)
        // Journals (kept in the working directory) go to the test's own
        // directory, removed with it.
        .current_dir(&dir.0)
        .output()
        .expect("run mredis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("mredis: mredis:"), "error prefix printed twice: {text}");
    (out.status.code().expect("exited, not killed"), text)
}

/// A scratch directory for configuration files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("mredis-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    /// Writes a ketama/fnv1a_64 TOML configuration of `urls`; returns its
    /// path. The servers are named `s0`, `s1`, ... by their place in the
    /// list, so ketama puts every key in the same place on every run (not by
    /// the random ports); tests list both configurations in the same order.
    fn config(&self, file: &str, urls: &[String]) -> String {
        let list: Vec<String> = urls
            .iter()
            .enumerate()
            .map(|(i, u)| format!("{{ url = \"{u}\", name = \"s{i}\" }}"))
            .collect();
        let text = format!(
            "mode = \"ketama\"\nhash = \"fnv1a_64\"\nservers = [{}]\n",
            list.join(", ")
        );
        let path = self.0.join(file);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(path: &str) -> mredis::MRedis {
    let text = std::fs::read_to_string(Path::new(path)).unwrap();
    mredis::builder_from_toml(&text).unwrap().build().unwrap()
}

/// Closes the client that wrote the test's data (the census of `mredis
/// rebalance` refuses to move while a client of the old configuration is
/// connected) and waits until the servers have seen its connections
/// close; returns a new client of `path`, not connected yet.
fn done_seeding(mr: mredis::MRedis, path: &str, servers: &[&RedisServer]) -> mredis::MRedis {
    drop(mr);
    mredis_tests::wait_until(
        "the seeding client's connections closed",
        Duration::from_secs(10),
        || {
            servers.iter().all(|s| {
                !s.client_names()
                    .iter()
                    .any(|n| n.starts_with("mredis:") && n != "mredis:tool")
            })
        },
    );
    open(path)
}

#[test]
fn locate_stats_and_rebalance() {
    let s = servers(3);
    let dir = Dir::new("basic");
    let old = dir.config("old.toml", &[s[0].url(), s[1].url()]);
    let new = dir.config("new.toml", &[s[0].url(), s[1].url(), s[2].url()]);
    let (old, new) = (old.as_str(), new.as_str());

    let text = std::fs::read_to_string(old).unwrap();
    let mr = mredis::builder_from_toml(&text).unwrap().build().unwrap();
    for i in 0..2000 {
        mr.set::<_, _, ()>(format!("key:{i}"), i).unwrap();
    }
    let mr = done_seeding(mr, old, &[&s[0], &s[1]]);

    let (ok, out) = mredis(&dir, &["locate", "--config", old, "key:1", "key:2"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("key:1\t{}", mr.server_for("key:1").unwrap())),
        "{out}"
    );

    let (ok, out) = mredis(&dir, &["stats", "--config", old]);
    assert!(ok, "{out}");
    assert!(
        out.contains("total") && out.contains("2000") && out.contains("imbalance"),
        "{out}"
    );

    let (ok, out) = mredis(&dir, &["rebalance", "--from", old, "--to", new, "--dry-run", "--quiet"]);
    assert!(ok, "{out}");
    assert!(out.contains("would move"), "{out}");
    assert!(out.contains(&format!("{} -> {}", s[0].name(), s[2].name())), "{out}");
    assert!(out.contains("would refuse without --allow-volatile"), "{out}");
    assert_eq!(s[2].dbsize(), 0);

    // The harness's servers have no persistence.
    let (code, out) = mredis_code(&dir, &["rebalance", "--from", old, "--to", new, "--quiet"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("mredis: refusing to move keys to") && out.contains(&s[2].name()),
        "{out}"
    );
    assert_eq!(s[2].dbsize(), 0);

    // Not a terminal: plain progress lines on stderr.
    let (ok, out) = mredis(
        &dir,
        &[
            "rebalance",
            "--from",
            old,
            "--to",
            new,
            "--allow-volatile",
            "--batch-size",
            "7",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("rebalance: ") && out.contains("keys scanned"), "{out}");
    assert!(out.contains("verification: 0 keys away"), "{out}");
    assert!(s[2].dbsize() > 300, "about a third moved to the new server");
    let text = std::fs::read_to_string(new).unwrap();
    let moved = mredis::builder_from_toml(&text).unwrap().build().unwrap();
    for i in 0..2000 {
        assert_eq!(moved.get::<_, i64>(format!("key:{i}")).unwrap(), i);
    }

    let (ok, out) = mredis(&dir, &["stats", "--config", "/nonexistent.toml"]);
    assert!(!ok && out.contains("cannot read"), "{out}");
}

#[test]
fn help_documents_exit_codes_and_replace_is_gone() {
    let dir = Dir::new("help");
    let (ok, out) = mredis(&dir, &["rebalance", "--help"]);
    assert!(ok, "{out}");
    assert!(out.contains("Exit codes") && out.contains("  2  conflicts"), "{out}");
    assert!(out.contains("--prefer") && out.contains("--allow-volatile") && out.contains("--pool"));
    assert!(!out.contains("--replace"), "{out}");
    let (code, out) = mredis_code(&dir, &["rebalance", "--from", "a", "--to", "b", "--replace"]);
    assert_eq!(code, 2, "clap's usage error: {out}");
}

#[test]
fn errors_name_the_server_once_and_yaml_needs_a_pool() {
    let s = servers(1);
    let dir = Dir::new("errors");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let old = dir.config("old.toml", &[s[0].url()]);
    let new = dir.config("new.toml", &[s[0].url(), format!("redis://127.0.0.1:{closed}/0")]);
    let (code, out) = mredis_code(&dir, &["rebalance", "--from", &old, "--to", &new, "--quiet"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("mredis: "), "{out}");
    assert!(out.contains(&format!("127.0.0.1:{closed}:0")), "{out}");
    assert!(out.contains("rerunning is safe"), "{out}");

    let yaml = dir.0.join("nutcracker.yml");
    std::fs::write(
        &yaml,
        format!(
            "alpha:\n  listen: 127.0.0.1:22121\n  hash: fnv1a_64\n  distribution: ketama\n  servers:\n   - 127.0.0.1:{}:1\n",
            s[0].port()
        ),
    )
    .unwrap();
    let yaml = yaml.to_str().unwrap();
    let (code, out) = mredis_code(&dir, &["rebalance", "--from", yaml, "--to", yaml, "--dry-run"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--pool NAME is needed"), "{out}");
    let (code, out) = mredis_code(
        &dir,
        &["rebalance", "--from", yaml, "--to", yaml, "--pool", "alpha", "--quiet"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("moved 0"), "{out}");
}

#[test]
fn conflicts_exit_2_and_prefer_prints_what_it_discards_first() {
    let s = servers(3);
    let dir = Dir::new("conflicts");
    let old = dir.config("old.toml", &[s[0].url(), s[1].url()]);
    let new = dir.config("new.toml", &[s[0].url(), s[1].url(), s[2].url()]);
    let (from, to) = (open(&old), open(&new));
    for i in 0..500 {
        from.set::<_, _, ()>(format!("c{i}"), i).unwrap();
    }
    let from = done_seeding(from, &old, &[&s[0], &s[1]]);
    let clash = (0..500)
        .map(|i| format!("c{i}"))
        .find(|k| from.server_index_for(k.as_bytes()) != to.server_index_for(k.as_bytes()))
        .expect("a key that moves from s0, s1 to s2");
    let (src, dst) = (from.server_for(&clash).unwrap(), to.server_for(&clash).unwrap());
    redis::cmd("SET")
        .arg(&clash)
        .arg("outside")
        .exec(&mut s[2].conn())
        .unwrap();
    assert_eq!(dst, s[2].name());

    let args = ["rebalance", "--from", &old, "--to", &new, "--quiet", "--allow-volatile"];
    let (code, out) = mredis_code(&dir, &args);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!(
            "conflict: `{clash}` differs on {src} (old) and {dst} (new); both copies kept"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "misplaced: `{clash}` on {src}, belongs on {dst} (it is on both"
        )),
        "{out}"
    );

    let mut args = args.to_vec();
    args.extend(["--prefer", "source"]);
    let (code, out) = mredis_code(&dir, &args);
    assert_eq!(code, 0, "{out}");
    let announced = out
        .find(&format!("discarding `{clash}` on {dst} (keeping the copy on {src})"))
        .unwrap_or_else(|| panic!("{out}"));
    let done = out
        .find(&format!("discarded `{clash}` on {dst}"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(announced < done, "{out}");
    assert!(out.contains("verification: 0 keys away"), "{out}");
    let i: i64 = clash[1..].parse().unwrap();
    assert_eq!(to.get::<_, i64>(&clash).unwrap(), i, "the source's copy won");
}

#[test]
fn no_password_in_any_output() {
    const CANARY: &str = "canary-Pw-7f3a9";
    let plain = RedisServer::new();
    let guarded = RedisServer::with_args(&["--requirepass", CANARY]);
    let dir = Dir::new("password");
    let url = format!("redis://:{CANARY}@127.0.0.1:{}/0", guarded.port());
    let old = dir.config("old.toml", &[plain.url()]);
    let new = dir.config("new.toml", std::slice::from_ref(&url));
    let from = open(&old);
    for i in 0..300 {
        from.set::<_, _, ()>(format!("p{i}"), i).unwrap();
    }
    done_seeding(from, &old, &[&plain]);
    let (code, out) = mredis_code(&dir, &["rebalance", "--from", &old, "--to", &new, "--allow-volatile"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains(CANARY), "{out}");
    // Checked on a plain connection: a client of `new` connected would be
    // in the way of the next move (from `new`).
    let mut raw = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    assert_eq!(raw.get::<_, i64>("p7").unwrap(), 7);
    drop(raw);

    // An ACL user (MIGRATE ... AUTH2 user password).
    // The default user is off: only `mover` with its password gets in.
    let acl = RedisServer::with_args(&[
        "--user",
        "mover",
        "on",
        &format!(">{CANARY}"),
        "~*",
        "&*",
        "+@all",
        "--user",
        "default",
        "off",
    ]);
    let user_url = format!("redis://mover:{CANARY}@127.0.0.1:{}/0", acl.port());
    let users = dir.config("users.toml", &[user_url]);
    let (code, out) = mredis_code(&dir, &["rebalance", "--from", &new, "--to", &users, "--allow-volatile"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains(CANARY), "{out}");
    let moved = open(&users);
    for i in 0..300 {
        assert_eq!(moved.get::<_, i64>(format!("p{i}")).unwrap(), i);
    }

    // A wrong password: an error naming the server, without the password.
    let wrong = dir.config(
        "wrong.toml",
        &[format!("redis://:{CANARY}-x@127.0.0.1:{}/0", guarded.port())],
    );
    let (code, out) = mredis_code(&dir, &["rebalance", "--from", &old, "--to", &wrong, "--allow-volatile"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&guarded.name()), "{out}");
    assert!(!out.contains(CANARY), "{out}");
}

/// DUMP of every key of `servers`, by key.
fn dumps(servers: &[RedisServer]) -> HashMap<Vec<u8>, Vec<u8>> {
    let mut out = HashMap::new();
    for s in servers {
        let mut con = s.conn();
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
        if keys.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("DUMP").arg(k);
        }
        let values: Vec<Vec<u8>> = pipe.query(&mut con).unwrap();
        for (k, v) in keys.into_iter().zip(values) {
            assert!(
                out.insert(k.clone(), v).is_none(),
                "{} is on two servers",
                String::from_utf8_lossy(&k)
            );
        }
    }
    out
}

#[test]
fn killed_with_sigkill_at_any_moment_then_rerun_finishes() {
    const N: usize = 120_000;
    let s: Vec<RedisServer> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| RedisServer::with_args(&["--appendonly", "yes"])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let dir = Dir::new("sigkill");
    let old = dir.config("old.toml", &[s[0].url(), s[1].url(), s[2].url()]);
    let new = dir.config("new.toml", &[s[0].url(), s[1].url(), s[2].url(), s[3].url()]);
    let from = open(&old);
    for start in (0..N).step_by(10_000) {
        let mut pipe = from.pipeline_all();
        for i in start..start + 10_000 {
            match i % 3 {
                0 => pipe.set(format!("k{i}"), i).ignore(),
                1 => pipe.rpush(format!("k{i}"), &[i, i + 1][..]).ignore(),
                _ => pipe.hset(format!("k{i}"), "f", i).ignore(),
            };
        }
        pipe.query::<()>(&from).unwrap();
    }
    done_seeding(from, &old, &[&s[0], &s[1], &s[2]]);
    let before = dumps(&s);
    assert_eq!(before.len(), N);

    // Kill it as soon as it has moved something, then a little later, then later still.
    let mut kills = 0;
    for threshold in [1, 2_000, 10_000] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mredis"))
            .args([
                "rebalance",
                "--from",
                &old,
                "--to",
                &new,
                "--quiet",
                "--timeout-ms",
                "2000",
            ])
            .current_dir(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if s[3].dbsize() >= threshold {
                child.kill().unwrap(); // SIGKILL
                kills += 1;
                eprintln!("killed after {} keys reached the new server", s[3].dbsize());
                break;
            }
            assert!(Instant::now() < deadline, "no progress");
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.wait();
    }
    assert!(kills >= 1, "the tool was never killed mid-run");

    let (code, out) = mredis_code(&dir, &["rebalance", "--from", &old, "--to", &new, "--quiet"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verification: 0 keys away"), "{out}");
    // The journal the killed runs left was used, then removed.
    let mut id = String::new();
    for server in open(&old).servers().into_iter().chain(open(&new).servers()) {
        id.push_str(server.name());
        id.push('\n');
    }
    let journal = dir.0.join(format!(
        ".mredis-rebalance-{:08x}.journal",
        crc32fast::hash(id.as_bytes())
    ));
    assert!(
        !journal.exists(),
        "{} is left after a run with nothing left to do",
        journal.display()
    );
    let after = dumps(&s);
    assert_eq!(after.len(), N);
    assert!(before == after, "values changed");
    let to = open(&new);
    for i in (0..N).step_by(997) {
        let key = format!("k{i}");
        let owner = to.server_index_for(key.as_bytes());
        let here: i64 = redis::cmd("EXISTS").arg(&key).query(&mut s[owner].conn()).unwrap();
        assert_eq!(here, 1, "{key} is on its new server");
    }
}

#[test]
fn stats_with_a_wrong_password_says_it_once_in_words() {
    let s = RedisServer::new();
    let guarded = RedisServer::with_args(&["--requirepass", "right-one"]);
    let dir = Dir::new("stats-auth");
    let path = dir.config(
        "fleet.toml",
        &[s.url(), format!("redis://:wrong-one@127.0.0.1:{}/0", guarded.port())],
    );
    let (code, out) = mredis_code(&dir, &["stats", "--config", &path]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        out,
        format!(
            "mredis: DBSIZE failed on 1 of 2 servers: {}: authentication failed as user `default`: wrong \
             password, or the user does not exist or is disabled. Succeeded on: {} (1)\n",
            guarded.name(),
            s.name()
        )
    );
}

#[test]
fn stats_counts_a_server_listed_under_two_names_once() {
    let s = servers(2);
    for i in 0..3 {
        s[0].conn().set::<_, _, ()>(format!("a{i}"), i).unwrap();
    }
    s[1].conn().set::<_, _, ()>("b", 1).unwrap();
    let dir = Dir::new("stats-twice");
    let twice = format!("redis://localhost:{}/0", s[0].port());
    let path = dir.config("fleet.toml", &[s[0].url(), s[1].url(), twice]);
    let (code, out) = mredis_code(&dir, &["stats", "--config", &path]);
    assert_eq!(code, 0, "{out}");
    let (a, b, alias) = (s[0].name(), s[1].name(), format!("localhost:{}:0", s[0].port()));
    let want = [
        format!("{:<40} {:>12} {:>8}", "server", "keys", "share"),
        format!("{a:<40} {:>12} {:>7.2}%", 3, 75.0),
        format!("{b:<40} {:>12} {:>7.2}%", 1, 25.0),
        format!("{alias:<40} {:>12}  same server as {a}, not counted again", 3),
        format!("{:<40} {:>12}", "total", 4),
        "imbalance (largest / mean): 1.500".to_string(),
        format!(
            "mredis: warning: {a} and {alias} are the same server (same run_id and database); its keys are \
             counted once"
        ),
    ];
    assert_eq!(out, want.join("\n") + "\n");
}

#[test]
fn stats_prints_each_shard_nodes_latency() {
    let primary = RedisServer::new();
    let replica = RedisServer::with_args(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
    mredis_tests::wait_until("the replica linked", Duration::from_secs(10), || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica.conn())
            .unwrap();
        info.contains("master_link_status:up")
    });
    let dir = Dir::new("stats-latency");
    let path = dir.0.join("fleet.toml");
    std::fs::write(
        &path,
        format!(
            "read_from = \"lowest-latency\"\nservers = [{{ url = \"{}\", replicas = [\"{}\"] }}]\n",
            primary.url(),
            replica.url()
        ),
    )
    .unwrap();
    let (ok, out) = mredis(&dir, &["stats", "--config", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    let table = out
        .split_once("latency (smoothed PING)")
        .unwrap_or_else(|| panic!("no latency table: {out}"))
        .1;
    for (addr, role) in [(primary.addr(), "primary"), (replica.addr(), "replica")] {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(addr.as_str()))
            .unwrap_or_else(|| panic!("no latency line for {addr}: {out}"));
        assert_eq!(line.split_whitespace().nth(2), Some(role), "{line}");
        assert!(line.ends_with(" ms"), "{addr} measured: {line}");
    }
}

/// This test process is the application, the tool a process of its own: a
/// client still on the old configuration stops the rebalance (exit 3,
/// named, nothing moved); `--wait` waits while the application switches
/// at run time (`reconfigure`, no restart), then the move runs and
/// finishes.
#[test]
fn a_client_on_the_old_configuration_stops_the_rebalance_until_it_reconfigures() {
    use std::io::BufRead;
    let s = servers(3);
    let dir = Dir::new("census");
    let old = dir.config("old.toml", &[s[0].url(), s[1].url()]);
    let new = dir.config("new.toml", &[s[0].url(), s[1].url(), s[2].url()]);
    let app = open(&old);
    for i in 0..300 {
        app.set::<_, _, ()>(format!("a{i}"), i).unwrap();
    }
    let sizes = || s.iter().map(RedisServer::dbsize).collect::<Vec<_>>();
    let before = sizes();

    let move_args = ["rebalance", "--from", &old, "--to", &new, "--quiet", "--allow-volatile"];
    let (code, out) = mredis_code(&dir, &move_args);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("nothing was moved") && out.contains("old configuration") && out.contains("mredis:"),
        "{out}"
    );
    assert_eq!(sizes(), before, "nothing moved");
    let (code, out) = mredis_code(&dir, &["clients", "--config", &new, "--from", &old]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("not ready") && out.contains("old configuration"), "{out}");
    let help = mredis_code(&dir, &["rebalance", "--help"]).1;
    assert!(help.contains("  3  clients that are not migration-aware"), "{help}");

    // --wait: the tool says whom it waits for; the application switches.
    let mut tool = Command::new(env!("CARGO_BIN_EXE_mredis"))
        .args(move_args)
        .args(["--wait", "60"])
        .current_dir(&dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(tool.stderr.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("rebalance: waiting up to 60 s") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the tool ended without waiting"
        );
    }
    let toml = |p: &str| mredis::builder_from_toml(&std::fs::read_to_string(p).unwrap()).unwrap();
    app.reconfigure(toml(&new).migrating_from(toml(&old))).unwrap();
    // Reads through the switched client, while the tool moves keys.
    for i in 0..300 {
        assert_eq!(app.get::<_, i64>(format!("a{i}")).unwrap(), i);
    }
    let out = tool.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("finished: migration-aware clients"), "{text}");
    assert!(s[2].dbsize() > 0, "keys moved to the new server");
    let plain = open(&new);
    for i in 0..300 {
        assert_eq!(app.get::<_, i64>(format!("a{i}")).unwrap(), i);
        let owner = plain.server_for(format!("a{i}")).unwrap();
        let on = s.iter().position(|x| x.name() == owner).unwrap();
        assert!(s[on].keys().contains(&format!("a{i}")), "a{i} is on its new server");
    }
    let (code, out) = mredis_code(&dir, &["clients", "--config", &new, "--from", &old]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ready: every mredis client is migration-aware"), "{out}");
}
