/*
** test_alloc.c -- allocation failure, SQLite style, and memory accounting.
**
** An allocator installed through vecidx_params.allocator fails the Nth
** call of malloc_fn/realloc_fn (once, or from then on). For N = 1, 2, 3,
** ... a fixed script of calls runs on a fresh index until a run in which
** the Nth allocation is never reached. In every run:
**   - a call during which an allocation failed returns VECIDX_ENOMEM, a
**     call during which none failed succeeds;
**   - after a failed call the index passes vecidx_check and holds exactly
**     the writes that succeeded (a model tracks them);
**   - stats.memory_bytes equals the bytes the allocator has outstanding;
**   - after vecidx_close every block is freed, realloc_fn always got the
**     block's true size as old_size, and free_fn only live blocks.
*/
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vtest.h"

/* ---- the script ------------------------------------------------------- */

typedef struct vt_run {
    int kind;
    uint32_t dim;
    vt_alloc *a;
    vecidx *ix;
    vt_set m;
    long fail_at;
    int step;          /* number of the running step, for messages */
    int failed_steps;  /* steps that returned ENOMEM */
    int checked_after; /* full content checks done after failures */
} vt_run;

/* Judge one step: rc must be ENOMEM exactly when an allocation failed
** during it. Returns 1 if the step succeeded. */
static int vt_step(vt_run *r, const char *what, long failed_before, int rc)
{
    long failed = vt_alloc_failed(r->a) - failed_before;
    char label[160];
    r->step++;
    snprintf(label, sizeof label, "N=%ld%s step %d (%s)", r->fail_at,
             r->a->persistent ? " persistent" : "", r->step, what);
    if (failed > 0) {
        CHECKF(rc == VECIDX_ENOMEM,
               "%s: an allocation failed, but it returned %d (%s)", label, rc,
               vecidx_strerror(rc));
        if (rc != VECIDX_OK) {
            CHECKF(*vecidx_errmsg(r->ix) != '\0', "%s: no message", label);
        }
    } else {
        CHECKF(rc == VECIDX_OK,
               "%s: returned %d (%s: %s) with no failed "
               "allocation",
               label, rc, vecidx_strerror(rc), vecidx_errmsg(NULL));
    }
    if (rc != VECIDX_OK) {
        r->failed_steps++;
        /* the index is intact and unchanged; a full check the first few
        ** times, the count after that (persistent mode fails every step) */
        CHECK_OK(vecidx_check(r->ix));
        if (r->checked_after < 2) {
            vt_check_contents(label, r->ix, &r->m);
            r->checked_after++;
        } else {
            CHECKF(vecidx_count(r->ix) == vt_set_count(&r->m),
                   "%s: count %zu, model %zu", label, vecidx_count(r->ix),
                   vt_set_count(&r->m));
        }
    }
    vt_check_bytes(label, r->ix, r->a);
    return rc == VECIDX_OK;
}

static int vt_keep_even(uint64_t key, void *ctx)
{
    (void)ctx;
    return key % 2 == 0;
}

/* Writes and reads that together reach every allocation site of a kind:
** storage growth, key map growth, free-slot stack, batch validation,
** search heaps, batch search, graph scratch and repair. */
static void vt_script(vt_run *r)
{
    uint32_t dim = r->dim;
    enum {
        NB = 100,
        NQ = 20
    };
    uint64_t keys[NB], rk[NQ * 12];
    float *v = vt_xmalloc(NB * dim * sizeof *v), rd[NQ * 12];
    size_t i, found[NQ];
    long f;
    int rc;
    vecidx_search_opts o;
    memset(&o, 0, sizeof o);
    /* a batch */
    for (i = 0; i < NB; i++) {
        keys[i] = i;
        vt_vector_for(i, 0, v + i * dim, dim);
    }
    f = vt_alloc_failed(r->a);
    rc = vecidx_add_batch(r->ix, NB, keys, v);
    if (vt_step(r, "add_batch", f, rc))
        for (i = 0; i < NB; i++) vt_set_put(&r->m, i, v + i * dim);
    /* single adds */
    for (i = NB; i < 2 * NB; i++) {
        vt_vector_for(i, 0, v, dim);
        f = vt_alloc_failed(r->a);
        rc = vecidx_add(r->ix, i, v);
        if (vt_step(r, "add", f, rc)) vt_set_put(&r->m, i, v);
    }
    /* upserts: replace, insert */
    for (i = 0; i < 2; i++) {
        uint64_t key = i ? 5000 : 5;
        vt_vector_for(key, 1, v, dim);
        f = vt_alloc_failed(r->a);
        rc = vecidx_upsert(r->ix, key, v);
        if (vt_step(r, "upsert", f, rc)) vt_set_put(&r->m, key, v);
    }
    /* removals: enough for a graph to repair at the next write */
    for (i = 0; i < 80; i++) {
        if (vt_set_find(&r->m, 2 * i + 1) < 0) {
            /* its insert failed earlier: removal finds nothing */
            CHECK_RC(vecidx_remove(r->ix, 2 * i + 1), VECIDX_ENOTFOUND);
            continue;
        }
        f = vt_alloc_failed(r->a);
        rc = vecidx_remove(r->ix, 2 * i + 1);
        if (vt_step(r, "remove", f, rc)) vt_set_del(&r->m, 2 * i + 1);
    }
    /* a batch that reuses slots and grows */
    for (i = 0; i < NB; i++) {
        keys[i] = 10000 + i;
        vt_vector_for(keys[i], 0, v + i * dim, dim);
    }
    f = vt_alloc_failed(r->a);
    rc = vecidx_add_batch(r->ix, NB, keys, v);
    if (vt_step(r, "add_batch 2", f, rc))
        for (i = 0; i < NB; i++) vt_set_put(&r->m, keys[i], v + i * dim);
    /* searches: results right whenever they succeed */
    vt_vector_for(77, 0, v, dim);
    for (i = 0; i < 3; i++) {
        size_t k = i == 1 ? 12 : 10;
        o.filter = i == 2 ? vt_keep_even : NULL;
        f = vt_alloc_failed(r->a);
        rc = vecidx_search(r->ix, v, k, &o, rk, rd, found);
        if (vt_step(r, "search", f, rc)) {
            if (r->kind == VECIDX_FLAT)
                vt_check_exact("search", &r->m, VECIDX_L2, v, k, o.filter, NULL,
                               rk, rd, found[0]);
            else
                vt_check_shape("search", &r->m, k, o.filter, NULL, rk, rd,
                               found[0]);
        }
    }
    for (i = 0; i < NQ; i++) vt_vector_for(i * 3, 0, v + i * dim, dim);
    o.filter = NULL;
    o.threads = 2;
    f = vt_alloc_failed(r->a);
    rc = vecidx_search_batch(r->ix, NQ, v, 12, &o, rk, rd, found);
    if (vt_step(r, "search_batch", f, rc))
        for (i = 0; i < NQ; i++)
            vt_check_shape("search_batch", &r->m, 12, NULL, NULL, rk + i * 12,
                           rd + i * 12, found[i]);
    /* reserve, then more adds */
    f = vt_alloc_failed(r->a);
    rc = vecidx_reserve(r->ix, 700);
    vt_step(r, "reserve", f, rc);
    for (i = 0; i < 30; i++) {
        vt_vector_for(20000 + i, 0, v, dim);
        f = vt_alloc_failed(r->a);
        rc = vecidx_add(r->ix, 20000 + i, v);
        if (vt_step(r, "add after reserve", f, rc))
            vt_set_put(&r->m, 20000 + i, v);
    }
    free(v);
}

/* Run the script with the Nth allocation failing, for N = 1, 2, ...
** until a run never reaches N. */
static void vt_alloc_loop(int kind, uint32_t dim, int persistent)
{
    long n;
    int done = 0, creates_failed = 0, runs_failed = 0;
    for (n = 1; !done && n < 100000 && vt_failures() == 0; n++) {
        vt_alloc a;
        vt_run r;
        vecidx_params p;
        int rc;
        vt_alloc_init(&a);
        a.fail_at = n;
        a.persistent = persistent;
        memset(&r, 0, sizeof r);
        r.kind = kind;
        r.dim = dim;
        r.a = &a;
        r.fail_at = n;
        CHECK_OK(vecidx_params_init(&p, kind, VECIDX_L2, dim));
        p.threads = 1;
        if (kind == VECIDX_HNSW) {
            p.hnsw_m = 4;
            p.hnsw_ef_construction = 16;
        }
        vt_alloc_use(&p, &a);
        r.ix = (vecidx *)&r; /* must be set to NULL on failure */
        rc = vecidx_create(&p, &r.ix);
        if (rc != VECIDX_OK) {
            CHECKF(rc == VECIDX_ENOMEM && a.failed > 0,
                   "N=%ld: create returned %d (%s)", n, rc,
                   vecidx_strerror(rc));
            CHECKF(r.ix == NULL, "N=%ld: failed create left *out set", n);
            CHECK(*vecidx_errmsg(NULL) != '\0');
            vt_check_released("failed create", &a);
            vt_alloc_destroy(&a);
            creates_failed++;
            continue;
        }
        CHECKF(a.failed == 0,
               "N=%ld: create succeeded after a failed "
               "allocation",
               n);
        vt_set_init(&r.m, dim, 1000);
        vt_check_bytes("created", r.ix, &a);
        vt_script(&r);
        /* the final state is what succeeded, and nothing leaks */
        vt_check_contents("end of script", r.ix, &r.m);
        vt_check_bytes("end of script", r.ix, &a);
        if (a.failed == 0) {
            done = 1;
            CHECKF(r.failed_steps == 0,
                   "N=%ld: steps failed with no failed "
                   "allocation",
                   n);
            CHECK_EQ_U64(vt_set_count(&r.m), 2 * 100 + 1 - 80 + 100 + 30);
        } else {
            runs_failed++;
            CHECKF(r.failed_steps > 0,
                   "N=%ld: an allocation failed but no "
                   "step reported it",
                   n);
        }
        vecidx_close(r.ix);
        vt_check_released("after close", &a);
        vt_set_free(&r.m);
        vt_alloc_destroy(&a);
    }
    if (getenv("VTEST_DEBUG"))
        printf("  kind %d persistent %d: %ld runs, %d creates failed\n", kind,
               persistent, n - 1, creates_failed);
    CHECKF(done, "the script never completed (last N %ld)", n - 1);
    CHECK(creates_failed >= 1);
    CHECKF(runs_failed >= 10, "only %d runs hit a failure", runs_failed);
}

/* dim 1024: vectors large enough that storage grows in many steps */
void test_alloc_failure_flat(void)
{
    vt_alloc_loop(VECIDX_FLAT, 1024, 0);
}

void test_alloc_failure_flat_persistent(void)
{
    vt_alloc_loop(VECIDX_FLAT, 1024, 1);
}

void test_alloc_failure_hnsw(void)
{
    vt_alloc_loop(VECIDX_HNSW, 16, 0);
    vt_alloc_loop(VECIDX_HNSW, 16, 1);
}

/* Nothing failing: memory_bytes follows the allocator through growth,
** churn and parallel searches, and close returns everything. */
void test_alloc_accounting(void)
{
    static const int kinds[] = {VECIDX_FLAT, VECIDX_HNSW};
    size_t ki;
    for (ki = 0; ki < 2; ki++) {
        enum {
            DIM = 16,
            N = 3000,
            NQ = 40
        };
        vt_alloc a;
        vt_rng r = {301};
        vt_set m;
        vecidx_params p;
        vecidx_search_opts o;
        vecidx *ix = NULL;
        float q[NQ * DIM], d[NQ * 10];
        uint64_t k[NQ * 10];
        size_t found[NQ], i;
        vecidx_stats_t st;
        vt_alloc_init(&a);
        CHECK_OK(vecidx_params_init(&p, kinds[ki], VECIDX_COSINE, DIM));
        p.hnsw_ef_construction = 40;
        vt_alloc_use(&p, &a);
        CHECK_OK(vecidx_create(&p, &ix));
        if (!ix) return;
        vt_set_init(&m, DIM, N + 100);
        vt_check_bytes("empty", ix, &a);
        CHECK(a.ntab >= 1); /* the handle itself */
        vt_fill_index(ix, &m, N, &r, VT_CLUSTERED);
        vt_check_bytes("filled", ix, &a);
        for (i = 0; i < N; i += 4) {
            CHECK_OK(vecidx_remove(ix, m.keys[i]));
            m.live[i] = 0;
        }
        vt_check_bytes("removed", ix, &a);
        vt_make_queries(&r, &m, q, NQ, VT_CLUSTERED);
        memset(&o, 0, sizeof o);
        o.threads = 4;
        CHECK_OK(vecidx_search_batch(ix, NQ, q, 10, &o, k, d, found));
        vt_check_bytes("batch search", ix, &a);
        vt_fill_index(ix, &m, 100, &r, VT_CLUSTERED);
        vt_check_contents("accounting", ix, &m);
        vt_check_bytes("refilled", ix, &a);
        CHECK_OK(vecidx_stats(ix, &st));
        CHECK(st.memory_bytes >= (uint64_t)st.count * DIM * sizeof(float));
        vecidx_close(ix);
        vt_check_released("accounting", &a);
        CHECK(a.failed == 0 && a.calls > 10);
        vt_set_free(&m);
        vt_alloc_destroy(&a);
        /* the default allocator counts too */
        ix = vt_create(kinds[ki], VECIDX_L2, DIM, 0);
        if (!ix) return;
        CHECK_OK(vecidx_stats(ix, &st));
        CHECK(st.memory_bytes > 0);
        vt_set_init(&m, DIM, 600);
        vt_fill_index(ix, &m, 500, &r, VT_UNIFORM);
        {
            vecidx_stats_t st2;
            CHECK_OK(vecidx_stats(ix, &st2));
            CHECK(st2.memory_bytes >= st.memory_bytes + 500 * DIM * 4);
        }
        vecidx_close(ix);
        vt_set_free(&m);
    }
}
