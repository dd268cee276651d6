#include "common/err.h"

#include <errno.h>
#include <string.h>

static const struct {
    const char *name;
    int status;
    const char *message;
} err__table[SKIFF_ERR_COUNT] = {
    [SKIFF_OK] = {"ok", 200, "no error"},
    [SKIFF_E_BAD_REQUEST] = {"invalid_request", 400, "malformed HTTP request"},
    [SKIFF_E_BAD_JSON] = {"invalid_json", 400, "the body is not the JSON this endpoint takes"},
    [SKIFF_E_BAD_EVENT] = {"invalid_event", 400, "the request is not a CloudEvent"},
    [SKIFF_E_BAD_NAME] = {"invalid_name", 400, "a name in the request is not valid"},
    [SKIFF_E_BAD_VALUE] = {"invalid_value", 400, "a value in the request is not valid"},
    [SKIFF_E_UNKNOWN_FIELD] = {"unknown_field", 400,
                               "the body has a field this endpoint does not know"},
    [SKIFF_E_UNAUTHORIZED] = {"unauthorized", 401, "this needs a valid token: `skiff login`"},
    [SKIFF_E_FORBIDDEN] = {"forbidden", 403, "your roles do not allow this"},
    [SKIFF_E_NOT_FOUND] = {"not_found", 404, "not found"},
    [SKIFF_E_METHOD] = {"method_not_allowed", 405, "this method is not allowed on this path"},
    [SKIFF_E_NAME_TAKEN] = {"name_taken", 409, "the name is taken"},
    [SKIFF_E_ROUTE_TAKEN] = {"route_taken", 409, "the route belongs to another app"},
    [SKIFF_E_NOT_EMPTY] = {"not_empty", 409, "it still holds other things: delete them first"},
    [SKIFF_E_APP_STOPPED] = {"app_stopped", 409, "the app is stopped: start it first"},
    [SKIFF_E_STAGING] = {"staging_in_progress", 409, "the app is being staged: wait for it"},
    [SKIFF_E_TOO_LARGE] = {"too_large", 413, "the body is larger than the limit"},
    [SKIFF_E_HEAD_TOO_LARGE] = {"too_large", 431, "the request's headers are too large"},
    [SKIFF_E_INVALID_NAME] = {"invalid_name", 422, "the name is not valid"},
    [SKIFF_E_INVALID_VALUE] = {"invalid_value", 422, "a value is not valid"},
    [SKIFF_E_NOT_AN_ARCHIVE] = {"not_an_archive", 422, "the upload is not a zip or tar archive"},
    [SKIFF_E_UNSAFE_ARCHIVE] = {"unsafe_archive", 422, "the archive has entries outside itself"},
    [SKIFF_E_UNKNOWN_DOMAIN] = {"unknown_domain", 422,
                                "no such domain: `skiff domains` lists them"},
    [SKIFF_E_NOT_STAGED] = {"not_staged", 422, "the app is not staged: `skiff push` it"},
    [SKIFF_E_NO_PACKAGE] = {"no_package", 422, "the app has no uploaded source: `skiff push` it"},
    [SKIFF_E_NO_DROPLET] = {"no_droplet", 422, "no such droplet"},
    [SKIFF_E_QUOTA] = {"quota_exceeded", 422, "over the quota"},
    [SKIFF_E_INTERNAL] = {"internal", 500, "skiffd failed: its log says why"},
    [SKIFF_E_FUNCTION_FAILED] = {"function_failed", 502, "the function failed"},
    [SKIFF_E_FUNCTION_UNREACHABLE] = {"function_unreachable", 502,
                                      "the function could not be reached"},
    [SKIFF_E_BUSY] = {"busy", 503, "the server is busy: try again"},
    [SKIFF_E_UNAVAILABLE] = {"unavailable", 503, "a part skiffd needs is not available now"},
    [SKIFF_E_NO_INSTANCE] = {"no_instance", 503, "no instance is there to take it"},
    [SKIFF_E_BROKER] = {"broker_error", 502, "the service broker failed"},
    [SKIFF_E_IN_PROGRESS] = {"operation_in_progress", 409,
                             "an operation on the service instance is under way: wait for it"},
    [SKIFF_E_BAD_IMAGE] = {"invalid_image", 422, "the image is not a valid OCI or Docker image"},
    [SKIFF_E_DIGEST_MISMATCH] = {"digest_mismatch", 422,
                                 "a blob of the image does not match its digest"},
    [SKIFF_E_SSH_DISABLED] = {"ssh_disabled", 409,
                              "ssh is disabled for the app or not allowed in its space"},
    [SKIFF_E_STAGING_FAILED] = {"staging_failed", 422,
                                "staging failed: `skiff logs APP --recent` says why"},
    [SKIFF_E_CONFLICT] = {"conflict", 409,
                          "it was changed by someone else meanwhile: read it again and retry"},
    [SKIFF_E_DOMAIN_IN_USE] = {"domain_in_use", 422,
                               "routes use the domain: `skiff unmap-route` them first"},
    [SKIFF_E_INSUFFICIENT_STORAGE] = {"insufficient_storage", 507,
                                      "skiffd's disk is full: free space on it"},
};

/* The errno values the parts below the API return, each with the API error that answers it
 * and, where Skiff has more to say than the C library, its own words (else strerror's). */
static const struct {
    int errnum;
    enum skiff_err err;
    const char *message;
} err__errno_table[] = {
    {ENOENT, SKIFF_E_NOT_FOUND, "not found"},
    {EEXIST, SKIFF_E_NAME_TAKEN, "it exists already"},
    {ENOTEMPTY, SKIFF_E_NOT_EMPTY, NULL},
    {EINVAL, SKIFF_E_INVALID_VALUE, NULL},
    {EMSGSIZE, SKIFF_E_TOO_LARGE, "it is larger than the limit: make it smaller"},
    {E2BIG, SKIFF_E_TOO_LARGE, NULL},
    {EFBIG, SKIFF_E_TOO_LARGE, NULL},
    {ENOSPC, SKIFF_E_INSUFFICIENT_STORAGE, "the disk is full: free space on it"},
    {EDQUOT, SKIFF_E_QUOTA, NULL},
    {EIO, SKIFF_E_INTERNAL,
     "a disk or a backend failed (input/output error): skiffd's log says "
     "which"},
    {ECANCELED, SKIFF_E_UNAVAILABLE, "skiffd is shutting down: retry once it is back"},
    /* skiffd aborts when its own allocations fail: an ENOMEM from a part is the kernel's
     * passing pressure (socket buffers, a cgroup), as ENOBUFS is */
    {ENOMEM, SKIFF_E_BUSY, "the kernel is short of memory right now: retry in a moment"},
    {ENOBUFS, SKIFF_E_BUSY, "the kernel is short of buffers right now: retry in a moment"},
    {EMFILE, SKIFF_E_BUSY, "skiffd has too many files open right now: retry in a moment"},
    {ENFILE, SKIFF_E_BUSY, "the system has too many files open right now: retry in a moment"},
    {EAGAIN, SKIFF_E_BUSY, "skiffd is short of resources right now: retry in a moment"},
    {EBUSY, SKIFF_E_BUSY, "busy right now: retry in a moment"},
    {ESTALE, SKIFF_E_CONFLICT, "it was changed by someone else meanwhile: read it again and retry"},
    {ETIMEDOUT, SKIFF_E_UNAVAILABLE, NULL},
    {ENOTCONN, SKIFF_E_UNAVAILABLE, NULL},
    {ENOTSUP, SKIFF_E_UNAVAILABLE, NULL},
    {ENOSYS, SKIFF_E_UNAVAILABLE, NULL},
    {ESRCH, SKIFF_E_NO_INSTANCE, "the instance is gone or stopping"},
    {ECONNREFUSED, SKIFF_E_UNAVAILABLE, NULL},
    {ECONNRESET, SKIFF_E_UNAVAILABLE, NULL},
    {EPIPE, SKIFF_E_UNAVAILABLE, NULL},
    {EACCES, SKIFF_E_INTERNAL, NULL},
    {EPERM, SKIFF_E_INTERNAL, NULL},
    {EBADMSG, SKIFF_E_BAD_VALUE, NULL},
    {ERANGE, SKIFF_E_BAD_VALUE, NULL},
};

static int err__errno_row(int err)
{
    for (size_t i = 0; i < sizeof err__errno_table / sizeof err__errno_table[0]; i++)
        if (err__errno_table[i].errnum == -err)
            return (int)i;
    return -1;
}

static int err__known(int err)
{
    return err >= 0 && err < SKIFF_ERR_COUNT && err__table[err].name;
}

enum skiff_err skiff_err_from(int err)
{
    if (err >= 0)
        return err__known(err) ? (enum skiff_err)err : SKIFF_E_INTERNAL;
    int row = err__errno_row(err);
    return row >= 0 ? err__errno_table[row].err : SKIFF_E_INTERNAL;
}

enum skiff_err skiff_err_disk(int err)
{
    return err == -ENOSPC || err == -EDQUOT ? SKIFF_E_INSUFFICIENT_STORAGE : SKIFF_E_INTERNAL;
}

const char *skiff_strerror(int err)
{
    if (err < 0) {
        int row = err__errno_row(err);
        if (row >= 0 && err__errno_table[row].message)
            return err__errno_table[row].message;
        /* glibc's words for an errno are static strings; an unknown one gets "Unknown error" */
        return err > -4096 ? strerror(-err) : "unknown error";
    }
    return err__known(err) ? err__table[err].message : "unknown error";
}

const char *skiff_err_name(int err)
{
    return err__table[skiff_err_from(err)].name;
}

int skiff_err_http_status(int err)
{
    return err__table[skiff_err_from(err)].status;
}
