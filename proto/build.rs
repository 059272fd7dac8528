//! Generates the protos that `containerd-shim-protos` does not ship into `OUT_DIR`.
use ttrpc_codegen::{Codegen, ProtobufCustomize};

fn main() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=protos");
    Codegen::new()
        .inputs(["protos/runtimeoptions.proto"])
        .include("protos")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .out_dir(&out)
        .run()
        .expect("generate runtimeoptions");
    // `include!` rejects inner attributes (rust-lang/rust#18810): drop them, the
    // including module carries the allows instead.
    let file = out.join("runtimeoptions.rs");
    let text = std::fs::read_to_string(&file).expect("read generated file");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
        .collect();
    std::fs::write(&file, kept.join("\n")).expect("write generated file");
}
