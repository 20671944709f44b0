/*
** vecidx-bench -- build a vecidx index over a classic ANN data set (.fvecs
** base and queries, .ivecs ground truth) and print build time, memory,
** recall and queries per second as JSON lines. See bench/README.md.
**
**   cc -std=c11 -O3 -I. bench/vecidx-bench.c libvecidx.a -pthread -lm
*/
#include "common.h" /* first: selects POSIX */

#include "vecidx.h"
#include "vxbench.h"

int main(int argc, char **argv)
{
    bn_opts o;
    bn_data d;
    vecidx_params p;
    vecidx_stats_t st;
    vecidx *ix = NULL;
    vxb_ctx c;
    bn_result r;
    uint64_t *keys;
    int64_t *res;
    const bn_list *sweep = NULL;
    double rss0, rss1, rss_trained = -1, t0, build_s, train_s = -1;
    size_t i, nvals, ntrain = 0;
    int rc, kind;

    bn_parse_args(argc, argv, &o,
                  "vecidx (the only one here; see vecidx-compare)");
    if (o.lib && strcmp(o.lib, "vecidx") != 0)
        bn_die(
            "--lib %s: this program measures vecidx only; use vecidx-compare",
            o.lib);
    if (strcmp(vecidx_version(), VECIDX_VERSION_STRING) != 0)
        bn_note("warning: vecidx.h is %s but the library is %s",
                VECIDX_VERSION_STRING, vecidx_version());
    bn_load(&o, &d);
    kind = vxb_kind(o.index);
    vxb_params(&o, &d, &p, &ntrain);
    keys = vxb_keys(&d);

    rss0 = bn_rss_mb();
    rc = vecidx_create(&p, &ix);
    if (rc != VECIDX_OK) vxb_fail("vecidx_create", rc, NULL);
    if (kind == VECIDX_IVFPQ) {
        t0 = bn_now();
        rc = vecidx_train(ix, ntrain, d.base);
        train_s = bn_now() - t0;
        if (rc != VECIDX_OK) vxb_fail("vecidx_train", rc, ix);
        rss_trained = bn_rss_mb(); /* between the timed steps */
    }
    t0 = bn_now();
    rc = vecidx_add_batch(ix, d.n, keys, d.base);
    build_s = bn_now() - t0 + (train_s > 0 ? train_s : 0);
    if (rc != VECIDX_OK) vxb_fail("vecidx_add_batch", rc, ix);
    rss1 = bn_rss_mb(); /* before freeing keys, which predate rss0 */
    free(keys);
    rc = vecidx_stats(ix, &st);
    if (rc != VECIDX_OK) vxb_fail("vecidx_stats", rc, ix);
    if (st.count != d.n)
        bn_note("warning: index holds %llu vectors after adding %zu",
                (unsigned long long)st.count, d.n);

    memset(&c, 0, sizeof c);
    c.ix = ix;
    c.d = &d;
    c.k = o.k;
    c.so.threads = o.threads;
    c.found = (size_t *)bn_malloc(d.nq * sizeof *c.found);
    res = (int64_t *)bn_malloc(d.nq * o.k * sizeof *res);

    if (kind == VECIDX_HNSW)
        sweep = &o.ef;
    else if (kind == VECIDX_IVFPQ)
        sweep = &o.nprobe;
    nvals = sweep ? sweep->n : 1;

    for (i = 0; i < nvals; i++) {
        bn_result_init(&r, &o, "vecidx");
        r.simd = st.simd ? st.simd : vecidx_simd();
        r.lib_version = vecidx_version();
        r.build_s = build_s;
        r.train_s = train_s;
        if (rss_trained >= 0 && rss1 >= 0 && d.n)
            r.bytes_per_vec = (rss1 - rss_trained) * 1024.0 * 1024.0 /
                              (double)d.n;
        r.mem_mb = (double)st.memory_bytes / (1024.0 * 1024.0);
        r.rss_mb = rss0 >= 0 && rss1 >= 0 ? rss1 - rss0 : -1;
        c.so.ef = 0;
        c.so.nprobe = 0;
        c.so.refine = o.refine;
        if (kind == VECIDX_HNSW) {
            c.so.ef = sweep->v[i];
            snprintf(r.param, sizeof r.param, "ef=%u", (unsigned)sweep->v[i]);
            snprintf(r.build, sizeof r.build, "M=%u,efc=%u", (unsigned)o.M,
                     (unsigned)o.ef_construction);
        } else if (kind == VECIDX_IVFPQ) {
            c.so.nprobe = sweep->v[i];
            snprintf(r.param, sizeof r.param, "nprobe=%u",
                     (unsigned)sweep->v[i]);
            snprintf(r.build, sizeof r.build,
                     "nlist=%u,m=%u,nbits=%u,train=%zu,refine=%u",
                     (unsigned)st.nlist, (unsigned)st.pq_m,
                     (unsigned)o.pq_nbits, ntrain,
                     o.refine > 1 ? (unsigned)o.refine : 1u);
        } else {
            snprintf(r.param, sizeof r.param, "exact");
        }
        r.qps = bn_measure(&o, &d, vxb_search_one, vxb_search_batch, &c, res);
        if (o.batch) {
            size_t q, j;
            for (q = 0; q < d.nq; q++)
                for (j = c.found[q]; j < o.k; j++) res[q * o.k + j] = -1;
        }
        r.recall = bn_recall(&d, res, o.k, r.param);
        bn_print(&o, &d, &r);
    }

    free(res);
    free(c.found);
    vecidx_close(ix);
    bn_free_data(&d);
    return 0;
}
