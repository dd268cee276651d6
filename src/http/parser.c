#include "http/parser.h"

#include <stdbool.h>

static llhttp_settings_t parser__settings[HTTP_ROLE_COUNT];
static bool parser__ready[HTTP_ROLE_COUNT];

void http_parser_init(llhttp_t *p, enum http_role role, http_settings_fill_fn fill, void *data)
{
    if (!parser__ready[role]) {
        llhttp_settings_init(&parser__settings[role]);
        fill(&parser__settings[role]);
        parser__ready[role] = true;
    }
    llhttp_init(p, role == HTTP_ROLE_SERVER ? HTTP_REQUEST : HTTP_RESPONSE,
                &parser__settings[role]);
    p->data = data;
}
