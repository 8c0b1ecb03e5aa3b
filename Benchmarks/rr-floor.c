// The floor of the pml daemon's work per rr connection on this machine, without pml: accept4,
// one SCM_RIGHTS sendmsg of the fd on a unix stream socket, and the close of the sender's copy,
// each timed around the call alone (no wake-ups, no bookkeeping). Connections come from
// non-blocking connects to 127.0.0.1:19555 in the same process, 16 at a time, so every accept
// finds one queued.
//
//   gcc -O2 -o /tmp/rr-floor Benchmarks/rr-floor.c && /tmp/rr-floor 30000 1 && /tmp/rr-floor 30000 0
//
// Second argument 1: the receiver closes its copy first, so the sender's close is the last one and
// tears the socket down (as pml's is when a worker answered and closed before pml read its credit;
// here the client is still open, so it also sends the FIN: an upper bound). 0: the receiver still
// holds it (pml reads the credit before the worker closes): the close only drops a reference.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3; }

static int send_fd(int sock, int fd) {
    char line[] = "8080\n";
    struct iovec iov = { line, sizeof line - 1 };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr a; } c;
    struct msghdr m = { 0 };
    m.msg_iov = &iov; m.msg_iovlen = 1; m.msg_control = c.buf; m.msg_controllen = sizeof c.buf;
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET; h->cmsg_type = SCM_RIGHTS; h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &fd, sizeof fd);
    return sendmsg(sock, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static int recv_fd(int sock) {
    char line[64];
    struct iovec iov = { line, sizeof line };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr a; } c;
    struct msghdr m = { 0 };
    m.msg_iov = &iov; m.msg_iovlen = 1; m.msg_control = c.buf; m.msg_controllen = sizeof c.buf;
    if (recvmsg(sock, &m, MSG_CMSG_CLOEXEC) <= 0) return -1;
    int fd; memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof fd);
    return fd;
}

int main(int argc, char **argv) {
    int total = argc > 1 ? atoi(argv[1]) : 20000, B = 16, receiverFirst = argc > 2 ? atoi(argv[2]) : 1;
    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(19555), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(l, (void *)&a, sizeof a) || listen(l, 511)) { perror("bind"); return 1; }
    int sp[2]; socketpair(AF_UNIX, SOCK_STREAM, 0, sp);
    double tAccept = 0, tSend = 0, tClose = 0;
    int clients[16], copies[16];
    for (int done = 0; done < total; done += B) {
        for (int i = 0; i < B; i++) {
            clients[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            connect(clients[i], (void *)&a, sizeof a);
        }
        usleep(200);
        for (int i = 0; i < B; i++) {
            double t0 = now_us();
            int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
            double t1 = now_us();
            if (c < 0) { perror("accept4"); return 1; }
            send_fd(sp[0], c);
            double t2 = now_us();
            tAccept += t1 - t0; tSend += t2 - t1;
            copies[i] = c;
        }
        for (int i = 0; i < B; i++) { int r = recv_fd(sp[1]); if (receiverFirst) close(r); else copies[i] = copies[i] * 65536 + r; }
        for (int i = 0; i < B; i++) {
            int mine = receiverFirst ? copies[i] : copies[i] / 65536;
            double t0 = now_us();
            close(mine);
            tClose += now_us() - t0;
            if (!receiverFirst) close(copies[i] % 65536);
            close(clients[i]);
        }
    }
    printf("per connection: accept4 %.2f us, sendmsg %.2f us, close %.2f us (%s), total %.2f us\n",
           tAccept / total, tSend / total, tClose / total, receiverFirst ? "last holder" : "receiver still holds it",
           (tAccept + tSend + tClose) / total);
    return 0;
}
