//! Compiles `proto/bizpilot/v1/*.proto` with protox (a Rust protobuf compiler: no system `protoc`)
//! and generates the Rust types with prost-build. The encoded descriptor set is kept in `OUT_DIR`
//! too, for tests that read messages by reflection.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("bizpilot/v1/business_event.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = match protox::compile([&file], [&root]) {
        Ok(f) => f,
        Err(e) => panic!("cannot compile {}: {e}", file.display()),
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("bizpilot_v1_descriptor.bin"), bytes).expect("write the descriptor set");
    if let Err(e) = prost_build::Config::new().btree_map(["."]).compile_fds(fds) {
        panic!("cannot generate Rust code for {}: {e}", file.display());
    }
}
