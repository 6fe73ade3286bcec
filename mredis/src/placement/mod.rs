//! Placement: which server owns a key.
//!
//! Each [`Mode`] reproduces, bit for bit, a system that already places keys
//! on plain Redis servers, so data that system wrote is found where it is,
//! and the reverse. The rules, as implemented here:
//!
//! # `standard`: the original Python MRedis (the default)
//!
//! ```text
//! index = ((crc32(key) >> 16) & 0x7fff) % number_of_servers
//! ```
//!
//! - `crc32` is the ordinary reflected CRC-32 (zlib's, `crc32fast`) of the
//!   raw key bytes; servers count in configuration order. The `>> 16 &
//!   0x7fff` step (libmemcached's "crc32") is what the original's code does,
//!   although its README says "crc32 mod n"; its data is only found with it.
//! - Hash tags are off by default, as in the original; with
//!   [`Builder::hash_tags(true)`](crate::Builder::hash_tags) only the Redis
//!   Cluster tag is hashed (the text inside the first `{`...`}` pair, if it
//!   is non-empty; else the whole key).
//! - Servers are named `host:port:db`, as the original names them in
//!   per-server results.
//! - Compatible with: Python MRedis. Tested against the formula computed
//!   independently (`mredis_tests::original_index`).
//!
//! # `ketama` and `modula`: twemproxy (nutcracker) 0.5.0
//!
//! **Names and order.** A server line is `host:port:weight [name]`. Without
//! a name, the server's name is `host:port` as written (no DNS lookup, no
//! weight), except that port 11211 gives just `host`
//! ([`twemproxy::default_name`]); [`Server::with_alias`](crate::Server::with_alias)
//! sets the name. The list is then sorted by name, shorter names first,
//! then byte order ([`twemproxy::sorted_order`]); placement works on that
//! order, whatever the configuration order. Two servers with one name are
//! an error.
//!
//! **Key hash** (`hash:`, [`KeyHash`], default `fnv1a_64`): one of
//! twemproxy's twelve (`one_at_a_time`, `md5`, `crc16`, `crc32`, `crc32a`,
//! `fnv1_64`, `fnv1a_64`, `fnv1_32`, `fnv1a_32`, `hsieh`, `murmur`,
//! `jenkins`), each returning a `u32` exactly as twemproxy's `hashkit` does,
//! quirks included: key bytes are read as signed C `char`s (a byte >= 0x80
//! is sign-extended before it is mixed in), `fnv1a_64` is computed in 32
//! bits, `crc32` is `(crc32(key) >> 16) & 0x7fff`, and an empty key hashes
//! to 0. A pool of one server always picks it.
//!
//! **Ketama** ([`twemproxy::Ketama`]). The ring is built with MD5 whatever
//! the key hash is. A server of weight `w` out of a total weight `W` over
//! `n` servers gets `floor(w / W * 160 / 4 * n + 1e-10) * 4` points,
//! computed in `f32` as twemproxy does: about 160 points per server at equal
//! weights, shared by weight (weights 5/1/2 give 300/60/120; 25 equal
//! servers get 156 each, not 160). For `i` in `0..points / 4`, the MD5 of
//! `"{name}-{i}"` gives four points (the little-endian `u32`s of its
//! 16 bytes). Points are sorted by value, stably. A key goes to the first
//! point whose value is >= the key's hash, wrapping to the first point.
//! With `hash: crc32` the hashes are all <= 0x7fff, so nearly every key
//! lands on one server: twemproxy does the same, and so does this mode.
//!
//! **Modula** ([`twemproxy::Modula`]). Each server appears `weight` times
//! in a list, in sorted order; a key goes to `list[hash % total_weight]`.
//!
//! **Hash tags** (`hash_tag:`, two bytes such as `{}` or `$$`;
//! [`twemproxy::tagged`]): the text between the first `tag[0]` and the
//! first `tag[1]` after it is hashed if both exist and it is non-empty,
//! else the whole key (`{a}{b}` hashes `a`; `}{a}` hashes `a`; `{}abc`,
//! `a{}{x}` and `{x` hash the whole key). Off unless `hash_tag` is set.
//!
//! Compatible with: twemproxy (nutcracker) 0.5.0 configured with the same
//! servers, weights, names, `hash`, `distribution` and `hash_tag`
//! ([`builder_from_twemproxy_yaml`](crate::builder_from_twemproxy_yaml)
//! reads them from its YAML). The integration tests write keys (ASCII,
//! binary, empty, tagged) through a real `nutcracker` in front of real
//! redis-servers, for every hash with ketama and modula, with weights,
//! names and hash tags, and read each back through mredis.
//!
//! # `rendezvous`: go-redis v9 Ring
//!
//! ([`goredis::Rendezvous`]) Each server has a shard name: its
//! [`alias`](crate::Server::alias), else the name twemproxy would give it
//! (`host:port`, or `host` alone on port 11211); give go-redis's shard
//! names (the keys of its `Addrs` map) as aliases. With
//! `nh = xxhash64(shard name)` and
//! `kh = xxhash64(key)` (seed 0), a shard's score is
//!
//! ```text
//! x = kh ^ nh;  x ^= x >> 12;  x ^= x << 25;  x ^= x >> 27;
//! score = x * 2685821657736338717          (wrapping u64)
//! ```
//!
//! and the highest score wins (ties go to the first shard in configuration
//! order). Hash tags follow the Redis Cluster rule and are on by default,
//! as in go-redis; `Builder::hash_tags(false)` turns them off.
//!
//! Compatible with: go-redis v9 `Ring` with its default
//! `NewConsistentHash` (go-rendezvous over xxhash64), the same shard names
//! and all shards up. No Go toolchain runs here, so the integration tests
//! compare with a second, plain implementation of the rule written in the
//! test, over real servers.

use redis::RedisResult;

use crate::server::{Server, config_error};

pub mod fingerprint;
pub mod goredis;
pub mod hashkit;
pub mod twemproxy;

pub use hashkit::KeyHash;

/// How keys are placed on servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// The original Python MRedis (the default):
    /// `((crc32(key) >> 16) & 0x7fff) % number_of_servers`, servers in
    /// configuration order. Compatible with: Python MRedis.
    #[default]
    Standard,
    /// twemproxy's `distribution: ketama` with the given `hash:`.
    /// Compatible with: twemproxy (nutcracker) 0.5.0, same server names,
    /// weights and hash. Servers are ordered by name as twemproxy does.
    Ketama {
        /// The key hash (`hash:` setting; twemproxy's default is `Fnv1a64`).
        hash: KeyHash,
        /// `hash_tag:` characters, e.g. `*b"{}"`; `None` hashes whole keys.
        hash_tag: Option<[u8; 2]>,
    },
    /// twemproxy's `distribution: modula`. Compatible with: twemproxy 0.5.0.
    Modula {
        /// The key hash.
        hash: KeyHash,
        /// `hash_tag:` characters.
        hash_tag: Option<[u8; 2]>,
    },
    /// go-redis Ring's rendezvous hashing over shard names (a server's
    /// [`alias`](crate::Server::alias), else `host:port`). Hash tags follow
    /// the Redis Cluster rule and are on unless turned off. Compatible with:
    /// go-redis v9 Ring (default `NewConsistentHash`).
    Rendezvous,
}

#[derive(Debug, Clone)]
enum Kind {
    Standard,
    Ketama {
        hash: KeyHash,
        tag: Option<[u8; 2]>,
        ring: twemproxy::Ketama,
        order: Vec<usize>,
    },
    Modula {
        hash: KeyHash,
        tag: Option<[u8; 2]>,
        table: twemproxy::Modula,
        order: Vec<usize>,
    },
    Rendezvous(goredis::Rendezvous),
}

/// The placement of one configured fleet.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    mode: Mode,
    kind: Kind,
    servers: usize,
    cluster_tags: bool,
}

/// The name a server has in placement: its alias, or twemproxy's default.
pub(crate) fn placement_name(server: &Server) -> String {
    match server.alias() {
        Some(alias) => alias.to_string(),
        None => twemproxy::default_name(server.host(), server.port()),
    }
}

impl Placement {
    pub(crate) fn new(mode: Mode, servers: &[Server], hash_tags: Option<bool>) -> RedisResult<Placement> {
        let names: Vec<String> = servers.iter().map(placement_name).collect();
        if matches!(mode, Mode::Ketama { .. } | Mode::Modula { .. } | Mode::Rendezvous) {
            for (i, name) in names.iter().enumerate() {
                if names[..i].contains(name) {
                    return Err(config_error(format!("two servers share the placement name `{name}`")));
                }
            }
        }
        if servers.iter().any(|s| s.weight() == 0) && matches!(mode, Mode::Ketama { .. } | Mode::Modula { .. }) {
            return Err(config_error("server weights must be at least 1".to_string()));
        }
        let (kind, cluster_tags) = match mode {
            Mode::Standard => (Kind::Standard, hash_tags.unwrap_or(false)),
            Mode::Ketama { hash, hash_tag } => {
                let order = twemproxy::sorted_order(&names);
                let sorted: Vec<(&str, u32)> = order
                    .iter()
                    .map(|&i| (names[i].as_str(), servers[i].weight()))
                    .collect();
                (
                    Kind::Ketama {
                        hash,
                        tag: hash_tag,
                        ring: twemproxy::Ketama::new(&sorted),
                        order,
                    },
                    false,
                )
            }
            Mode::Modula { hash, hash_tag } => {
                let order = twemproxy::sorted_order(&names);
                let weights: Vec<u32> = order.iter().map(|&i| servers[i].weight()).collect();
                (
                    Kind::Modula {
                        hash,
                        tag: hash_tag,
                        table: twemproxy::Modula::new(&weights),
                        order,
                    },
                    false,
                )
            }
            Mode::Rendezvous => {
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                (
                    Kind::Rendezvous(goredis::Rendezvous::new(&refs)),
                    hash_tags.unwrap_or(true),
                )
            }
        };
        Ok(Placement {
            mode,
            kind,
            servers: servers.len(),
            cluster_tags,
        })
    }

    /// Index (in configuration order) of the server owning `key`.
    #[inline]
    pub(crate) fn index(&self, key: &[u8]) -> usize {
        let key = if self.cluster_tags { redis_cluster_tag(key) } else { key };
        match &self.kind {
            Kind::Standard => standard_index(key, self.servers),
            Kind::Ketama { hash, tag, ring, order } => {
                if self.servers == 1 {
                    return 0;
                }
                let key = tag.map_or(key, |t| twemproxy::tagged(key, t));
                order.get(ring.lookup(hash.hash(key))).copied().unwrap_or(0)
            }
            Kind::Modula {
                hash,
                tag,
                table,
                order,
            } => {
                if self.servers == 1 {
                    return 0;
                }
                let key = tag.map_or(key, |t| twemproxy::tagged(key, t));
                order.get(table.lookup(hash.hash(key))).copied().unwrap_or(0)
            }
            Kind::Rendezvous(r) => r.lookup(key),
        }
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }
}

/// The original MRedis: `((crc32(key) >> 16) & 0x7fff) % n`.
#[inline]
pub(crate) fn standard_index(key: &[u8], n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    (((crc32fast::hash(key) >> 16) & 0x7fff) as usize) % n
}

/// The Redis Cluster hash-tag rule: the part inside the first `{`...`}` if
/// it is non-empty, else the whole key (twemproxy's rule with `{}` tags
/// gives the same result).
#[inline]
pub(crate) fn redis_cluster_tag(key: &[u8]) -> &[u8] {
    twemproxy::tagged(key, *b"{}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_matches_the_formula() {
        // crc32("foo") = 0x8c736521 -> (0x8c73 & 0x7fff) = 0x0c73 = 3187
        assert_eq!(crc32fast::hash(b"foo"), 0x8c73_6521);
        assert_eq!(standard_index(b"foo", 2), 3187 % 2);
        assert_eq!(standard_index(b"foo", 7), 3187 % 7);
        assert_eq!(standard_index(b"anything", 1), 0);
    }

    #[test]
    fn cluster_tags() {
        assert_eq!(redis_cluster_tag(b"{user:42}:cart"), b"user:42");
        assert_eq!(redis_cluster_tag(b"{}abc"), b"{}abc");
        assert_eq!(redis_cluster_tag(b"a{b}{c}"), b"b");
        assert_eq!(redis_cluster_tag(b"{x"), b"{x");
        assert_eq!(redis_cluster_tag(b"}{a}"), b"a");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// The Redis Cluster rule, written the slow, obvious way.
    fn tag_by_hand(key: &[u8]) -> Vec<u8> {
        let Some(open) = key.iter().position(|&b| b == b'{') else {
            return key.to_vec();
        };
        let rest = &key[open + 1..];
        match rest.iter().position(|&b| b == b'}') {
            Some(0) | None => key.to_vec(),
            Some(close) => rest[..close].to_vec(),
        }
    }

    proptest! {
        #[test]
        fn standard_index_is_in_range(key in proptest::collection::vec(any::<u8>(), 0..64), n in 1usize..64) {
            prop_assert!(standard_index(&key, n) < n);
        }

        #[test]
        fn cluster_tag_matches_the_rule(key in proptest::collection::vec(prop_oneof![Just(b'{'), Just(b'}'), any::<u8>()], 0..32)) {
            prop_assert_eq!(redis_cluster_tag(&key).to_vec(), tag_by_hand(&key));
        }

        #[test]
        fn tagged_keys_share_a_server(tag in "[a-z0-9:]{1,12}", a in "[a-z]{0,8}", b in "[a-z]{0,8}", n in 1usize..32) {
            let servers: Vec<crate::Server> = (0..n)
                .map(|i| crate::Server::from_parts("127.0.0.1", 7000 + i as u16, 0).unwrap())
                .collect();
            let p = Placement::new(Mode::Standard, &servers, Some(true)).unwrap();
            let k1 = format!("{{{tag}}}:{a}");
            let k2 = format!("{b}{{{tag}}}");
            prop_assert_eq!(p.index(k1.as_bytes()), p.index(k2.as_bytes()));
            prop_assert_eq!(p.index(k1.as_bytes()), standard_index(tag.as_bytes(), n));
        }
    }
}
