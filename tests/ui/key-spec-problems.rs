// `key_spec`, `access` and `block` are checked: each malformed value is a
// compile error naming the row and the field's line.
mredis_macros::check_table!(r#"
[[command]]
name = "GET"
group = "string"
class = "key"
summary = "Get a key."
key_spec = { first = 0 }
access = "readonly"
methods = [{ sig = "get<K: ToSingleRedisArg>(key: K)", key = "key" }]

[[command]]
name = "EVAL"
group = "scripting"
class = "colocated"
summary = "Run a script."
key_spec = { numkeys = 2, dest = 2 }
methods = [{ sig = "eval<K: ToRedisArgs>(script: &'a str, keys: K)", cmd = "EVAL {script} {#keys} {keys}", keys = ["keys"] }]

[[command]]
name = "OBJECT ENCODING"
group = "generic"
class = "key"
summary = "Encoding of a key."
key_spec = { first = 1 }
methods = [{ sig = "object_encoding<K: ToSingleRedisArg>(key: K)", cmd = "OBJECT ENCODING {key}", key = "key" }]

[[command]]
name = "BLPOP"
group = "list"
class = "colocated"
summary = "Pop or block."
key_spec = { first = 1, last = -2 }
block = { at = -1, unit = "minutes" }
methods = [{ sig = "blpop<K: ToRedisArgs>(keys: K, timeout: f64)", cmd = "BLPOP {keys} {timeout}", keys = ["keys"] }]

[[command]]
name = "XREAD"
group = "stream"
class = "colocated"
summary = "Read streams."
key_spec = "ask"
block = { at = 2, after = "BLOCK", unit = "ms" }
methods = [{ sig = "xread<K: ToRedisArgs>(keys: K)", cmd = "XREAD STREAMS {keys}", keys = ["keys"] }]
"#);

fn main() {}
