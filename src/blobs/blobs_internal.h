/* blobs: what blobs.c (files), blobs_pg.c (PostgreSQL), droplet.c and fetch.c share. */
#ifndef SKIFF_BLOBS_INTERNAL_H
#define SKIFF_BLOBS_INTERNAL_H

#include <libpq-fe.h>
#include <openssl/evp.h>

#include "blobs/blobs.h"

struct blobs_pending; /* a droplet being materialised (droplet.c) */

struct blob_store {
    char *pg_url;                  /* NULL: files */
    char *dir;                     /* HOME/blobs */
    char *files;                   /* HOME/blobs/sha256: the blobs, on the embedded store */
    char *tmp;                     /* HOME/blobs/tmp: what is being written */
    char *droplets;                /* HOME/blobs/droplets: droplets materialised here, by HEX */
    char *packages;                /* HOME/blobs/packages: packages fetched here (HEX[.KIND]) */
    struct blobs_pending *pending; /* on the loop only */
    uv_mutex_t lock;               /* working, closing */
    int working;                   /* thread-pool work in flight that uses the store */
    bool closing;                  /* closed while work was in flight: the last frees it */
};

struct blob_reader {
    int fd; /* files; -1 on PostgreSQL */
    uint64_t size;
    /* PostgreSQL: its own connection, the blob's row id, the next chunk */
    PGconn *pg;
    long long id;
    int next_seq;
    bool done;   /* the query's rows have all come */
    char *chunk; /* the chunk being handed out */
    size_t chunk_len, chunk_off;
};

struct blobs_hash {
    EVP_MD_CTX *ctx;
};
int blobs__hash_init(struct blobs_hash *h);
void blobs__hash_update(struct blobs_hash *h, const void *data, size_t len);
/* Ends h and writes "sha256:HEX". */
void blobs__hash_final(struct blobs_hash *h, char digest[BLOB_DIGEST_LEN + 1]);
void blobs__hash_drop(struct blobs_hash *h);
int blobs__hash_fd(int fd, int out_fd, char digest[BLOB_DIGEST_LEN + 1], uint64_t *size);
int blobs__write_all(int fd, const void *data, size_t len);
int blobs__temp_file(const char *dir, char **path);
const char *blobs__hex(const char *digest);
/* Puts tmp (a file of the caller's, consumed: gone afterwards, whatever happened). */
int blobs__put_owned(struct blob_store *bs, const char *tmp, char digest[BLOB_DIGEST_LEN + 1],
                     uint64_t *size);
void blobs__free(struct blob_store *bs);
/* Thread-pool work that uses bs: counted, so that a store closed meanwhile is freed by the
 * last one to end. */
void blobs__work_begin(struct blob_store *bs);
void blobs__work_end(struct blob_store *bs);

int blobs__pg_put(struct blob_store *bs, const char *path, char digest[BLOB_DIGEST_LEN + 1],
                  uint64_t *size);
int blobs__pg_has(struct blob_store *bs, const char *digest, uint64_t *size);
int blobs__pg_delete(struct blob_store *bs, const char *digest);
int blobs__pg_gc(struct blob_store *bs, const char *const *keep, size_t n_keep, int64_t min_age_ms,
                 size_t *deleted);
int blobs__pg_reader_open(struct blob_store *bs, const char *digest, struct blob_reader **out,
                          uint64_t *size);
long blobs__pg_reader_read(struct blob_reader *r, void *buf, size_t cap);
void blobs__pg_reader_close(struct blob_reader *r);

#endif
