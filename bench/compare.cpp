/*
** vecidx-compare -- the reference libraries on the same data, options and
** timing as vecidx-bench, printing the same JSON lines with "lib":"hnswlib"
** or "lib":"faiss". Built only by `make bench-compare` (needs Debian's
** libhnswlib-dev and libfaiss-dev); see bench/README.md.
**
**   g++ -O3 -std=c++17 -march=native -I. bench/compare.cpp \
**       -o bench/vecidx-compare -lfaiss -fopenmp -lblas -llapack
**
** hnswlib: HNSW only (L2Space, or InnerProductSpace for ip and cos).
** faiss:   flat (IndexFlatL2/IndexFlatIP), hnsw (IndexHNSWFlat) and ivfpq
**          (IndexIVFPQ over an IndexFlatL2/IndexFlatIP coarse quantizer,
**          trained on the first --train-size base vectors, default 100k;
**          nlist and M resolved as vecidx-bench resolves them, see
**          bn_nlist; with --refine R wrapped in IndexRefineFlat with
**          k_factor R, which keeps the full vectors as vecidx then does).
** faiss-hnswsq: hnsw only, IndexHNSWSQ with the 8-bit scalar quantizer
**          (QT_8bit: a byte per dimension, each dimension's range learnt
**          from the first --train-size base vectors), the counterpart of
**          vecidx's --storage i8; measured as the faiss entry measures
**          IndexHNSWFlat. Its lines say "lib":"faiss","storage":"sq8".
** paired: hnswlib and vecidx (HNSW, single queries) built in one process,
**          their timed passes alternating: see run_paired. With
**          --scenario writer|remove|checkpoint|scaling, searches are timed
**          one call at a time under writes, removals or a checkpoint, or
**          on 1 and N threads: see run_scenario and bench/README.md.
**          vecidx's index follows --storage, --keep and --refine.
** paired-sq: paired with FAISS's IndexHNSWSQ (8-bit, as faiss-hnswsq)
**          built third and timed in turn after vecidx in every pass.
** Filtered (--filter-selectivity): faiss ivfpq only, searched with
**          SearchParametersIVF and an IDSelector per --filter-form (keys:
**          IDSelectorBatch, bitmap: IDSelectorBitmap, callback: a subclass
**          testing a bitmap), beside the baselines vecidx-bench measures:
**          see faiss_filtered and bench/README.md, "Filtered search".
** Cosine: base and queries are normalised to unit length and searched by
** inner product, which ranks exactly as cosine distance does.
** Memory: mem_mb is the growth of the resident set while building (these
** libraries do not count their own memory); rss_mb is the same figure.
*/
#include "common.h" /* first, like in vecidx-bench.c */

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <queue>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include <dlfcn.h>
#include <hnswlib/hnswlib.h>
#include <omp.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexRefine.h>
#include <faiss/impl/ScalarQuantizer.h>
#include <faiss/utils/utils.h>

#include "latency.h"
#include "vecidx.h"
#include "vxbench.h"

namespace
{

std::string strprintf(const char *fmt, ...) BN_PRINTF(1, 2);
std::string strprintf(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

void set_strings(bn_result &r, const std::string &param,
                 const std::string &build)
{
    snprintf(r.param, sizeof r.param, "%s", param.c_str());
    snprintf(r.build, sizeof r.build, "%s", build.c_str());
}

/* Unit-length copies for cosine (rows of zeros stay zero). */
void normalise(float *v, size_t n, size_t dim)
{
    for (size_t i = 0; i < n; i++) {
        float *x = v + i * dim;
        double s = 0;
        for (size_t j = 0; j < dim; j++) s += (double)x[j] * x[j];
        if (s > 0) {
            float inv = (float)(1.0 / sqrt(s));
            for (size_t j = 0; j < dim; j++) x[j] *= inv;
        }
    }
}

/* ---- hnswlib ------------------------------------------------------------ */

const char *hnswlib_simd()
{
#if defined(USE_AVX512)
    return "avx512";
#elif defined(USE_AVX)
    return "avx";
#elif defined(USE_SSE)
    return "sse";
#else
    return "scalar";
#endif
}

struct HnswlibCtx {
    hnswlib::HierarchicalNSW<float> *alg;
    const bn_data *d;
    size_t k;
};

void hnswlib_query(void *arg, size_t qi, int64_t *out)
{
    auto *c = static_cast<HnswlibCtx *>(arg);
    auto top = c->alg->searchKnn(c->d->query + qi * c->d->dim, c->k);
    size_t n = top.size();
    for (size_t i = n; i < c->k; i++) out[i] = -1;
    while (!top.empty()) { /* farthest first */
        out[--n] = (int64_t)top.top().second;
        top.pop();
    }
}

/* Build hnswlib's graph over d, with room for max_elements points (d.n
** when 0); *build_s and *rss_mb get the build time and the resident-set
** growth. */
hnswlib::HierarchicalNSW<float> *
build_hnswlib(const bn_opts &o, const bn_data &d,
              hnswlib::SpaceInterface<float> *space, double *build_s,
              double *rss_mb, size_t max_elements = 0)
{
    double rss0 = bn_rss_mb();
    double t0 = bn_now();
    auto *alg = new hnswlib::HierarchicalNSW<float>(
        space, max_elements > d.n ? max_elements : d.n, o.M, o.ef_construction,
        100);
    /* Like hnswlib's Python add_items: the first point alone, then the
    ** rest from build_threads threads. */
    if (d.n > 0) alg->addPoint(d.base, 0);
    std::atomic<size_t> next(1);
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < o.build_threads; t++)
        pool.emplace_back([&] {
            for (size_t i; (i = next.fetch_add(1)) < d.n;)
                alg->addPoint(d.base + i * d.dim, i);
        });
    for (auto &th : pool) th.join();
    *build_s = bn_now() - t0;
    double rss1 = bn_rss_mb();
    *rss_mb = rss0 >= 0 && rss1 >= 0 ? rss1 - rss0 : -1;
    return alg;
}

hnswlib::SpaceInterface<float> *hnswlib_space(const bn_opts &o,
                                              const bn_data &d)
{
    if (o.metric == BN_L2) return new hnswlib::L2Space(d.dim);
    return new hnswlib::InnerProductSpace(d.dim);
}

void hnswlib_result(bn_result &r, const bn_opts &o, unsigned ef, double build_s,
                    double rss_mb)
{
    bn_result_init(&r, &o, "hnswlib");
    r.simd = hnswlib_simd();
    r.lib_version = nullptr; /* hnswlib headers carry no version */
    set_strings(
        r, strprintf("ef=%u", ef),
        strprintf("M=%u,efc=%u", (unsigned)o.M, (unsigned)o.ef_construction));
    r.build_s = build_s;
    r.rss_mb = r.mem_mb = rss_mb;
}

void run_hnswlib(const bn_opts &o, const bn_data &d)
{
    if (strcmp(o.index, "hnsw") != 0) {
        bn_note("hnswlib has no '%s' index: skipped", o.index);
        return;
    }
    std::unique_ptr<hnswlib::SpaceInterface<float>> space(hnswlib_space(o, d));
    double build_s, rss_mb;
    auto *alg = build_hnswlib(o, d, space.get(), &build_s, &rss_mb);
    HnswlibCtx c{alg, &d, o.k};
    std::vector<int64_t> res(d.nq * o.k);
    for (size_t i = 0; i < o.ef.n; i++) {
        bn_result r;
        hnswlib_result(r, o, (unsigned)o.ef.v[i], build_s, rss_mb);
        alg->setEf(o.ef.v[i]);
        /* hnswlib has no batch call; --batch runs single queries on
        ** --threads threads, as its Python knn_query does. */
        r.qps = bn_measure(&o, &d, hnswlib_query, nullptr, &c, res.data());
        r.recall = bn_recall(&d, res.data(), o.k, r.param);
        bn_print(&o, &d, &r);
    }
    delete alg;
}

/* ---- vecidx ------------------------------------------------------------- */

/* vecidx's index over d as vecidx-bench builds it (vxb_params: capacity
** for the base, --build-threads threads): vecidx_create, for IVF-PQ
** vecidx_train on the first --train-size rows, and one vecidx_add_batch
** of the base; *build_s (training included) and *rss_mb as
** build_hnswlib. */
vecidx *build_vecidx(const bn_opts &o, const bn_data &d, double *build_s,
                     double *rss_mb)
{
    vecidx_params p;
    vecidx *ix = nullptr;
    size_t ntrain;
    vxb_params(&o, &d, &p, &ntrain);
    uint64_t *keys = vxb_keys(&d);
    double rss0 = bn_rss_mb(), t0 = bn_now();
    int rc = vecidx_create(&p, &ix);
    if (rc != VECIDX_OK) vxb_fail("vecidx_create", rc, nullptr);
    if (p.kind == VECIDX_IVFPQ &&
        (rc = vecidx_train(ix, ntrain, d.base)) != VECIDX_OK)
        vxb_fail("vecidx_train", rc, ix);
    rc = vecidx_add_batch(ix, d.n, keys, d.base);
    if (rc != VECIDX_OK) vxb_fail("vecidx_add_batch", rc, ix);
    *build_s = bn_now() - t0;
    double rss1 = bn_rss_mb();
    *rss_mb = rss0 >= 0 && rss1 >= 0 ? rss1 - rss0 : -1;
    free(keys);
    return ix;
}

/* ---- faiss -------------------------------------------------------------- */

/* FAISS runs its parallel loops on OpenMP, but its matrix products (flat
** batches of 20+ queries, k-means) on the BLAS, which for OpenBLAS has a
** thread pool of its own: size both. Without OpenBLAS (the reference BLAS)
** this finds nothing and BLAS calls run on one thread. */
void set_threads(unsigned n)
{
    using setter = void (*)(int);
    static setter openblas = reinterpret_cast<setter>(
        dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    omp_set_num_threads((int)n);
    if (openblas) openblas((int)n);
}

const char *blas_name()
{
    return dlsym(RTLD_DEFAULT, "openblas_set_num_threads") ? "openblas"
                                                           : "blas";
}

struct FaissCtx {
    faiss::Index *index;
    const bn_data *d;
    size_t k;
    std::vector<float> dist; /* nq x k, for batch */
    /* filtered searches: nprobe and the IDSelector; nullptr: the index's */
    const faiss::SearchParameters *params = nullptr;
};

void faiss_query(void *arg, size_t qi, int64_t *out)
{
    auto *c = static_cast<FaissCtx *>(arg);
    float dist[1024];
    std::vector<float> big;
    float *dp = dist;
    if (c->k > 1024) {
        big.resize(c->k);
        dp = big.data();
    }
    /* Per call, because worker threads start with the default team size. */
    omp_set_num_threads(1); /* 1 query: no BLAS call */
    static_assert(sizeof(faiss::Index::idx_t) == sizeof(int64_t), "idx_t");
    c->index->search(1, c->d->query + qi * c->d->dim, (faiss::Index::idx_t)c->k,
                     dp, reinterpret_cast<faiss::Index::idx_t *>(out),
                     c->params);
}

void faiss_batch(void *arg, int64_t *res)
{
    auto *c = static_cast<FaissCtx *>(arg);
    c->index->search((faiss::Index::idx_t)c->d->nq, c->d->query,
                     (faiss::Index::idx_t)c->k, c->dist.data(),
                     reinterpret_cast<faiss::Index::idx_t *>(res), c->params);
}

std::string faiss_simd()
{
    std::string s = faiss::get_compile_options(), out;
    /* "OPTIMIZE GENERIC " or "OPTIMIZE AVX2 ": keep the last word */
    size_t end = s.find_last_not_of(' ');
    if (end == std::string::npos) return "unknown";
    size_t start = s.find_last_of(' ', end);
    out = s.substr(start == std::string::npos ? 0 : start + 1,
                   end - (start == std::string::npos ? 0 : start + 1) + 1);
    for (auto &ch : out) ch = (char)tolower((unsigned char)ch);
    return out;
}

/* ---- faiss, filtered: --filter-selectivity ----
** IndexIVFPQ searched with SearchParametersIVF (nprobe and an IDSelector)
** over the admitted sets vecidx-bench draws, beside the same baselines:
** per selectivity and nprobe, passes in turns of each form, the scan of
** the admitted rows and the index unfiltered. */

/* The counterpart of vecidx's filter callback: FAISS asks a virtual
** is_member about each id of the probed lists. */
struct CallbackSelector : faiss::IDSelector {
    const bn_filter *f;
    explicit CallbackSelector(const bn_filter *filter) : f(filter)
    {
    }
    bool is_member(idx_t id) const override
    {
        return id >= 0 && bn_filter_admits(f, (uint64_t)id);
    }
};

void faiss_filtered(const bn_opts &o, const bn_data &d,
                    faiss::IndexIVFPQ *ivfpq, const uint32_t *order,
                    FaissCtx &unfiltered, size_t nvals,
                    const std::function<void(bn_result &, size_t)> &line)
{
    /* FAISS has no selectivity hint: callback-sel would time callback
    ** again under another name. */
    std::vector<int> forms;
    for (size_t i = 0; i < o.nforms; i++) {
        if (o.forms[i] == BN_FORM_CALLBACK_SEL)
            bn_note("faiss: no selectivity hint in FAISS, callback-sel "
                    "skipped (see callback)");
        else
            forms.push_back(o.forms[i]);
    }
    if (forms.empty()) bn_die("faiss: no --filter-form to measure");
    if (o.filter_flat)
        bn_note("faiss: --filter-baseline-flat is a vecidx baseline: "
                "flat_cb_qps is null");
    std::unique_ptr<float, decltype(&free)> norms(bn_scan_norms(&o, &d), &free);
    bn_scan scan;
    memset(&scan, 0, sizeof scan);
    scan.d = &d;
    scan.inv_norm = norms.get();
    scan.metric = o.metric;
    scan.k = o.k;
    size_t nr = forms.size() + 2, rsz = d.nq * o.k;
    std::vector<std::vector<int64_t>> res(nr, std::vector<int64_t>(rsz));
    for (size_t si = 0; si < o.nsel; si++) {
        bn_filter f;
        double t0 = bn_now();
        if (!bn_filter_make(&o, &d, order, o.sel[si], &f)) continue;
        bn_filter_truth(&o, &d, &scan, &f);
        bn_note("selectivity %g: %zu rows admitted; exact neighbours in "
                "%.2f s; timed scan passes of %zu queries",
                f.selectivity, f.m, bn_now() - t0, f.scan_nq);
        /* Built as a FAISS user would from the same set, outside the
        ** timing: a hash set of ids, and a bitmap of bytes (bit i % 8 of
        ** byte i / 8). */
        faiss::IDSelectorBatch batch(
            f.m, reinterpret_cast<const faiss::Index::idx_t *>(f.keys));
        std::vector<uint8_t> bytes((f.n + 7) / 8);
        for (size_t i = 0; i < f.m; i++)
            bytes[f.keys[i] >> 3] |= (uint8_t)(1u << (f.keys[i] & 7));
        faiss::IDSelectorBitmap bitmap(bytes.size(), bytes.data());
        CallbackSelector callback(&f);
        std::vector<faiss::SearchParametersIVF> sp(forms.size());
        std::vector<FaissCtx> ctx(forms.size(), unfiltered);
        for (size_t vi = 0; vi < nvals; vi++) {
            bn_result r;
            line(r, vi); /* sets ivfpq->nprobe for the unfiltered runs */
            std::vector<bn_runner> run(nr); /* zeroed */
            const char *sel_name[BN_NFORMS] = {};
            for (size_t i = 0; i < forms.size(); i++) {
                faiss::IDSelector *s = &callback;
                sel_name[i] = "IDSelector subclass";
                if (forms[i] == BN_FORM_KEYS) {
                    s = &batch;
                    sel_name[i] = "IDSelectorBatch";
                } else if (forms[i] == BN_FORM_BITMAP) {
                    s = &bitmap;
                    sel_name[i] = "IDSelectorBitmap";
                }
                sp[i].nprobe = ivfpq->nprobe;
                sp[i].sel = s;
                ctx[i].params = &sp[i];
                run[i].fn = faiss_query;
                run[i].batch_fn = faiss_batch;
                run[i].ctx = &ctx[i];
                run[i].nq = d.nq;
            }
            size_t sc = forms.size(), un = sc + 1;
            run[sc].fn = bn_scan_query;
            run[sc].ctx = &scan;
            run[sc].nq = f.scan_nq;
            run[un].fn = faiss_query;
            run[un].batch_fn = faiss_batch;
            run[un].ctx = &unfiltered;
            run[un].nq = d.nq;
            for (size_t i = 0; i < nr; i++) run[i].res = res[i].data();
            /* as in run_faiss: one OpenMP thread per single query */
            set_threads(o.batch ? o.threads : 1);
            bn_run_interleaved(&o, run.data(), nr, d.nq);
            for (size_t i = 0; i < forms.size(); i++) {
                bn_result rf = r;
                bn_filter_line fl;
                std::string what = strprintf("faiss %s %s s=%g", r.param,
                                             bn_form_names[forms[i]],
                                             f.selectivity);
                bn_filter_line_init(&fl, &f, bn_form_names[forms[i]]);
                fl.selector = sel_name[i];
                fl.qps = rf.qps = bn_runner_qps(&run[i]);
                fl.recall = rf.recall = bn_filter_recall(
                    &f, d.nq, o.k, res[i].data(), &fl.outside, what.c_str());
                fl.scan_qps = bn_runner_qps(&run[sc]);
                fl.unfiltered_qps = bn_runner_qps(&run[un]);
                fl.unfiltered_recall = bn_recall(&d, res[un].data(), o.k,
                                                 r.param);
                rf.extra = bn_filter_extra(&o, &fl);
                bn_print(&o, &d, &rf);
            }
        }
        bn_filter_free(&f);
    }
}

/* FAISS's index of --index over d, built (and its build timed) as a FAISS
** user builds it, on --build-threads OpenMP and BLAS threads; with sq,
** IndexHNSWSQ (8-bit scalar quantizer) instead of IndexHNSWFlat, for
** --index hnsw only. Used by run_faiss and by --lib paired-sq. */
struct FaissIndex {
    /* index before quantizer in destruction: members go in reverse order */
    std::unique_ptr<faiss::Index> quantizer;
    std::unique_ptr<faiss::Index> index;
    faiss::IndexIVFPQ *ivfpq = nullptr; /* inside index, for nprobe */
    bool sq = false;
    std::string simd, version, build;
    const bn_list *sweep = nullptr; /* ef or nprobe; nullptr for flat */
    double build_s = -1, train_s = -1;
    double rss0 = -1, rss1 = -1, rss_trained = -1;

    size_t nvals() const
    {
        return sweep ? sweep->n : 1;
    }
    /* The line of sweep value i, all but the measurements; sets efSearch
    ** or nprobe for it. */
    void line(const bn_opts &o, const bn_data &d, bn_result &r, size_t i)
    {
        bn_result_init(&r, &o, "faiss");
        r.simd = simd.c_str();
        r.lib_version = version.c_str();
        std::string param = "exact";
        if (!strcmp(o.index, "hnsw")) {
            static_cast<faiss::IndexHNSW *>(index.get())->hnsw.efSearch =
                (int)sweep->v[i];
            param = strprintf("ef=%u", (unsigned)sweep->v[i]);
        } else if (ivfpq) {
            ivfpq->nprobe = sweep->v[i];
            param = strprintf("nprobe=%u", (unsigned)sweep->v[i]);
        }
        set_strings(r, param, build);
        if (sq) r.storage = "sq8";
        r.build_s = build_s;
        r.train_s = train_s;
        r.rss_mb = r.mem_mb = rss0 >= 0 && rss1 >= 0 ? rss1 - rss0 : -1;
        if (rss_trained >= 0 && rss1 >= 0 && d.n)
            r.bytes_per_vec = (rss1 - rss_trained) * 1024.0 * 1024.0 /
                              (double)d.n;
    }
};

std::unique_ptr<FaissIndex> build_faiss(const bn_opts &o, const bn_data &d,
                                        bool sq)
{
    std::unique_ptr<FaissIndex> f(new FaissIndex);
    f->sq = sq;
    faiss::MetricType mt = o.metric == BN_L2 ? faiss::METRIC_L2
                                             : faiss::METRIC_INNER_PRODUCT;
    f->simd = faiss_simd();
    f->version = strprintf("%d.%d.%d+%s", FAISS_VERSION_MAJOR,
                           FAISS_VERSION_MINOR, FAISS_VERSION_PATCH,
                           blas_name());
    std::unique_ptr<faiss::Index> &index = f->index;

    f->rss0 = bn_rss_mb();
    set_threads(o.build_threads);
    double t0 = bn_now();
    if (!strcmp(o.index, "flat")) {
        if (mt == faiss::METRIC_L2)
            index.reset(new faiss::IndexFlatL2(d.dim));
        else
            index.reset(new faiss::IndexFlatIP(d.dim));
    } else if (sq) {
        /* The quantizer learns each dimension's range from the training
        ** rows, as IVF-PQ learns its codebooks: timed as train_s, and in
        ** build_s. */
        size_t ntrain = bn_train_rows(&o, d.n);
        auto *h = new faiss::IndexHNSWSQ(
            (int)d.dim, faiss::ScalarQuantizer::QT_8bit, (int)o.M, mt);
        h->hnsw.efConstruction = (int)o.ef_construction;
        index.reset(h);
        index->train((faiss::Index::idx_t)ntrain, d.base);
        f->train_s = bn_now() - t0;
        f->rss_trained = bn_rss_mb();
        t0 = bn_now() - f->train_s; /* build_s leaves out the RSS reading */
        f->build = strprintf("M=%u,efc=%u,sq=8bit,train=%zu", (unsigned)o.M,
                             (unsigned)o.ef_construction, ntrain);
        f->sweep = &o.ef;
    } else if (!strcmp(o.index, "hnsw")) {
        auto *h = new faiss::IndexHNSWFlat((int)d.dim, (int)o.M, mt);
        h->hnsw.efConstruction = (int)o.ef_construction;
        index.reset(h);
        f->build = strprintf("M=%u,efc=%u", (unsigned)o.M,
                             (unsigned)o.ef_construction);
        f->sweep = &o.ef;
    } else {
        size_t ntrain = bn_train_rows(&o, d.n);
        uint32_t nlist = bn_nlist(&o, ntrain), m = bn_pq_m(&o, d.dim);
        if (d.dim % m)
            bn_die("--pq-m %u does not divide dimension %u, as FAISS needs",
                   (unsigned)m, d.dim);
        if (mt == faiss::METRIC_L2)
            f->quantizer.reset(new faiss::IndexFlatL2(d.dim));
        else
            f->quantizer.reset(new faiss::IndexFlatIP(d.dim));
        f->ivfpq = new faiss::IndexIVFPQ(f->quantizer.get(), d.dim, nlist, m,
                                         o.pq_nbits, mt);
        if (o.refine > 1) {
            auto *rf = new faiss::IndexRefineFlat(f->ivfpq);
            rf->own_fields = true; /* deletes ivfpq */
            rf->k_factor = (float)o.refine;
            index.reset(rf);
        } else {
            index.reset(f->ivfpq);
        }
        /* Training runs on --build-threads OpenMP and BLAS threads, as
        ** vecidx_train runs on params.threads. */
        index->train((faiss::Index::idx_t)ntrain, d.base);
        f->train_s = bn_now() - t0;
        f->rss_trained = bn_rss_mb();
        t0 = bn_now() - f->train_s; /* build_s leaves out the RSS reading */
        f->build = strprintf("nlist=%u,m=%u,nbits=%u,train=%zu,refine=%u",
                             (unsigned)nlist, (unsigned)m, (unsigned)o.pq_nbits,
                             ntrain, o.refine > 1 ? (unsigned)o.refine : 1u);
        f->sweep = &o.nprobe;
    }
    index->add((faiss::Index::idx_t)d.n, d.base);
    f->build_s = bn_now() - t0;
    f->rss1 = bn_rss_mb();
    return f;
}

/* FAISS's index of --index over d (build_faiss); with sq, IndexHNSWSQ.
** With --filter-selectivity, IndexIVFPQ only: the filtered sweep over the
** admitted sets of `order` (bn_filter_order). */
void run_faiss(const bn_opts &o, const bn_data &d, bool sq,
               const uint32_t *order)
{
    if (sq && strcmp(o.index, "hnsw") != 0) {
        bn_note("faiss-hnswsq is an hnsw index, not '%s': skipped", o.index);
        return;
    }
    std::unique_ptr<FaissIndex> f = build_faiss(o, d, sq);
    FaissCtx c{f->index.get(), &d, o.k, {}};
    if (o.batch) c.dist.resize(d.nq * o.k);
    std::vector<int64_t> res(d.nq * o.k);
    FaissIndex *fp = f.get();
    auto line = [&o, &d, fp](bn_result &r, size_t i) { fp->line(o, d, r, i); };
    if (o.nsel) {
        faiss_filtered(o, d, f->ivfpq, order, c, f->nvals(), line);
        return;
    }
    for (size_t i = 0; i < f->nvals(); i++) {
        bn_result r;
        f->line(o, d, r, i);
        /* single: one OpenMP thread per query, set in faiss_query; batch:
        ** one search call on --threads OpenMP threads. */
        set_threads(o.batch ? o.threads : 1);
        r.qps = bn_measure(&o, &d, faiss_query, faiss_batch, &c, res.data());
        r.recall = bn_recall(&d, res.data(), o.k, r.param);
        bn_print(&o, &d, &r);
    }
}

/* ---- paired: hnswlib and vecidx (and FAISS) in one process -------------- */

/* Two separate runs on a shared machine differ by several percent as
** neighbours come and go, which swamps a ratio between libraries. Here
** the graphs are built in one process and every timed pass of one
** library is followed by one of the other, so a slow spell hits both; each
** keeps its best pass. Builds run one after the other, hnswlib first.
** With sq (--lib paired-sq), FAISS's IndexHNSWSQ (8-bit, build_faiss) is
** built third and takes its turn after vecidx in every pass, searched
** one query per call on one OpenMP thread as run_faiss searches it. Every
** line gets other_cpu and steal_cpu over the passes of its ef (all
** libraries' turns): cores used by other processes meanwhile. */
/* With open_file (--open-file PATH) vecidx's index is saved there and
** searched through a read-only open of the file, its pages dropped from
** the page cache first (vxb_reopen_cold); its lines' rss_mb is then the
** growth of the resident set since the open, over the sweep so far. */
void run_paired(const bn_opts &o, const bn_data &d, bool sq,
                const char *open_file, bool lean)
{
    if (strcmp(o.index, "hnsw") != 0 || o.batch)
        bn_die("--lib %s: --index hnsw and single queries only",
               sq ? "paired-sq" : "paired");
    std::unique_ptr<hnswlib::SpaceInterface<float>> space(hnswlib_space(o, d));
    double hb, hrss;
    auto *alg = build_hnswlib(o, d, space.get(), &hb, &hrss);

    double vb, vrss, rss_open = -1, open_ms = 0;
    vecidx *ix = build_vecidx(o, d, &vb, &vrss);
    if (open_file)
        ix = vxb_reopen_cold(ix, open_file, lean, &rss_open, &open_ms);
    vecidx_stats_t st;
    int rc;
    if ((rc = vecidx_stats(ix, &st)) != VECIDX_OK)
        vxb_fail("vecidx_stats", rc, ix);

    std::unique_ptr<FaissIndex> fx;
    if (sq) fx = build_faiss(o, d, true);

    HnswlibCtx hc{alg, &d, o.k};
    vxb_ctx vc;
    vxb_ctx_init(&vc, &o, &d, ix);
    FaissCtx fc{fx ? fx->index.get() : nullptr, &d, o.k, {}};
    std::vector<int64_t> hres(d.nq * o.k), vres(d.nq * o.k), fres(d.nq * o.k);
    /* One untimed pass each first: right after the builds the first sweep
    ** point ran no faster than the second for both libraries (960-d,
    ** 12-04), whatever the machine was still doing after them. */
    if (o.ef.n > 0) {
        alg->setEf((size_t)o.ef.v[0]);
        vc.so.ef = (unsigned)o.ef.v[0];
        bn_pass_single(d.nq, o.k, o.threads, hnswlib_query, &hc, hres.data());
        bn_pass_single(d.nq, o.k, o.threads, vxb_search_one, &vc, vres.data());
    }
    for (size_t i = 0; i < o.ef.n; i++) {
        unsigned ef = (unsigned)o.ef.v[i];
        double hbest = HUGE_VAL, vbest = HUGE_VAL, fbest = HUGE_VAL;
        bn_result fr;
        alg->setEf(ef);
        vc.so.ef = ef;
        if (fx) {
            fx->line(o, d, fr, i); /* sets efSearch */
            set_threads(1);        /* as run_faiss for single queries */
        }
        lt_cpu c0 = lt_cpu_now();
        for (unsigned pass = 0; pass < o.passes; pass++) {
            double t = bn_pass_single(d.nq, o.k, o.threads, hnswlib_query, &hc,
                                      hres.data());
            hbest = t < hbest ? t : hbest;
            t = bn_pass_single(d.nq, o.k, o.threads, vxb_search_one, &vc,
                               vres.data());
            vbest = t < vbest ? t : vbest;
            if (!fx) continue;
            t = bn_pass_single(d.nq, o.k, o.threads, faiss_query, &fc,
                               fres.data());
            fbest = t < fbest ? t : fbest;
        }
        lt_cpu c1 = lt_cpu_now();
        double other, steal;
        lt_cpu_other(&c0, &c1, &other, &steal);
        std::string extra = ",\"other_cpu\":";
        extra += other >= 0 ? strprintf("%.2f", other) : "null";
        extra += ",\"steal_cpu\":";
        extra += steal >= 0 ? strprintf("%.2f", steal) : "null";
        std::string vextra = extra;
        if (open_file) {
            double now = bn_rss_mb();
            vrss = rss_open >= 0 && now >= 0 ? now - rss_open : -1;
            vextra += strprintf(",\"source\":\"file\",\"open_ms\":%.2f,"
                                "\"queries_so_far\":%zu",
                                open_ms, d.nq * (1 + (i + 1) * o.passes));
        }

        bn_result r;
        hnswlib_result(r, o, ef, hb, hrss);
        r.qps = hbest > 0 ? (double)d.nq / hbest : 0.0;
        r.recall = bn_recall(&d, hres.data(), o.k, r.param);
        r.extra = extra.c_str();
        bn_print(&o, &d, &r);
        bn_result_init(&r, &o, "vecidx");
        r.simd = st.simd;
        r.lib_version = vecidx_version();
        set_strings(r, strprintf("ef=%u", ef),
                    strprintf("M=%u,efc=%u", (unsigned)o.M,
                              (unsigned)o.ef_construction));
        r.build_s = vb;
        r.mem_mb = (double)st.memory_bytes / (1024.0 * 1024.0);
        r.rss_mb = vrss;
        vxb_result_storage(&r, &o, &st);
        r.qps = vbest > 0 ? (double)d.nq / vbest : 0.0;
        r.recall = bn_recall(&d, vres.data(), o.k, r.param);
        r.extra = vextra.c_str();
        bn_print(&o, &d, &r);
        if (!fx) continue;
        fr.qps = fbest > 0 ? (double)d.nq / fbest : 0.0;
        fr.recall = bn_recall(&d, fres.data(), o.k, fr.param);
        fr.extra = extra.c_str();
        bn_print(&o, &d, &fr);
    }
    vxb_ctx_free(&vc);
    vecidx_close(ix);
    delete alg;
}

/* ---- Stall scenarios: --lib paired --scenario NAME ------------------------
** Searches timed one call at a time while the index is written, removed
** from or checkpointed (see bench/README.md, "Stall scenarios"). Every
** pass measures hnswlib, then vecidx, the same way: one JSON line per
** library and pass, then one summary line of medians over the passes and
** their ratio vecidx/hnswlib. */

struct Scenario {
    std::string name;     /* writer | remove | checkpoint | scaling */
    double duration = -1; /* --duration, s */
    double idle = -1;     /* --idle-duration, s */
    double rate = -1;     /* --writer-rate, writes/s */
    std::string dir;      /* --file DIR: vecidx file-backed */
    unsigned sync = VECIDX_SYNC_NORMAL;
    const char *sync_name = "normal";
    size_t ckpt_writes = 1000;      /* --ckpt-writes */
    double auto_mb = 0;             /* --auto-ckpt: log MiB that starts one */
    double remove_fraction = 0.125; /* --remove-fraction */
    size_t recall_queries = 200;    /* --recall-queries */
    bool hnswlib_lock = false;      /* --hnswlib-lock */
    std::string open_file; /* --open-file PATH (--lib paired, no scenario) */
    bool lean = false;     /* --lean: that file opened VECIDX_LEAN */
    double filter = 0;     /* --scenario-filter: share admitted */
    std::string filter_form = "bitmap"; /* --scenario-filter-form */
    unsigned ef = 0, k = 0;
    unsigned nprobe = 0; /* --index ivfpq: lists probed, else 0 */
};

/* The checkpoint scenario's reader and writer run this long before the
** checkpoint starts and after it ends. */
const double CKPT_MARGIN_S = 2.0;
/* Choices of the writers (keys removed, rows re-added, keys upserted)
** come from this seed plus the pass number: the same in both libraries'
** turns and in every run. */
const uint64_t SCENARIO_SEED = 20261202;

/* --scenario-filter SEL: the searches of the scenarios admit key x iff
** mix(x) % 1000 < SEL * 1000 (mix: splitmix64's finaliser), a rule over
** all keys, so keys a writer inserts later are covered as well; random
** with respect to the vectors. hnswlib 0.6.2's searchKnn takes no filter
** (filter functors came with 0.7.0), so filtered scenarios run vecidx
** alone: against its own idle phase (writer, remove) or the searches
** outside the checkpoint. vecidx gets the rule in one of two forms:
**  - bitmap: opts.allow_bitmap / allow_bits over keys 0 .. the largest key
**    the scenario uses, with the bits of the admitted keys among those it
**    uses (the n base keys and every key its writer will insert) set. vecidx
**    counts the set bits as the admitted set, so with a writer the count
**    also holds keys removed or not yet inserted (filter_bits_set against
**    live_admitted in the output);
**  - callback: opts.filter testing the rule, with opts.filter_selectivity
**    = SEL; no bound on the keys. */
class KeyFilter
{
  public:
    explicit KeyFilter(const Scenario &s)
        : thresh_((unsigned)lround(s.filter * 1000)),
          callback_(s.filter_form == "callback")
    {
    }
    bool on() const
    {
        return thresh_ > 0;
    }
    static uint64_t mix(uint64_t x)
    {
        x += 0x9e3779b97f4a7c15ull;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        return x ^ (x >> 31);
    }
    bool admits(uint64_t key) const
    {
        return !on() || mix(key) % 1000 < thresh_;
    }
    /* A key the scenario uses: its bit is set when admitted. */
    void cover(uint64_t key)
    {
        if (!on() || callback_ || !admits(key)) return;
        if (key >= nbits_) {
            nbits_ = key + 1;
            bits_.resize((size_t)((nbits_ + 63) / 64), 0);
        }
        uint64_t &w = bits_[(size_t)(key / 64)];
        nset_ += !(w >> (key % 64) & 1);
        w |= (uint64_t)1 << (key % 64);
    }
    /* Sets the filter of vecidx's search options. */
    void apply(vecidx_search_opts *so) const
    {
        if (!on()) return;
        if (callback_) {
            so->filter = callback;
            so->filter_ctx = const_cast<KeyFilter *>(this);
            so->filter_selectivity = (float)thresh_ / 1000.0f;
        } else {
            static const uint64_t none = 0;
            so->allow_bitmap = bits_.empty() ? &none : bits_.data();
            so->allow_bits = nbits_;
        }
    }
    double share() const
    {
        return thresh_ / 1000.0;
    }
    const char *form() const
    {
        return callback_ ? "callback" : "bitmap";
    }
    uint64_t nbits() const
    {
        return nbits_;
    }
    size_t nset() const
    {
        return nset_;
    }

  private:
    static int callback(uint64_t key, void *ctx)
    {
        return static_cast<const KeyFilter *>(ctx)->admits(key);
    }
    unsigned thresh_;
    bool callback_;
    std::vector<uint64_t> bits_;
    uint64_t nbits_ = 0;
    size_t nset_ = 0;
};

/* One output line: keys in the order added. */
class Row
{
  public:
    void str(const std::string &key, const char *v)
    {
        items_.push_back({key, true, v ? v : "", v == nullptr, 0, nullptr});
    }
    void num(const std::string &key, double v, const char *fmt = "%.3f")
    {
        items_.push_back({key, false, "", false, v, fmt});
    }
    void flag(const std::string &key, bool v)
    {
        items_.push_back({key, false, "", false, v ? 1.0 : 0.0, nullptr});
    }
    /* PREFIX_p50_us ... PREFIX_max_us, PREFIX_mean_us, then COUNT_KEY. */
    void stats(const std::string &prefix, const std::string &count_key,
               const lt_stats &st)
    {
        num(prefix + "_p50_us", st.p50, "%.1f");
        num(prefix + "_p90_us", st.p90, "%.1f");
        num(prefix + "_p99_us", st.p99, "%.1f");
        num(prefix + "_p999_us", st.p999, "%.1f");
        num(prefix + "_max_us", st.max, "%.1f");
        num(prefix + "_mean_us", st.mean, "%.1f");
        num(count_key, (double)st.count, "%.0f");
    }
    /* The string under key; "" if absent. */
    std::string text(const std::string &key) const
    {
        for (const Item &i : items_)
            if (i.is_str && i.key == key) return i.s;
        return "";
    }
    /* The number under key; -1 if absent or null. */
    double get(const std::string &key) const
    {
        for (const Item &i : items_)
            if (!i.is_str && i.key == key) return i.v;
        return -1;
    }
    void print() const
    {
        bn_kv j;
        bn_kv_begin(&j, stdout);
        for (const Item &i : items_) {
            if (i.is_str)
                bn_kv_str(&j, i.key.c_str(), i.null ? nullptr : i.s.c_str());
            else if (!i.fmt)
                bn_kv_bool(&j, i.key.c_str(), i.v != 0);
            else
                bn_kv_num(&j, i.key.c_str(), i.fmt, i.v);
        }
        bn_kv_end(&j);
    }

  private:
    struct Item {
        std::string key;
        bool is_str;
        std::string s;
        bool null;
        double v;
        const char *fmt; /* nullptr: a flag, v 0 or 1 */
    };
    std::vector<Item> items_;
};

/* "recall_at_10" for k = 10 */
std::string recall_key(const Scenario &s)
{
    return "recall_at_" + std::to_string(s.k);
}

double median(std::vector<double> v)
{
    v.erase(
        std::remove_if(v.begin(), v.end(), [](double x) { return !(x >= 0); }),
        v.end());
    if (v.empty()) return -1;
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- the two libraries behind one interface ---- */

/* An index as the scenarios drive it. Each call times itself: *t0 and *t1
** are read with CLOCK_MONOTONIC right before and right after the one
** library call (vecidx_search, searchKnn, ...), so result copying and the
** dispatch here stay outside. Failures end the program. */
class Index
{
  public:
    virtual ~Index() = default;
    virtual const char *lib() const = 0;
    /* k keys into out, closest first; UINT64_MAX where fewer were found */
    virtual void search(const float *q, uint64_t *out, uint64_t *t0,
                        uint64_t *t1) = 0;
    virtual void insert(uint64_t key, const float *v, uint64_t *t0,
                        uint64_t *t1) = 0;
    virtual void remove(uint64_t key, uint64_t *t0, uint64_t *t1) = 0;
    virtual void upsert(uint64_t key, const float *v, uint64_t *t0,
                        uint64_t *t1) = 0;
    /* vecidx_checkpoint, or hnswlib's saveIndex to a file in dir */
    virtual void checkpoint(uint64_t *t0, uint64_t *t1) = 0;
    /* counters after a phase: live vectors, slots or elements, memory */
    virtual void state(Row &r) = 0;
};

class HnswlibIndex : public Index
{
  public:
    HnswlibIndex(const bn_opts &o, const bn_data &d, const Scenario &s,
                 size_t max_elements, Row &r)
        : k_(s.k), lock_(s.hnswlib_lock), dir_(s.dir)
    {
        double build_s, rss;
        space_.reset(hnswlib_space(o, d));
        alg_.reset(
            build_hnswlib(o, d, space_.get(), &build_s, &rss, max_elements));
        alg_->setEf(s.ef);
        r.num("build_s", build_s);
    }
    const char *lib() const override
    {
        return "hnswlib";
    }
    void search(const float *q, uint64_t *out, uint64_t *t0,
                uint64_t *t1) override
    {
        std::priority_queue<std::pair<float, hnswlib::labeltype>> top;
        *t0 = lt_now_ns();
        try {
            if (lock_) {
                std::shared_lock<std::shared_mutex> g(mu_);
                top = alg_->searchKnn(q, k_);
            } else {
                top = alg_->searchKnn(q, k_);
            }
        } catch (const std::exception &) {
            /* 0.6.2 checks neighbour ids on the upper levels and throws
            ** ("cand error") if a concurrent insert shows it a torn list */
            errors_++;
        }
        *t1 = lt_now_ns();
        size_t n = top.size();
        for (size_t i = n; i < k_; i++) out[i] = UINT64_MAX;
        for (; !top.empty(); top.pop()) out[--n] = top.top().second;
    }
    void insert(uint64_t key, const float *v, uint64_t *t0,
                uint64_t *t1) override
    {
        *t0 = lt_now_ns();
        try {
            if (lock_) {
                std::unique_lock<std::shared_mutex> g(mu_);
                alg_->addPoint(v, key);
            } else {
                alg_->addPoint(v, key);
            }
        } catch (const std::exception &e) {
            bn_die("hnswlib addPoint: %s", e.what());
        }
        *t1 = lt_now_ns();
    }
    void remove(uint64_t key, uint64_t *t0, uint64_t *t1) override
    {
        *t0 = lt_now_ns();
        try {
            if (lock_) {
                std::unique_lock<std::shared_mutex> g(mu_);
                alg_->markDelete(key);
            } else {
                alg_->markDelete(key);
            }
        } catch (const std::exception &e) {
            bn_die("hnswlib markDelete: %s", e.what());
        }
        *t1 = lt_now_ns();
    }
    void upsert(uint64_t, const float *, uint64_t *, uint64_t *) override
    {
        bn_die("hnswlib: no upsert in the scenarios");
    }
    void checkpoint(uint64_t *t0, uint64_t *t1) override
    {
        std::string path = dir_ + "/hnswlib-checkpoint.bin";
        *t0 = lt_now_ns();
        try {
            alg_->saveIndex(path);
        } catch (const std::exception &e) {
            bn_die("hnswlib saveIndex %s: %s", path.c_str(), e.what());
        }
        *t1 = lt_now_ns();
        unlink(path.c_str());
    }
    void state(Row &r) override
    {
        r.num("live", (double)(alg_->cur_element_count - alg_->num_deleted_),
              "%.0f");
        r.num("elements", (double)alg_->cur_element_count, "%.0f");
        r.num("search_errors", (double)errors_.load(), "%.0f");
    }

  private:
    size_t k_;
    bool lock_;
    std::string dir_;
    std::unique_ptr<hnswlib::SpaceInterface<float>> space_;
    std::unique_ptr<hnswlib::HierarchicalNSW<float>> alg_;
    std::shared_mutex mu_; /* --hnswlib-lock */
    std::atomic<size_t> errors_{0};
};

class VecidxIndex : public Index
{
  public:
    /* In memory, or with file: built in memory, saved to DIR, closed and
    ** opened from the file as its writer (VECIDX_CREATE | the sync
    ** mode), so it starts with an empty log. */
    VecidxIndex(const bn_opts &o, const bn_data &d, const Scenario &s,
                bool file, const KeyFilter &f, Row &r)
        : k_(s.k)
    {
        double build_s, rss;
        ix_ = build_vecidx(o, d, &build_s, &rss);
        r.num("build_s", build_s);
        vxb_search_opts(&o, &so_);
        so_.ef = s.ef;
        so_.nprobe = s.nprobe;
        f.apply(&so_); /* --scenario-filter; f outlives the index */
        if (!file) return;
        path_ = s.dir + "/vecidx-" + s.name + ".vx";
        unlink_files();
        double t0 = bn_now();
        int rc = vecidx_save(ix_, path_.c_str());
        if (rc != VECIDX_OK) vxb_fail("vecidx_save", rc, ix_);
        double t1 = bn_now();
        vecidx_close(ix_);
        ix_ = nullptr;
        vecidx_params p;
        size_t ntrain;
        vxb_params(&o, &d, &p, &ntrain);
        rc = vecidx_open(path_.c_str(), &p, VECIDX_CREATE | s.sync, &ix_);
        if (rc != VECIDX_OK) vxb_fail("vecidx_open", rc, nullptr);
        r.num("save_s", t1 - t0);
        r.num("open_s", bn_now() - t1);
    }
    ~VecidxIndex() override
    {
        vecidx_close(ix_);
        if (!path_.empty()) unlink_files();
    }
    const char *lib() const override
    {
        return "vecidx";
    }
    void search(const float *q, uint64_t *out, uint64_t *t0,
                uint64_t *t1) override
    {
        size_t found = 0;
        *t0 = lt_now_ns();
        int rc = vecidx_search(ix_, q, k_, &so_, out, nullptr, &found);
        *t1 = lt_now_ns();
        if (rc != VECIDX_OK) vxb_fail("vecidx_search", rc, ix_);
    }
    void insert(uint64_t key, const float *v, uint64_t *t0,
                uint64_t *t1) override
    {
        *t0 = lt_now_ns();
        int rc = vecidx_add(ix_, key, v);
        *t1 = lt_now_ns();
        if (rc != VECIDX_OK) vxb_fail("vecidx_add", rc, ix_);
    }
    void remove(uint64_t key, uint64_t *t0, uint64_t *t1) override
    {
        *t0 = lt_now_ns();
        int rc = vecidx_remove(ix_, key);
        *t1 = lt_now_ns();
        if (rc != VECIDX_OK) vxb_fail("vecidx_remove", rc, ix_);
    }
    void upsert(uint64_t key, const float *v, uint64_t *t0,
                uint64_t *t1) override
    {
        *t0 = lt_now_ns();
        int rc = vecidx_upsert(ix_, key, v);
        *t1 = lt_now_ns();
        if (rc != VECIDX_OK) vxb_fail("vecidx_upsert", rc, ix_);
    }
    /* The file and the log it writes, or "" in memory. */
    const std::string &path() const
    {
        return path_;
    }
    void checkpoint(uint64_t *t0, uint64_t *t1) override
    {
        *t0 = lt_now_ns();
        int rc = vecidx_checkpoint(ix_);
        *t1 = lt_now_ns();
        if (rc != VECIDX_OK) vxb_fail("vecidx_checkpoint", rc, ix_);
    }
    void state(Row &r) override
    {
        vecidx_stats_t st;
        int rc = vecidx_stats(ix_, &st);
        if (rc != VECIDX_OK) vxb_fail("vecidx_stats", rc, ix_);
        r.num("live", (double)st.count, "%.0f");
        r.num("slots", (double)st.slots, "%.0f");
        r.num("mem_mb", (double)st.memory_bytes / (1024.0 * 1024.0), "%.1f");
        r.num("vector_bytes", (double)st.vector_bytes, "%.0f");
    }

  private:
    void unlink_files()
    {
        unlink(path_.c_str());
        unlink((path_ + "-wal").c_str());
    }
    size_t k_;
    vecidx *ix_ = nullptr;
    vecidx_search_opts so_;
    std::string path_;
};

/* ---- who is live: the writers' choices ---- */

/* Row r of the base set is live under key[r], or dead (removed). A row
** that comes back gets a new key, r + n * (times it came back), so no key
** is ever used twice and hnswlib never sees a label again (which would
** take its updatePoint path). */
struct LiveSet {
    size_t n;
    std::vector<uint64_t> key;
    std::vector<uint32_t> live, dead, pos; /* pos: row's index in live */

    explicit LiveSet(size_t n_) : n(n_), key(n_), live(n_), pos(n_)
    {
        for (size_t r = 0; r < n; r++) key[r] = live[r] = pos[r] = (uint32_t)r;
    }
    uint32_t remove_random(uint64_t *rng)
    {
        uint32_t i = (uint32_t)(lt_rand(rng) % live.size()), r = live[i];
        live[i] = live.back();
        pos[live[i]] = i;
        live.pop_back();
        pos[r] = UINT32_MAX;
        dead.push_back(r);
        return r;
    }
    uint32_t insert_random(uint64_t *rng)
    {
        uint32_t i = (uint32_t)(lt_rand(rng) % dead.size()), r = dead[i];
        dead[i] = dead.back();
        dead.pop_back();
        key[r] += n;
        pos[r] = (uint32_t)live.size();
        live.push_back(r);
        return r;
    }
};

struct Op {
    uint64_t key;
    uint32_t row;
    bool insert;
};

/* `count` writes: with churn, removals of a random live key alternating
** with inserts of a random removed row under a new key (so the live count
** stays n or n - 1); without, removals only. */
std::vector<Op> make_ops(size_t n, size_t count, bool churn, uint64_t seed)
{
    LiveSet ls(n);
    uint64_t rng = seed;
    std::vector<Op> ops;
    ops.reserve(count);
    for (size_t i = 0; i < count; i++) {
        bool ins = churn && i % 2 == 1;
        uint32_t r = ins ? ls.insert_random(&rng) : ls.remove_random(&rng);
        ops.push_back({ls.key[r], r, ins});
    }
    return ops;
}

/* The live set after the first `done` of ops. */
LiveSet replay(size_t n, const std::vector<Op> &ops, size_t done)
{
    LiveSet ls(n);
    for (size_t i = 0; i < done; i++) {
        uint32_t r = ops[i].row;
        if (ops[i].insert) {
            ls.key[r] = ops[i].key;
            ls.pos[r] = (uint32_t)ls.live.size();
            ls.live.push_back(r);
        } else {
            uint32_t p = ls.pos[r];
            ls.live[p] = ls.live.back();
            ls.pos[ls.live[p]] = p;
            ls.live.pop_back();
            ls.pos[r] = UINT32_MAX;
        }
    }
    return ls;
}

/* recall@k of the first --recall-queries queries against the exact k
** nearest live vectors that f admits, found by brute force (hnswlib's
** distance functions, on --build-threads threads). With a filter, its
** keys filter and live_admitted (admitted live vectors) go into r. */
double live_recall(Index &ix, const bn_opts &o, const bn_data &d,
                   const Scenario &s, const LiveSet &ls, const KeyFilter &f,
                   Row &r)
{
    if (f.on()) {
        size_t admitted = 0;
        for (uint32_t row : ls.live) admitted += f.admits(ls.key[row]);
        r.num("live_admitted", (double)admitted, "%.0f");
    }
    size_t nq = std::min(s.recall_queries, d.nq), k = s.k;
    std::unique_ptr<hnswlib::SpaceInterface<float>> space(hnswlib_space(o, d));
    auto dist = space->get_dist_func();
    void *param = space->get_dist_func_param();
    std::vector<uint64_t> exact(nq * k, UINT64_MAX);
    std::atomic<size_t> next(0);
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < o.build_threads; t++)
        pool.emplace_back([&] {
            for (size_t q; (q = next.fetch_add(1)) < nq;) {
                const float *qv = d.query + q * d.dim;
                std::priority_queue<std::pair<float, uint64_t>> best;
                for (uint32_t r : ls.live) {
                    if (!f.admits(ls.key[r])) continue;
                    float dd = dist(qv, d.base + (size_t)r * d.dim, param);
                    if (best.size() < k)
                        best.emplace(dd, ls.key[r]);
                    else if (dd < best.top().first) {
                        best.pop();
                        best.emplace(dd, ls.key[r]);
                    }
                }
                for (size_t i = best.size(); !best.empty(); best.pop())
                    exact[q * k + --i] = best.top().second;
            }
        });
    for (auto &th : pool) th.join();
    size_t hits = 0;
    std::vector<uint64_t> got(k);
    for (size_t q = 0; q < nq; q++) {
        uint64_t t0, t1;
        ix.search(d.query + q * d.dim, got.data(), &t0, &t1);
        for (size_t i = 0; i < k; i++)
            for (size_t j = 0; j < k; j++)
                if (got[j] != UINT64_MAX && got[j] == exact[q * k + i]) {
                    hits++;
                    break;
                }
    }
    return nq ? (double)hits / (double)(nq * k) : 0;
}

/* ---- the threads ---- */

/* A thread of its own timing calls into lat_ until stopped. A derived
** class starts th_ in its constructor; one whose thread writes members of
** its own calls finish() in its destructor, before they go. */
class TimedThread
{
  public:
    explicit TimedThread(size_t cap)
    {
        lt_init(&lat_, cap);
    }
    virtual ~TimedThread()
    {
        finish();
        lt_free(&lat_);
    }
    TimedThread(const TimedThread &) = delete;
    TimedThread &operator=(const TimedThread &) = delete;
    /* Stops after the call under way; the samples are then complete. */
    const lt_samples &finish()
    {
        stop_ = true;
        join();
        return lat_;
    }
    /* Waits for the thread to end by itself. */
    void join()
    {
        if (th_.joinable()) th_.join();
    }

  protected:
    std::atomic<bool> stop_{false};
    lt_samples lat_;
    std::thread th_;
};

/* Why a slow search was slow, by what the kernel counted for its thread
** during it: ran (on the CPU for at least half of the time, and the same
** query, searched again at once, took at least half as long: the
** search's own work), ran_once (on the CPU, but fast when searched
** again: a one-off cost -- cold caches or pages, a first check of a
** mapped piece, scratch grown -- or the hypervisor taking the virtual
** CPU, which a guest's thread clock can count as the thread's time: on
** an idle index, 14 of 3.76M searches took 0.3-3.8 ms on the CPU by that
** clock, each 0.05 ms or less searched again, the same work on the same
** graph), else, for the time off it, preempted (an involuntary context
** switch: the scheduler gave its core to another thread -- on 2 cores,
** beside a writer and the library's own workers), else blocked (a
** voluntary one: it slept, on a lock or a page), else stalled (neither:
** the hypervisor took the virtual CPU). */
enum SlowCause {
    SLOW_RAN,
    SLOW_RAN_ONCE,
    SLOW_PREEMPTED,
    SLOW_BLOCKED,
    SLOW_STALLED
};
static const char *const slow_cause_name[] = {"ran", "ran_once", "preempted",
                                              "blocked", "stalled"};

/* This thread's CPU time, ns. Not getrusage's user + system time: that
** is sampled at the scheduler's tick here (4 ms), so a search of 0.1 ms
** of work that lost its core for a tick read as 4 ms on the CPU ("ran").
** The thread's CPU clock counts what the scheduler ran it, exactly. */
static uint64_t thread_cpu_ns()
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* A search this long or longer is a slow one (Reader::slow). */
static const uint64_t SLOW_NS = 1000000;

/* Searches the queries one after the other, cycling, from t_start until
** stopped, timing each call, and telling apart why each slow one was
** slow (the thread's CPU clock and one getrusage before each search,
** both again after a slow one: about 1 us a search here, alike for
** every library; a slow one that ran is searched once more, untimed by
** the samples but inside the phase's seconds, so QPS counts it as lost
** time: tens of such searches a phase, against millions). */
class Reader : public TimedThread
{
  public:
    Reader(Index &ix, const bn_data &d, size_t k, uint64_t t_start)
        : TimedThread(1u << 20)
    {
        th_ = std::thread([this, &ix, &d, k, t_start] {
            std::vector<uint64_t> out(k);
            lt_sleep_until(t_start);
            for (size_t q = 0; !stop_.load(std::memory_order_relaxed); q++) {
                uint64_t t0, t1;
                struct rusage u0, u1;
                uint64_t c0 = thread_cpu_ns();
                getrusage(RUSAGE_THREAD, &u0);
                ix.search(d.query + (q % d.nq) * d.dim, out.data(), &t0, &t1);
                lt_add(&lat_, t0, t1);
                if (t1 - t0 < SLOW_NS) continue;
                getrusage(RUSAGE_THREAD, &u1);
                uint64_t cpu = thread_cpu_ns() - c0;
                SlowCause c = 2 * cpu >= t1 - t0            ? SLOW_RAN
                              : u1.ru_nivcsw > u0.ru_nivcsw ? SLOW_PREEMPTED
                              : u1.ru_nvcsw > u0.ru_nvcsw   ? SLOW_BLOCKED
                                                            : SLOW_STALLED;
                if (c == SLOW_RAN) { /* again, untimed by the samples */
                    uint64_t a0, a1;
                    ix.search(d.query + (q % d.nq) * d.dim, out.data(), &a0,
                              &a1);
                    if (2 * (a1 - a0) < t1 - t0) c = SLOW_RAN_ONCE;
                }
                slow_[c]++;
                if (t1 - t0 > worst_) {
                    worst_ = t1 - t0;
                    worst_cause_ = c;
                }
            }
        });
    }
    ~Reader() override
    {
        finish(); /* the thread writes slow_ and worst_ */
    }
    /* Slow searches (SLOW_NS or longer) of cause c, once finished. */
    uint64_t slow(SlowCause c) const
    {
        return slow_[c];
    }
    /* The slowest search's cause, if it was slow. */
    const char *worst_cause() const
    {
        return worst_ ? slow_cause_name[worst_cause_] : "none";
    }

  private:
    uint64_t slow_[5] = {0, 0, 0, 0, 0}, worst_ = 0;
    SlowCause worst_cause_ = SLOW_RAN;
};

/* The slow searches of a finished reader, by cause (Reader): keys
** search<sfx>_slow_ran, _slow_ran_once, _slow_preempted, _slow_blocked,
** _slow_stalled,
** _worst_cause. */
void slow_keys(Row &r, const char *sfx, const Reader &rd)
{
    std::string p = std::string("search") + sfx;
    r.num(p + "_slow_ran", (double)rd.slow(SLOW_RAN), "%.0f");
    r.num(p + "_slow_ran_once", (double)rd.slow(SLOW_RAN_ONCE), "%.0f");
    r.num(p + "_slow_preempted", (double)rd.slow(SLOW_PREEMPTED), "%.0f");
    r.num(p + "_slow_blocked", (double)rd.slow(SLOW_BLOCKED), "%.0f");
    r.num(p + "_slow_stalled", (double)rd.slow(SLOW_STALLED), "%.0f");
    r.str(p + "_worst_cause", rd.worst_cause());
}

/* Runs op(i) for i = 0 .. count-1 on a thread of its own: paced at `rate`
** calls per second from t_start (lt_pace: absolute deadlines, catching up
** when late), or back to back when rate is 0; until count or stopped. */
class Writer : public TimedThread
{
  public:
    using OpFn = std::function<void(size_t, uint64_t *, uint64_t *)>;
    Writer(double rate, uint64_t t_start, size_t count, OpFn op)
        : TimedThread(count < (1u << 20) ? count + 1 : 1u << 20)
    {
        th_ = std::thread([this, rate, t_start, count, op] {
            lt_pacer p;
            lt_pacer_init(&p, t_start, rate > 0 ? rate : 1);
            lt_sleep_until(t_start);
            for (size_t i = 0; i < count; i++) {
                uint64_t due = rate > 0 ? lt_pace(&p) : 0, t0, t1;
                if (stop_.load(std::memory_order_relaxed)) break;
                op(i, &t0, &t1);
                lt_add(&lat_, t0, t1);
                if (rate > 0 && t0 > due && t0 - due > lag_max_)
                    lag_max_ = t0 - due;
            }
            t_end_ = lt_now_ns();
        });
    }
    ~Writer() override
    {
        finish(); /* the thread writes t_end_ and lag_max_ */
    }
    uint64_t t_end() const
    {
        return t_end_;
    }
    /* largest delay of a write's start behind its due time, ns */
    uint64_t lag_max() const
    {
        return lag_max_;
    }

  private:
    uint64_t t_end_ = 0, lag_max_ = 0;
};

/* Percentiles of the writes of one type (ops[i] is write i). */
lt_stats select_stats(const lt_samples &lat, const std::vector<Op> &ops,
                      int type /* -1 all, 0 removals, 1 inserts */)
{
    lt_samples sel;
    lt_init(&sel, lat.n + 1);
    for (size_t i = 0; i < lat.n; i++)
        if (type < 0 || (int)ops[i].insert == type)
            lt_add(&sel, lat.start[i], lat.end[i]);
    lt_stats st = lt_summarize(&sel, LT_ALL, 0, 0);
    lt_free(&sel);
    return st;
}

/* other_cpu{suffix} and steal_cpu{suffix}: cores used by other processes
** and taken by the hypervisor between a and b (lt_cpu_other). */
void cpu_keys(Row &r, const char *suffix, const lt_cpu &a, const lt_cpu &b)
{
    double other, steal;
    lt_cpu_other(&a, &b, &other, &steal);
    r.num(std::string("other_cpu") + suffix, other, "%.2f");
    r.num(std::string("steal_cpu") + suffix, steal, "%.2f");
}

/* A start time a little ahead, so every thread of a phase is ready. */
uint64_t soon()
{
    return lt_now_ns() + 20000000u;
}

/* Reader alone for `secs`: keys search_idle_* and searches_idle. */
void idle_phase(Index &ix, const bn_data &d, const Scenario &s, double secs,
                Row &r)
{
    lt_cpu c0 = lt_cpu_now();
    uint64_t t0 = soon(), t1 = t0 + (uint64_t)(secs * 1e9);
    Reader rd(ix, d, s.k, t0);
    lt_sleep_until(t1);
    lt_stats st = lt_summarize(&rd.finish(), LT_ALL, 0, 0);
    lt_cpu c1 = lt_cpu_now();
    r.stats("search_idle", "searches_idle", st);
    slow_keys(r, "_idle", rd);
    r.num("search_idle_qps", (double)st.count / secs, "%.1f");
    cpu_keys(r, "_idle", c0, c1);
}

/* vecidx's index searches with f (which must outlive it); hnswlib's
** never runs with a filter on (see KeyFilter). */
std::unique_ptr<Index> make_index(const char *lib, const bn_opts &o,
                                  const bn_data &d, const Scenario &s,
                                  size_t max_elements, bool file,
                                  const KeyFilter &f, Row &r)
{
    if (!strcmp(lib, "hnswlib"))
        return std::unique_ptr<Index>(
            new HnswlibIndex(o, d, s, max_elements, r));
    return std::unique_ptr<Index>(new VecidxIndex(o, d, s, file, f, r));
}

/* --scenario-filter: the filter of a scenario whose keys are the n base
** keys and those of ops' inserts; keys filter, filter_form, filter_bits
** (bitmap: its length) and filter_bits_set into r. */
KeyFilter scenario_filter(const Scenario &s, size_t n,
                          const std::vector<Op> *ops, Row &r)
{
    KeyFilter f(s);
    if (!f.on()) return f;
    for (size_t key = 0; key < n; key++) f.cover(key);
    if (ops)
        for (const Op &op : *ops)
            if (op.insert) f.cover(op.key);
    r.num("filter", f.share(), "%.3f");
    r.str("filter_form", f.form());
    r.num("filter_bits", (double)f.nbits(), "%.0f");
    r.num("filter_bits_set", (double)f.nset(), "%.0f");
    return f;
}

void row_head(Row &r, const bn_opts &o, const Scenario &s, const char *lib,
              unsigned pass)
{
    r.str("dataset", o.dataset);
    r.str("lib", lib);
    r.str("scenario", s.name.c_str());
    r.num("pass", pass, "%.0f");
}

/* The index kind and its build and search parameters: HNSW's M, efc and
** ef, or IVF-PQ's nprobe, lists, sub-quantizers and training rows. */
void index_keys(Row &r, const bn_opts &o, const bn_data &d, const Scenario &s)
{
    r.str("index", s.nprobe ? "ivfpq" : "hnsw");
    if (s.nprobe) {
        size_t ntrain = bn_train_rows(&o, d.n);
        r.num("nprobe", s.nprobe, "%.0f");
        r.num("nlist", bn_nlist(&o, ntrain), "%.0f");
        r.num("pq_m", bn_pq_m(&o, d.dim), "%.0f");
        r.num("train_rows", (double)ntrain, "%.0f");
    } else {
        r.num("M", o.M, "%.0f");
        r.num("efc", o.ef_construction, "%.0f");
        r.num("ef", s.ef, "%.0f");
    }
}

/* vecidx's storage, and whether it keeps float32 vectors (IVF-PQ: with
** --refine above 1). */
const char *vx_storage(const bn_opts &o, const Scenario &s)
{
    return s.nprobe ? "pq" : o.storage;
}

bool vx_keeps(const bn_opts &o, const Scenario &s)
{
    return s.nprobe ? vxb_refine(&o) > 1 : o.keep != 0;
}

void row_tail(Row &r, const bn_opts &o, const bn_data &d, const Scenario &s,
              const char *lib)
{
    bool vx = !strcmp(lib, "vecidx");
    r.num("n", (double)d.n, "%.0f");
    r.num("dim", d.dim, "%.0f");
    r.str("metric", bn_metric_name(o.metric));
    index_keys(r, o, d, s);
    r.num("k", s.k, "%.0f");
    r.num("build_threads", o.build_threads, "%.0f");
    r.str("storage", vx ? vx_storage(o, s) : "f32");
    r.flag("keep", vx && vx_keeps(o, s));
    r.num("refine", vx ? vxb_refine(&o) : 1, "%.0f");
    r.str("simd", vx ? vecidx_simd() : hnswlib_simd());
#ifdef HNSWLIB_VERSION
    r.str("version", vx ? vecidx_version() : HNSWLIB_VERSION);
#else
    r.str("version", vx ? vecidx_version() : nullptr);
#endif
}

/* Medians over the passes of each library and their ratio vecidx/hnswlib,
** for the given keys: KEY_hnswlib, KEY_vecidx, KEY_ratio. Filtered
** or IVF-PQ (vecidx alone): "lib":"vecidx", KEY_vecidx only, and the
** filter if any. */
void print_summary(const bn_opts &o, const bn_data &d, const Scenario &s,
                   const std::vector<Row> &rows,
                   const std::vector<std::string> &keys)
{
    bool alone = s.filter > 0 || s.nprobe;
    Row r;
    r.str("dataset", o.dataset);
    r.str("lib", alone ? "vecidx" : "vecidx/hnswlib");
    r.str("scenario", s.name.c_str());
    r.str("pass", "median");
    r.num("passes", o.passes, "%.0f");
    if (s.filter > 0) {
        KeyFilter f(s);
        r.num("filter", f.share(), "%.3f");
        r.str("filter_form", f.form());
    }
    for (const std::string &key : keys) {
        std::vector<double> h, v;
        for (const Row &x : rows) {
            std::vector<double> &dst = x.text("lib") == "vecidx" ? v : h;
            dst.push_back(x.get(key));
        }
        double mh = median(h), mv = median(v);
        const char *fmt = key.find("recall") != std::string::npos ? "%.4f"
                                                                  : "%.3f";
        if (alone) {
            r.num(key + "_vecidx", mv, fmt);
            continue;
        }
        r.num(key + "_hnswlib", mh, fmt);
        r.num(key + "_vecidx", mv, fmt);
        r.num(key + "_ratio", mh > 0 && mv >= 0 ? mv / mh : -1, "%.3f");
    }
    r.num("n", (double)d.n, "%.0f");
    r.num("dim", d.dim, "%.0f");
    index_keys(r, o, d, s);
    r.str("storage", vx_storage(o, s)); /* hnswlib's is f32 */
    r.flag("keep", vx_keeps(o, s));
    r.num("refine", vxb_refine(&o), "%.0f");
    r.str("simd", vecidx_simd());
    r.str("version", vecidx_version());
    r.print();
}

/* ---- the scenarios ---- */

/* writer: idle phase, then the reader against --writer-rate writes/s,
** half removals of random live keys and half re-inserts of removed rows
** under new keys; recall of the live set at the end. */
void scenario_writer(const bn_opts &o, const bn_data &d, const Scenario &s,
                     const char *lib, unsigned pass, Row &r)
{
    size_t count = (size_t)(s.rate * s.duration) + 1;
    std::vector<Op> ops = make_ops(d.n, count, true, SCENARIO_SEED + pass);
    KeyFilter f = scenario_filter(s, d.n, &ops, r);
    /* hnswlib keeps removed points as marked; every insert is a new one */
    auto ix = make_index(lib, o, d, s, d.n + count / 2 + 1, !s.dir.empty(), f,
                         r);
    idle_phase(*ix, d, s, s.idle, r);

    lt_cpu c0 = lt_cpu_now();
    uint64_t t0 = soon(), t1 = t0 + (uint64_t)(s.duration * 1e9);
    Index *p = ix.get();
    Reader rd(*ix, d, s.k, t0);
    Writer wr(s.rate, t0, count,
              [p, &ops, &d](size_t i, uint64_t *a, uint64_t *b) {
                  const Op &op = ops[i];
                  if (op.insert)
                      p->insert(op.key, d.base + (size_t)op.row * d.dim, a, b);
                  else
                      p->remove(op.key, a, b);
              });
    lt_sleep_until(t1);
    const lt_samples &w = wr.finish();
    const lt_samples &q = rd.finish();
    lt_cpu c1 = lt_cpu_now();
    double secs = (double)(wr.t_end() - t0) / 1e9;
    lt_stats sq = lt_summarize(&q, LT_ALL, 0, 0);
    r.stats("search", "searches", sq);
    slow_keys(r, "", rd);
    r.num("search_qps", (double)sq.count / secs, "%.1f");
    r.stats("write", "writes", select_stats(w, ops, -1));
    lt_stats si = select_stats(w, ops, 1), sr = select_stats(w, ops, 0);
    r.num("insert_p99_us", si.p99, "%.1f");
    r.num("insert_max_us", si.max, "%.1f");
    r.num("remove_p99_us", sr.p99, "%.1f");
    r.num("remove_max_us", sr.max, "%.1f");
    r.num("write_rate", (double)w.n / secs, "%.1f");
    r.num("write_rate_target", s.rate, "%.0f");
    r.num("write_lag_max_us", (double)wr.lag_max() / 1e3, "%.1f");
    r.num("phase_s", secs);
    cpu_keys(r, "", c0, c1);
    r.num("duration_s", s.duration, "%.1f");
    r.num("idle_s", s.idle, "%.1f");
    LiveSet ls = replay(d.n, ops, w.n);
    r.num(recall_key(s), live_recall(*ix, o, d, s, ls, f, r), "%.4f");
    ix->state(r);
}

/* remove: idle phase, then the reader while one thread removes
** --remove-fraction of the keys, chosen at random, one call at a time as
** fast as it can; recall of what is left. */
void scenario_remove(const bn_opts &o, const bn_data &d, const Scenario &s,
                     const char *lib, unsigned pass, Row &r)
{
    size_t count = (size_t)(s.remove_fraction * (double)d.n);
    std::vector<Op> ops = make_ops(d.n, count, false, SCENARIO_SEED + pass);
    KeyFilter f = scenario_filter(s, d.n, nullptr, r);
    auto ix = make_index(lib, o, d, s, d.n, !s.dir.empty(), f, r);
    idle_phase(*ix, d, s, s.idle, r);

    lt_cpu c0 = lt_cpu_now();
    uint64_t t0 = soon();
    Index *p = ix.get();
    Reader rd(*ix, d, s.k, t0);
    Writer wr(0, t0, count, [p, &ops](size_t i, uint64_t *a, uint64_t *b) {
        p->remove(ops[i].key, a, b);
    });
    wr.join();
    const lt_samples &w = wr.finish();
    const lt_samples &q = rd.finish();
    lt_cpu c1 = lt_cpu_now();
    double secs = (double)(wr.t_end() - t0) / 1e9;
    lt_stats sq = lt_summarize(&q, LT_ALL, 0, 0);
    r.stats("search", "searches", sq);
    slow_keys(r, "", rd);
    r.num("search_qps", secs > 0 ? (double)sq.count / secs : -1, "%.1f");
    r.stats("remove", "removes", lt_summarize(&w, LT_ALL, 0, 0));
    r.num("remove_total_s", secs);
    r.num("remove_rate", secs > 0 ? (double)w.n / secs : -1, "%.1f");
    cpu_keys(r, "", c0, c1);
    r.num("remove_fraction", s.remove_fraction, "%.4f");
    r.num("idle_s", s.idle, "%.1f");
    LiveSet ls = replay(d.n, ops, w.n);
    r.num(recall_key(s), live_recall(*ix, o, d, s, ls, f, r), "%.4f");
    ix->state(r);
}

/* An upsert's vector: the key's base row, each component scaled by a
** random factor in [0.99, 1.01]. */
void perturbed(const bn_data &d, uint64_t row, uint64_t *rng, float *out)
{
    const float *v = d.base + row * d.dim;
    for (uint32_t j = 0; j < d.dim; j++) {
        double u = (double)(lt_rand(rng) >> 11) / 9007199254740992.0;
        out[j] = v[j] * (float)(0.99 + 0.02 * u);
    }
}

/* Size of a file, 0 when it is missing. */
uint64_t file_bytes(const std::string &path)
{
    struct stat st;
    return stat(path.c_str(), &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* --auto-ckpt: the checkpoint is the one vecidx starts by itself when its
** log passes MB. It runs while the writer's upserts come, a step per
** upsert, so it is seen from outside: it begins when its temporary file,
** PATH.tmp-PID, appears, and ends when that file is renamed away. Polled
** every 0.2 ms from this thread; gives up after 10 minutes. */
void await_auto_ckpt(const std::string &path, uint64_t *c0, uint64_t *c1)
{
    std::string tmp = path + ".tmp-" + std::to_string((long)getpid());
    struct stat st;
    uint64_t give_up = lt_now_ns() + (uint64_t)600e9;
    while (stat(tmp.c_str(), &st) != 0)
        if (lt_now_ns() > give_up)
            bn_die("--auto-ckpt: no automatic checkpoint began");
        else
            lt_sleep_until(lt_now_ns() + 200000);
    *c0 = lt_now_ns();
    while (stat(tmp.c_str(), &st) == 0)
        if (lt_now_ns() > give_up)
            bn_die("--auto-ckpt: the automatic checkpoint did not end");
        else
            lt_sleep_until(lt_now_ns() + 200000);
    *c1 = lt_now_ns();
}

/* checkpoint: vecidx file-backed: --ckpt-writes upserts, then the reader
** and a writer of --writer-rate upserts/s; after CKPT_MARGIN_S, one
** vecidx_checkpoint; both stop CKPT_MARGIN_S after it returned. With
** --auto-ckpt, upserts instead until the log is 1 MiB short of starting
** the automatic checkpoint, and the writer's own upserts start it (see
** await_auto_ckpt). hnswlib: the reader only (its saveIndex must not run
** with writes), and saveIndex in place of the checkpoint. Calls
** overlapping the checkpoint are reported as *_ckpt_*, the others as
** *_other_*. */
void scenario_checkpoint(const bn_opts &o, const bn_data &d, const Scenario &s,
                         const char *lib, unsigned pass, Row &r)
{
    bool vx = !strcmp(lib, "vecidx");
    KeyFilter f = scenario_filter(s, d.n, nullptr, r);
    auto ix = make_index(lib, o, d, s, d.n, true, f, r);
    Index *p = ix.get();
    uint64_t rng = SCENARIO_SEED + pass;
    std::vector<float> v(d.dim);
    std::string log;
    if (vx) log = static_cast<VecidxIndex *>(p)->path() + "-wal";
    if (vx) {
        double t = bn_now();
        uint64_t short_of = (uint64_t)((s.auto_mb - 1) * 1048576.0);
        size_t i;
        for (i = 0;
             s.auto_mb > 0 ? file_bytes(log) < short_of : i < s.ckpt_writes;
             i++) {
            uint64_t key = lt_rand(&rng) % d.n, a, b;
            perturbed(d, key, &rng, v.data());
            p->upsert(key, v.data(), &a, &b);
        }
        r.num("ckpt_writes", (double)i, "%.0f");
        r.num("ckpt_writes_s", bn_now() - t);
    }
    lt_cpu u0 = lt_cpu_now();
    uint64_t t0 = soon(), c0, c1;
    Reader rd(*ix, d, s.k, t0);
    std::unique_ptr<Writer> wr;
    if (vx)
        wr.reset(new Writer(
            s.rate, t0, SIZE_MAX,
            [p, &d, rng, v](size_t, uint64_t *a, uint64_t *b) mutable {
                uint64_t key = lt_rand(&rng) % d.n;
                perturbed(d, key, &rng, v.data());
                p->upsert(key, v.data(), a, b);
            }));
    lt_sleep_until(t0 + (uint64_t)(CKPT_MARGIN_S * 1e9));
    if (vx && s.auto_mb > 0)
        await_auto_ckpt(static_cast<VecidxIndex *>(p)->path(), &c0, &c1);
    else
        ix->checkpoint(&c0, &c1);
    lt_sleep_until(c1 + (uint64_t)(CKPT_MARGIN_S * 1e9));
    lt_samples none;
    lt_init(&none, 1);
    const lt_samples &w = wr ? wr->finish() : none;
    const lt_samples &q = rd.finish();
    lt_cpu u1 = lt_cpu_now();
    r.str("ckpt_call", !vx             ? "saveIndex"
                       : s.auto_mb > 0 ? "automatic"
                                       : "vecidx_checkpoint");
    r.num("ckpt_s", (double)(c1 - c0) / 1e9);
    r.stats("search_ckpt", "searches_ckpt",
            lt_summarize(&q, LT_INSIDE, c0, c1));
    r.stats("search_other", "searches_other",
            lt_summarize(&q, LT_OUTSIDE, c0, c1));
    slow_keys(r, "", rd);
    lt_stats wi = lt_summarize(&w, LT_INSIDE, c0, c1);
    lt_stats wo = lt_summarize(&w, LT_OUTSIDE, c0, c1);
    r.stats("write_ckpt", "writes_ckpt", wi);
    r.stats("write_other", "writes_other", wo);
    if (vx) {
        double secs = (double)(wr->t_end() - t0) / 1e9;
        r.num("write_rate", (double)w.n / secs, "%.1f");
        r.num("write_rate_target", s.rate, "%.0f");
        r.num("write_lag_max_us", (double)wr->lag_max() / 1e3, "%.1f");
    }
    cpu_keys(r, "", u0, u1);
    lt_free(&none);
    ix->state(r);
}

/* Queries per second of single searches on `threads` threads over a
** budget of `secs`: whole passes over the queries (bn_pass_single, as in
** --lib paired) until the budget is spent. */
double timed_qps(const bn_data &d, size_t k, unsigned threads, bn_query_fn fn,
                 void *ctx, int64_t *res, double secs)
{
    size_t done = 0;
    double t0 = bn_now(), t;
    do {
        bn_pass_single(d.nq, k, threads, fn, ctx, res);
        done += d.nq;
    } while ((t = bn_now() - t0) < secs);
    return (double)done / t;
}

/* scaling: on an idle index built once per library, QPS of 1 and of
** --threads search threads, recall against the ground truth file. */
void scenario_scaling(const bn_opts &o, const bn_data &d, const Scenario &s,
                      std::vector<Row> &rows)
{
    std::unique_ptr<hnswlib::SpaceInterface<float>> space(hnswlib_space(o, d));
    double hb, vb, hrss, vrss;
    std::unique_ptr<hnswlib::HierarchicalNSW<float>> alg(
        build_hnswlib(o, d, space.get(), &hb, &hrss));
    alg->setEf(s.ef);
    vecidx *ix = build_vecidx(o, d, &vb, &vrss);
    vecidx_stats_t st;
    int rc = vecidx_stats(ix, &st);
    if (rc != VECIDX_OK) vxb_fail("vecidx_stats", rc, ix);
    HnswlibCtx hc{alg.get(), &d, s.k};
    vxb_ctx vc;
    vxb_ctx_init(&vc, &o, &d, ix); /* k: --k, which is s.k */
    vc.so.ef = s.ef;
    std::vector<int64_t> res(d.nq * s.k);
    for (unsigned pass = 0; pass < o.passes; pass++) {
        for (int vx = 0; vx < 2; vx++) {
            const char *lib = vx ? "vecidx" : "hnswlib";
            bn_query_fn fn = vx ? vxb_search_one : hnswlib_query;
            void *ctx = vx ? (void *)&vc : (void *)&hc;
            Row r;
            row_head(r, o, s, lib, pass);
            r.num("build_s", vx ? vb : hb);
            lt_cpu c0 = lt_cpu_now();
            double q1 = timed_qps(d, s.k, 1, fn, ctx, res.data(), s.duration);
            lt_cpu c1 = lt_cpu_now();
            double qn = timed_qps(d, s.k, o.threads, fn, ctx, res.data(),
                                  s.duration);
            lt_cpu c2 = lt_cpu_now();
            r.num("qps_1t", q1, "%.1f");
            r.num("qps_nt", qn, "%.1f");
            r.num("threads", o.threads, "%.0f");
            r.num("scaling", q1 > 0 ? qn / q1 : -1, "%.3f");
            r.num(recall_key(s), bn_recall(&d, res.data(), s.k, lib), "%.4f");
            r.num("secs_per_measurement", s.duration, "%.1f");
            cpu_keys(r, "_1t", c0, c1);
            cpu_keys(r, "_nt", c1, c2);
            /* as in the other lines: hnswlib's memory is the growth of the
            ** resident set while building, vecidx's its own count */
            r.num("mem_mb",
                  vx ? (double)st.memory_bytes / (1024.0 * 1024.0) : hrss,
                  "%.1f");
            if (vx) r.num("vector_bytes", (double)st.vector_bytes, "%.0f");
            row_tail(r, o, d, s, lib);
            r.print();
            rows.push_back(r);
        }
    }
    vxb_ctx_free(&vc);
    vecidx_close(ix);
}

void run_scenario(const bn_opts &o, const bn_data &d, const Scenario &s)
{
    if (d.n < 2 * (size_t)s.k)
        bn_die("--scenario: %zu base vectors are too few", d.n);
    std::vector<Row> rows;
    std::vector<std::string> keys;
    if (s.name == "scaling") {
        scenario_scaling(o, d, s, rows);
        keys = {"qps_1t", "qps_nt", "scaling", recall_key(s)};
    } else {
        /* hnswlib has no filter and no IVF-PQ: vecidx alone (see
        ** KeyFilter, scenario_resolve) */
        for (unsigned pass = 0; pass < o.passes; pass++) {
            for (int vx = s.filter > 0 || s.nprobe ? 1 : 0; vx < 2; vx++) {
                const char *lib = vx ? "vecidx" : "hnswlib";
                Row r;
                row_head(r, o, s, lib, pass);
                if (s.name == "writer")
                    scenario_writer(o, d, s, lib, pass, r);
                else if (s.name == "remove")
                    scenario_remove(o, d, s, lib, pass, r);
                else
                    scenario_checkpoint(o, d, s, lib, pass, r);
                if (vx) {
                    bool file = s.name == "checkpoint" || !s.dir.empty();
                    r.str("backing", file ? "file" : "memory");
                    r.str("sync", file ? s.sync_name : nullptr);
                } else {
                    r.str("hnswlib_lock", s.hnswlib_lock ? "rw" : "none");
                }
                row_tail(r, o, d, s, lib);
                r.print();
                rows.push_back(r);
            }
        }
        if (s.name == "writer" && (s.filter > 0 || s.nprobe))
            keys = {"search_idle_p50_us", "search_idle_p99_us",
                    "search_idle_max_us", "search_idle_qps",
                    "search_p50_us",      "search_p99_us",
                    "search_p999_us",     "search_max_us",
                    "search_qps",         "write_p99_us",
                    "write_max_us",       "write_rate",
                    recall_key(s)};
        else if (s.name == "writer")
            keys = {"search_idle_p99_us", "search_p50_us", "search_p99_us",
                    "search_p999_us",     "search_max_us", "search_qps",
                    "write_p99_us",       "write_max_us",  "write_rate",
                    recall_key(s)};
        else if (s.name == "remove")
            keys = {"search_idle_p99_us", "search_p99_us", "search_p999_us",
                    "search_max_us",      "remove_p99_us", "remove_max_us",
                    "remove_total_s",     recall_key(s)};
        else
            keys = {"ckpt_s", "search_ckpt_p99_us", "search_ckpt_max_us",
                    "search_other_p99_us", "write_ckpt_max_us"};
    }
    print_summary(o, d, s, rows, keys);
}

} // namespace

/* The options of the scenarios, taken out of argv before bn_parse_args
** sees the rest (see the help text). */
const char *const SCENARIO_HELP =
    "hnswlib | faiss | faiss-hnswsq (IndexHNSWSQ, 8-bit) | all (default all:\n"
    "the three) | paired (hnswlib and vecidx, passes alternating) |\n"
    "paired-sq (hnswlib, vecidx and faiss-hnswsq, passes in turns)\n"
    "  --open-file PATH    paired, no scenario: vecidx saves its index to\n"
    "                      PATH, drops the file from the page cache and\n"
    "                      searches a read-only open of it; its rss_mb is\n"
    "                      the resident set's growth since the open\n"
    "  --lean              with --open-file: open it VECIDX_RDONLY |\n"
    "                      VECIDX_LEAN (kept vectors read by pread)\n"
    "\n"
    "Stall scenarios (--lib paired --scenario NAME; HNSW, one --ef value,\n"
    "default 32, or --index ivfpq with one --nprobe value, vecidx alone;\n"
    "--build-threads default 2; see bench/README.md):\n"
    "  --scenario S        writer | remove | checkpoint | scaling\n"
    "  --duration S        writer: seconds of the writer phase (default 60);\n"
    "                      scaling: seconds per measurement (default 5)\n"
    "  --idle-duration S   writer, remove: seconds of the reader alone first\n"
    "                      (default: writer --duration, remove 10)\n"
    "  --writer-rate W     writes per second (writer 4000, checkpoint 500)\n"
    "  --file DIR          vecidx file-backed, its files in DIR (writer,\n"
    "                      remove; required by checkpoint)\n"
    "  --sync M            full | normal | off (default normal)\n"
    "  --ckpt-writes N     checkpoint: upserts before it (default 1000)\n"
    "  --auto-ckpt MB      checkpoint: time the automatic one, which the\n"
    "                      library starts when its log passes MB (64)\n"
    "  --remove-fraction F remove: share of the keys removed (default 0.125)\n"
    "  --recall-queries N  queries for the live-set recall (default 200)\n"
    "  --hnswlib-lock      guard hnswlib with a readers-writer lock\n"
    "  --scenario-filter SEL  searches admit key x iff mix(x) % 1000 <\n"
    "                      SEL * 1000 (writer, remove, checkpoint): vecidx\n"
    "                      alone, hnswlib 0.6.2 has no filter (default off)\n"
    "  --scenario-filter-form F  bitmap (allow_bitmap over the keys used)\n"
    "                      | callback (filter + filter_selectivity SEL);\n"
    "                      default bitmap\n"
    "  --threads N         scaling: search threads (default: all cores)";

double parse_secs(const char *opt, const char *v)
{
    char *end;
    double x = strtod(v, &end);
    if (!*v || *end || !(x >= 0) || x > 1e6)
        bn_die("%s: '%s' is not a number of seconds", opt, v);
    return x;
}

/* Takes the scenario options out of argv into *s; returns the other
** arguments, after defaults for a scenario (--index hnsw --ef 32
** --build-threads 2, scaling --threads <cores>) that the user's own
** options, coming later, override. */
std::vector<char *> scenario_args(int argc, char **argv, Scenario *s)
{
    static std::vector<std::string> defaults;
    std::vector<char *> rest{argv[0]};
    std::vector<char *> user;
    bool any = false;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i], name = a, val;
        size_t eq = a.find('=');
        bool has_val = eq != std::string::npos;
        if (has_val) {
            name = a.substr(0, eq);
            val = a.substr(eq + 1);
        }
        static const char *const ours[] = {"--scenario",
                                           "--duration",
                                           "--idle-duration",
                                           "--writer-rate",
                                           "--file",
                                           "--sync",
                                           "--ckpt-writes",
                                           "--remove-fraction",
                                           "--auto-ckpt",
                                           "--recall-queries",
                                           "--scenario-filter",
                                           "--scenario-filter-form"};
        bool mine = false;
        for (const char *x : ours) mine = mine || name == x;
        if (name == "--hnswlib-lock") {
            s->hnswlib_lock = any = true;
            continue;
        }
        if (name == "--lean") {
            s->lean = true;
            continue;
        }
        if (name == "--open-file") {
            if (!has_val && i + 1 >= argc) bn_die("--open-file needs a path");
            s->open_file = has_val ? val : argv[++i];
            if (s->open_file.empty()) bn_die("--open-file needs a path");
            continue;
        }
        if (!mine) {
            user.push_back(argv[i]);
            continue;
        }
        if (name != "--scenario") any = true;
        if (!has_val) {
            if (i + 1 >= argc) bn_die("%s needs a value", name.c_str());
            val = argv[++i];
        }
        const char *n = name.c_str(), *v = val.c_str();
        if (name == "--scenario") {
            if (val != "writer" && val != "remove" && val != "checkpoint" &&
                val != "scaling")
                bn_die("--scenario: '%s' is not writer, remove, checkpoint "
                       "or scaling",
                       v);
            s->name = val;
        } else if (name == "--duration")
            s->duration = parse_secs(n, v);
        else if (name == "--idle-duration")
            s->idle = parse_secs(n, v);
        else if (name == "--writer-rate")
            s->rate = (double)bn_parse_ulong(n, v, 1, 10000000);
        else if (name == "--file")
            s->dir = val;
        else if (name == "--sync") {
            static const struct {
                const char *name;
                unsigned flag;
            } modes[] = {{"full", VECIDX_SYNC_FULL},
                         {"normal", VECIDX_SYNC_NORMAL},
                         {"off", VECIDX_SYNC_OFF}};
            bool ok = false;
            for (const auto &m : modes)
                if (val == m.name) {
                    s->sync = m.flag;
                    s->sync_name = m.name;
                    ok = true;
                }
            if (!ok) bn_die("--sync: '%s' is not full, normal or off", v);
        } else if (name == "--ckpt-writes")
            s->ckpt_writes = bn_parse_ulong(n, v, 0, 100000000);
        else if (name == "--auto-ckpt")
            s->auto_mb = (double)bn_parse_ulong(n, v, 2, 1u << 20);
        else if (name == "--remove-fraction") {
            char *end;
            s->remove_fraction = strtod(v, &end);
            if (!*v || *end || !(s->remove_fraction > 0) ||
                s->remove_fraction > 1)
                bn_die("--remove-fraction: '%s' is not in (0, 1]", v);
        } else if (name == "--scenario-filter") {
            char *end;
            s->filter = strtod(v, &end);
            if (!*v || *end || !(s->filter >= 0.001) || s->filter > 1)
                bn_die("--scenario-filter: '%s' is not in [0.001, 1]", v);
        } else if (name == "--scenario-filter-form") {
            if (val != "bitmap" && val != "callback")
                bn_die("--scenario-filter-form: '%s' is not bitmap or "
                       "callback",
                       v);
            s->filter_form = val;
        } else
            s->recall_queries = bn_parse_ulong(n, v, 1, 100000000);
    }
    if (!s->name.empty()) {
        defaults = {"--lib", "paired", "--index",         "hnsw",
                    "--ef",  "32",     "--build-threads", "2"};
        if (s->name == "scaling") {
            defaults.push_back("--threads");
            defaults.push_back(std::to_string(bn_ncpu()));
        }
        for (std::string &x : defaults) rest.push_back(&x[0]);
    }
    if (any && s->name.empty())
        bn_die("%s", "--duration, --file and the like need --scenario");
    rest.insert(rest.end(), user.begin(), user.end());
    rest.push_back(nullptr);
    return rest;
}

/* Checks the options of a scenario and resolves the defaults. */
void scenario_resolve(const bn_opts &o, Scenario *s)
{
    if (strcmp(o.lib, "paired") != 0)
        bn_die("--scenario needs --lib paired (hnswlib and vecidx in turns)");
    if (o.batch) bn_die("--scenario: single queries only");
    if (!strcmp(o.index, "ivfpq")) {
        /* vecidx alone: hnswlib has no IVF-PQ, and FAISS's is not safe to
        ** search while it is written */
        if (s->name == "scaling")
            bn_die("--scenario scaling: --index hnsw only");
        if (o.nprobe.n != 1)
            bn_die("--scenario --index ivfpq takes one --nprobe value");
        s->nprobe = (unsigned)o.nprobe.v[0];
    } else if (strcmp(o.index, "hnsw") != 0) {
        bn_die("--scenario: --index hnsw or ivfpq");
    } else if (o.ef.n != 1) {
        bn_die("--scenario takes one --ef value");
    }
    s->ef = o.ef.v[0];
    s->k = (unsigned)o.k;
    if (s->duration < 0) s->duration = s->name == "scaling" ? 5 : 60;
    if (s->idle < 0) s->idle = s->name == "remove" ? 10 : s->duration;
    if (s->rate < 0) s->rate = s->name == "checkpoint" ? 500 : 4000;
    if (s->name == "checkpoint" && s->dir.empty())
        bn_die("--scenario checkpoint needs --file DIR (vecidx file-backed)");
    if (!s->dir.empty() && mkdir(s->dir.c_str(), 0755) != 0 && errno != EEXIST)
        bn_die("--file %s: %s", s->dir.c_str(), strerror(errno));
    if (s->name == "writer" && s->duration <= 0)
        bn_die("--scenario writer: --duration must be above 0");
    if (s->name == "scaling" && s->duration <= 0)
        bn_die("--scenario scaling: --duration must be above 0");
    if (s->filter > 0 && s->name == "scaling")
        bn_die("--scenario-filter: writer, remove and checkpoint only");
}

int main(int argc, char **argv)
{
    bn_opts o;
    bn_data d;
    Scenario scen;
    bn_progname = "vecidx-compare";
    bn_filter_supported = 1;
    std::vector<char *> args = scenario_args(argc, argv, &scen);
    bn_parse_args((int)args.size() - 1, args.data(), &o, SCENARIO_HELP);
    if (!scen.name.empty()) scenario_resolve(o, &scen);
    if (!scen.open_file.empty() &&
        (!scen.name.empty() || !o.lib || strcmp(o.lib, "paired") != 0 ||
         o.threads != 1))
        bn_die("--open-file: --lib paired without --scenario, one thread");
    if (scen.lean && scen.open_file.empty()) bn_die("--lean needs --open-file");
    const char *lib = o.lib ? o.lib : "all";
    bool want_hnswlib = !strcmp(lib, "hnswlib") || !strcmp(lib, "all");
    bool want_faiss = !strcmp(lib, "faiss") || !strcmp(lib, "all");
    bool want_faiss_sq = !strcmp(lib, "faiss-hnswsq") || !strcmp(lib, "all");
    bool paired_sq = !strcmp(lib, "paired-sq");
    bool paired = !strcmp(lib, "paired") || paired_sq;
    if (!want_hnswlib && !want_faiss && !want_faiss_sq && !paired)
        bn_die("--lib %s: expected hnswlib, faiss, faiss-hnswsq, all, paired "
               "or paired-sq",
               lib);
    if (!paired && (strcmp(o.storage, "f32") != 0 || o.keep))
        bn_note("--storage and --keep set vecidx's storage (--lib paired); "
                "hnswlib and FAISS store as their lines' storage key says");
    if (o.nsel && (paired || !scen.name.empty() || !want_faiss ||
                   strcmp(o.index, "ivfpq") != 0 || o.refine > 1))
        bn_die("--filter-selectivity: vecidx-compare measures FAISS "
               "IndexIVFPQ with an IDSelector only (--lib faiss --index "
               "ivfpq, no --refine: IndexRefineFlat takes no IDSelector); "
               "vecidx's side is vecidx-bench's");
    bn_load(&o, &d);
    /* before normalising: cosine data then projects as in vecidx-bench,
    ** so both programs admit the same rows */
    std::unique_ptr<uint32_t, decltype(&free)> order(bn_filter_order(&o, &d),
                                                     &free);
    if (o.metric == BN_COS) {
        normalise(d.base, d.n, d.dim);
        normalise(d.query, d.nq, d.dim);
    }
    if (!scen.name.empty())
        run_scenario(o, d, scen);
    else if (paired)
        run_paired(o, d, paired_sq,
                   scen.open_file.empty() ? nullptr : scen.open_file.c_str(),
                   scen.lean);
    if (want_hnswlib) run_hnswlib(o, d);
    if (want_faiss) run_faiss(o, d, false, order.get());
    if (want_faiss_sq) run_faiss(o, d, true, order.get());
    bn_free_data(&d);
    return 0;
}
