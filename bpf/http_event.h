/* http_event.h: the ring-buffer record of bpf/http_trace.bpf.c, shared with user space.
 *
 * agent/kernel/events.py mirrors this layout once (ctypes); tests/kernel/test_events.py
 * compiles this header with bcc and checks that every offset and constant agrees.
 * Keep the header free of implicit padding: fields are ordered by size and the
 * record length is a multiple of 8, so the captured bytes start aligned.
 */
#ifndef OBSCONFORM_HTTP_EVENT_H
#define OBSCONFORM_HTTP_EVENT_H

/* Record kinds: one record per request-side event, never one per syscall. */
#define HTTP_EV_REQ_START 1  /* request line seen (server: read, client: write) */
#define HTTP_EV_REQ_CONT 2   /* more header bytes of the request being captured */
#define HTTP_EV_RESP_START 3 /* bytes beginning "HTTP/1." (server: write, client: read) */
#define HTTP_EV_CLOSE 4      /* close() of a tracked connection */
#define HTTP_EV_BLIND 5      /* first request-side bytes of a connection are not HTTP/1.x */
#define HTTP_EV_EXIT 6       /* the last thread of a target process exited (fds closed) */

/* What a blind connection speaks (record field "detail" of HTTP_EV_BLIND). */
#define HTTP_BLIND_TLS 1   /* a TLS record: 0x16 0x03 (ClientHello) */
#define HTTP_BLIND_H2 2    /* the HTTP/2 connection preface "PRI * HTTP/2.0" (h2c, gRPC) */
#define HTTP_BLIND_OTHER 3 /* anything else (a database protocol, a PROXY header, ...) */

/* Role of the traced process on the connection. */
#define HTTP_ROLE_SERVER 1
#define HTTP_ROLE_CLIENT 2

/* flags */
#define HTTP_F_HDR_DONE 0x01   /* the header terminator lies inside this capture */
#define HTTP_F_TRUNCATED 0x02  /* capture budget used up before the terminator */
#define HTTP_F_BY_CONTENT 0x04 /* connection classified by its bytes, not at accept/connect */
#define HTTP_F_PEER_INET 0x08  /* peer_port/peer_addr hold an IPv4 peer (address in 4 bytes) */
#define HTTP_F_PEER_INET6 0x10 /* peer_port/peer_addr hold an IPv6 peer; neither flag: unknown */

/* The syscall that produced the record (user space reports blind spots by it). */
#define HTTP_SC_READ 1
#define HTTP_SC_READV 2
#define HTTP_SC_RECVFROM 3
#define HTTP_SC_RECVMSG 4
#define HTTP_SC_WRITE 5
#define HTTP_SC_WRITEV 6
#define HTTP_SC_SENDTO 7
#define HTTP_SC_SENDMSG 8
#define HTTP_SC_SENDFILE 9
#define HTTP_SC_CLOSE 10

/* Indices of the per-CPU counter array "counters". */
#define HTTP_CTR_RECORDS 0        /* records written to the ring buffer */
#define HTTP_CTR_RINGBUF_DROPS 1  /* ring-buffer output failures: records lost */
#define HTTP_CTR_TRUNCATED 2      /* request header blocks longer than the capture budget */
#define HTTP_CTR_CONN_MAP_FULL 3  /* connections not tracked: conns map full */
#define HTTP_CTR_IO_MAP_FULL 4    /* syscalls not followed: in-flight args map full */
#define HTTP_CTR_TARGETS_FULL 5   /* forked children not followed: targets map full */
#define HTTP_CTR_FORKS 6          /* children of targets added to the target set */
#define HTTP_CTR_BY_CONTENT 7     /* connections classified by content */
#define HTTP_CTR_SENDFILE 8       /* sendfile calls on tracked connections (body not seen) */
#define HTTP_CTR_WAKEUPS 9        /* records that forced a user-space wake-up */
#define HTTP_CTR_NO_ENTER 10      /* read/write exits of targets whose entry was not seen */
#define HTTP_CTR_BLIND_TLS 11     /* connections whose first bytes are TLS */
#define HTTP_CTR_BLIND_H2 12      /* connections that open with the HTTP/2 preface */
#define HTTP_CTR_BLIND_OTHER 13   /* connections that speak neither HTTP/1.x, TLS nor HTTP/2 */
#define HTTP_CTR_SPLIT_LINE 14    /* request lines whose first bytes came in an earlier syscall */
#define HTTP_CTR_PRIMED 15        /* exits completed from arguments user space read in /proc */
#define HTTP_CTR_TAIL_FAILED 16   /* header captures not scanned: the tail call failed (loss) */
#define HTTP_CTR_NUM 17

/* The response capture only needs the status line(s), e.g. "HTTP/1.1 100 Continue". */
#define HTTP_RESP_CAPTURE 64
/* A blind connection's record keeps its first bytes (user space lists them). */
#define HTTP_BLIND_CAPTURE 16

struct http_event {
    __u64 ts_ns;         /* bpf_ktime_get_ns() at syscall exit (close: at entry) */
    __u64 conn_ns;       /* when the connection state was created; names the connection */
    /* Connection state BEFORE this syscall, piggybacked so that body writes and reads
     * need no record of their own: */
    __u64 last_read_ns;  /* exit of the last read-family syscall, 0 if none */
    __u64 last_write_ns; /* exit of the last write-family syscall, 0 if none */
    __u64 rd_bytes;      /* bytes read on the connection so far */
    __u64 wr_bytes;      /* bytes written (incl. sendfile) on the connection so far */
    __s64 ret;           /* this syscall's return value (bytes moved); 0 for close */
    __u32 tgid;
    __u32 tid;
    __s32 fd;
    __u16 cap_len;       /* captured bytes that follow this header */
    __u16 cap_off;       /* offset of this capture in the request's header capture */
    __u8 kind;           /* HTTP_EV_* */
    __u8 role;           /* HTTP_ROLE_* */
    __u8 flags;          /* HTTP_F_* */
    __u8 syscall;        /* HTTP_SC_* */
    __u8 carried;        /* REQ_START: leading captured bytes that earlier syscalls moved */
    __u8 detail;         /* BLIND: HTTP_BLIND_*; otherwise 0 */
    /* The other end of the connection, as the user buffers of accept (the client) or
     * connect (the server) held it; see HTTP_F_PEER_*. A property of the connection, so
     * it rides on every record as conn_ns and role do. */
    __u16 peer_port;     /* host order; 0 when not seen */
    __u8 peer_addr[16];  /* network order: IPv4 in the first 4 bytes, or IPv6 */
};

#endif /* OBSCONFORM_HTTP_EVENT_H */
