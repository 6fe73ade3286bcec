//! Round trips against the real peer: keys written through `nutcracker`
//! (twemproxy 0.5.0) in front of real redis-servers must all be read back
//! by mredis configured the same way (hash, distribution, weights, names,
//! hash tag). A key placed anywhere else would read back as missing.

use mredis::placement::KeyHash;
use mredis::{MRedis, Mode, Server};
use mredis_tests::{Nutcracker, RedisServer, servers};

/// ASCII, binary (bytes >= 0x80), empty and tagged keys.
fn keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = (0..1200).map(|i| format!("user:{i}:profile").into_bytes()).collect();
    keys.extend((0..256u32).map(|i| vec![i as u8, 0x80 | (i as u8), b'k', (i * 7) as u8]));
    // High bytes at every tail position: lengths 1 to 9.
    keys.extend((0..256u32).map(|i| (0..=(i % 9)).map(|j| (0x80 | (i * 31 + j * 17)) as u8).collect()));
    keys.extend((0..200).map(|i| format!("{{tag{}}}:item{i}", i % 7).into_bytes()));
    keys.extend((0..100).map(|i| format!("pre{{}}{i}{{x}}").into_bytes()));
    keys.push(Vec::new());
    keys.sort();
    keys.dedup();
    keys
}

/// Explicit server names, of different lengths so twemproxy's name sort matters.
fn node_name(i: usize) -> String {
    format!("node-{}", ["c", "a", "bb", "d"][i])
}

struct Config<'a> {
    hash: KeyHash,
    distribution: &'a str,
    weights: &'a [u32],
    names: bool,
    tag: Option<&'a str>,
}

fn round_trip(backends: &[RedisServer], c: &Config) {
    for b in backends {
        redis::cmd("FLUSHALL").exec(&mut b.conn()).unwrap();
    }
    let lines: Vec<String> = backends
        .iter()
        .zip(c.weights)
        .enumerate()
        .map(|(i, (b, w))| {
            let mut line = format!("127.0.0.1:{}:{w}", b.port());
            if c.names {
                line.push_str(&format!(" {}", node_name(i)));
            }
            line
        })
        .collect();
    let nc = Nutcracker::start(c.hash.name(), c.distribution, c.tag, &lines);
    let keys = keys();
    let mut pipe = redis::pipe();
    for (i, k) in keys.iter().enumerate() {
        pipe.set(&k[..], i).ignore();
    }
    pipe.exec(&mut nc.conn()).unwrap();
    let total: i64 = backends.iter().map(|b| b.dbsize()).sum();
    assert_eq!(total as usize, keys.len(), "nutcracker stored every key once");

    let tag = c.tag.map(|t| {
        let b = t.as_bytes();
        [b[0], b[1]]
    });
    let mode = match c.distribution {
        "ketama" => Mode::Ketama {
            hash: c.hash,
            hash_tag: tag,
        },
        _ => Mode::Modula {
            hash: c.hash,
            hash_tag: tag,
        },
    };
    let servers: Vec<Server> = backends
        .iter()
        .zip(c.weights)
        .enumerate()
        .map(|(i, (b, w))| {
            let s = Server::from_parts("127.0.0.1", b.port(), 0).unwrap().with_weight(*w);
            if c.names { s.with_alias(node_name(i)) } else { s }
        })
        .collect();
    let mr = MRedis::builder().servers(servers).mode(mode).build().unwrap();
    let got: Vec<Option<i64>> = mr.mget(&keys).unwrap();
    let missing: Vec<String> = keys
        .iter()
        .zip(&got)
        .enumerate()
        .filter(|(i, (_, v))| **v != Some(*i as i64))
        .map(|(_, (k, _))| k.escape_ascii().to_string())
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{} {} weights {:?} names {} tag {:?}: {} keys not found where mredis looks, e.g. {missing:?}",
        c.hash.name(),
        c.distribution,
        c.weights,
        c.names,
        c.tag,
        got.iter().enumerate().filter(|(i, v)| **v != Some(*i as i64)).count()
    );
}

#[test]
fn ketama_with_every_hash_matches_nutcracker() {
    let s = servers(3);
    for hash in KeyHash::ALL {
        round_trip(
            &s,
            &Config {
                hash,
                distribution: "ketama",
                weights: &[1, 1, 1],
                names: false,
                tag: None,
            },
        );
    }
}

#[test]
fn modula_with_every_hash_and_weights_matches_nutcracker() {
    let s = servers(3);
    for hash in KeyHash::ALL {
        round_trip(
            &s,
            &Config {
                hash,
                distribution: "modula",
                weights: &[1, 2, 3],
                names: false,
                tag: None,
            },
        );
    }
}

#[test]
fn weights_names_and_hash_tags_match_nutcracker() {
    let s = servers(4);
    for hash in [KeyHash::Fnv1a64, KeyHash::Md5, KeyHash::Crc32a, KeyHash::Murmur] {
        round_trip(
            &s,
            &Config {
                hash,
                distribution: "ketama",
                weights: &[5, 1, 2, 3],
                names: false,
                tag: None,
            },
        );
        round_trip(
            &s,
            &Config {
                hash,
                distribution: "ketama",
                weights: &[1, 1, 1, 1],
                names: true,
                tag: None,
            },
        );
        round_trip(
            &s,
            &Config {
                hash,
                distribution: "ketama",
                weights: &[2, 1, 1, 3],
                names: true,
                tag: Some("{}"),
            },
        );
        round_trip(
            &s,
            &Config {
                hash,
                distribution: "modula",
                weights: &[1, 3, 1, 2],
                names: true,
                tag: Some("{}"),
            },
        );
        round_trip(
            &s,
            &Config {
                hash,
                distribution: "ketama",
                weights: &[1, 1, 1, 1],
                names: false,
                tag: Some("$$"),
            },
        );
    }
}
