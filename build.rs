//! Build script: compiles the BPF programs in `src/bpf/` into a libbpf-rs skeleton, and the
//! protocol definitions in `proto/` into Rust (with protox: no `protoc` needed), both into
//! `OUT_DIR`.

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
    compile_probes(target_arch, &out);
    compile_protos();
}

/// The tiny programs `k8s-alog doctor` loads one by one to learn what this kernel allows.
fn compile_probes(target_arch: &str, out: &std::path::Path) {
    SkeletonBuilder::new()
        .source("src/bpf/probe.bpf.c")
        .clang_args([
            format!("-D__TARGET_ARCH_{target_arch}"),
            "-Wall".to_string(),
            "-Werror".to_string(),
            "-Isrc/bpf".to_string(),
        ])
        .build_and_generate(out.join("probe.skel.rs"))
        .expect("compiling src/bpf/probe.bpf.c (is clang installed? run `make deps`)");
    println!("cargo:rerun-if-changed=src/bpf/probe.bpf.c");
}

/// Every `proto/*.proto` into tonic clients and servers in `OUT_DIR`.
fn compile_protos() {
    println!("cargo:rerun-if-changed=proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir("proto")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "proto"))
                .collect()
        })
        .unwrap_or_default();
    if files.is_empty() {
        return;
    }
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, ["proto"]).expect("parsing proto/*.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .expect("generating Rust from proto/*.proto");
}
