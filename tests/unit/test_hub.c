/* Unit tests for hub/: delivery order, nested publishing, subscribing and unsubscribing from
 * inside a callback. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <string.h>

#include "hub/hub.h"

struct rec {
    struct hub *hub;
    char seen[256]; /* one letter per delivery: the subscriber's name */
    size_t n;
};

struct sub {
    struct rec *rec;
    char name;
    int id;
    int unsubscribe_id;    /* unsubscribed (once) when this one gets an event */
    bool publish_nested;   /* publishes PLATFORM_APP_SCALED once on APP_STARTED */
    struct sub *subscribe; /* subscribed (once) when this one gets an event */
};

static void on_event(void *ctx, const struct platform_event *ev)
{
    struct sub *s = ctx;
    s->rec->seen[s->rec->n++] = ev->type == PLATFORM_APP_SCALED ? (char)(s->name - 32) : s->name;
    if (s->unsubscribe_id) {
        int id = s->unsubscribe_id;
        s->unsubscribe_id = 0;
        hub_unsubscribe(s->rec->hub, id);
    }
    if (s->subscribe) {
        struct sub *t = s->subscribe;
        s->subscribe = NULL;
        t->id = hub_subscribe(s->rec->hub, on_event, t);
    }
    if (s->publish_nested && ev->type == PLATFORM_APP_STARTED) {
        s->publish_nested = false;
        hub_publish(s->rec->hub, &PLATFORM_APP_EVENT(PLATFORM_APP_SCALED, "g", "n"));
    }
}

/* A hub with one subscriber per letter of names, subscribed in that order: subs[0] is 'a'... */
static void start(struct rec *r, struct sub *subs, const char *names)
{
    *r = (struct rec){.hub = hub_new()};
    for (size_t i = 0; names[i]; i++) {
        subs[i] = (struct sub){.rec = r, .name = names[i]};
        subs[i].id = hub_subscribe(r->hub, on_event, &subs[i]);
    }
}

/* Every subscriber still there goes, and the hub with them. */
static void finish(struct rec *r, struct sub *subs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        hub_unsubscribe(r->hub, subs[i].id);
    assert_int_equal(hub_subscribers(r->hub), 0);
    hub_free(r->hub);
}

static void publish(struct rec *r)
{
    hub_publish(r->hub, &PLATFORM_APP_EVENT(PLATFORM_APP_STARTED, "g", "n"));
    r->seen[r->n] = '\0';
}

static void test_delivers_in_subscription_order(void **state)
{
    (void)state;
    struct rec r;
    struct sub s[3], *a = &s[0], *b = &s[1], *c = &s[2];
    start(&r, s, "abc");
    assert_true(a->id > 0 && b->id > a->id && c->id > b->id);
    publish(&r);
    assert_string_equal(r.seen, "abc");
    hub_unsubscribe(r.hub, b->id);
    hub_unsubscribe(r.hub, b->id); /* twice: a no-op */
    hub_unsubscribe(r.hub, 0);
    publish(&r);
    assert_string_equal(r.seen, "abcac");
    assert_int_equal(hub_subscribers(r.hub), 2);
    finish(&r, s, 3);
}

static void test_unsubscribing_another_during_delivery_skips_it(void **state)
{
    (void)state;
    struct rec r;
    struct sub s[3], *a = &s[0], *b = &s[1], *c = &s[2];
    start(&r, s, "abc");
    a->unsubscribe_id = c->id; /* c is removed before its turn: it gets nothing */
    b->unsubscribe_id = b->id; /* b removes itself: it got this one */
    publish(&r);
    assert_string_equal(r.seen, "ab");
    publish(&r);
    assert_string_equal(r.seen, "aba");
    assert_int_equal(hub_subscribers(r.hub), 1);
    finish(&r, s, 3);
}

static void test_subscribing_during_delivery_starts_with_the_next_event(void **state)
{
    (void)state;
    struct rec r;
    struct sub s[22], *extra = &s[2];
    start(&r, s, "ab");
    /* a chain that grows the array while it is walked: each new one subscribes another */
    for (int i = 0; i < 20; i++)
        extra[i] = (struct sub){.rec = &r, .name = 'x', .subscribe = i + 1 < 20 ? &extra[i + 1] : NULL};
    s[0].subscribe = &extra[0];
    publish(&r);
    assert_string_equal(r.seen, "ab");
    publish(&r);
    assert_string_equal(r.seen, "ababx"); /* extra[0] now, which subscribed extra[1] */
    assert_int_equal(hub_subscribers(r.hub), 4);
    finish(&r, s, 4);
}

static void test_nested_publish_is_delivered_depth_first(void **state)
{
    (void)state;
    struct rec r;
    struct sub s[2], *a = &s[0], *b = &s[1];
    start(&r, s, "ab");
    a->publish_nested = true;
    a->unsubscribe_id = b->id; /* removed inside the outer delivery, before the nested one */
    publish(&r);
    assert_string_equal(r.seen, "aA"); /* b is gone for both */
    finish(&r, s, 2);
}

static void test_null_hub_drops_events_and_names(void **state)
{
    (void)state;
    hub_publish(NULL, &PLATFORM_APP_EVENT(PLATFORM_APP_STAGED, "g", "n"));
    hub_unsubscribe(NULL, 1);
    hub_free(NULL);
    assert_int_equal(hub_subscribers(NULL), 0);
    assert_string_equal(platform_event_name(PLATFORM_APP_CRASHED), "app.crashed");
    assert_string_equal(platform_event_name(PLATFORM_INSTANCE_READY), "instance.ready");
    struct platform_event ev = PLATFORM_APP_EVENT(PLATFORM_APP_STOPPED, "g", "n");
    assert_int_equal(ev.index, -1);
    assert_int_equal(ev.exit_status, -1);
    assert_null(ev.process_type);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delivers_in_subscription_order),
        cmocka_unit_test(test_unsubscribing_another_during_delivery_skips_it),
        cmocka_unit_test(test_subscribing_during_delivery_starts_with_the_next_event),
        cmocka_unit_test(test_nested_publish_is_delivered_depth_first),
        cmocka_unit_test(test_null_hub_drops_events_and_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
