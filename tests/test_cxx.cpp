// test_cxx.cpp -- vecidx.h compiles as C++ and links against libvecidx.a
// (built by the Makefile as tests/vecidx_test_cxx). Prints one line per
// check and ends with "N passed, N failed".
#include "vecidx.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

static int passed = 0, failed = 0;

static void check(bool ok, const char *what)
{
    std::printf("%s %s\n", ok ? "ok" : "FAIL", what);
    (ok ? passed : failed)++;
}

int main()
{
    const uint32_t dim = 4;
    vecidx_params p;
    check(vecidx_params_init(&p, VECIDX_FLAT, VECIDX_L2, dim) == VECIDX_OK,
          "cxx_params_init");
    vecidx *ix = nullptr;
    check(vecidx_create(&p, &ix) == VECIDX_OK && ix != nullptr, "cxx_create");
    if (!ix) {
        std::printf("%d passed, %d failed\n", passed, failed + 1);
        return 1;
    }

    std::vector<uint64_t> keys = {10, 20, 30};
    std::vector<float> vecs = {0, 0, 0, 0, 1, 1, 1, 1, 5, 5, 5, 5};
    check(vecidx_add_batch(ix, keys.size(), keys.data(), vecs.data()) ==
                  VECIDX_OK &&
              vecidx_count(ix) == 3,
          "cxx_add_batch");

    const float q[4] = {0.9f, 0.9f, 0.9f, 0.9f};
    uint64_t out[5];
    float dist[5];
    size_t found = 0;
    vecidx_search_opts opts = {};
    opts.filter = [](uint64_t key, void *) -> int { return key != 30; };
    int rc = vecidx_search(ix, q, 5, &opts, out, dist, &found);
    check(rc == VECIDX_OK && found == 2 && out[0] == 20 && out[1] == 10 &&
              out[2] == UINT64_MAX && std::isinf(dist[2]) &&
              std::fabs(dist[0] - 0.04f) < 1e-5f,
          "cxx_search_with_lambda_filter");

    check(vecidx_remove(ix, 99) == VECIDX_ENOTFOUND &&
              std::strlen(vecidx_errmsg(ix)) > 0 &&
              std::strcmp(vecidx_strerror(VECIDX_ENOTFOUND),
                          vecidx_strerror(VECIDX_EEXIST)) != 0,
          "cxx_errors");
    check(std::strcmp(vecidx_version(), VECIDX_VERSION_STRING) == 0 &&
              vecidx_version_number() == VECIDX_VERSION_NUMBER,
          "cxx_version");
    vecidx_close(ix);
    vecidx_close(nullptr);

    std::printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
