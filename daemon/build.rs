//! berth-pause is freestanding: link it statically, without libc or start files, and as a
//! non-PIE executable so it runs in an otherwise empty rootfs.
fn main() {
    for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie"] {
        println!("cargo:rustc-link-arg-bin=berth-pause={arg}");
    }
}
