// A malformed command table is a compile error naming commands.toml:LINE and the command.
mredis_macros::check_table!(r#"
[[command]]
name = "GET"
group = "string"
class = "key"
summary = "Get a key."
methods = [{ sig = "get<K: ToSingleRedisArg>(key: K)", key = "key" }]

[[command]]
name = "GETX"
group = "string"
class = "key"
summary = "Get a key again."
methods = [{ sig = "get<K: ToSingleRedisArg>(key: K)", key = "key" }]
"#);

fn main() {}
