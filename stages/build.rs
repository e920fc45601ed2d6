// Which test prerequisites this machine has: see prerequisites.rs.
include!("prerequisites.rs");

fn main() {
    println!("cargo::rerun-if-changed=prerequisites.rs");
    check_prerequisites();
}
