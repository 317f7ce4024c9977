/* http_data.h: copying a syscall's bytes out of user memory (part of http_trace.bpf.c).
 *
 * A read/write-family syscall moves its bytes through one buffer (read, write, recvfrom,
 * sendto), an iovec array (readv, writev) or a msghdr's iovec array (recvmsg, sendmsg).
 * gather() copies the first bytes of whatever the syscall moved, across up to MAX_IOVS
 * iovecs, so that a request line or header block split over iovecs is still seen whole.
 * User memory is read once: read_head() copies the first HEAD_BYTES, which is all a
 * response record needs, and a header capture copies only what lies beyond them.
 * Needs CAPTURE_BYTES, OFF_MASK, struct io_args and struct scratch_t defined before.
 */
#ifndef OBSCONFORM_HTTP_DATA_H
#define OBSCONFORM_HTTP_DATA_H

/* iovecs looked at per syscall: servers rarely split a header block over more, and every
 * extra iteration is verifier work in each of the three inlined copies. */
#define MAX_IOVS 8

#define SHAPE_BUF 0     /* ptr is the data */
#define SHAPE_IOV 1     /* ptr is a struct iovec array of cnt entries */
#define SHAPE_MSG 2     /* ptr is a struct msghdr */
#define SHAPE_NONE 3    /* sendfile: bytes are counted, never seen */
#define SHAPE_CONNECT 4 /* connect: ptr/cnt are the peer's sockaddr and its length */
#define SHAPE_SKIP 5    /* MSG_PEEK: the same bytes come again with the real read */
#define SHAPE_ACCEPT 6  /* accept: ptr/cnt are the buffer the peer's sockaddr goes to */

/* Bytes every exit copies first: a response record's whole capture, a blind record's,
 * and the start of a request's (a short request needs no second copy). */
#define HEAD_BYTES HTTP_RESP_CAPTURE
#if HTTP_BLIND_CAPTURE > HEAD_BYTES || CAPTURE_BYTES <= HEAD_BYTES
#error "the first copy must hold a blind record's bytes and be shorter than a capture"
#endif

/* The verifier needs a copy's offset provably within 0..4095 and its length within
 * 0..8191; clang drops a mask it can prove redundant, so the empty asm hides what it
 * knows first. */
#define LEN_MASK(n) ({ u32 _n = (n); asm volatile("" : "+r"(_n)); _n & 8191; })
#define OFF_BOUND(o) ({ u32 _o = (o); asm volatile("" : "+r"(_o)); _o & OFF_MASK; })

/* user ABI (struct iovec), not a kernel struct */
struct user_iovec {
    u64 base;
    u64 len;
};

/* The verifier follows every path through the iovec loop with its own exact byte count;
 * passing the count through memory makes it one unknown (0..8191 after LEN_MASK), so
 * the states after gather() merge instead of multiplying through the header scan. */
static __always_inline u32 launder(struct scratch_t *s, u32 n)
{
    *(volatile u32 *)&s->count = n;
    return LEN_MASK(*(volatile u32 *)&s->count);
}

/* Copies bytes the syscall moved, from the skip-th on, to s->data + off (see gather). */
static __always_inline u32 gather_bytes(struct scratch_t *s, struct io_args *a, long ret, u32 skip, u32 off,
                                        u32 want)
{
    if (ret <= (long)skip || want == 0)
        return 0;
    if (a->shape == SHAPE_BUF) {
        u64 avail = ret - skip;
        u32 n = avail < want ? (u32)avail : want;
        if (n > CAPTURE_BYTES)
            n = CAPTURE_BYTES;
        if (bpf_probe_read_user(s->data + OFF_BOUND(off), LEN_MASK(n), (void *)(a->ptr + skip)))
            return 0;
        return n;
    }
    u64 iov_addr = a->ptr, cnt = a->cnt;
    if (a->shape == SHAPE_MSG) {
        /* struct msghdr: msg_name (8), msg_namelen (4 + 4 padding), msg_iov at 16,
         * msg_iovlen at 24 */
        u64 msg[2] = {};
        if (bpf_probe_read_user(msg, sizeof(msg), (void *)(a->ptr + 16)))
            return 0;
        iov_addr = msg[0];
        cnt = msg[1];
    } else if (a->shape != SHAPE_IOV) {
        return 0;
    }
    u64 left = ret, skip_left = skip;
    u32 got = 0;
#pragma unroll
    for (u32 i = 0; i < MAX_IOVS; i++) {
        if (i >= cnt || left == 0 || got >= want)
            break;
        struct user_iovec iov = {};
        if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(iov_addr + i * sizeof(iov))))
            break;
        u64 moved = iov.len < left ? iov.len : left;
        left -= moved;
        if (moved <= skip_left) { /* this iovec lies wholly within the bytes to skip */
            skip_left -= moved;
            continue;
        }
        moved -= skip_left;
        u64 base = iov.base + skip_left;
        skip_left = 0;
        u32 n = moved < want - got ? (u32)moved : want - got;
        if (n > CAPTURE_BYTES)
            n = CAPTURE_BYTES;
        if (n && bpf_probe_read_user(s->data + OFF_BOUND(off + got), LEN_MASK(n), (void *)base))
            break;
        got = launder(s, got + n);
    }
    return got;
}

/* Copies the first min(ret, want) bytes the syscall moved to s->data + off; returns how
 * many were copied (at most want). off + want never exceeds CAPTURE_BYTES. */
static __always_inline u32 gather(struct scratch_t *s, struct io_args *a, long ret, u32 off, u32 want)
{
    u32 n = launder(s, gather_bytes(s, a, ret, 0, off, want));
    return n < want ? n : want;
}

/* The bytes after the first HEAD_BYTES, which read_head() copied already, up to
 * CAPTURE_BYTES in all; returns how many were copied. */
static __always_inline u32 gather_rest(struct scratch_t *s, struct io_args *a, long ret, u32 want)
{
    u32 n = launder(s, gather_bytes(s, a, ret, HEAD_BYTES, HEAD_BYTES, want));
    return n < want ? n : want;
}

/* Copies the first min(ret, HEAD_BYTES) bytes the syscall moved to s->data (*got says
 * how many): all a response or blind record keeps, and the start of a header capture.
 * Returns the first (up to) 8 of them as a little-endian u64. */
static __always_inline u64 read_head(struct scratch_t *s, struct io_args *a, long ret, u32 *got)
{
    u32 n = gather(s, a, ret, 0, HEAD_BYTES);
    *got = n;
    return *(u64 *)s->data & LOW(n);
}

#endif /* OBSCONFORM_HTTP_DATA_H */
