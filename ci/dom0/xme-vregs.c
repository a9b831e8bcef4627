/*
 * xme-vregs: does the emulated platform keep a process's vector registers
 * across preemption?
 *
 *   xme-vregs xmm|ymm SECONDS
 *
 * Loops for SECONDS: fills xmm0-15 (or ymm0-15) with a per-round pattern,
 * spins long enough to be preempted now and then, stores the registers back
 * and compares them with the pattern; also copies buffers of 33..4032 bytes
 * with glibc's memcpy (vector code) and compares them.  Run several at once
 * so that they preempt each other.  Prints one line
 *   XME-VREGS <mode> rounds=N bad=M
 * (plus a line per corruption, at most 5) and exits 0 when M is 0, 1 when
 * not, 2 on usage errors.
 *
 * Why: under QEMU's TCG with Xen's lazy FPU switching, dom0's registers were
 * corrupted (xl, xenpaging, systemd died in glibc's malloc checks); the VM
 * tier checks the platform before trusting any scenario.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NREGS 16
#define MAX_BAD 5

/* One instruction per register, 0-15; base %0 = the input, %1 = the output. */
#define EACH16(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) \
                  X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#define LOAD_XMM(i)  "movdqu " #i "*16(%0), %%xmm" #i "\n\t"
#define STORE_XMM(i) "movdqu %%xmm" #i ", " #i "*16(%1)\n\t"
#define LOAD_YMM(i)  "vmovdqu " #i "*32(%0), %%ymm" #i "\n\t"
#define STORE_YMM(i) "vmovdqu %%ymm" #i ", " #i "*32(%1)\n\t"

#define CLOBBERS "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", \
    "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"

static void hold_xmm(const uint8_t *in, uint8_t *out, unsigned long spins)
{
    asm volatile ( EACH16(LOAD_XMM)
                   "1: dec %2\n\t"
                   "jnz 1b\n\t"
                   EACH16(STORE_XMM)
                   : "+r" (in), "+r" (out), "+r" (spins)
                   :
                   : "memory", CLOBBERS );
}

static void hold_ymm(const uint8_t *in, uint8_t *out, unsigned long spins)
{
    asm volatile ( EACH16(LOAD_YMM)
                   "1: dec %2\n\t"
                   "jnz 1b\n\t"
                   EACH16(STORE_YMM)
                   "vzeroupper\n\t"
                   : "+r" (in), "+r" (out), "+r" (spins)
                   :
                   : "memory", CLOBBERS );
}

static void report(const char *what, unsigned int idx, const uint8_t *got,
                   const uint8_t *want, size_t len)
{
    size_t i;

    printf("XME-VREGS CORRUPT %s%u:", what, idx);
    for ( i = 0; i < len && i < 32; i++ )
        printf(" %02x/%02x", got[i], want[i]);
    printf("\n");
}

int main(int argc, char **argv)
{
    static uint8_t in[NREGS * 32], out[NREGS * 32];
    unsigned long rounds = 0, bad = 0;
    unsigned int r, w;
    size_t i, sz;
    time_t end;
    int ymm;

    if ( argc != 3 || (strcmp(argv[1], "xmm") && strcmp(argv[1], "ymm")) ||
         atoi(argv[2]) <= 0 )
    {
        fprintf(stderr, "usage: %s xmm|ymm SECONDS\n", argv[0]);
        return 2;
    }
    ymm = !strcmp(argv[1], "ymm");
    w = ymm ? 32 : 16;
    end = time(NULL) + atoi(argv[2]);

    while ( time(NULL) < end && bad < MAX_BAD )
    {
        uint8_t *a, *b;

        rounds++;
        for ( i = 0; i < sizeof(in); i++ )
            in[i] = (uint8_t)(i * 7 + rounds * 13 + (ymm ? 0x5a : 0xa5));
        memset(out, 0, sizeof(out));
        if ( ymm )
            hold_ymm(in, out, 200000 + rounds % 1000);
        else
            hold_xmm(in, out, 200000 + rounds % 1000);
        for ( r = 0; r < NREGS; r++ )
            if ( memcmp(out + r * w, in + r * w, w) )
            {
                report(argv[1], r, out + r * w, in + r * w, w);
                bad++;
                break;
            }

        sz = 33 + (rounds * 2654435761u) % 4000;
        a = malloc(sz);
        b = malloc(sz);
        if ( !a || !b )
        {
            perror("malloc");
            return 1;
        }
        for ( i = 0; i < sz; i++ )
            a[i] = (uint8_t)(i * 31 + rounds);
        memcpy(b, a, sz);
        if ( memcmp(a, b, sz) )
        {
            printf("XME-VREGS CORRUPT memcpy of %zu bytes\n", sz);
            bad++;
        }
        free(a);
        free(b);
    }
    printf("XME-VREGS %s rounds=%lu bad=%lu\n", argv[1], rounds, bad);
    return bad != 0;
}
