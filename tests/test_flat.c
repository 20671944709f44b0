/*
** test_flat.c -- the flat (exact) index against brute force in double
** precision: every metric, k at its edges, ties, filters, removal and slot
** reuse, upsert, reserve, determinism. Public API only.
*/
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vtest.h"

/* Search nq queries with k and check each against the model exactly;
** also that a search without distances gives the same keys. */
static void vt_search_exact(const char *what, vecidx *ix, const vt_set *m,
                            int metric, const float *q, size_t nq, size_t k,
                            const vecidx_search_opts *o, vt_filter_fn pure,
                            void *ctx)
{
    uint64_t *keys = vt_xmalloc(k * sizeof *keys);
    uint64_t *keys2 = vt_xmalloc(k * sizeof *keys2);
    float *dists = vt_xmalloc(k * sizeof *dists);
    size_t i, found, found2;
    char label[128];
    for (i = 0; i < nq; i++) {
        const float *qi = q + i * m->dim;
        snprintf(label, sizeof label, "%s, query %zu, k %zu", what, i, k);
        found = 12345;
        CHECK_OK(vecidx_search(ix, qi, k, o, keys, dists, &found));
        vt_check_exact(label, m, metric, qi, k, pure, ctx, keys, dists, found);
        CHECK_OK(vecidx_search(ix, qi, k, o, keys2, NULL, &found2));
        CHECKF(found2 == found &&
                   memcmp(keys, keys2, found * sizeof *keys) == 0,
               "%s: keys differ when distances are not asked for", label);
    }
    free(keys);
    free(keys2);
    free(dists);
}

static void vt_flat_exact(int metric, const char *name)
{
    static const struct {
        uint32_t dim;
        size_t n;
        int data;
    } cfg[] = {
        {24, 3000, VT_UNIFORM}, {100, 800, VT_CLUSTERED}, {7, 1500, VT_MIXED}};
    static const size_t ks[] = {1, 10, 100};
    size_t c, ki;
    for (c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        vt_rng r = {100 + c};
        vt_set m;
        float *q = vt_xmalloc(12 * cfg[c].dim * sizeof *q);
        vecidx *ix = vt_create(VECIDX_FLAT, metric, cfg[c].dim, 0);
        char what[96];
        if (!ix) return;
        vt_set_init(&m, cfg[c].dim, cfg[c].n);
        vt_fill_index(ix, &m, cfg[c].n, &r, cfg[c].data);
        vt_make_queries(&r, &m, q, 12, cfg[c].data);
        for (ki = 0; ki < 3; ki++) {
            snprintf(what, sizeof what, "%s dim %u n %zu", name,
                     (unsigned)cfg[c].dim, cfg[c].n);
            vt_search_exact(what, ix, &m, metric, q, 12, ks[ki], NULL, NULL,
                            NULL);
        }
        vt_check_contents(name, ix, &m);
        vecidx_close(ix);
        vt_set_free(&m);
        free(q);
    }
}

void test_flat_exact_l2(void)
{
    vt_flat_exact(VECIDX_L2, "l2");
}

void test_flat_exact_ip(void)
{
    vt_flat_exact(VECIDX_IP, "ip");
}

void test_flat_exact_cosine(void)
{
    vt_flat_exact(VECIDX_COSINE, "cosine");
}

/* Empty index, k above the count, k equal to it, k far above it. */
void test_flat_k_edge_cases(void)
{
    static const int metrics[] = {VECIDX_L2, VECIDX_IP, VECIDX_COSINE};
    size_t mi, i, found;
    uint64_t keys[64];
    float dists[64], q[5] = {0.5f, -1, 2, 0.25f, 1};
    for (mi = 0; mi < 3; mi++) {
        vt_rng r = {7 + mi};
        vt_set m;
        vecidx *ix = vt_create(VECIDX_FLAT, metrics[mi], 5, 0);
        if (!ix) return;
        vt_set_init(&m, 5, 16);
        /* empty: success, nothing found, every entry padded */
        found = 99;
        for (i = 0; i < 64; i++) keys[i] = i;
        CHECK_OK(vecidx_search(ix, q, 64, NULL, keys, dists, &found));
        CHECK_EQ_U64(found, 0);
        vt_check_sorted("empty index", keys, dists, found, 64);
        CHECK_OK(vecidx_search(ix, q, 1, NULL, keys, NULL, &found));
        CHECK_EQ_U64(found, 0);
        CHECK_EQ_U64(keys[0], UINT64_MAX);
        vt_fill_index(ix, &m, 6, &r, VT_UNIFORM);
        vt_search_exact("k > count", ix, &m, metrics[mi], q, 1, 9, NULL, NULL,
                        NULL);
        vt_search_exact("k = count", ix, &m, metrics[mi], q, 1, 6, NULL, NULL,
                        NULL);
        vt_search_exact("k = count - 1", ix, &m, metrics[mi], q, 1, 5, NULL,
                        NULL, NULL);
        vt_search_exact("k = 64", ix, &m, metrics[mi], q, 1, 64, NULL, NULL,
                        NULL);
        vecidx_close(ix);
        vt_set_free(&m);
    }
}

/* 40 copies of one vector under shuffled keys, spread among other vectors
** and across storage blocks: every copy has bit-identical distance to any
** query, so the top k must be exactly the k smallest of their keys. */
void test_flat_ties_broken_by_key(void)
{
    static const int metrics[] = {VECIDX_L2, VECIDX_IP, VECIDX_COSINE};
    enum {
        DIM = 8,
        NDUP = 40,
        NOTHER = 1200
    };
    size_t mi, i, found;
    for (mi = 0; mi < 3; mi++) {
        vt_rng r = {11 + mi};
        float a[DIM], q[DIM], v[DIM], dists[20];
        uint64_t dupkeys[NDUP], keys[20], sorted[NDUP];
        vecidx *ix = vt_create(VECIDX_FLAT, metrics[mi], DIM, 0);
        size_t nd = 0, j;
        if (!ix) return;
        vt_fill_uniform(&r, a, DIM, 0.5f, 1.0f);
        /* distinct keys (i * 17 % NDUP is a permutation), inserted in
        ** descending order so the scan meets the larger keys first */
        for (i = 0; i < NDUP; i++)
            dupkeys[i] = 2000000 + (i * 17 % NDUP) * 1000 + vt_below(&r, 1000);
        for (i = 0; i < NDUP; i++)
            for (j = i + 1; j < NDUP; j++)
                if (dupkeys[j] > dupkeys[i]) {
                    uint64_t t = dupkeys[i];
                    dupkeys[i] = dupkeys[j];
                    dupkeys[j] = t;
                }
        for (i = 0; i < NOTHER; i++) {
            if (i % (NOTHER / NDUP) == 0 && nd < NDUP)
                CHECK_OK(vecidx_add(ix, dupkeys[nd++], a));
            /* far from a under every metric: the opposite direction */
            vt_fill_uniform(&r, v, DIM, -1.0f, -0.5f);
            CHECK_OK(vecidx_add(ix, i, v));
        }
        CHECK_EQ_U64(nd, NDUP);
        for (i = 0; i < NDUP; i++) sorted[i] = dupkeys[NDUP - 1 - i];
        for (j = 0; j < 2; j++) {
            /* the vector itself, then a query near it */
            for (i = 0; i < DIM; i++)
                q[i] = j ? a[i] + vt_uniform(&r, -0.05f, 0.05f) : a[i];
            CHECK_OK(vecidx_search(ix, q, 10, NULL, keys, dists, &found));
            CHECK_EQ_U64(found, 10);
            for (i = 0; i < 10; i++) {
                CHECKF(keys[i] == sorted[i],
                       "metric %d query %zu: rank %zu is key %llu, wanted "
                       "%llu",
                       metrics[mi], j, i, (unsigned long long)keys[i],
                       (unsigned long long)sorted[i]);
                CHECK(dists[i] == dists[0]);
            }
            if (metrics[mi] == VECIDX_L2 && j == 0) CHECK(dists[0] == 0.0f);
            /* the boundary falls inside the tied group at every k */
            CHECK_OK(vecidx_search(ix, q, 20, NULL, keys, dists, &found));
            for (i = 0; i < 20; i++) CHECK_EQ_U64(keys[i], sorted[i]);
        }
        /* the smallest tied key removed: the next one moves up */
        CHECK_OK(vecidx_remove(ix, sorted[0]));
        CHECK_OK(vecidx_search(ix, a, 10, NULL, keys, dists, &found));
        for (i = 0; i < 10; i++) CHECK_EQ_U64(keys[i], sorted[i + 1]);
        /* re-added: it takes a reused slot, and still comes first */
        CHECK_OK(vecidx_add(ix, sorted[0], a));
        CHECK_OK(vecidx_search(ix, a, 10, NULL, keys, dists, &found));
        for (i = 0; i < 10; i++) CHECK_EQ_U64(keys[i], sorted[i]);
        CHECK_OK(vecidx_check(ix));
        vecidx_close(ix);
    }
}

/* Every uint64_t is a valid key, UINT64_MAX included: `found` tells a
** real UINT64_MAX result from padding. */
void test_flat_extreme_keys(void)
{
    static const uint64_t ek[] = {UINT64_MAX,
                                  0,
                                  1,
                                  UINT64_MAX - 1,
                                  (uint64_t)1 << 63,
                                  0x00000000ffffffffull,
                                  0xffffffff00000000ull};
    enum {
        NK = sizeof ek / sizeof ek[0]
    };
    float v[NK][3], out[3];
    uint64_t keys[10];
    float dists[10];
    size_t i, found;
    vecidx *ix = vt_create(VECIDX_FLAT, VECIDX_L2, 3, 0);
    vt_set m;
    if (!ix) return;
    vt_set_init(&m, 3, 16);
    for (i = 0; i < NK; i++) {
        v[i][0] = (float)i;
        v[i][1] = -(float)i;
        v[i][2] = 0.5f;
        CHECK_OK(vecidx_add(ix, ek[i], v[i]));
        vt_set_put(&m, ek[i], v[i]);
    }
    vt_check_contents("extreme keys", ix, &m);
    /* the UINT64_MAX vector is nearest: first result, and found says
    ** which of the entries equal to UINT64_MAX are real */
    CHECK_OK(vecidx_search(ix, v[0], 10, NULL, keys, dists, &found));
    CHECK_EQ_U64(found, NK);
    CHECK_EQ_U64(keys[0], UINT64_MAX);
    CHECK(dists[0] == 0.0f);
    vt_check_exact("extreme keys", &m, VECIDX_L2, v[0], 10, NULL, NULL, keys,
                   dists, found);
    for (i = 0; i < NK; i++) {
        CHECK_OK(vecidx_get(ix, ek[i], out));
        CHECK(memcmp(out, v[i], sizeof out) == 0);
    }
    CHECK_OK(vecidx_remove(ix, UINT64_MAX));
    vt_set_del(&m, UINT64_MAX);
    CHECK_RC(vecidx_remove(ix, UINT64_MAX), VECIDX_ENOTFOUND);
    CHECK_OK(vecidx_search(ix, v[0], 10, NULL, keys, dists, &found));
    CHECK_EQ_U64(found, NK - 1);
    vt_check_exact("UINT64_MAX removed", &m, VECIDX_L2, v[0], 10, NULL, NULL,
                   keys, dists, found);
    vt_check_contents("UINT64_MAX removed", ix, &m);
    vecidx_close(ix);
    vt_set_free(&m);
}

/* ---- filters --------------------------------------------------------------
 */

static int vt_mod7(uint64_t key, void *ctx)
{
    (void)ctx;
    return key % 7 == 0;
}

static int vt_none(uint64_t key, void *ctx)
{
    (void)key;
    (void)ctx;
    return 0;
}

static int vt_all(uint64_t key, void *ctx)
{
    (void)key;
    (void)ctx;
    return 1;
}

/* Admits the keys listed in ctx. */
typedef struct vt_keylist {
    const uint64_t *keys;
    size_t n;
} vt_keylist;

static int vt_listed(uint64_t key, void *ctx)
{
    const vt_keylist *l = ctx;
    size_t i;
    for (i = 0; i < l->n; i++)
        if (l->keys[i] == key) return 1;
    return 0;
}

/* Counts its calls and checks it gets its own context back. */
typedef struct vt_ctxcheck {
    unsigned magic;
    size_t calls, wrong;
    const void *self;
} vt_ctxcheck;

static int vt_ctx_filter(uint64_t key, void *ctx)
{
    vt_ctxcheck *c = ctx;
    if (c == NULL || c->magic != 0x5eedf00du || c->self != c) {
        if (c) c->wrong++;
        return 0;
    }
    c->calls++;
    return key % 2 == 1;
}

static int vt_odd(uint64_t key, void *ctx)
{
    (void)ctx;
    return key % 2 == 1;
}

/* A filter may call readers on the same handle. */
typedef struct vt_reentrant {
    vecidx *ix;
    size_t calls, bad;
} vt_reentrant;

static int vt_reader_filter(uint64_t key, void *ctx)
{
    vt_reentrant *re = ctx;
    re->calls++;
    if (vecidx_contains(re->ix, key) != 1) re->bad++;
    return key % 3 == 0;
}

static int vt_mod3(uint64_t key, void *ctx)
{
    (void)ctx;
    return key % 3 == 0;
}

void test_flat_filter(void)
{
    static const int metrics[] = {VECIDX_L2, VECIDX_IP, VECIDX_COSINE};
    enum {
        DIM = 16,
        N = 2000,
        NQ = 8
    };
    size_t mi, i, found;
    for (mi = 0; mi < 3; mi++) {
        int metric = metrics[mi];
        vt_rng r = {21 + mi};
        vt_set m;
        float q[NQ * DIM], v[DIM], dists[50];
        uint64_t keys[50], few[3];
        vt_keylist fl;
        vt_ctxcheck cc;
        vt_reentrant re;
        vecidx_search_opts o;
        vecidx *ix = vt_create(VECIDX_FLAT, metric, DIM, 0);
        if (!ix) return;
        vt_set_init(&m, DIM, N);
        for (i = 0; i < N; i++) {
            vt_fill_uniform(&r, v, DIM, -1.0f, 1.0f);
            CHECK_OK(vecidx_add(ix, i * 5 + 3, v));
            vt_set_put(&m, i * 5 + 3, v);
        }
        vt_make_queries(&r, &m, q, NQ, VT_UNIFORM);
        memset(&o, 0, sizeof o);
        o.filter = vt_mod7;
        vt_search_exact("key % 7 == 0", ix, &m, metric, q, NQ, 10, &o, vt_mod7,
                        NULL);
        vt_search_exact("key % 7 == 0", ix, &m, metric, q, NQ, 50, &o, vt_mod7,
                        NULL);
        o.filter = vt_all;
        vt_search_exact("admit all", ix, &m, metric, q, NQ, 10, &o, NULL, NULL);
        /* nothing admitted: success, found 0, padding */
        o.filter = vt_none;
        found = 77;
        CHECK_OK(vecidx_search(ix, q, 10, &o, keys, dists, &found));
        CHECK_EQ_U64(found, 0);
        vt_check_sorted("admit none", keys, dists, found, 10);
        /* three admitted, k = 10: exactly those three */
        few[0] = 3;
        few[1] = 5 * 1234 + 3;
        few[2] = 5 * (N - 1) + 3;
        fl.keys = few;
        fl.n = 3;
        o.filter = vt_listed;
        o.filter_ctx = &fl;
        vt_search_exact("three admitted", ix, &m, metric, q, NQ, 10, &o,
                        vt_listed, &fl);
        /* the context arrives unchanged, on every call */
        memset(&cc, 0, sizeof cc);
        cc.magic = 0x5eedf00du;
        cc.self = &cc;
        o.filter = vt_ctx_filter;
        o.filter_ctx = &cc;
        vt_search_exact("context", ix, &m, metric, q, NQ, 10, &o, vt_odd, NULL);
        CHECK(cc.calls > 0);
        CHECK_EQ_U64(cc.wrong, 0);
        /* a filter calling a reader on the same handle */
        re.ix = ix;
        re.calls = re.bad = 0;
        o.filter = vt_reader_filter;
        o.filter_ctx = &re;
        vt_search_exact("reader in filter", ix, &m, metric, q, 2, 10, &o,
                        vt_mod3, NULL);
        CHECK(re.calls > 0);
        CHECK_EQ_U64(re.bad, 0);
        /* removed keys stay out, filter or not */
        for (i = 0; i < N; i += 2) {
            CHECK_OK(vecidx_remove(ix, i * 5 + 3));
            vt_set_del(&m, i * 5 + 3);
        }
        o.filter = vt_mod7;
        o.filter_ctx = NULL;
        vt_search_exact("key % 7 after removals", ix, &m, metric, q, NQ, 10, &o,
                        vt_mod7, NULL);
        vecidx_close(ix);
        vt_set_free(&m);
    }
}

/* ---- removal --------------------------------------------------------------
 */

static void vt_deletes(int metric)
{
    enum {
        DIM = 16,
        N = 3000,
        NQ = 10
    };
    vt_rng r = {31 + (uint64_t)metric};
    vt_set m;
    vecidx_stats_t st;
    uint64_t slots_full, *gone;
    float q[NQ * DIM], v[DIM];
    size_t i, ngone = 0, found;
    uint64_t keys[20];
    float dists[20];
    vecidx *ix = vt_create(VECIDX_FLAT, metric, DIM, 0);
    if (!ix) return;
    vt_set_init(&m, DIM, 2 * N);
    gone = vt_xmalloc(N * sizeof *gone);
    vt_fill_index(ix, &m, N, &r, VT_UNIFORM);
    vt_check_contents("built", ix, &m);
    CHECK_OK(vecidx_stats(ix, &st));
    slots_full = st.slots;
    CHECK_EQ_U64(st.slots, N);
    /* remove a random 30% */
    for (i = 0; i < m.n; i++)
        if (vt_below(&r, 10) < 3) {
            CHECK_OK(vecidx_remove(ix, m.keys[i]));
            m.live[i] = 0;
            gone[ngone++] = m.keys[i];
        }
    CHECK(ngone > N / 4 && ngone < N * 35 / 100);
    vt_check_contents("30% removed", ix, &m);
    CHECK_EQ_U64(vecidx_count(ix), N - ngone);
    /* twice: not found, nothing changes */
    for (i = 0; i < ngone; i += 17) {
        CHECK_RC(vecidx_remove(ix, gone[i]), VECIDX_ENOTFOUND);
        CHECKF(*vecidx_errmsg(ix) != '\0',
               "no message for removing %llu "
               "twice",
               (unsigned long long)gone[i]);
        CHECK(vecidx_contains(ix, gone[i]) == 0);
        CHECK_RC(vecidx_get(ix, gone[i], v), VECIDX_ENOTFOUND);
    }
    CHECK_EQ_U64(vecidx_count(ix), N - ngone);
    /* queries at removed vectors: exact over what is left, and never a
    ** removed key (vt_check_exact checks membership) */
    vt_make_queries(&r, &m, q, NQ, VT_UNIFORM);
    for (i = 0; i < NQ / 2; i++) {
        long row = -1;
        size_t j;
        for (j = 0; j < m.n && row < 0; j++)
            if (m.keys[j] == gone[(i * 37) % ngone]) row = (long)j;
        memcpy(q + i * DIM, m.vecs + (size_t)row * DIM, sizeof v);
    }
    vt_search_exact("after removals", ix, &m, metric, q, NQ, 10, NULL, NULL,
                    NULL);
    vt_search_exact("after removals", ix, &m, metric, q, NQ, 20, NULL, NULL,
                    NULL);
    /* as many new keys as were removed: the freed slots are reused */
    for (i = 0; i < ngone; i++) {
        uint64_t key;
        do key = vt_next(&r);
        while (vt_set_row(&m, key) >= 0);
        vt_fill_uniform(&r, v, DIM, -1.0f, 1.0f);
        CHECK_OK(vecidx_add(ix, key, v));
        vt_set_put(&m, key, v);
    }
    CHECK_OK(vecidx_stats(ix, &st));
    CHECKF(st.slots == slots_full,
           "slots grew from %llu to %llu after "
           "removing and adding %zu",
           (unsigned long long)slots_full, (unsigned long long)st.slots, ngone);
    vt_check_contents("slots reused", ix, &m);
    vt_search_exact("slots reused", ix, &m, metric, q, NQ, 10, NULL, NULL,
                    NULL);
    /* a removed key added back */
    for (i = 0; i < ngone; i += 50) {
        vt_fill_uniform(&r, v, DIM, -1.0f, 1.0f);
        CHECK_OK(vecidx_add(ix, gone[i], v));
        vt_set_put(&m, gone[i], v);
    }
    vt_check_contents("removed keys back", ix, &m);
    CHECK_OK(vecidx_stats(ix, &st));
    slots_full = st.slots; /* the re-added keys took fresh slots */
    vt_search_exact("removed keys back", ix, &m, metric, q, NQ, 10, NULL, NULL,
                    NULL);
    /* everything removed: an empty index again */
    for (i = 0; i < m.n; i++)
        if (m.live[i]) {
            CHECK_OK(vecidx_remove(ix, m.keys[i]));
            m.live[i] = 0;
        }
    vt_check_contents("all removed", ix, &m);
    CHECK_OK(vecidx_search(ix, q, 20, NULL, keys, dists, &found));
    CHECK_EQ_U64(found, 0);
    vt_check_sorted("all removed", keys, dists, found, 20);
    CHECK_OK(vecidx_stats(ix, &st));
    CHECK_EQ_U64(st.count, 0);
    /* and refilled without growing */
    vt_fill_index(ix, &m, 100, &r, VT_UNIFORM);
    CHECK_OK(vecidx_stats(ix, &st));
    CHECKF(st.slots <= slots_full, "slots %llu > %llu",
           (unsigned long long)st.slots, (unsigned long long)slots_full);
    vt_check_contents("refilled", ix, &m);
    vt_search_exact("refilled", ix, &m, metric, q, NQ, 10, NULL, NULL, NULL);
    vecidx_close(ix);
    vt_set_free(&m);
    free(gone);
}

void test_flat_deletes(void)
{
    vt_deletes(VECIDX_L2);
    vt_deletes(VECIDX_COSINE);
}

/* ---- upsert ----------------------------------------------------------------
 */

void test_flat_upsert(void)
{
    static const int metrics[] = {VECIDX_L2, VECIDX_IP, VECIDX_COSINE};
    enum {
        DIM = 12,
        N = 500
    };
    size_t mi, i, found;
    for (mi = 0; mi < 3; mi++) {
        int metric = metrics[mi];
        vt_rng r = {41 + mi};
        vt_set m;
        float v[DIM], old[DIM], out[DIM], q[4 * DIM], dists[5];
        uint64_t keys[5], key;
        vecidx *ix = vt_create(VECIDX_FLAT, metric, DIM, 0);
        if (!ix) return;
        vt_set_init(&m, DIM, N + 10);
        vt_fill_index(ix, &m, N, &r, VT_UNIFORM);
        /* replace: get and search see the new vector, not the old one */
        key = m.keys[123];
        memcpy(old, m.vecs + 123 * DIM, sizeof old);
        for (i = 0; i < DIM; i++) v[i] = -old[i] * 3.0f;
        CHECK_OK(vecidx_upsert(ix, key, v));
        vt_set_put(&m, key, v);
        CHECK_EQ_U64(vecidx_count(ix), N);
        CHECK_OK(vecidx_get(ix, key, out));
        CHECK(memcmp(out, v, sizeof v) == 0);
        CHECK_OK(vecidx_search(ix, v, 5, NULL, keys, dists, &found));
        if (metric != VECIDX_IP) CHECK_EQ_U64(keys[0], key);
        vt_check_exact("upserted", &m, metric, v, 5, NULL, NULL, keys, dists,
                       found);
        CHECK_OK(vecidx_search(ix, old, 5, NULL, keys, dists, &found));
        for (i = 0; i < found; i++)
            CHECKF(keys[i] != key, "old vector of key %llu still found",
                   (unsigned long long)key);
        vt_check_exact("old vector", &m, metric, old, 5, NULL, NULL, keys,
                       dists, found);
        /* upsert of a new key inserts it */
        vt_fill_uniform(&r, v, DIM, -1.0f, 1.0f);
        CHECK(vecidx_contains(ix, 424242) == 0);
        CHECK_OK(vecidx_upsert(ix, 424242, v));
        vt_set_put(&m, 424242, v);
        CHECK_EQ_U64(vecidx_count(ix), N + 1);
        CHECK_OK(vecidx_get(ix, 424242, out));
        CHECK(memcmp(out, v, sizeof v) == 0);
        /* add of an existing key: EEXIST, and the stored vector stays */
        vt_fill_uniform(&r, v, DIM, -1.0f, 1.0f);
        CHECK_RC(vecidx_add(ix, 424242, v), VECIDX_EEXIST);
        CHECK_RC(vecidx_add(ix, key, v), VECIDX_EEXIST);
        CHECK_EQ_U64(vecidx_count(ix), N + 1);
        vt_check_contents("after EEXIST", ix, &m);
        /* upsert many times over, then the model still matches */
        for (i = 0; i < 300; i++) {
            uint64_t k2 = m.keys[vt_below(&r, m.n)];
            vt_fill_uniform(&r, v, DIM, -1.0f, 1.0f);
            CHECK_OK(vecidx_upsert(ix, k2, v));
            vt_set_put(&m, k2, v);
        }
        vt_check_contents("after 300 upserts", ix, &m);
        vt_make_queries(&r, &m, q, 4, VT_UNIFORM);
        vt_search_exact("after 300 upserts", ix, &m, metric, q, 4, 5, NULL,
                        NULL, NULL);
        vecidx_close(ix);
        vt_set_free(&m);
    }
}

/* Cosine stores vectors as given: get returns them unnormalised. */
void test_flat_cosine_stores_vectors_as_given(void)
{
    float a[4] = {3, 4, 0, 0}, b[4] = {0, 0, -0.001f, 0}, out[4];
    float q[4] = {6, 8, 0, 0}, nq[4] = {-3, -4, 0, 0}, dists[2];
    uint64_t keys[2];
    size_t found;
    vecidx *ix = vt_create(VECIDX_FLAT, VECIDX_COSINE, 4, 0);
    if (!ix) return;
    CHECK_OK(vecidx_add(ix, 1, a));
    CHECK_OK(vecidx_add(ix, 2, b));
    CHECK_OK(vecidx_get(ix, 1, out));
    CHECK(memcmp(out, a, sizeof a) == 0);
    CHECK_OK(vecidx_get(ix, 2, out));
    CHECK(memcmp(out, b, sizeof b) == 0);
    /* same direction: 0; orthogonal: 1; opposite: 2 */
    CHECK_OK(vecidx_search(ix, q, 2, NULL, keys, dists, &found));
    CHECK_EQ_U64(found, 2);
    CHECK_EQ_U64(keys[0], 1);
    CHECKF(fabs(dists[0]) <= 1e-6, "cos distance %.9g, wanted 0",
           (double)dists[0]);
    CHECKF(fabs(dists[1] - 1.0) <= 1e-6, "cos distance %.9g, wanted 1",
           (double)dists[1]);
    CHECK_OK(vecidx_search(ix, nq, 2, NULL, keys, dists, &found));
    CHECK_EQ_U64(keys[1], 1);
    CHECKF(fabs(dists[1] - 2.0) <= 1e-6, "cos distance %.9g, wanted 2",
           (double)dists[1]);
    vecidx_close(ix);
}

/* Cosine is blind to scale, also where float32 products are not: with
** every vector (and the query) of norm about 1e-25, or 1e25, a query
** that is a stored vector finds it first at distance 0, alone and in a
** batch (flat, and IVF-PQ re-ranking with kept vectors). Before, a
** query's dot products with tiny vectors underflowed to 0. */
void test_cosine_far_norms(void)
{
    enum {
        N = 300,
        DIM = 8
    };
    static const float scale[2] = {1e-25f, 1e25f};
    int kind, si;
    for (kind = 0; kind < 2; kind++)
        for (si = 0; si < 2; si++) {
            vecidx_params p;
            vecidx *ix = NULL;
            vt_rng r = {91 + (uint64_t)si};
            float *v = vt_xmalloc(N * DIM * sizeof *v), d[3 * 2];
            uint64_t keys[N], got[3 * 2];
            size_t i, found[3];
            CHECK_OK(vecidx_params_init(&p, kind ? VECIDX_IVFPQ : VECIDX_FLAT,
                                        VECIDX_COSINE, DIM));
            p.threads = 1;
            if (kind) {
                p.ivf_nlist = 4;
                p.pq_m = 4;
                p.ivf_train_size = 200;
                p.ivf_keep_vectors = 1;
                p.ivf_refine = 50;
            }
            CHECK_OK(vecidx_create(&p, &ix));
            if (!ix) return;
            vt_fill_uniform(&r, v, N * DIM, -1.0f, 1.0f);
            for (i = 0; i < N * DIM; i++) v[i] *= scale[si];
            for (i = 0; i < N; i++) keys[i] = 1000 + i;
            CHECK_OK(vecidx_add_batch(ix, N, keys, v));
            for (i = 0; i < 3; i++) {
                const float *q = v + (i * 97) * DIM;
                CHECK_OK(vecidx_search(ix, q, 2, NULL, got, d, found));
                CHECKF(found[0] == 2 && got[0] == keys[i * 97] &&
                           fabsf(d[0]) <= 1e-5f,
                       "kind %d scale %g: query %zu found key %llu at %g", kind,
                       (double)scale[si], i, (unsigned long long)got[0],
                       (double)d[0]);
            }
            /* a batch of the same three */
            {
                float qs[3 * DIM];
                for (i = 0; i < 3; i++)
                    memcpy(qs + i * DIM, v + (i * 97) * DIM,
                           sizeof(float) * DIM);
                CHECK_OK(
                    vecidx_search_batch(ix, 3, qs, 2, NULL, got, d, found));
                for (i = 0; i < 3; i++)
                    CHECKF(got[i * 2] == keys[i * 97] &&
                               fabsf(d[i * 2]) <= 1e-5f,
                           "kind %d scale %g: batch query %zu found %llu at %g",
                           kind, (double)scale[si], i,
                           (unsigned long long)got[i * 2], (double)d[i * 2]);
            }
            vecidx_close(ix);
            free(v);
        }
}

/* Under cosine a stored vector longer than 2^100 (by 1 %, too) is
** refused, by add, upsert and add_batch, and leaves the index as it was:
** one of norm 1e36 scored -inf against every query (its float32 dot
** products overflow) and so came first in every result. Just under the
** bound it is stored and scored rightly, and a query may be as long as
** it likes. */
void test_cosine_long_refused(void)
{
    enum {
        DIM = 8
    };
    static const int kinds[3] = {VECIDX_FLAT, VECIDX_HNSW, VECIDX_IVFPQ};
    int ki;
    for (ki = 0; ki < 3; ki++) {
        vecidx *ix = vt_create(kinds[ki], VECIDX_COSINE, DIM, 1);
        float a[DIM] = {1, 0, 0, 0, 0, 0, 0, 0}, b[DIM] = {0, 1};
        float longv[DIM], under[DIM], just[DIM], q[DIM], d[3];
        float rows[2 * DIM];
        uint64_t keys[3], bk[2] = {10, 11};
        size_t i, found;
        vecidx_stats_t st;
        if (!ix) return;
        for (i = 0; i < DIM; i++) {
            longv[i] = i == 2 ? 1e36f : 0.0f;
            under[i] = i == 3 ? ldexpf(1.0f, 99) : 0.0f;
            /* past the bound by 1 %, and 3 % under it */
            just[i] = i == 5 ? ldexpf(1.01f, 100) : 0.0f;
        }
        CHECK_OK(vecidx_add(ix, 1, a));
        CHECK_OK(vecidx_add(ix, 2, b));
        CHECK_RC(vecidx_add(ix, 3, longv), VECIDX_EINVAL);
        CHECK(strstr(vecidx_errmsg(ix), "too long") != NULL);
        CHECK_RC(vecidx_upsert(ix, 1, longv), VECIDX_EINVAL);
        CHECK_RC(vecidx_add(ix, 3, just), VECIDX_EINVAL);
        just[5] = ldexpf(0.97f, 100);
        just[4] = ldexpf(0.1f, 100);
        memcpy(rows, b, sizeof b);
        memcpy(rows + DIM, longv, sizeof longv);
        CHECK_RC(vecidx_add_batch(ix, 2, bk, rows), VECIDX_EINVAL);
        CHECK(strstr(vecidx_errmsg(ix), "row 1") != NULL);
        CHECK_OK(vecidx_stats(ix, &st));
        CHECK_EQ_U64(st.count, 2);
        CHECK_OK(vecidx_add(ix, 4, under));
        CHECK_OK(vecidx_add(ix, 5, just));
        /* a long query, pointing as a does: a first, at 0 */
        memcpy(q, a, sizeof q);
        q[0] = 3e37f;
        CHECK_OK(vecidx_search(ix, q, 3, NULL, keys, d, &found));
        CHECKF(found == 3 && keys[0] == 1 && fabsf(d[0]) <= 1e-6f &&
                   fabsf(d[1] - 1.0f) <= 1e-6f,
               "kind %d: found %zu, first %llu at %g, then %g", kinds[ki],
               found, (unsigned long long)keys[0], (double)d[0], (double)d[1]);
        /* the two under the bound, each found by its own direction */
        memcpy(q, under, sizeof q);
        q[3] = 1.0f;
        CHECK_OK(vecidx_search(ix, q, 1, NULL, keys, d, &found));
        CHECKF(found == 1 && keys[0] == 4 && fabsf(d[0]) <= 1e-6f,
               "kind %d: found %llu at %g", kinds[ki],
               (unsigned long long)keys[0], (double)d[0]);
        for (i = 0; i < DIM; i++) q[i] = ldexpf(just[i], -100);
        CHECK_OK(vecidx_search(ix, q, 2, NULL, keys, d, &found));
        CHECKF(found == 2 && keys[0] == 5 && fabsf(d[0]) <= 1e-6f,
               "kind %d: found %llu at %g", kinds[ki],
               (unsigned long long)keys[0], (double)d[0]);
        vecidx_close(ix);
    }
}

/* ---- reserve ----------------------------------------------------------- */

void test_flat_reserve(void)
{
    enum {
        DIM = 32,
        N = 1000
    };
    vt_rng r = {51};
    vt_set m;
    vecidx_params p;
    vecidx_stats_t st;
    uint64_t cap;
    float v[DIM];
    size_t i;
    vecidx *ix = vt_create(VECIDX_FLAT, VECIDX_L2, DIM, 0);
    if (!ix) return;
    vt_set_init(&m, DIM, N + 10);
    CHECK_OK(vecidx_stats(ix, &st));
    CHECK_EQ_U64(st.count, 0);
    CHECK_OK(vecidx_reserve(ix, 0));
    CHECK_OK(vecidx_reserve(ix, N));
    CHECK_OK(vecidx_stats(ix, &st));
    CHECKF(st.capacity >= N, "capacity %llu after reserving %d",
           (unsigned long long)st.capacity, N);
    CHECK_EQ_U64(st.count, 0);
    cap = st.capacity;
    for (i = 0; i < N; i++) {
        vt_fill_uniform(&r, v, DIM, -1.0f, 1.0f);
        CHECK_OK(vecidx_add(ix, i * i, v));
        vt_set_put(&m, i * i, v);
    }
    CHECK_OK(vecidx_stats(ix, &st));
    CHECKF(st.capacity == cap,
           "capacity grew from %llu to %llu within the "
           "reserved count",
           (unsigned long long)cap, (unsigned long long)st.capacity);
    /* reserving less than is stored changes nothing */
    CHECK_OK(vecidx_reserve(ix, 10));
    CHECK_OK(vecidx_reserve(ix, N));
    CHECK_OK(vecidx_stats(ix, &st));
    CHECK_EQ_U64(st.capacity, cap);
    vt_check_contents("reserved", ix, &m);
    /* VECIDX_MAX_COUNT + 1 fits a 32-bit size_t too (0xFFFFFFF1) */
#if SIZE_MAX > VECIDX_MAX_COUNT
    CHECK_RC(vecidx_reserve(ix, (size_t)VECIDX_MAX_COUNT + 1), VECIDX_EFULL);
    CHECK(*vecidx_errmsg(ix) != '\0');
    CHECK_RC(vecidx_reserve(ix, SIZE_MAX), VECIDX_EFULL);
#endif
    vt_check_contents("after EFULL", ix, &m);
    vecidx_close(ix);
    vt_set_free(&m);
    /* params.capacity reserves at create */
    CHECK_OK(vecidx_params_init(&p, VECIDX_FLAT, VECIDX_COSINE, 8));
    p.capacity = 300;
    ix = NULL;
    CHECK_OK(vecidx_create(&p, &ix));
    if (!ix) return;
    CHECK_OK(vecidx_stats(ix, &st));
    CHECKF(st.capacity >= 300, "capacity %llu with params.capacity 300",
           (unsigned long long)st.capacity);
    CHECK_EQ_U64(st.count, 0);
    vecidx_close(ix);
}

/* ---- determinism ----------------------------------------------------------
 */

/* The same calls on two handles: add, batch, remove, re-add, upsert. */
static vecidx *vt_scripted(int kind, int metric, uint32_t dim)
{
    vt_rng r = {61};
    vt_set m;
    size_t i;
    float *v = vt_xmalloc(dim * sizeof *v);
    vecidx *ix = vt_create(kind, metric, dim, 1);
    if (!ix) return NULL;
    vt_set_init(&m, dim, 2000);
    vt_fill_index(ix, &m, 1500, &r, VT_CLUSTERED);
    for (i = 0; i < m.n; i += 3) {
        CHECK_OK(vecidx_remove(ix, m.keys[i]));
        m.live[i] = 0;
    }
    for (i = 0; i < 300; i++) {
        vt_vector_for(i, 1, v, dim);
        CHECK_OK(vecidx_add(ix, 1000000 + i, v));
    }
    for (i = 1; i < m.n; i += 7) {
        vt_vector_for(i, 2, v, dim);
        CHECK_OK(vecidx_upsert(ix, m.keys[i], v));
    }
    vt_set_free(&m);
    free(v);
    return ix;
}

/* Two indexes built alike answer alike, to the bit. */
void vt_determinism(int kind, int metric)
{
    enum {
        DIM = 20,
        NQ = 20,
        K = 15
    };
    vecidx *a = vt_scripted(kind, metric, DIM);
    vecidx *b = vt_scripted(kind, metric, DIM);
    vt_rng r = {71};
    float q[NQ * DIM], da[NQ * K], db[NQ * K];
    uint64_t ka[NQ * K], kb[NQ * K];
    size_t fa[NQ], fb[NQ], i;
    if (!a || !b) {
        vecidx_close(a);
        vecidx_close(b);
        return;
    }
    vt_fill_uniform(&r, q, NQ * DIM, -1.0f, 1.0f);
    for (i = 0; i < NQ; i++) {
        CHECK_OK(vecidx_search(a, q + i * DIM, K, NULL, ka + i * K, da + i * K,
                               fa + i));
        CHECK_OK(vecidx_search(b, q + i * DIM, K, NULL, kb + i * K, db + i * K,
                               fb + i));
        CHECKF(fa[i] == fb[i] &&
                   memcmp(ka + i * K, kb + i * K, K * sizeof *ka) == 0 &&
                   memcmp(da + i * K, db + i * K, K * sizeof *da) == 0,
               "kind %d metric %d: query %zu differs between two identical "
               "builds",
               kind, metric, i);
    }
    CHECK_OK(vecidx_search_batch(b, NQ, q, K, NULL, kb, db, fb));
    CHECK(memcmp(fa, fb, sizeof fa) == 0);
    CHECK(memcmp(ka, kb, sizeof ka) == 0);
    CHECK(memcmp(da, db, sizeof da) == 0);
    CHECK_OK(vecidx_check(a));
    CHECK_OK(vecidx_check(b));
    vecidx_close(a);
    vecidx_close(b);
}

void test_flat_determinism(void)
{
    vt_determinism(VECIDX_FLAT, VECIDX_L2);
    vt_determinism(VECIDX_FLAT, VECIDX_IP);
    vt_determinism(VECIDX_FLAT, VECIDX_COSINE);
}
