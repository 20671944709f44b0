"""Index.open(private=True): a writable copy that never touches its file."""
import os

import numpy as np
import pytest

import vecidx


def vectors(n, dim, seed):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(
        np.float32)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_private_writes_stay_in_the_handle(tmp_path, kind):
    path = str(tmp_path / "a.vx")
    x = vectors(500, 16, 1)
    with vecidx.Index(16, kind=kind, metric="l2") as ix:
        ix.add(np.arange(500), x)
        ix.save(path)
    before = open(path, "rb").read()
    with vecidx.Index.open(path, private=True) as pv:
        pv.add(np.arange(1000, 1010), x[:10] + 5)
        pv.remove(3)
        assert len(pv) == 509
        keys, _ = pv.search(x[0] + 5, k=1)
        assert keys[0] == 1000
        with pytest.raises(vecidx.StateError):
            pv.checkpoint()
        pv.save(str(tmp_path / "b.vx"))
    assert open(path, "rb").read() == before
    assert not os.path.exists(path + "-wal") or \
        os.path.getsize(path + "-wal") <= 32
    with vecidx.Index.open(path, readonly=True) as ro:
        assert len(ro) == 500 and 3 in ro and 1000 not in ro
    with vecidx.Index.open(str(tmp_path / "b.vx"), readonly=True) as ro:
        assert len(ro) == 509 and 3 not in ro and 1000 in ro


def test_private_bad_combinations(tmp_path):
    path = str(tmp_path / "a.vx")
    with vecidx.Index(4, kind="flat", metric="l2") as ix:
        ix.add([1], np.ones((1, 4), np.float32))
        ix.save(path)
    for kw in ({"readonly": True}, {"create": True}, {"sync": "off"}):
        with pytest.raises(vecidx.InvalidArgumentError):
            vecidx.Index.open(path, private=True, **kw)
