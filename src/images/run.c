/* run: image droplets, from the staging that writes them to the instance that runs one. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/util.h"
#include "images/images.h"
#include "images/images_internal.h"

int image_droplet_write(const struct image *img, const char *droplet_dir, char *err, size_t errlen)
{
    char *app = xasprintf("%s/app", droplet_dir);
    char *record = xasprintf("%s/%s", droplet_dir, IMAGE_RECORD);
    char *json = image_to_json(img);
    int rc = mkdir_p(app, 0755);
    if (rc == 0)
        rc = file_write_atomic(record, json, strlen(json), 0644);
    int code = rc < 0
                   ? image__fail(err, errlen, skiff_err_disk(rc), "cannot write the droplet %s: %s",
                                 droplet_dir, skiff_strerror(rc))
                   : SKIFF_OK;
    free(app);
    free(record);
    free(json);
    return code;
}

bool image_droplet_is_image(const char *droplet_dir)
{
    char *record = xasprintf("%s/%s", droplet_dir, IMAGE_RECORD);
    bool is = access(record, F_OK) == 0;
    free(record);
    return is;
}

int image_droplet_port(const char *droplet_dir)
{
    char *record = xasprintf("%s/%s", droplet_dir, IMAGE_RECORD);
    char *json = NULL, err[256];
    struct image img;
    int port = 0;
    if (file_read(record, &json, NULL) == 0 && image_from_json(json, &img, err, sizeof err) == 0) {
        port = img.config.port;
        image_clear(&img);
    }
    free(json);
    free(record);
    return port;
}

/* One word for /bin/sh: as it is when it holds only safe characters, else in single quotes. */
static void image__quote(struct buf *b, const char *w)
{
    bool plain = w[0] != '\0';
    for (const char *p = w; *p && plain; p++)
        plain = strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=@%+,",
                       *p) != NULL;
    if (plain) {
        buf_puts(b, w);
        return;
    }
    buf_putc(b, '\'');
    for (const char *p = w; *p; p++) {
        if (*p == '\'')
            buf_puts(b, "'\\''");
        else
            buf_putc(b, *p);
    }
    buf_putc(b, '\'');
}

char *image_default_command(const struct image_config *c)
{
    struct buf b = {0};
    char **parts[] = {c->entrypoint, c->cmd};
    for (size_t i = 0; i < 2; i++)
        for (char **w = parts[i]; w && *w; w++) {
            if (b.len)
                buf_putc(&b, ' ');
            image__quote(&b, *w);
        }
    buf_puts(&b, "");
    return buf_steal(&b);
}

static size_t image__strv_len(char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    return n;
}

static char **image__env_merge(char *const *env, char *const *image_env)
{
    size_t n = image__strv_len(env), m = image__strv_len(image_env), k = 0;
    char **out = xcalloc(n + m + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        out[k++] = xstrdup(env[i]);
    for (size_t j = 0; j < m; j++) {
        size_t name = strcspn(image_env[j], "=");
        bool have = false;
        for (size_t i = 0; i < n && !have; i++)
            have = !strncmp(env[i], image_env[j], name) && env[i][name] == '=';
        if (!have)
            out[k++] = xstrdup(image_env[j]);
    }
    return out;
}

/* The ids staging resolved (image_user_resolve); a record written before names were
 * resolved has "uid" or "uid:gid", numbers only, and anything else runs as vcap, as it did.
 * 0 is vcap. */
static void image__user(const struct image_config *c, unsigned *uid, unsigned *gid)
{
    *uid = *gid = 0;
    const char *user = c->user;
    if (c->ids) {
        *uid = c->uid;
        *gid = c->gid;
        return;
    }
    if (!user)
        return;
    char *end;
    unsigned long u = strtoul(user, &end, 10);
    if (end == user || u >= 65536 || (*end && *end != ':'))
        return;
    unsigned long g = u;
    if (*end == ':') {
        const char *gs = end + 1;
        g = strtoul(gs, &end, 10);
        if (end == gs || *end || g >= 65536)
            return;
    }
    if (u == 0)
        return;
    *uid = (unsigned)u;
    *gid = (unsigned)g;
}

int image_run_prepare(const char *home, const char *droplet_dir, const char *command,
                      char *const *env, struct image_run *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    char *record = xasprintf("%s/%s", droplet_dir, IMAGE_RECORD);
    char *json = NULL;
    struct image img;
    int rc = file_read(record, &json, NULL) < 0
                 ? image__fail(err, errlen, SKIFF_E_NO_DROPLET, "the droplet %s has no image",
                               droplet_dir)
                 : image_from_json(json, &img, err, errlen);
    free(record);
    free(json);
    if (rc != SKIFF_OK)
        return rc;
    if (img.manifest.n_layers == 0) {
        image_clear(&img);
        return image__fail(err, errlen, SKIFF_E_BAD_IMAGE, "the image has no layers");
    }
    struct buf layers = {0};
    for (size_t i = img.manifest.n_layers; i-- > 0;)
        buf_printf(&layers, "%s%s/images/layers/sha256/%s", layers.len ? ":" : "", home,
                   img.manifest.layers[i] + 7);
    out->layers = buf_steal(&layers);
    char *own = image_default_command(&img.config);
    if (!command || !strcmp(command, own)) {
        size_t n = image__strv_len(img.config.entrypoint), m = image__strv_len(img.config.cmd);
        out->argv = xcalloc(n + m + 1, sizeof(char *));
        for (size_t i = 0; i < n; i++)
            out->argv[i] = xstrdup(img.config.entrypoint[i]);
        for (size_t i = 0; i < m; i++)
            out->argv[n + i] = xstrdup(img.config.cmd[i]);
    } else {
        out->argv = xcalloc(4, sizeof(char *));
        out->argv[0] = xstrdup("/bin/sh");
        out->argv[1] = xstrdup("-c");
        out->argv[2] = xstrdup(command);
    }
    free(own);
    out->cwd = xstrdup(img.config.workdir ? img.config.workdir : "/");
    out->env = image__env_merge(env, img.config.env);
    image__user(&img.config, &out->uid, &out->gid);
    image_clear(&img);
    if (!out->argv[0]) {
        image_run_clear(out);
        return image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                           "the image has neither Entrypoint nor Cmd: give the app a command "
                           "(`skiff push -c`)");
    }
    return SKIFF_OK;
}

void image_run_clear(struct image_run *r)
{
    free(r->layers);
    strv_free(r->argv);
    free(r->cwd);
    strv_free(r->env);
    memset(r, 0, sizeof(*r));
}
