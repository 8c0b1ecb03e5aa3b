// The C side of pml's Lua runtime: everything that may raise a Lua error lives here, so that a
// longjmp never crosses a Swift frame. Swift reads results with non-raising calls only
// (lua_type, lua_tolstring on strings, lua_next, ...) and passes values in as encoded bytes.
#ifndef CLUASHIM_H
#define CLUASHIM_H

#include <lua5.4/lua.h>
#include <lua5.4/lualib.h>
#include <lua5.4/lauxlib.h>
#include <stddef.h>

// Encoded values (Swift → Lua). A list of values is a uint32 count followed by the values; each
// value is a tag byte and its payload, in native byte order:
//   NIL, FALSE, TRUE: nothing; INT: int64; DOUBLE: double; STRING: uint32 length + bytes;
//   ARRAY: uint32 count + values; OBJECT: uint32 count + (STRING-payload key, value) pairs.
enum {
    PML_ENC_NIL = 0, PML_ENC_FALSE, PML_ENC_TRUE, PML_ENC_INT, PML_ENC_DOUBLE,
    PML_ENC_STRING, PML_ENC_ARRAY, PML_ENC_OBJECT,
};
// Tables exist only at depths 1 to PML_ENC_MAX_DEPTH - 1 (a top-level value is at depth 1): the
// Swift encoder writes deeper ones as nil, and the decoder refuses them.
#define PML_ENC_MAX_DEPTH 64

// The functions of the `pml` table that call into Swift.
typedef enum pml_op {
    PML_OP_LOG = 0, PML_OP_WARN, PML_OP_APPS, PML_OP_WORKERS, PML_OP_RESTART, PML_OP_SPAWN,
    PML_OP_SEND, PML_OP_BROADCAST, PML_OP_SCALE, PML_OP_METRICS, PML_OP_AFTER, PML_OP_EVERY,
    PML_OP_CANCEL, PML_OP_RELOAD,
} pml_op;

// The longest delay of pml.after / pml.every: one day, as CheckedNumber.maxDelayMs.
#define PML_MAX_DELAY_MS 86400000

// Messages (pml.send, pml.broadcast) hold tables at depths 1 to PML_MESSAGE_MAX_DEPTH only; Swift's
// ValueReader reads deeper tables as nil, so C refuses them rather than lose them silently.
#define PML_MESSAGE_MAX_DEPTH 32

// A call from Lua into Swift, with every argument already checked and converted by C.
typedef struct pml_request {
    pml_op op;
    // "file:line" of the calling Lua code ("?" when unknown).
    const char *source;
    // LOG/WARN: the message; WORKERS: the app; RESTART: the target; SPAWN: argv;
    // BROADCAST/SCALE/METRICS: the app name.
    const char *const *strings;
    const size_t *lengths;
    int count;
    // SEND: the worker id; SCALE: the instance count (>= 0); AFTER/EVERY: the delay in ms (>= 1);
    // CANCEL: the timer id.
    lua_Integer integer;
    // AFTER/EVERY: a registry reference to the callback, made by C. Swift owns it once the dispatch
    // succeeds (and releases it with pml_unref); when the dispatch answers an error, C drops it.
    int ref;
    // SEND/BROADCAST: the message (RELOAD: its options table, or 0 when none), checked JSON-able, at stack index `message` of `thread` (the
    // calling coroutine, not necessarily the main thread). Swift reads it with non-raising calls.
    lua_State *thread;
    int message;
} pml_request;

// Swift's answer. The bytes stay owned by Swift and must stay valid until the next dispatch.
typedef struct pml_reply {
    const unsigned char *data;
    size_t length;
} pml_reply;

enum {
    // reply holds an encoded list of values to return to Lua.
    PML_REPLY_VALUES = 0,
    // reply holds an error message: the trampoline raises it at the caller's file:line.
    PML_REPLY_ERROR = 1,
};

// Swift's handler for every pml.* call; returns PML_REPLY_VALUES or PML_REPLY_ERROR and never raises.
typedef int (*pml_dispatch_fn)(void *ctx, const pml_request *request, pml_reply *reply);

// A new state whose allocator refuses to grow past `memory_limit` bytes; NULL if even that fails.
lua_State *pml_newstate(size_t memory_limit);
// Closes the state; finalizers that run now get a fresh budget.
void pml_close(lua_State *L);
size_t pml_memory_in_use(lua_State *L);
// Per-call limits: instructions and wall-clock milliseconds.
void pml_set_budget(lua_State *L, long instructions, int time_ms);

// Every function below runs its work under lua_pcall, the budget and the memory cap, and returns
// the Lua status (LUA_OK, LUA_ERRRUN, LUA_ERRMEM, ...). On success the result is on top of the
// stack; on failure, normally the error message (a string, "file:line: msg" when the location is
// known). Callers restore the stack top themselves.

// Opens the standard libraries, sets package.path, creates the `pml` table whose functions call
// `dispatch(ctx, ...)`, then runs `prelude` (the sandbox) with the full globals. The prelude must
// return the function that makes an environment: it is kept in the registry for pml_eval.
int pml_setup(lua_State *L, const char *prelude, size_t prelude_len, const char *package_path,
              pml_dispatch_fn dispatch, void *ctx);

// Opens `name` with `flags` (O_RDONLY, O_WRONLY|O_CREAT, ...; mode 0666) for Lua code to read:
// app files, plugins, `require`, and io.open in scripts. Regular files only, and never waiting
// in open(2) (O_NONBLOCK: a FIFO waits for its other end) nor in later reads and writes (only a
// regular file's never wait). Returns the fd (close-on-exec), -1 with errno when open or fstat
// fails, or PML_NOT_REGULAR when the file is not a regular one (errno EISDIR for a directory).
#define PML_NOT_REGULAR (-2)
int pml_open_regular(const char *name, int flags);

// Loads `source` (text only) as chunk `chunkname`, in a new environment whose `require` also
// searches `dir`, and calls it. Leaves the chunk's first return value.
int pml_eval(lua_State *L, const char *source, size_t source_len, const char *chunkname,
             const char *dir, const char *label);

// Registry references to the value at `index`: to each of its elements 1..count, or to the value
// itself when count is 0 (refs then has room for one). Unmade references stay LUA_NOREF.
int pml_ref_values(lua_State *L, int index, int count, int *refs);

// Drops a registry reference.
void pml_unref(lua_State *L, int ref);

// Calls table[path](args...) where table is the registry reference `ref`; `path` may be dotted
// ("autoscale.rule"). Sets *not_defined (and leaves nil) when that is not a function. On
// LUA_ERRMEM the message is located where the function is defined ("app.lua:3: <label> exceeded
// the memory limit (64 MiB)"), as Lua gives no location for memory errors.
int pml_call_hook(lua_State *L, int ref, const char *path, const unsigned char *args,
                  size_t args_len, const char *label, int *not_defined);

// Calls the function that is the registry reference `ref` (see pml_request.ref) with `args`; sets
// *not_defined when the reference holds no function.
int pml_call_ref(lua_State *L, int ref, const unsigned char *args, size_t args_len, const char *label,
                 int *not_defined);

// Calls require(module)[function](args...) in the library environment.
int pml_call_library(lua_State *L, const char *module, const char *function,
                     const unsigned char *args, size_t args_len, const char *label,
                     int *not_defined);

// lua_pop is a macro.
void pml_pop(lua_State *L, int n);

#endif
