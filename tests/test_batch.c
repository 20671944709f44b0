/*
** test_batch.c -- vecidx_add_batch (all or nothing) and
** vecidx_search_batch (the same answers as one search at a time, on any
** number of threads). Public API only.
*/
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vtest.h"

void test_batch_add(void)
{
    enum {
        DIM = 10,
        N = 2000
    };
    vt_rng r = {201};
    vt_set m;
    uint64_t *keys = vt_xmalloc(N * sizeof *keys);
    float *v = vt_xmalloc(N * DIM * sizeof *v), q[3 * DIM];
    size_t i;
    vecidx *ix = vt_create(VECIDX_FLAT, VECIDX_L2, DIM, 0);
    if (!ix) return;
    vt_set_init(&m, DIM, 2 * N);
    /* n = 0 is a no-op, NULL arrays allowed */
    CHECK_OK(vecidx_add_batch(ix, 0, NULL, NULL));
    CHECK_EQ_U64(vecidx_count(ix), 0);
    /* one big batch */
    vt_fill_uniform(&r, v, N * DIM, -1.0f, 1.0f);
    for (i = 0; i < N; i++) {
        keys[i] = vt_next(&r) | 1; /* odd: the second batch uses even */
        vt_set_put(&m, keys[i], v + i * DIM);
    }
    CHECK_OK(vecidx_add_batch(ix, N, keys, v));
    vt_check_contents("one batch", ix, &m);
    /* a batch of one, and a batch into a non-empty index */
    vt_fill_uniform(&r, v, DIM, -1.0f, 1.0f);
    keys[0] = 42;
    CHECK_OK(vecidx_add_batch(ix, 1, keys, v));
    vt_set_put(&m, 42, v);
    for (i = 0; i < 333; i++) {
        keys[i] = (vt_next(&r) & ~(uint64_t)1) + 44;
        vt_set_put(&m, keys[i], v + i * DIM);
    }
    CHECK_OK(vecidx_add_batch(ix, 333, keys, v));
    vt_check_contents("second batch", ix, &m);
    /* removed keys come back through a batch */
    for (i = 0; i < 50; i++) {
        CHECK_OK(vecidx_remove(ix, keys[i]));
        vt_set_del(&m, keys[i]);
    }
    vt_fill_uniform(&r, v, 50 * DIM, -1.0f, 1.0f);
    for (i = 0; i < 50; i++) vt_set_put(&m, keys[i], v + i * DIM);
    CHECK_OK(vecidx_add_batch(ix, 50, keys, v));
    vt_check_contents("removed keys in a batch", ix, &m);
    vt_make_queries(&r, &m, q, 3, VT_UNIFORM);
    for (i = 0; i < 3; i++) {
        uint64_t k[10];
        float d[10];
        size_t found;
        CHECK_OK(vecidx_search(ix, q + i * DIM, 10, NULL, k, d, &found));
        vt_check_exact("after batches", &m, VECIDX_L2, q + i * DIM, 10, NULL,
                       NULL, k, d, found);
    }
    vecidx_close(ix);
    vt_set_free(&m);
    free(keys);
    free(v);
}

/* The index as seen from outside: count and one search. */
typedef struct vt_snap {
    size_t count, found;
    uint64_t keys[8];
    float dists[8];
} vt_snap;

static void vt_snapshot(vecidx *ix, const float *q, vt_snap *s)
{
    memset(s, 0, sizeof *s);
    s->count = vecidx_count(ix);
    CHECK_OK(vecidx_search(ix, q, 8, NULL, s->keys, s->dists, &s->found));
}

static void vt_same_snapshot(const char *what, vecidx *ix, const float *q,
                             const vt_snap *before)
{
    vt_snap now;
    vt_snapshot(ix, q, &now);
    CHECKF(now.count == before->count && now.found == before->found &&
               memcmp(now.keys, before->keys, sizeof now.keys) == 0 &&
               memcmp(now.dists, before->dists, sizeof now.dists) == 0,
           "%s changed the index (count %zu -> %zu)", what, before->count,
           now.count);
}

/* A failed batch leaves no trace: no key of it present, contents as
** before, and the message names the offending row or key. */
static void vt_bad_batch(const char *what, vecidx *ix, const vt_set *m,
                         size_t n, const uint64_t *keys, const float *v,
                         int want, const char *named1, const char *named2)
{
    vt_snap before;
    size_t i;
    const char *msg;
    vt_snapshot(ix, v, &before);
    CHECK_RC(vecidx_add_batch(ix, n, keys, v), want);
    msg = vecidx_errmsg(ix);
    CHECKF(*msg != '\0', "%s: empty message", what);
    CHECKF(strstr(msg, named1) || (named2 && strstr(msg, named2)),
           "%s: message \"%s\" names neither %s nor %s", what, msg, named1,
           named2 ? named2 : "-");
    for (i = 0; i < n; i++)
        if (vt_set_find(m, keys[i]) < 0)
            CHECKF(vecidx_contains(ix, keys[i]) == 0,
                   "%s: key %llu of the failed batch was inserted", what,
                   (unsigned long long)keys[i]);
    vt_same_snapshot(what, ix, v, &before);
    vt_check_contents(what, ix, m);
}

void test_batch_add_all_or_nothing(void)
{
    enum {
        DIM = 6,
        N = 100,
        B = 50
    };
    static const int metrics[] = {VECIDX_L2, VECIDX_COSINE};
    size_t mi, i;
    for (mi = 0; mi < 2; mi++) {
        vt_rng r = {211 + mi};
        vt_set m;
        uint64_t keys[B];
        float v[B * DIM];
        vecidx *ix = vt_create(VECIDX_FLAT, metrics[mi], DIM, 0);
        if (!ix) return;
        vt_set_init(&m, DIM, N + B);
        vt_fill_index(ix, &m, N, &r, VT_UNIFORM);
        for (i = 0; i < B; i++) keys[i] = 900000 + i;
        vt_fill_uniform(&r, v, B * DIM, -1.0f, 1.0f);
        /* NaN in the last row */
        v[(B - 1) * DIM + 2] = NAN;
        vt_bad_batch("NaN in the last row", ix, &m, B, keys, v, VECIDX_EINVAL,
                     "49", "900049");
        v[(B - 1) * DIM + 2] = 0.5f;
        /* +infinity and -infinity in a middle row */
        v[17 * DIM] = INFINITY;
        vt_bad_batch("+inf in row 17", ix, &m, B, keys, v, VECIDX_EINVAL, "17",
                     "900017");
        v[17 * DIM] = -INFINITY;
        vt_bad_batch("-inf in row 17", ix, &m, B, keys, v, VECIDX_EINVAL, "17",
                     "900017");
        v[17 * DIM] = 0.25f;
        /* the same key twice within the batch */
        keys[40] = keys[10];
        vt_bad_batch("duplicate key", ix, &m, B, keys, v, VECIDX_EINVAL,
                     "900010", NULL);
        keys[40] = 900040;
        /* a key already in the index, in the last row */
        keys[B - 1] = m.keys[5];
        {
            char kbuf[32];
            snprintf(kbuf, sizeof kbuf, "%llu", (unsigned long long)m.keys[5]);
            vt_bad_batch("existing key", ix, &m, B, keys, v, VECIDX_EEXIST,
                         kbuf, "49");
        }
        keys[B - 1] = 900049;
        if (metrics[mi] == VECIDX_COSINE) {
            float save[DIM];
            memcpy(save, v + 33 * DIM, sizeof save);
            memset(v + 33 * DIM, 0, sizeof save);
            vt_bad_batch("zero vector under cosine", ix, &m, B, keys, v,
                         VECIDX_EINVAL, "33", "900033");
            memcpy(v + 33 * DIM, save, sizeof save);
        }
        /* repaired, the same batch goes in whole */
        CHECK_OK(vecidx_add_batch(ix, B, keys, v));
        for (i = 0; i < B; i++) vt_set_put(&m, keys[i], v + i * DIM);
        vt_check_contents("repaired batch", ix, &m);
        /* and a second time it is all EEXIST, nothing changes */
        vt_bad_batch("whole batch present", ix, &m, B, keys, v, VECIDX_EEXIST,
                     "900000", "0");
        vecidx_close(ix);
        vt_set_free(&m);
    }
}

static int vt_every_third(uint64_t key, void *ctx)
{
    (void)ctx;
    return key % 3 == 0;
}

/* nq queries one at a time into (keys, dists, found). */
static void vt_singles(vecidx *ix, const float *q, size_t nq, uint32_t dim,
                       size_t k, const vecidx_search_opts *o, uint64_t *keys,
                       float *dists, size_t *found)
{
    size_t i;
    for (i = 0; i < nq; i++)
        CHECK_OK(vecidx_search(ix, q + i * dim, k, o, keys + i * k,
                               dists + i * k, found + i));
}

void test_batch_search_matches_single(void)
{
    enum {
        DIM = 20,
        N = 1500,
        NQ = 37
    };
    static const int metrics[] = {VECIDX_L2, VECIDX_IP, VECIDX_COSINE};
    static const size_t ks[] = {1, 10, N + 5};
    static const unsigned threads[] = {0, 1, 2, 4};
    size_t mi, ki, ti, fi, i;
    for (mi = 0; mi < 3; mi++) {
        vt_rng r = {221 + mi};
        vt_set m;
        float q[NQ * DIM];
        vecidx *ix = vt_create(VECIDX_FLAT, metrics[mi], DIM, 0);
        if (!ix) return;
        vt_set_init(&m, DIM, N);
        vt_fill_index(ix, &m, N, &r, VT_UNIFORM);
        /* holes in the slots, so the scan skips removed rows */
        for (i = 0; i < N; i += 11) {
            CHECK_OK(vecidx_remove(ix, m.keys[i]));
            m.live[i] = 0;
        }
        vt_make_queries(&r, &m, q, NQ, VT_UNIFORM);
        for (ki = 0; ki < 3; ki++) {
            size_t k = ks[ki];
            uint64_t *k1 = vt_xmalloc(NQ * k * sizeof *k1);
            uint64_t *k2 = vt_xmalloc(NQ * k * sizeof *k2);
            float *d1 = vt_xmalloc(NQ * k * sizeof *d1);
            float *d2 = vt_xmalloc(NQ * k * sizeof *d2);
            size_t f1[NQ], f2[NQ];
            for (fi = 0; fi < 2; fi++) {
                vecidx_search_opts o;
                memset(&o, 0, sizeof o);
                if (fi) o.filter = vt_every_third;
                vt_singles(ix, q, NQ, DIM, k, &o, k1, d1, f1);
                /* the single searches themselves are right */
                for (i = 0; i < NQ; i += 6) {
                    char what[64];
                    snprintf(what, sizeof what, "single, k %zu, query %zu", k,
                             i);
                    vt_check_exact(what, &m, metrics[mi], q + i * DIM, k,
                                   fi ? vt_every_third : NULL, NULL, k1 + i * k,
                                   d1 + i * k, f1[i]);
                }
                for (ti = 0; ti < 4; ti++) {
                    o.threads = threads[ti];
                    memset(k2, 0xab, NQ * k * sizeof *k2);
                    memset(f2, 0xab, sizeof f2);
                    CHECK_OK(vecidx_search_batch(ix, NQ, q, k, &o, k2, d2, f2));
                    CHECKF(memcmp(f1, f2, sizeof f1) == 0 &&
                               memcmp(k1, k2, NQ * k * sizeof *k1) == 0 &&
                               memcmp(d1, d2, NQ * k * sizeof *d1) == 0,
                           "metric %d k %zu threads %u filter %zu: batch "
                           "differs from single searches",
                           metrics[mi], k, threads[ti], fi);
                    /* without distances: the same keys */
                    memset(k2, 0xab, NQ * k * sizeof *k2);
                    CHECK_OK(
                        vecidx_search_batch(ix, NQ, q, k, &o, k2, NULL, f2));
                    CHECK(memcmp(k1, k2, NQ * k * sizeof *k1) == 0);
                    CHECK(memcmp(f1, f2, sizeof f1) == 0);
                }
                /* a prefix of the queries: sizes that are no multiple of
                ** any block or group size */
                for (i = 1; i <= 9; i += 4) {
                    o.threads = 2;
                    CHECK_OK(vecidx_search_batch(ix, i, q, k, &o, k2, d2, f2));
                    CHECK(memcmp(k1, k2, i * k * sizeof *k1) == 0);
                    CHECK(memcmp(d1, d2, i * k * sizeof *d1) == 0);
                    CHECK(memcmp(f1, f2, i * sizeof *f1) == 0);
                }
            }
            /* opts NULL: index defaults */
            vt_singles(ix, q, NQ, DIM, k, NULL, k1, d1, f1);
            CHECK_OK(vecidx_search_batch(ix, NQ, q, k, NULL, k2, d2, f2));
            CHECK(memcmp(f1, f2, sizeof f1) == 0);
            CHECK(memcmp(k1, k2, NQ * k * sizeof *k1) == 0);
            CHECK(memcmp(d1, d2, NQ * k * sizeof *d1) == 0);
            free(k1);
            free(k2);
            free(d1);
            free(d2);
        }
        /* nq = 0: success, outputs untouched */
        {
            uint64_t kk = 7;
            float dd = 7;
            size_t ff = 7;
            CHECK_OK(vecidx_search_batch(ix, 0, q, 5, NULL, &kk, &dd, &ff));
            CHECK(kk == 7 && dd == 7 && ff == 7);
        }
        vecidx_close(ix);
        vt_set_free(&m);
    }
}

/* One kind of index for test_batch_query_anywhere: params set by kind,
** storage and dimension, filled with n random vectors (keys 1..n) and,
** for IVF-PQ, trained first. */
static vecidx *vt_anywhere_index(int kind, int metric, uint32_t storage,
                                 uint32_t keep, uint32_t dim, size_t n,
                                 vt_rng *r)
{
    vecidx_params p;
    vecidx *ix = NULL;
    float *v = vt_xmalloc(n * dim * sizeof *v);
    uint64_t *keys = vt_xmalloc(n * sizeof *keys);
    size_t i;
    CHECK_OK(vecidx_params_init(&p, kind, metric, dim));
    p.storage = storage;
    p.keep_vectors = keep;
    if (kind == VECIDX_IVFPQ) {
        p.ivf_nlist = 8;
        p.pq_m = 2;
        p.pq_nbits = 8;
        p.ivf_keep_vectors = 1;
    }
    vt_fill_uniform(r, v, n * dim, -1.0f, 1.0f);
    for (i = 0; i < n; i++) keys[i] = i + 1;
    CHECK_OK(vecidx_create(&p, &ix));
    if (ix && kind == VECIDX_IVFPQ) CHECK_OK(vecidx_train(ix, n, v));
    if (ix) CHECK_OK(vecidx_add_batch(ix, n, keys, v));
    free(v);
    free(keys);
    return ix;
}

/* Whether two searches of nq queries, k results each, answered the same
** to the bit: counts, keys and distances. */
static int vt_same_answers(const size_t *f0, const uint64_t *k0,
                           const float *d0, const size_t *f1,
                           const uint64_t *k1, const float *d1, size_t nq,
                           size_t k)
{
    return memcmp(f0, f1, nq * sizeof *f0) == 0 &&
           memcmp(k0, k1, nq * k * sizeof *k0) == 0 &&
           memcmp(d0, d1, nq * k * sizeof *d0) == 0;
}

/* A search copies a query that does not start on a cache line (and has
** at most 1,024 dimensions) before it walks: wherever the caller's query
** lies, the answer is the same to the bit as for the query on a line, one
** at a time and in a batch on two threads, with and without an allowed
** set; past 1,024 dimensions it is read in place. */
void test_batch_query_anywhere(void)
{
    enum {
        N = 300,
        K = 7,
        NQ = 9
    };
    static const struct {
        int kind, metric;
        uint32_t storage, keep, dim;
    } cases[] = {
        {VECIDX_HNSW, VECIDX_L2, VECIDX_STORE_F32, 0, 37},
        {VECIDX_HNSW, VECIDX_COSINE, VECIDX_STORE_F32, 0, 64},
        {VECIDX_HNSW, VECIDX_IP, VECIDX_STORE_I8, 0, 33},
        {VECIDX_HNSW, VECIDX_L2, VECIDX_STORE_I8, 1, 40},
        {VECIDX_HNSW, VECIDX_L2, VECIDX_STORE_F16, 0, 21},
        {VECIDX_HNSW, VECIDX_COSINE, VECIDX_STORE_BIN, 1, 70},
        {VECIDX_HNSW, VECIDX_L2, VECIDX_STORE_F32, 0, 1030},
        {VECIDX_FLAT, VECIDX_L2, VECIDX_STORE_F32, 0, 19},
        {VECIDX_IVFPQ, VECIDX_L2, VECIDX_STORE_F32, 0, 24},
        {VECIDX_IVFPQ, VECIDX_COSINE, VECIDX_STORE_F32, 0, 16},
    };
    static const uint64_t allow[] = {3, 9, 27, 81, 243, 5, 25, 125};
    size_t ci, off, fi, i;
    for (ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        uint32_t dim = cases[ci].dim;
        size_t ld = (dim + 15) / 16 * 16; /* a query per line-aligned row */
        vt_rng r = {241 + ci};
        vecidx *ix = vt_anywhere_index(cases[ci].kind, cases[ci].metric,
                                       cases[ci].storage, cases[ci].keep, dim,
                                       N, &r);
        float *blk = aligned_alloc(64, (NQ * ld + 16) * sizeof(float));
        float *q0 = vt_xmalloc(NQ * dim * sizeof *q0);
        uint64_t k0[NQ * K], k1[NQ * K];
        float d0[NQ * K], d1[NQ * K];
        size_t f0[NQ], f1[NQ];
        if (!ix || !blk) {
            CHECK(blk != NULL);
            vecidx_close(ix);
            free(blk);
            free(q0);
            return;
        }
        vt_fill_uniform(&r, q0, NQ * dim, -1.0f, 1.0f);
        for (fi = 0; fi < 2; fi++) {
            vecidx_search_opts o;
            memset(&o, 0, sizeof o);
            if (fi) {
                o.allow_keys = allow;
                o.allow_count = sizeof allow / sizeof allow[0];
            }
            /* the answers for each query on a line of its own */
            for (i = 0; i < NQ; i++) {
                memcpy(blk + i * ld, q0 + i * dim, dim * sizeof *q0);
                CHECK_OK(vecidx_search(ix, blk + i * ld, K, &o, k0 + i * K,
                                       d0 + i * K, f0 + i));
            }
            CHECK(f0[0] == K);
            for (off = 1; off < 16; off++) {
                memset(k1, 0xab, sizeof k1);
                for (i = 0; i < NQ; i++) {
                    memcpy(blk + off + i * ld, q0 + i * dim, dim * sizeof *q0);
                    CHECK_OK(vecidx_search(ix, blk + off + i * ld, K, &o,
                                           k1 + i * K, d1 + i * K, f1 + i));
                }
                CHECKF(vt_same_answers(f0, k0, d0, f1, k1, d1, NQ, K),
                       "case %zu filter %zu: a query %zu floats past a line "
                       "answers differently",
                       ci, fi, off);
                /* a batch: the queries back to back from off on */
                memcpy(blk + off, q0, NQ * dim * sizeof *q0);
                memset(k1, 0xab, sizeof k1);
                o.threads = 2;
                CHECK_OK(
                    vecidx_search_batch(ix, NQ, blk + off, K, &o, k1, d1, f1));
                o.threads = 0;
                CHECKF(vt_same_answers(f0, k0, d0, f1, k1, d1, NQ, K),
                       "case %zu filter %zu: a batch %zu floats past a line "
                       "answers differently",
                       ci, fi, off);
            }
        }
        vecidx_close(ix);
        free(blk);
        free(q0);
    }
}
