#!/usr/bin/env python3
"""Crash test of the vecidx SQLite extension: kill -9 at random moments.

    python3 tests/sqlite/crash_test.py [sqlite/vecidx_sqlite.so] [TRIALS]

Each trial forks a writer that runs random transactions on a database
(inserts, updates, deletes, savepoints rolled back, whole transactions
rolled back) against a plain table `docs` and two vecidx tables (flat and
HNSW) kept in step with it, and reports every COMMIT that returned through
a pipe. The parent kills it with SIGKILL after a random delay, then checks:

  - the database holds every transaction acknowledged, and at most one
    more (the one whose COMMIT may have finished unreported);
  - both vector tables hold exactly the rows of `docs`, with the same
    vectors;
  - searches agree with that, both through a connection opened after the
    crash (its cache built from the shadow tables) and through one kept
    open across all trials (its cache caught up or rebuilt after each
    crash and recovery): a k = all search returns exactly the ids of
    docs, and the flat table's top 10 are the exact ones.

Trials alternate between a WAL database and a rollback-journal one.
Default 200 trials (CRASH_TRIALS in the environment overrides). Ends with
"N passed, N failed".
"""

import json
import os
import random
import signal
import sqlite3
import struct
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EXT = os.path.join(HERE, "..", "..", "sqlite", "vecidx_sqlite")
DIM = 8
MAX_ROWS = 400


def connect(path):
    c = sqlite3.connect(path, isolation_level=None, timeout=30)
    c.enable_load_extension(True)
    c.load_extension(EXT)
    return c


def blob(v):
    return struct.pack("%df" % DIM, *v)


def setup(path, mode):
    c = connect(path)
    c.execute("PRAGMA journal_mode = %s" % mode)
    c.execute("PRAGMA synchronous = FULL")
    c.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, vec BLOB)")
    c.execute("CREATE TABLE meta(id INTEGER PRIMARY KEY, commits INT)")
    c.execute("INSERT INTO meta VALUES (0, 0)")
    c.execute("CREATE VIRTUAL TABLE vf USING vecidx(dim=%d, kind=flat)" % DIM)
    # vh keeps a cache file: new connections open it and catch up with
    # whatever the killed writers committed
    c.execute("CREATE VIRTUAL TABLE vh USING vecidx(dim=%d, kind=hnsw, M=8, "
              "ef_construction=40, threads=1, cache=1)" % DIM)
    return c


def writer(path, wfd, seed):
    """The child: random transactions until killed."""
    rng = random.Random(seed)
    c = connect(path)
    c.execute("PRAGMA synchronous = FULL")

    def put(i):
        v = blob([rng.uniform(-1, 1) for _ in range(DIM)])
        c.execute("INSERT OR REPLACE INTO docs VALUES (?, ?)", (i, v))
        for t in ("vf", "vh"):
            c.execute("INSERT OR REPLACE INTO %s(rowid, embedding) "
                      "VALUES (?, ?)" % t, (i, v))

    def delete(i):
        for t in ("docs", "vf", "vh"):
            c.execute("DELETE FROM %s WHERE %s = ?"
                      % (t, "id" if t == "docs" else "rowid"), (i,))

    while True:
        c.execute("BEGIN IMMEDIATE")
        for _ in range(rng.choice((1, 3, 10, 40))):
            r = rng.random()
            i = rng.randrange(1, MAX_ROWS)
            if r < 0.55:
                put(i)
            elif r < 0.85:
                delete(i)
            else:
                c.execute("SAVEPOINT s")
                put(i)
                delete(rng.randrange(1, MAX_ROWS))
                c.execute("ROLLBACK TO s" if rng.random() < 0.7
                          else "RELEASE s")
        if rng.random() < 0.15:
            c.execute("ROLLBACK")
            continue
        n = c.execute("UPDATE meta SET commits = commits + 1 RETURNING "
                      "commits").fetchone()[0]
        c.execute("COMMIT")
        os.write(wfd, struct.pack("<q", n))


def check(c, label, rng):
    docs = dict(c.execute("SELECT id, vec FROM docs"))
    for t in ("vf", "vh"):
        rows = dict(c.execute("SELECT rowid, embedding FROM %s" % t))
        assert rows == docs, "%s: %s differs from docs (%d rows vs %d)" % (
            label, t, len(rows), len(docs))
        if not docs:
            continue
        q = blob([rng.uniform(-1, 1) for _ in range(DIM)])
        got = [r[0] for r in c.execute(
            "SELECT rowid FROM %s WHERE embedding MATCH ? AND k = ?" % t,
            (q, len(docs)))]
        assert sorted(got) == sorted(docs), "%s: %s search returns %d of " \
            "%d rows; missing %s, extra %s; %s" % (
                label, t, len(set(got) & set(docs)), len(docs),
                sorted(set(docs) - set(got))[:10],
                [(r, c.execute("SELECT seq FROM %s_vectors WHERE id=?" % t, (r,)).fetchall(), c.execute("SELECT seq FROM %s_deleted WHERE id=?" % t, (r,)).fetchall()) for r in sorted(set(docs) - set(got))[:10]],
                c.execute("SELECT vecidx_info(?)", (t,)).fetchone()[0])
    if docs:
        qv = [rng.uniform(-1, 1) for _ in range(DIM)]
        want = sorted(docs, key=lambda i: (sum(
            (a - b) ** 2 for a, b in zip(struct.unpack("%df" % DIM, docs[i]),
                                         qv)), i))[:10]
        got = [r[0] for r in c.execute(
            "SELECT rowid FROM vf WHERE embedding MATCH ? AND k = 10",
            (blob(qv),))]
        assert got == want, "%s: flat top 10 %s, exact %s" % (label, got,
                                                              want)
    return len(docs)


def main():
    global EXT
    args = sys.argv[1:]
    if args and args[0].endswith(".so"):
        EXT = os.path.splitext(os.path.abspath(args.pop(0)))[0]
    trials = int(args[0]) if args else int(os.environ.get("CRASH_TRIALS",
                                                          200))
    rng = random.Random(int(os.environ.get("CRASH_SEED", "12345")))
    passed = failed = loads = 0
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="vecidx-crash-") as tmp:
        dbs = []
        for mode in ("wal", "delete"):
            path = os.path.join(tmp, mode + ".db")
            setup(path, mode).close()
            keeper = connect(path)   # open across every trial
            dbs.append((mode, path, keeper, [0]))
        for trial in range(trials):
            mode, path, keeper, acked = dbs[trial % 2]
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(rfd)
                try:
                    writer(path, wfd, rng.randrange(1 << 30) + trial)
                finally:
                    os._exit(3)
            os.close(wfd)
            time.sleep(rng.uniform(0.002, 0.06))
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            data = b""
            while True:
                chunk = os.read(rfd, 65536)
                if not chunk:
                    break
                data += chunk
            os.close(rfd)
            if len(data) >= 8:
                acked[0] = struct.unpack("<q", data[-8 - len(data) % 8:
                                                    len(data) - len(data) % 8])[0]
            try:
                assert os.WIFSIGNALED(status), "writer exited by itself: " \
                    "status %d" % status
                fresh = connect(path)
                commits = fresh.execute(
                    "SELECT commits FROM meta").fetchone()[0]
                assert acked[0] <= commits <= acked[0] + 1, \
                    "trial %d (%s): %d commits in the database, %d " \
                    "acknowledged" % (trial, mode, commits, acked[0])
                acked[0] = commits
                n = check(fresh, "trial %d (%s), new connection"
                          % (trial, mode), rng)
                check(keeper, "trial %d (%s), connection kept open"
                      % (trial, mode), rng)
                loads += json.loads(fresh.execute(
                    "SELECT vecidx_info('vh')").fetchone()[0])["cache_loads"]
                fresh.close()
                passed += 1
            except AssertionError as e:
                failed += 1
                print("FAIL", e)
                if failed > 5:
                    break
        for mode, path, keeper, acked in dbs:
            info = keeper.execute("SELECT vecidx_info('vh')").fetchone()[0]
            print("%s: %d commits survived; the kept connection's HNSW "
                  "cache: %s" % (mode, acked[0], info))
            keeper.close()
    print("crash trials: %d in %.1f s (last table size %d rows)"
          % (passed + failed, time.time() - start, n if passed else 0))
    print("new connections that opened the HNSW cache file: %d of %d"
          % (loads, passed))
    if passed > 10 and loads == 0:
        print("FAIL the cache file was never used")
        failed += 1
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
