//! Stamps the build with the version and the git commit it was built from, so
//! `baton --version` and `spdk_get_version` name exactly what is running.
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=BATON_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    // Feature `spdk`: run SPDK's shared libraries from where pkg-config found them
    // (baton-spdk-sys passes the directories), so `baton` needs no LD_LIBRARY_PATH.
    if let Ok(dirs) = std::env::var("DEP_SPDK_NVME_RPATH") {
        for d in dirs.split(':').filter(|d| !d.is_empty()) {
            println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{d}");
        }
    }
}
