/*
 * loop.c: the one event loop.  epoll for readiness, a binary heap of
 * timers, fixed per-connection buffers, and a hook at the end of every
 * turn where the store commits what the turn wrote (group commit).
 *
 * Connections are never freed inside a callback: conn_close/conn_abort
 * mark them dead and the end of the turn frees them, after the store has
 * run its acknowledgements, so no callback ever sees a freed session.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <ifaddrs.h>

#define LOOP_MAX_LISTENERS 16
#define LOOP_EVENTS 64
/* Per-connection buffers: a 16 KB read takes a 1 KB message whole, and
 * 50 sessions cost well under 2 MB. */
#define LOOP_BUF (16 * 1024)

struct listener {
    int fd;
    int kind;
    loop_accept_fn on_accept;
    struct sockaddr_storage addr;       /* what it is bound to */
};

static struct {
    int epfd;
    int running;
    struct listener listeners[LOOP_MAX_LISTENERS];
    int n_listeners;
    struct conn *conns;                 /* live connections */
    struct conn *dead;                  /* closed this turn, freed at its end */
    struct conn *kicked;                /* on_input to run at the end of the turn */
    struct conn *writes;                /* output to write at the end of the turn */
    struct conn *writing;               /* the one conn_flush_turn is writing now */
    int n_conns;
    struct timer **heap;
    int heap_len, heap_cap;
    void (*turn_hook)(void);
} L = { .epfd = -1 };

/* ---------------------------------------------------------------- timers */

static void heap_swap(int a, int b)
{
    struct timer *t = L.heap[a];
    L.heap[a] = L.heap[b];
    L.heap[b] = t;
    L.heap[a]->idx = a;
    L.heap[b]->idx = b;
}

static void heap_up(int i)
{
    while (i > 0 && L.heap[(i - 1) / 2]->at > L.heap[i]->at) {
        heap_swap(i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < L.heap_len && L.heap[l]->at < L.heap[m]->at)
            m = l;
        if (r < L.heap_len && L.heap[r]->at < L.heap[m]->at)
            m = r;
        if (m == i)
            return;
        heap_swap(i, m);
        i = m;
    }
}

void timer_cancel(struct timer *t)
{
    int i = t->idx;
    if (i < 0 || i >= L.heap_len || L.heap[i] != t)
        return;
    L.heap_len--;
    if (i != L.heap_len) {
        L.heap[i] = L.heap[L.heap_len];
        L.heap[i]->idx = i;
        heap_down(i);
        heap_up(i);
    }
    t->idx = -1;
}

void timer_set(struct timer *t, int64_t ms_from_now, void (*fn)(void *), void *arg)
{
    if (t->idx >= 0 && t->idx < L.heap_len && L.heap[t->idx] == t)
        timer_cancel(t);
    if (L.heap_len == L.heap_cap) {
        int cap = L.heap_cap ? L.heap_cap * 2 : 64;
        struct timer **h = realloc(L.heap, (size_t)cap * sizeof *h);
        if (!h) {
            log_err("out of memory arming a timer");
            return;
        }
        L.heap = h;
        L.heap_cap = cap;
    }
    t->at = util_now_ms() + ms_from_now;
    t->fn = fn;
    t->arg = arg;
    t->idx = L.heap_len;
    L.heap[L.heap_len++] = t;
    heap_up(t->idx);
}

static void run_timers(int64_t now)
{
    while (L.heap_len && L.heap[0]->at <= now) {
        struct timer *t = L.heap[0];
        timer_cancel(t);
        t->fn(t->arg);
    }
}

/* ----------------------------------------------------------- connections */

/* epoll data carries a pointer with its kind in the low bits. */
enum { TAG_CONN = 0, TAG_LISTENER = 1, TAG_WATCH = 2, TAG_MASK = 3 };

static void conn_readable(struct conn *c);
static void conn_progress(struct conn *c);

/* Stop reading while paused, while the input buffer is full, and while
 * the output is more than half full: a client that pipelines without
 * reading its replies is slowed down instead of growing our memory. */
static int conn_wants_input(const struct conn *c)
{
    return !c->paused && !c->eof && !c->closing && c->in_len < c->in_cap &&
           c->out_len <= c->out_cap / 2;
}

/* Under TLS the socket events follow what OpenSSL waits for: a read may
 * need the socket writable (and a write readable), and the handshake
 * wants one direction at a time. */
static uint32_t conn_tls_events(const struct conn *c, uint32_t ev)
{
    uint32_t tev = 0;
    if (tls_io_plain(c))
        return EPOLLOUT;
    if (tls_io_handshaking(c))
        return tls_io_read_wants_out(c) ? EPOLLOUT : EPOLLIN;
    if (ev & EPOLLIN)
        tev |= tls_io_read_wants_out(c) ? EPOLLOUT : EPOLLIN;
    if (ev & EPOLLOUT)
        tev |= tls_io_write_wants_in(c) ? EPOLLIN : EPOLLOUT;
    return tev;
}

/* Output not yet on the wire: the buffer, and what compression holds. */
static size_t conn_out_pending(const struct conn *c)
{
    return c->out_len + (c->zio ? zio_io_pending_out(c) : 0);
}

static void conn_update_events(struct conn *c)
{
    uint32_t ev = 0;
    if (c->dead)
        return;
    if (c->connecting) {
        ev = EPOLLOUT;
        goto set;
    }
    if (c->lingering) {
        ev = EPOLLIN;
        goto set;
    }
    if (conn_wants_input(c))
        ev |= EPOLLIN;
    if (conn_out_pending(c))
        ev |= EPOLLOUT;
    /* Compressed input already read raises no event either. */
    if ((ev & EPOLLIN) && c->zio && zio_io_pending_in(c))
        conn_kick(c);
    if (c->tls) {
        /* Decrypted input already inside OpenSSL raises no epoll event:
         * once there is room for it, read it at the end of this turn. */
        if ((ev & EPOLLIN) && tls_io_pending(c))
            conn_kick(c);
        ev = conn_tls_events(c, ev);
    } else if ((ev & EPOLLOUT) && !(c->events & EPOLLOUT) && c != L.writing) {
        /* New output is written at the end of the turn, when every reply
         * of the turn is in the buffer; the socket is watched for room
         * only when that write leaves some behind.  A reply costs one
         * send instead of two epoll_ctl calls and a wakeup more. */
        ev &= ~(uint32_t)EPOLLOUT;
        if (!c->write_due) {
            c->write_due = 1;
            c->write_next = L.writes;
            L.writes = c;
        }
    }
set:
    if (ev != c->events) {
        struct epoll_event e = { .events = ev, .data.ptr = c };
        if (epoll_ctl(L.epfd, EPOLL_CTL_MOD, c->fd, &e) == 0)
            c->events = ev;
    }
}

struct conn *conn_new(int fd, int kind, const struct conn_ops *ops, void *ctx,
                      size_t in_cap, size_t out_cap)
{
    struct conn *c = calloc(1, sizeof *c);
    struct epoll_event e = { .events = EPOLLIN, .data.ptr = NULL };
    socklen_t sl = sizeof c->peer;

    if (!c)
        return NULL;
    c->in = malloc(in_cap);
    c->out = malloc(out_cap);
    if (!c->in || !c->out)
        goto fail;
    c->fd = fd;
    c->kind = kind;
    c->ops = ops;
    c->ctx = ctx;
    c->in_cap = in_cap;
    c->out_cap = out_cap;
    if (getpeername(fd, (struct sockaddr *)&c->peer, &sl) == 0) {
        util_sockaddr_ip(&c->peer, c->peer_ip, sizeof c->peer_ip);
        c->peer_loopback = util_sockaddr_is_loopback(&c->peer);
    } else {
        util_strlcpy(c->peer_ip, "unknown", sizeof c->peer_ip);
    }
    e.data.ptr = c;
    if (epoll_ctl(L.epfd, EPOLL_CTL_ADD, fd, &e) < 0)
        goto fail;
    c->events = EPOLLIN;
    c->next = L.conns;
    if (L.conns)
        L.conns->prev = c;
    L.conns = c;
    L.n_conns++;
    return c;
fail:
    free(c->in);
    free(c->out);
    free(c);
    return NULL;
}

size_t conn_out_space(const struct conn *c)
{
    return c->out_cap - c->out_len;
}

int conn_write(struct conn *c, const void *buf, size_t n)
{
    if (c->dead || n > conn_out_space(c))
        return -1;
    memcpy(c->out + c->out_len, buf, n);
    c->out_len += n;
    conn_update_events(c);
    return 0;
}

int conn_printf(struct conn *c, const char *fmt, ...)
{
    va_list ap;
    int n;
    size_t space = conn_out_space(c);

    if (c->dead)
        return -1;
    va_start(ap, fmt);
    n = vsnprintf((char *)c->out + c->out_len, space, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= space)
        return -1;
    c->out_len += (size_t)n;
    conn_update_events(c);
    return 0;
}

void conn_consume(struct conn *c, size_t n)
{
    if (n >= c->in_len) {
        c->in_len = 0;
    } else {
        memmove(c->in, c->in + n, c->in_len - n);
        c->in_len -= n;
    }
    conn_update_events(c);
}

static void conn_unlink(struct conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        L.conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    L.n_conns--;
}

void conn_abort(struct conn *c)
{
    if (c->dead)
        return;
    c->dead = 1;
    epoll_ctl(L.epfd, EPOLL_CTL_DEL, c->fd, NULL);
    if (c->zio)
        zio_conn_free(c);
    if (c->tls)
        tls_conn_free(c);
    close(c->fd);
    c->fd = -1;
    conn_unlink(c);
    if (c->ops && c->ops->on_close)
        c->ops->on_close(c);
    c->next = L.dead;
    L.dead = c;
}

int conn_flush(struct conn *c)
{
    /* The handshake runs from readiness events only; output written
     * meanwhile waits for it and then goes out encrypted. */
    if (c->tls && tls_io_handshaking(c)) {
        conn_update_events(c);
        return 0;
    }
    size_t pending = conn_out_pending(c);
    if (c->zio) {
        uint64_t before = zio_stats(c)->raw_out + c->out_len;
        if (zio_io_flush(c) < 0) {
            conn_abort(c);
            return -1;
        }
        if (zio_stats(c)->raw_out + c->out_len != before)
            conn_progress(c);
    }
    while (c->out_len && !c->zio) {
        ssize_t w = conn_raw_write(c, c->out, c->out_len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_abort(c);
            return -1;
        }
        memmove(c->out, c->out + w, c->out_len - (size_t)w);
        c->out_len -= (size_t)w;
        if (w > 0)
            conn_progress(c);
    }
    if (!conn_out_pending(c) && c->closing) {
        /* A close while the client still has bytes in flight makes the
         * kernel send a reset, which can destroy our last reply before the
         * client reads it.  So: half-close, read and drop what still comes,
         * close at the client's EOF or after two seconds. */
        if (c->eof || c->tls || c->lingering || shutdown(c->fd, SHUT_WR) < 0) {
            conn_abort(c);
            return -1;
        }
        c->lingering = 1;
        c->deadline = util_now_ms() + 2000;
    }
    /* Everything went out at once (compression shrank it, or the kernel
     * took it): no writable event will come to ask a streaming writer for
     * more, so ask it at the end of this turn.  Only after progress, so
     * this never spins. */
    if (c->want_drain && c->ops && c->ops->on_drain && conn_out_pending(c) < pending &&
        conn_out_pending(c) <= c->out_cap / 2) {
        c->drain_due = 1;
        conn_kick(c);
    }
    conn_update_events(c);
    return 0;
}

/* Never calls on_close from here when output is pending: the caller (a
 * protocol handler) may still use its session.  The output goes out on
 * the next writable event, and the close follows. */
void conn_close(struct conn *c)
{
    if (c->dead || c->closing)
        return;
    c->closing = 1;
    c->want_drain = 0;
    if (conn_out_pending(c) && !(c->tls && tls_io_handshaking(c))) {
        conn_update_events(c);
        return;
    }
    if (!conn_out_pending(c) && !c->eof && !c->tls && shutdown(c->fd, SHUT_WR) == 0) {
        c->lingering = 1;
        c->deadline = util_now_ms() + 2000;
        conn_update_events(c);
        return;
    }
    conn_abort(c);
}

void conn_pause(struct conn *c, int on)
{
    c->paused = on ? 1 : 0;
    conn_update_events(c);
    /* Input that waited, or an end of input that came while paused (a
     * client that sent its last message and closed its side): the kick
     * handles it, and closes the connection on end of input. */
    if (!on && (c->in_len || c->eof))
        conn_kick(c);
}

void conn_kick(struct conn *c)
{
    if (c->kicked || c->dead)
        return;
    c->kicked = 1;
    c->kick_next = L.kicked;
    L.kicked = c;
}

void conn_set_timeout(struct conn *c, int64_t ms)
{
    int64_t now = util_now_ms();
    /* A session re-arms its timer at every command: the kernel's counters
     * (a system call) are read again only after a second, or for a new
     * length.  A stale look can only lengthen one idle period, never cut
     * a session that moves. */
    if (ms > 0 && !c->connecting && (ms != c->idle_ms || now - c->moved_at >= 1000)) {
        c->moved_seen = pace_moved(c->fd);
        c->moved_at = now;
    }
    c->idle_ms = ms > 0 ? ms : 0;
    c->deadline = ms > 0 ? now + ms : 0;
}

/* Octets moved: the idle timeout starts again (a lingering close keeps
 * its own fixed deadline). */
static void conn_progress(struct conn *c)
{
    if (c->idle_ms && !c->lingering)
        c->deadline = util_now_ms() + c->idle_ms;
}

/* The layer under compression: TLS, or the socket itself. */
ssize_t conn_raw_read(struct conn *c, void *buf, size_t n)
{
    return c->tls ? tls_io_read(c, buf, n) : recv(c->fd, buf, n, 0);
}

ssize_t conn_raw_write(struct conn *c, const void *buf, size_t n)
{
    return c->tls ? tls_io_write(c, buf, n) : send(c->fd, buf, n, MSG_NOSIGNAL);
}

static void conn_linger_read(struct conn *c)
{
    unsigned char sink[4096];
    for (int i = 0; i < 64; i++) {
        ssize_t r = recv(c->fd, sink, sizeof sink, 0);
        if (r > 0 || (r < 0 && errno == EINTR))
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;                     /* more may come, or the EOF */
        break;                          /* EOF or an error: done */
    }
    conn_abort(c);
}

static void conn_readable(struct conn *c)
{
    if (c->lingering) {
        conn_linger_read(c);
        return;
    }
    while (c->in_len < c->in_cap) {
        size_t room = c->in_cap - c->in_len;
        ssize_t r = c->zio ? zio_io_read(c, c->in + c->in_len, room) : conn_raw_read(c, c->in + c->in_len, room);
        if (r > 0) {
            c->in_len += (size_t)r;
            conn_progress(c);
            /* A plain socket that gave less than asked for is empty: the
             * next read would only say EAGAIN (epoll is level-triggered,
             * so what arrives meanwhile, or the end, is seen next turn). */
            if ((size_t)r < room && !c->zio && !c->tls)
                break;
            continue;
        }
        if (r == 0) {
            c->eof = 1;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            conn_abort(c);
            return;
        }
        break;
    }
    if (c->in_len && !c->paused)
        c->ops->on_input(c);
    /* A client that closed its side has sent all it will: once its input
     * is handled (a paused session still owes replies), flush and close. */
    if (!c->dead && c->eof && !c->paused)
        conn_close(c);
    else if (!c->dead)
        conn_update_events(c);
}

static void conn_writable(struct conn *c)
{
    size_t before = c->out_len;
    if (conn_flush(c) < 0 || c->dead)
        return;
    if (c->want_drain && c->out_len <= c->out_cap / 2 && c->ops->on_drain)
        c->ops->on_drain(c);
    /* Output drained below half: input processing that stopped for
     * back-pressure can go on. */
    if (!c->dead && before > c->out_cap / 2 && c->out_len <= c->out_cap / 2 && c->in_len && !c->paused)
        conn_kick(c);
}

/* The cleartext reply that announced the switch, then the handshake. */
static void conn_tls_handshake(struct conn *c)
{
    size_t plain;
    int r;

    while ((plain = tls_io_plain(c)) > 0) {
        ssize_t w = send(c->fd, c->out, plain, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                conn_update_events(c);
                return;
            }
            conn_abort(c);
            return;
        }
        memmove(c->out, c->out + w, c->out_len - (size_t)w);
        c->out_len -= (size_t)w;
        tls_io_plain_sent(c, (size_t)w);
    }
    r = tls_io_handshake(c);
    if (r == 0) {
        conn_update_events(c);
        return;
    }
    tls_handshake_done(c, r < 0 ? -1 : 0);
    if (c->dead)
        return;
    if (r < 0) {
        /* Neither side can say anything more in the clear. */
        conn_abort(c);
        return;
    }
    /* Records that followed the handshake's last flight may already be
     * inside OpenSSL; output written by on_tls is registered here too. */
    conn_readable(c);
}

/* A readiness event on a TLS connection.  A read may wait for the socket
 * to be writable and a write for it to be readable, so either event can
 * resume either direction. */
static void conn_tls_event(struct conn *c, uint32_t events)
{
    if (tls_io_plain(c) || tls_io_handshaking(c)) {
        conn_tls_handshake(c);
        return;
    }
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) ||
        ((events & EPOLLOUT) && tls_io_read_wants_out(c)))
        conn_readable(c);
    if (!c->dead && conn_out_pending(c) &&
        ((events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) || ((events & EPOLLIN) && tls_io_write_wants_in(c))))
        conn_writable(c);
}

static void run_kicked(void)
{
    /* Handlers may kick again; bounded passes keep one turn finite. */
    for (int pass = 0; pass < 4 && L.kicked; pass++) {
        struct conn *list = L.kicked;
        L.kicked = NULL;
        while (list) {
            struct conn *c = list;
            list = c->kick_next;
            c->kicked = 0;
            /* Under TLS, decrypted input may wait inside OpenSSL. */
            if (!c->dead && ((c->tls && tls_io_pending(c)) || (c->zio && zio_io_pending_in(c))) &&
                conn_wants_input(c)) {
                conn_readable(c);
                continue;
            }
            if (!c->dead && c->drain_due) {
                c->drain_due = 0;
                if (c->want_drain && !c->closing && c->ops->on_drain)
                    c->ops->on_drain(c);
            }
            if (!c->dead && !c->paused && c->in_len)
                c->ops->on_input(c);
            if (!c->dead && c->eof && !c->paused)
                conn_close(c);
        }
    }
}

/* The end-of-turn writes (conn_update_events).  What a write leaves
 * behind is watched with EPOLLOUT from here on; output a handler adds
 * meanwhile to another connection joins the list. */
static void conn_flush_turn(void)
{
    while (L.writes) {
        struct conn *c = L.writes;
        L.writes = c->write_next;
        c->write_due = 0;
        if (c->dead)
            continue;
        L.writing = c;
        if (c->tls || c->connecting || c->lingering)
            conn_update_events(c);
        else if (conn_out_pending(c))
            conn_writable(c);
        L.writing = NULL;
    }
}

static void free_dead(void)
{
    while (L.dead) {
        struct conn *c = L.dead;
        L.dead = c->next;
        /* A dead connection may still sit on the kick list. */
        if (c->kicked) {
            struct conn **pp = &L.kicked;
            while (*pp && *pp != c)
                pp = &(*pp)->kick_next;
            if (*pp)
                *pp = c->kick_next;
        }
        free(c->in);
        free(c->out);
        free(c);
    }
}

static void check_deadlines(int64_t now)
{
    struct conn *c, *next;
    for (c = L.conns; c; c = next) {
        next = c->next;
        if (c->deadline && c->deadline <= now) {
            /* The kernel moved octets meanwhile (a large send buffer
             * draining over a slow link): that is progress too. */
            if (c->idle_ms && !c->lingering && !c->connecting) {
                uint64_t moved = pace_moved(c->fd);
                if (moved != c->moved_seen) {
                    c->moved_seen = moved;
                    c->moved_at = now;
                    c->deadline = now + c->idle_ms;
                    continue;
                }
            }
            c->deadline = 0;
            if (c->lingering)
                conn_abort(c);
            else if (c->ops->on_timeout)
                c->ops->on_timeout(c);
            else
                conn_abort(c);
        }
    }
}

static int next_wait_ms(int64_t now)
{
    int64_t wait = 1000;                /* deadlines are checked at least every second */
    if (L.kicked)
        return 0;
    if (L.heap_len) {
        int64_t d = L.heap[0]->at - now;
        if (d < wait)
            wait = d < 0 ? 0 : d;
    }
    return (int)wait;
}

/* ------------------------------------------------------------- listeners */

static int same_address(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

/* The counts limit_admit decides on: live inbound connections (not our
 * own outbound ones, not those already closed and only draining). */
static void count_inbound(int kind, const struct sockaddr_storage *peer, int *total, int *here, int *same)
{
    *total = *here = *same = 0;
    for (struct conn *c = L.conns; c; c = c->next) {
        if (c->kind >= LISTEN_N || c->dead || c->lingering)
            continue;
        (*total)++;
        *here += c->kind == kind;
        *same += same_address(&c->peer, peer);
    }
}

static void refuse(int kind, int fd, const char *why, const struct sockaddr_storage *peer)
{
    /* RFC 5321 3.8: 421 and close when we cannot serve; RFC 2449 8.1.2
     * [SYS/TEMP] for POP3.  The reply fits the socket buffer of a fresh
     * connection; it is never waited for. */
    static const char smtp_busy[] = "421 4.3.2 Too many connections, try again later\r\n";
    static const char smtp_ip[] = "421 4.7.0 Too many connections from your address\r\n";
    static const char pop_busy[] = "-ERR [SYS/TEMP] too many connections, try again later\r\n";
    /* RFC 3501 7.1.5: BYE as the greeting refuses the session. */
    static const char imap_busy[] = "* BYE [UNAVAILABLE] too many connections, try again later\r\n";
    int per_ip = !strcmp(why, "limit.connections_per_ip");
    const char *text = kind == LISTEN_POP3 ? pop_busy : kind == LISTEN_IMAP ? imap_busy
                       : per_ip ? smtp_ip : smtp_busy;
    char ip[64];

    /* Nothing can be said on IMAPS before the TLS handshake. */
    if (kind != LISTEN_IMAPS && send(fd, text, strlen(text), MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        log_debug("busy reply: %s", strerror(errno));
    close(fd);
    util_sockaddr_ip(peer, ip, sizeof ip);
    log_warn("connection from [%s] refused: %s reached", ip, why);
}

static void accept_ready(struct listener *ls)
{
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage peer;
        socklen_t pl = sizeof peer;
        int total, here, same;

        memset(&peer, 0, sizeof peer);
        int fd = accept4(ls->fd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                log_warn("accept: %s", strerror(errno));
            return;
        }
        count_inbound(ls->kind, &peer, &total, &here, &same);
        const char *why = limit_admit(ls->kind, &peer, total, here, same);
        if (why) {
            refuse(ls->kind, fd, why, &peer);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = conn_new(fd, ls->kind, NULL, NULL, LOOP_BUF, LOOP_BUF);
        if (!c) {
            log_err("out of memory accepting a connection");
            close(fd);
            continue;
        }
        ls->on_accept(c);
    }
}

int loop_listen(const char *spec, int kind, loop_accept_fn on_accept, char *err, size_t errlen)
{
    char buf[1024], *items[LOOP_MAX_LISTENERS];
    size_t n;

    if (!spec || !*spec)
        return 0;
    /* Every listener may be asked for STARTTLS/STLS: the certificate is
     * loaded before the first client arrives, and a broken one stops the
     * start with the reason (tls_init is done once). */
    if (tls_init()) {
        snprintf(err, errlen, "%s", tls_io_error());
        return -1;
    }
    util_strlcpy(buf, spec, sizeof buf);
    n = util_split_list(buf, items, MN_NELEM(items));
    for (size_t i = 0; i < n; i++) {
        char host[256];
        int port, fd = -1, one = 1;
        struct sockaddr_storage ss;
        socklen_t sl;

        if (L.n_listeners == LOOP_MAX_LISTENERS) {
            snprintf(err, errlen, "too many listeners");
            return -1;
        }
        if (util_split_hostport(items[i], host, sizeof host, &port) ||
            util_sockaddr_parse(host, port, &ss, &sl)) {
            snprintf(err, errlen, "listen address '%s' is not addr:port with a numeric address", items[i]);
            return -1;
        }
        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
            bind(fd, (struct sockaddr *)&ss, sl) < 0) {
            snprintf(err, errlen, "cannot listen on %s: %s", items[i], strerror(errno));
            if (fd >= 0)
                close(fd);
            return -1;
        }
        struct listener *ls = &L.listeners[L.n_listeners];
        struct epoll_event e = { .events = EPOLLIN, .data.u64 = (uintptr_t)ls | TAG_LISTENER };
        ls->fd = fd;
        ls->kind = kind;
        ls->on_accept = on_accept;
        ls->addr = ss;
        if (epoll_ctl(L.epfd, EPOLL_CTL_ADD, fd, &e) < 0) {
            snprintf(err, errlen, "epoll: %s", strerror(errno));
            close(fd);
            return -1;
        }
        L.n_listeners++;
        log_info("listening on %s (%s)", items[i],
                 (const char *[]){ "smtp", "submission", "odmr", "pop3", "imap", "imaps" }[kind]);
    }
    return 0;
}

/* Is ss (address and port) one of this host's addresses?  Loopback
 * always is; the rest come from the interfaces. */
static int own_host_address(const struct sockaddr_storage *ss)
{
    struct ifaddrs *ifs, *i;
    int found = 0;

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)ss;
        if ((ntohl(a->sin_addr.s_addr) >> 24) == 127 || a->sin_addr.s_addr == htonl(INADDR_ANY))
            return 1;
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)ss;
        if (IN6_IS_ADDR_LOOPBACK(&a->sin6_addr) || IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr))
            return 1;
    }
    if (getifaddrs(&ifs) < 0)
        return 0;
    for (i = ifs; i && !found; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != ss->ss_family)
            continue;
        if (ss->ss_family == AF_INET)
            found = ((const struct sockaddr_in *)(void *)i->ifa_addr)->sin_addr.s_addr ==
                    ((const struct sockaddr_in *)(const void *)ss)->sin_addr.s_addr;
        else
            found = !memcmp(&((const struct sockaddr_in6 *)(void *)i->ifa_addr)->sin6_addr,
                            &((const struct sockaddr_in6 *)(const void *)ss)->sin6_addr, 16);
    }
    freeifaddrs(ifs);
    return found;
}

static int same_address(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)(const void *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)(const void *)b)->sin_addr.s_addr;
    return !memcmp(&((const struct sockaddr_in6 *)(const void *)a)->sin6_addr,
                   &((const struct sockaddr_in6 *)(const void *)b)->sin6_addr, 16);
}

static int wildcard_address(const struct sockaddr_storage *a)
{
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)(const void *)a)->sin_addr.s_addr == htonl(INADDR_ANY);
    return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)(const void *)a)->sin6_addr);
}

static int port_of(const struct sockaddr_storage *a)
{
    if (a->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)(const void *)a)->sin_port);
    if (a->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)(const void *)a)->sin6_port);
    return -1;
}

int loop_is_own_listener(const struct sockaddr_storage *ss)
{
    for (int i = 0; i < L.n_listeners; i++) {
        const struct listener *ls = &L.listeners[i];
        if (port_of(&ls->addr) != port_of(ss))
            continue;
        if (same_address(&ls->addr, ss))
            return 1;
        /* A wildcard listener (0.0.0.0, ::) answers on every address of
         * the host; an IPv6 wildcard usually on the IPv4 ones too. */
        if (wildcard_address(&ls->addr) &&
            (ls->addr.ss_family == ss->ss_family || ls->addr.ss_family == AF_INET6) && own_host_address(ss))
            return 1;
    }
    return 0;
}

/* The sockets are bound early (before giving up root) but take
 * connections only from here on, when the node is ready to serve them. */
int loop_listen_start(char *err, size_t errlen)
{
    for (int i = 0; i < L.n_listeners; i++)
        if (listen(L.listeners[i].fd, 128) < 0) {
            snprintf(err, errlen, "listen: %s", strerror(errno));
            return -1;
        }
    return 0;
}

void loop_close_listeners(void)
{
    for (int i = 0; i < L.n_listeners; i++) {
        epoll_ctl(L.epfd, EPOLL_CTL_DEL, L.listeners[i].fd, NULL);
        close(L.listeners[i].fd);
    }
    L.n_listeners = 0;
}

int loop_watch_add(struct watch *w)
{
    struct epoll_event e = { .events = w->events, .data.u64 = (uintptr_t)w | TAG_WATCH };
    return epoll_ctl(L.epfd, EPOLL_CTL_ADD, w->fd, &e);
}

int loop_watch_mod(struct watch *w, uint32_t events)
{
    struct epoll_event e = { .events = events, .data.u64 = (uintptr_t)w | TAG_WATCH };
    w->events = events;
    return epoll_ctl(L.epfd, EPOLL_CTL_MOD, w->fd, &e);
}

void loop_watch_del(struct watch *w)
{
    if (w->fd >= 0)
        epoll_ctl(L.epfd, EPOLL_CTL_DEL, w->fd, NULL);
}

struct conn *conn_connect(const struct sockaddr_storage *ss, socklen_t len, int kind,
                          const struct conn_ops *ops, void *ctx, size_t in_cap, size_t out_cap)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    struct conn *c;

    if (fd < 0)
        return NULL;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)ss, len) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return NULL;
    }
    c = conn_new(fd, kind, ops, ctx, in_cap, out_cap);
    if (!c) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    c->peer = *ss;
    util_sockaddr_ip(ss, c->peer_ip, sizeof c->peer_ip);
    c->peer_loopback = util_sockaddr_is_loopback(ss);
    c->connecting = 1;
    conn_update_events(c);
    return c;
}

static void conn_connected(struct conn *c)
{
    int err = 0;
    socklen_t sl = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl) < 0)
        err = errno;
    c->connecting = 0;
    conn_update_events(c);
    c->ops->on_connect(c, err);
}

/* ------------------------------------------------------------------ loop */

int loop_init(void)
{
    L.epfd = epoll_create1(EPOLL_CLOEXEC);
    return L.epfd < 0 ? -1 : 0;
}

void loop_set_turn_hook(void (*fn)(void))
{
    L.turn_hook = fn;
}

void loop_stop(void)
{
    L.running = 0;
}

int loop_run(void)
{
    struct epoll_event ev[LOOP_EVENTS];

    L.running = 1;
    while (L.running) {
        int64_t now = util_now_ms();
        int n = epoll_wait(L.epfd, ev, LOOP_EVENTS, next_wait_ms(now));
        if (n < 0 && errno != EINTR) {
            log_err("epoll_wait: %s", strerror(errno));
            return -1;
        }
        for (int i = 0; i < n; i++) {
            uintptr_t tag = ev[i].data.u64 & TAG_MASK;
            void *p = (void *)(uintptr_t)(ev[i].data.u64 & ~(uint64_t)TAG_MASK);
            if (tag == TAG_LISTENER) {
                accept_ready(p);
                continue;
            }
            if (tag == TAG_WATCH) {
                struct watch *w = p;
                w->fn(w, ev[i].events);
                continue;
            }
            struct conn *c = p;
            if (c->dead)
                continue;
            if (c->connecting) {
                conn_connected(c);
                continue;
            }
            if (c->tls) {
                conn_tls_event(c, ev[i].events);
                continue;
            }
            if (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                conn_readable(c);
            if (!c->dead && (ev[i].events & EPOLLOUT))
                conn_writable(c);
        }
        now = util_now_ms();
        run_timers(now);
        check_deadlines(now);
        /* Acknowledgements resume sessions whose pipelined input may
         * finish another message at once: go round until all is quiet. */
        for (int pass = 0; pass < 8; pass++) {
            run_kicked();
            if (L.turn_hook)
                L.turn_hook();
            if (!L.kicked)
                break;
        }
        conn_flush_turn();
        free_dead();
    }
    return 0;
}

void loop_free(void)
{
    struct conn *c, *next;
    for (c = L.conns; c; c = next) {
        next = c->next;
        conn_abort(c);
    }
    L.writes = NULL;
    free_dead();
    loop_close_listeners();
    tls_free();
    free(L.heap);
    L.heap = NULL;
    L.heap_len = L.heap_cap = 0;
    if (L.epfd >= 0)
        close(L.epfd);
    L.epfd = -1;
}
