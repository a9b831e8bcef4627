/*
 * Wrapper for the `abi` module: the PATCHED Xen public headers.
 *
 * build.rs puts $OUT_DIR/include first on the include path, where
 * $OUT_DIR/include/xen is a symlink to <patched tree>/xen/include/public,
 * so <xen/...> below never resolves to the distribution's unpatched
 * /usr/include/xen (build.rs checks that too).
 */
#ifndef __XEN_TOOLS__
#define __XEN_TOOLS__ 1
#endif

/* The public headers expect the includer to provide the C99 integer types. */
#include <stdint.h>

#include <xen/xen.h>
#include <xen/domctl.h>
#include <xen/memory.h>
#include <xen/mem_event.h>
#include <xen/event_channel.h>
#include <xen/sched.h>
