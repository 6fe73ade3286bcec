//! The routed handle (`get_connection()`) sends every command to the same
//! servers as its generated method, and combines their replies as the
//! table's `reply` says: regression tests for the commands where the two
//! used to disagree (the handle asked only the first server), sync and
//! async, checked on what each of three real servers holds.

use std::collections::HashMap;

use mredis::{MRedis, PerServer};
use mredis_tests::{RedisServer, TempDir, servers, urls};
use redis::{Cmd, RedisResult, Value};

/// One way to send a command through a handle (sync or async).
type Send<'a> = &'a mut dyn FnMut(&Cmd) -> RedisResult<Value>;

fn cmd(words: &[&str]) -> Cmd {
    let mut c = redis::cmd(words[0]);
    for w in &words[1..] {
        c.arg(*w);
    }
    c
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        other => panic!("not text: {other:?}"),
    }
}

/// A per-server reply as (server name -> reply).
fn per_server(v: Value) -> HashMap<String, Value> {
    let Value::Map(entries) = v else {
        panic!("not a map of server to reply: {v:?}")
    };
    entries.into_iter().map(|(k, v)| (text(&k), v)).collect()
}

fn info_field(server: &RedisServer, section: &str, field: &str) -> String {
    let info: String = redis::cmd("INFO").arg(section).query(&mut server.conn()).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
        .trim()
        .to_string()
}

/// Every check, written once against a way to send.
fn every_check(mr: &MRedis, s: &[RedisServer], send: Send<'_>) {
    // CLIENT LIST: every server's clients, one list.
    let list = text(&send(&cmd(&["CLIENT", "LIST"])).unwrap());
    for x in s {
        assert!(
            list.contains(&format!("laddr=127.0.0.1:{}", x.port())),
            "CLIENT LIST lacks {}: {list}",
            x.name()
        );
    }

    // PUBSUB CHANNELS / NUMSUB / NUMPAT: a subscriber on every server.
    let mut subs: Vec<redis::Connection> = Vec::new();
    for (i, x) in s.iter().enumerate() {
        let mut con = x.conn();
        redis::cmd("SUBSCRIBE")
            .arg(format!("agree-ch-{i}"))
            .exec(&mut con)
            .unwrap();
        subs.push(con);
        let mut pcon = x.conn();
        redis::cmd("PSUBSCRIBE")
            .arg(format!("agree-pat-{i}-*"))
            .exec(&mut pcon)
            .unwrap();
        subs.push(pcon);
    }
    let Value::Array(channels) = send(&cmd(&["PUBSUB", "CHANNELS", "agree-ch-*"])).unwrap() else {
        panic!("PUBSUB CHANNELS is an array")
    };
    let mut channels: Vec<String> = channels.iter().map(text).collect();
    channels.sort();
    assert_eq!(channels, ["agree-ch-0", "agree-ch-1", "agree-ch-2"]);
    let numpat = send(&cmd(&["PUBSUB", "NUMPAT"])).unwrap();
    assert_eq!(numpat, Value::Int(3), "one pattern on each of 3 servers");
    let numsub = send(&cmd(&["PUBSUB", "NUMSUB", "agree-ch-2", "agree-ch-0", "nobody"])).unwrap();
    let Value::Array(pairs) = numsub else {
        panic!("NUMSUB is an array")
    };
    let pairs: Vec<(String, i64)> = pairs
        .chunks(2)
        .map(|p| {
            let Value::Int(n) = p[1] else { panic!("{p:?}") };
            (text(&p[0]), n)
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("agree-ch-2".to_string(), 1),
            ("agree-ch-0".to_string(), 1),
            ("nobody".to_string(), 0)
        ],
        "subscribers counted on every server"
    );
    drop(subs);

    // RANDOMKEY: only the last server holds a key.
    redis::cmd("FLUSHALL").exec(&mut s[0].conn()).unwrap();
    redis::cmd("FLUSHALL").exec(&mut s[1].conn()).unwrap();
    redis::cmd("FLUSHALL").exec(&mut s[2].conn()).unwrap();
    redis::cmd("SET")
        .arg("only-here")
        .arg(1)
        .exec(&mut s[2].conn())
        .unwrap();
    assert_eq!(
        send(&cmd(&["RANDOMKEY"])).unwrap(),
        Value::BulkString(b"only-here".to_vec())
    );
    redis::cmd("DEL").arg("only-here").exec(&mut s[2].conn()).unwrap();
    assert_eq!(send(&cmd(&["RANDOMKEY"])).unwrap(), Value::Nil, "no key anywhere");

    // SAVE: every server saves its own changes.
    for (i, x) in s.iter().enumerate() {
        for j in 0..=i {
            redis::cmd("SET")
                .arg(format!("save:{j}"))
                .arg(j)
                .exec(&mut x.conn())
                .unwrap();
        }
        assert_ne!(info_field(x, "persistence", "rdb_changes_since_last_save"), "0");
    }
    send(&cmd(&["SAVE"])).unwrap();
    for x in s {
        assert_eq!(
            info_field(x, "persistence", "rdb_changes_since_last_save"),
            "0",
            "{} saved",
            x.name()
        );
    }

    // DBSIZE: summed, as the method's per-server results add up.
    let sizes: PerServer<i64> = mr.dbsize().unwrap();
    assert_eq!(send(&cmd(&["DBSIZE"])).unwrap(), Value::Int(sizes.values().sum()));
    assert_eq!(sizes.values().sum::<i64>(), 6);

    // DEL across servers: the table's merge (sum), whatever the servers' tips.
    let keys: Vec<String> = (0..3).map(|j| format!("save:{j}")).collect();
    let mut del = redis::cmd("DEL");
    del.arg(&keys);
    let placed: i64 = keys
        .iter()
        .filter(|k| mr.exists::<_, bool>(k.as_str()).unwrap())
        .count() as i64;
    assert_eq!(send(&del).unwrap(), Value::Int(placed));

    // CONFIG GET: one reply per server, each its own.
    for (i, x) in s.iter().enumerate() {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(100_000_000 * (i + 1))
            .exec(&mut x.conn())
            .unwrap();
    }
    let got = per_server(send(&cmd(&["CONFIG", "GET", "maxmemory"])).unwrap());
    assert_eq!(got.len(), 3, "{got:?}");
    for (i, x) in s.iter().enumerate() {
        let reply = format!("{:?}", got[&x.name()]);
        assert!(
            reply.contains(&format!("{}", 100_000_000 * (i + 1))),
            "{}: {reply}",
            x.name()
        );
    }

    // LASTSAVE, FUNCTION LIST, ACL USERS: every server's own answer.
    for words in [&["LASTSAVE"][..], &["FUNCTION", "LIST"], &["ACL", "USERS"]] {
        let got = per_server(send(&cmd(words)).unwrap());
        let mut names: Vec<&String> = got.keys().collect();
        names.sort();
        let mut want: Vec<String> = s.iter().map(|x| x.name()).collect();
        want.sort();
        assert_eq!(names, want.iter().collect::<Vec<_>>(), "{words:?}");
    }

    // A keyless command the table does not know is refused, naming it.
    let err = send(&cmd(&["NOSUCHCOMMAND"])).unwrap_err();
    assert!(err.to_string().contains("NOSUCHCOMMAND"), "{err}");
}

/// Three servers that read their users from an ACL file each.
fn with_acl_files(dir: &TempDir) -> Vec<RedisServer> {
    (0..3)
        .map(|i| {
            let file = dir.path().join(format!("users-{i}.acl"));
            std::fs::write(&file, "user default on nopass ~* &* +@all\n").unwrap();
            RedisServer::with_args(&["--aclfile", file.to_str().unwrap()])
        })
        .collect()
}

fn users(server: &RedisServer) -> Vec<String> {
    redis::cmd("ACL").arg("USERS").query(&mut server.conn()).unwrap()
}

/// ACL SETUSER creates the user on every server; ACL LOAD (the files do not
/// have it) removes it from every server.
fn acl_check(s: &[RedisServer], send: Send<'_>) {
    send(&cmd(&["ACL", "SETUSER", "visitor", "on", ">pw", "~*", "+get"])).unwrap();
    for x in s {
        assert!(users(x).contains(&"visitor".to_string()), "{} has the user", x.name());
    }
    assert_eq!(send(&cmd(&["ACL", "LOAD"])).unwrap(), Value::Okay);
    for x in s {
        assert_eq!(users(x), ["default"], "{} reloaded its file", x.name());
    }
}

#[test]
fn the_sync_handle_reaches_every_server_like_the_methods() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    let mut con = mr.get_connection().unwrap();
    every_check(&mr, &s, &mut |c| redis::ConnectionLike::req_command(&mut con, c));

    let dir = TempDir::new("acl");
    let s = with_acl_files(&dir);
    let mr = MRedis::new(urls(&s)).unwrap();
    let mut con = mr.get_connection().unwrap();
    acl_check(&s, &mut |c| redis::ConnectionLike::req_command(&mut con, c));
}

#[test]
fn the_async_handle_reaches_every_server_like_the_methods() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = servers(3);
    let sync = MRedis::new(urls(&s)).unwrap();
    let mr = rt.block_on(mredis::aio::MRedis::connect(urls(&s))).unwrap();
    let mut con = rt.block_on(mr.get_connection()).unwrap();
    every_check(&sync, &s, &mut |c| {
        rt.block_on(redis::aio::ConnectionLike::req_packed_command(&mut con, c))
    });

    let dir = TempDir::new("acl-async");
    let s = with_acl_files(&dir);
    let mr = rt.block_on(mredis::aio::MRedis::connect(urls(&s))).unwrap();
    let mut con = rt.block_on(mr.get_connection()).unwrap();
    acl_check(&s, &mut |c| {
        rt.block_on(redis::aio::ConnectionLike::req_packed_command(&mut con, c))
    });
}

/// Every `all` row of the table states how its replies combine on a handle.
#[test]
fn every_all_row_states_its_reply() {
    for c in mredis::COMMANDS {
        assert_eq!(
            c.reply.is_some(),
            c.class == mredis::RouteClass::All,
            "{}: `reply` exactly on `all` rows",
            c.name
        );
    }
}

/// The handle routes by the table alone: a user who may not run COMMAND
/// (ACL `-command`) still gets every table command routed as the methods
/// route it, keys read from the table's `key_spec` (MSET split, EVAL's
/// numkeys, OBJECT ENCODING's key after the subcommand, PUBLISH by
/// channel); a command the table does not know is an error that says why.
#[test]
fn the_table_routes_without_the_servers_command_metadata() {
    let s = servers(3);
    for x in &s {
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", "nocmd", "on", ">pw", "~*", "&*", "+@all", "-command"])
            .query(&mut x.conn())
            .unwrap();
    }
    let urls: Vec<String> = s
        .iter()
        .map(|x| format!("redis://nocmd:pw@127.0.0.1:{}/0", x.port()))
        .collect();
    let mr = MRedis::new(urls).unwrap();
    let mut con = mr.get_connection().unwrap();
    let keys: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    let mut mset = redis::cmd("MSET");
    for k in &keys {
        mset.arg(k).arg(k);
    }
    let _: () = mset.query(&mut con).unwrap();
    for k in &keys {
        let owner = &s[mr.server_index_for(k.as_bytes())];
        let stored: Option<String> = redis::cmd("GET").arg(k).query(&mut owner.conn()).unwrap();
        assert_eq!(
            stored.as_deref(),
            Some(k.as_str()),
            "{k} not on its owner {}",
            owner.name()
        );
    }
    let spread = s.iter().filter(|x| x.dbsize() > 0).count();
    assert!(spread >= 2, "30 keys on one server only");
    // EVAL: the key after numkeys decides the server.
    let k = &keys[7];
    let v: String = redis::cmd("EVAL")
        .arg("return redis.call('GET', KEYS[1])")
        .arg(1)
        .arg(k)
        .query(&mut con)
        .unwrap();
    assert_eq!(&v, k);
    let enc: String = redis::cmd("OBJECT").arg("ENCODING").arg(k).query(&mut con).unwrap();
    assert_eq!(enc, "embstr");
    let n: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(n, 30);
    let subscribers: i64 = redis::cmd("PUBLISH").arg("ch").arg("m").query(&mut con).unwrap();
    assert_eq!(subscribers, 0);
    let e = redis::cmd("NOSUCH.CMD").arg("x").query::<Value>(&mut con).unwrap_err();
    let text = mredis::error_text(&e);
    assert!(
        text.contains("NOSUCH.CMD") && text.contains("may not run COMMAND"),
        "{text}"
    );
}

/// Every table row, through the handle and through its generated method:
/// the same servers. For each example of a routed method (the keys the
/// method routes by and the command it sends), the handle routes the same
/// command to the servers that own those keys (split over them for
/// `multi` rows, a cross-server error for `colocated` keys that do not
/// share a server), reading the keys from the table's `key_spec` or, where
/// it says so, from a real server's `COMMAND GETKEYS`; every `all` row goes
/// to every server; every `omitted` row is an error naming the command.
#[test]
fn the_handle_and_the_methods_route_every_row_alike() {
    use mredis::{COMMANDS, RouteClass};
    let s = servers(4);
    let mr = MRedis::new(urls(&s)).unwrap();
    let con = mr.get_connection().unwrap();
    let mut problems = Vec::new();
    let mut checked = 0;
    for ex in &mredis::examples::examples() {
        let row = COMMANDS.iter().find(|c| c.name == ex.command).unwrap();
        if row.since.is_some() {
            continue; // newer than the server these tests run (GETKEYS)
        }
        let (keys, cmd) = (ex.build)();
        let mut owners: Vec<usize> = keys.iter().map(|k| mr.server_index_for(k)).collect();
        owners.sort();
        owners.dedup();
        let got = con.route_of(&cmd);
        let ok = match (&got, row.class) {
            (Ok((_, servers)), RouteClass::Multi) => {
                let mut servers = servers.clone();
                servers.sort();
                servers == owners
            }
            (Ok(("one", servers)), _) => owners.len() <= 1 && (owners.is_empty() || servers == &owners),
            (Err(e), RouteClass::Colocated | RouteClass::Key) => {
                owners.len() > 1 && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot)
            }
            _ => false,
        };
        if !ok {
            problems.push(format!(
                "{} ({}): keys on {owners:?}, handle {got:?}",
                ex.method, ex.command
            ));
        }
        checked += 1;
    }
    for row in COMMANDS {
        let words: Vec<&str> = row.name.split(' ').collect();
        let cmd = cmd(&words);
        match row.class {
            RouteClass::All => match con.route_of(&cmd) {
                Ok(("all", servers)) if servers.len() == 4 => {}
                other => problems.push(format!("{} (all): handle {other:?}", row.name)),
            },
            // HSCAN/SSCAN/ZSCAN (a key's cursor, for redis-rs's iterators)
            // and UNWATCH/DISCARD (redis::transaction) work on the handle.
            RouteClass::Omitted if !matches!(row.name, "HSCAN" | "SSCAN" | "ZSCAN" | "UNWATCH" | "DISCARD") => {
                match con.route_of(&cmd) {
                    Err(e) if mredis::error_text(&e).contains(row.name.split(' ').next().unwrap()) => {}
                    other => problems.push(format!("{} (omitted): handle {other:?}", row.name)),
                }
            }
            _ => continue,
        }
        checked += 1;
    }
    assert!(
        problems.is_empty(),
        "{} disagreements:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(checked > 300, "only {checked} rows and examples checked");
}
