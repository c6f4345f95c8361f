//! Build script: compiles the BPF programs in `src/bpf/` into a libbpf-rs skeleton in `OUT_DIR`.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const BPF_SRC: &str = "src/bpf/alog.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH is set by cargo");
    let target_arch = match arch.as_str() {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        other => panic!("unsupported target architecture for the BPF programs: {other}"),
    };
    SkeletonBuilder::new()
        .source(BPF_SRC)
        .clang_args([
            format!("-D__TARGET_ARCH_{target_arch}"),
            "-Wall".to_string(),
            "-Werror".to_string(),
            "-Isrc/bpf".to_string(),
        ])
        .build_and_generate(out.join("alog.skel.rs"))
        .expect("compiling src/bpf/alog.bpf.c (is clang installed? run `make deps`)");
    for f in ["src/bpf/alog.bpf.c", "src/bpf/alog.h", "src/bpf/vmlinux.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
}
