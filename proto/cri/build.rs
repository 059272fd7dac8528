//! Generates the CRI messages and the RuntimeService/ImageService clients and servers from
//! `protos/api.proto` (needs `protoc`, Debian's protobuf-compiler).
//!
//! Debian 12's protoc (3.21) predates the `debug_redact` field option (protobuf 22) that
//! api.proto puts on AuthConfig's secrets, so the file is compiled from a copy without
//! it; the redaction itself is kept by a hand-written `Debug` for AuthConfig (src/lib.rs).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=protos/api.proto");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let src = std::fs::read_to_string("protos/api.proto").expect("read protos/api.proto");
    let dir = out.join("protos");
    std::fs::create_dir_all(&dir).expect("create OUT_DIR/protos");
    let copy = dir.join("api.proto");
    std::fs::write(&copy, src.replace(" [debug_redact = true]", "")).expect("write copy");
    tonic_prost_build::configure()
        // berthctl's `-o json` prints CRI messages as JSON.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        // JSON written from an older api.proto (store format 1's records) lacks the newer
        // fields: they take their protobuf defaults, as on the wire.
        .message_attribute(".", "#[serde(default)]")
        // An env value is bytes since Kubernetes 1.34; as JSON it stays the string it was
        // (berthctl's output, and store format 1's records, which hold it as a string).
        .field_attribute(
            "runtime.v1.KeyValue.value",
            "#[serde(with = \"crate::bytes_as_string\")]",
        )
        .skip_debug(["runtime.v1.AuthConfig"])
        .compile_protos(&[&copy], &[&dir])
        .expect("generate the CRI bindings");
}
