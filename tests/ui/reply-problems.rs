// `reply` says how an `all` row's replies combine on a routed handle: it is
// required there, must be a known name, and is only for `all` rows.
mredis_macros::check_table!(r#"
[[command]]
name = "DBSIZE"
group = "server"
class = "all"
summary = "Count keys."
methods = [{ sig = "dbsize()", cmd = "DBSIZE" }]

[[command]]
name = "LASTSAVE"
group = "server"
class = "all"
reply = "average"
summary = "Last save."
methods = [{ sig = "lastsave()", cmd = "LASTSAVE" }]

[[command]]
name = "GET"
group = "string"
class = "key"
reply = "sum"
summary = "Get a key."
methods = [{ sig = "get<K: ToSingleRedisArg>(key: K)", key = "key" }]
"#);

fn main() {}
