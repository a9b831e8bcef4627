/*
 * xme-wmap: map one page of a guest writable from dom0, for the VM-tier
 * scenarios, and unmap it again without writing to it.
 *
 *   xme-wmap DOMID GFN
 *
 * A writable foreign mapping of a shared page makes Xen unshare it in
 * dom0's context (get_page_from_gfn(..., P2M_UNSHARE)); when that finds no
 * memory, the mapping fails with ENOMEM and Xen sends a *foreign* request
 * (no vCPU paused) to the guest's SHARING_OOM ring.  The page's contents are
 * not touched, so the guest sees the same data either way.
 *
 * GFN is hexadecimal (with or without 0x).  Prints 'mapped' or 'error ERRNO
 * (strerror)' and exits 0 when mapped, 1 when not, 2 on usage errors.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <xenforeignmemory.h>

int main(int argc, char **argv)
{
    xenforeignmemory_handle *fmem;
    unsigned long domid;
    xen_pfn_t gfn;
    char *end;
    void *m;
    int err = 0;

    if ( argc != 3 )
    {
        fprintf(stderr, "usage: xme-wmap DOMID GFN\n");
        return 2;
    }
    errno = 0;
    domid = strtoul(argv[1], &end, 0);
    if ( errno || end == argv[1] || *end || domid >= 0x7ff0 )
    {
        fprintf(stderr, "xme-wmap: bad domain id '%s'\n", argv[1]);
        return 2;
    }
    gfn = strtoull(argv[2], &end, 16);
    if ( errno || end == argv[2] || *end )
    {
        fprintf(stderr, "xme-wmap: bad gfn '%s'\n", argv[2]);
        return 2;
    }

    fmem = xenforeignmemory_open(NULL, 0);
    if ( !fmem )
    {
        perror("xme-wmap: xenforeignmemory_open");
        return 1;
    }
    m = xenforeignmemory_map(fmem, domid, PROT_READ | PROT_WRITE, 1, &gfn, &err);
    if ( !m )
        err = -errno;
    if ( m )
        xenforeignmemory_unmap(fmem, m, 1);
    xenforeignmemory_close(fmem);

    if ( err )
    {
        printf("error %d (%s)\n", -err, strerror(-err));
        return 1;
    }
    printf("mapped\n");
    return 0;
}
