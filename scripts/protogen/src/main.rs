//! Regenerates `examples/proto/orders.rs` from `examples/proto/orders.proto`: tonic-prost-build with
//! the protoc binary vendored by `protoc-bin-vendored`, so no system protoc is needed, then
//! rustfmt, so the checked-in file passes `cargo fmt --check`. From the repository root:
//!
//! ```not_rust
//! cargo run --manifest-path scripts/protogen/Cargo.toml
//! ```
//!
//! The examples include the checked-in file rather than generating it in a build script: a build
//! script would run for every build of the crate, and every user of it would need protoc.

use std::{error::Error, fs, path::Path, process::Command};

const HEADER: &str = "\
// @generated from examples/proto/orders.proto by scripts/protogen. Do not edit; regenerate with
//
//     cargo run --manifest-path scripts/protogen/Cargo.toml
//
// Included by examples/tonic_orders.rs and tests/tonic_orders.rs with `#[path] mod proto;`.

";

fn main() -> Result<(), Box<dyn Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()?;
    let proto_dir = root.join("examples/proto");
    let proto = proto_dir.join("orders.proto");
    let target = proto_dir.join("orders.rs");

    // prost-build names its output after the proto package; write it aside, then move it.
    let out_dir = std::env::temp_dir().join(format!("protogen-{}", std::process::id()));
    fs::create_dir_all(&out_dir)?;
    let generated = generate(&proto, &proto_dir, &out_dir);
    let code = generated.and_then(|()| Ok(fs::read_to_string(out_dir.join("orders.v1.rs"))?));
    fs::remove_dir_all(&out_dir)?;
    fs::write(&target, format!("{HEADER}{}", code?))?;

    let status = Command::new("rustfmt")
        .arg("--edition=2021")
        .arg(&target)
        .status()?;
    if !status.success() {
        return Err(format!("rustfmt {} failed: {status}", target.display()).into());
    }
    println!("wrote {}", target.display());
    Ok(())
}

fn generate(proto: &Path, include: &Path, out_dir: &Path) -> Result<(), Box<dyn Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .out_dir(out_dir)
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &[proto], &[include])?;
    Ok(())
}
