//! Compiles `llmgw/v1/*.proto` with tonic; nothing generated is checked in.
//! `protoc` comes from `protoc-bin-vendored`, so a fresh machine needs no install.

use std::path::PathBuf;

const PROTOS: [&str; 7] = [
    "llmgw/v1/chat.proto",
    "llmgw/v1/error.proto",
    "llmgw/v1/auth.proto",
    "llmgw/v1/router.proto",
    "llmgw/v1/adapter.proto",
    "llmgw/v1/metering.proto",
    "llmgw/v1/gateway.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // It carries a BYOK credential's secrets: its Debug (in `lib.rs`) hides them.
    config.skip_debug(["llmgw.v1.ProviderCredential"]);
    // Passed-through bodies (uploads, audio) move as `Bytes`: no copy per piece.
    config.bytes([".llmgw.v1.ForwardChunk.data", ".llmgw.v1.FormField.data"]);
    for file in PROTOS {
        println!("cargo:rerun-if-changed={file}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("llmgw_descriptor.bin"))
        .compile_with_config(config, &PROTOS, &["."])?;
    Ok(())
}
