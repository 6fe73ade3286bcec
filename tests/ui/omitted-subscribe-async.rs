// Omitted on the async client too.
#[allow(dead_code)]
async fn run(mr: &mredis::aio::MRedis) {
    let _: () = mr.subscribe("channel").await.unwrap();
}

fn main() {}
