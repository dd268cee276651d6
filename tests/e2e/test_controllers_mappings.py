"""Event mappings on several skiffds (one PostgreSQL store, one JetStream fabric): a mapping
made, deleted or scheduled through a follower is delivered (or stopped, or fired) by the
leader within SYNC_BOUND_S, every event once, and by the next leader after kill -9.

The leader learns of them from the store's change feed (src/invoker/README.md, "Several
skiffds on one fabric"); without that it read the mappings only at its start."""
import json
import os
import shutil
import signal
import threading
import time

import pytest

from conftest import wait_for
from controllers import LEADER_BOUND_S, PG_BIN, leading, psql
from test_controllers import schedule_fires
from test_fabric_crash import read_all
from test_fabric_nats import publish, replies_by_id, shared_leader_and_follower

pytestmark = [
    pytest.mark.skipif(shutil.which("nats-server") is None,
                       reason="nats-server is not installed (scripts/deps.sh)"),
    pytest.mark.skipif(not os.access(os.path.join(PG_BIN, "initdb"), os.X_OK),
                       reason=f"PostgreSQL's server binaries are not in {PG_BIN}"),
]

# the feed carries the news at once; the leader reads the mappings 20 ms later. A second of
# margin for a loaded machine, and the fabric's topic list (refreshed every 2 s) for events
# published before the leader subscribed.
SYNC_BOUND_S = 5.0

ECHO = "def handle(event):\n    return {'seen': (event.get('data') or {}).get('n', event['type'])}\n"

from test_fabric_nats import nats, pg_dir  # noqa: E402,F401  (fixtures)


@pytest.fixture
def shared_pair(pg_dir, nats, tmp_path):  # noqa: F811
    """a leads, b follows; a function `echo` pushed through a."""
    fn = tmp_path / "echo.py"
    fn.write_text(ECHO)
    with shared_leader_and_follower(pg_dir, nats, lambda a: a.cli(
            "push", "echo", "--function", "%s:handle" % fn, check=True, timeout=300)) as ab:
        yield ab


# the leader saves counts once a second; the follower reads them 20 ms after the feed's news
COUNTS_BOUND_S = 1.0 + SYNC_BOUND_S


def delivered(p, mapping_id):
    status, body = p.api("GET", "/v1/event-mappings/%s" % mapping_id)
    assert status == 200, body
    return body["delivered"]


def mapping_ids(p):
    status, body = p.api("GET", "/v1/event-mappings")
    assert status == 200, body
    return {m["id"] for m in body["event_mappings"]}


def map_event(p, *args):
    status, body = p.api("POST", "/v1/event-mappings", dict(args))
    assert status == 201, body
    return body["id"]


def test_a_mapping_made_and_deleted_through_the_follower_is_delivered_and_stopped_by_the_leader(
        shared_pair):
    a, b = shared_pair
    control = map_event(a, ("app", "echo"), ("topic", "orders"), ("reply_topic", "control"))
    began = time.monotonic()
    made = map_event(b, ("app", "echo"), ("topic", "orders"), ("reply_topic", "orders-done"))
    wait_for(lambda: made in mapping_ids(a), SYNC_BOUND_S,
             "the leader to list the mapping made through the follower")
    print("the leader listed the mapping made through the follower %.0f ms after the request"
          % ((time.monotonic() - began) * 1000))
    # published at once, through either skiffd: none is lost while the leader learns of it
    total = 20
    for n in range(total):
        status, body = publish(a if n % 2 else b, "orders", {"n": n})
        assert status == 202, body
    wait_for(lambda: len(replies_by_id(b, "orders-done")) == total, 60,
             "every event delivered for the mapping made through the follower", interval=0.3)
    wait_for(lambda: len(replies_by_id(b, "control")) == total, 60, "the control mapping")
    seen = replies_by_id(b, "orders-done")
    assert sorted(seen) == list(range(total)), seen
    assert all(v == 1 for v in seen.values()), "each event once: %s" % seen
    # the leader counts a delivery when the fabric acknowledges its reply's append, which a
    # reader of the reply topic may see a moment before: the count is waited for, not read once
    wait_for(lambda: delivered(a, made) == total, SYNC_BOUND_S,
             "the leader to count every delivery")
    # the follower delivers nothing itself, and shows the counts the leader saved
    wait_for(lambda: delivered(b, made) == total, COUNTS_BOUND_S,
             "the follower to show the leader's counts")

    # deleted through the follower: the leader stops delivering to it
    status, body = b.api("DELETE", "/v1/event-mappings/%s" % made)
    assert status == 204, body
    wait_for(lambda: made not in mapping_ids(a), SYNC_BOUND_S,
             "the leader to drop the mapping deleted through the follower")
    assert "event mapping %s was deleted through another skiffd" % made in a.output()
    for n in range(total, total + 5):
        status, body = publish(b, "orders", {"n": n})
        assert status == 202, body
    # the control mapping shows the leader has consumed those events meanwhile
    wait_for(lambda: len(replies_by_id(b, "control")) == total + 5, 60,
             "the control mapping to take the events published after the delete")
    assert len(replies_by_id(b, "orders-done")) == total, replies_by_id(b, "orders-done")
    # and its document stays deleted: the leader's saved counts do not bring it back
    assert made not in mapping_ids(b) and made not in mapping_ids(a)
    assert control in mapping_ids(a)
    # news of the other's writes (counts saved each second) restarted no mapping
    for p in (a, b):
        assert "changed through another skiffd" not in p.output(), p.output()


def test_a_topic_published_through_the_follower_is_listed_by_the_leader(shared_pair):
    """Topics are JetStream streams, not store records: the leader lists one made through the
    follower from the fabric's stream list (refreshed every 2 s)."""
    a, b = shared_pair
    assert publish(b, "fresh", {"n": 1})[0] == 202

    def listed():
        status, body = a.api("GET", "/v1/topics")
        assert status == 200, body
        return [t for t in body["topics"] if t["name"] == "fresh" and t["events"] == 1]
    wait_for(listed, SYNC_BOUND_S, "the leader to list the topic published through the follower")


def test_a_schedule_made_through_the_follower_fires_on_the_leader(shared_pair):
    a, b = shared_pair
    made = map_event(b, ("app", "echo"), ("schedule", "@every 1s"), ("reply_topic", "ticks"))
    wait_for(lambda: made in mapping_ids(a), SYNC_BOUND_S, "the leader to list the schedule")
    wait_for(lambda: schedule_fires(a) >= 2, 10, "the leader to fire the schedule")
    wait_for(lambda: "skiff.schedule.fired" in replies_by_id(b, "ticks"), 30,
             "the function invoked by the schedule's fires")
    assert schedule_fires(b) == 0, "a follower fires no schedule"


def test_a_mapping_made_through_the_follower_is_delivered_by_the_next_leader(shared_pair,
                                                                              nats):  # noqa: F811
    a, b = shared_pair
    made = map_event(b, ("app", "echo"), ("topic", "jobs"), ("reply_topic", "jobs-done"))
    wait_for(lambda: made in mapping_ids(a), SYNC_BOUND_S, "the leader to list the mapping")
    for n in range(5):
        assert publish(b, "jobs", {"n": n})[0] == 202
    wait_for(lambda: len(replies_by_id(b, "jobs-done")) == 5, 60, "the leader to deliver")
    # the leader made the mapping's consumer where the mapping began (the follower made no
    # commit) and acknowledged the five events
    wait_for(lambda: nats.consumers("SKIFF_EV_jobs").get("map-" + made, {}).get(
        "ack_floor", {}).get("stream_seq") == 5, 30, "the consumer's floor past the five events")
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    wait_for(lambda: leading(b), LEADER_BOUND_S, "the follower to lead after kill -9")
    for n in range(5, 10):
        assert publish(b, "jobs", {"n": n})[0] == 202
    wait_for(lambda: len(replies_by_id(b, "jobs-done")) == 10, 120,
             "the new leader to deliver the events published after the kill", interval=0.5)
    seen = replies_by_id(b, "jobs-done")
    assert sorted(seen) == list(range(10)), seen
    # the new leader reads on from the consumer's floor, not from where the mapping began
    # in its own memory: what the killed leader acknowledged is not delivered again
    assert all(v == 1 for v in seen.values()), "each event once: %s" % seen
    events = read_all(b, "jobs-done")
    print("after kill -9: %d replies for 10 events (%s)" % (len(events), seen))


def test_a_mapping_changed_through_the_follower_is_delivered_as_changed_by_the_leader(
        shared_pair):
    """A change is the mapping deleted and made again under its id (no update endpoint): the
    leader delivers by the new spec (here: a new reply topic), each event once."""
    a, b = shared_pair
    made = map_event(b, ("app", "echo"), ("topic", "moves"), ("reply_topic", "moves-old"))
    wait_for(lambda: made in mapping_ids(a), SYNC_BOUND_S, "the leader to list the mapping")
    assert publish(b, "moves", {"n": 0})[0] == 202
    wait_for(lambda: replies_by_id(b, "moves-old") == {0: 1}, 60, "the first event delivered")
    status, body = b.api("DELETE", "/v1/event-mappings/%s" % made)
    assert status == 204, body
    again = map_event(b, ("id", made), ("app", "echo"), ("topic", "moves"),
                      ("reply_topic", "moves-new"))
    assert again == made

    def changed_on_leader():
        status, body = a.api("GET", "/v1/event-mappings/%s" % made)
        return status == 200 and body.get("reply_topic") == "moves-new"
    wait_for(changed_on_leader, SYNC_BOUND_S, "the leader to take the changed mapping")
    # its id, once the leader knows it, cannot be taken through the leader to overwrite it
    status, body = a.api("POST", "/v1/event-mappings", {"id": made, "app": "echo",
                                                        "topic": "elsewhere"})
    assert status == 409 and made in body["error"]["message"], (status, body)
    for n in range(1, 4):
        assert publish(a, "moves", {"n": n})[0] == 202
    wait_for(lambda: len(replies_by_id(b, "moves-new")) == 3, 60,
             "the events after the change delivered by the new spec")
    assert replies_by_id(b, "moves-new") == {1: 1, 2: 1, 3: 1}, replies_by_id(b, "moves-new")
    assert replies_by_id(b, "moves-old") == {0: 1}, replies_by_id(b, "moves-old")


def stored_counts(pg_dir, mapping_id):
    text = psql(pg_dir, "SELECT body FROM documents WHERE kind = 'event_mapping' AND id = '%s'"
                % mapping_id).strip()
    return json.loads(text)["stats"]


def test_the_follower_shows_the_leaders_counts_and_the_next_leader_continues_them(
        shared_pair, pg_dir):  # noqa: F811
    a, b = shared_pair
    made = map_event(a, ("app", "echo"), ("topic", "counted"), ("reply_topic", "counted-done"))
    wait_for(lambda: made in mapping_ids(b), SYNC_BOUND_S, "the follower to list the mapping")
    for n in range(6):
        assert publish(a, "counted", {"n": n})[0] == 202
    wait_for(lambda: len(replies_by_id(b, "counted-done")) == 6, 60, "the leader to deliver")
    wait_for(lambda: delivered(b, made) == 6, COUNTS_BOUND_S,
             "the follower to show the counts the leader saved")
    # `skiff event-mappings` through the follower shows them too
    listed = json.loads(b.cli("event-mappings", "--json", check=True, timeout=30).stdout)
    row = [m for m in listed["event_mappings"] if m["id"] == made]
    assert row and row[0]["delivered"] == 6, listed
    seq = stored_counts(pg_dir, made)["seq"]
    assert seq >= 1, stored_counts(pg_dir, made)

    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    wait_for(lambda: leading(b), LEADER_BOUND_S, "the follower to lead after kill -9")
    assert delivered(b, made) == 6, "the new leader starts from the saved counts"
    for n in range(6, 10):
        assert publish(b, "counted", {"n": n})[0] == 202
    wait_for(lambda: len(replies_by_id(b, "counted-done")) == 10, 120,
             "the new leader to deliver the events published after the kill", interval=0.5)
    wait_for(lambda: delivered(b, made) == 10, 10, "the new leader's counts to go on")
    # and what it saves goes on from the stored counts, never back to its own from zero
    wait_for(lambda: stored_counts(pg_dir, made)["delivered"] == 10, COUNTS_BOUND_S,
             "the new leader to save its counts")
    assert stored_counts(pg_dir, made)["seq"] > seq, stored_counts(pg_dir, made)


def test_one_explicit_mapping_id_made_through_two_skiffds_at_once_is_made_once(shared_pair):
    """Of two skiffds making an event mapping with one explicit id at the same moment, one
    answers 201 and the other 409 naming the id; the mapping both list is the winner's."""
    a, b = shared_pair
    ids = ["same-id-%d" % i for i in range(8)]
    results = {}

    def make(p, tag, mapping_id):
        results[(tag, mapping_id)] = p.api("POST", "/v1/event-mappings", {
            "id": mapping_id, "app": "echo", "topic": "raced", "reply_topic": "from-" + tag})

    for mapping_id in ids:
        threads = [threading.Thread(target=make, args=(p, tag, mapping_id))
                   for p, tag in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    for mapping_id in ids:
        got = {tag: results[(tag, mapping_id)] for tag in ("a", "b")}
        made = [tag for tag, (status, _) in got.items() if status == 201]
        assert len(made) == 1, got
        loser = "b" if made == ["a"] else "a"
        status, body = got[loser]
        assert status == 409, got
        assert body["error"]["code"] in ("conflict", "name_taken"), body
        assert mapping_id in body["error"]["message"], body
        # both skiffds come to list the winner's mapping, not the loser's
        for p in (a, b):
            def winners(p=p):
                status, m = p.api("GET", "/v1/event-mappings/%s" % mapping_id)
                return status == 200 and m.get("reply_topic") == "from-" + made[0]
            wait_for(winners, SYNC_BOUND_S, "the winner's mapping listed")


def test_a_mapping_made_through_one_skiffd_is_found_through_the_other_at_once(shared_pair,
                                                                              pg_dir):  # noqa: F811
    """A mapping made through the follower a moment ago, whose change-feed news has not reached
    the leader (here: made with the feed's triggers off, so none ever comes), is read from the
    database when the leader is asked for it by id, and from then on delivered there."""
    a, b = shared_pair
    psql(pg_dir, "ALTER TABLE documents DISABLE TRIGGER USER")
    try:
        made = map_event(b, ("app", "echo"), ("topic", "quiet"), ("reply_topic", "quiet-done"))
    finally:
        psql(pg_dir, "ALTER TABLE documents ENABLE TRIGGER USER")
    status, body = a.api("GET", "/v1/event-mappings/%s" % made)
    assert status == 200, body
    assert body["topic"] == "quiet", body
    assert made in mapping_ids(a)
    # an id no skiffd made is still a 404, through either
    for p in (a, b):
        status, body = p.api("GET", "/v1/event-mappings/%s" % ("0" * 32))
        assert status == 404, body
    status, body = publish(b, "quiet", {"n": 1})
    assert status == 202, body
    wait_for(lambda: len(replies_by_id(b, "quiet-done")) == 1, 60,
             "the event delivered by the leader for the mapping it read")
