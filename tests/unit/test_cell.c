/* cell: the placement rule, the start request read back as it was written, with what a
 * hostile sender writes refused, and where a cell finds a droplet. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <sodium.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <time.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>
#include <string.h>

#include <cmocka.h>

#include "blobs/blobs.h"
#include "cell/cell.h"
#include "common/util.h"

#include "blob_server.h"

#define MB (1024ull * 1024)

/* Places `count` instances of one process needing need_bytes each on cells, counting them as
 * the caller (the leader) does; fills placed[i] with the cell index of instance i. */
static void place_many(struct cell_candidate *cells, size_t n, int count, uint64_t need_bytes,
                       int *placed)
{
    for (int i = 0; i < count; i++) {
        int c = cell_place(cells, n, need_bytes);
        placed[i] = c;
        if (c < 0)
            continue;
        cells[c].process_count++;
        cells[c].free_bytes -= need_bytes;
        for (size_t k = 0; k < n; k++)
            if (!strcmp(cells[k].zone, cells[c].zone))
                cells[k].zone_process_count++;
    }
}

static void test_two_instances_go_to_two_cells(void **state)
{
    (void)state;
    struct cell_candidate cells[] = {
        {.id = "a", .zone = "z1", .up = true, .free_bytes = 8000 * MB},
        {.id = "b", .zone = "z1", .up = true, .free_bytes = 1000 * MB},
    };
    int placed[2];
    place_many(cells, 2, 2, 256 * MB, placed);
    /* the first on the cell with the most free memory, the second on the other, although
     * the first still has far more free memory */
    assert_int_equal(placed[0], 0);
    assert_int_equal(placed[1], 1);
}

static void test_zones_are_spread_before_memory(void **state)
{
    (void)state;
    struct cell_candidate cells[] = {
        {.id = "a1", .zone = "a", .up = true, .free_bytes = 9000 * MB},
        {.id = "a2", .zone = "a", .up = true, .free_bytes = 8000 * MB},
        {.id = "b1", .zone = "b", .up = true, .free_bytes = 1000 * MB},
    };
    int placed[3];
    place_many(cells, 3, 3, 256 * MB, placed);
    assert_int_equal(placed[0], 0); /* most free memory */
    assert_int_equal(placed[1], 2); /* zone b has none of the process yet */
    assert_int_equal(placed[2], 1); /* the one cell still without one */
}

static void test_never_two_on_one_cell_while_another_has_room_and_none(void **state)
{
    (void)state;
    /* zone a already has two (on a2), zone b one (on b1): the least-used zone is b, but its
     * only cell has one already, and a1 has none */
    struct cell_candidate cells[] = {
        {.id = "a1", .zone = "a", .up = true, .free_bytes = 500 * MB, .zone_process_count = 2},
        {.id = "a2",
         .zone = "a",
         .up = true,
         .free_bytes = 900 * MB,
         .process_count = 2,
         .zone_process_count = 2},
        {.id = "b1",
         .zone = "b",
         .up = true,
         .free_bytes = 900 * MB,
         .process_count = 1,
         .zone_process_count = 1},
    };
    assert_int_equal(cell_place(cells, 3, 100 * MB), 0);
}

static void test_cells_lost_or_full_are_not_candidates(void **state)
{
    (void)state;
    struct cell_candidate cells[] = {
        {.id = "a", .zone = "z", .up = false, .free_bytes = 9000 * MB},
        {.id = "b", .zone = "z", .up = true, .free_bytes = 100 * MB},
        {.id = "c", .zone = "z", .up = true, .free_bytes = 600 * MB, .process_count = 3},
    };
    assert_int_equal(cell_place(cells, 3, 512 * MB), 2); /* the only one up with room */
    assert_int_equal(cell_place(cells, 3, 1024 * MB), -1);
    assert_int_equal(cell_place(cells, 0, 1), -1);
    /* several on one cell when it is the only one with room */
    int placed[2];
    place_many(cells, 3, 2, 200 * MB, placed);
    assert_int_equal(placed[0], 2);
    assert_int_equal(placed[1], 2);
}

static void test_ties_do_not_depend_on_the_order(void **state)
{
    (void)state;
    struct cell_candidate one[] = {{.id = "b", .zone = "z", .up = true, .free_bytes = MB},
                                   {.id = "a", .zone = "z", .up = true, .free_bytes = MB}};
    struct cell_candidate two[] = {{.id = "a", .zone = "z", .up = true, .free_bytes = MB},
                                   {.id = "b", .zone = "z", .up = true, .free_bytes = MB}};
    assert_string_equal(one[cell_place(one, 2, 0)].id, "a");
    assert_string_equal(two[cell_place(two, 2, 0)].id, "a");
}

static const char *const uris[] = {"shop.localhost", NULL};
static const char *const user_env[] = {"A", "1", "B", "two", NULL};
static const char *const blob_urls[] = {"http://10.0.0.1:8090", "https://ctl-2.example:8091", NULL};
#define SAMPLE_DIGEST "sha256:00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff"

static struct cell_launch sample(void)
{
    return (struct cell_launch){.app_guid = "0b3a0c0e-1111-4222-8333-444455556666",
                                .app_name = "shop",
                                .process_type = "web",
                                .index = 2,
                                .instance_guid = "9b3a0c0e-1111-4222-8333-444455556666",
                                .droplet_guid = "7b3a0c0e-1111-4222-8333-444455556666",
                                .droplet_digest = SAMPLE_DIGEST,
                                .droplet_path = "/var/skiff/apps/x/droplets/y",
                                .blob_urls = blob_urls,
                                .command = "python3 app.py",
                                .memory_mb = 256,
                                .health = HEALTH_HTTP,
                                .health_endpoint = "/health",
                                .readiness = true,
                                .readiness_type = HEALTH_PORT,
                                .uris = uris,
                                .events_url = "http://10.0.0.1:8090/v1",
                                .events_token = "tok",
                                .user_env = user_env};
}

static void test_a_launch_reads_back_as_written(void **state)
{
    (void)state;
    struct cell_launch l = sample();
    json_t *j = cell_launch_to_json(&l);
    struct cell_launch_doc d;
    char err[256] = "";
    assert_int_equal(cell_launch_from_json(j, &d, err, sizeof err), 0);
    assert_string_equal(d.l.instance_guid, l.instance_guid);
    assert_string_equal(d.l.droplet_digest, SAMPLE_DIGEST);
    assert_string_equal(d.l.blob_urls[1], "https://ctl-2.example:8091");
    assert_null(d.l.blob_urls[2]);
    assert_int_equal(d.l.index, 2);
    assert_int_equal(d.l.health, HEALTH_HTTP);
    assert_true(d.l.readiness);
    assert_int_equal(d.l.readiness_type, HEALTH_PORT);
    assert_string_equal(d.l.uris[0], "shop.localhost");
    assert_null(d.l.uris[1]);
    assert_string_equal(d.l.user_env[3], "two");
    assert_false(d.l.log_rate_limited);
    cell_launch_doc_clear(&d);
    json_decref(j);
}

static void refused(const char *key, json_t *value, const char *words)
{
    struct cell_launch l = sample();
    json_t *j = cell_launch_to_json(&l);
    if (value)
        json_object_set_new(j, key, value);
    else
        json_object_del(j, key);
    struct cell_launch_doc d;
    char err[256] = "";
    assert_int_equal(cell_launch_from_json(j, &d, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, key));
    assert_non_null(strstr(err, words));
    json_decref(j);
}

static void test_a_hostile_launch_is_refused_with_the_field_named(void **state)
{
    (void)state;
    refused("instance_guid", json_string("../../etc"), "guid");
    refused("app_guid", NULL, "missing");
    refused("index", json_integer(-1), "whole number");
    refused("memory_mb", json_string("a lot"), "whole number");
    refused("health", json_string("none"), "port, http or process");
    refused("droplet_path", json_string("relative/x"), "absolute");
    refused("droplet_path", json_string("/a/../../etc"), "absolute");
    refused("process_type", json_string("web;rm"), "letters");
    refused("user_env", json_pack("[s]", "ODD"), "pairs");
    refused("uris", json_integer(3), "list");
    refused("command", json_string(""), "empty");
    refused("droplet_digest", json_string("sha256:00ff"), "64 lowercase hex");
    refused("droplet_digest",
            json_string("sha256:../../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            "64 lowercase hex");
    refused("blob_urls", json_pack("[s]", "file:///etc/shadow"), "http://");
    refused("blob_urls", json_pack("[s]", "http://a b"), "printable");
    refused("blob_urls",
            json_pack("[s,s,s,s,s,s,s,s,s]", "http://a", "http://a", "http://a", "http://a",
                      "http://a", "http://a", "http://a", "http://a", "http://a"),
            "at most 8");
    struct cell_launch_doc d;
    char err[128];
    json_t *one = json_integer(1);
    assert_int_equal(cell_launch_from_json(one, &d, err, sizeof err), -EINVAL);
    json_decref(one);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
}

static void test_a_droplet_not_here_names_its_digest(void **state)
{
    (void)state;
    struct cell_launch l = sample();
    l.blob_urls = NULL;
    l.droplet_path = "/nonexistent/droplet";
    char *path = NULL;
    char err[512] = "";
    assert_int_equal(cell_droplet_get(NULL, &l, NULL, NULL, &path, err, sizeof err), -ENOENT);
    assert_null(path);
    assert_non_null(strstr(err, "droplet " SAMPLE_DIGEST " not on this cell"));
    l.droplet_path = "/tmp";
    assert_int_equal(cell_droplet_get(NULL, &l, NULL, NULL, &path, err, sizeof err), 0);
    assert_string_equal(path, "/tmp");
    free(path);
}

struct heard {
    int calls, rc;
    char why[512];
};

static void heard_note(struct heard *h, int rc, const char *why)
{
    h->calls++;
    h->rc = rc;
    snprintf(h->why, sizeof h->why, "%s", why ? why : "");
}

static void on_droplet(void *ctx, int rc, const char *dir, const char *why)
{
    assert_true(rc < 0 ? dir == NULL && why != NULL : dir != NULL);
    heard_note(ctx, rc, why);
}

/* A listening socket of the test's on loopback: its port; nothing ever accepts on it. */
static int stranger_listen(int *fd)
{
    int port;
    *fd = blob_server_listen(SOCK_STREAM | SOCK_NONBLOCK, &port);
    return port;
}

#define CELL_ID "0123456789abcdef0123456789abcdef"
#define SECRET "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

/* A cell's home (a fresh folder of CELL_HOME_SIZE bytes' name) and the loop it runs on. */
#define CELL_HOME_SIZE 64
static void cell_home_open(char home[CELL_HOME_SIZE], uv_loop_t *loop)
{
    snprintf(home, CELL_HOME_SIZE, "/tmp/skiff-test-cellhome-XXXXXX");
    assert_non_null(mkdtemp(home));
    uv_loop_init(loop);
}

static void cell_home_close(const char *home, uv_loop_t *loop)
{
    uv_loop_close(loop);
    char cmd[CELL_HOME_SIZE + 16];
    snprintf(cmd, sizeof cmd, "rm -rf %s", home);
    assert_int_equal(system(cmd), 0);
}

/* The format of this cell's token number n. */
#define CELL_TOKEN_FORMAT "skiffc_" CELL_ID "%064d"

/* Puts this cell's token number n in the home's token file, the operator's (0600). */
static void cell_token_write(const char *home, int n)
{
    char path[CELL_HOME_SIZE + 16], text[200];
    snprintf(path, sizeof path, "%s/cell-token", home);
    snprintf(text, sizeof text, CELL_TOKEN_FORMAT "\n", n);
    write_file(path, text, 0600);
}

/* A controller of the test's (a blob server) that answers body, len bytes, to a request with
 * this cell's token number n and 401 to any other; its URL in url. */
static void controller_start(struct blob_server *ctl, const char *body, size_t len, int n,
                             char url[64])
{
    *ctl = (struct blob_server){.body = body, .len = len};
    snprintf(ctl->good, sizeof ctl->good, "Authorization: Bearer " CELL_TOKEN_FORMAT, n);
    blob_server_start(ctl, url);
}

/* A cell's droplets and layers in home, fetched from the controllers at urls (NULL: none). */
static void cell_fetchers_new(uv_loop_t *loop, const char *home, const char *const *urls,
                              struct cell_droplets **cd, struct cell_layers **cl)
{
    struct cell_droplets_config cfg = {.home = home, .cell_id = CELL_ID, .controller_urls = urls};
    assert_int_equal(cell_droplets_new(loop, &cfg, cd), 0);
    assert_int_equal(cell_layers_new(loop, home, 200000, *cd, NULL, cl), 0);
}

/* A cell with a home of its own: the controller's path is never read when the cell has
 * controllers to fetch from; the cache answers at once; the token file must be the operator's
 * (there, 0600, this cell's token); a fetch nobody answers fails once for both starts waiting;
 * the URL a start request names that is not one of the cell's controllers is never connected
 * to (whoever wrote the request would get the token). */
static void test_a_droplet_is_fetched_by_digest_with_the_token_file(void **state)
{
    (void)state;
    char home[CELL_HOME_SIZE];
    uv_loop_t loop;
    cell_home_open(home, &loop);
    struct cell_droplets *cd = NULL;
    static const char *const nobody[] = {"http://127.0.0.1:1/", NULL};
    struct cell_droplets_config cfg = {.home = home, .cell_id = CELL_ID, .controller_urls = nobody};
    assert_int_equal(cell_droplets_new(&loop, &cfg, &cd), 0);
    int stranger_fd;
    char stranger[64];
    snprintf(stranger, sizeof stranger, "http://127.0.0.1:%d", stranger_listen(&stranger_fd));
    const char *named[] = {stranger, NULL};
    struct cell_launch l = sample();
    l.droplet_path = "/tmp"; /* there, but not this cell's to read */
    l.blob_urls = named;
    char *dir = NULL, err[512] = "", path[512];
    struct heard h = {0};
    assert_int_equal(cell_droplet_get(cd, &l, on_droplet, &h, &dir, err, sizeof err), -ENOENT);
    assert_non_null(strstr(err, "cell-token"));
    assert_non_null(strstr(err, "skiff create-cell-token " CELL_ID));
    snprintf(path, sizeof path, "%s/cell-token", home);
    write_file(path, "skiffc_" CELL_ID SECRET "\n", 0644);
    assert_int_equal(cell_droplet_get(cd, &l, on_droplet, &h, &dir, err, sizeof err), -EACCES);
    assert_non_null(strstr(err, "chmod 600"));
    write_file(path, "a password\n", 0600);
    assert_int_equal(cell_droplet_get(cd, &l, on_droplet, &h, &dir, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "does not hold a cell's token"));
    /* the one token all cells shared once: refused with what to do instead */
    write_file(path, "skiffc_" SECRET "\n", 0600);
    assert_int_equal(cell_droplet_get(cd, &l, on_droplet, &h, &dir, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "once shared"));
    /* another cell's token: never sent from here */
    write_file(path, "skiffc_fedcba9876543210fedcba9876543210" SECRET "\n", 0600);
    assert_int_equal(cell_droplet_get(cd, &l, on_droplet, &h, &dir, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "cell fedcba9876543210fedcba9876543210's"));
    write_file(path, "skiffc_" CELL_ID SECRET "\n", 0600);
    assert_int_equal(cell_droplets_check_token(cd, err, sizeof err), 0);
    struct heard h2 = {0};
    assert_int_equal(cell_droplet_get(cd, &l, on_droplet, &h, &dir, err, sizeof err), -EINPROGRESS);
    assert_int_equal(cell_droplet_get(cd, &l, on_droplet, &h2, &dir, err, sizeof err),
                     -EINPROGRESS);
    assert_int_equal(h.calls, 0); /* never from inside the call */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(h.calls, 1);
    assert_int_equal(h2.calls, 1);
    assert_int_equal(h.rc, -EIO);
    assert_non_null(strstr(h.why, "127.0.0.1:1"));
    assert_null(strstr(h.why, stranger));
    /* the stranger the request named was never connected to */
    assert_int_equal(accept(stranger_fd, NULL, NULL), -1);
    assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
    close(stranger_fd);
    snprintf(path, sizeof path, "%s/blobs/droplets/%s", home, SAMPLE_DIGEST + 7);
    struct stat st;
    assert_int_equal(stat(path, &st), -1); /* nothing unpacked */
    /* a droplet fetched before: its folder, at once */
    assert_int_equal(mkdir(path, 0700), 0);
    assert_int_equal(cell_droplet_get(cd, &l, on_droplet, &h, &dir, err, sizeof err), 0);
    assert_string_equal(dir, path);
    free(dir);
    assert_int_equal(h.calls, 1);
    cell_droplets_free(cd);
    /* a cell with no controller fetches nothing, whatever the request names */
    cfg.controller_urls = NULL;
    assert_int_equal(cell_droplets_new(&loop, &cfg, &cd), 0);
    l.droplet_digest = "sha256:" SECRET;
    l.droplet_path = "/nonexistent/droplet";
    assert_int_equal(cell_droplet_get(cd, &l, on_droplet, &h, &dir, err, sizeof err), -ENOENT);
    assert_non_null(strstr(err, "--controller-url"));
    cell_droplets_free(cd);
    cell_home_close(home, &loop);
}

/* The sha256: digest of len bytes. */
static void digest_of(const char *body, size_t len, char digest[BLOB_DIGEST_LEN + 1])
{
    unsigned char sum[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(sum, (const unsigned char *)body, len);
    snprintf(digest, BLOB_DIGEST_LEN + 1, "sha256:");
    sodium_bin2hex(digest + 7, BLOB_DIGEST_LEN + 1 - 7, sum, sizeof sum);
}

/* A droplet's blob (a folder with app/hello.txt) made under home: its bytes. */
static char *droplet_blob(const char *home, size_t *len)
{
    char path[600], tmp[600];
    snprintf(path, sizeof path, "%s/src/app", home);
    assert_int_equal(mkdir_p(path, 0700), 0);
    snprintf(path, sizeof path, "%s/src/app/hello.txt", home);
    write_file(path, "hello\n", 0644);
    snprintf(path, sizeof path, "%s/src", home);
    snprintf(tmp, sizeof tmp, "%s", home);
    char *tar = NULL;
    assert_int_equal(blob_droplet_pack(path, tmp, &tar), 0);
    char *body = NULL;
    assert_int_equal(file_read(tar, &body, len), 0);
    unlink(tar);
    free(tar);
    return body;
}

/* A token rotated while a fetch is under way: the controller refuses the one the fetch began
 * with, the cell reads its file again, finds the new one and fetches with it, no restart. */
static void test_a_token_refused_is_read_again_and_the_new_one_used(void **state)
{
    (void)state;
    char home[CELL_HOME_SIZE];
    uv_loop_t loop;
    cell_home_open(home, &loop);
    char path[600];
    size_t len = 0;
    char *body = droplet_blob(home, &len);
    char digest[BLOB_DIGEST_LEN + 1];
    digest_of(body, len, digest);

    /* the controller: 401 unless the request carries token 2 */
    struct blob_server ctl;
    char url[64];
    controller_start(&ctl, body, len, 2, url);
    const char *urls[] = {url, NULL};

    struct cell_droplets *cd = NULL;
    struct cell_droplets_config cfg = {.home = home, .cell_id = CELL_ID, .controller_urls = urls};
    assert_int_equal(cell_droplets_new(&loop, &cfg, &cd), 0);
    cell_token_write(home, 1);
    struct cell_launch l = sample();
    l.droplet_digest = digest;
    l.blob_urls = urls;
    char *dir = NULL, err[512] = "";
    struct heard h = {0};
    assert_int_equal(cell_droplet_get(cd, &l, on_droplet, &h, &dir, err, sizeof err), -EINPROGRESS);
    /* the fetch took token 1; the operator puts token 2 in place meanwhile */
    cell_token_write(home, 2);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(h.calls, 1);
    assert_int_equal(h.rc, 0);
    assert_int_equal(ctl.refused, 1);
    assert_int_equal(ctl.requests, 2);
    snprintf(path, sizeof path, "%s/blobs/droplets/%s/app/hello.txt", home, digest + 7);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    /* a token the controller refuses that has not changed: refused once, not asked again */
    cell_token_write(home, 3);
    l.droplet_digest = "sha256:" SECRET;
    struct heard h2 = {0};
    assert_int_equal(cell_droplet_get(cd, &l, on_droplet, &h2, &dir, err, sizeof err),
                     -EINPROGRESS);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(h2.rc, -EACCES);
    assert_non_null(strstr(h2.why, "401"));
    assert_int_equal(ctl.requests, 3);
    cell_droplets_free(cd);
    blob_server_stop(&ctl);
    free(body);
    cell_home_close(home, &loop);
}

static void on_layers(void *ctx, int rc, const char *why)
{
    heard_note(ctx, rc, why);
}

#define LAYER_A "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define LAYER_B "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

/* An image droplet's layers on a cell: those here start it at once; one missing is fetched
 * from the cell's own controllers (once for two starts) or, on a cell with none, refused
 * naming it; a record whose
 * layers are no digests (a path out of the store) or too many is refused before anything is
 * looked up; a collection is put off while a fetch is in flight, then removes what no
 * instance mounts. */
static void test_an_image_droplets_layers_are_found_fetched_or_refused(void **state)
{
    (void)state;
    char home[CELL_HOME_SIZE];
    uv_loop_t loop;
    cell_home_open(home, &loop);
    struct cell_droplets *cd = NULL;
    struct cell_layers *cl = NULL;
    cell_fetchers_new(&loop, home, NULL, &cd, &cl);
    char path[600], drop[512], err[700] = "";
    cell_token_write(home, 1);
    snprintf(drop, sizeof drop, "%s/droplet", home);
    assert_int_equal(mkdir(drop, 0700), 0);
    snprintf(path, sizeof path, "%s/image.json", drop);
    write_file(path, "{\"layers\":[\"" LAYER_A "\",\"" LAYER_B "\"]}", 0600);
    char a_dir[600], b_dir[600];
    snprintf(a_dir, sizeof a_dir, "%s/images/layers/sha256/%s", home, LAYER_A + 7);
    snprintf(b_dir, sizeof b_dir, "%s/images/layers/sha256/%s", home, LAYER_B + 7);
    assert_int_equal(mkdir(a_dir, 0755), 0);
    struct heard h = {0}, h2 = {0};
    assert_int_equal(cell_layers_get(cl, drop, on_layers, &h, err, sizeof err), -ENOENT);
    assert_non_null(strstr(err, "layer " LAYER_B " is not on this cell"));
    assert_non_null(strstr(err, "no controller to fetch it from"));
    assert_int_equal(mkdir(b_dir, 0755), 0);
    assert_int_equal(cell_layers_get(cl, drop, on_layers, &h, err, sizeof err), 0);
    assert_int_equal(h.calls, 0);
    cell_layers_free(cl);
    cell_droplets_free(cd);

    /* B missing, the cell's one controller answers nobody: one fetch for both starts */
    assert_int_equal(rmdir(b_dir), 0);
    static const char *const nobody[] = {"http://127.0.0.1:1", NULL};
    cell_fetchers_new(&loop, home, nobody, &cd, &cl);
    assert_int_equal(cell_layers_get(cl, drop, on_layers, &h, err, sizeof err), -EINPROGRESS);
    assert_int_equal(cell_layers_get(cl, drop, on_layers, &h2, err, sizeof err), -EINPROGRESS);
    cell_layers_collect(cl, 0); /* put off: a fetch is in flight */
    struct stat st;
    assert_int_equal(stat(a_dir, &st), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(h.calls, 1);
    assert_int_equal(h2.calls, 1);
    assert_int_equal(h.rc, -EIO);
    assert_non_null(strstr(h.why, "layer " LAYER_B));
    assert_int_equal(stat(b_dir, &st), -1); /* nothing unpacked */
    /* the collection ran once the fetch ended: no instance mounts A */
    assert_int_equal(stat(a_dir, &st), -1);
    assert_false(cell_layers_waiting(cl));

    /* hostile records */
    const char *hostile[] = {
        "{\"layers\":[\"sha256:../../../../etc\"]}",
        "{\"layers\":[\"../../blobs/droplets\"]}",
        "{\"layers\":\"" LAYER_A "\"}",
    };
    for (size_t i = 0; i < sizeof hostile / sizeof *hostile; i++) {
        write_file(path, hostile[i], 0600);
        assert_int_equal(cell_layers_get(cl, drop, on_layers, &h, err, sizeof err), -EBADMSG);
        assert_non_null(strstr(err, "image record is refused"));
    }
    FILE *f = fopen(path, "w");
    fputs("{\"layers\":[", f);
    for (int i = 0; i < 3000; i++)
        fprintf(f, "%s\"sha256:%064x\"", i ? "," : "", i);
    fputs("]}", f);
    fclose(f);
    assert_int_equal(cell_layers_get(cl, drop, on_layers, &h, err, sizeof err), -EBADMSG);
    assert_non_null(strstr(err, "more than 127 layers"));
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(h.calls, 1); /* no fetch began */
    cell_layers_free(cl);
    cell_droplets_free(cd);
    cell_home_close(home, &loop);
}

/* A controller that accepts the connection and never answers (a listening socket nobody
 * reads: the kernel accepts for it) is left once nothing came for the stall bound, and the
 * next controller gives the droplet, long before the transfer's 5 minutes. */
static void test_a_silent_controller_is_left_for_the_next(void **state)
{
    (void)state;
    char home[CELL_HOME_SIZE];
    uv_loop_t loop;
    cell_home_open(home, &loop);
    size_t len = 0;
    char *body = droplet_blob(home, &len);
    char digest[BLOB_DIGEST_LEN + 1];
    digest_of(body, len, digest);
    struct blob_server ctl;
    char url[64], silent[64];
    controller_start(&ctl, body, len, 1, url);
    int silent_fd;
    snprintf(silent, sizeof silent, "http://127.0.0.1:%d", stranger_listen(&silent_fd));
    const char *urls[] = {silent, url, NULL};
    struct cell_droplets *cd = NULL;
    struct cell_droplets_config cfg = {
        .home = home, .cell_id = CELL_ID, .controller_urls = urls, .fetch_stall_ms = 1000};
    assert_int_equal(cell_droplets_new(&loop, &cfg, &cd), 0);
    cell_token_write(home, 1);
    struct cell_launch l = sample();
    l.droplet_digest = digest;
    l.blob_urls = NULL;
    char *dir = NULL, err[512] = "";
    struct heard h = {0};
    int64_t began = time_mono_ms();
    assert_int_equal(cell_droplet_get(cd, &l, on_droplet, &h, &dir, err, sizeof err), -EINPROGRESS);
    uv_run(&loop, UV_RUN_DEFAULT);
    int64_t took = time_mono_ms() - began;
    assert_int_equal(h.calls, 1);
    assert_int_equal(h.rc, 0);
    assert_int_equal(ctl.requests, 1);
    /* the silent one was connected to, and given up after about the bound (libcurl looks at
     * its progress once a second) */
    int held = accept(silent_fd, NULL, NULL);
    assert_true(held >= 0);
    close(held);
    assert_true(took >= 1000);
    assert_true(took < 60000);
    char path[600];
    snprintf(path, sizeof path, "%s/blobs/droplets/%s/app/hello.txt", home, digest + 7);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    /* the silent one alone: the fetch fails naming it and the bound */
    l.droplet_digest = "sha256:" SECRET;
    const char *alone[] = {silent, NULL};
    cell_droplets_free(cd);
    cfg.controller_urls = alone;
    assert_int_equal(cell_droplets_new(&loop, &cfg, &cd), 0);
    struct heard h2 = {0};
    assert_int_equal(cell_droplet_get(cd, &l, on_droplet, &h2, &dir, err, sizeof err),
                     -EINPROGRESS);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(h2.rc, -EIO);
    assert_non_null(strstr(h2.why, "sent nothing for 1000 ms"));
    assert_non_null(strstr(h2.why, silent));
    cell_droplets_free(cd);
    close(silent_fd);
    blob_server_stop(&ctl);
    free(body);
    cell_home_close(home, &loop);
}

/* A layer's fetch refused because the token was rotated meanwhile: the token file is read
 * again and the layer fetched with the new one (as a droplet's is). */
static void test_a_refused_layer_fetch_reads_a_rotated_token(void **state)
{
    (void)state;
    char home[CELL_HOME_SIZE];
    uv_loop_t loop;
    cell_home_open(home, &loop);
    char path[600], cmd[900];
    snprintf(path, sizeof path, "%s/layer", home);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(cmd, sizeof cmd,
             "echo layered > %s/layer/hello.txt && tar -C %s/layer -cf %s/layer.tar hello.txt",
             home, home, home);
    assert_int_equal(system(cmd), 0);
    snprintf(path, sizeof path, "%s/layer.tar", home);
    char *body = NULL;
    size_t len = 0;
    assert_int_equal(file_read(path, &body, &len), 0);
    char digest[BLOB_DIGEST_LEN + 1];
    digest_of(body, len, digest);
    struct blob_server ctl;
    char url[64];
    controller_start(&ctl, body, len, 2, url);
    const char *urls[] = {url, NULL};
    struct cell_droplets *cd = NULL;
    struct cell_layers *cl = NULL;
    cell_fetchers_new(&loop, home, urls, &cd, &cl);
    char drop[512], record[800];
    cell_token_write(home, 1);
    snprintf(drop, sizeof drop, "%s/droplet", home);
    assert_int_equal(mkdir(drop, 0700), 0);
    snprintf(path, sizeof path, "%s/image.json", drop);
    snprintf(record, sizeof record, "{\"layers\":[\"%s\"]}", digest);
    write_file(path, record, 0600);
    struct heard h = {0};
    char err[700] = "";
    assert_int_equal(cell_layers_get(cl, drop, on_layers, &h, err, sizeof err), -EINPROGRESS);
    cell_token_write(home, 2); /* rotated while the fetch runs */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(h.calls, 1);
    assert_int_equal(h.rc, 0);
    assert_int_equal(ctl.refused, 1);
    assert_int_equal(ctl.requests, 2);
    snprintf(path, sizeof path, "%s/images/layers/sha256/%s/hello.txt", home, digest + 7);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    cell_layers_free(cl);
    cell_droplets_free(cd);
    blob_server_stop(&ctl);
    free(body);
    cell_home_close(home, &loop);
}

static char *held_dir;

static char **held_in_use(void *ctx)
{
    (void)ctx;
    char **v = calloc(2, sizeof *v);
    v[0] = strdup(held_dir); /* an instance's app_dir in droplet 1 */
    return v;
}

/* A droplet folder HOME/blobs/droplets/HEX of about 100 KiB, last used at `at` (s). */
static void cached_droplet(const char *home, char c, time_t at)
{
    char dir[600], path[700];
    snprintf(dir, sizeof dir, "%s/blobs/droplets/%064d", home, 0);
    memset(dir + strlen(dir) - 64, c, 64);
    snprintf(path, sizeof path, "%s/app", dir);
    assert_int_equal(mkdir_p(path, 0700), 0);
    snprintf(path, sizeof path, "%s/app/data", dir);
    char *data = calloc(1, 100 * 1024);
    memset(data, 'x', 100 * 1024 - 1);
    write_file(path, data, 0600);
    free(data);
    struct timespec ts[2] = {{.tv_sec = at}, {.tv_sec = at}};
    assert_int_equal(utimensat(AT_FDCWD, dir, ts, 0), 0);
}

static bool cached_here(const char *home, char c)
{
    char dir[600];
    snprintf(dir, sizeof dir, "%s/blobs/droplets/%064d", home, 0);
    memset(dir + strlen(dir) - 64, c, 64);
    struct stat st;
    return stat(dir, &st) == 0;
}

/* The fetched droplets are kept within the bound: the least recently used goes first (a start
 * from a cached droplet makes it the most recent), never one an instance uses, even when the
 * rest stays over the bound; nothing is left aside. */
static void test_the_droplet_cache_keeps_its_bound_and_what_is_in_use(void **state)
{
    (void)state;
    char home[CELL_HOME_SIZE];
    uv_loop_t loop;
    cell_home_open(home, &loop);
    static const char *const nobody[] = {"http://127.0.0.1:1", NULL};
    struct cell_droplets *cd = NULL;
    struct cell_droplets_config cfg = {.home = home,
                                       .cell_id = CELL_ID,
                                       .controller_urls = nobody,
                                       .cache_bytes = 250 * 1024,
                                       .in_use = held_in_use};
    assert_int_equal(cell_droplets_new(&loop, &cfg, &cd), 0);
    cached_droplet(home, '1', 1000); /* the oldest, in use */
    cached_droplet(home, '2', 2000);
    cached_droplet(home, '3', 3000);
    char held[700];
    snprintf(held, sizeof held, "%s/blobs/droplets/%064d", home, 0);
    memset(held + strlen(held) - 64, '1', 64);
    strcat(held, "/app");
    held_dir = held;
    /* a start from droplet 2, cached: it is the most recently used now */
    struct cell_launch l = sample();
    char digest[80] = "sha256:";
    memset(digest + 7, '2', 64);
    digest[71] = '\0';
    l.droplet_digest = digest;
    char *dir = NULL, err[512];
    assert_int_equal(cell_droplet_get(cd, &l, on_droplet, NULL, &dir, err, sizeof err), 0);
    free(dir);
    cell_droplets_collect(cd);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(cached_here(home, '1'));
    assert_true(cached_here(home, '2'));
    assert_false(cached_here(home, '3'));
    /* a bound below what is in use: all but the droplet in use go */
    cell_droplets_free(cd);
    cfg.cache_bytes = 1;
    assert_int_equal(cell_droplets_new(&loop, &cfg, &cd), 0);
    cell_droplets_collect(cd);
    cell_droplets_collect(cd); /* asked again meanwhile: runs once more after */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(cached_here(home, '1'));
    assert_false(cached_here(home, '2'));
    char cmd[700];
    snprintf(cmd, sizeof cmd, "ls -A %s/blobs/droplets | grep -q gone", home);
    assert_int_not_equal(system(cmd), 0); /* nothing left aside */
    cell_droplets_free(cd);
    cell_home_close(home, &loop);
}

/* What a skiffd --role all brought from the blob store (collect_unused, no bound): a droplet
 * unused for longer than the grace goes, one used within it stays, and one an instance runs
 * from stays however long ago it was last started. */
static void test_unused_droplets_go_after_the_grace_never_one_in_use(void **state)
{
    (void)state;
    char home[] = "/tmp/skiff-test-cellunused-XXXXXX";
    assert_non_null(mkdtemp(home));
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct cell_droplets *cd = NULL;
    struct cell_droplets_config cfg = {.home = home,
                                       .cell_id = CELL_ID,
                                       .collect_unused = true,
                                       .unused_grace_ms = 60000,
                                       .in_use = held_in_use};
    assert_int_equal(cell_droplets_new(&loop, &cfg, &cd), 0);
    time_t now = time(NULL);
    cached_droplet(home, '1', 1000);     /* long unused, but an instance runs from it */
    cached_droplet(home, '2', 2000);     /* long unused */
    cached_droplet(home, '3', now - 10); /* used 10 s ago: within the grace */
    char held[700];
    snprintf(held, sizeof held, "%s/blobs/droplets/%064d", home, 0);
    memset(held + strlen(held) - 64, '1', 64);
    strcat(held, "/app");
    held_dir = held;
    cell_droplets_collect(cd);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(cached_here(home, '1'));
    assert_false(cached_here(home, '2'));
    assert_true(cached_here(home, '3'));
    cell_droplets_free(cd);
    /* without collect_unused and without a bound, nothing is collected */
    struct cell_droplets_config keep = {.home = home, .cell_id = CELL_ID};
    assert_int_equal(cell_droplets_new(&loop, &keep, &cd), 0);
    cached_droplet(home, '4', 1000);
    cell_droplets_collect(cd);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(cached_here(home, '4'));
    cell_droplets_free(cd);
    uv_loop_close(&loop);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", home);
    assert_int_equal(system(cmd), 0);
}

/* With a grace, a layer no instance mounts stays after the collection is asked for, until the
 * grace has passed; then it goes. */
static void test_unused_layers_stay_for_the_grace(void **state)
{
    (void)state;
    char home[CELL_HOME_SIZE];
    uv_loop_t loop;
    cell_home_open(home, &loop);
    struct cell_droplets *cd = NULL;
    struct cell_layers *cl = NULL;
    cell_fetchers_new(&loop, home, NULL, &cd, &cl);
    cell_layers_set_grace(cl, 300);
    char a_dir[600];
    snprintf(a_dir, sizeof a_dir, "%s/images/layers/sha256/%s", home, LAYER_A + 7);
    assert_int_equal(mkdir(a_dir, 0755), 0);
    int64_t asked = time_mono_ms();
    cell_layers_collect(cl, 0); /* its last instance ended */
    uv_run(&loop, UV_RUN_DEFAULT);
    struct stat st;
    assert_int_equal(stat(a_dir, &st), 0);
    assert_false(cell_layers_waiting(cl));
    while (!cell_layers_waiting(cl)) { /* what the cell's heartbeat asks */
        assert_true(time_mono_ms() - asked < 10000);
        usleep(20 * 1000);
    }
    assert_true(time_mono_ms() - asked >= 300);
    assert_int_equal(stat(a_dir, &st), 0);
    cell_layers_collect(cl, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(stat(a_dir, &st), -1);
    assert_false(cell_layers_waiting(cl));
    cell_layers_free(cl);
    cell_droplets_free(cd);
    cell_home_close(home, &loop);
}

/* A --role all skiffd's layers come from the blob store it shares (cell_layers_read_from), not
 * from controllers: one missing is read (once for two starts), verified and unpacked, its blob
 * not kept; one the store lacks, or whose stored content does not match its digest, is refused
 * naming the layer, with nothing unpacked. */
static void test_layers_are_read_from_the_blob_store_when_the_cell_reads_it(void **state)
{
    (void)state;
    char home[CELL_HOME_SIZE];
    uv_loop_t loop;
    cell_home_open(home, &loop);
    char cmd[1400];
    /* a layer: a gzipped tar of one file, put into the blob store (files under home/store) */
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/src/srv && echo from-the-store > %s/src/srv/greeting && "
             "tar -czf %s/layer.tgz -C %s/src srv",
             home, home, home, home);
    assert_int_equal(system(cmd), 0);
    char store_home[600], tgz[600], layer[BLOB_DIGEST_LEN + 1];
    snprintf(store_home, sizeof store_home, "%s/store", home);
    assert_int_equal(mkdir(store_home, 0700), 0);
    struct blob_store *bs = NULL;
    assert_int_equal(blob_store_open("skiff.db", store_home, &bs), 0);
    snprintf(tgz, sizeof tgz, "%s/layer.tgz", home);
    assert_int_equal(blob_put_file(bs, tgz, layer, NULL), 0);

    struct cell_layers *cl = NULL;
    assert_int_equal(cell_layers_new(&loop, home, 200000, NULL, NULL, &cl), 0);
    cell_layers_read_from(cl, bs);
    char path[700], drop[600], err[700] = "", text[300];
    snprintf(drop, sizeof drop, "%s/droplet", home);
    assert_int_equal(mkdir(drop, 0700), 0);
    snprintf(path, sizeof path, "%s/image.json", drop);
    snprintf(text, sizeof text, "{\"layers\":[\"%s\"]}", layer);
    write_file(path, text, 0600);
    struct heard h = {0}, h2 = {0};
    assert_int_equal(cell_layers_get(cl, drop, on_layers, &h, err, sizeof err), -EINPROGRESS);
    assert_int_equal(cell_layers_get(cl, drop, on_layers, &h2, err, sizeof err), -EINPROGRESS);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(h.calls, 1);
    assert_int_equal(h2.calls, 1);
    assert_int_equal(h.rc, 0);
    assert_int_equal(h2.rc, 0);
    struct stat st;
    snprintf(path, sizeof path, "%s/images/layers/sha256/%s/srv/greeting", home, layer + 7);
    assert_int_equal(stat(path, &st), 0);
    snprintf(path, sizeof path, "%s/images/blobs/sha256/%s", home, layer + 7);
    assert_int_equal(stat(path, &st), -1); /* the folder is what instances mount */
    /* here now: found at once */
    assert_int_equal(cell_layers_get(cl, drop, on_layers, &h, err, sizeof err), 0);

    /* a layer the store lacks */
    snprintf(path, sizeof path, "%s/image.json", drop);
    write_file(path, "{\"layers\":[\"" LAYER_B "\"]}", 0600);
    struct heard h3 = {0};
    assert_int_equal(cell_layers_get(cl, drop, on_layers, &h3, err, sizeof err), -EINPROGRESS);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(h3.calls, 1);
    assert_int_equal(h3.rc, -ENOENT);
    assert_non_null(strstr(h3.why, "layer " LAYER_B ": it is not in the blob store"));

    /* the stored content changed under its name: refused, nothing unpacked */
    snprintf(cmd, sizeof cmd, "rm -rf %s/images/layers/sha256/%s", home, layer + 7);
    assert_int_equal(system(cmd), 0);
    snprintf(path, sizeof path, "%s/blobs/sha256/%s", store_home, layer + 7);
    assert_int_equal(chmod(path, 0600), 0);
    write_file(path, "forged", 0600);
    snprintf(path, sizeof path, "%s/image.json", drop);
    write_file(path, text, 0600);
    struct heard h4 = {0};
    assert_int_equal(cell_layers_get(cl, drop, on_layers, &h4, err, sizeof err), -EINPROGRESS);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(h4.rc, -EBADMSG);
    assert_non_null(strstr(h4.why, layer));
    assert_non_null(strstr(h4.why, "does not match its digest"));
    snprintf(path, sizeof path, "%s/images/layers/sha256/%s", home, layer + 7);
    assert_int_equal(stat(path, &st), -1);

    cell_layers_free(cl);
    blob_store_close(bs);
    cell_home_close(home, &loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_instances_go_to_two_cells),
        cmocka_unit_test(test_zones_are_spread_before_memory),
        cmocka_unit_test(test_never_two_on_one_cell_while_another_has_room_and_none),
        cmocka_unit_test(test_cells_lost_or_full_are_not_candidates),
        cmocka_unit_test(test_ties_do_not_depend_on_the_order),
        cmocka_unit_test(test_a_launch_reads_back_as_written),
        cmocka_unit_test(test_a_hostile_launch_is_refused_with_the_field_named),
        cmocka_unit_test(test_a_droplet_not_here_names_its_digest),
        cmocka_unit_test(test_a_droplet_is_fetched_by_digest_with_the_token_file),
        cmocka_unit_test(test_a_token_refused_is_read_again_and_the_new_one_used),
        cmocka_unit_test(test_an_image_droplets_layers_are_found_fetched_or_refused),
        cmocka_unit_test(test_a_silent_controller_is_left_for_the_next),
        cmocka_unit_test(test_a_refused_layer_fetch_reads_a_rotated_token),
        cmocka_unit_test(test_the_droplet_cache_keeps_its_bound_and_what_is_in_use),
        cmocka_unit_test(test_unused_droplets_go_after_the_grace_never_one_in_use),
        cmocka_unit_test(test_unused_layers_stay_for_the_grace),
        cmocka_unit_test(test_layers_are_read_from_the_blob_store_when_the_cell_reads_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
