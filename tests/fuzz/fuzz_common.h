/*
 * fuzz_common.h: what the libFuzzer harnesses share.
 *
 * A harness includes the amalgamation (compiled with -DMAILNODE_TEST, so
 * there is no main) and then this file.  It gives:
 *
 *   fuzz_quiet()        module output (log lines, fprintf to stderr) goes to
 *                       /dev/null; sanitizer and libFuzzer reports still
 *                       reach the real stderr, which they write through
 *                       their own descriptors.
 *   fuzz_conf(lines)    the global configuration: embedded defaults plus
 *                       "key = value\n" lines.
 *   fuzz_store_open()   a scratch database and node key in a private
 *                       directory (tmpfs when there is one), with a user
 *                       alice (password "secret"), an alias and a hold domain.
 *   fuzz_session(...)   one network session driven without a network: a
 *                       socketpair, conn_new, the protocol's accept
 *                       function, and the input written to the peer end in
 *                       pieces, each followed by one turn of the event loop
 *                       as loop_run does it.
 *
 * Argon2id is made cheap for the fuzzer's users (and for the dummy hashes
 * that unknown names are checked against): the cost is recorded in each
 * hash string, so verification with the minimum parameters takes
 * microseconds instead of tens of milliseconds and the fuzzer is not
 * throttled by password checks.
 */
#ifndef MAILNODE_FUZZ_COMMON_H
#define MAILNODE_FUZZ_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <arpa/inet.h>

#define FUZZ_USER     "alice"
#define FUZZ_PASSWORD "secret"

static char fuzz_dir[256];
static char fuzz_db[320];
static char fuzz_key[320];
static int64_t fuzz_user_id;
static int fuzz_trace;

static void fuzz_die(const char *what)
{
    fprintf(stdout, "fuzz harness setup failed: %s (%s)\n", what, strerror(errno));
    fflush(stdout);
    abort();
}

static void fuzz_quiet(void)
{
    FILE *null = fopen("/dev/null", "w");
    if (!null)
        fuzz_die("/dev/null");
    fuzz_trace = getenv("FUZZ_TRACE") != NULL;
    log_set_level(-1);
    stderr = null;
}

/* A private directory for scratch files, removed at exit. */
static void fuzz_rmdir(void)
{
    char path[400];
    const char *names[] = { "fuzz.db", "fuzz.db-wal", "fuzz.db-shm", "fuzz.db-journal",
                            "fuzz.key", "fuzz.conf" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", fuzz_dir, names[i]);
        unlink(path);
    }
    rmdir(fuzz_dir);
}

static const char *fuzz_tmpdir(void)
{
    if (fuzz_dir[0])
        return fuzz_dir;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(fuzz_dir, sizeof fuzz_dir, "%s/mailnode-fuzz.XXXXXX", base);
    if (!mkdtemp(fuzz_dir))
        fuzz_die("mkdtemp");
    snprintf(fuzz_db, sizeof fuzz_db, "%s/fuzz.db", fuzz_dir);
    snprintf(fuzz_key, sizeof fuzz_key, "%s/fuzz.key", fuzz_dir);
    atexit(fuzz_rmdir);
    return fuzz_dir;
}

/* Embedded defaults plus the given "key = value" lines. */
static void fuzz_conf(const char *lines)
{
    char path[400], err[1024];
    FILE *f;

    snprintf(path, sizeof path, "%s/fuzz.conf", fuzz_tmpdir());
    f = fopen(path, "w");
    if (!f)
        fuzz_die("writing the configuration");
    fprintf(f, "hostname = fuzz.test\ndatabase = %s\nlocal_domains = example.test, example.org\n"
               "relay_networks = 127.0.0.0/8\n%s", fuzz_db, lines ? lines : "");
    fclose(f);
    if (conf) {
        conf_free(conf);
        free(conf);
    }
    conf = calloc(1, sizeof *conf);
    if (!conf || conf_load(path, conf, err, sizeof err)) {
        fprintf(stdout, "fuzz harness: configuration: %s\n", err);
        abort();
    }
}

/* Password checks against a full-cost hash are made instantly false.
 * Only the dummy hashes that unknown names are checked against have that
 * cost here (random passwords nobody can type), so the answer is the
 * same; the users' own hashes have the minimum cost and are verified for
 * real.  The amalgamation's calls bind to this definition. */
int crypto_pwhash_str_verify(const char *str, const char *passwd, unsigned long long passwdlen)
{
    if (strstr(str, "$m=8192,"))
        return -1;
    return crypto_pwhash_argon2id_str_verify(str, passwd, passwdlen);
}

/* A hash with the minimum Argon2id cost: verifying it is nearly free. */
static void fuzz_cheap_hash(char out[crypto_pwhash_STRBYTES], const char *pw)
{
    if (crypto_pwhash_str_alg(out, pw, strlen(pw), crypto_pwhash_OPSLIMIT_MIN,
                              crypto_pwhash_MEMLIMIT_MIN, crypto_pwhash_ALG_ARGON2ID13))
        fuzz_die("crypto_pwhash_str_alg");
}

static void fuzz_users(void)
{
    struct store_user u;
    struct store_domain d;

    memset(&u, 0, sizeof u);
    util_strlcpy(u.name, FUZZ_USER, sizeof u.name);
    if (auth_set_password(&u, FUZZ_PASSWORD))
        fuzz_die("auth_set_password");
    fuzz_cheap_hash(u.pwhash, FUZZ_PASSWORD);
    if (store_user_add(&u) || store_commit())
        fuzz_die("store_user_add");
    if (store_user_get(FUZZ_USER, &u))
        fuzz_die("store_user_get");
    fuzz_user_id = u.id;
    memset(&u, 0, sizeof u);
    util_strlcpy(u.name, "bob", sizeof u.name);
    if (auth_set_password(&u, "hunter2"))
        fuzz_die("auth_set_password");
    fuzz_cheap_hash(u.pwhash, "hunter2");
    if (store_user_add(&u) || store_commit())
        fuzz_die("store_user_add");
    if (store_alias_set("staff", "alice, bob") || store_alias_set("loop1", "loop2") ||
        store_alias_set("loop2", "loop1") || store_alias_set("out", "someone@remote.test") ||
        store_commit())
        fuzz_die("store_alias_set");
    memset(&d, 0, sizeof d);
    util_strlcpy(d.name, "hold.test", sizeof d.name);
    d.kind = DOMAIN_HOLD;
    util_strlcpy(d.owner, "bob", sizeof d.owner);
    /* ETRN releases go to a closed local port, never out to the network. */
    util_strlcpy(d.host, "127.0.0.1:9", sizeof d.host);
    if (store_domain_add(&d) || store_commit())
        fuzz_die("store_domain_add");
    /* Unknown names are checked against a dummy hash; make it cheap too. */
    fuzz_cheap_hash(auth_state.dummy_hash, "no such user");
    auth_state.have_dummy = 1;
}

static void fuzz_store_open(void)
{
    char err[512];

    fuzz_tmpdir();
    if (store_open(fuzz_db, STORE_DAEMON, err, sizeof err)) {
        fprintf(stdout, "fuzz harness: %s\n", err);
        abort();
    }
    if (auth_init(fuzz_key))
        fuzz_die("auth_init");
    fuzz_users();
}

/* A fresh database: the sessions store what the fuzzer makes them accept,
 * and the file must not grow through a long run. */
static void fuzz_store_reset(void)
{
    char path[400];
    store_close();
    unlink(fuzz_db);
    snprintf(path, sizeof path, "%s-wal", fuzz_db);
    unlink(path);
    snprintf(path, sizeof path, "%s-shm", fuzz_db);
    unlink(path);
    fuzz_store_open();
}

/* Puts a message into alice's mailbox (for POP3). */
static void fuzz_mbox_add(const char *text)
{
    struct store_env env;
    struct store_rcpt r;
    struct store_body *b = store_body_new();

    if (!b)
        fuzz_die("store_body_new");
    memset(&env, 0, sizeof env);
    util_qid(env.qid);
    env.sender = "sender@remote.test";
    env.client = "local";
    env.size = (int64_t)strlen(text);
    memset(&r, 0, sizeof r);
    r.kind = ROUTE_LOCAL;
    r.user_id = fuzz_user_id;
    util_strlcpy(r.addr, FUZZ_USER "@example.test", sizeof r.addr);
    util_strlcpy(r.domain, "example.test", sizeof r.domain);
    if (store_body_write(b, text, strlen(text)) || store_body_finish(b) ||
        store_msg_insert(&env, b, &r, 1) || store_commit())
        fuzz_die("store_msg_insert");
    store_body_free(b);
}

static int fuzz_count_cb(void *arg, const struct store_mbox_msg *m)
{
    MN_UNUSED(m);
    (*(size_t *)arg)++;
    return 0;
}

static size_t fuzz_mbox_count(void)
{
    size_t n = 0;
    store_mbox_list(fuzz_user_id, fuzz_count_cb, &n);
    return n;
}

/* The mailbox holds msgs once: a fuzzer that starts again on the same
 * database finds them there already. */
static void fuzz_mbox_fill(const char *const *msgs, size_t n)
{
    if (fuzz_mbox_count() >= n)
        return;
    for (size_t i = 0; i < n; i++)
        fuzz_mbox_add(msgs[i]);
}

/* ------------------------------------------------------------ sessions */

static size_t fuzz_pending(int fd)
{
    int n = 0;
    if (ioctl(fd, FIONREAD, &n) < 0 || n < 0)
        return 0;
    return (size_t)n;
}

/* One turn of the loop for the one connection, in loop_run's order:
 * readable, writable, timers, kicked sessions, the store's group commit,
 * kicked again, then the dead are freed.  *cp becomes NULL when the
 * connection was freed. */
static int fuzz_peer_closed;

static void fuzz_turn(struct conn **cp, int peer)
{
    struct conn *c = *cp;
    char sink[65536];

    /* Readable only as epoll would report it: registered for input, and
     * bytes (or the end of the stream) waiting in the socket. */
    if (c && !c->dead && (c->events & EPOLLIN) && (fuzz_pending(c->fd) || fuzz_peer_closed))
        conn_readable(c);
    if (c && !c->dead && c->out_len)
        conn_writable(c);
    run_timers(util_now_ms());
    run_kicked();
    store_turn_end();
    run_kicked();
    if (c && c->dead)
        *cp = NULL;
    free_dead();
    /* The client reads everything it was sent; FUZZ_TRACE=1 shows it. */
    for (;;) {
        ssize_t r = recv(peer, sink, sizeof sink, MSG_DONTWAIT);
        if (r <= 0)
            break;
        if (fuzz_trace)
            fwrite(sink, 1, (size_t)r, stdout);
    }
}

/* Drives one session of the protocol whose accept function is given over
 * the input.  The first byte chooses the listener kind (for SMTP, bit 0:
 * the submission port, or with bit 5 the ODMR port), the client address (bit 1: loopback, else a
 * routable address outside relay_networks) and the size of the pieces
 * the input arrives in (bits 2-4); the rest is what the client sends. */
static void fuzz_session(const uint8_t *data, size_t size, loop_accept_fn accept_fn, int kind)
{
    static const size_t pieces[8] = { 1, 3, 17, 100, 512, 1500, 16384, 1 << 20 };
    int sv[2];
    struct conn *c;
    size_t off = 0, piece;
    int idle = 0, turns = 0;
    uint8_t flags;

    if (size < 1)
        return;
    flags = data[0];
    data++;
    size--;
    piece = pieces[(flags >> 2) & 7];
    if (kind == LISTEN_SMTP && (flags & 1))
        kind = (flags & 0x20) ? LISTEN_ODMR : LISTEN_SUBMISSION;
    fuzz_peer_closed = 0;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv))
        fuzz_die("socketpair");
    c = conn_new(sv[0], kind, NULL, NULL, 16 * 1024, 16 * 1024);
    if (!c)
        fuzz_die("conn_new");
    {
        struct sockaddr_in *in = (struct sockaddr_in *)&c->peer;
        memset(&c->peer, 0, sizeof c->peer);
        in->sin_family = AF_INET;
        in->sin_port = htons(40000);
        in->sin_addr.s_addr = htonl((flags & 2) ? 0x7f000001 : 0xc0000221);   /* 192.0.2.33 */
        util_sockaddr_ip(&c->peer, c->peer_ip, sizeof c->peer_ip);
        c->peer_loopback = util_sockaddr_is_loopback(&c->peer);
    }
    accept_fn(c);
    fuzz_turn(&c, sv[1]);

    /* Feed the input; bounded: every turn either sends a piece or counts
     * as idle, and a few idle turns in a row end the session. */
    while (c && idle < 4) {
        size_t before_in = c->in_len, before_sock = fuzz_pending(sv[0]);
        /* Small pieces for the first turns, then the rest in large ones:
         * split handling is exercised and a long input stays quick. */
        if (++turns > 256)
            piece = 16384;
        if (off < size) {
            size_t n = size - off < piece ? size - off : piece;
            ssize_t w = send(sv[1], data + off, n, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w > 0)
                off += (size_t)w;
        }
        fuzz_turn(&c, sv[1]);
        if (!c)
            break;
        if (off >= size && c->in_len == before_in && fuzz_pending(sv[0]) == before_sock)
            idle++;
        else
            idle = 0;
    }
    /* A session that is not waiting for anything (paused, closing) has
     * no business leaving a complete line unread: the client would wait
     * for its replies forever. */
    if (c && !c->dead && !c->paused && !c->closing && c->in_len &&
        memchr(c->in, '\n', c->in_len)) {
        fprintf(stdout, "fuzz_session: the session stalled with %zu bytes of input, a complete "
                        "line among them, and %zu bytes of output space\n",
                c->in_len, conn_out_space(c));
        fflush(stdout);
        abort();
    }
    /* The client hangs up; the session sees EOF, answers what it owes and
     * closes.  If it still lives after that, the server side gives up. */
    shutdown(sv[1], SHUT_WR);
    fuzz_peer_closed = 1;
    for (int i = 0; c && i < 4; i++)
        fuzz_turn(&c, sv[1]);
    if (c)
        conn_abort(c);
    /* Connections the session started (an ETRN release, an ATRN
     * turnaround) do not outlive it either. */
    while (L.conns)
        conn_abort(L.conns);
    store_turn_end();
    free_dead();
    if (store_in_txn())
        store_commit();
    close(sv[1]);
}

#endif
