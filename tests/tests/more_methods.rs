//! Methods added to match redis-rs: `spublish` (routed by channel),
//! `acl_help` (fan-out), the typed helpers `get_int` / `mget_ints` (fixed
//! return types from the table's `returns` field), against real servers.
//! XCFGSET needs Redis 8.6: here it only shows the command reaches the
//! owner of its key. Bloom filters and vector sets cannot run against
//! Redis 7.0; `mredis/tests/feature_commands.rs` checks what they send.

use std::time::Duration;

use mredis::{MRedis, PerServer};
use mredis_tests::{RedisServer, servers, urls};
use redis::{Commands, Value};

/// The index of the server `mr` puts `key` on.
fn owner(mr: &MRedis, s: &[RedisServer], key: &str) -> usize {
    let name = mr.server_for(key).unwrap();
    s.iter().position(|x| x.name() == name).unwrap()
}

/// One key per server: `prefix:N` for the first N that lands on each.
fn key_per_server(mr: &MRedis, s: &[RedisServer], prefix: &str) -> Vec<String> {
    let mut found: Vec<Option<String>> = vec![None; s.len()];
    for i in 0.. {
        let key = format!("{prefix}:{i}");
        let at = owner(mr, s, &key);
        if found[at].is_none() {
            found[at] = Some(key);
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found.into_iter().map(Option::unwrap).collect()
}

/// A plain redis-rs connection SSUBSCRIBEd to `channel` on `server`.
fn ssubscribe(server: &RedisServer, channel: &str) -> redis::Connection {
    let mut con = server.client().get_connection().unwrap();
    con.send_packed_command(&redis::cmd("SSUBSCRIBE").arg(channel).get_packed_command())
        .unwrap();
    let confirm = con.recv_response().unwrap();
    assert_eq!(
        confirm,
        Value::Array(vec![
            Value::BulkString(b"ssubscribe".to_vec()),
            Value::BulkString(channel.as_bytes().to_vec()),
            Value::Int(1),
        ])
    );
    con
}

/// The next shard message on `con`, or `None` after `wait`.
fn next_smessage(con: &mut redis::Connection, wait: Duration) -> Option<(String, String)> {
    con.set_read_timeout(Some(wait)).unwrap();
    match con.recv_response() {
        Ok(Value::Array(items)) => {
            let text = |v: &Value| match v {
                Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(text(&items[0]), "smessage");
            Some((text(&items[1]), text(&items[2])))
        }
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) if e.is_timeout() => None,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn spublish_reaches_the_subscriber_on_the_channels_server() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    // A channel on each server, and a subscriber to it on every server.
    for channel in key_per_server(&mr, &s, "news") {
        let at = owner(&mr, &s, &channel);
        let mut subs: Vec<redis::Connection> = s.iter().map(|x| ssubscribe(x, &channel)).collect();
        let receivers: usize = mr.spublish(&channel, "hello").unwrap();
        assert_eq!(receivers, 1, "{channel}: one subscriber on its own server");
        assert_eq!(
            next_smessage(&mut subs[at], Duration::from_secs(30)),
            Some((channel.clone(), "hello".to_string()))
        );
        for (i, sub) in subs.iter_mut().enumerate() {
            if i != at {
                assert_eq!(next_smessage(sub, Duration::from_millis(200)), None, "server {i}");
            }
        }
    }
    // With nobody subscribed it is sent all the same.
    assert_eq!(mr.spublish::<_, _, usize>("quiet", "x").unwrap(), 0);
}

#[test]
fn acl_help_answers_from_every_server() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    let help: PerServer<Vec<String>> = mr.acl_help().unwrap();
    assert_eq!(
        help.names().collect::<Vec<_>>(),
        s.iter().map(RedisServer::name).collect::<Vec<_>>()
    );
    for (name, lines) in help.iter() {
        let direct: Vec<String> = redis::cmd("ACL")
            .arg("HELP")
            .query(&mut s.iter().find(|x| x.name() == name).unwrap().conn())
            .unwrap();
        assert_eq!(lines, &direct, "{name}");
        assert!(lines[0].starts_with("ACL <subcommand>"), "{lines:?}");
    }
}

#[test]
fn get_int_and_mget_ints_over_keys_on_different_servers() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    let keys = key_per_server(&mr, &s, "int");
    let missing = (0..)
        .map(|i| format!("missing:{i}"))
        .find(|k| owner(&mr, &s, k) != owner(&mr, &s, &keys[0]))
        .unwrap();
    let values = [7isize, -3, 42];
    for (key, value) in keys.iter().zip(values) {
        mr.set::<_, _, ()>(key, value).unwrap();
    }
    // Each key really is on its own server.
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(s[i].conn().get::<_, Option<isize>>(key).unwrap(), Some(values[i]));
    }

    // Fixed return types: no annotation needed.
    let first = mr.get_int(&keys[0]).unwrap();
    assert_eq!(first, Some(7));
    assert_eq!(mr.get_int(&keys[1]).unwrap(), Some(-3));
    assert_eq!(mr.get_int(&missing).unwrap(), None);
    let all = mr.mget_ints(&[&keys[2], &missing, &keys[0], &keys[1]]).unwrap();
    assert_eq!(all, vec![Some(42), None, Some(7), Some(-3)]);

    // A value that is not an integer is a conversion error, as in redis-rs.
    mr.set::<_, _, ()>(&keys[1], "seven").unwrap();
    assert!(mr.get_int(&keys[1]).is_err());
    assert!(mr.mget_ints(&keys).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_int_and_mget_ints_async() {
    let s = servers(3);
    let sync = MRedis::new(urls(&s)).unwrap();
    let keys = key_per_server(&sync, &s, "aint");
    let mr = mredis::aio::MRedis::connect(urls(&s)).await.unwrap();
    for (i, key) in keys.iter().enumerate() {
        mr.set::<_, _, ()>(key, i as isize * 10 - 5).await.unwrap();
    }
    let first: Option<isize> = mr.get_int(&keys[0]).await.unwrap();
    assert_eq!(first, Some(-5));
    assert_eq!(mr.get_int("aint:none").await.unwrap(), None);
    let all = mr.mget_ints(&[&keys[2], &keys[1], &keys[0]]).await.unwrap();
    assert_eq!(all, vec![Some(15), Some(5), Some(-5)]);
    // Futures of generated methods stay Send with fixed return types too.
    let task = {
        let mr = mr.clone();
        let keys = keys.clone();
        tokio::spawn(async move { mr.mget_ints(keys).await })
    };
    assert_eq!(task.await.unwrap().unwrap(), vec![Some(-5), Some(5), Some(15)]);
}

/// `errorstat_ERR` of every server, in configuration order.
fn err_counts(mr: &MRedis) -> Vec<u64> {
    let stats: PerServer<String> = mr.info_args("errorstats").unwrap();
    stats
        .values()
        .map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("errorstat_ERR:count="))
                .map(|n| n.trim().parse::<u64>().unwrap())
                .unwrap_or(0)
        })
        .collect()
}

#[test]
fn xcfgset_goes_to_the_streams_server() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    let opts = redis::streams::StreamConfigOptions::with_idempotency_seconds(300).unwrap();
    let before = err_counts(&mr);
    // Redis 7.0 has no XCFGSET (8.6 has): the key's server says so.
    let result: redis::RedisResult<String> = mr.xcfgset("stream", &opts);
    match result {
        Ok(ok) => assert_eq!(ok, "OK"),
        Err(e) => {
            assert!(e.to_string().to_lowercase().contains("unknown command"), "{e}");
            // Only the owner of the key saw it.
            let after = err_counts(&mr);
            let at = owner(&mr, &s, "stream");
            for i in 0..s.len() {
                assert_eq!(
                    after[i] - before[i],
                    u64::from(i == at),
                    "server {i}: {before:?} -> {after:?}"
                );
            }
        }
    }
}
