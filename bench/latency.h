/*
** bench/latency.h -- per-call latency samples, their percentiles, paced
** schedules and the JSON keys they print, for the scenarios of
** vecidx-compare (bench/README.md, "Stall scenarios"). Every function is
** static inline and the header compiles as C11 and as C++17, like common.h;
** include it after common.h.
**
** Times are CLOCK_MONOTONIC nanoseconds (lt_now_ns). A sample is the start
** and the end of one library call; percentiles are printed in microseconds.
*/
#ifndef VECIDX_BENCH_LATENCY_H
#define VECIDX_BENCH_LATENCY_H

#include <sys/resource.h>

static inline uint64_t lt_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Sleeps until CLOCK_MONOTONIC reaches t (ns); returns at once if it has.
** An absolute deadline: the time spent before the call is not added to
** the wait, and the thread never spins. */
static inline void lt_sleep_until(uint64_t t)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(t / 1000000000u);
    ts.tv_nsec = (long)(t % 1000000000u);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* splitmix64: the same seed gives the same sequence of choices. */
static inline uint64_t lt_rand(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* ---- Samples ------------------------------------------------------------ */

/* Start and end of each timed call, in the order they were recorded. Only
** the thread that records may add; the arrays grow between calls, never
** inside a timed region. */
typedef struct lt_samples {
    uint64_t *start, *end;
    size_t n, cap;
} lt_samples;

static inline void lt_init(lt_samples *s, size_t cap)
{
    s->n = 0;
    s->cap = cap ? cap : 1024;
    s->start = (uint64_t *)bn_malloc(s->cap * sizeof *s->start);
    s->end = (uint64_t *)bn_malloc(s->cap * sizeof *s->end);
}

static inline void lt_free(lt_samples *s)
{
    free(s->start);
    free(s->end);
    memset(s, 0, sizeof *s);
}

static inline void lt_add(lt_samples *s, uint64_t start, uint64_t end)
{
    if (s->n == s->cap) {
        size_t cap = s->cap * 2;
        uint64_t *a = (uint64_t *)realloc(s->start, cap * sizeof *a);
        uint64_t *b = a ? (uint64_t *)realloc(s->end, cap * sizeof *b) : NULL;
        if (!a || !b) bn_die("out of memory (%zu latency samples)", cap);
        s->start = a;
        s->end = b;
        s->cap = cap;
    }
    s->start[s->n] = start;
    s->end[s->n] = end;
    s->n++;
}

/* Percentiles in microseconds; all -1 (printed as null) when count is 0.
** Nearest rank: pX is the smallest sample with at least X % of the samples
** at or below it, so p99.9 of 1000 samples is the largest but one. */
typedef struct lt_stats {
    size_t count;
    double p50, p90, p99, p999, max, mean;
} lt_stats;

static inline int lt_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static inline double lt_rank(const uint64_t *sorted, size_t n, double p)
{
    size_t r = (size_t)ceil(p * (double)n);
    if (r < 1) r = 1;
    if (r > n) r = n;
    return (double)sorted[r - 1] / 1e3;
}

/* LT_ALL: every sample; LT_INSIDE: the samples whose call overlapped the
** window [from, to) (started before `to` and ended after `from`);
** LT_OUTSIDE: the others. */
enum {
    LT_ALL = 0,
    LT_INSIDE = 1,
    LT_OUTSIDE = 2
};

static inline lt_stats lt_summarize(const lt_samples *s, int which,
                                    uint64_t from, uint64_t to)
{
    lt_stats st;
    uint64_t *d = (uint64_t *)bn_malloc(s->n * sizeof *d);
    size_t i, n = 0;
    double sum = 0;
    for (i = 0; i < s->n; i++) {
        int in = s->start[i] < to && s->end[i] > from;
        if (which == LT_ALL || (which == LT_INSIDE) == in) {
            d[n] = s->end[i] - s->start[i];
            sum += (double)d[n++];
        }
    }
    st.count = n;
    if (n == 0) {
        st.p50 = st.p90 = st.p99 = st.p999 = st.max = st.mean = -1;
    } else {
        qsort(d, n, sizeof *d, lt_cmp_u64);
        st.p50 = lt_rank(d, n, 0.50);
        st.p90 = lt_rank(d, n, 0.90);
        st.p99 = lt_rank(d, n, 0.99);
        st.p999 = lt_rank(d, n, 0.999);
        st.max = (double)d[n - 1] / 1e3;
        st.mean = sum / (double)n / 1e3;
    }
    free(d);
    return st;
}

/* ---- Pacing ------------------------------------------------------------- */

/* A fixed schedule of `rate` calls per second from t0: call i is due at
** t0 + i / rate. lt_pace sleeps until the next call is due (absolute
** deadline, clock_nanosleep: no spinning that would take a core from the
** threads being timed). A call already overdue returns at once, so a
** writer held up by a slow call catches up at full speed: the schedule,
** not the previous call, decides when each write starts (open loop). */
typedef struct lt_pacer {
    uint64_t t0;
    double period_ns;
    uint64_t next; /* index of the next call */
} lt_pacer;

static inline void lt_pacer_init(lt_pacer *p, uint64_t t0, double rate)
{
    p->t0 = t0;
    p->period_ns = 1e9 / rate;
    p->next = 0;
}

/* Waits for the next call's slot; returns its due time. */
static inline uint64_t lt_pace(lt_pacer *p)
{
    uint64_t due = p->t0 + (uint64_t)((double)p->next++ * p->period_ns);
    if (lt_now_ns() < due) lt_sleep_until(due);
    return due;
}

/* ---- Other processes ------------------------------------------------------
** A latency figure means little if something else had the cores. lt_cpu
** readings taken around a phase tell how much CPU time the rest of the
** machine used meanwhile: the busy time of all CPUs in /proc/stat minus
** this process's own (getrusage), and the time the hypervisor took
** (steal). Linux only; elsewhere the figures are -1 (null). */
typedef struct lt_cpu {
    double busy_s;  /* all CPUs: user nice system irq softirq, seconds */
    double steal_s; /* all CPUs: steal */
    double self_s;  /* this process: user + system */
    double wall_s;
} lt_cpu;

static inline lt_cpu lt_cpu_now(void)
{
    lt_cpu c = {-1, -1, -1, 0};
    struct rusage ru;
    unsigned long long v[8] = {0};
    long hz = sysconf(_SC_CLK_TCK);
    FILE *f = fopen("/proc/stat", "r");
    c.wall_s = bn_now();
    if (f && hz > 0 &&
        fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
               &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) == 8) {
        /* user nice system idle iowait irq softirq steal */
        c.busy_s = (double)(v[0] + v[1] + v[2] + v[5] + v[6]) / (double)hz;
        c.steal_s = (double)v[7] / (double)hz;
    }
    if (f) fclose(f);
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        c.self_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 +
                   (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
    return c;
}

/* Between readings a and b: the CPU used by other processes and the
** steal, each in cores (1.0 = one core all the time); -1 if unknown. */
static inline void lt_cpu_other(const lt_cpu *a, const lt_cpu *b, double *other,
                                double *steal)
{
    double wall = b->wall_s - a->wall_s;
    *other = *steal = -1;
    if (a->busy_s < 0 || b->busy_s < 0 || a->self_s < 0 || wall <= 0) return;
    *other = ((b->busy_s - a->busy_s) - (b->self_s - a->self_s)) / wall;
    if (*other < 0) *other = 0; /* tick granularity */
    *steal = (b->steal_s - a->steal_s) / wall;
}

#endif /* VECIDX_BENCH_LATENCY_H */
