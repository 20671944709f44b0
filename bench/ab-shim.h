/*
** bench/ab-shim.h -- the few plain functions through which bench/vecidx-ab
** drives two builds of vecidx.c in one program. bench/ab-shim.c is
** compiled twice, each time against one version's vecidx.h and linked with
** that version's vecidx.c; bench/ab-build.sh then hides every other global
** symbol of the pair (objcopy -G), so the two copies of vecidx_* never
** meet. This header is all the benchmark sees: it does not include
** vecidx.h, so only ab-shim.c depends on either version's API.
*/
#ifndef VECIDX_BENCH_AB_SHIM_H
#define VECIDX_BENCH_AB_SHIM_H

#include <stddef.h>
#include <stdint.h>

/* What to build: HNSW (or flat) over n rows of base under keys. */
typedef struct ab_build {
    int kind;   /* 1 flat, 2 hnsw (the values of VECIDX_FLAT/HNSW) */
    int metric; /* 1 l2, 2 ip, 3 cos (VECIDX_L2/IP/COSINE) */
    uint32_t dim;
    uint32_t M, ef_construction;
    uint32_t threads;
    uint32_t storage; /* VECIDX_STORE_* */
    uint32_t keep;    /* keep_vectors */
    uint32_t refine;  /* re-rank factor of every search, 0 = default */
    uint64_t seed;
    size_t n;
    const uint64_t *keys;
    const float *base;
} ab_build;

/* The modes of P##open (not vecidx's flag values, which ab-shim.c maps
** them to: this header does not see vecidx.h). */
#define AB_OPEN_RDONLY 0  /* VECIDX_RDONLY: a reader */
#define AB_OPEN_PRIVATE 1 /* VECIDX_PRIVATE: a private, writable copy */

/* One side's functions, declared for both prefixes. build returns NULL
** on failure, with the reason in err. search returns 0 or the library's
** negative code, with *found the results written to keys. save is
** vecidx_save (0 or the negative code; errmsg(h) tells why). open is
** vecidx_open(path, NULL, flags): mode AB_OPEN_RDONLY (VECIDX_RDONLY) or
** AB_OPEN_PRIVATE (VECIDX_PRIVATE, a private writable copy); NULL on
** failure, with the reason in err. */
#define AB_SHIM_DECLARE(P)                                              \
    void *P##build(const ab_build *b, char *err, size_t errsz);         \
    int P##search(void *h, const float *q, size_t k, uint32_t ef,       \
                  uint64_t *keys, size_t *found);                       \
    void P##close(void *h);                                             \
    int P##save(void *h, const char *path);                             \
    void *P##open(const char *path, int mode, char *err, size_t errsz); \
    uint64_t P##memory(void *h);                                        \
    const char *P##errmsg(void *h);                                     \
    const char *P##version(void);                                       \
    const char *P##simd(void);                                          \
    const char *P##rev(void);

AB_SHIM_DECLARE(ab_old_)
AB_SHIM_DECLARE(ab_new_)

#endif /* VECIDX_BENCH_AB_SHIM_H */
