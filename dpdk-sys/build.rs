//! Finds DPDK (>= 22.11) with pkg-config, generates bindings for the functions
//! baton uses with bindgen, and compiles the wrappers of DPDK's `static inline`
//! ring and mempool functions (bindgen's `wrap_static_fns`) plus the one-line
//! `rte_errno` shim with `cc`. Linked dynamically: a static DPDK is ~38 MB.

#[cfg(feature = "bindings")]
use std::env;
#[cfg(feature = "bindings")]
use std::path::PathBuf;

#[cfg(feature = "bindings")]
const LIBS: &[&str] = &[
    "rte_eal",
    "rte_mempool",
    "rte_ring",
    "rte_kvargs",
    "rte_telemetry",
    "rte_log",
];

#[cfg(not(feature = "bindings"))]
fn main() {}

#[cfg(feature = "bindings")]
fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let dpdk = match pkg_config::Config::new()
        .atleast_version("22.11")
        .cargo_metadata(false)
        .probe("libdpdk")
    {
        Ok(l) => l,
        Err(e) => {
            // A build script can only fail by exiting non-zero; say what to install.
            eprintln!(
                "baton-dpdk-sys: DPDK >= 22.11 not found through pkg-config ({e}).\n\
                 Install it (Debian/Ubuntu: apt-get install libdpdk-dev libclang-dev pkg-config) \
                 or build without the `dpdk` feature."
            );
            std::process::exit(1);
        }
    };
    // Link only what we use, dynamically; librte_log does not exist before 23.x.
    for p in &dpdk.link_paths {
        println!("cargo:rustc-link-search=native={}", p.display());
    }
    for lib in LIBS {
        if dpdk.libs.iter().any(|l| l == lib) {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }

    let mut clang_args: Vec<String> = dpdk
        .include_paths
        .iter()
        .map(|p| format!("-I{}", p.display()))
        .collect();
    // pkg-config also gives `-include rte_config.h` and `-march=...`: both matter to the headers.
    let raw = std::process::Command::new("pkg-config")
        .args(["--cflags-only-other", "libdpdk"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let other: Vec<String> = raw.split_whitespace().map(str::to_string).collect();
    clang_args.extend(other.iter().cloned());

    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let wrappers = out.join("static_fns");
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(&clang_args)
        .allowlist_function("rte_eal_init|rte_eal_cleanup|rte_strerror|rte_lcore_id|rte_socket_id")
        .allowlist_function("rte_thread_register|rte_thread_unregister")
        .allowlist_function("rte_zmalloc|rte_free|rte_malloc_dump_stats")
        .allowlist_function("rte_ring_create_elem|rte_ring_free|rte_ring_enqueue_elem|rte_ring_dequeue_elem")
        .allowlist_function("rte_ring_mp_enqueue_elem|rte_ring_sc_dequeue_elem|rte_ring_mc_dequeue_elem")
        .allowlist_function("rte_ring_count|rte_ring_empty|rte_ring_get_capacity")
        .allowlist_function("rte_ring_enqueue_burst_elem|rte_ring_dequeue_burst_elem")
        .allowlist_function("rte_mempool_create|rte_mempool_free|rte_mempool_get|rte_mempool_put")
        .allowlist_function("rte_mempool_avail_count|rte_mempool_in_use_count")
        .allowlist_function("rte_mempool_default_cache|rte_mempool_cache_flush")
        .allowlist_function("baton_rte_errno")
        .allowlist_var("RING_F_.*|RTE_MEMPOOL_F_.*|SOCKET_ID_ANY|RTE_RING_NAMESIZE|RTE_MEMPOOL_NAMESIZE|RTE_MEMPOOL_CACHE_MAX_SIZE|LCORE_ID_ANY")
        .wrap_static_fns(true)
        .wrap_static_fns_path(&wrappers)
        .layout_tests(false)
        .generate_comments(false)
        .derive_default(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|e| {
            eprintln!("baton-dpdk-sys: bindgen failed over the DPDK headers: {e} (is libclang-dev installed?)");
            std::process::exit(1);
        });
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");

    let mut build = cc::Build::new();
    build
        .file("shim.c")
        .file(wrappers.with_extension("c"))
        .include(".")
        .warnings(false);
    for p in &dpdk.include_paths {
        build.include(p);
    }
    for f in &other {
        build.flag(f);
    }
    build.compile("baton_dpdk_shim");
}
