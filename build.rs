//! Hands the linker script to the kernel binary. Only the bare-metal build
//! links the kernel; host builds (`cargo test`) only compile the library.

fn main() {
    println!("cargo:rerun-if-changed=layout.ld");
    println!("cargo:rerun-if-changed=src/arch/x86_64/boot.s");
    println!("cargo:rerun-if-changed=src/arch/x86_64/trampoline.s");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=--script={dir}/layout.ld");
    }
    // The build's git revision goes into the `env` line of the benchmarks.
    let rev = git(&["describe", "--always", "--dirty", "--abbrev=12"])
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=HB_GIT_REV={rev}");
    // A commit moves the branch ref, not HEAD (which names the branch), and
    // staging changes the index: watch all three so the revision is current.
    // `--git-path` finds them in a worktree too, where `.git` is a file.
    let mut watch = vec!["HEAD".to_owned(), "index".to_owned()];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(r);
    }
    for name in watch {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}

/// What `git ARGS` prints, trimmed, if it succeeds.
fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
}
