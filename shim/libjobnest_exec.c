/* libjobnest_exec: run whitelisted programs as jobnest jobs, for tools that exec them directly.
 *
 *   LD_PRELOAD=libjobnest_exec.so JOBNEST_EXEC_REDIRECT=bwa,samtools make
 *
 * The exec family and posix_spawn are wrapped. When the basename of the program is in
 * JOBNEST_EXEC_REDIRECT (comma-separated), the redirect helper runs instead, with the original
 * argv, cwd and environment:  jobnest exec-remote -- PROG ARGS...  (JOBNEST_EXEC_HELPER names
 * another helper). Anything else goes to the real function untouched.
 *
 * The environment is read once, in the constructor. Between interception and the real call
 * there is no heap: new argv and envp arrays live on the stack. errno is what the real call
 * left. Only the wrapped symbols are exported (exports.map). The helper's own process marks
 * itself (JOBNEST_EXEC_IN_HELPER) so that nothing it runs is redirected again.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LIST_MAX 4096
#define NAME_MAX_LEN 255
#define IN_HELPER "JOBNEST_EXEC_IN_HELPER=1"

extern char **environ;

static __typeof__(execve) *real_execve;
static __typeof__(execvpe) *real_execvpe;
static __typeof__(posix_spawn) *real_posix_spawn;
static __typeof__(posix_spawnp) *real_posix_spawnp;

enum { OFF, ON, MALFORMED };
static int mode = OFF;
static char whitelist[LIST_MAX + 3];  /* ",wc,samtools,": a name matches as ",name," */
static const char *problem = "";
static const char *helper = "jobnest";

#define REAL(name) real_##name = (__typeof__(real_##name))dlsym(RTLD_NEXT, #name)

static void say(const char *a, const char *b, const char *c) {
    const char *parts[] = {"jobnest shim: ", a, b, c, "\n"};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        if (parts[i] && write(2, parts[i], strlen(parts[i])) < 0)
            return;
}

/* Check the whitelist: names separated by single commas, no slashes, spaces or empty names. */
static int parse(const char *list) {
    size_t n = strlen(list);
    if (n == 0) { problem = "it is empty"; return MALFORMED; }
    if (n > LIST_MAX) { problem = "it is too long"; return MALFORMED; }
    size_t run = 0;
    for (size_t i = 0; i <= n; i++) {
        char c = list[i];
        if (c == ',' || c == '\0') {
            if (run == 0) { problem = "it has an empty name (write bwa,samtools)"; return MALFORMED; }
            if (run > NAME_MAX_LEN) { problem = "a name is too long"; return MALFORMED; }
            run = 0;
        } else if (c == '/' || c == ' ' || c == '\t' || c == '\n') {
            problem = "a name holds a slash or a space: give program names, not paths";
            return MALFORMED;
        } else {
            run++;
        }
    }
    whitelist[0] = ',';
    memcpy(whitelist + 1, list, n);
    whitelist[n + 1] = ',';
    whitelist[n + 2] = '\0';
    return ON;
}

__attribute__((constructor)) static void init(void) {
    int saved = errno;
    REAL(execve);
    REAL(execvpe);
    REAL(posix_spawn);
    REAL(posix_spawnp);
    const char *list = getenv("JOBNEST_EXEC_REDIRECT");
    if (list != NULL && getenv("JOBNEST_EXEC_IN_HELPER") == NULL)
        mode = parse(list);
    const char *given = getenv("JOBNEST_EXEC_HELPER");
    if (given != NULL && *given)
        helper = given;
    errno = saved;
}

static const char *base(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Whether `path` is to be redirected; a malformed whitelist redirects nothing but is reported. */
static int wanted(const char *path) {
    if (mode == OFF || path == NULL)
        return 0;
    const char *name = base(path);
    size_t n = strlen(name);
    if (n == 0 || n > NAME_MAX_LEN || strcmp(name, base(helper)) == 0)  /* never the helper itself */
        return 0;
    char needle[NAME_MAX_LEN + 3];
    needle[0] = ',';
    memcpy(needle + 1, name, n);
    needle[n + 1] = ',';
    needle[n + 2] = '\0';
    return strstr(whitelist, needle) != NULL;
}

static size_t count(char *const list[]) {
    size_t n = 0;
    while (list && list[n])
        n++;
    return n;
}

/* The helper's argv (helper exec-remote -- path args...) and envp (envp plus the mark), built
 * into the caller's stack arrays. */
static void helper_call(const char *path, char *const argv[], char *const envp[], char **args, char **env) {
    size_t argc = count(argv), envc = count(envp);
    args[0] = (char *)helper;
    args[1] = "exec-remote";
    args[2] = "--";
    args[3] = (char *)path;
    for (size_t i = 1; i < argc; i++)
        args[3 + i] = argv[i];
    args[argc < 1 ? 4 : 3 + argc] = NULL;
    for (size_t i = 0; i < envc; i++)
        env[i] = envp[i];
    env[envc] = IN_HELPER;
    env[envc + 1] = NULL;
}

static int run(const char *path, char *const argv[], char *const envp[], int search) {
    if (!wanted(path)) {
        if (mode == MALFORMED && path != NULL) {
            say("JOBNEST_EXEC_REDIRECT is malformed: ", problem, "");
            errno = EINVAL;
            return -1;
        }
        return search ? real_execvpe(path, argv, envp) : real_execve(path, argv, envp);
    }
    char *args[count(argv) + 5], *env[count(envp) + 2];
    helper_call(path, argv, envp, args, env);
    real_execvpe(helper, args, env);
    int error = errno;
    say("cannot run the redirect helper ", helper, error == ENOENT ? ": not found (set JOBNEST_EXEC_HELPER)"
                                                                   : ": it failed to start");
    errno = error;
    return -1;
}

static int spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *actions,
                 const posix_spawnattr_t *attr, char *const argv[], char *const envp[], int search) {
    if (!wanted(path)) {
        if (mode == MALFORMED && path != NULL) {
            say("JOBNEST_EXEC_REDIRECT is malformed: ", problem, "");
            return EINVAL;
        }
        return (search ? real_posix_spawnp : real_posix_spawn)(pid, path, actions, attr, argv, envp);
    }
    char *args[count(argv) + 5], *env[count(envp) + 2];
    helper_call(path, argv, envp, args, env);
    int error = real_posix_spawnp(pid, helper, actions, attr, args, env);
    if (error != 0)
        say("cannot run the redirect helper ", helper, error == ENOENT ? ": not found (set JOBNEST_EXEC_HELPER)"
                                                                       : ": it failed to start");
    return error;
}

int execve(const char *path, char *const argv[], char *const envp[]) { return run(path, argv, envp, 0); }
int execv(const char *path, char *const argv[]) { return run(path, argv, environ, 0); }
int execvp(const char *file, char *const argv[]) { return run(file, argv, environ, 1); }
int execvpe(const char *file, char *const argv[], char *const envp[]) { return run(file, argv, envp, 1); }

int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *actions,
                const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
    return spawn(pid, path, actions, attr, argv, envp, 0);
}

int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *actions,
                 const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
    return spawn(pid, file, actions, attr, argv, envp, 1);
}

/* The list variants: their arguments, up to the NULL, into an argv on the stack. */
#define LIST_ARGS(first, ap, argv)                       \
    size_t n_ = 1;                                       \
    va_start(ap, first);                                 \
    while (va_arg(ap, char *) != NULL)                   \
        n_++;                                            \
    va_end(ap);                                          \
    char *argv[n_ + 1];                                  \
    argv[0] = (char *)first;                             \
    va_start(ap, first);                                 \
    for (size_t i_ = 1; i_ <= n_; i_++)                  \
        argv[i_] = va_arg(ap, char *);

int execl(const char *path, const char *arg, ...) {
    va_list ap;
    LIST_ARGS(arg, ap, argv)
    va_end(ap);
    return run(path, argv, environ, 0);
}

int execlp(const char *file, const char *arg, ...) {
    va_list ap;
    LIST_ARGS(arg, ap, argv)
    va_end(ap);
    return run(file, argv, environ, 1);
}

int execle(const char *path, const char *arg, ...) {
    va_list ap;
    LIST_ARGS(arg, ap, argv)
    char *const *envp = va_arg(ap, char *const *);  /* after the NULL that ends the arguments */
    va_end(ap);
    return run(path, argv, envp, 0);
}
