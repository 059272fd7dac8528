//! Generates the protos that `containerd-shim-protos` does not ship into `OUT_DIR`.
use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=protos");
    Codegen::new()
        .inputs([
            "protos/runtimeoptions.proto",
            "protos/berth/attach.proto",
            "protos/berth/journal.proto",
        ])
        .include("protos")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .out_dir(&out)
        .run()
        .expect("generate protos");
    // `include!` rejects inner attributes (rust-lang/rust#18810): drop them, the
    // including module carries the allows instead.
    for name in [
        "runtimeoptions.rs",
        "attach.rs",
        "attach_ttrpc.rs",
        "journal.rs",
        "journal_ttrpc.rs",
    ] {
        let file = out.join(name);
        let text = std::fs::read_to_string(&file).expect("read generated file");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&file, kept.join("\n")).expect("write generated file");
    }
}
