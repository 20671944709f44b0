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
** paired: hnswlib and vecidx (HNSW, single queries) built in one process,
**          their timed passes alternating: see run_paired.
** Cosine: base and queries are normalised to unit length and searched by
** inner product, which ranks exactly as cosine distance does.
** Memory: mem_mb is the growth of the resident set while building (these
** libraries do not count their own memory); rss_mb is the same figure.
*/
#include "common.h" /* first, like in vecidx-bench.c */

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <dlfcn.h>
#include <hnswlib/hnswlib.h>
#include <omp.h>

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexRefine.h>
#include <faiss/utils/utils.h>

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

/* Build hnswlib's graph over d; *build_s and *rss_mb get the build time
** and the resident-set growth. */
hnswlib::HierarchicalNSW<float> *build_hnswlib(
    const bn_opts &o, const bn_data &d, hnswlib::SpaceInterface<float> *space,
    double *build_s, double *rss_mb)
{
    double rss0 = bn_rss_mb();
    double t0 = bn_now();
    auto *alg = new hnswlib::HierarchicalNSW<float>(space, d.n, o.M,
                                                    o.ef_construction, 100);
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

void hnswlib_result(bn_result &r, const bn_opts &o, unsigned ef,
                    double build_s, double rss_mb)
{
    bn_result_init(&r, &o, "hnswlib");
    r.simd = hnswlib_simd();
    r.lib_version = nullptr; /* hnswlib headers carry no version */
    set_strings(r, strprintf("ef=%u", ef),
                strprintf("M=%u,efc=%u", (unsigned)o.M,
                          (unsigned)o.ef_construction));
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

/* ---- paired: hnswlib and vecidx in one process ---------------------------- */

/* Two separate runs on a shared machine differ by several percent as
** neighbours come and go, which swamps a ratio between libraries. Here
** both graphs are built in one process and every timed pass of one
** library is followed by one of the other, so a slow spell hits both; each
** keeps its best pass. Builds run one after the other, hnswlib first. */
void run_paired(const bn_opts &o, const bn_data &d)
{
    if (strcmp(o.index, "hnsw") != 0 || o.batch)
        bn_die("--lib paired: --index hnsw and single queries only");
    std::unique_ptr<hnswlib::SpaceInterface<float>> space(hnswlib_space(o, d));
    double hb, hrss;
    auto *alg = build_hnswlib(o, d, space.get(), &hb, &hrss);

    vecidx_params p;
    vecidx *ix = nullptr;
    vecidx_stats_t st;
    size_t ntrain;
    vxb_params(&o, &d, &p, &ntrain);
    uint64_t *keys = vxb_keys(&d);
    double rss0 = bn_rss_mb(), t0 = bn_now();
    int rc = vecidx_create(&p, &ix);
    if (rc != VECIDX_OK) vxb_fail("vecidx_create", rc, nullptr);
    rc = vecidx_add_batch(ix, d.n, keys, d.base);
    if (rc != VECIDX_OK) vxb_fail("vecidx_add_batch", rc, ix);
    double vb = bn_now() - t0, rss1 = bn_rss_mb();
    free(keys);
    if ((rc = vecidx_stats(ix, &st)) != VECIDX_OK)
        vxb_fail("vecidx_stats", rc, ix);

    HnswlibCtx hc{alg, &d, o.k};
    vxb_ctx vc;
    memset(&vc, 0, sizeof vc);
    vc.ix = ix;
    vc.d = &d;
    vc.k = o.k;
    std::vector<int64_t> hres(d.nq * o.k), vres(d.nq * o.k);
    for (size_t i = 0; i < o.ef.n; i++) {
        unsigned ef = (unsigned)o.ef.v[i];
        double hbest = HUGE_VAL, vbest = HUGE_VAL;
        alg->setEf(ef);
        vc.so.ef = ef;
        for (unsigned pass = 0; pass < o.passes; pass++) {
            double t = bn_pass_single(d.nq, o.k, o.threads, hnswlib_query, &hc,
                                      hres.data());
            hbest = t < hbest ? t : hbest;
            t = bn_pass_single(d.nq, o.k, o.threads, vxb_search_one, &vc,
                               vres.data());
            vbest = t < vbest ? t : vbest;
        }
        bn_result r;
        hnswlib_result(r, o, ef, hb, hrss);
        r.qps = hbest > 0 ? (double)d.nq / hbest : 0.0;
        r.recall = bn_recall(&d, hres.data(), o.k, r.param);
        bn_print(&o, &d, &r);
        bn_result_init(&r, &o, "vecidx");
        r.simd = st.simd;
        r.lib_version = vecidx_version();
        set_strings(r, strprintf("ef=%u", ef), strprintf("M=%u,efc=%u",
                                                         (unsigned)o.M,
                                                         (unsigned)o.ef_construction));
        r.build_s = vb;
        r.mem_mb = (double)st.memory_bytes / (1024.0 * 1024.0);
        r.rss_mb = rss0 >= 0 && rss1 >= 0 ? rss1 - rss0 : -1;
        r.qps = vbest > 0 ? (double)d.nq / vbest : 0.0;
        r.recall = bn_recall(&d, vres.data(), o.k, r.param);
        bn_print(&o, &d, &r);
    }
    vecidx_close(ix);
    delete alg;
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
                     dp, reinterpret_cast<faiss::Index::idx_t *>(out));
}

void faiss_batch(void *arg, int64_t *res)
{
    auto *c = static_cast<FaissCtx *>(arg);
    c->index->search((faiss::Index::idx_t)c->d->nq, c->d->query,
                     (faiss::Index::idx_t)c->k, c->dist.data(),
                     reinterpret_cast<faiss::Index::idx_t *>(res));
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

void run_faiss(const bn_opts &o, const bn_data &d)
{
    faiss::MetricType mt = o.metric == BN_L2 ? faiss::METRIC_L2
                                             : faiss::METRIC_INNER_PRODUCT;
    std::string simd = faiss_simd();
    const std::string faiss_version = strprintf(
        "%d.%d.%d+%s", FAISS_VERSION_MAJOR, FAISS_VERSION_MINOR,
        FAISS_VERSION_PATCH, blas_name());
    std::unique_ptr<faiss::Index> quantizer;
    std::unique_ptr<faiss::Index> index;
    faiss::IndexIVFPQ *ivfpq = nullptr; /* inside index, for nprobe */
    std::string build;
    const bn_list *sweep = nullptr;
    double train_s = -1, rss_trained = -1;
    uint32_t nlist = 0, m = 0;

    double rss0 = bn_rss_mb();
    set_threads(o.build_threads);
    double t0 = bn_now();
    if (!strcmp(o.index, "flat")) {
        if (mt == faiss::METRIC_L2)
            index.reset(new faiss::IndexFlatL2(d.dim));
        else
            index.reset(new faiss::IndexFlatIP(d.dim));
    } else if (!strcmp(o.index, "hnsw")) {
        auto *h = new faiss::IndexHNSWFlat((int)d.dim, (int)o.M, mt);
        h->hnsw.efConstruction = (int)o.ef_construction;
        index.reset(h);
        build = strprintf("M=%u,efc=%u", (unsigned)o.M,
                          (unsigned)o.ef_construction);
        sweep = &o.ef;
    } else {
        size_t ntrain = bn_train_rows(&o, d.n);
        nlist = bn_nlist(&o, ntrain);
        m = bn_pq_m(&o, d.dim);
        if (d.dim % m)
            bn_die("--pq-m %u does not divide dimension %u, as FAISS needs",
                   (unsigned)m, d.dim);
        if (mt == faiss::METRIC_L2)
            quantizer.reset(new faiss::IndexFlatL2(d.dim));
        else
            quantizer.reset(new faiss::IndexFlatIP(d.dim));
        ivfpq = new faiss::IndexIVFPQ(quantizer.get(), d.dim, nlist, m,
                                      o.pq_nbits, mt);
        if (o.refine > 1) {
            auto *rf = new faiss::IndexRefineFlat(ivfpq);
            rf->own_fields = true; /* deletes ivfpq */
            rf->k_factor = (float)o.refine;
            index.reset(rf);
        } else {
            index.reset(ivfpq);
        }
        /* Training runs on --build-threads OpenMP and BLAS threads, as
        ** vecidx_train runs on params.threads. */
        index->train((faiss::Index::idx_t)ntrain, d.base);
        train_s = bn_now() - t0;
        rss_trained = bn_rss_mb();
        t0 = bn_now() - train_s; /* build_s leaves out the RSS reading */
        build = strprintf("nlist=%u,m=%u,nbits=%u,train=%zu,refine=%u",
                          (unsigned)nlist, (unsigned)m, (unsigned)o.pq_nbits,
                          ntrain, o.refine > 1 ? (unsigned)o.refine : 1u);
        sweep = &o.nprobe;
    }
    index->add((faiss::Index::idx_t)d.n, d.base);
    double build_s = bn_now() - t0;
    double rss1 = bn_rss_mb();

    FaissCtx c{index.get(), &d, o.k, {}};
    if (o.batch) c.dist.resize(d.nq * o.k);
    std::vector<int64_t> res(d.nq * o.k);
    size_t nvals = sweep ? sweep->n : 1;
    for (size_t i = 0; i < nvals; i++) {
        bn_result r;
        bn_result_init(&r, &o, "faiss");
        r.simd = simd.c_str();
        r.lib_version = faiss_version.c_str();
        std::string param = "exact";
        if (!strcmp(o.index, "hnsw")) {
            static_cast<faiss::IndexHNSWFlat *>(index.get())->hnsw.efSearch =
                (int)sweep->v[i];
            param = strprintf("ef=%u", (unsigned)sweep->v[i]);
        } else if (ivfpq) {
            ivfpq->nprobe = sweep->v[i];
            param = strprintf("nprobe=%u", (unsigned)sweep->v[i]);
        }
        set_strings(r, param, build);
        r.build_s = build_s;
        r.train_s = train_s;
        r.rss_mb = r.mem_mb = rss0 >= 0 && rss1 >= 0 ? rss1 - rss0 : -1;
        if (rss_trained >= 0 && rss1 >= 0 && d.n)
            r.bytes_per_vec =
                (rss1 - rss_trained) * 1024.0 * 1024.0 / (double)d.n;
        /* single: one OpenMP thread per query, set in faiss_query; batch:
        ** one search call on --threads OpenMP threads. */
        set_threads(o.batch ? o.threads : 1);
        r.qps = bn_measure(&o, &d, faiss_query, faiss_batch, &c, res.data());
        r.recall = bn_recall(&d, res.data(), o.k, r.param);
        bn_print(&o, &d, &r);
    }
    index.reset(); /* before its quantizer */
}

} // namespace

int main(int argc, char **argv)
{
    bn_opts o;
    bn_data d;
    bn_parse_args(argc, argv, &o,
                  "hnswlib | faiss | all (default all) | paired (hnswlib "
                  "and vecidx, passes alternating)");
    const char *lib = o.lib ? o.lib : "all";
    bool want_hnswlib = !strcmp(lib, "hnswlib") || !strcmp(lib, "all");
    bool want_faiss = !strcmp(lib, "faiss") || !strcmp(lib, "all");
    bool paired = !strcmp(lib, "paired");
    if (!want_hnswlib && !want_faiss && !paired)
        bn_die("--lib %s: expected hnswlib, faiss, all or paired", lib);
    bn_load(&o, &d);
    if (o.metric == BN_COS) {
        normalise(d.base, d.n, d.dim);
        normalise(d.query, d.nq, d.dim);
    }
    if (paired) run_paired(o, d);
    if (want_hnswlib) run_hnswlib(o, d);
    if (want_faiss) run_faiss(o, d);
    bn_free_data(&d);
    return 0;
}
