/* Harness stand-in for the hypervisor's <xen/lib.h>: what the ring code uses. */
#ifndef HARNESS_XEN_LIB_H
#define HARNESS_XEN_LIB_H
#define ACCESS_ONCE(x) (*(volatile __typeof__(x) *)&(x))
#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define BUILD_BUG_ON(cond) _Static_assert(!(cond), #cond)
#endif
