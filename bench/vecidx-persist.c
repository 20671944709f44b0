/* Persistence benchmarks: durable insert throughput per sync mode, log
** recovery time, and open time + first-query latency of a saved index.
** Prints one JSON object per line, like vecidx-bench.
**
**   bench/vecidx-persist --dir /tmp/vx-persist [--dim 128] [--n 20000]
**   bench/vecidx-persist --dir /tmp/vx-persist --base F.fvecs --index hnsw
**
** Files go to --dir (use a real disk, not tmpfs: fsync is what is being
** measured). Open time against hnswlib's loadIndex, in one run:
** bench/persist-compare.cpp. */
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vecidx.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void die(const char *what, int rc, vecidx *ix)
{
    fprintf(stderr, "vecidx-persist: %s: %s: %s\n", what, vecidx_strerror(rc),
            vecidx_errmsg(ix));
    exit(1);
}

static void remove_index(const char *path)
{
    char wal[4200];
    snprintf(wal, sizeof wal, "%s-wal", path);
    unlink(path);
    unlink(wal);
}

static float *random_vectors(size_t n, unsigned dim)
{
    float *v = malloc(n * dim * sizeof *v);
    uint64_t x = 88172645463325252ull;
    size_t i;
    if (!v) exit(1);
    for (i = 0; i < n * dim; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v[i] = (float)(x >> 40) / (float)(1 << 24) - 0.5f;
    }
    return v;
}

/* Inserts one at a time into a writable file-backed flat index. */
static void bench_sync(const char *dir, unsigned dim, size_t n, unsigned mode,
                       const char *name, const float *v)
{
    char path[4096];
    vecidx_params p;
    vecidx *ix;
    size_t i;
    double t0, t;
    int rc;
    snprintf(path, sizeof path, "%s/sync-%s.vx", dir, name);
    remove_index(path);
    vecidx_params_init(&p, VECIDX_FLAT, VECIDX_L2, dim);
    if ((rc = vecidx_open(path, &p, VECIDX_CREATE | mode, &ix)) != 0)
        die("open", rc, NULL);
    t0 = now();
    for (i = 0; i < n; i++)
        if ((rc = vecidx_add(ix, i, v + i * dim)) != 0) die("add", rc, ix);
    if ((rc = vecidx_sync(ix)) != 0) die("sync", rc, ix);
    t = now() - t0;
    vecidx_close(ix);
    printf("{\"bench\":\"durable_insert\",\"lib\":\"vecidx\",\"sync\":\"%s\","
           "\"dim\":%u,\"n\":%zu,\"seconds\":%.3f,\"vectors_per_s\":%.1f}\n",
           name, dim, n, t, (double)n / t);
    /* recovery: reopen replays the whole log */
    t0 = now();
    if ((rc = vecidx_open(path, NULL, VECIDX_RDONLY, &ix)) != 0)
        die("reopen", rc, NULL);
    t = now() - t0;
    if (vecidx_count(ix) != n) die("recovered count", VECIDX_ECORRUPT, ix);
    vecidx_close(ix);
    printf("{\"bench\":\"recovery\",\"lib\":\"vecidx\",\"sync\":\"%s\","
           "\"records\":%zu,\"seconds\":%.4f,\"s_per_100k_records\":%.4f}\n",
           name, n, t, t * 100000.0 / (double)n);
    remove_index(path);
}

static float *read_fvecs(const char *path, unsigned *dim, size_t *n)
{
    FILE *f = fopen(path, "rb");
    int32_t d;
    long sz;
    float *v;
    size_t i;
    if (!f || fread(&d, 4, 1, f) != 1 || d <= 0) {
        fprintf(stderr, "vecidx-persist: cannot read %s\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    *dim = (unsigned)d;
    *n = (size_t)sz / (4 + 4 * (size_t)d);
    if (!(v = malloc(*n * *dim * sizeof *v))) exit(1);
    for (i = 0; i < *n; i++)
        if (fread(&d, 4, 1, f) != 1 ||
            fread(v + i * *dim, 4, *dim, f) != *dim) {
            fprintf(stderr, "vecidx-persist: short read in %s\n", path);
            exit(1);
        }
    fclose(f);
    return v;
}

/* Build from --base, save, then time open and the first query. */
static void bench_open(const char *dir, const char *base, int kind)
{
    char path[4096];
    vecidx_params p;
    vecidx *ix;
    uint64_t *keys, rk[10];
    unsigned dim;
    size_t n, i, found;
    float *v = read_fvecs(base, &dim, &n);
    double t0, t_open, t_q, t_save;
    int rc;
    snprintf(path, sizeof path, "%s/open.vx", dir);
    remove_index(path);
    vecidx_params_init(&p, kind, VECIDX_L2, dim);
    if ((rc = vecidx_create(&p, &ix)) != 0) die("create", rc, NULL);
    if (!(keys = malloc(n * sizeof *keys))) exit(1);
    for (i = 0; i < n; i++) keys[i] = i;
    if ((rc = vecidx_add_batch(ix, n, keys, v)) != 0) die("build", rc, ix);
    t0 = now();
    if ((rc = vecidx_save(ix, path)) != 0) die("save", rc, ix);
    t_save = now() - t0;
    vecidx_close(ix);
    t0 = now();
    if ((rc = vecidx_open(path, NULL, VECIDX_RDONLY, &ix)) != 0)
        die("open", rc, NULL);
    t_open = now() - t0;
    t0 = now();
    if ((rc = vecidx_search(ix, v + 7 * dim, 10, NULL, rk, NULL, &found)) != 0)
        die("search", rc, ix);
    t_q = now() - t0;
    printf("{\"bench\":\"open\",\"lib\":\"vecidx\",\"index\":\"%s\",\"n\":%zu,"
           "\"dim\":%u,\"save_s\":%.3f,\"open_ms\":%.2f,"
           "\"first_query_ms\":%.3f,\"first_hit_is_self\":%s}\n",
           kind == VECIDX_HNSW ? "hnsw" : "flat", n, dim, t_save, t_open * 1e3,
           t_q * 1e3, found && rk[0] == 7 ? "true" : "false");
    vecidx_close(ix);
    remove_index(path);
    free(keys);
    free(v);
}

int main(int argc, char **argv)
{
    const char *dir = "/tmp", *base = NULL;
    unsigned dim = 128;
    size_t n = 20000;
    int i, kind = VECIDX_HNSW;
    float *v;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--dim") && i + 1 < argc)
            dim = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--n") && i + 1 < argc)
            n = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--base") && i + 1 < argc)
            base = argv[++i];
        else if (!strcmp(argv[i], "--index") && i + 1 < argc)
            kind = !strcmp(argv[++i], "flat") ? VECIDX_FLAT : VECIDX_HNSW;
        else {
            fprintf(stderr, "usage: vecidx-persist [--dir D] [--dim N] [--n N] "
                            "[--base F.fvecs --index flat|hnsw]\n");
            return 2;
        }
    }
    if (base) {
        bench_open(dir, base, kind);
        return 0;
    }
    v = random_vectors(n, dim);
    bench_sync(dir, dim, n / 10, VECIDX_SYNC_FULL, "full", v);
    bench_sync(dir, dim, n, VECIDX_SYNC_NORMAL, "normal", v);
    bench_sync(dir, dim, n, VECIDX_SYNC_OFF, "off", v);
    free(v);
    return 0;
}
