"""Tests of Index.tune() and Index.estimate_recall() (vecidx_tune and
vecidx_estimate_recall), against exact answers computed with NumPy.

Run as python/tests/test_vecidx.py says.
"""

import os
import sys

import numpy as np
import pytest

PYDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALLED = os.environ.get("VECIDX_TEST_INSTALLED") == "1"
if not INSTALLED and PYDIR not in sys.path:
    sys.path.insert(0, PYDIR)

import vecidx  # noqa: E402
from vecidx import _capi  # noqa: E402

pytestmark = pytest.mark.skipif(
    _capi.tune is None or _capi.estimate_recall is None,
    reason="the loaded library has no vecidx_tune / vecidx_estimate_recall")

DIM = 32
K = 10


def clustered(n, seed, centers=50):
    """Data and queries from one distribution: points around the same
    centres. Queries around other centres than the data's would be far
    from every stored vector, which is not what tuning is for."""
    c = np.random.default_rng(99).standard_normal((centers, DIM)) * 3
    rng = np.random.default_rng(seed)
    x = c[rng.integers(0, centers, n)] + rng.standard_normal((n, DIM))
    return x.astype(np.float32)


def exact(x, q, k, keys=None):
    """The k nearest rows of x to each query (squared L2, float64), as keys
    (row numbers unless keys is given), nearest first."""
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    d = (q64 * q64).sum(1)[:, None] - 2 * q64 @ x64.T + \
        (x64 * x64).sum(1)[None]
    rows = np.argsort(d, axis=1, kind="stable")[:, :k]
    return (rows if keys is None else keys[rows]).astype(np.uint64)


def measured(found, truth):
    """Mean recall@k of result rows against exact answers."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t)
                          for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def data():
    x = clustered(4000, seed=1)
    q = clustered(600, seed=2)
    return x, q, exact(x, q, K)


def sparse_hnsw(x, **params):
    """A graph built cheaply (M 6, ef_construction 20), whose recall@10
    needs a wider search than ef 10 to pass 0.95 (0.86-0.92 there on this
    data); one build thread, so the same graph every run."""
    ix = vecidx.Index(DIM, kind="hnsw", metric="l2", M=6, ef_construction=20,
                      threads=1, seed=3, **params)
    ix.add(np.arange(len(x)), x)
    return ix


def test_tune_hnsw_with_queries_and_truth(data):
    x, q, truth = data
    with sparse_hnsw(x, ef_search=500) as ix:
        low = ix.estimate_recall(K, q[:300], truth[:300], ef=10)
        assert low["recall"] < 0.95, low
        t = ix.tune(0.95, k=K, queries=q[:300], truth=truth[:300])
        assert list(t) == ["reached", "ef", "nprobe", "refine", "steps",
                           "recall", "advice"]
        assert list(t["recall"]) == ["recall", "low", "high", "queries", "k",
                                     "search_us", "vs_codes"]
        assert t["reached"] is True and t["advice"] == ""
        assert 10 < t["ef"] < 500 and t["nprobe"] == t["refine"] == 0
        r = t["recall"]
        assert r["recall"] >= 0.95 and r["queries"] == 300 and r["k"] == K
        assert r["low"] <= r["recall"] <= r["high"] <= 1 and r["search_us"] > 0
        assert r["vs_codes"] is False
        # The sweep stops at the first ef that reaches the target: it
        # measured every smaller one, starting at 10.
        sweep = [10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384]
        assert t["steps"] == sweep.index(t["ef"]) + 1
        # Stored as the default, which searches without ef now use.
        assert ix.stats()["ef_search"] == t["ef"]
        again = ix.estimate_recall(K, q[:300], truth[:300])
        assert again["recall"] == pytest.approx(r["recall"])
        # On queries it did not see, with the default it chose.
        found, _ = ix.search(q[300:], K)
        assert measured(found, truth[300:]) >= 0.93


def test_tune_sample_queries(data):
    """Without queries the library makes its own from stored vectors; the
    setting it stores is then checked on real queries."""
    x, q, truth = data
    with sparse_hnsw(x) as ix:
        t = ix.tune(0.95)
        assert t["reached"] and t["recall"]["recall"] >= 0.95
        assert t["recall"]["queries"] == 200  # the library's default
        assert ix.stats()["ef_search"] == t["ef"]
        found, _ = ix.search(q, K)
        assert measured(found, truth) >= 0.93
        small = ix.tune(0.9, k=5, n=50)
        assert small["recall"]["queries"] == 50 and small["recall"]["k"] == 5
        assert ix.stats()["ef_search"] == small["ef"]


def test_tune_stored_in_the_file(tmp_path, data):
    x, q, truth = data
    path = str(tmp_path / "t.vx")
    with vecidx.Index.open(path, dim=DIM, kind="hnsw", metric="l2", M=6,
                           ef_construction=20, threads=1, create=True) as ix:
        ix.add(np.arange(len(x)), x)
        t = ix.tune(0.95, queries=q[:300], truth=truth[:300])
        assert t["reached"]
    with vecidx.Index.open(path, readonly=True) as ix:
        assert ix.stats()["ef_search"] == t["ef"]
        # A reader measures, but cannot tune.
        assert ix.estimate_recall(K, q[:300], truth[:300])["recall"] == \
            pytest.approx(t["recall"]["recall"])
        with pytest.raises(vecidx.StateError):
            ix.tune(0.95)


def test_ivfpq_codes_alone_fall_short(data):
    """Two code bytes for 32 dimensions: against the exact answers no
    nprobe reaches 0.9. Nothing changes, and the advice says what would."""
    x, q, truth = data
    with vecidx.Index(DIM, kind="ivfpq", metric="l2", nlist=16, pq_m=2,
                      nprobe=3, seed=1) as ix:
        with pytest.raises(vecidx.StateError):
            ix.tune(0.9)  # not trained yet: it searches exactly
        ix.train(x)
        ix.add(np.arange(len(x)), x)
        t = ix.tune(0.9, queries=q[:200], truth=truth[:200])
        assert t["reached"] is False
        assert "keep_vectors" in t["advice"]
        assert t["recall"]["recall"] < 0.9
        # the best tried, among nprobe 1, 2, 4, 8, 16
        assert t["nprobe"] in (1, 2, 4, 8, 16) and t["steps"] == 5
        assert t["ef"] == t["refine"] == 0
        assert ix.stats()["nprobe"] == 3
        at = ix.estimate_recall(K, q[:200], truth[:200], nprobe=t["nprobe"])
        assert at["recall"] == pytest.approx(t["recall"]["recall"])
        assert at["vs_codes"] is False

        # Without truth the exact answers come from a scan of the same
        # codes the search ranks: probing enough lists finds them all, and
        # the result says it was measured against codes.
        r = ix.estimate_recall(K, q[:200], nprobe=16)
        assert r["recall"] == 1.0 and r["vs_codes"] is True
        t = ix.tune(0.99)
        assert t["reached"] and t["recall"]["vs_codes"] is True
        assert "codes" in t["advice"]
        assert ix.stats()["nprobe"] == t["nprobe"]


def test_ivfpq_with_kept_vectors_reaches_it(data):
    """The same codes with the float32 vectors kept: re-ranking reaches
    what the codes alone could not, and the refine factor is stored."""
    x, q, truth = data
    with vecidx.Index(DIM, kind="ivfpq", metric="l2", nlist=16, pq_m=2,
                      keep_vectors=True, seed=1) as ix:
        ix.train(x)
        ix.add(np.arange(len(x)), x)
        t = ix.tune(0.9, queries=q[:200], truth=truth[:200])
        assert t["reached"] and t["refine"] >= 2 and t["nprobe"] >= 1
        assert t["advice"] == ""
        # The kept vectors give the scan its exact answers.
        assert ix.estimate_recall(K, q[:50])["vs_codes"] is False
        st = ix.stats()
        assert (st["nprobe"], st["refine"]) == (t["nprobe"], t["refine"])
        found, _ = ix.search(q[200:], K)
        assert measured(found, truth[200:]) >= 0.85


def test_flat_is_exact(data):
    x, q, truth = data
    keys = np.arange(5000, 5000 + len(x), dtype=np.uint64)
    with vecidx.Index(DIM, kind="flat", metric="l2") as ix:
        ix.add(keys, x)
        ktruth = exact(x, q[:100], K, keys)
        r = ix.estimate_recall(K, q[:100], ktruth)
        assert (r["recall"], r["low"], r["high"]) == (1.0, 1.0, 1.0)
        assert r["queries"] == 100
        assert ix.estimate_recall()["recall"] == 1.0  # sample queries
        # Truth for row numbers, not these keys: nothing matches, which
        # shows the truth is read.
        assert ix.estimate_recall(K, q[:100], truth[:100])["recall"] == 0
        t = ix.tune(1.0)
        assert t["reached"] and (t["ef"], t["nprobe"], t["refine"]) == \
            (0, 0, 0)


@pytest.mark.parametrize("keep", [False, True])
def test_compressed_storage(data, keep):
    """int8 codes: without the float32 vectors the scan's answers are the
    codes' own (vs_codes), and tuning says so; with them, the re-rank
    factor is part of the sweep and is stored."""
    x, q, truth = data
    with vecidx.Index(DIM, kind="hnsw", metric="l2", storage="i8",
                      keep_vectors=keep, threads=1) as ix:
        ix.add(np.arange(len(x)), x)
        r = ix.estimate_recall(K, q[:100])
        assert r["vs_codes"] is (not keep)
        assert ix.estimate_recall(K, q[:100], truth[:100])["vs_codes"] is \
            False
        t = ix.tune(0.95)
        assert t["reached"]
        assert ("codes" in t["advice"]) is (not keep)
        st = ix.stats()
        assert st["ef_search"] == t["ef"]
        assert st["refine"] == t["refine"] and (t["refine"] > 0) is keep


def test_truth_forms(data):
    """Short lists end with MISSING_KEY (or -1 in a signed array), and
    then count only what they hold; extra columns, lists of lists and
    the first n queries are accepted."""
    x, q, truth = data
    with vecidx.Index(DIM, kind="flat", metric="l2") as ix:
        ix.add(np.arange(len(x)), x)
        wide = exact(x, q[:20], 2 * K)
        assert ix.estimate_recall(K, q[:20], wide)["recall"] == 1.0
        short = truth[:20].copy()
        short[:, 3:] = vecidx.MISSING_KEY
        assert ix.estimate_recall(K, q[:20], short)["recall"] == 1.0
        signed = truth[:20].astype(np.int64)
        signed[:, 3:] = -1
        assert ix.estimate_recall(K, q[:20], signed)["recall"] == 1.0
        # Short lists hold true neighbours: a wrong key in one of three
        # costs a third of that query.
        short[0, 0] = 10 ** 9
        r = ix.estimate_recall(K, q[:20], short)
        assert r["recall"] == pytest.approx(1 - 1 / 3 / 20)
        lists = [[int(v) for v in row] for row in truth[:5]]
        assert ix.estimate_recall(K, q[:5].tolist(), lists)["recall"] == 1.0
        r = ix.estimate_recall(K, q[:50], truth[:50], n=7)
        assert r["queries"] == 7 and r["recall"] == 1.0
        one = ix.estimate_recall(K, q[0], truth[0])
        assert one["queries"] == 1 and one["recall"] == 1.0


def test_search_options_and_filters(data):
    x, q, truth = data
    with sparse_hnsw(x) as ix:
        narrow = ix.estimate_recall(K, q[:200], truth[:200], ef=10)
        wide = ix.estimate_recall(K, q[:200], truth[:200], ef=256)
        assert narrow["recall"] < wide["recall"]
        assert wide["recall"] >= 0.95
        # estimate_recall's searches are not counted as the index's
        assert ix.stats()["searches"] == 0
    even = np.arange(0, len(x), 2)
    with vecidx.Index(DIM, kind="flat", metric="l2") as ix:
        ix.add(np.arange(len(x)), x)
        # The scan's exact answers are filtered as the search is...
        for kw in ({"allowed": even},
                   {"allowed_bitmap": np.arange(len(x)) % 2 == 0},
                   {"filter": lambda key: key % 2 == 0}):
            r = ix.estimate_recall(K, q[:50], **kw)
            assert r["recall"] == 1.0 and r["queries"] == 50, kw
        # ... the caller's are taken as given: half of them are excluded.
        r = ix.estimate_recall(K, q[:50], truth[:50], allowed=even)
        assert 0.3 < r["recall"] < 0.7
        # Nothing admitted: no query counts, nothing to measure.
        with pytest.raises(vecidx.StateError, match="nothing to measure"):
            ix.estimate_recall(K, q[:10], allowed=[])

        def broken(key):
            raise RuntimeError("filter failed")

        with pytest.raises(RuntimeError, match="filter failed"):
            ix.estimate_recall(K, q[:5], filter=broken)


def test_errors(data):
    x, q, truth = data
    with vecidx.Index(DIM, kind="hnsw", metric="l2") as ix:
        ix.add(np.arange(500), x[:500])
        for target in (0, 1.5, -0.1, float("nan")):
            with pytest.raises(vecidx.InvalidArgumentError, match="target"):
                ix.tune(target)
        with pytest.raises(vecidx.InvalidArgumentError):
            ix.tune("0.9")
        with pytest.raises(vecidx.InvalidArgumentError):
            ix.tune(True)
        with pytest.raises(vecidx.InvalidArgumentError, match="k is 0"):
            ix.estimate_recall(0)
        with pytest.raises(vecidx.InvalidArgumentError, match="queries"):
            ix.estimate_recall(K, truth=truth[:10])
        with pytest.raises(vecidx.InvalidArgumentError, match="row per"):
            ix.estimate_recall(K, q[:10], truth[:9])
        with pytest.raises(vecidx.InvalidArgumentError, match="fewer than"):
            ix.tune(0.9, k=K, queries=q[:10], truth=truth[:10, :5])
        with pytest.raises(vecidx.InvalidArgumentError, match="integer"):
            ix.estimate_recall(K, q[:10], truth[:10].astype(np.float64))
        negative = truth[:10].astype(np.int64)
        negative[2, 3] = -7
        with pytest.raises(vecidx.InvalidArgumentError, match="out of range"):
            ix.estimate_recall(K, q[:10], negative)
        with pytest.raises(vecidx.InvalidArgumentError, match="more than"):
            ix.estimate_recall(K, q[:10], n=11)
        with pytest.raises(vecidx.DimensionError):
            ix.estimate_recall(K, q[:10, :16])
        bad = q[:10].copy()
        bad[3, 0] = np.nan
        with pytest.raises(vecidx.InvalidArgumentError, match="query 3"):
            ix.tune(0.9, queries=bad)
        assert ix.stats()["ef_search"] == 64  # no failed call changed it
    with vecidx.Index(DIM, kind="hnsw", metric="l2") as empty:
        with pytest.raises(vecidx.StateError):
            empty.estimate_recall()  # nothing to make sample queries from
