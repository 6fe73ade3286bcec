//! The command table checked against the live server: every command and
//! subcommand the server knows has a row, and every routed method routes on
//! exactly the keys the server itself extracts (`COMMAND GETKEYS`).

use std::collections::BTreeSet;

use mredis::{COMMANDS, RouteClass};
use mredis_tests::RedisServer;
use redis::Value;

/// (name, subcommand names) for every command of the server, upper case.
fn server_commands(server: &RedisServer) -> Vec<(String, Vec<String>)> {
    let mut con = server.conn();
    let docs: Value = redis::cmd("COMMAND").arg("DOCS").query(&mut con).unwrap();
    let pairs = match docs {
        Value::Map(m) => m,
        Value::Array(items) => items.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect(),
        other => panic!("unexpected COMMAND DOCS reply: {other:?}"),
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).to_uppercase(),
        Value::SimpleString(s) => s.to_uppercase(),
        other => panic!("unexpected name {other:?}"),
    };
    let mut out = Vec::new();
    for (name, doc) in pairs {
        let fields: Vec<(Value, Value)> = match doc {
            Value::Map(m) => m,
            Value::Array(items) => items.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect(),
            _ => Vec::new(),
        };
        let mut subs = Vec::new();
        for (k, v) in fields {
            if text(&k) == "SUBCOMMANDS" {
                let sub_pairs: Vec<(Value, Value)> = match v {
                    Value::Map(m) => m,
                    Value::Array(items) => items.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect(),
                    _ => Vec::new(),
                };
                subs = sub_pairs.iter().map(|(n, _)| text(n).replace('|', " ")).collect();
            }
        }
        out.push((text(&name), subs));
    }
    out
}

#[test]
fn every_server_command_has_a_row() {
    let server = RedisServer::new();
    let commands = server_commands(&server);
    let rows: BTreeSet<&str> = COMMANDS.iter().map(|c| c.name).collect();
    let mut missing = Vec::new();
    let mut count = 0;
    for (name, subs) in &commands {
        if subs.is_empty() {
            count += 1;
            if !rows.contains(name.as_str()) {
                missing.push(name.clone());
            }
        } else {
            // A container command is covered by rows for its subcommands.
            for sub in subs {
                count += 1;
                if !rows.contains(sub.as_str()) {
                    missing.push(sub.clone());
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "commands of the live server without a row in commands.toml: {missing:?}"
    );
    assert!(
        commands.len() >= 200 && count >= 300,
        "the server listed {} commands, {count} with subcommands",
        commands.len()
    );

    // Rows the server does not know must say which version has them.
    let known: BTreeSet<String> = commands
        .iter()
        .flat_map(|(n, subs)| std::iter::once(n.clone()).chain(subs.iter().cloned()))
        .collect();
    let undated: Vec<&str> = COMMANDS
        .iter()
        .filter(|c| !known.contains(c.name) && c.since.is_none())
        .map(|c| c.name)
        .collect();
    assert!(
        undated.is_empty(),
        "rows for commands this server lacks need `since`: {undated:?}"
    );
}

#[test]
fn omitted_rows_have_reasons_and_no_methods() {
    for c in COMMANDS {
        match c.class {
            RouteClass::Omitted => {
                assert!(c.methods.is_empty(), "{}", c.name);
                assert!(c.reason.is_some_and(|r| !r.is_empty()), "{}", c.name);
            }
            _ => assert!(!c.methods.is_empty(), "{}", c.name),
        }
    }
    for name in [
        "SELECT",
        "MULTI",
        "EXEC",
        "DISCARD",
        "WATCH",
        "UNWATCH",
        "SUBSCRIBE",
        "PSUBSCRIBE",
        "MONITOR",
    ] {
        let row = COMMANDS.iter().find(|c| c.name == name).unwrap();
        assert_eq!(row.class, RouteClass::Omitted, "{name}");
    }
    for name in ["MGET", "MSET", "DEL", "EXISTS", "UNLINK", "TOUCH"] {
        let row = COMMANDS.iter().find(|c| c.name == name).unwrap();
        assert_eq!(row.class, RouteClass::Multi, "{name}");
    }
}

/// Keys the server extracts from a command, via `COMMAND GETKEYS`.
fn server_keys(con: &mut redis::Connection, cmd: &redis::Cmd) -> Result<Vec<Vec<u8>>, String> {
    let mut getkeys = redis::cmd("COMMAND");
    getkeys.arg("GETKEYS");
    for arg in cmd.args_iter() {
        match arg {
            redis::Arg::Simple(bytes) => getkeys.arg(bytes),
            _ => getkeys.arg("0"),
        };
    }
    match getkeys.query::<Vec<Vec<u8>>>(con) {
        Ok(keys) => Ok(keys),
        // "The command has no key arguments" is an error reply.
        Err(e) if e.to_string().contains("no key arguments") => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn routing_keys_match_the_servers_own_key_extraction() {
    let server = RedisServer::new();
    let mut con = server.conn();
    let known: BTreeSet<String> = server_commands(&server)
        .into_iter()
        .flat_map(|(n, subs)| std::iter::once(n).chain(subs))
        .collect();
    let examples = mredis::examples::examples();
    let mut checked = BTreeSet::new();
    let mut problems = Vec::new();
    for ex in &examples {
        // Commands newer than this server cannot be checked here; PUBLISH
        // and SPUBLISH route on their channel by design (the server sees no
        // key in it).
        if !known.contains(ex.command) || matches!(ex.command, "PUBLISH" | "SPUBLISH") {
            continue;
        }
        let (mut ours, cmd) = (ex.build)();
        let mut theirs = match server_keys(&mut con, &cmd) {
            Ok(k) => k,
            Err(e) => {
                problems.push(format!(
                    "{} ({}): GETKEYS refused the example: {e}",
                    ex.method, ex.command
                ));
                continue;
            }
        };
        ours.sort();
        theirs.sort();
        if ours != theirs {
            let show = |k: &Vec<Vec<u8>>| {
                k.iter()
                    .map(|x| String::from_utf8_lossy(x).into_owned())
                    .collect::<Vec<_>>()
            };
            problems.push(format!(
                "{} ({}): mredis routes on {:?}, the server says {:?}",
                ex.method,
                ex.command,
                show(&ours),
                show(&theirs)
            ));
        }
        checked.insert(ex.method);
    }
    assert!(
        problems.is_empty(),
        "{} routing mismatches:\n{}",
        problems.len(),
        problems.join("\n")
    );

    // Every routed method of a command this server knows was checked.
    let mut unchecked = Vec::new();
    for c in COMMANDS {
        if matches!(c.class, RouteClass::Omitted | RouteClass::All)
            || !known.contains(c.name)
            || matches!(c.name, "PUBLISH" | "SPUBLISH")
        {
            continue;
        }
        for m in c.methods {
            if !checked.contains(m.name) {
                unchecked.push(m.name);
            }
        }
    }
    assert!(
        unchecked.is_empty(),
        "routed methods without a GETKEYS check: {unchecked:?}"
    );
    assert!(checked.len() > 150, "only {} methods checked", checked.len());
    println!("{} routed methods checked against COMMAND GETKEYS", checked.len());
}

/// The routed handles' built-in copy of the command metadata (used when a
/// user may not run COMMAND) is the live server's.
#[test]
fn the_built_in_command_metadata_matches_the_server() {
    if mredis_tests::testing_valkey() {
        eprintln!("skipped: the built-in copy is Redis 7.0's");
        return;
    }
    let s = mredis_tests::RedisServer::new();
    let reply: redis::Value = redis::cmd("COMMAND").query(&mut s.conn()).unwrap();
    let diffs = mredis::handle::built_in_differences(&reply);
    assert!(diffs.is_empty(), "{diffs:#?}");
}
