/* natsconn: a NATS core connection (libnats) used from a libuv loop.
 *
 * libnats delivers messages on its own threads; a natsconn copies each message into an inbox
 * (a mutex-protected queue) and wakes the loop with a uv_async, so the handler given to
 * natsconn_open always runs on the loop thread. Publishing is thread-safe (libnats's own
 * lock) and never waits for the server: while the connection is down libnats buffers what is
 * published (its reconnect buffer) or refuses it.
 *
 * natsconn_options is the one place a "--nats nats://h1:4222,nats://h2:4222" list becomes
 * libnats options (the fabric's JetStream connection uses it too), and natsconn_url_masked
 * the one place a URL is made fit for a message (never a password in a log).
 *
 * Errors are negative errno values (common/err.h), with a sentence in err. */
#ifndef SKIFF_NATSCONN_H
#define SKIFF_NATSCONN_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

struct natsconn;
typedef struct __natsOptions natsOptions; /* libnats's, opaque here */

/* How a process proves who it is to NATS and checks the servers, as the nats CLI takes them
 * (--creds, --tlsca, --tlscert, --tlskey). Every field is a file name; NULL or "" is none.
 * A user and password (or a token) go in the URL itself: nats://USER:PASSWORD@HOST:PORT. */
struct natsconn_security {
    const char *creds;    /* a NATS credentials file: the user's JWT and nkey seed */
    const char *tls_ca;   /* PEM: the CAs the servers' certificates must chain to */
    const char *tls_cert; /* PEM: this client's certificate chain, sent when the server asks */
    const char *tls_key;  /* PEM: the key of tls_cert */
};

/* Whether connections made with these settings use TLS: a tls:// server, or a CA or a client
 * certificate given. The one answer to "may key material travel on this connection?". */
bool natsconn_security_tls(const char *urls, const struct natsconn_security *sec);

/* libnats options for a comma-separated server list (spaces around commas ignored, at most
 * 16 servers): reconnect forever every 250 ms, connect and flush timeouts of timeout_ms, and
 * sec (NULL: none) applied. 0 and *out set (the caller destroys it with natsOptions_Destroy),
 * or -EINVAL with the reason (naming the flag or file) in err. */
int natsconn_options(const char *urls, const struct natsconn_security *sec, int timeout_ms,
                     natsOptions **out, char *err, size_t errsize);
/* The server list with any "user:PASSWORD@" or "TOKEN@" replaced by "***@"; the caller frees. */
char *natsconn_url_masked(const char *urls);
/* A libnats status as a negative errno (-ENOTCONN for every kind of "not connected"). */
int natsconn_errno(int nats_status);

/* Runs on the loop thread for each message of a subscription; data is not NUL-terminated
 * (but data[len] is 0), reply is NULL when the sender asked for no answer. Everything is freed
 * after the call returns. */
typedef void (*natsconn_msg_fn)(void *ctx, const char *subject, const char *reply, const char *data,
                                size_t len);
/* Runs on the loop thread when the connection comes up (again) or goes down. */
typedef void (*natsconn_state_fn)(void *ctx, bool connected);

struct natsconn_config {
    const char *urls;
    const char *name; /* the connection's name the server shows (monitoring) */
    struct natsconn_security security; /* read by natsconn_open only (not kept) */
    natsconn_msg_fn on_msg;
    natsconn_state_fn on_state; /* NULL: nobody */
    void *ctx;
    size_t inbox_max; /* messages waiting for the loop; past it new ones are dropped (counted).
                         0: 65536 */
};

/* Connects. A server that is not reachable yet is not an error: the connection keeps trying
 * in the background (on_state tells when it is up), so a router starts serving its saved table
 * whether or not NATS is there; why the first attempt failed (refused credentials, a server
 * certificate the CA does not vouch for, ...) is logged once as a warning. -EINVAL (bad list,
 * a security file that does not load) with the reason in err. The server's refusals later on
 * (a publish or subscription its permissions forbid) are logged, each kind once. */
int natsconn_open(uv_loop_t *loop, const struct natsconn_config *cfg, struct natsconn **out,
                  char *err, size_t errsize);
/* Subscribes the connection's handler to a subject (wildcards allowed). 0 or a negative errno. */
int natsconn_subscribe(struct natsconn *c, const char *subject);
/* Publishes data on subject, reply NULL or the subject answers go to. Thread-safe.
 * 0, or a negative errno (-ENOTCONN while down and libnats's buffer is full or closed). */
int natsconn_publish(struct natsconn *c, const char *subject, const char *reply, const void *data,
                     size_t len);
/* A new unique subject for answers (a NATS inbox); the caller frees it. */
char *natsconn_new_inbox(struct natsconn *c);
bool natsconn_connected(const struct natsconn *c);
/* Whether the connection uses TLS (natsconn_security_tls of its configuration). */
bool natsconn_tls(const struct natsconn *c);
/* Messages dropped because the loop's inbox was full (thread-safe). */
unsigned long long natsconn_dropped(const struct natsconn *c);
/* Unsubscribes, closes the connection (what is buffered is flushed, bounded by a second) and
 * frees it once its handle is closed. No handler runs after this returns. */
void natsconn_close(struct natsconn *c);

#endif
