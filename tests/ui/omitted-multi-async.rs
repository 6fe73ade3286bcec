// Omitted on the async client too.
#[allow(dead_code)]
async fn run(mr: &mredis::aio::MRedis) {
    let _: () = mr.multi().await.unwrap();
}

fn main() {}
