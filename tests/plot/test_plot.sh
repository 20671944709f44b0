#!/bin/sh
# Tests of bench/plot.py: sh tests/plot/test_plot.sh [PYTHON] (default
# /usr/bin/python3, Debian's, where python3-matplotlib installs). Run from
# the top of the tree. Input errors and the message for a missing
# matplotlib are checked always; the PNG only where PYTHON has matplotlib
# (otherwise those checks are reported as skipped, not failed). Ends with
# "N passed, N failed, N skipped" and exits non-zero on a failure. Not part
# of make test: matplotlib is optional.
set -u

PY=${1:-/usr/bin/python3}
TOP=$(pwd)
PLOT=$TOP/bench/plot.py
FIX=$TOP/tests/plot/fixture.jsonl
[ -f "$PLOT" ] && [ -f "$FIX" ] || {
    echo "test_plot: run from the top of the tree"
    exit 1
}
command -v "$PY" >/dev/null 2>&1 || {
    echo "test_plot: no $PY"
    exit 1
}

T=$(mktemp -d "${TMPDIR:-/tmp}/vecidx-plot.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT

passed=0
failed=0
skipped=0
ok() { passed=$((passed + 1)); }
bad() {
    failed=$((failed + 1))
    echo "FAIL: $*"
    sed 's/^/    /' "$T/err" 2>/dev/null
}

# run STATUS NAME ARGS...: bench/plot.py ARGS must exit with STATUS.
run() {
    want=$1
    name=$2
    shift 2
    "$PY" "$PLOT" "$@" >"$T/out" 2>"$T/err"
    got=$?
    if [ "$got" -eq "$want" ]; then ok; else bad "$name: exit $got, not $want"; fi
}

# has NAME TEXT: the last run's stderr contains TEXT.
has() {
    if grep -qF -- "$2" "$T/err"; then ok; else bad "$1: no '$2' on stderr"; fi
}

# png NAME FILE: FILE starts with the 8-byte PNG signature.
png() {
    sig=$(od -An -tx1 -N8 "$2" 2>/dev/null | tr -d ' \n')
    if [ "$sig" = 89504e470d0a1a0a ]; then ok; else bad "$1: $2 is no PNG ($sig)"; fi
}

# ---- input errors: found before matplotlib is needed -----------------------
printf '%s\n' "$(head -n 1 "$FIX")" '{"dataset":"x","lib":"vecidx",' >"$T/trunc.jsonl"
run 1 "truncated line" "$T/x.png" "$T/trunc.jsonl"
has "truncated line" "trunc.jsonl:2: not a JSON line"
[ ! -e "$T/x.png" ] && ok || bad "truncated line: a PNG was written"

printf '[1, 2, 3]\n' >"$T/array.jsonl"
run 1 "not an object" "$T/x.png" "$T/array.jsonl"
has "not an object" "array.jsonl:1: not a JSON object"

head -n 1 "$FIX" | sed 's/"qps":[0-9.]*/"qps":null/' >"$T/noqps.jsonl"
run 1 "null qps" "$T/x.png" "$T/noqps.jsonl"
has "null qps" 'noqps.jsonl:1: "qps" is null, not a number'

head -n 1 "$FIX" | sed 's/"recall_at_10":[0-9.]*/"recall_at_10":1.5/' >"$T/recall.jsonl"
run 1 "recall above 1" "$T/x.png" "$T/recall.jsonl"
has "recall above 1" "recall 1.5 outside [0, 1]"

tail -n 1 "$FIX" >"$T/scenario.jsonl"
run 1 "no sweep points" "$T/x.png" "$T/scenario.jsonl"
has "no sweep points" "no sweep points to plot"

run 1 "missing file" "$T/x.png" "$T/absent.jsonl"
has "missing file" "absent.jsonl: No such file or directory"

run 2 "not a .png" "$T/x.svg" "$FIX"
has "not a .png" "OUT must be a .png file"

run 2 "bad --where" --where index "$T/x.png" "$FIX"
has "bad --where" "--where takes KEY=VALUE"

# ---- no matplotlib: a clear message and status 3 -----------------------------
mkdir -p "$T/fake/matplotlib"
echo 'raise ImportError("no matplotlib here (test)")' >"$T/fake/matplotlib/__init__.py"
PYTHONPATH=$T/fake "$PY" "$PLOT" "$T/x.png" "$FIX" >"$T/out" 2>"$T/err"
got=$?
[ "$got" -eq 3 ] && ok || bad "no matplotlib: exit $got, not 3"
has "no matplotlib" "matplotlib is not available"
has "no matplotlib" "apt-get install python3-matplotlib"

# ---- the PNG, where matplotlib is ---------------------------------------------
if "$PY" -c 'import matplotlib' 2>/dev/null; then
    run 0 "plot" "$T/a.png" "$FIX"
    png "plot" "$T/a.png"
    has "plot" "3 curve(s), 7 point(s)"
    has "plot" "2 line(s) without a sweep point skipped"

    run 0 "logit, stdin, --where" --xscale logit --where index=hnsw \
        "$T/b.png" - <"$FIX"
    png "logit" "$T/b.png"
    has "logit" "2 curve(s), 6 point(s)"
    has "logit" "1 point(s) at recall 0 or 1 drawn"

    run 1 "unwritable PNG" "$T/absent-dir/c.png" "$FIX"
    has "unwritable PNG" "absent-dir/c.png"
else
    skipped=$((skipped + 10))
    echo "test_plot: $PY has no matplotlib: PNG checks skipped"
fi

echo "test_plot: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
