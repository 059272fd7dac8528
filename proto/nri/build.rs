//! Generates the NRI messages and the Plugin/Runtime ttrpc services from
//! `protos/api.proto` (containerd/nri v0.12.1's `pkg/api/api.proto`, unchanged) into
//! `OUT_DIR`, with ttrpc-codegen's pure-Rust parser (no protoc).
use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=protos");
    Codegen::new()
        .inputs(["protos/api.proto"])
        .include("protos")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .out_dir(&out)
        .run()
        .expect("generate the NRI protos");
    // `include!` rejects inner attributes (rust-lang/rust#18810): drop them, the
    // including module carries the allows instead.
    for name in ["api.rs", "api_ttrpc.rs"] {
        let file = out.join(name);
        let text = std::fs::read_to_string(&file).expect("read generated file");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&file, kept.join("\n")).expect("write generated file");
    }
}
