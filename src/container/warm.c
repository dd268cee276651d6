/* Warm containers: the start message and the call that sends it (see container.h). The
 * keeper's side is in run.c. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/err.h"
#include "common/util.h"
#include "container/container.h"
#include "container/container_internal.h"

static json_t *warm__strings(char *const *v)
{
    json_t *a = json_array();
    for (; v && *v; v++)
        json_array_append_new(a, json_string(*v));
    return a;
}

char *container__start_to_json(const struct container_start *start)
{
    json_t *j = json_pack("{s:s,s:s,s:o,s:o,s:b}", "hostname", start->hostname, "app_dir",
                          start->app_dir, "argv", warm__strings(start->argv), "env",
                          warm__strings(start->envp), "afresh", start->afresh);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return text;
}

/* A NULL-terminated copy of an array of strings, or NULL when it is not one. */
static char **warm__string_array(json_t *a, bool nonempty)
{
    if (!json_is_array(a) || (nonempty && json_array_size(a) == 0))
        return NULL;
    char **v = xcalloc(json_array_size(a) + 1, sizeof *v);
    for (size_t i = 0; i < json_array_size(a); i++) {
        const char *s = json_string_value(json_array_get(a, i));
        if (!s) {
            for (size_t k = 0; k < i; k++)
                free(v[k]);
            free(v);
            return NULL;
        }
        v[i] = xstrdup(s);
    }
    return v;
}

int container__start_from_json(const char *text, struct container__start *out, char *err,
                               size_t errlen)
{
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    const char *hostname = json_string_value(json_object_get(j, "hostname"));
    const char *app_dir = json_string_value(json_object_get(j, "app_dir"));
    int rc = 0;
    if (!json_is_object(j) || !hostname || !*hostname || strlen(hostname) > 64 || !app_dir ||
        app_dir[0] != '/') {
        snprintf(err, errlen, "the start is not {hostname, app_dir (absolute), argv, env}");
        rc = -EINVAL;
        goto out;
    }
    out->hostname = xstrdup(hostname);
    out->app_dir = xstrdup(app_dir);
    out->argv = warm__string_array(json_object_get(j, "argv"), true);
    out->envp = warm__string_array(json_object_get(j, "env"), false);
    out->afresh = json_is_true(json_object_get(j, "afresh"));
    if (!out->argv || !out->envp) {
        snprintf(err, errlen, "the start's argv and env must be arrays of strings (argv not empty)");
        container__start_clear(out);
        rc = -EINVAL;
    }
out:
    json_decref(j);
    return rc;
}

void container__start_clear(struct container__start *s)
{
    for (char **v = s->argv; v && *v; v++)
        free(*v);
    for (char **v = s->envp; v && *v; v++)
        free(*v);
    free(s->argv);
    free(s->envp);
    free(s->hostname);
    free(s->app_dir);
    memset(s, 0, sizeof *s);
}

int container_warm_start(const char *socket_path, const struct container_start *start,
                         char *err, size_t errlen)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(socket_path) >= sizeof addr.sun_path) {
        snprintf(err, errlen, "the warm container's socket path is too long: %s", socket_path);
        return -ENAMETOOLONG;
    }
    strcpy(addr.sun_path, socket_path);
    char *text = container__start_to_json(start);
    if (!text) {
        snprintf(err, errlen, "cannot encode the start");
        return -EINVAL;
    }
    int rc = 0;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        rc = -errno;
        snprintf(err, errlen, "no warm container answers at %s: %s", socket_path,
                 skiff_strerror(-errno));
        goto out;
    }
    /* the keeper reads to the end before it does anything: the whole start or nothing */
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t n = send(fd, text + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? -errno : -EIO;
            snprintf(err, errlen, "cannot hand the start to the warm container: %s",
                     skiff_strerror(rc));
            goto out;
        }
        off += (size_t)n;
    }
out:
    if (fd >= 0)
        close(fd);
    free(text);
    return rc;
}
