//! An S3-compatible server on loopback that behaves like NCP Object Storage (ListObjectsV2
//! refused, URL-encoded listings), serving the folders under `ROOT` as buckets. For
//! benchmarks and trying the bucket source by hand:
//!
//! `cargo run --release --example ncp_s3 -- ROOT BUCKET 127.0.0.1:9000 [LATENCY]`
//!
//! LATENCY (e.g. `50ms`) is added to every request, as a real endpoint's round trip would be.
//! Credentials: access key `s3-access`, secret `s3-secret-31f7`.

#[path = "../tests/it/common/s3.rs"]
#[allow(dead_code)]
mod s3;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (root, bucket, listen, latency) = match args.as_slice() {
        [_, root, bucket, listen] => (root, bucket, listen, "0s"),
        [_, root, bucket, listen, latency] => (root, bucket, listen, latency.as_str()),
        _ => {
            eprintln!("usage: ncp_s3 ROOT BUCKET ADDR [LATENCY]");
            std::process::exit(2);
        }
    };
    let server = s3::S3Server::serve(
        root.into(),
        bucket,
        listen.parse().expect("ADDR like 127.0.0.1:9000"),
        humantime::parse_duration(latency).expect("LATENCY like 50ms"),
    )
    .await;
    eprintln!("NCP-like S3 on {} serving {root}", server.endpoint());
    tokio::signal::ctrl_c().await.ok();
}
