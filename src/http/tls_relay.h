/* tls_relay: an upgraded HTTPS connection, carried on after the server lets go of it.
 *
 * http_upgrade hands its taker a socket descriptor; over HTTPS the bytes on the wire are TLS
 * records, so the taker gets one end of a socketpair instead and the relay moves plaintext
 * between that end and the TLS connection (decrypting what the client sends, encrypting what
 * the taker writes). The relay owns itself: it ends when either side ends (a close_notify is
 * sent when the taker closes), and frees what it took. Internal to src/http. */
#ifndef SKIFF_HTTP_TLS_RELAY_H
#define SKIFF_HTTP_TLS_RELAY_H

#include <uv.h>

struct tls_conn;

/* Takes over sock (a TCP socket, its handshake done) and tls (all its output sent); returns
 * the descriptor for the taker (its end of the pair), or -1 when the relay could not be made:
 * then sock is closed and tls freed. */
int tls_relay_start(uv_loop_t *loop, int sock, struct tls_conn *tls);

#endif
