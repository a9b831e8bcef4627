/*
 * The hypervisor side of the harness: what xen/common/mem_event.c does
 * around the ring core (lock, vCPU pause bookkeeping, the response loop),
 * in userspace.  The ring core itself, xen/common/mem_event_ring.c of the
 * patched tree, is compiled unchanged next to this file.
 */
#include <sched.h>
#include <stdlib.h>
#include <xen/mem_event_ring.h>

/*
 * The ring's spinlock, at the cost of x86 Xen's spin_lock()
 * (xen/common/spinlock.c): one locked instruction to take it, a plain
 * release store to drop it.  A pthread mutex would cost every post a second
 * locked instruction Xen does not pay.  Unlike Xen's ticket lock it is not
 * fair, and a waiter yields after a while: here threads are preempted (the
 * benchmarks run more of them than there are CPUs), and a fair lock would
 * hand itself to a waiter that is not running.
 */
struct hv_lock {
    uint32_t locked;
};

static void hv_lock(struct hv_lock *l)
{
    unsigned int spins = 0;

    while ( __atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE) )
        while ( __atomic_load_n(&l->locked, __ATOMIC_RELAXED) )
        {
            if ( ++spins < 1024 )
            {
#if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
#endif
            }
            else
                sched_yield();
        }
}

static void hv_unlock(struct hv_lock *l)
{
    __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE);
}

struct hv_ring {
    struct hv_lock lock;
    struct mem_event_ring_core core;
    void *mem;
    size_t len;
    uint64_t *outstanding;
    unsigned int max_vcpus;
    unsigned int *pause_count;   /* emulated vcpu->pause_count */
};

struct hv_stats {
    uint64_t produced, consumed, lost, bad_responses, notifications;
    uint32_t paused, broken;
    uint32_t req_prod, rsp_cons;
    uint32_t parked, detached;
};

int hv_sanitized(void)
{
#if defined(__SANITIZE_ADDRESS__)
    return 1;
#else
    return 0;
#endif
}

unsigned int hv_total_frames(unsigned int type, unsigned int nr_frames)
{
    return mem_event_ring_total_frames(type, nr_frames);
}

struct hv_ring *hv_ring_new(unsigned int type, unsigned int nr_frames,
                            unsigned int max_vcpus, uint16_t domid,
                            uint32_t batch, uint16_t consumer,
                            uint64_t token, int *err)
{
    unsigned int total = mem_event_ring_total_frames(type, nr_frames);
    struct mem_event_ring_params p = {
        .type = type,
        .nr_frames = nr_frames,
        .max_vcpus = max_vcpus,
        .domid = domid,
        .consumer = consumer,
        .batch = batch,
        .token = token,
    };
    struct hv_ring *r;
    int rc;

    *err = -EINVAL;
    if ( !total )
        return NULL;

    *err = -ENOMEM;
    r = calloc(1, sizeof(*r));
    if ( !r )
        return NULL;
    r->len = (size_t)total * XEN_MEM_EVENT_FRAME_SIZE;
    if ( posix_memalign(&r->mem, XEN_MEM_EVENT_FRAME_SIZE, r->len) )
        goto fail;
    memset(r->mem, 0, r->len);
    r->max_vcpus = max_vcpus;
    r->outstanding = calloc(max_vcpus ? max_vcpus : 1, sizeof(uint64_t));
    r->pause_count = calloc(max_vcpus ? max_vcpus : 1, sizeof(unsigned int));
    if ( !r->outstanding || !r->pause_count )
        goto fail;

    rc = mem_event_ring_init(&r->core, r->mem, &p,
                             mem_event_ring_type_sync(type) ? r->outstanding
                                                            : NULL);
    if ( rc )
    {
        *err = rc;
        goto fail;
    }
    *err = 0;
    return r;

 fail:
    free(r->mem);
    free(r->outstanding);
    free(r->pause_count);
    free(r);
    return NULL;
}

void hv_ring_free(struct hv_ring *r)
{
    if ( !r )
        return;
    free(r->mem);
    free(r->outstanding);
    free(r->pause_count);
    free(r);
}

void *hv_ring_base(struct hv_ring *r) { return r->mem; }
size_t hv_ring_len(struct hv_ring *r) { return r->len; }

/*
 * mem_event_sharing_oom(): post, and pause the vCPU if it is our own, also
 * when it is parked (-EAGAIN).
 */
int hv_ring_raise_oom(struct hv_ring *r, unsigned int vcpu, int foreign,
                      uint64_t gfn, uint16_t domid, uint64_t *id)
{
    int rc;

    hv_lock(&r->lock);
    rc = mem_event_ring_put_sync(&r->core, vcpu, foreign, gfn, domid,
                                 XEN_MEM_EVENT_OOM_UNSHARE, id);
    if ( (!rc || rc == -EAGAIN) && !foreign )
        r->pause_count[vcpu]++;
    hv_unlock(&r->lock);

    return rc;
}

/* mem_event_sharing_invalidate(): returns whether to notify. */
int hv_ring_put_async(struct hv_ring *r, uint64_t handle, uint64_t gfn,
                      uint16_t domid, uint16_t reason, uint32_t flags)
{
    bool notify;

    hv_lock(&r->lock);
    notify = mem_event_ring_put_async(&r->core, handle, gfn, domid, reason,
                                      flags);
    hv_unlock(&r->lock);

    return notify;
}

/* mem_event_sharing_invalidate_batch(): returns whether to notify. */
int hv_ring_put_async_batch(struct hv_ring *r,
                            const struct xen_mem_event_async_rec *recs,
                            unsigned int nr)
{
    bool notify;

    hv_lock(&r->lock);
    notify = mem_event_ring_put_async_batch(&r->core, recs, nr);
    hv_unlock(&r->lock);

    return notify;
}

/*
 * ring_resume(): what the event channel notification does.  Unpaused vCPU
 * ids (answered, then unparked) go to @unpaused (room for @max), their
 * number is returned.
 */
int hv_ring_resume(struct hv_ring *r, unsigned int *unpaused,
                   unsigned int max)
{
    unsigned int budget, vcpu, n = 0;

    hv_lock(&r->lock);
    mem_event_ring_update_cons(&r->core);
    if ( r->core.sync )
        for ( budget = r->core.nr_slots; budget; budget-- )
        {
            int rc = mem_event_ring_get_response(&r->core, &vcpu);

            if ( rc == 0 || rc == -EIO )
                break;
            if ( rc == 1 )
            {
                /* vcpu < max_vcpus is the ring core's guarantee. */
                r->pause_count[vcpu]--;
                if ( n < max )
                    unpaused[n] = vcpu;
                n++;
            }
        }
    for ( vcpu = 0; r->core.parked && vcpu < r->core.max_vcpus; vcpu++ )
        if ( mem_event_ring_unpark(&r->core, vcpu) )
        {
            r->pause_count[vcpu]--;
            if ( n < max )
                unpaused[n] = vcpu;
            n++;
        }
    hv_unlock(&r->lock);

    return n;
}

/* ring_destroy(): detach, release every vCPU the ring paused or parked. */
unsigned int hv_ring_teardown(struct hv_ring *r)
{
    unsigned int i, n = 0;

    hv_lock(&r->lock);
    mem_event_ring_detach(&r->core);
    for ( i = 0; r->core.sync && i < r->core.max_vcpus; i++ )
        if ( mem_event_ring_cancel(&r->core, i) )
        {
            r->pause_count[i]--;
            n++;
        }
    hv_unlock(&r->lock);

    return n;
}

unsigned int hv_vcpu_pause_count(struct hv_ring *r, unsigned int vcpu)
{
    unsigned int c;

    if ( vcpu >= r->max_vcpus )
        return 0;
    hv_lock(&r->lock);
    c = r->pause_count[vcpu];
    hv_unlock(&r->lock);

    return c;
}

/* ring_get_info(): async rings look at the consumer index first. */
void hv_ring_stats(struct hv_ring *r, struct hv_stats *s)
{
    hv_lock(&r->lock);
    if ( !r->core.sync )
        mem_event_ring_update_cons(&r->core);
    s->produced = r->core.stats.produced;
    s->consumed = r->core.stats.consumed;
    s->lost = r->core.stats.lost;
    s->bad_responses = r->core.stats.bad_responses;
    s->notifications = r->core.stats.notifications;
    s->paused = r->core.paused;
    s->parked = r->core.parked;
    s->broken = r->core.broken;
    s->detached = r->core.detached;
    s->req_prod = r->core.req_prod;
    s->rsp_cons = r->core.rsp_cons;
    hv_unlock(&r->lock);
}

/* mem_event_acquire_resource()'s check: only the consumer maps. */
int hv_ring_may_map(struct hv_ring *r, uint16_t caller)
{
    return mem_event_ring_may_map(&r->core, caller);
}

/* UNREGISTER's and RESUME's check of the owner token. */
int hv_ring_owns(struct hv_ring *r, uint64_t token)
{
    return mem_event_ring_owns(&r->core, token);
}

/*
 * Start all indices at @start instead of 0, to exercise wraparound.  Only
 * valid on a fresh ring; the consumer reads the shared indices.
 */
void hv_ring_set_start(struct hv_ring *r, uint32_t start)
{
    hv_lock(&r->lock);
    r->core.req_prod = r->core.req_cons = r->core.rsp_cons = start;
    r->core.page->req_prod = r->core.page->req_cons = start;
    r->core.page->rsp_prod = r->core.page->rsp_cons = start;
    r->core.page->req_event += start;
    hv_unlock(&r->lock);
}
