//! The async client against real redis-servers: routing, concurrent
//! fan-out, pipelines, one command of every group.

use mredis::PerServer;
use mredis::aio::MRedis;
use mredis_tests::{RedisServer, original_index as index, servers, urls};
use redis::Commands;

fn holds(server: &RedisServer, key: &str) -> bool {
    server.conn().exists(key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_example_async() {
    let s = servers(2);
    let mr = MRedis::connect(urls(&s)).await.unwrap();
    for i in 0..100 {
        mr.set::<_, _, ()>(format!("key:{i}"), i).await.unwrap();
    }
    let fetched: PerServer<Vec<String>> = mr.keys("key:*").await.unwrap();
    let mut n = 0;
    for (i, (_, keys)) in fetched.iter().enumerate() {
        assert_eq!(keys.len() as i64, s[i].dbsize());
        for key in keys {
            assert_eq!(index(key.as_bytes(), 2), i);
            let _: i64 = mr.get(key).await.unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_are_send_and_the_client_is_clone() {
    let s = servers(2);
    let mr = MRedis::connect(urls(&s)).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..50 {
        let mr = mr.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                mr.set::<_, _, ()>(format!("t{t}:{i}"), i).await.unwrap();
            }
            let sizes: PerServer<i64> = mr.dbsize().await.unwrap();
            sizes.len()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 2);
    }
    assert_eq!(s[0].dbsize() + s[1].dbsize(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_and_pipelines_async() {
    let s = servers(3);
    let mr = MRedis::connect(urls(&s)).await.unwrap();
    let pings: PerServer<String> = mr.ping().await.unwrap();
    assert_eq!(pings.len(), 3);
    assert!(pings.values().all(|p| p == "PONG"));
    let key = "pipe";
    let owner = index(key.as_bytes(), 3);
    let (a, b): (i64, i64) = mr
        .pipeline(key)
        .unwrap()
        .incr(key, 2)
        .incr(key, 3)
        .query_async(&mr)
        .await
        .unwrap();
    assert_eq!((a, b), (2, 5));
    assert_eq!(s[owner].conn().get::<_, i64>(key).unwrap(), 5);
    let _: PerServer<()> = mr.flushdb().await.unwrap();
    assert!(s.iter().all(|x| x.dbsize() == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_of_every_group_async() {
    let s = servers(3);
    let mr = MRedis::connect(urls(&s)).await.unwrap();
    let on = |key: &str| &s[index(key.as_bytes(), 3)];

    mr.set_ex::<_, _, ()>("str", "v", 100).await.unwrap();
    assert_eq!(on("str").conn().get::<_, String>("str").unwrap(), "v");
    let n: i64 = mr.incr("cnt", 2).await.unwrap();
    assert_eq!(n, 2);
    let _: usize = mr.rpush("list", &["a", "b"][..]).await.unwrap();
    let popped: Option<String> = mr.lpop("list", None).await.unwrap();
    assert_eq!(popped.as_deref(), Some("a"));
    assert_eq!(on("list").conn().llen::<_, i64>("list").unwrap(), 1);
    let _: usize = mr.sadd("set", "m").await.unwrap();
    assert!(holds(on("set"), "set"));
    let _: usize = mr.zadd("z", "m", 2.0).await.unwrap();
    let score: f64 = mr.zscore("z", "m").await.unwrap();
    assert_eq!(score, 2.0);
    mr.hset_multiple::<_, _, _, ()>("h", &[("f", 1)]).await.unwrap();
    assert_eq!(on("h").conn().hget::<_, _, i64>("h", "f").unwrap(), 1);
    let _: bool = mr.setbit("bits", 3, true).await.unwrap();
    assert!(holds(on("bits"), "bits"));
    let _: bool = mr.pfadd("hll", "x").await.unwrap();
    assert!(holds(on("hll"), "hll"));
    let _: usize = mr.geo_add("geo", (13.361389, 38.115556, "Palermo")).await.unwrap();
    assert!(holds(on("geo"), "geo"));
    let _: String = mr.xadd("stream", "*", &[("f", "v")]).await.unwrap();
    assert!(holds(on("stream"), "stream"));
    let ttl_set: bool = mr.expire("str", 30).await.unwrap();
    assert!(ttl_set);
    let t: i64 = mr.ttl("str").await.unwrap();
    assert!(t > 20);
}
