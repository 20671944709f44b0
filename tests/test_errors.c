/*
** test_errors.c -- library identity, result codes and messages, and bad
** input: every rejected call returns the documented code, leaves a
** message that names the problem, and leaves the index as it was.
** Public API only.
*/
#define _POSIX_C_SOURCE 200809L

#include <ctype.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vtest.h"

/* Case-insensitive strstr. */
static int vt_contains(const char *hay, const char *needle)
{
    size_t n = strlen(needle), i;
    for (; *hay; hay++) {
        for (i = 0; i < n && hay[i] &&
                    tolower((unsigned char)hay[i]) ==
                        tolower((unsigned char)needle[i]);
             i++)
            continue;
        if (i == n) return 1;
    }
    return n == 0;
}

void test_library_version_and_simd(void)
{
    const char *simd = vecidx_simd();
    vecidx_stats_t st;
    vecidx *ix;
    CHECK(strcmp(vecidx_version(), VECIDX_VERSION_STRING) == 0);
    CHECK(vecidx_version_number() == VECIDX_VERSION_NUMBER);
    CHECK(VECIDX_VERSION_NUMBER == VECIDX_VERSION_MAJOR * 10000 +
                                       VECIDX_VERSION_MINOR * 100 +
                                       VECIDX_VERSION_PATCH);
    CHECK(simd != NULL);
    if (!simd) return;
    CHECKF(strcmp(simd, "scalar") == 0 || strcmp(simd, "avx2") == 0 ||
               strcmp(simd, "avx512") == 0 || strcmp(simd, "neon") == 0,
           "vecidx_simd() is '%s'", simd);
    CHECK(vecidx_simd() == simd || strcmp(vecidx_simd(), simd) == 0);
#if defined(VECIDX_NO_SIMD)
    CHECK(strcmp(simd, "scalar") == 0);
#endif
    ix = vt_create(VECIDX_FLAT, VECIDX_L2, 4, 0);
    if (!ix) return;
    CHECK_OK(vecidx_stats(ix, &st));
    CHECK(st.simd && strcmp(st.simd, simd) == 0);
    CHECK(st.kind == VECIDX_FLAT && st.metric == VECIDX_L2 && st.dim == 4);
    CHECK(st.mapped_bytes == 0);
    vecidx_close(ix);
}

void test_strerror_codes(void)
{
    static const int unknown[] = {1, -12, 12, 100, -100, INT_MIN, INT_MAX};
    int a, b;
    size_t i;
    for (a = VECIDX_EFULL; a <= VECIDX_OK; a++) {
        const char *s = vecidx_strerror(a);
        CHECKF(s && *s, "vecidx_strerror(%d) is empty", a);
        if (!s) continue;
        CHECKF(strcmp(s, "unknown error") != 0,
               "vecidx_strerror(%d) is \"unknown error\"", a);
        for (b = VECIDX_EFULL; b < a; b++)
            CHECKF(strcmp(s, vecidx_strerror(b)) != 0,
                   "codes %d and %d share the text \"%s\"", a, b, s);
    }
    for (i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *s = vecidx_strerror(unknown[i]);
        CHECKF(s && strcmp(s, "unknown error") == 0,
               "vecidx_strerror(%d) is \"%s\"", unknown[i], s ? s : "(null)");
    }
    /* the codes keep their documented values */
    CHECK(VECIDX_OK == 0 && VECIDX_EINVAL == -1 && VECIDX_ENOMEM == -2 &&
          VECIDX_EIO == -3 && VECIDX_ECORRUPT == -4 && VECIDX_ENOTFOUND == -5 &&
          VECIDX_EEXIST == -6 && VECIDX_EDIM == -7 && VECIDX_ESTATE == -8 &&
          VECIDX_EVERSION == -9 && VECIDX_ENOTSUP == -10 &&
          VECIDX_EFULL == -11);
}

/* Create with p must fail with want, set *out to NULL, and explain itself
** in vecidx_errmsg(NULL) with a message containing each needle. */
static void vt_bad_create(const char *what, const vecidx_params *p, int want,
                          const char *needle1, const char *needle2)
{
    vecidx *ix = (vecidx *)&ix; /* garbage the call must overwrite */
    const char *msg;
    CHECK_RC(vecidx_create(p, &ix), want);
    CHECKF(ix == NULL, "%s: *out not set to NULL", what);
    if (ix && ix != (vecidx *)&ix) vecidx_close(ix);
    msg = vecidx_errmsg(NULL);
    CHECKF(*msg != '\0', "%s: no message", what);
    CHECKF(!needle1 || vt_contains(msg, needle1),
           "%s: message \"%s\" does not mention \"%s\"", what, msg, needle1);
    CHECKF(!needle2 || vt_contains(msg, needle2),
           "%s: message \"%s\" does not mention \"%s\"", what, msg, needle2);
}

static void *vt_m(void *ctx, size_t n)
{
    (void)ctx;
    return malloc(n);
}

static void *vt_r(void *ctx, void *p, size_t o, size_t n)
{
    (void)ctx;
    (void)o;
    return realloc(p, n);
}

static void vt_f(void *ctx, void *p)
{
    (void)ctx;
    free(p);
}

void test_errors_create(void)
{
    vecidx_params p, good;
    vecidx *ix;
    float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    /* params_init: NULL, and bad shapes still fill the struct */
    CHECK_RC(vecidx_params_init(NULL, VECIDX_FLAT, VECIDX_L2, 8),
             VECIDX_EINVAL);
    CHECK_OK(vecidx_params_init(&good, VECIDX_FLAT, VECIDX_L2, 8));
    CHECK(good.kind == VECIDX_FLAT && good.metric == VECIDX_L2 &&
          good.dim == 8 && good.seed == 42 && good.threads == 0 &&
          good.hnsw_m == 16 && good.hnsw_ef_construction == 200 &&
          good.hnsw_ef_search == 64 && good.allocator.malloc_fn == NULL &&
          good.allocator.ctx == NULL);
    memset(&p, 0x55, sizeof p);
    CHECK_RC(vecidx_params_init(&p, 0, VECIDX_L2, 8), VECIDX_EINVAL);
    CHECK(p.dim == 8 && p.seed == 42 && p.hnsw_m == 16 &&
          p.allocator.free_fn == NULL);
    memset(&p, 0x55, sizeof p);
    CHECK_RC(vecidx_params_init(&p, VECIDX_FLAT, 99, 8), VECIDX_EINVAL);
    CHECK(p.kind == VECIDX_FLAT && p.seed == 42);
    memset(&p, 0x55, sizeof p);
    CHECK_RC(vecidx_params_init(&p, VECIDX_FLAT, VECIDX_L2, 0), VECIDX_EDIM);
    CHECK(p.kind == VECIDX_FLAT && p.dim == 0 && p.seed == 42);
    CHECK_RC(vecidx_params_init(&p, VECIDX_FLAT, VECIDX_L2, VECIDX_MAX_DIM + 1),
             VECIDX_EDIM);
    /* create: NULL arguments */
    ix = (vecidx *)&ix;
    CHECK_RC(vecidx_create(NULL, &ix), VECIDX_EINVAL);
    CHECK(ix == NULL);
    CHECK(*vecidx_errmsg(NULL) != '\0');
    CHECK_RC(vecidx_create(&good, NULL), VECIDX_EINVAL);
    CHECK(*vecidx_errmsg(NULL) != '\0');
    /* kinds and metrics: the message names the bad value */
    p = good;
    p.kind = 0;
    vt_bad_create("kind 0", &p, VECIDX_EINVAL, "kind", "0");
    p.kind = 99;
    vt_bad_create("kind 99", &p, VECIDX_EINVAL, "kind", "99");
    p.kind = -3;
    vt_bad_create("kind -3", &p, VECIDX_EINVAL, "kind", "-3");
    p = good;
    p.metric = 0;
    vt_bad_create("metric 0", &p, VECIDX_EINVAL, "metric", "0");
    p.metric = 99;
    vt_bad_create("metric 99", &p, VECIDX_EINVAL, "metric", "99");
    /* dimensions */
    p = good;
    p.dim = 0;
    vt_bad_create("dim 0", &p, VECIDX_EDIM, "dimension", "0");
    p.dim = VECIDX_MAX_DIM + 1;
    vt_bad_create("dim MAX+1", &p, VECIDX_EDIM, "dimension", "65537");
    p.dim = UINT32_MAX;
    vt_bad_create("dim UINT32_MAX", &p, VECIDX_EDIM, "dimension", "4294967295");
    /* the allocator: all three or none */
    p = good;
    p.allocator.malloc_fn = vt_m;
    vt_bad_create("malloc_fn only", &p, VECIDX_EINVAL, "alloc", NULL);
    p.allocator.realloc_fn = vt_r;
    vt_bad_create("free_fn missing", &p, VECIDX_EINVAL, "alloc", NULL);
    p.allocator.malloc_fn = NULL;
    p.allocator.free_fn = vt_f;
    vt_bad_create("malloc_fn missing", &p, VECIDX_EINVAL, "alloc", NULL);
    p.allocator.malloc_fn = vt_m;
    ix = NULL;
    CHECK_OK(vecidx_create(&p, &ix));
    if (ix) {
        CHECK_OK(vecidx_add(ix, 1, v));
        vecidx_close(ix);
    }
    /* HNSW parameters out of their documented ranges */
    CHECK_OK(vecidx_params_init(&p, VECIDX_HNSW, VECIDX_L2, 8));
    p.hnsw_m = 1;
    vt_bad_create("hnsw_m 1", &p, VECIDX_EINVAL, "1", NULL);
    p.hnsw_m = 129;
    vt_bad_create("hnsw_m 129", &p, VECIDX_EINVAL, "129", NULL);
    p.hnsw_m = 16;
    p.hnsw_ef_construction = 0;
    vt_bad_create("ef_construction 0", &p, VECIDX_EINVAL, NULL, NULL);
    p.hnsw_ef_construction = 200;
    p.hnsw_ef_search = 0;
    vt_bad_create("ef_search 0", &p, VECIDX_EINVAL, NULL, NULL);
    /* the largest dimension works */
    CHECK_OK(vecidx_params_init(&p, VECIDX_FLAT, VECIDX_IP, VECIDX_MAX_DIM));
    ix = NULL;
    CHECK_OK(vecidx_create(&p, &ix));
    if (ix) {
        float *big = vt_xmalloc(VECIDX_MAX_DIM * sizeof *big);
        uint64_t key;
        float d;
        size_t found;
        big[VECIDX_MAX_DIM - 1] = 2.0f;
        CHECK_OK(vecidx_add(ix, 9, big));
        CHECK_OK(vecidx_search(ix, big, 1, NULL, &key, &d, &found));
        CHECK(found == 1 && key == 9 && d == -4.0f);
        vecidx_close(ix);
        free(big);
    }
    /* close(NULL) is a no-op */
    vecidx_close(NULL);
}

/* ---- the index is unchanged by a rejected call -------------------------- */

typedef struct vt_state {
    size_t count, found;
    uint64_t keys[6];
    float dists[6];
} vt_state;

static void vt_state_get(vecidx *ix, const float *q, vt_state *s)
{
    memset(s, 0, sizeof *s);
    s->count = vecidx_count(ix);
    CHECK_OK(vecidx_search(ix, q, 6, NULL, s->keys, s->dists, &s->found));
}

static int vt_state_same(vecidx *ix, const float *q, const vt_state *s)
{
    vt_state now;
    vt_state_get(ix, q, &now);
    return now.count == s->count && now.found == s->found &&
           memcmp(now.keys, s->keys, sizeof now.keys) == 0 &&
           memcmp(now.dists, s->dists, sizeof now.dists) == 0;
}

/* Check a rejected call: its code, a message (for the handle when it had
** one), and no change to the index. */
#define VT_REJECT(call, want, on_handle)                                       \
    do {                                                                       \
        CHECK_RC(call, want);                                                  \
        CHECKF(*vecidx_errmsg((on_handle) ? ix : NULL) != '\0',                \
               "%s: no message", #call);                                       \
        CHECKF(vt_state_same(ix, q0, &before), "%s changed the index", #call); \
    } while (0)

void test_errors_null_arguments(void)
{
    enum {
        DIM = 5
    };
    vt_rng r = {501};
    vt_set m;
    vt_state before;
    float q0[DIM] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f}, v[2 * DIM], d[4];
    uint64_t k[4], bk[2] = {777, 778};
    size_t found[2];
    vecidx_stats_t st;
    vecidx *ix = vt_create(VECIDX_FLAT, VECIDX_L2, DIM, 0), *out;
    if (!ix) return;
    vt_set_init(&m, DIM, 64);
    vt_fill_index(ix, &m, 40, &r, VT_UNIFORM);
    vt_fill_uniform(&r, v, 2 * DIM, -1.0f, 1.0f);
    vt_state_get(ix, q0, &before);
    VT_REJECT(vecidx_add(NULL, 1, v), VECIDX_EINVAL, 0);
    VT_REJECT(vecidx_add(ix, 777, NULL), VECIDX_EINVAL, 1);
    VT_REJECT(vecidx_upsert(NULL, 1, v), VECIDX_EINVAL, 0);
    VT_REJECT(vecidx_upsert(ix, 777, NULL), VECIDX_EINVAL, 1);
    VT_REJECT(vecidx_add_batch(NULL, 2, bk, v), VECIDX_EINVAL, 0);
    VT_REJECT(vecidx_add_batch(ix, 2, NULL, v), VECIDX_EINVAL, 1);
    VT_REJECT(vecidx_add_batch(ix, 2, bk, NULL), VECIDX_EINVAL, 1);
    VT_REJECT(vecidx_remove(NULL, m.keys[0]), VECIDX_EINVAL, 0);
    VT_REJECT(vecidx_get(NULL, m.keys[0], v), VECIDX_EINVAL, 0);
    VT_REJECT(vecidx_get(ix, m.keys[0], NULL), VECIDX_EINVAL, 1);
    VT_REJECT(vecidx_contains(NULL, m.keys[0]), VECIDX_EINVAL, 0);
    VT_REJECT(vecidx_stats(NULL, &st), VECIDX_EINVAL, 0);
    VT_REJECT(vecidx_stats(ix, NULL), VECIDX_EINVAL, 1);
    VT_REJECT(vecidx_check(NULL), VECIDX_EINVAL, 0);
    VT_REJECT(vecidx_reserve(NULL, 10), VECIDX_EINVAL, 0);
    VT_REJECT(vecidx_search(NULL, q0, 4, NULL, k, d, found), VECIDX_EINVAL, 0);
    VT_REJECT(vecidx_search(ix, NULL, 4, NULL, k, d, found), VECIDX_EINVAL, 1);
    VT_REJECT(vecidx_search(ix, q0, 4, NULL, NULL, d, found), VECIDX_EINVAL, 1);
    VT_REJECT(vecidx_search(ix, q0, 4, NULL, k, d, NULL), VECIDX_EINVAL, 1);
    VT_REJECT(vecidx_search(ix, q0, 0, NULL, k, d, found), VECIDX_EINVAL, 1);
    VT_REJECT(vecidx_search_batch(NULL, 2, v, 2, NULL, k, d, found),
              VECIDX_EINVAL, 0);
    VT_REJECT(vecidx_search_batch(ix, 2, NULL, 2, NULL, k, d, found),
              VECIDX_EINVAL, 1);
    VT_REJECT(vecidx_search_batch(ix, 2, v, 2, NULL, NULL, d, found),
              VECIDX_EINVAL, 1);
    VT_REJECT(vecidx_search_batch(ix, 2, v, 2, NULL, k, d, NULL), VECIDX_EINVAL,
              1);
    VT_REJECT(vecidx_search_batch(ix, 2, v, 0, NULL, k, d, found),
              VECIDX_EINVAL, 1);
    /* files: argument checks only, nothing is touched on disk */
    VT_REJECT(vecidx_save(NULL, "/tmp/vecidx-test-never"), VECIDX_EINVAL, 0);
    VT_REJECT(vecidx_save(ix, NULL), VECIDX_EINVAL, 1);
    VT_REJECT(vecidx_sync(NULL), VECIDX_EINVAL, 0);
    VT_REJECT(vecidx_checkpoint(NULL), VECIDX_EINVAL, 0);
    VT_REJECT(vecidx_checkpoint(ix), VECIDX_ESTATE, 1);
    out = (vecidx *)&out;
    VT_REJECT(vecidx_open(NULL, NULL, 0, &out), VECIDX_EINVAL, 0);
    CHECK(out == NULL);
    VT_REJECT(vecidx_open("/nonexistent-vecidx-dir/x", NULL, 0, NULL),
              VECIDX_EINVAL, 0);
    out = (vecidx *)&out;
    VT_REJECT(vecidx_open("/nonexistent-vecidx-dir/x", NULL, 0x80u, &out),
              VECIDX_EINVAL, 0);
    CHECK(out == NULL);
    out = (vecidx *)&out;
    VT_REJECT(vecidx_open("/nonexistent-vecidx-dir/x", NULL,
                          VECIDX_SYNC_FULL | VECIDX_SYNC_OFF, &out),
              VECIDX_EINVAL, 0);
    CHECK(out == NULL);
    out = (vecidx *)&out;
    VT_REJECT(
        vecidx_open("/nonexistent-vecidx-dir/x", NULL, VECIDX_CREATE, &out),
        VECIDX_EINVAL, 0);
    CHECK(out == NULL);
    /* the valid corner cases of the same calls */
    CHECK(vecidx_count(NULL) == 0);
    CHECK_OK(vecidx_sync(ix)); /* in memory: a no-op */
    CHECK_OK(vecidx_add_batch(ix, 0, NULL, NULL));
    CHECK_OK(vecidx_search_batch(ix, 0, NULL, 4, NULL, NULL, NULL, NULL));
    CHECK_OK(vecidx_search(ix, q0, 4, NULL, k, NULL, found));
    CHECK(vt_state_same(ix, q0, &before));
    vt_check_contents("after rejected calls", ix, &m);
    vecidx_close(ix);
    vt_set_free(&m);
}

/* NaN, infinities and (under cosine) zero vectors, in every call that takes
** a vector; huge finite values are fine. */
void test_errors_bad_vectors(void)
{
    static const int metrics[] = {VECIDX_L2, VECIDX_IP, VECIDX_COSINE};
    enum {
        DIM = 6
    };
    size_t mi, i;
    for (mi = 0; mi < 3; mi++) {
        int metric = metrics[mi];
        vt_rng r = {511 + mi};
        vt_set m;
        vt_state before;
        float q0[DIM] = {1, -1, 0.5f, 2, 0.25f, -3}, v[DIM], qs[5 * DIM];
        float zero[DIM] = {0}, d[20];
        uint64_t k[20], bk[5] = {31337, 31338, 31339, 31340, 31341};
        size_t found[5], c;
        const char *msg;
        char comp[32];
        static const float bad[3] = {NAN, INFINITY, -INFINITY};
        static const char *const badname[3] = {"nan", "inf", "inf"};
        vecidx *ix = vt_create(VECIDX_FLAT, metric, DIM, 0);
        if (!ix) return;
        vt_set_init(&m, DIM, 64);
        vt_fill_index(ix, &m, 30, &r, VT_UNIFORM);
        vt_state_get(ix, q0, &before);
        for (i = 0; i < 3; i++) {
            for (c = 0; c < DIM; c += DIM - 1) { /* first and last component */
                float bk5[5 * DIM];
                memcpy(v, q0, sizeof v);
                v[c] = bad[i];
                VT_REJECT(vecidx_add(ix, 31337, v), VECIDX_EINVAL, 1);
                msg = vecidx_errmsg(ix);
                CHECKF(vt_contains(msg, badname[i]),
                       "add: message \"%s\" does not say %s", msg, badname[i]);
                CHECKF(vt_contains(msg, "31337"),
                       "add: message \"%s\" does not name the key", msg);
                snprintf(comp, sizeof comp, "component %zu", c);
                CHECKF(vt_contains(msg, comp),
                       "add: message \"%s\" does not name %s", msg, comp);
                VT_REJECT(vecidx_upsert(ix, m.keys[3], v), VECIDX_EINVAL, 1);
                VT_REJECT(vecidx_upsert(ix, 31337, v), VECIDX_EINVAL, 1);
                VT_REJECT(vecidx_search(ix, v, 3, NULL, k, d, found),
                          VECIDX_EINVAL, 1);
                msg = vecidx_errmsg(ix);
                CHECKF(vt_contains(msg, badname[i]),
                       "search: message \"%s\" does not say %s", msg,
                       badname[i]);
                /* in the last query of a batch, and the last row */
                vt_fill_uniform(&r, qs, 5 * DIM, -1.0f, 1.0f);
                memcpy(qs + 4 * DIM, v, sizeof v);
                VT_REJECT(vecidx_search_batch(ix, 5, qs, 3, NULL, k, d, found),
                          VECIDX_EINVAL, 1);
                msg = vecidx_errmsg(ix);
                CHECKF(vt_contains(msg, "4"),
                       "search_batch: message \"%s\" does not name query 4",
                       msg);
                memcpy(bk5, qs, sizeof bk5);
                VT_REJECT(vecidx_add_batch(ix, 5, bk, bk5), VECIDX_EINVAL, 1);
                msg = vecidx_errmsg(ix);
                CHECKF(vt_contains(msg, "31341") || vt_contains(msg, "4"),
                       "add_batch: message \"%s\" names neither row 4 nor "
                       "its key",
                       msg);
                CHECK(vecidx_contains(ix, 31337) == 0);
            }
        }
        /* two bad components: the first one is named */
        memcpy(v, q0, sizeof v);
        v[2] = INFINITY;
        v[5] = NAN;
        VT_REJECT(vecidx_add(ix, 31337, v), VECIDX_EINVAL, 1);
        msg = vecidx_errmsg(ix);
        CHECKF(vt_contains(msg, "component 2") && vt_contains(msg, "inf"),
               "add: message \"%s\" does not name the infinity at 2", msg);
        /* zero vectors: rejected under cosine only */
        if (metric == VECIDX_COSINE) {
            VT_REJECT(vecidx_add(ix, 31337, zero), VECIDX_EINVAL, 1);
            msg = vecidx_errmsg(ix);
            CHECKF(vt_contains(msg, "zero"),
                   "message \"%s\" does not say the vector is zero", msg);
            VT_REJECT(vecidx_upsert(ix, m.keys[2], zero), VECIDX_EINVAL, 1);
            VT_REJECT(vecidx_search(ix, zero, 3, NULL, k, d, found),
                      VECIDX_EINVAL, 1);
            msg = vecidx_errmsg(ix);
            CHECKF(vt_contains(msg, "zero"),
                   "message \"%s\" does not say the query is zero", msg);
            vt_fill_uniform(&r, qs, 5 * DIM, -1.0f, 1.0f);
            memcpy(qs + 2 * DIM, zero, sizeof zero);
            VT_REJECT(vecidx_search_batch(ix, 5, qs, 3, NULL, k, d, found),
                      VECIDX_EINVAL, 1);
            VT_REJECT(vecidx_add_batch(ix, 5, bk, qs), VECIDX_EINVAL, 1);
            /* small but not zero is a direction */
            memset(v, 0, sizeof v);
            v[4] = 1e-15f;
            CHECK_OK(vecidx_add(ix, 424242, v));
            vt_set_put(&m, 424242, v);
            CHECK_OK(vecidx_search(ix, v, 1, NULL, k, d, found));
            CHECK(found[0] == 1 && k[0] == 424242);
        } else {
            CHECK_OK(vecidx_add(ix, 424242, zero));
            vt_set_put(&m, 424242, zero);
            CHECK_OK(vecidx_search(ix, zero, 3, NULL, k, d, found));
            vt_check_exact("zero query", &m, metric, zero, 3, NULL, NULL, k, d,
                           found[0]);
        }
        vt_check_contents("after bad vectors", ix, &m);
        /* huge finite components are accepted, but for a vector to be
        ** stored under cosine (whose products with queries would
        ** overflow); distances may overflow to infinity but results stay
        ** sorted and complete */
        for (i = 0; i < DIM; i++) v[i] = i % 2 ? FLT_MAX : -FLT_MAX;
        if (metric == VECIDX_COSINE) {
            vt_state_get(ix, q0, &before);
            VT_REJECT(vecidx_add(ix, 999, v), VECIDX_EINVAL, 1);
            msg = vecidx_errmsg(ix);
            CHECKF(vt_contains(msg, "too long"),
                   "message \"%s\" does not say the vector is too long", msg);
        } else {
            CHECK_OK(vecidx_add(ix, 999, v));
            vt_set_put(&m, 999, v);
        }
        for (i = 0; i < DIM; i++) v[i] = -v[i];
        CHECK_OK(vecidx_search(ix, v, 20, NULL, k, d, found));
        CHECK_EQ_U64(found[0], 20);
        vt_check_sorted("huge values", k, d, found[0], 20);
        vt_check_contents("huge values", ix, &m);
        vecidx_close(ix);
        vt_set_free(&m);
    }
}

void test_errors_keys(void)
{
    enum {
        DIM = 4
    };
    float v[DIM] = {1, 2, 3, 4}, w[DIM] = {4, 3, 2, 1}, out[DIM];
    float q0[DIM] = {0, 0, 0, 1};
    vt_state before;
    const char *msg;
    vecidx *ix = vt_create(VECIDX_FLAT, VECIDX_L2, DIM, 0);
    if (!ix) return;
    CHECK_OK(vecidx_add(ix, 777, v));
    CHECK_OK(vecidx_add(ix, 18446744073709551615ull, w));
    vt_state_get(ix, q0, &before);
    VT_REJECT(vecidx_add(ix, 777, w), VECIDX_EEXIST, 1);
    msg = vecidx_errmsg(ix);
    CHECKF(vt_contains(msg, "777"), "message \"%s\" does not name key 777",
           msg);
    VT_REJECT(vecidx_add(ix, UINT64_MAX, v), VECIDX_EEXIST, 1);
    msg = vecidx_errmsg(ix);
    CHECKF(vt_contains(msg, "18446744073709551615"),
           "message \"%s\" does not name key UINT64_MAX in full", msg);
    VT_REJECT(vecidx_remove(ix, 31337), VECIDX_ENOTFOUND, 1);
    msg = vecidx_errmsg(ix);
    CHECKF(vt_contains(msg, "31337"), "message \"%s\" does not name the key",
           msg);
    VT_REJECT(vecidx_get(ix, 31338, out), VECIDX_ENOTFOUND, 1);
    msg = vecidx_errmsg(ix);
    CHECKF(vt_contains(msg, "31338"), "message \"%s\" does not name the key",
           msg);
    CHECK(vecidx_contains(ix, 31338) == 0);
    CHECK_OK(vecidx_get(ix, 777, out));
    CHECK(memcmp(out, v, sizeof v) == 0);
    vecidx_close(ix);
}

/* ---- messages belong to a thread and a handle ------------------------- */

typedef struct vt_msg_thread {
    vecidx *ix;
    int ok;
} vt_msg_thread;

static void *vt_msg_main(void *arg)
{
    vt_msg_thread *t = arg;
    t->ok = vecidx_remove(t->ix, 222222) == VECIDX_ENOTFOUND &&
            strstr(vecidx_errmsg(t->ix), "222222") != NULL;
    return NULL;
}

void test_errors_message_per_thread_and_handle(void)
{
    float v[3] = {1, 2, 3};
    vecidx *a = vt_create(VECIDX_FLAT, VECIDX_L2, 3, 0);
    vecidx *b = vt_create(VECIDX_FLAT, VECIDX_L2, 3, 0);
    vecidx_params p;
    vecidx *c = NULL;
    pthread_t tid;
    vt_msg_thread t;
    if (!a || !b) {
        vecidx_close(a);
        vecidx_close(b);
        return;
    }
    CHECK_RC(vecidx_remove(a, 111111), VECIDX_ENOTFOUND);
    CHECK(strstr(vecidx_errmsg(a), "111111") != NULL);
    /* another handle's message is not this one's */
    CHECKF(strcmp(vecidx_errmsg(b), "") == 0,
           "errmsg(b) after a failure on a: \"%s\"", vecidx_errmsg(b));
    /* success does not clear it */
    CHECK_OK(vecidx_add(a, 1, v));
    CHECK_OK(vecidx_add(b, 1, v));
    CHECK(strstr(vecidx_errmsg(a), "111111") != NULL);
    /* a failure on another thread leaves this thread's message alone */
    t.ix = a;
    t.ok = 0;
    CHECK(pthread_create(&tid, NULL, vt_msg_main, &t) == 0);
    pthread_join(tid, NULL);
    CHECK(t.ok);
    CHECKF(strstr(vecidx_errmsg(a), "111111") != NULL,
           "errmsg(a) on this thread became \"%s\"", vecidx_errmsg(a));
    /* the next failure replaces it */
    CHECK_RC(vecidx_add(a, 1, v), VECIDX_EEXIST);
    CHECK(strstr(vecidx_errmsg(a), "111111") == NULL);
    CHECK(*vecidx_errmsg(a) != '\0');
    /* a failed create explains itself through errmsg(NULL) */
    CHECK_OK(vecidx_params_init(&p, VECIDX_FLAT, VECIDX_L2, 3));
    p.dim = VECIDX_MAX_DIM + 7;
    CHECK_RC(vecidx_create(&p, &c), VECIDX_EDIM);
    CHECK(c == NULL);
    CHECK(vt_contains(vecidx_errmsg(NULL), "dimension"));
    CHECK(vt_contains(vecidx_errmsg(NULL), "65543"));
    vecidx_close(a);
    vecidx_close(b);
}
