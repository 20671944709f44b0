/*
** vecidx-ab -- search speed of two builds of vecidx.c in one process: "old"
** (a git revision) and "new" (the working tree, or another revision),
** built by `make bench-ab OLD=REV [NEW=REV]` (bench/ab-build.sh). Both
** build the same index from the same data, seed and build threads; then,
** for each --ef, their timed passes alternate (old first on even passes,
** new first on odd ones), so drift of the machine hits both alike.
**
** It takes vecidx-bench's options (bench/README.md); here --index defaults
** to hnsw and --build-threads to 1 (one thread makes the graph a function
** of code and seed alone, so the same code gives the same graph). Output:
** per ef one line per side in vecidx-bench's format (lib "old" or "new";
** qps is the best pass, qps_median the median), then a line comparing
** them (lib "new/old"). See bench/README.md, "Old-vs-new A/B".
**
** With --file DIR the sides are files instead: old builds the index and
** saves it to DIR/ab-old.vx; new opens that file as a private copy and
** saves it to DIR/ab-new.vx in its own format (the same graph). Then
** --open-rounds rounds, in turns, time a read-only open of each file and
** its first queries (lines with lib old, new and new/old: open_ms_median
** and so on), and the ef passes run on the two files opened read-only.
*/
#include "common.h" /* first: selects POSIX */

#include <sys/stat.h>

#include "ab-shim.h"
#include "latency.h"

/* --file only: a side's file. */
typedef struct ab_file {
    char path[4096];
    double save_s;         /* its vecidx_save */
    double private_open_s; /* new: the private open of old's file; old: -1 */
    double mb;             /* its size, MiB */
} ab_file;

typedef struct ab_side {
    const char *name; /* "old" or "new" */
    void *(*build)(const ab_build *b, char *err, size_t errsz);
    int (*search)(void *h, const float *q, size_t k, uint32_t ef,
                  uint64_t *keys, size_t *found);
    void (*close)(void *h);
    int (*save)(void *h, const char *path);
    void *(*open)(const char *path, int mode, char *err, size_t errsz);
    uint64_t (*memory)(void *h);
    const char *(*errmsg)(void *h);
    const char *(*version)(void);
    const char *(*simd)(void);
    const char *(*rev)(void);
    void *h;
    double build_s, rss_mb;
    double *qps; /* per timed pass of the current ef */
    int64_t *res;
    ab_file *file; /* --file only, else NULL */
} ab_side;

typedef struct ab_ctx {
    ab_side *s;
    const bn_data *d;
    size_t k;
    uint32_t ef;
} ab_ctx;

static void ab_query(void *arg, size_t qi, int64_t *out)
{
    ab_ctx *c = (ab_ctx *)arg;
    size_t found = 0, i;
    int rc = c->s->search(c->s->h, c->d->query + qi * c->d->dim, c->k, c->ef,
                          (uint64_t *)out, &found);
    if (rc != 0)
        bn_die("%s: vecidx_search failed (%d): %s", c->s->name, rc,
               c->s->errmsg(c->s->h));
    for (i = found; i < c->k; i++) out[i] = -1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median_of(const double *v, size_t n)
{
    double *s = (double *)bn_malloc(n * sizeof *s), m;
    memcpy(s, v, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_double);
    m = n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
    free(s);
    return m;
}

static double max_of(const double *v, size_t n)
{
    double m = 0;
    size_t i;
    for (i = 0; i < n; i++) m = v[i] > m ? v[i] : m;
    return m;
}

static double min_of(const double *v, size_t n)
{
    double m = n ? v[0] : 0;
    size_t i;
    for (i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
    return m;
}

static void build_side(ab_side *s, const bn_opts *o, const bn_data *d,
                       const uint64_t *keys)
{
    ab_build b;
    char err[512];
    double rss0 = bn_rss_mb(), t0, rss1;
    memset(&b, 0, sizeof b);
    b.kind = strcmp(o->index, "hnsw") == 0 ? 2 : 1;
    b.metric = o->metric; /* BN_L2/IP/COS have vecidx's values */
    b.dim = d->dim;
    b.M = o->M;
    b.ef_construction = o->ef_construction;
    b.threads = o->build_threads;
    /* the values of VECIDX_STORE_*, which this program cannot include */
    b.storage = !strcmp(o->storage, "f16")   ? 1
                : !strcmp(o->storage, "i8")  ? 2
                : !strcmp(o->storage, "bin") ? 3
                                             : 0;
    b.keep = (uint32_t)o->keep;
    b.refine = o->refine;
    b.seed = 42;
    b.n = d->n;
    b.keys = keys;
    b.base = d->base;
    t0 = bn_now();
    s->h = s->build(&b, err, sizeof err);
    s->build_s = bn_now() - t0;
    if (!s->h) bn_die("%s (%s): build failed: %s", s->name, s->rev(), err);
    rss1 = bn_rss_mb();
    s->rss_mb = rss0 >= 0 && rss1 >= 0 ? rss1 - rss0 : -1;
    bn_note("%s (%s, vecidx %s): built in %.2f s", s->name, s->rev(),
            s->version(), s->build_s);
}

/* "ef=N" for hnsw, "exact" for flat, as vecidx-bench names them. */
static void param_name(const bn_opts *o, uint32_t ef, char *buf, size_t size)
{
    if (strcmp(o->index, "hnsw") == 0)
        snprintf(buf, size, "ef=%u", (unsigned)ef);
    else
        snprintf(buf, size, "exact");
}

/* rev() as it may stand in a JSON string: without quotes, backslashes and
** control characters. */
static const char *rev_json(const ab_side *s, char *buf, size_t size)
{
    const char *src = s->rev();
    size_t i, n = 0;
    for (i = 0; src[i] && n + 1 < size; i++)
        if (src[i] != '"' && src[i] != '\\' && (unsigned char)src[i] >= 0x20)
            buf[n++] = src[i];
    buf[n] = 0;
    return buf;
}

static void print_side(const bn_opts *o, const bn_data *d, ab_side *s,
                       uint32_t ef, double recall)
{
    bn_result r;
    char extra[512];
    bn_result_init(&r, o, s->name);
    r.simd = s->simd();
    r.storage = o->storage;
    r.keep = o->keep;
    r.refine = o->refine ? o->refine : 1;
    r.lib_version = s->version();
    param_name(o, ef, r.param, sizeof r.param);
    snprintf(r.build, sizeof r.build, "M=%u,efc=%u", (unsigned)o->M,
             (unsigned)o->ef_construction);
    r.build_s = s->build_s;
    r.mem_mb = (double)s->memory(s->h) / (1024.0 * 1024.0);
    r.rss_mb = s->rss_mb;
    r.recall = recall;
    r.qps = max_of(s->qps, o->passes);
    {
        /* rev as a JSON string: git revisions need no escaping, but keep
        ** quotes and backslashes out whatever was passed */
        char rev[128];
        rev_json(s, rev, sizeof rev);
        snprintf(extra, sizeof extra, ",\"qps_median\":%.1f,\"rev\":\"%s\"",
                 median_of(s->qps, o->passes), rev);
        if (s->file) {
            /* --file: searched through a read-only open of its file */
            size_t len = strlen(extra);
            snprintf(extra + len, sizeof extra - len,
                     ",\"source\":\"file\",\"file_mb\":%.1f,\"save_s\":%.3f",
                     s->file->mb, s->file->save_s);
            len = strlen(extra);
            if (s->file->private_open_s >= 0)
                snprintf(extra + len, sizeof extra - len,
                         ",\"private_open_s\":%.3f", s->file->private_open_s);
        }
    }
    r.extra = extra;
    bn_print(o, d, &r);
}

static double file_mb(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) bn_die("%s: %s", path, strerror(errno));
    return (double)st.st_size / (1024.0 * 1024.0);
}

static void save_side(ab_side *s)
{
    double t0 = bn_now();
    int rc = s->save(s->h, s->file->path);
    s->file->save_s = bn_now() - t0;
    if (rc != 0)
        bn_die("%s (%s): vecidx_save to %s failed (%d): %s", s->name, s->rev(),
               s->file->path, rc, s->errmsg(s->h));
    s->file->mb = file_mb(s->file->path);
}

/* --file DIR: old builds the index and saves it to DIR/ab-old.vx; new
** opens that file as a private copy (VECIDX_PRIVATE: verified whole,
** writable in memory) and saves it to DIR/ab-new.vx in its own format.
** Both files then hold the same graph. Neither side stays open. */
static void make_files(ab_side *sides, ab_file *files, const bn_opts *o,
                       const bn_data *d, const uint64_t *keys, const char *dir)
{
    ab_side *old = &sides[0], *nw = &sides[1];
    char err[512];
    double t0;
    old->file = &files[0];
    nw->file = &files[1];
    snprintf(old->file->path, sizeof old->file->path, "%s/ab-old.vx", dir);
    snprintf(nw->file->path, sizeof nw->file->path, "%s/ab-new.vx", dir);
    if (strlen(dir) + 16 >= sizeof old->file->path)
        bn_die("--file: path too long");

    build_side(old, o, d, keys);
    save_side(old);
    old->close(old->h);
    old->h = NULL;
    old->file->private_open_s = -1;
    bn_note("old: saved to %s (%.1f MiB) in %.2f s", old->file->path,
            old->file->mb, old->file->save_s);

    t0 = bn_now();
    nw->h = nw->open(old->file->path, AB_OPEN_PRIVATE, err, sizeof err);
    nw->file->private_open_s = bn_now() - t0;
    if (!nw->h)
        bn_die("new (%s): private open of %s failed: %s", nw->rev(),
               old->file->path, err);
    save_side(nw);
    nw->close(nw->h);
    nw->h = NULL;
    nw->build_s = -1; /* prints as null: new built nothing */
    bn_note("new (%s, vecidx %s): not built: opened %s as a private copy in "
            "%.2f s and saved it to %s (%.1f MiB) in %.2f s; its build_s is "
            "null",
            nw->rev(), nw->version(), old->file->path, nw->file->private_open_s,
            nw->file->path, nw->file->mb, nw->file->save_s);
}

/* --open-rounds: per round, in turns (old first in even rounds), each side
** opens its file read-only, runs query 0 (k, the first ef), then queries 1
** to min(99, nq - 1), and closes it. One line per side with medians and
** minima in ms, then one comparing them (lib "new/old"). */
static void open_rounds(ab_side *sides, const bn_opts *o, const bn_data *d,
                        unsigned rounds)
{
    size_t nfirst = d->nq < 100 ? d->nq : 100, i, q;
    uint32_t ef = o->ef.v[0];
    double *ms[2][3]; /* per side: open, first query, queries 1..nfirst-1 */
    int64_t *res[2];
    int same = 1;
    unsigned r, j, m;
    lt_cpu c0, c1;
    double other, steal, med[2][3];
    char param[32], rev[128];
    static const char *const key_med[3] = {
        "open_ms_median", "first_query_ms_median", "first100_ms_median"};
    static const char *const key_min[3] = {"open_ms_min", "first_query_ms_min",
                                           "first100_ms_min"};
    static const char *const key_ratio[3] = {"open_ms_ratio_median",
                                             "first_query_ms_ratio_median",
                                             "first100_ms_ratio_median"};
    bn_kv j2;

    if (nfirst == 0) bn_die("--open-rounds: no queries");
    for (i = 0; i < 2; i++) {
        for (m = 0; m < 3; m++)
            ms[i][m] = (double *)bn_malloc(rounds * sizeof(double));
        res[i] = (int64_t *)bn_malloc(nfirst * o->k * sizeof(int64_t));
    }
    c0 = lt_cpu_now();
    for (r = 0; r < rounds; r++) {
        for (j = 0; j < 2; j++) {
            size_t s = r % 2 ? 1 - j : j; /* old first in even rounds */
            ab_side *sd = &sides[s];
            ab_ctx ctx;
            char err[512];
            double t0, t1, t2, t3;
            ctx.s = sd;
            ctx.d = d;
            ctx.k = o->k;
            ctx.ef = ef;
            t0 = bn_now();
            sd->h = sd->open(sd->file->path, AB_OPEN_RDONLY, err, sizeof err);
            t1 = bn_now();
            if (!sd->h)
                bn_die("%s (%s): read-only open of %s failed: %s", sd->name,
                       sd->rev(), sd->file->path, err);
            ab_query(&ctx, 0, res[s]);
            t2 = bn_now();
            for (q = 1; q < nfirst; q++) ab_query(&ctx, q, res[s] + q * o->k);
            t3 = bn_now();
            sd->close(sd->h);
            sd->h = NULL;
            ms[s][0][r] = (t1 - t0) * 1e3;
            ms[s][1][r] = (t2 - t1) * 1e3;
            ms[s][2][r] = (t3 - t2) * 1e3;
        }
        for (i = 0; i < nfirst * o->k; i++)
            if (res[0][i] != res[1][i]) same = 0;
        bn_note("open round %u: old open %.2f ms, first query %.3f ms, "
                "next %zu %.2f ms; new %.2f, %.3f, %.2f ms",
                r + 1, ms[0][0][r], ms[0][1][r], nfirst - 1, ms[0][2][r],
                ms[1][0][r], ms[1][1][r], ms[1][2][r]);
    }
    c1 = lt_cpu_now();
    lt_cpu_other(&c0, &c1, &other, &steal);
    if (!same)
        bn_note("warning: the first %zu queries' results differ between old "
                "and new",
                nfirst);
    param_name(o, ef, param, sizeof param);
    for (i = 0; i < 2; i++) {
        bn_kv_begin(&j2, stdout);
        bn_kv_str(&j2, "dataset", o->dataset);
        bn_kv_str(&j2, "lib", sides[i].name);
        bn_kv_str(&j2, "index", o->index);
        bn_kv_str(&j2, "mode", "open");
        bn_kv_str(&j2, "param", param);
        for (m = 0; m < 3; m++) {
            med[i][m] = median_of(ms[i][m], rounds);
            bn_kv_num(&j2, key_med[m], "%.3f", med[i][m]);
        }
        for (m = 0; m < 3; m++)
            bn_kv_num(&j2, key_min[m], "%.3f", min_of(ms[i][m], rounds));
        bn_kv_uint(&j2, "first100_queries", nfirst - 1);
        bn_kv_uint(&j2, "open_rounds", rounds);
        bn_kv_num(&j2, "file_mb", "%.1f", sides[i].file->mb);
        bn_kv_uint(&j2, "k", o->k);
        bn_kv_uint(&j2, "n", d->n);
        bn_kv_uint(&j2, "dim", d->dim);
        bn_kv_str(&j2, "simd", sides[i].simd());
        bn_kv_str(&j2, "version", sides[i].version());
        bn_kv_str(&j2, "rev", rev_json(&sides[i], rev, sizeof rev));
        bn_kv_end(&j2);
    }
    bn_kv_begin(&j2, stdout);
    bn_kv_str(&j2, "dataset", o->dataset);
    bn_kv_str(&j2, "lib", "new/old");
    bn_kv_str(&j2, "index", o->index);
    bn_kv_str(&j2, "mode", "open");
    bn_kv_str(&j2, "param", param);
    for (m = 0; m < 3; m++)
        bn_kv_num(&j2, key_ratio[m], "%.4f",
                  med[0][m] > 0 ? med[1][m] / med[0][m] : -1);
    bn_kv_bool(&j2, "same_results", same);
    bn_kv_str(&j2, "rev_old", sides[0].rev());
    bn_kv_str(&j2, "rev_new", sides[1].rev());
    bn_kv_num(&j2, "other_cpu", "%.2f", other);
    bn_kv_num(&j2, "steal_cpu", "%.2f", steal);
    bn_kv_uint(&j2, "open_rounds", rounds);
    bn_kv_uint(&j2, "n", d->n);
    bn_kv_uint(&j2, "dim", d->dim);
    bn_kv_str(&j2, "simd", sides[1].simd());
    bn_kv_end(&j2);
    for (i = 0; i < 2; i++) {
        for (m = 0; m < 3; m++) free(ms[i][m]);
        free(res[i]);
    }
}

int main(int argc, char **argv)
{
    static ab_side sides[2] = {
        {"old", ab_old_build, ab_old_search, ab_old_close, ab_old_save,
         ab_old_open, ab_old_memory, ab_old_errmsg, ab_old_version, ab_old_simd,
         ab_old_rev, NULL, 0, 0, NULL, NULL, NULL},
        {"new", ab_new_build, ab_new_search, ab_new_close, ab_new_save,
         ab_new_open, ab_new_memory, ab_new_errmsg, ab_new_version, ab_new_simd,
         ab_new_rev, NULL, 0, 0, NULL, NULL, NULL}};
    static ab_file files[2];
    bn_opts o;
    bn_data d;
    char **args = (char **)bn_malloc(((size_t)argc + 5) * sizeof *args);
    uint64_t *keys;
    double *ratio, pass_time = 1.0;
    const char *file_dir = NULL;
    unsigned long open_rounds_n = 7;
    int open_rounds_given = 0;
    size_t i, e;
    unsigned p;
    int a, nargs = 5;

    /* defaults that the user's options, coming later, override; the
    ** options of this program, --pass-time S, --file DIR and
    ** --open-rounds R, are taken out */
    args[0] = argv[0];
    args[1] = (char *)"--index";
    args[2] = (char *)"hnsw";
    args[3] = (char *)"--build-threads";
    args[4] = (char *)"1";
    for (a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--pass-time") && a + 1 < argc) {
            char *end;
            pass_time = strtod(argv[++a], &end);
            if (*end || !(pass_time >= 0) || pass_time > 3600)
                bn_die("--pass-time: '%s' is not a number of seconds", argv[a]);
        } else if (!strcmp(argv[a], "--file") && a + 1 < argc) {
            file_dir = argv[++a];
            if (!*file_dir) bn_die("--file: empty directory name");
        } else if (!strcmp(argv[a], "--open-rounds") && a + 1 < argc) {
            open_rounds_n = bn_parse_ulong("--open-rounds", argv[++a], 1,
                                           10000);
            open_rounds_given = 1;
        } else {
            args[nargs++] = argv[a];
        }
    }
    args[nargs] = NULL;
    bn_parse_args(nargs, args, &o,
                  "ignored (the sides are old and new); also --pass-time S: "
                  "each timed pass repeats the queries for about S seconds "
                  "(default 1); --file DIR: old builds and saves "
                  "DIR/ab-old.vx, new saves its private open of it as "
                  "DIR/ab-new.vx; read-only opens of the two are timed "
                  "(--open-rounds R rounds, default 7), then searched");
    if (o.batch) bn_die("--batch: single queries only");
    if (open_rounds_given && !file_dir) bn_die("--open-rounds: needs --file");
    if (!strcmp(o.index, "ivfpq")) bn_die("--index ivfpq: flat or hnsw only");
    bn_load(&o, &d);

    keys = (uint64_t *)bn_malloc(d.n * sizeof *keys);
    for (i = 0; i < d.n; i++) keys[i] = i;
    if (file_dir) {
        make_files(sides, files, &o, &d, keys, file_dir);
        open_rounds(sides, &o, &d, (unsigned)open_rounds_n);
        /* the ef passes search the two files, opened read-only */
        for (i = 0; i < 2; i++) {
            char err[512];
            sides[i].h = sides[i].open(sides[i].file->path, AB_OPEN_RDONLY, err,
                                       sizeof err);
            if (!sides[i].h)
                bn_die("%s (%s): read-only open of %s failed: %s",
                       sides[i].name, sides[i].rev(), sides[i].file->path, err);
            sides[i].rss_mb = -1; /* a mapping: nothing resident to speak of */
        }
    }
    for (i = 0; i < 2; i++) {
        if (!file_dir) build_side(&sides[i], &o, &d, keys);
        sides[i].qps = (double *)bn_malloc(o.passes * sizeof(double));
        sides[i].res = (int64_t *)bn_malloc(d.nq * o.k * sizeof(int64_t));
    }
    ratio = (double *)bn_malloc(o.passes * sizeof *ratio);

    for (e = 0; e < (strcmp(o.index, "hnsw") ? 1 : o.ef.n); e++) {
        uint32_t ef = o.ef.v[e];
        ab_ctx ctx[2];
        double rec[2], best[2], med[2];
        bn_kv j;
        char param[32];
        size_t reps = 1, r;
        lt_cpu c0, c1;
        double other, steal;
        for (i = 0; i < 2; i++) {
            double t;
            ctx[i].s = &sides[i];
            ctx[i].d = &d;
            ctx[i].k = o.k;
            ctx[i].ef = ef;
            /* one untimed pass each: caches and branch predictors warm;
            ** old's time sets how often a timed pass repeats the queries */
            t = bn_pass_single(d.nq, o.k, o.threads, ab_query, &ctx[i],
                               sides[i].res);
            if (i == 0 && t > 0 && pass_time / t > 1)
                reps = (size_t)ceil(pass_time / t);
        }
        c0 = lt_cpu_now();
        for (p = 0; p < o.passes; p++) {
            for (i = 0; i < 2; i++) {
                size_t s = p % 2 ? 1 - i : i; /* old first on even passes */
                double t = 0;
                for (r = 0; r < reps; r++)
                    t += bn_pass_single(d.nq, o.k, o.threads, ab_query, &ctx[s],
                                        sides[s].res);
                sides[s].qps[p] = t > 0 ? (double)(d.nq * reps) / t : 0;
            }
            ratio[p] = sides[0].qps[p] > 0 ? sides[1].qps[p] / sides[0].qps[p]
                                           : 0;
        }
        c1 = lt_cpu_now();
        lt_cpu_other(&c0, &c1, &other, &steal);
        for (i = 0; i < 2; i++) {
            rec[i] = bn_recall(&d, sides[i].res, o.k, sides[i].name);
            best[i] = max_of(sides[i].qps, o.passes);
            med[i] = median_of(sides[i].qps, o.passes);
            print_side(&o, &d, &sides[i], ef, rec[i]);
        }
        param_name(&o, ef, param, sizeof param);
        bn_kv_begin(&j, stdout);
        bn_kv_str(&j, "dataset", o.dataset);
        bn_kv_str(&j, "lib", "new/old");
        bn_kv_str(&j, "index", o.index);
        bn_kv_str(&j, "param", param);
        bn_kv_num(&j, "qps_ratio_best", "%.4f",
                  best[0] > 0 ? best[1] / best[0] : -1);
        bn_kv_num(&j, "qps_ratio_median", "%.4f",
                  med[0] > 0 ? med[1] / med[0] : -1);
        bn_kv_num(&j, "qps_ratio_paired_median", "%.4f",
                  median_of(ratio, o.passes));
        bn_kv_num(&j, "qps_ratio_paired_min", "%.4f", min_of(ratio, o.passes));
        bn_kv_num(&j, "qps_ratio_paired_max", "%.4f", max_of(ratio, o.passes));
        bn_kv_num(&j, "recall_old", "%.4f", rec[0]);
        bn_kv_num(&j, "recall_new", "%.4f", rec[1]);
        bn_kv_str(&j, "rev_old", sides[0].rev());
        bn_kv_str(&j, "rev_new", sides[1].rev());
        bn_kv_num(&j, "other_cpu", "%.2f", other);
        bn_kv_num(&j, "steal_cpu", "%.2f", steal);
        bn_kv_uint(&j, "passes", o.passes);
        bn_kv_uint(&j, "queries_per_pass", d.nq * reps);
        bn_kv_uint(&j, "threads", o.threads);
        bn_kv_uint(&j, "build_threads", o.build_threads);
        bn_kv_uint(&j, "n", d.n);
        bn_kv_uint(&j, "dim", d.dim);
        bn_kv_str(&j, "simd", sides[1].simd());
        bn_kv_end(&j);
    }
    for (i = 0; i < 2; i++) {
        sides[i].close(sides[i].h);
        free(sides[i].qps);
        free(sides[i].res);
    }
    free(ratio);
    free(keys);
    free(args);
    bn_free_data(&d);
    return 0;
}
