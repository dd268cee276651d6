/* Delivery policy: retries, backoff and the meaning of an HTTP status (see invoker.h). */
#include "invoker/invoker.h"

void delivery_policy_default(struct delivery_policy *p)
{
    p->retries = INVOKER_DEFAULT_RETRIES;
    p->backoff_ms = INVOKER_DEFAULT_BACKOFF_MS;
    p->backoff_cap_ms = INVOKER_DEFAULT_BACKOFF_CAP_MS;
    p->max_age_ms = INVOKER_DEFAULT_MAX_AGE_MS;
    p->concurrency = INVOKER_DEFAULT_CONCURRENCY;
    p->ordered = false;
}

int64_t delivery_backoff_ms(const struct delivery_policy *p, int retry)
{
    int64_t d = p->backoff_ms > 0 ? p->backoff_ms : 1;
    /* Doubling stops at the cap, so a large retry count cannot overflow. */
    for (int i = 1; i < retry && d < p->backoff_cap_ms; i++)
        d *= 2;
    return d < p->backoff_cap_ms ? d : p->backoff_cap_ms;
}

enum delivery_verdict delivery_classify_status(int status)
{
    if (status >= 200 && status < 300)
        return DELIVERY_ACK;
    if (status == 0 || status >= 500 || status == 408 || status == 409 || status == 429)
        return DELIVERY_RETRY;
    return DELIVERY_DEAD;
}

enum delivery_verdict delivery_after_failure(const struct delivery_policy *p, int status,
                                             int failed_attempts, int64_t published_ms,
                                             int64_t now_ms)
{
    enum delivery_verdict v = delivery_classify_status(status);
    if (v != DELIVERY_RETRY)
        return v;
    if (failed_attempts > p->retries)
        return DELIVERY_DEAD;
    int64_t retry_at = now_ms + delivery_backoff_ms(p, failed_attempts);
    if (p->max_age_ms > 0 && retry_at - published_ms > p->max_age_ms)
        return DELIVERY_DEAD;
    return DELIVERY_RETRY;
}
