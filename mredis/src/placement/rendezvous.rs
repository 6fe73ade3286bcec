//! go-redis Ring's placement (its default `ConsistentHash`, dgryski's
//! go-rendezvous over xxhash64): every shard name gets a score for a key and
//! the highest score owns the key. Adding or removing a shard only moves
//! the keys that shard wins or held. The key given here is already tagged
//! (go-redis applies the Redis Cluster hash-tag rule first); shard names are
//! the keys of the user's address map, and only live shards take part.

use xxhash_rust::xxh64::xxh64;

/// Rendezvous (highest random weight) placement over named shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// xxhash64 of each shard name, in the order the shards were given.
    name_hashes: Vec<u64>,
}

impl Rendezvous {
    /// The placement over these shard names; a shard's index is its
    /// position in `names`.
    pub fn new(names: &[&str]) -> Rendezvous {
        Rendezvous {
            name_hashes: names.iter().map(|name| key_hash(name.as_bytes())).collect(),
        }
    }

    /// The index of the shard owning a key whose [`key_hash`] is `key_hash`:
    /// the highest `mix64(key_hash ^ name_hash)`, the lowest index on a tie.
    /// Returns 0 when there are no shards; callers never build such a
    /// placement.
    pub fn lookup(&self, key_hash: u64) -> usize {
        let mut best = 0;
        let mut best_score = 0;
        for (index, &name_hash) in self.name_hashes.iter().enumerate() {
            let score = mix64(key_hash ^ name_hash);
            // Strictly greater, so the first of equal scores stays, as in
            // go-rendezvous.
            if index == 0 || score > best_score {
                best = index;
                best_score = score;
            }
        }
        best
    }
}

/// The hash of a key (already reduced to its hash tag) or of a shard name:
/// xxhash64 with seed 0, as go-redis's `xxhash.Sum64String`.
pub fn key_hash(tagged_key: &[u8]) -> u64 {
    xxh64(tagged_key, 0)
}

/// go-rendezvous's `xorshiftMult64`: spreads the xor of key and shard hash
/// so that scores for different shards are independent.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(2_685_821_657_736_338_717)
}
