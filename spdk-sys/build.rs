//! Finds an installed SPDK (>= 25.09) with pkg-config, generates bindings for
//! the NVMe driver and env functions baton's `spdk-nvme` bdev uses with
//! bindgen (allowlists only), and links SPDK's static archives (DPDK and system
//! libraries dynamically).
//!
//! SPDK is in no package registry: build it from source (docs/spdk.md) and
//! point pkg-config at it: `PKG_CONFIG_PATH=$SPDK_DIR/build/lib/pkgconfig`.

#[cfg(feature = "bindings")]
use std::path::PathBuf;

#[cfg(not(feature = "bindings"))]
fn main() {}

/// What pkg-config must find: the NVMe driver, the DPDK env, and the POSIX
/// socket module the NVMe/TCP transport needs (it registers itself from a
/// constructor, so nothing references it by symbol).
#[cfg(feature = "bindings")]
const MODULES: &[&str] = &["spdk_nvme", "spdk_env_dpdk", "spdk_sock_posix"];

/// Archives linked whole (see the link step).
#[cfg(feature = "bindings")]
const WHOLE: &[&str] = &["spdk_nvme", "spdk_env_dpdk", "spdk_sock_posix"];

#[cfg(feature = "bindings")]
fn fail(msg: &str) -> ! {
    // A build script can only fail by exiting non-zero; say what is missing and how to fix it.
    eprintln!(
        "baton-spdk-sys: {msg}\n\
         The `spdk` feature needs an SPDK build (>= 25.09, against the system DPDK: \
         docs/spdk.md) and libclang. Point pkg-config at it with\n  \
         PKG_CONFIG_PATH=$SPDK_DIR/build/lib/pkgconfig\n\
         or build without the `spdk` feature."
    );
    std::process::exit(1);
}

#[cfg(feature = "bindings")]
fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let (libs, mut link_paths, include_paths) = probe_spdk();
    link_spdk(&libs, &link_paths);
    link_system_libs(&libs, &mut link_paths, &out);
    // DEP_SPDK_NVME_RPATH for dependents: the `baton` binary's run path (root build.rs),
    // so it finds ISA-L's shared libraries (in SPDK's tree) without LD_LIBRARY_PATH.
    // System directories stay out: they come last anyway, and put first they would
    // give an older system ISA-L precedence over SPDK's.
    let rpath: Vec<String> = link_paths
        .iter()
        .filter(|p| !p.starts_with("/usr") && !p.starts_with("/lib"))
        .map(|p| p.display().to_string())
        .collect();
    println!("cargo:rpath={}", rpath.join(":"));
    generate(&include_paths, &out);
}

/// SPDK's modules through pkg-config: libraries, link and include directories.
#[cfg(feature = "bindings")]
fn probe_spdk() -> (Vec<String>, Vec<PathBuf>, Vec<PathBuf>) {
    let mut libs: Vec<String> = Vec::new();
    let mut link_paths: Vec<PathBuf> = Vec::new();
    let mut include_paths: Vec<PathBuf> = Vec::new();
    for m in MODULES {
        let l = match pkg_config::Config::new().cargo_metadata(false).statik(true).probe(m) {
            Ok(l) => l,
            Err(e) => fail(&format!("SPDK module `{m}` not found through pkg-config ({e}).")),
        };
        for p in l.link_paths {
            if !link_paths.contains(&p) {
                link_paths.push(p);
            }
        }
        for p in l.include_paths {
            if !include_paths.contains(&p) {
                include_paths.push(p);
            }
        }
        for lib in l.libs {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    (libs, link_paths, include_paths)
}

#[cfg(feature = "bindings")]
fn link_spdk(libs: &[String], link_paths: &[PathBuf]) {
    for p in link_paths {
        println!("cargo:rustc-link-search=native={}", p.display());
    }
    // SPDK itself is linked from its static archives (built next to the shared ones, and
    // position-independent), DPDK and the system libraries dynamically. Linking SPDK's
    // shared libraries does not work with rustc's `--as-needed`: they leave their system
    // libraries (ISA-L, libuuid, OpenSSL, DPDK for the env) to the executable, and the
    // linker drops a library that only another shared library references. Archives
    // whose objects register themselves from constructors (NVMe transports, PCI drivers,
    // the POSIX socket module) are linked whole, or nothing would pull those objects in.
    for lib in libs {
        if WHOLE.contains(&lib.as_str()) {
            println!("cargo:rustc-link-lib=static:+whole-archive={lib}");
        } else if lib.starts_with("spdk_") {
            println!("cargo:rustc-link-lib=static={lib}");
        } else {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }
}

#[cfg(feature = "bindings")]
fn link_system_libs(libs: &[String], link_paths: &mut Vec<PathBuf>, out: &std::path::Path) {
    // SPDK's system libraries, as SPDK's own applications link them: spdk_syslibs lists
    // them (Libs.private, hence --static). The linker keeps those SPDK's objects use.
    let sys = match pkg_config::Config::new()
        .cargo_metadata(false)
        .statik(true)
        .probe("spdk_syslibs")
    {
        Ok(l) => l,
        Err(e) => fail(&format!(
            "SPDK module `spdk_syslibs` not found through pkg-config ({e})."
        )),
    };
    for p in &sys.link_paths {
        if !link_paths.contains(p) {
            println!("cargo:rustc-link-search=native={}", p.display());
            link_paths.push(p.clone());
        }
    }
    // ISA-L comes from SPDK's tree, and an older one may be installed in the system
    // directories that precede it on the linker's path (DPDK's): those are linked through
    // a link of their own name in OUT_DIR, so the linker takes SPDK's. At run time the
    // binary's run path (or LD_LIBRARY_PATH) finds SPDK's first, by the same soname.
    println!("cargo:rustc-link-search=native={}", out.display());
    for lib in &sys.libs {
        if libs.contains(lib) {
            continue;
        }
        let tree = sys
            .link_paths
            .iter()
            .map(|d| d.join(format!("lib{lib}.so")))
            .find(|f| f.exists() && !f.starts_with("/usr") && !f.starts_with("/lib"));
        match tree {
            Some(file) => {
                let alias = out.join(format!("libbaton_spdk_{lib}.so"));
                let _ = std::fs::remove_file(&alias);
                if let Err(e) = std::os::unix::fs::symlink(&file, &alias) {
                    fail(&format!("cannot link {} to {}: {e}", alias.display(), file.display()));
                }
                println!("cargo:rustc-link-lib=dylib=baton_spdk_{lib}");
            }
            None => println!("cargo:rustc-link-lib=dylib={lib}"),
        }
    }
}

/// Bindings for what `nvme::spdk` calls, from SPDK's headers.
#[cfg(feature = "bindings")]
fn generate(include_paths: &[PathBuf], out: &std::path::Path) {
    let clang_args: Vec<String> = include_paths.iter().map(|p| format!("-I{}", p.display())).collect();
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(&clang_args)
        .allowlist_function("spdk_env_dpdk_post_init|spdk_env_dpdk_external_init")
        .allowlist_function("spdk_env_opts_init|spdk_env_init|spdk_env_fini")
        .allowlist_function("spdk_zmalloc|spdk_free|spdk_vtophys")
        .allowlist_function("spdk_nvme_transport_id_parse|spdk_nvme_transport_id_trtype_str")
        .allowlist_function("spdk_nvme_ctrlr_get_default_ctrlr_opts|spdk_nvme_connect|spdk_nvme_detach")
        .allowlist_function("spdk_nvme_ctrlr_get_data|spdk_nvme_ctrlr_get_ns|spdk_nvme_ctrlr_get_num_ns")
        .allowlist_function("spdk_nvme_ctrlr_get_first_active_ns|spdk_nvme_ctrlr_get_next_active_ns")
        .allowlist_function("spdk_nvme_ctrlr_process_admin_completions|spdk_nvme_ctrlr_is_failed")
        .allowlist_function("spdk_nvme_ctrlr_disconnect|spdk_nvme_ctrlr_reconnect_async")
        .allowlist_function("spdk_nvme_ctrlr_reconnect_poll_async|spdk_nvme_ctrlr_reconnect_io_qpair")
        .allowlist_function("spdk_nvme_ctrlr_get_default_io_qpair_opts|spdk_nvme_ctrlr_alloc_io_qpair")
        .allowlist_function("spdk_nvme_ctrlr_free_io_qpair|spdk_nvme_qpair_process_completions")
        .allowlist_function("spdk_nvme_ns_get_sector_size|spdk_nvme_ns_get_num_sectors|spdk_nvme_ns_get_flags")
        .allowlist_function("spdk_nvme_ns_get_extended_sector_size|spdk_nvme_ns_get_uuid|spdk_nvme_ns_get_md_size")
        .allowlist_function("spdk_nvme_ns_get_max_io_xfer_size|spdk_nvme_ns_get_id")
        .allowlist_function("spdk_nvme_ns_cmd_read|spdk_nvme_ns_cmd_write|spdk_nvme_ns_cmd_flush")
        .allowlist_function("spdk_nvme_ns_cmd_write_zeroes|spdk_nvme_ns_cmd_dataset_management")
        .allowlist_function("spdk_nvme_cpl_get_status_string")
        .allowlist_type("spdk_nvme_cpl|spdk_nvme_dsm_range|spdk_nvme_ns_flags")
        .allowlist_var("SPDK_ENV_.*|SPDK_MALLOC_.*|SPDK_NVME_TRANSPORT_NAME_.*")
        // Packed in C with aligned members inside, which Rust refuses: read as bytes.
        .opaque_type("spdk_nvme_ctrlr_data")
        .layout_tests(false)
        .generate_comments(false)
        .derive_default(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|e| {
            fail(&format!(
                "bindgen failed over SPDK's headers: {e} (is libclang-dev installed?)"
            ))
        });
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");
}
