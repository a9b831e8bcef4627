/* Harness stand-in for the hypervisor's <xen/string.h>. */
#ifndef HARNESS_XEN_STRING_H
#define HARNESS_XEN_STRING_H
#include <string.h>
#endif
