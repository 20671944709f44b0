/* Quick start: a flat (exact) L2 index of 4-dimensional vectors.
** Build: cc -std=c11 -O2 -I. examples/quickstart.c vecidx.c -pthread -lm */
#include <stdio.h>

#include "vecidx.h"

int main(void)
{
    static const float vecs[3][4] = {
        {1, 0, 0, 0}, {0, 1, 0, 0}, {0.9f, 0.1f, 0, 0}};
    const float query[4] = {1, 0.05f, 0, 0};
    uint64_t keys[2];
    float dists[2];
    size_t found, i;
    vecidx_params p;
    vecidx *ix = NULL;
    int rc = vecidx_params_init(&p, VECIDX_FLAT, VECIDX_L2, 4);
    if (rc == VECIDX_OK) rc = vecidx_create(&p, &ix);
    for (i = 0; rc == VECIDX_OK && i < 3; i++)
        rc = vecidx_add(ix, 100 + i, vecs[i]); /* keys 100, 101, 102 */
    if (rc == VECIDX_OK)
        rc = vecidx_search(ix, query, 2, NULL, keys, dists, &found);
    if (rc != VECIDX_OK) {
        fprintf(stderr, "vecidx: %s: %s\n", vecidx_strerror(rc),
                vecidx_errmsg(ix));
        vecidx_close(ix);
        return 1;
    }
    for (i = 0; i < found; i++)
        printf("key %llu  distance %.4f\n", (unsigned long long)keys[i],
               dists[i]);
    vecidx_close(ix);
    return 0;
}
