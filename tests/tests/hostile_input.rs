//! Hostile input against real servers: keys and values with every byte
//! value, empty keys, big values, huge argument counts, and rendezvous
//! placement checked against an independent implementation.

use mredis::{MRedis, Mode, Server};
use mredis_tests::{servers, urls};
use redis::Commands;

#[test]
fn every_byte_value_in_keys_and_values() {
    let s = servers(3);
    let mr = MRedis::new(urls(&s)).unwrap();
    let all: Vec<u8> = (0..=255u8).collect();
    for b in 0..=255u8 {
        let key = [b, b'\r', b'\n', 0, 255 - b];
        mr.set::<_, _, ()>(&key[..], &all[..]).unwrap();
        let back: Vec<u8> = mr.get(&key[..]).unwrap();
        assert_eq!(back, all);
    }
    mr.set::<_, _, ()>(&b""[..], &b"empty key"[..]).unwrap();
    let v: String = mr.get(&b""[..]).unwrap();
    assert_eq!(v, "empty key");
    mr.set::<_, _, ()>("empty value", &b""[..]).unwrap();
    let v: Vec<u8> = mr.get("empty value").unwrap();
    assert!(v.is_empty());
    assert_eq!(s.iter().map(|x| x.dbsize()).sum::<i64>(), 258);
}

#[test]
fn big_values_round_trip() {
    // 512 MB is the server's limit; MREDIS_BIG=1 tries a value just under it.
    let size = if std::env::var("MREDIS_BIG").is_ok() {
        512 * 1024 * 1024 - 64
    } else {
        32 * 1024 * 1024
    };
    let s = servers(2);
    let mr = MRedis::new(urls(&s)).unwrap();
    let value: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    mr.set::<_, _, ()>("big", &value[..]).unwrap();
    let len: usize = mr.strlen("big").unwrap();
    assert_eq!(len, size);
    let back: Vec<u8> = mr.get("big").unwrap();
    assert!(back == value);
}

#[test]
fn huge_argument_counts_are_split_correctly() {
    let s = servers(4);
    let mr = MRedis::new(urls(&s)).unwrap();
    let n = 100_000;
    let items: Vec<(String, usize)> = (0..n).map(|i| (format!("h{i}"), i)).collect();
    mr.mset::<_, _, ()>(&items).unwrap();
    assert_eq!(s.iter().map(|x| x.dbsize()).sum::<i64>() as usize, n);
    let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    let values: Vec<Option<usize>> = mr.mget(&keys).unwrap();
    assert!(values.iter().enumerate().all(|(i, v)| *v == Some(i)));
    let members: Vec<usize> = (0..n).collect();
    let added: usize = mr.sadd("one-big-set", &members).unwrap();
    assert_eq!(added, n);
    assert_eq!(mr.del::<_, usize>(&keys).unwrap(), n);
}

/// go-redis Ring's choice, written out plainly here.
fn go_redis_shard(names: &[&str], key: &str) -> usize {
    let tagged = match (
        key.find('{'),
        key.find('{').and_then(|o| key[o + 1..].find('}').map(|c| (o, c))),
    ) {
        (Some(_), Some((o, c))) if c > 0 => &key[o + 1..o + 1 + c],
        _ => key,
    };
    let kh = xxhash_rust::xxh64::xxh64(tagged.as_bytes(), 0);
    let mut best = (0usize, 0u64);
    for (i, n) in names.iter().enumerate() {
        let mut x = kh ^ xxhash_rust::xxh64::xxh64(n.as_bytes(), 0);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let score = x.wrapping_mul(2685821657736338717);
        if i == 0 || score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

#[test]
fn rendezvous_places_keys_like_go_redis_ring() {
    let s = servers(3);
    let names = ["shard1", "shard2", "shard3"];
    let list: Vec<Server> = s
        .iter()
        .zip(names)
        .map(|(x, n)| Server::from_parts("127.0.0.1", x.port(), 0).unwrap().with_alias(n))
        .collect();
    let mr = MRedis::builder().servers(list).mode(Mode::Rendezvous).build().unwrap();
    let keys: Vec<String> = (0..2000)
        .map(|i| {
            if i % 5 == 0 {
                format!("{{user:{}}}:cart", i % 17)
            } else {
                format!("key:{i}")
            }
        })
        .collect();
    for k in &keys {
        mr.set::<_, _, ()>(k, 1).unwrap();
    }
    for k in &keys {
        let owner = go_redis_shard(&names, k);
        assert!(
            s[owner].conn().exists::<_, bool>(k).unwrap(),
            "{k} should be on {}",
            names[owner]
        );
    }
    assert!(s.iter().all(|x| x.dbsize() > 400));
}
