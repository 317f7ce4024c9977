/* http_trace.bpf.c: HTTP/1.x kernel truth from syscall tracepoints (bcc).
 *
 * Only tracepoint arguments and user memory are read, never kernel structs: the kernel
 * headers available at compile time may not match the running kernel, and kprobes may
 * not exist. Every program starts with the target filter (a tgid set, optionally a
 * cgroup) so that the rest of the system pays two array reads per syscall.
 *
 * Per connection (tgid, fd) the program keeps byte counts, the last read/write times and
 * the peer's address (from the user buffers of accept/connect) in "conns" and writes one
 * ring-buffer record per request-side event (request start, header continuation,
 * response start, close), one per connection that is not HTTP/1.x
 * (a blind spot) and one when a target process exits. Body bytes never produce a record:
 * their totals and times ride along on the next record of the connection.
 *
 * Syscalls already in progress when a process becomes a target have no saved arguments;
 * user space reads them from /proc/PID/task/TID/syscall and "primes" io_args with them
 * (agent/kernel/inflight.py), and the exit checks the syscall number before using them.
 *
 * Compile-time configuration (typed -D flags set by agent/kernel/probes.py):
 *   CAPTURE_BYTES   request header bytes kept per request (256..4096, default 1024)
 *   MAP_ENTRIES     tracked connections; TARGET_ENTRIES target tids/tgids;
 *   IO_ENTRIES      saved syscall arguments (one per thread of the targets that reads or writes)
 *   RINGBUF_PAGES   ring-buffer size in pages (power of two)
 *   WAKEUP_BYTES    bytes a CPU writes before it wakes user space up
 *   TARGET_CGROUP_ID + TARGET_CGROUP_LEVEL   also trace every process of that cgroup v2
 *   HAVE_GROUP_DEAD sched_process_exit has a group_dead field (newer kernels)
 *   CPU_SLOTS       possible CPUs (slots of "committed")
 *   OBSC_NO_<SYSCALL>, OBSC_NO_FORK, OBSC_NO_EXIT   this kernel lacks that tracepoint
 *
 * Every sys_exit_ tracepoint has the same record (see any sys_exit_ format file in tracefs),
 * so the exit programs share one struct; probes.py checks the offset of ret before attaching.
 *
 * bcc generates the tracepoint__* argument structs only for names in this file, so every
 * program lives here; byte recognition (http_bytes.h) and copying (http_data.h) are apart.
 */
#include "http_event.h"

#ifndef CAPTURE_BYTES
#define CAPTURE_BYTES 1024
#endif
#if CAPTURE_BYTES < 256 || CAPTURE_BYTES > 4096
#error "CAPTURE_BYTES must be within 256..4096"
#endif
#ifndef MAP_ENTRIES
#define MAP_ENTRIES 65536
#endif
#ifndef TARGET_ENTRIES
#define TARGET_ENTRIES 16384
#endif
#ifndef IO_ENTRIES
#define IO_ENTRIES 16384
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 1024
#endif
#ifndef WAKEUP_BYTES
#define WAKEUP_BYTES (RINGBUF_PAGES * 4096 / 16)
#endif
#ifndef CPU_SLOTS
#define CPU_SLOTS 64
#endif

/* Copies go to s->data + (offset & 4095) with a length masked to 8191 (see LEN_MASK), so
 * the scratch area is 12 KiB: every such copy stays inside it and the verifier needs no
 * further proof. Offsets stay below CAPTURE_BYTES and lengths below 4097 in fact. */
#define CAP_AREA 12288
#define OFF_MASK 4095

#define DIR_READ 0
#define DIR_WRITE 1

#define PHASE_IDLE 0 /* waiting for a request line (or body bytes being counted) */
#define PHASE_HDR 1  /* request header block still being captured */
#define PHASE_BODY 2 /* header capture over: reads are only checked for a new request */

#define MSG_PEEK_FLAG 2
#define NR_DONE (-1) /* io_args.nr of an entry whose exit has used it */
#define ERR_EEXIST 17
#define ERR_EINPROGRESS 115

/* Arguments of a syscall in flight, saved at sys_enter for its sys_exit (user space
 * writes the same layout when it primes a syscall that was in progress at attach). The
 * entry of a thread stays from one syscall to the next (its exit sets nr to NR_DONE);
 * it goes when the thread exits or its process stops being a target. */
struct io_args {
    u64 ptr;
    u64 cnt;  /* iovec count (readv/writev) */
    s32 fd;
    s32 nr;   /* syscall number: an exit uses only the arguments of its own syscall */
    u8 sc;
    u8 dir;
    u8 shape;
    u8 primed; /* written by user space from /proc */
    u32 pad;
};

struct conn_state {
    u64 conn_ns;
    u64 last_read_ns;
    u64 last_write_ns;
    u64 rd_bytes;
    u64 wr_bytes;
    u64 hdr_tail; /* last bytes scanned for the header terminator (it may span reads) */
    u64 pend;     /* request-side bytes that may begin a request line split over syscalls */
    u64 peer_addr[2]; /* the peer's address as struct http_event has it (set once, see read_peer) */
    u16 cap_used; /* header bytes captured for the current request */
    u16 peer_port;
    u8 role;
    u8 phase;
    u8 by_content;
    u8 pend_len;
    u8 seen;      /* the first request-side bytes were classified (HTTP or blind) */
    u8 peer_flags; /* HTTP_F_PEER_INET / HTTP_F_PEER_INET6, or 0 when the peer is unknown */
};

struct scratch_t {
    struct http_event ev; /* the record is ev followed by ev.cap_len bytes of data */
    u8 data[CAP_AREA];
    u64 wake_acc; /* bytes this CPU wrote since its last forced wake-up */
    u64 scan_key; /* the connection obsc_scan works on */
    u32 count;    /* bytes for obsc_scan; see also launder() in http_data.h */
    u32 pad;
};

/* The record of every syscalls:sys_exit_* tracepoint: common header, nr, ret. */
struct sys_exit_args {
    u64 common;
    s32 syscall_nr;
    s32 pad;
    s64 ret;
};

#include "http_bytes.h"
#include "http_data.h"

BPF_HASH(targets, u32, u8, TARGET_ENTRIES);
/* One bit per pid (pid_max is at most 2^22): a clear bit in both says "not a target"
 * with two inlined array reads, so that other processes never pay the hash lookup. A set
 * bit only means "look in targets". user_bits is written by user space alone, next to
 * targets; fork_bits by obsc_fork alone, never cleared (a stale bit costs one lookup). */
#define PID_WORDS 65536
BPF_ARRAY(user_bits, u64, PID_WORDS);
BPF_ARRAY(fork_bits, u64, PID_WORDS);
BPF_HASH(io_args, u64, struct io_args, IO_ENTRIES);
BPF_HASH(conns, u64, struct conn_state, MAP_ENTRIES);
BPF_PERCPU_ARRAY(scratch, struct scratch_t, 1);
BPF_PERCPU_ARRAY(counters, u64, HTTP_CTR_NUM);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* Ring bytes each CPU has committed, counted as the producer position counts them (record
 * plus header, 8-aligned), one cache line per CPU. User space reads them through an mmap:
 * when their sum equals the producer position, no record before it is still being written
 * and the whole run is released without walking its headers (agent/kernel/ringbuf.py).
 * An undercount only sends user space back to the walk; an overcount would not be safe,
 * so a slot grows only after its record is committed. */
#define SLOT_STRIDE 8
BPF_F_TABLE("array", u32, u64, committed, CPU_SLOTS * SLOT_STRIDE, BPF_F_MMAPABLE);

static __always_inline void count(u32 idx)
{
    u64 *v = counters.lookup(&idx);
    if (v)
        *v += 1;
}

/* 0 when no target set holds pid; otherwise targets decides. */
static __always_inline int maybe_target(u32 pid)
{
    u32 w = pid >> 6;
    u64 bit = 1ULL << (pid & 63);
    u64 *u = user_bits.lookup(&w);
    u64 *f = fork_bits.lookup(&w);
    if (!u || !f) /* beyond 2^22: not expected, so no shortcut */
        return 1;
    return ((*u | *f) & bit) != 0;
}

static __always_inline int in_target_set(u32 tgid)
{
    return maybe_target(tgid) && targets.lookup(&tgid) != 0;
}

static __always_inline int in_target_cgroup(void)
{
#ifdef TARGET_CGROUP_ID
    return bpf_get_current_ancestor_cgroup_id(TARGET_CGROUP_LEVEL) == TARGET_CGROUP_ID;
#else
    return 0;
#endif
}

static __always_inline int is_target(u32 tgid)
{
    return in_target_cgroup() || in_target_set(tgid);
}

/* 0 when the process is surely not a target: is_target without its hash lookup. */
static __always_inline int passes_prefilter(u32 tgid)
{
    return in_target_cgroup() || maybe_target(tgid);
}

static __always_inline u64 conn_key(u32 tgid, s32 fd)
{
    return ((u64)tgid << 32) | (u32)fd;
}

static __always_inline void fill_header(struct http_event *ev, struct conn_state *c, u64 id,
                                        s32 fd, long ret, u64 now)
{
    ev->ts_ns = now;
    ev->conn_ns = c->conn_ns;
    ev->last_read_ns = c->last_read_ns;
    ev->last_write_ns = c->last_write_ns;
    ev->rd_bytes = c->rd_bytes;
    ev->wr_bytes = c->wr_bytes;
    ev->ret = ret;
    ev->tgid = id >> 32;
    ev->tid = (u32)id;
    ev->fd = fd;
    ev->cap_len = 0;
    ev->cap_off = 0;
    ev->role = c->role;
    ev->flags = (c->by_content ? HTTP_F_BY_CONTENT : 0) | c->peer_flags;
    ev->carried = 0;
    ev->detail = 0;
    ev->peer_port = c->peer_port;
    __builtin_memcpy(ev->peer_addr, c->peer_addr, sizeof(ev->peer_addr));
}

/* Writes ev plus n captured bytes; wakes user space only every WAKEUP_BYTES per CPU
 * (user space also polls on a short timer, so nothing waits long). */
static __always_inline void emit(struct scratch_t *s, u32 n)
{
    if (n > CAPTURE_BYTES)
        n = CAPTURE_BYTES;
    n = LEN_MASK(n);
    u32 size = sizeof(struct http_event) + n;
    u64 flags = BPF_RB_NO_WAKEUP;
    s->ev.cap_len = n;
    s->wake_acc += size;
    if (s->wake_acc >= WAKEUP_BYTES) {
        flags = BPF_RB_FORCE_WAKEUP;
        s->wake_acc = 0;
        count(HTTP_CTR_WAKEUPS);
    }
    if (events.ringbuf_output(&s->ev, size, flags)) {
        count(HTTP_CTR_RINGBUF_DROPS);
        return;
    }
    count(HTTP_CTR_RECORDS);
    u32 slot = bpf_get_smp_processor_id() * SLOT_STRIDE;
    u64 *done = committed.lookup(&slot);
    if (done) /* atomic: were this program preempted here, the next one on this CPU adds too */
        __sync_fetch_and_add(done, (size + 8 + 7) & ~7ULL);
}

/* Saves a syscall's arguments for its exit, if thread id belongs to a target. */
static __always_inline int save_args(u64 id, s32 fd, u64 ptr, u64 cnt, s32 nr, u8 sc, u8 dir, u8 shape)
{
    /* A thread with an entry belongs to a target (entries are made for targets only, and
     * go when the thread exits or its process stops being one), so the target set is
     * looked up only for a thread's first syscall. Rewriting the entry in place costs a
     * lookup, where an update and the exit's delete would each take the bucket lock. */
    struct io_args *ap = io_args.lookup(&id);
    if (ap) {
        ap->ptr = ptr;
        ap->cnt = cnt;
        ap->fd = fd;
        ap->nr = nr;
        ap->sc = sc;
        ap->dir = dir;
        ap->shape = shape;
        ap->primed = 0;
        return 0;
    }
    if (!is_target(id >> 32))
        return 0;
    struct io_args a = {.ptr = ptr, .cnt = cnt, .fd = fd, .nr = nr, .sc = sc, .dir = dir, .shape = shape};
    if (io_args.update(&id, &a))
        count(HTTP_CTR_IO_MAP_FULL);
    return 0;
}

static __always_inline int stash(s32 fd, u64 ptr, u64 cnt, s32 nr, u8 sc, u8 dir, u8 shape)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!passes_prefilter(id >> 32))
        return 0;
    return save_args(id, fd, ptr, cnt, nr, sc, dir, shape);
}

int obsc_en_read(struct tracepoint__syscalls__sys_enter_read *args)
{
    return stash(args->fd, (u64)args->buf, 0, args->__syscall_nr, HTTP_SC_READ, DIR_READ, SHAPE_BUF);
}

#ifndef OBSC_NO_READV
int obsc_en_readv(struct tracepoint__syscalls__sys_enter_readv *args)
{
    return stash(args->fd, (u64)args->vec, args->vlen, args->__syscall_nr, HTTP_SC_READV, DIR_READ,
                 SHAPE_IOV);
}
#endif

/* A MSG_PEEK read is stashed as SHAPE_SKIP: its exit is expected, and ignored. */
#ifndef OBSC_NO_RECVFROM
int obsc_en_recvfrom(struct tracepoint__syscalls__sys_enter_recvfrom *args)
{
    u8 shape = (args->flags & MSG_PEEK_FLAG) ? SHAPE_SKIP : SHAPE_BUF;
    return stash(args->fd, (u64)args->ubuf, 0, args->__syscall_nr, HTTP_SC_RECVFROM, DIR_READ, shape);
}
#endif

#ifndef OBSC_NO_RECVMSG
int obsc_en_recvmsg(struct tracepoint__syscalls__sys_enter_recvmsg *args)
{
    u8 shape = (args->flags & MSG_PEEK_FLAG) ? SHAPE_SKIP : SHAPE_MSG;
    return stash(args->fd, (u64)args->msg, 0, args->__syscall_nr, HTTP_SC_RECVMSG, DIR_READ, shape);
}
#endif

int obsc_en_write(struct tracepoint__syscalls__sys_enter_write *args)
{
    return stash(args->fd, (u64)args->buf, 0, args->__syscall_nr, HTTP_SC_WRITE, DIR_WRITE, SHAPE_BUF);
}

#ifndef OBSC_NO_WRITEV
int obsc_en_writev(struct tracepoint__syscalls__sys_enter_writev *args)
{
    return stash(args->fd, (u64)args->vec, args->vlen, args->__syscall_nr, HTTP_SC_WRITEV, DIR_WRITE,
                 SHAPE_IOV);
}
#endif

#ifndef OBSC_NO_SENDTO
int obsc_en_sendto(struct tracepoint__syscalls__sys_enter_sendto *args)
{
    return stash(args->fd, (u64)args->buff, 0, args->__syscall_nr, HTTP_SC_SENDTO, DIR_WRITE, SHAPE_BUF);
}
#endif

#ifndef OBSC_NO_SENDMSG
int obsc_en_sendmsg(struct tracepoint__syscalls__sys_enter_sendmsg *args)
{
    return stash(args->fd, (u64)args->msg, 0, args->__syscall_nr, HTTP_SC_SENDMSG, DIR_WRITE, SHAPE_MSG);
}
#endif

#ifndef OBSC_NO_SENDFILE
int obsc_en_sendfile(struct tracepoint__syscalls__sys_enter_sendfile64 *args)
{
    return stash(args->out_fd, 0, 0, args->__syscall_nr, HTTP_SC_SENDFILE, DIR_WRITE, SHAPE_NONE);
}
#endif

/* Ends a header capture: scans the n bytes in s->data for the end of the header block,
 * sets the record's flags and the connection's phase, writes the record. */
static __always_inline void finish_capture(struct scratch_t *s, struct conn_state *c, u32 n)
{
    u64 tail = c->hdr_tail;
    int done = scan_header_end(s->data, n, &tail);
    c->hdr_tail = tail;
    c->cap_used += n;
    if (done) {
        c->phase = PHASE_BODY;
        s->ev.flags |= HTTP_F_HDR_DONE;
    } else if (c->cap_used >= CAPTURE_BYTES) {
        c->phase = PHASE_BODY;
        s->ev.flags |= HTTP_F_TRUNCATED;
        count(HTTP_CTR_TRUNCATED);
    } else {
        c->phase = PHASE_HDR;
    }
    emit(s, n);
}

/* The header scan runs in its own program, reached by a tail call: verified apart from
 * the many paths of obsc_ex_io, each program stays far below the verifier's budget. */
BPF_PROG_ARRAY(scan_prog, 1);

int obsc_scan(struct sys_exit_args *args)
{
    u32 zero = 0;
    struct scratch_t *s = scratch.lookup(&zero);
    if (!s)
        return 0;
    u32 n = s->count;
    if (n > CAPTURE_BYTES)
        n = CAPTURE_BYTES;
    struct conn_state *c = conns.lookup(&s->scan_key);
    if (!c) { /* another thread closed the fd meanwhile: the capture still goes out */
        emit(s, n);
        return 0;
    }
    finish_capture(s, c, n);
    return 0;
}

/* Completes a capture of up to `budget` request header bytes and hands it to obsc_scan.
 * With carried == 0 the capture starts with the syscall's first bytes, of which read_head
 * copied `got` to s->data already; otherwise s->data holds the `carried` bytes of earlier
 * syscalls and the syscall's bytes are copied after them. */
static __always_inline void capture_headers(struct sys_exit_args *args, struct scratch_t *s,
                                            struct conn_state *c, u64 key, struct io_args *a,
                                            long ret, u32 carried, u32 budget, u32 got)
{
    u32 n;
    if (carried) {
        n = carried + gather(s, a, ret, carried, budget - carried);
    } else {
        n = got < budget ? got : budget;
        if (got == HEAD_BYTES && budget > HEAD_BYTES)
            n += gather_rest(s, a, ret, budget - HEAD_BYTES);
    }
    if (n > CAPTURE_BYTES)
        n = CAPTURE_BYTES;
    if (ends_header_block(s->data, n)) { /* the common case: no scan, no tail call */
        c->cap_used += n;
        c->phase = PHASE_BODY;
        s->ev.flags |= HTTP_F_HDR_DONE;
        emit(s, n);
        return;
    }
    s->count = n;
    s->scan_key = key;
    scan_prog.call(args, 0);
    /* Reached only if the tail call failed (counted as loss): the capture goes out
     * unscanned and the connection stops capturing this request's headers. */
    count(HTTP_CTR_TAIL_FAILED);
    c->cap_used += n;
    c->phase = PHASE_BODY;
    emit(s, n);
}

/* The first request-side bytes of a connection tracked since accept/connect are not
 * HTTP/1.x: count the connection once per kind and tell user space (a blind spot). */
static __always_inline void blind(struct scratch_t *s, u64 head, u32 got)
{
    u32 hn = got < 8 ? got : 8;
    u8 kind = HTTP_BLIND_OTHER;
    u32 ctr = HTTP_CTR_BLIND_OTHER;
    if (is_tls_record(head, hn)) {
        kind = HTTP_BLIND_TLS;
        ctr = HTTP_CTR_BLIND_TLS;
    } else if (is_h2_preface(head, hn)) {
        kind = HTTP_BLIND_H2;
        ctr = HTTP_CTR_BLIND_H2;
    }
    count(ctr);
    s->ev.kind = HTTP_EV_BLIND;
    s->ev.detail = kind;
    emit(s, got < HTTP_BLIND_CAPTURE ? got : HTTP_BLIND_CAPTURE);
}

/* Request-side bytes: continue the header capture of the current request, or start one
 * when the bytes (with up to 7 carried from earlier syscalls) begin a request line. */
static __always_inline void request_bytes(struct sys_exit_args *args, struct scratch_t *s,
                                          struct conn_state *c, u64 key, struct io_args *a, long ret,
                                          u64 head, u32 got)
{
    u32 hn = got < 8 ? got : 8;
    u32 budget = CAPTURE_BYTES, carried = 0;
    if (c->phase == PHASE_HDR && c->cap_used < CAPTURE_BYTES) {
        s->ev.kind = HTTP_EV_REQ_CONT;
        s->ev.cap_off = c->cap_used;
        budget = CAPTURE_BYTES - c->cap_used;
    } else {
        /* A request line may start with bytes an earlier syscall moved ("GE" + "T / ..."). */
        carried = c->pend_len & 7;
        c->pend_len = 0;
        u64 line = head;
        u32 ln = hn;
        if (carried) {
            u64 joined = c->pend | (head << (8 * carried));
            u32 jn = carried + hn > 8 ? 8 : carried + hn;
            if (is_request_line(joined, jn)) {
                line = joined;
                ln = jn;
            } else if ((u64)ret == hn && method_fragment(joined, carried + hn)) {
                c->pend = joined;
                c->pend_len = carried + hn;
                return;
            } else {
                carried = 0; /* not a split request line: these bytes stand alone */
            }
        }
        if (!is_request_line(line, ln)) {
            if ((u64)ret == hn && method_fragment(head, hn)) {
                c->pend = head;
                c->pend_len = hn; /* decided by the next request-side syscall */
            } else if (!c->seen) {
                c->seen = 1;
                blind(s, head, got);
            }
            return;
        }
        c->seen = 1;
        c->cap_used = 0;
        c->hdr_tail = 0;
        s->ev.kind = HTTP_EV_REQ_START;
        s->ev.carried = carried;
        if (carried) {
            *(u64 *)s->data = c->pend;
            count(HTTP_CTR_SPLIT_LINE);
        }
    }
    capture_headers(args, s, c, key, a, ret, carried, budget, got);
}

int obsc_ex_io(struct sys_exit_args *args)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!passes_prefilter(tgid))
        return 0;
    struct io_args *ap = io_args.lookup(&id); /* found: a target's thread (see stash) */
    long ret = args->ret;
    if (!ap) {
        /* entered before this process became a target (and not primed), or io_args was full */
        if (ret > 0 && is_target(tgid))
            count(HTTP_CTR_NO_ENTER);
        return 0;
    }
    struct io_args a = *ap;
    ap->nr = NR_DONE; /* used: the entry stays for the thread's next syscall */
    if (a.nr != args->syscall_nr) {
        if (ret > 0)
            count(HTTP_CTR_NO_ENTER); /* a primed syscall that ended before it was primed */
        return 0;
    }
    if (a.primed)
        count(HTTP_CTR_PRIMED);
    if (ret <= 0 || a.shape == SHAPE_SKIP || a.shape == SHAPE_CONNECT)
        return 0;

    u64 key = conn_key(tgid, a.fd);
    struct conn_state *c = conns.lookup(&key);
    int is_read = a.dir == DIR_READ;
    /* The clock is read at once for a connection, and for any other fd (files, pipes)
     * only if its bytes turn out to be HTTP. */
    u64 now = c ? bpf_ktime_get_ns() : 0;

    if (a.shape == SHAPE_NONE) {
        if (c) {
            c->wr_bytes += ret;
            c->last_write_ns = now;
            count(HTTP_CTR_SENDFILE);
        }
        return 0;
    }

    u32 zero = 0;
    struct scratch_t *s = scratch.lookup(&zero);
    if (!s)
        return 0;
    u32 got = 0;
    u64 head = read_head(s, &a, ret, &got);
    u32 hn = got < 8 ? got : 8;

    if (!c) {
        /* Not seen at accept/connect (opened before attach, or accepted elsewhere):
         * classify by the first bytes, or ignore the fd (files, pipes, other protocols). */
        u8 role;
        if (is_request_line(head, hn))
            role = is_read ? HTTP_ROLE_SERVER : HTTP_ROLE_CLIENT;
        else if (is_status_line(head, hn))
            role = is_read ? HTTP_ROLE_CLIENT : HTTP_ROLE_SERVER;
        else
            return 0;
        now = bpf_ktime_get_ns();
        struct conn_state fresh = {};
        fresh.conn_ns = now;
        fresh.role = role;
        fresh.by_content = 1;
        fresh.seen = 1;
        int err = conns.insert(&key, &fresh);
        if (err && err != -ERR_EEXIST) {
            count(HTTP_CTR_CONN_MAP_FULL);
            return 0;
        }
        count(HTTP_CTR_BY_CONTENT);
        c = conns.lookup(&key);
        if (!c)
            return 0;
    }

    fill_header(&s->ev, c, id, a.fd, ret, now);
    s->ev.syscall = a.sc;
    if (is_read) {
        c->rd_bytes += ret;
        c->last_read_ns = now;
    } else {
        c->wr_bytes += ret;
        c->last_write_ns = now;
    }

    int request_side = (c->role == HTTP_ROLE_SERVER) == is_read;
    if (request_side) {
        request_bytes(args, s, c, key, &a, ret, head, got);
        return 0;
    }
    if (!is_status_line(head, hn))
        return 0;
    if (c->phase == PHASE_HDR) /* the peer answers: the request capture is over */
        c->phase = PHASE_IDLE;
    s->ev.kind = HTTP_EV_RESP_START;
    emit(s, got); /* read_head copied the whole capture (HEAD_BYTES) */
    return 0;
}

#define AF_INET_ 2
#define AF_INET6_ 10

/* Keeps the peer of a new connection from a struct sockaddr in user memory (the caller's
 * buffer, user ABI: family u16, port u16 big-endian, then an IPv4 address, or flowinfo u32
 * and an IPv6 address). len is how many bytes of the buffer are the caller's; whatever
 * else (AF_UNIX, a short buffer, a fault) leaves the peer unknown. */
static __always_inline void read_peer(struct conn_state *c, u64 addr, u32 len)
{
    u64 head = 0; /* family, port, and for AF_INET the address */
    if (!addr || len < 8 || bpf_probe_read_user(&head, sizeof(head), (void *)addr))
        return;
    u16 family = head & 0xffff;
    u16 port = bpf_ntohs((u16)(head >> 16));
    if (family == AF_INET_) {
        c->peer_addr[0] = head >> 32;
        c->peer_flags = HTTP_F_PEER_INET;
    } else if (family == AF_INET6_ && len >= 24) {
        if (bpf_probe_read_user(c->peer_addr, sizeof(c->peer_addr), (void *)(addr + 8)))
            return;
        c->peer_flags = HTTP_F_PEER_INET6;
    } else {
        return;
    }
    c->peer_port = port;
}

/* addr/len: the peer's struct sockaddr in user memory (0: not known). */
static __always_inline void track_conn(u32 tgid, s32 fd, u8 role, u64 now, u64 addr, u32 len)
{
    u64 key = conn_key(tgid, fd);
    struct conn_state c = {};
    c.conn_ns = now;
    c.role = role;
    read_peer(&c, addr, len);
    /* A stale entry (fd closed by dup2/close_range/exit) is replaced: user space sees a
     * new conn_ns and ends the old connection. */
    if (conns.update(&key, &c))
        count(HTTP_CTR_CONN_MAP_FULL);
}

/* accept/accept4: the enter saves where the kernel will write the client's address
 * (upeer_sockaddr) and how big that buffer is (*upeer_addrlen before the call), the exit
 * reads the address from there. Callers that pass NULL (libuv, so Node.js) leave the peer
 * unknown: nothing else the program may read holds it. */
static __always_inline int stash_accept(s32 fd, u64 addr, u64 lenp, s32 nr)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!passes_prefilter(id >> 32))
        return 0;
    s32 len = 0;
    if (addr && lenp && bpf_probe_read_user(&len, sizeof(len), (void *)lenp))
        len = 0;
    return save_args(id, fd, addr, len > 0 ? len : 0, nr, 0, DIR_READ, SHAPE_ACCEPT);
}

#ifndef OBSC_NO_ACCEPT
int obsc_en_accept(struct tracepoint__syscalls__sys_enter_accept *args)
{
    return stash_accept(args->fd, (u64)args->upeer_sockaddr, (u64)args->upeer_addrlen, args->__syscall_nr);
}
#endif

#ifndef OBSC_NO_ACCEPT4
int obsc_en_accept4(struct tracepoint__syscalls__sys_enter_accept4 *args)
{
    return stash_accept(args->fd, (u64)args->upeer_sockaddr, (u64)args->upeer_addrlen, args->__syscall_nr);
}
#endif

int obsc_ex_accept(struct sys_exit_args *args)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!passes_prefilter(tgid))
        return 0;
    struct io_args *ap = io_args.lookup(&id); /* found: a target's thread (see save_args) */
    u64 addr = 0;
    u32 len = 0;
    if (ap) {
        if (ap->nr == args->syscall_nr && ap->shape == SHAPE_ACCEPT) {
            addr = ap->ptr;
            len = ap->cnt;
            ap->nr = NR_DONE;
            if (ap->primed) /* blocked in accept at attach: agent/kernel/inflight.py */
                count(HTTP_CTR_PRIMED);
        }
    } else if (!is_target(tgid)) {
        return 0;
    }
    if (args->ret < 0)
        return 0;
    track_conn(tgid, args->ret, HTTP_ROLE_SERVER, bpf_ktime_get_ns(), addr, len);
    return 0;
}

#ifndef OBSC_NO_CONNECT
int obsc_en_connect(struct tracepoint__syscalls__sys_enter_connect *args)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_target(id >> 32))
        return 0;
    u16 family = 0;
    bpf_probe_read_user(&family, sizeof(family), (void *)args->uservaddr);
    if (family != 1 /* AF_UNIX */ && family != 2 /* AF_INET */ && family != 10 /* AF_INET6 */)
        return 0;
    /* The address stays in the caller's buffer for the exit to read the peer from. */
    struct io_args a = {.ptr = (u64)args->uservaddr, .cnt = (u32)args->addrlen, .fd = args->fd,
                        .nr = args->__syscall_nr, .shape = SHAPE_CONNECT};
    if (io_args.update(&id, &a)) /* rare enough (connect) to replace the whole entry */
        count(HTTP_CTR_IO_MAP_FULL);
    return 0;
}

int obsc_ex_connect(struct sys_exit_args *args)
{
    u64 id = bpf_get_current_pid_tgid();
    struct io_args *ap = io_args.lookup(&id);
    if (!ap || ap->nr != args->syscall_nr)
        return 0;
    s32 fd = ap->fd;
    int is_connect = ap->shape == SHAPE_CONNECT;
    u64 addr = ap->ptr;
    u32 len = ap->cnt;
    ap->nr = NR_DONE;
    if (!is_connect)
        return 0;
    if (args->ret == 0 || args->ret == -ERR_EINPROGRESS)
        track_conn(id >> 32, fd, HTTP_ROLE_CLIENT, bpf_ktime_get_ns(), addr, len);
    return 0;
}
#endif

int obsc_en_close(struct tracepoint__syscalls__sys_enter_close *args)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!is_target(tgid))
        return 0;
    s32 fd = args->fd;
    u64 key = conn_key(tgid, fd);
    struct conn_state *c = conns.lookup(&key);
    if (!c)
        return 0;
    u32 zero = 0;
    struct scratch_t *s = scratch.lookup(&zero);
    if (s) {
        fill_header(&s->ev, c, id, fd, 0, bpf_ktime_get_ns());
        s->ev.kind = HTTP_EV_CLOSE;
        s->ev.syscall = HTTP_SC_CLOSE;
        emit(s, 0);
    }
    conns.delete(&key);
    return 0;
}

/* fork/clone of a target: the child (process or thread) is a target too. A thread's tid
 * entry is harmless (its tgid is already a target) and goes away when the thread exits. */
#ifndef OBSC_NO_FORK
int obsc_fork(struct tracepoint__sched__sched_process_fork *args)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!in_target_set(tgid))
        return 0;
    u32 child = args->child_pid;
    u8 one = 1;
    int err = targets.insert(&child, &one);
    if (!err)
        count(HTTP_CTR_FORKS);
    else if (err != -ERR_EEXIST)
        count(HTTP_CTR_TARGETS_FULL);
    if (!err || err == -ERR_EEXIST) {
        u32 w = child >> 6;
        u64 bit = 1ULL << (child & 63);
        u64 *f = fork_bits.lookup(&w);
        /* Only this program sets bits, and one pid is forked once at a time: an atomic
         * add of a clear bit is an atomic or. */
        if (f && !(*f & bit))
            __sync_fetch_and_add(f, bit);
    }
    return 0;
}
#endif

#ifndef OBSC_NO_EXIT
/* The process's fds close without close() syscalls: one record tells user space to end
 * its connections (and to drop their entries from "conns"). */
static __always_inline void process_gone(u64 id)
{
    u32 zero = 0;
    struct scratch_t *s = scratch.lookup(&zero);
    if (!s)
        return;
    struct conn_state none = {};
    fill_header(&s->ev, &none, id, -1, 0, bpf_ktime_get_ns());
    s->ev.kind = HTTP_EV_EXIT;
    emit(s, 0);
}

int obsc_exit(struct tracepoint__sched__sched_process_exit *args)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!is_target(tgid))
        return 0;
    io_args.delete(&id); /* a thread that dies inside a syscall never reaches its exit */
    if (tid != tgid)
        targets.delete(&tid);
#ifdef HAVE_GROUP_DEAD
    /* The main thread may exit before the others: drop the process when the last goes. */
    if (args->group_dead) {
        targets.delete(&tgid);
        process_gone(id);
    }
#else
    if (tid == tgid) {
        targets.delete(&tgid);
        process_gone(id);
    }
#endif
    return 0;
}
#endif
