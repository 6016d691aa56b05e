//! Names the git commit the binary is built from, for `tributary --version`: the
//! environment variable `TRIBUTARY_GIT_COMMIT` (the commit's 12-digit short hash), or
//! `unknown` outside a git checkout (a source tarball, a crate from a registry) or
//! without git.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TRIBUTARY_GIT_COMMIT={commit}");
    // Run again when HEAD moves: a commit, a checkout (HEAD names the branch, whose ref
    // file or packed-refs holds the commit).
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for file in watched {
        // Only files that exist: a missing one would make cargo run this every build.
        if let Some(path) = git(&["rev-parse", "--git-path", &file])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
