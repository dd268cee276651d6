/* err: the one error type for what a caller of Skiff can cause or meet, and the one table that
 * turns it into words. Each error has a name (the "code" of an API error answer), the HTTP
 * status that answers it and a message that says what was wrong; skiff_strerror is to Skiff
 * what uv_strerror is to libuv. A place that knows more (which name, which limit) adds its own
 * detail; the name and status never come from anywhere else.
 *
 * The one error type is an int, as libuv's is: 0 is success, a positive value is one of enum
 * skiff_err (what a request did wrong, decided where requests are answered), and a negative
 * value is a negative errno, which is what the parts below the API (store, fabric, stager,
 * trigger, logs, bus, hub) return: -ENOENT, -EEXIST, -EIO, ... (libuv's own codes are the
 * same values on Linux). The same three functions name, answer and word both halves, from
 * the one table in err.c; skiff_err_from says which API error answers a part's errno. */
#ifndef SKIFF_ERR_H
#define SKIFF_ERR_H

enum skiff_err {
    SKIFF_OK = 0,
    SKIFF_E_BAD_REQUEST,          /* malformed HTTP */
    SKIFF_E_BAD_JSON,             /* a body that is not the JSON asked for */
    SKIFF_E_BAD_EVENT,            /* a body or headers that are not a CloudEvent */
    SKIFF_E_BAD_NAME,             /* a name in the request's syntax (path, query) */
    SKIFF_E_BAD_VALUE,            /* a value in the request's syntax (path, query, header) */
    SKIFF_E_UNKNOWN_FIELD,        /* a JSON field the endpoint does not know */
    SKIFF_E_UNAUTHORIZED,         /* no token, or one that is not (or no longer) valid */
    SKIFF_E_FORBIDDEN,            /* a valid token whose roles do not allow this */
    SKIFF_E_NOT_FOUND,            /* no such endpoint or thing, or not one the caller can see */
    SKIFF_E_METHOD,               /* the path exists, not with this method */
    SKIFF_E_NAME_TAKEN,           /* another thing has this name */
    SKIFF_E_ROUTE_TAKEN,          /* another app has this route */
    SKIFF_E_NOT_EMPTY,            /* deleting a thing that still holds others */
    SKIFF_E_APP_STOPPED,          /* the app must run for this */
    SKIFF_E_STAGING,              /* a staging of the app is under way */
    SKIFF_E_TOO_LARGE,            /* a body over the limit */
    SKIFF_E_HEAD_TOO_LARGE,       /* too many headers, or too long */
    SKIFF_E_INVALID_NAME,         /* a name in the body that breaks the naming rules */
    SKIFF_E_INVALID_VALUE,        /* a value in the body that is not allowed */
    SKIFF_E_NOT_AN_ARCHIVE,       /* an upload that is not a zip or tar */
    SKIFF_E_UNSAFE_ARCHIVE,       /* an archive with entries outside itself */
    SKIFF_E_UNKNOWN_DOMAIN,       /* a route on a domain that is not known */
    SKIFF_E_NOT_STAGED,           /* the app has no droplet yet */
    SKIFF_E_NO_PACKAGE,           /* the app has no uploaded source yet */
    SKIFF_E_NO_DROPLET,           /* the droplet asked for does not exist */
    SKIFF_E_QUOTA,                /* over a quota */
    SKIFF_E_INTERNAL,             /* Skiff itself failed (disk, store, memory) */
    SKIFF_E_FUNCTION_FAILED,      /* a function answered with a failure */
    SKIFF_E_FUNCTION_UNREACHABLE, /* a function could not be reached */
    SKIFF_E_BUSY,                 /* over a server limit for now: try again */
    SKIFF_E_UNAVAILABLE,          /* a part Skiff needs is not there now */
    SKIFF_E_NO_INSTANCE,          /* no instance to take the request */
    SKIFF_E_BROKER,               /* a service broker failed or answered what it may not */
    SKIFF_E_IN_PROGRESS,          /* an operation on the service instance is under way */
    SKIFF_E_BAD_IMAGE,            /* an image (manifest, config, layout) that is not valid */
    SKIFF_E_DIGEST_MISMATCH,      /* a blob whose content does not match its digest */
    SKIFF_E_SSH_DISABLED,         /* ssh is turned off for the app or not allowed in its space */
    SKIFF_E_STAGING_FAILED,       /* a staging ended without a droplet (told in its stream) */
    SKIFF_E_CONFLICT,             /* another writer changed the thing since it was read */
    SKIFF_E_DOMAIN_IN_USE,        /* routes are mapped on the domain to be deleted */
    SKIFF_E_INSUFFICIENT_STORAGE, /* skiffd's own disk is full (or its quota used up) */
    SKIFF_ERR_COUNT
};

/* What went wrong, in a sentence for the user; never NULL (an unknown value has one too). */
const char *skiff_strerror(int err);
/* The stable name, e.g. "not_found": the "code" of an API error answer. */
const char *skiff_err_name(int err);
/* The HTTP status that answers it (500 for an unknown value). */
int skiff_err_http_status(int err);
/* The API error that answers err: a negative errno's row in the table (SKIFF_E_INTERNAL for
 * one it does not have), an enum skiff_err as it is. */
enum skiff_err skiff_err_from(int err);
/* The API error that answers a failure of skiffd writing its own disk (a negative errno):
 * full or over its quota (ENOSPC, EDQUOT) is insufficient_storage (507), anything else (EIO,
 * ...) internal (500). Not for a tenant's own quota (an app's disk: SKIFF_E_QUOTA). The
 * message, with what failed, is the caller's, worded by skiff_strerror(err). */
enum skiff_err skiff_err_disk(int err);

#endif
