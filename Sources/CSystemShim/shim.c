#include "csystemshim.h"

#include <errno.h>
#include <stdio.h>
#include <pthread.h>
#include <sched.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <netdb.h>
#include <netinet/in.h>
#include <grp.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <linux/close_range.h>

/* Child side of pml_spawn: only async-signal-safe calls from here on. Reports errno on errfd. */
static void spawn_child(const pml_spawn_attr *a, int errfd, pid_t parent) {
    int err = 0;
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    /* Reset dispositions before unblocking so no inherited handler can run in the child. */
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        (void)sigaction(sig, &dfl, NULL);
    }
    sigset_t none;
    sigemptyset(&none);
    (void)sigprocmask(SIG_SETMASK, &none, NULL);

    if (a->new_session && setsid() < 0) goto fail;
    /* Groups, then gid, then uid (after setuid nothing else may change); before PDEATHSIG,
     * which the kernel clears when credentials change. */
    if (a->set_credentials) {
        if (setgroups((size_t)a->group_count, a->groups) < 0) goto fail;
        if (setgid(a->gid) < 0) goto fail;
        if (setuid(a->uid) < 0) goto fail;
    }
    if (a->parent_death_signal) {
        if (prctl(PR_SET_PDEATHSIG, a->parent_death_signal, 0, 0, 0) < 0) goto fail;
        /* The parent may have died before prctl: then nobody would signal us. */
        if (getppid() != parent) _exit(1);
    }

    /* Move sources above every target first so one mapping cannot clobber another's source. */
    int maxfd = errfd;
    for (int i = 0; i < a->fd_count; i++) {
        if (a->fd_targets[i] > maxfd) maxfd = a->fd_targets[i];
        if (a->fd_sources[i] > maxfd) maxfd = a->fd_sources[i];
    }
    int moved[64];
    if (a->fd_count > 64) { errno = EINVAL; goto fail; }
    for (int i = 0; i < a->fd_count; i++) {
        moved[i] = fcntl(a->fd_sources[i], F_DUPFD_CLOEXEC, maxfd + 1 + i);
        if (moved[i] < 0) goto fail;
    }
    int maxtarget = 2;
    for (int i = 0; i < a->fd_count; i++) {
        if (dup2(moved[i], a->fd_targets[i]) < 0) goto fail; /* dup2 clears CLOEXEC on the target */
        if (a->fd_targets[i] > maxtarget) maxtarget = a->fd_targets[i];
    }
    /* Nothing else leaks into the worker, even fds opened without CLOEXEC by a library. */
    (void)syscall(SYS_close_range, (unsigned)maxtarget + 1, ~0U, CLOSE_RANGE_CLOEXEC);

    if (a->listen_pid_index >= 0) {
        /* systemd's LISTEN_PID must be the worker's own pid, known only now. */
        char *slot = a->envp[a->listen_pid_index];
        static const char prefix[] = "LISTEN_PID=";
        char digits[24];
        int n = 0;
        unsigned long v = (unsigned long)getpid();
        do { digits[n++] = (char)('0' + v % 10); v /= 10; } while (v && n < 23);
        size_t p = sizeof prefix - 1;
        memcpy(slot, prefix, p);
        while (n) slot[p++] = digits[--n];
        slot[p] = 0;
    }
    if (a->cwd && chdir(a->cwd) < 0) goto fail;
    execve(a->path, a->argv, a->envp);
fail:
    err = errno;
    ssize_t ignored = write(errfd, &err, sizeof err);
    (void)ignored;
    _exit(127);
}

int pml_spawn(const pml_spawn_attr *a, pid_t *pid) {
    int errpipe[2];
    if (pipe2(errpipe, O_CLOEXEC) < 0) return errno;
    pid_t parent = getpid();
    pid_t child = fork();
    if (child < 0) {
        int e = errno;
        close(errpipe[0]);
        close(errpipe[1]);
        return e;
    }
    if (child == 0) {
        close(errpipe[0]);
        spawn_child(a, errpipe[1], parent);
    }
    close(errpipe[1]);
    int childerr = 0;
    ssize_t n;
    do { n = read(errpipe[0], &childerr, sizeof childerr); } while (n < 0 && errno == EINTR);
    close(errpipe[0]);
    if (n == (ssize_t)sizeof childerr) {
        int status;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
        return childerr ? childerr : ECHILD;
    }
    *pid = child;
    return 0;
}

int pml_group_list(const char *name, gid_t gid, gid_t *groups, int max) {
    int n = max;
    if (getgrouplist(name, gid, groups, &n) < 0) return -1;
    return n;
}

int pml_inotify_init(void) { return inotify_init1(IN_NONBLOCK | IN_CLOEXEC); }

int pml_inotify_add_dir(int fd, const char *path) {
    uint32_t mask = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK;
    return inotify_add_watch(fd, path, mask);
}

int pml_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

static int epoll_op(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev);
}

int pml_epoll_add(int epfd, int fd, uint32_t events, uint64_t data) { return epoll_op(epfd, EPOLL_CTL_ADD, fd, events, data); }
int pml_epoll_mod(int epfd, int fd, uint32_t events, uint64_t data) { return epoll_op(epfd, EPOLL_CTL_MOD, fd, events, data); }
int pml_epoll_del(int epfd, int fd) { return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL); }

// glibc before 2.35 has no epoll_pwait2 wrapper: the system call itself, whose number is the same
// on every architecture.
#ifndef SYS_epoll_pwait2
#define SYS_epoll_pwait2 441
#endif

static _Atomic int no_pwait2; // every thread's loop learns it once

static int epoll_pwait2_us(int epfd, struct epoll_event *evs, int max, long long timeout_us) {
    struct timespec t = { (time_t)(timeout_us / 1000000), (long)(timeout_us % 1000000) * 1000 };
    int n = no_pwait2 ? -1 : (int)syscall(SYS_epoll_pwait2, epfd, evs, max, &t, NULL, (size_t)0);
    if (n < 0 && (no_pwait2 || errno == ENOSYS || errno == EPERM)) no_pwait2 = 1;
    return n;
}

int pml_epoll_microseconds(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0) return 0;
    struct epoll_event ev;
    epoll_pwait2_us(fd, &ev, 1, 0);
    close(fd);
    return !no_pwait2;
}

int pml_epoll_wait(int epfd, pml_epoll_event *out, int max, long long timeout_us) {
    struct epoll_event evs[64];
    if (max > 64) max = 64;
    int n;
    if (timeout_us < 0) {
        n = epoll_wait(epfd, evs, max, -1);
    } else {
        // Microseconds: a listener's accept hold is a few hundred µs, and epoll_wait's
        // milliseconds would round it up fourfold. A kernel without epoll_pwait2 (before 5.11,
        // or a seccomp filter that refuses it) gets the milliseconds, rounded up.
        n = epoll_pwait2_us(epfd, evs, max, timeout_us);
        if (n < 0 && no_pwait2) {
            long long ms = (timeout_us + 999) / 1000;
            n = epoll_wait(epfd, evs, max, ms > 0x7fffffff ? 0x7fffffff : (int)ms);
        }
    }
    for (int i = 0; i < n; i++) {
        out[i].events = evs[i].events;
        out[i].data = evs[i].data.u64;
    }
    return n;
}

int pml_signalfd_open(const int *signals, int count) {
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < count; i++) sigaddset(&set, signals[i]);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) return -1;
    return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

int pml_signalfd_read(int fd) {
    struct signalfd_siginfo info;
    ssize_t n;
    do { n = read(fd, &info, sizeof info); } while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof info) return (int)info.ssi_signo;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    return -1;
}

void pml_unblock_all_signals(void) {
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
}

int pml_pipe(int fds[2], int nonblocking) { return pipe2(fds, O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0)); }

int pml_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

void pml_eventfd_signal(int fd) {
    uint64_t one = 1;
    // Only EAGAIN can fail here (the counter at its maximum): the reader is woken either way.
    (void)!write(fd, &one, sizeof one);
}

void pml_eventfd_drain(int fd) {
    uint64_t count;
    (void)!read(fd, &count, sizeof count);
}

int pml_nice_this_thread(int nice) { return setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), nice); }

int pml_this_thread_id(void) { return (int)syscall(SYS_gettid); }

int pml_idle_thread(int tid) {
    struct sched_param param = { .sched_priority = 0 };
    return sched_setscheduler((pid_t)tid, SCHED_IDLE, &param); /* a tid: that thread only */
}

int pml_name_this_thread(const char *name) { return prctl(PR_SET_NAME, name, 0, 0, 0); }

int pml_socketpair_stream(int fds[2]) { return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds); }

int pml_accept(int fd, int nonblocking) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0)); }

int pml_set_nonblocking(int fd, int on) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
    return fcntl(fd, F_SETFL, flags);
}

int pml_peer_credentials(int fd, uid_t *uid, pid_t *pid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return -1;
    *uid = cred.uid;
    *pid = cred.pid;
    return 0;
}

ssize_t pml_send_with_fd(int sock, const void *buf, size_t len, int fd) {
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    if (fd >= 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ssize_t n;
    do { n = sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT); } while (n < 0 && errno == EINTR);
    return n;
}

int pml_set_child_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); }

int pml_wifexited(int status) { return WIFEXITED(status); }
int pml_wexitstatus(int status) { return WEXITSTATUS(status); }
int pml_wifsignaled(int status) { return WIFSIGNALED(status); }
int pml_wtermsig(int status) { return WTERMSIG(status); }

static int listen_on(int family, const struct sockaddr *addr, socklen_t len, int backlog, int nonblocking, int v6only, int reuseport) {
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* Before bind: every socket of a reuseport group must set it (same effective uid). */
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    if (family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
    if (bind(fd, addr, len) < 0 || listen(fd, backlog) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int bound_port_of(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) return -1;
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

int pml_tcp_listen(const char *host, int port, int backlog, int nonblocking, int reuseport, int *bound_port) {
    int fd = -1;
    if (host == NULL) {
        struct sockaddr_in6 a6;
        memset(&a6, 0, sizeof a6);
        a6.sin6_family = AF_INET6;
        a6.sin6_addr = in6addr_any;
        a6.sin6_port = htons((uint16_t)port);
        fd = listen_on(AF_INET6, (struct sockaddr *)&a6, sizeof a6, backlog, nonblocking, 0, reuseport);
        if (fd < 0 && (errno == EAFNOSUPPORT || errno == EADDRNOTAVAIL)) {
            struct sockaddr_in a4;
            memset(&a4, 0, sizeof a4);
            a4.sin_family = AF_INET;
            a4.sin_addr.s_addr = htonl(INADDR_ANY);
            a4.sin_port = htons((uint16_t)port);
            fd = listen_on(AF_INET, (struct sockaddr *)&a4, sizeof a4, backlog, nonblocking, 0, reuseport);
        }
    } else {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
        char service[16];
        snprintf(service, sizeof service, "%d", port);
        if (getaddrinfo(host, service, &hints, &res) != 0 || res == NULL) {
            errno = EADDRNOTAVAIL;
            return -1;
        }
        int err = EADDRNOTAVAIL;
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            fd = listen_on(ai->ai_family, ai->ai_addr, ai->ai_addrlen, backlog, nonblocking, 1, reuseport);
            if (fd >= 0) break;
            err = errno;
        }
        freeaddrinfo(res);
        if (fd < 0) errno = err;
    }
    if (fd >= 0 && bound_port) *bound_port = bound_port_of(fd);
    return fd;
}

int pml_tcp_bound_to(int fd, const char *host, int port) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) return 0;
    if (port != 0 && bound_port_of(fd) != port) return 0;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    if (getaddrinfo(host, "0", &hints, &res) != 0 || res == NULL) return 0;
    int match = 0;
    for (struct addrinfo *ai = res; ai && !match; ai = ai->ai_next) {
        if (ai->ai_family != ss.ss_family) continue;
        if (ss.ss_family == AF_INET)
            match = ((struct sockaddr_in *)ai->ai_addr)->sin_addr.s_addr == ((struct sockaddr_in *)&ss)->sin_addr.s_addr;
        else if (ss.ss_family == AF_INET6)
            match = memcmp(&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, &((struct sockaddr_in6 *)&ss)->sin6_addr,
                           sizeof(struct in6_addr)) == 0;
    }
    freeaddrinfo(res);
    return match;
}

int pml_bound_port(int fd) { return bound_port_of(fd); }

int pml_notify_socket(const char *path) {
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) { errno = ENAMETOOLONG; return -1; }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int one = 1;
    unlink(path);
    if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

ssize_t pml_recv_notify(int fd, void *buf, size_t len, pid_t *pid) {
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    union { char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * 8)]; struct cmsghdr align; } control;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    *pid = 0;
    ssize_t n;
    do { n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET) continue;
        if (c->cmsg_type == SCM_CREDENTIALS) {
            struct ucred cred;
            memcpy(&cred, CMSG_DATA(c), sizeof cred);
            *pid = cred.pid;
        } else if (c->cmsg_type == SCM_RIGHTS) {
            /* sd_notify may pass fds (FDSTORE); pml keeps none. */
            int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int *fds = (int *)CMSG_DATA(c);
            for (int i = 0; i < count; i++) close(fds[i]);
        }
    }
    return n;
}

#ifndef PML_COMMIT
#define PML_COMMIT "unknown"
#endif

const char *pml_build_commit(void) { return PML_COMMIT; }

int pml_statfs_type(const char *path, long *type) {
    struct statfs fs;
    if (statfs(path, &fs) < 0) return -1;
    *type = (long)fs.f_type;
    return 0;
}
