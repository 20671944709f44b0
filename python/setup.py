"""Builds the vecidx Python package with the C library inside it.

    pip install --no-build-isolation ./python      # from the repository root

The binding is pure ctypes, so what gets compiled is not a CPython extension
module but the plain shared library libvecidx.so (from ../vecidx.c), put in
the package directory where vecidx/_capi.py looks first. When
../sqlite/vecidx_sqlite.c exists and the compiler finds sqlite3ext.h, the
SQLite extension is built too (vecidx/_sqlite/vecidx.so, entry point
sqlite3_vecidx_init); vecidx.sqlite_extension_path() returns its path.
VECIDX_SQLITE=1 makes a failure to build it an error, VECIDX_SQLITE=0 skips
it; unset, it is built when it can be and skipped with a warning otherwise.

The version is vecidx.h's (VECIDX_VERSION_MAJOR/MINOR/PATCH), as for the
Makefile and meson.build. Metadata is in pyproject.toml.

An sdist (python -m build --sdist --no-isolation python) carries copies of
the C sources in csrc/, so it builds away from the repository too.
"""

import os
import re
import shutil
import sys
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools.command.sdist import sdist as _sdist

try:
    from setuptools.errors import CCompilerError, CompileError
except ImportError:  # setuptools < 59
    from distutils.errors import CCompilerError, CompileError

HERE = os.path.dirname(os.path.abspath(__file__))
SQLITE_SRC = os.path.join("sqlite", "vecidx_sqlite.c")


def _find_source_root():
    # An sdist has its own copies in csrc/; a checkout has the sources one
    # directory up (pip >= 21.3 builds in place, so ../ is the checkout).
    for d in (os.path.join(HERE, "csrc"), os.path.dirname(HERE)):
        if all(os.path.isfile(os.path.join(d, f))
               for f in ("vecidx.c", "vecidx.h")):
            return d
    sys.exit("vecidx: cannot find vecidx.c and vecidx.h in %s or %s; build "
             "from the repository (pip >= 21.3 builds in place) or from an "
             "sdist" % (os.path.join(HERE, "csrc"), os.path.dirname(HERE)))


SRC = _find_source_root()


def _version():
    with open(os.path.join(SRC, "vecidx.h")) as f:
        text = f.read()
    parts = []
    for field in ("MAJOR", "MINOR", "PATCH"):
        m = re.search(r"^\s*#\s*define\s+VECIDX_VERSION_%s\s+(\d+)\b"
                      % field, text, re.M)
        if not m:
            sys.exit("vecidx: no VECIDX_VERSION_%s in vecidx.h" % field)
        parts.append(m.group(1))
    return ".".join(parts)


VERSION = _version()


def _shlib(name):
    return name + (".dylib" if sys.platform == "darwin" else ".so")


class CLibrary(Extension):
    """A plain shared library (no Python API) that the package loads with
    ctypes. filename is its name inside the package directory."""

    def __init__(self, name, sources, filename, sqlite=False, **kw):
        Extension.__init__(self, name, sources, **kw)
        self.filename = filename
        self.sqlite = sqlite


# Flags as the Makefile's library build, less the warnings: -O3, and never
# -march, since the library picks its SIMD kernels at run time. -g0 keeps
# the installed library small (Python's own CFLAGS carry -g).
COMPILE_ARGS = ["-std=c11", "-O3", "-g0", "-pthread"]
LINK_ARGS = ["-pthread"]
# The same for both libraries, so that vecidx.c is compiled once.
INCLUDE_DIRS = [SRC, os.path.join(SRC, "sqlite")]

LIBRARY = CLibrary(
    "vecidx.libvecidx", [os.path.join(SRC, "vecidx.c")],
    filename=_shlib("libvecidx"), include_dirs=INCLUDE_DIRS,
    depends=[os.path.join(SRC, "vecidx.h")], libraries=["m"],
    extra_compile_args=COMPILE_ARGS, extra_link_args=LINK_ARGS)


def _sqlite_sources():
    # "Compiled together with vecidx.c", unless the file includes it.
    src = os.path.join(SRC, SQLITE_SRC)
    with open(src) as f:
        includes_core = re.search(r'^\s*#\s*include\s+"(\.\./)?vecidx\.c"',
                                  f.read(), re.M)
    return [src] if includes_core else [src, os.path.join(SRC, "vecidx.c")]


# The file name makes SQLite's default entry point sqlite3_vecidx_init
# (it takes the letters of the name before the first dot), so that
# conn.load_extension(path) needs no entry point argument.
SQLITE_EXT = CLibrary(
    "vecidx._sqlite.vecidx",
    _sqlite_sources() if os.path.isfile(os.path.join(SRC, SQLITE_SRC)) else [],
    filename=_shlib("vecidx"), sqlite=True, optional=True,
    include_dirs=INCLUDE_DIRS,
    depends=[os.path.join(SRC, "vecidx.h")], libraries=["m"],
    extra_compile_args=COMPILE_ARGS, extra_link_args=LINK_ARGS)


class build_ext(_build_ext):
    """Builds CLibrary extensions as plain shared libraries named
    CLibrary.filename, compiling each source once (vecidx.c goes into both
    the library and the SQLite extension), and writes vecidx/_build_info.py
    (the version, and whether the SQLite extension was built)."""

    def get_ext_filename(self, fullname):
        ext = getattr(self, "ext_map", {}).get(fullname)
        if isinstance(ext, CLibrary):
            return os.path.join(*fullname.split(".")[:-1] + [ext.filename])
        return _build_ext.get_ext_filename(self, fullname)

    def get_source_files(self):
        # The C sources live outside this directory; sdist copies them.
        return [s for ext in self.extensions if not isinstance(ext, CLibrary)
                for s in ext.sources]

    def run(self):
        self._objects = {}
        self._sqlite_status = None
        _build_ext.run(self)
        self._write_build_info()

    def build_extension(self, ext):
        if not isinstance(ext, CLibrary):
            return _build_ext.build_extension(self, ext)
        out = self.get_ext_fullpath(ext.name)
        if ext.sqlite:
            reason = self._build_sqlite(ext, out)
            self._sqlite_status = reason
            return
        self._link(ext, out)

    def _build_sqlite(self, ext, out):
        """Builds the SQLite extension; returns None, or why it was not."""
        mode = os.environ.get("VECIDX_SQLITE", "auto").strip().lower()
        if mode not in ("auto", "0", "1"):
            sys.exit("vecidx: VECIDX_SQLITE must be 0, 1 or unset, not %r"
                     % mode)
        # A build directory reused from an earlier build may hold an old
        # copy: no extension must mean no file.
        if os.path.exists(out):
            os.remove(out)
        if mode == "0":
            return "VECIDX_SQLITE=0"
        if not ext.sources:
            reason = "%s is not in this source tree" % SQLITE_SRC
        elif not self._have_header("sqlite3ext.h"):
            reason = ("the C compiler finds no sqlite3ext.h (on Debian, "
                      "install libsqlite3-dev)")
        else:
            try:
                self._link(ext, out)
                return None
            except (CCompilerError, CompileError) as e:
                reason = "compiling it failed: %s" % e
        if mode == "1":
            sys.exit("vecidx: VECIDX_SQLITE=1 but the SQLite extension "
                     "cannot be built: " + reason)
        print("vecidx: warning: not building the SQLite extension: " + reason,
              file=sys.stderr)
        return reason

    def _have_header(self, header):
        probe = os.path.join(self.build_temp, "probe_" + header + ".c")
        os.makedirs(self.build_temp, exist_ok=True)
        with open(probe, "w") as f:
            f.write("#include <%s>\nint vecidx_probe;\n" % header)
        try:
            self.compiler.compile([probe], output_dir=self.build_temp)
            return True
        except (CCompilerError, CompileError):
            return False

    def _link(self, ext, out):
        objects = []
        for src in ext.sources:
            key = (os.path.abspath(src), tuple(ext.include_dirs),
                   tuple(ext.extra_compile_args))
            if key not in self._objects:
                self._objects[key] = self.compiler.compile(
                    [src], output_dir=self.build_temp,
                    include_dirs=ext.include_dirs, depends=ext.depends,
                    extra_postargs=ext.extra_compile_args)
            objects += self._objects[key]
        os.makedirs(os.path.dirname(out), exist_ok=True)
        self.compiler.link_shared_object(
            objects, out, libraries=ext.libraries,
            extra_postargs=ext.extra_link_args, build_temp=self.build_temp,
            target_lang="c")

    def _build_info_path(self):
        return os.path.join(os.path.dirname(
            self.get_ext_fullpath(LIBRARY.name)), "_build_info.py")

    def _write_build_info(self):
        path = self._build_info_path()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent('''\
                """Written by setup.py when it built this copy of vecidx."""

                version = %r
                # Why the SQLite extension was not built, or None if it was.
                sqlite_skipped = %r
                ''') % (VERSION, self._sqlite_status))

    def get_outputs(self):
        return _build_ext.get_outputs(self) + [self._build_info_path()]


try:
    from wheel.bdist_wheel import bdist_wheel as _bdist_wheel
except ImportError:
    _bdist_wheel = None
else:
    class bdist_wheel(_bdist_wheel):
        """Tags the wheel py3-none-PLATFORM: the library is loaded with
        ctypes and does not depend on the Python version or its ABI."""

        def get_tag(self):
            return ("py3", "none") + tuple(_bdist_wheel.get_tag(self)[2:])


class sdist(_sdist):
    """Puts copies of the C sources (and the licence) into csrc/."""

    def make_release_tree(self, base_dir, files):
        _sdist.make_release_tree(self, base_dir, files)
        for rel in ("vecidx.c", "vecidx.h", "LICENSE", SQLITE_SRC):
            src = os.path.join(SRC, rel)
            if os.path.isfile(src):
                dst = os.path.join(base_dir, "csrc", rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(src, dst)


# The licence beside pyproject.toml, where setuptools looks for it
# (license_files' default patterns) to put it in the wheel's metadata and
# the sdist; it lives at the repository root (or in an sdist's csrc/).
# A copy made here, ignored by git.
_LICENSE = os.path.join(SRC, "LICENSE")
if os.path.isfile(_LICENSE) and not os.path.isfile(
        os.path.join(HERE, "LICENSE")):
    shutil.copy2(_LICENSE, os.path.join(HERE, "LICENSE"))

setup(
    version=VERSION,
    packages=["vecidx"],
    package_data={"vecidx": ["py.typed"]},
    ext_modules=[LIBRARY, SQLITE_EXT],
    cmdclass=dict({"build_ext": build_ext, "sdist": sdist},
                  **({"bdist_wheel": bdist_wheel} if _bdist_wheel else {})),
    zip_safe=False,
)
