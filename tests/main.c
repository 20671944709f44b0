/*
** main.c -- the test runner of tests/vecidx_test.
**
**   tests/vecidx_test            run every test
**   tests/vecidx_test WORD...    run the tests whose name contains a WORD
**   tests/vecidx_test -WORD...   run the tests whose name contains none
** (both kinds mixed: a name must contain a WORD and no -WORD)
** VTEST_TIMES=1 in the environment adds each test's run time to its line;
** VTEST_DEBUG=1 prints a few counters (allocation-failure runs, operations
** done by the concurrent threads) to judge what a test covered.
** The last line is always "N passed, N failed"; exit code 1 on failure.
*/
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vtest.h"

#define VT_MAX_PRINTED 25 /* failure lines printed per test */

static atomic_long vt_nfail;
static pthread_mutex_t vt_print_lock = PTHREAD_MUTEX_INITIALIZER;

void vt_fail(const char *file, int line, const char *fmt, ...)
{
    long n = atomic_fetch_add(&vt_nfail, 1) + 1;
    va_list ap;
    if (n > VT_MAX_PRINTED) return;
    pthread_mutex_lock(&vt_print_lock);
    printf("  %s:%d: ", file, line);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    if (n == VT_MAX_PRINTED) printf("  (further failures not printed)\n");
    fflush(stdout);
    pthread_mutex_unlock(&vt_print_lock);
}

long vt_failures(void)
{
    return atomic_load(&vt_nfail);
}

typedef struct vt_test {
    const char *name;
    void (*fn)(void);
} vt_test;

#define VT_ENTRY(name) {#name, test_##name},
static const vt_test vt_all[] = {VT_TESTS(VT_ENTRY)};
#undef VT_ENTRY

/* Is the test named `name` chosen by the WORD / -WORD arguments? */
static int vt_selected(const char *name, int argc, char **argv)
{
    int i, any_include = 0, included = 0;
    for (i = 1; i < argc; i++) {
        if (argv[i][0] == '-' && argv[i][1]) {
            if (strstr(name, argv[i] + 1)) return 0;
        } else {
            any_include = 1;
            if (strstr(name, argv[i])) included = 1;
        }
    }
    return !any_include || included;
}

int main(int argc, char **argv)
{
    const char *times = getenv("VTEST_TIMES");
    int show_time = times && *times && strcmp(times, "0") != 0;
    size_t i, ran = 0, failed = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (i = 0; i < sizeof vt_all / sizeof vt_all[0]; i++) {
        double t0;
        if (!vt_selected(vt_all[i].name, argc, argv)) continue;
        atomic_store(&vt_nfail, 0);
        t0 = vt_seconds();
        vt_all[i].fn();
        ran++;
        if (atomic_load(&vt_nfail)) failed++;
        if (show_time)
            printf("%s %s (%.3f s)\n", atomic_load(&vt_nfail) ? "FAIL" : "ok",
                   vt_all[i].name, vt_seconds() - t0);
        else
            printf("%s %s\n", atomic_load(&vt_nfail) ? "FAIL" : "ok",
                   vt_all[i].name);
        fflush(stdout);
    }
    if (ran == 0) {
        printf("no test is selected by the arguments\n");
        printf("0 passed, 0 failed\n");
        return 1;
    }
    printf("%zu passed, %zu failed\n", ran - failed, failed);
    return failed ? 1 : 0;
}
