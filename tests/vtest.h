/*
** vtest.h -- the test framework and shared helpers of tests/vecidx_test.
**
** All the .c files of tests/ build into one binary (see the Makefile). Exactly
*one
** of them, test_internal.c, includes ../vecidx.c to reach static internals
** and thereby provides every public symbol; the others use only vecidx.h.
**
** A test is a `void test_NAME(void)` listed in VT_TESTS below; main.c runs
** them in that order. CHECK* macros record a failure with file:line and a
** message and let the test go on. Each test prints `ok NAME` or
** `FAIL NAME`; the last line is `N passed, N failed`; the exit code is 1 if
** any test failed. `tests/vecidx_test WORD` runs only the tests whose name
** contains WORD (e.g. `concurrency`, run under ThreadSanitizer).
**
** Rules for tests: fixed seeds, the vt_rng generator (never rand()), small
** data (the suite runs under ASan and under qemu for 32-bit ARM), bounded
** loops counted in operations, never in wall-clock time.
*/
#ifndef VTEST_H
#define VTEST_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "vecidx.h"

/* ---- the test list ---------------------------------------------------- */

#define VT_TESTS(X)                          \
    X(library_version_and_simd)              \
    X(strerror_codes)                        \
    X(kernels_exact_integers)                \
    X(kernels_vs_reference)                  \
    X(kernels_many_match_single)             \
    X(kernels_quantized)                     \
    X(store_i8_query_error)                  \
    X(store_i8_floor)                        \
    X(flat_exact_l2)                         \
    X(flat_exact_ip)                         \
    X(flat_exact_cosine)                     \
    X(flat_k_edge_cases)                     \
    X(flat_ties_broken_by_key)               \
    X(flat_extreme_keys)                     \
    X(flat_filter)                           \
    X(flat_deletes)                          \
    X(flat_upsert)                           \
    X(flat_cosine_stores_vectors_as_given)   \
    X(cosine_far_norms)                      \
    X(cosine_long_refused)                   \
    X(flat_reserve)                          \
    X(flat_determinism)                      \
    X(batch_add)                             \
    X(batch_add_all_or_nothing)              \
    X(batch_search_matches_single)           \
    X(batch_query_anywhere)                  \
    X(errors_create)                         \
    X(errors_null_arguments)                 \
    X(errors_bad_vectors)                    \
    X(errors_keys)                           \
    X(errors_message_per_thread_and_handle)  \
    X(alloc_failure_flat)                    \
    X(alloc_failure_flat_persistent)         \
    X(alloc_failure_hnsw)                    \
    X(alloc_failure_storage)                 \
    X(alloc_failure_ivfpq)                   \
    X(alloc_failure_file)                    \
    X(alloc_failure_open)                    \
    X(alloc_accounting)                      \
    X(hnsw_recall)                           \
    X(hnsw_deletes_recall)                   \
    X(hnsw_determinism)                      \
    X(hnsw_cosine_far_norms)                 \
    X(concurrency_flat_search_while_writing) \
    X(concurrency_flat_batch_while_writing)  \
    X(concurrency_flat_scan_while_appending) \
    X(concurrency_hnsw_search_while_writing) \
    X(concurrency_upsert_keeps_key)          \
    X(concurrency_two_saves_one_path)        \
    X(concurrency_readers_only)              \
    X(concurrency_file_stress_hnsw)          \
    X(concurrency_file_stress_flat_ivfpq)    \
    X(kernels_dot_panels)                    \
    X(kernels_adc)                           \
    X(kernels_nearest)                       \
    X(ivfpq_recall_l2)                       \
    X(ivfpq_recall_ip)                       \
    X(ivfpq_recall_cosine)                   \
    X(ivfpq_filter)                          \
    X(ivfpq_remove_upsert)                   \
    X(ivfpq_untrained_buffer)                \
    X(ivfpq_untrained_thresholds)            \
    X(ivfpq_train_absorbs_buffer)            \
    X(ivfpq_determinism)                     \
    X(ivfpq_degenerate_training)             \
    X(ivfpq_params)                          \
    X(ivfpq_progress)                        \
    X(ivfpq_persist_readonly)                \
    X(ivfpq_persist_writable)                \
    X(ivfpq_corrupt_file)                    \
    X(ivfpq_hnsw_quantizer)                  \
    X(ivfpq_search_edges)                    \
    X(ivfpq_concurrency_search_writing)      \
    X(ivfpq_few_distinct_points)             \
    X(ivfpq_hnsw_quantizer_threads)          \
    X(store_huge_blocks)                     \
    X(store_line_aligned_records)            \
    X(store_kept_vectors_apart)              \
    X(ivf_map_cells)                         \
    X(store_kept_pread)                      \
    X(store_file_huge_advice)                \
    X(wal_read_faults)                       \
    X(wal_fsync_failure)                     \
    X(wal_checkpoint_dir_sync)               \
    X(file_damage_readers)                   \
    X(file_damage_log_readers)               \
    X(concurrency_readers_verify)            \
    X(file_private_copy)                     \
    X(snapshot_key_map_copy_on_write)        \
    X(storage_recall)                        \
    X(storage_refused)                       \
    X(storage_log_replay)                    \
    X(storage_churn)                         \
    X(hnsw_recall_vs_flat)                   \
    X(hnsw_recall_long_vectors)              \
    X(hnsw_churn)                            \
    X(hnsw_churn_cos)                        \
    X(hnsw_churn_ip)                         \
    X(hnsw_removals_ip)                      \
    X(hnsw_upsert_replaces)                  \
    X(hnsw_remove_then_search)               \
    X(hnsw_filter_selectivity)               \
    X(hnsw_same_seed_same_results)           \
    X(hnsw_parallel_build)                   \
    X(hnsw_bad_params)                       \
    X(hnsw_alloc_failure)                    \
    X(concurrency_hnsw_readers_and_writer)   \
    X(concurrency_hnsw_insert_lists_first)   \
    X(filter_flat)                           \
    X(filter_hnsw)                           \
    X(filter_hnsw_far_early)                 \
    X(filter_hnsw_far_seeds)                 \
    X(filter_callback_estimate)              \
    X(filter_sample_low)                     \
    X(ivf_rank_again)                        \
    X(filter_hnsw_int8)                      \
    X(filter_hnsw_int8_kept)                 \
    X(filter_ivfpq)                          \
    X(filter_ivfpq_rerank)                   \
    X(filter_ivfpq_admitted_only)            \
    X(filter_ivfpq_far_thin)                 \
    X(filter_ivfpq_clusters)                 \
    X(filter_ivfpq_all_admitted)             \
    X(filter_intersection)                   \
    X(filter_duplicates_and_removed)         \
    X(filter_empty_and_bounds)               \
    X(filter_dense_key_array)                \
    X(filter_sorted_keys_membership)         \
    X(filter_bad_arguments)                  \
    X(filter_batch_matches_single)           \
    X(filter_file)                           \
    X(stats_histogram)                       \
    X(stats_list_median)                     \
    X(stats_counters_flat)                   \
    X(stats_counters_hnsw)                   \
    X(stats_counters_ivfpq)                  \
    X(stats_memory_parts)                    \
    X(stats_log_and_checkpoint)              \
    X(stats_size_contract)                   \
    X(stats_buried_and_repairs)              \
    X(recall_estimate)                       \
    X(recall_tune_hnsw)                      \
    X(recall_tune_ivfpq)                     \
    X(recall_tune_file_and_errors)

#define VT_DECLARE(name) void test_##name(void);
VT_TESTS(VT_DECLARE)
#undef VT_DECLARE

/* ---- checks ------------------------------------------------------------- */

#if defined(__GNUC__) || defined(__clang__)
#define VT_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define VT_PRINTF(a, b)
#endif

/* Record a failure of the running test (thread-safe: concurrency tests call
** it from worker threads). */
void vt_fail(const char *file, int line, const char *fmt, ...) VT_PRINTF(3, 4);

/* Failures recorded so far in the running test. */
long vt_failures(void);

#define CHECK(cond)                                            \
    do {                                                       \
        if (!(cond)) vt_fail(__FILE__, __LINE__, "%s", #cond); \
    } while (0)

/* CHECKF(cond, "format", args...): a failure message with values. */
#define CHECKF(cond, ...)                                      \
    do {                                                       \
        if (!(cond)) vt_fail(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

/* The call must return `want`; the message shows what came back and the
** library's detail message for this thread. */
#define CHECK_RC(call, want)                                                  \
    do {                                                                      \
        int vt_rc_ = (call), vt_want_ = (want);                               \
        if (vt_rc_ != vt_want_)                                               \
            vt_fail(__FILE__, __LINE__,                                       \
                    "%s returned %d (%s: %s), wanted %d (%s)", #call, vt_rc_, \
                    vecidx_strerror(vt_rc_), vecidx_errmsg(NULL), vt_want_,   \
                    vecidx_strerror(vt_want_));                               \
    } while (0)

#define CHECK_OK(call) CHECK_RC(call, VECIDX_OK)

#define CHECK_EQ_U64(a, b)                                                \
    do {                                                                  \
        unsigned long long vt_a_ = (unsigned long long)(a);               \
        unsigned long long vt_b_ = (unsigned long long)(b);               \
        if (vt_a_ != vt_b_)                                               \
            vt_fail(__FILE__, __LINE__, "%s == %s: %llu != %llu", #a, #b, \
                    vt_a_, vt_b_);                                        \
    } while (0)

/* ---- helpers (util.c) ------------------------------------------------- */

/* splitmix64: tiny, fast, every seed is fine. */
typedef struct vt_rng {
    uint64_t s;
} vt_rng;

uint64_t vt_next(vt_rng *r);
uint64_t vt_below(vt_rng *r, uint64_t n); /* uniform in [0, n), n > 0 */
double vt_unit(vt_rng *r);                /* uniform in [0, 1) */
float vt_uniform(vt_rng *r, float lo, float hi);
/* n floats in [lo, hi) */
void vt_fill_uniform(vt_rng *r, float *v, size_t n, float lo, float hi);
/* n floats of random sign with magnitudes spread over 2^-6 .. 2^7 */
void vt_fill_mixed(vt_rng *r, float *v, size_t n);
/* rows x dim floats around `centres` random centres, like embeddings */
void vt_fill_clustered(vt_rng *r, float *v, size_t rows, uint32_t dim,
                       unsigned centres);
/* A deterministic pseudo-random vector for (key, version): the same
** arguments always give the same vector, on every platform. */
void vt_vector_for(uint64_t key, uint64_t version, float *v, uint32_t dim);

void *vt_xmalloc(size_t n); /* zeroed; aborts the run if out of memory */
/* A whole file read into memory (see util.c); NULL if it is absent. */
unsigned char *vt_slurp(const char *path, size_t *len);
void vt_tmp_name(char *buf, size_t size, const char *name, const char *end);
int vt_tmp_dir(char *buf, size_t size, const char *name);

/* Monotonic seconds, for the optional per-test timing only. */
double vt_seconds(void);

/* Create an index or record a failure and return NULL. threads: 0 keeps
** the default. */
vecidx *vt_create(int kind, int metric, uint32_t dim, uint32_t threads);

/* ---- the reference model: brute force in double precision -------------- */

/* What an index should hold: key -> vector, with room for removals. */
typedef struct vt_set {
    uint32_t dim;
    size_t n, cap; /* rows used (live or dead), rows allocated */
    uint64_t *keys;
    float *vecs;
    unsigned char *live;
} vt_set;

void vt_set_init(vt_set *s, uint32_t dim, size_t cap);
void vt_set_free(vt_set *s);
/* Row of a live key, or -1. Linear: models are small. */
long vt_set_find(const vt_set *s, uint64_t key);
/* Row of key whether live or removed, or -1 if never put. */
long vt_set_row(const vt_set *s, uint64_t key);
/* Insert or replace key's vector in the model. */
void vt_set_put(vt_set *s, uint64_t key, const float *v);
/* Remove key from the model; returns 1 if it was there. */
int vt_set_del(vt_set *s, uint64_t key);
size_t vt_set_count(const vt_set *s);

typedef int (*vt_filter_fn)(uint64_t key, void *ctx);

/* Distance under metric in double precision, as vecidx.h defines it, and
** a bound `tol` on the error a correct float implementation may make:
** 1e-5 of the sum of absolute terms (the float rounding bound for the
** dimensions the index tests use is ~d/8 * 2^-24 of it, well below). */
double vt_ref_dist(int metric, const float *a, const float *b, uint32_t dim,
                   double *tol);

typedef struct vt_hit {
    uint64_t key;
    double d, tol;
} vt_hit;

/* Exact top k of the live, admitted vectors of s for query q, sorted by
** (distance, key); returns the number written to out (room for k). */
size_t vt_ref_topk(const vt_set *s, int metric, const float *q, size_t k,
                   vt_filter_fn filter, void *ctx, vt_hit *out);

/* Check one search result against the model: found = min(k, admitted),
** sorted closest first with ties by key, every key live and admitted and
** distinct, each distance within tolerance of the reference distance of
** its key and of the reference at that rank, every key clearly inside the
** true top k present, and the entries from found to k-1 padded with
** UINT64_MAX / +infinity. `what` prefixes failure messages. Returns 1 if
** all held. dists may be NULL (distance checks are then skipped). */
int vt_check_exact(const char *what, const vt_set *s, int metric,
                   const float *q, size_t k, vt_filter_fn filter, void *ctx,
                   const uint64_t *keys, const float *dists, size_t found);

/* Structure-only checks for approximate searches: sorted, distinct, live
** and admitted keys, found = min(k, admitted), padding. Returns 1 if ok. */
int vt_check_shape(const char *what, const vt_set *s, size_t k,
                   vt_filter_fn filter, void *ctx, const uint64_t *keys,
                   const float *dists, size_t found);

/* Fraction of the exact top k (by the model) present in keys[0..found). */
double vt_recall(const vt_set *s, int metric, const float *q, size_t k,
                 vt_filter_fn filter, void *ctx, const uint64_t *keys,
                 size_t found);

/* The index holds exactly the model: same count, every model key present
** with its exact vector, vecidx_check passes. Returns 1 if so. */
int vt_check_contents(const char *what, vecidx *ix, const vt_set *s);

/* Kinds of random data for vt_fill_index. */
enum {
    VT_UNIFORM = 0,
    VT_MIXED = 1,
    VT_CLUSTERED = 2
};

/* Insert n random vectors under random distinct 64-bit keys into ix and
** the model: the first half one by one with vecidx_add, the rest with
** vecidx_add_batch in batches of up to 500. */
void vt_fill_index(vecidx *ix, vt_set *model, size_t n, vt_rng *r, int data);

/* nq queries: random ones of the same kind of data, and every third a
** stored vector of the model (a self match). */
void vt_make_queries(vt_rng *r, const vt_set *model, float *q, size_t nq,
                     int data);

/* Results sorted by (distance, key) and padded after found. */
int vt_check_sorted(const char *what, const uint64_t *keys, const float *dists,
                    size_t found, size_t k);

/* Build two indexes of the kind with the same calls (one thread) and
** check they answer every query identically, to the bit (test_flat.c). */
void vt_determinism(int kind, int metric);

/* ---- the test allocator ------------------------------------------------- */

/* An allocator for vecidx_params.allocator that fails call number fail_at
** of malloc_fn/realloc_fn (once, or from then on when `persistent`),
** tracks every live block, and counts malformed calls: a realloc_fn whose
** old_size is not the block's, a pointer it never gave out, free_fn(NULL).
** Thread-safe. */
typedef struct vt_block {
    void *p;
    size_t n;
} vt_block;

typedef struct vt_alloc {
    pthread_mutex_t mu;
    long calls;     /* malloc_fn and realloc_fn calls */
    long fail_at;   /* fail call number fail_at (1-based); 0 = never */
    int persistent; /* fail every call from fail_at on */
    long failed;    /* calls made to fail */
    size_t live_bytes;
    long bad_old_size, bad_ptr, null_free;
    vt_block *tab; /* live blocks */
    size_t ntab, captab;
} vt_alloc;

void vt_alloc_init(vt_alloc *a);
void vt_alloc_destroy(vt_alloc *a);
/* Install a as p's allocator. */
void vt_alloc_use(vecidx_params *p, vt_alloc *a);
/* Calls made to fail so far. */
long vt_alloc_failed(vt_alloc *a);
/* The handle's own count of the bytes it holds matches the allocator's. */
void vt_check_bytes(const char *what, vecidx *ix, vt_alloc *a);
/* After close: nothing outstanding, and every call was well formed. */
void vt_check_released(const char *what, vt_alloc *a);

#endif /* VTEST_H */
