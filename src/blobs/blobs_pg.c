/* blobs in PostgreSQL: a row of `blobs` per blob (its digest, size, when it was put) and its
 * content in 1 MiB rows of `blob_chunks` (bytea, stored uncompressed: droplets and packages
 * are mostly compressed already, and pglz would cost CPU on every put for little). Tables of
 * store migration 18 (store_pg.c).
 *
 * Chunks in a table rather than large objects: a blob is put in one transaction of ordinary
 * INSERTs (a failed put leaves nothing, no orphaned large object for vacuumlo to find),
 * deleted by a cascade, read chunk by chunk with bound parameters, and the tables follow the
 * database's grants and backups like every other; measured against large objects in
 * src/blobs/README.md.
 *
 * Every call opens a connection of its own (it runs on the thread pool, never on a loop),
 * closed when it ends. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blobs/blobs_internal.h"
#include "common/log.h"
#include "common/util.h"
#include "store/store_backend.h"

static PGconn *pg__connect(struct blob_store *bs)
{
    PGconn *c = store_pg_connect(bs->pg_url, false, NULL);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        log_error("blobs: cannot connect to the store's database: %s",
                  c ? PQerrorMessage(c) : "out of memory");
        PQfinish(c);
        return NULL;
    }
    return c;
}

static int pg__command(PGconn *c, const char *sql)
{
    PGresult *res = PQexec(c, sql);
    int rc = PQresultStatus(res) == PGRES_COMMAND_OK ? 0 : -EIO;
    if (rc < 0)
        log_error("blobs: %s: %s", sql, PQerrorMessage(c));
    PQclear(res);
    return rc;
}

/* One row's query, with text parameters; NULL (logged) on failure. */
static PGresult *pg__query(PGconn *c, const char *sql, int n, const char *const *values,
                           int result_format)
{
    PGresult *res = PQexecParams(c, sql, n, NULL, values, NULL, NULL, result_format);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        log_error("blobs: %s", PQerrorMessage(c));
        PQclear(res);
        return NULL;
    }
    return res;
}

static int pg__find(PGconn *c, const char *digest, long long *id, uint64_t *size)
{
    const char *v[] = {digest};
    PGresult *res = pg__query(c, "SELECT id, size FROM blobs WHERE digest = $1", 1, v, 0);
    if (!res)
        return -EIO;
    int rc = -ENOENT;
    if (PQntuples(res) == 1) {
        if (id)
            *id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        if (size)
            *size = strtoull(PQgetvalue(res, 0, 1), NULL, 10);
        rc = 0;
    }
    PQclear(res);
    return rc;
}

/* Writes the file's chunks under a new row and names it by the digest they hash to, all in
 * the caller's transaction. -EEXIST when a blob of that digest is there already. */
static int pg__put_chunks(PGconn *c, int fd, const char *expect, char digest[BLOB_DIGEST_LEN + 1],
                          uint64_t *size)
{
    char at[32];
    snprintf(at, sizeof at, "%lld", (long long)time_now_ms());
    const char *v0[] = {at};
    PGresult *res =
        pg__query(c, "INSERT INTO blobs (created_at) VALUES ($1::bigint) RETURNING id", 1, v0, 0);
    if (!res)
        return -EIO;
    char id[32];
    snprintf(id, sizeof id, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    struct blobs_hash h;
    int rc = blobs__hash_init(&h);
    if (rc < 0)
        return rc;
    char *buf = xmalloc(BLOB_CHUNK_BYTES);
    uint64_t total = 0;
    for (int seq = 0; rc == 0; seq++) {
        size_t len = 0;
        while (len < BLOB_CHUNK_BYTES) {
            ssize_t n = read(fd, buf + len, BLOB_CHUNK_BYTES - len);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                rc = -errno;
            if (n <= 0)
                break;
            len += (size_t)n;
        }
        if (rc < 0 || (len == 0 && seq > 0))
            break;
        blobs__hash_update(&h, buf, len);
        total += len;
        char seq_text[16];
        snprintf(seq_text, sizeof seq_text, "%d", seq);
        const char *values[] = {id, seq_text, buf};
        int lengths[] = {0, 0, (int)len};
        int formats[] = {0, 0, 1};
        res = PQexecParams(c, "INSERT INTO blob_chunks VALUES ($1::bigint, $2::integer, $3)", 3,
                           NULL, values, lengths, formats, 0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            log_error("blobs: cannot write a chunk: %s", PQerrorMessage(c));
            rc = -EIO;
        }
        PQclear(res);
        if (len < BLOB_CHUNK_BYTES)
            break;
    }
    free(buf);
    if (rc < 0) {
        blobs__hash_drop(&h);
        return rc;
    }
    blobs__hash_final(&h, digest);
    if (strcmp(digest, expect)) {
        log_error("blobs: a file changed while it was put (%s, then %s)", expect, digest);
        return -EBADMSG;
    }
    char size_text[32];
    snprintf(size_text, sizeof size_text, "%llu", (unsigned long long)total);
    const char *v[] = {digest, size_text, id};
    res = PQexecParams(c, "UPDATE blobs SET digest = $1, size = $2::bigint WHERE id = $3::bigint",
                       3, NULL, v, NULL, NULL, 0);
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = state && !strcmp(state, "23505") ? -EEXIST : -EIO;
    if (rc == -EIO)
        log_error("blobs: cannot name the blob %s: %s", digest, PQerrorMessage(c));
    PQclear(res);
    if (size)
        *size = total;
    return rc;
}

int blobs__pg_put(struct blob_store *bs, const char *path, char digest[BLOB_DIGEST_LEN + 1],
                  uint64_t *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    /* the name first (a local read): a blob already there is not sent again */
    char expect[BLOB_DIGEST_LEN + 1];
    uint64_t len = 0;
    int rc = blobs__hash_fd(fd, -1, expect, &len);
    PGconn *c = rc == 0 ? pg__connect(bs) : NULL;
    if (rc == 0 && !c)
        rc = -EIO;
    if (rc == 0 && (rc = pg__find(c, expect, NULL, NULL)) == 0) {
        snprintf(digest, BLOB_DIGEST_LEN + 1, "%s", expect);
        if (size)
            *size = len;
    } else if (rc == -ENOENT) {
        rc = lseek(fd, 0, SEEK_SET) < 0 ? -errno : pg__command(c, "BEGIN");
        if (rc == 0)
            rc = pg__put_chunks(c, fd, expect, digest, size);
        if (rc == 0)
            rc = pg__command(c, "COMMIT");
        else {
            pg__command(c, "ROLLBACK");
            if (rc == -EEXIST) /* another writer put the same content meanwhile */
                rc = 0;
        }
    }
    PQfinish(c);
    close(fd);
    return rc;
}

int blobs__pg_has(struct blob_store *bs, const char *digest, uint64_t *size)
{
    PGconn *c = pg__connect(bs);
    if (!c)
        return -EIO;
    int rc = pg__find(c, digest, NULL, size);
    PQfinish(c);
    return rc;
}

int blobs__pg_delete(struct blob_store *bs, const char *digest)
{
    PGconn *c = pg__connect(bs);
    if (!c)
        return -EIO;
    const char *v[] = {digest};
    PGresult *res = pg__query(c, "DELETE FROM blobs WHERE digest = $1", 1, v, 0);
    int rc = !res ? -EIO : strcmp(PQcmdTuples(res), "0") ? 0 : -ENOENT;
    PQclear(res);
    PQfinish(c);
    return rc;
}

int blobs__pg_gc(struct blob_store *bs, const char *const *keep, size_t n_keep, int64_t min_age_ms,
                 size_t *deleted)
{
    PGconn *c = pg__connect(bs);
    if (!c)
        return -EIO;
    char before[32];
    snprintf(before, sizeof before, "%lld", (long long)(time_now_ms() - min_age_ms));
    const char *v[] = {before};
    PGresult *res = pg__query(
        c, "SELECT digest FROM blobs WHERE digest IS NOT NULL AND created_at < $1::bigint", 1, v,
        0);
    int rc = res ? 0 : -EIO;
    for (int i = 0; res && i < PQntuples(res); i++) {
        const char *digest = PQgetvalue(res, i, 0);
        bool kept = false;
        for (size_t k = 0; k < n_keep && !kept; k++)
            kept = keep[k] && !strcmp(keep[k], digest);
        if (kept)
            continue;
        const char *d[] = {digest};
        PGresult *del = pg__query(c, "DELETE FROM blobs WHERE digest = $1", 1, d, 0);
        if (!del)
            rc = -EIO;
        else if (deleted && strcmp(PQcmdTuples(del), "0"))
            (*deleted)++;
        PQclear(del);
    }
    PQclear(res);
    PQfinish(c);
    return rc;
}

int blobs__pg_reader_open(struct blob_store *bs, const char *digest, struct blob_reader **out,
                          uint64_t *size)
{
    PGconn *c = pg__connect(bs);
    if (!c)
        return -EIO;
    long long id = 0;
    uint64_t len = 0;
    int rc = pg__find(c, digest, &id, &len);
    if (rc < 0) {
        PQfinish(c);
        return rc;
    }
    /* one query for every chunk, its rows taken one by one as they come */
    char id_text[32];
    snprintf(id_text, sizeof id_text, "%lld", id);
    const char *v[] = {id_text};
    if (!PQsendQueryParams(c,
                           "SELECT data FROM blob_chunks WHERE blob_id = $1::bigint ORDER BY seq",
                           1, NULL, v, NULL, NULL, 1) ||
        !PQsetSingleRowMode(c)) {
        log_error("blobs: cannot read blob %s: %s", digest, PQerrorMessage(c));
        PQfinish(c);
        return -EIO;
    }
    struct blob_reader *r = xcalloc(1, sizeof *r);
    r->fd = -1;
    r->pg = c;
    r->id = id;
    r->size = len;
    *out = r;
    if (size)
        *size = len;
    return 0;
}

/* The next chunk into r->chunk: 1, 0 at the end, or -EIO. */
static int pg__next_chunk(struct blob_reader *r)
{
    if (r->done)
        return 0;
    PGresult *res = PQgetResult(r->pg);
    ExecStatusType st = PQresultStatus(res);
    if (!res || st == PGRES_TUPLES_OK) { /* the end: the query's last, empty result */
        PQclear(res);
        while ((res = PQgetResult(r->pg)))
            PQclear(res);
        r->done = true;
        return 0;
    }
    if (st != PGRES_SINGLE_TUPLE) {
        log_error("blobs: cannot read a chunk: %s", PQerrorMessage(r->pg));
        PQclear(res);
        return -EIO;
    }
    int rc = 0;
    if (PQntuples(res) == 1) {
        size_t len = (size_t)PQgetlength(res, 0, 0);
        free(r->chunk);
        r->chunk = xmalloc(len ? len : 1);
        memcpy(r->chunk, PQgetvalue(res, 0, 0), len);
        r->chunk_len = len;
        r->chunk_off = 0;
        r->next_seq++;
        rc = 1;
    }
    PQclear(res);
    return rc;
}

long blobs__pg_reader_read(struct blob_reader *r, void *buf, size_t cap)
{
    while (r->chunk_off >= r->chunk_len) {
        int rc = pg__next_chunk(r);
        if (rc <= 0)
            return rc;
    }
    size_t n = r->chunk_len - r->chunk_off;
    if (n > cap)
        n = cap;
    memcpy(buf, r->chunk + r->chunk_off, n);
    r->chunk_off += n;
    return (long)n;
}

void blobs__pg_reader_close(struct blob_reader *r)
{
    PQfinish(r->pg);
    r->pg = NULL;
}
