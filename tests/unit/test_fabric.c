/* Unit tests for the fabric: durability callbacks, group commit, reads, cursors,
 * subscriptions, segments and retention, and recovery from a write torn at any byte.
 *
 * The contract tests run twice: on the embedded log, then on NATS JetStream against a
 * nats-server (-js, a free loopback port, a temporary store) that each test starts and stops
 * itself. What only the embedded log promises (group commit rounds, files, recovery of torn
 * writes, first_offset at once) is checked on the embedded log only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <arpa/inet.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "fabric/fabric.h"
#include "fabric/fabric_internal.h"

struct fixture {
    uv_loop_t loop;
    char dir[64];
    struct fabric *f;
    pid_t nats;        /* the nats-server of a JetStream run, else 0 */
    char nats_url[64]; /* "" on the embedded log */
};

/* The backend of the group being run: false embedded, true JetStream. */
static bool on_jetstream;

static const char *backend_url(struct fixture *fx)
{
    return fx->nats_url[0] ? fx->nats_url : NULL;
}

static struct fabric *open_fabric(struct fixture *fx, int64_t segment_bytes)
{
    struct fabric_config cfg = {
        .dir = fx->dir, .segment_bytes = segment_bytes, .nats_url = backend_url(fx)};
    char err[256] = "";
    struct fabric *f = NULL;
    int rc = fabric_open(&fx->loop, &cfg, &f, err, sizeof(err));
    if (rc < 0)
        fail_msg("fabric_open: %s", err);
    return f;
}

static void on_closed(void *arg)
{
    *(bool *)arg = true;
}

static void close_fabric(struct fixture *fx)
{
    bool closed = false;
    fabric_close(fx->f, on_closed, &closed);
    while (!closed)
        uv_run(&fx->loop, UV_RUN_ONCE);
    fx->f = NULL;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        fail_msg("no free loopback port");
    close(fd);
    return ntohs(a.sin_port);
}

static bool port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

/* Starts nats-server with JetStream on a free port, its store in the fixture's folder, and
 * waits (10 s at most) until it takes connections. */
static void nats_start(struct fixture *fx, int port)
{
    char store[128], portstr[16];
    snprintf(store, sizeof(store), "%s/nats", fx->dir);
    snprintf(portstr, sizeof(portstr), "%d", port);
    fx->nats = fork();
    if (fx->nats == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execlp("nats-server", "nats-server", "-js", "-a", "127.0.0.1", "-p", portstr, "-sd", store,
               (char *)NULL);
        _exit(127);
    }
    snprintf(fx->nats_url, sizeof(fx->nats_url), "nats://127.0.0.1:%d", port);
    for (int i = 0; i < 1000 && !port_open(port); i++)
        usleep(10000);
    if (!port_open(port))
        fail_msg("nats-server did not listen on port %d within 10 s", port);
}

static void nats_stop(struct fixture *fx)
{
    if (fx->nats > 0) {
        kill(fx->nats, SIGKILL);
        waitpid(fx->nats, NULL, 0);
        fx->nats = 0;
    }
}

static int setup(void **state)
{
    struct fixture *fx = xcalloc(1, sizeof(*fx));
    uv_loop_init(&fx->loop);
    snprintf(fx->dir, sizeof(fx->dir), "/tmp/skiff-fabric-XXXXXX");
    if (!mkdtemp(fx->dir))
        return -1;
    if (on_jetstream)
        nats_start(fx, free_port());
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    if (fx->f)
        close_fabric(fx);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    nats_stop(fx);
    rm_rf(fx->dir);
    free(fx);
    return 0;
}

struct acks {
    int calls;
    int status;
    uint64_t last_first;
    size_t last_count;
};

static void on_append(void *arg, int status, uint64_t first, size_t count)
{
    struct acks *a = arg;
    a->calls++;
    if (status < 0)
        a->status = status;
    a->last_first = first;
    a->last_count = count;
}

static void run_until(struct fixture *fx, const int *counter, int target)
{
    while (*counter < target)
        uv_run(&fx->loop, UV_RUN_ONCE);
}

/* Runs the loop until *counter reaches target: 10 s at most. */
#define wait_until(fx, counter, target) wait_until_(fx, counter, target, #counter)
static void wait_until_(struct fixture *fx, const int *counter, int target, const char *what)
{
    int64_t deadline = time_now_ms() + 10000;
    while (*counter < target && time_now_ms() < deadline) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        if (*counter < target)
            usleep(1000);
    }
    if (*counter < target)
        fail_msg("waited 10 s for %d calls of %s, got %d", target, what, *counter);
}

/* Runs the loop until the file at path is at least min bytes long (10 s at most); its size. */
static off_t wait_file_size(struct fixture *fx, const char *path, off_t min)
{
    int64_t deadline = time_now_ms() + 10000;
    struct stat st = {0};
    while ((stat(path, &st) < 0 || st.st_size < min) && time_now_ms() < deadline) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    if (st.st_size < min)
        fail_msg("waited 10 s for %s to reach %lld bytes, it has %lld", path, (long long)min,
                 (long long)st.st_size);
    return st.st_size;
}

/* fabric_read, with the loop run while JetStream fetches the records off it (-EAGAIN): 10 s
 * at most. */
static int read_now(struct fixture *fx, const char *topic, uint64_t from, size_t max_records,
                    size_t max_bytes, struct fabric_batch *out)
{
    int64_t deadline = time_now_ms() + 10000;
    int rc;
    while ((rc = fabric_read(fx->f, topic, from, max_records, max_bytes, out)) == -EAGAIN &&
           time_now_ms() < deadline) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    return rc;
}

struct seek_result {
    int calls, status;
    uint64_t offset;
};

static void on_seek(void *arg, int status, uint64_t offset)
{
    struct seek_result *r = arg;
    r->calls++;
    r->status = status;
    r->offset = offset;
}

/* fabric_seek_time, its callback waited for (10 s at most): its status, or the call's error. */
static int seek_now(struct fixture *fx, const char *topic, int64_t time_ms, uint64_t *offset)
{
    struct seek_result r = {0};
    int rc = fabric_seek_time(fx->f, topic, time_ms, on_seek, &r);
    if (rc < 0) {
        assert_int_equal(r.calls, 0); /* an error returned never also calls back */
        return rc;
    }
    int64_t deadline = time_now_ms() + 10000;
    while (r.calls == 0 && time_now_ms() < deadline) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    assert_int_equal(r.calls, 1);
    *offset = r.offset;
    return r.status;
}

static void append_text(struct fixture *fx, const char *topic, const char *text, struct acks *a)
{
    struct fabric_blob b = {text, strlen(text)};
    assert_int_equal(fabric_append(fx->f, topic, &b, 1, on_append, a, NULL), 0);
}

static void test_append_read_reopen(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 0);
    struct acks a = {0};
    uint64_t off = 99;
    struct fabric_blob one = {"hello", 5};
    assert_int_equal(fabric_append(fx->f, "orders", &one, 1, on_append, &a, &off), 0);
    /* the callback never runs inside the call */
    assert_int_equal(a.calls, 0);
    struct fabric_batch b;
    if (!on_jetstream) {
        /* known at once, and not durable yet: readers do not see it (JetStream numbers a
         * record when it stores it, and a reader may see it as soon as it is stored) */
        assert_int_equal(off, 0);
        assert_int_equal(read_now(fx, "orders", 0, 10, 1 << 20, &b), 0);
        assert_int_equal(b.count, 0);
        fabric_batch_free(&b);
    }
    run_until(fx, &a.calls, 1);
    assert_int_equal(a.status, 0);
    assert_int_equal(a.last_first, 0);

    struct fabric_blob many[3] = {{"a", 1}, {"bb", 2}, {"", 0}};
    assert_int_equal(fabric_append(fx->f, "orders", many, 3, on_append, &a, &off), 0);
    if (!on_jetstream)
        assert_int_equal(off, 1);
    run_until(fx, &a.calls, 2);
    assert_int_equal(a.last_first, 1);
    assert_int_equal(a.last_count, 3);

    assert_int_equal(read_now(fx, "orders", 0, 10, 1 << 20, &b), 0);
    assert_int_equal(b.count, 4);
    assert_memory_equal(b.records[0].data, "hello", 5);
    assert_int_equal(b.records[2].len, 2);
    assert_memory_equal(b.records[2].data, "bb", 2);
    assert_int_equal(b.records[3].offset, 3);
    assert_int_equal(b.records[3].len, 0);
    assert_int_equal(b.next_offset, 4);
    assert_true(b.records[0].time_ms > 0);
    fabric_batch_free(&b);

    /* A read from the middle, and a limit on the count. */
    assert_int_equal(read_now(fx, "orders", 2, 1, 1 << 20, &b), 0);
    assert_int_equal(b.count, 1);
    assert_int_equal(b.records[0].offset, 2);
    assert_int_equal(b.next_offset, 3);
    fabric_batch_free(&b);

    close_fabric(fx);
    fx->f = open_fabric(fx, 0);
    struct fabric_topic_info info;
    assert_int_equal(fabric_topic_info(fx->f, "orders", &info), 0);
    assert_int_equal(info.first_offset, 0);
    assert_int_equal(info.end_offset, 4);
    assert_int_equal(info.records, 4);
    assert_int_equal(read_now(fx, "orders", 1, 10, 1 << 20, &b), 0);
    assert_int_equal(b.count, 3);
    assert_memory_equal(b.records[0].data, "a", 1);
    fabric_batch_free(&b);
    append_text(fx, "orders", "after", &a);
    run_until(fx, &a.calls, 3);
    assert_int_equal(a.last_first, 4);
}

static void test_errors(void **state)
{
    struct fixture *fx = *state;
    struct fabric_config cfg = {
        .dir = fx->dir, .max_record_bytes = 100, .nats_url = backend_url(fx)};
    char err[256];
    assert_int_equal(fabric_open(&fx->loop, &cfg, &fx->f, err, sizeof(err)), 0);
    struct fabric_blob big = {xcalloc(1, 101), 101};
    struct acks a = {0};
    assert_int_equal(fabric_append(fx->f, "t", &big, 1, on_append, &a, NULL), -EMSGSIZE);
    free((void *)big.data);
    struct fabric_blob ok = {"x", 1};
    assert_int_equal(fabric_append(fx->f, "Bad/Name", &ok, 1, on_append, &a, NULL), -EINVAL);
    assert_int_equal(fabric_append(fx->f, "../up", &ok, 1, on_append, &a, NULL), -EINVAL);
    assert_int_equal(fabric_append(fx->f, "", &ok, 1, on_append, &a, NULL), -EINVAL);
    assert_int_equal(fabric_append(fx->f, "t", &ok, 0, on_append, &a, NULL), -EINVAL);
    /* NATS wildcards and separators never reach a subject */
    assert_int_equal(fabric_append(fx->f, "a.>", &ok, 1, on_append, &a, NULL), -EINVAL);
    assert_int_equal(fabric_append(fx->f, "a.*", &ok, 1, on_append, &a, NULL), -EINVAL);
    assert_int_equal(fabric_append(fx->f, "a b", &ok, 1, on_append, &a, NULL), -EINVAL);
    assert_int_equal(fabric_append(fx->f, "a~b", &ok, 1, on_append, &a, NULL), -EINVAL);
    struct fabric_batch b;
    assert_int_equal(read_now(fx, "missing", 0, 1, 1, &b), -ENOENT);
    assert_non_null(strstr(fabric_strerror(-ENOENT), "topic"));
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(a.calls, 0); /* a call that fails never calls back */
}

static void test_group_commit(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 0);
    struct acks a = {0};
    /* 500 appends made in one turn of the loop share one round: the first does not start a
     * round of its own. */
    for (int i = 0; i < 500; i++)
        append_text(fx, "burst", "event", &a);
    struct fabric_stats st;
    fabric_get_stats(fx->f, &st);
    assert_int_equal(st.syncs, 0);
    run_until(fx, &a.calls, 500);
    assert_int_equal(a.status, 0);
    fabric_get_stats(fx->f, &st);
    assert_int_equal(st.appends, 500);
    assert_int_equal(st.syncs, 1);
    assert_int_equal(st.pending, 0);
    /* appends made while a round runs share the next one */
    append_text(fx, "burst", "event", &a);
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    for (int i = 0; i < 100; i++)
        append_text(fx, "burst", "event", &a);
    run_until(fx, &a.calls, 601);
    assert_int_equal(a.status, 0);
    fabric_get_stats(fx->f, &st);
    assert_true(st.syncs <= 3);
}

struct notes {
    int calls;
    uint64_t end;
    char topic[32];
    struct fabric_sub *sub;
    bool unsubscribe_self;
};

static void on_notify(void *arg, const char *topic, uint64_t end)
{
    struct notes *n = arg;
    n->calls++;
    n->end = end;
    snprintf(n->topic, sizeof(n->topic), "%s", topic);
    if (n->unsubscribe_self)
        fabric_unsubscribe(n->sub);
}

static void test_subscribe(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 0);
    struct notes mine = {0}, all = {0}, once = {.unsubscribe_self = true};
    assert_int_equal(fabric_subscribe(fx->f, "uploads", on_notify, &mine, &mine.sub), 0);
    assert_int_equal(fabric_subscribe(fx->f, NULL, on_notify, &all, &all.sub), 0);
    assert_int_equal(fabric_subscribe(fx->f, "uploads", on_notify, &once, &once.sub), 0);
    struct acks a = {0};
    append_text(fx, "uploads", "1", &a);
    append_text(fx, "other", "2", &a);
    run_until(fx, &a.calls, 2);
    /* JetStream tells subscribers on a path of its own, soon after the acknowledgement */
    wait_until(fx, &mine.calls, 1);
    wait_until(fx, &all.calls, 2);
    assert_int_equal(mine.calls, 1);
    assert_int_equal(mine.end, 1);
    assert_string_equal(mine.topic, "uploads");
    append_text(fx, "uploads", "3", &a);
    run_until(fx, &a.calls, 3);
    wait_until(fx, &mine.calls, 2);
    assert_int_equal(mine.calls, 2);
    assert_int_equal(mine.end, 2);
    assert_int_equal(once.calls, 1);
    fabric_unsubscribe(mine.sub);
    struct notes later = {0};
    assert_int_equal(fabric_subscribe(fx->f, "uploads", on_notify, &later, &later.sub), 0);
    append_text(fx, "uploads", "4", &a);
    run_until(fx, &a.calls, 4);
    while (later.end < 3)
        wait_until(fx, &later.calls, later.calls + 1);
    assert_int_equal(mine.calls, 2);
}

static void on_cursor(void *arg, int status)
{
    struct acks *a = arg;
    a->calls++;
    if (status < 0)
        a->status = status;
}

static void test_cursors(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 0);
    uint64_t next = 0;
    assert_int_equal(fabric_cursor_get(fx->f, "t", "mapping-1", &next), -ENOENT);
    struct acks a = {0};
    assert_int_equal(fabric_cursor_commit(fx->f, "t", "mapping-1", 5, on_cursor, &a), 0);
    assert_int_equal(fabric_cursor_commit(fx->f, "t", "mapping-2", 9, NULL, NULL), 0);
    assert_int_equal(fabric_cursor_commit(fx->f, "t", "mapping-1", 7, on_cursor, &a), 0);
    run_until(fx, &a.calls, 2);
    assert_int_equal(a.status, 0);
    assert_int_equal(fabric_cursor_get(fx->f, "t", "mapping-1", &next), 0);
    assert_int_equal(next, 7);
    assert_int_equal(fabric_cursor_delete(fx->f, "t", "mapping-2"), 0);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    close_fabric(fx);

    fx->f = open_fabric(fx, 0);
    assert_int_equal(fabric_cursor_get(fx->f, "t", "mapping-1", &next), 0);
    assert_int_equal(next, 7);
    assert_int_equal(fabric_cursor_get(fx->f, "t", "mapping-2", &next), -ENOENT);
    /* Many commits: the log is compacted and the last value still wins after a reopen. */
    int commits = on_jetstream ? 300 : 30000; /* on JetStream each one moves a consumer */
    for (int i = 0; i < commits; i++)
        assert_int_equal(fabric_cursor_commit(fx->f, "t", "mapping-1", (uint64_t)i, NULL, NULL), 0);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    close_fabric(fx);
    fx->f = open_fabric(fx, 0);
    assert_int_equal(fabric_cursor_get(fx->f, "t", "mapping-1", &next), 0);
    assert_int_equal(next, (uint64_t)commits - 1);
    if (on_jetstream)
        return;
    struct stat st;
    char path[128];
    snprintf(path, sizeof(path), "%s/cursors.log", fx->dir);
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_size < 2 << 20);
}

/* fabric_cursor_read with the loop run while it is -EAGAIN (JetStream fetches through the
 * consumer off the loop): 10 s at most. */
static int cursor_read_now(struct fixture *fx, const char *topic, const char *consumer,
                           uint64_t from, struct fabric_batch *out)
{
    int64_t deadline = time_now_ms() + 10000;
    int rc;
    while ((rc = fabric_cursor_read(fx->f, topic, consumer, from, 100, 1 << 20, out)) == -EAGAIN &&
           time_now_ms() < deadline) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    return rc;
}

static void commit_now(struct fixture *fx, const char *topic, const char *consumer, uint64_t to)
{
    struct acks a = {0};
    assert_int_equal(fabric_cursor_commit(fx->f, topic, consumer, to, on_cursor, &a), 0);
    wait_until(fx, &a.calls, 1);
    assert_int_equal(a.status, 0);
}

/* Reading as a consumer: what its cursor has not acknowledged comes (again after a reopen),
 * and a commit backwards (a replay) makes the records from there come again. On JetStream the
 * cursor is the consumer's acknowledgement floor. */
static void test_cursor_reads(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 0);
    struct acks a = {0};
    const char *texts[] = {"r0", "r1", "r2", "r3", "r4"};
    for (size_t i = 0; i < ARRAY_SIZE(texts); i++)
        append_text(fx, "cr", texts[i], &a);
    run_until(fx, &a.calls, 5);
    assert_int_equal(a.status, 0);
    commit_now(fx, "cr", "m", 0); /* where the consumer starts */
    struct fabric_batch b;
    assert_int_equal(cursor_read_now(fx, "cr", "m", 0, &b), 0);
    assert_int_equal(b.count, 5);
    assert_int_equal(b.records[0].offset, 0);
    assert_memory_equal(b.records[4].data, "r4", 2);
    assert_int_equal(b.next_offset, 5);
    fabric_batch_free(&b);
    commit_now(fx, "cr", "m", 3); /* 0, 1, 2 acknowledged */
    uint64_t next = 0;
    assert_int_equal(fabric_cursor_get(fx->f, "cr", "m", &next), 0);
    assert_int_equal(next, 3);
    close_fabric(fx);

    fx->f = open_fabric(fx, 0);
    assert_int_equal(fabric_cursor_get(fx->f, "cr", "m", &next), 0);
    assert_int_equal(next, 3);
    assert_int_equal(cursor_read_now(fx, "cr", "m", next, &b), 0);
    assert_int_equal(b.count, 2); /* read before the reopen, never acknowledged */
    assert_int_equal(b.records[0].offset, 3);
    assert_memory_equal(b.records[1].data, "r4", 2);
    fabric_batch_free(&b);
    commit_now(fx, "cr", "m", 5);
    commit_now(fx, "cr", "m", 1); /* a replay */
    assert_int_equal(cursor_read_now(fx, "cr", "m", 1, &b), 0);
    assert_int_equal(b.count, 4);
    assert_int_equal(b.records[0].offset, 1);
    fabric_batch_free(&b);
    assert_int_equal(fabric_cursor_get(fx->f, "cr", "m", &next), 0);
    assert_int_equal(next, 1);
    /* let go (another process was to take over) and read again: from the cursor */
    assert_int_equal(fabric_cursor_release(fx->f, "cr", "m"), 0);
    assert_int_equal(cursor_read_now(fx, "cr", "m", 1, &b), 0);
    assert_int_equal(b.count, 4);
    assert_int_equal(b.records[0].offset, 1);
    fabric_batch_free(&b);
    /* a record appended now comes after them */
    append_text(fx, "cr", "r5", &a);
    run_until(fx, &a.calls, 6);
    int64_t deadline = time_now_ms() + 10000;
    b = (struct fabric_batch){0};
    while (b.count == 0 && time_now_ms() < deadline) {
        fabric_batch_free(&b);
        assert_int_equal(cursor_read_now(fx, "cr", "m", 5, &b), 0);
        uv_run(&fx->loop, UV_RUN_NOWAIT);
    }
    assert_int_equal(b.count, 1);
    assert_int_equal(b.records[0].offset, 5);
    fabric_batch_free(&b);
    close_fabric(fx);
}

/* A cursor an older build kept as the last message on skiff.cursors.<T>.<C> of the stream
 * SKIFF_CURSORS (written here as it wrote them) is where the consumer starts: nothing read
 * again, nothing skipped. */
static void test_old_cursors_carry_over(void **state)
{
    struct fixture *fx = *state;
    if (!on_jetstream)
        skip(); /* a JetStream layout */
    fx->f = open_fabric(fx, 0);
    struct acks a = {0};
    const char *texts[] = {"o0", "o1", "o2", "o3", "o4"};
    for (size_t i = 0; i < ARRAY_SIZE(texts); i++)
        append_text(fx, "a.old", texts[i], &a);
    run_until(fx, &a.calls, 5);
    close_fabric(fx);

    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    assert_int_equal(natsConnection_ConnectTo(&nc, fx->nats_url), NATS_OK);
    assert_int_equal(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    const char *subject = "skiff.cursors.>";
    sc.Name = "SKIFF_CURSORS";
    sc.Subjects = &subject;
    sc.SubjectsLen = 1;
    sc.MaxMsgsPerSubject = 1;
    assert_int_equal(js_AddStream(NULL, js, &sc, NULL, NULL), NATS_OK);
    assert_int_equal(js_Publish(NULL, js, "skiff.cursors.a~old.map~1", "1", 1, NULL, NULL),
                     NATS_OK);
    assert_int_equal(js_Publish(NULL, js, "skiff.cursors.a~old.map~1", "3", 1, NULL, NULL),
                     NATS_OK);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);

    fx->f = open_fabric(fx, 0);
    uint64_t next = 0;
    assert_int_equal(fabric_cursor_get(fx->f, "a.old", "map.1", &next), 0);
    assert_int_equal(next, 3);
    struct fabric_batch b;
    assert_int_equal(cursor_read_now(fx, "a.old", "map.1", next, &b), 0);
    assert_int_equal(b.count, 2);
    assert_int_equal(b.records[0].offset, 3);
    assert_memory_equal(b.records[0].data, "o3", 2);
    fabric_batch_free(&b);
    close_fabric(fx);
}

static void test_segments_retention_seek(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 1000); /* small segments: roll every ~20 records */
    struct acks a = {0};
    char payload[64];
    for (int i = 0; i < 200; i++) {
        snprintf(payload, sizeof(payload), "event-%03d-%s", i, "padding-padding");
        append_text(fx, "logs", payload, &a);
    }
    run_until(fx, &a.calls, 200);
    /* Segments sealed between rounds are synced by the next round, not one by one. */
    struct fabric_stats st;
    fabric_get_stats(fx->f, &st);
    if (!on_jetstream)
        assert_true(st.syncs <= 2);
    struct fabric_batch b;
    assert_int_equal(read_now(fx, "logs", 0, 1000, 1 << 20, &b), 0);
    assert_int_equal(b.count, 200);
    for (size_t i = 0; i < b.count; i++) {
        snprintf(payload, sizeof(payload), "event-%03zu-", i);
        assert_int_equal(b.records[i].offset, i);
        assert_memory_equal(b.records[i].data, payload, strlen(payload));
    }
    fabric_batch_free(&b);
    /* max_bytes stops a read early but returns at least one record. */
    assert_int_equal(read_now(fx, "logs", 150, 1000, 1, &b), 0);
    assert_int_equal(b.count, 1);
    assert_int_equal(b.records[0].offset, 150);
    fabric_batch_free(&b);

    uint64_t off = 0;
    assert_int_equal(seek_now(fx, "logs", 0, &off), 0);
    assert_int_equal(off, 0);
    assert_int_equal(seek_now(fx, "logs", time_now_ms() + 60000, &off), 0);
    assert_int_equal(off, 200);

    struct fabric_topic_info before, after;
    assert_int_equal(fabric_topic_info(fx->f, "logs", &before), 0);
    struct fabric_retention r = {.max_bytes = 3000};
    assert_int_equal(fabric_topic_set_retention(fx->f, "logs", &r), 0);
    fabric_enforce_retention(fx->f);
    assert_int_equal(fabric_topic_info(fx->f, "logs", &after), 0);
    /* on JetStream the server applies the limit and the loop hears of it from a listing */
    for (int i = 0; on_jetstream && (!after.first_offset || after.bytes > 3000) && i < 1000; i++) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        usleep(10000);
        assert_int_equal(fabric_topic_info(fx->f, "logs", &after), 0);
    }
    assert_true(after.bytes <= 3000 + (on_jetstream ? 0 : 1100));
    assert_true(after.first_offset > 0);
    assert_int_equal(after.end_offset, 200);
    /* A reader behind retention starts at the oldest record kept. */
    assert_int_equal(read_now(fx, "logs", 0, 1, 1 << 20, &b), 0);
    assert_int_equal(b.count, 1);
    assert_int_equal(b.records[0].offset, after.first_offset);
    fabric_batch_free(&b);

    /* Age: everything is older than 1 ms after a short wait; only the (new) active segment is
     * left, and offsets go on where they were. */
    int64_t t0 = time_now_ms();
    while (time_now_ms() < t0 + 5)
        usleep(1000);
    r = (struct fabric_retention){.max_age_ms = 1};
    assert_int_equal(fabric_topic_set_retention(fx->f, "logs", &r), 0);
    fabric_enforce_retention(fx->f);
    assert_int_equal(fabric_topic_info(fx->f, "logs", &after), 0);
    /* JetStream removes expired records on its own timer: wait for it, 10 s at most */
    for (int i = 0; on_jetstream && after.records && i < 500; i++) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        usleep(20000);
        assert_int_equal(fabric_topic_info(fx->f, "logs", &after), 0);
    }
    assert_int_equal(after.records, 0);
    assert_int_equal(after.first_offset, 200);
    close_fabric(fx);
    fx->f = open_fabric(fx, 1000);
    append_text(fx, "logs", "next", &a);
    run_until(fx, &a.calls, 201);
    assert_int_equal(a.last_first, 200);
}

static void test_seek_time(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 4000);
    struct acks a = {0};
    char payload[300];
    memset(payload, 'p', sizeof(payload) - 1);
    payload[sizeof(payload) - 1] = '\0';
    int64_t marks[4];
    for (int round = 0; round < 4; round++) {
        int64_t t0 = time_now_ms();
        while (time_now_ms() < t0 + 3)
            usleep(500);
        marks[round] = time_now_ms();
        for (int i = 0; i < 50; i++)
            append_text(fx, "timed", payload, &a);
        run_until(fx, &a.calls, 50 * (round + 1));
    }
    for (int round = 0; round < 4; round++) {
        uint64_t off = 0;
        assert_int_equal(seek_now(fx, "timed", marks[round], &off), 0);
        assert_int_equal(off, 50 * round);
    }
    uint64_t off = 0;
    assert_int_equal(seek_now(fx, "no~such", 0, &off), -EINVAL);
    assert_int_equal(seek_now(fx, "never-made", 0, &off), -ENOENT);
    /* a search asked for just before the fabric closes is answered once, found or cancelled */
    struct seek_result r = {0};
    assert_int_equal(fabric_seek_time(fx->f, "timed", marks[2], on_seek, &r), 0);
    close_fabric(fx);
    assert_int_equal(r.calls, 1);
    assert_true(r.status == -ECANCELED || (r.status == 0 && r.offset == 100));
}

struct closer {
    struct fixture *fx;
    bool closed;
    struct acks later;
};

static void close_from_callback(void *arg, int status, uint64_t first, size_t count)
{
    struct closer *c = arg;
    fabric_close(c->fx->f, on_closed, &c->closed);
}

/* Closing from inside a durability callback finishes the appends still queued, then closes. */
static void test_close_from_callback(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 0);
    struct closer c = {.fx = fx};
    struct fabric_blob b = {"x", 1};
    assert_int_equal(fabric_append(fx->f, "t", &b, 1, close_from_callback, &c, NULL), 0);
    assert_int_equal(fabric_append(fx->f, "t", &b, 1, on_append, &c.later, NULL), 0);
    while (!c.closed)
        uv_run(&fx->loop, UV_RUN_ONCE);
    fx->f = NULL;
    assert_int_equal(c.later.calls, 1);
    assert_int_equal(c.later.status, 0);
    fx->f = open_fabric(fx, 0);
    struct fabric_topic_info info;
    assert_int_equal(fabric_topic_info(fx->f, "t", &info), 0);
    assert_int_equal(info.records, 2);
    close_fabric(fx);

    /* And with nothing else queued. */
    fx->f = open_fabric(fx, 0);
    c = (struct closer){.fx = fx};
    assert_int_equal(fabric_append(fx->f, "t", &b, 1, close_from_callback, &c, NULL), 0);
    while (!c.closed)
        uv_run(&fx->loop, UV_RUN_ONCE);
    fx->f = NULL;
}

static int count_files(const char *dir, const char *suffix)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "ls %s | grep -c '%s$'", dir, suffix);
    FILE *p = popen(cmd, "r");
    int n = 0;
    if (p) {
        if (fscanf(p, "%d", &n) != 1)
            n = 0;
        pclose(p);
    }
    return n;
}

static void flip_byte(const char *path, off_t at)
{
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    unsigned char c;
    assert_int_equal(pread(fd, &c, 1, at), 1);
    c ^= 0x40;
    assert_int_equal(pwrite(fd, &c, 1, at), 1);
    close(fd);
}

static void expect_200_records(struct fixture *fx)
{
    struct fabric_batch b;
    assert_int_equal(read_now(fx, "ix", 0, 1000, 1 << 20, &b), 0);
    assert_int_equal(b.count, 200);
    for (size_t i = 0; i < b.count; i++)
        assert_int_equal(b.records[i].offset, i);
    fabric_batch_free(&b);
    struct fabric_topic_info info;
    assert_int_equal(fabric_topic_info(fx->f, "ix", &info), 0);
    assert_int_equal(info.end_offset, 200);
}

/* Sealed segments get an index once durable; open trusts a matching one and rebuilds a
 * missing or damaged one from the segment. */
static void test_segment_indexes(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 1000);
    struct acks a = {0};
    char payload[64];
    for (int i = 0; i < 200; i++) {
        snprintf(payload, sizeof(payload), "record-%03d-padding-padding", i);
        append_text(fx, "ix", payload, &a);
    }
    run_until(fx, &a.calls, 200);
    close_fabric(fx);
    char dir[256], path[512];
    snprintf(dir, sizeof(dir), "%s/topics/ix", fx->dir);
    int logs = count_files(dir, ".log"), idxs = count_files(dir, ".idx");
    assert_true(logs > 5);
    assert_int_equal(idxs, logs - 1); /* every sealed segment, not the active one */

    fx->f = open_fabric(fx, 1000);
    expect_200_records(fx);
    close_fabric(fx);

    /* A trusted index means the sealed segment is not re-read at open: a record damaged on
     * disk since is reported by the read that meets it, never served. */
    char seg0[512];
    snprintf(seg0, sizeof(seg0), "%s/" FABRIC_SEGMENT_NAME_FMT, dir, 0ULL);
    struct stat before, after;
    assert_int_equal(stat(seg0, &before), 0);
    flip_byte(seg0, FABRIC_RECORD_HEADER + 3);
    fx->f = open_fabric(fx, 1000);
    assert_int_equal(stat(seg0, &after), 0);
    assert_int_equal(after.st_size, before.st_size);
    struct fabric_batch b;
    assert_int_equal(read_now(fx, "ix", 0, 10, 1 << 20, &b), -EIO);
    close_fabric(fx);

    /* Without its index (damaged here) the segment is read at open and cut at the bad record;
     * the segments after it stay, and readers step over the gap. A missing index is rebuilt
     * and an orphaned one removed. */
    snprintf(path, sizeof(path), "%s/" FABRIC_INDEX_NAME_FMT, dir, 0ULL);
    flip_byte(path, 20);
    snprintf(path, sizeof(path), "%s/" FABRIC_INDEX_NAME_FMT, dir, 40ULL);
    assert_int_equal(unlink(path), 0);
    snprintf(path, sizeof(path), "%s/" FABRIC_INDEX_NAME_FMT, dir, 99999ULL);
    close(open(path, O_WRONLY | O_CREAT, 0644));
    fx->f = open_fabric(fx, 1000);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(read_now(fx, "ix", 0, 1000, 1 << 20, &b), 0);
    assert_true(b.count > 150 && b.count < 200);
    assert_int_equal(b.records[0].offset, 200 - b.count);
    assert_int_equal(b.records[b.count - 1].offset, 199);
    assert_int_equal(b.next_offset, 200);
    fabric_batch_free(&b);
    struct acks more = {0};
    append_text(fx, "ix", "after", &more);
    run_until(fx, &more.calls, 1);
    assert_int_equal(more.last_first, 200);
}

static void copy_file(const char *from, const char *to, off_t cut)
{
    char *data;
    size_t len;
    assert_int_equal(file_read(from, &data, &len), 0);
    assert_true((size_t)cut <= len);
    int fd = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, (size_t)cut), cut);
    close(fd);
    free(data);
}

/* Zeroes the bytes [from, to) of a file. */
static void zero_range(const char *path, off_t from, off_t to)
{
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    for (off_t pos = from; pos < to; pos++)
        assert_int_equal(pwrite(fd, "", 1, pos), 1);
    close(fd);
}

/* Cuts the segment at every byte of its last record, flips each byte of it, and zeroes it from
 * every byte to its end or from its start to every byte (a write torn inside the zero-filled
 * space ahead of the records): the earlier records survive, the torn one is dropped, and
 * appends go on from its offset. */
static void test_torn_tail_recovery(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 0);
    struct acks a = {0};
    append_text(fx, "t", "first record", &a);
    append_text(fx, "t", "second record", &a);
    run_until(fx, &a.calls, 2);
    char seg[256], saved[256];
    snprintf(seg, sizeof(seg), "%s/topics/t/" FABRIC_SEGMENT_NAME_FMT, fx->dir, 0ULL);
    wait_file_size(fx, seg, 512 << 10); /* the writer's zero-fill ahead */
    close_fabric(fx);
    snprintf(saved, sizeof(saved), "%s/saved.log", fx->dir);
    struct stat st;
    assert_int_equal(stat(seg, &st), 0);
    off_t file = st.st_size, whole = 2 * FABRIC_RECORD_HEADER + 12 + 13;
    off_t last = whole - (FABRIC_RECORD_HEADER + 13);
    assert_true(file > whole); /* zero-filled space after the records */
    copy_file(seg, saved, file);

    for (int mode = 0; mode < 4; mode++) {
        for (off_t cut = last; cut < whole; cut++) {
            bool all_zero = false; /* the whole last record zeroed: a clean zero-filled tail */
            if (mode == 0) {
                copy_file(saved, seg, cut);
            } else if (mode == 2) {
                copy_file(saved, seg, file);
                zero_range(seg, cut, whole);
                all_zero = cut == last;
            } else if (mode == 3) {
                copy_file(saved, seg, file);
                zero_range(seg, last, cut + 1);
                all_zero = cut + 1 == whole;
            } else {
                copy_file(saved, seg, whole);
                int fd = open(seg, O_RDWR);
                unsigned char c;
                assert_int_equal(pread(fd, &c, 1, cut), 1);
                c ^= 0x40;
                assert_int_equal(pwrite(fd, &c, 1, cut), 1);
                close(fd);
            }
            fx->f = open_fabric(fx, 0);
            struct fabric_batch b;
            assert_int_equal(read_now(fx, "t", 0, 10, 1 << 20, &b), 0);
            assert_int_equal(b.count, 1);
            assert_memory_equal(b.records[0].data, "first record", 12);
            fabric_batch_free(&b);
            assert_int_equal(stat(seg, &st), 0);
            /* a torn record is cut with everything after it; zeros alone are kept for reuse */
            assert_int_equal(st.st_size, all_zero ? file : last);
            int before = a.calls;
            append_text(fx, "t", "replacement", &a);
            run_until(fx, &a.calls, before + 1);
            assert_int_equal(a.last_first, 1);
            close_fabric(fx);
        }
    }
    assert_int_equal(a.status, 0);
}

/* Appends that run into the space the writer thread is zero-filling at that moment: no zero is
 * written over a record. Each append is a batch of 576 KiB made from the previous one's
 * acknowledgement, right after the round posted a zero-fill of the space ahead, so it crosses
 * into that space while the writer is at it; every record reads back intact, before and after
 * a reopen. */
enum { ZF_RECORD = 48 << 10, ZF_BATCH = 12, ZF_BATCHES = 24 };
struct zero_fill_chain;
static void on_zero_fill_chain(void *arg, int status, uint64_t first, size_t count);
struct zero_fill_chain {
    struct fixture *fx;
    struct acks acks;
    int sent;
};

static void zero_fill_chain_next(struct zero_fill_chain *c)
{
    static char data[ZF_BATCH][ZF_RECORD];
    struct fabric_blob blobs[ZF_BATCH];
    for (int i = 0; i < ZF_BATCH; i++) {
        memset(data[i], 'a' + (c->sent * ZF_BATCH + i) % 26, ZF_RECORD);
        blobs[i] = (struct fabric_blob){data[i], ZF_RECORD};
    }
    c->sent++;
    struct fabric_blob *b = blobs;
    assert_int_equal(fabric_append(c->fx->f, "z", b, ZF_BATCH, on_zero_fill_chain, c, NULL), 0);
}

static void on_zero_fill_chain(void *arg, int status, uint64_t first, size_t count)
{
    struct zero_fill_chain *c = arg;
    on_append(&c->acks, status, first, count);
    if (c->sent < ZF_BATCHES)
        zero_fill_chain_next(c);
}

static void test_zero_fill_under_appends(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 64 << 20);
    struct zero_fill_chain c = {.fx = fx};
    zero_fill_chain_next(&c);
    wait_until(fx, &c.acks.calls, ZF_BATCHES);
    assert_int_equal(c.acks.status, 0);
    static char want[ZF_RECORD];
    for (int pass = 0; pass < 2; pass++) {
        for (uint64_t off = 0; off < ZF_BATCHES * ZF_BATCH; off++) {
            struct fabric_batch b;
            assert_int_equal(read_now(fx, "z", off, 1, 1 << 20, &b), 0);
            assert_int_equal(b.count, 1);
            assert_int_equal(b.records[0].len, ZF_RECORD);
            memset(want, 'a' + (int)(off % 26), sizeof(want));
            assert_memory_equal(b.records[0].data, want, ZF_RECORD);
            fabric_batch_free(&b);
        }
        close_fabric(fx);
        fx->f = open_fabric(fx, 64 << 20);
    }
}

/* Durable appends write into zero-filled space the segment already has: the file does not grow
 * with each one, the zeros are never read as records (after a reopen too), and a sealed
 * segment is cut back to its records so that its index describes it. */
static void test_preallocated_tail(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 4096);
    struct acks a = {0};
    append_text(fx, "t", "one", &a);
    run_until(fx, &a.calls, 1);
    char seg[256];
    snprintf(seg, sizeof(seg), "%s/topics/t/" FABRIC_SEGMENT_NAME_FMT, fx->dir, 0ULL);
    struct stat st;
    /* the writer thread zero-fills ahead after the first round, off the loop */
    off_t file = wait_file_size(fx, seg, 512 << 10);
    for (int i = 0; i < 5; i++) {
        append_text(fx, "t", "more", &a);
        run_until(fx, &a.calls, 2 + i);
        assert_int_equal(stat(seg, &st), 0);
        assert_int_equal(st.st_size, file);
    }
    close_fabric(fx);

    fx->f = open_fabric(fx, 4096);
    struct fabric_batch b;
    assert_int_equal(read_now(fx, "t", 0, 100, 1 << 20, &b), 0);
    assert_int_equal(b.count, 6);
    fabric_batch_free(&b);
    assert_int_equal(stat(seg, &st), 0);
    assert_int_equal(st.st_size, file); /* the tail is not torn: kept, not cut */
    append_text(fx, "t", "seventh", &a);
    run_until(fx, &a.calls, 7);
    assert_int_equal(a.last_first, 6);

    /* fill the segment past 4096 bytes: the next append seals it at its last record */
    char big[1024];
    memset(big, 'x', sizeof(big));
    struct fabric_blob blob = {big, sizeof(big)};
    for (int i = 0; i < 5; i++)
        assert_int_equal(fabric_append(fx->f, "t", &blob, 1, on_append, &a, NULL), 0);
    run_until(fx, &a.calls, 12);
    assert_int_equal(a.status, 0);
    assert_int_equal(stat(seg, &st), 0);
    assert_true(st.st_size < file);
    close_fabric(fx);
    fx->f = open_fabric(fx, 4096);
    assert_int_equal(read_now(fx, "t", 0, 100, 1 << 20, &b), 0);
    assert_int_equal(b.count, 12);
    assert_memory_equal(b.records[11].data, big, sizeof(big));
    fabric_batch_free(&b);
}

static void on_wait_timer(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/* Runs the loop for ms milliseconds. */
static void run_for(struct fixture *fx, uint64_t ms)
{
    bool done = false;
    uv_timer_t t;
    uv_timer_init(&fx->loop, &t);
    t.data = &done;
    uv_timer_start(&t, on_wait_timer, ms, 0);
    while (!done)
        uv_run(&fx->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&fx->loop, UV_RUN_NOWAIT);
}

/* Out of descriptors (20,000 idle connections, say): an append to an existing topic needs none
 * (its round syncs the segment's own descriptor), a cursor commit (whose round needs one) waits
 * instead of failing, a new topic is refused with -EMFILE, and once descriptors are free again
 * everything is acknowledged and the fabric goes on. It never stops appending "until restart"
 * for it. */
static void test_out_of_descriptors_waits_and_recovers(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 0);
    struct acks a = {0};
    append_text(fx, "a", "before", &a);
    run_until(fx, &a.calls, 1);
    assert_int_equal(a.status, 0);

    struct rlimit saved;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &saved), 0);
    struct rlimit low = saved;
    low.rlim_cur = 256;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    int held[256];
    int nheld = 0;
    for (int fd; nheld < 256 && (fd = dup(0)) >= 0;)
        held[nheld++] = fd;
    assert_int_equal(dup(0), -1);
    assert_int_equal(errno, EMFILE);

    append_text(fx, "a", "during", &a);
    run_until(fx, &a.calls, 2);
    assert_int_equal(a.status, 0);
    struct acks c = {0};
    assert_int_equal(fabric_cursor_commit(fx->f, "a", "m", 1, on_cursor, &c), 0);
    struct fabric_blob b = {"x", 1};
    assert_int_equal(fabric_append(fx->f, "b", &b, 1, on_append, &a, NULL), -EMFILE);
    run_for(fx, 60); /* several retries */
    assert_int_equal(c.calls, 0); /* waiting, not failed */

    for (int i = 0; i < nheld; i++)
        close(held[i]);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &saved), 0);
    run_until(fx, &c.calls, 1);
    assert_int_equal(c.status, 0);
    append_text(fx, "b", "after", &a);
    run_until(fx, &a.calls, 3);
    assert_int_equal(a.status, 0);

    struct fabric_batch batch;
    assert_int_equal(read_now(fx, "a", 0, 10, 1 << 20, &batch), 0);
    assert_int_equal(batch.count, 2);
    assert_memory_equal(batch.records[1].data, "during", 6);
    fabric_batch_free(&batch);
}

/* Topic names that differ only where NATS would read a separator stay apart, and listing
 * gives back the names as they were given. */
static void test_names_stay_apart(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 0);
    struct acks a = {0};
    append_text(fx, "a.b", "dot", &a);
    append_text(fx, "a", "plain", &a);
    append_text(fx, "a-b", "dash", &a);
    append_text(fx, "a_b", "underscore", &a);
    run_until(fx, &a.calls, 4);
    assert_int_equal(a.status, 0);
    const char *names[] = {"a", "a-b", "a.b", "a_b"};
    const char *data[] = {"plain", "dash", "dot", "underscore"};
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        struct fabric_batch b;
        assert_int_equal(read_now(fx, names[i], 0, 10, 1 << 20, &b), 0);
        assert_int_equal(b.count, 1);
        assert_memory_equal(b.records[0].data, data[i], strlen(data[i]));
        fabric_batch_free(&b);
    }
    struct fabric_topic_info *list = NULL;
    size_t n = 0;
    assert_int_equal(fabric_topics(fx->f, &list, &n), 0);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(list[i].name, names[i]);
    free(list);
}

/* With the NATS server gone, calls fail at once with -ENOTCONN (or an append already sent
 * fails in its callback), never hang; once it is back, appends are acknowledged again. */
static void test_nats_down(void **state)
{
    struct fixture *fx = *state;
    if (!on_jetstream)
        skip(); /* the embedded log has no server to lose */
    fx->f = open_fabric(fx, 0);
    struct acks a = {0};
    append_text(fx, "t", "before", &a);
    run_until(fx, &a.calls, 1);
    assert_int_equal(a.status, 0);
    int port = atoi(strrchr(fx->nats_url, ':') + 1);
    nats_stop(fx);
    struct fabric_blob blob = {"during", 6};
    int rc = 0;
    int64_t deadline = time_now_ms() + 15000;
    while (rc == 0 && a.status == 0 && time_now_ms() < deadline) {
        rc = fabric_append(fx->f, "t", &blob, 1, on_append, &a, NULL);
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        usleep(10000);
    }
    assert_true(rc == -ENOTCONN || a.status == -ENOTCONN || a.status == -ETIMEDOUT);
    /* what the loop knows answers at once; what needs the server is refused at once */
    int64_t t0 = time_now_ms();
    struct fabric_topic_info info;
    assert_int_equal(fabric_topic_info(fx->f, "t", &info), 0);
    assert_int_equal(info.end_offset, 1);
    struct fabric_batch b;
    assert_int_equal(fabric_read(fx->f, "t", 0, 10, 1 << 20, &b), -ENOTCONN);
    assert_true(time_now_ms() - t0 < 100);
    assert_non_null(strstr(fabric_strerror(-ENOTCONN), "NATS"));

    nats_start(fx, port);
    rc = -ENOTCONN;
    deadline = time_now_ms() + 15000;
    while ((rc == -ENOTCONN || rc == -EAGAIN) && time_now_ms() < deadline) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        usleep(10000);
        rc = fabric_read(fx->f, "t", 0, 10, 1 << 20, &b);
    }
    assert_int_equal(rc, 0);
    assert_true(b.count >= 1);
    fabric_batch_free(&b);
    struct acks again = {0};
    append_text(fx, "t", "after", &again);
    run_until(fx, &again.calls, 1);
    assert_int_equal(again.status, 0);
    /* appends sent into the dead connection report to `a` by the close at the latest */
    close_fabric(fx);
}

/* No server at the URL: open fails at once with a message that names the servers, never their
 * password, and says what to do. */
static void test_nats_unreachable(void **state)
{
    struct fixture *fx = *state;
    char url[128], err[512] = "";
    snprintf(url, sizeof(url), "nats://skiff:hunter2@127.0.0.1:%d,nats://tok3n@127.0.0.1:%d",
             free_port(), free_port());
    struct fabric_config cfg = {.nats_url = url};
    int64_t t0 = time_now_ms();
    assert_int_equal(fabric_open(&fx->loop, &cfg, &fx->f, err, sizeof(err)), -ENOTCONN);
    assert_null(fx->f);
    assert_true(time_now_ms() - t0 < 5000);
    assert_null(strstr(err, "hunter2"));
    assert_null(strstr(err, "tok3n"));
    assert_non_null(strstr(err, "nats://***@127.0.0.1:"));
    assert_non_null(strstr(err, "--nats"));
}

/* The appends of one loop turn are written together before their round: across segment rolls
 * (the pending records of a segment are written before it is sealed) and past the size at
 * which a turn's records are written early, every record is acknowledged once and reads back
 * in order, after a reopen too. */
static void test_one_turn_many_appends(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 8192); /* about 20 records a segment */
    enum { N = 900 };              /* 900 x 396 bytes: past 256 KiB in one turn */
    static char text[N][380];
    struct acks a = {0};
    for (int i = 0; i < N; i++) {
        snprintf(text[i], sizeof text[i], "%04d %0360d", i, i);
        uint64_t off = 0;
        struct fabric_blob b = {text[i], strlen(text[i])};
        assert_int_equal(fabric_append(fx->f, "turn", &b, 1, on_append, &a, &off), 0);
        assert_int_equal(off, (uint64_t)i);
    }
    wait_until(fx, &a.calls, N);
    assert_int_equal(a.status, 0);
    for (int pass = 0; pass < 2; pass++) {
        uint64_t next = 0;
        while (next < N) {
            struct fabric_batch b;
            assert_int_equal(fabric_read(fx->f, "turn", next, 100, 1 << 20, &b), 0);
            assert_true(b.count > 0);
            for (size_t k = 0; k < b.count; k++) {
                assert_int_equal(b.records[k].offset, next + k);
                assert_int_equal(b.records[k].len, strlen(text[next + k]));
                assert_memory_equal(b.records[k].data, text[next + k], b.records[k].len);
            }
            next = b.next_offset;
            fabric_batch_free(&b);
        }
        close_fabric(fx);
        fx->f = open_fabric(fx, 8192);
    }
}

/* A write that fails refuses the appends whose records it held, and only after the call
 * returned (no acknowledgement, the callback with the error); the file is cut back, so a
 * reopen finds the records acknowledged before and nothing of the refused ones. The failure
 * is made with RLIMIT_FSIZE (EFBIG, a disk error: appends are refused from then on). */
static void test_failed_write_refuses_its_appends(void **state)
{
    struct fixture *fx = *state;
    fx->f = open_fabric(fx, 0);
    struct acks a = {0};
    append_text(fx, "full", "kept", &a);
    run_until(fx, &a.calls, 1);
    assert_int_equal(a.status, 0);
    struct fabric_topic_info info;
    assert_int_equal(fabric_topic_info(fx->f, "full", &info), 0);

    static char big[600];
    memset(big, 'x', sizeof big - 1);
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = (rlim_t)info.bytes + 100; /* the next record does not fit */
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    struct acks refused = {0};
    append_text(fx, "full", big, &refused);
    append_text(fx, "full", big, &refused);
    assert_int_equal(refused.calls, 0);
    wait_until(fx, &refused.calls, 2);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    assert_int_equal(refused.status, -EFBIG);
    struct fabric_blob b = {"after", 5};
    assert_true(fabric_append(fx->f, "full", &b, 1, on_append, &a, NULL) < 0);

    close_fabric(fx);
    fx->f = open_fabric(fx, 0);
    assert_int_equal(fabric_topic_info(fx->f, "full", &info), 0);
    assert_int_equal(info.end_offset, 1);
    struct fabric_batch batch;
    assert_int_equal(fabric_read(fx->f, "full", 0, 10, 1 << 20, &batch), 0);
    assert_int_equal(batch.count, 1);
    assert_memory_equal(batch.records[0].data, "kept", 4);
    fabric_batch_free(&batch);
    append_text(fx, "full", "again", &a);
    run_until(fx, &a.calls, 2);
    assert_int_equal(a.status, 0);
    assert_int_equal(a.last_first, 1);
}

static bool nats_server_installed(void)
{
    return system("command -v nats-server >/dev/null 2>&1") == 0;
}

int main(void)
{
    const struct CMUnitTest contract[] = {
        cmocka_unit_test_setup_teardown(test_append_read_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_subscribe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cursors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cursor_reads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_old_cursors_carry_over, setup, teardown),
        cmocka_unit_test_setup_teardown(test_segments_retention_seek, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seek_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_from_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_names_stay_apart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nats_down, setup, teardown),
    };
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nats_unreachable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_segment_indexes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_recovery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_preallocated_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zero_fill_under_appends, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_descriptors_waits_and_recovers, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_one_turn_many_appends, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_write_refuses_its_appends, setup, teardown),
    };
    int failed = cmocka_run_group_tests_name("embedded", tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("embedded contract", contract, NULL, NULL);
    if (!nats_server_installed()) {
        printf("SKIP the JetStream run: nats-server is not installed (scripts/deps.sh installs "
               "it)\n");
        return failed;
    }
    on_jetstream = true;
    failed += cmocka_run_group_tests_name("jetstream contract", contract, NULL, NULL);
    return failed;
}
