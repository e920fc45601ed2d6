// Decides, when a crate of the workspace is built, whether the tests that need `../shared` (real
// slices, PyTorch fixtures) or numpy run or are ignored. Ignored tests show in the test summary
// with their reason. With `CI=true` they always run, so a missing prerequisite fails CI instead of
// passing as a skip. The check runs again when `CI` or `COVSEG_SHARED` changes, or after
// `touch stages/prerequisites.rs` (for a `../shared` added after the first build). Both crates'
// build scripts include this file.

use std::path::{Path, PathBuf};
use std::process::Command;

fn check_prerequisites() {
    println!("cargo::rustc-check-cfg=cfg(covseg_shared, covseg_numpy)");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-env-changed=COVSEG_SHARED");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    // `shared/` sits beside the workspace: the nearest folder above with a Cargo.lock.
    let workspace = manifest
        .ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .unwrap_or(&manifest)
        .to_path_buf();
    let shared = std::env::var_os("COVSEG_SHARED")
        .map_or_else(|| workspace.join("../shared"), PathBuf::from);
    if ci || Path::new(&shared).is_dir() {
        println!("cargo::rustc-cfg=covseg_shared");
    }
    let numpy = Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ci || numpy {
        println!("cargo::rustc-cfg=covseg_numpy");
    }
}
