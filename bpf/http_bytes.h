/* http_bytes.h: recognising HTTP/1.x in raw bytes inside BPF (part of http_trace.bpf.c).
 *
 * Request lines and status lines are told by their first 8 bytes; the end of a header
 * block is found 8 bytes at a time. Needs CAPTURE_BYTES defined before inclusion.
 */
#ifndef OBSCONFORM_HTTP_BYTES_H
#define OBSCONFORM_HTTP_BYTES_H

/* Little-endian byte strings, compared against the first 8 bytes of a buffer. */
#define B(c, i) ((u64)(u8)(c) << (8 * (i)))
#define S4(a, b, c, d) (B(a, 0) | B(b, 1) | B(c, 2) | B(d, 3))
#define S8(a, b, c, d, e, f, g, h) (S4(a, b, c, d) | B(e, 4) | B(f, 5) | B(g, 6) | B(h, 7))
#define LOW(n) ((n) >= 8 ? ~0ULL : ((1ULL << (8 * (n))) - 1))

static __always_inline int has_prefix(u64 head, u32 n, u64 want, u32 len)
{
    return n >= len && (head & LOW(len)) == want;
}

static __always_inline int is_request_line(u64 head, u32 n)
{
    return has_prefix(head, n, S4('G', 'E', 'T', ' '), 4) ||
           has_prefix(head, n, S8('P', 'O', 'S', 'T', ' ', 0, 0, 0), 5) ||
           has_prefix(head, n, S4('P', 'U', 'T', ' '), 4) ||
           has_prefix(head, n, S8('H', 'E', 'A', 'D', ' ', 0, 0, 0), 5) ||
           has_prefix(head, n, S8('D', 'E', 'L', 'E', 'T', 'E', ' ', 0), 7) ||
           has_prefix(head, n, S8('P', 'A', 'T', 'C', 'H', ' ', 0, 0), 6) ||
           has_prefix(head, n, S8('O', 'P', 'T', 'I', 'O', 'N', 'S', ' '), 8) ||
           has_prefix(head, n, S8('C', 'O', 'N', 'N', 'E', 'C', 'T', ' '), 8) ||
           has_prefix(head, n, S8('T', 'R', 'A', 'C', 'E', ' ', 0, 0), 6);
}

static __always_inline int is_status_line(u64 head, u32 n)
{
    return has_prefix(head, n, S8('H', 'T', 'T', 'P', '/', '1', '.', 0), 7);
}

/* A TLS handshake record (ContentType 22, version 3.x): what every TLS client sends first. */
static __always_inline int is_tls_record(u64 head, u32 n)
{
    return has_prefix(head, n, B(0x16, 0) | B(0x03, 1), 2);
}

/* The HTTP/2 connection preface starts "PRI * HTTP/2.0" (RFC 9113 section 3.4). */
static __always_inline int is_h2_preface(u64 head, u32 n)
{
    return has_prefix(head, n, S8('P', 'R', 'I', ' ', '*', ' ', 'H', 'T'), 8);
}

/* n bytes that are all upper-case letters could be the start of a method whose request
 * line the sender split over two syscalls ("GE" then "T / HTTP/1.1"). */
static __always_inline int method_fragment(u64 head, u32 n)
{
    if (n == 0 || n > 7)
        return 0;
    for (u32 i = 0; i < 7; i++) {
        if (i >= n)
            break;
        u8 b = head >> (8 * i);
        if (b < 'A' || b > 'Z')
            return 0;
    }
    return 1;
}

/* End of the header block (CRLF CRLF, or LF LF from lenient senders), found 8 bytes at a
 * time: a byte-wise loop is slower and, at a 4096-byte budget, has more branches than the
 * verifier accepts. byte_eq marks each byte equal to c with 0x80 (exact, no carries). */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

static __always_inline u64 byte_eq(u64 x, u64 c)
{
    u64 y = x ^ (ONES * c);
    return ~(((y & ~HIGHS) + ~HIGHS) | y) & HIGHS;
}

/* The n bytes at d end with the end of a header block (CRLF CRLF, or LF LF): what a
 * request without a body, read whole, looks like. Its presence is all the header scan
 * needs to know (the first one is the terminator wherever a later one lies), so this
 * case needs no scan. */
static __always_inline int ends_header_block(const u8 *d, u32 n)
{
    if (n < 4 || n > CAPTURE_BYTES)
        return 0;
    const u8 *e = d + n - 4;
    return e[3] == '\n' && ((e[2] == '\r' && e[1] == '\n' && e[0] == '\r') || e[2] == '\n');
}

/* *tail holds the 8 bytes before d (the last one in the top byte): the terminator may
 * span two syscalls. Returns 1 if the terminator lies inside the n bytes of d. */
static __always_inline int scan_header_end(const u8 *d, u32 n, u64 *tail)
{
    u64 prev = *tail;
    for (u32 j = 0; j < CAPTURE_BYTES / 8; j++) {
        u32 off = j * 8;
        if (off >= n)
            break;
        u64 x = *(const u64 *)(d + off);
        u32 rem = n - off;
        if (rem < 8)
            x &= (1ULL << (rem * 8)) - 1; /* stale scratch bytes become NUL */
        u64 lf = byte_eq(x, '\n'), cr = byte_eq(x, '\r');
        u64 plf = byte_eq(prev, '\n'), pcr = byte_eq(prev, '\r');
        /* flags of the byte 1, 2, 3 positions earlier, carried in from prev */
        u64 cr1 = (cr << 8) | (pcr >> 56);
        u64 lf1 = (lf << 8) | (plf >> 56);
        u64 lf2 = (lf << 16) | (plf >> 48);
        u64 cr3 = (cr << 24) | (pcr >> 40);
        if ((lf & cr1 & lf2 & cr3) | (lf & lf1))
            return 1;
        if (rem < 8) {
            *tail = (x << (64 - rem * 8)) | (prev >> (rem * 8));
            return 0;
        }
        prev = x;
    }
    *tail = prev;
    return 0;
}

#endif /* OBSCONFORM_HTTP_BYTES_H */
