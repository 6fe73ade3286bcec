// `returns` must be a Rust type: a malformed one is a compile error naming
// commands.toml:LINE, the command and the method.
mredis_macros::check_table!(r#"
[[command]]
name = "GET"
group = "string"
class = "key"
summary = "Get a key."
methods = [
  { sig = "get_int<K: ToSingleRedisArg>(key: K)", cmd = "GET {key}", key = "key", returns = "Option<isize" },
]
"#);

fn main() {}
