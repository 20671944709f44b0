/*
** test_concurrency.c -- readers and a writer on one handle at once. Run
** under ThreadSanitizer with `vecidx_test concurrency`.
**
** The writer adds, upserts and removes keys of a small universe and keeps
** a model of what it wrote; before writing version v of a key it publishes
** v, and the vector of (key, v) is vt_vector_for(key, v). Readers search
** all the while and check every result against what may legitimately be
** seen: a key that was inserted at some point, with the distance of one
** of its published versions (a torn vector would match none), results
** sorted, exactly k of them (the writer never lets the count drop below
** k). vecidx_get must return one published version bit for bit. Work is
** counted in operations, never in time. At the end the index passes
** vecidx_check and equals the writer's model.
*/
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vtest.h"

#define VT_READERS 4
#define VT_DIM 16
#define VT_K 10
#define VT_UNIVERSE 1500u
#define VT_MIN_LIVE 200u

typedef struct vt_shared {
    vecidx *ix;
    int kind, metric;
    int batch;        /* readers use vecidx_search_batch on 2 threads */
    int filter_reads; /* the readers' filter calls vecidx_contains */
    atomic_uint version[VT_UNIVERSE]; /* 0: never inserted */
    atomic_int writer_done;
    atomic_long searches, gets;
} vt_shared;

typedef struct vt_reader {
    vt_shared *sh;
    unsigned id;
} vt_reader;

/* Does (key, dist) match one of the key's published versions? */
static int vt_plausible(const vt_shared *sh, const float *q, uint64_t key,
                        float dist)
{
    float v[VT_DIM];
    unsigned ver;
    if (key >= VT_UNIVERSE) return 0;
    ver = atomic_load(&sh->version[key]);
    for (; ver >= 1; ver--) {
        double tol, ref;
        vt_vector_for(key, ver, v, VT_DIM);
        ref = vt_ref_dist(sh->metric, q, v, VT_DIM, &tol);
        if (fabs((double)dist - ref) <= tol) return 1;
    }
    return 0;
}

static int vt_conc_filter(uint64_t key, void *ctx)
{
    vt_shared *sh = ctx;
    /* a reader on the same handle from inside a search is allowed */
    if (sh->filter_reads && vecidx_contains(sh->ix, key) < 0) return 0;
    return key % 5 != 0;
}

static void vt_check_one(vt_shared *sh, const float *q, const uint64_t *keys,
                         const float *dists, size_t found, int filtered)
{
    size_t i;
    CHECKF(found == VT_K, "found %zu, wanted %d", found, VT_K);
    vt_check_sorted("concurrent search", keys, dists, found, VT_K);
    for (i = 0; i < found; i++) {
        CHECKF(keys[i] < VT_UNIVERSE && atomic_load(&sh->version[keys[i]]) > 0,
               "result key %llu was never inserted",
               (unsigned long long)keys[i]);
        CHECKF(!filtered || keys[i] % 5 != 0,
               "result key %llu is not admitted by the filter",
               (unsigned long long)keys[i]);
        CHECKF(vt_plausible(sh, q, keys[i], dists[i]),
               "result key %llu at distance %.9g matches no version of it",
               (unsigned long long)keys[i], (double)dists[i]);
    }
}

static void *vt_reader_main(void *arg)
{
    vt_reader *rd = arg;
    vt_shared *sh = rd->sh;
    vt_rng r;
    float q[4 * VT_DIM], v[VT_DIM], dists[4 * VT_K];
    uint64_t keys[4 * VT_K];
    size_t found[4], i;
    long n;
    r.s = 1000 + rd->id;
    /* until the writer is done, and at least a few rounds; the cap only
    ** guards against a writer that never finishes */
    for (n = 0; n < 200000 && (n < 20 || !atomic_load(&sh->writer_done)); n++) {
        vecidx_search_opts o;
        int filtered = (int)(n % 3 == 2);
        memset(&o, 0, sizeof o);
        if (filtered) {
            o.filter = vt_conc_filter;
            o.filter_ctx = sh;
        }
        vt_fill_uniform(&r, q, 4 * VT_DIM, -1.0f, 1.0f);
        if (sh->batch) {
            o.threads = 2;
            CHECK_OK(vecidx_search_batch(sh->ix, 4, q, VT_K, &o, keys, dists,
                                         found));
            for (i = 0; i < 4; i++)
                vt_check_one(sh, q + i * VT_DIM, keys + i * VT_K,
                             dists + i * VT_K, found[i], filtered);
        } else {
            CHECK_OK(vecidx_search(sh->ix, q, VT_K, &o, keys, dists, found));
            vt_check_one(sh, q, keys, dists, found[0], filtered);
        }
        atomic_fetch_add(&sh->searches, 1);
        /* a get returns one published version, whole */
        {
            uint64_t key = vt_below(&r, VT_UNIVERSE);
            int rc = vecidx_get(sh->ix, key, v);
            CHECKF(rc == VECIDX_OK || rc == VECIDX_ENOTFOUND, "get returned %d",
                   rc);
            if (rc == VECIDX_OK) {
                unsigned ver = atomic_load(&sh->version[key]);
                float w[VT_DIM];
                int match = 0;
                for (; ver >= 1 && !match; ver--) {
                    vt_vector_for(key, ver, w, VT_DIM);
                    match = memcmp(v, w, sizeof w) == 0;
                }
                CHECKF(match,
                       "get of key %llu returned no published "
                       "version",
                       (unsigned long long)key);
            }
            atomic_fetch_add(&sh->gets, 1);
        }
        if (n % 16 == 0) {
            vecidx_stats_t st;
            CHECK_OK(vecidx_stats(sh->ix, &st));
            CHECK(st.count >= VT_MIN_LIVE);
            CHECK(vecidx_count(sh->ix) >= VT_MIN_LIVE);
        }
        if (n % 64 == 0) CHECK_OK(vecidx_check(sh->ix));
        if (vt_failures() > 0) break;
    }
    return NULL;
}

/* A key that is live (want_live) or not, at random. */
static uint64_t vt_pick(vt_rng *r, const vt_set *m, int want_live)
{
    for (;;) {
        uint64_t key = vt_below(r, VT_UNIVERSE);
        if ((vt_set_find(m, key) >= 0) == want_live) return key;
    }
}

/* Publish the next version of key and write it into v. */
static void vt_next_version(vt_shared *sh, uint64_t key, float *v)
{
    unsigned ver = atomic_load(&sh->version[key]) + 1;
    atomic_store(&sh->version[key], ver);
    vt_vector_for(key, ver, v, VT_DIM);
}

static void vt_writer(vt_shared *sh, vt_set *m, long ops, vt_rng *r)
{
    float v[10 * VT_DIM];
    uint64_t keys[10];
    long op;
    size_t i;
    for (op = 0; op < ops && vt_failures() == 0; op++) {
        size_t live = vt_set_count(m);
        unsigned what = (unsigned)vt_below(r, 100);
        if (what < 35 && live < VT_UNIVERSE - 20) {
            uint64_t key = vt_pick(r, m, 0);
            vt_next_version(sh, key, v);
            CHECK_OK(vecidx_add(sh->ix, key, v));
            vt_set_put(m, key, v);
        } else if (what < 40 && live < VT_UNIVERSE - 20) {
            for (i = 0; i < 10; i++) {
                size_t j;
                do {
                    keys[i] = vt_pick(r, m, 0);
                    for (j = 0; j < i && keys[j] != keys[i]; j++) continue;
                } while (j < i);
                vt_next_version(sh, keys[i], v + i * VT_DIM);
            }
            CHECK_OK(vecidx_add_batch(sh->ix, 10, keys, v));
            for (i = 0; i < 10; i++) vt_set_put(m, keys[i], v + i * VT_DIM);
        } else if (what < 70) {
            uint64_t key = vt_pick(r, m, 1);
            vt_next_version(sh, key, v);
            CHECK_OK(vecidx_upsert(sh->ix, key, v));
            vt_set_put(m, key, v);
        } else if (live > VT_MIN_LIVE) {
            uint64_t key = vt_pick(r, m, 1);
            CHECK_OK(vecidx_remove(sh->ix, key));
            vt_set_del(m, key);
        }
    }
}

static void vt_concurrent(int kind, int metric, int batch, int filter_reads,
                          long ops)
{
    vt_shared *sh = vt_xmalloc(sizeof *sh);
    vt_reader rd[VT_READERS];
    pthread_t tid[VT_READERS];
    int started[VT_READERS];
    vt_set m;
    vt_rng r = {401};
    vecidx_params p;
    float v[VT_DIM];
    unsigned i;
    CHECK_OK(vecidx_params_init(&p, kind, metric, VT_DIM));
    p.hnsw_m = 8;
    p.hnsw_ef_construction = 40;
    p.threads = 2;
    CHECK_OK(vecidx_create(&p, &sh->ix));
    if (!sh->ix) {
        free(sh);
        return;
    }
    sh->kind = kind;
    sh->metric = metric;
    sh->batch = batch;
    sh->filter_reads = filter_reads;
    for (i = 0; i < VT_UNIVERSE; i++) atomic_init(&sh->version[i], 0);
    atomic_init(&sh->writer_done, 0);
    atomic_init(&sh->searches, 0);
    atomic_init(&sh->gets, 0);
    vt_set_init(&m, VT_DIM, VT_UNIVERSE);
    /* preload before the readers start */
    for (i = 0; i < 2 * VT_MIN_LIVE; i++) {
        vt_next_version(sh, i * 3, v);
        CHECK_OK(vecidx_add(sh->ix, i * 3, v));
        vt_set_put(&m, i * 3, v);
    }
    for (i = 0; i < VT_READERS; i++) {
        rd[i].sh = sh;
        rd[i].id = i;
        started[i] = pthread_create(&tid[i], NULL, vt_reader_main, &rd[i]) == 0;
        CHECK(started[i]);
    }
    vt_writer(sh, &m, ops, &r);
    atomic_store(&sh->writer_done, 1);
    for (i = 0; i < VT_READERS; i++)
        if (started[i]) pthread_join(tid[i], NULL);
    CHECK(atomic_load(&sh->searches) >= 20 * VT_READERS);
    if (getenv("VTEST_DEBUG"))
        printf("  kind %d metric %d batch %d: %ld writes, %ld searches, %ld "
               "gets\n",
               kind, metric, batch, ops, atomic_load(&sh->searches),
               atomic_load(&sh->gets));
    vt_check_contents("after the writer", sh->ix, &m);
    vecidx_close(sh->ix);
    vt_set_free(&m);
    free(sh);
}

void test_concurrency_flat_search_while_writing(void)
{
    vt_concurrent(VECIDX_FLAT, VECIDX_L2, 0, 0, 6000);
    vt_concurrent(VECIDX_FLAT, VECIDX_COSINE, 0, 0, 2000);
}

void test_concurrency_flat_batch_while_writing(void)
{
    vt_concurrent(VECIDX_FLAT, VECIDX_IP, 1, 0, 4000);
}

void test_concurrency_hnsw_search_while_writing(void)
{
    vt_concurrent(VECIDX_HNSW, VECIDX_L2, 0, 0, 800);
    vt_concurrent(VECIDX_HNSW, VECIDX_COSINE, 1, 0, 400);
    /* Inner-product repairs link back and offer nodes on both threads. */
    vt_concurrent(VECIDX_HNSW, VECIDX_IP, 0, 0, 800);
}

/* ---- readers only: every thread gets the single-threaded answers ---- */

typedef struct vt_ro {
    vecidx *ix;
    const float *q;
    const uint64_t *keys;
    const float *dists;
    const size_t *found;
    size_t nq;
    unsigned id;
} vt_ro;

static void *vt_ro_main(void *arg)
{
    const vt_ro *t = arg;
    uint64_t keys[VT_K];
    float dists[VT_K];
    size_t found, i, round;
    for (round = 0; round < 2; round++)
        for (i = 0; i < t->nq; i++) {
            size_t qi = (i + t->id * 7) % t->nq;
            CHECK_OK(vecidx_search(t->ix, t->q + qi * VT_DIM, VT_K, NULL, keys,
                                   dists, &found));
            CHECKF(found == t->found[qi] &&
                       memcmp(keys, t->keys + qi * VT_K, sizeof keys) == 0 &&
                       memcmp(dists, t->dists + qi * VT_K, sizeof dists) == 0,
                   "thread %u query %zu: a different answer than alone", t->id,
                   qi);
        }
    return NULL;
}

void test_concurrency_readers_only(void)
{
    static const int kinds[] = {VECIDX_FLAT, VECIDX_HNSW};
    enum {
        N = 1000,
        NQ = 24
    };
    size_t ki, i;
    for (ki = 0; ki < 2; ki++) {
        vt_rng r = {411};
        vt_set m;
        float q[NQ * VT_DIM], dists[NQ * VT_K];
        uint64_t keys[NQ * VT_K];
        size_t found[NQ];
        vt_ro t[VT_READERS];
        pthread_t tid[VT_READERS];
        vecidx *ix = vt_create(kinds[ki], VECIDX_L2, VT_DIM, 2);
        if (!ix) return;
        vt_set_init(&m, VT_DIM, N);
        vt_fill_index(ix, &m, N, &r, VT_CLUSTERED);
        for (i = 0; i < N; i += 9) {
            CHECK_OK(vecidx_remove(ix, m.keys[i]));
            m.live[i] = 0;
        }
        vt_make_queries(&r, &m, q, NQ, VT_CLUSTERED);
        for (i = 0; i < NQ; i++)
            CHECK_OK(vecidx_search(ix, q + i * VT_DIM, VT_K, NULL,
                                   keys + i * VT_K, dists + i * VT_K,
                                   found + i));
        for (i = 0; i < VT_READERS; i++) {
            t[i].ix = ix;
            t[i].q = q;
            t[i].keys = keys;
            t[i].dists = dists;
            t[i].found = found;
            t[i].nq = NQ;
            t[i].id = (unsigned)i;
            if (pthread_create(&tid[i], NULL, vt_ro_main, &t[i]) != 0) {
                CHECKF(0, "pthread_create failed for reader %zu", i);
                tid[i] = pthread_self();
            }
        }
        for (i = 0; i < VT_READERS; i++)
            if (!pthread_equal(tid[i], pthread_self()))
                pthread_join(tid[i], NULL);
        vt_check_contents("readers only", ix, &m);
        vecidx_close(ix);
        vt_set_free(&m);
    }
}
