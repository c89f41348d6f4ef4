//! Compiles the trimmed CRI v1 RuntimeService and ImageService
//! (`proto/cri/api.proto`) into tonic clients, with `protox` so that no
//! system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let file = proto_root.join("cri/api.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile(["cri/api.proto"], [&proto_root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
