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
**   - SIGKILL: a child writes with SYNC_FULL and reports each acknowledged
**     add through a pipe; the parent kills it at a random moment
**     (checkpoints included) and checks that every acknowledged add is
**     there and the index passes vecidx_check.
** Ends with "N passed, N failed". CRASH_TRIALS=N in the environment scales
** the number of trials (`make crash-soak`). */
#define _DEFAULT_SOURCE
#include "../../vecidx.c"

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
static int sim_down;     /* the power has failed */
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
    sim_files[i].durable =
        sim_slurp(path, &sim_files[i].dlen, &sim_files[i].dexists);
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
    return fsync(fd);
}

/* vx_file_save syncs the temporary file before renaming it and syncs the
** directory right after, so the renamed file's durable contents are the
** synced ones. (A cut between rename and directory sync could also keep
** the old name; both outcomes are valid states for the library.) */
static int sim_rename(const char *from, const char *to)
{
    sim_file *a, *b;
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
    return rename(from, to);
}

static int sim_close(int fd) { return close(fd); }
static int sim_unlink(const char *p) { return unlink(p); }
static int sim_flock(int fd, int op) { return flock(fd, op); }

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

static const vx_io sim_io = {sim_open,      sim_close, sim_pread,
                             sim_pwrite,    sim_ftruncate, sim_flock,
                             sim_fsync,     sim_fstat, sim_rename,
                             sim_unlink,    sim_mmap,  munmap};

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
        for (j = 0; j < f->nw; j++) sim_apply(&img, &len, &cap, &f->w[j], random);
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
                   97.0f + 0.01f;
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

/* A fresh empty index file, written with the real I/O layer. */
static int make_index(int kind)
{
    vecidx_params p;
    vecidx *ix;
    remove_files();
    vecidx_params_init(&p, kind, VECIDX_L2, D);
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
               "writes\n", kind, sync, cut_at, random);
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
            if (rc == VECIDX_OK) m[o.key] = o.ver;
            else if (rc != VECIDX_EIO) ok = 0;
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

/* The child: add keys forever, reporting each acknowledged one, with a
** checkpoint every `every` adds (small values make it likely that the
** kill lands inside one). */
static void sigkill_child(int fd, uint64_t base, uint64_t every)
{
    vecidx *ix;
    uint64_t i;
    if (vecidx_open(PATH, NULL, VECIDX_SYNC_FULL, &ix) != VECIDX_OK) _exit(3);
    for (i = 0;; i++) {
        uint64_t k = base + i;
        float v[D];
        vec_of(k, 0, v);
        if (vecidx_add(ix, k, v) == VECIDX_OK &&
            write(fd, &k, sizeof k) != (ssize_t)sizeof k)
            _exit(4);
        if (i % every == every - 1) vecidx_checkpoint(ix);
    }
}

static int sigkill_trial(int kind, int t)
{
    static uint64_t acked[1 << 16];
    size_t na = 0, i, missing = 0;
    int fds[2], st, ok;
    vecidx *ix;
    pid_t pid;
    if (!make_index(kind) || pipe(fds) != 0) return 0;
    if ((pid = fork()) == 0) {
        close(fds[0]);
        sigkill_child(fds[1], 1000, t % 4 == 0 ? 2 : 97);
    }
    close(fds[1]);
    usleep((useconds_t)(5000 + (t * 7919) % 40000));
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    while (na < sizeof acked / sizeof *acked &&
           read(fds[0], &acked[na], sizeof *acked) == (ssize_t)sizeof *acked)
        na++;
    close(fds[0]);
    if (vecidx_open(PATH, NULL, 0, &ix) != VECIDX_OK) {
        printf("  SIGKILL trial %d: reopen failed: %s\n", t,
               vecidx_errmsg(NULL));
        return 0;
    }
    for (i = 0; i < na; i++) missing += vecidx_contains(ix, acked[i]) != 1;
    ok = missing == 0 && vecidx_check(ix) == VECIDX_OK;
    if (!ok)
        printf("  SIGKILL trial %d: %zu of %zu acknowledged adds missing\n",
               t, missing, na);
    vecidx_close(ix);
    return ok;
}

int main(void)
{
    static const unsigned syncs[3] = {VECIDX_SYNC_FULL, VECIDX_SYNC_NORMAL,
                                      VECIDX_SYNC_OFF};
    const char *env = getenv("CRASH_TRIALS");
    long scale = env ? atol(env) : 1, t;
    int groups = 0, failed = 0, bad;
    if (scale < 1) scale = 1;
    snprintf(PATH, sizeof PATH, SIM_DIR "%ld-idx", (long)getpid());
    snprintf(WALPATH, sizeof WALPATH, "%s-wal", PATH);

    for (bad = 0, t = 0; t < 200 * scale; t++)
        bad += !power_cut_trial(t % 2 ? VECIDX_HNSW : VECIDX_FLAT,
                                syncs[(t / 2) % 3], 1 + (t * 7919) % 1500,
                                (int)((t / 6) % 2), (uint64_t)t + 1);
    printf("%s power cuts: %ld trials, %d lost writes\n", bad ? "FAIL" : "ok",
           200 * scale, bad);
    groups++;
    failed += bad != 0;

    for (bad = 0, t = 1; t < 400 * scale; t += 3)
        bad += !fault_trial(t % 2 ? VECIDX_HNSW : VECIDX_FLAT, t, (t / 2) % 2);
    printf("%s fault injection: %ld trials, %d failed\n", bad ? "FAIL" : "ok",
           (400 * scale) / 3, bad);
    groups++;
    failed += bad != 0;

    for (bad = 0, t = 0; t < 200 * scale; t++)
        bad += !sigkill_trial(t % 2 ? VECIDX_HNSW : VECIDX_FLAT, (int)t);
    printf("%s SIGKILL: %ld trials, %d lost writes\n", bad ? "FAIL" : "ok",
           200 * scale, bad);
    groups++;
    failed += bad != 0;

    remove_files();
    printf("%d passed, %d failed\n", groups - failed, failed);
    return failed != 0;
}
