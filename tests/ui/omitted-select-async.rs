// Omitted on the async client too.
#[allow(dead_code)]
async fn run(mr: &mredis::aio::MRedis) {
    let _: () = mr.select(1).await.unwrap();
}

fn main() {}
