/*
 * xme-peek: read-only look at a guest's pages from dom0, for the VM-tier
 * scenarios.  It only reads (a PROT_READ foreign mapping never unshares a
 * page); the sharing itself is done by the tools under test.
 *
 *   xme-peek DOMID zero GFN...        print the GFNs whose page is all zero
 *   xme-peek DOMID same REF GFN...    print the GFNs whose page equals REF's
 *   xme-peek DOMID sum GFN...         print 'GFN FNV1A64' for each page
 *
 * GFNs are hexadecimal (with or without 0x); a single '-' reads them from
 * stdin, whitespace-separated.  Output: one hexadecimal GFN (no 0x) a line.
 * Pages that cannot be mapped are reported on stderr and skipped.
 * Exit status: 0 done, 1 error (e.g. REF not mappable), 2 usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <xenforeignmemory.h>

#define PAGE_SIZE 4096UL
#define BATCH     256

static int usage(void)
{
    fprintf(stderr, "usage: xme-peek DOMID zero|same REF|sum GFN...|-\n");
    return 2;
}

static uint64_t fnv1a(const unsigned char *p)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    for ( size_t i = 0; i < PAGE_SIZE; i++ )
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

static int is_zero(const unsigned char *p)
{
    const uint64_t *w = (const uint64_t *)p;

    for ( size_t i = 0; i < PAGE_SIZE / 8; i++ )
        if ( w[i] )
            return 0;
    return 1;
}

static int parse_gfn(const char *s, xen_pfn_t *out)
{
    char *end;

    errno = 0;
    *out = strtoull(s, &end, 16);
    return errno || end == s || *end ? -1 : 0;
}

int main(int argc, char **argv)
{
    xenforeignmemory_handle *fmem;
    unsigned char ref[PAGE_SIZE];
    xen_pfn_t *gfns = NULL;
    size_t n = 0, cap = 0;
    unsigned int domid;
    const char *mode;
    int argi = 3, rc = 0;

    if ( argc < 4 )
        return usage();
    domid = strtoul(argv[1], NULL, 0);
    mode = argv[2];
    if ( strcmp(mode, "zero") && strcmp(mode, "same") && strcmp(mode, "sum") )
        return usage();

    fmem = xenforeignmemory_open(NULL, 0);
    if ( !fmem )
    {
        perror("xme-peek: xenforeignmemory_open");
        return 1;
    }

    if ( !strcmp(mode, "same") )
    {
        xen_pfn_t r;
        int err = 0;
        void *m;

        if ( argc < 5 || parse_gfn(argv[3], &r) )
            return usage();
        m = xenforeignmemory_map(fmem, domid, PROT_READ, 1, &r, &err);
        if ( !m || err )
        {
            fprintf(stderr, "xme-peek: cannot map reference gfn %" PRI_xen_pfn ": %s\n",
                    r, strerror(m ? -err : errno));
            return 1;
        }
        memcpy(ref, m, PAGE_SIZE);
        xenforeignmemory_unmap(fmem, m, 1);
        argi = 4;
    }

    for ( int i = argi; i < argc; i++ )
    {
        char word[64];
        xen_pfn_t g;

        if ( !strcmp(argv[i], "-") )
        {
            while ( scanf("%63s", word) == 1 )
            {
                if ( parse_gfn(word, &g) )
                {
                    fprintf(stderr, "xme-peek: bad gfn '%s'\n", word);
                    return 2;
                }
                if ( n == cap && !(gfns = realloc(gfns, (cap = cap * 2 + 1024) * sizeof(*gfns))) )
                    return 1;
                gfns[n++] = g;
            }
            continue;
        }
        if ( parse_gfn(argv[i], &g) )
        {
            fprintf(stderr, "xme-peek: bad gfn '%s'\n", argv[i]);
            return 2;
        }
        if ( n == cap && !(gfns = realloc(gfns, (cap = cap * 2 + 1024) * sizeof(*gfns))) )
            return 1;
        gfns[n++] = g;
    }

    for ( size_t base = 0; base < n; base += BATCH )
    {
        size_t cnt = n - base < BATCH ? n - base : BATCH;
        int err[BATCH];
        unsigned char *m;

        memset(err, 0, sizeof(err));
        m = xenforeignmemory_map(fmem, domid, PROT_READ, cnt, gfns + base, err);
        if ( !m )
        {
            fprintf(stderr, "xme-peek: mapping %zu gfns from %" PRI_xen_pfn " failed: %s\n",
                    cnt, gfns[base], strerror(errno));
            rc = 1;
            continue;
        }
        for ( size_t j = 0; j < cnt; j++ )
        {
            const unsigned char *p = m + j * PAGE_SIZE;
            xen_pfn_t g = gfns[base + j];

            if ( err[j] )
            {
                fprintf(stderr, "xme-peek: gfn %" PRI_xen_pfn ": %s\n", g, strerror(-err[j]));
                continue;
            }
            if ( !strcmp(mode, "zero") ? is_zero(p) :
                 !strcmp(mode, "same") ? !memcmp(p, ref, PAGE_SIZE) : 0 )
                printf("%" PRI_xen_pfn "\n", g);
            else if ( !strcmp(mode, "sum") )
                printf("%" PRI_xen_pfn " %016" PRIx64 "\n", g, fnv1a(p));
        }
        xenforeignmemory_unmap(fmem, m, cnt);
    }
    xenforeignmemory_close(fmem);
    free(gfns);
    return rc;
}
