/*
** vecidx_sqlite.c -- vecidx as a SQLite virtual table (loadable extension).
**
** Build (the library keeps no SQLite dependency; this file is the only one
** that includes sqlite3ext.h):
**
**   cc -std=c11 -O2 -fPIC -shared -fvisibility=hidden -I. \
**      -o sqlite/vecidx_sqlite.so sqlite/vecidx_sqlite.c vecidx.c -pthread -lm
**
** then `.load ./sqlite/vecidx_sqlite` in the sqlite3 shell, or
** conn.load_extension("sqlite/vecidx_sqlite") in Python. Needs SQLite 3.38
** or later at run time (sqlite3_vtab_in). MIT licensed, see LICENSE.
**
**   CREATE VIRTUAL TABLE items_vec USING vecidx(dim=384, metric=cos,
**                                               kind=hnsw, M=16);
**   INSERT INTO items_vec(rowid, embedding) VALUES (1, :blob_or_json);
**   SELECT rowid, distance FROM items_vec
**    WHERE embedding MATCH :q AND k = 10
**      AND rowid IN (SELECT id FROM items WHERE category = 3);
**   ... AND allowed = (SELECT vecidx_rowids(id) FROM items WHERE ...)
**                                         -- the same set, built faster
**
** DESIGN
**
** The database is the truth; the vecidx index is a cache. Every vector is
** a row of the shadow table NAME_vectors(id, seq, vec), written through
** the same connection and transaction as the statement that changes the
** virtual table, so SQLite's journal makes it atomic, durable and part of
** any copy or replica of the database. Each connection keeps its own
** in-memory vecidx index of those rows:
**
**  - It is built from the shadow table at the first use on a connection
**    (vecidx_add_batch on params.threads threads).
**  - xUpdate changes the index and the shadow table together and records
**    what it changed in an undo list (with the old vector). xRollback,
**    and xRollbackTo for savepoints and failed statements, replay the list
**    backwards, so the index always matches what the transaction sees.
**    Any failure to keep them in step marks the index stale: it is then
**    rebuilt from the shadow table at its next use.
**  - Each write transaction moves a generation counter in NAME_state(gen,
**    stamp) on by one and gives it a fresh random stamp, logged in
**    NAME_txlog(gen, stamp); rows carry the generation that last wrote
**    them (seq) and deletions leave a tombstone in NAME_deleted(id, seq).
**    Before a search or a write the connection compares the database's
**    (gen, stamp) with the one its index reflects -- only when the pager's
**    data version (SQLITE_FCNTL_DATA_VERSION) moved, so usually at the cost
**    of one file-control call. When another connection or process wrote,
**    and the database's txlog still holds this index's (gen, stamp) (the
**    same history), the index catches up by reading the rows and
**    tombstones newer than its generation; otherwise (the database was
**    replaced by a backup or a replica of another history, or the log was
**    pruned) it is rebuilt. Tombstones and txlog entries older than
**    VX_KEEP_GENS generations are pruned.
**  - With the option cache=1 (or cache=PATH) the index of a committed
**    (gen, stamp) is also saved to BASE.GEN.STAMP, BASE naming the
**    database file and the table (so tables given one cache=PATH keep
**    apart), and a first use opens the newest such file that the
**    database's txlog vouches for with VECIDX_PRIVATE (its writes stay in
**    this connection's memory; the file is never changed) and catches it
**    up as above, instead of building. The file is written only from
**    committed state (never inside a write transaction), after a build and
**    whenever the connection's index is VX_CACHE_REFRESH rows past the
**    newest file it knows of (checked at each use and at disconnect).
**    Correctness never depends on it: a missing, damaged, foreign or
**    too-new file means a build, as without the option.
*/
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3ext.h>

#include "../vecidx.h"

SQLITE_EXTENSION_INIT1

#if defined(__GNUC__) || defined(__clang__)
#define VX_EXPORT __attribute__((visibility("default")))
#else
#define VX_EXPORT
#endif

/* Write transactions whose tombstones and txlog entries are kept: a
** connection whose index is older than that rebuilds it instead of
** catching up. */
#define VX_KEEP_GENS 65536
/* Prune once every so many generations. */
#define VX_PRUNE_EVERY 256
/* Rows read per vecidx_add_batch call while building. */
#define VX_BUILD_BATCH 16384
/* Rows changed since the newest cache file a connection knows of before
** it writes a new one. A save rewrites the whole file (0.1 s for 100k x
** 128 HNSW, 75 MB), a later first use catches up row by row (1000 rows:
** 0.7-1.0 s there): this keeps both near a second at that size without
** a save per handful of writes. */
#define VX_CACHE_REFRESH 1024
/* Largest k accepted by a KNN query. */
#define VX_MAX_K 1000000

/* Columns of the declared table. */
enum {
    VX_COL_VEC = 0,
    VX_COL_DISTANCE = 1,
    VX_COL_K = 2,
    VX_COL_EF = 3,
    VX_COL_NPROBE = 4,
    VX_COL_ALLOWED = 5
};

/* Plans (idxNum bits); the argv of xFilter holds the values in this
** order. */
enum {
    VX_P_MATCH = 1,
    VX_P_K = 2,
    VX_P_EF = 4,
    VX_P_NPROBE = 8,
    VX_P_ROWID_IN = 16, /* rowid IN (...), all values at once */
    VX_P_ROWID_EQ = 32, /* rowid = value */
    VX_P_LIMIT = 64,    /* LIMIT, passed by SQLite 3.41+ in place of k */
    VX_P_OFFSET = 128,  /* OFFSET with that LIMIT */
    VX_P_JOINED = 256,  /* k with the rowid joined to another table */
    VX_P_ALLOWED = 512  /* allowed = a vecidx_rowids() set */
};

/* Prepared statements on the shadow tables, made on first use. */
enum {
    VXS_GET,       /* SELECT vec FROM _vectors WHERE id = ? */
    VXS_INSERT,    /* INSERT INTO _vectors(id, seq, vec) */
    VXS_REPLACE,   /* UPDATE _vectors SET seq, vec WHERE id */
    VXS_DELETE,    /* DELETE FROM _vectors WHERE id = ? */
    VXS_TOMB,      /* INSERT OR REPLACE INTO _deleted */
    VXS_STATE,     /* SELECT gen, stamp FROM _state */
    VXS_SETSTATE,  /* UPDATE _state SET gen, stamp */
    VXS_TXLOG,     /* INSERT OR REPLACE INTO _txlog */
    VXS_TXSTAMP,   /* SELECT stamp FROM _txlog WHERE gen = ? */
    VXS_MAXID,     /* SELECT max(id) FROM _vectors */
    VXS_CHANGED,   /* SELECT id, vec FROM _vectors WHERE seq > ? */
    VXS_TOMBS,     /* SELECT id FROM _deleted WHERE seq > ? */
    VXS_PRUNE_LOG, /* DELETE FROM _txlog WHERE gen <= ? */
    VXS_PRUNE_DEL, /* DELETE FROM _deleted WHERE seq <= ? */
    VXS_COUNT
};

/* Undo entries. */
enum {
    VXU_ADDED,   /* the row was inserted: remove it */
    VXU_CHANGED, /* the row's vector was replaced: put vec back */
    VXU_REMOVED, /* the row was deleted: add vec back */
    VXU_BUMP     /* the transaction moved the generation on */
};

typedef struct vx_undo {
    int op;
    sqlite3_int64 id;    /* row; for VXU_BUMP the previous generation */
    sqlite3_int64 stamp; /* VXU_BUMP: the previous stamp */
    float *vec;          /* VXU_CHANGED, VXU_REMOVED: the old vector */
} vx_undo;

typedef struct vx_vtab vx_vtab;

/* Per connection: the tables connected, for vecidx_info(). */
typedef struct vx_conn {
    vx_vtab *tables;
} vx_conn;

struct vx_vtab {
    sqlite3_vtab base;
    vx_conn *conn;
    vx_vtab *next; /* in conn->tables */
    sqlite3 *db;
    char *schema; /* database name: "main", "temp" or attached */
    char *name;   /* table name */
    char *col;    /* name of the vector column ("embedding") */
    vecidx_params params;
    vecidx *ix;               /* the cache; NULL until first use */
    int stale;                /* ix must be rebuilt before its next use */
    sqlite3_int64 gen, stamp; /* database state that ix reflects */
    unsigned dv;              /* pager data version when gen was last checked */
    int have_dv;
    /* Transaction state. */
    int in_txn; /* between xBegin and xCommit/xRollback */
    int bumped; /* this transaction moved the generation on ... */
    sqlite3_int64 bump_gen, bump_stamp; /* ... to this */
    int undo_ok; /* 0: ix was rebuilt mid-transaction; a rollback marks
                    it stale instead of replaying the list */
    vx_undo *undo;
    size_t nundo, capundo;
    size_t *marks; /* marks[i]: undo length when savepoint i began */
    int nmarks, capmarks;
    float *scratch; /* dim floats for reading old vectors */
    sqlite3_stmt *st[VXS_COUNT];
    /* On-disk cache (option cache=): files BASE.GEN.STAMP, each holding
    ** the index as it was at that committed (gen, stamp). */
    char *cache_opt;  /* the option's value, "1" or a path; NULL: none */
    char *cache_base; /* NULL: no cache */
    int cache_known;  /* a cache file of cache_gen/stamp exists */
    sqlite3_int64 cache_gen, cache_stamp;
    sqlite3_int64 since_cache; /* rows changed in ix since that file */
    /* Counters for vecidx_info(). */
    sqlite3_int64 builds, catchups;
    sqlite3_int64 cache_loads, cache_saves, cache_rejects;
};

typedef struct vx_cursor {
    sqlite3_vtab_cursor base;
    int plan;           /* idxNum of the xFilter call */
    sqlite3_stmt *scan; /* full scan: SELECT id, vec FROM _vectors */
    int scan_eof;
    uint64_t *ids; /* the batch of KNN results, or the point lookup's row */
    float *dists;
    size_t n, pos;
    /* The search, kept for the next batch when streaming. */
    float *q;
    vecidx_search_opts o; /* o.allow_keys is allow, or &one */
    uint64_t *allow, one;
    int more;       /* streaming: a larger flat search may find more rows */
    size_t want;    /* results asked of the last search */
    int started;    /* rows were handed out: last and ties are set */
    float last;     /* distance of the last row handed out */
    uint64_t *ties; /* rows handed out at distance last, sorted */
    size_t nties, capties;
} vx_cursor;

/* ---- Small helpers ------------------------------------------------------ */

static void vx_seterr(vx_vtab *vt, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void vx_seterr(vx_vtab *vt, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sqlite3_free(vt->base.zErrMsg);
    vt->base.zErrMsg = sqlite3_vmprintf(fmt, ap);
    va_end(ap);
}

/* A vecidx failure as a SQLite error code, with the library's message. */
static int vx_iderr(vx_vtab *vt, int rc, const char *what)
{
    vx_seterr(vt, "vecidx: %s: %s (%s)", what, vecidx_errmsg(vt->ix),
              vecidx_strerror(rc));
    switch (rc) {
    case VECIDX_ENOMEM:
        return SQLITE_NOMEM;
    case VECIDX_EEXIST:
        return SQLITE_CONSTRAINT;
    case VECIDX_ECORRUPT:
        return SQLITE_CORRUPT_VTAB;
    case VECIDX_EFULL:
        return SQLITE_FULL;
    default:
        return SQLITE_ERROR;
    }
}

static int vx_sqlerr(vx_vtab *vt, int rc)
{
    vx_seterr(vt, "%s", sqlite3_errmsg(vt->db));
    return rc;
}

static int vx_exec(sqlite3 *db, char **pzErr, const char *fmt, ...)
{
    va_list ap;
    char *sql;
    int rc;
    va_start(ap, fmt);
    sql = sqlite3_vmprintf(fmt, ap);
    va_end(ap);
    if (!sql) return SQLITE_NOMEM;
    rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK && pzErr)
        *pzErr = sqlite3_mprintf("%s", sqlite3_errmsg(db));
    sqlite3_free(sql);
    return rc;
}

static const char *const vx_sql[VXS_COUNT] = {
    "SELECT vec FROM \"%w\".\"%w_vectors\" WHERE id = ?1",
    "INSERT INTO \"%w\".\"%w_vectors\"(id, seq, vec) VALUES (?1, ?2, ?3)",
    "UPDATE \"%w\".\"%w_vectors\" SET seq = ?2, vec = ?3 WHERE id = ?1",
    "DELETE FROM \"%w\".\"%w_vectors\" WHERE id = ?1",
    "INSERT OR REPLACE INTO \"%w\".\"%w_deleted\"(id, seq) VALUES (?1, ?2)",
    "SELECT gen, stamp FROM \"%w\".\"%w_state\" WHERE id = 0",
    "UPDATE \"%w\".\"%w_state\" SET gen = ?1, stamp = ?2 WHERE id = 0",
    "INSERT OR REPLACE INTO \"%w\".\"%w_txlog\"(gen, stamp) VALUES (?1, ?2)",
    "SELECT stamp FROM \"%w\".\"%w_txlog\" WHERE gen = ?1",
    "SELECT max(id) FROM \"%w\".\"%w_vectors\"",
    "SELECT id, vec FROM \"%w\".\"%w_vectors\" WHERE seq > ?1",
    "SELECT id FROM \"%w\".\"%w_deleted\" WHERE seq > ?1",
    "DELETE FROM \"%w\".\"%w_txlog\" WHERE gen <= ?1",
    "DELETE FROM \"%w\".\"%w_deleted\" WHERE seq <= ?1"};

/* The prepared statement i, reset and with its bindings cleared. */
static int vx_stmt(vx_vtab *vt, int i, sqlite3_stmt **out)
{
    if (!vt->st[i]) {
        char *sql = sqlite3_mprintf(vx_sql[i], vt->schema, vt->name);
        int rc;
        if (!sql) return SQLITE_NOMEM;
        rc = sqlite3_prepare_v3(vt->db, sql, -1, SQLITE_PREPARE_PERSISTENT,
                                &vt->st[i], NULL);
        sqlite3_free(sql);
        if (rc != SQLITE_OK) return vx_sqlerr(vt, rc);
    }
    *out = vt->st[i];
    return SQLITE_OK;
}

/* Step a statement that returns no row (or whose row is not wanted) and
** reset it. */
static int vx_run(vx_vtab *vt, sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc == SQLITE_DONE || rc == SQLITE_ROW) return SQLITE_OK;
    return vx_sqlerr(vt, rc);
}

/* ---- Parsing vectors -------------------------------------------------- */

/* A vector from a float32 BLOB (dim*4 bytes) or a JSON array of numbers,
** into out (dim floats). */
static int vx_parse_vec(vx_vtab *vt, sqlite3_value *v, float *out,
                        const char *what)
{
    uint32_t dim = vt->params.dim;
    int t = sqlite3_value_type(v);
    if (t == SQLITE_BLOB) {
        int n = sqlite3_value_bytes(v);
        if (n != (int)(dim * sizeof(float))) {
            vx_seterr(vt,
                      "%s: a BLOB of %d bytes is not %u float32 values "
                      "(%u bytes)",
                      what, n, dim, (unsigned)(dim * sizeof(float)));
            return SQLITE_MISMATCH;
        }
        memcpy(out, sqlite3_value_blob(v), dim * sizeof(float));
        return SQLITE_OK;
    }
    if (t == SQLITE_TEXT) {
        const char *p = (const char *)sqlite3_value_text(v);
        uint32_t n = 0;
        if (!p) return SQLITE_NOMEM;
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (*p++ != '[') goto bad;
        for (;;) {
            char *end;
            double d;
            while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
            if (*p == ']' && n == 0) {
                p++;
                break;
            }
            errno = 0;
            d = strtod(p, &end);
            if (end == p) goto bad;
            if (n >= dim) {
                vx_seterr(vt, "%s: the JSON array has more than %u numbers",
                          what, dim);
                return SQLITE_MISMATCH;
            }
            out[n++] = (float)d;
            p = end;
            while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
            if (*p == ',') {
                p++;
                continue;
            }
            if (*p == ']') {
                p++;
                break;
            }
            goto bad;
        }
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (*p) goto bad;
        if (n != dim) {
            vx_seterr(vt, "%s: the JSON array has %u numbers, the table %u",
                      what, n, dim);
            return SQLITE_MISMATCH;
        }
        return SQLITE_OK;
    bad:
        vx_seterr(vt, "%s: not a JSON array of numbers", what);
        return SQLITE_MISMATCH;
    }
    vx_seterr(vt, "%s: expected a float32 BLOB or a JSON array, got %s", what,
              t == SQLITE_NULL ? "NULL" : "a number");
    return SQLITE_MISMATCH;
}

/* ---- Building and keeping the index in step --------------------------- */

static int vx_read_state(vx_vtab *vt, sqlite3_int64 *gen, sqlite3_int64 *stamp)
{
    sqlite3_stmt *s;
    int rc = vx_stmt(vt, VXS_STATE, &s);
    if (rc != SQLITE_OK) return rc;
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *gen = sqlite3_column_int64(s, 0);
        *stamp = sqlite3_column_int64(s, 1);
        sqlite3_reset(s);
        return SQLITE_OK;
    }
    sqlite3_reset(s);
    if (rc == SQLITE_DONE) {
        vx_seterr(vt, "vecidx: %s_state has no row", vt->name);
        return SQLITE_CORRUPT_VTAB;
    }
    return vx_sqlerr(vt, rc);
}

static void vx_undo_clear(vx_vtab *vt)
{
    size_t i;
    for (i = 0; i < vt->nundo; i++) sqlite3_free(vt->undo[i].vec);
    vt->nundo = 0;
}

/* The index no longer matches the database: rebuild at its next use. */
static void vx_mark_stale(vx_vtab *vt)
{
    vt->stale = 1;
    if (vt->nundo > 0 || vt->bumped) vt->undo_ok = 0;
    vx_undo_clear(vt);
}

/* A shadow row's vector, checked. */
static int vx_row_vec(vx_vtab *vt, sqlite3_stmt *s, int col, const float **out)
{
    if (sqlite3_column_type(s, col) != SQLITE_BLOB ||
        sqlite3_column_bytes(s, col) != (int)(vt->params.dim * sizeof(float))) {
        vx_seterr(vt, "vecidx: row %lld of %s_vectors is not %u float32 values",
                  (long long)sqlite3_column_int64(s, 0), vt->name,
                  vt->params.dim);
        return SQLITE_CORRUPT_VTAB;
    }
    *out = sqlite3_column_blob(s, col);
    return *out ? SQLITE_OK : SQLITE_NOMEM;
}

/* Build a fresh index of every row of the shadow table. */
static int vx_rebuild(vx_vtab *vt, sqlite3_int64 gen, sqlite3_int64 stamp)
{
    size_t dim = vt->params.dim, n = 0;
    uint64_t *keys = NULL;
    float *vecs = NULL;
    vecidx *ix = NULL;
    sqlite3_stmt *s = NULL;
    char *sql;
    int rc, vrc;

    vecidx_close(vt->ix);
    vt->ix = NULL;
    vrc = vecidx_create(&vt->params, &ix);
    if (vrc != VECIDX_OK) return vx_iderr(vt, vrc, "create");
    keys = sqlite3_malloc64(VX_BUILD_BATCH * sizeof(uint64_t));
    vecs = sqlite3_malloc64((sqlite3_uint64)VX_BUILD_BATCH * dim *
                            sizeof(float));
    sql = sqlite3_mprintf("SELECT id, vec FROM \"%w\".\"%w_vectors\"",
                          vt->schema, vt->name);
    if (!keys || !vecs || !sql) {
        rc = SQLITE_NOMEM;
        goto done;
    }
    rc = sqlite3_prepare_v2(vt->db, sql, -1, &s, NULL);
    if (rc != SQLITE_OK) {
        rc = vx_sqlerr(vt, rc);
        goto done;
    }
    for (;;) {
        const float *v;
        rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
            rc = vx_row_vec(vt, s, 1, &v);
            if (rc != SQLITE_OK) goto done;
            keys[n] = (uint64_t)sqlite3_column_int64(s, 0);
            memcpy(vecs + n * dim, v, dim * sizeof(float));
            if (++n < VX_BUILD_BATCH) continue;
        } else if (rc != SQLITE_DONE) {
            rc = vx_sqlerr(vt, rc);
            goto done;
        }
        if (n > 0) {
            vrc = vecidx_add_batch(ix, n, keys, vecs);
            if (vrc != VECIDX_OK) {
                vt->ix = ix; /* for the message */
                rc = vx_iderr(vt, vrc, "build");
                vt->ix = NULL;
                goto done;
            }
            n = 0;
        }
        if (rc == SQLITE_DONE) break;
    }
    rc = SQLITE_OK;
    vt->ix = ix;
    ix = NULL;
    vt->gen = gen;
    vt->stamp = stamp;
    vt->stale = 0;
    vt->builds++;
    /* Undo entries recorded before a rebuild no longer apply to it. */
    if (vt->nundo > 0 || vt->bumped) vt->undo_ok = 0;
done:
    sqlite3_finalize(s);
    sqlite3_free(sql);
    sqlite3_free(keys);
    sqlite3_free(vecs);
    vecidx_close(ix);
    return rc;
}

/* Bring the index from generation vt->gen to gen by reading the rows and
** tombstones written since. Returns SQLITE_OK, or SQLITE_DONE when the
** database's history does not continue the index's (rebuild instead). */
static int vx_catch_up(vx_vtab *vt, sqlite3_int64 gen, sqlite3_int64 stamp)
{
    sqlite3_stmt *s;
    int rc, vrc, same;
    if (gen < vt->gen) return SQLITE_DONE;
    rc = vx_stmt(vt, VXS_TXSTAMP, &s);
    if (rc != SQLITE_OK) return rc;
    sqlite3_bind_int64(s, 1, vt->gen);
    rc = sqlite3_step(s);
    same = rc == SQLITE_ROW && sqlite3_column_int64(s, 0) == vt->stamp;
    sqlite3_reset(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return vx_sqlerr(vt, rc);
    if (!same) return SQLITE_DONE;

    /* Deletions first: a row deleted and inserted again since is then
    ** added back by the second pass. */
    rc = vx_stmt(vt, VXS_TOMBS, &s);
    if (rc != SQLITE_OK) return rc;
    sqlite3_bind_int64(s, 1, vt->gen);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        uint64_t key = (uint64_t)sqlite3_column_int64(s, 0);
        if (vecidx_contains(vt->ix, key) == 1) {
            vrc = vecidx_remove(vt->ix, key);
            if (vrc != VECIDX_OK) {
                sqlite3_reset(s);
                return vx_iderr(vt, vrc, "catch up");
            }
            vt->since_cache++;
        }
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) return vx_sqlerr(vt, rc);

    rc = vx_stmt(vt, VXS_CHANGED, &s);
    if (rc != SQLITE_OK) return rc;
    sqlite3_bind_int64(s, 1, vt->gen);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const float *v;
        rc = vx_row_vec(vt, s, 1, &v);
        if (rc != SQLITE_OK) break;
        vrc = vecidx_upsert(vt->ix, (uint64_t)sqlite3_column_int64(s, 0), v);
        if (vrc != VECIDX_OK) {
            rc = vx_iderr(vt, vrc, "catch up");
            break;
        }
        vt->since_cache++;
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) return rc == SQLITE_ROW ? vx_sqlerr(vt, rc) : rc;
    vt->gen = gen;
    vt->stamp = stamp;
    vt->catchups++;
    if (vt->nundo > 0 || vt->bumped) vt->undo_ok = 0;
    return SQLITE_OK;
}

/* ---- On-disk cache ------------------------------------------------------
**
** With cache=..., BASE.GEN.STAMP (STAMP in 16 hex digits) holds the index
** as it was at that committed generation of the table, BASE being the
** table's own (vx_cache_resolve): no other table's files are ever looked
** at, pruned or deleted. The name is the whole claim: a file is only ever
** written under the name of the state it holds, so nothing beside it can
** disagree with it, and concurrent writers and readers need no lock. A
** file is used only when the database's txlog has (GEN, STAMP) -- the
** same history -- at or before its current generation; vecidx_open
** verifies its checksums, the catch-up brings it to the current
** generation, and its count must then equal the table's. Anything else
** (no file, damaged, another history, pruned log, count off) falls back
** to the rebuild, which then writes a fresh file. */

/* Files of base in its directory: f(path, gen, stamp, tmp, arg) for each
** name that is BASE.GEN.STAMP (tmp 0) or one of vecidx_save's temporary
** names for it, BASE.GEN.STAMP.tmp-... (tmp 1). */
static void vx_cache_scan(const char *base,
                          void (*f)(const char *path, sqlite3_int64 gen,
                                    sqlite3_int64 stamp, int tmp, void *arg),
                          void *arg)
{
    const char *slash = strrchr(base, '/');
    char *dir = slash ? sqlite3_mprintf("%.*s", (int)(slash - base + 1), base)
                      : sqlite3_mprintf(".");
    const char *file = slash ? slash + 1 : base;
    size_t flen = strlen(file);
    DIR *d;
    struct dirent *e;
    if (!dir) return;
    d = opendir(dir);
    while (d && (e = readdir(d)) != NULL) {
        const char *p = e->d_name, *q;
        char *end, *path;
        unsigned long long g, st;
        int tmp;
        if (strncmp(p, file, flen) != 0 || p[flen] != '.') continue;
        p += flen + 1;
        if (*p < '0' || *p > '9') continue;
        errno = 0;
        g = strtoull(p, &end, 10);
        if (errno || *end != '.' || g > (unsigned long long)INT64_MAX) continue;
        q = end + 1;
        if (strspn(q, "0123456789abcdef") != 16) continue;
        tmp = q[16] != 0;
        if (tmp && strncmp(q + 16, ".tmp-", 5) != 0) continue;
        st = strtoull(q, &end, 16);
        if (end != q + 16) continue;
        path = slash ? sqlite3_mprintf("%s%s", dir, e->d_name)
                     : sqlite3_mprintf("%s", e->d_name);
        if (!path) break;
        f(path, (sqlite3_int64)g, (sqlite3_int64)st, tmp, arg);
        sqlite3_free(path);
    }
    if (d) closedir(d);
    sqlite3_free(dir);
}

static char *vx_cache_name(vx_vtab *vt, sqlite3_int64 gen, sqlite3_int64 stamp)
{
    return sqlite3_mprintf("%s.%lld.%016llx", vt->cache_base, (long long)gen,
                           (unsigned long long)stamp);
}

/* The newest file no newer than the database's generation. */
typedef struct vx_pick {
    sqlite3_int64 max_gen, gen, stamp;
    int found;
} vx_pick;

static void vx_cache_pick_fn(const char *path, sqlite3_int64 gen,
                             sqlite3_int64 stamp, int tmp, void *arg)
{
    vx_pick *pk = arg;
    (void)path;
    if (tmp || gen > pk->max_gen || (pk->found && gen <= pk->gen)) return;
    pk->gen = gen;
    pk->stamp = stamp;
    pk->found = 1;
}

/* After a save of (gen, stamp): files of older generations are of no more
** use to anyone who can see this one. Newer ones may be another
** connection's, of a commit this one has not seen; they stay. Temporary
** files of older generations go too: a save killed half-way leaves one
** (vecidx_save reuses it only for the same name), and a save still
** writing one would only produce an outdated file (its rename then fails
** and that connection tries again later). */
typedef struct vx_prune {
    sqlite3_int64 gen, stamp;
} vx_prune;

static void vx_cache_prune_fn(const char *path, sqlite3_int64 gen,
                              sqlite3_int64 stamp, int tmp, void *arg)
{
    vx_prune *pr = arg;
    if (gen < pr->gen || (!tmp && gen == pr->gen && stamp != pr->stamp))
        unlink(path);
}

static void vx_cache_drop_fn(const char *path, sqlite3_int64 gen,
                             sqlite3_int64 stamp, int tmp, void *arg)
{
    (void)gen;
    (void)stamp;
    (void)tmp;
    (void)arg;
    unlink(path);
}

/* Write the index to the cache when it holds only committed state and
** the newest file this connection knows of is missing or VX_CACHE_REFRESH
** rows behind. Failures only cost a later load its speed: ignored. */
static void vx_cache_maybe_save(vx_vtab *vt)
{
    char *path;
    vx_prune pr;
    if (!vt->cache_base || !vt->ix || vt->stale) return;
    if (vt->cache_known && vt->since_cache < VX_CACHE_REFRESH) return;
    if (vt->cache_known && vt->cache_gen == vt->gen &&
        vt->cache_stamp == vt->stamp)
        return;
    /* Within a write transaction the index may hold writes that can
    ** still roll back; the file must only ever hold committed state. */
    if (vt->in_txn || vt->bumped || vt->nundo > 0) return;
    if (sqlite3_txn_state(vt->db, vt->schema) == SQLITE_TXN_WRITE) return;
    if (sqlite3_db_readonly(vt->db, vt->schema) != 0) return;
    path = vx_cache_name(vt, vt->gen, vt->stamp);
    if (!path) return;
    if (vecidx_save(vt->ix, path) == VECIDX_OK) {
        vt->cache_known = 1;
        vt->cache_gen = pr.gen = vt->gen;
        vt->cache_stamp = pr.stamp = vt->stamp;
        vt->since_cache = 0;
        vt->cache_saves++;
        vx_cache_scan(vt->cache_base, vx_cache_prune_fn, &pr);
    } else {
        /* An unwritable directory or a full disk must not cost every
        ** query a save: try again VX_CACHE_REFRESH rows later. */
        vt->cache_known = 1;
        vt->cache_gen = -1;
        vt->since_cache = 0;
    }
    sqlite3_free(path);
}

/* The rows of the shadow table, counted on its small seq index. */
static int vx_count_rows(vx_vtab *vt, sqlite3_int64 *n)
{
    sqlite3_stmt *s = NULL;
    char *sql = sqlite3_mprintf("SELECT count(*) FROM \"%w\".\"%w_vectors\"",
                                vt->schema, vt->name);
    int rc;
    if (!sql) return SQLITE_NOMEM;
    rc = sqlite3_prepare_v2(vt->db, sql, -1, &s, NULL);
    sqlite3_free(sql);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
            *n = sqlite3_column_int64(s, 0);
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(s);
    return rc;
}

/* Load the index from the cache and catch it up to (gen, stamp). Returns
** 1 when vt->ix is then current, 0 when the caller must rebuild. */
static int vx_cache_load(vx_vtab *vt, sqlite3_int64 gen, sqlite3_int64 stamp)
{
    vx_pick pk;
    sqlite3_stmt *s;
    vecidx *ix = NULL;
    char *path;
    sqlite3_int64 rows = -1;
    int rc, vrc, same;
    pk.max_gen = gen;
    pk.found = 0;
    pk.gen = pk.stamp = 0;
    vx_cache_scan(vt->cache_base, vx_cache_pick_fn, &pk);
    if (!pk.found) return 0;
    /* The same history: the database had this (gen, stamp). */
    rc = vx_stmt(vt, VXS_TXSTAMP, &s);
    if (rc != SQLITE_OK) return 0;
    sqlite3_bind_int64(s, 1, pk.gen);
    rc = sqlite3_step(s);
    same = rc == SQLITE_ROW && sqlite3_column_int64(s, 0) == pk.stamp;
    sqlite3_reset(s);
    if (!same) {
        vt->cache_rejects++;
        return 0;
    }
    path = vx_cache_name(vt, pk.gen, pk.stamp);
    if (!path) return 0;
    vrc = vecidx_open(path, &vt->params, VECIDX_PRIVATE, &ix);
    if (vrc != VECIDX_OK) {
        /* A damaged file would fail every connection's open again. */
        if (vrc == VECIDX_ECORRUPT || vrc == VECIDX_EVERSION ||
            vrc == VECIDX_EDIM)
            unlink(path);
        sqlite3_free(path);
        vt->cache_rejects++;
        return 0;
    }
    vecidx_close(vt->ix);
    vt->ix = ix;
    vt->gen = pk.gen;
    vt->stamp = pk.stamp;
    vt->since_cache = 0;
    rc = SQLITE_OK;
    if (pk.gen != gen || pk.stamp != stamp) rc = vx_catch_up(vt, gen, stamp);
    if (rc == SQLITE_OK) rc = vx_count_rows(vt, &rows);
    if (rc != SQLITE_OK || rows < 0 || (uint64_t)rows != vecidx_count(vt->ix)) {
        /* A file that verified but disagrees with the table was not
        ** written by this extension for this table: do not trust it. */
        if (rc == SQLITE_OK) unlink(path);
        sqlite3_free(path);
        vecidx_close(vt->ix);
        vt->ix = NULL;
        vt->cache_rejects++;
        return 0;
    }
    sqlite3_free(path);
    vt->stale = 0;
    vt->cache_known = 1;
    vt->cache_gen = pk.gen;
    vt->cache_stamp = pk.stamp;
    vt->cache_loads++;
    if (vt->nundo > 0 || vt->bumped) vt->undo_ok = 0;
    return 1;
}

/* Make the index reflect the database as this connection sees it now. */
static int vx_ensure(vx_vtab *vt)
{
    unsigned dv = 0;
    int have_dv = sqlite3_file_control(vt->db, vt->schema,
                                       SQLITE_FCNTL_DATA_VERSION,
                                       &dv) == SQLITE_OK;
    sqlite3_int64 gen = 0, stamp = 0;
    int rc;
    /* The data version is current only while a read transaction is open
    ** (its start is when the pager looks for changes by others); the
    ** statement running may not have opened one on this schema yet. */
    if (have_dv && sqlite3_txn_state(vt->db, vt->schema) == SQLITE_TXN_NONE)
        have_dv = 0;
    if (vt->ix && !vt->stale && have_dv && vt->have_dv && dv == vt->dv) {
        if (vt->cache_base) vx_cache_maybe_save(vt);
        return SQLITE_OK;
    }
    rc = vx_read_state(vt, &gen, &stamp);
    if (rc != SQLITE_OK) return rc;
    if (vt->ix && !vt->stale && (gen != vt->gen || stamp != vt->stamp)) {
        rc = vx_catch_up(vt, gen, stamp);
        if (rc != SQLITE_OK) vx_mark_stale(vt);
        if (rc != SQLITE_OK && rc != SQLITE_DONE) return rc;
    }
    if (!vt->ix && vt->cache_base && vx_cache_load(vt, gen, stamp)) {
        /* loaded and caught up */
    } else if (!vt->ix || vt->stale) {
        rc = vx_rebuild(vt, gen, stamp);
        if (rc != SQLITE_OK) return rc;
        vt->cache_known = 0;
    }
    vt->dv = dv;
    vt->have_dv = have_dv;
    if (vt->cache_base) vx_cache_maybe_save(vt);
    return SQLITE_OK;
}

/* ---- Undo ------------------------------------------------------------- */

static int vx_undo_push(vx_vtab *vt, int op, sqlite3_int64 id,
                        sqlite3_int64 stamp, const float *vec)
{
    vx_undo *u;
    if (vt->nundo == vt->capundo) {
        size_t cap = vt->capundo ? vt->capundo * 2 : 64;
        vx_undo *nu = sqlite3_realloc64(vt->undo, cap * sizeof(*nu));
        if (!nu) return SQLITE_NOMEM;
        vt->undo = nu;
        vt->capundo = cap;
    }
    u = &vt->undo[vt->nundo];
    u->op = op;
    u->id = id;
    u->stamp = stamp;
    u->vec = NULL;
    if (vec) {
        size_t bytes = vt->params.dim * sizeof(float);
        u->vec = sqlite3_malloc64(bytes);
        if (!u->vec) return SQLITE_NOMEM;
        memcpy(u->vec, vec, bytes);
    }
    vt->nundo++;
    return SQLITE_OK;
}

/* Undo entries from the last down to entry `to`. On a failure the index is
** marked stale (rebuilt from the rolled-back database at its next use). */
static void vx_undo_to(vx_vtab *vt, size_t to)
{
    while (vt->nundo > to) {
        vx_undo *u = &vt->undo[vt->nundo - 1];
        int vrc = VECIDX_OK;
        if (vt->ix && !vt->stale) {
            switch (u->op) {
            case VXU_ADDED:
                vrc = vecidx_remove(vt->ix, (uint64_t)u->id);
                break;
            case VXU_CHANGED:
                vrc = vecidx_upsert(vt->ix, (uint64_t)u->id, u->vec);
                break;
            case VXU_REMOVED:
                vrc = vecidx_add(vt->ix, (uint64_t)u->id, u->vec);
                break;
            default:
                break;
            }
        }
        if (u->op == VXU_BUMP) {
            vt->gen = u->id;
            vt->stamp = u->stamp;
            vt->bumped = 0;
        }
        sqlite3_free(u->vec);
        vt->nundo--;
        if (vrc != VECIDX_OK) {
            vx_mark_stale(vt);
            return;
        }
    }
}

/* ---- Writing ---------------------------------------------------------- */

/* Before the first write of a transaction: make sure the index is current,
** then move the generation on (undone with the transaction). */
static int vx_begin_write(vx_vtab *vt)
{
    sqlite3_stmt *s;
    sqlite3_int64 gen, stamp = 0;
    struct timespec ts;
    int rc = vx_ensure(vt);
    if (rc != SQLITE_OK) return rc;
    /* After a rebuild mid-transaction (the undo list was lost) a savepoint
    ** rollback may have taken the database's generation back: then this
    ** transaction has not moved it on yet. */
    if (vt->bumped && (vt->gen != vt->bump_gen || vt->stamp != vt->bump_stamp))
        vt->bumped = 0;
    if (vt->bumped) return SQLITE_OK;
    gen = vt->gen + 1;
    /* SQLite's generator, with the process and the time mixed in: forked
    ** processes start with the same generator state. */
    sqlite3_randomness((int)sizeof(stamp), &stamp);
    clock_gettime(CLOCK_REALTIME, &ts);
    stamp ^= (sqlite3_int64)(((uint64_t)getpid() << 40) ^
                             ((uint64_t)ts.tv_sec << 30) ^
                             (uint64_t)ts.tv_nsec);
    rc = vx_stmt(vt, VXS_SETSTATE, &s);
    if (rc != SQLITE_OK) return rc;
    sqlite3_bind_int64(s, 1, gen);
    sqlite3_bind_int64(s, 2, stamp);
    rc = vx_run(vt, s);
    if (rc != SQLITE_OK) return rc;
    rc = vx_stmt(vt, VXS_TXLOG, &s);
    if (rc != SQLITE_OK) return rc;
    sqlite3_bind_int64(s, 1, gen);
    sqlite3_bind_int64(s, 2, stamp);
    rc = vx_run(vt, s);
    if (rc != SQLITE_OK) return rc;
    if (gen % VX_PRUNE_EVERY == 0 && gen > VX_KEEP_GENS) {
        int i;
        for (i = VXS_PRUNE_LOG; i <= VXS_PRUNE_DEL && rc == SQLITE_OK; i++) {
            rc = vx_stmt(vt, i, &s);
            if (rc != SQLITE_OK) return rc;
            sqlite3_bind_int64(s, 1, gen - VX_KEEP_GENS);
            rc = vx_run(vt, s);
        }
        if (rc != SQLITE_OK) return rc;
    }
    rc = vx_undo_push(vt, VXU_BUMP, vt->gen, vt->stamp, NULL);
    if (rc != SQLITE_OK) {
        /* The database moved on; without the undo entry a rollback could
        ** not restore the in-memory generation. */
        vx_mark_stale(vt);
        return rc;
    }
    vt->gen = vt->bump_gen = gen;
    vt->stamp = vt->bump_stamp = stamp;
    vt->bumped = 1;
    return SQLITE_OK;
}

/* The stored vector of row id into vt->scratch; SQLITE_DONE if none. */
static int vx_get_stored(vx_vtab *vt, sqlite3_int64 id)
{
    sqlite3_stmt *s;
    const float *v;
    int rc = vx_stmt(vt, VXS_GET, &s);
    if (rc != SQLITE_OK) return rc;
    sqlite3_bind_int64(s, 1, id);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        rc = vx_row_vec(vt, s, 0, &v);
        if (rc == SQLITE_OK)
            memcpy(vt->scratch, v, vt->params.dim * sizeof(float));
    } else if (rc != SQLITE_DONE) {
        rc = vx_sqlerr(vt, rc);
    }
    sqlite3_reset(s);
    return rc;
}

static int vx_write_row(vx_vtab *vt, int which, sqlite3_int64 id,
                        sqlite3_int64 seq, const float *vec)
{
    sqlite3_stmt *s;
    int rc = vx_stmt(vt, which, &s);
    if (rc != SQLITE_OK) return rc;
    sqlite3_bind_int64(s, 1, id);
    if (which != VXS_DELETE) sqlite3_bind_int64(s, 2, seq);
    if (vec)
        sqlite3_bind_blob(s, 3, vec, (int)(vt->params.dim * sizeof(float)),
                          SQLITE_STATIC);
    return vx_run(vt, s);
}

/* Delete row id (no-op if absent). */
static int vx_delete_row(vx_vtab *vt, sqlite3_int64 id)
{
    int rc, vrc;
    if (vecidx_contains(vt->ix, (uint64_t)id) != 1) return SQLITE_OK;
    rc = vx_get_stored(vt, id);
    if (rc == SQLITE_DONE) {
        vx_seterr(vt, "vecidx: row %lld is indexed but not stored",
                  (long long)id);
        vx_mark_stale(vt);
        return SQLITE_CORRUPT_VTAB;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_OK) return rc;
    rc = vx_write_row(vt, VXS_DELETE, id, 0, NULL);
    if (rc == SQLITE_OK) rc = vx_write_row(vt, VXS_TOMB, id, vt->gen, NULL);
    if (rc != SQLITE_OK) return rc; /* the statement's rollback undoes it */
    vrc = vecidx_remove(vt->ix, (uint64_t)id);
    if (vrc != VECIDX_OK) {
        vx_mark_stale(vt);
        return vx_iderr(vt, vrc, "remove");
    }
    rc = vx_undo_push(vt, VXU_REMOVED, id, 0, vt->scratch);
    if (rc != SQLITE_OK) vx_mark_stale(vt);
    vt->since_cache++;
    return rc;
}

/* Insert (or with replace, overwrite) row id with vec. */
static int vx_put_row(vx_vtab *vt, sqlite3_int64 id, const float *vec,
                      int replace)
{
    int exists = vecidx_contains(vt->ix, (uint64_t)id) == 1;
    int rc, vrc;
    if (exists && !replace) {
        vx_seterr(vt, "UNIQUE constraint failed: %s.rowid", vt->name);
        return SQLITE_CONSTRAINT;
    }
    if (exists) {
        rc = vx_get_stored(vt, id);
        if (rc == SQLITE_DONE) {
            vx_seterr(vt, "vecidx: row %lld is indexed but not stored",
                      (long long)id);
            vx_mark_stale(vt);
            return SQLITE_CORRUPT_VTAB;
        }
        if (rc != SQLITE_ROW && rc != SQLITE_OK) return rc;
        vrc = vecidx_upsert(vt->ix, (uint64_t)id, vec);
    } else {
        vrc = vecidx_add(vt->ix, (uint64_t)id, vec);
    }
    if (vrc != VECIDX_OK) {
        rc = vx_iderr(vt, vrc, exists ? "update" : "insert");
        return rc == SQLITE_ERROR && vrc == VECIDX_EINVAL ? SQLITE_MISMATCH
                                                          : rc;
    }
    rc = vx_write_row(vt, exists ? VXS_REPLACE : VXS_INSERT, id, vt->gen, vec);
    if (rc != SQLITE_OK) {
        /* Put the index back as the shadow table still is. */
        vrc = exists ? vecidx_upsert(vt->ix, (uint64_t)id, vt->scratch)
                     : vecidx_remove(vt->ix, (uint64_t)id);
        if (vrc != VECIDX_OK) vx_mark_stale(vt);
        return rc;
    }
    rc = vx_undo_push(vt, exists ? VXU_CHANGED : VXU_ADDED, id, 0,
                      exists ? vt->scratch : NULL);
    if (rc != SQLITE_OK) vx_mark_stale(vt);
    vt->since_cache++;
    return rc;
}

static int vx_update(sqlite3_vtab *base, int argc, sqlite3_value **argv,
                     sqlite3_int64 *rowid)
{
    vx_vtab *vt = (vx_vtab *)base;
    float *vec = NULL;
    int rc = vx_begin_write(vt);
    int replace = sqlite3_vtab_on_conflict(vt->db) == SQLITE_REPLACE;
    if (rc != SQLITE_OK) return rc;

    if (argc == 1) return vx_delete_row(vt, sqlite3_value_int64(argv[0]));

    vec = sqlite3_malloc64(vt->params.dim * sizeof(float));
    if (!vec) return SQLITE_NOMEM;
    if (sqlite3_value_type(argv[0]) == SQLITE_NULL) {
        /* INSERT */
        sqlite3_int64 id;
        rc = vx_parse_vec(vt, argv[2 + VX_COL_VEC], vec, vt->col);
        if (rc != SQLITE_OK) goto done;
        if (sqlite3_value_type(argv[1]) == SQLITE_NULL) {
            sqlite3_stmt *s;
            rc = vx_stmt(vt, VXS_MAXID, &s);
            if (rc != SQLITE_OK) goto done;
            rc = sqlite3_step(s);
            id = rc == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
            sqlite3_reset(s);
            if (rc != SQLITE_ROW) {
                rc = vx_sqlerr(vt, rc);
                goto done;
            }
            if (id == INT64_MAX) {
                vx_seterr(vt, "vecidx: no rowid left after %lld",
                          (long long)id);
                rc = SQLITE_FULL;
                goto done;
            }
            id = id < 0 ? 1 : id + 1;
        } else if (sqlite3_value_type(argv[1]) != SQLITE_INTEGER) {
            vx_seterr(vt, "datatype mismatch: rowid must be an integer");
            rc = SQLITE_MISMATCH;
            goto done;
        } else {
            id = sqlite3_value_int64(argv[1]);
        }
        rc = vx_put_row(vt, id, vec, replace);
        if (rc == SQLITE_OK) *rowid = id;
    } else {
        /* UPDATE, possibly of the rowid. */
        sqlite3_int64 old = sqlite3_value_int64(argv[0]);
        sqlite3_int64 id;
        if (sqlite3_value_type(argv[1]) != SQLITE_INTEGER) {
            vx_seterr(vt, "datatype mismatch: rowid must be an integer");
            rc = SQLITE_MISMATCH;
            goto done;
        }
        id = sqlite3_value_int64(argv[1]);
        if (sqlite3_value_nochange(argv[2 + VX_COL_VEC])) {
            rc = vx_get_stored(vt, old);
            if (rc == SQLITE_DONE) rc = SQLITE_OK; /* row gone: nothing */
            if (rc != SQLITE_ROW && rc != SQLITE_OK) goto done;
            memcpy(vec, vt->scratch, vt->params.dim * sizeof(float));
            if (id == old) {
                rc = SQLITE_OK;
                goto done;
            }
        } else {
            rc = vx_parse_vec(vt, argv[2 + VX_COL_VEC], vec, vt->col);
            if (rc != SQLITE_OK) goto done;
        }
        if (id != old) {
            if (!replace && vecidx_contains(vt->ix, (uint64_t)id) == 1) {
                vx_seterr(vt, "UNIQUE constraint failed: %s.rowid", vt->name);
                rc = SQLITE_CONSTRAINT;
                goto done;
            }
            rc = vx_delete_row(vt, old);
            if (rc != SQLITE_OK) goto done;
        }
        rc = vx_put_row(vt, id, vec, 1);
    }
done:
    sqlite3_free(vec);
    return rc;
}

/* ---- Transactions ----------------------------------------------------- */

static void vx_txn_end(vx_vtab *vt)
{
    vx_undo_clear(vt);
    vt->nmarks = 0;
    vt->in_txn = 0;
    vt->bumped = 0;
    vt->undo_ok = 1;
}

static int vx_begin(sqlite3_vtab *base)
{
    vx_vtab *vt = (vx_vtab *)base;
    vx_txn_end(vt);
    vt->in_txn = 1;
    return SQLITE_OK;
}

static int vx_sync(sqlite3_vtab *base)
{
    (void)base;
    return SQLITE_OK;
}

static int vx_commit(sqlite3_vtab *base)
{
    vx_txn_end((vx_vtab *)base);
    return SQLITE_OK;
}

static int vx_rollback(sqlite3_vtab *base)
{
    vx_vtab *vt = (vx_vtab *)base;
    if (vt->undo_ok)
        vx_undo_to(vt, 0);
    else
        vt->stale = 1;
    vx_txn_end(vt);
    return SQLITE_OK;
}

static int vx_savepoint(sqlite3_vtab *base, int n)
{
    vx_vtab *vt = (vx_vtab *)base;
    if (n < 0) return SQLITE_OK;
    if (n >= vt->capmarks) {
        int cap = n + 16;
        size_t *nm = sqlite3_realloc64(vt->marks, (size_t)cap * sizeof(*nm));
        if (!nm) return SQLITE_NOMEM;
        vt->marks = nm;
        vt->capmarks = cap;
    }
    /* Savepoints opened before this table joined the transaction started
    ** with nothing of it done. */
    while (vt->nmarks < n) vt->marks[vt->nmarks++] = 0;
    vt->marks[n] = vt->nundo;
    vt->nmarks = n + 1;
    return SQLITE_OK;
}

static int vx_release(sqlite3_vtab *base, int n)
{
    vx_vtab *vt = (vx_vtab *)base;
    if (n >= 0 && n < vt->nmarks) vt->nmarks = n;
    return SQLITE_OK;
}

static int vx_rollback_to(sqlite3_vtab *base, int n)
{
    vx_vtab *vt = (vx_vtab *)base;
    size_t to = n >= 0 && n < vt->nmarks ? vt->marks[n] : 0;
    if (n >= vt->nmarks) return SQLITE_OK; /* nothing since */
    if (!vt->undo_ok) {
        vt->stale = 1;
    } else {
        vx_undo_to(vt, to);
    }
    vt->nmarks = n < 0 ? 0 : n + 1;
    return SQLITE_OK;
}

/* ---- Create, connect, destroy ----------------------------------------- */

static void vx_free_vtab(vx_vtab *vt)
{
    int i;
    vx_vtab **pp;
    if (!vt) return;
    if (vt->conn) {
        for (pp = &vt->conn->tables; *pp; pp = &(*pp)->next)
            if (*pp == vt) {
                *pp = vt->next;
                break;
            }
    }
    for (i = 0; i < VXS_COUNT; i++) sqlite3_finalize(vt->st[i]);
    vx_undo_clear(vt);
    sqlite3_free(vt->undo);
    sqlite3_free(vt->marks);
    sqlite3_free(vt->scratch);
    vecidx_close(vt->ix);
    sqlite3_free(vt->schema);
    sqlite3_free(vt->name);
    sqlite3_free(vt->col);
    sqlite3_free(vt->cache_opt);
    sqlite3_free(vt->cache_base);
    sqlite3_free(vt);
}

static int vx_streq(const char *a, size_t n, const char *b)
{
    return strlen(b) == n && sqlite3_strnicmp(a, b, (int)n) == 0;
}

/* An unsigned option value. */
static int vx_uint(const char *v, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    unsigned long long x;
    if (*v < '0' || *v > '9') return 0;
    errno = 0;
    x = strtoull(v, &end, 10);
    if (errno || *end || x < lo || x > hi) return 0;
    *out = (uint32_t)x;
    return 1;
}

/* The options whose values are names, and their names. Aliases sit next
** to the name they stand for: the error message lists them in this order. */
enum {
    VX_N_METRIC,
    VX_N_KIND,
    VX_N_STORAGE,
    VX_N_OPTIONS
};

static const char *const vx_named_options[VX_N_OPTIONS] = {"metric", "kind",
                                                           "storage"};

static const struct {
    int option;
    const char *name;
    int value;
} vx_names[] = {{VX_N_METRIC, "l2", VECIDX_L2},
                {VX_N_METRIC, "ip", VECIDX_IP},
                {VX_N_METRIC, "dot", VECIDX_IP},
                {VX_N_METRIC, "cos", VECIDX_COSINE},
                {VX_N_METRIC, "cosine", VECIDX_COSINE},
                {VX_N_KIND, "hnsw", VECIDX_HNSW},
                {VX_N_KIND, "flat", VECIDX_FLAT},
                {VX_N_KIND, "ivfpq", VECIDX_IVFPQ},
                {VX_N_STORAGE, "f32", VECIDX_STORE_F32},
                {VX_N_STORAGE, "f16", VECIDX_STORE_F16},
                {VX_N_STORAGE, "i8", VECIDX_STORE_I8},
                {VX_N_STORAGE, "bin", VECIDX_STORE_BIN}};

#define VX_NNAMES ((int)(sizeof(vx_names) / sizeof(vx_names[0])))

/* The option key (klen bytes) set to v. Returns 0 when the key does not
** take a name; otherwise sets *option, and returns 1 with *value set when
** v is one of its names, or -1 with *err the message when it is not. */
static int vx_named(const char *key, size_t klen, const char *v, int *option,
                    int *value, char **err)
{
    sqlite3_str *m;
    const char *sep = "";
    int o, i;
    for (o = 0; o < VX_N_OPTIONS; o++)
        if (vx_streq(key, klen, vx_named_options[o])) break;
    if (o == VX_N_OPTIONS) return 0;
    *option = o;
    for (i = 0; i < VX_NNAMES; i++)
        if (vx_names[i].option == o && !sqlite3_stricmp(v, vx_names[i].name)) {
            *value = vx_names[i].value;
            return 1;
        }
    /* Every accepted name in the message: a typo needs no trip to the
    ** documentation. */
    m = sqlite3_str_new(NULL);
    sqlite3_str_appendf(m, "vecidx: bad argument \"%s=%s\": %s is one of ",
                        vx_named_options[o], v, vx_named_options[o]);
    for (i = 0; i < VX_NNAMES; i++) {
        if (vx_names[i].option != o) continue;
        sqlite3_str_appendf(m, "%s%s", sep, vx_names[i].name);
        sep = ", ";
    }
    *err = sqlite3_str_finish(m);
    return -1;
}

/* Parse the CREATE VIRTUAL TABLE arguments into vt->params and vt->col. */
static int vx_parse_args(vx_vtab *vt, int argc, const char *const *argv,
                         char **pzErr)
{
    int named[VX_N_OPTIONS] = {VECIDX_L2, VECIDX_HNSW, VECIDX_STORE_F32};
    int opt = 0, val = 0, rc, i;
    uint32_t dim = 0;
    struct {
        const char *key;
        uint32_t lo, hi, val;
        int set;
    } num[] = {{"M", 2, 128, 0, 0},
               {"ef_construction", 1, 1u << 20, 0, 0},
               {"ef", 1, 1u << 20, 0, 0},
               {"nlist", 1, 1u << 20, 0, 0},
               {"nprobe", 1, 1u << 20, 0, 0},
               {"pq_m", 1, VECIDX_MAX_DIM, 0, 0},
               {"refine", 0, 1u << 16, 0, 0},
               {"keep_vectors", 0, 1, 0, 0},
               {"threads", 0, 1024, 0, 0},
               {"seed", 0, UINT32_MAX, 0, 0},
               {"train_size", 1, UINT32_MAX, 0, 0}};
    const int nnum = (int)(sizeof(num) / sizeof(num[0]));
    vecidx_params *p = &vt->params;

    for (i = 3; i < argc; i++) {
        const char *a = argv[i], *eq = strchr(a, '='), *v;
        size_t klen;
        int j;
        while (*a == ' ') a++;
        if (!eq) {
            /* "name float[N]": the vector column, as sqlite-vec writes it */
            const char *sp = strchr(a, ' ');
            const char *br = sp ? strstr(sp, "float[") : NULL;
            uint32_t d;
            char num_buf[16];
            size_t nl;
            if (!sp || !br) goto bad;
            br += 6;
            nl = strcspn(br, "]");
            if (nl == 0 || nl >= sizeof(num_buf) || br[nl] != ']') goto bad;
            memcpy(num_buf, br, nl);
            num_buf[nl] = 0;
            if (!vx_uint(num_buf, 1, VECIDX_MAX_DIM, &d)) goto bad;
            dim = d;
            sqlite3_free(vt->col);
            vt->col = sqlite3_mprintf("%.*s", (int)(sp - a), a);
            if (!vt->col) return SQLITE_NOMEM;
            continue;
        }
        klen = (size_t)(eq - a);
        while (klen > 0 && a[klen - 1] == ' ') klen--;
        v = eq + 1;
        while (*v == ' ') v++;
        if (vx_streq(a, klen, "dim")) {
            if (!vx_uint(v, 1, VECIDX_MAX_DIM, &dim)) goto bad;
        } else if ((rc = vx_named(a, klen, v, &opt, &val, pzErr)) != 0) {
            if (rc < 0) return *pzErr ? SQLITE_ERROR : SQLITE_NOMEM;
            named[opt] = val;
        } else if (vx_streq(a, klen, "cache")) {
            size_t vl = strlen(v);
            /* SQLite passes the argument's text as written: a path is
            ** naturally quoted. */
            if (vl >= 2 && (v[0] == '\'' || v[0] == '"') && v[vl - 1] == v[0]) {
                v++;
                vl -= 2;
            }
            if (vl == 0) goto bad;
            sqlite3_free(vt->cache_opt);
            vt->cache_opt = sqlite3_mprintf("%.*s", (int)vl, v);
            if (!vt->cache_opt) return SQLITE_NOMEM;
        } else if (vx_streq(a, klen, "column")) {
            sqlite3_free(vt->col);
            vt->col = sqlite3_mprintf("%s", v);
            if (!vt->col) return SQLITE_NOMEM;
        } else {
            for (j = 0; j < nnum; j++)
                if (vx_streq(a, klen, num[j].key)) break;
            if (j == nnum) {
                *pzErr = sqlite3_mprintf("vecidx: unknown option \"%.*s\"",
                                         (int)klen, a);
                return SQLITE_ERROR;
            }
            if (!vx_uint(v, num[j].lo, num[j].hi, &num[j].val)) goto bad;
            num[j].set = 1;
        }
        continue;
    bad:
        *pzErr = sqlite3_mprintf("vecidx: bad argument \"%s\"", argv[i]);
        return SQLITE_ERROR;
    }
    if (dim == 0) {
        *pzErr = sqlite3_mprintf("vecidx: dim=N is required");
        return SQLITE_ERROR;
    }
    if (vecidx_params_init(p, named[VX_N_KIND], named[VX_N_METRIC], dim) !=
        VECIDX_OK) {
        *pzErr = sqlite3_mprintf("vecidx: bad dim %u", dim);
        return SQLITE_ERROR;
    }
    p->storage = (uint32_t)named[VX_N_STORAGE];
    if (num[0].set) p->hnsw_m = num[0].val;
    if (num[1].set) p->hnsw_ef_construction = num[1].val;
    if (num[2].set) p->hnsw_ef_search = num[2].val;
    if (num[3].set) p->ivf_nlist = num[3].val;
    if (num[4].set) p->ivf_nprobe = num[4].val;
    if (num[5].set) p->pq_m = num[5].val;
    if (num[6].set) {
        p->refine = num[6].val;
        p->ivf_refine = num[6].val;
    }
    if (num[7].set) {
        p->keep_vectors = num[7].val;
        p->ivf_keep_vectors = num[7].val;
    }
    if (num[8].set) p->threads = num[8].val;
    if (num[9].set) p->seed = num[9].val;
    if (num[10].set) p->ivf_train_size = num[10].val;
    if (!vt->col) vt->col = sqlite3_mprintf("embedding");
    if (!vt->col) return SQLITE_NOMEM;
    {
        /* Let vecidx judge the combination now rather than at first use. */
        vecidx *probe = NULL;
        int vrc = vecidx_create(p, &probe);
        vecidx_close(probe);
        if (vrc != VECIDX_OK) {
            *pzErr = sqlite3_mprintf("vecidx: %s (%s)", vecidx_errmsg(NULL),
                                     vecidx_strerror(vrc));
            return SQLITE_ERROR;
        }
    }
    return SQLITE_OK;
}

/* FNV-1a over n bytes of p, continuing from h. */
static uint64_t vx_fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    size_t i;
    for (i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

/* vt->cache_base for the table's current name, from the option's value:
** "0" none, "1" the database's path with "-TABLE.vxc", else the path given
** with "-" and 16 hex digits naming the database file and the table.
** That name is what keeps tables apart when several are given the same
** path (a copied CREATE, or one cache directory for several databases):
** each prunes every file of its base but the newest, and would take any
** other table's files for its own stale or foreign ones. A database
** without a file (in-memory, temp) starts a new history each time: no
** cache. */
static int vx_cache_resolve(vx_vtab *vt)
{
    const char *file = sqlite3_db_filename(vt->db, vt->schema);
    const char *opt = vt->cache_opt;
    sqlite3_free(vt->cache_base);
    vt->cache_base = NULL;
    if (!opt || !strcmp(opt, "0") || !file || !*file) return SQLITE_OK;
    if (!strcmp(opt, "1")) {
        vt->cache_base = sqlite3_mprintf("%s-%s.vxc", file, vt->name);
    } else {
        uint64_t h = 0xcbf29ce484222325ULL;
        h = vx_fnv(h, file, strlen(file) + 1);
        h = vx_fnv(h, vt->name, strlen(vt->name));
        vt->cache_base = sqlite3_mprintf("%s-%016llx", opt,
                                         (unsigned long long)h);
    }
    return vt->cache_base ? SQLITE_OK : SQLITE_NOMEM;
}

static int vx_init(sqlite3 *db, void *aux, int argc, const char *const *argv,
                   sqlite3_vtab **out, char **pzErr, int create)
{
    vx_vtab *vt;
    int rc;
    *out = NULL;
    vt = sqlite3_malloc(sizeof(*vt));
    if (!vt) return SQLITE_NOMEM;
    memset(vt, 0, sizeof(*vt));
    vt->db = db;
    vt->undo_ok = 1;
    vt->schema = sqlite3_mprintf("%s", argv[1]);
    vt->name = sqlite3_mprintf("%s", argv[2]);
    if (!vt->schema || !vt->name) {
        rc = SQLITE_NOMEM;
        goto fail;
    }
    rc = vx_parse_args(vt, argc, argv, pzErr);
    if (rc != SQLITE_OK) goto fail;
    vt->scratch = sqlite3_malloc64(vt->params.dim * sizeof(float));
    if (!vt->scratch) {
        rc = SQLITE_NOMEM;
        goto fail;
    }
    rc = vx_cache_resolve(vt);
    if (rc != SQLITE_OK) goto fail;
    if (create) {
        const char *s = vt->schema, *n = vt->name;
        rc = vx_exec(
            db, pzErr,
            "CREATE TABLE \"%w\".\"%w_vectors\"(id INTEGER PRIMARY KEY, "
            "seq INTEGER NOT NULL, vec BLOB NOT NULL);"
            "CREATE INDEX \"%w\".\"%w_vectors_seq\" ON \"%w_vectors\"(seq);"
            "CREATE TABLE \"%w\".\"%w_deleted\"(id INTEGER PRIMARY KEY, "
            "seq INTEGER NOT NULL);"
            "CREATE INDEX \"%w\".\"%w_deleted_seq\" ON \"%w_deleted\"(seq);"
            "CREATE TABLE \"%w\".\"%w_txlog\"(gen INTEGER PRIMARY KEY, "
            "stamp INTEGER NOT NULL);"
            "CREATE TABLE \"%w\".\"%w_state\"(id INTEGER PRIMARY KEY "
            "CHECK (id = 0), gen INTEGER NOT NULL, stamp INTEGER NOT NULL);"
            "INSERT INTO \"%w\".\"%w_state\" VALUES (0, 0, random());"
            "INSERT INTO \"%w\".\"%w_txlog\" SELECT gen, stamp FROM "
            "\"%w\".\"%w_state\";",
            s, n, s, n, n, s, n, s, n, n, s, n, s, n, s, n, s, n, s, n);
        if (rc != SQLITE_OK) goto fail;
    }
    {
        char *decl = sqlite3_mprintf("CREATE TABLE x(\"%w\", distance HIDDEN, "
                                     "k HIDDEN, ef HIDDEN, nprobe HIDDEN, "
                                     "allowed HIDDEN)",
                                     vt->col);
        if (!decl) {
            rc = SQLITE_NOMEM;
            goto fail;
        }
        rc = sqlite3_declare_vtab(db, decl);
        sqlite3_free(decl);
        if (rc != SQLITE_OK) {
            *pzErr = sqlite3_mprintf("%s", sqlite3_errmsg(db));
            goto fail;
        }
    }
    sqlite3_vtab_config(db, SQLITE_VTAB_CONSTRAINT_SUPPORT, 1);
    vt->conn = aux;
    vt->next = vt->conn->tables;
    vt->conn->tables = vt;
    *out = &vt->base;
    return SQLITE_OK;
fail:
    vx_free_vtab(vt);
    return rc;
}

static int vx_create(sqlite3 *db, void *aux, int argc, const char *const *argv,
                     sqlite3_vtab **out, char **pzErr)
{
    return vx_init(db, aux, argc, argv, out, pzErr, 1);
}

static int vx_connect(sqlite3 *db, void *aux, int argc, const char *const *argv,
                      sqlite3_vtab **out, char **pzErr)
{
    return vx_init(db, aux, argc, argv, out, pzErr, 0);
}

static int vx_disconnect(sqlite3_vtab *base)
{
    vx_vtab *vt = (vx_vtab *)base;
    /* Rows changed on this connection would otherwise be caught up by
    ** every later first use. */
    vx_cache_maybe_save(vt);
    vx_free_vtab(vt);
    return SQLITE_OK;
}

static const char *const vx_shadows[] = {"vectors", "deleted", "txlog",
                                         "state"};

static int vx_destroy(sqlite3_vtab *base)
{
    vx_vtab *vt = (vx_vtab *)base;
    int rc = SQLITE_OK;
    size_t i;
    for (i = 0; i < VXS_COUNT; i++) {
        sqlite3_finalize(vt->st[i]);
        vt->st[i] = NULL;
    }
    for (i = 0; rc == SQLITE_OK && i < 4; i++)
        rc = vx_exec(vt->db, NULL, "DROP TABLE IF EXISTS \"%w\".\"%w_%s\"",
                     vt->schema, vt->name, vx_shadows[i]);
    if (rc != SQLITE_OK) return vx_sqlerr(vt, rc);
    if (vt->cache_base) vx_cache_scan(vt->cache_base, vx_cache_drop_fn, NULL);
    vx_free_vtab(vt);
    return SQLITE_OK;
}

static int vx_rename(sqlite3_vtab *base, const char *new_name)
{
    vx_vtab *vt = (vx_vtab *)base;
    int rc = SQLITE_OK;
    size_t i;
    char *nn = sqlite3_mprintf("%s", new_name);
    if (!nn) return SQLITE_NOMEM;
    for (i = 0; i < VXS_COUNT; i++) {
        sqlite3_finalize(vt->st[i]);
        vt->st[i] = NULL;
    }
    for (i = 0; rc == SQLITE_OK && i < 4; i++)
        rc = vx_exec(
            vt->db, NULL, "ALTER TABLE \"%w\".\"%w_%s\" RENAME TO \"%w_%s\"",
            vt->schema, vt->name, vx_shadows[i], new_name, vx_shadows[i]);
    if (rc != SQLITE_OK) {
        sqlite3_free(nn);
        return vx_sqlerr(vt, rc);
    }
    sqlite3_free(vt->name);
    vt->name = nn;
    if (vt->cache_base) {
        /* The files of the old name would never be found again. */
        vx_cache_scan(vt->cache_base, vx_cache_drop_fn, NULL);
        vt->cache_known = 0;
        return vx_cache_resolve(vt);
    }
    return SQLITE_OK;
}

static int vx_shadow_name(const char *suffix)
{
    size_t i;
    for (i = 0; i < 4; i++)
        if (!sqlite3_stricmp(suffix, vx_shadows[i])) return 1;
    return 0;
}

/* ---- Planning ----------------------------------------------------------- */

/* What a search costs SQLite's planner, in its units (about one row read):
** a graph search reads about log(n) rows' worth, an allowed set makes it
** cheaper to pick; one row searched by itself is a lookup. */
#define VX_COST_SEARCH 100.0
#define VX_COST_ONE 10.0
/* k = N with the rowid joined to another table would let that table's
** filter remove rows after the N nearest were chosen (fewer than N
** results), or, run once per row of the other table, return every joined
** row: neither is what k = N says. Such a plan is costed so that SQLite
** takes any other (a rowid IN list) first, and fails with advice in
** xFilter. */
#define VX_COST_REFUSED 1e10
/* A search limited by a rowid = value constraint: what `rowid = ?` asks,
** but SQLite also offers the join's `v.rowid = d.id` this way, which must
** not win over the plan above: costed higher still. */
#define VX_COST_ROW_K 1e12

static int vx_best_index(sqlite3_vtab *base, sqlite3_index_info *info)
{
    vx_vtab *vt = (vx_vtab *)base;
    int i, i_match = -1, i_k = -1, i_ef = -1, i_np = -1, i_in = -1, i_eq = -1;
    int i_al = -1;
    int i_limit = -1, i_offset = -1, unusable_match = 0, joined = 0;
    int order[8], flag[8], n = 0, j, plan = 0;
    double count = vt->ix ? (double)vecidx_count(vt->ix) + 1.0 : 1000000.0;
    double search = VX_COST_SEARCH * log2(count + 2.0);

    for (i = 0; i < info->nConstraint; i++) {
        const struct sqlite3_index_constraint *c = &info->aConstraint[i];
        if (c->op == SQLITE_INDEX_CONSTRAINT_LIMIT) {
            if (c->usable && i_limit < 0) i_limit = i;
            continue;
        }
        if (c->op == SQLITE_INDEX_CONSTRAINT_OFFSET) {
            if (c->usable && i_offset < 0) i_offset = i;
            continue;
        }
        if (c->op == SQLITE_INDEX_CONSTRAINT_EQ && c->iColumn < 0) {
            /* An IN list can be taken whole whatever it depends on; a
            ** rowid = value that SQLite cannot give yet depends on another
            ** table of the FROM clause: a join on rowid. */
            int in = sqlite3_vtab_in(info, i, -1);
            if (!c->usable)
                joined |= !in;
            else if (in && i_in < 0)
                i_in = i;
            else if (!in && i_eq < 0)
                i_eq = i;
            continue;
        }
        if (!c->usable) {
            if (c->op == SQLITE_INDEX_CONSTRAINT_MATCH) unusable_match = 1;
            continue;
        }
        if (c->op == SQLITE_INDEX_CONSTRAINT_MATCH &&
            c->iColumn == VX_COL_VEC && i_match < 0) {
            i_match = i;
        } else if (c->op == SQLITE_INDEX_CONSTRAINT_EQ) {
            if (c->iColumn == VX_COL_K && i_k < 0)
                i_k = i;
            else if (c->iColumn == VX_COL_EF && i_ef < 0)
                i_ef = i;
            else if (c->iColumn == VX_COL_NPROBE && i_np < 0)
                i_np = i;
            else if (c->iColumn == VX_COL_ALLOWED && i_al < 0)
                i_al = i;
        }
    }
    /* allowed = only narrows a MATCH; without one SQLite would test it on
    ** each row, whose allowed reads NULL, and return none: no plan, so
    ** that SQLite reports the query as having no solution. */
    if (i_match < 0 && (unusable_match || i_al >= 0)) return SQLITE_CONSTRAINT;

    if (i_match < 0) {
        /* No search: a point lookup (an IN list one value per xFilter
        ** call) or a full scan. */
        int r = i_eq >= 0 ? i_eq : i_in;
        if (r >= 0) {
            info->aConstraintUsage[r].argvIndex = 1;
            info->aConstraintUsage[r].omit = 1;
            info->idxNum = VX_P_ROWID_EQ;
            info->estimatedCost = 1.0;
            info->estimatedRows = 1;
            info->idxFlags = SQLITE_INDEX_SCAN_UNIQUE;
            return SQLITE_OK;
        }
        info->idxNum = 0;
        info->estimatedCost = 10.0 * count;
        info->estimatedRows = (sqlite3_int64)count;
        return SQLITE_OK;
    }

    order[n] = i_match, flag[n++] = VX_P_MATCH;
    if (i_k >= 0) order[n] = i_k, flag[n++] = VX_P_K;
    if (i_ef >= 0) order[n] = i_ef, flag[n++] = VX_P_EF;
    if (i_np >= 0) order[n] = i_np, flag[n++] = VX_P_NPROBE;
    if (i_in >= 0) {
        sqlite3_vtab_in(info, i_in, 1);
        order[n] = i_in, flag[n++] = VX_P_ROWID_IN;
    } else if (i_eq >= 0) {
        order[n] = i_eq, flag[n++] = VX_P_ROWID_EQ;
    }
    if (i_al >= 0) order[n] = i_al, flag[n++] = VX_P_ALLOWED;
    /* SQLite keeps a plan with LIMIT only if it uses every constraint
    ** before it, OFFSET included; OFFSET is not omitted, so SQLite skips
    ** those rows itself and the search returns LIMIT + OFFSET. */
    if (i_limit >= 0 && i_k < 0) {
        order[n] = i_limit, flag[n++] = VX_P_LIMIT;
        if (i_offset >= 0) order[n] = i_offset, flag[n++] = VX_P_OFFSET;
    }
    for (j = 0; j < n; j++) {
        info->aConstraintUsage[order[j]].argvIndex = j + 1;
        info->aConstraintUsage[order[j]].omit = flag[j] != VX_P_LIMIT &&
                                                flag[j] != VX_P_OFFSET;
        plan |= flag[j];
    }
    if (info->nOrderBy == 1 && info->aOrderBy[0].iColumn == VX_COL_DISTANCE &&
        !info->aOrderBy[0].desc)
        info->orderByConsumed = 1;

    info->estimatedRows = 10;
    if (plan & VX_P_ROWID_EQ) {
        info->estimatedRows = 1;
        info->idxFlags = SQLITE_INDEX_SCAN_UNIQUE;
        info->estimatedCost = (plan & VX_P_K) ? VX_COST_ROW_K : VX_COST_ONE;
    } else if ((plan & VX_P_K) && !(plan & (VX_P_ROWID_IN | VX_P_ALLOWED)) &&
               joined) {
        plan |= VX_P_JOINED;
        info->estimatedCost = VX_COST_REFUSED;
    } else {
        info->estimatedCost = (plan & (VX_P_ROWID_IN | VX_P_ALLOWED))
                                  ? search / 2
                                  : search;
    }
    if (!(plan & (VX_P_K | VX_P_LIMIT | VX_P_ROWID_IN | VX_P_ROWID_EQ |
                  VX_P_ALLOWED))) {
        /* Streaming: a pass over every row before the first is handed out
        ** (vx_knn; the flat index scans them all for each batch), whatever
        ** SQLite then reads. In a join the other plan runs the other table
        ** first and searches each row it keeps alone, which is faster
        ** below about a fifth of the rows kept (at 20k x 128 HNSW: the
        ** pass 2.6 ms, a row searched alone 0.65 us), so a pass is costed
        ** as 0.2 n of those searches (VX_COST_ONE) at 128 dimensions, in
        ** proportion to the dimension. SQLite then runs an indexed filter
        ** first, a range too once ANALYZE has told it the other table's
        ** size (a range keeping 1 %: 0.17 ms against 3.3 ms streamed);
        ** without statistics it takes that table for a million rows and
        ** streams. The rows are a guess at what a LIMIT reads. */
        info->estimatedRows = (sqlite3_int64)sqrt(10.0 * count) + 10;
        info->estimatedCost += (double)info->estimatedRows +
                               count * vt->params.dim / 64.0;
    }
    info->idxNum = plan;
    return SQLITE_OK;
}

/* ---- Cursor ------------------------------------------------------------- */

static int vx_open(sqlite3_vtab *base, sqlite3_vtab_cursor **out)
{
    vx_cursor *c = sqlite3_malloc(sizeof(*c));
    (void)base;
    if (!c) return SQLITE_NOMEM;
    memset(c, 0, sizeof(*c));
    *out = &c->base;
    return SQLITE_OK;
}

static void vx_cursor_reset(vx_cursor *c)
{
    sqlite3_finalize(c->scan);
    sqlite3_free(c->ids);
    sqlite3_free(c->dists);
    sqlite3_free(c->q);
    sqlite3_free(c->allow);
    sqlite3_free(c->ties);
    memset((char *)c + sizeof(c->base), 0, sizeof(*c) - sizeof(c->base));
}

static int vx_close(sqlite3_vtab_cursor *cur)
{
    vx_cursor *c = (vx_cursor *)cur;
    vx_cursor_reset(c);
    sqlite3_free(c);
    return SQLITE_OK;
}

/* A non-negative integer constraint value. */
static int vx_arg_uint(vx_vtab *vt, sqlite3_value *v, const char *name,
                       sqlite3_int64 lo, sqlite3_int64 hi, sqlite3_int64 *out)
{
    sqlite3_int64 x;
    if (sqlite3_value_numeric_type(v) != SQLITE_INTEGER) {
        vx_seterr(vt, "vecidx: %s must be an integer", name);
        return SQLITE_MISMATCH;
    }
    x = sqlite3_value_int64(v);
    if (x < lo || x > hi) {
        vx_seterr(vt, "vecidx: %s = %lld is out of range %lld..%lld", name,
                  (long long)x, (long long)lo, (long long)hi);
        return SQLITE_ERROR;
    }
    *out = x;
    return SQLITE_OK;
}

static int vx_cmp_key(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Whether key was handed out at distance c->last. */
static int vx_tied(const vx_cursor *c, uint64_t key)
{
    return c->nties > 0 &&
           bsearch(&key, c->ties, c->nties, sizeof(key), vx_cmp_key) != NULL;
}

/* The batch now in the cursor is handed out next: remember its last
** distance and the rows at it (sorted, for vx_tied). */
static int vx_note_batch(vx_cursor *c)
{
    float last = c->dists[c->n - 1];
    size_t i, add = 0;
    if (!c->started || last != c->last) c->nties = 0;
    c->started = 1;
    c->last = last;
    for (i = 0; i < c->n; i++) add += c->dists[i] == last;
    if (c->nties + add > c->capties) {
        size_t cap = (c->nties + add) * 2;
        uint64_t *nt = sqlite3_realloc64(c->ties, cap * sizeof(*nt));
        if (!nt) return SQLITE_NOMEM;
        c->ties = nt;
        c->capties = cap;
    }
    for (i = 0; i < c->n; i++)
        if (c->dists[i] == last) c->ties[c->nties++] = c->ids[i];
    qsort(c->ties, c->nties, sizeof(*c->ties), vx_cmp_key);
    return SQLITE_OK;
}

/* Search for want results (fewer when fewer are stored or allowed) into
** the cursor's batch. When streaming (c->more: a MATCH without k or LIMIT
** on the flat index), rows are handed out nearest first across exact
** searches of growing size: a larger one finds the rows already handed
** out again, which are skipped -- by distance, and those at the last
** distance handed out by key -- so that every row comes once, in the order
** SQLite relies on (ORDER BY distance is consumed). */
static int vx_fetch(vx_vtab *vt, vx_cursor *c, size_t want)
{
    for (;;) {
        size_t cap, found = 0, i, kept = 0;
        int rc = vx_ensure(vt), vrc, done;
        if (rc != SQLITE_OK) return rc;
        sqlite3_free(c->ids);
        sqlite3_free(c->dists);
        c->ids = NULL;
        c->dists = NULL;
        c->n = c->pos = 0;
        cap = vecidx_count(vt->ix);
        if (c->o.allow_keys && cap > c->o.allow_count) cap = c->o.allow_count;
        if (want > cap) want = cap;
        if (want == 0) {
            c->more = 0;
            return SQLITE_OK;
        }
        c->ids = sqlite3_malloc64(want * sizeof(*c->ids));
        c->dists = sqlite3_malloc64(want * sizeof(*c->dists));
        if (!c->ids || !c->dists) return SQLITE_NOMEM;
        vrc = vecidx_search(vt->ix, c->q, want, &c->o, c->ids, c->dists,
                            &found);
        if (vrc != VECIDX_OK) {
            rc = vx_iderr(vt, vrc, "search");
            return vrc == VECIDX_EINVAL ? SQLITE_MISMATCH : rc;
        }
        if (!c->more) {
            c->n = found;
            return SQLITE_OK;
        }
        done = found < want || want >= cap;
        for (i = 0; i < found; i++) {
            if (c->started &&
                (c->dists[i] < c->last ||
                 (c->dists[i] == c->last && vx_tied(c, c->ids[i]))))
                continue;
            c->ids[kept] = c->ids[i];
            c->dists[kept++] = c->dists[i];
        }
        c->n = kept;
        c->want = want;
        if (kept > 0 && !done && (rc = vx_note_batch(c)) != SQLITE_OK)
            return rc;
        if (kept > 0 || done) {
            c->more = !done;
            return SQLITE_OK;
        }
        want *= 2;
    }
}

/* ---- vecidx_rowids() and allowed = ----------------------------------------
**
** `rowid IN (SELECT id FROM docs WHERE ...)` reaches the search as a list
** SQLite builds first: a b-tree of the ids, which costs most of the query
** when they come out of order, as from an index on another column. At 20k
** x 128 HNSW, k = 10, ids from a range on an indexed column: 0.6 ms with
** 2,000 ids, 3.8 ms with 10,000, of which perf finds 84 % in SQLite and 6
** % in this extension and vecidx. The aggregate vecidx_rowids(id) packs
** the ids into one BLOB instead -- VX_ROWIDS_MAGIC, then each integer as
** an int64 in the order met, in this machine's byte order, as only this
** process reads it -- and `allowed = (SELECT vecidx_rowids(id) FROM ...)`
** hands that to the search as the allowed set: 0.18-0.21 and 0.79-0.84
** ms for the same queries, the same results. */
#define VX_ROWIDS_MAGIC "vxrowids"
#define VX_ROWIDS_HDR 8

typedef struct vx_rowids {
    unsigned char *buf; /* VX_ROWIDS_HDR bytes, then n int64 */
    size_t n, cap;
} vx_rowids;

static void vx_rowids_step(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    vx_rowids *r = sqlite3_aggregate_context(ctx, sizeof(*r));
    sqlite3_int64 id;
    (void)argc;
    if (!r) {
        sqlite3_result_error_nomem(ctx);
        return;
    }
    /* Only integers: the values rowid IN (...) would take (vx_knn). */
    if (sqlite3_value_numeric_type(argv[0]) != SQLITE_INTEGER) return;
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 1024;
        unsigned char *nb = sqlite3_realloc64(r->buf,
                                              VX_ROWIDS_HDR + cap * sizeof(id));
        if (!nb) {
            sqlite3_result_error_nomem(ctx);
            return;
        }
        if (!r->buf) memcpy(nb, VX_ROWIDS_MAGIC, VX_ROWIDS_HDR);
        r->buf = nb;
        r->cap = cap;
    }
    id = sqlite3_value_int64(argv[0]);
    memcpy(r->buf + VX_ROWIDS_HDR + r->n++ * sizeof(id), &id, sizeof(id));
}

static void vx_rowids_final(sqlite3_context *ctx)
{
    vx_rowids *r = sqlite3_aggregate_context(ctx, 0);
    if (!r || !r->buf) {
        sqlite3_result_blob(ctx, VX_ROWIDS_MAGIC, VX_ROWIDS_HDR, SQLITE_STATIC);
        return;
    }
    sqlite3_result_blob64(ctx, r->buf, VX_ROWIDS_HDR + r->n * sizeof(int64_t),
                          sqlite3_free);
    r->buf = NULL;
}

/* allowed = v: the rowids of v become the allowed set, or with rowid IN
** or = as well, the set keeps only the rows in both (as SQLite would, had
** it to check the other constraint itself on the k rows found). */
static int vx_take_rowids(vx_vtab *vt, vx_cursor *c, sqlite3_value *v)
{
    const unsigned char *b = sqlite3_value_blob(v);
    int bytes = sqlite3_value_bytes(v);
    uint64_t *ids, *cur;
    size_t n, i, kept = 0;
    if (sqlite3_value_type(v) == SQLITE_NULL) {
        /* allowed = NULL holds for no row */
        c->o.allow_keys = &c->one;
        c->o.allow_count = 0;
        return SQLITE_OK;
    }
    if (sqlite3_value_type(v) != SQLITE_BLOB || bytes < VX_ROWIDS_HDR ||
        (bytes - VX_ROWIDS_HDR) % sizeof(*ids) != 0 ||
        memcmp(b, VX_ROWIDS_MAGIC, VX_ROWIDS_HDR) != 0) {
        vx_seterr(vt, "vecidx: allowed = takes the value of vecidx_rowids(), "
                      "as in allowed = (SELECT vecidx_rowids(id) FROM ...)");
        return SQLITE_MISMATCH;
    }
    n = (size_t)(bytes - VX_ROWIDS_HDR) / sizeof(*ids);
    ids = sqlite3_malloc64(n ? n * sizeof(*ids) : 1);
    if (!ids) return SQLITE_NOMEM;
    memcpy(ids, b + VX_ROWIDS_HDR, n * sizeof(*ids));
    if (!c->o.allow_keys) {
        c->allow = ids;
        c->o.allow_keys = ids;
        c->o.allow_count = n;
        return SQLITE_OK;
    }
    qsort(ids, n, sizeof(*ids), vx_cmp_key);
    cur = c->o.allow_keys == &c->one ? &c->one : c->allow;
    for (i = 0; i < c->o.allow_count; i++)
        if (bsearch(&cur[i], ids, n, sizeof(*ids), vx_cmp_key))
            cur[kept++] = cur[i];
    c->o.allow_count = kept;
    sqlite3_free(ids);
    return SQLITE_OK;
}

/* Rows the flat index hands out first when the number wanted is unknown:
** a LIMIT that SQLite keeps to itself is usually about this size or
** smaller. */
#define VX_STREAM_FIRST 16

/* The filter of a search that must return every row (see vx_knn). */
static int vx_admit_all(uint64_t key, void *ctx)
{
    (void)key;
    (void)ctx;
    return 1;
}

static int vx_knn(vx_vtab *vt, vx_cursor *c, int plan, sqlite3_value **argv)
{
    sqlite3_int64 k = -1, x;
    size_t nallow = 0, capallow = 0;
    int a = 0, rc;

    if (plan & VX_P_JOINED) {
        vx_seterr(vt,
                  "vecidx: k = N on %s joined by rowid to another table: that "
                  "table's filters would apply after the N nearest are "
                  "chosen and leave fewer; write ORDER BY distance LIMIT N "
                  "instead of k, or filter with rowid IN (SELECT ...)",
                  vt->name);
        return SQLITE_ERROR;
    }
    c->q = sqlite3_malloc64(vt->params.dim * sizeof(float));
    if (!c->q) return SQLITE_NOMEM;
    rc = vx_parse_vec(vt, argv[a++], c->q, "MATCH");
    if (rc != SQLITE_OK) return rc;
    if (plan & VX_P_K) {
        rc = vx_arg_uint(vt, argv[a++], "k", 1, VX_MAX_K, &k);
        if (rc != SQLITE_OK) return rc;
    }
    if (plan & VX_P_EF) {
        rc = vx_arg_uint(vt, argv[a++], "ef", 1, 1 << 20, &x);
        if (rc != SQLITE_OK) return rc;
        c->o.ef = (uint32_t)x;
    }
    if (plan & VX_P_NPROBE) {
        rc = vx_arg_uint(vt, argv[a++], "nprobe", 1, 1 << 20, &x);
        if (rc != SQLITE_OK) return rc;
        c->o.nprobe = (uint32_t)x;
    }
    if (plan & VX_P_ROWID_IN) {
        sqlite3_value *v;
        for (rc = sqlite3_vtab_in_first(argv[a], &v); rc == SQLITE_OK && v;
             rc = sqlite3_vtab_in_next(argv[a], &v)) {
            if (sqlite3_value_numeric_type(v) != SQLITE_INTEGER) continue;
            if (nallow == capallow) {
                size_t cap = capallow ? capallow * 2 : 256;
                uint64_t *na = sqlite3_realloc64(c->allow, cap * sizeof(*na));
                if (!na) return SQLITE_NOMEM;
                c->allow = na;
                capallow = cap;
            }
            c->allow[nallow++] = (uint64_t)sqlite3_value_int64(v);
        }
        if (rc != SQLITE_OK && rc != SQLITE_DONE) return rc;
        a++;
        c->o.allow_keys = c->allow ? c->allow : &c->one;
        c->o.allow_count = nallow;
    } else if (plan & VX_P_ROWID_EQ) {
        sqlite3_value *v = argv[a++];
        c->one = (uint64_t)sqlite3_value_int64(v);
        c->o.allow_keys = &c->one;
        c->o.allow_count = sqlite3_value_numeric_type(v) == SQLITE_INTEGER;
    }
    if (plan & VX_P_ALLOWED) {
        rc = vx_take_rowids(vt, c, argv[a++]);
        if (rc != SQLITE_OK) return rc;
    }
    if (plan & VX_P_LIMIT) {
        /* SQLite has made both integers. A negative LIMIT is none, a
        ** negative OFFSET zero; past VX_MAX_K the rows are streamed. */
        sqlite3_int64 lim = sqlite3_value_int64(argv[a++]);
        sqlite3_int64 off = (plan & VX_P_OFFSET)
                                ? sqlite3_value_int64(argv[a++])
                                : 0;
        if (off < 0) off = 0;
        if (lim >= 0 && lim <= VX_MAX_K && off <= VX_MAX_K - lim) k = lim + off;
    }
    if (k < 0) {
        /* No k: every row exactly once, nearest first, for as long as
        ** SQLite reads -- which it does until a LIMIT it keeps to itself,
        ** or a join's filter, is met, or to the end (count(*), a filter
        ** few rows pass), telling the table nothing of which. The flat
        ** index is exact at any k and streams growing batches. HNSW and
        ** IVF-PQ are exact only when asked for every row they may return:
        ** rows handed out from a smaller, approximate search could not be
        ** followed by the rows it missed, nearer than the last one handed
        ** out, without breaking the order or losing them (streams of
        ** growing searches that skipped them lost a few rows each on a
        ** sparse graph, all but one list's rows on IVF-PQ). So one search
        ** ranks them all, and that costs a pass over the table even for
        ** LIMIT 1; k = N is the approximate top N. A filter that admits
        ** all makes it a filtered search, which returns every admitted row
        ** on every kind (IVF-PQ unfiltered only those of the lists it
        ** probes) and picks the exact scan over a walk of breadth n (2.6 ms
        ** against 7-9 ms at 20k x 128); an allowed set given is such a
        ** filter already. */
        c->more = 1;
        if (vt->params.kind == VECIDX_FLAT)
            return vx_fetch(vt, c, VX_STREAM_FIRST);
        if (!c->o.allow_keys) {
            c->o.filter = vx_admit_all;
            c->o.filter_selectivity = 1.0f;
        }
        return vx_fetch(vt, c, SIZE_MAX);
    }
    return vx_fetch(vt, c, (size_t)k);
}

static int vx_filter(sqlite3_vtab_cursor *cur, int plan, const char *idxStr,
                     int argc, sqlite3_value **argv)
{
    vx_cursor *c = (vx_cursor *)cur;
    vx_vtab *vt = (vx_vtab *)cur->pVtab;
    int rc;
    (void)idxStr;
    (void)argc;
    vx_cursor_reset(c);
    c->plan = plan;
    if (plan & VX_P_MATCH) return vx_knn(vt, c, plan, argv);
    if (plan & VX_P_ROWID_EQ) {
        sqlite3_stmt *s;
        rc = vx_stmt(vt, VXS_GET, &s);
        if (rc != SQLITE_OK) return rc;
        sqlite3_bind_value(s, 1, argv[0]);
        rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
            c->ids = sqlite3_malloc(sizeof(*c->ids));
            if (!c->ids) {
                sqlite3_reset(s);
                return SQLITE_NOMEM;
            }
            c->ids[0] = (uint64_t)sqlite3_value_int64(argv[0]);
            c->n = 1;
        }
        sqlite3_reset(s);
        return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK
                                                     : vx_sqlerr(vt, rc);
    }
    {
        char *sql = sqlite3_mprintf("SELECT id, vec FROM \"%w\".\"%w_vectors\"",
                                    vt->schema, vt->name);
        if (!sql) return SQLITE_NOMEM;
        rc = sqlite3_prepare_v2(vt->db, sql, -1, &c->scan, NULL);
        sqlite3_free(sql);
        if (rc != SQLITE_OK) return vx_sqlerr(vt, rc);
        rc = sqlite3_step(c->scan);
        if (rc == SQLITE_DONE) c->scan_eof = 1;
        return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK
                                                     : vx_sqlerr(vt, rc);
    }
}

static int vx_next(sqlite3_vtab_cursor *cur)
{
    vx_cursor *c = (vx_cursor *)cur;
    if (c->scan) {
        int rc = sqlite3_step(c->scan);
        if (rc == SQLITE_DONE) c->scan_eof = 1;
        if (rc == SQLITE_ROW || rc == SQLITE_DONE) return SQLITE_OK;
        return vx_sqlerr((vx_vtab *)cur->pVtab, rc);
    }
    if (++c->pos >= c->n && c->more)
        return vx_fetch((vx_vtab *)cur->pVtab, c, c->want * 2);
    return SQLITE_OK;
}

static int vx_eof(sqlite3_vtab_cursor *cur)
{
    vx_cursor *c = (vx_cursor *)cur;
    return c->scan ? c->scan_eof : c->pos >= c->n;
}

static int vx_rowid(sqlite3_vtab_cursor *cur, sqlite3_int64 *out)
{
    vx_cursor *c = (vx_cursor *)cur;
    *out = c->scan ? sqlite3_column_int64(c->scan, 0)
                   : (sqlite3_int64)c->ids[c->pos];
    return SQLITE_OK;
}

static int vx_column(sqlite3_vtab_cursor *cur, sqlite3_context *ctx, int col)
{
    vx_cursor *c = (vx_cursor *)cur;
    vx_vtab *vt = (vx_vtab *)cur->pVtab;
    if (col == VX_COL_VEC) {
        sqlite3_stmt *s;
        int rc;
        if (sqlite3_vtab_nochange(ctx)) return SQLITE_OK;
        if (c->scan) {
            sqlite3_result_value(ctx, sqlite3_column_value(c->scan, 1));
            return SQLITE_OK;
        }
        rc = vx_stmt(vt, VXS_GET, &s);
        if (rc != SQLITE_OK) return rc;
        sqlite3_bind_int64(s, 1, (sqlite3_int64)c->ids[c->pos]);
        rc = sqlite3_step(s);
        if (rc == SQLITE_ROW)
            sqlite3_result_value(ctx, sqlite3_column_value(s, 0));
        sqlite3_reset(s);
        return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK
                                                     : vx_sqlerr(vt, rc);
    }
    if (col == VX_COL_DISTANCE && (c->plan & VX_P_MATCH) && c->dists)
        sqlite3_result_double(ctx, (double)c->dists[c->pos]);
    return SQLITE_OK;
}

/* ---- Module and entry point ------------------------------------------- */

static const sqlite3_module vx_module = {
    3, /* iVersion: savepoints and shadow tables */
    vx_create,  vx_connect,     vx_best_index, vx_disconnect, vx_destroy,
    vx_open,    vx_close,       vx_filter,     vx_next,       vx_eof,
    vx_column,  vx_rowid,       vx_update,     vx_begin,      vx_sync,
    vx_commit,  vx_rollback,    NULL,          vx_rename,     vx_savepoint,
    vx_release, vx_rollback_to, vx_shadow_name};

/* vecidx_info(table [, schema]): this connection's cache of the table as
** JSON, brought up to date first; NULL if the table is not a vecidx table
** this connection has used. */
static void vx_info_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    vx_conn *conn = sqlite3_user_data(ctx);
    const char *name = (const char *)sqlite3_value_text(argv[0]);
    const char *schema = argc > 1 ? (const char *)sqlite3_value_text(argv[1])
                                  : "main";
    vx_vtab *vt;
    vecidx_stats_t st;
    int rc;
    if (!name || !schema) return;
    for (vt = conn->tables; vt; vt = vt->next)
        if (!sqlite3_stricmp(vt->name, name) &&
            !sqlite3_stricmp(vt->schema, schema))
            break;
    if (!vt) return;
    rc = vx_ensure(vt);
    if (rc != SQLITE_OK) {
        sqlite3_result_error(
            ctx, vt->base.zErrMsg ? vt->base.zErrMsg : sqlite3_errstr(rc), -1);
        return;
    }
    if (vecidx_stats(vt->ix, &st) != VECIDX_OK) memset(&st, 0, sizeof(st));
    sqlite3_result_text(
        ctx,
        sqlite3_mprintf("{\"count\":%llu,\"gen\":%lld,\"builds\":%lld,"
                        "\"catchups\":%lld,\"cache_loads\":%lld,"
                        "\"cache_saves\":%lld,\"cache_rejects\":%lld,"
                        "\"memory_bytes\":%llu,\"simd\":\"%s\"}",
                        (unsigned long long)st.count, (long long)vt->gen,
                        (long long)vt->builds, (long long)vt->catchups,
                        (long long)vt->cache_loads, (long long)vt->cache_saves,
                        (long long)vt->cache_rejects,
                        (unsigned long long)st.memory_bytes,
                        st.simd ? st.simd : ""),
        -1, sqlite3_free);
}

static void vx_version_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    (void)argv;
    sqlite3_result_text(ctx, vecidx_version(), -1, SQLITE_STATIC);
}

VX_EXPORT int sqlite3_vecidx_init(sqlite3 *db, char **pzErr,
                                  const sqlite3_api_routines *api);
VX_EXPORT int sqlite3_vecidxsqlite_init(sqlite3 *db, char **pzErr,
                                        const sqlite3_api_routines *api);

VX_EXPORT int sqlite3_vecidx_init(sqlite3 *db, char **pzErr,
                                  const sqlite3_api_routines *api)
{
    vx_conn *conn;
    int rc;
    SQLITE_EXTENSION_INIT2(api);
    if (sqlite3_libversion_number() < 3038000) {
        if (pzErr)
            *pzErr = sqlite3_mprintf("vecidx needs SQLite 3.38 or later, "
                                     "this is %s",
                                     sqlite3_libversion());
        return SQLITE_ERROR;
    }
    conn = sqlite3_malloc(sizeof(*conn));
    if (!conn) return SQLITE_NOMEM;
    conn->tables = NULL;
    /* SQLite frees conn with the module, when the connection closes. */
    rc = sqlite3_create_module_v2(db, "vecidx", &vx_module, conn, sqlite3_free);
    if (rc == SQLITE_OK)
        rc = sqlite3_create_function(db, "vecidx_info", 1, SQLITE_UTF8, conn,
                                     vx_info_fn, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_create_function(db, "vecidx_info", 2, SQLITE_UTF8, conn,
                                     vx_info_fn, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_create_function(
            db, "vecidx_rowids", 1,
            SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS, NULL, NULL,
            vx_rowids_step, vx_rowids_final);
    if (rc == SQLITE_OK)
        rc = sqlite3_create_function(db, "vecidx_version", 0,
                                     SQLITE_UTF8 | SQLITE_DETERMINISTIC |
                                         SQLITE_INNOCUOUS,
                                     NULL, vx_version_fn, NULL, NULL);
    return rc;
}

/* The name SQLite derives from the file name vecidx_sqlite.so, so that
** `.load ./vecidx_sqlite` needs no entry-point argument. */
VX_EXPORT int sqlite3_vecidxsqlite_init(sqlite3 *db, char **pzErr,
                                        const sqlite3_api_routines *api)
{
    return sqlite3_vecidx_init(db, pzErr, api);
}
