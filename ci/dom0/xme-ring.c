/*
 * xme-ring: raw operations on a domain's mem_event rings for the VM-tier
 * scenarios, through the series' libxenctrl wrappers (built against the
 * patched tree by ci/build-vm-xen.sh; run with
 * LD_LIBRARY_PATH=/usr/local/lib/xme/lib).
 *
 *   xme-ring DOMID break-oom      register SHARING_OOM, write an impossible
 *                                 req_cons through the mapping, RESUME
 *                                 (must fail with EIO), leave it broken;
 *                                 prints 'token=0x...'
 *   xme-ring DOMID info oom|inv   print the ring's GET_INFO as
 *                                 'paused=N parked=N state=0xS lost=N
 *                                 produced=N consumed=N bad=N'
 *   xme-ring DOMID stale oom|inv  UNREGISTER and RESUME without the owner
 *                                 token (0, 1, ~0): each must fail with
 *                                 ESTALE; prints what each gave
 *
 * Exit status: 0 as expected, 1 not as expected (or error), 2 usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <xenctrl.h>
#include <xenforeignmemory.h>
#include <xen/mem_event.h>

static int usage(void)
{
    fprintf(stderr, "usage: xme-ring DOMID break-oom | info oom|inv | stale oom|inv\n");
    return 2;
}

static int break_oom(xc_interface *xch, uint32_t domid)
{
    xenforeignmemory_handle *fmem = xenforeignmemory_open(NULL, 0);
    xenforeignmemory_resource_handle *res;
    struct xen_mem_event_ring_page *page = NULL;
    uint32_t port, frames;
    uint64_t token;
    int rc;

    if ( !fmem )
        return perror("xenforeignmemory_open"), 1;
    if ( xc_mem_event_ring_register(xch, domid, XEN_MEM_EVENT_TYPE_SHARING_OOM,
                                    1, 0, 0, &port, &frames, &token) )
        return perror("register SHARING_OOM"), 1;
    res = xenforeignmemory_map_resource(fmem, domid, XENMEM_resource_mem_event,
                                        XEN_MEM_EVENT_TYPE_SHARING_OOM, 0,
                                        frames, (void **)&page,
                                        PROT_READ | PROT_WRITE, 0);
    if ( !res )
        return perror("map the ring"), 1;
    page->req_cons = page->req_prod + 1;
    __sync_synchronize();
    rc = xc_mem_event_ring_resume(xch, domid, XEN_MEM_EVENT_TYPE_SHARING_OOM,
                                  token);
    if ( rc != -1 || errno != EIO )
    {
        fprintf(stderr, "RESUME after an impossible req_cons gave %d (errno %d), want EIO\n",
                rc, errno);
        return 1;
    }
    printf("token=%#" PRIx64 " flags=%#x\n", token, page->flags);
    xenforeignmemory_unmap_resource(fmem, res);
    xenforeignmemory_close(fmem);

    return 0;
}

static int info(xc_interface *xch, uint32_t domid, uint32_t type)
{
    struct xen_domctl_mem_event_ring i;

    if ( xc_mem_event_ring_get_info(xch, domid, type, &i) )
        return perror("get_info"), 1;
    printf("paused=%u parked=%u state=%#x lost=%" PRIu64 " produced=%" PRIu64
           " consumed=%" PRIu64 " bad=%" PRIu64 "\n",
           i.paused_vcpus, i.parked_vcpus, i.state, i.lost, i.produced,
           i.consumed, i.bad_responses);

    return 0;
}

static int stale(xc_interface *xch, uint32_t domid, uint32_t type)
{
    static const uint64_t tokens[] = { 0, 1, ~0ULL };
    unsigned int i, bad = 0;

    for ( i = 0; i < sizeof(tokens) / sizeof(tokens[0]); i++ )
    {
        int u = xc_mem_event_ring_unregister(xch, domid, type, tokens[i]);
        int ue = errno;
        int r = xc_mem_event_ring_resume(xch, domid, type, tokens[i]);
        int re = errno;

        printf("token %#" PRIx64 ": unregister %s, resume %s\n", tokens[i],
               u ? strerror(ue) : "ACCEPTED", r ? strerror(re) : "ACCEPTED");
        bad += !(u == -1 && ue == ESTALE) + !(r == -1 && re == ESTALE);
    }

    return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
    xc_interface *xch;
    uint32_t domid, type = 0;
    int rc;

    if ( argc < 3 )
        return usage();
    domid = strtoul(argv[1], NULL, 0);
    if ( argc == 4 )
    {
        if ( !strcmp(argv[3], "oom") )
            type = XEN_MEM_EVENT_TYPE_SHARING_OOM;
        else if ( !strcmp(argv[3], "inv") )
            type = XEN_MEM_EVENT_TYPE_SHARING_INVALIDATE;
        else
            return usage();
    }

    xch = xc_interface_open(NULL, NULL, 0);
    if ( !xch )
        return perror("xc_interface_open"), 1;

    if ( argc == 3 && !strcmp(argv[2], "break-oom") )
        rc = break_oom(xch, domid);
    else if ( argc == 4 && !strcmp(argv[2], "info") )
        rc = info(xch, domid, type);
    else if ( argc == 4 && !strcmp(argv[2], "stale") )
        rc = stale(xch, domid, type);
    else
        rc = usage();

    xc_interface_close(xch);

    return rc;
}
