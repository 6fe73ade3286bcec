//! Key hashes: the original MRedis's `standard` index and every `hash:` of
//! twemproxy (nutcracker 0.5.0), reproduced bit for bit, because data placed
//! by those systems is only found again with their exact values. twemproxy
//! reads key bytes as C `char`, which is signed on the platforms it runs on;
//! where its code mixes such a `char` into a wider integer without masking
//! it (the FNV hashes, one-at-a-time, and the third trailing byte of hsieh),
//! a byte >= 0x80 enters as `0xFFFFFFxx`. Those quirks are kept on purpose.

/// A twemproxy `hash:` setting: the function that turns a (tagged) key into
/// the `u32` that ketama or modula places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHash {
    /// `one_at_a_time`: Bob Jenkins' one-at-a-time hash over sign-extended
    /// bytes.
    OneAtATime,
    /// `md5`: the little-endian `u32` of the first four MD5 digest bytes.
    Md5,
    /// `crc16`: nutcracker 0.5.0's CRC-16/XMODEM loop, whose 32-bit state is
    /// never masked back to 16 bits, so the result keeps the shifted-out high
    /// bits (only the low 16 bits are a textbook CRC-16).
    Crc16,
    /// `crc32`: libmemcached's variant, `(crc32(key) >> 16) & 0x7fff`. Its
    /// values are at most 0x7fff, so with ketama nearly every key lands on
    /// the owner of the ring's first point; twemproxy does the same.
    Crc32,
    /// `crc32a`: plain CRC-32 (zlib).
    Crc32a,
    /// `fnv1_64`: FNV-1 with 64-bit state over sign-extended bytes, low 32
    /// bits.
    Fnv1_64,
    /// `fnv1a_64` (twemproxy's default): FNV-1a, but computed in 32 bits
    /// from the low halves of the 64-bit offset basis and prime, over
    /// sign-extended bytes. For ASCII keys it equals the low 32 bits of real
    /// FNV-1a-64.
    Fnv1a64,
    /// `fnv1_32`: FNV-1 32-bit over sign-extended bytes.
    Fnv1_32,
    /// `fnv1a_32`: FNV-1a 32-bit over sign-extended bytes.
    Fnv1a32,
    /// `hsieh`: Paul Hsieh's SuperFastHash with initial hash 0.
    Hsieh,
    /// `murmur`: MurmurHash2 with seed `0xdeadbeef * len`.
    Murmur,
    /// `jenkins`: Bob Jenkins' lookup3 `hashlittle` with initial value 13.
    Jenkins,
}

impl KeyHash {
    /// Every hash, in twemproxy's documentation order.
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

    /// The hash a twemproxy `hash:` value names (`fnv1a_64`, `md5`, ...), or
    /// `None` for a name twemproxy does not know. Names are exact and
    /// lowercase, as twemproxy compares them.
    pub fn from_name(name: &str) -> Option<KeyHash> {
        KeyHash::ALL.into_iter().find(|h| h.name() == name)
    }

    /// The name twemproxy's configuration uses for this hash.
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

    /// The hash of `key` as twemproxy computes it. An empty key hashes to 0
    /// whatever the function, because twemproxy never calls the function for
    /// one.
    pub fn hash(self, key: &[u8]) -> u32 {
        if key.is_empty() {
            return 0;
        }
        match self {
            KeyHash::OneAtATime => one_at_a_time(key),
            KeyHash::Md5 => md5_low32(key),
            KeyHash::Crc16 => crc16_unmasked(key),
            KeyHash::Crc32 => crc32_libmemcached(key),
            KeyHash::Crc32a => crc32fast::hash(key),
            KeyHash::Fnv1_64 => fnv1_64(key),
            KeyHash::Fnv1a64 => fnv1a_64_in_32_bits(key),
            KeyHash::Fnv1_32 => fnv1_32(key),
            KeyHash::Fnv1a32 => fnv1a_32(key),
            KeyHash::Hsieh => hsieh(key),
            KeyHash::Murmur => murmur(key),
            KeyHash::Jenkins => lookup3(key, 13),
        }
    }
}

/// The original MRedis placement: `((crc32(key) >> 16) & 0x7fff) % n`, with
/// servers in configuration order. The `>> 16 & 0x7fff` step is what the
/// original code does (its README only says "crc32 mod n"). Returns 0 when
/// `n` is 0; callers never place keys on an empty fleet.
pub fn standard_index(key: &[u8], n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    crc32_libmemcached(key) as usize % n
}

/// A C `char` (signed) widened to `uint32_t`, as twemproxy's loops do.
#[inline]
fn sext(b: u8) -> u32 {
    b as i8 as u32
}

fn crc32_libmemcached(key: &[u8]) -> u32 {
    (crc32fast::hash(key) >> 16) & 0x7fff
}

fn md5_low32(key: &[u8]) -> u32 {
    use md5::{Digest, Md5};
    let digest = Md5::digest(key);
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
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

const FNV_64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_64_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV_32_OFFSET: u32 = 0x811c_9dc5;
const FNV_32_PRIME: u32 = 0x0100_0193;

fn fnv1_64(key: &[u8]) -> u32 {
    let mut h = FNV_64_OFFSET;
    for &b in key {
        h = h.wrapping_mul(FNV_64_PRIME);
        // The sign-extended char is widened to 64 bits, so a high byte flips
        // the upper half too; that half is dropped at the end anyway.
        h ^= b as i8 as u64;
    }
    h as u32
}

fn fnv1a_64_in_32_bits(key: &[u8]) -> u32 {
    // twemproxy truncates both 64-bit constants to 32 bits and keeps a
    // 32-bit state; multiplication only carries upwards, so for ASCII this
    // is still the low half of true FNV-1a-64.
    let mut h = FNV_64_OFFSET as u32;
    for &b in key {
        h ^= sext(b);
        h = h.wrapping_mul(FNV_64_PRIME as u32);
    }
    h
}

fn fnv1_32(key: &[u8]) -> u32 {
    let mut h = FNV_32_OFFSET;
    for &b in key {
        h = h.wrapping_mul(FNV_32_PRIME);
        h ^= sext(b);
    }
    h
}

fn fnv1a_32(key: &[u8]) -> u32 {
    let mut h = FNV_32_OFFSET;
    for &b in key {
        h ^= sext(b);
        h = h.wrapping_mul(FNV_32_PRIME);
    }
    h
}

/// CRC-16/XMODEM (polynomial 0x1021, MSB first), one entry per byte value.
const CRC16_XMODEM: [u16; 256] = {
    let mut table = [0u16; 256];
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
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc16_unmasked(key: &[u8]) -> u32 {
    // nutcracker 0.5.0 keeps the CRC in a uint32_t and shifts it left
    // without masking, so bits above 16 accumulate into the result. The
    // table index is masked to 8 bits, which is why the signed char there
    // makes no difference.
    let mut crc: u32 = 0;
    for &b in key {
        let index = ((crc >> 8) as u8 ^ b) as usize;
        crc = (crc << 8) ^ u32::from(CRC16_XMODEM[index]);
    }
    crc
}

/// Little-endian 16 bits from two bytes, as SuperFastHash's `get16bits`.
#[inline]
fn le16(lo: u8, hi: u8) -> u32 {
    u32::from(u16::from_le_bytes([lo, hi]))
}

fn hsieh(key: &[u8]) -> u32 {
    let mut h: u32 = 0;
    let mut blocks = key.chunks_exact(4);
    for block in &mut blocks {
        h = h.wrapping_add(le16(block[0], block[1]));
        let tmp = (le16(block[2], block[3]) << 11) ^ h;
        h = (h << 16) ^ tmp;
        h = h.wrapping_add(h >> 11);
    }
    match *blocks.remainder() {
        [a, b, c] => {
            h = h.wrapping_add(le16(a, b));
            h ^= h << 16;
            // Here twemproxy reads the byte through a plain (signed) char
            // pointer, so a high byte is sign-extended before the shift.
            h ^= sext(c) << 18;
            h = h.wrapping_add(h >> 11);
        }
        [a, b] => {
            h = h.wrapping_add(le16(a, b));
            h ^= h << 11;
            h = h.wrapping_add(h >> 17);
        }
        [a] => {
            // ...but this one is cast to unsigned char first.
            h = h.wrapping_add(u32::from(a));
            h ^= h << 10;
            h = h.wrapping_add(h >> 1);
        }
        _ => {}
    }
    h ^= h << 3;
    h = h.wrapping_add(h >> 5);
    h ^= h << 4;
    h = h.wrapping_add(h >> 17);
    h ^= h << 25;
    h.wrapping_add(h >> 6)
}

fn murmur(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // twemproxy takes the length as uint32_t; keys are far shorter than 4 GiB.
    let len = key.len() as u32;
    let mut h = 0xdead_beef_u32.wrapping_mul(len) ^ len;
    let mut blocks = key.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// Bob Jenkins' lookup3 `hashlittle`, returning `c`. The word-at-a-time
/// paths of the C code give the same value as this byte-wise form on
/// little-endian machines, which is all twemproxy supports.
fn lookup3(key: &[u8], initval: u32) -> u32 {
    let init = 0xdead_beef_u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(initval);
    let (mut a, mut b, mut c) = (init, init, init);
    if key.is_empty() {
        return c;
    }
    let word = |bytes: &[u8]| -> u32 {
        let mut w = [0u8; 4];
        for (dst, &src) in w.iter_mut().zip(bytes) {
            *dst = src;
        }
        u32::from_le_bytes(w)
    };
    let mut rest = key;
    // The last block (1..=12 bytes) is never mixed, only finalised.
    while rest.len() > 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        (a, b, c) = lookup3_mix(a, b, c);
        rest = &rest[12..];
    }
    // Bytes past the end count as zero, as the C code's masks make them.
    let tail = |from: usize| word(rest.get(from..).unwrap_or_default());
    a = a.wrapping_add(tail(0));
    b = b.wrapping_add(tail(4));
    c = c.wrapping_add(tail(8));
    lookup3_final(a, b, c)
}

fn lookup3_mix(mut a: u32, mut b: u32, mut c: u32) -> (u32, u32, u32) {
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
    (a, b, c)
}

fn lookup3_final(mut a: u32, mut b: u32, mut c: u32) -> u32 {
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
    fn names_round_trip() {
        for hash in KeyHash::ALL {
            assert_eq!(KeyHash::from_name(hash.name()), Some(hash));
        }
        assert_eq!(KeyHash::from_name("fnv1a_64"), Some(KeyHash::Fnv1a64));
        for unknown in ["", "FNV1A_64", "fnv1a-64", "crc32b", "ketama", "md5 "] {
            assert_eq!(KeyHash::from_name(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn empty_key_hashes_to_zero() {
        for hash in KeyHash::ALL {
            assert_eq!(hash.hash(b""), 0, "{}", hash.name());
        }
    }

    #[test]
    fn published_fnv_vectors_for_ascii() {
        // From the FNV reference test suite; the 64-bit ones through their
        // low halves, which is all twemproxy returns.
        assert_eq!(KeyHash::Fnv1_32.hash(b"a"), 0x050c_5d7e);
        assert_eq!(KeyHash::Fnv1_32.hash(b"foobar"), 0x31f0_b262);
        assert_eq!(KeyHash::Fnv1a32.hash(b"a"), 0xe40c_292c);
        assert_eq!(KeyHash::Fnv1a32.hash(b"foobar"), 0xbf9c_f968);
        assert_eq!(KeyHash::Fnv1_64.hash(b"a"), 0x8601_b7be); // 0xaf63bd4c8601b7be
        assert_eq!(KeyHash::Fnv1_64.hash(b"foobar"), 0xa4dd_a9c2); // 0x340d8765a4dda9c2
        assert_eq!(KeyHash::Fnv1a64.hash(b"a"), 0x8601_ec8c); // 0xaf63dc4c8601ec8c
        assert_eq!(KeyHash::Fnv1a64.hash(b"foobar"), 0xf739_67e8); // 0x85944171f73967e8
    }

    #[test]
    fn spec_sample_fnv1a_64_values() {
        let table: [(&[u8], u32); 6] = [
            (b"foo", 0xfed9_d577),
            (b"bar", 0x1339_461a),
            (b"baz", 0x1339_3882),
            (b"user:3", 0x7508_2051),
            (b"session:abc", 0x7b27_1d79),
            (b"counter", 0x1651_7c63),
        ];
        for (key, expected) in table {
            assert_eq!(KeyHash::Fnv1a64.hash(key), expected, "{key:?}");
        }
    }

    #[test]
    fn md5_and_crc_vectors() {
        // md5("foo") = acbd18db 4cc2f85c ...
        assert_eq!(KeyHash::Md5.hash(b"foo"), 0xdb18_bdac);
        // The CRC "check" input: CRC-32 0xcbf43926, CRC-16/XMODEM 0x31c3.
        assert_eq!(KeyHash::Crc32a.hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(KeyHash::Crc32.hash(b"123456789"), 0x4bf4);
        assert_eq!(KeyHash::Crc16.hash(b"123456789") & 0xffff, 0x31c3);
        // ...while the bits above 16 are the unmasked state's leftovers.
        assert_eq!(KeyHash::Crc16.hash(b"123456789"), 0x8690_31c3);
        assert_eq!(KeyHash::Crc16.hash(&[0xe9]), 0x6c07);
        assert_eq!(crc32fast::hash(b"foo"), 0x8c73_6521);
    }

    #[test]
    fn lookup3_published_vectors() {
        // From lookup3.c's self-test (initval 0 and 1); twemproxy uses 13.
        assert_eq!(lookup3(b"", 0), 0xdead_beef);
        let text = b"Four score and seven years ago";
        assert_eq!(lookup3(text, 0), 0x1777_0551);
        assert_eq!(lookup3(text, 1), 0xcd62_8161);
        assert_eq!(KeyHash::Jenkins.hash(text), 0x1ab8_67b2);
    }

    /// Values from this code after it placed 18,000+ keys (ASCII, binary,
    /// lengths 1..=40) exactly as a live nutcracker 0.5.0 did with every
    /// hash under both ketama and modula: a guard against regressions.
    #[test]
    fn values_agreed_with_nutcracker() {
        let keys: [&[u8]; 4] = [
            b"user:1000",
            &[0xe9],
            &[b'a', b'b', 0xff],
            b"\x80\x81\x82\x83\xfe\xff\xc3\xa9t\xc3\xa9",
        ];
        let table: [(KeyHash, [u32; 4]); 12] = [
            (KeyHash::OneAtATime, [0xb563_b74f, 0x4098_48ff, 0x0603_d118, 0x3146_9498]),
            (KeyHash::Md5, [0x2e98_6207, 0x7687_0634, 0x82ab_bd74, 0xdab7_712a]),
            (KeyHash::Crc16, [0xe164_4671, 0x0000_6c07, 0x7c74_dfe3, 0x89dc_a032]),
            (KeyHash::Crc32, [0x0000_1f74, 0x0000_0bd4, 0x0000_4c9d, 0x0000_52c0]),
            (KeyHash::Crc32a, [0x9f74_17e3, 0x0bd4_b551, 0xcc9d_9ead, 0xd2c0_3d3d]),
            (KeyHash::Fnv1_64, [0xd39e_3d21, 0x79fe_4836, 0x9450_5257, 0xb6f6_931c]),
            (KeyHash::Fnv1a64, [0xae7b_4289, 0x79fe_2ea4, 0xfabe_022f, 0x9494_8c8e]),
            (KeyHash::Fnv1_32, [0xa6af_fca1, 0xfaf3_a2f6, 0xbc63_d0d7, 0x555b_f47c]),
            (KeyHash::Fnv1a32, [0x507c_1d89, 0xebf3_8b44, 0xc3b7_e16f, 0x667d_c1ce]),
            (KeyHash::Hsieh, [0xddec_1969, 0x3c20_d7ba, 0x75dc_9fd6, 0x8ebe_cabe]),
            (KeyHash::Murmur, [0x8e24_aec7, 0xdd27_d4d8, 0xec90_82b2, 0xf42e_191f]),
            (KeyHash::Jenkins, [0x048c_4d84, 0x0731_c9e4, 0xe9af_676b, 0x06bc_5be7]),
        ];
        for (hash, expected) in table {
            for (key, want) in keys.iter().zip(expected) {
                assert_eq!(hash.hash(key), want, "{} of {key:?}", hash.name());
            }
        }
    }

    #[test]
    fn high_bytes_are_sign_extended_where_twemproxy_does() {
        let sx = 0xffff_ffe9_u32; // (uint32_t)(char)0xe9
        assert_eq!(
            KeyHash::Fnv1a64.hash(&[0xe9]),
            (0x8422_2325_u32 ^ sx).wrapping_mul(0x1b3)
        );
        // ...which is not what true FNV-1a-64 gives for that byte.
        let true_fnv1a_64 = ((FNV_64_OFFSET ^ 0xe9).wrapping_mul(FNV_64_PRIME)) as u32;
        assert_ne!(KeyHash::Fnv1a64.hash(&[0xe9]), true_fnv1a_64);
        assert_eq!(
            KeyHash::Fnv1a32.hash(&[0xe9]),
            (FNV_32_OFFSET ^ sx).wrapping_mul(FNV_32_PRIME)
        );
        assert_eq!(
            KeyHash::Fnv1_32.hash(&[0xe9]),
            FNV_32_OFFSET.wrapping_mul(FNV_32_PRIME) ^ sx
        );
        assert_eq!(
            KeyHash::Fnv1_64.hash(&[0xe9]),
            (FNV_64_OFFSET.wrapping_mul(FNV_64_PRIME) as u32) ^ sx
        );
        let mut oaat = sx.wrapping_add(sx << 10);
        oaat ^= oaat >> 6;
        oaat = oaat.wrapping_add(oaat << 3);
        oaat ^= oaat >> 11;
        assert_eq!(KeyHash::OneAtATime.hash(&[0xe9]), oaat.wrapping_add(oaat << 15));

        // A byte below 0x80 is the same either way.
        assert_eq!(sext(0x7f), 0x7f);
        assert_eq!(sext(0x80), 0xffff_ff80);
    }

    #[test]
    fn hsieh_sign_extends_only_the_third_trailing_byte() {
        // Within a 4-byte block and as a lone last byte, 0xe9 is unsigned...
        let unsigned_lone = {
            let mut h = 0xe9_u32;
            h ^= h << 10;
            h = h.wrapping_add(h >> 1);
            h
        };
        assert_eq!(hsieh(&[0xe9]), avalanche(unsigned_lone));
        // ...but as the third of three trailing bytes it is a signed char.
        let signed_third = {
            let mut h = le16(b'a', b'b');
            h ^= h << 16;
            h ^= 0xffff_ffe9_u32 << 18;
            h = h.wrapping_add(h >> 11);
            h
        };
        assert_eq!(hsieh(b"ab\xe9"), avalanche(signed_third));
    }

    fn avalanche(mut h: u32) -> u32 {
        h ^= h << 3;
        h = h.wrapping_add(h >> 5);
        h ^= h << 4;
        h = h.wrapping_add(h >> 17);
        h ^= h << 25;
        h.wrapping_add(h >> 6)
    }

    #[test]
    fn crc16_matches_a_bitwise_loop() {
        // The table-driven CRC against a bit-at-a-time CRC-16/XMODEM over
        // the same never-masked 32-bit state, with high bytes in the key.
        let key = [0xe9_u8, 0x80, 0xff, 0x41, 0x00, 0x7f];
        let mut crc: u32 = 0;
        for &b in &key {
            let mut step = u16::from((crc >> 8) as u8 ^ b) << 8;
            for _ in 0..8 {
                let carry = step & 0x8000 != 0;
                step <<= 1;
                if carry {
                    step ^= 0x1021;
                }
            }
            crc = (crc << 8) ^ u32::from(step);
        }
        assert_eq!(KeyHash::Crc16.hash(&key), crc);
        assert_eq!(KeyHash::Crc32a.hash(&key), crc32fast::hash(&key));
    }

    #[test]
    fn standard_index_is_the_original_formula() {
        // crc32("foo") = 0x8c736521 -> 0x8c73 & 0x7fff = 3187.
        assert_eq!(standard_index(b"foo", 2), 3187 % 2);
        assert_eq!(standard_index(b"foo", 7), 3187 % 7);
        assert_eq!(standard_index(b"foo", 1), 0);
        assert_eq!(standard_index(b"foo", 0), 0);
        assert_eq!(standard_index(b"", 3), 0);
    }
}
