/*
** test_alloc.c -- allocation failure, SQLite style, and memory accounting.
**
** An allocator installed through vecidx_params.allocator fails the Nth
** call of malloc_fn/realloc_fn (once, or from then on). For N = 1, 2, 3,
** ... a fixed script of calls runs on a fresh index until a run in which
** the Nth allocation is never reached. The script is the same for every
** kind, storage and medium (vt_cfg says which); in every run:
**   - a call during which an allocation failed returns VECIDX_ENOMEM, a
**     call during which none failed succeeds (an add that starts IVF-PQ
**     training may succeed anyway: the training only waits);
**   - after a failed call the index passes vecidx_check and holds exactly
**     the writes that succeeded (a model tracks them); a failed save
**     leaves no file, a failed checkpoint leaves files that still open to
**     the model's content;
**   - stats.memory_bytes equals the bytes the allocator has outstanding;
**   - after vecidx_close every block is freed, realloc_fn always got the
**     block's true size as old_size, and free_fn only live blocks; a
**     file-backed index then reopens to exactly the model's content.
** The open sweeps fail the Nth allocation of vecidx_open of a saved file
** and of a file whose log holds writes never checkpointed (copied aside
** before close, as a crash leaves it): the open fails with VECIDX_ENOMEM,
** leaks nothing and leaves the files as they were, and the next open
** with a working allocator holds the model's content.
*/
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vtest.h"

/* ---- what is swept ------------------------------------------------------ */

/* How an IVF-PQ index gets trained in the script. */
enum {
    VT_TRAIN_CALL = 0, /* by vecidx_train */
    VT_TRAIN_ADD = 1,  /* by the add that reaches ivf_train_size */
    VT_TRAIN_NONE = 2  /* never: the vectors stay buffered */
};

typedef struct vt_cfg {
    const char *name;
    int kind, metric;
    uint32_t dim;
    uint32_t storage;   /* params.storage (flat, HNSW) */
    uint32_t keep;      /* keep_vectors; IVF-PQ: ivf_keep_vectors */
    uint32_t quantizer; /* IVF-PQ coarse quantizer */
    int train;          /* VT_TRAIN_*, IVF-PQ only */
    int file;           /* opened with VECIDX_CREATE: writes are logged */
    int modes;          /* VT_ONCE, VT_FROM_ON or both */
} vt_cfg;

/* Fail the Nth allocation only, or every one from the Nth on (which
** finds error paths that themselves need memory). */
enum {
    VT_ONCE = 1,
    VT_FROM_ON = 2,
    VT_BOTH = 3
};

enum {
    VT_NLIST = 4, /* IVF-PQ lists; searches probe them all */
    VT_PATH = 700
};

static void vt_cfg_params(const vt_cfg *c, vecidx_params *p, vt_alloc *a)
{
    CHECK_OK(vecidx_params_init(p, c->kind, c->metric, c->dim));
    p->threads = 1;
    p->hnsw_m = 4;
    p->hnsw_ef_construction = 16;
    if (c->kind == VECIDX_IVFPQ) {
        p->ivf_nlist = VT_NLIST;
        p->pq_m = c->dim / 4;
        p->ivf_keep_vectors = c->keep;
        p->ivf_refine = c->keep ? 2 : 0;
        p->ivf_quantizer = c->quantizer;
        if (c->train == VT_TRAIN_ADD) p->ivf_train_size = 150;
    } else {
        p->storage = c->storage;
        p->keep_vectors = c->keep;
    }
    if (a) vt_alloc_use(p, a);
}

/* TMPDIR/vecidx-alloc-PID-NAME.vx. Without TMPDIR, on /dev/shm where
** there is one: every save, checkpoint and create syncs its file, and the
** sweeps make thousands (as make fuzz does, see FUZZ_TMPDIR). */
static void vt_path(char *buf, const char *name)
{
    const char *t = getenv("TMPDIR");
    if (!t || !*t) t = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(buf, VT_PATH, "%s/vecidx-alloc-%ld-%s.vx", t, (long)getpid(),
             name);
}

static void vt_unlink_index(const char *path)
{
    char wal[VT_PATH + 8];
    snprintf(wal, sizeof wal, "%s-wal", path);
    unlink(path);
    unlink(wal);
}

/* Remove every file the sweeps make. */
static void vt_cleanup(void)
{
    static const char *names[] = {"main", "save", "crash", "work"};
    char path[VT_PATH];
    size_t i;
    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        vt_path(path, names[i]);
        vt_unlink_index(path);
    }
}

/* Copy the main file and the log (or its absence) of index `from`. */
static void vt_copy_index(const char *from, const char *to)
{
    int i;
    for (i = 0; i < 2; i++) {
        char src[VT_PATH + 8], dst[VT_PATH + 8];
        size_t len;
        unsigned char *b;
        FILE *f;
        snprintf(src, sizeof src, "%s%s", from, i ? "-wal" : "");
        snprintf(dst, sizeof dst, "%s%s", to, i ? "-wal" : "");
        unlink(dst);
        if (!(b = vt_slurp(src, &len))) continue;
        f = fopen(dst, "wb");
        CHECKF(f && fwrite(b, 1, len, f) == len, "cannot write %s", dst);
        if (f) CHECKF(fclose(f) == 0, "cannot write %s", dst);
        free(b);
    }
}

/* Index `path` holds the bytes of index `orig`; a log that `orig` lacks
** may have been created empty (a writer's open creates it first). */
static void vt_check_same_index(const char *what, const char *orig,
                                const char *path)
{
    int i;
    for (i = 0; i < 2; i++) {
        char a[VT_PATH + 8], b[VT_PATH + 8];
        size_t la, lb;
        unsigned char *ba, *bb;
        snprintf(a, sizeof a, "%s%s", orig, i ? "-wal" : "");
        snprintf(b, sizeof b, "%s%s", path, i ? "-wal" : "");
        ba = vt_slurp(a, &la);
        bb = vt_slurp(b, &lb);
        if (!ba)
            CHECKF(lb == 0, "%s: %s was created with %zu bytes", what, b, lb);
        else
            CHECKF(bb && la == lb && memcmp(ba, bb, la) == 0,
                   "%s: %s changed (%zu bytes, was %zu)", what, b, lb, la);
        free(ba);
        free(bb);
    }
}

/* The index at path, opened with `flags` and the default allocator, holds
** exactly the model. */
static void vt_check_file(const char *what, const vt_cfg *c, const char *path,
                          unsigned flags, const vt_set *m)
{
    vecidx_params p;
    vecidx *ix = NULL;
    int rc;
    vt_cfg_params(c, &p, NULL);
    rc = vecidx_open(path, &p, flags | VECIDX_SYNC_OFF, &ix);
    CHECKF(rc == VECIDX_OK, "%s: opening %s returned %d (%s: %s)", what, path,
           rc, vecidx_strerror(rc), vecidx_errmsg(NULL));
    if (ix) vt_check_contents(what, ix, m);
    vecidx_close(ix);
}

/* ---- one run of the script ---------------------------------------------- */

typedef struct vt_run {
    const vt_cfg *c;
    vt_alloc *a;
    vecidx *ix;
    vecidx *codec; /* decodes vectors for the model, or NULL */
    float *dec;    /* dim floats for it */
    vt_set m;
    long fail_at;
    int persistent;
    int step;          /* number of the running step, for messages */
    int failed_steps;  /* steps that returned ENOMEM */
    int quiet_steps;   /* steps that succeeded though an allocation failed */
    int checked_after; /* full content checks done after failures */
    char path[VT_PATH], save[VT_PATH];
} vt_run;

/* Totals of one test, for VTEST_DEBUG. */
static long vt_tot_runs, vt_tot_injected, vt_tot_failed_calls;

/* Print the totals under VTEST_DEBUG and start counting afresh. */
static void vt_report(const char *test)
{
    if (getenv("VTEST_DEBUG"))
        printf("  %s: %ld runs, %ld allocations made to fail, %ld calls "
               "failed\n",
               test, vt_tot_runs, vt_tot_injected, vt_tot_failed_calls);
    vt_tot_runs = vt_tot_injected = vt_tot_failed_calls = 0;
}

/* An index that stores only codes returns their decoding from vecidx_get;
** codes are made per vector, so a flat index of the same storage gives
** the model the vector any index of it returns. */
static vecidx *vt_codec_new(const vt_cfg *c)
{
    vecidx_params p;
    vecidx *ix = NULL;
    if (c->kind == VECIDX_IVFPQ || c->storage == VECIDX_STORE_F32 || c->keep)
        return NULL;
    CHECK_OK(vecidx_params_init(&p, VECIDX_FLAT, c->metric, c->dim));
    p.storage = c->storage;
    CHECK_OK(vecidx_create(&p, &ix));
    return ix;
}

static void vt_put(vt_run *r, uint64_t key, const float *v)
{
    if (r->codec) {
        CHECK_OK(vecidx_upsert(r->codec, 0, v));
        CHECK_OK(vecidx_get(r->codec, 0, r->dec));
        v = r->dec;
    }
    vt_set_put(&r->m, key, v);
}

/* May this write succeed though an allocation failed? An add to an
** untrained IVF-PQ index may start the training, which only waits for a
** later write when it cannot get memory (vx_ivf_maybe_train). */
static int vt_may_train(vt_run *r)
{
    vecidx_stats_t st;
    CHECK_OK(vecidx_stats(r->ix, &st));
    return !st.trained;
}

/* Judge one step: rc must be ENOMEM exactly when an allocation failed
** during it (or OK, if `quiet`). Returns 1 if the step succeeded. */
static int vt_step(vt_run *r, const char *what, long failed_before, int rc,
                   int quiet)
{
    long failed = vt_alloc_failed(r->a) - failed_before;
    char label[200];
    r->step++;
    snprintf(label, sizeof label, "%s N=%ld%s step %d (%s)", r->c->name,
             r->fail_at, r->persistent ? " persistent" : "", r->step, what);
    if (failed > 0) {
        CHECKF(rc == VECIDX_ENOMEM || (quiet && rc == VECIDX_OK),
               "%s: an allocation failed, but it returned %d (%s)", label, rc,
               vecidx_strerror(rc));
        if (rc != VECIDX_OK) {
            CHECKF(*vecidx_errmsg(r->ix) != '\0', "%s: no message", label);
        } else {
            r->quiet_steps++;
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

/* The keys an allowed set admits, to check results against. */
typedef struct vt_allow {
    const uint64_t *keys, *bits;
    size_t nkeys;
    uint64_t nbits;
} vt_allow;

static int vt_allowed(uint64_t key, void *ctx)
{
    const vt_allow *w = ctx;
    size_t i;
    if (w->bits) return key < w->nbits && (w->bits[key / 64] >> (key % 64) & 1);
    for (i = 0; i < w->nkeys; i++)
        if (w->keys[i] == key) return 1;
    return 0;
}

/* A search result, exact for float32 flat, well formed for the others. */
static void vt_check_result(vt_run *r, const char *what, const float *q,
                            size_t k, vt_filter_fn filter, void *ctx,
                            const uint64_t *keys, const float *dists,
                            size_t found)
{
    if (r->c->kind == VECIDX_FLAT && r->c->storage == VECIDX_STORE_F32)
        vt_check_exact(what, &r->m, r->c->metric, q, k, filter, ctx, keys,
                       dists, found);
    else
        vt_check_shape(what, &r->m, k, filter, ctx, keys, dists, found);
}

/* Writes and reads that together reach every allocation site of a kind:
** storage growth, key map growth, free-slot stack, batch validation,
** IVF-PQ training and lists, search heaps and allowed sets, batch search,
** graph scratch and repair, the log, checkpoint and save. */
static void vt_script(vt_run *r)
{
    const vt_cfg *c = r->c;
    uint32_t dim = c->dim;
    enum {
        NB = 100,
        NQ = 20,
        NA = 40
    };
    uint64_t keys[NB], rk[NQ * 12], allow[NA], bits[4] = {0};
    float *v = vt_xmalloc(NB * dim * sizeof *v), rd[NQ * 12];
    size_t i, n, found[NQ];
    long f;
    int rc;
    vt_allow w;
    vecidx_search_opts o;
    memset(&o, 0, sizeof o);
    o.nprobe = VT_NLIST;
    /* a batch; IVF-PQ buffers it */
    for (i = 0; i < NB; i++) {
        keys[i] = i;
        vt_vector_for(i, 0, v + i * dim, dim);
    }
    f = vt_alloc_failed(r->a);
    rc = vecidx_add_batch(r->ix, NB, keys, v);
    if (vt_step(r, "add_batch", f, rc, 0))
        for (i = 0; i < NB; i++) vt_put(r, i, v + i * dim);
    f = vt_alloc_failed(r->a);
    rc = vecidx_search(r->ix, v, 10, &o, rk, rd, found);
    if (vt_step(r, "search", f, rc, 0))
        vt_check_result(r, "search", v, 10, NULL, NULL, rk, rd, found[0]);
    /* single adds (VT_TRAIN_ADD: the 150th trains) */
    for (i = NB; i < 2 * NB; i++) {
        int quiet = vt_may_train(r);
        vt_vector_for(i, 0, v, dim);
        f = vt_alloc_failed(r->a);
        rc = vecidx_add(r->ix, i, v);
        if (vt_step(r, "add", f, rc, quiet)) vt_put(r, i, v);
    }
    /* a no-op but for an untrained IVF-PQ index; a file-backed one then
    ** checkpoints */
    if (c->train != VT_TRAIN_NONE) {
        for (i = 0; i < NB; i++) vt_vector_for(i, 2, v + i * dim, dim);
        f = vt_alloc_failed(r->a);
        rc = vecidx_train(r->ix, NB, v);
        /* a file-backed index may stay trained when the checkpoint
        ** after training failed (vecidx.h documents it) */
        if (!vt_step(r, "train", f, rc, 0))
            CHECKF(c->file || vt_may_train(r),
                   "%s N=%ld: train failed, index trained", c->name,
                   r->fail_at);
    }
    /* upserts: replace, insert */
    for (i = 0; i < 2; i++) {
        uint64_t key = i ? 5000 : 5;
        int quiet = vt_may_train(r);
        vt_vector_for(key, 1, v, dim);
        f = vt_alloc_failed(r->a);
        rc = vecidx_upsert(r->ix, key, v);
        if (vt_step(r, "upsert", f, rc, quiet)) vt_put(r, key, v);
    }
    /* what follows goes to the log only; a failed checkpoint leaves
    ** files that still hold everything */
    if (c->file) {
        f = vt_alloc_failed(r->a);
        rc = vecidx_checkpoint(r->ix);
        vt_step(r, "checkpoint", f, rc, 0);
        vt_check_file("after checkpoint", c, r->path, VECIDX_RDONLY, &r->m);
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
        if (vt_step(r, "remove", f, rc, 0)) vt_set_del(&r->m, 2 * i + 1);
    }
    /* a batch that reuses slots and grows */
    for (i = 0; i < NB; i++) {
        keys[i] = 10000 + i;
        vt_vector_for(keys[i], 0, v + i * dim, dim);
    }
    f = vt_alloc_failed(r->a);
    rc = vecidx_add_batch(r->ix, NB, keys, v);
    if (vt_step(r, "add_batch 2", f, rc, vt_may_train(r)))
        for (i = 0; i < NB; i++) vt_put(r, keys[i], v + i * dim);
    /* searches: plain, k 12, a callback, an allowed key array (some keys
    ** removed or never stored), an allowed bitmap; results right
    ** whenever they succeed */
    for (i = 0; i < NA; i++) allow[i] = i == NA - 1 ? 99999 : 5 * i;
    for (i = 0; i < 256; i += 3) bits[i / 64] |= (uint64_t)1 << (i % 64);
    memset(&w, 0, sizeof w);
    vt_vector_for(77, 0, v, dim);
    for (i = 0; i < 5; i++) {
        size_t k = i == 1 ? 12 : 10;
        vt_filter_fn check = i == 2 ? vt_keep_even : i > 2 ? vt_allowed : NULL;
        w.keys = i == 3 ? allow : NULL;
        w.nkeys = i == 3 ? NA : 0;
        w.bits = i == 4 ? bits : NULL;
        w.nbits = i == 4 ? 256 : 0;
        o.filter = i == 2 ? vt_keep_even : NULL;
        o.allow_keys = w.keys;
        o.allow_count = w.nkeys;
        o.allow_bitmap = w.bits;
        o.allow_bits = w.nbits;
        f = vt_alloc_failed(r->a);
        rc = vecidx_search(r->ix, v, k, &o, rk, rd, found);
        if (vt_step(r, "search", f, rc, 0))
            vt_check_result(r, "search", v, k, check, &w, rk, rd, found[0]);
    }
    for (i = 0; i < NQ; i++) vt_vector_for(i * 3, 0, v + i * dim, dim);
    o.filter = NULL;
    o.allow_bitmap = NULL;
    o.allow_bits = 0;
    o.threads = 2;
    for (i = 0; i < 2; i++) { /* unfiltered, then the key array */
        size_t q;
        w.keys = o.allow_keys = i ? allow : NULL;
        w.nkeys = o.allow_count = i ? NA : 0;
        w.bits = NULL;
        f = vt_alloc_failed(r->a);
        rc = vecidx_search_batch(r->ix, NQ, v, 12, &o, rk, rd, found);
        if (vt_step(r, "search_batch", f, rc, 0))
            for (q = 0; q < NQ; q++)
                vt_check_result(r, "search_batch", v + q * dim, 12,
                                i ? vt_allowed : NULL, &w, rk + q * 12,
                                rd + q * 12, found[q]);
    }
    /* reads that need no memory succeed whatever failed before */
    if (vt_set_find(&r->m, 0) < 0) {
        CHECK_RC(vecidx_get(r->ix, 0, v), VECIDX_ENOTFOUND);
    } else {
        f = vt_alloc_failed(r->a);
        rc = vecidx_get(r->ix, 0, v);
        if (vt_step(r, "get", f, rc, 0))
            CHECK(memcmp(v, r->m.vecs + vt_set_find(&r->m, 0) * dim,
                         dim * sizeof *v) == 0);
    }
    f = vt_alloc_failed(r->a);
    rc = vecidx_keys(r->ix, keys, NB, &n);
    if (vt_step(r, "keys", f, rc, 0)) {
        CHECK_EQ_U64(n, vt_set_count(&r->m));
        for (i = 0; i < NB && i < n; i++)
            CHECKF(vt_set_find(&r->m, keys[i]) >= 0, "keys: %llu is not stored",
                   (unsigned long long)keys[i]);
    }
    /* reserve, then more adds */
    f = vt_alloc_failed(r->a);
    rc = vecidx_reserve(r->ix, 700);
    vt_step(r, "reserve", f, rc, 0);
    for (i = 0; i < 30; i++) {
        int quiet = vt_may_train(r);
        vt_vector_for(20000 + i, 0, v, dim);
        f = vt_alloc_failed(r->a);
        rc = vecidx_add(r->ix, 20000 + i, v);
        if (vt_step(r, "add after reserve", f, rc, quiet))
            vt_put(r, 20000 + i, v);
    }
    /* stats allocate nothing; a recall estimate and a tuning fail whole */
    {
        vecidx_stats_t st;
        vecidx_recall rr;
        vecidx_tuning tt;
        f = vt_alloc_failed(r->a);
        rc = vecidx_stats_ex(r->ix, &st, sizeof st);
        vt_step(r, "stats", f, rc, 0);
        f = vt_alloc_failed(r->a);
        rc = vecidx_estimate_recall(r->ix, 5, 3, NULL, NULL, NULL, &rr);
        vt_step(r, "estimate recall", f, rc, 0);
        if (!vt_may_train(r)) { /* an untrained IVF-PQ index has no knob */
            f = vt_alloc_failed(r->a);
            rc = vecidx_tune(r->ix, 0.5, 5, 3, NULL, NULL, &tt);
            vt_step(r, "tune", f, rc, 0);
        }
    }
    /* a save leaves its file complete or, when it fails, absent; the
    ** run began with none */
    f = vt_alloc_failed(r->a);
    rc = vecidx_save(r->ix, r->save);
    if (vt_step(r, "save", f, rc, 0)) {
        vt_check_file("saved file", c, r->save, VECIDX_RDONLY, &r->m);
    } else {
        char tmp[VT_PATH + 32];
        snprintf(tmp, sizeof tmp, "%s.tmp-%ld", r->save, (long)getpid());
        CHECKF(access(r->save, F_OK) != 0, "failed save left %s", r->save);
        CHECKF(access(tmp, F_OK) != 0, "failed save left %s", tmp);
    }
    free(v);
}

/* Create the run's index with allocation N failing (0: none), in memory
** or as a file. Returns 0 if that failed (checked: ENOMEM, nothing held,
** *out left NULL). */
static int vt_run_begin(vt_run *r, const vt_cfg *c, vt_alloc *a, long n,
                        int persistent, vecidx *codec, float *dec)
{
    vecidx_params p;
    int rc;
    vt_alloc_init(a);
    a->fail_at = n;
    a->persistent = persistent;
    memset(r, 0, sizeof *r);
    r->c = c;
    r->a = a;
    r->fail_at = n;
    r->persistent = persistent;
    r->codec = codec;
    r->dec = dec;
    vt_path(r->path, "main");
    vt_path(r->save, "save");
    vt_unlink_index(r->path);
    vt_unlink_index(r->save);
    vt_cfg_params(c, &p, a);
    r->ix = (vecidx *)r; /* must be set to NULL on failure */
    if (c->file)
        rc = vecidx_open(r->path, &p, VECIDX_CREATE | VECIDX_SYNC_OFF, &r->ix);
    else
        rc = vecidx_create(&p, &r->ix);
    vt_tot_runs++;
    if (rc != VECIDX_OK) {
        CHECKF(rc == VECIDX_ENOMEM && a->failed > 0,
               "%s N=%ld: create returned %d (%s)", c->name, n, rc,
               vecidx_strerror(rc));
        CHECKF(r->ix == NULL, "%s N=%ld: failed create left *out set", c->name,
               n);
        CHECK(*vecidx_errmsg(NULL) != '\0');
        vt_check_released("failed create", a);
        vt_tot_injected += a->failed;
        vt_alloc_destroy(a);
        return 0;
    }
    CHECKF(a->failed == 0,
           "%s N=%ld: create succeeded after a failed "
           "allocation",
           c->name, n);
    vt_set_init(&r->m, c->dim, 1000);
    vt_check_bytes("created", r->ix, a);
    return 1;
}

/* The final state is what succeeded, nothing leaks, and a file-backed
** index reopens to the same. Returns 1 if no allocation failed. */
static int vt_run_end(vt_run *r)
{
    int clean = r->a->failed == 0;
    vt_check_contents("end of script", r->ix, &r->m);
    vt_check_bytes("end of script", r->ix, r->a);
    if (clean)
        CHECKF(r->failed_steps == 0,
               "%s N=%ld: steps failed with no failed allocation", r->c->name,
               r->fail_at);
    else
        CHECKF(r->failed_steps + r->quiet_steps > 0,
               "%s N=%ld: an allocation failed but no step reported it",
               r->c->name, r->fail_at);
    vecidx_close(r->ix);
    vt_check_released("after close", r->a);
    if (r->c->file) vt_check_file("reopened", r->c, r->path, 0, &r->m);
    vt_tot_injected += r->a->failed;
    vt_tot_failed_calls += r->failed_steps;
    vt_alloc_destroy(r->a);
    return clean;
}

/* Run the script with the Nth allocation failing, for N = 1, 2, ...
** until a run never reaches N. */
static void vt_alloc_loop(const vt_cfg *c, int persistent)
{
    long n;
    int done = 0, creates_failed = 0, runs_failed = 0;
    long before = vt_failures();
    vecidx *codec = vt_codec_new(c);
    float *dec = vt_xmalloc(c->dim * sizeof *dec);
    for (n = 1; !done && n < 100000 && vt_failures() == before; n++) {
        vt_alloc a;
        vt_run r;
        if (!vt_run_begin(&r, c, &a, n, persistent, codec, dec)) {
            creates_failed++;
            continue;
        }
        vt_script(&r);
        if (vt_run_end(&r)) {
            done = 1;
            CHECK_EQ_U64(vt_set_count(&r.m), 2 * 100 + 1 - 80 + 100 + 30);
        } else {
            runs_failed++;
        }
        vt_set_free(&r.m);
    }
    if (getenv("VTEST_DEBUG"))
        printf("  %s%s: %ld runs, %d creates failed\n", c->name,
               persistent ? " persistent" : "", n - 1, creates_failed);
    if (vt_failures() == before) {
        CHECKF(done, "%s: the script never completed (last N %ld)", c->name,
               n - 1);
        CHECK(creates_failed >= 1);
        CHECKF(runs_failed >= 10, "%s: only %d runs hit a failure", c->name,
               runs_failed);
    }
    vecidx_close(codec);
    free(dec);
    vt_cleanup();
}

/* ---- the configurations swept ----------------------------------------- */

static void vt_sweep(const vt_cfg *cfg, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (cfg[i].modes & VT_ONCE) vt_alloc_loop(&cfg[i], 0);
        if (cfg[i].modes & VT_FROM_ON) vt_alloc_loop(&cfg[i], 1);
    }
}

/* dim 1024: vectors large enough that storage grows in many steps */
void test_alloc_failure_flat(void)
{
    static const vt_cfg cfg[] = {
        {"flat", VECIDX_FLAT, VECIDX_L2, 1024, 0, 0, 0, 0, 0, VT_ONCE}};
    vt_sweep(cfg, sizeof cfg / sizeof cfg[0]);
    vt_report("alloc_failure_flat");
}

void test_alloc_failure_flat_persistent(void)
{
    static const vt_cfg cfg[] = {
        {"flat", VECIDX_FLAT, VECIDX_L2, 1024, 0, 0, 0, 0, 0, VT_FROM_ON}};
    vt_sweep(cfg, sizeof cfg / sizeof cfg[0]);
    vt_report("alloc_failure_flat_persistent");
}

void test_alloc_failure_hnsw(void)
{
    static const vt_cfg cfg[] = {
        {"hnsw", VECIDX_HNSW, VECIDX_L2, 16, 0, 0, 0, 0, 0, VT_BOTH}};
    vt_sweep(cfg, sizeof cfg / sizeof cfg[0]);
    vt_report("alloc_failure_hnsw");
}

/* Every compressed storage, with and without the float32 vectors where
** both exist (binary codes need them, and cosine or inner product). */
void test_alloc_failure_storage(void)
{
    static const vt_cfg cfg[] = {{"flat f16", VECIDX_FLAT, VECIDX_L2, 64,
                                  VECIDX_STORE_F16, 0, 0, 0, 0, VT_ONCE},
                                 {"flat i8 kept", VECIDX_FLAT, VECIDX_L2, 64,
                                  VECIDX_STORE_I8, 1, 0, 0, 0, VT_ONCE},
                                 {"flat bin", VECIDX_FLAT, VECIDX_COSINE, 64,
                                  VECIDX_STORE_BIN, 1, 0, 0, 0, VT_BOTH},
                                 {"hnsw f16", VECIDX_HNSW, VECIDX_L2, 16,
                                  VECIDX_STORE_F16, 0, 0, 0, 0, VT_ONCE},
                                 {"hnsw f16 kept", VECIDX_HNSW, VECIDX_L2, 16,
                                  VECIDX_STORE_F16, 1, 0, 0, 0, VT_ONCE},
                                 {"hnsw i8", VECIDX_HNSW, VECIDX_L2, 16,
                                  VECIDX_STORE_I8, 0, 0, 0, 0, VT_BOTH},
                                 {"hnsw i8 kept", VECIDX_HNSW, VECIDX_L2, 16,
                                  VECIDX_STORE_I8, 1, 0, 0, 0, VT_ONCE},
                                 {"hnsw bin", VECIDX_HNSW, VECIDX_IP, 32,
                                  VECIDX_STORE_BIN, 1, 0, 0, 0, VT_ONCE}};
    vt_sweep(cfg, sizeof cfg / sizeof cfg[0]);
    vt_report("alloc_failure_storage");
}

/* IVF-PQ trained by an add, never, or by vecidx_train with a graph
** quantizer (a flat one: test_alloc_failure_file). dim 4, one code
** byte: training allocates per sub-quantizer and round, hundreds of
** times. */
void test_alloc_failure_ivfpq(void)
{
    static const vt_cfg cfg[] = {
        {"ivfpq trained by add", VECIDX_IVFPQ, VECIDX_L2, 4, 0, 1,
         VECIDX_QUANT_FLAT, VT_TRAIN_ADD, 0, VT_ONCE},
        {"ivfpq untrained", VECIDX_IVFPQ, VECIDX_L2, 4, 0, 1, VECIDX_QUANT_FLAT,
         VT_TRAIN_NONE, 0, VT_ONCE},
        {"ivfpq hnsw quantizer", VECIDX_IVFPQ, VECIDX_COSINE, 4, 0, 1,
         VECIDX_QUANT_HNSW, VT_TRAIN_CALL, 0, VT_BOTH}};
    vt_sweep(cfg, sizeof cfg / sizeof cfg[0]);
    vt_report("alloc_failure_ivfpq");
}

/* File-backed: the index is created by vecidx_open, every write is
** logged, the script checkpoints, and so does IVF-PQ's vecidx_train
** (training started by an add checkpoints the same way, but quietly);
** the files reopen to what the model holds. */
void test_alloc_failure_file(void)
{
    static const vt_cfg cfg[] = {
        {"file flat", VECIDX_FLAT, VECIDX_L2, 64, 0, 0, 0, 0, 1, VT_BOTH},
        {"file hnsw", VECIDX_HNSW, VECIDX_L2, 16, 0, 0, 0, 0, 1, VT_ONCE},
        {"file ivfpq", VECIDX_IVFPQ, VECIDX_L2, 4, 0, 1, VECIDX_QUANT_FLAT,
         VT_TRAIN_CALL, 1, VT_ONCE}};
    vt_sweep(cfg, sizeof cfg / sizeof cfg[0]);
    vt_report("alloc_failure_file");
}

/* ---- opening ------------------------------------------------------------- */

/* Fail the Nth allocation of opening index `base` with `flags`, for N = 1,
** 2, ... until an open never reaches N; each run opens a fresh copy. */
static void vt_open_sweep(const vt_cfg *c, const vt_set *m, const char *base,
                          const char *what, unsigned flags, int persistent)
{
    char work[VT_PATH], label[200];
    long n, before = vt_failures();
    int done = 0, failed = 0;
    vt_path(work, "work");
    for (n = 1; !done && n < 100000 && vt_failures() == before; n++) {
        vt_alloc a;
        vecidx_params p;
        vecidx *ix;
        int rc;
        snprintf(label, sizeof label, "%s: open %s%s N=%ld%s", c->name, what,
                 flags & VECIDX_RDONLY ? " read-only" : "", n,
                 persistent ? " persistent" : "");
        vt_copy_index(base, work);
        vt_alloc_init(&a);
        a.fail_at = n;
        a.persistent = persistent;
        vt_cfg_params(c, &p, &a);
        ix = (vecidx *)&a; /* must be set to NULL on failure */
        rc = vecidx_open(work, &p, flags | VECIDX_SYNC_OFF, &ix);
        vt_tot_runs++;
        if (rc != VECIDX_OK) {
            failed++;
            vt_tot_failed_calls++;
            CHECKF(rc == VECIDX_ENOMEM && a.failed > 0,
                   "%s: returned %d (%s: %s)", label, rc, vecidx_strerror(rc),
                   vecidx_errmsg(NULL));
            CHECKF(ix == NULL, "%s: failed open left *out set", label);
            CHECKF(*vecidx_errmsg(NULL) != '\0', "%s: no message", label);
            vt_check_released(label, &a);
            /* the files as they were; the last run shows they open */
            vt_check_same_index(label, base, work);
            if (failed == 1) vt_check_file(label, c, work, flags, m);
        } else {
            /* replaying the log repairs an HNSW graph as the writes did,
            ** and a repair step that cannot get memory waits */
            CHECKF(a.failed == 0 || c->kind == VECIDX_HNSW,
                   "%s: succeeded after a failed allocation", label);
            done = a.calls < n;
            vt_check_bytes(label, ix, &a);
            vt_check_contents(label, ix, m);
            vecidx_close(ix);
            vt_check_released(label, &a);
        }
        vt_tot_injected += a.failed;
        vt_alloc_destroy(&a);
    }
    if (getenv("VTEST_DEBUG"))
        printf("  %s: %ld runs, %d failed\n", label, n - 1, failed);
    if (vt_failures() == before) {
        CHECKF(done, "%s: never opened (last N %ld)", label, n - 1);
        CHECKF(failed >= 3, "%s: only %d opens hit a failure", label, failed);
    }
}

/* A checkpoint, then a few writes of every kind: the log holds them
** only. */
static void vt_log_tail(vt_run *r)
{
    uint32_t dim = r->c->dim;
    uint64_t keys[20];
    float *v = vt_xmalloc(20 * dim * sizeof *v);
    size_t i;
    CHECK_OK(vecidx_checkpoint(r->ix));
    for (i = 0; i < 20; i++) {
        keys[i] = 30000 + i;
        vt_vector_for(keys[i], 0, v + i * dim, dim);
    }
    CHECK_OK(vecidx_add_batch(r->ix, 20, keys, v));
    for (i = 0; i < 20; i++) vt_put(r, keys[i], v + i * dim);
    for (i = 0; i < 8; i++) { /* 2 replace, 6 insert */
        uint64_t key = i < 2 ? 30000 + i : 40000 + i;
        vt_vector_for(key, 3, v, dim);
        CHECK_OK(i >= 2 && i % 2 ? vecidx_add(r->ix, key, v)
                                 : vecidx_upsert(r->ix, key, v));
        vt_put(r, key, v);
    }
    for (i = 10; i < 15; i++) {
        CHECK_OK(vecidx_remove(r->ix, 30000 + i));
        vt_set_del(&r->m, 30000 + i);
    }
    free(v);
}

/* Run the script on a file-backed index with nothing failing, checkpoint
** it and write a little more; copy its files aside before close, as a
** crash leaves them, and save it. Then sweep the opens of that copy and
** of the saved file. */
static void vt_open_loop(const vt_cfg *c)
{
    static const unsigned flags[] = {VECIDX_RDONLY, 0};
    vecidx *codec = vt_codec_new(c), *ix = NULL;
    float *dec = vt_xmalloc(c->dim * sizeof *dec);
    char crash[VT_PATH], work[VT_PATH], wal[VT_PATH + 8];
    vt_alloc a;
    vt_run r;
    size_t i;
    int persistent;
    vt_path(crash, "crash");
    vt_path(work, "work");
    CHECK(c->file);
    if (!vt_run_begin(&r, c, &a, 0, 0, codec, dec)) goto out;
    vt_script(&r);
    vt_log_tail(&r);
    vt_copy_index(r.path, crash);
    CHECK_OK(vecidx_save(r.ix, r.save));
    vt_run_end(&r);
    /* the main file alone lacks what the log holds */
    vt_copy_index(crash, work);
    snprintf(wal, sizeof wal, "%s-wal", work);
    unlink(wal);
    CHECK_OK(vecidx_open(work, NULL, VECIDX_RDONLY, &ix));
    CHECKF(vecidx_count(ix) != vt_set_count(&r.m),
           "%s: the log of the crashed copy holds nothing", c->name);
    vecidx_close(ix);
    for (persistent = 0; persistent < 2; persistent++)
        for (i = 0; c->modes & (persistent ? VT_FROM_ON : VT_ONCE) && i < 2;
             i++) {
            vt_open_sweep(c, &r.m, crash, "after a crash", flags[i],
                          persistent);
            vt_open_sweep(c, &r.m, r.save, "saved", flags[i], persistent);
        }
    vt_set_free(&r.m);
out:
    vecidx_close(codec);
    free(dec);
    vt_cleanup();
}

void test_alloc_failure_open(void)
{
    static const vt_cfg cfg[] = {
        {"flat", VECIDX_FLAT, VECIDX_L2, 64, 0, 0, 0, 0, 1, VT_BOTH},
        {"flat i8 kept", VECIDX_FLAT, VECIDX_L2, 64, VECIDX_STORE_I8, 1, 0, 0,
         1, VT_ONCE},
        {"hnsw", VECIDX_HNSW, VECIDX_L2, 16, 0, 0, 0, 0, 1, VT_ONCE},
        {"hnsw f16", VECIDX_HNSW, VECIDX_L2, 16, VECIDX_STORE_F16, 0, 0, 0, 1,
         VT_ONCE},
        {"hnsw bin", VECIDX_HNSW, VECIDX_IP, 32, VECIDX_STORE_BIN, 1, 0, 0, 1,
         VT_ONCE},
        {"ivfpq", VECIDX_IVFPQ, VECIDX_L2, 4, 0, 1, VECIDX_QUANT_FLAT,
         VT_TRAIN_CALL, 1, VT_ONCE},
        {"ivfpq hnsw quantizer", VECIDX_IVFPQ, VECIDX_L2, 4, 0, 1,
         VECIDX_QUANT_HNSW, VT_TRAIN_CALL, 1, VT_ONCE},
        {"ivfpq untrained", VECIDX_IVFPQ, VECIDX_L2, 4, 0, 1, VECIDX_QUANT_FLAT,
         VT_TRAIN_NONE, 1, VT_ONCE}};
    size_t i;
    for (i = 0; i < sizeof cfg / sizeof cfg[0]; i++) vt_open_loop(&cfg[i]);
    vt_report("alloc_failure_open");
}

/* IVF-PQ: a filtered search that ranks fewer lists than its plan allows
** gives back all of the block it took (a search counted back only the
** lists it ranked: memory_bytes grew by 966 KB over 1,000 searches of
** 20k x 32 with half the keys allowed). */
static void vt_accounting_ivfpq(void)
{
    enum {
        DIM = 16,
        N = 3000,
        NQ = 40
    };
    vt_alloc a;
    vt_rng r = {302};
    vt_set m;
    vecidx_params p;
    vecidx_search_opts o;
    vecidx *ix = NULL;
    float q[NQ * DIM], d[10];
    uint64_t k[10], *allow;
    size_t found, i;
    vt_alloc_init(&a);
    CHECK_OK(vecidx_params_init(&p, VECIDX_IVFPQ, VECIDX_L2, DIM));
    p.ivf_nlist = 64;
    p.pq_m = 4;
    p.ivf_keep_vectors = 1;
    vt_alloc_use(&p, &a);
    CHECK_OK(vecidx_create(&p, &ix));
    if (!ix) return;
    vt_set_init(&m, DIM, N);
    vt_fill_index(ix, &m, N, &r, VT_CLUSTERED);
    CHECK_OK(vecidx_train(ix, N, m.vecs));
    vt_check_bytes("ivfpq trained", ix, &a);
    allow = vt_xmalloc(N / 2 * sizeof *allow);
    for (i = 0; i < N / 2; i++) allow[i] = m.keys[2 * i];
    vt_make_queries(&r, &m, q, NQ, VT_CLUSTERED);
    memset(&o, 0, sizeof o);
    o.nprobe = 4; /* ranks 6 lists at first of the 14 its plan allows */
    o.refine = 4;
    o.allow_keys = allow;
    o.allow_count = N / 2;
    for (i = 0; i < NQ; i++)
        CHECK_OK(vecidx_search(ix, q + i * DIM, 10, &o, k, d, &found));
    vt_check_bytes("ivfpq filtered searches", ix, &a);
    vecidx_close(ix);
    vt_check_released("ivfpq accounting", &a);
    free(allow);
    vt_set_free(&m);
    vt_alloc_destroy(&a);
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
    vt_accounting_ivfpq();
}
