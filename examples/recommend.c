/* Real-time product recommendations on a durable vecidx index.
**
** The shop keeps its catalog -- category, price, stock -- in its own
** arrays; vecidx holds only the 512-d product embeddings under the product
** id. A recommendation is the k products closest to a shopper's taste
** vector that are in the wanted category, in stock and within budget.
** Searches alternate between two ways of saying so: a filter callback that
** asks the catalog about each candidate (the way this example used to do
** it), and an allowed set -- the category's bitmap of products in stock,
** which the shop keeps up to date as products come and go -- with only the
** price left to a callback. While query threads serve shoppers, one
** thread changes the shop: new products, products taken off sale, stock
** running out and coming back. At the end it prints query latency
** percentiles of each way, checks that every recommendation passed its
** filters, and reopens the file to check it holds exactly the catalog's
** products. On Linux it also counts the searches during which the thread
** lost its core: preempted (more busy threads than cores) or blocked (it
** slept, waiting on a lock or the disk), and gives the percentiles of the
** others, so that a slow tail can be told apart from the scheduler's.
**
**   examples/recommend [--quick] [--threads N] [PATH]
**
** The shop runs one shopper thread per core but one, leaving a core to
** the writer, as a service that cares about its tail latency would: with
** more busy threads than cores, each of the writer's wake-ups takes a core
** from a search in flight, and the slowest percent of searches measure
** the scheduler rather than the index. --threads N runs N shopper threads
** instead (at most 16), oversubscribed or not. PATH is the index file to
** create (it must not exist); by default it goes to a new directory under
** $TMPDIR or /tmp, removed at the end. --quick runs a smaller shop, for
** the test suite. Exit status 0 when every check passes. Build: cc -std=c11 -O2
*-I. examples/recommend.c vecidx.c -pthread
** -lm
*/
#ifdef __linux__
#define _GNU_SOURCE /* RUSAGE_THREAD */
#else
#define _POSIX_C_SOURCE 200809L
#endif

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vecidx.h"

#define DIM 512
#define CATEGORIES 16
#define K 10
#define MAX_QUERY_THREADS 16

/* Lowest and highest price: the shop knows its prices are spread evenly
** between them, which tells how many products a budget admits. */
#define PRICE_MIN 5.0
#define PRICE_MAX 200.0

/* Product states, changed by the writer while shoppers search. */
enum {
    GONE = 0,
    IN_STOCK = 1,
    SOLD_OUT = 2
};

typedef struct shop {
    vecidx *ix;
    size_t cap;           /* product ids are 0 .. cap-1 */
    atomic_size_t nextid; /* next id to list */
    /* Written once before the product's vecidx_add and never again, so
    ** the index lock orders them before any search that can return it. */
    uint8_t *category;
    float *price;
    atomic_uchar *state; /* changes at any time: atomic */
    /* Per category, bit id % 64 of word id / 64 is set while product id
    ** is in stock: the allowed sets, without the price, which differs
    ** from one search to the next. Updated with each state change, read
    ** by shoppers meanwhile, hence atomic words. */
    _Atomic uint64_t *in_stock; /* CATEGORIES x words */
    size_t words;               /* words per category: cap / 64 rounded up */
    atomic_ulong changes;       /* state changes so far, counted after each */
    float *centroid;            /* CATEGORIES x DIM taste centroids */
    atomic_int done;            /* shoppers finished: the writer stops */
    int failed;                 /* a check failed (set before threads join) */
} shop;

/* ---- Random numbers ------------------------------------------------- */

static uint64_t rnd_next(uint64_t *s)
{
    /* xorshift64*: fast, good enough for made-up embeddings */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1Dull;
}

static double rnd_unit(uint64_t *s) /* [0, 1) */
{
    return (double)(rnd_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

static float rnd_normal(uint64_t *s)
{
    double u = rnd_unit(s), v = rnd_unit(s);
    return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v));
}

/* A product's embedding: its category's centroid plus noise, so that
** products of one category cluster but overlap their neighbours. */
static void make_embedding(const shop *sh, unsigned cat, uint64_t *rng,
                           float *out)
{
    unsigned i;
    for (i = 0; i < DIM; i++)
        out[i] = sh->centroid[cat * DIM + i] + 0.6f * rnd_normal(rng);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* How a search's thread spent the search, as far as the system says. */
enum {
    RAN,       /* on its core throughout */
    PREEMPTED, /* the scheduler gave its core to another thread a while */
    BLOCKED    /* it slept: waited on a lock or the disk */
};

/* The calling thread's context switches so far, involuntary and
** voluntary; zero where the system does not count them per thread. */
static void thread_switches(long *involuntary, long *voluntary)
{
#ifdef RUSAGE_THREAD
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) == 0) {
        *involuntary = ru.ru_nivcsw;
        *voluntary = ru.ru_nvcsw;
        return;
    }
#endif
    *involuntary = *voluntary = 0;
}

/* Called by the one writer after each state change and before counting
** it, so that short_list_ok's one uncounted change covers the bitmaps
** too. */
static void set_in_stock(shop *sh, size_t id, int in_stock)
{
    _Atomic uint64_t *w = &sh->in_stock[sh->category[id] * sh->words + id / 64];
    uint64_t bit = (uint64_t)1 << (id % 64);
    if (in_stock)
        atomic_fetch_or_explicit(w, bit, memory_order_relaxed);
    else
        atomic_fetch_and_explicit(w, ~bit, memory_order_relaxed);
}

static int report(const shop *sh, int rc, const char *what)
{
    fprintf(stderr, "recommend: %s: %s: %s\n", what, vecidx_strerror(rc),
            vecidx_errmsg(sh->ix));
    return 1;
}

/* Give the product an id, describe it in the catalog, add its embedding,
** then put it on sale: shoppers never see a product the catalog does not
** know yet. */
static int list_product(shop *sh, uint64_t *rng, float *vec)
{
    size_t id = atomic_fetch_add(&sh->nextid, 1);
    unsigned cat = (unsigned)(rnd_next(rng) % CATEGORIES);
    int rc;
    if (id >= sh->cap) return 0; /* catalog full: stop listing */
    sh->category[id] = (uint8_t)cat;
    sh->price[id] = (float)(PRICE_MIN +
                            rnd_unit(rng) * (PRICE_MAX - PRICE_MIN));
    make_embedding(sh, cat, rng, vec);
    if ((rc = vecidx_add(sh->ix, id, vec)) != VECIDX_OK)
        return report(sh, rc, "adding a product");
    atomic_store(&sh->state[id], IN_STOCK);
    set_in_stock(sh, id, 1);
    atomic_fetch_add(&sh->changes, 1);
    return 0;
}

/* ---- The shop's writer ------------------------------------------------ */

typedef struct writer_stats {
    unsigned long added, removed, restocked, sold_out;
    int failed;
} writer_stats;

/* A pace a real catalog feed could have: about a thousand changes a
** second, not a loop holding the write lock. */
static void *writer_main(void *arg)
{
    shop *sh = arg;
    static writer_stats ws;
    uint64_t rng = 0x5eed0002;
    float vec[DIM];
    struct timespec pause = {0, 1000000};
    while (!atomic_load(&sh->done) && !ws.failed) {
        size_t listed = atomic_load(&sh->nextid), id;
        int i, rc;
        /* a new product */
        if (listed < sh->cap) {
            if (list_product(sh, &rng, vec)) ws.failed = 1;
            ws.added++;
        }
        /* one taken off sale: out of the catalog first, then out of the
        ** index, so no search admits it in between */
        id = (size_t)(rnd_next(&rng) % listed);
        if (atomic_exchange(&sh->state[id], GONE) != GONE) {
            set_in_stock(sh, id, 0);
            atomic_fetch_add(&sh->changes, 1);
            if ((rc = vecidx_remove(sh->ix, id)) != VECIDX_OK) {
                report(sh, rc, "removing a product");
                ws.failed = 1;
            }
            ws.removed++;
        }
        /* stock changes need no index call at all */
        for (i = 0; i < 4; i++) {
            unsigned char want = IN_STOCK;
            id = (size_t)(rnd_next(&rng) % listed);
            if (atomic_compare_exchange_strong(&sh->state[id], &want,
                                               SOLD_OUT)) {
                set_in_stock(sh, id, 0);
                ws.sold_out++;
                atomic_fetch_add(&sh->changes, 1);
            } else if (want == SOLD_OUT &&
                       atomic_compare_exchange_strong(&sh->state[id], &want,
                                                      IN_STOCK)) {
                set_in_stock(sh, id, 1);
                ws.restocked++;
                atomic_fetch_add(&sh->changes, 1);
            }
        }
        nanosleep(&pause, NULL);
    }
    return &ws;
}

/* ---- Shoppers --------------------------------------------------------- */

/* What one search asks of the catalog. `admitted` records, per product,
** the number of the last query whose filter admitted it: the check after
** the search needs no lock and no guess about what changed meanwhile. */
typedef struct wish {
    const shop *sh;
    unsigned category;
    float budget;
    uint32_t query;
    uint32_t *admitted;
} wish;

static int wanted(const wish *w, size_t id)
{
    const shop *sh = w->sh;
    return atomic_load_explicit(&sh->state[id], memory_order_relaxed) ==
               IN_STOCK &&
           sh->category[id] == w->category && sh->price[id] <= w->budget;
}

static int admit(uint64_t key, void *ctx)
{
    wish *w = ctx;
    if (key >= w->sh->cap || !wanted(w, (size_t)key)) return 0;
    w->admitted[key] = w->query;
    return 1;
}

/* With the allowed set, the callback is left only the budget. */
static int admit_price(uint64_t key, void *ctx)
{
    wish *w = ctx;
    if (key >= w->sh->cap || w->sh->price[key] > w->budget) return 0;
    w->admitted[key] = w->query;
    return 1;
}

/* This search's allowed set: the wanted category's products in stock now,
** copied because the library needs a set that holds still during the
** call while the writer goes on changing the shop's. A word per 64
** product ids, up to the last id listed: 10 KB for 80,000 products. */
static uint64_t allowed_now(const shop *sh, unsigned category, uint64_t *bits)
{
    const _Atomic uint64_t *src = sh->in_stock + category * sh->words;
    size_t listed = atomic_load(&sh->nextid), i, n;
    if (listed > sh->cap) listed = sh->cap;
    n = (listed + 63) / 64;
    for (i = 0; i < n; i++)
        bits[i] = atomic_load_explicit(&src[i], memory_order_relaxed);
    return (uint64_t)n * 64;
}

/* A list shorter than k is right only if no more products were wanted.
** The catalog changes while we count, but each change moves the count by
** one: products wanted now number at most the results, plus the changes
** counted since the search began, plus one change whose count the single
** writer has not made yet. */
static int short_list_ok(const wish *w, size_t found, unsigned long since)
{
    const shop *sh = w->sh;
    size_t id, n = 0, listed = atomic_load(&sh->nextid);
    if (listed > sh->cap) listed = sh->cap;
    for (id = 0; id < listed; id++) n += wanted(w, id);
    return n <= found + (atomic_load(&sh->changes) - since) + 1;
}

/* The two ways a search names the products it may return, alternated
** query by query so that both meet the same index, the same writer and
** the same caches. */
enum {
    BY_CALLBACK,    /* before: the filter asks the catalog about each key */
    BY_ALLOWED_SET, /* after: the category's in-stock bitmap, the price by
                       callback */
    FORMS
};

typedef struct shopper {
    shop *sh;
    unsigned id;
    unsigned queries;          /* of each form */
    double *latency[FORMS];    /* seconds, one per query */
    unsigned char *how[FORMS]; /* RAN, PREEMPTED or BLOCKED, per query */
    unsigned long results[FORMS], bad, short_lists, missed;
    int show; /* print the first search's results */
    int failed;
} shopper;

/* Did result `key` pass every filter of the search? The category never
** changes, so it is checked again; the rest was decided during the search,
** which `admitted` and the allowed set copied for it remember. */
static int passed(const wish *w, int form, const vecidx_search_opts *o,
                  uint64_t key)
{
    const shop *sh = w->sh;
    if (key >= sh->cap || sh->category[key] != w->category) return 0;
    if (o->filter && w->admitted[key] != w->query) return 0;
    if (form == BY_ALLOWED_SET &&
        (key >= o->allow_bits ||
         !(o->allow_bitmap[key / 64] >> (key % 64) & 1) ||
         sh->price[key] > w->budget))
        return 0;
    return 1;
}

static void *shopper_main(void *arg)
{
    shopper *s = arg;
    shop *sh = s->sh;
    uint64_t rng = 0x5eed1000 + s->id, keys[K], *bits;
    float taste[DIM], dists[K];
    size_t found, j;
    unsigned q;
    vecidx_search_opts opts;
    wish w;
    memset(&w, 0, sizeof w);
    w.sh = sh;
    w.admitted = calloc(sh->cap, sizeof *w.admitted);
    bits = malloc(sh->words * sizeof *bits);
    if (!w.admitted || !bits) {
        free(w.admitted);
        free(bits);
        s->failed = 1;
        return NULL;
    }
    for (q = 0; q < FORMS * s->queries; q++) {
        unsigned liked = (unsigned)(rnd_next(&rng) % CATEGORIES);
        int form = (int)(q % FORMS);
        unsigned long changes;
        long invol0, vol0, invol1, vol1;
        double t;
        int rc;
        /* The shopper's taste leans to one category; most searches are
        ** in it, some look for something else (cross-selling). */
        make_embedding(sh, liked, &rng, taste);
        w.category = rnd_unit(&rng) < 0.8
                         ? liked
                         : (unsigned)(rnd_next(&rng) % CATEGORIES);
        w.budget = rnd_unit(&rng) < 0.5 ? INFINITY
                                        : (float)(20 + rnd_unit(&rng) * 80);
        w.query = q + 1;
        memset(&opts, 0, sizeof opts);
        opts.filter_ctx = &w;
        changes = atomic_load(&sh->changes);
        thread_switches(&invol0, &vol0);
        /* Copying the allowed set is part of the search's cost: timed. */
        t = now_seconds();
        if (form == BY_CALLBACK) {
            opts.filter = admit;
        } else {
            opts.allow_bitmap = bits;
            opts.allow_bits = allowed_now(sh, w.category, bits);
            /* Without a budget there is nothing left to ask. With one, the
            ** share of products it admits is known from the price range,
            ** which spares the library sampling the callback to guess. */
            if (isfinite(w.budget)) {
                opts.filter = admit_price;
                opts.filter_selectivity = (float)((w.budget - PRICE_MIN) /
                                                  (PRICE_MAX - PRICE_MIN));
            }
        }
        rc = vecidx_search(sh->ix, taste, K, &opts, keys, dists, &found);
        s->latency[form][q / FORMS] = now_seconds() - t;
        thread_switches(&invol1, &vol1);
        s->how[form][q / FORMS] = vol1 > vol0       ? BLOCKED
                                  : invol1 > invol0 ? PREEMPTED
                                                    : RAN;
        if (rc != VECIDX_OK) {
            report(sh, rc, "searching");
            s->failed = 1;
            break;
        }
        for (j = 0; j < found; j++)
            if (!passed(&w, form, &opts, keys[j]) ||
                (j > 0 && dists[j] < dists[j - 1]))
                s->bad++;
        s->results[form] += found;
        if (found < K) {
            s->short_lists++;
            s->missed += !short_list_ok(&w, found, changes);
        }
        if (s->show && q == 0) {
            printf("a shopper who likes category %u, looking in category "
                   "%u",
                   liked, w.category);
            if (isfinite(w.budget)) printf(" under $%.0f", w.budget);
            printf(":\n ");
            for (j = 0; j < found; j++)
                printf(" #%llu ($%.2f)", (unsigned long long)keys[j],
                       sh->price[keys[j]]);
            printf("\n");
        }
    }
    free(w.admitted);
    free(bits);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted values. */
static double percentile(const double *v, size_t n, double p)
{
    size_t r = (size_t)ceil(p / 100 * (double)n);
    return v[r > 0 ? r - 1 : 0];
}

/* Percentiles of one way's latencies `v` (sorted here), then, where the
** system counts context switches, of the searches that kept their core. */
static void print_latency(const char *name, double *v, const unsigned char *how,
                          size_t n)
{
    double *ran = malloc(sizeof *ran * n);
    size_t i, m = 0, preempted = 0, blocked = 0;
    for (i = 0; i < n; i++) {
        if (how[i] == RAN && ran) ran[m++] = v[i];
        preempted += how[i] == PREEMPTED;
        blocked += how[i] == BLOCKED;
    }
    qsort(v, n, sizeof *v, cmp_double);
    printf("  %s p50 %.3f ms  p95 %.3f ms  p99 %.3f ms  max %.3f ms\n", name,
           percentile(v, n, 50) * 1e3, percentile(v, n, 95) * 1e3,
           percentile(v, n, 99) * 1e3, v[n - 1] * 1e3);
#ifdef RUSAGE_THREAD
    if (m > 0) {
        qsort(ran, m, sizeof *ran, cmp_double);
        printf("    %zu preempted, %zu blocked; the other %zu: p50 %.3f ms  "
               "p95 %.3f ms  p99 %.3f ms  max %.3f ms\n",
               preempted, blocked, m, percentile(ran, m, 50) * 1e3,
               percentile(ran, m, 95) * 1e3, percentile(ran, m, 99) * 1e3,
               ran[m - 1] * 1e3);
    }
#endif
    free(ran);
}

/* ---- Setup, run, verify ------------------------------------------------ */

/* One shopper per core but one, so the writer's wake-ups find a core free
** instead of preempting a search; one shopper where the count is unknown. */
static unsigned default_threads(void)
{
    long cores = -1;
#ifdef _SC_NPROCESSORS_ONLN
    cores = sysconf(_SC_NPROCESSORS_ONLN);
#endif
    if (cores < 2) return 1;
    return cores - 1 > MAX_QUERY_THREADS ? MAX_QUERY_THREADS
                                         : (unsigned)(cores - 1);
}

/* After the run: reopen the file read-only, as a restarted service would,
** and compare it with the catalog product by product. */
static int verify_file(const shop *sh, const char *path)
{
    vecidx *ix;
    size_t id, listed = atomic_load(&sh->nextid), want = 0, wrong = 0;
    int rc = vecidx_open(path, NULL, VECIDX_RDONLY, &ix);
    if (rc != VECIDX_OK) {
        fprintf(stderr, "recommend: reopening %s: %s: %s\n", path,
                vecidx_strerror(rc), vecidx_errmsg(NULL));
        return 1;
    }
    if (listed > sh->cap) listed = sh->cap;
    for (id = 0; id < listed; id++) {
        int on_sale = atomic_load(&sh->state[id]) != GONE;
        want += on_sale;
        wrong += vecidx_contains(ix, id) != on_sale;
    }
    rc = vecidx_check(ix);
    printf("reopened %s: %zu products, catalog has %zu, %zu mismatches, "
           "check %s\n",
           path, vecidx_count(ix), want, wrong, rc ? "FAILED" : "ok");
    rc = rc || wrong || vecidx_count(ix) != want;
    vecidx_close(ix);
    return rc;
}

/* One round: `nthreads` shoppers make `per_thread` searches of each form,
** the same ones every round, while the writer changes the shop if `busy`.
** Prints what it measured and checked; adds results that failed their
** filters to *bad and short lists that missed wanted products to *missed.
** Returns nonzero if something failed to run. */
static int serve(shop *sh, unsigned nthreads, unsigned per_thread, int busy,
                 unsigned long *bad, unsigned long *missed)
{
    static const char *const form_name[FORMS] = {
        "before, by callback:        ", "after, by allowed set:      "};
    pthread_t writer, threads[MAX_QUERY_THREADS];
    shopper shoppers[MAX_QUERY_THREADS];
    size_t n = (size_t)per_thread * nthreads; /* searches of each form */
    double *all = malloc(sizeof *all * n * FORMS), t0, run_s;
    unsigned char *hows = malloc(n * FORMS);
    unsigned long results[FORMS] = {0}, nbad = 0, short_lists = 0, nmiss = 0;
    writer_stats *ws = NULL;
    unsigned t, started = 0;
    int f, failed = 0;
    void *ret;

    if (!all || !hows) {
        free(all);
        free(hows);
        fprintf(stderr, "recommend: out of memory\n");
        return 1;
    }
    atomic_store(&sh->done, 0);
    t0 = now_seconds();
    if (busy && pthread_create(&writer, NULL, writer_main, sh) != 0)
        busy = 0, failed = 1;
    for (t = 0; t < nthreads && !failed; t++, started++) {
        memset(&shoppers[t], 0, sizeof shoppers[t]);
        shoppers[t].sh = sh;
        shoppers[t].id = t;
        shoppers[t].queries = per_thread;
        shoppers[t].show = t == 0 && !busy;
        for (f = 0; f < FORMS; f++) {
            shoppers[t].latency[f] = all + f * n + (size_t)t * per_thread;
            shoppers[t].how[f] = hows + f * n + (size_t)t * per_thread;
        }
        if (pthread_create(&threads[t], NULL, shopper_main, &shoppers[t]))
            failed = 1;
    }
    for (t = 0; t < started; t++) {
        pthread_join(threads[t], NULL);
        for (f = 0; f < FORMS; f++) results[f] += shoppers[t].results[f];
        nbad += shoppers[t].bad;
        short_lists += shoppers[t].short_lists;
        nmiss += shoppers[t].missed;
        failed |= shoppers[t].failed;
    }
    run_s = now_seconds() - t0;
    atomic_store(&sh->done, 1);
    if (busy) {
        pthread_join(writer, &ret);
        ws = ret;
        failed |= ws->failed;
    }
    if (!failed) {
        printf("%s shop: %zu searches on %u threads (%.0f per second)",
               busy ? "busy" : "quiet", n * FORMS, nthreads,
               (double)(n * FORMS) / run_s);
        if (ws)
            printf(", while %lu products were added, %lu removed, %lu sold "
                   "out, %lu restocked",
                   ws->added, ws->removed, ws->sold_out, ws->restocked);
        printf("\nlatency of a filtered top-%d search, %zu searches each "
               "way:\n",
               K, n);
        for (f = 0; f < FORMS; f++)
            print_latency(form_name[f], all + f * n, hows + f * n, n);
        printf("filter check: %lu results by callback, %lu by allowed set, "
               "%lu not admitted by their filters: %s\n",
               results[BY_CALLBACK], results[BY_ALLOWED_SET], nbad,
               nbad ? "FAILED" : "ok");
        printf("short lists: %lu searches found fewer than %d, %lu of them "
               "while more products were wanted: %s\n",
               short_lists, K, nmiss, nmiss ? "FAILED" : "ok");
    }
    *bad += nbad;
    *missed += nmiss;
    free(all);
    free(hows);
    return failed;
}

int main(int argc, char **argv)
{
    int quick = 0, argi, rc, failed = 0;
    const char *user_path = NULL;
    char dir[512] = "", path[600];
    size_t initial, i;
    unsigned per_thread, nthreads = default_threads();
    shop sh;
    vecidx_params p;
    float *vecs;
    uint64_t *keys, rng = 0x5eed0001;
    double t0, load_s;
    unsigned long bad = 0, missed = 0;
    struct stat sb;

    for (argi = 1; argi < argc; argi++) {
        if (strcmp(argv[argi], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[argi], "--threads") == 0 && argi + 1 < argc) {
            char *end;
            unsigned long v = strtoul(argv[++argi], &end, 10);
            if (*end || v < 1 || v > MAX_QUERY_THREADS) {
                fprintf(stderr, "recommend: --threads takes 1 to %d\n",
                        MAX_QUERY_THREADS);
                return 2;
            }
            nthreads = (unsigned)v;
        } else if (argv[argi][0] != '-' && !user_path)
            user_path = argv[argi];
        else {
            fprintf(stderr, "usage: %s [--quick] [--threads N] [PATH]\n",
                    argv[0]);
            return 2;
        }
    }
    initial = quick ? 3000 : 8000;
    per_thread = quick ? 400 : 1500;

    if (user_path) {
        if (stat(user_path, &sb) == 0) {
            fprintf(stderr, "recommend: %s exists; give a new path\n",
                    user_path);
            return 2;
        }
        snprintf(path, sizeof path, "%s", user_path);
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/recommend-XXXXXX",
                 tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(dir)) {
            perror("recommend: mkdtemp");
            return 1;
        }
        snprintf(path, sizeof path, "%s/products.vx", dir);
    }

    /* The catalog: room for the initial products and everything the
    ** writer may add during the run. */
    memset(&sh, 0, sizeof sh);
    atomic_init(&sh.nextid, 0);
    atomic_init(&sh.changes, 0);
    atomic_init(&sh.done, 0);
    sh.cap = initial + 4 * (size_t)per_thread * nthreads * FORMS;
    sh.words = (sh.cap + 63) / 64;
    sh.category = calloc(sh.cap, 1);
    sh.price = calloc(sh.cap, sizeof *sh.price);
    sh.state = calloc(sh.cap, sizeof *sh.state);
    sh.in_stock = calloc(sh.words * CATEGORIES, sizeof *sh.in_stock);
    sh.centroid = malloc(sizeof *sh.centroid * CATEGORIES * DIM);
    vecs = malloc(sizeof *vecs * initial * DIM);
    keys = malloc(sizeof *keys * initial);
    if (!sh.category || !sh.price || !sh.state || !sh.in_stock ||
        !sh.centroid || !vecs || !keys) {
        fprintf(stderr, "recommend: out of memory\n");
        return 1;
    }
    for (i = 0; i < sh.cap; i++) atomic_init(&sh.state[i], GONE);
    for (i = 0; i < sh.words * CATEGORIES; i++) atomic_init(&sh.in_stock[i], 0);
    for (i = 0; i < (size_t)CATEGORIES * DIM; i++)
        sh.centroid[i] = rnd_normal(&rng) * 0.2f;

    /* Cosine, as for most embedding models. Group commit (SYNC_NORMAL):
    ** a crash of the process loses nothing, a power cut at most the last
    ** 10 ms of catalog changes, which the feed would send again. */
    vecidx_params_init(&p, VECIDX_HNSW, VECIDX_COSINE, DIM);
    p.hnsw_m = 12;
    p.hnsw_ef_construction = 80;
    p.hnsw_ef_search = 48;
    p.capacity = (uint32_t)sh.cap;
    rc = vecidx_open(path, &p, VECIDX_CREATE | VECIDX_SYNC_NORMAL, &sh.ix);
    if (rc != VECIDX_OK) {
        fprintf(stderr, "recommend: creating %s: %s: %s\n", path,
                vecidx_strerror(rc), vecidx_errmsg(NULL));
        return 1;
    }

    /* The opening catalog, loaded in one batch and checkpointed into the
    ** main file, so that later opens need not replay it from the log. */
    t0 = now_seconds();
    for (i = 0; i < initial; i++) {
        unsigned cat = (unsigned)(rnd_next(&rng) % CATEGORIES);
        sh.category[i] = (uint8_t)cat;
        sh.price[i] = (float)(PRICE_MIN +
                              rnd_unit(&rng) * (PRICE_MAX - PRICE_MIN));
        make_embedding(&sh, cat, &rng, vecs + i * DIM);
        keys[i] = i;
    }
    rc = vecidx_add_batch(sh.ix, initial, keys, vecs);
    if (rc == VECIDX_OK) rc = vecidx_checkpoint(sh.ix);
    if (rc != VECIDX_OK) return report(&sh, rc, "loading the catalog");
    for (i = 0; i < initial; i++) {
        int in_stock = rnd_unit(&rng) < 0.85;
        atomic_store(&sh.state[i], in_stock ? IN_STOCK : SOLD_OUT);
        set_in_stock(&sh, i, in_stock);
    }
    atomic_store(&sh.nextid, initial);
    load_s = now_seconds() - t0;
    free(vecs);
    free(keys);
    printf("catalog: %zu products (%d-d embeddings, %d categories) loaded "
           "in %.2f s into %s\n",
           initial, DIM, CATEGORIES, load_s, path);

    /* The same searches twice: in a quiet shop, then while the writer
    ** changes it. What the writer adds to the tail is the difference; the
    ** spread of the quiet round is the queries' own (budgets and
    ** categories admit from 0.5 to 6 % of the products). */
    failed |= serve(&sh, nthreads, per_thread, 0, &bad, &missed);
    failed |= serve(&sh, nthreads, per_thread, 1, &bad, &missed);

    /* Close (which syncs the log), then check what a restart would see. */
    vecidx_close(sh.ix);
    failed |= verify_file(&sh, path) != 0;
    failed |= bad != 0 || missed != 0;

    if (dir[0]) {
        snprintf(path + strlen(path), sizeof path - strlen(path), "-wal");
        remove(path);
        path[strlen(path) - 4] = '\0';
        remove(path);
        rmdir(dir);
    }
    free(sh.category);
    free(sh.price);
    free(sh.state);
    free(sh.in_stock);
    free(sh.centroid);
    printf("%s\n", failed ? "FAILED" : "all checks passed");
    return failed;
}
