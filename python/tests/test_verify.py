"""Readers verify the file piece by piece; verify=True does it all at open."""
import struct

import numpy as np
import pytest

import vecidx


def damaged_copy(path, out):
    """path with one byte flipped in the middle of its chunk section (the
    first entry of the section table at byte 216: u64 offset, u64 length;
    docs/FORMAT.md)."""
    b = bytearray(open(path, "rb").read())
    off, length = struct.unpack_from("<QQ", b, 216)
    assert length > 0
    b[off + length // 2] ^= 0x20
    open(out, "wb").write(bytes(b))


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_reader_meets_damage(tmp_path, kind):
    path, bad = str(tmp_path / "a.vx"), str(tmp_path / "bad.vx")
    x = np.random.default_rng(7).standard_normal((3000, 32)).astype(
        np.float32)
    with vecidx.Index(32, kind=kind, metric="l2") as ix:
        ix.add(np.arange(3000), x)
        ix.save(path)
    with vecidx.Index.open(path, readonly=True, verify=True) as ro:
        assert len(ro) == 3000
        keys, _ = ro.search(x[5], k=1)
        assert keys[0] == 5
    damaged_copy(path, bad)
    with pytest.raises(vecidx.CorruptError):
        vecidx.Index.open(bad, readonly=True, verify=True)
    # without verify the open succeeds; reading every vector meets it
    with vecidx.Index.open(bad, readonly=True) as ro:
        with pytest.raises(vecidx.CorruptError, match="offset"):
            for key in range(3000):
                ro.get(key)


def test_lean_reader(tmp_path):
    """A lean reader re-ranks with the kept vectors read by pread: the same
    answers as a plain reader, exact distances; lean needs readonly."""
    path = str(tmp_path / "k.vx")
    x = np.random.default_rng(11).standard_normal((2000, 40)).astype(
        np.float32)
    with vecidx.Index(40, kind="hnsw", metric="l2", storage="i8",
                      keep_vectors=1) as ix:
        ix.add(np.arange(2000), x)
        ix.save(path)
    with vecidx.Index.open(path, readonly=True) as ro, \
            vecidx.Index.open(path, readonly=True, lean=True) as lean:
        for q in (3, 500, 1999):
            k1, d1 = ro.search(x[q], k=10)
            k2, d2 = lean.search(x[q], k=10)
            assert list(k1) == list(k2) and list(d1) == list(d2)
            assert k2[0] == q and d2[0] == 0.0
    with pytest.raises(vecidx.InvalidArgumentError):
        vecidx.Index.open(path, lean=True)
