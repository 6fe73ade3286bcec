// A malformed command table is a compile error naming commands.toml:LINE and the command.
mredis_macros::check_table!(r#"
[[command]]
name = "GET"
group = "string"
class = "key"
summary = "Get a key."
routing = "fast"
methods = [{ sig = "get<K: ToSingleRedisArg>(key: K)", key = "key", hashed = true }]
"#);

fn main() {}
