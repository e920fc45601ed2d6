//! Decides, when the crate is built, whether the tests that need `../shared` (real slices,
//! PyTorch fixtures) or numpy run or are ignored. Ignored tests show in the test summary with
//! their reason. With `CI=true` they always run, so a missing prerequisite fails CI instead of
//! passing as a skip. The check runs again when `CI` or `COVSEG_SHARED` changes, or after
//! `touch build.rs` (for a `../shared` added after the first build).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(covseg_shared, covseg_numpy)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-env-changed=COVSEG_SHARED");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let shared = std::env::var_os("COVSEG_SHARED").map_or_else(
        || PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("../shared"),
        PathBuf::from,
    );
    if ci || shared.is_dir() {
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
