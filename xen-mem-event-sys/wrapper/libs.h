/*
 * Wrapper for the `libs` module: the toolstack libraries' SYSTEM headers
 * (libxen-dev), exactly as the installed shared libraries were built.
 */
#ifndef __XEN_TOOLS__
#define __XEN_TOOLS__ 1
#endif

#include <xentoollog.h>
#include <xencall.h>
#include <xenevtchn.h>
#include <xenforeignmemory.h>
#include <xenctrl.h>
#include <xenstore.h>
