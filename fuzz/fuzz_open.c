/* libFuzzer target: arbitrary bytes as an index file, and optionally its
** write-ahead log, must give an error code or a usable index, never a
** crash, hang or leak. The last byte picks the split: 0 means the whole
** input is the main file (so saved index files are valid seeds, see
** fuzz/make_seeds.c), any other value b puts the log at b/256 of it.
**
**   clang -g -O1 -fsanitize=fuzzer,address,undefined -I. \
**       fuzz/fuzz_open.c vecidx.c -o fuzz/fuzz_open -pthread -lm
**   fuzz/fuzz_open -max_total_time=60 fuzz/corpus
**
** Built with -DVX_FUZZ_MAIN instead of -fsanitize=fuzzer, it replays the
** files named on its command line, so a crash input can be debugged under
** gdb without libFuzzer. */
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vecidx.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void put_file(const char *path, const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], wal[80];
    float q[4096];
    uint64_t keys[10];
    float dists[10];
    size_t found, i, split;
    vecidx *ix;
    vecidx_stats_t st;
    split = size ? (size_t)data[size - 1] * size / 256 : 0;
    snprintf(path, sizeof path, "/tmp/vecidx-fuzz-%ld", (long)getpid());
    snprintf(wal, sizeof wal, "%s-wal", path);
    put_file(path, data, split ? split : size);
    if (split)
        put_file(wal, data + split, size - split);
    else
        unlink(wal);
    if (vecidx_open(path, NULL, VECIDX_RDONLY, &ix) == VECIDX_OK) {
        vecidx_stats(ix, &st);
        if (st.dim <= 4096) {
            for (i = 0; i < st.dim; i++) q[i] = (float)(i % 7) - 3.0f + 0.5f;
            vecidx_search(ix, q, 10, NULL, keys, dists, &found);
        }
        vecidx_check(ix);
        vecidx_close(ix);
    }
    unlink(path);
    unlink(wal);
    return 0;
}

#ifdef VX_FUZZ_MAIN
int main(int argc, char **argv)
{
    int i;
    for (i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        uint8_t *buf;
        long n;
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        n = ftell(f);
        fseek(f, 0, SEEK_SET);
        buf = malloc(n > 0 ? (size_t)n : 1);
        if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n)
            LLVMFuzzerTestOneInput(buf, (size_t)n);
        free(buf);
        fclose(f);
        printf("%s: ok\n", argv[i]);
    }
    return 0;
}
#endif
