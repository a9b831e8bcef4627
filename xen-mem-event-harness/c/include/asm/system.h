/*
 * Harness stand-in for the hypervisor's barriers.  x86 Xen uses a locked
 * instruction for smp_mb() and compiler barriers for smp_rmb()/smp_wmb()
 * (TSO); the C11 fences below are at least as strong on every architecture.
 */
#ifndef HARNESS_ASM_SYSTEM_H
#define HARNESS_ASM_SYSTEM_H
#define smp_mb()  __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define smp_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define smp_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)
#endif
