#!/usr/bin/env bash
# Installs the Python package as a user would, offline, and runs the Python
# tests against the installed copy rather than the checkout:
#
#   1. a fresh virtual environment in a temporary directory, made by
#      Debian's python3 with --system-site-packages so that its numpy,
#      pytest, setuptools and wheel are visible (no downloads);
#   2. pip install --no-index --no-build-isolation of a copy of python/
#      with the C sources beside it (so the checkout gets no build/ or
#      egg-info, and no build left over from an earlier run is reused);
#   3. python/tests, run from the temporary directory with
#      VECIDX_TEST_INSTALLED=1 (the tests then keep the checkout off
#      sys.path) and no VECIDX_LIBRARY/PYTHONPATH, after checking that
#      `import vecidx` resolves inside the venv and loads the library built
#      into the package.
#
# The SQLite extension is required (VECIDX_SQLITE=1) when
# sqlite/vecidx_sqlite.c exists and sqlite3ext.h is installed, and must
# then load into Python's sqlite3; otherwise it must be cleanly skipped.
#
# Usage: bash python/ci-install-test.sh      (from anywhere; PYTHON to
# override /usr/bin/python3). Exits non-zero on any failure.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-/usr/bin/python3}
START=$SECONDS

TMP=$(mktemp -d "${TMPDIR:-/tmp}/vecidx-pip.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

step() { printf '== %s  [%ds]\n' "$*" $((SECONDS - START)); }

"$PYTHON" -c 'import importlib.util as u, sys
sys.exit(not all(u.find_spec(m) for m in
                 ("venv", "ensurepip", "pip", "setuptools", "wheel", "numpy", "pytest")))' || {
    echo "$PYTHON lacks venv, pip, setuptools, wheel, numpy or pytest" \
         "(Debian: python3-venv python3-pip python3-setuptools" \
         "python3-wheel python3-numpy python3-pytest)" >&2
    exit 1
}

step "copy the sources to $TMP/src"
mkdir -p "$TMP/src"
cp -R "$REPO/python" "$TMP/src/python"
cp "$REPO/vecidx.c" "$REPO/vecidx.h" "$REPO/LICENSE" "$TMP/src/"
if [ -d "$REPO/sqlite" ]; then
    cp -R "$REPO/sqlite" "$TMP/src/sqlite"
fi
rm -rf "$TMP/src/python/build" "$TMP/src/python/dist" \
       "$TMP/src/python/csrc" "$TMP/src/python"/*.egg-info
find "$TMP/src/python" \( -name __pycache__ -o -name .pytest_cache \
     -o -name '*.so' -o -name '_build_info.py' \) -prune \
     -exec rm -rf {} +

# Whether the SQLite extension has to be built.
if [ -f "$REPO/sqlite/vecidx_sqlite.c" ] &&
   echo '#include <sqlite3ext.h>' | ${CC:-cc} -E -x c - >/dev/null 2>&1; then
    export VECIDX_SQLITE=1
    want_sqlite=1
else
    export VECIDX_SQLITE=auto
    want_sqlite=0
fi

step "fresh venv (--system-site-packages)"
"$PYTHON" -m venv --system-site-packages "$TMP/venv"
VPY="$TMP/venv/bin/python"

# Nothing of the caller's may point the install or the tests elsewhere.
unset VECIDX_LIBRARY VECIDX_SQLITE_EXTENSION PYTHONPATH PYTHONHOME \
      PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1

step "pip install --no-index --no-build-isolation ./python" \
     "(VECIDX_SQLITE=$VECIDX_SQLITE)"
"$VPY" -m pip install -q --no-index --no-build-isolation "$TMP/src/python"
rm -rf "$TMP/src"       # the tests must not find the sources either

cd "$TMP"
step "check the installed copy"
"$VPY" - "$TMP/venv" "$REPO" "$want_sqlite" <<'EOF'
import os, sys
venv, repo, want_sqlite = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
import vecidx
real = os.path.realpath
pkg = os.path.dirname(real(vecidx.__file__))
assert pkg.startswith(real(venv) + os.sep), (
    "vecidx imported from %s, not from the venv %s" % (pkg, venv))
assert not pkg.startswith(real(repo) + os.sep), pkg
assert real(vecidx.library_path) == os.path.join(pkg, "libvecidx.so"), (
    vecidx.library_path)
assert os.path.isfile(os.path.join(pkg, "py.typed"))
# the licence travels in the distribution's metadata
import importlib.metadata as md
lic = [f for f in md.distribution("vecidx").files or ()
       if os.path.basename(str(f)) == "LICENSE"]
assert lic, "no LICENSE in the installed distribution's files"
with open(os.path.join(repo, "LICENSE")) as a, open(lic[0].locate()) as b:
    assert a.read() == b.read(), "the installed LICENSE is not the project's"
try:
    ext = vecidx.sqlite_extension_path()
except FileNotFoundError as e:
    ext = None
    print("   no SQLite extension:", e)
if want_sqlite:
    assert ext is not None and real(ext).startswith(pkg + os.sep), ext
print("   vecidx %s from %s, library %s (%s), SQLite extension %s" % (
    vecidx.__version__, pkg, vecidx.library_version(), vecidx.simd(), ext))
EOF

step "python/tests against the installed copy"
VECIDX_TEST_INSTALLED=1 "$VPY" -m pytest -q -p no:cacheprovider \
    "$REPO/python/tests"

step "passed"
