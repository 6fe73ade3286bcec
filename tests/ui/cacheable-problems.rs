// `cacheable` is checked: only a `key` row that reads one key (at argument
// 1) may be cached; anything else is a compile error naming the row and the
// field's line.
mredis_macros::check_table!(r#"
[[command]]
name = "SET"
group = "string"
class = "key"
summary = "Set a key."
key_spec = { first = 1 }
access = "write"
cacheable = true
methods = [{ sig = "set<K: ToSingleRedisArg, V: ToSingleRedisArg>(key: K, value: V)", key = "key" }]

[[command]]
name = "MGET"
group = "string"
class = "multi"
summary = "Get keys."
key_spec = { first = 1, last = -1 }
access = "read"
cacheable = true
methods = [{ sig = "mget<K: ToRedisArgs>(keys: K)", keys = ["keys"], stride = 1, merge = "ordered" }]

[[command]]
name = "GET"
group = "string"
class = "key"
summary = "Get a key."
key_spec = { first = 1 }
access = "read"
cacheable = "yes"
methods = [{ sig = "get<K: ToSingleRedisArg>(key: K)", key = "key" }]
"#);

fn main() {}
