/* The pure parts of the scheduler: an instance's environment and Diego's crash backoff. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "scheduler/scheduler.h" /* the crash backoff; the environment: instance_env.h */

#define SCHEDULER_CRASH_FREE_RESTARTS 3
#define SCHEDULER_CRASH_BASE_MS (30 * 1000)
#define SCHEDULER_CRASH_CAP_MS (16 * 60 * 1000)
#define SCHEDULER_CRASH_RESET_MS (5 * 60 * 1000)

int64_t scheduler_crash_delay_ms(int crash_count)
{
    if (crash_count <= SCHEDULER_CRASH_FREE_RESTARTS)
        return 0;
    int64_t delay = SCHEDULER_CRASH_BASE_MS;
    for (int i = SCHEDULER_CRASH_FREE_RESTARTS + 1; i < crash_count; i++) {
        delay *= 2;
        if (delay >= SCHEDULER_CRASH_CAP_MS)
            return SCHEDULER_CRASH_CAP_MS;
    }
    return delay;
}

int scheduler_crash_count_next(int previous, int64_t healthy_since_ms, int64_t now_ms)
{
    if (healthy_since_ms > 0 && now_ms - healthy_since_ms >= SCHEDULER_CRASH_RESET_MS)
        return 1;
    return previous < 0 ? 1 : previous + 1;
}

static void env__add(char ***env, size_t *n, const char *key, const char *value)
{
    *env = xrealloc(*env, (*n + 2) * sizeof **env);
    (*env)[(*n)++] = xasprintf("%s=%s", key, value ? value : "");
    (*env)[*n] = NULL;
}

static bool env__reserved(const char *key)
{
    static const char *const reserved[] = {"PORT",
                                           "VCAP_APPLICATION",
                                           "VCAP_SERVICES",
                                           "CF_INSTANCE_INDEX",
                                           "CF_INSTANCE_GUID",
                                           "CF_INSTANCE_PORT",
                                           "CF_INSTANCE_ADDR",
                                           "SKIFF_EVENTS_URL",
                                           "SKIFF_EVENTS_TOKEN",
                                           NULL};
    for (const char *const *r = reserved; *r; r++)
        if (!strcmp(*r, key))
            return true;
    return false;
}

char *scheduler_vcap_application(const struct scheduler_env_input *in)
{
    json_t *uris = json_array();
    for (const char *const *u = in->uris; u && *u; u++)
        json_array_append_new(uris, json_string(*u));
    json_t *vcap = json_pack("{s:s,s:s,s:s,s:o,s:s,s:s,s:s,s:s,s:{s:i,s:i,s:i}}", "application_id",
                             in->app_guid, "application_name", in->app_name, "name", in->app_name,
                             "application_uris", uris, "space_id", "local", "space_name", "local",
                             "organization_id", "local", "organization_name", "local", "limits",
                             "mem", in->memory_mb, "disk", in->disk_mb, "fds", 16384);
    json_object_set_new(vcap, "uris", json_deep_copy(uris));
    if (in->instance_guid) {
        json_object_set_new(vcap, "instance_id", json_string(in->instance_guid));
        json_object_set_new(vcap, "application_version", json_string(in->instance_guid));
        json_object_set_new(vcap, "instance_index", json_integer(in->index));
        json_object_set_new(vcap, "host", json_string("0.0.0.0"));
        json_object_set_new(vcap, "port", json_integer(in->port));
    }
    char *text = json_dumps(vcap, JSON_COMPACT);
    json_decref(vcap);
    return text;
}

char **scheduler_instance_env(const struct scheduler_env_input *in)
{
    char **env = NULL;
    size_t n = 0;
    char num[32];

    char *vcap_text = scheduler_vcap_application(in);

    snprintf(num, sizeof num, "%d", in->port);
    env__add(&env, &n, "PORT", num);
    env__add(&env, &n, "CF_INSTANCE_PORT", num);
    env__add(&env, &n, "CF_INSTANCE_ADDR", in->addr);
    snprintf(num, sizeof num, "%d", in->index);
    env__add(&env, &n, "CF_INSTANCE_INDEX", num);
    env__add(&env, &n, "CF_INSTANCE_GUID", in->instance_guid);
    env__add(&env, &n, "VCAP_APPLICATION", vcap_text);
    env__add(&env, &n, "VCAP_SERVICES", in->vcap_services_json ? in->vcap_services_json : "{}");
    env__add(&env, &n, "HOME", in->home);
    env__add(&env, &n, "TMPDIR", in->tmpdir);
    snprintf(num, sizeof num, "%dM", in->memory_mb);
    env__add(&env, &n, "MEMORY_LIMIT", num);
    env__add(&env, &n, "SKIFF_EVENTS_URL", in->events_url);
    env__add(&env, &n, "SKIFF_EVENTS_TOKEN", in->events_token);
    env__add(&env, &n, "LANG", "C.UTF-8");
    env__add(&env, &n, "PATH", "/usr/local/bin:/usr/bin:/bin");
    free(vcap_text);

    for (const char *const *u = in->user_env; u && u[0] && u[1]; u += 2) {
        if (env__reserved(u[0]))
            continue;
        /* a user value replaces a default such as PATH or LANG */
        size_t kl = strlen(u[0]);
        bool replaced = false;
        for (size_t i = 0; i < n; i++) {
            if (!strncmp(env[i], u[0], kl) && env[i][kl] == '=') {
                free(env[i]);
                env[i] = xasprintf("%s=%s", u[0], u[1]);
                replaced = true;
                break;
            }
        }
        if (!replaced)
            env__add(&env, &n, u[0], u[1]);
    }
    return env;
}

void scheduler_env_free(char **env)
{
    if (!env)
        return;
    for (char **p = env; *p; p++)
        free(*p);
    free(env);
}
