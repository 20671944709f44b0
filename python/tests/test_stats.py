"""Tests of Index.stats(): the counters of vecidx_stats_ex as a dict, checked
against what the test did to the index (calls made, vectors written,
checkpoints run) and against `vecidx stats --json` on the same file.

Run as python/tests/test_vecidx.py says.
"""

import ctypes
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

PYDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(PYDIR)
INSTALLED = os.environ.get("VECIDX_TEST_INSTALLED") == "1"
if not INSTALLED and PYDIR not in sys.path:
    sys.path.insert(0, PYDIR)

import vecidx  # noqa: E402
from vecidx import _capi  # noqa: E402

pytestmark = pytest.mark.skipif(
    _capi.stats_ex is None,
    reason="the loaded library has no vecidx_stats_ex")

LATENCIES = ["search_latency", "batch_latency", "insert_latency",
             "remove_latency", "checkpoint_latency"]
LATENCY_KEYS = ["count", "p50_us", "p95_us", "p99_us", "max_us"]
CLI = os.path.join(REPO, "tools", "vecidx")


def vectors(n, dim, seed):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(
        np.float32)


def assert_latency(lat, count):
    """count calls timed, with percentiles in order and a positive time."""
    assert list(lat) == LATENCY_KEYS
    assert lat["count"] == count, lat
    if count:
        assert 0 < lat["p50_us"] <= lat["p95_us"] <= lat["p99_us"] \
            <= lat["max_us"], lat
    else:
        assert lat == dict.fromkeys(LATENCY_KEYS, 0), lat


def test_keys_are_the_struct_fields():
    with vecidx.Index(4, kind="flat", metric="l2") as ix:
        st = ix.stats()
    assert list(st) == [name for name, _ in _capi.Stats._fields_]
    for name in LATENCIES:
        assert_latency(st[name], 0)
    assert (st["kind"], st["metric"], st["storage"]) == ("flat", "l2", "f32")
    assert st["simd"] == vecidx.simd() and st["trained"] is True
    assert all(type(st[k]) is int for k in ("count", "dim", "mem_keymap",
                                            "list_max", "log_records",
                                            "ef_search", "nprobe", "refine"))
    assert all(type(st[k]) is float for k in ("drift", "visited_per_search",
                                              "last_checkpoint_time"))


def test_hnsw_activity():
    x = vectors(600, 16, seed=1)
    with vecidx.Index(16, kind="hnsw", metric="l2", M=8, seed=3) as ix:
        for i in range(500):
            ix.add(i, x[i])
        st = ix.stats()
        assert st["count"] == st["inserts"] == 500
        assert_latency(st["insert_latency"], 500)
        assert st["searches"] == 0 and st["distances_per_search"] == 0
        assert st["memory_bytes"] == sum(
            st[k] for k in ("mem_vectors", "mem_links", "mem_keymap",
                            "mem_lists", "mem_other"))
        assert st["mem_links"] > 0 and st["mem_lists"] == 0

        for i in range(50):
            ix.search(x[i], k=5)
        st = ix.stats()
        assert st["searches"] == 50
        assert_latency(st["search_latency"], 50)
        assert_latency(st["batch_latency"], 0)
        assert st["distances_per_search"] > 5
        assert st["visited_per_search"] > 1

        # A batch is one timed call answering nq queries.
        ix.search(x[500:520], k=5)
        st = ix.stats()
        assert st["searches"] == 70
        assert_latency(st["search_latency"], 50)
        assert_latency(st["batch_latency"], 1)

        ix.add(np.arange(500, 600), x[500:600])
        with pytest.raises(vecidx.ExistsError):
            ix.add(7, x[7])
        st = ix.stats()
        # Failed calls are timed but add nothing.
        assert st["inserts"] == 600
        assert_latency(st["insert_latency"], 502)

        ix.remove(list(range(10)))
        st = ix.stats()
        assert st["removes"] == 10 and st["count"] == 590
        assert_latency(st["remove_latency"], 10)
        assert st["buried"] <= 10
        # In memory: no log, no checkpoint.
        assert st["log_bytes"] == st["log_records"] == st["checkpoints"] == 0
        assert_latency(st["checkpoint_latency"], 0)


def test_flat_reads_every_vector_and_visits_no_node():
    x = vectors(300, 8, seed=2)
    with vecidx.Index(8, kind="flat", metric="cos") as ix:
        ix.add(np.arange(300), x)
        ix.search(x[:4], k=3)
        st = ix.stats()
    assert st["searches"] == 4
    assert 0 < st["distances_per_search"] <= 300
    assert st["visited_per_search"] == 0
    assert st["mem_links"] == st["mem_lists"] == 0
    assert st["list_min"] == st["list_median"] == st["list_max"] == 0


def test_file_log_and_checkpoint(tmp_path):
    path = str(tmp_path / "log.vx")
    x = vectors(100, 8, seed=4)
    with vecidx.Index.open(path, dim=8, kind="hnsw", metric="l2",
                           create=True) as ix:
        empty = ix.stats()["log_bytes"]
        assert empty > 0 and ix.stats()["log_records"] == 0
        last = empty
        for i in range(20):
            ix.add(i, x[i])
            st = ix.stats()
            # sync "full": what the log counts is on disk when add returns
            assert st["log_records"] == i + 1
            assert st["log_bytes"] > last
            assert st["log_bytes"] == os.path.getsize(path + "-wal")
            last = st["log_bytes"]
        ix.add(np.arange(20, 100), x[20:])
        ix.remove(3)
        assert ix.stats()["log_records"] == 22  # a batch is one record

        before = time.time()
        ix.checkpoint()
        after = time.time()
        st = ix.stats()
        assert st["log_records"] == 0 and st["log_bytes"] == empty
        assert st["checkpoints"] == 1
        assert_latency(st["checkpoint_latency"], 1)
        assert before <= st["last_checkpoint_time"] <= after
        assert 0 < st["last_checkpoint_seconds"] <= after - before
        for i in range(3):
            ix.upsert(i + 100, x[i])
        assert ix.stats()["log_records"] == 3
        assert ix.stats()["inserts"] == 103

    # A reader reports the log it replayed at open: all of it, and the
    # writes in it the main file does not hold.
    wal = os.path.getsize(path + "-wal")
    assert wal > empty
    with vecidx.Index.open(path, readonly=True) as ix:
        st = ix.stats()
        assert (st["log_bytes"], st["log_records"]) == (wal, 3)
        assert st["count"] == 102 and st["checkpoints"] == 0

    # Activity is the handle's: a new one starts from zero, while the log
    # it replays is still waiting for a checkpoint.
    with vecidx.Index.open(path) as ix:
        st = ix.stats()
        assert st["count"] == 102
        assert st["inserts"] == st["checkpoints"] == 0
        assert st["last_checkpoint_time"] == 0
        assert st["log_records"] == 3


@pytest.mark.parametrize("kind, params, want", [
    ("flat", {}, (0, 0, 0)),
    ("hnsw", {}, (64, 0, 0)),
    ("hnsw", {"ef_search": 80}, (80, 0, 0)),
    # refine applies only with kept float32 vectors; its default is 2, or
    # 20 for bin
    ("hnsw", {"storage": "i8"}, (64, 0, 0)),
    ("hnsw", {"storage": "i8", "keep_vectors": True}, (64, 0, 2)),
    ("flat", {"storage": "bin", "keep_vectors": True}, (0, 0, 20)),
    ("flat", {"storage": "f16", "keep_vectors": True, "refine": 3},
     (0, 0, 3)),
    ("ivfpq", {}, (0, 8, 0)),
    ("ivfpq", {"nprobe": 5, "keep_vectors": True, "refine": 4}, (0, 5, 4)),
])
def test_search_defaults(kind, params, want):
    """ef_search, nprobe and refine: the defaults searches use, 0 where
    one does not apply."""
    metric = "cos" if params.get("storage") == "bin" else "l2"
    with vecidx.Index(8, kind=kind, metric=metric, **params) as ix:
        st = ix.stats()
    assert (st["ef_search"], st["nprobe"], st["refine"]) == want


def test_ivfpq_lists_and_drift():
    x = vectors(3000, 16, seed=5)
    with vecidx.Index(16, kind="ivfpq", metric="l2", nlist=16, pq_m=4,
                      nprobe=4, seed=1) as ix:
        ix.add(np.arange(1000), x[:1000])
        st = ix.stats()
        assert not st["trained"] and st["nlist"] == 0
        assert st["list_min"] == st["list_max"] == 0 and st["drift"] == 0
        assert st["mem_vectors"] > 0 and st["mem_lists"] == 0

        ix.train(x[:1000])
        st = ix.stats()
        assert st["trained"] and st["nlist"] == 16 and st["count"] == 1000
        assert st["drift"] == 0
        lo, mid, hi = st["list_min"], st["list_median"], st["list_max"]
        assert 0 < lo <= mid <= hi
        assert lo * 16 <= 1000 <= hi * 16
        assert st["mem_vectors"] == 0
        assert st["mem_lists"] >= 1000 * (8 + 4)

        ix.add(np.arange(1000, 1500), x[1000:1500])
        st = ix.stats()
        assert st["count"] == 1500
        assert st["drift"] == pytest.approx(500 / 1500)
        assert st["list_min"] * 16 <= 1500 <= st["list_max"] * 16
        assert st["list_max"] >= hi

        ix.search(x[:10], k=5)
        ix.search(x[10], k=5, nprobe=2)
        st = ix.stats()
        assert st["searches"] == 11
        # every query probes nprobe lists: 10 of 4, 1 of 2
        assert st["visited_per_search"] == pytest.approx(42 / 11)
        assert st["distances_per_search"] > 0


def test_fallback_without_stats_ex(monkeypatch):
    """A 0.2 library has only vecidx_stats, which fills the fields up to
    vector_bytes: the binding uses it, and the rest reads as zero."""
    x = vectors(50, 4, seed=6)
    with vecidx.Index(4, kind="hnsw", metric="l2") as ix:
        ix.add(np.arange(50), x)
        ix.search(x[0], k=3)
        full = ix.stats()
        monkeypatch.setattr(_capi, "stats_ex", None)
        old = ix.stats()
    assert list(old) == list(full)
    for k in list(full)[:list(full).index("searches")]:
        assert old[k] == full[k], k
    assert full["searches"] == 1 and full["inserts"] == 50
    assert old["searches"] == old["inserts"] == old["mem_keymap"] == 0
    assert old["search_latency"] == dict.fromkeys(LATENCY_KEYS, 0)


def test_stats_ex_size_is_honoured():
    """Passed a 0.2-sized struct, vecidx_stats_ex writes nothing past it,
    so a program built against the old header keeps working."""
    with vecidx.Index(4, kind="flat", metric="l2") as ix:
        ix.add(1, [1, 2, 3, 4])
        holder = _capi.padded(_capi.Stats)
        ctypes.memset(ctypes.addressof(holder), 0xAB, ctypes.sizeof(holder))
        size = _capi.Stats.searches.offset
        h = ix._acquire()
        try:
            assert _capi.stats_ex(h, ctypes.addressof(holder), size) == 0
            assert _capi.stats_ex(h, ctypes.addressof(holder), size - 8) \
                == _capi.EINVAL
        finally:
            ix._release()
    assert holder.s.count == 1 and holder.s.dim == 4
    raw = ctypes.string_at(ctypes.addressof(holder), ctypes.sizeof(holder))
    assert set(raw[size:]) == {0xAB}


@pytest.mark.skipif(not os.access(CLI, os.X_OK),
                    reason="tools/vecidx is not built")
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_same_dict_as_the_cli(tmp_path, kind):
    """A read-only handle that did nothing reports what `vecidx stats
    --json` reports for the same file, key for key."""
    path = str(tmp_path / (kind + ".vx"))
    x = vectors(1200, 8, seed=7)
    params = {"nlist": 8, "pq_m": 4} if kind == "ivfpq" else {}
    with vecidx.Index(8, kind=kind, metric="l2", **params) as ix:
        ix.train(x)
        ix.add(np.arange(1200), x)
        ix.save(path)
    with vecidx.Index.open(path, readonly=True) as ix:
        mine = ix.stats()
    out = subprocess.run([CLI, "stats", path, "--json"], check=True,
                         capture_output=True, text=True).stdout
    cli = json.loads(out)
    assert [cli.pop(k) for k in ("command", "path")] == ["stats", path]
    assert cli.pop("file_bytes") == os.path.getsize(path)
    assert cli.pop("wal_bytes") == 0
    assert cli.pop("version") == vecidx.library_version()
    # The one difference: the CLI names IVF-PQ's storage "pq", where
    # stats() keeps the "f32" it has always given (the C field is unused).
    if kind == "ivfpq":
        assert cli["storage"] == "pq"
        cli["storage"] = mine["storage"]
    assert list(cli) == list(mine)
    for k, v in mine.items():
        if isinstance(v, dict):
            assert cli[k] == pytest.approx(v, abs=1e-3), k
        elif isinstance(v, float):
            assert cli[k] == pytest.approx(v, abs=1e-6), k
        else:
            assert cli[k] == v, k
