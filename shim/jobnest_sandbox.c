/* jobnest-sandbox: starts a local job confined as `confine.Sandbox` decides, in one exec (the
 * shell and mount(8) that do the same cost a dozen execs, 20 ms a job).
 *
 * usage: jobnest-sandbox STDERR HOME READONLY CWD KEEP... -- COVER... -- COMMAND...
 *
 * In a mount namespace of its own: HOME becomes an empty tmpfs into which each KEEP (a folder
 * under HOME) is bound back, READONLY (one of them) is made read-only, each COVER that exists
 * is covered by /dev/null; then, in CWD, COMMAND runs with no capabilities (empty bounding and
 * inheritable sets, no ambient ones, no new privileges). Its errors, and the command's stderr,
 * go to STDERR (appended). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static void fail(const char *what, const char *path) {
    dprintf(2, "jobnest-sandbox: %s %s: %s\n", what, path, strerror(errno));
    exit(126);
}

static void make_folders(const char *path) {
    char buf[4096];
    if (strlen(path) >= sizeof buf) {
        errno = ENAMETOOLONG;
        fail("mkdir", path);
    }
    strcpy(buf, path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(buf, 0755);
            *p = '/';
        }
    }
    if (mkdir(buf, 0755) && errno != EEXIST)
        fail("mkdir", buf);
}

static int until_separator(char **args, int from, int argc) {
    while (from < argc && strcmp(args[from], "--") != 0)
        from++;
    return from;
}

int main(int argc, char **argv) {
    if (argc < 8) {
        dprintf(2, "usage: jobnest-sandbox STDERR HOME READONLY CWD KEEP... -- COVER... -- COMMAND...\n");
        return 2;
    }
    const char *home = argv[2], *readonly = argv[3], *cwd = argv[4];
    int err = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (err < 0 || dup2(err, 2) < 0)
        fail("open", argv[1]);
    close(err);
    int keep_end = until_separator(argv, 5, argc);
    int cover_end = until_separator(argv, keep_end + 1, argc);
    if (cover_end + 1 >= argc) {
        errno = EINVAL;
        fail("no command after", "the second --");
    }
    int keeps = keep_end - 5, fds[keeps > 0 ? keeps : 1];

    if (unshare(CLONE_NEWNS))
        fail("unshare", "the mount namespace");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
        fail("make private", "/");
    for (int k = 0; k < keeps; k++) /* opened before HOME is covered: then bound back */
        if ((fds[k] = open(argv[5 + k], O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
            fail("open", argv[5 + k]);
    if (mount("jobnest", home, "tmpfs", 0, "mode=0755,size=64k"))
        fail("mount a tmpfs on", home);
    for (int k = 0; k < keeps; k++) {
        char source[64];
        snprintf(source, sizeof source, "/proc/self/fd/%d", fds[k]);
        make_folders(argv[5 + k]);
        if (mount(source, argv[5 + k], NULL, MS_BIND, NULL))
            fail("bind back", argv[5 + k]);
        close(fds[k]);
    }
    if (mount(NULL, readonly, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL))
        fail("make read-only", readonly);
    for (int c = keep_end + 1; c < cover_end; c++)
        if (access(argv[c], F_OK) == 0 && mount("/dev/null", argv[c], NULL, MS_BIND, NULL))
            fail("cover", argv[c]);
    if (chdir(cwd))
        fail("chdir", cwd);

    for (int cap = 0; cap <= 63; cap++) /* up to the kernel's last: it refuses the rest */
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) && errno != EINVAL)
            fail("drop capability", "from the bounding set");
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct caps[2];
    if (syscall(SYS_capget, &header, caps))
        fail("capget", "");
    caps[0].inheritable = caps[1].inheritable = 0;
    if (syscall(SYS_capset, &header, caps))
        fail("capset", "");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) && errno != EINVAL)
        fail("clear", "ambient capabilities");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        fail("set", "no new privileges");
    execvp(argv[cover_end + 1], argv + cover_end + 1);
    fail("exec", argv[cover_end + 1]);
}
