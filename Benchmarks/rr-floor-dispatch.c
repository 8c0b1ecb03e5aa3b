// A minimal rr dispatcher, without pml, in seven variants, to see what an io_uring one costs per
// connection against an epoll one under a real load (Benchmarks/rr-floor-dispatch.sh drives it;
// results in Benchmarks/README.md). The dispatcher listens on 127.0.0.1:PORT, forks 2 receivers
// and passes them the connections in turn, each over the receiver's own unix stream socketpair
// with SCM_RIGHTS (one byte + one fd a message). A receiver reads the request, writes a tiny
// HTTP/1.1 answer with Connection: close, shuts the socket down and closes it. A to E close the
// dispatcher's copy right after the send; F and G keep it until the receiver's credit, as pml does.
//
//   rr-floor-dispatch MODE PORT COUNTFILE
//   MODE  epoll        (A) epoll_wait, accept4 until EAGAIN, per connection one sendmsg + close
//         epoll-hold   (B) A, plus a 250 us nanosleep after an accept turn that came less than
//                      1 ms after the one before (pml's hold under sustained load, no back-off)
//         uring        (C) io_uring: one multishot accept; per batch one io_uring_enter submits
//                      each connection's SENDMSG (SCM_RIGHTS) linked to its CLOSE, and waits for
//                      the next completion in the same call
//         uring-batch  (D) C, but the enter waits for 8 completions for at most 250 us (min-wait
//                      when the kernel has it, IORING_FEAT_MIN_TIMEOUT, 6.12+) and then for any
//         uring-hold   (E) C with B's hold: under sustained load, the batch's sends and closes are
//                      submitted at once (enter without waiting), then a 250 us nanosleep, then
//                      the enter that collects the accepts that came meanwhile
//         epoll-credit (F) B with pml's discipline: the dispatcher keeps its copy of each connection
//                      until the receiver's credit (one byte back on the unix socket) comes, then
//                      closes it. The receiver credits as soon as it has the fd, as pml's Node shim
//                      does (in the same event-loop turn); the dispatcher reads credits once per
//                      turn, after its hold, so its close is often the last one and tears the
//                      socket down on its time, as in pml
//         epoll-credit-late (G) F, but the receiver credits after its close: the dispatcher's
//                      close is always the last one (the bound for F)
//         epoll-credit-nohold (H) F without the hold (pml's default since the hold became opt-in)
//   RR_WORK_US (environment) µs of CPU a receiver spends on each request before it answers (0 by
//              default): an app's own work, so the arrival rate can be brought near a Node app's
//   COUNTFILE  8 bytes, mapped shared: the number of connections dispatched so far (exact count
//              for the driver, which reads it between rounds)
//
// Raw syscalls (the machine's liburing-dev is 2.3, older than min-wait); the rings are set up with
// SINGLE_ISSUER | DEFER_TASKRUN, so completions' task work (the accepts themselves) runs in the
// dispatcher's own enter calls, charged to it, and no io-wq thread is needed for these operations.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define RECEIVERS 2
#define HOLD_US 250
#define BATCH 8

// Newer than this machine's kernel headers (6.1); the running kernel is 6.18.
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
struct getevents_arg { uint64_t sigmask; uint32_t sigmask_sz; uint32_t min_wait_usec; uint64_t ts; };

static void die(const char *what) { perror(what); exit(1); }

static uint64_t now_us(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

// One fd passed with one byte, the way pml passes a connection to a worker.
struct passing {
    struct msghdr m;
    struct iovec iov;
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } c;
    char byte;
};

static void prepare(struct passing *p, int fd) {
    memset(p, 0, sizeof *p);
    p->byte = 'c';
    p->iov = (struct iovec){ &p->byte, 1 };
    p->m.msg_iov = &p->iov; p->m.msg_iovlen = 1;
    p->m.msg_control = p->c.buf; p->m.msg_controllen = sizeof p->c.buf;
    struct cmsghdr *h = CMSG_FIRSTHDR(&p->m);
    h->cmsg_level = SOL_SOCKET; h->cmsg_type = SCM_RIGHTS; h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &fd, sizeof fd);
}

static void receiver(int sock, int credit, uint64_t workUs) {
    static const char answer[] = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n";
    for (;;) {
        char byte, buf[4096];
        struct iovec iov = { &byte, 1 };
        union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } c;
        struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.buf, .msg_controllen = sizeof c.buf };
        ssize_t r = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
        if (r <= 0) _exit(0);
        struct cmsghdr *h = CMSG_FIRSTHDR(&m);
        if (!h || h->cmsg_type != SCM_RIGHTS) continue;
        int fd; memcpy(&fd, CMSG_DATA(h), sizeof fd);
        if (credit == 1) (void)!write(sock, "k", 1);
        // Read up to the blank line that ends the head (wrk's GET has no body).
        size_t have = 0;
        for (;;) {
            ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
            if (n <= 0) break;
            have += n; buf[have] = 0;
            if (strstr(buf, "\r\n\r\n") || have == sizeof buf - 1) break;
        }
        for (uint64_t until = workUs ? now_us() + workUs : 0; now_us() < until;) {}
        if (have > 0) (void)!write(fd, answer, sizeof answer - 1);
        // As Node's http server does with Connection: close (end(), then destroy()): the FIN goes
        // with the shutdown, whoever holds the last reference; the last close only frees.
        shutdown(fd, SHUT_WR);
        close(fd);
        if (credit == 2) (void)!write(sock, "k", 1);
    }
}

static volatile uint64_t *counter;
static int workers[RECEIVERS];
static unsigned next_worker;

// ---- A, B, F, G and H: epoll ----

#define HELD 4096  // copies held per receiver at most (F, G, H); 50 connections in flight here
static int held[RECEIVERS][HELD];
static unsigned heldHead[RECEIVERS], heldTail[RECEIVERS];

static void run_epoll(int l, int hold, int credit) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.u32 = RECEIVERS };
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev)) die("epoll");
    for (int w = 0; credit && w < RECEIVERS; w++) {
        ev.data.u32 = w;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, workers[w], &ev)) die("epoll");
    }
    uint64_t last = 0;
    for (;;) {
        struct epoll_event got[8];
        int n = epoll_wait(ep, got, 8, -1), accepted = 0;
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int e = 0; e < n; e++) {
            unsigned w = got[e].data.u32;
            if (w < RECEIVERS) {
                // Credits: each byte says the receiver is done with its oldest connection.
                char buf[256];
                ssize_t k = recv(workers[w], buf, sizeof buf, MSG_DONTWAIT);
                for (ssize_t j = 0; j < k && heldHead[w] != heldTail[w]; j++) close(held[w][heldHead[w]++ % HELD]);
                continue;
            }
            for (;;) {
                int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
                if (c < 0) break;  // EAGAIN: the backlog is empty
                struct passing p; prepare(&p, c);
                unsigned to = next_worker++ % RECEIVERS;
                if (sendmsg(workers[to], &p.m, MSG_NOSIGNAL) < 0) perror("sendmsg");
                if (credit && heldTail[to] - heldHead[to] < HELD) held[to][heldTail[to]++ % HELD] = c;
                else close(c);
                accepted++;
            }
        }
        *counter += accepted;
        if (hold && accepted > 0) {
            uint64_t now = now_us();
            if (last && now - last < 1000) {
                struct timespec t = { 0, HOLD_US * 1000 };
                nanosleep(&t, NULL);
            }
            last = now;
        }
    }
}

// ---- C, D and E: io_uring ----

struct ring {
    int fd;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    unsigned features, queued;
};

static void ring_setup(struct ring *r, unsigned entries) {
    struct io_uring_params p = { 0 };
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
    p.cq_entries = entries * 4;
    r->fd = syscall(__NR_io_uring_setup, entries, &p);
    if (r->fd < 0) die("io_uring_setup");
    r->features = p.features;
    if (!(p.features & IORING_FEAT_SINGLE_MMAP)) { fprintf(stderr, "no single mmap\n"); exit(1); }
    size_t sqsz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cqsz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    size_t sz = sqsz > cqsz ? sqsz : cqsz;
    char *q = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    if (q == MAP_FAILED) die("mmap ring");
    r->sq_head = (unsigned *)(q + p.sq_off.head); r->sq_tail = (unsigned *)(q + p.sq_off.tail);
    r->sq_mask = (unsigned *)(q + p.sq_off.ring_mask); r->sq_array = (unsigned *)(q + p.sq_off.array);
    r->cq_head = (unsigned *)(q + p.cq_off.head); r->cq_tail = (unsigned *)(q + p.cq_off.tail);
    r->cq_mask = (unsigned *)(q + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(q + p.cq_off.cqes);
    r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) die("mmap sqes");
    r->queued = 0;
}

static struct io_uring_sqe *sqe_get(struct ring *r) {
    unsigned tail = *r->sq_tail, i = tail & *r->sq_mask;
    struct io_uring_sqe *s = &r->sqes[i];
    memset(s, 0, sizeof *s);
    r->sq_array[i] = i;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
    r->queued++;
    return s;
}

enum { TAG_ACCEPT = 1, TAG_SEND = 2, TAG_CLOSE = 3 };
#define SLOTS 1024  // sends in flight at most (a send's msghdr must live until its completion)

static void arm_accept(struct ring *r, int l) {
    struct io_uring_sqe *s = sqe_get(r);
    s->opcode = IORING_OP_ACCEPT;
    s->fd = l;
    s->ioprio = IORING_ACCEPT_MULTISHOT;
    s->accept_flags = SOCK_CLOEXEC;
    s->user_data = (uint64_t)TAG_ACCEPT << 32;
}

static void run_uring(int l, int batch, int hold) {
    struct ring r;
    ring_setup(&r, 256);
    int minWait = batch && (r.features & IORING_FEAT_MIN_TIMEOUT);
    fprintf(stderr, "rr-floor-dispatch: io_uring features %#x%s\n", r.features,
            batch ? (minWait ? ", batching with min-wait" : ", batching with a plain timeout") : "");
    static struct passing slots[SLOTS];
    static char busy[SLOTS];
    unsigned nextSlot = 0, inFlight = 0;
    arm_accept(&r, l);
    uint64_t last = 0;
    for (;;) {
        // The sends submitted here mostly complete inline and post their completions before the
        // wait starts: count them in, so the enter still sleeps until new accepts come.
        unsigned flags = IORING_ENTER_GETEVENTS, want = 1, sends = r.queued / 2;
        struct getevents_arg arg = { 0 };
        struct __kernel_timespec ts = { 0, HOLD_US * 1000 };
        void *argp = NULL; size_t argsz = 0;
        if (batch) {
            // Wait for BATCH completions; with min-wait, for at most HOLD_US, then for any one.
            // Without it, a plain 250 us timeout (an idle dispatcher then wakes every 250 us).
            want = BATCH;
            if (minWait) arg.min_wait_usec = HOLD_US; else arg.ts = (uint64_t)(uintptr_t)&ts;
            argp = &arg; argsz = sizeof arg; flags |= IORING_ENTER_EXT_ARG;
        }
        int ret = syscall(__NR_io_uring_enter, r.fd, r.queued, sends + want, flags, argp, argsz);
        if (ret < 0 && errno != ETIME && errno != EINTR && errno != EAGAIN && errno != EBUSY) die("io_uring_enter");
        r.queued = *r.sq_tail - __atomic_load_n(r.sq_head, __ATOMIC_ACQUIRE);
        unsigned head = *r.cq_head, tail = __atomic_load_n(r.cq_tail, __ATOMIC_ACQUIRE);
        int accepted = 0;
        for (; head != tail; head++) {
            struct io_uring_cqe *c = &r.cqes[head & *r.cq_mask];
            unsigned tag = c->user_data >> 32, slot = c->user_data & 0xffffffff;
            if (tag == TAG_ACCEPT) {
                if (!(c->flags & IORING_CQE_F_MORE)) arm_accept(&r, l);
                if (c->res < 0) { if (c->res != -EAGAIN) fprintf(stderr, "accept: %s\n", strerror(-c->res)); continue; }
                if (inFlight == SLOTS || *r.sq_tail - *r.sq_head + 2 > 256) {
                    // Never with this load; a real dispatcher would queue the fd instead.
                    fprintf(stderr, "rr-floor-dispatch: out of slots\n"); exit(1);
                }
                while (busy[nextSlot % SLOTS]) nextSlot++;
                unsigned k = nextSlot++ % SLOTS;
                busy[k] = 1; inFlight++;
                prepare(&slots[k], c->res);
                struct io_uring_sqe *s = sqe_get(&r);
                s->opcode = IORING_OP_SENDMSG;
                s->fd = workers[next_worker++ % RECEIVERS];
                s->addr = (uint64_t)(uintptr_t)&slots[k].m;
                s->msg_flags = MSG_NOSIGNAL;
                s->flags = IOSQE_IO_HARDLINK;  // the close after the send took the fd (or failed)
                s->user_data = (uint64_t)TAG_SEND << 32 | k;
                s = sqe_get(&r);
                s->opcode = IORING_OP_CLOSE;
                s->fd = c->res;
                s->flags = IOSQE_CQE_SKIP_SUCCESS;
                s->user_data = (uint64_t)TAG_CLOSE << 32;
                accepted++;
            } else if (tag == TAG_SEND) {
                busy[slot] = 0; inFlight--;
                if (c->res < 0) fprintf(stderr, "sendmsg: %s\n", strerror(-c->res));
            } else if (c->res < 0) {
                fprintf(stderr, "close: %s\n", strerror(-c->res));
            }
        }
        __atomic_store_n(r.cq_head, head, __ATOMIC_RELEASE);
        *counter += accepted;
        if (hold && accepted > 0) {
            uint64_t now = now_us();
            if (last && now - last < 1000) {
                // Submit now (the connections are not delayed), then sleep: with DEFER_TASKRUN the
                // accepts' task work waits for the next enter and does not wake this task.
                if (syscall(__NR_io_uring_enter, r.fd, r.queued, 0, 0, NULL, 0) < 0) die("io_uring_enter");
                r.queued = *r.sq_tail - __atomic_load_n(r.sq_head, __ATOMIC_ACQUIRE);
                struct timespec t = { 0, HOLD_US * 1000 };
                nanosleep(&t, NULL);
            }
            last = now;
        }
    }
}

int main(int argc, char **argv) {
    static const char *modes[] = { "epoll", "epoll-hold", "uring", "uring-batch", "uring-hold", "epoll-credit",
                                   "epoll-credit-late", "epoll-credit-nohold" };
    int mode = -1;
    for (int i = 0; argc == 4 && i < (int)(sizeof modes / sizeof *modes); i++) if (!strcmp(argv[1], modes[i])) mode = i;
    if (mode < 0) {
        fprintf(stderr, "usage: rr-floor-dispatch epoll|epoll-hold|uring|uring-batch|uring-hold|epoll-credit|"
                        "epoll-credit-late|epoll-credit-nohold PORT COUNTFILE\n");
        return 2;
    }
    int cf = open(argv[3], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (cf < 0 || ftruncate(cf, 8)) die(argv[3]);
    counter = mmap(NULL, 8, PROT_READ | PROT_WRITE, MAP_SHARED, cf, 0);
    if (counter == MAP_FAILED) die("mmap counter");
    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(l, (void *)&a, sizeof a) || listen(l, 511)) die("bind/listen");
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < RECEIVERS; i++) {
        int sp[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp)) die("socketpair");
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            close(sp[0]); close(l);
            for (int j = 0; j < i; j++) close(workers[j]);
            const char *work = getenv("RR_WORK_US");
            receiver(sp[1], mode == 5 || mode == 7 ? 1 : mode == 6 ? 2 : 0,  // F, H credit on receipt, G after its close
                     work ? strtoull(work, NULL, 10) : 0);
        }
        close(sp[1]);
        workers[i] = sp[0];
    }
    switch (mode) {
    case 0: run_epoll(l, 0, 0); break;
    case 1: run_epoll(l, 1, 0); break;
    case 2: run_uring(l, 0, 0); break;
    case 3: run_uring(l, 1, 0); break;
    case 4: run_uring(l, 0, 1); break;
    case 7: run_epoll(l, 0, 1); break;
    default: run_epoll(l, 1, 1); break;
    }
    return 0;
}
