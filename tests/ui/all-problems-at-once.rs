// A malformed command table is a compile error naming commands.toml:LINE and the command.
mredis_macros::check_table!(r#"
[[command]]
name = "GET"
group = "string"
class = "sharded"
summary = "Get a key."
methods = [{ sig = "get<K: ToSingleRedisArg>(key: K)", key = "key" }]

[[command]]
name = "QUIT"
group = "connection"
class = "omitted"
summary = "Close the connection."

[[command]]
name = "GETX"
group = "string"
class = "key"
summary = "Get."
methods = [{ sig = "get<K: ToSingleRedisArg>(key: K)" }]
"#);

fn main() {}
