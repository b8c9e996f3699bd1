//! Builds the eBPF object (`daxrace-ebpf`) with Debian's cargo and rustc, which
//! ship a prebuilt `core` for bpfel-unknown-none (rustup's toolchains here
//! cannot build one: see docs/toolchain.md), and links it with bpf-linker.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}

fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var("HOME").unwrap_or_default()).join(".cargo"))
        .join("bin")
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    for dir in [
        "daxrace-ebpf/src",
        "daxrace-ebpf/Cargo.toml",
        "daxrace-common/src",
    ] {
        println!("cargo::rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo::rerun-if-env-changed=DAXRACE_EBPF_OBJECT");

    // A prebuilt object (e.g. for packaging) skips the toolchain entirely.
    if let Some(obj) = env::var_os("DAXRACE_EBPF_OBJECT") {
        std::fs::copy(&obj, out_dir.join("daxrace.bpf.o"))
            .unwrap_or_else(|e| fail(&format!("DAXRACE_EBPF_OBJECT={obj:?}: {e}")));
        return;
    }

    let linker = cargo_bin_dir().join("bpf-linker");
    if !Path::new(DEBIAN_CARGO).exists() || !Path::new(BPF_CORE).exists() || !linker.exists() {
        fail("the eBPF toolchain is missing (Debian rustc-web, BPF core, bpf-linker): run `cargo xtask setup`");
    }
    println!("cargo::rerun-if-changed={}", linker.display());

    let target_dir = root.join("target/bpf");
    let path = format!(
        "/usr/bin:{}:{}",
        cargo_bin_dir().display(),
        env::var("PATH").unwrap_or_default()
    );
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
        // Without this, bpf-linker asks LLVM to leave every memset to a
        // call of compiler-builtins' byte-at-a-time loop (a zeroed record
        // was ~700 BPF instructions, most of an emitting hook's cost);
        // with it, LLVM writes them as word stores. The in-order expansion
        // it turns off only serves JITs that pattern-match memcpy (not
        // x86_64's).
        "-Clink-arg=--disable-expand-memcpy-in-order",
    ]
    .join("\x1f");
    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.current_dir(&root)
        .args(["build", "--package", "daxrace-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "--target-dir"])
        .arg(&target_dir)
        .env("PATH", path)
        // aya-ebpf and the programs' one locked add (`dax::watch`) need
        // asm_experimental_arch; allow unstable features for those alone.
        .env("RUSTC_BOOTSTRAP", "aya_ebpf,daxrace")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer (rustup) toolchain must not leak into Debian's cargo.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTUP_HOME",
        "CARGO",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "RUSTDOC",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run {DEBIAN_CARGO}: {e}")));
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        fail("building daxrace-ebpf failed (compiler output above); `cargo xtask setup` installs the toolchain");
    }
    let obj = target_dir.join("bpfel-unknown-none/release/daxrace");
    std::fs::copy(&obj, out_dir.join("daxrace.bpf.o"))
        .unwrap_or_else(|e| fail(&format!("cannot copy {}: {e}", obj.display())));
}
