// A row's `feature` must be one mredis has (and forwards to redis-rs):
// a misspelled one would silently leave the methods out of every build.
mredis_macros::check_table!(r#"
[[command]]
name = "BF.ADD"
group = "module"
class = "key"
since = "RedisBloom"
feature = "blooom"
summary = "Adds an item to a Bloom filter."
methods = [{ sig = "bf_add<K: ToSingleRedisArg, V: ToSingleRedisArg>(key: K, value: V)", key = "key" }]
"#);

fn main() {}
