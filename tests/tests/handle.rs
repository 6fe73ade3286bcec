//! Routed connection handles: code written only against redis-rs's
//! `ConnectionLike` / `aio::ConnectionLike` (cmd, pipe, transaction, Script,
//! Commands, TypedCommands) runs on three servers, and every key ends on
//! its owner.

use std::collections::HashSet;

use mredis::MRedis;
use mredis_tests::{servers, urls};
use redis::{AsyncCommands, Commands, RedisResult, TypedCommands};

/// Written for any redis-rs connection; knows nothing of mredis.
fn generic_sync<C: redis::ConnectionLike>(con: &mut C) -> RedisResult<()> {
    redis::cmd("SET").arg("g:a").arg(1).exec(con)?;
    let v: i64 = redis::cmd("GET").arg("g:a").query(con)?;
    assert_eq!(v, 1);
    Commands::set::<_, _, ()>(con, "g:b", 2)?;
    let (a, b): (i64, i64) = redis::pipe().incr("g:a", 1).incr("g:b", 1).query(con)?;
    assert_eq!((a, b), (2, 3));
    // Replies in call order, over several servers, with ignore().
    let mut pipe = redis::pipe();
    for i in 0..50 {
        pipe.set(format!("g:p{i}"), i).ignore().get(format!("g:p{i}"));
    }
    let got: Vec<i64> = pipe.query(con)?;
    assert_eq!(got, (0..50).collect::<Vec<i64>>());
    // MGET and DEL are split and merged.
    let keys: Vec<String> = (0..50).map(|i| format!("g:p{i}")).collect();
    let values: Vec<i64> = Commands::mget(con, &keys)?;
    assert_eq!(values, (0..50).collect::<Vec<i64>>());
    // A transaction on one key (WATCH/MULTI/EXEC on its server).
    let n: (i64,) = redis::transaction(con, &["g:t"], |c, p| {
        let old: Option<i64> = Commands::get(c, "g:t")?;
        p.set("g:t", old.unwrap_or(0) + 10).ignore().get("g:t").query(c)
    })?;
    assert_eq!(n.0, 10);
    // Scripts: EVALSHA, loaded on NOSCRIPT.
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let s: i64 = script.key("g:s").arg(5).invoke(con)?;
    assert_eq!(s, 5);
    // TypedCommands: fixed return types.
    TypedCommands::set(con, "g:typed", "x")?;
    assert_eq!(TypedCommands::get(con, "g:typed")?, Some("x".to_string()));
    assert_eq!(TypedCommands::incr(con, "g:n", 3)?, 3);
    assert!(TypedCommands::exists(con, "g:typed")?);
    Ok(())
}

async fn generic_async<C: redis::aio::ConnectionLike + Send + Sync>(con: &mut C) -> RedisResult<()> {
    redis::cmd("SET").arg("h:a").arg(1).exec_async(con).await?;
    let v: i64 = con.get("h:a").await?;
    assert_eq!(v, 1);
    let (a, b): (i64, i64) = redis::pipe().incr("h:a", 1).incr("h:b", 1).query_async(con).await?;
    assert_eq!((a, b), (2, 1));
    let keys: Vec<String> = (0..30).map(|i| format!("h:k{i}")).collect();
    let items: Vec<(String, i64)> = keys.iter().cloned().zip(0..).collect();
    con.mset::<_, _, ()>(&items).await?;
    let values: Vec<i64> = con.mget(&keys).await?;
    assert_eq!(values, (0..30).collect::<Vec<i64>>());
    let (x,): (i64,) = redis::pipe().atomic().incr("h:a", 5).query_async(con).await?;
    assert_eq!(x, 7);
    let script = redis::Script::new("return redis.call('GET', KEYS[1])");
    let s: i64 = script.key("h:a").invoke_async(con).await?;
    assert_eq!(s, 7);
    Ok(())
}

#[test]
fn redis_rs_code_runs_on_the_sync_handle_and_keys_land_on_their_owner() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    let mut con = mr.get_connection().unwrap();
    generic_sync(&mut con).unwrap();

    // Every key is on the server mredis places it on.
    let mut seen = 0;
    for (i, server) in s.iter().enumerate() {
        for k in server.keys() {
            assert_eq!(mr.server_index_for(k.as_bytes()), i, "{k}");
            seen += 1;
        }
    }
    assert!(seen > 50);
    // Server-wide commands merged as Redis Cluster clients do.
    let n: usize = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(n, seen);
    let keys: Vec<String> = Commands::keys(&mut con, "g:*").unwrap();
    assert_eq!(keys.len(), seen);
    let scanned: HashSet<String> = Commands::scan::<String>(&mut con)
        .unwrap()
        .map(|k| k.unwrap())
        .collect();
    assert_eq!(scanned.len(), seen, "SCAN walks every server");
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    // Keys on two servers: CROSSSLOT, nothing sent.
    let (a, b) = two_keys_on_different_servers(&mr);
    let err = redis::cmd("RENAME").arg(&a).arg(&b).exec(&mut con).unwrap_err();
    assert_eq!(err.code(), Some("CROSSSLOT"), "{err}");
    let err = redis::pipe()
        .atomic()
        .set(&a, 1)
        .set(&b, 1)
        .query::<()>(&mut con)
        .unwrap_err();
    assert_eq!(err.code(), Some("CROSSSLOT"), "{err}");
    // Commands mredis leaves out are errors naming them.
    let err = redis::cmd("SELECT").arg(1).exec(&mut con).unwrap_err();
    assert!(err.to_string().contains("SELECT"), "{err}");
    let err = redis::cmd("SWAPDB").arg(0).arg(1).exec(&mut con).unwrap_err();
    assert!(err.to_string().contains("SWAPDB"), "{err}");
    let err = redis::cmd("EVAL").arg("return 1").arg(0).exec(&mut con).unwrap_err();
    assert!(err.to_string().contains("no key"), "{err}");
    // FLUSHDB answers OK once every server did.
    redis::cmd("FLUSHDB").exec(&mut con).unwrap();
    assert!(s.iter().all(|x| x.dbsize() == 0));
}

fn two_keys_on_different_servers(mr: &MRedis) -> (String, String) {
    let a = "x:0".to_string();
    let b = (1..)
        .map(|i| format!("x:{i}"))
        .find(|k| mr.server_index_for(k.as_bytes()) != mr.server_index_for(a.as_bytes()))
        .unwrap();
    (a, b)
}

#[test]
fn redis_rs_code_runs_on_the_async_handle() {
    let s = servers(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mr = mredis::aio::MRedis::connect(urls(&s)).await.unwrap();
        let mut con = mr.get_connection().await.unwrap();
        generic_async(&mut con).await.unwrap();
        let n: usize = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
        let total: i64 = s.iter().map(|x| x.dbsize()).sum();
        assert_eq!(n as i64, total);
        // WATCH ... EXEC on a connection the handle keeps:
        // redis::aio::transaction_async runs again when another client
        // changed the watched key between its WATCH and its EXEC.
        let owner = MRedis::new(urls(&s)).unwrap().server_index_for(b"h:w");
        let tries = std::sync::atomic::AtomicUsize::new(0);
        let (v,): (i64,) = redis::aio::transaction_async(con.clone(), &["h:w"], |mut c, mut pipe| {
            let first = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
            let mut other = s[owner].conn();
            async move {
                let v: Option<i64> = c.get("h:w").await?;
                if first {
                    let _: () = redis::Commands::set(&mut other, "h:w", 100).unwrap();
                }
                pipe.set("h:w", v.unwrap_or(0) + 1)
                    .ignore()
                    .get("h:w")
                    .query_async(&mut c)
                    .await
            }
        })
        .await
        .unwrap();
        assert_eq!((v, tries.into_inner()), (101, 2));
        let stored: i64 = redis::Commands::get(&mut s[owner].conn(), "h:w").unwrap();
        assert_eq!(stored, 101);
        // Watched keys must share a server.
        let (a, b) = (0..1000)
            .map(|i| (format!("w:{i}"), format!("w:{}", i + 1)))
            .find(|(a, b)| {
                let m = MRedis::new(urls(&s)).unwrap();
                m.server_index_for(a.as_bytes()) != m.server_index_for(b.as_bytes())
            })
            .unwrap();
        let err = redis::cmd("WATCH")
            .arg(&a)
            .arg(&b)
            .exec_async(&mut con)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("WATCH"), "{err}");
    });
    let mr = MRedis::new(urls(&s)).unwrap();
    for (i, server) in s.iter().enumerate() {
        for k in server.keys() {
            assert_eq!(mr.server_index_for(k.as_bytes()), i, "{k}");
        }
    }
}

/// redis-rs's `is_open` for a fleet: true while some server can be
/// reached (one down: calls on its keys fail, naming it); false once the
/// last attempt to reach every server failed, so a pool such as r2d2
/// (`has_broken` = `!is_open()`) drops the handle; true again once a
/// call succeeds.
#[test]
fn is_open_says_whether_any_server_of_the_fleet_can_be_reached() {
    let mut s = servers(3);
    let mr = MRedis::builder()
        .servers(urls(&s))
        .connect_timeout(std::time::Duration::from_millis(500))
        .build()
        .unwrap();
    let mut con = mr.get_connection().unwrap();
    let ping_all = |con: &mut mredis::Connection| redis::cmd("DBSIZE").query::<i64>(con);
    assert!(redis::ConnectionLike::is_open(&con));
    assert!(ping_all(&mut con).is_ok());
    // One server down: its keys fail, the handle stays open.
    s[1].stop();
    for _ in 0..2 {
        assert!(ping_all(&mut con).is_err());
    }
    assert!(redis::ConnectionLike::is_open(&con), "one server of three is down");
    // Every server down: after a call found none, not open.
    s[0].stop();
    s[2].stop();
    for _ in 0..2 {
        let e = ping_all(&mut con).unwrap_err();
        assert!(e.is_io_error() || e.is_connection_refusal(), "{e}");
    }
    assert!(!redis::ConnectionLike::is_open(&con), "the whole fleet is down");
    // A handle made meanwhile cannot connect either (redis-rs's too).
    assert!(mr.get_connection().is_err());
    // Back up: the next call succeeds and the handle is open again.
    for x in &mut s {
        x.restart();
    }
    assert_eq!(ping_all(&mut con).unwrap(), 0);
    assert!(redis::ConnectionLike::is_open(&con));
}

/// An `ignore_errors()` pipeline with one command the handle cannot route
/// (keys on two servers; a command the servers do not know) gets that
/// command's refusal in its slot and every other reply beside it, as
/// redis-rs does with a server's error; sync and async.
#[test]
fn an_ignore_errors_pipeline_keeps_every_other_reply_beside_a_refused_command() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    let (a, b) = two_keys_on_different_servers(&mr);
    let check = |values: Vec<redis::Value>, what: &str| {
        assert_eq!(values.len(), 4, "{what}: {values:?}");
        assert_eq!(values[0], redis::Value::Okay, "{what}");
        let refused = redis::Value::extract_error(values[1].clone()).expect_err(what);
        assert_eq!(refused.code(), Some("CROSSSLOT"), "{what}: {refused}");
        assert!(
            redis::Value::extract_error(values[2].clone()).is_err(),
            "{what}: {:?}",
            values[2]
        );
        assert_eq!(values[3], redis::Value::Int(1), "{what}");
    };
    let pipe = || {
        let mut p = redis::pipe();
        p.ignore_errors()
            .set(&a, "1")
            .cmd("RENAME")
            .arg(&a)
            .arg(&b)
            .cmd("JSON.GET")
            .arg(&a)
            .exists(&a);
        p
    };
    let mut con = mr.get_connection().unwrap();
    check(pipe().query(&mut con).unwrap(), "sync");
    assert_eq!(s.iter().map(|x| x.dbsize()).sum::<i64>(), 1, "SET ran, RENAME did not");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let amr = rt.block_on(mredis::aio::MRedis::connect(urls(&s))).unwrap();
    let mut acon = rt.block_on(amr.get_connection()).unwrap();
    check(rt.block_on(pipe().query_async(&mut acon)).unwrap(), "async");
    // Without ignore_errors, redis-rs gives the first error; the other
    // commands ran, as on one server.
    let e = redis::pipe()
        .set(&b, "2")
        .cmd("RENAME")
        .arg(&a)
        .arg(&b)
        .query::<()>(&mut con)
        .unwrap_err();
    assert_eq!(e.code(), Some("CROSSSLOT"), "{e}");
    let v: String = mr.get(&b).unwrap();
    assert_eq!(v, "2");
}
