/* Crash, power-loss and fault-injection tests of the write-ahead log.
**
** A separate binary, because it reaches into the library: it includes
** vecidx.c to replace the I/O table (vx_io_cur) with a simulator.
**   - power cut: every write reaches the real file at once and is also
**     remembered until the file is synced; at a chosen I/O call the power
**     "fails" (that call and every later one fail), the handle is closed,
**     and each file is rebuilt as a cut could leave it: its contents at the
**     last fsync plus each later write applied, dropped or torn, in order.
**     After reopening, SYNC_FULL must hold every acknowledged write (plus
**     at most the one in flight); NORMAL and OFF must hold a prefix of the
**     writes, in order, with no holes.
**   - fault injection: one I/O call fails (ENOSPC, EIO, or a short write
**     then ENOSPC); the workload goes on, and after reopening exactly the
**     writes that reported success are there.
**   - SIGKILL: a child writes random adds, batches, upserts and removes
**     with SYNC_FULL and reports each write (before and after) through a
**     pipe; the parent kills it after a random delay or at a chosen I/O
**     call inside a checkpoint, a training or a recovery, reopens
**     (read-only, then as the writer) and checks that every acknowledged
**     write is there (and the one in flight wholly or not at all),
**     vecidx_check passes, and searches are unchanged: exact for flat and
**     IVF-PQ (all lists, re-ranked), and for HNSW identical to an
**     in-memory index given the same writes. Flat, HNSW and IVF-PQ, L2
**     and cosine, up to three kills in a row on one index.
** Ends with "N passed, N failed". CRASH_TRIALS=N in the environment scales
** the number of trials (`make crash-soak`). */
#define _DEFAULT_SOURCE
/* Repair passes in steps of a few nodes, and automatic checkpoints after
** a few kilobytes of log written a few kilobytes a step, so that both span
** many writes (and explicit checkpoints), and kills land in the middle of
** them. */
#define VX_PASS_STEP 64
#define VX_WAL_AUTO_CHECKPOINT 3000u
#define VX_SNAP_STEP 2048u
#include "../../vecidx.c"

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

/* ---- the simulated I/O layer ------------------------------------------ */

#define SIM_DIR "/tmp/vx-sim-"
#define SIM_MAXF 16
#define SIM_MAXW 8192

typedef struct sim_write {
    off_t off;
    size_t n;
    unsigned char *data; /* NULL for a truncation to off */
} sim_write;

typedef struct sim_file {
    char path[256];
    unsigned char *durable; /* contents at the last fsync */
    size_t dlen;
    int dexists;
    sim_write w[SIM_MAXW]; /* changes since then, in order */
    int nw;
} sim_file;

static sim_file sim_files[SIM_MAXF];
static int sim_nfiles;
static char sim_fdpath[1024][256];
static long sim_calls;   /* I/O calls so far */
static long sim_cut_at;  /* the power fails at this call (0: never) */
static long sim_fail_at; /* only this call fails (0: never) */
static int sim_short;    /* ... and it is a short write, then ENOSPC */
/* When non-zero, the sim_hdr_fail-th write at offset 0 of a temporary
** file (a header of a save or checkpoint) fails, and only that one. */
static int sim_hdr_fail;
static int sim_down; /* the power has failed */
static uint64_t sim_rng = 1;

static uint64_t sim_rand(void)
{
    uint64_t z = (sim_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Count a call; non-zero (errno set) when it must fail. */
static int sim_tick(void)
{
    if (sim_down) {
        errno = EIO;
        return 1;
    }
    ++sim_calls;
    if (sim_fail_at && sim_calls == sim_fail_at) {
        errno = sim_calls % 2 ? ENOSPC : EIO;
        return 1;
    }
    if (sim_cut_at && sim_calls >= sim_cut_at) {
        sim_down = 1;
        errno = EIO;
        return 1;
    }
    return 0;
}

static unsigned char *sim_slurp(const char *path, size_t *len, int *exists)
{
    FILE *f = fopen(path, "rb");
    unsigned char *b;
    long n;
    *exists = f != NULL;
    *len = 0;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (!(b = malloc(n ? (size_t)n : 1))) abort();
    if (n && fread(b, 1, (size_t)n, f) != (size_t)n) abort();
    fclose(f);
    *len = (size_t)n;
    return b;
}

static int sim_tracked(const char *path)
{
    return strncmp(path, SIM_DIR, strlen(SIM_DIR)) == 0;
}

static sim_file *sim_get(const char *path)
{
    int i;
    for (i = 0; i < sim_nfiles; i++)
        if (strcmp(sim_files[i].path, path) == 0) return &sim_files[i];
    if (sim_nfiles == SIM_MAXF) abort();
    i = sim_nfiles++;
    memset(&sim_files[i], 0, sizeof sim_files[i]);
    snprintf(sim_files[i].path, sizeof sim_files[i].path, "%s", path);
    sim_files[i].durable = sim_slurp(path, &sim_files[i].dlen,
                                     &sim_files[i].dexists);
    return &sim_files[i];
}

static void sim_remember(int fd, off_t off, const void *data, size_t n)
{
    sim_file *f;
    if (fd < 0 || fd >= 1024 || !sim_tracked(sim_fdpath[fd])) return;
    f = sim_get(sim_fdpath[fd]);
    if (f->nw == SIM_MAXW) abort();
    f->w[f->nw].off = off;
    f->w[f->nw].n = n;
    f->w[f->nw].data = NULL;
    if (data) {
        if (!(f->w[f->nw].data = malloc(n ? n : 1))) abort();
        memcpy(f->w[f->nw].data, data, n);
    }
    f->nw++;
}

static void sim_forget(sim_file *f)
{
    int i;
    for (i = 0; i < f->nw; i++) free(f->w[i].data);
    f->nw = 0;
}

static int sim_open(const char *path, int flags, int mode)
{
    int fd;
    if (sim_tick()) return -1;
    if (sim_tracked(path)) sim_get(path);
    fd = open(path, flags | O_CLOEXEC, mode);
    if (fd >= 0 && fd < 1024)
        snprintf(sim_fdpath[fd], sizeof sim_fdpath[fd], "%s", path);
    return fd;
}

static ssize_t sim_pwrite(int fd, const void *buf, size_t n, off_t off)
{
    if (sim_hdr_fail && off == 0 && fd >= 0 && fd < 1024 &&
        strstr(sim_fdpath[fd], ".tmp-") && --sim_hdr_fail == 0) {
        errno = EIO;
        return -1;
    }
    if (sim_short && sim_fail_at && sim_calls + 1 == sim_fail_at && n > 1)
        n /= 2; /* this call writes half; the next one fails */
    else if (sim_tick())
        return -1;
    sim_remember(fd, off, buf, n);
    return pwrite(fd, buf, n, off);
}

static int sim_ftruncate(int fd, off_t len)
{
    if (sim_tick()) return -1;
    sim_remember(fd, len, NULL, 0);
    return ftruncate(fd, len);
}

static int sim_fsync(int fd)
{
    if (sim_tick()) return -1;
    if (fd >= 0 && fd < 1024 && sim_tracked(sim_fdpath[fd])) {
        sim_file *f = sim_get(sim_fdpath[fd]);
        free(f->durable);
        f->durable = sim_slurp(f->path, &f->dlen, &f->dexists);
        sim_forget(f);
    }
    /* No real fsync: the simulator keeps the durable contents itself, and
    ** the power never really fails; thousands of trials would only wait
    ** for the disk (most of this group's time, on a slow one). */
    return fcntl(fd, F_GETFD) == -1 ? -1 : 0;
}

/* vx_file_save syncs the temporary file before renaming it and syncs the
** directory right after, so the renamed file's durable contents are the
** synced ones. (A cut between rename and directory sync could also keep
** the old name; both outcomes are valid states for the library.) */
static int sim_rename(const char *from, const char *to)
{
    sim_file *a, *b;
    int i;
    if (sim_tick()) return -1;
    a = sim_get(from);
    b = sim_get(to);
    free(b->durable);
    sim_forget(b);
    b->durable = a->durable;
    b->dlen = a->dlen;
    b->dexists = a->dexists;
    a->durable = NULL;
    a->dlen = 0;
    a->dexists = 0;
    sim_forget(a);
    /* A file still open under the old name is written under the new. */
    for (i = 0; i < 1024; i++)
        if (strcmp(sim_fdpath[i], from) == 0)
            snprintf(sim_fdpath[i], sizeof sim_fdpath[i], "%s", to);
    return rename(from, to);
}

static int sim_close(int fd)
{
    return close(fd);
}
static int sim_unlink(const char *p)
{
    return unlink(p);
}
static int sim_flock(int fd, int op)
{
    return flock(fd, op);
}

static int sim_fstat(int fd, struct stat *st)
{
    return sim_tick() ? -1 : fstat(fd, st);
}

static ssize_t sim_pread(int fd, void *b, size_t n, off_t off)
{
    return sim_tick() ? -1 : pread(fd, b, n, off);
}

static void *sim_mmap(size_t len, int prot, int fd)
{
    return sim_tick() ? NULL : vx_sys_mmap(len, prot, fd);
}

static const vx_io sim_io = {sim_open,      sim_close,  sim_pread, sim_pwrite,
                             sim_ftruncate, sim_flock,  sim_fsync, sim_fstat,
                             sim_rename,    sim_unlink, sim_mmap,  munmap};

/* One unsynced change as the cut leaves it: applied, dropped or torn. */
static void sim_apply(unsigned char **img, size_t *len, size_t *cap,
                      const sim_write *w, int random)
{
    uint64_t r = random ? sim_rand() % 4 : 0;
    size_t n = w->n, end;
    if (!random || r == 0) return; /* dropped */
    if (!w->data) {                /* truncation */
        if ((size_t)w->off < *len) *len = (size_t)w->off;
        return;
    }
    if (r == 1) n = (size_t)(sim_rand() % (w->n + 1)); /* torn */
    end = (size_t)w->off + n;
    if (end > *cap) {
        *cap = end;
        if (!(*img = realloc(*img, *cap))) abort();
    }
    if ((size_t)w->off > *len) memset(*img + *len, 0, (size_t)w->off - *len);
    memcpy(*img + w->off, w->data, n);
    if (end > *len) *len = end;
}

/* Rebuild every tracked file as a power cut would leave it; random = 0
** drops every unsynced change, 1 applies, drops or tears each. */
static void sim_power_cut(int random)
{
    int i, j;
    for (i = 0; i < sim_nfiles; i++) {
        sim_file *f = &sim_files[i];
        size_t len = f->dlen, cap = f->dlen + 1;
        unsigned char *img = malloc(cap);
        if (!img) abort();
        if (f->dlen) memcpy(img, f->durable, f->dlen);
        for (j = 0; j < f->nw; j++)
            sim_apply(&img, &len, &cap, &f->w[j], random);
        if (f->dexists || len) {
            FILE *o = fopen(f->path, "wb");
            if (!o || (len && fwrite(img, 1, len, o) != len)) abort();
            fclose(o);
        } else {
            unlink(f->path);
        }
        free(img);
        free(f->durable);
        sim_forget(f);
    }
    sim_nfiles = 0;
    sim_down = 0;
    sim_calls = sim_cut_at = sim_fail_at = 0;
    sim_short = 0;
}

/* ---- workload and model ------------------------------------------------ */

#define D 4
#define NK 64 /* keys 0..NK-1 */
/* Per process, so that parallel runs (make -j, sanitizer builds) of this
** test never share files. */
static char PATH[64], WALPATH[80];

/* The model: the version of each key's vector, or -1 when absent. */
typedef int model_t[NK];

typedef struct op {
    uint64_t key;
    int ver; /* version written, -1 for a removal */
} op;

static void vec_of(uint64_t k, int ver, float *v)
{
    int j;
    for (j = 0; j < D; j++)
        v[j] = (float)((k * 7 + (uint64_t)j * 13 + (uint64_t)ver * 31) % 97) /
                   97.0f +
               0.01f;
}

static int state_is(vecidx *ix, const model_t m)
{
    int k;
    for (k = 0; k < NK; k++) {
        float got[D], want[D];
        int rc = vecidx_get(ix, (uint64_t)k, got);
        if (m[k] < 0) {
            if (rc != VECIDX_ENOTFOUND) return 0;
            continue;
        }
        vec_of((uint64_t)k, m[k], want);
        if (rc != VECIDX_OK || memcmp(got, want, sizeof want) != 0) return 0;
    }
    return 1;
}

static void remove_files(void)
{
    unlink(PATH);
    unlink(WALPATH);
}

/* A fresh empty index file, written with the real I/O layer. Every
** third flat or HNSW one stores int8 codes and keeps its vectors (format
** version 4: codes, kept vectors, the storage word), so power cuts and
** failed calls meet that layout too; vecidx_get stays exact. */
static int make_index(int kind)
{
    static unsigned made;
    vecidx_params p;
    vecidx *ix;
    remove_files();
    vecidx_params_init(&p, kind, VECIDX_L2, D);
    if (kind != VECIDX_IVFPQ && made++ % 3 == 2) {
        p.storage = VECIDX_STORE_I8;
        p.keep_vectors = 1;
    }
    p.hnsw_m = 4;
    p.hnsw_ef_construction = 16;
    p.threads = 1;
    if (vecidx_open(PATH, &p, VECIDX_CREATE, &ix) != VECIDX_OK) return 0;
    vecidx_close(ix);
    return 1;
}

/* One random write against the model; returns the call's result. */
static int random_write(vecidx *ix, model_t m, op *o)
{
    uint64_t k = sim_rand() % NK;
    float v[D];
    o->key = k;
    if (m[k] < 0) {
        o->ver = 0;
        vec_of(k, 0, v);
        return vecidx_add(ix, k, v);
    }
    if (sim_rand() % 3 == 0) {
        o->ver = -1;
        return vecidx_remove(ix, k);
    }
    o->ver = m[k] + 1;
    vec_of(k, o->ver, v);
    return vecidx_upsert(ix, k, v);
}

/* Run writes until one fails (the power went) or nops have run; every 60
** writes a checkpoint. Returns the number of writes attempted. */
static int run_until_cut(vecidx *ix, model_t acked, op *ops, int nops)
{
    int i;
    for (i = 0; i < nops; i++) {
        if (random_write(ix, acked, &ops[i]) != VECIDX_OK) return i + 1;
        acked[ops[i].key] = ops[i].ver;
        if (i % 60 == 59 && vecidx_checkpoint(ix) != VECIDX_OK) return i + 1;
    }
    return nops;
}

/* Is the reopened index at some prefix of the writes? */
static int is_prefix(vecidx *ix, const op *ops, int n)
{
    model_t m;
    int i;
    for (i = 0; i < NK; i++) m[i] = -1;
    if (state_is(ix, m)) return 1;
    for (i = 0; i < n; i++) {
        m[ops[i].key] = ops[i].ver;
        if (state_is(ix, m)) return 1;
    }
    return 0;
}

static int power_cut_trial(int kind, unsigned sync, long cut_at, int random,
                           uint64_t seed)
{
    op ops[300];
    model_t acked;
    vecidx *ix;
    int n = 0, ok, k;
    if (!make_index(kind)) return 0;
    for (k = 0; k < NK; k++) acked[k] = -1;
    sim_rng = seed;
    vx_io_cur = &sim_io;
    sim_cut_at = cut_at;
    if (vecidx_open(PATH, NULL, sync, &ix) == VECIDX_OK) {
        n = run_until_cut(ix, acked, ops, 300);
        vecidx_close(ix);
    }
    vx_io_cur = &vx_io_sys;
    sim_power_cut(random);
    if (vecidx_open(PATH, NULL, 0, &ix) != VECIDX_OK) {
        printf("  power cut at call %ld: reopen failed: %s\n", cut_at,
               vecidx_errmsg(NULL));
        return 0;
    }
    ok = vecidx_check(ix) == VECIDX_OK;
    if (ok && sync == VECIDX_SYNC_FULL) {
        ok = state_is(ix, acked);
        if (!ok && n > 0) { /* the write in flight may have made it */
            acked[ops[n - 1].key] = ops[n - 1].ver;
            ok = state_is(ix, acked);
        }
    } else if (ok) {
        ok = is_prefix(ix, ops, n);
    }
    if (!ok)
        printf("  power cut: kind %d sync 0x%x call %ld torn %d: lost "
               "writes\n",
               kind, sync, cut_at, random);
    vecidx_close(ix);
    return ok;
}

static int fault_trial(int kind, long fail_at, int short_write)
{
    model_t m;
    vecidx *ix;
    int i, k, ok = 1;
    if (!make_index(kind)) return 0;
    for (k = 0; k < NK; k++) m[k] = -1;
    vx_io_cur = &sim_io;
    sim_fail_at = fail_at;
    sim_short = short_write;
    if (vecidx_open(PATH, NULL, VECIDX_SYNC_FULL, &ix) == VECIDX_OK) {
        for (i = 0; i < 120 && ok; i++) {
            op o;
            int rc = random_write(ix, m, &o);
            if (rc == VECIDX_OK)
                m[o.key] = o.ver;
            else if (rc != VECIDX_EIO)
                ok = 0;
            if (i % 40 == 39) vecidx_checkpoint(ix);
            if (vecidx_check(ix) != VECIDX_OK) ok = 0;
        }
        if (!state_is(ix, m)) ok = 0;
        vecidx_close(ix);
    }
    vx_io_cur = &vx_io_sys;
    sim_power_cut(0);
    if (vecidx_open(PATH, NULL, 0, &ix) != VECIDX_OK) {
        printf("  fault at call %ld: reopen failed: %s\n", fail_at,
               vecidx_errmsg(NULL));
        return 0;
    }
    ok = ok && state_is(ix, m) && vecidx_check(ix) == VECIDX_OK;
    if (!ok)
        printf("  fault at call %ld (short %d): state differs\n", fail_at,
               short_write);
    vecidx_close(ix);
    return ok;
}

/* A checkpoint with no write during it fails to write its header (the
** header is written last, when the rest of the file is in place). When a
** header write failed -- then a second one, which dropped the log chain --
** the checkpoint used to go on as if the file were installed -- it was
** not -- and restart the log: every write since the last checkpoint was
** lost. It must fail with EIO, leave the old file and its log whole, and
** lose nothing. */
static int header_rewrite_trial(int kind)
{
    model_t m;
    vecidx *ix;
    int i, k, ok = 1, rc = VECIDX_OK;
    if (!make_index(kind)) return 0;
    for (k = 0; k < NK; k++) m[k] = -1;
    vx_io_cur = &sim_io;
    if (vecidx_open(PATH, NULL, VECIDX_SYNC_FULL, &ix) != VECIDX_OK) ok = 0;
    for (i = 0; ok && i < 30; i++) {
        op o;
        if (random_write(ix, m, &o) != VECIDX_OK) ok = 0;
        m[o.key] = o.ver;
    }
    if (ok) {
        sim_hdr_fail = 1;
        rc = vecidx_checkpoint(ix);
        ok = rc == VECIDX_EIO && sim_hdr_fail == 0 && state_is(ix, m);
        sim_hdr_fail = 0;
        vecidx_close(ix);
    }
    vx_io_cur = &vx_io_sys;
    sim_power_cut(0);
    if (vecidx_open(PATH, NULL, 0, &ix) != VECIDX_OK) {
        printf("  header rewrite: reopen failed: %s\n", vecidx_errmsg(NULL));
        return 0;
    }
    ok = ok && state_is(ix, m) && vecidx_check(ix) == VECIDX_OK;
    if (!ok)
        printf("  header rewrite: kind %d, checkpoint returned %d: writes "
               "lost or state differs\n",
               kind, rc);
    vecidx_close(ix);
    return ok;
}

/* ---- SIGKILL ------------------------------------------------------------ */

/* A child process writes with SYNC_FULL and tells the parent through a
** pipe about each write before it starts (INTENT, one per key) and after it
** returned (ACK). The parent kills it with SIGKILL, reopens, and checks that
** the index holds every acknowledged write, and the one in flight wholly or
** not at all. The kill comes after a random delay, or -- because a timer
** rarely lands inside a checkpoint or a recovery, which are short -- when
** the child's I/O layer reports that it has reached a chosen I/O call and
** stops there (STALL), so every step of those is hit in turn. A killed
** process leaves the page cache intact: this tests the order and content
** of the library's writes; the power cuts above test its fsyncs. */

#define SK_DIM 8
#define SK_NK 256 /* keys 0..SK_NK-1 */
#define SK_NQ 50  /* queries of the recall check */
#define SK_K 10
#define SK_BATCH 4 /* largest vecidx_add_batch */

enum {
    SK_INTENT = 1,
    SK_ACK = 2,
    SK_STALL = 3
};
/* The call behind an INTENT. */
enum {
    SK_OP_ADD = 1,
    SK_OP_UPSERT = 2,
    SK_OP_REMOVE = 3,
    SK_OP_BATCH = 4 /* vecidx_add_batch: one INTENT per key */
};
/* What the child was doing, sent with SK_STALL. */
enum {
    SK_IN_OPEN = 0,
    SK_IN_WRITE = 1,
    SK_IN_CKPT = 2,
    SK_IN_TRAIN = 3 /* vecidx_train, which checkpoints */
};
/* How the parent decides when to kill. */
enum {
    SK_TIMED = 0,
    SK_STALL_CKPT = 1,
    SK_STALL_ANY = 2
};

/* 16 bytes, below PIPE_BUF: each message is written atomically, so a
** kill never leaves half of one in the pipe. */
typedef struct sk_msg {
    uint32_t type;
    uint32_t key; /* INTENT: key written; STALL: SK_IN_* */
    int32_t ver;  /* INTENT: version written, -1 for a removal */
    uint32_t op;  /* INTENT: SK_OP_* */
} sk_msg;

typedef int32_t sk_model[SK_NK]; /* version per key, -1 when absent */

static int sk_pipe = -1;  /* child: write end of the pipe */
static long sk_stall_at;  /* child: stop before this counted I/O call */
static long sk_io_calls;  /* child: I/O calls counted so far */
static int sk_counting;   /* child: count I/O calls now */
static uint32_t sk_phase; /* child: SK_IN_* */

static uint64_t sk_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Every (key, version) has its own vector, in [-1, 1) per component, so a
** key that came back with a stale or foreign vector is noticed. */
static void sk_vec(uint32_t key, int32_t ver, float *v)
{
    int j;
    for (j = 0; j < SK_DIM; j++) {
        uint64_t x = sk_mix(((uint64_t)key << 40) ^ ((uint64_t)ver << 8) ^
                            (uint64_t)j);
        v[j] = (float)(x >> 40) / (float)(1 << 23) - 1.0f;
    }
}

static double sk_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sk_send(uint32_t type, uint32_t key, int32_t ver, uint32_t call)
{
    sk_msg m;
    m.type = type;
    m.key = key;
    m.ver = ver;
    m.op = call;
    if (write(sk_pipe, &m, sizeof m) != (ssize_t)sizeof m) _exit(4);
}

/* Child: before a counted I/O call; at the chosen one, report and wait
** for the kill. */
static void sk_tick(void)
{
    if (!sk_counting || !sk_stall_at || ++sk_io_calls != sk_stall_at) return;
    sk_send(SK_STALL, sk_phase, 0, 0);
    for (;;) pause();
}

static int sk_open(const char *p, int f, int m)
{
    sk_tick();
    return vx_io_sys.open(p, f, m);
}
static int sk_close(int fd)
{
    sk_tick();
    return vx_io_sys.close(fd);
}
static ssize_t sk_pread(int fd, void *b, size_t n, off_t off)
{
    sk_tick();
    return vx_io_sys.pread(fd, b, n, off);
}
static ssize_t sk_pwrite(int fd, const void *b, size_t n, off_t off)
{
    sk_tick();
    return vx_io_sys.pwrite(fd, b, n, off);
}
static int sk_ftruncate(int fd, off_t len)
{
    sk_tick();
    return vx_io_sys.ftruncate(fd, len);
}
static int sk_flock(int fd, int how)
{
    sk_tick();
    return vx_io_sys.flock(fd, how);
}
/* No real fsync: a killed process leaves the page cache intact, so it
** would change nothing here but the time spent waiting for the disk. */
static int sk_fsync(int fd)
{
    sk_tick();
    return fcntl(fd, F_GETFD) == -1 ? -1 : 0;
}
static int sk_fstat(int fd, struct stat *st)
{
    sk_tick();
    return vx_io_sys.fstat(fd, st);
}
static int sk_rename(const char *a, const char *b)
{
    sk_tick();
    return vx_io_sys.rename(a, b);
}
static int sk_unlink(const char *p)
{
    sk_tick();
    return vx_io_sys.unlink(p);
}
static void *sk_mmap(size_t len, int prot, int fd)
{
    sk_tick();
    return vx_io_sys.mmap(len, prot, fd);
}

static const vx_io sk_io = {sk_open,      sk_close,  sk_pread, sk_pwrite,
                            sk_ftruncate, sk_flock,  sk_fsync, sk_fstat,
                            sk_rename,    sk_unlink, sk_mmap,  munmap};

static vecidx_params sk_params(int kind, int metric)
{
    vecidx_params p;
    vecidx_params_init(&p, kind, metric, SK_DIM);
    p.hnsw_m = 4;
    p.hnsw_ef_construction = 32;
    p.threads = 1;
    /* IVF-PQ trains itself after 64 adds (or when the child calls
    ** vecidx_train first), so kills land before, during and after
    ** training. Kept vectors make vecidx_get exact and let the recall
    ** check re-rank exactly. */
    p.ivf_nlist = 4;
    p.pq_m = 2;
    p.ivf_keep_vectors = 1;
    p.ivf_train_size = 64;
    return p;
}

/* Child: train an untrained IVF-PQ index on vectors of its own. The
** model does not change: training moves no key. */
static void sk_child_train(vecidx *ix)
{
    float v[32 * SK_DIM];
    vecidx_stats_t st;
    uint32_t i;
    if (vecidx_stats(ix, &st) != VECIDX_OK) _exit(7);
    /* Not while empty: vecidx 0.1.0 saves a trained IVF-PQ index without
    ** vectors in a form its own open rejects ("header IVF-PQ fields are
    ** inconsistent"), a save/open bug that no crash is needed to show.
    ** Drop this condition once that is fixed. */
    if (st.trained || st.count == 0) return;
    for (i = 0; i < 32; i++) sk_vec(5000 + i, 0, v + i * SK_DIM);
    sk_phase = SK_IN_TRAIN;
    if (vecidx_train(ix, 32, v) != VECIDX_OK) _exit(7);
}

/* Child: one random write. *ver numbers the vectors written. */
static void sk_child_write(vecidx *ix, int kind, sk_model m, int32_t *ver)
{
    uint32_t k, r, call;
    uint64_t keys[SK_BATCH];
    float v[SK_BATCH * SK_DIM];
    int rc;
    size_t n = 0, i;
    if (kind == VECIDX_IVFPQ && sim_rand() % 16 == 0) {
        sk_child_train(ix);
        return;
    }
    k = (uint32_t)(sim_rand() % SK_NK);
    r = (uint32_t)(sim_rand() % 10);
    if (m[k] >= 0 && r == 0) { /* refused: must leave no trace */
        sk_vec(k, *ver, v);
        if (vecidx_add(ix, k, v) != VECIDX_EEXIST) _exit(6);
        return;
    }
    if (m[k] >= 0 && r < 4) {
        sk_send(SK_INTENT, k, -1, SK_OP_REMOVE);
        if (vecidx_remove(ix, k) != VECIDX_OK) _exit(6);
        m[k] = -1;
        sk_send(SK_ACK, 0, 0, 0);
        return;
    }
    if (m[k] < 0 && r < 3) { /* a batch of absent keys from k upwards */
        size_t want = 1 + (size_t)(sim_rand() % SK_BATCH);
        uint32_t j;
        for (j = 0; j < SK_NK && n < want; j++) {
            uint32_t kk = (k + j) % SK_NK;
            if (m[kk] >= 0) continue;
            keys[n] = kk;
            sk_vec(kk, *ver, v + n * SK_DIM);
            sk_send(SK_INTENT, kk, (*ver)++, SK_OP_BATCH);
            n++;
        }
        if (vecidx_add_batch(ix, n, keys, v) != VECIDX_OK) _exit(6);
        for (i = 0; i < n; i++) m[keys[i]] = *ver - (int32_t)(n - i);
        sk_send(SK_ACK, 0, 0, 0);
        return;
    }
    call = m[k] < 0 && r < 6 ? SK_OP_ADD : SK_OP_UPSERT;
    sk_vec(k, *ver, v);
    sk_send(SK_INTENT, k, *ver, call);
    rc = call == SK_OP_ADD ? vecidx_add(ix, k, v) : vecidx_upsert(ix, k, v);
    if (rc != VECIDX_OK) _exit(6);
    m[k] = (*ver)++;
    sk_send(SK_ACK, 0, 0, 0);
}

/* Child: open the index and write forever, a checkpoint every `every`
** writes. Exits only on a failure (the parent reads the status). */
static void sk_child(int fd, int kind, int metric, sk_model m, int32_t ver,
                     int every, int mode, long stall_at)
{
    vecidx_params p = sk_params(kind, metric);
    vecidx *ix;
    long i;
    sk_pipe = fd;
    sk_stall_at = mode == SK_TIMED ? 0 : stall_at;
    sk_counting = mode == SK_STALL_ANY;
    sk_phase = SK_IN_OPEN;
    vx_io_cur = &sk_io;
    if (vecidx_open(PATH, &p, VECIDX_SYNC_FULL, &ix) != VECIDX_OK) _exit(3);
    for (i = 0;; i++) {
        sk_phase = SK_IN_WRITE;
        sk_child_write(ix, kind, m, &ver);
        if (i % every != every - 1) continue;
        sk_phase = SK_IN_CKPT;
        if (mode == SK_STALL_CKPT) sk_counting = 1;
        if (vecidx_checkpoint(ix) != VECIDX_OK) _exit(5);
        if (mode == SK_STALL_CKPT) sk_counting = 0;
    }
}

/* Parent: every acknowledged write of a trial, in order, so that an
** in-memory index can be given the same calls. */
typedef struct sk_hist {
    sk_msg *w; /* the INTENT messages of each write, one write after another */
    uint32_t *len; /* messages per write */
    size_t nw, n, cap;
} sk_hist;

static void sk_hist_push(sk_hist *h, const sk_msg *w, int n)
{
    if (h->n + (size_t)n > h->cap || h->nw == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 1024;
        h->w = realloc(h->w, h->cap * sizeof *h->w);
        h->len = realloc(h->len, h->cap * sizeof *h->len);
        if (!h->w || !h->len) abort();
    }
    memcpy(h->w + h->n, w, (size_t)n * sizeof *w);
    h->n += (size_t)n;
    h->len[h->nw++] = (uint32_t)n;
}

/* Parent: what it has learnt from the child so far. */
typedef struct sk_log {
    sk_model acked;           /* state after every acknowledged write */
    sk_hist *hist;            /* ... and the writes that made it */
    sk_msg pending[SK_BATCH]; /* the write in flight, if any */
    int npending;
    int stalled; /* 1 + SK_IN_* once the child stopped, else 0 */
    long nacked;
    unsigned char carry[sizeof(sk_msg)];
    size_t ncarry;
    int bad; /* a message that makes no sense */
} sk_log;

static void sk_feed(sk_log *l, const unsigned char *b, size_t n)
{
    while (n) {
        size_t take = sizeof(sk_msg) - l->ncarry;
        sk_msg m;
        int i;
        if (take > n) take = n;
        memcpy(l->carry + l->ncarry, b, take);
        l->ncarry += take;
        b += take;
        n -= take;
        if (l->ncarry < sizeof(sk_msg)) break;
        l->ncarry = 0;
        memcpy(&m, l->carry, sizeof m);
        if (m.type == SK_INTENT && l->npending < SK_BATCH && m.key < SK_NK) {
            l->pending[l->npending++] = m;
        } else if (m.type == SK_ACK && l->npending) {
            for (i = 0; i < l->npending; i++)
                l->acked[l->pending[i].key] = l->pending[i].ver;
            sk_hist_push(l->hist, l->pending, l->npending);
            l->npending = 0;
            l->nacked++;
        } else if (m.type == SK_STALL) {
            l->stalled = 1 + (int)m.key;
        } else {
            l->bad = 1;
        }
    }
}

/* Distance of the metric, as vecidx defines it. */
static double sk_dist(int metric, const float *a, const float *b)
{
    double s = 0, na = 0, nb = 0;
    int j;
    for (j = 0; j < SK_DIM; j++) {
        if (metric == VECIDX_L2) {
            s += ((double)a[j] - b[j]) * ((double)a[j] - b[j]);
        } else {
            s += (double)a[j] * b[j];
            na += (double)a[j] * a[j];
            nb += (double)b[j] * b[j];
        }
    }
    return metric == VECIDX_L2 ? s : 1.0 - s / sqrt(na * nb);
}

static int sk_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Recall@SK_K of ix against exact search over the model's vectors, or -1
** when a search fails, returns a key the model does not hold, or reports
** a distance that is not the distance to that key's vector. A result
** counts as a hit when it is no farther than the true k-th neighbour, so
** ties between equally distant keys do not matter. */
static double sk_recall(vecidx *ix, int metric, const sk_model m,
                        const float *queries)
{
    double d[SK_NK], sorted[SK_NK], hits = 0, slots = 0;
    float v[SK_DIM];
    int q, i, n;
    vecidx_search_opts so;
    memset(&so, 0, sizeof so);
    so.ef = 16; /* a narrow search leans on the graph, not on breadth */
    /* IVF-PQ: every list, every candidate re-ranked: exact, like flat */
    so.nprobe = 64;
    so.refine = SK_NK;
    for (q = 0; q < SK_NQ; q++) {
        const float *qv = queries + q * SK_DIM;
        uint64_t rk[SK_K];
        float rd[SK_K];
        size_t found = 0, want;
        double kth;
        for (i = n = 0; i < SK_NK; i++) {
            if (m[i] < 0) continue;
            sk_vec((uint32_t)i, m[i], v);
            sorted[n++] = d[i] = sk_dist(metric, qv, v);
        }
        want = (size_t)n < SK_K ? (size_t)n : SK_K;
        if (vecidx_search(ix, qv, SK_K, &so, rk, rd, &found) != VECIDX_OK)
            return -1;
        if (found > want) return -1;
        if (want == 0) continue;
        qsort(sorted, (size_t)n, sizeof *sorted, sk_cmp_double);
        kth = sorted[want - 1];
        for (i = 0; i < (int)found; i++) {
            double dt;
            if (rk[i] >= SK_NK || m[rk[i]] < 0) return -1;
            dt = d[rk[i]];
            if (fabs((double)rd[i] - dt) > 1e-4 * (1.0 + fabs(dt))) return -1;
            hits += dt <= kth + 1e-6 * (1.0 + fabs(kth));
        }
        slots += (double)want;
    }
    return slots > 0 ? hits / slots : 1.0;
}

/* The first key whose stored vector differs from the model, or -1. */
static int sk_diff(vecidx *ix, const sk_model m)
{
    int k;
    for (k = 0; k < SK_NK; k++) {
        float got[SK_DIM], want[SK_DIM];
        int rc = vecidx_get(ix, (uint64_t)k, got);
        if (m[k] < 0) {
            if (rc != VECIDX_ENOTFOUND) return k;
            continue;
        }
        sk_vec((uint32_t)k, m[k], want);
        if (rc != VECIDX_OK || memcmp(got, want, sizeof want) != 0) return k;
    }
    return -1;
}

static size_t sk_count(const sk_model m)
{
    size_t n = 0;
    int k;
    for (k = 0; k < SK_NK; k++) n += m[k] >= 0;
    return n;
}

/* Give ix one logged write again. */
static int sk_apply(vecidx *ix, const sk_msg *w, int n)
{
    uint64_t keys[SK_BATCH];
    float v[SK_BATCH * SK_DIM];
    int i;
    for (i = 0; i < n; i++) {
        keys[i] = w[i].key;
        if (w[i].ver >= 0) sk_vec(w[i].key, w[i].ver, v + i * SK_DIM);
    }
    switch (w[0].op) {
    case SK_OP_ADD:
        return vecidx_add(ix, keys[0], v);
    case SK_OP_UPSERT:
        return vecidx_upsert(ix, keys[0], v);
    case SK_OP_REMOVE:
        return vecidx_remove(ix, keys[0]);
    default:
        return vecidx_add_batch(ix, (size_t)n, keys, v);
    }
}

/* An in-memory index given the same writes as the killed children's
** (plus the one in flight when it made it). With one thread an HNSW graph
** depends only on the calls, so this is the graph the recovered index must
** have: recovery that dropped, reordered or re-linked anything shows up
** as different search results. */
static vecidx *sk_replay(int kind, int metric, const sk_hist *h,
                         const sk_msg *extra, int nextra)
{
    vecidx_params p = sk_params(kind, metric);
    vecidx *ix;
    size_t i, at = 0;
    if (vecidx_create(&p, &ix) != VECIDX_OK) return NULL;
    for (i = 0; i < h->nw; at += h->len[i++])
        if (sk_apply(ix, h->w + at, (int)h->len[i]) != VECIDX_OK) break;
    if (i < h->nw || (nextra && sk_apply(ix, extra, nextra) != VECIDX_OK)) {
        vecidx_close(ix);
        return NULL;
    }
    return ix;
}

/* The first query on which a and b return different keys or distances,
** SK_NQ when none does, or -1 when a search fails. */
static int sk_first_difference(vecidx *a, vecidx *b, const float *queries)
{
    vecidx_search_opts so;
    int q;
    memset(&so, 0, sizeof so);
    so.ef = 16;
    for (q = 0; q < SK_NQ; q++) {
        uint64_t ka[SK_K], kb[SK_K];
        float da[SK_K], db[SK_K];
        size_t fa, fb;
        if (vecidx_search(a, queries + q * SK_DIM, SK_K, &so, ka, da, &fa) ||
            vecidx_search(b, queries + q * SK_DIM, SK_K, &so, kb, db, &fb))
            return -1;
        if (fa != fb || memcmp(ka, kb, fa * sizeof *ka) != 0 ||
            memcmp(da, db, fa * sizeof *da) != 0)
            return q;
    }
    return SK_NQ;
}

/* Open the killed child's index with flags and check it. *took says
** whether the write in flight made it (1) or not (0); -1 on entry lets
** this open decide, and a later open must agree. Returns 1 when good. */
static int sk_verify(unsigned flags, int kind, int metric, const sk_log *l,
                     const float *queries, int *took, const char *what)
{
    vecidx_params p = sk_params(kind, metric);
    sk_model with;
    vecidx *ix, *ref = NULL;
    int i, bad, t, q = SK_NQ, ok = 0;
    double rec = -1;
    if (vecidx_open(PATH, &p, flags, &ix) != VECIDX_OK) {
        printf("  SIGKILL %s: reopen (flags 0x%x) failed: %s\n", what, flags,
               vecidx_errmsg(NULL));
        return 0;
    }
    memcpy(with, l->acked, sizeof with);
    for (i = 0; i < l->npending; i++)
        with[l->pending[i].key] = l->pending[i].ver;
    if ((bad = sk_diff(ix, l->acked)) < 0)
        t = 0;
    else if (l->npending && sk_diff(ix, with) < 0)
        t = 1;
    else
        t = -1;
    if (t < 0)
        printf("  SIGKILL %s: key %d differs from the acknowledged writes "
               "(%ld acknowledged, %d keys in flight)\n",
               what, bad, l->nacked, l->npending);
    else if (*took >= 0 && t != *took)
        printf("  SIGKILL %s: the write in flight is %s after a read-only "
               "open but %s after a writable one\n",
               what, *took ? "there" : "absent", t ? "there" : "absent");
    else if (vecidx_count(ix) != sk_count(t ? with : l->acked))
        printf("  SIGKILL %s: %zu vectors, expected %zu\n", what,
               vecidx_count(ix), sk_count(t ? with : l->acked));
    else if (vecidx_check(ix) != VECIDX_OK)
        printf("  SIGKILL %s: vecidx_check: %s\n", what, vecidx_errmsg(ix));
    else if ((rec = sk_recall(ix, metric, t ? with : l->acked, queries)) < 0)
        printf("  SIGKILL %s: a search returned a key or distance the "
               "acknowledged writes do not explain\n",
               what);
    else if (kind != VECIDX_HNSW && rec < 1.0)
        printf("  SIGKILL %s: recall %.3f of a search that must be exact\n",
               what, rec);
    else if (kind == VECIDX_HNSW &&
             (!(ref = sk_replay(kind, metric, l->hist, l->pending,
                                t ? l->npending : 0)) ||
              (q = sk_first_difference(ix, ref, queries)) != SK_NQ))
        printf("  SIGKILL %s: query %d: results differ from those of the "
               "same writes made in memory (recall %.3f)\n",
               what, q, rec);
    else
        ok = 1;
    *took = t;
    vecidx_close(ref);
    vecidx_close(ix);
    return ok;
}

/* Kill statistics, printed with the result. */
static long sk_kills[5];    /* timed; stalled in open, write, ckpt, train */
static long sk_missed;      /* stop point never reached: killed at deadline */
static long sk_inflight[2]; /* write in flight absent, present after it */

/* One child, one kill, then the checks; on success the model moves on to
** the recovered state. */
static int sk_round(int kind, int metric, sk_model model, sk_hist *hist,
                    int32_t ver, const float *queries, const char *what)
{
    static const int everies[3] = {2, 5, 40};
    int mode = (int)(sim_rand() % 3);
    /* Stop points a few checkpoints in, reached in well under a second
    ** even when fsync is slow; the deadline is a fallback only. */
    int every = everies[sim_rand() % (mode == SK_STALL_CKPT ? 2 : 3)];
    long stall_at = 1 + (long)(sim_rand() % (mode == SK_STALL_CKPT ? 60 : 100));
    double delay = mode == SK_TIMED ? (1 + (double)(sim_rand() % 40)) * 1e-3
                                    : 3.0,
           end;
    unsigned char buf[4096];
    char tmp[128];
    int fds[2], st, took = -1, ok;
    sk_log *l = calloc(1, sizeof *l);
    ssize_t n;
    pid_t pid;
    if (!l || pipe(fds) != 0) abort();
    memcpy(l->acked, model, sizeof l->acked);
    l->hist = hist;
    fflush(stdout);
    if ((pid = fork()) < 0) abort();
    if (pid == 0) {
        close(fds[0]);
        sk_child(fds[1], kind, metric, model, ver, every, mode, stall_at);
    }
    close(fds[1]);
    end = sk_now() + delay;
    while (!l->stalled) {
        struct pollfd pf;
        int left = (int)((end - sk_now()) * 1e3);
        if (left <= 0) break;
        pf.fd = fds[0];
        pf.events = POLLIN;
        if (poll(&pf, 1, left) <= 0) continue;
        if ((n = read(fds[0], buf, sizeof buf)) <= 0) break;
        sk_feed(l, buf, (size_t)n);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    while ((n = read(fds[0], buf, sizeof buf)) > 0) sk_feed(l, buf, (size_t)n);
    close(fds[0]);
    /* A checkpoint cut short leaves its temporary file behind. */
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", PATH, (long)pid);
    unlink(tmp);
    sk_kills[l->stalled]++;
    sk_missed += mode != SK_TIMED && !l->stalled;
    if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL || l->bad) {
        printf("  SIGKILL %s: the child %s %d before the kill\n", what,
               WIFEXITED(st) ? "exited with status" : "died of signal",
               WIFEXITED(st)     ? WEXITSTATUS(st)
               : WIFSIGNALED(st) ? WTERMSIG(st)
                                 : -1);
        free(l);
        return 0;
    }
    /* A reader replays the log without writing; the writer then recovers
    ** for real (and may cut a torn tail). Both must see the same state. */
    ok = sk_verify(VECIDX_RDONLY, kind, metric, l, queries, &took, what) &&
         sk_verify(0, kind, metric, l, queries, &took, what);
    if (ok && l->npending) sk_inflight[took]++;
    if (ok && took == 1) {
        int i;
        for (i = 0; i < l->npending; i++)
            l->acked[l->pending[i].key] = l->pending[i].ver;
        sk_hist_push(hist, l->pending, l->npending);
    }
    memcpy(model, l->acked, sizeof l->acked);
    free(l);
    return ok;
}

/* A fresh index, then one to three rounds of write, kill and recover on
** it, each child continuing from the state the last one left. */
static int sigkill_trial(long t)
{
    static const int kinds[3] = {VECIDX_FLAT, VECIDX_HNSW, VECIDX_IVFPQ};
    int kind = kinds[t % 3];
    int metric = (t / 3) % 4 == 3 ? VECIDX_COSINE : VECIDX_L2;
    int rounds = 1 + (int)((t / 3) % 3), r, ok = 1, k;
    vecidx_params p = sk_params(kind, metric);
    float queries[SK_NQ * SK_DIM];
    sk_model model;
    sk_hist hist;
    vecidx *ix;
    char what[64];
    sim_rng = 0x5eed0000u + (uint64_t)t;
    for (k = 0; k < SK_NQ; k++)
        sk_vec(1000000u + (uint32_t)k, 0, queries + k * SK_DIM);
    for (k = 0; k < SK_NK; k++) model[k] = -1;
    memset(&hist, 0, sizeof hist);
    remove_files();
    if (vecidx_open(PATH, &p, VECIDX_CREATE, &ix) != VECIDX_OK) return 0;
    vecidx_close(ix);
    for (r = 0; r < rounds && ok; r++) {
        snprintf(what, sizeof what, "trial %ld round %d (%s, %s)", t, r,
                 kind == VECIDX_HNSW    ? "hnsw"
                 : kind == VECIDX_IVFPQ ? "ivfpq"
                                        : "flat",
                 metric == VECIDX_L2 ? "l2" : "cos");
        ok = sk_round(kind, metric, model, &hist, (int32_t)(r + 1) << 20,
                      queries, what);
    }
    free(hist.w);
    free(hist.len);
    return ok;
}

/* An optional argument runs only the groups whose name contains it
** ("power", "fault", "sigkill"). */
int main(int argc, char **argv)
{
    static const unsigned syncs[3] = {VECIDX_SYNC_FULL, VECIDX_SYNC_NORMAL,
                                      VECIDX_SYNC_OFF};
    const char *env = getenv("CRASH_TRIALS");
    const char *only = argc > 1 ? argv[1] : "";
    long scale = env ? atol(env) : 1, t;
    int groups = 0, failed = 0, bad;
    if (scale < 1) scale = 1;
    snprintf(PATH, sizeof PATH, SIM_DIR "%ld-idx", (long)getpid());
    snprintf(WALPATH, sizeof WALPATH, "%s-wal", PATH);

    for (bad = 0, t = 0; strstr("power cuts", only) && t < 200 * scale; t++)
        bad += !power_cut_trial(t % 2 ? VECIDX_HNSW : VECIDX_FLAT,
                                syncs[(t / 2) % 3], 1 + (t * 7919) % 1500,
                                (int)((t / 6) % 2), (uint64_t)t + 1);
    if (strstr("power cuts", only)) {
        printf("%s power cuts: %ld trials, %d lost writes\n",
               bad ? "FAIL" : "ok", 200 * scale, bad);
        groups++;
        failed += bad != 0;
    }

    if (strstr("fault injection", only)) {
        for (bad = 0, t = 1; t < 400 * scale; t += 3)
            bad += !fault_trial(t % 2 ? VECIDX_HNSW : VECIDX_FLAT, t,
                                (t / 2) % 2);
        printf("%s fault injection: %ld trials, %d failed\n",
               bad ? "FAIL" : "ok", (400 * scale) / 3, bad);
        groups++;
        failed += bad != 0;
    }

    if (strstr("header rewrite", only)) {
        bad = !header_rewrite_trial(VECIDX_FLAT) +
              !header_rewrite_trial(VECIDX_HNSW);
        printf("%s header rewrite: 2 trials, %d failed\n", bad ? "FAIL" : "ok",
               bad);
        groups++;
        failed += bad != 0;
    }

    if (strstr("sigkill", only)) {
        for (bad = 0, t = 0; t < 300 * scale; t++) bad += !sigkill_trial(t);
        /* The stop points must really have been reached, or the test
        ** would quietly degrade into timed kills only. */
        if (!sk_kills[1 + SK_IN_CKPT] || !sk_kills[1 + SK_IN_OPEN]) bad++;
        printf("%s SIGKILL: %ld trials, %d failed; kills: %ld timed, %ld in "
               "open/recovery, %ld in a write, %ld in a checkpoint, %ld in "
               "training (%ld stop points not reached); write in flight "
               "found %ld times, absent %ld times\n",
               bad ? "FAIL" : "ok", 300 * scale, bad, sk_kills[0],
               sk_kills[1 + SK_IN_OPEN], sk_kills[1 + SK_IN_WRITE],
               sk_kills[1 + SK_IN_CKPT], sk_kills[1 + SK_IN_TRAIN], sk_missed,
               sk_inflight[1], sk_inflight[0]);
        groups++;
        failed += bad != 0;
    }

    remove_files();
    if (groups == 0) { /* a misspelt group must not pass quietly */
        printf("no group is selected by \"%s\"\n", only);
        printf("0 passed, 0 failed\n");
        return 1;
    }
    printf("%d passed, %d failed\n", groups - failed, failed);
    return failed != 0;
}
