//! The core client against real redis-servers: placement, fan-out, per-key
//! pipelines, one command of every group, configuration errors. Every check
//! asks the servers directly, not through mredis.

use mredis::{MRedis, PerServer};
use mredis_tests::{RedisServer, original_index as python_mredis_index, servers, urls};
use redis::Commands;

fn names(servers: &[RedisServer]) -> Vec<String> {
    servers.iter().map(|s| format!("127.0.0.1:{}:0", s.port())).collect()
}

fn holds(server: &RedisServer, key: &[u8]) -> bool {
    let mut con = server.conn();
    con.exists(key).unwrap()
}

#[test]
fn seed_readme_example_with_two_servers() {
    let s = servers(2);
    let mr = MRedis::new(urls(&s)).unwrap();
    let keys: Vec<String> = (0..100)
        .map(|i| format!("key:{:.8}", 1_700_000_000.0 + i as f64 * 0.001))
        .collect();
    for key in &keys {
        mr.set::<_, _, ()>(key, "value").unwrap();
    }
    let fetched: PerServer<Vec<String>> = mr.keys("key:*").unwrap();
    assert_eq!(fetched.names().collect::<Vec<_>>(), names(&s));
    let mut results = Vec::new();
    for (i, (server, server_keys)) in fetched.iter().enumerate() {
        let mut direct = s[i].keys();
        direct.sort();
        let mut got = server_keys.clone();
        got.sort();
        assert_eq!(got, direct, "KEYS for {server} must be that server's keys");
        for key in server_keys {
            let v: String = mr.get(key).unwrap();
            results.push(format!("{key}->{v}"));
        }
    }
    assert_eq!(results.len(), 100);
    // Both servers got a share, each key where the original library puts it.
    assert!(fetched.values().all(|k| !k.is_empty()));
    for key in &keys {
        let owner = python_mredis_index(key.as_bytes(), 2);
        assert!(holds(&s[owner], key.as_bytes()), "{key} should be on server {owner}");
        assert!(!holds(&s[1 - owner], key.as_bytes()));
    }
}

#[test]
fn placement_matches_the_original_for_ascii_binary_and_empty_keys() {
    let s = servers(5);
    let mr = MRedis::new(urls(&s)).unwrap();
    let mut keys: Vec<Vec<u8>> = (0..1500).map(|i| format!("user:{i}:profile").into_bytes()).collect();
    keys.extend((0..=255u8).map(|b| vec![b, 0xff - b, b'x']));
    keys.push(Vec::new());
    keys.push(b"{tag}:not-a-tag-in-standard".to_vec());
    for key in &keys {
        mr.set::<_, _, ()>(&key[..], 1).unwrap();
    }
    let mut per_server = [0usize; 5];
    for key in &keys {
        let owner = python_mredis_index(key, 5);
        per_server[owner] += 1;
        assert!(holds(&s[owner], key), "key {key:?} must be on server {owner}");
        assert_eq!(mr.server_for(&key[..]).unwrap(), names(&s)[owner]);
    }
    let total: i64 = s.iter().map(|x| x.dbsize()).sum();
    assert_eq!(total as usize, keys.len(), "every key stored exactly once");
    assert!(per_server.iter().all(|&n| n > 200), "all servers used: {per_server:?}");
}

#[test]
fn server_names_and_seed_style_tuples() {
    let s = servers(2);
    let mr = MRedis::new(s.iter().map(|x| ("127.0.0.1", x.port(), 0i64))).unwrap();
    let listed: Vec<String> = mr.servers().iter().map(|x| x.name().to_string()).collect();
    assert_eq!(listed, names(&s));
    mr.set::<_, _, ()>("k", "v").unwrap();
    let owner = python_mredis_index(b"k", 2);
    assert!(holds(&s[owner], b"k"));
}

#[test]
fn every_fan_out_command_reaches_every_server() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    for i in 0..60 {
        mr.set::<_, _, ()>(format!("k{i}"), i).unwrap();
    }
    let sizes: PerServer<i64> = mr.dbsize().unwrap();
    for (i, server) in s.iter().enumerate() {
        assert_eq!(sizes[names(&s)[i].as_str()], server.dbsize());
    }
    assert_eq!(sizes.values().sum::<i64>(), 60);

    let pings: PerServer<String> = mr.ping().unwrap();
    assert!(
        pings.values().all(|p| p == "PONG"),
        "PING must send PING, not LASTSAVE: {pings:?}"
    );
    let echoed: PerServer<String> = mr.echo("hello").unwrap();
    assert!(echoed.values().all(|p| p == "hello"));
    let info: PerServer<String> = mr.info().unwrap();
    for (i, (_, text)) in info.iter().enumerate() {
        assert!(
            text.contains(&format!("tcp_port:{}", s[i].port())),
            "INFO of server {i} must be its own"
        );
    }
    let lastsave: PerServer<i64> = mr.lastsave().unwrap();
    assert!(lastsave.values().all(|&t| t > 1_600_000_000));
    let saved: PerServer<String> = mr.save().unwrap();
    assert!(saved.values().all(|r| r == "OK"));
    let bg: PerServer<String> = mr.bgsave().unwrap();
    assert_eq!(bg.len(), 3);
    // BGREWRITEAOF while a BGSAVE runs is only scheduled; wait until every
    // server has finished its BGSAVE, as a user would, then it starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while mr
        .info()
        .map(|info: PerServer<String>| info.values().any(|t| t.contains("rdb_bgsave_in_progress:1")))
        .unwrap()
    {
        assert!(std::time::Instant::now() < deadline, "BGSAVE never finished");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let aof: PerServer<String> = mr.bgrewriteaof().unwrap();
    assert_eq!(aof.len(), 3);
    assert!(aof.values().all(|r| r.contains("rewriting")), "{aof:?}");
    let random: PerServer<Option<String>> = mr.randomkey().unwrap();
    for (i, (_, key)) in random.iter().enumerate() {
        let key = key.clone().expect("every server holds keys");
        assert!(
            holds(&s[i], key.as_bytes()),
            "RANDOMKEY of server {i} must be one of its keys"
        );
    }
    let times: PerServer<(String, String)> = mr.time().unwrap();
    assert_eq!(times.len(), 3);

    let _: PerServer<()> = mr.flushdb().unwrap();
    assert!(s.iter().all(|x| x.dbsize() == 0));
    mr.set::<_, _, ()>("again", 1).unwrap();
    let _: PerServer<()> = mr.flushall().unwrap();
    assert!(s.iter().all(|x| x.dbsize() == 0));
}

#[test]
fn per_key_pipeline_runs_on_the_key_server() {
    let s = servers(2);
    let mr = MRedis::new(urls(&s)).unwrap();
    let key = "list:1";
    let owner = python_mredis_index(key.as_bytes(), 2);
    let mut pipe = mr.pipeline(key).unwrap();
    assert_eq!(pipe.server(), names(&s)[owner]);
    let (pushed, len, items, popped): (usize, usize, Vec<String>, Option<String>) = pipe
        .rpush(key, &["a", "b", "c"][..])
        .llen(key)
        .lrange(key, 0, -1)
        .lpop(key, None)
        .query(&mr)
        .unwrap();
    assert_eq!(
        (pushed, len, items, popped),
        (3, 3, vec!["a".into(), "b".into(), "c".into()], Some("a".into()))
    );
    let mut con = s[owner].conn();
    let direct: Vec<String> = con.lrange(key, 0, -1).unwrap();
    assert_eq!(direct, vec!["b", "c"]);

    // atomic() wraps it in MULTI/EXEC and still returns the replies.
    let counter = (0..1000)
        .map(|i| format!("counter:{i}"))
        .find(|k| python_mredis_index(k.as_bytes(), 2) == owner)
        .unwrap();
    let (first, second): (i64, i64) = mr
        .pipeline(&counter)
        .unwrap()
        .atomic()
        .incr(&counter, 5)
        .incr(&counter, 1)
        .query(&mr)
        .unwrap();
    assert_eq!((first, second), (5, 6));
    assert_eq!(s[owner].conn().get::<_, i64>(&counter).unwrap(), 6);
}

#[test]
fn pipeline_with_another_server_key_fails_before_sending() {
    let s = servers(2);
    let mr = MRedis::new(urls(&s)).unwrap();
    let a = "alpha";
    let owner = python_mredis_index(a.as_bytes(), 2);
    let other = (0..1000)
        .map(|i| format!("other:{i}"))
        .find(|k| python_mredis_index(k.as_bytes(), 2) != owner)
        .unwrap();
    let err = mr
        .pipeline(a)
        .unwrap()
        .set(a, 1)
        .set(&other, 2)
        .query::<()>(&mr)
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&other), "{text}");
    assert!(
        text.contains(&names(&s)[owner]) && text.contains(&names(&s)[1 - owner]),
        "{text}"
    );
    assert_eq!(s[0].dbsize() + s[1].dbsize(), 0, "nothing may be sent");
}

#[test]
fn one_command_of_every_group_sync() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    let on = |key: &str| &s[python_mredis_index(key.as_bytes(), 3)];

    // string
    mr.set_ex::<_, _, ()>("str", "v", 100).unwrap();
    assert_eq!(mr.incr::<_, _, i64>("cnt", 5).unwrap(), 5);
    assert_eq!(mr.append::<_, _, usize>("str", "w").unwrap(), 2);
    let mut con = on("str").conn();
    assert_eq!(con.get::<_, String>("str").unwrap(), "vw");
    assert!(con.ttl::<_, i64>("str").unwrap() > 90);
    assert_eq!(on("cnt").conn().get::<_, i64>("cnt").unwrap(), 5);
    // list
    let _: usize = mr.lpush("list", &["x", "y"][..]).unwrap();
    let l: Vec<String> = mr.lrange("list", 0, -1).unwrap();
    assert_eq!(l, vec!["y", "x"]);
    assert_eq!(on("list").conn().llen::<_, i64>("list").unwrap(), 2);
    // set
    let _: usize = mr.sadd("set", &["a", "b", "a"][..]).unwrap();
    assert_eq!(on("set").conn().scard::<_, i64>("set").unwrap(), 2);
    // sorted set
    let _: usize = mr.zadd("z", "member", 1.5).unwrap();
    let zs: Vec<(String, f64)> = mr.zrange_withscores("z", 0, -1).unwrap();
    assert_eq!(zs, vec![("member".to_string(), 1.5)]);
    assert_eq!(on("z").conn().zscore::<_, _, f64>("z", "member").unwrap(), 1.5);
    // hash
    mr.hset_multiple::<_, _, _, ()>("h", &[("f1", 1), ("f2", 2)]).unwrap();
    let h: std::collections::HashMap<String, i64> = mr.hgetall("h").unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(on("h").conn().hget::<_, _, i64>("h", "f2").unwrap(), 2);
    // bitmap
    let _: bool = mr.setbit("bits", 7, true).unwrap();
    assert_eq!(mr.bitcount::<_, usize>("bits").unwrap(), 1);
    assert!(on("bits").conn().getbit::<_, bool>("bits", 7).unwrap());
    // hyperloglog
    let _: bool = mr.pfadd("hll", &["a", "b", "c"][..]).unwrap();
    assert_eq!(mr.pfcount::<_, usize>("hll").unwrap(), 3);
    assert!(holds(on("hll"), b"hll"));
    // geo
    let _: usize = mr
        .geo_add(
            "geo",
            &[(13.361389, 38.115556, "Palermo"), (15.087269, 37.502669, "Catania")][..],
        )
        .unwrap();
    let d: Option<f64> = mr
        .geo_dist("geo", "Palermo", "Catania", redis::geo::Unit::Kilometers)
        .unwrap();
    assert!((d.unwrap() - 166.27).abs() < 0.1);
    assert!(holds(on("geo"), b"geo"));
    // stream
    let _: String = mr.xadd("stream", "*", &[("field", "value")]).unwrap();
    assert_eq!(mr.xlen::<_, usize>("stream").unwrap(), 1);
    assert_eq!(on("stream").conn().xlen::<_, usize>("stream").unwrap(), 1);
    // generic
    assert!(mr.expire::<_, bool>("h", 50).unwrap());
    assert_eq!(mr.key_type::<_, String>("h").unwrap(), "hash");
    assert!(on("h").conn().ttl::<_, i64>("h").unwrap() > 40);
    let existed: usize = mr.del("h").unwrap();
    assert_eq!(existed, 1);
    assert!(!holds(on("h"), b"h"));
    let enc: String = mr.object_encoding("list").unwrap();
    assert!(!enc.is_empty());
    let lp: Option<String> = mr.lpop("list", None).unwrap();
    assert_eq!(lp.as_deref(), Some("y"));
}

#[test]
fn the_sync_client_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<MRedis>();
    let s = servers(2);
    let mr = MRedis::new(urls(&s)).unwrap();
    std::thread::scope(|scope| {
        for t in 0..8 {
            let mr = &mr;
            scope.spawn(move || {
                for i in 0..100 {
                    mr.set::<_, _, ()>(format!("t{t}:{i}"), i).unwrap();
                }
            });
        }
    });
    assert_eq!(s[0].dbsize() + s[1].dbsize(), 800);
}

#[test]
fn configuration_errors_are_clear() {
    let none: Vec<String> = Vec::new();
    let e = MRedis::new(none).unwrap_err();
    assert!(e.to_string().contains("server list is empty"), "{e}");
    let e = MRedis::new(["redis://127.0.0.1:7000/0", "redis://127.0.0.1:7000/0"]).unwrap_err();
    assert!(e.to_string().contains("duplicate server 127.0.0.1:7000:0"), "{e}");
    let e = MRedis::new(["redis://127.0.0.1:notaport/0"]).unwrap_err();
    assert!(e.to_string().contains("server entry 1"), "{e}");
    let e = MRedis::new(["not a url"]).unwrap_err();
    assert!(e.to_string().contains("server entry 1"), "{e}");
    let e = MRedis::new([("127.0.0.1", 0u16, 0i64)]).unwrap_err();
    assert!(e.to_string().contains("port 0"), "{e}");
}

#[test]
fn an_unreachable_server_fails_fast_and_names_itself() {
    let s = servers(1);
    let dead = mredis_tests::closed_port();
    let dead_port = dead.port();
    let mr = MRedis::builder()
        .servers([s[0].url(), format!("redis://127.0.0.1:{dead_port}/0")])
        .connect_timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let dead_name = format!("127.0.0.1:{dead_port}:0");
    let (live_key, dead_key) = {
        let mut live = None;
        let mut dead = None;
        for i in 0..100 {
            let k = format!("k{i}");
            match python_mredis_index(k.as_bytes(), 2) {
                0 => live = live.or(Some(k)),
                _ => dead = dead.or(Some(k)),
            }
        }
        (live.unwrap(), dead.unwrap())
    };
    mr.set::<_, _, ()>(&live_key, 1).unwrap();
    let err = mr.set::<_, _, ()>(&dead_key, 1).unwrap_err();
    assert!(err.to_string().contains(&dead_name), "{err}");
    let fan = mr.dbsize::<i64>().unwrap_err();
    assert_eq!(fan.failed().len(), 1);
    assert_eq!(fan.failed()[0].0, dead_name);
    assert_eq!(
        fan.succeeded()[s[0].url().replace("redis://", "").replace("/0", ":0").as_str()],
        1
    );
}

#[test]
fn flush_options_fan_out() {
    let s = servers(2);
    let mr = MRedis::new(urls(&s)).unwrap();
    for i in 0..20 {
        mr.set::<_, _, ()>(format!("f{i}"), i).unwrap();
    }
    let _: PerServer<()> = mr.flushdb_options(&redis::FlushDbOptions::default()).unwrap();
    assert!(s.iter().all(|x| x.dbsize() == 0));
    mr.set::<_, _, ()>("again", 1).unwrap();
    let _: PerServer<()> = mr.flushall_options(&redis::FlushAllOptions::default()).unwrap();
    assert!(s.iter().all(|x| x.dbsize() == 0));
}
