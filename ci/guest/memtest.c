/*
 * memtest: the xen-mem-event test guest's workload (runs as the guest's
 * init payload, on the PVH console hvc0).
 *
 * It fills a buffer of locked anonymous memory with three regions:
 *
 *   zero    all-zero pages                    (sharable with each other)
 *   ident   pages that are all the same       (sharable with each other)
 *           (every 64-bit word = IDENT_MAGIC ^ generation)
 *   unique  pages whose content differs per page (never sharable; sharing
 *           one of them with anything corrupts it, which 'verify' catches)
 *
 * and prints the guest frame numbers of each region (read from
 * /proc/self/pagemap; in a PVH guest pfn == gfn), then 'MEMTEST READY'.
 *
 * Then it loops.  Every PERIOD seconds it verifies the whole buffer and
 * prints 'MEMTEST PASS round=N ...' or 'MEMTEST FAIL round=N ...'.  It also
 * reads commands, one per line, from stdin (the console: dom0 writes them
 * to the guest's console pty, see ci/vm/lib.sh):
 *
 *   verify      verify now                        -> MEMTEST PASS|FAIL ... cmd=verify
 *   write       write every page of the zero and ident regions (zeros stay
 *               zero, ident gets the next generation), then verify; with
 *               -t N, N threads write, thread k pinned to CPU k and writing
 *               every Nth page from the kth
 *                                                 -> MEMTEST PASS|FAIL ... cmd=write
 *   gfns        print the gfn lists again        -> MEMTEST GFN ... / MEMTEST GFNS-END
 *   cpuid N     execute CPUID N times            -> MEMTEST CPUID n=N
 *   period S    change the verify period (0: only on command)
 *   churn N S   every S seconds rewrite N random pages of the buffer, half
 *               of them (alternately) with sharable contents (all zero, or
 *               the ident pattern of the current generation), the others
 *               with contents unique to the page and the rewrite; 'churn 0'
 *               stops; 'churn' alone reports
 *                                                 -> MEMTEST CHURN n=N every=S rounds=R pages=P sharable=Q
 *
 * Every command's output ends with one line carrying 'seq=K', K counting
 * commands from 1, so a driver can wait for the answer to its own command.
 *
 * Usage: memtest [-z zero_MiB] [-i ident_MiB] [-u unique_MiB] [-p period_s]
 *                [-w write_every_n_rounds] [-t writer_threads]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE   4096UL
#define WORDS       (PAGE_SIZE / sizeof(uint64_t))
#define IDENT_MAGIC 0x584d452d4944454eULL  /* "XME-IDEN" */

enum region { R_ZERO, R_IDENT, R_UNIQUE, R_NR };

/*
 * What a page holds: its region's contents, or what churn wrote last
 * (kind[] and ver[] per page, so verify always knows what to expect).
 */
enum kind { K_REGION, K_ZERO, K_IDENT, K_PRIVATE };
static const char *const rname[R_NR] = { "zero", "ident", "unique" };

static uint8_t *buf, *kind;
static uint64_t *ver;
static size_t npages[R_NR], first[R_NR], total;
static uint64_t gen = 1, seed;
static unsigned long round_nr, seq, period = 5, writers = 1;
static time_t next;
static unsigned long churn_n, churn_every, churn_rounds, churn_pages, churn_sharable;
static uint64_t churn_ver, rng_state, next_churn_ms;

static void say(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if ( n < 0 )
        return;
    if ( n > (int)sizeof(line) - 2 )
        n = sizeof(line) - 2;
    line[n++] = '\n';
    (void)!write(STDOUT_FILENO, line, n);
}

static uint64_t mix(uint64_t x)                 /* splitmix64 finaliser */
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t expect_region(enum region r, size_t page, size_t word)
{
    switch ( r )
    {
    case R_ZERO:  return 0;
    case R_IDENT: return IDENT_MAGIC ^ gen;
    default:      return mix(seed ^ ((uint64_t)page << 9) ^ word);
    }
}

static enum region region_of(size_t page);

/* What word 'word' of page 'page' must hold now. */
static uint64_t expect(size_t page, size_t word)
{
    switch ( kind[page] )
    {
    case K_ZERO:    return 0;
    case K_IDENT:   return IDENT_MAGIC ^ ver[page];
    case K_PRIVATE: return mix(~seed ^ ((uint64_t)page << 9) ^ word ^ (ver[page] << 32));
    default:        return expect_region(region_of(page), page, word);
    }
}

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t *page_ptr(size_t page)
{
    return (uint64_t *)(buf + page * PAGE_SIZE);
}

static enum region region_of(size_t page)
{
    return page < first[R_IDENT] ? R_ZERO :
           page < first[R_UNIQUE] ? R_IDENT : R_UNIQUE;
}

/* Write pages k, k + n, k + 2n, ... of region r. */
static void fill_part(enum region r, size_t k, size_t n)
{
    for ( size_t p = first[r] + k; p < first[r] + npages[r]; p += n )
    {
        volatile uint64_t *w = page_ptr(p);

        kind[p] = K_REGION;
        /* Write every word, even zeros: a write is what unshares a page. */
        for ( size_t i = 0; i < WORDS; i++ )
            w[i] = expect(p, i);
    }
}

static void fill(enum region r)
{
    fill_part(r, 0, 1);
}

struct writer {
    pthread_t thread;
    size_t k;
    int cpu_ok;
};

static void *writer_main(void *arg)
{
    struct writer *wr = arg;
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(wr->k, &set);
    wr->cpu_ok = !sched_setaffinity(0, sizeof(set), &set);
    fill_part(R_ZERO, wr->k, writers);
    fill_part(R_IDENT, wr->k, writers);
    return NULL;
}

/* The 'write' command: zero and ident regions, by 'writers' threads. */
static void write_all(void)
{
    struct writer wr[64];
    size_t n = writers, started = 0, pinned = 0;

    if ( n <= 1 )
    {
        fill(R_ZERO);
        fill(R_IDENT);
        return;
    }
    for ( size_t k = 0; k < n; k++ )
    {
        wr[k].k = k;
        wr[k].cpu_ok = 0;
        if ( pthread_create(&wr[k].thread, NULL, writer_main, &wr[k]) )
            break;
        started++;
    }
    for ( size_t k = 0; k < started; k++ )
    {
        pthread_join(wr[k].thread, NULL);
        pinned += wr[k].cpu_ok;
    }
    /* Pages of threads that did not start: written here. */
    for ( size_t k = started; k < n; k++ )
    {
        fill_part(R_ZERO, k, n);
        fill_part(R_IDENT, k, n);
    }
    say("MEMTEST WRITERS threads=%zu pinned=%zu", started, pinned);
}

static uint64_t gfn_of(int fd, size_t page)
{
    uint64_t ent;
    off_t off = ((uintptr_t)page_ptr(page) / PAGE_SIZE) * sizeof(ent);

    if ( pread(fd, &ent, sizeof(ent), off) != sizeof(ent) )
        return 0;
    if ( !(ent & (1ULL << 63)) )
        return 0;
    return ent & ((1ULL << 55) - 1);
}

/*
 * Print the gfns of region r, hex without 0x, runs as 'first-last',
 * 12 items a line: 'MEMTEST GFN zero 1a2b3 1a2c0-1a2c7 ...'.
 */
static void print_gfns(enum region r, size_t limit)
{
    int fd = open("/proc/self/pagemap", O_RDONLY);
    char line[512];
    size_t len = 0, runs = 0, nr = npages[r] < limit ? npages[r] : limit;
    uint64_t start = 0, count = 0;

    if ( fd < 0 )
    {
        say("MEMTEST ERROR pagemap: %s", strerror(errno));
        return;
    }
    for ( size_t p = first[r]; p <= first[r] + nr; p++ )
    {
        uint64_t g = p < first[r] + nr ? gfn_of(fd, p) : 0;

        if ( count && g == start + count )
        {
            count++;
            continue;
        }
        if ( count )
        {
            if ( count == 1 )
                len += snprintf(line + len, sizeof(line) - len, " %" PRIx64, start);
            else
                len += snprintf(line + len, sizeof(line) - len, " %" PRIx64 "-%" PRIx64,
                                start, start + count - 1);
            if ( ++runs % 12 == 0 )
            {
                say("MEMTEST GFN %s%s", rname[r], line);
                len = 0;
            }
        }
        start = g;
        count = g ? 1 : 0;          /* gfn 0: not present (should not happen) */
    }
    if ( len )
        say("MEMTEST GFN %s%s", rname[r], line);
    close(fd);
}

static void print_all_gfns(void)
{
    print_gfns(R_ZERO, SIZE_MAX);
    print_gfns(R_IDENT, SIZE_MAX);
    print_gfns(R_UNIQUE, 64);       /* a sample, for negative tests */
}

/* Returns the number of bad pages; reports the first few. */
static size_t verify(const char *why)
{
    size_t bad = 0, bad_r[R_NR] = { 0 };
    int fd = open("/proc/self/pagemap", O_RDONLY);

    round_nr++;
    for ( size_t p = 0; p < total; p++ )
    {
        enum region r = region_of(p);
        const uint64_t *w = page_ptr(p);

        for ( size_t i = 0; i < WORDS; i++ )
        {
            if ( w[i] == expect(p, i) )
                continue;
            if ( bad < 8 )
                say("MEMTEST BAD round=%lu region=%s page=%zu gfn=0x%" PRIx64
                    " word=%zu want=0x%016" PRIx64 " got=0x%016" PRIx64,
                    round_nr, rname[r], p - first[r],
                    fd >= 0 ? gfn_of(fd, p) : 0, i, expect(p, i), w[i]);
            bad++;
            bad_r[r]++;
            break;
        }
    }
    if ( fd >= 0 )
        close(fd);
    if ( bad )
        say("MEMTEST FAIL round=%lu gen=%" PRIu64 " bad=%zu zero=%zu ident=%zu unique=%zu %s",
            round_nr, gen, bad, bad_r[R_ZERO], bad_r[R_IDENT], bad_r[R_UNIQUE], why);
    else
        say("MEMTEST PASS round=%lu gen=%" PRIu64 " pages=%zu %s", round_nr, gen, total, why);
    return bad;
}

static uint64_t rnd(void)                        /* xorshift64 */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* One churn round: churn_n random pages rewritten, every other one with
 * sharable contents. */
static void churn_round(void)
{
    for ( unsigned long i = 0; i < churn_n; i++ )
    {
        size_t p = rnd() % total;
        volatile uint64_t *w = page_ptr(p);

        if ( i % 2 == 0 )
        {
            kind[p] = (rnd() & 1) ? K_ZERO : K_IDENT;
            ver[p] = gen;
            churn_sharable++;
        }
        else
        {
            kind[p] = K_PRIVATE;
            ver[p] = ++churn_ver;
        }
        for ( size_t j = 0; j < WORDS; j++ )
            w[j] = expect(p, j);
    }
    churn_rounds++;
    churn_pages += churn_n;
}

static void do_cpuid(unsigned long n)
{
    for ( unsigned long i = 0; i < n; i++ )
    {
        unsigned int a = 0, b, c = 0, d;

        asm volatile ( "cpuid" : "+a" (a), "=b" (b), "+c" (c), "=d" (d) );
    }
}

static void command(char *line)
{
    char tag[48];
    char *arg;

    line[strcspn(line, "\r\n")] = 0;
    while ( *line == ' ' )
        line++;
    if ( !*line )
        return;
    seq++;
    arg = strchr(line, ' ');
    if ( arg )
        *arg++ = 0;

    if ( !strcmp(line, "verify") )
    {
        snprintf(tag, sizeof(tag), "cmd=verify seq=%lu", seq);
        verify(tag);
    }
    else if ( !strcmp(line, "write") )
    {
        gen++;
        write_all();
        snprintf(tag, sizeof(tag), "cmd=write seq=%lu", seq);
        verify(tag);
    }
    else if ( !strcmp(line, "gfns") )
    {
        print_all_gfns();
        say("MEMTEST GFNS-END seq=%lu", seq);
    }
    else if ( !strcmp(line, "cpuid") )
    {
        unsigned long n = arg ? strtoul(arg, NULL, 0) : 1;

        do_cpuid(n);
        say("MEMTEST CPUID n=%lu seq=%lu", n, seq);
    }
    else if ( !strcmp(line, "churn") )
    {
        if ( arg )
        {
            char *end;

            churn_n = strtoul(arg, &end, 0);
            churn_every = strtoul(end, NULL, 0);
            if ( churn_every < 1 )
                churn_every = 1;
            if ( churn_n > total )
                churn_n = total;
            next_churn_ms = now_ms() + churn_every * 1000;
        }
        say("MEMTEST CHURN n=%lu every=%lu rounds=%lu pages=%lu sharable=%lu seq=%lu",
            churn_n, churn_every, churn_rounds, churn_pages, churn_sharable, seq);
    }
    else if ( !strcmp(line, "period") )
    {
        period = arg ? strtoul(arg, NULL, 0) : 0;
        next = time(NULL) + period;
        say("MEMTEST PERIOD %lu seq=%lu", period, seq);
    }
    else
        say("MEMTEST UNKNOWN cmd=%s seq=%lu", line, seq);
}

int main(int argc, char **argv)
{
    unsigned long mib[R_NR] = { 4, 4, 8 }, write_every = 0;
    struct termios tio;
    char line[256];
    size_t len = 0;
    int opt;

    while ( (opt = getopt(argc, argv, "z:i:u:p:w:t:")) != -1 )
    {
        switch ( opt )
        {
        case 'z': mib[R_ZERO] = strtoul(optarg, NULL, 0); break;
        case 'i': mib[R_IDENT] = strtoul(optarg, NULL, 0); break;
        case 'u': mib[R_UNIQUE] = strtoul(optarg, NULL, 0); break;
        case 'p': period = strtoul(optarg, NULL, 0); break;
        case 'w': write_every = strtoul(optarg, NULL, 0); break;
        case 't': writers = strtoul(optarg, NULL, 0); break;
        default:
            say("usage: memtest [-z MiB] [-i MiB] [-u MiB] [-p period_s] [-w n] [-t threads]");
            return 2;
        }
    }

    if ( writers < 1 || writers > 64 )
    {
        say("memtest: -t takes 1 to 64 threads");
        return 2;
    }

    for ( int r = 0; r < R_NR; r++ )
    {
        npages[r] = mib[r] * (1024 * 1024 / PAGE_SIZE);
        first[r] = total;
        total += npages[r];
    }
    seed = mix((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32));
    rng_state = mix(seed ^ 0x636875726eULL) | 1;
    kind = calloc(total ? total : 1, 1);
    ver = calloc(total ? total : 1, sizeof(*ver));
    if ( !kind || !ver )
    {
        say("MEMTEST ERROR calloc %zu pages: %s", total, strerror(errno));
        return 1;
    }

    /* No echo of commands, no CR before LF in the output; keep line mode. */
    if ( tcgetattr(STDIN_FILENO, &tio) == 0 )
    {
        tio.c_lflag &= ~(ECHO | ECHONL);
        tio.c_oflag &= ~ONLCR;
        tcsetattr(STDIN_FILENO, TCSANOW, &tio);
    }

    buf = mmap(NULL, total * PAGE_SIZE, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if ( buf == MAP_FAILED )
    {
        say("MEMTEST ERROR mmap %zu pages: %s", total, strerror(errno));
        return 1;
    }
    /* Keep gfns stable: no THP collapse, no reclaim (there is no swap). */
    madvise(buf, total * PAGE_SIZE, MADV_NOHUGEPAGE);
    for ( int r = 0; r < R_NR; r++ )
        fill(r);
    if ( mlock(buf, total * PAGE_SIZE) )
        say("MEMTEST WARNING mlock: %s", strerror(errno));

    print_all_gfns();
    say("MEMTEST READY pages=%zu zero=%zu ident=%zu unique=%zu period=%lu",
        total, npages[R_ZERO], npages[R_IDENT], npages[R_UNIQUE], period);

    next = time(NULL) + period;
    for ( ;; )
    {
        struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };
        long wait_ms = -1;
        int rc;

        if ( period )
        {
            time_t now = time(NULL);

            wait_ms = now >= next ? 0 : (next - now) * 1000;
        }
        if ( churn_n )
        {
            uint64_t t = now_ms();
            long churn_ms = t >= next_churn_ms ? 0 : (long)(next_churn_ms - t);

            if ( wait_ms < 0 || churn_ms < wait_ms )
                wait_ms = churn_ms;
        }
        rc = poll(&pfd, 1, wait_ms);
        if ( rc > 0 && (pfd.revents & POLLIN) )
        {
            ssize_t n = read(STDIN_FILENO, line + len, sizeof(line) - 1 - len);

            if ( n > 0 )
            {
                char *nl;

                len += n;
                line[len] = 0;
                while ( (nl = strpbrk(line, "\r\n")) != NULL )
                {
                    size_t used = nl - line + 1;
                    *nl = 0;
                    command(line);
                    memmove(line, line + used, len - used + 1);
                    len -= used;
                }
                if ( len == sizeof(line) - 1 )
                    len = 0;                    /* overlong: drop it */
            }
            else if ( n == 0 || (errno != EINTR && errno != EAGAIN) )
                sleep(1);               /* console hung up: do not spin */
        }
        else if ( rc > 0 )
            sleep(1);                   /* POLLHUP/POLLERR: do not spin */
        if ( churn_n && now_ms() >= next_churn_ms )
        {
            churn_round();
            next_churn_ms = now_ms() + churn_every * 1000;
        }
        if ( period && time(NULL) >= next )
        {
            if ( write_every && round_nr % write_every == write_every - 1 )
            {
                gen++;
                fill(R_ZERO);
                fill(R_IDENT);
            }
            verify("cmd=periodic");
            next = time(NULL) + period;
        }
    }
}
