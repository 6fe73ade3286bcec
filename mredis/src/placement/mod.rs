//! Placement: which server owns a key. Each mode reproduces, bit for bit,
//! a system that already places keys on plain Redis servers, so data it
//! wrote is found where it is (see `shared/spec/placement.md`).

use redis::RedisResult;

use crate::config::Server;

/// How keys are placed on servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// The original Python MRedis (the default):
    /// `((crc32(key) >> 16) & 0x7fff) % number_of_servers`, servers in
    /// configuration order. Compatible with: Python MRedis.
    #[default]
    Standard,
}

/// The placement of one configured fleet.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    mode: Mode,
    servers: usize,
    hash_tags: bool,
}

impl Placement {
    pub(crate) fn new(mode: Mode, servers: &[Server], hash_tags: Option<bool>) -> RedisResult<Placement> {
        Ok(Placement {
            mode,
            servers: servers.len(),
            hash_tags: hash_tags.unwrap_or(false),
        })
    }

    /// Index (in configuration order) of the server owning `key`.
    #[inline]
    pub(crate) fn index(&self, key: &[u8]) -> usize {
        let key = if self.hash_tags { redis_cluster_tag(key) } else { key };
        match self.mode {
            Mode::Standard => standard_index(key, self.servers),
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
/// it is non-empty, else the whole key.
#[inline]
pub(crate) fn redis_cluster_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
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
