/*
 * ctl.c: the control socket.  `mailnode flush` (and later other commands
 * that need the running daemon rather than the database) connect to a unix
 * stream socket at conf->control and send one request line:
 *
 *   PING                 -> PONG
 *   FLUSH [DOMAIN]       -> OK              (delivery run started)
 *   FLUSH-WAIT [DOMAIN]  -> summary lines, then "DONE <failed>"
 *   KICK                 -> OK              (new mail in the database: scan soon)
 *   POLL                 -> summary lines, then "DONE <sysexits code>"
 *                           (one upstream exchange, as `mailnode poll`)
 *   anything else        -> ERR unknown request
 *
 * One request per connection; the daemon closes after the reply.  A
 * FLUSH-WAIT client keeps its side open while it waits: if it goes away,
 * the scheduler is told to forget the waiter.
 *
 * Who may talk to it: the socket is created mode 0600, owned by the user
 * the daemon runs as, so the file system already keeps others out; the
 * peer's credentials are checked again (root or our own uid) because a
 * socket file's mode is not honoured everywhere and an operator may widen
 * it by hand.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/un.h>

/* A request line is short: "FLUSH-WAIT " plus a domain. */
#define CTL_IN_CAP       1024
/* A flush summary is one line per destination; 64 KB holds a few hundred. */
#define CTL_OUT_CAP      (64 * 1024)
/* Clients do not count against max_connections (that is for the network
 * listeners), so they get their own limit. */
#define CTL_MAX_CLIENTS  32
/* A client has this long to send its request line. */
#define CTL_REQUEST_MS   (10 * 1000)

enum ctl_state { CTL_READ, CTL_WAITING, CTL_COMMIT, CTL_DONE };

struct ctl_client {
    struct conn *c;                     /* NULL: the client left during CTL_COMMIT */
    int state;                          /* enum ctl_state */
    char *summary;                      /* CTL_COMMIT: the run's outcome */
    int failed;
    const char *waiting_for;            /* "flush" or "poll" */
    struct ctl_client *next, *prev;
};

static struct {
    struct watch w;
    int listening;
    char *path;                         /* as created (a reload may change conf) */
    dev_t dev;                          /* of the socket file we created */
    ino_t ino;
    struct ctl_client *clients;
    int n_clients;
} ctl_s = { .w = { .fd = -1 } };

static void ctl_on_input(struct conn *c);
static void ctl_on_timeout(struct conn *c);
static void ctl_on_close(struct conn *c);

static const struct conn_ops ctl_ops = {
    .on_input = ctl_on_input,
    .on_timeout = ctl_on_timeout,
    .on_close = ctl_on_close,
};

/* --------------------------------------------------------------- requests */

static void ctl_reply_close(struct ctl_client *cl, const char *text)
{
    cl->state = CTL_DONE;
    conn_write(cl->c, text, strlen(text));
    conn_close(cl->c);
}

/* The run's outcome is durable: the reply can say so. */
static void ctl_flush_committed(void *arg, int rc)
{
    struct ctl_client *cl = arg;
    const char *summary = cl->summary ? cl->summary : "";
    char done[32];
    size_t n, room;

    if (!cl->c) {
        /* The client went away while the commit was pending. */
        free(cl->summary);
        free(cl);
        return;
    }
    cl->state = CTL_DONE;
    snprintf(done, sizeof done, "DONE %d\n", cl->failed < 0 ? 0 : cl->failed);
    /* The DONE line must always fit: cut the summary rather than lose it. */
    room = conn_out_space(cl->c);
    room = room > strlen(done) + 128 ? room - strlen(done) - 128 : 0;
    n = strlen(summary);
    if (n > room) {
        static const char cut[] = "... (summary cut: see `mailnode status`)\n";
        while (room > 0 && summary[room - 1] != '\n')
            room--;
        conn_write(cl->c, summary, room);
        conn_write(cl->c, cut, sizeof cut - 1);
    } else if (n) {
        conn_write(cl->c, summary, n);
        if (summary[n - 1] != '\n')
            conn_write(cl->c, "\n", 1);
    }
    if (rc) {
        static const char warn[] = "warning: the daemon could not record the outcome in its database; "
                                   "some of this mail may be sent again\n";
        conn_write(cl->c, warn, sizeof warn - 1);
    }
    conn_write(cl->c, done, strlen(done));
    free(cl->summary);
    cl->summary = NULL;
    conn_close(cl->c);
}

/* queue_flush_wait's callback: the run is over.  What it changed in the
 * database (recipients delivered, retry times) is committed at the end of
 * the loop turn; the answer waits for that commit, so that a script that
 * sees DONE and hangs up the link finds the queue as the summary says. */
static void ctl_flush_done(void *arg, const char *summary, int failed)
{
    struct ctl_client *cl = arg;

    if (cl->state != CTL_WAITING)
        return;
    cl->state = CTL_COMMIT;
    cl->summary = strdup(summary ? summary : "");
    cl->failed = failed;
    store_after_commit(ctl_flush_committed, cl);
}

/* poll_run's callback: DONE carries the exchange's exit code. */
static void ctl_poll_done(void *arg, const char *summary, int exitcode)
{
    ctl_flush_done(arg, summary, exitcode);
}

static void ctl_request(struct ctl_client *cl, char *line, size_t len)
{
    char *arg, domain[SMTP_DOMAIN_MAX + 1];
    size_t vlen, alen;

    if (len && line[len - 1] == '\r')
        line[--len] = '\0';
    arg = memchr(line, ' ', len);
    vlen = arg ? (size_t)(arg - line) : len;
    if (arg) {
        arg++;
        alen = len - vlen - 1;
    } else {
        alen = 0;
    }
    domain[0] = '\0';
    if (alen) {
        if (!addr_domain_ok(arg, alen, 1)) {
            ctl_reply_close(cl, "ERR bad domain\n");
            return;
        }
        memcpy(domain, arg, alen);
        domain[alen] = '\0';
        util_lower(domain);
    }

    if (vlen == 4 && !memcmp(line, "PING", 4) && !alen) {
        ctl_reply_close(cl, "PONG\n");
    } else if (vlen == 4 && !memcmp(line, "KICK", 4) && !alen) {
        queue_kick();
        ctl_reply_close(cl, "OK\n");
    } else if (vlen == 5 && !memcmp(line, "FLUSH", 5)) {
        log_info("control: flush requested%s%s", alen ? " for " : "", domain);
        queue_flush(alen ? domain : NULL);
        if (!alen)
            poll_kick();                /* an administrator's flush asks the upstream too */
        ctl_reply_close(cl, "OK\n");
    } else if (vlen == 10 && !memcmp(line, "FLUSH-WAIT", 10)) {
        log_info("control: flush requested%s%s, client waiting", alen ? " for " : "", domain);
        /* Waiting first: the scheduler may call back before returning. */
        cl->state = CTL_WAITING;
        cl->waiting_for = "flush";
        conn_set_timeout(cl->c, 0);
        if (queue_flush_wait(alen ? domain : NULL, ctl_flush_done, cl) < 0 && cl->state == CTL_WAITING)
            ctl_reply_close(cl, "ERR flush could not start (see the daemon's log)\n");
        if (!alen)
            poll_kick();
    } else if (vlen == 4 && !memcmp(line, "POLL", 4) && !alen) {
        log_info("control: upstream exchange requested, client waiting");
        cl->state = CTL_WAITING;
        cl->waiting_for = "poll";
        conn_set_timeout(cl->c, 0);
        if (poll_run(ctl_poll_done, cl) < 0 && cl->state == CTL_WAITING)
            ctl_reply_close(cl, "ERR no upstream is configured\n");
    } else {
        ctl_reply_close(cl, "ERR unknown request\n");
    }
}

static void ctl_on_input(struct conn *c)
{
    struct ctl_client *cl = c->ctx;
    unsigned char *nl;
    size_t len;

    if (cl->state != CTL_READ) {
        /* One request per connection: later bytes are dropped. */
        conn_consume(c, c->in_len);
        return;
    }
    nl = memchr(c->in, '\n', c->in_len);
    if (!nl) {
        if (c->in_len >= c->in_cap) {
            conn_consume(c, c->in_len);
            ctl_reply_close(cl, "ERR request too long\n");
            return;
        }
        /* A client that closed without a newline sent all it will. */
        if (!c->eof)
            return;
        nl = c->in + c->in_len;
    }
    len = (size_t)(nl - c->in);
    if (memchr(c->in, '\0', len)) {
        conn_consume(c, c->in_len);
        ctl_reply_close(cl, "ERR unknown request\n");
        return;
    }
    {
        char line[CTL_IN_CAP + 1];
        memcpy(line, c->in, len);
        line[len] = '\0';
        conn_consume(c, c->in_len);
        ctl_request(cl, line, len);
    }
}

static void ctl_on_timeout(struct conn *c)
{
    conn_abort(c);
}

static void ctl_on_close(struct conn *c)
{
    struct ctl_client *cl = c->ctx;

    if (!cl)
        return;
    if (cl->state == CTL_WAITING) {
        log_info("control: %s waiter went away", cl->waiting_for ? cl->waiting_for : "flush");
        queue_flush_cancel(cl);
        poll_cancel(cl);
    }
    if (cl->prev)
        cl->prev->next = cl->next;
    else
        ctl_s.clients = cl->next;
    if (cl->next)
        cl->next->prev = cl->prev;
    ctl_s.n_clients--;
    c->ctx = NULL;
    if (cl->state == CTL_COMMIT) {
        /* The store still holds cl for ctl_flush_committed, which frees it. */
        cl->c = NULL;
        return;
    }
    free(cl->summary);
    free(cl);
}

/* ----------------------------------------------------------------- accept */

/* 1 if the peer is root or runs as the daemon's user. */
static int ctl_peer_allowed(int fd, long *uid_out)
{
#ifdef SO_PEERCRED
    struct ucred cred;
    socklen_t sl = sizeof cred;

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &sl) < 0 || sl != sizeof cred) {
        *uid_out = -1;
        return 0;
    }
    *uid_out = (long)cred.uid;
    return cred.uid == 0 || cred.uid == geteuid();
#else
    uid_t uid;
    gid_t gid;
    if (getpeereid(fd, &uid, &gid) < 0) {
        *uid_out = -1;
        return 0;
    }
    *uid_out = (long)uid;
    return uid == 0 || uid == geteuid();
#endif
}

static void ctl_refused_input(struct conn *c)
{
    conn_consume(c, c->in_len);         /* whatever it asks, the answer stands */
}

static const struct conn_ops ctl_refused_ops = { .on_input = ctl_refused_input };

/* The refusal goes out through the loop, so that the close waits for the
 * client's request to arrive instead of resetting the connection under
 * our answer. */
static void ctl_refuse(int fd, const char *text)
{
    struct conn *c = conn_new(fd, LISTEN_N, &ctl_refused_ops, NULL, 256, 256);
    if (!c) {
        close(fd);
        return;
    }
    conn_write(c, text, strlen(text));
    conn_close(c);
}

static void ctl_accept(struct watch *w, uint32_t events)
{
    MN_UNUSED(events);
    for (int i = 0; i < 16; i++) {
        struct ctl_client *cl;
        long uid;
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                log_warn("control: accept: %s", strerror(errno));
            return;
        }
        if (!ctl_peer_allowed(fd, &uid)) {
            log_warn("control: refused a client running as uid %ld (only root and uid %ld may)",
                     uid, (long)geteuid());
            ctl_refuse(fd, "ERR permission denied\n");
            continue;
        }
        if (ctl_s.n_clients >= CTL_MAX_CLIENTS) {
            log_warn("control: %d clients connected, refusing another", ctl_s.n_clients);
            ctl_refuse(fd, "ERR busy, try again later\n");
            continue;
        }
        cl = calloc(1, sizeof *cl);
        /* LISTEN_N: not one of the network listeners' kinds. */
        if (!cl || !(cl->c = conn_new(fd, LISTEN_N, &ctl_ops, cl, CTL_IN_CAP, CTL_OUT_CAP))) {
            log_err("control: out of memory accepting a client");
            free(cl);
            close(fd);
            continue;
        }
        cl->state = CTL_READ;
        cl->next = ctl_s.clients;
        if (ctl_s.clients)
            ctl_s.clients->prev = cl;
        ctl_s.clients = cl;
        ctl_s.n_clients++;
        conn_set_timeout(cl->c, CTL_REQUEST_MS);
    }
}

/* ------------------------------------------------------------ start, stop */

static int ctl_addr(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path)
        return -1;
    memcpy(sa->sun_path, path, strlen(path) + 1);
    return 0;
}

/* Something at the path: another daemon's socket (refuse to start), a
 * socket left by one that died (remove it), or not a socket at all
 * (refuse: it is not ours to delete). */
static int ctl_clear_stale(const char *path, const struct sockaddr_un *sa)
{
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -1;
    if (!S_ISSOCK(st.st_mode)) {
        log_err("control: %s exists and is not a socket; move it away or set `control` "
                "to another path", path);
        return -1;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    rc = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
    close(fd);
    if (rc == 0) {
        log_err("control: %s is in use by a running process (another mailnode with the same "
                "`control` path?)", path);
        return -1;
    }
    if (errno != ECONNREFUSED) {
        log_err("control: cannot test %s: %s", path, strerror(errno));
        return -1;
    }
    log_info("control: removing stale socket %s", path);
    if (unlink(path) < 0 && errno != ENOENT) {
        log_err("control: cannot remove stale socket %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int ctl_start(void)
{
    const char *path = conf->control;
    struct sockaddr_un sa;
    struct stat st;
    mode_t old;
    int fd;

    if (!path || !*path) {
        log_err("control: no control socket path configured");
        return -1;
    }
    if (ctl_addr(path, &sa)) {
        log_err("control: socket path %s is longer than %zu bytes; set `control` to a shorter path",
                path, sizeof sa.sun_path - 1);
        return -1;
    }
    if (ctl_clear_stale(path, &sa))
        return -1;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        log_err("control: socket: %s", strerror(errno));
        return -1;
    }
    /* The umask makes the file 0600 from the moment it exists: a chmod
     * after bind would leave a window in which anyone could connect. */
    old = umask(0177);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        umask(old);
        log_err("control: cannot create %s: %s", path, strerror(e));
        close(fd);
        return -1;
    }
    umask(old);
    if (lstat(path, &st) < 0 || listen(fd, 16) < 0) {
        log_err("control: %s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    ctl_s.dev = st.st_dev;
    ctl_s.ino = st.st_ino;
    ctl_s.w.fd = fd;
    ctl_s.w.events = EPOLLIN;
    ctl_s.w.fn = ctl_accept;
    ctl_s.w.arg = NULL;
    if (loop_watch_add(&ctl_s.w) < 0) {
        log_err("control: cannot watch %s: %s", path, strerror(errno));
        close(fd);
        ctl_s.w.fd = -1;
        unlink(path);
        return -1;
    }
    ctl_s.path = strdup(path);
    ctl_s.listening = 1;
    log_info("control socket %s", path);
    return 0;
}

void ctl_stop(void)
{
    struct stat st;

    /* Waiters first, while the scheduler still knows them. */
    while (ctl_s.clients)
        conn_abort(ctl_s.clients->c);
    if (!ctl_s.listening)
        return;
    loop_watch_del(&ctl_s.w);
    close(ctl_s.w.fd);
    ctl_s.w.fd = -1;
    ctl_s.listening = 0;
    /* Only our own file: a daemon started since may have replaced it. */
    if (ctl_s.path && lstat(ctl_s.path, &st) == 0 && st.st_dev == ctl_s.dev &&
        st.st_ino == ctl_s.ino)
        unlink(ctl_s.path);
    free(ctl_s.path);
    ctl_s.path = NULL;
}

/* The command-line side: a connection to the running daemon. */
int ctl_connect(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(conf->control) >= sizeof sa.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    util_strlcpy(sa.sun_path, conf->control, sizeof sa.sun_path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}
