//! PLACEHOLDER owned by the VM-harness work (issue 3); replaced wholesale.
fn main() {
    eprintln!("daxrace-workload: not built yet (issue 3)");
    std::process::exit(2);
}
