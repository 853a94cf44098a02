//! Compiles the `.proto` contracts with the pure-Rust `protox` compiler, so no
//! `protoc` has to be installed, and keeps the descriptor set for reflection.

use std::path::PathBuf;

use protox::prost::Message;

const PROTOS: &[&str] = &[
    "commerce/product/v1/product.proto",
    "commerce/point/v1/point.proto",
    "commerce/coupon/v1/coupon.proto",
    "commerce/saga/v1/barrier.proto",
    "commerce/order/v1/order.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("commerce_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
