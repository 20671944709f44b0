/*
** sql_overhead.c -- the SQL path's own cost per KNN query of the vecidx
** SQLite extension, measured from C with one reused prepared statement.
**
**   bench/sqlite/sql_overhead EXT.so SETDIR [ROWS [QUERIES [EF]]]
**
** Builds the same HNSW index twice from the first ROWS vectors of
** SETDIR/base.fvecs (default 20000): once through SQL (INSERT into a
** vecidx virtual table, one transaction) and once directly with
** vecidx_add, both on one thread in the same order, so both graphs are
** the same (checked: every query must return the same keys). Then, in
** alternating passes, times QUERIES queries (default 2000, from
** query.fvecs, repeated as needed) through
**
**   SELECT rowid, distance FROM t WHERE embedding MATCH ?1 AND k = 10
**     AND ef = ?2
**
** (bind, step through the rows reading both columns, reset) and through
** vecidx_search on the direct index. The difference per query is what the
** SQL path adds. Prints one JSON line per pass and the median.
*/
#define _POSIX_C_SOURCE 200809L
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../vecidx.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Read up to max vectors of an .fvecs file; returns the count. */
static size_t read_fvecs(const char *path, size_t max, int *dim, float **out)
{
    FILE *f = fopen(path, "rb");
    size_t n = 0, cap = 0;
    float *v = NULL;
    int d;
    if (!f) return 0;
    while (n < max && fread(&d, 4, 1, f) == 1) {
        if (n == cap) {
            float *nv;
            cap = cap ? cap * 2 : 1024;
            nv = realloc(v, cap * (size_t)d * sizeof(float));
            if (!nv) break;
            v = nv;
        }
        if (fread(v + n * (size_t)d, sizeof(float), (size_t)d, f) != (size_t)d)
            break;
        n++;
        *dim = d;
    }
    fclose(f);
    *out = v;
    return n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    size_t rows = 20000, nq = 2000, nqv, i, pass;
    int dim = 0, qdim = 0, ef = 32, rc, metric_cos = 0;
    float *base = NULL, *qs = NULL;
    char path[4096], metric[16] = "l2", sql[512];
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL, *knn = NULL;
    vecidx *ix = NULL;
    vecidx_params p;
    double t, diffs[5];
    char *err = NULL;
    FILE *mf;

    if (argc < 3) {
        fprintf(stderr, "usage: %s EXT.so SETDIR [ROWS [QUERIES [EF]]]\n",
                argv[0]);
        return 2;
    }
    if (argc > 3) rows = (size_t)strtoull(argv[3], NULL, 10);
    if (argc > 4) nq = (size_t)strtoull(argv[4], NULL, 10);
    if (argc > 5) ef = atoi(argv[5]);
    snprintf(path, sizeof(path), "%s/metric", argv[2]);
    if ((mf = fopen(path, "r")) != NULL) {
        if (fscanf(mf, "%15s", metric) != 1) strcpy(metric, "l2");
        fclose(mf);
    }
    metric_cos = strcmp(metric, "cos") == 0;
    snprintf(path, sizeof(path), "%s/base.fvecs", argv[2]);
    rows = read_fvecs(path, rows, &dim, &base);
    snprintf(path, sizeof(path), "%s/query.fvecs", argv[2]);
    nqv = read_fvecs(path, nq, &qdim, &qs);
    if (rows == 0 || nqv == 0 || dim != qdim) {
        fprintf(stderr, "cannot read %s\n", argv[2]);
        return 1;
    }

    /* Through SQL. */
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) return 1;
    sqlite3_enable_load_extension(db, 1);
    if (sqlite3_load_extension(db, argv[1], "sqlite3_vecidx_init", &err)) {
        fprintf(stderr, "load: %s\n", err);
        return 1;
    }
    snprintf(sql, sizeof(sql),
             "CREATE VIRTUAL TABLE t USING vecidx(dim=%d, metric=%s, "
             "kind=hnsw, M=16, ef_construction=200, threads=1)",
             dim, metric);
    rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    if (rc == SQLITE_OK) rc = sqlite3_exec(db, "BEGIN", NULL, NULL, &err);
    if (rc != SQLITE_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    sqlite3_prepare_v2(db, "INSERT INTO t(rowid, embedding) VALUES (?1, ?2)",
                       -1, &ins, NULL);
    t = now();
    for (i = 0; i < rows; i++) {
        sqlite3_bind_int64(ins, 1, (sqlite3_int64)i);
        sqlite3_bind_blob(ins, 2, base + i * (size_t)dim,
                          dim * (int)sizeof(float), SQLITE_STATIC);
        if (sqlite3_step(ins) != SQLITE_DONE) {
            fprintf(stderr, "insert: %s\n", sqlite3_errmsg(db));
            return 1;
        }
        sqlite3_reset(ins);
    }
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    printf("{\"op\": \"sql_insert\", \"rows\": %zu, \"seconds\": %.2f}\n", rows,
           now() - t);

    /* Directly, same parameters, same order, one thread. */
    vecidx_params_init(&p, VECIDX_HNSW, metric_cos ? VECIDX_COSINE : VECIDX_L2,
                       (uint32_t)dim);
    p.hnsw_m = 16;
    p.hnsw_ef_construction = 200;
    p.threads = 1;
    if (vecidx_create(&p, &ix) != VECIDX_OK) return 1;
    t = now();
    for (i = 0; i < rows; i++)
        if (vecidx_add(ix, i, base + i * (size_t)dim) != VECIDX_OK) return 1;
    printf("{\"op\": \"direct_insert\", \"rows\": %zu, \"seconds\": %.2f}\n",
           rows, now() - t);

    sqlite3_prepare_v2(db,
                       "SELECT rowid, distance FROM t WHERE embedding "
                       "MATCH ?1 AND k = 10 AND ef = ?2",
                       -1, &knn, NULL);
    sqlite3_bind_int(knn, 2, ef);
    /* Same graph: same answers. */
    for (i = 0; i < nq; i++) {
        const float *q = qs + (i % nqv) * (size_t)dim;
        uint64_t keys[10];
        size_t found, j = 0;
        vecidx_search_opts o = {0};
        o.ef = (uint32_t)ef;
        vecidx_search(ix, q, 10, &o, keys, NULL, &found);
        sqlite3_bind_blob(knn, 1, q, dim * (int)sizeof(float), SQLITE_STATIC);
        while (sqlite3_step(knn) == SQLITE_ROW) {
            if (j >= found ||
                (uint64_t)sqlite3_column_int64(knn, 0) != keys[j]) {
                fprintf(stderr, "query %zu: SQL and direct results differ\n",
                        i);
                return 1;
            }
            j++;
        }
        sqlite3_reset(knn);
        if (j != found) {
            fprintf(stderr, "query %zu: %zu SQL rows, %zu direct\n", i, j,
                    found);
            return 1;
        }
    }

    for (pass = 0; pass < 5; pass++) {
        double t_sql, t_dir;
        volatile double sink = 0;
        t = now();
        for (i = 0; i < nq; i++) {
            sqlite3_bind_blob(knn, 1, qs + (i % nqv) * (size_t)dim,
                              dim * (int)sizeof(float), SQLITE_STATIC);
            while (sqlite3_step(knn) == SQLITE_ROW)
                sink += (double)sqlite3_column_int64(knn, 0) +
                        sqlite3_column_double(knn, 1);
            sqlite3_reset(knn);
        }
        t_sql = (now() - t) / (double)nq;
        t = now();
        for (i = 0; i < nq; i++) {
            uint64_t keys[10];
            float dists[10];
            size_t found, j;
            vecidx_search_opts o = {0};
            o.ef = (uint32_t)ef;
            vecidx_search(ix, qs + (i % nqv) * (size_t)dim, 10, &o, keys, dists,
                          &found);
            for (j = 0; j < found; j++) sink += (double)keys[j] + dists[j];
        }
        t_dir = (now() - t) / (double)nq;
        diffs[pass] = t_sql - t_dir;
        printf("{\"op\": \"pass\", \"pass\": %zu, \"ef\": %d, \"sql_us\": "
               "%.2f, \"direct_us\": %.2f, \"overhead_us\": %.2f}\n",
               pass, ef, t_sql * 1e6, t_dir * 1e6, diffs[pass] * 1e6);
        (void)sink;
    }
    qsort(diffs, 5, sizeof(double), cmp_double);
    printf("{\"op\": \"overhead\", \"rows\": %zu, \"dim\": %d, \"ef\": %d, "
           "\"median_us\": %.2f, \"min_us\": %.2f, \"simd\": \"%s\", "
           "\"sqlite\": \"%s\"}\n",
           rows, dim, ef, diffs[2] * 1e6, diffs[0] * 1e6, vecidx_simd(),
           sqlite3_libversion());
    sqlite3_finalize(ins);
    sqlite3_finalize(knn);
    sqlite3_close(db);
    vecidx_close(ix);
    free(base);
    free(qs);
    return 0;
}
