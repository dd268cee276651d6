/* container internals shared by its files; not part of the contract. */
#ifndef SKIFF_CONTAINER_INTERNAL_H
#define SKIFF_CONTAINER_INTERNAL_H

#include <stddef.h>

/* Attaches image to a free loop device (autoclear) and mounts its ext4 at dir. */
int container__disk_mount(const char *image, const char *dir, char *err, size_t errlen);

#endif
