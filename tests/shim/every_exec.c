/* Calls every exec variant the shim wraps, each in a child it waits for, on two programs given
 * as absolute paths (their folders on PATH for the p-variants): prints "VARIANT NAME: STATUS". */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static const char *variants[] = {"execve", "execv", "execvp", "execvpe", "execl", "execlp", "execle",
                                 "posix_spawn", "posix_spawnp"};

static void call(const char *variant, const char *path) {
    const char *name = strrchr(path, '/') + 1;
    char *const argv[] = {(char *)name, (char *)variant, NULL};
    pid_t pid;
    if (strncmp(variant, "posix_spawn", 11) == 0) {
        int error = strcmp(variant, "posix_spawnp") == 0 ? posix_spawnp(&pid, name, NULL, NULL, argv, environ)
                                                         : posix_spawn(&pid, path, NULL, NULL, argv, environ);
        if (error != 0) {
            printf("%s %s: spawn failed: %s\n", variant, name, strerror(error));
            return;
        }
    } else if ((pid = fork()) == 0) {
        if (strcmp(variant, "execve") == 0) execve(path, argv, environ);
        else if (strcmp(variant, "execv") == 0) execv(path, argv);
        else if (strcmp(variant, "execvp") == 0) execvp(name, argv);
        else if (strcmp(variant, "execvpe") == 0) execvpe(name, argv, environ);
        else if (strcmp(variant, "execl") == 0) execl(path, name, variant, (char *)NULL);
        else if (strcmp(variant, "execlp") == 0) execlp(name, name, variant, (char *)NULL);
        else if (strcmp(variant, "execle") == 0) execle(path, name, variant, (char *)NULL, environ);
        perror(variant);
        _exit(126);
    }
    int status;
    waitpid(pid, &status, 0);
    fflush(stdout);
    printf("%s %s: %d\n", variant, name, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    fflush(stdout);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; i < sizeof variants / sizeof *variants; i++)
        for (int p = 1; p < argc; p++)
            call(variants[i], argv[p]);
    return 0;
}
