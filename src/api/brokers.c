/* The managed side of services: service brokers (Open Service Broker API), the marketplace,
 * and the operations that go through a broker. */
#include "api/svc_internal.h"
#include "services/services.h"

#define SVC_NO_BROKER "no service broker offers this yet: `skiff marketplace` lists what there is"

void svc__brokers_register(struct api_svc *a)
{
    (void)a;
}
void svc__brokers_stop(struct api_svc *a)
{
    (void)a;
}

void svc__managed_create(struct api_svc *a, struct api_request *req, json_t *body)
{
    api_respond_error(req, SKIFF_E_INVALID_VALUE, SVC_NO_BROKER);
}
void svc__managed_update(struct api_svc *a, struct api_request *req, json_t *inst, json_t *body)
{
    api_respond_error(req, SKIFF_E_INVALID_VALUE, SVC_NO_BROKER);
}
void svc__managed_delete(struct api_svc *a, struct api_request *req, json_t *inst)
{
    api_respond_error(req, SKIFF_E_INVALID_VALUE, SVC_NO_BROKER);
}
void svc__managed_bind(struct api_svc *a, struct api_request *req, json_t *inst, json_t *bind,
                       json_t *params, const struct store_app *app)
{
    api_respond_error(req, SKIFF_E_INVALID_VALUE, SVC_NO_BROKER);
}
void svc__managed_unbind(struct api_svc *a, struct api_request *req, json_t *inst, json_t *bind)
{
    api_respond_error(req, SKIFF_E_INVALID_VALUE, SVC_NO_BROKER);
}
void svc__managed_forget_binding(struct api_svc *a, json_t *inst, json_t *bind)
{
    services_delete(a->records, SERVICES_KIND_BINDING, svc__str(bind, "guid"));
}
