#!/usr/bin/env python3
"""vecidx's SQLite extension beside sqlite-vec and vectorlite, through SQL.

    nice /usr/bin/python3 bench/sqlite-bench.py SET [SET...] [--passes 3]
        [--queries 200] [--ext sqlite/vecidx_sqlite.so] [--npm /tmp/npm]

SET is a directory of base.fvecs, query.fvecs, gt.ivecs and metric
("l2" or "cos"), e.g. /tmp/vecidx-data/synth-128-l2-100k. For each set,
each engine gets a fresh in-memory database and inserts every base vector
in one transaction (timed), then the KNN query (k = 10) runs through
Python's sqlite3 with one prepared statement per configuration, in passes
that take turns between engines and settings (the machine's speed drifts
within minutes, so only figures of the same passes are compared). Prints
one JSON line per measurement (best QPS over the passes, recall@10
against gt.ivecs) and a summary table.

Anchors (benchmark only, never a dependency of vecidx):
    cd /tmp/npm && npm install sqlite-vec-linux-x64@0.1.9 \\
        @1yefuwang1/vectorlite-linux-x64@0.2.0
"""

import argparse
import json
import os
import sqlite3
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def read_vecs(path, kind="f"):
    with open(path, "rb") as f:
        data = f.read()
    d = struct.unpack_from("<i", data, 0)[0]
    row = 4 + 4 * d
    n = len(data) // row
    out = []
    for i in range(n):
        out.append(data[i * row + 4:(i + 1) * row])
    return d, out


def recall(got, truth, k=10):
    return len(set(got) & set(truth[:k])) / k


class Engine:
    def __init__(self, name, ext, entry=None):
        self.name = name
        self.db = sqlite3.connect(":memory:", isolation_level=None)
        self.db.enable_load_extension(True)
        if entry:
            self.db.load_extension(ext, entry) if sys.version_info >= (
                3, 12) else self.db.load_extension(ext)
        else:
            self.db.load_extension(ext)


def make_engines(args, dim, metric):
    engines = []
    v = Engine("vecidx", os.path.splitext(args.ext)[0])
    v.db.execute("CREATE VIRTUAL TABLE t USING vecidx(dim=%d, metric=%s, "
                 "kind=hnsw, M=16, ef_construction=200)" % (dim, metric))
    v.insert = "INSERT INTO t(rowid, embedding) VALUES (?, ?)"
    v.query = ("SELECT rowid FROM t WHERE embedding MATCH ? AND k = 10 AND "
               "ef = ?")
    v.settings = [16, 32, 64, 128]
    engines.append(v)
    vl_path = os.path.join(args.npm, "node_modules", "@1yefuwang1",
                           "vectorlite-linux-x64", "src", "vectorlite")
    if os.path.exists(vl_path + ".so"):
        e = Engine("vectorlite", vl_path)
        e.db.execute("CREATE VIRTUAL TABLE t USING vectorlite(embedding "
                     "float32[%d] %s, hnsw(max_elements=%d, "
                     "ef_construction=200, M=16))"
                     % (dim, "cosine" if metric == "cos" else "l2",
                        args.max_rows))
        e.insert = "INSERT INTO t(rowid, embedding) VALUES (?, ?)"
        e.query = ("SELECT rowid FROM t WHERE knn_search(embedding, "
                   "knn_param(?, 10, ?))")
        e.settings = [16, 32, 64, 128]
        engines.append(e)
    sv_path = os.path.join(args.npm, "node_modules", "sqlite-vec-linux-x64",
                           "vec0")
    if os.path.exists(sv_path + ".so"):
        e = Engine("sqlite-vec", sv_path)
        e.db.execute("CREATE VIRTUAL TABLE t USING vec0(embedding float[%d]"
                     "%s)" % (dim, " distance_metric=cosine"
                              if metric == "cos" else ""))
        e.insert = "INSERT INTO t(rowid, embedding) VALUES (?, ?)"
        e.query = "SELECT rowid FROM t WHERE embedding MATCH ? AND k = 10"
        e.settings = [None]   # exact scan
        engines.append(e)
    return engines


def run_set(args, path):
    name = os.path.basename(path.rstrip("/"))
    with open(os.path.join(path, "metric")) as f:
        metric = f.read().strip()
    dim, base = read_vecs(os.path.join(path, "base.fvecs"))
    _, queries = read_vecs(os.path.join(path, "query.fvecs"))
    _, gt = read_vecs(os.path.join(path, "gt.ivecs"))
    gt = [list(struct.unpack("<%di" % (len(g) // 4), g)) for g in gt]
    queries = queries[:args.queries]
    args.max_rows = len(base)
    engines = make_engines(args, dim, metric)
    results = []
    for e in engines:
        t = time.perf_counter()
        e.db.execute("BEGIN")
        for i, v in enumerate(base):
            e.db.execute(e.insert, (i, v))
        e.db.execute("COMMIT")
        secs = time.perf_counter() - t
        rec = {"set": name, "engine": e.name, "op": "insert",
               "rows": len(base), "seconds": round(secs, 2),
               "rows_per_s": round(len(base) / secs)}
        print(json.dumps(rec), flush=True)
        results.append(rec)
    best = {}
    for p in range(args.passes):
        for e in engines:
            for s in e.settings:
                nq = len(queries)
                if s is None:   # the exact scan: fewer queries
                    nq = min(nq, args.exact_queries)
                cur = e.db.cursor()
                hits = 0.0
                t = time.perf_counter()
                for qi in range(nq):
                    if s is None:
                        got = cur.execute(e.query, (queries[qi],)).fetchall()
                    else:
                        got = cur.execute(e.query,
                                          (queries[qi], s)).fetchall()
                    hits += recall([r[0] for r in got], gt[qi])
                secs = time.perf_counter() - t
                key = (e.name, s)
                qps = nq / secs
                if key not in best or qps > best[key]["qps"]:
                    best[key] = {"set": name, "engine": e.name, "ef": s,
                                 "op": "knn", "queries": nq,
                                 "qps": round(qps, 1),
                                 "recall": round(hits / nq, 4),
                                 "pass": p}
    for key, rec in best.items():
        print(json.dumps(rec), flush=True)
        results.append(rec)
    for e in engines:
        e.db.close()
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sets", nargs="+")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--exact-queries", type=int, default=50)
    ap.add_argument("--ext", default=os.path.join(HERE, "..", "sqlite",
                                                  "vecidx_sqlite.so"))
    ap.add_argument("--npm", default="/tmp/npm")
    args = ap.parse_args()
    allres = []
    for s in args.sets:
        allres += run_set(args, s)
    print("\n| set | engine | ef | recall@10 | QPS | insert rows/s |")
    print("|---|---|---|---|---|---|")
    ins = {(r["set"], r["engine"]): r for r in allres if r["op"] == "insert"}
    for r in allres:
        if r["op"] != "knn":
            continue
        i = ins[(r["set"], r["engine"])]
        print("| %s | %s | %s | %.3f | %.0f | %d (%.1f s) |"
              % (r["set"], r["engine"], r["ef"] if r["ef"] else "exact",
                 r["recall"], r["qps"], i["rows_per_s"], i["seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
