#ifndef PML_CSYSTEMSHIM_H
#define PML_CSYSTEMSHIM_H

#include <stdint.h>
#include <sys/types.h>

/* What pml_spawn needs. Everything is prepared by the parent before fork so the child
 * only makes async-signal-safe calls. */
typedef struct {
    const char *path;            /* absolute path of the program */
    char *const *argv;           /* NULL-terminated */
    char **envp;                 /* NULL-terminated; entry listen_pid_index is rewritten in the child */
    const char *cwd;             /* NULL: inherit */
    const int *fd_sources;       /* parent fds ... */
    const int *fd_targets;       /* ... become these child fds */
    int fd_count;
    int new_session;             /* setsid(): own session and process group */
    int parent_death_signal;     /* 0: none; else PR_SET_PDEATHSIG */
    int listen_pid_index;        /* -1: none; else envp[i] has room for "LISTEN_PID=<pid>" */
    int set_credentials;         /* 1: become uid/gid with these supplementary groups (root only) */
    uid_t uid;
    gid_t gid;
    const gid_t *groups;
    int group_count;
} pml_spawn_attr;

/* Fork and exec. Returns 0 and sets *pid, or an errno value (exec failures included). */
int pml_spawn(const pml_spawn_attr *attr, pid_t *pid);

/* The supplementary groups of user `name` with primary group `gid` (getgrouplist). Returns the
 * count, or -1 when `max` is too small. */
int pml_group_list(const char *name, gid_t gid, gid_t *groups, int max);

/* inotify, non-blocking and CLOEXEC. */
int pml_inotify_init(void);
/* Watches a folder (not following a symlink) for what watch mode cares about. */
int pml_inotify_add_dir(int fd, const char *path);
enum {
    PML_IN_Q_OVERFLOW = 0x4000,
    PML_IN_IGNORED = 0x8000,
    PML_IN_ISDIR = 0x40000000,
    PML_IN_CREATE = 0x100,
    PML_IN_MOVED_TO = 0x80,
    PML_IN_DELETE_SELF = 0x400,
    PML_IN_MOVE_SELF = 0x800,
};

/* epoll, reduced to what the event loop uses. */
typedef struct {
    uint32_t events;
    uint64_t data;
} pml_epoll_event;

enum {
    PML_EPOLLIN = 0x001,
    PML_EPOLLOUT = 0x004,
    PML_EPOLLERR = 0x008,
    PML_EPOLLHUP = 0x010,
    PML_EPOLLRDHUP = 0x2000,
};

int pml_epoll_create(void);
int pml_epoll_add(int epfd, int fd, uint32_t events, uint64_t data);
int pml_epoll_mod(int epfd, int fd, uint32_t events, uint64_t data);
int pml_epoll_del(int epfd, int fd);
/* Waits at most `timeout_us` microseconds (< 0: no limit) for events. */
int pml_epoll_wait(int epfd, pml_epoll_event *events, int max, long long timeout_us);
/* 1 if the kernel takes epoll_pwait2 (timeouts in microseconds), 0 if it refuses it (ENOSYS,
   EPERM): then timeouts round up to whole milliseconds. */
int pml_epoll_microseconds(void);

/* Blocks the given signals in the calling thread and returns a CLOEXEC|NONBLOCK signalfd for them. */
int pml_signalfd_open(const int *signals, int count);
/* Reads one signal from a signalfd: its number, 0 if none is pending, -1 on error. */
int pml_signalfd_read(int fd);
/* Unblocks every signal in the calling thread. */
void pml_unblock_all_signals(void);

int pml_pipe(int fds[2], int nonblocking);
int pml_socketpair_stream(int fds[2]);
/* A CLOEXEC|NONBLOCK eventfd: one thread signals it, the event loop of another wakes and drains it. */
int pml_eventfd(void);
void pml_eventfd_signal(int fd);
void pml_eventfd_drain(int fd);
/* Sets the nice value of the calling thread only (Linux schedules threads by their own nice). */
int pml_nice_this_thread(int nice);
/* The calling thread's kernel id (gettid): what /proc/<pid>/task and cgroup `tasks` files name. */
int pml_this_thread_id(void);
/* Makes thread `tid` of this process SCHED_IDLE: it runs only when nothing else of its CPU group wants to. */
int pml_idle_thread(int tid);
/* Names the calling thread (15 bytes kept): /proc/<pid>/task/<tid>/comm, ps and top show it. */
int pml_name_this_thread(const char *name);
/* accept4 with CLOEXEC; NONBLOCK only if asked (handed-over connections stay blocking, as accept() gives them). */
int pml_accept(int fd, int nonblocking);
int pml_set_nonblocking(int fd, int on);
int pml_peer_credentials(int fd, uid_t *uid, pid_t *pid);

/* Sends buf with fd attached as SCM_RIGHTS (fd < 0: no fd). MSG_NOSIGNAL|MSG_DONTWAIT. */
ssize_t pml_send_with_fd(int sock, const void *buf, size_t len, int fd);

int pml_set_child_subreaper(void);

/* A listening TCP socket, CLOEXEC, SO_REUSEADDR. host NULL: every interface, one dual-stack
 * IPv6 socket (IPv4 only where IPv6 is off). Returns the fd and the bound port, or -1 with errno
 * (EAI errors from name lookup become EADDRNOTAVAIL). */
int pml_tcp_listen(const char *host, int port, int backlog, int nonblocking, int reuseport, int *bound_port);

/* 1 if the TCP socket fd is bound to an address host names (as pml_tcp_listen resolves it) and to
 * port (0: any port), else 0. */
int pml_tcp_bound_to(int fd, const char *host, int port);
/* The port a TCP socket is bound to, or -1. */
int pml_bound_port(int fd);

/* A unix datagram socket at path that receives senders' credentials (for NOTIFY_SOCKET). */
int pml_notify_socket(const char *path);
/* Receives one datagram and the sender's pid (0 if none came). -1 with EAGAIN when empty. */
ssize_t pml_recv_notify(int fd, void *buf, size_t len, pid_t *pid);

/* waitpid status decoding (the W* macros do not import). */
int pml_wifexited(int status);
int pml_wexitstatus(int status);
int pml_wifsignaled(int status);
int pml_wtermsig(int status);

/* The git commit pml was built from: -DPML_COMMIT="..." at build time (scripts/install.sh), else "unknown". */
const char *pml_build_commit(void);

/* statfs(2)'s f_type of the file system holding `path`, in *type (statfs is not in Swift's Glibc
 * module). Returns 0, or -1 with errno. */
int pml_statfs_type(const char *path, long *type);

#endif
