/*
** vxbench.h -- the vecidx side of the benchmarks: index parameters from
** the options (storage included), the search context (vxb_ctx_init) and
** the query callbacks, the storage keys of the output, and errors. Shared
** by vecidx-bench (C) and vecidx-compare --lib paired (C++), so both
** measure vecidx the same way. Include after common.h and vecidx.h.
*/
#ifndef VXBENCH_H
#define VXBENCH_H

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

typedef struct vxb_ctx {
    vecidx *ix;
    const bn_data *d;
    size_t k;
    vecidx_search_opts so;
    size_t *found; /* nq, for the batch call */
} vxb_ctx;

static inline BN_NORETURN void vxb_fail(const char *call, int rc,
                                        const vecidx *ix)
{
    const char *msg = vecidx_errmsg(ix);
    bn_die("%s failed: %s%s%s", call, vecidx_strerror(rc), *msg ? ": " : "",
           msg);
}

/* uint64_t keys are written straight into the int64_t result rows: the
** keys here are base row numbers, far below 2^63. */
static inline void vxb_search_one(void *arg, size_t qi, int64_t *out)
{
    vxb_ctx *c = (vxb_ctx *)arg;
    size_t found = 0, i;
    int rc = vecidx_search(c->ix, c->d->query + qi * c->d->dim, c->k, &c->so,
                           (uint64_t *)out, NULL, &found);
    if (rc != VECIDX_OK) vxb_fail("vecidx_search", rc, c->ix);
    for (i = found; i < c->k; i++) out[i] = -1;
}

static inline void vxb_search_batch(void *arg, int64_t *res)
{
    vxb_ctx *c = (vxb_ctx *)arg;
    int rc = vecidx_search_batch(c->ix, c->d->nq, c->d->query, c->k, &c->so,
                                 (uint64_t *)res, NULL, c->found);
    if (rc != VECIDX_OK) vxb_fail("vecidx_search_batch", rc, c->ix);
}

static inline int vxb_kind(const char *name)
{
    if (!strcmp(name, "hnsw")) return VECIDX_HNSW;
    if (!strcmp(name, "ivfpq")) return VECIDX_IVFPQ;
    return VECIDX_FLAT;
}

/* VECIDX_STORE_* of --storage (bn_parse_args has checked the name). */
static inline uint32_t vxb_storage(const bn_opts *o)
{
    if (!strcmp(o->storage, "f16")) return VECIDX_STORE_F16;
    if (!strcmp(o->storage, "i8")) return VECIDX_STORE_I8;
    if (!strcmp(o->storage, "bin")) return VECIDX_STORE_BIN;
    return VECIDX_STORE_F32;
}

/* The name the output gives a vecidx_stats_t storage. */
static inline const char *vxb_storage_name(int storage)
{
    return storage == VECIDX_STORE_F32   ? "f32"
           : storage == VECIDX_STORE_F16 ? "f16"
           : storage == VECIDX_STORE_I8  ? "i8"
           : storage == VECIDX_STORE_BIN ? "bin"
                                         : "?";
}

/* The re-rank factor searches use, 1 = none: IVF-PQ's --refine; for
** compressed flat and HNSW storage with kept vectors, --refine or else
** vecidx's default (20 for bin, 2 for the others). It is passed to
** vecidx explicitly, so the factor the output records is the one used
** even if the library's default changes. */
static inline uint32_t vxb_refine(const bn_opts *o)
{
    uint32_t store = vxb_storage(o);
    if (vxb_kind(o->index) == VECIDX_IVFPQ)
        return o->refine > 1 ? o->refine : 1;
    if (store == VECIDX_STORE_F32 || !o->keep) return 1;
    if (o->refine) return o->refine;
    return store == VECIDX_STORE_BIN ? 20u : 2u;
}

/* Search options every query of the run shares: the re-rank factor. */
static inline void vxb_search_opts(const bn_opts *o, vecidx_search_opts *so)
{
    memset(so, 0, sizeof *so);
    so->refine = vxb_refine(o);
}

/* A context for searches of ix over d's queries, as every program sets it
** up: k = --k, the search options every query shares (vxb_search_opts),
** --threads workers for the batch call, and room for its per-query counts.
** The caller sets the sweep value (so.ef, so.nprobe) and any filter;
** vxb_ctx_free releases it (not ix). */
static inline void vxb_ctx_init(vxb_ctx *c, const bn_opts *o, const bn_data *d,
                                vecidx *ix)
{
    memset(c, 0, sizeof *c);
    c->ix = ix;
    c->d = d;
    c->k = o->k;
    vxb_search_opts(o, &c->so);
    c->so.threads = o->threads;
    c->found = (size_t *)bn_malloc(d->nq * sizeof *c->found);
}

static inline void vxb_ctx_free(vxb_ctx *c)
{
    free(c->found);
    c->found = NULL;
}

/* The storage keys of an output line of vecidx's flat or HNSW index: the
** storage its stats report (so a line never claims a storage vecidx did
** not use), the re-rank factor and its bytes per vector. IVF-PQ keeps
** what bn_result_init gave it: vecidx reports no vector_bytes for it. */
static inline void vxb_result_storage(bn_result *r, const bn_opts *o,
                                      const vecidx_stats_t *st)
{
    if (st->kind == VECIDX_IVFPQ) return;
    r->vector_bytes = (double)st->vector_bytes;
    r->storage = vxb_storage_name(st->storage);
    r->keep = o->keep;
    r->refine = vxb_refine(o);
}

/* Parameters of the index the options ask for over d; *ntrain gets the
** IVF-PQ training rows (0 for the other kinds). */
static inline void vxb_params(const bn_opts *o, const bn_data *d,
                              vecidx_params *p, size_t *ntrain)
{
    int kind = vxb_kind(o->index);
    int metric = o->metric == BN_IP    ? VECIDX_IP
                 : o->metric == BN_COS ? VECIDX_COSINE
                                       : VECIDX_L2;
    int rc = vecidx_params_init(p, kind, metric, d->dim);
    if (rc != VECIDX_OK) vxb_fail("vecidx_params_init", rc, NULL);
    *ntrain = 0;
    /* IVF-PQ reserves nothing, like FAISS, so that its memory per vector
    ** is what adding the vectors costs. */
    if (kind != VECIDX_IVFPQ)
        p->capacity = (uint32_t)(d->n < VECIDX_MAX_COUNT ? d->n
                                                         : VECIDX_MAX_COUNT);
    p->threads = o->build_threads;
    p->hnsw_m = o->M;
    p->hnsw_ef_construction = o->ef_construction;
    if (kind != VECIDX_IVFPQ) {
        p->storage = vxb_storage(o);
        p->keep_vectors = (uint32_t)o->keep;
        if (o->keep) p->refine = vxb_refine(o);
    } else {
        /* The same lists, code size and training rows as vecidx-compare
        ** gives FAISS (see bn_nlist). */
        *ntrain = bn_train_rows(o, d->n);
        p->ivf_nlist = bn_nlist(o, *ntrain);
        p->pq_m = bn_pq_m(o, d->dim);
        p->pq_nbits = o->pq_nbits;
        p->ivf_keep_vectors = o->refine > 1;
    }
}

/* Keys 0 .. n-1, one per base row. */
static inline uint64_t *vxb_keys(const bn_data *d)
{
    uint64_t *keys = (uint64_t *)bn_malloc(d->n * sizeof *keys);
    size_t i;
    for (i = 0; i < d->n; i++) keys[i] = i;
    return keys;
}

/* The callback of the callback forms: a lookup in the admitted set's
** bitmap, the cheapest test an application could hand over, so that what
** the callback forms measure beside the bitmap form is the search's own
** handling of a callback. */
static inline int vxb_filter_cb(uint64_t key, void *ctx)
{
    return bn_filter_admits((const bn_filter *)ctx, key);
}

/* Search options giving vecidx the admitted set f in the form BN_FORM_*:
** the keys array, the bitmap over keys (keys are base rows, so f's bitmap
** is one), the callback alone, or the callback with its true
** selectivity. The other fields of *so are left as they are. */
static inline void vxb_filter_opts(vecidx_search_opts *so, int form,
                                   const bn_filter *f)
{
    so->allow_keys = NULL;
    so->allow_count = 0;
    so->allow_bitmap = NULL;
    so->allow_bits = 0;
    so->filter = NULL;
    so->filter_ctx = NULL;
    so->filter_selectivity = 0;
    if (!f) return;
    if (form == BN_FORM_KEYS) {
        so->allow_keys = f->keys;
        so->allow_count = f->m;
    } else if (form == BN_FORM_BITMAP) {
        so->allow_bitmap = f->bitmap;
        so->allow_bits = f->n;
    } else {
        so->filter = vxb_filter_cb;
        so->filter_ctx = (void *)(uintptr_t)f;
        if (form == BN_FORM_CALLBACK_SEL)
            so->filter_selectivity = (float)((double)f->m / (double)f->n);
    }
}

/* --open-file PATH (vecidx-bench, vecidx-compare --lib paired): save ix
** to PATH and close it; drop the file's pages from the page cache (so
** the searches start cold, as after a reboot); open it read-only (with
** --lean, VECIDX_RDONLY | VECIDX_LEAN: kept vectors by pread). *rss0
** is VmRSS just before the open: the lines' rss_mb is the growth since,
** what the open and the searches made resident (mapped pages the walks
** and re-ranks touched, plus heap). */
static inline vecidx *vxb_reopen_cold(vecidx *ix, const char *path, int lean,
                                      double *rss0, double *open_ms)
{
    char wal[4200];
    double t0;
    int rc = vecidx_save(ix, path), fd;
    if (rc != VECIDX_OK) vxb_fail("vecidx_save", rc, ix);
    vecidx_close(ix);
    snprintf(wal, sizeof wal, "%s-wal", path);
    (void)remove(wal); /* vecidx_save writes none; an old run's would replay */
    fd = open(path, O_RDONLY);
    if (fd < 0) bn_die("--open-file: cannot open %s", path);
    if (posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0)
        bn_note("warning: posix_fadvise(DONTNEED) failed: the file may be "
                "cached");
    close(fd);
    *rss0 = bn_rss_mb();
    t0 = bn_now();
    rc = vecidx_open(path, NULL, VECIDX_RDONLY | (lean ? VECIDX_LEAN : 0u),
                     &ix);
    *open_ms = (bn_now() - t0) * 1000.0;
    if (rc != VECIDX_OK) vxb_fail("vecidx_open", rc, NULL);
    return ix;
}

/* A line of an index opened by vxb_reopen_cold: appends its keys source
** and open_ms to the JSON fragment in buf (cap bytes) and returns its
** rss_mb, the growth of VmRSS since rss0 (-1 when unknown). */
static inline double vxb_file_keys(char *buf, size_t cap, double rss0,
                                   double open_ms)
{
    size_t at = strlen(buf);
    double now = bn_rss_mb();
    snprintf(buf + at, cap - at, ",\"source\":\"file\",\"open_ms\":%.2f",
             open_ms);
    return rss0 >= 0 && now >= 0 ? now - rss0 : -1;
}

#endif /* VXBENCH_H */
