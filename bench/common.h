/*
** bench/common.h -- code shared by bench/vecidx-bench.c (C11) and
** bench/compare.cpp (C++17): command line, .fvecs/.ivecs reading, recall,
** timing, memory and the JSON output line. Every function is static inline,
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

/* Parses argv into *o. `libs` describes --lib for the help text. */
static inline void bn_parse_args(int argc, char **argv, bn_opts *o,
                                 const char *libs)
{
    int i;
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
        } else
            bn_die("unknown option '%s' (try --help)", name);
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

/* Best of o->passes passes; single queries on o->threads threads, or the
** batch function when o->batch (and batch_fn is not NULL). Returns QPS. */
static inline double bn_measure(const bn_opts *o, const bn_data *d,
                                bn_query_fn fn, bn_batch_fn batch_fn, void *ctx,
                                int64_t *res)
{
    double best = HUGE_VAL, t;
    unsigned p;
    for (p = 0; p < o->passes; p++) {
        if (o->batch && batch_fn) {
            double t0 = bn_now();
            batch_fn(ctx, res);
            t = bn_now() - t0;
        } else {
            t = bn_pass_single(d->nq, o->k, o->threads, fn, ctx, res);
        }
        if (t < best) best = t;
    }
    return best > 0 ? (double)d->nq / best : 0.0;
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
