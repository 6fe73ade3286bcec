//! Fencing: after a rebalance from 3 servers to 4, clients of the old
//! configuration that the census could not see (built and not yet used;
//! idle, their connections closed by the servers) fail their calls with an
//! error saying their configuration was retired, instead of reading and
//! writing where no current client does. Clients of the new configuration
//! and migration-aware clients of the move keep working; a fleet moved
//! back (4 -> 3) works again. Real `redis-server` processes.

use mredis::rebalance::census::{CensusOptions, is_refusal};
use mredis::rebalance::{RebalanceOptions, rebalance};
use mredis::{Builder, MRedis, Server};
use mredis_tests::{RedisServer, redis_server_available};

/// Servers named `s0`, `s1`, ... by their place (placement does not depend
/// on the random ports).
fn named(list: &[RedisServer]) -> Vec<Server> {
    list.iter()
        .enumerate()
        .map(|(i, s)| Server::from_url(&s.url()).unwrap().with_alias(format!("s{i}")))
        .collect()
}

fn builder(list: &[RedisServer]) -> Builder {
    MRedis::builder().servers(named(list))
}

fn options() -> RebalanceOptions {
    RebalanceOptions {
        allow_volatile: true,
        ..Default::default()
    }
}

/// Closes every client connection of `s` but the caller's (what a server's
/// `timeout` does to idle connections).
fn close_clients(s: &[RedisServer]) {
    for server in s {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query(&mut server.conn())
            .unwrap();
    }
}

fn total_keys(s: &[RedisServer]) -> Vec<i64> {
    s.iter().map(RedisServer::dbsize).collect()
}

fn retired<T: std::fmt::Debug>(what: &str, r: redis::RedisResult<T>) {
    let e = r.expect_err(&format!("{what}: a retired configuration answered"));
    let text = e.to_string();
    assert!(
        text.contains("configuration was retired") && text.contains("reconfigure"),
        "{what}: {text}"
    );
}

#[test]
fn clients_of_a_retired_configuration_fail_instead_of_missing_moved_keys() {
    if !redis_server_available() {
        return;
    }
    let s: Vec<RedisServer> = (0..4).map(|_| RedisServer::new()).collect();
    let old_b = || builder(&s[..3]);
    let new_b = || builder(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();

    let seed = old_b().build().unwrap();
    let keys: Vec<String> = (0..200).map(|i| format!("fence:{i}")).collect();
    for k in &keys {
        seed.set::<_, _, ()>(k, "old").unwrap();
    }
    drop(seed);
    // Old clients the census cannot see: built, never used; used, then
    // their connections closed by the servers. Sync and async.
    let never_used = old_b().build().unwrap();
    let closed = old_b().build().unwrap();
    closed.get::<_, Option<String>>(&keys[0]).unwrap();
    let never_used_async = rt.block_on(old_b().build_async()).unwrap();
    let closed_async = rt.block_on(old_b().build_async()).unwrap();
    rt.block_on(closed_async.get::<_, Option<String>>(&keys[0])).unwrap();
    let mut closed_handle = closed.get_connection().unwrap();
    close_clients(&s);
    // A client migration-aware for this move, and one of the new
    // configuration.
    let aware = new_b().migrating_from(old_b()).build().unwrap();
    let new = new_b().build().unwrap();
    assert_eq!(aware.get::<_, String>(&keys[1]).unwrap(), "old");

    let report = rebalance(&old_b().build().unwrap(), &new_b().build().unwrap(), options()).unwrap();
    assert!(report.moved > 0 && report.fence_refused.is_empty(), "{report:?}");
    let moved: Vec<&String> = keys
        .iter()
        .filter(|k| never_used.server_for(k).unwrap() != new.server_for(k).unwrap())
        .collect();
    assert!(!moved.is_empty());

    // Every old client fails every call, reads and writes, through every
    // door; nothing is written anywhere.
    let before = total_keys(&s);
    for k in moved.iter().take(20) {
        retired("sync GET, never used", never_used.get::<_, Option<String>>(k));
        retired("sync SET, never used", never_used.set::<_, _, ()>(k, "lost"));
        retired("sync GET, connections closed", closed.get::<_, Option<String>>(k));
        retired("sync SET, connections closed", closed.set::<_, _, ()>(k, "lost"));
        retired(
            "sync handle SET, connections closed",
            redis::cmd("SET").arg(k).arg("lost").exec(&mut closed_handle),
        );
        retired(
            "async GET, never used",
            rt.block_on(never_used_async.get::<_, Option<String>>(k)),
        );
        retired(
            "async SET, never used",
            rt.block_on(never_used_async.set::<_, _, ()>(k, "lost")),
        );
        retired(
            "async GET, connections closed",
            rt.block_on(closed_async.get::<_, Option<String>>(k)),
        );
        retired(
            "async SET, connections closed",
            rt.block_on(closed_async.set::<_, _, ()>(k, "lost")),
        );
    }
    assert_eq!(total_keys(&s), before, "a retired client wrote a key");
    for server in &s {
        let lost: Vec<String> = server.keys().into_iter().filter(|k| k.starts_with("fence:")).collect();
        for k in lost {
            let v: String = redis::Commands::get(&mut server.conn(), &k).unwrap();
            assert_eq!(v, "old", "{k} on {}", server.port());
        }
    }

    // The new configuration and the migration-aware client: every key,
    // no error.
    for k in &keys {
        assert_eq!(new.get::<_, String>(k).unwrap(), "old", "{k}");
        assert_eq!(aware.get::<_, String>(k).unwrap(), "old", "{k}");
    }
    let new_async = rt.block_on(new_b().build_async()).unwrap();
    for k in keys.iter().take(50) {
        let v: String = rt.block_on(new_async.get(k)).unwrap();
        assert_eq!(v, "old");
    }

    // Moved back, 4 -> 3: the 3-server configuration is current again.
    // (The census would count the 4-server clients still connected.)
    drop((new, aware, new_async));
    close_clients(&s);
    let back = rebalance(&new_b().build().unwrap(), &old_b().build().unwrap(), options()).unwrap();
    assert!(back.moved > 0 && back.fence_refused.is_empty(), "{back:?}");
    let again = old_b().build().unwrap();
    for k in &keys {
        assert_eq!(again.get::<_, String>(k).unwrap(), "old", "{k}");
    }
    // ... and the 4-server configuration is the retired one now.
    let stale_new = new_b().build().unwrap();
    retired(
        "sync GET on the configuration moved away from",
        stale_new.get::<_, Option<String>>(&keys[0]),
    );
}

/// A least-privilege user (no `CLIENT`, no `FUNCTION`): its connections
/// stay unnamed, so the census cannot tell its configuration, but with
/// `+fcall_ro` the fence still refuses it once its configuration is
/// retired; without `+fcall_ro` its calls fail from the start, naming the
/// right to grant.
#[test]
fn a_least_privilege_user_is_fenced_with_fcall_ro_alone() {
    if !redis_server_available() {
        return;
    }
    let s: Vec<RedisServer> = (0..4).map(|_| RedisServer::new()).collect();
    for server in &s {
        for (user, extra) in [("app", "+fcall_ro"), ("bare", "")] {
            let mut acl = redis::cmd("ACL");
            acl.arg("SETUSER").arg(user).arg("on").arg(">app-Pw-5e2b").arg("~*");
            acl.arg("+@read").arg("+@write").arg("+ping");
            if !extra.is_empty() {
                acl.arg(extra);
            }
            let _: () = acl.query(&mut server.conn()).unwrap();
        }
    }
    let as_user = |list: &[RedisServer], user: &str| {
        MRedis::builder().servers(
            named(list)
                .into_iter()
                .map(|x| x.with_username(user).with_password("app-Pw-5e2b"))
                .collect::<Vec<_>>(),
        )
    };
    let app = as_user(&s[..3], "app").build().unwrap();
    // Serves reads and writes before the move, unnamed.
    let keys: Vec<String> = (0..100).map(|i| format!("lp:{i}")).collect();
    for k in &keys {
        app.set::<_, _, ()>(k, "v").unwrap();
        assert_eq!(app.get::<_, String>(k).unwrap(), "v");
    }
    assert!(
        s[0].client_names().iter().all(|n| !n.starts_with("mredis:")),
        "{:?}",
        s[0].client_names()
    );
    // Without +fcall_ro the fence cannot be checked: every call says which
    // right to grant (sync and async), instead of running unguarded.
    let bare = as_user(&s[..3], "bare").build().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bare_async = rt.block_on(as_user(&s[..3], "bare").build_async()).unwrap();
    let lacks = |what: &str, r: redis::RedisResult<Option<String>>| {
        let text = r.expect_err(what).to_string();
        assert!(
            text.contains("grant +fcall_ro") && text.contains("name_connections(false)"),
            "{what}: {text}"
        );
        assert!(!text.contains("app-Pw-5e2b"), "{what}: {text}");
    };
    for k in keys.iter().take(5) {
        lacks("sync GET", bare.get(k));
        lacks("async GET", rt.block_on(bare_async.get(k)));
    }
    let never_used = as_user(&s[..3], "app").build().unwrap();
    let never_used_async = rt.block_on(as_user(&s[..3], "app").build_async()).unwrap();
    // `app` has idle connections open, unnamed: told that the application
    // logs in as `app`, the census counts them as possible old clients
    // and nothing moves (the test's own default-user connections, which
    // could have been named, stay "not an mredis client").
    let least = || RebalanceOptions {
        census: CensusOptions {
            client_users: vec!["app".into()],
            ..Default::default()
        },
        ..options()
    };
    let before = total_keys(&s);
    let e = rebalance(
        &builder(&s[..3]).build().unwrap(),
        &builder(&s).build().unwrap(),
        least(),
    )
    .expect_err("a live unnamed client of `app` is in the way");
    let text = e.to_string();
    assert!(is_refusal(&e), "{text}");
    assert!(
        text.contains("(no name) (user app") && text.contains("possibly an mredis client"),
        "{text}"
    );
    assert!(!text.contains("app-Pw-5e2b"), "{text}");
    assert_eq!(total_keys(&s), before, "nothing moved");
    close_clients(&s);
    let report = rebalance(
        &builder(&s[..3]).build().unwrap(),
        &builder(&s).build().unwrap(),
        least(),
    )
    .unwrap();
    assert!(report.moved > 0 && report.fence_refused.is_empty(), "{report:?}");
    for k in keys.iter().take(10) {
        retired("least-privilege GET", never_used.get::<_, Option<String>>(k));
        retired("least-privilege SET", never_used.set::<_, _, ()>(k, "lost"));
        retired("least-privilege GET, used before", app.get::<_, Option<String>>(k));
        retired(
            "least-privilege async SET",
            rt.block_on(never_used_async.set::<_, _, ()>(k, "lost")),
        );
    }
}

/// A migration-aware client whose user may not run scripts (`+@read +@write
/// +ping +fcall_ro`): it says so when it connects, naming the rights, on
/// every call, sync and async, instead of failing only the calls on keys
/// that move (`NOPERM ... evalsha`, about half of them).
#[test]
fn a_migration_aware_client_without_script_rights_says_so_at_connect() {
    if !redis_server_available() {
        return;
    }
    let s: Vec<RedisServer> = (0..4).map(|_| RedisServer::new()).collect();
    for server in &s {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("app")
            .arg("on")
            .arg(">app-Pw-5e2b")
            .arg("~*")
            .arg("+@read")
            .arg("+@write")
            .arg("+ping")
            .arg("+fcall_ro")
            .query(&mut server.conn())
            .unwrap();
    }
    let as_app = |list: &[RedisServer]| {
        MRedis::builder().servers(
            named(list)
                .into_iter()
                .map(|x| x.with_username("app").with_password("app-Pw-5e2b"))
                .collect::<Vec<_>>(),
        )
    };
    let lacks = |what: &str, r: redis::RedisResult<Option<String>>| {
        let text = r.expect_err(what).to_string();
        assert!(
            text.contains("+eval +evalsha") && text.contains("migrating_from"),
            "{what}: {text}"
        );
        assert!(!text.contains("app-Pw-5e2b"), "{what}: {text}");
    };
    let aware = as_app(&s).migrating_from(as_app(&s[..3])).build().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let aware_async = rt
        .block_on(as_app(&s).migrating_from(as_app(&s[..3])).build_async())
        .unwrap();
    for i in 0..20 {
        let k = format!("rights:{i}");
        lacks("sync GET", aware.get(&k));
        lacks("async GET", rt.block_on(aware_async.get(&k)));
    }
    // The same user on a plain client: no scripts needed, it works.
    let plain = as_app(&s).build().unwrap();
    plain.set::<_, _, ()>("rights:0", "v").unwrap();
    assert_eq!(plain.get::<_, String>("rights:0").unwrap(), "v");
}

/// A reconfiguration keeps connections to the servers that stay and
/// renames them; a kept connection makes the checks of its new
/// configuration as it is renamed. A client reconfigured onto a
/// configuration a rebalance retired therefore fails its calls, sync and
/// async, even on the connections it kept, and writes nothing.
#[test]
fn connections_kept_by_a_reconfiguration_onto_a_retired_configuration_are_refused() {
    if !redis_server_available() {
        return;
    }
    let s: Vec<RedisServer> = (0..4).map(|_| RedisServer::new()).collect();
    let three = || builder(&s[..3]);
    let four = || builder(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seed = three().build().unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("kept:{i}")).collect();
    for k in &keys {
        seed.set::<_, _, ()>(k, "v").unwrap();
    }
    drop(seed);
    let report = rebalance(&three().build().unwrap(), &four().build().unwrap(), options()).unwrap();
    assert!(report.moved > 0 && report.fence_refused.is_empty(), "{report:?}");

    // Clients of the current configuration, with idle connections to
    // every server (the three that stay in the retired one among them).
    let sync = four().build().unwrap();
    let aio = rt.block_on(four().build_async()).unwrap();
    for k in &keys {
        assert_eq!(sync.get::<_, String>(k).unwrap(), "v");
        assert_eq!(rt.block_on(aio.get::<_, String>(k)).unwrap(), "v");
    }
    // The reconfiguration itself succeeds (it opens nothing); every call
    // afterwards fails.
    sync.reconfigure(three()).unwrap();
    rt.block_on(aio.reconfigure(three())).unwrap();
    let before = total_keys(&s);
    for k in keys.iter().take(20) {
        retired("sync GET after the reconfiguration", sync.get::<_, Option<String>>(k));
        retired("sync SET after the reconfiguration", sync.set::<_, _, ()>(k, "lost"));
        retired(
            "async GET after the reconfiguration",
            rt.block_on(aio.get::<_, Option<String>>(k)),
        );
        retired(
            "async SET after the reconfiguration",
            rt.block_on(aio.set::<_, _, ()>(k, "lost")),
        );
    }
    assert_eq!(total_keys(&s), before, "a retired configuration wrote a key");
    for server in &s {
        for k in server.keys() {
            let v: String = redis::Commands::get(&mut server.conn(), &k).unwrap();
            assert_eq!(v, "v", "{k} on {}", server.port());
        }
    }
    // Back onto the current configuration: every key, no error.
    sync.reconfigure(four()).unwrap();
    rt.block_on(aio.reconfigure(four())).unwrap();
    for k in &keys {
        assert_eq!(sync.get::<_, String>(k).unwrap(), "v");
        assert_eq!(rt.block_on(aio.get::<_, String>(k)).unwrap(), "v");
    }
}
