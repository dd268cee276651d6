/* blobs: content-addressed blobs (packages and droplets), each named by its content's sha256,
 * written "sha256:HEX" (64 lowercase hex digits).
 *
 * Where blobs live is decided once, by the store's location (blob_store_open), behind one
 * interface:
 *   - the embedded store (SQLite): files under HOME/blobs/sha256/HEX;
 *   - PostgreSQL: in the database itself, in 1 MiB chunks (tables blobs and blob_chunks,
 *     store migration 18), so that every controller on that database serves every blob.
 * A blob in place is always whole and matches its name: a put hashes what it writes and puts
 * the blob in place only at the end (a rename; on PostgreSQL the commit of the one
 * transaction that wrote its chunks), so a failed put leaves nothing.
 *
 * Droplets are folders: a droplet's blob is an uncompressed tar of it (blob_droplet_pack). A
 * skiffd that needs a droplet it does not have materialises it from the blob store into
 * HOME/blobs/droplets/HEX (blob_droplet_local), verified against its digest first.
 *
 * Threading. Calls marked (blocking) read and write files or talk to PostgreSQL on a
 * connection of their own, opened for the call: they run on libuv's thread pool, never on an
 * event loop, and may run on several threads at once. The calls that take a loop run on it;
 * their callbacks come on it, never from inside the call.
 *
 * Errors: 0 or a negative errno (common/err.h): -EINVAL a malformed digest, -ENOENT no such
 * blob, -EBADMSG content that does not match its digest, -EFBIG past a size bound, -EIO the
 * database or the disk failed (logged). Ownership: strings returned are the caller's. */
#ifndef SKIFF_BLOBS_H
#define SKIFF_BLOBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define BLOB_DIGEST_PREFIX "sha256:"
/* "sha256:" and 64 hex digits (without the NUL) */
#define BLOB_DIGEST_LEN 71
/* Chunks of a blob in PostgreSQL, and the reads of blob_reader_read. */
#define BLOB_CHUNK_BYTES (1u << 20)

/* Whether digest is "sha256:" followed by exactly 64 lowercase hex digits: the one check of
 * every digest that comes from outside (a URL, a store row) before it names a file. */
bool blob_digest_valid(const char *digest);

struct blob_store;

/* store_location as the store takes it (store.h): postgres:// or postgresql:// keeps blobs in
 * that database (which the store has migrated), anything else in files under home/blobs.
 * Opening connects to nothing (each blocking call connects for itself). */
int blob_store_open(const char *store_location, const char *home, struct blob_store **out);
void blob_store_close(struct blob_store *bs);
/* Whether blobs are in the database (PostgreSQL), rather than files under home. */
bool blob_store_in_database(const struct blob_store *bs);

/* (blocking) Puts the file's content, hashing it as it is written; digest gets its name and
 * size (when not NULL) its length. A blob already there is not written again (0). */
int blob_put_file(struct blob_store *bs, const char *path, char digest[BLOB_DIGEST_LEN + 1],
                  uint64_t *size);
/* (blocking) Puts a file that is never written again and whose content is known to be digest
 * (an image's layer or config blob, verified and synced when the image store took it): nothing
 * is read when the blob is there already; on the files backend it is hard-linked into place,
 * not copied nor hashed (a copy, hashed, when it is on another file system); on PostgreSQL its
 * chunks are written and checked against digest (-EBADMSG). Either way its age (what blob_gc's
 * min_age_ms measures) starts now. */
int blob_put_immutable(struct blob_store *bs, const char *path, const char *digest);
/* (blocking) 0 and *size (when not NULL) when the blob is there, -ENOENT when not. */
int blob_has(struct blob_store *bs, const char *digest, uint64_t *size);
/* (blocking) Writes the blob to dest (made at a temporary name beside it, renamed into place
 * once its content matched the digest; nothing is left at dest otherwise). -EFBIG when it is
 * larger than max_bytes (0: no bound). */
int blob_get_file(struct blob_store *bs, const char *digest, const char *dest, uint64_t max_bytes);
/* (blocking) -ENOENT when it was not there. */
int blob_delete(struct blob_store *bs, const char *digest);
/* (blocking) Deletes every blob named in none of keep (n_keep digests) that was put more than
 * min_age_ms ago (a younger one may be on its way into the store's rows); *deleted (when not
 * NULL) counts them. */
int blob_gc(struct blob_store *bs, const char *const *keep, size_t n_keep, int64_t min_age_ms,
            size_t *deleted);

/* Reading a blob piece by piece, as stored (not verified: the reader of the whole verifies). */
struct blob_reader;
/* (blocking) -ENOENT when the blob is not there; *size gets its length. */
int blob_reader_open(struct blob_store *bs, const char *digest, struct blob_reader **out,
                     uint64_t *size);
/* (blocking) The next bytes, at most cap: > 0 read, 0 at the end, < 0 an error. */
long blob_reader_read(struct blob_reader *r, void *buf, size_t cap);
void blob_reader_close(struct blob_reader *r);

/* ---- droplets ------------------------------------------------------------------------------ */

/* (blocking) Writes a tar of droplet_dir's content into a new file under tmp_dir (*tar_path,
 * the caller's to unlink): files, folders and links with their modes and times, by name, no
 * owners (whoever unpacks owns them). */
int blob_droplet_pack(const char *droplet_dir, const char *tmp_dir, char **tar_path);
/* (blocking) Unpacks such a tar into dir (which must not exist): refused, with nothing left,
 * for an entry that would leave it (absolute, "..", through a link) or what is not a file,
 * folder or link. */
int blob_droplet_unpack(const char *tar_path, const char *dir);

/* Called on the loop once a droplet blob_droplet_local started to materialise is there (rc
 * 0) or could not be (rc < 0, logged); app_guid as it was given. */
typedef void (*blob_droplet_ready_cb)(void *ctx, const char *app_guid, int rc);

/* The one answer to "where is this droplet on this host?". path is where the store says it
 * was made, digest its blob (NULL for a droplet made before blobs). *local gets:
 *   - path, when that folder exists here (the skiffd that staged it, the embedded store);
 *   - else HOME/blobs/droplets/HEX once it has been materialised;
 *   - else -EINPROGRESS: materialising has begun (once per digest, whoever else asks), and
 *     ready(ctx, app_guid, rc) comes when it ends. A materialising that failed is not tried
 *     again for BLOB_DROPLET_RETRY_MS: meanwhile (and for a droplet without digest) *local
 *     is path, which a start then fails to find and retries with its own backoff.
 * Runs on loop; nothing here blocks it. */
#define BLOB_DROPLET_RETRY_MS 5000
int blob_droplet_local(struct blob_store *bs, uv_loop_t *loop, const char *path, const char *digest,
                       const char *app_guid, blob_droplet_ready_cb ready, void *ctx, char **local);
/* Stops waiting for materialising in flight (ready is not called any more); the work itself
 * finishes on the thread pool and is then freed. Call before blob_store_close. */
void blob_droplet_forget(struct blob_store *bs);

/* On the loop: blob_put_file or pack-and-put of a droplet folder on the thread pool. done
 * gets rc and, on success, the digest. 0 and done later, or a negative errno and no call. */
typedef void (*blob_put_cb)(void *ctx, int rc, const char *digest);
int blob_put_file_async(struct blob_store *bs, uv_loop_t *loop, const char *path, blob_put_cb done,
                        void *ctx);
int blob_put_droplet_async(struct blob_store *bs, uv_loop_t *loop, const char *droplet_dir,
                           blob_put_cb done, void *ctx);
/* blob_get_file on the thread pool (strings copied); done(ctx, rc, digest) on the loop. 0 and
 * done later, or a negative errno and no call. */
int blob_get_file_async(struct blob_store *bs, uv_loop_t *loop, const char *digest,
                        const char *dest, blob_put_cb done, void *ctx);
/* blob_gc on the thread pool (keep is copied); done(ctx, rc, deleted) on the loop (NULL: no
 * call). 0, or a negative errno and no call. */
typedef void (*blob_gc_cb)(void *ctx, int rc, size_t deleted);
int blob_gc_async(struct blob_store *bs, uv_loop_t *loop, const char *const *keep, size_t n_keep,
                  int64_t min_age_ms, blob_gc_cb done, void *ctx);

/* ---- what is materialised here ------------------------------------------------------------ */

/* The one answer to "where does a package fetched to this host go?": HOME/blobs/packages/HEX,
 * or HEX.KIND for an image's archive (kind "oci" or "docker", NULL for source), in *path
 * (the caller frees it). Makes the folder (blocking: one mkdir). 0, or a negative errno
 * (-EINVAL for a digest that is not valid) and *path untouched. */
int blob_package_local(struct blob_store *bs, const char *digest, const char *kind, char **path);

/* (blocking) Removes the droplets materialised here (HOME/blobs/droplets/HEX) and the packages
 * fetched here (HOME/blobs/packages/HEX, HEX.KIND) whose digest is in none of keep, unless a
 * path of in_use (an instance's app_dir, a staging's package) lies in them, or they came here
 * at or after since_ms (wall clock, ms; 0: no bound): a droplet materialised after keep was
 * read may be one keep does not know yet. *deleted counts what went and *busy (each when not
 * NULL) what stayed only because it is in use. */
/* A file system's times lag the clock by up to a tick: what came this close to since_ms stays. */
#define BLOB_CACHE_CLOCK_SLACK_MS 1000
int blob_cache_gc(struct blob_store *bs, const char *const *keep, size_t n_keep,
                  const char *const *in_use, size_t n_in_use, int64_t since_ms, size_t *deleted,
                  size_t *busy);
/* blob_cache_gc on the thread pool (keep and in_use copied; the digests being materialised
 * now are kept too, and since_ms is now); done(ctx, rc, deleted, busy) on the loop (NULL: no
 * call). 0, or a negative errno and no call. */
typedef void (*blob_cache_gc_cb)(void *ctx, int rc, size_t deleted, size_t busy);
int blob_cache_gc_async(struct blob_store *bs, uv_loop_t *loop, const char *const *keep,
                        size_t n_keep, const char *const *in_use, size_t n_in_use,
                        blob_cache_gc_cb done, void *ctx);

/* ---- fetching from controllers (for cells on other hosts) ---------------------------------- */

/* What blob_fetch fetches, and from where. Strings are copied by blob_fetch. */
struct blob_fetch_options {
    const char *digest;      /* "sha256:HEX" */
    const char *const *urls; /* controllers' API base URLs, NULL-terminated, tried in order */
    const char *token;       /* bearer token: a cell's (HOME/cell-token) or the admin's */
    const char *cache_dir;   /* the blob goes to cache_dir/HEX (mode 0600) */
    uint64_t max_bytes;      /* larger blobs are refused (0: 4 GiB) */
    long timeout_ms;         /* each URL's whole transfer (0: 10 minutes) */
    /* a URL that sends no byte for this long (a server that accepts the connection and
     * never answers, or stops midway) is given up and the next one tried (0: 10 s) */
    long stall_ms;
    const char *ca_file;     /* for https URLs (NULL: the system's CAs) */
};

/* done(ctx, 0, PATH, URL) once cache_dir/HEX holds the blob and it matched its digest (URL
 * the one of urls it came from; at once, from the loop, with URL NULL when it was there
 * already), or done(ctx, rc, NULL, why) when no URL
 * gave it: rc -EBADMSG (content that does not match: nothing is left in the cache), -EFBIG
 * (larger than max_bytes), -ENOENT (no controller has it), -EACCES (the token was refused),
 * -EIO (none could be reached). PATH and why live during the call. */
typedef void (*blob_fetch_cb)(void *ctx, int rc, const char *path, const char *why);
/* Starts a fetch on loop; the transfer runs on libuv's thread pool (libcurl, streamed to a
 * temporary file in cache_dir while hashed), so the loop never waits for it. 0 and done
 * later (exactly once), or a negative errno (-EINVAL: a malformed digest, no URL, no
 * cache_dir) and no call. */
int blob_fetch(uv_loop_t *loop, const struct blob_fetch_options *opt, blob_fetch_cb done,
               void *ctx);

#endif
