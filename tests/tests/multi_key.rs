//! Multi-key commands across servers: scatter-gather (MGET, MSET, DEL,
//! EXISTS, UNLINK, TOUCH) answers like one server would; co-located commands
//! (RENAME, SINTERSTORE, ...) run when their keys share a server and fail
//! before sending otherwise; hash tags make co-location usable.

use mredis::MRedis;
use mredis_tests::{RedisServer, original_index as index, servers, urls};
use redis::Commands;

fn snapshot(s: &[RedisServer]) -> Vec<Vec<String>> {
    s.iter().map(|x| x.keys()).collect()
}

#[test]
fn mget_returns_values_in_the_callers_order() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        if i % 5 != 0 {
            s[index(k.as_bytes(), 3)].conn().set::<_, _, ()>(k, i).unwrap();
        }
    }
    let owners: std::collections::BTreeSet<usize> = keys.iter().map(|k| index(k.as_bytes(), 3)).collect();
    assert_eq!(owners.len(), 3, "the keys span all servers");
    let got: Vec<Option<i64>> = mr.mget(&keys).unwrap();
    let expected: Vec<Option<i64>> = (0..50).map(|i| if i % 5 == 0 { None } else { Some(i) }).collect();
    assert_eq!(got, expected);
    // Reversed order comes back reversed.
    let rev: Vec<String> = keys.iter().rev().cloned().collect();
    let got: Vec<Option<i64>> = mr.mget(&rev).unwrap();
    assert_eq!(got, expected.into_iter().rev().collect::<Vec<_>>());
}

#[test]
fn mset_writes_each_key_on_its_server_and_counts_are_summed() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    let items: Vec<(String, i64)> = (0..30).map(|i| (format!("m{i}"), i)).collect();
    mr.mset::<_, _, ()>(&items).unwrap();
    for (k, v) in &items {
        let owner = &s[index(k.as_bytes(), 3)];
        assert_eq!(owner.conn().get::<_, i64>(k).unwrap(), *v, "{k}");
    }
    assert_eq!(s.iter().map(|x| x.dbsize()).sum::<i64>(), 30);
    let names: Vec<&str> = items
        .iter()
        .map(|(k, _)| k.as_str())
        .chain(["missing1", "missing2"])
        .collect();
    assert_eq!(mr.exists::<_, usize>(&names).unwrap(), 30);
    assert_eq!(mr.touch::<_, usize>(&names).unwrap(), 30);
    assert_eq!(mr.del::<_, usize>(&names[..10]).unwrap(), 10);
    assert_eq!(mr.unlink::<_, usize>(&names[10..]).unwrap(), 20);
    assert_eq!(s.iter().map(|x| x.dbsize()).sum::<i64>(), 0);
    // Single keys still work as with redis-rs.
    mr.set::<_, _, ()>("one", 1).unwrap();
    assert!(mr.exists::<_, bool>("one").unwrap());
    assert_eq!(mr.del::<_, usize>("one").unwrap(), 1);
}

#[test]
fn colocated_commands_across_servers_fail_before_sending() {
    let s = servers(2);
    let mr = MRedis::new(urls(&s)).unwrap();
    let a = "src";
    let b = (0..1000)
        .map(|i| format!("dst{i}"))
        .find(|k| index(k.as_bytes(), 2) != index(a.as_bytes(), 2))
        .unwrap();
    mr.set::<_, _, ()>(a, "v").unwrap();
    let before = snapshot(&s);
    let err = mr.rename::<_, _, ()>(a, &b).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("RENAME") && text.contains(a) && text.contains(&b),
        "{text}"
    );
    assert!(text.contains("127.0.0.1:"), "names the servers: {text}");
    assert_eq!(snapshot(&s), before, "no server changed");
    let err = mr.sinterstore::<_, _, usize>("out", &[a, b.as_str()]).unwrap_err();
    assert!(err.to_string().contains("SINTERSTORE"), "{err}");
    assert_eq!(snapshot(&s), before);
}

#[test]
fn hash_tags_colocate_related_keys() {
    let s = servers(3);
    let mr = MRedis::builder().servers(urls(&s)).hash_tags(true).build().unwrap();
    let owner = index(b"user:42", 3);
    mr.sadd::<_, _, ()>("{user:42}:a", &["x", "y", "z"][..]).unwrap();
    mr.sadd::<_, _, ()>("{user:42}:b", &["y", "z", "w"][..]).unwrap();
    let n: usize = mr
        .sinterstore("{user:42}:both", &["{user:42}:a", "{user:42}:b"])
        .unwrap();
    assert_eq!(n, 2);
    let mut both: Vec<String> = s[owner].conn().smembers("{user:42}:both").unwrap();
    both.sort();
    assert_eq!(both, vec!["y", "z"]);
    mr.rename::<_, _, ()>("{user:42}:a", "{user:42}:renamed").unwrap();
    let mut keys = s[owner].keys();
    keys.sort();
    assert_eq!(keys, vec!["{user:42}:b", "{user:42}:both", "{user:42}:renamed"]);
    // Standard placement without tags hashes the whole key (the original's rule).
    let plain = MRedis::new(urls(&s)).unwrap();
    assert_eq!(
        plain.server_for("{user:42}:a").unwrap(),
        mr.servers()[index(b"{user:42}:a", 3)].name()
    );
}

#[test]
fn scatter_gather_partial_failure_names_servers_and_keeps_writes() {
    let mut s = servers(3);
    let mr = MRedis::builder()
        .servers(urls(&s))
        .connect_timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let items: Vec<(String, i64)> = (0..30).map(|i| (format!("p{i}"), i)).collect();
    s[2].stop();
    let dead = format!("127.0.0.1:{}:0", s[2].port());
    let err = mr.mset::<_, _, ()>(&items).unwrap_err();
    // Names the failed server once and the others with their item counts.
    let on = |i: usize| items.iter().filter(|(k, _)| index(k.as_bytes(), 3) == i).count();
    assert_eq!(
        mredis::error_text(&err),
        format!(
            "mredis: MSET failed on 1 of 3 servers: {dead}: connection refused; nothing was sent. \
             Succeeded on: {} ({}), {} ({})",
            s[0].name(),
            on(0),
            s[1].name(),
            on(1)
        )
    );
    for (k, v) in &items {
        let i = index(k.as_bytes(), 3);
        if i != 2 {
            assert_eq!(
                s[i].conn().get::<_, i64>(k).unwrap(),
                *v,
                "healthy servers keep their writes"
            );
        }
    }
    let fan = mr.dbsize::<i64>().unwrap_err();
    assert_eq!(fan.failed().len(), 1);
    assert_eq!(fan.failed()[0].0, dead);
    assert_eq!(fan.succeeded().len(), 2);
    let written: i64 = fan.succeeded().values().sum();
    assert_eq!(
        written as usize,
        items.iter().filter(|(k, _)| index(k.as_bytes(), 3) != 2).count()
    );
}
