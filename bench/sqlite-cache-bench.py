#!/usr/bin/env python3
"""First use of a vecidx SQLite table with and without its cache file.

    nice /usr/bin/python3 bench/sqlite-cache-bench.py SET [--rows N]
        [--passes 3] [--ext sqlite/vecidx_sqlite.so] [--dir /tmp]

SET is a directory with base.fvecs (e.g. /tmp/vecidx-data/synth-128-l2-100k).
Writes a database file with the first N base vectors in an HNSW table
(M 16, efC 200, cache=1), then times, in alternating passes, a new
connection's first KNN query (k = 10) with the cache file removed
(rebuild from the shadow table, then the file is written) and with it
in place (open, verify, catch up), and the cost of catching up after
1000 rows changed by another connection. Prints one JSON line per
measurement, best and worst of the passes.
"""

import argparse
import glob
import json
import os
import sqlite3
import struct
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def read_fvecs(path, n):
    with open(path, "rb") as f:
        data = f.read()
    d = struct.unpack_from("<i", data, 0)[0]
    row = 4 + 4 * d
    n = min(n, len(data) // row)
    return d, [data[i * row + 4:(i + 1) * row] for i in range(n)]


def connect(path, ext):
    c = sqlite3.connect(path, isolation_level=None)
    c.enable_load_extension(True)
    c.load_extension(ext)
    return c


def first_query(path, ext, q):
    c = connect(path, ext)
    t = time.perf_counter()
    c.execute("SELECT rowid FROM v WHERE embedding MATCH ? AND k = 10",
              (q,)).fetchall()
    dt = time.perf_counter() - t
    info = json.loads(c.execute("SELECT vecidx_info('v')").fetchone()[0])
    t = time.perf_counter()
    c.close()
    return dt, time.perf_counter() - t, info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("set")
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--ext", default=os.path.join(HERE, "..", "sqlite",
                                                  "vecidx_sqlite"))
    ap.add_argument("--dir", default="/tmp")
    a = ap.parse_args()
    ext = os.path.splitext(os.path.abspath(a.ext))[0]
    d, vecs = read_fvecs(os.path.join(a.set, "base.fvecs"), a.rows)
    path = os.path.join(a.dir, "vecidx-cache-bench.db")
    for f in glob.glob(path + "*"):
        os.remove(f)
    c = connect(path, ext)
    c.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=%d, kind=hnsw, M=16, "
              "ef_construction=200, cache=1)" % d)
    t = time.perf_counter()
    c.execute("BEGIN")
    c.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)",
                  ((i + 1, v) for i, v in enumerate(vecs)))
    c.execute("COMMIT")
    print(json.dumps({"insert_s": round(time.perf_counter() - t, 2),
                      "rows": len(vecs), "dim": d}))
    t = time.perf_counter()
    c.close()   # writes the first cache file
    print(json.dumps({"close_writing_cache_s":
                      round(time.perf_counter() - t, 3)}))
    files = lambda: [f for f in glob.glob(path + "-v.vxc.*")
                     if ".tmp-" not in f]
    res = {"rebuild": [], "rebuild_close": [], "cached": [],
           "caught_up_1000": []}
    for p in range(a.passes):
        for f in files():
            os.remove(f)
        dt, close, info = first_query(path, ext, vecs[p])
        assert info["builds"] == 1 and info["cache_saves"] == 1, info
        res["rebuild"].append(dt)
        res["rebuild_close"].append(close)
        dt, _, info = first_query(path, ext, vecs[p])
        assert info["cache_loads"] == 1 and info["builds"] == 0, info
        res["cached"].append(dt)
        # another connection changes 1000 rows (fewer than the refresh
        # threshold, so the file stays behind) and the next first use
        # catches up
        w = connect(path, ext)
        w.execute("BEGIN")
        for i in range(1000):
            w.execute("UPDATE v SET embedding = ? WHERE rowid = ?",
                      (vecs[(i + 7 * p + 1) % len(vecs)], i + 1))
        w.execute("COMMIT")
        w.close()
        dt, _, info = first_query(path, ext, vecs[p])
        assert info["cache_loads"] == 1 and info["catchups"] == 1, info
        res["caught_up_1000"].append(dt)
    size = sum(os.path.getsize(f) for f in files())
    for k, v in res.items():
        print(json.dumps({"measure": k, "best_s": round(min(v), 4),
                          "worst_s": round(max(v), 4), "passes": len(v)}))
    print(json.dumps({"cache_file_bytes": size}))
    for f in glob.glob(path + "*"):
        os.remove(f)


if __name__ == "__main__":
    main()
