//! Compile the hypervisor's ring core (xen/common/mem_event_ring.c of the
//! patched tree, unchanged) and the harness's hypervisor-side glue.
//!
//! XME_HARNESS_SANITIZE=1 builds both with AddressSanitizer and
//! UndefinedBehaviorSanitizer (errors abort); the test binaries must then run
//! with the ASan runtime preloaded (see the Makefile's harness-asan target).

use std::path::PathBuf;
use std::process::exit;

fn main() {
    let manifest = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let tree = match std::env::var_os("XEN_MEM_EVENT_XEN_TREE") {
        Some(t) => manifest.join("..").join(t),
        None => manifest.join("../build/xen"),
    };
    let core = tree.join("xen/common/mem_event_ring.c");
    if !core.is_file() {
        eprintln!(
            "error: patched Xen tree not found at {}: run 'make xen-src' first (or set \
                XEN_MEM_EVENT_XEN_TREE)",
            tree.display()
        );
        exit(1);
    }
    println!("cargo:rerun-if-env-changed=XEN_MEM_EVENT_XEN_TREE");
    println!("cargo:rerun-if-env-changed=XME_HARNESS_SANITIZE");
    println!("cargo:rerun-if-changed={}", core.display());
    println!(
        "cargo:rerun-if-changed={}",
        tree.join("xen/include/xen/mem_event_ring.h").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        tree.join("xen/include/public/mem_event.h").display()
    );
    println!("cargo:rerun-if-changed=c");
    println!("cargo:rustc-check-cfg=cfg(harness_sanitized)");

    let sanitize = std::env::var("XME_HARNESS_SANITIZE").is_ok_and(|v| v == "1");
    let mut build = cc::Build::new();
    build
        .file(&core)
        .file(manifest.join("c/hv.c"))
        // The stand-ins first: anything else the ring core included from the
        // hypervisor would fail to build here, which keeps it self-contained.
        .include(manifest.join("c/include"))
        .include(tree.join("xen/include"))
        .define("__XEN_TOOLS__", None)
        .flag("-std=gnu99")
        .flag("-Wall")
        .flag("-Wextra")
        .flag("-Wno-unused-parameter")
        .flag("-Wno-missing-field-initializers")
        .flag("-Werror")
        .flag("-fno-strict-aliasing");
    if sanitize {
        build
            .flag("-fsanitize=address,undefined")
            .flag("-fno-sanitize-recover=all")
            .flag("-fno-omit-frame-pointer")
            .opt_level(1);
        println!("cargo:rustc-cfg=harness_sanitized");
        println!("cargo:rustc-link-lib=dylib=asan");
        println!("cargo:rustc-link-lib=dylib=ubsan");
    }
    build.compile("xen_mem_event_ring");
    println!("cargo:rustc-link-lib=dylib=pthread");
}

fn env(k: &str) -> String {
    match std::env::var(k) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("error: {k} not set by cargo");
            exit(1);
        }
    }
}
