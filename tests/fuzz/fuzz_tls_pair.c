/* libFuzzer target: arbitrary bytes as the certificate chain and key a user gives a domain
 * (`skiff update-domain D --cert --key`, PUT /v1/domains/D/certificate). The first byte says
 * where the certificate ends and the key begins; tls_pair_check must answer 0 or an error
 * message, never crash, leak or trip a sanitizer, and never leave OpenSSL's error queue
 * full. */
#include <openssl/err.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tls/tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t split = (size_t)data[0] * (size - 1) / 255;
    const char *cert = (const char *)data + 1, *key = cert + split;
    char err[512];
    struct tls_cert_info info;
    int r = tls_pair_check(cert, split, key, size - 1 - split, "shop.example.test", &info, err,
                           sizeof err);
    if (r < 0 && !err[0])
        __builtin_trap(); /* every refusal says why */
    if (ERR_peek_error())
        __builtin_trap();
    return 0;
}
