/*
** persist-compare -- how long a saved HNSW index takes to open and answer
** its first query: vecidx (vecidx_open of the file vecidx_save wrote, as a
** reader and as the writer) against hnswlib (loadIndex of the file
** saveIndex wrote), built from the same data with the same M and
** ef_construction, measured in the same process, taking turns.
**
**   g++ -O3 -march=native -std=c++17 -I. bench/persist-compare.cpp \
**       libvecidx.a -pthread -lm -o bench/persist-compare
**
**   bench/persist-compare --data DIR [--dir D] [--repeat N] [--cold]
**
** Options of its own (the others are vecidx-bench's, see bench/README.md;
** --ef gives the search breadth, default 64, first value used):
**   --dir D      where the two index files go (default /tmp/vecidx-persist);
**                files from an earlier run with the same data set, metric,
**                M and ef_construction are reused
**   --rebuild    build and save even if the files exist
**   --repeat N   measurements per library and cache state (default 5)
**   --cold       also measure with the page cache dropped before each open
**                (writes /proc/sys/vm/drop_caches: needs root)
**
** Each measurement: open, then query 0 (the first query), then one pass
** over all queries (recall and queries/s of that first pass, on an index
** that was just opened). One JSON line per measurement ("bench":"open"),
** then per library and cache state the medians and their ratio to
** hnswlib's ("bench":"open_summary").
*/
#include "common.h" /* first: selects POSIX */

#include <algorithm>
#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>

#include <hnswlib/hnswlib.h>

#include "vecidx.h"

namespace
{

struct Extra {
    std::string dir = "/tmp/vecidx-persist";
    unsigned repeat = 5;
    bool cold = false;
    bool rebuild = false;
};

/* One timed open. */
struct Sample {
    std::string lib;  /* "vecidx" or "hnswlib" */
    std::string mode; /* vecidx: "rdonly" or "writer"; hnswlib: "load" */
    bool cold;
    double open_ms, first_ms, pass_qps, recall, rss_open_mb, rss_pass_mb;
};

[[noreturn]] void vx_fail(const char *call, int rc, const vecidx *ix)
{
    const char *msg = vecidx_errmsg(ix);
    bn_die("%s failed: %s%s%s", call, vecidx_strerror(rc), *msg ? ": " : "",
           msg);
}

bool file_exists(const std::string &path)
{
    struct stat st;
    return stat(path.c_str(), &st) == 0;
}

double file_mb(const std::string &path)
{
    struct stat st;
    return stat(path.c_str(), &st) == 0 ? (double)st.st_size / (1 << 20) : -1;
}

/* Write back dirty pages, then drop every clean page of the page cache, so
** the next open reads from the disk. */
void drop_caches()
{
    sync();
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
    if (fd < 0 || write(fd, "3\n", 2) != 2)
        bn_die("--cold: cannot write /proc/sys/vm/drop_caches (%s): run as "
               "root, or leave out --cold",
               strerror(errno));
    close(fd);
}

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

int vx_metric(int m)
{
    return m == BN_IP ? VECIDX_IP : m == BN_COS ? VECIDX_COSINE : VECIDX_L2;
}

/* ---- building ----------------------------------------------------------- */

void build_vecidx(const bn_opts &o, const bn_data &d, const std::string &path)
{
    vecidx_params p;
    vecidx *ix = nullptr;
    int rc = vecidx_params_init(&p, VECIDX_HNSW, vx_metric(o.metric), d.dim);
    if (rc != VECIDX_OK) vx_fail("vecidx_params_init", rc, nullptr);
    p.capacity = (uint32_t)d.n;
    p.threads = o.build_threads;
    p.hnsw_m = o.M;
    p.hnsw_ef_construction = o.ef_construction;
    std::vector<uint64_t> keys(d.n);
    for (size_t i = 0; i < d.n; i++) keys[i] = i;
    double t0 = bn_now();
    if ((rc = vecidx_create(&p, &ix)) != VECIDX_OK)
        vx_fail("vecidx_create", rc, nullptr);
    if ((rc = vecidx_add_batch(ix, d.n, keys.data(), d.base)) != VECIDX_OK)
        vx_fail("vecidx_add_batch", rc, ix);
    double t1 = bn_now();
    if ((rc = vecidx_save(ix, path.c_str())) != VECIDX_OK)
        vx_fail("vecidx_save", rc, ix);
    double t2 = bn_now();
    vecidx_close(ix);
    printf("{\"bench\":\"save\",\"lib\":\"vecidx\",\"n\":%zu,\"dim\":%u,"
           "\"build_s\":%.3f,\"save_s\":%.3f,\"file_mb\":%.1f}\n",
           d.n, d.dim, t1 - t0, t2 - t1, file_mb(path));
    fflush(stdout);
}

/* hnswlib wants unit vectors and inner product for cosine. */
std::unique_ptr<hnswlib::SpaceInterface<float>> hnswlib_space(int metric,
                                                              size_t dim)
{
    if (metric == BN_L2) return std::make_unique<hnswlib::L2Space>(dim);
    return std::make_unique<hnswlib::InnerProductSpace>(dim);
}

void build_hnswlib(const bn_opts &o, const bn_data &d, const float *base,
                   const std::string &path)
{
    auto space = hnswlib_space(o.metric, d.dim);
    double t0 = bn_now();
    auto alg = std::make_unique<hnswlib::HierarchicalNSW<float>>(
        space.get(), d.n, o.M, o.ef_construction, 100);
    /* As in compare.cpp: the first point alone, then the rest from
    ** build_threads threads. */
    if (d.n > 0) alg->addPoint(base, 0);
    std::atomic<size_t> next(1);
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < o.build_threads; t++)
        pool.emplace_back([&] {
            for (size_t i; (i = next.fetch_add(1)) < d.n;)
                alg->addPoint(base + i * d.dim, i);
        });
    for (auto &th : pool) th.join();
    double t1 = bn_now();
    alg->saveIndex(path);
    double t2 = bn_now();
    printf("{\"bench\":\"save\",\"lib\":\"hnswlib\",\"n\":%zu,\"dim\":%u,"
           "\"build_s\":%.3f,\"save_s\":%.3f,\"file_mb\":%.1f}\n",
           d.n, d.dim, t1 - t0, t2 - t1, file_mb(path));
    fflush(stdout);
}

/* ---- measuring ---------------------------------------------------------- */

struct VxCtx {
    vecidx *ix;
    const bn_data *d;
    vecidx_search_opts so;
    size_t k;
};

void vx_query(void *arg, size_t qi, int64_t *out)
{
    auto *c = static_cast<VxCtx *>(arg);
    size_t found = 0;
    int rc = vecidx_search(c->ix, c->d->query + qi * c->d->dim, c->k, &c->so,
                           reinterpret_cast<uint64_t *>(out), nullptr, &found);
    if (rc != VECIDX_OK) vx_fail("vecidx_search", rc, c->ix);
    for (size_t i = found; i < c->k; i++) out[i] = -1;
}

struct HnCtx {
    hnswlib::HierarchicalNSW<float> *alg;
    const float *query;
    uint32_t dim;
    size_t k;
};

void hn_query(void *arg, size_t qi, int64_t *out)
{
    auto *c = static_cast<HnCtx *>(arg);
    auto top = c->alg->searchKnn(c->query + qi * c->dim, c->k);
    size_t n = top.size();
    for (size_t i = n; i < c->k; i++) out[i] = -1;
    while (!top.empty()) { /* farthest first */
        out[--n] = (int64_t)top.top().second;
        top.pop();
    }
}

/* The first query, then one pass over all of them (the first pass a user
** of a freshly opened index gets). */
void time_queries(const bn_opts &o, const bn_data &d, bn_query_fn fn,
                  void *ctx, double rss0, Sample &s)
{
    std::vector<int64_t> res(d.nq * o.k);
    double t0 = bn_now();
    fn(ctx, 0, res.data());
    s.first_ms = (bn_now() - t0) * 1e3;
    s.rss_open_mb = bn_rss_mb() - rss0;
    double t = bn_pass_single(d.nq, o.k, 1, fn, ctx, res.data());
    s.pass_qps = t > 0 ? (double)d.nq / t : 0;
    s.recall = bn_recall(&d, res.data(), o.k, s.lib.c_str());
    s.rss_pass_mb = bn_rss_mb() - rss0;
}

Sample measure_vecidx(const bn_opts &o, const bn_data &d,
                      const std::string &path, bool writer, bool cold)
{
    Sample s{"vecidx", writer ? "writer" : "rdonly", cold, 0, 0, 0, 0, 0, 0};
    vecidx *ix = nullptr;
    if (cold) drop_caches();
    double rss0 = bn_rss_mb();
    double t0 = bn_now();
    int rc = vecidx_open(path.c_str(), nullptr,
                         writer ? VECIDX_SYNC_FULL : VECIDX_RDONLY, &ix);
    s.open_ms = (bn_now() - t0) * 1e3;
    if (rc != VECIDX_OK) vx_fail("vecidx_open", rc, nullptr);
    if (vecidx_count(ix) != d.n)
        bn_die("%s holds %zu vectors, the data set %zu: use --rebuild",
               path.c_str(), vecidx_count(ix), d.n);
    VxCtx c{ix, &d, {}, o.k};
    c.so.ef = o.ef.v[0];
    time_queries(o, d, vx_query, &c, rss0, s);
    vecidx_close(ix);
    return s;
}

Sample measure_hnswlib(const bn_opts &o, const bn_data &d, const float *query,
                       const std::string &path, bool cold)
{
    Sample s{"hnswlib", "load", cold, 0, 0, 0, 0, 0, 0};
    auto space = hnswlib_space(o.metric, d.dim);
    if (cold) drop_caches();
    double rss0 = bn_rss_mb();
    double t0 = bn_now();
    auto alg =
        std::make_unique<hnswlib::HierarchicalNSW<float>>(space.get(), path);
    alg->setEf(o.ef.v[0]);
    s.open_ms = (bn_now() - t0) * 1e3;
    if (alg->cur_element_count != d.n)
        bn_die("%s holds %zu vectors, the data set %zu: use --rebuild",
               path.c_str(), (size_t)alg->cur_element_count, d.n);
    HnCtx c{alg.get(), query, d.dim, o.k};
    time_queries(o, d, hn_query, &c, rss0, s);
    return s;
}

void print_sample(const bn_opts &o, const bn_data &d, const Sample &s,
                  unsigned rep)
{
    printf("{\"bench\":\"open\",\"dataset\":");
    bn_json_str(stdout, o.dataset);
    printf(",\"lib\":\"%s\",\"mode\":\"%s\",\"cache\":\"%s\",\"rep\":%u,"
           "\"n\":%zu,\"dim\":%u,\"metric\":\"%s\",\"ef\":%u,"
           "\"open_ms\":%.3f,\"first_query_ms\":%.3f,"
           "\"open_plus_first_ms\":%.3f,\"recall_at_%zu\":%.4f,"
           "\"first_pass_qps\":%.1f,\"rss_after_first_mb\":%.1f,"
           "\"rss_after_pass_mb\":%.1f}\n",
           s.lib.c_str(), s.mode.c_str(), s.cold ? "cold" : "warm", rep, d.n,
           d.dim, bn_metric_name(o.metric), (unsigned)o.ef.v[0], s.open_ms,
           s.first_ms, s.open_ms + s.first_ms, o.k, s.recall, s.pass_qps,
           s.rss_open_mb, s.rss_pass_mb);
    fflush(stdout);
}

double median(std::vector<double> v)
{
    if (v.empty()) return -1;
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct Medians {
    size_t n = 0;
    double open = -1, first = -1, both = -1, qps = -1, recall = -1;
};

Medians medians(const std::vector<Sample> &all, const char *lib,
                const char *mode, bool cold)
{
    std::vector<double> open, first, both, qps, rec;
    Medians m;
    for (const Sample &s : all) {
        if (s.lib != lib || s.mode != mode || s.cold != cold) continue;
        open.push_back(s.open_ms);
        first.push_back(s.first_ms);
        both.push_back(s.open_ms + s.first_ms);
        qps.push_back(s.pass_qps);
        rec.push_back(s.recall);
    }
    m.n = open.size();
    if (m.n) {
        m.open = median(open);
        m.first = median(first);
        m.both = median(both);
        m.qps = median(qps);
        m.recall = median(rec);
    }
    return m;
}

/* Medians per library, mode and cache state, with hnswlib's open + first
** query in the same cache state divided by this one's (above 1: faster
** than hnswlib). */
void print_summary(const bn_opts &o, const bn_data &d,
                   const std::vector<Sample> &all)
{
    static const char *const modes[3][2] = {
        {"vecidx", "rdonly"}, {"vecidx", "writer"}, {"hnswlib", "load"}};
    for (int cold = 0; cold < 2; cold++) {
        double ref = medians(all, "hnswlib", "load", cold).both;
        for (const auto &lm : modes) {
            Medians m = medians(all, lm[0], lm[1], cold);
            if (!m.n) continue;
            printf("{\"bench\":\"open_summary\",\"dataset\":");
            bn_json_str(stdout, o.dataset);
            printf(",\"lib\":\"%s\",\"mode\":\"%s\",\"cache\":\"%s\","
                   "\"samples\":%zu,\"n\":%zu,\"dim\":%u,\"ef\":%u,"
                   "\"open_ms\":%.3f,\"first_query_ms\":%.3f,"
                   "\"open_plus_first_ms\":%.3f,\"recall_at_%zu\":%.4f,"
                   "\"first_pass_qps\":%.1f,\"hnswlib_over_this\":",
                   lm[0], lm[1], cold ? "cold" : "warm", m.n, d.n, d.dim,
                   (unsigned)o.ef.v[0], m.open, m.first, m.both, o.k,
                   m.recall, m.qps);
            bn_json_num(stdout, "%.2f", ref > 0 && m.both > 0 ? ref / m.both
                                                              : -1);
            printf("}\n");
        }
    }
    fflush(stdout);
}

} // namespace

int main(int argc, char **argv)
{
    Extra x;
    /* Take out the options of this program; bn_parse_args gets the rest,
    ** after a default --ef 64 that a user's --ef overrides. */
    std::vector<char *> rest{argv[0], const_cast<char *>("--ef"),
                             const_cast<char *>("64")};
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--cold")
            x.cold = true;
        else if (a == "--rebuild")
            x.rebuild = true;
        else if ((a == "--dir" || a == "--repeat") && i + 1 < argc) {
            if (a == "--dir")
                x.dir = argv[++i];
            else
                x.repeat =
                    (unsigned)bn_parse_ulong("--repeat", argv[++i], 1, 1000);
        } else
            rest.push_back(argv[i]);
    }
    rest.push_back(nullptr);
    bn_opts o;
    bn_data d;
    bn_parse_args((int)rest.size() - 1, rest.data(), &o,
                  "vecidx | hnswlib | all (default all); also --dir D, "
                  "--rebuild, --repeat N, --cold (see the source)");
    const char *lib = o.lib ? o.lib : "all";
    bool want_vx = !strcmp(lib, "vecidx") || !strcmp(lib, "all");
    bool want_hn = !strcmp(lib, "hnswlib") || !strcmp(lib, "all");
    if (!want_vx && !want_hn)
        bn_die("--lib %s: expected vecidx, hnswlib or all", lib);
    if (!strcmp(o.index, "ivfpq"))
        bn_die("--index ivfpq: only HNSW indexes are measured here");
    bn_load(&o, &d);
    if (mkdir(x.dir.c_str(), 0755) != 0 && errno != EEXIST)
        bn_die("--dir %s: %s", x.dir.c_str(), strerror(errno));

    std::string stem = x.dir + "/" + o.dataset + "-" +
                       bn_metric_name(o.metric) + "-M" + std::to_string(o.M) +
                       "-efc" + std::to_string(o.ef_construction);
    std::string vx_path = stem + ".vecidx", hn_path = stem + ".hnswlib";

    /* hnswlib gets unit vectors under cosine; vecidx the vectors as
    ** they are. */
    std::vector<float> hn_query_v(d.query, d.query + d.nq * d.dim);
    if (o.metric == BN_COS) normalise(hn_query_v.data(), d.nq, d.dim);
    try {
        if (want_vx && (x.rebuild || !file_exists(vx_path)))
            build_vecidx(o, d, vx_path);
        if (want_hn && (x.rebuild || !file_exists(hn_path))) {
            std::vector<float> b;
            const float *base = d.base;
            if (o.metric == BN_COS) {
                b.assign(d.base, d.base + d.n * d.dim);
                normalise(b.data(), d.n, d.dim);
                base = b.data();
            }
            build_hnswlib(o, d, base, hn_path);
        }
        /* The base is no longer needed; free it so that the memory figures
        ** below show only what opening costs. */
        free(d.base);
        d.base = nullptr;

        std::vector<Sample> all;
        for (int cold = 0; cold < (x.cold ? 2 : 1); cold++)
            for (unsigned r = 0; r < x.repeat; r++) {
                /* Take turns, each library going first every other time. */
                for (int turn = 0; turn < 2; turn++) {
                    bool vx_now = (turn == 0) == (r % 2 == 0);
                    if (vx_now && want_vx) {
                        all.push_back(
                            measure_vecidx(o, d, vx_path, false, cold));
                        print_sample(o, d, all.back(), r);
                        all.push_back(measure_vecidx(o, d, vx_path, true, cold));
                        print_sample(o, d, all.back(), r);
                    } else if (!vx_now && want_hn) {
                        all.push_back(measure_hnswlib(
                            o, d, hn_query_v.data(), hn_path, cold));
                        print_sample(o, d, all.back(), r);
                    }
                }
            }
        print_summary(o, d, all);
    } catch (const std::exception &e) {
        bn_die("hnswlib: %s", e.what());
    }
    bn_free_data(&d);
    return 0;
}
