"""Tests of the package around the binding: its version, where it finds the
library and the SQLite extension, and (VECIDX_TEST_INSTALLED=1, as
python/ci-install-test.sh runs them) that an installed copy is what is
being tested and carries what setup.py puts in it."""

import os
import re
import sqlite3
import subprocess
import sys

import pytest

PYDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(PYDIR)
INSTALLED = os.environ.get("VECIDX_TEST_INSTALLED") == "1"
if not INSTALLED and PYDIR not in sys.path:
    sys.path.insert(0, PYDIR)

import vecidx  # noqa: E402
from vecidx import _capi  # noqa: E402

HEADER = os.path.join(REPO, "vecidx.h")
IN_TREE = os.path.exists(HEADER)
PKG = os.path.dirname(os.path.abspath(vecidx.__file__))


def header_fields():
    with open(HEADER) as f:
        text = f.read()
    return [int(re.search(r"^#define VECIDX_VERSION_%s (\d+)" % k, text,
                          re.M).group(1)) for k in ("MAJOR", "MINOR", "PATCH")]


def inside(path, directory):
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([path, directory]) == directory


# ---- The version: vecidx.h's, nowhere else -----------------------------------

@pytest.mark.skipif(not IN_TREE, reason="not in the source tree")
def test_version_is_the_headers():
    assert vecidx.__version__ == "%d.%d.%d" % tuple(header_fields())


@pytest.mark.skipif(not IN_TREE, reason="not in the source tree")
def test_binding_written_for_this_header():
    # The ctypes structs mirror vecidx.h; a new major.minor may change
    # them, so HEADER_VERSION_NUMBER is bumped by hand after checking
    # them (test_struct_layout_matches_compiler does the checking).
    major, minor, _ = header_fields()
    assert _capi.HEADER_VERSION_NUMBER // 100 == major * 100 + minor


@pytest.mark.skipif(not IN_TREE, reason="not in the source tree")
def test_setup_py_version_is_the_headers():
    pytest.importorskip("setuptools")
    r = subprocess.run([sys.executable, "setup.py", "--version"], cwd=PYDIR,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "%d.%d.%d" % tuple(header_fields())


# ---- The installed copy -----------------------------------------------------

installed_only = pytest.mark.skipif(
    not INSTALLED, reason="tests the checkout; VECIDX_TEST_INSTALLED=1 "
    "tests an installed copy")


@installed_only
def test_installed_copy_is_under_test():
    assert not inside(PKG, REPO), PKG
    assert not os.environ.get("VECIDX_LIBRARY")
    # The library built into the package, not the checkout's or the
    # system's.
    assert inside(vecidx.library_path, PKG), vecidx.library_path
    assert _capi.source_root() is None
    from vecidx import _build_info
    assert _build_info.version == vecidx.__version__
    assert os.path.isfile(os.path.join(PKG, "py.typed"))


@installed_only
def test_installed_library_matches_the_checkout():
    if IN_TREE:
        assert vecidx.library_version() == "%d.%d.%d" % tuple(header_fields())
    assert vecidx.simd() in ("avx512", "avx2", "neon", "scalar")


# ---- The SQLite extension ---------------------------------------------------

def test_sqlite_extension_path_from_environment(tmp_path, monkeypatch):
    ext = tmp_path / "vecidx.so"
    monkeypatch.setenv("VECIDX_SQLITE_EXTENSION", str(ext))
    with pytest.raises(FileNotFoundError, match="VECIDX_SQLITE_EXTENSION"):
        vecidx.sqlite_extension_path()
    ext.write_bytes(b"")
    assert vecidx.sqlite_extension_path() == str(ext)


def _extension_or_none():
    try:
        return vecidx.sqlite_extension_path()
    except FileNotFoundError as e:
        msg = str(e)
        assert "SQLite extension" in msg and len(msg) > 40
        return None


def test_sqlite_extension_path(monkeypatch):
    monkeypatch.delenv("VECIDX_SQLITE_EXTENSION", raising=False)
    path = _extension_or_none()
    if INSTALLED:
        from vecidx import _build_info
        if _build_info.sqlite_skipped is None:
            assert path is not None and inside(path, PKG)
        else:
            assert path is None
    if path is None:
        pytest.skip("no SQLite extension built")
    assert os.path.isabs(path) and os.path.isfile(path)


def test_sqlite_extension_loads(monkeypatch):
    monkeypatch.delenv("VECIDX_SQLITE_EXTENSION", raising=False)
    path = _extension_or_none()
    if path is None:
        pytest.skip("no SQLite extension built")
    conn = sqlite3.connect(":memory:")
    if not hasattr(conn, "enable_load_extension"):
        pytest.skip("this Python's sqlite3 cannot load extensions")
    conn.enable_load_extension(True)
    conn.load_extension(path)      # default entry point: sqlite3_vecidx_init
    conn.enable_load_extension(False)
    # The module is registered (whatever the arguments it wants).
    try:
        conn.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=4)")
    except sqlite3.Error as e:
        assert "no such module" not in str(e), e
    conn.close()
