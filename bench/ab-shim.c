/*
** bench/ab-shim.c -- one side of bench/vecidx-ab (see ab-shim.h). Built
** by bench/ab-build.sh with -DAB_SIDE=old or new and the include path of
** that side's vecidx.h, and -DAB_REV="..." naming its source. Not a
** program of its own: the Makefile leaves it out of the bench programs.
*/
#include <stdio.h>
#include <string.h>

#include "ab-shim.h"
#include "vecidx.h" /* the side's own header: first in the include path */

#ifndef AB_SIDE
#error "compile with -DAB_SIDE=old or -DAB_SIDE=new"
#endif
#ifndef AB_REV
#define AB_REV "unknown"
#endif

#define AB_CAT3(a, b, c) a##b##c
#define AB_XCAT3(a, b, c) AB_CAT3(a, b, c)
#define AB_FN(name) AB_XCAT3(ab_, AB_SIDE, _##name)

void *AB_FN(build)(const ab_build *b, char *err, size_t errsz)
{
    vecidx_params p;
    vecidx *ix = NULL;
    int rc = vecidx_params_init(&p, b->kind, b->metric, b->dim);
    if (rc == VECIDX_OK) {
        p.capacity = (uint32_t)b->n;
        p.seed = b->seed;
        p.threads = b->threads;
        p.hnsw_m = b->M;
        p.hnsw_ef_construction = b->ef_construction;
        p.storage = b->storage;
        p.keep_vectors = b->keep;
        p.refine = b->refine;
        rc = vecidx_create(&p, &ix);
    }
    if (rc == VECIDX_OK) rc = vecidx_add_batch(ix, b->n, b->keys, b->base);
    if (rc != VECIDX_OK) {
        snprintf(err, errsz, "%s: %s", vecidx_strerror(rc), vecidx_errmsg(ix));
        vecidx_close(ix);
        return NULL;
    }
    return ix;
}

int AB_FN(search)(void *h, const float *q, size_t k, uint32_t ef,
                  uint64_t *keys, size_t *found)
{
    vecidx_search_opts so;
    memset(&so, 0, sizeof so);
    so.ef = ef;
    return vecidx_search((vecidx *)h, q, k, &so, keys, NULL, found);
}

void AB_FN(close)(void *h)
{
    vecidx_close((vecidx *)h);
}

int AB_FN(save)(void *h, const char *path)
{
    return vecidx_save((vecidx *)h, path);
}

void *AB_FN(open)(const char *path, int mode, char *err, size_t errsz)
{
    vecidx *ix = NULL;
    unsigned flags;
    int rc;
    if (mode == AB_OPEN_RDONLY)
        flags = VECIDX_RDONLY;
    else if (mode == AB_OPEN_PRIVATE)
        flags = VECIDX_PRIVATE;
    else {
        snprintf(err, errsz, "unknown open mode %d", mode);
        return NULL;
    }
    rc = vecidx_open(path, NULL, flags, &ix);
    if (rc != VECIDX_OK) {
        snprintf(err, errsz, "%s: %s", vecidx_strerror(rc),
                 vecidx_errmsg(NULL));
        vecidx_close(ix); /* NULL after a failure; a no-op */
        return NULL;
    }
    return ix;
}

uint64_t AB_FN(memory)(void *h)
{
    vecidx_stats_t st;
    return vecidx_stats((vecidx *)h, &st) == VECIDX_OK ? st.memory_bytes : 0;
}

const char *AB_FN(errmsg)(void *h)
{
    return vecidx_errmsg((const vecidx *)h);
}

const char *AB_FN(version)(void)
{
    return vecidx_version();
}

const char *AB_FN(simd)(void)
{
    return vecidx_simd();
}

const char *AB_FN(rev)(void)
{
    return AB_REV;
}
