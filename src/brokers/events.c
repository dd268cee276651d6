/* The events backend: Skiff's event fabric as a service. An instance is the topic named like
 * the instance (in its space; topics need no making); a binding is a token that publishes
 * to that topic only, signed with the key skiffd checks it with (services_binding_token), and
 * good while skiffd keeps the binding's record: unbinding ends it there, so nothing is kept
 * here. */
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "brokers/brokers.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "services/services.h"

struct brokers_events {
    char *url;
    unsigned char key[32];
};

static int events__provision(void *ctx, const char *instance_id, char *err, size_t errlen)
{
    return 0;
}

static int events__deprovision(void *ctx, const char *instance_id, char *err, size_t errlen)
{
    return 0;
}

static int events__bind(void *ctx, const char *instance_id, const char *binding_id, json_t **out,
                        char *err, size_t errlen)
{
    struct brokers_events *ev = ctx;
    char token[SERVICES_BINDING_TOKEN_MAX];
    services_binding_token(ev->key, instance_id, binding_id, token, sizeof token);
    char *url = xasprintf("%s/v1/topics/%s/events", ev->url, instance_id);
    *out = json_pack("{s:s,s:s,s:s}", "url", url, "topic", instance_id, "token", token);
    sodium_memzero(token, sizeof token);
    free(url);
    return 0;
}

static int events__unbind(void *ctx, const char *instance_id, const char *binding_id, char *err,
                          size_t errlen)
{
    return 0;
}

static void events__stop(void *ctx, bool leave_running) {}

int brokers_events_new(const struct brokers_config *cfg, struct brokers_backend *out)
{
    if (!cfg->events_url || !cfg->events_key)
        return -ENOENT;
    struct brokers_events *ev = xcalloc(1, sizeof *ev);
    int rc = services_binding_key(cfg->events_key, ev->key);
    if (rc < 0) {
        log_error("cannot read the events key %s: %s (no events offering)", cfg->events_key,
                  skiff_strerror(rc));
        free(ev);
        return rc;
    }
    ev->url = xstrdup(cfg->events_url);
    *out = (struct brokers_backend){
        .name = "events",
        .service_id = "9b4f6c2e-8d1a-4e3b-a5c7-0f2e1d3c4b01",
        .plan_id = "9b4f6c2e-8d1a-4e3b-a5c7-0f2e1d3c4b02",
        .description = "A topic of Skiff's event fabric: bound apps publish CloudEvents to it",
        .plan_description = "a topic in the instance's space; each binding a token that "
                            "publishes to it only",
        .tags = "[\"events\", \"cloudevents\", \"messaging\"]",
        .ctx = ev,
        .provision = events__provision,
        .deprovision = events__deprovision,
        .bind = events__bind,
        .unbind = events__unbind,
        .stop = events__stop,
    };
    return 0;
}

void brokers_events_free(struct brokers_backend *be)
{
    struct brokers_events *ev = be->ctx;
    if (!ev)
        return;
    sodium_memzero(ev->key, sizeof ev->key);
    free(ev->url);
    free(ev);
    be->ctx = NULL;
}
