//! twemproxy's (nutcracker 0.5.0) server distributions, `ketama` and
//! `modula`, and the server naming and ordering they are built on. A key's
//! server depends on the exact ring points, so everything here follows
//! nutcracker's arithmetic, float32 rounding and sort order included; the
//! key hash itself lives in `hashes`. Servers are passed in twemproxy's order
//! (see [`twemproxy_order`]) and only the live ones, so an index here is a
//! position in that list, not in the user's configuration.

use std::cmp::Ordering;

use md5::{Digest, Md5};

/// Ring points per server at equal weights (40 MD5 digests of 4 points).
const POINTS_PER_SERVER: f32 = 160.0;

/// Points taken from one MD5 digest.
const POINTS_PER_DIGEST: u32 = 4;

/// A ketama continuum: points on the `u32` circle, each owned by a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    /// `(value, server index)`, sorted by value; equal values keep the order
    /// they were made in (server index, then digest, then position).
    points: Vec<(u32, u32)>,
}

impl Ring {
    /// Builds the ring of `servers`, given as `(name, weight)` in twemproxy's
    /// order. A server of weight 0 gets no points; if every weight is 0 (or
    /// the list is empty) the ring is empty, which twemproxy's configuration
    /// check never lets happen.
    pub fn new(servers: &[(&str, u32)]) -> Ring {
        // twemproxy sums weights in a uint32_t; summing wider only differs
        // for weights it would overflow on, and keeps `pct` at most 1 so the
        // point count stays bounded.
        let total: u64 = servers.iter().map(|&(_, w)| u64::from(w)).sum();
        let mut points = Vec::new();
        if total == 0 {
            return Ring { points };
        }
        for (index, &(name, weight)) in servers.iter().enumerate() {
            let count = points_for(weight, total, servers.len());
            let Ok(index) = u32::try_from(index) else {
                break;
            };
            points.reserve(count as usize);
            for digest_no in 0..count / POINTS_PER_DIGEST {
                let digest = Md5::digest(format!("{name}-{digest_no}").as_bytes());
                for quarter in digest.chunks_exact(4) {
                    let value = u32::from_le_bytes([quarter[0], quarter[1], quarter[2], quarter[3]]);
                    points.push((value, index));
                }
            }
        }
        // Stable, so equal values keep insertion order like glibc's qsort
        // (a merge sort) does in practice.
        points.sort_by_key(|&(value, _)| value);
        Ring { points }
    }

    /// The index of the server owning `hash`: the first point whose value is
    /// `>= hash`, wrapping to the first point past the end. Returns 0 on an
    /// empty ring; callers never build one.
    pub fn lookup(&self, hash: u32) -> usize {
        let at = self.points.partition_point(|&(value, _)| value < hash);
        self.points
            .get(at)
            .or_else(|| self.points.first())
            .map_or(0, |&(_, index)| index as usize)
    }
}

/// Points a server of `weight` gets among `servers` live servers whose
/// weights add up to `total`, computed as nutcracker does:
/// `floorf((float)(pct * 160 / 4 * (float)n + 1e-10)) * 4`.
fn points_for(weight: u32, total: u64, servers: usize) -> u32 {
    // Each step rounds to float32, as in C with SSE arithmetic; the epsilon
    // is a double, added in double and rounded back to float before floorf.
    let pct = weight as f32 / total as f32;
    let scaled = pct * POINTS_PER_SERVER / 4.0 * servers as f32;
    let nudged = (f64::from(scaled) + 1e-10) as f32;
    // `as` saturates; pct <= 1 keeps the value far inside u32 anyway.
    (nudged.floor() as u32).saturating_mul(POINTS_PER_DIGEST)
}

/// twemproxy's `modula` distribution: each server appears `weight` times in
/// a list, in twemproxy's order, and a hash picks `list[hash % total_weight]`.
/// The list is kept as running totals rather than expanded, so huge weights
/// cost nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modula {
    /// Running weight totals: server `i` owns `[ends[i-1], ends[i])`.
    ends: Vec<u64>,
}

impl Modula {
    /// The table for servers of these weights, in twemproxy's order.
    pub fn new(weights: &[u32]) -> Modula {
        let ends = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w);
                Some(*sum)
            })
            .collect();
        Modula { ends }
    }

    /// The index of the server owning `hash`. Returns 0 when the weights add
    /// up to 0; callers never build such a table. (twemproxy computes the
    /// remainder in 32 bits; weights adding up past `u32::MAX` would wrap
    /// there and do not here.)
    pub fn lookup(&self, hash: u32) -> usize {
        let total = self.ends.last().copied().unwrap_or(0);
        if total == 0 {
            return 0;
        }
        let slot = u64::from(hash) % total;
        self.ends.partition_point(|&end| end <= slot)
    }
}

/// The name twemproxy gives a server configured without one: `host:port` as
/// written, except that port 11211 (memcached's) is left out, for
/// compatibility with libmemcached. twemproxy keeps the port's text as
/// typed, so a port written with leading zeros is not reproduced here.
pub fn twemproxy_name(host: &str, port: u16) -> String {
    if port == 11211 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

/// The order twemproxy puts servers in before building a distribution:
/// indices into `names`, shorter names first, equal lengths in byte order.
/// Equal names (which twemproxy rejects) keep their relative order.
pub fn twemproxy_order<S: AsRef<str>>(names: &[S]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| name_order(names[a].as_ref(), names[b].as_ref()));
    order
}

fn name_order(a: &str, b: &str) -> Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}
