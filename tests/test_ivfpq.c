/*
** test_ivfpq.c -- the IVF-PQ index kind through the public API.
**
** Ground truth is always an exact VECIDX_FLAT index (or the double
** precision model of util.c) over the same vectors. The data are
** clustered like embeddings: 40 centres in [-1, 1]^dim, each point a
** centre plus Gaussian-like noise of a per-centre scale, so coarse lists
** and product codes have structure to find; queries come from the same
** centres (and every fourth is a stored vector).
**
** Recall floors are stated in the tests, below the measured values by a
** margin that covers every kernel (scalar, AVX2, NEON) and seed-fixed
** training; all data and training are seeded, so the figures are
** reproducible on a given kernel.
*/
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vtest.h"

/* ---- data ---------------------------------------------------------------- */

typedef struct iv_data {
    uint32_t dim;
    size_t n, nq;
    uint64_t *keys;
    float *vecs;
    float *q;
} iv_data;

/* A bijection of 64-bit integers (splitmix64's finaliser): distinct rows
** get distinct, well-spread keys, including huge ones. */
static uint64_t iv_key(uint64_t i)
{
    uint64_t z = i + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Roughly normal, mean 0, variance 1 (sum of four uniforms). */
static float iv_gauss(vt_rng *r)
{
    double s = 0;
    int i;
    for (i = 0; i < 4; i++) s += vt_unit(r) - 0.5;
    return (float)(s * sqrt(3.0));
}

static void iv_point(vt_rng *r, const float *cent, const float *scale,
                     unsigned nc, uint32_t dim, float *out)
{
    size_t c = (size_t)vt_below(r, nc);
    uint32_t j;
    for (j = 0; j < dim; j++)
        out[j] = cent[c * dim + j] + scale[c] * iv_gauss(r);
}

/* n rows and nq queries around nc centres; keys iv_key(row + key0). */
static void iv_make(iv_data *d, uint64_t seed, size_t n, uint32_t dim,
                    unsigned nc, size_t nq, uint64_t key0)
{
    vt_rng r = {seed};
    float *cent = vt_xmalloc((size_t)nc * dim * sizeof *cent);
    float *scale = vt_xmalloc(nc * sizeof *scale);
    size_t i;
    unsigned c;
    d->dim = dim;
    d->n = n;
    d->nq = nq;
    d->keys = vt_xmalloc((n + 1) * sizeof *d->keys);
    d->vecs = vt_xmalloc((n + 1) * dim * sizeof *d->vecs);
    d->q = vt_xmalloc((nq + 1) * dim * sizeof *d->q);
    vt_fill_uniform(&r, cent, (size_t)nc * dim, -1.0f, 1.0f);
    for (c = 0; c < nc; c++) scale[c] = vt_uniform(&r, 0.2f, 0.45f);
    for (i = 0; i < n; i++) {
        d->keys[i] = iv_key(i + key0);
        iv_point(&r, cent, scale, nc, dim, d->vecs + i * dim);
    }
    for (i = 0; i < nq; i++) {
        if (i % 4 == 3 && n)
            memcpy(d->q + i * dim, d->vecs + (size_t)vt_below(&r, n) * dim,
                   dim * sizeof *d->q);
        else
            iv_point(&r, cent, scale, nc, dim, d->q + i * dim);
    }
    free(cent);
    free(scale);
}

static void iv_free(iv_data *d)
{
    free(d->keys);
    free(d->vecs);
    free(d->q);
    memset(d, 0, sizeof *d);
}

/* ---- building -------------------------------------------------------------
 */

static void iv_params(vecidx_params *p, int metric, uint32_t dim,
                      uint32_t nlist, uint32_t m, uint32_t keep)
{
    CHECK_OK(vecidx_params_init(p, VECIDX_IVFPQ, metric, dim));
    p->ivf_nlist = nlist;
    p->pq_m = m;
    p->ivf_keep_vectors = keep;
}

static vecidx *iv_create(const vecidx_params *p)
{
    vecidx *ix = NULL;
    CHECK_OK(vecidx_create(p, &ix));
    return ix;
}

/* Create from p, train on the first ntrain rows, add every row. */
static vecidx *iv_build(const vecidx_params *p, const iv_data *d, size_t ntrain)
{
    vecidx *ix = iv_create(p);
    vecidx_stats_t st;
    if (!ix) return NULL;
    CHECK_OK(vecidx_train(ix, ntrain, d->vecs));
    CHECK_OK(vecidx_add_batch(ix, d->n, d->keys, d->vecs));
    CHECK_OK(vecidx_stats(ix, &st));
    CHECK(st.trained == 1);
    CHECK_EQ_U64(st.count, d->n);
    CHECK_EQ_U64(st.slots, d->n); /* lists are compact */
    CHECK(st.capacity >= st.count &&
          st.capacity <= 2 * st.count + 64 * (uint64_t)st.nlist);
    return ix;
}

static vecidx *iv_flat(int metric, const iv_data *d)
{
    vecidx *ix = vt_create(VECIDX_FLAT, metric, d->dim, 0);
    if (ix) CHECK_OK(vecidx_add_batch(ix, d->n, d->keys, d->vecs));
    return ix;
}

/* Results of all queries: keys and distances, k per query. */
typedef struct iv_res {
    size_t nq, k;
    uint64_t *keys;
    float *dists;
    size_t *found;
} iv_res;

static void iv_res_init(iv_res *r, size_t nq, size_t k)
{
    r->nq = nq;
    r->k = k;
    r->keys = vt_xmalloc(nq * k * sizeof *r->keys);
    r->dists = vt_xmalloc(nq * k * sizeof *r->dists);
    r->found = vt_xmalloc(nq * sizeof *r->found);
}

static void iv_res_free(iv_res *r)
{
    free(r->keys);
    free(r->dists);
    free(r->found);
    memset(r, 0, sizeof *r);
}

/* Every query of d with one vecidx_search each. */
static void iv_search_all(vecidx *ix, const iv_data *d,
                          const vecidx_search_opts *o, iv_res *r)
{
    size_t i;
    for (i = 0; i < r->nq; i++)
        CHECK_OK(vecidx_search(ix, d->q + i * d->dim, r->k, o,
                               r->keys + i * r->k, r->dists + i * r->k,
                               r->found + i));
}

static int iv_same(const iv_res *a, const iv_res *b)
{
    size_t i;
    for (i = 0; i < a->nq; i++)
        if (a->found[i] != b->found[i]) return 0;
    return memcmp(a->keys, b->keys, a->nq * a->k * sizeof *a->keys) == 0 &&
           memcmp(a->dists, b->dists, a->nq * a->k * sizeof *a->dists) == 0;
}

/* Results identical to the bit; the first difference is reported. */
static void iv_check_same(const char *what, const iv_res *a, const iv_res *b)
{
    size_t i, j;
    for (i = 0; i < a->nq; i++) {
        if (a->found[i] != b->found[i]) {
            vt_fail(__FILE__, __LINE__, "%s: query %zu found %zu vs %zu", what,
                    i, a->found[i], b->found[i]);
            return;
        }
        for (j = 0; j < a->k; j++) {
            size_t x = i * a->k + j;
            if (a->keys[x] != b->keys[x] ||
                memcmp(&a->dists[x], &b->dists[x], sizeof(float)) != 0) {
                vt_fail(__FILE__, __LINE__,
                        "%s: query %zu rank %zu: key %llu (%.9g) vs %llu "
                        "(%.9g)",
                        what, i, j, (unsigned long long)a->keys[x],
                        (double)a->dists[x], (unsigned long long)b->keys[x],
                        (double)b->dists[x]);
                return;
            }
        }
    }
}

/* Mean over queries of |approx top k ∩ exact top k| / k. */
static double iv_recall(const iv_res *approx, const iv_res *exact)
{
    size_t i, j, l, hit = 0, want = 0;
    for (i = 0; i < approx->nq; i++) {
        const uint64_t *t = exact->keys + i * exact->k;
        const uint64_t *a = approx->keys + i * approx->k;
        want += exact->found[i];
        for (j = 0; j < exact->found[i]; j++)
            for (l = 0; l < approx->found[i]; l++)
                if (a[l] == t[j]) {
                    hit++;
                    break;
                }
    }
    return want ? (double)hit / (double)want : 1.0;
}

/* Shape of every result list: found as expected, sorted by (distance,
** key), distinct keys, each stored in ix, padding after found. */
static void iv_check_shape(const char *what, vecidx *ix, const iv_res *r,
                           size_t want_found)
{
    size_t i, j, l;
    for (i = 0; i < r->nq; i++) {
        const uint64_t *k = r->keys + i * r->k;
        CHECKF(r->found[i] == want_found, "%s: query %zu found %zu, want %zu",
               what, i, r->found[i], want_found);
        if (!vt_check_sorted(what, k, r->dists + i * r->k, r->found[i], r->k))
            return;
        for (j = 0; j < r->found[i]; j++) {
            CHECKF(vecidx_contains(ix, k[j]) == 1,
                   "%s: query %zu returned key %llu, not in the index", what, i,
                   (unsigned long long)k[j]);
            for (l = 0; l < j; l++)
                CHECKF(k[l] != k[j], "%s: query %zu returned key %llu twice",
                       what, i, (unsigned long long)k[j]);
        }
    }
}

/* Row of key in d, or -1 (linear: only for a few lookups). */
static long iv_row(const iv_data *d, uint64_t key)
{
    size_t i;
    for (i = 0; i < d->n; i++)
        if (d->keys[i] == key) return (long)i;
    return -1;
}

static int iv_u64_cmp(const void *pa, const void *pb)
{
    uint64_t a = *(const uint64_t *)pa, b = *(const uint64_t *)pb;
    return a < b ? -1 : a > b;
}

/* ---- recall ----------------------------------------------------------------
 */

#define IV_N 8000
#define IV_DIM 32
#define IV_NQ 120
#define IV_K 10

static const uint32_t iv_nprobes[] = {1, 2, 4, 8, 16, 128};
#define IV_NPROBES (sizeof iv_nprobes / sizeof iv_nprobes[0])

/* Recall floors at nprobe 1, 2, 4, 8, 16, 128 (all lists) with 128 lists
** and 8-byte codes, and with re-ranking of 4k candidates. Measured (AVX2)
** for L2: 0.54 0.65 0.69 0.70 0.70 0.70, refined 0.67 0.89 0.99 0.99 0.99
** 0.99. */
static const double iv_floor_l2[IV_NPROBES] = {0.45, 0.55, 0.60,
                                               0.60, 0.60, 0.60};
static const double iv_floor_l2_refine[IV_NPROBES] = {0.55, 0.80, 0.92,
                                                      0.95, 0.95, 0.95};

/* For each nprobe: recall, monotone in nprobe; the k-th code distance can
** only fall as lists are added (the candidates grow, their estimates do
** not change); with re-ranking, recall is higher and every distance is
** the exact one. */
static void iv_recall_run(int metric, const double *floor,
                          const double *floor_refine, const char *name)
{
    iv_data d;
    vecidx_params p;
    vecidx *ix, *flat;
    iv_res exact, res[IV_NPROBES], ref;
    double rec[IV_NPROBES], rref[IV_NPROBES];
    size_t pi, i, j;
    char what[96];
    iv_make(&d, 101 + (uint64_t)metric, IV_N, IV_DIM, 40, IV_NQ, 0);
    iv_params(&p, metric, IV_DIM, 128, 8, 1);
    ix = iv_build(&p, &d, 4000);
    flat = iv_flat(metric, &d);
    if (!ix || !flat) goto out;
    iv_res_init(&exact, IV_NQ, IV_K);
    iv_search_all(flat, &d, NULL, &exact);
    for (pi = 0; pi < IV_NPROBES; pi++) {
        vecidx_search_opts o;
        memset(&o, 0, sizeof o);
        o.nprobe = iv_nprobes[pi];
        o.refine = 1;
        iv_res_init(&res[pi], IV_NQ, IV_K);
        iv_search_all(ix, &d, &o, &res[pi]);
        snprintf(what, sizeof what, "%s nprobe %u", name, o.nprobe);
        iv_check_shape(what, ix, &res[pi], IV_K);
        rec[pi] = iv_recall(&res[pi], &exact);
        o.refine = 4;
        iv_res_init(&ref, IV_NQ, IV_K);
        iv_search_all(ix, &d, &o, &ref);
        iv_check_shape(what, ix, &ref, IV_K);
        rref[pi] = iv_recall(&ref, &exact);
        if (getenv("VTEST_DEBUG"))
            printf("  %s nprobe %u: recall@10 %.3f, refined %.3f\n", name,
                   o.nprobe, rec[pi], rref[pi]);
        CHECKF(rec[pi] >= floor[pi], "%s: recall@10 %.3f below the floor %.2f",
               what, rec[pi], floor[pi]);
        CHECKF(rref[pi] >= floor_refine[pi],
               "%s refine 4: recall@10 %.3f below the floor %.2f", what,
               rref[pi], floor_refine[pi]);
        CHECKF(rref[pi] > rec[pi] || (rec[pi] == 1.0 && rref[pi] == 1.0),
               "%s: re-ranking gives recall %.3f, not above %.3f without", what,
               rref[pi], rec[pi]);
        /* re-ranked distances are exact: a key the flat index also
        ** returned has the flat index's distance, every other key its
        ** reference distance */
        for (i = 0; i < IV_NQ; i++)
            for (j = 0; j < ref.found[i]; j++) {
                uint64_t key = ref.keys[i * IV_K + j];
                float got = ref.dists[i * IV_K + j];
                long row = iv_row(&d, key);
                double tol, rd;
                size_t l;
                if (row < 0) continue;
                rd = vt_ref_dist(metric, d.q + i * IV_DIM,
                                 d.vecs + (size_t)row * IV_DIM, IV_DIM, &tol);
                CHECKF(fabs(got - rd) <= tol,
                       "%s refine: query %zu key %llu distance %.9g, exact "
                       "%.9g",
                       what, i, (unsigned long long)key, (double)got, rd);
                for (l = 0; metric == VECIDX_L2 && l < exact.found[i]; l++)
                    if (exact.keys[i * IV_K + l] == key)
                        CHECKF(exact.dists[i * IV_K + l] == got,
                               "%s refine: query %zu key %llu distance %.9g, "
                               "flat index %.9g",
                               what, i, (unsigned long long)key, (double)got,
                               (double)exact.dists[i * IV_K + l]);
            }
        iv_res_free(&ref);
        if (pi == 0) continue;
        CHECKF(rec[pi] >= rec[pi - 1],
               "%s: recall %.3f fell from %.3f at nprobe %u", what, rec[pi],
               rec[pi - 1], iv_nprobes[pi - 1]);
        CHECKF(rref[pi] >= rref[pi - 1],
               "%s refine: recall %.3f fell from %.3f at nprobe %u", what,
               rref[pi], rref[pi - 1], iv_nprobes[pi - 1]);
        for (i = 0; i < IV_NQ; i++) {
            float now = res[pi].dists[i * IV_K + IV_K - 1];
            float before = res[pi - 1].dists[i * IV_K + IV_K - 1];
            CHECKF(now <= before,
                   "%s: query %zu k-th code distance %.9g rose from %.9g", what,
                   i, (double)now, (double)before);
        }
    }
    /* probing every list scores every vector: a search for all of them
    ** returns each key once */
    {
        size_t k = d.n + 5, found = 0;
        uint64_t *keys = vt_xmalloc(k * sizeof *keys);
        vecidx_search_opts o;
        memset(&o, 0, sizeof o);
        o.nprobe = 128;
        CHECK_OK(vecidx_search(ix, d.q, k, &o, keys, NULL, &found));
        CHECK_EQ_U64(found, d.n);
        qsort(keys, found, sizeof *keys, iv_u64_cmp);
        for (i = 1; i < found; i++)
            CHECKF(keys[i - 1] != keys[i], "%s: key %llu returned twice", name,
                   (unsigned long long)keys[i]);
        free(keys);
    }
    for (pi = 0; pi < IV_NPROBES; pi++) iv_res_free(&res[pi]);
    iv_res_free(&exact);
out:
    vecidx_close(ix);
    vecidx_close(flat);
    iv_free(&d);
}

void test_ivfpq_recall_l2(void)
{
    iv_recall_run(VECIDX_L2, iv_floor_l2, iv_floor_l2_refine, "l2");
}

/* Measured (AVX2): ip 0.58 0.69 0.73 0.73 0.73 0.73, refined 0.73 0.91
** 0.99 1.00 1.00 1.00; cosine 0.44 0.54 0.57 0.57 0.57 0.57, refined 0.60
** 0.84 0.93 0.93 0.93 0.93. */
static const double iv_floor_ip[IV_NPROBES] = {0.48, 0.58, 0.63,
                                               0.63, 0.63, 0.63};
static const double iv_floor_ip_refine[IV_NPROBES] = {0.63, 0.83, 0.93,
                                                      0.95, 0.95, 0.95};
static const double iv_floor_cos[IV_NPROBES] = {0.35, 0.45, 0.48,
                                                0.48, 0.48, 0.48};
static const double iv_floor_cos_refine[IV_NPROBES] = {0.50, 0.75, 0.85,
                                                       0.87, 0.87, 0.87};

void test_ivfpq_recall_ip(void)
{
    iv_recall_run(VECIDX_IP, iv_floor_ip, iv_floor_ip_refine, "ip");
}

void test_ivfpq_recall_cosine(void)
{
    iv_recall_run(VECIDX_COSINE, iv_floor_cos, iv_floor_cos_refine, "cosine");
}

/* ---- filter ----------------------------------------------------------------
 */

typedef struct iv_filt {
    uint64_t mod, rem; /* admits keys with key % mod == rem */
    long calls;
    const uint64_t *only; /* or, when set, exactly these keys */
    size_t nonly;
} iv_filt;

static int iv_filter(uint64_t key, void *ctx)
{
    iv_filt *f = ctx;
    size_t i;
    f->calls++;
    if (f->only) {
        for (i = 0; i < f->nonly; i++)
            if (f->only[i] == key) return 1;
        return 0;
    }
    return key % f->mod == f->rem;
}

/* A filtered search sees at least the lists an unfiltered one probes: it
** probes more when the filter is selective, or scores the admitted
** entries directly. So: every result is admitted and carries its code
** estimate (its distance in a search of every list; the direct route
** computes it another way, hence the tolerance); no admitted entry of the
** nprobe probed lists is closer than the last result yet missing; and
** the search is never short while k admitted keys exist. */
static void iv_filter_run(vecidx *ix, const iv_data *d, uint32_t nprobe,
                          iv_filt *f, const char *what)
{
    size_t all = d->n, i, j, r, got, gotall, found, admitted = 0;
    uint64_t *ak = vt_xmalloc(all * sizeof *ak), keys[IV_K];
    uint64_t *pk = vt_xmalloc(all * sizeof *pk);
    float *ad = vt_xmalloc(all * sizeof *ad), dists[IV_K];
    float *pd = vt_xmalloc(all * sizeof *pd);
    vecidx_search_opts o;
    for (i = 0; i < all; i++) admitted += iv_filter(d->keys[i], f) != 0;
    /* six queries: each costs two searches returning every vector */
    for (i = 0; i < 6; i++) {
        const float *q = d->q + i * d->dim;
        memset(&o, 0, sizeof o);
        o.refine = 1;
        o.nprobe = 1u << 20; /* every list */
        CHECK_OK(vecidx_search(ix, q, all, &o, ak, ad, &gotall));
        o.nprobe = nprobe;
        CHECK_OK(vecidx_search(ix, q, all, &o, pk, pd, &got));
        o.filter = iv_filter;
        o.filter_ctx = f;
        f->calls = 0;
        CHECK_OK(vecidx_search(ix, q, IV_K, &o, keys, dists, &found));
        CHECKF(f->calls > 0 || got == 0, "%s: the filter was never called",
               what);
        CHECKF(found == (admitted < IV_K ? admitted : IV_K),
               "%s nprobe %u: query %zu found %zu of %zu admitted", what,
               nprobe, i, found, admitted);
        vt_check_sorted(what, keys, dists, found, IV_K);
        for (j = 0; j < found; j++) {
            CHECKF(iv_filter(keys[j], f), "%s: key %llu is not admitted", what,
                   (unsigned long long)keys[j]);
            for (r = 0; r < gotall && ak[r] != keys[j]; r++) continue;
            CHECKF(r < gotall &&
                       fabsf(dists[j] - ad[r]) <= 1e-4f * (1.0f + fabsf(ad[r])),
                   "%s nprobe %u: query %zu key %llu has distance %.9g, its "
                   "code estimate is %.9g",
                   what, nprobe, i, (unsigned long long)keys[j],
                   (double)dists[j], r < gotall ? (double)ad[r] : 0.0);
        }
        for (r = 0; r < got && found == IV_K; r++) {
            int in = 0;
            if (!iv_filter(pk[r], f) ||
                pd[r] >= dists[found - 1] - 1e-4f * (1.0f + fabsf(pd[r])))
                continue;
            for (j = 0; j < found; j++) in |= keys[j] == pk[r];
            CHECKF(in,
                   "%s nprobe %u: query %zu misses key %llu (%.9g) of the "
                   "probed lists, closer than its last result (%.9g)",
                   what, nprobe, i, (unsigned long long)pk[r], (double)pd[r],
                   (double)dists[found - 1]);
        }
    }
    free(ak);
    free(ad);
    free(pk);
    free(pd);
}

void test_ivfpq_filter(void)
{
    iv_data d;
    vecidx_params p;
    vecidx *ix;
    iv_filt f;
    uint64_t few[5], keys[IV_K];
    float dists[IV_K];
    size_t found, i, j;
    vecidx_search_opts o;
    iv_make(&d, 202, 3000, 16, 40, 12, 0);
    iv_params(&p, VECIDX_L2, 16, 32, 4, 1);
    ix = iv_build(&p, &d, d.n);
    if (!ix) goto out;
    memset(&f, 0, sizeof f);
    f.mod = 3;
    f.rem = 1;
    iv_filter_run(ix, &d, 1, &f, "key % 3 == 1");
    iv_filter_run(ix, &d, 3, &f, "key % 3 == 1");
    iv_filter_run(ix, &d, 32, &f, "key % 3 == 1");
    f.mod = 97; /* ~31 admitted keys: some probed lists hold fewer than k */
    f.rem = 5;
    iv_filter_run(ix, &d, 1, &f, "key % 97 == 5");
    iv_filter_run(ix, &d, 4, &f, "key % 97 == 5");
    /* five admitted keys, all lists probed: exactly those five */
    for (i = 0; i < 5; i++) few[i] = d.keys[i * 577];
    memset(&f, 0, sizeof f);
    f.only = few;
    f.nonly = 5;
    memset(&o, 0, sizeof o);
    o.nprobe = 32;
    o.filter = iv_filter;
    o.filter_ctx = &f;
    CHECK_OK(vecidx_search(ix, d.q, IV_K, &o, keys, dists, &found));
    CHECK_EQ_U64(found, 5);
    vt_check_sorted("five keys", keys, dists, found, IV_K);
    for (i = 0; i < 5; i++) {
        int in = 0;
        for (j = 0; j < found; j++) in |= keys[j] == few[i];
        CHECKF(in, "admitted key %llu missing", (unsigned long long)few[i]);
    }
    /* and with re-ranking: exact distances, still only those keys */
    o.refine = 3;
    CHECK_OK(vecidx_search(ix, d.q, IV_K, &o, keys, dists, &found));
    CHECK_EQ_U64(found, 5);
    for (j = 0; j < found; j++) {
        long row = iv_row(&d, keys[j]);
        double tol, rd;
        CHECK(iv_filter(keys[j], &f));
        if (row < 0) continue;
        rd = vt_ref_dist(VECIDX_L2, d.q, d.vecs + (size_t)row * 16, 16, &tol);
        CHECKF(fabs(dists[j] - rd) <= tol,
               "refined filtered distance %.9g, "
               "exact %.9g",
               (double)dists[j], rd);
    }
    /* a filter admitting nothing */
    f.nonly = 0;
    CHECK_OK(vecidx_search(ix, d.q, IV_K, &o, keys, dists, &found));
    CHECK_EQ_U64(found, 0);
    vt_check_sorted("nothing admitted", keys, dists, found, IV_K);
    /* re-ranked filtered search: every key admitted, distances exact, and
    ** the result is the exact top k of the admitted candidates */
    memset(&f, 0, sizeof f);
    f.mod = 2;
    f.rem = 0;
    for (i = 0; i < 12; i++) {
        o.nprobe = 4;
        o.refine = 3;
        o.filter = iv_filter;
        CHECK_OK(
            vecidx_search(ix, d.q + i * 16, IV_K, &o, keys, dists, &found));
        CHECK_EQ_U64(found, IV_K);
        vt_check_sorted("refined filter", keys, dists, found, IV_K);
        for (j = 0; j < found; j++) {
            long row = iv_row(&d, keys[j]);
            double tol, rd;
            CHECKF(iv_filter(keys[j], &f), "key %llu not admitted",
                   (unsigned long long)keys[j]);
            if (row < 0) continue;
            rd = vt_ref_dist(VECIDX_L2, d.q + i * 16, d.vecs + (size_t)row * 16,
                             16, &tol);
            CHECKF(fabs(dists[j] - rd) <= tol,
                   "refined filtered distance %.9g, exact %.9g",
                   (double)dists[j], rd);
        }
    }
out:
    vecidx_close(ix);
    iv_free(&d);
}

/* ---- removes and upserts
 * ------------------------------------------------------ */

/* Per-dimension variance of rows vecs[0..n), summed over dimensions. */
static double iv_variance(const float *vecs, size_t n, uint32_t dim)
{
    double total = 0;
    uint32_t j;
    size_t i;
    for (j = 0; j < dim; j++) {
        double s = 0, s2 = 0;
        for (i = 0; i < n; i++) {
            s += vecs[i * dim + j];
            s2 += (double)vecs[i * dim + j] * vecs[i * dim + j];
        }
        total += s2 / (double)n - (s / (double)n) * (s / (double)n);
    }
    return total;
}

static double iv_sqdist(const float *a, const float *b, uint32_t dim)
{
    double s = 0;
    uint32_t j;
    for (j = 0; j < dim; j++)
        s += ((double)a[j] - b[j]) * ((double)a[j] - b[j]);
    return s;
}

/* vecidx_keys gives exactly the live keys of the model. */
static void iv_check_keys(const char *what, vecidx *ix, const vt_set *s)
{
    size_t live = vt_set_count(s), n = 12345, i, j = 0;
    uint64_t *got = vt_xmalloc((live + 2) * sizeof *got);
    uint64_t *want = vt_xmalloc((live + 1) * sizeof *want);
    for (i = 0; i < s->n; i++)
        if (s->live[i]) want[j++] = s->keys[i];
    CHECK_OK(vecidx_keys(ix, NULL, 0, &n));
    CHECKF(n == live, "%s: vecidx_keys counts %zu, want %zu", what, n, live);
    got[live] = got[live + 1] = 0x5555;
    CHECK_OK(vecidx_keys(ix, got, live + 1, &n));
    CHECKF(n == live, "%s: vecidx_keys gives %zu, want %zu", what, n, live);
    CHECKF(got[live] == 0x5555, "%s: vecidx_keys wrote past the keys", what);
    qsort(got, live, sizeof *got, iv_u64_cmp);
    qsort(want, live, sizeof *want, iv_u64_cmp);
    CHECKF(memcmp(got, want, live * sizeof *got) == 0,
           "%s: vecidx_keys is not the live key set", what);
    if (live > 3) { /* a short array: filled, no further, total still given */
        got[3] = 0x5555;
        CHECK_OK(vecidx_keys(ix, got, 3, &n));
        CHECK_EQ_U64(n, live);
        CHECK(got[3] == 0x5555);
        for (i = 0; i < 3; i++)
            CHECKF(bsearch(&got[i], want, live, sizeof *want, iv_u64_cmp) !=
                       NULL,
                   "%s: vecidx_keys with cap 3 gave key %llu, not live", what,
                   (unsigned long long)got[i]);
    }
    free(got);
    free(want);
}

/* Churn a trained index and compare with the model: removes (twice: the
** second fails), upserts of live, removed and new keys, adds of new and
** existing keys, batches. Without kept vectors vecidx_get returns the
** reconstruction: its error must be far below the data's spread, and
** closer to the new vector of an upserted key than to its old one. */
static void iv_churn(int keep, int metric)
{
    enum {
        N = 3000,
        DIM = 16,
        NEW = 1500
    };
    iv_data d, nv;
    vecidx_params p;
    vecidx *ix;
    vt_set s;
    vt_rng r = {303 + (uint64_t)keep};
    float *old = vt_xmalloc((N + NEW) * DIM * sizeof *old);
    float *v = vt_xmalloc(DIM * sizeof *v);
    unsigned char *upserted = vt_xmalloc(N + NEW);
    size_t i, op, nnew = 0, found, mse_n = 0;
    double var, mse = 0;
    char what[64];
    uint64_t keys[50];
    float dists[50];
    vecidx_search_opts o;
    snprintf(what, sizeof what, "churn keep=%d metric %d", keep, metric);
    /* rows N.. are the fresh vectors (and keys) given by upserts and adds,
    ** from the same distribution */
    iv_make(&d, 404, N + NEW, DIM, 40, 30, 0);
    nv = d;
    nv.keys = d.keys + N;
    nv.vecs = d.vecs + (size_t)N * DIM;
    d.n = N;
    var = iv_variance(d.vecs, N, DIM);
    iv_params(&p, metric, DIM, 16, 8, (uint32_t)keep);
    ix = iv_build(&p, &d, N);
    vt_set_init(&s, DIM, N + NEW);
    for (i = 0; i < N; i++) vt_set_put(&s, d.keys[i], d.vecs + i * DIM);
    if (!ix) goto out;
    for (op = 0; op < 1800; op++) {
        unsigned kind = (unsigned)vt_below(&r, 6);
        size_t row = (size_t)vt_below(&r, s.n);
        uint64_t key = s.keys[row];
        int live = s.live[row];
        switch (kind) {
        case 0:
        case 1: /* remove */
            if (live) {
                CHECK_OK(vecidx_remove(ix, key));
                vt_set_del(&s, key);
            }
            CHECK_RC(vecidx_remove(ix, key), VECIDX_ENOTFOUND);
            CHECK(vecidx_contains(ix, key) == 0);
            break;
        case 2: /* upsert an existing (or removed) key with a fresh vector */
            if (nnew < NEW) {
                memcpy(old + row * DIM, s.vecs + row * DIM, DIM * sizeof *v);
                CHECK_OK(vecidx_upsert(ix, key, nv.vecs + nnew * DIM));
                vt_set_put(&s, key, nv.vecs + nnew * DIM);
                upserted[row] = (unsigned char)(live ? 1 : 2);
                nnew++;
            }
            break;
        case 3: /* add: new key works, live key is refused unchanged */
            if (live)
                CHECK_RC(vecidx_add(ix, key, nv.vecs), VECIDX_EEXIST);
            else if (nnew < NEW) {
                CHECK_OK(vecidx_add(ix, key, nv.vecs + nnew * DIM));
                vt_set_put(&s, key, nv.vecs + nnew * DIM);
                upserted[row] = 2;
                nnew++;
            }
            break;
        case 4: /* a new key by upsert */
            if (nnew < NEW) {
                CHECK_OK(
                    vecidx_upsert(ix, nv.keys[nnew], nv.vecs + nnew * DIM));
                vt_set_put(&s, nv.keys[nnew], nv.vecs + nnew * DIM);
                nnew++;
            }
            break;
        default: /* a batch of new keys */
            if (nnew + 20 <= NEW) {
                CHECK_OK(vecidx_add_batch(ix, 20, nv.keys + nnew,
                                          nv.vecs + nnew * DIM));
                for (i = 0; i < 20; i++)
                    vt_set_put(&s, nv.keys[nnew + i],
                               nv.vecs + (nnew + i) * DIM);
                nnew += 20;
            }
            break;
        }
    }
    CHECK_EQ_U64(vecidx_count(ix), vt_set_count(&s));
    CHECK_OK(vecidx_check(ix));
    iv_check_keys(what, ix, &s);
    if (keep) { /* the exact vectors come back */
        for (i = 0; i < s.n; i++) {
            int rc = vecidx_get(ix, s.keys[i], v);
            CHECK(vecidx_contains(ix, s.keys[i]) == s.live[i]);
            CHECKF(rc == (s.live[i] ? VECIDX_OK : VECIDX_ENOTFOUND),
                   "%s: get of %s key %llu returned %d", what,
                   s.live[i] ? "live" : "removed",
                   (unsigned long long)s.keys[i], rc);
            CHECKF(!s.live[i] ||
                       memcmp(v, s.vecs + i * DIM, DIM * sizeof *v) == 0,
                   "%s: key %llu has a different vector", what,
                   (unsigned long long)s.keys[i]);
        }
    } else {
        double closer = 0, nup = 0, norm_err = 0;
        for (i = 0; i < s.n; i++) {
            if (!s.live[i]) {
                CHECK(vecidx_contains(ix, s.keys[i]) == 0);
                CHECK_RC(vecidx_get(ix, s.keys[i], v), VECIDX_ENOTFOUND);
                continue;
            }
            CHECK(vecidx_contains(ix, s.keys[i]) == 1);
            CHECK_OK(vecidx_get(ix, s.keys[i], v));
            if (metric == VECIDX_COSINE) { /* the normalised direction */
                double n2 = 0, nv2 = 0, c = 0;
                uint32_t j;
                for (j = 0; j < DIM; j++) {
                    n2 += (double)s.vecs[i * DIM + j] * s.vecs[i * DIM + j];
                    nv2 += (double)v[j] * v[j];
                    c += (double)v[j] * s.vecs[i * DIM + j];
                }
                mse += 1.0 - c / sqrt(n2) / sqrt(nv2);
                norm_err += fabs(sqrt(nv2) - 1.0);
            } else {
                double e = iv_sqdist(v, s.vecs + i * DIM, DIM);
                mse += e;
                if (upserted[i] == 1) {
                    nup++;
                    closer += e < iv_sqdist(v, old + i * DIM, DIM);
                }
            }
            mse_n++;
        }
        mse /= (double)(mse_n ? mse_n : 1);
        if (getenv("VTEST_DEBUG"))
            printf("  %s: reconstruction error %.4f, data variance %.4f, "
                   "upserts closer to new %.0f/%.0f\n",
                   what, mse, var, closer, nup);
        norm_err /= (double)(mse_n ? mse_n : 1);
        if (metric == VECIDX_COSINE) {
            CHECKF(mse < 0.01,
                   "%s: mean cosine distance to the "
                   "reconstruction %.4f",
                   what, mse);
            CHECKF(norm_err < 0.05,
                   "%s: reconstructions of unit vectors "
                   "have norms off 1 by %.3f on average",
                   what, norm_err);
        } else
            CHECKF(mse < 0.01 * var,
                   "%s: reconstruction error %.4f, data "
                   "variance %.4f",
                   what, mse, var);
        CHECKF(closer == nup,
               "%s: %.0f of %.0f upserted keys reconstruct "
               "closer to their old vector",
               what, nup - closer, nup);
    }
    /* searches over all lists never return a removed key and return
    ** min(k, count) results */
    memset(&o, 0, sizeof o);
    o.nprobe = 16;
    for (i = 0; i < d.nq; i++) {
        CHECK_OK(vecidx_search(ix, d.q + i * DIM, 50, &o, keys, dists, &found));
        vt_check_shape(what, &s, 50, NULL, NULL, keys, dists, found);
    }
    /* a re-inserted vector is found at once: itself, exactly, with
    ** re-ranking */
    if (keep && metric == VECIDX_L2) {
        o.refine = 4;
        for (i = 0; i < s.n; i += 97) {
            if (!s.live[i]) continue;
            CHECK_OK(vecidx_search(ix, s.vecs + i * DIM, 1, &o, keys, dists,
                                   &found));
            CHECKF(found == 1 && keys[0] == s.keys[i] && dists[0] == 0.0f,
                   "%s: self search for key %llu gave %llu at %.9g", what,
                   (unsigned long long)s.keys[i], (unsigned long long)keys[0],
                   (double)dists[0]);
        }
    }
    /* remove everything: empty, consistent, searchable, and usable again */
    for (i = 0; i < s.n; i++)
        if (s.live[i]) {
            CHECK_OK(vecidx_remove(ix, s.keys[i]));
            s.live[i] = 0;
        }
    CHECK_EQ_U64(vecidx_count(ix), 0);
    CHECK_OK(vecidx_check(ix));
    iv_check_keys(what, ix, &s);
    o.refine = keep ? 4 : 0;
    CHECK_OK(vecidx_search(ix, d.q, 5, &o, keys, dists, &found));
    CHECK_EQ_U64(found, 0);
    vt_check_sorted(what, keys, dists, found, 5);
    CHECK_OK(vecidx_add(ix, d.keys[7], d.vecs + 7 * DIM));
    vt_set_put(&s, d.keys[7], d.vecs + 7 * DIM);
    CHECK_OK(vecidx_search(ix, d.q, 5, &o, keys, dists, &found));
    CHECK_EQ_U64(found, 1);
    CHECK(keys[0] == d.keys[7]);
    CHECK_OK(vecidx_check(ix));
    iv_check_keys(what, ix, &s);
out:
    vecidx_close(ix);
    vt_set_free(&s);
    iv_free(&d);
    free(old);
    free(v);
    free(upserted);
}

void test_ivfpq_remove_upsert(void)
{
    iv_churn(1, VECIDX_L2);
    iv_churn(0, VECIDX_L2);
    iv_churn(0, VECIDX_COSINE);
    iv_churn(1, VECIDX_COSINE);
    iv_churn(1, VECIDX_IP);
}

/* ---- before training -------------------------------------------------------
 */

static void iv_stats(vecidx *ix, int *trained, uint32_t *nlist, size_t *count)
{
    vecidx_stats_t st;
    memset(&st, 0, sizeof st);
    CHECK_OK(vecidx_stats(ix, &st));
    *trained = st.trained;
    *nlist = st.nlist;
    *count = (size_t)st.count;
}

/* Search both indexes for every query of d (k = 10, with and without a
** filter) and require identical answers, to the bit. */
static void iv_check_vs_flat(const char *what, vecidx *ix, vecidx *flat,
                             const iv_data *d)
{
    iv_res a, b;
    iv_filt f;
    vecidx_search_opts o;
    iv_res_init(&a, d->nq, IV_K);
    iv_res_init(&b, d->nq, IV_K);
    iv_search_all(ix, d, NULL, &a);
    iv_search_all(flat, d, NULL, &b);
    iv_check_same(what, &a, &b);
    memset(&f, 0, sizeof f);
    f.mod = 5;
    f.rem = 2;
    memset(&o, 0, sizeof o);
    o.filter = iv_filter;
    o.filter_ctx = &f;
    o.nprobe = 1; /* meaningless before training: the search is exact */
    iv_search_all(ix, d, &o, &a);
    iv_search_all(flat, d, &o, &b);
    iv_check_same(what, &a, &b);
    iv_res_free(&a);
    iv_res_free(&b);
}

/* An index that is not trained buffers its vectors and answers exactly,
** as a flat index with the same writes does, including removes and
** upserts; the add that reaches ivf_train_size trains it, and every key
** stays. */
static void iv_buffered(int metric)
{
    enum {
        DIM = 16,
        TS = 1500
    };
    iv_data d;
    vecidx_params p;
    vecidx *ix, *flat;
    size_t i, count, n;
    int trained;
    uint32_t nlist;
    float v[DIM];
    char what[64];
    vt_set s;
    snprintf(what, sizeof what, "buffered metric %d", metric);
    iv_make(&d, 505, TS + 400, DIM, 40, 40, 0);
    iv_params(&p, metric, DIM, 16, 0, 0);
    p.ivf_train_size = TS;
    ix = iv_create(&p);
    flat = vt_create(VECIDX_FLAT, metric, DIM, 0);
    vt_set_init(&s, DIM, d.n);
    if (!ix || !flat) goto out;
    /* empty and untrained: nothing found, no error */
    {
        uint64_t keys[6];
        float dists[6];
        size_t found[2] = {9, 9};
        CHECK_OK(vecidx_search(ix, d.q, 3, NULL, keys, dists, found));
        CHECK_EQ_U64(found[0], 0);
        vt_check_sorted("empty untrained", keys, dists, found[0], 3);
        CHECK_OK(vecidx_search_batch(ix, 2, d.q, 3, NULL, keys, NULL, found));
        CHECK(found[0] == 0 && found[1] == 0 && keys[5] == UINT64_MAX);
    }
    for (i = 0; i < 700; i++) {
        CHECK_OK(vecidx_add(ix, d.keys[i], d.vecs + i * DIM));
        CHECK_OK(vecidx_add(flat, d.keys[i], d.vecs + i * DIM));
        vt_set_put(&s, d.keys[i], d.vecs + i * DIM);
    }
    CHECK_OK(vecidx_add_batch(ix, 700, d.keys + 700, d.vecs + 700 * DIM));
    CHECK_OK(vecidx_add_batch(flat, 700, d.keys + 700, d.vecs + 700 * DIM));
    for (i = 700; i < 1400; i++) vt_set_put(&s, d.keys[i], d.vecs + i * DIM);
    /* removes and upserts while buffered: rows 0..99 removed, 100..199
    ** given the vectors of rows 1400..1499 */
    for (i = 0; i < 100; i++) {
        CHECK_OK(vecidx_remove(ix, d.keys[i]));
        CHECK_OK(vecidx_remove(flat, d.keys[i]));
        vt_set_del(&s, d.keys[i]);
        CHECK_OK(vecidx_upsert(ix, d.keys[100 + i], d.vecs + (1400 + i) * DIM));
        CHECK_OK(
            vecidx_upsert(flat, d.keys[100 + i], d.vecs + (1400 + i) * DIM));
        vt_set_put(&s, d.keys[100 + i], d.vecs + (1400 + i) * DIM);
    }
    iv_stats(ix, &trained, &nlist, &count);
    CHECK(trained == 0);
    CHECK_EQ_U64(nlist, 0);
    CHECK_EQ_U64(count, 1300);
    CHECK_OK(vecidx_check(ix));
    iv_check_vs_flat(what, ix, flat, &d);
    for (i = 100; i < 110; i++) { /* buffered vectors come back exactly */
        CHECK_OK(vecidx_get(ix, d.keys[i], v));
        CHECK(memcmp(v, d.vecs + (1400 + i - 100) * DIM, sizeof v) == 0);
    }
    CHECK_RC(vecidx_get(ix, d.keys[3], v), VECIDX_ENOTFOUND);
    iv_check_keys(what, ix, &s);
    /* 199 more one by one: 1499 buffered, still untrained */
    for (i = 1500; i < 1699; i++) {
        CHECK_OK(vecidx_add(ix, d.keys[i], d.vecs + i * DIM));
        CHECK_OK(vecidx_add(flat, d.keys[i], d.vecs + i * DIM));
        vt_set_put(&s, d.keys[i], d.vecs + i * DIM);
    }
    iv_stats(ix, &trained, &nlist, &count);
    CHECK(trained == 0);
    CHECK_EQ_U64(count, TS - 1);
    iv_check_vs_flat(what, ix, flat, &d);
    /* a batch that crosses the threshold: trained, every key present */
    CHECK_OK(vecidx_add_batch(ix, 50, d.keys + 1699, d.vecs + 1699 * DIM));
    for (i = 1699; i < 1749; i++) vt_set_put(&s, d.keys[i], d.vecs + i * DIM);
    iv_stats(ix, &trained, &nlist, &count);
    CHECK(trained == 1);
    CHECK_EQ_U64(nlist, 16);
    CHECK_EQ_U64(count, TS + 49);
    CHECK_OK(vecidx_check(ix));
    iv_check_keys(what, ix, &s);
    for (i = 0; i < s.n; i++)
        CHECKF(vecidx_contains(ix, s.keys[i]) == s.live[i],
               "%s: key %llu contains %d after training, live %d", what,
               (unsigned long long)s.keys[i], vecidx_contains(ix, s.keys[i]),
               s.live[i]);
    /* all lists probed, all vectors returned */
    {
        vecidx_search_opts o;
        uint64_t *keys = vt_xmalloc((count + 1) * sizeof *keys);
        memset(&o, 0, sizeof o);
        o.nprobe = 16;
        CHECK_OK(vecidx_search(ix, d.q, count + 1, &o, keys, NULL, &n));
        CHECK_EQ_U64(n, count);
        vt_check_shape(what, &s, count + 1, NULL, NULL, keys, NULL, n);
        free(keys);
    }
out:
    vecidx_close(ix);
    vecidx_close(flat);
    vt_set_free(&s);
    iv_free(&d);
}

void test_ivfpq_untrained_buffer(void)
{
    iv_buffered(VECIDX_L2);
    iv_buffered(VECIDX_IP);
    iv_buffered(VECIDX_COSINE);
}

/* The documented automatic thresholds: ivf_train_size 0 means
** max(39 * nlist, 10000) with nlist 256 when ivf_nlist is 0, and an
** ivf_nlist of 0 becomes min(4 sqrt(n), n / 39) at training. */
void test_ivfpq_untrained_thresholds(void)
{
    enum {
        DIM = 4
    };
    static const struct {
        uint32_t nlist, train_size;
        size_t threshold;
        uint32_t want_nlist;
    } cases[] = {
        {0, 0, 10000, 256},   /* 4 sqrt(10000) = 400, 10000 / 39 = 256 */
        {300, 0, 11700, 300}, /* 39 * 300 */
        {0, 2000, 2000, 51},  /* 4 sqrt(2000) = 178, 2000 / 39 = 51 */
        {0, 100, 100, 2},     /* 4 sqrt(100) = 40, 100 / 39 = 2 */
        {0, 20, 20, 1},       /* at least one list */
    };
    size_t c, i, count;
    iv_data d;
    iv_make(&d, 606, 11700, DIM, 40, 4, 0);
    for (c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        vecidx_params p;
        vecidx *ix;
        int trained;
        uint32_t nlist;
        size_t before = cases[c].threshold - 1;
        iv_params(&p, VECIDX_L2, DIM, cases[c].nlist, 0, 0);
        p.ivf_train_size = cases[c].train_size;
        if (!(ix = iv_create(&p))) continue;
        /* in batches up to one short of the threshold, then the last one
        ** alone */
        for (i = 0; i < before;) {
            size_t m = before - i < 4000 ? before - i : 4000;
            CHECK_OK(vecidx_add_batch(ix, m, d.keys + i, d.vecs + i * DIM));
            i += m;
        }
        iv_stats(ix, &trained, &nlist, &count);
        CHECKF(trained == 0, "case %zu: trained after %zu vectors", c, before);
        CHECK_OK(vecidx_add(ix, d.keys[before], d.vecs + before * DIM));
        iv_stats(ix, &trained, &nlist, &count);
        CHECKF(trained == 1, "case %zu: untrained after %zu vectors", c,
               before + 1);
        CHECKF(nlist == cases[c].want_nlist, "case %zu: nlist %u, want %u", c,
               (unsigned)nlist, (unsigned)cases[c].want_nlist);
        CHECK_EQ_U64(count, before + 1);
        CHECK_OK(vecidx_check(ix));
        vecidx_close(ix);
    }
    iv_free(&d);
}

/* vecidx_train with samples from outside: the samples are not added, the
** buffered vectors move into the lists; a second train is a no-op; an
** empty trained index finds nothing. */
void test_ivfpq_train_absorbs_buffer(void)
{
    enum {
        DIM = 24,
        NB = 300,
        NS = 2000
    };
    iv_data d, samples;
    vecidx_params p;
    vecidx *ix, *empty = NULL;
    size_t i, count, found;
    int trained;
    uint32_t nlist;
    vecidx_search_opts o;
    uint64_t keys[IV_K];
    float dists[IV_K], v[DIM];
    vt_set s;
    iv_make(&d, 707, NB + NS, DIM, 40, 0, 0);
    samples = d;
    samples.vecs = d.vecs + (size_t)NB * DIM; /* other rows, same kind */
    iv_params(&p, VECIDX_L2, DIM, 8, 6, 1);
    ix = iv_create(&p);
    vt_set_init(&s, DIM, NB);
    if (!ix) goto out;
    CHECK_OK(vecidx_add_batch(ix, NB, d.keys, d.vecs));
    for (i = 0; i < NB; i++) vt_set_put(&s, d.keys[i], d.vecs + i * DIM);
    iv_stats(ix, &trained, &nlist, &count);
    CHECK(trained == 0);
    CHECK_OK(vecidx_train(ix, NS, samples.vecs));
    iv_stats(ix, &trained, &nlist, &count);
    CHECK(trained == 1);
    CHECK_EQ_U64(nlist, 8);
    CHECK_EQ_U64(count, NB);
    CHECK_OK(vecidx_check(ix));
    iv_check_keys("absorbed", ix, &s);
    for (i = 0; i < NB; i++) {
        CHECK_OK(vecidx_get(ix, d.keys[i], v));
        CHECK(memcmp(v, d.vecs + i * DIM, sizeof v) == 0);
    }
    /* every buffered vector finds itself, exactly, with re-ranking */
    memset(&o, 0, sizeof o);
    o.nprobe = 8;
    o.refine = 2;
    for (i = 0; i < NB; i += 7) {
        CHECK_OK(
            vecidx_search(ix, d.vecs + i * DIM, IV_K, &o, keys, dists, &found));
        CHECKF(found == IV_K && keys[0] == d.keys[i] && dists[0] == 0.0f,
               "row %zu: first result %llu at %.9g", i,
               (unsigned long long)keys[0], (double)dists[0]);
    }
    /* training again is a successful no-op */
    CHECK_OK(vecidx_train(ix, 50, samples.vecs));
    iv_stats(ix, &trained, &nlist, &count);
    CHECK_EQ_U64(nlist, 8);
    CHECK_EQ_U64(count, NB);
    /* trained with nothing buffered: empty, searchable, then usable */
    empty = iv_create(&p);
    if (empty) {
        CHECK_OK(vecidx_train(empty, NS, samples.vecs));
        iv_stats(empty, &trained, &nlist, &count);
        CHECK(trained == 1);
        CHECK_EQ_U64(count, 0);
        CHECK_OK(vecidx_search(empty, d.vecs, IV_K, &o, keys, dists, &found));
        CHECK_EQ_U64(found, 0);
        vt_check_sorted("trained empty", keys, dists, found, IV_K);
        CHECK_OK(vecidx_check(empty));
        CHECK_OK(vecidx_add_batch(empty, 3, d.keys, d.vecs));
        CHECK_OK(vecidx_search(empty, d.vecs, IV_K, &o, keys, dists, &found));
        CHECK_EQ_U64(found, 3);
        CHECK(keys[0] == d.keys[0] && dists[0] == 0.0f);
    }
out:
    vecidx_close(ix);
    vecidx_close(empty);
    vt_set_free(&s);
    iv_free(&d);
}

/* ---- determinism -----------------------------------------------------------
 */

/* Build with the given seed, threads and quantizer; big enough that
** k-means assignment (>= 4096 samples) and encoding (>= 2048 vectors) run
** on several threads when allowed. */
static vecidx *iv_det_build(const iv_data *d, uint64_t seed, uint32_t threads,
                            uint32_t keep, uint32_t nlist, uint32_t quant)
{
    vecidx_params p;
    iv_params(&p, VECIDX_L2, d->dim, nlist, 6, keep);
    p.seed = seed;
    p.threads = threads;
    p.ivf_quantizer = quant;
    return iv_build(&p, d, d->n);
}

static void iv_det_compare(const char *what, vecidx *a, vecidx *b,
                           const iv_data *d, uint32_t refine, uint32_t nprobe,
                           size_t k)
{
    iv_res ra, rb;
    vecidx_search_opts o;
    memset(&o, 0, sizeof o);
    o.nprobe = nprobe;
    o.refine = refine;
    iv_res_init(&ra, d->nq, k);
    iv_res_init(&rb, d->nq, k);
    iv_search_all(a, d, &o, &ra);
    iv_search_all(b, d, &o, &rb);
    iv_check_same(what, &ra, &rb);
    iv_res_free(&ra);
    iv_res_free(&rb);
}

void test_ivfpq_determinism(void)
{
    iv_data d;
    vecidx *a, *b, *c, *other;
    iv_res r1, r2;
    vecidx_search_opts o;
    iv_make(&d, 808, 4500, 24, 40, 40, 0);
    a = iv_det_build(&d, 7, 1, 1, 32, VECIDX_QUANT_FLAT);
    b = iv_det_build(&d, 7, 2, 1, 32, VECIDX_QUANT_FLAT);
    c = iv_det_build(&d, 7, 2, 1, 32, VECIDX_QUANT_FLAT);
    other = iv_det_build(&d, 8, 1, 1, 32, VECIDX_QUANT_FLAT);
    if (!a || !b || !c || !other) goto out;
    /* code distances over every list show every centroid and code */
    iv_det_compare("threads 1 and 2", a, b, &d, 1, 32, 100);
    iv_det_compare("same seed, two threads, twice", b, c, &d, 1, 32, 100);
    iv_det_compare("threads 1 and 2, nprobe 3", a, b, &d, 1, 3, IV_K);
    iv_det_compare("threads 1 and 2, re-ranked", a, b, &d, 4, 3, IV_K);
    /* and the seed matters: another seed gives another model */
    iv_res_init(&r1, d.nq, 100);
    iv_res_init(&r2, d.nq, 100);
    memset(&o, 0, sizeof o);
    o.nprobe = 32;
    o.refine = 1;
    iv_search_all(a, &d, &o, &r1);
    iv_search_all(other, &d, &o, &r2);
    CHECKF(!iv_same(&r1, &r2), "seeds 7 and 8 give the same code distances");
    iv_res_free(&r1);
    iv_res_free(&r2);
    /* search_batch on two threads answers as single searches do */
    iv_res_init(&r1, d.nq, IV_K);
    iv_res_init(&r2, d.nq, IV_K);
    o.nprobe = 5;
    o.refine = 3;
    iv_search_all(a, &d, &o, &r1);
    o.threads = 2;
    CHECK_OK(vecidx_search_batch(a, d.nq, d.q, IV_K, &o, r2.keys, r2.dists,
                                 r2.found));
    iv_check_same("search_batch", &r1, &r2);
    iv_res_free(&r1);
    iv_res_free(&r2);
out:
    vecidx_close(a);
    vecidx_close(b);
    vecidx_close(c);
    vecidx_close(other);
    iv_free(&d);
}

/* ---- degenerate training and parameters ------------------------------------
 */

/* Train on `n` rows of d (n < d->n), add all of d, and compare recall with
** an exact flat index: the index works whatever the shape. */
static void iv_small_shape(const char *what, uint32_t dim, uint32_t m,
                           uint32_t nlist, size_t ntrain, double floor)
{
    iv_data d;
    vecidx_params p;
    vecidx *ix, *flat;
    iv_res a, e;
    vecidx_search_opts o;
    vecidx_stats_t st;
    size_t i;
    double rec, err = 0, var;
    float *v = vt_xmalloc(dim * sizeof *v);
    iv_make(&d, 909 + dim, 2000, dim, 40, 40, 0);
    iv_params(&p, VECIDX_L2, dim, nlist, m, 0);
    ix = iv_build(&p, &d, ntrain);
    flat = iv_flat(VECIDX_L2, &d);
    if (!ix || !flat) goto out;
    CHECK_OK(vecidx_stats(ix, &st));
    CHECKF(st.pq_m == (m ? m : (dim / 4 ? (dim / 4 > 64 ? 64 : dim / 4) : 1)),
           "%s: pq_m %u", what, (unsigned)st.pq_m);
    CHECK_OK(vecidx_check(ix));
    memset(&o, 0, sizeof o);
    o.nprobe = st.nlist; /* every list: only the codes limit recall */
    iv_res_init(&a, d.nq, IV_K);
    iv_res_init(&e, d.nq, IV_K);
    iv_search_all(ix, &d, &o, &a);
    iv_search_all(flat, &d, NULL, &e);
    iv_check_shape(what, ix, &a, IV_K);
    rec = iv_recall(&a, &e);
    for (i = 0; i < d.n; i++) {
        CHECK_OK(vecidx_get(ix, d.keys[i], v));
        err += iv_sqdist(v, d.vecs + i * dim, dim);
    }
    err /= (double)d.n;
    var = iv_variance(d.vecs, d.n, dim);
    if (getenv("VTEST_DEBUG"))
        printf("  %s: recall@10 %.3f, reconstruction error %.5f of variance "
               "%.3f\n",
               what, rec, err, var);
    CHECKF(rec >= floor, "%s: recall@10 %.3f below %.2f", what, rec, floor);
    CHECKF(err < 0.05 * var, "%s: reconstruction error %.5f, variance %.3f",
           what, err, var);
    iv_res_free(&a);
    iv_res_free(&e);
out:
    vecidx_close(ix);
    vecidx_close(flat);
    iv_free(&d);
    free(v);
}

void test_ivfpq_degenerate_training(void)
{
    enum {
        DIM = 8
    };
    iv_data d;
    vecidx_params p;
    vecidx *ix;
    size_t i, found, count;
    int trained;
    uint32_t nlist;
    uint64_t keys[IV_K];
    float dists[IV_K], *bad;
    vecidx_search_opts o;
    iv_make(&d, 1001, 600, DIM, 40, 4, 0);
    memset(&o, 0, sizeof o);

    /* fewer samples than the lists asked for: refused, nothing changes;
    ** then enough: trains (exactly as many: the test below) */
    iv_params(&p, VECIDX_L2, DIM, 64, 0, 0);
    if ((ix = iv_create(&p)) != NULL) {
        CHECK_OK(vecidx_add_batch(ix, 10, d.keys, d.vecs));
        CHECK_RC(vecidx_train(ix, 63, d.vecs), VECIDX_EINVAL);
        iv_stats(ix, &trained, &nlist, &count);
        CHECK(trained == 0 && nlist == 0 && count == 10);
        CHECK_OK(vecidx_search(ix, d.vecs, IV_K, NULL, keys, dists, &found));
        CHECK(found == 10 && keys[0] == d.keys[0] && dists[0] == 0.0f);
        CHECK_OK(vecidx_train(ix, 600, d.vecs));
        iv_stats(ix, &trained, &nlist, &count);
        CHECK(trained == 1 && nlist == 64 && count == 10);
        CHECK_OK(vecidx_check(ix));
        vecidx_close(ix);
    }
    /* a handful of samples and nlist 0: one list, works */
    iv_params(&p, VECIDX_L2, DIM, 0, 0, 0);
    if ((ix = iv_create(&p)) != NULL) {
        CHECK_OK(vecidx_train(ix, 5, d.vecs));
        iv_stats(ix, &trained, &nlist, &count);
        CHECK(trained == 1 && nlist == 1);
        CHECK_OK(vecidx_add_batch(ix, 40, d.keys, d.vecs));
        CHECK_OK(vecidx_search(ix, d.q, IV_K, NULL, keys, dists, &found));
        CHECK_EQ_U64(found, IV_K);
        CHECK_OK(vecidx_check(ix));
        vecidx_close(ix);
    }
    /* one sample */
    if ((ix = iv_create(&p)) != NULL) {
        CHECK_OK(vecidx_train(ix, 1, d.vecs));
        CHECK_OK(vecidx_add_batch(ix, 40, d.keys, d.vecs));
        CHECK_OK(vecidx_search(ix, d.q, IV_K, NULL, keys, dists, &found));
        CHECK_EQ_U64(found, IV_K);
        vecidx_close(ix);
    }

    /* NaN, infinity, and (cosine) zero samples are refused; the index
    ** stays untrained and unchanged */
    bad = vt_xmalloc(100 * DIM * sizeof *bad);
    for (i = 0; i < 3; i++) {
        int metric = i == 2 ? VECIDX_COSINE : VECIDX_L2;
        memcpy(bad, d.vecs, 100 * DIM * sizeof *bad);
        if (i == 0) bad[57 * DIM + 3] = NAN;
        if (i == 1) bad[99 * DIM + 7] = -INFINITY;
        if (i == 2) memset(bad + 40 * DIM, 0, DIM * sizeof *bad);
        iv_params(&p, metric, DIM, 4, 0, 0);
        if (!(ix = iv_create(&p))) continue;
        CHECK_OK(vecidx_add(ix, d.keys[0], d.vecs));
        CHECK_RC(vecidx_train(ix, 100, bad), VECIDX_EINVAL);
        iv_stats(ix, &trained, &nlist, &count);
        CHECK(trained == 0 && nlist == 0 && count == 1);
        CHECK_OK(vecidx_search(ix, d.vecs, IV_K, NULL, keys, dists, &found));
        CHECK(found == 1 && keys[0] == d.keys[0]);
        /* n = 0, NULL samples, NULL handle */
        CHECK_RC(vecidx_train(ix, 0, d.vecs), VECIDX_EINVAL);
        CHECK_RC(vecidx_train(ix, 10, NULL), VECIDX_EINVAL);
        CHECK_RC(vecidx_train(NULL, 10, d.vecs), VECIDX_EINVAL);
        iv_stats(ix, &trained, &nlist, &count);
        CHECK(trained == 0);
        vecidx_close(ix);
    }
    free(bad);

    /* flat and HNSW: training is a no-op that succeeds */
    for (i = 0; i < 2; i++) {
        vecidx *g = vt_create(i ? VECIDX_HNSW : VECIDX_FLAT, VECIDX_L2, DIM, 1);
        vecidx_stats_t st;
        if (!g) continue;
        CHECK_OK(vecidx_add_batch(g, 100, d.keys, d.vecs));
        CHECK_OK(vecidx_train(g, 100, d.vecs + 100 * DIM));
        CHECK_OK(vecidx_stats(g, &st));
        CHECK(st.trained == 1 && st.nlist == 0 && st.count == 100);
        CHECK_OK(vecidx_search(g, d.vecs, IV_K, NULL, keys, dists, &found));
        CHECK(found == IV_K && keys[0] == d.keys[0]);
        vecidx_close(g);
    }
    iv_free(&d);

    /* tiny and uneven shapes */
    /* measured recall (AVX2): 0.99, 0.85, 0.86, 0.79, 0.98, 0.86 */
    iv_small_shape("dim 1", 1, 0, 0, 2000, 0.90);
    iv_small_shape("dim 3", 3, 0, 0, 2000, 0.70);
    iv_small_shape("dim 10, pq_m 4", 10, 4, 16, 2000, 0.70);
    iv_small_shape("dim 10, pq_m 3", 10, 3, 16, 2000, 0.65);
    iv_small_shape("dim 10, pq_m 10", 10, 10, 16, 2000, 0.90);
    iv_small_shape("dim 5, pq_m 5, 64 samples", 5, 5, 16, 64, 0.70);
}

/* Parameters vecidx_create refuses for IVF-PQ, and the defaults. */
void test_ivfpq_params(void)
{
    vecidx_params p;
    vecidx *ix = (vecidx *)&p;
    vecidx_stats_t st;
    float v[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    size_t i;
    CHECK_OK(vecidx_params_init(&p, VECIDX_IVFPQ, VECIDX_L2, 10));
    CHECK(p.ivf_nlist == 0 && p.ivf_nprobe == 8 && p.pq_m == 0 &&
          p.pq_nbits == 8 && p.ivf_keep_vectors == 0 && p.ivf_refine == 0 &&
          p.ivf_quantizer == VECIDX_QUANT_AUTO && p.ivf_train_size == 0 &&
          p.progress == NULL && p.seed == 42);
    p.pq_m = 11; /* more slices than dimensions */
    CHECK_RC(vecidx_create(&p, &ix), VECIDX_EINVAL);
    CHECK(ix == NULL);
    p.pq_m = 10;
    CHECK_OK(vecidx_create(&p, &ix));
    vecidx_close(ix);
    p.pq_m = 0;
    for (i = 0; i < 4; i++) {
        static const uint32_t nbits[] = {4, 0, 16, 7};
        p.pq_nbits = nbits[i];
        CHECK_RC(vecidx_create(&p, &ix), VECIDX_ENOTSUP);
    }
    p.pq_nbits = 8;
    p.ivf_nlist = (1u << 20) + 1;
    CHECK_RC(vecidx_create(&p, &ix), VECIDX_EINVAL);
    p.ivf_nlist = 0;
    p.ivf_quantizer = 3;
    CHECK_RC(vecidx_create(&p, &ix), VECIDX_EINVAL);
    p.ivf_quantizer = VECIDX_QUANT_AUTO;
    p.ivf_nlist = 64; /* fewer vectors to train on than lists */
    p.ivf_train_size = 63;
    CHECK_RC(vecidx_create(&p, &ix), VECIDX_EINVAL);
    p.ivf_train_size = 64;
    CHECK_OK(vecidx_create(&p, &ix));
    vecidx_close(ix);
    p.ivf_nlist = 0;
    p.ivf_train_size = 0;
    p.ivf_refine = 2; /* re-ranking needs the full vectors */
    CHECK_RC(vecidx_create(&p, &ix), VECIDX_EINVAL);
    p.ivf_keep_vectors = 1;
    CHECK_OK(vecidx_create(&p, &ix));
    CHECK_OK(vecidx_stats(ix, &st));
    CHECK(st.kind == VECIDX_IVFPQ && st.trained == 0 && st.nlist == 0 &&
          st.count == 0);
    CHECK_OK(vecidx_add(ix, 1, v));
    CHECK_OK(vecidx_train(ix, 1, v));
    CHECK_OK(vecidx_stats(ix, &st));
    CHECK(st.trained == 1 && st.nlist == 1 && st.pq_m == 2); /* dim / 4 */
    vecidx_close(ix);
}

/* Fewer distinct points than centroids (all vectors identical, three
** distinct points, or as many samples as lists, which leaves every
** residual zero for the sub-quantizers). k-means once re-seeded an empty
** centroid from a "largest" cluster whose count it had made up for an
** earlier re-seed, found none of its points and copied the row just past
** the samples: a heap over-read under ASan, garbage centroids elsewhere. */
void test_ivfpq_few_distinct_points(void)
{
    enum {
        DIM = 8
    };
    iv_data d;
    vecidx_params p;
    vecidx *ix;
    size_t i, found, count;
    int trained;
    uint32_t nlist;
    uint64_t keys[IV_K];
    float dists[IV_K], *same;
    vecidx_search_opts o;
    iv_make(&d, 1001, 600, DIM, 40, 4, 0);
    memset(&o, 0, sizeof o);
    /* exactly as many samples as lists: every residual is zero, so the
    ** 256 sub-quantizer centroids have one distinct point to share */
    iv_params(&p, VECIDX_L2, DIM, 64, 0, 0);
    if ((ix = iv_create(&p)) != NULL) {
        CHECK_OK(vecidx_add_batch(ix, 10, d.keys, d.vecs));
        CHECK_OK(vecidx_train(ix, 64, d.vecs));
        iv_stats(ix, &trained, &nlist, &count);
        CHECK(trained == 1 && nlist == 64 && count == 10);
        CHECK_OK(vecidx_check(ix));
        o.nprobe = 64;
        CHECK_OK(vecidx_search(ix, d.vecs, IV_K, &o, keys, dists, &found));
        CHECK(found == 10 && keys[0] == d.keys[0]);
        vecidx_close(ix);
    }
    /* all samples identical: trains (nlist 0 and nlist 8), and with all
    ** vectors identical too, every code is the same, so the results are
    ** the k smallest keys, at one distance */
    same = vt_xmalloc(600 * DIM * sizeof *same);
    for (i = 0; i < 600; i++)
        memcpy(same + i * DIM, d.vecs, DIM * sizeof *same);
    for (i = 0; i < 2; i++) {
        uint64_t *sorted = vt_xmalloc(600 * sizeof *sorted);
        size_t j;
        iv_params(&p, VECIDX_L2, DIM, i ? 8 : 0, 0, 0);
        if (!(ix = iv_create(&p))) break;
        CHECK_OK(vecidx_train(ix, 600, same));
        iv_stats(ix, &trained, &nlist, &count);
        CHECK(trained == 1);
        CHECK(nlist == (i ? 8u : 15u)); /* min(4 sqrt(600), 600 / 39) */
        CHECK_OK(vecidx_add_batch(ix, 600, d.keys, same));
        o.nprobe = 1;
        CHECK_OK(
            vecidx_search(ix, d.vecs + DIM, IV_K, &o, keys, dists, &found));
        CHECK_EQ_U64(found, IV_K);
        memcpy(sorted, d.keys, 600 * sizeof *sorted);
        qsort(sorted, 600, sizeof *sorted, iv_u64_cmp);
        for (j = 0; j < found; j++) {
            CHECKF(keys[j] == sorted[j],
                   "identical vectors: rank %zu is key %llu, want %llu", j,
                   (unsigned long long)keys[j], (unsigned long long)sorted[j]);
            CHECK(dists[j] == dists[0]);
        }
        CHECK_OK(vecidx_check(ix));
        vecidx_close(ix);
        free(sorted);
    }
    /* three distinct points, 200 copies each, ten lists: trains, and a
    ** query at one point finds copies of that point in the one list it
    ** probes */
    for (i = 0; i < 600; i++)
        memcpy(same + i * DIM, d.vecs + (i % 3) * DIM, DIM * sizeof *same);
    iv_params(&p, VECIDX_L2, DIM, 10, 0, 0);
    if ((ix = iv_create(&p)) != NULL) {
        CHECK_OK(vecidx_train(ix, 600, same));
        CHECK_OK(vecidx_add_batch(ix, 600, d.keys, same));
        o.nprobe = 1;
        CHECK_OK(
            vecidx_search(ix, d.vecs + 2 * DIM, IV_K, &o, keys, dists, &found));
        CHECK_EQ_U64(found, IV_K);
        for (i = 0; i < found; i++) {
            long row = iv_row(&d, keys[i]);
            CHECKF(row >= 0 && row % 3 == 2,
                   "three points: result %zu is row %ld, not a copy of the "
                   "query",
                   i, row);
        }
        CHECK_OK(vecidx_check(ix));
        vecidx_close(ix);
    }
    free(same);

    iv_free(&d);
}

/* ---- progress
 * ---------------------------------------------------------------- */

#define IV_MAX_CALLS 4096

typedef struct iv_prog {
    size_t n;
    int bad_stage;
    const char *stage[IV_MAX_CALLS];
    double done[IV_MAX_CALLS];
} iv_prog;

static void iv_progress(const char *stage, double done, void *ctx)
{
    iv_prog *g = ctx;
    if (!stage || (strcmp(stage, "kmeans") != 0 && strcmp(stage, "pq") != 0 &&
                   strcmp(stage, "encode") != 0))
        g->bad_stage = 1;
    if (g->n < IV_MAX_CALLS) {
        g->stage[g->n] = stage;
        g->done[g->n] = done;
        g->n++;
    }
}

/* Index of the stage in the documented order, or -1. */
static int iv_stage_index(const char *stage)
{
    return strcmp(stage, "kmeans") == 0   ? 0
           : strcmp(stage, "pq") == 0     ? 1
           : strcmp(stage, "encode") == 0 ? 2
                                          : -1;
}

/* Every report: a known stage, a fraction in [0, 1], non-decreasing within
** the stage; stages in order kmeans, pq, encode (encode only when vectors
** were buffered); each stage's last report exactly 1. */
static void iv_check_progress(const char *what, const iv_prog *g,
                              int want_encode)
{
    double last[3] = {-1, -1, -1};
    int seen[3] = {0, 0, 0}, cur = 0, s;
    size_t i;
    CHECKF(!g->bad_stage, "%s: unknown stage name reported", what);
    CHECKF(g->n > 0 && g->n < IV_MAX_CALLS, "%s: %zu progress reports", what,
           g->n);
    for (i = 0; i < g->n; i++) {
        if ((s = iv_stage_index(g->stage[i])) < 0) continue;
        CHECKF(g->done[i] >= 0.0 && g->done[i] <= 1.0,
               "%s: %s reports %.17g, outside [0, 1]", what, g->stage[i],
               g->done[i]);
        CHECKF(g->done[i] >= last[s], "%s: %s went back from %.17g to %.17g",
               what, g->stage[i], last[s], g->done[i]);
        CHECKF(s >= cur, "%s: stage %s reported after a later stage", what,
               g->stage[i]);
        if (s > cur) cur = s;
        last[s] = g->done[i];
        seen[s] = 1;
    }
    CHECKF(seen[0] && seen[1], "%s: kmeans %d, pq %d reported", what, seen[0],
           seen[1]);
    CHECKF(seen[2] == want_encode, "%s: encode reported %d, expected %d", what,
           seen[2], want_encode);
    for (s = 0; s < 3; s++)
        CHECKF(!seen[s] || last[s] == 1.0, "%s: stage %d ends at %.17g, not 1",
               what, s, last[s]);
}

/* Train through vecidx_train (with and without buffered vectors) and by
** reaching ivf_train_size; record the reports. */
static void iv_progress_runs(uint32_t dim)
{
    iv_data d;
    vecidx_params p;
    vecidx *ix;
    iv_prog *g = vt_xmalloc(sizeof *g);
    char what[64];
    iv_make(&d, 1101, 1600, dim, 40, 0, 0);
    iv_params(&p, VECIDX_L2, dim, 16, 0, 0);
    p.progress = iv_progress;
    p.progress_ctx = g;
    /* explicit training, vectors buffered: kmeans, pq, encode */
    if ((ix = iv_create(&p)) != NULL) {
        CHECK_OK(vecidx_add_batch(ix, 100, d.keys, d.vecs));
        CHECK_EQ_U64(g->n, 0); /* buffering reports nothing */
        CHECK_OK(vecidx_train(ix, 1500, d.vecs + 100 * dim));
        snprintf(what, sizeof what, "dim %u, train with buffer", dim);
        iv_check_progress(what, g, 1);
        vecidx_close(ix);
    }
    /* explicit training of an empty index: nothing to encode */
    memset(g, 0, sizeof *g);
    if ((ix = iv_create(&p)) != NULL) {
        CHECK_OK(vecidx_train(ix, 1500, d.vecs));
        snprintf(what, sizeof what, "dim %u, train empty", dim);
        iv_check_progress(what, g, 0);
        vecidx_close(ix);
    }
    /* training started by an add */
    memset(g, 0, sizeof *g);
    p.ivf_train_size = 1000;
    if ((ix = iv_create(&p)) != NULL) {
        CHECK_OK(vecidx_add_batch(ix, 999, d.keys, d.vecs));
        CHECK_EQ_U64(g->n, 0);
        CHECK_OK(vecidx_add(ix, d.keys[999], d.vecs + 999 * dim));
        snprintf(what, sizeof what, "dim %u, train on add", dim);
        iv_check_progress(what, g, 1);
        vecidx_close(ix);
    }
    free(g);
    iv_free(&d);
}

/* pq_m = dim / 4: 8 and 3 sub-quantizers. With 3 (dim 12) an
** interpolated end of the "pq" stage, 2/3 + (1/3) * 25 / 25, is
** 0.9999999999999999 in double arithmetic, and a caller waiting for 1
** would never see the stage end. */
void test_ivfpq_progress(void)
{
    iv_progress_runs(32);
    iv_progress_runs(12);
}

/* ---- files
 * ------------------------------------------------------------------- */

/* A fresh directory /tmp/vecidx-ivfpq-PID-XXXXXX (TMPDIR honoured), and
** paths inside it; iv_rmdir removes what the tests put there. */
static char iv_dir[512];

static int iv_mkdir(void)
{
    return vt_tmp_dir(iv_dir, sizeof iv_dir, "ivfpq") == 0;
}

static const char *iv_path(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", iv_dir, name);
    return buf;
}

static void iv_unlink(const char *name)
{
    char p[700], w[720];
    iv_path(p, sizeof p, name);
    snprintf(w, sizeof w, "%s-wal", p);
    unlink(p);
    unlink(w);
}

static void iv_rmdir(const char *const *names, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) iv_unlink(names[i]);
    if (rmdir(iv_dir) != 0)
        vt_fail(__FILE__, __LINE__, "rmdir %s: %s", iv_dir, strerror(errno));
}

static int iv_write(const char *path, const unsigned char *b, size_t len)
{
    FILE *f = fopen(path, "wb");
    int ok;
    if (!f) return 0;
    ok = fwrite(b, 1, len, f) == len;
    return fclose(f) == 0 && ok;
}

static void iv_copy(const char *from, const char *to)
{
    size_t len;
    unsigned char *b = vt_slurp(from, &len);
    CHECKF(b != NULL, "cannot read %s", from);
    if (b) CHECKF(iv_write(to, b, len), "cannot write %s", to);
    free(b);
}

/* Two indexes hold the same: same count, stats, key set, vectors (to the
** bit: both kept vectors and reconstructions) and identical answers. */
static void iv_check_twins(const char *what, vecidx *a, vecidx *b,
                           const iv_data *d, uint32_t nlist, uint32_t refine)
{
    static const uint32_t probes[] = {1, 4, 0};
    vecidx_stats_t sa, sb;
    size_t na = 0, nb = 0, i;
    uint64_t *ka, *kb;
    float *va = vt_xmalloc(d->dim * sizeof *va), *vb;
    vb = vt_xmalloc(d->dim * sizeof *vb);
    CHECK_OK(vecidx_stats(a, &sa));
    CHECK_OK(vecidx_stats(b, &sb));
    CHECKF(sa.count == sb.count && sa.trained == sb.trained &&
               sa.nlist == sb.nlist && sa.pq_m == sb.pq_m,
           "%s: stats differ: count %llu/%llu trained %d/%d nlist %u/%u pq_m "
           "%u/%u",
           what, (unsigned long long)sa.count, (unsigned long long)sb.count,
           sa.trained, sb.trained, (unsigned)sa.nlist, (unsigned)sb.nlist,
           (unsigned)sa.pq_m, (unsigned)sb.pq_m);
    CHECK_OK(vecidx_keys(a, NULL, 0, &na));
    CHECK_OK(vecidx_keys(b, NULL, 0, &nb));
    CHECK_EQ_U64(na, nb);
    ka = vt_xmalloc((na + 1) * sizeof *ka);
    kb = vt_xmalloc((na + 1) * sizeof *kb);
    CHECK_OK(vecidx_keys(a, ka, na, &na));
    CHECK_OK(vecidx_keys(b, kb, na, &nb));
    qsort(ka, na, sizeof *ka, iv_u64_cmp);
    qsort(kb, na, sizeof *kb, iv_u64_cmp);
    CHECKF(memcmp(ka, kb, na * sizeof *ka) == 0, "%s: key sets differ", what);
    for (i = 0; i < na; i++) {
        CHECK_OK(vecidx_get(a, ka[i], va));
        CHECK_OK(vecidx_get(b, ka[i], vb));
        if (memcmp(va, vb, d->dim * sizeof *va) != 0) {
            vt_fail(__FILE__, __LINE__, "%s: key %llu has different vectors",
                    what, (unsigned long long)ka[i]);
            break;
        }
    }
    for (i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        iv_res ra, rb;
        vecidx_search_opts o;
        char w[128];
        memset(&o, 0, sizeof o);
        o.nprobe = probes[i] ? probes[i] : nlist;
        o.refine = refine;
        snprintf(w, sizeof w, "%s, nprobe %u", what, o.nprobe);
        iv_res_init(&ra, d->nq, IV_K);
        iv_res_init(&rb, d->nq, IV_K);
        iv_search_all(a, d, &o, &ra);
        iv_search_all(b, d, &o, &rb);
        iv_check_same(w, &ra, &rb);
        iv_res_free(&ra);
        iv_res_free(&rb);
    }
    free(ka);
    free(kb);
    free(va);
    free(vb);
}

static vecidx *iv_open(const char *path, unsigned flags)
{
    vecidx *ix = NULL;
    int rc = vecidx_open(path, NULL, flags, &ix);
    CHECKF(rc == VECIDX_OK, "open %s (flags 0x%x): %d %s", path, flags, rc,
           vecidx_errmsg(NULL));
    return ix;
}

/* Save, open read-only: the same index, answering identically; writes
** refused. For several metrics, with and without kept vectors. */
void test_ivfpq_persist_readonly(void)
{
    static const struct {
        int metric;
        uint32_t keep, refine, nlist;
    } cfg[] = {{VECIDX_L2, 0, 0, 32},
               {VECIDX_COSINE, 1, 3, 16},
               {VECIDX_IP, 1, 0, 24}};
    static const char *const names[] = {"ro.vx", "buf.vx"};
    iv_data d;
    char path[700];
    size_t c;
    if (!iv_mkdir()) return;
    iv_make(&d, 1201, 2500, 16, 40, 20, 0);
    iv_path(path, sizeof path, "ro.vx");
    for (c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        vecidx_params p;
        vecidx *mem, *ro;
        char what[64];
        snprintf(what, sizeof what, "read-only, config %zu", c);
        iv_params(&p, cfg[c].metric, 16, cfg[c].nlist, 4, cfg[c].keep);
        p.ivf_refine = cfg[c].refine;
        mem = iv_build(&p, &d, 2000);
        if (!mem) continue;
        CHECK_OK(vecidx_save(mem, path));
        if ((ro = iv_open(path, VECIDX_RDONLY)) != NULL) {
            vecidx_stats_t st;
            CHECK_OK(vecidx_check(ro));
            CHECK_OK(vecidx_stats(ro, &st));
            CHECK(st.trained == 1 && st.nlist == cfg[c].nlist && st.pq_m == 4 &&
                  st.mapped_bytes > 0);
            iv_check_twins(what, mem, ro, &d, cfg[c].nlist, 0);
            if (cfg[c].refine)
                iv_check_twins(what, mem, ro, &d, cfg[c].nlist, 1);
            CHECK_RC(vecidx_add(ro, 5, d.vecs), VECIDX_ESTATE);
            CHECK_RC(vecidx_remove(ro, d.keys[0]), VECIDX_ESTATE);
            CHECK_RC(vecidx_upsert(ro, d.keys[0], d.vecs), VECIDX_ESTATE);
            CHECK_RC(vecidx_train(ro, 100, d.vecs), VECIDX_ESTATE);
            CHECK(vecidx_contains(ro, d.keys[0]) == 1);
            vecidx_close(ro);
        }
        vecidx_close(mem);
    }
    /* a trained index with no vectors (never added, or all removed) */
    {
        vecidx_params p;
        vecidx *mem, *ro;
        size_t i, found, k;
        uint64_t keys[IV_K];
        float dists[IV_K];
        iv_params(&p, VECIDX_L2, 16, 8, 0, 0);
        for (k = 0; k < 2; k++) {
            if (!(mem = iv_create(&p))) break;
            CHECK_OK(vecidx_train(mem, 500, d.vecs));
            if (k == 1) {
                CHECK_OK(vecidx_add_batch(mem, 100, d.keys, d.vecs));
                for (i = 0; i < 100; i++)
                    CHECK_OK(vecidx_remove(mem, d.keys[i]));
            }
            CHECK_OK(vecidx_save(mem, path));
            if ((ro = iv_open(path, VECIDX_RDONLY)) != NULL) {
                int trained;
                uint32_t nlist;
                size_t count;
                iv_stats(ro, &trained, &nlist, &count);
                CHECK(trained == 1 && nlist == 8 && count == 0);
                CHECK_OK(vecidx_check(ro));
                CHECK_OK(
                    vecidx_search(ro, d.q, IV_K, NULL, keys, dists, &found));
                CHECK_EQ_U64(found, 0);
                vecidx_close(ro);
            }
            /* and writable: vectors go into its lists */
            if ((ro = iv_open(path, VECIDX_SYNC_OFF)) != NULL) {
                CHECK_OK(vecidx_add_batch(ro, 50, d.keys, d.vecs));
                CHECK_OK(vecidx_add_batch(mem, 50, d.keys, d.vecs));
                iv_check_twins("trained empty, then written", mem, ro, &d, 8,
                               0);
                vecidx_close(ro);
            }
            vecidx_close(mem);
        }
    }
    /* an untrained index with buffered vectors saves and opens as such */
    {
        vecidx_params p;
        vecidx *mem, *ro;
        iv_params(&p, VECIDX_L2, 16, 8, 0, 0);
        p.ivf_train_size = 2400;
        iv_path(path, sizeof path, "buf.vx");
        if ((mem = iv_create(&p)) != NULL) {
            CHECK_OK(vecidx_add_batch(mem, 2000, d.keys, d.vecs));
            CHECK_OK(vecidx_save(mem, path));
            if ((ro = iv_open(path, VECIDX_RDONLY)) != NULL) {
                int trained;
                uint32_t nlist;
                size_t count;
                iv_stats(ro, &trained, &nlist, &count);
                CHECK(trained == 0 && count == 2000);
                CHECK_OK(vecidx_check(ro));
                iv_check_twins("buffered, read-only", mem, ro, &d, 8, 0);
                vecidx_close(ro);
            }
            /* reopened for writing, it trains at its threshold, as the
            ** in-memory one does */
            if ((ro = iv_open(path, VECIDX_SYNC_OFF)) != NULL) {
                int trained;
                uint32_t nlist;
                size_t count;
                CHECK_OK(vecidx_add_batch(ro, 400, d.keys + 2000,
                                          d.vecs + 2000 * 16));
                CHECK_OK(vecidx_add_batch(mem, 400, d.keys + 2000,
                                          d.vecs + 2000 * 16));
                iv_stats(ro, &trained, &nlist, &count);
                CHECK(trained == 1 && nlist == 8 && count == 2400);
                iv_check_twins("trained on reaching the threshold", mem, ro, &d,
                               8, 0);
                vecidx_close(ro);
                /* the training was folded into the file */
                if ((ro = iv_open(path, VECIDX_RDONLY)) != NULL) {
                    iv_check_twins("reopened after training", mem, ro, &d, 8,
                                   0);
                    CHECK_OK(vecidx_check(ro));
                    vecidx_close(ro);
                }
            }
            vecidx_close(mem);
        }
    }
    iv_free(&d);
    iv_rmdir(names, sizeof names / sizeof names[0]);
}

/* The same writes to a file-backed index and to an in-memory twin. Rows
** [from, from + n) of d are added; keys of rows [rm, rm + nrm) removed;
** keys of rows [up, up + nup) get the vectors of rows [src, src + nup). */
static void iv_twin_writes(vecidx *a, vecidx *b, const iv_data *d, size_t from,
                           size_t n, size_t rm, size_t nrm, size_t up,
                           size_t nup, size_t src)
{
    vecidx *ix[2];
    size_t i, t;
    ix[0] = a;
    ix[1] = b;
    for (t = 0; t < 2; t++) {
        uint32_t dim = d->dim;
        for (i = 0; i < nrm; i++)
            CHECK_OK(vecidx_remove(ix[t], d->keys[rm + i]));
        for (i = 0; i < nup; i++)
            CHECK_OK(vecidx_upsert(ix[t], d->keys[up + i],
                                   d->vecs + (src + i) * dim));
        /* half one by one, half in one batch */
        for (i = 0; i < n / 2; i++)
            CHECK_OK(vecidx_add(ix[t], d->keys[from + i],
                                d->vecs + (from + i) * dim));
        CHECK_OK(vecidx_add_batch(ix[t], n - n / 2, d->keys + from + n / 2,
                                  d->vecs + (from + n / 2) * dim));
    }
}

/* A writable file-backed index: writes go to mapped lists (removes write
** them in place, adds and upserts grow them onto the heap) and the log;
** after each step it holds what an in-memory twin does: while open, in a
** copy of the file and its log (replay), after a checkpoint, and after
** reopening. */
static void iv_persist_writable(int metric, uint32_t keep, uint32_t refine)
{
    static const char *const names[] = {"w.vx", "copy.vx", "new.vx"};
    enum {
        DIM = 16,
        NLIST = 16
    };
    iv_data d;
    vecidx_params p;
    vecidx *mem, *w = NULL, *c;
    char path[700], cpath[700], wal[720], cwal[720], what[64];
    if (!iv_mkdir()) return;
    snprintf(what, sizeof what, "writable, metric %d keep %u", metric, keep);
    iv_make(&d, 1301, 4000, DIM, 40, 20, 0);
    iv_path(path, sizeof path, "w.vx");
    iv_path(cpath, sizeof cpath, "copy.vx");
    snprintf(wal, sizeof wal, "%s-wal", path);
    snprintf(cwal, sizeof cwal, "%s-wal", cpath);
    iv_params(&p, metric, DIM, NLIST, 4, keep);
    p.ivf_refine = refine;
    mem = iv_create(&p);
    if (!mem) goto out;
    CHECK_OK(vecidx_train(mem, 2000, d.vecs + 2000 * DIM));
    CHECK_OK(vecidx_add_batch(mem, 2000, d.keys, d.vecs));
    CHECK_OK(vecidx_save(mem, path));
    if (!(w = iv_open(path, VECIDX_SYNC_OFF))) goto out;
    iv_check_twins(what, mem, w, &d, NLIST, 0);
    /* remove 300, upsert 200 (with vectors of rows not in the index), add
    ** 300 new rows */
    iv_twin_writes(w, mem, &d, 2000, 300, 0, 300, 300, 200, 3500);
    CHECK_OK(vecidx_check(w));
    iv_check_twins("after writes", mem, w, &d, NLIST, 0);
    /* replay: a copy of the file and its log, taken while open */
    iv_copy(path, cpath);
    iv_copy(wal, cwal);
    if ((c = iv_open(cpath, VECIDX_RDONLY)) != NULL) {
        CHECK_OK(vecidx_check(c));
        iv_check_twins("log replayed", mem, c, &d, NLIST, 0);
        vecidx_close(c);
    }
    /* checkpoint, more writes, close, reopen */
    CHECK_OK(vecidx_checkpoint(w));
    iv_twin_writes(w, mem, &d, 2300, 100, 300, 50, 2000, 50, 3700);
    CHECK_OK(vecidx_sync(w));
    iv_check_twins("after checkpoint", mem, w, &d, NLIST, 0);
    vecidx_close(w);
    w = NULL;
    if ((c = iv_open(path, VECIDX_RDONLY)) != NULL) {
        CHECK_OK(vecidx_check(c));
        iv_check_twins("reopened", mem, c, &d, NLIST, 0);
        if (refine) iv_check_twins("reopened", mem, c, &d, NLIST, 1);
        vecidx_close(c);
    }
    if ((c = iv_open(path, VECIDX_SYNC_OFF)) != NULL) {
        /* a second round of writes on the reopened writer */
        iv_twin_writes(c, mem, &d, 2400, 100, 350, 100, 1000, 100, 3800);
        CHECK_OK(vecidx_checkpoint(c));
        vecidx_close(c);
        if ((c = iv_open(path, VECIDX_RDONLY)) != NULL) {
            iv_check_twins("written twice", mem, c, &d, NLIST, 0);
            CHECK_OK(vecidx_check(c));
            vecidx_close(c);
        }
    }
    /* a new file: CREATE, train (checkpointed at once), add; reopened it
    ** is the in-memory index */
    {
        char npath[700];
        vecidx *m2 = iv_create(&p), *f = NULL;
        iv_path(npath, sizeof npath, "new.vx");
        if (m2 && vecidx_open(npath, &p, VECIDX_CREATE | VECIDX_SYNC_OFF, &f) ==
                      VECIDX_OK) {
            CHECK_OK(vecidx_train(m2, 2000, d.vecs + 2000 * DIM));
            CHECK_OK(vecidx_train(f, 2000, d.vecs + 2000 * DIM));
            vecidx_close(f);
            if ((f = iv_open(npath, VECIDX_SYNC_OFF)) != NULL) {
                int trained;
                uint32_t nlist;
                size_t count;
                iv_stats(f, &trained, &nlist, &count);
                CHECK(trained == 1 && nlist == NLIST && count == 0);
                CHECK_OK(vecidx_add_batch(f, 1000, d.keys, d.vecs));
                CHECK_OK(vecidx_add_batch(m2, 1000, d.keys, d.vecs));
                vecidx_close(f);
            }
            if ((f = iv_open(npath, VECIDX_RDONLY)) != NULL) {
                iv_check_twins("created and trained", m2, f, &d, NLIST, 0);
                vecidx_close(f);
            }
        } else {
            vt_fail(__FILE__, __LINE__, "create %s: %s", npath,
                    vecidx_errmsg(NULL));
        }
        vecidx_close(m2);
    }
out:
    vecidx_close(w);
    vecidx_close(mem);
    iv_free(&d);
    iv_rmdir(names, sizeof names / sizeof names[0]);
}

void test_ivfpq_persist_writable(void)
{
    iv_persist_writable(VECIDX_L2, 0, 0);
    iv_persist_writable(VECIDX_COSINE, 1, 3);
}

/* ---- damaged files
 * ------------------------------------------------------------ */

/* The header's section table (vx_fhdr_encode in vecidx.c): section i at
** byte 216 + 24 i: u64 offset, u64 length, u32 CRC-32C; the IVF-PQ
** sections are 5 (model), 6 (list directory), 7 (list data), 8 (key map).
** The header's own CRC-32C covers bytes 0..507 and sits at 508. */
#define IV_HDR 512u
#define IV_SECT(i) (216u + 24u * (unsigned)(i))

static uint64_t iv_get64(const unsigned char *b, size_t off)
{
    uint64_t v = 0;
    int i;
    for (i = 7; i >= 0; i--) v = v << 8 | b[off + (size_t)i];
    return v;
}

static void iv_put32(unsigned char *b, size_t off, uint32_t v)
{
    b[off] = (unsigned char)v;
    b[off + 1] = (unsigned char)(v >> 8);
    b[off + 2] = (unsigned char)(v >> 16);
    b[off + 3] = (unsigned char)(v >> 24);
}

static uint32_t iv_crc32c(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    size_t i;
    int j;
    for (i = 0; i < n; i++) {
        c ^= p[i];
        for (j = 0; j < 8; j++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    return ~c;
}

/* Recompute section i's CRC and the header's, after a deliberate edit, so
** that only the structure checks can catch it. */
static void iv_reseal(unsigned char *b, int i)
{
    uint64_t off = iv_get64(b, IV_SECT(i)), len = iv_get64(b, IV_SECT(i) + 8);
    iv_put32(b, IV_SECT(i) + 16, iv_crc32c(b + off, (size_t)len));
    iv_put32(b, IV_HDR - 4, iv_crc32c(b, IV_HDR - 4));
}

/* Open a damaged file read-only and for writing: refused with
** VECIDX_ECORRUPT, or opened and then vecidx_check reports ECORRUPT (when
** `must` is set; otherwise the index may be fine). Searches on a handle
** that opened must not crash. Returns 1 if the damage was reported. */
static int iv_try_damaged(const char *path, const iv_data *d, int must,
                          const char *what)
{
    unsigned flags[2] = {VECIDX_RDONLY, VECIDX_SYNC_OFF};
    int f, caught = 1;
    for (f = 0; f < 2; f++) {
        vecidx *ix = NULL;
        char wal[720];
        int rc = vecidx_open(path, NULL, flags[f], &ix);
        snprintf(wal, sizeof wal, "%s-wal", path);
        if (rc == VECIDX_OK) {
            size_t i, found;
            uint64_t keys[IV_K];
            float dists[IV_K];
            vecidx_search_opts o;
            int crc = vecidx_check(ix);
            memset(&o, 0, sizeof o);
            o.nprobe = 1000;
            for (i = 0; i < 4; i++) /* whatever they return, they return */
                (void)vecidx_search(ix, d->q + i * d->dim, IV_K, &o, keys,
                                    dists, &found);
            (void)vecidx_get(ix, d->keys[0], (float *)dists);
            CHECKF(crc == VECIDX_OK || crc == VECIDX_ECORRUPT,
                   "%s: vecidx_check returned %d", what, crc);
            if (crc == VECIDX_OK) caught = 0;
            vecidx_close(ix);
        } else {
            CHECKF(rc == VECIDX_ECORRUPT,
                   "%s (flags 0x%x): open returned %d (%s), want ECORRUPT",
                   what, flags[f], rc, vecidx_errmsg(NULL));
        }
        unlink(wal);
    }
    CHECKF(caught || !must, "%s: damage not detected", what);
    return caught;
}

void test_ivfpq_corrupt_file(void)
{
    static const char *const names[] = {"good.vx", "bad.vx"};
    iv_data d;
    vecidx_params p;
    vecidx *mem;
    char good[700], bad[700], what[128];
    unsigned char *img = NULL, *b;
    size_t len = 0, s, k, off;
    int sect;
    if (!iv_mkdir()) return;
    iv_make(&d, 1401, 1500, 8, 40, 4, 0);
    iv_path(good, sizeof good, "good.vx");
    iv_path(bad, sizeof bad, "bad.vx");
    iv_params(&p, VECIDX_L2, 8, 16, 4, 1);
    if (!(mem = iv_build(&p, &d, d.n))) goto out;
    CHECK_OK(vecidx_save(mem, good));
    vecidx_close(mem);
    if (!(img = vt_slurp(good, &len)) || len < 4096) {
        vt_fail(__FILE__, __LINE__, "cannot read %s", good);
        goto out;
    }
    b = vt_xmalloc(len);
    /* one flipped byte at the start, middle and end of each IVF section */
    for (sect = 5; sect <= 8; sect++) {
        uint64_t so = iv_get64(img, IV_SECT(sect));
        uint64_t sl = iv_get64(img, IV_SECT(sect) + 8);
        CHECKF(sl > 0 && so >= 4096 && so + sl <= len,
               "IVF section %d: offset %llu length %llu in a %zu-byte file",
               sect, (unsigned long long)so, (unsigned long long)sl, len);
        if (!(sl > 0 && so >= 4096 && so + sl <= len)) continue;
        for (k = 0; k < 3; k++) {
            off = (size_t)so + (k == 0 ? 0 : k == 1 ? sl / 2 : sl - 1);
            memcpy(b, img, len);
            b[off] ^= 0x5A;
            iv_write(bad, b, len);
            snprintf(what, sizeof what, "section %d, byte %zu flipped", sect,
                     off);
            iv_try_damaged(bad, &d, 1, what);
        }
    }
    /* bytes flipped all over the file past the header page: detected or
    ** harmless (padding), never a crash */
    for (off = 4096 + 77; off < len; off += 1021) {
        memcpy(b, img, len);
        b[off] ^= 0xFF;
        iv_write(bad, b, len);
        snprintf(what, sizeof what, "byte %zu flipped", off);
        iv_try_damaged(bad, &d, 0, what);
    }
    /* the IVF fields of the header */
    for (off = 440; off < 488; off += 4) {
        memcpy(b, img, len);
        b[off] ^= 0x01;
        iv_write(bad, b, len);
        snprintf(what, sizeof what, "header byte %zu flipped", off);
        iv_try_damaged(bad, &d, 1, what);
    }
    /* truncated: refused */
    {
        size_t cut[] = {len - 1, len - 8, len / 2, 4096, 600, 100, 0};
        for (s = 0; s < sizeof cut / sizeof cut[0]; s++) {
            vecidx *ix = NULL;
            int rc;
            iv_write(bad, img, cut[s]);
            rc = vecidx_open(bad, NULL, VECIDX_RDONLY, &ix);
            CHECKF(rc == VECIDX_ECORRUPT,
                   "truncated to %zu bytes: open "
                   "returned %d, want ECORRUPT",
                   cut[s], rc);
            vecidx_close(ix);
        }
    }
    /* resealed damage (checksums recomputed): only structure checks can
    ** catch it */
    {
        uint64_t dir = iv_get64(img, IV_SECT(6));
        uint64_t map = iv_get64(img, IV_SECT(8));
        uint64_t maplen = iv_get64(img, IV_SECT(8) + 8);
        /* a list longer than the data section */
        memcpy(b, img, len);
        iv_put32(b, (size_t)dir + 8, 0x7FFFFFFFu);
        iv_reseal(b, 6);
        iv_write(bad, b, len);
        iv_try_damaged(bad, &d, 1, "list 0 length 2^31-1 (resealed)");
        /* a list starting past the data section */
        memcpy(b, img, len);
        iv_put32(b, (size_t)dir + 16 * 3, 0xFFFFFFF8u);
        iv_reseal(b, 6);
        iv_write(bad, b, len);
        iv_try_damaged(bad, &d, 1, "list 3 offset (resealed)");
        /* two lists over the same bytes */
        memcpy(b, img, len);
        memcpy(b + dir + 16 * 2, b + dir + 16 * 1, 8);
        iv_reseal(b, 6);
        iv_write(bad, b, len);
        iv_try_damaged(bad, &d, 1, "lists 1 and 2 overlap (resealed)");
        /* key map cells pointing anywhere: every used cell rewritten to
        ** list 0xFFFFF, position 2^32-1 */
        memcpy(b, img, len);
        for (k = 0; k + 8 <= maplen; k += 8)
            if (iv_get64(b, (size_t)map + k) != UINT64_MAX) {
                iv_put32(b, (size_t)map + k, 0xFFFFFFFFu);
                iv_put32(b, (size_t)map + k + 4, 0x000FFFFFu);
            }
        iv_reseal(b, 8);
        iv_write(bad, b, len);
        iv_try_damaged(bad, &d, 1, "key map cells out of range (resealed)");
        /* an empty key map */
        memcpy(b, img, len);
        memset(b + map, 0xFF, (size_t)maplen);
        iv_reseal(b, 8);
        iv_write(bad, b, len);
        iv_try_damaged(bad, &d, 1, "empty key map (resealed)");
        /* centroids and codebooks of NaN: searches stay safe */
        memcpy(b, img, len);
        memset(b + iv_get64(img, IV_SECT(5)), 0xFF,
               (size_t)iv_get64(img, IV_SECT(5) + 8));
        iv_reseal(b, 5);
        iv_write(bad, b, len);
        iv_try_damaged(bad, &d, 0, "model all NaN (resealed)");
    }
    free(b);
out:
    free(img);
    iv_free(&d);
    iv_rmdir(names, sizeof names / sizeof names[0]);
}

/* ---- the HNSW coarse quantizer
 * ------------------------------------------------- */

/* VECIDX_QUANT_HNSW ranks the lists through a graph over the centroids.
** The model is the same as with the flat quantizer (same seed and data),
** so only the probe differs: recall must stay close to the flat
** quantizer's, the answers must be well formed, and the graph must survive
** a save and open. */
void test_ivfpq_hnsw_quantizer(void)
{
    static const char *const names[] = {"hnsw.vx"};
    static const uint32_t probes[] = {2, 8, 32};
    enum {
        DIM = 16,
        NLIST = 256
    };
    iv_data d;
    vecidx_params p;
    vecidx *qf, *qh, *flat, *ro;
    iv_res e, rf, rh;
    size_t i;
    char path[700], what[64];
    vecidx_stats_t sf, sh;
    int mkd = iv_mkdir();
    iv_make(&d, 1501, 6000, DIM, 40, 60, 0);
    iv_params(&p, VECIDX_L2, DIM, NLIST, 4, 0);
    p.ivf_quantizer = VECIDX_QUANT_FLAT;
    qf = iv_build(&p, &d, d.n);
    p.ivf_quantizer = VECIDX_QUANT_HNSW;
    qh = iv_build(&p, &d, d.n);
    flat = iv_flat(VECIDX_L2, &d);
    if (!qf || !qh || !flat) goto out;
    CHECK_OK(vecidx_stats(qf, &sf));
    CHECK_OK(vecidx_stats(qh, &sh));
    CHECK(sh.nlist == NLIST && sh.trained == 1);
    CHECKF(sh.memory_bytes > sf.memory_bytes,
           "the HNSW quantizer's memory (%llu) is not counted (flat: %llu)",
           (unsigned long long)sh.memory_bytes,
           (unsigned long long)sf.memory_bytes);
    CHECK_OK(vecidx_check(qh));
    iv_res_init(&e, d.nq, IV_K);
    iv_res_init(&rf, d.nq, IV_K);
    iv_res_init(&rh, d.nq, IV_K);
    iv_search_all(flat, &d, NULL, &e);
    for (i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        vecidx_search_opts o;
        double rec_f, rec_h;
        memset(&o, 0, sizeof o);
        o.nprobe = probes[i];
        iv_search_all(qf, &d, &o, &rf);
        iv_search_all(qh, &d, &o, &rh);
        snprintf(what, sizeof what, "HNSW quantizer, nprobe %u", o.nprobe);
        iv_check_shape(what, qh, &rh, IV_K);
        rec_f = iv_recall(&rf, &e);
        rec_h = iv_recall(&rh, &e);
        if (getenv("VTEST_DEBUG"))
            printf("  nprobe %u: recall@10 flat quantizer %.3f, HNSW %.3f\n",
                   o.nprobe, rec_f, rec_h);
        CHECKF(rec_h >= rec_f - 0.02, "%s: recall %.3f, flat quantizer %.3f",
               what, rec_h, rec_f);
        CHECKF(rec_h >= 0.4, "%s: recall %.3f", what, rec_h);
    }
    /* removes and adds go through the same lists */
    for (i = 0; i < 500; i++) CHECK_OK(vecidx_remove(qh, d.keys[i]));
    CHECK_OK(vecidx_add_batch(qh, 200, d.keys, d.vecs));
    CHECK_OK(vecidx_check(qh));
    CHECK_EQ_U64(vecidx_count(qh), d.n - 300);
    if (mkd) {
        iv_path(path, sizeof path, "hnsw.vx");
        CHECK_OK(vecidx_save(qh, path));
        ro = NULL;
        CHECK_OK(vecidx_open(path, &p, VECIDX_RDONLY, &ro));
        if (ro) {
            vecidx_stats_t so;
            CHECK_OK(vecidx_stats(ro, &so));
            CHECK(so.memory_bytes > 0 && so.nlist == NLIST);
            CHECK_OK(vecidx_check(ro));
            iv_check_twins("HNSW quantizer reopened", qh, ro, &d, NLIST, 0);
            vecidx_close(ro);
        }
    }
    iv_res_free(&e);
    iv_res_free(&rf);
    iv_res_free(&rh);
out:
    vecidx_close(qf);
    vecidx_close(qh);
    vecidx_close(flat);
    iv_free(&d);
    if (mkd) iv_rmdir(names, 1);
}

/* ---- search arguments
 * ------------------------------------------------------------ */

void test_ivfpq_search_edges(void)
{
    enum {
        DIM = 12,
        NLIST = 16
    };
    iv_data d;
    vecidx_params p;
    vecidx *ix = NULL, *nokeep = NULL, *cos = NULL, *defr = NULL;
    vecidx_search_opts o;
    iv_res a, b;
    uint64_t keys[IV_K], *many;
    float dists[IV_K], q[DIM];
    size_t found, i;
    iv_make(&d, 1601, 1200, DIM, 40, 20, 0);
    iv_params(&p, VECIDX_L2, DIM, NLIST, 3, 1);
    p.ivf_nprobe = 3;
    ix = iv_build(&p, &d, d.n);
    p.ivf_refine = 4;
    defr = iv_build(&p, &d, d.n);
    p.ivf_refine = 0;
    p.ivf_keep_vectors = 0;
    nokeep = iv_build(&p, &d, d.n);
    if (!ix || !defr || !nokeep) goto out;
    iv_res_init(&a, d.nq, IV_K);
    iv_res_init(&b, d.nq, IV_K);
    memset(&o, 0, sizeof o);
    /* NULL options and nprobe 0 take params.ivf_nprobe */
    iv_search_all(ix, &d, NULL, &a);
    o.nprobe = 3;
    iv_search_all(ix, &d, &o, &b);
    iv_check_same("default nprobe", &a, &b);
    o.nprobe = 4;
    iv_search_all(ix, &d, &o, &b);
    CHECK(!iv_same(&a, &b)); /* nprobe is honoured */
    /* nprobe above nlist means all lists */
    o.nprobe = NLIST;
    iv_search_all(ix, &d, &o, &a);
    o.nprobe = 1000000;
    iv_search_all(ix, &d, &o, &b);
    iv_check_same("nprobe above nlist", &a, &b);
    /* the default re-rank factor, and refine 1 turning it off */
    memset(&o, 0, sizeof o);
    o.refine = 4;
    iv_search_all(ix, &d, &o, &a);
    iv_search_all(defr, &d, NULL, &b);
    iv_check_same("params.ivf_refine", &a, &b);
    o.refine = 1;
    iv_search_all(ix, &d, &o, &a);
    iv_search_all(defr, &d, &o, &b);
    iv_check_same("refine 1", &a, &b);
    iv_search_all(nokeep, &d, &o, &a);
    iv_check_same("refine 1 and no kept vectors", &a, &b);
    /* refine without kept vectors is ignored */
    o.refine = 8;
    iv_search_all(nokeep, &d, &o, &b);
    iv_check_same("refine without kept vectors", &a, &b);
    /* dists may be NULL */
    o.refine = 0;
    o.nprobe = 5;
    iv_search_all(ix, &d, &o, &a);
    for (i = 0; i < d.nq; i++) {
        CHECK_OK(
            vecidx_search(ix, d.q + i * DIM, IV_K, &o, keys, NULL, &found));
        CHECK(found == a.found[i] &&
              memcmp(keys, a.keys + i * IV_K, sizeof keys) == 0);
    }
    /* search_batch gives what single searches give */
    o.threads = 2;
    CHECK_OK(
        vecidx_search_batch(ix, d.nq, d.q, IV_K, &o, b.keys, b.dists, b.found));
    iv_check_same("search_batch", &a, &b);
    iv_res_free(&a);
    iv_res_free(&b);
    /* k beyond the count: every vector once, then padding */
    many = vt_xmalloc((d.n + 7) * sizeof *many);
    o.nprobe = NLIST;
    CHECK_OK(vecidx_search(ix, d.q, d.n + 7, &o, many, NULL, &found));
    CHECK_EQ_U64(found, d.n);
    for (i = d.n; i < d.n + 7; i++) CHECK(many[i] == UINT64_MAX);
    free(many);
    /* bad arguments */
    CHECK_RC(vecidx_search(ix, d.q, 0, &o, keys, dists, &found), VECIDX_EINVAL);
    CHECK_RC(vecidx_search(ix, NULL, 1, &o, keys, dists, &found),
             VECIDX_EINVAL);
    CHECK_RC(vecidx_search(ix, d.q, 1, &o, NULL, dists, &found), VECIDX_EINVAL);
    CHECK_RC(vecidx_search(ix, d.q, 1, &o, keys, dists, NULL), VECIDX_EINVAL);
    memcpy(q, d.q, sizeof q);
    q[5] = NAN;
    CHECK_RC(vecidx_search(ix, q, 1, &o, keys, dists, &found), VECIDX_EINVAL);
    q[5] = INFINITY;
    CHECK_RC(vecidx_search(ix, q, 1, &o, keys, dists, &found), VECIDX_EINVAL);
    CHECK_RC(vecidx_add(ix, 77, q), VECIDX_EINVAL);
    CHECK_RC(vecidx_upsert(ix, d.keys[0], q), VECIDX_EINVAL);
    CHECK(vecidx_count(ix) == d.n);
    /* cosine: a zero query or vector is refused */
    iv_params(&p, VECIDX_COSINE, DIM, 4, 0, 0);
    if ((cos = iv_build(&p, &d, 200)) != NULL) {
        memset(q, 0, sizeof q);
        CHECK_RC(vecidx_search(cos, q, 1, NULL, keys, dists, &found),
                 VECIDX_EINVAL);
        CHECK_RC(vecidx_add(cos, 77, q), VECIDX_EINVAL);
        /* a scaled copy of a stored vector is at distance ~0 from it */
        for (i = 0; i < DIM; i++) q[i] = 3.5f * d.vecs[10 * DIM + i];
        o.nprobe = 4;
        CHECK_OK(vecidx_search(cos, q, IV_K, &o, keys, dists, &found));
        CHECK_EQ_U64(found, IV_K);
        for (i = 0; i < found && keys[i] != d.keys[10]; i++) continue;
        CHECKF(i < found,
               "cosine: a scaled stored vector does not find itself "
               "in the top %d",
               IV_K);
        for (i = 0; i < found; i++)
            CHECKF(dists[i] > -0.1f && dists[i] < 2.1f,
                   "cosine distance %.6g outside [0, 2] by more than the code "
                   "error",
                   (double)dists[i]);
    }
out:
    vecidx_close(ix);
    vecidx_close(defr);
    vecidx_close(nokeep);
    vecidx_close(cos);
    iv_free(&d);
}

/* The graph over the centroids gives the same probes whatever
** params.threads is, and the same after a save and an open (where it is
** rebuilt): the header promises training that depends only on samples,
** params and seed. */
void test_ivfpq_hnsw_quantizer_threads(void)
{
    static const char *const names[] = {"hnswt.vx"};
    enum {
        DIM = 16,
        NLIST = 512
    };
    iv_data d;
    vecidx_params p;
    vecidx *one, *two, *ro = NULL;
    iv_res a, b;
    vecidx_search_opts o;
    char path[700];
    int mkd = iv_mkdir();
    iv_make(&d, 1501, 6000, DIM, 40, 600, 0);
    iv_params(&p, VECIDX_L2, DIM, NLIST, 4, 0);
    p.ivf_quantizer = VECIDX_QUANT_HNSW;
    p.threads = 1;
    one = iv_build(&p, &d, d.n);
    p.threads = 2;
    two = iv_build(&p, &d, d.n);
    if (!one || !two) goto out;
    memset(&o, 0, sizeof o);
    iv_res_init(&a, d.nq, IV_K);
    iv_res_init(&b, d.nq, IV_K);
    for (o.nprobe = 1; o.nprobe <= 4; o.nprobe *= 2) {
        iv_search_all(one, &d, &o, &a);
        iv_search_all(two, &d, &o, &b);
        iv_check_same("HNSW quantizer, threads 1 and 2", &a, &b);
    }
    o.nprobe = 1;
    iv_search_all(one, &d, &o, &a);
    if (mkd) {
        iv_path(path, sizeof path, "hnswt.vx");
        CHECK_OK(vecidx_save(one, path));
        CHECK_OK(vecidx_open(path, NULL, VECIDX_RDONLY, &ro));
        if (ro) {
            iv_search_all(ro, &d, &o, &b);
            iv_check_same("HNSW quantizer, saved and opened", &a, &b);
        }
    }
    iv_res_free(&a);
    iv_res_free(&b);
out:
    vecidx_close(one);
    vecidx_close(two);
    vecidx_close(ro);
    iv_free(&d);
    if (mkd) iv_rmdir(names, 1);
}

/* ---- concurrency
 * ------------------------------------------------------------------ */

typedef struct iv_reader {
    vecidx *ix;
    const iv_data *d;
    int seed;
    long bad, done;
    atomic_int *stop;
} iv_reader;

/* Searches until the writer is done (at most 100000), each well formed
** whatever the writer is doing: found <= k, sorted by (distance, key),
** distinct keys. */
static void *iv_reader_main(void *arg)
{
    iv_reader *r = arg;
    vt_rng g = {(uint64_t)r->seed};
    int i;
    for (i = 0; i < 100000 && !atomic_load(r->stop); i++) {
        uint64_t keys[IV_K];
        float dists[IV_K];
        size_t found = 0, j, l;
        vecidx_search_opts o;
        const float *q = r->d->q + (size_t)vt_below(&g, r->d->nq) * r->d->dim;
        memset(&o, 0, sizeof o);
        o.nprobe = 1 + (uint32_t)vt_below(&g, 8);
        o.refine = (uint32_t)vt_below(&g, 4);
        if (vecidx_search(r->ix, q, IV_K, &o, keys, dists, &found) !=
                VECIDX_OK ||
            found > IV_K) {
            r->bad++;
            continue;
        }
        for (j = 1; j < found; j++)
            if (dists[j - 1] > dists[j] ||
                (dists[j - 1] == dists[j] && keys[j - 1] >= keys[j]))
                r->bad++;
        for (j = 0; j < found; j++)
            for (l = 0; l < j; l++) r->bad += keys[l] == keys[j];
        r->done++;
    }
    return NULL;
}

/* Searches on two threads while the writer adds (training the index on
** the way), upserts and removes. */
void test_ivfpq_concurrency_search_writing(void)
{
    enum {
        DIM = 16
    };
    iv_data d;
    vecidx_params p;
    vecidx *ix;
    pthread_t th[2];
    iv_reader rd[2];
    size_t i;
    int t, started = 0;
    atomic_int stop;
    atomic_init(&stop, 0);
    iv_make(&d, 1801, 3000, DIM, 40, 50, 0);
    iv_params(&p, VECIDX_L2, DIM, 16, 4, 1);
    p.ivf_train_size = 1500;
    p.threads = 2;
    if (!(ix = iv_create(&p))) goto out;
    CHECK_OK(vecidx_add_batch(ix, 100, d.keys, d.vecs));
    for (t = 0; t < 2; t++) {
        rd[t].ix = ix;
        rd[t].d = &d;
        rd[t].seed = 90 + t;
        rd[t].bad = rd[t].done = 0;
        rd[t].stop = &stop;
        if (pthread_create(&th[t], NULL, iv_reader_main, &rd[t]) == 0)
            started |= 1 << t;
    }
    for (i = 100; i < 3000; i += 100)
        CHECK_OK(vecidx_add_batch(ix, 100, d.keys + i, d.vecs + i * DIM));
    for (i = 0; i < 300; i++) {
        CHECK_OK(vecidx_upsert(ix, d.keys[i], d.vecs + (2999 - i) * DIM));
        CHECK_OK(vecidx_remove(ix, d.keys[1000 + i]));
    }
    atomic_store(&stop, 1);
    for (t = 0; t < 2; t++)
        if (started & (1 << t)) {
            pthread_join(th[t], NULL);
            CHECKF(rd[t].bad == 0, "reader %d saw %ld malformed results", t,
                   rd[t].bad);
            if (getenv("VTEST_DEBUG"))
                printf("  reader %d: %ld searches\n", t, rd[t].done);
        }
    CHECK(started == 3);
    CHECK_EQ_U64(vecidx_count(ix), 2700);
    CHECK_OK(vecidx_check(ix));
    vecidx_close(ix);
out:
    iv_free(&d);
}
