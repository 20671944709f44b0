/* Core tests: kernels against a double-precision reference, the flat index
** against brute force, bad input, all-or-nothing batches, allocation
** failure, HNSW recall and churn, filters, concurrency, files.
**
** Includes vecidx.c to reach the kernel tables; everything else goes
** through the public API. `core_test WORD...` runs the tests whose name
** contains a WORD, `core_test -WORD...` those whose name contains none
** (both mixed: a WORD and no -WORD), as tests/vecidx_test does. Ends with
** "N passed, N failed". */
#define _DEFAULT_SOURCE
#include "../../vecidx.c"

#include <stdio.h>

/* ---- framework ----------------------------------------------------------- */

static int t_failed; /* checks failed in the current test */

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            printf("  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            t_failed++;                                                       \
        }                                                                     \
    } while (0)

#define CHECK_RC(call, want)                                              \
    do {                                                                  \
        int rc_ = (call);                                                 \
        if (rc_ != (want)) {                                              \
            printf("  %s:%d: %s returned %d (%s), wanted %d\n", __FILE__, \
                   __LINE__, #call, rc_, vecidx_errmsg(NULL), want);      \
            t_failed++;                                                   \
        }                                                                 \
    } while (0)

static uint64_t t_rng = 1;

static uint64_t t_rand(void)
{
    uint64_t z = (t_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float t_unit(void)
{
    return (float)((t_rand() >> 11) * 0x1.0p-53);
}

/* Clustered data, like real embeddings: 40 centres plus noise. */
static void t_clustered(float *v, size_t n, uint32_t dim)
{
    size_t i;
    uint32_t j;
    for (i = 0; i < n; i++) {
        uint64_t c = t_rand() % 40;
        for (j = 0; j < dim; j++)
            v[i * dim + j] = (float)sin((double)(c * 7 + j)) +
                             0.25f * (t_unit() - 0.5f);
    }
}

static vecidx *t_index(int kind, int metric, uint32_t dim)
{
    vecidx_params p;
    vecidx *ix = NULL;
    vecidx_params_init(&p, kind, metric, dim);
    p.hnsw_ef_construction = 64;
    p.threads = 1;
    if (vecidx_create(&p, &ix) != VECIDX_OK) return NULL;
    return ix;
}

/* Distance under a metric, in double precision. */
static double t_ref(int metric, const float *a, const float *b, uint32_t d)
{
    double s = 0, na = 0, nb = 0;
    uint32_t i;
    for (i = 0; i < d; i++) {
        if (metric == VECIDX_L2)
            s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        else
            s += (double)a[i] * b[i];
        na += (double)a[i] * a[i];
        nb += (double)b[i] * b[i];
    }
    if (metric == VECIDX_IP) return -s;
    if (metric == VECIDX_COSINE) return 1 - s / (sqrt(na) * sqrt(nb));
    return s;
}

/* recall@k of ix against the exact flat index ex over nq queries. */
static double t_recall(vecidx *ix, vecidx *ex, const float *q, size_t nq,
                       uint32_t dim, size_t k, uint32_t ef)
{
    vecidx_search_opts o;
    uint64_t a[64], b[64];
    size_t fa, fb, i, x, y, hit = 0, total = 0;
    memset(&o, 0, sizeof o);
    o.ef = ef;
    for (i = 0; i < nq; i++) {
        vecidx_search(ix, q + i * dim, k, &o, a, NULL, &fa);
        vecidx_search(ex, q + i * dim, k, NULL, b, NULL, &fb);
        for (x = 0; x < fb; x++)
            for (y = 0; y < fa; y++) hit += a[y] == b[x];
        total += fb;
    }
    return total ? (double)hit / (double)total : 1.0;
}

/* ---- kernels ------------------------------------------------------------- */

static void test_kernels(void)
{
    static const uint32_t dims[] = {1, 3, 17, 100, 128, 384, 768, 1536};
    float a[1537], b[1537], out[4];
    size_t nk, k, di, i;
    const vx_kernels *const *ks = vx_kernel_list(&nk);
    CHECK(nk >= 1 && strcmp(ks[0]->name, "scalar") == 0);
    for (i = 0; i < 1537; i++) {
        a[i] = (t_unit() - 0.5f) * (i % 5 ? 1.0f : 100.0f);
        b[i] = (t_unit() - 0.5f) * (i % 7 ? 1.0f : 0.01f);
    }
    for (k = 0; k < nk; k++)
        for (di = 0; di < sizeof dims / sizeof *dims; di++) {
            uint32_t d = dims[di];
            double l2 = 0, dot = 0, mag_l2 = 0, mag_dot = 0;
            /* a + 1: an unaligned start for the vector loads */
            const float *pa = a + 1;
            for (i = 0; i < d; i++) {
                double t = (double)pa[i] - b[i];
                l2 += t * t;
                dot += (double)pa[i] * b[i];
                mag_dot += fabs((double)pa[i] * b[i]);
            }
            mag_l2 = l2;
            /* float accumulation of d terms: error below d * eps * sum|x| */
            CHECK(fabs(ks[k]->l2(pa, b, d) - l2) <= 1e-6 * d * mag_l2 + 1e-30);
            CHECK(fabs(ks[k]->dot(pa, b, d) - dot) <= 1e-6 * d * mag_dot);
            ks[k]->l2_many(pa, b, 1, d, out);
            CHECK(out[0] == ks[k]->l2(pa, b, d));
            ks[k]->dot_many(pa, b, 1, d, out);
            CHECK(out[0] == ks[k]->dot(pa, b, d));
        }
    CHECK(strcmp(vecidx_simd(), ks[nk - 1]->name) == 0);
}

/* ---- flat --------------------------------------------------------------- */

static int t_admit_mod7(uint64_t key, void *ctx)
{
    (*(int *)ctx)++;
    return key % 7 == 0;
}

/* Exact top-k of the flat index against double-precision brute force. */
static void check_flat_exact(int metric)
{
    enum {
        N = 1500,
        DIM = 24,
        NQ = 20,
        K = 10
    };
    static float v[N * DIM], q[NQ * DIM];
    uint64_t keys[K + 5];
    float dists[K + 5];
    size_t found, i, j;
    vecidx *ix = t_index(VECIDX_FLAT, metric, DIM);
    int calls = 0;
    vecidx_search_opts o;
    t_clustered(v, N, DIM);
    t_clustered(q, NQ, DIM);
    for (i = 0; i < N; i++) CHECK_RC(vecidx_add(ix, i * 3, v + i * DIM), 0);
    for (i = 0; i < NQ; i++) {
        double best[K];
        size_t nb = 0;
        CHECK_RC(vecidx_search(ix, q + i * DIM, K, NULL, keys, dists, &found),
                 0);
        CHECK(found == K);
        for (j = 0; j < N; j++) { /* the K smallest reference distances */
            double d = t_ref(metric, q + i * DIM, v + j * DIM, DIM);
            size_t p = nb < K ? nb++ : K;
            if (p == K && d >= best[K - 1]) continue;
            if (p == K) p = K - 1;
            while (p > 0 && best[p - 1] > d) {
                best[p] = best[p - 1];
                p--;
            }
            best[p] = d;
        }
        for (j = 0; j < K; j++) {
            CHECK(fabs(dists[j] - best[j]) <= 1e-4 * (1 + fabs(best[j])));
            CHECK(fabs(t_ref(metric, q + i * DIM, v + keys[j] / 3 * DIM, DIM) -
                       dists[j]) <= 1e-4 * (1 + fabs(dists[j])));
            if (j) CHECK(dists[j - 1] <= dists[j]);
        }
    }
    /* a filter: only admitted keys, still exact among them */
    memset(&o, 0, sizeof o);
    o.filter = t_admit_mod7;
    o.filter_ctx = &calls;
    CHECK_RC(vecidx_search(ix, q, K, &o, keys, dists, &found), 0);
    CHECK(found == K && calls > 0);
    for (j = 0; j < found; j++) CHECK(keys[j] % 7 == 0);
    /* k above the count returns everything, padded */
    {
        static uint64_t all[N + 5];
        CHECK_RC(vecidx_search(ix, q, N + 5, NULL, all, NULL, &found), 0);
        CHECK(found == N && all[N] == UINT64_MAX);
    }
    vecidx_close(ix);
    ix = t_index(VECIDX_FLAT, metric, DIM);
    CHECK_RC(vecidx_add(ix, 1, v), 0);
    CHECK_RC(vecidx_search(ix, q, 3, NULL, keys, dists, &found), 0);
    CHECK(found == 1 && keys[0] == 1 && keys[1] == UINT64_MAX &&
          isinf(dists[2]));
    vecidx_close(ix);
}

static void test_flat_l2(void)
{
    check_flat_exact(VECIDX_L2);
}
static void test_flat_ip(void)
{
    check_flat_exact(VECIDX_IP);
}
static void test_flat_cosine(void)
{
    check_flat_exact(VECIDX_COSINE);
}

static void test_flat_remove_reuse(void)
{
    enum {
        N = 2000,
        DIM = 8
    };
    static float v[N * DIM];
    vecidx *ix = t_index(VECIDX_FLAT, VECIDX_L2, DIM);
    vecidx_stats_t st1 = {0}, st2 = {0};
    uint64_t keys[N];
    size_t found, i;
    t_clustered(v, N, DIM);
    for (i = 0; i < N; i++) CHECK_RC(vecidx_add(ix, i, v + i * DIM), 0);
    for (i = 0; i < N; i += 3) CHECK_RC(vecidx_remove(ix, i), 0);
    CHECK_RC(vecidx_remove(ix, 0), VECIDX_ENOTFOUND);
    CHECK(vecidx_count(ix) == N - (N + 2) / 3);
    CHECK_RC(vecidx_search(ix, v, N, NULL, keys, NULL, &found), 0);
    CHECK(found == vecidx_count(ix));
    for (i = 0; i < found; i++) CHECK(keys[i] % 3 != 0);
    CHECK_RC(vecidx_check(ix), 0);
    vecidx_stats(ix, &st1);
    for (i = 0; i < N; i += 3) CHECK_RC(vecidx_add(ix, N + i, v + i * DIM), 0);
    vecidx_stats(ix, &st2);
    CHECK(st2.slots == st1.slots); /* removed slots were reused */
    CHECK(vecidx_contains(ix, 3) == 0 && vecidx_contains(ix, N + 3) == 1);
    CHECK_RC(vecidx_check(ix), 0);
    vecidx_close(ix);
}

static void test_flat_upsert(void)
{
    float a[4] = {1, 2, 3, 4}, b[4] = {-1, 0, 5, 2}, g[4];
    vecidx *ix = t_index(VECIDX_FLAT, VECIDX_L2, 4);
    CHECK_RC(vecidx_upsert(ix, 9, a), 0);
    CHECK_RC(vecidx_add(ix, 9, b), VECIDX_EEXIST);
    CHECK_RC(vecidx_get(ix, 9, g), 0);
    CHECK(memcmp(g, a, sizeof a) == 0);
    CHECK_RC(vecidx_upsert(ix, 9, b), 0);
    CHECK_RC(vecidx_get(ix, 9, g), 0);
    CHECK(memcmp(g, b, sizeof b) == 0 && vecidx_count(ix) == 1);
    vecidx_close(ix);
}

static void test_batch_all_or_nothing(void)
{
    enum {
        N = 300,
        DIM = 8
    };
    static float v[N * DIM];
    uint64_t keys[N];
    size_t i;
    int kind;
    t_clustered(v, N, DIM);
    for (kind = VECIDX_FLAT; kind <= VECIDX_HNSW; kind++) {
        vecidx *ix = t_index(kind, VECIDX_L2, DIM);
        for (i = 0; i < N; i++) keys[i] = 1000 + i;
        CHECK_RC(vecidx_add(ix, 5, v), 0);
        v[(N - 1) * DIM + 3] = NAN; /* last row bad */
        CHECK_RC(vecidx_add_batch(ix, N, keys, v), VECIDX_EINVAL);
        CHECK(strstr(vecidx_errmsg(ix), "row 299") != NULL);
        v[(N - 1) * DIM + 3] = 0.5f;
        keys[N - 1] = keys[0]; /* a key twice in the batch */
        CHECK_RC(vecidx_add_batch(ix, N, keys, v), VECIDX_EINVAL);
        keys[N - 1] = 5; /* a key already present */
        CHECK_RC(vecidx_add_batch(ix, N, keys, v), VECIDX_EEXIST);
        CHECK(vecidx_count(ix) == 1 && vecidx_contains(ix, 1000) == 0);
        keys[N - 1] = 1000 + N - 1;
        CHECK_RC(vecidx_add_batch(ix, N, keys, v), 0);
        CHECK(vecidx_count(ix) == N + 1);
        CHECK_RC(vecidx_check(ix), 0);
        vecidx_close(ix);
    }
}

static void test_search_batch_equals_single(void)
{
    enum {
        N = 1000,
        DIM = 12,
        NQ = 21,
        K = 7
    };
    static float v[N * DIM], q[NQ * DIM];
    uint64_t kb[NQ * K], ks[K];
    float db[NQ * K], ds[K];
    size_t fb[NQ], fs = 0, i;
    unsigned th;
    int kind;
    t_clustered(v, N, DIM);
    t_clustered(q, NQ, DIM);
    for (kind = VECIDX_FLAT; kind <= VECIDX_HNSW; kind++) {
        vecidx *ix = t_index(kind, VECIDX_COSINE, DIM);
        for (i = 0; i < N; i++) vecidx_add(ix, i, v + i * DIM);
        for (th = 1; th <= 4; th *= 2) {
            vecidx_search_opts o;
            memset(&o, 0, sizeof o);
            o.threads = th;
            CHECK_RC(vecidx_search_batch(ix, NQ, q, K, &o, kb, db, fb), 0);
            for (i = 0; i < NQ; i++) {
                vecidx_search(ix, q + i * DIM, K, NULL, ks, ds, &fs);
                CHECK(fb[i] == fs && memcmp(kb + i * K, ks, sizeof ks) == 0 &&
                      memcmp(db + i * K, ds, sizeof ds) == 0);
            }
        }
        vecidx_close(ix);
    }
}

/* ---- bad input ----------------------------------------------------------- */

static void test_bad_input(void)
{
    vecidx_params p;
    vecidx *ix = NULL;
    float v[4] = {1, 2, 3, 4}, z[4] = {0, 0, 0, 0};
    uint64_t keys[4];
    float d[4];
    size_t found;
    CHECK_RC(vecidx_params_init(NULL, VECIDX_FLAT, VECIDX_L2, 4),
             VECIDX_EINVAL);
    CHECK_RC(vecidx_params_init(&p, VECIDX_FLAT, VECIDX_L2, 0), VECIDX_EDIM);
    CHECK_RC(vecidx_create(&p, &ix), VECIDX_EDIM);
    CHECK(ix == NULL && strstr(vecidx_errmsg(NULL), "dimension") != NULL);
    vecidx_params_init(&p, VECIDX_FLAT, VECIDX_L2, VECIDX_MAX_DIM + 1);
    CHECK_RC(vecidx_create(&p, &ix), VECIDX_EDIM);
    vecidx_params_init(&p, 99, VECIDX_L2, 4);
    CHECK_RC(vecidx_create(&p, &ix), VECIDX_EINVAL);
    vecidx_params_init(&p, VECIDX_FLAT, 0, 4);
    CHECK_RC(vecidx_create(&p, &ix), VECIDX_EINVAL);
    vecidx_params_init(&p, VECIDX_HNSW, VECIDX_L2, 4);
    p.hnsw_m = 1;
    CHECK_RC(vecidx_create(&p, &ix), VECIDX_EINVAL);
    CHECK(strstr(vecidx_errmsg(NULL), "hnsw_m") != NULL);
    vecidx_params_init(&p, VECIDX_FLAT, VECIDX_L2, 4);
    p.allocator.malloc_fn = NULL;
    p.allocator.free_fn = (void (*)(void *, void *))NULL;
    CHECK_RC(vecidx_create(NULL, &ix), VECIDX_EINVAL);
    CHECK_RC(vecidx_create(&p, NULL), VECIDX_EINVAL);
    vecidx_close(NULL);

    vecidx_params_init(&p, VECIDX_FLAT, VECIDX_COSINE, 4);
    CHECK_RC(vecidx_create(&p, &ix), 0);
    CHECK_RC(vecidx_add(ix, 1, v), 0);
    CHECK_RC(vecidx_add(NULL, 2, v), VECIDX_EINVAL);
    CHECK_RC(vecidx_add(ix, 2, NULL), VECIDX_EINVAL);
    v[2] = NAN;
    CHECK_RC(vecidx_add(ix, 2, v), VECIDX_EINVAL);
    CHECK(strstr(vecidx_errmsg(ix), "NaN at component 2") != NULL);
    v[2] = INFINITY;
    CHECK_RC(vecidx_upsert(ix, 1, v), VECIDX_EINVAL);
    v[2] = 3;
    CHECK_RC(vecidx_add(ix, 2, z), VECIDX_EINVAL); /* zero under cosine */
    CHECK_RC(vecidx_search(ix, z, 1, NULL, keys, d, &found), VECIDX_EINVAL);
    CHECK_RC(vecidx_search(ix, v, 0, NULL, keys, d, &found), VECIDX_EINVAL);
    CHECK_RC(vecidx_search(ix, v, 1, NULL, NULL, d, &found), VECIDX_EINVAL);
    CHECK_RC(vecidx_search(ix, v, 1, NULL, keys, d, NULL), VECIDX_EINVAL);
    CHECK_RC(vecidx_get(ix, 77, d), VECIDX_ENOTFOUND);
    CHECK(strstr(vecidx_errmsg(ix), "77") != NULL);
    CHECK_RC(vecidx_get(ix, 1, d), 0); /* unchanged by the failures */
    CHECK(d[2] == 3 && vecidx_count(ix) == 1);
    CHECK_RC(vecidx_search(ix, v, 4, NULL, keys, d, &found), 0);
    CHECK(found == 1 && keys[0] == 1);
    CHECK(vecidx_contains(NULL, 1) == VECIDX_EINVAL && vecidx_count(NULL) == 0);
    vecidx_close(ix);
    CHECK(strcmp(vecidx_strerror(VECIDX_ENOTFOUND), "key not found") == 0);
    CHECK(strcmp(vecidx_strerror(12345), "unknown error") == 0);
    CHECK(strcmp(vecidx_version(), VECIDX_VERSION_STRING) == 0 &&
          vecidx_version_number() == VECIDX_VERSION_NUMBER);
}

/* ---- allocation failure -------------------------------------------------- */

typedef struct t_alloc {
    long left; /* allocations before the failures start; -1: never */
    long live;
} t_alloc;

static void *t_malloc(void *ctx, size_t n)
{
    t_alloc *a = ctx;
    void *p;
    if (a->left == 0) return NULL;
    if (a->left > 0) a->left--;
    if ((p = malloc(n))) a->live++;
    return p;
}

static void *t_realloc(void *ctx, void *p, size_t old, size_t n)
{
    t_alloc *a = ctx;
    (void)old;
    if (a->left == 0) return NULL;
    if (a->left > 0) a->left--;
    return realloc(p, n);
}

static void t_free(void *ctx, void *p)
{
    ((t_alloc *)ctx)->live--;
    free(p);
}

/* Fail the 1st, 2nd, 3rd... allocation: each failing call must return
** VECIDX_ENOMEM, leave a consistent index and leak nothing. */
static void test_alloc_failure(void)
{
    enum {
        N = 300,
        DIM = 6
    };
    static float v[N * DIM];
    uint64_t keys[N], out[5];
    long nth;
    int kind, done;
    t_clustered(v, N, DIM);
    for (kind = VECIDX_FLAT; kind <= VECIDX_HNSW; kind++)
        for (nth = 0, done = 0; !done && nth < 400; nth++) {
            t_alloc a = {nth, 0};
            vecidx_params p;
            vecidx *ix;
            size_t i, found;
            int rc;
            vecidx_params_init(&p, kind, VECIDX_L2, DIM);
            p.threads = 1;
            p.hnsw_ef_construction = 16;
            p.allocator.malloc_fn = t_malloc;
            p.allocator.realloc_fn = t_realloc;
            p.allocator.free_fn = t_free;
            p.allocator.ctx = &a;
            if ((rc = vecidx_create(&p, &ix)) != VECIDX_OK) {
                CHECK(rc == VECIDX_ENOMEM && a.live == 0);
                continue;
            }
            for (i = 0; i < N; i++) keys[i] = i;
            rc = vecidx_add_batch(ix, N, keys, v);
            CHECK(rc == VECIDX_OK || rc == VECIDX_ENOMEM);
            CHECK(vecidx_count(ix) == (rc ? 0 : N));
            if (rc == VECIDX_OK) {
                for (i = 0; i < 120 && rc == VECIDX_OK; i++)
                    rc = vecidx_remove(ix, i);
                CHECK(rc == VECIDX_OK || rc == VECIDX_ENOMEM);
                if (rc == VECIDX_OK) rc = vecidx_upsert(ix, 500, v);
                CHECK(rc == VECIDX_OK || rc == VECIDX_ENOMEM);
                if (rc == VECIDX_OK)
                    rc = vecidx_search(ix, v, 5, NULL, out, NULL, &found);
                CHECK(rc == VECIDX_OK || rc == VECIDX_ENOMEM);
                done = rc == VECIDX_OK;
            }
            a.left = -1; /* the check itself may allocate */
            CHECK_RC(vecidx_check(ix), 0);
            vecidx_close(ix);
            CHECK(a.live == 0);
        }
}

/* ---- HNSW ---------------------------------------------------------------- */

static void test_hnsw_recall(void)
{
    enum {
        N = 4000,
        DIM = 16,
        NQ = 100
    };
    static float v[N * DIM], q[NQ * DIM];
    int metric;
    size_t i;
    t_clustered(v, N, DIM);
    t_clustered(q, NQ, DIM);
    for (metric = VECIDX_L2; metric <= VECIDX_COSINE; metric++) {
        vecidx *ix = t_index(VECIDX_HNSW, metric, DIM);
        vecidx *ex = t_index(VECIDX_FLAT, metric, DIM);
        double r10, r40, rall;
        for (i = 0; i < N; i++) {
            vecidx_add(ix, i, v + i * DIM);
            vecidx_add(ex, i, v + i * DIM);
        }
        r10 = t_recall(ix, ex, q, NQ, DIM, 10, 10);
        r40 = t_recall(ix, ex, q, NQ, DIM, 10, 40);
        rall = t_recall(ix, ex, q, NQ, DIM, 10, 0);
        CHECK(rall >= 0.95 && r40 >= r10 - 0.01);
        CHECK(t_recall(ix, ex, q, NQ, DIM, 10, 400) >= 0.99);
        CHECK_RC(vecidx_check(ix), 0);
        vecidx_close(ix);
        vecidx_close(ex);
    }
}

static int t_admit_rare(uint64_t key, void *ctx)
{
    (void)ctx;
    return key % 500 == 0;
}

static void test_hnsw_filter(void)
{
    enum {
        N = 3000,
        DIM = 8
    };
    static float v[N * DIM];
    vecidx *ix = t_index(VECIDX_HNSW, VECIDX_L2, DIM);
    vecidx *ex = t_index(VECIDX_FLAT, VECIDX_L2, DIM);
    vecidx_search_opts o;
    uint64_t a[10], b[10];
    size_t fa, fb, i;
    int calls = 0;
    t_clustered(v, N, DIM);
    for (i = 0; i < N; i++) {
        vecidx_add(ix, i, v + i * DIM);
        vecidx_add(ex, i, v + i * DIM);
    }
    memset(&o, 0, sizeof o);
    o.filter = t_admit_rare; /* 6 keys admitted: fewer than k */
    CHECK_RC(vecidx_search(ix, v, 10, &o, a, NULL, &fa), 0);
    CHECK_RC(vecidx_search(ex, v, 10, &o, b, NULL, &fb), 0);
    CHECK(fa == 6 && fb == 6 && memcmp(a, b, 6 * sizeof *a) == 0);
    o.filter = t_admit_mod7;
    o.filter_ctx = &calls;
    CHECK_RC(vecidx_search(ix, v + 5 * DIM, 10, &o, a, NULL, &fa), 0);
    CHECK(fa == 10);
    for (i = 0; i < fa; i++) CHECK(a[i] % 7 == 0);
    vecidx_close(ix);
    vecidx_close(ex);
}

/* Issue requirement: 20k vectors, rounds of deleting half and inserting
** 10k; recall stays within 0.02 of a fresh build, memory stays flat. */
static void test_hnsw_churn(void)
{
    enum {
        N = 20000,
        DIM = 16,
        NQ = 100,
        ROUNDS = 4
    };
    static float pool[(N + ROUNDS * 10000) * DIM], q[NQ * DIM];
    static uint64_t live[N];
    vecidx *ix = t_index(VECIDX_HNSW, VECIDX_L2, DIM), *ex, *fresh;
    vecidx_stats_t st1 = {0}, st = {0};
    uint64_t next = 0;
    size_t i, r, nl = 0;
    double rc, rf;
    t_clustered(pool, N + ROUNDS * 10000, DIM);
    t_clustered(q, NQ, DIM);
    for (i = 0; i < N; i++, next++) live[nl++] = next;
    CHECK_RC(vecidx_add_batch(ix, N, live, pool), 0);
    for (r = 0; r < ROUNDS; r++) {
        for (i = nl - 1; i > 0; i--) { /* shuffle, then drop half */
            size_t j = t_rand() % (i + 1);
            uint64_t t = live[i];
            live[i] = live[j];
            live[j] = t;
        }
        for (i = 0; i < N / 2; i++) CHECK_RC(vecidx_remove(ix, live[--nl]), 0);
        for (i = 0; i < 10000; i++, next++) {
            CHECK_RC(vecidx_add(ix, next, pool + next * DIM), 0);
            live[nl++] = next;
        }
        CHECK_RC(vecidx_check(ix), 0);
        vecidx_stats(ix, r == 0 ? &st1 : &st);
    }
    CHECK(st.memory_bytes <= st1.memory_bytes * 11 / 10);
    CHECK(st.slots <= st1.slots * 11 / 10);
    ex = t_index(VECIDX_FLAT, VECIDX_L2, DIM);
    fresh = t_index(VECIDX_HNSW, VECIDX_L2, DIM);
    for (i = 0; i < nl; i++) {
        vecidx_add(ex, live[i], pool + live[i] * DIM);
        vecidx_add(fresh, live[i], pool + live[i] * DIM);
    }
    rc = t_recall(ix, ex, q, NQ, DIM, 10, 32);
    rf = t_recall(fresh, ex, q, NQ, DIM, 10, 32);
    printf("  churn: recall %.4f after %d rounds, fresh build %.4f\n", rc,
           ROUNDS, rf);
    CHECK(rc >= rf - 0.02);
    vecidx_close(ix);
    vecidx_close(ex);
    vecidx_close(fresh);
}

static void test_hnsw_determinism(void)
{
    enum {
        N = 1500,
        DIM = 8
    };
    static float v[N * DIM];
    vecidx *a = t_index(VECIDX_HNSW, VECIDX_IP, DIM);
    vecidx *b = t_index(VECIDX_HNSW, VECIDX_IP, DIM);
    uint64_t ka[10], kb[10];
    float da[10], db[10];
    size_t fa = 0, fb = 0, i;
    t_clustered(v, N, DIM);
    for (i = 0; i < N; i++) {
        vecidx_add(a, i, v + i * DIM);
        vecidx_add(b, i, v + i * DIM);
        if (i % 5 == 4) {
            vecidx_remove(a, i - 2);
            vecidx_remove(b, i - 2);
        }
    }
    for (i = 0; i < 50; i++) {
        vecidx_search(a, v + i * DIM, 10, NULL, ka, da, &fa);
        vecidx_search(b, v + i * DIM, 10, NULL, kb, db, &fb);
        CHECK(fa == fb && memcmp(ka, kb, sizeof ka) == 0 &&
              memcmp(da, db, sizeof da) == 0);
    }
    vecidx_close(a);
    vecidx_close(b);
}

/* ---- concurrency (run under TSan by `make tsan`) ------------------------- */

typedef struct t_conc {
    vecidx *ix;
    const float *pool;
    atomic_int stop;
    atomic_int bad;
} t_conc;

enum {
    TC_DIM = 8,
    TC_N = 6000
};

static void *t_searcher(void *arg)
{
    t_conc *c = arg;
    uint64_t keys[10];
    float d[10];
    size_t found = 0, i, n = 0;
    while (!atomic_load(&c->stop) || n < 50) {
        const float *q = c->pool + (n % TC_N) * TC_DIM;
        if (vecidx_search(c->ix, q, 10, NULL, keys, d, &found) != 0)
            atomic_fetch_add(&c->bad, 1);
        for (i = 0; i < found; i++)
            if (keys[i] >= 2 * TC_N || (i && d[i] < d[i - 1]))
                atomic_fetch_add(&c->bad, 1);
        n++;
    }
    return NULL;
}

static void test_concurrency_hnsw(void)
{
    static float pool[2 * TC_N * TC_DIM];
    static uint64_t keys[TC_N];
    pthread_t th[3];
    t_conc c;
    size_t i;
    int k;
    vecidx_params p;
    vecidx_params_init(&p, VECIDX_HNSW, VECIDX_L2, TC_DIM);
    p.hnsw_ef_construction = 32;
    p.threads = 2;
    t_clustered(pool, 2 * TC_N, TC_DIM);
    c.pool = pool;
    atomic_init(&c.stop, 0);
    atomic_init(&c.bad, 0);
    CHECK_RC(vecidx_create(&p, &c.ix), 0);
    for (i = 0; i < 500; i++) vecidx_add(c.ix, i, pool + i * TC_DIM);
    for (k = 0; k < 3; k++) pthread_create(&th[k], NULL, t_searcher, &c);
    /* a batch big enough to be linked in sub-batches, searches between */
    for (i = 0; i < TC_N - 500; i++) keys[i] = 500 + i;
    CHECK_RC(vecidx_add_batch(c.ix, TC_N - 500, keys, pool + 500 * TC_DIM), 0);
    for (i = 0; i < 2000; i++) {
        CHECK_RC(vecidx_remove(c.ix, i), 0);
        CHECK_RC(vecidx_upsert(c.ix, TC_N + i, pool + (TC_N + i) * TC_DIM), 0);
    }
    atomic_store(&c.stop, 1);
    for (k = 0; k < 3; k++) pthread_join(th[k], NULL);
    CHECK(atomic_load(&c.bad) == 0);
    CHECK(vecidx_count(c.ix) == TC_N);
    CHECK(vecidx_contains(c.ix, 1999) == 0 && vecidx_contains(c.ix, 2000));
    CHECK_RC(vecidx_check(c.ix), 0);
    vecidx_close(c.ix);
}

/* ---- files ----------------------------------------------------------------
 */

static void test_file_roundtrip(void)
{
    enum {
        N = 2000,
        DIM = 12
    };
    static float v[N * DIM];
    char path[48];
    uint64_t ka[10], kb[10];
    float da[10], db[10];
    size_t fa = 0, fb = 0, i;
    int kind;
    /* per process: CI runs the qemu builds side by side */
    snprintf(path, sizeof path, "/tmp/vecidx-core-test-%ld.vx", (long)getpid());
    t_clustered(v, N, DIM);
    for (kind = VECIDX_FLAT; kind <= VECIDX_HNSW; kind++) {
        vecidx *ix = t_index(kind, VECIDX_COSINE, DIM), *ro, *rw;
        vecidx_params want;
        for (i = 0; i < N; i++) vecidx_add(ix, i, v + i * DIM);
        for (i = 0; i < N; i += 4) vecidx_remove(ix, i);
        CHECK_RC(vecidx_save(ix, path), 0);
        CHECK_RC(vecidx_open(path, NULL, VECIDX_RDONLY, &ro), 0);
        CHECK(vecidx_count(ro) == vecidx_count(ix));
        for (i = 0; i < 30; i++) {
            vecidx_search(ix, v + i * DIM, 10, NULL, ka, da, &fa);
            vecidx_search(ro, v + i * DIM, 10, NULL, kb, db, &fb);
            CHECK(fa == fb && memcmp(ka, kb, sizeof ka) == 0 &&
                  memcmp(da, db, sizeof da) == 0);
        }
        CHECK_RC(vecidx_add(ro, 99999, v), VECIDX_ESTATE);
        CHECK_RC(vecidx_check(ro), 0);
        vecidx_close(ro);
        vecidx_params_init(&want, kind, VECIDX_COSINE, DIM + 1);
        CHECK_RC(vecidx_open(path, &want, VECIDX_RDONLY, &ro), VECIDX_EDIM);
        /* writable: changes go to the log and survive a reopen */
        CHECK_RC(vecidx_open(path, NULL, VECIDX_SYNC_NORMAL, &rw), 0);
        CHECK_RC(vecidx_upsert(rw, 0, v + 5 * DIM), 0);
        CHECK_RC(vecidx_remove(rw, 1), 0);
        vecidx_close(rw);
        CHECK_RC(vecidx_open(path, NULL, VECIDX_RDONLY, &ro), 0);
        CHECK(vecidx_contains(ro, 0) == 1 && vecidx_contains(ro, 1) == 0);
        CHECK_RC(vecidx_check(ro), 0);
        vecidx_close(ro);
        vecidx_close(ix);
    }
    unlink(path);
    {
        char wal[64];
        snprintf(wal, sizeof wal, "%.48s-wal", path);
        unlink(wal);
    }
}

/* Damage at every part of a file: refused at open or by vecidx_check,
** never a crash (this test runs under ASan in `make sanitize`). Float32
** records, and int8 codes with kept vectors (format version 4). */
static void t_file_corruption(uint32_t storage)
{
    char path[48];
    vecidx_params p;
    vecidx *ix = NULL, *ro;
    unsigned char *buf;
    long size, off;
    FILE *f;
    size_t i, found, refused = 0, caught = 0, trials = 0;
    float v[4];
    uint64_t keys[5];
    snprintf(path, sizeof path, "/tmp/vecidx-core-corrupt-%ld.vx",
             (long)getpid());
    vecidx_params_init(&p, VECIDX_HNSW, VECIDX_L2, 4);
    p.hnsw_ef_construction = 64;
    p.threads = 1;
    p.storage = storage;
    p.keep_vectors = storage != VECIDX_STORE_F32;
    CHECK_RC(vecidx_create(&p, &ix), VECIDX_OK);
    if (!ix) return;
    for (i = 0; i < 300; i++) {
        v[0] = (float)i;
        v[1] = (float)(i % 7);
        v[2] = 1;
        v[3] = (float)(i % 3);
        vecidx_add(ix, i, v);
    }
    CHECK_RC(vecidx_save(ix, path), 0);
    vecidx_close(ix);
    f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)size);
    CHECK(fread(buf, 1, (size_t)size, f) == (size_t)size);
    fclose(f);
    for (off = 0; off < size; off += off < 512 ? 1 : 61) {
        buf[off] ^= 0x10;
        /* rewritten in place, not truncated first: ext4 starts writing
        ** out a file closed after a truncation (auto_da_alloc), which
        ** made the thousands of trials take 10-30 s of disk waits */
        f = fopen(path, "r+b");
        fwrite(buf, 1, (size_t)size, f);
        fclose(f);
        buf[off] ^= 0x10;
        trials++;
        if (vecidx_open(path, NULL, VECIDX_RDONLY, &ro) != VECIDX_OK) {
            refused++;
            continue;
        }
        vecidx_search(ro, v, 5, NULL, keys, NULL, &found);
        caught += vecidx_check(ro) == VECIDX_ECORRUPT;
        vecidx_close(ro);
    }
    /* every flip inside a header or section is found; the remainder are
    ** in the zero padding between sections, which holds no data */
    CHECK(refused + caught >= trials * 9 / 10);
    for (off = 0; off < size; off += 977) { /* truncation */
        f = fopen(path, "wb");
        fwrite(buf, 1, (size_t)off, f);
        fclose(f);
        CHECK(vecidx_open(path, NULL, VECIDX_RDONLY, &ro) != VECIDX_OK);
    }
    free(buf);
    unlink(path);
}

static void test_file_corruption(void)
{
    t_file_corruption(VECIDX_STORE_F32);
    t_file_corruption(VECIDX_STORE_I8);
}

/* ---- runner ----------------------------------------------------------------
 */

typedef struct t_case {
    const char *name;
    void (*fn)(void);
} t_case;

static const t_case t_cases[] = {
    {"kernels", test_kernels},
    {"flat_l2", test_flat_l2},
    {"flat_ip", test_flat_ip},
    {"flat_cosine", test_flat_cosine},
    {"flat_remove_reuse", test_flat_remove_reuse},
    {"flat_upsert", test_flat_upsert},
    {"batch_all_or_nothing", test_batch_all_or_nothing},
    {"search_batch_equals_single", test_search_batch_equals_single},
    {"bad_input", test_bad_input},
    {"alloc_failure", test_alloc_failure},
    {"hnsw_recall", test_hnsw_recall},
    {"hnsw_filter", test_hnsw_filter},
    {"hnsw_churn", test_hnsw_churn},
    {"hnsw_determinism", test_hnsw_determinism},
    {"concurrency_hnsw", test_concurrency_hnsw},
    {"file_roundtrip", test_file_roundtrip},
    {"file_corruption", test_file_corruption},
};

/* Is the test named `name` chosen by the arguments? As in tests/main.c: a
** name must contain a WORD (if any is given) and no -WORD. */
static int t_selected(const char *name, int argc, char **argv)
{
    int i, any_include = 0, included = 0;
    for (i = 1; i < argc; i++) {
        if (argv[i][0] == '-' && argv[i][1]) {
            if (strstr(name, argv[i] + 1)) return 0;
        } else {
            any_include = 1;
            if (strstr(name, argv[i])) included = 1;
        }
    }
    return !any_include || included;
}

int main(int argc, char **argv)
{
    size_t i;
    int passed = 0, failed = 0;
    for (i = 0; i < sizeof t_cases / sizeof *t_cases; i++) {
        if (!t_selected(t_cases[i].name, argc, argv)) continue;
        t_failed = 0;
        t_rng = 1 + i;
        t_cases[i].fn();
        printf("%s %s\n", t_failed ? "FAIL" : "ok", t_cases[i].name);
        if (t_failed)
            failed++;
        else
            passed++;
    }
    if (passed + failed == 0) {
        /* a misspelt selection must not pass quietly */
        printf("no test is selected by the arguments\n");
        printf("0 passed, 0 failed\n");
        return 1;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
