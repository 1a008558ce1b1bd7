//! An S3-compatible server on loopback that behaves like NCP Object Storage (ListObjectsV2
//! refused, URL-encoded listings), serving the folders under `ROOT` as buckets. For
//! benchmarks and trying the bucket source by hand:
//!
//! `cargo run --release --example ncp_s3 -- ROOT BUCKET 127.0.0.1:9000`
//!
//! Credentials: access key `s3-access`, secret `s3-secret-31f7`.

#[path = "../tests/common/s3.rs"]
#[allow(dead_code)]
mod s3;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, root, bucket, listen] = args.as_slice() else {
        eprintln!("usage: ncp_s3 ROOT BUCKET ADDR");
        std::process::exit(2);
    };
    let server = s3::S3Server::serve(
        root.into(),
        bucket,
        listen.parse().expect("ADDR like 127.0.0.1:9000"),
        Default::default(),
    )
    .await;
    eprintln!("NCP-like S3 on {} serving {root}", server.endpoint());
    tokio::signal::ctrl_c().await.ok();
}
