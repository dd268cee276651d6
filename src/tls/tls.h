/* tls: TLS for Skiff's servers, on OpenSSL (libssl).
 *
 * Three parts, each usable alone:
 * - a certificate store (struct tls_store): server contexts (TLS 1.2 and 1.3 only, modern
 *   cipher suites, no renegotiation, session tickets under rotating keys), one per certificate,
 *   chosen per handshake by SNI (exact host, then wildcard, then the default); reloaded from
 *   files without a restart (handshakes already made keep their certificate);
 * - a connection transport (struct tls_conn) over memory BIOs: the caller moves ciphertext
 *   between the socket and the connection, so a handshake never blocks a thread;
 * - a local certificate authority under $SKIFF_HOME/tls/ and the checks a certificate and key
 *   pair must pass before the platform serves it.
 *
 * Files under a TLS directory (DIR is $SKIFF_HOME/tls):
 *   DIR/ca.pem, DIR/ca.key            the local CA (the key 0600)
 *   DIR/default.pem                   the default certificate chain and its key (0600)
 *   DIR/domains/NAME.pem              a domain's own chain and key (0600)
 *
 * Every function returns 0 or a negative errno code with a message in err (which names what
 * was wrong and what to do); none aborts on bad input. */
#ifndef SKIFF_TLS_H
#define SKIFF_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLS_PEM_MAX (64 * 1024) /* a certificate chain or a key file, at most */

/* ---- certificate store ------------------------------------------------------------------ */

struct tls_store;

struct tls_store_options {
    /* ALPN protocols the server accepts, in its order of preference, in wire format
     * (length-prefixed names, e.g. "\x08http/1.1"); NULL: no ALPN. The array is not copied. */
    const unsigned char *alpn;
    size_t alpn_len;
    /* PEM file of the CAs whose client certificates are asked for (optional for the client:
     * a connection without one goes on); NULL: none asked for. */
    const char *client_ca_file;
    int ticket_key_rotate_s; /* session ticket keys: a new one this often (<= 0: 3600) */
};

/* Creates a store with no certificate. Thread-safe from then on: lookups from any thread,
 * reloads from one. */
int tls_store_new(const struct tls_store_options *opts, struct tls_store **out, char *err,
                  size_t errsize);
void tls_store_free(struct tls_store *s);

/* Loads DIR/default.pem and every DIR/domains/ *.pem, then publishes them at once; on error
 * the certificates served so far stay. A certificate serves each DNS name of its subject
 * alternative names (a "*.x" name as a wildcard for one label); the first file (by name)
 * to claim a name keeps it. */
int tls_store_load_dir(struct tls_store *s, const char *dir, char *err, size_t errsize);

/* Adds one certificate chain and key (PEM) for its names; default_cert makes it the one
 * served when no name matches. Takes effect at once (tests, and callers that own their files). */
int tls_store_add_pem(struct tls_store *s, const char *pem, size_t len, bool default_cert,
                      char *err, size_t errsize);

/* Replaces every certificate with this one chain and key (PEM), the default too: handshakes
 * from now on get it, connections already made keep theirs; on error nothing changes (a
 * server with one certificate of its own, reloading it). */
int tls_store_set_only_pem(struct tls_store *s, const char *pem, size_t len, char *err,
                           size_t errsize);

/* Lets the store issue certificates itself, signed by the CA in DIR (ca.pem, ca.key), for
 * any name under `suffix` that no loaded certificate serves exactly: a wildcard such as
 * "*.localhost" is refused by curl, OpenSSL and browsers (a wildcard needs two labels after
 * it), so each APP.localhost gets its own leaf on first use (kept, at most 4096 names). */
int tls_store_set_issuer(struct tls_store *s, const char *dir, const char *suffix, char *err,
                         size_t errsize);

/* Limits what the store issues to names allow() accepts (called from any thread; NULL: any
 * name under the suffix). Without it a client could make the store sign a certificate for
 * every random name it sends. */
void tls_store_set_issue_filter(struct tls_store *s, bool (*allow)(void *ctx, const char *name),
                                void *ctx);

/* OCSP stapling: a thread of the store's own fetches, for every certificate served whose leaf
 * names an OCSP responder (Authority Information Access) and whose issuer is in its chain, a
 * response from that responder (libcurl, 10 s at most), checks it (signed by the issuer or its
 * delegate, about this certificate, within thisUpdate/nextUpdate) and staples it to handshakes
 * that ask (status_request) until its nextUpdate; it is fetched again halfway there. Without a
 * valid response handshakes go on unstapled; a failed fetch is tried again after retry_s
 * (<= 0: 60). Certificates loaded later are picked up within a second. Handshakes never wait
 * for the network. Stopped by tls_store_free. */
int tls_store_ocsp_start(struct tls_store *s, int retry_s, char *err, size_t errsize);

/* Which certificate a handshake for `host` gets: fills `subject` (its subject CN, or "" when
 * nothing matches and there is no default) and returns 1 for an exact name, 2 for a
 * wildcard, 3 for the default, 4 for one issued by the store, 0 for none. */
int tls_store_select(struct tls_store *s, const char *host, char *subject, size_t size);

/* Certificates loaded, for logs. */
size_t tls_store_count(struct tls_store *s);

/* ---- a connection over memory BIOs ------------------------------------------------------- */

struct tls_conn;

struct tls_conn *tls_conn_new(struct tls_store *s);
void tls_conn_free(struct tls_conn *c);

/* Gives the connection ciphertext read from the socket. */
void tls_conn_feed(struct tls_conn *c, const char *data, size_t len);

/* Moves the handshake on with what was fed: 1 when it is complete, 0 when it needs more
 * input (send tls_conn_output first), <0 when it failed (err says why; send the output, an
 * alert, then close). */
int tls_conn_handshake(struct tls_conn *c, char *err, size_t errsize);
bool tls_conn_established(const struct tls_conn *c);

/* Decrypts what was fed into out: > 0 bytes, 0 when nothing more is there yet, -1 at the
 * peer's close_notify, < -1 on an error (a renegotiation attempt, a bad record). */
long tls_conn_read(struct tls_conn *c, char *out, size_t cap);

/* Encrypts plaintext for the peer (never blocks: the records go to the output). */
int tls_conn_write(struct tls_conn *c, const char *data, size_t len);

/* Queues close_notify. */
void tls_conn_close_notify(struct tls_conn *c);

/* Ciphertext waiting for the socket: *data and the returned length stay valid until the
 * next call on the connection; tls_conn_output_consumed(n) drops the first n bytes. */
size_t tls_conn_output(struct tls_conn *c, const char **data);
void tls_conn_output_consumed(struct tls_conn *c, size_t n);

/* The ALPN protocol agreed on ("" when none) and its length. */
const char *tls_conn_alpn(const struct tls_conn *c, size_t *len);
/* The SNI name the client sent (NULL when none). */
const char *tls_conn_server_name(const struct tls_conn *c);
/* Whether the handshake resumed a session. */
bool tls_conn_resumed(const struct tls_conn *c);
/* The verified client certificate as base64 DER (as in CF's X-Forwarded-Client-Cert), written
 * into out; returns its length, or 0 when the client sent none. */
size_t tls_conn_client_cert_b64(struct tls_conn *c, char *out, size_t cap);

/* ---- certificates the platform checks and makes ------------------------------------------ */

struct tls_cert_info {
    char subject[256]; /* one line, e.g. "CN=shop.example" */
    char issuer[256];
    int64_t not_after; /* Unix seconds */
    int64_t not_before;
};

/* Checks a certificate chain and key given by a user: both parse as PEM, each within
 * TLS_PEM_MAX, the key matches the first certificate, the certificate is in its validity
 * period and its names cover `domain` (a DNS subject alternative name equal to it, or a
 * wildcard for it; NULL: not checked). Fills *info (may be NULL). -EKEYEXPIRED when all else
 * holds but the certificate expired (or is not valid yet: -EINVAL then). */
int tls_pair_check(const char *cert_pem, size_t cert_len, const char *key_pem, size_t key_len,
                   const char *domain, struct tls_cert_info *info, char *err, size_t errsize);

/* What the first certificate of a PEM file is (its key, if the file has one, is not read
 * into memory). */
int tls_cert_file_info(const char *path, struct tls_cert_info *info);
/* The same for the first certificate of PEM text in memory. */
int tls_cert_pem_info(const char *pem, size_t len, struct tls_cert_info *info);

/* Splits a pair file's text (a certificate chain, then its key, as DIR/domains/NAME.pem
 * holds) into the chain and the key block: 0 and both set (the caller frees them, the key
 * wiped first), or -EINVAL when there is no certificate before a private key block. */
int tls_pem_pair_split(const char *pem, size_t len, char **cert_pem, char **key_pem);

/* Makes sure DIR holds a local CA (ca.pem, ca.key 0600) and a default certificate signed by it
 * (default.pem: for *.localhost, localhost, 127.0.0.1 and ::1, 0600), creating what is
 * missing. *created tells whether anything was made. */
int tls_local_ca_ensure(const char *dir, bool *created, char *err, size_t errsize);

#endif
