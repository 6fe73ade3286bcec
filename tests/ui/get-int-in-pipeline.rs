// Methods with a fixed return type (`returns` in commands.toml) answer at
// once; pipelines answer at `query`, so they do not have them (nor does
// redis-rs's `Pipeline`).
fn main() {
    let mr = mredis::MRedis::new(["redis://127.0.0.1:6379/0"]).unwrap();
    let mut pipe = mr.pipeline("k").unwrap();
    pipe.get_int("k");
}
