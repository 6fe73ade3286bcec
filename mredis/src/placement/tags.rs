//! Hash tags: the part of a key that placement hashes, so that related keys
//! (`{user:42}:cart`, `{user:42}:profile`) land on one server. Two rules
//! exist. Redis Cluster's (also go-redis's, and the default for mredis's own
//! modes) hashes what is between the first `{` and the next `}` when that is
//! non-empty. twemproxy's does the same with any two configured bytes; with
//! `{}` both rules give the same part of every key.

/// The Redis Cluster hash-tag rule: the bytes between the first `{` and the
/// first `}` after it when there are any, otherwise the whole key. Later
/// braces are never looked at: `{}{a}` hashes whole.
pub fn redis_cluster_tag(key: &[u8]) -> &[u8] {
    twemproxy_tag(key, *b"{}")
}

/// twemproxy's `hash_tag:` rule for the two bytes `tag` (e.g. `*b"{}"` or
/// `*b"$$"`): find the first `tag[0]`, then the first `tag[1]` after it; if
/// both exist and the text between them is non-empty, that text, otherwise
/// the whole key. Only the first opening byte is tried.
pub fn twemproxy_tag(key: &[u8], tag: [u8; 2]) -> &[u8] {
    let [open, close] = tag;
    let Some(start) = key.iter().position(|&b| b == open) else {
        return key;
    };
    let inner = key.get(start + 1..).unwrap_or_default();
    match inner.iter().position(|&b| b == close) {
        Some(len) if len > 0 => &inner[..len],
        _ => key,
    }
}
