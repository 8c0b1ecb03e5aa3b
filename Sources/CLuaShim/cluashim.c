// pthread_getattr_np (the running thread's stack bounds) is a GNU call.
#define _GNU_SOURCE
#include "cluashim.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// The count hook runs every PML_HOOK_EVERY instructions: cheap, yet a runaway loop stops within
// microseconds of its budget.
#define PML_HOOK_EVERY 1000
#define PML_HOOK_MASK (LUA_MASKCOUNT | LUA_MASKCALL)

// Per-state bookkeeping, reached through the allocator's userdata (no globals: several
// runtimes may live in one process).
typedef struct pml_state {
    lua_State *L; // the main thread; NULL while lua_newstate runs
    size_t used;
    size_t limit;
    // Crossing this sets `pressure`: the hook then collects garbage and stops the script if it is
    // still above. Lua reports a refused allocation without a location (LUA_ERRMEM skips the
    // message handler), so the margin lets most runaway scripts be stopped with a file:line first.
    size_t soft;
    int pressure;
    long budget_total;
    long budget;
    int time_ms;
    // The time budget counts the calling thread's CPU time, not wall time: script threads get
    // little CPU on a busy machine (docs/ARCHITECTURE.md), and a hook must not fail for waiting.
    // Reading that clock is a system call, so the hook reads it only once the (cheap) monotonic
    // clock reaches `cpu_check_ns`: a thread cannot use more CPU than the wall time that passed.
    int64_t cpu_deadline_ns;
    int64_t cpu_check_ns;
    // Why the current call was stopped; it keeps being stopped for the same reason.
    enum { PML_RUNNING, PML_OVER_BUDGET, PML_OVER_TIME } stopped;
    int depth; // nested protected calls (a host callback may call a hook); they share one budget
    const char *label; // names the running code in budget errors ("onCrash", "app file")
    pml_dispatch_fn dispatch;
    void *ctx;
    // The C stack at the outermost protected call, and how far below it guarded functions may
    // reach (see check_c_stack); `stack_thread` is the thread these were measured on.
    uintptr_t stack_base;
    size_t stack_allowance;
    pthread_t stack_thread;
    int stack_measured;
} pml_state;

static void pml_hook(lua_State *L, lua_Debug *ar);

// "file:line" of the innermost Lua function at or above `level`, into `out` (used for the
// source of pml.log lines).
static void lua_location(lua_State *L, int level, char *out, size_t size) {
    lua_Debug ar;
    for (; lua_getstack(L, level, &ar); level++) {
        lua_getinfo(L, "Sl", &ar);
        if (ar.currentline > 0) {
            snprintf(out, size, "%s:%d", ar.short_src, ar.currentline);
            return;
        }
    }
    snprintf(out, size, "?");
}

// Raises `msg` located at the Lua code the hook interrupted: for a call event, the caller.
static int raise_at(lua_State *L, lua_Debug *ar, const char *msg) {
    char where[LUA_IDSIZE + 24];
    lua_location(L, ar->event == LUA_HOOKCALL ? 1 : 0, where, sizeof where);
    if (strcmp(where, "?") != 0) lua_pushfstring(L, "%s: %s", where, msg);
    else lua_pushstring(L, msg);
    return lua_error(L);
}

static pml_state *state_of(lua_State *L) {
    void *ud = NULL;
    lua_getallocf(L, &ud);
    return ud;
}

static int64_t clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

// Whether the calling thread has used the CPU time of its budget.
static int over_cpu_time(pml_state *s) {
    int64_t now = clock_ns(CLOCK_MONOTONIC);
    if (now < s->cpu_check_ns) return 0;
    int64_t left = s->cpu_deadline_ns - clock_ns(CLOCK_THREAD_CPUTIME_ID);
    if (left <= 0) return 1;
    s->cpu_check_ns = now + left;
    return 0;
}

// Lua assumes that shrinking never fails, so only growth is refused.
static void *pml_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    pml_state *s = ud;
    size_t old = ptr != NULL ? osize : 0; // for a new block, osize encodes the object type
    if (nsize == 0) {
        free(ptr);
        s->used -= old;
        return NULL;
    }
    if (nsize > old && s->used - old + nsize > s->limit) return NULL;
    void *block = realloc(ptr, nsize);
    if (block == NULL) return NULL;
    s->used = s->used - old + nsize;
    if (s->used > s->soft && !s->pressure && s->L != NULL) {
        s->pressure = 1;
        // lua_sethook is safe to call at any moment (it is meant for signal handlers).
        lua_sethook(s->L, pml_hook, PML_HOOK_MASK, 1);
    }
    return block;
}

static int pml_panic(lua_State *L) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "pml: unprotected Lua error: %s\n", msg != NULL ? msg : "?");
    return 0; // Lua aborts
}

lua_State *pml_newstate(size_t memory_limit) {
    pml_state *s = calloc(1, sizeof *s);
    if (s == NULL) return NULL;
    s->limit = memory_limit;
    s->soft = memory_limit - memory_limit / 8;
    s->budget_total = 50000000;
    s->time_ms = 2000;
    s->label = "script";
    lua_State *L = lua_newstate(pml_alloc, s);
    if (L == NULL) {
        free(s);
        return NULL;
    }
    s->L = L;
    lua_atpanic(L, pml_panic);
    return L;
}

void pml_close(lua_State *L) {
    pml_state *s = state_of(L);
    lua_close(L);
    free(s);
}

size_t pml_memory_in_use(lua_State *L) { return state_of(L)->used; }

void pml_set_budget(lua_State *L, long instructions, int time_ms) {
    pml_state *s = state_of(L);
    s->budget_total = instructions;
    s->time_ms = time_ms;
}

void pml_pop(lua_State *L, int n) { lua_pop(L, n); }

// "N MiB" when the limit is whole mebibytes, else bytes.
static void describe_limit(char *out, size_t size, size_t limit) {
    if (limit >= (1u << 20) && limit % (1u << 20) == 0) snprintf(out, size, "%zu MiB", limit >> 20);
    else snprintf(out, size, "%zu bytes", limit);
}


// Every PML_HOOK_EVERY instructions (every instruction while memory is short or the budget is
// spent), and before every function call: charges the budget, checks the CPU time and memory, and
// raises when one is exceeded. The call event matters for C functions: a loop of a few
// instructions calling an expensive one (a backtracking string.find, a full collectgarbage) is
// stopped at the first call past its deadline, not PML_HOOK_EVERY instructions later.
static void pml_hook(lua_State *L, lua_Debug *ar) {
    pml_state *s = state_of(L);
    char msg[160];
    if (ar->event == LUA_HOOKCOUNT) s->budget -= lua_gethookcount(L);
    if (s->pressure && ar->event == LUA_HOOKCOUNT) {
        s->pressure = 0;
        // Scripts cannot set __gc (the sandbox refuses it), so this runs no Lua code.
        lua_gc(L, LUA_GCCOLLECT);
        if (s->used > s->soft) {
            char limit[48];
            describe_limit(limit, sizeof limit, s->limit);
            snprintf(msg, sizeof msg, "%s exceeded the memory limit (%s)", s->label, limit);
            raise_at(L, ar, msg);
        }
    }
    if (s->stopped == PML_RUNNING) {
        if (s->budget <= 0) s->stopped = PML_OVER_BUDGET;
        else if (over_cpu_time(s)) s->stopped = PML_OVER_TIME;
    }
    if (s->stopped != PML_RUNNING) {
        // From now on fire at every instruction, so a script's own pcall cannot swallow the error
        // and carry on: the next instruction of its caller raises again.
        lua_sethook(L, pml_hook, PML_HOOK_MASK, 1);
        if (s->stopped == PML_OVER_BUDGET)
            snprintf(msg, sizeof msg, "%s exceeded its instruction budget (%ld instructions)",
                     s->label, s->budget_total);
        else
            snprintf(msg, sizeof msg, "%s exceeded its CPU time budget (%d ms)", s->label, s->time_ms);
        raise_at(L, ar, msg);
    }
    // (Memory pressure is handled at the next count event, which must stay one instruction away.)
    if (!s->pressure && lua_gethookcount(L) != PML_HOOK_EVERY) lua_sethook(L, pml_hook, PML_HOOK_MASK, PML_HOOK_EVERY);
}


// Message handler for every lua_pcall: keeps "file:line: msg" as Lua made it (adding nothing),
// and turns non-string errors into text.
static int pml_msgh(lua_State *L) {
    int type = lua_type(L, 1);
    if (type != LUA_TSTRING && type != LUA_TNUMBER) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
        lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
        return 1;
    }
    lua_tostring(L, 1);
    return 1;
}

static void start_budget(lua_State *L, pml_state *s) {
    s->budget = s->budget_total;
    int64_t budget_ns = (int64_t)s->time_ms * 1000000;
    s->cpu_deadline_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) + budget_ns;
    s->cpu_check_ns = clock_ns(CLOCK_MONOTONIC) + budget_ns;
    s->pressure = 0;
    s->stopped = PML_RUNNING;
    lua_sethook(L, pml_hook, PML_HOOK_MASK, PML_HOOK_EVERY);
}

// ---- The C stack ----

// How deep below the outermost protected call guarded functions may take the C stack, at most.
#define PML_C_STACK_MAX ((size_t)1 << 20)

// Records where the outermost protected call starts on the C stack, and how much of the rest of
// this thread's stack guarded functions may use: PML_C_STACK_MAX, or half of what is left on a
// smaller stack (the other half stays for the C calls Lua bounds itself).
static void measure_c_stack(pml_state *s) {
    char here;
    s->stack_base = (uintptr_t)&here;
    pthread_t self = pthread_self();
    if (s->stack_measured && pthread_equal(self, s->stack_thread)) return;
    s->stack_thread = self;
    s->stack_measured = 1;
    s->stack_allowance = PML_C_STACK_MAX;
    pthread_attr_t attr;
    if (pthread_getattr_np(self, &attr) != 0) return;
    void *low = NULL;
    size_t size = 0;
    if (pthread_attr_getstack(&attr, &low, &size) == 0 && (uintptr_t)low < s->stack_base) {
        size_t left = s->stack_base - (uintptr_t)low;
        if (left / 2 < s->stack_allowance) s->stack_allowance = left / 2;
    }
    pthread_attr_destroy(&attr);
}

// Lua 5.4.4 (Debian 12's) counts nested C calls per coroutine, and coroutine.close runs the closed
// coroutine's __close handlers at that coroutine's own count: a chain of handlers each closing
// another coroutine recurses in C with no limit and overflows the C stack, killing the process
// (fixed in Lua 5.4.5). The functions that start a coroutine's code on top of the C stack are
// wrapped: each measures the stack first and raises while there is plenty left.
// Upvalues: the original C function, its name.
static int pml_stack_guard(lua_State *L) {
    pml_state *s = state_of(L);
    char here;
    uintptr_t at = (uintptr_t)&here;
    if (s->depth > 0 && at < s->stack_base && s->stack_base - at > s->stack_allowance)
        return luaL_error(L, "%s: coroutines nested too deeply", lua_tostring(L, lua_upvalueindex(2)));
    return lua_tocfunction(L, lua_upvalueindex(1))(L);
}

// native.guard(fn, name): fn (a C function) behind pml_stack_guard.
static int native_guard(lua_State *L) {
    luaL_argcheck(L, lua_iscfunction(L, 1), 1, "C function expected");
    luaL_checkstring(L, 2);
    lua_settop(L, 2);
    lua_pushcclosure(L, pml_stack_guard, 2);
    return 1;
}

// ---- Files ----

static int close_stream(lua_State *L) {
    luaL_Stream *p = luaL_checkudata(L, 1, LUA_FILEHANDLE);
    return luaL_fileresult(L, fclose(p->f) == 0, NULL);
}

// A file handle that is already closed (io's functions refuse it); the file is set by the caller.
static luaL_Stream *push_closed_stream(lua_State *L) {
    luaL_Stream *p = lua_newuserdatauv(L, sizeof *p, 0);
    p->f = NULL;
    p->closef = NULL;
    luaL_setmetatable(L, LUA_FILEHANDLE);
    return p;
}

// io.open's failure results for a file that is not a regular one.
static int not_regular(lua_State *L, const char *name) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: not a regular file (scripts may open regular files only)", name);
    lua_pushinteger(L, EINVAL);
    return 3;
}

// io.open's failure results for errno, once `fd` is closed.
static int close_failed(lua_State *L, int fd, const char *name) {
    int err = errno;
    close(fd);
    errno = err;
    return luaL_fileresult(L, 0, name);
}

int pml_open_regular(const char *name, int flags) {
    // Looked at before it is opened: opening a device can act on it (/dev/watchdog arms), and
    // opening a FIFO wakes its writer. A name missing may be created (O_CREAT): a regular file.
    struct stat before;
    int exists = stat(name, &before) == 0;
    if (!exists && (errno != ENOENT || !(flags & O_CREAT))) return -1;
    if (exists && !S_ISREG(before.st_mode)) {
        errno = S_ISDIR(before.st_mode) ? EISDIR : EINVAL;
        return PML_NOT_REGULAR;
    }
    int fd = open(name, flags | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, 0666);
    if (fd < 0 && errno == ENXIO) return PML_NOT_REGULAR; // swapped meanwhile: a FIFO without a reader, a socket
    if (fd < 0) return -1;
    // And checked again once open: the name may have been swapped between stat and open.
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    if (!S_ISREG(st.st_mode) || (exists && (st.st_dev != before.st_dev || st.st_ino != before.st_ino))) {
        close(fd);
        errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
        return PML_NOT_REGULAR;
    }
    return fd;
}

// native.open(name [, mode]): io.open for scripts, with the same modes and results (a file
// handle, or nil, message, errno), for regular files only. open(2) of a FIFO waits for the other
// end, and a read from a FIFO, socket or device can wait forever, inside C where no budget
// reaches: pml_open_regular returns at once and refuses anything but a regular file (whose reads
// and writes never wait). "w" truncates only once the file is known to be regular.
static int native_open(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    const char *mode = luaL_optstring(L, 2, "r");
    int flags;
    switch (mode[0]) {
    case 'r': flags = O_RDONLY; break;
    case 'w': flags = O_WRONLY | O_CREAT; break;
    case 'a': flags = O_WRONLY | O_CREAT | O_APPEND; break;
    default: return luaL_argerror(L, 2, "invalid mode");
    }
    const char *rest = mode + 1;
    if (*rest == '+') {
        flags = (flags & ~O_ACCMODE) | O_RDWR;
        rest++;
    }
    if (strspn(rest, "b") != strlen(rest)) return luaL_argerror(L, 2, "invalid mode");
    // The handle exists before the descriptor, so that a memory error cannot leak it.
    luaL_Stream *p = push_closed_stream(L);
    int fd = pml_open_regular(name, flags);
    if (fd == PML_NOT_REGULAR) return not_regular(L, name);
    if (fd < 0) return luaL_fileresult(L, 0, name);
    if (mode[0] == 'w' && ftruncate(fd, 0) != 0) return close_failed(L, fd, name);
    p->f = fdopen(fd, mode);
    if (p->f == NULL) return close_failed(L, fd, name);
    p->closef = close_stream;
    return 1;
}

static int collect_body(lua_State *L) {
    lua_gc(L, LUA_GCCOLLECT);
    return 0;
}

// Calls body(arg, ...) under lua_pcall with the message handler, passing the `nargs` values on
// top of the stack after `arg` (the body has its own stack frame: indices of the caller's frame
// mean nothing there). Leaves one value: the result or the error message (nothing if the stack
// could not even grow; the status is then LUA_ERRMEM).
static int run_protected(lua_State *L, lua_CFunction body, void *arg, int nargs, const char *label) {
    pml_state *s = state_of(L);
    const char *outer_label = s->label;
    if (!lua_checkstack(L, 4)) return LUA_ERRMEM;
    if (s->depth == 0) {
        start_budget(L, s);
        measure_c_stack(s);
    }
    s->depth++;
    s->label = label;
    lua_pushcfunction(L, pml_msgh);
    lua_pushcfunction(L, body);
    lua_pushlightuserdata(L, arg);
    lua_rotate(L, -(nargs + 3), 3); // handler, body, arg, then the arguments
    int handler = lua_gettop(L) - nargs - 2;
    int status = lua_pcall(L, nargs + 1, 1, handler);
    lua_remove(L, handler);
    s->depth--;
    s->label = outer_label;
    if (s->depth == 0 && status != LUA_OK) {
        // The failed call's garbage (an allocation bomb's, say) goes now, with a fresh budget.
        start_budget(L, s);
        lua_pushcfunction(L, collect_body);
        if (lua_pcall(L, 0, 0, 0) != LUA_OK) lua_pop(L, 1);
    }
    return status;
}

// ---- Encoded values → Lua ----

typedef struct reader {
    const unsigned char *p;
    const unsigned char *end;
} reader;

static void read_bytes(lua_State *L, reader *r, void *out, size_t n) {
    if ((size_t)(r->end - r->p) < n) luaL_error(L, "pml: malformed encoded value");
    memcpy(out, r->p, n);
    r->p += n;
}

static uint32_t read_count(lua_State *L, reader *r) {
    uint32_t n;
    read_bytes(L, r, &n, sizeof n);
    // Every value takes at least one byte: a larger count is corrupt (and must not preallocate).
    if (n > (size_t)(r->end - r->p)) luaL_error(L, "pml: malformed encoded value");
    return n;
}

// Pushes one encoded value.
static void push_value(lua_State *L, reader *r, int depth) {
    unsigned char tag;
    luaL_checkstack(L, 3, "value nested too deeply");
    read_bytes(L, r, &tag, 1);
    if ((tag == PML_ENC_ARRAY || tag == PML_ENC_OBJECT) && depth >= PML_ENC_MAX_DEPTH)
        luaL_error(L, "pml: encoded value nested too deeply");
    switch (tag) {
    case PML_ENC_NIL: lua_pushnil(L); break;
    case PML_ENC_FALSE: lua_pushboolean(L, 0); break;
    case PML_ENC_TRUE: lua_pushboolean(L, 1); break;
    case PML_ENC_INT: {
        int64_t i;
        read_bytes(L, r, &i, sizeof i);
        lua_pushinteger(L, (lua_Integer)i);
        break;
    }
    case PML_ENC_DOUBLE: {
        double d;
        read_bytes(L, r, &d, sizeof d);
        lua_pushnumber(L, d);
        break;
    }
    case PML_ENC_STRING: {
        uint32_t n = read_count(L, r);
        lua_pushlstring(L, (const char *)r->p, n);
        r->p += n;
        break;
    }
    case PML_ENC_ARRAY: {
        uint32_t n = read_count(L, r);
        lua_createtable(L, (int)n, 0);
        for (uint32_t i = 1; i <= n; i++) {
            push_value(L, r, depth + 1);
            lua_rawseti(L, -2, i);
        }
        break;
    }
    case PML_ENC_OBJECT: {
        uint32_t n = read_count(L, r);
        lua_createtable(L, 0, (int)n);
        for (uint32_t i = 0; i < n; i++) {
            uint32_t len = read_count(L, r);
            lua_pushlstring(L, (const char *)r->p, len);
            r->p += len;
            push_value(L, r, depth + 1);
            lua_rawset(L, -3);
        }
        break;
    }
    default: luaL_error(L, "pml: malformed encoded value");
    }
}

// Pushes an encoded list of values; returns how many.
static int push_list(lua_State *L, const unsigned char *data, size_t len) {
    reader r = {data, data + len};
    uint32_t n = read_count(L, &r);
    luaL_checkstack(L, (int)n, "too many values");
    for (uint32_t i = 0; i < n; i++) push_value(L, &r, 1);
    return (int)n;
}

// ---- Arguments of pml.send, pml.broadcast and pml.scale ----

// How a bad argument reads in an error: numbers by value (so "-1" or "1.5" shows), the rest by type.
static const char *describe_arg(lua_State *L, int arg) {
    if (lua_type(L, arg) == LUA_TNUMBER) return luaL_tolstring(L, arg, NULL);
    return luaL_typename(L, arg);
}

// The worker argument: a worker table's integer `id`, or the id itself.
static lua_Integer check_worker(lua_State *L, int arg, const char *fn) {
    int isint = 0;
    lua_Integer id = 0;
    if (lua_type(L, arg) == LUA_TTABLE) {
        lua_getfield(L, arg, "id"); // not raw, as hooks are looked up: a table may inherit its id
        if (lua_type(L, -1) == LUA_TNUMBER) id = lua_tointegerx(L, -1, &isint);
        lua_pop(L, 1);
        if (!isint) luaL_error(L, "%s: the worker table has no integer id", fn);
        return id;
    }
    if (lua_type(L, arg) == LUA_TNUMBER) id = lua_tointegerx(L, arg, &isint);
    if (!isint) luaL_error(L, "%s: worker must be a worker table or a worker id (got %s)", fn, describe_arg(L, arg));
    return id;
}

// The app argument: an app name, or an app table's `name` (which then stays on the stack, so the
// returned string stays valid).
static const char *check_app(lua_State *L, int arg, const char *fn, size_t *len) {
    if (lua_type(L, arg) == LUA_TTABLE) {
        lua_getfield(L, arg, "name");
        if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "%s: the app table has no name", fn);
        return lua_tolstring(L, -1, len);
    }
    if (lua_type(L, arg) != LUA_TSTRING)
        luaL_error(L, "%s: app must be an app name or an app table (got %s)", fn, describe_arg(L, arg));
    return lua_tolstring(L, arg, len);
}

// A message's size is bounded by a rough lower bound of its JSON text: string bytes plus one per
// value and per key, a shared table counted wherever it appears. 1 MiB matches the longest line
// pml reads from a worker's IPC channel, and keeps a message well below the million values
// ValueReader reads before it gives up.
#define PML_MESSAGE_MAX_BYTES (1 << 20)

typedef struct message_check {
    const char *fn;
    size_t size;
    // How many tables enclose the value being checked: each one, for cycles, and the stack index
    // of the key leading out of it, for the path in error messages.
    int depth;
    const void *tables[PML_MESSAGE_MAX_DEPTH];
    int keys[PML_MESSAGE_MAX_DEPTH];
} message_check;

// Pushes how a key reads in a path: .name, ["other key"] or [3].
static void push_key(lua_State *L, int key) {
    if (lua_type(L, key) != LUA_TSTRING) {
        luaL_tolstring(L, key, NULL);
        lua_pushfstring(L, "[%s]", lua_tostring(L, -1));
        lua_remove(L, -2);
        return;
    }
    const char *s = lua_tostring(L, key);
    int identifier = isalpha((unsigned char)*s) || *s == '_';
    for (const char *p = s; identifier && *p != '\0'; p++) identifier = isalnum((unsigned char)*p) || *p == '_';
    lua_pushfstring(L, identifier ? ".%s" : "[\"%s\"]", s);
}

// Raises "<fn>: message must be JSON-able: message<path to the value><problem>" at the caller.
static int message_error(lua_State *L, const message_check *c, const char *problem) {
    luaL_checkstack(L, c->depth + 4, NULL);
    luaL_where(L, 1);
    lua_pushfstring(L, "%s: message must be JSON-able: message", c->fn);
    for (int i = 0; i < c->depth; i++) push_key(L, c->keys[i]);
    lua_pushstring(L, problem);
    lua_concat(L, c->depth + 3);
    return lua_error(L);
}

// Raises unless the value at `index` is JSON-able as ValueReader reads it: only booleans, strings,
// finite numbers and tables with string or number keys, no table inside itself, tables no deeper
// than PML_MESSAGE_MAX_DEPTH and PML_MESSAGE_MAX_BYTES in all. (ValueReader would read the rest
// as null, or drop it, without a word.)
static void check_message(lua_State *L, message_check *c, int index) {
    c->size++;
    switch (lua_type(L, index)) {
    case LUA_TBOOLEAN: break;
    case LUA_TSTRING: c->size += lua_rawlen(L, index); break;
    case LUA_TNUMBER:
        if (!lua_isinteger(L, index) && !isfinite(lua_tonumber(L, index)))
            message_error(L, c, " is not a finite number");
        break;
    case LUA_TTABLE: {
        const void *table = lua_topointer(L, index);
        for (int i = 0; i < c->depth; i++)
            if (c->tables[i] == table) message_error(L, c, " is a table that contains itself");
        if (c->depth == PML_MESSAGE_MAX_DEPTH)
            message_error(L, c, lua_pushfstring(L, " nests tables deeper than %d levels", PML_MESSAGE_MAX_DEPTH));
        index = lua_absindex(L, index);
        luaL_checkstack(L, 3, "message nested too deeply");
        c->tables[c->depth] = table;
        lua_pushnil(L);
        while (lua_next(L, index)) { // raw, as ValueReader reads
            int key = lua_type(L, -2);
            if (key != LUA_TSTRING && key != LUA_TNUMBER)
                message_error(L, c, lua_pushfstring(L, " has a %s key", lua_typename(L, key)));
            c->size += 1 + (key == LUA_TSTRING ? lua_rawlen(L, -2) : 0);
            c->keys[c->depth++] = lua_absindex(L, -2);
            check_message(L, c, -1);
            c->depth--;
            lua_pop(L, 1);
        }
        break;
    }
    case LUA_TNIL:
    case LUA_TNONE: message_error(L, c, " is nil"); break;
    default: message_error(L, c, lua_pushfstring(L, " is a %s", luaL_typename(L, index)));
    }
    if (c->size > PML_MESSAGE_MAX_BYTES) luaL_error(L, "%s: message is larger than 1 MiB", c->fn);
}

// The message argument of pml.send / pml.broadcast, left where it is for Swift to read.
static int check_message_arg(lua_State *L, int arg, const char *fn) {
    message_check c = {.fn = fn};
    check_message(L, &c, arg);
    return arg;
}

// The instance count of pml.scale.
static lua_Integer check_instances(lua_State *L, int arg, const char *fn) {
    int isint = 0;
    lua_Integer n = lua_type(L, arg) == LUA_TNUMBER ? lua_tointegerx(L, arg, &isint) : 0;
    if (!isint || n < 0) luaL_error(L, "%s: instances must be an integer >= 0 (got %s)", fn, describe_arg(L, arg));
    return n;
}

// The delay of pml.after / pml.every: at least 1 ms (a 0 ms repeating timer would spin the
// supervisor's loop), at most PML_MAX_DELAY_MS.
static lua_Integer check_delay(lua_State *L, int arg, const char *fn) {
    int isint = 0;
    lua_Integer ms = lua_type(L, arg) == LUA_TNUMBER ? lua_tointegerx(L, arg, &isint) : 0;
    if (!isint || ms < 1 || ms > PML_MAX_DELAY_MS)
        luaL_error(L, "%s: ms must be an integer from 1 to %d (got %s)", fn, PML_MAX_DELAY_MS, describe_arg(L, arg));
    return ms;
}

// The callback of pml.after / pml.every, kept alive in the registry; returns the reference.
static int ref_callback(lua_State *L, int arg, const char *fn) {
    if (lua_type(L, arg) != LUA_TFUNCTION)
        luaL_error(L, "%s: fn must be a function (got %s)", fn, describe_arg(L, arg));
    lua_pushvalue(L, arg);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

// ---- The `pml` table: C closures over one upvalue, the pml_op ----

// Checks and converts the arguments, asks Swift, and returns Swift's values or raises its error.
// Stack: the Lua arguments.
static int pml_trampoline(lua_State *L) {
    pml_state *s = state_of(L);
    pml_op op = (pml_op)lua_tointeger(L, lua_upvalueindex(1));
    const char *one = NULL;
    size_t one_len = 0;
    const char **strings = &one;
    size_t *lengths = &one_len;
    int count = 1;
    lua_Integer integer = 0;
    int ref = LUA_NOREF;
    int message = 0;
    switch (op) {
    case PML_OP_LOG:
    case PML_OP_WARN: {
        int n = lua_gettop(L);
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (int i = 1; i <= n; i++) {
            if (i > 1) luaL_addchar(&b, '\t');
            luaL_tolstring(L, i, NULL);
            luaL_addvalue(&b);
        }
        luaL_pushresult(&b);
        one = lua_tolstring(L, -1, &one_len);
        break;
    }
    case PML_OP_APPS: count = 0; break;
    case PML_OP_WORKERS:
    case PML_OP_RESTART: one = luaL_checklstring(L, 1, &one_len); break;
    case PML_OP_SPAWN: {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_Unsigned n = lua_rawlen(L, 1);
        luaL_argcheck(L, n > 0 && n < 4096, 1, "argv must be a list of 1 to 4095 strings");
        count = (int)n;
        // Arrays on the Lua heap, so that an error below frees them; the strings stay on the stack.
        strings = lua_newuserdatauv(L, n * sizeof *strings, 0);
        lengths = lua_newuserdatauv(L, n * sizeof *lengths, 0);
        luaL_checkstack(L, count, "argv too long");
        for (int i = 0; i < count; i++) {
            lua_rawgeti(L, 1, i + 1);
            if (!lua_isstring(L, -1)) return luaL_error(L, "bad argument #1 to 'spawn' (argv[%d] is not a string)", i + 1);
            strings[i] = lua_tolstring(L, -1, &lengths[i]);
        }
        break;
    }
    case PML_OP_SEND:
        integer = check_worker(L, 1, "pml.send");
        message = check_message_arg(L, 2, "pml.send");
        count = 0;
        break;
    case PML_OP_BROADCAST:
        one = check_app(L, 1, "pml.broadcast", &one_len);
        message = check_message_arg(L, 2, "pml.broadcast");
        break;
    case PML_OP_SCALE:
        one = check_app(L, 1, "pml.scale", &one_len);
        integer = check_instances(L, 2, "pml.scale");
        break;
    case PML_OP_METRICS: one = check_app(L, 1, "pml.metrics", &one_len); break;
    case PML_OP_RELOAD:
        one = check_app(L, 1, "pml.reload", &one_len);
        if (!lua_isnoneornil(L, 2)) {
            if (lua_type(L, 2) != LUA_TTABLE)
                luaL_error(L, "pml.reload: opts must be a table such as { graceful = true } (got %s)", describe_arg(L, 2));
            message = check_message_arg(L, 2, "pml.reload");
        }
        break;
    case PML_OP_AFTER:
    case PML_OP_EVERY: {
        const char *fn = op == PML_OP_AFTER ? "pml.after" : "pml.every";
        integer = check_delay(L, 1, fn);
        ref = ref_callback(L, 2, fn); // last: nothing below may raise before the dispatch owns it
        count = 0;
        break;
    }
    case PML_OP_CANCEL: {
        int isint = 0;
        if (lua_type(L, 1) == LUA_TNUMBER) integer = lua_tointegerx(L, 1, &isint);
        if (!isint) luaL_error(L, "pml.cancel: id must be a timer id (got %s)", describe_arg(L, 1));
        count = 0;
        break;
    }
    }
    char source[LUA_IDSIZE + 24];
    lua_location(L, 1, source, sizeof source);
    pml_request request = {
        .op = op, .source = source, .strings = strings, .lengths = lengths, .count = count,
        .integer = integer, .ref = ref, .thread = L, .message = message,
    };
    pml_reply reply = {NULL, 0};
    if (s->dispatch(s->ctx, &request, &reply) == PML_REPLY_ERROR) {
        // The host scheduled nothing, so nothing will ever release the callback.
        if (ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, ref);
        luaL_where(L, 1);
        lua_pushlstring(L, (const char *)reply.data, reply.length);
        lua_concat(L, 2);
        return lua_error(L);
    }
    return push_list(L, reply.data, reply.length);
}

// ---- Protected entry points ----

// Finalizers run with hooks off, so no budget could stop one (see the sandbox). Values of one
// type share a metatable: the string library's, and the io library's for every file handle (it
// has a C __gc). Scripts must not reach either, or they could add a __gc (or replace __index) for
// every script: getmetatable answers false for them.
// Neither may a script reach the process's standard input or output, which can block (a read of
// a terminal, a write to a full pipe): io's default input and output start as closed files.
static void lock_shared_metatables(lua_State *L) {
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);
    luaL_getmetatable(L, LUA_FILEHANDLE);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
    push_closed_stream(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "_IO_input"); // liolib's keys for the default files
    push_closed_stream(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "_IO_output");
}

// The C helpers the sandbox prelude receives as its argument.
static void push_native(lua_State *L) {
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, native_open);
    lua_setfield(L, -2, "open");
    lua_pushcfunction(L, native_guard);
    lua_setfield(L, -2, "guard");
    // The errno values (from io.open's third result) that mean "no such file", for require.
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, 1);
    lua_rawseti(L, -2, ENOENT);
    lua_pushboolean(L, 1);
    lua_rawseti(L, -2, ENOTDIR);
    lua_setfield(L, -2, "missing");
}

typedef struct setup_args {
    const char *prelude;
    size_t prelude_len;
    const char *package_path;
} setup_args;

static int setup_body(lua_State *L) {
    const setup_args *a = lua_touserdata(L, 1);
    // Every standard library except debug, which could reach past the sandbox.
    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base}, {LUA_LOADLIBNAME, luaopen_package},
        {LUA_COLIBNAME, luaopen_coroutine}, {LUA_TABLIBNAME, luaopen_table},
        {LUA_IOLIBNAME, luaopen_io}, {LUA_OSLIBNAME, luaopen_os},
        {LUA_STRLIBNAME, luaopen_string}, {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8}, {NULL, NULL},
    };
    for (const luaL_Reg *lib = libs; lib->func != NULL; lib++) {
        luaL_requiref(L, lib->name, lib->func, 1);
        lua_pop(L, 1);
    }
    lua_getglobal(L, LUA_LOADLIBNAME);
    lua_pushstring(L, a->package_path);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);

    // Indexed by pml_op.
    static const char *const names[] = {
        "log", "warn", "apps", "workers", "restart", "spawn", "send", "broadcast", "scale",
        "metrics", "after", "every", "cancel", "reload",
    };
    enum { NAMES = sizeof names / sizeof *names };
    _Static_assert(NAMES == PML_OP_RELOAD + 1, "one name per pml_op");
    lua_createtable(L, 0, NAMES);
    for (int op = 0; op < NAMES; op++) {
        lua_pushinteger(L, op);
        lua_pushcclosure(L, pml_trampoline, 1);
        lua_setfield(L, -2, names[op]);
    }
    lua_setglobal(L, "pml");

    lock_shared_metatables(L);

    if (luaL_loadbufferx(L, a->prelude, a->prelude_len, "=pml.sandbox", "t") != LUA_OK) return lua_error(L);
    push_native(L);
    lua_call(L, 1, 1);
    luaL_checktype(L, -1, LUA_TFUNCTION);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "pml.newenv");
    // The environment library calls (callLibrary) run in, searching only the library folders.
    lua_call(L, 0, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "pml.libenv");
    return 0;
}

int pml_setup(lua_State *L, const char *prelude, size_t prelude_len, const char *package_path,
              pml_dispatch_fn dispatch, void *ctx) {
    pml_state *s = state_of(L);
    s->dispatch = dispatch;
    s->ctx = ctx;
    setup_args a = {prelude, prelude_len, package_path};
    return run_protected(L, setup_body, &a, 0, "setup");
}

typedef struct eval_args {
    const char *source;
    size_t source_len;
    const char *chunkname;
    const char *dir;
} eval_args;

static int eval_body(lua_State *L) {
    const eval_args *a = lua_touserdata(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, "pml.newenv");
    lua_pushstring(L, a->dir);
    lua_call(L, 1, 1);
    // As the lua command does: skip a UTF-8 byte-order mark and a "#!" first line (keeping its
    // newline, so line numbers stay right).
    const char *src = a->source;
    size_t len = a->source_len;
    if (len >= 3 && memcmp(src, "\xEF\xBB\xBF", 3) == 0) src += 3, len -= 3;
    if (len > 0 && src[0] == '#') {
        while (len > 0 && src[0] != '\n') src++, len--;
    }
    if (luaL_loadbufferx(L, src, len, a->chunkname, "t") != LUA_OK) return lua_error(L);
    lua_pushvalue(L, -2);
    lua_setupvalue(L, -2, 1); // a main chunk's only upvalue is _ENV
    lua_call(L, 0, 1);
    return 1;
}

int pml_eval(lua_State *L, const char *source, size_t source_len, const char *chunkname,
             const char *dir, const char *label) {
    eval_args a = {source, source_len, chunkname, dir};
    return run_protected(L, eval_body, &a, 0, label);
}

typedef struct ref_args {
    int count;
    int *refs;
} ref_args;

// Stack: the ref_args, the value.
static int ref_body(lua_State *L) {
    const ref_args *a = lua_touserdata(L, 1);
    if (a->count == 0) {
        lua_pushvalue(L, 2);
        a->refs[0] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    for (int i = 0; i < a->count; i++) {
        lua_rawgeti(L, 2, i + 1);
        a->refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    return 0;
}

int pml_ref_values(lua_State *L, int index, int count, int *refs) {
    for (int i = 0; i < (count > 0 ? count : 1); i++) refs[i] = LUA_NOREF;
    if (!lua_checkstack(L, 1)) return LUA_ERRMEM;
    lua_pushvalue(L, index);
    ref_args a = {count, refs};
    return run_protected(L, ref_body, &a, 1, "ref");
}

static int unref_body(lua_State *L) {
    luaL_unref(L, LUA_REGISTRYINDEX, *(const int *)lua_touserdata(L, 1));
    return 0;
}

void pml_unref(lua_State *L, int ref) {
    // Unref does not allocate today, but nothing promises it: stay protected.
    int top = lua_gettop(L);
    run_protected(L, unref_body, &ref, 0, "unref");
    lua_settop(L, top);
}

typedef struct call_args {
    int ref;
    const char *key; // the hook's (dotted) path, the library function's name, or NULL: ref is the function
    const char *module;
    const unsigned char *args;
    size_t args_len;
    int *not_defined;
    const char *label;
    int describe; // instead of calling the function, leave the message for its running out of memory
} call_args;

// Pushes the arguments, calls the function on top, leaves its first result.
static int finish_call(lua_State *L, const call_args *a) {
    if (!lua_isfunction(L, -1)) {
        *a->not_defined = 1;
        return 0;
    }
    if (a->describe) {
        char limit[48];
        lua_Debug ar;
        describe_limit(limit, sizeof limit, state_of(L)->limit);
        lua_getinfo(L, ">S", &ar);
        if (ar.linedefined > 0)
            lua_pushfstring(L, "%s:%d: %s exceeded the memory limit (%s)", ar.short_src, ar.linedefined, a->label, limit);
        else
            lua_pushfstring(L, "%s exceeded the memory limit (%s)", a->label, limit);
        return 1;
    }
    int n = push_list(L, a->args, a->args_len);
    lua_call(L, n, 1);
    return 1;
}

// Calls table[key] where table is the reference `ref` (key may be dotted), or with no key the
// function that is the reference itself.
static int hook_body(lua_State *L) {
    const call_args *a = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->ref);
    for (const char *p = a->key; p != NULL;) {
        if (!lua_istable(L, -1)) {
            *a->not_defined = 1;
            return 0;
        }
        const char *dot = strchr(p, '.');
        lua_pushlstring(L, p, dot != NULL ? (size_t)(dot - p) : strlen(p));
        lua_gettable(L, -2); // not raw: an app table may inherit its hooks through __index
        lua_remove(L, -2);
        if (dot == NULL) break;
        p = dot + 1;
    }
    return finish_call(L, a);
}

// Runs a hook or library call. Lua raises memory errors without a location, so then the message
// names where the called function is defined instead.
static int call_function(lua_State *L, lua_CFunction body, call_args *a) {
    int top = lua_gettop(L);
    int status = run_protected(L, body, a, 0, a->label);
    if (status == LUA_ERRMEM) {
        lua_settop(L, top);
        a->describe = 1;
        if (run_protected(L, body, a, 0, a->label) != LUA_OK) lua_settop(L, top);
    }
    return status;
}

int pml_call_hook(lua_State *L, int ref, const char *path, const unsigned char *args,
                  size_t args_len, const char *label, int *not_defined) {
    *not_defined = 0;
    call_args a = {ref, path, NULL, args, args_len, not_defined, label, 0};
    return call_function(L, hook_body, &a);
}

int pml_call_ref(lua_State *L, int ref, const unsigned char *args, size_t args_len, const char *label,
                 int *not_defined) {
    *not_defined = 0;
    call_args a = {ref, NULL, NULL, args, args_len, not_defined, label, 0};
    return call_function(L, hook_body, &a);
}

static int library_body(lua_State *L) {
    const call_args *a = lua_touserdata(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, "pml.libenv");
    lua_getfield(L, -1, "require");
    lua_pushstring(L, a->module);
    lua_call(L, 1, 1);
    if (!lua_istable(L, -1)) {
        *a->not_defined = 1;
        return 0;
    }
    lua_getfield(L, -1, a->key);
    return finish_call(L, a);
}

int pml_call_library(lua_State *L, const char *module, const char *function,
                     const unsigned char *args, size_t args_len, const char *label,
                     int *not_defined) {
    *not_defined = 0;
    call_args a = {LUA_NOREF, function, module, args, args_len, not_defined, label, 0};
    return call_function(L, library_body, &a);
}
