/*
** util.c -- shared helpers of the tests: random data, index creation and
** the brute-force reference model that every search is judged against.
*/
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vtest.h"

/* ---- random numbers ------------------------------------------------------ */

uint64_t vt_next(vt_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t vt_below(vt_rng *r, uint64_t n)
{
    return vt_next(r) % n; /* bias below 2^-40 for the n used here */
}

double vt_unit(vt_rng *r)
{
    return (double)(vt_next(r) >> 11) * 0x1.0p-53;
}

float vt_uniform(vt_rng *r, float lo, float hi)
{
    return (float)(lo + (hi - lo) * vt_unit(r));
}

void vt_fill_uniform(vt_rng *r, float *v, size_t n, float lo, float hi)
{
    size_t i;
    for (i = 0; i < n; i++) v[i] = vt_uniform(r, lo, hi);
}

void vt_fill_mixed(vt_rng *r, float *v, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        double m = 1.0 + vt_unit(r);
        int e = (int)vt_below(r, 14) - 6;
        v[i] = (float)(vt_below(r, 2) ? -ldexp(m, e) : ldexp(m, e));
    }
}

void vt_fill_clustered(vt_rng *r, float *v, size_t rows, uint32_t dim,
                       unsigned centres)
{
    float *c = vt_xmalloc((size_t)centres * dim * sizeof *c);
    size_t i;
    uint32_t j;
    vt_fill_uniform(r, c, (size_t)centres * dim, -1.0f, 1.0f);
    for (i = 0; i < rows; i++) {
        const float *ci = c + (size_t)vt_below(r, centres) * dim;
        for (j = 0; j < dim; j++)
            v[i * dim + j] = ci[j] + vt_uniform(r, -0.3f, 0.3f);
    }
    free(c);
}

void vt_vector_for(uint64_t key, uint64_t version, float *v, uint32_t dim)
{
    vt_rng r;
    r.s = key * 0x9e3779b97f4a7c15ull ^ (version + 1) * 0xc2b2ae3d27d4eb4full;
    vt_next(&r);
    vt_fill_uniform(&r, v, dim, -1.0f, 1.0f);
}

void *vt_xmalloc(size_t n)
{
    void *p = calloc(n ? n : 1, 1);
    if (!p) {
        printf("test harness out of memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
}

/* buf = $TMPDIR (or /tmp)/vecidx-NAME-PID followed by end: a name of
** this process's own, so that test programs run side by side (make -j,
** the qemu runs) never share a file. */
void vt_tmp_name(char *buf, size_t size, const char *name, const char *end)
{
    const char *t = getenv("TMPDIR");
    snprintf(buf, size, "%s/vecidx-%s-%ld%s", t && *t ? t : "/tmp", name,
             (long)getpid(), end);
}

/* A new directory of vt_tmp_name's kind in buf; 0, or -1 and a failed
** check. */
int vt_tmp_dir(char *buf, size_t size, const char *name)
{
    vt_tmp_name(buf, size, name, "-XXXXXX");
    if (mkdtemp(buf)) return 0;
    vt_fail(__FILE__, __LINE__, "mkdtemp %s: %s", buf, strerror(errno));
    return -1;
}

/* The whole file at path, in a vt_xmalloc block (caller frees), and its
** length in *len; NULL and 0 when it cannot be opened, and a failed check
** plus NULL when it cannot be read whole. */
unsigned char *vt_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *b;
    long n;
    size_t got;
    *len = 0;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        CHECKF(0, "cannot size %s", path);
        return NULL;
    }
    b = vt_xmalloc((size_t)n + 1);
    got = fread(b, 1, (size_t)n, f);
    fclose(f);
    if (got != (size_t)n) {
        CHECKF(0, "short read of %s: %zu of %ld bytes", path, got, n);
        free(b);
        return NULL;
    }
    *len = got;
    return b;
}

double vt_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

vecidx *vt_create(int kind, int metric, uint32_t dim, uint32_t threads)
{
    vecidx_params p;
    vecidx *ix = NULL;
    CHECK_OK(vecidx_params_init(&p, kind, metric, dim));
    if (threads) p.threads = threads;
    CHECK_OK(vecidx_create(&p, &ix));
    return ix;
}

/* ---- the model ----------------------------------------------------------- */

/* Keys map to rows through a small open-addressing table (row + 1, 0 =
** empty); a key keeps its row when removed, so a re-insert reuses it. */
typedef struct vt_set_hash {
    size_t cap;
    size_t *cell;
} vt_set_hash;

static size_t vt_hash_cap(size_t rows)
{
    size_t c = 16;
    while (c < 2 * rows) c *= 2;
    return c;
}

static size_t vt_hash_key(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (size_t)k;
}

/* The hash table lives behind the live array: one allocation to free. */
static size_t *vt_set_cells(const vt_set *s)
{
    return (size_t *)(void *)(s->live + ((s->cap + 15) & ~(size_t)15));
}

void vt_set_init(vt_set *s, uint32_t dim, size_t cap)
{
    size_t hc = vt_hash_cap(cap);
    s->dim = dim;
    s->n = 0;
    s->cap = cap;
    s->keys = vt_xmalloc(cap * sizeof *s->keys);
    s->vecs = vt_xmalloc(cap * dim * sizeof *s->vecs);
    s->live = vt_xmalloc(((cap + 15) & ~(size_t)15) + hc * sizeof(size_t));
}

void vt_set_free(vt_set *s)
{
    free(s->keys);
    free(s->vecs);
    free(s->live);
    memset(s, 0, sizeof *s);
}

long vt_set_row(const vt_set *s, uint64_t key)
{
    size_t mask = vt_hash_cap(s->cap) - 1, i = vt_hash_key(key) & mask;
    const size_t *cell = vt_set_cells(s);
    for (; cell[i]; i = (i + 1) & mask)
        if (s->keys[cell[i] - 1] == key) return (long)(cell[i] - 1);
    return -1;
}

long vt_set_find(const vt_set *s, uint64_t key)
{
    long r = vt_set_row(s, key);
    return r >= 0 && s->live[r] ? r : -1;
}

void vt_set_put(vt_set *s, uint64_t key, const float *v)
{
    long r = vt_set_row(s, key);
    if (r < 0) {
        size_t mask = vt_hash_cap(s->cap) - 1, i = vt_hash_key(key) & mask;
        size_t *cell = vt_set_cells(s);
        if (s->n == s->cap) {
            printf("test model full (%zu rows)\n", s->cap);
            exit(2);
        }
        while (cell[i]) i = (i + 1) & mask;
        r = (long)s->n++;
        cell[i] = (size_t)r + 1;
        s->keys[r] = key;
    }
    memcpy(s->vecs + (size_t)r * s->dim, v, s->dim * sizeof *v);
    s->live[r] = 1;
}

int vt_set_del(vt_set *s, uint64_t key)
{
    long r = vt_set_find(s, key);
    if (r < 0) return 0;
    s->live[r] = 0;
    return 1;
}

size_t vt_set_count(const vt_set *s)
{
    size_t i, c = 0;
    for (i = 0; i < s->n; i++) c += s->live[i];
    return c;
}

/* ---- reference distances --------------------------------------------- */

double vt_ref_dist(int metric, const float *a, const float *b, uint32_t dim,
                   double *tol)
{
    double s = 0, abs_sum = 0, na = 0, nb = 0, d;
    uint32_t i;
    if (metric == VECIDX_L2) {
        for (i = 0; i < dim; i++) {
            double t = (double)a[i] - (double)b[i];
            s += t * t;
        }
        if (tol) *tol = 1e-5 * s;
        return s;
    }
    for (i = 0; i < dim; i++) {
        s += (double)a[i] * b[i];
        abs_sum += fabs((double)a[i] * b[i]);
        na += (double)a[i] * a[i];
        nb += (double)b[i] * b[i];
    }
    if (metric == VECIDX_IP) {
        if (tol) *tol = 1e-5 * abs_sum;
        return -s;
    }
    na = sqrt(na) * sqrt(nb);
    d = 1.0 - s / na;
    /* the products are scaled by 1/(|a||b|); the 1 covers the rounding
    ** of the norms and the cancellation in 1 - cos */
    if (tol) *tol = 1e-5 * (abs_sum / na + 1.0);
    return d;
}

static int vt_hit_cmp(const void *pa, const void *pb)
{
    const vt_hit *a = pa, *b = pb;
    if (a->d != b->d) return a->d < b->d ? -1 : 1;
    return a->key < b->key ? -1 : a->key > b->key;
}

/* Every live admitted row, sorted; returns how many (out has room for
** s->n entries). */
static size_t vt_ref_all(const vt_set *s, int metric, const float *q,
                         vt_filter_fn filter, void *ctx, vt_hit *out)
{
    size_t i, m = 0;
    for (i = 0; i < s->n; i++) {
        if (!s->live[i]) continue;
        if (filter && !filter(s->keys[i], ctx)) continue;
        out[m].key = s->keys[i];
        out[m].d = vt_ref_dist(metric, q, s->vecs + i * s->dim, s->dim,
                               &out[m].tol);
        m++;
    }
    qsort(out, m, sizeof *out, vt_hit_cmp);
    return m;
}

size_t vt_ref_topk(const vt_set *s, int metric, const float *q, size_t k,
                   vt_filter_fn filter, void *ctx, vt_hit *out)
{
    vt_hit *all = vt_xmalloc((s->n + 1) * sizeof *all);
    size_t m = vt_ref_all(s, metric, q, filter, ctx, all);
    if (m > k) m = k;
    memcpy(out, all, m * sizeof *out);
    free(all);
    return m;
}

/* ---- result checks ------------------------------------------------------- */

int vt_check_sorted(const char *what, const uint64_t *keys, const float *dists,
                    size_t found, size_t k)
{
    size_t i;
    long before = vt_failures();
    CHECKF(found <= k, "%s: found %zu > k %zu", what, found, k);
    if (found > k) return 0;
    for (i = 0; dists && i < found; i++) {
        CHECKF(dists[i] == dists[i], "%s: distance %zu is NaN", what, i);
        if (i == 0) continue;
        CHECKF(dists[i - 1] < dists[i] ||
                   (dists[i - 1] == dists[i] && keys[i - 1] < keys[i]),
               "%s: results %zu (key %llu, %.9g) and %zu (key %llu, %.9g) "
               "are out of order",
               what, i - 1, (unsigned long long)keys[i - 1],
               (double)dists[i - 1], i, (unsigned long long)keys[i],
               (double)dists[i]);
    }
    for (i = found; i < k; i++) {
        CHECKF(keys[i] == UINT64_MAX, "%s: padding key %zu is %llu", what, i,
               (unsigned long long)keys[i]);
        CHECKF(!dists || (isinf(dists[i]) && dists[i] > 0),
               "%s: padding distance %zu is %g", what, i,
               dists ? (double)dists[i] : 0.0);
    }
    return vt_failures() == before;
}

/* Keys distinct, live in the model and admitted by the filter. */
static int vt_u64_cmp(const void *pa, const void *pb)
{
    uint64_t a = *(const uint64_t *)pa, b = *(const uint64_t *)pb;
    return a < b ? -1 : a > b;
}

/* keys[0..n) sorted into a new array, for bsearch. */
static uint64_t *vt_sorted_keys(const uint64_t *keys, size_t n)
{
    uint64_t *c = vt_xmalloc((n + 1) * sizeof *c);
    memcpy(c, keys, n * sizeof *c);
    qsort(c, n, sizeof *c, vt_u64_cmp);
    return c;
}

/* Keys distinct, live in the model and admitted by the filter. */
static void vt_check_members(const char *what, const vt_set *s,
                             vt_filter_fn filter, void *ctx,
                             const uint64_t *keys, size_t found)
{
    uint64_t *sorted = vt_sorted_keys(keys, found);
    size_t i;
    for (i = 0; i < found; i++) {
        CHECKF(vt_set_find(s, keys[i]) >= 0,
               "%s: result %zu, key %llu, is not in the index", what, i,
               (unsigned long long)keys[i]);
        CHECKF(!filter || filter(keys[i], ctx),
               "%s: result %zu, key %llu, is not admitted by the filter", what,
               i, (unsigned long long)keys[i]);
        CHECKF(i == 0 || sorted[i - 1] != sorted[i],
               "%s: key %llu returned twice", what,
               (unsigned long long)sorted[i]);
    }
    free(sorted);
}

static size_t vt_admitted(const vt_set *s, vt_filter_fn filter, void *ctx)
{
    size_t i, m = 0;
    for (i = 0; i < s->n; i++)
        m += s->live[i] && (!filter || filter(s->keys[i], ctx));
    return m;
}

int vt_check_shape(const char *what, const vt_set *s, size_t k,
                   vt_filter_fn filter, void *ctx, const uint64_t *keys,
                   const float *dists, size_t found)
{
    long before = vt_failures();
    size_t m = vt_admitted(s, filter, ctx), want = m < k ? m : k;
    CHECKF(found == want, "%s: found %zu, wanted min(k %zu, admitted %zu)",
           what, found, k, m);
    if (!vt_check_sorted(what, keys, dists, found, k)) return 0;
    vt_check_members(what, s, filter, ctx, keys, found);
    return vt_failures() == before;
}

int vt_check_exact(const char *what, const vt_set *s, int metric,
                   const float *q, size_t k, vt_filter_fn filter, void *ctx,
                   const uint64_t *keys, const float *dists, size_t found)
{
    long before = vt_failures();
    vt_hit *all;
    size_t m, want, i, j;
    double tmax = 0, bound;
    if (!vt_check_shape(what, s, k, filter, ctx, keys, dists, found)) return 0;
    CHECKF(dists != NULL, "%s: exact check needs distances", what);
    if (!dists) return 0;
    all = vt_xmalloc((s->n + 1) * sizeof *all);
    m = vt_ref_all(s, metric, q, filter, ctx, all);
    want = m < k ? m : k;
    for (i = 0; i < m; i++)
        if (all[i].tol > tmax) tmax = all[i].tol;
    /* Each returned distance against its own key's reference, and against
    ** the reference at its rank: if every float distance is within tmax of
    ** its double value, so is every order statistic. */
    for (i = 0; i < found; i++) {
        long r = vt_set_find(s, keys[i]);
        double tol, ref;
        if (r < 0) continue;
        ref = vt_ref_dist(metric, q, s->vecs + (size_t)r * s->dim, s->dim,
                          &tol);
        CHECKF(fabs((double)dists[i] - ref) <= tol,
               "%s: key %llu distance %.9g, reference %.9g (tolerance %.3g)",
               what, (unsigned long long)keys[i], (double)dists[i], ref, tol);
        CHECKF(fabs((double)dists[i] - all[i].d) <= tmax,
               "%s: rank %zu distance %.9g, reference %.9g (key %llu, "
               "tolerance %.3g)",
               what, i, (double)dists[i], all[i].d,
               (unsigned long long)all[i].key, tmax);
    }
    /* Every vector clearly closer than the k-th must be there: its float
    ** distance is below the float distance of the k-th result. */
    if (want > 0) {
        uint64_t *sorted = vt_sorted_keys(keys, found);
        bound = all[want - 1].d - tmax;
        for (j = 0; j < m && all[j].d < bound; j++) {
            int present;
            if (all[j].d + all[j].tol >= bound) continue;
            present = bsearch(&all[j].key, sorted, found, sizeof *sorted,
                              vt_u64_cmp) != NULL;
            CHECKF(present,
                   "%s: key %llu (reference rank %zu, distance %.9g) is "
                   "missing from the top %zu",
                   what, (unsigned long long)all[j].key, j, all[j].d, k);
        }
        free(sorted);
    }
    free(all);
    return vt_failures() == before;
}

double vt_recall(const vt_set *s, int metric, const float *q, size_t k,
                 vt_filter_fn filter, void *ctx, const uint64_t *keys,
                 size_t found)
{
    vt_hit *top = vt_xmalloc((k + 1) * sizeof *top);
    size_t m = vt_ref_topk(s, metric, q, k, filter, ctx, top), i, j, hit = 0;
    for (i = 0; i < m; i++)
        for (j = 0; j < found; j++)
            if (keys[j] == top[i].key) {
                hit++;
                break;
            }
    free(top);
    return m ? (double)hit / (double)m : 1.0;
}

int vt_check_contents(const char *what, vecidx *ix, const vt_set *s)
{
    long before = vt_failures();
    float *v = vt_xmalloc(s->dim * sizeof *v);
    vecidx_stats_t st;
    size_t i, live = vt_set_count(s);
    CHECKF(vecidx_count(ix) == live, "%s: count %zu, model holds %zu", what,
           vecidx_count(ix), live);
    CHECK_OK(vecidx_stats(ix, &st));
    CHECKF(st.count == live, "%s: stats.count %llu, model holds %zu", what,
           (unsigned long long)st.count, live);
    CHECKF(st.slots >= st.count && st.capacity >= st.slots,
           "%s: stats count %llu, slots %llu, capacity %llu", what,
           (unsigned long long)st.count, (unsigned long long)st.slots,
           (unsigned long long)st.capacity);
    for (i = 0; i < s->n; i++) {
        uint64_t key = s->keys[i];
        if (s->live[i]) {
            CHECKF(vecidx_contains(ix, key) == 1, "%s: key %llu missing", what,
                   (unsigned long long)key);
            CHECK_OK(vecidx_get(ix, key, v));
            CHECKF(memcmp(v, s->vecs + i * s->dim, s->dim * sizeof *v) == 0,
                   "%s: key %llu has a different vector", what,
                   (unsigned long long)key);
        } else {
            CHECKF(vecidx_contains(ix, key) == 0,
                   "%s: removed key %llu still present", what,
                   (unsigned long long)key);
            CHECK_RC(vecidx_get(ix, key, v), VECIDX_ENOTFOUND);
        }
    }
    CHECK_OK(vecidx_check(ix));
    free(v);
    return vt_failures() == before;
}

/* ---- building indexes ------------------------------------------------- */

static void vt_fill_rows(vt_rng *r, float *v, size_t rows, uint32_t dim,
                         int data)
{
    if (data == VT_CLUSTERED)
        vt_fill_clustered(r, v, rows, dim, 24);
    else if (data == VT_MIXED)
        vt_fill_mixed(r, v, rows * dim);
    else
        vt_fill_uniform(r, v, rows * dim, -1.0f, 1.0f);
}

void vt_fill_index(vecidx *ix, vt_set *model, size_t n, vt_rng *r, int data)
{
    uint32_t dim = model->dim;
    uint64_t *keys = vt_xmalloc(n * sizeof *keys);
    float *v = vt_xmalloc(n * dim * sizeof *v);
    size_t i, done;
    vt_fill_rows(r, v, n, dim, data);
    for (i = 0; i < n; i++) {
        do keys[i] = vt_next(r);
        while (vt_set_find(model, keys[i]) >= 0);
        vt_set_put(model, keys[i], v + i * dim);
    }
    for (i = 0; i < n / 2; i++) CHECK_OK(vecidx_add(ix, keys[i], v + i * dim));
    for (done = n / 2; done < n;) {
        size_t m = n - done < 500 ? n - done : 500;
        CHECK_OK(vecidx_add_batch(ix, m, keys + done, v + done * dim));
        done += m;
    }
    free(keys);
    free(v);
}

void vt_make_queries(vt_rng *r, const vt_set *model, float *q, size_t nq,
                     int data)
{
    size_t i;
    uint32_t dim = model->dim;
    vt_fill_rows(r, q, nq, dim, data);
    for (i = 0; i < nq && model->n; i += 3) {
        size_t row = (size_t)vt_below(r, model->n);
        memcpy(q + i * dim, model->vecs + row * dim, dim * sizeof *q);
    }
}

/* ---- the test allocator (test_alloc.c, test_ivfpq.c) ------------------- */

void vt_alloc_init(vt_alloc *a)
{
    memset(a, 0, sizeof *a);
    pthread_mutex_init(&a->mu, NULL);
}

void vt_alloc_destroy(vt_alloc *a)
{
    pthread_mutex_destroy(&a->mu);
    free(a->tab);
}

/* Should this call fail? Lock held. */
static int vt_alloc_should_fail(vt_alloc *a)
{
    long c = ++a->calls;
    if (a->fail_at && (c == a->fail_at || (a->persistent && c > a->fail_at))) {
        a->failed++;
        return 1;
    }
    return 0;
}

static long vt_alloc_find(const vt_alloc *a, const void *p)
{
    size_t i;
    for (i = 0; i < a->ntab; i++)
        if (a->tab[i].p == p) return (long)i;
    return -1;
}

static void vt_alloc_track(vt_alloc *a, void *p, size_t n)
{
    if (a->ntab == a->captab) {
        a->captab = a->captab ? 2 * a->captab : 64;
        a->tab = realloc(a->tab, a->captab * sizeof *a->tab);
        if (!a->tab) {
            printf("test allocator out of memory\n");
            exit(2);
        }
    }
    a->tab[a->ntab].p = p;
    a->tab[a->ntab].n = n;
    a->ntab++;
    a->live_bytes += n;
}

static void *vt_malloc_fn(void *ctx, size_t size)
{
    vt_alloc *a = ctx;
    void *p = NULL;
    pthread_mutex_lock(&a->mu);
    if (!vt_alloc_should_fail(a)) {
        p = malloc(size ? size : 1);
        if (p) vt_alloc_track(a, p, size);
    }
    pthread_mutex_unlock(&a->mu);
    return p;
}

static void *vt_realloc_fn(void *ctx, void *ptr, size_t old_size,
                           size_t new_size)
{
    vt_alloc *a = ctx;
    void *p = NULL;
    long i;
    pthread_mutex_lock(&a->mu);
    i = ptr ? vt_alloc_find(a, ptr) : -1;
    if (ptr && i < 0)
        a->bad_ptr++;
    else if (ptr && a->tab[i].n != old_size)
        a->bad_old_size++;
    if (!ptr && old_size != 0) a->bad_old_size++;
    if (!vt_alloc_should_fail(a) && (ptr == NULL || i >= 0)) {
        p = realloc(ptr, new_size ? new_size : 1);
        if (p) {
            if (i >= 0) {
                a->live_bytes -= a->tab[i].n;
                a->tab[i] = a->tab[--a->ntab];
            }
            vt_alloc_track(a, p, new_size);
        }
    }
    pthread_mutex_unlock(&a->mu);
    return p;
}

static void vt_free_fn(void *ctx, void *ptr)
{
    vt_alloc *a = ctx;
    long i;
    pthread_mutex_lock(&a->mu);
    if (ptr == NULL) {
        a->null_free++;
    } else if ((i = vt_alloc_find(a, ptr)) < 0) {
        a->bad_ptr++;
    } else {
        a->live_bytes -= a->tab[i].n;
        a->tab[i] = a->tab[--a->ntab];
        free(ptr);
    }
    pthread_mutex_unlock(&a->mu);
}

long vt_alloc_failed(vt_alloc *a)
{
    long n;
    pthread_mutex_lock(&a->mu);
    n = a->failed;
    pthread_mutex_unlock(&a->mu);
    return n;
}

void vt_alloc_use(vecidx_params *p, vt_alloc *a)
{
    p->allocator.malloc_fn = vt_malloc_fn;
    p->allocator.realloc_fn = vt_realloc_fn;
    p->allocator.free_fn = vt_free_fn;
    p->allocator.ctx = a;
}

/* The handle's own count of the bytes it holds matches the allocator's. */
void vt_check_bytes(const char *what, vecidx *ix, vt_alloc *a)
{
    vecidx_stats_t st;
    size_t live;
    CHECK_OK(vecidx_stats(ix, &st));
    pthread_mutex_lock(&a->mu);
    live = a->live_bytes;
    pthread_mutex_unlock(&a->mu);
    CHECKF(st.memory_bytes == live,
           "%s: stats.memory_bytes %llu, allocator holds %zu bytes", what,
           (unsigned long long)st.memory_bytes, live);
}

/* After close: nothing outstanding, and every call was well formed. */
void vt_check_released(const char *what, vt_alloc *a)
{
    CHECKF(a->ntab == 0 && a->live_bytes == 0,
           "%s: %zu blocks (%zu bytes) not freed", what, a->ntab,
           a->live_bytes);
    CHECKF(a->bad_old_size == 0,
           "%s: realloc_fn got a wrong old_size %ld "
           "times",
           what, a->bad_old_size);
    CHECKF(a->bad_ptr == 0,
           "%s: a pointer the allocator never gave out was "
           "passed back %ld times",
           what, a->bad_ptr);
    CHECKF(a->null_free == 0, "%s: free_fn called with NULL %ld times", what,
           a->null_free);
}
