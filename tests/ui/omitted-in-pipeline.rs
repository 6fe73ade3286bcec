// Omitted commands are missing from per-key pipelines too.
#[allow(dead_code)]
fn pipe(mr: &mredis::MRedis) {
    let mut p = mr.pipeline("k").unwrap();
    p.select(1);
}

fn main() {}
