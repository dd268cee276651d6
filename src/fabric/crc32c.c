/* CRC32C (Castagnoli), the checksum of every fabric record: the SSE4.2 instruction where the
 * CPU has it (several GB/s), a table otherwise. */
#include "fabric/fabric_internal.h"

#include <stdbool.h>
#include <string.h>

static uint32_t crc32c_table[256];
static bool crc32c_table_ready;

static void crc32c_table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[i] = c;
    }
    crc32c_table_ready = true;
}

static uint32_t crc32c_soft(uint32_t crc, const uint8_t *p, size_t len)
{
    if (!crc32c_table_ready)
        crc32c_table_init();
    while (len--)
        crc = crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p,
                                                            size_t len)
{
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

uint32_t fabric_crc32c(uint32_t crc, const void *data, size_t len)
{
    crc = ~crc;
#if defined(__x86_64__)
    static int have_hw = -1;
    if (have_hw < 0)
        have_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    if (have_hw)
        return ~crc32c_hw(crc, data, len);
#endif
    return ~crc32c_soft(crc, data, len);
}
