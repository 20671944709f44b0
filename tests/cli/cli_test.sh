#!/bin/sh
# Tests of the command-line tool: sh tests/cli/cli_test.sh [PATH-TO-vecidx]
# (default tools/vecidx). Each check runs the program on files made here
# and looks at its exit status and output. Ends with "N passed, N failed"
# and exits non-zero on failure, like the other test programs.
set -u

VX=${1:-tools/vecidx}
case $VX in /*) ;; *) VX=$(pwd)/$VX ;; esac
[ -x "$VX" ] || { echo "cli_test: $VX is not an executable"; exit 1; }

T=$(mktemp -d "${TMPDIR:-/tmp}/vecidx-cli.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1

passed=0
failed=0
ok() { passed=$((passed + 1)); }
bad() {
    failed=$((failed + 1))
    echo "FAIL: $*"
    [ -s out ] && sed 's/^/  stdout: /' out | head -n 5
    [ -s err ] && sed 's/^/  stderr: /' err | head -n 5
}

# run WANT-STATUS ARGS...: run vecidx with stdout in ./out and stderr in
# ./err, and check the exit status.
run() {
    want=$1
    shift
    "$VX" "$@" >out 2>err
    got=$?
    if [ "$got" -eq "$want" ]; then ok; else bad "vecidx $* exited $got, want $want"; fi
}
# has FILE TEXT: FILE contains TEXT (fixed string).
has() {
    if grep -qF -- "$2" "$1"; then ok; else bad "$1 lacks '$2'"; fi
}
same() {
    if cmp -s "$1" "$2"; then ok; else bad "$1 and $2 differ"; fi
}
equal() {
    if [ "$1" = "$2" ]; then ok; else bad "$3: got '$1', want '$2'"; fi
}

# Clustered vectors as CSV: key,v1..vD with a header line. A Park-Miller
# generator, so every awk gives the same numbers.
gen_csv() { # ROWS DIM SEED FIRST-KEY KEY-STEP
    awk -v n="$1" -v d="$2" -v s="$3" -v k0="$4" -v step="$5" 'BEGIN {
        x = s
        printf "key"; for (j = 1; j <= d; j++) printf ",v%d", j; printf "\n"
        for (i = 0; i < n; i++) {
            c = i % 7
            printf "%d", k0 + i * step
            for (j = 1; j <= d; j++) {
                x = (x * 16807) % 2147483647
                printf ",%.6f", (c == j % 7) * 3 + x / 2147483647 - 0.5
            }
            printf "\n"
        }
    }'
}

# JSON lines are checked with python3's parser when there is one.
PY=
for p in /usr/bin/python3 python3; do
    if command -v "$p" >/dev/null 2>&1; then PY=$p; break; fi
done
json_valid() { # FILE: every line one JSON object
    [ -n "$PY" ] || { ok; return; }
    if "$PY" -c 'import json, sys
for line in open(sys.argv[1]):
    assert isinstance(json.loads(line), dict)' "$1" 2>/dev/null; then ok
    else bad "$1 is not JSON lines"; fi
}

# ---- help and command-line errors (status 2) ---------------------------
run 0 --help
has out "usage: vecidx COMMAND"
for c in create import query stats check checkpoint export recall tune; do
    run 0 "$c" --help
    has out "usage: vecidx $c"
done
run 0 --version
has out "vecidx "
run 2
run 2 frobnicate
run 2 create a.vx
has err "--dim is required"
run 2 create a.vx --dim 0
run 2 create a.vx --dim 4 --kind btree
run 2 create a.vx --dim 4 --metric hamming
run 2 create a.vx --dim 4 --bogus
has err "unknown option '--bogus'"
run 2 stats
run 2 stats a.vx extra
run 2 query a.vx
run 2 query a.vx --vector 1,2 --fvecs q.fvecs
run 2 query a.vx --vector 1,two
run 2 query a.vx --vector 1 -k 0
run 2 query a.vx --vector 1 -k
run 2 import a.vx data.txt
has err "use --format"
run 2 import a.vx data.csv --first-key 5
[ ! -e a.vx ] && ok || bad "a usage error created a.vx"

# ---- create ------------------------------------------------------------
D=8
run 0 create flat.vx --dim $D --kind flat --metric l2
has out "created flat.vx: flat index, l2 metric, dimension $D, f32 storage"
run 0 create hnsw.vx --dim $D --kind hnsw --metric l2 --M 12 \
    --ef-construction 100 --ef-search 80 --json
has out '{"command":"create","path":"hnsw.vx","kind":"hnsw","metric":"l2","dim":8,"storage":"f32","keep_vectors":false}'
json_valid out
run 1 create flat.vx --dim $D
has err "already exists"
run 1 create m.vx --dim 4 --M 1
has err "hnsw_m"
[ ! -e m.vx ] && ok || bad "a failed create left m.vx"

# ---- import CSV, query, stats, check -------------------------------------
# Keys 1000, 1003, ... so that they are not row numbers.
gen_csv 3000 $D 7 1000 3 >data.csv
run 0 import flat.vx data.csv
has out "imported 3000 vectors from data.csv"
[ ! -s err ] && ok || bad "import wrote to stderr that is not a terminal"
# One thread: a parallel HNSW build depends on thread timing, and its
# recall varies from run to run; one thread gives the same graph each time,
# so the recall checks below cannot fail by chance.
run 0 import hnsw.vx data.csv --threads 1 --json
has out '"command":"import"'
has out '"rows":3000,"count":3000'
json_valid out

# With stderr on a terminal (util-linux script provides one), a progress
# bar; without, as above, nothing.
if script --version 2>/dev/null | grep -q util-linux; then
    run 0 create tty.vx --dim $D --kind flat --metric l2
    script -qec "'$VX' import tty.vx data.csv" /dev/null >tty.out 2>&1 </dev/null
    has tty.out "importing [##############################] 100%  3000 rows"
    has tty.out "imported 3000 vectors"
fi

run 0 stats flat.vx --json
has out '"kind":"flat","metric":"l2","dim":8,"count":3000'
json_valid out
run 0 stats hnsw.vx
has out "vectors       3000"
run 0 check hnsw.vx
has out "hnsw.vx: ok, 3000 vectors"
run 0 check flat.vx --json
has out '{"command":"check","path":"flat.vx","ok":true,"count":3000}'

# The stored row of key 1000+3*5 is found at distance 0.
row5=$(sed -n 7p data.csv | cut -d, -f2-)
for ix in flat hnsw; do
    run 0 query $ix.vx --vector "$row5" -k 3
    equal "$(sed -n 2p out | awk '{ print $2, $3, $4 }')" "1 1015 0" \
        "$ix nearest to row 5"
    equal "$(wc -l <out)" 4 "$ix: header + k lines"
    run 0 query $ix.vx --vector "[$row5]" -k 5 --json
    equal "$(wc -l <out)" 5 "$ix: one JSON line per result"
    has out '{"query":0,"rank":1,"key":1015,"distance":0}'
    json_valid out
done
run 1 query flat.vx --vector 1,2,3
has err "the query has 3 values, the index dimension is 8"
run 1 query missing.vx --vector 1
has err "missing.vx"

# ---- export, and imports of what was exported ----------------------------
run 0 export flat.vx all.csv
has out "exported 3000 vectors to all.csv"
equal "$(head -n 1 all.csv)" "key,v1,v2,v3,v4,v5,v6,v7,v8" "CSV header"
equal "$(sed -n 2p all.csv | cut -d, -f1)" 1000 "first exported key"
equal "$(wc -l <all.csv)" 3001 "exported CSV lines"
# CSV round trip: same keys, same floats, same text.
run 0 create again.vx --dim $D --kind flat --metric l2
run 0 import again.vx all.csv
run 0 export again.vx again.csv
same all.csv again.csv
# Upserts replace HNSW nodes (the old ones stay as waypoints for a while);
# the export must still hold every key once, with its current vector.
head -n 301 data.csv >first300.csv
run 0 import hnsw.vx first300.csv --upsert
has out "hnsw.vx holds 3000"
run 0 check hnsw.vx
run 0 export hnsw.vx - --format csv
same all.csv out

run 0 export flat.vx all.fvecs
has err "keeps no keys"
equal "$(wc -c <all.fvecs | tr -d ' ')" $((3000 * (4 + 4 * D))) "fvecs size"
run 0 export flat.vx all.npy --json
has out '"rows":3000'
# .npy and .fvecs round trips: keys become row numbers (+ --first-key),
# vectors stay bit for bit.
cut -d, -f2- all.csv >values.txt
for f in all.fvecs all.npy; do
    rm -f rt.vx rt.vx-wal
    run 0 create rt.vx --dim $D --kind flat --metric l2
    run 0 import rt.vx $f --first-key 10
    run 0 export rt.vx rt.csv
    equal "$(sed -n 2p rt.csv | cut -d, -f1)" 10 "$f first key"
    equal "$(tail -n 1 rt.csv | cut -d, -f1)" 3009 "$f last key"
    cut -d, -f2- rt.csv >rt-values.txt
    same values.txt rt-values.txt
done
if [ -n "$PY" ] && "$PY" -c 'import numpy' 2>/dev/null; then
    "$PY" -c 'import numpy, sys
a = numpy.load("all.npy")
assert a.shape == (3000, 8) and a.dtype == numpy.float32
assert abs(float(a[0, 0]) - float(open("all.csv").readlines()[1].split(",")[1])) < 1e-6
' && ok || bad "numpy cannot read the exported .npy"
fi

# ---- every query of an .fvecs file -------------------------------------
# Each exported vector as a query: its own row must come first. Exact for
# the flat index; HNSW may miss a few.
run 0 query flat.vx --fvecs all.fvecs -k 1
equal "$(awk 'NR > 1 && $4 == 0' out | wc -l | tr -d ' ')" 3000 "flat self-hits"
run 0 query hnsw.vx --fvecs all.fvecs -k 1 --ef 64 --threads 2 --json
json_valid out
hits=$(grep -c '"distance":0}' out)
[ "$hits" -ge 2970 ] && ok || bad "hnsw found only $hits of 3000 stored vectors"
# Recall@10 of HNSW against the flat index, on fresh queries.
gen_csv 200 $D 99 0 1 >q.csv
run 0 create q.vx --dim $D --kind flat --metric l2
run 0 import q.vx q.csv
run 0 export q.vx q.fvecs
"$VX" query flat.vx --fvecs q.fvecs -k 10 | awk 'NR > 1 { print $1, $3 }' |
    sort >truth.txt
"$VX" query hnsw.vx --fvecs q.fvecs -k 10 --ef 100 |
    awk 'NR > 1 { print $1, $3 }' | sort >approx.txt
equal "$(wc -l <truth.txt | tr -d ' ')" 2000 "flat results"
common=$(comm -12 truth.txt approx.txt | wc -l)
[ "$common" -ge 1900 ] && ok || bad "hnsw recall@10 $common/2000 < 0.95"

# ---- queries restricted to listed keys (--allow) ----------------------------
# Keys 1000 + 3i are stored; the list names four of them, keys the index
# does not hold, a duplicate, comments and blank lines.
cat >allow.txt <<'END'
# products in stock
1000
  1015   # row 5, with spaces around
1300

1450
1015
999
7
18446744073709551615
END
# With k above the number of listed stored keys, every one of them comes
# back, row 5 first at distance 0, and no other key.
for ix in flat hnsw; do
    run 0 query $ix.vx --vector "$row5" -k 10 --allow allow.txt
    equal "$(awk 'NR > 1 { print $3 }' out | sort -n | tr '\n' ' ')" \
        "1000 1015 1300 1450 " "$ix --allow results"
    equal "$(sed -n 2p out | awk '{ print $3, $4 }')" "1015 0" \
        "$ix --allow nearest"
done
# Every query of a file, allowed half the keys: for the flat index, each
# query's results are its first 5 unrestricted results among those keys.
awk -F, 'NR > 1 && NR % 2 == 0 { print $1 }' data.csv >even.txt
run 0 query flat.vx --fvecs q.fvecs -k 5 --allow even.txt --json
json_valid out
equal "$(grep -c '"rank":5' out)" 200 "--allow: 5 results for each query"
sed 's/.*"key":\([0-9]*\).*/\1/' out | sort -u >allow-keys.txt
equal "$(sort -u even.txt | comm -13 - allow-keys.txt | wc -l | tr -d ' ')" \
    0 "--allow: keys not in the list"
"$VX" query flat.vx --fvecs q.fvecs -k 1500 |
    awk 'NR == FNR { want[$1] = 1; next }
         FNR > 1 && ($3 in want) && n[$1]++ < 5 { print $1, $3 }' \
        even.txt - | sort >truth-even.txt
"$VX" query flat.vx --fvecs q.fvecs -k 5 --allow even.txt |
    awk 'NR > 1 { print $1, $3 }' | sort >got-even.txt
equal "$(wc -l <truth-even.txt | tr -d ' ')" 1000 "--allow: truth rows"
same truth-even.txt got-even.txt
"$VX" query hnsw.vx --fvecs q.fvecs -k 5 --ef 100 --allow even.txt \
    --threads 2 | awk 'NR > 1 { print $1, $3 }' | sort >approx-even.txt
common=$(comm -12 truth-even.txt approx-even.txt | wc -l)
[ "$common" -ge 900 ] && ok || bad "hnsw --allow recall@5 $common/1000 < 0.9"
# Standard input; and a list without keys, which admits nothing.
printf '1003\n' | "$VX" query hnsw.vx --vector "$row5" -k 3 --allow - \
    >out 2>err && ok || bad "--allow - exited $?"
equal "$(awk 'NR > 1 { print $3 }' out)" 1003 "--allow -"
printf '# none today\n\n' >none.txt
run 0 query flat.vx --vector "$row5" -k 3 --allow none.txt
equal "$(wc -l <out | tr -d ' ')" 1 "--allow with no keys: header only"
has err "none.txt lists no keys"
# A line that is not one key is an error naming the line.
printf '1000\n# ok\n10x3\n' >badkey.txt
run 1 query flat.vx --vector "$row5" --allow badkey.txt
has err "badkey.txt:3: '10x3' is not a key"
printf '1000\n-3\n' >negkey.txt
run 1 query flat.vx --vector "$row5" --allow negkey.txt
has err "negkey.txt:2: '-3' is not a key"
printf '18446744073709551616\n' >bigkey.txt
run 1 query flat.vx --vector "$row5" --allow bigkey.txt
has err "bigkey.txt:1: '18446744073709551616' is not a key"
printf '1000 1003\n' >twokeys.txt
run 1 query flat.vx --vector "$row5" --allow twokeys.txt
has err "twokeys.txt:1: '1000 1003' is not a key"
run 1 query flat.vx --vector "$row5" --allow nothere.txt
has err "cannot open 'nothere.txt'"
run 2 query flat.vx --fvecs - --allow -
has err "cannot both read standard input"
run 0 query --help
has out "--allow FILE"

# ---- compressed storage ----------------------------------------------------
# int8 codes: a quarter of the bytes, near-float32 recall. One build thread,
# as above, so the graph and its recall are the same every run.
run 0 create i8.vx --dim $D --kind hnsw --metric l2 --storage i8
has out "created i8.vx: hnsw index, l2 metric, dimension $D, i8 storage"
run 0 import i8.vx data.csv --threads 1
has out "i8.vx holds 3000"
run 0 stats i8.vx
has out "storage       i8, "
has out "bytes per vector with its level-0 links"
run 0 stats i8.vx --json
has out '"kind":"hnsw","metric":"l2","dim":8,"count":3000'
has out '"storage":"i8","vector_bytes":'
json_valid out
run 0 check i8.vx
run 0 query i8.vx --vector "$row5" -k 3
equal "$(sed -n 2p out | awk '{ print $2, $3 }')" "1 1015" "i8 nearest to row 5"
"$VX" query i8.vx --fvecs q.fvecs -k 10 --ef 100 |
    awk 'NR > 1 { print $1, $3 }' | sort >i8.txt
common=$(comm -12 truth.txt i8.txt | wc -l)
[ "$common" -ge 1800 ] && ok || bad "i8 hnsw recall@10 $common/2000 < 0.9"
# Without the float32 vectors, export gives the decoded codes: every key,
# each value within a code step of the one imported.
run 0 export i8.vx i8.csv
equal "$(cut -d, -f1 i8.csv | tr '\n' ' ')" "$(cut -d, -f1 all.csv | tr '\n' ' ')" \
    "i8 exported keys"
worst=$(paste -d, all.csv i8.csv | awk -F, -v d=$D 'NR > 1 {
    for (j = 2; j <= d + 1; j++) {
        e = $j - $(j + d + 1); if (e < 0) e = -e; if (e > m) m = e
    } } END { print (m <= 4.0 / 254) ? "ok" : m }')
equal "$worst" ok "i8 export error"
# With the float32 vectors kept: exact distances and an exact export.
run 0 create i8k.vx --dim $D --kind flat --metric l2 --storage i8 \
    --keep-vectors --refine 4 --json
has out '"kind":"flat","metric":"l2","dim":8,"storage":"i8","keep_vectors":true}'
run 0 import i8k.vx data.csv
# vector_bytes counts the codes searches read, not the kept vectors: a
# byte per dimension plus 16 against 4 bytes per dimension.
vector_bytes() { sed -n 's/.*"vector_bytes":\([0-9]*\).*/\1/p' out; }
run 0 stats i8k.vx --json
has out '"storage":"i8"'
i8_bytes=$(vector_bytes)
run 0 stats flat.vx --json
has out '"storage":"f32"'
f32_bytes=$(vector_bytes)
equal "$((f32_bytes - i8_bytes))" $((3 * D - 16)) "flat i8 bytes saved"
run 0 query i8k.vx --vector "$row5" -k 1
equal "$(sed -n 2p out | awk '{ print $3, $4 }')" "1015 0" "i8 kept: exact"
run 0 query i8k.vx --vector "$row5" -k 1 --refine 1 --json
has out '"key":1015,"distance":0}'
run 0 export i8k.vx - --format csv
same all.csv out
run 0 check i8k.vx
# Bits pick the candidates, the kept vectors rank them.
run 0 create bin.vx --dim $D --kind hnsw --metric cos --storage bin \
    --keep-vectors
has out "bin storage (float32 vectors kept)"
run 0 import bin.vx data.csv --threads 1
run 0 stats bin.vx --json
has out '"storage":"bin"'
run 0 query bin.vx --vector "$row5" -k 1
equal "$(sed -n 2p out | awk '{ print $3 }')" 1015 "bin nearest to row 5"
run 0 check bin.vx
# What the library refuses, with its reason; an unknown name is a usage error.
run 1 create bad.vx --dim $D --metric l2 --storage bin --keep-vectors
has err "binary storage"
run 1 create bad.vx --dim $D --storage bin
has err "keep_vectors"
run 1 create bad.vx --dim $D --kind ivfpq --storage i8
has err "IVF-PQ"
run 2 create bad.vx --dim $D --storage u4
has err "unknown --storage 'u4'"
[ ! -e bad.vx ] && ok || bad "a refused create left bad.vx"

# ---- hand-made binary files, read byte for byte ----------------------------
# Two 2-d vectors: (1, 0.5) and (-2, 0.25) as float32 / float64.
printf '\002\000\000\000\000\000\200\077\000\000\000\077' >two.fvecs
printf '\002\000\000\000\000\000\000\300\000\000\200\076' >>two.fvecs
npy_header() { # DESCR: version 1.0, shape (2, 2), 128 bytes in all
    h="{'descr': '$1', 'fortran_order': False, 'shape': (2, 2), }"
    printf '\223NUMPY\001\000\166\000%s' "$h" # 10 + 118 bytes
    i=$((${#h} + 1))
    while [ $i -lt 118 ]; do printf ' '; i=$((i + 1)); done
    printf '\n'
}
{
    npy_header '<f4'
    printf '\000\000\200\077\000\000\000\077\000\000\000\300\000\000\200\076'
} >two4.npy
{
    npy_header '<f8'
    printf '\000\000\000\000\000\000\360\077\000\000\000\000\000\000\340\077'
    printf '\000\000\000\000\000\000\000\300\000\000\000\000\000\000\320\077'
} >two8.npy
printf 'key,v1,v2\n0,1,0.5\n1,-2,0.25\n' >two.csv
for f in two.fvecs two4.npy two8.npy; do
    rm -f two.vx two.vx-wal
    run 0 create two.vx --dim 2 --kind flat --metric ip
    run 0 import two.vx $f
    run 0 export two.vx two-out.csv
    same two.csv two-out.csv
done
# Inner product: -(1*1 + 0.5*2) = -2 for key 0.
run 0 query two.vx --vector 1,2 -k 1 --json
has out '{"query":0,"rank":1,"key":0,"distance":-2}'

# ---- bad input files (status 1) --------------------------------------------
run 0 create e.vx --dim 2 --kind flat --metric cos
printf '1,1,2\n2,1\n' >short.csv
run 1 import e.vx short.csv
has err "short.csv:2: 1 values after the key, expected 2"
has err "rows added before the error, and kept: 1"
printf '3,1,2,3\n' >long.csv
run 1 import e.vx long.csv
has err "long.csv:1: more than 2 values"
printf '4,1,nan\n' >nan.csv
run 1 import e.vx nan.csv
has err "nan.csv:1: value 2 ('nan') is not a finite number"
printf 'x,1,2\n5,1,2\n' >hdr.csv
run 0 import e.vx hdr.csv
printf 'a,b\n5,1,2\n' >hdr2.csv
run 1 import e.vx hdr2.csv
has err "header has 2 columns"
printf '%s\n' -6,1,2 >neg.csv
run 1 import e.vx neg.csv
has err "neg.csv:1: the first field is not a key"
printf '7,0,0\n' >zero.csv
run 1 import e.vx zero.csv
has err "zero"
run 1 import e.vx hdr.csv
has err "key 5 is already in the index"
printf '5,3,4\n' >up.csv
run 0 import e.vx up.csv --upsert
run 0 export e.vx - --format csv
has out "5,3,4"
run 1 import e.vx two.fvecs --first-key 18446744073709551615
has err "above 2^64-1"
head -c 20 two.fvecs >trunc.fvecs
run 1 import e.vx trunc.fvecs --first-key 100
has err "truncated"
run 1 import flat.vx two.fvecs
has err "vector 0 has dimension 2, the index dimension is 8"
run 1 import flat.vx two4.npy
has err "rows have 2 values, the index dimension is 8"
printf 'not an npy file' >junk.npy
run 1 import e.vx junk.npy
has err "not a .npy file"
run 1 import e.vx nothere.csv
has err "cannot open 'nothere.csv'"
run 1 check junk.npy
run 1 check junk.npy --json
has out '"ok":false'
json_valid out
# Standard input needs --format.
printf '8,1,1\n9,2,1\n' | "$VX" import e.vx - --format csv >out 2>err &&
    ok || bad "import from standard input"
# Kept: 1 (short.csv), 5 (hdr.csv), 2^64-1 and 100 (the rows before the
# errors), 8 and 9.
run 0 stats e.vx --json
has out '"count":6'

# ---- checkpoint and the log ----------------------------------------------
run 0 create w.vx --dim 2 --kind hnsw --metric l2
wal0=$(wc -c <w.vx-wal | tr -d ' ')
printf '1,1,1\n' | "$VX" import w.vx - --format csv >/dev/null
run 0 checkpoint w.vx --json
has out '"command":"checkpoint"'
json_valid out
equal "$(wc -c <w.vx-wal | tr -d ' ')" "$wal0" "log size after checkpoint"
run 0 check w.vx

# ---- IVF-PQ --------------------------------------------------------------
run 0 create pq.vx --dim $D --kind ivfpq --metric l2 --nlist 16 --pq-m 4 \
    --keep-vectors --refine 4
run 0 import pq.vx data.csv --train 3000
run 0 stats pq.vx --json
has out '"trained":true,"nlist":16,"pq_m":4'
run 0 query pq.vx --vector "$row5" -k 1 --nprobe 16
equal "$(sed -n 2p out | awk '{ print $3, $4 }')" "1015 0" "ivfpq nearest"
run 0 check pq.vx
run 2 import flat.vx data.csv --train 10

# ---- stats: every counter of vecidx_stats_t --------------------------------
run 0 stats --help
has out "counted per"
has out "handle"
simd=$("$VX" --version | sed -n 's/.*, \([a-z0-9]*\) kernels)$/\1/p')
lib=$("$VX" --version | sed -n 's/.*(library \([^,]*\),.*/\1/p')
# The JSON object has the fields of vecidx_stats_t in the struct's order,
# and its numbers agree with one another: memory parts against the total
# and the mapped file, list sizes against the count; the search defaults
# are those the file was created with. The handle the command opens has
# done nothing; the log it reports is the one it replayed at open, the
# whole -wal file, which holds records exactly when it is longer than its
# 32-byte header (docs/FORMAT.md).
cat >stats_check.py <<'END'
import json, sys
path, kind, count, dim, simd, lib, ef, nprobe, refine = sys.argv[1:10]
count, dim = int(count), int(dim)
d = json.loads(open(path).read())
lat = ["search_latency", "batch_latency", "insert_latency",
       "remove_latency", "checkpoint_latency"]
want = (["command", "path", "kind", "metric", "dim", "count", "slots",
         "capacity", "memory_bytes", "mapped_bytes", "simd", "trained",
         "nlist", "pq_m", "storage", "vector_bytes", "searches", "inserts",
         "removes"] + lat +
        ["distances_per_search", "visited_per_search", "buried", "repairs",
         "log_bytes", "log_records", "checkpoints", "last_checkpoint_time",
         "last_checkpoint_seconds", "mem_vectors", "mem_links", "mem_keymap",
         "mem_lists", "mem_other", "list_min", "list_median", "list_max",
         "drift", "ef_search", "nprobe", "refine", "file_bytes", "wal_bytes",
         "version"])
assert list(d) == want, [k for k in want if k not in d] or list(d)
assert (d["kind"], d["count"], d["dim"]) == (kind, count, dim), d
assert (d["simd"], d["version"]) == (simd, lib), (d["simd"], d["version"])
assert [d["ef_search"], d["nprobe"], d["refine"]] == \
    [int(ef), int(nprobe), int(refine)], d
assert d["log_bytes"] == d["wal_bytes"] >= 32, d
assert (d["log_records"] > 0) == (d["log_bytes"] > 32), d
for k in lat:
    assert d[k] == {"count": 0, "p50_us": 0, "p95_us": 0, "p99_us": 0,
                    "max_us": 0}, (k, d[k])
for k in ["searches", "inserts", "removes", "distances_per_search",
          "visited_per_search", "repairs", "checkpoints",
          "last_checkpoint_time", "last_checkpoint_seconds"]:
    assert d[k] == 0, (k, d[k])
parts = sum(d[k] for k in ["mem_vectors", "mem_links", "mem_keymap",
                           "mem_lists", "mem_other"])
# Parts count allocated and mapped bytes alike; other only allocated.
assert d["memory_bytes"] <= parts <= d["memory_bytes"] + d["mapped_bytes"], d
assert d["mem_other"] <= d["memory_bytes"], d
assert d["mapped_bytes"] == d["file_bytes"] > 0, d
assert d["mem_keymap"] >= 8 * count, d
lists = [d["list_min"], d["list_median"], d["list_max"]]
if kind == "ivfpq" and d["trained"]:
    assert d["storage"] == "pq" and d["vector_bytes"] == 0, d
    assert d["mem_vectors"] == d["mem_links"] == 0, d
    assert d["mem_lists"] >= count * (8 + d["pq_m"]), d
    assert 0 < d["list_min"] <= d["list_median"] <= d["list_max"], lists
    assert d["list_min"] * d["nlist"] <= count <= d["list_max"] * d["nlist"]
    assert d["slots"] == count <= d["capacity"], d
    assert d["drift"] == 0, d
else:
    assert lists == [0, 0, 0] and d["drift"] == 0 and d["mem_lists"] == 0, d
    assert count <= d["slots"] <= d["capacity"], d
    if kind != "ivfpq":
        assert d["trained"] is True, d
        # a vector's codes and key; HNSW's level-0 links as well
        assert d["mem_vectors"] + d["mem_links"] >= \
            count * d["vector_bytes"] > 0, d
    assert (d["mem_links"] > 0) == (kind == "hnsw" and count > 0), d
    assert d["buried"] == 0 or kind == "hnsw", d
END
stats_ok() { # KIND COUNT DIM EF NPROBE REFINE: out holds a sound stats object
    [ -n "$PY" ] || return 0
    if "$PY" stats_check.py out "$1" "$2" "$3" "$simd" "$lib" "$4" "$5" "$6" \
        2>stats.err; then ok
    else bad "stats --json of $1: $(tail -n 1 stats.err)"; fi
}
# The search defaults each file was created with: hnsw.vx --ef-search 80,
# i8k.vx and pq.vx --refine 4, bin.vx bin's default refine of 20, IVF-PQ
# nprobe 8, HNSW ef 64; 0 where they do not apply (refine without kept
# vectors).
for ix in "flat 0 0 0" "hnsw 80 0 0" "i8 64 0 0" "i8k 0 0 4" "bin 64 0 20" \
    "pq 0 8 4"; do
    set -- $ix
    run 0 stats $1.vx --json
    json_valid out
    case $1 in pq) k=ivfpq ;; flat | i8k) k=flat ;; *) k=hnsw ;; esac
    stats_ok $k 3000 $D $2 $3 $4
done
# An IVF-PQ index still buffering its vectors: no lists yet.
run 0 create pqb.vx --dim $D --kind ivfpq --metric l2 --train-size 5000
head -n 101 data.csv >first100.csv
run 0 import pqb.vx first100.csv
run 0 stats pqb.vx --json
has out '"trained":false,"nlist":0'
stats_ok ivfpq 100 $D 0 8 0
# A log with records: an import that stops at a bad row keeps the rows
# before it in the log, without the checkpoint a whole import ends with.
# A read-only handle replays that log and reports it: its size, and the
# batches in it (one record each).
run 0 create lg.vx --dim $D --kind flat --metric l2
head -n 4 data.csv >lg.csv
printf '5,1\n' >>lg.csv
run 1 import lg.vx lg.csv
run 1 import lg.vx lg.csv
has err "key 1000 is already in the index"
sed -n 5,6p data.csv >lg2.csv
printf '6,1\n' >>lg2.csv
run 1 import lg.vx lg2.csv
run 0 stats lg.vx --json
has out '"log_records":2,'
stats_ok flat 5 $D 0 0 0
run 0 stats lg.vx
has out "log at open   $(wc -c <lg.vx-wal | tr -d ' ') B, 2 writes not checkpointed"
run 0 checkpoint lg.vx
run 0 stats lg.vx --json
has out '"log_bytes":32,"log_records":0,'
stats_ok flat 5 $D 0 0 0
# The text has the same numbers, with units for memory.
run 0 stats pq.vx --json
lists=$(sed 's/.*"list_min":\([0-9]*\),"list_median":\([0-9]*\),"list_max":\([0-9]*\).*/min \1, median \2, max \3/' out)
run 0 stats pq.vx
has out "search        nprobe 8, refine 4"
has out "list sizes    $lists"
has out "drift         0.0 % of the entries added since training"
has out "lists         16, 4 code bytes per vector"
has out "  lists       "
run 0 stats hnsw.vx
has out "memory        "
has out " KiB mapped from the file"
has out "  links       "
has out "buried        "
has out "search        ef 80"
has out "log at open   32 B, 0 writes not checkpointed"
has out "activity      none"
run 1 stats junk.npy
has err "cannot open index 'junk.npy'"

# ---- recall and tune -------------------------------------------------------
# A sparse graph (M 5, ef_construction 30), on one thread so the graph is
# the same every run, whose recall@10 grows over several steps of ef: the
# sample queries of this seed measure 0.922 at ef 10, 0.947 at 16, 0.954
# at 24. Created with an ef the sweep never tries, so that a stored
# choice shows.
json_field() { # NAME: a number field of the JSON object in out
    sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" out | head -n 1
}
at_least() { # VALUE MIN WHAT
    if awk -v v="$1" -v m="$2" 'BEGIN { exit !(v != "" && v + 0 >= m + 0) }'
    then ok; else bad "$3: $1 < $2"; fi
}
run 0 create sparse.vx --dim $D --kind hnsw --metric l2 --M 5 \
    --ef-construction 30 --ef-search 200
run 0 import sparse.vx data.csv --threads 1
run 0 tune sparse.vx --recall 0.95
has out "stored as the index's default"
run 0 tune sparse.vx --recall 0.95 --json
json_valid out
has out '"command":"tune","path":"sparse.vx","target":0.950000,"reached":true,"ef":'
has out '"nprobe":0,"refine":0,"steps":'
has out ',"k":10,"search_us":'
has out '"vs_codes":false},"advice":""}'
ef=$(json_field ef)
at_least "$(json_field recall)" 0.95 "recall tune measured"
equal "$(sed -n 's/.*"queries":\([0-9]*\).*/\1/p' out)" 200 "sample queries"
# The sweep stops at the first ef that reaches the target, and ef 10
# measured 0.922 here.
[ -n "$ef" ] && [ "$ef" -gt 10 ] && [ "$ef" -lt 200 ] && ok ||
    bad "tune chose ef '$ef'"
run 0 stats sparse.vx --json
equal "$(json_field ef_search)" "$ef" "ef_search stored by tune"
run 0 stats sparse.vx
has out "search        ef $ef"
run 0 recall sparse.vx --ef "$ef" --json
json_valid out
has out "\"command\":\"recall\",\"path\":\"sparse.vx\",\"ef\":$ef,\"nprobe\":0,\"refine\":0,\"recall\":"
at_least "$(json_field recall)" 0.95 "recall at the chosen ef"
sample=$(json_field recall)
# Without --ef, the search uses the stored default: same ef, same queries
# (made from the index's seed), same recall.
run 0 recall sparse.vx --json
has out "\"ef\":$ef,"
equal "$(json_field recall)" "$sample" "recall at the stored default"
run 0 recall sparse.vx --ef 10
has out "sparse.vx: recall@10 0.92"
has out "with ef 10, over 200 sample queries"
has out " us per search"

# Given queries, and their exact answers as an .ivecs file: per query a
# little-endian int32 count, then that many int32 keys. Written from the
# flat index's answers (keys 1000 + 3i, which fit in int32).
ivecs() { # K: "query key" lines on stdin, K per query in rank order
    printf "$(awk -v k="$1" 'function le(v,  i) {
            for (i = 0; i < 4; i++) { printf "\\%03o", v % 256; v = int(v / 256) }
        }
        (NR - 1) % k == 0 { le(k) } { le($2) }')"
}
"$VX" query flat.vx --fvecs q.fvecs -k 10 | awk 'NR > 1 { print $1, $3 }' |
    ivecs 10 >gt.ivecs
equal "$(wc -c <gt.ivecs | tr -d ' ')" $((200 * 44)) "gt.ivecs size"
run 0 recall flat.vx --queries q.fvecs --gt gt.ivecs
has out "flat.vx: recall@10 1.0000 (95 % interval 1.0000-1.0000) with an exact scan, over 200 queries of q.fvecs, ground truth gt.ivecs"
# The answers are read, not ignored: keys one off are never found.
"$VX" query flat.vx --fvecs q.fvecs -k 10 | awk 'NR > 1 { print $1, $3 + 1 }' |
    ivecs 10 >off.ivecs
run 0 recall flat.vx --queries q.fvecs --gt off.ivecs --json
has out '"recall":0.000000,"low":0.000000,"high":0.000000,"queries":200,"k":10'
# HNSW against the exact answers agrees with the comm count above.
run 0 recall hnsw.vx --queries q.fvecs --gt gt.ivecs --ef 100 --json
at_least "$(json_field recall)" 0.95 "hnsw recall@10 with --gt"
# -k within what the file holds; --n takes the first queries.
run 0 recall flat.vx --queries q.fvecs --gt gt.ivecs -k 5 --n 20 --json
has out '"recall":1.000000,"low":1.000000,"high":1.000000,"queries":20,"k":5'
run 1 recall flat.vx --queries q.fvecs --n 201
has err "q.fvecs holds 200 queries, fewer than --n 201"
run 1 recall flat.vx --queries q.fvecs --gt gt.ivecs -k 11
has err "gt.ivecs: row 0 holds 10 neighbours, fewer than k = 11"
head -c 4400 gt.ivecs >gt100.ivecs
run 1 recall flat.vx --queries q.fvecs --gt gt100.ivecs
has err "gt100.ivecs holds the answers to 100 queries; q.fvecs has 200"
run 0 recall flat.vx --queries q.fvecs --gt gt100.ivecs --n 100
head -c 4402 gt.ivecs >cut.ivecs
run 1 recall flat.vx --queries q.fvecs --gt cut.ivecs
has err "cut.ivecs: file ends inside row 100"
run 1 recall flat.vx --queries gt.ivecs
has err "gt.ivecs: vector 0 has dimension 10, the index dimension is 8"
# Filtered: the exact answers of the scan are filtered too.
run 0 recall flat.vx --allow even.txt --json
has out '"recall":1.000000'
run 0 recall hnsw.vx --allow even.txt --json
at_least "$(json_field recall)" 0.9 "hnsw filtered recall"

# IVF-PQ keeping only 2 code bytes per vector: against the exact answers
# no nprobe reaches recall 1. Status 3, the best setting tried, the advice,
# and the index left as it was.
run 0 create pqn.vx --dim $D --kind ivfpq --metric l2 --nlist 16 --pq-m 2
run 0 import pqn.vx data.csv --train 3000
run 3 tune pqn.vx --recall 1 --queries q.fvecs --gt gt.ivecs
has out "pqn.vx: recall@10 1 not reached: the best of "
has out "the index is unchanged"
has out "advice: product-quantized codes alone cap recall"
run 3 tune pqn.vx --recall 1 --queries q.fvecs --gt gt.ivecs --json
json_valid out
has out '"target":1.000000,"reached":false,"ef":0,"nprobe":'
has out '"advice":"product-quantized codes alone cap recall'
run 0 stats pqn.vx --json
equal "$(json_field nprobe)" 8 "nprobe after a tune that fell short"
# Without exact answers the scan ranks the same codes the search does,
# so probing every list gives every answer: recall 1 is reached, against
# the codes, and both commands say so.
run 0 tune pqn.vx --recall 1 --json
has out '"reached":true,"ef":0,"nprobe":'
has out '"recall":{"recall":1.000000,'
has out '"vs_codes":true},"advice":"recall was measured against the codes'
run 0 tune pqn.vx --recall 1
has out "note: recall was measured against the codes"
run 0 recall pqn.vx --json
has out '"vs_codes":true}'
run 0 recall pqn.vx
has out "note: measured against a scan of the index's codes"
run 0 recall pqn.vx --queries q.fvecs --gt gt.ivecs --json
has out '"vs_codes":false}'

# A flat index needs no setting.
run 0 tune flat.vx --recall 0.99
has out "flat.vx: an exact scan reaches recall@10 1.0000"
has out "nothing to store"
# What tune refuses: bad targets, a missing PATH or target, --gt without
# --queries (command-line errors, status 2); an IVF-PQ index still
# buffering, a missing file, a read-only file (status 1).
run 2 tune sparse.vx --recall 0
has err "--recall must be a number above 0 and at most 1 (e.g. 0.95), not '0'"
run 2 tune sparse.vx --recall 1.5
has err "not '1.5'"
run 2 tune sparse.vx --recall 0.9x
has err "not '0.9x'"
run 2 tune --recall 0.9
has err "missing PATH"
run 2 tune sparse.vx
has err "--recall is required"
run 2 tune sparse.vx --recall 0.9 --gt gt.ivecs
has err "--gt holds the answers to --queries; give both"
run 2 recall
has err "missing PATH"
run 2 recall flat.vx -k 0
run 2 recall flat.vx --recall 0.9
has err "unknown option '--recall'"
run 1 tune pqb.vx --recall 0.9
has err "not trained"
run 1 tune nothere.vx --recall 0.9
has err "cannot open index 'nothere.vx'"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
