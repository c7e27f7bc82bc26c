//! Builds the eBPF object with aya-build so that a plain `cargo build` works once
//! `cargo xtask setup` has installed the pinned nightly, rust-src and bpf-linker.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// The dated nightly whose LLVM major matches bpf-linker's; keep in sync with xtask.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Leave an empty object: the daemon then refuses to load with a clear message,
        // while unit tests of the pure-Rust modules still build.
        fs::write(out_dir.join("probe"), []).context("writing placeholder eBPF object")?;
        return Ok(());
    }
    let metadata = cargo_metadata_root()?;
    let ebpf = Package {
        name: "probe-ebpf",
        root_dir: &metadata,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::Custom(EBPF_TOOLCHAIN)).context(
        "building the eBPF object failed; run `cargo xtask setup` to install the pinned \
         nightly, rust-src and bpf-linker",
    )?;
    strip_debug(&out_dir.join("probe"));
    Ok(())
}

/// The object's DWARF (about 70 % of its 4.7 MB) is only what bpf-linker made BTF from; aya
/// reads `.BTF` and `.BTF.ext`. Every daemon maps and parses the object, so it ships without
/// (1.3 MB: 3.4 MB less resident memory). Without an `llvm-objcopy` the object stays whole.
fn strip_debug(object: &Path) {
    let mut tools = vec![PathBuf::from("llvm-objcopy")];
    if let Some(prefix) = env::var_os("LLVM_PREFIX") {
        tools.push(PathBuf::from(prefix).join("bin/llvm-objcopy"));
    }
    if let Ok(dirs) = fs::read_dir("/usr/lib") {
        let mut llvm: Vec<PathBuf> = dirs
            .filter_map(Result::ok)
            .map(|d| d.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("llvm-"))
            })
            .map(|p| p.join("bin/llvm-objcopy"))
            .collect();
        llvm.sort();
        tools.extend(llvm.into_iter().rev());
    }
    for tool in &tools {
        let stripped = Command::new(tool)
            .arg("--strip-debug")
            .arg(object)
            .status()
            .is_ok_and(|s| s.success());
        if stripped {
            return;
        }
    }
    println!(
        "cargo::warning=no llvm-objcopy found (PATH, $LLVM_PREFIX/bin, /usr/lib/llvm-*/bin): \
         the eBPF object keeps its DWARF, and the daemon 3 MB more resident memory"
    );
}

fn cargo_metadata_root() -> anyhow::Result<String> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("no manifest dir"))?);
    let root = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("probe-user has no parent directory"))?
        .join("probe-ebpf");
    root.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))
}
