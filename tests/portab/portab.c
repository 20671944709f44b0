/*
** portab.c -- do index files written on one machine open and answer the
** same on another? (issue 17: written on x86-64, read on aarch64 and
** 32-bit ARM under qemu in `make cross-test`; natively in `make test`.)
**
**   portab write DIR   create the index files below in DIR, and
**                      DIR/answers.txt: what each answers when opened
**                      read-only on this machine
**   portab check DIR   open each file read-only, then a copy writable,
**                      checkpoint the copy and open it read-only again;
**                      each time ask the same and compare with answers.txt
**   portab self        write to a temporary directory, check, remove it
**
** The files cover every kind and metric, float32, half-precision, int8
** and binary storage, removed keys (free slots, HNSW nodes awaiting
** repair, a repair pass under way), 64-bit
** keys above 2^32 (32-bit ARM has a 32-bit size_t), trained and untrained
** IVF-PQ, and two files left with records in their log, replayed at
** every open. The questions: vecidx_check, stats, vecidx_keys, vecidx_get
** of every key, absent keys, and searches (ef, nprobe, refine, the three
** filter forms, a batch) for fixed queries.
**
** "The same": equal stats, the same set of keys (vecidx_keys promises no
** order), every vector bit for bit, the same result keys in the same
** order, and distances equal within rounding. Kernels differ between
** machines (AVX-512 or AVX2 on x86-64, NEON, scalar) and sum in different
** orders, so distances may differ in the last bits. To keep that from
** reordering results, every component of every vector and query is a
** small integer: float32 sums of their products are exact in any order,
** so flat and HNSW distances (float32, half precision, int8 codes, whose
** dot products are integers) come out bit for bit the same everywhere and
** HNSW walks take the same path. IVF-PQ centroids are means, not
** integers: its code distances may differ by rounding. A distance a
** recorded here must come back within PT_TOL * (|a| + scale), scale the
** file's mean |distance|: 2^-17, about six times the largest difference
** measured between the AVX-512, NEON and scalar kernels (0.16 of it), far
** below the change a wrong vector or code makes.
** Queries whose results hold two distances closer than twice that, but
** not equal, are not used (a tie within rounding could legitimately swap
** two keys). What remains possible: an IVF-PQ query whose nprobe-th and
** next centroid, or a logged vector whose two nearest codes, lie within
** rounding of each other (replay encodes logged vectors again, with the
** reading machine's kernels); the data is fixed, so such a case would
** fail every time, never at random.
**
** Output: a line per file and open, failures with details, then the
** distance statistics and "N passed, N failed"; exit status 1 on failure.
*/
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "vecidx.h"

#define PT_DIM 20             /* 16 + 4: the kernels' tails run too */
#define PT_Q 10               /* queries per file */
#define PT_KMAX 50            /* largest k asked */
#define PT_NABSENT 8          /* absent keys asked about */
#define PT_TOL (1.0 / 131072) /* 2^-17 */
#define PT_MAX_FAILS 12       /* failure lines printed per check */

/* ---- deterministic data -------------------------------------------------- */

typedef struct pt_rng {
    uint64_t s;
} pt_rng;

/* splitmix64: the same numbers on every platform */
static uint64_t pt_next(pt_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int pt_int(pt_rng *r, int lo, int hi)
{
    return lo + (int)(pt_next(r) % (uint64_t)(hi - lo + 1));
}

/* Clustered integer vectors: one of 16 integer centres in [-10, 10]
** plus an integer offset in [-3, 3] per component. Never all zero. */
static void pt_vector(pt_rng *r, float *v)
{
    pt_rng c;
    int i, any = 0;
    c.s = 1000 + (uint64_t)pt_int(r, 0, 15);
    for (i = 0; i < PT_DIM; i++) {
        v[i] = (float)(pt_int(&c, -10, 10) + pt_int(r, -3, 3));
        any |= v[i] != 0;
    }
    if (!any) v[0] = 1;
}

/* ---- the files ----------------------------------------------------------
** Keys: `small` files use 5 + 3i (below 4096, for the bitmap filter),
** the others random 64-bit keys with the top bit set. Built on one
** thread with fixed seeds. In-memory ones are saved with vecidx_save;
** `logged` ones are created with vecidx_open, checkpointed after the
** first two thirds, and closed with the last writes in the log. */
typedef struct pt_file {
    const char *name;
    int kind, metric;
    uint32_t storage, keep, refine;
    int small, logged;
    uint32_t n; /* vectors added; then every 9th removed (saved HNSW
                   files: every 6th, and more until the file holds a
                   repair pass under way) and every 13th upserted */
} pt_file;

static const pt_file pt_files[] = {
    {"flat-l2", VECIDX_FLAT, VECIDX_L2, VECIDX_STORE_F32, 0, 0, 0, 0, 600},
    {"flat-ip-f16", VECIDX_FLAT, VECIDX_IP, VECIDX_STORE_F16, 1, 3, 1, 0, 500},
    {"hnsw-cos", VECIDX_HNSW, VECIDX_COSINE, VECIDX_STORE_F32, 0, 0, 0, 0, 800},
    {"hnsw-l2-i8", VECIDX_HNSW, VECIDX_L2, VECIDX_STORE_I8, 0, 0, 1, 0, 700},
    {"hnsw-ip-log", VECIDX_HNSW, VECIDX_IP, VECIDX_STORE_F32, 0, 0, 0, 1, 600},
    {"hnsw-ip-bin", VECIDX_HNSW, VECIDX_IP, VECIDX_STORE_BIN, 1, 0, 0, 0, 600},
    {"ivfpq-l2", VECIDX_IVFPQ, VECIDX_L2, VECIDX_STORE_F32, 0, 0, 1, 0, 900},
    {"ivfpq-cos-log", VECIDX_IVFPQ, VECIDX_COSINE, VECIDX_STORE_F32, 1, 4, 0, 1,
     750},
    {"ivfpq-ip-buffer", VECIDX_IVFPQ, VECIDX_IP, VECIDX_STORE_F32, 0, 0, 1, 0,
     150},
};
#define PT_NFILES (sizeof pt_files / sizeof pt_files[0])

static void pt_params(const pt_file *f, vecidx_params *p)
{
    vecidx_params_init(p, f->kind, f->metric, PT_DIM);
    p->threads = 1;
    p->seed = 17;
    p->hnsw_m = 8;
    p->hnsw_ef_construction = 48;
    p->hnsw_ef_search = 24;
    p->storage = f->storage;
    if (f->kind == VECIDX_IVFPQ) {
        p->storage = VECIDX_STORE_F32;
        p->ivf_keep_vectors = f->keep;
        p->ivf_refine = f->refine;
        p->ivf_nlist = f->logged ? 12 : 16;
        p->pq_m = f->logged ? 6 : 5; /* 6 does not divide 20 */
        p->ivf_nprobe = 4;
        /* the logged file trains itself within its first batch */
        if (f->logged) p->ivf_train_size = 450;
    } else if (f->storage != VECIDX_STORE_F32) {
        p->keep_vectors = f->keep;
        p->refine = f->refine;
    }
}

static uint64_t pt_key(const pt_file *f, uint32_t i, pt_rng *r)
{
    return f->small ? 5 + 3 * (uint64_t)i : pt_next(r) | 1ull << 63;
}

/* ---- searches ------------------------------------------------------------ */

enum {
    PT_ALL,
    PT_CALLBACK,
    PT_KEYS,
    PT_BITMAP
};

typedef struct pt_spec {
    const char *name;
    size_t k;
    uint32_t ef, nprobe, refine;
    int filter;
} pt_spec;

static const pt_spec pt_specs[] = {
    {"k10", 10, 0, 0, 0, PT_ALL},
    {"k1", 1, 0, 0, 0, PT_ALL},
    {"k50-wide", 50, 96, 16, 0, PT_ALL},
    {"k10-narrow", 10, 10, 2, 1, PT_ALL},
    {"k10-callback", 10, 0, 0, 0, PT_CALLBACK},
    {"k10-keys", 10, 0, 0, 0, PT_KEYS},
    {"k10-bitmap", 10, 0, 0, 0, PT_BITMAP},
};
#define PT_NSPECS (sizeof pt_specs / sizeof pt_specs[0])
#define PT_BITS 4096u

static int pt_filter(uint64_t key, void *ctx)
{
    (void)ctx;
    return (key ^ key >> 31) % 3 != 0;
}

typedef struct pt_res {
    size_t found;
    uint64_t keys[PT_KMAX];
    float dists[PT_KMAX];
} pt_res;

/* What a file answers. */
#define PT_NSTATS 10
typedef struct pt_ans {
    uint64_t stats[PT_NSTATS];
    size_t n;            /* keys */
    uint64_t *keys;      /* sorted */
    float *vecs;         /* n * PT_DIM, by sorted key */
    uint64_t *key_order; /* as vecidx_keys gave them */
    size_t nabsent;
    uint64_t absent[PT_NABSENT];
    float scale;
    size_t nq;
    float q[PT_Q][PT_DIM];
    pt_res res[PT_NSPECS][PT_Q];
    pt_res batch[PT_Q];
} pt_ans;

static void pt_ans_free(pt_ans *a)
{
    free(a->keys);
    free(a->vecs);
    free(a->key_order);
    memset(a, 0, sizeof *a);
}

/* The allowed sets of the filtered searches, from the recorded keys: every
** fourth key and the absent ones; a bitmap of the keys below 4096 that are
** not 2 mod 5. */
typedef struct pt_allow {
    uint64_t *keys;
    size_t n;
    uint64_t bits[PT_BITS / 64];
} pt_allow;

static int pt_allow_make(const pt_ans *want, pt_allow *al)
{
    size_t i;
    al->n = 0;
    al->keys = malloc((want->n / 4 + PT_NABSENT + 1) * sizeof *al->keys);
    if (!al->keys) return -1;
    for (i = 1; i < want->n; i += 4) al->keys[al->n++] = want->keys[i];
    for (i = 0; i < want->nabsent; i++) al->keys[al->n++] = want->absent[i];
    memset(al->bits, 0, sizeof al->bits);
    for (i = 0; i < PT_BITS; i++)
        if (i % 5 != 2) al->bits[i / 64] |= 1ull << (i % 64);
    return 0;
}

static int pt_search(vecidx *ix, const pt_spec *s, const pt_allow *al,
                     const float *q, size_t k, pt_res *r)
{
    vecidx_search_opts o;
    memset(&o, 0, sizeof o);
    o.ef = s->ef;
    o.nprobe = s->nprobe;
    o.refine = s->refine;
    if (s->filter == PT_CALLBACK) o.filter = pt_filter;
    if (s->filter == PT_KEYS) {
        o.allow_keys = al->keys;
        o.allow_count = al->n;
    }
    if (s->filter == PT_BITMAP) {
        o.allow_bitmap = al->bits;
        o.allow_bits = PT_BITS;
    }
    return vecidx_search(ix, q, k, &o, r->keys, r->dists, &r->found);
}

/* ---- asking a file ------------------------------------------------------- */

static int pt_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void pt_stats(vecidx *ix, uint64_t *st)
{
    vecidx_stats_t s;
    memset(&s, 0, sizeof s);
    vecidx_stats(ix, &s);
    st[0] = (uint64_t)s.kind;
    st[1] = (uint64_t)s.metric;
    st[2] = s.dim;
    st[3] = s.count;
    st[4] = s.slots;
    st[5] = (uint64_t)s.trained;
    st[6] = s.nlist;
    st[7] = s.pq_m;
    st[8] = (uint64_t)s.storage;
    st[9] = s.vector_bytes;
}

static const char *const pt_stat_names[PT_NSTATS] = {
    "kind",    "metric", "dim",  "count",   "slots",
    "trained", "nlist",  "pq_m", "storage", "vector_bytes"};

/* Everything but the searches: stats, keys (sorted, and in the order
** given), every key's vector. Returns a vecidx error code. */
static int pt_ask_contents(vecidx *ix, pt_ans *a)
{
    size_t n = 0, i, total;
    int rc;
    pt_stats(ix, a->stats);
    if ((rc = vecidx_keys(ix, NULL, 0, &n)) != VECIDX_OK) return rc;
    a->keys = malloc((n + 1) * sizeof *a->keys);
    a->key_order = malloc((n + 1) * sizeof *a->key_order);
    a->vecs = malloc(((n + 1) * PT_DIM) * sizeof *a->vecs);
    if (!a->keys || !a->key_order || !a->vecs) return VECIDX_ENOMEM;
    if ((rc = vecidx_keys(ix, a->key_order, n, &total)) != VECIDX_OK) return rc;
    if (total != n) return VECIDX_ECORRUPT;
    memcpy(a->keys, a->key_order, n * sizeof *a->keys);
    qsort(a->keys, n, sizeof *a->keys, pt_cmp_u64);
    a->n = n;
    for (i = 0; i < n; i++)
        if ((rc = vecidx_get(ix, a->keys[i], a->vecs + i * PT_DIM)) !=
            VECIDX_OK)
            return rc;
    return VECIDX_OK;
}

/* The searches of a->q against ix. */
static int pt_ask_searches(vecidx *ix, const pt_allow *al, pt_ans *a)
{
    vecidx_search_opts o;
    uint64_t keys[PT_Q * 10];
    float dists[PT_Q * 10];
    size_t found[PT_Q], s, i;
    int rc;
    for (s = 0; s < PT_NSPECS; s++)
        for (i = 0; i < a->nq; i++)
            if ((rc = pt_search(ix, &pt_specs[s], al, a->q[i], pt_specs[s].k,
                                &a->res[s][i])) != VECIDX_OK)
                return rc;
    memset(&o, 0, sizeof o);
    o.threads = 2;
    if ((rc = vecidx_search_batch(ix, a->nq, &a->q[0][0], 10, &o, keys, dists,
                                  found)) != VECIDX_OK)
        return rc;
    for (i = 0; i < a->nq; i++) {
        a->batch[i].found = found[i];
        memcpy(a->batch[i].keys, keys + i * 10, 10 * sizeof *keys);
        memcpy(a->batch[i].dists, dists + i * 10, 10 * sizeof *dists);
    }
    return VECIDX_OK;
}

/* ---- write --------------------------------------------------------------- */

static int pt_fail_io(const char *what, const char *path)
{
    printf("portab: %s %s: %s\n", what, path, strerror(errno));
    return 1;
}

static int pt_fail_vx(const char *what, const char *name, int rc,
                      const vecidx *ix)
{
    printf("portab: %s %s: %s (%s)\n", what, name, vecidx_strerror(rc),
           vecidx_errmsg(ix));
    return 1;
}

static void pt_path(char *out, size_t cap, const char *dir, const char *name,
                    const char *suffix)
{
    snprintf(out, cap, "%s/%s.vx%s", dir, name, suffix);
}

static long pt_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* The length of the repair section a saved HNSW file holds while a repair
** pass is under way: u64 little-endian at offset 496 (docs/FORMAT.md). */
static uint64_t pt_repair_len(const char *path)
{
    unsigned char b[8];
    uint64_t n = 0;
    FILE *fp = fopen(path, "rb");
    int i, ok = fp && fseek(fp, 496, SEEK_SET) == 0 && fread(b, 8, 1, fp) == 1;
    if (fp) fclose(fp);
    for (i = 7; ok && i >= 0; i--) n = n << 8 | b[i];
    return n;
}

/* Build file f in dir; its removed keys go to absent (PT_NABSENT - 2 of
** them, then two never used). */
static int pt_build(const char *dir, const pt_file *f, uint64_t *absent)
{
    char path[1024], wal[1024];
    vecidx_params p;
    vecidx *ix = NULL;
    pt_rng kr, vr;
    uint64_t *keys = malloc(f->n * sizeof *keys);
    float *vecs = malloc((size_t)f->n * PT_DIM * sizeof *vecs);
    uint32_t i, split = f->logged ? f->n * 2 / 3 : f->n / 2, nabsent = 0;
    uint32_t rm_every = f->kind == VECIDX_HNSW && !f->logged ? 6 : 9;
    long wal0 = 0;
    int rc = VECIDX_OK;
    if (!keys || !vecs) {
        free(keys);
        free(vecs);
        return pt_fail_vx("building", f->name, VECIDX_ENOMEM, NULL);
    }
    pt_path(path, sizeof path, dir, f->name, "");
    pt_path(wal, sizeof wal, dir, f->name, "-wal");
    unlink(path);
    unlink(wal);
    kr.s = 0xC0FFEE + (uint64_t)f->kind * 7 + (uint64_t)f->metric;
    vr.s = kr.s ^ 0x5EED;
    for (i = 0; i < f->n; i++) {
        keys[i] = pt_key(f, i, &kr);
        pt_vector(&vr, vecs + (size_t)i * PT_DIM);
    }
    pt_params(f, &p);
    if (f->logged)
        rc = vecidx_open(path, &p, VECIDX_CREATE | VECIDX_SYNC_OFF, &ix);
    else
        rc = vecidx_create(&p, &ix);
    if (rc == VECIDX_OK && f->kind == VECIDX_IVFPQ && !f->logged &&
        f->n >= 600) {
        /* trained on samples of the same kind, not added */
        size_t ns = 1200, j;
        float *s = malloc(ns * PT_DIM * sizeof *s);
        if (!s) rc = VECIDX_ENOMEM;
        for (j = 0; s && j < ns; j++) pt_vector(&vr, s + j * PT_DIM);
        if (rc == VECIDX_OK) rc = vecidx_train(ix, ns, s);
        free(s);
    }
    /* a batch, then one by one */
    if (rc == VECIDX_OK) rc = vecidx_add_batch(ix, split, keys, vecs);
    if (rc == VECIDX_OK && f->logged) {
        rc = vecidx_checkpoint(ix);
        wal0 = pt_size(wal);
    }
    for (i = split; rc == VECIDX_OK && i < f->n; i++)
        rc = vecidx_add(ix, keys[i], vecs + (size_t)i * PT_DIM);
    for (i = 3; rc == VECIDX_OK && i < f->n; i += rm_every) {
        rc = vecidx_remove(ix, keys[i]);
        if (nabsent < PT_NABSENT - 2) absent[nabsent++] = keys[i];
    }
    for (i = 5; rc == VECIDX_OK && i < f->n; i += 13) {
        float v[PT_DIM];
        if (i % rm_every == 3) continue;
        pt_vector(&vr, v);
        rc = vecidx_upsert(ix, keys[i], v);
    }
    if (rc == VECIDX_OK && !f->logged) rc = vecidx_save(ix, path);
    /* Saved graphs: more removals until the file holds a repair pass under
    ** way (7.5 % of the nodes removed starts one; a pass over a few
    ** hundred nodes spans several writes). */
    for (i = 4; rc == VECIDX_OK && f->kind == VECIDX_HNSW && !f->logged &&
                !pt_repair_len(path) && i < f->n;
         i += rm_every) {
        rc = vecidx_remove(ix, keys[i]);
        if (rc == VECIDX_OK) rc = vecidx_save(ix, path);
    }
    if (rc == VECIDX_OK && f->kind == VECIDX_HNSW && !f->logged &&
        !pt_repair_len(path))
        printf("portab: note: %s holds no repair pass under way\n", f->name);
    if (rc != VECIDX_OK) pt_fail_vx("building", f->name, rc, ix);
    vecidx_close(ix);
    absent[nabsent++] = f->small ? 2 : 0;
    absent[nabsent++] = f->small ? PT_BITS + 1 : UINT64_MAX;
    free(keys);
    free(vecs);
    if (rc != VECIDX_OK) return 1;
    /* the replay must have something to do */
    if (f->logged && !(pt_size(wal) > wal0)) {
        printf("portab: %s: the log did not grow after the checkpoint (%ld "
               "-> %ld bytes)\n",
               f->name, wal0, pt_size(wal));
        return 1;
    }
    return 0;
}

/* Two different distances within twice the tolerance: a tie that
** rounding elsewhere could break the other way. */
static int pt_near_tie(const pt_res *r, size_t n, float scale)
{
    size_t i;
    if (n > r->found) n = r->found;
    for (i = 1; i < n; i++) {
        double a = r->dists[i - 1], b = r->dists[i];
        if (a != b && fabs(b - a) <= 2 * PT_TOL * (fabs(a) + scale)) return 1;
    }
    return 0;
}

static void pt_print_floats(FILE *o, const float *v, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &v[i], 4);
        fprintf(o, " %08lx", (unsigned long)b);
    }
}

static void pt_print_res(FILE *o, const pt_res *r)
{
    size_t i;
    fprintf(o, " %zu", r->found);
    for (i = 0; i < r->found; i++) {
        uint32_t b;
        memcpy(&b, &r->dists[i], 4);
        fprintf(o, " %llu:%08lx", (unsigned long long)r->keys[i],
                (unsigned long)b);
    }
    fputc('\n', o);
}

/* Open file f read-only, pick queries without near ties, and record what
** it answers. */
static int pt_record(FILE *o, const char *dir, const pt_file *f,
                     const uint64_t *absent)
{
    char path[1024];
    vecidx *ix = NULL;
    pt_ans *a = calloc(1, sizeof *a);
    pt_allow al = {NULL, 0, {0}};
    pt_rng qr;
    size_t s, i, cand;
    double sum = 0;
    long nd = 0;
    int rc;
    if (!a) return pt_fail_vx("recording", f->name, VECIDX_ENOMEM, NULL);
    pt_path(path, sizeof path, dir, f->name, "");
    rc = vecidx_open(path, NULL, VECIDX_RDONLY, &ix);
    if (rc == VECIDX_OK) rc = vecidx_check(ix);
    if (rc == VECIDX_OK) rc = pt_ask_contents(ix, a);
    memcpy(a->absent, absent, sizeof a->absent);
    a->nabsent = PT_NABSENT;
    if (rc == VECIDX_OK && pt_allow_make(a, &al) != 0) rc = VECIDX_ENOMEM;
    /* the scale: mean |distance| of k10 over the first candidates */
    qr.s = 0xABCDEF + (uint64_t)f->kind * 3 + (uint64_t)f->metric;
    for (i = 0; rc == VECIDX_OK && i < PT_Q; i++) {
        pt_res r;
        size_t j;
        pt_vector(&qr, a->q[0]);
        rc = pt_search(ix, &pt_specs[0], &al, a->q[0], 10, &r);
        for (j = 0; rc == VECIDX_OK && j < r.found; j++, nd++)
            sum += fabs(r.dists[j]);
    }
    a->scale = nd ? (float)(sum / (double)nd) : 1.0f;
    /* queries: every third a stored vector, the others new ones; a
    ** candidate is kept if no result list, nor the k + 1 list, has a tie
    ** within rounding */
    for (cand = 0; rc == VECIDX_OK && a->nq < PT_Q && cand < 8 * PT_Q; cand++) {
        float *q = a->q[a->nq];
        int ok = 1;
        if (cand % 3 == 2 && a->n > 0)
            memcpy(q, a->vecs + (size_t)(pt_next(&qr) % a->n) * PT_DIM,
                   sizeof a->q[0]);
        else
            pt_vector(&qr, q);
        for (s = 0; ok && rc == VECIDX_OK && s < PT_NSPECS; s++) {
            pt_res r;
            size_t k = pt_specs[s].k;
            rc = pt_search(ix, &pt_specs[s], &al, q, k, &r);
            if (rc == VECIDX_OK && pt_near_tie(&r, k, a->scale)) ok = 0;
            if (rc == VECIDX_OK && k < PT_KMAX)
                rc = pt_search(ix, &pt_specs[s], &al, q, k + 1, &r);
            if (rc == VECIDX_OK && pt_near_tie(&r, k + 1, a->scale)) ok = 0;
        }
        if (ok) a->nq++;
    }
    if (rc == VECIDX_OK && a->nq < PT_Q) {
        printf("portab: %s: only %zu queries without ties\n", f->name, a->nq);
        rc = VECIDX_ECORRUPT;
    }
    if (rc == VECIDX_OK) rc = pt_ask_searches(ix, &al, a);
    if (rc != VECIDX_OK) {
        pt_fail_vx("recording", f->name, rc, ix);
    } else {
        fprintf(o, "file %s\nstats", f->name);
        for (i = 0; i < PT_NSTATS; i++)
            fprintf(o, " %llu", (unsigned long long)a->stats[i]);
        fprintf(o, "\nscale");
        pt_print_floats(o, &a->scale, 1);
        fprintf(o, "\nkeys %zu\n", a->n);
        for (i = 0; i < a->n; i++) {
            fprintf(o, "v %llu", (unsigned long long)a->keys[i]);
            pt_print_floats(o, a->vecs + i * PT_DIM, PT_DIM);
            fputc('\n', o);
        }
        fprintf(o, "order");
        for (i = 0; i < a->n; i++)
            fprintf(o, " %llu", (unsigned long long)a->key_order[i]);
        fprintf(o, "\nabsent");
        for (i = 0; i < a->nabsent; i++)
            fprintf(o, " %llu", (unsigned long long)a->absent[i]);
        fprintf(o, "\nqueries %zu\n", a->nq);
        for (i = 0; i < a->nq; i++) {
            fprintf(o, "q");
            pt_print_floats(o, a->q[i], PT_DIM);
            fputc('\n', o);
        }
        for (s = 0; s < PT_NSPECS; s++)
            for (i = 0; i < a->nq; i++) {
                fprintf(o, "r %s %zu", pt_specs[s].name, i);
                pt_print_res(o, &a->res[s][i]);
            }
        for (i = 0; i < a->nq; i++) {
            fprintf(o, "b %zu", i);
            pt_print_res(o, &a->batch[i]);
        }
        fprintf(o, "end\n");
    }
    vecidx_close(ix);
    free(al.keys);
    pt_ans_free(a);
    free(a);
    return rc != VECIDX_OK;
}

static int pt_write(const char *dir)
{
    char path[1024];
    FILE *o;
    size_t i;
    int fails = 0;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return pt_fail_io("mkdir", dir);
    snprintf(path, sizeof path, "%s/answers.txt", dir);
    unlink(path);
    o = fopen(path, "w");
    if (!o) return pt_fail_io("create", path);
    fprintf(o, "portab kernel %s, %d-bit size_t\n", vecidx_simd(),
            (int)(8 * sizeof(size_t)));
    for (i = 0; i < PT_NFILES; i++) {
        uint64_t absent[PT_NABSENT];
        if (pt_build(dir, &pt_files[i], absent) != 0 ||
            pt_record(o, dir, &pt_files[i], absent) != 0)
            fails++;
    }
    if (fclose(o) != 0) return pt_fail_io("write", path);
    if (fails) unlink(path);
    printf("portab: %zu files %s in %s (kernel %s)\n", PT_NFILES,
           fails ? "NOT all written" : "and their answers written", dir,
           vecidx_simd());
    return fails != 0;
}

/* ---- check: reading the answers ------------------------------------------ */

typedef struct pt_reader {
    FILE *f;
    char *line;
    size_t cap;
    long lineno;
    const char *path;
    int bad;
} pt_reader;

/* The next line, its first word being `tag`; NULL (and bad set) if not. */
static char *pt_line(pt_reader *rd, const char *tag)
{
    size_t n = strlen(tag);
    if (rd->bad) return NULL;
    rd->lineno++;
    if (getline(&rd->line, &rd->cap, rd->f) < 0 ||
        strncmp(rd->line, tag, n) != 0 ||
        (rd->line[n] != ' ' && rd->line[n] != '\n')) {
        printf("portab: %s:%ld: expected a \"%s\" line\n", rd->path, rd->lineno,
               tag);
        rd->bad = 1;
        return NULL;
    }
    return rd->line + n;
}

static uint64_t pt_u64(pt_reader *rd, char **p)
{
    char *end;
    unsigned long long v;
    errno = 0;
    v = strtoull(*p, &end, 10);
    if (end == *p || errno != 0) {
        if (!rd->bad)
            printf("portab: %s:%ld: bad number\n", rd->path, rd->lineno);
        rd->bad = 1;
        return 0;
    }
    *p = end;
    return (uint64_t)v;
}

static float pt_hexf(pt_reader *rd, char **p)
{
    char *end;
    unsigned long b;
    uint32_t u;
    float v;
    b = strtoul(*p, &end, 16);
    if (end == *p) {
        if (!rd->bad)
            printf("portab: %s:%ld: bad float\n", rd->path, rd->lineno);
        rd->bad = 1;
        return 0;
    }
    *p = end;
    u = (uint32_t)b;
    memcpy(&v, &u, 4);
    return v;
}

static void pt_read_res(pt_reader *rd, char **p, pt_res *r, size_t k)
{
    size_t i;
    r->found = (size_t)pt_u64(rd, p);
    if (r->found > k) {
        rd->bad = 1;
        return;
    }
    for (i = 0; i < r->found && !rd->bad; i++) {
        r->keys[i] = pt_u64(rd, p);
        if (**p == ':') (*p)++;
        r->dists[i] = pt_hexf(rd, p);
    }
}

/* The answers of file f, which must come next. */
static int pt_read_ans(pt_reader *rd, const pt_file *f, pt_ans *a)
{
    char *p;
    size_t i, s;
    char name[64];
    if ((p = pt_line(rd, "file")) == NULL) return -1;
    if (sscanf(p, " %63s", name) != 1 || strcmp(name, f->name) != 0) {
        printf("portab: %s:%ld: expected file %s\n", rd->path, rd->lineno,
               f->name);
        return -1;
    }
    if ((p = pt_line(rd, "stats")) == NULL) return -1;
    for (i = 0; i < PT_NSTATS; i++) a->stats[i] = pt_u64(rd, &p);
    if ((p = pt_line(rd, "scale")) == NULL) return -1;
    a->scale = pt_hexf(rd, &p);
    if ((p = pt_line(rd, "keys")) == NULL) return -1;
    a->n = (size_t)pt_u64(rd, &p);
    if (rd->bad || a->n > 1000000) return -1;
    a->keys = malloc((a->n + 1) * sizeof *a->keys);
    a->key_order = malloc((a->n + 1) * sizeof *a->key_order);
    a->vecs = malloc((a->n + 1) * PT_DIM * sizeof *a->vecs);
    if (!a->keys || !a->key_order || !a->vecs) return -1;
    for (i = 0; i < a->n && (p = pt_line(rd, "v")) != NULL; i++) {
        size_t j;
        a->keys[i] = pt_u64(rd, &p);
        for (j = 0; j < PT_DIM; j++) a->vecs[i * PT_DIM + j] = pt_hexf(rd, &p);
    }
    if ((p = pt_line(rd, "order")) == NULL) return -1;
    for (i = 0; i < a->n; i++) a->key_order[i] = pt_u64(rd, &p);
    if ((p = pt_line(rd, "absent")) == NULL) return -1;
    for (i = 0; i < PT_NABSENT; i++) a->absent[i] = pt_u64(rd, &p);
    a->nabsent = PT_NABSENT;
    if ((p = pt_line(rd, "queries")) == NULL) return -1;
    a->nq = (size_t)pt_u64(rd, &p);
    if (a->nq > PT_Q) rd->bad = 1;
    for (i = 0; i < a->nq && (p = pt_line(rd, "q")) != NULL; i++) {
        size_t j;
        for (j = 0; j < PT_DIM; j++) a->q[i][j] = pt_hexf(rd, &p);
    }
    for (s = 0; s < PT_NSPECS; s++)
        for (i = 0; i < a->nq && (p = pt_line(rd, "r")) != NULL; i++) {
            char spec[32];
            int used = 0;
            if (sscanf(p, " %31s %*u%n", spec, &used) != 1 || used == 0 ||
                strcmp(spec, pt_specs[s].name) != 0) {
                printf("portab: %s:%ld: expected search %s\n", rd->path,
                       rd->lineno, pt_specs[s].name);
                return -1;
            }
            p += used;
            pt_read_res(rd, &p, &a->res[s][i], pt_specs[s].k);
        }
    for (i = 0; i < a->nq && (p = pt_line(rd, "b")) != NULL; i++) {
        pt_u64(rd, &p);
        pt_read_res(rd, &p, &a->batch[i], 10);
    }
    if (pt_line(rd, "end") == NULL) return -1;
    return rd->bad ? -1 : 0;
}

/* ---- check: comparing ---------------------------------------------------- */

typedef struct pt_tally {
    long dists, same_bits;
    double worst; /* largest |difference| / tolerance */
} pt_tally;

static pt_tally pt_t;
static long pt_fails_now;

static void pt_fail(const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

static void pt_fail(const char *fmt, ...)
{
    va_list ap;
    if (++pt_fails_now > PT_MAX_FAILS) return;
    printf("    ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    if (pt_fails_now == PT_MAX_FAILS) printf("    (more not printed)\n");
}

static void pt_cmp_res(const char *what, size_t qi, const pt_res *want,
                       const pt_res *got, float scale)
{
    size_t i;
    if (got->found != want->found) {
        pt_fail("%s query %zu: %zu results, recorded %zu", what, qi, got->found,
                want->found);
        return;
    }
    for (i = 0; i < want->found; i++) {
        double a = want->dists[i], b = got->dists[i];
        double tol = PT_TOL * (fabs(a) + scale), dev = fabs(a - b);
        if (got->keys[i] != want->keys[i]) {
            pt_fail("%s query %zu rank %zu: key %llu at %.9g, recorded key "
                    "%llu at %.9g",
                    what, qi, i, (unsigned long long)got->keys[i], b,
                    (unsigned long long)want->keys[i], a);
            return;
        }
        pt_t.dists++;
        pt_t.same_bits += memcmp(&want->dists[i], &got->dists[i], 4) == 0;
        if (dev / tol > pt_t.worst) pt_t.worst = dev / tol;
        if (!(dev <= tol))
            pt_fail("%s query %zu rank %zu (key %llu): distance %.9g, "
                    "recorded %.9g",
                    what, qi, i, (unsigned long long)want->keys[i], b, a);
    }
}

/* Ask ix everything want records and compare. */
static void pt_compare(vecidx *ix, const pt_ans *want)
{
    pt_ans *got = calloc(1, sizeof *got);
    pt_allow al = {NULL, 0, {0}};
    size_t i, s;
    int rc;
    float v[PT_DIM];
    if (!got || pt_allow_make(want, &al) != 0) {
        pt_fail("out of memory");
        free(got);
        return;
    }
    if ((rc = vecidx_check(ix)) != VECIDX_OK)
        pt_fail("vecidx_check: %s (%s)", vecidx_strerror(rc),
                vecidx_errmsg(ix));
    rc = pt_ask_contents(ix, got);
    if (rc != VECIDX_OK) {
        pt_fail("keys or vectors: %s (%s)", vecidx_strerror(rc),
                vecidx_errmsg(ix));
        goto out;
    }
    for (i = 0; i < PT_NSTATS; i++)
        if (got->stats[i] != want->stats[i])
            pt_fail("stats %s: %llu, recorded %llu", pt_stat_names[i],
                    (unsigned long long)got->stats[i],
                    (unsigned long long)want->stats[i]);
    if (got->n != want->n) {
        pt_fail("%zu keys, recorded %zu", got->n, want->n);
    } else {
        for (i = 0; i < want->n; i++) {
            if (got->keys[i] != want->keys[i]) {
                pt_fail("key %zu (sorted): %llu, recorded %llu", i,
                        (unsigned long long)got->keys[i],
                        (unsigned long long)want->keys[i]);
                break;
            }
            if (memcmp(got->vecs + i * PT_DIM, want->vecs + i * PT_DIM,
                       sizeof v) != 0)
                pt_fail("vecidx_get of key %llu differs from the recorded "
                        "vector",
                        (unsigned long long)want->keys[i]);
        }
        /* the order is unspecified: noted, not required */
        if (memcmp(got->key_order, want->key_order,
                   want->n * sizeof *want->key_order) != 0)
            printf("    note: vecidx_keys gives another order than "
                   "recorded\n");
    }
    for (i = 0; i < want->nabsent; i++) {
        uint64_t k = want->absent[i];
        if ((rc = vecidx_contains(ix, k)) != 0)
            pt_fail("contains(%llu) of an absent key: %d",
                    (unsigned long long)k, rc);
        if ((rc = vecidx_get(ix, k, v)) != VECIDX_ENOTFOUND)
            pt_fail("get(%llu) of an absent key: %s", (unsigned long long)k,
                    vecidx_strerror(rc));
    }
    if (vecidx_count(ix) != want->stats[3])
        pt_fail("vecidx_count %zu, recorded %llu", vecidx_count(ix),
                (unsigned long long)want->stats[3]);
    got->nq = want->nq;
    memcpy(got->q, want->q, sizeof got->q);
    if ((rc = pt_ask_searches(ix, &al, got)) != VECIDX_OK) {
        pt_fail("search: %s (%s)", vecidx_strerror(rc), vecidx_errmsg(ix));
        goto out;
    }
    for (s = 0; s < PT_NSPECS; s++)
        for (i = 0; i < want->nq; i++)
            pt_cmp_res(pt_specs[s].name, i, &want->res[s][i], &got->res[s][i],
                       want->scale);
    for (i = 0; i < want->nq; i++)
        pt_cmp_res("batch k10", i, &want->batch[i], &got->batch[i],
                   want->scale);
out:
    free(al.keys);
    pt_ans_free(got);
    free(got);
}

static int pt_copy(const char *from, const char *to)
{
    char buf[65536];
    FILE *i = fopen(from, "rb"), *o;
    size_t n;
    int ok = 1;
    if (!i) return -1;
    o = fopen(to, "wb");
    if (!o) {
        fclose(i);
        return -1;
    }
    while ((n = fread(buf, 1, sizeof buf, i)) > 0)
        if (fwrite(buf, 1, n, o) != n) ok = 0;
    if (ferror(i)) ok = 0;
    fclose(i);
    if (fclose(o) != 0) ok = 0;
    return ok ? 0 : -1;
}

static int pt_passed, pt_failed;
static pt_tally pt_before; /* pt_t when the check began */

static void pt_verdict(const char *name, const char *how)
{
    long n = pt_t.dists - pt_before.dists;
    long same = pt_t.same_bits - pt_before.same_bits;
    if (pt_fails_now)
        pt_failed++;
    else
        pt_passed++;
    printf("%s %s %s: %ld distances", pt_fails_now ? "FAIL" : "ok", name, how,
           n);
    if (same < n) printf(", %ld not bit for bit", n - same);
    printf("\n");
    pt_fails_now = 0;
    pt_before = pt_t;
}

/* Open path with flags and compare (a failed open is a failure). */
static void pt_check_open(const char *path, unsigned flags, const pt_ans *want,
                          vecidx **keep)
{
    vecidx *ix = NULL;
    int rc = vecidx_open(path, NULL, flags, &ix);
    if (rc != VECIDX_OK) {
        pt_fail("vecidx_open: %s (%s)", vecidx_strerror(rc),
                vecidx_errmsg(NULL));
        return;
    }
    pt_compare(ix, want);
    if (keep)
        *keep = ix;
    else
        vecidx_close(ix);
}

/* File f: read-only in place; writable on a copy (and its log); that copy
** checkpointed here, then read-only again. */
static void pt_check_file(const char *dir, const pt_file *f, const pt_ans *want)
{
    char path[1024], wal[1024], tmp[1024], cpath[1200], cwal[1200];
    vecidx *ix = NULL;
    int rc, checkpointed = 0;
    pt_path(path, sizeof path, dir, f->name, "");
    pt_path(wal, sizeof wal, dir, f->name, "-wal");
    pt_check_open(path, VECIDX_RDONLY, want, NULL);
    pt_verdict(f->name, "read-only");

    snprintf(tmp, sizeof tmp, "%s/rw-XXXXXX", dir);
    if (!mkdtemp(tmp)) {
        pt_fail("mkdtemp %s: %s", tmp, strerror(errno));
        pt_verdict(f->name, "writable copy");
        return;
    }
    snprintf(cpath, sizeof cpath, "%s/%s.vx", tmp, f->name);
    snprintf(cwal, sizeof cwal, "%s/%s.vx-wal", tmp, f->name);
    if (pt_copy(path, cpath) != 0 ||
        (access(wal, F_OK) == 0 && pt_copy(wal, cwal) != 0)) {
        pt_fail("copying %s: %s", path, strerror(errno));
    } else {
        pt_check_open(cpath, VECIDX_SYNC_OFF, want, &ix);
        if (ix && (rc = vecidx_checkpoint(ix)) != VECIDX_OK)
            pt_fail("vecidx_checkpoint: %s (%s)", vecidx_strerror(rc),
                    vecidx_errmsg(ix));
        else if (ix)
            checkpointed = 1;
        vecidx_close(ix);
    }
    pt_verdict(f->name, "writable copy");
    if (checkpointed) {
        pt_check_open(cpath, VECIDX_RDONLY, want, NULL);
        pt_verdict(f->name, "checkpointed here, read-only");
    }
    unlink(cwal);
    unlink(cpath);
    if (rmdir(tmp) != 0) printf("portab: rmdir %s: %s\n", tmp, strerror(errno));
}

static int pt_check(const char *dir)
{
    char path[1024];
    pt_reader rd;
    char *p;
    size_t i;
    memset(&rd, 0, sizeof rd);
    snprintf(path, sizeof path, "%s/answers.txt", dir);
    rd.path = path;
    rd.f = fopen(path, "r");
    if (!rd.f) return pt_fail_io("open", path);
    if ((p = pt_line(&rd, "portab")) != NULL) {
        p[strcspn(p, "\n")] = 0;
        printf("portab: checking %s, written by%s; read with kernel %s, "
               "%d-bit size_t\n",
               dir, p, vecidx_simd(), (int)(8 * sizeof(size_t)));
    }
    for (i = 0; i < PT_NFILES && !rd.bad; i++) {
        pt_ans *want = calloc(1, sizeof *want);
        if (!want || pt_read_ans(&rd, &pt_files[i], want) != 0) {
            pt_fail("%s: cannot read its answers", path);
            pt_verdict(pt_files[i].name, "answers");
        } else {
            pt_check_file(dir, &pt_files[i], want);
        }
        if (want) pt_ans_free(want);
        free(want);
    }
    fclose(rd.f);
    free(rd.line);
    printf("distances: %ld compared, %ld bit-identical, largest difference "
           "%.3g of the tolerance\n",
           pt_t.dists, pt_t.same_bits, pt_t.worst);
    printf("%d passed, %d failed\n", pt_passed, pt_failed);
    return pt_failed != 0 || pt_passed == 0;
}

/* ---- self: write and check in a temporary directory ---------------------- */

static int pt_rm_dir(const char *dir)
{
    char p[1024];
    size_t i;
    for (i = 0; i < PT_NFILES; i++) {
        pt_path(p, sizeof p, dir, pt_files[i].name, "");
        unlink(p);
        pt_path(p, sizeof p, dir, pt_files[i].name, "-wal");
        unlink(p);
    }
    snprintf(p, sizeof p, "%s/answers.txt", dir);
    unlink(p);
    return rmdir(dir);
}

static int pt_self(void)
{
    const char *t = getenv("TMPDIR");
    char dir[512];
    int rc;
    snprintf(dir, sizeof dir, "%s/portab-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(dir)) return pt_fail_io("mkdtemp", dir);
    rc = pt_write(dir);
    if (rc == 0)
        rc = pt_check(dir);
    else
        printf("0 passed, 1 failed\n");
    if (pt_rm_dir(dir) != 0)
        printf("portab: rmdir %s: %s\n", dir, strerror(errno));
    return rc;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[1], "write") == 0) return pt_write(argv[2]);
    if (argc == 3 && strcmp(argv[1], "check") == 0) return pt_check(argv[2]);
    if (argc == 2 && strcmp(argv[1], "self") == 0) return pt_self();
    fprintf(stderr,
            "usage: portab write DIR | portab check DIR | portab self\n");
    return 2;
}
