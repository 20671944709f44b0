"""Python binding of vecidx, the embeddable vector index library.

Pure ctypes: nothing to compile beyond libvecidx itself, which
`pip install --no-build-isolation ./python` builds into the package. The
shared library is looked for, in order, at $VECIDX_LIBRARY, next to this
package (an installed copy) and in its parent directories up to the source
tree (where `make` builds it), and on the system library path.

    import numpy as np, vecidx

    index = vecidx.Index(128, kind="hnsw", metric="cos", M=16)
    index.add(np.arange(1000), np.random.rand(1000, 128))
    keys, dists = index.search(np.random.rand(128), k=10)

Index(dim, kind="hnsw", metric="cos", **params)
    kind: "flat" (exact), "hnsw" or "ivfpq"; metric: "l2" (squared
    Euclidean), "ip" (negative inner product) or "cos"/"cosine" (cosine
    distance). Smaller distances are always closer. Parameters, with the C
    field of vecidx_params each sets (vecidx.h documents them): capacity,
    seed, threads, M (hnsw_m), ef_construction, ef_search, nlist, nprobe,
    pq_m, pq_nbits, keep_vectors, refine, quantizer ("auto", "flat",
    "hnsw"), train_size (ivf_train_size), and progress, a callable(stage,
    done) told about IVF-PQ training. The C field names work too.

Index.open(path, dim=None, kind=None, metric=None, *, create=False,
           readonly=False, private=False, verify=False, lean=False,
           sync="full", **params)
    A file-backed index with its write-ahead log PATH-wal.

Vectors may be NumPy arrays (float32 C-contiguous arrays are used in place,
anything else is converted), lists of floats, array('f'), or any buffer of
float32 (memoryview). Without NumPy installed results are lists.

Errors raise VecidxError subclasses carrying the library's message; each
also derives from the nearest built-in exception (NotFoundError is a
KeyError, InvalidArgumentError and DimensionError are ValueErrors, ...).
"""

import os
import sys
import warnings

from . import _capi
from ._capi import library_path, find_library
from ._errors import (VecidxError, InvalidArgumentError, OutOfMemoryError,
                      IOFailedError, CorruptError, NotFoundError, ExistsError,
                      DimensionError, StateError, VersionError,
                      NotSupportedError, FullError)
from ._index import Index

try:
    # Written by setup.py into the copies it builds (pip install).
    from . import _build_info  # type: ignore[attr-defined]
except ImportError:  # an uninstalled checkout
    _build_info = None


def _package_version() -> str:
    # One version for the C library and the binding: vecidx.h's.
    if _build_info is not None:
        return str(_build_info.version)
    return _capi.source_version() or library_version()


# Key reported for the padding slots of batch results (distance inf). It is
# also a valid key, so look at the distance to tell padding from a result.
MISSING_KEY = _capi.UINT64_MAX

MAX_DIM = _capi.MAX_DIM

__all__ = [
    "Index", "VecidxError", "InvalidArgumentError", "OutOfMemoryError",
    "IOFailedError", "CorruptError", "NotFoundError", "ExistsError",
    "DimensionError", "StateError", "VersionError", "NotSupportedError",
    "FullError", "MISSING_KEY", "MAX_DIM", "library_path", "find_library",
    "library_version", "simd", "sqlite_extension_path",
]


def library_version() -> str:
    """Version string of the loaded libvecidx ("MAJOR.MINOR.PATCH")."""
    return _capi.version().decode("ascii")


def simd() -> str:
    """Distance kernel the library chose for this CPU ("avx2", ...)."""
    return _capi.simd().decode("ascii")


__version__ = _package_version()

# Where the SQLite extension is, as built by setup.py (vecidx/_sqlite/) or
# by the Makefile in a checkout. Both file names give SQLite a default entry
# point the extension defines: sqlite3_vecidx_init for vecidx.so, and its
# alias sqlite3_vecidxsqlite_init for vecidx_sqlite.so.
_SQLITE_PACKAGED = os.path.join(
    "_sqlite", "vecidx.dylib" if sys.platform == "darwin" else "vecidx.so")
_SQLITE_IN_TREE = (os.path.join("sqlite", "vecidx_sqlite.so"),)


def sqlite_extension_path() -> str:
    """Path of the vecidx SQLite extension, for conn.load_extension(path).

        conn = sqlite3.connect("app.db")
        conn.enable_load_extension(True)
        conn.load_extension(vecidx.sqlite_extension_path())
        conn.enable_load_extension(False)

    SQLite finds the entry point (sqlite3_vecidx_init) from the file's
    name. Looked for at $VECIDX_SQLITE_EXTENSION (an
    explicit choice: if it names a missing file, that is an error), then in
    the package (pip builds it there when sqlite/vecidx_sqlite.c and
    sqlite3ext.h are available), then where `make sqlite` puts it in a
    checkout. Raises FileNotFoundError, saying why, when there is none.
    """
    env = os.environ.get("VECIDX_SQLITE_EXTENSION")
    if env:
        path = os.path.abspath(env)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                "vecidx: VECIDX_SQLITE_EXTENSION names %s, which does not "
                "exist" % path)
        return path
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, _SQLITE_PACKAGED)
    if os.path.isfile(path):
        return path
    root = _capi.source_root()
    if root is not None:
        for rel in _SQLITE_IN_TREE:
            path = os.path.join(root, rel)
            if os.path.isfile(path):
                return path
        why = ("this is a source tree where the extension has not been "
               "built: run `make sqlite` (needs libsqlite3-dev), or set "
               "VECIDX_SQLITE_EXTENSION")
    elif _build_info is not None and _build_info.sqlite_skipped:
        why = ("this copy of vecidx was built without it (%s)"
               % _build_info.sqlite_skipped)
    else:
        why = ("it is not in %s; set VECIDX_SQLITE_EXTENSION to its path"
               % here)
    raise FileNotFoundError("vecidx: no SQLite extension: " + why)


if not _capi.layout_compatible():
    warnings.warn(
        "vecidx: %s is version %s but this binding was written for %d.%d; "
        "struct layouts may differ" % (
            library_path, library_version(),
            _capi.HEADER_VERSION_NUMBER // 10000,
            _capi.HEADER_VERSION_NUMBER // 100 % 100),
        RuntimeWarning, stacklevel=2)
