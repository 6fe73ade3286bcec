//! The census (who is connected, with which configuration) and the
//! automatic finish of a migration, against real servers.

use std::time::Duration;

use mredis::rebalance::census::{CensusOptions, ClientKind, Stage};
use mredis::rebalance::{RebalanceOptions, rebalance, take_census};
use mredis::{Builder, MRedis, Server};
use mredis_tests::{RedisServer, command_calls, servers, wait_until};

/// Servers named `s0`, `s1`, ... by their place (placement does not depend
/// on the random ports).
fn named(list: &[&RedisServer]) -> Vec<Server> {
    list.iter()
        .enumerate()
        .map(|(i, s)| Server::from_url(&s.url()).unwrap().with_alias(format!("s{i}")))
        .collect()
}

fn builder(list: &[&RedisServer]) -> Builder {
    MRedis::builder().servers(named(list))
}

fn volatile_ok() -> RebalanceOptions {
    RebalanceOptions {
        allow_volatile: true,
        ..Default::default()
    }
}

/// A key of `prefix` that moves from `old` to a server of `new` that `old`
/// lacks.
fn moving_key(old: &MRedis, new: &MRedis, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| {
            let (o, n) = (old.server_for(k).unwrap(), new.server_for(k).unwrap());
            o != n && !old.servers().iter().any(|s| s.name() == n)
        })
        .expect("a key that moves to the new server")
}

#[test]
fn the_census_names_every_client_by_configuration_and_shows_no_password() {
    const CANARY: &str = "census-Pw-41c9";
    let s: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::with_args(&["--requirepass", CANARY]))
        .collect();
    let refs: Vec<&RedisServer> = s.iter().collect();
    let with_pw =
        |list: &[&RedisServer]| -> Vec<Server> { named(list).into_iter().map(|x| x.with_password(CANARY)).collect() };
    let old_b = || MRedis::builder().servers(with_pw(&refs[..2]));
    let new_b = || MRedis::builder().servers(with_pw(&refs));
    let tool_from = old_b().build().unwrap();
    let tool_to = new_b().build().unwrap();

    // One client of each kind, each with a connection open.
    let old = old_b().build().unwrap();
    let plain_new = new_b().build().unwrap();
    let aware = new_b().migrating_from(old_b()).client_name("billing").build().unwrap();
    let third = MRedis::builder().servers(with_pw(&refs[1..])).build().unwrap();
    for (i, c) in [&old, &plain_new, &aware, &third].iter().enumerate() {
        c.set::<_, _, ()>(format!("k{i}"), i).unwrap();
    }
    let mut unknown = redis::Client::open(format!("redis://:{CANARY}@127.0.0.1:{}/0", s[0].port()))
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("PING").exec(&mut unknown).unwrap();

    let census = take_census(&tool_from, &tool_to).unwrap();
    let of = |want: &dyn Fn(&ClientKind) -> bool| census.clients.iter().filter(|c| want(&c.kind)).count();
    assert!(of(&|k| *k == ClientKind::Old) >= 1, "{census:#?}");
    assert!(of(&|k| *k == ClientKind::New) >= 1, "{census:#?}");
    assert!(of(&|k| matches!(k, ClientKind::Other { .. })) >= 1, "{census:#?}");
    let ready: Vec<_> = census.clients.iter().filter(|c| c.kind == ClientKind::Ready).collect();
    assert!(!ready.is_empty(), "{census:#?}");
    assert!(
        ready
            .iter()
            .all(|c| c.name.ends_with(":billing") || c.name.ends_with(":billing:watch")),
        "the user's part is kept: {ready:#?}"
    );
    // The raw connection is listed as unknown, with its address.
    assert!(
        census
            .unknown()
            .iter()
            .any(|c| c.server == s[0].name() && c.name.is_empty()),
        "{census:#?}"
    );
    // The tool's own clients (passed in) are not listed, and nobody's
    // password is.
    let shown = format!(
        "{census:?} {}",
        mredis::rebalance::census::Census::describe(&census.clients.iter().collect::<Vec<_>>())
    );
    assert!(!shown.contains(CANARY), "{shown}");
    let blocking = census.in_the_way(Stage::BeforeMove, &CensusOptions::default());
    assert_eq!(
        blocking.len(),
        census.clients.len() - ready.len() - census.unknown().len(),
        "every mredis client not ready is in the way, unknown ones only warned of"
    );

    // The rebalance refuses, moving nothing, and says who; the error shows
    // no password either.
    let before: Vec<i64> = s.iter().map(|x| dbsize_pw(x, CANARY)).collect();
    let e = rebalance(&tool_from, &tool_to, volatile_ok()).unwrap_err();
    assert!(mredis::rebalance::census::is_refusal(&e), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("nothing was moved") && text.contains("old configuration"),
        "{text}"
    );
    assert!(!text.contains(CANARY), "{text}");
    assert_eq!(before, s.iter().map(|x| dbsize_pw(x, CANARY)).collect::<Vec<_>>());

    // With the clients in the way gone, unknown connections are a warning
    // only, and refused on request.
    drop((old, plain_new, third));
    let strict = RebalanceOptions {
        census: CensusOptions {
            refuse_unknown: true,
            ..Default::default()
        },
        ..volatile_ok()
    };
    wait_until("the clients in the way gone", Duration::from_secs(10), || {
        take_census(&tool_from, &tool_to)
            .unwrap()
            .in_the_way(Stage::BeforeMove, &CensusOptions::default())
            .is_empty()
    });
    let e = rebalance(&tool_from, &tool_to, strict).unwrap_err();
    assert!(e.to_string().contains("not an mredis client"), "{e}");
    let report = rebalance(&tool_from, &tool_to, volatile_ok()).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert!(!report.census.as_ref().unwrap().unknown().is_empty());
    drop(unknown);
}

fn dbsize_pw(s: &RedisServer, pw: &str) -> i64 {
    let mut con = redis::Client::open(format!("redis://:{pw}@127.0.0.1:{}/0", s.port()))
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("DBSIZE").query(&mut con).unwrap()
}

/// The guard scripts a migration-aware client runs on `server`.
fn guard_calls(server: &RedisServer) -> u64 {
    let mut con = server.conn();
    command_calls(&mut con, "eval") + command_calls(&mut con, "evalsha")
}

#[test]
fn after_a_verified_move_aware_clients_stop_their_migration_checks() {
    let s = servers(3);
    let refs: Vec<&RedisServer> = s.iter().collect();
    let from = builder(&refs[..2]).build().unwrap();
    let to = builder(&refs).build().unwrap();
    for i in 0..500 {
        from.set::<_, _, ()>(format!("f{i}"), i).unwrap();
    }
    let key = moving_key(&from, &to, "f");
    let old_owner = &s[from.server_index_for(key.as_bytes())];
    let aware = builder(&refs).migrating_from(builder(&refs[..2])).build().unwrap();
    // Migration-aware for another move: from the last two servers. It makes
    // a call, so its connections are open (and named) when the census looks:
    // a client built without a call yet has none until its first check, and
    // whether that came before the census was left to timing.
    let other = builder(&refs).migrating_from(builder(&refs[1..])).build().unwrap();
    let _: bool = other.exists(&key).unwrap();

    // While migrating, a GET of the moving key runs the guard on its old
    // server.
    let calls = guard_calls(old_owner);
    assert_eq!(aware.get::<_, i64>(&key).unwrap(), key[1..].parse::<i64>().unwrap());
    assert!(guard_calls(old_owner) > calls, "the key is checked on its old server");

    // `other` is in the way of this move; without it, the move runs.
    let e = rebalance(&from, &to, volatile_ok()).unwrap_err();
    assert!(e.to_string().contains("migration-aware for another move"), "{e}");
    assert_eq!(s[2].dbsize(), 0, "the refused rebalance moved nothing");
    let report = rebalance(
        &from,
        &to,
        RebalanceOptions {
            skip_census: true,
            ..volatile_ok()
        },
    )
    .unwrap();
    assert!(report.is_complete() && report.finished, "{report:?}");
    let into_new: u64 = report
        .moves
        .iter()
        .filter(|((_, to), _)| *to == s[2].name())
        .map(|(_, n)| n)
        .sum();
    assert_eq!(s[2].dbsize() as u64, into_new, "the marker is not a key: {report:?}");

    // The aware client notices the marker (polled every second) and stops
    // going to the old server: a GET is one round trip to the new owner.
    let mut last = guard_calls(old_owner);
    wait_until("the aware client stops its checks", Duration::from_secs(15), || {
        assert_eq!(aware.get::<_, i64>(&key).unwrap(), key[1..].parse::<i64>().unwrap());
        let now = guard_calls(old_owner);
        let stopped = now == last;
        last = now;
        stopped
    });
    for _ in 0..50 {
        aware.get::<_, i64>(&key).unwrap();
    }
    assert_eq!(guard_calls(old_owner), last, "no more checks once finished");

    // The other move's marker does not exist: `other` keeps its checks.
    let markers: Vec<redis::Value> = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg("mredis_finished_*")
        .query(&mut s[2].conn())
        .unwrap();
    assert_eq!(markers.len(), 1, "one marker: this move's");
    let third = builder(&refs[1..]).build().unwrap();
    let key2 = (0..10_000)
        .map(|i| format!("g{i}"))
        .find(|k| third.server_for(k).unwrap() != to.server_for(k).unwrap())
        .unwrap();
    let its_old = &s[1 + third.server_index_for(key2.as_bytes())];
    let calls = guard_calls(its_old);
    let _: Option<String> = other.get(&key2).unwrap();
    assert!(
        guard_calls(its_old) > calls,
        "a client of another move keeps its checks"
    );
}
