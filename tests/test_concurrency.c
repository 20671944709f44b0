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
**
** The file-backed stress test (st_*, further down) does the same with a
** checkpointing, saving and reopening thread too, and checks every saved
** or reopened file against the writer's history.
*/
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
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
    int append_only;  /* the writer only adds keys, never removes one */
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

/* The allowed sets the readers also search with: the keys the filter
** admits, as a bitmap (planned as a walk), and a sparse key array (a
** sixtieth of them: planned as a scan of the allowed keys, which looks
** them up while the writer moves them). */
static uint64_t vt_conc_bits[(VT_UNIVERSE + 63) / 64];
static uint64_t vt_conc_sparse[VT_UNIVERSE / 25];
static size_t vt_conc_nsparse;

static void vt_conc_sets(void)
{
    uint64_t key;
    memset(vt_conc_bits, 0, sizeof vt_conc_bits);
    vt_conc_nsparse = 0;
    for (key = 0; key < VT_UNIVERSE; key++) {
        if (key % 5 != 0) vt_conc_bits[key / 64] |= (uint64_t)1 << (key % 64);
        if (key % 25 == 1) vt_conc_sparse[vt_conc_nsparse++] = key;
    }
}

/* filtered: 0 none, 1 the callback, 2 the bitmap, 3 the sparse array */
static void vt_check_one(vt_shared *sh, const float *q, const uint64_t *keys,
                         const float *dists, size_t found, int filtered)
{
    size_t i;
    /* the sparse set may hold fewer than k live keys */
    CHECKF(filtered == 3 ? found <= VT_K : found == VT_K,
           "found %zu, wanted %d", found, VT_K);
    vt_check_sorted("concurrent search", keys, dists, found, VT_K);
    for (i = 0; i < found; i++) {
        CHECKF(keys[i] < VT_UNIVERSE && atomic_load(&sh->version[keys[i]]) > 0,
               "result key %llu was never inserted",
               (unsigned long long)keys[i]);
        CHECKF(!filtered || keys[i] % 5 != 0,
               "result key %llu is not admitted by the filter",
               (unsigned long long)keys[i]);
        CHECKF(filtered != 3 || keys[i] % 25 == 1,
               "result key %llu is not in the allowed keys",
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
        int filtered = n % 3 == 2 ? 1 + (int)(n / 3 % 3) : 0;
        memset(&o, 0, sizeof o);
        if (filtered == 1) {
            o.filter = vt_conc_filter;
            o.filter_ctx = sh;
        } else if (filtered == 2) {
            o.allow_bitmap = vt_conc_bits;
            o.allow_bits = VT_UNIVERSE;
        } else if (filtered == 3) {
            o.allow_keys = vt_conc_sparse;
            o.allow_count = vt_conc_nsparse;
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
        if (n % 64 == 32 && rd->id == 0) {
            /* a recall estimate reads as searches do; the index may
            ** change too fast to sample (ESTATE) */
            vecidx_recall rc;
            int e = vecidx_estimate_recall(sh->ix, VT_K, 4, NULL, NULL, NULL,
                                           &rc);
            CHECKF(e == VECIDX_OK || e == VECIDX_ESTATE, "estimate: %d", e);
            CHECK(e != VECIDX_OK || (rc.recall >= 0 && rc.recall <= 1));
        }
        if (n % 128 == 96 && rd->id == 1 && sh->kind == VECIDX_HNSW) {
            /* tuning stores a new default ef while others search */
            vecidx_tuning t;
            int e = vecidx_tune(sh->ix, 0.8, VT_K, 4, NULL, NULL, &t);
            CHECKF(e == VECIDX_OK || e == VECIDX_ESTATE, "tune: %d", e);
        }
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
        if (sh->append_only) {
            if (live >= VT_UNIVERSE - 20) break;
            what %= 40;
        }
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

/* Readers search (or batch-search, or filter) while one writer churns
** the keys; storage and keep_vectors pick the vector storage (int8 keeps
** its float32 vectors, so that distances are exact and checkable). */
static void vt_concurrent_ex(int kind, int metric, uint32_t storage,
                             int append_only, int batch, int filter_reads,
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
    p.storage = storage;
    p.keep_vectors = storage != VECIDX_STORE_F32;
    CHECK_OK(vecidx_create(&p, &sh->ix));
    if (!sh->ix) {
        free(sh);
        return;
    }
    sh->append_only = append_only;
    sh->kind = kind;
    sh->metric = metric;
    sh->batch = batch;
    sh->filter_reads = filter_reads;
    vt_conc_sets();
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

static void vt_concurrent(int kind, int metric, int batch, int filter_reads,
                          long ops)
{
    vt_concurrent_ex(kind, metric, VECIDX_STORE_F32, 0, batch, filter_reads,
                     ops);
}

void test_concurrency_flat_search_while_writing(void)
{
    vt_concurrent(VECIDX_FLAT, VECIDX_L2, 0, 0, 6000);
    vt_concurrent(VECIDX_FLAT, VECIDX_COSINE, 0, 0, 2000);
    /* int8 with kept vectors: code scan, then exact re-ranking */
    vt_concurrent_ex(VECIDX_FLAT, VECIDX_L2, VECIDX_STORE_I8, 0, 0, 0, 3000);
}

/* While the writer only adds, every slot below the slot count is live
** except those being filled, and an exact scan skips reading the slots'
** states when the live count says none is missing: a slot read before
** it is published would show as a result whose distance fits no version
** of its key. */
void test_concurrency_flat_scan_while_appending(void)
{
    int round;
    for (round = 0; round < 10 && vt_failures() == 0; round++) {
        vt_concurrent_ex(VECIDX_FLAT, VECIDX_L2, VECIDX_STORE_F32, 1, 0, 0,
                         5000);
        vt_concurrent_ex(VECIDX_FLAT, VECIDX_IP, VECIDX_STORE_F32, 1, 1, 0,
                         5000);
        vt_concurrent_ex(VECIDX_FLAT, VECIDX_L2, VECIDX_STORE_I8, 1, 0, 0,
                         5000);
    }
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

/* ---- an upserted key never goes missing ---- */

#define VT_UPS_KEYS 8u

typedef struct vt_ups {
    vecidx *ix;
    atomic_int done;
    atomic_long absent, reads;
} vt_ups;

/* Reads the upserted keys until the writer is done: each is there, with
** the old vector or the new, at every moment of every upsert. */
static void *vt_ups_reader(void *arg)
{
    vt_ups *u = arg;
    float out[VT_DIM];
    unsigned i = 0;
    while (!atomic_load(&u->done)) {
        uint64_t key = i++ % VT_UPS_KEYS;
        if (vecidx_contains(u->ix, key) != 1) atomic_fetch_add(&u->absent, 1);
        if (vecidx_get(u->ix, key, out) != VECIDX_OK)
            atomic_fetch_add(&u->absent, 1);
        atomic_fetch_add(&u->reads, 1);
    }
    return NULL;
}

static void vt_upsert_keeps_key(int kind)
{
    vt_ups u;
    pthread_t tid;
    vecidx_params p;
    float v[VT_DIM];
    uint64_t key;
    unsigned i;
    int started;
    CHECK_OK(vecidx_params_init(&p, kind, VECIDX_L2, VT_DIM));
    p.hnsw_m = 8;
    p.hnsw_ef_construction = 40;
    CHECK_OK(vecidx_create(&p, &u.ix));
    if (!u.ix) return;
    atomic_init(&u.done, 0);
    atomic_init(&u.absent, 0);
    atomic_init(&u.reads, 0);
    for (key = 0; key < 200; key++) {
        vt_vector_for(key, 0, v, VT_DIM);
        CHECK_OK(vecidx_add(u.ix, key, v));
    }
    started = pthread_create(&tid, NULL, vt_ups_reader, &u) == 0;
    CHECK(started);
    for (i = 1; i <= 4000; i++) {
        vt_vector_for(i % VT_UPS_KEYS, i, v, VT_DIM);
        CHECK_OK(vecidx_upsert(u.ix, i % VT_UPS_KEYS, v));
    }
    atomic_store(&u.done, 1);
    if (started) pthread_join(tid, NULL);
    CHECKF(atomic_load(&u.absent) == 0,
           "kind %d: an upserted key was missing %ld times in %ld reads", kind,
           atomic_load(&u.absent), atomic_load(&u.reads));
    CHECK(vecidx_count(u.ix) == 200);
    CHECK_OK(vecidx_check(u.ix));
    vecidx_close(u.ix);
}

void test_concurrency_upsert_keeps_key(void)
{
    vt_upsert_keeps_key(VECIDX_FLAT);
    vt_upsert_keeps_key(VECIDX_HNSW);
}

/* ---- two handles saving to one path at once ---- */

typedef struct vt_saver {
    vecidx *ix, *other;
    const char *path;
} vt_saver;

/* The file at path is one handle's whole index or the other's. */
static void vt_saved_is_one_of(const char *path, vecidx *a, vecidx *b)
{
    vecidx *f = NULL;
    float got[VT_DIM], want[VT_DIM];
    uint64_t key;
    CHECK_OK(vecidx_open(path, NULL, VECIDX_RDONLY, &f));
    if (!f) return;
    CHECK_OK(vecidx_check(f));
    key = vecidx_count(f) == 1000 ? 0 : 5000; /* keys of ix[0], of ix[1] */
    CHECKF(vecidx_count(f) == vecidx_count(a) ||
               vecidx_count(f) == vecidx_count(b),
           "a saved file holds %zu vectors, neither %zu nor %zu",
           vecidx_count(f), vecidx_count(a), vecidx_count(b));
    CHECK_OK(vecidx_get(f, key, got));
    vt_vector_for(key, 0, want, VT_DIM);
    CHECK(memcmp(got, want, sizeof got) == 0);
    vecidx_close(f);
}

static void *vt_saver_main(void *arg)
{
    vt_saver *sv = arg;
    int i;
    for (i = 0; i < 20 && vt_failures() == 0; i++) {
        CHECK_OK(vecidx_save(sv->ix, sv->path));
        vt_saved_is_one_of(sv->path, sv->ix, sv->other);
    }
    return NULL;
}

/* Each save writes a temporary file of its own, so saves racing to one
** path leave one whole index there, and nothing else in the directory. */
void test_concurrency_two_saves_one_path(void)
{
    char dir[512], path[600];
    vecidx *ix[2] = {NULL, NULL};
    vt_saver sv[2];
    pthread_t tid;
    vecidx_params p;
    float v[VT_DIM];
    uint64_t key;
    int k, started;
    if (vt_tmp_dir(dir, sizeof dir, "saves") != 0) return;
    snprintf(path, sizeof path, "%s/ix.vx", dir);
    for (k = 0; k < 2; k++) {
        CHECK_OK(vecidx_params_init(&p, k ? VECIDX_HNSW : VECIDX_FLAT,
                                    VECIDX_L2, VT_DIM));
        p.hnsw_m = 8;
        CHECK_OK(vecidx_create(&p, &ix[k]));
        if (!ix[k]) goto out;
        /* keys 0..999 in one, 5000..6999 in the other */
        for (key = k * 5000; key < (uint64_t)k * 5000 + 1000 * (k + 1); key++) {
            vt_vector_for(key, 0, v, VT_DIM);
            CHECK_OK(vecidx_add(ix[k], key, v));
        }
    }
    for (k = 0; k < 2; k++) {
        sv[k].ix = ix[k];
        sv[k].other = ix[1 - k];
        sv[k].path = path;
    }
    started = pthread_create(&tid, NULL, vt_saver_main, &sv[1]) == 0;
    CHECK(started);
    vt_saver_main(&sv[0]);
    if (started) pthread_join(tid, NULL);
    vt_saved_is_one_of(path, ix[0], ix[1]);
out:
    unlink(path);
    if (rmdir(dir) != 0)
        vt_fail(__FILE__, __LINE__, "rmdir %s: %s (a file left behind?)", dir,
                strerror(errno));
    vecidx_close(ix[0]);
    vecidx_close(ix[1]);
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

/* ---- file-backed stress: readers, a writer, checkpoints and saves -------
**
** The proof asked by issue 14: searches, gets and the other readers run
** while one writer adds, upserts, removes and adds batches to an index
** opened from a file, and while another thread checkpoints, syncs and
** saves it. Each configuration creates a fresh file with VECIDX_CREATE
** and runs:
**
**  - ST_READERS reader threads (searches with and without a filter,
**    vecidx_search_batch on 2 threads, get, contains, count, stats, keys
**    and now and then check), each result checked as in vt_concurrent: a
**    key that was inserted, at the distance of one of its published
**    versions (a torn or mixed-up vector matches none), sorted, no key
**    twice, found = k (the writer keeps at least min_live keys, more than
**    enough for k under the filter);
**  - the writer (this thread), in cycles: in the first one a batch of
**    `big` rows (for HNSW l2 more than the 4096 a batch stores, then links,
**    at a time; every batch of 256 rows or more is linked on 2 threads),
**    then random writes with a batch of `medium` rows among them, then
**    removals down to shrink_to, enough for many HNSW repairs; it
**    checkpoints and syncs every so many writes too;
**  - a checkpoint thread that calls vecidx_checkpoint, vecidx_sync and
**    vecidx_save to a second path, once per ck_stride writes, and checks
**    the saved copy and (every other round) the main file opened
**    read-only beside the writer.
**
** The writer keeps its history: before each call it logs the keys the
** call changes, with their new versions, and a hash of the state the call
** leaves, and publishes them through `started`. A saved copy must be
** exactly a state of that history, found by its hash and confirmed by
** replaying the log: a state between the last write finished when the save
** began and the last one started when it returned, whole writes only: a
** save snapshots between two writes. A read-only open must find a whole
** write too: the log holds whole calls. It may find an older state than the
*writes done when it
** began (see st_check_open).
**
** IVF-PQ results before re-ranking have code distances, which match no
** version exactly. Most of its searches probe every list (nprobe = nlist)
** with re-ranking (refine 8, full vectors kept), so distances are exact and
** found = k, and are checked like the others; every fourth probes 1-3
** lists without re-ranking and is checked for its shape only (valid and
** distinct keys, sorted, found <= k).
**
** Work is counted in writes; threads meet at phase boundaries by counts,
** never by time. A failed check in any thread stops the writer, which
** stops everything else.
**
** Soak (`make soak`): with VTEST_SOAK_SECONDS=S in the environment each
** configuration runs for S seconds instead of its counted cycles: the
** writer goes on with cycles (each opening with the big batch again)
** while time is left and its history has room for another, then the run
** ends with its usual checks, and fresh runs on a new file with a new
** seed follow until the S seconds are spent. Soak runs also cover a
** compressed storage per test (int8 HNSW, half-precision flat, both
** keeping float32 vectors so that distances and gets stay exact), left
** out of the counted runs to keep `make tsan` and the qemu runs short,
** and print what each run did. */

#define ST_DIM 8
#define ST_K 10
#define ST_READERS 3
#define ST_QB 4            /* queries per vecidx_search_batch */
#define ST_OPS_CAP 65536u  /* writes a configuration may make */
#define ST_LOG_CAP 262144u /* keys they may change */

typedef struct st_cfg {
    const char *name;
    int kind, metric;
    unsigned sync;     /* VECIDX_SYNC_NORMAL or VECIDX_SYNC_OFF */
    uint32_t universe; /* keys are 0 .. universe-1 */
    uint32_t preload;  /* live keys before the threads start */
    uint32_t min_live; /* the writer never goes below */
    uint32_t big;      /* rows of the batch opening the first cycle */
    uint32_t medium;   /* rows of a batch amid the random writes */
    unsigned cycles;
    unsigned churn;     /* random writes per cycle */
    uint32_t shrink_to; /* each cycle ends removing down to this */
    unsigned ck_stride; /* writes per round of the checkpoint thread */
    unsigned w_ckpt;    /* the writer checkpoints every w_ckpt writes */
    uint32_t storage;   /* VECIDX_STORE_*; compressed ones keep vectors */
} st_cfg;

/* Seconds per configuration of a soak run; 0 when not soaking. */
static double st_soak_seconds(void)
{
    const char *s = getenv("VTEST_SOAK_SECONDS");
    double v = s ? strtod(s, NULL) : 0;
    return v > 0 ? v : 0;
}

typedef struct st_change {
    uint32_t key, ver; /* ver 0: removed */
} st_change;

typedef struct st_shared {
    const st_cfg *c;
    double soak_end; /* soak: no cycle starts after this time; else 0 */
    vecidx *ix;
    char path[700], copy[700];
    atomic_uint *version; /* per key: latest version published, 0 = never */
    /* The writer's history, written ahead of each call and published by
    ** `started`: write t changed log[first[t] .. first[t+1]) and left the
    ** state whose hash is hash[t]; write 0 is the preload. */
    st_change *log;
    uint32_t *first;
    uint64_t *hash;
    atomic_uint started, done; /* writes begun / returned */
    atomic_uint ckpt_floor;    /* a checkpoint finished with this state or
                                  a later one */
    atomic_int writer_done, writer_waiting, ckpt_alive, readers_alive;
    pthread_mutex_t mu; /* with cv: the writer wakes the checkpoint thread */
    pthread_cond_t cv;
    atomic_long rounds, ckpt_rounds; /* reader rounds in all, checkpoints */
    atomic_long searches, gets, lists, checks;
    atomic_long saves, opens, stale_opens;
} st_shared;

/* Hash of one key's state; the state's hash is the sum over its keys. */
static uint64_t st_h(uint32_t key, uint32_t ver)
{
    vt_rng r;
    if (ver == 0) return 0;
    r.s = (uint64_t)key << 32 | ver;
    return vt_next(&r);
}

/* A checkpoint holding at least the state after write t has finished. */
static void st_raise_floor(st_shared *sh, uint32_t t)
{
    uint32_t f = atomic_load(&sh->ckpt_floor);
    while (f < t && !atomic_compare_exchange_weak(&sh->ckpt_floor, &f, t))
        continue;
}

static void st_kick(st_shared *sh)
{
    pthread_mutex_lock(&sh->mu);
    pthread_cond_broadcast(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
}

/* ---- stress: the readers ---- */

/* Which published version of key is v, bit for bit? 0 if none. */
static uint32_t st_version_of(st_shared *sh, uint32_t key, const float *v)
{
    uint32_t ver = atomic_load(&sh->version[key]);
    float w[ST_DIM];
    for (; ver >= 1; ver--) {
        vt_vector_for(key, ver, w, ST_DIM);
        if (memcmp(v, w, sizeof w) == 0) return ver;
    }
    return 0;
}

/* Does (key, dist) match one of the key's published versions? */
static int st_plausible(st_shared *sh, const float *q, uint64_t key, float dist)
{
    float v[ST_DIM];
    uint32_t ver;
    if (key >= sh->c->universe) return 0;
    for (ver = atomic_load(&sh->version[key]); ver >= 1; ver--) {
        double tol, ref;
        vt_vector_for(key, ver, v, ST_DIM);
        ref = vt_ref_dist(sh->c->metric, q, v, ST_DIM, &tol);
        if (fabs((double)dist - ref) <= tol) return 1;
    }
    return 0;
}

static int st_filter(uint64_t key, void *ctx)
{
    (void)ctx;
    return key % 5 != 0;
}

/* One result list. exact: distances are exact and found must be k. */
static void st_check_result(st_shared *sh, const float *q, const uint64_t *keys,
                            const float *dists, size_t found, int filtered,
                            int exact)
{
    const char *name = sh->c->name;
    size_t i, j;
    CHECKF(exact ? found == ST_K : found <= ST_K, "%s: found %zu, wanted %s%d",
           name, found, exact ? "" : "at most ", ST_K);
    if (!vt_check_sorted(name, keys, dists, found, ST_K)) return;
    for (i = 0; i < found; i++) {
        uint64_t key = keys[i];
        CHECKF(key < sh->c->universe && atomic_load(&sh->version[key]) > 0,
               "%s: result key %llu was never inserted", name,
               (unsigned long long)key);
        if (key >= sh->c->universe) continue;
        CHECKF(!filtered || st_filter(key, NULL),
               "%s: result key %llu is not admitted by the filter", name,
               (unsigned long long)key);
        for (j = 0; j < i; j++)
            CHECKF(keys[j] != key, "%s: key %llu at ranks %zu and %zu", name,
                   (unsigned long long)key, j, i);
        CHECKF(!exact || st_plausible(sh, q, key, dists[i]),
               "%s: result key %llu at distance %.9g matches no version of "
               "it",
               name, (unsigned long long)key, (double)dists[i]);
    }
}

/* vecidx_keys: inserted keys, each once, as many as the count bounds. */
static void st_check_keys_call(st_shared *sh, uint64_t *keys,
                               unsigned char *seen)
{
    const st_cfg *c = sh->c;
    size_t n = 0, i;
    CHECK_OK(vecidx_keys(sh->ix, keys, c->universe, &n));
    CHECKF(n >= c->min_live && n <= c->universe, "%s: vecidx_keys gave %zu",
           c->name, n);
    if (n > c->universe) return;
    memset(seen, 0, c->universe);
    for (i = 0; i < n; i++) {
        uint64_t key = keys[i];
        CHECKF(key < c->universe && atomic_load(&sh->version[key]) > 0 &&
                   !seen[key],
               "%s: vecidx_keys gave key %llu (never inserted, or twice)",
               c->name, (unsigned long long)key);
        if (key < c->universe) seen[key] = 1;
    }
}

typedef struct st_reader {
    st_shared *sh;
    unsigned id;
} st_reader;

static void *st_reader_main(void *arg)
{
    st_reader *rd = arg;
    st_shared *sh = rd->sh;
    const st_cfg *c = sh->c;
    uint64_t *all = vt_xmalloc(c->universe * sizeof *all);
    unsigned char *seen = vt_xmalloc(c->universe);
    float q[ST_QB * ST_DIM], v[ST_DIM], dists[ST_QB * ST_K];
    uint64_t keys[ST_QB * ST_K];
    size_t found[ST_QB], i, count;
    vt_rng r;
    long n, cap = sh->soak_end > 0 ? LONG_MAX : 2000000;
    r.s = 7000 + rd->id;
    /* until the writer is done and at least 20 rounds; the cap only
    ** guards against a writer that never finishes (a soaking one stops
    ** by the clock) */
    for (n = 0; n < cap && (n < 20 || !atomic_load(&sh->writer_done)); n++) {
        vecidx_search_opts o;
        int filtered = (int)(n % 3 == 2), exact = 1;
        uint64_t key;
        int rc;
        memset(&o, 0, sizeof o);
        if (filtered) o.filter = st_filter;
        if (c->kind == VECIDX_IVFPQ) {
            exact = n % 4 != 3;
            o.nprobe = exact ? 8 : 1 + (uint32_t)(n % 3);
            o.refine = exact ? 8 : 1;
        }
        vt_fill_uniform(&r, q, ST_QB * ST_DIM, -1.0f, 1.0f);
        if (rd->id == 1) {
            o.threads = 2;
            CHECK_OK(vecidx_search_batch(sh->ix, ST_QB, q, ST_K, &o, keys,
                                         dists, found));
            for (i = 0; i < ST_QB; i++)
                st_check_result(sh, q + i * ST_DIM, keys + i * ST_K,
                                dists + i * ST_K, found[i], filtered, exact);
        } else {
            CHECK_OK(vecidx_search(sh->ix, q, ST_K, &o, keys, dists, found));
            st_check_result(sh, q, keys, dists, found[0], filtered, exact);
        }
        atomic_fetch_add(&sh->searches, 1);
        /* get: one published version, whole; contains agrees it was put */
        key = vt_below(&r, c->universe);
        rc = vecidx_get(sh->ix, key, v);
        CHECKF(rc == VECIDX_OK || rc == VECIDX_ENOTFOUND, "%s: get returned %d",
               c->name, rc);
        CHECKF(rc != VECIDX_OK || st_version_of(sh, (uint32_t)key, v) > 0,
               "%s: get of key %llu returned no published version", c->name,
               (unsigned long long)key);
        rc = vecidx_contains(sh->ix, key);
        CHECKF(rc == 0 || (rc == 1 && atomic_load(&sh->version[key]) > 0),
               "%s: contains(%llu) returned %d", c->name,
               (unsigned long long)key, rc);
        atomic_fetch_add(&sh->gets, 1);
        count = vecidx_count(sh->ix);
        CHECKF(count >= c->min_live && count <= c->universe,
               "%s: count %zu outside %u..%u", c->name, count, c->min_live,
               c->universe);
        if ((unsigned long)n % 8 == rd->id) {
            vecidx_stats_t st;
            CHECK_OK(vecidx_stats(sh->ix, &st));
            CHECKF(st.kind == c->kind && st.metric == c->metric &&
                       st.dim == ST_DIM && st.count >= c->min_live &&
                       st.count <= c->universe && st.slots >= st.count,
                   "%s: stats kind %d metric %d dim %u count %llu slots %llu",
                   c->name, st.kind, st.metric, st.dim,
                   (unsigned long long)st.count, (unsigned long long)st.slots);
        }
        if ((unsigned long)n % 16 == rd->id) {
            st_check_keys_call(sh, all, seen);
            atomic_fetch_add(&sh->lists, 1);
        }
        if ((unsigned long)n % 128 == 8ul * rd->id) {
            CHECK_OK(vecidx_check(sh->ix));
            atomic_fetch_add(&sh->checks, 1);
        }
        atomic_fetch_add(&sh->rounds, 1);
        if (vt_failures() > 0) break;
    }
    atomic_fetch_sub(&sh->readers_alive, 1);
    free(all);
    free(seen);
    return NULL;
}

/* ---- stress: states of the history ---- */

/* The state after write t (versions per key, 0 = absent), replayed from
** the log. */
static void st_replay(const st_shared *sh, uint32_t t, uint32_t *state)
{
    uint32_t i, end = sh->first[t + 1];
    memset(state, 0, sh->c->universe * sizeof *state);
    for (i = 0; i < end; i++) state[sh->log[i].key] = sh->log[i].ver;
}

/* The state held by handle f: the version of every key (its vector must
** be one published version, bit for bit) and the state's hash. Returns 0
** (after recording why) if it is no state at all. */
static int st_state_of(st_shared *sh, vecidx *f, const char *what,
                       uint32_t *state, uint64_t *hash)
{
    const st_cfg *c = sh->c;
    uint64_t *keys = vt_xmalloc((c->universe + 1) * sizeof *keys);
    float v[ST_DIM];
    size_t n = 0, i;
    long before = vt_failures();
    memset(state, 0, c->universe * sizeof *state);
    *hash = 0;
    CHECK_OK(vecidx_keys(f, keys, c->universe + 1, &n));
    CHECKF(n <= c->universe && vecidx_count(f) == n,
           "%s %s: %zu keys, count %zu", c->name, what, n, vecidx_count(f));
    for (i = 0; i < n && i <= c->universe && vt_failures() == before; i++) {
        uint64_t key = keys[i];
        uint32_t ver;
        CHECKF(key < c->universe && state[key] == 0,
               "%s %s: key %llu is unknown or listed twice", c->name, what,
               (unsigned long long)key);
        if (key >= c->universe) break;
        CHECK_OK(vecidx_get(f, key, v));
        ver = st_version_of(sh, (uint32_t)key, v);
        CHECKF(ver > 0, "%s %s: key %llu holds no published version", c->name,
               what, (unsigned long long)key);
        state[key] = ver;
        *hash += st_h((uint32_t)key, ver);
    }
    free(keys);
    return vt_failures() == before;
}

/* Is `state` (hash hs) the state after one of the writes lo..hi? Sets
** *at to that write. `scratch` has room for a state. */
static int st_find(const st_shared *sh, const uint32_t *state, uint64_t hs,
                   uint32_t lo, uint32_t hi, uint32_t *scratch, uint32_t *at)
{
    size_t bytes = sh->c->universe * sizeof *state;
    uint32_t t;
    for (t = lo; t <= hi; t++) {
        if (sh->hash[t] != hs) continue;
        st_replay(sh, t, scratch);
        if (memcmp(scratch, state, bytes) == 0) {
            *at = t;
            return 1;
        }
    }
    return 0;
}

/* On a miss: how far is state from the nearest state lo..hi? */
static void st_report_miss(const st_shared *sh, const char *what,
                           const uint32_t *state, uint32_t lo, uint32_t hi,
                           uint32_t *scratch)
{
    uint32_t t, best_t = lo, best = UINT32_MAX, i, d, n = 0;
    for (i = 0; i < sh->c->universe; i++) n += state[i] != 0;
    for (t = lo; t <= hi; t++) {
        st_replay(sh, t, scratch);
        for (i = 0, d = 0; i < sh->c->universe; i++)
            d += scratch[i] != state[i];
        if (d < best) {
            best = d;
            best_t = t;
        }
    }
    vt_fail(__FILE__, __LINE__,
            "%s %s: its %u keys are no state of writes %u..%u (nearest: "
            "write %u, %u keys differ)",
            sh->c->name, what, n, lo, hi, best_t, best);
}

/* Save to the second path; the copy opens, passes vecidx_check and is a
** state the writer's history went through while the save ran, at a write
** boundary: a save snapshots between two writes, never inside a batch. */
static void st_check_save(st_shared *sh, uint32_t *state, uint32_t *scratch)
{
    vecidx *f = NULL;
    uint32_t a, b, at;
    uint64_t hs;
    a = atomic_load(&sh->done);
    CHECK_OK(vecidx_save(sh->ix, sh->copy));
    b = atomic_load(&sh->started);
    CHECK_OK(vecidx_open(sh->copy, NULL, VECIDX_RDONLY, &f));
    if (!f) return;
    CHECK_OK(vecidx_check(f));
    if (st_state_of(sh, f, "saved copy", state, &hs)) {
        if (!st_find(sh, state, hs, a, b, scratch, &at))
            st_report_miss(sh, "saved copy", state, a, b, scratch);
    }
    vecidx_close(f);
    atomic_fetch_add(&sh->saves, 1);
}

/* The main file opened read-only beside the writer holds a state of the
** history at a write boundary (its log holds whole calls): at least that
** of the last checkpoint finished before the open began (the file it
** maps is that one or newer), at most the last write started when the
** open returned. Not necessarily every write finished before it began, as
** vecidx.h says: a checkpoint that restarts the log while the open reads
** it (mapped the old file, read part of the old log) leaves it a state
** between the two checkpoints. Counted as stale. */
static void st_check_open(st_shared *sh, uint32_t *state, uint32_t *scratch)
{
    vecidx *f = NULL;
    uint32_t a, b, lo, at;
    uint64_t hs;
    lo = atomic_load(&sh->ckpt_floor);
    a = atomic_load(&sh->done);
    CHECK_OK(vecidx_open(sh->path, NULL, VECIDX_RDONLY, &f));
    b = atomic_load(&sh->started);
    if (!f) return;
    CHECK_OK(vecidx_check(f));
    if (st_state_of(sh, f, "read-only open", state, &hs)) {
        if (!st_find(sh, state, hs, lo, b, scratch, &at))
            st_report_miss(sh, "read-only open", state, lo, b, scratch);
        else if (at < a)
            atomic_fetch_add(&sh->stale_opens, 1);
    }
    vecidx_close(f);
    atomic_fetch_add(&sh->opens, 1);
}

/* Checkpoint, sync and save once per ck_stride writes (or when the writer
** waits for it), until the writer is done and at least 3 rounds. */
static void *st_ckpt_main(void *arg)
{
    st_shared *sh = arg;
    uint32_t *state = vt_xmalloc(sh->c->universe * sizeof *state);
    uint32_t *scratch = vt_xmalloc(sh->c->universe * sizeof *scratch);
    unsigned last = 0;
    long round;
    for (round = 0; vt_failures() == 0; round++) {
        pthread_mutex_lock(&sh->mu);
        while (!atomic_load(&sh->writer_done) &&
               !atomic_load(&sh->writer_waiting) &&
               atomic_load(&sh->done) < last + sh->c->ck_stride)
            pthread_cond_wait(&sh->cv, &sh->mu);
        pthread_mutex_unlock(&sh->mu);
        if (atomic_load(&sh->writer_done) && round >= 3) break;
        last = atomic_load(&sh->done);
        CHECK_OK(vecidx_checkpoint(sh->ix));
        st_raise_floor(sh, last);
        CHECK_OK(vecidx_sync(sh->ix));
        st_check_save(sh, state, scratch);
        if (round % 2 == 0) st_check_open(sh, state, scratch);
        pthread_mutex_lock(&sh->mu);
        atomic_fetch_add(&sh->ckpt_rounds, 1);
        pthread_cond_broadcast(&sh->cv);
        pthread_mutex_unlock(&sh->mu);
    }
    pthread_mutex_lock(&sh->mu);
    atomic_store(&sh->ckpt_alive, 0);
    pthread_cond_broadcast(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
    free(state);
    free(scratch);
    return NULL;
}

/* ---- stress: the writer ---- */

typedef struct st_writer {
    st_shared *sh;
    const st_cfg *c;
    vt_rng r;
    vt_set model;
    uint32_t *perm, *pos; /* perm[0..live) live keys, then the others */
    uint32_t live;
    uint32_t *cur; /* version per key in the current state, 0 = absent */
    uint64_t h;    /* hash of the current state */
    uint32_t op, nlog;
    uint64_t *keys; /* batch rows */
    float *vecs;
    int stop;
    long adds, upserts, removes, batches, rows, ckpts;
    /* HNSW: slots seen, slots reused (an insert that did not grow the
    ** slots: a repair freed them), buried nodes and repairs due by the
    ** rule of vecidx.h, the most slots not live */
    uint64_t slots, reused, max_idle;
    uint32_t buried;
    long repairs_due;
} st_writer;

static int st_stopped(st_writer *w)
{
    if (vt_failures() > 0) w->stop = 1;
    return w->stop;
}

static void st_move(st_writer *w, uint32_t key, int live)
{
    uint32_t p = w->pos[key], q = live ? w->live : w->live - 1, other;
    other = w->perm[q];
    w->perm[q] = key;
    w->perm[p] = other;
    w->pos[key] = q;
    w->pos[other] = p;
    w->live += live ? 1 : -1;
}

/* Begin write number op + 1 changing up to `rows` keys. */
static int st_begin(st_writer *w, uint32_t rows)
{
    if (w->op + 2 >= ST_OPS_CAP || w->nlog + rows > ST_LOG_CAP) {
        CHECKF(0, "%s: the history is full", w->c->name);
        w->stop = 1;
        return 0;
    }
    w->op++;
    return 1;
}

/* Log key's change to version ver (0: removal); a new version is
** published first, and its vector written to v. */
static void st_log_change(st_writer *w, uint32_t key, uint32_t ver, float *v)
{
    st_shared *sh = w->sh;
    if (ver) {
        atomic_store(&sh->version[key], ver);
        vt_vector_for(key, ver, v, ST_DIM);
    }
    w->h += st_h(key, ver) - st_h(key, w->cur[key]);
    w->cur[key] = ver;
    sh->log[w->nlog].key = key;
    sh->log[w->nlog].ver = ver;
    w->nlog++;
}

static void st_publish(st_writer *w)
{
    w->sh->first[w->op + 1] = w->nlog;
    w->sh->hash[w->op] = w->h;
    atomic_store(&w->sh->started, w->op);
}

/* After the call: done, a round of the checkpoint thread when due, the
** writer's own checkpoints and syncs, and the HNSW slot counters for a
** call that made `nodes` graph nodes and buried `buried`. */
static void st_end(st_writer *w, uint32_t nodes, uint32_t buried)
{
    st_shared *sh = w->sh;
    const st_cfg *c = w->c;
    atomic_store(&sh->done, w->op);
    if (w->op % c->ck_stride == 0) st_kick(sh);
    if (w->op % c->w_ckpt == 0) {
        CHECK_OK(vecidx_checkpoint(sh->ix));
        st_raise_floor(sh, w->op);
        w->ckpts++;
    }
    if (w->op % 251 == 0) CHECK_OK(vecidx_sync(sh->ix));
    if (c->kind == VECIDX_HNSW) {
        vecidx_stats_t st;
        uint32_t used;
        CHECK_OK(vecidx_stats(sh->ix, &st));
        if (st.slots < w->slots + nodes)
            w->reused += w->slots + nodes - st.slots;
        w->slots = st.slots;
        if (st.slots - st.count > w->max_idle)
            w->max_idle = st.slots - st.count;
        w->buried += buried;
        used = w->live + w->buried;
        if ((w->buried >= 64 && w->buried >= (double)used * 3 / 40) ||
            (w->buried && w->live < w->buried)) {
            w->buried = 0;
            w->repairs_due++;
        }
    }
}

static uint32_t st_pick(st_writer *w, int live)
{
    uint32_t n = live ? w->live : w->c->universe - w->live;
    return w->perm[(live ? 0 : w->live) + (uint32_t)vt_below(&w->r, n)];
}

static void st_add(st_writer *w)
{
    uint32_t key = st_pick(w, 0);
    float v[ST_DIM];
    if (!st_begin(w, 1)) return;
    st_log_change(w, key, atomic_load(&w->sh->version[key]) + 1, v);
    st_publish(w);
    CHECK_OK(vecidx_add(w->sh->ix, key, v));
    vt_set_put(&w->model, key, v);
    st_move(w, key, 1);
    w->adds++;
    st_end(w, 1, 0);
}

static void st_upsert(st_writer *w)
{
    uint32_t key = st_pick(w, 1);
    int graph = w->c->kind == VECIDX_HNSW;
    float v[ST_DIM];
    if (!st_begin(w, 1)) return;
    st_log_change(w, key, atomic_load(&w->sh->version[key]) + 1, v);
    st_publish(w);
    CHECK_OK(vecidx_upsert(w->sh->ix, key, v));
    vt_set_put(&w->model, key, v);
    w->upserts++;
    st_end(w, graph ? 1 : 0, graph ? 1 : 0);
}

static void st_remove(st_writer *w)
{
    uint32_t key = st_pick(w, 1);
    if (!st_begin(w, 1)) return;
    st_log_change(w, key, 0, NULL);
    st_publish(w);
    CHECK_OK(vecidx_remove(w->sh->ix, key));
    vt_set_del(&w->model, key);
    st_move(w, key, 0);
    w->removes++;
    st_end(w, 0, 1);
}

/* A batch of n keys absent now: the first n of the absent part of perm,
** shuffled in, which then simply joins the live part. */
static void st_batch(st_writer *w, uint32_t n)
{
    const uint32_t u = w->c->universe;
    uint32_t i;
    if (n > u - w->live) n = u - w->live;
    if (n == 0 || !st_begin(w, n)) return;
    for (i = 0; i < n; i++) {
        uint32_t p = w->live + i, q = p + (uint32_t)vt_below(&w->r, u - p);
        uint32_t a = w->perm[p], b = w->perm[q];
        w->perm[p] = b;
        w->perm[q] = a;
        w->pos[b] = p;
        w->pos[a] = q;
        w->keys[i] = b;
        st_log_change(w, b, atomic_load(&w->sh->version[b]) + 1,
                      w->vecs + (size_t)i * ST_DIM);
    }
    st_publish(w);
    CHECK_OK(vecidx_add_batch(w->sh->ix, n, w->keys, w->vecs));
    for (i = 0; i < n; i++)
        vt_set_put(&w->model, w->keys[i], w->vecs + (size_t)i * ST_DIM);
    w->live += n;
    w->batches++;
    w->rows += n;
    st_end(w, w->c->kind == VECIDX_HNSW ? n : 0, 0);
}

static void st_random_write(st_writer *w)
{
    unsigned what = (unsigned)vt_below(&w->r, 100);
    int can_add = w->live<w->c->universe, can_remove = w->live> w->c->min_live;
    if (what < 25 && can_add)
        st_add(w);
    else if (what < 28 && can_add)
        st_batch(w, 2 + (uint32_t)vt_below(&w->r, 19));
    else if (what < 53 || !can_remove)
        st_upsert(w);
    else
        st_remove(w);
}

/* Wait for a round of the checkpoint thread and ST_READERS reader rounds
** since the last meeting, so that every phase overlaps them. */
static void st_meet(st_writer *w)
{
    st_shared *sh = w->sh;
    long ck = atomic_load(&sh->ckpt_rounds) + 1;
    long rd = atomic_load(&sh->rounds) + ST_READERS;
    pthread_mutex_lock(&sh->mu);
    atomic_store(&sh->writer_waiting, 1);
    pthread_cond_broadcast(&sh->cv);
    while (atomic_load(&sh->ckpt_alive) && atomic_load(&sh->ckpt_rounds) < ck &&
           vt_failures() == 0)
        pthread_cond_wait(&sh->cv, &sh->mu);
    atomic_store(&sh->writer_waiting, 0);
    pthread_mutex_unlock(&sh->mu);
    while (atomic_load(&sh->readers_alive) > 0 &&
           atomic_load(&sh->rounds) < rd && vt_failures() == 0)
        sched_yield();
}

/* Start cycle cyc? The counted cycles always run; a soak goes on while
** time is left and the history surely holds one more cycle (its batches,
** churn, and removals of at most the whole universe). */
static int st_more(st_writer *w, unsigned cyc)
{
    const st_cfg *c = w->c;
    if (st_stopped(w)) return 0;
    if (cyc < c->cycles) return 1;
    return w->sh->soak_end > 0 && vt_seconds() < w->sh->soak_end &&
           w->op + c->churn + 2 * c->universe + 8 < ST_OPS_CAP &&
           w->nlog + c->big + c->medium + 21 * c->churn + 2 * c->universe <
               ST_LOG_CAP;
}

static void st_write(st_writer *w)
{
    const st_cfg *c = w->c;
    unsigned cyc, i;
    for (cyc = 0; st_more(w, cyc); cyc++) {
        st_meet(w);
        if ((cyc == 0 || w->sh->soak_end > 0) && c->big) st_batch(w, c->big);
        for (i = 0; i < c->churn && !st_stopped(w); i++) {
            if (i == c->churn / 2 && c->medium) st_batch(w, c->medium);
            st_random_write(w);
        }
        st_meet(w);
        for (i = 0; w->live > c->shrink_to && !st_stopped(w); i++) {
            if (i % 16 == 15 && w->live < c->universe)
                st_add(w);
            else if (i % 8 == 3)
                st_upsert(w);
            else
                st_remove(w);
        }
    }
    st_meet(w);
}

/* ---- stress: one configuration ---- */

/* The handle holds exactly the writer's state: keys, vectors bit for bit,
** count, stats, vecidx_check (vt_check_contents), vecidx_keys. */
static void st_check_final(st_writer *w, vecidx *f, const char *what)
{
    uint32_t *state = vt_xmalloc(w->c->universe * sizeof *state);
    uint64_t hs;
    char name[96];
    snprintf(name, sizeof name, "%s %s", w->c->name, what);
    vt_check_contents(name, f, &w->model);
    if (st_state_of(w->sh, f, what, state, &hs))
        CHECKF(hs == w->h &&
                   memcmp(state, w->cur, w->c->universe * sizeof *state) == 0,
               "%s %s: vecidx_keys and vecidx_get differ from the writer's "
               "state",
               w->c->name, what);
    free(state);
}

static void st_unlink_all(const char *path)
{
    char p[760];
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s.tmp-%ld", path, (long)getpid());
    unlink(p);
    unlink(path);
}

/* One run of configuration c on a fresh file; round > 0 for the further
** runs of a soak, which change the seed. Returns the writes made. */
static uint32_t st_run(const st_cfg *c, unsigned round, double soak_end)
{
    st_shared *sh = vt_xmalloc(sizeof *sh);
    st_writer *w = vt_xmalloc(sizeof *w);
    st_reader rd[ST_READERS];
    pthread_t tid[ST_READERS], ck;
    int started[ST_READERS], ck_started = 0;
    char dir[512];
    vecidx_params p;
    vecidx *f = NULL;
    uint32_t i, writes = 0;
    unsigned flags = VECIDX_CREATE | c->sync;
    double t0 = vt_seconds();
    if (vt_tmp_dir(dir, sizeof dir, "conc") != 0) {
        free(sh);
        free(w);
        return 0;
    }
    snprintf(sh->path, sizeof sh->path, "%s/ix.vx", dir);
    snprintf(sh->copy, sizeof sh->copy, "%s/copy.vx", dir);
    sh->c = c;
    sh->soak_end = soak_end;
    sh->version = vt_xmalloc(c->universe * sizeof *sh->version);
    for (i = 0; i < c->universe; i++) atomic_init(&sh->version[i], 0);
    sh->log = vt_xmalloc(ST_LOG_CAP * sizeof *sh->log);
    sh->first = vt_xmalloc((ST_OPS_CAP + 1) * sizeof *sh->first);
    sh->hash = vt_xmalloc(ST_OPS_CAP * sizeof *sh->hash);
    atomic_init(&sh->started, 0);
    atomic_init(&sh->done, 0);
    atomic_init(&sh->ckpt_floor, 0);
    atomic_init(&sh->writer_done, 0);
    atomic_init(&sh->writer_waiting, 0);
    atomic_init(&sh->ckpt_alive, 1);
    atomic_init(&sh->readers_alive, ST_READERS);
    atomic_init(&sh->rounds, 0);
    atomic_init(&sh->ckpt_rounds, 0);
    atomic_init(&sh->searches, 0);
    atomic_init(&sh->gets, 0);
    atomic_init(&sh->lists, 0);
    atomic_init(&sh->checks, 0);
    atomic_init(&sh->saves, 0);
    atomic_init(&sh->opens, 0);
    atomic_init(&sh->stale_opens, 0);
    pthread_mutex_init(&sh->mu, NULL);
    pthread_cond_init(&sh->cv, NULL);

    w->sh = sh;
    w->c = c;
    w->r.s = 5150 + (uint64_t)c->kind * 10 + (uint64_t)c->metric +
             (uint64_t)c->storage * 100 + (uint64_t)round * 1000;
    vt_set_init(&w->model, ST_DIM, c->universe);
    w->perm = vt_xmalloc(c->universe * sizeof *w->perm);
    w->pos = vt_xmalloc(c->universe * sizeof *w->pos);
    w->cur = vt_xmalloc(c->universe * sizeof *w->cur);
    for (i = 0; i < c->universe; i++) w->perm[i] = w->pos[i] = i;
    i = c->big > c->preload ? c->big : c->preload;
    if (c->medium > i) i = c->medium;
    w->keys = vt_xmalloc(i * sizeof *w->keys);
    w->vecs = vt_xmalloc((size_t)i * ST_DIM * sizeof *w->vecs);

    CHECK_OK(vecidx_params_init(&p, c->kind, c->metric, ST_DIM));
    p.threads = 2;
    p.hnsw_m = 8;
    p.hnsw_ef_construction = 40;
    if (c->kind == VECIDX_IVFPQ) {
        p.ivf_nlist = 8;
        p.pq_m = 4;
        p.ivf_train_size = 300;
        p.ivf_keep_vectors = 1;
    }
    if (c->storage != VECIDX_STORE_F32) {
        p.storage = c->storage;
        p.keep_vectors = 1;
    }
    CHECK_OK(vecidx_open(sh->path, &p, flags, &sh->ix));
    if (!sh->ix) goto out;

    /* write 0, the preload, before the threads start */
    w->op = (uint32_t)-1;
    st_batch(w, c->preload);
    for (i = 0; i < ST_READERS; i++) {
        rd[i].sh = sh;
        rd[i].id = i;
        started[i] = pthread_create(&tid[i], NULL, st_reader_main, &rd[i]) == 0;
        CHECKF(started[i], "pthread_create failed for reader %u", i);
        if (!started[i]) atomic_fetch_sub(&sh->readers_alive, 1);
    }
    ck_started = pthread_create(&ck, NULL, st_ckpt_main, sh) == 0;
    CHECK(ck_started);
    if (!ck_started) atomic_store(&sh->ckpt_alive, 0);

    st_write(w);

    pthread_mutex_lock(&sh->mu);
    atomic_store(&sh->writer_done, 1);
    pthread_cond_broadcast(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
    for (i = 0; i < ST_READERS; i++)
        if (started[i]) pthread_join(tid[i], NULL);
    if (ck_started) pthread_join(ck, NULL);

    writes = w->op;
    if (getenv("VTEST_DEBUG") || soak_end > 0) {
        printf("  %s, run %u (%.2f s): %u writes (%ld adds, %ld upserts, %ld "
               "removes, %ld batches of %ld rows), %ld writer checkpoints\n",
               c->name, round + 1, vt_seconds() - t0, w->op, w->adds,
               w->upserts, w->removes, w->batches, w->rows, w->ckpts);
        printf("    readers: %ld rounds, %ld searches, %ld gets, %ld key "
               "lists, %ld checks\n",
               atomic_load(&sh->rounds), atomic_load(&sh->searches),
               atomic_load(&sh->gets), atomic_load(&sh->lists),
               atomic_load(&sh->checks));
        printf("    checkpoint thread: %ld rounds, %ld saves, %ld read-only "
               "opens (%ld stale)\n",
               atomic_load(&sh->ckpt_rounds), atomic_load(&sh->saves),
               atomic_load(&sh->opens), atomic_load(&sh->stale_opens));
        if (c->kind == VECIDX_HNSW)
            printf("    slots: %llu, %llu reused, at most %llu not live; "
                   "about %ld repairs by the rule of vecidx.h\n",
                   (unsigned long long)w->slots, (unsigned long long)w->reused,
                   (unsigned long long)w->max_idle, w->repairs_due);
    }
    if (vt_failures() == 0) {
        CHECKF(atomic_load(&sh->ckpt_rounds) >= 2 * (long)c->cycles + 1,
               "%s: %ld checkpoint rounds", c->name,
               atomic_load(&sh->ckpt_rounds));
        /* HNSW storage is reused: repairs ran and freed slots */
        CHECKF(c->kind != VECIDX_HNSW || w->reused > 0,
               "%s: %ld removals and no slot was reused", c->name, w->removes);
    }

    CHECK_OK(vecidx_check(sh->ix));
    st_check_final(w, sh->ix, "after the writer");
    vecidx_close(sh->ix);
    CHECK_OK(vecidx_open(sh->path, NULL, VECIDX_RDONLY, &f));
    if (f) {
        st_check_final(w, f, "reopened read-only");
        vecidx_close(f);
    }
    CHECK_OK(vecidx_open(sh->path, NULL, c->sync, &f));
    if (f) {
        st_check_final(w, f, "reopened writable");
        vecidx_close(f);
    }
    /* the last saved copy: some state of the history, checked there */
    f = NULL;
    if (atomic_load(&sh->saves) > 0)
        CHECK_OK(vecidx_open(sh->copy, NULL, VECIDX_RDONLY, &f));
    if (f) {
        CHECK_OK(vecidx_check(f));
        vecidx_close(f);
    }
out:
    st_unlink_all(sh->path);
    st_unlink_all(sh->copy);
    if (rmdir(dir) != 0)
        vt_fail(__FILE__, __LINE__, "rmdir %s: %s (a file left behind?)", dir,
                strerror(errno));
    pthread_mutex_destroy(&sh->mu);
    pthread_cond_destroy(&sh->cv);
    vt_set_free(&w->model);
    free(w->perm);
    free(w->pos);
    free(w->cur);
    free(w->keys);
    free(w->vecs);
    free(sh->version);
    free(sh->log);
    free(sh->first);
    free(sh->hash);
    free(sh);
    free(w);
    return writes;
}

/* The first n_counted configurations of cfg, and in a soak all of them,
** each for VTEST_SOAK_SECONDS in as many runs as fit. */
static void st_run_all(const st_cfg *cfg, size_t n_counted, size_t n_all)
{
    double soak = st_soak_seconds(), t0;
    size_t i;
    for (i = 0; i < (soak > 0 ? n_all : n_counted) && vt_failures() == 0; i++) {
        unsigned round = 0;
        unsigned long writes = 0;
        t0 = vt_seconds();
        do writes += st_run(&cfg[i], round++, soak > 0 ? t0 + soak : 0);
        while (soak > 0 && vt_seconds() < t0 + soak && vt_failures() == 0);
        if (soak > 0)
            printf("  soak %s: %u run%s, %lu writes in %.0f s\n", cfg[i].name,
                   round, round == 1 ? "" : "s", writes, vt_seconds() - t0);
    }
}

/* name, kind, metric, sync, universe, preload, min_live, big, medium,
** cycles, churn, shrink_to, ck_stride, w_ckpt, storage; the entries after
** the first n_counted run in soaks only */
void test_concurrency_file_stress_hnsw(void)
{
    static const st_cfg cfg[] = {
        {"hnsw l2", VECIDX_HNSW, VECIDX_L2, VECIDX_SYNC_OFF, 5000, 400, 200,
         4200, 300, 1, 300, 3000, 250, 500, VECIDX_STORE_F32},
        {"hnsw cosine", VECIDX_HNSW, VECIDX_COSINE, VECIDX_SYNC_OFF, 1200, 300,
         150, 800, 200, 2, 250, 250, 250, 500, VECIDX_STORE_F32},
        {"hnsw ip", VECIDX_HNSW, VECIDX_IP, VECIDX_SYNC_OFF, 1200, 300, 150,
         800, 200, 2, 250, 250, 250, 500, VECIDX_STORE_F32},
        {"hnsw int8 l2", VECIDX_HNSW, VECIDX_L2, VECIDX_SYNC_OFF, 1200, 300,
         150, 800, 200, 2, 250, 250, 250, 500, VECIDX_STORE_I8},
    };
    st_run_all(cfg, 3, sizeof cfg / sizeof cfg[0]);
}

void test_concurrency_file_stress_flat_ivfpq(void)
{
    static const st_cfg cfg[] = {
        {"flat l2", VECIDX_FLAT, VECIDX_L2, VECIDX_SYNC_OFF, 1500, 400, 100,
         800, 200, 2, 250, 250, 250, 500, VECIDX_STORE_F32},
        {"ivfpq l2", VECIDX_IVFPQ, VECIDX_L2, VECIDX_SYNC_NORMAL, 1500, 150,
         100, 800, 200, 1, 250, 250, 250, 500, VECIDX_STORE_F32},
        {"flat f16 cosine", VECIDX_FLAT, VECIDX_COSINE, VECIDX_SYNC_OFF, 1500,
         400, 100, 800, 200, 2, 250, 250, 250, 500, VECIDX_STORE_F16},
    };
    st_run_all(cfg, 2, sizeof cfg / sizeof cfg[0]);
}

/* ---- readers verifying a file's pieces at once ------------------------- */

typedef struct vt_verify_ctx {
    vecidx *f;
    const float *q;
    size_t nq;
    uint32_t dim;
    const uint64_t *keys; /* the pristine answers, nq * 10 */
    const size_t *found;
    atomic_int wrong, corrupt, other;
} vt_verify_ctx;

typedef struct vt_verify_arg {
    vt_verify_ctx *c;
    unsigned start; /* each reader asks the queries in its own order */
} vt_verify_arg;

static void *vt_verify_reader(void *arg)
{
    vt_verify_ctx *c = ((vt_verify_arg *)arg)->c;
    unsigned start = ((vt_verify_arg *)arg)->start;
    uint64_t keys[10];
    float dists[10];
    size_t i, found;
    for (i = 0; i < c->nq; i++) {
        size_t qi = (i * 7 + start) % c->nq;
        int rc = vecidx_search(c->f, c->q + qi * c->dim, 10, NULL, keys, dists,
                               &found);
        if (rc == VECIDX_ECORRUPT)
            atomic_fetch_add(&c->corrupt, 1);
        else if (rc != VECIDX_OK)
            atomic_fetch_add(&c->other, 1);
        else if (found != c->found[qi] ||
                 memcmp(keys, c->keys + qi * 10, found * sizeof *keys))
            atomic_fetch_add(&c->wrong, 1);
    }
    return NULL;
}

/* Readers of one handle race to verify the same pieces of a file (a
** reader verifies each piece of 16 slots when it first reads it, and a
** chunk whole when a read comes to a second piece of it): run under TSan,
** and every answer is the pristine one, or VECIDX_ECORRUPT where a piece
** was damaged, never anything else. With lean, the index stores int8
** codes with float32 kept and the racing readers are one VECIDX_LEAN
** handle, which verifies and reads the kept vectors with pread; their
** answers are a plain reader's. */
static void vt_readers_verify(int lean)
{
    enum {
        N = 4000,
        NQ = 60,
        DIM = 32,
        T = 4
    };
    char path[600], bad[620];
    vt_rng r = {77};
    vt_set m;
    vecidx_params p;
    vecidx *ix = NULL, *f = NULL;
    float *q = vt_xmalloc(NQ * DIM * sizeof *q);
    uint64_t *keys = vt_xmalloc(NQ * 10 * sizeof *keys);
    size_t found[NQ], i, len = 0, nk = 0;
    unsigned char *img;
    int pass;
    vt_tmp_name(path, sizeof path, "rverify", ".vx");
    snprintf(bad, sizeof bad, "%s.bad", path);
    vt_set_init(&m, DIM, N);
    CHECK_OK(vecidx_params_init(&p, VECIDX_HNSW, VECIDX_COSINE, DIM));
    p.threads = 1;
    if (lean) {
        p.storage = VECIDX_STORE_I8;
        p.keep_vectors = 1;
    }
    CHECK_OK(vecidx_create(&p, &ix));
    if (!ix) goto out;
    vt_fill_index(ix, &m, N, &r, VT_CLUSTERED);
    vt_make_queries(&r, &m, q, NQ, VT_CLUSTERED);
    CHECK_OK(vecidx_save(ix, path));
    vecidx_close(ix);
    CHECK_OK(vecidx_open(path, NULL, VECIDX_RDONLY, &f));
    if (!f) goto out;
    for (i = 0; i < NQ; i++)
        CHECK_OK(vecidx_search(f, q + i * DIM, 10, NULL, keys + i * 10, NULL,
                               &found[i]));
    vecidx_close(f);
    f = NULL;
    /* a copy with one byte of the chunk section (entry 0 of the section
    ** table at 216: u64 offset, u64 length) flipped, near its middle */
    img = vt_slurp(path, &len);
    if (img && len > 240) {
        uint64_t off = 0, sl = 0;
        FILE *w;
        for (i = 0; i < 8; i++) {
            off |= (uint64_t)img[216 + i] << (8 * i);
            sl |= (uint64_t)img[224 + i] << (8 * i);
        }
        CHECK(sl > 0 && off + sl <= len);
        img[off + sl / 2] ^= 0x40;
        w = fopen(bad, "wb");
        CHECK(w && fwrite(img, 1, len, w) == len);
        if (w) fclose(w);
    }
    free(img);
    for (pass = 0; pass < 2; pass++) {
        pthread_t th[T];
        vt_verify_arg arg[T];
        vt_verify_ctx c;
        memset(&c, 0, sizeof c);
        CHECK_OK(vecidx_open(pass ? bad : path, NULL,
                             VECIDX_RDONLY | (lean ? VECIDX_LEAN : 0u), &f));
        if (!f) continue;
        c.f = f;
        c.q = q;
        c.nq = NQ;
        c.dim = DIM;
        c.keys = keys;
        c.found = found;
        for (i = 0; i < T; i++) {
            arg[i].c = &c;
            arg[i].start = (unsigned)i;
            CHECK(pthread_create(&th[i], NULL, vt_verify_reader, &arg[i]) == 0);
        }
        for (i = 0; i < T; i++) pthread_join(th[i], NULL);
        CHECKF(atomic_load(&c.wrong) == 0 && atomic_load(&c.other) == 0,
               "%s file: %d wrong answers, %d other errors",
               pass ? "damaged" : "pristine", atomic_load(&c.wrong),
               atomic_load(&c.other));
        if (!pass) CHECK(atomic_load(&c.corrupt) == 0);
        /* every chunk is read for the keys: the damage is met there */
        CHECK(vecidx_keys(f, NULL, 0, &nk) == VECIDX_OK && nk == N);
        {
            uint64_t *all = vt_xmalloc((N + 1) * sizeof *all);
            size_t n = 0;
            int rc = vecidx_keys(f, all, N + 1, &n);
            CHECK(rc == (pass ? VECIDX_ECORRUPT : VECIDX_OK));
            free(all);
        }
        vecidx_close(f);
        f = NULL;
    }
out:
    unlink(path);
    unlink(bad);
    vt_set_free(&m);
    free(q);
    free(keys);
}

void test_concurrency_readers_verify(void)
{
    vt_readers_verify(0);
    vt_readers_verify(1);
}
