#ifndef PML_HANDOVER_H
#define PML_HANDOVER_H

#include <stddef.h>
#include <sys/types.h>

/* The keeper link: a SOCK_SEQPACKET pair (one message = one record, its fds travel with it). */
int pml_socketpair_seqpacket(int fds[2]);

/* Sends one record with up to 8 fds (SCM_RIGHTS). MSG_NOSIGNAL; blocking unless dontwait.
 * Returns bytes sent or -1 with errno. */
ssize_t pml_send_record(int sock, const void *buf, size_t len, const int *fds, int nfds, int dontwait);

/* Receives one record (MSG_CMSG_CLOEXEC) and up to max_fds fds into fds, count in *nfds.
 * A record or fd list cut short (MSG_TRUNC / MSG_CTRUNC) closes what arrived and fails with EMSGSIZE;
 * but with ctrunc non-NULL, a record whose fd list alone was cut (out of descriptors) keeps the fds
 * that arrived and sets *ctrunc to 1.
 * Returns bytes received (0: the peer is gone) or -1 with errno. */
ssize_t pml_recv_record(int sock, void *buf, size_t len, int *fds, int max_fds, int *nfds, int dontwait, int *ctrunc);

/* Connections waiting in a listening TCP socket's accept queue (TCP_INFO), or -1 (not TCP). */
int pml_listen_queue_length(int fd);

/* Stops a listening socket for every process holding it (no new connection is queued), so a
 * copy kept elsewhere does not keep the port answering. */
int pml_stop_listening(int fd);

/* Raises the soft RLIMIT_NOFILE to the hard limit (the keeper holds many fds). */
void pml_raise_fd_limit(void);

#endif
