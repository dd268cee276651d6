/* invoker: delivers the events of event mappings to function instances.
 *
 * Delivery policy (this section) is pure: what to do with the outcome of an attempt and how
 * long to wait before the next one. No I/O, no clock reads. */
#ifndef SKIFF_INVOKER_H
#define SKIFF_INVOKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- delivery policy ----------------------------------------------------------------- */

#define INVOKER_DEFAULT_RETRIES 10
#define INVOKER_DEFAULT_BACKOFF_MS 200
#define INVOKER_DEFAULT_BACKOFF_CAP_MS 60000
#define INVOKER_DEFAULT_MAX_AGE_MS ((int64_t)24 * 3600 * 1000)
#define INVOKER_DEFAULT_CONCURRENCY 1

struct delivery_policy {
    int retries;        /* retries after the first attempt; 0: one attempt only */
    int64_t backoff_ms; /* delay before the first retry; doubles each retry */
    int64_t backoff_cap_ms;
    int64_t max_age_ms; /* an event older than this (from its publish time) is not retried */
    int concurrency;    /* events in flight per instance */
    bool ordered;       /* one event at a time per subject, in offset order */
};

/* Fills the documented defaults. */
void delivery_policy_default(struct delivery_policy *p);

/* The delay before retry number `retry` (1 = the first retry): backoff_ms * 2^(retry-1),
 * never more than backoff_cap_ms. */
int64_t delivery_backoff_ms(const struct delivery_policy *p, int retry);

enum delivery_verdict {
    DELIVERY_ACK,   /* done: commit past it */
    DELIVERY_RETRY, /* try again after delivery_backoff_ms() */
    DELIVERY_DEAD,  /* do not retry: dead-letter topic, or recorded as failed */
};

/* What an HTTP status means for an event: 2xx acknowledges; 5xx, 408, 409 and 429 may be
 * retried; every other status (other 4xx, 1xx, 3xx) is final. status 0 is a network error
 * (connect refused, reset, timeout), which may be retried. */
enum delivery_verdict delivery_classify_status(int status);

/* The verdict for a failed attempt, taking the policy into account: `failed_attempts`
 * attempts have failed so far (including this one), the event was published at
 * published_ms and it is now now_ms. RETRY only when the status is retryable, the retry
 * budget is not spent, and the event will still be younger than max_age when the retry
 * runs. */
enum delivery_verdict delivery_after_failure(const struct delivery_policy *p, int status,
                                             int failed_attempts, int64_t published_ms,
                                             int64_t now_ms);

#endif
