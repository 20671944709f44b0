/* libFuzzer target: the input bytes pick an index (kind, metric, storage,
** dimension, in memory or in a file) and then a sequence of up to
** FA_MAX_OPS calls -- add, upsert, add_batch, remove, search and
** search_batch with filters, get, keys, save, checkpoint, close and
** reopen, a crash (the files copied as a killed process leaves them, and
** reopened), train, a second reader or writer -- each checked against a small
** model of what the index must hold. After every step the whole model is
** compared (count, every key present or absent, every vector, keys,
** vecidx_check); searches are held to what vecidx.h promises of each
** kind: the flat index exact (on the codes when storage is compressed),
** every kind returning admitted stored keys, sorted, without duplicates,
** with the distances of the vectors stored. Any disagreement prints one
** line naming the step and aborts, so libFuzzer keeps the input.
**
**   clang -g -O1 -fsanitize=fuzzer,address,undefined -I. \
**       fuzz/fuzz_api.c vecidx.c -o fuzz/fuzz_api -pthread -lm
**   fuzz/fuzz_api -max_total_time=60 fuzz/api-corpus fuzz/api-seeds
**
** Built with -DVX_FUZZ_MAIN instead, it replays every file named on its
** command line (a directory: every file in it, in name order), counts a
** failure instead of aborting, and ends with "N passed, N failed";
** `fuzz_api-replay --make-seeds DIR` writes the seed corpus (every kind,
** metric and storage, every operation), which is kept in fuzz/api-seeds.
** Inputs that found a library bug go to fuzz/api-regress. */
#define _DEFAULT_SOURCE
#include <dirent.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vecidx.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Small enough that one input runs in milliseconds, also under ASan. */
#define FA_MAX_OPS 64
#define FA_DIM_MAX 17
#define FA_BATCH_MAX 24
#define FA_K_MAX 300
#define FA_NQ_MAX 4
#define FA_ALLOW_MAX 24
#define FA_TRAIN_MAX 40

/* Keys: a byte below 240 picks one of the first `keyspace` integers, the
** rest pick one of these, so the extremes of uint64_t are stored too. None
** is below 240, so every key has one model slot. */
#define FA_NSPECIAL 16
#define FA_NKEYS (240 + FA_NSPECIAL)
static const uint64_t fa_special[FA_NSPECIAL] = {UINT64_MAX,
                                                 UINT64_MAX - 1,
                                                 1ull << 63,
                                                 (1ull << 63) - 1,
                                                 1ull << 32,
                                                 (1ull << 32) - 1,
                                                 0xdeadbeefcafebabeull,
                                                 1000,
                                                 4096,
                                                 65535,
                                                 0x0123456789abcdefull,
                                                 300,
                                                 257,
                                                 256,
                                                 241,
                                                 9999};

static uint64_t fa_key(unsigned id)
{
    return id < 240 ? id : fa_special[id - 240];
}

/* FA_NKEYS for a key no input ever stores. */
static unsigned fa_key_id(uint64_t key)
{
    unsigned i;
    if (key < 240) return (unsigned)key;
    for (i = 0; i < FA_NSPECIAL; i++)
        if (fa_special[i] == key) return 240 + i;
    return FA_NKEYS;
}

/* ---- input ------------------------------------------------------------
** A spent input reads as zeros, so every prefix of an input is an input.
** When generating seeds, bytes come from a generator and are recorded:
** the recording replays the same run. */

typedef struct fa_in {
    const uint8_t *p;
    size_t n, i;
    int gen;
    uint64_t rng;
    uint8_t *out;
    size_t len, cap;
} fa_in;

static uint64_t fa_mix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static unsigned fa_put(fa_in *in, unsigned b)
{
    if (in->len < in->cap) in->out[in->len++] = (uint8_t)b;
    return b;
}

static unsigned fa_byte(fa_in *in)
{
    if (in->gen) return fa_put(in, (unsigned)(fa_mix(&in->rng) >> 56));
    return in->i < in->n ? in->p[in->i++] : 0;
}

/* A byte that a seed being generated sets to `want`. */
static unsigned fa_pick(fa_in *in, unsigned want)
{
    return in->gen ? fa_put(in, want & 0xffu) : fa_byte(in);
}

static int fa_spent(const fa_in *in)
{
    return !in->gen && in->i >= in->n;
}

/* ---- state ------------------------------------------------------------ */

enum {
    FA_MEM,
    FA_RW,
    FA_RO
};

/* Storage choices of the header byte; the last is refused by create. */
static const struct {
    uint32_t storage, keep;
} fa_storages[7] = {{VECIDX_STORE_F32, 0}, {VECIDX_STORE_F16, 0},
                    {VECIDX_STORE_F16, 1}, {VECIDX_STORE_I8, 0},
                    {VECIDX_STORE_I8, 1},  {VECIDX_STORE_BIN, 1},
                    {VECIDX_STORE_BIN, 0}};

static const unsigned fa_syncs[4] = {0, VECIDX_SYNC_FULL, VECIDX_SYNC_NORMAL,
                                     VECIDX_SYNC_OFF};

typedef struct fa_model {
    unsigned char present[FA_NKEYS];
    /* dec: what vecidx_get returned first since the vector was written;
    ** every later get must return the same bits. */
    unsigned char have_dec[FA_NKEYS];
    float orig[FA_NKEYS][FA_DIM_MAX];
    float dec[FA_NKEYS][FA_DIM_MAX];
    size_t count;
} fa_model;

/* A write, decoded before it runs. */
enum {
    FA_W_ADD,
    FA_W_UPSERT,
    FA_W_REMOVE,
    FA_W_BATCH,
    FA_W_CKPT
};

typedef struct fa_wop {
    int op;
    size_t n;
    unsigned id[FA_BATCH_MAX];
    uint64_t keys[FA_BATCH_MAX];
    float v[FA_BATCH_MAX * FA_DIM_MAX];
} fa_wop;

typedef struct fa_filt {
    uint64_t mul;
    unsigned mod, thr;
} fa_filt;

typedef struct fa_sopts {
    int use, nodists;
    vecidx_search_opts o;
    fa_filt f;
    uint64_t allow[FA_ALLOW_MAX];
    uint64_t bitmap[4];
} fa_sopts;

typedef struct fa {
    fa_in in;
    vecidx_params p;
    int kind, metric, file, extreme;
    uint32_t dim, storage, keep, ksp;
    unsigned sync;
    int mode, trained;
    vecidx *ix;
    fa_model m;
    int step;
    const char *opname;
    int failed, checking;
    fa_wop w;
    uint64_t rkeys[FA_NQ_MAX * FA_K_MAX];
    float rdists[FA_NQ_MAX * FA_K_MAX];
    float q[FA_NQ_MAX * FA_DIM_MAX];
    float train[FA_TRAIN_MAX * FA_DIM_MAX];
} fa;

static char fa_dir[4096], fa_path[4200], fa_snap[4200];

/* Steps run per operation, and successful writes, for the replay's -v;
** with -t the replay prints every call's result (fa_trace). */
static unsigned long fa_ran[16], fa_writes_ok, fa_results, fa_exact;
static int fa_trace;

/* One line per disagreement; the first ends the input (later steps would
** only repeat it). */
static void fa_fail(fa *s, const char *fmt, ...)
{
    va_list ap;
    if (s->failed) return;
    s->failed = 1;
    printf(
        "fuzz_api: step %d (%s, kind %d metric %d storage %u keep %u dim "
        "%u %s): ",
        s->step, s->opname, s->kind, s->metric, (unsigned)s->storage,
        (unsigned)(s->kind == VECIDX_IVFPQ ? s->p.ivf_keep_vectors : s->keep),
        (unsigned)s->dim,
        s->mode == FA_MEM  ? "memory"
        : s->mode == FA_RW ? "file"
                           : "read-only");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
#ifndef VX_FUZZ_MAIN
    abort();
#endif
}

#define FA_B(code) (1u << -(code))
#define FA_OKB FA_B(VECIDX_OK)

/* rc must be one of the codes in mask. */
static int fa_rc(fa *s, const char *call, int rc, unsigned mask)
{
    const char *msg;
    if (fa_trace && !s->checking)
        printf("  step %d %s: %s -> %d %s\n", s->step, s->opname, call, rc,
               vecidx_strerror(rc));
    if (rc <= 0 && rc >= -31 && (mask & FA_B(rc))) return 1;
    msg = vecidx_errmsg(s->ix);
    fa_fail(s, "%s returned %d (%s) \"%s\", expected mask 0x%x", call, rc,
            vecidx_strerror(rc), *msg ? msg : vecidx_errmsg(NULL), mask);
    return 0;
}

/* ---- temporary directory ---------------------------------------------- */

static void fa_clear_dir(int remove_dir)
{
    DIR *d;
    struct dirent *e;
    char path[4400];
    if (!fa_dir[0] || !(d = opendir(fa_dir))) return;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", fa_dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    if (remove_dir) rmdir(fa_dir);
}

static void fa_atexit(void)
{
    fa_clear_dir(1);
}

static void fa_make_dir(void)
{
    const char *t = getenv("TMPDIR");
    if (fa_dir[0]) return;
    snprintf(fa_dir, sizeof fa_dir, "%s/vecidx-fuzz-api-XXXXXX",
             t && *t && strlen(t) < 2000 ? t : "/tmp");
    if (!mkdtemp(fa_dir)) {
        perror("fuzz_api: mkdtemp");
        abort();
    }
    snprintf(fa_path, sizeof fa_path, "%s/ix", fa_dir);
    snprintf(fa_snap, sizeof fa_snap, "%s/snap", fa_dir);
    atexit(fa_atexit);
}

/* ---- vectors ---------------------------------------------------------- */

static unsigned fa_read_key(fa *s)
{
    unsigned b = fa_byte(&s->in);
    return b < 240 ? b % s->ksp : b;
}

/* Mostly multiples of 1/16 in [-8, 8); some copies of stored vectors (ties
** in every search), small integers (zero vectors), large values (beyond
** half precision), tiny ones, NaN and infinities. With `extreme`, also
** values whose squares overflow float, vectors too long to store under
** cosine, and float subnormals. `plain` keeps
** to the first kind, so that batches are not refused for one bad row in
** most inputs. */
static void fa_gen_vec(fa *s, float *v, int plain)
{
    static const float nonfinite[3] = {NAN, INFINITY, -INFINITY};
    unsigned style = fa_byte(&s->in), i, id, sub = (style / 32) % 3;
    float scale = 1;
    switch (plain ? 0 : style % 32) {
    case 24:
        if (s->extreme && sub == 2) scale = 1e36f;
        break;
    case 26:
        for (i = 0; i < s->dim; i++)
            v[i] = (float)((int)(fa_byte(&s->in) % 5) - 2);
        return;
    case 27:
    case 28:
        id = fa_read_key(s);
        if (s->m.present[id]) {
            memcpy(v, s->m.orig[id], s->dim * sizeof *v);
            return;
        }
        break;
    case 29:
        scale = sub == 0 ? 1e3f : sub == 1 ? 7e4f : s->extreme ? 1e19f : 1e4f;
        break;
    case 30:
        scale = sub == 0     ? 1e-6f
                : sub == 1   ? 1e-30f
                : s->extreme ? 1e-41f
                             : 1e-3f;
        break;
    case 31:
        for (i = 0; i < s->dim; i++) v[i] = 0;
        return;
    default:
        break;
    }
    for (i = 0; i < s->dim; i++)
        v[i] = (float)((int)fa_byte(&s->in) - 128) / 16.0f * scale;
    if (!plain && style % 32 == 25)
        v[fa_byte(&s->in) % s->dim] = nonfinite[sub];
}

/* A vector every call must refuse with VECIDX_EINVAL: non-finite, or under
** cosine one whose norm is 0 or too small to invert in float, or, to be
** stored (`stored`), above 2^100. */
static int fa_bad_vec(const fa *s, const float *v, int stored)
{
    uint32_t i;
    double n2 = 0;
    for (i = 0; i < s->dim; i++) {
        if (!isfinite(v[i])) return 1;
        n2 += (double)v[i] * v[i];
    }
    return s->metric == VECIDX_COSINE &&
           !(n2 > 0 && 1.0 / sqrt(n2) <= FLT_MAX &&
             (!stored || n2 <= ldexp(1.0, 200)));
}

/* ---- distances ---------------------------------------------------------
** The model scores in double. A search's distance of a key must lie within
** a radius of the model's "center": exact vectors give a rounding slack;
** half-precision codes are scored exactly against the decoded vector (the
** cosine with the norm of the vector given, as vecidx does); int8 codes
** (query and vector both encoded) within a bound derived from the half
** code step vecidx.h promises for each component. */

static double fa_dot(const float *a, const float *b, uint32_t d)
{
    double s = 0;
    uint32_t i;
    for (i = 0; i < d; i++) s += (double)a[i] * b[i];
    return s;
}

static double fa_norm(const float *a, uint32_t d)
{
    return sqrt(fa_dot(a, a, d));
}

/* Half the int8 code step of v (scaled to unit length under cosine). */
static double fa_i8_half_step(const fa *s, const float *v)
{
    double lo = v[0], hi = v[0], mul = 1;
    uint32_t i;
    for (i = 1; i < s->dim; i++) {
        lo = v[i] < lo ? v[i] : lo;
        hi = v[i] > hi ? v[i] : hi;
    }
    if (s->metric == VECIDX_COSINE) mul = 1 / fa_norm(v, s->dim);
    return (hi - lo) * mul / 508.0 * 1.01 + 1e-7 * (fabs(hi) + fabs(lo)) * mul;
}

enum {
    FA_D_EXACT,
    FA_D_HALF,
    FA_D_I8,
    FA_D_NONE
};

/* Center and radius of the distance a search reports between q and the
** stored vector of id; 0 when nothing can be said (no check). */
static int fa_expect_dist(const fa *s, int how, const float *q, unsigned id,
                          double *center, double *radius)
{
    const float *x = s->m.orig[id];
    uint32_t d = s->dim;
    double nq = fa_norm(q, d), nx = fa_norm(x, d), c, r, e, hq, hx, dd = 0;
    uint32_t i;
    if (how == FA_D_NONE) return 0;
    if (how == FA_D_HALF) { /* scored against the decoded vector */
        if (!s->m.have_dec[id]) return 0;
        x = s->m.dec[id];
    }
    for (i = 0; i < d; i++) dd += ((double)q[i] - x[i]) * ((double)q[i] - x[i]);
    /* nx is still the given vector's norm: the cosine vecidx computes */
    c = s->metric == VECIDX_L2   ? dd
        : s->metric == VECIDX_IP ? -fa_dot(q, x, d)
                                 : 1 - fa_dot(q, x, d) / (nq * nx);
    if (how == FA_D_HALF && fa_norm(x, d) > nx) nx = fa_norm(x, d);
    /* Float rounding of the kernels: relative to the terms summed. */
    r = s->metric == VECIDX_L2   ? 1e-4 * (nq * nq + nx * nx)
        : s->metric == VECIDX_IP ? 1e-4 * nq * nx
                                 : 1e-4;
    r += 1e-30;
    if (how == FA_D_I8) {
        hq = fa_i8_half_step(s, q);
        hx = fa_i8_half_step(s, x);
        e = sqrt((double)d) * (hq + hx);
        if (s->metric == VECIDX_L2) {
            double dist = sqrt(c > 0 ? c : 0);
            r += 2 * dist * e + e * e;
        } else if (s->metric == VECIDX_IP) {
            r += nq * sqrt((double)d) * hx + nx * sqrt((double)d) * hq +
                 d * hq * hx;
        } else {
            r += e + d * hq * hx;
        }
    }
    /* Beyond float range the kernels overflow to infinity: not checked. */
    if (!(fabs(c) + r < 1e37)) return 0;
    *center = c;
    *radius = r;
    return 1;
}

/* ---- checking a handle against the model ------------------------------ */

static int fa_get_exact(const fa *s)
{
    if (s->kind == VECIDX_IVFPQ) return s->p.ivf_keep_vectors || !s->trained;
    return s->storage == VECIDX_STORE_F32 || s->keep;
}

/* The value vecidx_get returned for id, against the vector given. */
static void fa_check_value(fa *s, unsigned id, const float *got)
{
    const float *x = s->m.orig[id];
    uint32_t i;
    double h;
    if (s->m.have_dec[id]) {
        if (memcmp(got, s->m.dec[id], s->dim * sizeof *got))
            fa_fail(s, "get of key %llu changed without a write",
                    (unsigned long long)fa_key(id));
        return;
    }
    for (i = 0; i < s->dim; i++)
        if (!isfinite(got[i])) {
            fa_fail(s, "get of key %llu: component %u is %g",
                    (unsigned long long)fa_key(id), (unsigned)i, got[i]);
            return;
        }
    if (fa_get_exact(s)) {
        if (memcmp(got, x, s->dim * sizeof *got))
            fa_fail(s, "get of key %llu: not the vector given",
                    (unsigned long long)fa_key(id));
    } else if (s->kind != VECIDX_IVFPQ && s->storage == VECIDX_STORE_F16) {
        for (i = 0; i < s->dim; i++) {
            double want = x[i] > 65504.0    ? 65504.0
                          : x[i] < -65504.0 ? -65504.0
                                            : x[i];
            double tol = fabs(want) / 2048.0;
            if (tol < ldexp(1, -25)) tol = ldexp(1, -25);
            if (fabs(got[i] - want) > tol) {
                fa_fail(s,
                        "get of key %llu: component %u is %.9g, given %.9g "
                        "(half precision)",
                        (unsigned long long)fa_key(id), (unsigned)i, got[i],
                        x[i]);
                return;
            }
        }
    } else if (s->kind != VECIDX_IVFPQ && s->storage == VECIDX_STORE_I8) {
        float lo = x[0], hi = x[0];
        for (i = 1; i < s->dim; i++) {
            lo = x[i] < lo ? x[i] : lo;
            hi = x[i] > hi ? x[i] : hi;
        }
        h = ((double)hi - lo) / 508.0 * 1.001 +
            1e-6 * (fabs((double)hi) + fabs((double)lo)) + 1e-38;
        for (i = 0; i < s->dim; i++)
            if (fabs((double)got[i] - x[i]) > h) {
                fa_fail(s,
                        "get of key %llu: component %u is %.9g, given %.9g "
                        "(int8, half step %g)",
                        (unsigned long long)fa_key(id), (unsigned)i, got[i],
                        x[i], h);
                return;
            }
    }
    memcpy(s->m.dec[id], got, s->dim * sizeof *got);
    s->m.have_dec[id] = 1;
}

static void fa_check_handle_(fa *s, vecidx *ix);

/* Everything the model knows, asked of handle ix. */
static void fa_check_handle(fa *s, vecidx *ix)
{
    s->checking = 1;
    fa_check_handle_(s, ix);
    s->checking = 0;
}

static void fa_check_handle_(fa *s, vecidx *ix)
{
    vecidx_stats_t st;
    uint64_t keys[FA_NKEYS + 2];
    unsigned char seen[FA_NKEYS];
    float got[FA_DIM_MAX];
    size_t n, i;
    unsigned id;
    int rc;
    if (s->failed) return;
    if (vecidx_count(ix) != s->m.count) {
        fa_fail(s, "count %zu, model %zu", vecidx_count(ix), s->m.count);
        return;
    }
    if (!fa_rc(s, "vecidx_stats", vecidx_stats(ix, &st), FA_OKB)) return;
    if (st.count != s->m.count || st.kind != s->kind ||
        st.metric != s->metric || st.dim != s->dim) {
        fa_fail(s, "stats: count %llu kind %d metric %d dim %u",
                (unsigned long long)st.count, st.kind, st.metric,
                (unsigned)st.dim);
        return;
    }
    if (s->kind == VECIDX_IVFPQ && st.trained != s->trained) {
        /* Training is kept in the main file before any later write. */
        if (!st.trained) {
            fa_fail(s, "an IVF-PQ index trained before is untrained");
            return;
        }
        s->trained = 1;
        memset(s->m.have_dec, 0, sizeof s->m.have_dec);
    }
    for (id = 0; id < FA_NKEYS; id++) {
        uint64_t key = fa_key(id);
        rc = vecidx_contains(ix, key);
        if (rc != s->m.present[id]) {
            fa_fail(s, "contains(%llu) = %d, model %d", (unsigned long long)key,
                    rc, s->m.present[id]);
            return;
        }
        rc = vecidx_get(ix, key, got);
        if (!s->m.present[id]) {
            if (!fa_rc(s, "vecidx_get of a missing key", rc,
                       FA_B(VECIDX_ENOTFOUND)))
                return;
            continue;
        }
        if (!fa_rc(s, "vecidx_get", rc, FA_OKB)) return;
        fa_check_value(s, id, got);
        if (s->failed) return;
    }
    if (!fa_rc(s, "vecidx_keys", vecidx_keys(ix, keys, FA_NKEYS + 2, &n),
               FA_OKB))
        return;
    if (n != s->m.count) {
        fa_fail(s, "keys: n %zu, model %zu", n, s->m.count);
        return;
    }
    memset(seen, 0, sizeof seen);
    for (i = 0; i < n; i++) {
        id = fa_key_id(keys[i]);
        if (id == FA_NKEYS || !s->m.present[id] || seen[id]) {
            fa_fail(s, "keys: %llu is unknown, absent or listed twice",
                    (unsigned long long)keys[i]);
            return;
        }
        seen[id] = 1;
    }
    rc = vecidx_check(ix);
    if (rc != VECIDX_OK)
        fa_fail(s, "vecidx_check: %d \"%s\"", rc, vecidx_errmsg(ix));
}

/* ---- searches --------------------------------------------------------- */

static int fa_filter(uint64_t key, void *ctx)
{
    const fa_filt *f = ctx;
    uint64_t h = (key ^ (key >> 29)) * f->mul;
    return (unsigned)((h >> 40) % f->mod) < f->thr;
}

static int fa_admits(const fa_sopts *so, uint64_t key)
{
    size_t i;
    if (!so->use) return 1;
    if (so->o.filter && !fa_filter(key, (void *)(uintptr_t)&so->f)) return 0;
    if (so->o.allow_keys) {
        for (i = 0; i < so->o.allow_count; i++)
            if (so->o.allow_keys[i] == key) break;
        if (i == so->o.allow_count) return 0;
    }
    if (so->o.allow_bitmap)
        return key < so->o.allow_bits &&
               ((so->o.allow_bitmap[key / 64] >> (key % 64)) & 1u);
    return 1;
}

static void fa_read_sopts(fa *s, fa_sopts *so)
{
    unsigned f = fa_byte(&s->in), i, n;
    memset(so, 0, sizeof *so);
    so->use = f & 1;
    so->nodists = (f >> 5) & 1;
    if (!so->use) return;
    so->o.ef = fa_byte(&s->in) % 48;
    so->o.nprobe = fa_byte(&s->in) % 6;
    so->o.refine = fa_byte(&s->in) % 4;
    so->o.threads = 1 + fa_byte(&s->in) % 2;
    if (f & 2) {
        so->f.mul = (uint64_t)fa_byte(&s->in) * 0x9e3779b97f4a7c15ull | 1;
        so->f.mod = 1 + fa_byte(&s->in) % 8;
        so->f.thr = fa_byte(&s->in) % (so->f.mod + 1);
        so->o.filter = fa_filter;
        so->o.filter_ctx = &so->f;
    }
    if (f & 4) {
        n = fa_byte(&s->in) % FA_ALLOW_MAX;
        for (i = 0; i < n; i++) so->allow[i] = fa_key(fa_read_key(s));
        so->o.allow_keys = so->allow;
        so->o.allow_count = n;
    }
    if (f & 8) {
        uint64_t seed = fa_byte(&s->in);
        unsigned b = fa_byte(&s->in);
        for (i = 0; i < 4; i++) so->bitmap[i] = fa_mix(&seed);
        if (b & 1) so->bitmap[0] = so->bitmap[1] = 0;
        so->o.allow_bitmap = so->bitmap;
        so->o.allow_bits = b >> 1 ? b : 256;
    }
    if (f & 16) so->o.filter_selectivity = (float)(1 + fa_byte(&s->in)) / 256;
}

static size_t fa_read_k(fa *s)
{
    unsigned b = fa_byte(&s->in);
    return b % 16 == 15 ? FA_K_MAX : b % 16 == 14 ? 0 : 1 + b % 10;
}

/* One query's results against the model, as vecidx.h promises them for
** the index's kind, storage and options. */
static void fa_check_results(fa *s, const float *q, size_t k,
                             const fa_sopts *so, const uint64_t *keys,
                             const float *dists, size_t found)
{
    unsigned char in_res[FA_NKEYS];
    const vecidx_search_opts *o = so->use ? &so->o : NULL;
    int filtered = o && (o->filter || o->allow_keys || o->allow_bitmap);
    size_t nadm = 0, want, i, refine;
    unsigned id;
    int how, exact;
    double c, r, top = -INFINITY;
    for (id = 0; id < FA_NKEYS; id++)
        nadm += s->m.present[id] && fa_admits(so, fa_key(id));
    want = k < nadm ? k : nadm;
    /* What the distances are and whether the search is exact. */
    if (s->kind == VECIDX_IVFPQ) {
        refine = o && o->refine ? o->refine : s->p.ivf_refine;
        how = !s->trained || (s->p.ivf_keep_vectors && refine > 1) ? FA_D_EXACT
                                                                   : FA_D_NONE;
        exact = !s->trained;
    } else {
        refine = o && o->refine ? o->refine : s->p.refine;
        if (!refine) refine = s->storage == VECIDX_STORE_BIN ? 20 : 2;
        how = s->storage == VECIDX_STORE_F32 || s->keep ? FA_D_EXACT
              : s->storage == VECIDX_STORE_F16          ? FA_D_HALF
                                                        : FA_D_I8;
        exact = s->kind == VECIDX_FLAT &&
                (!s->keep || (k <= SIZE_MAX / refine && k * refine >= nadm));
    }
    if (s->kind == VECIDX_IVFPQ && s->trained && !filtered ? found > want
                                                           : found != want) {
        fa_fail(s, "search k %zu found %zu, %zu keys admitted", k, found, nadm);
        return;
    }
    memset(in_res, 0, sizeof in_res);
    for (i = 0; i < found; i++) {
        id = fa_key_id(keys[i]);
        if (id == FA_NKEYS || !s->m.present[id]) {
            fa_fail(s, "search result %zu: key %llu is not stored", i,
                    (unsigned long long)keys[i]);
            return;
        }
        if (!fa_admits(so, keys[i])) {
            fa_fail(s, "search result %zu: key %llu is not admitted", i,
                    (unsigned long long)keys[i]);
            return;
        }
        if (in_res[id]++) {
            fa_fail(s, "search returned key %llu twice",
                    (unsigned long long)keys[i]);
            return;
        }
        if (dists && i &&
            (dists[i] < dists[i - 1] ||
             (dists[i] == dists[i - 1] && keys[i] < keys[i - 1]))) {
            fa_fail(s,
                    "search results %zu-%zu not sorted: %llu at %.9g, "
                    "%llu at %.9g",
                    i - 1, i, (unsigned long long)keys[i - 1], dists[i - 1],
                    (unsigned long long)keys[i], dists[i]);
            return;
        }
        if (!fa_expect_dist(s, how, q, id, &c, &r)) {
            exact = 0; /* the farthest result's distance is not known */
            continue;
        }
        if (dists && !(fabs(dists[i] - c) <= r)) {
            fa_fail(s,
                    "search result %zu: key %llu at distance %.9g, model "
                    "%.9g (+-%.3g)",
                    i, (unsigned long long)keys[i], dists[i], c, r);
            return;
        }
        if ((dists ? dists[i] : c - r) > top) top = dists ? dists[i] : c - r;
    }
    fa_results += found;
    for (i = found; i < k; i++)
        if (keys[i] != UINT64_MAX || (dists && dists[i] != INFINITY)) {
            fa_fail(s, "search entry %zu past found %zu: key %llu, %g", i,
                    found, (unsigned long long)keys[i], dists ? dists[i] : 0.0);
            return;
        }
    /* Exact: no admitted key left out can be closer than the farthest
    ** returned (ties may go either way within the slack). */
    if (!exact || found == 0 || found < want) return;
    fa_exact++;
    for (id = 0; id < FA_NKEYS; id++) {
        if (!s->m.present[id] || in_res[id] || !fa_admits(so, fa_key(id)))
            continue;
        if (fa_expect_dist(s, how, q, id, &c, &r) && c + 2 * r < top) {
            fa_fail(s,
                    "exact search left out key %llu at %.9g (+-%.3g), "
                    "closer than the %zu-th result at %.9g",
                    (unsigned long long)fa_key(id), c, r, found, top);
            return;
        }
    }
}

/* One search (nq 0: vecidx_search) or a batch of nq, on handle ix. */
static void fa_search(fa *s, vecidx *ix, size_t nq)
{
    fa_sopts so;
    size_t k, found[FA_NQ_MAX], i, n = nq ? nq : 1;
    int bad = 0, rc;
    for (i = 0; i < n; i++) {
        fa_gen_vec(s, s->q + i * s->dim, 0);
        bad |= fa_bad_vec(s, s->q + i * s->dim, 0);
    }
    k = fa_read_k(s);
    fa_read_sopts(s, &so);
    if (nq)
        rc = vecidx_search_batch(ix, nq, s->q, k, so.use ? &so.o : NULL,
                                 s->rkeys, so.nodists ? NULL : s->rdists,
                                 found);
    else
        rc = vecidx_search(ix, s->q, k, so.use ? &so.o : NULL, s->rkeys,
                           so.nodists ? NULL : s->rdists, found);
    if (bad || k == 0) {
        fa_rc(s, nq ? "vecidx_search_batch" : "vecidx_search", rc,
              FA_B(VECIDX_EINVAL));
        return;
    }
    if (!fa_rc(s, nq ? "vecidx_search_batch" : "vecidx_search", rc, FA_OKB))
        return;
    for (i = 0; i < n && !s->failed; i++)
        fa_check_results(s, s->q + i * s->dim, k, &so, s->rkeys + i * k,
                         so.nodists ? NULL : s->rdists + i * k, found[i]);
}

/* ---- writes ----------------------------------------------------------- */

static void fa_read_wop(fa *s, fa_wop *w, int op)
{
    size_t i;
    unsigned mode = 0, first = 0;
    w->op = op;
    w->n = op == FA_W_BATCH  ? fa_byte(&s->in) % (FA_BATCH_MAX + 1)
           : op == FA_W_CKPT ? 0
                             : 1;
    /* Batches: random keys and vectors (mode 0, mostly refused), or
    ** consecutive keys with plain vectors, which mostly go in. */
    if (op == FA_W_BATCH) {
        mode = fa_byte(&s->in) % 4;
        first = fa_read_key(s);
        if (mode && first < 240 && w->n > s->ksp) w->n = s->ksp;
    }
    for (i = 0; i < w->n; i++) {
        w->id[i] = mode && first < 240 ? (first + (unsigned)i) % s->ksp
                                       : fa_read_key(s);
        w->keys[i] = fa_key(w->id[i]);
        if (op != FA_W_REMOVE) fa_gen_vec(s, w->v + i * s->dim, mode != 0);
    }
}

static int fa_exec_wop(vecidx *ix, const fa_wop *w)
{
    switch (w->op) {
    case FA_W_ADD:
        return vecidx_add(ix, w->keys[0], w->v);
    case FA_W_UPSERT:
        return vecidx_upsert(ix, w->keys[0], w->v);
    case FA_W_REMOVE:
        return vecidx_remove(ix, w->keys[0]);
    case FA_W_BATCH:
        return vecidx_add_batch(ix, w->n, w->n ? w->keys : NULL,
                                w->n ? w->v : NULL);
    default:
        return vecidx_checkpoint(ix);
    }
}

static const char *fa_wop_name(int op)
{
    static const char *names[] = {"vecidx_add", "vecidx_upsert",
                                  "vecidx_remove", "vecidx_add_batch",
                                  "vecidx_checkpoint"};
    return names[op];
}

static void fa_model_put(fa *s, unsigned id, const float *v)
{
    if (!s->m.present[id]) s->m.count++;
    s->m.present[id] = 1;
    s->m.have_dec[id] = 0;
    memcpy(s->m.orig[id], v, s->dim * sizeof *v);
}

/* The codes the model allows for w in the handle's mode; if rc is one of
** them and success, the model takes the write. */
static void fa_apply_wop(fa *s, const fa_wop *w, int rc)
{
    unsigned err = 0, ro = s->mode == FA_RO, dup = 0;
    size_t i, j;
    for (i = 0; i < w->n; i++) {
        if (w->op != FA_W_REMOVE && fa_bad_vec(s, w->v + i * s->dim, 1))
            err |= FA_B(VECIDX_EINVAL);
        for (j = 0; j < i; j++) dup |= w->id[j] == w->id[i];
    }
    switch (w->op) {
    case FA_W_ADD:
        if (s->m.present[w->id[0]]) err |= FA_B(VECIDX_EEXIST);
        break;
    case FA_W_REMOVE:
        if (!s->m.present[w->id[0]]) err |= FA_B(VECIDX_ENOTFOUND);
        break;
    case FA_W_BATCH:
        if (dup) err |= FA_B(VECIDX_EINVAL);
        for (i = 0; i < w->n; i++)
            if (s->m.present[w->id[i]]) err |= FA_B(VECIDX_EEXIST);
        break;
    case FA_W_CKPT:
        if (s->mode != FA_RW) err |= FA_B(VECIDX_ESTATE);
        break;
    default:
        break;
    }
    if (ro && w->op != FA_W_CKPT) {
        err |= FA_B(VECIDX_ESTATE);
        if (w->op == FA_W_BATCH && w->n == 0) err |= FA_OKB;
    }
    if (!fa_rc(s, fa_wop_name(w->op), rc, err ? err : FA_OKB) ||
        rc != VECIDX_OK)
        return;
    fa_writes_ok++;
    for (i = 0; i < w->n; i++) {
        if (w->op == FA_W_REMOVE) {
            s->m.present[w->id[0]] = 0;
            s->m.count--;
        } else {
            fa_model_put(s, w->id[i], w->v + i * s->dim);
        }
    }
}

/* ---- handles ---------------------------------------------------------- */

static unsigned fa_read_sync(fa *s)
{
    return fa_syncs[fa_byte(&s->in) % 4];
}

/* Open fa_path as the handle of mode (FA_RW or FA_RO). */
static void fa_open(fa *s, int mode, unsigned flags, int with_p)
{
    vecidx_params p = s->p;
    int rc;
    s->mode = mode;
    rc = vecidx_open(fa_path, with_p ? &p : NULL,
                     flags | (mode == FA_RO ? VECIDX_RDONLY : 0), &s->ix);
    if (fa_rc(s, "vecidx_open", rc, FA_OKB) && !s->ix)
        fa_fail(s, "vecidx_open succeeded without a handle");
}

/* Close and reopen, first trying parameters of another dimension, which
** must be refused. */
static void fa_reopen(fa *s)
{
    unsigned b = fa_byte(&s->in);
    unsigned flags = fa_read_sync(s);
    if (s->mode == FA_MEM) return;
    vecidx_close(s->ix);
    s->ix = NULL;
    if (b & 4) {
        vecidx_params p = s->p;
        vecidx *ix = NULL;
        p.dim = s->dim + 1;
        fa_rc(s, "vecidx_open with another dim",
              vecidx_open(fa_path, &p, b & 1 ? VECIDX_RDONLY : 0, &ix),
              FA_B(VECIDX_EDIM));
        if (ix) {
            fa_fail(s, "a failed vecidx_open left a handle");
            vecidx_close(ix);
        }
    }
    fa_open(s, b & 1 ? FA_RO : FA_RW, flags, (b >> 1) & 1);
}

/* Copy src to dst as it is now; a missing src removes dst. */
static void fa_copy(const char *src, const char *dst)
{
    char buf[65536];
    FILE *in = fopen(src, "rb"), *out;
    size_t n;
    unlink(dst);
    if (!in) return;
    if (!(out = fopen(dst, "wb"))) {
        perror("fuzz_api: crash copy");
        abort();
    }
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) abort();
    fclose(in);
    if (fclose(out) != 0) abort();
}

/* A crash: the files are copied as they are while the handle is still
** open -- what a process killed at this moment leaves, since the page
** cache outlives it -- then the handle is closed and the copies reopened
** in place of the files it left. Every write that returned must be there
** ("a process crash loses nothing" in every sync mode). Copying instead of
** killing a child keeps it deterministic and cheap; tests/crash kills
** processes mid-write. */
static void fa_crash(fa *s)
{
    char wal[4300], cwal[4300], cpath[4200];
    unsigned b = fa_byte(&s->in), sync = fa_read_sync(s);
    if (s->mode == FA_MEM) return;
    snprintf(wal, sizeof wal, "%s-wal", fa_path);
    snprintf(cpath, sizeof cpath, "%s/crash", fa_dir);
    snprintf(cwal, sizeof cwal, "%s-wal", cpath);
    fa_copy(fa_path, cpath);
    fa_copy(wal, cwal);
    vecidx_close(s->ix);
    s->ix = NULL;
    unlink(wal);
    if (rename(cpath, fa_path) != 0 ||
        (access(cwal, F_OK) == 0 && rename(cwal, wal) != 0)) {
        perror("fuzz_api: crash rename");
        abort();
    }
    fa_open(s, b & 1 ? FA_RO : FA_RW, sync, (b >> 1) & 1);
}

/* A snapshot saved elsewhere, opened read-only, holds the model. */
static void fa_save_copy(fa *s)
{
    char wal[4300];
    vecidx *r = NULL;
    if (!fa_rc(s, "vecidx_save", vecidx_save(s->ix, fa_snap), FA_OKB)) return;
    if (fa_rc(s, "vecidx_open of a snapshot",
              vecidx_open(fa_snap, NULL, VECIDX_RDONLY, &r), FA_OKB)) {
        fa_check_handle(s, r);
        if (fa_byte(&s->in) & 1) fa_search(s, r, 0);
    }
    vecidx_close(r);
    snprintf(wal, sizeof wal, "%s-wal", fa_snap);
    unlink(fa_snap);
    unlink(wal);
}

/* Save over the main file: from memory it becomes the file reopened; of
** the writer it is a checkpoint; of a reader it replaces the file under
** it (the old log's salt no longer matches and must be ignored). */
static void fa_save_over(fa *s)
{
    unsigned b = fa_byte(&s->in), sync = fa_read_sync(s);
    if (!fa_rc(s, "vecidx_save over the main file", vecidx_save(s->ix, fa_path),
               FA_OKB))
        return;
    if (s->mode != FA_MEM) return;
    vecidx_close(s->ix);
    s->ix = NULL;
    fa_open(s, FA_RW, sync, b & 1);
}

/* A second handle: a reader beside the one open must see the model; a
** second writer must be refused. */
static void fa_second(fa *s)
{
    unsigned b = fa_byte(&s->in);
    vecidx *r = NULL;
    int rc;
    if (s->mode == FA_MEM) return;
    if ((b & 1) && s->mode == FA_RW) {
        rc = vecidx_open(fa_path, NULL, 0, &r);
        fa_rc(s, "second writer's vecidx_open", rc, FA_B(VECIDX_ESTATE));
        vecidx_close(r);
        return;
    }
    if (fa_rc(s, "reader's vecidx_open",
              vecidx_open(fa_path, NULL, VECIDX_RDONLY, &r), FA_OKB)) {
        fa_check_handle(s, r);
        fa_search(s, r, 0);
    }
    vecidx_close(r);
}

static void fa_train(fa *s)
{
    size_t n = fa_byte(&s->in) % FA_TRAIN_MAX, i;
    unsigned err = 0;
    int bad = 0, rc;
    for (i = 0; i < n; i++) {
        fa_gen_vec(s, s->train + i * s->dim, n % 4 != 3);
        bad |= fa_bad_vec(s, s->train + i * s->dim, 0);
    }
    rc = vecidx_train(s->ix, n, n ? s->train : NULL);
    if (n == 0 || bad) err |= FA_B(VECIDX_EINVAL);
    if (s->kind != VECIDX_IVFPQ || s->trained) {
        /* Arguments may be checked before the no-op. */
        if (s->kind == VECIDX_IVFPQ && n < s->p.ivf_nlist)
            err |= FA_B(VECIDX_EINVAL);
        err = err ? err | FA_OKB : 0;
        if (s->mode == FA_RO) err |= FA_OKB | FA_B(VECIDX_ESTATE);
    } else {
        if (n < s->p.ivf_nlist) err |= FA_B(VECIDX_EINVAL);
        if (s->mode == FA_RO) err |= FA_B(VECIDX_ESTATE);
    }
    if (fa_rc(s, "vecidx_train", rc, err ? err : FA_OKB) && rc == VECIDX_OK &&
        s->kind == VECIDX_IVFPQ && !s->trained) {
        vecidx_stats_t st;
        if (vecidx_stats(s->ix, &st) == VECIDX_OK && !st.trained)
            fa_fail(s, "vecidx_train succeeded, index untrained");
    }
}

static void fa_get_keys(fa *s)
{
    uint64_t keys[8];
    float v[FA_DIM_MAX];
    size_t cap = fa_byte(&s->in) % 9, n, i;
    unsigned id = fa_read_key(s);
    int rc = vecidx_get(s->ix, fa_key(id), v);
    if (!fa_rc(s, "vecidx_get", rc,
               s->m.present[id] ? FA_OKB : FA_B(VECIDX_ENOTFOUND)))
        return;
    fa_rc(s, "vecidx_get into NULL", vecidx_get(s->ix, fa_key(id), NULL),
          FA_B(VECIDX_EINVAL));
    if (!fa_rc(s, "vecidx_keys", vecidx_keys(s->ix, keys, cap, &n), FA_OKB))
        return;
    if (n != s->m.count) fa_fail(s, "keys: n %zu, model %zu", n, s->m.count);
    for (i = 0; i < cap && i < n && !s->failed; i++) {
        id = fa_key_id(keys[i]);
        if (id == FA_NKEYS || !s->m.present[id])
            fa_fail(s, "keys (cap %zu): %llu is not stored", cap,
                    (unsigned long long)keys[i]);
    }
}

/* ---- the run ---------------------------------------------------------- */

enum {
    FA_ADD,
    FA_UPSERT,
    FA_BATCH,
    FA_REMOVE,
    FA_SEARCH,
    FA_SEARCH_BATCH,
    FA_GET,
    FA_SAVE,
    FA_SAVE_OVER,
    FA_CHECKPOINT,
    FA_REOPEN,
    FA_CRASH,
    FA_SECOND,
    FA_TRAIN,
    FA_SYNC,
    FA_NOPS
};

static const char *const fa_opnames[FA_NOPS] = {
    "add",          "upsert",   "add_batch",     "remove",    "search",
    "search_batch", "get/keys", "save",          "save over", "checkpoint",
    "reopen",       "crash",    "second handle", "train",     "sync/reserve"};

/* Op byte (mod 32) to op: writes and searches most often. */
static const unsigned char fa_optab[32] = {
    FA_ADD,          FA_ADD,          FA_ADD,    FA_ADD,    FA_ADD,
    FA_UPSERT,       FA_UPSERT,       FA_UPSERT, FA_BATCH,  FA_BATCH,
    FA_BATCH,        FA_REMOVE,       FA_REMOVE, FA_REMOVE, FA_REMOVE,
    FA_SEARCH,       FA_SEARCH,       FA_SEARCH, FA_SEARCH, FA_SEARCH,
    FA_SEARCH_BATCH, FA_SEARCH_BATCH, FA_GET,    FA_SAVE,   FA_SAVE_OVER,
    FA_CHECKPOINT,   FA_REOPEN,       FA_CRASH,  FA_SECOND, FA_TRAIN,
    FA_SYNC,         FA_GET};

static unsigned fa_op_byte(unsigned op)
{
    unsigned i;
    for (i = 0; i < 32; i++)
        if (fa_optab[i] == op) return i;
    return 0;
}

/* The errors creating p may give (either, when two apply), or 0. */
static unsigned fa_create_errors(const vecidx_params *p)
{
    unsigned err = 0;
    if (p->storage != VECIDX_STORE_F32 &&
        (p->kind == VECIDX_IVFPQ ||
         (p->storage == VECIDX_STORE_BIN &&
          (p->metric == VECIDX_L2 || !p->keep_vectors))))
        err |= FA_B(VECIDX_ENOTSUP);
    if (p->kind == VECIDX_IVFPQ && p->ivf_refine > 1 && !p->ivf_keep_vectors)
        err |= FA_B(VECIDX_EINVAL);
    return err;
}

static int fa_create(fa *s)
{
    int rc;
    s->ix = NULL;
    if (s->file)
        rc = vecidx_open(fa_path, &s->p, VECIDX_CREATE | s->sync, &s->ix);
    else
        rc = vecidx_create(&s->p, &s->ix);
    return rc;
}

/* Header: kind, metric, storage, dim, flags, then three bytes of kind
** parameters and a seed. */
static void fa_setup(fa *s, const unsigned char *hdr)
{
    unsigned b[9], i, want;
    int rc;
    for (i = 0; i < 9; i++) b[i] = fa_pick(&s->in, hdr ? hdr[i] : 0);
    s->kind = 1 + (int)(b[0] % 3);
    s->metric = 1 + (int)(b[1] % 3);
    s->dim = 1 + b[3] % FA_DIM_MAX;
    s->file = b[4] & 1;
    s->sync = fa_syncs[(b[4] >> 1) % 4];
    s->ksp = (unsigned[]){6, 24, 80, 240}[(b[4] >> 3) % 4];
    s->extreme = (b[4] >> 5) & 1;
    vecidx_params_init(&s->p, s->kind, s->metric, s->dim);
    s->p.threads = 1;
    s->p.seed = b[8];
    s->p.capacity = (b[4] >> 6) & 1 ? b[8] % 50 : 0;
    s->p.storage = fa_storages[b[2] % 7].storage;
    s->p.keep_vectors = fa_storages[b[2] % 7].keep;
    if (s->kind == VECIDX_HNSW) {
        s->p.hnsw_m = 2 + b[5] % 7;
        s->p.hnsw_ef_construction = 1 + b[6] % 40;
        s->p.hnsw_ef_search = 1 + b[7] % 40;
    }
    if (s->kind != VECIDX_IVFPQ) s->p.refine = b[8] % 4;
    if (s->kind == VECIDX_IVFPQ) {
        unsigned ts = (b[6] / 5) % 4;
        s->p.pq_m = b[5] % (s->dim + 1);
        s->p.ivf_nlist = b[6] % 5;
        s->p.ivf_train_size =
            ts ? (s->p.ivf_nlist ? s->p.ivf_nlist : 1) * 6 * ts : 0;
        s->p.ivf_keep_vectors = b[7] & 1;
        s->p.ivf_refine = (b[7] >> 1) % 4;
        s->p.ivf_quantizer = (b[7] >> 3) % 3;
        s->p.ivf_nprobe = 1 + (b[7] >> 5) % 4;
    }
    /* Combinations vecidx_create refuses, then the nearest it takes. */
    if ((want = fa_create_errors(&s->p)) != 0) {
        rc = fa_create(s);
        fa_rc(s, "vecidx_create of refused parameters", rc, want);
        vecidx_close(s->ix);
        s->p.storage = VECIDX_STORE_F32;
        s->p.keep_vectors = 0;
        if (s->p.ivf_refine > 1 && !s->p.ivf_keep_vectors) s->p.ivf_refine = 0;
    }
    s->storage = s->p.storage;
    s->keep = s->p.storage != VECIDX_STORE_F32 && s->p.keep_vectors;
    s->mode = s->file ? FA_RW : FA_MEM;
    rc = fa_create(s);
    fa_rc(s, "vecidx_create", rc, FA_OKB);
}

static void fa_step(fa *s, unsigned op)
{
    fa_wop *w = &s->w;
    unsigned b;
    switch (op) {
    case FA_ADD:
    case FA_UPSERT:
    case FA_BATCH:
    case FA_REMOVE:
        fa_read_wop(s, w,
                    op == FA_ADD      ? FA_W_ADD
                    : op == FA_UPSERT ? FA_W_UPSERT
                    : op == FA_BATCH  ? FA_W_BATCH
                                      : FA_W_REMOVE);
        fa_apply_wop(s, w, fa_exec_wop(s->ix, w));
        break;
    case FA_SEARCH:
        fa_search(s, s->ix, 0);
        break;
    case FA_SEARCH_BATCH:
        fa_search(s, s->ix, fa_byte(&s->in) % (FA_NQ_MAX + 1));
        break;
    case FA_GET:
        fa_get_keys(s);
        break;
    case FA_SAVE:
        fa_save_copy(s);
        break;
    case FA_SAVE_OVER:
        fa_save_over(s);
        break;
    case FA_CHECKPOINT:
        w->op = FA_W_CKPT;
        w->n = 0;
        fa_apply_wop(s, w, vecidx_checkpoint(s->ix));
        break;
    case FA_REOPEN:
        fa_reopen(s);
        break;
    case FA_CRASH:
        fa_crash(s);
        break;
    case FA_SECOND:
        fa_second(s);
        break;
    case FA_TRAIN:
        fa_train(s);
        break;
    default:
        /* Seeds reserve in memory only: vecidx_check after a reserve on
        ** a file-backed index fails (fuzz/api-regress/reserve-*). */
        b = fa_pick(&s->in, s->mode == FA_MEM ? 81 : 0);
        /* up to 16k: beyond the slots of one chunk at every dimension */
        if (b & 1)
            fa_rc(s, "vecidx_reserve", vecidx_reserve(s->ix, (b >> 1) * 128),
                  s->mode == FA_RO ? FA_OKB | FA_B(VECIDX_ESTATE) : FA_OKB);
        else
            fa_rc(s, "vecidx_sync", vecidx_sync(s->ix), FA_OKB);
        break;
    }
}

/* The whole run of one input; returns 0 when the model held throughout.
** sched (generating a seed): the ops to run, ending with FA_NOPS. */
static int fa_run(fa *s, const unsigned char *hdr, const unsigned char *sched)
{
    int nops;
    fa_make_dir();
    fa_clear_dir(0);
    s->opname = "create";
    fa_setup(s, hdr);
    for (nops = 0; nops < FA_MAX_OPS && !s->failed && s->ix; nops++) {
        unsigned op;
        if (sched ? sched[nops] == FA_NOPS : fa_spent(&s->in)) break;
        op =
            fa_optab[fa_pick(&s->in, sched ? fa_op_byte(sched[nops]) : 0) % 32];
        s->step = nops + 1;
        s->opname = fa_opnames[op];
        fa_ran[op]++;
        fa_step(s, op);
        if (s->ix && !s->failed) {
            s->opname = fa_opnames[op];
            fa_check_handle(s, s->ix);
        }
    }
    /* Whatever the last mode, the file must hold everything. */
    if (!s->failed && s->ix && s->mode != FA_MEM) {
        s->step++;
        s->opname = "final reopen";
        vecidx_close(s->ix);
        s->ix = NULL;
        fa_open(s, FA_RO, 0, 0);
        if (s->ix) fa_check_handle(s, s->ix);
    }
    vecidx_close(s->ix);
    s->ix = NULL;
    fa_clear_dir(0);
    return s->failed;
}

static fa fa_state;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    memset(&fa_state, 0, sizeof fa_state);
    fa_state.in.p = data;
    fa_state.in.n = size;
    fa_run(&fa_state, NULL, NULL);
    return 0;
}

#ifdef VX_FUZZ_MAIN
/* ---- replay driver and seed generator --------------------------------- */

static int fa_replay_file(const char *path, int *failed)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long n;
    int bad;
    if (!f) {
        printf("%s: cannot open\n", path);
        (*failed)++;
        return 0;
    }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc(n > 0 ? (size_t)n : 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        printf("%s: cannot read\n", path);
        free(buf);
        fclose(f);
        (*failed)++;
        return 0;
    }
    fclose(f);
    memset(&fa_state, 0, sizeof fa_state);
    fa_state.in.p = buf;
    fa_state.in.n = (size_t)n;
    bad = fa_run(&fa_state, NULL, NULL);
    free(buf);
    if (bad) {
        printf("FAIL %s\n", path);
        (*failed)++;
    }
    return !bad;
}

static int fa_cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void fa_replay(const char *path, int *passed, int *failed)
{
    struct stat st;
    DIR *d;
    struct dirent *e;
    char **names = NULL, full[4400];
    size_t n = 0, cap = 0, i;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        *passed += fa_replay_file(path, failed);
        return;
    }
    if (!(d = opendir(path))) {
        printf("%s: cannot open\n", path);
        (*failed)++;
        return;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            char **t = realloc(names, (cap = cap ? 2 * cap : 64) * sizeof *t);
            if (!t) abort();
            names = t;
        }
        if (!(names[n++] = strdup(e->d_name))) abort();
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, fa_cmp_names);
    for (i = 0; i < n; i++) {
        snprintf(full, sizeof full, "%s/%s", path, names[i]);
        *passed += fa_replay_file(full, failed);
        free(names[i]);
    }
    free(names);
}

/* Every operation at least once, after enough writes for searches, saves
** and crashes to have something to hold. */
static const unsigned char fa_sched[] = {
    FA_BATCH,        FA_ADD,          FA_ADD,    FA_UPSERT, FA_SEARCH,
    FA_BATCH,        FA_REMOVE,       FA_SEARCH, FA_GET,    FA_BATCH,
    FA_SEARCH_BATCH, FA_SAVE,         FA_ADD,    FA_REMOVE, FA_CHECKPOINT,
    FA_SEARCH,       FA_REOPEN,       FA_SEARCH, FA_UPSERT, FA_CRASH,
    FA_SEARCH,       FA_TRAIN,        FA_ADD,    FA_SEARCH, FA_SECOND,
    FA_SAVE_OVER,    FA_REMOVE,       FA_REMOVE, FA_SEARCH, FA_SYNC,
    FA_BATCH,        FA_SEARCH_BATCH, FA_REOPEN, FA_ADD,    FA_SEARCH,
    FA_CRASH,        FA_SEARCH,       FA_REMOVE, FA_UPSERT, FA_SECOND,
    FA_SEARCH,       FA_BATCH,        FA_REMOVE, FA_REMOVE, FA_REMOVE,
    FA_SEARCH,       FA_SEARCH_BATCH, FA_GET,    FA_UPSERT, FA_SEARCH,
    FA_NOPS};

/* One seed per kind, metric and storage that vecidx_create takes (and one
** per refused storage), in memory and in a file by turns. */
static int fa_make_seeds(const char *dir)
{
    static uint8_t buf[1 << 16];
    char path[4400];
    unsigned kind, metric, st, n = 0, try;
    int bad;
    for (kind = 0; kind < 3; kind++)
        for (metric = 0; metric < 3; metric++)
            for (st = 0; st < 7; st++) {
                unsigned char hdr[9];
                FILE *f;
                if (kind == 2 && st > 1) continue;
                hdr[0] = (unsigned char)kind;
                hdr[1] = (unsigned char)metric;
                hdr[2] = (unsigned char)st;
                hdr[3] = (unsigned char)(3 + 5 * n % 14);
                /* file every other seed, sync mode, keyspace of 24 */
                hdr[4] = (unsigned char)((n & 1) | (n / 2 % 4) << 1 | 1u << 3);
                hdr[5] = (unsigned char)(2 + n);
                /* IVF-PQ: 2 lists trained after 12 vectors, or explicitly */
                hdr[6] = (unsigned char)(n & 2 ? 2 + 5 * 1 : 2);
                hdr[7] = (unsigned char)(kind == 2 ? (n & 4 ? 1 | 2 << 1 : 0)
                                                   : 8 + n);
                hdr[8] = (unsigned char)n;
                /* Another draw when a seed meets a bug of the library: the
                ** seeds are replayed by `make test`, the bugs are kept in
                ** fuzz/api-regress. */
                for (try = 0; try < 20; try++) {
                    memset(&fa_state, 0, sizeof fa_state);
                    fa_state.in.gen = 1;
                    fa_state.in.rng = 0x5eed0000u + n + 1000u * try;
                    fa_state.in.out = buf;
                    fa_state.in.cap = sizeof buf;
                    if (!(bad = fa_run(&fa_state, hdr, fa_sched))) break;
                }
                snprintf(path, sizeof path, "%s/%s-%s-%u", dir,
                         (const char *[]){"flat", "hnsw", "ivfpq"}[kind],
                         (const char *[]){"l2", "ip", "cos"}[metric], st);
                if (!(f = fopen(path, "wb")) ||
                    fwrite(buf, 1, fa_state.in.len, f) != fa_state.in.len) {
                    perror(path);
                    return 1;
                }
                fclose(f);
                if (bad) return 1;
                n++;
            }
    printf("%u seeds written to %s\n", n, dir);
    return 0;
}

int main(int argc, char **argv)
{
    int i, passed = 0, failed = 0, verbose = 0;
    while (argc > 1 && (!strcmp(argv[1], "-v") || !strcmp(argv[1], "-t"))) {
        if (!strcmp(argv[1], "-v"))
            verbose = 1;
        else
            fa_trace = 1;
        argv++;
        argc--;
    }
    if (argc == 3 && !strcmp(argv[1], "--make-seeds"))
        return fa_make_seeds(argv[2]);
    if (argc < 2) {
        fprintf(stderr, "usage: fuzz_api-replay FILE|DIR...\n"
                        "       fuzz_api-replay --make-seeds DIR\n");
        return 2;
    }
    for (i = 1; i < argc; i++) fa_replay(argv[i], &passed, &failed);
    if (verbose) {
        for (i = 0; i < FA_NOPS; i++)
            printf("%-14s %lu steps\n", fa_opnames[i], fa_ran[i]);
        printf("%lu writes succeeded, %lu search results checked, %lu "
               "searches checked as exact\n",
               fa_writes_ok, fa_results, fa_exact);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
#endif
