//! The `zooid-sync` binary: parses the command line and wires the library together.

fn main() {
    eprintln!("zooid-sync: commands are not wired up yet; the library and its tests are");
    std::process::exit(2);
}
