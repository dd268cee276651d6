/* container internals shared by its files; not part of the contract. */
#ifndef SKIFF_CONTAINER_INTERNAL_H
#define SKIFF_CONTAINER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

/* Attaches image to a free loop device (autoclear) and mounts its ext4 at dir. */
int container__disk_mount(const char *image, const char *dir, char *err, size_t errlen);

/* The same as a detached mount (fsmount): returns its fd (close-on-exec; the caller owns it),
 * which move_mount(2) attaches anywhere. Closed unattached, the mount and its loop device go. */
int container__disk_mount_detached(const char *image, char *err, size_t errlen);

/* A new disk of size_mb (an image of pool_dir's, or a new one) mounted detached: its fd. The
 * image is unlinked once the loop device holds it. */
int container__disk_make_detached(const char *pool_dir, int size_mb, char *err, size_t errlen);

/* A mounted disk of size_mb from the disk server of pool_dir (container_disk_server_start):
 * its detached mount's fd (the caller owns it), or a negative errno when no server answers
 * at once or it has none of that size ready (the caller then makes its own). */
int container__disk_receive(const char *pool_dir, int size_mb);

struct container_config;
/* In a root made of an image's layers (config image_layers), the mount points and the stack's
 * /etc/hosts and /etc/resolv.conf, with no symbolic link of the image ever followed. */
int container__image_root(const struct container_config *cfg, const char *root, char *err,
                          size_t errlen);

struct container_start;
/* A start as it travels to a warm container (JSON), and back: the strings of *out are
 * owned by it until container__start_clear. */
char *container__start_to_json(const struct container_start *start);
struct container__start {
    char *hostname, *app_dir;
    char **argv, **envp;
    bool afresh;
};
int container__start_from_json(const char *text, struct container__start *out, char *err,
                               size_t errlen);
void container__start_clear(struct container__start *s);

/* Becomes what a container's own processes run as: a session of its own, uid:gid (uid 0:
 * vcap; an image's User otherwise), no capabilities (bounding, ambient and inheritable sets
 * too), no_new_privs, the rlimits, the seccomp filter. The caller is its namespaces' root. 0,
 * or a negative errno with err filled. */
int container__drop(unsigned uid, unsigned gid, char *err, size_t errlen);
/* The words of argv when it is `/bin/sh -c 'exec WORDS'` and the shell would do nothing to
 * WORDS but split them on blanks (no quote, expansion, glob, redirection, comment or leading
 * assignment): they are then run without the shell. NULL otherwise. The words point into
 * one allocation, words[0]'s; free(words[0]) and free(words). */
char **container__shell_words(char *const argv[]);
/* container__drop, then execvp(argv) with envp. Returns only on failure: a negative errno
 * (-ENOENT: no such program) with err filled. */
int container__program_exec(char *const argv[], char *const envp[], unsigned uid, unsigned gid,
                            char *err, size_t errlen);

#endif
