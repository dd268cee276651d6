/* cell: the placement rule, and the start request read back as it was written, with what a
 * hostile sender writes refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <string.h>

#include <cmocka.h>

#include "cell/cell.h"

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
#define SAMPLE_DIGEST "sha256:00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff"

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

static void test_a_droplet_not_here_names_its_digest(void **state)
{
    (void)state;
    char *path = NULL;
    char err[512] = "";
    assert_int_equal(
        cell_droplet_path("/nonexistent/droplet", "sha256:abcd", &path, err, sizeof err), -ENOENT);
    assert_null(path);
    assert_non_null(strstr(err, "droplet sha256:abcd not on this cell"));
    assert_int_equal(cell_droplet_path("/tmp", "sha256:abcd", &path, err, sizeof err), 0);
    assert_string_equal(path, "/tmp");
    free(path);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
}

static void test_a_droplets_digest_follows_its_content(void **state)
{
    (void)state;
    char dir[] = "/tmp/skiff-test-digest-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256], err[256] = "", one[CELL_DIGEST_LEN], two[CELL_DIGEST_LEN];
    snprintf(path, sizeof path, "%s/app", dir);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/app/a.py", dir);
    write_file(path, "print(1)\n", 0644);
    assert_int_equal(cell_droplet_digest(dir, one, err, sizeof err), 0);
    assert_int_equal(strlen(one), 7 + 64);
    assert_memory_equal(one, "sha256:", 7);
    assert_int_equal(cell_droplet_digest(dir, two, err, sizeof err), 0);
    assert_string_equal(one, two); /* the same tree, the same digest */
    write_file(path, "print(2)\n", 0644);
    assert_int_equal(cell_droplet_digest(dir, two, err, sizeof err), 0);
    assert_string_not_equal(one, two); /* a byte changed */
    write_file(path, "print(1)\n", 0755);
    assert_int_equal(cell_droplet_digest(dir, two, err, sizeof err), 0);
    assert_string_not_equal(one, two); /* a mode changed */
    write_file(path, "print(1)\n", 0644);
    assert_int_equal(cell_droplet_digest(dir, two, err, sizeof err), 0);
    assert_string_equal(one, two);
    unlink(path);
    snprintf(path, sizeof path, "%s/app", dir);
    rmdir(path);
    rmdir(dir);
    assert_true(cell_droplet_digest(dir, two, err, sizeof err) < 0);
    assert_non_null(strstr(err, "cannot read droplet"));
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
        cmocka_unit_test(test_a_droplets_digest_follows_its_content),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
