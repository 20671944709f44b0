/*
** vecidx.c -- embeddable vector index library, implementation.
**
** Build: compile this file with any C11 compiler and link with -pthread -lm:
**     cc -std=c11 -O2 -c vecidx.c
** The public contract is in vecidx.h. MIT licensed, see LICENSE.
**
** Compile-time options:
**   VECIDX_NO_SIMD   use only the portable scalar distance kernels.
**
** The file is read top to bottom, lowest layer first. Its sections:
**   1. platform & allocation   errors, allocator hooks, locks, threads
**   2. SIMD kernels            distance functions and run-time dispatch
**   3. storage                 slot-addressed vectors, key map, free slots
**   4. top-k                   bounded max-heap shared by every search
**   5. flat                    exact search, single and blocked batch
**   6. HNSW                    graph build, search, repair after removals
**   7. IVF-PQ                  k-means, product codes, lists, code scan
**   8. file format             CRC-32C, I/O table, save, mmap open
**   9. write-ahead log         append, sync modes, replay
**  10. public API              argument checks, locking, dispatch to kinds
**
** Naming: public functions are vecidx_*; everything else is static and
** named vx_<module>_*.
*/
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* pthread_rwlockattr_setkind_np: writer preference */
#endif
#if !defined(_FILE_OFFSET_BITS)
#define _FILE_OFFSET_BITS 64 /* index files over 2 GB on 32-bit systems */
#endif
#if !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include "vecidx.h"
#undef vecidx_stats /* the macro: the function of that name is below */

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if !defined(VECIDX_NO_SIMD)
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VX_HAVE_AVX2 1
#include <immintrin.h>
#elif defined(__ARM_NEON) || defined(__aarch64__)
#define VX_HAVE_NEON 1
#include <arm_neon.h>
#endif
#endif
/* Every float sum the same way in every function: clang would otherwise
** fuse multiply-adds differently in each (32-bit ARM), and l2_bound must
** equal the l2 kernel bit for bit. GCC contracts nothing under -std=c11. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
#if defined(VX_HAVE_AVX2)
#include <cpuid.h> /* F16C flag: clang 14 has no __builtin_cpu_supports name */
#endif
#if defined(VX_HAVE_NEON) && defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h> /* getauxval: the dot-product extension */
#if !defined(HWCAP_ASIMDDP)
#define HWCAP_ASIMDDP (1 << 20) /* Linux arm64 uapi, since 4.15 */
#endif
#endif

/* ======================================================================
** 1. Platform & allocation
** ====================================================================== */

#define VX_ERRMSG_MAX 256

/* The detail message lives in thread-local storage so that readers running
** in parallel on one handle never write to shared memory. */
static _Thread_local struct {
    const vecidx *ix;
    char msg[VX_ERRMSG_MAX];
} vx_err_tls;

/* Damage met by reads on this thread (pieces of a mapped file that
** failed their checksum, see vx_lazy): a public read compares n before
** and after (vx_dmg_check), so concurrent readers never blame each
** other, and vx_run_parallel hands its workers' damage to the caller. */
typedef struct vx_dmg_t {
    uint64_t n;
    const char *what; /* section */
    uint32_t piece;   /* chunk or list number */
    uint64_t off;     /* its offset in the file */
} vx_dmg_t;
static _Thread_local vx_dmg_t vx_dmg;

static void vx_dmg_note(const char *what, uint32_t piece, uint64_t off)
{
    vx_dmg.n++;
    vx_dmg.what = what;
    vx_dmg.piece = piece;
    vx_dmg.off = off;
}

#if defined(__GNUC__) || defined(__clang__)
#define VX_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define VX_LIKELY(x) __builtin_expect(!!(x), 1)
#define VX_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define VX_NOINLINE __attribute__((noinline))
#else
#define VX_PRINTF(a, b)
#define VX_LIKELY(x) (x)
#define VX_UNLIKELY(x) (x)
#define VX_NOINLINE
#endif

/* Record a failure for the calling thread and return its code, so error
** paths read `return vx_err(ix, VECIDX_EDIM, "...", ...);`. */
static int vx_err(const vecidx *ix, int code, const char *fmt, ...)
    VX_PRINTF(3, 4);
static int vx_err(const vecidx *ix, int code, const char *fmt, ...)
{
    /* Formatted aside first: callers may pass the previous message as an
    ** argument, to wrap it in more context. */
    char buf[sizeof vx_err_tls.msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(vx_err_tls.msg, buf, sizeof buf);
    vx_err_tls.ix = ix;
    return code;
}

/* rc, or VECIDX_ECORRUPT if this thread's reads met damage since the
** count was `before`: whatever the call returns came from unchecked or
** failed bytes, so it must not be used. */
static int vx_dmg_check(const vecidx *ix, uint64_t before, int rc)
{
    if (VX_LIKELY(vx_dmg.n == before)) return rc;
    if (vx_dmg.what[0] == 'I')
        return vx_err(ix, VECIDX_ECORRUPT,
                      "%s section of the index file is damaged: list %u, at "
                      "offset %llu, fails its checksum",
                      vx_dmg.what, (unsigned)vx_dmg.piece,
                      (unsigned long long)vx_dmg.off);
    return vx_err(ix, VECIDX_ECORRUPT,
                  "%s section of the index file is damaged: the piece of "
                  "slots %u-%u, at offset %llu, fails its checksum",
                  vx_dmg.what, (unsigned)vx_dmg.piece,
                  (unsigned)vx_dmg.piece + 15u, (unsigned long long)vx_dmg.off);
}

/* Every byte the index holds goes through these, so the allocator hooks
** see all of it and memory_bytes is exact. The counter is atomic because
** searches running in parallel allocate their scratch space. */
typedef struct vx_mem {
    vecidx_allocator a;
    atomic_size_t bytes;
} vx_mem;

static void *vx_malloc(vx_mem *m, size_t n)
{
    void *p;
    if (n == 0) n = 1;
    p = m->a.malloc_fn ? m->a.malloc_fn(m->a.ctx, n) : malloc(n);
    if (p) atomic_fetch_add_explicit(&m->bytes, n, memory_order_relaxed);
    return p;
}

static void *vx_realloc(vx_mem *m, void *p, size_t old_n, size_t n)
{
    void *q;
    if (p == NULL) return vx_malloc(m, n);
    if (n == 0) n = 1;
    q = m->a.realloc_fn ? m->a.realloc_fn(m->a.ctx, p, old_n, n)
                        : realloc(p, n);
    if (q) {
        atomic_fetch_add_explicit(&m->bytes, n, memory_order_relaxed);
        atomic_fetch_sub_explicit(&m->bytes, old_n ? old_n : 1,
                                  memory_order_relaxed);
    }
    return q;
}

static void vx_free(vx_mem *m, void *p, size_t n)
{
    if (p == NULL) return;
    if (n == 0) n = 1;
    if (m->a.free_fn)
        m->a.free_fn(m->a.ctx, p);
    else
        free(p);
    atomic_fetch_sub_explicit(&m->bytes, n, memory_order_relaxed);
}

/* a*b into *out, or 0 on overflow: every size computed from user input
** passes through here before it reaches an allocator. */
static int vx_mul_ok(size_t a, size_t b, size_t *out)
{
    if (b != 0 && a > SIZE_MAX / b) return 0;
    *out = a * b;
    return 1;
}

/* Grow an array of `elem`-byte items to at least `need` entries. */
static int vx_grow(vx_mem *mem, void **p, size_t *cap, size_t need, size_t elem)
{
    size_t ncap = *cap ? *cap : 16, bytes;
    void *q;
    if (need <= *cap) return VECIDX_OK;
    while (ncap < need) ncap *= 2;
    if (!vx_mul_ok(ncap, elem, &bytes)) return VECIDX_ENOMEM;
    if (!(q = vx_realloc(mem, *p, *cap * elem, bytes))) return VECIDX_ENOMEM;
    *p = q;
    *cap = ncap;
    return VECIDX_OK;
}

/* Huge-page blocks. A graph walk reads vectors from all over a large
** index, and with 4 KiB pages nearly every such read also misses the TLB,
** which costs another memory round trip or two (more under a hypervisor's
** nested paging). So storage chunks of a large index are carved from
** 2 MiB-aligned anonymous mappings advised for transparent huge pages
** (bench/RESULTS.md: HNSW search 6-10% faster at 1M x 128, 4-7% at
** 200k x 384).
** Linux only, and only with the default allocator: a custom allocator is
** promised every byte. Where THP is off the advice is simply ignored. */
#if defined(__linux__) && defined(MADV_HUGEPAGE)
#define VX_HAVE_HUGE 1
#else
#define VX_HAVE_HUGE 0
#endif
#define VX_HUGE_PAGE ((size_t)2 << 20)
#ifndef VX_HUGE_BLOCK /* tests lower it to reach the pool with small data */
#define VX_HUGE_BLOCK ((size_t)32 << 20)
#endif

/* n rounded up to whole huge pages. */
static size_t vx_huge_len(size_t n)
{
    return (n + VX_HUGE_PAGE - 1) / VX_HUGE_PAGE * VX_HUGE_PAGE;
}

/* A mapping of n bytes (a multiple of VX_HUGE_PAGE) on a VX_HUGE_PAGE
** boundary, or NULL. */
static void *vx_huge_map(size_t n)
{
#if VX_HAVE_HUGE
    size_t lead;
    unsigned char *p = mmap(NULL, n + VX_HUGE_PAGE, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    /* Over-map by one huge page, then trim both ends to the boundary. */
    lead = (VX_HUGE_PAGE - (uintptr_t)p % VX_HUGE_PAGE) % VX_HUGE_PAGE;
    if (lead) munmap(p, lead);
    munmap(p + lead + n, VX_HUGE_PAGE - lead);
    (void)madvise(p + lead, n, MADV_HUGEPAGE);
    return p + lead;
#else
    (void)n;
    return NULL;
#endif
}

static void vx_huge_unmap(void *p, size_t n)
{
    if (p) munmap(p, n);
}

/* Key maps are read at random places too, and a keyed scan looks up each
** allowed key. Measured on 1M x 128 with 1,000 allowed keys (one build,
** its maps on huge pages and on small ones in turns), QPS over a hand
** loop over the same vectors: IVF-PQ 0.92-0.93x on small pages, 1.00-
** 1.02x on huge ones; flat 0.91-0.96x and 0.98-0.99x. So an array of a
** map that spans two huge pages or more gets a mapping of its own, as the
** chunks do; a smaller one would gain at most one. Advising a block of
** the allocator instead would leave the advice on that memory after the
** map is freed, for whatever the program allocates there next. Default
** allocator only. */
#ifndef VX_HUGE_TABLE /* tests lower it to reach it with small data */
#define VX_HUGE_TABLE (2 * VX_HUGE_PAGE)
#endif
static int vx_table_huge(const vx_mem *m, size_t n)
{
    return VX_HAVE_HUGE && !m->a.malloc_fn && n >= VX_HUGE_TABLE &&
           n <= SIZE_MAX - VX_HUGE_PAGE;
}

/* A table of n bytes; *huge says whether it has a mapping of its own
** (vx_table_huge), for vx_table_free. Such a mapping is whole huge pages
** and counted whole: the flat and HNSW maps' arrays fill them (powers of
** two), the IVF-PQ map leaves less than one unused. */
static void *vx_table_alloc(vx_mem *m, size_t n, int *huge)
{
    void *p;
    *huge = 0;
    if (vx_table_huge(m, n) && (p = vx_huge_map(vx_huge_len(n))) != NULL) {
        atomic_fetch_add_explicit(&m->bytes, vx_huge_len(n),
                                  memory_order_relaxed);
        *huge = 1;
        return p;
    }
    return vx_malloc(m, n);
}

static void vx_table_free(vx_mem *m, void *p, size_t n, int huge)
{
    if (!huge) {
        vx_free(m, p, n);
        return;
    }
    vx_huge_unmap(p, vx_huge_len(n));
    atomic_fetch_sub_explicit(&m->bytes, vx_huge_len(n), memory_order_relaxed);
}

static unsigned vx_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1u : n > 256 ? 256u : (unsigned)n;
}

/* Run fn(arg_i) for i in [0, n) on up to n threads: the caller's thread
** runs the first task itself, and a thread that cannot be started is
** replaced by running its task inline, so the work always completes. */
typedef struct vx_task {
    void *(*fn)(void *);
    void *arg;
    vx_dmg_t dmg; /* damage the task met on its own thread */
} vx_task;

static void *vx_task_main(void *arg)
{
    vx_task *t = arg;
    t->fn(t->arg);
    t->dmg = vx_dmg; /* a new thread's count starts at 0 */
    return NULL;
}

static void vx_run_parallel(vx_task *tasks, unsigned n)
{
    pthread_t tid[64];
    int started[64];
    unsigned i;
    if (n > 64) n = 64;
    for (i = 1; i < n; i++) {
        tasks[i].dmg.n = 0;
        started[i] = pthread_create(&tid[i], NULL, vx_task_main, &tasks[i]) ==
                     0;
    }
    if (n > 0) tasks[0].fn(tasks[0].arg);
    for (i = 1; i < n; i++) {
        if (started[i])
            pthread_join(tid[i], NULL);
        else
            tasks[i].fn(tasks[i].arg);
        if (started[i] && tasks[i].dmg.n) {
            uint64_t had = vx_dmg.n;
            vx_dmg = tasks[i].dmg;
            vx_dmg.n += had;
        }
    }
}

static int vx_rwlock_init(pthread_rwlock_t *l)
{
    pthread_rwlockattr_t attr;
    int rc;
    if (pthread_rwlockattr_init(&attr) != 0) return -1;
#if defined(__GLIBC__) && defined(__USE_GNU)
    /* glibc's default lets a stream of readers starve a writer forever. */
    pthread_rwlockattr_setkind_np(&attr,
                                  PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
    rc = pthread_rwlock_init(l, &attr);
    pthread_rwlockattr_destroy(&attr);
    return rc;
}

/* Words that searches read while a writer changes them (link lists, slot
** states, counters, table pointers) are accessed only through these, so
** that every such access is atomic: a search sees the old word or the new
** one, never a mix, and a reader that loads a word with acquire sees all
** that the writer did before storing it with release. On x86-64 both are
** plain moves. They work on mapped file memory too, unlike _Atomic types. */
#define VX_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define VX_PEEK(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define VX_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* ---- epoch-based reclamation ----------------------------------------------
** Searches take no lock. A writer that unlinks something a search may
** still be reading -- a graph node whose slot is to be reused, a slot of
** the flat kind, a table that was outgrown -- cannot reuse or free it at
** once. It retires it under the current epoch and advances the epoch; a
** search announces the epoch it started in, in a slot of its own (one per
** thread, so searches never write a shared cache line), and what was
** retired under epoch e is reclaimed once no announced epoch is e or
** older. Writers never wait for searches: what cannot be reclaimed yet is
** retried at a later write. */

#define VX_EBR_SLOTS 64u

typedef struct vx_ebr_slot {
    uint64_t epoch;         /* 0: free; else the epoch its search started in */
    unsigned char pad[120]; /* a slot per pair of cache lines */
} vx_ebr_slot;

typedef struct vx_ebr_block {
    vx_ebr_slot s[VX_EBR_SLOTS];
    struct vx_ebr_block *next; /* more slots, once 64 searches ran at once */
} vx_ebr_block;

/* Memory waiting for the searches that may still read it. */
typedef struct vx_retired {
    struct vx_retired *next;
    void *p;
    size_t n;
    uint64_t tag; /* retired under this epoch */
} vx_retired;

typedef struct vx_ebr {
    uint64_t epoch; /* starts at 1 */
    vx_ebr_block *first;
    vx_retired *head, *tail; /* oldest first */
} vx_ebr;

/* Each thread starts probing at a slot of its own. */
static _Thread_local unsigned vx_ebr_hint;
static atomic_uint vx_ebr_threads;

/* A small number of the calling thread's own, 1 for the first thread that
** asks; spreads per-thread probes over slots and cache lines. */
static unsigned vx_thread_no(void)
{
    if (!vx_ebr_hint) vx_ebr_hint = atomic_fetch_add(&vx_ebr_threads, 1) + 1;
    return vx_ebr_hint;
}

static int vx_ebr_init(vx_ebr *e, vx_mem *mem)
{
    memset(e, 0, sizeof *e);
    e->epoch = 1;
    if (!(e->first = vx_malloc(mem, sizeof *e->first))) return VECIDX_ENOMEM;
    memset(e->first, 0, sizeof *e->first);
    return VECIDX_OK;
}

/* Claim a slot and announce the current epoch in it. The announcement is
** checked against the epoch again after it is visible (both sequentially
** consistent), so a writer that advanced the epoch in between either sees
** the announcement or the search sees the new epoch -- and with it all
** that was unlinked before. */
static uint64_t *vx_ebr_enter(vx_ebr *e, vx_mem *mem)
{
    unsigned h, i;
    h = vx_thread_no();
    for (;;) {
        vx_ebr_block *b, *last = NULL, *fresh;
        for (b = e->first; b; last = b, b = VX_LOAD(&b->next))
            for (i = 0; i < VX_EBR_SLOTS; i++) {
                uint64_t *slot = &b->s[(h + i) % VX_EBR_SLOTS].epoch, zero = 0;
                uint64_t g = __atomic_load_n(&e->epoch, __ATOMIC_SEQ_CST), now;
                if (VX_PEEK(slot) != 0 ||
                    !__atomic_compare_exchange_n(
                        slot, &zero, g, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
                    continue;
                while ((now = __atomic_load_n(&e->epoch, __ATOMIC_SEQ_CST)) !=
                       g) {
                    __atomic_store_n(slot, now, __ATOMIC_SEQ_CST);
                    g = now;
                }
                return slot;
            }
        /* Every slot is taken: add a block, or wait for a free slot if
        ** memory is short (a search never fails for want of a slot). */
        if ((fresh = vx_malloc(mem, sizeof *fresh)) != NULL) {
            vx_ebr_block *none = NULL;
            memset(fresh, 0, sizeof *fresh);
            if (!__atomic_compare_exchange_n(&last->next, &none, fresh, 0,
                                             __ATOMIC_ACQ_REL,
                                             __ATOMIC_ACQUIRE))
                vx_free(mem, fresh, sizeof *fresh);
        } else {
            sched_yield();
        }
    }
}

static void vx_ebr_exit(uint64_t *slot)
{
    VX_STORE(slot, 0);
}

/* The oldest epoch a search is still in, or UINT64_MAX when none runs. */
static uint64_t vx_ebr_oldest(const vx_ebr *e)
{
    uint64_t m = UINT64_MAX;
    const vx_ebr_block *b;
    unsigned i;
    for (b = e->first; b; b = VX_LOAD(&b->next))
        for (i = 0; i < VX_EBR_SLOTS; i++) {
            uint64_t x = __atomic_load_n(&b->s[i].epoch, __ATOMIC_SEQ_CST);
            if (x && x < m) m = x;
        }
    return m;
}

/* Close the current epoch: what was unlinked before this call is retired
** under the returned tag. */
static uint64_t vx_ebr_advance(vx_ebr *e)
{
    return __atomic_fetch_add(&e->epoch, 1, __ATOMIC_SEQ_CST);
}

/* Retire block p of n bytes under a tag from vx_ebr_advance. The node is
** allocated by the caller before it unlinks p, so retiring cannot fail. */
static void vx_ebr_retire(vx_ebr *e, vx_retired *node, void *p, size_t n,
                          uint64_t tag)
{
    node->next = NULL;
    node->p = p;
    node->n = n;
    node->tag = tag;
    if (e->tail)
        e->tail->next = node;
    else
        e->head = node;
    e->tail = node;
}

/* Free the retired blocks no search can reach any more: all of them when
** `all` (the handle is closing). */
static void vx_ebr_collect(vx_ebr *e, vx_mem *mem, uint64_t oldest, int all)
{
    while (e->head && (all || e->head->tag < oldest)) {
        vx_retired *r = e->head;
        e->head = r->next;
        vx_free(mem, r->p, r->n);
        vx_free(mem, r, sizeof *r);
    }
    if (!e->head) e->tail = NULL;
}

static void vx_ebr_destroy(vx_ebr *e, vx_mem *mem)
{
    vx_ebr_block *b = e->first;
    vx_ebr_collect(e, mem, 0, 1);
    while (b) {
        vx_ebr_block *next = b->next;
        vx_free(mem, b, sizeof *b);
        b = next;
    }
    e->first = NULL;
}

/* ---- activity counters -----------------------------------------------------
** What vecidx_stats reports of the calls made since open. A call's latency
** goes into a log-linear histogram, VX_HIST_SUB buckets to each power of
** two of nanoseconds: a percentile read back as its bucket's middle is
** within 1/(2 * VX_HIST_SUB) of the truth. Every count is a relaxed atomic
** add on memory of the handle, so recording never waits for anything;
** threads that record at once may share a cache line, which costs them
** tens of nanoseconds against a search's tens of microseconds. */

#define VX_HIST_BITS 4
#define VX_HIST_SUB (1u << VX_HIST_BITS)
#define VX_HIST_TOP 40 /* 2^40 ns = 18 minutes: longer calls go in the top */
#define VX_HIST_N ((VX_HIST_TOP - VX_HIST_BITS + 1) * VX_HIST_SUB)

typedef struct vx_hist {
    uint64_t bucket[VX_HIST_N];
    uint64_t max; /* nanoseconds */
} vx_hist;

enum {
    VX_OP_SEARCH,
    VX_OP_BATCH,
    VX_OP_INSERT,
    VX_OP_REMOVE,
    VX_OP_CKPT,
    VX_OP_N
};

typedef struct vx_activity {
    uint64_t searches, inserts, removes; /* successful, see vecidx.h */
    uint64_t dist, visit;                /* summed over searches */
    uint64_t repairs, checkpoints;
    uint64_t log_records; /* writes logged since the last checkpoint */
    uint64_t log_bytes;   /* the log's size, as the last writer left it */
    uint64_t ivf_added;   /* IVF-PQ entries added since training or open */
    uint64_t ivf_base;    /* and the entries there were then */
    uint64_t ckpt_end, ckpt_ns; /* Unix time and duration, nanoseconds */
    vx_hist hist[VX_OP_N];
} vx_activity;

/* Work of the searches running on this thread, added to the handle's
** totals once per search call (vx_search_run), not per vector. */
static _Thread_local struct {
    uint64_t dist, visit;
} vx_tally;

#define VX_COUNT(p, n) ((void)__atomic_fetch_add((p), (n), __ATOMIC_RELAXED))

static uint64_t vx_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static size_t vx_hist_bucket(uint64_t ns)
{
    unsigned e;
    if (ns < VX_HIST_SUB) return (size_t)ns;
    if (ns >> VX_HIST_TOP) return VX_HIST_N - 1;
    e = 63u - (unsigned)__builtin_clzll(ns); /* VX_HIST_BITS .. TOP - 1 */
    return (size_t)(e - VX_HIST_BITS + 1) * VX_HIST_SUB +
           (size_t)((ns >> (e - VX_HIST_BITS)) & (VX_HIST_SUB - 1));
}

/* The middle of bucket b, in nanoseconds. */
static double vx_hist_mid(size_t b)
{
    unsigned e;
    if (b < VX_HIST_SUB) return (double)b;
    e = (unsigned)(b / VX_HIST_SUB) + VX_HIST_BITS - 1;
    return ((double)(VX_HIST_SUB + b % VX_HIST_SUB) + 0.5) *
           (double)(1ull << (e - VX_HIST_BITS));
}

/* Record in h a call that began at t0 (vx_now_ns). */
static void vx_hist_add(vx_hist *h, uint64_t t0)
{
    uint64_t ns = vx_now_ns() - t0,
             m = __atomic_load_n(&h->max, __ATOMIC_RELAXED);
    VX_COUNT(&h->bucket[vx_hist_bucket(ns)], 1);
    while (ns > m &&
           !__atomic_compare_exchange_n(&h->max, &m, ns, 1, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
    }
}

/* Record a public call of kind op that began at t0 and returned rc,
** which, when it succeeded, searched, inserted or removed n; returns rc. */
static int vx_act_call(vx_activity *a, int op, uint64_t t0, int rc, uint64_t n)
{
    uint64_t *done = op == VX_OP_SEARCH || op == VX_OP_BATCH ? &a->searches
                     : op == VX_OP_INSERT                    ? &a->inserts
                     : op == VX_OP_REMOVE                    ? &a->removes
                                                             : NULL;
    if (rc == VECIDX_OK && done) VX_COUNT(done, n);
    vx_hist_add(&a->hist[op], t0);
    return rc;
}

/* Percentiles of h in microseconds (all 0 for an empty histogram). */
static void vx_hist_read(const vx_hist *h, vecidx_latency *out)
{
    static const double at[3] = {0.50, 0.95, 0.99};
    double *pct[3];
    uint64_t count[VX_HIST_N], n = 0, seen = 0;
    double max = (double)__atomic_load_n(&h->max, __ATOMIC_RELAXED);
    size_t b;
    int i = 0;
    pct[0] = &out->p50_us;
    pct[1] = &out->p95_us;
    pct[2] = &out->p99_us;
    memset(out, 0, sizeof *out);
    for (b = 0; b < VX_HIST_N; b++)
        n += count[b] = __atomic_load_n(&h->bucket[b], __ATOMIC_RELAXED);
    out->count = n;
    for (b = 0; b < VX_HIST_N && n && i < 3; b++) {
        seen += count[b];
        /* the smallest value with at least that share at or below it */
        while (i < 3 && (double)seen >= at[i] * (double)n) {
            double v = vx_hist_mid(b);
            *pct[i++] = (v < max ? v : max) / 1e3;
        }
    }
    out->max_us = n ? max / 1e3 : 0;
}

/* ======================================================================
** 2. SIMD kernels
**
** Each table holds squared L2 and inner product, one pair (a, b) and one
** query against n consecutive rows. Cosine is the inner product scaled by
** stored inverse norms, so it needs no kernel of its own. The AVX2 code is
** compiled with a target attribute, not a global -mavx2, so one binary
** runs everywhere and picks AVX2 at run time.
** ====================================================================== */

typedef struct vx_kernels {
    const char *name;
    float (*l2)(const float *a, const float *b, size_t d);
    float (*dot)(const float *a, const float *b, size_t d);
    void (*l2_many)(const float *q, const float *base, size_t n, size_t d,
                    float *out);
    void (*dot_many)(const float *q, const float *base, size_t n, size_t d,
                     float *out);
    /* Against a panel block (see VX_PANEL): out[c] = x . column c, for
    ** npanel * VX_PANEL columns of d rows. */
    void (*dot_panels)(const float *x, const float *p, size_t d, size_t npanel,
                       float *out);
    /* Product-quantizer scan: out[i] = bias + sum over j < m of
    ** lut[j * 256 + codes[i * m + j]], for n codes of m bytes. */
    void (*adc)(const uint8_t *codes, size_t n, size_t m, const float *lut,
                float bias, float *out);
    /* Index of the panel column c minimising bias[c] + scale * (x . c),
    ** lowest index on ties; its score goes to *score. Columns past the
    ** set's end must have bias +infinity. */
    uint32_t (*nearest)(const float *x, const float *p, size_t d, size_t npanel,
                        const float *bias, float scale, float *score);
} vx_kernels;

/* Vectors compared with a whole set at once (k-means centroids, the 256
** sub-centroids of a product quantizer) are stored in panels: the set is
** cut into groups of VX_PANEL vectors, and a group is stored dimension by
** dimension, VX_PANEL floats per dimension. A kernel then keeps VX_PANEL
** running sums in registers and reads the panel once, sequentially,
** instead of reducing one short dot product at a time. */
#define VX_PANEL 32u

static inline float *vx_panel_at(float *p, size_t d, size_t col, size_t i)
{
    return p + (col / VX_PANEL) * d * VX_PANEL + i * VX_PANEL + col % VX_PANEL;
}

/* Eight independent sums let the compiler vectorise without -ffast-math
** and keep the rounding error of long vectors small. */
static float vx_scalar_l2(const float *a, const float *b, size_t d)
{
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0, j;
    for (; i + 8 <= d; i += 8)
        for (j = 0; j < 8; j++) {
            float t = a[i + j] - b[i + j];
            s[j] += t * t;
        }
    for (j = 0; i < d; i++, j++) {
        float t = a[i] - b[i];
        s[j] += t * t;
    }
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

static float vx_scalar_dot(const float *a, const float *b, size_t d)
{
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0, j;
    for (; i + 8 <= d; i += 8)
        for (j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    for (j = 0; i < d; i++, j++) s[j] += a[i] * b[i];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

static void vx_scalar_l2_many(const float *q, const float *base, size_t n,
                              size_t d, float *out)
{
    size_t i;
    for (i = 0; i < n; i++) out[i] = vx_scalar_l2(q, base + i * d, d);
}

static void vx_scalar_dot_many(const float *q, const float *base, size_t n,
                               size_t d, float *out)
{
    size_t i;
    for (i = 0; i < n; i++) out[i] = vx_scalar_dot(q, base + i * d, d);
}

static void vx_scalar_dot_panels(const float *x, const float *p, size_t d,
                                 size_t npanel, float *out)
{
    size_t b, i, c;
    for (b = 0; b < npanel; b++, p += d * VX_PANEL, out += VX_PANEL) {
        float s[VX_PANEL] = {0};
        for (i = 0; i < d; i++)
            for (c = 0; c < VX_PANEL; c++) s[c] += x[i] * p[i * VX_PANEL + c];
        memcpy(out, s, sizeof s);
    }
}

/* Four codes at a time: their table reads are independent, so they
** overlap instead of waiting on one chain of additions. */
static void vx_scalar_adc(const uint8_t *codes, size_t n, size_t m,
                          const float *lut, float bias, float *out)
{
    size_t i = 0, j;
    for (; i + 4 <= n; i += 4) {
        const uint8_t *c = codes + i * m;
        float s0 = bias, s1 = bias, s2 = bias, s3 = bias;
        for (j = 0; j < m; j++) {
            const float *t = lut + j * 256;
            s0 += t[c[j]];
            s1 += t[c[m + j]];
            s2 += t[c[2 * m + j]];
            s3 += t[c[3 * m + j]];
        }
        out[i] = s0;
        out[i + 1] = s1;
        out[i + 2] = s2;
        out[i + 3] = s3;
    }
    for (; i < n; i++) {
        float s = bias;
        for (j = 0; j < m; j++) s += lut[j * 256 + codes[i * m + j]];
        out[i] = s;
    }
}

static uint32_t vx_scalar_nearest(const float *x, const float *p, size_t d,
                                  size_t npanel, const float *bias, float scale,
                                  float *score)
{
    float dot[VX_PANEL], best = INFINITY;
    uint32_t bi = 0;
    size_t b, c;
    for (b = 0; b < npanel; b++) {
        vx_scalar_dot_panels(x, p + b * d * VX_PANEL, d, 1, dot);
        for (c = 0; c < VX_PANEL; c++) {
            float v = bias[b * VX_PANEL + c] + scale * dot[c];
            if (v < best) {
                best = v;
                bi = (uint32_t)(b * VX_PANEL + c);
            }
        }
    }
    *score = best;
    return bi;
}

static const vx_kernels vx_kern_scalar = {
    "scalar",           vx_scalar_l2,         vx_scalar_dot, vx_scalar_l2_many,
    vx_scalar_dot_many, vx_scalar_dot_panels, vx_scalar_adc, vx_scalar_nearest};

#if defined(VX_HAVE_AVX2)
#define VX_AVX2 __attribute__((target("avx2,fma")))

VX_AVX2 static inline float vx_avx2_hsum(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* The tail (d % 8 elements) is read with a masked load, so odd dimensions
** cost one extra step instead of a scalar loop. */
VX_AVX2 static inline __m256i vx_avx2_tailmask(size_t rem)
{
    static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                  0,  0,  0,  0,  0,  0,  0,  0};
    return _mm256_loadu_si256((const __m256i *)(const void *)(m + 8 - rem));
}

VX_AVX2 static inline float vx_avx2_l2_inl(const float *a, const float *b,
                                           size_t d)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps(), t;
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i),
                                  _mm256_loadu_ps(b + i));
        __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8),
                                  _mm256_loadu_ps(b + i + 8));
        __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 16),
                                  _mm256_loadu_ps(b + i + 16));
        __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 24),
                                  _mm256_loadu_ps(b + i + 24));
        s0 = _mm256_fmadd_ps(d0, d0, s0);
        s1 = _mm256_fmadd_ps(d1, d1, s1);
        s2 = _mm256_fmadd_ps(d2, d2, s2);
        s3 = _mm256_fmadd_ps(d3, d3, s3);
    }
    for (; i + 8 <= d; i += 8) {
        t = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        s0 = _mm256_fmadd_ps(t, t, s0);
    }
    if (i < d) {
        __m256i m = vx_avx2_tailmask(d - i);
        t = _mm256_sub_ps(_mm256_maskload_ps(a + i, m),
                          _mm256_maskload_ps(b + i, m));
        s1 = _mm256_fmadd_ps(t, t, s1);
    }
    return vx_avx2_hsum(
        _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

VX_AVX2 static inline float vx_avx2_dot_inl(const float *a, const float *b,
                                            size_t d)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i),
                             s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8),
                             _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16),
                             _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24),
                             _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= d; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i),
                             s0);
    if (i < d) {
        __m256i m = vx_avx2_tailmask(d - i);
        s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m),
                             _mm256_maskload_ps(b + i, m), s1);
    }
    return vx_avx2_hsum(
        _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

VX_AVX2 static float vx_avx2_l2(const float *a, const float *b, size_t d)
{
    return vx_avx2_l2_inl(a, b, d);
}

VX_AVX2 static float vx_avx2_dot(const float *a, const float *b, size_t d)
{
    return vx_avx2_dot_inl(a, b, d);
}

/* Prefetching a few rows ahead keeps the scan at memory bandwidth when the
** rows are larger than the hardware prefetcher's stride window. */
VX_AVX2 static void vx_avx2_l2_many(const float *q, const float *base, size_t n,
                                    size_t d, float *out)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (i + 4 < n)
            _mm_prefetch((const char *)(base + (i + 4) * d), _MM_HINT_T0);
        out[i] = vx_avx2_l2_inl(q, base + i * d, d);
    }
}

VX_AVX2 static void vx_avx2_dot_many(const float *q, const float *base,
                                     size_t n, size_t d, float *out)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (i + 4 < n)
            _mm_prefetch((const char *)(base + (i + 4) * d), _MM_HINT_T0);
        out[i] = vx_avx2_dot_inl(q, base + i * d, d);
    }
}

VX_AVX2 static void vx_avx2_dot_panels(const float *x, const float *p, size_t d,
                                       size_t npanel, float *out)
{
    size_t b, i;
    for (b = 0; b < npanel; b++, out += VX_PANEL) {
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
        __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
        for (i = 0; i < d; i++, p += VX_PANEL) {
            __m256 xi = _mm256_broadcast_ss(x + i);
            s0 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(p), s0);
            s1 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(p + 8), s1);
            s2 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(p + 16), s2);
            s3 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(p + 24), s3);
        }
        _mm256_storeu_ps(out, s0);
        _mm256_storeu_ps(out + 8, s1);
        _mm256_storeu_ps(out + 16, s2);
        _mm256_storeu_ps(out + 24, s3);
    }
}

/* Eight table reads per gather instruction; two codes in flight. */
VX_AVX2 static void vx_avx2_adc(const uint8_t *codes, size_t n, size_t m,
                                const float *lut, float bias, float *out)
{
    const __m256i step = _mm256_setr_epi32(0, 256, 512, 768, 1024, 1280, 1536,
                                           1792);
    size_t m8 = m & ~(size_t)7, i = 0, j;
    if (m8 == 0) {
        vx_scalar_adc(codes, n, m, lut, bias, out);
        return;
    }
    for (; i + 2 <= n; i += 2) {
        const uint8_t *c0 = codes + i * m, *c1 = c0 + m;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        float r0 = bias, r1 = bias;
        for (j = 0; j < m8; j += 8) {
            __m256i off = _mm256_add_epi32(step,
                                           _mm256_set1_epi32((int)j * 256));
            __m256i i0 = _mm256_cvtepu8_epi32(
                _mm_loadl_epi64((const __m128i *)(const void *)(c0 + j)));
            __m256i i1 = _mm256_cvtepu8_epi32(
                _mm_loadl_epi64((const __m128i *)(const void *)(c1 + j)));
            a0 = _mm256_add_ps(
                a0, _mm256_i32gather_ps(lut, _mm256_add_epi32(i0, off), 4));
            a1 = _mm256_add_ps(
                a1, _mm256_i32gather_ps(lut, _mm256_add_epi32(i1, off), 4));
        }
        for (; j < m; j++) {
            r0 += lut[j * 256 + c0[j]];
            r1 += lut[j * 256 + c1[j]];
        }
        out[i] = r0 + vx_avx2_hsum(a0);
        out[i + 1] = r1 + vx_avx2_hsum(a1);
    }
    if (i < n) vx_scalar_adc(codes + i * m, n - i, m, lut, bias, out + i);
}

/* Eight columns' scores, scale * s + bias, into the running minimum. */
VX_AVX2 static inline void vx_avx2_nearest_fold(__m256 s, __m256 sc,
                                                const float *bias,
                                                __m256 *bestv, __m256i *besti,
                                                __m256i *col)
{
    __m256 v = _mm256_fmadd_ps(sc, s, _mm256_loadu_ps(bias));
    __m256 lt = _mm256_cmp_ps(v, *bestv, _CMP_LT_OQ);
    *bestv = _mm256_blendv_ps(*bestv, v, lt);
    *besti = _mm256_castps_si256(_mm256_blendv_ps(
        _mm256_castsi256_ps(*besti), _mm256_castsi256_ps(*col), lt));
    *col = _mm256_add_epi32(*col, _mm256_set1_epi32(8));
}

/* Scores and the running minimum stay in registers: per lane the best
** value and its column, merged across lanes once at the end. */
VX_AVX2 static uint32_t vx_avx2_nearest(const float *x, const float *p,
                                        size_t d, size_t npanel,
                                        const float *bias, float scale,
                                        float *score)
{
    __m256 bestv = _mm256_set1_ps(INFINITY), sc = _mm256_set1_ps(scale);
    __m256i besti = _mm256_setzero_si256();
    __m256i col = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    float bv[8], best = INFINITY;
    int32_t bi[8];
    uint32_t win = 0;
    size_t b, i;
    int g;
    for (b = 0; b < npanel; b++) {
        /* Named sums, not an array: gcc -O2 kept an array on the stack
        ** (see vx_avx512vnni_i8_sums4), and ASan checked every access. */
        __m256 s0, s1, s2, s3;
        const float *bb = bias + b * VX_PANEL;
        s0 = s1 = s2 = s3 = _mm256_setzero_ps();
        for (i = 0; i < d; i++, p += VX_PANEL) {
            __m256 xi = _mm256_broadcast_ss(x + i);
            s0 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(p), s0);
            s1 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(p + 8), s1);
            s2 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(p + 16), s2);
            s3 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(p + 24), s3);
        }
        vx_avx2_nearest_fold(s0, sc, bb, &bestv, &besti, &col);
        vx_avx2_nearest_fold(s1, sc, bb + 8, &bestv, &besti, &col);
        vx_avx2_nearest_fold(s2, sc, bb + 16, &bestv, &besti, &col);
        vx_avx2_nearest_fold(s3, sc, bb + 24, &bestv, &besti, &col);
    }
    _mm256_storeu_ps(bv, bestv);
    _mm256_storeu_si256((__m256i *)(void *)bi, besti);
    for (g = 0; g < 8; g++)
        if (bv[g] < best || (bv[g] == best && (uint32_t)bi[g] < win)) {
            best = bv[g];
            win = (uint32_t)bi[g];
        }
    *score = best;
    return win;
}

static const vx_kernels vx_kern_avx2 = {
    "avx2",           vx_avx2_l2,         vx_avx2_dot, vx_avx2_l2_many,
    vx_avx2_dot_many, vx_avx2_dot_panels, vx_avx2_adc, vx_avx2_nearest};

/* AVX-512F: 16 lanes, and the tail is one masked load with no scalar
** loop, which matters for the odd dimensions of real embeddings. */
#define VX_AVX512 __attribute__((target("avx512f")))

VX_AVX512 static inline float vx_avx512_l2_inl(const float *a, const float *b,
                                               size_t d)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), t;
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i),
                                  _mm512_loadu_ps(b + i));
        __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16),
                                  _mm512_loadu_ps(b + i + 16));
        s0 = _mm512_fmadd_ps(d0, d0, s0);
        s1 = _mm512_fmadd_ps(d1, d1, s1);
    }
    for (; i + 16 <= d; i += 16) {
        t = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        s0 = _mm512_fmadd_ps(t, t, s0);
    }
    if (i < d) {
        __mmask16 m = (__mmask16)((1u << (d - i)) - 1);
        t = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i),
                          _mm512_maskz_loadu_ps(m, b + i));
        s1 = _mm512_fmadd_ps(t, t, s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

VX_AVX512 static inline float vx_avx512_dot_inl(const float *a, const float *b,
                                                size_t d)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i),
                             s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16),
                             _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i + 16 <= d; i += 16)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i),
                             s0);
    if (i < d) {
        __mmask16 m = (__mmask16)((1u << (d - i)) - 1);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i),
                             _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

VX_AVX512 static float vx_avx512_l2(const float *a, const float *b, size_t d)
{
    return vx_avx512_l2_inl(a, b, d);
}

VX_AVX512 static float vx_avx512_dot(const float *a, const float *b, size_t d)
{
    return vx_avx512_dot_inl(a, b, d);
}

VX_AVX512 static void vx_avx512_l2_many(const float *q, const float *base,
                                        size_t n, size_t d, float *out)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (i + 4 < n)
            _mm_prefetch((const char *)(base + (i + 4) * d), _MM_HINT_T0);
        out[i] = vx_avx512_l2_inl(q, base + i * d, d);
    }
}

VX_AVX512 static void vx_avx512_dot_many(const float *q, const float *base,
                                         size_t n, size_t d, float *out)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (i + 4 < n)
            _mm_prefetch((const char *)(base + (i + 4) * d), _MM_HINT_T0);
        out[i] = vx_avx512_dot_inl(q, base + i * d, d);
    }
}

static const vx_kernels vx_kern_avx512 = {
    "avx512",           vx_avx512_l2,       vx_avx512_dot, vx_avx512_l2_many,
    vx_avx512_dot_many, vx_avx2_dot_panels, vx_avx2_adc,   vx_avx2_nearest};
#endif /* VX_HAVE_AVX2 */

#if defined(VX_HAVE_NEON)
#if defined(__aarch64__)
#define VX_NEON_FMA(acc, x, y) vfmaq_f32(acc, x, y)
#define VX_NEON_HSUM(v) vaddvq_f32(v)
#else
#define VX_NEON_FMA(acc, x, y) vmlaq_f32(acc, x, y)
static inline float VX_NEON_HSUM(float32x4_t v)
{
    float32x2_t s = vadd_f32(vget_low_f32(v), vget_high_f32(v));
    return vget_lane_f32(vpadd_f32(s, s), 0);
}
#endif

static float vx_neon_l2(const float *a, const float *b, size_t d)
{
    float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0);
    float32x4_t s2 = vdupq_n_f32(0), s3 = vdupq_n_f32(0), t;
    float r;
    size_t i = 0;
    for (; i + 16 <= d; i += 16) {
        float32x4_t d0 = vsubq_f32(vld1q_f32(a + i), vld1q_f32(b + i));
        float32x4_t d1 = vsubq_f32(vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        float32x4_t d2 = vsubq_f32(vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
        float32x4_t d3 = vsubq_f32(vld1q_f32(a + i + 12),
                                   vld1q_f32(b + i + 12));
        s0 = VX_NEON_FMA(s0, d0, d0);
        s1 = VX_NEON_FMA(s1, d1, d1);
        s2 = VX_NEON_FMA(s2, d2, d2);
        s3 = VX_NEON_FMA(s3, d3, d3);
    }
    for (; i + 4 <= d; i += 4) {
        t = vsubq_f32(vld1q_f32(a + i), vld1q_f32(b + i));
        s0 = VX_NEON_FMA(s0, t, t);
    }
    r = VX_NEON_HSUM(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < d; i++) r += (a[i] - b[i]) * (a[i] - b[i]);
    return r;
}

static float vx_neon_dot(const float *a, const float *b, size_t d)
{
    float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0);
    float32x4_t s2 = vdupq_n_f32(0), s3 = vdupq_n_f32(0);
    float r;
    size_t i = 0;
    for (; i + 16 <= d; i += 16) {
        s0 = VX_NEON_FMA(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = VX_NEON_FMA(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        s2 = VX_NEON_FMA(s2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
        s3 = VX_NEON_FMA(s3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
    }
    for (; i + 4 <= d; i += 4)
        s0 = VX_NEON_FMA(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    r = VX_NEON_HSUM(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < d; i++) r += a[i] * b[i];
    return r;
}

static void vx_neon_l2_many(const float *q, const float *base, size_t n,
                            size_t d, float *out)
{
    size_t i;
    for (i = 0; i < n; i++) out[i] = vx_neon_l2(q, base + i * d, d);
}

static void vx_neon_dot_many(const float *q, const float *base, size_t n,
                             size_t d, float *out)
{
    size_t i;
    for (i = 0; i < n; i++) out[i] = vx_neon_dot(q, base + i * d, d);
}

/* The panel and code-scan loops are plain C: with Advanced SIMD as the
** baseline, the compiler vectorises the scalar versions well. */
static const vx_kernels vx_kern_neon = {
    "neon",           vx_neon_l2,           vx_neon_dot,   vx_neon_l2_many,
    vx_neon_dot_many, vx_scalar_dot_panels, vx_scalar_adc, vx_scalar_nearest};
#endif /* VX_HAVE_NEON */

/* ---- Quantized storage: int8 codes, half precision, binary codes ------
**
** Compressed vectors trade accuracy for memory and bandwidth: int8 codes
** take a quarter of float32, half precision a half, binary codes one bit
** per dimension. The CPU extensions these kernels want (VNNI, F16C, the
** Armv8.2 dot product) come and go independently of the AVX2 /
** AVX-512 level that picks the float32 table, so the choice is made per
** kernel (vx_qkern_pick), from one feature mask (vx_qkern_features). */

/* After an int8 code: its map back to floats (component i is off + scale *
** code[i]), the sum of its codes and the squared norm of the vector it
** decodes to. */
typedef struct vx_i8hdr {
    float scale, off;
    int32_t sum;
    float n2;
} vx_i8hdr;

/* An int8 code's vx_i8hdr follows its codes, padded to a word. */
static inline vx_i8hdr *vx_i8_hdr(const void *code, uint32_t dim)
{
    return (vx_i8hdr *)(void *)((unsigned char *)(uintptr_t)code +
                                (dim + 3) / 4 * 4);
}

/* An int8 query code's header, in the terms vx_i8_dist wants: both sides
** of a pair decode to off + scale * code, so their dot product is
**   dim qoff boff + qoff bscale bsum + boff qscale qsum + qscale bscale dq
** for the integer dot product dq of the codes, and the terms of the query
** alone are gathered once. L2 comes from it and the two norms, in double,
** where the terms may cancel.
**
** A float32 query also has its rounding error coded, in rc: the query is
** then off + scale * code + rscale * rc, whose dot product with a code
** adds bscale rscale dr (dr the integer dot product of rc with the code)
** and boff rscale rsum, which c holds. The query's own error is then a
** 127th of the code's, and an exact scan of 200k x 384 int8 codes finds
** 0.990 of the true ten nearest, as a float32 query would, against 0.982
** with the query coded like a stored vector. A stored node as the query
** has no rc (rscale 0). */
typedef struct vx_i8q {
    double off, scale, c; /* c = dim off + scale sum + rscale rsum */
    double n2;
    const int8_t *rc; /* NULL, or dim codes padded with zeros to 4 */
    double rscale;
    /* A float32 query (rc set): its norm and the norm of what its code
    ** and rc leave out, for vx_i8_floor; a stored node: both 0. */
    double norm, err;
    size_t past; /* rows kernels: rows after the n to score that the scan
                    reads next, in the same array, to request ahead */
} vx_i8q;

static inline vx_i8q vx_i8_query(const vx_i8hdr *a, uint32_t dim)
{
    vx_i8q q;
    q.off = a->off;
    q.scale = a->scale;
    q.c = (double)dim * a->off + (double)a->scale * a->sum;
    q.n2 = a->n2;
    q.rc = NULL;
    q.rscale = 0;
    q.norm = 0;
    q.err = 0;
    q.past = 0;
    return q;
}

/* Distance between the int8 query q and a code with header b, whose
** integer dot product is dq. Every path that scores int8 codes ends
** here, so that a pair gets one distance.
**
** Cosine codes hold unit vectors, and their cosine distance is taken as
** half the squared distance between the decoded vectors, not 1 - dot:
** 1 - dot errs by q.e for a code's error e, the half square by about
** (q - x).e, which is small exactly for near neighbours. An exact scan of
** 200k x 384 int8 codes found 0.982 of the true ten nearest this way,
** against 0.969 by 1 - dot. */
static inline float vx_i8_dist(int metric, const vx_i8q *q, const vx_i8hdr *b,
                               int32_t dq, int32_t dr)
{
    double dot = b->off * q->c + b->scale * (q->off * b->sum +
                                             (q->scale * dq + q->rscale * dr)),
           d;
    if (metric == VECIDX_IP) return (float)-dot;
    d = q->n2 + b->n2 - 2 * dot;
    if (metric != VECIDX_L2) d = 0.5 * d;
    return d > 0 ? (float)d : 0.0f;
}

/* A floor under the exact distance (vx_full_score's) of the vector whose
** code b scored d = vx_i8_dist against a float32 query q, so that a
** re-rank can leave unread a candidate that cannot enter its results.
** Every component of a code lies within half a step of the vector's
** (scaled to unit length under cosine): the vector is within e = scale
** sqrt(dim) / 2 of the point its code decodes to, and the query within
** q->err of the point its codes stand for. L2 and cosine (half the
** squared L2 distance of unit vectors) take both off the root of the
** squared distance; inner product takes off what they can move of the
** dot product. What float32 rounds is taken off too: d itself (its
** stored norm is a float), the exact score's sum of dim terms (g, after
** Higham's gamma, and u for terms that underflow, scaled under cosine by
** the stored inverse norm inorm and at most 2^21 for the query's, see
** vx_query_far), a unit vector's norm, the encoding (a spread of a few
** ulps of its offset leaves a component up to half an ulp of the offset
** past its code), and the floor's own last digit. No floor where the
** exact score's float32 sum may overflow (|q| |x| bounds every partial
** sum; a cosine query's norm is at most 2^20), nor for a stored node as
** the query (no rc). */
static inline float vx_i8_floor(int metric, const vx_i8q *q, const vx_i8hdr *b,
                                uint32_t dim, float d, float inorm)
{
    double e = sqrt((double)dim) * ((double)b->scale / 2 * (1 + 1e-4) +
                                    fabs((double)b->off) * 0x1p-24),
           g, u, r;
    if (!q->rc || !(d >= -FLT_MAX && d <= FLT_MAX)) return -INFINITY;
    g = ((double)dim + 12) * 0x1p-24;
    u = (double)dim * FLT_MIN;
    if (metric == VECIDX_IP) {
        double xn = sqrt(b->n2);
        if (q->norm * (xn + e) * (1 + g) >= FLT_MAX) return -INFINITY;
        r = d - fabs(d) * 0x1p-23 - q->err * xn - q->norm * e -
            g * q->norm * (xn + e) - u;
        r -= 1e-4 * fabs(r);
    } else {
        double a2 = metric == VECIDX_L2 ? (double)d : 2.0 * d;
        if (metric == VECIDX_COSINE &&
            0x1p20 / inorm * (1 + g + 0x1p-22) >= FLT_MAX)
            return -INFINITY;
        a2 -= (a2 + b->n2) * 0x1p-23;
        r = sqrt(a2 > 0 ? a2 : 0) - q->err - e;
        r = r > 0 ? r * r * (1 - 1e-4) : 0;
        r = metric == VECIDX_L2 ? r * (1 - g) - u
                                : 0.5 * r - g - u * 0x1p21 * inorm;
    }
    return nextafterf((float)r, -INFINITY);
}

/* The early exit of a walk that estimates (see vx_hnsw_layer): the look
** after (j + 1) * VX_L2_BOUND_STEP dimensions gives the distance up once
** its partial sum passes bound * at[j] (at NULL: bound itself), and part,
** when not NULL, receives the partial sum of each look made. Looks past
** VX_CUT_LOOKS test the bound itself and record nothing. */
#define VX_CUT_LOOKS 32u
typedef struct vx_cut {
    const float *at;
    float *part;
} vx_cut;

typedef struct vx_qkernels {
    /* sum a[i] b[i], exact for codes in [-127, 127] and d <= 65536. bsum
    ** is sum b[i], stored with b: kernels that bias a to unsigned bytes
    ** take its contribution back off. */
    int32_t (*dot_i8)(const int8_t *a, const int8_t *b, size_t d, int32_t bsum);
    /* out[r] = vx_i8_dist(metric, qi, ...) of the int8 query code qc (qi
    ** its terms, with qi->rc when not NULL) and the code at rows + r *
    ** stride bytes, or at at[r] when
    ** at is not NULL, r < n, bit for bit: an exact scan scores a block of
    ** codes in one call, a graph walk a node's neighbours, and several
    ** rows share the horizontal sums' shuffles and the distances' steps.
    ** Only strided rows are requested ahead. */
    void (*i8_dists)(const int8_t *qc, const vx_i8q *qi, int metric,
                     const int8_t *rows, size_t stride, const int8_t *const *at,
                     size_t n, size_t d, float *out);
    /* float32 query q against half-precision codes c */
    float (*l2_f16)(const float *q, const uint16_t *c, size_t d);
    float (*dot_f16)(const float *q, const uint16_t *c, size_t d);
    /* two half-precision codes */
    float (*l2_hh)(const uint16_t *a, const uint16_t *b, size_t d);
    float (*dot_hh)(const uint16_t *a, const uint16_t *b, size_t d);
    /* differing bits of two binary codes of nwords 64-bit words */
    /* sum of q[i] over the bits i set in a binary code of d bits: a float32
    ** query scored against signs, far finer than two bit strings' Hamming
    ** distance (searches over binary storage stalled at recall 0.84) */
    float (*bin_sum)(const float *q, const uint64_t *bits, size_t d);
    /* Squared L2, bit for bit the float32 table's l2 when that is <= bound
    ** and no look of cut (may be NULL, see vx_cut) gave up; otherwise
    ** some value > bound, found without reading all of a and b when a
    ** partial sum already exceeds the bound, and infinity when a look of
    ** cut gave up below it. */
    float (*l2_bound)(const float *a, const float *b, size_t d, float bound,
                      const vx_cut *cut);
    /* Set bits in n words. With sum, also marks each block b of eight
    ** words w[8b .. 8b + 8) that holds a set bit: bit b % 64 of sum[b /
    ** 64], which the caller zeroed. A walk of a sparse bitmap then visits
    ** only the marked blocks. */
    uint64_t (*count_bits)(const uint64_t *w, size_t n, uint64_t *sum);
    /* sum v[i]^2 in double, bit for bit the same in every kernel (see
    ** vx_sumsq) */
    double (*sumsq)(const float *v, size_t n);
    /* out[i] = v[i] * s, one rounding each: the same in every kernel */
    void (*scale)(float *out, const float *v, float s, size_t n);
} vx_qkernels;

/* CPU features, as found by vx_qkern_features. VX_QF_AVX2 and
** VX_QF_AVX512 are exactly the conditions vx_kern_detect uses for the
** "avx2" and "avx512" tables: l2_bound must follow the table in use. */
#define VX_QF_AVX2 0x01u     /* AVX2 and FMA */
#define VX_QF_AVX512 0x02u   /* AVX-512F, on top of VX_QF_AVX2 */
#define VX_QF_F16C 0x04u     /* F16C, on top of VX_QF_AVX2 */
#define VX_QF_AVX512BW 0x10u /* AVX-512BW, on top of VX_QF_AVX512 */
#define VX_QF_VNNI 0x20u     /* AVX512-VNNI, on top of VX_QF_AVX512BW */
#define VX_QF_VPOPCNT 0x40u  /* AVX512-VPOPCNTDQ, on top of VX_QF_AVX512 */
#define VX_QF_DOTPROD 0x80u  /* Armv8.2 SDOT (aarch64) */

/* Dimensions summed between two looks at the bound in the l2_bound
** kernels: a look costs a horizontal sum, so it pays only after enough
** work, and vectors this short never see one. */
#if !defined(VX_L2_BOUND_STEP)
#define VX_L2_BOUND_STEP 128u
#endif
/* Whole steps of every kernel (up to 32 floats) end on a look. */
_Static_assert(VX_L2_BOUND_STEP % 32 == 0, "VX_L2_BOUND_STEP");

/* -- int8 ---------------------------------------------------------------- */

/* Integer sums are exact in any order: one plain loop, which the compiler
** vectorises. */
static int32_t vx_scalar_dot_i8(const int8_t *a, const int8_t *b, size_t d,
                                int32_t bsum)
{
    int32_t s = 0;
    size_t i;
    (void)bsum;
    for (i = 0; i < d; i++) s += a[i] * b[i];
    return s;
}

/* How far ahead of the rows being scored the rows kernels request codes.
** Measured on a 1M x 128 int8 scan against the row-at-a-time scan before
** it (paired passes, another process busy on the second core): with only
** the hardware's prefetching the rows kernel ran at 0.86-0.90x of it;
** requesting 1.1 / 2.3 / 4.6 / 9.2 / 18 KiB ahead gave 1.12 / 1.18 /
** 1.34 / 1.24 / 1.33x. */
#define VX_SCAN_AHEAD_BYTES 4096u

/* Request, VX_SCAN_AHEAD_BYTES ahead, what scoring rows [r, r + m) of
** rows reads, up to row n (the rows to score and those the scan reads
** next in the array, vx_i8q.past): past the array lie the chunk's keys
** and states, or its kept float32 vectors. */
static inline void vx_i8_rows_prefetch(const int8_t *rows, size_t stride,
                                       size_t r, size_t m, size_t n)
{
    size_t from = r * stride + VX_SCAN_AHEAD_BYTES;
    size_t to = (r + m) * stride + VX_SCAN_AHEAD_BYTES, i;
    if (to > n * stride) to = n * stride;
    for (i = from; i < to; i += 64) __builtin_prefetch(rows + i);
}
/* The rows kernel of a single-pair kernel that ignores bsum, as all but
** VNNI's do: a row at a time. */
#define VX_I8_DISTS_EACH(attr, name, one)                                   \
    attr static void name(const int8_t *qc, const vx_i8q *qi, int metric,   \
                          const int8_t *rows, size_t stride,                \
                          const int8_t *const *at, size_t n, size_t d,      \
                          float *out)                                       \
    {                                                                       \
        size_t r;                                                           \
        for (r = 0; r < n; r++) {                                           \
            const int8_t *b = at ? at[r] : rows + r * stride;               \
            if (!at) vx_i8_rows_prefetch(rows, stride, r, 1, n + qi->past); \
            out[r] = vx_i8_dist(metric, qi, vx_i8_hdr(b, (uint32_t)d),      \
                                one(qc, b, d, 0),                           \
                                qi->rc ? one(qi->rc, b, d, 0) : 0);         \
        }                                                                   \
    }

VX_I8_DISTS_EACH(, vx_scalar_i8_dists, vx_scalar_dot_i8)

/* -- half precision -------------------------------------------------------
** IEEE binary16 by bit manipulation, so that results do not depend on the
** CPU (F16C, Arm FP16) or on the floating-point environment: no float
** subnormal is ever produced or read, so flush-to-zero modes set by the
** host program change nothing. */

#define VX_F16_MAX_BITS 0x477fe000u /* 65504, the largest half, as float */

/* Round to nearest, ties to even. Finite values beyond +-65504 become
** +-65504, counted in *clamped: a distance computed with an infinity
** would be infinite or NaN for every query. Infinities and NaNs pass
** through (vecidx rejects them before they get here). */
static uint16_t vx_f16_from_f32(float f, size_t *clamped)
{
    uint32_t x, sign, mag, m, s, h, rem, half;
    memcpy(&x, &f, sizeof x);
    sign = (x >> 16) & 0x8000u;
    mag = x & 0x7fffffffu;
    if (mag > VX_F16_MAX_BITS) {
        if (mag > 0x7f800000u) /* NaN: quiet, top payload bits kept */
            return (uint16_t)(sign | 0x7e00u | ((mag >> 13) & 0x1ffu));
        if (mag == 0x7f800000u) return (uint16_t)(sign | 0x7c00u);
        (*clamped)++;
        return (uint16_t)(sign | 0x7bffu);
    }
    if (mag >= 0x38800000u) { /* normal: rebias, round the 13 bits dropped */
        h = (mag - 0x38000000u + 0xfffu + ((mag >> 13) & 1u)) >> 13;
        return (uint16_t)(sign | h);
    }
    if (mag <= 0x33000000u) /* at most half the smallest subnormal: zero */
        return (uint16_t)sign;
    /* Subnormal: the significand with its implicit bit, shifted right by
    ** 14 to 24 places; rounding up may carry into the smallest normal,
    ** whose encoding is the next integer, so that is right too. */
    m = (mag & 0x7fffffu) | 0x800000u;
    s = 126u - (mag >> 23);
    h = m >> s;
    rem = m & ((1u << s) - 1u);
    half = 1u << (s - 1u);
    if (rem > half || (rem == half && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

/* Exact: every half is a float. Normal halves rebias the exponent by
** 127 - 15, infinity and NaN by twice that (the float exponent is all
** ones), and subnormals are an integer times 2^-24, which stays clear of
** float subnormals. Selected by masks, not branches: the scalar distance
** kernels run twice as fast. */
static inline float vx_f16_to_f32(uint16_t h)
{
    uint32_t mag = (uint32_t)h & 0x7fffu, bits, sub, small;
    float f = (float)(int32_t)mag * 0x1p-24f;
    memcpy(&sub, &f, sizeof sub);
    bits = (mag << 13) + 0x38000000u + (uint32_t)(mag >= 0x7c00u) * 0x38000000u;
    small = 0u - (uint32_t)(mag < 0x0400u);
    bits = ((bits & ~small) | (sub & small)) | ((uint32_t)h & 0x8000u) << 16;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Returns how many components were clamped to +-65504, for the caller to
** report. */
static size_t vx_f16_encode(const float *x, uint16_t *out, size_t d)
{
    size_t i, clamped = 0;
    for (i = 0; i < d; i++) out[i] = vx_f16_from_f32(x[i], &clamped);
    return clamped;
}

/* The sums are vx_scalar_l2's: eight of them, for the same accuracy. */
static float vx_scalar_l2_f16(const float *q, const uint16_t *c, size_t d)
{
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0, j;
    for (; i + 8 <= d; i += 8)
        for (j = 0; j < 8; j++) {
            float t = q[i + j] - vx_f16_to_f32(c[i + j]);
            s[j] += t * t;
        }
    for (j = 0; i < d; i++, j++) {
        float t = q[i] - vx_f16_to_f32(c[i]);
        s[j] += t * t;
    }
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

static float vx_scalar_dot_f16(const float *q, const uint16_t *c, size_t d)
{
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0, j;
    for (; i + 8 <= d; i += 8)
        for (j = 0; j < 8; j++) s[j] += q[i + j] * vx_f16_to_f32(c[i + j]);
    for (j = 0; i < d; i++, j++) s[j] += q[i] * vx_f16_to_f32(c[i]);
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

/* Two half-precision codes: a stored node seen as a query, while a graph
** over half-precision storage is built or repaired. */
static float vx_scalar_l2_hh(const uint16_t *a, const uint16_t *b, size_t d)
{
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i;
    for (i = 0; i < d; i++) {
        float t = vx_f16_to_f32(a[i]) - vx_f16_to_f32(b[i]);
        s[i % 8] += t * t;
    }
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

static float vx_scalar_dot_hh(const uint16_t *a, const uint16_t *b, size_t d)
{
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i;
    for (i = 0; i < d; i++)
        s[i % 8] += vx_f16_to_f32(a[i]) * vx_f16_to_f32(b[i]);
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

/* -- binary -------------------------------------------------------------- */

/* Bit i of the code is bit i % 64 of word i / 64; bits past d stay zero,
** so codes of one dimension compare word by word. */
static void vx_bin_encode(const float *x, uint64_t *out, size_t d)
{
    size_t w, i, n;
    for (w = 0; w * 64 < d; w++) {
        uint64_t bits = 0;
        n = d - w * 64 < 64 ? d - w * 64 : 64;
        for (i = 0; i < n; i++) bits |= (uint64_t)(x[w * 64 + i] > 0.0f) << i;
        out[w] = bits;
    }
}

/* Selected by multiplying with 0 or 1, not by branches on random bits. */
static float vx_scalar_bin_sum(const float *q, const uint64_t *bits, size_t d)
{
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i;
    for (i = 0; i < d; i++)
        s[i % 8] += q[i] * (float)((bits[i / 64] >> (i % 64)) & 1u);
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

/* Set bits in n words (an allowed-set bitmap is counted on every search
** that gets one). Without a popcount instruction __builtin_popcountll is
** a library call per word; this is the classic bit-slicing sum. */
static uint64_t vx_scalar_count_bits(const uint64_t *w, size_t n, uint64_t *sum)
{
    uint64_t c = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        uint64_t x = w[i];
        if (sum && x) sum[i >> 9] |= (uint64_t)1 << (i >> 3 & 63);
        x -= (x >> 1) & 0x5555555555555555ull;
        x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
        x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
        c += (x * 0x0101010101010101ull) >> 56;
    }
    return c;
}

/* -- early-abandoning L2 --------------------------------------------------
** Each l2_bound kernel is its ISA's l2 kernel, same sums in the same
** order, with a look at the partial result every VX_L2_BOUND_STEP
** dimensions. The look sums the partial accumulators with the same final
** reduction. Each accumulator only grows (it adds squares, and rounding is
** monotonic), and so does the reduction of them: a partial result above
** the bound proves the full one is too, and a full result within the
** bound is never cut short, so it is bit for bit the l2 kernel's. */

static inline float vx_scalar_sum8(const float *s)
{
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

/* Where the block of whole unrolled steps that starts at i ends: blocks of
** VX_L2_BOUND_STEP, or up to end. Their inner loops stay as plain as the
** l2 kernels' (the compiler vectorises the scalar one). */
static inline size_t vx_bound_next(size_t i, size_t end)
{
    return end - i > VX_L2_BOUND_STEP ? i + VX_L2_BOUND_STEP : end;
}

/* Whether the look at partial sum part, made after i dimensions, gives
** the distance up. A zero in at (no sample showed any share there)
** tests the bound itself, so no candidate is given up on no evidence. */
static inline int vx_bound_over(float part, float bound, const vx_cut *cut,
                                size_t i)
{
    size_t j = i / VX_L2_BOUND_STEP - 1;
    if (!cut || j >= VX_CUT_LOOKS) return part > bound;
    if (cut->part) cut->part[j] = part;
    return cut->at && cut->at[j] > 0.0f ? part > bound * cut->at[j]
                                        : part > bound;
}

/* What a distance given up at partial sum part returns: more than bound,
** as the contract of l2_bound has it; infinity when the look gave up
** below the bound, on an estimate. */
static inline float vx_bound_past(float part, float bound)
{
    return part > bound ? part : INFINITY;
}

/* Request the block of b after the one ending at next, while that one is
** summed. A graph walk that abandons distances requests only a vector's
** first block ahead (VX_BOUND_PF): most neighbours stop there, and the
** rest of theirs would be memory traffic for nothing. */
static inline void vx_bound_prefetch(const float *b, size_t next, size_t d)
{
    size_t j;
    for (j = next; j < next + VX_L2_BOUND_STEP && j < d; j += 16)
        __builtin_prefetch(b + j);
}

/* The squares of the whole groups of 8 in a[0, n), b[0, n), onto s: the
** loop of vx_scalar_l2, which the compiler vectorises. */
static inline void vx_scalar_l2_acc(const float *a, const float *b, size_t n,
                                    float *s)
{
    size_t i, j;
    for (i = 0; i + 8 <= n; i += 8)
        for (j = 0; j < 8; j++) {
            float t = a[i + j] - b[i + j];
            s[j] += t * t;
        }
}

static float vx_scalar_l2_bound(const float *a, const float *b, size_t d,
                                float bound, const vx_cut *cut)
{
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0, j, end = d & ~(size_t)7, next;
    while (i < end) {
        next = vx_bound_next(i, end);
        vx_bound_prefetch(b, next, d);
        vx_scalar_l2_acc(a + i, b + i, next - i, s);
        i = next;
        if (i < end && vx_bound_over(vx_scalar_sum8(s), bound, cut, i))
            return vx_bound_past(vx_scalar_sum8(s), bound);
    }
    for (j = 0; i < d; i++, j++) {
        float t = a[i] - b[i];
        s[j] += t * t;
    }
    return vx_scalar_sum8(s);
}

#if defined(VX_HAVE_AVX2)
#define VX_F16C __attribute__((target("avx2,fma,f16c")))
#define VX_AVX512BW __attribute__((target("avx512f,avx512bw")))
#define VX_AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

/* Every CPU with AVX2 has POPCNT. Four sums, so that the adds do not wait
** on one another. */
__attribute__((target("popcnt"))) static uint64_t
vx_popcnt_count_bits(const uint64_t *w, size_t n, uint64_t *sum)
{
    uint64_t c[4] = {0, 0, 0, 0}, m = 0;
    size_t i;
    for (i = 0; i + 4 <= n; i += 4) {
        c[0] += (uint64_t)__builtin_popcountll(w[i]);
        c[1] += (uint64_t)__builtin_popcountll(w[i + 1]);
        c[2] += (uint64_t)__builtin_popcountll(w[i + 2]);
        c[3] += (uint64_t)__builtin_popcountll(w[i + 3]);
        /* no branch on the words (a sparse map's are random), and the
        ** summary word kept in a register, as vx_avx512_count_bits */
        m |= (uint64_t)((w[i] | w[i + 1] | w[i + 2] | w[i + 3]) != 0)
             << (i >> 3 & 63);
        if ((i & 511) == 508) {
            if (sum) sum[i >> 9] = m;
            m = 0;
        }
    }
    if (sum && (i & 511)) sum[i >> 9] = m;
    for (; i < n; i++) {
        c[0] += (uint64_t)__builtin_popcountll(w[i]);
        if (sum && w[i]) sum[i >> 9] |= (uint64_t)1 << (i >> 3 & 63);
    }
    return (c[0] + c[1]) + (c[2] + c[3]);
}

/* Eight words a step: their counts and whether any is set, in one pass
** (the popcnt loop above took 0.4 ns a word on 1M-bit maps). */
__attribute__((target("avx512f,avx512vpopcntdq"))) static uint64_t
vx_avx512_count_bits(const uint64_t *w, size_t n, uint64_t *sum)
{
    __m512i acc = _mm512_setzero_si512();
    size_t i = 0;
    uint64_t c, m = 0;
    for (; i + 8 <= n; i += 8) {
        __m512i v = _mm512_loadu_si512((const void *)(w + i));
        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(v));
        /* the summary word in a register: or-ing into memory made every
        ** step wait for the last one's store */
        m |= (uint64_t)(_mm512_test_epi64_mask(v, v) != 0) << (i >> 3 & 63);
        if ((i >> 3 & 63) == 63) {
            if (sum) sum[i >> 9] = m;
            m = 0;
        }
    }
    if (sum && (i >> 3 & 63)) sum[i >> 9] = m;
    c = (uint64_t)_mm512_reduce_add_epi64(acc);
    if (i < n) {
        __mmask8 tail = (__mmask8)((1u << (n - i)) - 1);
        __m512i v = _mm512_maskz_loadu_epi64(tail, (const void *)(w + i));
        c += (uint64_t)_mm512_reduce_add_epi64(_mm512_popcnt_epi64(v));
        if (sum && _mm512_test_epi64_mask(v, v))
            sum[i >> 9] |= (uint64_t)1 << (i >> 3 & 63);
    }
    return c;
}

VX_AVX2 static inline __m256i vx_avx2_load_i8(const int8_t *p)
{
    return _mm256_loadu_si256((const __m256i *)(const void *)p);
}

VX_AVX2 static inline int32_t vx_avx2_hsum_i32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v),
                              _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* maddubs multiplies unsigned by signed bytes, so a's sign moves onto b:
** |a| (b sign a) = a b. It adds adjacent products into int16, at most
** 2 * 127 * 127 = 32767 - 509: no saturation, as codes are never -128. */
VX_AVX2 static inline __m256i vx_avx2_dot_i8_step(__m256i acc, __m256i a,
                                                  __m256i b)
{
    __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(a),
                                     _mm256_sign_epi8(b, a));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

VX_AVX2 static int32_t vx_avx2_dot_i8(const int8_t *a, const int8_t *b,
                                      size_t d, int32_t bsum)
{
    __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
    size_t i = 0;
    (void)bsum;
    for (; i + 64 <= d; i += 64) {
        s0 = vx_avx2_dot_i8_step(s0, vx_avx2_load_i8(a + i),
                                 vx_avx2_load_i8(b + i));
        s1 = vx_avx2_dot_i8_step(s1, vx_avx2_load_i8(a + i + 32),
                                 vx_avx2_load_i8(b + i + 32));
    }
    if (i + 32 <= d) {
        s0 = vx_avx2_dot_i8_step(s0, vx_avx2_load_i8(a + i),
                                 vx_avx2_load_i8(b + i));
        i += 32;
    }
    if (i < d) {
        /* AVX2 has no masked byte load: the tail goes through zeroed
        ** copies, where the padding adds 0 * 0. */
        int8_t ta[32] = {0}, tb[32] = {0};
        memcpy(ta, a + i, d - i);
        memcpy(tb, b + i, d - i);
        s1 = vx_avx2_dot_i8_step(s1, vx_avx2_load_i8(ta), vx_avx2_load_i8(tb));
    }
    return vx_avx2_hsum_i32(_mm256_add_epi32(s0, s1));
}

/* vx_i8_dist of four rows b[0..3] at once, in four double lanes, one
** operation per statement so that no compiler fuses a multiply and an add
** the scalar function keeps apart: the same roundings, the same bits. */
__attribute__((target("avx2"))) static inline void
vx_avx2_i8_dist4(const vx_i8q *q, int metric, const int8_t *const b[4],
                 size_t d, __m128i dq, __m128i dr, float *out)
{
    size_t h = (d + 3) / 4 * 4;
    __m128 s = _mm_loadu_ps((const float *)(const void *)(b[0] + h));
    __m128 o = _mm_loadu_ps((const float *)(const void *)(b[1] + h));
    __m128 u = _mm_loadu_ps((const float *)(const void *)(b[2] + h));
    __m128 n = _mm_loadu_ps((const float *)(const void *)(b[3] + h));
    __m256d scale, off, sum, t1, t2, t3, t4, dot;
    __m128 f;
    _MM_TRANSPOSE4_PS(s, o, u, n); /* scales, offsets, sums, norms */
    scale = _mm256_cvtps_pd(s);
    off = _mm256_cvtps_pd(o);
    sum = _mm256_cvtepi32_pd(_mm_castps_si128(u));
    t1 = _mm256_mul_pd(off, _mm256_set1_pd(q->c));
    t2 = _mm256_mul_pd(_mm256_set1_pd(q->off), sum);
    t3 = _mm256_mul_pd(_mm256_set1_pd(q->scale), _mm256_cvtepi32_pd(dq));
    t4 = _mm256_mul_pd(_mm256_set1_pd(q->rscale), _mm256_cvtepi32_pd(dr));
    t3 = _mm256_add_pd(t3, t4);
    t2 = _mm256_add_pd(t2, t3);
    t2 = _mm256_mul_pd(scale, t2);
    dot = _mm256_add_pd(t1, t2);
    if (metric == VECIDX_IP) {
        f = _mm256_cvtpd_ps(_mm256_xor_pd(dot, _mm256_set1_pd(-0.0)));
    } else {
        t1 = _mm256_add_pd(_mm256_set1_pd(q->n2), _mm256_cvtps_pd(n));
        t2 = _mm256_mul_pd(_mm256_set1_pd(2.0), dot);
        t1 = _mm256_sub_pd(t1, t2);
        if (metric != VECIDX_L2) t1 = _mm256_mul_pd(t1, _mm256_set1_pd(0.5));
        /* NaN, -0 and below zero become +0, as "d > 0 ? d : 0" makes them */
        f = _mm_max_ps(_mm256_cvtpd_ps(t1), _mm_setzero_ps());
    }
    _mm_storeu_ps(out, f);
}

/* vx_avx2_i8_dist4 into out[0 .. m), m <= 4 rows of a group: a whole
** group straight into out. Through a copy on the stack every group's
** four results waited on the copy (an int8 scan of 100k x 128 spent a
** tenth of its kernel's time there). */
__attribute__((target("avx2"))) static inline void
vx_avx2_i8_put4(const vx_i8q *q, int metric, const int8_t *const b[4], size_t d,
                __m128i dq, __m128i dr, size_t m, float *out)
{
    float o[4];
    if (m == 4) {
        vx_avx2_i8_dist4(q, metric, b, d, dq, dr, out);
        return;
    }
    vx_avx2_i8_dist4(q, metric, b, d, dq, dr, o);
    memcpy(out, o, m * sizeof *o);
}

/* The four int32 sums of s[0..3], in that order: unpacking folds them
** into one vector with a third of the shuffles of four horizontal sums.
** AVX2 alone, so that the AVX-512 kernels can inline it. */
__attribute__((target("avx2"))) static inline __m128i
vx_avx2_hsum4_i32(const __m256i s[4])
{
    __m256i t01 = _mm256_add_epi32(_mm256_unpacklo_epi32(s[0], s[1]),
                                   _mm256_unpackhi_epi32(s[0], s[1]));
    __m256i t23 = _mm256_add_epi32(_mm256_unpacklo_epi32(s[2], s[3]),
                                   _mm256_unpackhi_epi32(s[2], s[3]));
    __m256i t = _mm256_add_epi32(_mm256_unpacklo_epi64(t01, t23),
                                 _mm256_unpackhi_epi64(t01, t23));
    return _mm_add_epi32(_mm256_castsi256_si128(t),
                         _mm256_extracti128_si256(t, 1));
}

/* The four rows of a group from row r on, requested ahead when strided;
** n not a multiple of four repeats the group's first row, whose results
** are not stored. */
static inline size_t vx_i8_group(const int8_t *rows, size_t stride,
                                 const int8_t *const *at, size_t r, size_t n,
                                 size_t lim, const int8_t *b[4])
{
    size_t m = n - r < 4 ? n - r : 4, j;
    for (j = 0; j < 4; j++) {
        size_t i = r + (j < m ? j : 0);
        b[j] = at ? at[i] : rows + i * stride;
    }
    if (!at) vx_i8_rows_prefetch(rows, stride, r, 4, lim);
    return m;
}

/* The integer dot products of a with four rows, sharing a's loads. */
VX_AVX2 static inline __m128i
vx_avx2_i8_sums4(const int8_t *a, const int8_t *const b[4], size_t d)
{
    /* named sums in the loop, as in vx_avx512vnni_i8_sums4 (-O2) */
    __m256i s[4], s0, s1, s2, s3;
    size_t i, j;
    s0 = s1 = s2 = s3 = _mm256_setzero_si256();
    for (i = 0; i + 32 <= d; i += 32) {
        __m256i x = vx_avx2_load_i8(a + i);
        s0 = vx_avx2_dot_i8_step(s0, x, vx_avx2_load_i8(b[0] + i));
        s1 = vx_avx2_dot_i8_step(s1, x, vx_avx2_load_i8(b[1] + i));
        s2 = vx_avx2_dot_i8_step(s2, x, vx_avx2_load_i8(b[2] + i));
        s3 = vx_avx2_dot_i8_step(s3, x, vx_avx2_load_i8(b[3] + i));
    }
    s[0] = s0;
    s[1] = s1;
    s[2] = s2;
    s[3] = s3;
    if (i < d) { /* through zeroed copies, as in vx_avx2_dot_i8 */
        int8_t ta[32] = {0}, tb[32] = {0};
        memcpy(ta, a + i, d - i);
        for (j = 0; j < 4; j++) {
            memcpy(tb, b[j] + i, d - i);
            s[j] = vx_avx2_dot_i8_step(s[j], vx_avx2_load_i8(ta),
                                       vx_avx2_load_i8(tb));
        }
    }
    return vx_avx2_hsum4_i32(s);
}

/* Rows four at a time; the query's rounding error (qi->rc) in a second
** pass over the four rows, which are then in cache. */
VX_AVX2 static void vx_avx2_i8_dists(const int8_t *qc, const vx_i8q *qi,
                                     int metric, const int8_t *rows,
                                     size_t stride, const int8_t *const *at,
                                     size_t n, size_t d, float *out)
{
    size_t r;
    for (r = 0; r < n; r += 4) {
        const int8_t *b[4];
        size_t m = vx_i8_group(rows, stride, at, r, n, n + qi->past, b);
        __m128i dq = vx_avx2_i8_sums4(qc, b, d);
        __m128i dr = qi->rc ? vx_avx2_i8_sums4(qi->rc, b, d)
                            : _mm_setzero_si128();
        vx_avx2_i8_put4(qi, metric, b, d, dq, dr, m, out + r);
    }
}

/* The AVX2 scheme on 64 bytes. AVX-512 has no sign_epi8: b is negated
** under the mask of a's sign bits instead. */
VX_AVX512BW static inline __m512i vx_avx512bw_dot_i8_step(__m512i acc,
                                                          __m512i a, __m512i b)
{
    __m512i sb = _mm512_mask_sub_epi8(b, _mm512_movepi8_mask(a),
                                      _mm512_setzero_si512(), b);
    __m512i p = _mm512_maddubs_epi16(_mm512_abs_epi8(a), sb);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(p, _mm512_set1_epi16(1)));
}

/* Bits [0, n) set, n < 64: the tail mask of a byte loop. */
static inline uint64_t vx_mask64(size_t n)
{
    return (UINT64_C(1) << n) - 1;
}

VX_AVX512BW static int32_t vx_avx512bw_dot_i8(const int8_t *a, const int8_t *b,
                                              size_t d, int32_t bsum)
{
    __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
    size_t i = 0;
    (void)bsum;
    for (; i + 128 <= d; i += 128) {
        s0 = vx_avx512bw_dot_i8_step(s0, _mm512_loadu_si512(a + i),
                                     _mm512_loadu_si512(b + i));
        s1 = vx_avx512bw_dot_i8_step(s1, _mm512_loadu_si512(a + i + 64),
                                     _mm512_loadu_si512(b + i + 64));
    }
    if (i + 64 <= d) {
        s0 = vx_avx512bw_dot_i8_step(s0, _mm512_loadu_si512(a + i),
                                     _mm512_loadu_si512(b + i));
        i += 64;
    }
    if (i < d) {
        __mmask64 m = (__mmask64)vx_mask64(d - i);
        s1 = vx_avx512bw_dot_i8_step(s1, _mm512_maskz_loadu_epi8(m, a + i),
                                     _mm512_maskz_loadu_epi8(m, b + i));
    }
    return _mm512_reduce_add_epi32(_mm512_add_epi32(s0, s1));
}

/* VNNI's dpbusd also multiplies unsigned by signed bytes, adding groups of
** four into int32 without saturation. a xor 0x80 is a + 128, unsigned;
** the excess, 128 sum b = 128 bsum, comes off at the end. Two steps per
** 64 bytes instead of the five above. */
VX_AVX512VNNI static int32_t
vx_avx512vnni_dot_i8(const int8_t *a, const int8_t *b, size_t d, int32_t bsum)
{
    const __m512i bias = _mm512_set1_epi8((char)-128);
    __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
    uint32_t r;
    size_t i = 0;
    for (; i + 128 <= d; i += 128) {
        s0 = _mm512_dpbusd_epi32(
            s0, _mm512_xor_si512(_mm512_loadu_si512(a + i), bias),
            _mm512_loadu_si512(b + i));
        s1 = _mm512_dpbusd_epi32(
            s1, _mm512_xor_si512(_mm512_loadu_si512(a + i + 64), bias),
            _mm512_loadu_si512(b + i + 64));
    }
    if (i + 64 <= d) {
        s0 = _mm512_dpbusd_epi32(
            s0, _mm512_xor_si512(_mm512_loadu_si512(a + i), bias),
            _mm512_loadu_si512(b + i));
        i += 64;
    }
    if (i < d) { /* padding: (0 + 128) * 0 */
        __mmask64 m = (__mmask64)vx_mask64(d - i);
        s1 = _mm512_dpbusd_epi32(
            s1, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, a + i), bias),
            _mm512_maskz_loadu_epi8(m, b + i));
    }
    /* In unsigned arithmetic, which wraps instead of overflowing; the
    ** exact result fits int32. */
    r = (uint32_t)_mm512_reduce_add_epi32(_mm512_add_epi32(s0, s1));
    return (int32_t)(r - 128u * (uint32_t)bsum);
}

VX_I8_DISTS_EACH(VX_AVX512BW, vx_avx512bw_i8_dists, vx_avx512bw_dot_i8)

/* Four int32 sums folded to 256 bits, for vx_avx2_hsum4_i32. */
#define VX_AVX512_FOLD4(hs, s0, s1, s2, s3)                           \
    do {                                                              \
        (hs)[0] = _mm256_add_epi32(_mm512_castsi512_si256(s0),        \
                                   _mm512_extracti64x4_epi64(s0, 1)); \
        (hs)[1] = _mm256_add_epi32(_mm512_castsi512_si256(s1),        \
                                   _mm512_extracti64x4_epi64(s1, 1)); \
        (hs)[2] = _mm256_add_epi32(_mm512_castsi512_si256(s2),        \
                                   _mm512_extracti64x4_epi64(s2, 1)); \
        (hs)[3] = _mm256_add_epi32(_mm512_castsi512_si256(s3),        \
                                   _mm512_extracti64x4_epi64(s3, 1)); \
    } while (0)

/* The integer dot products of qc, and when two is set of rc, with four
** rows, less the bias's excess 128 sum b: bs128, the rows' code sums
** shifted left by 7. Inlined with two constant, so that each form is a
** loop of its own; the second code shares the rows' loads. */
VX_AVX512VNNI static inline void
vx_avx512vnni_i8_sums4(const int8_t *qc, const int8_t *rc, int two,
                       const int8_t *const b[4], size_t d, __m128i bs128,
                       __m128i *dq, __m128i *dr)
{
    const __m512i bias = _mm512_set1_epi8((char)-128);
    /* Named sums, not an array: at -O2 gcc kept an array of them on the
    ** stack, and the scan ran at 0.65x its -O3 speed. */
    __m512i s0, s1, s2, s3, t0, t1, t2, t3, x0, x1, x2, x3;
    __m256i hs[4];
    size_t i;
    s0 = s1 = s2 = s3 = t0 = t1 = t2 = t3 = _mm512_setzero_si512();
    for (i = 0; i < d; i += 64) {
        __m512i a, e = _mm512_setzero_si512();
        if (i + 64 <= d) {
            a = _mm512_loadu_si512(qc + i);
            if (two) e = _mm512_loadu_si512(rc + i);
            x0 = _mm512_loadu_si512(b[0] + i);
            x1 = _mm512_loadu_si512(b[1] + i);
            x2 = _mm512_loadu_si512(b[2] + i);
            x3 = _mm512_loadu_si512(b[3] + i);
        } else { /* padding: (0 + 128) * 0 */
            __mmask64 k = (__mmask64)vx_mask64(d - i);
            a = _mm512_maskz_loadu_epi8(k, qc + i);
            if (two) e = _mm512_maskz_loadu_epi8(k, rc + i);
            x0 = _mm512_maskz_loadu_epi8(k, b[0] + i);
            x1 = _mm512_maskz_loadu_epi8(k, b[1] + i);
            x2 = _mm512_maskz_loadu_epi8(k, b[2] + i);
            x3 = _mm512_maskz_loadu_epi8(k, b[3] + i);
        }
        a = _mm512_xor_si512(a, bias);
        s0 = _mm512_dpbusd_epi32(s0, a, x0);
        s1 = _mm512_dpbusd_epi32(s1, a, x1);
        s2 = _mm512_dpbusd_epi32(s2, a, x2);
        s3 = _mm512_dpbusd_epi32(s3, a, x3);
        if (two) {
            e = _mm512_xor_si512(e, bias);
            t0 = _mm512_dpbusd_epi32(t0, e, x0);
            t1 = _mm512_dpbusd_epi32(t1, e, x1);
            t2 = _mm512_dpbusd_epi32(t2, e, x2);
            t3 = _mm512_dpbusd_epi32(t3, e, x3);
        }
    }
    /* in wrapping int32 lanes; the exact results fit */
    VX_AVX512_FOLD4(hs, s0, s1, s2, s3);
    *dq = _mm_sub_epi32(vx_avx2_hsum4_i32(hs), bs128);
    if (two) {
        VX_AVX512_FOLD4(hs, t0, t1, t2, t3);
        *dr = _mm_sub_epi32(vx_avx2_hsum4_i32(hs), bs128);
    }
}

/* Rows four at a time, as vx_avx2_i8_dists, with the single-pair
** kernel's bias: each row's code sum is stored behind its codes, where
** vx_avx2_i8_dist4 reads it, so the excess 128 sum b comes off once per
** row. One dpbusd per row and 64 bytes, against three operations when
** the query's sign moved onto each row (a 1M x 128 scan 1.07x faster). */
VX_AVX512VNNI static void
vx_avx512vnni_i8_dists(const int8_t *qc, const vx_i8q *qi, int metric,
                       const int8_t *rows, size_t stride,
                       const int8_t *const *at, size_t n, size_t d, float *out)
{
    const size_t h = (d + 3) / 4 * 4 + offsetof(vx_i8hdr, sum);
    size_t r;
    for (r = 0; r < n; r += 4) {
        const int8_t *b[4];
        int32_t bs[4];
        __m128i bs128, dq, dr = _mm_setzero_si128();
        size_t m = vx_i8_group(rows, stride, at, r, n, n + qi->past, b);
        memcpy(&bs[0], b[0] + h, sizeof bs[0]);
        memcpy(&bs[1], b[1] + h, sizeof bs[1]);
        memcpy(&bs[2], b[2] + h, sizeof bs[2]);
        memcpy(&bs[3], b[3] + h, sizeof bs[3]);
        bs128 = _mm_slli_epi32(_mm_loadu_si128((const void *)bs), 7);
        if (qi->rc)
            vx_avx512vnni_i8_sums4(qc, qi->rc, 1, b, d, bs128, &dq, &dr);
        else
            vx_avx512vnni_i8_sums4(qc, NULL, 0, b, d, bs128, &dq, &dr);
        vx_avx2_i8_put4(qi, metric, b, d, dq, dr, m, out + r);
    }
}

VX_F16C static inline __m256 vx_avx2_load_f16(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
}

/* The last d % 8 codes, through a zeroed copy (AVX2 has no masked 16-bit
** load); 0 decodes to 0.0 and the query is read with the float mask. */
VX_F16C static inline __m256 vx_avx2_tail_f16(const uint16_t *p, size_t n)
{
    uint16_t t[8] = {0};
    memcpy(t, p, n * sizeof *p);
    return vx_avx2_load_f16(t);
}

VX_F16C static float vx_avx2_l2_f16(const float *q, const uint16_t *c, size_t d)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps(), t;
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(q + i),
                                  vx_avx2_load_f16(c + i));
        __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(q + i + 8),
                                  vx_avx2_load_f16(c + i + 8));
        __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(q + i + 16),
                                  vx_avx2_load_f16(c + i + 16));
        __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(q + i + 24),
                                  vx_avx2_load_f16(c + i + 24));
        s0 = _mm256_fmadd_ps(d0, d0, s0);
        s1 = _mm256_fmadd_ps(d1, d1, s1);
        s2 = _mm256_fmadd_ps(d2, d2, s2);
        s3 = _mm256_fmadd_ps(d3, d3, s3);
    }
    for (; i + 8 <= d; i += 8) {
        t = _mm256_sub_ps(_mm256_loadu_ps(q + i), vx_avx2_load_f16(c + i));
        s0 = _mm256_fmadd_ps(t, t, s0);
    }
    if (i < d) {
        t = _mm256_sub_ps(_mm256_maskload_ps(q + i, vx_avx2_tailmask(d - i)),
                          vx_avx2_tail_f16(c + i, d - i));
        s1 = _mm256_fmadd_ps(t, t, s1);
    }
    return vx_avx2_hsum(
        _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

VX_F16C static float vx_avx2_dot_f16(const float *q, const uint16_t *c,
                                     size_t d)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), vx_avx2_load_f16(c + i),
                             s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8),
                             vx_avx2_load_f16(c + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 16),
                             vx_avx2_load_f16(c + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 24),
                             vx_avx2_load_f16(c + i + 24), s3);
    }
    for (; i + 8 <= d; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), vx_avx2_load_f16(c + i),
                             s0);
    if (i < d)
        s1 = _mm256_fmadd_ps(_mm256_maskload_ps(q + i, vx_avx2_tailmask(d - i)),
                             vx_avx2_tail_f16(c + i, d - i), s1);
    return vx_avx2_hsum(
        _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

VX_F16C static float vx_avx2_l2_hh(const uint16_t *a, const uint16_t *b,
                                   size_t d)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), t;
    size_t i = 0;
    for (; i + 16 <= d; i += 16) {
        __m256 t0 = _mm256_sub_ps(vx_avx2_load_f16(a + i),
                                  vx_avx2_load_f16(b + i));
        __m256 t1 = _mm256_sub_ps(vx_avx2_load_f16(a + i + 8),
                                  vx_avx2_load_f16(b + i + 8));
        s0 = _mm256_fmadd_ps(t0, t0, s0);
        s1 = _mm256_fmadd_ps(t1, t1, s1);
    }
    for (; i + 8 <= d; i += 8) {
        t = _mm256_sub_ps(vx_avx2_load_f16(a + i), vx_avx2_load_f16(b + i));
        s0 = _mm256_fmadd_ps(t, t, s0);
    }
    if (i < d) { /* zero codes past the end decode to 0 on both sides */
        t = _mm256_sub_ps(vx_avx2_tail_f16(a + i, d - i),
                          vx_avx2_tail_f16(b + i, d - i));
        s1 = _mm256_fmadd_ps(t, t, s1);
    }
    return vx_avx2_hsum(_mm256_add_ps(s0, s1));
}

VX_F16C static float vx_avx2_dot_hh(const uint16_t *a, const uint16_t *b,
                                    size_t d)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= d; i += 16) {
        s0 = _mm256_fmadd_ps(vx_avx2_load_f16(a + i), vx_avx2_load_f16(b + i),
                             s0);
        s1 = _mm256_fmadd_ps(vx_avx2_load_f16(a + i + 8),
                             vx_avx2_load_f16(b + i + 8), s1);
    }
    for (; i + 8 <= d; i += 8)
        s0 = _mm256_fmadd_ps(vx_avx2_load_f16(a + i), vx_avx2_load_f16(b + i),
                             s0);
    if (i < d)
        s1 = _mm256_fmadd_ps(vx_avx2_tail_f16(a + i, d - i),
                             vx_avx2_tail_f16(b + i, d - i), s1);
    return vx_avx2_hsum(_mm256_add_ps(s0, s1));
}

VX_AVX512 static inline __m512 vx_avx512_load_f16(const uint16_t *p)
{
    return _mm512_cvtph_ps(
        _mm256_loadu_si256((const __m256i *)(const void *)p));
}

/* A masked 16-bit load needs AVX-512BW, which the "avx512" table does not
** require: the tail codes go through a zeroed copy, as with AVX2. */
VX_AVX512 static inline __m512 vx_avx512_tail_f16(const uint16_t *p, size_t n)
{
    uint16_t t[16] = {0};
    memcpy(t, p, n * sizeof *p);
    return vx_avx512_load_f16(t);
}

VX_AVX512 static float vx_avx512_l2_f16(const float *q, const uint16_t *c,
                                        size_t d)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), t;
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(q + i),
                                  vx_avx512_load_f16(c + i));
        __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(q + i + 16),
                                  vx_avx512_load_f16(c + i + 16));
        s0 = _mm512_fmadd_ps(d0, d0, s0);
        s1 = _mm512_fmadd_ps(d1, d1, s1);
    }
    for (; i + 16 <= d; i += 16) {
        t = _mm512_sub_ps(_mm512_loadu_ps(q + i), vx_avx512_load_f16(c + i));
        s0 = _mm512_fmadd_ps(t, t, s0);
    }
    if (i < d) {
        __mmask16 m = (__mmask16)((1u << (d - i)) - 1);
        t = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, q + i),
                          vx_avx512_tail_f16(c + i, d - i));
        s1 = _mm512_fmadd_ps(t, t, s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

VX_AVX512 static float vx_avx512_dot_f16(const float *q, const uint16_t *c,
                                         size_t d)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), vx_avx512_load_f16(c + i),
                             s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16),
                             vx_avx512_load_f16(c + i + 16), s1);
    }
    for (; i + 16 <= d; i += 16)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), vx_avx512_load_f16(c + i),
                             s0);
    if (i < d) {
        __mmask16 m = (__mmask16)((1u << (d - i)) - 1);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i),
                             vx_avx512_tail_f16(c + i, d - i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

VX_AVX512 static float vx_avx512_l2_hh(const uint16_t *a, const uint16_t *b,
                                       size_t d)
{
    __m512 s0 = _mm512_setzero_ps(), t;
    size_t i = 0;
    for (; i + 16 <= d; i += 16) {
        t = _mm512_sub_ps(vx_avx512_load_f16(a + i), vx_avx512_load_f16(b + i));
        s0 = _mm512_fmadd_ps(t, t, s0);
    }
    if (i < d) {
        t = _mm512_sub_ps(vx_avx512_tail_f16(a + i, d - i),
                          vx_avx512_tail_f16(b + i, d - i));
        s0 = _mm512_fmadd_ps(t, t, s0);
    }
    return _mm512_reduce_add_ps(s0);
}

VX_AVX512 static float vx_avx512_dot_hh(const uint16_t *a, const uint16_t *b,
                                        size_t d)
{
    __m512 s0 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= d; i += 16)
        s0 = _mm512_fmadd_ps(vx_avx512_load_f16(a + i),
                             vx_avx512_load_f16(b + i), s0);
    if (i < d)
        s0 = _mm512_fmadd_ps(vx_avx512_tail_f16(a + i, d - i),
                             vx_avx512_tail_f16(b + i, d - i), s0);
    return _mm512_reduce_add_ps(s0);
}

/* Eight bits to eight lanes: each lane tests its own bit of the byte. */
VX_AVX2 static float vx_avx2_bin_sum(const float *q, const uint64_t *bits,
                                     size_t d)
{
    const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256 s0 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= d; i += 8) {
        __m256i b = _mm256_set1_epi32((int)((bits[i / 64] >> (i % 64)) & 0xff));
        __m256i m = _mm256_cmpeq_epi32(_mm256_and_si256(b, lane), lane);
        s0 = _mm256_add_ps(
            s0, _mm256_and_ps(_mm256_castsi256_ps(m), _mm256_loadu_ps(q + i)));
    }
    if (i < d) {
        __m256i b = _mm256_set1_epi32((int)((bits[i / 64] >> (i % 64)) & 0xff));
        __m256i m = _mm256_and_si256(
            _mm256_cmpeq_epi32(_mm256_and_si256(b, lane), lane),
            vx_avx2_tailmask(d - i));
        s0 = _mm256_add_ps(
            s0,
            _mm256_and_ps(_mm256_castsi256_ps(m),
                          _mm256_maskload_ps(q + i, vx_avx2_tailmask(d - i))));
    }
    return vx_avx2_hsum(s0);
}

/* Sixteen bits are a lane mask: one masked add per 16 dimensions. */
VX_AVX512 static float vx_avx512_bin_sum(const float *q, const uint64_t *bits,
                                         size_t d)
{
    __m512 s0 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= d; i += 16)
        s0 = _mm512_mask_add_ps(s0,
                                (__mmask16)(bits[i / 64] >> (i % 64) & 0xffff),
                                s0, _mm512_loadu_ps(q + i));
    if (i < d) {
        __mmask16 m = (__mmask16)((bits[i / 64] >> (i % 64)) &
                                  ((1u << (d - i)) - 1));
        s0 = _mm512_mask_add_ps(s0, m, s0, _mm512_maskz_loadu_ps(m, q + i));
    }
    return _mm512_reduce_add_ps(s0);
}

/* vx_avx2_l2 with a look at the bound; see vx_scalar_l2_bound. */
VX_AVX2 static float vx_avx2_l2_bound(const float *a, const float *b, size_t d,
                                      float bound, const vx_cut *cut)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps(), t;
    size_t i = 0, end = d & ~(size_t)31, next;
    while (i < end) {
        next = vx_bound_next(i, end);
        vx_bound_prefetch(b, next, d);
        for (; i < next; i += 32) {
            __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i),
                                      _mm256_loadu_ps(b + i));
            __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8),
                                      _mm256_loadu_ps(b + i + 8));
            __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 16),
                                      _mm256_loadu_ps(b + i + 16));
            __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 24),
                                      _mm256_loadu_ps(b + i + 24));
            s0 = _mm256_fmadd_ps(d0, d0, s0);
            s1 = _mm256_fmadd_ps(d1, d1, s1);
            s2 = _mm256_fmadd_ps(d2, d2, s2);
            s3 = _mm256_fmadd_ps(d3, d3, s3);
        }
        if (i < end) {
            float part = vx_avx2_hsum(
                _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
            if (vx_bound_over(part, bound, cut, i))
                return vx_bound_past(part, bound);
        }
    }
    for (; i + 8 <= d; i += 8) {
        t = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        s0 = _mm256_fmadd_ps(t, t, s0);
    }
    if (i < d) {
        __m256i m = vx_avx2_tailmask(d - i);
        t = _mm256_sub_ps(_mm256_maskload_ps(a + i, m),
                          _mm256_maskload_ps(b + i, m));
        s1 = _mm256_fmadd_ps(t, t, s1);
    }
    return vx_avx2_hsum(
        _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

/* vx_avx512_l2 with a look at the bound; see vx_scalar_l2_bound. */
VX_AVX512 static float vx_avx512_l2_bound(const float *a, const float *b,
                                          size_t d, float bound,
                                          const vx_cut *cut)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), t;
    size_t i = 0, end = d & ~(size_t)31, next;
    while (i < end) {
        next = vx_bound_next(i, end);
        vx_bound_prefetch(b, next, d);
        for (; i < next; i += 32) {
            __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i),
                                      _mm512_loadu_ps(b + i));
            __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16),
                                      _mm512_loadu_ps(b + i + 16));
            s0 = _mm512_fmadd_ps(d0, d0, s0);
            s1 = _mm512_fmadd_ps(d1, d1, s1);
        }
        if (i < end) {
            float part = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
            if (vx_bound_over(part, bound, cut, i))
                return vx_bound_past(part, bound);
        }
    }
    for (; i + 16 <= d; i += 16) {
        t = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        s0 = _mm512_fmadd_ps(t, t, s0);
    }
    if (i < d) {
        __mmask16 m = (__mmask16)((1u << (d - i)) - 1);
        t = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i),
                          _mm512_maskz_loadu_ps(m, b + i));
        s1 = _mm512_fmadd_ps(t, t, s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}
#endif /* VX_HAVE_AVX2 */

#if defined(VX_HAVE_NEON)
/* SDOT (Armv8.2 dot product) is chosen at run time, so the function gets
** a target attribute. GCC's arm_neon.h declares vdotq_s32 for any target;
** clang's (14, the one tested) only when the whole file is compiled for
** it, so with clang the kernel exists only under -march=...+dotprod. */
#if defined(__aarch64__) && (defined(__ARM_FEATURE_DOTPROD) || \
                             (defined(__GNUC__) && !defined(__clang__)))
#define VX_HAVE_NEON_DOTPROD 1
#if defined(__ARM_FEATURE_DOTPROD)
#define VX_NEON_DOTPROD
#else
#define VX_NEON_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#endif
#endif
/* Half-to-float conversion: baseline on aarch64; on 32-bit Arm it needs
** the FPU's half-precision extension and the __fp16 type, e.g.
** -mfpu=neon-vfpv4 -mfp16-format=ieee. Without them the scalar kernels
** serve. */
#if defined(__aarch64__) || (defined(__ARM_FP16_FORMAT_IEEE) && \
                             defined(__ARM_NEON_FP) && (__ARM_NEON_FP & 2))
#define VX_HAVE_NEON_F16 1
#endif

static inline int32_t vx_neon_hsum_s32(int32x4_t v)
{
#if defined(__aarch64__)
    return vaddvq_s32(v);
#else
    int32x2_t s = vadd_s32(vget_low_s32(v), vget_high_s32(v));
    return vget_lane_s32(vpadd_s32(s, s), 0);
#endif
}

/* vmull + vmlal add two products in int16, at most 2 * 127 * 127 <
** 32767 as codes are never -128; vpadal widens the pairs into int32. */
static inline int32x4_t vx_neon_dot_i8_step(int32x4_t acc, int8x16_t a,
                                            int8x16_t b)
{
    int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    p = vmlal_s8(p, vget_high_s8(a), vget_high_s8(b));
    return vpadalq_s16(acc, p);
}

static int32_t vx_neon_dot_i8(const int8_t *a, const int8_t *b, size_t d,
                              int32_t bsum)
{
    int32x4_t s0 = vdupq_n_s32(0), s1 = vdupq_n_s32(0);
    int32_t r;
    size_t i = 0;
    (void)bsum;
    for (; i + 32 <= d; i += 32) {
        s0 = vx_neon_dot_i8_step(s0, vld1q_s8(a + i), vld1q_s8(b + i));
        s1 = vx_neon_dot_i8_step(s1, vld1q_s8(a + i + 16),
                                 vld1q_s8(b + i + 16));
    }
    if (i + 16 <= d) {
        s0 = vx_neon_dot_i8_step(s0, vld1q_s8(a + i), vld1q_s8(b + i));
        i += 16;
    }
    r = vx_neon_hsum_s32(vaddq_s32(s0, s1));
    for (; i < d; i++) r += a[i] * b[i];
    return r;
}

VX_I8_DISTS_EACH(, vx_neon_i8_dists, vx_neon_dot_i8)

#if defined(VX_HAVE_NEON_DOTPROD)
/* SDOT multiplies signed bytes directly, four per int32 lane: no bias, no
** widening. Four sums hide its latency. */
VX_NEON_DOTPROD static int32_t vx_neon_sdot_i8(const int8_t *a, const int8_t *b,
                                               size_t d, int32_t bsum)
{
    int32x4_t s0 = vdupq_n_s32(0), s1 = vdupq_n_s32(0);
    int32x4_t s2 = vdupq_n_s32(0), s3 = vdupq_n_s32(0);
    int32_t r;
    size_t i = 0;
    (void)bsum;
    for (; i + 64 <= d; i += 64) {
        s0 = vdotq_s32(s0, vld1q_s8(a + i), vld1q_s8(b + i));
        s1 = vdotq_s32(s1, vld1q_s8(a + i + 16), vld1q_s8(b + i + 16));
        s2 = vdotq_s32(s2, vld1q_s8(a + i + 32), vld1q_s8(b + i + 32));
        s3 = vdotq_s32(s3, vld1q_s8(a + i + 48), vld1q_s8(b + i + 48));
    }
    for (; i + 16 <= d; i += 16)
        s0 = vdotq_s32(s0, vld1q_s8(a + i), vld1q_s8(b + i));
    r = vx_neon_hsum_s32(vaddq_s32(vaddq_s32(s0, s1), vaddq_s32(s2, s3)));
    for (; i < d; i++) r += a[i] * b[i];
    return r;
}

VX_I8_DISTS_EACH(VX_NEON_DOTPROD, vx_neon_sdot_i8_dists, vx_neon_sdot_i8)
#endif

#if defined(VX_HAVE_NEON_F16)
static inline float32x4_t vx_neon_load_f16(const uint16_t *p)
{
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

static float vx_neon_l2_f16(const float *q, const uint16_t *c, size_t d)
{
    float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0);
    float32x4_t s2 = vdupq_n_f32(0), s3 = vdupq_n_f32(0), t;
    float r;
    size_t i = 0;
    for (; i + 16 <= d; i += 16) {
        float32x4_t d0 = vsubq_f32(vld1q_f32(q + i), vx_neon_load_f16(c + i));
        float32x4_t d1 = vsubq_f32(vld1q_f32(q + i + 4),
                                   vx_neon_load_f16(c + i + 4));
        float32x4_t d2 = vsubq_f32(vld1q_f32(q + i + 8),
                                   vx_neon_load_f16(c + i + 8));
        float32x4_t d3 = vsubq_f32(vld1q_f32(q + i + 12),
                                   vx_neon_load_f16(c + i + 12));
        s0 = VX_NEON_FMA(s0, d0, d0);
        s1 = VX_NEON_FMA(s1, d1, d1);
        s2 = VX_NEON_FMA(s2, d2, d2);
        s3 = VX_NEON_FMA(s3, d3, d3);
    }
    for (; i + 4 <= d; i += 4) {
        t = vsubq_f32(vld1q_f32(q + i), vx_neon_load_f16(c + i));
        s0 = VX_NEON_FMA(s0, t, t);
    }
    r = VX_NEON_HSUM(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < d; i++) {
        float x = q[i] - vx_f16_to_f32(c[i]);
        r += x * x;
    }
    return r;
}

static float vx_neon_dot_f16(const float *q, const uint16_t *c, size_t d)
{
    float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0);
    float32x4_t s2 = vdupq_n_f32(0), s3 = vdupq_n_f32(0);
    float r;
    size_t i = 0;
    for (; i + 16 <= d; i += 16) {
        s0 = VX_NEON_FMA(s0, vld1q_f32(q + i), vx_neon_load_f16(c + i));
        s1 = VX_NEON_FMA(s1, vld1q_f32(q + i + 4), vx_neon_load_f16(c + i + 4));
        s2 = VX_NEON_FMA(s2, vld1q_f32(q + i + 8), vx_neon_load_f16(c + i + 8));
        s3 = VX_NEON_FMA(s3, vld1q_f32(q + i + 12),
                         vx_neon_load_f16(c + i + 12));
    }
    for (; i + 4 <= d; i += 4)
        s0 = VX_NEON_FMA(s0, vld1q_f32(q + i), vx_neon_load_f16(c + i));
    r = VX_NEON_HSUM(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < d; i++) r += q[i] * vx_f16_to_f32(c[i]);
    return r;
}

static float vx_neon_l2_hh(const uint16_t *a, const uint16_t *b, size_t d)
{
    float32x4_t s0 = vdupq_n_f32(0), t;
    float r;
    size_t i = 0;
    for (; i + 4 <= d; i += 4) {
        t = vsubq_f32(vx_neon_load_f16(a + i), vx_neon_load_f16(b + i));
        s0 = VX_NEON_FMA(s0, t, t);
    }
    r = VX_NEON_HSUM(s0);
    for (; i < d; i++) {
        float u = vx_f16_to_f32(a[i]) - vx_f16_to_f32(b[i]);
        r += u * u;
    }
    return r;
}

static float vx_neon_dot_hh(const uint16_t *a, const uint16_t *b, size_t d)
{
    float32x4_t s0 = vdupq_n_f32(0);
    float r;
    size_t i = 0;
    for (; i + 4 <= d; i += 4)
        s0 = VX_NEON_FMA(s0, vx_neon_load_f16(a + i), vx_neon_load_f16(b + i));
    r = VX_NEON_HSUM(s0);
    for (; i < d; i++) r += vx_f16_to_f32(a[i]) * vx_f16_to_f32(b[i]);
    return r;
}
#endif /* VX_HAVE_NEON_F16 */

static float vx_neon_bin_sum(const float *q, const uint64_t *bits, size_t d)
{
    static const uint32_t lane[4] = {1, 2, 4, 8};
    const uint32x4_t ln = vld1q_u32(lane);
    float32x4_t s0 = vdupq_n_f32(0);
    float r;
    size_t i = 0;
    for (; i + 4 <= d; i += 4) {
        uint32x4_t b = vdupq_n_u32((uint32_t)(bits[i / 64] >> (i % 64)) & 15u);
        uint32x4_t m = vtstq_u32(b, ln);
        s0 = vaddq_f32(s0, vreinterpretq_f32_u32(vandq_u32(
                               m, vreinterpretq_u32_f32(vld1q_f32(q + i)))));
    }
    r = VX_NEON_HSUM(s0);
    for (; i < d; i++) r += q[i] * (float)((bits[i / 64] >> (i % 64)) & 1u);
    return r;
}

/* vx_neon_l2 with a look at the bound; see vx_scalar_l2_bound. */
static float vx_neon_l2_bound(const float *a, const float *b, size_t d,
                              float bound, const vx_cut *cut)
{
    float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0);
    float32x4_t s2 = vdupq_n_f32(0), s3 = vdupq_n_f32(0), t;
    float r;
    size_t i = 0, end = d & ~(size_t)15, next;
    while (i < end) {
        next = vx_bound_next(i, end);
        vx_bound_prefetch(b, next, d);
        for (; i < next; i += 16) {
            float32x4_t d0 = vsubq_f32(vld1q_f32(a + i), vld1q_f32(b + i));
            float32x4_t d1 = vsubq_f32(vld1q_f32(a + i + 4),
                                       vld1q_f32(b + i + 4));
            float32x4_t d2 = vsubq_f32(vld1q_f32(a + i + 8),
                                       vld1q_f32(b + i + 8));
            float32x4_t d3 = vsubq_f32(vld1q_f32(a + i + 12),
                                       vld1q_f32(b + i + 12));
            s0 = VX_NEON_FMA(s0, d0, d0);
            s1 = VX_NEON_FMA(s1, d1, d1);
            s2 = VX_NEON_FMA(s2, d2, d2);
            s3 = VX_NEON_FMA(s3, d3, d3);
        }
        if (i < end) {
            r = VX_NEON_HSUM(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
            if (vx_bound_over(r, bound, cut, i)) return vx_bound_past(r, bound);
        }
    }
    for (; i + 4 <= d; i += 4) {
        t = vsubq_f32(vld1q_f32(a + i), vld1q_f32(b + i));
        s0 = VX_NEON_FMA(s0, t, t);
    }
    r = VX_NEON_HSUM(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < d; i++) r += (a[i] - b[i]) * (a[i] - b[i]);
    return r;
}
#endif /* VX_HAVE_NEON */

/* -- sums of squares ---------------------------------------------------
** Norms, in double: in float a sum of squares underflows to 0 for vectors
** shorter than about 1e-19 and overflows for long ones. Every kernel
** gives the same bits, so that a norm stored by an insert on one CPU is
** the norm a replay of its log stores on another: component i goes to
** sum i % 32, each square is exact in double (so a fused multiply-add
** rounds as a multiply and an add do), and the 32 sums are folded in
** halves, s[l] + s[l + w] for w = 16, 8, 4, 2, 1. A vector register of
** doubles holds consecutive sums, so that fold is its own. Two builds
** fall short: with -ffast-math the compiler may reassociate the scalar
** form (so only that one runs there, the same bits within the build), and
** x87 arithmetic (-m32 without -mfpmath=sse) rounds each add twice, which
** may change the last bit. Every cosine search and insert sums its
** vector's squares to check it: with eight sums compiled for SSE2 that
** took about 50 ns at 384 dimensions, each add waiting on the last of its
** sum. */
#define VX_SUMSQ_WAYS 32

static double vx_sumsq_fold(double *s)
{
    size_t w, l;
    for (w = VX_SUMSQ_WAYS / 2; w; w /= 2)
        for (l = 0; l < w; l++) s[l] += s[l + w];
    return s[0];
}

static double vx_scalar_sumsq(const float *v, size_t n)
{
    double s[VX_SUMSQ_WAYS] = {0};
    size_t i = 0, l;
    for (; i + VX_SUMSQ_WAYS <= n; i += VX_SUMSQ_WAYS)
        for (l = 0; l < VX_SUMSQ_WAYS; l++) s[l] += (double)v[i + l] * v[i + l];
    for (l = 0; i + l < n; l++) s[l] += (double)v[i + l] * v[i + l];
    return vx_sumsq_fold(s);
}

/* IVF-PQ normalises each cosine query: compiled for SSE2, the loop took
** 3 % of a search that scores 20 keys (384 dimensions). */
static void vx_scalar_scale(float *out, const float *v, float s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) out[i] = v[i] * s;
}

#if defined(VX_HAVE_AVX2)
/* The 32 components from i on, or when fewer are left, those copied into
** tail (32 floats) and zeros after them: a zero adds +0.0 to its sum,
** which changes none. */
static inline const float *vx_sumsq_at(const float *v, size_t n, size_t i,
                                       float *tail)
{
    if (n - i >= VX_SUMSQ_WAYS) return v + i;
    memset(tail, 0, VX_SUMSQ_WAYS * sizeof *tail);
    memcpy(tail, v + i, (n - i) * sizeof *v);
    return tail;
}

VX_AVX2 static double vx_avx2_sumsq(const float *v, size_t n)
{
    __m256d a[8];
    float tail[VX_SUMSQ_WAYS]; /* see vx_sumsq_at */
    size_t i, j;
    __m128d h;
    for (j = 0; j < 8; j++) a[j] = _mm256_setzero_pd();
    for (i = 0; i < n; i += VX_SUMSQ_WAYS) {
        const float *p = vx_sumsq_at(v, n, i, tail);
        for (j = 0; j < 8; j++) {
            __m256d x = _mm256_cvtps_pd(_mm_loadu_ps(p + 4 * j));
            a[j] = _mm256_fmadd_pd(x, x, a[j]);
        }
    }
    for (j = 0; j < 4; j++) a[j] = _mm256_add_pd(a[j], a[j + 4]);
    a[0] = _mm256_add_pd(a[0], a[2]);
    a[1] = _mm256_add_pd(a[1], a[3]);
    a[0] = _mm256_add_pd(a[0], a[1]);
    h = _mm_add_pd(_mm256_castpd256_pd128(a[0]),
                   _mm256_extractf128_pd(a[0], 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

VX_AVX512 static double vx_avx512_sumsq(const float *v, size_t n)
{
    __m512d a[4];
    float tail[VX_SUMSQ_WAYS]; /* see vx_sumsq_at */
    size_t i, j;
    __m256d q;
    __m128d h;
    for (j = 0; j < 4; j++) a[j] = _mm512_setzero_pd();
    for (i = 0; i < n; i += VX_SUMSQ_WAYS) {
        const float *p = vx_sumsq_at(v, n, i, tail);
        for (j = 0; j < 4; j++) {
            __m512d x = _mm512_cvtps_pd(_mm256_loadu_ps(p + 8 * j));
            a[j] = _mm512_fmadd_pd(x, x, a[j]);
        }
    }
    a[0] = _mm512_add_pd(a[0], a[2]);
    a[1] = _mm512_add_pd(a[1], a[3]);
    a[0] = _mm512_add_pd(a[0], a[1]);
    q = _mm256_add_pd(_mm512_castpd512_pd256(a[0]),
                      _mm512_extractf64x4_pd(a[0], 1));
    h = _mm_add_pd(_mm256_castpd256_pd128(q), _mm256_extractf128_pd(q, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

VX_AVX2 static void vx_avx2_scale(float *out, const float *v, float s, size_t n)
{
    __m256 f = _mm256_set1_ps(s);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(v + i), f));
    vx_scalar_scale(out + i, v + i, s, n - i);
}

VX_AVX512 static void vx_avx512_scale(float *out, const float *v, float s,
                                      size_t n)
{
    __m512 f = _mm512_set1_ps(s);
    size_t i = 0;
    __mmask16 m;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_loadu_ps(v + i), f));
    m = (__mmask16)((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(out + i, m,
                          _mm512_mul_ps(_mm512_maskz_loadu_ps(m, v + i), f));
}
#endif

/* The features the quantized kernels may use, found once by the caller
** (vx_kern_detect, under its pthread_once). */
static unsigned vx_qkern_features(void)
{
    unsigned f = 0;
#if defined(VX_HAVE_AVX2)
    unsigned eax, ebx, ecx = 0, edx;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        f |= VX_QF_AVX2;
    /* CPUID.1:ECX. The OS saving the YMM state F16C needs is implied by
    ** the AVX2 check above. */
    if ((f & VX_QF_AVX2) && __get_cpuid(1, &eax, &ebx, &ecx, &edx) &&
        (ecx & bit_F16C))
        f |= VX_QF_F16C;
    if ((f & VX_QF_AVX2) && __builtin_cpu_supports("avx512f")) {
        f |= VX_QF_AVX512;
        if (__builtin_cpu_supports("avx512bw")) f |= VX_QF_AVX512BW;
        if ((f & VX_QF_AVX512BW) && __builtin_cpu_supports("avx512vnni"))
            f |= VX_QF_VNNI;
        if (__builtin_cpu_supports("avx512vpopcntdq")) f |= VX_QF_VPOPCNT;
    }
#elif defined(VX_HAVE_NEON_DOTPROD) && defined(__ARM_FEATURE_DOTPROD)
    f |= VX_QF_DOTPROD; /* compiled for it: every CPU that runs this has it */
#elif defined(VX_HAVE_NEON_DOTPROD) && defined(__linux__)
    if (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) f |= VX_QF_DOTPROD;
#endif
    return f;
}

/* The best kernel of each kind for features f. l2_bound goes with the
** float32 table vx_kern_detect picks from the same conditions. */
static void vx_qkern_pick(unsigned f, vx_qkernels *k)
{
    k->dot_i8 = vx_scalar_dot_i8;
    k->i8_dists = vx_scalar_i8_dists;
    k->l2_f16 = vx_scalar_l2_f16;
    k->dot_f16 = vx_scalar_dot_f16;
    k->l2_hh = vx_scalar_l2_hh;
    k->dot_hh = vx_scalar_dot_hh;
    k->bin_sum = vx_scalar_bin_sum;
    k->l2_bound = vx_scalar_l2_bound;
    k->count_bits = vx_scalar_count_bits;
    k->sumsq = vx_scalar_sumsq;
    k->scale = vx_scalar_scale;
#if defined(VX_HAVE_AVX2)
    if (f & VX_QF_AVX2) {
        k->scale = vx_avx2_scale;
#if !defined(__FAST_MATH__) /* the scalar sum may then be reassociated */
        k->sumsq = vx_avx2_sumsq;
#endif
        k->count_bits = vx_popcnt_count_bits;
        k->bin_sum = vx_avx2_bin_sum;
        k->dot_i8 = vx_avx2_dot_i8;
        k->i8_dists = vx_avx2_i8_dists;
        k->l2_bound = vx_avx2_l2_bound;
    }
    if (f & VX_QF_F16C) {
        k->l2_f16 = vx_avx2_l2_f16;
        k->dot_f16 = vx_avx2_dot_f16;
        k->l2_hh = vx_avx2_l2_hh;
        k->dot_hh = vx_avx2_dot_hh;
    }
    if (f & VX_QF_AVX512) {
#if !defined(__FAST_MATH__)
        k->sumsq = vx_avx512_sumsq;
#endif
        k->scale = vx_avx512_scale;
        k->bin_sum = vx_avx512_bin_sum;
        k->l2_f16 = vx_avx512_l2_f16;
        k->dot_f16 = vx_avx512_dot_f16;
        k->l2_hh = vx_avx512_l2_hh;
        k->dot_hh = vx_avx512_dot_hh;
        k->l2_bound = vx_avx512_l2_bound;
    }
    if (f & VX_QF_VPOPCNT) k->count_bits = vx_avx512_count_bits;
    if (f & VX_QF_AVX512BW) {
        k->dot_i8 = vx_avx512bw_dot_i8;
        k->i8_dists = vx_avx512bw_i8_dists;
    }
    if (f & VX_QF_VNNI) {
        k->dot_i8 = vx_avx512vnni_dot_i8;
        k->i8_dists = vx_avx512vnni_i8_dists;
    }
#endif
#if defined(VX_HAVE_NEON)
    k->dot_i8 = vx_neon_dot_i8;
    k->i8_dists = vx_neon_i8_dists;
    k->bin_sum = vx_neon_bin_sum;
    k->l2_bound = vx_neon_l2_bound;
#if defined(VX_HAVE_NEON_F16)
    k->l2_f16 = vx_neon_l2_f16;
    k->dot_f16 = vx_neon_dot_f16;
    k->l2_hh = vx_neon_l2_hh;
    k->dot_hh = vx_neon_dot_hh;
#endif
#if defined(VX_HAVE_NEON_DOTPROD)
    if (f & VX_QF_DOTPROD) {
        k->dot_i8 = vx_neon_sdot_i8;
        k->i8_dists = vx_neon_sdot_i8_dists;
    }
#endif
#endif
    (void)f;
}
/* The quantized kernels picked for this CPU (with the float32 table, by
** vx_kern_detect); l2_bound matches the preferred float32 table. */
static vx_qkernels vx_qk;

/* Sum of squares of v in double (vx_qkernels.sumsq): the one function for
** norms, so that every caller gets the same bits for the same vector. */
static double vx_sumsq(const float *v, size_t n)
{
    return vx_qk.sumsq ? vx_qk.sumsq(v, n) : vx_scalar_sumsq(v, n);
}

/* Kernel tables runnable on this CPU, scalar first and the preferred one
** last. Filled once; pthread_once makes the first concurrent calls safe. */
static const vx_kernels *vx_kern_runnable[4];
static size_t vx_kern_nrunnable;
static pthread_once_t vx_kern_once = PTHREAD_ONCE_INIT;

static void vx_kern_detect(void)
{
    size_t n = 0;
    vx_kern_runnable[n++] = &vx_kern_scalar;
#if defined(VX_HAVE_AVX2)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        vx_kern_runnable[n++] = &vx_kern_avx2;
    if (n == 2 && __builtin_cpu_supports("avx512f"))
        vx_kern_runnable[n++] = &vx_kern_avx512;
#endif
#if defined(VX_HAVE_NEON)
    vx_kern_runnable[n++] = &vx_kern_neon; /* Advanced SIMD is baseline */
#endif
    vx_kern_nrunnable = n;
    vx_qkern_pick(vx_qkern_features(), &vx_qk);
}

static const vx_kernels *const *vx_kernel_list(size_t *n)
{
    pthread_once(&vx_kern_once, vx_kern_detect);
    *n = vx_kern_nrunnable;
    return vx_kern_runnable;
}

static const vx_kernels *vx_kernel_best(void)
{
    size_t n;
    const vx_kernels *const *list = vx_kernel_list(&n);
    return list[n - 1];
}

/* ======================================================================
** 3. Storage
**
** Every vector lives in a numbered slot. Per-slot data (vector, key,
** inverse norm, live flag) sit in parallel arrays split into chunks of
** 2^shift slots: growing adds a chunk and never moves existing vectors,
** and each chunk is one contiguous, pointer-free block that the file
** format can map in place. Only the small chunk tables hold pointers, and
** they are rebuilt at open. A key -> slot hash map finds slots; removed
** slots go on a free stack and are reused first, so churn does not grow
** the index.
** ====================================================================== */

#define VX_CHUNK_BYTES (256u * 1024u) /* target vector bytes per chunk */
#define VX_KEPT_BYTES (2048u * 1024u) /* most kept float32 bytes a chunk */
#define VX_LINE_WORDS 16u             /* 4-byte words per 64-byte cache line */
#define VX_LINE_SLACK 63u /* bytes allocated more to align a chunk */
/* Most dimensions of a query that a search copies onto its stack
** (vx_query_lined, vx_ivf_direct) */
#define VX_QLINE_MAX 1024
#define VX_NOSLOT UINT32_MAX

/* p moved on to the next cache line's start (by VX_LINE_SLACK at most). */
static inline void *vx_line_up(void *p)
{
    return (unsigned char *)p + (size_t)(-(uintptr_t)p & VX_LINE_SLACK);
}

typedef struct vx_snap vx_snap;

typedef struct vx_keymap {
    uint64_t *keys;
    uint32_t *slots; /* VX_NOSLOT marks an empty cell */
    size_t cap;      /* power of two, or 0 */
    size_t n;
    int mapped;    /* arrays point into a mapped file: never freed */
    int huge;      /* keys (bit 0), slots (bit 1): vx_table_alloc's */
    vx_snap *snap; /* a snapshot under way, writing these arrays */
} vx_keymap;

/* A snapshot copies cells of the map aside before they change, and keeps
** arrays the map outgrew while it runs (see "Snapshots"). */
static void vx_snap_touch_cells(vx_snap *sn, const vx_keymap *m, size_t from,
                                size_t n);
static int vx_snap_adopt_map(vx_snap *sn, const vx_keymap *old);

/* A chunk is one allocation holding 2^shift slots, laid out as
**   [records: per * rec u32 words][keys: per u64][inverse norms]
**   [upper-link offsets: per u32][levels: per bytes][states: per bytes]
** A record is the slot's vector (dim floats), followed for HNSW by its
** inverse norm (cosine only) and its level-0 link list (1 + link0 words).
** Keeping what a graph hop needs next to the vector means the lines
** fetched to score a node bring the rest along; for the flat kind a record
** is just the vector, so rows are contiguous for the scan, and inverse
** norms (cosine only) get their own block. Offsets and levels exist only
** for HNSW (link0 > 0). */
typedef struct vx_chunk {
    float *vec; /* start of the records, on a 64-byte boundary */
    /* Next to vec, which every access loads: a chunk mapped from a file
    ** with piece checksums is verified when first read (vx_lazy), its
    ** records etc. (lazy) apart from its kept vectors (klazy), each a
    ** verdict: VX_PIECE_GOOD once all verified, or memory of our own. */
    uint8_t lazy, klazy;
    uint8_t pooled;           /* carved from a huge-page block, not allocated */
    float *full;              /* compressed storage with keep_vectors: the
                                 float32 vectors, dim per slot */
    unsigned char *base;      /* the allocation (VX_LINE_SLACK bytes more) */
    unsigned char *full_base; /* the allocation of full, in memory */
    uint64_t *key;
    float *inorm;
    uint32_t *upper;
    uint8_t *level;
    uint8_t *live;
} vx_chunk;

/* Verdicts on mapped bytes (a piece, a chunk, an IVF-PQ list): good is 0,
** so that one test of a chunk's or list's flag passes all that were. */
enum {
    VX_PIECE_GOOD = 0,
    VX_PIECE_UNKNOWN = 1,
    VX_PIECE_BAD = 2
};
#define VX_PIECE_SHIFT 4u /* slots per piece: 16, the fewest a chunk has */
#define VX_PIECE (1u << VX_PIECE_SHIFT)

/* A huge-page mapping that chunks are carved from, front to back. */
typedef struct vx_block {
    unsigned char *base;
    size_t len, used;
} vx_block;

/* Slot states. A buried slot's key is gone, but a graph may still link to
** it until the graph is repaired; only then is the slot freed for reuse. */
enum {
    VX_FREE = 0,
    VX_LIVE = 1,
    VX_BURIED = 2,
    /* A graph slot unlinked by a repair but perhaps still read by a
    ** search (in the limbo); in memory only: files hold it as free. */
    VX_RETIRED = 3,
    /* A buried graph slot that the repair pass under way will unlink. */
    VX_DOOMED = 4
};

typedef struct vx_store {
    uint32_t dim;
    uint32_t shift; /* log2(slots per chunk) */
    int cosine;     /* keep inverse norms */
    uint32_t store; /* VECIDX_STORE_*: what a record holds */
    uint32_t keep;  /* compressed storage: float32 vectors kept (full) */
    int apart;      /* kept vectors in a section of their own in files, and
                       not counted in sizing chunks (vx_store_init) */
    uint32_t cw;    /* 4-byte words of a record's vector or code */
    uint32_t link0; /* level-0 links per slot (HNSW), else 0 */
    uint32_t rec;   /* 4-byte words per record (see vx_chunk) */
    int aligned;    /* graph records padded to whole lines (vx_store_init) */
    /* Searches read chunks, nchunks, nslots, count and nburied without a
    ** lock: the writer stores them with VX_STORE. A grown chunk table is
    ** retired (vx_ebr), never freed under a search. */
    uint32_t nchunks, chunk_cap;
    uint32_t nmapped; /* chunks [0, nmapped) live in a mapped file */
    vx_chunk *chunks;
    /* With lazy: the verdict of each piece of the records etc. and of the
    ** kept vectors (vx_lazy's st), here for the reads of slots in chunks
    ** not all verified: a benchmark that repeats one set of queries never
    ** reads the rest of those chunks, and a call per read cost 15 %. */
    const uint8_t *pst, *kpst;
    vx_block *blocks; /* huge-page blocks, once the chunks outgrow one */
    size_t nblocks, block_cap;
    uint32_t nslots; /* slots ever handed out: [0, nslots) */
    uint32_t count;  /* live slots */
    uint32_t nburied;
    uint32_t *free; /* removed slots, reused LIFO */
    uint32_t nfree, free_cap;
    /* Slots unlinked but perhaps still read by a search, oldest first,
    ** in batches closed by vx_store_seal with an epoch tag; room for every
    ** slot (as the free stack), so retiring never allocates. A graph's
    ** slots are VX_RETIRED here (their lists and levels may still be
    ** read); others are VX_FREE already. */
    uint32_t *limbo;
    uint32_t nlimbo, nsealed;
    struct {
        uint64_t tag;
        uint32_t end; /* batch = limbo[previous end, end) */
    } batch[8];
    unsigned nbatch;
    vx_keymap map;
    /* The key-set lock of the handle (NULL for a store of no handle):
    ** held for writing while the key map or the set of live slots
    ** changes, for reading by vecidx_get, vecidx_contains, ... */
    pthread_rwlock_t *klock;
    struct vx_lazy *lazy; /* chunks verified on first read, or NULL */
} vx_store;

static inline uint32_t vx_store_per_chunk(const vx_store *s)
{
    return 1u << s->shift;
}

static vx_chunk *vx_lazy_chunk(const vx_store *s, uint32_t ci, int kept);
static vx_chunk *vx_lazy_slot(const vx_store *s, uint32_t slot, int kept);

/* The chunk of slot, for a read of that slot's data, which is verified
** first if it is mapped and not verified yet (vx_lazy): every read of a
** slot goes through here, so that a reader never sees bytes that failed,
** or have not passed, their checksum. */
static inline vx_chunk *vx_store_slot_chunk(const vx_store *s, uint32_t slot)
{
    vx_chunk *c = &VX_LOAD(&s->chunks)[slot >> s->shift];
    if (VX_UNLIKELY(VX_PEEK(&c->lazy)) &&
        VX_PEEK(&s->pst[slot >> VX_PIECE_SHIFT]) != VX_PIECE_GOOD)
        return vx_lazy_slot(s, slot, 0);
    return c;
}

/* Chunk ci, for a read of all of it (a scan), verified first. */
static inline vx_chunk *vx_store_chunk(const vx_store *s, uint32_t ci)
{
    vx_chunk *c = &VX_LOAD(&s->chunks)[ci];
    if (VX_UNLIKELY(VX_PEEK(&c->lazy))) return vx_lazy_chunk(s, ci, 0);
    return c;
}

#define VX_SLOT_CHUNK(s, slot) vx_store_slot_chunk((s), (slot))
#define VX_SLOT_INDEX(s, slot) ((slot) & (vx_store_per_chunk(s) - 1))

static inline float *vx_store_vec(const vx_store *s, uint32_t slot)
{
    return VX_SLOT_CHUNK(s, slot)->vec +
           (size_t)VX_SLOT_INDEX(s, slot) * s->rec;
}

static inline uint64_t vx_store_key(const vx_store *s, uint32_t slot)
{
    return VX_SLOT_CHUNK(s, slot)->key[VX_SLOT_INDEX(s, slot)];
}

/* Request slot's state ahead of a vx_store_live that would miss the cache. */
static inline void vx_store_live_ahead(const vx_store *s, uint32_t slot)
{
    __builtin_prefetch(&VX_SLOT_CHUNK(s, slot)->live[VX_SLOT_INDEX(s, slot)]);
}

/* Request slot's key ahead of a vx_store_key that would miss the cache. */
static inline void vx_store_key_ahead(const vx_store *s, uint32_t slot)
{
    __builtin_prefetch(&VX_SLOT_CHUNK(s, slot)->key[VX_SLOT_INDEX(s, slot)]);
}

/* A slot's state. Acquire: a search that sees VX_LIVE sees the vector and
** key written before the slot was published. */
static inline int vx_store_live(const vx_store *s, uint32_t slot)
{
    return VX_LOAD(&VX_SLOT_CHUNK(s, slot)->live[VX_SLOT_INDEX(s, slot)]);
}

static inline void vx_store_set_state(vx_store *s, uint32_t slot, int state)
{
    VX_STORE(&VX_SLOT_CHUNK(s, slot)->live[VX_SLOT_INDEX(s, slot)],
             (uint8_t)state);
}

/* A slot's kept float32 vector (compressed storage with keep_vectors). */
static inline const float *vx_store_full(const vx_store *s, uint32_t slot)
{
    const vx_chunk *c = VX_SLOT_CHUNK(s, slot);
    if (VX_UNLIKELY(VX_PEEK(&c->klazy)) &&
        VX_PEEK(&s->kpst[slot >> VX_PIECE_SHIFT]) != VX_PIECE_GOOD)
        c = vx_lazy_slot(s, slot, 1);
    return c->full + (size_t)VX_SLOT_INDEX(s, slot) * s->dim;
}

static inline float *vx_store_inorm_at(const vx_store *s, uint32_t slot)
{
    if (s->link0) return vx_store_vec(s, slot) + s->cw;
    return VX_SLOT_CHUNK(s, slot)->inorm + VX_SLOT_INDEX(s, slot);
}

static inline float vx_store_inorm(const vx_store *s, uint32_t slot)
{
    return *vx_store_inorm_at(s, slot);
}

/* splitmix64's finaliser: user keys are often sequential, and linear
** probing needs their low bits well mixed. */
static inline uint64_t vx_hash64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint32_t vx_map_find(const vx_keymap *m, uint64_t key)
{
    size_t mask, i;
    if (m->cap == 0) return VX_NOSLOT;
    mask = m->cap - 1;
    for (i = (size_t)vx_hash64(key) & mask;; i = (i + 1) & mask) {
        if (m->slots[i] == VX_NOSLOT) return VX_NOSLOT;
        if (m->keys[i] == key) return m->slots[i];
    }
}

/* Caller guarantees room (vx_map_reserve) and that key is absent. */
static void vx_map_put(vx_keymap *m, uint64_t key, uint32_t slot)
{
    size_t mask = m->cap - 1, i = (size_t)vx_hash64(key) & mask;
    while (m->slots[i] != VX_NOSLOT) i = (i + 1) & mask;
    if (m->snap) vx_snap_touch_cells(m->snap, m, i, 1);
    m->keys[i] = key;
    m->slots[i] = slot;
    m->n++;
}

/* Backward-shift deletion keeps probe chains intact without tombstones,
** so lookups never slow down under delete churn. */
static void vx_map_del(vx_keymap *m, uint64_t key)
{
    size_t mask = m->cap - 1, i = (size_t)vx_hash64(key) & mask, j;
    while (m->slots[i] != VX_NOSLOT && m->keys[i] != key) i = (i + 1) & mask;
    if (m->slots[i] == VX_NOSLOT) return;
    if (m->snap) { /* the shifts below stay within the run from i on */
        for (j = i; m->slots[j] != VX_NOSLOT; j = (j + 1) & mask) continue;
        vx_snap_touch_cells(m->snap, m, i, ((j - i) & mask) + 1);
    }
    for (j = (i + 1) & mask; m->slots[j] != VX_NOSLOT; j = (j + 1) & mask) {
        size_t home = (size_t)vx_hash64(m->keys[j]) & mask;
        /* move j back to i unless its home lies cyclically in (i, j] */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            m->keys[i] = m->keys[j];
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->slots[i] = VX_NOSLOT;
    m->n--;
}

static void vx_map_free(vx_keymap *m, vx_mem *mem)
{
    if (!m->mapped) {
        vx_table_free(mem, m->keys, m->cap * sizeof *m->keys, m->huge & 1);
        vx_table_free(mem, m->slots, m->cap * sizeof *m->slots, m->huge >> 1);
    }
    memset(m, 0, sizeof *m);
}

/* Make room for n keys at a load factor of at most 1/2. The bigger map is
** built aside and swapped in under the key-set lock (when there is one),
** so lookups wait only for the swap. */
static int vx_map_reserve(vx_keymap *m, vx_mem *mem, pthread_rwlock_t *klock,
                          size_t n)
{
    vx_keymap nm, old;
    size_t cap = 16, i;
    int hk, hs;
    while (cap / 2 < n) cap *= 2;
    if (cap <= m->cap) return VECIDX_OK;
    memset(&nm, 0, sizeof nm);
    nm.cap = cap;
    nm.keys = vx_table_alloc(mem, cap * sizeof *nm.keys, &hk);
    nm.slots = vx_table_alloc(mem, cap * sizeof *nm.slots, &hs);
    nm.huge = hk | hs << 1;
    if (!nm.keys || !nm.slots) {
        vx_map_free(&nm, mem);
        return VECIDX_ENOMEM;
    }
    memset(nm.slots, 0xff, cap * sizeof *nm.slots);
    for (i = 0; i < m->cap; i++)
        if (m->slots[i] != VX_NOSLOT) vx_map_put(&nm, m->keys[i], m->slots[i]);
    nm.snap = m->snap;
    old = *m;
    if (klock) pthread_rwlock_wrlock(klock);
    *m = nm;
    if (klock) pthread_rwlock_unlock(klock);
    if (!old.snap || !vx_snap_adopt_map(old.snap, &old)) vx_map_free(&old, mem);
    return VECIDX_OK;
}

/* Graph records are padded to whole 64-byte lines (`aligned`): a vector
** that starts mid-line spans one line more, and a graph walk is bound by
** the lines it fetches from random places. Measured at 1M x 128 (record
** 644 -> 704 bytes), that was 8-10 % more queries per second at equal ef.
** At least 32 slots per chunk keep every chunk size a multiple of 64
** bytes, so chunks carved back to back stay aligned too. Files of format
** version 1 hold packed records (aligned = 0) and are still read. */
/* Words of a record's vector: float32, or an int8 code (padded to a word)
** and its vx_i8hdr, or a binary code of whole 64-bit words. */
static uint32_t vx_code_words(uint32_t store, uint32_t dim)
{
    if (store == VECIDX_STORE_I8) return (dim + 3) / 4 + 4;
    if (store == VECIDX_STORE_BIN) return (dim + 63) / 64 * 2;
    if (store == VECIDX_STORE_F16) return (dim + 1) / 2;
    return dim;
}

/* Layouts of vx_store_init: graph records padded to whole lines (format
** version 2 on), kept float32 vectors apart from the records (version 5
** on). Older files hold the layout they were written with. */
#define VX_LAYOUT_ALIGNED 1
#define VX_LAYOUT_APART 2
#define VX_LAYOUT_NOW (VX_LAYOUT_ALIGNED | VX_LAYOUT_APART)

static void vx_store_init(vx_store *s, uint32_t dim, int cosine, uint32_t store,
                          uint32_t keep, uint32_t link0, int layout,
                          pthread_rwlock_t *klock)
{
    uint32_t shift = 4;
    memset(s, 0, sizeof *s);
    s->klock = klock;
    s->dim = dim;
    s->cosine = cosine;
    s->store = store;
    s->keep = store != VECIDX_STORE_F32 && keep;
    s->cw = vx_code_words(store, dim);
    s->link0 = link0;
    s->rec = s->cw + (link0 ? (cosine ? 1 : 0) + 1 + link0 : 0);
    s->apart = s->keep && (layout & VX_LAYOUT_APART);
    if (link0 && (layout & VX_LAYOUT_ALIGNED)) {
        s->aligned = 1;
        s->rec = (s->rec + VX_LINE_WORDS - 1) / VX_LINE_WORDS * VX_LINE_WORDS;
        shift = 5;
    }
    /* Kept float32 vectors in the chunk (version 4) counted in its size:
    ** with int8 codes at 128 dimensions a chunk then held 256 rows, and a
    ** scan of the codes in a file met the vectors every 36 KB. Kept apart,
    ** they only bound the rows, so that a chunk of short binary records
    ** does not hold 2^16 slots and its float32 part megabytes. */
    while (shift < 16 &&
           ((size_t)(s->rec + (s->keep && !s->apart ? dim : 0)) * sizeof(float)
            << (shift + 1)) <= VX_CHUNK_BYTES &&
           (!s->apart ||
            ((size_t)dim * sizeof(float) << (shift + 1)) <= VX_KEPT_BYTES))
        shift++;
    s->shift = shift;
}

/* Bytes of a chunk before its kept float32 vectors (on a line boundary),
** and in all. */
static size_t vx_store_front_bytes(const vx_store *s)
{
    size_t per = vx_store_per_chunk(s);
    size_t graph = s->link0 ? sizeof(uint32_t) + 1 : 0;
    int norms = s->cosine && !s->link0;
    return per * ((size_t)s->rec * sizeof(float) + sizeof(uint64_t) +
                  (norms ? sizeof(float) : 0) + graph + 1);
}

/* Bytes of a chunk's kept float32 vectors (0 without keep_vectors). */
static size_t vx_store_kept_bytes(const vx_store *s)
{
    return s->keep ? vx_store_per_chunk(s) * (size_t)s->dim * sizeof(float) : 0;
}

/* Bytes of the block of a chunk of our own: all but its kept vectors
** (which start on a line in the snapshot's layout). */
static size_t vx_store_mem_front(const vx_store *s)
{
    size_t front = vx_store_front_bytes(s);
    return s->keep ? (front + 63) / 64 * 64 : front;
}

/* Bytes of a chunk in memory: the kept vectors after the rest, from the
** next line (the layout of a snapshot's buffer; a chunk of our own holds
** its kept vectors in an allocation apart, see vx_store_add_chunk). */
static size_t vx_store_chunk_bytes(const vx_store *s)
{
    return vx_store_mem_front(s) + (s->keep ? vx_store_kept_bytes(s) : 0);
}

/* Bytes of a chunk in the chunk section of a file: without the kept
** vectors when they are apart (they have a section of their own). */
static size_t vx_store_file_chunk_bytes(const vx_store *s)
{
    return s->apart ? vx_store_front_bytes(s) : vx_store_chunk_bytes(s);
}

static void vx_lazy_free(vx_store *s, vx_mem *mem);

static void vx_store_destroy(vx_store *s, vx_mem *mem)
{
    size_t cb = vx_store_mem_front(s);
    uint32_t c;
    for (c = s->nmapped; c < s->nchunks; c++) {
        if (!s->chunks[c].pooled)
            vx_free(mem, s->chunks[c].base, cb + VX_LINE_SLACK);
        else
            atomic_fetch_sub_explicit(&mem->bytes, cb, memory_order_relaxed);
        if (s->keep)
            vx_free(mem, s->chunks[c].full_base,
                    vx_store_kept_bytes(s) + VX_LINE_SLACK);
    }
    for (c = 0; c < s->nblocks; c++)
        vx_huge_unmap(s->blocks[c].base, s->blocks[c].len);
    vx_free(mem, s->blocks, s->block_cap * sizeof *s->blocks);
    vx_free(mem, s->chunks, (size_t)s->chunk_cap * sizeof *s->chunks);
    vx_free(mem, s->free, (size_t)s->free_cap * sizeof *s->free);
    vx_free(mem, s->limbo, (size_t)s->free_cap * sizeof *s->limbo);
    vx_map_free(&s->map, mem);
    vx_lazy_free(s, mem);
}

/* Point c at the regions of the chunk block p (layout: see vx_chunk). */
static void vx_store_point_chunk(const vx_store *s, vx_chunk *c,
                                 unsigned char *p)
{
    size_t per = vx_store_per_chunk(s);
    c->vec = (float *)(void *)p;
    c->base = p;
    p += per * s->rec * sizeof(float);
    c->key = (uint64_t *)(void *)p;
    p += per * sizeof(uint64_t);
    c->inorm = NULL;
    if (s->cosine && !s->link0) {
        c->inorm = (float *)(void *)p;
        p += per * sizeof(float);
    }
    c->upper = NULL;
    c->level = NULL;
    if (s->link0) {
        c->upper = (uint32_t *)(void *)p;
        p += per * sizeof(uint32_t);
        c->level = p;
        p += per;
    }
    c->live = p;
    c->full = NULL;
    if (s->keep) c->full = (float *)(void *)(c->base + vx_store_mem_front(s));
    c->full_base = NULL;
    c->pooled = 0;
    c->lazy = c->klazy = VX_PIECE_GOOD;
}

static uint32_t vx_crc32c_more(uint32_t crc, const void *p, size_t n);
static uint32_t vx_get32(const unsigned char *b, size_t off);

/* A read-only handle on a file with piece checksums verifies each piece
** -- the data of VX_PIECE slots: records, keys, norms, link offsets,
** levels, states; their kept vectors apart -- the first time a read needs
** it, so that opening costs the same for a thousand vectors or a billion,
** and a damaged piece fails only the reads that meet it. Pieces are small
** because a graph walk reads one slot here and one there: the first query
** on a 1M x 128 graph met about a thousand chunks, and verifying them
** whole (90 KB each) made it 3x slower. A chunk's byte (lazy, klazy) says
** whether all its pieces are verified, so a read of a verified chunk pays
** one test; the verdict of each piece is kept in st, and readers racing
** on one piece both verify it, with the same result. A damaged piece reads
** as `bad`: a chunk all zero, every slot free, no links, so a search walks
** on harmlessly, and the public call that met it reports VECIDX_ECORRUPT
** (vx_dmg). */

typedef struct vx_lazy {
    const unsigned char *sect[2]; /* mapped chunk section, kept vectors */
    uint64_t off[2];              /* their offsets in the file */
    size_t len[2];                /* bytes of one chunk in each */
    const unsigned char *crc;     /* u32 per piece, then per kept piece */
    uint32_t nchunks, ppc;        /* chunks, pieces per chunk */
    uint8_t *st[2];               /* per piece: a VX_PIECE_ verdict */
    uint32_t *nok[2];             /* per chunk: pieces found good */
    vx_chunk bad;
    unsigned char *zero; /* bad's bytes (zero_len), VX_LINE_SLACK more */
    size_t zero_len;
    /* The file, open for a lean reader (VECIDX_LEAN) whose kept vectors
    ** are apart and as the file holds them (no log replayed into the
    ** mapping), else -1: those vectors are then verified and re-ranked
    ** through pread (vx_kept_dist) into buffers, not through the mapping,
    ** so that the resident set stays what the graph walks touch. Through
    ** the mapping, 10k queries on 200k x 384 int8 (re-ranking 20 each)
    ** left 400-415 MB resident, more than the float32 index: each re-rank
    ** faulted in a page and the cached pages around it, each verification
    ** read a 24 KB piece, and each chunk's second piece the whole chunk;
    ** with pread, 122 MB, at a system call per vector re-ranked. */
    int fd;
} vx_lazy;

static int vx_io_read_all(int fd, void *buf, size_t n, uint64_t off);
static int vx_io_close(int fd);

/* CRC-32C of piece p of the chunk laid out at b (front part): the bytes
** of its slots in each of the chunk's arrays, in their order. The file
** format's piece checksum (docs/FORMAT.md), for writer and reader. */
static uint32_t vx_piece_crc(const vx_store *s, const unsigned char *b,
                             uint32_t p)
{
    vx_chunk c;
    size_t at = (size_t)p * VX_PIECE;
    uint32_t crc;
    vx_store_point_chunk(s, &c, (unsigned char *)(uintptr_t)b);
    crc = vx_crc32c_more(0, c.vec + at * s->rec,
                         (size_t)VX_PIECE * s->rec * sizeof(float));
    crc = vx_crc32c_more(crc, c.key + at, VX_PIECE * sizeof *c.key);
    if (c.inorm) crc = vx_crc32c_more(crc, c.inorm + at, VX_PIECE * 4);
    if (c.upper) crc = vx_crc32c_more(crc, c.upper + at, VX_PIECE * 4);
    if (c.level) crc = vx_crc32c_more(crc, c.level + at, VX_PIECE);
    return vx_crc32c_more(crc, c.live + at, VX_PIECE);
}

/* Bytes of one kept piece: VX_PIECE slots' float32 vectors. */
static size_t vx_piece_kept_bytes(const vx_store *s)
{
    return (size_t)VX_PIECE * s->dim * sizeof(float);
}

/* Where byte `at` of chunk ci's front (kept 0) or kept vectors (kept 1)
** lies in the file. */
static uint64_t vx_lazy_off(const vx_lazy *z, int kept, uint32_t ci,
                            uint64_t at)
{
    return z->off[kept] + (uint64_t)ci * z->len[kept] + at;
}

/* *crc = CRC-32C of kept piece p of chunk ci, read from a lean reader's
** file (vx_lazy.fd) with pread, 8 KB at a time; -1 if a read fails. Not
** inlined: its buffer stays off the stack of the reads that call it. */
static VX_NOINLINE int vx_lazy_kept_pread_crc(const vx_store *s, uint32_t ci,
                                              uint32_t p, uint32_t *crc)
{
    const vx_lazy *z = s->lazy;
    size_t n = vx_piece_kept_bytes(s), m;
    uint64_t off = vx_lazy_off(z, 1, ci, (uint64_t)p * n);
    unsigned char buf[8192];
    *crc = 0;
    for (; n; n -= m, off += m) {
        m = n < sizeof buf ? n : sizeof buf;
        if (vx_io_read_all(z->fd, buf, m, off) != 0) return -1;
        *crc = vx_crc32c_more(*crc, buf, m);
    }
    return 0;
}

/* Piece gp (a slot's number >> VX_PIECE_SHIFT) of the front (kept 0) or
** the kept vectors (kept 1): 1 once verified good, 0 if damaged (noted
** as met by this call when `meet`). */
static int vx_lazy_piece(const vx_store *s, uint32_t gp, int kept, int meet)
{
    vx_lazy *z = s->lazy;
    uint32_t ci = gp / z->ppc, p = gp % z->ppc;
    uint8_t v = VX_PEEK(&z->st[kept][gp]), unknown = VX_PIECE_UNKNOWN;
    if (v == VX_PIECE_UNKNOWN) {
        const unsigned char *chunk = z->sect[kept] + (size_t)ci * z->len[kept];
        uint32_t want = vx_get32(z->crc,
                                 4 * ((size_t)kept * z->nchunks * z->ppc + gp));
        size_t kb = vx_piece_kept_bytes(s);
        uint32_t got;
        /* A lean reader's read that fails checks the mapping instead: the
        ** same bytes, with the mapping's risks (a plain reader's). */
        if (!kept)
            got = vx_piece_crc(s, chunk, p);
        else if (z->fd < 0 || vx_lazy_kept_pread_crc(s, ci, p, &got) != 0)
            got = vx_crc32c_more(0, chunk + (size_t)p * kb, kb);
        v = got == want ? VX_PIECE_GOOD : VX_PIECE_BAD;
        /* the first to decide counts it; a chunk all good reads fast */
        if (__atomic_compare_exchange_n(&z->st[kept][gp], &unknown, v, 0,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED) &&
            v == VX_PIECE_GOOD &&
            __atomic_add_fetch(&z->nok[kept][ci], 1, __ATOMIC_RELAXED) ==
                z->ppc) {
            vx_chunk *c = &VX_LOAD(&s->chunks)[ci];
            __atomic_store_n(kept ? &c->klazy : &c->lazy, VX_PIECE_GOOD,
                             __ATOMIC_RELAXED);
        }
    }
    if (v == VX_PIECE_GOOD || !meet) return v == VX_PIECE_GOOD;
    vx_dmg_note(
        kept ? "kept vectors" : "vectors", gp << VX_PIECE_SHIFT,
        vx_lazy_off(z, kept, ci,
                    kept ? (uint64_t)p * vx_piece_kept_bytes(s)
                         : (uint64_t)p * VX_PIECE * s->rec * sizeof(float)));
    return 0;
}

/* The chunk of slot, its piece (front or kept) verified. A chunk read at
** a second piece is verified whole: reads that come back to a chunk keep
** coming (a set of queries asked again, the hubs of a graph), and a chunk
** all verified is read with one test, where one only in part costs a
** lookup per read (measured: 13 % fewer queries per second on a 1M graph
** asked the same 1000 queries again and again). Not so the kept vectors
** of a reader that reads them with pread: re-ranks come back to few of
** them, and a whole chunk (up to 2 MB) would stall the one query that
** met it. The other pieces' damage, if any, is not this call's: it is met
** by the reads that need them. */
static vx_chunk *vx_lazy_slot(const vx_store *s, uint32_t slot, int kept)
{
    vx_lazy *z = s->lazy;
    uint32_t gp = slot >> VX_PIECE_SHIFT, ci = slot >> s->shift, p;
    if (VX_PEEK(&z->st[kept][gp]) == VX_PIECE_UNKNOWN &&
        VX_PEEK(&z->nok[kept][ci]) && !(kept && z->fd >= 0))
        for (p = 0; p < z->ppc; p++)
            (void)vx_lazy_piece(s, ci * z->ppc + p, kept, 0);
    return vx_lazy_piece(s, gp, kept, 1) ? &VX_LOAD(&s->chunks)[ci] : &z->bad;
}

/* Chunk ci, every piece of its front (kept 0) or kept vectors verified. */
static vx_chunk *vx_lazy_chunk(const vx_store *s, uint32_t ci, int kept)
{
    vx_lazy *z = s->lazy;
    uint32_t p;
    for (p = 0; p < z->ppc; p++)
        if (!vx_lazy_piece(s, ci * z->ppc + p, kept, 1)) return &z->bad;
    return &VX_LOAD(&s->chunks)[ci];
}

/* Make s's mapped chunks verified on first read: sect/off as in vx_lazy
** (the kept vectors' only with keep_vectors), crc the table of their
** pieces' checksums. */
static int vx_lazy_init(vx_store *s, vx_mem *mem, const unsigned char *sect[2],
                        const uint64_t off[2], const unsigned char *crc)
{
    vx_lazy *z = vx_malloc(mem, sizeof *z);
    size_t np = (size_t)s->nchunks << (s->shift - VX_PIECE_SHIFT);
    uint32_t c;
    int k;
    if (!z) return VECIDX_ENOMEM;
    memset(z, 0, sizeof *z);
    z->fd = -1;
    z->nchunks = s->nchunks;
    z->ppc = 1u << (s->shift - VX_PIECE_SHIFT);
    z->zero_len = vx_store_chunk_bytes(s);
    s->lazy = z; /* vx_lazy_free takes what was allocated */
    if (!(z->zero = vx_malloc(mem, z->zero_len + VX_LINE_SLACK)))
        return VECIDX_ENOMEM;
    for (k = 0; k < (s->apart ? 2 : 1); k++)
        if (!(z->st[k] = vx_malloc(mem, np)) ||
            !(z->nok[k] = vx_malloc(mem, z->nchunks * sizeof *z->nok[k])))
            return VECIDX_ENOMEM;
        else {
            memset(z->st[k], VX_PIECE_UNKNOWN, np);
            memset(z->nok[k], 0, z->nchunks * sizeof *z->nok[k]);
        }
    memset(z->zero, 0, z->zero_len + VX_LINE_SLACK);
    vx_store_point_chunk(s, &z->bad, vx_line_up(z->zero));
    z->sect[0] = sect[0];
    z->sect[1] = sect[1];
    z->off[0] = off[0];
    z->off[1] = off[1];
    z->len[0] = vx_store_file_chunk_bytes(s);
    z->len[1] = s->apart ? vx_store_kept_bytes(s) : 0;
    z->crc = crc;
    for (c = 0; c < s->nchunks; c++) {
        s->chunks[c].lazy = VX_PIECE_UNKNOWN;
        s->chunks[c].klazy = s->apart ? VX_PIECE_UNKNOWN : VX_PIECE_GOOD;
    }
    s->pst = z->st[0];
    s->kpst = z->st[1];
    return VECIDX_OK;
}

/* Whether kept vectors are read by pread: a lean reader's file is open. */
static inline int vx_lazy_lean(const vx_store *s)
{
    return s->lazy && s->lazy->fd >= 0;
}

/* Close the reader's file: kept vectors are read through the mapping
** from now on. */
static void vx_lazy_drop_fd(vx_store *s)
{
    if (vx_lazy_lean(s)) {
        (void)vx_io_close(s->lazy->fd);
        s->lazy->fd = -1;
    }
}

static void vx_lazy_free(vx_store *s, vx_mem *mem)
{
    vx_lazy *z = s->lazy;
    size_t np;
    int k;
    if (!z) return;
    vx_lazy_drop_fd(s);
    np = (size_t)z->nchunks * z->ppc;
    for (k = 0; k < 2; k++) {
        vx_free(mem, z->st[k], np);
        vx_free(mem, z->nok[k], z->nchunks * sizeof *z->nok[k]);
    }
    vx_free(mem, z->zero, z->zero_len + VX_LINE_SLACK);
    vx_free(mem, z, sizeof *z);
    s->lazy = NULL;
    s->pst = s->kpst = NULL;
}

/* A chunk of cb bytes from the huge-page pool, or NULL to use the
** allocator: with a custom allocator, on other systems, while the chunks
** taken so far fit in one block (small indexes keep small pages and
** exact-size allocations), or if no block can be mapped. */
static unsigned char *vx_store_carve(vx_store *s, vx_mem *mem, size_t cb)
{
    vx_block *b = s->nblocks ? &s->blocks[s->nblocks - 1] : NULL;
    if (!VX_HAVE_HUGE || mem->a.malloc_fn ||
        (size_t)(s->nchunks - s->nmapped) * cb < VX_HUGE_BLOCK)
        return NULL;
    if (!b || b->len - b->used < cb) {
        size_t len = VX_HUGE_BLOCK > cb ? VX_HUGE_BLOCK : cb;
        len = vx_huge_len(len);
        if (vx_grow(mem, (void **)&s->blocks, &s->block_cap, s->nblocks + 1,
                    sizeof *s->blocks) != VECIDX_OK)
            return NULL;
        b = &s->blocks[s->nblocks];
        if (!(b->base = vx_huge_map(len))) return NULL;
        b->len = len;
        b->used = 0;
        s->nblocks++;
    }
    b->used += cb;
    atomic_fetch_add_explicit(&mem->bytes, cb, memory_order_relaxed);
    return b->base + b->used - cb;
}

/* Add a chunk. A full chunk table is copied into a bigger one and the old
** one retired, not freed: searches may be reading it. */
static int vx_store_add_chunk(vx_store *s, vx_mem *mem, vx_ebr *ebr)
{
    size_t cb = vx_store_mem_front(s), kb = 0;
    unsigned char *p, *base, *kbase = NULL, *kept = NULL;
    vx_chunk *table = s->chunks;
    int pooled;
    if (s->nchunks == s->chunk_cap) {
        uint32_t cap = s->chunk_cap ? s->chunk_cap * 2 : 8;
        vx_retired *node = vx_malloc(mem, sizeof *node);
        if (!node || !(table = vx_malloc(mem, (size_t)cap * sizeof *table))) {
            vx_free(mem, node, sizeof *node);
            return VECIDX_ENOMEM;
        }
        if (s->nchunks) memcpy(table, s->chunks, s->nchunks * sizeof *table);
        if (s->chunks)
            vx_ebr_retire(ebr, node, s->chunks,
                          (size_t)s->chunk_cap * sizeof *s->chunks,
                          vx_ebr_advance(ebr));
        else
            vx_free(mem, node, sizeof *node);
        VX_STORE(&s->chunks, table);
        s->chunk_cap = cap;
    }
    /* Kept vectors in an allocation of their own, so that the blocks of
    ** codes lie end to end and a scan streams through them: with each
    ** chunk's 512 KB of kept vectors between its 147 KB of codes and the
    ** next chunk's, a 1M x 128 int8 scan ran 7-13 % slower than without
    ** kept vectors; apart, as fast. */
    if (s->keep) {
        kb = vx_store_kept_bytes(s);
        if (!(kbase = vx_malloc(mem, kb + VX_LINE_SLACK))) return VECIDX_ENOMEM;
        kept = vx_line_up(kbase);
        memset(kept, 0, kb);
    }
    p = base = vx_store_carve(s, mem, cb);
    pooled = p != NULL;
    if (!p) {
        if (!(base = vx_malloc(mem, cb + VX_LINE_SLACK))) {
            vx_free(mem, kbase, kb + VX_LINE_SLACK);
            return VECIDX_ENOMEM;
        }
        p = vx_line_up(base);
    }
    /* Zeroed whole: unused slots are saved to files as they are, and
    ** their bytes should be defined and repeatable. */
    memset(p, 0, cb);
    vx_store_point_chunk(s, &table[s->nchunks], p);
    table[s->nchunks].base = base;
    table[s->nchunks].pooled = pooled;
    table[s->nchunks].full = (float *)(void *)kept;
    table[s->nchunks].full_base = kbase;
    VX_STORE(&s->nchunks, s->nchunks + 1);
    return VECIDX_OK;
}

/* Grow the free stack and the limbo, which can each hold every slot, so
** that removing and retiring never allocate. */
static int vx_store_grow_free(vx_store *s, vx_mem *mem, size_t cap)
{
    uint32_t *f, *l;
    if (cap > UINT32_MAX) cap = UINT32_MAX;
    if (cap <= s->free_cap) return VECIDX_OK;
    f = vx_malloc(mem, cap * sizeof *f);
    l = vx_malloc(mem, cap * sizeof *l);
    if (!f || !l) {
        vx_free(mem, f, cap * sizeof *f);
        vx_free(mem, l, cap * sizeof *l);
        return VECIDX_ENOMEM;
    }
    if (s->nfree) memcpy(f, s->free, s->nfree * sizeof *f);
    if (s->nlimbo) memcpy(l, s->limbo, s->nlimbo * sizeof *l);
    vx_free(mem, s->free, (size_t)s->free_cap * sizeof *s->free);
    vx_free(mem, s->limbo, (size_t)s->free_cap * sizeof *s->limbo);
    s->free = f;
    s->limbo = l;
    s->free_cap = (uint32_t)cap;
    return VECIDX_OK;
}

/* Make room for n more vectors: chunks, free-stack capacity and key-map
** cells. Everything an insert or remove needs is obtained here, so that
** once this succeeds the change itself cannot fail half-way. */
static int vx_store_reserve(vx_store *s, vx_mem *mem, vx_ebr *ebr, size_t n)
{
    size_t fresh = n > s->nfree ? n - s->nfree : 0;
    size_t slots = (size_t)s->nslots + fresh, per = vx_store_per_chunk(s);
    int rc;
    if (slots > VECIDX_MAX_COUNT) return VECIDX_EFULL;
    while ((size_t)s->nchunks * per < slots)
        if ((rc = vx_store_add_chunk(s, mem, ebr)) != VECIDX_OK) return rc;
    if (slots > s->free_cap &&
        (rc = vx_store_grow_free(s, mem, (size_t)s->nchunks * per)) != 0)
        return rc;
    return vx_map_reserve(&s->map, mem, s->klock, (size_t)s->count + n);
}

/* The int8 code of x * mul: each vector on its own range, so a code never
** clips and needs no training. Components map linearly from [lo, hi] to
** [-127, 127]; the header keeps the map back and two sums the distances
** need. Padding bytes are zero, so equal vectors give equal bytes. */
static void vx_i8_encode(const float *x, uint32_t dim, float mul, int8_t *code)
{
    vx_i8hdr *h = vx_i8_hdr(code, dim);
    float lo = x[0] * mul, hi = lo;
    double n2 = 0;
    int32_t sum = 0;
    uint32_t i;
    for (i = 1; i < dim; i++) {
        float t = x[i] * mul;
        lo = t < lo ? t : lo;
        hi = t > hi ? t : hi;
    }
    h->off = lo / 2 + hi / 2; /* halves first: no overflow near FLT_MAX */
    h->scale = (hi / 2 - lo / 2) / 127.0f;
    if (!(h->scale > 0)) h->scale = 1; /* all equal: every code 0 */
    for (i = 0; i < dim; i++) {
        float t = (x[i] * mul - h->off) / h->scale;
        long c = lrintf(t < -127 ? -127 : t > 127 ? 127 : t);
        double y = (double)h->off + (double)h->scale * (double)c;
        code[i] = (int8_t)c;
        sum += (int32_t)c;
        n2 += y * y;
    }
    memset(code + dim, 0, (dim + 3) / 4 * 4 - dim);
    h->sum = sum;
    h->n2 = (float)n2;
}

/* A float32 query's int8 code (vx_i8_encode), the codes rc of its
** rounding error, and the terms of both for vx_i8_dist (vx_i8q). The error
** of a component is at most half a step, so a 254th of the step codes it
** in [-127, 127]. */
static void vx_i8_encode_query(const float *x, uint32_t dim, float mul,
                               int8_t *code, int8_t *rc, vx_i8q *qi)
{
    const vx_i8hdr *h = vx_i8_hdr(code, dim);
    double rscale, n2 = 0, u2 = 0, e2 = 0;
    int32_t rsum = 0;
    uint32_t i;
    vx_i8_encode(x, dim, mul, code);
    *qi = vx_i8_query(h, dim);
    rscale = (double)h->scale / 254;
    for (i = 0; i < dim; i++) {
        double u = (double)(x[i] * mul);
        double y = (double)h->off + (double)h->scale * (double)code[i];
        double t = (u - y) / rscale;
        long c = lrint(t < -127 ? -127 : t > 127 ? 127 : t);
        rc[i] = (int8_t)c;
        rsum += (int32_t)c;
        y += rscale * (double)c;
        n2 += y * y;
        u2 += u * u;
        e2 += (u - y) * (u - y);
    }
    memset(rc + dim, 0, (dim + 3) / 4 * 4 - dim);
    qi->rc = rc;
    qi->rscale = rscale;
    qi->c += rscale * rsum;
    qi->n2 = n2;
    qi->norm = sqrt(u2);
    qi->err = sqrt(e2);
}

static void vx_store_write(vx_store *s, uint32_t slot, const float *v)
{
    float *r = vx_store_vec(s, slot), inorm = 1;
    if (s->cosine) {
        inorm = (float)(1.0 / sqrt(vx_sumsq(v, s->dim)));
        *vx_store_inorm_at(s, slot) = inorm;
    }
    /* Compressed cosine codes hold the unit vector: a code dot product is
    ** then the cosine itself. */
    if (s->store == VECIDX_STORE_I8)
        vx_i8_encode(v, s->dim, inorm, (int8_t *)(void *)r);
    else if (s->store == VECIDX_STORE_BIN)
        vx_bin_encode(v, (uint64_t *)(void *)r, s->dim);
    else if (s->store == VECIDX_STORE_F16) /* the odd half word zero */
        (void)vx_f16_encode(v, memset(r, 0, (size_t)s->cw * 4), s->dim);
    else
        memcpy(r, v, (size_t)s->dim * sizeof(float));
    if (s->keep)
        memcpy((float *)(uintptr_t)vx_store_full(s, slot), v,
               (size_t)s->dim * sizeof(float));
}

/* A slot's vector: as given when kept (float32 storage, or keep_vectors),
** else decoded from its int8 code, scaled back from the unit vector that
** cosine codes hold. Binary storage always keeps its vectors. */
static void vx_store_read(const vx_store *s, uint32_t slot, float *out)
{
    const int8_t *c = (const int8_t *)(const void *)vx_store_vec(s, slot);
    const vx_i8hdr *h;
    float mul = 1;
    uint32_t i;
    if (s->store == VECIDX_STORE_F32 || s->keep) {
        memcpy(out, s->keep ? vx_store_full(s, slot) : vx_store_vec(s, slot),
               (size_t)s->dim * sizeof(float));
        return;
    }
    if (s->store == VECIDX_STORE_F16) {
        for (i = 0; i < s->dim; i++)
            out[i] = vx_f16_to_f32(((const uint16_t *)(const void *)c)[i]);
        return;
    }
    h = vx_i8_hdr(c, s->dim);
    if (s->cosine) mul = 1 / vx_store_inorm(s, slot);
    for (i = 0; i < s->dim; i++) out[i] = (h->off + h->scale * c[i]) * mul;
}

/* Storing a vector takes three steps, so that a search never sees half of
** one and the key-set lock is held only for the last: vx_store_take picks
** a slot (room must be reserved), vx_store_fill writes the vector and key
** while no search looks at the slot (it is free, or beyond nslots), and
** vx_store_publish makes it live and maps the key. */
static uint32_t vx_store_take(vx_store *s)
{
    if (s->nfree) return s->free[--s->nfree];
    /* Searches may scan the new slot at once: they skip it until it is
    ** published. */
    VX_STORE(&s->nslots, s->nslots + 1);
    return s->nslots - 1;
}

static void vx_store_fill(vx_store *s, uint32_t slot, uint64_t key,
                          const float *v)
{
    vx_store_write(s, slot, v);
    VX_SLOT_CHUNK(s, slot)->key[VX_SLOT_INDEX(s, slot)] = key;
}

/* Make a filled slot live; the key-set lock is held. */
static void vx_store_publish(vx_store *s, uint32_t slot)
{
    vx_map_put(&s->map, vx_store_key(s, slot), slot);
    vx_store_set_state(s, slot, VX_LIVE);
    VX_STORE(&s->count, s->count + 1);
}

/* Take the key out of the index (key-set lock held). A graph kind buries
** the slot until its links are repaired; others retire it at once. */
static void vx_store_remove(vx_store *s, uint32_t slot, int bury)
{
    vx_map_del(&s->map, vx_store_key(s, slot));
    VX_STORE(&s->count, s->count - 1);
    if (bury) {
        vx_store_set_state(s, slot, VX_BURIED);
        VX_STORE(&s->nburied, s->nburied + 1);
    } else {
        vx_store_set_state(s, slot, VX_FREE);
        s->limbo[s->nlimbo++] = slot;
    }
}

/* A buried slot that nothing links to any more goes to the limbo. */
static void vx_store_retire_buried(vx_store *s, uint32_t slot)
{
    vx_store_set_state(s, slot, VX_RETIRED);
    s->limbo[s->nlimbo++] = slot;
    VX_STORE(&s->nburied, s->nburied - 1);
}

/* Close the batch of slots retired since the last seal under tag. With
** every batch in use, the newest two merge (the older waits a little
** longer), so sealing never allocates. */
static void vx_store_seal(vx_store *s, uint64_t tag)
{
    if (s->nlimbo == s->nsealed) return;
    if (s->nbatch == sizeof s->batch / sizeof s->batch[0]) s->nbatch--;
    s->batch[s->nbatch].tag = tag;
    s->batch[s->nbatch++].end = s->nsealed = s->nlimbo;
}

/* How many limbo slots, oldest first, no search can reach any more:
** whole batches with a tag older than the oldest running search. */
static uint32_t vx_store_reclaimable(const vx_store *s, uint64_t oldest,
                                     unsigned *nb)
{
    unsigned b = 0;
    while (b < s->nbatch && s->batch[b].tag < oldest) b++;
    *nb = b;
    return b ? s->batch[b - 1].end : 0;
}

/* Put the first n limbo slots (in nb batches) on the free stack, in the
** order they were retired. */
static void vx_store_reclaim(vx_store *s, uint32_t n, unsigned nb)
{
    uint32_t i;
    unsigned b;
    for (i = 0; i < n; i++) {
        vx_store_set_state(s, s->limbo[i], VX_FREE);
        s->free[s->nfree++] = s->limbo[i];
    }
    memmove(s->limbo, s->limbo + n, (size_t)(s->nlimbo - n) * sizeof *s->limbo);
    s->nlimbo -= n;
    s->nsealed -= n;
    for (b = nb; b < s->nbatch; b++) {
        s->batch[b - nb] = s->batch[b];
        s->batch[b - nb].end -= n;
    }
    s->nbatch -= nb;
}

/* Check the storage invariants; returns NULL or a static description.
** Limbo slots of a graph are buried, others free. */
static const char *vx_store_check(const vx_store *s, int graph,
                                  uint32_t *bad_slot)
{
    uint32_t slot, live = 0, buried = 0, retired = 0, i;
    size_t cells = 0;
    *bad_slot = VX_NOSLOT;
    if ((size_t)s->nslots > (size_t)s->nchunks * vx_store_per_chunk(s))
        return "slot count exceeds allocated chunks";
    for (slot = 0; slot < s->nslots; slot++) {
        if (vx_store_live(s, slot) == VX_BURIED ||
            vx_store_live(s, slot) == VX_DOOMED)
            buried++;
        if (vx_store_live(s, slot) == VX_RETIRED) retired++;
        if (vx_store_live(s, slot) != VX_LIVE) continue;
        live++;
        *bad_slot = slot;
        if (vx_map_find(&s->map, vx_store_key(s, slot)) != slot)
            return "live slot's key does not map back to it";
        if (s->cosine && !(vx_store_inorm(s, slot) > 0))
            return "live slot has no valid inverse norm";
    }
    *bad_slot = VX_NOSLOT;
    if (live != s->count) return "live slots differ from the count";
    if (buried != s->nburied || retired != (graph ? s->nlimbo : 0))
        return "buried slots differ from their count";
    if (s->map.n != s->count) return "key map size differs from the count";
    for (i = 0; i < s->map.cap; i++) {
        if (s->map.slots[i] == VX_NOSLOT) continue;
        cells++;
        if (s->map.slots[i] >= s->nslots ||
            vx_store_live(s, s->map.slots[i]) != VX_LIVE)
            return "key map points to a slot without a vector";
    }
    if (cells != s->map.n) return "key map cell count differs from its size";
    if ((size_t)s->nfree + s->nlimbo + s->count + s->nburied != s->nslots)
        return "free, live and buried slots do not add up to used slots";
    for (i = 0; i < s->nfree + s->nlimbo; i++) {
        uint32_t f = i < s->nfree ? s->free[i] : s->limbo[i - s->nfree];
        int want = i < s->nfree || !graph ? VX_FREE : VX_RETIRED;
        *bad_slot = f;
        if (f >= s->nslots || vx_store_live(s, f) != want)
            return "free stack holds a live or unused slot";
    }
    *bad_slot = VX_NOSLOT;
    return NULL;
}

/* ======================================================================
** 4. Top-k
**
** A bounded max-heap on (distance, id): the root is the worst kept result,
** so a candidate is compared with one value before any other work. Ties
** are broken by id so results are deterministic whatever the scan order.
** ====================================================================== */

typedef struct vx_topk {
    size_t k, n;
    float *d;
    uint64_t *id;
} vx_topk;

static inline int vx_topk_worse(float da, uint64_t ia, float db, uint64_t ib)
{
    return da > db || (da == db && ia > ib);
}

/* Would (d, id) enter the heap? */
static inline int vx_topk_admits(const vx_topk *h, float d, uint64_t id)
{
    return h->n < h->k || vx_topk_worse(h->d[0], h->id[0], d, id);
}

/* d cannot enter a full heap, whatever its id: the scans decide most rows
** by this alone, without loading their keys (a second stream, which
** stalled the int8 scan). */
static inline int vx_topk_beyond(const vx_topk *h, float d)
{
    return h->n == h->k && d > h->d[0];
}

/* Distances the scans (vx_flat_offer, vx_ivf_scan) test as one group
** against a full heap (vx_topk_skips) before they load any key. */
#define VX_OFFER_GROUP 16u

/* None of dist[0..n) can enter h: it is full and each lies beyond its
** worst (a NaN, which would enter as infinity, counts as one that may
** enter). One branch-free pass the compiler vectorises. */
static inline int vx_topk_skips(const vx_topk *h, const float *dist, size_t n)
{
    float worst;
    int hit = 0;
    size_t j;
    if (h->n < h->k) return 0;
    worst = h->d[0];
    for (j = 0; j < n; j++) hit |= !(dist[j] > worst);
    return !hit;
}

static void vx_topk_sift_down(vx_topk *h, size_t i, size_t n)
{
    float d = h->d[i];
    uint64_t id = h->id[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n &&
            vx_topk_worse(h->d[c + 1], h->id[c + 1], h->d[c], h->id[c]))
            c++;
        if (!vx_topk_worse(h->d[c], h->id[c], d, id)) break;
        h->d[i] = h->d[c];
        h->id[i] = h->id[c];
        i = c;
    }
    h->d[i] = d;
    h->id[i] = id;
}

/* Insert (d, id), evicting the worst when full; caller checked admits. */
static void vx_topk_push(vx_topk *h, float d, uint64_t id)
{
    size_t i;
    if (h->n == h->k) {
        h->d[0] = d;
        h->id[0] = id;
        vx_topk_sift_down(h, 0, h->n);
        return;
    }
    for (i = h->n++; i > 0;) {
        size_t parent = (i - 1) / 2;
        if (!vx_topk_worse(d, id, h->d[parent], h->id[parent])) break;
        h->d[i] = h->d[parent];
        h->id[i] = h->id[parent];
        i = parent;
    }
    h->d[i] = d;
    h->id[i] = id;
}

/* Small heaps sort by insertion: k = 10 by the heap took 4 % of a search
** scoring 20 keys. (distance, id) orders them totally, so both ways give
** the same order. */
#define VX_TOPK_INSERT 16

/* Sort in place into ascending (closest first) order. */
static void vx_topk_sort(vx_topk *h)
{
    size_t n = h->n, i, j;
    if (n <= VX_TOPK_INSERT) {
        for (i = 1; i < n; i++) {
            float d = h->d[i];
            uint64_t id = h->id[i];
            for (j = i;
                 j > 0 && vx_topk_worse(h->d[j - 1], h->id[j - 1], d, id);
                 j--) {
                h->d[j] = h->d[j - 1];
                h->id[j] = h->id[j - 1];
            }
            h->d[j] = d;
            h->id[j] = id;
        }
        return;
    }
    while (n > 1) {
        float d = h->d[0];
        uint64_t id = h->id[0];
        n--;
        h->d[0] = h->d[n];
        h->id[0] = h->id[n];
        h->d[n] = d;
        h->id[n] = id;
        vx_topk_sift_down(h, 0, n);
    }
}

/* Drop repeats of a key from a sorted heap, keeping the closest; 1 if
** there were any. A key can be met twice only when a write moved it to
** another slot while the search ran (an upsert, or a remove and an add). */
static int vx_topk_dedupe(vx_topk *h)
{
    size_t i, j, m = 0;
    for (i = 0; i < h->n; i++) {
        for (j = 0; j < m && h->id[j] != h->id[i]; j++) continue;
        if (j < m) continue;
        h->d[m] = h->d[i];
        h->id[m++] = h->id[i];
    }
    j = h->n != m;
    h->n = m;
    return (int)j;
}

/* Copy sorted results out and pad the rest of the k entries. */
static void vx_topk_emit(const vx_topk *h, size_t k, uint64_t *keys,
                         float *dists, size_t *found)
{
    size_t i;
    for (i = 0; i < k; i++) {
        keys[i] = i < h->n ? h->id[i] : UINT64_MAX;
        if (dists) dists[i] = i < h->n ? h->d[i] : INFINITY;
    }
    *found = h->n;
}

static int vx_topk_alloc(vx_topk *h, vx_mem *mem, size_t k)
{
    h->k = k;
    h->n = 0;
    h->d = vx_malloc(mem, k * sizeof *h->d);
    h->id = vx_malloc(mem, k * sizeof *h->id);
    if (h->d && h->id) return VECIDX_OK;
    vx_free(mem, h->d, k * sizeof *h->d);
    vx_free(mem, h->id, k * sizeof *h->id);
    h->d = NULL;
    h->id = NULL;
    return VECIDX_ENOMEM;
}

static void vx_topk_free(vx_topk *h, vx_mem *mem)
{
    vx_free(mem, h->d, h->k * sizeof *h->d);
    vx_free(mem, h->id, h->k * sizeof *h->id);
    h->d = NULL;
    h->id = NULL;
}

/* ======================================================================
** 5. Flat
**
** Exact search scans the slots chunk by chunk in blocks of rows small
** enough to stay in L2 cache (a scan that asks the filter first, a chunk
** at a time): the kernel fills a block of distances, then the block is
** offered to the heap. A batch of queries walks the same blocks once per
** group of queries, so each block is read from memory once per group
** instead of once per query.
** ====================================================================== */

#define VX_FLAT_BLOCK_BYTES (128u * 1024u)
#define VX_FLAT_MAX_ROWS 256u
#define VX_FLAT_QGROUP 8u

/* The handle embeds the state of every kind, so the kinds' types are
** declared here, ahead of the sections that implement them. */

#define VX_HNSW_MAX_LEVEL 15
#define VX_HNSW_MAX_M 128u   /* level-0 lists hold up to 2*M links */
#define VX_SCRATCH_CELLS 64u /* idle search scratches kept per graph */
#define VX_HNSW_NLOCKS 4096u
#define VX_HNSW_SUBBATCH 4096u /* nodes stored, then linked, at a time */
#define VX_NORM_BUCKETS 2048   /* squared-norm histogram of a repair */

/* Phases of a repair pass (section 6), in order. */
enum {
    VX_PASS_IDLE = 0,
    VX_PASS_REPAIR,   /* rewire the lists that link to doomed nodes */
    VX_PASS_LINKBACK, /* IP: offer repaired nodes to their new links */
    VX_PASS_MARK,     /* mark the in-links at `level` */
    VX_PASS_OFFER,    /* offer the nodes left without one at `level` */
    VX_PASS_IP_HIST,  /* IP: norms of the unreachable level-0 nodes */
    VX_PASS_IP_PICK,  /* IP: mark the largest of them */
    VX_PASS_IP_OFFER, /* IP: offer those */
    VX_PASS_RETIRE    /* move the doomed nodes to the limbo */
};

/* A repair pass under way: each phase walks the slots [cursor, end). */
typedef struct vx_pass {
    uint32_t phase, cursor, end;
    uint32_t ndoomed;      /* doomed nodes not yet retired */
    int32_t level;         /* MARK, OFFER: the level */
    uint32_t ipround;      /* IP: the extra marking before IP_HIST */
    uint32_t thresh, at_t; /* IP_PICK: bucket, and how many of it to take */
    uint32_t hist[VX_NORM_BUCKETS];
} vx_pass;
#define VX_IVF_MAX_NLIST (1u << 20)

typedef struct vx_cand {
    float d;
    uint32_t slot;
} vx_cand;

/* Per-search working memory, pooled so concurrent searches each get their
** own and a search allocates nothing once the pool is warm. Visited marks
** are epoch tags: a new search bumps the epoch instead of clearing. One
** byte per node keeps the tags of a million-node graph in L2 cache; the
** array is cleared once every 255 searches. */
typedef struct vx_hnsw_scratch {
    uint8_t *visit;
    size_t visit_cap;
    uint8_t epoch;
    vx_cand *cand; /* frontier, a max-heap on -d (closest on top) */
    size_t ncand, cand_cap;
    vx_cand *res; /* results, a max-heap on d bounded by ef */
    size_t nres, res_cap;
    vx_cand *sel; /* candidate lists for neighbour selection */
    size_t sel_cap;
    vx_cand *up; /* an insert's neighbours above level 0 (vx_hnsw_insert) */
    size_t up_cap;
    uint32_t *ids; /* a link list, copied out */
    size_t ids_cap;
    size_t visited;         /* nodes scored at level 0, this search */
    size_t expanded;        /* nodes whose links it read */
    size_t asked, admitted; /* nodes the filter was asked about, passed */
    /* A filtered search's test for a set lying away from the query
    ** (VX_FAR_MEET): made once asked reaches far_at (0: no test); far is
    ** set when it failed and the walk gave up. */
    size_t far_at;
    double far_frac;
    int far;
    int oom;
    int writer;    /* used by a write: lock lists during parallel passes,
                      give distances up on proof only (vx_hnsw_bound_dist) */
    int live_only; /* buried nodes exist: results must check slot states */
    /* A search's walk estimates (vx_hnsw_bound_dist): cut_at[j] is the
    ** largest share of a whole distance that the first j + 1 blocks held
    ** among the ncut distances it summed in full so far. */
    uint32_t ncut;
    float cut_at[VX_CUT_LOOKS];
    float cut_part[VX_CUT_LOOKS];
    /* Under cosine with float32 vectors (or binary codes, built on the
    ** kept float32 ones): room for a node seen as a query
    ** (vx_node_query) scaled near norm 1, for the node a write links
    ** (qnode) and for those it passes (qpass); NULL otherwise. */
    float *qbuf, *qnode, *qpass;
    size_t qbuf_cap;
} vx_hnsw_scratch;

typedef struct vx_hnsw {
    uint32_t m, m0;    /* links per node above / at level 0 */
    double level_mult; /* 1/ln(M): level = floor(-ln(U) * mult) */
    uint64_t rng;
    /* The entry point and the top level in one word, so that a search
    ** reads a matching pair (vx_hnsw_top): the entry in the low half
    ** (VX_NOSLOT when the graph is empty), maxlevel + 1 in the high. */
    uint64_t top;
    /* Links above level 0 live in one u32 arena: a node of level L owns
    ** L blocks of (1 + m) words at offset upper[slot]; offset 0 is never
    ** used. Freed blocks are chained per L through their first word. A
    ** grown arena is retired, never freed under a search; searches read
    ** the pointer and arena_n with VX_LOAD. */
    uint32_t *arena;
    size_t arena_n, arena_cap;
    uint32_t arena_free[VX_HNSW_MAX_LEVEL + 1];
    /* A byte per slot for repairs, made at the first removal and grown
    ** (zeroed) with the store, so that a repair need not get it. */
    uint8_t *mark;
    size_t mark_cap;
    vx_pass pass;
    /* Idle scratches, taken and given back with one atomic exchange each,
    ** a thread at a cell of its own first (8 cells to a cache line). */
    vx_hnsw_scratch *cell[VX_SCRATCH_CELLS];
    /* Only a parallel build takes these: a striped lock per node's links,
    ** and one for the entry point. */
    int locking;
    int untrusted; /* mapped from a file: bound every link (vx_hnsw_read) */
    pthread_mutex_t entry_lock;
    atomic_flag locks[VX_HNSW_NLOCKS];
} vx_hnsw;

/* IVF-PQ state (section 7). A list keeps its entries in parallel arrays so
** the scan reads codes sequentially; `mapped` lists still point into the
** index file and are copied to the heap before they first grow. */
typedef struct vx_ivlist {
    uint64_t *keys;
    uint8_t *codes; /* n * m bytes */
    float *vecs;    /* n * dim floats, with ivf_keep_vectors only */
    uint32_t n, cap;
    uint8_t mapped;
    uint8_t lazy; /* a VX_PIECE_ verdict, as vx_chunk's: see vx_ivf_list */
} vx_ivlist;

typedef struct vx_ivf {
    int trained;
    uint32_t nlist, m, npanel; /* npanel = ceil(nlist / VX_PANEL) */
    float *cent;  /* coarse centroids, in panels (npanel * dim * VX_PANEL) */
    float *cnorm; /* |c|^2 per centroid, padded to npanel * VX_PANEL */
    float *book;  /* sub-quantizer j: 256 centroids of len_j floats, in 8
                     panels at book + 256 * off_j */
    float *bnorm; /* |b|^2 of every sub-centroid, m * 256 */
    float *cbias; /* assignment bias per centroid: |c|^2 under L2, else 0;
                     +inf for the padding of the last panel */
    size_t model_bytes; /* of cent + cnorm + book, one allocation */
    vx_ivlist *lists;
    uint64_t *map;                    /* key map cells, see vx_ivf_cw */
    size_t map_cap, map_n, map_words; /* words per cell: 1 or 2 */
    /* Bytes of a kept vector entry (ivf_keep_vectors, else 0): the
    ** vector, then under cosine in format 7 its inverse norm (float), so
    ** that an exact cosine distance is one dot product (vx_ivf_exact). */
    size_t vb;
    uint64_t count;
    int model_mapped, map_mapped; /* point into the index file */
    int map_huge;                 /* map from vx_table_alloc's own mapping */
    vecidx *cq;                   /* HNSW graph over the centroids, or NULL */
    struct vx_ilazy *lazy;        /* lists verified on first read, or NULL */
} vx_ivf;

/* Lists mapped from a file with a checksum per list (in the directory)
** are verified as chunks are (vx_lazy): the first read of a list checks
** it, and a damaged one reads as `bad`, an empty list. */
typedef struct vx_ilazy {
    const unsigned char *dir;  /* the mapped directory */
    const unsigned char *data; /* the mapped data section */
    uint64_t off;              /* its offset in the file */
    size_t vb;                 /* kept vector bytes per entry, or 0 */
    vx_ivlist bad;
} vx_ilazy;

static vx_ivlist *vx_lazy_list(const vx_ivf *v, uint32_t li);

/* List li, verified first if it is mapped and not verified yet: every
** read of list contents goes through here (writers and prefetches
** excepted; a writable handle has verified all). */
static inline const vx_ivlist *vx_ivf_list(const vx_ivf *v, uint32_t li)
{
    const vx_ivlist *l = &v->lists[li];
    if (VX_UNLIKELY(VX_PEEK(&l->lazy))) return vx_lazy_list(v, li);
    return l;
}

/* The kept vector of entry pos of list l. */
static inline float *vx_ivf_kept(const vx_ivf *v, const vx_ivlist *l,
                                 size_t pos)
{
    return (float *)(void *)((char *)l->vecs + pos * v->vb);
}

/* Bytes of a list of n entries in a file: keys, codes, kept vectors,
** each padded to 8 bytes. */
static uint64_t vx_ivl_file_bytes(uint64_t n, size_t m, size_t vb)
{
    return n * 8 + (n * m + 7) / 8 * 8 + (n * vb + 7) / 8 * 8;
}

static vx_ivlist *vx_lazy_list(const vx_ivf *v, uint32_t li)
{
    vx_ilazy *z = v->lazy;
    vx_ivlist *l = &v->lists[li];
    uint8_t f = VX_PEEK(&l->lazy);
    if (f == VX_PIECE_UNKNOWN) {
        uint32_t want = vx_get32(z->dir, (size_t)li * 16 + 12);
        f = vx_crc32c_more(0, l->keys, vx_ivl_file_bytes(l->n, v->m, z->vb)) ==
                    want
                ? VX_PIECE_GOOD
                : VX_PIECE_BAD;
        __atomic_store_n(&l->lazy, f, __ATOMIC_RELAXED);
    }
    if (f == VX_PIECE_GOOD) return l;
    vx_dmg_note("IVF lists", li,
                z->off + (uint64_t)((const unsigned char *)l->keys - z->data));
    return &z->bad;
}

/* The write-ahead log of a writable file-backed index (section 9). */
#ifndef VX_WAL_AUTO_CHECKPOINT             /* tests lower it */
#define VX_WAL_AUTO_CHECKPOINT (64u << 20) /* log bytes before folding */
#endif
typedef struct vx_wal {
    int fd;        /* -1 when the index has no log */
    uint64_t end;  /* byte offset after the last good record */
    uint64_t seq;  /* sequence number of the last record */
    uint64_t salt; /* salt of the main file this log belongs to */
    unsigned sync; /* VECIDX_SYNC_* */
    int dirty;     /* appended since the last fsync */
    int broken;    /* VX_WAL_CUT / VX_WAL_RESTART: repair first */
    /* An fsync failed with acknowledged records written since the last
    ** good one. Linux reports a failed writeback once and may drop the
    ** pages, so a later fsync that succeeds proves nothing about them,
    ** and a power cut would leave a hole where replay stops, losing
    ** every write after it. Writes and vecidx_sync fail until the log
    ** restarts behind a checkpoint (vx_wal_reset) or moves to a new file
    ** whose records were read back whole (vx_walsw_commit). */
    int unsynced;
    struct timespec last_sync;
    char *path; /* main file path (log is path + "-wal") */
} vx_wal;

static void vx_snap_touch(vecidx *ix, uint32_t slot);
static void vx_snap_touch_list(vecidx *ix, uint32_t li);
static void vx_snap_detach(vecidx *ix);

struct vecidx {
    vecidx_params p;
    vx_mem mem;
    const vx_kernels *kern;
    /* The key-set lock: a writer holds it for writing only while the key
    ** map or the set of live keys changes (and IVF-PQ lists); vecidx_get,
    ** vecidx_contains, vecidx_keys, vecidx_count, vecidx_stats and IVF-PQ
    ** searches hold it for reading. Flat and HNSW searches take no lock
    ** at all: vx_ebr keeps what they read alive. */
    pthread_rwlock_t lock;
    pthread_mutex_t wlock; /* held by a writer for its whole call */
    vx_ebr ebr;
    /* Removals so far: a search that sees it change may have met a key
    ** both before and after a concurrent upsert, and drops the repeat. */
    uint64_t nremoved;
    vx_store store;
    vx_hnsw hnsw; /* kind HNSW only */
    vx_ivf ivf;   /* kind IVF-PQ only; its buffer before training is store */
    unsigned char *fmap; /* mapped index file, or NULL */
    size_t fmap_len;
    uint32_t fcrc;      /* checksum of the mapped chunks, for vecidx_check */
    int fpristine;      /* mapped chunks unchanged since open: fcrc applies */
    uint32_t fcrc_kept; /* version 5: the kept vectors' section checksum */
    vx_wal wal;
    int replaying; /* applying logged writes: do not log them again */
    int rdonly;
    /* A snapshot being written (vecidx_save, vecidx_checkpoint, the
    ** automatic checkpoint): writers call vx_snap_touch before they change
    ** a slot's bytes. snap_busy: a caller writes it with the writer lock
    ** released; snap_cv signals the end of that. */
    vx_snap *snap;
    int snap_busy;
    pthread_cond_t snap_cv;
    uint64_t ckpt_retry; /* log size before an automatic checkpoint that
                            failed is tried again */
    pthread_t closer;    /* closing a file a save replaced (vx_let_go) */
    int closer_on;
    vx_activity act; /* for vecidx_stats */
};

/* A writer holds wlock for its whole call, which keeps other writers out.
** Searches never wait for it: the writer takes the key-set lock only for
** the short steps that change the key set (vx_store_publish,
** vx_store_remove, IVF-PQ list changes). */
static void vx_write_begin(vecidx *ix)
{
    pthread_mutex_lock(&ix->wlock);
    /* Not only logged writes change the chunks the file's checksum
    ** covers: training re-encodes them, and a reservation adds chunks
    ** outside the mapping, which that checksum must not be taken over. */
    ix->fpristine = 0;
}

static void vx_ckpt_auto(vecidx *ix);
static void vx_reclaim(vecidx *ix);

/* Publish the log's size for vecidx_stats, which does not take wlock;
** wlock held. */
static void vx_act_log(vecidx *ix)
{
    __atomic_store_n(&ix->act.log_bytes, ix->wal.fd >= 0 ? ix->wal.end : 0,
                     __ATOMIC_RELAXED);
}

static void vx_write_end(vecidx *ix)
{
    vx_reclaim(ix);
    vx_ckpt_auto(ix); /* fold a long log into the main file, a step a write */
    vx_act_log(ix);
    pthread_mutex_unlock(&ix->wlock);
}

static void vx_keys_lock(vecidx *ix)
{
    pthread_rwlock_wrlock(&ix->lock);
}

static void vx_keys_unlock(vecidx *ix)
{
    pthread_rwlock_unlock(&ix->lock);
}

static const char *vx_kind_name(int kind)
{
    return kind == VECIDX_FLAT   ? "flat"
           : kind == VECIDX_HNSW ? "hnsw"
                                 : "ivfpq";
}

/* Kind, metric and dimension checks shared by init and create. */
static int vx_check_shape(int kind, int metric, uint32_t dim)
{
    if (kind != VECIDX_FLAT && kind != VECIDX_HNSW && kind != VECIDX_IVFPQ)
        return vx_err(NULL, VECIDX_EINVAL,
                      "unknown index kind %d (use VECIDX_FLAT, VECIDX_HNSW "
                      "or VECIDX_IVFPQ)",
                      kind);
    if (metric != VECIDX_L2 && metric != VECIDX_IP && metric != VECIDX_COSINE)
        return vx_err(NULL, VECIDX_EINVAL,
                      "unknown metric %d (use VECIDX_L2, VECIDX_IP or "
                      "VECIDX_COSINE)",
                      metric);
    if (dim == 0 || dim > VECIDX_MAX_DIM)
        return vx_err(NULL, VECIDX_EDIM, "dimension %u is outside 1..%u",
                      (unsigned)dim, (unsigned)VECIDX_MAX_DIM);
    return VECIDX_OK;
}

static int vx_check_hnsw_params(const vecidx_params *p)
{
    if (p->hnsw_m < 2 || p->hnsw_m > VX_HNSW_MAX_M)
        return vx_err(NULL, VECIDX_EINVAL, "hnsw_m %u is outside 2..%u",
                      (unsigned)p->hnsw_m, (unsigned)VX_HNSW_MAX_M);
    if (p->hnsw_ef_construction == 0 || p->hnsw_ef_search == 0)
        return vx_err(NULL, VECIDX_EINVAL, "hnsw_ef_%s is 0",
                      p->hnsw_ef_search ? "construction" : "search");
    return VECIDX_OK;
}

/* The storage fields: the kinds and combinations that exist. */
static int vx_check_storage(const vecidx_params *p)
{
    if (p->storage > VECIDX_STORE_BIN)
        return vx_err(NULL, VECIDX_EINVAL, "storage %u is not a VECIDX_STORE_*",
                      (unsigned)p->storage);
    if (p->storage == VECIDX_STORE_F32) return VECIDX_OK;
    if (p->kind == VECIDX_IVFPQ)
        return vx_err(NULL, VECIDX_ENOTSUP,
                      "IVF-PQ stores product-quantized codes: storage must "
                      "be VECIDX_STORE_F32");
    if (p->storage == VECIDX_STORE_BIN && p->metric == VECIDX_L2)
        return vx_err(NULL, VECIDX_ENOTSUP,
                      "binary storage keeps signs, which say little about L2 "
                      "distances: use it with cosine or inner product");
    if (p->storage == VECIDX_STORE_BIN && !p->keep_vectors)
        return vx_err(NULL, VECIDX_ENOTSUP,
                      "binary storage needs keep_vectors: its codes pick "
                      "candidates, the float32 vectors rank them");
    return VECIDX_OK;
}

static int vx_check_ivf_params(const vecidx_params *p)
{
    if (p->pq_nbits != 8)
        return vx_err(NULL, VECIDX_ENOTSUP,
                      "pq_nbits %u: only 8-bit codes "
                      "are supported",
                      (unsigned)p->pq_nbits);
    if (p->ivf_nlist > VX_IVF_MAX_NLIST)
        return vx_err(NULL, VECIDX_EINVAL, "ivf_nlist %u is above %u",
                      (unsigned)p->ivf_nlist, VX_IVF_MAX_NLIST);
    if (p->pq_m > p->dim)
        return vx_err(NULL, VECIDX_EINVAL,
                      "pq_m %u is larger than the "
                      "dimension %u",
                      (unsigned)p->pq_m, (unsigned)p->dim);
    if (p->ivf_quantizer > VECIDX_QUANT_HNSW)
        return vx_err(NULL, VECIDX_EINVAL, "unknown ivf_quantizer %u",
                      (unsigned)p->ivf_quantizer);
    if (p->ivf_train_size && p->ivf_train_size < p->ivf_nlist)
        return vx_err(NULL, VECIDX_EINVAL,
                      "ivf_train_size %u is below "
                      "ivf_nlist %u: k-means needs a sample per list",
                      (unsigned)p->ivf_train_size, (unsigned)p->ivf_nlist);
    if (p->ivf_refine > 1 && !p->ivf_keep_vectors)
        return vx_err(NULL, VECIDX_EINVAL,
                      "ivf_refine needs "
                      "ivf_keep_vectors: re-ranking uses the full vectors");
    return VECIDX_OK;
}

/* Worker threads for a call: the per-call option, else the index's, else
** one per online CPU. */
static unsigned vx_threads(const vecidx *ix, const vecidx_search_opts *o)
{
    unsigned t = o && o->threads ? o->threads : ix->p.threads;
    return t ? t : vx_cpu_count();
}

/* A query after validation: cosine carries the query's inverse norm so
** that stored vectors never need normalising copies. */
typedef struct vx_query {
    const float *v; /* float32: the query, or a stored node's vector */
    float inv_norm;
    const void *code; /* int8 and binary storage: encoded as stored */
    int exact;  /* score against the kept float32 vectors, not the codes */
    float qsum; /* binary storage: the sum of the query's components */
    vx_i8q i8;  /* int8 storage: the terms of code for vx_i8_dist */
} vx_query;

/* Distance from q to f, slot's kept float32 vector, as float32 storage
** would score it. */
static float vx_full_score(const vecidx *ix, const vx_query *q, const float *f,
                           uint32_t slot)
{
    uint32_t dim = ix->p.dim;
    if (ix->p.metric == VECIDX_L2) return ix->kern->l2(q->v, f, dim);
    if (ix->p.metric == VECIDX_IP) return -ix->kern->dot(q->v, f, dim);
    return 1.0f - ix->kern->dot(q->v, f, dim) * q->inv_norm *
                      vx_store_inorm(&ix->store, slot);
}

static float vx_full_dist(const vecidx *ix, const vx_query *q, uint32_t slot)
{
    return vx_full_score(ix, q, vx_store_full(&ix->store, slot), slot);
}

#define VX_KEPT_STACK 2048 /* floats vx_kept_pread_dist holds on the stack */

/* *out = vx_full_dist, slot's vector read from a lean reader's file with
** one pread, into a stack buffer up to VX_KEPT_STACK dimensions, else an
** allocation; -1 if the read fails (or the allocation). Not inlined: its
** buffer stays off the stack of the usual path. */
static VX_NOINLINE int vx_kept_pread_dist(vecidx *ix, const vx_query *q,
                                          uint32_t slot, float *out)
{
    const vx_store *s = &ix->store;
    size_t n = (size_t)s->dim * sizeof(float);
    _Alignas(64) float stack[VX_KEPT_STACK]; /* see vx_query_lined */
    float *buf = stack;
    int rc = -1;
    if (s->dim > VX_KEPT_STACK && !(buf = vx_malloc(&ix->mem, n))) return -1;
    if (vx_io_read_all(s->lazy->fd, buf, n,
                       vx_lazy_off(s->lazy, 1, slot >> s->shift,
                                   (uint64_t)VX_SLOT_INDEX(s, slot) * n)) ==
        0) {
        *out = vx_full_score(ix, q, buf, slot);
        rc = 0;
    }
    if (buf != stack) vx_free(&ix->mem, buf, n);
    return rc;
}

/* vx_full_dist for a re-rank: a few vectors here and there. A lean reader
** (vx_lazy.fd) verifies and reads them with pread, so that they stay out
** of its resident set; scans (exact searches, allowed sets) go through
** the mapping, as does any vector whose read fails (the same bytes, with
** the mapping's risks: a plain reader's). */
static float vx_kept_dist(vecidx *ix, const vx_query *q, uint32_t slot)
{
    const vx_store *s = &ix->store;
    float d;
    /* Every chunk of a lean reader is mapped: a handle that could add
    ** chunks (a writer, or a reader replaying a log) has no fd. */
    if (VX_UNLIKELY(vx_lazy_lean(s)) &&
        vx_lazy_piece(s, slot >> VX_PIECE_SHIFT, 1, 0) &&
        vx_kept_pread_dist(ix, q, slot, &d) == 0)
        return d;
    return vx_full_dist(ix, q, slot);
}

/* Offer slot, whose code scored dc against q, to h at its exact distance;
** 1 if its kept vector was read. A lean reader, whose reads are system
** calls, reads none whose code shows that it cannot enter h (int8,
** vx_i8_floor). Offered closest first, candidates fill h soonest and the
** floors leave the most unread: of the 20 of k 10, refine 2, 4.3 on 1M
** x 128 (HNSW ef 24) and 2.8 on 200k x 384 cosine (ef 32); of 40 with
** refine 4, ef 24, on 1M: 23. A lean reader then runs 1.04-1.16x
** faster. A mapped reader's read is a few loads, and the floors, each
** waiting on the last distance, gained it nothing measurable (0.95-1.02x,
** with or without its loads requested ahead): it reads them all. */
static int vx_kept_offer(vecidx *ix, const vx_query *q, uint32_t slot, float dc,
                         vx_topk *h)
{
    const vx_store *s = &ix->store;
    uint64_t key;
    float d;
    if (s->store == VECIDX_STORE_I8 && !q->exact && vx_lazy_lean(s) &&
        vx_topk_beyond(
            h, vx_i8_floor(ix->p.metric, &q->i8,
                           vx_i8_hdr(vx_store_vec(s, slot), s->dim), s->dim, dc,
                           s->cosine ? vx_store_inorm(s, slot) : 1.0f)))
        return 0;
    d = vx_kept_dist(ix, q, slot);
    key = vx_store_key(s, slot);
    if (VX_UNLIKELY(d != d)) d = INFINITY;
    if (vx_topk_admits(h, d, key)) vx_topk_push(h, d, key);
    return 1;
}

/* Re-score candidates c[0..n), closest first, into h (vx_kept_offer). */
static void vx_kept_rerank(vecidx *ix, const vx_query *q, const vx_cand *c,
                           size_t n, vx_topk *h)
{
    size_t i;
    for (i = 0; i < n; i++)
        vx_tally.dist += (size_t)vx_kept_offer(ix, q, c[i].slot, c[i].d, h);
}

/* Half precision: a float32 query against the code, or (q->v NULL) a
** stored node's code against it. Cosine scales by the inverse norms of
** the vectors given, as float32 storage does. */
static float vx_half_dist(const vecidx *ix, const vx_query *q,
                          const uint16_t *c, uint32_t slot)
{
    uint32_t dim = ix->p.dim;
    float dot;
    if (ix->p.metric == VECIDX_L2)
        return q->v ? vx_qk.l2_f16(q->v, c, dim)
                    : vx_qk.l2_hh((const uint16_t *)q->code, c, dim);
    dot = q->v ? vx_qk.dot_f16(q->v, c, dim)
               : vx_qk.dot_hh((const uint16_t *)q->code, c, dim);
    if (ix->p.metric == VECIDX_IP) return -dot;
    return 1.0f - dot * q->inv_norm * vx_store_inorm(&ix->store, slot);
}

/* Distance from q to the code in record rec (slot's), compressed storage. */
static float vx_code_dist(const vecidx *ix, const vx_query *q, const float *rec,
                          uint32_t slot)
{
    uint32_t dim = ix->p.dim;
    int32_t dq, dr = 0;
    const vx_i8hdr *b;
    if (q->exact) return vx_full_dist(ix, q, slot);
    if (ix->store.store == VECIDX_STORE_F16)
        return vx_half_dist(ix, q, (const uint16_t *)(const void *)rec, slot);
    /* Binary: the query against the signs the bits stand for, sum q[i] *
    ** (bit ? 1 : -1), negated to be smaller-is-closer. Only candidates are
    ** picked by it: binary storage always re-ranks with float32. */
    if (ix->store.store == VECIDX_STORE_BIN)
        return q->qsum - 2 * vx_qk.bin_sum(q->v,
                                           (const uint64_t *)(const void *)rec,
                                           dim);
    b = vx_i8_hdr(rec, dim);
    dq = vx_qk.dot_i8(q->code, (const int8_t *)(const void *)rec, dim, b->sum);
    if (q->i8.rc)
        dr = vx_qk.dot_i8(q->i8.rc, (const int8_t *)(const void *)rec, dim,
                          b->sum);
    return vx_i8_dist(ix->p.metric, &q->i8, b, dq, dr);
}

/* Encode q for compressed storage into buf (vx_code_bytes of it, aligned
** for 64-bit words). */
static void vx_query_encode(const vecidx *ix, vx_query *q, void *buf)
{
    const vx_store *s = &ix->store;
    q->code = buf;
    q->exact = 0;
    if (s->store == VECIDX_STORE_I8)
        vx_i8_encode_query(q->v, s->dim, s->cosine ? q->inv_norm : 1.0f, buf,
                           (int8_t *)buf + (size_t)s->cw * 4, &q->i8);
    else if (s->store == VECIDX_STORE_BIN) {
        uint32_t i;
        q->qsum = 0;
        for (i = 0; i < s->dim; i++) q->qsum += q->v[i];
    }
}

/* Candidates a search with kept float32 vectors re-scores exactly. */
static size_t vx_refine_k(const vecidx *ix, const vecidx_search_opts *o,
                          size_t k)
{
    size_t r = o && o->refine ? o->refine : VX_PEEK(&ix->p.refine);
    if (r == 0) r = ix->store.store == VECIDX_STORE_BIN ? 20 : 2;
    return k > SIZE_MAX / r ? SIZE_MAX : k * r;
}

static size_t vx_flat_block_rows(const vecidx *ix)
{
    size_t rows = VX_FLAT_BLOCK_BYTES / ((size_t)ix->store.rec * sizeof(float));
    rows = rows < 16 ? 16 : rows > VX_FLAT_MAX_ROWS ? VX_FLAT_MAX_ROWS : rows;
    return rows < vx_store_per_chunk(&ix->store)
               ? rows
               : vx_store_per_chunk(&ix->store);
}

/* Distances from q to rows [row, row + n) of chunk c. */
static void vx_flat_dists(const vecidx *ix, const vx_chunk *c, uint32_t row,
                          size_t n, const vx_query *q, float *out)
{
    const vx_store *s = &ix->store;
    const float *base = c->vec + (size_t)row * s->rec;
    size_t i;
    if (s->rec != s->dim) { /* graph records: vectors are not adjacent */
        float (*f)(const float *, const float *, size_t) =
            ix->p.metric == VECIDX_L2 ? ix->kern->l2 : ix->kern->dot;
        for (i = 0; i < n; i++) out[i] = f(q->v, base + i * s->rec, s->dim);
    } else if (ix->p.metric == VECIDX_L2) {
        ix->kern->l2_many(q->v, base, n, s->dim, out);
    } else {
        ix->kern->dot_many(q->v, base, n, s->dim, out);
    }
    if (ix->p.metric == VECIDX_L2) return;
    if (ix->p.metric == VECIDX_IP) {
        for (i = 0; i < n; i++) out[i] = -out[i];
    } else {
        for (i = 0; i < n; i++) {
            float inorm = s->link0 ? base[i * s->rec + s->dim]
                                   : c->inorm[row + i];
            out[i] = 1.0f - out[i] * q->inv_norm * inorm;
        }
    }
}

/* ---- allowed sets -----------------------------------------------------
** A search's filters are resolved once per call -- a batch's workers
** share the result -- into a vx_sopts, whose first member is a copy of
** the caller's options. Every search function below takes that copy as
** its `o`; when anything filters, o->filter is vx_allow_admit and
** o->filter_ctx the vx_sopts, so each place that asks "may this key
** enter?" asks every given filter at once. The resolution also counts
** (or estimates) how many keys pass, from which each kind plans: scan
** only the allowed vectors, or walk its structure with the filter. */

typedef struct vx_sopts {
    vecidx_search_opts u;
    int (*cb)(uint64_t key, void *ctx); /* the caller's callback */
    void *cb_ctx;
    const uint64_t *bits; /* the caller's bitmap, or NULL */
    uint64_t nbits, nbitset;
    uint64_t *bsum;  /* its blocks of 512 bits that hold one (count_bits) */
    uint64_t *set;   /* the caller's keys, distinct, open addressing */
    size_t setmask;  /* cells - 1 */
    uint64_t *kbits; /* or, when they are dense enough, as a bitmap */
    uint64_t nkbits; /* bits of kbits: the largest key + 1 */
    size_t nset;     /* distinct keys */
    int set_on;      /* a key array was given */
    int sorted;      /* strictly ascending: walked as given, and set or
                        kbits built only for a search that tests keys
                        one by one (vx_allow_members) */
    int set_has_max; /* UINT64_MAX, the free-cell mark, is in the set */
    double card;     /* keys expected to pass, -1 = nothing filters */
    double card_low; /* as few as are likely to pass: card, or the low
                        end of a sample's small count (vx_allow_estimate) */
    float sel;       /* the caller's filter_selectivity, with a callback */
    int counted;     /* card bounds the set exactly: an explicit set */
    int none;        /* an explicit set is empty: nothing can pass */
    int exact;       /* the exact answer, for vecidx_estimate_recall */
    int quiet;       /* not counted in vecidx_stats (its own searches) */
} vx_sopts;

/* Whether the sorted key array holds key: for a search that was planned
** as a scan of the keys but turned to testing them (the index grew since
** vx_allow_members looked). */
static int vx_sorted_has(const uint64_t *keys, size_t n, uint64_t key)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (keys[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && keys[lo] == key;
}

static int vx_set_has(const vx_sopts *a, uint64_t key)
{
    size_t i;
    if (a->sorted && !a->set && !a->kbits)
        return vx_sorted_has(a->u.allow_keys, a->u.allow_count, key);
    if (key == UINT64_MAX) return a->set_has_max;
    if (a->kbits)
        return key < a->nkbits && (a->kbits[key >> 6] >> (key & 63)) & 1u;
    for (i = (size_t)vx_hash64(key) & a->setmask;; i = (i + 1) & a->setmask) {
        if (a->set[i] == key) return 1;
        if (a->set[i] == UINT64_MAX) return 0;
    }
}

/* Words of a bitmap of nbits bits (nbits up to 2^64 - 1). */
static inline uint64_t vx_bit_words(uint64_t nbits)
{
    return nbits / 64 + !!(nbits & 63);
}

static inline int vx_bits_has(const vx_sopts *a, uint64_t key)
{
    return key < a->nbits && (a->bits[key >> 6] >> (key & 63)) & 1u;
}

static int vx_allow_admit(uint64_t key, void *ctx)
{
    const vx_sopts *a = ctx;
    if (a->bits && !vx_bits_has(a, key)) return 0;
    if (a->set_on && !vx_set_has(a, key)) return 0;
    return !a->cb || a->cb(key, a->cb_ctx);
}

/* Whether vx_allow_next lists the key array's keys (else the bitmap's):
** the smaller of the two when both are given. */
static inline int vx_allow_by_set(const vx_sopts *a)
{
    return a->set_on && (!a->bits || (uint64_t)a->nset <= a->nbitset);
}

/* Whether a key that vx_allow_next listed passes the other filters. */
static int vx_allow_rest(const vx_sopts *a, uint64_t key)
{
    if (vx_allow_by_set(a)) {
        if (a->bits && !vx_bits_has(a, key)) return 0;
    } else if (a->set_on && !vx_set_has(a, key))
        return 0;
    return !a->cb || a->cb(key, a->cb_ctx);
}

/* Whether a scan of listed keys must call vx_allow_rest. */
static inline int vx_allow_others(const vx_sopts *a)
{
    return a->cb || (a->bits && a->set_on);
}

/* The resolved options behind o, or NULL when nothing filters. */
static inline const vx_sopts *vx_allow_of(const vecidx_search_opts *o)
{
    return o && o->filter == vx_allow_admit ? (const vx_sopts *)o : NULL;
}

/* Fraction of the n live keys expected to pass (1 without a filter). */
static double vx_allow_frac(const vecidx_search_opts *o, size_t n)
{
    const vx_sopts *a = vx_allow_of(o);
    if (!a || n == 0) return 1.0;
    return a->card >= (double)n ? 1.0 : a->card / (double)n;
}

/* Arrays of at least this many keys become a bitmap when their largest
** key is below VX_KBITS_SPAN times their length: setting bits in a map
** of at most 8 bytes a key costs a fraction of hashing into 16-32.
** Measured as the time a key array adds to a search over the bitmap
** form: about 2 ns a key (50 % of 100k x 128 and of 200k x 384), where
** hashing added 11 (50 % of 1M, 0.03x the bitmap form's speed). */
#define VX_KBITS_MIN 1024
#define VX_KBITS_SPAN 64

/* Set the bits of ascending keys (UINT64_MAX aside): a word at a time,
** in a register. Or-ing each key into memory made every key wait for
** the last one's store, as ascending keys share words. */
static void vx_kbits_sorted(uint64_t *kbits, const uint64_t *keys, size_t n)
{
    uint64_t w = 0, word = 0;
    size_t i;
    for (i = 0; i < n && keys[i] != UINT64_MAX; i++) {
        if (keys[i] >> 6 != w) {
            kbits[w] |= word;
            w = keys[i] >> 6;
            word = 0;
        }
        word |= (uint64_t)1 << (keys[i] & 63);
    }
    kbits[w] |= word;
}

/* The key array as a bitmap, if dense enough; returns 0 if not taken. */
static int vx_sopts_kbits(vecidx *ix, vx_sopts *a, const uint64_t *keys,
                          size_t n, int *rc)
{
    uint64_t max = 0, words;
    size_t i;
    *rc = VECIDX_OK;
    a->set_has_max = 0;
    if (n < VX_KBITS_MIN) return 0;
    if (a->sorted) /* UINT64_MAX can only be last */
        max = keys[n - 1] != UINT64_MAX ? keys[n - 1] : keys[n - 2];
    else
        for (i = 0; i < n; i++)
            if (keys[i] != UINT64_MAX && keys[i] > max) max = keys[i];
    if (max / VX_KBITS_SPAN >= n) return 0;
    words = max / 64 + 1;
    if (!(a->kbits = vx_malloc(&ix->mem, (size_t)words * sizeof *a->kbits))) {
        *rc = vx_err(ix, VECIDX_ENOMEM,
                     "out of memory for an allowed set of %zu keys", n);
        return 1;
    }
    memset(a->kbits, 0, (size_t)words * sizeof *a->kbits);
    a->nkbits = max + 1;
    if (a->sorted) {
        vx_kbits_sorted(a->kbits, keys, n);
        a->set_has_max = keys[n - 1] == UINT64_MAX;
        a->nset = n;
        return 1;
    }
    for (i = 0; i < n; i++) {
        if (keys[i] == UINT64_MAX)
            a->set_has_max = 1;
        else
            a->kbits[keys[i] >> 6] |= (uint64_t)1 << (keys[i] & 63);
    }
    a->nset = vx_qk.count_bits(a->kbits, (size_t)words, NULL) + a->set_has_max;
    return 1;
}

static int vx_sopts_set(vecidx *ix, vx_sopts *a, const uint64_t *keys, size_t n)
{
    size_t cap = 16, i, j;
    int rc;
    if (vx_sopts_kbits(ix, a, keys, n, &rc)) return rc;
    while (cap / 2 < n && cap < SIZE_MAX / 4) cap *= 2;
    if (cap > SIZE_MAX / sizeof *a->set ||
        !(a->set = vx_malloc(&ix->mem, cap * sizeof *a->set)))
        return vx_err(ix, VECIDX_ENOMEM,
                      "out of memory for an allowed set of %zu keys", n);
    memset(a->set, 0xff, cap * sizeof *a->set);
    a->setmask = cap - 1;
    a->nset = 0;
    a->set_has_max = 0;
    for (i = 0; i < n; i++) {
        if (keys[i] == UINT64_MAX) {
            a->nset += !a->set_has_max;
            a->set_has_max = 1;
            continue;
        }
        for (j = (size_t)vx_hash64(keys[i]) & a->setmask;
             a->set[j] != UINT64_MAX && a->set[j] != keys[i];
             j = (j + 1) & a->setmask)
            continue;
        a->nset += a->set[j] == UINT64_MAX;
        a->set[j] = keys[i];
    }
    return VECIDX_OK;
}

/* Bitmaps of at least this many words get a summary of their blocks
** (vx_sopts.bsum), so that a scan of a sparse one skips its empty
** blocks without reading them. */
#define VX_BSUM_MIN 64

/* Words of a->bits' summary: a bit per 512 of a->bits. */
static size_t vx_bsum_words(const vx_sopts *a)
{
    uint64_t words = vx_bit_words(a->nbits);
    return (size_t)(words / 512 + !!(words % 512));
}

/* Zeroed room for a->bits' summary, if it is long enough to want one.
** Without the room (out of memory) the walk reads every word. */
static void vx_sopts_bsum(vecidx *ix, vx_sopts *a)
{
    size_t n = vx_bsum_words(a);
    if (a->nbits / 64 < VX_BSUM_MIN) return;
    if ((a->bsum = vx_malloc(&ix->mem, n * sizeof *a->bsum)) != NULL)
        memset(a->bsum, 0, n * sizeof *a->bsum);
}

/* Whether keys[0 .. n) are strictly ascending: then they are distinct,
** and a scan of them needs no set. Gathering 1,000 keys into a set cost
** a search of 1 % of 100k x 128 a fifth of its time. */
static int vx_keys_ascending(const uint64_t *keys, size_t n)
{
    size_t i;
    for (i = 1; i < n; i++)
        if (keys[i] <= keys[i - 1]) return 0;
    return 1;
}

/* Validate the caller's filters and resolve them into *a; o may be NULL.
** Frees nothing on failure: vx_sopts_free is always called. */
static int vx_sopts_init(vecidx *ix, const vecidx_search_opts *o, vx_sopts *a)
{
    float sel = o ? o->filter_selectivity : 0.0f;
    memset(a, 0, sizeof *a);
    a->card = a->card_low = -1;
    if (!o) return VECIDX_OK;
    a->u = *o;
    if (o->allow_count && !o->allow_keys)
        return vx_err(ix, VECIDX_EINVAL,
                      "allow_keys is NULL but allow_count is %zu",
                      o->allow_count);
    if (o->allow_bits && !o->allow_bitmap)
        return vx_err(ix, VECIDX_EINVAL,
                      "allow_bitmap is NULL but allow_bits is %llu",
                      (unsigned long long)o->allow_bits);
    if (!(sel >= 0.0f && sel <= 1.0f))
        return vx_err(ix, VECIDX_EINVAL,
                      "filter_selectivity %g is not in [0, 1]", (double)sel);
    if (!o->filter && !o->allow_keys && !o->allow_bitmap) return VECIDX_OK;
    a->cb = o->filter;
    a->cb_ctx = o->filter_ctx;
    a->u.filter = vx_allow_admit;
    a->u.filter_ctx = a;
    a->card = HUGE_VAL;
    if (o->allow_bitmap) {
        uint64_t whole = o->allow_bits / 64;
        a->bits = o->allow_bitmap;
        a->nbits = o->allow_bits;
        vx_sopts_bsum(ix, a);
        a->nbitset = vx_qk.count_bits(a->bits, (size_t)whole, a->bsum);
        if (a->nbits & 63) {
            uint64_t x = a->bits[whole] &
                         (((uint64_t)1 << (a->nbits & 63)) - 1);
            a->nbitset += vx_qk.count_bits(&x, 1, NULL);
            if (a->bsum) /* its block is walked: the bits past nbits stop it */
                a->bsum[whole >> 9] |= (uint64_t)1 << (whole >> 3 & 63);
        }
        a->card = (double)a->nbitset;
        a->counted = 1;
    }
    if (o->allow_keys) {
        int rc;
        a->set_on = 1;
        a->sorted = vx_keys_ascending(o->allow_keys, o->allow_count);
        if (a->sorted)
            a->nset = o->allow_count;
        else if ((rc = vx_sopts_set(ix, a, o->allow_keys, o->allow_count)))
            return rc;
        if ((double)a->nset < a->card) a->card = (double)a->nset;
        a->counted = 1;
    }
    /* Filters that are all given are taken as independent; a callback
    ** alone is counted later (vx_allow_estimate). */
    a->none = a->counted && a->card == 0;
    a->sel = a->cb ? sel : 0.0f;
    if (a->counted && a->sel > 0.0f) a->card *= a->sel;
    a->card_low = a->card;
    return VECIDX_OK;
}

static void vx_sopts_free(vecidx *ix, vx_sopts *a)
{
    if (a->set) vx_free(&ix->mem, a->set, (a->setmask + 1) * sizeof *a->set);
    if (a->bsum) vx_free(&ix->mem, a->bsum, vx_bsum_words(a) * sizeof *a->bsum);
    if (a->kbits)
        vx_free(&ix->mem, a->kbits,
                (size_t)((a->nkbits + 63) / 64) * sizeof *a->kbits);
    a->set = a->kbits = a->bsum = NULL;
}

/* Set bits of bits[0 .. nbits) from *pos on, into out (room for cap);
** sum, if given, marks the blocks of eight words that hold one
** (count_bits), and the walk reads only those. */
static size_t vx_bits_next(const uint64_t *bits, uint64_t nbits,
                           const uint64_t *sum, uint64_t *pos, uint64_t *out,
                           size_t cap)
{
    /* locals, not *pos: a store to out[] might alias it, and the compiler
    ** would keep it in memory, a store and a load in every step */
    uint64_t nw = vx_bit_words(nbits), w, x;
    size_t n = 0;
    if (*pos >= nbits || cap == 0) return 0;
    w = *pos >> 6;
    x = bits[w] & (~(uint64_t)0 << (*pos & 63));
    for (;;) {
        while (x) {
            uint64_t b = w << 6 | (uint64_t)__builtin_ctzll(x);
            if (b >= nbits) break;
            out[n++] = b;
            x &= x - 1;
            if (n == cap) {
                *pos = b + 1;
                return n;
            }
        }
        if (++w >= nw) break;
        if (!(w & 7)) { /* a block of eight words: pass the empty ones */
            if (sum) {
                uint64_t blk = w >> 3, nb = (nw >> 3) + !!(nw & 7), s;
                while (!(s = sum[blk >> 6] >> (blk & 63)) &&
                       (blk | 63) + 1 < nb)
                    blk = (blk | 63) + 1;
                if (!s) break;
                w = (blk + (uint64_t)__builtin_ctzll(s)) << 3;
            } else {
                while (w + 8 <= nw &&
                       !(bits[w] | bits[w + 1] | bits[w + 2] | bits[w + 3] |
                         bits[w + 4] | bits[w + 5] | bits[w + 6] | bits[w + 7]))
                    w += 8;
            }
            if (w >= nw) break;
        }
        x = bits[w];
    }
    *pos = nbits;
    return n;
}

/* Keys of the explicit set to scan, from *pos on, into out (room for
** cap); returns how many, 0 at the end. The smaller of the key array and
** the bitmap is walked; the other filters are asked later, per key. */
static size_t vx_allow_next(const vx_sopts *a, uint64_t *pos, uint64_t *out,
                            size_t cap)
{
    size_t n = 0;
    int by_set = vx_allow_by_set(a);
    if (by_set && a->sorted) { /* in the caller's order */
        n = a->u.allow_count - *pos < cap ? a->u.allow_count - *pos : cap;
        memcpy(out, a->u.allow_keys + *pos, n * sizeof *out);
        *pos += n;
        return n;
    }
    if (by_set) {
        /* position 0 stands for UINT64_MAX, cells follow from 1 */
        if (*pos == 0) {
            *pos = 1;
            if (a->set_has_max) out[n++] = UINT64_MAX;
        }
        if (a->kbits) { /* bit b at position b + 1 */
            uint64_t b = *pos - 1;
            n += vx_bits_next(a->kbits, a->nkbits, NULL, &b, out + n, cap - n);
            *pos = b + 1;
            return n;
        }
        for (; *pos <= a->setmask + 1 && n < cap; ++*pos)
            if (a->set[*pos - 1] != UINT64_MAX) out[n++] = a->set[*pos - 1];
        return n;
    }
    return vx_bits_next(a->bits, a->nbits, a->bsum, pos, out, cap);
}

/* vx_flat_offer's rows [i, e) of the run, one by one. */
static void vx_flat_offer_rows(const vx_chunk *c, uint32_t row, uint32_t slot,
                               size_t i, size_t e, const float *dist,
                               const vecidx_search_opts *o, int by_slot,
                               vx_topk *h)
{
    for (; i < e; i++) {
        uint64_t key, id;
        float d = dist[i];
        if (VX_UNLIKELY(d != d)) d = INFINITY; /* inf-inf in huge inputs */
        if (vx_topk_beyond(h, d)) continue;
        key = c->key[row + i];
        id = by_slot ? slot + i : key;
        if (!vx_topk_admits(h, d, id)) continue;
        if (o && o->filter && !o->filter(key, o->filter_ctx)) continue;
        vx_topk_push(h, d, id);
    }
}

/* Offer distances of rows [row, row + n) of chunk c, all live, slots
** from slot on: by key, or by slot (by_slot: candidates to re-rank). A
** row that cannot enter the heap is dropped before its key is loaded. */
static void vx_flat_offer(const vx_chunk *c, uint32_t row, uint32_t slot,
                          size_t n, const float *dist,
                          const vecidx_search_opts *o, int by_slot, vx_topk *h)
{
    size_t i, e;
    for (i = 0; i < n; i = e) {
        e = n - i < VX_OFFER_GROUP ? n : i + VX_OFFER_GROUP;
        if (vx_topk_skips(h, dist + i, e - i)) continue;
        vx_flat_offer_rows(c, row, slot, i, e, dist, o, by_slot, h);
    }
}

/* Calls fn for each run of live rows of the store, in blocks of at most
** vx_flat_block_rows rows (with prefilter, a whole chunk of at most
** VX_FLAT_MAX_ROWS): the exact scans' walk over the slots. Runs beside a
** writer: a block's states are read first and only live rows are handed
** on, so a slot being filled (not yet live) is never read; the slot
** count and then the chunk table are read once, so that the table holds
** every chunk below that count, and a table outgrown meanwhile is kept
** alive by the search's epoch. With prefilter the filter is asked first
** and only admitted rows are handed on: for a filter known to admit few
** (an HNSW walk gave up on it), that reads a fraction of the vectors.
** past: how many rows after a run, in its chunk, the scan reads next
** (all, holes aside), so that a rows kernel may request them ahead; 0
** when a filter thins them. */
typedef void (*vx_run_fn)(void *ctx, const vx_chunk *c, uint32_t row,
                          uint32_t slot, size_t n, size_t past);

/* The slots after a run that ends before slot end, to the end of its
** chunk or of the store. */
static size_t vx_flat_past(const vx_store *s, uint32_t nslots, uint32_t end)
{
    uint32_t last = (end - 1) | (uint32_t)(vx_store_per_chunk(s) - 1);
    return (size_t)(last < nslots ? last + 1 : nslots) - end;
}

static void vx_flat_runs(const vecidx *ix, const vecidx_search_opts *o,
                         int prefilter, vx_run_fn fn, void *ctx)
{
    const vx_store *s = &ix->store;
    /* As many slots as live keys: then every slot is live, and no state
    ** need be read. The count first: a slot is published (live, its
    ** vector and key visible) before it is counted, and it was taken
    ** below the nslots read after; a slot leaves the count before it
    ** stops being live, and is not reused while this search runs. */
    uint32_t nlive = VX_LOAD(&s->count), first;
    uint32_t nslots = VX_LOAD(&s->nslots);
    /* After nslots: a table read before it could be outgrown before a
    ** chunk that nslots covers was added, and the request for the next
    ** block below would read past its end. */
    const vx_chunk *table = VX_LOAD(&s->chunks);
    int dense = nlive == nslots && !prefilter;
    uint8_t live[VX_FLAT_MAX_ROWS];
    size_t rows = vx_flat_block_rows(ix), per = vx_store_per_chunk(s);
    /* A scan that asks the filter first reads keys and states, and the
    ** queries of a batch score each run of admitted rows in turn: what
    ** they share in cache is a run, so the block need not be sized for
    ** it. A whole chunk, at most VX_FLAT_MAX_ROWS rows, saves a block's
    ** fixed costs (records over 512 bytes get longer blocks, in any kind
    ** and storage). A graph's 128-d records split its chunks of 256 rows
    ** into blocks of 186 and 70. On 1M x 128 asking a callback that
    ** admits 0.1 %, HNSW's scan against a flat index's in turns, six runs
    ** each: 0.84-0.94x (mean 0.89), in whole chunks 0.92-1.00x (mean
    ** 0.95); 200k x 384, 0.975x and 1.00x (both sides' blocks grew). */
    if (prefilter) rows = per < VX_FLAT_MAX_ROWS ? per : VX_FLAT_MAX_ROWS;
    for (first = 0; first < nslots;) {
        const vx_chunk *c = vx_store_chunk(s, first >> s->shift);
        uint32_t row = first & (uint32_t)(per - 1);
        size_t n = nslots - first, i, j;
        if (n > per - row) n = per - row;
        if (n > rows) n = rows;
        /* The next block's states (after the chunk's vectors and keys)
        ** are requested here, and the start of its vectors unless the
        ** int8 rows kernel requests them, reading on (past) in the same
        ** chunk: a burst of requests per block stalled that scan. Not
        ** when the filter is asked first: it admits under half the rows,
        ** and requesting 4 KiB of each block's vectors slowed a flat
        ** scan of 1M x 128 asking a callback (0.1 %: 167-168 against
        ** 196-212 QPS without; 1 % 116-128 / 138-142; 10 % 52-56 / 58;
        ** 25 % and 45 %, and int8, unchanged). Such a scan requests the
        ** next block's keys instead, which the filter reads in turn: a
        ** graph's records are longer, so its chunks hold half the rows
        ** and their keys restart twice as often. HNSW 1M x 128 asking a
        ** callback that admits 0.1 %, against a flat index's same scan
        ** in turns (in memory, two runs of six rounds): 0.81-0.995x
        ** before, 0.88-1.01x after; flat at 1 % and 10 % unchanged. */
        if (first + n < nslots) {
            /* prefetches only: the next chunk is verified when read */
            const vx_chunk *nc = row + n < per
                                     ? c
                                     : &table[(first >> s->shift) + 1];
            uint32_t nrow = row + n < per ? row + (uint32_t)n : 0;
            const char *v = (const char *)(nc->vec + (size_t)nrow * s->rec);
            if (!prefilter && (nc != c || s->store != VECIDX_STORE_I8))
                for (i = 0; i < VX_SCAN_AHEAD_BYTES; i += 64)
                    __builtin_prefetch(v + i);
            for (i = 0; !dense && i < rows; i += 64)
                __builtin_prefetch(&nc->live[nrow + i]);
            for (i = 0; prefilter && i < rows; i += 8)
                __builtin_prefetch(&nc->key[nrow + i]);
        }
        for (i = j = 0; !dense && i < n; i++)
            j += live[i] = VX_LOAD(&c->live[row + i]) == VX_LIVE;
        /* A block of live rows, the usual case, is one run. Finding its
        ** end a byte at a time took a tenth of an int8 scan's time. */
        if (dense || (j == n && !prefilter)) {
            fn(ctx, c, row, first, n, vx_flat_past(s, nslots, first + n));
            first += (uint32_t)n;
            continue;
        }
        for (i = 0; prefilter && i < n; i++)
            if (live[i] && !o->filter(c->key[row + i], o->filter_ctx))
                live[i] = 0;
        for (i = 0; i < n; i = j) {
            for (; i < n && !live[i]; i++) continue;
            for (j = i; j < n && live[j]; j++) continue;
            if (i < j)
                fn(ctx, c, row + (uint32_t)i, first + (uint32_t)i, j - i,
                   prefilter ? 0
                             : vx_flat_past(s, nslots, first + (uint32_t)j));
        }
        first += (uint32_t)n;
    }
}

typedef struct vx_flat_ctx {
    const vecidx *ix;
    const vx_query *q;
    size_t nq;
    const vecidx_search_opts *o; /* asked after scoring, or NULL */
    vx_topk *heaps;
} vx_flat_ctx;

static void vx_flat_run(void *ctx, const vx_chunk *c, uint32_t row,
                        uint32_t slot, size_t n, size_t past)
{
    const vx_flat_ctx *f = ctx;
    float dist[VX_FLAT_MAX_ROWS];
    size_t qi;
    (void)past; /* the float32 kernels request ahead within the run */
    vx_tally.dist += n * f->nq;
    for (qi = 0; qi < f->nq; qi++) {
        vx_flat_dists(f->ix, c, row, n, &f->q[qi], dist);
        vx_flat_offer(c, row, slot, n, dist, f->o, 0, &f->heaps[qi]);
    }
}

/* Exact top-k of nq queries over every live slot, float32 storage; the
** caller's heaps (one per query, empty) receive the results. Without
** prefilter the filter is asked only of rows that would enter them. */
static void vx_flat_search(const vecidx *ix, const vx_query *q, size_t nq,
                           const vecidx_search_opts *o, int prefilter,
                           vx_topk *heaps)
{
    vx_flat_ctx f;
    f.ix = ix;
    f.q = q;
    f.nq = nq;
    f.o = prefilter ? NULL : o;
    f.heaps = heaps;
    vx_flat_runs(ix, o, prefilter, vx_flat_run, &f);
}

/* Results a group's heaps hold on the stack; beyond, one allocation. The
** common k keeps a search free of malloc and of the shared memory count. */
#define VX_TOPK_STACK 128u

/* Code distances from q to rows [row, row + n) of chunk c, all live,
** slots from slot on: int8 codes a block at a time (past as vx_run_fn's),
** the others one by one. */
static void vx_code_dists(const vecidx *ix, const vx_query *q,
                          const vx_chunk *c, uint32_t row, uint32_t slot,
                          size_t n, size_t past, float *out)
{
    const vx_store *s = &ix->store;
    const float *base = c->vec + (size_t)row * s->rec;
    size_t i;
    if (s->store == VECIDX_STORE_I8 && !q->exact) {
        vx_i8q qi = q->i8;
        qi.past = past;
        vx_qk.i8_dists(q->code, &qi, (int)ix->p.metric,
                       (const int8_t *)(const void *)base,
                       (size_t)s->rec * sizeof(float), NULL, n, s->dim, out);
        return;
    }
    for (i = 0; i < n; i++)
        out[i] = vx_code_dist(ix, q, base + i * s->rec, slot + (uint32_t)i);
}

typedef struct vx_coded_ctx {
    const vecidx *ix;
    const vx_query *q;
    const vecidx_search_opts *o; /* asked after scoring, or NULL */
    int by_slot;                 /* results held by slot, to re-rank */
    vx_topk *into;
} vx_coded_ctx;

static void vx_coded_run(void *ctx, const vx_chunk *c, uint32_t row,
                         uint32_t slot, size_t n, size_t past)
{
    const vx_coded_ctx *f = ctx;
    float dist[VX_FLAT_MAX_ROWS];
    vx_tally.dist += n;
    vx_code_dists(f->ix, f->q, c, row, slot, n, past, dist);
    vx_flat_offer(c, row, slot, n, dist, f->o, f->by_slot, f->into);
}

/* Exact scan of compressed storage for one query. Without kept vectors
** the code distances rank the results; with them the k * refine best by
** code distance are held by slot, re-scored against their float32
** vectors, and the k best of those returned. */
/* Bytes per candidate of vx_flat_coded's block: id, distance, vx_cand. */
#define VX_CODED_CAND (sizeof(uint64_t) + sizeof(float) + sizeof(vx_cand))

static int vx_flat_coded(vecidx *ix, const vx_query *q,
                         const vecidx_search_opts *o, int prefilter, vx_topk *h)
{
    const vx_store *s = &ix->store;
    size_t kr = s->keep ? vx_refine_k(ix, o, h->k) : h->k, i;
    uint32_t nslots = VX_LOAD(&s->nslots);
    float dbuf[VX_TOPK_STACK];
    uint64_t ibuf[VX_TOPK_STACK];
    vx_cand cbuf[VX_TOPK_STACK], *cand = cbuf;
    void *block = NULL;
    vx_topk c;
    vx_coded_ctx f;
    if (h->k == 0 || nslots == 0) return VECIDX_OK;
    if (kr > nslots) kr = nslots;
    c.k = kr < h->k ? h->k : kr;
    c.n = 0;
    c.d = dbuf;
    c.id = ibuf;
    if (s->keep && c.k > VX_TOPK_STACK) {
        if (!(block = vx_malloc(&ix->mem, c.k * VX_CODED_CAND)))
            return VECIDX_ENOMEM;
        c.id = block;
        c.d = (float *)(c.id + c.k);
        cand = (vx_cand *)(void *)(c.d + c.k);
    }
    f.ix = ix;
    f.q = q;
    f.o = prefilter ? NULL : o;
    f.by_slot = s->keep;
    f.into = s->keep ? &c : h;
    vx_flat_runs(ix, o, prefilter, vx_coded_run, &f);
    if (s->keep) {
        vx_topk_sort(&c);
        for (i = 0; i < c.n; i++) {
            cand[i].d = c.d[i];
            cand[i].slot = (uint32_t)c.id[i];
        }
        vx_kept_rerank(ix, q, cand, c.n, h);
    }
    vx_free(&ix->mem, block, c.k * VX_CODED_CAND);
    return VECIDX_OK;
}

static size_t vx_count(const vecidx *ix);
static inline float vx_qdist(const vecidx *ix, const vx_query *q,
                             uint32_t slot);

/* Costs of the ways to answer a filtered query, in units of one vector
** scored at a random place (what a graph walk pays per node visited),
** measured at 128 dimensions; see vecidx_search in vecidx.h for the plan
** they drive. Looking a key up and scoring its vector costs a little
** more than a walk's visit: the key map is one more random load. A row
** of a full scan is read in order, so its filter test is cheap, and
** scoring it cheaper than a random visit. */
#define VX_COST_KEYED 1.0
#define VX_COST_ROW 0.2
#define VX_COST_STREAM 0.3

/* Cost of the exact scan that answers a filtered query on the store: by
** the allowed keys when they are given and few, else a full scan that
** asks the filter first. *keyed tells which. */
static double vx_store_scan_cost(const vecidx_search_opts *o, size_t n,
                                 int *keyed)
{
    const vx_sopts *a = vx_allow_of(o);
    double card = a->card < (double)n ? a->card : (double)n;
    double full = (double)n * VX_COST_ROW + card * VX_COST_STREAM;
    *keyed = a->counted && card * VX_COST_KEYED < full;
    return *keyed ? card * VX_COST_KEYED : full;
}

/* How many allowed keys ahead a scan requests their vectors: far enough
** that the loads overlap (measured at 100k x 128: 4 left the scan at
** 0.44-0.77x a plain loop prefetching 16 rows ahead). */
#define VX_ALLOW_AHEAD 12
/* How many keys ahead the lookups request map cells. A lookup is a few
** instructions where scoring a vector is dozens, so the lead must be
** longer: on 1M x 128 flat with 1,000 allowed keys, 32 ahead ran at
** 0.97-1.02x the hand loop where 12 ahead ran at 0.91-0.96x (four rounds
** in turns); 64 did no better. On 100k x 128, and on IVF-PQ's map, the
** two measured the same. */
#define VX_MAP_AHEAD 32

/* Request the map cells of key: its key and its slot lie in two arrays. */
static inline void vx_map_prefetch(const vx_keymap *m, uint64_t key)
{
    size_t i = (size_t)vx_hash64(key) & (m->cap - 1);
    __builtin_prefetch(&m->keys[i]);
    __builtin_prefetch(&m->slots[i]);
}

/* Lines of a vector a scan of allowed keys requests ahead. */
#define VX_ALLOW_LINES 8

/* Request the first VX_ALLOW_LINES lines of the `bytes` at p, what a
** scan of allowed keys scores next. Measured on 1M x 128 with 1,000 to
** 10,000 allowed keys, against the vector's first line alone: 0.59-0.76x
** a hand-written scan of the same rows, from 0.43-0.67x. At 384
** dimensions (24 lines) neither more lines nor fewer did better. */
static inline void vx_allow_prefetch(const void *p, size_t bytes)
{
    size_t off;
    for (off = 0; off < bytes && off < VX_ALLOW_LINES * 64; off += 64)
        __builtin_prefetch((const char *)p + off);
}

/* Request what scoring a slot reads: its vector (the kept float32 one
** when there is one). */
static inline void vx_store_prefetch(const vx_store *s, uint32_t slot)
{
    vx_allow_prefetch(s->keep ? vx_store_full(s, slot) : vx_store_vec(s, slot),
                      (size_t)(s->keep ? s->dim : s->cw) * sizeof(float));
}

/* Exact scan of only the explicitly allowed keys, on the store (flat,
** HNSW, IVF-PQ's buffer). Keys are looked up in groups under the key-set
** lock (unless the caller holds it: `locked`); a key found is scored,
** its vector requested a few keys ahead, since the slots are in no
** order. A key in the map is live, its vector complete (the writer fills
** the slot before it maps the key, under that lock), and the slot cannot
** be reused while the search's epoch lasts, so the vector stays for the
** scan. A key removed after its group was looked up is a write in flight
** and may be returned; reading the slot's state again to drop it cost
** one more line per key: without it, 1.20-1.31x the queries per second
** at 1 % of 100k x 128. With kept float32 vectors the scores are exact,
** as a re-ranked search's are. */
static void vx_flat_allowed(vecidx *ix, const vx_query *q,
                            const vecidx_search_opts *o, int locked, vx_topk *h)
{
    const vx_sopts *a = vx_allow_of(o);
    const vx_store *s = &ix->store;
    uint64_t keys[256], pos = 0;
    uint32_t slots[256];
    float dist[256];
    size_t n, i, j;
    /* the keys come from one set: only other filters need asking */
    int others = vx_allow_others(a);
    while ((n = vx_allow_next(a, &pos, keys, 256)) > 0) {
        if (!locked) pthread_rwlock_rdlock(&ix->lock);
        /* the map cells too are in no order: request them ahead */
        for (i = 0; i < n && i < VX_MAP_AHEAD && s->map.cap; i++)
            vx_map_prefetch(&s->map, keys[i]);
        for (i = j = 0; i < n; i++) {
            uint32_t slot;
            if (i + VX_MAP_AHEAD < n && s->map.cap)
                vx_map_prefetch(&s->map, keys[i + VX_MAP_AHEAD]);
            if ((slot = vx_map_find(&s->map, keys[i])) == VX_NOSLOT) continue;
            keys[j] = keys[i];
            slots[j++] = slot;
        }
        if (!locked) pthread_rwlock_unlock(&ix->lock);
        for (i = 0; i < j && i < VX_ALLOW_AHEAD; i++)
            vx_store_prefetch(s, slots[i]);
        /* All distances first, then the heap: with no branch on a
        ** distance between them, one key's arithmetic overlaps the
        ** next's loads. */
        for (i = 0; i < j; i++) {
            if (i + VX_ALLOW_AHEAD < j)
                vx_store_prefetch(s, slots[i + VX_ALLOW_AHEAD]);
            dist[i] = s->keep ? vx_full_dist(ix, q, slots[i])
                              : vx_qdist(ix, q, slots[i]);
        }
        vx_tally.dist += j;
        for (i = 0; i < j; i++) {
            float d = dist[i];
            if (VX_UNLIKELY(d != d)) d = INFINITY;
            if (!vx_topk_admits(h, d, keys[i])) continue;
            if (others && !vx_allow_rest(a, keys[i])) continue;
            vx_topk_push(h, d, keys[i]);
        }
    }
}

/* Below this expected fraction admitted, a full scan asks the filter
** before it scores a row, not only for rows that would enter the top k. */
#define VX_PREFILTER_BELOW 0.5

/* The exact scan a filtered search on the store makes: by the allowed
** keys (*keyed), or in full, asking the filter first (*pre) or last. */
static void vx_store_plan(const vecidx_search_opts *o, size_t n, int *keyed,
                          int *pre)
{
    vx_store_scan_cost(o, n, keyed);
    *pre = vx_allow_frac(o, n) < VX_PREFILTER_BELOW;
}

/* Exact filtered search on the store, by the cheaper of the two scans. */
static int vx_store_scan(vecidx *ix, const vx_query *q,
                         const vecidx_search_opts *o, int locked, vx_topk *h)
{
    int keyed, pre;
    vx_store_plan(o, vx_count(ix), &keyed, &pre);
    if (keyed) {
        vx_flat_allowed(ix, q, o, locked, h);
        return VECIDX_OK;
    }
    if (ix->store.store != VECIDX_STORE_F32)
        return vx_flat_coded(ix, q, o, pre, h);
    vx_flat_search(ix, q, 1, o, pre, h);
    return VECIDX_OK;
}

/* ======================================================================
** 6. HNSW
**
** Hierarchical navigable small-world graph (Malkov & Yashunin 2016) with
** the neighbour-selection heuristic. Level-0 links sit in the storage
** chunks beside the vectors (one u32 count then up to m0 slot numbers per
** node); higher levels live in the arena. Everything is slot numbers and
** offsets, never pointers.
**
** Removal buries a node: its key leaves the index at once and searches
** never return it, but it stays traversable until a repair pass
** (vx_pass, in steps) rewires every list that links to a buried node through
** the buried node's own neighbours and then frees the slot. Passes run
** when enough nodes are buried, so the graph stays navigable, memory stays
** bounded under churn, and no list ever points to a reused slot.
** ====================================================================== */

#define VX_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)

static inline uint32_t *vx_hnsw_links(const vecidx *ix, uint32_t slot, int l)
{
    const vx_store *s = &ix->store;
    const vx_chunk *c = VX_SLOT_CHUNK(s, slot);
    uint32_t i = VX_SLOT_INDEX(s, slot);
    if (l == 0)
        return (uint32_t *)(void *)(c->vec + (size_t)(i + 1) * s->rec -
                                    (1 + s->link0));
    return VX_LOAD(&ix->hnsw.arena) + c->upper[i] +
           (size_t)(l - 1) * (1 + ix->hnsw.m);
}

/* A link list is a count, then that many slots. Searches read lists that
** a writer is changing, so every word is read and written atomically: the
** count with acquire and release (the slots below it are written first),
** each slot with release, so that a search that follows a link sees the
** node it leads to. A search may see a list half old and half new; every
** slot in it is one the list held, and a node a search can reach is
** never reused before the search ends (vx_ebr). */
static inline uint32_t vx_lcount(const uint32_t *links)
{
    return VX_LOAD(&links[0]);
}

static inline uint32_t vx_lget(const uint32_t *links, uint32_t i)
{
    return VX_PEEK(&links[1 + i]);
}

static inline void vx_lput(uint32_t *links, uint32_t i, uint32_t slot)
{
    VX_STORE(&links[1 + i], slot);
}

static inline void vx_lsetn(uint32_t *links, uint32_t n)
{
    VX_STORE(&links[0], n);
}

/* The entry point and top level, as one consistent pair. */
static inline uint32_t vx_hnsw_top(const vx_hnsw *h, int *maxlevel)
{
    uint64_t t = VX_LOAD(&h->top);
    if (maxlevel) *maxlevel = (int)(uint32_t)(t >> 32) - 1;
    return (uint32_t)t;
}

static inline void vx_hnsw_set_top(vx_hnsw *h, uint32_t entry, int maxlevel)
{
    VX_STORE(&h->top, (uint64_t)(uint32_t)(maxlevel + 1) << 32 | entry);
}

static inline int vx_hnsw_level(const vecidx *ix, uint32_t slot)
{
    return VX_SLOT_CHUNK(&ix->store, slot)
        ->level[VX_SLOT_INDEX(&ix->store, slot)];
}

static size_t vx_hnsw_block_words(const vx_hnsw *h, int level)
{
    return (size_t)level * (1 + h->m);
}

static inline void vx_hnsw_lock(vecidx *ix, uint32_t slot)
{
    atomic_flag *f = &ix->hnsw.locks[slot % VX_HNSW_NLOCKS];
    unsigned spins = 0;
    if (!ix->hnsw.locking) return;
    while (atomic_flag_test_and_set_explicit(f, memory_order_acquire))
        if (++spins % 64 == 0) sched_yield();
}

static inline void vx_hnsw_unlock(vecidx *ix, uint32_t slot)
{
    if (ix->hnsw.locking)
        atomic_flag_clear_explicit(&ix->hnsw.locks[slot % VX_HNSW_NLOCKS],
                                   memory_order_release);
}

/* Distance from a validated query to a stored slot. */
static inline float vx_qdist(const vecidx *ix, const vx_query *q, uint32_t slot)
{
    const float *v = vx_store_vec(&ix->store, slot);
    if (VX_UNLIKELY(ix->store.store != VECIDX_STORE_F32))
        return vx_code_dist(ix, q, v, slot);
    switch (ix->p.metric) {
    case VECIDX_L2:
        return ix->kern->l2(q->v, v, ix->p.dim);
    case VECIDX_IP:
        return -ix->kern->dot(q->v, v, ix->p.dim);
    default:
        return 1.0f - ix->kern->dot(q->v, v, ix->p.dim) * q->inv_norm *
                          vx_store_inorm(&ix->store, slot);
    }
}

static int vx_query_far(const vecidx *ix, const vx_query *q);
static void vx_query_scale(const vecidx *ix, vx_query *q, int e, float *dst);

/* Whether nodes seen as queries are scored by their float32 vectors under
** cosine, which vx_node_query then scales when far from norm 1. */
static inline int vx_node_scales(const vx_store *s)
{
    return s->cosine &&
           (s->store == VECIDX_STORE_F32 || s->store == VECIDX_STORE_BIN);
}

/* A stored node seen as a query, for distances between nodes: its code
** under int8 storage; its float32 vector under binary storage, whose
** graphs are built on exact distances (sign bits alone link poorly).
** Under cosine a float32 vector far from norm 1 is scaled by a power of
** two into buf (dim floats; NULL: left as it is), as a search scales its
** query: two stored vectors of norm 1e20 have a dot product past float32,
** and a graph of such vectors, every distance -inf, was linked at random
** (recall@10 0.006 at 5k x 32, 0.95 at norm 1). */
static inline vx_query vx_node_query(const vecidx *ix, uint32_t slot,
                                     float *buf)
{
    const vx_store *s = &ix->store;
    vx_query q;
    int e;
    q.v = vx_store_vec(s, slot);
    q.inv_norm = s->cosine ? vx_store_inorm(s, slot) : 0.0f;
    q.code = q.v;
    q.exact = s->store == VECIDX_STORE_BIN;
    q.qsum = 0;
    if (s->store == VECIDX_STORE_I8)
        q.i8 = vx_i8_query(vx_i8_hdr(q.code, s->dim), s->dim);
    if (s->keep)
        q.v = vx_store_full(s, slot);
    else if (s->store == VECIDX_STORE_F16)
        q.v = NULL; /* the half-precision code is the query */
    if (buf && vx_node_scales(s) && (e = vx_query_far(ix, &q)) != 0)
        vx_query_scale(ix, &q, e, buf);
    return q;
}

/* ---- working memory ---------------------------------------------------- */

static void vx_scratch_free(vx_mem *mem, vx_hnsw_scratch *s)
{
    vx_free(mem, s->visit, s->visit_cap * sizeof *s->visit);
    vx_free(mem, s->cand, s->cand_cap * sizeof *s->cand);
    vx_free(mem, s->res, s->res_cap * sizeof *s->res);
    vx_free(mem, s->sel, s->sel_cap * sizeof *s->sel);
    vx_free(mem, s->up, s->up_cap * sizeof *s->up);
    vx_free(mem, s->ids, s->ids_cap * sizeof *s->ids);
    vx_free(mem, s->qbuf, s->qbuf_cap * sizeof *s->qbuf);
    vx_free(mem, s, sizeof *s);
}

/* Make s fit a search of breadth ef over the current slots. */
static int vx_scratch_fit(vecidx *ix, vx_hnsw_scratch *s, size_t ef)
{
    size_t slots = (size_t)VX_LOAD(&ix->store.nchunks) << ix->store.shift;
    size_t sel = (size_t)ix->hnsw.m0 * (ix->hnsw.m0 + 1) + ef + 1;
    if (s->visit_cap < slots) {
        vx_free(&ix->mem, s->visit, s->visit_cap * sizeof *s->visit);
        s->visit_cap = 0;
        if (!(s->visit = vx_malloc(&ix->mem, slots * sizeof *s->visit)))
            return VECIDX_ENOMEM;
        memset(s->visit, 0, slots * sizeof *s->visit);
        s->visit_cap = slots;
        s->epoch = 0;
    }
    if (vx_grow(&ix->mem, (void **)&s->res, &s->res_cap, ef + 1,
                sizeof *s->res) ||
        vx_grow(&ix->mem, (void **)&s->cand, &s->cand_cap, 2 * ef + 64,
                sizeof *s->cand) ||
        vx_grow(&ix->mem, (void **)&s->sel, &s->sel_cap, sel, sizeof *s->sel) ||
        vx_grow(&ix->mem, (void **)&s->ids, &s->ids_cap, sel, sizeof *s->ids))
        return VECIDX_ENOMEM;
    if (vx_node_scales(&ix->store)) {
        if (vx_grow(&ix->mem, (void **)&s->qbuf, &s->qbuf_cap,
                    2 * (size_t)ix->store.dim, sizeof *s->qbuf))
            return VECIDX_ENOMEM;
        s->qnode = s->qbuf;
        s->qpass = s->qbuf + ix->store.dim;
    }
    return VECIDX_OK;
}

/* Take an idle scratch (or make one) fitted for breadth ef. */
static int vx_scratch_get(vecidx *ix, size_t ef, vx_hnsw_scratch **out)
{
    vx_hnsw_scratch *s = NULL, **cell = ix->hnsw.cell;
    unsigned h = vx_thread_no() * 8, i;
    for (i = 0; i < VX_SCRATCH_CELLS && !s; i++) {
        vx_hnsw_scratch **c = &cell[(h + i) % VX_SCRATCH_CELLS];
        if (VX_PEEK(c)) s = __atomic_exchange_n(c, NULL, __ATOMIC_ACQ_REL);
    }
    if (!s) {
        if (!(s = vx_malloc(&ix->mem, sizeof *s))) return VECIDX_ENOMEM;
        memset(s, 0, sizeof *s);
    }
    if (vx_scratch_fit(ix, s, ef) != VECIDX_OK) {
        vx_scratch_free(&ix->mem, s);
        return VECIDX_ENOMEM;
    }
    s->oom = 0;
    s->writer = 0;
    *out = s;
    return VECIDX_OK;
}

/* Give s back to an empty cell; with none empty (more threads than cells
** searched at once) it is freed. */
static void vx_scratch_put(vecidx *ix, vx_hnsw_scratch *s)
{
    vx_hnsw_scratch **cell = ix->hnsw.cell;
    unsigned h = vx_thread_no() * 8, i;
    for (i = 0; i < VX_SCRATCH_CELLS; i++) {
        vx_hnsw_scratch **c = &cell[(h + i) % VX_SCRATCH_CELLS], *none = NULL;
        if (!VX_PEEK(c) &&
            __atomic_compare_exchange_n(c, &none, s, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED))
            return;
    }
    vx_scratch_free(&ix->mem, s);
}

/* Start a new visit generation; wrap-around clears the tags once. */
static void vx_scratch_new_visit(vx_hnsw_scratch *s)
{
    if (++s->epoch == 0) {
        memset(s->visit, 0, s->visit_cap * sizeof *s->visit);
        s->epoch = 1;
    }
    s->visited = s->expanded = 0;
}

/* ---- candidate heaps ---------------------------------------------------- */

/* Max-heap on key(d): results use d, the frontier uses -d. */
static void vx_cheap_push(vx_cand *h, size_t *n, vx_cand c, int neg)
{
    size_t i = (*n)++;
    float kc = neg ? -c.d : c.d;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        float kp = neg ? -h[p].d : h[p].d;
        if (kp >= kc) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

/* Put c at the root of a heap of m entries and sift it down. */
static void vx_cheap_sift_down(vx_cand *h, size_t m, vx_cand c, int neg)
{
    size_t i = 0;
    float kl = neg ? -c.d : c.d;
    for (;;) {
        size_t ch = 2 * i + 1;
        if (ch >= m) break;
        if (ch + 1 < m &&
            (neg ? -h[ch + 1].d : h[ch + 1].d) > (neg ? -h[ch].d : h[ch].d))
            ch++;
        if ((neg ? -h[ch].d : h[ch].d) <= kl) break;
        h[i] = h[ch];
        i = ch;
    }
    h[i] = c;
}

static vx_cand vx_cheap_pop(vx_cand *h, size_t *n, int neg)
{
    vx_cand top = h[0];
    if (--(*n)) vx_cheap_sift_down(h, *n, h[*n], neg);
    return top;
}

/* Push onto the frontier, growing it; on failure the search continues
** with what it has and reports VECIDX_ENOMEM at the end. */
static void vx_frontier_push(vecidx *ix, vx_hnsw_scratch *s, vx_cand c)
{
    if (s->ncand == s->cand_cap &&
        vx_grow(&ix->mem, (void **)&s->cand, &s->cand_cap, s->ncand + 1,
                sizeof *s->cand) != VECIDX_OK) {
        s->oom = 1;
        return;
    }
    vx_cheap_push(s->cand, &s->ncand, c, 1);
}

/* ---- graph walk ---------------------------------------------------------- */

/* The links of slot at level l, copied into s->ids. Only slots the
** search's visit marks cover are kept: nodes added since it began may be
** left out, as writes in flight may be. A graph mapped from a file is
** used without a full check at open, so its lists are also bounded: the
** node's level and arena offset, and the list's length. Damage then costs
** recall, not memory safety. A writer's scratch locks the node while a
** parallel pass may change its list. */
static const uint32_t *vx_hnsw_read(vecidx *ix, vx_hnsw_scratch *s,
                                    uint32_t slot, int l, uint32_t *n)
{
    const uint32_t *links;
    uint32_t cnt, i, m = 0, cap = l ? ix->hnsw.m : ix->hnsw.m0;
    int lock = s->writer && ix->hnsw.locking;
    *n = 0;
    if (VX_UNLIKELY(ix->hnsw.untrusted) && l > 0) {
        const vx_store *st = &ix->store;
        uint32_t off = VX_SLOT_CHUNK(st, slot)->upper[VX_SLOT_INDEX(st, slot)];
        if (vx_hnsw_level(ix, slot) < l ||
            off + vx_hnsw_block_words(&ix->hnsw, l) >
                VX_LOAD(&ix->hnsw.arena_n))
            return s->ids;
    }
    links = vx_hnsw_links(ix, slot, l);
    if (lock) vx_hnsw_lock(ix, slot);
    cnt = vx_lcount(links);
    if (cnt > cap) cnt = cap;
    /* Acquire: the nodes behind the slots were published before them. */
    for (i = 0; i < cnt; i++) {
        uint32_t v = VX_LOAD(&links[1 + i]);
        if (v < s->visit_cap) s->ids[m++] = v;
    }
    if (lock) vx_hnsw_unlock(ix, slot);
    *n = m;
    return s->ids;
}

/* May slot enter the results? Live, and admitted by the filter if any. */
static inline int vx_hnsw_admit(const vecidx *ix, const vx_hnsw_scratch *s,
                                uint32_t slot, const vecidx_search_opts *o)
{
    /* Links never lead to free slots, so without buried nodes when the
    ** walk began every node reached is live (or was removed during the
    ** walk, a write in flight) and the state byte need not be loaded. */
    if (s->live_only && vx_store_live(&ix->store, slot) != VX_LIVE) return 0;
    return !(o && o->filter) ||
           o->filter(vx_store_key(&ix->store, slot), o->filter_ctx);
}

/* Offer a visited node: results keep the ef best admitted nodes, and any
** node closer than the worst result (admitted or not, buried too) joins
** the frontier, so the walk passes through filtered-out regions. */
static void vx_hnsw_offer(vecidx *ix, vx_hnsw_scratch *s, vx_cand c, int l,
                          size_t ef, const vecidx_search_opts *o)
{
    int full = s->nres >= ef;
    if (full && c.d >= s->res[0].d) return;
    /* c will probably be expanded soon: start fetching its links now. */
    VX_PREFETCH(vx_hnsw_links(ix, c.slot, l));
    vx_frontier_push(ix, s, c);
    s->asked++;
    if (!vx_hnsw_admit(ix, s, c.slot, o)) return;
    s->admitted++;
    if (full) /* replace the worst: one sift instead of push + pop */
        vx_cheap_sift_down(s->res, s->nres, c, 0);
    else
        vx_cheap_push(s->res, &s->nres, c, 0);
}

#define VX_PREFETCH_L2 (128u * 1024u)
/* Bytes of a vector requested ahead when its distance may be abandoned:
** the first block the l2_bound kernels sum before their first look
** (which then request each further block as they go). On 960-d L2 at
** ef 16-32 this made the walk 1.11-1.30x faster than requesting whole
** vectors, and asking for 256 or 1024 bytes was slower than 512. */
#define VX_BOUND_PF (VX_L2_BOUND_STEP * sizeof(float))

/* Lines 1.. of a vector into L1, or only as far as L2 (locality 2). */
static inline void vx_prefetch_rest(const float *v, size_t bytes, int l1)
{
    size_t off;
    for (off = 64; off < bytes; off += 64)
        if (l1)
            VX_PREFETCH((const char *)v + off);
        else
            __builtin_prefetch((const char *)v + off, 0, 2);
}

/* Request the vector of v, the m-th requested for one node: its first
** line into L1, the rest as far as L2 while a node's requests stay within
** VX_PREFETCH_L2 bytes (see vx_hnsw_layer). */
static inline void vx_hnsw_request(const vx_store *st, uint32_t v, uint32_t m,
                                   size_t bytes)
{
    const float *vec = vx_store_vec(st, v);
    VX_PREFETCH(vec);
    if (m * bytes <= VX_PREFETCH_L2) vx_prefetch_rest(vec, bytes, 0);
}

/* Greedy descent on an upper level: move to any closer neighbour until
** none is closer. Compressed codes of a node's neighbours are requested
** before any is scored, as the walk of level 0 does (vx_hnsw_visit); one
** at a time, each missed the cache in turn. Paired A/B, int8 on 1M x 128:
** 1.08 / 1.07 / 1.03x the queries per second at ef 16 / 24 / 32. Float32
** vectors, four times the bytes, gained nothing there (0.96-0.99x; on
** 100k, 0.94-1.13x in two runs), so they are left to the hardware. */
static void vx_hnsw_greedy(vecidx *ix, vx_hnsw_scratch *s, const vx_query *q,
                           uint32_t *cur, float *cur_d, int l)
{
    size_t bytes = (size_t)ix->store.cw * sizeof(float);
    int ahead = ix->store.store != VECIDX_STORE_F32, moved = 1;
    while (moved) {
        uint32_t n, i;
        const uint32_t *nb = vx_hnsw_read(ix, s, *cur, l, &n);
        for (i = 0; ahead && i < n; i++)
            vx_hnsw_request(&ix->store, nb[i], i + 1, bytes);
        moved = 0;
        for (i = 0; i < n; i++) {
            float d = vx_qdist(ix, q, nb[i]);
            if (d < *cur_d) {
                *cur_d = d;
                *cur = nb[i];
                moved = 1;
            }
        }
    }
}

/* Mark v visited and request its vector (see vx_hnsw_layer), unless it
** was visited already; returns the new count of fresh nodes. */
static inline uint32_t vx_hnsw_visit(const vx_store *st, vx_hnsw_scratch *s,
                                     uint32_t v, uint32_t *fresh, uint32_t m,
                                     size_t dim_bytes)
{
    if (s->visit[v] == s->epoch) return m;
    s->visit[v] = s->epoch;
    fresh[m++] = v;
    vx_hnsw_request(st, v, m, dim_bytes);
    return m;
}

/* The neighbours of slot at level l that the walk has not visited yet,
** into fresh, marked visited and their vectors requested. The list is read
** in place, a word at a time, unless it must be bounded (a mapped graph)
** or locked (a parallel pass), which vx_hnsw_read does. */
static uint32_t vx_hnsw_unvisited(vecidx *ix, vx_hnsw_scratch *s, uint32_t slot,
                                  int l, uint32_t *fresh, size_t pf)
{
    const vx_store *st = &ix->store;
    uint32_t n, i, m = 0;
    if (VX_UNLIKELY(ix->hnsw.untrusted || (s->writer && ix->hnsw.locking))) {
        const uint32_t *nb = vx_hnsw_read(ix, s, slot, l, &n);
        for (i = 0; i < n; i++) m = vx_hnsw_visit(st, s, nb[i], fresh, m, pf);
    } else {
        const uint32_t *links = vx_hnsw_links(ix, slot, l);
        uint32_t cap = l ? ix->hnsw.m : ix->hnsw.m0;
        n = vx_lcount(links);
        if (n > cap) n = cap;
        for (i = 0; i < n; i++) {
            /* Acquire: the node behind a slot was published before it. */
            uint32_t v = VX_LOAD(&links[1 + i]);
            if (v < s->visit_cap) m = vx_hnsw_visit(st, s, v, fresh, m, pf);
        }
    }
    return m;
}

/* Score the m fresh neighbours of a node with one call of the int8 rows
** kernel (their codes were requested as they were marked) and offer them
** in order, as the one-at-a-time loop would. */
static void vx_hnsw_offer_i8(vecidx *ix, vx_hnsw_scratch *s, const vx_query *q,
                             const uint32_t *fresh, uint32_t m, int l,
                             size_t ef, const vecidx_search_opts *o)
{
    const int8_t *at[2 * VX_HNSW_MAX_M];
    float dist[2 * VX_HNSW_MAX_M];
    uint32_t i;
    if (m == 0) return; /* gcc 12 took `at` for unset when inlined */
    for (i = 0; i < m; i++)
        at[i] = (const int8_t *)(const void *)vx_store_vec(&ix->store,
                                                           fresh[i]);
    vx_qk.i8_dists((const int8_t *)q->code, &q->i8, (int)ix->p.metric, NULL, 0,
                   at, m, ix->store.dim, dist);
    for (i = 0; i < m; i++) {
        vx_cand e;
        e.slot = fresh[i];
        e.d = VX_UNLIKELY(dist[i] != dist[i]) ? INFINITY : dist[i];
        vx_hnsw_offer(ix, s, e, l, ef, o);
    }
}

/* Distances a search's walk sums in full before it estimates: the
** largest share among fewer would cover too few of its candidates. */
#define VX_CUT_MIN 16u

/* Squared L2 from q to slot's float32 vector, given up once it cannot
** enter the ef results. A write's walk gives up only on proof (a partial
** sum past the worst result): a neighbour it missed would be a worse link
** for good. A search's walk also estimates: from the distances it summed
** in full it knows the largest share of a whole distance the first j
** blocks held (s->cut_at), and once VX_CUT_MIN showed it, a partial sum
** past that share of the worst result gives up. That assumes the later
** candidates spread their distance over the dimensions about as the ones
** it summed did. Where they do not, recall at a given ef drops, but less
** than the speed gained: on 640-d sets built against it (sparse vectors,
** clusters within clusters) recall@10 at ef 10-16 fell by up to 0.03,
** yet queries per second at equal recall were 1.0-1.2x the walk on proof
** alone. A margin of 1.2 over the shares with every 4th distance given up
** summed in full to learn from won that recall back, but ran only
** 1.04-1.10x the proof on 960-d, against 1.31-1.44x; every 16th won
** nothing there and cost 7-11 % (RESULTS.md, 2026-12-05, third). */
static float vx_hnsw_bound_dist(const vecidx *ix, vx_hnsw_scratch *s,
                                const vx_query *q, uint32_t slot, size_t ef)
{
    const vx_store *st = &ix->store;
    float bound = s->nres >= ef ? s->res[0].d : INFINITY, d;
    size_t j, looks = (st->dim - 1) / VX_L2_BOUND_STEP;
    vx_cut cut;
    if (s->writer)
        return vx_qk.l2_bound(q->v, vx_store_vec(st, slot), st->dim, bound,
                              NULL);
    if (looks > VX_CUT_LOOKS) looks = VX_CUT_LOOKS;
    for (j = 0; j < looks; j++) s->cut_part[j] = -1.0f;
    cut.at = s->ncut >= VX_CUT_MIN ? s->cut_at : NULL;
    cut.part = s->cut_part;
    d = vx_qk.l2_bound(q->v, vx_store_vec(st, slot), st->dim, bound, &cut);
    if (!(d <= bound && d > 0)) return d; /* given up, or nothing to learn */
    /* summed in full: each look's share, at most 1 (rounding) */
    for (j = 0; j < looks && s->cut_part[j] >= 0.0f; j++) {
        float r = s->cut_part[j] / d;
        if (r > s->cut_at[j]) s->cut_at[j] = r < 1.0f ? r : 1.0f;
    }
    s->ncut++;
    return d;
}

/* Score the m fresh neighbours of a node one at a time and offer them;
** bounded: float32 L2 that may be given up (vx_hnsw_bound_dist). Each
** vector is moved up to L1 two ahead of the one scored (pf bytes of it,
** see vx_hnsw_layer). */
static void vx_hnsw_offer_each(vecidx *ix, vx_hnsw_scratch *s,
                               const vx_query *q, const uint32_t *fresh,
                               uint32_t m, int l, size_t ef,
                               const vecidx_search_opts *o, int bounded,
                               size_t pf)
{
    const vx_store *st = &ix->store;
    uint32_t i;
    for (i = 0; i < 2 && i < m; i++)
        vx_prefetch_rest(vx_store_vec(st, fresh[i]), pf, 1);
    for (i = 0; i < m; i++) {
        vx_cand e;
        if (i + 2 < m) vx_prefetch_rest(vx_store_vec(st, fresh[i + 2]), pf, 1);
        e.slot = fresh[i];
        e.d = bounded ? vx_hnsw_bound_dist(ix, s, q, e.slot, ef)
                      : vx_qdist(ix, q, e.slot);
        if (VX_UNLIKELY(e.d != e.d)) e.d = INFINITY;
        vx_hnsw_offer(ix, s, e, l, ef, o);
    }
}

/* The early test for a set that lies away from the query. A walk from
** the entry point toward the query meets admitted nodes in about the
** set's share when the set is spread over the index; one lying away
** from the query meets almost none until the walk has crossed to the
** set's edge, having scored every rejected node closer than it: on 1M x
** 128, 15 times an unfiltered search's work at 50 % admitted, and past
** the scan's cost at 10 %. So once the walk has asked about enough nodes
** to have met VX_FAR_MEET admitted ones at the set's share, it gives up
** if it met fewer than VX_FAR_SHARE of that, and the search walks from
** inside the set instead (vx_hnsw_far), or, where its budget leaves no
** room for that (see VX_SEED_FRAC), the scan answers. The test is made only
** where one of the two may pay: with no room, only where the scan costs
** less than VX_FAR_RATIO walks; beyond, reaching the set's edge is still
** cheaper than the scan (3-11x at 50 % of 20k). A set spread at random
** meets the test at its share (16 expected, fewer than 4 has odds near
** 1e-4). */
#define VX_FAR_MEET 16.0
#define VX_FAR_SHARE 0.25
#define VX_FAR_RATIO 8.0

/* Long float32 L2 vectors stop summing once past the worst result (they
** could not enter) or, in a search, once an estimate says they will be
** (vx_hnsw_bound_dist). The sum is checked every VX_L2_BOUND_STEP
** dimensions, so shorter vectors would only pay the test. */
static inline int vx_hnsw_bounded(const vecidx *ix)
{
    const vx_store *st = &ix->store;
    return st->store == VECIDX_STORE_F32 && ix->p.metric == VECIDX_L2 &&
           st->dim > VX_L2_BOUND_STEP;
}

/* Score the m fresh nodes of a walk and offer them: int8 codes in one
** call of the rows kernel, anything else one at a time. */
static inline void vx_hnsw_score(vecidx *ix, vx_hnsw_scratch *s,
                                 const vx_query *q, const uint32_t *fresh,
                                 uint32_t m, int l, size_t ef,
                                 const vecidx_search_opts *o, size_t pf)
{
    s->visited += m;
    /* With buried nodes in the graph, vx_hnsw_offer tests the state of
    ** each node that passes its distance test: one miss each, in turn,
    ** unless requested now. 1M x 128 int8, 5 % of the keys removed (no
    ** repair pass due yet), ef 24: 1.10x the queries per second. */
    if (s->live_only) {
        uint32_t i;
        for (i = 0; i < m; i++) vx_store_live_ahead(&ix->store, fresh[i]);
    }
    if (o && o->filter) {
        /* Those that pass vx_hnsw_offer's distance test take their key
        ** to the filter: one miss each, in turn, unless requested now,
        ** under the scoring. Measured on 1M x 128 at ef 64, bitmap form:
        ** 1.19-1.25x the queries per second on float32 sets of 10-50 %,
        ** random or far, 1.14-1.15x on int8, 1.07-1.14x on 200k x 384. */
        uint32_t i;
        for (i = 0; i < m; i++) vx_store_key_ahead(&ix->store, fresh[i]);
    }
    if (ix->store.store == VECIDX_STORE_I8 && !q->exact)
        vx_hnsw_offer_i8(ix, s, q, fresh, m, l, ef, o);
    else
        vx_hnsw_offer_each(ix, s, q, fresh, m, l, ef, o, vx_hnsw_bounded(ix),
                           pf);
}

/* A new walk's empty frontier, results and counts. */
static void vx_hnsw_walk_begin(vecidx *ix, vx_hnsw_scratch *s)
{
    vx_scratch_new_visit(s);
    s->nres = s->ncand = 0;
    s->asked = s->admitted = 0;
    s->live_only = VX_LOAD(&ix->store.nburied) != 0;
    s->ncut = 0;
    if (vx_hnsw_bounded(ix)) memset(s->cut_at, 0, sizeof s->cut_at);
}

/* Ask the filter about the unvisited among the n nodes at nb, marking
** them: admitted ones go to fresh (from m, their vectors requested),
** rejected ones to rej (from *nr) when it is not NULL. Their keys are
** requested first, so that the filter's loads overlap. */
static uint32_t vx_hnsw_sift(vecidx *ix, vx_hnsw_scratch *s, const uint32_t *nb,
                             uint32_t n, const vecidx_search_opts *o,
                             uint32_t *fresh, uint32_t m, uint32_t *rej,
                             uint32_t *nr, size_t pf)
{
    const vx_store *st = &ix->store;
    uint32_t i, u = 0, new_[2 * VX_HNSW_MAX_M];
    /* marked only what fits: a marked node is never asked about again */
    for (i = 0; i < n && m + u < 2 * VX_HNSW_MAX_M; i++) {
        uint32_t v = nb[i];
        if (s->visit[v] == s->epoch) continue;
        s->visit[v] = s->epoch;
        new_[u++] = v;
        vx_store_key_ahead(st, v);
    }
    s->asked += u;
    for (i = 0; i < u; i++) {
        if (vx_hnsw_admit(ix, s, new_[i], o)) {
            fresh[m++] = new_[i];
            vx_hnsw_request(st, new_[i], m, pf);
            s->admitted++;
        } else if (rej)
            rej[(*nr)++] = new_[i];
    }
    return m;
}

/* The admitted neighbours of slot at level 0 that the walk has not
** visited, into fresh, marked and their vectors requested, for a walk
** inside an allowed set (vx_hnsw_far_walk). A rejected neighbour is looked
** through to its own neighbours (two hops, as ACORN-1 does), so that the
** walk crosses gaps in the set; it is never expanded itself. */
VX_NOINLINE static uint32_t vx_hnsw_inside(vecidx *ix, vx_hnsw_scratch *s,
                                           uint32_t slot,
                                           const vecidx_search_opts *o,
                                           uint32_t *fresh, size_t pf)
{
    uint32_t n, m, nr = 0, j, rej[2 * VX_HNSW_MAX_M];
    const uint32_t *nb = vx_hnsw_read(ix, s, slot, 0, &n);
    m = vx_hnsw_sift(ix, s, nb, n, o, fresh, 0, rej, &nr, pf);
    for (j = 0; j < nr && m < 2 * VX_HNSW_MAX_M; j++) {
        nb = vx_hnsw_read(ix, s, rej[j], 0, &n);
        m = vx_hnsw_sift(ix, s, nb, n, o, fresh, m, NULL, NULL, pf);
    }
    return m;
}

/* Best-first walk of level l from the frontier, breadth ef, into s->res.
** With a filter the walk gives up after `budget` visits (s->visited then
** exceeds it) so that the caller can switch to an exact scan. `inside`:
** expand admitted nodes only (vx_hnsw_inside). */
VX_NOINLINE static void vx_hnsw_run(vecidx *ix, vx_hnsw_scratch *s,
                                    const vx_query *q, int l, size_t ef,
                                    const vecidx_search_opts *o, size_t budget,
                                    int inside)
{
    const vx_store *st = &ix->store;
    /* what scoring reads: the code, not the links after it in the record */
    size_t dim_bytes = (size_t)st->cw * sizeof(float);
    int bounded = vx_hnsw_bounded(ix);
    while (s->ncand) {
        vx_cand c = vx_cheap_pop(s->cand, &s->ncand, 1);
        uint32_t m;
        uint32_t fresh[2 * VX_HNSW_MAX_M];
        size_t pf;
        if (s->nres >= ef && c.d > s->res[0].d) break;
        if (s->visited > budget) break;
        if (VX_UNLIKELY(s->far_at) && s->asked >= s->far_at) {
            s->far_at = 0;
            if ((double)s->admitted <
                VX_FAR_SHARE * s->far_frac * (double)s->asked) {
                s->far = 1;
                break;
            }
        }
        s->expanded++;
        pf = bounded && s->nres >= ef && dim_bytes > VX_BOUND_PF ? VX_BOUND_PF
                                                                 : dim_bytes;
        m = inside ? vx_hnsw_inside(ix, s, c.slot, o, fresh, pf)
                   : vx_hnsw_unvisited(ix, s, c.slot, l, fresh, pf);
        /* Mark first, then request every unvisited vector, whole, before
        ** any distance is computed, so that all their loads are in flight
        ** at once: a walk is bound by memory latency, and one vector at a
        ** time leaves most of the memory system idle. Only the first line
        ** goes to L1; the rest, up to 32 vectors of them, would not fit
        ** there, so it waits in L2 until it is moved up, two vectors
        ** ahead of the one scored. (Measured: 14-25 % more queries per
        ** second at 128, 384 and 960 dimensions than the L1 prefetch alone.)
        ** A distance that may be abandoned requests only its first block
        ** (VX_BOUND_PF); the l2_bound kernel requests the rest as it goes.
        ** Long vectors stop at VX_PREFETCH_L2 bytes per node expanded,
        ** so as not to evict what the walk still needs from a small L2.
        ** With M 16 that cap binds only above 1,024 dimensions, where it
        ** is not measured. */
        /* inside: fresh nodes were admitted as they were found */
        vx_hnsw_score(ix, s, q, fresh, m, l, ef, inside ? NULL : o, pf);
        /* The next node to expand is known now: fetch its links early. */
        if (s->ncand) VX_PREFETCH(vx_hnsw_links(ix, s->cand[0].slot, l));
    }
}

/* Best-first search of level l from ep, breadth ef, into s->res (see
** vx_hnsw_run). */
static void vx_hnsw_layer(vecidx *ix, vx_hnsw_scratch *s, const vx_query *q,
                          vx_cand ep, int l, size_t ef,
                          const vecidx_search_opts *o, size_t budget)
{
    vx_hnsw_walk_begin(ix, s);
    s->visit[ep.slot] = s->epoch;
    vx_hnsw_offer(ix, s, ep, l, ef, o);
    vx_hnsw_run(ix, s, q, l, ef, o, budget, 0);
}

/* ---- building ------------------------------------------------------------ */

static int vx_cand_cmp(const void *a, const void *b)
{
    const vx_cand *x = a, *y = b;
    if (x->d != y->d) return x->d < y->d ? -1 : 1;
    return x->slot < y->slot ? -1 : x->slot > y->slot;
}

/* The neighbour-selection heuristic: walking candidates closest first,
** keep one only if it is closer to the base than to every neighbour kept
** so far. That favours links in diverse directions, which is what keeps
** clustered data navigable. With slack > 0 a candidate survives unless a
** kept neighbour is closer to it by more than that fraction (the alpha of
** Vamana / FreshDiskANN, written so that it also means something for
** inner-product distances, which can be negative). c must be sorted by
** vx_cand_cmp. Keeps at most m; returns how many. */
static size_t vx_hnsw_select(const vecidx *ix, vx_cand *c, size_t n, size_t m,
                             float slack, float *buf)
{
    size_t i, j, kept = 0;
    for (i = 0; i < n && kept < m; i++) {
        vx_query qi = vx_node_query(ix, c[i].slot, buf);
        int good = 1;
        for (j = 0; j < kept && good; j++) {
            float dk = vx_qdist(ix, &qi, c[j].slot);
            good = dk >= c[i].d ||
                   (slack > 0 && dk + slack * fabsf(dk) >= c[i].d);
        }
        if (good) c[kept++] = c[i];
    }
    return kept;
}

static void vx_hnsw_set_links(vecidx *ix, uint32_t slot, int l,
                              const vx_cand *c, size_t n)
{
    uint32_t *links = vx_hnsw_links(ix, slot, l);
    size_t i;
    if (l == 0) vx_snap_touch(ix, slot);
    for (i = 0; i < n; i++) vx_lput(links, (uint32_t)i, c[i].slot);
    vx_lsetn(links, (uint32_t)n);
}

/* Add a link from node to newcomer at level l (distance d); when the list
** is full, the heuristic chooses among the old links and the newcomer.
**
** Under inner product the newcomer instead replaces the farthest link, if
** it is closer. The heuristic is made for metric spaces: in an IP list it
** keeps the few links that larger norms do not dominate, so one full list
** re-chosen could shed most of its links, and the nodes that only those
** links reached (answers, once the nodes beyond them are removed) had no
** way in. Keeping the closest, as ip-NSW keeps all its links, costs the
** own lists nothing: they are still chosen by the heuristic (choosing
** them by distance too gave recall@10 0.5-0.7 on clustered 16-d data).
** Measured on 100k x 128 (fresh build, ef 16 / 32 / 64): recall@10 0.9734
** / 0.9853 / 0.9906 against 0.9649 / 0.9806 / 0.9888, at the same speed;
** on the churn test's data (17 seeds), churned graphs at most 0.005
** below a fresh build against 0.0205 before. */
static void vx_hnsw_link_back(vecidx *ix, vx_cand *tmp, float *buf,
                              uint32_t node, uint32_t newcomer, float d, int l)
{
    uint32_t *links = vx_hnsw_links(ix, node, l);
    uint32_t cap = l ? ix->hnsw.m : ix->hnsw.m0, n, i, far = 0;
    vx_query qn;
    vx_hnsw_lock(ix, node);
    if (l == 0) vx_snap_touch(ix, node);
    n = vx_lcount(links);
    for (i = 0; i < n && vx_lget(links, i) != newcomer; i++) continue;
    if (i < n) {
        vx_hnsw_unlock(ix, node);
        return;
    }
    if (n < cap) {
        vx_lput(links, n, newcomer);
        vx_lsetn(links, n + 1);
        vx_hnsw_unlock(ix, node);
        return;
    }
    qn = vx_node_query(ix, node, buf);
    for (i = 0; i < n; i++) {
        tmp[i].slot = vx_lget(links, i);
        tmp[i].d = vx_qdist(ix, &qn, tmp[i].slot);
        if (tmp[i].d > tmp[far].d) far = i;
    }
    if (ix->p.metric == VECIDX_IP) {
        if (d < tmp[far].d) vx_lput(links, far, newcomer);
    } else {
        tmp[n].slot = newcomer;
        tmp[n].d = d;
        qsort(tmp, n + 1, sizeof *tmp, vx_cand_cmp);
        vx_hnsw_set_links(ix, node, l, tmp,
                          vx_hnsw_select(ix, tmp, n + 1, cap, 0, buf));
    }
    vx_hnsw_unlock(ix, node);
}

/* Choose neighbours for slot at level l by a search that starts at cur,
** into s->sel (closest first), and if `own` make them its own list.
** Returns how many. */
static size_t vx_hnsw_choose(vecidx *ix, vx_hnsw_scratch *s, uint32_t slot,
                             const vx_query *q, vx_cand cur, int l, int own)
{
    size_t n, i, cap = l ? ix->hnsw.m : ix->hnsw.m0;
    vx_hnsw_layer(ix, s, q, cur, l, ix->p.hnsw_ef_construction, NULL, SIZE_MAX);
    for (i = n = 0; i < s->nres; i++) /* a parallel peer may link us */
        if (s->res[i].slot != slot) s->sel[n++] = s->res[i];
    qsort(s->sel, n, sizeof *s->sel, vx_cand_cmp);
    n = vx_hnsw_select(ix, s->sel, n, cap, 0, s->qpass);
    if (own) {
        vx_hnsw_lock(ix, slot);
        vx_hnsw_set_links(ix, slot, l, s->sel, n);
        vx_hnsw_unlock(ix, slot);
    }
    return n;
}

/* Offer slot to the lists at level l of the n neighbours in nb; tmp has
** room for a full list and one more (vx_hnsw_link_back), buf for a node
** query (vx_node_query). */
static void vx_hnsw_link_all(vecidx *ix, vx_cand *tmp, float *buf,
                             const vx_cand *nb, size_t n, uint32_t slot, int l)
{
    size_t i;
    for (i = 0; i < n; i++)
        vx_hnsw_link_back(ix, tmp, buf, nb[i].slot, slot, nb[i].d, l);
}

/* vx_hnsw_choose, then slot offered to the chosen. */
static void vx_hnsw_connect(vecidx *ix, vx_hnsw_scratch *s, uint32_t slot,
                            const vx_query *q, vx_cand cur, int l, int own)
{
    size_t n = vx_hnsw_choose(ix, s, slot, q, cur, l, own);
    vx_hnsw_link_all(ix, s->sel + n, s->qpass, s->sel, n, slot, l);
}

/* Link a stored node (vector, level and empty lists already in place)
** into the graph. Cannot fail: all memory was reserved beforehand; if a
** frontier could not grow, the node is linked from what was found.
** Its neighbours above level 0 get their links to it only once its own
** lists are all set: linked at level 1 while its level-0 list was still
** empty, it could end a search's descent there, and the walk of level 0
** then found it alone and fell back to scanning the whole index (2-4
** searches in 15 s beside 2,000 inserts/s on 100k x 128, 5-7 ms each).
** A search at level l reads only lists at level l, so offers made there
** after the levels below are linked change nothing those searches read:
** one thread still builds the same graph. */
static void vx_hnsw_insert(vecidx *ix, vx_hnsw_scratch *s, uint32_t slot)
{
    vx_hnsw *h = &ix->hnsw;
    int level = vx_hnsw_level(ix, slot), maxl, l, low;
    vx_query q = vx_node_query(ix, slot, s->qnode);
    vx_cand cur;
    size_t n, nup = 0, cnt[VX_HNSW_MAX_LEVEL + 1];
    if (h->locking) pthread_mutex_lock(&h->entry_lock);
    cur.slot = vx_hnsw_top(h, &maxl);
    if (cur.slot == VX_NOSLOT) vx_hnsw_set_top(h, slot, level);
    if (h->locking) pthread_mutex_unlock(&h->entry_lock);
    if (cur.slot == VX_NOSLOT) return;
    cur.d = vx_qdist(ix, &q, cur.slot);
    for (l = maxl; l > level; l--)
        vx_hnsw_greedy(ix, s, &q, &cur.slot, &cur.d, l);
    low = level < maxl ? level : maxl;
    for (l = low; l > 0; l--) { /* choices kept for the offers below */
        n = vx_hnsw_choose(ix, s, slot, &q, cur, l, 1);
        memcpy(s->up + nup, s->sel, n * sizeof *s->up);
        nup += cnt[l] = n;
        if (n) cur = s->sel[0];
    }
    vx_hnsw_connect(ix, s, slot, &q, cur, 0, 1);
    for (l = low, nup = 0; l > 0; nup += cnt[l--])
        vx_hnsw_link_all(ix, s->sel, s->qpass, s->up + nup, cnt[l], slot, l);
    if (level > maxl) {
        int top;
        if (h->locking) pthread_mutex_lock(&h->entry_lock);
        (void)vx_hnsw_top(h, &top);
        if (level > top) vx_hnsw_set_top(h, slot, level);
        if (h->locking) pthread_mutex_unlock(&h->entry_lock);
    }
}

static uint64_t vx_splitmix(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Level of the next node from the index's own seeded generator, so one
** thread, the same seed and the same inputs give the same graph. */
static int vx_hnsw_draw_level(vx_hnsw *h)
{
    double u = ((double)(vx_splitmix(&h->rng) >> 11) + 1.0) * 0x1.0p-53;
    double l = -log(u) * h->level_mult;
    return l >= VX_HNSW_MAX_LEVEL ? VX_HNSW_MAX_LEVEL : (int)l;
}

/* Room in the arena for n more nodes drawn from the generator as it is
** now: the draws are replayed on a copy of its state, so the reservation
** matches the levels vx_hnsw_place will hand out. */
static int vx_hnsw_reserve(vecidx *ix, size_t n)
{
    vx_hnsw *h = &ix->hnsw;
    uint64_t rng = h->rng;
    size_t words = 0, i, need, bytes;
    vx_retired *node;
    void *p = NULL;
    for (i = 0; i < n; i++) {
        int lv = vx_hnsw_draw_level(h);
        if (lv) words += vx_hnsw_block_words(h, lv);
    }
    h->rng = rng;
    need = h->arena_n + words;
    if (need > UINT32_MAX) return VECIDX_EFULL;
    if (need <= h->arena_cap) return VECIDX_OK;
    if (need < 2 * h->arena_cap) need = 2 * h->arena_cap;
    if (need > UINT32_MAX) need = UINT32_MAX;
    bytes = need * sizeof *h->arena;
    /* Copied, not reallocated: searches may be reading the old arena,
    ** which is retired until they end. */
    node = vx_malloc(&ix->mem, sizeof *node);
    if (!node || !(p = vx_malloc(&ix->mem, bytes))) {
        vx_free(&ix->mem, node, sizeof *node);
        return VECIDX_ENOMEM;
    }
    if (h->arena) {
        memcpy(p, h->arena, h->arena_n * sizeof *h->arena);
        vx_ebr_retire(&ix->ebr, node, h->arena, h->arena_cap * sizeof *h->arena,
                      vx_ebr_advance(&ix->ebr));
    } else {
        vx_free(&ix->mem, node, sizeof *node);
    }
    VX_STORE(&h->arena, (uint32_t *)p);
    h->arena_cap = need;
    return VECIDX_OK;
}

/* Give a freshly stored slot its level and empty link lists. */
static void vx_hnsw_place(vecidx *ix, uint32_t slot)
{
    vx_hnsw *h = &ix->hnsw;
    vx_chunk *c = VX_SLOT_CHUNK(&ix->store, slot);
    uint32_t i = VX_SLOT_INDEX(&ix->store, slot), off = 0;
    int lv = vx_hnsw_draw_level(h), l;
    if (lv) {
        off = h->arena_free[lv];
        if (off)
            h->arena_free[lv] = h->arena[off];
        else {
            off = (uint32_t)h->arena_n;
            VX_STORE(&h->arena_n, h->arena_n + vx_hnsw_block_words(h, lv));
        }
        for (l = 0; l < lv; l++)
            vx_lsetn(h->arena + off + (size_t)l * (1 + h->m), 0);
    }
    c->level[i] = (uint8_t)lv;
    c->upper[i] = off;
    vx_lsetn(vx_hnsw_links(ix, slot, 0), 0);
}

/* Return a slot's upper blocks to the arena's free chains. */
static void vx_hnsw_unplace(vecidx *ix, uint32_t slot)
{
    vx_hnsw *h = &ix->hnsw;
    vx_chunk *c = VX_SLOT_CHUNK(&ix->store, slot);
    uint32_t i = VX_SLOT_INDEX(&ix->store, slot);
    int lv = c->level[i];
    if (lv) {
        h->arena[c->upper[i]] = h->arena_free[lv];
        h->arena_free[lv] = c->upper[i];
    }
    c->level[i] = 0;
    c->upper[i] = 0;
}

/* Parallel linking of slots[begin..end) picked by an atomic counter. */
typedef struct vx_link_job {
    vecidx *ix;
    vx_hnsw_scratch *s;
    const uint32_t *slots;
    size_t n;
    atomic_size_t *next;
} vx_link_job;

static void *vx_hnsw_link_worker(void *arg)
{
    vx_link_job *j = arg;
    size_t i;
    while ((i = atomic_fetch_add(j->next, 1)) < j->n)
        vx_hnsw_insert(j->ix, j->s, j->slots[i]);
    return NULL;
}

/* Everything one write call needs to link n new nodes, obtained before
** the index changes so that linking itself cannot fail. */
typedef struct vx_hnsw_batch {
    vx_hnsw_scratch *s[64];
    unsigned nt;
    uint32_t *slots; /* slots of the new nodes, filled by the caller */
    size_t n;
    uint32_t one; /* slots storage for a single insert */
} vx_hnsw_batch;

static void vx_hnsw_batch_release(vecidx *ix, vx_hnsw_batch *b)
{
    unsigned t;
    for (t = 0; t < b->nt; t++) vx_scratch_put(ix, b->s[t]);
    if (b->slots != &b->one)
        vx_free(&ix->mem, b->slots, b->n * sizeof *b->slots);
    b->nt = 0;
    b->slots = NULL;
}

/* Keep the repair marks as long as the store's slot capacity; create them
** only if `create` (a node is about to be buried). */
static int vx_hnsw_mark_fit(vecidx *ix, int create)
{
    vx_hnsw *h = &ix->hnsw;
    size_t need = (size_t)ix->store.nchunks << ix->store.shift;
    void *p;
    if ((!h->mark && !create) || need <= h->mark_cap) return VECIDX_OK;
    if (!(p = vx_realloc(&ix->mem, h->mark, h->mark_cap, need)))
        return VECIDX_ENOMEM;
    memset((uint8_t *)p + h->mark_cap, 0, need - h->mark_cap);
    h->mark = p;
    h->mark_cap = need;
    return VECIDX_OK;
}

/* Reserve arena room, the slot list and worker scratch for n inserts; call
** after the store has room, since scratch is sized to its capacity. A
** worker whose scratch cannot be had is simply not started. */
static int vx_hnsw_batch_begin(vecidx *ix, size_t n, unsigned threads,
                               vx_hnsw_batch *b)
{
    int rc;
    b->nt = 0;
    b->n = n;
    b->slots = &b->one;
    if ((rc = vx_hnsw_reserve(ix, n)) != VECIDX_OK) return rc;
    if (n > 1 && !(b->slots = vx_malloc(&ix->mem, n * sizeof *b->slots))) {
        b->slots = &b->one;
        return VECIDX_ENOMEM;
    }
    if (threads > 64) threads = 64;
    if (n < 256 || threads == 0) threads = 1; /* not worth the threads */
    /* inserts also keep their choices above level 0 (vx_hnsw_insert) */
    while (b->nt < threads &&
           vx_scratch_get(ix, ix->p.hnsw_ef_construction, &b->s[b->nt]) == 0) {
        vx_hnsw_scratch *s = b->s[b->nt];
        if (vx_grow(&ix->mem, (void **)&s->up, &s->up_cap,
                    (size_t)VX_HNSW_MAX_LEVEL * ix->hnsw.m, sizeof *s->up)) {
            vx_scratch_put(ix, s);
            break;
        }
        b->nt++;
    }
    if (b->nt == 0) {
        vx_hnsw_batch_release(ix, b);
        return VECIDX_ENOMEM;
    }
    return VECIDX_OK;
}

/* Link the batch's stored nodes slots[from, to) into the graph. */
static void vx_hnsw_batch_link(vecidx *ix, vx_hnsw_batch *b, size_t from,
                               size_t to)
{
    vx_link_job jobs[64];
    vx_task tasks[64];
    atomic_size_t next;
    unsigned t;
    atomic_init(&next, 0);
    ix->hnsw.locking = b->nt > 1;
    for (t = 0; t < b->nt; t++) {
        b->s[t]->writer = 1;
        jobs[t].ix = ix;
        jobs[t].s = b->s[t];
        jobs[t].slots = b->slots + from;
        jobs[t].n = to - from;
        jobs[t].next = &next;
        tasks[t].fn = vx_hnsw_link_worker;
        tasks[t].arg = &jobs[t];
    }
    vx_run_parallel(tasks, b->nt);
    ix->hnsw.locking = 0;
}

/* ---- searching ----------------------------------------------------------- */

/* Cost of a walk's visit in the units of VX_COST_KEYED. The scan of
** allowed keys requests its map cells and vectors a dozen keys ahead; a
** walk cannot know its next nodes that early. Measured at 128
** dimensions: 31 ns a visit (as the walk's estimate counts them) against
** 21 ns a key scanned on 100k, 77 against 36 ns on 1M. */
#define VX_COST_VISIT 2.0

/* Expected cost of a filtered HNSW walk of breadth ef at level 0 (see
** VX_COST_KEYED). An unfiltered walk scores about ef * M0 / 2 nodes
** (measured: 700-900 at ef 32, M 16, on 100k and 1M x 128); one that
** passes through rejected nodes must score about 1/frac as many to
** collect ef admitted ones.
** A two-hop walk, which looks through rejected nodes to their admitted
** neighbours instead of scoring them (ACORN-1, Weaviate), was measured
** and left out: on 1M x 128 at ef 64 it ran 1.2-1.7x faster on random
** sets of 5-20 %, but its recall@10 fell to 0.93-0.94 on sets that lie
** away from the query (0.90 on 10k x 24 int8), against 0.99 passing
** through, which is no slower on those sets. */
static double vx_hnsw_walk_cost(const vecidx *ix, size_t ef, double frac)
{
    double base = (double)ef * ix->hnsw.m0 / 2 * VX_COST_VISIT;
    return base / (frac > 1e-9 ? frac : 1e-9);
}

/* Admitted results a filtered walk keeps first: ef * sqrt(frac), at least
** kr. Passing through rejected nodes, a walk that keeps E admitted
** results scores about as many nodes as an unfiltered walk of breadth
** E / frac, so keeping all ef explored 1/frac times the unfiltered
** walk's ground and found the filtered top 10 with recall 1.000 where
** the unfiltered search had 0.99. Measured on 1M x 128 at ef 64, random
** sets: the square root ran 2.2x (10 %), 3.5x (5 %) and 2.3x (2 %)
** faster, recall@10 0.999 / 0.998 / 0.994; keeping ef * frac lost more
** recall than it gained speed. On sets far from the query it lost
** recall (0.958 at 10 %), which vx_hnsw_filter_skewed catches. */
static size_t vx_hnsw_filter_ef(size_t ef, size_t kr, double frac)
{
    double e = ceil((double)ef * sqrt(frac));
    return e <= (double)kr ? kr : e >= (double)ef ? ef : (size_t)e;
}

/* Admitted share of the nodes a walk asked about, as a fraction of the
** set's share of the index, below which the set is taken to lie away
** from the query. */
#define VX_FILTER_SKEW 0.5

/* After a narrow filtered walk (vx_hnsw_filter_ef): is the set's share
** near the query too far from its share of the index for the narrow
** breadth to be trusted? A walk keeping E admitted results where a share
** `local` of the nodes passes explores about E / local nodes' worth:
** at least ef's, as intended, only while local <= sqrt(frac). A set
** crowded around the query (local above that) lets it stop too soon;
** on a set lying away from the query (local far below frac) the few
** admitted nodes found are on its near edge. Either way the walk is
** made again at breadth ef. Measured on 200k x 384 cosine, sets far
** along a fixed direction: queries inside the set lost up to a quarter
** of their recall@10 at 20 % admitted without the second test. */
static int vx_hnsw_filter_skewed(const vx_hnsw_scratch *s, double frac)
{
    double local = (double)s->admitted / (double)(s->asked ? s->asked : 1);
    return local < VX_FILTER_SKEW * frac || local > sqrt(frac);
}

/* When a search may walk from inside a set lying away (vx_hnsw_far):
** the drawing, walking and checking must fit its budget with room to
** spare, else they cost their share and the scan answers anyway. The
** check costs what the rejected nodes closer to the query than the set
** cost, which no count predicts, so these bounds are measured:
** - at least VX_SEED_FRAC admitted. On 1M x 128 at 5 % the walk cost more
**   than the scan in most searches: 0.015x the unfiltered speed, against
**   0.023x for the early test and the scan; at 10 % 0.030x against 0.009x.
** - a budget of at least VX_SEED_ROOM visits and VX_SEED_WALKS unfiltered
**   walks (ef * M0 / 2 visits each). On 50k x 16-64 clustered points at
**   8-12 % admitted (budgets of 2,000-3,000 visits) nearly every such
**   search went on to the scan: 1.4-1.8x the distances of the scan alone.
** - not under inner product: its graph is sparse (see
**   vx_hnsw_repair_node), and both walks lost half the recall (0.51-0.71
**   on 50k x 16-64 at 10-50 %, against 0.97-0.98 scanning). */
#define VX_SEED_FRAC 0.08
#define VX_SEED_ROOM 4096
#define VX_SEED_WALKS 8

/* How an HNSW search for k results goes: walk width ef for kr results
** (k * refine with kept vectors); with a filter, first width efw, at most
** budget visits, watching for a set away from the query (far). */
typedef struct vx_hnsw_how {
    size_t ef, efw, kr, budget;
    double frac; /* fraction admitted */
    int far;     /* make the early test for a set lying away ... */
    int inside;  /* ... and if it fails, walk from inside the set */
    int scan;    /* the exact scan answers from the start ... */
    int keyed;   /* ... by the allowed keys */
} vx_hnsw_how;

static void vx_hnsw_plan(vecidx *ix, const vecidx_search_opts *o, size_t k,
                         vx_hnsw_how *p)
{
    size_t n;
    double walk, scan, low;
    memset(p, 0, sizeof *p);
    p->ef = o && o->ef ? o->ef : VX_PEEK(&ix->p.hnsw_ef_search);
    p->kr = ix->store.keep ? vx_refine_k(ix, o, k) : k;
    if (p->ef < p->kr) p->ef = p->kr;
    p->efw = p->ef;
    p->budget = SIZE_MAX;
    p->frac = 1.0;
    if (!vx_allow_of(o)) return;
    n = vx_count(ix);
    p->frac = vx_allow_frac(o, n);
    p->efw = vx_hnsw_filter_ef(p->ef, p->kr, p->frac);
    walk = vx_hnsw_walk_cost(ix, p->efw, p->frac);
    scan = vx_store_scan_cost(o, n, &p->keyed);
    /* A walk must pay at the low end of a count sampled from a handful
    ** (card_low): a walk that fails pays its budget, then the scan. */
    low = vx_allow_of(o)->card_low / (double)(n ? n : 1);
    p->scan = scan <= walk;
    if (low < p->frac && !p->scan)
        p->scan = scan <= vx_hnsw_walk_cost(
                              ix, vx_hnsw_filter_ef(p->ef, p->kr, low), low);
    /* In visits: what the scan costs, but at least twice the walk's
    ** estimate, which walks over sets admitted at random reach near the
    ** crossover (giving up on them costs more than finishing). */
    p->budget = (size_t)((scan > 2 * walk ? scan : 2 * walk) / VX_COST_VISIT);
    p->inside = ix->p.metric != VECIDX_IP && p->frac >= VX_SEED_FRAC &&
                p->budget >= VX_SEED_ROOM &&
                (double)p->budget >=
                    VX_SEED_WALKS * (double)p->ef * ix->hnsw.m0 / 2;
    p->far = p->inside || scan < VX_FAR_RATIO * walk;
}

/* Sets lying away from the query. A search whose walk finds the set
** lying away (VX_FAR_MEET) walks from inside the set instead, as
** Weaviate's ACORN does with random entry points that pass the filter:
** it draws random slots until it has VX_SEEDS times the breadth in
** admitted ones, scores them, and walks from the best through admitted
** nodes only, looking through rejected ones to their neighbours
** (vx_hnsw_inside). Seeds drawn over the whole set start the walk in
** each part of it near the query; one entry point settled in the first
** part it met (72b580c, reverted: recall@10 under 0.5 for a sixth of
** such searches on clustered data).
**
** The query lies outside the set, so that walk is greedy toward a point
** it cannot reach, and it misses small parts of the set next to the
** query, such as the slice of the query's own cluster that the set cuts
** off: alone it kept recall@10 0.87-0.98 on 60k x 16 clustered points at
** 25-35 % admitted, and 0.96 / 0.93 / 0.87 on 1M x 128 at 50 / 25 / 10 %.
** So a check walk follows. It starts from the query's entry point (and
** from the results), through rejected nodes as the plain walk does, but
** bounded from the start by the 2 kr best results: it scores only nodes
** closer than those, where the plain walk, with no results to bound it
** until it had found ef admitted nodes, scored every node on its way.
** It stops after VX_CHECK times the inside walk's visits, keeping what
** it found; past the budget the scan answers. */

/* Admitted seeds drawn per unit of the inside walk's breadth, which is
** VX_INSIDE_EF times the search's. Measured on 1M x 128 at ef 64, far
** sets of 50 / 25 / 10 %: these two at 2 ran 0.135 / 0.065 / 0.030x the
** unfiltered search, recall@10 0.986 / 0.978 / 0.965; 4 seeds, 0.136 /
** 0.060 / 0.023x and 0.985 / 0.979 / 0.976. A breadth of 1 lost up to
** 0.03 of recall on 100k x 16 clustered points. */
#define VX_SEEDS 2
#define VX_INSIDE_EF 2
/* Draws at most, per seed wanted, times 1 / the planned share. */
#define VX_SEED_DRAWS 4.0
/* The check walk's visits at most, times the inside walk's: at 4, 10 %
** of 1M ran 0.045x and kept recall@10 0.9505; unbounded, 0.018x and
** 0.979. */
#define VX_CHECK 8
/* The check's breadth, times kr: its bound is the (2 kr)-th best result.
** Against kr, on 1M x 128 at 50 / 25 / 10 %: recall@10 +0.003-0.005,
** speed 0.91 / 1.00 / 0.90x; on 50k x 16-64 with M 8, +0.005-0.025 at
** ef 16-64 for 5-15 % more distances. */
#define VX_CHECK_WIDTH 2

/* Up to want admitted live slots drawn at random into s->ids (from
** *got, marked visited), at most `draws` draws, stopping early when
** their share falls under VX_FAR_SHARE of the planned `frac`; returns
** the draws made. Slots below the visit marks' cover only: those exist,
** and a live one has its key and vector published. */
static size_t vx_hnsw_far_draw(vecidx *ix, vx_hnsw_scratch *s,
                               const vecidx_search_opts *o, double frac,
                               size_t want, size_t draws, uint64_t x,
                               size_t *got)
{
    const vx_store *st = &ix->store;
    size_t tried, j, got0 = *got;
    for (tried = 0; tried < draws && *got < want; tried += 16) {
        uint32_t b[16];
        if (tried >= 256 &&
            (double)(*got - got0) < VX_FAR_SHARE * frac * (double)tried)
            break;
        for (j = 0; j < 16; j++) { /* xorshift64 */
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            b[j] = (uint32_t)(x % s->visit_cap);
            vx_store_live_ahead(st, b[j]);
            vx_store_key_ahead(st, b[j]);
        }
        for (j = 0; j < 16 && *got < want; j++) {
            if (s->visit[b[j]] == s->epoch ||
                vx_store_live(st, b[j]) != VX_LIVE)
                continue;
            s->visit[b[j]] = s->epoch;
            if (vx_hnsw_admit(ix, s, b[j], o)) s->ids[(*got)++] = b[j];
        }
    }
    return tried;
}

/* The walk inside the set, breadth ef, into s->res: draws seeds (the
** first walk's admitted results among them), scores them, walks. Returns
** -1 when the draws found the set much smaller than planned, else
** whether it kept within budget. */
static int vx_hnsw_far_walk(vecidx *ix, vx_hnsw_scratch *s, const vx_query *q,
                            size_t ef, const vecidx_search_opts *o, double frac,
                            size_t budget, uint64_t seed)
{
    size_t want = VX_SEEDS * ef, got = 0, i, nprev = 0, draws;
    size_t bytes = (size_t)ix->store.cw * sizeof(float);
    uint32_t prev[64];
    if (want > s->ids_cap) want = s->ids_cap;
    /* the share of slots, not of live keys, is what a draw meets */
    frac *= (double)vx_count(ix) / (double)s->visit_cap;
    draws = (size_t)(VX_SEED_DRAWS * (double)want / frac);
    for (i = 0; i < s->nres && nprev < 64; i++) prev[nprev++] = s->res[i].slot;
    if (vx_grow(&ix->mem, (void **)&s->res, &s->res_cap, ef + 1,
                sizeof *s->res) != VECIDX_OK) {
        s->oom = 1;
        return 0;
    }
    vx_hnsw_walk_begin(ix, s);
    for (i = 0; i < nprev; i++) {
        s->visit[prev[i]] = s->epoch;
        s->ids[got++] = prev[i];
    }
    /* a draw costs about half a visit: two random loads, no scoring */
    s->visited +=
        vx_hnsw_far_draw(ix, s, o, frac, want, draws, seed | 1, &got) / 2;
    if (got < want / 2) return -1;
    /* scored as the walk scores (codes, not kept vectors), requested
    ** ahead as a scan of allowed keys requests them */
    for (i = 0; i < got && i < VX_ALLOW_AHEAD; i++)
        vx_allow_prefetch(vx_store_vec(&ix->store, s->ids[i]), bytes);
    for (i = 0; i < got; i++) {
        vx_cand c;
        if (i + VX_ALLOW_AHEAD < got)
            vx_allow_prefetch(
                vx_store_vec(&ix->store, s->ids[i + VX_ALLOW_AHEAD]), bytes);
        c.slot = s->ids[i];
        c.d = vx_qdist(ix, q, c.slot);
        if (VX_UNLIKELY(c.d != c.d)) c.d = INFINITY;
        vx_hnsw_offer(ix, s, c, 0, ef, NULL);
    }
    s->visited += got;
    vx_hnsw_run(ix, s, q, 0, ef, o, budget, 1);
    return s->visited <= budget;
}

/* The check walk (see above): the VX_CHECK_WIDTH * kr best results bound
** it, and it walks from them and from the query's entry point ep. Returns
** whether it kept within budget; stopped at VX_CHECK times the visits so
** far, it keeps what it has. */
static int vx_hnsw_far_check(vecidx *ix, vx_hnsw_scratch *s, const vx_query *q,
                             vx_cand ep, size_t kr, const vecidx_search_opts *o,
                             size_t budget)
{
    size_t spent = s->visited, a, b, cap = budget - spent;
    int capped = VX_CHECK * spent < cap;
    /* the VX_CHECK_WIDTH * kr best, sorted, then reversed: worst first,
    ** which is a max-heap as it stands */
    qsort(s->res, s->nres, sizeof *s->res, vx_cand_cmp);
    if (s->nres > VX_CHECK_WIDTH * kr) s->nres = VX_CHECK_WIDTH * kr;
    for (a = 0, b = s->nres; a + 1 < b; a++, b--) {
        vx_cand t = s->res[a];
        s->res[a] = s->res[b - 1];
        s->res[b - 1] = t;
    }
    vx_scratch_new_visit(s);
    s->ncand = 0;
    for (a = 0; a < s->nres; a++) {
        s->visit[s->res[a].slot] = s->epoch;
        vx_frontier_push(ix, s, s->res[a]);
    }
    if (s->visit[ep.slot] != s->epoch) {
        s->visit[ep.slot] = s->epoch;
        vx_frontier_push(ix, s, ep);
    }
    if (capped) cap = VX_CHECK * spent;
    vx_hnsw_run(ix, s, q, 0, VX_CHECK_WIDTH * kr, o, cap, 0);
    if (capped && s->visited > cap) s->visited = cap;
    s->visited += spent;
    return s->visited <= budget;
}

/* After the first walk found the set lying away (s->far): the walk from
** inside and its check, or, when the draws found the set much smaller
** than planned (a filter_selectivity too high), the plain walk through
** rejected nodes. Returns whether the results stand; if not, the scan
** answers. s->visited counts the first walk's visits too, as `budget`
** does. */
static int vx_hnsw_far(vecidx *ix, vx_hnsw_scratch *s, const vx_query *q,
                       const vx_hnsw_how *how, vx_cand ep,
                       const vecidx_search_opts *o, size_t budget)
{
    size_t spent = s->visited, left = budget - spent;
    uint32_t bits;
    int r;
    if (!how->inside) return 0;
    memcpy(&bits, &ep.d, sizeof bits); /* the same query draws the same */
    r = vx_hnsw_far_walk(ix, s, q, VX_INSIDE_EF * how->ef, o, how->frac, left,
                         vx_hash64((uint64_t)ep.slot << 32 | bits));
    if (r > 0) r = vx_hnsw_far_check(ix, s, q, ep, how->kr, o, left);
    s->visited += spent;
    if (r < 0 && s->visited <= budget) {
        spent = s->visited;
        vx_hnsw_layer(ix, s, q, ep, 0, how->ef, o, budget - spent);
        s->visited += spent;
        r = s->visited <= budget;
    }
    return r > 0;
}

/* Top-k of one query into h (sized min(k, count), ordered by user key).
** A filtered search plans (see vecidx_search in vecidx.h): an exact scan
** of the admitted vectors when it costs less than the walk is expected
** to, else the walk, with a budget of visits equal to the scan's cost.
** When the walk cannot fill h -- it ran out of budget, or the admitted
** nodes are not reachable from where it went -- the query falls back to
** the exact scan, so a filtered search returns k results whenever k
** admissible vectors exist. */
static int vx_hnsw_search(vecidx *ix, const vx_query *q, size_t k,
                          const vecidx_search_opts *o, vx_topk *h)
{
    vx_hnsw_scratch *s;
    size_t ef, budget, i, kr, efw;
    const vx_sopts *a = vx_allow_of(o);
    double frac;
    vx_hnsw_how how;
    vx_cand cur;
    int l, oom, aborted, maxlevel;
    /* The entry point first: the scratch, fitted after, then covers it. */
    cur.slot = vx_hnsw_top(&ix->hnsw, &maxlevel);
    if (cur.slot == VX_NOSLOT || h->k == 0) return VECIDX_OK;
    if (a && a->none) return VECIDX_OK;
    vx_hnsw_plan(ix, o, k, &how);
    if (how.scan) return vx_store_scan(ix, q, o, 0, h);
    ef = how.ef;
    efw = how.efw;
    kr = how.kr;
    budget = how.budget;
    frac = how.frac;
    if (vx_scratch_get(ix, ef, &s) != VECIDX_OK) return VECIDX_ENOMEM;
    s->far = 0;
    s->far_frac = frac;
    s->far_at = how.far ? (size_t)(VX_FAR_MEET / frac) : 0;
    if (s->far_at && s->far_at < efw) s->far_at = efw;
    cur.d = vx_qdist(ix, q, cur.slot);
    for (l = maxlevel; l > 0; l--)
        vx_hnsw_greedy(ix, s, q, &cur.slot, &cur.d, l);
    vx_hnsw_layer(ix, s, q, cur, 0, efw, o, budget);
    aborted = s->visited > budget || s->far;
    if (!aborted && efw < ef && vx_hnsw_filter_skewed(s, frac)) {
        /* The second walk gets what is left of the budget; when it would
        ** cost more than that (about ef / efw times the first), the
        ** scan answers now. */
        budget -= s->visited;
        aborted = (double)s->visited * (double)ef / (double)efw > budget;
        if (!aborted) {
            vx_hnsw_layer(ix, s, q, cur, 0, ef, o, budget);
            aborted = s->visited > budget || s->far;
        }
    }
    s->far_at = 0; /* the scratch goes back to the pool */
    if (s->far && s->visited <= budget)
        aborted = !vx_hnsw_far(ix, s, q, &how, cur, o, budget);
    vx_tally.dist += s->visited;
    vx_tally.visit += s->expanded;
    if (ix->store.keep && !aborted) { /* the kr best, re-scored exactly */
        qsort(s->res, s->nres, sizeof *s->res, vx_cand_cmp);
        if (s->nres > kr) s->nres = kr;
        vx_kept_rerank(ix, q, s->res, s->nres, h);
    } else if (!aborted) {
        /* Requested all at once: loaded in turn, each missed the cache
        ** while the last waited, 5 % of an int8 search's time on 1M x
        ** 128; requested, 1.04-1.05x the queries per second. */
        for (i = 0; i < s->nres; i++)
            vx_store_key_ahead(&ix->store, s->res[i].slot);
        for (i = 0; i < s->nres; i++) {
            uint64_t key = vx_store_key(&ix->store, s->res[i].slot);
            if (vx_topk_admits(h, s->res[i].d, key))
                vx_topk_push(h, s->res[i].d, key);
        }
    }
    oom = s->oom;
    vx_scratch_put(ix, s);
    if (oom) return VECIDX_ENOMEM;
    if (aborted || h->n < h->k) {
        h->n = 0;
        if (a) return vx_store_scan(ix, q, o, 0, h);
        if (ix->store.store != VECIDX_STORE_F32)
            return vx_flat_coded(ix, q, o, 0, h);
        vx_flat_search(ix, q, 1, o, 0, h);
    }
    return VECIDX_OK;
}

/* ---- repair after removals -----------------------------------------------
** A repair pass rewires every list that links to a removed node, then
** offers the nodes that lost their only ways in, then frees the removed
** nodes' slots. It runs in bounded steps, each made by a write on the
** writing thread, so neither writes nor searches ever wait for a whole
** pass: a pass over a million nodes is some thousands of steps of about a
** millisecond. When it starts, the buried nodes are doomed (VX_DOOMED);
** nodes removed while it runs wait for the next. Doomed nodes stay
** traversable until the pass retires them, and nothing ever links to one
** again once its neighbours are repaired: new links only go to live
** nodes. Steps are counted in work units, not time, so that the same
** calls give the same graph (and a reopened file resumes the same pass:
** the file keeps its state, see docs/FORMAT.md). */

/* Slack of the heuristic when repair chooses a list again. Plain HNSW
** selection (no slack) over and over on the same neighbourhoods drops the
** links that join regions: after five rounds of removing half of 20k
** clustered points and adding new ones, level 0 fell apart into pieces
** the walk could not leave (recall@10 0.91-0.95 against 0.99 fresh).
** Measured on that churn: slack 0.05 gave 0.97-0.99, 0.2 gave 0.997-0.9995
** with every node reachable again, 0.3 no better. Applies to squared L2
** and cosine distances, so 0.2 is about 1.1 in plain distance; inner
** product repairs differently (vx_hnsw_repair_node). */
#define VX_HNSW_REPAIR_SLACK 0.2f

/* Work units of a full step at 128 dimensions (fewer above, more below):
** a slot looked at costs 1, a list repaired VX_PASS_REPAIR_COST, a node
** linked back or offered VX_PASS_OFFER_COST. About 1.5 ms at 1M x 128;
** tests lower it to make passes span many writes. A pass ahead of its
** schedule takes steps of an eighth of that (vx_pass_work). */
#ifndef VX_PASS_STEP
#define VX_PASS_STEP 4096
#endif
#define VX_PASS_REPAIR_COST 128
#define VX_PASS_OFFER_COST 512

/* If y's level-l list links to nodes that are not live, choose its links
** again from its live neighbours and the live neighbours of the others:
** a removed node's own links are where the paths through it led. Returns
** 1 if the list was rewritten.
**
** Inner product keeps y's live links and adds new ones chosen, without
** slack, from the removed nodes' neighbours only; the pass's link-back
** phase then links them back. An IP graph is sparse (mean out-degree
** about 2.5 at level 0) and most of its links are such link-backs, which
** choosing a whole list again drops. On the churn test (five rounds of
** removing half of 20k clustered 16-d points and adding 10k), re-choosing
** left recall@10 up to 0.083 below a fresh build; keeping and linking
** back, with link-backs as vx_hnsw_link_back makes them, at most 0.005
** below (17 seeds; docs/DESIGN.md has the steps between).
** When mark is not NULL, mark[y] records where y's new level-0 links
** start, plus one (clamped at 255, so with M 128 a few kept links may be
** offered again, which does no harm). */
static int vx_hnsw_repair_node(vecidx *ix, vx_hnsw_scratch *s, uint32_t y,
                               int l, uint8_t *mark)
{
    const vx_store *st = &ix->store;
    uint32_t *links = vx_hnsw_links(ix, y, l);
    uint32_t n = vx_lcount(links), i, j, cap = l ? ix->hnsw.m : ix->hnsw.m0;
    size_t nc = 0, kept = 0, bound = 3 * (size_t)cap;
    size_t bytes = (size_t)st->cw * sizeof(float);
    int ip = ix->p.metric == VECIDX_IP, ask;
    vx_query qy;
    for (i = 0; i < n && vx_store_live(st, vx_lget(links, i)) == VX_LIVE; i++)
        continue;
    if (i == n) return 0;
    vx_scratch_new_visit(s);
    s->visit[y] = s->epoch;
    qy = vx_node_query(ix, y, s->qnode);
    /* Candidates are gathered, the codes they are scored by and the
    ** removed neighbours' lists requested, before any is scored, as a
    ** walk does: scored as found, each missed the cache in turn. On 100k
    ** x 128 float32 L2, a writer removing and adding in turn, the repair's
    ** steps took 2.42-2.55 s per 60,000 writes against 2.81-2.96 s; the
    ** graph is the same. Not for binary codes (scored by the kept float32
    ** vectors) nor IP's kept links (not scored). */
    ask = !qy.exact;
    for (i = 0; i < n; i++) {
        uint32_t z = vx_lget(links, i);
        if (vx_store_live(st, z) != VX_LIVE) {
            VX_PREFETCH(vx_hnsw_links(ix, z, l));
            continue;
        }
        s->visit[z] = s->epoch;
        s->sel[nc++].slot = z;
        if (ask && !ip) vx_hnsw_request(st, z, (uint32_t)nc, bytes);
    }
    if (ip) kept = nc;
    for (i = 0; i < n; i++) {
        uint32_t z = vx_lget(links, i);
        const uint32_t *zl = vx_hnsw_links(ix, z, l);
        uint32_t zn;
        if (vx_store_live(st, z) == VX_LIVE) continue;
        for (j = 0, zn = vx_lcount(zl); j < zn; j++) {
            uint32_t w = vx_lget(zl, j);
            if (vx_store_live(st, w) != VX_LIVE || s->visit[w] == s->epoch)
                continue;
            s->visit[w] = s->epoch;
            s->sel[nc++].slot = w;
            if (ask) vx_hnsw_request(st, w, (uint32_t)(nc - kept), bytes);
        }
    }
    /* IP: the distances of kept links are unused */
    for (i = 0; i < nc; i++)
        s->sel[i].d = i < kept ? 0.0f : vx_qdist(ix, &qy, s->sel[i].slot);
    /* The heuristic only needs the closest few; bound its quadratic cost. */
    qsort(s->sel + kept, nc - kept, sizeof *s->sel, vx_cand_cmp);
    if (nc - kept > bound) nc = kept + bound;
    nc = kept + vx_hnsw_select(ix, s->sel + kept, nc - kept, cap - kept,
                               ip ? 0.0f : VX_HNSW_REPAIR_SLACK, s->qpass);
    vx_hnsw_set_links(ix, y, l, s->sel, nc);
    if (mark && (l == 0 || !mark[y])) {
        /* Where y's new level-0 links start (none new if only an upper
        ** level was repaired); levels run upward, so 0 comes first. */
        size_t from = l ? vx_lcount(vx_hnsw_links(ix, y, 0)) : kept;
        mark[y] = (uint8_t)(1 + (from < 254 ? from : 254));
    }
    return 1;
}

/* A buried node removed after the pass began keeps its lists (searches
** still walk it) but loses its links to doomed nodes, which are about to
** be freed. */
static void vx_hnsw_drop_doomed(vecidx *ix, vx_hnsw_scratch *s, uint32_t y)
{
    int l;
    for (l = 0; l <= vx_hnsw_level(ix, y); l++) {
        const uint32_t *links = vx_hnsw_links(ix, y, l);
        uint32_t n = vx_lcount(links), i, m = 0;
        for (i = 0; i < n; i++) {
            s->sel[m].slot = vx_lget(links, i);
            if (vx_store_live(&ix->store, s->sel[m].slot) != VX_DOOMED) m++;
        }
        if (m < n) vx_hnsw_set_links(ix, y, l, s->sel, m);
    }
}

/* Inner product only: offer y, repaired by vx_hnsw_repair_node, to the
** nodes it newly links to at level 0 (from mark[y] - 1 on), and to all its
** links above, as an insert offers itself. Offering its kept links too
** gave the same recall and took 2.7x as long (100k x 128). A link-back
** into a full IP list replaces a link in place, so the start recorded in
** mark[] stays where it was. */
static void vx_hnsw_link_repaired(vecidx *ix, vx_hnsw_scratch *s, uint32_t y,
                                  uint8_t mark)
{
    vx_query qy = vx_node_query(ix, y, s->qnode);
    uint32_t i;
    int l;
    for (l = 0; l <= vx_hnsw_level(ix, y); l++) {
        const uint32_t *links = vx_hnsw_links(ix, y, l);
        for (i = l ? 0 : mark - 1u; i < vx_lcount(links); i++) {
            uint32_t z = vx_lget(links, i);
            vx_hnsw_link_back(ix, s->sel, s->qpass, z, y, vx_qdist(ix, &qy, z),
                              l);
        }
    }
}

/* Mark the nodes y links to at level l: bit 1 if y is live, bit 2 if it
** was removed (so a node with mark 2 is reached only through removed
** nodes). Retired nodes are gone already. */
static void vx_hnsw_mark_from(vecidx *ix, uint8_t *mark, uint32_t y, int l)
{
    int state = vx_store_live(&ix->store, y);
    const uint32_t *links;
    uint32_t i;
    if (state == VX_FREE || state == VX_RETIRED || vx_hnsw_level(ix, y) < l)
        return;
    links = vx_hnsw_links(ix, y, l);
    for (i = 0; i < vx_lcount(links); i++)
        mark[vx_lget(links, i)] |= state == VX_LIVE ? 1 : 2;
}

/* Walk from the entry point down to level l and offer y to the
** neighbours found there, keeping y's own list. */
static void vx_hnsw_offer_node(vecidx *ix, vx_hnsw_scratch *s, uint32_t y,
                               int l)
{
    vx_query q = vx_node_query(ix, y, s->qnode);
    vx_cand cur;
    int k, maxlevel;
    cur.slot = vx_hnsw_top(&ix->hnsw, &maxlevel);
    cur.d = vx_qdist(ix, &q, cur.slot);
    for (k = maxlevel; k > l; k--)
        vx_hnsw_greedy(ix, s, &q, &cur.slot, &cur.d, k);
    vx_hnsw_connect(ix, s, y, &q, cur, l, 0);
}

/* Histogram bucket of a squared norm: 16 per power of two, ascending. */
static int vx_norm_bucket(float n2)
{
    int e, b;
    float m;
    if (!(n2 > 0.0f)) return 0;
    m = frexpf(n2, &e); /* n2 = m * 2^e, m in [0.5, 1) */
    b = (e + 64) * 16 + (int)((m - 0.5f) * 32.0f);
    return b < 0 ? 0 : b >= VX_NORM_BUCKETS ? VX_NORM_BUCKETS - 1 : b;
}

static int vx_hnsw_norm_bucket(const vecidx *ix, uint32_t y)
{
    const vx_store *s = &ix->store;
    const float *v = s->keep ? vx_store_full(s, y) : vx_store_vec(s, y);
    if (s->store == VECIDX_STORE_I8 && !s->keep)
        return vx_norm_bucket(vx_i8_hdr(v, s->dim)->n2);
    if (s->store == VECIDX_STORE_F16 && !s->keep) {
        const uint16_t *c = (const uint16_t *)(const void *)v;
        return vx_norm_bucket(vx_qk.dot_hh(c, c, s->dim));
    }
    return vx_norm_bucket(ix->kern->dot(v, v, ix->p.dim));
}

/* When the entry point is no longer live, the node of the highest level
** that is live (or buried since the pass began, which the next pass
** handles) takes its place, so no node but a doomed one stands above the
** top. */
static void vx_pass_new_entry(vecidx *ix)
{
    const vx_store *st = &ix->store;
    uint32_t entry = vx_hnsw_top(&ix->hnsw, NULL), y, best = VX_NOSLOT;
    int top = -1; /* 2 * level, plus one for a live node */
    if (entry == VX_NOSLOT || vx_store_live(st, entry) == VX_LIVE) return;
    for (y = 0; y < st->nslots; y++) {
        int state = vx_store_live(st, y);
        int rank = 2 * vx_hnsw_level(ix, y) + (state == VX_LIVE);
        if ((state == VX_LIVE || state == VX_BURIED) && rank > top) {
            best = y;
            top = rank;
        }
    }
    vx_hnsw_set_top(&ix->hnsw, best, top < 0 ? -1 : top / 2);
}

/* Start a pass: the buried nodes are doomed. With no live node left there
** is nothing to repair, and the doomed are retired straight away. */
static void vx_pass_start(vecidx *ix)
{
    vx_pass *p = &ix->hnsw.pass;
    vx_store *st = &ix->store;
    uint32_t y;
    memset(p, 0, sizeof *p);
    for (y = 0; y < st->nslots; y++)
        if (vx_store_live(st, y) == VX_BURIED) {
            vx_snap_touch(ix, y);
            vx_store_set_state(st, y, VX_DOOMED);
            p->ndoomed++;
        }
    memset(ix->hnsw.mark, 0, st->nslots);
    p->end = st->nslots;
    p->phase = VX_PASS_REPAIR;
    if (st->count == 0) {
        vx_hnsw_set_top(&ix->hnsw, VX_NOSLOT, -1);
        p->phase = VX_PASS_RETIRE;
    }
}

/* Enter a phase that walks the slots from the start. */
static void vx_pass_phase(vecidx *ix, uint32_t phase)
{
    vx_pass *p = &ix->hnsw.pass;
    p->phase = phase;
    p->cursor = 0;
    p->end = ix->store.nslots;
    if (phase == VX_PASS_MARK) memset(ix->hnsw.mark, 0, p->end);
    if (phase == VX_PASS_IP_HIST) memset(p->hist, 0, sizeof p->hist);
}

/* The phase after the current one. */
static void vx_pass_next(vecidx *ix)
{
    vx_pass *p = &ix->hnsw.pass;
    int ip = ix->p.metric == VECIDX_IP, maxlevel;
    (void)vx_hnsw_top(&ix->hnsw, &maxlevel);
    switch (p->phase) {
    case VX_PASS_REPAIR:
        vx_pass_new_entry(ix);
        (void)vx_hnsw_top(&ix->hnsw, &maxlevel);
        p->level = maxlevel;
        if (ip) {
            vx_pass_phase(ix, VX_PASS_LINKBACK);
            break;
        }
        /* fall through */
    case VX_PASS_LINKBACK:
        p->level = maxlevel;
        vx_pass_phase(ix, maxlevel >= 0 ? VX_PASS_MARK : VX_PASS_RETIRE);
        break;
    case VX_PASS_MARK:
        vx_pass_phase(ix, p->ipround ? VX_PASS_IP_HIST : VX_PASS_OFFER);
        break;
    case VX_PASS_OFFER:
        if (p->level > 0) {
            p->level--;
            vx_pass_phase(ix, VX_PASS_MARK);
        } else if (ip && !p->ipround) {
            /* Marked afresh: offering orphans can push other nodes out
            ** of lists. */
            p->ipround = 1;
            vx_pass_phase(ix, VX_PASS_MARK);
        } else {
            vx_pass_phase(ix, VX_PASS_RETIRE);
        }
        break;
    case VX_PASS_IP_HIST: {
        /* Buckets above the threshold hold fewer than the budget, all
        ** taken; the threshold's bucket gives the rest, first in slot
        ** order. */
        uint32_t sum = 0, budget = p->ndoomed;
        int k, t = 0;
        for (k = VX_NORM_BUCKETS - 1; k >= 0 && sum < budget; k--) {
            sum += p->hist[k];
            t = k;
        }
        p->thresh = sum ? (uint32_t)t : VX_NORM_BUCKETS;
        p->at_t = budget - (sum - p->hist[t]);
        vx_pass_phase(ix, VX_PASS_IP_PICK);
        break;
    }
    case VX_PASS_IP_PICK:
        vx_pass_phase(ix, VX_PASS_IP_OFFER);
        break;
    case VX_PASS_IP_OFFER:
        vx_pass_phase(ix, VX_PASS_RETIRE);
        break;
    default:
        p->phase = VX_PASS_IDLE;
    }
}

/* Inner product only. Most nodes of an IP graph have no in-links at level
** 0 (the heuristic keeps few links when larger norms dominate), and a node
** that becomes an answer once the nodes beyond it are removed has no way
** in: after three rounds of removing half of 20k clustered 16-d points,
** recall@10 was 0.67-0.75 against 0.995 fresh, the walk reaching as few as
** 17 of 2,500 nodes. So each pass offers as many unreachable nodes as it
** frees, largest norms first (the likeliest answers), to neighbours found
** by a search, as an insert would. That scenario: 0.958 against 1.0 at
** the test's seed; with the other IP rules (vx_hnsw_link_back,
** vx_hnsw_repair_node) 0.993-1.0 over 17 seeds, as low as 0.953 without
** this step. The largest norms are found with a fixed histogram (phases
** IP_HIST, IP_PICK), so nothing is allocated; the chosen are marked 4. */
static long vx_pass_ip_slot(vecidx *ix, vx_hnsw_scratch *s, uint32_t y)
{
    vx_pass *p = &ix->hnsw.pass;
    uint8_t *mark = ix->hnsw.mark;
    int k, live = vx_store_live(&ix->store, y) == VX_LIVE;
    uint32_t entry = vx_hnsw_top(&ix->hnsw, NULL);
    if (p->phase == VX_PASS_IP_OFFER) {
        if (mark[y] != 4 || !live || y == entry) return 1;
        vx_hnsw_offer_node(ix, s, y, 0);
        return VX_PASS_OFFER_COST;
    }
    if (p->phase == VX_PASS_IP_HIST && (!live || y == entry))
        mark[y] = 1; /* never offered */
    if (mark[y] & 1) return 1;
    k = vx_hnsw_norm_bucket(ix, y);
    if (p->phase == VX_PASS_IP_HIST) {
        p->hist[k]++;
    } else if ((uint32_t)k > p->thresh ||
               ((uint32_t)k == p->thresh && p->at_t)) {
        p->at_t -= (uint32_t)k == p->thresh;
        mark[y] = 4;
    } else {
        mark[y] = 0;
    }
    return 4;
}

/* One slot of the current phase; returns the work it took. */
static long vx_pass_slot(vecidx *ix, vx_hnsw_scratch *s, uint32_t y)
{
    vx_pass *p = &ix->hnsw.pass;
    uint8_t *mark = ix->hnsw.mark;
    int state = vx_store_live(&ix->store, y), l, did = 0;
    switch (p->phase) {
    case VX_PASS_REPAIR:
        if (state == VX_BURIED) vx_hnsw_drop_doomed(ix, s, y);
        if (state != VX_LIVE) return 1;
        for (l = 0; l <= vx_hnsw_level(ix, y); l++)
            did |= vx_hnsw_repair_node(ix, s, y, l,
                                       ix->p.metric == VECIDX_IP ? mark : NULL);
        return did ? VX_PASS_REPAIR_COST : 1;
    case VX_PASS_LINKBACK:
        if (!mark[y] || state != VX_LIVE) return 1;
        vx_hnsw_link_repaired(ix, s, y, mark[y]);
        return VX_PASS_OFFER_COST;
    case VX_PASS_MARK:
        vx_hnsw_mark_from(ix, mark, y, p->level);
        return 1;
    case VX_PASS_OFFER:
        if (mark[y] != 2 || state != VX_LIVE ||
            y == vx_hnsw_top(&ix->hnsw, NULL))
            return 1;
        vx_hnsw_offer_node(ix, s, y, p->level);
        return VX_PASS_OFFER_COST;
    case VX_PASS_RETIRE:
        /* All at once (a byte per slot), so that no doomed node is left
        ** linking to one already freed. */
        for (y = 0; y < p->end; y++)
            if (vx_store_live(&ix->store, y) == VX_DOOMED) {
                vx_snap_touch(ix, y);
                vx_store_retire_buried(&ix->store, y);
            }
        p->ndoomed = 0;
        p->cursor = p->end;
        return 1;
    default:
        return vx_pass_ip_slot(ix, s, y);
    }
}

/* Buried nodes, as a share of the used slots, that make a pass due; a pass
** then paces itself to end before as many more are removed, so at most
** twice this (15 %) await repair at once; under about 850 slots, where a
** pass waits for 64 (vx_pass_due), 64 plus the share or plus 32, whichever
** is more. The 15 % was first split as a tenth to start and a twentieth to
** end in: split evenly, a writer of 4000 writes/s (half removals) on 100k
** x 128 fell behind its schedule by 9-106 ms at worst in a pass (median
** 16) against 31-289 ms (median 104), for about 1.25x the repair work
** (bench/RESULTS.md, 2026-12-07 session 3). */
static double vx_pass_share(const vx_store *st)
{
    return ((double)st->count + st->nburied) * 3 / 40;
}

/* Is a pass due? Once the share above is buried: often enough that
** memory stays bounded and walks rarely cross buried nodes, rarely
** enough that the linear pass costs O(1) per removal on average. Also
** once buried nodes outnumber live ones: the entry point may be buried
** with no live neighbour, and new nodes would find no links. */
static int vx_pass_due(const vecidx *ix)
{
    const vx_store *st = &ix->store;
    uint32_t waiting = st->nburied - ix->hnsw.pass.ndoomed;
    return (waiting >= 64 && waiting >= vx_pass_share(st)) ||
           (waiting && st->count < waiting);
}

/* Work units of a full step at this dimension (VX_PASS_STEP). */
static long vx_pass_full(const vecidx *ix)
{
    return (long)VX_PASS_STEP * 128 / (ix->p.dim > 32 ? (long)ix->p.dim : 32);
}

/* Work of the next step of a pass under way. A pass should end before the
** removals made since it began reach what makes the next one due
** (vx_pass_share); the fraction of the pass done (the rewiring is most of
** its work) is held against the fraction of that allowance used. A pass
** ahead of it takes small steps, so that a writer keeping a steady rate is
** not held back: with full steps only, a pass over 100k x 128 ran as some
** hundreds of writes of 0.3-1.8 ms at once, and a writer of 4000 writes/s
** fell 0.46 s behind its schedule at every pass. A pass behind takes full
** steps, and four of them once the next pass is due. Counts only, no
** clock: the same calls give the same graph. */
static long vx_pass_work(const vecidx *ix)
{
    const vx_pass *p = &ix->hnsw.pass;
    const vx_store *st = &ix->store;
    long full = vx_pass_full(ix);
    double share = vx_pass_share(st), allow = share > 32 ? share : 32;
    double spent = (double)(st->nburied - p->ndoomed) / allow, done = 0.9;
    if (vx_pass_due(ix)) return 4 * full;
    if (p->phase == VX_PASS_REPAIR && p->end)
        done = 0.8 * (double)p->cursor / (double)p->end;
    return done >= spent && full >= 8 ? full / 8 : full;
}

/* Advance the repair by one step, starting a pass if one is due; called by
** every add, upsert and remove of a graph. A step that cannot get its
** working memory is skipped: the next write tries again. */
static void vx_hnsw_maintain(vecidx *ix)
{
    vx_pass *p = &ix->hnsw.pass;
    vx_hnsw_scratch *s;
    long work;
    if (p->phase == VX_PASS_IDLE && !vx_pass_due(ix)) return;
    if (vx_hnsw_mark_fit(ix, 1) != VECIDX_OK ||
        vx_scratch_get(ix, ix->p.hnsw_ef_construction, &s) != VECIDX_OK)
        return;
    s->writer = 1;
    if (p->phase == VX_PASS_IDLE) {
        VX_COUNT(&ix->act.repairs, 1);
        vx_pass_start(ix);
        work = vx_pass_full(ix) - (long)(ix->store.nslots / 16);
    } else {
        work = vx_pass_work(ix);
    }
    while (p->phase != VX_PASS_IDLE && work > 0) {
        if (p->cursor >= p->end)
            vx_pass_next(ix);
        else
            work -= vx_pass_slot(ix, s, p->cursor++);
    }
    vx_scratch_put(ix, s);
}

/* ---- lifecycle and checks ------------------------------------------------ */

static int vx_hnsw_init(vecidx *ix)
{
    vx_hnsw *g = &ix->hnsw;
    unsigned i;
    memset(g, 0, sizeof *g);
    g->m = ix->p.hnsw_m;
    g->m0 = 2 * g->m;
    g->level_mult = 1.0 / log((double)g->m);
    g->rng = ix->p.seed;
    vx_hnsw_set_top(g, VX_NOSLOT, -1);
    g->arena_n = 1; /* offset 0 means "no upper levels" */
    for (i = 0; i < VX_HNSW_NLOCKS; i++) atomic_flag_clear(&g->locks[i]);
    if (pthread_mutex_init(&g->entry_lock, NULL) != 0) return VECIDX_ENOMEM;
    return VECIDX_OK;
}

static void vx_hnsw_destroy(vecidx *ix)
{
    vx_hnsw *g = &ix->hnsw;
    unsigned i;
    for (i = 0; i < VX_SCRATCH_CELLS; i++)
        if (g->cell[i]) vx_scratch_free(&ix->mem, g->cell[i]);
    vx_free(&ix->mem, g->arena, g->arena_cap * sizeof *g->arena);
    vx_free(&ix->mem, g->mark, g->mark_cap);
    pthread_mutex_destroy(&g->entry_lock);
}

/* Graph invariants; returns NULL or a description, *bad = node. Retired
** nodes (in the limbo) and doomed ones are checked too, but may stand
** above the top level when the entry point they held was replaced. */
static const char *vx_hnsw_check(vecidx *ix, int deep, uint32_t *bad)
{
    const vx_store *st = &ix->store;
    vx_hnsw *g = &ix->hnsw;
    uint32_t slot, i, j, entry, doomed = 0;
    int maxlevel;
    entry = vx_hnsw_top(g, &maxlevel);
    for (slot = 0; slot < st->nslots; slot++) {
        int lv, l, state = vx_store_live(st, slot);
        if (state == VX_FREE) continue;
        *bad = slot;
        if (state > VX_DOOMED) return "unknown slot state";
        doomed += state == VX_DOOMED;
        lv = vx_hnsw_level(ix, slot);
        if (lv > maxlevel && state != VX_RETIRED && state != VX_DOOMED)
            return "node level above the graph's top";
        if (lv && (VX_SLOT_CHUNK(st, slot)->upper[VX_SLOT_INDEX(st, slot)] +
                       vx_hnsw_block_words(g, lv) >
                   g->arena_n))
            return "upper links lie outside the arena";
        for (l = 0; l <= lv; l++) {
            const uint32_t *links = vx_hnsw_links(ix, slot, l);
            uint32_t n = vx_lcount(links);
            if (n > (l ? g->m : g->m0)) return "link list overflows";
            for (i = 0; i < n; i++) {
                uint32_t z = vx_lget(links, i);
                if (z >= st->nslots || z == slot)
                    return "link to itself "
                           "or out of range";
                if (vx_store_live(st, z) == VX_FREE)
                    return "link to a freed slot";
                if (state != VX_RETIRED && vx_store_live(st, z) == VX_RETIRED)
                    return "link to a retired slot";
                if (vx_hnsw_level(ix, z) < l)
                    return "link to a node below the list's level";
                for (j = 0; deep && j < i; j++)
                    if (vx_lget(links, j) == z) return "duplicate link";
            }
        }
    }
    *bad = VX_NOSLOT;
    if (doomed != g->pass.ndoomed)
        return "doomed nodes differ from the repair pass under way";
    *bad = entry;
    if (st->count + st->nburied == 0) {
        if (entry != VX_NOSLOT) return "empty graph has an entry point";
    } else if (entry >= st->nslots || vx_store_live(st, entry) == VX_FREE ||
               vx_store_live(st, entry) == VX_RETIRED ||
               vx_hnsw_level(ix, entry) != maxlevel) {
        return "entry point is not a top-level node";
    }
    *bad = VX_NOSLOT;
    return NULL;
}

/* ======================================================================
** 7. IVF-PQ
**
** A vector is assigned to the nearest of nlist coarse centroids (k-means)
** and kept in that centroid's list as a code: its residual (vector minus
** centroid) is cut into m slices, and each slice becomes the one-byte
** index of the nearest of 256 sub-centroids learnt for that slice. A
** search ranks the centroids, then scores every code of the nprobe best
** lists with a lookup table holding, per slice, the distance terms of the
** query slice against the 256 sub-centroids: m table reads and adds per
** vector, with the query kept exact (asymmetric distance).
**
** Under L2 the distance to c + r splits as |q-c|^2 + (|r|^2 + 2 c.r)
** - 2 q.r. The last term needs one table per query; the middle one
** depends on the list, and is computed when the list is probed (256 * dim
** multiply-adds) rather than stored: a table of every list's terms (as
** FAISS keeps) costs nlist * m * 1 KB, often more than the codes, and
** measured no faster, since reading it from memory takes as long as
** computing it. Inner product and cosine (vectors normalised) need only
** the per-query table plus q.c.
**
** Removal moves a list's last entry into the hole, so lists stay dense.
** The key map has one 64-bit cell per key: 12 bits of the key's hash, the
** list (20 bits) and the position (32 bits). A lookup confirms a match by
** reading the key from the list, so the map holds no copy of the keys.
**
** Until the index is trained its vectors live in the flat store (section
** 3) and are searched exactly; training moves them into the lists.
** ====================================================================== */

#define VX_IVF_KSUB 256u
#define VX_IVF_KMEANS_ITERS 20
#define VX_IVF_PQ_ITERS 25
#define VX_IVF_PER_CENTROID 256u /* k-means samples per centroid, at most */
#define VX_IVF_PQ_SAMPLES 65536u
#define VX_IVF_HNSW_NLIST 8192u
#define VX_IVF_EMPTY UINT64_MAX
#define VX_IVF_SCAN 256u /* codes scored per kernel call */

static inline uint32_t vx_ivf_off(const vecidx *ix, uint32_t j)
{
    return (uint32_t)((uint64_t)j * ix->p.dim / ix->ivf.m);
}

static inline uint32_t vx_ivf_len(const vecidx *ix, uint32_t j)
{
    return vx_ivf_off(ix, j + 1) - vx_ivf_off(ix, j);
}

static inline const float *vx_ivf_book(const vecidx *ix, uint32_t j)
{
    return ix->ivf.book + (size_t)VX_IVF_KSUB * vx_ivf_off(ix, j);
}

/* |x|^2 of a kept vector x. */
static double vx_ivf_sq_norm(const vecidx *ix, const float *x)
{
    /* |x|^2 in float underflows to 0 for short vectors (norm below
    ** about 1e-19) and overflows for long ones: then in double. */
    double xx = ix->kern->dot(x, x, ix->p.dim);
    return xx >= 1e-30 && xx <= 1e30 ? xx : vx_sumsq(x, ix->p.dim);
}

/* Normalise v into out for cosine; a plain copy pointer otherwise. */
static const float *vx_ivf_prep_vec(const vecidx *ix, const float *v,
                                    float *out)
{
    double n2;
    uint32_t i;
    if (ix->p.metric != VECIDX_COSINE) return v;
    n2 = vx_sumsq(v, ix->p.dim);
    for (i = 0; i < ix->p.dim; i++) out[i] = (float)(v[i] / sqrt(n2));
    return out;
}

/* ---- key map ---------------------------------------------------------- */

static inline uint64_t vx_ivf_cell(uint64_t h, uint32_t list, uint32_t pos)
{
    return (h >> 52) << 52 | (uint64_t)list << 32 | pos;
}

/* Multiply-shift maps the hash onto [0, cap) without a division; past
** 2^32 cells (billions of keys) the product would overflow, so a
** division takes over there. */
static inline size_t vx_ivf_home(uint64_t h, size_t cap)
{
    /* (cap >> 16) >> 16: cap >= 2^32, written so 32-bit size_t builds
    ** compile it without a warning (there it is always 0) */
    if ((cap >> 16) >> 16) return (size_t)((h >> 12) % cap);
    return (size_t)(((h & 0xFFFFFFFFu) * (uint64_t)cap) >> 32);
}

/* A cell is one word (list, position and a 12-bit tag of the key's hash)
** or, when the index keeps full vectors, two: that word, then the key
** itself (format version 7). The second word saves a lookup the load of
** the list's key, a miss of its own in no order: an exact scan of 1,000
** allowed keys of 100k x 128 spent 61 % of its lookups' time on it.
** Without kept vectors the key would add about a fifth to the memory an
** entry takes, with them a few percent. */
static inline uint64_t vx_ivf_cw(const vx_ivf *v, size_t i)
{
    return v->map[i * v->map_words];
}

static inline uint32_t vx_ivf_cl(uint64_t c)
{
    return (uint32_t)(c >> 32) & 0xFFFFFu;
}

static inline size_t vx_ivf_map_bytes(const vx_ivf *v)
{
    return v->map_cap * v->map_words * sizeof *v->map;
}

/* Whether cell word c names an entry of a list (verified on first read:
** a damaged one has none). */
static inline int vx_ivf_cell_ok(const vx_ivf *v, uint64_t c)
{
    uint32_t l = vx_ivf_cl(c);
    return l < v->nlist && (uint32_t)c < vx_ivf_list(v, l)->n;
}

/* Request the home cell of a key of hash h (the map not empty). */
static inline void vx_ivf_map_prefetch(const vx_ivf *v, uint64_t h)
{
    __builtin_prefetch(&v->map[vx_ivf_home(h, v->map_cap) * v->map_words]);
}

/* Two-word cells: the cell that holds key, its entry not checked yet (see
** vx_ivf_cell_ok), or SIZE_MAX. */
static inline size_t vx_ivf_map_probe(const vx_ivf *v, uint64_t key, uint64_t h)
{
    size_t i, n;
    if (v->map_cap == 0) return SIZE_MAX;
    for (i = vx_ivf_home(h, v->map_cap), n = 0; n < v->map_cap; n++) {
        uint64_t c = v->map[i * 2];
        if (c == VX_IVF_EMPTY) return SIZE_MAX;
        if ((c >> 52) == (h >> 52) && v->map[i * 2 + 1] == key) return i;
        if (++i == v->map_cap) i = 0;
    }
    return SIZE_MAX;
}

/* Cell index of key, or SIZE_MAX. Cells of a mapped file are bounded
** before use, and the probe stops after cap cells, so a damaged map can
** make a key unfindable but never make a lookup leave the index. */
static size_t vx_ivf_map_find(const vx_ivf *v, uint64_t key)
{
    uint64_t h = vx_hash64(key);
    size_t i, n;
    if (v->map_words == 2)
        return (i = vx_ivf_map_probe(v, key, h)) != SIZE_MAX &&
                       vx_ivf_cell_ok(v, vx_ivf_cw(v, i))
                   ? i
                   : SIZE_MAX;
    if (v->map_cap == 0) return SIZE_MAX;
    for (i = vx_ivf_home(h, v->map_cap), n = 0; n < v->map_cap; n++) {
        uint64_t c = v->map[i];
        uint32_t pos = (uint32_t)c;
        if (c == VX_IVF_EMPTY) return SIZE_MAX;
        if ((c >> 52) == (h >> 52) && vx_ivf_cell_ok(v, c) &&
            vx_ivf_list(v, vx_ivf_cl(c))->keys[pos] == key)
            return i;
        if (++i == v->map_cap) i = 0;
    }
    return SIZE_MAX;
}

/* The key of the occupied cell i. */
static uint64_t vx_ivf_map_key(const vx_ivf *v, size_t i)
{
    uint64_t c = vx_ivf_cw(v, i);
    if (v->map_words == 2) return v->map[i * 2 + 1];
    return vx_ivf_list(v, vx_ivf_cl(c))->keys[(uint32_t)c];
}

static void vx_ivf_map_put(vx_ivf *v, uint64_t key, uint32_t l, uint32_t pos)
{
    uint64_t h = vx_hash64(key);
    size_t i = vx_ivf_home(h, v->map_cap);
    while (vx_ivf_cw(v, i) != VX_IVF_EMPTY)
        if (++i == v->map_cap) i = 0;
    v->map[i * v->map_words] = vx_ivf_cell(h, l, pos);
    if (v->map_words == 2) v->map[i * 2 + 1] = key;
    v->map_n++;
}

/* Delete cell i by shifting later cells of the run back into the hole,
** so lookups never need tombstones. */
static void vx_ivf_map_del(vx_ivf *v, size_t i)
{
    size_t j = i, w = v->map_words;
    for (;;) {
        size_t home;
        if (++j == v->map_cap) j = 0;
        if (vx_ivf_cw(v, j) == VX_IVF_EMPTY) break;
        home = vx_ivf_home(vx_hash64(vx_ivf_map_key(v, j)), v->map_cap);
        /* j's cell may fill the hole unless its home lies in (i, j]. */
        if (i <= j ? (home <= i || home > j) : (home <= i && home > j)) {
            memcpy(&v->map[i * w], &v->map[j * w], w * sizeof *v->map);
            i = j;
        }
    }
    /* the key word too: a removed key leaves no trace in a saved file */
    memset(&v->map[i * w], 0xFF, w * sizeof *v->map);
    v->map_n--;
}

/* Room for `more` further keys at a load of at most 0.8; grows by 1.5x so
** the map costs 10 to 15 bytes per key (20 to 30 with kept vectors). A
** map keeps its cell width: one of an older file stays one word, so that
** the file stays readable by the libraries that wrote it. */
static int vx_ivf_map_reserve(vecidx *ix, size_t more)
{
    vx_ivf *v = &ix->ivf, t;
    size_t need = v->map_n + more, cap = v->map_cap, oldcap = v->map_cap, i;
    size_t bytes, oldbytes;
    int was, was_huge = v->map_huge, huge;
    uint64_t *old = v->map, *fresh;
    oldbytes = vx_ivf_map_bytes(v);
    if (cap && need <= cap / 5 * 4) return VECIDX_OK;
    while (cap / 5 * 4 < need) cap = cap < 64 ? 64 : cap + cap / 2;
    /* at most 2^33 cells (((cap - 1) >> 16) >> 17: cap > 2^33, valid
    ** with a 32-bit size_t too) */
    if (!vx_mul_ok(cap, v->map_words * sizeof *fresh, &bytes) ||
        ((cap - 1) >> 16) >> 17 ||
        !(fresh = vx_table_alloc(&ix->mem, bytes, &huge)))
        return VECIDX_ENOMEM;
    memset(fresh, 0xFF, bytes);
    /* Built aside, swapped in under the key-set lock: searches and
    ** lookups go on with the old map meanwhile. */
    t = *v;
    t.map = fresh;
    t.map_cap = cap;
    t.map_n = 0;
    for (i = 0; i < oldcap; i++) {
        uint64_t c = vx_ivf_cw(v, i);
        if (c != VX_IVF_EMPTY)
            vx_ivf_map_put(&t, vx_ivf_map_key(v, i), vx_ivf_cl(c), (uint32_t)c);
    }
    was = v->map_mapped;
    vx_keys_lock(ix);
    v->map = fresh;
    v->map_cap = cap;
    v->map_n = t.map_n;
    v->map_mapped = 0; /* vecidx_stats reads it */
    v->map_huge = huge;
    vx_keys_unlock(ix);
    if (!was) vx_table_free(&ix->mem, old, oldbytes, was_huge);
    return VECIDX_OK;
}

/* ---- lists ------------------------------------------------------------ */

static void vx_ivl_free(vecidx *ix, vx_ivlist *l)
{
    if (!l->mapped) {
        vx_free(&ix->mem, l->keys, (size_t)l->cap * 8);
        vx_free(&ix->mem, l->codes, (size_t)l->cap * ix->ivf.m);
        vx_free(&ix->mem, l->vecs, (size_t)l->cap * ix->ivf.vb);
    }
    memset(l, 0, sizeof *l);
}

/* Room for `more` entries in list l. Grows by a quarter so a list wastes
** little; a list still in the mapped file is copied out first. */
static int vx_ivl_reserve(vecidx *ix, vx_ivlist *l, size_t more)
{
    size_t need = (size_t)l->n + more, cap = l->cap, m = ix->ivf.m;
    size_t vb = ix->ivf.vb;
    vx_ivlist t, old;
    if (need <= l->cap && !l->mapped) return VECIDX_OK;
    if (need > VECIDX_MAX_COUNT) return VECIDX_EFULL;
    vx_snap_touch_list(ix, (uint32_t)(l - ix->ivf.lists));
    if (cap < need) cap = need + need / 4 + 4;
    if (cap > VECIDX_MAX_COUNT) cap = VECIDX_MAX_COUNT;
    memset(&t, 0, sizeof t);
    t.keys = vx_malloc(&ix->mem, cap * 8);
    t.codes = vx_malloc(&ix->mem, cap * m);
    t.vecs = vb ? vx_malloc(&ix->mem, cap * vb) : NULL;
    t.cap = (uint32_t)cap;
    if (!t.keys || !t.codes || (vb && !t.vecs)) {
        vx_ivl_free(ix, &t);
        return VECIDX_ENOMEM;
    }
    t.n = l->n;
    if (l->n) {
        memcpy(t.keys, l->keys, (size_t)l->n * 8);
        memcpy(t.codes, l->codes, (size_t)l->n * m);
        if (vb) memcpy(t.vecs, l->vecs, (size_t)l->n * vb);
    }
    /* Swapped under the key-set lock, as searches read lists under it. */
    vx_keys_lock(ix);
    old = *l;
    *l = t;
    vx_keys_unlock(ix);
    vx_ivl_free(ix, &old);
    return VECIDX_OK;
}

static void vx_ivl_append(vecidx *ix, uint32_t li, uint64_t key,
                          const uint8_t *code, const float *vec)
{
    vx_ivlist *l = &ix->ivf.lists[li];
    uint32_t pos;
    vx_snap_touch_list(ix, li);
    pos = l->n++;
    l->keys[pos] = key;
    memcpy(l->codes + (size_t)pos * ix->ivf.m, code, ix->ivf.m);
    if (ix->ivf.vb) {
        float *x = vx_ivf_kept(&ix->ivf, l, pos);
        memcpy(x, vec, (size_t)ix->p.dim * sizeof(float));
        if (ix->ivf.vb > ix->p.dim * sizeof(float))
            x[ix->p.dim] = (float)(1.0 / sqrt(vx_ivf_sq_norm(ix, x)));
    }
    vx_ivf_map_put(&ix->ivf, key, li, pos);
    ix->ivf.count++;
}

/* Remove the entry of map cell `cell`: the list's last entry fills the
** hole and its cell is pointed at the new position. Never allocates (a
** mapped list is written in place: its pages are private copies). */
static void vx_ivf_remove_cell(vecidx *ix, size_t cell)
{
    vx_ivf *v = &ix->ivf;
    uint64_t c = vx_ivf_cw(v, cell);
    uint32_t li = vx_ivf_cl(c), pos = (uint32_t)c;
    vx_ivlist *l = &v->lists[li];
    uint32_t last = l->n - 1;
    size_t m = v->m;
    vx_snap_touch_list(ix, li);
    vx_ivf_map_del(v, cell);
    if (pos != last) {
        size_t moved = vx_ivf_map_find(v, l->keys[last]);
        l->keys[pos] = l->keys[last];
        memcpy(l->codes + (size_t)pos * m, l->codes + (size_t)last * m, m);
        if (v->vb)
            memcpy(vx_ivf_kept(v, l, pos), vx_ivf_kept(v, l, last), v->vb);
        v->map[moved * v->map_words] = vx_ivf_cell(vx_hash64(l->keys[pos]), li,
                                                   pos);
    }
    l->n--;
    v->count--;
}

/* ---- encoding ---------------------------------------------------------- */

/* Coarse distance terms of x to every centroid into out (npanel * VX_PANEL
** floats): |c|^2 - 2 x.c under L2 (|x|^2 omitted), -x.c otherwise. */
static void vx_ivf_coarse(const vecidx *ix, const float *x, float *out)
{
    const vx_ivf *v = &ix->ivf;
    uint32_t c;
    ix->kern->dot_panels(x, v->cent, ix->p.dim, v->npanel, out);
    for (c = 0; c < v->nlist; c++)
        out[c] = ix->p.metric == VECIDX_L2 ? v->cnorm[c] - 2 * out[c] : -out[c];
}

/* The list of x: its nearest centroid under the coarse distance. */
static uint32_t vx_ivf_assign(const vecidx *ix, const float *x)
{
    float score;
    return ix->kern->nearest(x, ix->ivf.cent, ix->p.dim, ix->ivf.npanel,
                             ix->ivf.cbias,
                             ix->p.metric == VECIDX_L2 ? -2.0f : -1.0f, &score);
}

/* Nearest of the 256 sub-centroids of slice j to r (len_j floats). */
static uint8_t vx_ivf_pq_code(const vecidx *ix, uint32_t j, const float *r)
{
    float score;
    return (uint8_t)ix->kern->nearest(
        r, vx_ivf_book(ix, j), vx_ivf_len(ix, j), VX_IVF_KSUB / VX_PANEL,
        ix->ivf.bnorm + (size_t)j * VX_IVF_KSUB, -2.0f, &score);
}

/* Working memory of one encoding thread. */
typedef struct vx_ivf_work {
    float *r, *nv; /* residual, normalised vector: dim floats each */
} vx_ivf_work;

static int vx_ivf_work_alloc(vecidx *ix, vx_ivf_work *w)
{
    w->r = vx_malloc(&ix->mem, 2 * (size_t)ix->p.dim * sizeof(float));
    if (!w->r) return VECIDX_ENOMEM;
    w->nv = w->r + ix->p.dim;
    return VECIDX_OK;
}

static void vx_ivf_work_free(vecidx *ix, vx_ivf_work *w)
{
    vx_free(&ix->mem, w->r, 2 * (size_t)ix->p.dim * sizeof(float));
    w->r = NULL;
}

/* List and code of vector x. */
static uint32_t vx_ivf_encode(const vecidx *ix, vx_ivf_work *w, const float *x,
                              uint8_t *code)
{
    const float *xv = vx_ivf_prep_vec(ix, x, w->nv);
    uint32_t li = vx_ivf_assign(ix, xv), i, j;
    for (i = 0; i < ix->p.dim; i++)
        w->r[i] = xv[i] - *vx_panel_at(ix->ivf.cent, ix->p.dim, li, i);
    for (j = 0; j < ix->ivf.m; j++)
        code[j] = vx_ivf_pq_code(ix, j, w->r + vx_ivf_off(ix, j));
    return li;
}

/* The reconstruction of a code in list li (normalised space for cosine). */
static void vx_ivf_decode(const vecidx *ix, uint32_t li, const uint8_t *code,
                          float *out)
{
    uint32_t j, i;
    for (j = 0; j < ix->ivf.m; j++) {
        uint32_t off = vx_ivf_off(ix, j), len = vx_ivf_len(ix, j);
        for (i = 0; i < len; i++)
            out[off + i] = *vx_panel_at(ix->ivf.cent, ix->p.dim, li, off + i) +
                           *vx_panel_at((float *)vx_ivf_book(ix, j), len,
                                        code[j], i);
    }
}

/* A batch being inserted: its lists and codes, computed before the index
** changes so that a failure leaves nothing half done. */
typedef struct vx_ivf_prep {
    size_t n;
    uint32_t *list;
    uint8_t *codes;
} vx_ivf_prep;

typedef struct vx_ivf_enc_job {
    vecidx *ix;
    const float *vecs;
    vx_ivf_prep *pr;
    size_t begin, end;
    int rc;
} vx_ivf_enc_job;

static void *vx_ivf_enc_worker(void *arg)
{
    vx_ivf_enc_job *j = arg;
    vx_ivf_work w;
    size_t i, m = j->ix->ivf.m;
    if ((j->rc = vx_ivf_work_alloc(j->ix, &w)) != VECIDX_OK) return NULL;
    for (i = j->begin; i < j->end; i++)
        j->pr->list[i] = vx_ivf_encode(j->ix, &w,
                                       j->vecs + i * (size_t)j->ix->p.dim,
                                       j->pr->codes + i * m);
    vx_ivf_work_free(j->ix, &w);
    return NULL;
}

static void vx_ivf_prep_free(vecidx *ix, vx_ivf_prep *pr)
{
    vx_free(&ix->mem, pr->list, pr->n * sizeof *pr->list);
    vx_free(&ix->mem, pr->codes, pr->n * ix->ivf.m);
    memset(pr, 0, sizeof *pr);
}

/* Room in every list for the entries of the batch. A failure leaves
** the lists bigger but unchanged in content. */
static int vx_ivf_reserve_lists(vecidx *ix, const vx_ivf_prep *pr)
{
    uint32_t *cnt, li;
    size_t i, bytes = (size_t)ix->ivf.nlist * sizeof *cnt;
    int rc = VECIDX_OK;
    if (pr->n == 1) return vx_ivl_reserve(ix, &ix->ivf.lists[pr->list[0]], 1);
    if (!(cnt = vx_malloc(&ix->mem, bytes))) return VECIDX_ENOMEM;
    memset(cnt, 0, bytes);
    for (i = 0; i < pr->n; i++) cnt[pr->list[i]]++;
    for (li = 0; li < ix->ivf.nlist && rc == VECIDX_OK; li++)
        if (cnt[li]) rc = vx_ivl_reserve(ix, &ix->ivf.lists[li], cnt[li]);
    vx_free(&ix->mem, cnt, bytes);
    return rc;
}

/* Encode n vectors (on several threads for large batches) and make room
** for them in their lists and the key map. */
static int vx_ivf_prepare(vecidx *ix, size_t n, const float *vecs,
                          vx_ivf_prep *pr)
{
    vx_ivf_enc_job jobs[64];
    vx_task tasks[64];
    unsigned nt = n < 2048 ? 1 : vx_threads(ix, NULL), t;
    size_t per;
    int rc = VECIDX_OK;
    if (nt > 64) nt = 64;
    pr->n = n;
    pr->list = vx_malloc(&ix->mem, n * sizeof *pr->list);
    pr->codes = vx_malloc(&ix->mem, n * ix->ivf.m);
    if (!pr->list || !pr->codes) rc = VECIDX_ENOMEM;
    per = (n + nt - 1) / nt;
    for (t = 0; t < nt && rc == VECIDX_OK; t++) {
        jobs[t].ix = ix;
        jobs[t].vecs = vecs;
        jobs[t].pr = pr;
        jobs[t].begin = t * per < n ? t * per : n;
        jobs[t].end = jobs[t].begin + per < n ? jobs[t].begin + per : n;
        tasks[t].fn = vx_ivf_enc_worker;
        tasks[t].arg = &jobs[t];
    }
    if (rc == VECIDX_OK) vx_run_parallel(tasks, nt);
    for (t = 0; t < nt && rc == VECIDX_OK; t++) rc = jobs[t].rc;
    if (rc == VECIDX_OK) rc = vx_ivf_reserve_lists(ix, pr);
    if (rc == VECIDX_OK) rc = vx_ivf_map_reserve(ix, n);
    if (rc != VECIDX_OK) vx_ivf_prep_free(ix, pr);
    return rc;
}

/* Append a prepared batch of new keys; room is reserved, nothing fails. */
static void vx_ivf_apply(vecidx *ix, const vx_ivf_prep *pr,
                         const uint64_t *keys, const float *vecs)
{
    size_t i;
    for (i = 0; i < pr->n; i++)
        vx_ivl_append(ix, pr->list[i], keys[i], pr->codes + i * ix->ivf.m,
                      vecs + i * (size_t)ix->p.dim);
    VX_COUNT(&ix->act.ivf_added, pr->n);
}

/* ---- search ------------------------------------------------------------ */

/* The list terms of list li (m * 256 floats): |b|^2 + 2 c_j.b for each slice j
** and sub-centroid b; cvec receives the centroid (dim floats). */
static void vx_ivf_list_terms(const vecidx *ix, uint32_t li, float *cvec,
                              float *out)
{
    uint32_t i, j, k;
    for (i = 0; i < ix->p.dim; i++)
        cvec[i] = *vx_panel_at(ix->ivf.cent, ix->p.dim, li, i);
    for (j = 0; j < ix->ivf.m; j++) {
        float *o = out + (size_t)j * VX_IVF_KSUB;
        const float *bn = ix->ivf.bnorm + (size_t)j * VX_IVF_KSUB;
        ix->kern->dot_panels(cvec + vx_ivf_off(ix, j), vx_ivf_book(ix, j),
                             vx_ivf_len(ix, j), VX_IVF_KSUB / VX_PANEL, o);
        for (k = 0; k < VX_IVF_KSUB; k++) o[k] = bn[k] + 2 * o[k];
    }
}

/* out = a - 2 b. Called once per probed list on m * 256 floats, so it
** must vectorise: restrict tells the compiler out never overlaps b (it
** may be a itself, element for element). */
static void vx_madd(float *out, const float *a, const float *restrict b,
                    size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) out[i] = a[i] - 2 * b[i];
}

/* Per-search working memory, one allocation. */
typedef struct vx_ivf_sw {
    float *coarse, *sim, *lut, *dist, *qn, *cvec;
    uint8_t *codes;   /* a filtered scan's admitted codes, VX_IVF_SCAN */
    uint16_t *pos;    /* ... and their places in the list's block */
    uint64_t *probed; /* a bit per list: probed by this search */
    size_t floats;
    vx_topk probe, cand; /* a search sets probe.k to the lists it ranks */
    size_t probe_cap;    /* so the block's size is kept here */
    int ranked;          /* coarse holds the query's distances to every
                            centroid (flat quantizer) */
} vx_ivf_sw;

/* nprobe 0: for a search that scores entries one by one and probes no
** list, only qn and cvec (a keyed scan of a few keys spent a fifth of its
** time allocating the tables it never filled), in line (a line-aligned
** buffer of nline floats) when they fit. */
static int vx_ivf_sw_alloc(vecidx *ix, vx_ivf_sw *w, size_t nprobe, float *line,
                           size_t nline)
{
    const vx_ivf *v = &ix->ivf;
    size_t lut = nprobe ? (size_t)v->m * VX_IVF_KSUB : 0;
    memset(w, 0, sizeof *w);
    if (!nprobe && 2 * (size_t)ix->p.dim <= nline) {
        w->qn = line;
        w->cvec = line + ix->p.dim;
        return VECIDX_OK;
    }
    /* a line more, to start qn on one (vx_query_lined) */
    w->floats = 2 * (size_t)ix->p.dim + VX_LINE_WORDS;
    if (nprobe)
        w->floats += (size_t)v->npanel * VX_PANEL + 2 * lut + VX_IVF_SCAN +
                     (VX_IVF_SCAN * (size_t)v->m + VX_IVF_SCAN * 2) / 4 +
                     ((size_t)v->nlist + 63) / 64 * 2;
    if (!(w->coarse = vx_malloc(&ix->mem, w->floats * sizeof(float))))
        return VECIDX_ENOMEM;
    w->qn = vx_line_up(w->coarse + w->floats - 2 * (size_t)ix->p.dim -
                       VX_LINE_WORDS);
    w->cvec = w->qn + ix->p.dim;
    if (!nprobe) return VECIDX_OK;
    w->sim = w->coarse + (size_t)v->npanel * VX_PANEL;
    w->lut = w->sim + lut;
    w->dist = w->lut + lut;
    w->codes = (uint8_t *)(w->dist + VX_IVF_SCAN);
    w->pos = (uint16_t *)(w->codes + VX_IVF_SCAN * (size_t)v->m);
    /* 8-byte aligned: codes and pos take a multiple of 512 bytes */
    w->probed = (uint64_t *)(void *)(w->pos + VX_IVF_SCAN);
    if (vx_topk_alloc(&w->probe, &ix->mem, nprobe) != VECIDX_OK) {
        vx_free(&ix->mem, w->coarse, w->floats * sizeof(float));
        return VECIDX_ENOMEM;
    }
    w->probe_cap = nprobe;
    return VECIDX_OK;
}

static void vx_ivf_sw_free(vecidx *ix, vx_ivf_sw *w)
{
    vx_free(&ix->mem, w->coarse, w->floats * sizeof(float));
    w->probe.k = w->probe_cap;
    vx_topk_free(&w->probe, &ix->mem);
    if (w->cand.d) vx_topk_free(&w->cand, &ix->mem);
}

/* The query as IVF-PQ scores it, in w->qn: normalised under cosine (the
** codebooks hold unit vectors), and on a cache line (vx_query_lined). */
static const float *vx_ivf_query(const vecidx *ix, const vx_query *q,
                                 vx_ivf_sw *w)
{
    if (ix->p.metric == VECIDX_COSINE)
        vx_qk.scale(w->qn, q->v, q->inv_norm, ix->p.dim);
    else
        memcpy(w->qn, q->v, (size_t)ix->p.dim * sizeof *w->qn);
    return w->qn;
}

/* The nprobe lists to scan, closest first, into w->probe (distance = the
** exact coarse distance: |q-c|^2, or -q.c), by the coarse graph if there
** is one, else by every centroid's distance. A filtered search ranks
** again, for more lists (`again`): by the graph only while it is asked
** for under 1 / VX_IVF_GRAPH_SPAN of the lists, since a graph walk of
** breadth 2 * nprobe scores tens of centroids per list it returns, at
** random places, where the scan streams them; the scan's distances are
** computed once a search. Measured against the graph alone, 50k x 128
** clustered, 4,096 lists, nprobe 8: far sets of 30 % and 10 % took 0.81x
** and 0.58x the time, recall the same (60k x 16, far 30 %: 0.58x).
** Unfiltered searches ranked so took 0.90 / 0.81x the time at nprobe 64 /
** 128, 0.99-1.02x at 16-32; they keep the quantizer asked for. */
#define VX_IVF_GRAPH_SPAN 128
static int vx_ivf_probe(vecidx *ix, vx_ivf_sw *w, const float *qv,
                        size_t nprobe, int again)
{
    const vx_ivf *v = &ix->ivf;
    float qq = ix->p.metric == VECIDX_L2 ? ix->kern->dot(qv, qv, ix->p.dim)
                                         : 0.0f;
    uint32_t c;
    if (v->cq && (!again || nprobe * VX_IVF_GRAPH_SPAN < v->nlist)) {
        vecidx_search_opts o;
        size_t found;
        int rc;
        memset(&o, 0, sizeof o);
        o.ef = (uint32_t)(nprobe * 2 > 64 ? nprobe * 2 : 64);
        rc = vecidx_search(v->cq, qv, nprobe, &o, w->probe.id, w->probe.d,
                           &found);
        if (rc != VECIDX_OK) return rc;
        /* Its metric is L2, or IP over the (normalised) query, so its
        ** distances are the coarse distances already. */
        w->probe.n = found;
        return VECIDX_OK;
    }
    if (!w->ranked) vx_ivf_coarse(ix, qv, w->coarse);
    w->ranked = 1;
    for (c = 0; c < v->nlist; c++) {
        float d = w->coarse[c] + qq;
        if (vx_topk_admits(&w->probe, d, c)) vx_topk_push(&w->probe, d, c);
    }
    vx_topk_sort(&w->probe); /* closest list first, as the graph gives */
    return VECIDX_OK;
}

/* The table list li's codes are scored by, into w->lut: under L2 it
** holds the list's centroid; under IP and cosine it is the query's alone,
** set once per search. */
static void vx_ivf_list_lut(vecidx *ix, vx_ivf_sw *w, uint32_t li)
{
    if (ix->p.metric != VECIDX_L2) return;
    vx_ivf_list_terms(ix, li, w->cvec, w->lut);
    vx_madd(w->lut, w->lut, w->sim, (size_t)ix->ivf.m * VX_IVF_KSUB);
}

/* Places in keys[0..n) that a admits, into pos; returns their count. A
** bitmap alone is read here, not through vx_allow_admit's call. */
static size_t vx_ivf_admitted(const vx_sopts *a, const uint64_t *keys, size_t n,
                              uint16_t *pos)
{
    size_t i, na = 0;
    if (a->bits && !a->set_on && !a->cb) {
        for (i = 0; i < n; i++) {
            pos[na] = (uint16_t)i;
            na += (size_t)vx_bits_has(a, keys[i]);
        }
        return na;
    }
    for (i = 0; i < n; i++)
        if (vx_allow_admit(keys[i], (void *)(uintptr_t)a))
            pos[na++] = (uint16_t)i;
    return na;
}

/* Offer the codes [i, e) of a block that vx_ivf_scan scored (w->dist) to
** h, and those that enter it to top (see vx_ivf_scan); pos: their places
** in the block, NULL when all of it was scored. A code that cannot enter
** h is dropped before its key is loaded, and vx_ivf_scan skips a group
** none of which can (vx_topk_skips), as the flat scan does. Against a
** key and a heap test for every code: 1.12 / 1.13x the queries per
** second on 1M x 128 at nprobe 16 / 64, refine 4, 1.05x on 200k x 384
** cosine; filtered (whose keys the filter has read already) 1.05-1.09x. */
static void vx_ivf_offer_rows(const vx_ivf_sw *w, const uint64_t *key,
                              const uint16_t *pos, size_t i, size_t e,
                              vx_topk *h, vx_topk *top)
{
    for (; i < e; i++) {
        float d = w->dist[i];
        uint64_t k;
        if (VX_UNLIKELY(d != d)) d = INFINITY;
        if (vx_topk_beyond(h, d)) continue;
        k = key[pos ? pos[i] : i];
        if (!vx_topk_admits(h, d, k)) continue;
        vx_topk_push(h, d, k);
        if (top && top != h && vx_topk_admits(top, d, k))
            vx_topk_push(top, d, k);
    }
}

/* Score list li's codes and offer them to h. With a filter (a) it is
** asked first, of every entry, and only the admitted ones are scored;
** returns their count. A list with none needs no table. Measured
** on 1M x 128 (nprobe 16, refine 4), far sets of 10 %: scoring every
** code first took half the search's time. The entries go to top as well
** (the search's best k by code, which is h itself without re-ranking;
** NULL: not kept). */
static size_t vx_ivf_scan(vecidx *ix, vx_ivf_sw *w, uint32_t li, float bias,
                          const vx_sopts *a, vx_topk *h, vx_topk *top)
{
    const vx_ivlist *l = vx_ivf_list(&ix->ivf, li);
    size_t m = ix->ivf.m, b, i, g, e, nb, na, nadm = 0;
    int lut = 0;
    vx_tally.visit++;
    for (b = 0; b < l->n; b += nb) {
        const uint64_t *key = l->keys + b;
        const uint8_t *codes = l->codes + b * m;
        nb = l->n - b < VX_IVF_SCAN ? l->n - b : VX_IVF_SCAN;
        na = nb;
        if (a) {
            if (!(na = vx_ivf_admitted(a, key, nb, w->pos))) continue;
            nadm += na;
            if (na < nb) { /* gathered; all admitted: scored in place */
                for (i = 0; i < na; i++)
                    memcpy(w->codes + i * m, codes + (size_t)w->pos[i] * m, m);
                codes = w->codes;
            }
        }
        if (!lut) vx_ivf_list_lut(ix, w, li), lut = 1;
        ix->kern->adc(codes, na, m, w->lut, bias, w->dist);
        vx_tally.dist += na;
        for (g = 0; g < na; g = e) {
            e = na - g < VX_OFFER_GROUP ? na : g + VX_OFFER_GROUP;
            if (!vx_topk_skips(h, w->dist + g, e - g))
                vx_ivf_offer_rows(w, key, a ? w->pos : NULL, g, e, h, top);
        }
    }
    return nadm;
}

/* Exact distance from the (prepared) query to a kept full vector x, with
** its inverse norm after it under cosine in format 7. Measured at 1 % of
** 200k x 384 cosine, a scan of allowed keys computing the norm each time
** ran at 0.59x a hand-written loop over the same vectors and norms, and
** 0.97x without. */
static float vx_ivf_exact(const vecidx *ix, const float *qv, const float *x)
{
    double dot;
    if (ix->p.metric == VECIDX_L2) return ix->kern->l2(qv, x, ix->p.dim);
    dot = ix->kern->dot(qv, x, ix->p.dim);
    if (ix->p.metric == VECIDX_IP) return (float)-dot;
    if (ix->ivf.vb > ix->p.dim * sizeof(float))
        return (float)(1.0 - dot * x[ix->p.dim]);
    return (float)(1.0 - dot / sqrt(vx_ivf_sq_norm(ix, x)));
}

/* Offer the entry at pos of list li: with its exact distance to q when
** the search re-ranks (exact), else with the distance its code estimates,
** that of its reconstruction (not normalised under cosine: the estimate
** is 1 - q.x for the normalised query). */
static float vx_ivf_dist_at(vecidx *ix, vx_ivf_sw *w, const float *qv,
                            uint32_t li, uint32_t pos, int exact)
{
    const vx_ivlist *l = vx_ivf_list(&ix->ivf, li);
    float d;
    if (exact) {
        d = vx_ivf_exact(ix, qv, vx_ivf_kept(&ix->ivf, l, pos));
    } else {
        vx_ivf_decode(ix, li, l->codes + (size_t)pos * ix->ivf.m, w->cvec);
        d = ix->p.metric == VECIDX_L2 ? ix->kern->l2(qv, w->cvec, ix->p.dim)
                                      : -ix->kern->dot(qv, w->cvec, ix->p.dim);
        if (ix->p.metric == VECIDX_COSINE) d += 1.0f;
    }
    return VX_UNLIKELY(d != d) ? INFINITY : d;
}

static void vx_ivf_offer_exact(vecidx *ix, vx_ivf_sw *w, const float *qv,
                               uint32_t li, uint32_t pos, int exact, vx_topk *h)
{
    const vx_ivlist *l = vx_ivf_list(&ix->ivf, li);
    float d = vx_ivf_dist_at(ix, w, qv, li, pos, exact);
    vx_tally.dist++;
    if (vx_topk_admits(h, d, l->keys[pos])) vx_topk_push(h, d, l->keys[pos]);
}

/* Every entry of every list that o's filter (if any) admits, offered to
** h: by its kept vector (exact) or its decoded code. */
static void vx_ivf_score_all(vecidx *ix, vx_ivf_sw *w, const float *qv,
                             const vecidx_search_opts *o, int exact, vx_topk *h)
{
    const vx_ivf *v = &ix->ivf;
    uint32_t li, j;
    for (li = 0; li < v->nlist; li++) {
        const vx_ivlist *l = vx_ivf_list(v, li);
        for (j = 0; j < l->n; j++)
            if (!o || !o->filter || o->filter(l->keys[j], o->filter_ctx))
                vx_ivf_offer_exact(ix, w, qv, li, j, exact, h);
    }
}

/* Score the n entries of keys (any order, absent ones skipped; a, when
** not NULL, asked about the rest of its filters) into h: by their kept
** vectors (exact) or their decoded codes. Lookups, checks of the entries
** found and scoring run as three passes, so that each pass's loads, in no
** order, overlap: two-word cells are matched by the key they hold, and
** the list each names is read only in the second pass (at 1 % of 100k x
** 128, reading it in the lookup took 40 % of the lookup's time), which
** also keeps the vector's address for the third. keys is overwritten. */
static void vx_ivf_score_keys(vecidx *ix, vx_ivf_sw *w, const float *qv,
                              uint64_t *keys, size_t n, int exact,
                              const vx_sopts *a, vx_topk *h)
{
    const vx_ivf *v = &ix->ivf;
    uint64_t cw[256], hash[256];
    const float *kept[256]; /* with exact: the entries' kept vectors */
    float dist[256];
    size_t i, j, m, cell;
    for (i = 0; i < n; i++) hash[i] = vx_hash64(keys[i]);
    for (i = 0; i < n && i < VX_MAP_AHEAD && v->map_cap; i++)
        vx_ivf_map_prefetch(v, hash[i]);
    for (i = m = 0; i < n; i++) {
        if (i + VX_MAP_AHEAD < n && v->map_cap)
            vx_ivf_map_prefetch(v, hash[i + VX_MAP_AHEAD]);
        cell = v->map_words == 2 ? vx_ivf_map_probe(v, keys[i], hash[i])
                                 : vx_ivf_map_find(v, keys[i]);
        if (cell == SIZE_MAX) continue;
        cw[m] = vx_ivf_cw(v, cell);
        keys[m++] = keys[i];
    }
    for (i = j = 0; i < m; i++)
        if (vx_ivf_cell_ok(v, cw[i]) && (!a || vx_allow_rest(a, keys[i]))) {
            if (exact)
                kept[j] = vx_ivf_kept(v, &v->lists[vx_ivf_cl(cw[i])],
                                      (uint32_t)cw[i]);
            cw[j] = cw[i];
            keys[j++] = keys[i];
        }
    /* distances first, then the heap, as vx_flat_allowed */
    if (exact) {
        for (i = 0; i < j && i < VX_ALLOW_AHEAD; i++)
            vx_allow_prefetch(kept[i], v->vb);
        for (i = 0; i < j; i++) {
            if (i + VX_ALLOW_AHEAD < j)
                vx_allow_prefetch(kept[i + VX_ALLOW_AHEAD], v->vb);
            dist[i] = vx_ivf_exact(ix, qv, kept[i]);
        }
    }
    for (i = 0; !exact && i < j; i++) {
        if (i + VX_ALLOW_AHEAD < j)
            __builtin_prefetch(
                v->lists[vx_ivf_cl(cw[i + VX_ALLOW_AHEAD])].codes +
                (size_t)(uint32_t)cw[i + VX_ALLOW_AHEAD] * v->m);
        dist[i] = vx_ivf_dist_at(ix, w, qv, vx_ivf_cl(cw[i]), (uint32_t)cw[i],
                                 0);
    }
    vx_tally.dist += j;
    for (i = 0; i < j; i++) {
        float d = VX_UNLIKELY(dist[i] != dist[i]) ? INFINITY : dist[i];
        if (vx_topk_admits(h, d, keys[i])) vx_topk_push(h, d, keys[i]);
    }
}

/* The exact answer of a filtered search: each allowed key looked up, or
** with a callback alone every entry asked, and the admitted scored. */
static void vx_ivf_allowed(vecidx *ix, vx_ivf_sw *w, const float *qv,
                           const vecidx_search_opts *o, int exact, vx_topk *h)
{
    const vx_sopts *a = vx_allow_of(o);
    uint64_t keys[256], pos = 0;
    size_t n;
    int others = vx_allow_others(a);
    while (a->counted && (n = vx_allow_next(a, &pos, keys, 256)) > 0)
        vx_ivf_score_keys(ix, w, qv, keys, n, exact, others ? a : NULL, h);
    if (!a->counted) vx_ivf_score_all(ix, w, qv, o, exact, h);
}

/* Re-score the candidates exactly into h, as a keyed scan scores its
** keys: measured on 100k x 128 (refine 4, nprobe 16), looking the 40
** candidates up one after the other, each waiting on its cell, its list
** and its vector in turn, left unfiltered searches 3-6 % slower with the
** two-word cells than with one. */
static void vx_ivf_refine(vecidx *ix, vx_ivf_sw *w, const float *qv, vx_topk *h)
{
    uint64_t keys[256];
    size_t i, n;
    for (i = 0; i < w->cand.n; i += n) {
        n = w->cand.n - i < 256 ? w->cand.n - i : 256;
        memcpy(keys, w->cand.id + i, n * sizeof *keys);
        vx_ivf_score_keys(ix, w, qv, keys, n, 1, NULL, h);
    }
}

/* Costs for the plan of a filtered IVF-PQ search, in the units of
** VX_COST_KEYED: an entry asked about and, if admitted, scored by its
** code (16-byte codes, in order), and the table of distances a probed
** list with admitted entries needs first (at 128 dimensions: 256
** sub-centroids times the dimension, about 4 us; at 40 a callback
** admitting 0.1 % of 100k made the search probe every list, 5-7x slower
** than asking the callback about every entry). Against the full scan a
** callback alone needs, an entry of a probed list costs VX_COST_PROBED
** rows of that scan: on 1M x 128 (32-byte codes, 1,264 lists) probing
** every list took 26-30 ms, with the callback or without, the scan 8-9
** ms, when every code was scored before the callback was asked; at
** VX_COST_ADC a callback admitting 0.01 % made the search probe every
** list, 0.26x the scan (bench/RESULTS.md, 12-06). 200k x 384 (64-byte
** codes): 9.3 ms against 1.3 ms. Allowed sets keep VX_COST_ADC: pricing
** their entries so too stopped far sets' probing sooner for direct
** scoring, which was slower (10 %: 0.14x the unfiltered QPS against
** 0.20x).
**
** Above 128 dimensions a key scored directly costs sqrt(dim / 128) units
** (its loads overlap: 112 ns a key on 200k x 384 against 65 ns on 1M x
** 128, 20k admitted keys each), and under L2 a list's table dim / 128
** times VX_COST_LIST (256 x dim terms); under IP and cosine the table is
** the query's, built once. Priced at 128 dimensions, a set of 10 % of
** 200k x 384 cosine was scored directly at nprobe 64, at 0.17-0.29x the
** unfiltered speed, where probing runs at 0.80-0.96x (recall@10 0.97-
** 1.00, unfiltered 0.85-0.96). That pricing alone (c233193, reverted) lost
** recall on tight clusters, where probing from nprobe / sqrt(fraction)
** lists missed the answers; vx_ivf_near now keeps probing there. */
#define VX_COST_ADC 0.03
#define VX_COST_PROBED 2.5
#define VX_COST_LIST 100.0

/* Lists a filtered search probes at least: about 1/sqrt(frac) times
** nprobe (see vecidx_search) -- more admitted entries than nprobe lists
** hold unfiltered would be needless, fewer lose recall. */
static size_t vx_ivf_filtered_probes(size_t nprobe, double frac, size_t nlist)
{
    double p = (double)nprobe / sqrt(frac > 1e-9 ? frac : 1e-9);
    return p >= (double)nlist ? nlist : (size_t)ceil(p);
}

/* The plan of a filtered IVF-PQ search: probe at least `least` lists,
** then on while the admitted entries met are fewer than `want` (as many
** as `least` lists hold at the average fraction admitted: an allowed set
** that lies away from the query, as the "far" sets of the benchmark,
** shows fewer near it) -- but stop once the lists probed have cost more
** than `budget`, the cost of scoring the admitted entries directly, which
** then answers. A list costs `entry` per entry asked, and, when any is
** admitted, its table and their codes. Measured on 100k x 128 (nprobe
** 8): wanting half as many lost recall on far sets (0.74 at 10 %,
** against 0.80 unfiltered); twice as many cost random sets half their
** speed for +0.01. A set whose `least` lists held under VX_IVF_SKEW of
** `want` lies away from the query; its search wants VX_IVF_FAR_WANT times
** as many: on 1M x 128 (nprobe 16, refine 4), the far set of 10 % then
** kept recall@10 0.981 at 0.55x the unfiltered speed, against 0.973 at
** 0.65x (unfiltered 0.996); sets admitted at random never reach it.
** Three times as many, or below 0.75 of want: +0.002. */
#define VX_IVF_WANT 1.0
#define VX_IVF_SKEW 0.5
#define VX_IVF_FAR_WANT 2.0
typedef struct vx_ivf_how {
    size_t least;
    double want, budget, entry, frac, table;
} vx_ivf_how;

/* A want met only after asking about so many entries that the admitted
** ones were under VX_IVF_THIN of the fraction admitted among them is met
** too thinly to trust: the scan answers. On the benchmark's far sets
** (1M x 128 and 200k x 384, 10 and 50 %) that share was 0.21-0.29 of
** the fraction at the lowest and 0.93-1.04 on average over 1,200
** searches each; a set of the 30 % of 60k x 16 farthest from each query,
** with 4,096 lists (15 entries each), met its want at 0.055 after 500-670
** lists, recall@10 0.04 where the scan gives 1.0. */
#define VX_IVF_THIN 0.125

/* Returns 1 when scoring the admitted entries directly is cheaper from
** the start than probing `least` lists with some admitted in each. */
static int vx_ivf_plan(const vecidx *ix, const vx_sopts *a, size_t nprobe,
                       vx_ivf_how *p)
{
    const vx_ivf *v = &ix->ivf;
    double n = (double)v->count, card = a->card < n ? a->card : n;
    double frac, per, list, len = (double)ix->p.dim / 128.0;
    double key = len > 1.0 ? VX_COST_KEYED * sqrt(len) : VX_COST_KEYED;
    p->table = ix->p.metric == VECIDX_L2 && len > 1.0 ? VX_COST_LIST * len
                                                      : VX_COST_LIST;
    p->budget = a->counted ? card * key : n * VX_COST_ROW + card * key;
    /* Cheaper than any one list: the rule below answers the same, without
    ** the divisions and square root that took 25 ns of a one-key search
    ** in a profile (bench/RESULTS.md, 12-05 fifth). */
    if (p->budget < p->table) return 1;
    p->frac = frac = n > 0 ? card / n : 1.0;
    per = n / v->nlist;
    p->entry = a->counted ? VX_COST_ADC : VX_COST_PROBED * VX_COST_ROW;
    list = per * p->entry + p->table;
    p->least = vx_ivf_filtered_probes(nprobe, frac, v->nlist);
    p->want = VX_IVF_WANT * (double)p->least * per * frac;
    return p->budget / list < (double)p->least;
}

/* The lists a search probes unfiltered: nprobe, within [1, nlist]. */
static size_t vx_ivf_nprobe(const vecidx *ix, const vecidx_search_opts *o)
{
    size_t nprobe = o && o->nprobe ? o->nprobe : VX_PEEK(&ix->p.ivf_nprobe);
    if (nprobe == 0) nprobe = 1;
    return nprobe > ix->ivf.nlist ? ix->ivf.nlist : nprobe;
}

/* Score entries one by one, probing no list: the admitted ones (all = 0:
** a filtered search that its plan answers so from the start), or every
** one that o's callback admits, by its kept vector (all = 1). The query
** and a decoded vector need 2 x dim floats; up to VX_QLINE_MAX dimensions
** they live here, not in a block from the allocator, which took 3 % of a
** search scoring 20 keys (200k x 384 cosine). Not inlined: the buffer
** stays off the stack of searches that probe, and so of the coarse
** graph's walk. */
static VX_NOINLINE int vx_ivf_direct(vecidx *ix, const vx_query *q,
                                     const vecidx_search_opts *o, int all,
                                     int exact, vx_topk *h)
{
    _Alignas(64) float line[2 * VX_QLINE_MAX];
    vx_ivf_sw w;
    const float *qv;
    int rc = vx_ivf_sw_alloc(ix, &w, 0, line, 2 * VX_QLINE_MAX);
    if (rc != VECIDX_OK) return rc;
    qv = vx_ivf_query(ix, q, &w);
    if (all)
        vx_ivf_score_all(ix, &w, qv, o, 1, h);
    else
        vx_ivf_allowed(ix, &w, qv, o, exact, h);
    vx_ivf_sw_free(ix, &w);
    return VECIDX_OK;
}

/* What a search's probing met: lists probed, entries asked about,
** admitted entries, and the cost in the plan's units. */
typedef struct vx_ivf_met {
    size_t lists, asked, nadm;
    double spent;
    vx_topk *top; /* the best k admitted (see vx_ivf_scan) */
    int open;     /* the budget stopped probing while vx_ivf_near held */
    float ref;    /* see vx_ivf_ref */
    float grow;   /* 1 + VX_IVF_NEAR under L2, else 1 (vx_ivf_near) */
} vx_ivf_met;

/* Whether the next list, whose centroid lies at coarse distance bias,
** may still hold admitted entries nearer than the k-th best met: a
** filtered search probes on, past its plan's count, while that entry lies
** beyond the k-th best of all the entries of the first list probed (the
** admitted answers lie outside the reach an unfiltered search has) and
** the centroid is nearer than it (under L2 allowing 5 % more). On 60k x
** 384 of 1,000 tight clusters (L2, nprobe 4-8, refine 4) k-means puts
** several clusters in some lists, whose centroids then lie nearer the
** query than any of their entries, and the answers to a filtered search
** lay in lists ranked up to 135th: without this, recall@10 was 0.53-0.76
** on sets of 5-10 % admitted at random (now 1.000) and 0.26-0.73 on sets
** of 5-50 % far from the query (now 0.83-1.00; unfiltered 0.946). On
** isotropic Gaussian data every centroid lies nearer than the answers,
** and without the first condition a search admitting every key probed
** 15 times the lists of an unfiltered one (a review's finding); with it,
** such searches probe as before. */
#define VX_IVF_NEAR 0.05f
static int vx_ivf_near(const vx_ivf_met *m, float bias)
{
    float kth;
    if (m->top->n < m->top->k) return 1;
    kth = m->top->d[0];
    return kth > m->ref && bias < kth * m->grow;
}

/* m->ref: the k-th best distance among all the entries (admitted or not)
** of list li, the first probed; infinity when it holds under k. Scored
** into the empty heap m->top, which is emptied again. */
static void vx_ivf_ref(vecidx *ix, vx_ivf_sw *w, uint32_t li, float bias,
                       vx_ivf_met *m)
{
    vx_ivf_scan(ix, w, li, bias, NULL, m->top, NULL);
    vx_tally.visit--; /* the list is probed next, and counted then */
    m->ref = m->top->n == m->top->k ? m->top->d[0] : INFINITY;
    m->top->n = 0;
}

/* Probe lists closest first into `into`: nprobe of them unfiltered, or as
** the plan `how` says (its want may double: see VX_IVF_SKEW). The lists
** are ranked for the first `least` only, then -- while too few admitted
** entries were met -- four times as many at a time, up to nprobe:
** ranking every list up front cost a filtered search half its time. A
** bit per list keeps a list from being probed twice when a round's
** ranking by the coarse graph (v->cq) puts the lists in another order. */
static int vx_ivf_probe_lists(vecidx *ix, vx_ivf_sw *w, const float *qv,
                              const vx_sopts *a, vx_ivf_how *how, size_t nprobe,
                              vx_topk *into, vx_ivf_met *m)
{
    const vx_ivf *v = &ix->ivf;
    size_t cur = a ? how->least : nprobe, i;
    int rc, again = 0;
    vx_topk *top = m->top;
    memset(m, 0, sizeof *m);
    m->top = top;
    m->grow = ix->p.metric == VECIDX_L2 ? 1 + VX_IVF_NEAR : 1;
    memset(w->probed, 0, ((size_t)v->nlist + 63) / 64 * sizeof *w->probed);
    for (;;) {
        w->probe.k = cur;
        w->probe.n = 0;
        if ((rc = vx_ivf_probe(ix, w, qv, cur, again)) != VECIDX_OK) return rc;
        for (i = 0; i < w->probe.n; i++) {
            uint32_t li = (uint32_t)w->probe.id[i];
            float bias = w->probe.d[i];
            size_t got, n = vx_ivf_list(v, li)->n;
            if (w->probed[li >> 6] >> (li & 63) & 1) continue;
            if (ix->p.metric == VECIDX_COSINE) bias += 1.0f;
            if (a && m->lists == how->least &&
                (double)m->nadm < VX_IVF_SKEW * how->want)
                how->want *= VX_IVF_FAR_WANT;
            if (a && m->lists >= how->least) {
                int near = vx_ivf_near(m, bias);
                if (m->spent > how->budget) {
                    m->open = near;
                    return VECIDX_OK;
                }
                if ((double)m->nadm >= how->want && !near) return VECIDX_OK;
            }
            w->probed[li >> 6] |= (uint64_t)1 << (li & 63);
            if (a && !m->lists) { /* priced as its codes and table */
                vx_ivf_ref(ix, w, li, bias, m);
                m->spent += (double)n * VX_COST_ADC + how->table;
            }
            got = vx_ivf_scan(ix, w, li, bias, a, into, m->top);
            m->lists++;
            m->asked += n;
            m->nadm += got;
            m->spent += (double)n * how->entry +
                        (got ? how->table + (double)got * VX_COST_ADC : 0);
        }
        if (!a || cur >= nprobe) return VECIDX_OK;
        cur = cur > nprobe / 4 ? nprobe : cur * 4;
        again = 1;
    }
}

static int vx_ivf_search(vecidx *ix, const vx_query *q,
                         const vecidx_search_opts *o, vx_topk *h)
{
    const vx_ivf *v = &ix->ivf;
    const vx_sopts *a = vx_allow_of(o);
    size_t nprobe = vx_ivf_nprobe(ix, o);
    size_t refine = o && o->refine ? o->refine : VX_PEEK(&ix->p.ivf_refine), j;
    size_t lut = (size_t)v->m * VX_IVF_KSUB;
    const float *qv;
    vx_topk *into = h;
    vx_ivf_sw w;
    vx_ivf_how how;
    vx_ivf_met met;
    vx_topk top;
    int rc, scan = 0;
    if (h->k == 0) return VECIDX_OK;
    if (!ix->p.ivf_keep_vectors || refine < 2) refine = 1;
    memset(&how, 0, sizeof how);
    if (a) {
        if (a->none) return VECIDX_OK;
        scan = vx_ivf_plan(ix, a, nprobe, &how);
        nprobe = v->nlist; /* the budget bounds it */
    }
    if (scan) return vx_ivf_direct(ix, q, o, 0, refine > 1, h);
    if ((rc = vx_ivf_sw_alloc(ix, &w, nprobe, NULL, 0)) != VECIDX_OK) return rc;
    qv = vx_ivf_query(ix, q, &w);
    if (refine > 1) {
        size_t cap = h->k * refine;
        if (cap > v->count) cap = (size_t)v->count;
        if ((rc = vx_topk_alloc(&w.cand, &ix->mem, cap)) != VECIDX_OK) {
            vx_ivf_sw_free(ix, &w);
            return rc;
        }
        into = &w.cand;
    }
    met.top = a ? h : NULL;
    if (a && into != h) {
        if ((rc = vx_topk_alloc(&top, &ix->mem, h->k)) != VECIDX_OK) {
            vx_ivf_sw_free(ix, &w);
            return rc;
        }
        met.top = &top;
    }
    for (j = 0; j < v->m; j++)
        ix->kern->dot_panels(qv + vx_ivf_off(ix, j), vx_ivf_book(ix, j),
                             vx_ivf_len(ix, j), VX_IVF_KSUB / VX_PANEL,
                             w.sim + j * VX_IVF_KSUB);
    if (ix->p.metric != VECIDX_L2)
        for (j = 0; j < lut; j++) w.lut[j] = -w.sim[j];
    rc = vx_ivf_probe_lists(ix, &w, qv, a, &how, nprobe, into, &met);
    if (met.top && met.top != h) vx_topk_free(met.top, &ix->mem);
    /* Short of admitted entries, met too thinly, or the budget ran out
    ** before enough were met or while nearer lists were left: the exact
    ** answer. */
    scan = a && rc == VECIDX_OK &&
           (into->n < h->k ||
            (met.lists < v->nlist &&
             ((double)met.nadm < how.want || met.open ||
              (double)met.nadm < VX_IVF_THIN * how.frac * (double)met.asked)));
    if (refine > 1 && !scan && rc == VECIDX_OK) vx_ivf_refine(ix, &w, qv, h);
    if (scan && rc == VECIDX_OK) {
        h->n = 0;
        vx_ivf_allowed(ix, &w, qv, o, refine > 1, h);
    }
    vx_ivf_sw_free(ix, &w);
    return rc;
}

/* The exact answer for vecidx_estimate_recall: every entry scored, by
** its kept vector when there is one, else by its code (all lists probed;
** scoring a code by the table is exact for its reconstruction). */
static int vx_ivf_exact_all(vecidx *ix, const vx_query *q,
                            const vecidx_search_opts *o, vx_topk *h)
{
    vx_sopts all = *(const vx_sopts *)(const void *)o;
    if (!ix->p.ivf_keep_vectors) {
        all.u.nprobe = ix->ivf.nlist;
        all.u.refine = 1;
        return vx_ivf_search(ix, q, &all.u, h);
    }
    return vx_ivf_direct(ix, q, o, 1, 1, h);
}

/* ---- training ----------------------------------------------------------- */

/* One k-means run: k centroids of d floats for the n points at x (row
** stride ldx floats). Points are assigned in parallel, but sums are
** accumulated in point order, so the result does not depend on the
** thread count. */
typedef struct vx_km {
    vecidx *ix;
    const float *x;
    size_t n, ldx;
    uint32_t d, k, npanel;
    int ip, spherical;
    float *cent;   /* k * d, row-major */
    float *panels; /* npanel * d * VX_PANEL */
    float *cnorm;  /* npanel * VX_PANEL: |c|^2 (0 for ip), +inf padding */
    uint32_t *assign;
} vx_km;

typedef struct vx_km_job {
    const vx_km *km;
    size_t begin, end;
    int rc;
} vx_km_job;

static void *vx_km_assign_worker(void *arg)
{
    vx_km_job *j = arg;
    const vx_km *km = j->km;
    size_t bytes = sizeof(float), i;
    float *buf = vx_malloc(&km->ix->mem, bytes);
    if (!buf) {
        j->rc = VECIDX_ENOMEM;
        return NULL;
    }
    for (i = j->begin; i < j->end; i++)
        km->assign[i] = km->ix->kern->nearest(km->x + i * km->ldx, km->panels,
                                              km->d, km->npanel, km->cnorm,
                                              km->ip ? -1.0f : -2.0f, buf);
    vx_free(&km->ix->mem, buf, bytes);
    return NULL;
}

/* Rebuild the panel copy and norms of the row-major centroids. */
static void vx_km_panels(vx_km *km)
{
    uint32_t c, i;
    memset(km->panels, 0,
           (size_t)km->npanel * km->d * VX_PANEL * sizeof(float));
    for (c = km->k; c < km->npanel * VX_PANEL; c++) km->cnorm[c] = INFINITY;
    for (c = 0; c < km->k; c++) {
        const float *r = km->cent + (size_t)c * km->d;
        double s = 0;
        for (i = 0; i < km->d; i++) {
            *vx_panel_at(km->panels, km->d, c, i) = r[i];
            s += (double)r[i] * r[i];
        }
        km->cnorm[c] = km->ip ? 0.0f : (float)s;
    }
}

static int vx_km_assign(vx_km *km)
{
    vx_km_job jobs[64];
    vx_task tasks[64];
    unsigned nt = km->n < 4096 ? 1 : vx_threads(km->ix, NULL), t;
    size_t per;
    int rc = VECIDX_OK;
    if (nt > 64) nt = 64;
    per = (km->n + nt - 1) / nt;
    vx_km_panels(km);
    for (t = 0; t < nt; t++) {
        jobs[t].km = km;
        jobs[t].begin = t * per < km->n ? t * per : km->n;
        jobs[t].end = jobs[t].begin + per < km->n ? jobs[t].begin + per : km->n;
        jobs[t].rc = VECIDX_OK;
        tasks[t].fn = vx_km_assign_worker;
        tasks[t].arg = &jobs[t];
    }
    vx_run_parallel(tasks, nt);
    for (t = 0; t < nt; t++)
        if (jobs[t].rc != VECIDX_OK) rc = jobs[t].rc;
    return rc;
}

/* A centroid left with no points moves onto a point of the largest
** cluster, which the next assignment then splits in two. cnt[] only
** shrinks here and a moved centroid keeps 0: it owns no assigned point
** yet, so it must never be chosen as the cluster to take a point from,
** and the donor's count stays at most the points still assigned to it. */
static void vx_km_reseed(vx_km *km, uint32_t *cnt, uint64_t *rng)
{
    uint32_t c, big, i;
    size_t p;
    for (c = 0; c < km->k; c++) {
        size_t skip;
        if (cnt[c]) continue;
        for (big = 0, i = 1; i < km->k; i++)
            if (cnt[i] > cnt[big]) big = i;
        if (cnt[big] < 2) return; /* fewer distinct groups than centroids */
        skip = (size_t)(vx_splitmix(rng) % cnt[big]);
        for (p = 0; p < km->n; p++)
            if (km->assign[p] == big && skip-- == 0) break;
        if (p == km->n) return;
        memcpy(km->cent + (size_t)c * km->d, km->x + p * km->ldx,
               km->d * sizeof(float));
        cnt[big] -= cnt[big] / 2;
    }
}

/* Means of the assigned points (double sums), then reseeding, then
** normalising for spherical k-means. */
static int vx_km_update(vx_km *km, uint64_t *rng)
{
    size_t kd = (size_t)km->k * km->d, p;
    double *sum = vx_malloc(&km->ix->mem, kd * sizeof *sum);
    uint32_t *cnt = vx_malloc(&km->ix->mem, km->k * sizeof *cnt), c, i;
    if (!sum || !cnt) {
        vx_free(&km->ix->mem, sum, kd * sizeof *sum);
        vx_free(&km->ix->mem, cnt, km->k * sizeof *cnt);
        return VECIDX_ENOMEM;
    }
    memset(sum, 0, kd * sizeof *sum);
    memset(cnt, 0, km->k * sizeof *cnt);
    for (p = 0; p < km->n; p++) {
        const float *x = km->x + p * km->ldx;
        double *s = sum + (size_t)km->assign[p] * km->d;
        cnt[km->assign[p]]++;
        for (i = 0; i < km->d; i++) s[i] += x[i];
    }
    for (c = 0; c < km->k; c++)
        for (i = 0; cnt[c] && i < km->d; i++)
            km->cent[(size_t)c * km->d + i] =
                (float)(sum[(size_t)c * km->d + i] / cnt[c]);
    vx_km_reseed(km, cnt, rng);
    for (c = 0; km->spherical && c < km->k; c++) {
        float *r = km->cent + (size_t)c * km->d;
        double s = vx_sumsq(r, km->d);
        for (i = 0; s > 0 && i < km->d; i++) r[i] = (float)(r[i] / sqrt(s));
    }
    vx_free(&km->ix->mem, sum, kd * sizeof *sum);
    vx_free(&km->ix->mem, cnt, km->k * sizeof *cnt);
    return VECIDX_OK;
}

static void vx_km_free(vx_km *km)
{
    vx_mem *mem = &km->ix->mem;
    vx_free(mem, km->cent, (size_t)km->k * km->d * sizeof(float));
    vx_free(mem, km->panels,
            (size_t)km->npanel * km->d * VX_PANEL * sizeof(float));
    vx_free(mem, km->cnorm, (size_t)km->npanel * VX_PANEL * sizeof(float));
    vx_free(mem, km->assign, km->n * sizeof *km->assign);
}

static void vx_progress(const vecidx *ix, const char *stage, double done)
{
    if (ix->p.progress) ix->p.progress(stage, done, ix->p.progress_ctx);
}

/* Run k-means; km->cent holds the centroids after, in rows. Distinct
** points chosen at random (seeded) start it. Progress goes from `from` to
** `to`, the last report exactly `to`: an interpolated end point can round
** to just below 1, and a caller waiting for 1 would never see the end. */
static int vx_km_run(vx_km *km, int iters, uint64_t *rng, const char *stage,
                     double from, double to)
{
    vx_mem *mem = &km->ix->mem;
    uint32_t *pick = NULL, c;
    size_t i;
    int it, rc = VECIDX_OK;
    km->npanel = (km->k + VX_PANEL - 1) / VX_PANEL;
    km->cent = vx_malloc(mem, (size_t)km->k * km->d * sizeof(float));
    km->panels = vx_malloc(mem, (size_t)km->npanel * km->d * VX_PANEL *
                                    sizeof(float));
    km->cnorm = vx_malloc(mem, (size_t)km->npanel * VX_PANEL * sizeof(float));
    km->assign = vx_malloc(mem, km->n * sizeof *km->assign);
    if (km->n >= km->k) pick = vx_malloc(mem, km->n * sizeof *pick);
    if (!km->cent || !km->panels || !km->cnorm || !km->assign ||
        (km->n >= km->k && !pick)) {
        vx_free(mem, pick, km->n * sizeof *pick);
        vx_km_free(km);
        return VECIDX_ENOMEM;
    }
    for (i = 0; pick && i < km->n; i++) pick[i] = (uint32_t)i;
    for (c = 0; c < km->k; c++) {
        size_t p = c % km->n;
        if (pick) { /* partial Fisher-Yates: distinct points */
            size_t r = c + (size_t)(vx_splitmix(rng) % (km->n - c));
            uint32_t t = pick[c];
            pick[c] = pick[r];
            pick[r] = t;
            p = pick[c];
        }
        memcpy(km->cent + (size_t)c * km->d, km->x + p * km->ldx,
               km->d * sizeof(float));
    }
    vx_free(mem, pick, km->n * sizeof *pick);
    for (it = 0; it < iters && rc == VECIDX_OK; it++) {
        if ((rc = vx_km_assign(km)) == VECIDX_OK) rc = vx_km_update(km, rng);
        vx_progress(km->ix, stage,
                    it + 1 == iters ? to
                                    : from + (to - from) * (it + 1) / iters);
    }
    if (rc != VECIDX_OK) vx_km_free(km);
    return rc;
}

/* Everything trained, freed; the index is untrained again after. */
static void vx_ivf_destroy(vecidx *ix)
{
    vx_ivf *v = &ix->ivf;
    uint32_t li;
    if (v->cq) vecidx_close(v->cq);
    if (!v->model_mapped) vx_free(&ix->mem, v->cent, v->model_bytes);
    vx_free(&ix->mem, v->bnorm, (size_t)v->m * VX_IVF_KSUB * sizeof(float));
    vx_free(&ix->mem, v->cbias, (size_t)v->npanel * VX_PANEL * sizeof(float));
    for (li = 0; v->lists && li < v->nlist; li++)
        vx_ivl_free(ix, &v->lists[li]);
    vx_free(&ix->mem, v->lists, (size_t)v->nlist * sizeof *v->lists);
    if (!v->map_mapped)
        vx_table_free(&ix->mem, v->map, vx_ivf_map_bytes(v), v->map_huge);
    vx_free(&ix->mem, v->lazy, sizeof *v->lazy);
    memset(v, 0, sizeof *v);
}

/* Lay out the model block: centroid panels, their norms, codebooks. */
static void vx_ivf_model_point(vecidx *ix, float *base)
{
    vx_ivf *v = &ix->ivf;
    size_t cent = (size_t)v->npanel * ix->p.dim * VX_PANEL;
    v->cent = base;
    v->cnorm = base + cent;
    v->book = v->cnorm + (size_t)v->npanel * VX_PANEL;
}

static size_t vx_ivf_model_floats(const vecidx *ix, uint32_t nlist)
{
    size_t np = (nlist + VX_PANEL - 1) / VX_PANEL;
    return np * ix->p.dim * VX_PANEL + np * VX_PANEL +
           (size_t)VX_IVF_KSUB * ix->p.dim;
}

/* Empty model and lists for nlist centroids and m slices. */
static int vx_ivf_model_alloc(vecidx *ix, uint32_t nlist, uint32_t m)
{
    vx_ivf *v = &ix->ivf;
    float *base;
    memset(v, 0, sizeof *v);
    v->nlist = nlist;
    v->m = m;
    v->npanel = (nlist + VX_PANEL - 1) / VX_PANEL;
    /* a new index has the layout of format 7 (vx_ivf_cw, vx_ivf.vb) */
    v->map_words = ix->p.ivf_keep_vectors ? 2 : 1;
    v->vb = ix->p.ivf_keep_vectors
                ? ((size_t)ix->p.dim + (ix->p.metric == VECIDX_COSINE)) * 4
                : 0;
    v->model_bytes = vx_ivf_model_floats(ix, nlist) * sizeof(float);
    base = vx_malloc(&ix->mem, v->model_bytes);
    v->lists = vx_malloc(&ix->mem, (size_t)nlist * sizeof *v->lists);
    if (!base || !v->lists) {
        vx_free(&ix->mem, base, v->model_bytes);
        vx_free(&ix->mem, v->lists, (size_t)nlist * sizeof *v->lists);
        memset(v, 0, sizeof *v);
        return VECIDX_ENOMEM;
    }
    memset(base, 0, v->model_bytes);
    memset(v->lists, 0, (size_t)nlist * sizeof *v->lists);
    vx_ivf_model_point(ix, base);
    return VECIDX_OK;
}

/* An HNSW graph over the centroids, for large nlist. Linked on one
** thread whatever params.threads says: a parallel build depends on thread
** timing, and the graph is rebuilt at every open, so only a sequential
** build gives the same probes before a save and after it. */
static int vx_ivf_build_cq(vecidx *ix)
{
    vx_ivf *v = &ix->ivf;
    vecidx_params p;
    uint64_t *keys;
    float *rows;
    uint32_t c, i;
    int rc;
    vecidx_params_init(&p, VECIDX_HNSW,
                       ix->p.metric == VECIDX_L2 ? VECIDX_L2 : VECIDX_IP,
                       ix->p.dim);
    p.seed = ix->p.seed;
    p.threads = 1;
    p.allocator = ix->p.allocator;
    keys = vx_malloc(&ix->mem, (size_t)v->nlist * sizeof *keys);
    rows = vx_malloc(&ix->mem, (size_t)v->nlist * ix->p.dim * sizeof *rows);
    rc = keys && rows ? vecidx_create(&p, &v->cq) : VECIDX_ENOMEM;
    for (c = 0; c < v->nlist && rc == VECIDX_OK; c++) {
        keys[c] = c;
        for (i = 0; i < ix->p.dim; i++)
            rows[(size_t)c * ix->p.dim + i] = *vx_panel_at(v->cent, ix->p.dim,
                                                           c, i);
    }
    if (rc == VECIDX_OK) rc = vecidx_add_batch(v->cq, v->nlist, keys, rows);
    if (rc != VECIDX_OK && v->cq) {
        vecidx_close(v->cq);
        v->cq = NULL;
    }
    vx_free(&ix->mem, keys, (size_t)v->nlist * sizeof *keys);
    vx_free(&ix->mem, rows, (size_t)v->nlist * ix->p.dim * sizeof *rows);
    return rc == VECIDX_OK ? rc : VECIDX_ENOMEM;
}

/* Centroid norms (when `full`: not read from a file) and the assignment
** bias derived from them. */
static int vx_ivf_derive_coarse(vecidx *ix, int full)
{
    vx_ivf *v = &ix->ivf;
    uint32_t c, i;
    for (c = 0; full && c < v->nlist; c++) {
        double s = 0;
        for (i = 0; i < ix->p.dim; i++) {
            float x = *vx_panel_at(v->cent, ix->p.dim, c, i);
            s += (double)x * x;
        }
        v->cnorm[c] = (float)s;
    }
    if (!(v->cbias = vx_malloc(&ix->mem,
                               (size_t)v->npanel * VX_PANEL * sizeof(float))))
        return VECIDX_ENOMEM;
    for (c = 0; c < v->npanel * VX_PANEL; c++)
        v->cbias[c] = c >= v->nlist               ? INFINITY
                      : ix->p.metric == VECIDX_L2 ? v->cnorm[c]
                                                  : 0.0f;
    return VECIDX_OK;
}

/* Tables derived from the codebooks (sub-centroid norms), and the HNSW
** graph over the centroids when that quantizer is chosen. */
static int vx_ivf_derive(vecidx *ix)
{
    vx_ivf *v = &ix->ivf;
    size_t nb = (size_t)v->m * VX_IVF_KSUB;
    uint32_t j, k, i;
    if (!(v->bnorm = vx_malloc(&ix->mem, nb * sizeof(float))))
        return VECIDX_ENOMEM;
    for (j = 0; j < v->m; j++)
        for (k = 0; k < VX_IVF_KSUB; k++) {
            uint32_t len = vx_ivf_len(ix, j);
            double s = 0;
            for (i = 0; i < len; i++) {
                float b = *vx_panel_at((float *)vx_ivf_book(ix, j), len, k, i);
                s += (double)b * b;
            }
            v->bnorm[(size_t)j * VX_IVF_KSUB + k] = (float)s;
        }
    if (!v->cq && /* not read from a file */
        (ix->p.ivf_quantizer == VECIDX_QUANT_HNSW ||
         (ix->p.ivf_quantizer == VECIDX_QUANT_AUTO &&
          v->nlist >= VX_IVF_HNSW_NLIST)))
        return vx_ivf_build_cq(ix);
    return VECIDX_OK;
}

static uint32_t vx_ivf_pick_nlist(const vecidx *ix, size_t n)
{
    size_t nl = (size_t)(4 * sqrt((double)n)), most = n / 39;
    if (ix->p.ivf_nlist) return ix->p.ivf_nlist;
    if (nl > most) nl = most;
    if (nl < 1) nl = 1;
    return nl > VX_IVF_MAX_NLIST ? VX_IVF_MAX_NLIST : (uint32_t)nl;
}

static uint32_t vx_ivf_pick_m(const vecidx *ix)
{
    uint32_t m = ix->p.dim / 4;
    if (ix->p.pq_m) return ix->p.pq_m;
    return m < 1 ? 1 : m > 64 ? 64 : m;
}

/* Up to ns rows of data picked at random (seeded), in random order,
** normalised for cosine, into a new array. */
static float *vx_ivf_sample(vecidx *ix, const float *data, size_t n, size_t ns,
                            uint64_t *rng)
{
    size_t dim = ix->p.dim, i, bytes = ns * dim * sizeof(float);
    uint32_t *pick = vx_malloc(&ix->mem, n * sizeof *pick);
    float *xs = vx_malloc(&ix->mem, bytes);
    if (pick && xs) {
        for (i = 0; i < n; i++) pick[i] = (uint32_t)i;
        for (i = 0; i < ns; i++) {
            size_t r = i + (size_t)(vx_splitmix(rng) % (n - i));
            uint32_t t = pick[i];
            const float *row;
            pick[i] = pick[r];
            pick[r] = t;
            row = vx_ivf_prep_vec(ix, data + pick[i] * dim, xs + i * dim);
            if (row != xs + i * dim) memcpy(xs + i * dim, row, dim * 4);
        }
    } else {
        vx_free(&ix->mem, xs, bytes);
        xs = NULL;
    }
    vx_free(&ix->mem, pick, n * sizeof *pick);
    return xs;
}

/* Train the sub-quantizers on the residuals of the first nps samples. */
static int vx_ivf_train_pq(vecidx *ix, const float *xs, size_t nps,
                           uint64_t *rng)
{
    vx_ivf *v = &ix->ivf;
    size_t dim = ix->p.dim, i, bytes = nps * dim * sizeof(float);
    float *res = vx_malloc(&ix->mem, bytes);
    uint32_t j, k, t;
    int rc = res ? VECIDX_OK : VECIDX_ENOMEM;
    for (i = 0; res && i < nps; i++) {
        uint32_t li = vx_ivf_assign(ix, xs + i * dim);
        for (t = 0; t < dim; t++)
            res[i * dim + t] = xs[i * dim + t] -
                               *vx_panel_at(v->cent, dim, li, t);
    }
    for (j = 0; j < v->m && rc == VECIDX_OK; j++) {
        uint32_t len = vx_ivf_len(ix, j);
        vx_km km;
        memset(&km, 0, sizeof km);
        km.ix = ix;
        km.x = res + vx_ivf_off(ix, j);
        km.n = nps;
        km.ldx = dim;
        km.d = len;
        km.k = VX_IVF_KSUB;
        rc = vx_km_run(&km, VX_IVF_PQ_ITERS, rng, "pq", (double)j / v->m,
                       (double)(j + 1) / v->m);
        for (k = 0; rc == VECIDX_OK && k < VX_IVF_KSUB; k++)
            for (t = 0; t < len; t++)
                *vx_panel_at((float *)vx_ivf_book(ix, j), len, k,
                             t) = km.cent[(size_t)k * len + t];
        if (rc == VECIDX_OK) vx_km_free(&km);
    }
    vx_free(&ix->mem, res, bytes);
    return rc;
}

/* Train on n rows of data (validated): the model is built aside, while
** searches still use the buffer (the index is not marked trained). Leaves
** the index unchanged on failure; does not absorb buffered vectors. */
static int vx_ivf_train(vecidx *ix, size_t n, const float *data)
{
    uint32_t nlist = vx_ivf_pick_nlist(ix, n), m = vx_ivf_pick_m(ix), c, i;
    uint64_t rng = ix->p.seed ^ 0x5bd1e9955bd1e995ull;
    size_t ns = (size_t)VX_IVF_PER_CENTROID * nlist;
    float *xs;
    vx_km km;
    int rc;
    if (ns > n) ns = n;
    if (!(xs = vx_ivf_sample(ix, data, n, ns, &rng))) return VECIDX_ENOMEM;
    memset(&km, 0, sizeof km);
    km.ix = ix;
    km.x = xs;
    km.n = ns;
    km.ldx = km.d = ix->p.dim;
    km.k = nlist;
    km.ip = ix->p.metric != VECIDX_L2;
    km.spherical = ix->p.metric == VECIDX_COSINE;
    rc = vx_km_run(&km, VX_IVF_KMEANS_ITERS, &rng, "kmeans", 0, 1);
    if (rc == VECIDX_OK) {
        if ((rc = vx_ivf_model_alloc(ix, nlist, m)) == VECIDX_OK)
            for (c = 0; c < nlist; c++)
                for (i = 0; i < ix->p.dim; i++)
                    *vx_panel_at(ix->ivf.cent, ix->p.dim, c,
                                 i) = km.cent[(size_t)c * ix->p.dim + i];
        vx_km_free(&km);
    }
    if (rc == VECIDX_OK) rc = vx_ivf_derive_coarse(ix, 1);
    if (rc == VECIDX_OK)
        rc = vx_ivf_train_pq(
            ix, xs, ns < VX_IVF_PQ_SAMPLES ? ns : VX_IVF_PQ_SAMPLES, &rng);
    if (rc == VECIDX_OK) rc = vx_ivf_derive(ix);
    vx_free(&ix->mem, xs, ns * ix->p.dim * sizeof(float));
    if (rc != VECIDX_OK) vx_ivf_destroy(ix);
    return rc;
}

/* Move the buffered vectors of an untrained index into the lists of the
** just-trained one, then switch searches over to the lists and release
** the buffer. The lists are filled while the index still counts as
** untrained, so searches keep using the buffer until the switch, which
** holds the key-set lock only for a moment. */
static int vx_ivf_absorb(vecidx *ix)
{
    vx_store *s = &ix->store, old;
    size_t n = s->count, i = 0, dim = ix->p.dim;
    uint64_t *keys = NULL;
    float *vecs = NULL;
    vx_ivf_prep pr;
    uint32_t slot;
    int rc = VECIDX_OK;
    if (n) {
        keys = vx_malloc(&ix->mem, n * sizeof *keys);
        vecs = vx_malloc(&ix->mem, n * dim * sizeof *vecs);
        rc = keys && vecs ? VECIDX_OK : VECIDX_ENOMEM;
    }
    for (slot = 0; rc == VECIDX_OK && slot < s->nslots; slot++)
        if (vx_store_live(s, slot) == VX_LIVE) {
            keys[i] = vx_store_key(s, slot);
            memcpy(vecs + i++ * dim, vx_store_vec(s, slot), dim * 4);
        }
    if (n) vx_progress(ix, "encode", 0);
    if (n && rc == VECIDX_OK && (rc = vx_ivf_prepare(ix, n, vecs, &pr)) == 0) {
        vx_ivf_apply(ix, &pr, keys, vecs);
        vx_ivf_prep_free(ix, &pr);
    }
    if (rc == VECIDX_OK) {
        vx_snap_detach(ix);
        vx_keys_lock(ix);
        VX_STORE(&ix->ivf.trained, 1);
        __atomic_store_n(&ix->act.ivf_added, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&ix->act.ivf_base, ix->ivf.count, __ATOMIC_RELAXED);
        old = *s;
        vx_store_init(s, ix->p.dim, ix->p.metric == VECIDX_COSINE,
                      VECIDX_STORE_F32, 0, 0, 0, &ix->lock);
        vx_keys_unlock(ix);
        vx_store_destroy(&old, &ix->mem);
    }
    if (n) vx_progress(ix, "encode", 1);
    vx_free(&ix->mem, keys, n * sizeof *keys);
    vx_free(&ix->mem, vecs, n * dim * sizeof *vecs);
    return rc;
}

/* Train on data (or, with data NULL, on the buffered vectors) and move
** the buffer into the lists; all or nothing. */
static int vx_ivf_train_all(vecidx *ix, size_t n, const float *data)
{
    vx_store *s = &ix->store;
    float *own = NULL;
    size_t bytes = 0, i = 0;
    uint32_t slot;
    int rc;
    if (!data) { /* the buffer's vectors, gathered into one array */
        n = s->count;
        bytes = n * (size_t)ix->p.dim * sizeof(float);
        if (!(own = vx_malloc(&ix->mem, bytes))) return VECIDX_ENOMEM;
        for (slot = 0; slot < s->nslots; slot++)
            if (vx_store_live(s, slot) == VX_LIVE)
                memcpy(own + i++ * ix->p.dim, vx_store_vec(s, slot),
                       (size_t)ix->p.dim * sizeof(float));
        data = own;
    }
    rc = vx_ivf_train(ix, n, data);
    vx_free(&ix->mem, own, bytes);
    if (rc == VECIDX_OK && (rc = vx_ivf_absorb(ix)) != VECIDX_OK)
        vx_ivf_destroy(ix);
    return rc;
}

/* The auto-training threshold (params.ivf_train_size). */
static size_t vx_ivf_train_size(const vecidx *ix)
{
    size_t nl = ix->p.ivf_nlist ? ix->p.ivf_nlist : 256;
    if (ix->p.ivf_train_size) return ix->p.ivf_train_size;
    return 39 * nl > 10000 ? 39 * nl : 10000;
}

/* Verify the lists against the key map, both ways. */
static const char *vx_ivf_check(const vecidx *ix)
{
    const vx_ivf *v = &ix->ivf;
    uint64_t total = 0;
    uint32_t li, pos;
    size_t i, cells = 0;
    if (!v->trained) return NULL;
    for (li = 0; li < v->nlist; li++) {
        const vx_ivlist *l = &v->lists[li];
        if (l->n > l->cap && !l->mapped)
            return "a list is longer than its room";
        total += l->n;
        for (pos = 0; pos < l->n; pos++) {
            size_t c = vx_ivf_map_find(v, l->keys[pos]);
            if (c == SIZE_MAX || (uint32_t)vx_ivf_cw(v, c) != pos ||
                vx_ivf_cl(vx_ivf_cw(v, c)) != li)
                return "a list entry is missing from the key map";
        }
    }
    for (i = 0; i < v->map_cap; i++)
        if (vx_ivf_cw(v, i) != VX_IVF_EMPTY) cells++;
    if (total != v->count || cells != v->map_n || cells != total)
        return "list lengths, key map and count disagree";
    if (ix->store.count) return "vectors are still buffered after training";
    return NULL;
}

/* ======================================================================
** 8. File format
**
** One file per index, described byte by byte in docs/FORMAT.md: a 512-byte
** header (magic, version, byte order, parameters, counters, section table,
** CRC-32C of the header), then page-aligned sections, each with its own
** CRC-32C: the storage chunks exactly as they sit in memory, the HNSW
** arena, and the key map. Opening maps the file and points the chunk table
** straight into the mapping, so the vectors and level-0 links -- nearly
** all of the bytes -- are used in place with no parse and no copy.
**
** Every system call goes through vx_io, a table of function pointers, so
** that tests can fail the Nth call or simulate a crash.
** ====================================================================== */

/* ---- CRC-32C (Castagnoli) --------------------------------------------------
 */

static uint32_t vx_crc_table[8][256];
static pthread_once_t vx_crc_once = PTHREAD_ONCE_INIT;

static void vx_crc_init(void)
{
    uint32_t i, j, c;
    for (i = 0; i < 256; i++) {
        for (c = i, j = 0; j < 8; j++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        vx_crc_table[0][i] = c;
    }
    for (i = 0; i < 256; i++)
        for (j = 1; j < 8; j++)
            vx_crc_table[j][i] = (vx_crc_table[j - 1][i] >> 8) ^
                                 vx_crc_table[0][vx_crc_table[j - 1][i] & 0xff];
}

/* Slicing-by-8: eight table lookups per 8 bytes, portable to any CPU. */
static uint32_t vx_crc_sw(uint32_t crc, const unsigned char *p, size_t n)
{
    for (; n && ((uintptr_t)p & 7); n--)
        crc = vx_crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    for (; n >= 8; n -= 8, p += 8) {
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 |
                             (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 |
                      (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        crc = vx_crc_table[7][lo & 0xff] ^ vx_crc_table[6][(lo >> 8) & 0xff] ^
              vx_crc_table[5][(lo >> 16) & 0xff] ^ vx_crc_table[4][lo >> 24] ^
              vx_crc_table[3][hi & 0xff] ^ vx_crc_table[2][(hi >> 8) & 0xff] ^
              vx_crc_table[1][(hi >> 16) & 0xff] ^ vx_crc_table[0][hi >> 24];
    }
    for (; n; n--) crc = vx_crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(VX_HAVE_AVX2)
/* SSE4.2 has a CRC-32C instruction: about 8 bytes per cycle. */
__attribute__((target("sse4.2"))) static uint32_t
vx_crc_hw(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t c = crc;
    for (; n && ((uintptr_t)p & 7); n--) c = _mm_crc32_u8((uint32_t)c, *p++);
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
    }
    for (; n; n--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

static uint32_t (*vx_crc_impl)(uint32_t, const unsigned char *, size_t);

static void vx_crc_setup(void)
{
    vx_crc_init();
    vx_crc_impl = vx_crc_sw;
#if defined(VX_HAVE_AVX2)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) vx_crc_impl = vx_crc_hw;
#endif
}

/* CRC-32C of the bytes hashed so far (crc) followed by p[0..n). Start
** with crc = 0; vx_crc32c_more(vx_crc32c_more(0, a), b) = CRC of a||b. */
static uint32_t vx_crc32c_more(uint32_t crc, const void *p, size_t n)
{
    pthread_once(&vx_crc_once, vx_crc_setup);
    return ~vx_crc_impl(~crc, p, n);
}

/* ---- I/O layer ------------------------------------------------------------
 */

typedef struct vx_io {
    int (*open)(const char *path, int flags, int mode);
    int (*close)(int fd);
    ssize_t (*pread)(int fd, void *buf, size_t n, off_t off);
    ssize_t (*pwrite)(int fd, const void *buf, size_t n, off_t off);
    int (*ftruncate)(int fd, off_t len);
    int (*flock)(int fd, int op);
    int (*fsync)(int fd);
    int (*fstat)(int fd, struct stat *st);
    int (*rename)(const char *from, const char *to);
    int (*unlink)(const char *path);
    void *(*mmap)(size_t len, int prot, int fd);
    int (*munmap)(void *p, size_t len);
} vx_io;

static int vx_sys_open(const char *path, int flags, int mode)
{
    return open(path, flags | O_CLOEXEC, mode);
}

static void *vx_sys_mmap(size_t len, int prot, int fd)
{
    void *p = mmap(NULL, len, prot, MAP_PRIVATE, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

static const vx_io vx_io_sys = {vx_sys_open, close,  pread,       pwrite,
                                ftruncate,   flock,  fsync,       fstat,
                                rename,      unlink, vx_sys_mmap, munmap};
static const vx_io *vx_io_cur = &vx_io_sys; /* tests swap this */

static int vx_io_close(int fd)
{
    return vx_io_cur->close(fd);
}

/* Read n bytes at off into buf, riding out short reads and EINTR: 0 when
** all were read, -1 when a read failed (errno set), 1 when the file ends
** first. */
static int vx_io_read_all(int fd, void *buf, size_t n, uint64_t off)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t r = vx_io_cur->pread(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) return 1;
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

/* Write all of buf at off, riding out short writes and EINTR. */
static int vx_io_write_all(int fd, const void *buf, size_t n, off_t off)
{
    const unsigned char *p = buf;
    while (n) {
        ssize_t w = vx_io_cur->pwrite(fd, p, n, off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

/* Kept float32 vectors in a mapped file are read a few at a time, to
** re-rank: without this, readahead pulled them all in (200k x 384, int8
** codes with vectors kept, cold cache: 416 MB resident after 10k queries,
** 215 MB with it). Advice only: its failure changes nothing. */
static void vx_advise_random(const void *p, size_t len)
{
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t m = pg > 0 ? (uintptr_t)pg - 1 : 4095u;
    uintptr_t a = ((uintptr_t)p + m) & ~m, e = ((uintptr_t)p + len) & ~m;
    if (e > a) (void)posix_madvise((void *)a, e - a, POSIX_MADV_RANDOM);
}

/* fsync the directory holding path, so a rename in it is durable. */
static int vx_io_sync_dir(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    size_t len = slash ? (size_t)(slash - path) : 1;
    int fd, rc;
    if (len >= sizeof dir) return -1;
    if (slash) {
        memcpy(dir, path, len ? len : 1);
        dir[len ? len : 1] = 0;
    } else {
        dir[0] = '.';
        dir[1] = 0;
    }
    if ((fd = vx_io_cur->open(dir, O_RDONLY, 0)) < 0) return -1;
    rc = vx_io_cur->fsync(fd);
    vx_io_cur->close(fd);
    return rc;
}

/* ---- header ----------------------------------------------------------------
 */

#define VX_FILE_MAGIC "VECIDX\x1a\n"
/* Version 2 is version 1 with HNSW records padded to whole cache lines
** (vx_store_init). Version 3 adds a repair pass under way (its state and
** marks, and doomed slots) and a main file that continues a log under
** another salt (a checkpoint that writes went on during). Files without
** these are still written as version 1 or 2, so that older libraries
** keep reading them. Version 4 is version 3 with compressed vector
** storage (int8 or binary codes, float32 vectors kept or not), described
** by the storage word; only such files are written as version 4.
** Version 5 moves kept float32 vectors out of the chunks into a section
** of their own, named in a table of further sections after the header
** (VX_FILE_XTAB); only files with kept vectors are written as version 5.
** Version 6 has that table in every file and adds a checksum per piece --
** per chunk (VX_XTYPE_PIECES), per IVF-PQ list (in the directory) -- so
** that a reader can verify each piece when it first reads it instead of
** all at open. Every file of the current record layout is written as
** version 6; a handle that keeps an older layout (packed graph records
** of version 1, kept vectors inside the chunks of version 4) writes its
** old version, which readers verify whole. Version 7 is version 6 with,
** for an IVF-PQ index that keeps full vectors, the key in every map cell
** (vx_ivf_cw) and under cosine each kept vector's inverse norm after it
** (vx_ivf.vb): such an index has that layout from its training on, and
** only such files are written as version 7; lists and map read from an
** older file keep theirs. */
#define VX_FILE_VERSION 7u
#define VX_FILE_HEADER 512u
#define VX_FILE_PAGE 4096u
#define VX_FILE_BOM 0x01020304u
#define VX_FILE_NSECT 13
enum {
    VX_SECT_CHUNKS,
    VX_SECT_ARENA,
    VX_SECT_MAPKEYS,
    VX_SECT_MAPSLOTS,
    VX_SECT_FREE,
    VX_SECT_IVF_MODEL, /* centroids, their norms, codebooks */
    VX_SECT_IVF_DIR,   /* per list: u64 offset into DATA, u32 n, u32 0 */
    VX_SECT_IVF_DATA,  /* per list: keys, codes (padded to 8), vectors */
    VX_SECT_IVF_MAP,   /* key map cells */
    VX_SECT_REPAIR,    /* v3: repair pass state, then a mark per slot */
    VX_SECT_KEPT,      /* v5: kept float32 vectors, per chunk */
    VX_SECT_PIECES,    /* v6: a CRC-32C per chunk, then per kept part */
    VX_SECT_CQ         /* v6: the IVF-PQ centroid graph, an index image */
};
#define VX_FILE_IVF 440u    /* header offset of the IVF-PQ fields */
#define VX_FILE_REPAIR 488u /* header offset of the repair section entry */
#define VX_REPAIR_HEAD (32u + 4u * VX_NORM_BUCKETS) /* before the marks */
/* Version 5: a table of further sections in the rest of the first page,
** so that sections can be added without another header: at VX_FILE_XTAB
** a u32 entry count and the CRC-32C of the entries, then entries of
** VX_XENT bytes: u32 type, u32 flags, u64 offset, u64 length, u32
** CRC-32C, u32 zero. A type this library does not know is refused when
** its flags have VX_XREQUIRED (the file cannot be read without it), and
** otherwise skipped. */
#define VX_FILE_XTAB 512u
#define VX_XENT 32u
#define VX_XMAX ((VX_FILE_PAGE - VX_FILE_XTAB - 8u) / VX_XENT)
#define VX_XREQUIRED 1u
#define VX_XTYPE_KEPT 1u   /* the kept float32 vectors (VX_SECT_KEPT) */
#define VX_XTYPE_PIECES 2u /* checksums per chunk (VX_SECT_PIECES) */
#define VX_XTYPE_CQ 3u     /* the IVF-PQ centroid graph (VX_SECT_CQ) */

typedef struct vx_sect {
    uint64_t off, len;
    uint32_t crc;
} vx_sect;

/* Everything the header holds, decoded. */
typedef struct vx_fhdr {
    uint32_t version;
    vecidx_params p;
    uint32_t shift, rec, link0, nslots, count, nburied, nchunks, nfree;
    uint64_t rng;
    uint32_t entry;
    int32_t maxlevel;
    uint64_t arena_n;
    uint32_t arena_free[VX_HNSW_MAX_LEVEL + 1];
    uint64_t map_cap, salt;
    /* v3: this file holds records 1..log_seq of the log salted log_salt
    ** (0: none; the log must then carry this file's salt). */
    uint64_t log_salt, log_seq;
    /* IVF-PQ: trained state (all zero before training) */
    uint32_t ivf_trained, ivf_nlist, ivf_m;
    uint32_t reserved; /* v4: bits 9-15 of the storage word; else it all */
    uint64_t ivf_count, ivf_map_cap;
    vx_sect sect[VX_FILE_NSECT];
    int aligned; /* derived: line-aligned graph records (vx_file_validate) */
} vx_fhdr;

/* Words per IVF-PQ map cell in a file with header h (vx_ivf_cw). */
static size_t vx_fhdr_map_words(const vx_fhdr *h)
{
    return h->version >= 7 && h->ivf_trained ? 2 : 1;
}

static uint64_t vx_fhdr_map_bytes(const vx_fhdr *h)
{
    return h->ivf_map_cap * vx_fhdr_map_words(h) * 8;
}

/* Kept bytes per IVF-PQ list entry in a file with header h (vx_ivf.vb). */
static size_t vx_fhdr_ivf_vb(const vx_fhdr *h)
{
    if (!h->p.ivf_keep_vectors) return 0;
    return ((size_t)h->p.dim +
            (h->version >= 7 && h->p.metric == VECIDX_COSINE)) *
           4;
}

/* Fixed little-endian encoding, whatever the host: the offsets below are
** the format (docs/FORMAT.md), pinned here and nowhere else. */
static void vx_put32(unsigned char *b, size_t off, uint32_t v)
{
    b[off] = (unsigned char)v;
    b[off + 1] = (unsigned char)(v >> 8);
    b[off + 2] = (unsigned char)(v >> 16);
    b[off + 3] = (unsigned char)(v >> 24);
}

static void vx_put64(unsigned char *b, size_t off, uint64_t v)
{
    vx_put32(b, off, (uint32_t)v);
    vx_put32(b, off + 4, (uint32_t)(v >> 32));
}

static uint32_t vx_get32(const unsigned char *b, size_t off)
{
    return (uint32_t)b[off] | (uint32_t)b[off + 1] << 8 |
           (uint32_t)b[off + 2] << 16 | (uint32_t)b[off + 3] << 24;
}

static uint64_t vx_get64(const unsigned char *b, size_t off)
{
    return vx_get32(b, off) | (uint64_t)vx_get32(b, off + 4) << 32;
}

static void vx_fhdr_encode(const vx_fhdr *h, unsigned char *b)
{
    int i;
    memset(b, 0, VX_FILE_HEADER);
    memcpy(b, VX_FILE_MAGIC, 8);
    vx_put32(b, 8, h->version);
    vx_put32(b, 12, VX_FILE_BOM);
    vx_put32(b, 16, VX_FILE_HEADER);
    vx_put32(b, 20, VX_FILE_PAGE);
    vx_put32(b, 24, (uint32_t)h->p.kind);
    vx_put32(b, 28, (uint32_t)h->p.metric);
    vx_put32(b, 32, h->p.dim);
    vx_put32(b, 36, h->p.hnsw_m);
    vx_put32(b, 40, h->p.hnsw_ef_construction);
    vx_put32(b, 44, h->p.hnsw_ef_search);
    vx_put32(b, 48, h->p.ivf_nlist);
    vx_put32(b, 52, h->p.ivf_nprobe);
    vx_put32(b, 56, h->p.pq_m);
    vx_put32(b, 60, h->p.pq_nbits);
    vx_put64(b, 64, h->p.seed);
    vx_put32(b, 72, h->shift);
    vx_put32(b, 76, h->rec);
    vx_put32(b, 80, h->link0);
    vx_put32(b, 84, h->nslots);
    vx_put32(b, 88, h->count);
    vx_put32(b, 92, h->nburied);
    vx_put32(b, 96, h->nchunks);
    vx_put32(b, 100, h->nfree);
    vx_put64(b, 104, h->rng);
    vx_put32(b, 112, h->entry);
    vx_put32(b, 116, (uint32_t)h->maxlevel);
    vx_put64(b, 120, h->arena_n);
    for (i = 0; i <= VX_HNSW_MAX_LEVEL; i++)
        vx_put32(b, 128 + 4 * (size_t)i, h->arena_free[i]);
    vx_put64(b, 192, h->map_cap);
    vx_put64(b, 200, h->salt);
    vx_put64(b, 208, h->log_salt);
    vx_put64(b, 432, h->log_seq);
    for (i = 0; i < VX_SECT_KEPT; i++) {
        size_t at = i == VX_SECT_REPAIR ? VX_FILE_REPAIR : 216 + 24 * (size_t)i;
        vx_put64(b, at, h->sect[i].off);
        vx_put64(b, at + 8, h->sect[i].len);
        vx_put32(b, at + 16, h->sect[i].crc);
    }
    vx_put32(b, VX_FILE_IVF, h->ivf_trained);
    vx_put32(b, VX_FILE_IVF + 4, h->ivf_nlist);
    vx_put32(b, VX_FILE_IVF + 8, h->ivf_m);
    /* v4 storage word: kind, keep_vectors, refine; 0 in older versions */
    vx_put32(b, VX_FILE_IVF + 12,
             h->version < 4
                 ? 0
                 : h->p.storage | (h->p.keep_vectors ? 1u : 0u) << 8 |
                       (h->p.refine > 0xffff ? 0xffffu : h->p.refine) << 16);
    vx_put32(b, VX_FILE_IVF + 16, h->p.ivf_keep_vectors);
    vx_put32(b, VX_FILE_IVF + 20, h->p.ivf_refine);
    vx_put32(b, VX_FILE_IVF + 24, h->p.ivf_quantizer);
    vx_put32(b, VX_FILE_IVF + 28, h->p.ivf_train_size);
    vx_put64(b, VX_FILE_IVF + 32, h->ivf_count);
    vx_put64(b, VX_FILE_IVF + 40, h->ivf_map_cap);
    vx_put32(b, VX_FILE_HEADER - 4, vx_crc32c_more(0, b, VX_FILE_HEADER - 4));
}

/* The table of further sections (version 5), after the header. */
static size_t vx_xtab_encode(const vx_fhdr *h, unsigned char *b)
{
    static const struct {
        uint32_t type, flags;
        int sect;
    } ent[] = {{VX_XTYPE_KEPT, VX_XREQUIRED, VX_SECT_KEPT},
               {VX_XTYPE_PIECES, 0, VX_SECT_PIECES},
               {VX_XTYPE_CQ, 0, VX_SECT_CQ}};
    unsigned char *e = b + VX_FILE_XTAB + 8;
    uint32_t n = 0, i;
    memset(b + VX_FILE_XTAB, 0, 8 + 3 * VX_XENT);
    for (i = 0; i < 3; i++) {
        const vx_sect *sc = &h->sect[ent[i].sect];
        /* kept vectors with keep_vectors (always in version 5); piece
        ** checksums in version 6 */
        if (i == 0   ? h->version < 6 ? 0
                                      : !h->p.keep_vectors ||
                                          h->p.storage == VECIDX_STORE_F32
            : i == 1 ? h->version < 6
                     : !sc->len)
            continue;
        vx_put32(e, VX_XENT * n, ent[i].type);
        vx_put32(e, VX_XENT * n + 4, ent[i].flags);
        vx_put64(e, VX_XENT * n + 8, sc->off);
        vx_put64(e, VX_XENT * n + 16, sc->len);
        vx_put32(e, VX_XENT * n + 24, sc->crc);
        n++;
    }
    vx_put32(b, VX_FILE_XTAB, n);
    vx_put32(b, VX_FILE_XTAB + 4, vx_crc32c_more(0, e, (size_t)n * VX_XENT));
    return VX_FILE_XTAB + 8 + (size_t)n * VX_XENT;
}

static int vx_xtab_decode(const unsigned char *b, size_t size, vx_fhdr *h)
{
    uint32_t n, i, seen = 0;
    const unsigned char *e = b + VX_FILE_XTAB + 8;
    if (size < VX_FILE_XTAB + 8 || (n = vx_get32(b, VX_FILE_XTAB)) > VX_XMAX ||
        size < VX_FILE_XTAB + 8 + (size_t)n * VX_XENT ||
        vx_get32(b, VX_FILE_XTAB + 4) !=
            vx_crc32c_more(0, e, (size_t)n * VX_XENT))
        return vx_err(NULL, VECIDX_ECORRUPT,
                      "table of sections after the header is damaged");
    for (i = 0; i < n; i++, e += VX_XENT) {
        uint32_t type = vx_get32(e, 0), flags = vx_get32(e, 4);
        if ((flags & ~VX_XREQUIRED) || vx_get32(e, 28))
            return vx_err(NULL, VECIDX_ECORRUPT,
                          "section table entry %u has unknown flags", i);
        vx_sect *sc;
        if (type != VX_XTYPE_KEPT && type != VX_XTYPE_PIECES &&
            type != VX_XTYPE_CQ) {
            if (flags & VX_XREQUIRED)
                return vx_err(NULL, VECIDX_EVERSION,
                              "file needs section type %u, which this "
                              "library does not know; upgrade vecidx",
                              (unsigned)type);
            continue;
        }
        if (seen & (1u << type))
            return vx_err(NULL, VECIDX_ECORRUPT, "section type %u named twice",
                          (unsigned)type);
        seen |= 1u << type;
        sc = &h->sect[type == VX_XTYPE_KEPT     ? VX_SECT_KEPT
                      : type == VX_XTYPE_PIECES ? VX_SECT_PIECES
                                                : VX_SECT_CQ];
        sc->off = vx_get64(e, 8);
        sc->len = vx_get64(e, 16);
        sc->crc = vx_get32(e, 24);
    }
    if (h->version == 5 && !(seen & (1u << VX_XTYPE_KEPT)))
        return vx_err(NULL, VECIDX_ECORRUPT,
                      "version 5 file names no kept vectors section");
    return VECIDX_OK;
}

/* Decode and check the header's own integrity; content is checked by
** vx_file_validate. Returns a code with the message set. */
static int vx_fhdr_decode(const unsigned char *b, size_t size, vx_fhdr *h)
{
    int i;
    if (size < VX_FILE_HEADER || memcmp(b, VX_FILE_MAGIC, 8) != 0)
        return vx_err(NULL, VECIDX_ECORRUPT, "not a vecidx index file (%s)",
                      size < VX_FILE_HEADER ? "shorter than a header"
                                            : "bad magic");
    if (vx_get32(b, VX_FILE_HEADER - 4) !=
        vx_crc32c_more(0, b, VX_FILE_HEADER - 4))
        return vx_err(NULL, VECIDX_ECORRUPT, "header checksum mismatch");
    memset(h, 0, sizeof *h);
    h->version = vx_get32(b, 8);
    if (h->version > VX_FILE_VERSION)
        return vx_err(NULL, VECIDX_EVERSION,
                      "file format version %u is newer than this library's "
                      "(%u); upgrade vecidx",
                      (unsigned)h->version, VX_FILE_VERSION);
    if (h->version == 0 || vx_get32(b, 12) != VX_FILE_BOM ||
        vx_get32(b, 16) != VX_FILE_HEADER || vx_get32(b, 20) != VX_FILE_PAGE)
        return vx_err(NULL, VECIDX_ECORRUPT,
                      "header has an impossible "
                      "version, byte-order mark or size");
    vecidx_params_init(&h->p, (int)vx_get32(b, 24), (int)vx_get32(b, 28),
                       vx_get32(b, 32));
    h->p.hnsw_m = vx_get32(b, 36);
    h->p.hnsw_ef_construction = vx_get32(b, 40);
    h->p.hnsw_ef_search = vx_get32(b, 44);
    h->p.ivf_nlist = vx_get32(b, 48);
    h->p.ivf_nprobe = vx_get32(b, 52);
    h->p.pq_m = vx_get32(b, 56);
    h->p.pq_nbits = vx_get32(b, 60);
    h->p.seed = vx_get64(b, 64);
    h->shift = vx_get32(b, 72);
    h->rec = vx_get32(b, 76);
    h->link0 = vx_get32(b, 80);
    h->nslots = vx_get32(b, 84);
    h->count = vx_get32(b, 88);
    h->nburied = vx_get32(b, 92);
    h->nchunks = vx_get32(b, 96);
    h->nfree = vx_get32(b, 100);
    h->rng = vx_get64(b, 104);
    h->entry = vx_get32(b, 112);
    h->maxlevel = (int32_t)vx_get32(b, 116);
    h->arena_n = vx_get64(b, 120);
    for (i = 0; i <= VX_HNSW_MAX_LEVEL; i++)
        h->arena_free[i] = vx_get32(b, 128 + 4 * (size_t)i);
    h->map_cap = vx_get64(b, 192);
    h->salt = vx_get64(b, 200);
    for (i = 0; i < VX_SECT_KEPT; i++) {
        size_t at = i == VX_SECT_REPAIR ? VX_FILE_REPAIR : 216 + 24 * (size_t)i;
        if (i == VX_SECT_REPAIR && h->version < 3) break; /* reserved */
        h->sect[i].off = vx_get64(b, at);
        h->sect[i].len = vx_get64(b, at + 8);
        h->sect[i].crc = vx_get32(b, at + 16);
    }
    if (h->version >= 3) {
        h->log_salt = vx_get64(b, 208);
        h->log_seq = vx_get64(b, 432);
    }
    h->ivf_trained = vx_get32(b, VX_FILE_IVF);
    h->ivf_nlist = vx_get32(b, VX_FILE_IVF + 4);
    h->ivf_m = vx_get32(b, VX_FILE_IVF + 8);
    h->reserved = vx_get32(b, VX_FILE_IVF + 12);
    if (h->version >= 4) {
        h->p.storage = h->reserved & 0xffu;
        h->p.keep_vectors = (h->reserved >> 8) & 1u;
        h->p.refine = h->reserved >> 16;
        h->reserved &= 0xfe00u;
    }
    h->p.ivf_keep_vectors = vx_get32(b, VX_FILE_IVF + 16);
    h->p.ivf_refine = vx_get32(b, VX_FILE_IVF + 20);
    h->p.ivf_quantizer = vx_get32(b, VX_FILE_IVF + 24);
    h->p.ivf_train_size = vx_get32(b, VX_FILE_IVF + 28);
    h->ivf_count = vx_get64(b, VX_FILE_IVF + 32);
    h->ivf_map_cap = vx_get64(b, VX_FILE_IVF + 40);
    return h->version >= 5 ? vx_xtab_decode(b, size, h) : VECIDX_OK;
}

/* ---- verifying -------------------------------------------------------------
 */

/* Verify every piece not verified yet, for a read-only handle about to
** copy its data out (vecidx_save), vecidx_check, an open that will write
** or VECIDX_VERIFY. VECIDX_ECORRUPT names the first damaged piece. */
static int vx_lazy_verify_all(vecidx *ix)
{
    const vx_store *s = &ix->store;
    uint64_t d0 = vx_dmg.n;
    uint32_t c, li;
    for (c = 0; s->lazy && c < s->nchunks && vx_dmg.n == d0; c++) {
        if (s->chunks[c].lazy) (void)vx_lazy_chunk(s, c, 0);
        if (s->chunks[c].klazy && vx_dmg.n == d0) (void)vx_lazy_chunk(s, c, 1);
    }
    for (li = 0; ix->ivf.lazy && li < ix->ivf.nlist && vx_dmg.n == d0; li++)
        if (ix->ivf.lists[li].lazy) (void)vx_lazy_list(&ix->ivf, li);
    if (ix->ivf.cq && vx_dmg.n == d0) (void)vx_lazy_verify_all(ix->ivf.cq);
    return vx_dmg_check(ix, d0, VECIDX_OK);
}

/* The data sections of the file as mapped checked against their
** checksums: piece by piece where the file has piece checksums, else
** whole, while the mapping is as the file is (fpristine). */
static int vx_file_verify_data(vecidx *ix)
{
    const vx_store *s = &ix->store;
    if (s->lazy || ix->ivf.lazy || ix->ivf.cq) {
        int rc = vx_lazy_verify_all(ix);
        if (rc != VECIDX_OK || s->lazy || ix->ivf.lazy) return rc;
    }
    if (!ix->fpristine) return VECIDX_OK;
    if (vx_crc32c_more(0,
                       s->nchunks ? (const void *)s->chunks[0].vec
                                  : (const void *)ix->fmap,
                       (size_t)s->nchunks * vx_store_file_chunk_bytes(s)) !=
        ix->fcrc)
        return vx_err(ix, VECIDX_ECORRUPT,
                      "storage: vector and link chunks do not match the "
                      "file's checksum");
    if (s->apart && s->nchunks &&
        vx_crc32c_more(0, s->chunks[0].full,
                       (size_t)s->nchunks * vx_store_kept_bytes(s)) !=
            ix->fcrc_kept)
        return vx_err(ix, VECIDX_ECORRUPT,
                      "storage: kept vectors do not match the file's "
                      "checksum");
    return VECIDX_OK;
}

/* ---- save ------------------------------------------------------------------
 */

static uint64_t vx_page_up(uint64_t x)
{
    return (x + VX_FILE_PAGE - 1) / VX_FILE_PAGE * VX_FILE_PAGE;
}

/* A section written piece by piece, its checksum kept as it goes. */
typedef struct vx_fw {
    int fd, ok;
    uint64_t off;
    vx_sect *sc;
    uint32_t *piece; /* a piece's checksum to keep as well, or NULL */
} vx_fw;

static void vx_fw_begin(vx_fw *w, vx_sect *sc, uint64_t off)
{
    w->sc = sc;
    w->off = sc->off = vx_page_up(off);
    sc->len = 0;
    sc->crc = 0;
}

static void vx_fw_put(vx_fw *w, const void *p, size_t n)
{
    if (!w->ok || n == 0) return;
    if (vx_io_write_all(w->fd, p, n, (off_t)w->off) != 0) w->ok = 0;
    w->sc->crc = vx_crc32c_more(w->sc->crc, p, n);
    if (w->piece) *w->piece = vx_crc32c_more(*w->piece, p, n);
    w->sc->len += n;
    w->off += n;
}

static void vx_fw_pad8(vx_fw *w)
{
    static const unsigned char zero[8] = {0};
    vx_fw_put(w, zero, (8 - w->sc->len % 8) % 8);
}

/* A value no other file written here is likely to share: each saved file
** gets one, and its log must carry it, so a log left behind by another
** index at the same path can never be replayed into this one. */
static uint64_t vx_fresh_salt(void)
{
    static atomic_uint_fast64_t counter;
    struct timespec t;
    uint64_t x;
    clock_gettime(CLOCK_REALTIME, &t);
    x = (uint64_t)t.tv_sec * 1000000007u + (uint64_t)t.tv_nsec;
    x ^= (uint64_t)getpid() << 32;
    x += atomic_fetch_add(&counter, 1) * 0x9e3779b97f4a7c15ull;
    return vx_hash64(x) | 1; /* never 0 */
}

/* Snapshots.
** vecidx_save and vecidx_checkpoint write the index as it was at one
** moment. The small structures are copied when the snapshot begins: the
** header's counters, the graph arena, the free slots, the IVF-PQ key map.
** The storage chunks, the key map and the IVF-PQ lists -- nearly all the
** bytes -- are not: they are written from where they are, a piece at a
** time, and a writer about to change a part not written yet first copies
** that part aside (vx_snap_touch, vx_snap_touch_cells), 1 KiB of a chunk,
** 128 cells of the map or a whole list, so the file gets the bytes as
** they were. Slots in the limbo are
** written as the free slots they will become. */

#define VX_SNAP_UNIT 1024u /* bytes of a chunk copied aside at once */

enum {
    VX_SNAP_PENDING = 0, /* not written, not copied */
    VX_SNAP_ASIDE = 1,   /* copied aside before a writer changed it */
    VX_SNAP_DONE = 2     /* written (or its copy taken): change freely */
};

/* What a snapshot still has to write, in file order. */
enum {
    VX_SW_CHUNKS,
    VX_SW_KEPT, /* version 5: the kept vectors, after the chunks */
    VX_SW_SMALL,
    VX_SW_IVF_LISTS,
    VX_SW_TAIL,
    VX_SW_DONE
};

struct vx_snap {
    vx_fhdr h;
    int fd, phase, failed; /* failed: an errno; ENOMEM from a touch */
    uint32_t pos;          /* next chunk or list */
    size_t poff;           /* bytes written of the small section at pos */
    vx_fw w;
    uint32_t version; /* of the file without log chain */
    uint64_t synced;  /* bytes handed to writeback so far */
    uint64_t waited;  /* bytes known to be written back */
    /* A checkpoint: stepped by later writes (auto) or by its caller, and
    ** where its log records end (log_off, after record h.log_seq). */
    int ckpt, autostep;
    uint64_t log_off;
    uint64_t t0; /* vx_now_ns at the start, for vecidx_stats */
    char tmp[4200];
    unsigned tmp_tag; /* its reservation (vx_tmp_reserve) */
    /* Chunks as they were: units of VX_SNAP_UNIT bytes, each pending,
    ** copied aside or written; buf assembles one chunk as it lies in
    ** memory. A chunk's first upf units cover its fb bytes from base[c],
    ** the others its kb bytes of kept vectors from full[c] (at kofs in
    ** buf), so that no unit spans both: in a mapped file of version 5
    ** they lie in different sections. */
    uint32_t nchunks, upc, upf;
    size_t cb, fb, kb, kofs;
    vx_store geo; /* the store's layout fields, as they were */
    unsigned char **base, **full;
    uint8_t *state;
    unsigned char **aside;
    unsigned char *buf;
    /* Version 6: the checksum of each chunk, then of each chunk's kept
    ** vectors (pieces, as the file holds them), and the IVF-PQ directory,
    ** rewritten with each list's checksum once the lists are written. */
    unsigned char *pieces, *ivdir;
    size_t npieces;
    /* Copies made at the start. */
    uint32_t *arena;
    uint32_t *free;
    uint64_t *ivmap;
    /* The key map is not copied at the start (24 MB at 1M keys, 10-90 ms
    ** of page faults for the write that began an automatic checkpoint):
    ** its arrays then (mk, ms) are cut into units of VX_MAP_UNIT cells,
    ** copied aside (keys, then slots) before a writer changes one not yet
    ** written, as chunks are. Arrays the map outgrows meanwhile are kept
    ** (own) until the snapshot ends. */
    const uint64_t *mk;
    const uint32_t *ms;
    uint8_t *mstate;
    unsigned char **maside;
    size_t munits;
    int own, mhuge; /* mhuge: the kept arrays' vx_keymap.huge */
    vx_mem *mem;
    unsigned char *repair; /* the repair section, encoded */
    size_t repair_len;
    /* IVF-PQ lists: length at the start, state, copy of a changed one. */
    uint32_t nlist, *ln;
    size_t ivb; /* the IVF-PQ lists' kept bytes per entry (vx_ivf.vb) */
    uint8_t *lstate;
    vx_ivlist *lcopy;
    pthread_mutex_t lock; /* the snapshot reading a part vs a writer */
};

/* Unit u of a chunk (0 <= u < upc): its bytes, where they lie in chunk c
** (*src; c may be past the chunks, then *src is not set) and where they
** go in buf (*dst). */
static size_t vx_snap_unit_at(const vx_snap *sn, uint32_t c, size_t u,
                              const unsigned char **src, size_t *dst)
{
    size_t at, n;
    if (u < sn->upf) {
        at = u * VX_SNAP_UNIT;
        n = sn->fb - at < VX_SNAP_UNIT ? sn->fb - at : VX_SNAP_UNIT;
        if (c < sn->nchunks) *src = sn->base[c] + at;
        *dst = at;
    } else {
        at = (u - sn->upf) * VX_SNAP_UNIT;
        n = sn->kb - at < VX_SNAP_UNIT ? sn->kb - at : VX_SNAP_UNIT;
        if (c < sn->nchunks) *src = sn->full[c] + at;
        *dst = sn->kofs + at;
    }
    return n;
}

/* Bytes [from, from + len) of chunk c are about to change: copy every unit
** of them not yet written aside first. Offsets count the chunk's units:
** its kept vectors start at upf * VX_SNAP_UNIT (vx_snap_touch). An
** allocation failure fails the snapshot (its file is not used), never the
** write. */
static void vx_snap_touch_bytes(vecidx *ix, uint32_t c, size_t from, size_t len)
{
    vx_snap *sn = ix->snap;
    size_t u, last;
    if (c >= sn->nchunks || len == 0) return;
    u = (size_t)c * sn->upc + from / VX_SNAP_UNIT;
    last = (size_t)c * sn->upc + (from + len - 1) / VX_SNAP_UNIT;
    for (; u <= last; u++) {
        const unsigned char *src = NULL;
        size_t at, n;
        if (VX_LOAD(&sn->state[u]) != VX_SNAP_PENDING) continue;
        pthread_mutex_lock(&sn->lock);
        n = vx_snap_unit_at(sn, c, u % sn->upc, &src, &at);
        if (sn->state[u] == VX_SNAP_PENDING) {
            if ((sn->aside[u] = vx_malloc(&ix->mem, n)) != NULL) {
                memcpy(sn->aside[u], src, n);
                VX_STORE(&sn->state[u], VX_SNAP_ASIDE);
            } else {
                sn->failed = ENOMEM;
                memset(sn->state, VX_SNAP_DONE, (size_t)sn->nchunks * sn->upc);
            }
        }
        pthread_mutex_unlock(&sn->lock);
    }
}

/* Everything of slot's in its chunk (record, key, norm, links, level,
** state) is about to change. */
static void vx_snap_touch(vecidx *ix, uint32_t slot)
{
    const vx_store *s = &ix->store;
    const vx_chunk *c;
    uint32_t i;
    const unsigned char *v;
    if (!ix->snap) return;
    c = VX_SLOT_CHUNK(s, slot);
    i = VX_SLOT_INDEX(s, slot);
    v = (const unsigned char *)c->vec;
    vx_snap_touch_bytes(
        ix, slot >> s->shift,
        (size_t)((const unsigned char *)(c->vec + (size_t)i * s->rec) - v),
        (size_t)s->rec * sizeof(float));
    vx_snap_touch_bytes(ix, slot >> s->shift,
                        (size_t)((const unsigned char *)(c->key + i) - v), 8);
    if (c->inorm)
        vx_snap_touch_bytes(ix, slot >> s->shift,
                            (size_t)((const unsigned char *)(c->inorm + i) - v),
                            4);
    if (c->upper) {
        vx_snap_touch_bytes(ix, slot >> s->shift,
                            (size_t)((const unsigned char *)(c->upper + i) - v),
                            4);
        vx_snap_touch_bytes(ix, slot >> s->shift, (size_t)(c->level + i - v),
                            1);
    }
    vx_snap_touch_bytes(ix, slot >> s->shift, (size_t)(c->live + i - v), 1);
    if (c->full)
        vx_snap_touch_bytes(ix, slot >> s->shift,
                            (size_t)ix->snap->upf * VX_SNAP_UNIT +
                                (size_t)i * s->dim * sizeof(float),
                            (size_t)s->dim * sizeof(float));
}

/* IVF-PQ list li is about to change: keep its entries as they were. */
static void vx_snap_touch_list(vecidx *ix, uint32_t li)
{
    vx_snap *sn = ix->snap;
    const vx_ivlist *l;
    vx_ivlist *t;
    size_t n, vb = sn ? sn->ivb : 0;
    if (!sn || li >= sn->nlist || VX_LOAD(&sn->lstate[li]) != VX_SNAP_PENDING)
        return;
    pthread_mutex_lock(&sn->lock);
    l = &ix->ivf.lists[li];
    t = &sn->lcopy[li];
    n = sn->ln[li];
    if (sn->lstate[li] == VX_SNAP_PENDING) {
        t->keys = vx_malloc(&ix->mem, n * 8);
        t->codes = vx_malloc(&ix->mem, n * ix->ivf.m);
        t->vecs = vb ? vx_malloc(&ix->mem, n * vb) : NULL;
        t->n = t->cap = (uint32_t)n;
        if (t->keys && t->codes && (t->vecs || !vb)) {
            memcpy(t->keys, l->keys, n * 8);
            memcpy(t->codes, l->codes, n * ix->ivf.m);
            if (vb) memcpy(t->vecs, l->vecs, n * vb);
            VX_STORE(&sn->lstate[li], VX_SNAP_ASIDE);
        } else {
            sn->failed = ENOMEM;
            memset(sn->lstate, VX_SNAP_DONE, sn->nlist);
        }
    }
    pthread_mutex_unlock(&sn->lock);
}

#define VX_MAP_UNIT 128u /* cells of the key map copied aside at once */

static size_t vx_snap_unit_cells(const vx_snap *sn, size_t u)
{
    size_t at = u * VX_MAP_UNIT;
    return sn->h.map_cap - at < VX_MAP_UNIT ? sn->h.map_cap - at : VX_MAP_UNIT;
}

/* Cells [from, from + n) of map m, wrapping around, are about to change. */
static void vx_snap_touch_cells(vx_snap *sn, const vx_keymap *m, size_t from,
                                size_t n)
{
    size_t k, u, last = SIZE_MAX;
    if (m->keys != sn->mk) return; /* outgrown: the old arrays stay put */
    for (k = 0; k < n; k++) {
        if ((u = ((from + k) & (m->cap - 1)) / VX_MAP_UNIT) == last) continue;
        last = u;
        if (VX_LOAD(&sn->mstate[u]) != VX_SNAP_PENDING) continue;
        pthread_mutex_lock(&sn->lock);
        if (sn->mstate[u] == VX_SNAP_PENDING) {
            size_t at = u * VX_MAP_UNIT, c = vx_snap_unit_cells(sn, u);
            unsigned char *a = vx_malloc(sn->mem, c * 12);
            if (a) {
                memcpy(a, sn->mk + at, c * 8);
                memcpy(a + c * 8, sn->ms + at, c * 4);
                sn->maside[u] = a;
                VX_STORE(&sn->mstate[u], VX_SNAP_ASIDE);
            } else {
                sn->failed = ENOMEM;
                memset(sn->mstate, VX_SNAP_DONE, sn->munits);
            }
        }
        pthread_mutex_unlock(&sn->lock);
    }
}

/* The map outgrew the arrays the snapshot reads: keep them (1) unless
** they are not those, or live in the mapped file anyway (0). */
static int vx_snap_adopt_map(vx_snap *sn, const vx_keymap *old)
{
    if (old->keys != sn->mk || old->mapped) return 0;
    sn->own = 1;
    sn->mhuge = old->huge;
    return 1;
}

/* Before the buffer of an untrained IVF-PQ index is released: a snapshot
** under way copies aside whatever of it is not written yet. */
static void vx_snap_detach(vecidx *ix)
{
    uint32_t c;
    if (!ix->snap) return;
    for (c = 0; c < ix->snap->nchunks; c++)
        vx_snap_touch_bytes(ix, c, 0, ix->snap->cb);
    if (ix->store.map.cap)
        vx_snap_touch_cells(ix->snap, &ix->store.map, 0, ix->store.map.cap);
}

/* The temporary files of the saves running in this process, by a hash of
** their names, so that two saves to one path (from two handles) never
** write one file. A name is free again once its save has ended, and is
** then reused, truncating whatever a crash left under it: a process that
** keeps one PID across restarts (PID 1 in a container) never piles up
** leftovers. */
#define VX_TMP_MAX 64
static pthread_mutex_t vx_tmp_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t vx_tmp_busy[VX_TMP_MAX];

static uint64_t vx_name_hash(const char *s)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h | 1; /* 0 marks a free entry */
}

/* Reserve a name; returns its entry + 1, or 0 when it is taken or every
** entry is. */
static unsigned vx_tmp_reserve(const char *name)
{
    uint64_t h = vx_name_hash(name);
    unsigned i, at = 0;
    pthread_mutex_lock(&vx_tmp_lock);
    for (i = 0; i < VX_TMP_MAX && vx_tmp_busy[i] != h; i++)
        if (!vx_tmp_busy[i] && !at) at = i + 1;
    if (i < VX_TMP_MAX)
        at = 0; /* taken */
    else if (at)
        vx_tmp_busy[at - 1] = h;
    pthread_mutex_unlock(&vx_tmp_lock);
    return at;
}

static void vx_tmp_release(unsigned tag)
{
    if (!tag) return;
    pthread_mutex_lock(&vx_tmp_lock);
    vx_tmp_busy[tag - 1] = 0;
    pthread_mutex_unlock(&vx_tmp_lock);
}

static void vx_snap_free(vecidx *ix, vx_snap *sn)
{
    size_t u, units = (size_t)sn->nchunks * sn->upc;
    uint32_t li;
    vx_mem *mem = &ix->mem;
    size_t vb = sn->ivb;
    for (u = 0; sn->aside && u < units; u++)
        if (sn->aside[u]) {
            const unsigned char *src;
            size_t at;
            vx_free(mem, sn->aside[u],
                    vx_snap_unit_at(sn, sn->nchunks, u % sn->upc, &src, &at));
        }
    for (li = 0; sn->lcopy && li < sn->nlist; li++) {
        vx_ivlist *t = &sn->lcopy[li];
        vx_free(mem, t->keys, (size_t)t->cap * 8);
        vx_free(mem, t->codes, (size_t)t->cap * ix->ivf.m);
        vx_free(mem, t->vecs, (size_t)t->cap * vb);
    }
    vx_free(mem, sn->base, sn->nchunks * sizeof *sn->base);
    vx_free(mem, sn->full, sn->nchunks * sizeof *sn->full);
    vx_free(mem, sn->state, units);
    vx_free(mem, sn->aside, units * sizeof *sn->aside);
    vx_free(mem, sn->buf, sn->cb);
    vx_free(mem, sn->pieces, sn->npieces * 4);
    vx_free(mem, sn->ivdir, (size_t)sn->nlist * 16);
    vx_free(mem, sn->arena, sn->h.arena_n * sizeof *sn->arena);
    vx_free(mem, sn->free, (size_t)sn->h.nfree * sizeof *sn->free);
    for (u = 0; sn->maside && u < sn->munits; u++)
        vx_free(mem, sn->maside[u], vx_snap_unit_cells(sn, u) * 12);
    vx_free(mem, sn->maside, sn->munits * sizeof *sn->maside);
    vx_free(mem, sn->mstate, sn->munits);
    if (sn->own) {
        vx_table_free(mem, (void *)(uintptr_t)sn->mk, sn->h.map_cap * 8,
                      sn->mhuge & 1);
        vx_table_free(mem, (void *)(uintptr_t)sn->ms, sn->h.map_cap * 4,
                      sn->mhuge >> 1);
    }
    if (ix->store.map.snap == sn) ix->store.map.snap = NULL;
    vx_free(mem, sn->ivmap, vx_fhdr_map_bytes(&sn->h));
    vx_free(mem, sn->repair, sn->repair_len);
    vx_free(mem, sn->ln, (size_t)sn->nlist * sizeof *sn->ln);
    vx_free(mem, sn->lstate, sn->nlist);
    vx_free(mem, sn->lcopy, (size_t)sn->nlist * sizeof *sn->lcopy);
    pthread_mutex_destroy(&sn->lock);
    vx_tmp_release(sn->tmp_tag);
    vx_free(mem, sn, sizeof *sn);
}

/* The header fields of ix as a file holds them: slots in the limbo are
** free, after the free stack, and a graph's arena blocks of theirs are
** back on the free chains (sn->arena is the copy that says so). */
static void vx_snap_header(const vecidx *ix, vx_fhdr *h)
{
    const vx_store *s = &ix->store;
    memset(h, 0, sizeof *h);
    h->p = ix->p;
    h->shift = s->shift;
    h->version = (!s->link0 || s->aligned) && (!s->keep || s->apart) ? 6
                 : s->store != VECIDX_STORE_F32                      ? 4
                                                                     : 1;
    h->rec = s->rec;
    h->link0 = s->link0;
    h->nslots = s->nslots;
    h->count = s->count;
    h->nburied = s->nburied;
    h->nchunks = s->nchunks;
    h->nfree = s->nfree + s->nlimbo;
    h->map_cap = s->map.cap;
    h->entry = VX_NOSLOT;
    h->maxlevel = -1;
    if (ix->ivf.trained) {
        h->ivf_trained = 1;
        h->ivf_nlist = ix->ivf.nlist;
        h->ivf_m = ix->ivf.m;
        h->ivf_count = ix->ivf.count;
        h->ivf_map_cap = ix->ivf.map_cap;
        if (ix->ivf.map_words == 2) h->version = 7;
    }
    if (ix->p.kind == VECIDX_HNSW) {
        h->rng = ix->hnsw.rng;
        h->entry = vx_hnsw_top(&ix->hnsw, &h->maxlevel);
        h->arena_n = ix->hnsw.arena_n;
        memcpy(h->arena_free, ix->hnsw.arena_free, sizeof h->arena_free);
    }
}

/* Copy the small structures; the writer lock is held. */
static int vx_snap_copy(vecidx *ix, vx_snap *sn)
{
    const vx_store *s = &ix->store;
    vx_mem *mem = &ix->mem;
    const vx_fhdr *h = &sn->h;
    uint32_t i;
    sn->munits = (h->map_cap + VX_MAP_UNIT - 1) / VX_MAP_UNIT;
    if (!(sn->free = vx_malloc(mem, (size_t)h->nfree * sizeof *sn->free)) ||
        !(sn->mstate = vx_malloc(mem, sn->munits)) ||
        !(sn->maside = vx_malloc(mem, sn->munits * sizeof *sn->maside)))
        return VECIDX_ENOMEM;
    if (s->nfree) memcpy(sn->free, s->free, s->nfree * sizeof *sn->free);
    if (s->nlimbo)
        memcpy(sn->free + s->nfree, s->limbo, s->nlimbo * sizeof *sn->free);
    sn->mk = s->map.keys;
    sn->ms = s->map.slots;
    memset(sn->mstate, VX_SNAP_PENDING, sn->munits);
    memset(sn->maside, 0, sn->munits * sizeof *sn->maside);
    if (h->version >= 6) {
        sn->npieces = ((size_t)sn->nchunks << (s->shift - VX_PIECE_SHIFT)) *
                      (s->apart ? 2 : 1);
        if (!(sn->pieces = vx_malloc(mem, sn->npieces * 4)))
            return VECIDX_ENOMEM;
    }
    if (ix->p.kind == VECIDX_HNSW && ix->hnsw.pass.phase != VX_PASS_IDLE) {
        const vx_pass *p = &ix->hnsw.pass;
        unsigned char *b;
        sn->repair_len = VX_REPAIR_HEAD + (size_t)s->nslots;
        if (!(b = sn->repair = vx_malloc(mem, sn->repair_len)))
            return VECIDX_ENOMEM;
        vx_put32(b, 0, p->phase);
        vx_put32(b, 4, p->cursor);
        vx_put32(b, 8, p->end);
        vx_put32(b, 12, p->ndoomed);
        vx_put32(b, 16, (uint32_t)p->level);
        vx_put32(b, 20, p->ipround);
        vx_put32(b, 24, p->thresh);
        vx_put32(b, 28, p->at_t);
        for (i = 0; i < VX_NORM_BUCKETS; i++)
            vx_put32(b, 32 + 4 * (size_t)i, p->hist[i]);
        memcpy(b + VX_REPAIR_HEAD, ix->hnsw.mark, s->nslots);
    }
    if (ix->p.kind == VECIDX_HNSW) {
        const vx_hnsw *g = &ix->hnsw;
        if (!(sn->arena = vx_malloc(mem, h->arena_n * sizeof *sn->arena)))
            return VECIDX_ENOMEM;
        if (g->arena)
            memcpy(sn->arena, g->arena, h->arena_n * sizeof *sn->arena);
        else
            sn->arena[0] = 0;
        /* What vx_reclaim will do with the limbo, done to the copy. */
        for (i = 0; i < s->nlimbo; i++) {
            const vx_chunk *c = VX_SLOT_CHUNK(s, s->limbo[i]);
            uint32_t k = VX_SLOT_INDEX(s, s->limbo[i]);
            int lv = c->level[k];
            if (!lv) continue;
            sn->arena[c->upper[k]] = sn->h.arena_free[lv];
            sn->h.arena_free[lv] = c->upper[k];
        }
    }
    if (ix->ivf.trained) {
        const vx_ivf *v = &ix->ivf;
        sn->nlist = v->nlist;
        sn->ivb = v->vb;
        if (!(sn->ivmap = vx_malloc(mem, vx_ivf_map_bytes(v))) ||
            !(sn->ln = vx_malloc(mem, (size_t)v->nlist * sizeof *sn->ln)) ||
            !(sn->lstate = vx_malloc(mem, v->nlist)) ||
            !(sn->lcopy = vx_malloc(mem, v->nlist * sizeof *sn->lcopy)))
            return VECIDX_ENOMEM;
        if (v->map_cap) memcpy(sn->ivmap, v->map, vx_ivf_map_bytes(v));
        memset(sn->lstate, VX_SNAP_PENDING, v->nlist);
        memset(sn->lcopy, 0, v->nlist * sizeof *sn->lcopy);
        for (i = 0; i < v->nlist; i++) sn->ln[i] = v->lists[i].n;
        if (h->version >= 6 &&
            !(sn->ivdir = vx_malloc(mem, (size_t)v->nlist * 16)))
            return VECIDX_ENOMEM;
    }
    return VECIDX_OK;
}

/* Create the temporary file of a save to path, PATH.tmp-PID, or with
** another save to that path running here PATH.tmp-PID-1 and so on.
** Returns the descriptor (its name in tmp, its reservation in *tag), or
** -1 with errno set. */
static int vx_snap_create(const char *path, char *tmp, size_t cap,
                          unsigned *tag)
{
    int fd, e;
    unsigned i;
    *tag = 0;
    for (i = 0; i < VX_TMP_MAX && !*tag; i++) {
        if (i == 0)
            snprintf(tmp, cap, "%s.tmp-%ld", path, (long)getpid());
        else
            snprintf(tmp, cap, "%s.tmp-%ld-%u", path, (long)getpid(), i);
        *tag = vx_tmp_reserve(tmp);
    }
    if (!*tag) {
        errno = EBUSY;
        return -1;
    }
    fd = vx_io_cur->open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        e = errno;
        vx_tmp_release(*tag);
        *tag = 0;
        errno = e;
    }
    return fd;
}

/* Begin a snapshot of ix to a temporary file beside path; the writer lock
** is held. From here on writers copy what they change aside. */
static int vx_snap_begin(vecidx *ix, const char *path, uint64_t salt,
                         vx_snap **out)
{
    const vx_store *s = &ix->store;
    vx_mem *mem = &ix->mem;
    vx_snap *sn;
    size_t units;
    uint32_t c;
    int rc;
    *out = NULL;
    if (strlen(path) > 4096)
        return vx_err(ix, VECIDX_EINVAL, "path is longer than 4096 bytes");
    /* a reader's unread pieces: never copy damage into a new file */
    if ((rc = vx_lazy_verify_all(ix)) != VECIDX_OK) return rc;
    if (!(sn = vx_malloc(mem, sizeof *sn)))
        return vx_err(ix, VECIDX_ENOMEM, "out of memory saving the index");
    memset(sn, 0, sizeof *sn);
    sn->fd = -1;
    sn->mem = mem;
    if (pthread_mutex_init(&sn->lock, NULL) != 0) {
        vx_free(mem, sn, sizeof *sn);
        return vx_err(ix, VECIDX_ENOMEM, "out of memory saving the index");
    }
    vx_snap_header(ix, &sn->h);
    sn->version = sn->h.version;
    sn->h.salt = salt;
    sn->nchunks = s->nchunks;
    sn->geo = *s;
    sn->cb = vx_store_chunk_bytes(s);
    sn->fb = vx_store_front_bytes(s);
    sn->kb = vx_store_kept_bytes(s);
    sn->kofs = (sn->fb + 63) / 64 * 64;
    sn->upf = (uint32_t)((sn->fb + VX_SNAP_UNIT - 1) / VX_SNAP_UNIT);
    sn->upc = sn->upf + (uint32_t)((sn->kb + VX_SNAP_UNIT - 1) / VX_SNAP_UNIT);
    units = (size_t)sn->nchunks * sn->upc;
    rc = VECIDX_ENOMEM;
    if ((sn->base = vx_malloc(mem, sn->nchunks * sizeof *sn->base)) &&
        (sn->full = vx_malloc(mem, sn->nchunks * sizeof *sn->full)) &&
        (sn->state = vx_malloc(mem, units)) &&
        (sn->aside = vx_malloc(mem, units * sizeof *sn->aside))) {
        /* vx_snap_free reads it if what follows fails */
        memset(sn->aside, 0, units * sizeof *sn->aside);
        if ((sn->buf = vx_malloc(mem, sn->cb))) {
            memset(sn->buf, 0, sn->cb); /* the line padding before kofs */
            rc = vx_snap_copy(ix, sn);
        }
    }
    if (rc != VECIDX_OK) {
        vx_snap_free(ix, sn);
        return vx_err(ix, rc, "out of memory saving the index");
    }
    for (c = 0; c < sn->nchunks; c++) {
        sn->base[c] = (unsigned char *)s->chunks[c].vec;
        sn->full[c] = (unsigned char *)s->chunks[c].full;
    }
    memset(sn->state, VX_SNAP_PENDING, units);
    if ((sn->fd = vx_snap_create(path, sn->tmp, sizeof sn->tmp, &sn->tmp_tag)) <
        0) {
        int e = errno;
        vx_snap_free(ix, sn);
        return vx_err(ix, VECIDX_EIO, "cannot save index to '%s': %s", path,
                      strerror(e));
    }
    sn->w.fd = sn->fd;
    sn->w.ok = 1;
    vx_fw_begin(&sn->w, &sn->h.sect[VX_SECT_CHUNKS], VX_FILE_PAGE);
    ix->snap = sn;
    ix->store.map.snap = sn;
    *out = sn;
    return VECIDX_OK;
}

/* Chunk c as it was, assembled in sn->buf, with limbo slots made free:
** its units [u0, u1). */
static void vx_snap_chunk(vx_snap *sn, uint32_t c, size_t u0, size_t u1)
{
    const vx_store *s = &sn->geo;
    size_t u, per = vx_store_per_chunk(s);
    vx_chunk view;
    pthread_mutex_lock(&sn->lock);
    for (u = u0; u < u1; u++) {
        const unsigned char *src = NULL;
        size_t k = (size_t)c * sn->upc + u, at;
        size_t n = vx_snap_unit_at(sn, c, u, &src, &at);
        memcpy(sn->buf + at, sn->aside[k] ? sn->aside[k] : src, n);
        VX_STORE(&sn->state[k], VX_SNAP_DONE);
    }
    pthread_mutex_unlock(&sn->lock);
    if (u0 != 0) return;
    vx_store_point_chunk(s, &view, sn->buf);
    for (u = 0; u < per; u++)
        if (view.live[u] == VX_RETIRED) {
            view.live[u] = VX_FREE;
            view.level[u] = 0;
            view.upper[u] = 0;
        }
}

/* Hand what was written since the last writeback to the kernel once a
** window's worth has piled up (see vx_snap_writeback). */
static void vx_snap_behind(vx_snap *sn);

/* Unit u of the key map as it was: its keys (slots 0) or its slots, each
** unit done once its slots are written. */
static void vx_snap_map_unit(vx_snap *sn, size_t u, int slots)
{
    size_t at = u * VX_MAP_UNIT, c = vx_snap_unit_cells(sn, u);
    const unsigned char *a;
    pthread_mutex_lock(&sn->lock);
    a = sn->mstate[u] == VX_SNAP_ASIDE ? sn->maside[u] : NULL;
    if (!slots)
        vx_fw_put(&sn->w, a ? (const void *)a : (const void *)(sn->mk + at),
                  c * 8);
    else
        vx_fw_put(&sn->w,
                  a ? (const void *)(a + c * 8) : (const void *)(sn->ms + at),
                  c * 4);
    if (slots) VX_STORE(&sn->mstate[u], VX_SNAP_DONE);
    pthread_mutex_unlock(&sn->lock);
}

/* The small sections, at most about `budget` bytes of them a call (pos
** counts the sections written, poff the bytes -- or for the key map the
** units -- of the current one), then the IVF-PQ model and directory. The
** key maps of 1M keys are 24 MB: written in one go, they made the write
** that ended an automatic checkpoint take 100 ms. Returns the bytes
** written. */
static size_t vx_snap_small(vecidx *ix, vx_snap *sn, size_t budget)
{
    vx_fhdr *h = &sn->h;
    vx_fw *w = &sn->w;
    const struct {
        int sect;
        const unsigned char *p; /* NULL: the key map's keys or slots */
        size_t n;               /* bytes, or units of the key map */
    } pc[] = {
        {VX_SECT_ARENA, (const unsigned char *)sn->arena,
         ix->p.kind == VECIDX_HNSW ? h->arena_n * sizeof *sn->arena : 0},
        {VX_SECT_MAPKEYS, NULL, sn->munits},
        {VX_SECT_MAPSLOTS, NULL, sn->munits},
        {VX_SECT_FREE, (const unsigned char *)sn->free, (size_t)h->nfree * 4}};
    size_t done = 0, npc = sizeof pc / sizeof pc[0];
    while (sn->pos < npc && done < budget && w->ok) {
        size_t n = pc[sn->pos].n - sn->poff;
        if (sn->poff == 0) vx_fw_begin(w, &h->sect[pc[sn->pos].sect], w->off);
        if (pc[sn->pos].p) {
            if (n > budget - done) n = budget - done;
            vx_fw_put(w, pc[sn->pos].p + sn->poff, n);
            done += n;
        } else if (n) {
            n = 1;
            vx_snap_map_unit(sn, sn->poff,
                             pc[sn->pos].sect == VX_SECT_MAPSLOTS);
            done += VX_MAP_UNIT * 8;
        }
        vx_snap_behind(sn);
        if ((sn->poff += n) == pc[sn->pos].n) {
            sn->pos++;
            sn->poff = 0;
        }
    }
    if (sn->pos < npc) return done;
    sn->pos = 0;
    sn->phase = h->ivf_trained ? VX_SW_IVF_LISTS : VX_SW_TAIL;
    if (!h->ivf_trained) return done;
    {
        const vx_ivf *v = &ix->ivf;
        size_t vb = sn->ivb;
        unsigned char ent[16];
        uint64_t at = 0;
        uint32_t li;
        vx_fw_begin(w, &h->sect[VX_SECT_IVF_MODEL], w->off);
        vx_fw_put(w, v->cent, v->model_bytes);
        vx_fw_begin(w, &h->sect[VX_SECT_IVF_DIR], w->off);
        for (li = 0; li < sn->nlist; li++) {
            unsigned char *e = sn->ivdir ? sn->ivdir + (size_t)li * 16 : ent;
            vx_put64(e, 0, at);
            vx_put32(e, 8, sn->ln[li]);
            vx_put32(e, 12, 0); /* version 6: the list's checksum, later */
            if (!sn->ivdir) vx_fw_put(w, ent, sizeof ent);
            at += vx_ivl_file_bytes(sn->ln[li], v->m, vb);
        }
        if (sn->ivdir) vx_fw_put(w, sn->ivdir, (size_t)sn->nlist * 16);
        vx_fw_begin(w, &h->sect[VX_SECT_IVF_DATA], w->off);
        return done + v->model_bytes + (size_t)sn->nlist * sizeof ent;
    }
}

/* IVF-PQ list li as it was. */
static void vx_snap_list(vecidx *ix, vx_snap *sn, uint32_t li)
{
    size_t n = sn->ln[li], m = ix->ivf.m, vb = sn->ivb;
    const vx_ivlist *l;
    uint32_t crc = 0;
    pthread_mutex_lock(&sn->lock);
    l = sn->lstate[li] == VX_SNAP_ASIDE ? &sn->lcopy[li] : &ix->ivf.lists[li];
    sn->w.piece = &crc;
    vx_fw_put(&sn->w, l->keys, n * 8);
    vx_fw_put(&sn->w, l->codes, n * m);
    vx_fw_pad8(&sn->w);
    vx_fw_put(&sn->w, l->vecs, n * vb);
    vx_fw_pad8(&sn->w);
    sn->w.piece = NULL;
    if (sn->ivdir) vx_put32(sn->ivdir, (size_t)li * 16 + 12, crc);
    VX_STORE(&sn->lstate[li], VX_SNAP_DONE);
    pthread_mutex_unlock(&sn->lock);
}

/* Bytes of a snapshot written between two writebacks. */
#define VX_SNAP_WINDOW ((uint64_t)4 << 20)

/* Start writeback of what was written since the last call and, with wait,
** wait for the writeback started the time before (flush-behind): a
** snapshot then never has more than about two windows dirty, so its final
** fsync is short -- and so is the log's fsync that a writer makes
** meanwhile, which ext4 makes wait for the file's dirty data. Without
** that, the log's fsync at the end of a 1M-vector checkpoint waited 200
** ms. Linux only; elsewhere the final fsync does all of it. */
static void vx_snap_writeback(vx_snap *sn, int wait)
{
#if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)
    if (sn->w.off > sn->synced)
        (void)sync_file_range(sn->fd, (off64_t)sn->synced,
                              (off64_t)(sn->w.off - sn->synced),
                              SYNC_FILE_RANGE_WRITE);
    if (wait && sn->synced > sn->waited)
        (void)sync_file_range(
            sn->fd, (off64_t)sn->waited, (off64_t)(sn->synced - sn->waited),
            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                SYNC_FILE_RANGE_WAIT_AFTER);
#endif
    if (wait) sn->waited = sn->synced;
    sn->synced = sn->w.off;
}

static void vx_snap_behind(vx_snap *sn)
{
    if (sn->w.off - sn->synced >= VX_SNAP_WINDOW) vx_snap_writeback(sn, 1);
}

/* Write header h, with its table of further sections from version 5 on,
** at byte `at` of fd; 0 or -1. */
static int vx_fhdr_write(int fd, const vx_fhdr *h, uint64_t at)
{
    unsigned char hdr[VX_FILE_XTAB + 8 + 3 * VX_XENT];
    size_t len = VX_FILE_HEADER;
    vx_fhdr_encode(h, hdr);
    if (h->version >= 5) len = vx_xtab_encode(h, hdr);
    return vx_io_write_all(fd, hdr, len, (off_t)at);
}

/* Write the header as it stands (version 3 when it names a log chain or
** holds a repair pass) and sync the file. */
static int vx_snap_header_write(vx_snap *sn)
{
    sn->h.version = sn->version < 3 && (sn->h.log_salt || sn->repair_len)
                        ? 3
                        : sn->version;
    return vx_fhdr_write(sn->fd, &sn->h, 0) == 0 &&
                   vx_io_cur->fsync(sn->fd) == 0
               ? 0
               : -1;
}

/* Write cq -- an index no call writes to: the IVF-PQ centroid graph --
** as a whole index file image of the current version at byte `at` (on a
** page boundary) of w's file, with its own header, sections and
** checksums, offsets counted from `at`; pieces has room for a u32 per
** piece. Returns its length. Written as it is in memory, so a reopened
** file probes the lists this handle does. */
static uint64_t vx_file_write_image(vecidx *cq, vx_fw *w, uint64_t at,
                                    unsigned char *pieces)
{
    const vx_store *s = &cq->store;
    size_t cb = vx_store_file_chunk_bytes(s);
    uint32_t ppc = vx_store_per_chunk(s) >> VX_PIECE_SHIFT;
    vx_fhdr h;
    uint32_t c;
    int i;
    vx_snap_header(cq, &h);
    h.salt = vx_fresh_salt();
    vx_fw_begin(w, &h.sect[VX_SECT_CHUNKS], at + VX_FILE_PAGE);
    for (c = 0; c < s->nchunks; c++) {
        const unsigned char *b = (const unsigned char *)s->chunks[c].vec;
        uint32_t k;
        vx_fw_put(w, b, cb);
        for (k = 0; k < ppc; k++)
            vx_put32(pieces, 4 * ((size_t)c * ppc + k), vx_piece_crc(s, b, k));
    }
    vx_fw_begin(w, &h.sect[VX_SECT_ARENA], w->off);
    vx_fw_put(w, cq->hnsw.arena, h.arena_n * 4);
    vx_fw_begin(w, &h.sect[VX_SECT_MAPKEYS], w->off);
    vx_fw_put(w, s->map.keys, s->map.cap * 8);
    vx_fw_begin(w, &h.sect[VX_SECT_MAPSLOTS], w->off);
    vx_fw_put(w, s->map.slots, s->map.cap * 4);
    vx_fw_begin(w, &h.sect[VX_SECT_FREE], w->off);
    vx_fw_put(w, s->free, (size_t)s->nfree * 4);
    vx_fw_begin(w, &h.sect[VX_SECT_PIECES], w->off);
    vx_fw_put(w, pieces, (size_t)s->nchunks * ppc * 4);
    for (i = 0; i < VX_FILE_NSECT; i++)
        if (h.sect[i].off >= at) h.sect[i].off -= at;
    if (w->ok && vx_fhdr_write(w->fd, &h, at) != 0) w->ok = 0;
    return w->off - at;
}

/* The centroid graph, at the end of a version 6 file. */
static void vx_snap_cq(vecidx *ix, vx_snap *sn)
{
    vx_sect *sc = &sn->h.sect[VX_SECT_CQ];
    const vx_store *cs = &ix->ivf.cq->store;
    size_t n = ((size_t)cs->nchunks << (cs->shift - VX_PIECE_SHIFT)) * 4;
    unsigned char *pieces = vx_malloc(&ix->mem, n);
    if (!pieces) {
        sn->failed = ENOMEM;
        return;
    }
    vx_fw_begin(&sn->w, sc, sn->w.off);
    sc->len = vx_file_write_image(ix->ivf.cq, &sn->w, sc->off, pieces);
    sn->w.sc = sc; /* crc 0: the image has checksums inside */
    vx_free(&ix->mem, pieces, n);
}

/* Write chunk c's front (kept 0) or kept vectors (kept 1), p, n bytes,
** keeping its pieces' checksums for version 6 (vx_lazy). */
static void vx_snap_piece(vx_snap *sn, uint32_t c, int kept,
                          const unsigned char *p, size_t n)
{
    uint32_t ppc = vx_store_per_chunk(&sn->geo) >> VX_PIECE_SHIFT, i;
    size_t at = ((size_t)kept * sn->nchunks + c) * ppc, kb;
    vx_fw_put(&sn->w, p, n);
    if (!sn->pieces) return;
    kb = vx_piece_kept_bytes(&sn->geo);
    for (i = 0; i < ppc; i++)
        vx_put32(sn->pieces, 4 * (at + i),
                 kept ? vx_crc32c_more(0, p + i * kb, kb)
                      : vx_piece_crc(&sn->geo, p, i));
}

/* Version 6: the IVF-PQ directory again, now with each list's checksum,
** over the one written before the lists. */
static void vx_snap_ivdir(vx_snap *sn)
{
    vx_sect *sc = &sn->h.sect[VX_SECT_IVF_DIR];
    if (!sn->ivdir || !sn->w.ok) return;
    if (vx_io_write_all(sn->fd, sn->ivdir, sc->len, (off_t)sc->off) != 0)
        sn->w.ok = 0;
    sc->crc = vx_crc32c_more(0, sn->ivdir, sc->len);
}

/* Write about `budget` more bytes of the snapshot (SIZE_MAX: all of it).
** Returns 1 when the file is complete and synced, 0 when more is left,
** or an error code with the message set. */
static int vx_snap_step(vecidx *ix, vx_snap *sn, size_t budget)
{
    size_t done = 0;
    while (sn->phase != VX_SW_DONE && done < budget && sn->w.ok &&
           !sn->failed) {
        switch (sn->phase) {
        case VX_SW_CHUNKS:
            if (sn->pos == sn->nchunks) {
                sn->phase = sn->geo.apart ? VX_SW_KEPT : VX_SW_SMALL;
                sn->pos = 0;
                sn->poff = 0;
                if (sn->geo.apart)
                    vx_fw_begin(&sn->w, &sn->h.sect[VX_SECT_KEPT], sn->w.off);
                break;
            }
            if (sn->geo.apart) { /* the kept vectors come after */
                vx_snap_chunk(sn, sn->pos, 0, sn->upf);
                vx_snap_piece(sn, sn->pos++, 0, sn->buf, sn->fb);
                done += sn->fb;
            } else {
                vx_snap_chunk(sn, sn->pos, 0, sn->upc);
                vx_snap_piece(sn, sn->pos++, 0, sn->buf, sn->cb);
                done += sn->cb;
            }
            vx_snap_behind(sn);
            break;
        case VX_SW_KEPT:
            if (sn->pos == sn->nchunks) {
                sn->phase = VX_SW_SMALL;
                sn->pos = 0;
                break;
            }
            vx_snap_chunk(sn, sn->pos, sn->upf, sn->upc);
            vx_snap_piece(sn, sn->pos++, 1, sn->buf + sn->kofs, sn->kb);
            done += sn->kb;
            vx_snap_behind(sn);
            break;
        case VX_SW_SMALL:
            done += vx_snap_small(ix, sn, budget - done);
            break;
        case VX_SW_IVF_LISTS:
            if (sn->pos == sn->nlist) {
                vx_snap_ivdir(sn);
                vx_fw_begin(&sn->w, &sn->h.sect[VX_SECT_IVF_MAP], sn->w.off);
                vx_fw_put(&sn->w, sn->ivmap, vx_fhdr_map_bytes(&sn->h));
                sn->phase = VX_SW_TAIL;
                break;
            }
            done += (size_t)sn->ln[sn->pos] * (8 + ix->ivf.m) + 1;
            vx_snap_list(ix, sn, sn->pos++);
            break;
        default:
            /* The final fsync gets a step of its own: it waits for the
            ** writeback of the last window, on top of any step's writes. */
            if (done && budget != SIZE_MAX) {
                budget = done;
                break;
            }
            vx_fw_begin(&sn->w, &sn->h.sect[VX_SECT_REPAIR], sn->w.off);
            vx_fw_put(&sn->w, sn->repair, sn->repair_len);
            if (sn->pieces) {
                vx_fw_begin(&sn->w, &sn->h.sect[VX_SECT_PIECES], sn->w.off);
                vx_fw_put(&sn->w, sn->pieces, sn->npieces * 4);
            }
            if (sn->pieces && sn->h.ivf_trained && ix->ivf.cq)
                vx_snap_cq(ix, sn);
            if (sn->w.ok && !sn->failed && vx_snap_header_write(sn) != 0)
                sn->w.ok = 0;
            sn->phase = VX_SW_DONE;
        }
    }
    vx_snap_writeback(sn, 0);
    if (sn->failed)
        return vx_err(ix, VECIDX_ENOMEM,
                      "out of memory keeping a snapshot of the index");
    if (!sn->w.ok)
        return vx_err(ix, VECIDX_EIO, "cannot write '%s': %s", sn->tmp,
                      strerror(errno));
    return sn->phase == VX_SW_DONE;
}

/* End a snapshot; the writer lock is held. With done (the file complete
** and synced) the file is renamed over path and the directory synced, so
** a crash leaves the old file or the new one, never a mix; otherwise the
** temporary file is removed. */
/* A file replaced by a rename is freed by the file system at its last
** close, on the closing thread: 165 ms for a 700 MB index on ext4, which
** a writer would wait for under the writer lock. So a save holds the old
** file open across its rename and lets it go on a thread of its own. */
static void *vx_closer_main(void *arg)
{
    (void)close((int)(intptr_t)arg);
    return NULL;
}

static void vx_closer_join(vecidx *ix)
{
    if (!ix->closer_on) return;
    (void)pthread_join(ix->closer, NULL);
    ix->closer_on = 0;
}

static void vx_let_go(vecidx *ix, int fd)
{
    if (fd < 0) return;
    vx_closer_join(ix);
    if (pthread_create(&ix->closer, NULL, vx_closer_main,
                       (void *)(intptr_t)fd) == 0)
        ix->closer_on = 1;
    else
        (void)close(fd); /* no thread: the writer waits, nothing worse */
}

static int vx_snap_end(vecidx *ix, vx_snap *sn, const char *path, int done,
                       int *renamed)
{
    int rc = VECIDX_OK, e, old = -1;
    if (ix->snap == sn) ix->snap = NULL;
    /* Not through vx_io_cur: a hold that fails costs time, not data. */
    if (done) old = open(path, O_RDONLY | O_CLOEXEC);
    if (vx_io_cur->close(sn->fd) != 0 && done) {
        done = 0;
        rc = vx_err(ix, VECIDX_EIO, "cannot save index to '%s': %s", path,
                    strerror(errno));
    }
    if (done && vx_io_cur->rename(sn->tmp, path) != 0) {
        done = 0;
        rc = vx_err(ix, VECIDX_EIO, "cannot save index to '%s': %s", path,
                    strerror(errno));
    }
    if (renamed) *renamed = done;
    if (!done) {
        e = errno;
        vx_io_cur->unlink(sn->tmp);
        errno = e;
    } else if (vx_io_sync_dir(path) != 0) {
        rc = vx_err(ix, VECIDX_EIO,
                    "saved '%s' but cannot sync its "
                    "directory: %s",
                    path, strerror(errno));
    }
    vx_snap_free(ix, sn);
    vx_let_go(ix, old);
    return rc;
}

/* Write ix to path as a whole (vecidx_save, and the checkpoint's new main
** file); the writer lock is held throughout. */
static int vx_file_save(vecidx *ix, const char *path, uint64_t salt)
{
    vx_snap *sn;
    int rc = vx_snap_begin(ix, path, salt, &sn);
    if (rc != VECIDX_OK) return rc;
    rc = vx_snap_step(ix, sn, SIZE_MAX);
    if (rc < 0) {
        char msg[VX_ERRMSG_MAX];
        memcpy(msg, vx_err_tls.msg, sizeof msg);
        (void)vx_snap_end(ix, sn, path, 0, NULL);
        return vx_err(ix, rc, "%s", msg);
    }
    return vx_snap_end(ix, sn, path, 1, NULL);
}

/* ---- open ------------------------------------------------------------------
 */

static int vx_sect_ok(const vx_sect *sc, uint64_t size, uint64_t want)
{
    return sc->len == want &&
           (want == 0 ||
            (sc->off % VX_FILE_PAGE == 0 && sc->off >= VX_FILE_PAGE &&
             sc->off <= size && want <= size - sc->off));
}

/* The IVF-PQ fields of a header: untrained (all zero), or a shape that
** the sections can then be checked against. */
static int vx_file_validate_ivf(const vx_fhdr *h)
{
    int ivf = h->p.kind == VECIDX_IVFPQ;
    if (ivf && vx_check_ivf_params(&h->p) != VECIDX_OK)
        return vx_err(NULL, VECIDX_ECORRUPT,
                      "header IVF-PQ parameters are "
                      "invalid: %s",
                      vx_err_tls.msg);
    if (h->version == 7 && !(ivf && h->ivf_trained && h->p.ivf_keep_vectors))
        return vx_err(NULL, VECIDX_ECORRUPT,
                      "version 7 file is not a trained IVF-PQ index "
                      "with kept vectors");
    if (!h->ivf_trained)
        return h->ivf_nlist || h->ivf_m || h->ivf_count || h->ivf_map_cap
                   ? vx_err(NULL, VECIDX_ECORRUPT,
                            "header IVF-PQ fields are "
                            "set but the index is untrained")
                   : VECIDX_OK;
    if (!ivf || h->ivf_trained != 1 || h->ivf_nlist == 0 ||
        h->ivf_nlist > VX_IVF_MAX_NLIST || h->ivf_m == 0 ||
        h->ivf_m > h->p.dim || h->ivf_count > VECIDX_MAX_COUNT ||
        (h->ivf_count && h->ivf_map_cap <= h->ivf_count) ||
        h->ivf_map_cap > ((uint64_t)1 << 33) || h->count != 0)
        return vx_err(NULL, VECIDX_ECORRUPT,
                      "header IVF-PQ fields are "
                      "inconsistent");
    return VECIDX_OK;
}

/* Check that the header describes a consistent index of this file's
** size, and that the sections copied or used whole at open match their
** checksums. The big sections -- chunks, kept vectors and (version 6)
** IVF-PQ lists -- are not read here, which would cost a pass over the
** whole file: in version 6 each piece is verified when first read
** (vx_lazy), before that vecidx_open verifies them whole for a reader
** (vx_file_verify_data). Searches also bound every slot number they
** follow (vx_hnsw_read), so that a writer's memory never leaves the
** index whatever it holds. */
static int vx_file_validate(vx_fhdr *h, const unsigned char *base,
                            uint64_t size)
{
    static const char *const names[VX_FILE_NSECT] = {
        "vectors",       "graph",       "key map",      "key map",
        "free slot",     "IVF model",   "IVF lists",    "IVF lists",
        "IVF key map",   "repair pass", "kept vectors", "piece checksum",
        "centroid graph"};
    vx_store t;
    uint64_t want[VX_FILE_NSECT];
    int rc, i, graph = h->p.kind == VECIDX_HNSW;
    if ((rc = vx_check_shape(h->p.kind, h->p.metric, h->p.dim)) != 0 ||
        (graph && (rc = vx_check_hnsw_params(&h->p)) != 0) ||
        (rc = vx_check_storage(&h->p)) != 0 || h->reserved != 0 ||
        (h->version < 6 &&
         (h->version >= 4) != (h->p.storage != VECIDX_STORE_F32)))
        return vx_err(NULL, VECIDX_ECORRUPT,
                      "header parameters are "
                      "invalid: %s",
                      rc ? vx_err_tls.msg : "storage word");
    if ((rc = vx_file_validate_ivf(h)) != VECIDX_OK) return rc;
    /* Version 2 graphs have aligned records; version 3 ones either layout
    ** (a version 1 graph checkpointed stays packed), told by rec and shift,
    ** which are the same for both when they coincide. */
    vx_store_init(&t, h->p.dim, h->p.metric == VECIDX_COSINE, h->p.storage,
                  h->p.keep_vectors, graph ? 2 * h->p.hnsw_m : 0,
                  (h->version >= 2 ? VX_LAYOUT_ALIGNED : 0) |
                      (h->version >= 5 ? VX_LAYOUT_APART : 0),
                  NULL);
    if (h->version == 3 && (h->shift != t.shift || h->rec != t.rec))
        vx_store_init(&t, h->p.dim, h->p.metric == VECIDX_COSINE, h->p.storage,
                      h->p.keep_vectors, graph ? 2 * h->p.hnsw_m : 0, 0, NULL);
    h->aligned = t.aligned;
    if (h->version == 5 && !t.apart)
        return vx_err(NULL, VECIDX_ECORRUPT,
                      "version 5 file without kept vectors");
    if (h->shift != t.shift || h->rec != t.rec || h->link0 != t.link0 ||
        (uint64_t)h->nchunks << t.shift > (uint64_t)VECIDX_MAX_COUNT + 65536 ||
        h->nslots > (uint64_t)h->nchunks << t.shift ||
        (uint64_t)h->count + h->nburied + h->nfree != h->nslots ||
        (h->map_cap & (h->map_cap - 1)) != 0 || h->map_cap / 2 < h->count ||
        h->map_cap > ((uint64_t)1 << 33) ||
        (graph && (h->arena_n == 0 || h->arena_n > UINT32_MAX ||
                   h->maxlevel > VX_HNSW_MAX_LEVEL || h->maxlevel < -1)))
        return vx_err(NULL, VECIDX_ECORRUPT, "header counts are inconsistent");
    for (i = 0; graph && i <= VX_HNSW_MAX_LEVEL; i++)
        if (h->arena_free[i] >= h->arena_n)
            return vx_err(NULL, VECIDX_ECORRUPT,
                          "arena free list is out of "
                          "range");
    want[VX_SECT_CHUNKS] = (uint64_t)h->nchunks * vx_store_file_chunk_bytes(&t);
    want[VX_SECT_KEPT] = t.apart
                             ? (uint64_t)h->nchunks * vx_store_kept_bytes(&t)
                             : 0;
    /* optional: without it the chunks are verified whole */
    want[VX_SECT_PIECES] = h->sect[VX_SECT_PIECES].len
                               ? ((uint64_t)h->nchunks
                                  << (t.shift - VX_PIECE_SHIFT)) *
                                     4 * (t.apart ? 2 : 1)
                               : 0;
    want[VX_SECT_ARENA] = graph ? h->arena_n * 4 : 0;
    want[VX_SECT_MAPKEYS] = h->map_cap * 8;
    want[VX_SECT_MAPSLOTS] = h->map_cap * 4;
    want[VX_SECT_FREE] = (uint64_t)h->nfree * 4;
    want[VX_SECT_IVF_MODEL] = want[VX_SECT_IVF_DIR] = 0;
    want[VX_SECT_IVF_MAP] = 0;
    want[VX_SECT_IVF_DATA] = h->ivf_trained ? h->sect[VX_SECT_IVF_DATA].len : 0;
    /* an index image with checksums of its own (vx_ivf_attach_cq) */
    want[VX_SECT_CQ] = h->ivf_trained ? h->sect[VX_SECT_CQ].len : 0;
    want[VX_SECT_REPAIR] = h->sect[VX_SECT_REPAIR].len && graph
                               ? VX_REPAIR_HEAD + (uint64_t)h->nslots
                               : 0;
    if (h->ivf_trained) {
        vecidx t0;
        t0.p = h->p;
        want[VX_SECT_IVF_MODEL] = vx_ivf_model_floats(&t0, h->ivf_nlist) *
                                  sizeof(float);
        want[VX_SECT_IVF_DIR] = (uint64_t)h->ivf_nlist * 16;
        want[VX_SECT_IVF_MAP] = vx_fhdr_map_bytes(h);
    }
    for (i = 0; i < VX_FILE_NSECT; i++) {
        if (!vx_sect_ok(&h->sect[i], size, want[i]))
            return vx_err(NULL, VECIDX_ECORRUPT,
                          "%s section lies outside "
                          "the file or has the wrong size",
                          names[i]);
        /* the big ones: see vx_lazy, vx_file_verify_data */
        if (i != VX_SECT_CHUNKS && i != VX_SECT_KEPT && i != VX_SECT_CQ &&
            !(i == VX_SECT_IVF_DATA && h->version >= 6) &&
            vx_crc32c_more(0, base + h->sect[i].off, h->sect[i].len) !=
                h->sect[i].crc)
            return vx_err(NULL, VECIDX_ECORRUPT,
                          "%s section checksum "
                          "mismatch",
                          names[i]);
    }
    return VECIDX_OK;
}

/* The repair pass a file was saved in the middle of (version 3): its
** state and marks, for the pass to go on where it was. */
static int vx_file_attach_pass(vecidx *ix, const vx_fhdr *h,
                               const unsigned char *b)
{
    vx_pass *p = &ix->hnsw.pass;
    uint32_t i;
    p->phase = vx_get32(b, 0);
    p->cursor = vx_get32(b, 4);
    p->end = vx_get32(b, 8);
    p->ndoomed = vx_get32(b, 12);
    p->level = (int32_t)vx_get32(b, 16);
    p->ipround = vx_get32(b, 20);
    p->thresh = vx_get32(b, 24);
    p->at_t = vx_get32(b, 28);
    for (i = 0; i < VX_NORM_BUCKETS; i++) p->hist[i] = vx_get32(b, 32 + 4 * i);
    if (p->phase == VX_PASS_IDLE || p->phase > VX_PASS_RETIRE ||
        p->cursor > p->end || p->end > h->nslots || p->ndoomed > h->nburied ||
        p->level < -1 || p->level > VX_HNSW_MAX_LEVEL || p->ipround > 1 ||
        p->thresh > VX_NORM_BUCKETS) {
        memset(p, 0, sizeof *p);
        return vx_err(NULL, VECIDX_ECORRUPT, "repair pass state is invalid");
    }
    if (vx_hnsw_mark_fit(ix, 1) != VECIDX_OK) return VECIDX_ENOMEM;
    memcpy(ix->hnsw.mark, b + VX_REPAIR_HEAD, h->nslots);
    return VECIDX_OK;
}

/* Point ix's storage and key map into the mapping and copy the small
** structures (graph arena, free stack). On failure the handle is left
** consistent for vecidx_close. */
static int vx_file_attach(vecidx *ix, const vx_fhdr *h, unsigned char *base)
{
    vx_store *s = &ix->store;
    vx_hnsw *g = &ix->hnsw;
    size_t cb, kb, cap, c;
    int layout = (h->aligned ? VX_LAYOUT_ALIGNED : 0) |
                 (h->version >= 5 ? VX_LAYOUT_APART : 0);
    /* The handle is new and empty: it may take the file's record layout. */
    if (layout != VX_LAYOUT_NOW)
        vx_store_init(s, s->dim, s->cosine, s->store, s->keep, s->link0, layout,
                      s->klock);
    cb = vx_store_file_chunk_bytes(s);
    kb = vx_store_kept_bytes(s);
    if (h->nchunks) {
        if (!(s->chunks = vx_malloc(&ix->mem, h->nchunks * sizeof *s->chunks)))
            return VECIDX_ENOMEM;
        s->chunk_cap = h->nchunks;
    }
    for (c = 0; c < h->nchunks; c++) {
        vx_store_point_chunk(s, &s->chunks[c],
                             base + h->sect[VX_SECT_CHUNKS].off + c * cb);
        if (s->apart)
            s->chunks[c].full =
                (float *)(void *)(base + h->sect[VX_SECT_KEPT].off + c * kb);
    }
    /* Before version 5 the whole chunk section: readahead of the codes ran
    ** on into the vectors kept after them in each chunk. */
    if (s->apart)
        vx_advise_random(base + h->sect[VX_SECT_KEPT].off, h->nchunks * kb);
    else if (s->keep)
        vx_advise_random(base + h->sect[VX_SECT_CHUNKS].off, h->nchunks * cb);
    s->nchunks = s->nmapped = h->nchunks;
    if (h->sect[VX_SECT_PIECES].len) {
        const unsigned char *sect[2];
        uint64_t off[2];
        off[0] = h->sect[VX_SECT_CHUNKS].off;
        off[1] = h->sect[VX_SECT_KEPT].off;
        sect[0] = base + off[0];
        sect[1] = base + off[1];
        if (vx_lazy_init(s, &ix->mem, sect, off,
                         base + h->sect[VX_SECT_PIECES].off) != VECIDX_OK)
            return VECIDX_ENOMEM;
    }
    s->nslots = h->nslots;
    s->count = h->count;
    s->nburied = h->nburied;
    cap = (size_t)h->nchunks << s->shift;
    if (cap && vx_store_grow_free(s, &ix->mem, cap) != VECIDX_OK)
        return VECIDX_ENOMEM;
    if (h->nfree)
        memcpy(s->free, base + h->sect[VX_SECT_FREE].off, (size_t)h->nfree * 4);
    s->nfree = h->nfree;
    /* The key map is used in place too; the mapping is private, so a write
    ** to it changes a copy of the page, never the file. */
    s->map.keys = (uint64_t *)(void *)(base + h->sect[VX_SECT_MAPKEYS].off);
    s->map.slots = (uint32_t *)(void *)(base + h->sect[VX_SECT_MAPSLOTS].off);
    s->map.cap = h->map_cap;
    s->map.n = h->count;
    s->map.mapped = 1;
    ix->fcrc = h->sect[VX_SECT_CHUNKS].crc;
    ix->fcrc_kept = h->sect[VX_SECT_KEPT].crc;
    if (ix->p.kind == VECIDX_HNSW) {
        g->untrusted = 1;
        if (!(g->arena = vx_malloc(&ix->mem, h->arena_n * 4)))
            return VECIDX_ENOMEM;
        memcpy(g->arena, base + h->sect[VX_SECT_ARENA].off, h->arena_n * 4);
        g->arena_cap = g->arena_n = h->arena_n;
        memcpy(g->arena_free, h->arena_free, sizeof g->arena_free);
        g->rng = h->rng;
        vx_hnsw_set_top(g, h->entry, h->maxlevel);
        if (h->sect[VX_SECT_REPAIR].len)
            return vx_file_attach_pass(ix, h,
                                       base + h->sect[VX_SECT_REPAIR].off);
    }
    return VECIDX_OK;
}

static int vx_image_open(unsigned char *map, uint64_t size, const char *path,
                         const vecidx_params *p, vecidx **out, vx_fhdr *h);

/* The centroid graph a file holds (version 6), used in place rather than
** built again (3 s for 8192 lists). It is a whole index file image: its
** own header and checksums, its chunks verified as they are read. It must
** be an HNSW graph of the right metric and dimension holding exactly the
** keys 0 .. nlist - 1 (the lists its searches name). */
static int vx_ivf_attach_cq(vecidx *ix, unsigned char *img, uint64_t len)
{
    vx_ivf *v = &ix->ivf;
    vecidx_params p;
    vx_fhdr h;
    uint32_t c;
    int rc;
    vecidx_params_init(&p, VECIDX_HNSW,
                       ix->p.metric == VECIDX_L2 ? VECIDX_L2 : VECIDX_IP,
                       ix->p.dim);
    p.threads = 1;
    p.allocator = ix->p.allocator;
    rc = vx_image_open(img, len, "centroid graph", &p, &v->cq, &h);
    if (rc == VECIDX_ENOMEM) return rc;
    if (rc != VECIDX_OK)
        return vx_err(NULL, VECIDX_ECORRUPT, "%s", vx_err_tls.msg);
    for (c = 0; c < v->nlist && v->cq->store.count == v->nlist &&
                !v->cq->store.nburied;
         c++)
        if (vx_map_find(&v->cq->store.map, c) == VX_NOSLOT) break;
    if (c < v->nlist || v->cq->store.count != v->nlist || v->cq->store.nburied)
        return vx_err(NULL, VECIDX_ECORRUPT,
                      "centroid graph does not hold the %u lists",
                      (unsigned)v->nlist);
    return VECIDX_OK;
}

/* Point a trained IVF-PQ index into the mapping: model, lists and key map
** are used in place; only the list directory is decoded (nlist entries)
** and the small derived tables are computed. Every list must lie inside
** the data section; the checksums were verified already. */
static int vx_ivf_attach(vecidx *ix, const vx_fhdr *h, unsigned char *base)
{
    vx_ivf *v = &ix->ivf;
    const unsigned char *dir = base + h->sect[VX_SECT_IVF_DIR].off;
    unsigned char *data = base + h->sect[VX_SECT_IVF_DATA].off;
    uint64_t dlen = h->sect[VX_SECT_IVF_DATA].len, total = 0;
    size_t vb = vx_fhdr_ivf_vb(h);
    uint32_t li;
    memset(v, 0, sizeof *v);
    v->vb = vb;
    v->nlist = h->ivf_nlist;
    v->m = h->ivf_m;
    v->npanel = (v->nlist + VX_PANEL - 1) / VX_PANEL;
    v->model_bytes = h->sect[VX_SECT_IVF_MODEL].len;
    v->model_mapped = 1;
    vx_ivf_model_point(
        ix, (float *)(void *)(base + h->sect[VX_SECT_IVF_MODEL].off));
    if (!(v->lists = vx_malloc(&ix->mem, (size_t)v->nlist * sizeof *v->lists)))
        return VECIDX_ENOMEM;
    memset(v->lists, 0, (size_t)v->nlist * sizeof *v->lists);
    for (li = 0; li < v->nlist; li++) {
        uint64_t at = vx_get64(dir, (size_t)li * 16), n;
        uint64_t codes, need;
        vx_ivlist *l = &v->lists[li];
        n = vx_get32(dir, (size_t)li * 16 + 8);
        codes = (n * v->m + 7) / 8 * 8;
        need = vx_ivl_file_bytes(n, v->m, vb);
        if (at % 8 || at > dlen || need > dlen - at)
            return vx_err(NULL, VECIDX_ECORRUPT,
                          "IVF list %u lies outside "
                          "its section",
                          (unsigned)li);
        l->keys = (uint64_t *)(void *)(data + at);
        l->codes = data + at + n * 8;
        l->vecs = vb ? (float *)(void *)(data + at + n * 8 + codes) : NULL;
        l->n = l->cap = (uint32_t)n;
        l->mapped = 1;
        total += n;
    }
    if (total != h->ivf_count)
        return vx_err(NULL, VECIDX_ECORRUPT,
                      "IVF list lengths do not add up "
                      "to the vector count");
    if (h->version >= 6) { /* a checksum per list: verified when read */
        if (!(v->lazy = vx_malloc(&ix->mem, sizeof *v->lazy)))
            return VECIDX_ENOMEM;
        memset(v->lazy, 0, sizeof *v->lazy);
        v->lazy->dir = dir;
        v->lazy->data = data;
        v->lazy->off = h->sect[VX_SECT_IVF_DATA].off;
        v->lazy->vb = vb;
        for (li = 0; li < v->nlist; li++) v->lists[li].lazy = VX_PIECE_UNKNOWN;
    }
    v->map = (uint64_t *)(void *)(base + h->sect[VX_SECT_IVF_MAP].off);
    v->map_cap = h->ivf_map_cap;
    v->map_words = vx_fhdr_map_words(h);
    v->map_n = v->count = h->ivf_count;
    v->map_mapped = 1;
    if (h->sect[VX_SECT_CQ].len) {
        int rc = vx_ivf_attach_cq(ix, base + h->sect[VX_SECT_CQ].off,
                                  h->sect[VX_SECT_CQ].len);
        if (rc != VECIDX_OK) return rc;
    }
    if (vx_ivf_derive_coarse(ix, 0) != VECIDX_OK ||
        vx_ivf_derive(ix) != VECIDX_OK)
        return VECIDX_ENOMEM;
    v->trained = 1;
    ix->act.ivf_added = 0; /* drift counts from here */
    ix->act.ivf_base = v->count;
    return VECIDX_OK;
}

/* ======================================================================
** 9. Write-ahead log
**
** PATH-wal holds every write since the main file was last written, so an
** index opened for writing can acknowledge a write by appending one record
** instead of rewriting the file. Layout (little-endian):
**   header, 32 bytes: magic "VXWAL\0\0\1", u32 version, u32 dim,
**     u64 salt = the salt stored in the main file's header,
**     u32 reserved, u32 CRC-32C of bytes 0..27;
**   records: u32 CRC-32C of the rest of the record (seeded with the salt),
**     u32 type, u64 sequence number (1, 2, ...), u64 row count n, then n
**     rows of (u64 key[, dim float32 for adds and upserts]).
** A batch is one record, so recovery replays it whole or not at all.
** Recovery reads records in order and stops at the first that is short,
** fails its checksum or breaks the sequence: that is the torn tail of an
** interrupted append, and the log is cut there. A log whose salt is not
** the main file's belongs to another file -- the one a checkpoint replaced
** before its last step (restarting the log) could run, or an index saved
** earlier at the same path -- and is discarded.
** ====================================================================== */

#define VX_WAL_MAGIC "VXWAL\0\0\1"
#define VX_WAL_HEADER 32u
#define VX_WAL_REC_HEAD 24u
#define VX_WAL_NORMAL_MS 10 /* SYNC_NORMAL fsync interval */
enum {
    VX_WAL_ADD = 1,
    VX_WAL_UPSERT = 2,
    VX_WAL_REMOVE = 3
};
/* A log change that failed half-way: the tail after `end` must be cut, or
** the log restarted under `salt` (a checkpoint renamed its new main file
** in but could not reset the log; RESTART_DIR: nor sync the directory
** after the rename, so the old file may yet come back and needs the old
** log until the directory is synced). Writes wait until vx_wal_repair. */
enum {
    VX_WAL_CUT = 1,
    VX_WAL_RESTART = 2,
    VX_WAL_RESTART_DIR = 3
};

static void vx_wal_header(unsigned char *b, uint32_t dim, uint64_t salt)
{
    memset(b, 0, VX_WAL_HEADER);
    memcpy(b, VX_WAL_MAGIC, 8);
    vx_put32(b, 8, 1);
    vx_put32(b, 12, dim);
    vx_put64(b, 16, salt);
    vx_put32(b, 28, vx_crc32c_more(0, b, 28));
}

static size_t vx_wal_row_bytes(uint32_t type, uint32_t dim)
{
    return 8 + (type == VX_WAL_REMOVE ? 0 : (size_t)dim * sizeof(float));
}

static double vx_ms_since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t->tv_sec) * 1e3 +
           (double)(now.tv_nsec - t->tv_nsec) / 1e6;
}

static int vx_wal_fsync(vx_wal *w)
{
    if (vx_io_cur->fsync(w->fd) != 0) {
        /* under SYNC_FULL no acknowledged record waits for an fsync */
        if (w->dirty && w->sync != VECIDX_SYNC_FULL) w->unsynced = 1;
        return -1;
    }
    w->dirty = 0;
    clock_gettime(CLOCK_MONOTONIC, &w->last_sync);
    return 0;
}

/* The error of a write or sync refused after a failed fsync (unsynced). */
static int vx_wal_unsynced_err(vecidx *ix)
{
    return vx_err(ix, VECIDX_EIO,
                  "an earlier fsync of the write-ahead log or its directory "
                  "failed, so acknowledged writes may not be on disk: "
                  "vecidx_checkpoint writes them anew");
}

/* Start an empty log for the main file whose salt is `salt`. */
static int vx_wal_reset(vx_wal *w, uint32_t dim, uint64_t salt)
{
    unsigned char b[VX_WAL_HEADER];
    vx_wal_header(b, dim, salt);
    w->dirty = 0; /* the main file holds every write: none waits here */
    if (vx_io_cur->ftruncate(w->fd, 0) != 0 ||
        vx_io_write_all(w->fd, b, sizeof b, 0) != 0 || vx_wal_fsync(w) != 0)
        return -1;
    w->end = VX_WAL_HEADER;
    w->seq = 0;
    w->salt = salt;
    w->unsynced = 0; /* the main file holds every write */
    return 0;
}

/* Finish a log change that failed half-way (see VX_WAL_CUT). */
static int vx_wal_repair(vecidx *ix, vx_wal *w)
{
    int failed = w->broken == VX_WAL_CUT
                     ? vx_io_cur->ftruncate(w->fd, (off_t)w->end) != 0 ||
                           vx_wal_fsync(w) != 0
                     : (w->broken == VX_WAL_RESTART_DIR &&
                        vx_io_sync_dir(w->path)) ||
                           vx_wal_reset(w, ix->p.dim, w->salt) != 0;
    if (failed)
        return vx_err(ix, VECIDX_EIO,
                      "the write-ahead log could not be "
                      "repaired after an earlier failure: %s",
                      strerror(errno));
    w->broken = 0;
    return VECIDX_OK;
}

/* Append one record and make it as durable as the sync mode promises.
** On failure the log is cut back to where it was, so a later append does
** not land behind a broken record; if even that fails, the next write
** retries the cut first (vx_wal_repair) rather than risk acknowledging a
** write that recovery would not reach. */
static int vx_wal_append(vecidx *ix, vx_wal *w, uint32_t type, size_t n,
                         const uint64_t *keys, const float *vecs)
{
    size_t row = vx_wal_row_bytes(type, ix->p.dim), len, i, at;
    unsigned char *buf;
    int ok;
    if (!vx_mul_ok(n, row, &len) || len > SIZE_MAX - VX_WAL_REC_HEAD)
        return vx_err(ix, VECIDX_EINVAL, "batch too large for the log");
    len += VX_WAL_REC_HEAD;
    if (!(buf = vx_malloc(&ix->mem, len)))
        return vx_err(ix, VECIDX_ENOMEM, "out of memory logging %zu rows", n);
    vx_put32(buf, 4, type);
    vx_put64(buf, 8, w->seq + 1);
    vx_put64(buf, 16, n);
    for (i = 0, at = VX_WAL_REC_HEAD; i < n; i++, at += row) {
        vx_put64(buf, at, keys[i]);
        if (type != VX_WAL_REMOVE)
            memcpy(buf + at + 8, vecs + i * (size_t)ix->p.dim, row - 8);
    }
    vx_put32(buf, 0, vx_crc32c_more((uint32_t)w->salt, buf + 4, len - 4));
    ok = vx_io_write_all(w->fd, buf, len, (off_t)w->end) == 0;
    vx_free(&ix->mem, buf, len);
    /* dirty counts this record only once it is acknowledged: a failed
    ** fsync puts at risk only the records acknowledged before it, and
    ** this one is cut back and reported failed below */
    if (ok && (w->sync == VECIDX_SYNC_FULL ||
               (w->sync == VECIDX_SYNC_NORMAL &&
                vx_ms_since(&w->last_sync) >= VX_WAL_NORMAL_MS)))
        ok = vx_wal_fsync(w) == 0;
    else if (ok)
        w->dirty = 1;
    if (!ok) {
        int e = errno;
        if (vx_io_cur->ftruncate(w->fd, (off_t)w->end) != 0)
            w->broken = VX_WAL_CUT;
        return vx_err(ix, VECIDX_EIO,
                      "cannot append to the write-ahead "
                      "log: %s",
                      strerror(e));
    }
    w->end += len;
    w->seq++;
    return VECIDX_OK;
}

/* Apply one logged write; the write lock is held and logging is off. */
static int vx_wal_apply(vecidx *ix, uint32_t type, size_t n,
                        const uint64_t *keys, const float *vecs);

/* Read the record at off into *out. Returns 1 for a whole, valid record
** that continues the sequence, 0 for the end of the log (nothing more, or
** a torn or stale record), -1 when out of memory, -2 when a read failed
** (errno set). A failed read is not the end of the log: taken for one, a
** writer would append over the records after it, acknowledged writes. */
static int vx_wal_read_rec(vecidx *ix, const vx_wal *w, int fd, uint64_t off,
                           uint64_t size, unsigned char **out, size_t *len)
{
    unsigned char head[VX_WAL_REC_HEAD], *buf;
    uint64_t n;
    uint32_t type;
    size_t row;
    int r;
    if (size - off < VX_WAL_REC_HEAD) return 0;
    if ((r = vx_io_read_all(fd, head, sizeof head, off)) != 0)
        return r < 0 ? -2 : 0;
    type = vx_get32(head, 4);
    n = vx_get64(head, 16);
    if (type < VX_WAL_ADD || type > VX_WAL_REMOVE ||
        vx_get64(head, 8) != w->seq + 1 || n == 0)
        return 0;
    row = vx_wal_row_bytes(type, ix->p.dim);
    if (n > (size - off - VX_WAL_REC_HEAD) / row) return 0;
    *len = VX_WAL_REC_HEAD + (size_t)n * row;
    if (!(buf = vx_malloc(&ix->mem, *len))) return -1;
    if ((r = vx_io_read_all(fd, buf, *len, off)) != 0 ||
        vx_get32(buf, 0) !=
            vx_crc32c_more((uint32_t)w->salt, buf + 4, *len - 4)) {
        int e = errno;
        vx_free(&ix->mem, buf, *len);
        errno = e;
        return r < 0 ? -2 : 0;
    }
    *out = buf;
    return 1;
}

/* Decode a record's rows and apply them. */
static int vx_wal_apply_rec(vecidx *ix, const unsigned char *buf)
{
    uint32_t type = vx_get32(buf, 4);
    size_t n = (size_t)vx_get64(buf, 16), i;
    size_t row = vx_wal_row_bytes(type, ix->p.dim), vb = row - 8;
    uint64_t *keys = vx_malloc(&ix->mem, n * sizeof *keys);
    float *vecs = vb ? vx_malloc(&ix->mem, n * vb) : NULL;
    int rc = VECIDX_ENOMEM;
    if (keys && (vecs || !vb)) {
        for (i = 0; i < n; i++) {
            const unsigned char *r = buf + VX_WAL_REC_HEAD + i * row;
            keys[i] = vx_get64(r, 0);
            if (vb) memcpy(vecs + i * (size_t)ix->p.dim, r + 8, vb);
        }
        rc = vx_wal_apply(ix, type, n, keys, vecs);
    }
    vx_free(&ix->mem, keys, n * sizeof *keys);
    vx_free(&ix->mem, vecs, vb ? n * vb : 0);
    return rc;
}

/* Replay the log of fd (size bytes) into ix, which holds the main file's
** state. The log is the main file's when it carries its salt (w->salt on
** entry), or the log the file continues when it carries chain_salt: its
** records up to sequence skip are in the file already (a checkpoint that
** writes went on during, vx_checkpoint_run). Sets w->salt to the log's,
** w->end and w->seq after the last good record, and *skipped to the end
** of the records skipped; w->end = 0 means the log is absent, stale or
** damaged in its header and must be started afresh. */
static int vx_wal_replay(vecidx *ix, vx_wal *w, int fd, const char *wpath,
                         uint64_t size, uint64_t chain_salt, uint64_t skip,
                         uint64_t *skipped)
{
    unsigned char hb[VX_WAL_HEADER], want[VX_WAL_HEADER];
    uint64_t off = VX_WAL_HEADER;
    int rc;
    w->end = 0;
    w->seq = 0;
    *skipped = VX_WAL_HEADER;
    vx_wal_header(want, ix->p.dim, w->salt);
    if (size < VX_WAL_HEADER) return VECIDX_OK;
    if ((rc = vx_io_read_all(fd, hb, sizeof hb, 0)) != 0) {
        if (rc > 0) return VECIDX_OK; /* cut short since fstat */
        return vx_err(NULL, VECIDX_EIO,
                      "cannot read the write-ahead log '%s': %s", wpath,
                      strerror(errno));
    }
    if (memcmp(hb, want, sizeof hb) == 0) {
        skip = 0;
    } else {
        vx_wal_header(want, ix->p.dim, chain_salt);
        if (!chain_salt || memcmp(hb, want, sizeof hb) != 0) return VECIDX_OK;
        w->salt = chain_salt;
    }
    for (;;) {
        size_t len;
        unsigned char *buf;
        rc = vx_wal_read_rec(ix, w, fd, off, size, &buf, &len);
        if (rc == -2)
            return vx_err(NULL, VECIDX_EIO,
                          "cannot read the write-ahead log '%s': %s", wpath,
                          strerror(errno));
        if (rc < 0)
            return vx_err(NULL, VECIDX_ENOMEM,
                          "out of memory reading the "
                          "write-ahead log");
        if (rc == 0) break;
        if (w->seq < skip) {
            vx_free(&ix->mem, buf, len);
            off += len;
            *skipped = off;
            w->seq++;
            continue;
        }
        rc = vx_wal_apply_rec(ix, buf);
        vx_free(&ix->mem, buf, len);
        if (rc != VECIDX_OK)
            return vx_err(NULL, rc == VECIDX_ENOMEM ? rc : VECIDX_ECORRUPT,
                          "log record %llu does not apply to the index: %s",
                          (unsigned long long)w->seq + 1, vx_err_tls.msg);
        off += len;
        w->seq++;
    }
    w->end = off;
    return VECIDX_OK;
}

/* Moving the log to a new salt: a new log file holds the records of the
** old one from a byte offset on, renumbered from 1 and checksummed with
** the new salt, and is renamed over the old one once durable. It is
** filled in two goes, the bulk while writes go on and the rest under the
** writer lock, so that writers wait only for the last few records. */
typedef struct vx_walsw {
    int fd, ofd; /* the new log, the old one */
    uint64_t osalt;
    uint64_t src;  /* next byte of the old log to copy */
    uint64_t sseq; /* sequence number of the record before src */
    uint64_t end;  /* bytes of the new log */
    uint64_t seq;  /* records in the new log */
    uint64_t salt;
    char path[4200];
} vx_walsw;

/* Writer lock held (the old log's fd and salt are read). */
static int vx_walsw_begin(vecidx *ix, vx_walsw *sw, uint64_t from, uint64_t seq,
                          uint64_t salt)
{
    unsigned char b[VX_WAL_HEADER];
    memset(sw, 0, sizeof *sw);
    snprintf(sw->path, sizeof sw->path, "%s-wal.new", ix->wal.path);
    sw->ofd = ix->wal.fd;
    sw->osalt = ix->wal.salt;
    sw->src = from;
    sw->sseq = seq;
    sw->salt = salt;
    sw->end = VX_WAL_HEADER;
    vx_wal_header(b, ix->p.dim, salt);
    if ((sw->fd = vx_io_cur->open(sw->path, O_RDWR | O_CREAT | O_TRUNC, 0644)) <
        0)
        return -1;
    /* Locked like the log it replaces, before anyone can open it as that */
    if (vx_io_cur->flock(sw->fd, LOCK_EX | LOCK_NB) != 0 ||
        vx_io_write_all(sw->fd, b, sizeof b, 0) != 0) {
        vx_io_cur->close(sw->fd);
        vx_io_cur->unlink(sw->path);
        return -1;
    }
    return 0;
}

/* Copy the old log's records up to byte `to` (its end when the copy
** began, or now). 0, or -1 with errno set. */
static int vx_walsw_copy(vecidx *ix, vx_walsw *sw, uint64_t to)
{
    vx_wal from;
    memset(&from, 0, sizeof from);
    from.salt = sw->osalt;
    from.seq = sw->sseq;
    while (sw->src < to) {
        unsigned char *buf;
        size_t len;
        int rc = vx_wal_read_rec(ix, &from, sw->ofd, sw->src, to, &buf, &len);
        if (rc <= 0) {
            if (rc != -2) errno = rc < 0 ? ENOMEM : EIO;
            return -1;
        }
        vx_put64(buf, 8, sw->seq + 1);
        vx_put32(buf, 0, vx_crc32c_more((uint32_t)sw->salt, buf + 4, len - 4));
        rc = vx_io_write_all(sw->fd, buf, len, (off_t)sw->end);
        vx_free(&ix->mem, buf, len);
        if (rc != 0) return -1;
        sw->src += len;
        sw->sseq = ++from.seq;
        sw->end += len;
        sw->seq++;
    }
    return 0;
}

static void vx_walsw_abort(vx_walsw *sw)
{
    if (sw->fd < 0) return;
    vx_io_cur->close(sw->fd);
    vx_io_cur->unlink(sw->path);
    sw->fd = -1;
}

/* Writer lock held: copy the rest, sync, rename over the log, and make
** the handle append to the new one. On failure the old log is kept (it
** is valid for the main file either way). */
static int vx_walsw_commit(vecidx *ix, vx_walsw *sw)
{
    vx_wal *w = &ix->wal;
    char wpath[4200];
    snprintf(wpath, sizeof wpath, "%s-wal", w->path);
    /* The old log synced too: until the directory is, a power cut may
    ** leave its name on the old one, which must then hold the records. */
    if (vx_walsw_copy(ix, sw, w->end) != 0 || vx_io_cur->fsync(sw->fd) != 0 ||
        (w->dirty && vx_wal_fsync(w) != 0) ||
        vx_io_cur->rename(sw->path, wpath) != 0) {
        int e = errno;
        vx_walsw_abort(sw);
        errno = e;
        return -1;
    }
    vx_io_cur->close(w->fd);
    w->fd = sw->fd;
    w->end = sw->end;
    w->seq = sw->seq;
    w->salt = sw->salt;
    w->dirty = 0;
    w->broken = 0;
    clock_gettime(CLOCK_MONOTONIC, &w->last_sync);
    sw->fd = -1;
    /* Each record was read back whole and synced, so the new log needs no
    ** page a failed fsync of the old one may have dropped -- once its name
    ** is durable: until then a power cut may bring back the old log (which
    ** the main file still accepts), and writes to the new one would go. */
    w->unsynced = vx_io_sync_dir(wpath) != 0;
    return 0;
}

/* ======================================================================
** 10. Public API
** ====================================================================== */

#define VX_NULL_CHECK(ix, ptr, what)                              \
    do {                                                          \
        if ((ptr) == NULL)                                        \
            return vx_err(ix, VECIDX_EINVAL, "%s is NULL", what); \
    } while (0)

/* Writers refuse read-only handles before touching anything. */
#define VX_WRITABLE(ix)                                                     \
    do {                                                                    \
        if ((ix)->rdonly)                                                   \
            return vx_err(ix, VECIDX_ESTATE, "index was opened read-only"); \
    } while (0)

#define VX_KEY_FMT "%llu"
#define VX_KEY(k) ((unsigned long long)(k))

/* At the end of every write: close the batch of slots it retired, and
** reclaim what no running search can reach any more -- everything, when
** no search runs, so that without concurrent searches slots are reused
** in the same order whatever the timing. */
static void vx_reclaim(vecidx *ix)
{
    vx_store *s = &ix->store;
    uint64_t oldest;
    uint32_t n, i;
    unsigned nb;
    if (s->nlimbo > s->nsealed) vx_store_seal(s, vx_ebr_advance(&ix->ebr));
    if (!s->nlimbo && !ix->ebr.head) return;
    oldest = vx_ebr_oldest(&ix->ebr);
    vx_ebr_collect(&ix->ebr, &ix->mem, oldest, 0);
    n = vx_store_reclaimable(s, oldest, &nb);
    for (i = 0; i < n; i++) {
        vx_snap_touch(ix, s->limbo[i]);
        if (ix->p.kind == VECIDX_HNSW) vx_hnsw_unplace(ix, s->limbo[i]);
    }
    vx_store_reclaim(s, n, nb);
}

/* Readers: a search, get or check of keys enters the epoch scheme, so
** that what it may still read is not reclaimed under it. */
static uint64_t *vx_read_begin(vecidx *ix)
{
    return vx_ebr_enter(&ix->ebr, &ix->mem);
}

const char *vecidx_version(void)
{
    return VECIDX_VERSION_STRING;
}

int vecidx_version_number(void)
{
    return VECIDX_VERSION_NUMBER;
}

const char *vecidx_simd(void)
{
    return vx_kernel_best()->name;
}

const char *vecidx_strerror(int code)
{
    switch (code) {
    case VECIDX_OK:
        return "success";
    case VECIDX_EINVAL:
        return "invalid argument";
    case VECIDX_ENOMEM:
        return "out of memory";
    case VECIDX_EIO:
        return "I/O error";
    case VECIDX_ECORRUPT:
        return "index data is corrupt";
    case VECIDX_ENOTFOUND:
        return "key not found";
    case VECIDX_EEXIST:
        return "key already exists";
    case VECIDX_EDIM:
        return "dimension out of range or mismatched";
    case VECIDX_ESTATE:
        return "operation not valid in this state";
    case VECIDX_EVERSION:
        return "unsupported format version";
    case VECIDX_ENOTSUP:
        return "not supported";
    case VECIDX_EFULL:
        return "index is full";
    default:
        return "unknown error";
    }
}

const char *vecidx_errmsg(const vecidx *ix)
{
    if (ix != NULL && vx_err_tls.ix != ix && vx_err_tls.ix != NULL) return "";
    return vx_err_tls.msg;
}

int vecidx_params_init(vecidx_params *p, int kind, int metric, uint32_t dim)
{
    if (p == NULL) return vx_err(NULL, VECIDX_EINVAL, "params pointer is NULL");
    memset(p, 0, sizeof *p);
    p->kind = kind;
    p->metric = metric;
    p->dim = dim;
    p->seed = 42;
    p->hnsw_m = 16;
    p->hnsw_ef_construction = 200;
    p->hnsw_ef_search = 64;
    p->ivf_nprobe = 8;
    p->pq_nbits = 8;
    return vx_check_shape(kind, metric, dim);
}

/* A new empty handle for the already validated params p. */
static int vx_handle_new(const vecidx_params *p, vecidx **out)
{
    const vecidx_allocator *a = &p->allocator;
    const char *why;
    vx_mem mem;
    vecidx *ix;
    int nset = !!a->malloc_fn + !!a->realloc_fn + !!a->free_fn;
    if (nset != 0 && nset != 3)
        return vx_err(NULL, VECIDX_EINVAL,
                      "allocator: set all of malloc_fn, realloc_fn and "
                      "free_fn, or none (%d of 3 set)",
                      nset);
    mem.a = *a;
    atomic_init(&mem.bytes, 0);
    ix = vx_malloc(&mem, sizeof *ix);
    if (!ix) return vx_err(NULL, VECIDX_ENOMEM, "out of memory creating index");
    memset(ix, 0, sizeof *ix);
    ix->p = *p;
    ix->mem.a = *a;
    atomic_init(&ix->mem.bytes, atomic_load(&mem.bytes));
    ix->kern = vx_kernel_best();
    ix->wal.fd = -1;
    vx_store_init(&ix->store, p->dim, p->metric == VECIDX_COSINE, p->storage,
                  p->keep_vectors, p->kind == VECIDX_HNSW ? 2 * p->hnsw_m : 0,
                  VX_LAYOUT_NOW, &ix->lock);
    /* Each step undone on failure; the handle is freed through a copy of
    ** its allocator, as it holds the counter vx_free updates. */
    why = "cannot initialise index lock";
    if (vx_rwlock_init(&ix->lock) != 0) goto fail0;
    why = "cannot initialise writer lock";
    if (pthread_mutex_init(&ix->wlock, NULL) != 0) goto fail1;
    if (pthread_cond_init(&ix->snap_cv, NULL) != 0) goto fail2;
    why = "out of memory creating index";
    if (vx_ebr_init(&ix->ebr, &ix->mem) != VECIDX_OK) goto fail3;
    why = "cannot initialise graph locks";
    if (p->kind == VECIDX_HNSW && vx_hnsw_init(ix) != VECIDX_OK) goto fail4;
    *out = ix;
    return VECIDX_OK;
fail4:
    vx_ebr_destroy(&ix->ebr, &ix->mem);
fail3:
    pthread_cond_destroy(&ix->snap_cv);
fail2:
    pthread_mutex_destroy(&ix->wlock);
fail1:
    pthread_rwlock_destroy(&ix->lock);
fail0:
    mem = ix->mem;
    vx_free(&mem, ix, sizeof *ix);
    return vx_err(NULL, VECIDX_ENOMEM, "%s", why);
}

int vecidx_create(const vecidx_params *p, vecidx **out)
{
    vecidx *ix;
    int rc;
    if (out) *out = NULL;
    if (p == NULL || out == NULL)
        return vx_err(NULL, VECIDX_EINVAL, "%s is NULL",
                      p ? "output handle pointer" : "params pointer");
    if ((rc = vx_check_shape(p->kind, p->metric, p->dim)) != VECIDX_OK)
        return rc;
    if (p->kind == VECIDX_HNSW && (rc = vx_check_hnsw_params(p)) != VECIDX_OK)
        return rc;
    if (p->kind == VECIDX_IVFPQ && (rc = vx_check_ivf_params(p)) != 0)
        return rc;
    if ((rc = vx_check_storage(p)) != VECIDX_OK) return rc;
    if ((rc = vx_handle_new(p, &ix)) != VECIDX_OK) return rc;
    if (p->capacity && (rc = vx_store_reserve(&ix->store, &ix->mem, &ix->ebr,
                                              p->capacity)) != 0) {
        vecidx_close(ix);
        return vx_err(NULL, rc, "cannot reserve room for %u vectors",
                      (unsigned)p->capacity);
    }
    *out = ix;
    return VECIDX_OK;
}

/* vecidx_check's work; deep adds the quadratic duplicate-link test. */
static int vx_check_locked(vecidx *ix, int deep)
{
    const char *why = NULL, *part = "storage";
    uint32_t slot = VX_NOSLOT;
    int rc = vx_file_verify_data(ix);
    if (rc != VECIDX_OK) return rc;
    why = vx_store_check(&ix->store, ix->p.kind == VECIDX_HNSW, &slot);
    if (!why && ix->p.kind == VECIDX_HNSW) {
        part = "graph";
        why = vx_hnsw_check(ix, deep, &slot);
    }
    if (!why && ix->p.kind == VECIDX_IVFPQ) {
        part = "inverted lists";
        why = vx_ivf_check(ix);
    }
    if (!why && ix->ivf.cq && (rc = vx_check_locked(ix->ivf.cq, deep)) != 0)
        return vx_err(ix, rc, "centroid graph: %s", vx_err_tls.msg);
    if (why && slot != VX_NOSLOT)
        rc = vx_err(ix, VECIDX_ECORRUPT, "%s, slot %u: %s", part,
                    (unsigned)slot, why);
    else if (why)
        rc = vx_err(ix, VECIDX_ECORRUPT, "%s: %s", part, why);
    return rc;
}

/* Check a file's parameters against the caller's, when given. */
static int vx_open_match(const char *path, const vecidx_params *want,
                         const vecidx_params *have)
{
    if (want == NULL) return VECIDX_OK;
    if (want->dim != have->dim)
        return vx_err(NULL, VECIDX_EDIM,
                      "dimension %u does not match index "
                      "dimension %u in '%s'",
                      (unsigned)want->dim, (unsigned)have->dim, path);
    if (want->kind != have->kind || want->metric != have->metric)
        return vx_err(NULL, VECIDX_EINVAL,
                      "'%s' holds a %s index with "
                      "metric %d, not %s with metric %d",
                      path, vx_kind_name(have->kind), have->metric,
                      vx_kind_name(want->kind), want->metric);
    return VECIDX_OK;
}

/* The few slot numbers a reader uses without the bounds of vx_hnsw_read:
** the entry point and the key map's targets. */
static const char *vx_file_check_roots(const vecidx *ix)
{
    const vx_store *s = &ix->store;
    uint32_t entry;
    int maxlevel;
    size_t i;
    for (i = 0; i < s->map.cap; i++)
        if (s->map.slots[i] != VX_NOSLOT && s->map.slots[i] >= s->nslots)
            return "key map points past the used slots";
    for (i = 0; i < s->nfree; i++)
        if (s->free[i] >= s->nslots) return "free slot out of range";
    if (ix->p.kind != VECIDX_HNSW) return NULL;
    entry = vx_hnsw_top(&ix->hnsw, &maxlevel);
    if (s->count + s->nburied == 0)
        return entry == VX_NOSLOT ? NULL : "empty graph has an entry";
    if (entry >= s->nslots || maxlevel < 0)
        return "graph entry point is out of range";
    return NULL;
}

/* A handle over the index file image at map (size bytes, from a page
** boundary): the header decoded into h and checked, the sections used in
** place. path names the image in messages. On failure *out is NULL and
** the message is set; the caller keeps the image. */
static int vx_image_open(unsigned char *map, uint64_t size, const char *path,
                         const vecidx_params *p, vecidx **out, vx_fhdr *h)
{
    vecidx *ix = NULL;
    const char *why;
    int rc = vx_fhdr_decode(map, (size_t)size, h);
    *out = NULL;
    if (rc == VECIDX_OK) rc = vx_file_validate(h, map, size);
    if (rc == VECIDX_OK) rc = vx_open_match(path, p, &h->p);
    if (rc == VECIDX_OK) {
        if (p) { /* the caller's run-time choices, the file's shape */
            h->p.threads = p->threads;
            h->p.allocator = p->allocator;
            h->p.progress = p->progress;
            h->p.progress_ctx = p->progress_ctx;
        }
        rc = vx_handle_new(&h->p, &ix);
    }
    if (rc != VECIDX_OK) return rc;
    ix->fpristine = 1;
    rc = vx_file_attach(ix, h, map);
    if (rc == VECIDX_OK && h->ivf_trained) rc = vx_ivf_attach(ix, h, map);
    if (rc != VECIDX_OK) {
        vecidx_close(ix);
        return rc == VECIDX_ECORRUPT
                   ? vx_err(NULL, rc, "'%s' is inconsistent: %s", path,
                            vx_err_tls.msg)
                   : vx_err(NULL, VECIDX_ENOMEM, "out of memory opening '%s'",
                            path);
    }
    if ((why = vx_file_check_roots(ix)) != NULL) {
        vecidx_close(ix);
        return vx_err(NULL, VECIDX_ECORRUPT, "'%s' is inconsistent: %s", path,
                      why);
    }
    *out = ix;
    return VECIDX_OK;
}

/* An index opened from its file is read in place: walks read its chunks
** and keyed scans its key maps at random places, and on 4 KiB pages
** nearly every such read also misses the TLB, as in memory (vx_huge_map).
** Where the kernel keeps file pages in large folios (XFS since Linux
** 5.18, ext4 since 6.16), MADV_HUGEPAGE has it read and map each aligned
** 2 MiB piece of those sections whole. On 1M x 128 read-only (bench/RESULTS.md,
** 2026-12-06) flat and HNSW keyed scans of 1,000 keys went from 0.77-0.81x
** a hand loop to 0.98-1.08x, and float32 HNSW walks ran 18-22% faster. But
** a piece is then read, kept and dropped whole, so a file larger than
** memory would keep only a fraction of the pages it needs cached: only a
** file of at most half the machine's memory is advised. The advice covers
** every piece a section touches: readahead from an unadvised first piece
** filled the rest with small folios before they were touched. Given
** before the first read of the sections (vx_file_validate's checksums),
** and the first piece before the header's. Kept float32 vectors, read a
** few at a time, and IVF-PQ's lists are left alone. */
static void vx_advise_huge(unsigned char *map, size_t size)
{
#if VX_HAVE_HUGE
    static const int sect[] = {VX_SECT_CHUNKS, VX_SECT_MAPKEYS,
                               VX_SECT_MAPSLOTS, VX_SECT_IVF_MAP};
    long pages = sysconf(_SC_PHYS_PAGES), pg = sysconf(_SC_PAGESIZE);
    uint64_t half = pages > 0 && pg > 0 ? (uint64_t)pages * (uint64_t)pg / 2
                                        : 0;
    vx_fhdr h;
    size_t i;
    if ((uint64_t)size > half) return;
    /* The header's read would read ahead into the first pieces (8 MiB with
    ** read_ahead_kb 8192): advised first, it reads huge folios instead. */
    (void)madvise(map, size < VX_HUGE_PAGE ? size : VX_HUGE_PAGE,
                  MADV_HUGEPAGE);
    if (vx_fhdr_decode(map, size, &h) != VECIDX_OK) return;
    for (i = 0; i < sizeof sect / sizeof sect[0]; i++) {
        const vx_sect *sc = &h.sect[sect[i]];
        uintptr_t a, e;
        if (sc->off > size || sc->len > size - sc->off || !sc->len) continue;
        /* with no section of their own, kept vectors sit in the chunks */
        if (sect[i] == VX_SECT_CHUNKS && h.p.keep_vectors &&
            !h.sect[VX_SECT_KEPT].len)
            continue;
        a = (uintptr_t)(map + sc->off) & ~(VX_HUGE_PAGE - 1);
        e = ((uintptr_t)(map + sc->off + sc->len) + VX_HUGE_PAGE - 1) &
            ~(VX_HUGE_PAGE - 1);
        if (a < (uintptr_t)map) a = (uintptr_t)map;
        if (e > (uintptr_t)(map + size)) e = (uintptr_t)(map + size);
        (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
    }
#else
    (void)map;
    (void)size;
#endif
}

/* Map path and build a handle over the mapping. The mapping is private
** and writable, so replaying the log (and, for writable handles, later
** writes) changes private copies of the pages touched, never the file.
** A lean reader keeps the file open to read kept vectors (vx_lazy.fd). */
static int vx_open_map(const char *path, const vecidx_params *p, vecidx **out,
                       vx_fhdr *h, int lean)
{
    struct stat st;
    unsigned char *map;
    int fd, rc;
    if ((fd = vx_io_cur->open(path, O_RDONLY, 0)) < 0)
        return vx_err(NULL, VECIDX_EIO, "cannot open '%s': %s", path,
                      strerror(errno));
    if (vx_io_cur->fstat(fd, &st) != 0) {
        rc = errno;
        vx_io_cur->close(fd);
        return vx_err(NULL, VECIDX_EIO, "cannot stat '%s': %s", path,
                      strerror(rc));
    }
    if (st.st_size < (off_t)VX_FILE_HEADER) {
        vx_io_cur->close(fd);
        return vx_err(NULL, VECIDX_ECORRUPT,
                      "'%s' is %lld bytes, too short for an index file", path,
                      (long long)st.st_size);
    }
    map = vx_io_cur->mmap((size_t)st.st_size, PROT_READ | PROT_WRITE, fd);
    if (!map) {
        rc = errno;
        vx_io_cur->close(fd);
        return vx_err(NULL, VECIDX_EIO, "cannot map '%s': %s", path,
                      strerror(rc));
    }
    vx_advise_huge(map, (size_t)st.st_size);
    if ((rc = vx_image_open(map, (uint64_t)st.st_size, path, p, out, h)) !=
        VECIDX_OK) {
        vx_io_cur->close(fd);
        vx_io_cur->munmap(map, (size_t)st.st_size);
        return rc;
    }
    (*out)->fmap = map;
    (*out)->fmap_len = (size_t)st.st_size;
    if (lean && (*out)->store.lazy && (*out)->store.apart)
        (*out)->store.lazy->fd = fd;
    else
        vx_io_cur->close(fd); /* the mapping keeps the file open */
    return VECIDX_OK;
}

/* Before changing a mapped index (replaying its log, or writing), check
** all of it: writes follow links without the bounds of vx_hnsw_read. */
static int vx_open_verify(vecidx *ix, const char *path)
{
    int rc = vx_check_locked(ix, 0);
    if (rc != VECIDX_OK)
        return vx_err(NULL, rc, "'%s': %s", path, vx_err_tls.msg);
    return VECIDX_OK;
}

/* Open (or create) the log beside path and replay it. A writable handle
** locks the log (one writer per index) and cuts a torn tail; a reader
** replays what is valid and leaves the file alone. */
static int vx_open_wal(vecidx *ix, const char *path, const vx_fhdr *h,
                       int writable)
{
    vx_wal *w = &ix->wal;
    uint64_t salt = h->salt, skipped;
    char wpath[4200];
    struct stat st;
    int fd, rc;
    snprintf(wpath, sizeof wpath, "%s-wal", path);
    fd = vx_io_cur->open(wpath, writable ? O_RDWR | O_CREAT : O_RDONLY, 0644);
    if (fd < 0 && !writable && errno == ENOENT) return VECIDX_OK;
    if (fd < 0)
        return vx_err(NULL, VECIDX_EIO, "cannot open '%s': %s", wpath,
                      strerror(errno));
    if (writable && vx_io_cur->flock(fd, LOCK_EX | LOCK_NB) != 0) {
        rc = errno;
        vx_io_cur->close(fd);
        return vx_err(NULL, rc == EWOULDBLOCK ? VECIDX_ESTATE : VECIDX_EIO,
                      "'%s' %s", path,
                      rc == EWOULDBLOCK ? "is open for writing elsewhere"
                                        : "cannot be locked");
    }
    w->fd = fd;
    w->salt = salt;
    clock_gettime(CLOCK_MONOTONIC, &w->last_sync);
    if (vx_io_cur->fstat(fd, &st) != 0)
        return vx_err(NULL, VECIDX_EIO, "cannot stat '%s': %s", wpath,
                      strerror(errno));
    /* The log changes private copies of mapped pages, which pread would
    ** not see: a reader that replays reads through the mapping. */
    if (st.st_size > VX_WAL_HEADER) vx_lazy_drop_fd(&ix->store);
    if (st.st_size > VX_WAL_HEADER && (rc = vx_open_verify(ix, path)) != 0)
        return rc;
    /* A handle that may write gets the marks for repairing nodes that were
    ** saved buried; a reader with nothing to replay never repairs. */
    if ((writable || st.st_size > VX_WAL_HEADER) && ix->p.kind == VECIDX_HNSW &&
        ix->store.nburied && vx_hnsw_mark_fit(ix, 1) != VECIDX_OK)
        return vx_err(NULL, VECIDX_ENOMEM, "out of memory opening '%s'", path);
    /* As one write, with no automatic checkpoint: the log may yet move. */
    vx_write_begin(ix);
    ix->replaying = 1;
    rc = vx_wal_replay(ix, w, fd, wpath, (uint64_t)st.st_size, h->log_salt,
                       h->log_seq, &skipped);
    vx_write_end(ix);
    ix->replaying = 0;
    /* records the file does not hold: past log_seq of the log it
    ** continues, or all of a log of its own */
    ix->act.log_records = !w->end               ? 0
                          : w->salt == salt     ? w->seq
                          : w->seq > h->log_seq ? w->seq - h->log_seq
                                                : 0;
    if (rc != VECIDX_OK || !writable) return rc;
    /* Names first: a checkpoint or a log switch may have renamed the file
    ** or the log in and stopped (or failed) before syncing the directory,
    ** and the log may have just been created. Until the directory is
    ** synced a power cut could undo that, and take with it a log about to
    ** be dropped or moved, or the writes this handle would acknowledge. */
    if (vx_io_sync_dir(path) != 0)
        return vx_err(NULL, VECIDX_EIO, "cannot sync the directory of '%s': %s",
                      path, strerror(errno));
    if (w->end && w->salt != salt) {
        /* The log of the file this one continues (a checkpoint that
        ** writes went on during, cut short before it moved the log):
        ** its records past the file move to a log of this file's own;
        ** if they cannot, the writer keeps appending to the old log,
        ** which the file still accepts. */
        vx_walsw sw;
        if (w->seq <= h->log_seq) {
            w->end = 0; /* all of it is in the file */
        } else if (vx_walsw_begin(ix, &sw, skipped, h->log_seq, salt) == 0 &&
                   vx_walsw_commit(ix, &sw) == 0) {
            return VECIDX_OK;
        } /* else the old log stays, cut after its last good record */
    }
    if (w->end == 0 ? vx_wal_reset(w, ix->p.dim, salt) != 0
                    : ((uint64_t)st.st_size > w->end &&
                       (vx_io_cur->ftruncate(fd, (off_t)w->end) != 0 ||
                        vx_wal_fsync(w) != 0)))
        return vx_err(NULL, VECIDX_EIO, "cannot prepare '%s': %s", wpath,
                      strerror(errno));
    return VECIDX_OK;
}

/* Create path holding an empty index described by p. */
static int vx_open_create(const char *path, const vecidx_params *p)
{
    vecidx *ix;
    int rc;
    if (p == NULL)
        return vx_err(NULL, VECIDX_EINVAL,
                      "'%s' does not exist and no params "
                      "were given to create it",
                      path);
    if ((rc = vecidx_create(p, &ix)) != VECIDX_OK) return rc;
    rc = vx_file_save(ix, path, vx_fresh_salt());
    if (rc != VECIDX_OK) rc = vx_err(NULL, rc, "%s", vx_err_tls.msg);
    vecidx_close(ix);
    return rc;
}

static void vx_wal_close(vx_wal *w, vx_mem *mem)
{
    if (w->fd >= 0) {
        if (w->dirty && w->sync != VECIDX_SYNC_OFF) vx_wal_fsync(w);
        vx_io_cur->close(w->fd);
    }
    if (w->path) vx_free(mem, w->path, strlen(w->path) + 1);
    w->fd = -1;
    w->path = NULL;
}

int vecidx_open(const char *path, const vecidx_params *p, unsigned flags,
                vecidx **out)
{
    unsigned sync = flags &
                    (VECIDX_SYNC_FULL | VECIDX_SYNC_NORMAL | VECIDX_SYNC_OFF);
    /* A private handle opens as a reader (no lock, no log of its own)
    ** but is verified as a writer is, since it may write. */
    int priv = (flags & VECIDX_PRIVATE) != 0, rc;
    int writable = !(flags & VECIDX_RDONLY) && !priv;
    struct stat st;
    vx_fhdr h;
    vecidx *ix = NULL;
    if (out) *out = NULL;
    if (path == NULL || out == NULL)
        return vx_err(NULL, VECIDX_EINVAL, "%s is NULL",
                      path ? "output handle pointer" : "path");
    if ((flags & ~(VECIDX_RDONLY | VECIDX_CREATE | VECIDX_PRIVATE |
                   VECIDX_VERIFY | VECIDX_SYNC_FULL | VECIDX_SYNC_NORMAL |
                   VECIDX_SYNC_OFF | VECIDX_LEAN)) ||
        (sync & (sync - 1)))
        return vx_err(NULL, VECIDX_EINVAL,
                      "invalid open flags 0x%x (unknown "
                      "bits, or more than one sync mode)",
                      flags);
    if ((flags & VECIDX_LEAN) && !(flags & VECIDX_RDONLY))
        return vx_err(NULL, VECIDX_EINVAL, "VECIDX_LEAN needs VECIDX_RDONLY");
    if (priv && (flags & (VECIDX_RDONLY | VECIDX_CREATE)))
        return vx_err(NULL, VECIDX_EINVAL,
                      "VECIDX_PRIVATE takes neither VECIDX_RDONLY nor "
                      "VECIDX_CREATE");
    if (strlen(path) > 4096)
        return vx_err(NULL, VECIDX_EINVAL, "path is longer than 4096 bytes");
    if (writable && (flags & VECIDX_CREATE) && stat(path, &st) != 0 &&
        errno == ENOENT && (rc = vx_open_create(path, p)) != VECIDX_OK)
        return rc;
    if ((rc = vx_open_map(path, p, &ix, &h, (flags & VECIDX_LEAN) != 0)) !=
        VECIDX_OK)
        return rc;
    if ((writable || priv) && (rc = vx_open_verify(ix, path)) != VECIDX_OK) {
        vecidx_close(ix);
        return rc;
    }
    /* A reader verifies pieces as it reads them; without piece checksums
    ** (files before version 6), or when asked to, it verifies all now. */
    if (!writable && !priv &&
        ((flags & VECIDX_VERIFY) || (ix->store.nchunks && !ix->store.lazy)) &&
        (rc = vx_file_verify_data(ix)) != VECIDX_OK) {
        vecidx_close(ix);
        return vx_err(NULL, rc, "'%s': %s", path, vx_err_tls.msg);
    }
    ix->wal.sync = sync ? sync : VECIDX_SYNC_FULL;
    rc = VECIDX_OK;
    if (writable && !(ix->wal.path = vx_malloc(&ix->mem, strlen(path) + 1)))
        rc = vx_err(NULL, VECIDX_ENOMEM, "out of memory opening '%s'", path);
    if (writable && rc == VECIDX_OK)
        memcpy(ix->wal.path, path, strlen(path) + 1);
    if (rc == VECIDX_OK) rc = vx_open_wal(ix, path, &h, writable);
    if (rc == VECIDX_OK && priv && ix->p.kind == VECIDX_HNSW &&
        ix->store.nburied && vx_hnsw_mark_fit(ix, 1) != VECIDX_OK)
        rc = vx_err(NULL, VECIDX_ENOMEM, "out of memory opening '%s'", path);
    if (rc != VECIDX_OK) {
        vecidx_close(ix);
        return rc;
    }
    vx_act_log(ix); /* a reader too: what it replayed is still to fold */
    if (!writable) {
        vx_wal_close(&ix->wal, &ix->mem); /* a reader keeps no log open */
        ix->rdonly = !priv;
    }
    *out = ix;
    return VECIDX_OK;
}

/* ---- checkpoints and saves ------------------------------------------------
** One snapshot at a time per handle. vecidx_checkpoint and vecidx_save
** write theirs with the writer lock released, so writes go on meanwhile
** (they copy aside what they change, vx_snap_touch); an automatic
** checkpoint is written by the writes that follow the one whose log grew
** past VX_WAL_AUTO_CHECKPOINT, VX_SNAP_STEP bytes each.
**
** A checkpoint's new main file holds the index as it was at its start,
** when the log held records 1..L. The writes logged after it must survive
** the switch to the new file: the file names the log it continues (salt
** and L, format version 3), so a crash after the rename replays the old
** log from L + 1; then those records move to a log under the new file's
** salt. When no write came meanwhile the file needs no such chain, and the
** log simply restarts. */

#ifndef VX_SNAP_STEP
#define VX_SNAP_STEP ((size_t)4 << 20) /* bytes an automatic step writes */
#endif

/* Wait until no caller writes a snapshot outside the lock; any snapshot
** left is then an automatic checkpoint. Writer lock held. */
static void vx_snap_wait(vecidx *ix)
{
    while (ix->snap_busy) pthread_cond_wait(&ix->snap_cv, &ix->wlock);
}

/* Begin a checkpoint of a file-backed index; writer lock held. */
static int vx_ckpt_begin(vecidx *ix, int autostep, vx_snap **out)
{
    vx_wal *w = &ix->wal;
    int rc;
    if (w->broken && (rc = vx_wal_repair(ix, w)) != VECIDX_OK) return rc;
    if ((rc = vx_snap_begin(ix, w->path, vx_fresh_salt(), out)) != 0) return rc;
    (*out)->ckpt = 1;
    (*out)->t0 = vx_now_ns();
    (*out)->autostep = autostep;
    (*out)->h.log_salt = w->salt;
    (*out)->h.log_seq = w->seq;
    (*out)->log_off = w->end;
    return VECIDX_OK;
}

/* Note for vecidx_stats a checkpoint begun at t0 (vx_now_ns) and now
** installed, which leaves `left` records in the log. Writer lock held. */
static void vx_ckpt_done(vecidx *ix, uint64_t t0, uint64_t left)
{
    struct timespec t;
    uint64_t ns = vx_now_ns() - t0;
    clock_gettime(CLOCK_REALTIME, &t);
    __atomic_store_n(&ix->act.log_records, left, __ATOMIC_RELAXED);
    VX_COUNT(&ix->act.checkpoints, 1);
    __atomic_store_n(&ix->act.ckpt_end,
                     (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec,
                     __ATOMIC_RELAXED);
    __atomic_store_n(&ix->act.ckpt_ns, ns, __ATOMIC_RELAXED);
}

/* Install a complete checkpoint: rename it over the main file, then move
** the log on (sw: the records since, copied already in part, or NULL).
** Writer lock held. */
static int vx_ckpt_install(vecidx *ix, vx_snap *sn, vx_walsw *sw)
{
    vx_wal *w = &ix->wal;
    uint64_t salt = sn->h.salt, from = sn->log_off, seq = sn->h.log_seq;
    uint64_t t0 = sn->t0; /* vx_snap_end frees sn */
    int tail = w->seq > seq, rc, ok = 1, renamed = 0;
    int bare = !tail && sn->version < 3; /* names no log */
    vx_walsw own;
    /* The new file continues the old log (log_salt, log_seq) even when no
    ** write came meanwhile: if its directory cannot be synced after the
    ** rename, a power cut may bring back either file, and the old log,
    ** kept as it is, then serves both. A file kept in layout 1 would become
    ** version 3 by naming it, so it names no log, as before. */
    if (bare) {
        sn->h.log_salt = sn->h.log_seq = 0;
        ok = vx_snap_header_write(sn) == 0;
    }
    if (!ok) { /* the old file and its log stay, whole */
        int e = errno;
        (void)vx_snap_end(ix, sn, w->path, 0, NULL);
        if (sw) vx_walsw_abort(sw);
        return vx_err(ix, VECIDX_EIO, "cannot save index to '%s': %s", w->path,
                      strerror(e));
    }
    rc = vx_snap_end(ix, sn, w->path, 1, &renamed);
    if (rc == VECIDX_OK) vx_ckpt_done(ix, t0, tail ? w->seq - seq : 0);
    if (rc != VECIDX_OK || !tail) {
        if (sw) vx_walsw_abort(sw);
        /* A bare file renamed in without its directory synced: appended
        ** to, the old log would be lost with it, so the next write first
        ** syncs the directory, then restarts the log (vx_wal_repair). */
        if (rc != VECIDX_OK && renamed && bare) {
            w->salt = salt;
            w->broken = VX_WAL_RESTART_DIR;
        }
        if (rc != VECIDX_OK) return rc;
        /* From here the old log is stale, and must be restarted before the
        ** next append (vx_wal_repair retries if this fails). */
        w->salt = salt;
        if (vx_wal_reset(w, ix->p.dim, salt) != 0) {
            w->broken = VX_WAL_RESTART;
            return vx_err(ix, VECIDX_EIO,
                          "checkpoint wrote the index but cannot "
                          "reset the log: %s",
                          strerror(errno));
        }
        return VECIDX_OK;
    }
    if (!sw && vx_walsw_begin(ix, &own, from, seq, salt) == 0) sw = &own;
    /* If the log cannot move, the old one stays: the new file continues
    ** it, so nothing is lost, and the next checkpoint tries again. */
    if (sw) (void)vx_walsw_commit(ix, sw);
    if (w->unsynced) /* the writes made meanwhile are still only there */
        return vx_wal_unsynced_err(ix);
    return VECIDX_OK;
}

/* Write sn to its end with the writer lock released, then (a checkpoint)
** install it or (a save to path) rename it. Writer lock held on entry and
** on return. */
static int vx_snap_complete(vecidx *ix, vx_snap *sn, const char *path)
{
    vx_walsw sw;
    uint64_t end = ix->wal.end;
    int rc, have = 0;
    ix->snap_busy = 1;
    sn->autostep = 0;
    if (sn->ckpt && end > sn->log_off &&
        vx_walsw_begin(ix, &sw, sn->log_off, sn->h.log_seq, sn->h.salt) == 0)
        have = 1;
    pthread_mutex_unlock(&ix->wlock);
    rc = vx_snap_step(ix, sn, SIZE_MAX);
    /* The bulk of the records logged meanwhile, while writes go on. */
    if (have && rc == 1 && vx_walsw_copy(ix, &sw, end) != 0) {
        vx_walsw_abort(&sw);
        have = 0;
    }
    pthread_mutex_lock(&ix->wlock);
    ix->snap_busy = 0;
    pthread_cond_broadcast(&ix->snap_cv);
    if (rc < 0) {
        char msg[VX_ERRMSG_MAX];
        memcpy(msg, vx_err_tls.msg, sizeof msg);
        if (have) vx_walsw_abort(&sw);
        (void)vx_snap_end(ix, sn, path, 0, NULL);
        return vx_err(ix, rc, "%s", msg);
    }
    if (!sn->ckpt) return vx_snap_end(ix, sn, path, 1, NULL);
    return vx_ckpt_install(ix, sn, have ? &sw : NULL);
}

/* Take over an automatic checkpoint under way and finish it now. */
static int vx_snap_finish_auto(vecidx *ix)
{
    vx_snap_wait(ix);
    return ix->snap ? vx_snap_complete(ix, ix->snap, ix->wal.path) : VECIDX_OK;
}

/* Fold the log into the main file; writer lock held on entry and on
** return, released while the file is written. */
static int vx_checkpoint_run(vecidx *ix)
{
    vx_snap *sn;
    int rc = vx_snap_finish_auto(ix);
    if (rc != VECIDX_OK) return rc;
    vx_snap_wait(ix);
    if ((rc = vx_ckpt_begin(ix, 0, &sn)) != VECIDX_OK) return rc;
    return vx_snap_complete(ix, sn, ix->wal.path);
}

/* The automatic checkpoint, from vx_write_end: begin one when the log has
** grown long, or write the next step of the one under way. The write that
** got here is durable already, so a failure only leaves the log longer
** (retried once it has grown by an eighth of the threshold more). */
static void vx_ckpt_auto(vecidx *ix)
{
    vx_wal *w = &ix->wal;
    vx_snap *sn = ix->snap;
    int rc;
    if (w->fd < 0 || ix->replaying || ix->snap_busy) return;
    if (!sn) {
        if (w->broken || w->end <= VX_WAL_AUTO_CHECKPOINT ||
            w->end < ix->ckpt_retry)
            return;
        if (vx_ckpt_begin(ix, 1, &sn) != VECIDX_OK)
            ix->ckpt_retry = w->end + VX_WAL_AUTO_CHECKPOINT / 8;
        return;
    }
    rc = vx_snap_step(ix, sn, VX_SNAP_STEP);
    if (rc == 0) return;
    if (rc < 0) {
        (void)vx_snap_end(ix, sn, w->path, 0, NULL);
        ix->ckpt_retry = w->end + VX_WAL_AUTO_CHECKPOINT / 8;
        return;
    }
    if (vx_ckpt_install(ix, sn, NULL) != VECIDX_OK)
        ix->ckpt_retry = w->end + VX_WAL_AUTO_CHECKPOINT / 8;
}

int vecidx_checkpoint(vecidx *ix)
{
    uint64_t t0;
    int rc;
    VX_NULL_CHECK(NULL, ix, "index handle");
    VX_WRITABLE(ix);
    /* wal.path is set once at open; wal.fd changes when the log moves. */
    if (!ix->wal.path)
        return vx_err(ix, VECIDX_ESTATE, "index has no file: use vecidx_save");
    t0 = vx_now_ns();
    pthread_mutex_lock(&ix->wlock);
    rc = vx_checkpoint_run(ix);
    vx_act_log(ix);
    pthread_mutex_unlock(&ix->wlock);
    return vx_act_call(&ix->act, VX_OP_CKPT, t0, rc, 0);
}

int vecidx_sync(vecidx *ix)
{
    int rc = VECIDX_OK;
    VX_NULL_CHECK(NULL, ix, "index handle");
    if (!ix->wal.path) return VECIDX_OK;
    vx_write_begin(ix);
    if (ix->wal.unsynced)
        rc = vx_wal_unsynced_err(ix);
    else if (ix->wal.dirty && vx_wal_fsync(&ix->wal) != 0)
        rc = vx_err(ix, VECIDX_EIO, "cannot sync the write-ahead log: %s",
                    strerror(errno));
    vx_write_end(ix);
    return rc;
}

/* Is path the main file of ix (same file, whatever the spelling)? */
static int vx_same_file(const vecidx *ix, const char *path)
{
    struct stat a, b;
    return ix->wal.path && stat(ix->wal.path, &a) == 0 && stat(path, &b) == 0 &&
           a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

int vecidx_save(vecidx *ix, const char *path)
{
    uint64_t t0;
    int rc;
    VX_NULL_CHECK(NULL, ix, "index handle");
    VX_NULL_CHECK(ix, path, "path");
    /* Saving over the index's own file must also retire its log, or the
    ** writes logged after it would be lost at the next open. */
    if (vx_same_file(ix, path)) return vecidx_checkpoint(ix);
    t0 = vx_now_ns();
    pthread_mutex_lock(&ix->wlock);
    if ((rc = vx_snap_finish_auto(ix)) == VECIDX_OK) {
        vx_snap *sn;
        vx_snap_wait(ix);
        if ((rc = vx_snap_begin(ix, path, vx_fresh_salt(), &sn)) == 0)
            rc = vx_snap_complete(ix, sn, path);
    }
    pthread_mutex_unlock(&ix->wlock);
    return vx_act_call(&ix->act, VX_OP_CKPT, t0, rc, 0);
}

void vecidx_close(vecidx *ix)
{
    vx_mem mem;
    if (ix == NULL) return;
    /* An automatic checkpoint under way is dropped: the log holds all. */
    if (ix->snap) (void)vx_snap_end(ix, ix->snap, ix->wal.path, 0, NULL);
    vx_closer_join(ix);
    if (ix->p.kind == VECIDX_HNSW) vx_hnsw_destroy(ix);
    if (ix->p.kind == VECIDX_IVFPQ) vx_ivf_destroy(ix);
    vx_store_destroy(&ix->store, &ix->mem);
    vx_ebr_destroy(&ix->ebr, &ix->mem);
    if (ix->fmap) vx_io_cur->munmap(ix->fmap, ix->fmap_len);
    vx_wal_close(&ix->wal, &ix->mem);
    pthread_rwlock_destroy(&ix->lock);
    pthread_mutex_destroy(&ix->wlock);
    pthread_cond_destroy(&ix->snap_cv);
    mem = ix->mem; /* the handle frees itself through its own allocator */
    vx_free(&mem, ix, sizeof *ix);
}

/* The bits of v[i]: tests on them hold under -ffinite-math-only too. */
static uint32_t vx_f32_bits(const float *v, uint32_t i)
{
    uint32_t b;
    memcpy(&b, &v[i], sizeof b);
    return b;
}

/* The first component of v (dim of them) that is NaN or infinite (its
** exponent bits all ones), or dim: for the message once vx_check_vector's
** sum of squares found one. */
static uint32_t vx_first_nonfinite(const float *v, uint32_t dim)
{
    uint32_t i;
    for (i = 0; i < dim; i++)
        if ((vx_f32_bits(v, i) & 0x7F800000u) == 0x7F800000u) break;
    return i;
}

/* The largest norm a stored vector may have under cosine, as a power of
** two. A search scales a query far from norm 1 to (1/2, 1] (vx_query_far)
** and leaves others within 2^+-20 of it, so its products with a stored
** vector, and every partial sum of them (at most |q| |x|), stay under
** 2^120, short of float32's 2^128; one of norm near 3e38 scored -inf
** against every query, which put it first in every result. */
#define VX_COS_LONG 100

/* VECIDX_OK if v can be stored or searched: every component finite and,
** under cosine, a norm whose inverse float32 holds, at most 2^VX_COS_LONG
** for a vector to be stored (`stored`); then *inv_norm (if asked) is that
** inverse under cosine, the only metric that uses it, and 0 under the
** others, which need no norm. `what` names the vector in the message
** ("query 3", "row 17 (key 99)"). */
static int vx_check_vector(const vecidx *ix, const float *v, float *inv_norm,
                           int stored, const char *what)
{
    /* Finite exactly when every component is: a float's square is exact
    ** in double, and VECIDX_MAX_DIM squares of FLT_MAX sum to about 1e82.
    ** Tested by its exponent bits, which -ffinite-math-only cannot fold. */
    double n2 = vx_sumsq(v, ix->p.dim);
    uint64_t bits;
    memcpy(&bits, &n2, sizeof bits);
    if (VX_UNLIKELY((bits >> 52 & 0x7ffu) == 0x7ffu)) {
        uint32_t i = vx_first_nonfinite(v, ix->p.dim);
        if (i == ix->p.dim) /* changed under us while it was read */
            return vx_err(ix, VECIDX_EINVAL, "%s changed while it was checked",
                          what);
        return vx_err(ix, VECIDX_EINVAL, "%s has %s at component %u", what,
                      vx_f32_bits(v, i) & 0x7FFFFFu ? "NaN" : "an infinity",
                      (unsigned)i);
    }
    if (inv_norm) *inv_norm = 0.0f;
    if (ix->p.metric != VECIDX_COSINE) return VECIDX_OK;
    if (!(n2 > 0))
        return vx_err(ix, VECIDX_EINVAL,
                      "%s is all zeros: it has no direction for the cosine "
                      "metric",
                      what);
    /* Distances scale by the float inverse norm: it must be finite. */
    if (!(1.0 / sqrt(n2) <= FLT_MAX))
        return vx_err(ix, VECIDX_EINVAL,
                      "%s is too short for the cosine metric: its norm %g is "
                      "below what float32 can invert",
                      what, sqrt(n2));
    if (stored && n2 > ldexp(1.0, 2 * VX_COS_LONG))
        return vx_err(ix, VECIDX_EINVAL,
                      "%s is too long for the cosine metric: its norm %g is "
                      "above 2^%d (%.3g), where its products with queries "
                      "overflow float32",
                      what, sqrt(n2), VX_COS_LONG, ldexp(1.0, VX_COS_LONG));
    if (inv_norm) *inv_norm = (float)(1.0 / sqrt(n2));
    return VECIDX_OK;
}

/* A cosine query's exponent: far from 1, its dot products with stored
** vectors under- or overflow float32 (two vectors of norm 1e-29 have a
** dot product of 0, so a search missed the query's own copy). Such a
** query is scaled by 2^e to a norm in (1/2, 1] and its inverse norm by
** 2^-e: a distance that neither under- nor overflows has the same bits
** either way, since (2^e d)(2^-e n) is d n exactly. Returns e, 0 when
** the norm lies within 2^+-VX_COS_FAR of 1 and the query stays as given. */
#define VX_COS_FAR 20
static int vx_query_far(const vecidx *ix, const vx_query *q)
{
    int e;
    if (ix->p.metric != VECIDX_COSINE) return 0;
    (void)frexpf(q->inv_norm, &e);
    e -= 1; /* inv_norm in [2^e, 2^(e + 1)) */
    return e >= -VX_COS_FAR && e <= VX_COS_FAR ? 0 : e;
}

/* Scale q by 2^e into dst (dim floats), which q then reads. */
static void vx_query_scale(const vecidx *ix, vx_query *q, int e, float *dst)
{
    uint32_t i;
    for (i = 0; i < ix->p.dim; i++) dst[i] = ldexpf(q->v[i], e);
    q->v = dst;
    q->inv_norm = ldexpf(q->inv_norm, -e);
}

/* Whether key is stored, wherever the index kind keeps it. */
static int vx_has_key(const vecidx *ix, uint64_t key)
{
    if (ix->ivf.trained) return vx_ivf_map_find(&ix->ivf, key) != SIZE_MAX;
    return vx_map_find(&ix->store.map, key) != VX_NOSLOT;
}

/* Live vectors: in the store, or (trained IVF-PQ) in the lists. Read
** without a lock by searches, so a write in flight may or may not count. */
static size_t vx_count(const vecidx *ix)
{
    return VX_LOAD(&ix->ivf.trained) ? (size_t)VX_LOAD(&ix->ivf.count)
                                     : VX_LOAD(&ix->store.count);
}

static int vx_reserve_locked(vecidx *ix, size_t n, uint64_t key)
{
    int rc = vx_store_reserve(&ix->store, &ix->mem, &ix->ebr, n);
    if (rc == VECIDX_EFULL)
        return vx_err(ix, rc, "index holds %u vectors, the most it can hold",
                      (unsigned)ix->store.count);
    if (rc != VECIDX_OK)
        return vx_err(ix, rc, "out of memory making room for key " VX_KEY_FMT,
                      VX_KEY(key));
    return VECIDX_OK;
}

/* Log a write before it is applied: a no-op for in-memory indexes and
** while replaying the log itself. */
static int vx_log(vecidx *ix, uint32_t type, size_t n, const uint64_t *keys,
                  const float *vecs)
{
    int rc;
    ix->fpristine = 0;
    if (ix->wal.fd < 0 || ix->replaying) return VECIDX_OK;
    /* a restart behind a checkpoint may clear unsynced: repair first */
    if (ix->wal.broken && (rc = vx_wal_repair(ix, &ix->wal)) != VECIDX_OK)
        return rc;
    if (ix->wal.unsynced) return vx_wal_unsynced_err(ix);
    rc = vx_wal_append(ix, &ix->wal, type, n, keys, vecs);
    if (rc == VECIDX_OK) VX_COUNT(&ix->act.log_records, 1);
    return rc;
}

/* Insert n validated rows into a trained IVF-PQ index; an upsert's old
** entry (if any) goes once the new ones are encoded and logged. */
static int vx_ivf_insert_locked(vecidx *ix, size_t n, const uint64_t *keys,
                                const float *vecs, uint32_t type)
{
    vx_ivf_prep pr;
    size_t i, cell;
    int rc = vx_ivf_prepare(ix, n, vecs, &pr);
    if (rc != VECIDX_OK)
        return vx_err(ix, rc, "%s encoding %zu vectors",
                      rc == VECIDX_EFULL ? "a list is full" : "out of memory",
                      n);
    if ((rc = vx_log(ix, type, n, keys, vecs)) != VECIDX_OK) {
        vx_ivf_prep_free(ix, &pr);
        return rc;
    }
    vx_keys_lock(ix);
    for (i = 0; type == VX_WAL_UPSERT && i < n; i++)
        if ((cell = vx_ivf_map_find(&ix->ivf, keys[i])) != SIZE_MAX)
            vx_ivf_remove_cell(ix, cell);
    vx_ivf_apply(ix, &pr, keys, vecs);
    vx_keys_unlock(ix);
    vx_ivf_prep_free(ix, &pr);
    return VECIDX_OK;
}

/* An untrained IVF-PQ index trains itself on its buffer once the buffer
** is big enough. The writes that got here are done and logged; a failure
** (out of memory) just leaves the vectors buffered for a later try. A
** file-backed index then folds the log, so reopening does not train
** again. */
static void vx_ivf_maybe_train(vecidx *ix)
{
    if (ix->p.kind != VECIDX_IVFPQ || ix->ivf.trained ||
        ix->store.count < vx_ivf_train_size(ix))
        return;
    if (vx_ivf_train_all(ix, 0, NULL) == VECIDX_OK && ix->wal.fd >= 0 &&
        !ix->replaying)
        (void)vx_checkpoint_run(ix);
}

/* Insert n validated rows whose keys are not in the index. For an upsert,
** `old` is the slot of the vector being replaced: it is removed only after
** all room is secured, so a failure changes nothing. A slot is filled
** before it is published, so a search never sees half a vector; a graph
** node is then linked, in sub-batches on params.threads threads. */
static int vx_insert_locked(vecidx *ix, size_t n, const uint64_t *keys,
                            const float *vecs, uint32_t old, uint32_t type)
{
    int graph = ix->p.kind == VECIDX_HNSW, rc;
    vx_hnsw_batch b;
    size_t i;
    if (ix->ivf.trained) return vx_ivf_insert_locked(ix, n, keys, vecs, type);
    /* Reuse what was retired, unless a search may still read it: this is
    ** also what makes a replayed log reuse slots as the calls did. */
    vx_reclaim(ix);
    if ((rc = vx_reserve_locked(ix, n, keys[0])) != VECIDX_OK) return rc;
    if (graph &&
        (rc = vx_hnsw_batch_begin(ix, n, vx_threads(ix, NULL), &b)) != 0)
        return vx_err(ix, rc, "out of memory linking %zu vectors", n);
    if (graph && (rc = vx_hnsw_mark_fit(ix, old != VX_NOSLOT)) != 0) {
        vx_hnsw_batch_release(ix, &b);
        return vx_err(ix, rc, "out of memory linking %zu vectors", n);
    }
    /* Logged once everything that could fail has succeeded, so the log
    ** holds exactly the writes that are acknowledged. */
    if ((rc = vx_log(ix, type, n, keys, vecs)) != VECIDX_OK) {
        if (graph) vx_hnsw_batch_release(ix, &b);
        return rc;
    }
    if (old != VX_NOSLOT) vx_snap_touch(ix, old);
    for (i = 0; i < n;) {
        size_t end = n - i > VX_HNSW_SUBBATCH ? i + VX_HNSW_SUBBATCH : n, j;
        for (j = i; j < end; j++) {
            uint32_t slot = vx_store_take(&ix->store);
            vx_snap_touch(ix, slot);
            vx_store_fill(&ix->store, slot, keys[j],
                          vecs + j * (size_t)ix->p.dim);
            if (graph) vx_hnsw_place(ix, slot);
            /* An upsert swaps the key's slot in one step, so a reader
            ** finds the old vector or the new, never neither. */
            vx_keys_lock(ix);
            if (old != VX_NOSLOT) {
                vx_store_remove(&ix->store, old, graph);
                VX_STORE(&ix->nremoved, ix->nremoved + 1);
                old = VX_NOSLOT; /* one row replaces it */
            }
            vx_store_publish(&ix->store, slot);
            vx_keys_unlock(ix);
            if (graph) b.slots[j] = slot;
        }
        if (graph) vx_hnsw_batch_link(ix, &b, i, end);
        i = end;
    }
    if (graph) {
        vx_hnsw_batch_release(ix, &b);
        vx_hnsw_maintain(ix); /* a step of repair, once the write is done */
    } else {
        vx_ivf_maybe_train(ix);
    }
    return VECIDX_OK;
}

/* Insert or (if upsert) replace one validated vector; writer lock held.
** A replaced vector is stored in a fresh slot and the old one retired,
** never overwritten, since searches may be reading it; a graph links the
** new node, which rewires the neighbourhood of the new vector. */
static int vx_put_locked(vecidx *ix, uint64_t key, const float *vec, int upsert)
{
    uint32_t slot = vx_map_find(&ix->store.map, key), type;
    type = upsert ? VX_WAL_UPSERT : VX_WAL_ADD;
    if (ix->ivf.trained) {
        if (!upsert && vx_has_key(ix, key))
            return vx_err(ix, VECIDX_EEXIST,
                          "key " VX_KEY_FMT " is already in the index",
                          VX_KEY(key));
        return vx_ivf_insert_locked(ix, 1, &key, vec, type);
    }
    if (slot != VX_NOSLOT && !upsert)
        return vx_err(ix, VECIDX_EEXIST,
                      "key " VX_KEY_FMT " is already in the index",
                      VX_KEY(key));
    return vx_insert_locked(ix, 1, &key, vec, slot, type);
}

static int vx_put(vecidx *ix, uint64_t key, const float *vec, int upsert)
{
    char what[64];
    uint64_t t0;
    int rc;
    VX_NULL_CHECK(NULL, ix, "index handle");
    VX_WRITABLE(ix);
    VX_NULL_CHECK(ix, vec, "vector");
    t0 = vx_now_ns();
    snprintf(what, sizeof what, "vector for key " VX_KEY_FMT, VX_KEY(key));
    if ((rc = vx_check_vector(ix, vec, NULL, 1, what)) == VECIDX_OK) {
        vx_write_begin(ix);
        rc = vx_put_locked(ix, key, vec, upsert);
        vx_write_end(ix);
    }
    return vx_act_call(&ix->act, VX_OP_INSERT, t0, rc, 1);
}

int vecidx_add(vecidx *ix, uint64_t key, const float *vec)
{
    return vx_put(ix, key, vec, 0);
}

int vecidx_upsert(vecidx *ix, uint64_t key, const float *vec)
{
    return vx_put(ix, key, vec, 1);
}

static int vx_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Validate every row of a batch and find a key given twice, before the
** index is locked: the checks touch only caller memory. */
static int vx_batch_validate(vecidx *ix, size_t n, const uint64_t *keys,
                             const float *vecs)
{
    char what[96];
    uint64_t *sorted;
    size_t i, bytes;
    int rc;
    for (i = 0; i < n; i++) {
        snprintf(what, sizeof what, "row %zu (key " VX_KEY_FMT ")", i,
                 VX_KEY(keys[i]));
        rc = vx_check_vector(ix, vecs + i * (size_t)ix->p.dim, NULL, 1, what);
        if (rc != VECIDX_OK) return rc;
    }
    if (n < 2) return VECIDX_OK;
    bytes = n * sizeof *sorted;
    if (!(sorted = vx_malloc(&ix->mem, bytes)))
        return vx_err(ix, VECIDX_ENOMEM, "out of memory checking %zu keys", n);
    memcpy(sorted, keys, bytes);
    qsort(sorted, n, sizeof *sorted, vx_cmp_u64);
    rc = VECIDX_OK;
    for (i = 1; i < n && rc == VECIDX_OK; i++)
        if (sorted[i] == sorted[i - 1])
            rc = vx_err(ix, VECIDX_EINVAL,
                        "key " VX_KEY_FMT " appears more than once in the "
                        "batch",
                        VX_KEY(sorted[i]));
    vx_free(&ix->mem, sorted, bytes);
    return rc;
}

static int vx_add_many(vecidx *ix, size_t n, const uint64_t *keys,
                       const float *vecs)
{
    size_t i, total;
    int rc = VECIDX_OK;
    if (n == 0) return VECIDX_OK;
    VX_NULL_CHECK(ix, keys, "keys array");
    VX_NULL_CHECK(ix, vecs, "vectors array");
    if (!vx_mul_ok(n, (size_t)ix->p.dim * sizeof(float), &total))
        return vx_err(ix, VECIDX_EINVAL, "batch of %zu vectors is too large",
                      n);
    if ((rc = vx_batch_validate(ix, n, keys, vecs)) != VECIDX_OK) return rc;
    vx_write_begin(ix);
    for (i = 0; i < n && rc == VECIDX_OK; i++)
        if (vx_has_key(ix, keys[i]))
            rc = vx_err(ix, VECIDX_EEXIST,
                        "row %zu: key " VX_KEY_FMT " is already in the index",
                        i, VX_KEY(keys[i]));
    if (rc == VECIDX_OK)
        rc = vx_insert_locked(ix, n, keys, vecs, VX_NOSLOT, VX_WAL_ADD);
    vx_write_end(ix);
    return rc;
}

int vecidx_add_batch(vecidx *ix, size_t n, const uint64_t *keys,
                     const float *vecs)
{
    uint64_t t0 = vx_now_ns();
    int rc;
    VX_NULL_CHECK(NULL, ix, "index handle");
    VX_WRITABLE(ix);
    rc = vx_add_many(ix, n, keys, vecs);
    return vx_act_call(&ix->act, VX_OP_INSERT, t0, rc, n);
}

static int vx_remove_locked(vecidx *ix, uint64_t key)
{
    uint32_t slot = vx_map_find(&ix->store.map, key);
    size_t cell = ix->ivf.trained ? vx_ivf_map_find(&ix->ivf, key) : SIZE_MAX;
    int rc;
    if (slot == VX_NOSLOT && cell == SIZE_MAX)
        return vx_err(ix, VECIDX_ENOTFOUND,
                      "key " VX_KEY_FMT " is not in the index", VX_KEY(key));
    if (cell == SIZE_MAX && ix->p.kind == VECIDX_HNSW &&
        (rc = vx_hnsw_mark_fit(ix, 1)) != VECIDX_OK)
        return vx_err(ix, rc, "out of memory removing key " VX_KEY_FMT,
                      VX_KEY(key));
    if ((rc = vx_log(ix, VX_WAL_REMOVE, 1, &key, NULL)) != VECIDX_OK) return rc;
    if (cell == SIZE_MAX) vx_snap_touch(ix, slot);
    vx_keys_lock(ix);
    if (cell != SIZE_MAX)
        vx_ivf_remove_cell(ix, cell);
    else
        vx_store_remove(&ix->store, slot, ix->p.kind == VECIDX_HNSW);
    VX_STORE(&ix->nremoved, ix->nremoved + 1);
    vx_keys_unlock(ix);
    if (ix->p.kind == VECIDX_HNSW) vx_hnsw_maintain(ix);
    return VECIDX_OK;
}

static int vx_wal_apply(vecidx *ix, uint32_t type, size_t n,
                        const uint64_t *keys, const float *vecs)
{
    size_t i;
    int rc = VECIDX_OK, was = ix->replaying;
    ix->replaying = 1;
    if (type == VX_WAL_ADD) {
        for (i = 0; i < n && rc == VECIDX_OK; i++)
            if (vx_has_key(ix, keys[i]))
                rc = vx_err(ix, VECIDX_EEXIST, "key " VX_KEY_FMT " exists",
                            VX_KEY(keys[i]));
        if (rc == VECIDX_OK)
            rc = vx_insert_locked(ix, n, keys, vecs, VX_NOSLOT, type);
    }
    for (i = 0; type == VX_WAL_UPSERT && i < n && rc == VECIDX_OK; i++)
        rc = vx_put_locked(ix, keys[i], vecs + i * (size_t)ix->p.dim, 1);
    for (i = 0; type == VX_WAL_REMOVE && i < n && rc == VECIDX_OK; i++)
        rc = vx_remove_locked(ix, keys[i]);
    ix->replaying = was;
    return rc;
}

int vecidx_remove(vecidx *ix, uint64_t key)
{
    uint64_t t0 = vx_now_ns();
    int rc;
    VX_NULL_CHECK(NULL, ix, "index handle");
    VX_WRITABLE(ix);
    vx_write_begin(ix);
    rc = vx_remove_locked(ix, key);
    vx_write_end(ix);
    return vx_act_call(&ix->act, VX_OP_REMOVE, t0, rc, 1);
}

int vecidx_reserve(vecidx *ix, size_t n)
{
    int rc;
    VX_NULL_CHECK(NULL, ix, "index handle");
    VX_WRITABLE(ix);
    if (n > VECIDX_MAX_COUNT)
        return vx_err(ix, VECIDX_EFULL,
                      "cannot reserve %zu vectors: the "
                      "most an index holds is %u",
                      n, (unsigned)VECIDX_MAX_COUNT);
    vx_write_begin(ix);
    rc = VECIDX_OK;
    if (n > ix->store.count) {
        rc = vx_store_reserve(&ix->store, &ix->mem, &ix->ebr,
                              n - ix->store.count);
        if (rc != VECIDX_OK)
            rc = vx_err(ix, rc, "cannot reserve room for %zu vectors", n);
    }
    vx_write_end(ix);
    return rc;
}

/* Copy out the vector of key from the lists: the kept vector, or the
** reconstruction of its code. Returns 0 if the key is not there. */
static int vx_ivf_get(const vecidx *ix, uint64_t key, float *out)
{
    const vx_ivf *v = &ix->ivf;
    size_t cell = vx_ivf_map_find(v, key);
    const vx_ivlist *l;
    uint32_t pos;
    if (cell == SIZE_MAX) return 0;
    l = vx_ivf_list(v, vx_ivf_cl(vx_ivf_cw(v, cell)));
    pos = (uint32_t)vx_ivf_cw(v, cell);
    if (v->vb)
        memcpy(out, vx_ivf_kept(v, l, pos), (size_t)ix->p.dim * sizeof(float));
    else
        vx_ivf_decode(ix, vx_ivf_cl(vx_ivf_cw(v, cell)),
                      l->codes + (size_t)pos * v->m, out);
    return 1;
}

int vecidx_get(vecidx *ix, uint64_t key, float *out)
{
    uint32_t slot;
    uint64_t *e, d0 = vx_dmg.n;
    VX_NULL_CHECK(NULL, ix, "index handle");
    VX_NULL_CHECK(ix, out, "output vector");
    pthread_rwlock_rdlock(&ix->lock);
    e = vx_read_begin(ix);
    slot = vx_map_find(&ix->store.map, key);
    if (slot != VX_NOSLOT)
        vx_store_read(&ix->store, slot, out);
    else if (ix->ivf.trained && vx_ivf_get(ix, key, out))
        slot = 0;
    vx_ebr_exit(e);
    pthread_rwlock_unlock(&ix->lock);
    if (vx_dmg.n != d0) return vx_dmg_check(ix, d0, VECIDX_OK);
    if (slot == VX_NOSLOT)
        return vx_err(ix, VECIDX_ENOTFOUND,
                      "key " VX_KEY_FMT " is not in the index", VX_KEY(key));
    return VECIDX_OK;
}

int vecidx_contains(vecidx *ix, uint64_t key)
{
    int found;
    uint64_t d0 = vx_dmg.n;
    VX_NULL_CHECK(NULL, ix, "index handle");
    pthread_rwlock_rdlock(&ix->lock);
    found = vx_has_key(ix, key);
    pthread_rwlock_unlock(&ix->lock);
    return vx_dmg_check(ix, d0, found);
}

size_t vecidx_count(vecidx *ix)
{
    size_t n;
    if (ix == NULL) return 0;
    pthread_rwlock_rdlock(&ix->lock);
    n = vx_count(ix);
    pthread_rwlock_unlock(&ix->lock);
    return n;
}

int vecidx_keys(vecidx *ix, uint64_t *keys, size_t cap, size_t *n)
{
    const vx_store *s;
    size_t got = 0;
    uint32_t slot, li, pos;
    uint64_t *e, d0 = vx_dmg.n;
    VX_NULL_CHECK(NULL, ix, "index handle");
    VX_NULL_CHECK(ix, n, "count output");
    if (cap) VX_NULL_CHECK(ix, keys, "keys output");
    pthread_rwlock_rdlock(&ix->lock);
    e = vx_read_begin(ix);
    s = &ix->store;
    for (slot = 0; slot < VX_LOAD(&s->nslots) && got < cap; slot++)
        if (vx_store_live(s, slot) == VX_LIVE)
            keys[got++] = vx_store_key(s, slot);
    for (li = 0; ix->ivf.trained && li < ix->ivf.nlist && got < cap; li++) {
        const vx_ivlist *l = vx_ivf_list(&ix->ivf, li);
        for (pos = 0; pos < l->n && got < cap; pos++)
            keys[got++] = l->keys[pos];
    }
    *n = vx_count(ix);
    vx_ebr_exit(e);
    pthread_rwlock_unlock(&ix->lock);
    return vx_dmg_check(ix, d0, VECIDX_OK);
}

int vecidx_train(vecidx *ix, size_t n, const float *samples)
{
    char what[48];
    size_t i, total;
    int rc = VECIDX_OK;
    VX_NULL_CHECK(NULL, ix, "index handle");
    VX_WRITABLE(ix);
    if (ix->p.kind != VECIDX_IVFPQ) return VECIDX_OK;
    if (n == 0)
        return vx_err(ix, VECIDX_EINVAL, "no training samples (n is 0)");
    VX_NULL_CHECK(ix, samples, "samples array");
    if (!vx_mul_ok(n, (size_t)ix->p.dim * sizeof(float), &total) ||
        n > VECIDX_MAX_COUNT)
        return vx_err(ix, VECIDX_EINVAL, "%zu samples are too many", n);
    if (ix->p.ivf_nlist && n < ix->p.ivf_nlist)
        return vx_err(ix, VECIDX_EINVAL,
                      "%zu samples cannot train %u "
                      "lists: give at least ivf_nlist samples",
                      n, (unsigned)ix->p.ivf_nlist);
    for (i = 0; i < n && rc == VECIDX_OK; i++) {
        snprintf(what, sizeof what, "sample %zu", i);
        rc = vx_check_vector(ix, samples + i * (size_t)ix->p.dim, NULL, 0,
                             what);
    }
    if (rc != VECIDX_OK) return rc;
    vx_write_begin(ix);
    if (!ix->ivf.trained) {
        rc = vx_ivf_train_all(ix, n, samples);
        if (rc != VECIDX_OK)
            rc = vx_err(ix, rc, "out of memory training on %zu samples", n);
        else if (ix->wal.fd >= 0)
            rc = vx_checkpoint_run(ix);
    }
    vx_write_end(ix);
    return rc;
}

/* Bytes of the store's parts: vectors (records without their links) and
** links (level 0, in the records, and the upper levels); *heap gets the
** share of both that is allocated, not mapped. Key-set lock held. */
static void vx_stats_store(const vecidx *ix, vecidx_stats_t *out,
                           uint64_t *heap)
{
    const vx_store *s = &ix->store;
    uint64_t nchunks = VX_LOAD(&s->nchunks), per = vx_store_per_chunk(s);
    uint64_t cb = vx_store_chunk_bytes(s), links, arena = 0;
    links = s->link0 ? per * ((uint64_t)(s->rec - s->cw) * 4 + 5) : 0;
    if (ix->p.kind == VECIDX_HNSW)
        arena = (uint64_t)VX_LOAD(&ix->hnsw.arena_n) * sizeof(uint32_t);
    out->mem_links = nchunks * links + arena;
    out->mem_vectors = nchunks * (cb - links);
    out->mem_keymap = (uint64_t)s->map.cap * (sizeof(uint64_t) + 4);
    *heap = (nchunks - s->nmapped) * cb + arena +
            (s->map.mapped ? 0 : out->mem_keymap);
}

/* The median of the list sizes, in [lo, hi], without memory to sort
** them in (stats must not fail for want of memory): a binary search on
** the value, each step counting the lists at or below it. */
static uint32_t vx_stats_median(const vx_ivf *v, uint32_t lo, uint32_t hi)
{
    uint32_t want = v->nlist / 2 + 1, li; /* the sorted sizes' [nlist / 2] */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2, below = 0;
        for (li = 0; li < v->nlist; li++) below += v->lists[li].n <= mid;
        if (below >= want)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* IVF-PQ lists: entries, capacity, bytes and spread; *heap gets the
** allocated share. Key-set lock held. */
static void vx_stats_lists(vecidx *ix, vecidx_stats_t *out, uint64_t *heap)
{
    const vx_ivf *v = &ix->ivf;
    uint64_t entry = 8 + v->m + v->vb;
    uint32_t li, lo = UINT32_MAX, hi = 0;
    /* lists stay compact, so every used entry is live */
    out->slots = out->count;
    out->capacity = 0;
    *heap = v->model_mapped ? 0 : v->model_bytes;
    for (li = 0; li < v->nlist; li++) {
        const vx_ivlist *l = &v->lists[li];
        if (l->n < lo) lo = l->n;
        if (l->n > hi) hi = l->n;
        out->capacity += l->mapped ? l->n : l->cap;
        *heap += l->mapped ? 0 : (uint64_t)l->cap * entry;
    }
    out->mem_lists = v->model_bytes + out->capacity * entry;
    out->mem_keymap = vx_ivf_map_bytes(v);
    *heap += v->map_mapped ? 0 : out->mem_keymap;
    {
        uint64_t added = VX_PEEK(&ix->act.ivf_added);
        uint64_t all = added + VX_PEEK(&ix->act.ivf_base);
        out->drift = all ? (double)added / (double)all : 0;
    }
    out->list_min = lo;
    out->list_max = hi;
    out->list_median = vx_stats_median(v, lo, hi);
}

/* The activity counters (vx_activity). No lock needed. */
static void vx_stats_activity(vecidx *ix, vecidx_stats_t *out)
{
    vx_activity *a = &ix->act;
    vecidx_latency *lat[VX_OP_N];
    uint64_t end = VX_PEEK(&a->ckpt_end);
    int i;
    lat[VX_OP_SEARCH] = &out->search_latency;
    lat[VX_OP_BATCH] = &out->batch_latency;
    lat[VX_OP_INSERT] = &out->insert_latency;
    lat[VX_OP_REMOVE] = &out->remove_latency;
    lat[VX_OP_CKPT] = &out->checkpoint_latency;
    for (i = 0; i < VX_OP_N; i++) vx_hist_read(&a->hist[i], lat[i]);
    out->searches = VX_PEEK(&a->searches);
    out->inserts = VX_PEEK(&a->inserts);
    out->removes = VX_PEEK(&a->removes);
    if (out->searches) {
        out->distances_per_search = (double)VX_PEEK(&a->dist) /
                                    (double)out->searches;
        out->visited_per_search = (double)VX_PEEK(&a->visit) /
                                  (double)out->searches;
    }
    out->repairs = VX_PEEK(&a->repairs);
    out->checkpoints = VX_PEEK(&a->checkpoints);
    out->log_records = VX_PEEK(&a->log_records);
    out->last_checkpoint_time = (double)end / 1e9;
    out->last_checkpoint_seconds = (double)VX_PEEK(&a->ckpt_ns) / 1e9;
}

/* Every field of vecidx_stats_t. */
static int vx_stats_fill(vecidx *ix, vecidx_stats_t *out)
{
    uint64_t heap = 0, part = 0;
    memset(out, 0, sizeof *out);
    vx_stats_activity(ix, out);
    pthread_rwlock_rdlock(&ix->lock);
    out->kind = ix->p.kind;
    out->metric = ix->p.metric;
    out->dim = ix->p.dim;
    out->count = vx_count(ix);
    out->slots = VX_LOAD(&ix->store.nslots);
    out->capacity = (uint64_t)VX_LOAD(&ix->store.nchunks) << ix->store.shift;
    out->memory_bytes = atomic_load(&ix->mem.bytes);
    out->mapped_bytes = ix->fmap_len;
    out->simd = ix->kern->name;
    out->trained = ix->p.kind != VECIDX_IVFPQ || ix->ivf.trained;
    /* Training fills these before it marks the index trained. */
    out->nlist = ix->ivf.trained ? ix->ivf.nlist : 0;
    out->pq_m = ix->ivf.trained ? ix->ivf.m : 0;
    out->storage = (int)ix->store.store;
    out->vector_bytes = ix->p.kind == VECIDX_IVFPQ
                            ? 0
                            : ix->store.rec * 4 + (ix->store.link0 ? 0 : 8);
    out->buried = VX_LOAD(&ix->store.nburied);
    if (ix->p.kind == VECIDX_HNSW)
        out->ef_search = VX_PEEK(&ix->p.hnsw_ef_search);
    if (ix->p.kind == VECIDX_IVFPQ) {
        out->nprobe = VX_PEEK(&ix->p.ivf_nprobe);
        out->refine = ix->p.ivf_keep_vectors ? VX_PEEK(&ix->p.ivf_refine) : 0;
    } else if (ix->store.keep) {
        out->refine = (uint32_t)vx_refine_k(ix, NULL, 1);
    }
    out->log_bytes = VX_PEEK(&ix->act.log_bytes);
    vx_stats_store(ix, out, &heap);
    if (ix->p.kind == VECIDX_IVFPQ && ix->ivf.trained) {
        if (ix->ivf.cq) {
            vecidx_stats_t cq;
            if (vx_stats_fill(ix->ivf.cq, &cq) == VECIDX_OK)
                out->memory_bytes += cq.memory_bytes;
        }
        vx_stats_lists(ix, out, &part);
    }
    pthread_rwlock_unlock(&ix->lock);
    heap += part;
    out->mem_other = out->memory_bytes > heap ? out->memory_bytes - heap : 0;
    return VECIDX_OK;
}

int vecidx_stats_ex(vecidx *ix, vecidx_stats_t *out, size_t size)
{
    vecidx_stats_t st;
    int rc;
    VX_NULL_CHECK(NULL, ix, "index handle");
    VX_NULL_CHECK(ix, out, "stats output");
    if (size < offsetof(vecidx_stats_t, searches))
        return vx_err(ix, VECIDX_EINVAL,
                      "stats size %zu is below the %zu bytes of vecidx 0.2's "
                      "struct: pass sizeof(vecidx_stats_t)",
                      size, offsetof(vecidx_stats_t, searches));
    if ((rc = vx_stats_fill(ix, &st)) != VECIDX_OK) return rc;
    if (size > sizeof st) {
        memset((char *)out + sizeof st, 0, size - sizeof st);
        size = sizeof st;
    }
    memcpy(out, &st, size);
    return VECIDX_OK;
}

int vecidx_stats(vecidx *ix, vecidx_stats_t *out)
{
    return vecidx_stats_ex(ix, out, offsetof(vecidx_stats_t, searches));
}

int vecidx_check(vecidx *ix)
{
    int rc;
    VX_NULL_CHECK(NULL, ix, "index handle");
    /* Writers are held off (they change the structure as they go);
    ** searches go on. */
    pthread_mutex_lock(&ix->wlock);
    rc = vx_check_locked(ix, 1);
    pthread_mutex_unlock(&ix->wlock);
    return rc;
}

/* Arguments every search checks, the same for single and batch calls. */
static int vx_search_args(vecidx *ix, const void *q, size_t k,
                          const uint64_t *keys, const size_t *found)
{
    VX_NULL_CHECK(NULL, ix, "index handle");
    VX_NULL_CHECK(ix, q, "query");
    VX_NULL_CHECK(ix, keys, "keys output");
    VX_NULL_CHECK(ix, found, "found output");
    if (k == 0)
        return vx_err(ix, VECIDX_EINVAL,
                      "k is 0: ask for at least "
                      "one result");
    return VECIDX_OK;
}

/* A query copied to the start of a cache line when it does not begin on
** one and has at most VX_QLINE_MAX dimensions (section 3): an AVX-512 load that
** straddles two lines costs more, and a walk loads the query once per
** distance. A 384-d dot product took 20.7 ns with the query 4 bytes off
** a line against 16.6 ns on one; float32 HNSW walks on 100k x 128,
** queries 16 bytes off, ran 3-4 % faster (bench/RESULTS.md, 12-05
** seventh). */
static vx_query vx_query_lined(const vecidx *ix, const vx_query *q, float *buf)
{
    vx_query e = *q;
    if (((uintptr_t)q->v & VX_LINE_SLACK) && ix->p.dim <= VX_QLINE_MAX) {
        memcpy(buf, q->v, (size_t)ix->p.dim * sizeof *buf);
        e.v = buf;
    }
    return e;
}

/* Bytes of a query encoded for compressed storage (vx_query_encode):
** int8 adds the codes of its rounding error. */
static size_t vx_code_bytes(const vecidx *ix)
{
    size_t rc = ix->store.store == VECIDX_STORE_I8
                    ? ((size_t)ix->store.dim + 3) / 4 * 4
                    : 0;
    return (size_t)ix->store.cw * 4 + rc;
}

/* vx_search_group under compressed storage: each query encoded first;
** line holds VX_QLINE_MAX floats, for vx_query_lined. */
static int vx_search_coded(vecidx *ix, const vx_query *q, size_t m, size_t k,
                           const vecidx_search_opts *o, vx_topk *heaps,
                           float *line)
{
    /* 4 KB: an int8 query and its second code up to 2040 dimensions, on
    ** a cache line as vx_query_lined's copy */
    _Alignas(64) uint64_t buf[512];
    size_t i, nb = vx_code_bytes(ix);
    void *code = nb <= sizeof buf ? buf : vx_malloc(&ix->mem, nb);
    int rc = VECIDX_OK;
    if (!code) return VECIDX_ENOMEM;
    for (i = 0; i < m && rc == VECIDX_OK; i++) {
        /* Half precision, binary codes and re-ranks against kept vectors
        ** read the float32 query per distance; int8 codes only encode it. */
        vx_query e = ix->store.store != VECIDX_STORE_I8 || ix->store.keep
                         ? vx_query_lined(ix, &q[i], line)
                         : q[i];
        vx_query_encode(ix, &e, code);
        if (((const vx_sopts *)(const void *)o)->exact) {
            /* against the float32 vectors if kept, else the codes */
            e.exact = (int)ix->store.keep;
            rc = vx_flat_coded(ix, &e, o, 0, &heaps[i]);
        } else if (ix->p.kind == VECIDX_HNSW)
            rc = vx_hnsw_search(ix, &e, k, o, &heaps[i]);
        else if (vx_allow_of(o))
            rc = vx_store_scan(ix, &e, o, 0, &heaps[i]);
        else
            rc = vx_flat_coded(ix, &e, o, 0, &heaps[i]);
    }
    if (code != buf) vx_free(&ix->mem, code, nb);
    return rc;
}

/* vx_search_group on the store (flat, HNSW, and IVF-PQ's buffer before
** training). Not inlined: its query buffer stays off the stack of trained
** IVF-PQ searches, which copy the query into their workspace. */
static VX_NOINLINE int vx_search_store(vecidx *ix, const vx_query *q, size_t m,
                                       size_t k, const vecidx_search_opts *o,
                                       vx_topk *heaps)
{
    _Alignas(64) float line[VX_QLINE_MAX];
    vx_query e;
    size_t i;
    /* o is always a vx_sopts (vx_search_one, vx_search_many) */
    int rc = VECIDX_OK, exact = ((const vx_sopts *)(const void *)o)->exact;
    if (ix->store.store != VECIDX_STORE_F32)
        return vx_search_coded(ix, q, m, k, o, heaps, line);
    if (ix->p.kind != VECIDX_HNSW || exact) { /* flat, IVF-PQ's buffer */
        int keyed = 0, pre = 0, locked = ix->p.kind == VECIDX_IVFPQ;
        if (!heaps[0].k) return VECIDX_OK;
        if (vx_allow_of(o)) vx_store_plan(o, vx_count(ix), &keyed, &pre);
        for (i = 0; keyed && i < m; i++) {
            e = vx_query_lined(ix, &q[i], line);
            vx_flat_allowed(ix, &e, o, locked, &heaps[i]);
        }
        if (!keyed) vx_flat_search(ix, q, m, o, pre, heaps);
        return VECIDX_OK;
    }
    for (i = 0; i < m && rc == VECIDX_OK; i++) {
        e = vx_query_lined(ix, &q[i], line);
        rc = vx_hnsw_search(ix, &e, k, o, &heaps[i]);
    }
    return rc;
}

/* Search a group of m queries, each into its own empty heap. */
static int vx_search_group(vecidx *ix, const vx_query *q, size_t m, size_t k,
                           const vecidx_search_opts *o, vx_topk *heaps)
{
    size_t i;
    int rc = VECIDX_OK, exact = ((const vx_sopts *)(const void *)o)->exact;
    if (!ix->ivf.trained) return vx_search_store(ix, q, m, k, o, heaps);
    for (i = 0; i < m && rc == VECIDX_OK; i++)
        rc = exact ? vx_ivf_exact_all(ix, &q[i], o, &heaps[i])
                   : vx_ivf_search(ix, &q[i], o, &heaps[i]);
    return rc;
}

/* Point the m heaps of a group, k entries each, into one block: the stack
** buffers when they fit, else *block (freed by the caller). */
static int vx_topk_carve(vx_topk *heaps, size_t m, size_t k, vx_mem *mem,
                         float *dbuf, uint64_t *ibuf, void **block)
{
    size_t i, total = m * k;
    float *d = dbuf;
    uint64_t *id = ibuf;
    *block = NULL;
    if (total > VX_TOPK_STACK) {
        if (total > SIZE_MAX / (sizeof *id + sizeof *d)) return VECIDX_ENOMEM;
        /* ids first: the block's alignment suits them, floats follow. */
        if (!(*block = vx_malloc(mem, total * (sizeof *id + sizeof *d))))
            return VECIDX_ENOMEM;
        id = *block;
        d = (float *)(id + total);
    }
    for (i = 0; i < m; i++) {
        heaps[i].k = k;
        heaps[i].n = 0;
        heaps[i].d = d + i * k;
        heaps[i].id = id + i * k;
    }
    return VECIDX_OK;
}

/* Search queries [0, nq) of q in groups, inside the caller's epoch. */
static int vx_search_run(vecidx *ix, const vx_query *q, size_t nq, size_t k,
                         const vecidx_search_opts *o, uint64_t *keys,
                         float *dists, size_t *found)
{
    vx_topk heaps[VX_FLAT_QGROUP];
    float dbuf[VX_TOPK_STACK];
    uint64_t ibuf[VX_TOPK_STACK];
    size_t cap = k < vx_count(ix) ? k : vx_count(ix), i, g;
    uint64_t dist0 = vx_tally.dist, visit0 = vx_tally.visit;
    int rc = VECIDX_OK;
    for (g = 0; g < nq && rc == VECIDX_OK; g += VX_FLAT_QGROUP) {
        size_t m = nq - g < VX_FLAT_QGROUP ? nq - g : VX_FLAT_QGROUP, tries;
        void *block;
        for (i = 0; i < m; i++) found[g + i] = 0;
        rc = vx_topk_carve(heaps, m, cap, &ix->mem, dbuf, ibuf, &block);
        /* A key met twice (moved by a concurrent write) is dropped; the
        ** group is searched again so as not to return one short. */
        for (tries = 0; rc == VECIDX_OK; tries++) {
            uint64_t removed = VX_LOAD(&ix->nremoved);
            int dropped = 0;
            for (i = 0; i < m; i++) heaps[i].n = 0;
            if ((rc = vx_search_group(ix, q + g, m, k, o, heaps)) != 0) break;
            removed = removed != VX_LOAD(&ix->nremoved);
            for (i = 0; i < m; i++) {
                vx_topk_sort(&heaps[i]);
                if (removed) dropped |= vx_topk_dedupe(&heaps[i]);
            }
            if (!dropped || tries == 3) break;
        }
        for (i = 0; i < m && rc == VECIDX_OK; i++) {
            vx_topk_emit(&heaps[i], k, keys + (g + i) * k,
                         dists ? dists + (g + i) * k : NULL, found + g + i);
        }
        vx_free(&ix->mem, block, m * cap * (sizeof(float) + sizeof(uint64_t)));
    }
    if (!((const vx_sopts *)(const void *)o)->quiet) {
        VX_COUNT(&ix->act.dist, vx_tally.dist - dist0);
        VX_COUNT(&ix->act.visit, vx_tally.visit - visit0);
    }
    if (rc != VECIDX_OK)
        return vx_err(ix, rc, "out of memory for %zu search results", k);
    return VECIDX_OK;
}

/* Estimate how many keys a callback alone admits: from the caller's
** selectivity, else by asking it about stored keys at 256 places spread
** over the index; when fewer than VX_EST_FEW of those pass, also about the
** VX_EST_RUN - 1 keys after each place (stored next to it, so cheap to
** reach). A set admitting 0.1 % of 1M keys shows none in 256 about 3
** times in 4, which the estimate read as 0.2 %; at that share the HNSW
** plan walked, spent what the scan would cost, and then scanned: 0.52x
** a flat scan asking the same callback (0.37x in a driver); 0.01 %
** 0.60x. The longer sample costs 1,792 more calls, only where few keys
** pass and so the walk or scan that follows is long.
** The longer sample still shows 4 of 2,048 passing for about one set of
** 0.1 % in seven, read as 0.2 %, where the HNSW plan for 1M keys walks:
** every search then ran at 0.41x a flat scan asking the same callback
** (a driver, 1M x 128). So where even the longer sample shows fewer than
** VX_EST_FEW, card_low, for plans that choose a walk over a scan, takes
** two standard deviations off the count (Poisson), at least half of one:
** 4 counts as none does, 7 as 1.7. At 1M a set of 0.1 % shows the 8 it
** then takes to walk about once in 800. Larger counts are taken as they
** are: applied to them too, the margin made a review's random sets of
** 2-10 % of 50k-100k scan at 2.7-7x the time their walk took.
** Inside the search's epoch (and lock, for IVF-PQ). */
#define VX_EST_PLACES 256
#define VX_EST_FEW 8
#define VX_EST_RUN 8
/* The slot of the estimate's place i (of VX_EST_PLACES, spread evenly
** over ns slots), run j: j slots after it. */
static uint32_t vx_est_slot(uint32_t ns, size_t i, size_t j)
{
    uint64_t at = (uint64_t)ns * (2 * i + 1) / (2 * VX_EST_PLACES);
    return (uint32_t)((at + j) % (ns ? ns : 1));
}

static void vx_allow_estimate(vecidx *ix, vx_sopts *a)
{
    size_t n = vx_count(ix), seen = 0, pass = 0, run = 1, i, j;
    double low;
    uint64_t key;
    if (a->card < 0 || a->counted) return;
    if (a->sel > 0.0f || n == 0) {
        a->card = a->card_low = a->sel * (double)n;
        return;
    }
    for (j = 0; j < run; j++) {
        for (i = 0; i < VX_EST_PLACES; i++) {
            if (ix->ivf.trained) {
                const vx_ivlist *l = vx_ivf_list(&ix->ivf, i * 2654435761u %
                                                               ix->ivf.nlist);
                if (l->n == 0) continue;
                key = l->keys[(i * 40503u + j) % l->n];
            } else {
                uint32_t ns = VX_LOAD(&ix->store.nslots);
                uint32_t slot = vx_est_slot(ns, i, j);
                if (ns == 0 || vx_store_live(&ix->store, slot) != VX_LIVE)
                    continue;
                key = vx_store_key(&ix->store, slot);
            }
            seen++;
            pass += a->cb(key, a->cb_ctx) != 0;
        }
        if (j == 0 && pass < VX_EST_FEW) run = VX_EST_RUN;
    }
    /* None seen: assume all pass. None passed: assume half a sample did. */
    if (seen == 0) {
        a->card = a->card_low = (double)n;
        return;
    }
    low = (double)pass - 2 * sqrt((double)pass);
    a->card = (pass ? (double)pass : 0.5) / (double)seen * (double)n;
    a->card_low = pass >= VX_EST_FEW
                      ? a->card
                      : (low > 0.5 ? low : 0.5) / (double)seen * (double)n;
}

/* Whether every search of the call is answered by a scan that lists the
** key array's keys (vx_flat_allowed, vx_ivf_allowed) and so tests none
** against it; listing a smaller bitmap's instead, it tests each. Each
** kind's own plan, as its search makes it. */
static int vx_allow_keyed_only(vecidx *ix, const vx_sopts *a, size_t k)
{
    vx_ivf_how ivf;
    int keyed, pre;
    if (a->none) return 1;
    if (a->exact || !vx_allow_by_set(a)) return 0;
    if (ix->ivf.trained)
        return vx_ivf_plan(ix, a, vx_ivf_nprobe(ix, &a->u), &ivf);
    if (ix->p.kind == VECIDX_HNSW) {
        vx_hnsw_how how;
        vx_hnsw_plan(ix, &a->u, k, &how);
        return how.scan && how.keyed;
    }
    vx_store_plan(&a->u, vx_count(ix), &keyed, &pre);
    return keyed;
}

/* Gather a sorted key array into a set (or bitmap) for the searches that
** test keys one by one; a scan of the keys alone walks the array as
** given. Inside the search's epoch (and lock, for IVF-PQ). */
static int vx_allow_members(vecidx *ix, vx_sopts *a, size_t k)
{
    if (!a->sorted || a->set || a->kbits || vx_allow_keyed_only(ix, a, k))
        return VECIDX_OK;
    return vx_sopts_set(ix, a, a->u.allow_keys, a->u.allow_count);
}

/* vecidx_search with its pointers checked. */
/* How vx_search_one searches. */
#define VX_HOW_EXACT 1u /* the exact answer */
#define VX_HOW_QUIET 2u /* not counted (vecidx_estimate_recall's own) */

static int vx_search_one(vecidx *ix, const float *q, size_t k,
                         const vecidx_search_opts *opts, unsigned how,
                         uint64_t *keys, float *dists, size_t *found)
{
    vx_query vq;
    vx_sopts so;
    uint64_t *e;
    float *scaled = NULL;
    int rc, far;
    memset(&vq, 0, sizeof vq);
    memset(&so, 0, sizeof so);
    if ((rc = vx_check_vector(ix, q, &vq.inv_norm, 0, "query")) != VECIDX_OK)
        return rc;
    vq.v = q;
    if ((far = vx_query_far(ix, &vq)) != 0) {
        if (!(scaled = vx_malloc(&ix->mem, (size_t)ix->p.dim * sizeof(float))))
            return vx_err(ix, VECIDX_ENOMEM, "out of memory for the query");
        vx_query_scale(ix, &vq, far, scaled);
    }
    if ((rc = vx_sopts_init(ix, opts, &so)) == VECIDX_OK) {
        so.exact = (how & VX_HOW_EXACT) != 0;
        so.quiet = (how & VX_HOW_QUIET) != 0;
        if (ix->p.kind == VECIDX_IVFPQ) pthread_rwlock_rdlock(&ix->lock);
        e = vx_read_begin(ix);
        vx_allow_estimate(ix, &so);
        rc = vx_allow_members(ix, &so, k);
        if (rc == VECIDX_OK)
            rc = vx_search_run(ix, &vq, 1, k, &so.u, keys, dists, found);
        vx_ebr_exit(e);
        if (ix->p.kind == VECIDX_IVFPQ) pthread_rwlock_unlock(&ix->lock);
    }
    vx_sopts_free(ix, &so);
    vx_free(&ix->mem, scaled, (size_t)ix->p.dim * sizeof(float));
    return rc;
}

int vecidx_search(vecidx *ix, const float *q, size_t k,
                  const vecidx_search_opts *opts, uint64_t *keys, float *dists,
                  size_t *found)
{
    uint64_t t0 = vx_now_ns(), d0 = vx_dmg.n;
    int rc = vx_search_args(ix, q, k, keys, found);
    if (rc != VECIDX_OK) return rc;
    rc = vx_search_one(ix, q, k, opts, 0, keys, dists, found);
    if ((rc = vx_dmg_check(ix, d0, rc)) == VECIDX_ECORRUPT) *found = 0;
    return vx_act_call(&ix->act, VX_OP_SEARCH, t0, rc, 1);
}

/* One worker of a batch search: queries [begin, end). */
typedef struct vx_batch_job {
    vecidx *ix;
    const vx_query *q;
    size_t begin, end, k;
    const vecidx_search_opts *o;
    uint64_t *keys;
    float *dists;
    size_t *found;
    int rc;
} vx_batch_job;

static void *vx_batch_worker(void *arg)
{
    vx_batch_job *j = arg;
    j->rc = vx_search_run(j->ix, j->q + j->begin, j->end - j->begin, j->k, j->o,
                          j->keys + j->begin * j->k,
                          j->dists ? j->dists + j->begin * j->k : NULL,
                          j->found + j->begin);
    return NULL;
}

static int vx_search_many(vecidx *ix, size_t nq, const float *queries, size_t k,
                          const vecidx_search_opts *opts, uint64_t *keys,
                          float *dists, size_t *found)
{
    vx_batch_job jobs[64];
    vx_task tasks[64];
    vx_sopts so;
    vx_query *vq;
    uint64_t *e;
    char what[48];
    size_t i, per, total, dim = ix->p.dim;
    float *scaled = NULL; /* nq rows, for the queries vx_query_far scales */
    unsigned t, nt;
    int rc, far;
    memset(&so, 0, sizeof so);
    if (nq == 0) return VECIDX_OK;
    if ((rc = vx_search_args(ix, queries, k, keys, found)) != VECIDX_OK)
        return rc;
    if (!vx_mul_ok(nq, k, &total) || !vx_mul_ok(nq, sizeof *vq, &total))
        return vx_err(ix, VECIDX_EINVAL, "batch of %zu queries is too large",
                      nq);
    if (!(vq = vx_malloc(&ix->mem, nq * sizeof *vq)))
        return vx_err(ix, VECIDX_ENOMEM, "out of memory for %zu queries", nq);
    memset(vq, 0, nq * sizeof *vq);
    for (i = 0; i < nq && rc == VECIDX_OK; i++) {
        snprintf(what, sizeof what, "query %zu", i);
        vq[i].v = queries + i * dim;
        rc = vx_check_vector(ix, vq[i].v, &vq[i].inv_norm, 0, what);
        if (rc != VECIDX_OK || !(far = vx_query_far(ix, &vq[i]))) continue;
        if (!scaled &&
            !(scaled = vx_malloc(&ix->mem, nq * dim * sizeof(float))))
            rc = vx_err(ix, VECIDX_ENOMEM, "out of memory for %zu queries", nq);
        else
            vx_query_scale(ix, &vq[i], far, scaled + i * dim);
    }
    if (rc == VECIDX_OK) rc = vx_sopts_init(ix, opts, &so);
    if (rc == VECIDX_OK) {
        /* Whole query groups per worker, so each keeps the cache reuse. */
        size_t groups = (nq + VX_FLAT_QGROUP - 1) / VX_FLAT_QGROUP;
        nt = vx_threads(ix, opts);
        if (nt > 64) nt = 64;
        if (nt > groups) nt = (unsigned)groups;
        per = (groups + nt - 1) / nt * VX_FLAT_QGROUP;
        /* The workers read under the caller's lock and epoch. */
        if (ix->p.kind == VECIDX_IVFPQ) pthread_rwlock_rdlock(&ix->lock);
        e = vx_read_begin(ix);
        vx_allow_estimate(ix, &so);
        rc = vx_allow_members(ix, &so, k);
        for (t = 0; t < nt && rc == VECIDX_OK; t++) {
            vx_batch_job *j = &jobs[t];
            j->ix = ix;
            j->q = vq;
            j->begin = t * per < nq ? t * per : nq;
            j->end = j->begin + per < nq ? j->begin + per : nq;
            j->k = k;
            j->o = &so.u;
            j->keys = keys;
            j->dists = dists;
            j->found = found;
            j->rc = VECIDX_OK;
            tasks[t].fn = vx_batch_worker;
            tasks[t].arg = j;
        }
        if (rc == VECIDX_OK) vx_run_parallel(tasks, nt);
        vx_ebr_exit(e);
        if (ix->p.kind == VECIDX_IVFPQ) pthread_rwlock_unlock(&ix->lock);
        for (t = 0; t < nt && rc == VECIDX_OK; t++)
            if ((rc = jobs[t].rc) != VECIDX_OK)
                rc = vx_err(ix, rc, "out of memory for %zu search results", k);
    }
    vx_sopts_free(ix, &so);
    vx_free(&ix->mem, vq, nq * sizeof *vq);
    vx_free(&ix->mem, scaled, nq * dim * sizeof(float));
    return rc;
}

int vecidx_search_batch(vecidx *ix, size_t nq, const float *queries, size_t k,
                        const vecidx_search_opts *opts, uint64_t *keys,
                        float *dists, size_t *found)
{
    uint64_t t0 = vx_now_ns(), d0 = vx_dmg.n;
    int rc;
    VX_NULL_CHECK(NULL, ix, "index handle");
    rc = vx_search_many(ix, nq, queries, k, opts, keys, dists, found);
    if ((rc = vx_dmg_check(ix, d0, rc)) == VECIDX_ECORRUPT)
        memset(found, 0, nq * sizeof *found);
    return vx_act_call(&ix->act, VX_OP_BATCH, t0, rc, nq);
}

/* ---- recall estimates and tuning -------------------------------------------
** Recall is measured the only way it can be: the search's answers against
** exact answers (a scan of every vector the index holds, or the answers
** the caller gives) for a sample of queries. Queries the caller does not
** give are made from stored vectors: a vector picked at random, moved
** VX_SAMPLE_SPREAD times the median distance between a stored vector and
** its nearest neighbour, along the difference of two other stored
** vectors. Taken unmoved, a stored vector is found at once and its graph
** links lead straight to its neighbours, which overstates recall. Moved
** in a random direction instead (Gaussian noise), a query in high
** dimensions leaves the data's subspace, where every distance grows
** alike and the ranking stays the stored vector's: on 100k x 960 such
** queries still overstated recall (0.921 where the real ones got 0.867)
** however far they moved, while on 128 dimensions a far move made them
** harder than the real ones. A difference of stored vectors stays in
** the data's span. Measured with bench/vecidx-tune (HNSW, targets 0.90 /
** 0.95 / 0.99, 1000 real queries, bench/RESULTS.md): moved 0.85 gaps,
** tuning chose the smallest setting that reaches the target on the real
** queries, or one step above, on 10k and 100k x 128 and 100k x 960, and
** on 200k x 384 cosine but at 0.99 (two steps above); 0.75 chose one step
** short on 960, 1.0 two steps above on 384 and 10k. */

#define VX_SAMPLE_SPREAD 0.85
/* IVF-PQ's recall turns on where a query falls among the coarse cells;
** one near a stored vector sits inside its cell: moved 0.85-1.75 gaps,
** the sample overstated recall on 100k x 128 (0.954 where the real
** queries got 0.932), so tuning chose nprobe 8 for 0.95; moved 2.5, it
** chose the smallest sufficient setting for all three targets. */
#define VX_SAMPLE_SPREAD_IVF 2.5
#define VX_SAMPLE_DEFAULT 200 /* queries when the caller says 0 */
#define VX_SAMPLE_SCALE 32    /* vectors whose neighbour sets the scale */

typedef struct vx_sample {
    size_t nq, k;
    float *q;        /* nq * dim */
    uint64_t *truth; /* nq * k exact answers */
    size_t *ntruth;  /* answers per query (k, or fewer admissible) */
    uint64_t *keys;  /* nq * k: scratch for the searches measured */
    size_t *found;
    int vs_codes; /* truth from a scan of codes (vecidx_recall) */
} vx_sample;

static void vx_sample_free(vecidx *ix, vx_sample *sm)
{
    size_t dim = ix->p.dim;
    vx_free(&ix->mem, sm->q, sm->nq * dim * sizeof(float));
    vx_free(&ix->mem, sm->truth, sm->nq * sm->k * sizeof(uint64_t));
    vx_free(&ix->mem, sm->keys, sm->nq * sm->k * sizeof(uint64_t));
    vx_free(&ix->mem, sm->ntruth, sm->nq * sizeof(size_t));
    vx_free(&ix->mem, sm->found, sm->nq * sizeof(size_t));
    memset(sm, 0, sizeof *sm);
}

static int vx_sample_alloc(vecidx *ix, vx_sample *sm, size_t nq, size_t k)
{
    size_t dim = ix->p.dim, t;
    memset(sm, 0, sizeof *sm);
    if (!vx_mul_ok(nq, dim * sizeof(float), &t) ||
        !vx_mul_ok(nq, k * sizeof(uint64_t), &t))
        return vx_err(ix, VECIDX_EINVAL, "%zu queries of k %zu are too many",
                      nq, k);
    sm->nq = nq;
    sm->k = k;
    sm->q = vx_malloc(&ix->mem, nq * dim * sizeof(float));
    sm->truth = vx_malloc(&ix->mem, nq * k * sizeof(uint64_t));
    sm->keys = vx_malloc(&ix->mem, nq * k * sizeof(uint64_t));
    sm->ntruth = vx_malloc(&ix->mem, nq * sizeof(size_t));
    sm->found = vx_malloc(&ix->mem, nq * sizeof(size_t));
    if (sm->q && sm->truth && sm->keys && sm->ntruth && sm->found)
        return VECIDX_OK;
    vx_sample_free(ix, sm);
    return vx_err(ix, VECIDX_ENOMEM, "out of memory for %zu sample queries",
                  nq);
}

/* A stored key picked at random (0 with *ok = 0 when none is stored):
** the first live slot (or list entry) from a random place on. */
static uint64_t vx_sample_key(vecidx *ix, uint64_t *rng, int *ok)
{
    uint64_t r = vx_splitmix(rng), key = 0, i;
    *ok = 0;
    pthread_rwlock_rdlock(&ix->lock);
    if (ix->ivf.trained) {
        uint32_t nl = ix->ivf.nlist;
        for (i = 0; i < nl && !*ok; i++) {
            const vx_ivlist *l = vx_ivf_list(&ix->ivf, (r + i) % nl);
            if (l->n) {
                key = l->keys[(r >> 32) % l->n];
                *ok = 1;
            }
        }
    } else {
        uint32_t ns = VX_LOAD(&ix->store.nslots);
        for (i = 0; i < ns && !*ok; i++) {
            uint32_t slot = (uint32_t)((r + i) % ns);
            if (vx_store_live(&ix->store, slot) == VX_LIVE) {
                key = vx_store_key(&ix->store, slot);
                *ok = 1;
            }
        }
    }
    pthread_rwlock_unlock(&ix->lock);
    return key;
}

/* *gap = Euclidean distance from stored vector x (of key) to its nearest
** other stored vector, or -1 when there is none; y is scratch. */
static int vx_sample_gap(vecidx *ix, uint64_t key, const float *x, float *y,
                         double *gap)
{
    uint64_t keys[2];
    size_t found = 0, i, dim = ix->p.dim;
    double d = 0;
    int rc = vx_search_one(ix, x, 2, NULL, VX_HOW_EXACT | VX_HOW_QUIET, keys,
                           NULL, &found);
    *gap = -1;
    if (rc != VECIDX_OK) return rc;
    for (i = 0; i < found && keys[i] == key; i++) {
    }
    if (i == found) return VECIDX_OK;
    if ((rc = vecidx_get(ix, keys[i], y)) != VECIDX_OK)
        return rc == VECIDX_ENOTFOUND ? VECIDX_OK : rc; /* removed since */
    for (i = 0; i < dim; i++)
        d += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
    *gap = sqrt(d);
    return VECIDX_OK;
}

static int vx_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Copy a random stored vector into q; 1 if one was found, 0 if none is
** stored, or a negative error. Tried again when the key picked is
** removed before it is read. */
static int vx_sample_vec(vecidx *ix, uint64_t *rng, uint64_t *key, float *q)
{
    int tries, ok, rc = VECIDX_ENOTFOUND;
    for (tries = 0; tries < 16 && rc == VECIDX_ENOTFOUND; tries++) {
        *key = vx_sample_key(ix, rng, &ok);
        if (!ok) return 0;
        rc = vecidx_get(ix, *key, q);
    }
    return rc == VECIDX_OK ? 1 : rc == VECIDX_ENOTFOUND ? 0 : rc;
}

/* Move q (dim floats) by `len` along the difference a - b of two other
** stored vectors (scratch d, 2 * dim floats); 0 when none differ. */
static int vx_sample_move(vecidx *ix, uint64_t *rng, float *q, float *d,
                          double len)
{
    size_t dim = ix->p.dim, j;
    uint64_t key;
    double n2 = 0;
    int rc, tries;
    for (tries = 0; tries < 8 && !(n2 > 0); tries++) {
        if ((rc = vx_sample_vec(ix, rng, &key, d)) != 1 ||
            (rc = vx_sample_vec(ix, rng, &key, d + dim)) != 1)
            return rc;
        for (n2 = 0, j = 0; j < dim; j++)
            n2 += ((double)d[j] - d[dim + j]) * ((double)d[j] - d[dim + j]);
    }
    for (j = 0; j < dim && n2 > 0; j++)
        q[j] += (float)(((double)d[j] - d[dim + j]) * len / sqrt(n2));
    return 1;
}

/* Make sm->nq queries from stored vectors (see above). */
static int vx_sample_make(vecidx *ix, vx_sample *sm, uint64_t seed)
{
    size_t dim = ix->p.dim, i, ngap = 0;
    double gaps[VX_SAMPLE_SCALE], len;
    uint64_t rng = seed, key;
    float *x = vx_malloc(&ix->mem, 2 * dim * sizeof *x);
    int rc = VECIDX_OK;
    if (!x) return vx_err(ix, VECIDX_ENOMEM, "out of memory sampling");
    for (i = 0; i < VX_SAMPLE_SCALE && rc >= 0; i++)
        if ((rc = vx_sample_vec(ix, &rng, &key, x)) == 1 &&
            (rc = vx_sample_gap(ix, key, x, x + dim, &gaps[ngap])) == 0 &&
            gaps[ngap] >= 0)
            ngap++;
    if (rc >= 0 && ngap == 0)
        rc = vx_err(ix, VECIDX_ESTATE,
                    "the index holds too few vectors to make sample "
                    "queries from: give queries");
    if (rc >= 0) {
        qsort(gaps, ngap, sizeof *gaps, vx_cmp_double);
        len = (ix->ivf.trained ? VX_SAMPLE_SPREAD_IVF : VX_SAMPLE_SPREAD) *
              gaps[ngap / 2];
    }
    for (i = 0; i < sm->nq && rc >= 0; i++) {
        float *q = sm->q + i * dim;
        if ((rc = vx_sample_vec(ix, &rng, &key, q)) == 1)
            rc = vx_sample_move(ix, &rng, q, x, len);
        if (rc == 0)
            rc = vx_err(ix, VECIDX_ESTATE,
                        "the index was emptied while it was sampled");
    }
    vx_free(&ix->mem, x, 2 * dim * sizeof *x);
    return rc < 0 ? rc : VECIDX_OK; /* a failing call gave the message */
}

/* Fill sm with the caller's queries (or made ones) and exact answers (the
** caller's, or by scanning). */
static int vx_sample_init(vecidx *ix, vx_sample *sm, size_t k, size_t nq,
                          const float *queries, const uint64_t *truth,
                          const vecidx_search_opts *opts)
{
    size_t i, j, dim = ix->p.dim;
    int rc;
    if (k == 0) return vx_err(ix, VECIDX_EINVAL, "k is 0");
    if (truth && !queries)
        return vx_err(ix, VECIDX_EINVAL, "exact answers given without queries");
    if (nq == 0) {
        if (queries) return vx_err(ix, VECIDX_EINVAL, "queries given, nq is 0");
        nq = VX_SAMPLE_DEFAULT;
    }
    if ((rc = vx_sample_alloc(ix, sm, nq, k)) != VECIDX_OK) return rc;
    if (queries) {
        for (i = 0; i < nq && rc == VECIDX_OK; i++) {
            char what[48];
            snprintf(what, sizeof what, "query %zu", i);
            rc = vx_check_vector(ix, queries + i * dim, NULL, 0, what);
        }
        if (rc == VECIDX_OK) memcpy(sm->q, queries, nq * dim * sizeof(float));
    } else {
        rc = vx_sample_make(ix, sm, ix->p.seed ^ 0x7e57ull);
    }
    /* with no float32 vectors, a scan ranks by the codes */
    sm->vs_codes = !truth && (ix->p.kind == VECIDX_IVFPQ
                                  ? ix->ivf.trained && !ix->p.ivf_keep_vectors
                                  : ix->store.store != VECIDX_STORE_F32 &&
                                        !ix->store.keep);
    for (i = 0; i < nq && rc == VECIDX_OK; i++) {
        if (!truth) {
            rc = vx_search_one(ix, sm->q + i * dim, k, opts,
                               VX_HOW_EXACT | VX_HOW_QUIET, sm->truth + i * k,
                               NULL, &sm->ntruth[i]);
            continue;
        }
        /* the caller's answers: up to k, UINT64_MAX ends a short list */
        for (j = 0; j < k && truth[i * k + j] != UINT64_MAX; j++)
            sm->truth[i * k + j] = truth[i * k + j];
        sm->ntruth[i] = j;
    }
    if (rc != VECIDX_OK) vx_sample_free(ix, sm);
    return rc;
}

/* Recall of the search under opts on sm. */
static int vx_sample_measure(vecidx *ix, vx_sample *sm,
                             const vecidx_search_opts *opts, vecidx_recall *out)
{
    size_t i, j, h, k = sm->k, dim = ix->p.dim, n = 0;
    double sum = 0, sum2 = 0, sd;
    uint64_t t0 = vx_now_ns(), ns;
    int rc = VECIDX_OK;
    for (i = 0; i < sm->nq && rc == VECIDX_OK; i++)
        rc = vx_search_one(ix, sm->q + i * dim, k, opts, VX_HOW_QUIET,
                           sm->keys + i * k, NULL, &sm->found[i]);
    ns = vx_now_ns() - t0;
    if (rc != VECIDX_OK) return rc;
    for (i = 0; i < sm->nq; i++) {
        const uint64_t *t = sm->truth + i * k, *got = sm->keys + i * k;
        double r;
        size_t hit = 0;
        if (sm->ntruth[i] == 0) continue; /* nothing admissible: no recall */
        for (j = 0; j < sm->ntruth[i]; j++)
            for (h = 0; h < sm->found[i]; h++)
                if (got[h] == t[j]) {
                    hit++;
                    break;
                }
        r = (double)hit / (double)sm->ntruth[i];
        sum += r;
        sum2 += r * r;
        n++;
    }
    memset(out, 0, sizeof *out);
    out->queries = (uint32_t)n;
    out->k = (uint32_t)k;
    out->vs_codes = sm->vs_codes;
    out->search_us = (double)ns / 1e3 / (double)sm->nq;
    if (n == 0)
        return vx_err(ix, VECIDX_ESTATE,
                      "no query has an admissible vector to find: nothing "
                      "to measure recall on");
    out->recall = sum / (double)n;
    /* normal approximation to the mean's 95 % interval */
    sd = n > 1
             ? sqrt(fmax(0.0, (sum2 - sum * sum / (double)n) / (double)(n - 1)))
             : 0;
    out->low = fmax(0.0, out->recall - 1.96 * sd / sqrt((double)n));
    out->high = fmin(1.0, out->recall + 1.96 * sd / sqrt((double)n));
    return VECIDX_OK;
}

int vecidx_estimate_recall(vecidx *ix, size_t k, size_t nq,
                           const float *queries, const uint64_t *truth,
                           const vecidx_search_opts *opts, vecidx_recall *out)
{
    vx_sample sm;
    uint64_t d0 = vx_dmg.n;
    int rc;
    VX_NULL_CHECK(NULL, ix, "index handle");
    VX_NULL_CHECK(ix, out, "result");
    if ((rc = vx_sample_init(ix, &sm, k, nq, queries, truth, opts)) != 0)
        return vx_dmg_check(ix, d0, rc);
    rc = vx_sample_measure(ix, &sm, opts, out);
    vx_sample_free(ix, &sm);
    return vx_dmg_check(ix, d0, rc);
}

/* Settings vecidx_tune tries, smallest first. */
static const uint32_t vx_tune_ef[] = {
    10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048};
static const uint32_t vx_tune_refine[] = {1, 2, 4, 8, 16, 32};

/* Store the chosen defaults, and in the index file at once (a checkpoint,
** as after training) so that they outlive the handle; nothing changes if
** that fails. */
static int vx_tune_store(vecidx *ix, const vecidx_tuning *t)
{
    vecidx_params old;
    int rc = VECIDX_OK;
    if (ix->p.kind != VECIDX_HNSW && !t->nprobe && !t->refine)
        return VECIDX_OK; /* an exact scan: nothing to set */
    vx_write_begin(ix);
    old = ix->p; /* under the writer lock: another tuning may store too */
    if (ix->p.kind == VECIDX_HNSW)
        __atomic_store_n(&ix->p.hnsw_ef_search, t->ef, __ATOMIC_RELAXED);
    if (ix->p.kind == VECIDX_IVFPQ) {
        __atomic_store_n(&ix->p.ivf_nprobe, t->nprobe, __ATOMIC_RELAXED);
        __atomic_store_n(&ix->p.ivf_refine, t->refine, __ATOMIC_RELAXED);
    } else if (t->refine) {
        __atomic_store_n(&ix->p.refine, t->refine, __ATOMIC_RELAXED);
    }
    if (ix->wal.path && (rc = vx_checkpoint_run(ix)) != VECIDX_OK) {
        __atomic_store_n(&ix->p.hnsw_ef_search, old.hnsw_ef_search,
                         __ATOMIC_RELAXED);
        __atomic_store_n(&ix->p.ivf_nprobe, old.ivf_nprobe, __ATOMIC_RELAXED);
        __atomic_store_n(&ix->p.ivf_refine, old.ivf_refine, __ATOMIC_RELAXED);
        __atomic_store_n(&ix->p.refine, old.refine, __ATOMIC_RELAXED);
    }
    vx_write_end(ix);
    return rc;
}

/* What would reach a target the settings tried did not. */
static const char *vx_tune_advice(const vecidx *ix)
{
    if (ix->p.kind == VECIDX_IVFPQ)
        return ix->p.ivf_keep_vectors
                   ? "with every list probed and 32 k candidates re-ranked "
                     "recall falls short: finer codes (a larger pq_m) rank "
                     "better"
                   : "product-quantized codes alone cap recall (near 0.8 "
                     "on the benchmark sets): create the index with "
                     "ivf_keep_vectors and tune again to re-rank exactly";
    if (ix->store.store != VECIDX_STORE_F32 && !ix->store.keep)
        return "compressed codes alone cap recall: create the index with "
               "keep_vectors to re-rank exactly";
    if (ix->p.kind == VECIDX_FLAT)
        return "re-ranking the 32 k best codes falls short: a finer "
               "storage (f16, or f32) ranks better";
    return "ef up to 2048 falls short: a graph built with a larger hnsw_m "
           "or hnsw_ef_construction reaches more";
}

/* Measure one setting into t, keeping the best measured; 1 if it reached
** the target. */
static int vx_tune_try(vecidx *ix, vx_sample *sm, double target, uint32_t ef,
                       uint32_t nprobe, uint32_t refine, vecidx_tuning *t,
                       int *rc)
{
    vecidx_search_opts o;
    vecidx_recall r;
    memset(&o, 0, sizeof o);
    o.ef = ef;
    o.nprobe = nprobe;
    o.refine = refine;
    if ((*rc = vx_sample_measure(ix, sm, &o, &r)) != VECIDX_OK) return 0;
    t->steps++;
    if (t->steps == 1 || r.recall > t->recall.recall) {
        t->recall = r;
        t->ef = ef;
        t->nprobe = nprobe;
        t->refine = refine;
    }
    if (r.recall < target) return 0;
    t->recall = r;
    t->ef = ef;
    t->nprobe = nprobe;
    t->refine = refine;
    return 1;
}

/* The sweep: for HNSW ef, for IVF-PQ nprobe, each with the refine
** factors when full vectors are kept, smallest first. */
static int vx_tune_sweep(vecidx *ix, vx_sample *sm, double target,
                         vecidx_tuning *t)
{
    int ivf = ix->ivf.trained, keep = ix->p.kind == VECIDX_IVFPQ
                                          ? (int)ix->p.ivf_keep_vectors
                                          : (int)ix->store.keep;
    size_t nr = keep ? sizeof vx_tune_refine / sizeof *vx_tune_refine : 1;
    size_t ne = ix->p.kind == VECIDX_HNSW
                    ? sizeof vx_tune_ef / sizeof *vx_tune_ef
                    : 1;
    uint32_t nprobe = 1, top = ivf ? ix->ivf.nlist : 1;
    size_t e, r;
    int rc = VECIDX_OK;
    for (;;) {
        for (e = 0; e < ne; e++) {
            uint32_t ef = ix->p.kind == VECIDX_HNSW ? vx_tune_ef[e] : 0;
            if (ef && ef < sm->k && e + 1 < ne && vx_tune_ef[e + 1] <= sm->k)
                continue; /* a breadth below k searches as k */
            for (r = 0; r < nr; r++)
                if (vx_tune_try(ix, sm, target, ef, ivf ? nprobe : 0,
                                keep ? vx_tune_refine[r] : 0, t, &rc))
                    return VECIDX_OK;
                else if (rc != VECIDX_OK)
                    return rc;
        }
        if (!ivf || nprobe >= top) return VECIDX_OK;
        nprobe = nprobe > top / 2 ? top : nprobe * 2;
    }
}

int vecidx_tune(vecidx *ix, double target, size_t k, size_t nq,
                const float *queries, const uint64_t *truth, vecidx_tuning *out)
{
    vx_sample sm;
    int rc;
    VX_NULL_CHECK(NULL, ix, "index handle");
    VX_NULL_CHECK(ix, out, "result");
    VX_WRITABLE(ix);
    memset(out, 0, sizeof *out);
    out->advice = "";
    if (ix->p.kind == VECIDX_IVFPQ && !ix->ivf.trained)
        return vx_err(ix, VECIDX_ESTATE,
                      "IVF-PQ index is not trained yet: it searches "
                      "exactly until then; tune it once trained");
    if (!(target > 0 && target <= 1))
        return vx_err(ix, VECIDX_EINVAL, "target recall %g is not in (0, 1]",
                      target);
    if ((rc = vx_sample_init(ix, &sm, k, nq, queries, truth, NULL)) != 0)
        return rc;
    rc = vx_tune_sweep(ix, &sm, target, out);
    vx_sample_free(ix, &sm);
    if (rc != VECIDX_OK) return rc;
    out->reached = out->recall.recall >= target;
    if (!out->reached) {
        out->advice = vx_tune_advice(ix);
        return VECIDX_OK;
    }
    if (out->recall.vs_codes) /* reached, but against what? */
        out->advice = "recall was measured against the codes' own exact "
                      "answers: against the vectors they stand for it is "
                      "lower (near 0.8 for IVF-PQ on the benchmark sets); "
                      "give exact answers to measure it, or keep the "
                      "vectors";
    return vx_tune_store(ix, out);
}
