//! Records the commit the crate is built from, for `zooid-sync --version` and the
//! `zooid_sync_build_info` metric: `ZOOID_SYNC_COMMIT` if the builder sets it (a package built
//! from a tarball), else `git rev-parse` of the checkout, else `unknown`.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=ZOOID_SYNC_COMMIT");
    let commit = std::env::var("ZOOID_SYNC_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ZOOID_SYNC_COMMIT={}", commit.trim());
}

fn git_commit() -> Option<String> {
    // Rebuilt when the checkout moves to another commit.
    for watched in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(watched).exists() {
            println!("cargo:rerun-if-changed={watched}");
        }
    }
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !commit.trim().is_empty()).then_some(commit)
}
