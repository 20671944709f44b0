/*
** vecidx.h -- embeddable vector index library, public interface.
**
** vecidx is two files, vecidx.h and vecidx.c, with no dependencies beyond the
** C11 standard library and POSIX threads. Compile vecidx.c with any C11
** compiler (gcc, clang: `cc -std=c11 -O2 -c vecidx.c`) and link it; nothing
** to configure. MIT licensed, see LICENSE.
**
** CONVENTIONS (they hold for every function below unless it says otherwise)
**
**  - Every fallible function returns an int: VECIDX_OK (0) on success or one
**    of the negative VECIDX_E* codes. vecidx_strerror(code) names the code;
**    vecidx_errmsg() gives the detail of the failure ("dimension 64 does not
**    match index dimension 128").
**  - A call that fails leaves the index exactly as it was: no partial insert,
**    no half-applied batch. Output arguments are unspecified after a failure
**    unless the function says otherwise.
**  - The library never aborts, exits, prints or raises signals. All memory it
**    uses comes from the allocator given in vecidx_params; without one, from
**    malloc, except that on Linux the vector storage of an index past 32 MiB
**    grows in 32 MiB anonymous mappings advised for transparent huge pages.
**  - Vectors are arrays of `dim` floats owned by the caller; the library
**    copies what it keeps and never holds on to a caller's pointer after the
**    call returns. NaN and infinite components are rejected (VECIDX_EINVAL).
**  - Keys are any uint64_t the application chooses; every value is valid.
**
** THREAD SAFETY
**
**  Every function may be called from any thread, and concurrently on the same
**  handle, except vecidx_close, which must not run concurrently with any
**  other call on that handle. Separate handles share no state and need no
**  coordination.
**    - Searches (vecidx_search, vecidx_search_batch) of flat and HNSW
**      indexes take no lock at all: they never wait for a write, a graph
**      repair, a checkpoint or a save, and any number run in parallel.
**      IVF-PQ searches share a lock that writers hold only for the moment
**      they change a list (or, once, to switch to the trained lists); as
**      each search holds it for its whole run, a write waits for the
**      searches under way and the next search for that write (100k x 128,
**      nprobe 16, 4000 writes/s: search p99 1.56x its idle p99, worst
**      4-8 ms; see bench/RESULTS.md).
**    - vecidx_get, vecidx_contains, vecidx_count, vecidx_keys and
**      vecidx_stats share a lock that writers hold only while they change
**      the set of keys, a few microseconds per key, never across I/O.
**    - Writers (vecidx_add, vecidx_upsert, vecidx_add_batch, vecidx_remove,
**      vecidx_reserve, vecidx_train, vecidx_sync, vecidx_checkpoint) are
**      serialised among themselves: a write waits for the one running.
**      vecidx_checkpoint and vecidx_save write their file while other
**      writes go on: those wait only for the copy of a few small tables
**      at its start and for the rename at its end. vecidx_check holds
**      writes off while it runs.
**    - Maintenance is spread over the writes that follow, never done whole
**      by one call: an HNSW graph is repaired after removals in steps of
**      a few milliseconds (see vecidx_remove), and the automatic
**      checkpoint writes its file a step per write (see vecidx_open).
**  What a search or read sees: every write that returned before it began,
**  and never a half-written vector or link list. A write that runs
**  meanwhile may be seen or not (for a batch, some of its rows), except
**  that a search never returns a key twice, nor a key whose removal
**  returned before the search began; and vecidx_get and vecidx_contains
**  always find a key being upserted, with its old vector or its new one
**  (a search may miss it while the new vector is being linked). Writes
**  are all or nothing as ever: a failed call changes nothing a reader can
**  see.
**  A filter callback runs on the searching thread. It must not call a
**  writer on the same handle; of a flat or HNSW index it may call the
**  readers above (they do not wait for the search), of an IVF-PQ index
**  none (a writer waiting for the lock would deadlock it).
**  Stack: the library keeps buffers of a few KB on the calling thread's
**  stack. Measured with glibc on x86-64 (gcc -O3), a thread given 32 KB
**  in all (its TLS and thread block included) was enough for a search
**  (at most 28 KB, a lean reader's re-rank) or an insert (at most 16 KB),
**  for every kind and storage at 128 to 1,030 dimensions; other builds
**  and platforms differ, so leave a margin. vecidx_search_batch's worker
**  threads have the system's default stack.
*/
#ifndef VECIDX_H
#define VECIDX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version is defined here only; the build files read it from here. */
#define VECIDX_VERSION_MAJOR 0
#define VECIDX_VERSION_MINOR 5
#define VECIDX_VERSION_PATCH 1
#define VECIDX_VERSION_STRING "0.5.1"
#define VECIDX_VERSION_NUMBER                                    \
    (VECIDX_VERSION_MAJOR * 10000 + VECIDX_VERSION_MINOR * 100 + \
     VECIDX_VERSION_PATCH)

/* Largest vector dimension accepted by vecidx_create. */
#define VECIDX_MAX_DIM 65536u

/* Largest number of vectors one index holds (slots are 32-bit). */
#define VECIDX_MAX_COUNT 0xFFFFFFF0u

/* Index kinds. Zero is never a valid kind. */
enum {
    VECIDX_FLAT = 1, /* exact brute-force search */
    VECIDX_HNSW = 2, /* hierarchical navigable small-world graph */
    VECIDX_IVFPQ = 3 /* inverted lists + product quantization */
};

/* Coarse quantizers of IVF-PQ (vecidx_params.ivf_quantizer). */
enum {
    VECIDX_QUANT_AUTO = 0,
    VECIDX_QUANT_FLAT = 1, /* exact scan of the centroids */
    VECIDX_QUANT_HNSW = 2  /* HNSW graph over the centroids */
};

/* How flat and HNSW indexes store vectors (vecidx_params.storage). The
** compressed kinds walk and scan their codes; with keep_vectors the
** float32 vectors are kept as well (in an index opened from a file they
** stay in the file, read only to re-rank: see vecidx_open), and
** searches re-score the best k * refine candidates exactly. Bytes per
** vector, d dimensions, before links: VECIDX_STORE_F32 4d;
** VECIDX_STORE_F16 2d (rounded up to 4); VECIDX_STORE_I8 d (rounded up
** to 4) + 16; VECIDX_STORE_BIN d/8 (rounded up to 8); keep_vectors adds
** 4d. Measured recall@10 of HNSW
** (M 16, ef 128; float32 in brackets): int8 0.983 on 1M x 128 L2
** (hnswlib's 0.998), 0.982 on 200k x 384 cosine (0.992), 0.992 there
** with keep_vectors and refine 2, half precision 0.991. Details:
** bench/RESULTS.md. */
enum {
    VECIDX_STORE_F32 = 0, /* float32, exact (the default) */
    VECIDX_STORE_F16 = 1, /* IEEE half precision, rounded to nearest;
                             components beyond +-65504 are stored as
                             +-65504, and below about 6e-5 lose
                             precision (under 3e-8: 0). Under cosine too,
                             where only the direction counts: vectors of
                             norm far from 1 (measured: every component
                             about 1e25 or 1e-25, recall@10 0.002) need
                             normalising first, or another storage */
    VECIDX_STORE_I8 = 2,  /* one byte per dimension: each vector scaled and
                             offset to [-127, 127] on its own range, so no
                             training and no clipping; cosine distances
                             of codes are half the squared distance of
                             the decoded unit vectors */
    VECIDX_STORE_BIN = 3  /* one bit per dimension (set when positive);
                             cosine and inner product only, and only with
                             keep_vectors: the bits pick candidates, the
                             float32 vectors rank them */
};

/* Metrics. Every distance returned is "smaller is closer". Zero is never a
** valid metric.
**  VECIDX_L2      squared Euclidean distance, sum((a-b)^2), >= 0.
**  VECIDX_IP      negative inner product, -sum(a*b); the largest inner
**                 product comes first.
**  VECIDX_COSINE  cosine distance 1 - a.b/(|a||b|), in [0, 2]. Vectors are
**                 stored as given (vecidx_get returns them unchanged); a
**                 vector of all zeros has no direction and is rejected with
**                 VECIDX_EINVAL, for both stored vectors and queries, as is
**                 one so short (norm below about 3e-39) that the inverse
**                 of its norm overflows float32, and a vector to be
**                 stored whose norm is above 2^100 (about 1.3e30), whose
**                 products with queries would overflow float32: a "zero
**                 vector" in the error lists below includes those (the
**                 message says which; a file or log from before 0.5.1
**                 that holds one still opens, and that vector may still
**                 score -infinity against queries). A search scales a
**                 query whose norm is far from 1 (beyond 2^+-20) by a
**                 power of two first, so that its products with stored
**                 vectors neither under- nor overflow float32, and so
**                 does an HNSW build comparing stored vectors with each
**                 other (before 0.5.1 it did not: a graph of vectors all
**                 below about 1e-19 or above 1e19 in norm was linked at
**                 random, recall@10 near 0). */
enum {
    VECIDX_L2 = 1,
    VECIDX_IP = 2,
    VECIDX_COSINE = 3
};

/* Result codes. VECIDX_OK is zero; every error is negative. */
enum {
    VECIDX_OK = 0,
    VECIDX_EINVAL = -1,    /* invalid argument: NULL, k = 0, NaN, bad enum */
    VECIDX_ENOMEM = -2,    /* an allocation failed */
    VECIDX_EIO = -3,       /* an operating-system I/O call failed */
    VECIDX_ECORRUPT = -4,  /* stored data failed a check */
    VECIDX_ENOTFOUND = -5, /* key not in the index */
    VECIDX_EEXIST = -6,    /* key already in the index (vecidx_add) */
    VECIDX_EDIM = -7,      /* dimension out of range or mismatched */
    VECIDX_ESTATE = -8,    /* call not valid in the handle's state */
    VECIDX_EVERSION = -9,  /* file written by a newer, unknown format */
    VECIDX_ENOTSUP = -10,  /* feature not available in this build/kind */
    VECIDX_EFULL = -11     /* VECIDX_MAX_COUNT vectors already stored */
};

/* Flags for vecidx_open (bit constants, combine with |). */
#define VECIDX_RDONLY 0x01u      /* open for reading only */
#define VECIDX_CREATE 0x02u      /* create the index with p if missing */
#define VECIDX_PRIVATE 0x04u     /* a private, writable copy (see below) */
#define VECIDX_VERIFY 0x08u      /* verify every checksum at open (below) */
#define VECIDX_SYNC_FULL 0x10u   /* fsync before every write returns */
#define VECIDX_SYNC_NORMAL 0x20u /* group commit: fsync every few ms */
#define VECIDX_SYNC_OFF 0x40u    /* leave syncing to the OS */
#define VECIDX_LEAN 0x80u        /* reader: kept vectors by pread (below) */

/* Optional memory allocator. All three functions must be set, or all three
** NULL (meaning the C library's malloc/realloc/free, plus huge-page mappings
** for large vector storage on Linux: see the top of this file; a custom
** allocator receives every byte instead). `ctx` is passed back unchanged.
** Blocks must be aligned as malloc's are, for any object type
** (alignof(max_align_t)); the library aligns to cache lines itself where that
** pays. realloc_fn keeps the contents as realloc does, and receives the old
** size of the block so that arena allocators need no header. Each function may
** be called from any thread that uses the index, concurrently, so it must be
** thread-safe. A function returning NULL makes the calling vecidx function
** fail with VECIDX_ENOMEM and leave the index unchanged, except where the
** memory only buys speed: a batch call that cannot get scratch space for an
** extra worker thread runs on fewer threads, an HNSW repair step that cannot
** get memory is retried at a later write, and a write that cannot copy aside
** what a save or checkpoint under way still needs makes that save or
** checkpoint fail with VECIDX_ENOMEM instead. free_fn is never called with
** NULL, realloc_fn never with a NULL block, and no function is asked for 0
** bytes. */
typedef struct vecidx_allocator {
    void *(*malloc_fn)(void *ctx, size_t size);
    void *(*realloc_fn)(void *ctx, void *ptr, size_t old_size, size_t new_size);
    void (*free_fn)(void *ctx, void *ptr);
    void *ctx;
} vecidx_allocator;

/* Parameters of a new index. Always fill with vecidx_params_init first and
** then change fields: new fields may be added in later versions, and init
** gives them their defaults, so callers written today keep working. */
typedef struct vecidx_params {
    int kind;          /* VECIDX_FLAT, VECIDX_HNSW or VECIDX_IVFPQ */
    int metric;        /* VECIDX_L2, VECIDX_IP or VECIDX_COSINE */
    uint32_t dim;      /* 1 .. VECIDX_MAX_DIM */
    uint32_t capacity; /* vectors to make room for up front (default 0;
                          the index grows on demand either way) */
    uint64_t seed;     /* seed for every random choice the index makes
                          (HNSW levels, k-means init); default 42 */
    uint32_t threads;  /* worker threads for batch calls (building
                          an HNSW graph in vecidx_add_batch,
                          vecidx_search_batch, IVF-PQ training and
                          encoding); 0 = one per online CPU (default 0).
                          With 1 thread, the same seed and the same
                          calls give the same graph (graph repairs are
                          made on the writing thread, in steps counted
                          in work, not time). Searches running on other
                          threads meanwhile can delay the reuse of freed
                          slots, so a graph written while others search
                          may differ from one written alone, in layout,
                          not in quality */

    /* HNSW (ignored by other kinds) */
    uint32_t hnsw_m;               /* links per node on upper levels, 2..128;
                                      level 0 keeps 2*M (default 16) */
    uint32_t hnsw_ef_construction; /* build breadth, >= 1 (default 200) */
    uint32_t hnsw_ef_search;       /* default search breadth, >= 1; raised
                                      to k when smaller (default 64) */

    /* IVF-PQ (ignored by other kinds). See vecidx_train. */
    uint32_t ivf_nlist;        /* coarse lists (k-means centroids), 1..2^20;
                                  0 = chosen at training as 4*sqrt(n) for n
                                  training vectors, at most n/39 (default 0) */
    uint32_t ivf_nprobe;       /* default lists probed per query (default 8) */
    uint32_t pq_m;             /* sub-quantizers = code bytes per vector,
                                  1..dim; 0 = min(64, max(1, dim/4)) (default
                                  0). dim need not be a multiple of pq_m */
    uint32_t pq_nbits;         /* bits per sub-quantizer code; 8 is the only
                                  value supported (default 8) */
    uint32_t ivf_keep_vectors; /* non-zero: also keep every full vector,
                             so searches can re-rank exactly (ivf_refine)
                             and vecidx_get returns the exact vector; costs
                             4*dim bytes per vector, 10-15 more for a copy
                             of the key in the key map, which a search given
                             allowed keys uses, and under cosine 4 for the
                             vector's inverse norm; files of format 7
                             (default 0) */
    uint32_t ivf_refine;       /* default re-rank factor: the k*refine best by
                                  code distance are re-scored with the full
                                  vectors; 0 or 1 = none. Needs
                                  ivf_keep_vectors: vecidx_create refuses a
                                  factor above 1 without it (default 0) */
    uint32_t ivf_quantizer;    /* VECIDX_QUANT_AUTO (default): flat scan of
                                the centroids, or an HNSW graph over them when
                                nlist >= 8192; VECIDX_QUANT_FLAT;
                                VECIDX_QUANT_HNSW. The graph is linked on
                                one thread, so probes do not depend on
                                params.threads, and rebuilt at every open.
                                A filtered search that ranks again for
                                more lists (see vecidx_search) scans the
                                centroids when it asks for nlist / 128
                                lists or more, which is then faster */
    uint32_t ivf_train_size;   /* vectors buffered before an untrained index
                               trains itself; 0 = max(39 * nlist, 10000)
                               with nlist = 256 when ivf_nlist is 0
                               (default 0) */
    /* Optional progress report of long operations (vecidx_train and the
    ** training vecidx_add/add_batch start). Called from the calling thread
    ** with a stage name ("kmeans", "pq", "encode") and the fraction done in
    ** [0, 1]; must not call vecidx functions on the same handle. */
    void (*progress)(const char *stage, double done, void *ctx);
    void *progress_ctx;

    vecidx_allocator allocator; /* default: all NULL = malloc/realloc/free */

    /* Vector storage of flat and HNSW (IVF-PQ refuses any but F32). */
    uint32_t storage;      /* VECIDX_STORE_* (default VECIDX_STORE_F32) */
    uint32_t keep_vectors; /* non-zero with a compressed storage: keep the
                              float32 vectors too, for exact re-ranking
                              and an exact vecidx_get (default 0) */
    uint32_t refine;       /* with keep_vectors: the k*refine best by code
                              distance are re-scored exactly, and returned
                              distances are exact (a VECIDX_LEAN reader
                              of I8 leaves unread those its codes prove
                              cannot enter the k best: the same
                              answers); 0 = 20 for BIN
                              (recall@10 0.98 in an exact scan of 200k x
                              384 cosine; 10 gives 0.94), else 2 (default
                              0) */
} vecidx_params;

/* Per-query knobs. A zero-initialised struct (or a NULL pointer where a
** function takes one) means "index defaults, no filter". */
typedef struct vecidx_search_opts {
    uint32_t ef;      /* HNSW search breadth; 0 = index default */
    uint32_t nprobe;  /* IVF-PQ lists to probe; 0 = index default */
    uint32_t refine;  /* re-rank factor; 0 = index default (params.refine,
                         or params.ivf_refine for IVF-PQ); IVF-PQ: 1 = no
                         re-ranking; compressed flat and HNSW storage: the
                         k*refine best are re-scored (at least k). Ignored
                         when the index keeps no float32 vectors */
    uint32_t threads; /* vecidx_search_batch workers; 0 = params.threads */
    /* Optional filter: only keys for which filter(key, filter_ctx) returns
    ** non-zero can appear in the results. NULL admits every key. It is
    ** called from the searching thread, for up to 2048 stored keys to
    ** estimate how many it admits (unless filter_selectivity is given),
    ** for candidates close enough to enter the current top k, for nodes an
    ** HNSW walk meets, for every entry of the lists IVF-PQ probes, and in
    ** an exact scan for every key before its vector is read -- possibly
    ** more than once per key and in no particular order, so it should be
    ** cheap and free of side effects. In
    ** vecidx_search_batch it may be called from several worker threads at
    ** once. It must not call vecidx functions on the same handle (see THREAD
    ** SAFETY). */
    int (*filter)(uint64_t key, void *ctx);
    void *filter_ctx;
    /* Optional allowed set, for an application that already knows which
    ** keys may be returned (from its own database query). Any of
    ** allow_keys, allow_bitmap and filter may be given; a key is admitted
    ** when every one given admits it. Knowing the set, the search can
    ** count it and choose its strategy (see vecidx_search), which a
    ** callback alone does not allow. The arrays are read during the call
    ** only and must not change during it; the caller keeps ownership. */
    const uint64_t *allow_keys; /* admitted keys, in any order; duplicates
                                   and keys not in the index are allowed.
                                   NULL: not given. Non-NULL with
                                   allow_count 0: nothing is admitted.
                                   Strictly ascending keys are used as
                                   given; in any other order they are
                                   first gathered into a set, which adds
                                   2-11 ns a key to the call */
    size_t allow_count;         /* entries at allow_keys */
    /* Bitmap over keys: key x is admitted when x < allow_bits and bit
    ** (x % 64) of word allow_bitmap[x / 64] is set. NULL: not given. */
    const uint64_t *allow_bitmap;
    uint64_t allow_bits;
    /* The fraction of stored keys the filter callback admits, if the
    ** caller knows it roughly, in (0, 1]; 0 = unknown: the search then
    ** estimates it by asking the callback about 256 stored keys, and
    ** when fewer than 8 of them pass, about 2048 in all. When fewer than
    ** 8 of those pass too, HNSW walks instead of scanning only if the
    ** walk would be cheaper even at the low end of that count (two
    ** standard deviations under it, at least half a key). */
    float filter_selectivity;
} vecidx_search_opts;

/* Latency of one kind of call since the handle was opened or created,
** kept in a histogram of 16 buckets per power of two of nanoseconds, so
** each percentile is within 3 % of the true one (max is exact). All
** zero while count is 0. */
typedef struct vecidx_latency {
    uint64_t count;                        /* calls timed, failed included */
    double p50_us, p95_us, p99_us, max_us; /* microseconds */
} vecidx_latency;

/* Counters describing an index, filled by vecidx_stats. Fields are only
** ever appended, so that binaries built against an older vecidx.h keep
** working (see vecidx_stats). */
typedef struct vecidx_stats_t {
    int kind;
    int metric;
    uint32_t dim;
    uint64_t count;        /* live vectors */
    uint64_t slots;        /* slots ever used (live + free for reuse);
                              trained IVF-PQ: list entries, = count */
    uint64_t capacity;     /* slots allocated; trained IVF-PQ: list
                              entries allocated (or mapped) in all lists */
    uint64_t memory_bytes; /* bytes currently held from the allocator or
                              in huge-page storage (a mapped file's pages
                              are not counted) */
    uint64_t mapped_bytes; /* size of the mapped index file, or 0 */
    const char *simd;      /* kernel in use, as vecidx_simd() */
    int trained;           /* 1 when searches use the index structure:
                              always for flat and HNSW; for IVF-PQ once
                              trained (before that, vectors are buffered
                              and searched exactly) */
    uint32_t nlist;        /* IVF-PQ lists (0 before training) */
    uint32_t pq_m;         /* IVF-PQ code bytes per vector */
    int storage;           /* VECIDX_STORE_* of flat and HNSW */
    uint32_t vector_bytes; /* bytes per vector of the codes searches read
                              (flat, HNSW; with links for HNSW level 0),
                              not counting kept float32 vectors */

    /* ---- Since 0.3.0. Activity since the handle was opened or created
    ** (nothing of it is stored in the file). */
    uint64_t searches; /* queries answered: 1 per vecidx_search, nq per
                          vecidx_search_batch */
    uint64_t inserts;  /* vectors added or upserted by successful calls
                          (log replay at open not counted) */
    uint64_t removes;  /* keys removed by successful calls */
    vecidx_latency search_latency;     /* vecidx_search */
    vecidx_latency batch_latency;      /* vecidx_search_batch, whole call */
    vecidx_latency insert_latency;     /* vecidx_add, vecidx_upsert,
                                          vecidx_add_batch */
    vecidx_latency remove_latency;     /* vecidx_remove */
    vecidx_latency checkpoint_latency; /* vecidx_checkpoint, vecidx_save */
    double distances_per_search; /* mean vectors or codes whose distance to
                                    the query was computed, re-ranking
                                    included */
    double visited_per_search;   /* mean HNSW nodes whose links were read,
                                    or IVF-PQ lists probed; 0 for flat */
    uint64_t buried;  /* HNSW: removed nodes still linked in the graph,
                         awaiting repair (see vecidx_remove) */
    uint64_t repairs; /* HNSW: repair passes begun */
    /* The write-ahead log (all 0 for an index without one). A read-only
    ** handle reports the log it replayed at open. */
    uint64_t log_bytes;          /* size of the log */
    uint64_t log_records;        /* writes in the log not yet checkpointed */
    uint64_t checkpoints;        /* checkpoints completed, automatic included */
    double last_checkpoint_time; /* Unix time (s) the last one ended,
                                    0 = none */
    double last_checkpoint_seconds; /* how long it took, start to end */
    /* Bytes of each part of the index, whether allocated or mapped from
    ** the file (memory_bytes counts only the allocated). */
    uint64_t mem_vectors; /* records of flat, HNSW and an untrained IVF-PQ
                             buffer: codes, kept float32 vectors, keys,
                             slot states (HNSW links not included) */
    uint64_t mem_links;   /* HNSW links, every level */
    uint64_t mem_keymap;  /* the map from key to slot or list entry */
    uint64_t mem_lists;   /* trained IVF-PQ: list entries (keys, codes,
                             kept vectors) and the model */
    uint64_t mem_other;   /* allocated bytes in none of the parts above:
                             search scratch, copies a save keeps, the
                             centroid graph, ... */
    /* Trained IVF-PQ (else 0): entries per list, and drift: the entries
    ** added (or upserted) since training, as a share of those plus the
    ** entries there were at training. A high share means the lists may
    ** no longer fit the data; removals do not lower it. Counted from
    ** training or from open (then from the entries the file held),
    ** whichever came later. */
    uint32_t list_min, list_median, list_max;
    double drift;
    /* The search defaults in force (as vecidx_tune leaves them): HNSW
    ** ef, IVF-PQ nprobe, and the refine factor with kept vectors (0 when
    ** none apply). */
    uint32_t ef_search, nprobe, refine;
} vecidx_stats_t;

typedef struct vecidx vecidx;

/* ---- Library ---------------------------------------------------------- */

/* Version of the compiled library as "MAJOR.MINOR.PATCH" (static string).
** Compare with VECIDX_VERSION_STRING to detect a header/library mismatch. */
const char *vecidx_version(void);

/* VECIDX_VERSION_NUMBER of the compiled library. */
int vecidx_version_number(void);

/* Name of the distance kernel chosen for this CPU: "avx512" (x86-64 with
** AVX-512F), "avx2" (x86-64 with AVX2+FMA), "neon" (ARM with Advanced
** SIMD) or "scalar". The choice is made once, at run time, so one binary
** built for generic x86-64 runs on any x86-64 CPU. Static string.
** Defining VECIDX_NO_SIMD when compiling vecidx.c forces "scalar". */
const char *vecidx_simd(void);

/* Short fixed description of a result code ("key not found"). Never NULL;
** unknown codes give "unknown error". Static string, thread-safe. */
const char *vecidx_strerror(int code);

/* Detail of the most recent failed vecidx call made by the calling thread,
** e.g. "dimension 64 does not match index dimension 128". The message is
** kept per thread, so concurrent calls from other threads never overwrite
** it; `ix` may be NULL (for example after vecidx_create failed) and is only
** used to check the message belongs to that handle or to a handle-less
** call: when the thread's last failure was on a different handle the result
** is "". Successful calls do not clear the message. The string is owned by
** the library and valid until the thread's next failing vecidx call. Never
** NULL. */
const char *vecidx_errmsg(const vecidx *ix);

/* ---- Creating and closing --------------------------------------------- */

/* Fill *p with defaults for an index of the given kind, metric and
** dimension (see the field comments of vecidx_params). Returns VECIDX_OK,
** VECIDX_EINVAL if p is NULL or kind/metric is unknown, VECIDX_EDIM if dim
** is 0 or above VECIDX_MAX_DIM; *p is filled in every case but the first,
** so the caller may still correct fields before vecidx_create. */
int vecidx_params_init(vecidx_params *p, int kind, int metric, uint32_t dim);

/* Create an empty in-memory index from *p, which is copied (the caller may
** free or reuse it afterwards). On success *out is the new handle, to be
** released with vecidx_close. On failure *out is set to NULL (when out is
** not NULL) and vecidx_errmsg(NULL) tells why.
** Errors: VECIDX_EINVAL (NULL p or out, unknown kind/metric, allocator only
** partly set, an HNSW or IVF-PQ parameter out of range: hnsw_m, ef,
** ivf_nlist, pq_m > dim, ivf_quantizer, ivf_train_size < ivf_nlist,
** ivf_refine > 1 without ivf_keep_vectors), VECIDX_EDIM (dim 0 or over
** VECIDX_MAX_DIM), VECIDX_ENOTSUP (pq_nbits other than 8), VECIDX_ENOMEM. */
int vecidx_create(const vecidx_params *p, vecidx **out);

/* Release the index and all its memory (and its file mapping, for a
** handle from vecidx_open). NULL is a no-op. No other call on ix may be
** running or start afterwards. */
void vecidx_close(vecidx *ix);

/* ---- Files -------------------------------------------------------------- */

/* Write a standalone snapshot of ix to path, in the format of
** docs/FORMAT.md. The snapshot goes to a temporary file beside path
** ("PATH.tmp-PID", or PATH.tmp-PID-N while another save to the same path
** runs in this process; a name left by a crash is reused), which is synced,
** renamed over path, and the directory synced: a crash at any moment leaves
** either the old file or the complete new one. The file replaced is closed
** on a short-lived thread (joined by the next save or vecidx_close): the
** file system frees its blocks at that close, which took 165 ms for a 700
** MB file, and no write should wait for that. Works for any index, in memory
** or opened from a file; saving a writable index over its own main file is
** a vecidx_checkpoint. The file holds the index as it was when the call
** began (waiting for a write that is running to end): searches and writes
** go on while it is written, writes copying aside what they are about to
** change that the file does not hold yet (1 KiB per slot touched, or a
** whole IVF-PQ list). One save or checkpoint at a time per handle; a second
** waits.
** Errors: VECIDX_EINVAL (NULL ix or path, path over 4096 bytes),
** VECIDX_EIO (with the system's reason: no space, permission, ...),
** VECIDX_ENOMEM, VECIDX_ECORRUPT (a reader's file has a damaged piece:
** it is never copied into a new file). On error path is left as it was. */
int vecidx_save(vecidx *ix, const char *path);

/* Open the index stored at path (the main file) and PATH-wal (its
** write-ahead log), like SQLite's database and -wal files.
**
** The main file is mapped (mmap, private) and used in place: no parse and
** no copy of the vectors, links or key map. On Linux, a file of at most
** half the machine's memory has its flat and HNSW vectors and links (not
** kept float32 vectors) and its key map advised for transparent huge
** pages: where the file system keeps large page-cache folios (XFS since
** Linux 5.18, ext4 since 6.16) and the mapping lies on a 2 MiB boundary,
** those are then read, cached and mapped 2 MiB at a time, which makes
** searches and keyed scans of the file faster (docs/DESIGN.md, "Huge
** pages"). Then every complete record of the log is replayed, so the
** handle holds exactly the writes that were acknowledged before the last
** close or crash; a partly written last record (a torn append) is
** discarded.
**
** VECIDX_RDONLY: a reader. Opening checks the header and the small
** sections and takes milliseconds whatever the size (a 1M x 128 HNSW
** index: about 15-35 ms). The big sections carry a checksum per piece (16
** slots' data, an IVF-PQ list; format version 6 on): each piece is
** verified the first time a call reads it, and a piece that fails makes
** that call -- vecidx_search, _search_batch, _get, _contains, _keys,
** _estimate_recall, _save -- return VECIDX_ECORRUPT with a message
** naming the section and offset, never a result built from it; other
** calls, on other pieces, go on working. Files of versions 1-5 have no
** piece checksums: a reader verifies their vector section whole at open
** (a pass over the file). A reader that replays log records verifies
** all of the file first, as a writer does. Writers fail with
** VECIDX_ESTATE. Any number of
** readers, in any processes, may open an index while one writer has it;
** a reader sees the writes logged before it opened.
** Without VECIDX_RDONLY: the writer. The whole file is verified first (a
** pass over it), the log is locked (a second writer gets VECIDX_ESTATE)
** and every add, upsert and remove is appended to the log before it
** returns, durable according to the sync mode:
**   VECIDX_SYNC_FULL (default): fsync before each write returns; nothing
**     acknowledged is lost by a crash or a power cut.
**   VECIDX_SYNC_NORMAL: fsync at most every 10 ms and in vecidx_sync and
**     vecidx_close; a process crash loses nothing, a power cut at most the
**     writes of the last 10 ms (after a failed fsync: see vecidx_sync).
**   VECIDX_SYNC_OFF: the OS decides; a process crash loses nothing, a
**     power cut may lose anything since the last vecidx_sync/checkpoint.
** VECIDX_CREATE: if path does not exist, create it as an empty index
** described by p (required then).
** VECIDX_VERIFY: with VECIDX_RDONLY, verify every checksum at open (a
** pass over the file, as a writer makes) instead of piece by piece as
** the pieces are read, for callers who would rather pay at open than
** meet VECIDX_ECORRUPT later. Writers and private copies verify all at
** open anyway.
** VECIDX_LEAN: with VECIDX_RDONLY (else VECIDX_EINVAL), for compressed
** storage with keep_vectors in a file of format 6 on: the reader keeps the
** file open (one descriptor) and reads the float32 vectors it re-ranks
** with pread instead of through the mapping: a system call per vector
** re-ranked, and a few more the first time a 16-vector piece of them is
** verified (one per 8 KB). They then stay in the page cache, out of the
** resident set, which holds only what the walks touch. With int8 codes
** it reads only the candidates whose codes leave them a chance of
** entering the k best (16 of 20 on 1M x 128, 17 on 200k x 384 cosine,
** refine 2), with the same answers. Through the mapping each re-rank
** faults in its page and the kernel maps the cached pages around it, and
** verifying a vector reads its 16-slot piece.
** Measured, HNSW int8, refine 2, after 10k queries (1000 distinct), the
** file dropped from the page cache first: 200k x 384 cosine, 122 MB
** resident against a plain reader's 415 MB (hnswlib's float32 index:
** 343 MB); 1M x 128, 354 MB against 842 MB (hnswlib: 725 MB). The price
** is the calls: where one costs about 1 us, 0.41-0.51x a plain reader's
** queries per second on the 384-d set, 0.41-0.60x on the 1M one, ef 16
** to 64; where one costs 0.17 us, 0.69-0.81x on the 384-d set, ef 32 to
** 64. Answers are the same as a plain reader's, bit for bit. Exact
** searches, allowed-set scans, vecidx_get, vecidx_save's copy and a
** reader that replayed log records (whose mapping holds what the file
** does not) still read through the mapping, as does a read whose pread
** fails (the same bytes, with a plain reader's risks: a file cut short
** under it faults).
** Ignored for other files.
** VECIDX_PRIVATE: a private copy, for a program that keeps the index's
** truth elsewhere (a database) and the file as a cache of it. Opened as
** a reader is (no lock, any writer may have the file; the log is
** replayed) but verified whole as a writer is, it then takes writes
** that change only this handle's memory: nothing is logged, the file is
** never touched, and closing the handle drops them. vecidx_save writes
** them to a new file; vecidx_checkpoint fails with VECIDX_ESTATE and
** vecidx_sync does nothing. Sync modes are ignored. Opening costs the
** writer's pass over the file. Not with VECIDX_RDONLY or VECIDX_CREATE
** (VECIDX_EINVAL).
** The main file is never modified in place: writes change private pages
** of the mapping; vecidx_checkpoint writes a new main file and renames it
** over the old. Once the log passes 64 MB the writes that follow write
** such a checkpoint themselves, 4 MB of it each (a 1M x 128 HNSW index:
** about 180 writes), so that none of them waits for all of it; closing the
** handle drops one under way (the log still holds every write).
** p may be NULL for an existing file; if given, its kind, metric and dim
** must match the file's, and its allocator, threads and progress callback
** are used.
** On failure *out is NULL and vecidx_errmsg(NULL) tells why.
** Errors: VECIDX_EINVAL (NULL path/out, unknown flags, two sync modes,
** VECIDX_LEAN without VECIDX_RDONLY, CREATE of a missing file without
** p), VECIDX_EIO (cannot open, stat, map, lock, read, write or sync; a
** log that cannot be read is never taken to end early), VECIDX_ECORRUPT
** (not a vecidx file, checksum mismatch, inconsistent structure, a log
** record that does not apply),
** VECIDX_EVERSION (newer format), VECIDX_EDIM (p->dim differs),
** VECIDX_ESTATE (another handle has it open for writing), VECIDX_ENOMEM. */
int vecidx_open(const char *path, const vecidx_params *p, unsigned flags,
                vecidx **out);

/* Make every write acknowledged so far durable (fsync the log). A no-op
** for in-memory indexes and in VECIDX_SYNC_FULL, where writes are durable
** already. Writer (waits for running writes). Errors: VECIDX_EINVAL,
** VECIDX_EIO.
** After an fsync of the log fails (here, or inside a write under
** VECIDX_SYNC_NORMAL) while acknowledged writes were not yet synced, those
** writes may never reach the disk, whatever a later fsync reports (Linux
** reports a failed writeback once, and may drop the data). From then on
** vecidx_sync, add, upsert and remove return VECIDX_EIO and change
** nothing, until vecidx_checkpoint succeeds: it writes the whole index
** anew from memory. (A checkpoint during which other writes were logged
** returns VECIDX_EIO itself while those are still only in such a log;
** call it again.) Close the handle only after it: a power cut could
** otherwise lose the writes in doubt. Under VECIDX_SYNC_FULL every write
** is synced before it returns, so a failed fsync fails only its own
** write. */
int vecidx_sync(vecidx *ix);

/* Fold the log into the main file: write a new main file beside it, sync
** it, rename it over the old one, sync the directory, then empty the log.
** The new file holds every write that returned before the call began; it
** is written while searches and other writes go on, as vecidx_save is,
** and writes made meanwhile stay in the log (a new one, under the new
** file's salt, once the file is in place). A crash at any point leaves
** either the old file and its log or the new file and a log it continues;
** nothing acknowledged is lost. VECIDX_EIO after the new file is renamed
** in (its directory could not be synced) leaves the old log in use, which
** either file accepts; the call may be repeated. Errors: VECIDX_EINVAL,
** VECIDX_ESTATE (read-only or in-memory index: use vecidx_save),
** VECIDX_EIO, VECIDX_ENOMEM. */
int vecidx_checkpoint(vecidx *ix);

/* Make room for at least n vectors in total, so that later inserts up to
** that count do not allocate for vector storage. Writer.
** Errors: VECIDX_EINVAL (NULL ix), VECIDX_EFULL (n > VECIDX_MAX_COUNT),
** VECIDX_ENOMEM. */
int vecidx_reserve(vecidx *ix, size_t n);

/* ---- Training (IVF-PQ) ----------------------------------------------- */

/* Train an IVF-PQ index on n sample vectors (n*dim floats, row-major; the
** samples are not added to the index). k-means (started from distinct
** samples picked at random with params.seed, 20 iterations, empty clusters
** re-seeded by splitting the largest) finds nlist coarse centroids from at
** most 256*nlist samples; then each of pq_m sub-quantizers learns 256
** centroids for its slice of the residuals (vector minus its coarse
** centroid) from at most 65536 samples. Samples beyond those limits are
** skipped at random (seeded).
** Under VECIDX_COSINE the samples are normalised first. The result depends
** only on the samples, the params and the seed, not on the thread count.
** Vectors already buffered in the index are then encoded into the lists.
** Training a flat or HNSW index is a successful no-op that checks
** nothing but ix; training an IVF-PQ index that is already trained checks
** the arguments as below and then does nothing. Needs n >= nlist when
** ivf_nlist is set (and n >= 1 in any case); fewer distinct points than
** centroids still trains (duplicate centroids stay empty). Writer; for a
** file-backed index the trained state is checkpointed into the main file
** before returning.
** An index that is never trained explicitly trains itself on its own
** buffered vectors once params.ivf_train_size of them have been added.
** Errors: VECIDX_EINVAL (NULL ix, NULL samples with n > 0, n = 0, n <
** ivf_nlist, NaN/infinity or cosine zero vector in a sample), VECIDX_ESTATE
** (read-only handle), VECIDX_ENOMEM (training ran out of memory: the
** index is unchanged), VECIDX_EIO or VECIDX_ENOMEM from the checkpoint
** of a file-backed index after training (the handle is trained, as
** vecidx_stats' `trained` tells, but the files still hold the untrained
** index and its log, so nothing written is lost; after a reopen the
** index trains itself again from its buffer). */
int vecidx_train(vecidx *ix, size_t n, const float *samples);

/* ---- Writing ----------------------------------------------------------
** Every call below that changes an index opened from a file can also fail
** with VECIDX_ESTATE (the handle is read-only) and VECIDX_EIO (the log
** could not be appended to, with the system's reason); the index is then
** unchanged. */

/* Insert vector vec (dim floats) under key. Writer.
** Errors: VECIDX_EINVAL (NULL ix/vec, NaN or infinity in vec, zero vector
** under VECIDX_COSINE), VECIDX_EEXIST (key already present; the stored
** vector is left unchanged), VECIDX_EFULL, VECIDX_ENOMEM. */
int vecidx_add(vecidx *ix, uint64_t key, const float *vec);

/* Insert vec under key, or replace the vector stored under key if there is
** one. HNSW links the new vector as a fresh node and removes the old one
** (see vecidx_remove), so the graph around it is rebuilt, not reused.
** Writer. Errors as vecidx_add, without VECIDX_EEXIST. */
int vecidx_upsert(vecidx *ix, uint64_t key, const float *vec);

/* Insert n vectors: keys[i] with vecs[i*dim .. i*dim+dim-1]. All or
** nothing: every key and vector is checked, and all memory is obtained,
** before the index changes, so on any error no vector of the batch is
** inserted. n = 0 is a successful no-op (keys and vecs may then be NULL).
** HNSW links large batches on params.threads threads (results then depend
** on thread timing; use 1 thread for a reproducible graph), 4096 rows at
** a time: searches meanwhile may find some rows of the batch. Writer.
** Errors: VECIDX_EINVAL (NULL arguments, NaN/infinity or cosine
** zero vector in any row, the same key twice within the batch),
** VECIDX_EEXIST (a key already in the index), VECIDX_EFULL, VECIDX_ENOMEM.
** The message names the offending row or key. */
int vecidx_add_batch(vecidx *ix, size_t n, const uint64_t *keys,
                     const float *vecs);

/* Remove the vector stored under key. The key is gone when the call
** returns: no later call sees it. Flat storage is reused by a later
** write, once no search that may still read it runs. In an
** HNSW graph the node first stays as a waypoint that searches walk
** through but never return; once 7.5 % of the nodes are such waypoints,
** a repair pass begins: every list linking to them is rebuilt from their
** neighbours, nodes left without a way in are linked again, and their
** storage is reused, so memory stays flat under insert/delete churn. The
** pass is linear in the index size but no call makes it whole: every
** add, upsert and remove (this one included) makes a step of it. A pass
** paces itself to end before another 7.5 % of the nodes are removed:
** its steps are 1-2 ms of work at 128 dimensions while it falls behind,
** an eighth of that while it keeps the pace, and four times that while
** removals outrun it (measured: removing 12.5 % of a 1M x 128 index, no
** removal took over 7.7 ms), so a pass over 1M nodes takes some thousands
** of writes, and removals in bulk take about twice as long in total as
** when a pass ran whole on two threads (those 125,000 removals: 13.3-15.4
** s). Up to 15 % of the nodes may await repair at once.
** Searches never wait for it. A slot is reused only once no search that
** began before its node was unlinked still runs.
** Recall after many rounds of churn stays level with a fresh build for
** L2 and cosine, and within 0.01 of it for inner product (measured:
** recall@10 0.000-0.003 below a fresh build on 128-d data, at most 0.007
** below on tightly clustered 16-d data; see docs/DESIGN.md). An IP pass
** does about 1.5x the work of an L2 one. Adding the live vectors
** to a new index restores fresh-build recall. Writer. Errors:
** VECIDX_EINVAL (NULL ix), VECIDX_ENOTFOUND, VECIDX_ENOMEM (HNSW: a
** removal makes or grows a table of one byte per slot for the repairs;
** nothing changed). */
int vecidx_remove(vecidx *ix, uint64_t key);

/* ---- Reading ---------------------------------------------------------- */

/* Copy the vector stored under key into out (dim floats, caller-owned).
** A trained IVF-PQ index without ivf_keep_vectors keeps only codes: out
** receives the reconstruction (coarse centroid plus decoded residual, the
** normalised direction under VECIDX_COSINE), not the vector given. Flat
** and HNSW compressed storage without keep_vectors return the decoded
** vector: half precision rounded to 11 significant bits; int8 each
** component within half a code step, (max - min) / 254 of that vector's
** own components, of the one given. Reader. Errors: VECIDX_EINVAL
** (NULL ix/out), VECIDX_ENOTFOUND, VECIDX_ECORRUPT (a reader met a
** damaged piece of the file: see vecidx_open). */
int vecidx_get(vecidx *ix, uint64_t key, float *out);

/* 1 if key is stored, 0 if not, VECIDX_EINVAL if ix is NULL,
** VECIDX_ECORRUPT if a reader met a damaged IVF-PQ list. Reader. */
int vecidx_contains(vecidx *ix, uint64_t key);

/* Number of vectors stored; 0 for NULL. Reader. */
size_t vecidx_count(vecidx *ix);

/* Copy the keys of up to cap stored vectors into keys (caller-owned, may
** be NULL when cap is 0) and set *n to the total number stored. Order is
** unspecified but stable while the index is not written. Call with cap 0
** to size the array (or use vecidx_count). Reader, so the keys form one
** consistent snapshot. Errors: VECIDX_EINVAL (NULL ix or n, NULL keys
** with cap > 0), VECIDX_ECORRUPT (a reader met a damaged piece of the
** file; the keys copied are then not to be used). */
int vecidx_keys(vecidx *ix, uint64_t *keys, size_t cap, size_t *n);

/* Fill the first `size` bytes of *out with counters of the index: pass
** sizeof(vecidx_stats_t). A smaller size (a program built against an
** older vecidx.h) gets the fields it knows; a larger one (a newer
** vecidx.h) gets zeros past the fields this library knows. Reader: it
** never waits for a search, and for a writer only while that changes
** the key set. The activity counters are kept by every call as it
** returns (two clock reads and a few relaxed atomic adds: 0.98-1.03x
** the QPS without them in a paired A/B of 17-90 us HNSW searches, within
** the noise), without locks; a stats call sees each
** counter as of some moment during it, not all of them at one moment.
** Cost: O(1), except O(nlist log max-list-size) for a trained IVF-PQ
** index (the median list size). Allocates nothing.
** Errors: VECIDX_EINVAL (NULL ix or out, size below that of the fields up
** to vector_bytes). */
int vecidx_stats_ex(vecidx *ix, vecidx_stats_t *out, size_t size);

/* vecidx_stats(ix, out) is vecidx_stats_ex(ix, out, sizeof *out). The
** library also exports a function of that name, which fills only the
** fields up to vector_bytes: binaries built against vecidx 0.2, whose
** struct ended there, call it. */
int vecidx_stats(vecidx *ix, vecidx_stats_t *out);
#define vecidx_stats(ix, out) \
    vecidx_stats_ex((ix), (out), sizeof(vecidx_stats_t))

/* Verify the internal invariants of the index (key map against storage,
** counts, free-slot list; for graph and list kinds their structure too).
** Cost is linear in the index size; writes wait for it (it needs the
** structure still), searches do not.
** Errors: VECIDX_EINVAL (NULL ix), VECIDX_ECORRUPT with a message naming
** the first broken invariant. */
int vecidx_check(vecidx *ix);

/* ---- Searching -------------------------------------------------------- */

/* Find the k stored vectors closest to query q (dim floats) under the
** index metric. keys and dists must each have room for k entries; dists
** may be NULL when distances are not wanted. On success *found is the
** number of results written: for flat and HNSW always min(k, number of
** admissible vectors), for IVF-PQ at most that (see below);
** results are sorted closest first, ties by key. The flat index is exact.
** HNSW is approximate: it walks the graph with breadth max(ef, k), where
** ef is opts->ef or params.hnsw_ef_search. Over float32 L2 vectors of
** more than 128 dimensions the walk stops summing a candidate's distance
** once its partial sum shows it will not enter the ef best: for certain
** (past the worst one held), or by estimate, at the largest share of a
** whole distance that the query's own fully summed distances held by
** that point. Returned distances are exact either way. Measured with
** M 16 against the walk without the estimate: on 960-d L2, 1.3-1.4x the
** queries per second with recall@10 at equal ef within 0.001; on 640-d
** sets built to mislead it (sparse vectors, clusters within clusters),
** recall@10 up to 0.03 lower at ef 10-16, but at equal recall still
** 1.0-1.2x the queries per second.
** IVF-PQ is approximate: it ranks the nprobe lists whose centroids are
** closest to q (opts->nprobe or params.ivf_nprobe), scores every vector
** in them by its code (asymmetric distance: exact query, quantized
** vector), and with re-ranking (refine > 1, full vectors kept) re-scores
** the best k*refine exactly. Distances are then the exact ones; without
** re-ranking they are the code estimates. Before training, the buffered
** vectors are searched exactly.
** FILTERED SEARCH (opts->filter, allow_keys, allow_bitmap): only admitted
** keys are returned, and every kind returns min(k, admitted keys in the
** index) results. The search first counts the admitted keys: exactly
** for an allowed set (distinct keys of the array, set bits of the
** bitmap), from filter_selectivity, or by asking the callback about 256
** stored keys (2048 when fewer than 8 pass). Then it picks the cheaper
** of:
**  - an exact scan of only the admitted vectors: each allowed key looked
**    up and scored (with a callback alone: every row asked, the admitted
**    scored). Exact, and the cost grows with the admitted count;
**  - HNSW: a walk that returns only admitted nodes but passes through
**    rejected ones, keeping ef * sqrt(fraction) admitted results (at
**    least k, or k * refine), so it scores about 1/sqrt(fraction) times
**    the nodes of an unfiltered walk. When the share of admitted nodes it
**    met is far from the fraction (a set crowded around the query, or
**    lying away from it), it walks again keeping ef. It stops, and the
**    exact scan answers, as soon as it has visited as many nodes as the
**    scan would score, or when it cannot find k admitted nodes. When the
**    first 16 / fraction nodes it met held under a quarter of the
**    fraction admitted (a set lying away from the query, which a walk
**    from the query's side reaches only at great cost), it starts again
**    from inside the set: from random admitted nodes, walking through
**    admitted ones only, then checks from the query's side with the best
**    results found as its bound. That needs at least 8 % admitted, a
**    budget of 4,096 visits and of eight unfiltered walks, and L2 or
**    cosine (an inner-product graph is too sparse for it); else, where
**    the scan costs under eight walks, the scan answers then;
**  - IVF-PQ: more lists than nprobe -- nprobe / sqrt(fraction admitted)
**    at least, and on while fewer admitted entries were met than so many
**    lists hold on average (twice as many when those lists held under
**    half that: a set away from the query), and on while the next list's
**    centroid is nearer than the k-th best admitted entry met (under L2
**    5 % more), if that entry lies beyond the k-th best of all entries of
**    the first list probed -- until the lists probed have cost as
**    much as the exact scan, which then answers if too few were met, if
**    nearer lists were left, or if the admitted entries were met only
**    spread thin (under an eighth of the fraction admitted among the
**    entries asked). A probed list's entries
**    are asked first and only the admitted codes scored; a list with none
**    admitted costs no distance table.
**    Without re-ranking the scan's distances are the code estimates.
** The scan is chosen below about (2 * ef * M / count)^(2/3) admitted:
** 2 % of 1M, 7 % of 100k at the default ef and M (for a callback whose
** sample found fewer than 8 of 2048 keys, see filter_selectivity, at
** the low end of that count). Measured on 1M x 128 (M 16,
** ef 64, one thread, bitmap form): recall@10 >= 0.99 at every fraction
** admitted at random, >= 0.96 far from the query; on random sets the walk
** runs at 0.70x the unfiltered speed at 50 % admitted, 0.48x at 10 %,
** 0.33x at 5 % (on 200k x 384 cosine 0.77x / 0.44x / 0.35x, recall
** >= 0.978 against 0.966 unfiltered). Sets far from the query are
** slower: walked from inside, 0.10x / 0.060x / 0.031x the unfiltered
** speed at 50 / 25 / 10 % of 1M x 128 (0.19x / 0.12x / 0.064x on 200k x
** 384 cosine); scanned, at 5-20 % admitted such searches run at
** 0.77-1.15x a hand-written loop over only the admitted vectors on 100k x 128,
** 0.79-0.94x on 200k x 384 (measured on those two); the scan of 1 % to
** 0.01 % runs at 0.96-1.65x that loop over the admitted vectors on 1M x
** 128 (keys form; HNSW, IVF-PQ with kept vectors; HNSW's far set at 0.1
** % 0.74x), and at 0.87-1.5x on 200k x 384 cosine, lowest at 20 keys,
** where the call's fixed cost shows. With a callback alone, the scan
** asks it about every row: at 0.1 % of 1M x 128, 0.92-1.00x (HNSW)
** and 1.5x (IVF-PQ) a flat index's scan with the same callback. IVF-PQ
** (nprobe 16, refine 4, bitmap form) runs at 0.51-0.86x its unfiltered
** speed at 50 % admitted and 0.45-0.88x at 10 %, sets far from the query
** included (1M x 128, 200k x 384 cosine).
** More in bench/RESULTS.md. An allowed key array
** costs time in proportion to its length on every call (once per call;
** a batch shares it): an array of 1024 keys or more whose largest key is
** below 64 times its length is made a bitmap, any other is hashed,
** several times slower. A bitmap costs only its words counted. For large
** sets prefer the bitmap.
** Entries from *found to k-1 are set to key UINT64_MAX and distance +infinity
** (never read them as results: UINT64_MAX is a valid key). opts may be
** NULL. Searching an empty index succeeds with *found = 0. Reader.
** Errors: VECIDX_EINVAL (NULL ix/q/keys/found, k = 0, NaN/infinity in q,
** zero query under VECIDX_COSINE), VECIDX_ENOMEM, VECIDX_ECORRUPT (a
** reader met a damaged piece of the file, see vecidx_open: *found is 0
** and keys and dists are not results). */
int vecidx_search(vecidx *ix, const float *q, size_t k,
                  const vecidx_search_opts *opts, uint64_t *keys, float *dists,
                  size_t *found);

/* Search nq queries at once (queries: nq*dim floats, row-major). Results
** of query i go to keys[i*k .. i*k+k-1] and dists[i*k ..] (dists may be
** NULL), its count to found[i]; same contract per query as vecidx_search.
** Runs on up to opts->threads worker threads (0: params.threads), which
** the call starts and joins. Faster than nq single searches for the flat
** index, which compares blocks of queries with blocks of stored vectors
** while they are in cache. All queries are validated before any is run.
** nq = 0 is a successful no-op. Reader. Errors as vecidx_search; the
** message names the first bad query. On VECIDX_ECORRUPT every found[i]
** is 0. */
int vecidx_search_batch(vecidx *ix, size_t nq, const float *queries, size_t k,
                        const vecidx_search_opts *opts, uint64_t *keys,
                        float *dists, size_t *found);

/* ---- Measuring and tuning recall -------------------------------------- */

/* What vecidx_estimate_recall measured. */
typedef struct vecidx_recall {
    double recall;    /* mean recall@k: the share of each query's exact k
                         nearest (k or fewer admissible) that the search
                         returned, averaged over the queries */
    double low, high; /* 95 % confidence interval of that mean (normal
                         approximation over the queries) */
    uint32_t queries; /* queries that counted (with an admissible vector) */
    uint32_t k;
    double search_us; /* mean microseconds a measured search took */
    int vs_codes;     /* 1: the exact answers came from a scan of the
                         codes (compressed storage or IVF-PQ, with no
                         float32 vectors kept, and no truth given), so
                         recall against the original vectors is lower,
                         by an amount only the caller's truth can show */
} vecidx_recall;

/* Estimate recall@k of the search that opts describes (NULL: the index
** defaults; filters allowed, the exact answers are then filtered too).
** The queries are the caller's (nq of them at `queries`) or, with queries
** NULL, nq sample queries (0 = 200) made from stored vectors: a stored
** vector picked at random and moved 0.85 times (IVF-PQ: 2.5 times) the
** median distance between a stored vector and its nearest neighbour,
** along the
** difference of two other stored vectors (a stored vector taken unmoved
** is found at once and overstates recall). On the benchmark sets (128-
** and 960-d L2, 384-d cosine) such queries were about as hard as the
** real ones (bench/RESULTS.md); on other data they may be easier or
** harder: give real queries when you have them.
** The exact answers are the caller's
** (`truth`, nq * k keys, best first; a key UINT64_MAX ends a query's
** list early; needs `queries`) or found by an exact scan of every vector
** the index holds: its float32 vectors, kept vectors where the storage is
** compressed, else the codes themselves -- then the estimate covers what
** the search loses against the codes, not what the codes lose against
** the vectors they stand for (only `truth` can tell that).
** Cost: nq exact scans of the index (plus 32 for sample queries) and nq
** searches; a reader, like vecidx_search: searches and writes go on.
** Not thread-safe against vecidx_close only. The searches it makes are
** not counted in vecidx_stats. Errors: VECIDX_EINVAL (NULL ix or out,
** k 0, bad queries or opts, truth without queries), VECIDX_ENOMEM,
** VECIDX_ESTATE (too few vectors to sample from, or no query has an
** admissible answer: nothing to measure), VECIDX_ECORRUPT (a reader met
** a damaged piece of the file). */
int vecidx_estimate_recall(vecidx *ix, size_t k, size_t nq,
                           const float *queries, const uint64_t *truth,
                           const vecidx_search_opts *opts, vecidx_recall *out);

/* What vecidx_tune chose. */
typedef struct vecidx_tuning {
    int reached;          /* 1: the target was reached and the setting stored as
                             the index default; 0: not reachable by searching
                             wider (see advice), and nothing was changed */
    uint32_t ef;          /* HNSW: hnsw_ef_search chosen (or best tried) */
    uint32_t nprobe;      /* IVF-PQ: ivf_nprobe chosen (or best tried) */
    uint32_t refine;      /* with kept vectors: the refine factor (ivf_refine
                             or refine); 0 when it does not apply */
    uint32_t steps;       /* settings measured */
    vecidx_recall recall; /* measured at that setting */
    const char *advice;   /* when not reached, what would reach the target;
                             when reached against codes only (vs_codes),
                             that caveat; else "" (static string) */
} vecidx_tuning;

/* Find the cheapest search setting that reaches recall@k `target` (in
** (0, 1]) on the queries described at vecidx_estimate_recall, and make it
** the index default. Tried, smallest first: HNSW ef 10, 16, 24, 32, 48,
** 64, ... 2048 (doubling every two steps); IVF-PQ nprobe 1, 2, 4, ...,
** nlist; with kept float32 vectors, for each of those the refine factors
** 1, 2, 4, 8, 16, 32. The first setting whose measured mean recall
** reaches the target is chosen; the estimate's spread (recall.low) says
** how sure that is -- more queries narrow it. A flat index needs no
** setting (exact, or refine with kept vectors). A file-backed index is
** checkpointed to store the new default in its file (as vecidx_train
** does); if that fails, the default is left as it was.
** Writer: other writes wait while the setting is stored; searches never
** wait. Cost: as vecidx_estimate_recall, plus nq searches per setting
** tried. Without float32 vectors and without `truth` the target is met
** against the codes' own answers: recall.vs_codes is then 1 and advice
** says so (IVF-PQ codes alone top out near 0.8 against the vectors).
** Errors: as vecidx_estimate_recall, and VECIDX_EINVAL (target),
** VECIDX_ESTATE (read-only; IVF-PQ not trained yet), VECIDX_EIO (the
** checkpoint). A target out of reach is not an error: reached is 0. */
int vecidx_tune(vecidx *ix, double target, size_t k, size_t nq,
                const float *queries, const uint64_t *truth,
                vecidx_tuning *out);

#ifdef __cplusplus
}
#endif
#endif /* VECIDX_H */
