//! go-redis Ring placement: rendezvous hashing over shard names with
//! xxhash64 and go-rendezvous's xorshift-multiply score. The highest score
//! wins; ties go to the lowest index.

use xxhash_rust::xxh64::xxh64;

/// The score of a key hash against a shard-name hash.
#[inline]
pub fn score(key_hash: u64, name_hash: u64) -> u64 {
    let mut x = key_hash ^ name_hash;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(2_685_821_657_736_338_717)
}

/// xxhash64 with seed 0, as go-redis uses.
#[inline]
pub fn hash(data: &[u8]) -> u64 {
    xxh64(data, 0)
}

/// Rendezvous placement over named shards.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    name_hashes: Vec<u64>,
}

impl Rendezvous {
    /// Shards in configuration order, by name.
    pub fn new(names: &[&str]) -> Rendezvous {
        Rendezvous {
            name_hashes: names.iter().map(|n| hash(n.as_bytes())).collect(),
        }
    }

    /// The shard for an already tagged key.
    pub fn lookup(&self, key: &[u8]) -> usize {
        let kh = hash(key);
        let mut best = 0;
        let mut best_score = 0;
        for (i, &nh) in self.name_hashes.iter().enumerate() {
            let s = score(kh, nh);
            if i == 0 || s > best_score {
                best = i;
                best_score = s;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxhash64_published_vectors() {
        assert_eq!(hash(b""), 0xef46_db37_51d8_e999);
        assert_eq!(hash(b"abc"), 0x44bc_2cf5_ad77_0999);
    }

    /// A deliberately plain second implementation: all scores, then the max.
    fn naive(names: &[&str], key: &[u8]) -> usize {
        let kh = hash(key);
        let scores: Vec<u128> = names
            .iter()
            .map(|n| {
                let mut x = kh ^ hash(n.as_bytes());
                x ^= x >> 12;
                x ^= (x as u128 * (1u128 << 25)) as u64;
                x ^= x >> 27;
                (x as u128 * 2_685_821_657_736_338_717u128) % (1u128 << 64)
            })
            .collect();
        let max = *scores.iter().max().unwrap();
        scores.iter().position(|&s| s == max).unwrap()
    }

    #[test]
    fn agrees_with_the_plain_implementation() {
        let names = ["shard1", "shard2", "shard3", "shard4", "shard5"];
        let r = Rendezvous::new(&names);
        for i in 0..10_000 {
            let key = format!("key:{i}");
            assert_eq!(r.lookup(key.as_bytes()), naive(&names, key.as_bytes()), "{key}");
        }
    }

    #[test]
    fn adding_a_shard_moves_only_keys_to_it() {
        let names = ["a", "b", "c", "d"];
        let more = ["a", "b", "c", "d", "e"];
        let (r4, r5) = (Rendezvous::new(&names), Rendezvous::new(&more));
        let mut moved = 0;
        for i in 0..20_000 {
            let key = format!("k{i}");
            let (from, to) = (r4.lookup(key.as_bytes()), r5.lookup(key.as_bytes()));
            if from != to {
                assert_eq!(to, 4);
                moved += 1;
            }
        }
        let share = moved as f64 / 20_000.0;
        assert!((0.17..0.23).contains(&share), "moved {share}, expected about 1/5");
        // Removing a shard moves only its keys.
        let fewer = ["a", "b", "d"];
        let r3 = Rendezvous::new(&fewer);
        for i in 0..5000 {
            let key = format!("k{i}");
            let before = names[r4.lookup(key.as_bytes())];
            let after = fewer[r3.lookup(key.as_bytes())];
            if before != "c" {
                assert_eq!(before, after);
            }
        }
    }
}
