/* Two stores on one PostgreSQL database in a unit test: waiting until one has heard, on its
 * change feed, of the other's writes. Include after cmocka.h. */
#ifndef SKIFF_TESTS_FEED_FENCE_H
#define SKIFF_TESTS_FEED_FENCE_H

#include <stdint.h>
#include <unistd.h>

#include "store/store.h"

/* Writes a "fence" document through writer and waits (10 s at most) until reader has heard of
 * it: the feed is in order, so reader has heard of writer's writes before it too. */
static inline void feed_fence(struct store *reader, struct store *writer)
{
    uint64_t before = store_doc_news_kind(reader, "fence");
    assert_int_equal(store_doc_put(writer, "fence", "x", "{}"), 0);
    for (int i = 0; i < 1000 && store_doc_news_kind(reader, "fence") == before; i++)
        usleep(10 * 1000);
    assert_true(store_doc_news_kind(reader, "fence") != before);
}

#endif
