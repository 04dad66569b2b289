//! ringbench: the load generator (being built; see issue 4).
fn main() {
    eprintln!("ringbench: not built yet");
    std::process::exit(2);
}
