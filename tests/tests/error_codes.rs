//! Server error codes come back unchanged on every path: single key,
//! fan-out, scatter-gather, key pipeline, fleet pipeline, transaction and
//! script, sync and async; an argument over `proto-max-bulk-len` is refused
//! before sending and leaves the connection usable.

use mredis::{MRedis, Server};
use mredis_tests::{RedisServer, servers, urls};
use redis::{Commands, RedisResult};

fn code<T: std::fmt::Debug>(r: RedisResult<T>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code().map(str::to_string).unwrap_or_else(|| format!("no code: {e}")),
    }
}

/// A key of `mr` that lives on server `index`.
fn key_on(mr: &MRedis, index: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| mr.server_index_for(k.as_bytes()) == index)
        .unwrap()
}

#[test]
fn wrongtype_nosript_busykey_on_every_path() {
    let s = servers(2);
    let mr = MRedis::new(urls(&s)).unwrap();
    let a = key_on(&mr, 0, "a");
    let b = key_on(&mr, 1, "b");
    mr.set::<_, _, ()>(&a, "string").unwrap();
    mr.set::<_, _, ()>(&b, "string").unwrap();

    // WRONGTYPE: single key, key pipeline, fleet pipeline, transaction, script.
    assert_eq!(code(mr.lpush::<_, _, i64>(&a, 1)), "WRONGTYPE");
    assert_eq!(
        code(mr.pipeline(&a).unwrap().lpush(&a, 1).query::<(i64,)>(&mr)),
        "WRONGTYPE"
    );
    assert_eq!(
        code(mr.pipeline_all().get(&b).lpush(&a, 1).query::<(String, i64)>(&mr)),
        "WRONGTYPE"
    );
    assert_eq!(
        code(mr.transaction(&[&a], |con, pipe| pipe.lpush(&a, 1).query::<Option<(i64,)>>(con))),
        "WRONGTYPE"
    );
    let script = mredis::Script::new("return redis.call('LPUSH', KEYS[1], 1)");
    assert_eq!(code(script.key(&a).invoke::<i64>(&mr)), "WRONGTYPE");

    // NOSCRIPT: EVALSHA of an unknown script, alone and in pipelines.
    let sha = "0123456789012345678901234567890123456789";
    assert_eq!(code(mr.evalsha::<_, _, _, i64>(sha, &[&a], &[1])), "NOSCRIPT");
    assert_eq!(
        code(mr.pipeline_all().evalsha(sha, &[&b], &[1]).query::<(i64,)>(&mr)),
        "NOSCRIPT"
    );

    // BUSYKEY: RESTORE onto an existing key.
    let dump: Vec<u8> = mr.dump(&a).unwrap();
    assert_eq!(code(mr.restore::<_, _, ()>(&a, 0, &dump)), "BUSYKEY");
    assert_eq!(
        code(mr.pipeline(&a).unwrap().restore(&a, 0, &dump).query::<((),)>(&mr)),
        "BUSYKEY"
    );
    assert_eq!(
        code(mr.pipeline_all().restore(&b, 0, &dump).query::<((),)>(&mr)),
        "BUSYKEY"
    );

    // Async: single key and fleet pipeline.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let am = mredis::aio::MRedis::connect(urls(&s)).await.unwrap();
        assert_eq!(code(am.lpush::<_, _, i64>(&a, 1).await), "WRONGTYPE");
        assert_eq!(code(am.evalsha::<_, _, _, i64>(sha, &[&a], &[1]).await), "NOSCRIPT");
        assert_eq!(
            code(
                am.pipeline_all()
                    .get(&b)
                    .lpush(&a, 1)
                    .query_async::<(String, i64)>(&am)
                    .await
            ),
            "WRONGTYPE"
        );
        assert_eq!(
            code(
                am.pipeline(&a)
                    .unwrap()
                    .restore(&a, 0, &dump)
                    .query_async::<((),)>(&am)
                    .await
            ),
            "BUSYKEY"
        );
        let script = mredis::Script::new("return redis.call('LPUSH', KEYS[1], 1)");
        assert_eq!(code(script.key(&a).invoke_async::<i64>(&am).await), "WRONGTYPE");
    });
}

#[test]
fn oom_and_readonly_on_every_path() {
    // Server 0 is full (1 MB, no eviction); server 1 is a read-only replica.
    let full = RedisServer::with_args(&["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]);
    let primary = RedisServer::new();
    let replica = RedisServer::with_args(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
    let list = [full.url(), replica.url()];
    let mr = MRedis::new(list.clone()).unwrap();
    let big = vec![b'x'; 64 * 1024];
    let mut con = full.conn();
    for i in 0.. {
        if con.set::<_, _, ()>(format!("fill:{i}"), &big[..]).is_err() {
            break;
        }
    }
    let a = key_on(&mr, 0, "a");
    let r = key_on(&mr, 1, "r");
    let a2 = key_on(&mr, 0, "c");
    let r2 = key_on(&mr, 1, "d");

    assert_eq!(code(mr.set::<_, _, ()>(&a, &big[..])), "OOM");
    assert_eq!(code(mr.set::<_, _, ()>(&r, 1)), "READONLY");
    // Scatter-gather: MSET split over the full server and the replica.
    let e = code(mr.mset::<_, _, ()>(&[(&a, 1), (&a2, 1)]));
    assert_eq!(e, "OOM");
    let e = code(mr.mset::<_, _, ()>(&[(&r, 1), (&r2, 1)]));
    assert_eq!(e, "READONLY");
    // Pipelines.
    assert_eq!(
        code(mr.pipeline(&a).unwrap().set(&a, &big[..]).query::<((),)>(&mr)),
        "OOM"
    );
    assert_eq!(code(mr.pipeline_all().set(&a, &big[..]).query::<((),)>(&mr)), "OOM");
    assert_eq!(code(mr.pipeline_all().set(&r, 1).query::<((),)>(&mr)), "READONLY");
    // Transaction (the server refuses the queued command: EXECABORT) and script.
    assert_eq!(
        code(mr.transaction(&[&a], |con, pipe| pipe.set(&a, &big[..]).query::<Option<((),)>>(con))),
        "EXECABORT"
    );
    let script = mredis::Script::new("return redis.call('SET', KEYS[1], ARGV[1])");
    assert_eq!(code(script.key(&a).arg(&big[..]).invoke::<()>(&mr)), "OOM");
    assert_eq!(code(script.key(&r).arg(1).invoke::<()>(&mr)), "READONLY");
    // Fan-out: FLUSHDB is refused by the replica only; `?` keeps its code.
    let err = mr.flushdb::<()>().unwrap_err();
    assert_eq!(err.failed().len(), 1);
    assert_eq!(err.failed()[0].1.code(), Some("READONLY"));
    assert_eq!(redis::RedisError::from(err).code(), Some("READONLY"));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let am = mredis::aio::MRedis::connect(list.clone()).await.unwrap();
        assert_eq!(code(am.set::<_, _, ()>(&a, &big[..]).await), "OOM");
        assert_eq!(code(am.mset::<_, _, ()>(&[(&r, 1), (&r2, 1)]).await), "READONLY");
        assert_eq!(
            code(am.pipeline_all().set(&a, &big[..]).query_async::<((),)>(&am).await),
            "OOM"
        );
    });
}

#[test]
fn an_argument_over_the_bulk_limit_is_refused_before_sending() {
    let s = servers(2);
    let list: Vec<Server> = s
        .iter()
        .map(|x| Server::from_parts("127.0.0.1", x.port(), 0).unwrap())
        .collect();
    let mr = MRedis::builder()
        .servers(list)
        .max_arg_size(1024)
        .pool_size(1)
        .build()
        .unwrap();
    let big = vec![b'v'; 1025];
    for (name, result) in [
        ("single", mr.set::<_, _, ()>("k", &big[..]).map(|_| ())),
        (
            "scatter",
            mr.mset::<_, _, ()>(&[("k", &big[..]), ("j", &big[..])]).map(|_| ()),
        ),
        (
            "pipeline",
            mr.pipeline("k")
                .unwrap()
                .set("k", &big[..])
                .query::<((),)>(&mr)
                .map(|_| ()),
        ),
        (
            "fleet",
            mr.pipeline_all().set("k", &big[..]).query::<((),)>(&mr).map(|_| ()),
        ),
    ] {
        let err = result.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("1025 bytes") && text.contains("nothing was sent"),
            "{name}: {text}"
        );
    }
    let err = mr.query_all::<()>(redis::cmd("ECHO").arg(&big[..])).unwrap_err();
    assert!(err.to_string().contains("1025 bytes"), "{err}");
    // A pipeline through a routed handle, sync and async: refused whole,
    // before its first (small) command is sent.
    let mut con = mr.get_connection().unwrap();
    let err = redis::pipe()
        .set("j", 1)
        .set("k", &big[..])
        .query::<()>(&mut con)
        .unwrap_err();
    assert!(err.to_string().contains("1025 bytes"), "handle: {err}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let urls: Vec<String> = s.iter().map(|x| x.url()).collect();
    let err = rt.block_on(async {
        let am = mredis::aio::MRedis::builder()
            .servers(urls)
            .max_arg_size(1024)
            .build_async()
            .await
            .unwrap();
        let mut con = am.get_connection().await.unwrap();
        redis::pipe()
            .set("j", 1)
            .set("k", &big[..])
            .query_async::<()>(&mut con)
            .await
            .unwrap_err()
    });
    assert!(err.to_string().contains("1025 bytes"), "async handle: {err}");
    // The same (only) pooled connection still works, and nothing was written.
    mr.set::<_, _, ()>("k", &big[..1024]).unwrap();
    assert_eq!(mr.strlen::<_, usize>("k").unwrap(), 1024);
    assert!(!mr.exists::<_, bool>("j").unwrap());
}

#[test]
fn atomic_key_pipelines_fail_alike_sync_and_async() {
    let s = servers(2);
    let mr = MRedis::new(urls(&s)).unwrap();
    let a = key_on(&mr, 0, "t");
    mr.set::<_, _, ()>(&a, "string").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let am = rt.block_on(mredis::aio::MRedis::connect(urls(&s))).unwrap();

    // A command the server refuses while queueing: EXEC aborts, nothing runs.
    let queued = |mut p: mredis::KeyPipeline| {
        p.atomic()
            .set(&a, "changed")
            .add_routed(&a, redis::cmd("SET").arg(&a).clone());
        p
    };
    let sync = queued(mr.pipeline(&a).unwrap()).query::<((), ())>(&mr).unwrap_err();
    let asynced = rt
        .block_on(queued(am.pipeline(&a).unwrap()).query_async::<((), ())>(&am))
        .unwrap_err();
    for e in [&sync, &asynced] {
        assert_eq!(e.code(), Some("EXECABORT"), "{e}");
    }
    assert_eq!(sync.to_string(), asynced.to_string(), "{sync:?} {asynced:?}");
    assert_eq!(mr.get::<_, String>(&a).unwrap(), "string");

    // A command failing when run: its error; the others ran.
    let running = |mut p: mredis::KeyPipeline| {
        p.atomic().append(&a, "+").lpush(&a, 1).append(&a, "!");
        p
    };
    let sync = running(mr.pipeline(&a).unwrap())
        .query::<(i64, i64, i64)>(&mr)
        .unwrap_err();
    let asynced = rt
        .block_on(running(am.pipeline(&a).unwrap()).query_async::<(i64, i64, i64)>(&am))
        .unwrap_err();
    for e in [&sync, &asynced] {
        assert_eq!(e.code(), Some("WRONGTYPE"), "{e}");
    }
    assert_eq!(mr.get::<_, String>(&a).unwrap(), "string+!+!");

    // The connections are still in step: the next replies are their own.
    assert_eq!(mr.get::<_, String>(&a).unwrap(), "string+!+!");
    assert_eq!(rt.block_on(am.get::<_, String>(&a)).unwrap(), "string+!+!");
}
