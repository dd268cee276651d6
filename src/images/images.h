/* images: prebuilt OCI and Docker images as Skiff runs them.
 *
 * A content-addressed store under $SKIFF_HOME/images shared by every app:
 *   blobs/sha256/HEX    blobs as they came (configs, manifests, a tarball's layers), each
 *                       written under tmp/ while its sha256 is computed and renamed into
 *                       place only when it matches: nothing half-stored is ever visible
 *   layers/sha256/HEX   a layer blob unpacked, in overlayfs's format (a whiteout is a 0/0
 *                       character device, an opaque folder has trusted.overlay.opaque=y),
 *                       owned as the container's user namespace will see it; a pulled layer
 *                       is unpacked while it streams in and only this is kept of it
 * An image's root file system is a read-only overlay of its layers' folders.
 *
 * Every call returns SKIFF_OK (0) or an error of common/err.h with a message in err (size
 * errlen) that names what was wrong: which layer, which entry, which digest. Strings in the
 * structs below are owned by the struct and freed by its _clear function. */
#ifndef SKIFF_IMAGES_H
#define SKIFF_IMAGES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* "sha256:" + 64 lowercase hex + NUL */
#define IMAGE_DIGEST_LEN 72

/* The one rule for a digest Skiff accepts: sha256 only, lowercase hex. */
bool image_digest_valid(const char *digest);

/* ---- the store ----------------------------------------------------------------------- */

struct image_store {
    char *root;         /* home/images */
    unsigned uid_base;  /* host uid of the containers' root: layer files are owned from it */
    uint64_t max_blob;  /* bytes one blob may have (a compressed layer); 0: 2 GiB */
    uint64_t max_layer; /* bytes a layer may unpack to; 0: 8 GiB */
    /* bytes an image may have: its blobs together as pulled (or its tarball), and what any one
     * of its layers unpacks to (a layer bomb stops there); 0: IMAGE_DEFAULT_MAX_IMAGE. Both
     * limits above are at most this one. */
    uint64_t max_image;
};
#define IMAGE_DEFAULT_MAX_IMAGE (4ull << 30)

/* Makes (or opens) the store under home. */
int image_store_open(struct image_store *s, const char *home, unsigned uid_base, char *err,
                     size_t errlen);
void image_store_close(struct image_store *s);
/* Where a blob / an unpacked layer of a valid digest lives (it may not exist); caller frees;
 * NULL for a digest that is not valid. */
char *image_store_blob_path(const struct image_store *s, const char *digest);
char *image_store_layer_path(const struct image_store *s, const char *digest);
bool image_store_has_blob(const struct image_store *s, const char *digest);

/* Storing a blob while it streams in: begin, write each piece, then commit (the sha256 is
 * checked against expected, when one is given, and the blob renamed into place) or abort.
 * Both commit and abort free the writer. A blob over s->max_blob fails the write with
 * SKIFF_E_TOO_LARGE; a mismatch fails the commit with SKIFF_E_DIGEST_MISMATCH, naming `what`
 * ("layer sha256:..."); neither leaves anything behind. */
struct image_blob_writer;
int image_blob_begin(const struct image_store *s, const char *expected, const char *what,
                     struct image_blob_writer **out, char *err, size_t errlen);
int image_blob_write(struct image_blob_writer *w, const void *data, size_t len, char *err,
                     size_t errlen);
int image_blob_commit(struct image_blob_writer *w, char digest[IMAGE_DIGEST_LEN], char *err,
                      size_t errlen);
void image_blob_abort(struct image_blob_writer *w);
/* A stored blob read whole (a manifest or a config), at most max bytes; caller frees. */
int image_blob_read(const struct image_store *s, const char *digest, size_t max, char **out,
                    size_t *len, char *err, size_t errlen);

/* Unpacks the stored layer blob (tar, tar+gzip or tar+zstd) into layers/ once: a layer
 * already unpacked is kept. Refused (SKIFF_E_UNSAFE_ARCHIVE, naming the entry): absolute
 * paths and ".." components, device nodes, hard links to outside the layer, writing through a
 * symbolic link (a link may point anywhere: it is resolved inside the container's root, but
 * nothing is ever written through one while unpacking), more than max_layer bytes. setuid and
 * setgid bits are dropped, extended attributes are not kept, owners over 65535 become 65534. */
int image_layer_unpack(const struct image_store *s, const char *digest, char *err, size_t errlen);

/* ---- garbage collection --------------------------------------------------------------- */

/* A shared hold on the store, for as long as a pull or an import and the droplet record it
 * ends in take: a collection never runs meanwhile (their blobs are named by nothing until the
 * record is written). Waits while a collection runs. An fd for image_store_release, or a
 * negative errno. */
int image_store_hold(const struct image_store *s);
void image_store_release(int hold);

/* The digests a collection keeps: each named by a droplet's record (its manifest, config and
 * layers) or by a running instance's layers (its overlay lowerdir, folders in this store). */
struct image_keep {
    char **digests;
    size_t n, cap;
};
void image_keep_add(struct image_keep *k, const char *digest);
void image_keep_record(struct image_keep *k, const char *droplet_dir); /* no record: nothing */
void image_keep_layers(struct image_keep *k, const char *lowerdir);
void image_keep_clear(struct image_keep *k);

struct image_gc_result {
    size_t blobs, layers; /* how many were removed */
};
/* Removes every blob and unpacked layer keep does not name (and what a killed pull left in
 * tmp/). Only when it can take the store whole: while a pull or import holds it, SKIFF_E_BUSY
 * and nothing is removed. Blocking (folders are removed): run it off the event loop. */
int image_store_gc(const struct image_store *s, const struct image_keep *keep,
                   struct image_gc_result *out, char *err, size_t errlen);

/* ---- what an image is ---------------------------------------------------------------- */

/* The image config's "config" object: what decides the process. */
struct image_config {
    char **entrypoint; /* NULL-terminated, or NULL */
    char **cmd;        /* NULL-terminated, or NULL */
    char **env;        /* NULL-terminated KEY=VALUE, or NULL */
    char *workdir;     /* or NULL */
    char *user;        /* "name", "uid", "uid:gid", or NULL */
    int port;          /* the lowest exposed TCP port, or 0 when none is exposed */
    bool ids;          /* uid and gid are User resolved (image_user_resolve) */
    unsigned uid, gid; /* the ids User names inside the container; 0 (root or none): vcap */
};
int image_config_parse(const char *json, size_t len, struct image_config *out, char *err,
                       size_t errlen);
void image_config_clear(struct image_config *c);

/* An image manifest (Docker schema 2 or OCI), or an index / manifest list. */
struct image_manifest {
    char *config;  /* the config blob's digest */
    char **layers; /* layer blob digests, bottom first, NULL-terminated */
    uint64_t *sizes; /* each layer's size as the manifest says (0: not said), or NULL when the
                        manifest was not parsed (an image's record) */
    size_t n_layers;
};
/* Parses a manifest; *is_index is set (and out left empty) when the document is an index or
 * a manifest list, whose entry for os/arch image_index_pick then chooses. */
int image_manifest_parse(const char *json, size_t len, struct image_manifest *out, bool *is_index,
                         char *err, size_t errlen);
void image_manifest_clear(struct image_manifest *m);
/* The digest of the index's manifest for os/arch (Go's names: "linux", "amd64", "arm64").
 * SKIFF_E_BAD_IMAGE naming the platforms it has when none fits. */
int image_index_pick(const char *json, size_t len, const char *os, const char *arch,
                     char digest[IMAGE_DIGEST_LEN], char *err, size_t errlen);
/* This machine's platform in Go's names. */
const char *image_host_arch(void);

/* An image resolved and stored: all of its blobs are in the store, its layers unpacked. */
struct image {
    char *ref;    /* what the user named: "oci-archive:web.tar", "registry/team/web:1.4" */
    char *digest; /* the manifest's digest (for a docker-archive: the config's, its image id) */
    struct image_manifest manifest;
    struct image_config config;
};
void image_clear(struct image *img);
/* The record kept with an app's droplet, and back. */
char *image_to_json(const struct image *img);
int image_from_json(const char *json, struct image *out, char *err, size_t errlen);

/* Imports a tarball: kind "oci-archive" (an OCI image layout) or "docker-archive" (`docker
 * save` output). Every blob is stored (verified against its digest where the tarball names
 * one), every layer unpacked; the result is in out. */
int image_import_archive(const struct image_store *s, const char *kind, const char *path,
                         struct image *out, char *err, size_t errlen);

/* ---- registries (OCI Distribution v2) ------------------------------------------------- */

/* [REGISTRY/]NAME[:TAG][@DIGEST] as Docker reads it: without a registry (a first component
 * with no dot, no port and not "localhost") Docker Hub, where a one-word NAME is library/NAME;
 * no tag and no digest: "latest". */
struct image_ref {
    char *registry;   /* host[:port] */
    char *repository; /* e.g. team/web */
    char *tag;        /* or NULL when only a digest is given */
    char *digest;     /* or NULL */
};
int image_ref_parse(const char *text, struct image_ref *out, char *err, size_t errlen);
void image_ref_clear(struct image_ref *r);

struct image_pull_options {
    const char *username, *password; /* NULL: anonymous */
    const char *const *insecure;     /* NULL-terminated HOST:PORTs spoken to over http */
    /* each layer's compressed blob is kept too (blobs/sha256/HEX), for the blob store that
     * cells on other hosts fetch layers from; false: only its unpacked folder */
    bool keep_layer_blobs;
    /* a line of progress (what is resolved, each layer pulled or found stored), or NULL */
    void (*progress)(void *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
    void *progress_ctx;
};
/* Pulls reference: the manifest (an index resolved to linux and this machine's
 * architecture), the config and every layer not stored yet, each verified against its
 * digest, and unpacks the layers. Blocking: run it off the event loop. Errors name what went
 * wrong: SKIFF_E_NOT_FOUND (no such image or tag), SKIFF_E_UNAUTHORIZED (401: credentials
 * missing or wrong), SKIFF_E_FORBIDDEN (403), SKIFF_E_UNAVAILABLE (unreachable, or an
 * answer that is not the protocol's), SKIFF_E_DIGEST_MISMATCH, SKIFF_E_TOO_LARGE,
 * SKIFF_E_BAD_IMAGE. */
int image_pull(const struct image_store *s, const char *reference,
               const struct image_pull_options *opt, struct image *out, char *err, size_t errlen);

/* Resolves the config's User (USER[:GROUP], each a name or a number) to ids through the
 * image's own /etc/passwd and /etc/group, read from its unpacked layers as its root shows them
 * (whiteouts and opaque folders applied), never through a link (a link there is refused), at
 * most 1 MiB each. A user without a group gets its /etc/passwd group (a number it does not
 * list: the same number). SKIFF_E_BAD_IMAGE naming the user or group the image does not have,
 * or ids over 65535. Sets config.ids, uid and gid (0 for root: it runs as vcap). */
int image_user_resolve(const struct image_store *s, struct image *img, char *err, size_t errlen);

/* ---- image droplets ------------------------------------------------------------------ */

/* An image app's droplet is a folder with the image's record (IMAGE_RECORD) and an empty
 * app/ (the instance's HOME). Written by staging; nothing else of the image is copied. */
#define IMAGE_RECORD "image.json"
int image_droplet_write(const struct image *img, const char *droplet_dir, char *err, size_t errlen);
bool image_droplet_is_image(const char *droplet_dir);
/* The port its instances listen on: the image's lowest exposed TCP port; 0 when it exposes
 * none (the container's default, 8080, then) or the record cannot be read. */
int image_droplet_port(const char *droplet_dir);
/* The image's own command, Entrypoint then Cmd, each word shell-quoted: what `skiff app`
 * shows and the droplet's web process runs unless the app names another. Caller frees. */
char *image_default_command(const struct image_config *c);

/* What an instance of an image droplet runs. */
struct image_run {
    char *layers;      /* its layers' folders, top first, ':'-separated (overlayfs lowerdir) */
    char **argv;       /* the image's own Entrypoint+Cmd when command is its default, else
                          /bin/sh -c command (in the image: it must have a shell then) */
    char *cwd;         /* WorkingDir, else "/" */
    char **env;        /* env, then each of the image's Env whose name env does not have */
    unsigned uid, gid; /* the image's User resolved at staging (numeric only in a record of
                          before names were resolved); 0 (root or none): vcap */
};
int image_run_prepare(const char *home, const char *droplet_dir, const char *command,
                      char *const *env, struct image_run *out, char *err, size_t errlen);
void image_run_clear(struct image_run *r);

#endif
