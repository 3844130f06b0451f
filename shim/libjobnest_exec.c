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
 * there is no heap: new argv and envp arrays live on the stack (up to ENTRIES_MAX entries).
 * errno is what the real call left. Only the wrapped symbols are exported (exports.map). The helper's own process marks
 * itself (JOBNEST_EXEC_IN_HELPER) so that nothing it runs is redirected again.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>

#define LIST_MAX 4096
#define NAME_MAX_LEN 255
#define PATH_LEN 4096
#define ENTRIES_MAX 8192  /* argv and envp entries a redirected call may have: they go on the stack */
#define IN_HELPER "JOBNEST_EXEC_IN_HELPER=1"

extern char **environ;

static void *real_execve, *real_execvpe, *real_posix_spawn, *real_posix_spawnp;

enum { OFF, ON, MALFORMED };
static int mode = OFF;
static char whitelist[LIST_MAX + 1];  /* "wc,samtools" */
static const char *problem = "";
static char helper[PATH_LEN] = "jobnest";

/* The next definition of a wrapped function (libc's, or another preloaded library's), looked up
 * in the constructor: a forked child then calls it without the loader. */
#define REAL(name) ((__typeof__(&name))real_##name)
#define LOOK_UP(name) (real_##name = dlsym(RTLD_NEXT, #name))

/* String helpers of its own, so that loading the shim binds as few libc symbols as it can. */
static size_t length(const char *s) {
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

static int same(const char *a, const char *b) {
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

static void say(const char *a, const char *b, const char *c) {
    const char *parts[] = {"jobnest shim: ", a, b, c, "\n"};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        if (parts[i] && write(2, parts[i], length(parts[i])) < 0)
            return;
}

/* Check the whitelist: names separated by single commas, no slashes, spaces or empty names. */
static int parse(const char *list) {
    size_t n = length(list);
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
    for (size_t i = 0; i <= n; i++)
        whitelist[i] = list[i];
    return ON;
}

/* getenv without a call into libc: the constructor runs in every process the shim is loaded
 * into, and most never exec, so it touches nothing it does not need. */
static const char *env(const char *name) {
    for (char **entry = environ; entry && *entry; entry++) {
        const char *e = *entry, *n = name;
        while (*n && *e == *n)
            e++, n++;
        if (*n == '\0' && *e == '=')
            return e + 1;
    }
    return NULL;
}

__attribute__((constructor)) static void init(void) {
    int saved = errno;
    LOOK_UP(execve);
    LOOK_UP(execvpe);
    LOOK_UP(posix_spawn);
    LOOK_UP(posix_spawnp);
    const char *list = env("JOBNEST_EXEC_REDIRECT");
    if (list != NULL && env("JOBNEST_EXEC_IN_HELPER") == NULL)
        mode = parse(list);
    const char *given = env("JOBNEST_EXEC_HELPER");  /* copied: a program may rewrite its environment */
    if (given != NULL && *given && length(given) < PATH_LEN)
        for (size_t i = 0; i <= length(given); i++)
            helper[i] = given[i];
    errno = saved;
}

static const char *base(const char *path) {
    const char *name = path;
    for (const char *p = path; *p; p++)
        if (*p == '/')
            name = p + 1;
    return name;
}

/* Whether `name` is one of the names of the whitelist. */
static int listed(const char *name) {
    for (const char *p = whitelist; *p;) {
        const char *n = name;
        while (*p && *p != ',' && *p == *n)
            p++, n++;
        if ((*p == ',' || *p == '\0') && *n == '\0')
            return 1;
        while (*p && *p != ',')
            p++;
        if (*p == ',')
            p++;
    }
    return 0;
}

/* Whether `path` is to be redirected; a malformed whitelist redirects nothing but is reported.
 * A path the real call would not run (Python tries each folder of PATH in turn) is left to it. */
static int wanted(const char *path, int search) {
    if (mode == OFF || path == NULL)
        return 0;
    const char *name = base(path);
    if (!*name || same(name, base(helper)) || !listed(name))  /* never the helper itself */
        return 0;
    return (search && name == path) || access(path, X_OK) == 0;
}

static size_t count(char *const list[]) {
    size_t n = 0;
    while (list && list[n])
        n++;
    return n;
}

/* The helper's argv (helper exec-remote -- path args...) and envp (envp plus the mark), built
 * into the caller's stack arrays. A name without a slash that was not to be searched for is a
 * file here: the helper gets it as ./name. */
static void helper_call(const char *path, int search, char *const argv[], char *const envp[], char **args,
                        char **env, char *here) {
    size_t argc = count(argv), envc = count(envp);
    args[0] = helper;
    args[1] = "exec-remote";
    args[2] = "--";
    args[3] = (char *)path;
    if (!search && base(path) == path) {
        here[0] = '.', here[1] = '/';
        for (size_t i = 0; i <= length(path); i++)
            here[2 + i] = path[i];
        args[3] = here;
    }
    for (size_t i = 1; i < argc; i++)
        args[3 + i] = argv[i];
    args[argc < 1 ? 4 : 3 + argc] = NULL;
    for (size_t i = 0; i < envc; i++)
        env[i] = envp[i];
    env[envc] = IN_HELPER;
    env[envc + 1] = NULL;
}

static int too_many(char *const argv[], char *const envp[]) {
    if (count(argv) < ENTRIES_MAX && count(envp) < ENTRIES_MAX)
        return 0;
    say("too many arguments or variables to redirect a call", "", "");
    return 1;
}

static int run(const char *path, char *const argv[], char *const envp[], int search) {
    if (!wanted(path, search)) {
        if (mode == MALFORMED && path != NULL) {
            say("JOBNEST_EXEC_REDIRECT is malformed: ", problem, "");
            errno = EINVAL;
            return -1;
        }
        return search ? REAL(execvpe)(path, argv, envp) : REAL(execve)(path, argv, envp);
    }
    if (too_many(argv, envp)) {
        errno = E2BIG;
        return -1;
    }
    char *args[count(argv) + 5], *env[count(envp) + 2], here[NAME_MAX_LEN + 3];
    helper_call(path, search, argv, envp, args, env, here);
    REAL(execvpe)(helper, args, env);
    int error = errno;
    say("cannot run the redirect helper ", helper, error == ENOENT ? ": not found (set JOBNEST_EXEC_HELPER)"
                                                                   : ": it failed to start");
    errno = error;
    return -1;
}

static int spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *actions,
                 const posix_spawnattr_t *attr, char *const argv[], char *const envp[], int search) {
    if (!wanted(path, search)) {
        if (mode == MALFORMED && path != NULL) {
            say("JOBNEST_EXEC_REDIRECT is malformed: ", problem, "");
            return EINVAL;
        }
        return search ? REAL(posix_spawnp)(pid, path, actions, attr, argv, envp)
                      : REAL(posix_spawn)(pid, path, actions, attr, argv, envp);
    }
    if (too_many(argv, envp))
        return E2BIG;
    char *args[count(argv) + 5], *env[count(envp) + 2], here[NAME_MAX_LEN + 3];
    helper_call(path, search, argv, envp, args, env, here);
    int error = REAL(posix_spawnp)(pid, helper, actions, attr, args, env);
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
