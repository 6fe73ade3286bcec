// A per-key pipeline runs on one server: fan-out commands (KEYS, FLUSHDB) are not in it.
#[allow(dead_code)]
fn pipe(mr: &mredis::MRedis) {
    let mut p = mr.pipeline("k").unwrap();
    p.flushdb();
}

fn main() {}
