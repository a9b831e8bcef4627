/*
 * xme-mem: a guest's memory allowance, for the VM-tier scenarios.
 *
 *   xme-mem DOMID info            print 'tot_kib max_kib'
 *   xme-mem DOMID cap [EXTRA_KIB] set the allowance to what the domain owns
 *                                 now (+ EXTRA_KIB): every unshare then
 *                                 needs memory it does not have
 *
 * 'xl mem-max' refuses values below the memory target, hence this helper.
 * Exit status: 0 done, 1 error, 2 usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xenctrl.h>

int main(int argc, char **argv)
{
    xc_domaininfo_t info;
    xc_interface *xch;
    unsigned int domid;
    uint64_t tot_kib, max_kib, extra = 0;

    if ( argc < 3 || (strcmp(argv[2], "info") && strcmp(argv[2], "cap")) )
    {
        fprintf(stderr, "usage: xme-mem DOMID info|cap [EXTRA_KIB]\n");
        return 2;
    }
    domid = strtoul(argv[1], NULL, 0);
    if ( argc > 3 )
        extra = strtoull(argv[3], NULL, 0);

    xch = xc_interface_open(NULL, NULL, 0);
    if ( !xch )
    {
        perror("xme-mem: xc_interface_open");
        return 1;
    }
    if ( xc_domain_getinfolist(xch, domid, 1, &info) != 1 || info.domain != domid )
    {
        fprintf(stderr, "xme-mem: no domain %u\n", domid);
        return 1;
    }
    tot_kib = info.tot_pages * 4;
    max_kib = info.max_pages * 4;
    if ( !strcmp(argv[2], "info") )
        printf("%" PRIu64 " %" PRIu64 "\n", tot_kib, max_kib);
    else if ( xc_domain_setmaxmem(xch, domid, tot_kib + extra) )
    {
        fprintf(stderr, "xme-mem: setmaxmem %u %" PRIu64 ": %s\n", domid,
                tot_kib + extra, strerror(errno));
        return 1;
    }
    else
        printf("%" PRIu64 " %" PRIu64 "\n", tot_kib, tot_kib + extra);
    xc_interface_close(xch);
    return 0;
}
