"""Python binding of vecidx, the embeddable vector index library.

Pure ctypes: nothing to compile beyond libvecidx itself. The shared library
is looked for, in order, at $VECIDX_LIBRARY, next to this package and in its
parent directories up to the source tree (where `make` builds it), and on
the system library path.

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
           readonly=False, sync="full", **params)
    A file-backed index with its write-ahead log PATH-wal.

Vectors may be NumPy arrays (float32 C-contiguous arrays are used in place,
anything else is converted), lists of floats, array('f'), or any buffer of
float32 (memoryview). Without NumPy installed results are lists.

Errors raise VecidxError subclasses carrying the library's message; each
also derives from the nearest built-in exception (NotFoundError is a
KeyError, InvalidArgumentError and DimensionError are ValueErrors, ...).
"""

import warnings

from . import _capi
from ._capi import library_path, find_library
from ._errors import (VecidxError, InvalidArgumentError, OutOfMemoryError,
                      IOFailedError, CorruptError, NotFoundError, ExistsError,
                      DimensionError, StateError, VersionError,
                      NotSupportedError, FullError)
from ._index import Index

__version__ = "0.2.0"

# Key reported for the padding slots of batch results (distance inf). It is
# also a valid key, so look at the distance to tell padding from a result.
MISSING_KEY = _capi.UINT64_MAX

MAX_DIM = _capi.MAX_DIM

__all__ = [
    "Index", "VecidxError", "InvalidArgumentError", "OutOfMemoryError",
    "IOFailedError", "CorruptError", "NotFoundError", "ExistsError",
    "DimensionError", "StateError", "VersionError", "NotSupportedError",
    "FullError", "MISSING_KEY", "MAX_DIM", "library_path", "find_library",
    "library_version", "simd",
]


def library_version():
    """Version string of the loaded libvecidx ("MAJOR.MINOR.PATCH")."""
    return _capi.version().decode("ascii")


def simd():
    """Distance kernel the library chose for this CPU ("avx2", ...)."""
    return _capi.simd().decode("ascii")


if not _capi.layout_compatible():
    warnings.warn(
        "vecidx: %s is version %s but this binding was written for %d.%d; "
        "struct layouts may differ" % (
            library_path, library_version(),
            _capi.HEADER_VERSION_NUMBER // 10000,
            _capi.HEADER_VERSION_NUMBER // 100 % 100),
        RuntimeWarning, stacklevel=2)
