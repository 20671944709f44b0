/*
** vecidx -- the command-line tool: create, fill, search, inspect and export
** vecidx index files without writing code.
**
**   vecidx create PATH --dim D [--kind hnsw|flat|ivfpq] [--metric l2|ip|cos]
**                 [--storage f32|f16|i8|bin [--keep-vectors]]
**   vecidx import PATH FILE          (.fvecs, .npy or .csv)
**   vecidx query PATH --vector "0.1,0.2,..." | --fvecs FILE [-k 10]
**                [--allow KEYFILE]
**   vecidx stats|check|checkpoint PATH
**   vecidx export PATH FILE          (.fvecs, .npy or .csv)
**   vecidx recall PATH [-k 10] [--queries FILE [--gt FILE]]
**   vecidx tune PATH --recall R [-k 10] [--queries FILE [--gt FILE]]
**
** `vecidx --help` and `vecidx COMMAND --help` describe every option. Exit
** status: 0 success, 1 a failure while running (a file that cannot be read,
** bad data, an error from the library), 2 a malformed command line, 3
** (tune only) a target recall that no setting reaches.
**
** One file on purpose: it only uses the public API of vecidx.h, and builds
** with `cc -std=c11 -I. tools/vecidx-cli.c vecidx.c -pthread -lm`.
*/
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vecidx.h"

enum {
    EXIT_RUNTIME = 1,
    EXIT_USAGE = 2,
    EXIT_NOT_REACHED = 3 /* tune: ran fine, but the target is out of reach */
};

/* ---- Messages --------------------------------------------------------- */

static int json_out; /* --json: machine-readable stdout */

static void vmsg(const char *prefix, const char *fmt, va_list ap)
{
    fprintf(stderr, "vecidx: %s", prefix);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

/* A failure while running: print it and return the exit status 1. */
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg("", fmt, ap);
    va_end(ap);
    return EXIT_RUNTIME;
}

/* A failed library call: the code's name and the library's detail, after
** the caller's context. The detail is fetched before anything else can
** overwrite it (it is per thread and per last failure). */
static int fail_lib(int rc, const vecidx *ix, const char *fmt, ...)
{
    const char *detail = vecidx_errmsg(ix);
    va_list ap;
    fputs("vecidx: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, ": %s%s%s\n", vecidx_strerror(rc), *detail ? ": " : "",
            detail);
    return EXIT_RUNTIME;
}

static const char *cur_cmd = ""; /* for usage messages */

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "vecidx %s: ", cur_cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'vecidx %s --help'.\n", cur_cmd);
    return EXIT_USAGE;
}

static void warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg("warning: ", fmt, ap);
    va_end(ap);
}

/* JSON string; control characters escaped, other bytes passed through. */
static void json_str(FILE *f, const char *s)
{
    putc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            putc(c, f);
    }
    putc('"', f);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- Names ------------------------------------------------------------ */

static const char *kind_name(int kind)
{
    return kind == VECIDX_FLAT    ? "flat"
           : kind == VECIDX_HNSW  ? "hnsw"
           : kind == VECIDX_IVFPQ ? "ivfpq"
                                  : "unknown";
}

/* How the index stores vectors; "pq" for IVF-PQ, whose stats storage is
** meaningless (it keeps product-quantized codes). */
static const char *storage_name(int kind, int storage)
{
    if (kind == VECIDX_IVFPQ) return "pq";
    return storage == VECIDX_STORE_F32   ? "f32"
           : storage == VECIDX_STORE_F16 ? "f16"
           : storage == VECIDX_STORE_I8  ? "i8"
           : storage == VECIDX_STORE_BIN ? "bin"
                                         : "unknown";
}

static const char *metric_name(int metric)
{
    return metric == VECIDX_L2       ? "l2"
           : metric == VECIDX_IP     ? "ip"
           : metric == VECIDX_COSINE ? "cos"
                                     : "unknown";
}

/* ---- Command line ----------------------------------------------------- */

/* Every option of every command; each command lists those it accepts. */
enum {
    O_HELP,
    O_JSON,
    O_QUIET,
    O_DIM,
    O_KIND,
    O_METRIC,
    O_M,
    O_EFC,
    O_EFS,
    O_NLIST,
    O_NPROBE,
    O_PQM,
    O_STORAGE,
    O_KEEP,
    O_REFINE,
    O_TRAIN_SIZE,
    O_SEED,
    O_FORMAT,
    O_FIRST_KEY,
    O_UPSERT,
    O_TRAIN,
    O_THREADS,
    O_VECTOR,
    O_FVECS,
    O_K,
    O_EF,
    O_ALLOW,
    O_RECALL,
    O_QUERIES,
    O_GT,
    O_N,
    O_COUNT
};

static const struct {
    const char *name; /* --name */
    char short_name;  /* -c, or 0 */
    int has_value;
} opt_defs[O_COUNT] = {
    [O_HELP] = {"help", 'h', 0},
    [O_JSON] = {"json", 0, 0},
    [O_QUIET] = {"quiet", 'q', 0},
    [O_DIM] = {"dim", 0, 1},
    [O_KIND] = {"kind", 0, 1},
    [O_METRIC] = {"metric", 0, 1},
    [O_M] = {"M", 0, 1},
    [O_EFC] = {"ef-construction", 0, 1},
    [O_EFS] = {"ef-search", 0, 1},
    [O_NLIST] = {"nlist", 0, 1},
    [O_NPROBE] = {"nprobe", 0, 1},
    [O_PQM] = {"pq-m", 0, 1},
    [O_STORAGE] = {"storage", 0, 1},
    [O_KEEP] = {"keep-vectors", 0, 0},
    [O_REFINE] = {"refine", 0, 1},
    [O_TRAIN_SIZE] = {"train-size", 0, 1},
    [O_SEED] = {"seed", 0, 1},
    [O_FORMAT] = {"format", 0, 1},
    [O_FIRST_KEY] = {"first-key", 0, 1},
    [O_UPSERT] = {"upsert", 0, 0},
    [O_TRAIN] = {"train", 0, 1},
    [O_THREADS] = {"threads", 0, 1},
    [O_VECTOR] = {"vector", 0, 1},
    [O_FVECS] = {"fvecs", 0, 1},
    [O_K] = {"k", 'k', 1},
    [O_EF] = {"ef", 0, 1},
    [O_ALLOW] = {"allow", 0, 1},
    [O_RECALL] = {"recall", 0, 1},
    [O_QUERIES] = {"queries", 0, 1},
    [O_GT] = {"gt", 0, 1},
    [O_N] = {"n", 0, 1},
};

#define BIT(o) (1ull << (o))

typedef struct args {
    const char *pos[4];
    int npos;
    const char *val[O_COUNT]; /* value, or "" for a flag; NULL if absent */
} args;

/* Options may come before, between or after the positional arguments;
** "--name value", "--name=value" and "-k value" are accepted, and "--"
** ends the options. */
static int parse_args(int argc, char **argv, uint64_t allowed, int maxpos,
                      args *a)
{
    int i, o, only_pos = 0;
    memset(a, 0, sizeof *a);
    for (i = 0; i < argc; i++) {
        const char *s = argv[i], *name, *eq;
        size_t len;
        if (only_pos || s[0] != '-' || s[1] == '\0') {
            if (a->npos == maxpos)
                return usage_error("unexpected argument '%s'", s);
            a->pos[a->npos++] = s;
            continue;
        }
        if (strcmp(s, "--") == 0) {
            only_pos = 1;
            continue;
        }
        name = s + 1 + (s[1] == '-');
        eq = s[1] == '-' ? strchr(name, '=') : NULL;
        len = eq ? (size_t)(eq - name) : strlen(name);
        for (o = 0; o < O_COUNT; o++) {
            if (!(allowed & BIT(o))) continue;
            if (s[1] == '-'
                    ? strlen(opt_defs[o].name) == len &&
                          memcmp(opt_defs[o].name, name, len) == 0
                    : opt_defs[o].short_name == name[0] && name[1] == '\0')
                break;
        }
        if (o == O_COUNT) return usage_error("unknown option '%s'", s);
        if (!opt_defs[o].has_value) {
            if (eq) return usage_error("option '%s' takes no value", s);
            a->val[o] = "";
        } else if (eq) {
            a->val[o] = eq + 1;
        } else if (i + 1 < argc) {
            a->val[o] = argv[++i];
        } else {
            return usage_error("option '%s' needs a value", s);
        }
    }
    json_out = a->val[O_JSON] != NULL;
    return 0;
}

/* Digits only: strtoull alone would accept "-1" (as 2^64-1), spaces and
** a sign. */
static int parse_u64(const char *s, uint64_t *out, const char **end)
{
    uint64_t v = 0;
    const char *p = s;
    if (*p < '0' || *p > '9') return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    if (end)
        *end = p;
    else if (*p)
        return -1;
    return 0;
}

/* An option's unsigned value within [lo, hi]; *out is untouched when the
** option is absent. */
static int opt_u32(const args *a, int o, uint32_t lo, uint32_t hi,
                   uint32_t *out)
{
    uint64_t v;
    if (!a->val[o]) return 0;
    if (parse_u64(a->val[o], &v, NULL) != 0 || v < lo || v > hi)
        return usage_error("%s%s must be a whole number from %" PRIu32
                           " to %" PRIu32 ", not '%s'",
                           opt_defs[o].short_name ? "-" : "--",
                           opt_defs[o].name, lo, hi, a->val[o]);
    *out = (uint32_t)v;
    return 0;
}

static int need_pos(const args *a, int n, const char *what)
{
    if (a->npos < n) return usage_error("missing %s", what);
    return 0;
}

/* ---- File formats ------------------------------------------------------ */

enum {
    FMT_NONE,
    FMT_FVECS,
    FMT_NPY,
    FMT_CSV
};

static int format_of(const char *path, const char *forced)
{
    const char *dot;
    const char *name = forced;
    if (!name) {
        dot = strrchr(path, '.');
        if (!dot || strchr(dot, '/')) return FMT_NONE;
        name = dot + 1;
    }
    if (strcmp(name, "fvecs") == 0) return FMT_FVECS;
    if (strcmp(name, "npy") == 0) return FMT_NPY;
    if (strcmp(name, "csv") == 0) return FMT_CSV;
    return FMT_NONE;
}

static int format_arg(const args *a, const char *path, int *fmt)
{
    *fmt = format_of(path, a->val[O_FORMAT]);
    if (*fmt != FMT_NONE) return 0;
    if (a->val[O_FORMAT])
        return usage_error("unknown --format '%s' (fvecs, npy or csv)",
                           a->val[O_FORMAT]);
    return usage_error("cannot tell the format of '%s' from its name "
                       "(.fvecs, .npy or .csv); use --format",
                       path);
}

/* The binary formats are little-endian whatever the host. */
static uint32_t le32(const unsigned char *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
           (uint32_t)b[3] << 24;
}

static float le_f32(const unsigned char *b)
{
    uint32_t u = le32(b);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static double le_f64(const unsigned char *b)
{
    uint64_t u = (uint64_t)le32(b) | (uint64_t)le32(b + 4) << 32;
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static void put_le32(unsigned char *b, uint32_t u)
{
    b[0] = (unsigned char)u;
    b[1] = (unsigned char)(u >> 8);
    b[2] = (unsigned char)(u >> 16);
    b[3] = (unsigned char)(u >> 24);
}

/* Reads rows of `dim` floats with their keys from a .fvecs, .npy or .csv
** file (or standard input), a chunk at a time, so files larger than memory
** import in constant space. */
typedef struct reader {
    FILE *f;
    const char *name; /* for messages */
    int fmt;
    uint32_t dim;
    uint64_t first_key; /* fvecs, npy: key of row 0 */
    uint64_t row;       /* rows returned so far */
    uint64_t npy_rows;  /* npy: rows the header announces */
    int npy_f64;        /* npy: float64 data, converted to float */
    uint64_t line;      /* csv: number of the line last read */
    char *text;         /* csv: the line */
    size_t text_cap;
    unsigned char *raw; /* fvecs, npy: one row's bytes */
    uint64_t size;      /* file size for the progress bar, 0 unknown */
    uint64_t done;      /* bytes consumed */
} reader;

static int npy_header(reader *r)
{
    unsigned char pre[12];
    size_t hlen, vlen;
    char *h, *p;
    const char *q;
    uint64_t rows, cols;
    int rc = EXIT_RUNTIME;
    if (fread(pre, 1, 10, r->f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0)
        return fail("%s: not a .npy file (no \\x93NUMPY magic)", r->name);
    if (pre[6] == 1) {
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
        vlen = 10;
    } else if (pre[6] == 2 || pre[6] == 3) {
        if (fread(pre + 10, 1, 2, r->f) != 2)
            return fail("%s: truncated .npy header", r->name);
        hlen = le32(pre + 8);
        vlen = 12;
    } else {
        return fail("%s: unknown .npy format version %u", r->name,
                    (unsigned)pre[6]);
    }
    if (hlen > (1u << 20))
        return fail("%s: .npy header of %zu bytes is not plausible", r->name,
                    hlen);
    if (!(h = malloc(hlen + 1))) return fail("out of memory");
    if (fread(h, 1, hlen, r->f) != hlen) {
        fail("%s: truncated .npy header", r->name);
        goto out;
    }
    h[hlen] = '\0';
    r->done = vlen + hlen;
    /* The header is a Python dict literal written by numpy; only the
    ** three keys it always has matter. */
    if ((p = strstr(h, "'descr'")) == NULL ||
        (p = strchr(p + 7, '\'')) == NULL) {
        fail("%s: .npy header has no 'descr'", r->name);
        goto out;
    }
    if (strncmp(p, "'<f4'", 5) == 0) {
        r->npy_f64 = 0;
    } else if (strncmp(p, "'<f8'", 5) == 0) {
        r->npy_f64 = 1;
    } else {
        size_t n = strcspn(p + 1, "'");
        fail("%s: .npy data type %.*s is not supported (only little-endian "
             "float32 '<f4' and float64 '<f8')",
             r->name, (int)n, p + 1);
        goto out;
    }
    if ((p = strstr(h, "'fortran_order'")) == NULL ||
        strncmp(p + strcspn(p, ":") + strspn(p + strcspn(p, ":"), ": "),
                "False", 5) != 0) {
        fail("%s: .npy array is in Fortran order; save it in C order "
             "(numpy.ascontiguousarray)",
             r->name);
        goto out;
    }
    if ((p = strstr(h, "'shape'")) == NULL || (p = strchr(p, '(')) == NULL) {
        fail("%s: .npy header has no 'shape'", r->name);
        goto out;
    }
    q = p + 1 + strspn(p + 1, " ");
    if (parse_u64(q, &rows, &q) != 0 || *(q += strspn(q, " ")) != ',' ||
        parse_u64(q + 1 + strspn(q + 1, " "), &cols, &q) != 0 ||
        *(q += strspn(q, " ,")) != ')') {
        fail("%s: .npy array must be 2-D (rows, dim)", r->name);
        goto out;
    }
    if (cols != r->dim) {
        fail("%s: rows have %" PRIu64 " values, the index dimension is %u",
             r->name, cols, (unsigned)r->dim);
        goto out;
    }
    r->npy_rows = rows;
    rc = 0;
out:
    free(h);
    return rc;
}

static int reader_open(reader *r, const char *path, int fmt, uint32_t dim,
                       uint64_t first_key)
{
    struct stat st;
    memset(r, 0, sizeof *r);
    r->name = path;
    r->fmt = fmt;
    r->dim = dim;
    r->first_key = first_key;
    if (strcmp(path, "-") == 0) {
        r->f = stdin;
        r->name = "(standard input)";
    } else if (!(r->f = fopen(path, "rb"))) {
        return fail("cannot open '%s': %s", path, strerror(errno));
    }
    if (fstat(fileno(r->f), &st) == 0 && S_ISREG(st.st_mode))
        r->size = (uint64_t)st.st_size;
    if (fmt != FMT_CSV &&
        !(r->raw = malloc((size_t)dim * (fmt == FMT_NPY ? 8 : 4) + 4)))
        return fail("out of memory");
    if (fmt == FMT_NPY) return npy_header(r);
    return 0;
}

static void reader_close(reader *r)
{
    if (r->f && r->f != stdin) fclose(r->f);
    free(r->raw);
    free(r->text);
    memset(r, 0, sizeof *r);
}

/* Key of row r->row in a keyless format; refuses to wrap past 2^64-1. */
static int row_key(reader *r, uint64_t *key)
{
    if (r->row > UINT64_MAX - r->first_key)
        return fail("%s: row %" PRIu64 " would need a key above 2^64-1",
                    r->name, r->row);
    *key = r->first_key + r->row;
    return 0;
}

static int read_fvecs_row(reader *r, uint64_t *key, float *vec, int *eof)
{
    size_t n = fread(r->raw, 1, 4, r->f), i;
    uint32_t d;
    if (n == 0 && feof(r->f)) {
        *eof = 1;
        return 0;
    }
    if (n != 4) goto truncated;
    if ((d = le32(r->raw)) != r->dim)
        return fail("%s: vector %" PRIu64 " has dimension %" PRIu32
                    ", the index dimension is %u",
                    r->name, r->row, d, (unsigned)r->dim);
    if (fread(r->raw, 4, d, r->f) != d) goto truncated;
    for (i = 0; i < d; i++)
        if (!isfinite(vec[i] = le_f32(r->raw + 4 * i)))
            return fail("%s: vector %" PRIu64 ", value %zu is %g", r->name,
                        r->row, i + 1, (double)vec[i]);
    r->done += 4 + 4 * (uint64_t)d;
    return row_key(r, key);
truncated:
    if (ferror(r->f))
        return fail("%s: read error: %s", r->name, strerror(errno));
    return fail("%s: file ends inside vector %" PRIu64 " (truncated?)", r->name,
                r->row);
}

static int read_npy_row(reader *r, uint64_t *key, float *vec, int *eof)
{
    size_t i, width = r->npy_f64 ? 8 : 4;
    if (r->row == r->npy_rows) {
        *eof = 1;
        return 0;
    }
    if (fread(r->raw, width, r->dim, r->f) != r->dim) {
        if (ferror(r->f))
            return fail("%s: read error: %s", r->name, strerror(errno));
        return fail("%s: file ends at row %" PRIu64 " of the %" PRIu64
                    " its header announces (truncated?)",
                    r->name, r->row, r->npy_rows);
    }
    for (i = 0; i < r->dim; i++) {
        if (r->npy_f64) {
            double v = le_f64(r->raw + 8 * i);
            if (!isfinite(v) || fabs(v) > FLT_MAX)
                return fail("%s: row %" PRIu64 ", value %zu is %g, not a "
                            "finite float",
                            r->name, r->row, i + 1, v);
            vec[i] = (float)v;
        } else if (!isfinite(vec[i] = le_f32(r->raw + 4 * i))) {
            return fail("%s: row %" PRIu64 ", value %zu is %g", r->name, r->row,
                        i + 1, (double)vec[i]);
        }
    }
    r->done += width * r->dim;
    return row_key(r, key);
}

/* Is every comma-separated field of the line a number? */
static int csv_all_numbers(const char *p)
{
    char *end;
    for (;;) {
        strtod(p, &end);
        if (end == p) return 0;
        p = end + strspn(end, " \t\r\n");
        if (*p == '\0') return 1;
        if (*p++ != ',') return 0;
    }
}

/* One CSV line: key, then dim numbers, separated by commas (spaces around
** fields are allowed). Empty lines are skipped. The first line may be a
** header: it is one when it is not all numbers ("key,x,y"), so that a
** first data row with a bad key is reported, not skipped. */
static int read_csv_row(reader *r, uint64_t *key, float *vec, int *eof)
{
    for (;;) {
        ssize_t len = getline(&r->text, &r->text_cap, r->f);
        const char *p, *kend;
        char *end;
        uint32_t i;
        if (len < 0) {
            if (ferror(r->f))
                return fail("%s: read error: %s", r->name, strerror(errno));
            *eof = 1;
            return 0;
        }
        r->line++;
        r->done += (uint64_t)len;
        p = r->text + strspn(r->text, " \t");
        if (*p == '\n' || *p == '\r' || *p == '\0') continue;
        if (parse_u64(p, key, &kend) != 0 ||
            *(kend += strspn(kend, " \t")) != ',') {
            if (r->line == 1 && !csv_all_numbers(p)) {
                /* A header: its column count is checked all the same, as
                ** a wrong one usually means a wrong file. */
                uint64_t cols = 1;
                for (; *p; p++) cols += *p == ',';
                if (cols != (uint64_t)r->dim + 1)
                    return fail("%s:1: the header has %" PRIu64
                                " columns, expected a key and %u values",
                                r->name, cols, (unsigned)r->dim);
                continue;
            }
            return fail("%s:%" PRIu64 ": the first field is not a key (an "
                        "unsigned integer below 2^64)",
                        r->name, r->line);
        }
        p = kend;
        for (i = 0; i < r->dim; i++) {
            if (*p != ',')
                return fail("%s:%" PRIu64 ": %u values after the key, "
                            "expected %u",
                            r->name, r->line, (unsigned)i, (unsigned)r->dim);
            p++;
            errno = 0;
            vec[i] = strtof(p, &end);
            if (end == p || !isfinite(vec[i]))
                return fail("%s:%" PRIu64 ": value %u ('%.*s') is not a "
                            "finite number that fits in a float",
                            r->name, r->line, (unsigned)i + 1,
                            (int)strcspn(p, ",\r\n"), p);
            p = end + strspn(end, " \t");
        }
        if (*p == ',')
            return fail("%s:%" PRIu64 ": more than %u values after the key",
                        r->name, r->line, (unsigned)r->dim);
        if (*p != '\0' && *p != '\n' && *p != '\r')
            return fail("%s:%" PRIu64 ": unexpected text '%.*s'", r->name,
                        r->line, (int)strcspn(p, "\r\n"), p);
        return 0;
    }
}

/* Read up to max rows into keys[] and vecs[]; *got is 0 at the end. */
static int reader_next(reader *r, size_t max, uint64_t *keys, float *vecs,
                       size_t *got)
{
    int eof = 0, rc = 0;
    size_t n;
    for (n = 0; n < max; n++) {
        float *v = vecs + n * r->dim;
        rc = r->fmt == FMT_FVECS ? read_fvecs_row(r, &keys[n], v, &eof)
             : r->fmt == FMT_NPY ? read_npy_row(r, &keys[n], v, &eof)
                                 : read_csv_row(r, &keys[n], v, &eof);
        if (rc || eof) break;
        r->row++;
    }
    *got = n;
    return rc;
}

/* Rows per chunk: big enough for the HNSW batch builder to use every
** thread, small enough that a chunk stays around 32 MB. */
static size_t chunk_rows(uint32_t dim)
{
    size_t n = ((size_t)32 << 20) / ((size_t)dim * sizeof(float));
    return n < 1 ? 1 : n > 8192 ? 8192 : n;
}

/* ---- Progress bar ------------------------------------------------------ */

typedef struct progress {
    int on;
    double start, last;
} progress;

static void progress_init(progress *pg, const args *a)
{
    pg->on = !a->val[O_QUIET] && isatty(STDERR_FILENO);
    pg->start = pg->last = now_seconds();
}

/* Redrawn at most ten times a second, unless `last` asks for the final
** frame. */
static void progress_show(progress *pg, const reader *r, const char *what,
                          int last)
{
    double t = now_seconds(), el = t - pg->start;
    char bar[31];
    if (!pg->on || (!last && t - pg->last < 0.1)) return;
    pg->last = t;
    if (r->size) {
        double f = (double)r->done / (double)r->size;
        int i, fill = (int)(f * 30 + 0.5);
        for (i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
        bar[30] = '\0';
        fprintf(stderr, "\r%s [%s] %3.0f%%  %" PRIu64 " rows  %.0f rows/s ",
                what, bar, f * 100, r->row, el > 0 ? (double)r->row / el : 0);
    } else {
        fprintf(stderr, "\r%s %" PRIu64 " rows  %.0f rows/s ", what, r->row,
                el > 0 ? (double)r->row / el : 0);
    }
    fflush(stderr);
}

static void progress_note(progress *pg, const char *what)
{
    if (!pg->on) return;
    fprintf(stderr, "\r\033[K%s", what);
    fflush(stderr);
}

static void progress_end(progress *pg)
{
    if (pg->on) fputs("\r\033[K", stderr);
}

/* ---- Opening ----------------------------------------------------------- */

/* Open an existing index. The file must exist: vecidx_open without
** VECIDX_CREATE says so too, but a plain "no such file" reads better.
** With --threads the handle needs params, whose kind, metric and dim must
** match the file's: a read-only look at the file provides them. */
static int open_index(const char *path, unsigned flags, uint32_t threads,
                      vecidx **ix)
{
    vecidx_params p;
    vecidx_stats_t st;
    vecidx *peek;
    struct stat sb;
    int rc;
    *ix = NULL;
    if (stat(path, &sb) != 0)
        return fail("cannot open index '%s': %s", path, strerror(errno));
    if (threads == 0) {
        rc = vecidx_open(path, NULL, flags, ix);
        return rc ? fail_lib(rc, NULL, "cannot open index '%s'", path) : 0;
    }
    if ((rc = vecidx_open(path, NULL, VECIDX_RDONLY, &peek)) != VECIDX_OK)
        return fail_lib(rc, NULL, "cannot open index '%s'", path);
    vecidx_stats(peek, &st);
    vecidx_close(peek);
    vecidx_params_init(&p, st.kind, st.metric, st.dim);
    p.threads = threads;
    if ((rc = vecidx_open(path, &p, flags, ix)) != VECIDX_OK)
        return fail_lib(rc, NULL, "cannot open index '%s'", path);
    return 0;
}

static uint64_t file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

/* Size of the write-ahead log PATH-wal, 0 when there is none. */
static uint64_t wal_size(const char *path)
{
    size_t n = strlen(path);
    char *w = malloc(n + 5);
    uint64_t size = 0;
    if (w) {
        memcpy(w, path, n);
        memcpy(w + n, "-wal", 5);
        size = file_size(w);
        free(w);
    }
    return size;
}

/* ---- create ------------------------------------------------------------ */

static const char help_create[] =
    "usage: vecidx create PATH --dim D [--kind hnsw|flat|ivfpq]\n"
    "                     [--metric l2|ip|cos] [options]\n"
    "\n"
    "Create an empty index file PATH (and its log, PATH-wal). PATH must not\n"
    "exist yet.\n"
    "\n"
    "  --dim D               vector dimension (required)\n"
    "  --kind K              hnsw (default), flat (exact) or ivfpq\n"
    "  --metric M            cos (default), l2 (squared) or ip (inner "
    "product)\n"
    "  --seed N              seed of the index's random choices (default 42)\n"
    "Flat and HNSW:\n"
    "  --storage S           f32 (default: float32), f16 (half precision),\n"
    "                        i8 (a byte per dimension, about a quarter of\n"
    "                        the memory) or bin (a bit per dimension; cos or\n"
    "                        ip, and only with --keep-vectors)\n"
    "HNSW:\n"
    "  --M N                 links per node (default 16)\n"
    "  --ef-construction N   build breadth (default 200)\n"
    "  --ef-search N         default search breadth (default 64)\n"
    "IVF-PQ:\n"
    "  --nlist N             coarse lists (default: chosen at training)\n"
    "  --nprobe N            default lists probed per query (default 8)\n"
    "  --pq-m N              code bytes per vector (default min(64, dim/4))\n"
    "  --train-size N        vectors buffered before the index trains "
    "itself\n"
    "f16, i8 or bin storage, and IVF-PQ:\n"
    "  --keep-vectors        also keep the float32 vectors (exact re-ranking,\n"
    "                        exact export)\n"
    "  --refine N            default re-rank factor: the k*N best by code\n"
    "                        distance are re-scored with the kept vectors\n"
    "                        (default: 20 for bin, 2 for f16 and i8, none\n"
    "                        for IVF-PQ, where it needs --keep-vectors)\n"
    "\n"
    "  --json                print the result as one JSON object\n";

static int parse_kind(const char *s, int *kind)
{
    *kind = strcmp(s, "hnsw") == 0    ? VECIDX_HNSW
            : strcmp(s, "flat") == 0  ? VECIDX_FLAT
            : strcmp(s, "ivfpq") == 0 ? VECIDX_IVFPQ
                                      : 0;
    return *kind ? 0
                 : usage_error("unknown --kind '%s' (hnsw, flat or ivfpq)", s);
}

static int parse_metric(const char *s, int *metric)
{
    *metric = strcmp(s, "l2") == 0   ? VECIDX_L2
              : strcmp(s, "ip") == 0 ? VECIDX_IP
              : strcmp(s, "cos") == 0 || strcmp(s, "cosine") == 0
                  ? VECIDX_COSINE
                  : 0;
    return *metric ? 0
                   : usage_error("unknown --metric '%s' (l2, ip or cos)", s);
}

static int parse_storage(const char *s, vecidx_params *p)
{
    static const struct {
        const char *name;
        uint32_t storage;
    } names[] = {{"f32", VECIDX_STORE_F32},
                 {"f16", VECIDX_STORE_F16},
                 {"i8", VECIDX_STORE_I8},
                 {"bin", VECIDX_STORE_BIN}};
    size_t i;
    for (i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i].name) == 0) {
            p->storage = names[i].storage;
            return 0;
        }
    return usage_error("unknown --storage '%s' (f32, f16, i8 or bin)", s);
}

static int cmd_create(const args *a)
{
    const char *path = a->pos[0];
    int kind = VECIDX_HNSW, metric = VECIDX_COSINE, rc;
    uint32_t dim = 0, keep;
    uint64_t seed;
    vecidx_params p;
    vecidx *ix;
    struct stat sb;
    if ((rc = need_pos(a, 1, "PATH"))) return rc;
    if (!a->val[O_DIM]) return usage_error("--dim is required");
    if ((rc = opt_u32(a, O_DIM, 1, VECIDX_MAX_DIM, &dim))) return rc;
    if (a->val[O_KIND] && (rc = parse_kind(a->val[O_KIND], &kind))) return rc;
    if (a->val[O_METRIC] && (rc = parse_metric(a->val[O_METRIC], &metric)))
        return rc;
    vecidx_params_init(&p, kind, metric, dim);
    /* Range checks beyond "a number" are the library's: its messages say
    ** what is allowed. */
    if ((rc = opt_u32(a, O_M, 0, UINT32_MAX, &p.hnsw_m)) ||
        (rc = opt_u32(a, O_EFC, 0, UINT32_MAX, &p.hnsw_ef_construction)) ||
        (rc = opt_u32(a, O_EFS, 0, UINT32_MAX, &p.hnsw_ef_search)) ||
        (rc = opt_u32(a, O_NLIST, 0, UINT32_MAX, &p.ivf_nlist)) ||
        (rc = opt_u32(a, O_NPROBE, 0, UINT32_MAX, &p.ivf_nprobe)) ||
        (rc = opt_u32(a, O_PQM, 0, UINT32_MAX, &p.pq_m)) ||
        (rc = opt_u32(a, O_REFINE, 0, UINT32_MAX,
                      kind == VECIDX_IVFPQ ? &p.ivf_refine : &p.refine)) ||
        (rc = opt_u32(a, O_TRAIN_SIZE, 0, UINT32_MAX, &p.ivf_train_size)))
        return rc;
    if (a->val[O_STORAGE] && (rc = parse_storage(a->val[O_STORAGE], &p)))
        return rc;
    /* One option for both kinds of index: the fields differ, the meaning
    ** (float32 vectors kept beside the codes) does not. */
    if (a->val[O_KEEP]) {
        if (kind == VECIDX_IVFPQ)
            p.ivf_keep_vectors = 1;
        else
            p.keep_vectors = 1;
    }
    if (a->val[O_SEED]) {
        if (parse_u64(a->val[O_SEED], &seed, NULL) != 0)
            return usage_error("--seed must be a whole number, not '%s'",
                               a->val[O_SEED]);
        p.seed = seed;
    }
    if (stat(path, &sb) == 0)
        return fail("'%s' already exists; create makes a new index (delete "
                    "'%s' and '%s-wal' to replace it)",
                    path, path, path);
    rc = vecidx_open(path, &p, VECIDX_CREATE, &ix);
    if (rc != VECIDX_OK)
        return fail_lib(rc, NULL, "cannot create index '%s'", path);
    vecidx_close(ix);
    keep = kind == VECIDX_IVFPQ ? p.ivf_keep_vectors : p.keep_vectors;
    if (json_out) {
        printf("{\"command\":\"create\",\"path\":");
        json_str(stdout, path);
        printf(",\"kind\":\"%s\",\"metric\":\"%s\",\"dim\":%u,"
               "\"storage\":\"%s\",\"keep_vectors\":%s}\n",
               kind_name(kind), metric_name(metric), (unsigned)dim,
               storage_name(kind, (int)p.storage), keep ? "true" : "false");
    } else {
        printf("created %s: %s index, %s metric, dimension %u, %s storage%s\n",
               path, kind_name(kind), metric_name(metric), (unsigned)dim,
               storage_name(kind, (int)p.storage),
               keep ? " (float32 vectors kept)" : "");
    }
    return 0;
}

/* ---- import ------------------------------------------------------------ */

static const char help_import[] =
    "usage: vecidx import PATH FILE [options]\n"
    "\n"
    "Add the vectors of FILE to the index PATH. FILE is read in chunks, so\n"
    "it may be larger than memory; '-' reads standard input (needs "
    "--format).\n"
    "  .fvecs  records of a little-endian int32 dimension and that many "
    "float32\n"
    "  .npy    a 2-D float32 or float64 array in C order, little-endian\n"
    "  .csv    one vector per line: key,v1,v2,...; an optional header line\n"
    "For .fvecs and .npy the key of each vector is its row number, plus\n"
    "--first-key. Rows go in by chunks of up to 8192, one vecidx_add_batch\n"
    "each. At a bad row, or a chunk the index refuses (a key already "
    "stored),\n"
    "the import stops; the rows added before it stay, and the message says\n"
    "how many. The log is synced and folded into the main file at the end.\n"
    "A progress bar is shown when stderr is a terminal.\n"
    "\n"
    "  --format F      fvecs, npy or csv, instead of FILE's extension\n"
    "  --first-key N   key of the first row of a .fvecs/.npy file (default "
    "0)\n"
    "  --upsert        replace vectors whose key is already stored (one call\n"
    "                  per row; without it a stored key is an error)\n"
    "  --train N       IVF-PQ: train on the first N vectors of FILE before\n"
    "                  adding (otherwise the index trains itself once it "
    "holds\n"
    "                  enough vectors)\n"
    "  --threads N     threads for building (default: one per CPU)\n"
    "  -q, --quiet     no progress bar\n"
    "  --json          print the result as one JSON object\n";

static int import_train(vecidx *ix, const char *file, int fmt, uint32_t dim,
                        uint64_t first_key, uint32_t n, progress *pg)
{
    reader r;
    uint64_t *keys = malloc(sizeof *keys * n);
    float *vecs = malloc(sizeof *vecs * (size_t)n * dim);
    size_t got = 0;
    int rc = EXIT_RUNTIME, lrc;
    if (!keys || !vecs) {
        fail("out of memory reading %u training vectors", (unsigned)n);
        goto out;
    }
    if (reader_open(&r, file, fmt, dim, first_key) == 0 &&
        reader_next(&r, n, keys, vecs, &got) == 0) {
        progress_note(pg, "training...");
        if ((lrc = vecidx_train(ix, got, vecs)) != VECIDX_OK)
            fail_lib(lrc, ix, "training on %zu vectors of '%s' failed", got,
                     file);
        else
            rc = 0;
    }
    reader_close(&r);
out:
    free(keys);
    free(vecs);
    return rc;
}

static int cmd_import(const args *a)
{
    const char *path = a->pos[0], *file = a->pos[1];
    uint32_t threads = 0, train = 0;
    uint64_t first_key = 0, added = 0;
    uint64_t *keys = NULL;
    float *vecs = NULL;
    size_t chunk, got, i;
    int fmt, rc, lrc = VECIDX_OK;
    vecidx *ix = NULL;
    vecidx_stats_t st;
    reader r;
    progress pg;
    double t0 = now_seconds(), secs;
    memset(&r, 0, sizeof r);
    if ((rc = need_pos(a, 2, "PATH and FILE"))) return rc;
    if ((rc = format_arg(a, file, &fmt)) ||
        (rc = opt_u32(a, O_THREADS, 1, 4096, &threads)) ||
        (rc = opt_u32(a, O_TRAIN, 1, UINT32_MAX, &train)))
        return rc;
    if (a->val[O_FIRST_KEY]) {
        if (fmt == FMT_CSV)
            return usage_error("--first-key applies to .fvecs and .npy "
                               "files; CSV rows carry their own keys");
        if (parse_u64(a->val[O_FIRST_KEY], &first_key, NULL) != 0)
            return usage_error("--first-key must be a whole number, not '%s'",
                               a->val[O_FIRST_KEY]);
    }
    if (train && strcmp(file, "-") == 0)
        return usage_error("--train reads FILE twice, so FILE cannot be '-'");
    /* Group commit: a chunk is one log append, and the sync at the end
    ** makes the whole import durable at once. */
    if ((rc = open_index(path, VECIDX_SYNC_NORMAL, threads, &ix))) return rc;
    vecidx_stats(ix, &st);
    if (train && st.kind != VECIDX_IVFPQ) {
        vecidx_close(ix);
        return usage_error("--train applies to ivfpq indexes; '%s' is %s", path,
                           kind_name(st.kind));
    }
    progress_init(&pg, a);
    if (train &&
        (rc = import_train(ix, file, fmt, st.dim, first_key, train, &pg)))
        goto out;
    chunk = chunk_rows(st.dim);
    keys = malloc(sizeof *keys * chunk);
    vecs = malloc(sizeof *vecs * chunk * st.dim);
    if (!keys || !vecs) {
        rc = fail("out of memory");
        goto out;
    }
    if ((rc = reader_open(&r, file, fmt, st.dim, first_key))) goto out;
    for (;;) {
        uint64_t from = r.row;
        /* Rows read before a bad one are still added, so that what the
        ** index keeps after an error is simply "every row before it". */
        int rrc = reader_next(&r, chunk, keys, vecs, &got);
        if (got == 0) {
            rc = rrc;
            break;
        }
        if (a->val[O_UPSERT]) {
            for (i = 0; i < got; i++, added++)
                if ((lrc = vecidx_upsert(ix, keys[i], vecs + i * st.dim)))
                    break;
            if (lrc != VECIDX_OK) {
                progress_end(&pg);
                rc = fail_lib(lrc, ix,
                              "'%s', row %" PRIu64 " (key %" PRIu64 ")", file,
                              from + i, keys[i]);
                break;
            }
        } else if ((lrc = vecidx_add_batch(ix, got, keys, vecs))) {
            /* The library names the row within the batch, and its key. */
            progress_end(&pg);
            rc = fail_lib(lrc, ix,
                          "'%s', the batch of rows %" PRIu64 "-%" PRIu64, file,
                          from, from + got - 1);
            break;
        } else {
            added += got;
        }
        if ((rc = rrc)) break;
        progress_show(&pg, &r, "importing", 0);
    }
    if (rc) {
        progress_end(&pg);
        fprintf(stderr,
                "vecidx: rows added before the error, and kept: "
                "%" PRIu64 "\n",
                added);
        goto out;
    }
    /* The final frame stays on screen: it gives the rate of the whole
    ** import. */
    progress_show(&pg, &r, "importing", 1);
    if (pg.on) fputc('\n', stderr);
    progress_note(&pg, "writing the index file...");
    if ((lrc = vecidx_sync(ix)) != VECIDX_OK ||
        (lrc = vecidx_checkpoint(ix)) != VECIDX_OK) {
        progress_end(&pg);
        rc = fail_lib(lrc, ix, "cannot write '%s'", path);
        goto out;
    }
    progress_end(&pg);
    vecidx_stats(ix, &st);
    secs = now_seconds() - t0;
    if (json_out) {
        printf("{\"command\":\"import\",\"path\":");
        json_str(stdout, path);
        printf(",\"file\":");
        json_str(stdout, file);
        printf(",\"rows\":%" PRIu64 ",\"count\":%" PRIu64
               ",\"trained\":%s,\"seconds\":%.3f}\n",
               added, st.count, st.trained ? "true" : "false", secs);
    } else {
        printf("imported %" PRIu64
               " vectors from %s in %.2f s; %s holds %" PRIu64 "\n",
               added, file, secs, path, st.count);
    }
    if (st.kind == VECIDX_IVFPQ && !st.trained)
        warn("the IVF-PQ index is not trained yet: its %" PRIu64 " vectors "
             "are searched exactly until it holds enough to train itself "
             "(or import with --train N)",
             st.count);
out:
    reader_close(&r);
    free(keys);
    free(vecs);
    vecidx_close(ix);
    return rc;
}

/* ---- query ------------------------------------------------------------- */

static const char help_query[] =
    "usage: vecidx query PATH (--vector V | --fvecs FILE) [-k N] [options]\n"
    "\n"
    "Print the k stored vectors closest to each query, closest first.\n"
    "  --vector V    one query: comma- or space-separated numbers, e.g.\n"
    "                \"0.1,0.2,0.3\" (brackets are ignored)\n"
    "  --fvecs FILE  every vector of an .fvecs file is a query\n"
    "  -k N          results per query (default 10)\n"
    "  --ef N        HNSW search breadth (default: the index's)\n"
    "  --nprobe N    IVF-PQ lists to probe (default: the index's)\n"
    "  --refine N    re-rank factor (default: the index's): IVF-PQ, or\n"
    "                compressed storage with the float32 vectors kept\n"
    "  --threads N   threads for --fvecs queries (default: one per CPU)\n"
    "  --allow FILE  return only keys listed in FILE ('-': standard input),\n"
    "                one decimal key per line; blank lines and text from #\n"
    "                to the end of a line are ignored. Keys not in the\n"
    "                index are fine; a file without keys admits none\n"
    "  --json        one JSON object per result:\n"
    "                {\"query\":0,\"rank\":1,\"key\":42,\"distance\":0.1}\n"
    "Text output has a header line, then: query, rank, key, distance.\n"
    "Distances are smaller-is-closer: squared L2, -inner product, or cosine\n"
    "distance.\n";

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* --allow FILE: the keys the queries may return, kept whole in memory
** as the library needs them for the call. A key per line rather than a
** free-form list so that an error can name its line, and comments so the
** file can say where the keys came from. */
static int read_allow(const char *path, uint64_t **out, size_t *count)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    const char *name = f == stdin ? "(standard input)" : path;
    char *text = NULL;
    size_t text_cap = 0, cap = 1024, n = 0, i, j;
    uint64_t line = 0, *keys = NULL;
    int rc = 0;
    if (!f) return fail("cannot open '%s': %s", path, strerror(errno));
    if (!(keys = malloc(cap * sizeof *keys))) rc = fail("out of memory");
    while (!rc) {
        const char *p, *end;
        int bad;
        ssize_t len = getline(&text, &text_cap, f);
        if (len < 0) {
            if (ferror(f))
                rc = fail("%s: read error: %s", name, strerror(errno));
            break;
        }
        line++;
        p = text + strspn(text, " \t");
        if (*p == '#' || *p == '\r' || *p == '\n' || *p == '\0') continue;
        bad = parse_u64(p, &keys[n], &end) != 0;
        if (!bad) {
            end += strspn(end, " \t");
            bad = *end && *end != '#' && *end != '\r' && *end != '\n';
        }
        if (bad) {
            rc = fail("%s:%" PRIu64 ": '%.*s' is not a key (an unsigned "
                      "integer below 2^64)",
                      name, line, (int)strcspn(p, "\r\n"), p);
            break;
        }
        if (++n == cap) {
            uint64_t *more = realloc(keys, 2 * cap * sizeof *keys);
            if (!more) {
                rc = fail("out of memory");
                break;
            }
            keys = more;
            cap *= 2;
        }
    }
    free(text);
    if (f != stdin) fclose(f);
    if (rc) {
        free(keys);
        return rc;
    }
    if (n == 0) warn("%s lists no keys: no result can be returned", name);
    /* ascending and distinct: the library then walks the keys as given,
    ** where it would gather them into a set for every query */
    qsort(keys, n, sizeof *keys, cmp_u64);
    for (i = j = 0; i < n; i++)
        if (j == 0 || keys[i] != keys[j - 1]) keys[j++] = keys[i];
    *out = keys;
    *count = j;
    return 0;
}

/* --vector "0.1, 0.2 0.3" or "[0.1,0.2,0.3]" */
static int parse_vector(const char *s, float **out, uint32_t *n)
{
    size_t cap = 16, len = 0;
    float *v = malloc(cap * sizeof *v);
    const char *p = s;
    char *end;
    if (!v) return fail("out of memory");
    for (;;) {
        p += strspn(p, " \t\n,[]");
        if (*p == '\0') break;
        if (len == cap) {
            float *nv = realloc(v, 2 * cap * sizeof *v);
            if (!nv) {
                free(v);
                return fail("out of memory");
            }
            v = nv;
            cap *= 2;
        }
        errno = 0;
        v[len] = strtof(p, &end);
        if (end == p || (errno == ERANGE && isinf(v[len])) ||
            (*end && !strchr(" \t\n,[]", *end))) {
            free(v);
            return usage_error("--vector: '%.*s' is not a number",
                               (int)strcspn(p, " \t\n,[]"), p);
        }
        len++;
        p = end;
    }
    if (len == 0 || len > VECIDX_MAX_DIM) {
        free(v);
        return usage_error("--vector needs 1 to %u numbers",
                           (unsigned)VECIDX_MAX_DIM);
    }
    *out = v;
    *n = (uint32_t)len;
    return 0;
}

static void print_header(void)
{
    if (!json_out) printf("query  rank  key                  distance\n");
}

static void print_results(uint64_t q0, size_t nq, size_t k,
                          const uint64_t *keys, const float *dists,
                          const size_t *found)
{
    size_t q, j;
    for (q = 0; q < nq; q++)
        for (j = 0; j < found[q]; j++) {
            uint64_t key = keys[q * k + j];
            double d = dists[q * k + j];
            if (json_out)
                printf("{\"query\":%" PRIu64 ",\"rank\":%zu,\"key\":%" PRIu64
                       ",\"distance\":%.9g}\n",
                       q0 + q, j + 1, key, d);
            else
                printf("%-6" PRIu64 " %-5zu %-20" PRIu64 " %.6g\n", q0 + q,
                       j + 1, key, d);
        }
}

static int cmd_query(const args *a)
{
    const char *path = a->pos[0];
    uint32_t k = 10, threads = 0, n = 0;
    vecidx_search_opts so;
    vecidx_stats_t st;
    vecidx *ix = NULL;
    float *q = NULL, *dists = NULL;
    uint64_t *keys = NULL, *allow = NULL;
    size_t *found = NULL, nq, got, batch;
    reader r;
    int rc, lrc;
    memset(&so, 0, sizeof so);
    memset(&r, 0, sizeof r);
    if ((rc = need_pos(a, 1, "PATH"))) return rc;
    if (!a->val[O_VECTOR] == !a->val[O_FVECS])
        return usage_error("give exactly one of --vector and --fvecs");
    if ((rc = opt_u32(a, O_K, 1, 1u << 20, &k)) ||
        (rc = opt_u32(a, O_EF, 1, UINT32_MAX, &so.ef)) ||
        (rc = opt_u32(a, O_NPROBE, 1, UINT32_MAX, &so.nprobe)) ||
        (rc = opt_u32(a, O_REFINE, 1, UINT32_MAX, &so.refine)) ||
        (rc = opt_u32(a, O_THREADS, 1, 4096, &threads)))
        return rc;
    so.threads = threads;
    if (a->val[O_ALLOW] && a->val[O_FVECS] &&
        strcmp(a->val[O_ALLOW], "-") == 0 && strcmp(a->val[O_FVECS], "-") == 0)
        return usage_error("--allow and --fvecs cannot both read standard "
                           "input");
    if (a->val[O_VECTOR] && (rc = parse_vector(a->val[O_VECTOR], &q, &n)))
        return rc;
    /* Non-NULL even when the file holds no keys: that admits nothing,
    ** where NULL would admit everything. */
    if (a->val[O_ALLOW] &&
        (rc = read_allow(a->val[O_ALLOW], &allow, &so.allow_count)))
        goto out;
    so.allow_keys = allow;
    if ((rc = open_index(path, VECIDX_RDONLY, 0, &ix))) goto out;
    vecidx_stats(ix, &st);
    batch = q ? 1 : 1024;
    keys = malloc(sizeof *keys * batch * k);
    dists = malloc(sizeof *dists * batch * k);
    found = malloc(sizeof *found * batch);
    if (!keys || !dists || !found) {
        rc = fail("out of memory");
        goto out;
    }
    if (q) {
        if (n != st.dim) {
            rc = fail("the query has %u values, the index dimension is %u",
                      (unsigned)n, (unsigned)st.dim);
            goto out;
        }
        lrc = vecidx_search(ix, q, k, &so, keys, dists, found);
        if (lrc != VECIDX_OK) {
            rc = fail_lib(lrc, ix, "search failed");
            goto out;
        }
        print_header();
        print_results(0, 1, k, keys, dists, found);
        goto out;
    }
    if ((rc = reader_open(&r, a->val[O_FVECS], FMT_FVECS, st.dim, 0))) goto out;
    print_header();
    if (!(q = malloc(sizeof *q * batch * st.dim))) {
        rc = fail("out of memory");
        goto out;
    }
    for (nq = 0;; nq += got) {
        if ((rc = reader_next(&r, batch, keys, q, &got)) || got == 0) break;
        lrc = vecidx_search_batch(ix, got, q, k, &so, keys, dists, found);
        if (lrc != VECIDX_OK) {
            rc = fail_lib(lrc, ix, "queries %zu-%zu of '%s'", nq, nq + got - 1,
                          a->val[O_FVECS]);
            break;
        }
        print_results(nq, got, k, keys, dists, found);
    }
out:
    reader_close(&r);
    free(q);
    free(allow);
    free(keys);
    free(dists);
    free(found);
    vecidx_close(ix);
    return rc;
}

/* ---- stats, check, checkpoint ----------------------------------------- */

static const char help_stats[] =
    "usage: vecidx stats PATH [--json]\n"
    "\n"
    "Print every counter of the index (vecidx_stats_ex): what it is (kind,\n"
    "metric, dimension, storage), the search defaults in force (HNSW ef,\n"
    "IVF-PQ nprobe, the refine factor with kept vectors: what 'vecidx tune'\n"
    "sets), how many vectors it holds, its memory by part (vectors, HNSW\n"
    "links, key map, IVF-PQ lists, other), its file and log, and for a\n"
    "trained IVF-PQ index the sizes of its lists and their drift. Opens the\n"
    "file read-only: safe while another process writes the index.\n"
    "\n"
    "Activity (searches, inserts, removes, their latency percentiles,\n"
    "distances and nodes per search, repairs, checkpoints) is counted per\n"
    "handle since it was opened, and the handle this command opens does\n"
    "nothing: it shows zeros. A program reads its own with vecidx_stats_ex\n"
    "(Python: Index.stats()). The log is the one this handle replayed at\n"
    "open: log_bytes is the size of PATH-wal as it found it (32 bytes for\n"
    "a log holding only its header) and log_records the writes in it that\n"
    "the main file does not hold yet; wal_bytes is the size of PATH-wal\n"
    "when the command ends (a writer may have appended since).\n"
    "\n"
    "  --json   one JSON object whose keys are the field names of\n"
    "           vecidx_stats_t: kind, metric, storage and simd as names\n"
    "           (storage \"pq\" for IVF-PQ), trained as true or false, each\n"
    "           *_latency as {\"count\",\"p50_us\",\"p95_us\",\"p99_us\",\n"
    "           \"max_us\"}; ef_search, nprobe and refine 0 where they do\n"
    "           not apply; and command, path, file_bytes, wal_bytes and\n"
    "           version\n";

/* Bytes for people: exact below 1 KiB, else one decimal of a binary unit
** (the JSON output has the exact numbers). */
static const char *human_bytes(uint64_t n, char buf[32])
{
    static const char *const unit[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)n;
    int u = -1;
    if (n < 1024) {
        snprintf(buf, 32, "%" PRIu64 " B", n);
        return buf;
    }
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    snprintf(buf, 32, "%.1f %s", v, unit[u]);
    return buf;
}

/* JSON has no NaN or infinity; a counter that somehow is one must not
** make the whole object unparseable. */
static void json_num(const char *key, double v, int decimals)
{
    printf(",\"%s\":", key);
    if (isfinite(v))
        printf("%.*f", decimals, v);
    else
        fputs("null", stdout);
}

static void json_u64(const char *key, uint64_t v)
{
    printf(",\"%s\":%" PRIu64, key, v);
}

static void json_latency(const char *key, const vecidx_latency *l)
{
    printf(",\"%s\":{\"count\":%" PRIu64, key, l->count);
    json_num("p50_us", l->p50_us, 3);
    json_num("p95_us", l->p95_us, 3);
    json_num("p99_us", l->p99_us, 3);
    json_num("max_us", l->max_us, 3);
    putchar('}');
}

/* Every field of vecidx_stats_t in the struct's order, so that a field
** added to the struct has an obvious place here. */
static void stats_json(const char *path, const vecidx_stats_t *st,
                       uint64_t fsize, uint64_t wsize)
{
    printf("{\"command\":\"stats\",\"path\":");
    json_str(stdout, path);
    printf(",\"kind\":\"%s\",\"metric\":\"%s\",\"dim\":%u", kind_name(st->kind),
           metric_name(st->metric), (unsigned)st->dim);
    json_u64("count", st->count);
    json_u64("slots", st->slots);
    json_u64("capacity", st->capacity);
    json_u64("memory_bytes", st->memory_bytes);
    json_u64("mapped_bytes", st->mapped_bytes);
    printf(",\"simd\":");
    json_str(stdout, st->simd ? st->simd : "");
    printf(",\"trained\":%s,\"nlist\":%u,\"pq_m\":%u,\"storage\":\"%s\","
           "\"vector_bytes\":%u",
           st->trained ? "true" : "false", (unsigned)st->nlist,
           (unsigned)st->pq_m, storage_name(st->kind, st->storage),
           (unsigned)st->vector_bytes);
    json_u64("searches", st->searches);
    json_u64("inserts", st->inserts);
    json_u64("removes", st->removes);
    json_latency("search_latency", &st->search_latency);
    json_latency("batch_latency", &st->batch_latency);
    json_latency("insert_latency", &st->insert_latency);
    json_latency("remove_latency", &st->remove_latency);
    json_latency("checkpoint_latency", &st->checkpoint_latency);
    json_num("distances_per_search", st->distances_per_search, 3);
    json_num("visited_per_search", st->visited_per_search, 3);
    json_u64("buried", st->buried);
    json_u64("repairs", st->repairs);
    json_u64("log_bytes", st->log_bytes);
    json_u64("log_records", st->log_records);
    json_u64("checkpoints", st->checkpoints);
    json_num("last_checkpoint_time", st->last_checkpoint_time, 6);
    json_num("last_checkpoint_seconds", st->last_checkpoint_seconds, 6);
    json_u64("mem_vectors", st->mem_vectors);
    json_u64("mem_links", st->mem_links);
    json_u64("mem_keymap", st->mem_keymap);
    json_u64("mem_lists", st->mem_lists);
    json_u64("mem_other", st->mem_other);
    json_u64("list_min", st->list_min);
    json_u64("list_median", st->list_median);
    json_u64("list_max", st->list_max);
    json_num("drift", st->drift, 6);
    json_u64("ef_search", st->ef_search);
    json_u64("nprobe", st->nprobe);
    json_u64("refine", st->refine);
    json_u64("file_bytes", fsize);
    json_u64("wal_bytes", wsize);
    printf(",\"version\":\"%s\"}\n", vecidx_version());
}

static void stats_text(const char *path, const vecidx_stats_t *st,
                       uint64_t fsize, uint64_t wsize)
{
    static const char *const op[] = {"search", "batch", "insert", "remove",
                                     "checkpoint"};
    const vecidx_latency *lat[] = {&st->search_latency, &st->batch_latency,
                                   &st->insert_latency, &st->remove_latency,
                                   &st->checkpoint_latency};
    char b1[32], b2[32];
    size_t i, nop = sizeof op / sizeof op[0];
    int active = st->searches || st->inserts || st->removes || st->repairs;
    for (i = 0; i < nop; i++) active |= lat[i]->count > 0;
    printf("path          %s\n"
           "kind          %s\n"
           "metric        %s\n"
           "dimension     %u\n",
           path, kind_name(st->kind), metric_name(st->metric),
           (unsigned)st->dim);
    if (st->kind != VECIDX_IVFPQ)
        printf("storage       %s, %u bytes per vector%s\n",
               storage_name(st->kind, st->storage), (unsigned)st->vector_bytes,
               st->kind == VECIDX_HNSW ? " with its level-0 links" : "");
    if (st->kind == VECIDX_HNSW)
        printf("search        ef %u", (unsigned)st->ef_search);
    else if (st->kind == VECIDX_IVFPQ)
        printf("search        nprobe %u", (unsigned)st->nprobe);
    else
        printf("search        scan");
    if (st->refine) printf(", refine %u", (unsigned)st->refine);
    printf("\nsimd          %s\n"
           "library       %s\n",
           st->simd ? st->simd : "?", vecidx_version());

    printf("\nvectors       %" PRIu64 "\n"
           "slots         %" PRIu64 " used, %" PRIu64 " allocated\n",
           st->count, st->slots, st->capacity);
    if (st->kind == VECIDX_HNSW)
        printf("buried        %" PRIu64 " removed nodes still linked, awaiting "
               "repair\n",
               st->buried);
    if (st->kind == VECIDX_IVFPQ) {
        printf("trained       %s\n",
               st->trained ? "yes" : "no (vectors are searched exactly)");
        if (st->trained)
            printf("lists         %u, %u code bytes per vector\n"
                   "list sizes    min %u, median %u, max %u\n"
                   "drift         %.1f %% of the entries added since "
                   "training\n",
                   (unsigned)st->nlist, (unsigned)st->pq_m,
                   (unsigned)st->list_min, (unsigned)st->list_median,
                   (unsigned)st->list_max, st->drift * 100);
    }

    printf("\nmemory        %s allocated, %s mapped from the file\n",
           human_bytes(st->memory_bytes, b1),
           human_bytes(st->mapped_bytes, b2));
    printf("  vectors     %s\n", human_bytes(st->mem_vectors, b1));
    printf("  links       %s\n", human_bytes(st->mem_links, b1));
    printf("  key map     %s\n", human_bytes(st->mem_keymap, b1));
    printf("  lists       %s\n", human_bytes(st->mem_lists, b1));
    printf("  other       %s\n", human_bytes(st->mem_other, b1));
    printf("file          %" PRIu64 " bytes, log %" PRIu64 " bytes\n", fsize,
           wsize);

    if (st->log_bytes || st->log_records)
        printf("log at open   %s, %" PRIu64 " writes not checkpointed\n",
               human_bytes(st->log_bytes, b1), st->log_records);
    if (st->checkpoints) {
        printf("\ncheckpoints   %" PRIu64, st->checkpoints);
        if (st->last_checkpoint_time > 0) {
            time_t t = (time_t)st->last_checkpoint_time;
            struct tm tm;
            char when[32] = "?";
            if (localtime_r(&t, &tm))
                strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
            printf(", the last at %s, taking %.3f s", when,
                   st->last_checkpoint_seconds);
        }
        putchar('\n');
    }
    if (!active) {
        printf("\nactivity      none (counted per handle; this one only "
               "read)\n");
        return;
    }
    putchar('\n');
    printf("searches      %" PRIu64, st->searches);
    if (st->searches)
        printf(", %.1f distances and %.1f %s per search",
               st->distances_per_search, st->visited_per_search,
               st->kind == VECIDX_IVFPQ ? "lists probed" : "nodes visited");
    printf("\ninserts       %" PRIu64 "\n"
           "removes       %" PRIu64 "\n",
           st->inserts, st->removes);
    if (st->kind == VECIDX_HNSW)
        printf("repairs       %" PRIu64 " passes begun\n", st->repairs);
    printf("latency (us)       calls        p50        p95        p99        "
           "max\n");
    for (i = 0; i < nop; i++)
        if (lat[i]->count)
            printf("  %-11s %10" PRIu64 " %10.1f %10.1f %10.1f %10.1f\n", op[i],
                   lat[i]->count, lat[i]->p50_us, lat[i]->p95_us,
                   lat[i]->p99_us, lat[i]->max_us);
}

static int cmd_stats(const args *a)
{
    const char *path = a->pos[0];
    vecidx *ix;
    vecidx_stats_t st;
    int rc, lrc;
    if ((rc = need_pos(a, 1, "PATH"))) return rc;
    if ((rc = open_index(path, VECIDX_RDONLY, 0, &ix))) return rc;
    lrc = vecidx_stats_ex(ix, &st, sizeof st);
    if (lrc != VECIDX_OK) rc = fail_lib(lrc, ix, "stats of '%s'", path);
    vecidx_close(ix);
    if (rc) return rc;
    if (json_out)
        stats_json(path, &st, file_size(path), wal_size(path));
    else
        stats_text(path, &st, file_size(path), wal_size(path));
    return 0;
}

static const char help_check[] =
    "usage: vecidx check PATH [--json]\n"
    "\n"
    "Verify the index file, its log and every internal invariant of the\n"
    "index (vecidx_check). Exit status 0 when it is sound, 1 when not.\n"
    "Read-only: safe while another process writes the index.\n";

static int cmd_check(const args *a)
{
    const char *path = a->pos[0];
    vecidx *ix;
    const char *what = "open";
    uint64_t count = 0;
    char detail[1024];
    int rc, lrc;
    if ((rc = need_pos(a, 1, "PATH"))) return rc;
    lrc = vecidx_open(path, NULL, VECIDX_RDONLY, &ix);
    if (lrc == VECIDX_OK) {
        what = "check";
        count = vecidx_count(ix);
        lrc = vecidx_check(ix);
    }
    if (lrc != VECIDX_OK) {
        snprintf(detail, sizeof detail, "%s: %s", vecidx_strerror(lrc),
                 vecidx_errmsg(ix));
        fail_lib(lrc, ix, "'%s' failed the %s", path, what);
    }
    vecidx_close(ix);
    if (json_out) {
        printf("{\"command\":\"check\",\"path\":");
        json_str(stdout, path);
        if (lrc == VECIDX_OK) {
            printf(",\"ok\":true,\"count\":%" PRIu64 "}\n", count);
        } else {
            printf(",\"ok\":false,\"error\":");
            json_str(stdout, detail);
            printf("}\n");
        }
    } else if (lrc == VECIDX_OK) {
        printf("%s: ok, %" PRIu64 " vectors\n", path, count);
    }
    return lrc == VECIDX_OK ? 0 : EXIT_RUNTIME;
}

static const char help_checkpoint[] =
    "usage: vecidx checkpoint PATH [--json]\n"
    "\n"
    "Fold the write-ahead log PATH-wal into the main file PATH, leaving an\n"
    "empty log. Fails if another process has the index open for writing.\n";

static int cmd_checkpoint(const args *a)
{
    const char *path = a->pos[0];
    vecidx *ix;
    uint64_t before;
    int rc, lrc;
    if ((rc = need_pos(a, 1, "PATH"))) return rc;
    before = wal_size(path);
    if ((rc = open_index(path, VECIDX_SYNC_FULL, 0, &ix))) return rc;
    lrc = vecidx_checkpoint(ix);
    if (lrc != VECIDX_OK) rc = fail_lib(lrc, ix, "checkpoint of '%s'", path);
    vecidx_close(ix);
    if (rc) return rc;
    if (json_out) {
        printf("{\"command\":\"checkpoint\",\"path\":");
        json_str(stdout, path);
        printf(",\"wal_bytes_before\":%" PRIu64 ",\"wal_bytes\":%" PRIu64
               ",\"file_bytes\":%" PRIu64 "}\n",
               before, wal_size(path), file_size(path));
    } else {
        printf("%s: log of %" PRIu64 " bytes folded in; file %" PRIu64
               " bytes\n",
               path, before, file_size(path));
    }
    return 0;
}

/* ---- recall, tune ------------------------------------------------------ */

static const char help_recall[] =
    "usage: vecidx recall PATH [-k N] [--queries FILE [--gt FILE]] [--n N]\n"
    "                     [--ef N] [--nprobe N] [--refine N] [--allow FILE]\n"
    "                     [--json]\n"
    "\n"
    "Measure recall@k of the index's search (vecidx_estimate_recall): the\n"
    "share of each query's exact k nearest that the search returns, averaged\n"
    "over the queries, with its 95 % confidence interval, and the mean time\n"
    "of a search. Opens the file read-only: safe while another process\n"
    "writes the index.\n"
    "\n"
    "  -k N           neighbours per query (default 10)\n"
    "  --queries FILE the queries, an .fvecs file of the index's dimension\n"
    "                 (default: sample queries the library makes by moving\n"
    "                 stored vectors a little in random directions)\n"
    "  --gt FILE      the exact answers to --queries, an .ivecs file: per\n"
    "                 query a little-endian int32 count, then that many int32\n"
    "                 KEYS, nearest first, at least k of them; -1 ends a\n"
    "                 query's list early. The ground truth of the benchmark\n"
    "                 data sets holds base row numbers, which are the keys of\n"
    "                 an index imported from the base .fvecs or .npy file\n"
    "                 without --first-key. Without --gt the exact answers\n"
    "                 come from a scan of every vector the index holds; of\n"
    "                 an index that keeps only codes (IVF-PQ, compressed\n"
    "                 storage without --keep-vectors), a scan of the codes:\n"
    "                 then the recall says what the search loses against\n"
    "                 the codes, not what the codes lose against the\n"
    "                 vectors\n"
    "  --n N          with --queries, the first N of them (default all);\n"
    "                 without, the number of sample queries (default 200)\n"
    "  --ef N         HNSW search breadth (default: the index's)\n"
    "  --nprobe N     IVF-PQ lists to probe (default: the index's)\n"
    "  --refine N     re-rank factor with kept float32 vectors (default: the\n"
    "                 index's)\n"
    "  --allow FILE   measure searches that return only the keys listed in\n"
    "                 FILE (as for 'vecidx query'); the exact answers from\n"
    "                 the scan are limited to them too, those of --gt are\n"
    "                 taken as given\n"
    "  --json         one JSON object: command, path, ef, nprobe, refine (the\n"
    "                 setting measured, 0 where it does not apply), then the\n"
    "                 fields of vecidx_recall: recall, low, high, queries\n"
    "                 (those with an admissible vector), k, search_us,\n"
    "                 vs_codes (true: measured against a scan of codes)\n";

static const char help_tune[] =
    "usage: vecidx tune PATH --recall R [-k N] [--queries FILE [--gt FILE]]\n"
    "                   [--n N] [--json]\n"
    "\n"
    "Find the cheapest search setting whose recall@k reaches R, and store it\n"
    "in the index file as its default (vecidx_tune): HNSW ef 10, 16, 24, 32,\n"
    "48, 64, ... 2048; IVF-PQ nprobe 1, 2, 4, ... up to every list; with\n"
    "kept float32 vectors, for each of those the refine factors 1, 2, 4, 8,\n"
    "16, 32, smallest first. Recall is measured as 'vecidx recall' measures\n"
    "it, on the same queries for every setting. Searches made later without\n"
    "--ef, --nprobe or --refine use the setting chosen ('vecidx stats' shows\n"
    "it). Opens the index for writing (it is checkpointed to store the\n"
    "setting), so no other process may have it open for writing.\n"
    "\n"
    "  --recall R     the target, a number in (0, 1], e.g. 0.95 (required)\n"
    "  -k N           neighbours per query (default 10)\n"
    "  --queries FILE the queries, an .fvecs file (default: sample queries\n"
    "                 made from stored vectors)\n"
    "  --gt FILE      their exact answers as KEYS, an .ivecs file (see\n"
    "                 'vecidx recall --help'). Only exact answers from the\n"
    "                 original vectors show what compressed codes lose: an\n"
    "                 IVF-PQ index without --keep-vectors measured without\n"
    "                 --gt is measured against its codes, and reaches\n"
    "                 recall 1 by probing every list\n"
    "  --n N          with --queries, the first N of them (default all);\n"
    "                 without, the number of sample queries (default 200).\n"
    "                 More queries narrow the interval around the estimate\n"
    "  --json         one JSON object: command, path, target, then the\n"
    "                 fields of vecidx_tuning: reached, ef, nprobe, refine,\n"
    "                 steps, recall (an object as 'vecidx recall --json'\n"
    "                 prints: recall, low, high, queries, k, search_us,\n"
    "                 vs_codes) and advice\n"
    "\n"
    "Prints the setting chosen with the recall measured there (and a note\n"
    "when that was against codes), or, when no setting reaches R, the best\n"
    "one tried and what would reach R (a finer index: the advice); the\n"
    "index is then left unchanged. Exit status: 0 reached, 3 not reached,\n"
    "1 a failure, 2 a malformed command line.\n";

/* Checked here rather than left to vecidx_tune so that a typo is a usage
** error (status 2) before the index is opened for writing. */
static int parse_target(const char *s, double *out)
{
    char *end;
    double v;
    errno = 0;
    v = strtod(s, &end);
    if (end == s || *end || errno == ERANGE || !(v > 0 && v <= 1))
        return usage_error("--recall must be a number above 0 and at most 1 "
                           "(e.g. 0.95), not '%s'",
                           s);
    *out = v;
    return 0;
}

/* What a measurement runs on: the caller's queries, and their exact
** answers, or nothing, for the library to make sample queries. */
typedef struct measure_set {
    uint32_t k;
    uint32_t n;      /* --n, 0 = all queries / the library's default */
    size_t nq;       /* queries read (0 with no --queries) */
    float *q;        /* nq * dim */
    uint64_t *truth; /* nq * k keys, or NULL */
} measure_set;

static void measure_free(measure_set *m)
{
    free(m->q);
    free(m->truth);
    m->q = NULL;
    m->truth = NULL;
}

/* Checked before the index is opened: tune opens it for writing, which
** a malformed command line should not get as far as. */
static int measure_args(const args *a, measure_set *m)
{
    int rc;
    memset(m, 0, sizeof *m);
    m->k = 10;
    if ((rc = opt_u32(a, O_K, 1, 1u << 20, &m->k)) ||
        (rc = opt_u32(a, O_N, 1, UINT32_MAX, &m->n)))
        return rc;
    if (a->val[O_GT] && !a->val[O_QUERIES])
        return usage_error("--gt holds the answers to --queries; give both");
    if (a->val[O_GT] && strcmp(a->val[O_GT], "-") == 0 &&
        strcmp(a->val[O_QUERIES], "-") == 0)
        return usage_error("--queries and --gt cannot both read standard "
                           "input");
    return 0;
}

/* Every vector of an .fvecs file (the first `max`, if not 0), in memory
** at once: the library takes the queries as one array. */
static int read_queries(const char *path, uint32_t dim, size_t max, float **out,
                        size_t *nq)
{
    reader r;
    size_t chunk = chunk_rows(dim), cap = 0, n = 0, got;
    uint64_t *keys = malloc(sizeof *keys * chunk);
    float *q = NULL;
    int rc;
    *out = NULL;
    *nq = 0;
    if (!keys) return fail("out of memory");
    if ((rc = reader_open(&r, path, FMT_FVECS, dim, 0))) goto out;
    for (;;) {
        size_t want = max && max - n < chunk ? max - n : chunk;
        if (want == 0) break;
        if (n + want > cap) {
            size_t ncap = cap ? cap * 2 : chunk;
            float *more;
            while (ncap < n + want) ncap *= 2;
            if (!(more = realloc(q, sizeof *q * ncap * dim))) {
                rc = fail("out of memory for the queries of '%s'", path);
                goto out;
            }
            q = more;
            cap = ncap;
        }
        if ((rc = reader_next(&r, want, keys, q + n * dim, &got))) goto out;
        if (got == 0) break;
        n += got;
    }
    if (n == 0) {
        rc = fail("%s holds no vectors", r.name);
        goto out;
    }
    /* A file shorter than --n is more likely the wrong file than a wish
    ** for fewer queries. */
    if (max && n < max) {
        rc = fail("%s holds %zu queries, fewer than --n %zu", r.name, n, max);
        goto out;
    }
    *out = q;
    *nq = n;
    q = NULL;
out:
    reader_close(&r);
    free(keys);
    free(q);
    return rc;
}

/* The first nq rows of an .ivecs file as k keys per query: a count, then
** that many int32 values, of which the first k are kept. -1 (what FAISS
** gives where fewer results exist) ends a query's list; the library reads
** UINT64_MAX the same way. */
static int read_truth(const char *path, const char *qname, size_t nq,
                      uint32_t k, uint64_t **out)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    const char *name = f == stdin ? "(standard input)" : path;
    unsigned char *row = NULL, head[4];
    size_t cap = 0, i, j;
    uint64_t *t;
    int rc = EXIT_RUNTIME;
    *out = NULL;
    if (!f) return fail("cannot open '%s': %s", path, strerror(errno));
    if (!(t = malloc(sizeof *t * nq * k))) {
        fail("out of memory for the ground truth");
        goto out;
    }
    for (i = 0; i < nq; i++) {
        uint32_t c;
        int ended = 0;
        size_t got = fread(head, 1, 4, f);
        if (got != 4) {
            if (ferror(f))
                fail("%s: read error: %s", name, strerror(errno));
            else if (got == 0)
                fail("%s holds the answers to %zu queries; %s has %zu", name, i,
                     qname, nq);
            else
                fail("%s: file ends inside row %zu (truncated?)", name, i);
            goto out;
        }
        c = le32(head);
        if (c < k || c > (1u << 24)) {
            if (c > (1u << 24))
                fail("%s: row %zu announces %" PRIu32 " values: not an "
                     ".ivecs file?",
                     name, i, c);
            else
                fail("%s: row %zu holds %" PRIu32 " neighbours, fewer than "
                     "k = %u",
                     name, i, c, (unsigned)k);
            goto out;
        }
        if (c > cap) {
            unsigned char *more = realloc(row, (size_t)c * 4);
            if (!more) {
                fail("out of memory");
                goto out;
            }
            row = more;
            cap = c;
        }
        if (fread(row, 4, c, f) != c) {
            if (ferror(f))
                fail("%s: read error: %s", name, strerror(errno));
            else
                fail("%s: file ends inside row %zu (truncated?)", name, i);
            goto out;
        }
        for (j = 0; j < k; j++) {
            int32_t v = (int32_t)le32(row + 4 * j);
            if (v < -1) {
                fail("%s: row %zu, value %zu is %" PRId32 ", not a key", name,
                     i, j + 1, v);
                goto out;
            }
            ended |= v == -1;
            t[i * k + j] = ended ? UINT64_MAX : (uint64_t)v;
        }
    }
    *out = t;
    t = NULL;
    rc = 0;
out:
    free(t);
    free(row);
    if (f != stdin) fclose(f);
    return rc;
}

/* After the index is opened: the queries' dimension must be its. */
static int measure_load(const args *a, uint32_t dim, measure_set *m)
{
    int rc;
    if (!a->val[O_QUERIES]) return 0;
    if ((rc = read_queries(a->val[O_QUERIES], dim, m->n, &m->q, &m->nq)))
        return rc;
    if (a->val[O_GT] && (rc = read_truth(a->val[O_GT], a->val[O_QUERIES], m->nq,
                                         m->k, &m->truth)))
        return rc;
    return 0;
}

/* Only the knobs that apply, so that a flat index does not read as
** "ef 0": "ef 48", "nprobe 16, refine 4", "an exact scan". */
static const char *setting_text(char buf[64], uint32_t ef, uint32_t nprobe,
                                uint32_t refine)
{
    int n = 0;
    buf[0] = '\0';
    if (ef) n = snprintf(buf, 64, "ef %u", (unsigned)ef);
    if (nprobe) n = snprintf(buf, 64, "nprobe %u", (unsigned)nprobe);
    if (refine)
        snprintf(buf + n, 64 - (size_t)n, "%srefine %u", n ? ", " : "",
                 (unsigned)refine);
    else if (!n)
        snprintf(buf, 64, "an exact scan");
    return buf;
}

/* Where the queries came from, since a sample's recall and a query
** file's may differ: "200 sample queries", "150 queries of q.fvecs". */
static void print_source(const args *a, const vecidx_recall *r)
{
    printf("%u%s queries", (unsigned)r->queries,
           a->val[O_QUERIES] ? "" : " sample");
    if (a->val[O_QUERIES]) printf(" of %s", a->val[O_QUERIES]);
    if (a->val[O_GT]) printf(", ground truth %s", a->val[O_GT]);
}

/* The fields of vecidx_recall, in its order; the caller writes what comes
** before (a comma, or an object's brace). */
static void recall_json(const vecidx_recall *r)
{
    printf("\"recall\":");
    if (isfinite(r->recall))
        printf("%.6f", r->recall);
    else
        fputs("null", stdout);
    json_num("low", r->low, 6);
    json_num("high", r->high, 6);
    printf(",\"queries\":%u,\"k\":%u", (unsigned)r->queries, (unsigned)r->k);
    json_num("search_us", r->search_us, 3);
    printf(",\"vs_codes\":%s", r->vs_codes ? "true" : "false");
}

/* Said wherever a recall was measured against codes, which overstates it. */
static const char vs_codes_note[] =
    "note: measured against a scan of the index's codes, not of the vectors\n"
    "they stand for: recall against those is lower, by an amount only\n"
    "--gt can show\n";

static int cmd_recall(const args *a)
{
    const char *path = a->pos[0];
    measure_set m;
    vecidx_search_opts so;
    vecidx_stats_t st;
    vecidx_recall r;
    vecidx *ix = NULL;
    uint64_t *allow = NULL;
    uint32_t ef, nprobe, refine;
    char set[64];
    int rc, lrc;
    memset(&so, 0, sizeof so);
    if ((rc = need_pos(a, 1, "PATH")) || (rc = measure_args(a, &m)) ||
        (rc = opt_u32(a, O_EF, 1, UINT32_MAX, &so.ef)) ||
        (rc = opt_u32(a, O_NPROBE, 1, UINT32_MAX, &so.nprobe)) ||
        (rc = opt_u32(a, O_REFINE, 1, UINT32_MAX, &so.refine)))
        return rc;
    if (a->val[O_ALLOW] &&
        ((a->val[O_QUERIES] && strcmp(a->val[O_QUERIES], "-") == 0) ||
         (a->val[O_GT] && strcmp(a->val[O_GT], "-") == 0)) &&
        strcmp(a->val[O_ALLOW], "-") == 0)
        return usage_error("--allow cannot read standard input with "
                           "--queries or --gt");
    /* Non-NULL even when the file holds no keys, as for query. */
    if (a->val[O_ALLOW] &&
        (rc = read_allow(a->val[O_ALLOW], &allow, &so.allow_count)))
        return rc;
    so.allow_keys = allow;
    if ((rc = open_index(path, VECIDX_RDONLY, 0, &ix))) goto out;
    vecidx_stats(ix, &st);
    if ((rc = measure_load(a, st.dim, &m))) goto out;
    lrc = vecidx_estimate_recall(ix, m.k, m.q ? m.nq : m.n, m.q, m.truth, &so,
                                 &r);
    if (lrc != VECIDX_OK) {
        rc = fail_lib(lrc, ix, "recall of '%s'", path);
        goto out;
    }
    /* Reported so that the output says what was measured without the
    ** reader knowing the index's defaults; only what applies to it. */
    ef = st.kind == VECIDX_HNSW ? (so.ef ? so.ef : st.ef_search) : 0;
    nprobe = st.kind == VECIDX_IVFPQ ? (so.nprobe ? so.nprobe : st.nprobe) : 0;
    refine = so.refine && (st.refine || st.kind == VECIDX_IVFPQ) ? so.refine
                                                                 : st.refine;
    if (json_out) {
        printf("{\"command\":\"recall\",\"path\":");
        json_str(stdout, path);
        printf(",\"ef\":%u,\"nprobe\":%u,\"refine\":%u,", (unsigned)ef,
               (unsigned)nprobe, (unsigned)refine);
        recall_json(&r);
        printf("}\n");
    } else if (r.queries == 0) {
        printf("%s: no query has an admissible vector: no recall to "
               "measure\n",
               path);
    } else {
        printf("%s: recall@%u %.4f (95 %% interval %.4f-%.4f) with %s, over ",
               path, (unsigned)r.k, r.recall, r.low, r.high,
               setting_text(set, ef, nprobe, refine));
        print_source(a, &r);
        printf("\n%.1f us per search\n", r.search_us);
        if (r.vs_codes) fputs(vs_codes_note, stdout);
    }
out:
    measure_free(&m);
    free(allow);
    vecidx_close(ix);
    return rc;
}

static int cmd_tune(const args *a)
{
    const char *path = a->pos[0];
    measure_set m;
    vecidx_stats_t st;
    vecidx_tuning t;
    vecidx *ix = NULL;
    double target = 0;
    char set[64];
    int rc, lrc;
    if ((rc = need_pos(a, 1, "PATH"))) return rc;
    if (!a->val[O_RECALL]) return usage_error("--recall is required");
    if ((rc = parse_target(a->val[O_RECALL], &target)) ||
        (rc = measure_args(a, &m)))
        return rc;
    if ((rc = open_index(path, VECIDX_SYNC_FULL, 0, &ix))) return rc;
    vecidx_stats(ix, &st);
    if ((rc = measure_load(a, st.dim, &m))) goto out;
    lrc = vecidx_tune(ix, target, m.k, m.q ? m.nq : m.n, m.q, m.truth, &t);
    if (lrc != VECIDX_OK) {
        rc = fail_lib(lrc, ix, "tuning '%s'", path);
        goto out;
    }
    rc = t.reached ? 0 : EXIT_NOT_REACHED;
    if (json_out) {
        printf("{\"command\":\"tune\",\"path\":");
        json_str(stdout, path);
        json_num("target", target, 6);
        printf(",\"reached\":%s,\"ef\":%u,\"nprobe\":%u,\"refine\":%u,"
               "\"steps\":%u,\"recall\":{",
               t.reached ? "true" : "false", (unsigned)t.ef, (unsigned)t.nprobe,
               (unsigned)t.refine, (unsigned)t.steps);
        recall_json(&t.recall);
        printf("},\"advice\":");
        json_str(stdout, t.advice ? t.advice : "");
        printf("}\n");
        goto out;
    }
    setting_text(set, t.ef, t.nprobe, t.refine);
    if (t.reached) {
        printf("%s: %s reaches recall@%u %.4f (95 %% interval %.4f-%.4f, ",
               path, set, (unsigned)t.recall.k, t.recall.recall, t.recall.low,
               t.recall.high);
        print_source(a, &t.recall);
        printf(")\n%s; %u setting%s measured; %.1f us per search\n",
               st.kind != VECIDX_HNSW && !t.nprobe && !t.refine
                   ? "nothing to store: the index scans exactly"
                   : "stored as the index's default",
               (unsigned)t.steps, t.steps == 1 ? "" : "s", t.recall.search_us);
        /* the library's caveat when it measured against codes */
        if (t.advice && *t.advice) printf("note: %s\n", t.advice);
    } else {
        printf("%s: recall@%u %g not reached: the best of %u settings "
               "measured, %s, gives %.4f (95 %% interval %.4f-%.4f, ",
               path, (unsigned)t.recall.k, target, (unsigned)t.steps, set,
               t.recall.recall, t.recall.low, t.recall.high);
        print_source(a, &t.recall);
        printf("); the index is unchanged\nadvice: %s\n",
               t.advice ? t.advice : "");
    }
out:
    measure_free(&m);
    vecidx_close(ix);
    return rc;
}

/* ---- export ------------------------------------------------------------ */

static const char help_export[] =
    "usage: vecidx export PATH FILE [--format fvecs|npy|csv] [--json]\n"
    "\n"
    "Write every stored vector to FILE, in ascending key order. The format\n"
    "comes from FILE's extension or --format; FILE '-' is standard output.\n"
    "  .csv    key,v1,v2,... with a header line; values printed exactly\n"
    "          (reimporting gives the same floats)\n"
    "  .fvecs  and .npy (float32) keep no keys: row i is the i-th smallest\n"
    "          key (a warning says so when keys are not 0, 1, 2, ...)\n"
    "A trained IVF-PQ index without --keep-vectors stores codes, not\n"
    "vectors: its export holds their reconstructions; so does an i8 index\n"
    "without --keep-vectors (each value within half a step, 1/254 of the\n"
    "vector's range, of the one imported).\n";

static int write_npy_header(FILE *f, size_t rows, uint32_t dim)
{
    char dict[128];
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
    int n = snprintf(dict, sizeof dict,
                     "{'descr': '<f4', 'fortran_order': False, "
                     "'shape': (%zu, %u), }",
                     rows, (unsigned)dim);
    /* numpy pads the header with spaces and a newline so that the data
    ** starts at a multiple of 64 bytes. */
    size_t hlen = (size_t)n + 1, pad = (64 - (10 + hlen) % 64) % 64;
    pre[8] = (unsigned char)((hlen + pad) & 0xff);
    pre[9] = (unsigned char)((hlen + pad) >> 8);
    fwrite(pre, 1, 10, f);
    fwrite(dict, 1, (size_t)n, f);
    for (; pad > 0; pad--) putc(' ', f);
    putc('\n', f);
    return 0;
}

static int cmd_export(const args *a)
{
    const char *path = a->pos[0], *file = a->pos[1];
    vecidx *ix = NULL;
    vecidx_stats_t st;
    uint64_t *keys = NULL;
    float *v = NULL;
    unsigned char *raw = NULL;
    size_t cap = 0, n = 0, i;
    uint32_t j;
    FILE *f = NULL;
    int fmt, rc, lrc, to_stdout = strcmp(file ? file : "", "-") == 0;
    int renumbered = 0;
    if ((rc = need_pos(a, 2, "PATH and FILE"))) return rc;
    if ((rc = format_arg(a, file, &fmt))) return rc;
    if ((rc = open_index(path, VECIDX_RDONLY, 0, &ix))) return rc;
    vecidx_stats(ix, &st);
    /* A read-only handle sees the index as of its opening, so the count
    ** cannot change between the two calls; the loop is only a guard. */
    do {
        free(keys);
        cap = n + 1;
        if (!(keys = malloc(sizeof *keys * cap))) {
            rc = fail("out of memory for %zu keys", cap);
            goto out;
        }
        if ((lrc = vecidx_keys(ix, keys, cap, &n)) != VECIDX_OK) {
            rc = fail_lib(lrc, ix, "cannot list the keys of '%s'", path);
            goto out;
        }
    } while (n > cap);
    qsort(keys, n, sizeof *keys, cmp_u64);
    v = malloc(sizeof *v * st.dim);
    raw = malloc((size_t)st.dim * 4 + 4);
    if (!v || !raw) {
        rc = fail("out of memory");
        goto out;
    }
    if (to_stdout) {
        f = stdout;
    } else if (!(f = fopen(file, "wb"))) {
        rc = fail("cannot create '%s': %s", file, strerror(errno));
        goto out;
    }
    if (fmt == FMT_NPY) write_npy_header(f, n, st.dim);
    if (fmt == FMT_CSV) {
        fputs("key", f);
        for (j = 0; j < st.dim; j++) fprintf(f, ",v%u", (unsigned)j + 1);
        putc('\n', f);
    }
    for (i = 0; i < n; i++) {
        if ((lrc = vecidx_get(ix, keys[i], v)) != VECIDX_OK) {
            rc = fail_lib(lrc, ix, "cannot read key %" PRIu64, keys[i]);
            break;
        }
        if (fmt == FMT_CSV) {
            /* %.9g prints every float exactly enough to read back the
            ** same value. */
            fprintf(f, "%" PRIu64, keys[i]);
            for (j = 0; j < st.dim; j++) fprintf(f, ",%.9g", (double)v[j]);
            putc('\n', f);
            continue;
        }
        renumbered |= keys[i] != i;
        if (fmt == FMT_FVECS) {
            put_le32(raw, st.dim);
            fwrite(raw, 1, 4, f);
        }
        for (j = 0; j < st.dim; j++) {
            uint32_t u;
            memcpy(&u, &v[j], sizeof u);
            put_le32(raw + 4 * j, u);
        }
        fwrite(raw, 4, st.dim, f);
    }
    if (fflush(f) != 0 || ferror(f)) {
        if (!rc) rc = fail("cannot write '%s': %s", file, strerror(errno));
    }
    if (!to_stdout && fclose(f) != 0 && !rc)
        rc = fail("cannot write '%s': %s", file, strerror(errno));
    if (rc) {
        if (!to_stdout) remove(file);
        goto out;
    }
    if (renumbered)
        warn("%s keeps no keys: row i holds the i-th smallest key, and the "
             "keys are not 0, 1, 2, ...; export to .csv to keep them",
             fmt == FMT_NPY ? ".npy" : ".fvecs");
    if (json_out && !to_stdout) {
        printf("{\"command\":\"export\",\"path\":");
        json_str(stdout, path);
        printf(",\"file\":");
        json_str(stdout, file);
        printf(",\"rows\":%zu}\n", n);
    } else if (!to_stdout) {
        printf("exported %zu vectors to %s\n", n, file);
    }
out:
    free(keys);
    free(v);
    free(raw);
    vecidx_close(ix);
    return rc;
}

/* ---- main -------------------------------------------------------------- */

static const char help_main[] =
    "usage: vecidx COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  create PATH --dim D [--kind hnsw|flat|ivfpq] [--metric l2|ip|cos]\n"
    "              [--storage f32|f16|i8|bin]\n"
    "                            create an empty index file\n"
    "  import PATH FILE          add the vectors of a .fvecs, .npy or .csv "
    "file\n"
    "  query PATH (--vector V | --fvecs FILE) [-k N] [--allow FILE]\n"
    "                            find the nearest stored vectors\n"
    "  stats PATH                describe the index: size, memory by part,\n"
    "                            log, IVF-PQ lists\n"
    "  check PATH                verify the index\n"
    "  checkpoint PATH           fold the write-ahead log into the main file\n"
    "  export PATH FILE          write every vector to .fvecs, .npy or .csv\n"
    "  recall PATH [-k N] [--queries FILE [--gt FILE]]\n"
    "                            measure the search's recall@k\n"
    "  tune PATH --recall R [-k N] [--queries FILE [--gt FILE]]\n"
    "                            store the cheapest search setting reaching\n"
    "                            recall@k R as the index's default\n"
    "\n"
    "'vecidx COMMAND --help' describes a command's options. Every command\n"
    "takes --json to print JSON objects for scripts, one per line.\n"
    "Exit status: 0 success, 1 failure (unreadable file, bad data, index\n"
    "error), 2 bad command line, 3 a recall that tune cannot reach.\n";

#define COMMON (BIT(O_HELP) | BIT(O_JSON))

static const struct command {
    const char *name;
    int (*run)(const args *a);
    const char *help;
    int maxpos;
    uint64_t opts;
} commands[] = {
    {"create", cmd_create, help_create, 1,
     COMMON | BIT(O_DIM) | BIT(O_KIND) | BIT(O_METRIC) | BIT(O_M) | BIT(O_EFC) |
         BIT(O_EFS) | BIT(O_NLIST) | BIT(O_NPROBE) | BIT(O_PQM) |
         BIT(O_STORAGE) | BIT(O_KEEP) | BIT(O_REFINE) | BIT(O_TRAIN_SIZE) |
         BIT(O_SEED)},
    {"import", cmd_import, help_import, 2,
     COMMON | BIT(O_FORMAT) | BIT(O_FIRST_KEY) | BIT(O_UPSERT) | BIT(O_TRAIN) |
         BIT(O_THREADS) | BIT(O_QUIET)},
    {"query", cmd_query, help_query, 1,
     COMMON | BIT(O_VECTOR) | BIT(O_FVECS) | BIT(O_K) | BIT(O_EF) |
         BIT(O_NPROBE) | BIT(O_REFINE) | BIT(O_THREADS) | BIT(O_ALLOW)},
    {"stats", cmd_stats, help_stats, 1, COMMON},
    {"check", cmd_check, help_check, 1, COMMON},
    {"checkpoint", cmd_checkpoint, help_checkpoint, 1, COMMON},
    {"export", cmd_export, help_export, 2, COMMON | BIT(O_FORMAT)},
    {"recall", cmd_recall, help_recall, 1,
     COMMON | BIT(O_K) | BIT(O_QUERIES) | BIT(O_GT) | BIT(O_N) | BIT(O_EF) |
         BIT(O_NPROBE) | BIT(O_REFINE) | BIT(O_ALLOW)},
    {"tune", cmd_tune, help_tune, 1,
     COMMON | BIT(O_RECALL) | BIT(O_K) | BIT(O_QUERIES) | BIT(O_GT) | BIT(O_N)},
};

int main(int argc, char **argv)
{
    size_t c, ncmd = sizeof commands / sizeof commands[0];
    args a;
    int rc;
    if (argc < 2) {
        fputs(help_main, stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        for (c = 0; argc > 2 && c < ncmd; c++)
            if (strcmp(argv[2], commands[c].name) == 0) {
                fputs(commands[c].help, stdout);
                return 0;
            }
        fputs(help_main, stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("vecidx %s (library %s, %s kernels)\n", VECIDX_VERSION_STRING,
               vecidx_version(), vecidx_simd());
        return 0;
    }
    for (c = 0; c < ncmd; c++)
        if (strcmp(argv[1], commands[c].name) == 0) break;
    if (c == ncmd) {
        fprintf(stderr, "vecidx: unknown command '%s'\nTry 'vecidx --help'.\n",
                argv[1]);
        return EXIT_USAGE;
    }
    cur_cmd = commands[c].name;
    if ((rc = parse_args(argc - 2, argv + 2, commands[c].opts,
                         commands[c].maxpos, &a)))
        return rc;
    if (a.val[O_HELP]) {
        fputs(commands[c].help, stdout);
        return 0;
    }
    rc = commands[c].run(&a);
    /* Output to a closed pipe or a full disk must not pass for success. */
    if (fflush(stdout) != 0 || ferror(stdout)) {
        if (!rc) rc = fail("cannot write the output: %s", strerror(errno));
    }
    return rc;
}
