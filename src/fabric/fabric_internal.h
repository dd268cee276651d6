/* fabric internals shared by the embedded backend's files and its unit tests; not part of the
 * contract (see fabric.h).
 *
 * On disk, a fabric folder holds:
 *   topics/NAME/OFFSET.log   segments: OFFSET (20 digits) is the first record's offset
 *   topics/NAME/OFFSET.idx   index of a sealed segment (rebuilt when missing or stale)
 *   cursors.log              cursor commits, the last one per (topic, consumer) wins
 * Both are sequences of records, each:
 *   u32 payload length | u32 CRC32C of the rest | u64 offset | i64 time (ms) | payload
 * little-endian. A record whose length, offset or CRC does not check out ends the valid part
 * of a file; at open, everything from it on is cut (a write torn by a crash). */
#ifndef SKIFF_FABRIC_INTERNAL_H
#define SKIFF_FABRIC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#define FABRIC_RECORD_HEADER 24
/* Nothing longer is a record, whatever the configuration: a length above it is garbage. */
#define FABRIC_RECORD_HARD_MAX (64u << 20)
#define FABRIC_SEGMENT_NAME_FMT "%020llu.log"
/* The sparse index of a sealed segment, written once the segment is durable (a cache). */
#define FABRIC_INDEX_NAME_FMT "%020llu.idx"

uint32_t fabric_crc32c(uint32_t crc, const void *data, size_t len);

#endif
