"""The Index class: a vecidx handle with a Pythonic interface."""

from __future__ import annotations

import ctypes
import numbers
import operator
import os
import sys
import threading
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator,
                    List, Optional, Tuple, Union)

from . import _capi
from ._errors import (InvalidArgumentError, DimensionError, NotFoundError,
                      StateError, NotSupportedError, VecidxError,
                      error_for)

try:
    import numpy as np
except ImportError:  # the binding works without NumPy, on lists and buffers
    np = None  # type: ignore[assignment]

if TYPE_CHECKING:
    # What the methods accept and return. NumPy arrays, or lists without
    # NumPy, so the vector and key types stay broad:
    #   VectorsLike: a NumPy array (any dtype; float32 C-contiguous is used
    #     in place), a list/tuple of numbers or of such lists, or a buffer of
    #     float32 (array('f'), memoryview).
    #   KeysLike: an int in 0 .. 2**64-1, a sequence/iterable of them, or an
    #     integer NumPy array.
    VectorsLike = Any
    KeysLike = Union[int, Iterable[int], Any]
    PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

_KINDS = {"flat": _capi.FLAT, "hnsw": _capi.HNSW, "ivfpq": _capi.IVFPQ,
          "ivf_pq": _capi.IVFPQ, "ivf-pq": _capi.IVFPQ}
_KIND_NAMES = {_capi.FLAT: "flat", _capi.HNSW: "hnsw", _capi.IVFPQ: "ivfpq"}
# vecidx_params.storage (VECIDX_STORE_*)
_STORAGES = {"f32": 0, "float32": 0, "f16": 1, "i8": 2, "int8": 2,
             "bin": 3, "binary": 3}
_STORAGE_NAMES = {0: "f32", 1: "f16", 2: "i8", 3: "bin"}
_METRICS = {"l2": _capi.L2, "ip": _capi.IP, "inner_product": _capi.IP,
            "cos": _capi.COSINE, "cosine": _capi.COSINE}
_METRIC_NAMES = {_capi.L2: "l2", _capi.IP: "ip", _capi.COSINE: "cos"}
_QUANTIZERS = {"auto": _capi.QUANT_AUTO, "flat": _capi.QUANT_FLAT,
               "hnsw": _capi.QUANT_HNSW}
_SYNC = {"full": _capi.SYNC_FULL, "normal": _capi.SYNC_NORMAL,
         "off": _capi.SYNC_OFF}

# Keyword parameters of Index() and Index.open(): accepted name -> field of
# vecidx_params. Both the short names familiar from hnswlib/FAISS and the C
# field names are accepted.
_PARAM_FIELDS = {
    "capacity": "capacity",
    "seed": "seed",
    "threads": "threads",
    "M": "hnsw_m", "m": "hnsw_m", "hnsw_m": "hnsw_m",
    "ef_construction": "hnsw_ef_construction",
    "hnsw_ef_construction": "hnsw_ef_construction",
    "ef_search": "hnsw_ef_search", "ef": "hnsw_ef_search",
    "hnsw_ef_search": "hnsw_ef_search",
    "nlist": "ivf_nlist", "ivf_nlist": "ivf_nlist",
    "nprobe": "ivf_nprobe", "ivf_nprobe": "ivf_nprobe",
    "pq_m": "pq_m",
    "pq_nbits": "pq_nbits", "nbits": "pq_nbits",
    "keep_vectors": "ivf_keep_vectors", "ivf_keep_vectors": "ivf_keep_vectors",
    "refine": "ivf_refine", "ivf_refine": "ivf_refine",
    "storage": "storage",
    "quantizer": "ivf_quantizer", "ivf_quantizer": "ivf_quantizer",
    "train_size": "ivf_train_size", "ivf_train_size": "ivf_train_size",
}

_U32_MAX = (1 << 32) - 1
_SIZE_MAX = (1 << (8 * ctypes.sizeof(ctypes.c_size_t))) - 1
_FLOAT = ctypes.sizeof(ctypes.c_float)
_KEY = ctypes.sizeof(ctypes.c_uint64)

# Which index each thread is currently inside a filter or progress callback
# of. The library forbids calling back into the same handle from there (a
# waiting writer would deadlock the read lock), so the binding turns such a
# call into an exception instead of a hang.
_tls = threading.local()


def _callback_stack():
    stack = getattr(_tls, "stack", None)
    if stack is None:
        stack = _tls.stack = []
    return stack


def _need(fn, name):
    if fn is None:
        raise NotSupportedError(
            "the loaded library (%s) has no %s; it is older than this "
            "binding" % (_capi.library_path, name))
    return fn


def _uint(value, what, limit):
    try:
        v = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(
            "%s must be an integer, not %s" % (what, type(value).__name__))
    if v < 0 or v > limit:
        raise InvalidArgumentError("%s %d is out of range 0..%d"
                                   % (what, v, limit))
    return v


def _lookup(table, value, what):
    if isinstance(value, str):
        v = table.get(value.lower())
        if v is not None:
            return v
    names = sorted(set(table))
    raise InvalidArgumentError("unknown %s %r (expected one of %s)"
                               % (what, value, ", ".join(names)))


# ---- Converting arguments ---------------------------------------------------
#
# Every converter returns the address the library should read, plus an
# object that owns the memory at that address; the caller holds on to the
# owner until the C call has returned.

def _is_scalar_key(obj):
    if isinstance(obj, (str, bytes)):
        return False
    if hasattr(obj, "__len__") or hasattr(obj, "__iter__"):
        # NumPy 0-d arrays have __len__ but raise on it; treat them as
        # scalars like NumPy integer scalars.
        return np is not None and isinstance(obj, np.ndarray) and obj.ndim == 0
    return hasattr(obj, "__index__")


def _key_list(obj):
    out = []
    for k in obj:
        out.append(_uint(k, "key", _capi.UINT64_MAX))
    return out


def _uint64_keys(arr, what):
    """A contiguous, aligned uint64 copy (or view) of an integer array of
    keys, negative keys refused; None if arr is not of integers."""
    kind = arr.dtype.kind
    if kind == "u":
        out = np.ascontiguousarray(arr, dtype=np.uint64)
        return out.copy() if not out.flags.aligned else out
    if kind == "i":
        if arr.size and arr.min() < 0:
            raise InvalidArgumentError(
                "%s %d is out of range 0..%d"
                % (what, int(arr.min()), _capi.UINT64_MAX))
        return np.array(arr, dtype=np.uint64, order="C")
    return None


def _keys_arg(obj):
    """(address, n, owner) of a uint64 array holding the keys in obj."""
    if np is not None and isinstance(obj, np.ndarray):
        if obj.ndim != 1:
            raise InvalidArgumentError(
                "keys must be one-dimensional, got shape %s" % (obj.shape,))
        arr = _uint64_keys(obj, "key")
        if arr is None and (obj.dtype.kind == "O" or obj.size == 0):
            arr = np.array(_key_list(obj), dtype=np.uint64)
        elif arr is None:
            raise InvalidArgumentError(
                "keys must be integers, got an array of %s" % obj.dtype)
        return arr.ctypes.data if arr.size else None, arr.size, arr
    keys = _key_list(obj)
    buf = (ctypes.c_uint64 * len(keys))(*keys)
    return (ctypes.addressof(buf) if keys else None), len(keys), buf


_BOOL_KEYS = ("allowed holds keys, not flags: pass a mask indexed by key "
              "as allowed_bitmap")


def _allowed_list(seq):
    out = []
    for k in seq:
        if isinstance(k, bool):
            raise InvalidArgumentError(_BOOL_KEYS)
        out.append(_uint(k, "allowed key", _capi.UINT64_MAX))
    return out


def _allowed_arg(obj):
    """(address, n, owner) of a uint64 array of the keys in `allowed`.

    The address is never NULL, even for no keys: the library reads NULL as
    "no allowed set given", while an empty set must admit nothing.
    """
    if isinstance(obj, (str, bytes)) or _is_scalar_key(obj) or \
            not (hasattr(obj, "__iter__") or hasattr(obj, "__getitem__")):
        raise InvalidArgumentError(
            "allowed must be a collection of keys (a set, a list, an "
            "integer array), not %s" % type(obj).__name__)
    if np is None:
        keys = _allowed_list(obj)
        buf = (ctypes.c_uint64 * max(len(keys), 1))(*keys)
        return ctypes.addressof(buf), len(keys), buf
    arr = obj
    if not isinstance(obj, np.ndarray):
        seq = obj if isinstance(obj, list) else list(obj)
        # NumPy converts a list of ints in one C loop, 7 times faster than
        # checking each in Python; what it cannot type as integers (keys
        # from 2**63 up, floats, anything odd) is checked one by one.
        try:
            arr = np.array(seq) if seq else np.empty(0, dtype=np.uint64)
        except (ValueError, TypeError, OverflowError):
            arr = None
        if arr is None or arr.ndim != 1 or arr.dtype.kind not in "iub":
            arr = np.array(_allowed_list(seq), dtype=np.uint64)
    if arr.ndim != 1:
        raise InvalidArgumentError(
            "allowed must be one-dimensional, got shape %s" % (arr.shape,))
    kind = arr.dtype.kind
    if kind == "b":
        raise InvalidArgumentError(_BOOL_KEYS)
    if kind in "ui":
        arr = _uint64_keys(arr, "allowed key")
    elif kind == "O" or arr.size == 0:
        arr = np.array(_allowed_list(arr), dtype=np.uint64)
    else:
        raise InvalidArgumentError(
            "allowed must hold integer keys, got an array of %s" % arr.dtype)
    n = arr.size
    if n == 0:
        arr = np.zeros(1, dtype=np.uint64)
    return arr.ctypes.data, n, arr


_BITMAP_TYPES = ("allowed_bitmap must be a bool array (a flag per key) or a "
                 "uint64 array (64 keys per word, key x at bit x %% 64 of "
                 "word x // 64), not %s")


def _bitmap_arg(obj):
    """(address, bits, owner) of allowed_bitmap in the library's layout:
    key x admitted when x < bits and bit x % 64 of word x // 64 is set.

    A bool array (flag i for key i) is packed; a uint64 array is taken as
    the words themselves, in place, for callers that keep their bitmaps
    packed. Other integer arrays are refused: 0/1 flags and words would be
    indistinguishable.
    """
    if np is None:
        flags = list(obj) if not isinstance(obj, (str, bytes)) else None
        if flags is None or not all(isinstance(f, bool) for f in flags):
            raise InvalidArgumentError(
                "allowed_bitmap must be a sequence of bools (a flag per "
                "key) without NumPy")
        words = (ctypes.c_uint64 * max((len(flags) + 63) // 64, 1))()
        for i, f in enumerate(flags):
            if f:
                words[i >> 6] |= 1 << (i & 63)
        return ctypes.addressof(words), len(flags), words
    arr = obj if isinstance(obj, np.ndarray) else np.asarray(obj)
    if arr.ndim != 1:
        raise InvalidArgumentError(
            "allowed_bitmap must be one-dimensional, got shape %s"
            % (arr.shape,))
    if arr.dtype == np.bool_:
        bits = arr.size
        nwords = max((bits + 63) // 64, 1)
        raw = np.zeros(nwords * 8, dtype=np.uint8)
        packed = np.packbits(arr, bitorder="little")
        raw[:packed.size] = packed
        # Little bit order puts key x at bit x % 8 of byte x // 8, which is
        # bit x % 64 of word x // 64 when the words are read little-endian.
        words = raw.view("<u8").astype(np.uint64, copy=False)
        return words.ctypes.data, bits, words
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8:
        words = np.ascontiguousarray(arr, dtype=np.uint64)
        if not words.flags.aligned:
            words = words.copy()
        bits = 64 * words.size
        if bits == 0:
            words = np.zeros(1, dtype=np.uint64)
        return words.ctypes.data, bits, words
    raise InvalidArgumentError(_BITMAP_TYPES % arr.dtype)


def _selectivity_arg(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(
            "selectivity must be a number in (0, 1], not %s"
            % type(value).__name__)
    s = float(value)
    if not 0 < s <= 1:
        raise InvalidArgumentError("selectivity %r is outside (0, 1]" % s)
    # The C field is a float, where values below about 1e-45 would become
    # 0, which means "unknown".
    return max(s, 1e-30)


# Whether the loaded library honours allow_keys and allow_bitmap. One built
# before them never reads those fields (they fall in the spare room after
# its struct), so it would return keys outside the set without a word:
# rather than trust a version number, ask it once, on a one-key index.
_allow_support = None


def _allowed_sets_supported():
    global _allow_support
    if _allow_support is None:
        _allow_support = _probe_allowed_sets()
    return _allow_support


def _probe_allowed_sets():
    holder = _capi.padded(_capi.Params)
    if _capi.params_init(ctypes.addressof(holder.s), _capi.FLAT, _capi.L2,
                         1) != _capi.OK:
        return False
    out = ctypes.c_void_p()
    if _capi.create(ctypes.addressof(holder), ctypes.byref(out)) != _capi.OK:
        return False
    h = out.value
    try:
        vec = ctypes.c_float(0.0)
        if _capi.add(h, 0, ctypes.addressof(vec)) != _capi.OK:
            return False
        # Key 0 is stored; each form admits key 1 only.
        key_one = ctypes.c_uint64(1)
        word_one = ctypes.c_uint64(2)
        rkey, rdist, found = ctypes.c_uint64(), ctypes.c_float(), \
            ctypes.c_size_t()
        for form in ("keys", "bitmap"):
            oh = _capi.padded(_capi.SearchOpts)
            if form == "keys":
                oh.s.allow_keys = ctypes.addressof(key_one)
                oh.s.allow_count = 1
            else:
                oh.s.allow_bitmap = ctypes.addressof(word_one)
                oh.s.allow_bits = 64
            rc = _capi.search(h, ctypes.addressof(vec), 1,
                              ctypes.addressof(oh), ctypes.addressof(rkey),
                              ctypes.addressof(rdist), ctypes.byref(found))
            if rc != _capi.OK or found.value != 0:
                return False
        return True
    finally:
        _capi.close(h)


class _Matrix:
    """Rows of float32 vectors at a C address, with their owner."""

    __slots__ = ("addr", "rows", "one_d", "owner")

    def __init__(self, addr, rows, one_d, owner):
        self.addr = addr
        self.rows = rows
        self.one_d = one_d
        self.owner = owner


def _shape_rows(shape, dim, rows, flat_ok, what):
    """Number of rows for an input of `shape`, or raise DimensionError.

    A one-dimensional input is one vector when it has dim components; where
    flat_ok, it may also hold several vectors one after the other (so an
    array('f') can carry a batch), provided the count agrees with `rows`
    when the caller knows it. Searches do not take flat batches: a query of
    the wrong length would silently become several queries.
    """
    if len(shape) == 1:
        n = shape[0]
        if n == dim and (rows is None or rows == 1):
            return 1, True
        if flat_ok and n % dim == 0 and (rows is None or n == rows * dim):
            return n // dim, False
        if rows is not None and rows != 1 and flat_ok:
            raise DimensionError(
                "%s: %d values for %d vectors of dimension %d (expected %d)"
                % (what, n, rows, dim, rows * dim))
        raise DimensionError("%s has %d components, index dimension is %d"
                             % (what, n, dim))
    if len(shape) == 2:
        if shape[1] != dim:
            raise DimensionError(
                "%s have %d components, index dimension is %d"
                % (what, shape[1], dim))
        if rows is not None and shape[0] != rows:
            raise InvalidArgumentError("%d keys but %d vectors"
                                       % (rows, shape[0]))
        return shape[0], False
    raise DimensionError("%s must be one- or two-dimensional, got shape %s"
                         % (what, tuple(shape)))


def _matrix_numpy(obj, dim, rows, flat_ok, what):
    arr = obj if isinstance(obj, np.ndarray) else np.asarray(obj)
    # Misaligned floats (a view at an odd byte offset) would be undefined
    # behaviour for the C code to read, so they are copied too.
    if arr.dtype != np.float32 or not arr.flags.c_contiguous \
            or not arr.flags.aligned:
        if arr.dtype.kind not in "fiu":
            raise InvalidArgumentError("%s must be numbers, got %s"
                                       % (what, arr.dtype))
        # The one copy the binding makes: anything but C-ordered float32.
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    n, one_d = _shape_rows(arr.shape, dim, rows, flat_ok, what)
    return _Matrix(arr.ctypes.data if arr.size else None, n, one_d, arr)


_NATIVE_FLOAT = ("f", "@f", "=f", "<f" if sys.byteorder == "little" else ">f")


def _matrix_buffer(mv, dim, rows, flat_ok, what):
    if mv.format in _NATIVE_FLOAT and mv.itemsize == _FLOAT:
        shape = mv.shape
        n, one_d = _shape_rows(shape, dim, rows, flat_ok, what)
        total = n * dim
        if total == 0:
            return _Matrix(None, 0, one_d, None)
        if mv.c_contiguous:
            ctype = ctypes.c_float * total
            buf = None
            if not mv.readonly:
                buf = ctype.from_buffer(mv)   # shares the memory, no copy
                if ctypes.addressof(buf) % ctypes.alignment(ctypes.c_float):
                    buf = None
            if buf is None:
                buf = ctype.from_buffer_copy(mv)
            return _Matrix(ctypes.addressof(buf), n, one_d, buf)
        values = mv.tolist()
    elif mv.format in ("B", "b", "c"):
        raise InvalidArgumentError(
            "%s: a byte buffer is ambiguous; cast it to float32 first "
            "(memoryview(b).cast('f'))" % what)
    else:
        values = mv.tolist()   # doubles, integers: converted below
    return _matrix_list(values, dim, rows, flat_ok, what)


def _matrix_list(obj, dim, rows, flat_ok, what):
    seq = list(obj)
    nested = bool(seq) and not isinstance(seq[0], (int, float)) \
        and hasattr(seq[0], "__len__")
    if nested:
        shape = (len(seq), len(seq[0]))
        for r in seq:
            if len(r) != shape[1]:
                raise DimensionError("%s: rows of different lengths (%d, %d)"
                                     % (what, shape[1], len(r)))
        flat = [x for r in seq for x in r]
    else:
        shape = (len(seq),)
        flat = seq
    n, one_d = _shape_rows(shape, dim, rows, flat_ok, what)
    if not flat:
        return _Matrix(None, 0, one_d, None)
    try:
        buf = (ctypes.c_float * len(flat))(*flat)
    except (TypeError, OverflowError):
        raise InvalidArgumentError("%s must be float32 numbers" % what) \
            from None
    return _Matrix(ctypes.addressof(buf), n, one_d, buf)


def _matrix(obj, dim, rows=None, flat_ok=False, what="vector"):
    """float32 rows of length dim from a NumPy array, buffer or sequence."""
    if np is not None:
        return _matrix_numpy(obj, dim, rows, flat_ok, what)
    if isinstance(obj, str):
        raise InvalidArgumentError("%s must be numbers" % what)
    try:
        mv = memoryview(obj)
    except TypeError:
        return _matrix_list(obj, dim, rows, flat_ok, what)
    return _matrix_buffer(mv, dim, rows, flat_ok, what)


# ---- Results ----------------------------------------------------------------

def _float_out(n):
    if np is not None:
        arr = np.empty(n, dtype=np.float32)
        return arr, arr.ctypes.data
    buf = (ctypes.c_float * max(n, 1))()
    return buf, ctypes.addressof(buf)


def _key_out(n):
    if np is not None:
        arr = np.empty(n, dtype=np.uint64)
        return arr, arr.ctypes.data
    buf = (ctypes.c_uint64 * max(n, 1))()
    return buf, ctypes.addressof(buf)


# ---- The index --------------------------------------------------------------

class Index:
    """A vecidx index, in memory or backed by a file.

    ``Index(dim, kind="hnsw", metric="cos", **params)`` creates an empty
    in-memory index; ``Index.open(path, ...)`` opens (or creates) one
    stored in a file. See the package docstring for the parameters.
    """

    # ---- creation and lifetime ----------------------------------------------

    def __init__(self, dim: int, kind: str = "hnsw", metric: str = "cos",
                 **params: Any) -> None:
        self._setup(None, False)
        p = self._make_params(dim, kind, metric, params)
        out = ctypes.c_void_p()
        rc = _capi.create(ctypes.addressof(p), ctypes.byref(out))
        if rc != _capi.OK:
            raise error_for(rc, None)
        self._h = out.value
        self._describe()

    @classmethod
    def open(cls, path: PathLike, dim: Optional[int] = None,
             kind: Optional[str] = None, metric: Optional[str] = None, *,
             create: bool = False, readonly: bool = False,
             private: bool = False, verify: bool = False,
             lean: bool = False, sync: Optional[str] = None,
             **params: Any) -> Index:
        """Open the index stored at path (and its write-ahead log PATH-wal).

        create=True makes an empty index if path does not exist; dim (and
        kind/metric when not "hnsw"/"cos") describe it. For an existing
        file dim, kind and metric may be left out; when dim is given they
        must match the file (kind and metric default as in Index()), and
        of the other parameters only threads and progress apply: the rest
        (M, nlist, ...) are the file's.
        readonly=True opens a reader: writes raise StateError. sync chooses
        the durability of a writer's adds and removes: "full" (default,
        fsync before each write returns), "normal" (fsync every few ms) or
        "off" (left to the OS).
        private=True opens a private copy (VECIDX_PRIVATE): like a reader
        it takes no lock and sees the writes logged so far, but it takes
        writes of its own, which change only this handle -- never the
        file, nothing is logged, closing drops them; save() writes them
        to a new file, checkpoint() raises StateError. Not with create,
        readonly or sync.
        A reader verifies each piece of the file (16 vectors, an IVF-PQ
        list) against its checksum when it first reads it: a call
        that meets a damaged one raises CorruptError, other calls go on.
        verify=True (VECIDX_VERIFY) verifies all of it at open instead; a
        writer or private copy always does.
        lean=True (VECIDX_LEAN, readonly only): with compressed storage and
        keep_vectors, the reader reads the float32 vectors it re-ranks
        with a system call each instead of through its mapping, so they
        stay out of its resident set, at some cost in speed.
        """
        self = cls.__new__(cls)
        self._setup(os.fspath(path), bool(readonly))
        flags = _capi.VERIFY if verify else 0
        if lean:
            if not readonly:
                raise InvalidArgumentError("lean needs readonly=True")
            flags |= _capi.LEAN
        if private:
            if readonly or create or sync is not None:
                raise InvalidArgumentError(
                    "private takes neither create, readonly nor sync")
            flags |= _capi.PRIVATE
        elif readonly:
            if create:
                raise InvalidArgumentError(
                    "create and readonly cannot be combined")
            if sync is not None:
                raise InvalidArgumentError(
                    "sync applies to writers; the index is opened readonly")
            flags |= _capi.RDONLY
        else:
            flags |= _lookup(_SYNC, "full" if sync is None else sync,
                             "sync mode")
        if create:
            flags |= _capi.CREATE
        p = None
        if dim is not None:
            p = self._make_params(dim, kind or "hnsw", metric or "cos",
                                  params)
        elif kind is not None or metric is not None or params:
            raise InvalidArgumentError(
                "kind, metric and index parameters need dim as well")
        out = ctypes.c_void_p()
        rc = _capi.open_(os.fsencode(path),
                         None if p is None else ctypes.addressof(p),
                         flags, ctypes.byref(out))
        if rc != _capi.OK:
            raise error_for(rc, None)
        self._h = out.value
        self._describe()
        return self

    def _setup(self, path, readonly):
        self._h = None
        self._path = path
        self._readonly = readonly
        self._cv = threading.Condition(threading.Lock())
        self._active = 0
        # Identifies this index in _tls.stack without a reference cycle
        # through the callbacks it owns.
        self._token = object()
        self._progress_cb = None
        self._progress_errors = []

    def _make_params(self, dim, kind, metric, params):
        dim = _uint(dim, "dim", _U32_MAX)
        holder = _capi.padded(_capi.Params)
        p = holder.s
        rc = _capi.params_init(ctypes.addressof(p),
                               _lookup(_KINDS, kind, "kind"),
                               _lookup(_METRICS, metric, "metric"), dim)
        if rc != _capi.OK:
            raise error_for(rc, None)
        for name, value in params.items():
            if name == "progress":
                self._set_progress(p, value)
                continue
            field = _PARAM_FIELDS.get(name)
            if field is None:
                raise TypeError("unknown index parameter %r" % name)
            # keep_vectors and refine name the IVF-PQ fields for IVF-PQ
            # and the storage ones for flat and HNSW.
            if name in ("keep_vectors", "refine") and p.kind != _capi.IVFPQ:
                field = name
            if field == "ivf_quantizer" and isinstance(value, str):
                value = _lookup(_QUANTIZERS, value, "quantizer")
            elif field == "storage" and isinstance(value, str):
                value = _lookup(_STORAGES, value, "storage")
            elif field.endswith("keep_vectors") and isinstance(value, bool):
                value = int(value)
            limit = _capi.UINT64_MAX if field == "seed" else _U32_MAX
            setattr(p, field, _uint(value, name, limit))
        # The holder, not p, is what the library may write past the end of.
        return holder

    def _set_progress(self, p, fn):
        if fn is None:
            return
        if not callable(fn):
            raise TypeError("progress must be callable(stage, done)")
        token, errors, lock = self._token, self._progress_errors, self._cv

        def progress(stage, done, _ctx):
            # The library calls progress on the thread that made the call,
            # so the exception is tagged with it: a call running
            # concurrently in another thread must not raise it.
            me = threading.get_ident()
            with lock:
                if any(ident == me for ident, _ in errors):
                    return
            stack = _callback_stack()
            stack.append(token)
            try:
                fn(stage.decode("utf-8", "replace"), done)
            except BaseException as e:  # re-raised after the library call
                with lock:
                    errors.append((me, e))
            finally:
                stack.pop()

        # The library keeps the function pointer for the handle's lifetime,
        # so the ctypes thunk must live as long as the index.
        self._progress_cb = _capi.PROGRESS_FN(progress)
        p.progress = self._progress_cb

    def _describe(self):
        st = self._stats_struct()
        self._dim = st.dim
        self._kind = st.kind
        self._metric = st.metric

    def close(self) -> None:
        """Release the index (syncing a file-backed writer's log).

        Waits for calls running in other threads; later calls raise
        StateError. Closing twice is harmless.
        """
        if self._token in _callback_stack():
            raise StateError("an index cannot be closed from its own "
                             "filter or progress callback")
        with self._cv:
            h = self._h
            if h is None:
                return
            self._h = None
            while self._active:
                self._cv.wait()
        _capi.close(h)

    def __del__(self) -> None:
        try:
            if getattr(self, "_h", None) is not None:
                self.close()
        except Exception:  # interpreter shutdown: nothing left to report to
            pass

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._h is None

    # Every call into the library goes through _acquire/_release, so that
    # close() can wait for calls running in other threads (the library
    # requires vecidx_close to run alone) and so that a callback calling
    # back into its own index fails cleanly.
    def _acquire(self):
        if self._token in _callback_stack():
            raise StateError("a filter or progress callback must not call "
                             "its own index (it is locked for the search)")
        with self._cv:
            if self._h is None:
                raise StateError("the index is closed")
            self._active += 1
            return self._h

    def _release(self):
        mine = None
        with self._cv:
            self._active -= 1
            if self._active == 0 and self._h is None:  # close() waits
                self._cv.notify_all()
            if self._progress_errors:
                me = threading.get_ident()
                mine = [e for ident, e in self._progress_errors if ident == me]
                self._progress_errors[:] = [
                    x for x in self._progress_errors if x[0] != me]
        if mine:
            raise mine[0]

    def _call(self, fn, *args):
        h = self._acquire()
        try:
            rc = fn(h, *args)
            if rc != _capi.OK:
                raise error_for(rc, h)
        finally:
            self._release()

    # ---- properties ---------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def kind(self) -> str:
        return _KIND_NAMES.get(self._kind, str(self._kind))

    @property
    def metric(self) -> str:
        return _METRIC_NAMES.get(self._metric, str(self._metric))

    @property
    def path(self) -> Optional[str]:
        """The file the index was opened from, or None if in memory."""
        return self._path

    @property
    def readonly(self) -> bool:
        return self._readonly

    def __repr__(self) -> str:
        where = "closed" if self._h is None else (
            "path=%r" % self._path if self._path else "in memory")
        return "<vecidx.Index %s %s dim=%d %s>" % (
            self.kind, self.metric, self._dim, where)

    # ---- writing ------------------------------------------------------------

    def add(self, keys: KeysLike, vectors: VectorsLike) -> None:
        """Insert vectors under new keys.

        keys: one int with one vector, or a sequence/array of n ints with n
        vectors (an (n, dim) array, a list of lists, or n*dim floats in a
        flat buffer). A batch is all or nothing: if any key exists already
        (ExistsError) or any vector is invalid, nothing is inserted.
        """
        if _is_scalar_key(keys):
            key = _uint(keys, "key", _capi.UINT64_MAX)
            m = _matrix(vectors, self._dim, rows=1, what="vector")
            self._call(_capi.add, key, m.addr)
            return
        kaddr, n, kown = _keys_arg(keys)
        m = _matrix(vectors, self._dim, rows=n, flat_ok=True, what="vectors")
        self._call(_capi.add_batch, n, kaddr, m.addr)

    def upsert(self, keys: KeysLike, vectors: VectorsLike) -> None:
        """Insert or replace: like add, but an existing key's vector is
        replaced. Several vectors are upserted one after the other, so a
        failure part way (out of memory, an I/O error) leaves the earlier
        ones applied; invalid values are rejected before any is applied.
        """
        if _is_scalar_key(keys):
            key = _uint(keys, "key", _capi.UINT64_MAX)
            m = _matrix(vectors, self._dim, rows=1, what="vector")
            self._call(_capi.upsert, key, m.addr)
            return
        kaddr, n, kown = _keys_arg(keys)
        m = _matrix(vectors, self._dim, rows=n, flat_ok=True, what="vectors")
        keylist = [int(k) for k in kown]
        self._prevalidate(m)
        step = self._dim * _FLOAT
        h = self._acquire()
        try:
            for i, key in enumerate(keylist):
                rc = _capi.upsert(h, key, m.addr + i * step)
                if rc != _capi.OK:
                    raise error_for(rc, h)
        finally:
            self._release()

    def _prevalidate(self, m):
        # The library checks each vector, but a loop of single upserts
        # would have applied the rows before a bad one; checking them all
        # first keeps a typical mistake from leaving a half-done batch.
        if np is None or m.rows == 0:
            return
        arr = np.ctypeslib.as_array(
            ctypes.cast(m.addr, ctypes.POINTER(ctypes.c_float)),
            shape=(m.rows, self._dim))
        finite = np.isfinite(arr).all(axis=1)
        if not finite.all():
            raise InvalidArgumentError(
                "row %d has a NaN or infinite component"
                % int(np.argmin(finite)))
        if self._metric == _capi.COSINE:
            nonzero = arr.any(axis=1)
            if not nonzero.all():
                raise InvalidArgumentError(
                    "row %d is a zero vector, which has no cosine direction"
                    % int(np.argmin(nonzero)))
            # as vecidx.c's check: the inverse norm must fit a float, and
            # a stored vector's norm must be at most 2^100
            wide = arr.astype(np.float64)
            n2 = np.einsum("ij,ij->i", wide, wide)
            bad = (1.0 / np.sqrt(n2) > np.finfo(np.float32).max) | \
                (n2 > 2.0 ** 200)
            if bad.any():
                raise InvalidArgumentError(
                    "row %d is too short or too long for the cosine metric"
                    % int(np.argmax(bad)))

    def remove(self, keys: KeysLike) -> None:
        """Remove one key or a sequence of keys.

        Every key is looked up first: if one is missing, NotFoundError is
        raised and nothing is removed (unless another thread removes keys
        concurrently).
        """
        if _is_scalar_key(keys):
            self._call(_capi.remove, _uint(keys, "key", _capi.UINT64_MAX))
            return
        keylist = _key_list(keys)
        h = self._acquire()
        try:
            for key in keylist:
                rc = _capi.contains(h, key)
                if rc == 0:
                    raise NotFoundError("key %d not found" % key)
                if rc < 0:
                    raise error_for(rc, h)
            for key in keylist:
                rc = _capi.remove(h, key)
                if rc != _capi.OK:
                    raise error_for(rc, h)
        finally:
            self._release()

    def reserve(self, n: int) -> None:
        """Make room for n vectors in total up front."""
        self._call(_capi.reserve, _uint(n, "n", _SIZE_MAX))

    def train(self, samples: VectorsLike) -> None:
        """Train an IVF-PQ index on sample vectors ((n, dim) or n*dim
        floats); the samples are not added. A no-op for flat and HNSW
        indexes and for an index already trained."""
        m = _matrix(samples, self._dim, flat_ok=True, what="samples")
        self._call(_need(_capi.train, "vecidx_train"), m.rows, m.addr)

    # ---- files --------------------------------------------------------------

    def save(self, path: PathLike) -> None:
        """Write a snapshot of the index to path, atomically."""
        self._call(_capi.save, os.fsencode(path))

    def sync(self) -> None:
        """Make every write so far durable (a file-backed writer's log)."""
        self._call(_capi.sync)

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the main file."""
        self._call(_capi.checkpoint)

    # ---- reading ------------------------------------------------------------

    def __len__(self) -> int:
        h = self._acquire()
        try:
            return _capi.count(h)
        finally:
            self._release()

    def __contains__(self, key: object) -> bool:
        try:
            key = _uint(key, "key", _capi.UINT64_MAX)
        except InvalidArgumentError:
            return False
        h = self._acquire()
        try:
            rc = _capi.contains(h, key)
            if rc < 0:
                raise error_for(rc, h)
            return rc == 1
        finally:
            self._release()

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys())

    def keys(self) -> Any:
        """All stored keys (uint64 array, or a list without NumPy), in no
        particular order; one consistent snapshot."""
        fn = _need(_capi.keys, "vecidx_keys")
        total = ctypes.c_size_t()
        h = self._acquire()
        try:
            cap = _capi.count(h)
            while True:
                buf, addr = _key_out(cap)
                rc = fn(h, addr if cap else None, cap, ctypes.byref(total))
                if rc != _capi.OK:
                    raise error_for(rc, h)
                # A writer in another thread may have added keys between
                # sizing and copying; then try again with the new size.
                if total.value <= cap:
                    break
                cap = total.value
        finally:
            self._release()
        n = total.value
        if np is not None:
            return buf[:n]
        return [int(k) for k in buf[:n]]

    def get(self, keys: KeysLike) -> Any:
        """The vector stored under a key (1-D), or under each of a sequence
        of keys (2-D). NotFoundError (a KeyError) for a missing key.

        An IVF-PQ index trained without keep_vectors returns the
        reconstruction from its codes, not the vector that was added.
        """
        single = _is_scalar_key(keys)
        keylist = [_uint(keys, "key", _capi.UINT64_MAX)] if single \
            else _key_list(keys)
        dim = self._dim
        buf, addr = _float_out(len(keylist) * dim)
        h = self._acquire()
        try:
            for i, key in enumerate(keylist):
                rc = _capi.get(h, key, addr + i * dim * _FLOAT)
                if rc != _capi.OK:
                    raise error_for(rc, h)
        finally:
            self._release()
        if np is not None:
            return buf if single else buf.reshape(len(keylist), dim)
        values = [float(x) for x in buf[:len(keylist) * dim]]
        if single:
            return values
        return [values[i * dim:(i + 1) * dim] for i in range(len(keylist))]

    def stats(self) -> Dict[str, Any]:
        """Counters of the index as a dict keyed by the field names of
        vecidx_stats_t, as `vecidx stats --json` prints them: kind, metric
        and storage as names, trained as a bool, each *_latency as a dict
        of count, p50_us, p95_us, p99_us and max_us. Searches, inserts,
        removes, latencies and checkpoints count what this handle did
        since it was opened or created."""
        st = self._stats_struct()
        out: Dict[str, Any] = {}
        for name, _ in _capi.Stats._fields_:
            value = getattr(st, name)
            if isinstance(value, _capi.Latency):
                value = {f: getattr(value, f) for f, _ in value._fields_}
            out[name] = value
        out["kind"] = _KIND_NAMES.get(st.kind, st.kind)
        out["metric"] = _METRIC_NAMES.get(st.metric, st.metric)
        out["simd"] = (st.simd or b"").decode("ascii", "replace")
        out["trained"] = bool(st.trained)
        out["storage"] = _STORAGE_NAMES.get(st.storage, st.storage)
        return out

    def _stats_struct(self):
        if _capi.stats_ex is not None:
            st = _capi.Stats()
            self._call(_capi.stats_ex, ctypes.addressof(st),
                       ctypes.sizeof(st))
            return st
        # A 0.2 library fills the fields it knows; the rest of the holder
        # stays zero.
        holder = _capi.padded(_capi.Stats)
        self._call(_capi.stats, ctypes.addressof(holder))
        return holder.s

    def check(self) -> None:
        """Verify the index's internal invariants; CorruptError if broken."""
        self._call(_capi.check)

    # ---- searching ----------------------------------------------------------

    def search(self, queries: VectorsLike, k: int = 10, *,
               ef: Optional[int] = None, nprobe: Optional[int] = None,
               refine: Optional[int] = None, threads: Optional[int] = None,
               filter: Optional[Callable[[int], Any]] = None,
               allowed: Optional[KeysLike] = None,
               allowed_bitmap: Any = None,
               selectivity: Optional[float] = None,
               return_found: bool = False) -> Tuple[Any, ...]:
        """The k nearest stored vectors to each query.

        queries: one vector (dim values) or a batch ((nq, dim) array or
        list of vectors). Returns (keys, distances), smaller distance =
        closer, nearest first:
          - one query: 1-D arrays holding only the results found (fewer
            than k when the index holds fewer admissible vectors);
          - a batch with NumPy: (nq, k) arrays; where a query found fewer
            than k, the row is padded with distance inf and key 2**64-1
            (MISSING_KEY). That key is also a valid key, so test the
            distance (numpy.isinf), or pass return_found=True;
          - a batch without NumPy: lists of per-query lists, unpadded.
        return_found=True appends the number of results of each query (an
        int for one query).
        ef (HNSW breadth), nprobe (IVF-PQ lists), refine (IVF-PQ re-rank
        factor) and threads (batch workers) override the index defaults.
        filter: callable(key) -> bool; only keys it admits are returned.
        It must not use this index. If it raises, the search still
        completes (the exception makes it reject keys from then on) and
        the exception is re-raised afterwards. A batch with a filter runs
        on the calling thread unless threads is given.
        selectivity: roughly what fraction of the stored keys filter
        admits, in (0, 1], if known; it saves the library sampling the
        filter to choose how to search. Only with filter.
        allowed: the keys that may be returned, when they are known up
        front: a set, list or other iterable of ints, or an integer NumPy
        array (a uint64 one is passed in place: do not change it during
        the call). Duplicates and keys not in the index are fine; an empty
        collection admits nothing. No Python call per candidate, and the
        library can pick its strategy from the set's size. A small set
        is fastest as a sorted array of distinct keys (np.unique), which
        the library scans as given instead of gathering it per call.
        allowed_bitmap: the same as flags indexed by key: a NumPy bool
        array (key i admitted when i < len and flag i is set), or a uint64
        array of packed words (key x at bit x % 64 of word x // 64, used in
        place). Without NumPy, a sequence of bools.
        filter, allowed and allowed_bitmap combine: a key is returned only
        when every one given admits it; allowed sets apply to every query
        of a batch. A library too old to honour allowed sets raises
        NotSupportedError rather than ignore them.
        """
        k = _uint(k, "k", _SIZE_MAX)
        errors: List[BaseException] = []
        holder, owners = self._search_opts(ef, nprobe, refine, threads,
                                           filter, allowed, allowed_bitmap,
                                           selectivity, errors)

        if np is None and not hasattr(queries, "__getitem__"):
            queries = list(queries)   # an iterator: inspected twice below
        dim = self._dim
        one = _is_one_query(queries, dim)
        m = _matrix(queries, dim, rows=1 if one else None,
                    what="query" if one else "queries")
        nq = m.rows
        keys, kaddr = _key_out(nq * k)
        dists, daddr = _float_out(nq * k)
        h = self._acquire()
        try:
            if one:
                found = ctypes.c_size_t()
                rc = _capi.search(h, m.addr, k, ctypes.addressof(holder),
                                  kaddr, daddr, ctypes.byref(found))
            else:
                found_buf = (ctypes.c_size_t * max(nq, 1))()
                rc = _capi.search_batch(h, nq, m.addr, k,
                                        ctypes.addressof(holder), kaddr,
                                        daddr, found_buf)
            if rc != _capi.OK:
                raise error_for(rc, h)
        finally:
            self._release()
        del owners
        if errors:
            raise errors[0]

        out: Tuple[Any, ...]
        if one:
            n = found.value
            if np is not None:
                out = (keys[:n], dists[:n])
            else:
                out = ([int(x) for x in keys[:n]],
                       [float(x) for x in dists[:n]])
            return out + (n,) if return_found else out
        counts = list(found_buf[:nq])
        if np is not None:
            out = (keys.reshape(nq, k), dists.reshape(nq, k))
            if return_found:
                out += (np.array(counts, dtype=np.int64),)
            return out
        kl = [[int(x) for x in keys[i * k:i * k + counts[i]]]
              for i in range(nq)]
        dl = [[float(x) for x in dists[i * k:i * k + counts[i]]]
              for i in range(nq)]
        return (kl, dl, counts) if return_found else (kl, dl)

    def _search_opts(self, ef, nprobe, refine, threads, filter, allowed,
                     allowed_bitmap, selectivity, errors):
        """The vecidx_search_opts of a call, in its padded holder, and the
        arrays it points to, which the caller keeps until the call has
        returned. An exception the filter raises is appended to errors."""
        holder = _capi.padded(_capi.SearchOpts)
        opts = holder.s
        if ef is not None:
            opts.ef = _uint(ef, "ef", _U32_MAX)
        if nprobe is not None:
            opts.nprobe = _uint(nprobe, "nprobe", _U32_MAX)
        if refine is not None:
            opts.refine = _uint(refine, "refine", _U32_MAX)
        if threads is not None:
            opts.threads = _uint(threads, "threads", _U32_MAX)
        if filter is not None:
            # Assigning the thunk to the struct keeps it alive with holder.
            opts.filter = self._filter_callback(filter, errors)
            if threads is None:
                # Each call of a Python callback from a library worker
                # thread sets up a fresh Python thread state and fights
                # for the GIL: measured 30-70 times slower than running
                # the whole batch on this thread, which the GIL would
                # serialise anyway.
                opts.threads = 1
        if selectivity is not None:
            if filter is None:
                raise InvalidArgumentError(
                    "selectivity estimates what filter admits; it needs a "
                    "filter")
            opts.filter_selectivity = _selectivity_arg(selectivity)
        allow_owner = bitmap_owner = None
        if allowed is not None:
            opts.allow_keys, opts.allow_count, allow_owner = \
                _allowed_arg(allowed)
        if allowed_bitmap is not None:
            opts.allow_bitmap, opts.allow_bits, bitmap_owner = \
                _bitmap_arg(allowed_bitmap)
        if (allowed is not None or allowed_bitmap is not None) and \
                not _allowed_sets_supported():
            raise NotSupportedError(
                "the loaded library (%s) ignores allowed sets "
                "(vecidx_search_opts.allow_keys, allow_bitmap); it is older "
                "than this binding" % _capi.library_path)
        return holder, (allow_owner, bitmap_owner)

    # ---- measuring and tuning recall ----------------------------------------

    def estimate_recall(self, k: int = 10, queries: VectorsLike = None,
                        truth: Any = None, n: int = 0, *,
                        ef: Optional[int] = None,
                        nprobe: Optional[int] = None,
                        refine: Optional[int] = None,
                        filter: Optional[Callable[[int], Any]] = None,
                        allowed: Optional[KeysLike] = None,
                        allowed_bitmap: Any = None,
                        selectivity: Optional[float] = None
                        ) -> Dict[str, Any]:
        """Recall@k of the search, measured (vecidx_estimate_recall).

        Returns a dict: recall (the mean share of each query's exact k
        nearest that the search returned), low and high (its 95 %
        confidence interval), queries (those that counted: with an
        admissible vector), k, search_us (mean microseconds per search)
        and vs_codes (True when the exact answers came from a scan of
        codes: see truth).
        queries: the queries, an (nq, dim) array (or one vector); None
        lets the library make n sample queries (0: 200) by moving stored
        vectors a little in random directions.
        truth: the exact answers to queries, keys nearest first, an (nq,
        k) integer array (more columns are cut to k; MISSING_KEY, or -1
        in a signed array, ends a query's list early). None: the library
        finds them by scanning every vector it holds -- for an index that
        keeps only codes (IVF-PQ, compressed storage without
        keep_vectors), the codes, so the recall then says nothing of what
        the codes lose against the vectors they stand for (vs_codes).
        n: with queries, use the first n (0: all).
        ef, nprobe, refine, filter, allowed, allowed_bitmap, selectivity:
        the search measured, as in search() (the index defaults when not
        given). A filter limits the exact answers of the scan too; truth
        is taken as given.
        """
        fn = _need(_capi.estimate_recall, "vecidx_estimate_recall")
        errors: List[BaseException] = []
        holder, owners = self._search_opts(ef, nprobe, refine, None, filter,
                                           allowed, allowed_bitmap,
                                           selectivity, errors)
        k, nq, qaddr, taddr, data = self._measure_args(k, queries, truth, n)
        out = _capi.padded(_capi.Recall)
        try:
            self._call(fn, k, nq, qaddr, taddr, ctypes.addressof(holder),
                       ctypes.addressof(out))
        except VecidxError:
            # a filter that raised rejected every key, which the library
            # then reports as nothing to measure: the filter's error first
            if errors:
                raise errors[0]
            raise
        del owners, data
        if errors:
            raise errors[0]
        return _recall_dict(out.s)

    def tune(self, target: float, k: int = 10, queries: VectorsLike = None,
             truth: Any = None, n: int = 0) -> Dict[str, Any]:
        """Make the cheapest search setting whose recall@k reaches target
        (in (0, 1]) the index default (vecidx_tune).

        Tries HNSW ef 10, 16, 24, 32, 48, 64, ... 2048, IVF-PQ nprobe 1, 2,
        4, ... nlist, and with kept float32 vectors the refine factors 1,
        2, 4, ... 32 for each, smallest first, measuring each as
        estimate_recall does on the same queries (queries, truth and n as
        there). A file-backed index is checkpointed to store the setting.
        Returns a dict: reached (bool), ef, nprobe, refine (the setting
        chosen, or the best tried when not reached; 0 where one does not
        apply), steps (settings measured), recall (the estimate_recall
        dict at that setting) and advice (when not reached, what would
        reach the target; when reached against codes only, recall
        vs_codes, that caveat; else ""). A target out of reach is not an
        error: reached is False and nothing is changed.
        StateError for a read-only index or an untrained IVF-PQ one.
        """
        fn = _need(_capi.tune, "vecidx_tune")
        if isinstance(target, bool) or not isinstance(target, numbers.Real):
            raise InvalidArgumentError(
                "target must be a number in (0, 1], not %s"
                % type(target).__name__)
        k, nq, qaddr, taddr, data = self._measure_args(k, queries, truth, n)
        out = _capi.padded(_capi.Tuning)
        self._call(fn, float(target), k, nq, qaddr, taddr,
                   ctypes.addressof(out))
        del data
        t = out.s
        return {"reached": bool(t.reached), "ef": t.ef, "nprobe": t.nprobe,
                "refine": t.refine, "steps": t.steps,
                "recall": _recall_dict(t.recall),
                "advice": (t.advice or b"").decode("utf-8", "replace")}

    def _measure_args(self, k, queries, truth, n):
        """(k, nq, queries address, truth address, owners) for
        vecidx_estimate_recall and vecidx_tune."""
        k = _uint(k, "k", _SIZE_MAX)
        n = _uint(n, "n", _SIZE_MAX)
        if queries is None:
            if truth is not None:
                raise InvalidArgumentError(
                    "truth holds the exact answers to queries: give the "
                    "queries too")
            return k, n, None, None, None
        m = _matrix(queries, self._dim, what="queries")
        if m.rows == 0:
            raise InvalidArgumentError("queries holds no vector")
        if n > m.rows:
            raise InvalidArgumentError("n %d is more than the %d queries"
                                       % (n, m.rows))
        nq = n or m.rows
        if truth is None:
            return k, nq, m.addr, None, m
        taddr, towner = _truth_arg(truth, m.rows, nq, k)
        return k, nq, m.addr, taddr, (m, towner)

    def _filter_callback(self, fn, errors):
        if not callable(fn):
            raise TypeError("filter must be callable(key) -> bool")
        token = self._token

        def admit(key, _ctx):
            if errors:
                return 0
            stack = _callback_stack()
            stack.append(token)
            try:
                return 1 if fn(key) else 0
            except BaseException as e:  # re-raised once the search returns
                errors.append(e)
                return 0
            finally:
                stack.pop()

        return _capi.FILTER_FN(admit)


def _recall_dict(r):
    out = {name: getattr(r, name) for name, _ in _capi.Recall._fields_}
    out["vs_codes"] = bool(r.vs_codes)
    return out


def _truth_arg(truth, rows, nq, k):
    """(address, owner) of the first nq rows and k columns of truth, an
    array or list of rows of keys, one row per query, as uint64. -1 in a
    signed array (FAISS's "no result") becomes MISSING_KEY."""
    if np is not None:
        arr = truth if isinstance(truth, np.ndarray) else np.asarray(truth)
        if arr.ndim == 1 and rows == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[0] != rows:
            raise InvalidArgumentError(
                "truth must have a row per query (%d), got shape %s"
                % (rows, arr.shape))
        if arr.shape[1] < k:
            raise InvalidArgumentError(
                "truth has %d keys per query, fewer than k %d (pad short "
                "lists with MISSING_KEY)" % (arr.shape[1], k))
        arr = arr[:nq, :k]
        if arr.dtype.kind == "i":
            if arr.size and arr.min() < -1:
                raise InvalidArgumentError(
                    "truth key %d is out of range 0..%d"
                    % (int(arr.min()), _capi.UINT64_MAX))
            missing = arr == -1
            out = arr.astype(np.uint64)
            out[missing] = np.uint64(_capi.UINT64_MAX)
        elif arr.dtype.kind == "u":
            out = np.ascontiguousarray(arr, dtype=np.uint64)
        elif arr.dtype.kind == "O":
            out = np.array([[_truth_key(v) for v in row] for row in arr],
                           dtype=np.uint64).reshape(arr.shape)
        else:
            raise InvalidArgumentError(
                "truth must hold integer keys, got an array of %s"
                % arr.dtype)
        out = np.ascontiguousarray(out)
        if not out.flags.aligned:
            out = out.copy()
        return out.ctypes.data, out
    seq = list(truth)
    if rows == 1 and seq and not hasattr(seq[0], "__len__"):
        seq = [seq]
    if len(seq) != rows:
        raise InvalidArgumentError("truth must have a row per query (%d), "
                                   "got %d rows" % (rows, len(seq)))
    flat = []
    for row in seq[:nq]:
        row = list(row)
        if len(row) < k:
            raise InvalidArgumentError(
                "truth has %d keys for a query, fewer than k %d (pad short "
                "lists with MISSING_KEY)" % (len(row), k))
        flat.extend(_truth_key(v) for v in row[:k])
    buf = (ctypes.c_uint64 * len(flat))(*flat)
    return ctypes.addressof(buf), buf


def _truth_key(v):
    if isinstance(v, bool):
        raise InvalidArgumentError("truth must hold integer keys, not bool")
    if v == -1:
        return _capi.UINT64_MAX
    return _uint(v, "truth key", _capi.UINT64_MAX)


def _is_one_query(obj, dim):
    """True when obj is a single query vector rather than a batch."""
    if np is not None:
        shape = np.shape(obj) if not isinstance(obj, np.ndarray) \
            else obj.shape
        return len(shape) == 1
    try:
        return memoryview(obj).ndim == 1
    except TypeError:
        pass
    seq = obj if hasattr(obj, "__getitem__") else list(obj)
    return len(seq) == 0 or isinstance(seq[0], (int, float))

