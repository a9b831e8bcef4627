/*
 * libFuzzer target: a hostile consumer against the hypervisor's ring core.
 *
 * xen/common/mem_event_ring.c of the patched tree is compiled unchanged next
 * to this file (scripts/fuzz.sh), with the harness's stand-in headers
 * (xen-mem-event-harness/c/include).  The input is decoded as one ring (sync
 * or async, 1 or 2 frames per array, max_vcpus, batch, starting index,
 * token) and a sequence of operations.  Producer operations are what
 * xen/common/mem_event.c does around the core, under its lock: a vCPU's
 * fault or a foreign access (put_sync, pausing the vCPU on 0 and -EAGAIN),
 * an async record (put_async) or a batch of them (put_async_batch: one
 * publication, req_cons validated against what was published before it),
 * the consumer's notification (update_cons,
 * the response loop bounded by nr_slots, the unpark loop), GET_INFO
 * (update_cons), teardown (detach, cancel every vCPU).  Consumer operations
 * write what a consumer can write: req_cons, req_event, rsp_prod, response
 * records (real ids, retired ids, garbage, bad vcpu_id/flags/padding), and
 * raw bytes anywhere in the mapping.
 *
 * A shadow model, built from the API comments of xen/mem_event_ring.h and
 * the ABI text of public/mem_event.h, is checked after every operation:
 *
 *  - the mapping is exactly what the model expects, byte for byte: Xen
 *    writes only the request/record it posts, req_prod, lost, flags,
 *    rsp_cons, and (on detach) the scrubbed arrays; it never writes a
 *    consumer field; the mapping has guard pages on both sides and the
 *    outstanding[] array is an exact-size heap block (ASan);
 *  - return values are the documented ones for the state (-EEXIST iff
 *    paused, -EAGAIN iff no free slot or broken/detached, -EBUSY iff no
 *    more than max_vcpus free, async loss iff full/broken/detached, a
 *    notification iff req_prod reaches req_event);
 *  - an impossible req_cons or rsp_prod marks the ring broken, a possible
 *    one never does;
 *  - a response is accepted iff it names an outstanding id of the vCPU it
 *    names with zero flags and padding, and then unpauses exactly that vCPU;
 *    a vCPU's pause count is only ever 0 or 1: paused on post or park,
 *    released once, by its own answer, unpark or cancel; after teardown
 *    every vCPU is released;
 *  - ids are non-zero, never the parked marker, have bits above the vCPU
 *    id, and are unique;
 *  - statistics: produced = consumed + in flight, lost = attempts - posted
 *    (async), every record's seq = attempts before it, paused/parked =
 *    vCPUs in that state, bad_responses and notifications exact;
 *  - the never-lost promise: while the consumer follows the protocol (it
 *    answers only requests it has consumed, and the ring is neither broken
 *    nor detached) a vCPU's request is never refused.
 *
 * Any violation prints a line and aborts (libFuzzer saves the input).
 * FUZZ_TRACE=1 in the environment prints every operation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <xen/mem_event_ring.h>

#define FRAME     XEN_MEM_EVENT_FRAME_SIZE
#define REC       XEN_MEM_EVENT_RECORD_SIZE
#define MAX_FRAMES_FUZZED 2
#define MAX_TOTAL (1 + 2 * MAX_FRAMES_FUZZED)
#define MAX_IDS   8192          /* ids issued per input: at most one per byte */

enum vstate { RUNNING, PAUSED, PARKED };

/* ---------------------------------------------------------------- input */

static const uint8_t *in_p;
static size_t in_n;

static int more(void) { return in_n > 0; }

static uint8_t u8(void)
{
    if ( !in_n )
        return 0;
    in_n--;
    return *in_p++;
}

static uint16_t u16(void) { uint16_t v = u8(); return v | (uint16_t)u8() << 8; }
static uint32_t u32(void) { uint32_t v = u16(); return v | (uint32_t)u16() << 16; }
static uint64_t u64(void) { uint64_t v = u32(); return v | (uint64_t)u32() << 32; }

/* ---------------------------------------------------------------- state */

static struct mapping {
    uint8_t *base;              /* ring: total frames, guard page either side */
    size_t len;
} maps[2][MAX_FRAMES_FUZZED + 1];

static uint8_t mirror[MAX_TOTAL * FRAME]; /* what the mapping must hold */

static struct {
    struct mem_event_ring_core core;
    uint8_t *base;
    size_t len;
    uint64_t *outstanding;      /* the core's, exact size */

    bool sync;
    unsigned int nr_slots, max_vcpus;
    uint16_t domid;
    uint64_t token;

    /* Xen's side as the model sees it. */
    uint32_t prod;              /* requests/records posted */
    uint32_t *published;        /* set while a batch is being posted: the
                                 * req_prod the consumer can have seen */
    uint32_t cons;              /* last req_cons Xen accepted */
    uint32_t rsp_cons;
    uint32_t flags;
    bool broken, detached, torn_down;
    uint64_t produced, consumed, lost, bad, notifications;
    uint64_t attempts;          /* async: records attempted */
    uint64_t posted_own, answered, cancelled_paused;

    /* Per vCPU. */
    enum vstate *state;
    uint64_t *id;               /* outstanding id when PAUSED */
    uint32_t *idx;              /* ring index of that request */
    unsigned int *pause_count;  /* emulated vcpu->pause_count */

    /* Every id issued (for answers to retired ids), and a set of them. */
    uint64_t issued[MAX_IDS];
    unsigned int nr_issued;
    uint64_t idset[2 * MAX_IDS];

    /* The consumer follows the protocol (answers only what it consumed). */
    bool faithful;
    unsigned int op;
} m;

static int trace;

#define TRACE(...) do { if ( trace ) fprintf(stderr, __VA_ARGS__); } while ( 0 )

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if ( !(cond) )                                                     \
        {                                                                  \
            fprintf(stderr, "ring_fuzz: invariant violated at op %u: ",    \
                    m.op);                                                 \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, " [%s]\n", #cond);                             \
            abort();                                                       \
        }                                                                  \
    } while ( 0 )

static struct xen_mem_event_ring_page *page(void)
{
    return (struct xen_mem_event_ring_page *)m.base;
}

static struct xen_mem_event_ring_page *mpage(void)
{
    return (struct xen_mem_event_ring_page *)mirror;
}

static size_t array_bytes(void) { return (size_t)m.nr_slots * REC; }
static size_t req_off(uint32_t i) { return FRAME + (i & (m.nr_slots - 1)) * REC; }
static size_t rsp_off(uint32_t i)
{
    return FRAME + array_bytes() + (i & (m.nr_slots - 1)) * REC;
}

/* In the ring: unconsumed as far as Xen knows. */
static bool in_flight(uint32_t i)
{
    return (uint32_t)(i - m.cons) < (uint32_t)(m.prod - m.cons);
}

/* --------------------------------------------------------- the mapping */

static struct mapping *mapping_for(bool sync, unsigned int nr_frames)
{
    struct mapping *mp = &maps[sync][nr_frames];
    unsigned int type = sync ? XEN_MEM_EVENT_TYPE_SHARING_OOM
                             : XEN_MEM_EVENT_TYPE_SHARING_INVALIDATE;

    if ( !mp->base )
    {
        uint8_t *p;

        mp->len = (size_t)mem_event_ring_total_frames(type, nr_frames) * FRAME;
        if ( !mp->len || mp->len > sizeof(mirror) )
            abort();
        p = mmap(NULL, mp->len + 2 * FRAME, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if ( p == MAP_FAILED ||
             mprotect(p + FRAME, mp->len, PROT_READ | PROT_WRITE) )
            abort();
        mp->base = p + FRAME;
    }

    return mp;
}

/* Everything Xen and the consumer wrote matches the model. */
static void check_mapping(const char *what)
{
    size_t i;

    if ( !memcmp(m.base, mirror, m.len) )
        return;
    for ( i = 0; i < m.len && m.base[i] == mirror[i]; i++ )
        ;
    CHECK(0, "%s: mapping differs from the model at offset %#zx "
          "(is %#x, expected %#x)", what, i, m.base[i], mirror[i]);
}

/* The consumer writes @n bytes at @off (of the ring and the model). */
static void consumer_write(size_t off, const void *src, size_t n)
{
    if ( off >= m.len )
        return;
    if ( n > m.len - off )
        n = m.len - off;
    memcpy(m.base + off, src, n);
    memcpy(mirror + off, src, n);
}

static void consumer_write32(size_t off, uint32_t v)
{
    consumer_write(off, &v, sizeof(v));
}

#define PAGE_OFF(field) offsetof(struct xen_mem_event_ring_page, field)

static uint32_t shared_req_cons(void) { return page()->req_cons; }
static uint32_t shared_req_event(void) { return page()->req_event; }
static uint32_t shared_rsp_prod(void) { return page()->rsp_prod; }

/* ------------------------------------------------------------- the model */

static void check_state(void)
{
    const struct mem_event_ring_core *r = &m.core;
    unsigned int v, paused = 0, parked = 0;

    CHECK(r->req_prod == m.prod, "req_prod %u, model %u", r->req_prod, m.prod);
    CHECK(r->req_cons == m.cons, "req_cons %u, model %u", r->req_cons, m.cons);
    CHECK(r->broken == m.broken, "broken %d, model %d", r->broken, m.broken);
    CHECK(r->detached == m.detached, "detached %d, model %d", r->detached,
          m.detached);
    CHECK(r->stats.produced == m.produced, "produced %lu, model %lu",
          (unsigned long)r->stats.produced, (unsigned long)m.produced);
    CHECK(r->stats.consumed == m.consumed, "consumed %lu, model %lu",
          (unsigned long)r->stats.consumed, (unsigned long)m.consumed);
    CHECK(r->stats.lost == m.lost, "lost %lu, model %lu",
          (unsigned long)r->stats.lost, (unsigned long)m.lost);
    CHECK(r->stats.bad_responses == m.bad, "bad_responses %lu, model %lu",
          (unsigned long)r->stats.bad_responses, (unsigned long)m.bad);
    CHECK(r->stats.notifications == m.notifications,
          "notifications %lu, model %lu",
          (unsigned long)r->stats.notifications,
          (unsigned long)m.notifications);
    /* In flight never exceeds the ring. */
    CHECK((uint32_t)(m.prod - m.cons) <= m.nr_slots, "%u in flight",
          m.prod - m.cons);

    if ( !m.sync )
    {
        /* produced = consumed + in flight; lost = attempted - posted. */
        CHECK(m.produced == m.consumed + (uint32_t)(m.prod - m.cons),
              "async: produced %lu != consumed %lu + in flight %u",
              (unsigned long)m.produced, (unsigned long)m.consumed,
              m.prod - m.cons);
        CHECK(m.lost == m.attempts - m.produced,
              "async: lost %lu != attempts %lu - posted %lu",
              (unsigned long)m.lost, (unsigned long)m.attempts,
              (unsigned long)m.produced);
        return;
    }

    CHECK(r->rsp_cons == m.rsp_cons, "rsp_cons %u, model %u", r->rsp_cons,
          m.rsp_cons);
    for ( v = 0; v < m.max_vcpus; v++ )
    {
        uint64_t want = m.state[v] == PAUSED ? m.id[v]
                      : m.state[v] == PARKED ? MEM_EVENT_RING_PARKED : 0;

        CHECK(m.pause_count[v] == (m.state[v] != RUNNING),
              "vCPU %u pause count %u in state %d", v, m.pause_count[v],
              m.state[v]);
        CHECK(m.outstanding[v] == want, "vCPU %u outstanding %#lx, model %#lx",
              v, (unsigned long)m.outstanding[v], (unsigned long)want);
        paused += m.state[v] == PAUSED;
        parked += m.state[v] == PARKED;
    }
    CHECK(r->paused == paused, "paused %u, model %u", r->paused, paused);
    CHECK(r->parked == parked, "parked %u, model %u", r->parked, parked);
    /* Every own request is answered, cancelled or still outstanding. */
    CHECK(m.posted_own == m.answered + m.cancelled_paused + paused,
          "sync: %lu own requests != %lu answered + %lu cancelled + %u "
          "outstanding", (unsigned long)m.posted_own,
          (unsigned long)m.answered, (unsigned long)m.cancelled_paused, paused);
    CHECK(m.consumed == m.answered, "sync: consumed != answered");
}

/* A valid index changes the model's req_cons; an impossible one breaks. */
static bool model_read_cons(uint32_t seen)
{
    uint32_t prod = m.published ? *m.published : m.prod;

    if ( m.broken || m.detached )
        return false;
    if ( (uint32_t)(seen - m.cons) > (uint32_t)(prod - m.cons) )
    {
        m.broken = true;
        m.flags |= XEN_MEM_EVENT_RING_F_BROKEN;
        mpage()->flags = m.flags;
        return false;
    }
    if ( !m.sync )
        m.consumed += (uint32_t)(seen - m.cons);
    m.cons = seen;
    return true;
}

static void model_lost(void)
{
    m.lost++;
    mpage()->lost = m.lost;
}

static void model_push(const void *rec)
{
    memcpy(mirror + req_off(m.prod), rec, REC);
    m.prod++;
    mpage()->req_prod = m.prod;
    m.produced++;
}

static void remember_id(uint64_t id)
{
    size_t mask = 2 * MAX_IDS - 1, h = (size_t)(id * 0x9e3779b97f4a7c15ull) & mask;

    while ( m.idset[h] )
    {
        CHECK(m.idset[h] != id, "id %#lx issued twice", (unsigned long)id);
        h = (h + 1) & mask;
    }
    m.idset[h] = id;
    if ( m.nr_issued < MAX_IDS )
        m.issued[m.nr_issued++] = id;
}

/* -------------------------------------------------------- producer ops */

/* mem_event_sharing_oom() for vCPU @v (own) or a foreign vCPU. */
static void op_put_sync(unsigned int v, bool foreign, uint64_t gfn)
{
    uint32_t seen = shared_req_cons();
    uint64_t id = ~0ull;
    unsigned int free = 0;
    bool usable;
    int rc, want;

    rc = mem_event_ring_put_sync(&m.core, v, foreign, gfn, m.domid,
                                 XEN_MEM_EVENT_OOM_UNSHARE, &id);
    TRACE("op %u: put_sync(%s %u) = %d id %#lx\n", m.op,
          foreign ? "foreign" : "vcpu", v, rc, (unsigned long)id);

    if ( !foreign && v >= m.max_vcpus )
    {
        CHECK(rc == -EINVAL, "vCPU %u beyond max_vcpus: rc %d", v, rc);
        return;
    }
    if ( !foreign && m.state[v] != RUNNING )
    {
        /* Paused already: nothing happens (pause count unchanged). */
        CHECK(rc == -EEXIST, "vCPU %u paused already: rc %d", v, rc);
        return;
    }

    usable = model_read_cons(seen);
    if ( usable )
        free = m.nr_slots - (m.prod - m.cons);

    if ( foreign )
    {
        want = !usable ? -EIO : free <= m.max_vcpus ? -EBUSY : 0;
        CHECK(rc == want, "foreign request: rc %d, expected %d (free %u, "
              "max_vcpus %u)", rc, want, free, m.max_vcpus);
        if ( rc )
        {
            model_lost();
            return;
        }
        CHECK(id == 0, "foreign request got id %#lx", (unsigned long)id);
    }
    else
    {
        want = !free ? -EAGAIN : 0;
        CHECK(rc == want, "vCPU %u: rc %d, expected %d (free %u)", v, rc,
              want, free);
        /* The never-lost promise of the ABI. */
        CHECK(rc != -EAGAIN || m.broken || m.detached || !m.faithful,
              "vCPU %u refused although the consumer follows the protocol",
              v);
        /* Posted or parked: the caller pauses the vCPU. */
        CHECK(m.pause_count[v] == 0, "vCPU %u paused twice", v);
        m.pause_count[v]++;
        if ( rc == -EAGAIN )
        {
            m.state[v] = PARKED;
            model_lost();
            return;
        }
        CHECK(id != 0 && id != MEM_EVENT_RING_PARKED,
              "vCPU %u: id %#lx", v, (unsigned long)id);
        CHECK((id >> 16) != 0, "id %#lx has no bits above the vCPU id",
              (unsigned long)id);
        remember_id(id);
        m.state[v] = PAUSED;
        m.id[v] = id;
        m.idx[v] = m.prod;
        m.posted_own++;
    }

    {
        struct xen_mem_event_sync_req req = {
            .id = id,
            .gfn = gfn,
            .vcpu_id = v,
            .flags = foreign ? XEN_MEM_EVENT_REQ_FOREIGN
                             : XEN_MEM_EVENT_REQ_VCPU_PAUSED,
            .domid = m.domid,
            .reason = XEN_MEM_EVENT_OOM_UNSHARE,
        };

        model_push(&req);
    }
    /* Sync rings notify every request. */
    m.notifications++;
}

/*
 * May an async record be posted at the model's producer index @prod?  Xen
 * reads (and validates) req_cons only when its cached value says the ring
 * is full.
 */
static bool model_async_slot(uint32_t prod, uint32_t seen)
{
    if ( m.sync || m.broken || m.detached )
        return false;
    if ( prod - m.cons < m.nr_slots )
        return true;
    return model_read_cons(seen) && prod - m.cons < m.nr_slots;
}

/*
 * Account for records posted from @old to m.prod: the consumer is kicked
 * when req_prod moved from below req_event to req_event or beyond.
 */
static void model_check_notify(bool notify, uint32_t old, uint32_t event,
                               const char *what)
{
    bool want = (uint32_t)(m.prod - event) < (uint32_t)(m.prod - old);

    if ( want )
        m.notifications++;
    CHECK(notify == want, "%s: notify %d, expected %d (req_prod %u -> %u, "
          "req_event %u)", what, notify, want, old, m.prod, event);
}

/* The model's side of posting @rec (its seq is set here). */
static void model_post(struct xen_mem_event_async_rec *rec, uint32_t seen)
{
    rec->seq = m.attempts++;
    if ( model_async_slot(m.prod, seen) )
        /* The record's seq is the number of records attempted before it. */
        model_push(rec);
    else
        model_lost();
}

/* mem_event_sharing_invalidate(). */
static void op_put_async(uint64_t handle, uint64_t gfn, uint16_t reason,
                         uint32_t flags)
{
    uint32_t seen = shared_req_cons(), event = shared_req_event();
    uint32_t old = m.prod;
    struct xen_mem_event_async_rec rec = {
        .handle = handle,
        .gfn = gfn,
        .domid = m.domid,
        .reason = reason,
        .flags = flags,
    };
    bool notify;

    notify = mem_event_ring_put_async(&m.core, handle, gfn, m.domid, reason,
                                      flags);
    model_post(&rec, seen);
    TRACE("op %u: put_async seq %lu: %s, notify %d\n", m.op,
          (unsigned long)rec.seq, m.prod != old ? "posted" : "lost", notify);
    model_check_notify(notify, old, event, "put_async");
}

/* mem_event_sharing_invalidate_batch() of @n records. */
static void op_put_async_batch(unsigned int n)
{
    struct xen_mem_event_async_rec recs[128];
    uint32_t seen = shared_req_cons(), event = shared_req_event();
    uint32_t old = m.prod;
    unsigned int i;
    bool notify;

    for ( i = 0; i < n; i++ )
        recs[i] = (struct xen_mem_event_async_rec){
            .seq = u64(),          /* ignored: the ring assigns it */
            .handle = 0x1000 + i,
            .gfn = i,
            .domid = m.domid,
            .reason = 1 + (i & 1),
            .flags = i & 1,
        };
    notify = mem_event_ring_put_async_batch(&m.core, recs, n);
    /* req_cons is validated against what was published before the batch. */
    m.published = &old;
    for ( i = 0; i < n; i++ )
        model_post(&recs[i], seen);
    m.published = NULL;
    TRACE("op %u: put_async_batch of %u: %u posted, notify %d\n", m.op, n,
          m.prod - old, notify);
    model_check_notify(notify, old, event, "put_async_batch");
}

/* Does the response in slot @i unpause a vCPU (which)? */
static int valid_response(const struct xen_mem_event_sync_rsp *rsp)
{
    unsigned int v;

    if ( rsp->flags || rsp->_pad[0] || rsp->_pad[1] )
        return -1;
    for ( v = 0; v < m.max_vcpus; v++ )
        if ( m.state[v] == PAUSED && m.id[v] == rsp->id )
            return rsp->vcpu_id == v ? (int)v : -1;
    return -1;
}

static void release(unsigned int v, const char *why)
{
    CHECK(m.pause_count[v] == 1, "vCPU %u unpaused (%s) with pause count %u",
          v, why, m.pause_count[v]);
    m.pause_count[v]--;
    m.state[v] = RUNNING;
}

/* ring_resume(): the consumer's notification. */
static void op_notify(void)
{
    unsigned int budget, v;

    model_read_cons(shared_req_cons());
    mem_event_ring_update_cons(&m.core);
    TRACE("op %u: notify (req_cons %u, rsp_prod %u)\n", m.op, m.cons,
          shared_rsp_prod());

    for ( budget = m.sync ? m.nr_slots + 1 : 0; budget; budget-- )
    {
        uint32_t prod = shared_rsp_prod();
        struct xen_mem_event_sync_rsp rsp;
        int rc, want, who = -1;
        unsigned int vcpu = ~0U;

        if ( m.broken || m.detached )
            want = -EIO;
        else if ( (uint32_t)(prod - m.rsp_cons) > m.nr_slots )
        {
            want = -EIO;
            m.broken = true;
            m.flags |= XEN_MEM_EVENT_RING_F_BROKEN;
            mpage()->flags = m.flags;
        }
        else if ( prod == m.rsp_cons )
            want = 0;
        else
        {
            memcpy(&rsp, m.base + rsp_off(m.rsp_cons), sizeof(rsp));
            who = valid_response(&rsp);
            want = who >= 0 ? 1 : -EINVAL;
            m.rsp_cons++;
            mpage()->rsp_cons = m.rsp_cons;
        }

        rc = mem_event_ring_get_response(&m.core, &vcpu);
        TRACE("op %u:   get_response = %d vcpu %d\n", m.op, rc,
              rc == 1 ? (int)vcpu : -1);
        CHECK(rc == want, "get_response: rc %d, expected %d", rc, want);
        /* At most nr_slots responses are pending: the loop ends. */
        CHECK((rc != 1 && rc != -EINVAL) || budget > 1,
              "more than nr_slots responses");
        if ( rc == -EINVAL )
            m.bad++;
        if ( rc == 1 )
        {
            /* Only the vCPU whose outstanding id was answered. */
            CHECK(vcpu == (unsigned int)who, "response for vCPU %d "
                  "unpaused vCPU %u", who, vcpu);
            /* The protocol: answer only what was consumed. */
            if ( in_flight(m.idx[vcpu]) )
                m.faithful = false;
            release(vcpu, "response");
            m.answered++;
            m.consumed++;
        }
        if ( rc == 0 || rc == -EIO )
            break;
    }

    for ( v = 0; m.core.parked && v < m.max_vcpus; v++ )
    {
        bool want = m.state[v] == PARKED && !m.broken && !m.detached &&
                    m.prod - m.cons != m.nr_slots;
        bool got = mem_event_ring_unpark(&m.core, v);

        CHECK(got == want, "unpark(%u) = %d, expected %d", v, got, want);
        if ( got )
        {
            TRACE("op %u:   unpark %u\n", m.op, v);
            release(v, "unpark");
        }
    }
}

/* GET_INFO: async rings look at the consumer index. */
static void op_update_cons(void)
{
    bool want = model_read_cons(shared_req_cons());
    bool got = mem_event_ring_update_cons(&m.core);

    TRACE("op %u: update_cons = %d\n", m.op, got);
    CHECK(got == want, "update_cons = %d, expected %d", got, want);
}

static void cancel_all(void)
{
    unsigned int v;

    for ( v = 0; m.sync && v < m.max_vcpus; v++ )
    {
        bool want = m.state[v] != RUNNING;
        bool got = mem_event_ring_cancel(&m.core, v);

        CHECK(got == want, "cancel(%u) = %d, expected %d", v, got, want);
        if ( got )
        {
            if ( m.state[v] == PAUSED )
                m.cancelled_paused++;
            release(v, "cancel");
        }
    }
    for ( v = 0; m.sync && v < m.max_vcpus; v++ )
        CHECK(m.pause_count[v] == 0, "vCPU %u still paused after teardown", v);
    CHECK(m.core.paused == 0 && m.core.parked == 0,
          "paused %u parked %u after teardown", m.core.paused, m.core.parked);
}

/* ring_destroy(). */
static void op_teardown(void)
{
    TRACE("op %u: teardown%s\n", m.op, m.torn_down ? " (cancel only)" : "");
    if ( !m.torn_down )
    {
        mem_event_ring_detach(&m.core);
        m.detached = m.torn_down = true;
        /* The arrays are scrubbed, DETACHED is published. */
        memset(mirror + FRAME, 0, m.len - FRAME);
        m.flags |= XEN_MEM_EVENT_RING_F_DETACHED;
        mpage()->flags = m.flags;
    }
    cancel_all();
}

/* -------------------------------------------------------- consumer ops */

static void op_write_req_cons(void)
{
    uint8_t mode = u8();
    uint32_t cons = shared_req_cons(), k = u8();

    switch ( mode % 6 )
    {
    case 0: cons = m.prod; break;                           /* all */
    case 1:                                                 /* some */
        if ( k > (uint32_t)(m.prod - cons) )
            k = m.prod - cons;
        cons += k;
        break;
    case 2: cons = u32(); break;                            /* garbage */
    case 3: cons += k; break;                               /* maybe beyond */
    case 4: cons -= k; break;                               /* backwards */
    case 5: cons = m.prod + 1 + (k & 3); break;             /* just beyond */
    }
    TRACE("op %u: consumer req_cons = %u (prod %u)\n", m.op, cons, m.prod);
    consumer_write32(PAGE_OFF(req_cons), cons);
}

static void op_write_req_event(void)
{
    uint8_t mode = u8();
    uint32_t ev = 0, k = u8();

    switch ( mode % 4 )
    {
    case 0: ev = m.prod + 1 + k; break;
    case 1: ev = shared_req_cons() + k; break;
    case 2: ev = u32(); break;
    case 3: ev = m.prod - k; break;
    }
    TRACE("op %u: consumer req_event = %u\n", m.op, ev);
    consumer_write32(PAGE_OFF(req_event), ev);
}

static void op_write_rsp_prod(void)
{
    uint8_t mode = u8();
    uint32_t prod = shared_rsp_prod(), k = u8();

    switch ( mode % 4 )
    {
    case 0: prod += k % (m.nr_slots + 3); break;
    case 1: prod = u32(); break;
    case 2: prod -= 1 + (k & 3); break;
    case 3: prod = m.rsp_cons + m.nr_slots + (k & 3); break;
    }
    TRACE("op %u: consumer rsp_prod = %u\n", m.op, prod);
    consumer_write32(PAGE_OFF(rsp_prod), prod);
}

/* Pick an id the consumer could send. */
static uint64_t pick_id(uint8_t mode, uint32_t *vcpu)
{
    unsigned int v, i;

    switch ( mode % 5 )
    {
    case 0: case 1:                 /* an outstanding id: the right answer */
        v = u8() % m.max_vcpus;
        for ( i = 0; i < m.max_vcpus; i++ )
        {
            unsigned int w = (v + i) % m.max_vcpus;

            if ( m.state[w] == PAUSED )
            {
                *vcpu = w;
                return m.id[w];
            }
        }
        *vcpu = v;
        return 0;
    case 2:                         /* any id issued, maybe retired */
        if ( !m.nr_issued )
            return u64();
        i = u16() % m.nr_issued;
        *vcpu = m.issued[i] & 0xffff;
        return m.issued[i];
    case 3:                         /* garbage */
        *vcpu = u8();
        return u64();
    default:                        /* near an issued id, or small */
        *vcpu = u8();
        if ( m.nr_issued )
            return m.issued[m.nr_issued - 1] ^ (1ull << (u8() % 64));
        return u8();
    }
}

static void write_response(uint64_t id, uint32_t vcpu, uint8_t corrupt,
                           bool publish)
{
    struct xen_mem_event_sync_rsp rsp = { .id = id, .vcpu_id = vcpu };
    uint32_t prod = shared_rsp_prod();

    if ( corrupt & 1 )
        rsp.vcpu_id ^= 1U << (u8() % 32);
    if ( corrupt & 2 )
        rsp.flags = 1U << (u8() % 32);
    if ( corrupt & 4 )
        rsp._pad[u8() & 1] = 1ull << (u8() % 64);
    TRACE("op %u: consumer response id %#lx vcpu %u flags %#x pad %lx/%lx "
          "at %u%s\n", m.op, (unsigned long)rsp.id, rsp.vcpu_id, rsp.flags,
          (unsigned long)rsp._pad[0], (unsigned long)rsp._pad[1], prod,
          publish ? "" : " (unpublished)");
    consumer_write(rsp_off(prod), &rsp, sizeof(rsp));
    if ( publish )
        consumer_write32(PAGE_OFF(rsp_prod), prod + 1);
}

static void op_respond(void)
{
    uint8_t mode = u8(), corrupt = u8();
    uint32_t vcpu = 0;
    uint64_t id;

    if ( !m.sync )
        return;
    id = pick_id(mode, &vcpu);
    /* Mostly clean answers: corrupt only with the top bits set. */
    write_response(id, vcpu, corrupt >= 0xc0 ? corrupt : 0, !(corrupt & 8) ||
                   corrupt < 0xc0);
}

/*
 * A well-behaved consumer's turn: consume some requests, answer some of the
 * consumed ones (in an order of the input's choosing), notify.
 */
static void op_consumer_step(void)
{
    uint32_t cons = shared_req_cons(), k = u8(), n = u8(), rot = u8();
    unsigned int i, answered = 0;

    if ( (uint32_t)(m.prod - cons) <= m.nr_slots )
    {
        if ( k == 0 || k > (uint32_t)(m.prod - cons) )
            k = m.prod - cons;
        cons += k;
        consumer_write32(PAGE_OFF(req_cons), cons);
    }
    TRACE("op %u: consumer step: req_cons %u, answer up to %u\n", m.op,
          cons, n);
    for ( i = 0; m.sync && i < m.max_vcpus && answered < n; i++ )
    {
        unsigned int v = (i + rot) % m.max_vcpus;

        /* Consumed, outstanding, and room in the response ring. */
        if ( m.state[v] != PAUSED ||
             (uint32_t)(m.idx[v] - cons) < (uint32_t)(m.prod - cons) ||
             (uint32_t)(shared_rsp_prod() - m.rsp_cons) >= m.nr_slots )
            continue;
        write_response(m.id[v], v, 0, true);
        answered++;
    }
    op_notify();
}

static void op_raw(void)
{
    size_t off = u16() % m.len;
    uint8_t buf[8];
    unsigned int n = 1 + u8() % 8, i;

    for ( i = 0; i < n; i++ )
        buf[i] = u8();
    TRACE("op %u: consumer writes %u bytes at %#zx\n", m.op, n, off);
    consumer_write(off, buf, n);
}

/*
 * Calls Xen never makes but the API defines: the other kind's functions,
 * vCPUs beyond max_vcpus.  Nothing may change.
 */
static void op_misuse(void)
{
    unsigned int v = m.max_vcpus + u8(), vcpu = ~0U;
    uint64_t id = 0;
    int rc;

    TRACE("op %u: misuse (vCPU %u)\n", m.op, v);
    if ( m.sync )
    {
        CHECK(!mem_event_ring_unpark(&m.core, v), "unpark(%u) beyond max", v);
        CHECK(!mem_event_ring_cancel(&m.core, v), "cancel(%u) beyond max", v);
        rc = mem_event_ring_put_sync(&m.core, v, false, 0, m.domid, 1, &id);
        CHECK(rc == -EINVAL, "put_sync(%u) beyond max: %d", v, rc);
    }
    else
    {
        rc = mem_event_ring_put_sync(&m.core, 0, u8() & 1, 0, m.domid, 1, &id);
        CHECK(rc == -EINVAL, "put_sync on an async ring: %d", rc);
        rc = mem_event_ring_get_response(&m.core, &vcpu);
        CHECK(rc == -EIO, "get_response on an async ring: %d", rc);
        CHECK(!mem_event_ring_unpark(&m.core, 0), "unpark on an async ring");
        CHECK(!mem_event_ring_cancel(&m.core, 0), "cancel on an async ring");
    }
}

/* Registration parameters init must refuse, and the ownership checks. */
static void check_params(void)
{
    static uint64_t out[1];
    struct mem_event_ring_core scratch;
    struct mem_event_ring_params p = {
        .type = XEN_MEM_EVENT_TYPE_SHARING_OOM, .nr_frames = 1,
        .max_vcpus = 1,
    };
    static const unsigned int bad_frames[] = {
        0, 3, XEN_MEM_EVENT_MAX_FRAMES + 1, 2 * XEN_MEM_EVENT_MAX_FRAMES,
    };
    unsigned int i;
    int rc;

    for ( i = 0; i < sizeof(bad_frames) / sizeof(bad_frames[0]); i++ )
    {
        p.nr_frames = bad_frames[i];
        CHECK(!mem_event_ring_total_frames(p.type, p.nr_frames),
              "%u frames accepted", p.nr_frames);
        rc = mem_event_ring_init(&scratch, m.base, &p, out);
        CHECK(rc == -EINVAL, "init with %u frames: %d", p.nr_frames, rc);
    }
    p.nr_frames = 1;
    p.type = XEN_MEM_EVENT_NR_TYPES;
    rc = mem_event_ring_init(&scratch, m.base, &p, out);
    CHECK(rc == -EINVAL, "init with a bad type: %d", rc);
    p.type = XEN_MEM_EVENT_TYPE_SHARING_OOM;
    p.max_vcpus = 0;
    rc = mem_event_ring_init(&scratch, m.base, &p, out);
    CHECK(rc == -ENOSPC, "sync init without vCPUs: %d", rc);
    p.max_vcpus = XEN_MEM_EVENT_SLOTS_PER_FRAME + 1;
    rc = mem_event_ring_init(&scratch, m.base, &p, out);
    CHECK(rc == -ENOSPC, "sync init with more vCPUs than slots: %d", rc);
    p.max_vcpus = 1;
    rc = mem_event_ring_init(&scratch, m.base, &p, NULL);
    CHECK(rc == -ENOSPC, "sync init without outstanding[]: %d", rc);
    CHECK(mem_event_ring_total_frames(XEN_MEM_EVENT_TYPE_SHARING_OOM,
                                      XEN_MEM_EVENT_MAX_FRAMES) ==
          1 + 2 * XEN_MEM_EVENT_MAX_FRAMES, "largest sync ring");

    CHECK(mem_event_ring_may_map(&m.core, 0), "the consumer may not map");
    CHECK(!mem_event_ring_may_map(&m.core, m.domid), "the target may map");
    CHECK(!mem_event_ring_may_map(&m.core, 0x7ff0), "DOMID_SELF may map");
    CHECK(mem_event_ring_owns(&m.core, m.token), "the owner token");
    CHECK(!mem_event_ring_owns(&m.core, m.token ^ 1), "a wrong token");
    CHECK(!mem_event_ring_owns(&m.core, m.token ^ (1ull << 63)),
          "a wrong token (bit 63)");
}

/* ----------------------------------------------------------- the input */

static void setup(void)
{
    uint8_t cfg = u8(), sel = u8();
    unsigned int nr_frames = 1 + ((cfg >> 1) & 1);
    bool sync = !(cfg & 1);
    struct mapping *mp = mapping_for(sync, nr_frames);
    unsigned int nr_slots = nr_frames * XEN_MEM_EVENT_SLOTS_PER_FRAME;
    struct mem_event_ring_params p = {
        .type = sync ? XEN_MEM_EVENT_TYPE_SHARING_OOM
                     : XEN_MEM_EVENT_TYPE_SHARING_INVALIDATE,
        .nr_frames = nr_frames,
        .domid = 7,
        .consumer = 0,
    };
    uint32_t start = 0;
    int rc;

    if ( sel < 0xc0 )
        p.max_vcpus = 1 + sel % 8;
    else if ( sel < 0xe0 )
        p.max_vcpus = nr_slots - (sel & 7);
    else
        p.max_vcpus = 1 + u8() % nr_slots;
    p.batch = u8();
    p.token = u16() | 0x5a5a000000000000ull;

    switch ( (cfg >> 2) & 3 )
    {
    case 0: start = 0; break;
    case 1: start = 0xffffffffu - u8(); break;
    case 2: start = 0x80000000u - u8(); break;
    case 3: start = u32(); break;
    }

    memset(&m.core, 0, offsetof(__typeof__(m), issued));
    m.nr_issued = 0;
    m.op = 0;
    memset(m.idset, 0, sizeof(m.idset));
    m.sync = sync;
    m.nr_slots = nr_slots;
    m.max_vcpus = sync ? p.max_vcpus : 0;
    m.domid = p.domid;
    m.token = p.token;
    m.base = mp->base;
    m.len = mp->len;
    m.faithful = true;
    memset(m.base, 0, m.len);

    if ( sync )
    {
        m.outstanding = malloc(p.max_vcpus * sizeof(*m.outstanding));
        m.state = calloc(p.max_vcpus, sizeof(*m.state));
        m.id = calloc(p.max_vcpus, sizeof(*m.id));
        m.idx = calloc(p.max_vcpus, sizeof(*m.idx));
        m.pause_count = calloc(p.max_vcpus, sizeof(*m.pause_count));
        if ( !m.outstanding || !m.state || !m.id || !m.idx || !m.pause_count )
            abort();
        memset(m.outstanding, 0xa5, p.max_vcpus * sizeof(*m.outstanding));
    }

    rc = mem_event_ring_init(&m.core, m.base, &p, sync ? m.outstanding : NULL);
    CHECK(rc == 0, "init: rc %d", rc);

    /* The header Xen publishes at registration. */
    memset(mirror, 0, m.len);
    mpage()->version = XEN_MEM_EVENT_INTERFACE_VERSION;
    mpage()->type = p.type;
    mpage()->nr_slots = nr_slots;
    mpage()->req_offset = FRAME;
    mpage()->rsp_offset = sync ? FRAME + nr_slots * REC : 0;
    mpage()->max_vcpus = sync ? p.max_vcpus : 0;
    mpage()->domid = p.domid;
    mpage()->req_event = sync ? 1 : !p.batch ? 1
                         : p.batch < m.nr_slots / 2 ? p.batch : m.nr_slots / 2;
    /* Init does not define max_vcpus for async rings: take what it wrote. */
    if ( !sync )
        mpage()->max_vcpus = page()->max_vcpus;
    check_mapping("init");
    check_state();
    check_params();
    check_mapping("refused inits");

    /*
     * Start every index at @start (as the harness's hv_ring_set_start()
     * does) to cross the 32-bit wrap, and optionally start the per-ring id
     * sequence just before its wrap.
     */
    if ( start )
    {
        m.core.req_prod = m.core.req_cons = m.core.rsp_cons = start;
        m.prod = m.cons = m.rsp_cons = start;
        page()->req_prod = page()->req_cons = start;
        page()->rsp_prod = page()->rsp_cons = start;
        page()->req_event += start;
        memcpy(mirror, m.base, FRAME);
    }
    if ( cfg & 0x10 )
        m.core.next_seq = 0xffffffffu - (u8() & 3);
    TRACE("ring: %s, %u slots, max_vcpus %u, batch %u, start %u\n",
          sync ? "sync" : "async", nr_slots, p.max_vcpus, p.batch, start);
}

static void finish(void)
{
    m.op++;
    op_teardown();
    check_mapping("final teardown");
    check_state();
    free(m.outstanding);
    free(m.state);
    free(m.id);
    free(m.idx);
    free(m.pause_count);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *t = getenv("FUZZ_TRACE");

    trace = t && *t && *t != '0';
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    in_p = data;
    in_n = size;
    setup();

    while ( more() )
    {
        uint8_t op = u8();
        unsigned int v, i, n;

        m.op++;
        switch ( op % 13 )
        {
        case 0:                     /* a vCPU faults / a record */
            if ( m.sync )
            {
                v = u8();
                op_put_sync(v == 0xff ? m.max_vcpus : v % m.max_vcpus, false,
                            u16());
            }
            else
                op_put_async(u16(), u16(), 1 + (u8() & 1), u8() & 1);
            break;
        case 1:                     /* a foreign access / a record */
            if ( m.sync )
                op_put_sync(u8(), true, u16());
            else
                op_put_async(u64(), u64(), u8(), u8());
            break;
        case 2:                     /* every vCPU faults / a burst */
            n = u8();
            if ( m.sync )
                for ( v = 0; v < m.max_vcpus; v++ )
                    op_put_sync(v, (n & 1) && v % 2, v);
            else if ( n & 0x80 )
                op_put_async_batch(n & 0x7f);
            else
                for ( i = 0; i < n; i++ )
                    op_put_async(i, i, 2, 0);
            break;
        case 3:
            op_notify();
            break;
        case 4:
            op_update_cons();
            break;
        case 5:                     /* rare: the input decides */
            if ( u8() >= 0xf0 )
                op_teardown();
            break;
        case 6:
            op_write_req_cons();
            break;
        case 7:
            op_write_req_event();
            break;
        case 8:
            op_write_rsp_prod();
            break;
        case 9:
            op_respond();
            break;
        case 10:
            op_consumer_step();
            break;
        case 11:
            op_raw();
            break;
        case 12:
            op_misuse();
            break;
        }
        check_mapping("after operation");
        check_state();
    }

    finish();
    return 0;
}
