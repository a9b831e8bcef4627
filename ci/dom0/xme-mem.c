/*
 * xme-mem: a guest's memory allowance and bulk sharing, for the VM-tier
 * scenarios.
 *
 *   xme-mem DOMID info            print 'tot_kib max_kib'
 *   xme-mem DOMID cap [EXTRA_KIB] set the allowance to what the domain owns
 *                                 now (+ EXTRA_KIB): every unshare then
 *                                 needs memory it does not have
 *   xme-mem DOMID share SRC GFN...
 *                                 nominate SRC and every GFN (hexadecimal),
 *                                 then share each GFN into SRC's page;
 *                                 print 'SRC_HANDLE SHARED' (the handle as
 *                                 0x...).  The caller checks the contents
 *                                 first (xme-peek): this only saves the
 *                                 hundreds of processes that xen-memshare
 *                                 would take for a heavily shared page.
 *
 * 'xl mem-max' refuses values below the memory target, hence this helper.
 * Exit status: 0 done (share: every GFN shared), 1 error, 2 usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xenctrl.h>

static int usage(void)
{
    fprintf(stderr,
            "usage: xme-mem DOMID info|cap [EXTRA_KIB]|share SRC GFN...\n");
    return 2;
}

static int allowance(xc_interface *xch, uint32_t domid, int cap,
                     uint64_t extra)
{
    xc_domaininfo_t info;
    uint64_t tot_kib, max_kib;

    if ( xc_domain_getinfolist(xch, domid, 1, &info) != 1 ||
         info.domain != domid )
    {
        fprintf(stderr, "xme-mem: no domain %u\n", domid);
        return 1;
    }
    tot_kib = info.tot_pages * 4;
    max_kib = info.max_pages * 4;
    if ( !cap )
    {
        printf("%" PRIu64 " %" PRIu64 "\n", tot_kib, max_kib);
        return 0;
    }
    if ( xc_domain_setmaxmem(xch, domid, tot_kib + extra) )
    {
        fprintf(stderr, "xme-mem: setmaxmem %u %" PRIu64 ": %s\n", domid,
                tot_kib + extra, strerror(errno));
        return 1;
    }
    printf("%" PRIu64 " %" PRIu64 "\n", tot_kib, tot_kib + extra);
    return 0;
}

static int share(xc_interface *xch, uint32_t domid, int n, char **gfns)
{
    unsigned long src = strtoul(gfns[0], NULL, 16), gfn;
    uint64_t src_h, h;
    int i, shared = 0;

    if ( xc_memshr_nominate_gfn(xch, domid, src, &src_h) )
    {
        fprintf(stderr, "xme-mem: nominate %lx: %s\n", src, strerror(errno));
        return 1;
    }
    for ( i = 1; i < n; i++ )
    {
        gfn = strtoul(gfns[i], NULL, 16);
        if ( xc_memshr_nominate_gfn(xch, domid, gfn, &h) )
            fprintf(stderr, "xme-mem: nominate %lx: %s\n", gfn,
                    strerror(errno));
        else if ( xc_memshr_share_gfns(xch, domid, src, src_h,
                                       domid, gfn, h) )
            fprintf(stderr, "xme-mem: share %lx into %lx: %s\n", gfn, src,
                    strerror(errno));
        else
            shared++;
    }
    printf("0x%" PRIx64 " %d\n", src_h, shared);
    return shared == n - 1 ? 0 : 1;
}

int main(int argc, char **argv)
{
    xc_interface *xch;
    uint32_t domid;
    int rc;

    if ( argc < 3 )
        return usage();
    domid = strtoul(argv[1], NULL, 0);
    if ( !strcmp(argv[2], "share") ? argc < 5 :
         (strcmp(argv[2], "info") && strcmp(argv[2], "cap")) )
        return usage();

    xch = xc_interface_open(NULL, NULL, 0);
    if ( !xch )
    {
        perror("xme-mem: xc_interface_open");
        return 1;
    }
    if ( !strcmp(argv[2], "share") )
        rc = share(xch, domid, argc - 3, argv + 3);
    else
        rc = allowance(xch, domid, !strcmp(argv[2], "cap"),
                       argc > 3 ? strtoull(argv[3], NULL, 0) : 0);
    xc_interface_close(xch);
    return rc;
}
