/*
** vecidx-tune.c -- does vecidx_tune choose well? (issue 18)
**
**   bench/vecidx-tune --data DIR --index hnsw|ivfpq [--refine R] ...
**
** Builds the index over the base vectors (key of base row i = i), then for
** the targets 0.90, 0.95 and 0.99 lets vecidx_tune choose a setting two
** ways: from sample queries it makes itself out of stored vectors
** ("sample"), and from the first half of the data set's query file with
** its ground truth ("given"). Each choice is then checked on the real
** queries (the second half for "given", all for "sample") against their
** ground truth, beside the smallest setting of the same sweep that
** reaches the target there. One JSON line per target and mode:
**   real_recall   recall@k of the chosen setting on the real queries
**   est_recall    what the tuning measured for it
**   steps_above   sweep steps between the choice and the smallest real
**                 setting reaching the target (negative: below it)
**   ok            real_recall >= target - 0.01 and steps_above <= 1
** The sweep is the one vecidx.h documents at vecidx_tune.
*/
#include "common.h" /* first: selects POSIX */
#include "vecidx.h"
#include "vxbench.h"

#define LIBS "vecidx"

static const uint32_t ef_steps[] = {10,  16,  24,  32,  48,  64,   96,   128,
                                    192, 256, 384, 512, 768, 1024, 1536, 2048};
static const uint32_t refine_steps[] = {1, 2, 4, 8, 16, 32};
#define NEF (sizeof ef_steps / sizeof *ef_steps)
#define NREF (sizeof refine_steps / sizeof *refine_steps)

typedef struct setting {
    uint32_t ef, nprobe, refine;
} setting;

/* The sweep in vecidx_tune's order, into s (at most cap); returns count. */
static size_t sweep(const vecidx_stats_t *st, int keep, size_t k, setting *s,
                    size_t cap)
{
    size_t n = 0, e, r;
    uint32_t np = 1;
    for (;;) {
        for (e = 0; e < (st->kind == VECIDX_HNSW ? NEF : 1); e++) {
            uint32_t ef = st->kind == VECIDX_HNSW ? ef_steps[e] : 0;
            if (ef && ef < k && e + 1 < NEF && ef_steps[e + 1] <= k) continue;
            for (r = 0; r < (keep ? NREF : 1) && n < cap; r++) {
                s[n].ef = ef;
                s[n].nprobe = st->kind == VECIDX_IVFPQ ? np : 0;
                s[n].refine = keep ? refine_steps[r] : 0;
                n++;
            }
        }
        if (st->kind != VECIDX_IVFPQ || np >= st->nlist) return n;
        np = np > st->nlist / 2 ? st->nlist : np * 2;
    }
}

static void name(char *buf, size_t len, const setting *s)
{
    if (s->nprobe)
        snprintf(buf, len, "nprobe=%u,refine=%u", s->nprobe, s->refine);
    else if (s->refine)
        snprintf(buf, len, "ef=%u,refine=%u", s->ef, s->refine);
    else
        snprintf(buf, len, "ef=%u", s->ef);
}

/* The ground truth of queries [from, from + nq) as keys, k per query. */
static uint64_t *truth_keys(const bn_data *d, size_t from, size_t nq, size_t k)
{
    uint64_t *t = (uint64_t *)bn_malloc(nq * k * sizeof *t);
    size_t i, j;
    if (d->gt_k < k)
        bn_die("ground truth holds %zu per query, k is %zu", d->gt_k, k);
    for (i = 0; i < nq; i++)
        for (j = 0; j < k; j++)
            t[i * k + j] = (uint64_t)d->gt[(from + i) * d->gt_k + j];
    return t;
}

static double real_recall(vecidx *ix, const bn_data *d, size_t from, size_t nq,
                          size_t k, const setting *s, const uint64_t *truth)
{
    vecidx_search_opts o;
    vecidx_recall r;
    int rc;
    memset(&o, 0, sizeof o);
    o.ef = s->ef;
    o.nprobe = s->nprobe;
    o.refine = s->refine;
    rc = vecidx_estimate_recall(ix, k, nq, d->query + from * d->dim, truth, &o,
                                &r);
    if (rc != VECIDX_OK) vxb_fail("vecidx_estimate_recall", rc, ix);
    return r.recall;
}

static void check(vecidx *ix, const bn_opts *o, const bn_data *d, double target,
                  int given)
{
    vecidx_stats_t st;
    vecidx_tuning t;
    setting s[512], chosen;
    size_t k = o->k, half = d->nq / 2, from = given ? half : 0;
    size_t nq = given ? d->nq - half : d->nq, n, i, smallest = SIZE_MAX, at;
    uint64_t *tq = given ? truth_keys(d, 0, half, k) : NULL;
    uint64_t *tr = truth_keys(d, from, nq, k);
    double t0 = bn_now(), secs, real;
    char cbuf[64], sbuf[64];
    int rc, keep;
    rc = vecidx_tune(ix, target, k, given ? half : 0, given ? d->query : NULL,
                     tq, &t);
    secs = bn_now() - t0;
    if (rc != VECIDX_OK) vxb_fail("vecidx_tune", rc, ix);
    if ((rc = vecidx_stats(ix, &st)) != VECIDX_OK)
        vxb_fail("vecidx_stats", rc, ix);
    keep = st.kind == VECIDX_IVFPQ ? o->refine > 1 : o->keep;
    n = sweep(&st, keep, k, s, 512);
    chosen.ef = t.ef;
    chosen.nprobe = t.nprobe;
    chosen.refine = t.refine;
    at = n;
    for (i = 0; i < n; i++)
        if (s[i].ef == t.ef && s[i].nprobe == t.nprobe &&
            s[i].refine == t.refine)
            at = i;
    /* the smallest setting reaching the target on the real queries,
    ** searched from the bottom (each step is one pass over them) */
    for (i = 0; i < n && smallest == SIZE_MAX; i++)
        if (real_recall(ix, d, from, nq, k, &s[i], tr) >= target) smallest = i;
    real = real_recall(ix, d, from, nq, k, &chosen, tr);
    name(cbuf, sizeof cbuf, &chosen);
    if (smallest < n)
        name(sbuf, sizeof sbuf, &s[smallest]);
    else
        snprintf(sbuf, sizeof sbuf, "none");
    printf("{\"dataset\":\"%s\",\"index\":\"%s\",\"target\":%.2f,"
           "\"mode\":\"%s\",\"reached\":%d,\"chosen\":\"%s\","
           "\"est_recall\":%.4f,\"est_low\":%.4f,\"real_recall\":%.4f,"
           "\"smallest_real\":\"%s\",\"steps_above\":%ld,\"ok\":%s,"
           "\"tune_s\":%.2f,\"steps\":%u,\"simd\":\"%s\",\"advice\":",
           o->dataset, o->index, target, given ? "given" : "sample", t.reached,
           cbuf, t.recall.recall, t.recall.low, real, sbuf,
           smallest < n && at < n ? (long)at - (long)smallest : 99,
           real >= target - 0.01 && (smallest == n || at <= smallest + 1)
               ? "true"
               : "false",
           secs, t.steps, vecidx_simd());
    bn_json_str(stdout, t.advice);
    printf("}\n");
    fflush(stdout);
    free(tq);
    free(tr);
}

int main(int argc, char **argv)
{
    static const double targets[] = {0.90, 0.95, 0.99};
    bn_opts o;
    bn_data d;
    vecidx_params p;
    vecidx *ix = NULL;
    uint64_t *keys;
    size_t ntrain, i;
    int rc, given;
    bn_parse_args(argc, argv, &o, LIBS);
    bn_load(&o, &d);
    vxb_params(&o, &d, &p, &ntrain);
    if (p.kind == VECIDX_IVFPQ && o.refine > 1) p.ivf_refine = o.refine;
    if ((rc = vecidx_create(&p, &ix)) != VECIDX_OK)
        vxb_fail("vecidx_create", rc, NULL);
    if (p.kind == VECIDX_IVFPQ && (rc = vecidx_train(ix, ntrain, d.base)) != 0)
        vxb_fail("vecidx_train", rc, ix);
    keys = vxb_keys(&d);
    if ((rc = vecidx_add_batch(ix, d.n, keys, d.base)) != VECIDX_OK)
        vxb_fail("vecidx_add_batch", rc, ix);
    free(keys);
    for (given = 0; given < 2; given++)
        for (i = 0; i < sizeof targets / sizeof *targets; i++)
            check(ix, &o, &d, targets[i], given);
    vecidx_close(ix);
    bn_free_data(&d);
    return 0;
}
