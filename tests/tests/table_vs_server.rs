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

/// (flags, first, last, step) of every command and subcommand of the
/// server's `COMMAND` reply, by upper-case name (`OBJECT ENCODING`).
fn command_info(server: &RedisServer) -> std::collections::BTreeMap<String, (BTreeSet<String>, i64, i64, i64)> {
    fn add(entry: &Value, out: &mut std::collections::BTreeMap<String, (BTreeSet<String>, i64, i64, i64)>) {
        let Value::Array(f) = entry else {
            panic!("unexpected COMMAND entry {entry:?}")
        };
        let text = |v: &Value| match v {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            other => panic!("unexpected text {other:?}"),
        };
        let int = |v: &Value| match v {
            Value::Int(n) => *n,
            other => panic!("unexpected integer {other:?}"),
        };
        let flags = match &f[2] {
            Value::Array(items) | Value::Set(items) => items.iter().map(text).collect(),
            other => panic!("unexpected flags {other:?}"),
        };
        let name = text(&f[0]).to_uppercase().replace('|', " ");
        out.insert(name, (flags, int(&f[3]), int(&f[4]), int(&f[5])));
        if let Some(Value::Array(subs)) = f.get(9) {
            for sub in subs {
                add(sub, out);
            }
        }
    }
    let reply: Value = redis::cmd("COMMAND").query(&mut server.conn()).unwrap();
    let Value::Array(entries) = reply else {
        panic!("unexpected COMMAND reply {reply:?}")
    };
    let mut out = std::collections::BTreeMap::new();
    for e in &entries {
        add(e, &mut out);
    }
    out
}

/// The table's key positions, access and blocking facts are the live
/// server's `COMMAND` metadata, for every row the server knows.
#[test]
fn key_positions_access_and_blocking_match_command_info() {
    use mredis::{Access, KeySpec};
    let server = RedisServer::new();
    let info = command_info(&server);
    let mut problems = Vec::new();
    let mut checked = 0;
    for c in COMMANDS {
        let Some((flags, first, last, step)) = info.get(c.name) else {
            continue;
        };
        checked += 1;
        let triple = (*first, *last, *step);
        let movable = flags.contains("movablekeys");
        let keys_ok = match c.key_spec {
            // Routed by channel by design; the server sees no key in PUBLISH
            // and a shard-channel "key" in SPUBLISH.
            KeySpec::Channel(at) => matches!(c.name, "PUBLISH" | "SPUBLISH") && at == 1,
            KeySpec::AskServer => movable,
            KeySpec::NumKeys { dest, .. } => {
                let d = dest.map(|d| d as i64);
                movable && triple == d.map(|d| (d, d, 1)).unwrap_or((0, 0, 0))
            }
            KeySpec::Range { first, last, step } => !movable && triple == (first as i64, last as i64, step as i64),
            KeySpec::Keyless => !movable && *first == 0,
            // A kind of key spec this check does not know yet: a problem.
            _ => false,
        };
        if !keys_ok {
            problems.push(format!(
                "{}: key_spec {:?}, server first/last/step {triple:?}{}",
                c.name,
                c.key_spec,
                if movable { " movablekeys" } else { "" }
            ));
        }
        let access = if flags.contains("readonly") {
            Access::Read
        } else if flags.contains("write") {
            Access::Write
        } else {
            Access::Neither
        };
        if c.access != access {
            problems.push(format!("{}: access {:?}, server flags {flags:?}", c.name, c.access));
        }
        // WAIT blocks the caller but is not flagged `blocking` (that flag
        // is for commands that block on keys).
        if c.block.is_some() != flags.contains("blocking") && c.name != "WAIT" {
            problems.push(format!("{}: block {:?}, server flags {flags:?}", c.name, c.block));
        }
    }
    assert!(
        problems.is_empty(),
        "{} mismatches:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(checked > 300, "only {checked} rows checked");
    let wait = COMMANDS.iter().find(|c| c.name == "WAIT").unwrap();
    assert!(wait.block.is_some(), "WAIT blocks for its timeout");
}

/// `CommandSpec::keys` finds exactly the keys `COMMAND GETKEYS` finds, for
/// invocations of every form of `key_spec` and for every table example.
#[test]
fn key_extraction_matches_command_getkeys() {
    use mredis::CommandKeys;
    let server = RedisServer::new();
    let mut con = server.conn();
    let row = |name: &str| COMMANDS.iter().find(|c| c.name == name).unwrap();
    let getkeys = |con: &mut redis::Connection, args: &[&[u8]]| {
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
        for a in &args[1..] {
            cmd.arg(*a);
        }
        server_keys(con, &cmd)
    };
    let invocations: &[(&str, &str)] = &[
        ("GET", "GET k"),
        ("MSET", "MSET a 1 b 2 c 3"),
        ("MGET", "MGET a b c"),
        ("BLPOP", "BLPOP a b c 0"),
        ("BZPOPMIN", "BZPOPMIN a b 1.5"),
        ("RPOPLPUSH", "RPOPLPUSH a b"),
        ("LMOVE", "LMOVE a b LEFT RIGHT"),
        ("GEOSEARCHSTORE", "GEOSEARCHSTORE d s FROMMEMBER m BYRADIUS 1 km"),
        ("EVAL", "EVAL return 2 a b x y"),
        ("EVAL", "EVAL return 0 x"),
        ("EVALSHA_RO", "EVALSHA_RO abc 1 a"),
        ("FCALL", "FCALL f 2 a b x"),
        ("ZUNION", "ZUNION 2 a b WITHSCORES"),
        ("ZINTERCARD", "ZINTERCARD 2 a b LIMIT 1"),
        ("SINTERCARD", "SINTERCARD 3 a b c"),
        ("LMPOP", "LMPOP 2 a b LEFT COUNT 2"),
        ("ZMPOP", "ZMPOP 1 a MIN"),
        ("BLMPOP", "BLMPOP 0 2 a b LEFT"),
        ("BZMPOP", "BZMPOP 1 1 a MAX"),
        ("ZUNIONSTORE", "ZUNIONSTORE d 2 a b WEIGHTS 1 2"),
        ("ZINTERSTORE", "ZINTERSTORE d 1 a"),
        ("ZDIFFSTORE", "ZDIFFSTORE d 2 a b"),
        ("OBJECT ENCODING", "OBJECT ENCODING k"),
        ("MEMORY USAGE", "MEMORY USAGE k SAMPLES 5"),
        ("XINFO STREAM", "XINFO STREAM s FULL"),
        ("XGROUP CREATE", "XGROUP CREATE s g $ MKSTREAM"),
        // (GETKEYS needs at least one argument after the name.)
        ("PING", "PING hello"),
        ("ECHO", "ECHO hi"),
        ("CLIENT LIST", "CLIENT LIST"),
    ];
    let mut problems = Vec::new();
    for (name, line) in invocations {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        let ours = match row(name).keys(&args) {
            CommandKeys::Known(keys) => keys.iter().map(|k| k.to_vec()).collect::<Vec<_>>(),
            other => {
                problems.push(format!("{line}: {other:?}"));
                continue;
            }
        };
        match getkeys(&mut con, &args) {
            Ok(theirs) if theirs == ours => {}
            Ok(theirs) => problems.push(format!("{line}: table {ours:?}, server {theirs:?}")),
            Err(e) => problems.push(format!("{line}: GETKEYS failed: {e}")),
        }
    }
    // The commands whose keys the table cannot tell.
    for (name, line, server_says) in [
        ("SORT", "SORT k STORE d", vec!["k", "d"]),
        ("XREAD", "XREAD COUNT 1 STREAMS s t 0 0", vec!["s", "t"]),
        // (The empty argument between the spaces is the key, empty with KEYS.)
        ("MIGRATE", "MIGRATE h 1  0 5 KEYS a b", vec!["a", "b"]),
    ] {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        assert_eq!(row(name).keys(&args), CommandKeys::AskServer, "{line}");
        let theirs = getkeys(&mut con, &args).unwrap();
        let want: Vec<Vec<u8>> = server_says.iter().map(|k| k.as_bytes().to_vec()).collect();
        assert_eq!(theirs, want, "{line}");
    }
    // PUBLISH is routed by its channel, which the server does not call a key.
    assert_eq!(
        row("PUBLISH").keys(&[b"PUBLISH", b"ch", b"m"]),
        CommandKeys::Known(vec![&b"ch"[..]])
    );

    // Every example invocation of the table's methods, read by its row's
    // key_spec.
    let known = command_info(&server);
    let mut checked = 0;
    for ex in &mredis::examples::examples() {
        if !known.contains_key(ex.command) || matches!(ex.command, "PUBLISH" | "SPUBLISH") {
            continue;
        }
        let (_, cmd) = (ex.build)();
        let owned: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => b"0".to_vec(),
            })
            .collect();
        let args: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let ours = match row(ex.command).keys(&args) {
            CommandKeys::Known(keys) => keys.iter().map(|k| k.to_vec()).collect::<Vec<_>>(),
            CommandKeys::AskServer => continue,
            CommandKeys::BadCount => {
                problems.push(format!("{} ({}): bad key count", ex.method, ex.command));
                continue;
            }
            other => {
                problems.push(format!("{} ({}): keys {other:?} not checked", ex.method, ex.command));
                continue;
            }
        };
        match server_keys(&mut con, &cmd) {
            Ok(theirs) if theirs == ours => checked += 1,
            Ok(theirs) => problems.push(format!(
                "{} ({}): table {ours:?}, server {theirs:?}",
                ex.method, ex.command
            )),
            Err(e) => problems.push(format!("{} ({}): GETKEYS failed: {e}", ex.method, ex.command)),
        }
    }
    assert!(
        problems.is_empty(),
        "{} mismatches:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(checked > 150, "only {checked} examples checked");
}

/// The rows the table marks `cacheable` are reads of one key whose reply
/// the server says depends on nothing else: flagged `readonly`, key at
/// position 1 only, no `nondeterministic_output` tip (SRANDMEMBER, TTL,
/// ... are not cacheable). Runs on the servers CI tests (Redis 7.0, Valkey
/// 8.1, Redis 8.2).
#[test]
fn cacheable_rows_are_deterministic_reads_of_one_key() {
    let server = RedisServer::new();
    let mut con = server.conn();
    let mut problems = Vec::new();
    let cacheable: Vec<&mredis::CommandSpec> = COMMANDS.iter().filter(|c| c.cacheable).collect();
    assert!(cacheable.len() >= 30, "{} cacheable rows", cacheable.len());
    for c in &cacheable {
        let reply: Value = redis::cmd("COMMAND").arg("INFO").arg(c.name).query(&mut con).unwrap();
        let Value::Array(mut rows) = reply else {
            panic!("COMMAND INFO {}: {reply:?}", c.name)
        };
        let Some(Value::Array(info)) = rows.pop() else {
            problems.push(format!("{}: unknown to the server", c.name));
            continue;
        };
        let text = |v: &Value| match v {
            Value::SimpleString(s) => s.clone(),
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        };
        let list = |v: Option<&Value>| match v {
            Some(Value::Array(items)) | Some(Value::Set(items)) => items.iter().map(text).collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        let flags = list(info.get(2));
        let tips = list(info.get(7));
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(n)) => *n,
            _ => -99,
        };
        if !flags.iter().any(|f| f == "readonly") {
            problems.push(format!("{}: not readonly ({flags:?})", c.name));
        }
        // `nondeterministic_output_order` (SMEMBERS, HGETALL) is fine: the
        // same members, in an order no caller may rely on.
        if tips.iter().any(|t| t == "nondeterministic_output") {
            problems.push(format!("{}: nondeterministic ({tips:?})", c.name));
        }
        if (int(info.get(3)), int(info.get(4))) != (1, 1) {
            problems.push(format!("{}: keys at {:?}..{:?}", c.name, info.get(3), info.get(4)));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
