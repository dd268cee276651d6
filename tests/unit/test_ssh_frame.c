/* Unit tests for common/ssh_frame: frames round-trip, a partial frame asks for more, and
 * what no peer sends (unknown types, oversize lengths, wrong sizes) is refused at once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "common/ssh_frame.h"

static void test_round_trip_and_partial(void **state)
{
    (void)state;
    struct buf b = {0};
    ssh_frame_put(&b, SSH_FRAME_STDOUT, "hello", 5);
    ssh_frame_put_u32(&b, SSH_FRAME_EXIT, 137);
    ssh_frame_put_u32(&b, SSH_FRAME_RESIZE, 40u << 16 | 132);
    struct ssh_frame f;
    for (size_t cut = 0; cut < SSH_FRAME_HEAD + 5; cut++)
        assert_int_equal(ssh_frame_parse(b.data, cut, &f), 0);
    size_t pos = 0;
    assert_int_equal(ssh_frame_parse(b.data, b.len, &f), SSH_FRAME_HEAD + 5);
    assert_int_equal(f.type, SSH_FRAME_STDOUT);
    assert_memory_equal(f.data, "hello", 5);
    pos += SSH_FRAME_HEAD + 5;
    assert_int_equal(ssh_frame_parse(b.data + pos, b.len - pos, &f), SSH_FRAME_HEAD + 4);
    assert_int_equal(f.type, SSH_FRAME_EXIT);
    assert_int_equal(ssh_frame_u32(&f), 137);
    pos += SSH_FRAME_HEAD + 4;
    assert_int_equal(ssh_frame_parse(b.data + pos, b.len - pos, &f), SSH_FRAME_HEAD + 4);
    assert_int_equal(ssh_frame_u32(&f) >> 16, 40);
    assert_int_equal(ssh_frame_u32(&f) & 0xffff, 132);
    buf_free(&b);
}

static void test_largest_frame_taken(void **state)
{
    (void)state;
    static char data[SSH_FRAME_MAX];
    struct buf b = {0};
    ssh_frame_put(&b, SSH_FRAME_STDIN, data, sizeof data);
    struct ssh_frame f;
    assert_int_equal(ssh_frame_parse(b.data, b.len, &f), SSH_FRAME_HEAD + SSH_FRAME_MAX);
    assert_int_equal(f.len, SSH_FRAME_MAX);
    buf_free(&b);
}

static void test_what_no_peer_sends_is_refused(void **state)
{
    (void)state;
    struct ssh_frame f;
    /* an unknown type: refused from its first byte, without waiting for a length */
    assert_int_equal(ssh_frame_parse("\x07", 1, &f), -EPROTO);
    assert_int_equal(ssh_frame_parse("\xff\x00\x00\x00", 4, &f), -EPROTO);
    /* longer than the largest frame: refused from the head, before any of it is kept */
    assert_int_equal(ssh_frame_parse("\x00\x01\x00\x01", 4, &f), -EPROTO);
    assert_int_equal(ssh_frame_parse("\x00\xff\xff\xff", 4, &f), -EPROTO);
    /* sizes fixed by the type */
    assert_int_equal(ssh_frame_parse("\x03\x00\x00\x01x", 5, &f), -EPROTO);
    assert_int_equal(ssh_frame_parse("\x04\x00\x00\x03xyz", 7, &f), -EPROTO);
    assert_int_equal(ssh_frame_parse("\x05\x00\x00\x05xyzzy", 9, &f), -EPROTO);
    assert_int_equal(ssh_frame_parse("\x03\x00\x00\x00", 4, &f), 4);
    assert_int_equal(f.type, SSH_FRAME_EOF);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_and_partial),
        cmocka_unit_test(test_largest_frame_taken),
        cmocka_unit_test(test_what_no_peer_sends_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
