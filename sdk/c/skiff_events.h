/* skiff_events: publish events to Skiff from C.
 *
 * Inside an instance the platform sets SKIFF_EVENTS_URL and SKIFF_EVENTS_TOKEN; this library
 * reads them and POSTs a CloudEvent in binary mode to $SKIFF_EVENTS_URL/topics/TOPIC/events
 * (SKIFF_EVENTS_URL is the API's /v1; a bare API URL works too).
 * A call returns only once Skiff has the event on disk (HTTP 202) or has said why not.
 *
 * Build: compile skiff_events.c with your program and link libcurl (`pkg-config --libs
 * libcurl`). The calls are thread-safe; the first one runs curl_global_init() once (call it
 * yourself first if other threads use libcurl at the same time).
 *
 * Errors: 0 on success, a negative value on failure with a message in errmsg that says what
 * was wrong (the server's own message for a refused event). */
#ifndef SKIFF_EVENTS_H
#define SKIFF_EVENTS_H

#include <stddef.h>
#include <stdint.h>

/* Optional attributes; any field may be NULL (or the whole struct). */
struct skiff_event_opts {
    const char *type; /* default "skiff.event" */
    const char *subject;
    const char *source;       /* default "/apps/APP" from VCAP_APPLICATION, else "/skiff/sdk" */
    const char *id;           /* default: a random UUID */
    const char *content_type; /* default "application/json" */
    long timeout_ms;          /* default 30000 */
};

struct skiff_publish_result {
    char id[128];    /* the event's id */
    uint64_t offset; /* its offset in the topic */
};

#define SKIFF_EVENTS_ENOCONFIG (-1) /* SKIFF_EVENTS_URL or SKIFF_EVENTS_TOKEN is not set */
#define SKIFF_EVENTS_ENETWORK (-2)  /* Skiff could not be reached */
#define SKIFF_EVENTS_EREFUSED (-3)  /* Skiff answered with an error (message in errmsg) */
#define SKIFF_EVENTS_EINVAL (-4)    /* a bad argument */

/* Publishes one event with data (len bytes; may be 0) to topic. result may be NULL. */
int skiff_events_publish(const char *topic, const void *data, size_t len,
                         const struct skiff_event_opts *opts, struct skiff_publish_result *result,
                         char *errmsg, size_t errlen);

#endif
