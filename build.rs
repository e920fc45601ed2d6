// Which test prerequisites this machine has: see stages/prerequisites.rs.
include!("stages/prerequisites.rs");

fn main() {
    println!("cargo::rerun-if-changed=stages/prerequisites.rs");
    check_prerequisites();
}
