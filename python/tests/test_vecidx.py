"""Tests of the Python binding against exact ground truth computed by NumPy.

Run from the repository root:
    VECIDX_LIBRARY=$PWD/libvecidx.so python3 -m pytest -q python/tests
Without VECIDX_LIBRARY the package looks next to itself and in the
repository root. With VECIDX_TEST_INSTALLED=1 they test the installed
package (pip install ./python) instead of the checkout's python/vecidx:
see python/ci-install-test.sh.
"""

import array
import ctypes
import os
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

PYDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(PYDIR)
# The checkout's package, unless the installed one is under test.
INSTALLED = os.environ.get("VECIDX_TEST_INSTALLED") == "1"
PKG_PATH = "" if INSTALLED else PYDIR
if PKG_PATH and PKG_PATH not in sys.path:
    sys.path.insert(0, PKG_PATH)

import vecidx  # noqa: E402
from vecidx import _capi, _index  # noqa: E402


# ---- Helpers ----------------------------------------------------------------

def needs(*symbols):
    """Skip while the loaded library predates these functions (the binding
    is written against vecidx.h, which may be ahead of vecidx.c)."""
    missing = [s for s in symbols if not hasattr(_capi.lib, s)]
    return pytest.mark.skipif(bool(missing), reason="library lacks "
                              + ", ".join(missing))


NEEDS_IVFPQ = needs("vecidx_train", "vecidx_keys")
NEEDS_KEYS = needs("vecidx_keys")


def clustered(n, dim, seed, centers=32, spread=0.35):
    """Points around random centres: the kind of data ANN indexes see, and
    on which quantization behaves as it does in practice."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim))
    x = c[rng.integers(0, centers, n)] + spread * rng.standard_normal((n, dim))
    return x.astype(np.float32)


def exact_dists(metric, data, queries):
    """Distances of every query to every data row, in float64."""
    d = data.astype(np.float64)
    q = queries.astype(np.float64)
    if metric == "l2":
        return (q * q).sum(1)[:, None] - 2 * q @ d.T + (d * d).sum(1)[None]
    if metric == "ip":
        return -(q @ d.T)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    return 1 - qn @ dn.T


def recall(found_keys, dist_matrix, keys, k, admitted=None):
    """Mean recall@k of the result rows against exact distances.

    A returned key counts as a true neighbour when its exact distance is
    within float32 rounding of the k-th smallest: different summation
    orders (SIMD kernels) may legitimately swap keys that are that close.
    """
    pos = {int(key): i for i, key in enumerate(keys)}
    total = 0.0
    for qi, row in enumerate(found_keys):
        d = dist_matrix[qi]
        if admitted is not None:
            d = np.where(admitted, d, np.inf)
        kth = np.partition(d, k - 1)[k - 1]
        tol = 1e-5 * max(1.0, abs(kth))
        hits = sum(1 for key in row[:k]
                   if key in pos and d[pos[int(key)]] <= kth + tol)
        total += hits / k
    return total / len(found_keys)


@pytest.fixture(scope="module")
def data():
    x = clustered(4000, 32, seed=1)
    q = clustered(100, 32, seed=2)
    return x, q


# ---- The library and the C layout -------------------------------------------

def header_version():
    with open(os.path.join(REPO, "vecidx.h")) as f:
        m = re.search(r'#define VECIDX_VERSION_STRING "([^"]+)"', f.read())
    return m.group(1)


@pytest.mark.skipif(not os.path.exists(os.path.join(REPO, "vecidx.h")),
                    reason="not in the source tree")
def test_library_matches_header():
    assert vecidx.library_version() == header_version()
    assert vecidx.simd() in ("avx512", "avx2", "neon", "scalar")
    assert os.path.exists(vecidx.library_path) or "/" not in \
        vecidx.library_path


def _c_compiler():
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


@pytest.mark.skipif(_c_compiler() is None
                    or not os.path.exists(os.path.join(REPO, "vecidx.h")),
                    reason="needs a C compiler and the source tree")
def test_struct_layout_matches_c(tmp_path):
    """Every ctypes struct has the size and field offsets the compiler
    gives the header's struct: the binding must never misread a field."""
    structs = [(_capi.Params, "vecidx_params"),
               (_capi.SearchOpts, "vecidx_search_opts"),
               (_capi.Stats, "vecidx_stats_t"),
               (_capi.Latency, "vecidx_latency"),
               (_capi.Recall, "vecidx_recall"),
               (_capi.Tuning, "vecidx_tuning"),
               (_capi.Allocator, "vecidx_allocator")]
    lines = []
    expected = []
    for cls, cname in structs:
        lines.append('printf("%%s %%zu\\n", "%s", sizeof(%s));'
                     % (cname, cname))
        expected.append("%s %d" % (cname, ctypes.sizeof(cls)))
        for name, ftype in cls._fields_:
            lines.append(
                'printf("%%s %%zu %%zu\\n", "%s.%s", offsetof(%s, %s), '
                'sizeof(((%s *)0)->%s));'
                % (cname, name, cname, name, cname, name))
            expected.append("%s.%s %d %d" % (cname, name,
                                             getattr(cls, name).offset,
                                             ctypes.sizeof(ftype)))
    src = tmp_path / "layout.c"
    src.write_text("#include <stddef.h>\n#include <stdio.h>\n"
                   '#include "vecidx.h"\nint main(void)\n{\n'
                   + "\n".join(lines) + "\nreturn 0;\n}\n")
    exe = tmp_path / "layout"
    subprocess.run([_c_compiler(), "-std=c11", "-I", REPO, "-o", str(exe),
                    str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True,
                         text=True).stdout.split("\n")
    assert [line for line in out if line] == expected
    # And the C struct has no field the binding does not know about: the
    # last field ends where the struct (minus tail padding) ends.
    for cls, _ in structs:
        last = getattr(cls, cls._fields_[-1][0])
        assert ctypes.sizeof(cls) - (last.offset + last.size) < 8


# ---- Recall against exact search --------------------------------------------

@pytest.mark.parametrize("metric", ["l2", "ip", "cos"])
def test_flat_is_exact(data, metric):
    x, q = data
    keys = np.arange(1000, 1000 + len(x), dtype=np.uint64)
    with vecidx.Index(32, kind="flat", metric=metric) as ix:
        ix.add(keys, x)
        assert len(ix) == len(x)
        found, dists = ix.search(q, k=10)
        assert found.shape == (len(q), 10) and dists.shape == (len(q), 10)
        assert found.dtype == np.uint64 and dists.dtype == np.float32
        exact = exact_dists(metric, x, q)
        assert recall(found, exact, keys, 10) == 1.0
        # The distances reported are the metric's, in increasing order.
        rows = np.searchsorted(keys, found)
        want = np.take_along_axis(exact, rows.astype(np.int64), axis=1)
        np.testing.assert_allclose(dists, want, rtol=1e-4, atol=1e-4)
        assert (np.diff(dists, axis=1) >= 0).all()
        # A single query gives the same answer as its row of the batch.
        k1, d1 = ix.search(q[7], k=10)
        assert k1.ndim == 1 and list(k1) == list(found[7])


@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_hnsw_recall(data, metric):
    x, q = data
    keys = np.arange(len(x), dtype=np.uint64)
    ix = vecidx.Index(32, kind="hnsw", metric=metric, M=16,
                      ef_construction=200, seed=7)
    ix.add(keys, x)
    exact = exact_dists(metric, x, q)
    found, _ = ix.search(q, k=10, ef=64)
    r64 = recall(found, exact, keys, 10)
    assert r64 >= 0.9, r64
    found, _ = ix.search(q, k=10, ef=256)
    r256 = recall(found, exact, keys, 10)
    assert r256 >= 0.97 and r256 >= r64 - 0.01, (r64, r256)
    ix.check()
    ix.close()


@NEEDS_IVFPQ
def test_ivfpq_recall(data):
    x, q = data
    keys = np.arange(len(x), dtype=np.uint64)
    exact = exact_dists("l2", x, q)
    ix = vecidx.Index(32, kind="ivfpq", metric="l2", nlist=32, pq_m=16,
                      nprobe=8, keep_vectors=True, seed=3)
    ix.train(x)
    st = ix.stats()
    assert st["trained"] and st["nlist"] == 32 and st["pq_m"] == 16
    ix.add(keys, x)
    found, _ = ix.search(q, k=10)
    r_codes = recall(found, exact, keys, 10)
    assert r_codes >= 0.7, r_codes
    # Re-ranking the best 10*k by the kept full vectors is close to exact,
    # and the distances are then the exact ones.
    found, dists = ix.search(q, k=10, refine=10)
    r_refined = recall(found, exact, keys, 10)
    assert r_refined >= 0.95 and r_refined >= r_codes, (r_codes, r_refined)
    rows = found.astype(np.int64)
    np.testing.assert_allclose(
        dists, np.take_along_axis(exact, rows, axis=1), rtol=1e-4, atol=1e-3)
    # Probing every list cannot do worse than probing a quarter of them.
    found, _ = ix.search(q, k=10, nprobe=32, refine=10)
    assert recall(found, exact, keys, 10) >= r_refined - 0.01
    # With the full vectors kept, get returns exactly what was added.
    np.testing.assert_array_equal(ix.get(123), x[123])
    ix.remove([5, 6])
    assert sorted(ix.keys().tolist()) == [k for k in range(len(x))
                                          if k not in (5, 6)]
    ix.check()
    ix.close()


@NEEDS_IVFPQ
def test_ivfpq_untrained_is_exact_then_trains_itself(data):
    x, q = data
    stages = []
    ix = vecidx.Index(32, kind="ivfpq", metric="l2", nlist=16, pq_m=8,
                      train_size=2000, progress=lambda s, d: stages.append(
                          (s, d)))
    ix.add(np.arange(1000), x[:1000])
    assert not ix.stats()["trained"]
    # Buffered vectors are searched exactly before training.
    found, _ = ix.search(q[:20], k=10)
    exact = exact_dists("l2", x[:1000], q[:20])
    assert recall(found, exact, np.arange(1000), 10) == 1.0
    # Reaching train_size trains the index on what it holds.
    ix.add(np.arange(1000, 2500), x[1000:2500])
    st = ix.stats()
    assert st["trained"] and st["nlist"] == 16 and st["count"] == 2500
    assert {"kmeans", "pq"} <= {s for s, _ in stages}
    assert all(0.0 <= d <= 1.0 for _, d in stages)
    assert len(ix.keys()) == 2500


@NEEDS_IVFPQ
def test_ivfpq_file_round_trip(tmp_path, data):
    x, q = data
    path = str(tmp_path / "pq.vx")
    with vecidx.Index.open(path, dim=32, kind="ivfpq", metric="l2",
                           create=True, nlist=16, pq_m=8, sync="off") as ix:
        ix.add(np.arange(500), x[:500])
        ix.train(x[:2000])   # checkpointed into the main file
        ix.add(np.arange(500, 3000), x[500:3000])
        ix.remove(42)
        want = ix.search(q[:10], k=5)
        # Without keep_vectors, get() gives the reconstruction from the
        # codes: near the vector added, not equal to it.
        rec = ix.get(7)
        err = np.linalg.norm(rec - x[7]) / np.linalg.norm(x[7])
        assert 0 < err < 0.5, err
    with vecidx.Index.open(path, readonly=True) as ix:
        st = ix.stats()
        assert st["trained"] and st["nlist"] == 16 and st["pq_m"] == 8
        assert len(ix) == 2999 and 42 not in ix
        got = ix.search(q[:10], k=5)
        np.testing.assert_array_equal(want[0], got[0])
        np.testing.assert_allclose(want[1], got[1], rtol=1e-6)
        ix.check()


@NEEDS_IVFPQ
def test_progress_exception_is_reraised(data):
    x, _ = data

    def broken(stage, done):
        raise RuntimeError("progress bar fell over in " + stage)

    ix = vecidx.Index(32, kind="ivfpq", metric="l2", nlist=8, pq_m=8,
                      progress=broken)
    with pytest.raises(RuntimeError, match="progress bar fell over"):
        ix.train(x[:1000])
    # The training itself completed, as documented.
    assert ix.stats()["trained"]
    ix.add(np.arange(10), x[:10])
    assert len(ix) == 10


# ---- Compressed storage (flat and HNSW) -------------------------------------

def _search_args(kind):
    # ef 64 as in test_hnsw_recall; the flat index takes no breadth.
    return {"k": 10, "ef": 64} if kind == "hnsw" else {"k": 10}


def _exact_at(exact, found):
    """The exact distance of every returned key (keys are row numbers)."""
    return np.take_along_axis(exact, found.astype(np.int64), axis=1)


def _assert_same_results(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
@pytest.mark.parametrize("keep", [False, True])
def test_int8_storage(tmp_path, data, kind, keep):
    x, q = data
    keys = np.arange(len(x), dtype=np.uint64)
    exact = exact_dists("l2", x, q)
    search = _search_args(kind)
    # One build thread: the same graph every run, so the recall compared
    # below cannot move by chance.
    common = {"kind": kind, "metric": "l2", "seed": 7, "threads": 1}
    with vecidx.Index(32, **common) as f32:
        f32.add(keys, x)
        r_f32 = recall(f32.search(q, **search)[0], exact, keys, 10)
        st_f32 = f32.stats()
    assert st_f32["storage"] == "f32"

    ix = vecidx.Index(32, storage="i8", keep_vectors=keep, **common)
    ix.add(keys, x)
    st = ix.stats()
    assert st["storage"] == "i8" and st["count"] == len(x)
    # vector_bytes counts what searches read, which the kept float32
    # vectors are not; memory_bytes counts them too.
    assert 0 < st["vector_bytes"] < st_f32["vector_bytes"]
    if not keep:
        assert st["memory_bytes"] < st_f32["memory_bytes"]
    found, dists = ix.search(q, **search)
    r_i8 = recall(found, exact, keys, 10)
    assert r_i8 >= r_f32 - 0.05, (r_f32, r_i8)
    assert (np.diff(dists, axis=1) >= 0).all()
    if keep:
        # The best 2k by code distance are re-scored with the float32
        # vectors: exact distances, and get returns what was added.
        np.testing.assert_allclose(dists, _exact_at(exact, found),
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(ix.get(123), x[123])
        np.testing.assert_array_equal(ix.get([5, 3999]), x[[5, 3999]])
        # A wider re-ranking per call is no worse.
        wide, _ = ix.search(q, refine=8, **search)
        assert recall(wide, exact, keys, 10) >= r_i8 - 0.01
    else:
        # Decoded codes: each component within half a step of its vector's
        # own range (vecidx_get), plus float rounding.
        got = ix.get(np.arange(200))
        half = (x[:200].max(1) - x[:200].min(1)) / 254 / 2
        assert (np.abs(got - x[:200]) <= half[:, None] * 1.001 + 1e-6).all()
    ix.check()

    path = str(tmp_path / "i8.vx")
    ix.save(path)
    before_get = ix.get(77)
    ix.close()
    with vecidx.Index.open(path, readonly=True) as back:
        st2 = back.stats()
        assert st2["storage"] == "i8" and st2["count"] == len(x)
        assert st2["vector_bytes"] == st["vector_bytes"]
        _assert_same_results((found, dists), back.search(q, **search))
        np.testing.assert_array_equal(back.get(77), before_get)
        back.check()


def test_int8_storage_file_backed(tmp_path, data):
    """Written through the log and replayed at the next open."""
    x, q = data
    path = str(tmp_path / "i8log.vx")
    # One thread, here and at the reopen, whose replay of the log links
    # the vectors again: the same graph, so the same answers.
    with vecidx.Index.open(path, dim=32, kind="hnsw", metric="l2",
                           create=True, sync="off", threads=1, storage="i8",
                           keep_vectors=True, refine=3) as ix:
        ix.add(np.arange(1000), x[:1000])
        ix.remove([10, 11])
        ix.upsert(12, x[2000])
        want = ix.search(q, k=10)
    with vecidx.Index.open(path, dim=32, kind="hnsw", metric="l2",
                           readonly=True, threads=1) as ix:
        st = ix.stats()
        assert st["storage"] == "i8" and st["count"] == 998
        assert 10 not in ix and 11 not in ix
        np.testing.assert_array_equal(ix.get(12), x[2000])
        _assert_same_results(want, ix.search(q, k=10))
        ix.check()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_binary_storage_with_kept_vectors(tmp_path, data, kind):
    x, q = data
    keys = np.arange(len(x), dtype=np.uint64)
    exact = exact_dists("cos", x, q)
    search = _search_args(kind)
    ix = vecidx.Index(32, kind=kind, metric="cos", storage="bin",
                      keep_vectors=True, seed=7, threads=1)
    ix.add(keys, x)
    st = ix.stats()
    assert st["storage"] == "bin" and st["count"] == len(x)
    # The bits only pick candidates (32 bits say little about clustered
    # points, so recall at the default k*10 is low); the kept vectors rank
    # them, so every distance returned is exact.
    found, dists = ix.search(q, **search)
    np.testing.assert_allclose(dists, _exact_at(exact, found), rtol=1e-4,
                               atol=1e-4)
    r_default = recall(found, exact, keys, 10)
    r40 = recall(ix.search(q, refine=40, **search)[0], exact, keys, 10)
    everything, _ = ix.search(q, refine=len(x) // 10, **search)
    r_all = recall(everything, exact, keys, 10)
    assert r_default <= r40 + 0.01 and r40 <= r_all + 0.01, \
        (r_default, r40, r_all)
    # Re-scoring every vector is exact search.
    assert r_all >= (1.0 if kind == "flat" else 0.95), r_all
    np.testing.assert_array_equal(ix.get(321), x[321])
    ix.check()

    path = str(tmp_path / "bin.vx")
    ix.save(path)
    with vecidx.Index.open(path, readonly=True) as back:
        assert back.stats()["storage"] == "bin"
        _assert_same_results((found, dists), back.search(q, **search))
        np.testing.assert_array_equal(back.get(321), x[321])
    ix.close()


def test_storage_refusals():
    # Signs say little about L2 distances; bits alone cannot rank; IVF-PQ
    # has codes of its own. Each is the library's refusal, with its reason.
    for kwargs in ({"kind": "hnsw", "metric": "l2", "storage": "bin",
                    "keep_vectors": True},
                   {"kind": "flat", "metric": "cos", "storage": "bin"},
                   {"kind": "ivfpq", "metric": "l2", "storage": "i8"}):
        with pytest.raises(vecidx.NotSupportedError) as e:
            vecidx.Index(8, **kwargs)
        assert e.value.code == _capi.ENOTSUP and e.value.message, kwargs
    with pytest.raises(vecidx.InvalidArgumentError):
        vecidx.Index(8, kind="flat", storage="int4")


def test_half_precision_storage(data):
    """vecidx.h declares VECIDX_STORE_F16 and a library without it refuses
    it as not supported (NotSupportedError, a NotImplementedError). A
    library that has it must keep each component to half precision."""
    x, q = data
    try:
        ix = vecidx.Index(32, kind="flat", metric="l2", storage="f16")
    except vecidx.NotSupportedError as e:
        assert isinstance(e, NotImplementedError)
        assert e.code == _capi.ENOTSUP and "half" in e.message, e.message
        return
    assert ix.stats()["storage"] == "f16"
    ix.add(np.arange(len(x)), x)
    got = ix.get(np.arange(200))
    np.testing.assert_array_equal(got, x[:200].astype(np.float16))
    found, _ = ix.search(q, k=10)
    assert recall(found, exact_dists("l2", x, q), np.arange(len(x)),
                  10) >= 0.95
    ix.close()


# ---- Errors -----------------------------------------------------------------

def test_errors_carry_the_library_message():
    ix = vecidx.Index(8, kind="flat", metric="l2")
    ix.add(5, np.ones(8))
    with pytest.raises(vecidx.ExistsError) as e:
        ix.add(5, np.ones(8))
    assert e.value.code == -6 and "5" in e.value.message
    assert e.value.message in str(e.value)
    with pytest.raises(vecidx.NotFoundError) as e:
        ix.get(6)
    assert isinstance(e.value, KeyError) and e.value.message
    with pytest.raises(vecidx.InvalidArgumentError) as e:
        ix.add(7, [1, 2, float("nan"), 4, 5, 6, 7, 8])
    assert isinstance(e.value, ValueError) and e.value.message
    with pytest.raises(vecidx.InvalidArgumentError) as e:
        ix.search(np.ones(8), k=0)
    assert e.value.code == vecidx.InvalidArgumentError.code == -1
    with pytest.raises(vecidx.DimensionError):
        ix.search(np.ones(9), k=1)
    with pytest.raises(vecidx.DimensionError):
        ix.add([10, 11], np.ones((2, 7)))
    with pytest.raises(vecidx.InvalidArgumentError):
        ix.add([-1], np.ones((1, 8)))
    with pytest.raises(vecidx.NotFoundError):
        ix.remove(99)
    # Batches are all or nothing: one existing key and nothing goes in.
    with pytest.raises(vecidx.ExistsError) as e:
        ix.add([20, 21, 5], np.ones((3, 8)))
    assert "5" in e.value.message
    assert len(ix) == 1 and 20 not in ix
    # remove(list) checks every key first.
    with pytest.raises(vecidx.NotFoundError):
        ix.remove([5, 6])
    assert 5 in ix


def test_creation_errors():
    with pytest.raises(vecidx.DimensionError) as e:
        vecidx.Index(0, kind="flat")
    assert e.value.message
    with pytest.raises(vecidx.InvalidArgumentError):
        vecidx.Index(8, kind="kdtree")
    with pytest.raises(vecidx.InvalidArgumentError):
        vecidx.Index(8, metric="hamming")
    with pytest.raises(TypeError):
        vecidx.Index(8, efConstruction=10)
    with pytest.raises(vecidx.InvalidArgumentError):
        vecidx.Index(8, M=2 ** 40)
    with pytest.raises(vecidx.InvalidArgumentError) as e:
        vecidx.Index(8, metric="cos").add(1, np.zeros(8))
    assert e.value.message


def test_cosine_zero_rejected_before_any_upsert():
    ix = vecidx.Index(4, kind="flat", metric="cos")
    ix.add(1, [1, 0, 0, 0])
    with pytest.raises(vecidx.InvalidArgumentError):
        ix.upsert([1, 2], [[0, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(ix.get(1), [1, 0, 0, 0])
    assert 2 not in ix


@pytest.mark.parametrize("bad", [1e35, 1e-40])
def test_cosine_too_long_or_short_rejected_before_any_upsert(bad):
    ix = vecidx.Index(4, kind="flat", metric="cos")
    ix.add(1, [1, 0, 0, 0])
    with pytest.raises(vecidx.InvalidArgumentError):
        ix.upsert([1, 2], [[0, 1, 0, 0], [0, 0, bad, 0]])
    np.testing.assert_array_equal(ix.get(1), [1, 0, 0, 0])
    assert 2 not in ix
    with pytest.raises(vecidx.InvalidArgumentError):
        ix.add(3, [0, 0, bad, 0])


# ---- Writing and reading ----------------------------------------------------

@NEEDS_KEYS
@pytest.mark.parametrize("kind,params", [
    ("flat", {}),
    ("hnsw", {}),
    ("ivfpq", {"keep_vectors": True}),   # untrained: vectors buffered
])
def test_keys_get_upsert_remove(kind, params):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    with vecidx.Index(6, kind=kind, metric="l2", **params) as ix:
        ix.add(np.arange(50) * 3, x)
        assert sorted(ix.keys().tolist()) == list(range(0, 150, 3))
        assert sorted(int(k) for k in ix) == list(range(0, 150, 3))
        np.testing.assert_array_equal(ix.get(9), x[3])
        np.testing.assert_array_equal(ix.get([0, 147]), x[[0, 49]])
        ix.upsert(9, np.full(6, 2.0))
        ix.upsert([9, 1000], np.full((2, 6), 3.0))
        np.testing.assert_array_equal(ix.get(1000), np.full(6, 3.0))
        np.testing.assert_array_equal(ix.get(9), np.full(6, 3.0))
        ix.remove(0)
        ix.remove([3, 6])
        assert len(ix) == 48 and 0 not in ix and 3 not in ix
        assert set(ix.keys().tolist()) == set(range(9, 150, 3)) | {1000}
        assert "text" not in ix and -1 not in ix
        # The largest key is an ordinary key.
        ix.add(2 ** 64 - 1, np.ones(6))
        assert 2 ** 64 - 1 in ix
        k, _ = ix.search(np.ones(6), k=1)
        assert int(k[0]) == 2 ** 64 - 1
        st = ix.stats()
        assert st["count"] == 49 and st["dim"] == 6 and st["kind"] == kind
        assert sorted(ix.keys().tolist()) == sorted(
            list(range(9, 150, 3)) + [1000, 2 ** 64 - 1])


def test_search_short_of_results():
    ix = vecidx.Index(3, kind="flat", metric="l2")
    ix.add([1, 2], [[0, 0, 1], [0, 1, 0]])
    k, d = ix.search([0, 0, 1], k=5)
    assert list(k) == [1, 2] and d[0] == 0
    k, d, found = ix.search(np.array([[0, 0, 1], [0, 1, 0]]), k=4,
                            return_found=True)
    assert list(found) == [2, 2]
    assert np.isinf(d[:, 2:]).all() and (k[:, 2:] == vecidx.MISSING_KEY).all()
    assert list(k[1, :2]) == [2, 1]
    empty = vecidx.Index(3, kind="hnsw", metric="l2")
    k, d = empty.search([1, 2, 3], k=3)
    assert len(k) == 0 and len(d) == 0


def test_filter(data):
    x, q = data
    keys = np.arange(len(x), dtype=np.uint64)
    admitted = keys % 5 == 0
    exact = exact_dists("l2", x, q)
    flat = vecidx.Index(32, kind="flat", metric="l2")
    flat.add(keys, x)
    calls = []

    def only_fives(key):
        calls.append(key)
        return key % 5 == 0

    found, _ = flat.search(q, k=10, filter=only_fives)
    assert calls and all(int(k) % 5 == 0 for k in found.ravel())
    assert recall(found, exact, keys, 10, admitted) == 1.0
    hnsw = vecidx.Index(32, kind="hnsw", metric="l2", seed=1)
    hnsw.add(keys, x)
    found, _ = hnsw.search(q, k=10, ef=128, filter=lambda k: k % 5 == 0)
    assert all(int(k) % 5 == 0 for k in found.ravel())
    assert recall(found, exact, keys, 10, admitted) >= 0.9
    # Asked for, a batch calls the filter from several worker threads at
    # once (slowly: each call takes the GIL), with the same results.
    found2, _ = hnsw.search(q[:8], k=10, ef=128, threads=2,
                            filter=lambda k: k % 5 == 0)
    np.testing.assert_array_equal(found2, found[:8])
    allowed = set(range(0, 4000, 97))
    k1, _ = hnsw.search(q[0], k=100, filter=allowed.__contains__)
    assert set(k1.tolist()) == allowed


def test_filter_exception_is_reraised():
    ix = vecidx.Index(4, kind="flat", metric="l2")
    ix.add(range(20), np.random.default_rng(0).random((20, 4)))

    def broken(key):
        if key == 7:
            raise ZeroDivisionError("filter failed on 7")
        return True

    with pytest.raises(ZeroDivisionError, match="filter failed on 7"):
        ix.search(np.zeros(4) + 0.5, k=20, filter=broken)
    with pytest.raises(ZeroDivisionError):
        ix.search(np.zeros((3, 4)) + 0.5, k=20, filter=broken)
    # Calling back into the index from its own filter would deadlock the
    # library; the binding raises instead.
    with pytest.raises(vecidx.StateError):
        ix.search(np.zeros(4), k=3, filter=lambda key: len(ix) > 0)
    # The index is intact afterwards.
    assert len(ix) == 20 and len(ix.search(np.zeros(4), k=20)[0]) == 20


# ---- Allowed sets -----------------------------------------------------------

# Skipped, like the tests of functions the library lacks, while the loaded
# library predates allowed sets (it would ignore them); the source-tree
# test below makes sure that never hides a library built from this tree.
NEEDS_ALLOW = pytest.mark.skipif(not _index._allowed_sets_supported(),
                                 reason="library ignores allowed sets")


@pytest.mark.skipif(not os.path.exists(os.path.join(REPO, "vecidx.h")),
                    reason="not in the source tree")
def test_library_of_this_tree_honours_allowed_sets():
    with open(os.path.join(REPO, "vecidx.h")) as f:
        declared = "allow_keys" in f.read()
    if declared and vecidx.library_version() == header_version():
        assert _index._allowed_sets_supported()


@pytest.fixture(scope="module")
def indexes(data):
    x, _ = data
    keys = np.arange(len(x), dtype=np.uint64)
    out = {}
    for kind, params in (("flat", {}), ("hnsw", {"seed": 1}),
                         ("ivfpq", {"nlist": 16, "pq_m": 8,
                                    "keep_vectors": True, "refine": 4})):
        ix = vecidx.Index(32, kind=kind, metric="l2", **params)
        if kind == "ivfpq":
            ix.train(x)
        ix.add(keys, x)
        out[kind] = ix
    return out


def _rows_within(found, allowed):
    return all(int(k) in allowed for k in np.asarray(found).ravel()
               if k != vecidx.MISSING_KEY)


@NEEDS_ALLOW
def test_allowed_set_flat_equals_the_callback(data, indexes):
    x, q = data
    flat = indexes["flat"]
    rng = np.random.default_rng(3)
    for size in (3, 40, 400, 3000):
        allowed = set(int(k) for k in rng.choice(len(x), size, replace=False))
        ka, da, fa = flat.search(q, k=10, allowed=allowed, return_found=True)
        kc, dc, fc = flat.search(q, k=10, filter=allowed.__contains__,
                                 return_found=True)
        # Exact search with ties by key: the same rows exactly.
        np.testing.assert_array_equal(ka, kc)
        np.testing.assert_array_equal(da, dc)
        np.testing.assert_array_equal(fa, fc)
        assert list(fa) == [min(10, size)] * len(q)
        assert _rows_within(ka, allowed)
        # One query at a time gives the rows of the batch.
        k1, d1 = flat.search(q[5], k=10, allowed=allowed)
        np.testing.assert_array_equal(k1, ka[5, :fa[5]])


@NEEDS_ALLOW
@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_allowed_set_approximate(data, indexes, kind):
    x, q = data
    ix = indexes[kind]
    keys = np.arange(len(x), dtype=np.uint64)
    exact = exact_dists("l2", x, q)
    args = {"ef": 128} if kind == "hnsw" else {"nprobe": 16}
    for step in (2, 25, 400):
        allowed = np.arange(0, len(x), step)
        admitted = keys % step == 0
        ka, da, fa = ix.search(q, k=10, allowed=allowed, return_found=True,
                               **args)
        assert _rows_within(ka, set(allowed.tolist()))
        assert recall(ka, exact, keys, 10, admitted) >= 0.9
        kc, _ = ix.search(q, k=10, filter=lambda k: k % step == 0, **args)
        assert recall(kc, exact, keys, 10, admitted) >= 0.9
    # Fewer allowed keys than k: every one of them, nearest first.
    few = [7, 1234, 3999, 250, 17]
    k1, d1 = ix.search(q[0], k=10, allowed=few, **args)
    assert sorted(k1.tolist()) == sorted(few)
    assert (np.diff(d1) >= 0).all()


@NEEDS_ALLOW
def test_allowed_forms_agree(data, indexes):
    x, q = data
    flat = indexes["flat"]
    base = list(range(5, 4000, 11))
    want, _ = flat.search(q[:10], k=10, allowed=set(base))
    big = 2 ** 64 - 1  # a key no index here holds
    for form in (base, tuple(base), range(5, 4000, 11), iter(base),
                 frozenset(base), {k: None for k in base},
                 np.array(base, dtype=np.int64),
                 np.array(base, dtype=np.uint64),
                 np.array(base, dtype=np.uint32),
                 np.repeat(np.array(base, dtype=np.uint64), 2)[::2],  # a view
                 np.array(base, dtype=">u8"),                # byte-swapped
                 base + base + [big, 10 ** 6],  # duplicates, absent keys
                 [np.int64(k) for k in base],
                 np.array(base, dtype=object)):
        got, _ = flat.search(q[:10], k=10, allowed=form)
        np.testing.assert_array_equal(got, want, err_msg=repr(type(form)))
    # The bitmap forms: flags indexed by key, and packed words.
    mask = np.zeros(4000, dtype=bool)
    mask[base] = True
    got, _ = flat.search(q[:10], k=10, allowed_bitmap=mask)
    np.testing.assert_array_equal(got, want)
    got, _ = flat.search(q[:10], k=10, allowed_bitmap=mask.tolist())
    np.testing.assert_array_equal(got, want)
    words = np.zeros(63, dtype=np.uint64)
    for k in base:
        words[k // 64] |= np.uint64(1) << np.uint64(k % 64)
    got, _ = flat.search(q[:10], k=10, allowed_bitmap=words)
    np.testing.assert_array_equal(got, want)


@NEEDS_ALLOW
def test_allowed_filters_combine(data, indexes):
    x, q = data
    flat = indexes["flat"]
    evens = set(range(0, 4000, 2))
    mask = np.zeros(3000, dtype=bool)    # keys 3000 and up: not admitted
    mask[::3] = True
    both = {k for k in evens if k < 3000 and k % 3 == 0 and k % 5 == 0}
    want, wd = flat.search(q[:20], k=10, filter=both.__contains__)
    got, gd = flat.search(q[:20], k=10, allowed=evens, allowed_bitmap=mask,
                          filter=lambda k: k % 5 == 0, selectivity=0.2)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(gd, wd)
    assert _rows_within(got, both)
    # A bitmap shorter than the keys admits none beyond its end.
    got, _ = flat.search(q[:20], k=10, allowed_bitmap=np.ones(100, bool))
    assert (got < 100).all()


@NEEDS_ALLOW
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_allowed_empty_admits_nothing(data, indexes, kind):
    _, q = data
    ix = indexes[kind]
    for empty in (set(), [], np.array([], dtype=np.uint64), np.array([])):
        k1, d1 = ix.search(q[0], k=5, allowed=empty)
        assert len(k1) == 0 and len(d1) == 0
        kb, db, fb = ix.search(q[:4], k=5, allowed=empty, return_found=True)
        assert list(fb) == [0] * 4 and np.isinf(db).all()
        assert (kb == vecidx.MISSING_KEY).all()
    for empty in (np.zeros(0, dtype=bool), np.zeros(4000, dtype=bool),
                  np.zeros(0, dtype=np.uint64)):
        k1, _ = ix.search(q[0], k=5, allowed_bitmap=empty)
        assert len(k1) == 0


@NEEDS_ALLOW
def test_allowed_batch_on_threads(data, indexes):
    _, q = data
    hnsw = indexes["hnsw"]
    allowed = np.arange(1, 4000, 3, dtype=np.uint64)
    one, _ = hnsw.search(q, k=10, ef=96, threads=1, allowed=allowed)
    two, _ = hnsw.search(q, k=10, ef=96, threads=2, allowed=allowed)
    np.testing.assert_array_equal(one, two)
    assert _rows_within(two, set(allowed.tolist()))
    for i in (0, 37, 99):
        ki, _ = hnsw.search(q[i], k=10, ef=96, allowed=allowed)
        np.testing.assert_array_equal(ki, one[i])


def test_allowed_arguments_are_checked():
    ix = vecidx.Index(4, kind="flat", metric="l2")
    ix.add(range(10), np.random.default_rng(0).random((10, 4)))
    q = np.zeros(4)
    bad_allowed = ([3, -1], np.array([3, -1]), {-5}, [1.5], ["3"], "123",
                   7, np.array([[1, 2]]), np.array([True, False]),
                   [True], [2 ** 64], np.array([1.0]))
    for bad in bad_allowed:
        with pytest.raises(ValueError):
            ix.search(q, k=3, allowed=bad)
    bad_bitmaps = (np.array([1, 0, 1]), [1, 0], np.zeros((2, 2), bool),
                   np.zeros(3, np.float32), np.zeros(3, np.uint32), "101")
    for bad in bad_bitmaps:
        with pytest.raises(ValueError):
            ix.search(q, k=3, allowed_bitmap=bad)
    for bad in (0, -0.5, 1.5, float("nan"), "0.5", True, None.__class__):
        with pytest.raises(ValueError):
            ix.search(q, k=3, filter=lambda k: True, selectivity=bad)
    # selectivity describes the callback; alone it is a mistake.
    with pytest.raises(ValueError, match="needs a filter"):
        ix.search(q, k=3, selectivity=0.5)
    keys, _ = ix.search(q, k=3, filter=lambda k: k < 5, selectivity=0.5)
    assert len(keys) == 3 and (keys < 5).all()


def test_allowed_refused_by_a_library_that_ignores_it(monkeypatch):
    ix = vecidx.Index(4, kind="flat", metric="l2")
    ix.add(range(10), np.random.default_rng(0).random((10, 4)))
    monkeypatch.setattr(_index, "_allow_support", False)
    with pytest.raises(vecidx.NotSupportedError, match="allowed sets"):
        ix.search(np.zeros(4), k=3, allowed={1, 2})
    with pytest.raises(vecidx.NotSupportedError):
        ix.search(np.zeros((2, 4)), k=3, allowed_bitmap=np.ones(4, bool))
    # Searches without an allowed set are unaffected.
    assert len(ix.search(np.zeros(4), k=3)[0]) == 3


# ---- Files ------------------------------------------------------------------

def test_persistence_round_trip(tmp_path, data):
    x, q = data
    path = str(tmp_path / "docs.vx")
    keys = np.arange(500, dtype=np.uint64) * 10
    # Reopening replays the log, linking the vectors again. On one thread
    # that gives the same graph, so the same answers, which is what this
    # test compares; with more, the graph depends on thread timing.
    with vecidx.Index.open(path, dim=32, kind="hnsw", metric="cos",
                           create=True, sync="normal", threads=1) as ix:
        assert ix.path == path and len(ix) == 0
        ix.add(keys, x[:500])
        ix.remove(10)
        before = ix.search(q[:10], k=5)
    assert os.path.exists(path)
    # Reopen: the log replays every acknowledged write.
    with vecidx.Index.open(path, dim=32, kind="hnsw", metric="cos",
                           threads=1) as ix:
        assert (ix.dim, ix.kind, ix.metric) == (32, "hnsw", "cos")
        assert len(ix) == 499 and 10 not in ix and 20 in ix
        after = ix.search(q[:10], k=5)
        np.testing.assert_array_equal(before[0], after[0])
        np.testing.assert_allclose(before[1], after[1], rtol=1e-6)
        ix.add(5000, x[600])
        ix.checkpoint()
        ix.sync()
        ix.check()
    # A reader sees everything and refuses writes with the library's reason.
    with vecidx.Index.open(path, readonly=True) as ix:
        assert (ix.dim, ix.kind, ix.metric) == (32, "hnsw", "cos")
        assert len(ix) == 500 and 5000 in ix
        with pytest.raises(vecidx.StateError) as e:
            ix.add(6000, x[0])
        assert e.value.message
        with pytest.raises(vecidx.StateError):
            ix.remove(20)
        np.testing.assert_array_equal(ix.get(5000), x[600])
        snapshot = str(tmp_path / "copy.vx")
        ix.save(snapshot)
    with vecidx.Index.open(snapshot, readonly=True) as ix:
        assert len(ix) == 500
    # Reopening with parameters checks them against the file.
    with pytest.raises(vecidx.VecidxError):
        vecidx.Index.open(path, dim=16, kind="hnsw", metric="cos")


def test_open_errors(tmp_path):
    missing = str(tmp_path / "none.vx")
    with pytest.raises(vecidx.VecidxError) as e:
        vecidx.Index.open(missing)
    assert e.value.message and not os.path.exists(missing)
    with pytest.raises(vecidx.InvalidArgumentError):
        vecidx.Index.open(missing, create=True)  # no dim to create with
    with pytest.raises(vecidx.InvalidArgumentError):
        vecidx.Index.open(missing, dim=4, create=True, sync="sometimes")
    with pytest.raises(vecidx.InvalidArgumentError):
        vecidx.Index.open(missing, dim=4, create=True, readonly=True)
    garbage = tmp_path / "garbage.vx"
    garbage.write_bytes(b"not an index" * 100)
    with pytest.raises(vecidx.CorruptError):
        vecidx.Index.open(str(garbage), readonly=True)


def test_memory_index_save_and_open(tmp_path):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    ix = vecidx.Index(16, kind="flat", metric="ip")
    ix.add(np.arange(300), x)
    path = tmp_path / "flat.vx"
    ix.save(path)
    with pytest.raises(vecidx.StateError):
        ix.checkpoint()  # an in-memory index has no file to fold into
    want = ix.search(x[:5], k=7)
    ix.close()
    with vecidx.Index.open(path, readonly=True) as back:
        got = back.search(x[:5], k=7)
        np.testing.assert_array_equal(want[0], got[0])


def test_context_manager_and_close():
    with vecidx.Index(4, kind="flat", metric="l2") as ix:
        ix.add(1, [1, 2, 3, 4])
        assert not ix.closed
    assert ix.closed and "closed" in repr(ix)
    with pytest.raises(vecidx.StateError):
        len(ix)
    with pytest.raises(vecidx.StateError):
        ix.search([1, 2, 3, 4], k=1)
    ix.close()  # twice is fine


def test_threads_share_an_index(data):
    x, q = data
    ix = vecidx.Index(32, kind="hnsw", metric="l2", seed=2)
    ix.add(np.arange(len(x)), x)
    want = [ix.search(v, k=5)[0].tolist() for v in q[:40]]
    got = [None] * 40
    errors = []

    def worker(part):
        try:
            for i in range(part, 40, 4):
                got[i] = ix.search(q[i], k=5)[0].tolist()
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == want
    ix.close()


# ---- Conversions ------------------------------------------------------------

def test_float32_arrays_are_not_copied():
    a = np.ones((3, 8), dtype=np.float32)
    m = _index._matrix(a, 8, flat_ok=True)
    assert m.addr == a.ctypes.data and m.rows == 3
    # Anything else is converted: other dtypes, Fortran order, views.
    for other in (a.astype(np.float64), np.asfortranarray(a),
                  np.ones((3, 16), np.float32)[:, ::2]):
        m = _index._matrix(other, 8, flat_ok=True)
        assert m.addr != other.ctypes.data and m.rows == 3
        assert m.owner.dtype == np.float32 and m.owner.flags.c_contiguous


def test_lists_and_buffers_with_numpy_present():
    ix = vecidx.Index(3, kind="flat", metric="l2")
    ix.add([1, 2], [[1, 0, 0], [0, 1, 0]])
    ix.add(3, array.array("f", [0, 0, 1]))
    ix.add([4, 5], array.array("d", [1, 1, 0, 0, 1, 1]))  # flat, converted
    k, _ = ix.search((0.9, 0.1, 0), k=1)
    assert list(k) == [1]
    k, _ = ix.search(memoryview(array.array("f", [0, 0, 0.9])), k=1)
    assert list(k) == [3]


NO_NUMPY_SCRIPT = r"""
import array, sys
sys.modules["numpy"] = None          # makes `import numpy` fail
if sys.argv[1]:
    sys.path.insert(0, sys.argv[1])
import vecidx
from vecidx import _index
assert _index.np is None

ix = vecidx.Index(4, kind="flat", metric="l2")
ix.add([1, 2, 3], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
ix.add(4, array.array("f", [0, 0, 0, 1]))
ix.add([5, 6], array.array("f", [1, 1, 0, 0, 0, 0, 1, 1]))   # flat batch
rows = memoryview(array.array("f", [2, 0, 0, 0, 0, 2, 0, 0])).cast("B")
ix.add([7, 8], rows.cast("f", (2, 4)))                        # 2-D buffer
assert len(ix) == 8 and 7 in ix and 9 not in ix

keys, dists = ix.search([0.9, 0.1, 0, 0], k=2)
assert keys == [1, 5] and isinstance(dists, list), (keys, dists)
assert abs(dists[0] - 0.02) < 1e-6
keys, dists = ix.search([[0, 0, 0, 1], [0, 0, 1, 0]], k=1)
assert keys == [[4], [3]] and len(dists) == 2
keys, dists, found = ix.search([[0, 0, 0, 1]], k=20, return_found=True)
assert found == [8] and len(keys[0]) == 8                    # unpadded
keys, _ = ix.search(array.array("f", [0, 0, 0.9, 0]), k=1,
                    filter=lambda k: k != 3)
assert keys == [6], keys
if _index._allowed_sets_supported():
    keys, _ = ix.search([0, 0, 0.9, 0], k=3, allowed={3, 8, 99})
    assert keys == [3, 8], keys
    keys, _ = ix.search([[0, 0, 0.9, 0]], k=3,
                        allowed_bitmap=[False, True, False, False, True])
    assert keys == [[1, 4]], keys
    keys, _ = ix.search([0, 0, 0.9, 0], k=3, allowed=[])
    assert keys == [], keys
try:
    ix.search([0, 0, 0, 1], k=1, allowed=[-4])
except vecidx.InvalidArgumentError:
    pass
else:
    raise AssertionError("negative allowed key accepted")
assert sorted(ix.keys()) == [1, 2, 3, 4, 5, 6, 7, 8]
assert ix.get(7) == [2.0, 0.0, 0.0, 0.0]
assert ix.get([1, 4]) == [[1, 0, 0, 0], [0, 0, 0, 1]]
try:
    ix.add(9, [1, 2, 3])
except vecidx.DimensionError as e:
    assert "3" in str(e)
else:
    raise AssertionError("wrong dimension accepted")
try:
    ix.add(9, b"\x00" * 16)
except vecidx.InvalidArgumentError:
    pass
else:
    raise AssertionError("raw bytes accepted")
if _index._capi.tune is not None:
    # truth as lists of keys; -1 ends a short list
    r = ix.estimate_recall(2, [[0.9, 0.1, 0, 0], [0, 0, 0, 1]],
                           [[1, 5], [4, -1]])
    assert r["recall"] == 1.0 and r["queries"] == 2, r
    r = ix.estimate_recall(2, [[0.9, 0.1, 0, 0]], [[1, 2]])
    assert r["recall"] == 0.5, r
    t = ix.tune(1.0, k=2, queries=[[0.9, 0.1, 0, 0]], truth=[[1, 5]])
    assert t["reached"] and t["recall"]["recall"] == 1.0, t
print("ok")
"""


@NEEDS_KEYS
def test_without_numpy():
    r = subprocess.run([sys.executable, "-c", NO_NUMPY_SCRIPT, PKG_PATH],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_library_search_order(tmp_path):
    env = dict(os.environ, VECIDX_LIBRARY=str(tmp_path / "nope.so"))
    if PKG_PATH:
        env["PYTHONPATH"] = PKG_PATH
    r = subprocess.run([sys.executable, "-c", "import vecidx"], env=env,
                       capture_output=True, text=True, timeout=60)
    # An explicit VECIDX_LIBRARY that does not exist is an error, not a
    # silent fall back to another copy of the library.
    assert r.returncode != 0 and "nope.so" in r.stderr
