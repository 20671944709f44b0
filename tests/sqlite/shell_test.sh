#!/bin/sh
# The vecidx SQLite extension through the sqlite3 command-line shell:
#     sh tests/sqlite/shell_test.sh [sqlite/vecidx_sqlite.so]
# Loads the extension with .load, runs a script of creates, writes,
# searches, filters (as a join and as a vecidx_rowids() set too) and
# transactions, and compares the output with the expected one. Ends with
# "N passed, N failed".
set -u
ext=${1:-sqlite/vecidx_sqlite.so}
ext=${ext%.so}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

sqlite3 -batch "$dir/t.db" >"$dir/out" 2>&1 <<SQL
.load $ext
.mode list
CREATE TABLE docs(id INTEGER PRIMARY KEY, kind TEXT);
INSERT INTO docs VALUES (1, 'a'), (2, 'b'), (3, 'a'), (4, 'b'), (5, 'a');
CREATE VIRTUAL TABLE v USING vecidx(dim=2, metric=l2, kind=hnsw, M=8);
INSERT INTO v(rowid, embedding) VALUES
  (1, '[0, 0]'), (2, '[1, 0]'), (3, '[2, 0]'), (4, '[3, 0]'), (5, '[4, 0]');
SELECT 'knn', rowid, round(distance, 4) FROM v WHERE embedding MATCH '[0.9, 0]' AND k = 3;
SELECT 'filtered', rowid FROM v WHERE embedding MATCH '[0.9, 0]' AND k = 2
   AND rowid IN (SELECT id FROM docs WHERE kind = 'b');
SELECT 'allowed', rowid FROM v WHERE embedding MATCH '[0.9, 0]' AND k = 2
   AND allowed = (SELECT vecidx_rowids(id) FROM docs WHERE kind = 'b');
BEGIN;
DELETE FROM v WHERE rowid = 2;
SELECT 'in txn', rowid FROM v WHERE embedding MATCH '[0.9, 0]' AND k = 1;
ROLLBACK;
SELECT 'rolled back', rowid FROM v WHERE embedding MATCH '[0.9, 0]' AND k = 1;
UPDATE v SET embedding = '[9, 9]' WHERE rowid = 2;
SELECT 'updated', rowid FROM v WHERE embedding MATCH '[9, 9]' AND k = 1 AND ef = 16;
SELECT 'count', count(*) FROM v;
SELECT 'join', d.id FROM docs d JOIN v ON v.rowid = d.id
 WHERE d.kind = 'a' AND v.embedding MATCH '[0.9, 0]'
 ORDER BY v.distance LIMIT 2;
SELECT 'limit', rowid FROM v WHERE embedding MATCH '[0.9, 0]'
 ORDER BY distance LIMIT 2 OFFSET 1;
SELECT 'error';
INSERT INTO v(rowid, embedding) VALUES (9, '[1, 2, 3]');
SELECT d.id FROM docs d JOIN v ON v.rowid = d.id
 WHERE d.kind = 'a' AND v.embedding MATCH '[0.9, 0]' AND v.k = 2;
SQL

cat >"$dir/want" <<'OUT'
knn|2|0.01
knn|1|0.81
knn|3|1.21
filtered|2
filtered|4
allowed|2
allowed|4
in txn|1
rolled back|2
updated|2
count|5
join|1
join|3
limit|3
limit|4
error
Runtime error near line 27: embedding: the JSON array has more than 2 numbers (20)
Runtime error near line 28: vecidx: k = N on v joined by rowid to another table: that table's filters would apply after the N nearest are chosen and leave fewer; write ORDER BY distance LIMIT N instead of k, or filter with rowid IN (SELECT ...)
OUT

if diff -u "$dir/want" "$dir/out"; then
    echo "1 passed, 0 failed"
else
    echo "0 passed, 1 failed"
    exit 1
fi
