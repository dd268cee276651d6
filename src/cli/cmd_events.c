/* cmd_events: the `skiff` commands for events and functions (emit, topics, tail, map-event,
 * unmap-event, event-mappings, replay, invoke). Add a row to cli_events_commands for each, with
 * its handler in this file; the table must end with the NULL row. See cli.h for the helpers. */
#include "cli/cli.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/util.h"

/* ---- publishing: emit, topics, tail ------------------------------------------------------- */

/* Reads all of stdin (for `skiff emit TOPIC -`). */
static int events_read_stdin(struct buf *out)
{
    char chunk[65536];
    for (;;) {
        ssize_t n = read(0, chunk, sizeof(chunk));
        if (n < 0)
            return cli_error("cannot read the event data from standard input");
        if (n == 0)
            return 0;
        buf_append(out, chunk, (size_t)n);
    }
}

static int cmd_emit(const struct cli_command *cmd, int argc, char **argv)
{
    const char *type = NULL, *source = NULL, *subject = NULL, *content_type = NULL, *id = NULL;
    struct cli_option opts[] = {
        {"type", 't', CLI_OPT_STRING, &type},
        {"source", 's', CLI_OPT_STRING, &source},
        {"subject", 0, CLI_OPT_STRING, &subject},
        {"id", 0, CLI_OPT_STRING, &id},
        {"content-type", 'c', CLI_OPT_STRING, &content_type},
        {NULL, 0, 0, NULL},
    };
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *topic = args.items[0];
    struct buf data = {0};
    if (args.count == 2 && !strcmp(args.items[1], "-")) {
        if ((rc = events_read_stdin(&data)) != 0) {
            buf_free(&data);
            return rc;
        }
    } else if (args.count == 2) {
        buf_puts(&data, args.items[1]);
    }
    if (!content_type && data.len) {
        json_t *probe = json_loadb(data.data, data.len, JSON_DECODE_ANY, NULL);
        content_type = probe ? "application/json" : "text/plain; charset=utf-8";
        json_decref(probe);
    }

    /* Binary mode with the attributes the user gave; the API wraps a bare body itself. */
    char gen_id[37];
    char *hdr[8] = {0};
    int nh = 0;
    if (type || source || subject || id) {
        if (!id) {
            uuid_generate_v4(gen_id);
            id = gen_id;
        }
        hdr[nh++] = xasprintf("ce-specversion: 1.0");
        hdr[nh++] = xasprintf("ce-id: %s", id);
        hdr[nh++] = xasprintf("ce-type: %s", type ? type : "skiff.event");
        hdr[nh++] = xasprintf("ce-source: %s", source ? source : "/skiff/cli");
        if (subject)
            hdr[nh++] = xasprintf("ce-subject: %s", subject);
    }
    char *path_topic = cli_escape(topic);
    char *path = xasprintf("/v1/topics/%s/events", path_topic);
    struct cli_request req = {
        .method = "POST",
        .path = path,
        .body = data.data ? data.data : "",
        .body_len = data.len,
        .content_type = content_type,
        .headers = (const char *const *)hdr,
        .timeout_s = 60,
    };
    struct cli_response res = {0};
    rc = cli_http(&req, &res);
    if (rc == 0) {
        if (cli_json_output)
            cli_print_json(res.json);
        else
            printf("published %s to %s at offset %lld\n", cli_json_str(res.json, "id"), topic,
                   cli_json_int(res.json, "offset"));
    }
    cli_response_free(&res);
    for (int i = 0; i < nh; i++)
        free(hdr[i]);
    free(path);
    free(path_topic);
    buf_free(&data);
    return rc;
}

static int cmd_topics(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_option opts[] = {{NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *out = NULL;
    if ((rc = cli_api("GET", "/v1/topics", NULL, &out)) != 0)
        return rc;
    if (cli_json_output) {
        cli_print_json(out);
        json_decref(out);
        return 0;
    }
    json_t *topics = json_object_get(out, "topics");
    if (json_array_size(topics) == 0) {
        printf("no topics yet: publish with `skiff emit TOPIC DATA`\n");
        json_decref(out);
        return 0;
    }
    static const char *const headers[] = {"name", "events", "bytes", "offsets", "last event", NULL};
    struct cli_table *t = cli_table_new(headers);
    size_t i;
    json_t *tp;
    json_array_foreach(topics, i, tp)
    {
        char events[32], bytes[32], offsets[64];
        snprintf(events, sizeof(events), "%lld", cli_json_int(tp, "events"));
        snprintf(bytes, sizeof(bytes), "%lld", cli_json_int(tp, "bytes"));
        if (cli_json_int(tp, "events") > 0)
            snprintf(offsets, sizeof(offsets), "%lld-%lld", cli_json_int(tp, "first_offset"),
                     cli_json_int(tp, "last_offset"));
        else
            snprintf(offsets, sizeof(offsets), "-");
        cli_table_add(t, cli_json_str(tp, "name"), events, bytes, offsets,
                      cli_json_str(tp, "last_event_at"));
    }
    cli_table_print(t);
    json_decref(out);
    return 0;
}

/* One ndjson line of a tail: printed as "OFFSET TIME TYPE [SUBJECT] DATA". */
static int tail_line(const char *line, size_t len, void *arg)
{
    if (cli_json_output) {
        fwrite(line, 1, len, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        return 0;
    }
    json_t *ev = json_loadb(line, len, 0, NULL);
    if (!ev)
        return 0;
    json_t *data = json_object_get(ev, "data");
    char *data_text = NULL;
    if (json_is_string(data))
        data_text = xstrdup(json_string_value(data));
    else if (data)
        data_text = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
    else if (json_object_get(ev, "data_base64"))
        data_text = xasprintf("(base64) %s", cli_json_str(ev, "data_base64"));
    const char *subject = cli_json_str(ev, "subject");
    printf("#%lld %s %s%s%s %s\n", cli_json_int(ev, "offset"), cli_json_str(ev, "time"),
           cli_json_str(ev, "type"), *subject ? " " : "", subject, data_text ? data_text : "");
    fflush(stdout);
    free(data_text);
    json_decref(ev);
    return 0;
}

static int cmd_tail(const struct cli_command *cmd, int argc, char **argv)
{
    const char *from = NULL;
    bool no_follow = false;
    long limit = -1;
    struct cli_option opts[] = {
        {"from", 'f', CLI_OPT_STRING, &from},
        {"no-follow", 0, CLI_OPT_FLAG, &no_follow},
        {"limit", 'n', CLI_OPT_INT, &limit},
        {NULL, 0, 0, NULL},
    };
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    char *topic = cli_escape(args.items[0]);
    struct buf path = {0};
    buf_printf(&path, "/v1/topics/%s/events?follow=%d", topic, no_follow ? 0 : 1);
    if (from) {
        char *f = cli_escape(from);
        buf_printf(&path, "&from=%s", f);
        free(f);
    }
    if (limit >= 0)
        buf_printf(&path, "&limit=%ld", limit);
    struct cli_request req = {
        .method = "GET",
        .path = path.data,
        .on_line = tail_line,
        .timeout_s = 0,
    };
    struct cli_response res = {0};
    rc = cli_http(&req, &res);
    cli_response_free(&res);
    buf_free(&path);
    free(topic);
    return rc;
}

static const char emit_help[] =
    "  DATA is the event's data (JSON is sent as application/json); '-' reads standard input.\n"
    "  With --type, --source, --subject or --id the event is sent in CloudEvents binary mode;\n"
    "  without them the platform wraps it (generated id, type skiff.event).\n"
    "  -c, --content-type T   the data's media type\n"
    "  example: skiff emit uploads --type image.uploaded --subject cat.png '{\"size\": 42}'";

static const char tail_help[] =
    "  --from       where to start: end (default), start, an offset, an RFC 3339 time or\n"
    "               a duration ago such as 10m\n"
    "  --no-follow  stop at the last event instead of waiting for more\n"
    "  -n, --limit  stop after N events\n"
    "  --json       print each event as its CloudEvents JSON";

const struct cli_command cli_events_commands[] = {
    /* publishing and watching */
    {"emit", "emit TOPIC [--type T] [--source S] [--subject S] [--id ID] [DATA|-]",
     "publish an event to a topic", emit_help, cmd_emit},
    {"topics", "topics", "list topics with their event counts", NULL, cmd_topics},
    {"tail", "tail TOPIC [--from start|end|OFFSET|TIME|10m] [--no-follow] [-n N]",
     "print a topic's events, and follow new ones as they are published", tail_help, cmd_tail},
    /* mappings and functions */
    {NULL, NULL, NULL, NULL, NULL},
};
