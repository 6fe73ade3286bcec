//! twemproxy's key hashes (nutcracker 0.5.0 `hashkit`), bit for bit. Several
//! of them read key bytes as C `char`, which is signed on the platforms
//! twemproxy runs on: a byte >= 0x80 is sign-extended to `0xFFFFFFxx` before
//! it is mixed in. That quirk is reproduced, because data placed through
//! twemproxy is only found with it.

/// A twemproxy `hash:` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyHash {
    /// `one_at_a_time`: Jenkins one-at-a-time.
    OneAtATime,
    /// `md5`: little-endian u32 of the first 4 digest bytes.
    Md5,
    /// `crc16`: CRC-16/XMODEM table, in twemproxy 0.5.0's unmasked 32-bit form.
    Crc16,
    /// `crc32`: `(crc32(key) >> 16) & 0x7fff` (the libmemcached variant).
    Crc32,
    /// `crc32a`: plain CRC-32.
    Crc32a,
    /// `fnv1_64`: FNV-1, 64-bit state, low 32 bits.
    Fnv1_64,
    /// `fnv1a_64` (twemproxy's default): FNV-1a computed in 32 bits.
    Fnv1a64,
    /// `fnv1_32`.
    Fnv1_32,
    /// `fnv1a_32`.
    Fnv1a32,
    /// `hsieh`: Paul Hsieh's SuperFastHash.
    Hsieh,
    /// `murmur`: MurmurHash2.
    Murmur,
    /// `jenkins`: lookup3 `hashlittle` with seed 13.
    Jenkins,
}

impl KeyHash {
    /// Every hash, for tests and listings.
    pub const ALL: [KeyHash; 12] = [
        KeyHash::OneAtATime,
        KeyHash::Md5,
        KeyHash::Crc16,
        KeyHash::Crc32,
        KeyHash::Crc32a,
        KeyHash::Fnv1_64,
        KeyHash::Fnv1a64,
        KeyHash::Fnv1_32,
        KeyHash::Fnv1a32,
        KeyHash::Hsieh,
        KeyHash::Murmur,
        KeyHash::Jenkins,
    ];

    /// The name twemproxy's configuration uses.
    pub fn name(self) -> &'static str {
        match self {
            KeyHash::OneAtATime => "one_at_a_time",
            KeyHash::Md5 => "md5",
            KeyHash::Crc16 => "crc16",
            KeyHash::Crc32 => "crc32",
            KeyHash::Crc32a => "crc32a",
            KeyHash::Fnv1_64 => "fnv1_64",
            KeyHash::Fnv1a64 => "fnv1a_64",
            KeyHash::Fnv1_32 => "fnv1_32",
            KeyHash::Fnv1a32 => "fnv1a_32",
            KeyHash::Hsieh => "hsieh",
            KeyHash::Murmur => "murmur",
            KeyHash::Jenkins => "jenkins",
        }
    }

    /// Parses a twemproxy `hash:` name.
    pub fn from_name(name: &str) -> Option<KeyHash> {
        KeyHash::ALL.into_iter().find(|h| h.name() == name)
    }

    /// The hash of `key`; an empty key hashes to 0, as in twemproxy.
    pub fn hash(self, key: &[u8]) -> u32 {
        if key.is_empty() {
            return 0;
        }
        match self {
            KeyHash::OneAtATime => one_at_a_time(key),
            KeyHash::Md5 => md5_u32(key, 0),
            KeyHash::Crc16 => crc16(key),
            KeyHash::Crc32 => (crc32fast::hash(key) >> 16) & 0x7fff,
            KeyHash::Crc32a => crc32fast::hash(key),
            KeyHash::Fnv1_64 => fnv1_64(key),
            KeyHash::Fnv1a64 => fnv1a_64(key),
            KeyHash::Fnv1_32 => fnv1_32(key),
            KeyHash::Fnv1a32 => fnv1a_32(key),
            KeyHash::Hsieh => hsieh(key),
            KeyHash::Murmur => murmur(key),
            KeyHash::Jenkins => jenkins(key),
        }
    }
}

/// A byte read as a signed C `char`, widened to u32.
#[inline]
fn sext(b: u8) -> u32 {
    b as i8 as i32 as u32
}

/// Little-endian u32 of MD5 digest bytes `4*word..4*word+4` (ketama points use all four words).
pub(crate) fn md5_u32(data: &[u8], word: usize) -> u32 {
    use md5::{Digest, Md5};
    let digest = Md5::digest(data);
    let i = word * 4;
    u32::from_le_bytes([digest[i], digest[i + 1], digest[i + 2], digest[i + 3]])
}

/// The whole MD5 digest as four little-endian words.
pub(crate) fn md5_words(data: &[u8]) -> [u32; 4] {
    use md5::{Digest, Md5};
    let d = Md5::digest(data);
    let w = |i: usize| u32::from_le_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

fn one_at_a_time(key: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &b in key {
        h = h.wrapping_add(sext(b));
        h = h.wrapping_add(h << 10);
        h ^= h >> 6;
    }
    h = h.wrapping_add(h << 3);
    h ^= h >> 11;
    h.wrapping_add(h << 15)
}

/// The CRC-16/XMODEM table (polynomial 0x1021).
const CRC16_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc as u32;
        i += 1;
    }
    table
};

fn crc16(key: &[u8]) -> u32 {
    // twemproxy 0.5.0 keeps the CRC in a 32-bit variable and never masks it
    // to 16 bits, so the higher bits carry on: reproduced as is.
    let mut crc: u32 = 0;
    for &b in key {
        crc = (crc << 8) ^ CRC16_TABLE[(((crc >> 8) ^ sext(b)) & 0xff) as usize];
    }
    crc
}

fn fnv1_64(key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        h ^= sext(b) as i32 as i64 as u64;
    }
    h as u32
}

fn fnv1a_64(key: &[u8]) -> u32 {
    let mut h: u32 = 0x8422_2325;
    for &b in key {
        h ^= sext(b);
        h = h.wrapping_mul(0x1b3);
    }
    h
}

fn fnv1_32(key: &[u8]) -> u32 {
    let mut h: u32 = 2_166_136_261;
    for &b in key {
        h = h.wrapping_mul(16_777_619);
        h ^= sext(b);
    }
    h
}

fn fnv1a_32(key: &[u8]) -> u32 {
    let mut h: u32 = 2_166_136_261;
    for &b in key {
        h ^= sext(b);
        h = h.wrapping_mul(16_777_619);
    }
    h
}

fn hsieh(key: &[u8]) -> u32 {
    let get16 = |d: &[u8]| u16::from_le_bytes([d[0], d[1]]) as u32;
    let mut hash: u32 = 0;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        hash = hash.wrapping_add(get16(&c[0..2]));
        let tmp = (get16(&c[2..4]) << 11) ^ hash;
        hash = (hash << 16) ^ tmp;
        hash = hash.wrapping_add(hash >> 11);
    }
    let rem = chunks.remainder();
    match rem.len() {
        3 => {
            hash = hash.wrapping_add(get16(&rem[0..2]));
            hash ^= hash << 16;
            hash ^= sext(rem[2]) << 18;
            hash = hash.wrapping_add(hash >> 11);
        }
        2 => {
            hash = hash.wrapping_add(get16(&rem[0..2]));
            hash ^= hash << 11;
            hash = hash.wrapping_add(hash >> 17);
        }
        1 => {
            // Unlike the 3-byte tail above, twemproxy reads this byte unsigned.
            hash = hash.wrapping_add(rem[0] as u32);
            hash ^= hash << 10;
            hash = hash.wrapping_add(hash >> 1);
        }
        _ => {}
    }
    hash ^= hash << 3;
    hash = hash.wrapping_add(hash >> 5);
    hash ^= hash << 4;
    hash = hash.wrapping_add(hash >> 17);
    hash ^= hash << 25;
    hash.wrapping_add(hash >> 6)
}

fn murmur(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let len = key.len() as u32;
    let seed = 0xdead_beef_u32.wrapping_mul(len);
    let mut h = seed ^ len;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rem = chunks.remainder();
    if rem.len() >= 3 {
        h ^= (rem[2] as u32) << 16;
    }
    if rem.len() >= 2 {
        h ^= (rem[1] as u32) << 8;
    }
    if !rem.is_empty() {
        h ^= rem[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

fn jenkins(key: &[u8]) -> u32 {
    let mut a: u32 = 0xdead_beef_u32.wrapping_add(key.len() as u32).wrapping_add(13);
    let mut b = a;
    let mut c = a;
    let word = |k: &[u8]| {
        let mut w = [0u8; 4];
        w[..k.len()].copy_from_slice(k);
        u32::from_le_bytes(w)
    };
    let mut k = key;
    while k.len() > 12 {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        // mix
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(4);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(6);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(8);
        b = b.wrapping_add(a);
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(16);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(19);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(4);
        b = b.wrapping_add(a);
        k = &k[12..];
    }
    if k.is_empty() {
        return c;
    }
    a = a.wrapping_add(word(&k[..k.len().min(4)]));
    if k.len() > 4 {
        b = b.wrapping_add(word(&k[4..k.len().min(8)]));
    }
    if k.len() > 8 {
        c = c.wrapping_add(word(&k[8..]));
    }
    // final
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_64_matches_the_spec_samples() {
        for (key, expected) in [
            ("foo", 0xfed9_d577u32),
            ("bar", 0x1339_461a),
            ("baz", 0x1339_3882),
            ("user:3", 0x7508_2051),
            ("session:abc", 0x7b27_1d79),
            ("counter", 0x1651_7c63),
        ] {
            assert_eq!(KeyHash::Fnv1a64.hash(key.as_bytes()), expected, "{key}");
        }
    }

    #[test]
    fn ascii_fnv1a_is_the_low_half_of_real_fnv1a_64() {
        let real = |k: &[u8]| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for &b in k {
                h ^= b as u64;
                h = h.wrapping_mul(0x100_0000_01b3);
            }
            h as u32
        };
        assert_eq!(KeyHash::Fnv1a64.hash(b"hello world"), real(b"hello world"));
        // Bytes >= 0x80 are sign-extended: here twemproxy differs from real FNV.
        assert_ne!(KeyHash::Fnv1a64.hash(b"\xff\x80"), real(b"\xff\x80"));
    }

    #[test]
    fn known_vectors() {
        assert_eq!(KeyHash::Crc32a.hash(b"123456789"), 0xcbf4_3926);
        // Up to two bytes the unmasked form equals CRC-16/XMODEM.
        assert_eq!(KeyHash::Crc16.hash(b"A"), 0x58e5);
        // FNV-1 32 and FNV-1a 32 of "a" (published vectors).
        assert_eq!(KeyHash::Fnv1_32.hash(b"a"), 0x050c_5d7e);
        assert_eq!(KeyHash::Fnv1a32.hash(b"a"), 0xe40c_292c);
        // md5("foo") = acbd18db4cc2f85cedef654fccc4a4d8
        assert_eq!(KeyHash::Md5.hash(b"foo"), 0xdb18_bdac);
    }

    #[test]
    fn empty_keys_hash_to_zero() {
        for h in KeyHash::ALL {
            assert_eq!(h.hash(b""), 0, "{}", h.name());
            assert_eq!(KeyHash::from_name(h.name()), Some(h));
        }
    }
}
