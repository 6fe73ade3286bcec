// WATCH is omitted from mredis (see commands.toml): calling it must not compile.
#[allow(dead_code)]
fn sync(mr: &mredis::MRedis) {
    let _: () = mr.watch("k").unwrap();
}

fn main() {}
