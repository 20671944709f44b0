/*
** bench/common.h -- code shared by bench/vecidx-bench.c (C11) and
** bench/compare.cpp (C++17): command line, .fvecs/.ivecs reading, recall,
** timing, memory, the JSON output line, and the admitted sets, exact
** neighbours and scan of filtered sweeps. Every function is static inline,
** so the header compiles cleanly as C and as C++ and each program keeps only
** what it uses. Include it before any other header: it selects POSIX.
**
** Output: one JSON object per line on stdout, one line per sweep value. The
** keys dataset, lib, index, param, build_s, mem_mb, recall_at_10, qps,
** threads, simd, n, dim and metric are stable; the others may grow.
*/
#ifndef VECIDX_BENCH_COMMON_H
#define VECIDX_BENCH_COMMON_H

#if !defined(__cplusplus) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h> /* malloc_trim */
#endif

#if defined(__GNUC__) || defined(__clang__)
#define BN_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define BN_NORETURN __attribute__((noreturn))
#else
#define BN_PRINTF(a, b)
#define BN_NORETURN
#endif

/* Metrics, as named on the command line and in the output. */
enum {
    BN_L2 = 1,
    BN_IP = 2,
    BN_COS = 3
};

#define BN_MAX_SWEEP 64

/* --filter-mode: how the admitted rows are drawn (see bn_filter_make). */
enum {
    BN_FILTER_RANDOM = 1,
    BN_FILTER_FAR = 2
};

/* --filter-form: how the admitted set is handed to the library. */
enum {
    BN_FORM_KEYS,
    BN_FORM_BITMAP,
    BN_FORM_CALLBACK,
    BN_FORM_CALLBACK_SEL,
    BN_NFORMS
};

static const char *const bn_form_names[BN_NFORMS] = {
    "keys", "bitmap", "callback", "callback-sel"};

typedef struct bn_list {
    size_t n;
    uint32_t v[BN_MAX_SWEEP];
} bn_list;

typedef struct bn_opts {
    const char *prog;       /* program name for messages */
    const char *base;       /* --base */
    const char *query;      /* --query */
    const char *gt;         /* --gt */
    const char *dataset;    /* --dataset, or derived from --base */
    const char *index;      /* flat | hnsw | ivfpq */
    const char *lib;        /* --lib (meaning up to the program) */
    int metric;             /* BN_*; 0 until resolved by bn_load */
    size_t k;               /* --k */
    size_t max_queries;     /* --max-queries, 0 = all */
    unsigned threads;       /* --threads: search threads */
    unsigned build_threads; /* --build-threads, resolved (never 0) */
    unsigned passes;        /* --passes: best of N */
    int batch;              /* --batch */
    uint32_t M, ef_construction, nlist, pq_m, pq_nbits;
    uint32_t refine;     /* --refine: re-rank factor, 0 = default (IVF-PQ:
                            none) */
    size_t train_size;   /* --train-size: IVF-PQ training rows, 0 = default */
    const char *storage; /* --storage: f32 | f16 | i8 | bin (vecidx flat and
                            HNSW) */
    int keep;            /* --keep: keep float32 vectors beside the codes */
    bn_list ef, nprobe;
    /* Filtered search; nsel 0 = unfiltered runs only. */
    size_t nsel;              /* --filter-selectivity values */
    double sel[BN_MAX_SWEEP]; /* each in (0, 1] */
    int filter_mode;          /* BN_FILTER_*, --filter-mode */
    size_t nforms;            /* --filter-form values */
    int forms[BN_NFORMS];     /* BN_FORM_*, in the order given */
    int filter_flat;          /* --filter-baseline-flat */
    uint64_t filter_seed;     /* --filter-seed */
    char dataset_buf[256];
    char path_buf[3][4096]; /* --data DIR expands into these */
} bn_opts;

typedef struct bn_data {
    float *base;  /* n x dim */
    float *query; /* nq x dim */
    int32_t *gt;  /* nq x gt_k */
    size_t n, nq, gt_k;
    uint32_t dim;
} bn_data;

/* One output line. bn_result_init sets the defaults: train_s,
** bytes_per_vec, lib_version and extra stay out of the line unless set;
** mem_mb and rss_mb print as null while negative. */
typedef struct bn_result {
    const char *lib;
    const char *index;
    const char *mode; /* "single" or "batch" */
    const char *simd;
    const char *lib_version;
    char param[64];  /* "ef=40", "nprobe=4", "exact" */
    char build[128]; /* build parameters, "M=16,efc=200" */
    double build_s;
    double train_s;       /* < 0: not reported */
    double bytes_per_vec; /* < 0: not reported */
    double mem_mb;        /* the index's own memory, MiB; < 0: null */
    double rss_mb;        /* VmRSS growth during the build, MiB; < 0: null */
    double recall;
    double qps;
    unsigned threads;
    /* How vectors are stored, as every line records: "f32", "f16", "i8",
    ** "bin", "sq8" (FAISS's 8-bit scalar quantizer), "pq" (IVF-PQ codes);
    ** keep: float32 vectors kept beside the codes; refine: the re-rank
    ** factor searches used, 1 = none. bn_result_init sets them from the
    ** options for the float32 and IVF-PQ indexes every library has. */
    const char *storage;
    int keep;
    unsigned refine;
    double vector_bytes; /* vecidx's stats vector_bytes; < 0: null */
    const char *extra;   /* more keys, ",\"key\":value..." as is, or NULL */
} bn_result;

static const char *bn_progname = "bench";

/* Set by the programs that run filtered sweeps before bn_parse_args, so
** that the others (vecidx-ab, persist-compare) refuse the --filter-*
** options instead of silently measuring unfiltered searches. */
static int bn_filter_supported = 0;

static inline void bn_die(const char *fmt, ...) BN_PRINTF(1, 2) BN_NORETURN;
static inline void bn_die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", bn_progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static inline void bn_note(const char *fmt, ...) BN_PRINTF(1, 2);
static inline void bn_note(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", bn_progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static inline void *bn_malloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p) bn_die("out of memory (%zu bytes)", size);
    return p;
}

static inline double bn_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline unsigned bn_ncpu(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1u;
}

/* Resident set size in MiB from /proc/self/status, or -1. Returns freed
** heap memory to the system first, so deltas measure live memory. */
static inline double bn_rss_mb(void)
{
    FILE *f;
    char line[256];
    double kb = -1;
#ifdef __GLIBC__
    malloc_trim(0);
#endif
    f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtod(line + 6, NULL);
            break;
        }
    }
    fclose(f);
    return kb < 0 ? -1 : kb / 1024.0;
}

static inline const char *bn_metric_name(int m)
{
    return m == BN_L2 ? "l2" : m == BN_IP ? "ip" : m == BN_COS ? "cos" : "?";
}

/* "l2", "ip", "cos" (also "euclidean", "cosine", "angular", "dot"), or 0. */
static inline int bn_metric_parse(const char *s)
{
    if (!strcmp(s, "l2") || !strcmp(s, "euclidean")) return BN_L2;
    if (!strcmp(s, "ip") || !strcmp(s, "dot")) return BN_IP;
    if (!strcmp(s, "cos") || !strcmp(s, "cosine") || !strcmp(s, "angular"))
        return BN_COS;
    return 0;
}

/* ---- Command line ---------------------------------------------------------
 */

static inline void bn_usage(FILE *f, const char *prog, const char *libs)
{
    static const char *const text[] = {
        "",
        "Builds an index over the base vectors (key of base row i = i), runs",
        "the queries and prints one JSON line per sweep value on stdout.",
        "",
        "  --base F            base vectors (.fvecs: per row int32 dim, then",
        "                      dim float32)",
        "  --query F           query vectors (.fvecs)",
        "  --gt F              ground truth (.ivecs: base row ids, closest",
        "                      first)",
        "  --data DIR          DIR/base.fvecs, DIR/query.fvecs, DIR/gt.ivecs",
        "  --dataset NAME      name in the output (default: base file name",
        "                      without extension, or its directory's name if",
        "                      that is 'base')",
        "  --lib L             see below",
        "  --index I           flat | hnsw | ivfpq (default flat)",
        "  --metric M          l2 | ip | cos (default: the 'metric' file next",
        "                      to the base file, else l2)",
        "  --k K               neighbours per query, recall@K (default 10)",
        "  --threads N         search threads (default 1): without --batch, N",
        "                      threads each run single queries; with --batch,",
        "                      N workers",
        "  --batch             time all queries as one batch call",
        "  --passes N          timing passes, the best counts (default 3)",
        "  --max-queries N     use the first N queries only",
        "  --build-threads N   threads for building (default: all cores)",
        "  --ef LIST           hnsw search breadths (default",
        "                      10,16,24,32,48,64,128)",
        "  --nprobe LIST       ivfpq lists probed (default 1,2,4,8,16,32)",
        "  --M N               hnsw links per node (default 16)",
        "  --ef-construction N hnsw build breadth (default 200)",
        "  --nlist N           ivfpq lists (default 0: 4*sqrt(t), at most",
        "                      t/39, for t training vectors)",
        "  --pq-m N            ivfpq sub-quantizers = code bytes (default 0:",
        "                      min(64, max(1, dim/4)))",
        "  --pq-nbits N        ivfpq bits per code (default 8)",
        "  --refine R          ivfpq: keep the full vectors and re-rank the",
        "                      k*R best exactly (default: no re-ranking);",
        "                      vecidx flat and hnsw with a compressed",
        "                      --storage and --keep: re-rank the k*R best by",
        "                      code distance (default 20 for bin, else 2)",
        "  --storage S         vecidx flat and hnsw: f32 (default), f16 (half",
        "                      precision), i8 (a byte per dimension) or bin",
        "                      (a bit per dimension; needs --keep, cos or ip)",
        "  --keep              with a compressed --storage: keep the float32",
        "                      vectors too, to re-rank exactly",
        "  --train-size N      ivfpq: train on the first N base vectors",
        "                      (default min(n, 100000))",
        "  --filter-selectivity LIST",
        "                      filtered search (vecidx-bench; vecidx-compare",
        "                      --lib faiss --index ivfpq): shares of the base",
        "                      rows a search may return, in (0, 1], e.g.",
        "                      0.5,0.1,0.01,0.001; one line per selectivity,",
        "                      sweep value and form, with the baselines",
        "                      scan_qps and unfiltered_qps timed in turns",
        "  --filter-mode M     random (default: round(s*n) rows drawn at",
        "                      random) | far (the round(s*n) rows projecting",
        "                      farthest on a random direction)",
        "  --filter-form LIST  keys | bitmap | callback | callback-sel",
        "                      (callback and the true selectivity), comma",
        "                      separated (default keys)",
        "  --filter-baseline-flat",
        "                      callback forms: also time a flat vecidx index",
        "                      with the same callback (flat_cb_qps)",
        "  --filter-seed N     seed of the admitted sets (default 20261203)",
        "  --help              this text",
        "",
        "Output keys: dataset lib index param build_s mem_mb recall_at_K qps",
        "threads simd n dim metric, then rss_mb mode k nq build_threads",
        "passes build ... mem_mb and rss_mb are MiB; build_s is the wall time",
        "of adding the whole base (training included); qps = queries / best",
        "pass time. storage (f32 f16 i8 bin sq8 pq), keep, refine (1 = none)",
        "and vector_bytes (vecidx's bytes per vector searched, else null)",
        "are on every line. ivfpq adds train_s and bytes_per_vec (growth",
        "of the resident set while adding, after training, per vector).",
        "Filtered lines add selectivity filter_mode filter_form admitted",
        "filter_seed recall (= recall_at_K, against the exact neighbours",
        "among the admitted rows) not_admitted scan_qps scan_queries",
        "unfiltered_qps unfiltered_recall flat_cb_qps flat_cb_recall",
        "qps_vs_scan qps_vs_unfiltered bits_scan_qps qps_vs_bits_scan",
        "(see bench/README.md).",
    };
    size_t i;
    fprintf(f, "usage: %s --base F --query F --gt F [options]\n", prog);
    fprintf(f, "       %s --data DIR [options]\n", prog);
    for (i = 0; i < sizeof text / sizeof text[0]; i++)
        fprintf(f, "%s\n", text[i]);
    fprintf(f, "--lib: %s\n", libs);
}

static inline unsigned long bn_parse_ulong(const char *opt, const char *s,
                                           unsigned long lo, unsigned long hi)
{
    char *end;
    unsigned long v;
    errno = 0;
    if (!s || !*s || *s == '-') bn_die("%s: expected a number", opt);
    v = strtoul(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        bn_die("%s: '%s' is not a number in %lu..%lu", opt, s, lo, hi);
    return v;
}

static inline void bn_parse_list(const char *opt, const char *s, bn_list *l)
{
    char buf[1024], *tok, *save = NULL;
    if (!s || strlen(s) >= sizeof buf) bn_die("%s: bad list", opt);
    strcpy(buf, s);
    l->n = 0;
    for (tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (l->n == BN_MAX_SWEEP)
            bn_die("%s: more than %d values", opt, BN_MAX_SWEEP);
        l->v[l->n++] = (uint32_t)bn_parse_ulong(opt, tok, 1, 0xFFFFFFFFul);
    }
    if (l->n == 0) bn_die("%s: empty list", opt);
}

/* --filter-selectivity: comma-separated fractions in (0, 1]. */
static inline void bn_parse_sel(const char *opt, const char *s, bn_opts *o)
{
    char buf[1024], *tok, *save = NULL, *end;
    if (!s || strlen(s) >= sizeof buf) bn_die("%s: bad list", opt);
    strcpy(buf, s);
    o->nsel = 0;
    for (tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        double v;
        if (o->nsel == BN_MAX_SWEEP)
            bn_die("%s: more than %d values", opt, BN_MAX_SWEEP);
        errno = 0;
        v = strtod(tok, &end);
        if (errno || *end || !(v > 0) || v > 1)
            bn_die("%s: '%s' is not a fraction in (0, 1]", opt, tok);
        o->sel[o->nsel++] = v;
    }
    if (o->nsel == 0) bn_die("%s: empty list", opt);
}

/* --filter-form: comma-separated form names, each at most once. */
static inline void bn_parse_forms(const char *opt, const char *s, bn_opts *o)
{
    char buf[256], *tok, *save = NULL;
    if (!s || strlen(s) >= sizeof buf) bn_die("%s: bad list", opt);
    strcpy(buf, s);
    o->nforms = 0;
    for (tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        int f, j;
        for (f = 0; f < BN_NFORMS; f++)
            if (!strcmp(tok, bn_form_names[f])) break;
        if (f == BN_NFORMS)
            bn_die("%s: '%s' is not keys, bitmap, callback or callback-sel",
                   opt, tok);
        for (j = 0; j < (int)o->nforms; j++)
            if (o->forms[j] == f) bn_die("%s: '%s' given twice", opt, tok);
        o->forms[o->nforms++] = f;
    }
    if (o->nforms == 0) bn_die("%s: empty list", opt);
}

/* Parses argv into *o. `libs` describes --lib for the help text. */
static inline void bn_parse_args(int argc, char **argv, bn_opts *o,
                                 const char *libs)
{
    int i, filter_opt = 0;
    const char *data = NULL;
    memset(o, 0, sizeof *o);
    o->prog = argc > 0 && argv[0] ? argv[0] : "bench";
    {
        const char *slash = strrchr(o->prog, '/');
        if (slash) o->prog = slash + 1;
    }
    bn_progname = o->prog;
    o->index = "flat";
    o->k = 10;
    o->threads = 1;
    o->passes = 3;
    o->M = 16;
    o->ef_construction = 200;
    o->pq_nbits = 8;
    bn_parse_list("--ef", "10,16,24,32,48,64,128", &o->ef);
    bn_parse_list("--nprobe", "1,2,4,8,16,32", &o->nprobe);
    o->filter_mode = BN_FILTER_RANDOM;
    o->filter_seed = 20261203;

    for (i = 1; i < argc; i++) {
        char name[64];
        const char *arg = argv[i], *val = NULL, *eq;
        if (strncmp(arg, "--", 2) != 0)
            bn_die("unexpected argument '%s' (try --help)", arg);
        eq = strchr(arg, '=');
        if (eq) {
            size_t len = (size_t)(eq - arg);
            if (len >= sizeof name) bn_die("unknown option '%s'", arg);
            memcpy(name, arg, len);
            name[len] = 0;
            val = eq + 1;
        } else {
            if (strlen(arg) >= sizeof name) bn_die("unknown option '%s'", arg);
            strcpy(name, arg);
        }
        if (!strcmp(name, "--help") || !strcmp(name, "-h")) {
            bn_usage(stdout, o->prog, libs);
            exit(0);
        }
        if (!strcmp(name, "--batch")) {
            if (val) bn_die("--batch takes no value");
            o->batch = 1;
            continue;
        }
        if (!strcmp(name, "--keep")) {
            if (val) bn_die("--keep takes no value");
            o->keep = 1;
            continue;
        }
        if (!strncmp(name, "--filter-", 9) && !bn_filter_supported)
            bn_die("%s: this program runs no filtered searches (see "
                   "vecidx-bench and vecidx-compare)",
                   name);
        if (!strcmp(name, "--filter-baseline-flat")) {
            if (val) bn_die("--filter-baseline-flat takes no value");
            o->filter_flat = 1;
            filter_opt = 1;
            continue;
        }
        if (!val) {
            if (i + 1 >= argc) bn_die("%s needs a value", name);
            val = argv[++i];
        }
        if (!strcmp(name, "--base"))
            o->base = val;
        else if (!strcmp(name, "--query"))
            o->query = val;
        else if (!strcmp(name, "--gt"))
            o->gt = val;
        else if (!strcmp(name, "--data"))
            data = val;
        else if (!strcmp(name, "--dataset"))
            o->dataset = val;
        else if (!strcmp(name, "--lib"))
            o->lib = val;
        else if (!strcmp(name, "--index")) {
            if (strcmp(val, "flat") && strcmp(val, "hnsw") &&
                strcmp(val, "ivfpq"))
                bn_die("--index: '%s' is not flat, hnsw or ivfpq", val);
            o->index = val;
        } else if (!strcmp(name, "--metric")) {
            o->metric = bn_metric_parse(val);
            if (!o->metric) bn_die("--metric: '%s' is not l2, ip or cos", val);
        } else if (!strcmp(name, "--k"))
            o->k = bn_parse_ulong(name, val, 1, 100000);
        else if (!strcmp(name, "--threads"))
            o->threads = (unsigned)bn_parse_ulong(name, val, 1, 4096);
        else if (!strcmp(name, "--build-threads"))
            o->build_threads = (unsigned)bn_parse_ulong(name, val, 0, 4096);
        else if (!strcmp(name, "--passes"))
            o->passes = (unsigned)bn_parse_ulong(name, val, 1, 1000);
        else if (!strcmp(name, "--max-queries"))
            o->max_queries = bn_parse_ulong(name, val, 1, 0xFFFFFFFFul);
        else if (!strcmp(name, "--ef"))
            bn_parse_list(name, val, &o->ef);
        else if (!strcmp(name, "--nprobe"))
            bn_parse_list(name, val, &o->nprobe);
        else if (!strcmp(name, "--M"))
            o->M = (uint32_t)bn_parse_ulong(name, val, 2, 65536);
        else if (!strcmp(name, "--ef-construction"))
            o->ef_construction = (uint32_t)bn_parse_ulong(name, val, 1,
                                                          1u << 24);
        else if (!strcmp(name, "--nlist"))
            o->nlist = (uint32_t)bn_parse_ulong(name, val, 0, 1u << 30);
        else if (!strcmp(name, "--pq-m"))
            o->pq_m = (uint32_t)bn_parse_ulong(name, val, 0, 65536);
        else if (!strcmp(name, "--pq-nbits"))
            o->pq_nbits = (uint32_t)bn_parse_ulong(name, val, 1, 16);
        else if (!strcmp(name, "--refine"))
            o->refine = (uint32_t)bn_parse_ulong(name, val, 0, 100000);
        else if (!strcmp(name, "--train-size"))
            o->train_size = bn_parse_ulong(name, val, 1, 0xFFFFFFFFul);
        else if (!strcmp(name, "--storage")) {
            if (strcmp(val, "f32") && strcmp(val, "f16") && strcmp(val, "i8") &&
                strcmp(val, "bin"))
                bn_die("--storage: '%s' is not f32, f16, i8 or bin", val);
            o->storage = val;
        } else if (!strcmp(name, "--filter-selectivity"))
            bn_parse_sel(name, val, o);
        else if (!strcmp(name, "--filter-mode")) {
            if (!strcmp(val, "random"))
                o->filter_mode = BN_FILTER_RANDOM;
            else if (!strcmp(val, "far"))
                o->filter_mode = BN_FILTER_FAR;
            else
                bn_die("--filter-mode: '%s' is not random or far", val);
            filter_opt = 1;
        } else if (!strcmp(name, "--filter-form")) {
            bn_parse_forms(name, val, o);
            filter_opt = 1;
        } else if (!strcmp(name, "--filter-seed")) {
            o->filter_seed = bn_parse_ulong(name, val, 0, 0xFFFFFFFFul);
            filter_opt = 1;
        } else
            bn_die("unknown option '%s' (try --help)", name);
    }
    if (filter_opt && !o->nsel)
        bn_die("--filter-mode, --filter-form, --filter-seed and "
               "--filter-baseline-flat need --filter-selectivity");
    if (o->nsel && !o->nforms) {
        o->nforms = 1;
        o->forms[0] = BN_FORM_KEYS;
    }
    if (o->build_threads == 0) o->build_threads = bn_ncpu();
    if (!o->storage) o->storage = "f32";
    if (strcmp(o->storage, "f32") != 0 && !strcmp(o->index, "ivfpq"))
        bn_die("--storage %s: ivfpq stores product-quantized codes; --storage "
               "applies to flat and hnsw",
               o->storage);
    if (o->keep && !strcmp(o->storage, "f32"))
        bn_die("--keep needs --storage f16, i8 or bin (f32 indexes hold the "
               "float32 vectors already)");
    if (!strcmp(o->storage, "bin") && !o->keep)
        bn_die("--storage bin needs --keep: the bits pick candidates, the "
               "float32 vectors rank them");
    if (o->refine > 1 && strcmp(o->storage, "f32") && !o->keep)
        bn_note("warning: --refine %u does nothing without --keep: there are "
                "no float32 vectors to re-rank with",
                (unsigned)o->refine);

    if (data) {
        static const char *const names[3] = {"base.fvecs", "query.fvecs",
                                             "gt.ivecs"};
        const char **dst[3];
        int j;
        dst[0] = &o->base;
        dst[1] = &o->query;
        dst[2] = &o->gt;
        for (j = 0; j < 3; j++) {
            if (*dst[j]) continue; /* an explicit file wins */
            if ((size_t)snprintf(o->path_buf[j], sizeof o->path_buf[j], "%s/%s",
                                 data, names[j]) >= sizeof o->path_buf[j])
                bn_die("--data: path too long");
            *dst[j] = o->path_buf[j];
        }
    }
    if (!o->base || !o->query || !o->gt)
        bn_die("--base, --query and --gt (or --data DIR) are required (try "
               "--help)");

    if (!o->dataset) {
        /* base file name without extension; "DIR/NAME/base.fvecs" -> NAME */
        const char *b = o->base, *s = strrchr(b, '/');
        const char *name = s ? s + 1 : b;
        size_t len = strcspn(name, ".");
        if (len == 4 && !strncmp(name, "base", 4) && s && s > b) {
            const char *end = s, *start;
            while (end > b && end[-1] == '/') end--; /* "DIR//base.fvecs" */
            start = end;
            while (start > b && start[-1] != '/') start--;
            if (end - start == 1 && *start == '.')
                start = end; /* "./base.fvecs" */
            if (end > start) {
                name = start;
                len = (size_t)(end - start);
            }
        }
        if (len >= sizeof o->dataset_buf) len = sizeof o->dataset_buf - 1;
        memcpy(o->dataset_buf, name, len);
        o->dataset_buf[len] = 0;
        o->dataset = o->dataset_buf;
    }
}

/* ---- Data ---------------------------------------------------------------- */

/* Reads up to max_rows (0 = all) records of a .fvecs or .ivecs file (both
** have 4-byte elements) into one malloc'd row-major array. */
static inline void *bn_read_vecs(const char *path, size_t max_rows,
                                 size_t *rows, uint32_t *dim)
{
    FILE *f = fopen(path, "rb");
    int32_t d, d2;
    off_t size;
    size_t rec, n, i;
    char *buf;
    if (!f) bn_die("%s: %s", path, strerror(errno));
    if (fread(&d, 4, 1, f) != 1) bn_die("%s: empty or unreadable file", path);
    if (d <= 0 || d > (1 << 24))
        bn_die("%s: first record has dimension %ld: not a .fvecs/.ivecs file",
               path, (long)d);
    if (fseeko(f, 0, SEEK_END) != 0 || (size = ftello(f)) < 0)
        bn_die("%s: cannot seek: %s", path, strerror(errno));
    rec = 4 * ((size_t)d + 1);
    if ((size_t)size % rec != 0)
        bn_die("%s: size %lld is not a multiple of the record size %zu "
               "(dimension %ld): truncated or not a .fvecs/.ivecs file",
               path, (long long)size, rec, (long)d);
    n = (size_t)size / rec;
    if (max_rows && n > max_rows) n = max_rows;
    buf = (char *)bn_malloc(n * (size_t)d * 4);
    rewind(f);
    for (i = 0; i < n; i++) {
        if (fread(&d2, 4, 1, f) != 1 ||
            fread(buf + i * (size_t)d * 4, 4, (size_t)d, f) != (size_t)d)
            bn_die("%s: read error at record %zu", path, i);
        if (d2 != d)
            bn_die("%s: record %zu has dimension %ld, the first has %ld", path,
                   i, (long)d2, (long)d);
    }
    fclose(f);
    *rows = n;
    *dim = (uint32_t)d;
    return buf;
}

/* Metric from the one-word file "metric" beside the base file, or 0. */
static inline int bn_metric_file(const char *base, char *path, size_t pathsz)
{
    const char *s = strrchr(base, '/');
    char word[32] = {0};
    FILE *f;
    int n = s ? snprintf(path, pathsz, "%.*s/metric", (int)(s - base), base)
              : snprintf(path, pathsz, "metric");
    if (n < 0 || (size_t)n >= pathsz) return 0;
    f = fopen(path, "r");
    if (!f) return 0;
    if (fscanf(f, "%31s", word) != 1) word[0] = 0;
    fclose(f);
    if (!bn_metric_parse(word))
        bn_die("%s: unknown metric '%s' (expected l2, ip or cos)", path, word);
    return bn_metric_parse(word);
}

/* Loads base, queries and ground truth, checks they fit together and
** resolves o->metric. */
static inline void bn_load(bn_opts *o, bn_data *d)
{
    uint32_t qdim, gdim;
    size_t gt_rows, i;
    char mpath[4096];
    int fm;

    memset(d, 0, sizeof *d);
    d->base = (float *)bn_read_vecs(o->base, 0, &d->n, &d->dim);
    d->query = (float *)bn_read_vecs(o->query, o->max_queries, &d->nq, &qdim);
    if (qdim != d->dim)
        bn_die("dimension mismatch: %s has dimension %u, %s has %u", o->base,
               d->dim, o->query, qdim);
    d->gt = (int32_t *)bn_read_vecs(o->gt, d->nq, &gt_rows, &gdim);
    d->gt_k = gdim;
    if (gt_rows < d->nq)
        bn_die("%s has %zu rows for %zu queries", o->gt, gt_rows, d->nq);
    if (d->gt_k < o->k)
        bn_die("%s holds %zu neighbours per query, fewer than --k %zu", o->gt,
               d->gt_k, o->k);
    for (i = 0; i < d->nq * d->gt_k; i++)
        if (d->gt[i] < 0 || (size_t)d->gt[i] >= d->n)
            bn_die("%s: id %ld (query %zu) is not a row of %s (%zu rows)",
                   o->gt, (long)d->gt[i], i / d->gt_k, o->base, d->n);
    fm = bn_metric_file(o->base, mpath, sizeof mpath);
    if (!o->metric) {
        if (fm)
            o->metric = fm;
        else {
            o->metric = BN_L2;
            bn_note("no --metric and no %s: assuming l2", mpath);
        }
    } else if (fm && fm != o->metric) {
        bn_note("warning: --metric %s but %s says %s: the ground truth may not "
                "match",
                bn_metric_name(o->metric), mpath, bn_metric_name(fm));
    }
}

static inline void bn_free_data(bn_data *d)
{
    free(d->base);
    free(d->query);
    free(d->gt);
    memset(d, 0, sizeof *d);
}

/* ---- IVF-PQ ---------------------------------------------------------------
** Both programs resolve the IVF-PQ defaults the same way, so that vecidx
** and FAISS get the same lists, code size and training rows. */

/* Training rows: the first --train-size base vectors, default 100000. */
static inline size_t bn_train_rows(const bn_opts *o, size_t n)
{
    size_t t = o->train_size ? o->train_size : 100000;
    return t < n ? t : n;
}

/* --nlist, or vecidx's documented choice for t training vectors:
** 4*sqrt(t), at most t/39 (so k-means has 39 points per centroid), at
** least 1. */
static inline uint32_t bn_nlist(const bn_opts *o, size_t t)
{
    size_t nl = (size_t)(4 * sqrt((double)t)), most = t / 39;
    if (o->nlist) return o->nlist;
    if (nl > most) nl = most;
    return nl < 1 ? 1u : (uint32_t)nl;
}

/* --pq-m, or vecidx's documented choice: min(64, max(1, dim/4)). */
static inline uint32_t bn_pq_m(const bn_opts *o, uint32_t dim)
{
    uint32_t m = dim / 4;
    if (o->pq_m) return o->pq_m;
    return m < 1 ? 1u : m > 64 ? 64u : m;
}

/* Mean over queries of |results ∩ gt[:k]| / k. res holds nq rows of k ids,
** -1 where a query returned fewer. Warns about duplicate or out-of-range
** ids, which a correct index never returns. */
static inline double bn_recall(const bn_data *d, const int64_t *res, size_t k,
                               const char *what)
{
    size_t q, i, j, hits = 0, dups = 0, bad = 0, missing = 0;
    for (q = 0; q < d->nq; q++) {
        const int64_t *r = res + q * k;
        const int32_t *g = d->gt + q * d->gt_k;
        for (i = 0; i < k; i++) {
            if (r[i] < 0)
                missing++;
            else if ((size_t)r[i] >= d->n)
                bad++;
            for (j = 0; j < i; j++)
                if (r[i] >= 0 && r[j] == r[i]) {
                    dups++;
                    break;
                }
        }
        for (j = 0; j < k; j++)
            for (i = 0; i < k; i++)
                if (r[i] == (int64_t)g[j]) {
                    hits++;
                    break;
                }
    }
    if (dups || bad)
        bn_note("warning: %s: %zu duplicate and %zu out-of-range result ids",
                what, dups, bad);
    if (missing && d->n >= k)
        bn_note("warning: %s: %zu result slots empty (fewer than k found)",
                what, missing);
    return d->nq ? (double)hits / ((double)d->nq * (double)k) : 0.0;
}

/* ---- Timing ----------------------------------------------------------------
 */

/* Runs query qi and writes its k result ids (or -1) to out. */
typedef void (*bn_query_fn)(void *ctx, size_t qi, int64_t *out);

typedef struct bn_worker {
    bn_query_fn fn;
    void *ctx;
    size_t first, step, nq, k;
    int64_t *res;
} bn_worker;

static inline void *bn_worker_main(void *arg)
{
    bn_worker *w = (bn_worker *)arg;
    size_t q;
    for (q = w->first; q < w->nq; q += w->step)
        w->fn(w->ctx, q, w->res + q * w->k);
    return NULL;
}

/* One pass of nq single queries on `threads` threads (queries dealt out
** round-robin); returns the wall time in seconds. */
static inline double bn_pass_single(size_t nq, size_t k, unsigned threads,
                                    bn_query_fn fn, void *ctx, int64_t *res)
{
    double t0;
    unsigned t;
    if (threads <= 1) {
        size_t q;
        t0 = bn_now();
        for (q = 0; q < nq; q++) fn(ctx, q, res + q * k);
        return bn_now() - t0;
    } else {
        bn_worker *w = (bn_worker *)bn_malloc(threads * sizeof *w);
        pthread_t *tid = (pthread_t *)bn_malloc(threads * sizeof *tid);
        int rc;
        t0 = bn_now();
        for (t = 0; t < threads; t++) {
            w[t].fn = fn;
            w[t].ctx = ctx;
            w[t].first = t;
            w[t].step = threads;
            w[t].nq = nq;
            w[t].k = k;
            w[t].res = res;
            if ((rc = pthread_create(&tid[t], NULL, bn_worker_main, &w[t])) !=
                0)
                bn_die("pthread_create: %s", strerror(rc));
        }
        for (t = 0; t < threads; t++) pthread_join(tid[t], NULL);
        t0 = bn_now() - t0;
        free(w);
        free(tid);
        return t0;
    }
}

/* Runs all queries at once, writing nq x k ids (or -1) to res. */
typedef void (*bn_batch_fn)(void *ctx, int64_t *res);

/* One timed pass over the first nq queries: single queries on o->threads
** threads, or the batch function when o->batch (and batch_fn is not
** NULL; it runs every query). Returns the wall time in seconds. */
static inline double bn_pass(const bn_opts *o, size_t nq, bn_query_fn fn,
                             bn_batch_fn batch_fn, void *ctx, int64_t *res)
{
    if (o->batch && batch_fn) {
        double t0 = bn_now();
        batch_fn(ctx, res);
        return bn_now() - t0;
    }
    return bn_pass_single(nq, o->k, o->threads, fn, ctx, res);
}

/* Best of o->passes passes; single queries on o->threads threads, or the
** batch function when o->batch (and batch_fn is not NULL). Returns QPS. */
static inline double bn_measure(const bn_opts *o, const bn_data *d,
                                bn_query_fn fn, bn_batch_fn batch_fn, void *ctx,
                                int64_t *res)
{
    double best = HUGE_VAL, t;
    unsigned p;
    for (p = 0; p < o->passes; p++) {
        t = bn_pass(o, d->nq, fn, batch_fn, ctx, res);
        if (t < best) best = t;
    }
    return best > 0 ? (double)d->nq / best : 0.0;
}

/* Several searches measured in turns: a machine shared with others drifts
** by tens of percent within minutes, so a ratio between searches means
** something only if their passes alternate. Each pass runs every runner
** once, starting one further each time so that none always follows the
** same one; each keeps its best pass. */
typedef struct bn_runner {
    bn_query_fn fn;
    bn_batch_fn batch_fn; /* NULL: single queries, also with --batch */
    void *ctx;
    size_t nq;      /* queries per pass: the first nq (batch: all) */
    int64_t *res;   /* results of the last pass */
    double best;    /* seconds of the best pass */
    size_t best_nq; /* queries that pass ran */
    unsigned reps;  /* times a pass runs the queries */
} bn_runner;

/* A pass shorter than this is repeated until it lasts about as long (the
** count fixed after the first pass): at a few microseconds per query a
** single pass is over in a millisecond, and a descheduled thread or a
** timer tick then decides the figure. */
#define BN_MIN_PASS_S 0.1

static inline void bn_run_interleaved(const bn_opts *o, bn_runner *r, size_t n,
                                      size_t all_nq)
{
    unsigned p, rep;
    size_t i;
    for (i = 0; i < n; i++) {
        r[i].best = HUGE_VAL;
        r[i].reps = 1;
    }
    for (p = 0; p < o->passes; p++)
        for (i = 0; i < n; i++) {
            bn_runner *x = &r[(i + p) % n];
            int whole = o->batch && x->batch_fn;
            double t = 0;
            for (rep = 0; rep < x->reps; rep++)
                t += bn_pass(o, x->nq, x->fn, x->batch_fn, x->ctx, x->res);
            t /= x->reps;
            if (t < x->best) {
                x->best = t;
                x->best_nq = whole ? all_nq : x->nq;
            }
            if (p == 0 && t < BN_MIN_PASS_S)
                x->reps = t > BN_MIN_PASS_S / 10000
                              ? (unsigned)ceil(BN_MIN_PASS_S / t)
                              : 10000u;
        }
}

static inline double bn_runner_qps(const bn_runner *r)
{
    return r->best > 0 && r->best < HUGE_VAL ? (double)r->best_nq / r->best
                                             : 0.0;
}

/* ---- Filtered search -------------------------------------------------------
** --filter-selectivity s: a search may return only the round(s*n) admitted
** base rows. Both programs draw the same admitted sets with this code and
** seed, find their exact neighbours by scanning them (bn_scan_query), and
** time the library's filtered search beside the plans a user has without
** the feature: a scan of the admitted rows, and the same index unfiltered
** (whose results would then need filtering and topping up). */

/* splitmix64: every admitted set follows from --filter-seed alone, so
** vecidx-bench and vecidx-compare filter the same rows. */
static inline uint64_t bn_splitmix64(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Uniform in [0, 1), 53 bits. */
static inline double bn_uniform(uint64_t *s)
{
    return (double)(bn_splitmix64(s) >> 11) * (1.0 / 9007199254740992.0);
}

typedef struct bn_filter {
    double selectivity; /* as asked */
    size_t n;           /* base rows */
    size_t m;           /* admitted rows: round(selectivity * n) */
    uint64_t *keys;     /* the admitted rows (= keys), ascending */
    uint64_t *bitmap;   /* row r admitted: bit r % 64 of word r / 64 */
    int64_t *gt;        /* nq x k exact neighbours among them, -1 past m */
    size_t scan_nq;     /* queries of a timed scan pass (bn_filter_truth) */
} bn_filter;

typedef struct bn_far_row {
    float proj;
    uint32_t row;
} bn_far_row;

static inline int bn_far_cmp(const void *a, const void *b)
{
    const bn_far_row *x = (const bn_far_row *)a, *y = (const bn_far_row *)b;
    if (x->proj != y->proj) return x->proj > y->proj ? -1 : 1;
    return x->row < y->row ? -1 : x->row > y->row;
}

static inline int bn_u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* --filter-mode far: the base rows by descending projection on one
** pseudo-random unit direction (for cos, of each row's direction, since
** cosine sees nothing else). A prefix of this order is the admitted set:
** a slab at the edge of the data, away from where queries drawn like the
** base fall, so that the nearest admitted rows are far and no graph
** walk from the middle finds them by chance. NULL in random mode.
** vecidx-compare calls it before normalising cosine data, so that both
** programs admit the same rows. */
static inline uint32_t *bn_filter_order(const bn_opts *o, const bn_data *d)
{
    double *u, norm = 0;
    bn_far_row *p;
    uint32_t *order;
    uint64_t s = o->filter_seed ^ UINT64_C(0xFA5D1EC7);
    size_t i, j;
    if (!o->nsel || o->filter_mode != BN_FILTER_FAR) return NULL;
    if (d->n > 0xFFFFFFFFu) bn_die("--filter-mode far: too many base rows");
    u = (double *)bn_malloc(d->dim * sizeof *u);
    /* Gaussian components (Box-Muller) give a direction uniform on the
    ** sphere, favouring no axis of the data. */
    for (j = 0; j < d->dim; j++) {
        double a = bn_uniform(&s), b = bn_uniform(&s);
        u[j] = sqrt(-2.0 * log(1.0 - a)) * cos(6.283185307179586 * b);
        norm += u[j] * u[j];
    }
    norm = norm > 0 ? 1.0 / sqrt(norm) : 0;
    for (j = 0; j < d->dim; j++) u[j] *= norm;
    p = (bn_far_row *)bn_malloc(d->n * sizeof *p);
    for (i = 0; i < d->n; i++) {
        const float *x = d->base + i * d->dim;
        double dot = 0, len = 0;
        for (j = 0; j < d->dim; j++) {
            dot += u[j] * x[j];
            len += (double)x[j] * x[j];
        }
        if (o->metric == BN_COS && len > 0) dot /= sqrt(len);
        p[i].proj = (float)dot;
        p[i].row = (uint32_t)i;
    }
    qsort(p, d->n, sizeof *p, bn_far_cmp);
    order = (uint32_t *)bn_malloc(d->n * sizeof *order);
    for (i = 0; i < d->n; i++) order[i] = p[i].row;
    free(p);
    free(u);
    return order;
}

/* The admitted set of selectivity s into *f: random mode, round(s*n) rows
** drawn by selection sampling (each row in turn, with the probability
** that leaves exactly the count wanted); far mode, the first round(s*n)
** rows of `order`. Returns 0, with a note, when that count is 0. */
static inline int bn_filter_make(const bn_opts *o, const bn_data *d,
                                 const uint32_t *order, double s, bn_filter *f)
{
    size_t i, got = 0, words = (d->n + 63) / 64;
    uint64_t rng = o->filter_seed;
    memset(f, 0, sizeof *f);
    f->selectivity = s;
    f->n = d->n;
    f->m = (size_t)floor(s * (double)d->n + 0.5);
    if (f->m > d->n) f->m = d->n;
    if (f->m == 0) {
        bn_note("--filter-selectivity %g admits no row of %zu: skipped", s,
                d->n);
        return 0;
    }
    if (f->m < o->k)
        bn_note("--filter-selectivity %g admits %zu rows, fewer than k %zu: "
                "recall counts the %zu",
                s, f->m, o->k, f->m);
    f->keys = (uint64_t *)bn_malloc(f->m * sizeof *f->keys);
    f->bitmap = (uint64_t *)bn_malloc((words ? words : 1) * sizeof *f->bitmap);
    memset(f->bitmap, 0, (words ? words : 1) * sizeof *f->bitmap);
    if (o->filter_mode == BN_FILTER_FAR) {
        for (i = 0; i < f->m; i++) f->keys[i] = order[i];
        /* ascending, as a database would hand them over, and so that the
        ** scan reads the base in order */
        qsort(f->keys, f->m, sizeof *f->keys, bn_u64_cmp);
    } else {
        for (i = 0; i < d->n && got < f->m; i++)
            if (bn_uniform(&rng) * (double)(d->n - i) < (double)(f->m - got))
                f->keys[got++] = i;
    }
    for (i = 0; i < f->m; i++)
        f->bitmap[f->keys[i] >> 6] |= UINT64_C(1) << (f->keys[i] & 63);
    return 1;
}

static inline void bn_filter_free(bn_filter *f)
{
    free(f->keys);
    free(f->bitmap);
    free(f->gt);
    memset(f, 0, sizeof *f);
}

static inline int bn_filter_admits(const bn_filter *f, uint64_t key)
{
    return key < f->n && (f->bitmap[key >> 6] >> (key & 63)) & 1;
}

/* ---- The scan: the exact plan without the feature ----
** What a user would write by hand: a loop over the admitted rows keeping
** the k best. Plain C compiled with the program's flags; 16 independent
** sums, because without -ffast-math a compiler keeps one running sum in
** order and cannot use vector instructions for it. */

static inline float bn_scan_l2(const float *a, const float *b, size_t dim)
{
    float acc[16] = {0}, s = 0;
    size_t j = 0, l;
    for (; j + 16 <= dim; j += 16)
        for (l = 0; l < 16; l++) {
            float t = a[j + l] - b[j + l];
            acc[l] += t * t;
        }
    for (; j < dim; j++) s += (a[j] - b[j]) * (a[j] - b[j]);
    for (l = 0; l < 16; l++) s += acc[l];
    return s;
}

static inline float bn_scan_dot(const float *a, const float *b, size_t dim)
{
    float acc[16] = {0}, s = 0;
    size_t j = 0, l;
    for (; j + 16 <= dim; j += 16)
        for (l = 0; l < 16; l++) acc[l] += a[j + l] * b[j + l];
    for (; j < dim; j++) s += a[j] * b[j];
    for (l = 0; l < 16; l++) s += acc[l];
    return s;
}

/* Gaps between the admitted rows stop the hardware prefetcher: each row
** then waits on memory, and a scan of half of 100k x 128 took 2.5x as
** long as a scan of all of it. Asking for the row BN_SCAN_AHEAD admitted
** rows on, as a careful hand-written scan would, brings it back to the
** memory's speed; the baseline should be the best simple plan, not a
** slow one. */
#define BN_SCAN_AHEAD 16

static inline void bn_prefetch_row(const float *row, size_t dim)
{
#if defined(__GNUC__) || defined(__clang__)
    const char *p = (const char *)row;
    size_t b;
    for (b = 0; b < dim * sizeof *row; b += 64) __builtin_prefetch(p + b);
#else
    (void)row;
    (void)dim;
#endif
}

typedef struct bn_scan {
    const bn_data *d;
    const bn_filter *f;
    const float *inv_norm; /* cos: 1 / |row| per base row, else NULL */
    int metric;
    size_t k;
} bn_scan;

/* The row norms a cosine scan divides by, computed once as a user would
** store them; NULL for the other metrics. */
static inline float *bn_scan_norms(const bn_opts *o, const bn_data *d)
{
    float *inv;
    size_t i;
    if (o->metric != BN_COS) return NULL;
    inv = (float *)bn_malloc(d->n * sizeof *inv);
    for (i = 0; i < d->n; i++) {
        float s = bn_scan_dot(d->base + i * d->dim, d->base + i * d->dim,
                              d->dim);
        inv[i] = s > 0 ? 1.0f / sqrtf(s) : 0.0f;
    }
    return inv;
}

/* One admitted row into the scan's k best of query q (dist/out hold *cnt
** of them, ascending): squared L2, or for ip and cos the negated dot
** product (over the row norm for cos; the query's norm ranks nothing).
** Ties keep the row taken first, the lower one in both scans below. */
static inline void bn_scan_take(const bn_scan *s, const float *q, uint64_t row,
                                float *dist, int64_t *out, size_t *cnt)
{
    size_t dim = s->d->dim, k = s->k, j;
    const float *x = s->d->base + row * dim;
    float v;
    if (s->metric == BN_L2)
        v = bn_scan_l2(q, x, dim);
    else {
        v = -bn_scan_dot(q, x, dim);
        if (s->inv_norm) v *= s->inv_norm[row];
    }
    if (*cnt == k && !(v < dist[k - 1])) return;
    j = *cnt < k ? (*cnt)++ : k - 1;
    for (; j > 0 && dist[j - 1] > v; j--) {
        dist[j] = dist[j - 1];
        out[j] = out[j - 1];
    }
    dist[j] = v;
    out[j] = (int64_t)row;
}

/* bn_query_fn of the scan: the k nearest admitted rows of query qi, taken
** from the ascending list f->keys. */
static inline void bn_scan_query(void *arg, size_t qi, int64_t *out)
{
    const bn_scan *s = (const bn_scan *)arg;
    const bn_filter *f = s->f;
    size_t dim = s->d->dim, k = s->k, cnt = 0, i;
    const float *q = s->d->query + qi * dim;
    float dbuf[256], *dist = k <= 256 ? dbuf : (float *)bn_malloc(k * 4);
    for (i = 0; i < f->m; i++) {
        if (i + BN_SCAN_AHEAD < f->m)
            bn_prefetch_row(s->d->base + f->keys[i + BN_SCAN_AHEAD] * dim, dim);
        bn_scan_take(s, q, f->keys[i], dist, out, &cnt);
    }
    for (i = cnt; i < k; i++) out[i] = -1;
    if (dist != dbuf) free(dist);
}

/* bn_query_fn of the scan a user holding only the bitmap would write:
** walk f->bitmap a word at a time into a list of up to BN_BITS_CHUNK rows,
** scan that list as bn_scan_query scans f->keys (prefetch included), and
** go on. Walking the map once for the list keeps a second walk, for the
** prefetch, out of the cost. */
#define BN_BITS_CHUNK 256
static inline void bn_scan_bits_query(void *arg, size_t qi, int64_t *out)
{
    const bn_scan *s = (const bn_scan *)arg;
    const bn_filter *f = s->f;
    size_t dim = s->d->dim, k = s->k, cnt = 0, i, n, w = 0;
    size_t nw = (f->n + 63) / 64;
    uint64_t rows[BN_BITS_CHUNK];
    const float *q = s->d->query + qi * dim;
    float dbuf[256], *dist = k <= 256 ? dbuf : (float *)bn_malloc(k * 4);
    while (w < nw) {
        for (n = 0; w < nw && n <= BN_BITS_CHUNK - 64; w++) {
            uint64_t b = f->bitmap[w];
            for (; b; b &= b - 1)
                rows[n++] = (uint64_t)w * 64 + (uint64_t)__builtin_ctzll(b);
        }
        for (i = 0; i < n; i++) {
            if (i + BN_SCAN_AHEAD < n)
                bn_prefetch_row(s->d->base + rows[i + BN_SCAN_AHEAD] * dim,
                                dim);
            bn_scan_take(s, q, rows[i], dist, out, &cnt);
        }
    }
    for (i = cnt; i < k; i++) out[i] = -1;
    if (dist != dbuf) free(dist);
}

/* A timed scan pass runs this long at most: its cost per query hardly
** varies, so a few queries give its rate, and at 1M rows a pass over
** every query would take minutes per sweep point. */
#define BN_SCAN_PASS_S 1.0

/* The exact filtered neighbours of every query into f->gt, by the scan
** on --build-threads threads, and f->scan_nq: the queries of a timed scan
** pass, all of them unless that would last beyond BN_SCAN_PASS_S. */
static inline void bn_filter_truth(const bn_opts *o, const bn_data *d,
                                   bn_scan *s, bn_filter *f)
{
    unsigned t = o->build_threads < bn_ncpu() ? o->build_threads : bn_ncpu();
    unsigned st = o->threads < bn_ncpu() ? o->threads : bn_ncpu();
    double secs, per_query;
    s->f = f;
    f->gt = (int64_t *)bn_malloc(d->nq * o->k * sizeof *f->gt);
    secs = bn_pass_single(d->nq, o->k, t ? t : 1, bn_scan_query, s, f->gt);
    per_query = d->nq ? secs * (t ? t : 1) / (double)d->nq : 0;
    f->scan_nq = d->nq;
    if (per_query > 0 && (double)d->nq * per_query / st > BN_SCAN_PASS_S) {
        f->scan_nq = (size_t)(BN_SCAN_PASS_S * st / per_query);
        if (f->scan_nq < 32) f->scan_nq = 32; /* too few to time */
        if (f->scan_nq > d->nq) f->scan_nq = d->nq;
    }
}

/* Mean over queries of |results ∩ exact filtered top k| / min(k, m);
** *outside gets the results that are not admitted rows, which a correct
** filtered search never returns. Warns about those and duplicates. */
static inline double bn_filter_recall(const bn_filter *f, size_t nq, size_t k,
                                      const int64_t *res, size_t *outside,
                                      const char *what)
{
    size_t q, i, j, hits = 0, dups = 0, out = 0, want = k < f->m ? k : f->m;
    for (q = 0; q < nq; q++) {
        const int64_t *r = res + q * k, *g = f->gt + q * k;
        for (i = 0; i < k; i++) {
            if (r[i] < 0) continue;
            if (!bn_filter_admits(f, (uint64_t)r[i])) out++;
            for (j = 0; j < i; j++)
                if (r[j] == r[i]) {
                    dups++;
                    break;
                }
        }
        for (j = 0; j < want; j++)
            for (i = 0; i < k; i++)
                if (g[j] >= 0 && r[i] == g[j]) {
                    hits++;
                    break;
                }
    }
    if (dups) bn_note("warning: %s: %zu duplicate result ids", what, dups);
    if (outside) *outside = out;
    return nq && want ? (double)hits / ((double)nq * (double)want) : 0.0;
}

/* The keys a filtered line adds to the standard ones (bn_result.extra).
** Baselines below 0 print as null: not measured. */
typedef struct bn_filter_line {
    const bn_filter *f;
    const char *form;     /* bn_form_names */
    const char *selector; /* FAISS: the IDSelector; NULL: key left out */
    double recall;        /* as bn_filter_recall */
    size_t outside;
    double qps;
    double scan_qps;
    double bits_scan_qps; /* bitmap form: the scan walking the bitmap */
    double unfiltered_qps, unfiltered_recall; /* recall: against --gt */
    double flat_cb_qps, flat_cb_recall;
    char buf[1024];
} bn_filter_line;

static inline void bn_filter_line_init(bn_filter_line *l, const bn_filter *f,
                                       const char *form)
{
    memset(l, 0, sizeof *l);
    l->f = f;
    l->form = form;
    l->scan_qps = l->bits_scan_qps = -1;
    l->unfiltered_qps = l->unfiltered_recall = -1;
    l->flat_cb_qps = l->flat_cb_recall = -1;
}

static inline const char *bn_fmt_num(char *buf, size_t size, const char *fmt,
                                     double v)
{
    if (v < 0 || v != v)
        snprintf(buf, size, "null");
    else
        snprintf(buf, size, fmt, v);
    return buf;
}

static inline const char *bn_filter_extra(const bn_opts *o, bn_filter_line *l)
{
    char sel[80] = "", a[32], b[32], c[32], e[32], g[32], h[32], i[32];
    char j[32], m[32];
    if (l->selector)
        snprintf(sel, sizeof sel, ",\"selector\":\"%s\"", l->selector);
    snprintf(
        l->buf, sizeof l->buf,
        ",\"selectivity\":%.6g,\"filter_mode\":\"%s\","
        "\"filter_form\":\"%s\"%s,\"admitted\":%zu,\"filter_seed\":%llu,"
        "\"recall\":%.4f,\"not_admitted\":%zu,\"scan_qps\":%s,"
        "\"scan_queries\":%zu,\"unfiltered_qps\":%s,"
        "\"unfiltered_recall\":%s,\"flat_cb_qps\":%s,"
        "\"flat_cb_recall\":%s,\"qps_vs_scan\":%s,"
        "\"qps_vs_unfiltered\":%s,\"bits_scan_qps\":%s,"
        "\"qps_vs_bits_scan\":%s",
        l->f->selectivity, o->filter_mode == BN_FILTER_FAR ? "far" : "random",
        l->form, sel, l->f->m, (unsigned long long)o->filter_seed, l->recall,
        l->outside, bn_fmt_num(a, sizeof a, "%.1f", l->scan_qps), l->f->scan_nq,
        bn_fmt_num(b, sizeof b, "%.1f", l->unfiltered_qps),
        bn_fmt_num(c, sizeof c, "%.4f", l->unfiltered_recall),
        bn_fmt_num(e, sizeof e, "%.1f", l->flat_cb_qps),
        bn_fmt_num(g, sizeof g, "%.4f", l->flat_cb_recall),
        bn_fmt_num(h, sizeof h, "%.3f",
                   l->scan_qps > 0 ? l->qps / l->scan_qps : -1),
        bn_fmt_num(i, sizeof i, "%.3f",
                   l->unfiltered_qps > 0 ? l->qps / l->unfiltered_qps : -1),
        bn_fmt_num(j, sizeof j, "%.1f", l->bits_scan_qps),
        bn_fmt_num(m, sizeof m, "%.3f",
                   l->bits_scan_qps > 0 ? l->qps / l->bits_scan_qps : -1));
    return l->buf;
}

/* ---- Output ----------------------------------------------------------------
 */

static inline void bn_result_init(bn_result *r, const bn_opts *o,
                                  const char *lib)
{
    memset(r, 0, sizeof *r);
    r->lib = lib;
    r->index = o->index;
    r->mode = o->batch ? "batch" : "single";
    r->train_s = -1;
    r->bytes_per_vec = -1;
    r->mem_mb = -1;
    r->rss_mb = -1;
    r->threads = o->threads;
    r->storage = "f32";
    r->refine = 1;
    r->vector_bytes = -1;
    if (!strcmp(o->index, "ivfpq")) {
        r->storage = "pq";
        r->keep = o->refine > 1;
        r->refine = o->refine > 1 ? o->refine : 1;
    }
}

static inline void bn_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static inline void bn_json_num(FILE *f, const char *fmt, double v)
{
    if (v < 0 || v != v)
        fputs("null", f);
    else
        fprintf(f, fmt, v);
}

/* Lines of other shapes (vecidx-compare --scenario, vecidx-ab summaries),
** key by key with the writers above: bn_kv_begin, then bn_kv_str,
** bn_kv_num (null while negative or NaN, as bn_json_num), bn_kv_uint or
** bn_kv_bool, then bn_kv_end, which ends the line and flushes. */
typedef struct bn_kv {
    FILE *f;
    int first;
} bn_kv;

static inline void bn_kv_begin(bn_kv *j, FILE *f)
{
    j->f = f;
    j->first = 1;
    fputc('{', f);
}

static inline void bn_kv_key(bn_kv *j, const char *key)
{
    if (!j->first) fputc(',', j->f);
    j->first = 0;
    bn_json_str(j->f, key);
    fputc(':', j->f);
}

/* NULL prints null. */
static inline void bn_kv_str(bn_kv *j, const char *key, const char *v)
{
    bn_kv_key(j, key);
    if (v)
        bn_json_str(j->f, v);
    else
        fputs("null", j->f);
}

static inline void bn_kv_num(bn_kv *j, const char *key, const char *fmt,
                             double v)
{
    bn_kv_key(j, key);
    bn_json_num(j->f, fmt, v);
}

static inline void bn_kv_uint(bn_kv *j, const char *key, uint64_t v)
{
    bn_kv_key(j, key);
    fprintf(j->f, "%llu", (unsigned long long)v);
}

static inline void bn_kv_bool(bn_kv *j, const char *key, int v)
{
    bn_kv_key(j, key);
    fputs(v ? "true" : "false", j->f);
}

static inline void bn_kv_end(bn_kv *j)
{
    fputs("}\n", j->f);
    fflush(j->f);
}

static inline void bn_print(const bn_opts *o, const bn_data *d,
                            const bn_result *r)
{
    FILE *f = stdout;
    fputs("{\"dataset\":", f);
    bn_json_str(f, o->dataset);
    fputs(",\"lib\":", f);
    bn_json_str(f, r->lib);
    fputs(",\"index\":", f);
    bn_json_str(f, r->index);
    fputs(",\"param\":", f);
    bn_json_str(f, r->param);
    fputs(",\"build_s\":", f);
    bn_json_num(f, "%.3f", r->build_s);
    fputs(",\"mem_mb\":", f);
    bn_json_num(f, "%.1f", r->mem_mb);
    fprintf(f, ",\"recall_at_%zu\":%.4f", o->k, r->recall);
    fputs(",\"qps\":", f);
    bn_json_num(f, "%.1f", r->qps);
    fprintf(f, ",\"threads\":%u,\"simd\":", r->threads);
    bn_json_str(f, r->simd ? r->simd : "");
    fprintf(f, ",\"n\":%zu,\"dim\":%u,\"metric\":\"%s\"", d->n, d->dim,
            bn_metric_name(o->metric));
    fputs(",\"rss_mb\":", f);
    bn_json_num(f, "%.1f", r->rss_mb);
    fputs(",\"mode\":", f);
    bn_json_str(f, r->mode);
    fprintf(f, ",\"k\":%zu,\"nq\":%zu,\"build_threads\":%u,\"passes\":%u", o->k,
            d->nq, o->build_threads, o->passes);
    fputs(",\"build\":", f);
    bn_json_str(f, r->build);
    fputs(",\"storage\":", f);
    bn_json_str(f, r->storage);
    fprintf(f, ",\"keep\":%s,\"refine\":%u,\"vector_bytes\":",
            r->keep ? "true" : "false", r->refine);
    bn_json_num(f, "%.0f", r->vector_bytes);
    if (r->train_s >= 0) fprintf(f, ",\"train_s\":%.3f", r->train_s);
    if (r->bytes_per_vec >= 0)
        fprintf(f, ",\"bytes_per_vec\":%.1f", r->bytes_per_vec);
    if (r->lib_version) {
        fputs(",\"version\":", f);
        bn_json_str(f, r->lib_version);
    }
    if (r->extra) fputs(r->extra, f);
    fputs("}\n", f);
    fflush(f);
}

#endif /* VECIDX_BENCH_COMMON_H */
