//! Build script of `xen-mem-event-sys`.
//!
//! 1. Locates the patched Xen tree (`XEN_MEM_EVENT_XEN_TREE`, else
//!    `<workspace>/build/xen`) and checks that it carries the mem-event ABI
//!    patch (`xen/include/public/mem_event.h`).
//! 2. Finds Xen's toolstack libraries with pkg-config, checks their versions
//!    and emits the link flags.
//! 3. Runs bindgen twice:
//!    - `abi.rs`: the PATCHED public headers, seen through
//!      `$OUT_DIR/include/xen -> <tree>/xen/include/public`;
//!    - `libs.rs`: the libraries' SYSTEM headers (`/usr/include`), with every
//!      item that `abi.rs` already defines blocklisted and imported from
//!      `abi` instead, so that one C type has one Rust type.
//! 4. Writes `system_xen_domctl.rs`: `struct xen_domctl` of the UNPATCHED
//!    system header as an opaque blob, for the test that checks that the
//!    patch leaves the size of `struct xen_domctl` alone.
//!
//! Every failure is reported as one `error: ...` line.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::io::ErrorKind;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process;
use std::rc::Rc;

use bindgen::callbacks::{IntKind, ParseCallbacks};
use bindgen::{Builder, RustEdition, RustTarget};

/// Environment variable naming the patched Xen tree.
const TREE_ENV: &str = "XEN_MEM_EVENT_XEN_TREE";

/// The header that only the patched tree has.
const PATCHED_HEADER: &str = "xen/include/public/mem_event.h";

/// pkg-config packages, with the versions accepted.  Only libxenctrl is
/// versioned like Xen (4.17.0 for every 4.17.x); the stable libraries carry
/// their own ABI version (the soname's), so they are checked against the
/// symbol version that introduced what we bind, up to the next major.
const LIBRARIES: &[(&str, Range<&str>, &str)] = &[
    ("xencontrol", "4.17".."4.18", "Xen 4.17.x libxenctrl"),
    ("xenevtchn", "1.0".."2", "libxenevtchn 1.x"),
    (
        "xenforeignmemory",
        "1.3".."2",
        "libxenforeignmemory >= 1.3 (map_resource)",
    ),
    ("xencall", "1.0".."2", "libxencall 1.x"),
    ("xentoollog", "1.0".."2", "libxentoollog 1.x"),
    ("xenstore", "4.0".."5", "libxenstore 4.x"),
];

fn main() {
    if let Err(message) = run() {
        // One line: cargo shows it under "--- stderr".
        eprintln!("error: {message}");
        process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env_var("OUT_DIR")?);
    let workspace_root = manifest_dir
        .parent()
        .ok_or("CARGO_MANIFEST_DIR has no parent directory")?
        .to_path_buf();

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=wrapper/abi.h");
    println!("cargo:rerun-if-changed=wrapper/libs.h");
    println!("cargo:rerun-if-env-changed={TREE_ENV}");

    let tree = locate_tree(&workspace_root)?;
    let public = tree
        .join("xen/include/public")
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}/xen/include/public: {e}", tree.display()))?;

    let include_paths = probe_libraries()?;

    let include_dir = out_dir.join("include");
    link_public_headers(&include_dir, &public)?;

    let abi = generate_abi(&manifest_dir, &include_dir, &public)?;
    let abi_items = item_names(&abi);
    write(&out_dir.join("abi.rs"), &abi)?;

    let libs = generate_libs(&manifest_dir, &include_paths, &abi_items)?;
    write(&out_dir.join("libs.rs"), &libs)?;

    let system_domctl = generate_system_domctl(&manifest_dir, &include_paths)?;
    write(&out_dir.join("system_xen_domctl.rs"), &system_domctl)?;

    // For dependents (links = "xenctrl"): DEP_XENCTRL_XEN_TREE and
    // DEP_XENCTRL_INCLUDE (a directory where <xen/...> is the patched
    // public headers).
    println!("cargo:xen_tree={}", tree.display());
    println!("cargo:include={}", include_dir.display());
    Ok(())
}

fn env_var(name: &str) -> Result<String, String> {
    env::var(name).map_err(|e| format!("{name}: {e}"))
}

/// The patched tree: `$XEN_MEM_EVENT_XEN_TREE` (relative paths are taken
/// from the workspace root) or `<workspace>/build/xen`.
fn locate_tree(workspace_root: &Path) -> Result<PathBuf, String> {
    let tree = match env::var_os(TREE_ENV) {
        Some(value) if !value.is_empty() => workspace_root.join(value),
        _ => workspace_root.join("build/xen"),
    };
    let header = tree.join(PATCHED_HEADER);
    if !header.is_file() {
        println!("cargo:rerun-if-changed={}", header.display());
        return Err(format!(
            "patched Xen tree not found at {}: run 'make xen-src' first (or set {TREE_ENV})",
            tree.display()
        ));
    }
    tree.canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", tree.display()))
}

/// Finds the libraries, checks versions, emits link flags; returns the
/// header directories pkg-config reports (usually none: /usr/include is the
/// compiler's default).
fn probe_libraries() -> Result<Vec<PathBuf>, String> {
    let mut include_paths = Vec::new();
    for (name, range, what) in LIBRARIES {
        let library = pkg_config::Config::new()
            .range_version(range.clone())
            .probe(name)
            .map_err(|e| {
                format!(
                    "pkg-config: need {what} ('{name}' in [{}, {})): {}; install libxen-dev 4.17",
                    range.start,
                    range.end,
                    pkg_config_reason(&e)
                )
            })?;
        for path in library.include_paths {
            if !include_paths.contains(&path) {
                include_paths.push(path);
            }
        }
    }
    Ok(include_paths)
}

/// The gist of a pkg-config failure, on one line.
fn pkg_config_reason(error: &pkg_config::Error) -> String {
    let stderr = match error {
        pkg_config::Error::Failure { output, .. }
        | pkg_config::Error::ProbeFailure { output, .. } => {
            String::from_utf8_lossy(&output.stderr).into_owned()
        }
        pkg_config::Error::Command { command, cause } => {
            return format!("cannot run {command}: {cause}");
        }
        other => other.to_string(),
    };
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // Prefer the line with the version found: "Package 'x' has version
    // '4.16.0', required version is '>= 4.17'" or "Requested 'x < 4.18' but
    // version of X is 4.18.0"; else "Package x was not found in the
    // pkg-config search path."
    lines
        .iter()
        .find(|l| l.contains("has version") || l.starts_with("Requested"))
        .or_else(|| lines.first())
        .map_or("pkg-config failed", |l| l.trim_end_matches('.'))
        .to_owned()
}

/// `$OUT_DIR/include/xen` -> `<tree>/xen/include/public`.
fn link_public_headers(include_dir: &Path, public: &Path) -> Result<(), String> {
    fs::create_dir_all(include_dir)
        .map_err(|e| format!("cannot create {}: {e}", include_dir.display()))?;
    let link = include_dir.join("xen");
    match fs::symlink_metadata(&link) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(&link),
        Ok(_) => fs::remove_file(&link),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e| format!("cannot replace {}: {e}", link.display()))?;
    std::os::unix::fs::symlink(public, &link).map_err(|e| {
        format!(
            "cannot link {} -> {}: {e}",
            link.display(),
            public.display()
        )
    })
}

/// Records every header bindgen reads (for `rerun-if-changed`), reports the
/// environment variables it reads, and picks the Rust type of each
/// allowlisted integer macro (`abi` only).
#[derive(Debug)]
struct Callbacks {
    included: Rc<RefCell<BTreeSet<PathBuf>>>,
    abi_types: bool,
}

impl Callbacks {
    fn new(abi_types: bool) -> (Box<Self>, Rc<RefCell<BTreeSet<PathBuf>>>) {
        let included = Rc::new(RefCell::new(BTreeSet::new()));
        let callbacks = Box::new(Self {
            included: Rc::clone(&included),
            abi_types,
        });
        (callbacks, included)
    }
}

impl ParseCallbacks for Callbacks {
    fn include_file(&self, filename: &str) {
        let path = Path::new(filename);
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        self.included.borrow_mut().insert(path);
    }

    fn read_env_var(&self, key: &str) {
        println!("cargo:rerun-if-env-changed={key}");
    }

    /// Each constant gets the type of the field or parameter it goes into.
    fn int_macro(&self, name: &str, _value: i64) -> Option<IntKind> {
        if !self.abi_types {
            // XENEVTCHN_NO_CLOEXEC, XENCALL_OPENFLAG_NON_REENTRANT: the
            // `unsigned int flags` of the open functions.
            return Some(IntKind::UInt);
        }
        let kind = if name.starts_with("XEN_MEM_EVENT_STATE_") {
            // xen_domctl_mem_event_ring.state is uint16_t.
            IntKind::U16
        } else if name.starts_with("XEN_MEM_EVENT_OOM_")
            || (name.starts_with("XEN_MEM_EVENT_INVALIDATE_")
                && !name.starts_with("XEN_MEM_EVENT_INVALIDATE_F_"))
        {
            // The `reason` of sync requests and async records: uint16_t.
            IntKind::U16
        } else if name == "XEN_MEM_EVENT_RECORD_SIZE" || name == "XEN_MEM_EVENT_FRAME_SIZE" {
            // Sizes in bytes, used with size_of and pointer arithmetic.
            IntKind::Custom {
                name: "usize",
                is_signed: false,
            }
        } else {
            // Everything else goes into a uint32_t field (cmd, op, type,
            // flags, nr_frames, version, ...) or an `unsigned int`
            // parameter (hypercall number, resource type and id).
            IntKind::U32
        };
        Some(kind)
    }
}

/// Settings common to every bindgen run.
fn builder(manifest_dir: &Path, wrapper: &str) -> Result<Builder, String> {
    let rust_target = RustTarget::stable(80, 0).map_err(|e| format!("bindgen: {e}"))?;
    Ok(Builder::default()
        .header(
            manifest_dir
                .join("wrapper")
                .join(wrapper)
                .display()
                .to_string(),
        )
        .clang_arg("-D__XEN_TOOLS__=1")
        // Plain /* */ comments of the headers become rustdoc.
        .clang_arg("-fparse-all-comments")
        .rust_target(rust_target)
        .rust_edition(RustEdition::Edition2021)
        // The crate is no_std: core::ffi types.
        .use_core()
        .layout_tests(true)
        .derive_default(true)
        .derive_partialeq(true)
        .derive_eq(true)
        // No impl_debug: bindgen 0.73's generated Debug silently drops every
        // field whose C type is a <stdint.h> typedef (cmd, domain, ...), a
        // misleading impl; types holding a union simply have no Debug.
        .wrap_unsafe_ops(true)
        .merge_extern_blocks(true)
        .prepend_enum_name(false))
}

fn emit_rerun(included: &BTreeSet<PathBuf>) {
    for path in included {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// The `abi` module: the patched public headers.
fn generate_abi(manifest_dir: &Path, include_dir: &Path, public: &Path) -> Result<String, String> {
    let (callbacks, included) = Callbacks::new(true);
    let bindings = builder(manifest_dir, "abi.h")?
        .clang_arg(format!("-I{}", include_dir.display()))
        .parse_callbacks(callbacks)
        .allowlist_type("xen_domctl")
        .allowlist_type("xen_domctl_mem_event_ring(_t)?")
        .allowlist_type("xen_mem_event_.*")
        .allowlist_type("domid_t")
        .allowlist_type("evtchn_port_t")
        .allowlist_var("XEN_MEM_EVENT_.*")
        .allowlist_var("XEN_DOMCTL_(mem_event_ring|INTERFACE_VERSION)")
        .allowlist_var("XENMEM_resource_.*")
        .allowlist_var("__HYPERVISOR_domctl")
        // Domain state for the tools (getdomaininfo flags, crash).
        .allowlist_var("XEN_DOMINF_.*")
        .allowlist_var("SHUTDOWN_crash")
        .generate()
        .map_err(|e| format!("bindgen failed on the patched public headers: {e}"))?;

    let included = included.borrow();
    emit_rerun(&included);
    // The point of this module is the patched headers: make sure no
    // unpatched Xen header got in through the system include path.
    let mem_event = public.join("mem_event.h");
    if !included.contains(&mem_event) {
        return Err(format!(
            "{} was not read by bindgen (include path problem)",
            mem_event.display()
        ));
    }
    if let Some(stray) = included
        .iter()
        .find(|p| !p.starts_with(public) && p.components().any(|c| c.as_os_str() == "xen"))
    {
        return Err(format!(
            "unpatched Xen header {} was used for the abi module",
            stray.display()
        ));
    }
    Ok(bindings.to_string())
}

/// The `libs` module: the system headers of the libraries, minus every item
/// that `abi` already defines (imported from `abi` instead).
fn generate_libs(
    manifest_dir: &Path,
    include_paths: &[PathBuf],
    abi_items: &BTreeSet<String>,
) -> Result<String, String> {
    let (callbacks, included) = Callbacks::new(false);
    let mut builder = builder(manifest_dir, "libs.h")?
        .clang_args(include_paths.iter().map(|p| format!("-I{}", p.display())))
        .parse_callbacks(callbacks)
        // libxenctrl: just enough to find and size a domain.
        .allowlist_function("xc_interface_(open|close)")
        .allowlist_function("xc_domain_(getinfo|getinfolist|setmaxmem|pause|unpause|shutdown)")
        // The pager's --reserve: the host's free memory.
        .allowlist_function("xc_physinfo")
        .allowlist_type("xc_dominfo_t|xc_domaininfo_t")
        .allowlist_type("xc_open_flags")
        // libxenctrl: memory sharing (the sharing daemon, xen::memshr).
        .allowlist_function(
            "xc_memshr_(control|nominate_gfn|share_gfns)|xc_sharing_(freed_pages|used_frames)",
        )
        .allowlist_function("xc_domain_maximum_gpfn")
        // libxenevtchn
        .allowlist_function(
            "xenevtchn_(open|close|fd|bind_interdomain|unbind|notify|pending|unmask)",
        )
        .allowlist_type("xenevtchn_port_or_error_t")
        .allowlist_var("XENEVTCHN_NO_CLOEXEC")
        // libxenforeignmemory
        .allowlist_function("xenforeignmemory_(open|close|map|unmap|map_resource|unmap_resource)")
        // libxencall: the domctl goes through here (see the crate docs).
        .allowlist_function("xencall_(open|close|alloc_buffer|free_buffer)")
        .allowlist_function("xencall[0-5]")
        .allowlist_var("XENCALL_OPENFLAG_NON_REENTRANT")
        // libxenstore: watches for domains appearing and going
        // (@introduceDomain, @releaseDomain).
        .allowlist_function("xs_(open|close|fileno|watch|unwatch|check_watch)")
        .allowlist_type("xs_watch_type")
        // libxentoollog
        .allowlist_function(
            "xtl_(createlogger_stdiostream|stdiostream_set_minlevel|logger_destroy)",
        )
        .allowlist_type("xentoollog_level")
        // A vtable of function pointers: comparing it means nothing.
        .no_partialeq("xentoollog_logger")
        // stdio's FILE only travels by pointer: keep it opaque.
        .blocklist_type("FILE|_IO_.*|__off(64)?_t")
        .raw_line(
            "/// C's `FILE` (opaque: only ever passed by pointer; cast a `libc::FILE` pointer).",
        )
        .raw_line("pub type FILE = _IO_FILE;")
        .raw_line("/// glibc's `struct _IO_FILE`, opaque.")
        .raw_line("#[repr(C)]")
        .raw_line("#[derive(Debug)]")
        .raw_line("pub struct _IO_FILE {")
        .raw_line("    _unused: [u8; 0],")
        .raw_line("}")
        .raw_line("#[allow(unused_imports)]")
        .raw_line("use super::abi::*;");
    for name in abi_items.iter().filter(|n| !n.starts_with("_bindgen_")) {
        builder = builder.blocklist_item(regex_escape(name));
    }
    let bindings = builder
        .generate()
        .map_err(|e| format!("bindgen failed on the system Xen library headers: {e}"))?;
    emit_rerun(&included.borrow());
    Ok(bindings.to_string())
}

/// `struct xen_domctl` as the UNPATCHED system header has it, as an opaque
/// blob of the right size and alignment (test reference only).
fn generate_system_domctl(
    manifest_dir: &Path,
    include_paths: &[PathBuf],
) -> Result<String, String> {
    let bindings = builder(manifest_dir, "libs.h")?
        .clang_args(include_paths.iter().map(|p| format!("-I{}", p.display())))
        .allowlist_type("xen_domctl")
        .opaque_type("xen_domctl")
        .allowlist_recursively(false)
        // bindgen still emits the (now dangling) anonymous union: drop it.
        .blocklist_type("xen_domctl__.*")
        .generate()
        .map_err(|e| format!("bindgen failed on the system xen/domctl.h: {e}"))?;
    Ok(bindings.to_string())
}

/// Names of the top-level items of generated code.
fn item_names(code: &str) -> BTreeSet<String> {
    const KINDS: &[&str] = &[
        "pub struct ",
        "pub union ",
        "pub type ",
        "pub const ",
        "pub fn ",
    ];
    code.lines()
        .filter_map(|line| {
            let rest = KINDS.iter().find_map(|k| line.strip_prefix(k))?;
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

fn regex_escape(name: &str) -> String {
    // Item names are C identifiers: nothing to escape but to be safe.
    name.chars()
        .flat_map(|c| {
            let escape = !(c.is_ascii_alphanumeric() || c == '_');
            escape.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
