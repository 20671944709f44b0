#!/usr/bin/env python3
"""Filtered KNN through SQL: the allowed-set form against the join forms.

    nice /usr/bin/python3 bench/sqlite/join_forms.py SET [--n 100000]
        [--queries 50] [--ext sqlite/vecidx_sqlite.so]

SET is a directory of base.fvecs and query.fvecs (e.g.
/tmp/vecidx-data/synth-128-l2-100k; the metric is L2). A database in a
temporary directory gets a table docs(id, cat) with cat uniform in
0..999 and a vecidx HNSW table (M 16) holding the first n base vectors
under the same rowids. For filters keeping 100 % (a join for metadata
only), 50 %, 5 %, 0.5 % and 0.1 % of
the rows, without an index on docs(cat), with one, and with one and
ANALYZE's statistics, each query form runs
every query (k = 10) and reports milliseconds per query, recall@10
against the exact filtered top 10 (numpy), and SQLite's plan:

  in_k        ... MATCH :q AND k = 10 AND rowid IN (SELECT id FROM docs
              WHERE <filter>)           -- the allowed set, one search
  join_limit  ... FROM v JOIN docs d ON d.id = v.rowid WHERE MATCH :q AND
              <filter> ORDER BY v.distance LIMIT 10
                                        -- docs first: one search per
                                        -- kept row; v first: rows nearest
                                        -- first until 10 pass the filter

Prints one JSON line per measurement, then a table.
"""

import argparse
import json
import os
import sqlite3
import struct
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def read_fvecs(path, n=None):
    raw = np.fromfile(path, dtype=np.int32)
    d = int(raw[0])
    rows = raw.reshape(-1, d + 1)[:, 1:].copy().view(np.float32)
    return rows[:n] if n else rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("set")
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--ext", default=os.path.join(HERE, "..", "..", "sqlite",
                                                  "vecidx_sqlite.so"))
    a = ap.parse_args()
    base = read_fvecs(os.path.join(a.set, "base.fvecs"), a.n)
    queries = read_fvecs(os.path.join(a.set, "query.fvecs"), a.queries)
    n, dim = base.shape
    rng = np.random.default_rng(19)
    cat = rng.integers(0, 1000, n)
    filters = [("cat >= 0", cat >= 0), ("cat < 500", cat < 500),
               ("cat < 50", cat < 50),
               ("cat < 5", cat < 5), ("cat = 0", cat == 0)]
    forms = {
        "in_k": "SELECT rowid FROM v WHERE embedding MATCH :q AND k = 10 "
                "AND rowid IN (SELECT id FROM docs WHERE {f})",
        "join_limit": "SELECT v.rowid FROM v JOIN docs d ON d.id = v.rowid "
                      "WHERE v.embedding MATCH :q AND {f} "
                      "ORDER BY v.distance LIMIT 10",
    }
    with tempfile.TemporaryDirectory(prefix="vecidx-join-") as tmp:
        db = sqlite3.connect(os.path.join(tmp, "j.db"), isolation_level=None)
        db.enable_load_extension(True)
        db.load_extension(os.path.splitext(os.path.abspath(a.ext))[0])
        db.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, cat INT)")
        db.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=%d, kind=hnsw, "
                   "M=16, ef_construction=200, ef=64)" % dim)
        t = time.time()
        db.execute("BEGIN")
        db.executemany("INSERT INTO docs VALUES (?, ?)",
                       ((i + 1, int(cat[i])) for i in range(n)))
        db.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)",
                       ((i + 1, base[i].tobytes()) for i in range(n)))
        db.execute("COMMIT")
        print("# loaded %d x %d in %.1f s, SQLite %s" %
              (n, dim, time.time() - t, sqlite3.sqlite_version),
              file=sys.stderr)
        truth = {}
        for fname, mask in filters:
            idx = np.nonzero(mask)[0]
            sub = base[idx]
            tl = []
            for q in queries:
                d = ((sub - q) ** 2).sum(axis=1)
                tl.append(set((idx[np.argsort(d)[:10]] + 1).tolist()))
            truth[fname] = tl
        table = []
        for index in ("no", "yes", "yes+ANALYZE"):
            if index == "yes":
                db.execute("CREATE INDEX docs_cat ON docs(cat)")
            if index == "yes+ANALYZE":
                db.execute("ANALYZE docs")
            for fname, mask in filters:
                for form, sql in forms.items():
                    sql = sql.format(f=fname)
                    plan = " | ".join(r[3] for r in db.execute(
                        "EXPLAIN QUERY PLAN " + sql,
                        {"q": queries[0].tobytes()}))
                    db.execute(sql, {"q": queries[0].tobytes()}).fetchall()
                    hits = 0
                    t = time.perf_counter()
                    for qi, q in enumerate(queries):
                        got = db.execute(sql, {"q": q.tobytes()}).fetchall()
                        hits += len({r[0] for r in got} & truth[fname][qi])
                    ms = (time.perf_counter() - t) * 1000 / len(queries)
                    rec = hits / (10 * len(queries))
                    row = {"n": n, "filter": fname,
                           "kept": round(float(mask.mean()), 4),
                           "index_on_cat": index, "form": form,
                           "ms_per_query": round(ms, 3),
                           "recall10": round(rec, 3), "plan": plan}
                    print(json.dumps(row), flush=True)
                    table.append(row)
        print("\n| filter | kept | index on cat | form | ms/query | "
              "recall@10 | plan |")
        print("|---|---|---|---|---|---|---|")
        for r in table:
            print("| `%s` | %.1f %% | %s | %s | %.2f | %.3f | %s |" %
                  (r["filter"], 100 * r["kept"], r["index_on_cat"],
                   r["form"], r["ms_per_query"], r["recall10"], r["plan"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
