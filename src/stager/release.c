/* stager's parsers: see release.h. */
#include "stager/release.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <yaml.h>

#include "common/util.h"

static yaml_node_t *release__map_get(yaml_document_t *doc, yaml_node_t *map, const char *key)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(doc, p->key);
        if (k && k->type == YAML_SCALAR_NODE && strlen(key) == k->data.scalar.length &&
            memcmp(k->data.scalar.value, key, k->data.scalar.length) == 0)
            return yaml_document_get_node(doc, p->value);
    }
    return NULL;
}

json_t *stager_release_parse(const char *yaml, size_t len, char *err, size_t errsize)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    json_t *types = NULL;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
    if (!yaml_parser_load(&parser, &doc)) {
        snprintf(err, errsize, "bin/release printed broken YAML (line %zu: %s)",
                 parser.problem_mark.line + 1, parser.problem ? parser.problem : "parse error");
        yaml_parser_delete(&parser);
        return NULL;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root || (root->type == YAML_SCALAR_NODE && root->data.scalar.length == 0)) {
        types = json_object(); /* an empty release: no default process types */
        goto done;
    }
    if (root->type != YAML_MAPPING_NODE) {
        snprintf(err, errsize, "bin/release must print a YAML map (with default_process_types)");
        goto done;
    }
    yaml_node_t *map = release__map_get(&doc, root, "default_process_types");
    types = json_object();
    if (!map || (map->type == YAML_SCALAR_NODE && map->data.scalar.length == 0))
        goto done;
    if (map->type != YAML_MAPPING_NODE) {
        snprintf(err, errsize,
                 "bin/release: default_process_types must map process names to commands");
        json_decref(types);
        types = NULL;
        goto done;
    }
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(&doc, p->key);
        yaml_node_t *v = yaml_document_get_node(&doc, p->value);
        if (!k || !v || k->type != YAML_SCALAR_NODE || v->type != YAML_SCALAR_NODE ||
            k->data.scalar.length == 0) {
            snprintf(err, errsize,
                     "bin/release: default_process_types must map process names to commands "
                     "(line %zu)",
                     (k ? k->start_mark.line : 0) + 1);
            json_decref(types);
            types = NULL;
            goto done;
        }
        char *name = xstrndup((const char *)k->data.scalar.value, k->data.scalar.length);
        json_object_set_new(
            types, name, json_stringn((const char *)v->data.scalar.value, v->data.scalar.length));
        free(name);
    }
done:
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return types;
}

json_t *stager_procfile_parse(const char *text, size_t len, char *err, size_t errsize)
{
    json_t *types = json_object();
    size_t line_no = 0;
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        line_no++;
        const char *s = p, *e = eol;
        p = eol < end ? eol + 1 : end;
        while (s < e && isspace((unsigned char)*s))
            s++;
        while (e > s && isspace((unsigned char)e[-1]))
            e--;
        if (s == e || *s == '#')
            continue;
        const char *colon = memchr(s, ':', (size_t)(e - s));
        const char *name_end = colon;
        while (name_end && name_end > s && isspace((unsigned char)name_end[-1]))
            name_end--;
        bool name_ok = colon && name_end > s;
        for (const char *c = s; name_ok && c < name_end; c++)
            name_ok = isalnum((unsigned char)*c) || *c == '_' || *c == '-';
        const char *cmd = colon ? colon + 1 : NULL;
        while (cmd && cmd < e && isspace((unsigned char)*cmd))
            cmd++;
        if (!name_ok || cmd >= e) {
            snprintf(err, errsize,
                     "Procfile line %zu is not 'name: command' (e.g. 'web: python3 app.py')",
                     line_no);
            json_decref(types);
            return NULL;
        }
        char *name = xstrndup(s, (size_t)(name_end - s));
        json_object_set_new(types, name, json_stringn(cmd, (size_t)(e - cmd)));
        free(name);
    }
    return types;
}
