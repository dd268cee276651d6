/* instance_env: an instance's environment, pure (no loop, no store): what the scheduler
 * builds for the instances it starts here, and what a cell builds for the instances it is
 * asked to start (src/cell/cell.h), from the same inputs. */
#ifndef SKIFF_INSTANCE_ENV_H
#define SKIFF_INSTANCE_ENV_H

struct scheduler_env_input {
    const char *app_guid;
    const char *app_name;
    const char *instance_guid;
    int index;
    int port;         /* $PORT */
    const char *addr; /* CF_INSTANCE_ADDR: "IP:PORT" where the platform reaches it */
    int memory_mb;
    int disk_mb;
    const char *home; /* the instance's HOME (the app dir) */
    const char *tmpdir;
    const char *const *uris; /* NULL-terminated routes */
    const char *events_url;
    const char *events_token;
    const char *const *user_env;    /* NULL-terminated KEY, VALUE, KEY, VALUE, ... */
    const char *vcap_services_json; /* NULL: "{}" */
};

/* VCAP_APPLICATION as JSON text (caller frees). Without instance_guid, the fields of one
 * instance (instance_id, instance_index, port) are left out: the app's view for the API. */
char *scheduler_vcap_application(const struct scheduler_env_input *in);
/* The complete environment of an instance as a NULL-terminated KEY=VALUE array (free with
 * scheduler_env_free). User variables come last and may not override PORT, CF_INSTANCE_*,
 * VCAP_APPLICATION or SKIFF_EVENTS_*. */
char **scheduler_instance_env(const struct scheduler_env_input *in);
void scheduler_env_free(char **env);

#endif
