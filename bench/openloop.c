/* HaloTrack's open-loop load generator: requests at a fixed rate, latency from each request's intended send time.
 *
 * Why a program of its own: a closed-loop generator such as wrk sends the next request only when an answer came
 * back, so a stall of the server also stalls the clock and the requests that would have waited behind it are never
 * counted (coordinated omission). wrk2 fixes that by measuring from a schedule, but it is not packaged for this
 * machine's Debian, and no installable tool does it; a Python client cannot hold a schedule to the tens of
 * microseconds at a few thousand requests a second on a core it shares with the origin. So bench/run.py compiles
 * this file with the machine's C compiler at bench time (`cc -O2`, no library beyond libc).
 *
 *     openloop --port 8080 --rate 1500 --duration 5 --warmup 1 --connections 64 --requests reqs.bin [--template]
 *
 * Model. Request i is due at t0 + i / rate (a uniform schedule, as wrk2's). A due request goes out on any idle
 * keep-alive connection (HTTP/1.1, one request in flight per connection, no pipelining); when every connection is
 * busy it waits in the generator's queue, and that wait is counted: latency = time the whole answer was read -
 * intended send time. The send lag (actual send - intended send) is reported on its own: it is the generator's own
 * accuracy (its scheduling and, when every connection is busy, the server's backlog). Requests due in the warm-up
 * are sent but not recorded. When the schedule ends, in-flight requests get --timeout-ms to finish; what is still
 * queued or in flight then counts as a timeout. Everything is bounded: duration at most 600 s, one run.
 *
 * Requests file: "<count>\n" then, for each request, "<length>\n" and that many raw bytes (the whole HTTP/1.1
 * request, head and body). Pool mode cycles them in order; --template takes the first and replaces every "{n}" in
 * it with a counter starting at --seed, unique per request (the request must have no body whose length it would
 * change: bench/run.py expands such requests into a pool instead).
 *
 * Latencies go into log-linear buckets (HdrHistogram's layout: 1024 linear buckets, then 512 per power of two, so
 * under 0.2 % error) in nanoseconds; percentiles are the upper edge of their bucket. The result is one JSON line.
 * Only loopback addresses are accepted as targets.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNECTIONS 1024
#define HEAD_MAX 65536
#define READ_CHUNK 65536
#define MAX_EVENTS 256

/* ------------------------------------------------------------------------------------------------------------ */
/* Histogram. */

#define SUB_BITS 10
#define SUB_COUNT (1 << SUB_BITS)        /* 1024 */
#define HALF_COUNT (SUB_COUNT / 2)       /* 512 */
#define MAX_SHIFT 40
#define BUCKETS (SUB_COUNT + MAX_SHIFT * HALF_COUNT)

typedef struct {
    uint64_t counts[BUCKETS];
    uint64_t total;
    uint64_t max;
    double sum;
} histogram;

static int bucket_of(uint64_t v) {
    if (v < SUB_COUNT) return (int)v;
    int shift = 63 - __builtin_clzll(v) - (SUB_BITS - 1);   /* v >> shift lies in [512, 1023] */
    if (shift > MAX_SHIFT) return BUCKETS - 1;
    return SUB_COUNT + (shift - 1) * HALF_COUNT + (int)((v >> shift) - HALF_COUNT);
}

static uint64_t bucket_upper(int b) {
    if (b < SUB_COUNT) return (uint64_t)b;
    int shift = (b - SUB_COUNT) / HALF_COUNT + 1;
    uint64_t sub = (uint64_t)((b - SUB_COUNT) % HALF_COUNT + HALF_COUNT);
    return ((sub + 1) << shift) - 1;
}

static void hist_record(histogram *h, uint64_t v) {
    h->counts[bucket_of(v)]++;
    h->total++;
    h->sum += (double)v;
    if (v > h->max) h->max = v;
}

static double hist_percentile_us(const histogram *h, double q) {
    if (!h->total) return -1;
    uint64_t rank = (uint64_t)((double)h->total * q / 100.0 + 0.999999);
    if (rank < 1) rank = 1;
    uint64_t seen = 0;
    for (int b = 0; b < BUCKETS; b++) {
        seen += h->counts[b];
        if (seen >= rank) {
            uint64_t up = bucket_upper(b);
            return (double)(up < h->max ? up : h->max) / 1000.0;
        }
    }
    return (double)h->max / 1000.0;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Clock. */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Requests. */

typedef struct {
    char *data;
    size_t len;
} buf;

static buf *requests;
static size_t request_count;
static int template_mode;
static uint64_t template_seed;
static int count_status;        /* --count-status: answers with this status are counted (e.g. 201 Created) */

static void die(const char *what) {
    fprintf(stderr, "openloop: %s\n", what);
    exit(2);
}

static void load_requests(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open the requests file");
    unsigned long count;
    if (fscanf(f, "%lu", &count) != 1 || count == 0 || count > 10000000ul) die("bad request count");
    if (fgetc(f) != '\n') die("bad requests file");
    requests = calloc(count, sizeof(buf));
    if (!requests) die("out of memory");
    for (unsigned long i = 0; i < count; i++) {
        unsigned long len;
        if (fscanf(f, "%lu", &len) != 1 || len == 0 || len > (1ul << 24)) die("bad request length");
        if (fgetc(f) != '\n') die("bad requests file");
        requests[i].data = malloc(len);
        requests[i].len = len;
        if (!requests[i].data || fread(requests[i].data, 1, len, f) != len) die("short requests file");
    }
    request_count = count;
    fclose(f);
}

/* Request number `seq` into `out` (a template filled in, or the pool's next); returns its bytes. */
static buf request_for(uint64_t seq, buf *scratch) {
    if (!template_mode) return requests[seq % request_count];
    const buf *t = &requests[0];
    char num[32];
    int nlen = snprintf(num, sizeof num, "%llu", (unsigned long long)(template_seed + seq));
    size_t out = 0;
    for (size_t i = 0; i < t->len;) {
        if (i + 3 <= t->len && memcmp(t->data + i, "{n}", 3) == 0) {
            memcpy(scratch->data + out, num, (size_t)nlen);
            out += (size_t)nlen;
            i += 3;
        } else {
            scratch->data[out++] = t->data[i++];
        }
    }
    return (buf){scratch->data, out};
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Connections and the response parser. */

enum { C_CONNECTING, C_IDLE, C_WRITING, C_HEAD, C_BODY_LEN, C_CHUNK_SIZE, C_CHUNK_DATA, C_CHUNK_CRLF,
       C_TRAILER, C_BODY_EOF };

typedef struct conn {
    int fd;
    int state;
    int close_after;            /* the answer said Connection: close */
    char *out;                  /* request bytes being written */
    size_t out_len, out_off;
    char *wbuf;                 /* this connection's copy of a templated request */
    uint64_t seq;               /* the request's number in the schedule */
    uint64_t intended, sent;    /* ns */
    int status;
    uint64_t remaining;         /* body bytes still to read (length or current chunk) */
    char head[HEAD_MAX];
    size_t head_len;
    char line[128];             /* a chunk-size or trailer line */
    size_t line_len;
    struct conn *next_idle;
    uint32_t index, generation;  /* epoll carries both: an event for a closed socket is recognised and dropped */
} conn;

static struct sockaddr_in target;
static int epfd;
static conn *conns;
static int nconns;
static conn *idle_head;

static struct {
    uint64_t ok, status_err, connect_err, read_err, write_err, timeout, unsent;
    uint64_t s2xx, s3xx, s4xx, s5xx, reconnects, queued;
    uint64_t counted, counted_all;  /* answers with count_status: in the measured part, and warm-up included */
} stats;

static histogram lat, lag;

static uint64_t t0, measure_from, schedule_end, interval_ns;
static uint64_t timeout_ns;

static void push_idle(conn *c) {
    c->state = C_IDLE;
    c->next_idle = idle_head;
    idle_head = c;
}

static void remove_idle(conn *c) {
    for (conn **p = &idle_head; *p; p = &(*p)->next_idle)
        if (*p == c) { *p = c->next_idle; return; }
}

static uint64_t tag(const conn *c) { return (uint64_t)c->generation << 32 | c->index; }

static void conn_open(conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket");
    c->generation++;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = C_CONNECTING;
    c->head_len = 0;
    c->close_after = 0;
    int r = connect(c->fd, (struct sockaddr *)&target, sizeof target);
    if (r < 0 && errno != EINPROGRESS) die("connect");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.u64 = tag(c)};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void conn_reopen(conn *c) {
    if (c->state == C_IDLE) remove_idle(c);
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    stats.reconnects++;
    conn_open(c);
}

static int busy(const conn *c) { return c->state >= C_WRITING; }

static void want_write(conn *c, int on) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0), .data.u64 = tag(c)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* The request on `c` ended (answered or failed): count it. */
static void finish(conn *c, uint64_t t, int failed_kind) {
    if (failed_kind == 0 && count_status && c->status == count_status) {
        stats.counted_all++;
        stats.counted += c->intended >= measure_from;
    }
    if (c->intended >= measure_from) {
        if (failed_kind == 0) {
            hist_record(&lat, t - c->intended);
            if (c->status >= 200 && c->status < 300) stats.s2xx++;
            else if (c->status < 400) stats.s3xx++;
            else if (c->status < 500) stats.s4xx++;
            else stats.s5xx++;
            if (c->status >= 400) stats.status_err++;
            else stats.ok++;
        } else if (failed_kind == 1) stats.read_err++;
        else if (failed_kind == 2) stats.write_err++;
        else if (failed_kind == 3) stats.timeout++;
    }
    if (failed_kind || c->close_after) conn_reopen(c);
    else push_idle(c);
}

static void send_on(conn *c, uint64_t seq, uint64_t intended, uint64_t t) {
    buf scratch = {c->wbuf, 0};
    buf r = request_for(seq, &scratch);
    c->out = r.data;
    c->out_len = r.len;
    c->out_off = 0;
    c->seq = seq;
    c->intended = intended;
    c->sent = t;
    c->state = C_WRITING;
    c->head_len = 0;
    c->status = 0;
    if (intended >= measure_from) hist_record(&lag, t - intended);
    ssize_t n = write(c->fd, c->out, c->out_len);
    if (n < 0 && errno != EAGAIN) { finish(c, t, 2); return; }
    if (n > 0) c->out_off = (size_t)n;
    if (c->out_off < c->out_len) want_write(c, 1);
    else c->state = C_HEAD;
}

/* Parses the response head in c->head; returns 1 when complete (and sets the body state), 0 to read more, -1 on a
 * malformed answer. `consumed` gets the head's length. */
static int parse_head(conn *c, size_t *consumed) {
    char *end = memmem(c->head, c->head_len, "\r\n\r\n", 4);
    if (!end) return c->head_len >= HEAD_MAX ? -1 : 0;
    *consumed = (size_t)(end - c->head) + 4;
    if (c->head_len < 12 || memcmp(c->head, "HTTP/1.", 7) != 0) return -1;
    c->status = atoi(c->head + 9);
    int chunked = 0;
    long long length = -1;
    int conn_close = memcmp(c->head, "HTTP/1.0", 8) == 0;
    char *p = (char *)memchr(c->head, '\n', (size_t)(end + 2 - c->head)) + 1;
    while (p < end) {
        char *eol = memchr(p, '\n', (size_t)(end + 2 - p));
        if (!eol) break;
        size_t n = (size_t)(eol - p);
        if (n > 15 && strncasecmp(p, "content-length:", 15) == 0) length = atoll(p + 15);
        else if (n > 18 && strncasecmp(p, "transfer-encoding:", 18) == 0 && memmem(p, n, "chunked", 7)) chunked = 1;
        else if (n > 11 && strncasecmp(p, "connection:", 11) == 0) {
            if (memmem(p, n, "close", 5)) conn_close = 1;
            else if (memmem(p, n, "keep-alive", 10)) conn_close = 0;
        }
        p = eol + 1;
    }
    c->close_after = conn_close;
    if (c->status < 200) return -1;     /* no interim answers expected from these targets */
    if (c->status == 204 || c->status == 304) { c->state = C_IDLE; return 1; }
    if (chunked) { c->state = C_CHUNK_SIZE; c->line_len = 0; }
    else if (length >= 0) { c->state = C_BODY_LEN; c->remaining = (uint64_t)length; }
    else { c->state = C_BODY_EOF; c->close_after = 1; }
    return 1;
}

/* Feeds body bytes to the state machine; returns 1 when the answer is complete, 0 to read more, -1 on a framing
 * error. */
static int feed_body(conn *c, const char *data, size_t len) {
    size_t i = 0;
    for (;;) {
        switch (c->state) {
        case C_IDLE:          /* an answer without a body (204, 304) */
            return 1;
        case C_BODY_LEN: {
            size_t take = len - i < c->remaining ? len - i : (size_t)c->remaining;
            c->remaining -= take;
            return c->remaining == 0;
        }
        case C_BODY_EOF:      /* until the server closes */
            return 0;
        case C_CHUNK_DATA: {
            size_t take = len - i < c->remaining ? len - i : (size_t)c->remaining;
            c->remaining -= take;
            i += take;
            if (c->remaining) return 0;
            c->state = C_CHUNK_CRLF;
            c->line_len = 0;
            break;
        }
        case C_CHUNK_SIZE:
        case C_CHUNK_CRLF:
        case C_TRAILER: {
            while (i < len && data[i] != '\n') {
                if (c->line_len >= sizeof c->line - 1) return -1;
                c->line[c->line_len++] = data[i++];
            }
            if (i >= len) return 0;
            i++;   /* the '\n' */
            c->line[c->line_len] = 0;
            int empty = c->line_len == 0 || (c->line_len == 1 && c->line[0] == '\r');
            c->line_len = 0;
            if (c->state == C_CHUNK_SIZE) {
                char *endp;
                c->remaining = strtoull(c->line, &endp, 16);
                if (endp == c->line) return -1;
                c->state = c->remaining ? C_CHUNK_DATA : C_TRAILER;
            } else if (c->state == C_CHUNK_CRLF) {
                if (!empty) return -1;
                c->state = C_CHUNK_SIZE;
            } else if (empty) {
                return 1;     /* the empty line after the last chunk (and any trailers) */
            }
            break;
        }
        default:
            return -1;
        }
    }
}

static char rbuf[READ_CHUNK];

static void on_readable(conn *c, uint64_t t) {
    for (;;) {
        ssize_t n = read(c->fd, rbuf, sizeof rbuf);
        if (n == 0) {
            if (c->state == C_BODY_EOF) { finish(c, now_ns(), 0); return; }
            if (busy(c)) finish(c, now_ns(), 1);
            else conn_reopen(c);
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN) return;
            if (busy(c)) finish(c, now_ns(), 1);
            else conn_reopen(c);
            return;
        }
        if (!busy(c) || c->state == C_WRITING) {
            /* Bytes nobody asked for (or an answer before the request was written): drop the connection. */
            if (busy(c)) finish(c, now_ns(), 1);
            else conn_reopen(c);
            return;
        }
        const char *data = rbuf;
        size_t len = (size_t)n;
        if (c->state == C_HEAD) {
            size_t room = HEAD_MAX - c->head_len;
            size_t take = len < room ? len : room;
            memcpy(c->head + c->head_len, data, take);
            size_t before = c->head_len;
            c->head_len += take;
            size_t consumed = 0;
            int r = parse_head(c, &consumed);
            if (r < 0) { finish(c, now_ns(), 1); return; }
            if (r == 0) continue;
            data += consumed - before;
            len -= consumed - before;
        }
        int r = feed_body(c, data, len);
        if (r < 0) { finish(c, now_ns(), 1); return; }
        if (r == 1) {
            (void)t;
            finish(c, now_ns(), 0);
            return;
        }
    }
}

static void on_writable(conn *c, uint64_t t) {
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) { stats.connect_err++; conn_reopen(c); return; }
        want_write(c, 0);
        push_idle(c);
        return;
    }
    if (c->state != C_WRITING) { want_write(c, 0); return; }
    ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
    if (n < 0) {
        if (errno == EAGAIN) return;
        finish(c, t, 2);
        return;
    }
    c->out_off += (size_t)n;
    if (c->out_off == c->out_len) { want_write(c, 0); c->state = C_HEAD; }
}

/* ------------------------------------------------------------------------------------------------------------ */

static void usage(void) {
    fprintf(stderr, "usage: openloop [--host 127.0.0.1] --port P --rate R --duration S [--warmup W] "
                    "[--connections C] --requests FILE [--template] [--seed N] [--timeout-ms T] [--count-status S]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *reqfile = NULL;
    int port = 0, connections = 64;
    double rate = 0, duration = 0, warmup = 0, timeout_ms = 5000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--template")) { template_mode = 1; continue; }
        if (!v) usage();
        if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--rate")) rate = atof(v);
        else if (!strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--connections")) connections = atoi(v);
        else if (!strcmp(a, "--requests")) reqfile = v;
        else if (!strcmp(a, "--seed")) template_seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--timeout-ms")) timeout_ms = atof(v);
        else if (!strcmp(a, "--count-status")) count_status = atoi(v);
        else usage();
        i++;
    }
    if (port <= 0 || port > 65535 || !reqfile || rate <= 0 || rate > 1e6 || duration <= 0 || duration > 600 ||
        warmup < 0 || warmup > 60 || connections < 1 || connections > MAX_CONNECTIONS || timeout_ms <= 0 ||
        timeout_ms > 60000)
        usage();
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &target.sin_addr) != 1) die("--host must be an IPv4 address");
    if ((ntohl(target.sin_addr.s_addr) >> 24) != 127) die("only loopback targets (127.0.0.0/8)");
    load_requests(reqfile);
    size_t wmax = requests[0].len * 8 + 64;   /* a template's "{n}" (3 bytes) grows to at most 20 */
    prctl(PR_SET_TIMERSLACK, 1ul, 0, 0, 0);   /* wake-ups to the microsecond, not the default 50 */

    epfd = epoll_create1(EPOLL_CLOEXEC);
    nconns = connections;
    conns = calloc((size_t)nconns, sizeof(conn));
    if (!conns) die("out of memory");
    for (int i = 0; i < nconns; i++) {
        conns[i].index = (uint32_t)i;
        conns[i].wbuf = template_mode ? malloc(wmax) : NULL;
        conn_open(&conns[i]);
    }
    /* Every connection open before the schedule starts (at most 5 s). */
    struct epoll_event events[MAX_EVENTS];
    uint64_t connect_deadline = now_ns() + 5000000000ull;
    for (;;) {
        int ready = 0;
        for (int i = 0; i < nconns; i++) ready += conns[i].state == C_IDLE;
        if (ready == nconns) break;
        if (now_ns() > connect_deadline) die("could not open every connection in 5 s");
        int n = epoll_wait(epfd, events, MAX_EVENTS, 100);
        for (int i = 0; i < n; i++) {
            conn *c = &conns[(uint32_t)events[i].data.u64];
            if ((uint32_t)(events[i].data.u64 >> 32) != c->generation) continue;
            if (c->state == C_CONNECTING && (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) on_writable(c, 0);
        }
    }

    interval_ns = (uint64_t)(1e9 / rate);
    if (interval_ns == 0) interval_ns = 1;
    t0 = now_ns() + 1000000;   /* 1 ms from now */
    measure_from = t0 + (uint64_t)(warmup * 1e9);
    schedule_end = measure_from + (uint64_t)(duration * 1e9);
    uint64_t total = (schedule_end - t0 + interval_ns - 1) / interval_ns;
    timeout_ns = (uint64_t)(timeout_ms * 1e6);
    uint64_t next_seq = 0;         /* next request to send */
    uint64_t hard_end = schedule_end + timeout_ns;
    uint64_t last_sweep = 0;
    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);

    for (;;) {
        uint64_t t = now_ns();
        /* Send every due request that has an idle connection; the rest wait, their clock running. */
        while (next_seq < total && t0 + next_seq * interval_ns <= t && idle_head) {
            conn *c = idle_head;
            idle_head = c->next_idle;
            uint64_t intended = t0 + next_seq * interval_ns;
            if (t - intended > 1000000) stats.queued += intended >= measure_from;   /* sent over 1 ms late */
            send_on(c, next_seq, intended, t);
            next_seq++;
            t = now_ns();
        }
        int inflight = 0;
        for (int i = 0; i < nconns; i++) inflight += busy(&conns[i]);
        if (next_seq >= total && inflight == 0) break;
        if (t >= hard_end) break;
        /* Requests that exceeded the timeout: their connection is dropped and opened again. */
        if (t - last_sweep > 10000000) {
            last_sweep = t;
            for (int i = 0; i < nconns; i++) {
                conn *c = &conns[i];
                if (busy(c) && t - c->intended > timeout_ns) finish(c, t, 3);
            }
        }
        /* Sleep until the next due request (if a connection is idle for it), an event, or the sweep. */
        uint64_t wake = t + 10000000;
        if (next_seq < total && idle_head) {
            uint64_t due = t0 + next_seq * interval_ns;
            if (due < wake) wake = due;
        }
        if (wake > hard_end) wake = hard_end;
        struct timespec ts = {0, 0};
        if (wake > t) {
            uint64_t d = wake - t;
            ts.tv_sec = (time_t)(d / 1000000000ull);
            ts.tv_nsec = (long)(d % 1000000000ull);
        }
        int n = epoll_pwait2(epfd, events, MAX_EVENTS, &ts, NULL);
        if (n < 0 && errno != EINTR) die("epoll_pwait2");
        uint64_t te = now_ns();
        for (int i = 0; i < n; i++) {
            conn *c = &conns[(uint32_t)events[i].data.u64];
            uint32_t gen = (uint32_t)(events[i].data.u64 >> 32);
            uint32_t e = events[i].events;
            if (gen != c->generation) continue;      /* for a socket closed earlier in this batch */
            if (c->state == C_CONNECTING) {
                if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_writable(c, te);
                continue;
            }
            if (e & EPOLLOUT) on_writable(c, te);
            if (gen != c->generation || c->state == C_CONNECTING) continue;
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(c, te);
        }
    }
    uint64_t t_end = now_ns();
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    /* What was never answered: still in flight, or never sent. */
    for (int i = 0; i < nconns; i++)
        if (busy(&conns[i]) && conns[i].intended >= measure_from) stats.timeout++;
    for (uint64_t s = next_seq; s < total; s++)
        if (t0 + s * interval_ns >= measure_from) stats.unsent++;

    double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                 (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    uint64_t scheduled = 0;
    for (uint64_t s = 0; s < total; s++) scheduled += t0 + s * interval_ns >= measure_from;
    double measured_s = duration;
    printf("OPENLOOP_RESULT {\"rate\": %.3f, \"seconds\": %.3f, \"scheduled\": %llu, \"completed\": %llu, "
           "\"ok\": %llu, \"status_errors\": %llu, \"s2xx\": %llu, \"s3xx\": %llu, \"s4xx\": %llu, \"s5xx\": %llu, "
           "\"read_errors\": %llu, \"write_errors\": %llu, \"connect_errors\": %llu, \"timeouts\": %llu, "
           "\"unsent\": %llu, \"reconnects\": %llu, \"late_sends\": %llu, \"connections\": %d, "
           "\"sent\": %llu, \"counted\": %llu, \"counted_all\": %llu, \"cpu_s\": %.4f, \"wall_s\": %.3f, "
           "\"latency_us\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"p99_9\": %.1f, \"p99_99\": %.1f, "
           "\"max\": %.1f, \"mean\": %.1f}, "
           "\"send_lag_us\": {\"p50\": %.1f, \"p99\": %.1f, \"p99_9\": %.1f, \"max\": %.1f}}\n",
           rate, measured_s, (unsigned long long)scheduled, (unsigned long long)lat.total,
           (unsigned long long)stats.ok, (unsigned long long)stats.status_err, (unsigned long long)stats.s2xx,
           (unsigned long long)stats.s3xx, (unsigned long long)stats.s4xx, (unsigned long long)stats.s5xx,
           (unsigned long long)stats.read_err, (unsigned long long)stats.write_err,
           (unsigned long long)stats.connect_err, (unsigned long long)stats.timeout,
           (unsigned long long)stats.unsent, (unsigned long long)stats.reconnects,
           (unsigned long long)stats.queued, nconns, (unsigned long long)next_seq,
           (unsigned long long)stats.counted, (unsigned long long)stats.counted_all, cpu, (double)(t_end - t0) / 1e9,
           hist_percentile_us(&lat, 50), hist_percentile_us(&lat, 90), hist_percentile_us(&lat, 99),
           hist_percentile_us(&lat, 99.9), hist_percentile_us(&lat, 99.99), (double)lat.max / 1000.0,
           lat.total ? lat.sum / (double)lat.total / 1000.0 : -1.0,
           hist_percentile_us(&lag, 50), hist_percentile_us(&lag, 99), hist_percentile_us(&lag, 99.9),
           (double)lag.max / 1000.0);
    return 0;
}
