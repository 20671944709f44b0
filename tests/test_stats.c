/*
** test_stats.c -- what vecidx_stats_ex reports (issue 18): the activity
** counters and latency histograms of the calls made since open, the work
** per search, memory by part, the log and checkpoints, IVF-PQ list
** spread and drift, and the size contract that keeps binaries built
** against vecidx 0.2 working. Counts are asserted exactly against the
** calls the test made; latencies only for order and sanity (never
** against a time, which would make the test depend on the machine).
*/
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vtest.h"

#define SX_DIM 16

static void vt_params_init_or_fail(vecidx_params *p, int kind, int metric,
                                   uint32_t dim)
{
    CHECK_OK(vecidx_params_init(p, kind, metric, dim));
}

static void sx_latency_sane(const char *what, const vecidx_latency *l,
                            uint64_t count)
{
    CHECKF(l->count == count, "%s: %llu calls timed, want %llu", what,
           (unsigned long long)l->count, (unsigned long long)count);
    if (count == 0) {
        CHECKF(l->p50_us == 0 && l->max_us == 0, "%s: empty but not 0", what);
        return;
    }
    CHECKF(l->p50_us > 0 && l->p50_us <= l->p95_us && l->p95_us <= l->p99_us &&
               l->p99_us <= l->max_us,
           "%s: p50 %g p95 %g p99 %g max %g out of order", what, l->p50_us,
           l->p95_us, l->p99_us, l->max_us);
    /* nothing here takes a minute */
    CHECKF(l->max_us < 60e6, "%s: max %g us", what, l->max_us);
}

static vecidx_stats_t sx_stats(vecidx *ix)
{
    vecidx_stats_t st;
    memset(&st, 0xA5, sizeof st);
    CHECK_OK(vecidx_stats_ex(ix, &st, sizeof st));
    return st;
}

/* Writes and searches of every kind, counted exactly. */
static void sx_counters(int kind)
{
    vt_rng r = {7};
    vecidx_params p;
    vecidx *ix = NULL;
    float *v = vt_xmalloc(600 * SX_DIM * sizeof *v), q[10 * SX_DIM];
    uint64_t keys[200], out[10 * 5];
    size_t i, found[10];
    vecidx_search_opts o;
    vecidx_stats_t st;
    CHECK_OK(vecidx_params_init(&p, kind, VECIDX_L2, SX_DIM));
    p.ivf_nlist = 8;
    p.ivf_nprobe = 3;
    p.ivf_train_size = 300;
    p.threads = 1;
    if (vecidx_create(&p, &ix) != VECIDX_OK) {
        CHECK(0);
        free(v);
        return;
    }
    st = sx_stats(ix);
    CHECK(st.searches == 0 && st.inserts == 0 && st.removes == 0);
    sx_latency_sane("fresh search", &st.search_latency, 0);
    vt_fill_uniform(&r, v, 600 * SX_DIM, -1, 1);
    for (i = 0; i < 350; i++) CHECK_OK(vecidx_add(ix, i, v + i * SX_DIM));
    for (i = 0; i < 200; i++) keys[i] = 1000 + i;
    CHECK_OK(vecidx_add_batch(ix, 200, keys, v + 350 * SX_DIM));
    for (i = 0; i < 50; i++)
        CHECK_OK(vecidx_upsert(ix, i, v + (550 + i) * SX_DIM));
    CHECK_RC(vecidx_add(ix, 0, v), VECIDX_EEXIST); /* timed, not counted */
    for (i = 0; i < 20; i++) CHECK_OK(vecidx_remove(ix, 100 + i));
    CHECK_RC(vecidx_remove(ix, 100), VECIDX_ENOTFOUND);
    vt_fill_uniform(&r, q, 10 * SX_DIM, -1, 1);
    for (i = 0; i < 40; i++)
        CHECK_OK(
            vecidx_search(ix, q + i % 10 * SX_DIM, 5, NULL, out, NULL, found));
    memset(&o, 0, sizeof o);
    CHECK_OK(vecidx_search_batch(ix, 10, q, 5, &o, out, NULL, found));
    st = sx_stats(ix);
    CHECK_EQ_U64(st.count, 530);
    CHECK_EQ_U64(st.inserts, 600);
    CHECK_EQ_U64(st.removes, 20);
    CHECK_EQ_U64(st.searches, 50);
    sx_latency_sane("insert", &st.insert_latency, 350 + 1 + 50 + 1);
    sx_latency_sane("remove", &st.remove_latency, 21);
    sx_latency_sane("search", &st.search_latency, 40);
    sx_latency_sane("batch", &st.batch_latency, 1);
    sx_latency_sane("checkpoint", &st.checkpoint_latency, 0);
    CHECKF(st.distances_per_search > 0, "%g", st.distances_per_search);
    if (kind == VECIDX_FLAT) {
        /* an exact scan scores every live vector, no more */
        CHECKF(st.distances_per_search == 530, "flat scored %g a query",
               st.distances_per_search);
        CHECK(st.visited_per_search == 0);
        CHECK(st.mem_links == 0 && st.buried == 0 && st.repairs == 0);
    } else if (kind == VECIDX_HNSW) {
        CHECKF(st.visited_per_search >= 1 &&
                   st.visited_per_search <= st.distances_per_search,
               "visited %g, distances %g", st.visited_per_search,
               st.distances_per_search);
        CHECK(st.mem_links > 0);
    } else {
        CHECK(st.trained);
        /* unfiltered: nprobe lists a query, entries in them scored */
        CHECKF(st.visited_per_search == 3, "%g lists probed a query",
               st.visited_per_search);
        CHECK(st.distances_per_search <= 530);
        CHECK(st.list_min <= st.list_median && st.list_median <= st.list_max);
        CHECK((uint64_t)st.list_max * st.nlist >= st.count);
        CHECK((uint64_t)st.list_min * st.nlist <= st.count);
        /* trained on the first 300, then 250 more added, 50 replaced */
        CHECKF(st.drift > 0.3 && st.drift <= 1, "drift %g", st.drift);
        CHECK(st.mem_lists > 0);
    }
    CHECK(st.log_bytes == 0 && st.log_records == 0 && st.checkpoints == 0);
    CHECK(st.last_checkpoint_time == 0);
    vecidx_close(ix);
    free(v);
}

void test_stats_counters_flat(void)
{
    sx_counters(VECIDX_FLAT);
}

void test_stats_counters_hnsw(void)
{
    sx_counters(VECIDX_HNSW);
}

void test_stats_counters_ivfpq(void)
{
    sx_counters(VECIDX_IVFPQ);
}

/* In memory every allocated byte is in exactly one part. */
void test_stats_memory_parts(void)
{
    static const int kinds[] = {VECIDX_FLAT, VECIDX_HNSW, VECIDX_IVFPQ};
    size_t k;
    for (k = 0; k < 3; k++) {
        vt_rng r = {11};
        vecidx *ix = vt_create(kinds[k], VECIDX_L2, SX_DIM, 1);
        vt_set model;
        vecidx_stats_t st;
        uint64_t sum;
        vt_set_init(&model, SX_DIM, 2000);
        vt_fill_index(ix, &model, 2000, &r, 0);
        st = sx_stats(ix);
        sum = st.mem_vectors + st.mem_links + st.mem_keymap + st.mem_lists +
              st.mem_other;
        CHECKF(
            sum == st.memory_bytes,
            "kind %d: parts %llu+%llu+%llu+%llu+%llu != %llu allocated",
            kinds[k], (unsigned long long)st.mem_vectors,
            (unsigned long long)st.mem_links, (unsigned long long)st.mem_keymap,
            (unsigned long long)st.mem_lists, (unsigned long long)st.mem_other,
            (unsigned long long)st.memory_bytes);
        CHECK(st.mem_keymap >= 2000 * 8);
        if (kinds[k] != VECIDX_IVFPQ || !st.trained)
            CHECK(st.mem_vectors >= 2000ull * SX_DIM * 4);
        if (kinds[k] == VECIDX_HNSW) /* 32 links at level 0 */
            CHECK(st.mem_links >= 2000ull * 32 * 4);
        CHECK(st.mapped_bytes == 0);
        vt_set_free(&model);
        vecidx_close(ix);
    }
}

static void sx_path(char *buf, size_t len, const char *name)
{
    char n[64];
    snprintf(n, sizeof n, "stats-%s", name);
    vt_tmp_name(buf, len, n, ".vx");
}

/* The log and checkpoints of a file-backed index, across reopens. */
void test_stats_log_and_checkpoint(void)
{
    char path[512], wal[530];
    vecidx_params p;
    vecidx *ix = NULL;
    vecidx_stats_t st;
    float v[SX_DIM];
    uint64_t i;
    time_t now;
    sx_path(path, sizeof path, "log");
    snprintf(wal, sizeof wal, "%s-wal", path);
    unlink(path);
    unlink(wal);
    CHECK_OK(vecidx_params_init(&p, VECIDX_HNSW, VECIDX_L2, SX_DIM));
    if (vecidx_open(path, &p, VECIDX_CREATE | VECIDX_SYNC_OFF, &ix) != 0) {
        CHECK(0);
        return;
    }
    st = sx_stats(ix);
    CHECK(st.log_records == 0 && st.checkpoints == 0 && st.log_bytes > 0);
    for (i = 0; i < 10; i++) {
        vt_vector_for(i, 0, v, SX_DIM);
        CHECK_OK(vecidx_add(ix, i, v));
    }
    CHECK_OK(vecidx_remove(ix, 3));
    st = sx_stats(ix);
    CHECK_EQ_U64(st.log_records, 11);
    CHECK(st.log_bytes > 11ull * SX_DIM * 4);
    CHECK(st.mapped_bytes > 0);
    now = time(NULL);
    CHECK_OK(vecidx_checkpoint(ix));
    st = sx_stats(ix);
    CHECK_EQ_U64(st.log_records, 0);
    CHECK_EQ_U64(st.checkpoints, 1);
    sx_latency_sane("checkpoint", &st.checkpoint_latency, 1);
    /* Wall-clock seconds, not a monotonic or millisecond count. The window
    ** is wide because a fresh machine's clock may be stepped while the test
    ** runs (CI once saw it move back over a second between two readings). */
    CHECKF(st.last_checkpoint_time >= (double)now - 600 &&
               st.last_checkpoint_time <= (double)time(NULL) + 600,
           "checkpoint ended at %.3f, now %.0f", st.last_checkpoint_time,
           (double)time(NULL));
    CHECK(st.last_checkpoint_seconds >= 0 &&
          st.last_checkpoint_seconds * 1e6 <= st.checkpoint_latency.max_us);
    for (i = 10; i < 13; i++) {
        vt_vector_for(i, 0, v, SX_DIM);
        CHECK_OK(vecidx_add(ix, i, v));
    }
    vecidx_close(ix);
    /* reopened: the three writes are in the log, not in the file */
    CHECK_OK(vecidx_open(path, NULL, VECIDX_SYNC_OFF, &ix));
    if (ix) {
        st = sx_stats(ix);
        CHECK_EQ_U64(st.log_records, 3);
        CHECK_EQ_U64(st.inserts, 0); /* replay is not the caller's */
        CHECK_EQ_U64(st.count, 12);
        vecidx_close(ix);
    }
    CHECK_OK(vecidx_open(path, NULL, VECIDX_RDONLY, &ix));
    if (ix) {
        st = sx_stats(ix); /* a reader reports the log it replayed */
        CHECK(st.log_bytes > 3ull * SX_DIM * 4);
        CHECK_EQ_U64(st.log_records, 3);
        CHECK_EQ_U64(st.count, 12);
        vecidx_close(ix);
    }
    unlink(path);
    unlink(wal);
}

/* vecidx_stats (the 0.2 function) writes only the 0.2 fields; sizes
** smaller than those are refused, larger ones zero-filled. */
void test_stats_size_contract(void)
{
    vecidx *ix = vt_create(VECIDX_FLAT, VECIDX_L2, SX_DIM, 1);
    size_t old = offsetof(vecidx_stats_t, searches), i;
    unsigned char buf[sizeof(vecidx_stats_t) + 32];
    vecidx_stats_t *st = (vecidx_stats_t *)(void *)buf;
    float v[SX_DIM] = {1};
    int untouched = 1, zero = 1;
    CHECK_OK(vecidx_add(ix, 1, v));
    memset(buf, 0xA5, sizeof buf);
    CHECK_OK((vecidx_stats)(ix, st)); /* the function, not the macro */
    CHECK(st->count == 1 && st->dim == SX_DIM && st->kind == VECIDX_FLAT);
    for (i = old; i < sizeof buf; i++) untouched &= buf[i] == 0xA5;
    CHECK(untouched);
    memset(buf, 0xA5, sizeof buf);
    CHECK_OK(vecidx_stats_ex(ix, st, sizeof buf));
    CHECK(st->count == 1 && st->inserts == 1);
    for (i = sizeof(vecidx_stats_t); i < sizeof buf; i++) zero &= buf[i] == 0;
    CHECK(zero);
    memset(buf, 0xA5, sizeof buf);
    CHECK_OK(vecidx_stats_ex(ix, st, old + 8)); /* a 0.2 struct and a bit */
    CHECK(st->count == 1 && st->searches == 0);
    CHECK(buf[old + 8] == 0xA5);
    CHECK_RC(vecidx_stats_ex(ix, st, old - 1), VECIDX_EINVAL);
    CHECK_RC(vecidx_stats_ex(ix, NULL, sizeof *st), VECIDX_EINVAL);
    CHECK_RC(vecidx_stats_ex(NULL, st, sizeof *st), VECIDX_EINVAL);
    vecidx_close(ix);
}

/* Removals bury HNSW nodes until a repair pass unlinks them. */
void test_stats_buried_and_repairs(void)
{
    vecidx *ix = vt_create(VECIDX_HNSW, VECIDX_L2, SX_DIM, 1);
    vecidx_stats_t st;
    float v[SX_DIM];
    uint64_t k;
    for (k = 0; k < 3000; k++) {
        vt_vector_for(k, 0, v, SX_DIM);
        CHECK_OK(vecidx_add(ix, k, v));
    }
    st = sx_stats(ix);
    CHECK(st.buried == 0 && st.repairs == 0);
    for (k = 0; k < 1000; k++) CHECK_OK(vecidx_remove(ix, k * 3));
    st = sx_stats(ix);
    CHECK_EQ_U64(st.removes, 1000);
    CHECKF(st.repairs >= 1, "%llu repairs after 1000 removals",
           (unsigned long long)st.repairs);
    CHECK(st.buried <= 1000);
    vecidx_close(ix);
}

/* ---- recall estimates and tuning ------------------------------------------
 */

#define TX_DIM 24
#define TX_N 6000
#define TX_Q 200
#define TX_K 10

typedef struct tx_fix {
    vecidx *ix;
    vt_set model;
    float q[2 * TX_Q * TX_DIM]; /* tuning queries, then held-out ones */
    uint64_t truth[2 * TX_Q * TX_K];
} tx_fix;

/* An index of kind over clustered data, queries near the data, and their
** exact answers by brute force. */
static void tx_setup(tx_fix *f, vecidx_params *p)
{
    vt_rng r = {21};
    vt_hit top[TX_K];
    size_t i, j, m;
    if (vecidx_create(p, &f->ix) != VECIDX_OK) {
        f->ix = NULL;
        CHECK(0);
        return;
    }
    vt_set_init(&f->model, TX_DIM, TX_N);
    vt_fill_index(f->ix, &f->model, TX_N, &r, VT_CLUSTERED);
    vt_make_queries(&r, &f->model, f->q, 2 * TX_Q, VT_CLUSTERED);
    for (i = 0; i < 2 * TX_Q; i++) {
        m = vt_ref_topk(&f->model, p->metric, f->q + i * TX_DIM, TX_K, NULL,
                        NULL, top);
        for (j = 0; j < TX_K; j++)
            f->truth[i * TX_K + j] = j < m ? top[j].key : UINT64_MAX;
    }
}

static void tx_teardown(tx_fix *f)
{
    vt_set_free(&f->model);
    vecidx_close(f->ix);
}

/* Recall of the index defaults on the held-out queries, by brute force. */
static double tx_heldout(tx_fix *f, int metric)
{
    uint64_t keys[TX_K];
    size_t i, found;
    double sum = 0;
    for (i = TX_Q; i < 2 * TX_Q; i++) {
        const float *q = f->q + i * TX_DIM;
        CHECK_OK(vecidx_search(f->ix, q, TX_K, NULL, keys, NULL, &found));
        sum += vt_recall(&f->model, metric, q, TX_K, NULL, NULL, keys, found);
    }
    return sum / TX_Q;
}

/* The estimate against brute force: the library's exact scan and the
** caller's truth give the same recall; flat is exact. */
void test_recall_estimate(void)
{
    static tx_fix f;
    vecidx_params p;
    vecidx_recall a, b;
    vecidx_search_opts o;
    int kind;
    for (kind = VECIDX_FLAT; kind <= VECIDX_HNSW; kind++) {
        vt_params_init_or_fail(&p, kind, VECIDX_L2, TX_DIM);
        p.threads = 1;
        tx_setup(&f, &p);
        if (!f.ix) return;
        memset(&o, 0, sizeof o);
        o.ef = 10;
        CHECK_OK(vecidx_estimate_recall(f.ix, TX_K, TX_Q, f.q, NULL, &o, &a));
        CHECK_OK(
            vecidx_estimate_recall(f.ix, TX_K, TX_Q, f.q, f.truth, &o, &b));
        CHECKF(fabs(a.recall - b.recall) < 1e-9, "kind %d: scan %g, truth %g",
               kind, a.recall, b.recall);
        CHECK(a.queries == TX_Q && a.k == TX_K && a.search_us > 0);
        CHECK(a.low <= a.recall && a.recall <= a.high);
        if (kind == VECIDX_FLAT) CHECK(a.recall == 1.0 && a.low == 1.0);
        /* sample queries made from stored vectors: a sane estimate */
        CHECK_OK(vecidx_estimate_recall(f.ix, TX_K, 0, NULL, NULL, &o, &a));
        CHECKF(a.queries == 200 && a.recall > 0.5 && a.recall <= 1.0,
               "sample: %u queries, recall %g", a.queries, a.recall);
        tx_teardown(&f);
    }
}

void test_recall_tune_hnsw(void)
{
    static tx_fix f;
    vecidx_params p;
    static const uint32_t ef[] = {10,  16,  24,  32,  48,  64,   96,   128,
                                  192, 256, 384, 512, 768, 1024, 1536, 2048};
    vecidx_tuning t;
    vecidx_stats_t st;
    vecidx_search_opts o;
    vecidx_recall r;
    double held;
    size_t i;
    vt_params_init_or_fail(&p, VECIDX_HNSW, VECIDX_L2, TX_DIM);
    p.threads = 1;
    p.hnsw_ef_search = 200;
    p.hnsw_m = 6; /* a sparse graph, so that a small ef loses recall */
    p.hnsw_ef_construction = 20;
    tx_setup(&f, &p);
    if (!f.ix) return;
    CHECK_OK(vecidx_tune(f.ix, 0.95, TX_K, TX_Q, f.q, f.truth, &t));
    CHECK(t.reached && *t.advice == 0 && t.steps >= 1);
    CHECKF(t.recall.recall >= 0.95, "tuned recall %g", t.recall.recall);
    CHECKF(t.ef > 10, "ef %u: the sparse graph should need more", t.ef);
    CHECK_OK(vecidx_stats(f.ix, &st));
    CHECK(st.ef_search == t.ef);
    held = tx_heldout(&f, VECIDX_L2);
    CHECKF(held >= 0.93, "held-out recall %g at ef %u", held, t.ef);
    /* the smallest: the sweep's step below falls short on those queries */
    for (i = 1; i < sizeof ef / sizeof *ef; i++)
        if (ef[i] == t.ef) {
            memset(&o, 0, sizeof o);
            o.ef = ef[i - 1];
            CHECK_OK(
                vecidx_estimate_recall(f.ix, TX_K, TX_Q, f.q, f.truth, &o, &r));
            CHECKF(r.recall < 0.95, "ef %u already reaches %g", o.ef, r.recall);
        }
    /* a target out of reach of any ef changes nothing */
    CHECK_OK(vecidx_tune(f.ix, 1.0, TX_K, TX_Q, f.q, f.truth, &t));
    if (!t.reached) {
        CHECK(*t.advice != 0 && t.recall.recall < 1.0);
        CHECK_OK(vecidx_stats(f.ix, &st));
        CHECK(st.ef_search != 0);
    }
    tx_teardown(&f);
}

void test_recall_tune_ivfpq(void)
{
    static tx_fix f;
    vecidx_params p;
    vecidx_tuning t;
    vecidx_stats_t st;
    int keep;
    for (keep = 0; keep < 2; keep++) {
        vt_params_init_or_fail(&p, VECIDX_IVFPQ, VECIDX_L2, TX_DIM);
        p.threads = 1;
        p.ivf_nlist = 32;
        p.ivf_nprobe = 3;
        p.pq_m = 4; /* coarse codes: their recall tops out low */
        p.ivf_train_size = 3000;
        p.ivf_keep_vectors = (uint32_t)keep;
        tx_setup(&f, &p);
        if (!f.ix) return;
        CHECK_OK(vecidx_tune(f.ix, 0.95, TX_K, TX_Q, f.q, f.truth, &t));
        CHECK_OK(vecidx_stats(f.ix, &st));
        if (!keep) { /* 4-byte codes of 24 dimensions cannot reach it */
            CHECKF(!t.reached && *t.advice && t.recall.recall < 0.95,
                   "codes only: reached %d, recall %g", t.reached,
                   t.recall.recall);
            CHECK(st.nprobe == 3 && t.recall.vs_codes == 0);
            /* without truth it can only measure against the codes, and
            ** must say so */
            CHECK_OK(vecidx_tune(f.ix, 0.5, TX_K, TX_Q, f.q, NULL, &t));
            CHECKF(t.reached && t.recall.vs_codes && *t.advice,
                   "against codes: reached %d, vs_codes %d, advice '%s'",
                   t.reached, t.recall.vs_codes, t.advice);
        } else {
            CHECK(t.recall.vs_codes == 0 && *t.advice == 0);
            CHECKF(t.reached && t.refine >= 1 && t.nprobe >= 1,
                   "kept: reached %d at nprobe %u refine %u, recall %g",
                   t.reached, t.nprobe, t.refine, t.recall.recall);
            CHECK(st.nprobe == t.nprobe && st.refine == t.refine);
            CHECKF(tx_heldout(&f, VECIDX_L2) >= 0.93, "held-out %g",
                   tx_heldout(&f, VECIDX_L2));
        }
        tx_teardown(&f);
    }
}

/* A tuned default lives in the file; bad arguments are refused. */
void test_recall_tune_file_and_errors(void)
{
    static tx_fix f;
    char path[512], wal[530];
    vecidx_params p;
    vecidx_tuning t;
    vecidx_recall r;
    vecidx_stats_t st;
    vecidx *ix = NULL;
    sx_path(path, sizeof path, "tune");
    snprintf(wal, sizeof wal, "%s-wal", path);
    vt_params_init_or_fail(&p, VECIDX_HNSW, VECIDX_L2, TX_DIM);
    p.threads = 1;
    tx_setup(&f, &p);
    if (!f.ix) return;
    CHECK_RC(vecidx_tune(f.ix, 0, TX_K, 0, NULL, NULL, &t), VECIDX_EINVAL);
    CHECK_RC(vecidx_tune(f.ix, 1.5, TX_K, 0, NULL, NULL, &t), VECIDX_EINVAL);
    CHECK_RC(vecidx_tune(f.ix, 0.9, 0, 0, NULL, NULL, &t), VECIDX_EINVAL);
    CHECK_RC(vecidx_tune(f.ix, 0.9, TX_K, 0, NULL, f.truth, &t), VECIDX_EINVAL);
    CHECK_RC(vecidx_tune(f.ix, 0.9, TX_K, 0, NULL, NULL, NULL), VECIDX_EINVAL);
    CHECK_RC(vecidx_estimate_recall(f.ix, TX_K, 5, f.q, NULL, NULL, NULL),
             VECIDX_EINVAL);
    unlink(path);
    unlink(wal);
    CHECK_OK(vecidx_save(f.ix, path));
    tx_teardown(&f);
    CHECK_OK(vecidx_open(path, NULL, VECIDX_SYNC_OFF, &ix));
    if (!ix) return;
    CHECK_OK(vecidx_tune(ix, 0.9, TX_K, 0, NULL, NULL, &t)); /* sampled */
    CHECK(t.reached);
    vecidx_close(ix);
    CHECK_OK(vecidx_open(path, NULL, VECIDX_RDONLY, &ix));
    if (!ix) return;
    CHECK_OK(vecidx_stats(ix, &st));
    CHECKF(st.ef_search == t.ef, "reopened: ef %u, tuned %u", st.ef_search,
           t.ef);
    CHECK_RC(vecidx_tune(ix, 0.9, TX_K, 0, NULL, NULL, &t), VECIDX_ESTATE);
    CHECK_OK(vecidx_estimate_recall(ix, TX_K, 50, NULL, NULL, NULL, &r));
    CHECK(r.queries == 50);
    vecidx_close(ix);
    unlink(path);
    unlink(wal);
    /* nothing stored: no queries can be made */
    ix = vt_create(VECIDX_HNSW, VECIDX_L2, TX_DIM, 1);
    CHECK_RC(vecidx_estimate_recall(ix, TX_K, 0, NULL, NULL, NULL, &r),
             VECIDX_ESTATE);
    /* given queries, but nothing to find: nothing to measure */
    CHECK_RC(vecidx_estimate_recall(ix, TX_K, 2, f.q, NULL, NULL, &r),
             VECIDX_ESTATE);
    CHECK_RC(vecidx_tune(ix, 0.9, TX_K, 2, f.q, NULL, &t), VECIDX_ESTATE);
    vecidx_close(ix);
    ix = vt_create(VECIDX_IVFPQ, VECIDX_L2, TX_DIM, 1); /* untrained */
    CHECK_RC(vecidx_tune(ix, 0.9, TX_K, 0, NULL, NULL, &t), VECIDX_ESTATE);
    vecidx_close(ix);
}
