//! Whole-fleet operations: SCAN over every server, per-key HSCAN/SSCAN/ZSCAN,
//! cross-server pipelines, per-shard transactions, scripts.

use std::collections::BTreeSet;

use futures::StreamExt;
use mredis::{MRedis, PerServer, Script};
use mredis_tests::{original_index as index, servers, urls};
use redis::Commands;

#[test]
fn scan_yields_every_key_of_every_server_once() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    let keys: BTreeSet<String> = (0..1000).map(|i| format!("scan:{i}")).collect();
    let items: Vec<(String, i32)> = keys.iter().map(|k| (k.clone(), 1)).collect();
    mr.mset::<_, _, ()>(&items).unwrap();
    mr.set::<_, _, ()>("other", 1).unwrap();
    let all: Vec<String> = mr.scan_iter().unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(all.len(), 1001, "each key exactly once");
    let matched: Vec<String> = mr.scan_match("scan:*").unwrap().collect::<Result<_, _>>().unwrap();
    let matched_set: BTreeSet<String> = matched.iter().cloned().collect();
    assert_eq!(matched.len(), 1000);
    assert_eq!(matched_set, keys);
    assert!(s.iter().all(|x| x.dbsize() > 200), "keys spread over all servers");
}

#[test]
fn per_key_scans_walk_the_owning_server() {
    let s = servers(2);
    let mr = MRedis::new(urls(&s)).unwrap();
    let fields: Vec<(String, i64)> = (0..300).map(|i| (format!("f{i}"), i)).collect();
    mr.hset_multiple::<_, _, _, ()>("hash", &fields).unwrap();
    let got: Vec<(String, i64)> = mr.hscan("hash").unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(got.len(), 300);
    let got: Vec<(String, i64)> = mr
        .hscan_match("hash", "f1*")
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got.len(), fields.iter().filter(|(f, _)| f.starts_with("f1")).count());
    let members: Vec<String> = (0..250).map(|i| format!("m{i}")).collect();
    mr.sadd::<_, _, ()>("set", &members).unwrap();
    let got: BTreeSet<String> = mr.sscan("set").unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(got.len(), 250);
    for (i, m) in members.iter().enumerate() {
        mr.zadd::<_, _, _, ()>("zset", m, i as f64).unwrap();
    }
    let got: Vec<(String, f64)> = mr.zscan("zset").unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(got.len(), 250);
    let owner = index(b"zset", 2);
    assert_eq!(s[owner].conn().zcard::<_, usize>("zset").unwrap(), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_scan_streams() {
    let s = servers(3);
    let mr = mredis::aio::MRedis::connect(urls(&s)).await.unwrap();
    for i in 0..500 {
        mr.set::<_, _, ()>(format!("a:{i}"), i).await.unwrap();
    }
    let keys: Vec<redis::RedisResult<String>> = mr.scan_match("a:*").await.unwrap().collect().await;
    let keys: BTreeSet<String> = keys.into_iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(keys.len(), 500);
    mr.sadd::<_, _, ()>("s", &["x", "y", "z"][..]).await.unwrap();
    let members: Vec<redis::RedisResult<String>> = mr.sscan("s").await.unwrap().collect().await;
    assert_eq!(members.len(), 3);
}

#[test]
fn cross_server_pipeline_returns_replies_in_call_order() {
    let s = servers(4);
    let mr = MRedis::new(urls(&s)).unwrap();
    let mut pipe = mr.pipeline_all();
    for i in 0..200 {
        pipe.set(format!("p{i}"), i).ignore();
    }
    for i in 0..200 {
        pipe.get(format!("p{i}"));
    }
    let got: Vec<i64> = pipe.query(&mr).unwrap();
    assert_eq!(got, (0..200).collect::<Vec<i64>>());
    for i in 0..200 {
        let k = format!("p{i}");
        assert_eq!(s[index(k.as_bytes(), 4)].conn().get::<_, i64>(&k).unwrap(), i);
    }
    assert!(s.iter().all(|x| x.dbsize() > 20));
    // A co-located command spanning servers fails before anything is sent.
    let a = "x1";
    let b = (0..100)
        .map(|i| format!("y{i}"))
        .find(|k| index(k.as_bytes(), 4) != index(a.as_bytes(), 4))
        .unwrap();
    let before: Vec<i64> = s.iter().map(|x| x.dbsize()).collect();
    let err = mr
        .pipeline_all()
        .set("z", 1)
        .rename(a, &b)
        .query::<()>(&mr)
        .unwrap_err();
    assert!(err.to_string().contains("RENAME"), "{err}");
    assert_eq!(s.iter().map(|x| x.dbsize()).collect::<Vec<_>>(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_server_pipeline_async() {
    let s = servers(3);
    let mr = mredis::aio::MRedis::connect(urls(&s)).await.unwrap();
    let mut pipe = mr.pipeline_all();
    for i in 0..100 {
        pipe.incr(format!("c{i}"), i);
    }
    let got: Vec<i64> = pipe.query_async(&mr).await.unwrap();
    assert_eq!(got, (0..100).collect::<Vec<i64>>());
}

#[test]
fn transactions_run_on_the_owning_server_and_retry() {
    let s = servers(2);
    let mr = MRedis::builder().servers(urls(&s)).hash_tags(true).build().unwrap();
    mr.set::<_, _, ()>("{acct}:a", 100).unwrap();
    mr.set::<_, _, ()>("{acct}:b", 0).unwrap();
    let mut attempts = 0;
    let (a, b): (i64, i64) = mr
        .transaction(&["{acct}:a", "{acct}:b"], |con, pipe| {
            attempts += 1;
            let a: i64 = con.get("{acct}:a")?;
            if attempts == 1 {
                // Someone else changes a watched key: the transaction retries.
                s[index(b"acct", 2)].conn().set::<_, _, ()>("{acct}:a", 90)?;
            }
            pipe.set("{acct}:a", a - 10)
                .ignore()
                .incr("{acct}:b", 10)
                .ignore()
                .get("{acct}:a")
                .get("{acct}:b");
            pipe.query(con)
        })
        .unwrap();
    assert_eq!(attempts, 2);
    assert_eq!((a, b), (80, 10));
    let owner = &s[index(b"acct", 2)];
    assert_eq!(owner.conn().get::<_, i64>("{acct}:a").unwrap(), 80);
    // Keys on different servers are refused before anything is sent.
    let plain = MRedis::new(urls(&s)).unwrap();
    let a = "k1";
    let b = (0..100)
        .map(|i| format!("j{i}"))
        .find(|k| index(k.as_bytes(), 2) != index(a.as_bytes(), 2))
        .unwrap();
    let err = plain.transaction(&[a, b.as_str()], |_, _| Ok(Some(()))).unwrap_err();
    assert!(err.to_string().contains("transaction"), "{err}");
}

#[test]
fn scripts_load_themselves_on_the_owning_server() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    let script = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let exists: PerServer<Vec<bool>> = mr.script_exists(script.get_hash()).unwrap();
    assert!(exists.values().all(|v| v == &vec![false]));
    let n: i64 = script.key("counter").arg(5).invoke(&mr).unwrap();
    assert_eq!(n, 5);
    let n: i64 = script.key("counter").arg(2).invoke(&mr).unwrap();
    assert_eq!(n, 7);
    let owner = index(b"counter", 3);
    assert_eq!(s[owner].conn().get::<_, i64>("counter").unwrap(), 7);
    // SCRIPT EXISTS reports per server: loaded only where it ran.
    let exists: PerServer<Vec<bool>> = mr.script_exists(script.get_hash()).unwrap();
    for (i, (_, v)) in exists.iter().enumerate() {
        assert_eq!(v, &vec![i == owner], "server {i}");
    }
    // SCRIPT LOAD everywhere, then SCRIPT FLUSH everywhere.
    let loaded: PerServer<String> = mr.script_load("return 1").unwrap();
    assert!(loaded.values().all(|h| h.len() == 40));
    let _: PerServer<()> = mr.script_flush().unwrap();
    let exists: PerServer<Vec<bool>> = mr.script_exists(script.get_hash()).unwrap();
    assert!(exists.values().all(|v| v == &vec![false]));
    // EVAL routes by its keys.
    let v: i64 = mr
        .eval("return redis.call('GET', KEYS[1])", &["counter"], Vec::<String>::new())
        .unwrap();
    assert_eq!(v, 7);
}

#[test]
fn scan_options_filter_by_pattern_and_type_on_every_server() {
    let s = mredis_tests::servers(3);
    let mr = MRedis::new(mredis_tests::urls(&s)).unwrap();
    for i in 0..60 {
        mr.set::<_, _, ()>(format!("so:str:{i}"), i).unwrap();
        mr.rpush::<_, _, ()>(format!("so:list:{i}"), i).unwrap();
    }
    let opts = || {
        redis::ScanOptions::default()
            .with_pattern("so:*")
            .with_type("list")
            .with_count(7)
    };
    let mut keys: Vec<String> = mr.scan_options(opts()).unwrap().collect::<Result<_, _>>().unwrap();
    keys.sort();
    let mut expected: Vec<String> = (0..60).map(|i| format!("so:list:{i}")).collect();
    expected.sort();
    assert_eq!(keys, expected);
    assert!(
        s.iter().all(|x| x.dbsize() > 0),
        "the keys are spread over every server"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = rt.block_on(async {
        let am = mredis::aio::MRedis::connect(mredis_tests::urls(&s)).await.unwrap();
        let stream = am.scan_options::<String>(opts()).await.unwrap();
        stream.map(|k| k.unwrap()).collect::<Vec<_>>().await.len()
    });
    assert_eq!(n, 60);
}

#[test]
fn keyless_scripts_run_where_the_caller_says_or_are_refused() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    mr.set::<_, _, ()>("only-key", 1).unwrap();
    let owner = mr.server_for("only-key").unwrap().to_string();
    let script = Script::new("return redis.call('DBSIZE')");
    let err = script.prepare_invoke().invoke::<i64>(&mr).unwrap_err();
    assert!(err.to_string().contains("invoke_on"), "{err}");
    for server in mr.servers() {
        let n: i64 = script.prepare_invoke().invoke_on(&mr, server.name()).unwrap();
        assert_eq!(n, i64::from(server.name() == owner), "{}", server.name());
    }
    let err = script
        .prepare_invoke()
        .invoke_on::<i64>(&mr, "nowhere:1:0")
        .unwrap_err();
    assert!(err.to_string().contains("nowhere:1:0"), "{err}");
    // A key of another server is refused.
    let other = mr
        .servers()
        .iter()
        .find(|x| x.name() != owner)
        .unwrap()
        .name()
        .to_string();
    let err = script.key("only-key").invoke_on::<i64>(&mr, &other).unwrap_err();
    assert_eq!(err.code(), Some("CROSSSLOT"), "{err}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n: i64 = rt.block_on(async {
        let am = mredis::aio::MRedis::connect(urls(&s)).await.unwrap();
        script.prepare_invoke().invoke_on_async(&am, &owner).await.unwrap()
    });
    assert_eq!(n, 1);
}

#[test]
fn scripts_fail_alike_sync_and_async() {
    let s = servers(2);
    let mr = MRedis::new(urls(&s)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let am = rt.block_on(mredis::aio::MRedis::connect(urls(&s))).unwrap();
    let owner = mr.server_for("sk").unwrap().to_string();

    // Not loaded anywhere: each client loads it on NOSCRIPT and runs it.
    let echo = Script::new("return ARGV[1]");
    let v: String = echo.key("sk").arg("a").invoke(&mr).unwrap();
    assert_eq!(v, "a");
    mr.script_flush::<()>().unwrap();
    let v: String = rt.block_on(echo.key("sk").arg("b").invoke_async(&am)).unwrap();
    assert_eq!(v, "b");

    // SCRIPT LOAD refuses code that does not compile: its error.
    let broken = Script::new("return (");
    let sync = broken.key("sk").invoke::<()>(&mr).unwrap_err();
    let asynced = rt.block_on(broken.key("sk").invoke_async::<()>(&am)).unwrap_err();
    assert!(sync.to_string().contains("compiling"), "{sync}");
    assert_eq!(sync.to_string(), asynced.to_string());

    // An error raised by the script is the server's reply, unchanged.
    let raising = Script::new("return redis.error_reply('MYCODE went wrong')");
    let sync = raising.key("sk").invoke::<()>(&mr).unwrap_err();
    let asynced = rt.block_on(raising.key("sk").invoke_async::<()>(&am)).unwrap_err();
    assert_eq!(sync.code(), Some("MYCODE"), "{sync}");
    assert_eq!(sync.to_string(), asynced.to_string());

    // A value of the wrong type names the server that ran it.
    let sync = echo.key("sk").arg("x").invoke::<i64>(&mr).unwrap_err();
    let asynced = rt
        .block_on(echo.key("sk").arg("x").invoke_async::<i64>(&am))
        .unwrap_err();
    assert!(sync.to_string().contains(&owner), "{sync}");
    assert_eq!(sync.to_string(), asynced.to_string());
    let on = echo.arg("x").invoke_on::<i64>(&mr, &owner).unwrap_err();
    assert_eq!(on.to_string(), sync.to_string());
}

#[test]
fn a_failed_scan_yields_its_error_once_then_ends() {
    let s = servers(2);
    let mr = MRedis::new(urls(&s)).unwrap();
    mr.set::<_, _, ()>("plain", "string").unwrap();
    let got: Vec<redis::RedisResult<String>> = mr.hscan("plain").unwrap().collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].as_ref().unwrap_err().code(), Some("WRONGTYPE"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got: Vec<redis::RedisResult<String>> = rt.block_on(async {
        let am = mredis::aio::MRedis::connect(urls(&s)).await.unwrap();
        am.hscan("plain").await.unwrap().collect().await
    });
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].as_ref().unwrap_err().code(), Some("WRONGTYPE"));
}
