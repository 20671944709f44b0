"""Loading libvecidx and declaring its C interface for ctypes.

Everything here mirrors vecidx.h, which is the contract: struct fields are
listed in the header's order with the header's types, so that ctypes lays
them out exactly as the C compiler does. python/tests checks that claim
against a C compiler when one is available.
"""

import ctypes
import ctypes.util
import os
import sys
from typing import Any, Dict, Optional

# ---- Constants from vecidx.h ------------------------------------------------

FLAT, HNSW, IVFPQ = 1, 2, 3
L2, IP, COSINE = 1, 2, 3
QUANT_AUTO, QUANT_FLAT, QUANT_HNSW = 0, 1, 2

OK = 0
EINVAL = -1
ENOMEM = -2
EIO = -3
ECORRUPT = -4
ENOTFOUND = -5
EEXIST = -6
EDIM = -7
ESTATE = -8
EVERSION = -9
ENOTSUP = -10
EFULL = -11

RDONLY = 0x01
CREATE = 0x02
PRIVATE = 0x04
VERIFY = 0x08
SYNC_FULL = 0x10
SYNC_NORMAL = 0x20
SYNC_OFF = 0x40
LEAN = 0x80

MAX_DIM = 65536
UINT64_MAX = (1 << 64) - 1

# The binding was written against this header version. A library with a
# different major.minor may have reordered structs; see _check_version.
HEADER_VERSION_NUMBER = 500

# ---- Structs ----------------------------------------------------------------

PROGRESS_FN = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_double,
                               ctypes.c_void_p)
FILTER_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p)


class Allocator(ctypes.Structure):
    # The binding never installs an allocator (Python has nothing to gain
    # from one), so the function pointers stay plain NULL pointers.
    _fields_ = [
        ("malloc_fn", ctypes.c_void_p),
        ("realloc_fn", ctypes.c_void_p),
        ("free_fn", ctypes.c_void_p),
        ("ctx", ctypes.c_void_p),
    ]


class Params(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int),
        ("metric", ctypes.c_int),
        ("dim", ctypes.c_uint32),
        ("capacity", ctypes.c_uint32),
        ("seed", ctypes.c_uint64),
        ("threads", ctypes.c_uint32),
        ("hnsw_m", ctypes.c_uint32),
        ("hnsw_ef_construction", ctypes.c_uint32),
        ("hnsw_ef_search", ctypes.c_uint32),
        ("ivf_nlist", ctypes.c_uint32),
        ("ivf_nprobe", ctypes.c_uint32),
        ("pq_m", ctypes.c_uint32),
        ("pq_nbits", ctypes.c_uint32),
        ("ivf_keep_vectors", ctypes.c_uint32),
        ("ivf_refine", ctypes.c_uint32),
        ("ivf_quantizer", ctypes.c_uint32),
        ("ivf_train_size", ctypes.c_uint32),
        ("progress", PROGRESS_FN),
        ("progress_ctx", ctypes.c_void_p),
        ("allocator", Allocator),
        ("storage", ctypes.c_uint32),
        ("keep_vectors", ctypes.c_uint32),
        ("refine", ctypes.c_uint32),
    ]


class SearchOpts(ctypes.Structure):
    _fields_ = [
        ("ef", ctypes.c_uint32),
        ("nprobe", ctypes.c_uint32),
        ("refine", ctypes.c_uint32),
        ("threads", ctypes.c_uint32),
        ("filter", FILTER_FN),
        ("filter_ctx", ctypes.c_void_p),
        ("allow_keys", ctypes.c_void_p),
        ("allow_count", ctypes.c_size_t),
        ("allow_bitmap", ctypes.c_void_p),
        ("allow_bits", ctypes.c_uint64),
        ("filter_selectivity", ctypes.c_float),
    ]


class Latency(ctypes.Structure):
    _fields_ = [
        ("count", ctypes.c_uint64),
        ("p50_us", ctypes.c_double),
        ("p95_us", ctypes.c_double),
        ("p99_us", ctypes.c_double),
        ("max_us", ctypes.c_double),
    ]


# The whole struct of the header, passed with its size to vecidx_stats_ex:
# a library that knows fewer fields leaves the rest zero.
class Stats(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int),
        ("metric", ctypes.c_int),
        ("dim", ctypes.c_uint32),
        ("count", ctypes.c_uint64),
        ("slots", ctypes.c_uint64),
        ("capacity", ctypes.c_uint64),
        ("memory_bytes", ctypes.c_uint64),
        ("mapped_bytes", ctypes.c_uint64),
        ("simd", ctypes.c_char_p),
        ("trained", ctypes.c_int),
        ("nlist", ctypes.c_uint32),
        ("pq_m", ctypes.c_uint32),
        ("storage", ctypes.c_int),
        ("vector_bytes", ctypes.c_uint32),
        # Since 0.3.0.
        ("searches", ctypes.c_uint64),
        ("inserts", ctypes.c_uint64),
        ("removes", ctypes.c_uint64),
        ("search_latency", Latency),
        ("batch_latency", Latency),
        ("insert_latency", Latency),
        ("remove_latency", Latency),
        ("checkpoint_latency", Latency),
        ("distances_per_search", ctypes.c_double),
        ("visited_per_search", ctypes.c_double),
        ("buried", ctypes.c_uint64),
        ("repairs", ctypes.c_uint64),
        ("log_bytes", ctypes.c_uint64),
        ("log_records", ctypes.c_uint64),
        ("checkpoints", ctypes.c_uint64),
        ("last_checkpoint_time", ctypes.c_double),
        ("last_checkpoint_seconds", ctypes.c_double),
        ("mem_vectors", ctypes.c_uint64),
        ("mem_links", ctypes.c_uint64),
        ("mem_keymap", ctypes.c_uint64),
        ("mem_lists", ctypes.c_uint64),
        ("mem_other", ctypes.c_uint64),
        ("list_min", ctypes.c_uint32),
        ("list_median", ctypes.c_uint32),
        ("list_max", ctypes.c_uint32),
        ("drift", ctypes.c_double),
        ("ef_search", ctypes.c_uint32),
        ("nprobe", ctypes.c_uint32),
        ("refine", ctypes.c_uint32),
    ]


class Recall(ctypes.Structure):
    _fields_ = [
        ("recall", ctypes.c_double),
        ("low", ctypes.c_double),
        ("high", ctypes.c_double),
        ("queries", ctypes.c_uint32),
        ("k", ctypes.c_uint32),
        ("search_us", ctypes.c_double),
        ("vs_codes", ctypes.c_int),
    ]


class Tuning(ctypes.Structure):
    _fields_ = [
        ("reached", ctypes.c_int),
        ("ef", ctypes.c_uint32),
        ("nprobe", ctypes.c_uint32),
        ("refine", ctypes.c_uint32),
        ("steps", ctypes.c_uint32),
        ("recall", Recall),
        ("advice", ctypes.c_char_p),
    ]


# The header promises that new fields are appended to these structs in later
# versions. A newer library writing its larger struct into ours would run
# off the end, so every struct handed to the library sits at the start of a
# zeroed block with room to spare; zero is "default" for any field added.
_SLACK = 512


_padded_types: Dict[Any, Any] = {}


def padded(struct_type):
    """A zeroed holder whose field .s is a struct_type, with spare room."""
    holder = _padded_types.get(struct_type)
    if holder is None:
        holder = type("Padded" + struct_type.__name__, (ctypes.Structure,), {
            "_fields_": [("s", struct_type),
                         ("_slack", ctypes.c_char * _SLACK)],
        })
        _padded_types[struct_type] = holder
    return holder()


# ---- Finding the library ----------------------------------------------------

if sys.platform == "darwin":
    _NAMES = ("libvecidx.dylib", "libvecidx.so")
elif sys.platform == "win32":
    _NAMES = ("vecidx.dll", "libvecidx.dll")
else:
    _NAMES = ("libvecidx.so", "libvecidx.so.0")


def _package_dir():
    return os.path.dirname(os.path.abspath(__file__))


def _dirs_near_package():
    # The package directory, then its parents up to the top of the source
    # tree (the directory holding vecidx.h), so that `make` at the
    # repository root is enough for an uninstalled checkout (python/vecidx
    # -> python -> repository). An installed package has its own copy of
    # the library in the package directory, found first.
    d = _package_dir()
    for _ in range(3):
        yield d
        if os.path.exists(os.path.join(d, "vecidx.h")):
            break
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent


def _candidates_near_package():
    for d in _dirs_near_package():
        for name in _NAMES:
            yield os.path.join(d, name)


def source_root():
    """The source tree this package sits in (the directory of vecidx.h),
    or None for an installed copy."""
    for d in _dirs_near_package():
        if os.path.isfile(os.path.join(d, "vecidx.h")):
            return d
    return None


def source_version():
    """VECIDX_VERSION_MAJOR.MINOR.PATCH of the source tree's vecidx.h."""
    root = source_root()
    if root is None:
        return None
    fields = {}
    with open(os.path.join(root, "vecidx.h")) as f:
        for line in f:
            part = line.split()
            if len(part) == 3 and part[0] == "#define" and \
                    part[1].startswith("VECIDX_VERSION_"):
                fields[part[1][len("VECIDX_VERSION_"):]] = part[2]
    try:
        return "%d.%d.%d" % tuple(int(fields[k])
                                  for k in ("MAJOR", "MINOR", "PATCH"))
    except (KeyError, ValueError):
        return None


def find_library() -> Optional[str]:
    """Path (or name) of the shared library that would be loaded.

    Order: the VECIDX_LIBRARY environment variable (an explicit choice, so
    it is not second-guessed: if it names a missing file, loading fails),
    then a libvecidx next to the package (where pip installs it) or in its
    parent directories up to the source tree root (where `make` builds
    it), then the system library path.
    """
    env = os.environ.get("VECIDX_LIBRARY")
    if env:
        # Resolved now so a later chdir cannot change which file it means.
        return os.path.abspath(env) if os.sep in env else env
    for path in _candidates_near_package():
        if os.path.isfile(path):
            return path
    return ctypes.util.find_library("vecidx")


def _load():
    path = find_library()
    if path is None:
        raise ImportError(
            "vecidx: cannot find the shared library libvecidx: build it "
            "with `make` in the source tree, install it, or set "
            "VECIDX_LIBRARY to its path")
    try:
        return ctypes.CDLL(path), path
    except OSError as e:
        raise ImportError("vecidx: cannot load %s: %s" % (path, e)) from e


lib, library_path = _load()

# ---- Function prototypes ----------------------------------------------------

_c = ctypes
# Every pointer argument, handles and arrays alike, is declared void *: the
# binding computes addresses itself (NumPy's data pointer, a ctypes array's
# address, an offset row inside either), and ctypes passes an int or None
# as such a pointer without further conversion.
_p = ctypes.c_void_p
_fp = _kp = _sp = _p


def _proto(name, restype, *argtypes):
    fn = getattr(lib, name, None)
    if fn is None:
        # Tolerated so that a library older than this binding still loads;
        # calling the function then raises NotSupportedError.
        return None
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


# Handles are passed around as opaque void pointers.
version = _proto("vecidx_version", _c.c_char_p)
version_number = _proto("vecidx_version_number", _c.c_int)
simd = _proto("vecidx_simd", _c.c_char_p)
strerror = _proto("vecidx_strerror", _c.c_char_p, _c.c_int)
errmsg = _proto("vecidx_errmsg", _c.c_char_p, _p)
params_init = _proto("vecidx_params_init", _c.c_int, _p, _c.c_int, _c.c_int,
                     _c.c_uint32)
create = _proto("vecidx_create", _c.c_int, _p, _c.POINTER(_p))
close = _proto("vecidx_close", None, _p)
save = _proto("vecidx_save", _c.c_int, _p, _c.c_char_p)
open_ = _proto("vecidx_open", _c.c_int, _c.c_char_p, _p, _c.c_uint,
               _c.POINTER(_p))
sync = _proto("vecidx_sync", _c.c_int, _p)
checkpoint = _proto("vecidx_checkpoint", _c.c_int, _p)
reserve = _proto("vecidx_reserve", _c.c_int, _p, _c.c_size_t)
train = _proto("vecidx_train", _c.c_int, _p, _c.c_size_t, _fp)
add = _proto("vecidx_add", _c.c_int, _p, _c.c_uint64, _fp)
upsert = _proto("vecidx_upsert", _c.c_int, _p, _c.c_uint64, _fp)
add_batch = _proto("vecidx_add_batch", _c.c_int, _p, _c.c_size_t, _kp, _fp)
remove = _proto("vecidx_remove", _c.c_int, _p, _c.c_uint64)
get = _proto("vecidx_get", _c.c_int, _p, _c.c_uint64, _fp)
contains = _proto("vecidx_contains", _c.c_int, _p, _c.c_uint64)
count = _proto("vecidx_count", _c.c_size_t, _p)
keys = _proto("vecidx_keys", _c.c_int, _p, _kp, _c.c_size_t, _sp)
# The exported function of 0.2, which fills the fields up to vector_bytes;
# vecidx_stats in vecidx.h is now a macro calling vecidx_stats_ex.
stats = _proto("vecidx_stats", _c.c_int, _p, _p)
stats_ex = _proto("vecidx_stats_ex", _c.c_int, _p, _p, _c.c_size_t)
check = _proto("vecidx_check", _c.c_int, _p)
search = _proto("vecidx_search", _c.c_int, _p, _fp, _c.c_size_t, _p, _kp,
                _fp, _sp)
search_batch = _proto("vecidx_search_batch", _c.c_int, _p, _c.c_size_t, _fp,
                      _c.c_size_t, _p, _kp, _fp, _sp)
estimate_recall = _proto("vecidx_estimate_recall", _c.c_int, _p, _c.c_size_t,
                         _c.c_size_t, _fp, _kp, _p, _p)
tune = _proto("vecidx_tune", _c.c_int, _p, _c.c_double, _c.c_size_t,
              _c.c_size_t, _fp, _kp, _p)

_REQUIRED = ("vecidx_version_number", "vecidx_strerror", "vecidx_errmsg",
             "vecidx_params_init", "vecidx_create", "vecidx_close",
             "vecidx_add", "vecidx_search", "vecidx_search_batch")
for _name in _REQUIRED:
    if getattr(lib, _name, None) is None:
        raise ImportError("vecidx: %s lacks %s; is it really libvecidx?"
                          % (library_path, _name))


def library_version_number():
    return version_number()


def layout_compatible():
    """True when the loaded library has the struct layout of this binding.

    Within one major.minor version structs only grow at the end (see
    _SLACK); a different major.minor may have changed them.
    """
    return version_number() // 100 == HEADER_VERSION_NUMBER // 100
