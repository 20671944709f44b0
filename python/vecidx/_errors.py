"""Exceptions raised by the binding, one class per vecidx result code."""

from typing import Optional

from . import _capi


class VecidxError(Exception):
    """A failed vecidx call.

    Attributes: ``code`` (the negative VECIDX_E* value), ``name`` (the
    library's short description of the code, vecidx_strerror) and
    ``message`` (the detail from vecidx_errmsg, naming the offending value;
    may be empty). Subclasses also derive from the closest built-in
    exception, so ``except KeyError`` catches a missing key.
    """

    code: Optional[int] = None

    def __init__(self, message: str = "", code: Optional[int] = None) -> None:
        if code is not None:
            self.code = code
        self.name = _strerror(self.code)
        self.message = message
        super().__init__(message or self.name)

    def __str__(self) -> str:
        if self.message:
            return "%s: %s" % (self.name, self.message)
        return self.name

    def __reduce__(self):
        return (type(self), (self.message, self.code))


class InvalidArgumentError(VecidxError, ValueError):
    code = _capi.EINVAL


class OutOfMemoryError(VecidxError, MemoryError):
    code = _capi.ENOMEM


class IOFailedError(VecidxError, OSError):
    code = _capi.EIO


class CorruptError(VecidxError):
    code = _capi.ECORRUPT


class NotFoundError(VecidxError, KeyError):
    code = _capi.ENOTFOUND


class ExistsError(VecidxError, ValueError):
    code = _capi.EEXIST


class DimensionError(VecidxError, ValueError):
    code = _capi.EDIM


class StateError(VecidxError):
    code = _capi.ESTATE


class VersionError(VecidxError):
    code = _capi.EVERSION


class NotSupportedError(VecidxError, NotImplementedError):
    code = _capi.ENOTSUP


class FullError(VecidxError):
    code = _capi.EFULL


_BY_CODE = {cls.code: cls for cls in (
    InvalidArgumentError, OutOfMemoryError, IOFailedError, CorruptError,
    NotFoundError, ExistsError, DimensionError, StateError, VersionError,
    NotSupportedError, FullError)}


def _strerror(code):
    if code is None:
        return "vecidx error"
    return _capi.strerror(code).decode("utf-8", "replace")


def error_for(code, handle=None):
    """The exception for result code `code` of the call just made.

    Must be called on the thread that made the call, before any other
    vecidx call there: the library keeps the message per thread.
    """
    raw = _capi.errmsg(handle)
    message = raw.decode("utf-8", "replace") if raw else ""
    cls = _BY_CODE.get(code)
    if cls is None:
        return VecidxError(message, code)
    return cls(message)
