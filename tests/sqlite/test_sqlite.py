#!/usr/bin/env python3
"""Tests of the vecidx SQLite extension through Python's sqlite3 module.

    python3 tests/sqlite/test_sqlite.py [sqlite/vecidx_sqlite.so] [NAME...]
    python3 -m pytest tests/sqlite/test_sqlite.py

Standard library only. Every test_* function runs on fresh databases in a
temporary directory; the script ends with "N passed, N failed" and exits
non-zero on failure. Names given on the command line select tests by
substring.
"""

import glob
import json
import math
import os
import random
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
EXT = os.path.join(HERE, "..", "..", "sqlite", "vecidx_sqlite")
TMP = None


def connect(path=":memory:", uri=False):
    c = sqlite3.connect(path, uri=uri, isolation_level=None)
    c.enable_load_extension(True)
    c.load_extension(EXT)
    c.enable_load_extension(False)
    return c


def blob(v):
    return struct.pack("%df" % len(v), *v)


def unblob(b):
    return list(struct.unpack("%df" % (len(b) // 4), b))


def rvec(rng, d):
    return [rng.uniform(-1, 1) for _ in range(d)]


def l2(a, b):
    return sum((x - y) * (x - y) for x, y in zip(a, b))


def cosd(a, b):
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    return 1 - sum(x * y for x, y in zip(a, b)) / (na * nb)


def knn(c, q, k, table="v", extra="", args=()):
    return c.execute(
        "SELECT rowid, distance FROM %s WHERE embedding MATCH ? AND k = ? %s"
        % (table, extra), (blob(q), k) + tuple(args)).fetchall()


def ids(rows):
    return [r[0] for r in rows]


def expect_error(fn, fragment):
    try:
        fn()
    except sqlite3.Error as e:
        assert fragment in str(e), "error %r lacks %r" % (str(e), fragment)
        return
    raise AssertionError("no error (expected %r)" % fragment)


def fill(c, n, d, rng, table="v", start=1):
    vecs = {}
    c.execute("BEGIN")
    for i in range(start, start + n):
        v = rvec(rng, d)
        vecs[i] = v
        c.execute("INSERT INTO %s(rowid, embedding) VALUES (?, ?)" % table,
                  (i, blob(v)))
    c.execute("COMMIT")
    return vecs


def kind_table(c, kind, d=8):
    """Vector table v of that kind; IVF-PQ with lists few enough to train
    on a few thousand rows."""
    extra = ", nlist=16, train_size=1000" if kind == "ivfpq" else ""
    c.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=%d, kind=%s%s)"
              % (d, kind, extra))


def brute(vecs, q, k, allowed=None, dist=l2):
    cand = [(dist(v, q), i) for i, v in vecs.items()
            if allowed is None or i in allowed]
    cand.sort()
    return [i for _, i in cand[:k]]


# ---- Tests ------------------------------------------------------------------

def test_basic_crud():
    c = connect()
    c.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=3, metric=l2, "
              "kind=flat)")
    c.execute("INSERT INTO v(rowid, embedding) VALUES (1, ?)",
              (blob([1, 0, 0]),))
    c.execute("INSERT INTO v(rowid, embedding) VALUES (2, '[0, 1, 0]')")
    c.execute("INSERT INTO v(embedding) VALUES (' [0,0,1.5e0] ')")
    assert c.execute("SELECT max(rowid) FROM v").fetchone()[0] == 3
    assert c.execute("SELECT count(*) FROM v").fetchone()[0] == 3
    assert unblob(c.execute("SELECT embedding FROM v WHERE rowid = 3")
                  .fetchone()[0]) == [0, 0, 1.5]
    r = knn(c, [1, 0.1, 0], 2)
    assert ids(r) == [1, 2], r
    assert abs(r[0][1] - 0.01) < 1e-6
    c.execute("UPDATE v SET embedding = '[1, 0.1, 0]' WHERE rowid = 2")
    assert ids(knn(c, [1, 0.1, 0], 1)) == [2]
    c.execute("UPDATE v SET rowid = 20 WHERE rowid = 2")
    assert ids(knn(c, [1, 0.1, 0], 1)) == [20]
    assert sorted(ids(c.execute("SELECT rowid FROM v").fetchall())) == \
        [1, 3, 20]
    c.execute("DELETE FROM v WHERE rowid = 1")
    assert ids(knn(c, [1, 0, 0], 5)) == [20, 3]
    expect_error(lambda: c.execute(
        "INSERT INTO v(rowid, embedding) VALUES (3, '[1,1,1]')"),
        "UNIQUE constraint failed")
    c.execute("INSERT OR REPLACE INTO v(rowid, embedding) VALUES "
              "(3, '[1,1,1]')")
    assert unblob(c.execute("SELECT embedding FROM v WHERE rowid = 3")
                  .fetchone()[0]) == [1, 1, 1]
    c.execute("INSERT OR IGNORE INTO v(rowid, embedding) VALUES "
              "(3, '[2,2,2]')")
    assert unblob(c.execute("SELECT embedding FROM v WHERE rowid = 3")
                  .fetchone()[0]) == [1, 1, 1]
    # point lookups and IN without MATCH
    assert ids(c.execute("SELECT rowid FROM v WHERE rowid IN (3, 20, 99) "
                         "ORDER BY rowid").fetchall()) == [3, 20]
    assert c.execute("SELECT count(*) FROM v WHERE rowid = 1").fetchone()[0] \
        == 0
    assert c.execute("SELECT vecidx_version()").fetchone()[0]


def test_errors():
    c = connect()
    expect_error(lambda: c.execute(
        "CREATE VIRTUAL TABLE a USING vecidx(metric=l2)"), "dim=N")
    expect_error(lambda: c.execute(
        "CREATE VIRTUAL TABLE a USING vecidx(dim=4, metric=nope)"),
        'bad argument "metric=nope": metric is one of l2, ip, dot, cos, '
        'cosine')
    expect_error(lambda: c.execute(
        "CREATE VIRTUAL TABLE a USING vecidx(dim=4, kind=lsh)"),
        "kind is one of hnsw, flat, ivfpq")
    expect_error(lambda: c.execute(
        "CREATE VIRTUAL TABLE a USING vecidx(dim=4, storage=f64)"),
        "storage is one of f32, f16, i8, bin")
    expect_error(lambda: c.execute(
        "CREATE VIRTUAL TABLE a USING vecidx(dim=4, colour=red)"),
        "unknown option")
    expect_error(lambda: c.execute(
        "CREATE VIRTUAL TABLE a USING vecidx(dim=4, kind=ivfpq, pq_m=9)"),
        "vecidx")
    c.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=4, metric=cos)")
    ins = "INSERT INTO v(rowid, embedding) VALUES (?, ?)"
    expect_error(lambda: c.execute(ins, (1, blob([1, 2, 3]))),
                 "12 bytes is not 4 float32")
    expect_error(lambda: c.execute(ins, (1, "[1,2,3]")), "has 3 numbers")
    expect_error(lambda: c.execute(ins, (1, "[1,2,3,4,5]")),
                 "more than 4")
    expect_error(lambda: c.execute(ins, (1, "[1,2,,3]")), "not a JSON")
    expect_error(lambda: c.execute(ins, (1, "1,2,3,4")), "not a JSON")
    expect_error(lambda: c.execute(ins, (1, None)), "NULL")
    expect_error(lambda: c.execute(ins, (1, 42)), "a number")
    expect_error(lambda: c.execute(ins, (1, blob([0, 0, 0, 0]))), "zero")
    expect_error(lambda: c.execute(ins, (1, blob([1, float("nan"), 0, 0]))),
                 "vecidx")
    expect_error(lambda: c.execute(ins, ("x", "[1,2,3,4]")), "mismatch")
    assert c.execute("SELECT count(*) FROM v").fetchone()[0] == 0
    c.execute(ins, (1, "[1,2,3,4]"))
    # without k a MATCH hands out every row, nearest first
    assert c.execute("SELECT rowid FROM v WHERE embedding MATCH "
                     "'[1,2,3,4]'").fetchall() == [(1,)]
    expect_error(lambda: knn(c, [1, 2, 3, 4], 0), "out of range")
    expect_error(lambda: c.execute(
        "SELECT rowid FROM v WHERE embedding MATCH '[1,2,3,4]' AND "
        "k = 'x'").fetchall(), "integer")
    expect_error(lambda: c.execute(
        "SELECT rowid FROM v WHERE embedding MATCH '[0,0,0,0]' AND k = 1")
        .fetchall(), "zero")
    expect_error(lambda: c.execute(
        "SELECT rowid FROM v WHERE embedding MATCH '[1,2]' AND k = 1")
        .fetchall(), "MATCH")
    # The shadow tables are protected against direct writes from SQL in
    # defensive mode, and the table still works after all those errors.
    assert ids(knn(c, [1, 2, 3, 4], 3)) == [1]


def test_option_names():
    # Every name of metric, kind and storage (any case) makes a table whose
    # distances are the metric's; aliases give the same metric.
    c = connect()
    a, b = [3, 4], [1, 0]
    want = {"l2": l2(a, b), "ip": -3.0, "dot": -3.0, "cos": cosd(a, b),
            "cosine": cosd(a, b)}
    n = 0
    for metric, dist in want.items():
        for kind in ("flat", "HNSW", "ivfpq"):
            for storage in ("f32", "F16", "i8", "bin"):
                if kind == "ivfpq" and storage != "f32":
                    continue
                n += 1
                extra = ", nlist=1, pq_m=1, train_size=1" \
                    if kind == "ivfpq" else ""
                if storage == "bin":
                    extra += ", keep_vectors=1"
                sql = ("CREATE VIRTUAL TABLE t%d USING vecidx(dim=2, "
                       "metric=%s, kind=%s, storage=%s%s)"
                       % (n, metric.upper() if n % 2 else metric, kind,
                          storage, extra))
                if metric == "l2" and storage == "bin":
                    # refused by vecidx itself, so the name got through
                    expect_error(lambda: c.execute(sql), "binary storage")
                    continue
                c.execute(sql)
                c.execute("INSERT INTO t%d(rowid, embedding) VALUES "
                          "(1, '[3, 4]')" % n)
                got = knn(c, b, 1, "t%d" % n)
                assert ids(got) == [1], (metric, kind, storage, got)
                if storage == "f32" and kind != "ivfpq":
                    assert abs(got[0][1] - dist) < 1e-5, \
                        (metric, kind, got, dist)


def test_sqlite_vec_declaration():
    c = connect()
    c.execute("CREATE VIRTUAL TABLE v USING vecidx(vec float[2], "
              "metric=ip, kind=flat)")
    c.execute("INSERT INTO v(rowid, vec) VALUES (1, '[1, 0]'), "
              "(2, '[2, 0]'), (3, '[0, 5]')")
    r = c.execute("SELECT rowid, distance FROM v WHERE vec MATCH '[1, 0]' "
                  "AND k = 2").fetchall()
    assert r == [(2, -2.0), (1, -1.0)], r


def test_exact_flat_and_hnsw_recall():
    rng = random.Random(1)
    d, n = 16, 2000
    c = connect()
    c.execute("CREATE VIRTUAL TABLE f USING vecidx(dim=16, kind=flat)")
    c.execute("CREATE VIRTUAL TABLE h USING vecidx(dim=16, kind=hnsw, M=16, "
              "ef_construction=100)")
    vecs = fill(c, n, d, rng, "f")
    c.execute("INSERT INTO h(rowid, embedding) SELECT rowid, embedding "
              "FROM f")
    hits = total = 0
    for _ in range(20):
        q = rvec(rng, d)
        truth = brute(vecs, q, 10)
        assert ids(knn(c, q, 10, "f")) == truth
        got = ids(c.execute(
            "SELECT rowid FROM h WHERE embedding MATCH ? AND k = 10 AND "
            "ef = 128", (blob(q),)).fetchall())
        assert len(got) == 10
        hits += len(set(got) & set(truth))
        total += 10
    assert hits / total >= 0.95, hits / total
    # ORDER BY distance is consumed, and the results come sorted
    r = c.execute("SELECT rowid, distance FROM h WHERE embedding MATCH ? "
                  "AND k = 20 ORDER BY distance", (blob(q),)).fetchall()
    assert [x[1] for x in r] == sorted(x[1] for x in r)


def test_cosine_distance():
    c = connect()
    c.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=2, metric=cos)")
    c.execute("INSERT INTO v(rowid, embedding) VALUES (1, '[1, 0]'), "
              "(2, '[0, 3]'), (3, '[-2, 0]')")
    r = knn(c, [1, 1], 3)
    assert ids(r)[2] == 3
    assert abs(r[0][1] - cosd([1, 0], [1, 1])) < 1e-6
    assert abs(r[2][1] - 2 + cosd([1, 0], [1, 1])) < 1e-6


def test_filter_in_subquery():
    rng = random.Random(2)
    d, n = 8, 3000
    for kind in ("flat", "hnsw", "ivfpq"):
        c = connect()
        c.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, cat INT)")
        kind_table(c, kind)
        vecs = fill(c, n, d, rng)
        c.execute("BEGIN")
        for i in vecs:
            c.execute("INSERT INTO docs VALUES (?, ?)", (i, i % 50))
        c.execute("COMMIT")
        for cat, k in ((7, 10), (3, 100), (5, 60), (9, 1)):
            allowed = {i for i in vecs if i % 50 == cat}
            q = rvec(rng, d)
            sql = ("SELECT rowid, distance FROM v WHERE embedding MATCH ? "
                   "AND k = ? AND rowid IN (SELECT id FROM docs WHERE "
                   "cat = ?)")
            plan = " ".join(r[3] for r in c.execute(
                "EXPLAIN QUERY PLAN " + sql, (blob(q), k, cat)))
            assert "INDEX 19" in plan, plan  # MATCH, k and IN in the search
            got = ids(c.execute(sql, (blob(q), k, cat)).fetchall())
            want = min(k, len(allowed))
            if kind != "ivfpq":
                assert len(got) == want, (kind, len(got), want)
            assert set(got) <= allowed
            truth = brute(vecs, q, k, allowed)
            if kind == "flat":
                assert got == truth
            else:
                assert len(set(got) & set(truth)) >= 0.8 * len(truth), kind
        # an empty allowed set, literal lists, and a join for the metadata
        assert knn(c, rvec(rng, d), 5, extra="AND rowid IN (SELECT id FROM "
                   "docs WHERE cat = 1000)") == []
        assert sorted(ids(knn(c, rvec(rng, d), 5,
                              extra="AND rowid IN (3, 4, 99999)"))) == [3, 4]
        r = c.execute(
            "SELECT d.id, d.cat, v.distance FROM v JOIN docs d ON "
            "d.id = v.rowid WHERE v.embedding MATCH ? AND v.k = 10 AND "
            "v.rowid IN (SELECT id FROM docs WHERE cat = 7) ORDER BY "
            "v.distance", (blob(q),)).fetchall()
        assert len(r) == 10 and all(x[1] == 7 for x in r)


def test_allowed_rowids():
    # allowed = (SELECT vecidx_rowids(id) FROM ...) hands the search the
    # same set as rowid IN (SELECT id FROM ...), as one value: the same
    # results on every kind, alone, with a join for the columns, streamed,
    # and together with rowid IN or = (the rows in both).
    rng = random.Random(30)
    d, n = 8, 3000
    for kind in ("flat", "hnsw", "ivfpq"):
        c = connect()
        c.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, price REAL)")
        c.execute("CREATE INDEX docs_price ON docs(price)")
        kind_table(c, kind)
        vecs = fill(c, n, d, rng)
        price = {i: rng.uniform(0, 100) for i in vecs}
        c.executemany("INSERT INTO docs VALUES (?, ?)", price.items())
        al = ("allowed = (SELECT vecidx_rowids(id) FROM docs WHERE price "
              "BETWEEN ? AND ?)")
        inl = "rowid IN (SELECT id FROM docs WHERE price BETWEEN ? AND ?)"
        for lo, hi, k in ((10, 11, 10), (10, 40, 10), (0, 100, 50),
                          (10, 10.02, 10), (200, 300, 5)):
            allowed = {i for i, p in price.items() if lo <= p <= hi}
            q = rvec(rng, d)
            plan = " ".join(r[3] for r in c.execute(
                "EXPLAIN QUERY PLAN SELECT rowid FROM v WHERE embedding "
                "MATCH ? AND k = ? AND " + al, (blob(q), k, lo, hi)))
            assert "INDEX 515" in plan, plan   # MATCH, k, allowed
            got = knn(c, q, k, extra="AND " + al, args=(lo, hi))
            assert got == knn(c, q, k, extra="AND " + inl, args=(lo, hi)), \
                (kind, lo, hi)
            if kind != "ivfpq":
                assert_topk(got, vecs, q, k, allowed, exact=kind == "flat")
            assert set(ids(got)) <= allowed
            rows = c.execute(
                "SELECT v.rowid, v.distance, d.price FROM v JOIN docs d ON "
                "d.id = v.rowid WHERE v.embedding MATCH ? AND v.k = ? AND "
                "v." + al + " ORDER BY v.distance",
                (blob(q), k, lo, hi)).fetchall()
            assert [r[:2] for r in rows] == got
            # streamed: every allowed row once, nearest first (IVF-PQ by
            # its code distances)
            rows = c.execute("SELECT rowid, distance FROM v WHERE "
                             "embedding MATCH ? AND " + al,
                             (blob(q), lo, hi)).fetchall()
            assert sorted(ids(rows)) == sorted(allowed)
            assert [r[1] for r in rows] == sorted(r[1] for r in rows)
            if kind != "ivfpq":
                assert_topk(rows, vecs, q, len(allowed), allowed)
        # both constraints: the rows in both
        q = rvec(rng, d)
        both = {i for i, p in price.items() if 10 <= p <= 60 and i % 3 == 0}
        got = knn(c, q, 10, extra="AND %s AND rowid IN (SELECT id FROM docs "
                  "WHERE id %% 3 = 0)" % al, args=(10, 60))
        assert len(got) == 10 and set(ids(got)) <= both, got
        if kind == "flat":
            assert_topk(got, vecs, q, 10, both)
        one = min(both)
        out = min(i for i, p in price.items() if p > 60)
        for r, want in ((one, [one]), (out, [])):
            assert ids(knn(c, q, 3, extra="AND %s AND rowid = ?" % al,
                           args=(10, 60, r))) == want
        # an empty set, NULL, a literal set, and values that are no rowids
        assert knn(c, q, 5, extra="AND allowed = (SELECT vecidx_rowids(id) "
                   "FROM docs WHERE 0)") == []
        assert knn(c, q, 5, extra="AND allowed = NULL") == []
        got = knn(c, q, 5, extra="AND allowed = (SELECT vecidx_rowids(x) "
                  "FROM (SELECT 7 AS x UNION ALL SELECT 7 UNION ALL SELECT "
                  "'a' UNION ALL SELECT NULL UNION ALL SELECT 2.5 UNION ALL "
                  "SELECT 99999 UNION ALL SELECT 9))")
        assert sorted(ids(got)) == [7, 9], got
        # anything else is refused, as is allowed = without a search
        for bad in ("x'00'", "'vxrowids'", "?"):
            expect_error(lambda: knn(c, q, 5, extra="AND allowed = " + bad,
                                     args=(blob(q),) if bad == "?" else ()),
                         "allowed = takes the value of vecidx_rowids()")
        expect_error(lambda: c.execute(
            "SELECT rowid FROM v WHERE allowed = (SELECT vecidx_rowids(id) "
            "FROM docs)").fetchall(), "no query solution")


def assert_topk(rows, vecs, q, k, allowed=None, exact=True, dist=l2):
    """rows (rowid, distance, ...) are a top k of vecs among allowed:
    min(k, allowed) distinct allowed rows, nearest first, with their
    distances; exact: the k nearest (compared by distance, so that ties and
    float32 rounding cannot fail it), else at least 80 % of them."""
    cand = sorted((dist(v, q), i) for i, v in vecs.items()
                  if allowed is None or i in allowed)
    want = min(k, len(cand))
    got = [r[0] for r in rows]
    assert len(got) == want, ("count", len(got), want)
    assert len(set(got)) == want, "duplicates"
    assert allowed is None or set(got) <= allowed, "filtered-out rows"
    d = [r[1] for r in rows]
    assert d == sorted(d), "not nearest first"
    for i, x in zip(got, d):
        assert abs(x - dist(vecs[i], q)) <= 1e-4 * (1 + abs(x)), (i, x)
    if want == 0:
        return
    if exact:
        kth = cand[want - 1][0]
        assert d[-1] <= kth + 1e-4 * (1 + kth), (d[-1], kth)
    else:
        truth = {i for _, i in cand[:want]}
        assert len(truth & set(got)) >= 0.8 * want, (len(truth & set(got)))


def make_docs(n, kind="flat", index=False, seed=3, extra=""):
    rng = random.Random(seed)
    c = connect()
    c.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, cat INT, "
              "title TEXT)")
    if index:
        c.execute("CREATE INDEX docs_cat ON docs(cat)")
    c.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=8, kind=%s%s)"
              % (kind, extra))
    vecs = fill(c, n, 8, rng)
    c.executemany("INSERT INTO docs VALUES (?, ?, ?)",
                  [(i, i % 50, "doc %d" % i) for i in vecs])
    return c, vecs, rng


def test_join_forms():
    # Every way of writing a filtered KNN join that the README says works,
    # with the filter kept by 2 %, 80 %, 0.7 % and none of the rows, with and
    # without an index on the filtered column (SQLite then runs either
    # table first), on an exact and an approximate index: min(k, rows
    # kept) results, the exact top k for the flat index and for the joins
    # on either.
    filters = [("cat = 7", lambda i: i % 50 == 7),
               ("cat < 40", lambda i: i % 50 < 40),
               ("cat = 7 AND id % 3 = 0", lambda i: i % 50 == 7 and
                i % 3 == 0),
               ("cat = 1000", lambda i: False)]
    forms = [
        # filter as an allowed set, with and without a join for columns
        ("SELECT v.rowid, v.distance FROM v WHERE v.embedding MATCH :q "
         "AND v.k = :k AND v.rowid IN (SELECT id FROM docs d WHERE {f})",
         True),
        ("SELECT v.rowid, v.distance, d.title FROM v JOIN docs d ON "
         "d.id = v.rowid WHERE v.embedding MATCH :q AND v.k = :k AND "
         "v.rowid IN (SELECT id FROM docs d WHERE {f}) ORDER BY v.distance",
         True),
        ("SELECT v.rowid, v.distance FROM v WHERE v.embedding MATCH :q "
         "AND v.rowid IN (SELECT id FROM docs d WHERE {f}) "
         "ORDER BY v.distance LIMIT :k", True),
        # plain joins with LIMIT, both ways round and as a comma join
        ("SELECT d.id, v.distance FROM docs d JOIN v ON v.rowid = d.id "
         "WHERE {f} AND v.embedding MATCH :q ORDER BY v.distance LIMIT :k",
         False),
        ("SELECT v.rowid, v.distance FROM v JOIN docs d ON d.id = v.rowid "
         "WHERE v.embedding MATCH :q AND {f} ORDER BY v.distance LIMIT :k",
         False),
        ("SELECT v.rowid, v.distance FROM v, docs d WHERE d.id = v.rowid "
         "AND {f} AND v.embedding MATCH :q ORDER BY v.distance LIMIT :k",
         False),
        # the order forced: the vector table inside the other's loop
        ("SELECT d.id, v.distance FROM docs d CROSS JOIN v ON "
         "v.rowid = d.id WHERE {f} AND v.embedding MATCH :q "
         "ORDER BY v.distance LIMIT :k", False),
        ("SELECT d.id, v.distance FROM docs d LEFT JOIN v ON "
         "v.rowid = d.id AND v.embedding MATCH :q WHERE {f} AND "
         "v.distance IS NOT NULL ORDER BY v.distance LIMIT :k", False),
    ]
    for kind, extra in (("flat", ""), ("hnsw", ", M=16, ef=32")):
        for index in (False, True):
            c, vecs, rng = make_docs(3000, kind, index, extra=extra)
            for fsql, fpy in filters:
                allowed = {i for i in vecs if fpy(i)}
                for k in (1, 10, 100):
                    q = rvec(rng, 8)
                    for sql, pushed in forms:
                        sql = sql.format(f=fsql)
                        args = {"q": blob(q), "k": k}
                        plan = " ".join(r[3] for r in c.execute(
                            "EXPLAIN QUERY PLAN " + sql, args))
                        if pushed:   # the IN list went into the search
                            n = int(plan.split("INDEX ")[1].split(":")[0])
                            assert n & 16, plan
                        rows = c.execute(sql, args).fetchall()
                        try:
                            # joins search each row alone or stream every
                            # row exactly: the exact top k on any kind
                            assert_topk(rows, vecs, q, k, allowed,
                                        exact=kind == "flat" or not pushed)
                        except AssertionError as e:
                            raise AssertionError((kind, index, fsql, k, sql,
                                                  plan, e))


def test_join_indexed_range_runs_filter_first():
    # A stream costs a pass over the table before its first row, so in a
    # join SQLite should run an indexed filter first and search the rows
    # it keeps one by one -- a range too, once ANALYZE has told it how many
    # rows the other table has. It streamed (the pass, then every row the
    # filter rejects) when streams were costed as a few searches.
    rng = random.Random(29)
    d, n = 16, 20000
    c = connect()
    c.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, price REAL)")
    c.execute("CREATE INDEX docs_price ON docs(price)")
    c.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=%d, kind=flat)" % d)
    vecs = {i: rvec(rng, d) for i in range(1, n + 1)}
    price = {i: rng.uniform(0, 100) for i in vecs}
    c.execute("BEGIN")
    c.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)",
                  ((i, blob(v)) for i, v in vecs.items()))
    c.executemany("INSERT INTO docs VALUES (?, ?)", price.items())
    c.execute("COMMIT")
    c.execute("ANALYZE")
    q = rvec(rng, d)
    sql = ("SELECT d.id, v.distance FROM docs d JOIN v ON v.rowid = d.id "
           "WHERE d.price BETWEEN ? AND ? AND v.embedding MATCH ? "
           "ORDER BY v.distance LIMIT 10")
    args = (10.0, 11.0, blob(q))
    knn(c, q, 1)                 # the index is built: its count is known
    plan = [r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql, args)]
    assert plan[0].startswith("SEARCH d USING COVERING INDEX docs_price"), \
        plan
    allowed = {i for i, p in price.items() if 10.0 <= p <= 11.0}
    assert_topk(c.execute(sql, args).fetchall(), vecs, q, 10, allowed)


def test_join_with_k_refused():
    # k = N with the table joined by rowid cannot be exact (the other
    # table's filter is applied to the N found, or SQLite runs one search
    # per joined row): an error that says what to write instead, whichever
    # table SQLite runs first.
    for index in (False, True):
        c, vecs, rng = make_docs(500, index=index)
        q = blob(rvec(rng, 8))
        for sql in (
                "SELECT d.id FROM docs d JOIN v ON v.rowid = d.id WHERE "
                "d.cat = 3 AND v.embedding MATCH ? AND v.k = 10",
                "SELECT d.id FROM v JOIN docs d ON d.id = v.rowid WHERE "
                "v.embedding MATCH ? AND v.k = 10 AND d.cat = 3 "
                "ORDER BY v.distance LIMIT 10",
                "SELECT d.id FROM v, docs d WHERE d.id = v.rowid AND "
                "v.embedding MATCH ? AND v.k = 10",
                # a subquery SQLite flattens into the same join
                "SELECT d.id FROM (SELECT rowid AS r FROM v WHERE "
                "embedding MATCH ? AND k = 10) JOIN docs d ON d.id = r"):
            expect_error(lambda: c.execute(sql, (q,)).fetchall(),
                         "write ORDER BY distance LIMIT N instead of k")
        # a materialized subquery is one search, then the join: the k
        # nearest that pass the filter, as asked
        allowed = {i for i in vecs if i % 50 < 25}
        rows = c.execute(
            "WITH knn AS MATERIALIZED (SELECT rowid AS r, distance FROM v "
            "WHERE embedding MATCH ? AND k = 40) SELECT r, distance FROM knn "
            "JOIN docs d ON d.id = r WHERE d.cat < 25 ORDER BY distance",
            (q,)).fetchall()
        top = brute(vecs, unblob(q), 40)
        assert ids(rows) == [i for i in top if i in allowed]
        # a correlated subquery is a search of one row per outer row
        rows = c.execute(
            "SELECT d.id, (SELECT distance FROM v WHERE embedding MATCH ?1 "
            "AND k = 1 AND rowid = d.id) FROM docs d WHERE d.cat = 3",
            (q,)).fetchall()
        assert len(rows) == 10
        for i, dd in rows:
            assert abs(dd - l2(vecs[i], unblob(q))) < 1e-4


def test_stream_without_k():
    # MATCH without k or LIMIT: every row exactly once, exactly nearest
    # first, on every kind -- the flat index across its growing searches,
    # with many rows at equal distances (each search cuts through them
    # somewhere else); HNSW and IVF-PQ in one exact pass. The graph is
    # sparse and IVF-PQ probes one list of 16, so that any approximate
    # search smaller than the table misses rows: streams made of such
    # searches lost some of them (or, handing them out when found later,
    # would break the order).
    rng = random.Random(11)
    d, n = 8, 1500
    for kind, extra in (("flat", ""),
                        ("hnsw", ", M=4, ef=8, ef_construction=16"),
                        ("ivfpq", ", nlist=16, nprobe=1, pq_m=4, "
                         "train_size=500, keep_vectors=1, refine=2")):
        c = connect()
        c.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, cat INT)")
        c.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=%d, kind=%s%s)"
                  % (d, kind, extra))
        vecs = fill(c, n, d, rng)
        c.execute("BEGIN")
        for i in range(5000, 5300):   # 300 copies of two vectors
            vecs[i] = [.5] * d if i % 2 else [-.5, .5] * (d // 2)
            c.execute("INSERT INTO v(rowid, embedding) VALUES (?, ?)",
                      (i, blob(vecs[i])))
        c.executemany("INSERT INTO docs VALUES (?, ?)",
                      [(i, i % 50) for i in vecs])
        c.execute("COMMIT")
        for q in [[.5] * d] + [rvec(rng, d) for _ in range(5)]:
            for order in ("", " ORDER BY distance"):
                rows = c.execute("SELECT rowid, distance FROM v WHERE "
                                 "embedding MATCH ?" + order,
                                 (blob(q),)).fetchall()
                try:
                    assert_topk(rows, vecs, q, len(vecs))
                except AssertionError as e:
                    raise AssertionError((kind, order, e))
        # stopped early by SQLite's LIMIT and OFFSET: the same rows as the
        # whole stream, so the exact top LIMIT + OFFSET
        q = rvec(rng, d)
        all_rows = c.execute("SELECT rowid, distance FROM v WHERE embedding "
                             "MATCH ?", (blob(q),)).fetchall()
        for lim, off in ((0, 0), (1, 0), (5, 3), (40, 17), (-1, 990),
                         (3, -2)):
            got = c.execute("SELECT rowid, distance FROM v WHERE embedding "
                            "MATCH ? ORDER BY distance LIMIT ? OFFSET ?",
                            (blob(q), lim, off)).fetchall()
            o = max(off, 0)
            want = all_rows[o:] if lim < 0 else all_rows[o:o + lim]
            assert got == want, (kind, lim, off, got, want)
        assert_topk(all_rows[:57], vecs, q, 57)
        n_all = c.execute("SELECT count(*) FROM v WHERE embedding MATCH ?",
                          (blob(q),)).fetchone()[0]
        assert n_all == len(vecs), (kind, n_all)
        # a literal LIMIT and OFFSET (passed to the table by SQLite 3.41+)
        got = c.execute("SELECT rowid, distance FROM v WHERE embedding "
                        "MATCH ? LIMIT 4 OFFSET 2", (blob(q),)).fetchall()
        assert ids(got) == ids(all_rows[2:6]) or \
            sqlite3.sqlite_version_info >= (3, 41), (got, all_rows[:6])
        # over an allowed set, and joined to a filter SQLite applies to the
        # stream: every row that passes, nearest first
        allowed = {i for i in vecs if i % 50 < 20}
        rows = c.execute("SELECT rowid, distance FROM v WHERE embedding "
                         "MATCH ? AND rowid IN (SELECT id FROM docs WHERE "
                         "cat < 20)", (blob(q),)).fetchall()
        assert_topk(rows, vecs, q, len(allowed), allowed)
        few = {i for i in vecs if i % 50 == 7 and i % 3 == 0}
        rows = c.execute("SELECT v.rowid, v.distance FROM v JOIN docs d ON "
                         "d.id = v.rowid WHERE v.embedding MATCH ? AND "
                         "d.cat = 7 AND d.id % 3 = 0 ORDER BY v.distance "
                         "LIMIT 1000", (blob(q),)).fetchall()
        assert_topk(rows, vecs, q, len(few), few)
        # one row: its distance, with or without k
        for extra in ("", "AND k = 3"):
            r = c.execute("SELECT rowid, distance FROM v WHERE embedding "
                          "MATCH ? AND rowid = 5 " + extra,
                          (blob(q),)).fetchall()
            assert r[0][0] == 5 and len(r) == 1
            assert abs(r[0][1] - l2(vecs[5], q)) < 1e-5


def test_transactions_and_savepoints():
    rng = random.Random(4)
    c = connect()
    c.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=4, kind=hnsw)")
    vecs = fill(c, 200, 4, rng)
    q = vecs[17]
    assert ids(knn(c, q, 1)) == [17]

    c.execute("BEGIN")
    c.execute("DELETE FROM v WHERE rowid = 17")
    c.execute("INSERT INTO v(rowid, embedding) VALUES (1000, ?)", (blob(q),))
    c.execute("UPDATE v SET embedding = ? WHERE rowid = 18", (blob(q),))
    assert sorted(ids(knn(c, q, 2))) == [18, 1000]   # own writes visible
    c.execute("ROLLBACK")
    assert ids(knn(c, q, 1)) == [17]
    assert knn(c, vecs[18], 1)[0] == (18, 0.0)
    assert c.execute("SELECT count(*) FROM v").fetchone()[0] == 200

    c.execute("BEGIN")
    c.execute("INSERT INTO v(rowid, embedding) VALUES (2000, ?)", (blob(q),))
    c.execute("SAVEPOINT a")
    c.execute("DELETE FROM v WHERE rowid = 17")
    c.execute("SAVEPOINT b")
    c.execute("DELETE FROM v WHERE rowid = 2000")
    assert ids(knn(c, q, 1)) != [17] and ids(knn(c, q, 1)) != [2000]
    c.execute("ROLLBACK TO b")
    assert ids(knn(c, q, 1)) == [2000]
    c.execute("ROLLBACK TO a")
    assert sorted(ids(knn(c, q, 2))) == [17, 2000]
    c.execute("DELETE FROM v WHERE rowid = 17")
    c.execute("RELEASE a")
    assert ids(knn(c, q, 1)) == [2000]
    c.execute("COMMIT")
    assert ids(knn(c, q, 1)) == [2000]
    assert c.execute("SELECT count(*) FROM v").fetchone()[0] == 200

    # a statement that fails half-way inside a transaction: its earlier
    # rows are undone, the transaction's earlier statements kept
    c.execute("BEGIN")
    c.execute("INSERT INTO v(rowid, embedding) VALUES (3000, '[1,2,3,4]')")
    expect_error(lambda: c.execute(
        "INSERT INTO v(rowid, embedding) VALUES (3001, '[1,1,1,1]'), "
        "(3002, '[2,2,2,2]'), (3001, '[3,3,3,3]')"), "UNIQUE")
    assert c.execute("SELECT count(*) FROM v WHERE rowid > 2999") \
        .fetchone()[0] == 1
    assert ids(knn(c, [1, 1, 1, 1], 1, extra="AND rowid > 0")) != [3001]
    got = set(ids(knn(c, [2, 2, 2, 2], 300)))
    assert 3001 not in got and 3002 not in got and 3000 in got
    c.execute("COMMIT")
    info = c.execute("SELECT vecidx_info('v')").fetchone()[0]
    assert '"count":201' in info and '"builds":1,' in info, info


def test_durable_after_commit_and_reopen():
    rng = random.Random(5)
    path = os.path.join(TMP, "durable.db")
    c = connect(path)
    c.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=8, kind=hnsw)")
    vecs = fill(c, 300, 8, rng)
    c.execute("BEGIN")
    c.execute("DELETE FROM v WHERE rowid <= 100")
    c.execute("ROLLBACK")
    c.execute("DELETE FROM v WHERE rowid <= 50")
    c.close()
    c = connect(path)
    assert c.execute("SELECT count(*) FROM v").fetchone()[0] == 250
    for i in (51, 120, 300):
        assert knn(c, vecs[i], 1) == [(i, 0.0)]
    assert ids(knn(c, vecs[10], 250)).count(10) == 0
    c.execute("DROP TABLE v")
    left = c.execute("SELECT name FROM sqlite_master WHERE name LIKE "
                     "'v\\_%' ESCAPE '\\'").fetchall()
    assert left == [], left


def test_rename():
    c = connect()
    c.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=2, kind=flat)")
    c.execute("INSERT INTO v(rowid, embedding) VALUES (1, '[1, 2]')")
    c.execute("ALTER TABLE v RENAME TO w")
    assert ids(knn(c, [1, 2], 1, "w")) == [1]
    c.execute("INSERT INTO w(rowid, embedding) VALUES (2, '[1, 3]')")
    names = sorted(r[0] for r in c.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"))
    assert names == ["w", "w_deleted", "w_state", "w_txlog", "w_vectors"], \
        names


def test_two_connections_catch_up():
    rng = random.Random(6)
    path = os.path.join(TMP, "two.db")
    for mode in ("wal", "delete"):
        if os.path.exists(path):
            os.remove(path)
        a = connect(path)
        a.execute("PRAGMA journal_mode = %s" % mode)
        a.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=8, kind=hnsw)")
        vecs = fill(a, 300, 8, rng)
        b = connect(path)
        assert knn(b, vecs[5], 1) == [(5, 0.0)]
        # a writes: b catches up (no rebuild) at its next query
        a.execute("DELETE FROM v WHERE rowid = 5")
        a.execute("UPDATE v SET embedding = ? WHERE rowid = 6",
                  (blob(vecs[7]),))
        vecs.update(fill(a, 10, 8, rng, start=1000))
        assert knn(b, vecs[5], 1)[0][0] != 5
        assert sorted(ids(knn(b, vecs[7], 2))) == [6, 7]
        assert knn(b, vecs[1005], 1) == [(1005, 0.0)]
        info = b.execute("SELECT vecidx_info('v')").fetchone()[0]
        assert '"builds":1,' in info and '"catchups":1,' in info, info
        assert '"count":309' in info, info
        # b writes too; a catches up
        b.execute("DELETE FROM v WHERE rowid = 1005")
        assert knn(a, vecs[1005], 1)[0][0] != 1005
        # a rolled-back write of a changes nothing for b
        a.execute("BEGIN")
        a.execute("DELETE FROM v WHERE rowid = 7")
        a.execute("ROLLBACK")
        assert knn(b, vecs[7], 1)[0][1] == 0.0
        a.close()
        b.close()


def test_first_use_inside_savepoint():
    # A connection whose first use of the table is a write inside a
    # savepoint that is rolled back: its later writes must still move the
    # generation on, or other connections would miss them.
    path = os.path.join(TMP, "first.db")
    a = connect(path)
    a.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=2, kind=flat)")
    a.execute("INSERT INTO v(rowid, embedding) VALUES (1, '[1, 0]')")
    assert ids(knn(a, [1, 0], 5)) == [1]
    b = connect(path)
    b.execute("BEGIN IMMEDIATE")
    b.execute("SAVEPOINT s")
    b.execute("INSERT INTO v(rowid, embedding) VALUES (2, '[0, 1]')")
    b.execute("ROLLBACK TO s")
    b.execute("INSERT INTO v(rowid, embedding) VALUES (3, '[1, 1]')")
    b.execute("COMMIT")
    assert sorted(ids(knn(a, [1, 0], 5))) == [1, 3]
    assert sorted(ids(knn(b, [1, 0], 5))) == [1, 3]


def test_replaced_by_backup_rebuilds():
    rng = random.Random(7)
    path = os.path.join(TMP, "live.db")
    bak = os.path.join(TMP, "bak.db")
    for p in (path, bak):
        if os.path.exists(p):
            os.remove(p)
    a = connect(path)
    a.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=8, kind=flat)")
    vecs = fill(a, 100, 8, rng)
    with open(path, "rb") as f:
        image = f.read()
    with open(bak, "wb") as f:   # a copy at the same generation
        f.write(image)
    # the copy and the original go separate ways (SQLite notices a file
    # replaced behind its back by the file's change counter, so the copy
    # makes one write transaction more)
    b = connect(bak)
    b.execute("DELETE FROM v WHERE rowid = 1")
    b.execute("DELETE FROM v WHERE rowid = 3")
    b.execute("DELETE FROM v WHERE rowid = 5")
    b.close()
    a.execute("DELETE FROM v WHERE rowid = 2")
    a.execute("DELETE FROM v WHERE rowid = 4")
    assert ids(knn(a, vecs[1], 1)) == [1]
    # the copy's bytes put in place of a's database, as a replication tool
    # or a restore does, behind a's back (no schema change: a keeps its
    # table and cache); a must notice the other history and rebuild
    with open(bak, "rb") as f:
        image = f.read()
    with open(path, "r+b") as f:
        f.write(image)
        f.truncate()
    assert ids(knn(a, vecs[1], 1)) != [1]
    assert ids(knn(a, vecs[2], 1)) == [2]
    info = a.execute("SELECT vecidx_info('v')").fetchone()[0]
    assert '"builds":2,' in info and '"catchups":0' in info, info
    assert '"count":97' in info, info
    # restored through the backup API, the table is connected afresh
    c = connect(bak)
    c.execute("DELETE FROM v WHERE rowid = 50")
    c.backup(a)
    assert ids(knn(a, vecs[50], 1)) != [50]
    assert a.execute("SELECT count(*) FROM v").fetchone()[0] == 96


def test_read_only_database():
    rng = random.Random(8)
    path = os.path.join(TMP, "ro.db")
    c = connect(path)
    c.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=4)")
    vecs = fill(c, 50, 4, rng)
    c.execute("CREATE TABLE odd(id INTEGER PRIMARY KEY)")
    c.executemany("INSERT INTO odd VALUES (?)", [(i,) for i in vecs if i % 2])
    c.close()
    r = connect("file:%s?mode=ro" % path, uri=True)
    assert ids(knn(r, vecs[9], 1)) == [9]
    expect_error(lambda: r.execute(
        "INSERT INTO v(rowid, embedding) VALUES (99, '[1,2,3,4]')"),
        "readonly")
    expect_error(lambda: r.execute("DELETE FROM v WHERE rowid = 9"),
                 "readonly")
    assert ids(knn(r, vecs[9], 1)) == [9]
    assert r.execute("SELECT count(*) FROM v").fetchone()[0] == 50
    # streamed, and joined to a table of the same read-only file
    rows = r.execute("SELECT rowid, distance FROM v WHERE embedding MATCH ? "
                     "ORDER BY distance LIMIT 7", (blob(vecs[9]),)).fetchall()
    assert_topk(rows, vecs, vecs[9], 7)
    rows = r.execute("SELECT v.rowid, v.distance FROM v JOIN odd ON "
                     "odd.id = v.rowid WHERE v.embedding MATCH ? "
                     "ORDER BY v.distance LIMIT 5", (blob(vecs[9]),)).fetchall()
    assert_topk(rows, vecs, vecs[9], 5, {i for i in vecs if i % 2})


def test_other_process():
    rng = random.Random(9)
    path = os.path.join(TMP, "proc.db")
    c = connect(path)
    c.execute("PRAGMA journal_mode = wal")
    c.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=4, kind=hnsw)")
    fill(c, 100, 4, rng)
    assert ids(knn(c, [0.5, 0.5, 0.5, 0.5], 1))
    code = ("import sqlite3; c = sqlite3.connect(%r); "
            "c.enable_load_extension(True); c.load_extension(%r); "
            "c.execute(\"INSERT INTO v(rowid, embedding) VALUES "
            "(777, '[9, 9, 9, 9]')\"); c.execute('DELETE FROM v WHERE "
            "rowid = 1'); c.commit()" % (path, EXT))
    subprocess.run([sys.executable, "-c", code], check=True)
    assert ids(knn(c, [9, 9, 9, 9], 1)) == [777]
    assert 1 not in ids(knn(c, [0, 0, 0, 0], 100))
    assert c.execute("SELECT count(*) FROM v").fetchone()[0] == 100


def test_attached_schema():
    c = connect()
    c.execute("ATTACH ':memory:' AS aux")
    c.execute("CREATE VIRTUAL TABLE aux.v USING vecidx(dim=2, kind=flat)")
    c.execute("INSERT INTO aux.v(rowid, embedding) VALUES (4, '[1, 1]')")
    assert c.execute("SELECT rowid FROM aux.v WHERE embedding MATCH "
                     "'[1, 1]' AND k = 1").fetchall() == [(4,)]
    assert c.execute("SELECT vecidx_info('v', 'aux')").fetchone()[0]


# ---- On-disk cache ----------------------------------------------------------

def info(c, table="v"):
    return json.loads(c.execute("SELECT vecidx_info(?)", (table,)).fetchone()[0])


def cache_files(path, table="v"):
    # the extension's names only: BASE.GEN.STAMP, not vecidx_save's temps
    return sorted(f for f in glob.glob(path + "-%s.vxc.*" % table)
                  if ".tmp-" not in f)


def fresh(path):
    for f in glob.glob(path + "*"):
        os.remove(f)


def cache_db(name, n, seed, kind="hnsw", d=16):
    rng = random.Random(seed)
    path = os.path.join(TMP, name)
    fresh(path)
    c = connect(path)
    c.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=%d, kind=%s, "
              "cache=1)" % (d, kind))
    vecs = fill(c, n, d, rng)
    assert cache_files(path) == []   # its first use was a write
    c.close()
    # and it wrote the cache at the close: no file had its state
    assert len(cache_files(path)) == 1
    return path, vecs, rng


def drop_cache(path):
    for f in cache_files(path):
        os.remove(f)


def test_cache_loaded_with_identical_results():
    path, vecs, rng = cache_db("cache.db", 3000, 20)
    drop_cache(path)
    a = connect(path)
    qs = [rvec(rng, 16) for _ in range(20)]
    want = [knn(a, q, 10) for q in qs]
    i = info(a)
    assert i["builds"] == 1 and i["cache_loads"] == 0, i
    assert i["cache_saves"] == 1, i   # written after the rebuild
    assert len(cache_files(path)) == 1
    a.close()
    b = connect(path)
    got = [knn(b, q, 10) for q in qs]
    i = info(b)
    assert i["builds"] == 0 and i["cache_loads"] == 1, i
    assert i["count"] == 3000 and i["cache_saves"] == 0, i
    assert got == want   # the same graph: the same ids and distances
    # and what a cache-less table rebuilt from the same rows finds: exact
    # search agrees on the nearest of stored vectors
    for k in (1, 77, 2999):
        assert knn(b, vecs[k], 1) == [(k, 0.0)]
    b.close()
    # cache=0 and in-memory databases write nothing
    m = connect()
    m.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=2, cache=1)")
    m.execute("INSERT INTO v(rowid, embedding) VALUES (1, '[1, 0]')")
    assert info(m)["cache_saves"] == 0


def test_cache_caught_up_after_other_writes():
    path, vecs, rng = cache_db("cup.db", 2000, 21)
    a = connect(path)
    knn(a, vecs[1], 1)               # builds, writes the cache
    a.close()
    before = cache_files(path)
    w = connect(path)
    w.execute("DELETE FROM v WHERE rowid = 5")
    w.execute("UPDATE v SET embedding = ? WHERE rowid = 6", (blob(vecs[7]),))
    vecs.update(fill(w, 10, 16, rng, start=5000))
    assert info(w)["cache_loads"] == 1
    w.close()                        # 12 rows behind: no new file
    assert cache_files(path) == before
    c = connect(path)
    assert knn(c, vecs[5], 1)[0][0] != 5
    assert sorted(ids(knn(c, vecs[7], 2))) == [6, 7]
    assert knn(c, vecs[5003], 1) == [(5003, 0.0)]
    i = info(c)
    assert i["builds"] == 0 and i["cache_loads"] == 1, i
    assert i["catchups"] == 1 and i["count"] == 2009, i


def test_cache_damaged_is_rebuilt():
    path, vecs, rng = cache_db("bad.db", 2000, 22)
    a = connect(path)
    knn(a, vecs[1], 1)
    a.close()
    [f] = cache_files(path)
    size = os.path.getsize(f)
    with open(f, "r+b") as fh:
        for off in (size // 3, size // 2, size - 100):
            fh.seek(off)
            b = fh.read(8)
            fh.seek(off)
            fh.write(bytes(x ^ 0x5A for x in b))
    b = connect(path)
    assert knn(b, vecs[9], 1) == [(9, 0.0)]
    i = info(b)
    assert i["builds"] == 1 and i["cache_loads"] == 0, i
    assert i["cache_rejects"] == 1 and i["cache_saves"] == 1, i
    b.close()
    # truncated to nothing: the same
    [f] = cache_files(path)
    open(f, "wb").close()
    c = connect(path)
    assert knn(c, vecs[10], 1) == [(10, 0.0)]
    assert info(c)["builds"] == 1
    c.close()
    d = connect(path)
    assert knn(d, vecs[11], 1) == [(11, 0.0)]
    i = info(d)
    assert i["builds"] == 0 and i["cache_loads"] == 1, i


def test_cache_of_another_database_not_used():
    path, vecs, _ = cache_db("mine.db", 1000, 23)
    other, ovecs, _ = cache_db("other.db", 1500, 24)
    for p, v in ((path, vecs), (other, ovecs)):
        c = connect(p)
        knn(c, v[1], 1)
        c.close()
    # the other database's file copied over this one; this one's cache
    # files stay beside it
    with open(other, "rb") as f:
        image = f.read()
    with open(path, "wb") as f:
        f.write(image)
    c = connect(path)
    assert knn(c, ovecs[3], 1) == [(3, 0.0)]
    i = info(c)
    assert i["builds"] == 1 and i["cache_loads"] == 0, i
    assert i["cache_rejects"] == 1 and i["count"] == 1500, i
    c.close()
    # an older copy of the same database is not served a newer cache
    w = connect(path)
    w.execute("BEGIN")
    w.execute("DELETE FROM v WHERE rowid = 3")
    fill_in_txn(w, 4100, 16, random.Random(1), start=10000)
    w.execute("COMMIT")
    w.close()                      # far enough ahead: a new file
    [f] = cache_files(path)
    with open(path, "wb") as fh:
        fh.write(image)
    e = connect(path)
    assert knn(e, ovecs[3], 1) == [(3, 0.0)]
    i = info(e)
    assert i["builds"] == 1 and i["cache_loads"] == 0, i
    assert i["count"] == 1500, i


def test_cache_never_holds_rolled_back_rows():
    path, vecs, rng = cache_db("rb.db", 500, 25, kind="flat")
    a = connect(path)
    knn(a, vecs[1], 1)
    files = cache_files(path)
    # more rows than the refresh threshold, searched inside the
    # transaction, then rolled back: no file may hold them
    a.execute("BEGIN")
    extra = fill_in_txn(a, 5000, 16, rng, start=10000)
    assert knn(a, extra[12345], 1) == [(12345, 0.0)]
    assert cache_files(path) == files
    a.execute("ROLLBACK")
    assert knn(a, extra[12345], 1)[0][0] != 12345
    a.close()
    assert cache_files(path) == files
    b = connect(path)
    assert knn(b, extra[12345], 1)[0][0] != 12345
    i = info(b)
    assert i["cache_loads"] == 1 and i["count"] == 500, i
    # committed, the same rows are saved at the next use after the commit
    # a save killed half-way left a temporary file of an older generation
    left = files[0] + ".tmp-99999"
    with open(left, "wb") as f:
        f.write(b"half a file")
    b.execute("BEGIN")
    fill_in_txn(b, 5000, 16, rng, start=10000)
    b.execute("COMMIT")
    knn(b, vecs[1], 1)
    assert info(b)["cache_saves"] == 1
    newer = cache_files(path)
    assert len(newer) == 1 and newer != files   # the old one pruned
    assert not os.path.exists(left)             # and the leftover
    b.close()
    c = connect(path)
    assert knn(c, extra[12345], 1)[0][0] != 12345  # new rows, new vectors
    i = info(c)
    assert i["cache_loads"] == 1 and i["catchups"] == 0, i
    assert i["count"] == 5500, i


def test_cache_unwritable_and_read_only():
    path, vecs, _ = cache_db("ro-cache.db", 300, 27, kind="flat")
    # a read-only connection uses the file but never writes one
    drop_cache(path)
    r = connect("file:%s?mode=ro" % path, uri=True)
    assert knn(r, vecs[4], 1) == [(4, 0.0)]
    i = info(r)
    assert i["builds"] == 1 and i["cache_saves"] == 0, i
    assert cache_files(path) == []
    r.close()
    c = connect(path)
    knn(c, vecs[4], 1)             # writes it
    c.close()
    r = connect("file:%s?mode=ro" % path, uri=True)
    assert knn(r, vecs[5], 1) == [(5, 0.0)]
    i = info(r)
    assert i["builds"] == 0 and i["cache_loads"] == 1, i
    r.close()
    # a cache directory that cannot be written: searches and writes work,
    # and no save is tried again before 1024 more rows change
    p2 = os.path.join(TMP, "nodir.db")
    fresh(p2)
    c = connect(p2)
    c.execute("CREATE VIRTUAL TABLE v USING vecidx(dim=2, kind=flat, "
              "cache='%s')" % os.path.join(TMP, "no", "such", "dir", "x"))
    c.execute("INSERT INTO v(rowid, embedding) VALUES (1, '[1, 0]')")
    assert ids(knn(c, [1, 0], 1)) == [1]
    assert ids(knn(c, [1, 0], 1)) == [1]
    i = info(c)
    assert i["cache_saves"] == 0 and i["builds"] == 1, i
    c.close()
    # the same quoted path in a directory that exists is written
    c = connect(p2)
    c.execute("CREATE VIRTUAL TABLE w USING vecidx(dim=2, kind=flat, "
              "cache='%s')" % os.path.join(TMP, "w-cache"))
    c.execute("INSERT INTO w(rowid, embedding) VALUES (1, '[1, 0]')")
    assert info(c, "w")["cache_saves"] == 1
    # named PATH-ID.GEN.STAMP, ID 16 hex digits for the database and table
    [f] = glob.glob(os.path.join(TMP, "w-cache-*.1.*"))
    assert len(os.path.basename(f).split(".")[0]) == len("w-cache-") + 16
    c.execute("DROP TABLE w")      # takes its files along
    assert glob.glob(os.path.join(TMP, "w-cache*")) == []
    c.close()


def test_cache_path_shared_by_tables():
    # Three tables given one cache=PATH -- two in one database, one of the
    # same name in another -- keep files of their own: every later first
    # use of each loads its own, none is rejected or rebuilt, and one
    # table's new file, drop or rename leaves the others' files alone.
    shared = os.path.join(TMP, "shared-cache")
    dbs = [os.path.join(TMP, "share1.db"), os.path.join(TMP, "share2.db")]
    for p in dbs + [shared]:
        fresh(p)
    tables = [(dbs[0], "a"), (dbs[0], "b"), (dbs[1], "a")]
    rng = random.Random(28)
    vecs = {}
    for p, t in tables:
        c = connect(p)
        c.execute("CREATE VIRTUAL TABLE %s USING vecidx(dim=8, kind=hnsw, "
                  "cache='%s')" % (t, shared))
        vecs[p, t] = fill(c, 300, 8, rng, t)
        c.close()                    # each writes its file at the close

    def shared_files():
        return sorted(f for f in glob.glob(shared + "*") if ".tmp-" not in f)

    def first_uses(expect_builds=None):
        for p, t in tables:
            c = connect(p)
            v = vecs[p, t]
            assert knn(c, v[7], 1, t) == [(7, 0.0)]
            i = info(c, t)
            c.close()
            if expect_builds and (p, t) in expect_builds:
                assert i["builds"] == 1, (p, t, i)
            else:
                assert i["builds"] == 0 and i["cache_loads"] == 1, (p, t, i)
                assert i["cache_rejects"] == 0, (p, t, i)

    assert len(shared_files()) == 3
    for _ in range(2):
        first_uses()
    assert len(shared_files()) == 3
    # a newer file of one table replaces only that table's
    c = connect(dbs[0])
    c.execute("BEGIN")
    for i in range(5000, 5000 + 1100):
        c.execute("INSERT INTO a(rowid, embedding) VALUES (?, ?)",
                  (i, blob(rvec(rng, 8))))
    c.execute("COMMIT")
    c.close()
    assert len(shared_files()) == 3
    first_uses()
    # dropped, one table takes its files along and no other's
    c = connect(dbs[0])
    c.execute("DROP TABLE b")
    c.close()
    tables.remove((dbs[0], "b"))
    assert len(shared_files()) == 2
    first_uses()
    # renamed, a table leaves its old files and builds once under its new
    # name; the table of the old name in the other database is untouched
    c = connect(dbs[0])
    c.execute("ALTER TABLE a RENAME TO r")
    c.close()
    vecs[dbs[0], "r"] = vecs.pop((dbs[0], "a"))
    tables[0] = (dbs[0], "r")
    assert len(shared_files()) == 1
    first_uses(expect_builds={(dbs[0], "r")})
    assert len(shared_files()) == 2
    first_uses()


def fill_in_txn(c, n, d, rng, start):
    vecs = {}
    for i in range(start, start + n):
        v = rvec(rng, d)
        vecs[i] = v
        c.execute("INSERT INTO v(rowid, embedding) VALUES (?, ?)",
                  (i, blob(v)))
    return vecs


def test_cache_much_faster_first_use():
    path, vecs, rng = cache_db("fast.db", 20000, 26, d=32)
    drop_cache(path)
    times = []
    for _ in range(2):
        c = connect(path)
        t = time.perf_counter()
        knn(c, vecs[1], 1)
        times.append(time.perf_counter() - t)
        i = info(c)
        c.close()
    assert i["cache_loads"] == 1 and i["builds"] == 0, i
    assert times[0] >= 5 * times[1], times


# pytest runs the test_* functions itself: the same temporary directory,
# made before the first and removed after the last (its xunit-style
# module hooks, so the file keeps to the standard library).
_tmpdir = None


def setup_module(module):
    global TMP, _tmpdir
    _tmpdir = tempfile.TemporaryDirectory(prefix="vecidx-sqlite-")
    TMP = _tmpdir.name


def teardown_module(module):
    _tmpdir.cleanup()


def main():
    global EXT, TMP
    args = sys.argv[1:]
    if args and args[0].endswith(".so"):
        EXT = os.path.splitext(os.path.abspath(args.pop(0)))[0]
    tests = [(n, f) for n, f in sorted(globals().items())
             if n.startswith("test_") and callable(f)
             and (not args or any(a in n for a in args))]
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="vecidx-sqlite-") as tmp:
        TMP = tmp
        for name, fn in tests:
            t = time.time()
            try:
                fn()
                passed += 1
                print("ok   %s (%.2f s)" % (name, time.time() - t))
            except Exception:
                failed += 1
                print("FAIL %s" % name)
                traceback.print_exc()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
