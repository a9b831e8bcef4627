/* Harness stand-in for the hypervisor's <xen/errno.h>. */
#ifndef HARNESS_XEN_ERRNO_H
#define HARNESS_XEN_ERRNO_H
#include <errno.h>
#endif
