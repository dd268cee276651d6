/* libFuzzer target: what a service broker may answer. The input is a catalog (validated, then
 * searched and its first plan's schema used to check the input itself as parameters), an
 * error body (described for the user), and a binding's answer shown through VCAP_SERVICES.
 * Nothing a broker sends may crash skiffd or put control characters in front of a user. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "services/services.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *doc = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    if (!doc)
        return 0;
    char err[256];
    if (services_catalog_validate(doc, err, sizeof err) == 0) {
        json_t *svc = json_array_get(json_object_get(doc, "services"), 0);
        json_t *plan = json_array_get(json_object_get(svc, "plans"), 0);
        json_t *o = NULL, *p = NULL;
        if (svc && !services_catalog_find(doc, json_string_value(json_object_get(svc, "name")),
                                          json_string_value(json_object_get(plan, "id")), &o, &p))
            abort(); /* a valid catalog's first plan is found by its offering's name */
        static const char *const what[] = {"service_instance.create", "service_instance.update",
                                           "service_binding.create"};
        for (size_t i = 0; i < 3; i++)
            services_parameters_check(plan, what[i], doc, err, sizeof err);
    }
    struct services_osb_call call = {.json = doc};
    char out[400];
    services_osb_describe(&call, out, sizeof out);
    for (const char *c = out; *c; c++)
        if ((unsigned char)*c < 0x20)
            abort();
    json_t *inst = json_pack("{s:s,s:s,s:s,s:s}", "guid", "i", "name", "n", "type", "managed",
                             "service_name", "s");
    json_t *vcap = json_object();
    struct services_vcap_binding b = {.instance = inst,
                                      .binding = doc,
                                      .credentials = json_object_get(doc, "credentials"),
                                      .service_tags = json_object_get(doc, "tags")};
    services_vcap_add(vcap, &b);
    char *text = json_dumps(vcap, JSON_COMPACT);
    if (!text)
        abort(); /* VCAP_SERVICES is always JSON */
    free(text);
    json_decref(vcap);
    json_decref(inst);
    json_decref(doc);
    return 0;
}
