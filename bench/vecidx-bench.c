/*
** vecidx-bench -- build a vecidx index over a classic ANN data set (.fvecs
** base and queries, .ivecs ground truth) and print build time, memory,
** recall and queries per second as JSON lines. See bench/README.md.
**
** With --churn R (HNSW only) it measures an index under insert/delete
** churn instead: built over the first half of the base, then R rounds of
** removing a random half of it and adding as many other rows, and compared
** with a fresh build of the final set against that set's exact neighbours.
**
** With --filter-selectivity it measures filtered searches instead: per
** admitted share of the base, recall against the exact neighbours among
** the admitted rows and QPS, beside a scan of those rows and the same
** index unfiltered, timed in turns (see run_filtered).
**
**   cc -std=c11 -O3 -I. bench/vecidx-bench.c libvecidx.a -pthread -lm
*/
#include "common.h" /* first: selects POSIX */

#include "vecidx.h"
#include "vxbench.h"

static const char LIBS[] = "vecidx (the only one here; see vecidx-compare)";

/* ---- Shared by both modes ------------------------------------------------ */

static void get_stats(vecidx *ix, vecidx_stats_t *st)
{
    int rc = vecidx_stats(ix, st);
    if (rc != VECIDX_OK) vxb_fail("vecidx_stats", rc, ix);
}

static double mib(uint64_t bytes)
{
    return (double)bytes / (1024.0 * 1024.0);
}

static void result_init(bn_result *r, const bn_opts *o,
                        const vecidx_stats_t *st, double build_s)
{
    bn_result_init(r, o, "vecidx");
    r->simd = st->simd ? st->simd : vecidx_simd();
    r->lib_version = vecidx_version();
    r->build_s = build_s;
    r->mem_mb = mib(st->memory_bytes);
    vxb_result_storage(r, o, st);
}

/* Search options and the param/build strings for sweep value v (ignored
** by the flat index). */
static void set_sweep(const bn_opts *o, int kind, uint32_t v,
                      const vecidx_stats_t *st, size_t ntrain, vxb_ctx *c,
                      bn_result *r)
{
    c->so.ef = 0;
    c->so.nprobe = 0;
    if (kind == VECIDX_HNSW) {
        c->so.ef = v;
        snprintf(r->param, sizeof r->param, "ef=%u", (unsigned)v);
        snprintf(r->build, sizeof r->build, "M=%u,efc=%u", (unsigned)o->M,
                 (unsigned)o->ef_construction);
    } else if (kind == VECIDX_IVFPQ) {
        c->so.nprobe = v;
        snprintf(r->param, sizeof r->param, "nprobe=%u", (unsigned)v);
        snprintf(r->build, sizeof r->build,
                 "nlist=%u,m=%u,nbits=%u,train=%zu,refine=%u",
                 (unsigned)st->nlist, (unsigned)st->pq_m, (unsigned)o->pq_nbits,
                 ntrain, o->refine > 1 ? (unsigned)o->refine : 1u);
    } else {
        snprintf(r->param, sizeof r->param, "exact");
    }
}

/* QPS of the best pass; recall of the last one against d->gt. */
static void run_queries(const bn_opts *o, const bn_data *d, vxb_ctx *c,
                        int64_t *res, bn_result *r)
{
    r->qps = bn_measure(o, d, vxb_search_one, vxb_search_batch, c, res);
    if (o->batch) {
        size_t q, j;
        for (q = 0; q < d->nq; q++)
            for (j = c->found[q]; j < o->k; j++) res[q * o->k + j] = -1;
    }
    r->recall = bn_recall(d, res, o->k, r->param);
}

/* ---- Standard mode: the whole base, one line per sweep value ------------- */

typedef struct build_info {
    double build_s, train_s; /* train_s < 0: not trained */
    double rss0, rss1, rss_trained;
    size_t ntrain;
} build_info;

static vecidx *build_base(const bn_opts *o, const bn_data *d, int kind,
                          build_info *b)
{
    vecidx_params p;
    vecidx *ix = NULL;
    uint64_t *keys;
    double t0;
    int rc;

    vxb_params(o, d, &p, &b->ntrain);
    keys = vxb_keys(d);
    b->train_s = -1;
    b->rss_trained = -1;
    b->rss0 = bn_rss_mb();
    rc = vecidx_create(&p, &ix);
    if (rc != VECIDX_OK) vxb_fail("vecidx_create", rc, NULL);
    if (kind == VECIDX_IVFPQ) {
        t0 = bn_now();
        rc = vecidx_train(ix, b->ntrain, d->base);
        b->train_s = bn_now() - t0;
        if (rc != VECIDX_OK) vxb_fail("vecidx_train", rc, ix);
        b->rss_trained = bn_rss_mb(); /* between the timed steps */
    }
    t0 = bn_now();
    rc = vecidx_add_batch(ix, d->n, keys, d->base);
    b->build_s = bn_now() - t0 + (b->train_s > 0 ? b->train_s : 0);
    if (rc != VECIDX_OK) vxb_fail("vecidx_add_batch", rc, ix);
    b->rss1 = bn_rss_mb(); /* before freeing keys, which predate rss0 */
    free(keys);
    return ix;
}

/* After a batch pass, the slots past each query's count hold nothing. */
static void fill_missing(const bn_opts *o, const bn_data *d, const vxb_ctx *c,
                         int64_t *res)
{
    size_t q, j;
    if (!o->batch) return;
    for (q = 0; q < d->nq; q++)
        for (j = c->found[q]; j < o->k; j++) res[q * o->k + j] = -1;
}

/* A flat float32 index of the whole base: the baseline of compressed flat
** storage, and of the callback forms' flat_cb_qps. */
static vecidx *build_flat(const bn_opts *o, const bn_data *d)
{
    vecidx_params p;
    vecidx *ix = NULL;
    uint64_t *keys = vxb_keys(d);
    size_t ntrain;
    int rc;
    vxb_params(o, d, &p, &ntrain);
    p.kind = VECIDX_FLAT;
    p.storage = VECIDX_STORE_F32;
    p.keep_vectors = 0;
    p.refine = 0;
    p.capacity = (uint32_t)(d->n < VECIDX_MAX_COUNT ? d->n : VECIDX_MAX_COUNT);
    rc = vecidx_create(&p, &ix);
    if (rc != VECIDX_OK) vxb_fail("vecidx_create", rc, NULL);
    rc = vecidx_add_batch(ix, d->n, keys, d->base);
    if (rc != VECIDX_OK) vxb_fail("vecidx_add_batch", rc, ix);
    free(keys);
    return ix;
}

/* Compressed flat storage: the float32 flat index of the same base, timed
** in turns with it pass by pass, so that the ratio the line reports
** (f32_qps, vs_f32) is measured under the same load. */
static void run_vs_f32(const bn_opts *o, const bn_data *d, vxb_ctx *c,
                       int64_t *res, bn_result *r, char *extra, size_t cap)
{
    vecidx *flat = build_flat(o, d);
    vxb_ctx cf;
    bn_runner run[2];
    int64_t *fres = (int64_t *)bn_malloc(d->nq * o->k * sizeof *fres);
    double f32_recall;
    vxb_ctx_init(&cf, o, d, flat);
    memset(run, 0, sizeof run);
    run[0].ctx = c;
    run[0].res = res;
    run[1].ctx = &cf;
    run[1].res = fres;
    run[0].fn = run[1].fn = vxb_search_one;
    run[0].batch_fn = run[1].batch_fn = vxb_search_batch;
    run[0].nq = run[1].nq = d->nq;
    bn_run_interleaved(o, run, 2, d->nq);
    fill_missing(o, d, c, res);
    fill_missing(o, d, &cf, fres);
    r->qps = bn_runner_qps(&run[0]);
    r->recall = bn_recall(d, res, o->k, r->param);
    f32_recall = bn_recall(d, fres, o->k, "f32");
    snprintf(
        extra, cap, ",\"f32_qps\":%.1f,\"f32_recall\":%.4f,\"vs_f32\":%.3f",
        bn_runner_qps(&run[1]), f32_recall, r->qps / bn_runner_qps(&run[1]));
    r->extra = extra;
    free(fres);
    vxb_ctx_free(&cf);
    vecidx_close(flat);
}

static void run_standard(const bn_opts *o, const bn_data *d,
                         const char *open_file, int lean)
{
    int kind = vxb_kind(o->index);
    const bn_list *sweep = kind == VECIDX_HNSW    ? &o->ef
                           : kind == VECIDX_IVFPQ ? &o->nprobe
                                                  : NULL;
    size_t i, nvals = sweep ? sweep->n : 1;
    vecidx_stats_t st;
    build_info b;
    vxb_ctx c;
    bn_result r;
    int64_t *res;
    char extra[160];
    vecidx *ix = build_base(o, d, kind, &b);
    double rss_open = -1, open_ms = 0;

    if (open_file)
        ix = vxb_reopen_cold(ix, open_file, lean, &rss_open, &open_ms);
    get_stats(ix, &st);
    if (st.count != d->n)
        bn_note("warning: index holds %llu vectors after adding %zu",
                (unsigned long long)st.count, d->n);
    vxb_ctx_init(&c, o, d, ix);
    res = (int64_t *)bn_malloc(d->nq * o->k * sizeof *res);
    for (i = 0; i < nvals; i++) {
        result_init(&r, o, &st, b.build_s);
        r.train_s = b.train_s;
        if (b.rss_trained >= 0 && b.rss1 >= 0 && d->n)
            r.bytes_per_vec = (b.rss1 - b.rss_trained) * 1024.0 * 1024.0 /
                              (double)d->n;
        r.rss_mb = b.rss0 >= 0 && b.rss1 >= 0 ? b.rss1 - b.rss0 : -1;
        set_sweep(o, kind, sweep ? sweep->v[i] : 0, &st, b.ntrain, &c, &r);
        if (kind == VECIDX_FLAT && st.storage != VECIDX_STORE_F32 && !open_file)
            run_vs_f32(o, d, &c, res, &r, extra, sizeof extra);
        else
            run_queries(o, d, &c, res, &r);
        if (open_file) {
            extra[0] = '\0';
            r.rss_mb = vxb_file_keys(extra, sizeof extra, rss_open, open_ms);
            snprintf(extra + strlen(extra), sizeof extra - strlen(extra),
                     ",\"queries_so_far\":%zu", (i + 1) * d->nq * o->passes);
            r.extra = extra;
        }
        bn_print(o, d, &r);
    }
    free(res);
    vxb_ctx_free(&c);
    vecidx_close(ix);
}

/* ---- Filtered mode: --filter-selectivity --------------------------------
** One index of the base; per selectivity an admitted set (bn_filter_make)
** and its exact neighbours; per selectivity and sweep value, passes in
** turns of every --filter-form, the scan of the admitted rows, the same
** index unfiltered and, with --filter-baseline-flat, a flat index with
** the callback of each callback form; then a line per form. */

static int is_callback(int form)
{
    return form == BN_FORM_CALLBACK || form == BN_FORM_CALLBACK_SEL;
}

/* Runner slots: a form each, then the scan, the unfiltered index, a
** flat index per callback form, and with the bitmap form the scan that
** walks the bitmap. */
#define MAX_RUNNERS (2 * BN_NFORMS + 3)

/* A runner's context: the index and search options of from (with the
** sweep value set on it), its own batch counts, and the admitted set f
** in the form BN_FORM_* (f NULL: unfiltered). */
static void runner_ctx(vxb_ctx *c, const vxb_ctx *from, int form,
                       const bn_filter *f)
{
    size_t *found = c->found;
    *c = *from;
    c->found = found;
    vxb_filter_opts(&c->so, form, f);
}

static void run_filtered(const bn_opts *o, const bn_data *d,
                         const char *open_file, int lean)
{
    int kind = vxb_kind(o->index);
    const bn_list *sweep = kind == VECIDX_HNSW    ? &o->ef
                           : kind == VECIDX_IVFPQ ? &o->nprobe
                                                  : NULL;
    size_t nvals = sweep ? sweep->n : 1, si, vi, i, nr;
    size_t rsz = d->nq * o->k;
    vecidx_stats_t st;
    build_info b;
    vxb_ctx base_c, flat_c, c[MAX_RUNNERS];
    bn_runner run[MAX_RUNNERS];
    int64_t *res[MAX_RUNNERS];
    int flat_for[BN_NFORMS]; /* runner of the form's flat baseline, or -1 */
    int bits_run;            /* runner of the bitmap walk's scan, or -1 */
    bn_scan scan;
    bn_result r;
    bn_filter_line line;
    vecidx *ix = build_base(o, d, kind, &b), *flat = NULL;
    uint32_t *order;
    float *norms;
    double rss_open = -1, open_ms = 0;

    if (open_file) {
        ix = vxb_reopen_cold(ix, open_file, lean, &rss_open, &open_ms);
        bn_note("--open-file: opened in %.2f ms", open_ms);
    }
    get_stats(ix, &st);
    if (st.count != d->n)
        bn_note("warning: index holds %llu vectors after adding %zu",
                (unsigned long long)st.count, d->n);
    for (i = 0; i < o->nforms && o->filter_flat; i++)
        if (is_callback(o->forms[i]) && !flat) flat = build_flat(o, d);
    if (o->filter_flat && !flat)
        bn_note("--filter-baseline-flat: no callback form, no flat index");
    order = bn_filter_order(o, d);
    norms = bn_scan_norms(o, d);
    memset(&scan, 0, sizeof scan);
    scan.d = d;
    scan.inv_norm = norms;
    scan.metric = o->metric;
    scan.k = o->k;
    vxb_ctx_init(&base_c, o, d, ix);
    vxb_ctx_init(&flat_c, o, d, flat); /* used only if flat exists */
    for (i = 0; i < MAX_RUNNERS; i++) {
        res[i] = (int64_t *)bn_malloc(rsz * sizeof *res[i]);
        vxb_ctx_init(&c[i], o, d, ix);
    }

    for (si = 0; si < o->nsel; si++) {
        bn_filter f;
        double t0 = bn_now();
        if (!bn_filter_make(o, d, order, o->sel[si], &f)) continue;
        bn_filter_truth(o, d, &scan, &f);
        bn_note("selectivity %g: %zu rows admitted; exact neighbours in "
                "%.2f s; timed scan passes of %zu queries",
                f.selectivity, f.m, bn_now() - t0, f.scan_nq);
        for (vi = 0; vi < nvals; vi++) {
            result_init(&r, o, &st, b.build_s);
            set_sweep(o, kind, sweep ? sweep->v[vi] : 0, &st, b.ntrain, &base_c,
                      &r);
            memset(run, 0, sizeof run);
            nr = 0;
            for (i = 0; i < o->nforms; i++, nr++) {
                runner_ctx(&c[nr], &base_c, o->forms[i], &f);
                run[nr].fn = vxb_search_one;
                run[nr].batch_fn = vxb_search_batch;
                run[nr].ctx = &c[nr];
            }
            run[nr].fn = bn_scan_query; /* nr == o->nforms */
            run[nr].ctx = &scan;
            run[nr++].nq = f.scan_nq;
            {
                runner_ctx(&c[nr], &base_c, 0, NULL);
                run[nr].fn = vxb_search_one;
                run[nr].batch_fn = vxb_search_batch;
                run[nr].ctx = &c[nr];
                nr++;
            }
            for (i = 0; i < o->nforms; i++) {
                flat_for[i] = -1;
                if (!flat || !is_callback(o->forms[i])) continue;
                runner_ctx(&c[nr], &flat_c, o->forms[i], &f);
                run[nr].fn = vxb_search_one;
                run[nr].batch_fn = vxb_search_batch;
                run[nr].ctx = &c[nr];
                flat_for[i] = (int)nr++;
            }
            bits_run = -1;
            for (i = 0; i < o->nforms; i++)
                if (o->forms[i] == BN_FORM_BITMAP && bits_run < 0) {
                    run[nr].fn = bn_scan_bits_query;
                    run[nr].ctx = &scan;
                    run[nr].nq = f.scan_nq;
                    bits_run = (int)nr++;
                }
            for (i = 0; i < nr; i++) {
                run[i].res = res[i];
                if (!run[i].nq) run[i].nq = d->nq;
            }
            bn_run_interleaved(o, run, nr, d->nq);
            for (i = 0; i < nr; i++)
                if (run[i].fn == vxb_search_one)
                    fill_missing(o, d, &c[i], res[i]);
            if (bits_run >= 0 && memcmp(res[bits_run], res[o->nforms],
                                        f.scan_nq * o->k * sizeof *res[0]))
                bn_note("warning: the bitmap's scan and the keys' scan "
                        "disagree at s=%g",
                        f.selectivity);

            for (i = 0; i < o->nforms; i++) {
                bn_result rf = r;
                char what[128];
                size_t u = o->nforms + 1;
                snprintf(what, sizeof what, "%s %s s=%g", r.param,
                         bn_form_names[o->forms[i]], f.selectivity);
                bn_filter_line_init(&line, &f, bn_form_names[o->forms[i]]);
                line.qps = rf.qps = bn_runner_qps(&run[i]);
                line.recall = rf.recall = bn_filter_recall(
                    &f, d->nq, o->k, res[i], &line.outside, what);
                line.scan_qps = bn_runner_qps(&run[o->nforms]);
                if (o->forms[i] == BN_FORM_BITMAP && bits_run >= 0)
                    line.bits_scan_qps = bn_runner_qps(&run[bits_run]);
                line.unfiltered_qps = bn_runner_qps(&run[u]);
                line.unfiltered_recall = bn_recall(d, res[u], o->k, r.param);
                if (flat_for[i] >= 0) {
                    line.flat_cb_qps = bn_runner_qps(&run[flat_for[i]]);
                    line.flat_cb_recall = bn_filter_recall(
                        &f, d->nq, o->k, res[flat_for[i]], NULL, "flat");
                }
                rf.extra = bn_filter_extra(o, &line);
                if (open_file) {
                    size_t at;
                    rf.rss_mb = vxb_file_keys(line.buf, sizeof line.buf,
                                              rss_open, open_ms);
                    at = strlen(line.buf);
                    snprintf(line.buf + at, sizeof line.buf - at,
                             ",\"lean\":%s", lean ? "true" : "false");
                }
                bn_print(o, d, &rf);
            }
        }
        bn_filter_free(&f);
    }
    for (i = 0; i < MAX_RUNNERS; i++) {
        free(res[i]);
        vxb_ctx_free(&c[i]);
    }
    vxb_ctx_free(&base_c);
    vxb_ctx_free(&flat_c);
    free(order);
    free(norms);
    if (flat) vecidx_close(flat);
    vecidx_close(ix);
}

/* ---- Churn mode ------------------------------------------------------------
** The live set is always live_n = n/2 base rows. The rows outside it wait in
** a ring, unused rows first: a round removes half of the live rows, chosen
** at random, and swaps each for the row at the head of the ring, so removed
** rows come back only after every unused row has been added once. */

typedef struct churn {
    const bn_opts *o;
    const bn_data *d;
    unsigned rounds;
    size_t live_n, ring_n, head;
    uint64_t *live; /* keys = base rows in the index */
    uint64_t *ring; /* the other ring_n rows */
    float *vecs;    /* live_n rows gathered for vecidx_add_batch */
    uint64_t rng;
    double remove_s, insert_s; /* all rounds */
    vecidx_stats_t st1;        /* after round 1 */
} churn;

/* splitmix64: a fixed seed makes the removed sets the same in every run,
** so runs differ only by the index code and thread timing. */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static void gather(const bn_data *d, const uint64_t *rows, size_t n, float *out)
{
    size_t i;
    for (i = 0; i < n; i++)
        memcpy(out + i * d->dim, d->base + rows[i] * d->dim,
               d->dim * sizeof *out);
}

/* An index of the options' parameters, but of the given kind, holding n
** vectors; *secs gets the time of the vecidx_add_batch. */
static vecidx *build_set(const churn *ch, int kind, size_t n,
                         const uint64_t *keys, const float *vecs, double *secs)
{
    vecidx_params p;
    vecidx *ix = NULL;
    size_t ntrain;
    double t0;
    int rc;

    vxb_params(ch->o, ch->d, &p, &ntrain);
    p.kind = kind;
    /* The flat index gives the exact neighbours (churn_truth): float32,
    ** whatever --storage says. */
    if (kind == VECIDX_FLAT) {
        p.storage = VECIDX_STORE_F32;
        p.keep_vectors = 0;
        p.refine = 0;
    }
    /* vxb_params reserves room for the whole base; reserving only the set
    ** makes memory_bytes show what churn adds beyond it. */
    if (n < p.capacity) p.capacity = (uint32_t)n;
    rc = vecidx_create(&p, &ix);
    if (rc != VECIDX_OK) vxb_fail("vecidx_create", rc, NULL);
    t0 = bn_now();
    rc = vecidx_add_batch(ix, n, keys, vecs);
    *secs = bn_now() - t0;
    if (rc != VECIDX_OK) vxb_fail("vecidx_add_batch", rc, ix);
    return ix;
}

static void churn_init(churn *ch, const bn_opts *o, const bn_data *d,
                       unsigned rounds)
{
    size_t i;
    memset(ch, 0, sizeof *ch);
    ch->o = o;
    ch->d = d;
    ch->rounds = rounds;
    ch->live_n = d->n / 2;
    ch->ring_n = d->n - ch->live_n;
    if (ch->live_n < 2 || ch->live_n < o->k)
        bn_die("--churn: %zu base vectors are too few (need 2 * max(2, k))",
               d->n);
    ch->live = (uint64_t *)bn_malloc(ch->live_n * sizeof *ch->live);
    ch->ring = (uint64_t *)bn_malloc(ch->ring_n * sizeof *ch->ring);
    ch->vecs = (float *)bn_malloc(ch->live_n * d->dim * sizeof *ch->vecs);
    for (i = 0; i < ch->live_n; i++) ch->live[i] = i;
    for (i = 0; i < ch->ring_n; i++) ch->ring[i] = ch->live_n + i;
    ch->rng = 20261130;
}

static void churn_free(churn *ch)
{
    free(ch->live);
    free(ch->ring);
    free(ch->vecs);
}

/* One round: removes live[0, m) after shuffling a random half there, then
** adds the m rows that replace them, timing both steps. */
static void churn_round(churn *ch, vecidx *ix, unsigned round)
{
    size_t m = ch->live_n / 2, i;
    vecidx_stats_t st;
    double t0, rm_s, add_s;
    int rc;

    for (i = 0; i < m; i++) { /* partial Fisher-Yates */
        size_t j = i + (size_t)(next_rand(&ch->rng) % (ch->live_n - i));
        uint64_t t = ch->live[i];
        ch->live[i] = ch->live[j];
        ch->live[j] = t;
    }
    t0 = bn_now();
    for (i = 0; i < m; i++) {
        rc = vecidx_remove(ix, ch->live[i]);
        if (rc != VECIDX_OK) vxb_fail("vecidx_remove", rc, ix);
    }
    rm_s = bn_now() - t0;
    for (i = 0; i < m; i++) {
        uint64_t t = ch->ring[ch->head];
        ch->ring[ch->head] = ch->live[i];
        ch->live[i] = t;
        ch->head = (ch->head + 1) % ch->ring_n;
    }
    gather(ch->d, ch->live, m, ch->vecs);
    t0 = bn_now();
    rc = vecidx_add_batch(ix, m, ch->live, ch->vecs);
    add_s = bn_now() - t0;
    if (rc != VECIDX_OK) vxb_fail("vecidx_add_batch", rc, ix);

    ch->remove_s += rm_s;
    ch->insert_s += add_s;
    get_stats(ix, &st);
    if (st.count != ch->live_n)
        bn_note("warning: index holds %llu vectors, expected %zu",
                (unsigned long long)st.count, ch->live_n);
    if (round == 1) ch->st1 = st;
    bn_note("round %u/%u: removed %zu in %.2f s (%.0f/s), added %zu in "
            "%.2f s (%.0f/s); %.1f MiB, %llu slots",
            round, ch->rounds, m, rm_s, rm_s > 0 ? (double)m / rm_s : 0, m,
            add_s, add_s > 0 ? (double)m / add_s : 0, mib(st.memory_bytes),
            (unsigned long long)st.slots);
}

/* Exact k nearest live rows of every query, from a flat index of the live
** set, as the int32 rows bn_recall reads. Expects ch->vecs to hold the
** live vectors. */
static int32_t *churn_truth(const churn *ch)
{
    const bn_data *d = ch->d;
    size_t k = ch->o->k, i, nk = d->nq * k;
    uint64_t *keys = (uint64_t *)bn_malloc(nk * sizeof *keys);
    size_t *found = (size_t *)bn_malloc(d->nq * sizeof *found);
    int32_t *gt = (int32_t *)bn_malloc(nk * sizeof *gt);
    vecidx_search_opts so;
    double secs;
    vecidx *flat = build_set(ch, VECIDX_FLAT, ch->live_n, ch->live, ch->vecs,
                             &secs);
    int rc;

    memset(&so, 0, sizeof so);
    so.threads = ch->o->build_threads;
    rc = vecidx_search_batch(flat, d->nq, d->query, k, &so, keys, NULL, found);
    if (rc != VECIDX_OK) vxb_fail("vecidx_search_batch", rc, flat);
    for (i = 0; i < d->nq; i++)
        if (found[i] != k)
            bn_die("exact search of query %zu found %zu of %zu", i, found[i],
                   k);
    for (i = 0; i < nk; i++) gt[i] = (int32_t)keys[i];
    vecidx_close(flat);
    free(found);
    free(keys);
    return gt;
}

/* One JSON line; the round-1 memory and the churn times are null for the
** fresh index, which went through no rounds. */
static void churn_print(const churn *ch, const bn_data *truth, bn_result *r,
                        const vecidx_stats_t *st, int churned)
{
    char extra[512], m1[32] = "null", s1[32] = "null", rm[32] = "null",
                     add[32] = "null";
    if (churned) {
        snprintf(m1, sizeof m1, "%.1f", mib(ch->st1.memory_bytes));
        snprintf(s1, sizeof s1, "%llu", (unsigned long long)ch->st1.slots);
        snprintf(rm, sizeof rm, "%.3f", ch->remove_s);
        snprintf(add, sizeof add, "%.3f", ch->insert_s);
    }
    snprintf(extra, sizeof extra,
             ",\"churn_rounds\":%u,\"state\":\"%s\",\"live\":%zu,"
             "\"slots\":%llu,\"mem_round1_mb\":%s,\"slots_round1\":%s,"
             "\"remove_s\":%s,\"insert_s\":%s",
             ch->rounds, churned ? "churned" : "fresh", ch->live_n,
             (unsigned long long)st->slots, m1, s1, rm, add);
    r->extra = extra;
    bn_print(ch->o, truth, r);
    r->extra = NULL;
}

/* Per ef, the churned index and then the fresh one, so that both are timed
** under the same load; a JSON line each, then a table on stderr. */
static void churn_report(const churn *ch, vecidx *ix[2],
                         const double build_s[2], int32_t *gt)
{
    const bn_opts *o = ch->o;
    bn_data truth = *ch->d;
    vxb_ctx c[2];
    vecidx_stats_t st[2];
    bn_result r[BN_MAX_SWEEP][2];
    int64_t *res = (int64_t *)bn_malloc(truth.nq * o->k * sizeof *res);
    size_t i;
    int s;

    truth.gt = gt;
    truth.gt_k = o->k;
    for (s = 0; s < 2; s++) {
        get_stats(ix[s], &st[s]);
        vxb_ctx_init(&c[s], o, &truth, ix[s]);
    }
    for (i = 0; i < o->ef.n; i++)
        for (s = 0; s < 2; s++) {
            result_init(&r[i][s], o, &st[s], build_s[s]);
            set_sweep(o, VECIDX_HNSW, o->ef.v[i], &st[s], 0, &c[s], &r[i][s]);
            run_queries(o, &truth, &c[s], res, &r[i][s]);
            churn_print(ch, &truth, &r[i][s], &st[s], s == 0);
        }
    bn_note("%zu live of %zu rows after %u rounds; churned: %.1f MiB and "
            "%llu slots after round 1, %.1f MiB and %llu after round %u; "
            "fresh build: %.1f MiB, %llu slots",
            ch->live_n, truth.n, ch->rounds, mib(ch->st1.memory_bytes),
            (unsigned long long)ch->st1.slots, mib(st[0].memory_bytes),
            (unsigned long long)st[0].slots, ch->rounds,
            mib(st[1].memory_bytes), (unsigned long long)st[1].slots);
    bn_note("%6s %16s %14s %13s %11s", "ef", "recall churned", "recall fresh",
            "QPS churned", "QPS fresh");
    for (i = 0; i < o->ef.n; i++)
        bn_note("%6u %16.4f %14.4f %13.0f %11.0f", (unsigned)o->ef.v[i],
                r[i][0].recall, r[i][1].recall, r[i][0].qps, r[i][1].qps);
    for (s = 0; s < 2; s++) vxb_ctx_free(&c[s]);
    free(res);
}

static void run_churn(const bn_opts *o, const bn_data *d, unsigned rounds)
{
    churn ch;
    vecidx *ix[2];
    double build_s[2];
    int32_t *gt;
    unsigned round;
    int rc;

    churn_init(&ch, o, d, rounds);
    /* Rows 0 .. live_n-1 lie contiguous in the base: no gathering. */
    ix[0] = build_set(&ch, VECIDX_HNSW, ch.live_n, ch.live, d->base,
                      &build_s[0]);
    bn_note("built %zu of %zu rows in %.2f s; %u rounds of removing and "
            "adding %zu",
            ch.live_n, d->n, build_s[0], rounds, ch.live_n / 2);
    for (round = 1; round <= rounds; round++) churn_round(&ch, ix[0], round);
    /* A broken graph would show as low recall; say so plainly instead. */
    rc = vecidx_check(ix[0]);
    if (rc != VECIDX_OK) vxb_fail("vecidx_check", rc, ix[0]);

    gather(d, ch.live, ch.live_n, ch.vecs);
    gt = churn_truth(&ch);
    ix[1] = build_set(&ch, VECIDX_HNSW, ch.live_n, ch.live, ch.vecs,
                      &build_s[1]);
    churn_report(&ch, ix, build_s, gt);
    vecidx_close(ix[0]);
    vecidx_close(ix[1]);
    free(gt);
    churn_free(&ch);
}

/* ---- Command line ---------------------------------------------------------
** bn_parse_args (common.h, shared with vecidx-compare) rejects options it
** does not know, so --churn is taken out of argv before it runs. Every
** other option but --batch, --keep, --filter-baseline-flat and --help
** takes a value, skipped here
** so that a value spelled "--churn" is left alone. */

static void usage_churn(void)
{
    bn_usage(stdout, bn_progname, LIBS);
    fputs("\nvecidx-bench only:\n"
          "  --churn R           hnsw: build over the first half of the base,\n"
          "                      then R rounds of removing a random half of\n"
          "                      the live vectors and adding as many other\n"
          "                      rows (unused ones first); compare recall,\n"
          "                      QPS and memory with a fresh build of the\n"
          "                      final set, against that set's exact\n"
          "                      neighbours. Adds the keys churn_rounds,\n"
          "                      state (churned|fresh), live, slots,\n"
          "                      mem_round1_mb, slots_round1, remove_s and\n"
          "                      insert_s\n"
          "  --open-file PATH    save the index to PATH, drop the file's\n"
          "                      pages from the page cache, open it\n"
          "                      read-only and search that (single queries,\n"
          "                      one thread); rss_mb is then the growth of\n"
          "                      VmRSS from before the open to the end of\n"
          "                      the line's passes (cumulative over the\n"
          "                      sweep); adds source, open_ms and\n"
          "                      queries_so_far. With --filter-selectivity\n"
          "                      the filtered forms and the unfiltered\n"
          "                      runner search the opened index; its lines\n"
          "                      add source, open_ms and lean\n"
          "  --lean              with --open-file: open VECIDX_RDONLY |\n"
          "                      VECIDX_LEAN (kept vectors read by pread)\n",
          stdout);
    exit(0);
}

static unsigned take_churn(int *argc, char **argv, const char **open_file,
                           int *lean)
{
    unsigned rounds = 0;
    int i, out = 1;
    const char *slash;
    if (*argc < 1 || !argv[0]) return 0;
    slash = strrchr(argv[0], '/'); /* for messages before bn_parse_args */
    bn_progname = slash ? slash + 1 : argv[0];
    for (i = 1; i < *argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) usage_churn();
        if (!strcmp(a, "--churn") || !strncmp(a, "--churn=", 8)) {
            const char *v = a[7] ? a + 8 : i + 1 < *argc ? argv[++i] : NULL;
            if (!v) bn_die("--churn needs a value");
            rounds = (unsigned)bn_parse_ulong("--churn", v, 1, 100000);
            continue;
        }
        if (!strcmp(a, "--open-file") || !strncmp(a, "--open-file=", 12)) {
            *open_file = a[11] ? a + 12 : i + 1 < *argc ? argv[++i] : NULL;
            if (!*open_file || !**open_file) bn_die("--open-file needs a path");
            continue;
        }
        if (!strcmp(a, "--lean")) {
            *lean = 1;
            continue;
        }
        argv[out++] = argv[i];
        if (!strncmp(a, "--", 2) && !strchr(a, '=') && strcmp(a, "--batch") &&
            strcmp(a, "--keep") && strcmp(a, "--filter-baseline-flat") &&
            i + 1 < *argc)
            argv[out++] = argv[++i];
    }
    *argc = out;
    argv[out] = NULL;
    return rounds;
}

int main(int argc, char **argv)
{
    bn_opts o;
    bn_data d;
    const char *open_file = NULL;
    int lean = 0;
    unsigned churn_rounds = take_churn(&argc, argv, &open_file, &lean);

    bn_filter_supported = 1;
    bn_parse_args(argc, argv, &o, LIBS);
    if (o.lib && strcmp(o.lib, "vecidx") != 0)
        bn_die(
            "--lib %s: this program measures vecidx only; use vecidx-compare",
            o.lib);
    if (churn_rounds && vxb_kind(o.index) != VECIDX_HNSW)
        bn_die("--churn needs --index hnsw");
    if (churn_rounds && o.nsel)
        bn_die("--churn and --filter-selectivity: one or the other");
    if (lean && !open_file) bn_die("--lean needs --open-file");
    if (open_file && (churn_rounds || o.batch || o.threads != 1))
        bn_die("--open-file: single queries, one thread, no --churn");
    if (strcmp(vecidx_version(), VECIDX_VERSION_STRING) != 0)
        bn_note("warning: vecidx.h is %s but the library is %s",
                VECIDX_VERSION_STRING, vecidx_version());
    bn_load(&o, &d);
    if (churn_rounds)
        run_churn(&o, &d, churn_rounds);
    else if (o.nsel)
        run_filtered(&o, &d, open_file, lean);
    else
        run_standard(&o, &d, open_file, lean);
    bn_free_data(&d);
    return 0;
}
