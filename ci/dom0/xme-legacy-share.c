/*
 * xme-legacy-share: a memory-sharing helper on the LEGACY sharing vm_event
 * ring, the way a C toolstack does it with Xen 4.17's unpatched libxenctrl
 * (no xen-mem-event API), for the VM-tier compatibility scenario.
 *
 *   xme-legacy-share DOMID
 *
 * It enables the sharing ring (xc_memshr_ring_enable), maps and initialises
 * the ring page at HVM_PARAM_SHARING_RING_PFN itself (as xenpaging does for
 * the paging ring), binds the event channel, then for every request
 * (VM_EVENT_REASON_MEM_SHARING: unsharing a gfn found no memory) raises the
 * domain's allowance by one page and answers, which unpauses the vCPU that
 * Xen paused (VM_EVENT_FLAG_VCPU_PAUSED); a foreign request (a dom0 mapping,
 * not paused) gets the allowance but no response.  Output, line-buffered:
 *
 *   attached domid=D port=P ring_gfn=0x...
 *   event vcpu=N gfn=0x... flags=0x... maxmem_kib=K
 *   done events=N answered=M
 *
 * SIGINT/SIGTERM: answer what is pending, disable the ring, unmap, exit 0.
 * Exit status: 0 done, 1 error, 2 usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xenctrl.h>
#include <xenevtchn.h>
#include <xenforeignmemory.h>
#include <xen/hvm/params.h>
#include <xen/vm_event.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    stop = sig;
}

static xc_interface *xch;
static xenevtchn_handle *xce;
static xenforeignmemory_handle *fmem;
static vm_event_back_ring_t back_ring;
static void *ring_page;
static uint32_t domid;
static evtchn_port_t local_port;
static unsigned long events, answered;

/* Raise the allowance by one page (4 KiB); returns the new value in KiB. */
static uint64_t raise_maxmem(void)
{
    xc_domaininfo_t info;
    uint64_t kib;

    if ( xc_domain_getinfolist(xch, domid, 1, &info) != 1 || info.domain != domid )
    {
        fprintf(stderr, "xme-legacy-share: getinfolist d%u: %s\n", domid, strerror(errno));
        return 0;
    }
    kib = (uint64_t)info.max_pages * 4 + 4;
    if ( xc_domain_setmaxmem(xch, domid, kib) )
    {
        fprintf(stderr, "xme-legacy-share: setmaxmem d%u %" PRIu64 ": %s\n",
                domid, kib, strerror(errno));
        return 0;
    }
    return kib;
}

/* Consume every request on the ring; returns the number of responses put. */
static unsigned int handle_requests(void)
{
    unsigned int put = 0;

    while ( RING_HAS_UNCONSUMED_REQUESTS(&back_ring) )
    {
        vm_event_request_t req;
        vm_event_response_t rsp;
        RING_IDX cons = back_ring.req_cons;
        uint64_t kib;

        memcpy(&req, RING_GET_REQUEST(&back_ring, cons), sizeof(req));
        back_ring.req_cons = ++cons;
        back_ring.sring->req_event = cons + 1;

        events++;
        kib = raise_maxmem();
        printf("event vcpu=%u gfn=0x%" PRIx64 " flags=0x%x reason=%u version=%u maxmem_kib=%" PRIu64 "\n",
               req.vcpu_id, req.u.mem_sharing.gfn, req.flags, req.reason,
               req.version, kib);
        if ( req.reason != VM_EVENT_REASON_MEM_SHARING )
            fprintf(stderr, "xme-legacy-share: unexpected reason %u\n", req.reason);

        /* Only a paused vCPU waits for an answer (a foreign request is not paused). */
        if ( !(req.flags & VM_EVENT_FLAG_VCPU_PAUSED) )
            continue;

        memset(&rsp, 0, sizeof(rsp));
        rsp.version = VM_EVENT_INTERFACE_VERSION;   /* Xen drops any other */
        rsp.reason = req.reason;
        rsp.vcpu_id = req.vcpu_id;
        rsp.flags = req.flags;
        rsp.u.mem_sharing.gfn = req.u.mem_sharing.gfn;
        memcpy(RING_GET_RESPONSE(&back_ring, back_ring.rsp_prod_pvt), &rsp, sizeof(rsp));
        back_ring.rsp_prod_pvt++;
        put++;
        answered++;
    }
    if ( put )
    {
        RING_PUSH_RESPONSES(&back_ring);
        if ( xenevtchn_notify(xce, local_port) < 0 )
            fprintf(stderr, "xme-legacy-share: notify: %s\n", strerror(errno));
        if ( xc_memshr_domain_resume(xch, domid) )
            fprintf(stderr, "xme-legacy-share: memshr_domain_resume: %s\n", strerror(errno));
    }
    return put;
}

/* Map the ring gfn read-write; populate it first if it is not in the physmap. */
static void *map_ring(xen_pfn_t gfn)
{
    int err = 0;
    void *p = xenforeignmemory_map(fmem, domid, PROT_READ | PROT_WRITE, 1, &gfn, &err);

    if ( p && !err )
        return p;
    if ( p )
        xenforeignmemory_unmap(fmem, p, 1);
    /* As xc_vm_event_enable(): a ring page removed earlier is re-populated. */
    if ( xc_domain_populate_physmap_exact(xch, domid, 1, 0, 0, &gfn) )
    {
        fprintf(stderr, "xme-legacy-share: populate ring gfn 0x%" PRI_xen_pfn ": %s\n",
                gfn, strerror(errno));
        return NULL;
    }
    err = 0;
    p = xenforeignmemory_map(fmem, domid, PROT_READ | PROT_WRITE, 1, &gfn, &err);
    if ( p && err )
    {
        xenforeignmemory_unmap(fmem, p, 1);
        errno = -err;
        p = NULL;
    }
    if ( !p )
        fprintf(stderr, "xme-legacy-share: map ring gfn 0x%" PRI_xen_pfn ": %s\n",
                gfn, strerror(errno));
    return p;
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    uint64_t param = 0;
    xen_pfn_t ring_gfn;
    uint32_t port = 0;
    int rc = 1, enabled = 0, paused = 0;

    if ( argc != 2 )
    {
        fprintf(stderr, "usage: xme-legacy-share DOMID\n");
        return 2;
    }
    domid = strtoul(argv[1], NULL, 0);
    setvbuf(stdout, NULL, _IOLBF, 0);

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;          /* no SA_RESTART: poll() returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    xch = xc_interface_open(NULL, NULL, 0);
    xce = xenevtchn_open(NULL, 0);
    fmem = xenforeignmemory_open(NULL, 0);
    if ( !xch || !xce || !fmem )
    {
        perror("xme-legacy-share: opening libxenctrl/libxenevtchn/libxenforeignmemory");
        goto out;
    }

    /* Set the ring up with the domain paused, as xc_vm_event_enable() does. */
    if ( xc_domain_pause(xch, domid) )
    {
        fprintf(stderr, "xme-legacy-share: pause d%u: %s\n", domid, strerror(errno));
        goto out;
    }
    paused = 1;
    if ( xc_hvm_param_get(xch, domid, HVM_PARAM_SHARING_RING_PFN, &param) || !param )
    {
        fprintf(stderr, "xme-legacy-share: HVM_PARAM_SHARING_RING_PFN of d%u: %s\n",
                domid, param ? strerror(errno) : "not set");
        goto out;
    }
    ring_gfn = param;
    ring_page = map_ring(ring_gfn);
    if ( !ring_page )
        goto out;
    if ( xc_memshr_ring_enable(xch, domid, &port) )
    {
        fprintf(stderr, "xme-legacy-share: xc_memshr_ring_enable d%u: %s\n", domid, strerror(errno));
        goto out;
    }
    enabled = 1;
    rc = xenevtchn_bind_interdomain(xce, domid, port);
    if ( rc < 0 )
    {
        rc = 1;
        fprintf(stderr, "xme-legacy-share: bind port %u: %s\n", port, strerror(errno));
        goto out;
    }
    local_port = rc;
    rc = 1;
    /* Xen only FRONT_RING_INITs its side: the shared indexes are ours to set. */
    SHARED_RING_INIT((vm_event_sring_t *)ring_page);
    BACK_RING_INIT(&back_ring, (vm_event_sring_t *)ring_page, XC_PAGE_SIZE);
    /* Now that the ring is set, take it out of the guest's physmap. */
    if ( xc_domain_decrease_reservation_exact(xch, domid, 1, 0, &ring_gfn) )
        fprintf(stderr, "xme-legacy-share: removing the ring from the physmap: %s\n", strerror(errno));
    xc_domain_unpause(xch, domid);
    paused = 0;
    printf("attached domid=%u port=%u ring_gfn=0x%" PRIx64 "\n", domid, port, param);

    while ( !stop )
    {
        struct pollfd pfd = { .fd = xenevtchn_fd(xce), .events = POLLIN | POLLERR };
        int n = poll(&pfd, 1, 500);

        if ( n < 0 )
        {
            if ( errno == EINTR )
                continue;
            perror("xme-legacy-share: poll");
            goto out;
        }
        if ( n > 0 )
        {
            xenevtchn_port_or_error_t p = xenevtchn_pending(xce);

            if ( p < 0 )
            {
                perror("xme-legacy-share: xenevtchn_pending");
                goto out;
            }
            if ( xenevtchn_unmask(xce, p) < 0 )
            {
                perror("xme-legacy-share: xenevtchn_unmask");
                goto out;
            }
        }
        /* Also on timeouts: a request may have come in before the unmask. */
        handle_requests();
    }
    handle_requests();
    rc = 0;

 out:
    if ( paused )
        xc_domain_unpause(xch, domid);
    if ( enabled && xc_memshr_ring_disable(xch, domid) )
    {
        fprintf(stderr, "xme-legacy-share: xc_memshr_ring_disable d%u: %s\n", domid, strerror(errno));
        rc = 1;
    }
    if ( local_port )
        xenevtchn_unbind(xce, local_port);
    if ( ring_page )
        xenforeignmemory_unmap(fmem, ring_page, 1);
    printf("done events=%lu answered=%lu signal=%d rc=%d\n", events, answered, (int)stop, rc);
    if ( fmem )
        xenforeignmemory_close(fmem);
    if ( xce )
        xenevtchn_close(xce);
    if ( xch )
        xc_interface_close(xch);
    return rc;
}
