#!/bin/sh
# bench/run.sh DATA_DIR [RESULTS]
#
# Runs the flat benchmark of vecidx on one data set (DATA_DIR holds
# base.fvecs, query.fvecs, gt.ivecs and metric, as written by
# shared/data/make_data.py): single queries and --batch, on 1 thread and on
# all cores. If bench/vecidx-compare is built (make bench-compare), runs FAISS
# flat the same way, right after, and hnswlib HNSW with an ef sweep. With
# HNSW=1 it also runs vecidx HNSW on the same sweep (and FAISS HNSW). With
# IVFPQ=1 it runs vecidx and FAISS IVF-PQ, one after the other, with the
# options in IVFPQ_ARGS (default: --nprobe 1,2,4,8,16,32, the rest the
# programs' defaults; e.g. IVFPQ_ARGS="--nlist 1024 --pq-m 32 --nprobe 1,4").
# JSON lines are appended to RESULTS (default DATA_DIR/results.jsonl) and
# echoed; notes go to stderr.
#
# Environment: BENCH, COMPARE (program paths), EF (sweep list), PASSES,
# THREADS (the multi-threaded runs; default: all cores), HNSW=1, IVFPQ=1,
# IVFPQ_ARGS.
# OMP_WAIT_POLICY defaults to PASSIVE: FAISS batches call OpenBLAS from an
# OpenMP region, and spinning OpenMP threads then take the cores from the
# BLAS threads (on 2 cores, FAISS batches on 2 threads lost ~40%).
set -eu
OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export OMP_WAIT_POLICY

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 DATA_DIR [RESULTS]" >&2
    exit 2
fi
data=$1
results=${2:-$data/results.jsonl}
here=$(cd "$(dirname "$0")" && pwd)
bench=${BENCH:-$here/vecidx-bench}
compare=${COMPARE:-$here/vecidx-compare}
ef=${EF:-10,16,24,32,48,64,128}
passes=${PASSES:-3}
threads=${THREADS:-$(getconf _NPROCESSORS_ONLN)}

for f in base.fvecs query.fvecs gt.ivecs; do
    if [ ! -f "$data/$f" ]; then
        echo "$0: $data/$f missing; make it with shared/data/make_data.py" >&2
        exit 1
    fi
done
if [ ! -x "$bench" ]; then
    echo "$0: $bench not built (make)" >&2
    exit 1
fi
have_compare=0
if [ -x "$compare" ]; then
    have_compare=1
else
    echo "$0: $compare not built (make bench-compare): vecidx only" >&2
fi

status=0
# run PROGRAM ARGS...: append its JSON lines; a failing run is reported and
# the others go on.
run() {
    echo "+ $*" >&2
    if ! "$@" --data "$data" --passes "$passes" >"$results.part"; then
        echo "$0: failed: $*" >&2
        status=1
    fi
    cat "$results.part" >>"$results"
    cat "$results.part"
    rm -f "$results.part"
}

# Flat: vecidx and FAISS alternate so both see the same machine state.
for t in 1 "$threads"; do
    for mode in "" --batch; do
        # shellcheck disable=SC2086 # $mode is empty or one word
        run "$bench" --index flat --threads "$t" $mode
        if [ $have_compare = 1 ]; then
            # shellcheck disable=SC2086
            run "$compare" --lib faiss --index flat --threads "$t" $mode
        fi
    done
    [ "$threads" = 1 ] && break
done

# HNSW, single queries on one thread.
if [ "${HNSW:-0}" = 1 ]; then
    run "$bench" --index hnsw --ef "$ef"
fi
if [ $have_compare = 1 ]; then
    if [ "${HNSW:-0}" = 1 ]; then
        run "$compare" --lib all --index hnsw --ef "$ef"
    else
        run "$compare" --lib hnswlib --index hnsw --ef "$ef"
    fi
fi
# IVF-PQ, single queries on one thread; training on --build-threads.
if [ "${IVFPQ:-0}" = 1 ]; then
    ivfpq_args=${IVFPQ_ARGS:---nprobe 1,2,4,8,16,32}
    # shellcheck disable=SC2086 # IVFPQ_ARGS is a list of options
    run "$bench" --index ivfpq $ivfpq_args
    if [ $have_compare = 1 ]; then
        # shellcheck disable=SC2086
        run "$compare" --lib faiss --index ivfpq $ivfpq_args
    fi
fi
echo "results appended to $results" >&2
exit $status
