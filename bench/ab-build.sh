#!/bin/sh
# bench/ab-build.sh -- builds bench/vecidx-ab: two versions of vecidx.c in
# one program (see bench/README.md, "Old-vs-new A/B"). Run from the top of
# the repository, as `make bench-ab OLD=REV [NEW=REV]` does:
#
#   bench/ab-build.sh OLD [NEW]
#
# OLD is a git revision; NEW is another, or empty for the working tree's
# vecidx.c and vecidx.h (committed or not). For each side the script puts
# that version's vecidx.c and vecidx.h into bench/ab-build/SIDE/, compiles
# them and bench/ab-shim.c (against that side's vecidx.h, -DAB_SIDE=SIDE)
# with the same flags, links the two objects into one (ld -r) and hides
# every global symbol but the shim's ab_SIDE_* functions (objcopy -G), so
# the old and the new vecidx_* do not clash. Then bench/vecidx-ab.c is
# linked with both.
#
# Environment: CC (cc), CFLAGS (the flags of both library builds; default
# the Makefile's, without -Werror, so an old revision that a newer
# compiler warns about still builds), PROG_CFLAGS (flags of vecidx-ab.c),
# LDLIBS (-pthread -lm), LD (ld), OBJCOPY (objcopy).
set -eu

OLD=${1:?usage: bench/ab-build.sh OLD-REV [NEW-REV]}
NEW=${2:-}
CC=${CC:-cc}
LD=${LD:-ld}
OBJCOPY=${OBJCOPY:-objcopy}
CFLAGS=${CFLAGS:--std=c11 -O3 -Wall -Wextra -Wpedantic}
PROG_CFLAGS=${PROG_CFLAGS:-$CFLAGS}
LDLIBS=${LDLIBS:--pthread -lm}
DIR=bench/ab-build
SYMS="build search close save open memory errmsg version simd rev"

test -f bench/ab-shim.c || { echo "$0: run from the repository's top" >&2; exit 1; }
rm -rf "$DIR"
mkdir -p "$DIR/old" "$DIR/new"

# side REV|"" -> the label printed as "rev" (short hash, "+dirty" when
# the working tree's vecidx.c or vecidx.h differs from HEAD)
label() {
    if [ -n "$1" ]; then
        git rev-parse --short "$1^{commit}"
    else
        h=$(git rev-parse --short HEAD)
        if git diff --quiet HEAD -- vecidx.c vecidx.h; then
            echo "worktree@$h"
        else
            echo "worktree@$h+dirty"
        fi
    fi
}

fetch() { # side rev
    if [ -n "$2" ]; then
        git show "$2:vecidx.c" > "$DIR/$1/vecidx.c"
        git show "$2:vecidx.h" > "$DIR/$1/vecidx.h"
    else
        cp vecidx.c vecidx.h "$DIR/$1/"
    fi
}

side() { # side rev
    d=$DIR/$1
    fetch "$1" "$2"
    rev=$(label "$2")
    echo "ab-build: $1 = $rev"
    # shellcheck disable=SC2086
    $CC $CFLAGS -fPIC -pthread -c "$d/vecidx.c" -o "$d/vecidx.o"
    # -I$d before anything else: ab-shim.c's "vecidx.h" is this side's
    # shellcheck disable=SC2086
    $CC $CFLAGS -fPIC -pthread -I"$d" -DAB_SIDE="$1" -DAB_REV="\"$rev\"" \
        -c bench/ab-shim.c -o "$d/shim.o"
    $LD -r -o "$d/side.o" "$d/vecidx.o" "$d/shim.o"
    keep=""
    for s in $SYMS; do keep="$keep -G ab_$1_$s"; done
    # shellcheck disable=SC2086
    $OBJCOPY $keep "$d/side.o"
    # nothing global may be defined but the shim's functions
    extra=$(nm -g --defined-only "$d/side.o" | awk '{print $3}' |
        grep -v "^ab_$1_" || true)
    if [ -n "$extra" ]; then
        echo "$0: $1 still exports: $extra" >&2
        exit 1
    fi
}

side old "$OLD"
side new "$NEW"
# shellcheck disable=SC2086
$CC $PROG_CFLAGS -Ibench -o bench/vecidx-ab bench/vecidx-ab.c \
    "$DIR/old/side.o" "$DIR/new/side.o" $LDLIBS
echo "ab-build: bench/vecidx-ab built"
