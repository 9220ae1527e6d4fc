/*
 * internal.h: what the modules of mailnode share.
 *
 * Each module has one prefix (util_, log_, conf_, loop_/conn_/timer_,
 * store_, addr_, mime_, auth_, queue_, smtpd_, pop3_, cli_) and one job.
 * Functions return 0 on success and a negative value on failure unless
 * their comment says otherwise.
 */
#ifndef MAILNODE_INTERNAL_H
#define MAILNODE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <sysexits.h>
#include <syslog.h>

#include <sodium.h>
#include <zlib.h>
#include "sqlite3.h"

#include "mailnode.h"

/* In the amalgamation tools/amalgamate.sh defines both as static and marks
 * every function declared here MN_PRIVATE, so the program exports nothing
 * but mailnode.h (make check-exports).  A module compiled on its own (make
 * check-modules) sees ordinary external declarations. */
#ifndef MN_PRIVATE
#define MN_PRIVATE
#define MN_PRIVATE_DATA extern
#endif

/* Kept for the unit tests and fuzz harnesses, which call what the program
 * itself does not: not reported as unused in the program's build. */
#define MN_FOR_TESTS __attribute__((unused))

#define MN_UNUSED(x) ((void)(x))
#define MN_NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* RFC 5321 4.5.3.1: size limits.  Paths are 256 octets including the
 * angle brackets, so an address fits in 254 bytes plus the NUL. */
#define SMTP_LOCAL_MAX   64
#define SMTP_DOMAIN_MAX  255
#define SMTP_PATH_MAX    256
#define SMTP_LINE_MAX    512     /* command line, CRLF included */
#define SMTP_TEXT_MAX    1000    /* text line, CRLF included */
#define ADDR_MAX         (SMTP_PATH_MAX + 1)
#define QID_LEN          16      /* queue id: 16 base32 characters */
#define USER_MAX         64

/* ------------------------------------------------------------------ util */

/* Queue time in seconds since the epoch: the wall clock, but immune to
 * steps of it (util.c explains).  Everything stored and scheduled uses it. */
int64_t util_now(void);
/* Sets queue time up from what the database holds: the saved offset and
 * the newest time written (queue time never starts before it). */
void util_clock_start(int64_t offset_s, int64_t floor);
/* The current offset; *moved (if given) says whether it changed since the
 * last call that asked, i.e. whether it must be saved again. */
int64_t util_clock_offset(int *moved);
int64_t util_now_ms(void);              /* monotonic milliseconds */
/* "30s", "5m", "4h", "5d", or bare seconds. */
int util_parse_duration(const char *s, int64_t *secs);
/* "10M", "512K", "1G", or bare bytes. */
int util_parse_size(const char *s, int64_t *bytes);
/* "512 B", "12.3 KiB", "100 MiB": an octet count for people to read. */
void util_fmt_size(int64_t bytes, char *out, size_t n);
void util_qid(char out[QID_LEN + 1]);   /* queue id: time, then random */
size_t util_strlcpy(char *dst, const char *src, size_t size);
/* getpwnam/getpwuid; a static build reads /etc/passwd itself, because the
 * C library's name services would load the host's shared modules into a
 * static program (glibc's NSS), which crashes it. */
struct passwd;
struct passwd *util_getpwnam(const char *name);
struct passwd *util_getpwuid(unsigned uid);
void util_lower(char *s);
/* RFC 5322 date-time of t, local time with numeric zone. */
void util_date(int64_t t, char *buf, size_t n);
/* "host:port", "[v6]:port", ":port" -> host (empty for any) and port. */
/* Appends header fields made from fmt at out + *used, refusing (-1, nothing
 * appended) a result with a bare CR or LF, a CRLF that is not folding or
 * the end, another control character or a NUL: the one way generated
 * header text is written. */
int util_header(char *out, size_t cap, size_t *used, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
int util_split_hostport(const char *s, char *host, size_t hostlen, int *port);
/* Numeric address (empty: any IPv4) and port -> socket address. */
int util_sockaddr_parse(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len);
/* 1 if the address is a loopback address. */
int util_sockaddr_is_loopback(const struct sockaddr_storage *ss);
void util_sockaddr_ip(const struct sockaddr_storage *ss, char *buf, size_t n);
char *util_trim(char *s);               /* in place, returns start */
/* Splits a comma/space separated list in place; returns count. */
size_t util_split_list(char *s, char **items, size_t max);

struct cidr {
    int family;                         /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    int bits;
};
int util_cidr_parse(const char *s, struct cidr *out);
int util_cidr_match(const struct cidr *c, const struct sockaddr_storage *ss);

/* md5.c: RFC 1321 MD5 and RFC 2104 HMAC-MD5, for CRAM-MD5 (RFC 2195) only. */
void md5_digest(const void *data, size_t len, unsigned char out[16]);
void hmac_md5(const void *key, size_t keylen, const void *msg, size_t msglen,
              unsigned char out[16]);

/* ------------------------------------------------------------------- log */

void log_init(const char *ident, int use_syslog);
void log_set_level(int level);          /* LOG_ERR .. LOG_DEBUG */
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_err(...)   log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARNING, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/* ------------------------------------------------------------------ conf */

#define CONF_MAX_KEYS 160              /* entries of the key table in conf.c */

enum listen_kind { LISTEN_SMTP, LISTEN_SUBMISSION, LISTEN_ODMR, LISTEN_POP3, LISTEN_IMAP, LISTEN_IMAPS,
                   LISTEN_N };

struct conf {
    char *path;                         /* file read, or NULL for defaults */
    char *hostname;
    char *database;
    char *keyfile;                      /* node key (CRAM-MD5 secrets); default DATABASE.key */
    char *control;                      /* control socket; default DATABASE.ctl */
    char *listen[LISTEN_N];             /* "addr:port,..."; "" disables */
    char **local_domains;               /* also domains added with `domain add --local` */
    size_t n_local_domains;
    struct cidr *relay_networks;
    size_t n_relay_networks;
    char *relayhost;
    char *relayhost_user;
    char *relayhost_password_file;
    char *upstream;
    char *upstream_mode;                /* "etrn" or "atrn" */
    char **upstream_domains;
    size_t n_upstream_domains;
    char *upstream_user;
    char *upstream_password_file;
    int64_t upstream_interval;          /* seconds */
    int64_t retry_initial, retry_max;   /* seconds */
    int64_t queue_lifetime, queue_warn_after;
    char *resolver;                     /* "addr[:port]" of a DNS server; "" = resolv.conf */
    int64_t delivery_port;              /* TCP port of MX delivery (25) */
    int64_t delivery_per_connection;    /* messages one outbound session carries */
    int64_t delivery_parallel;          /* outbound sessions in all (one per destination) */
    int64_t delivery_large;             /* bytes: larger messages go after the small ones; 0 = off */
    int resume;                         /* XRESUME between mailnodes */
    int64_t resume_lifetime;            /* seconds a partial transfer is kept */
    int64_t resume_max_size;            /* octets of partial transfers kept in all */
    int64_t smtp_timeout_connect;
    int64_t message_size_limit;         /* bytes */
    int64_t max_recipients;
    int64_t max_recipients_untrusted;   /* for clients neither authenticated nor in relay_networks */
    int64_t max_connections;
    int64_t max_received;               /* refuse at this many Received headers */
    int64_t smtp_timeout_command;       /* RFC 5321 4.5.3.2.7: server 5 min */
    int64_t smtp_timeout_data;          /* between data blocks */
    int64_t pop3_timeout;               /* RFC 1939: at least 10 minutes */
    int64_t imap_timeout;               /* RFC 3501 5.4: at least 30 minutes */
    int64_t imap_max_per_user;          /* concurrent IMAP sessions of one user */
    int64_t quota_default;              /* mailbox limit in octets, 0 = none */
    int64_t auth_fail_delay;            /* seconds added per failed AUTH */
    int64_t auth_max_failures;          /* then 421 and close */
    int64_t limit_connections_per_ip;   /* concurrent SMTP sessions per address */
    int64_t limit_auth_failures_per_ip; /* within 10 minutes, then AUTH refused */
    int64_t limit_messages_per_minute;  /* per address */
    int64_t limit_auth_failures_per_user; /* then the account backs off */
    int64_t limit_connections_reserved; /* slots only for trusted, submission and POP3 clients */
    int64_t max_connections_on[LISTEN_N]; /* per listener kind; 0 = no own limit */
    int allow_vrfy;                     /* vrfy = yes: 250/550 instead of 252 */
    int allow_expn;                     /* expn = yes: expand aliases */
    int allow_cleartext_auth;           /* auth.cleartext = yes */
    int sender_login_match;             /* submission.sender_login_match */
    char *log_dest;                     /* log = syslog | stderr */
    char *run_user;                     /* user = NAME: drop root after binding */
    char *admin;                        /* admin = USER: gets postmaster mail */
    char *log_level_name;               /* log.level = warning | info | debug */
    int log_level;                      /* LOG_WARNING, LOG_INFO or LOG_DEBUG */
    int use_syslog;
    char *tls_cert, *tls_key;
    char *tls_ca_file;                  /* CA bundle for verifying relays, besides the system store */
    char *relayhost_tls;                /* "may" (default), "require" or "none" */
    char *upstream_tls;                 /* the same, for the upstream */
    int compress;                       /* COMPRESS DEFLATE between mailnodes (zio.c) */
    char **compress_never;              /* destinations or hosts never compressed */
    size_t n_compress_never;
    char *bundle_key;                   /* bundle key pair; default DATABASE.bundle-key */
    int64_t bundle_resend_after;        /* unacknowledged bundled mail is exported again */
    char **pacing_rate;                 /* "DESTINATION=RATE" rate hints (pace.c) */
    size_t n_pacing_rate;
    unsigned short key_line[CONF_MAX_KEYS]; /* line of each key in the file; 0 = default */
};

MN_PRIVATE_DATA struct conf *conf;               /* the configuration in force */

/* Loads PATH (NULL: embedded defaults only).  On error fills err with
 * "FILE:LINE: what is wrong" and returns -1. */
int conf_load(const char *path, struct conf *c, char *err, size_t errlen);
void conf_free(struct conf *c);
/* "FILE:LINE: key" where a key was set (or that it is the default), for
 * messages about its value. */
const char *conf_where(const struct conf *c, const char *key, char *buf, size_t n);
/* Every key with the value in effect, "  # default" after those the file
 * does not set (only_set: just the file's keys, as `postconf -n`). */
void conf_print(const struct conf *c, FILE *f, int only_set);
/* 1 if the domain (lower case) is listed in local_domains. */
int conf_is_local_domain(const char *domain);
int conf_relay_allowed(const struct sockaddr_storage *ss);

/* ------------------------------------------------------------------ loop */

struct conn;

struct conn_ops {
    /* Input arrived (or the session was resumed): consume what can be
     * handled from c->in; leave partial lines. */
    void (*on_input)(struct conn *c);
    /* The output buffer drained below half; a streaming writer refills. */
    void (*on_drain)(struct conn *c);
    /* The deadline passed. */
    void (*on_timeout)(struct conn *c);
    /* The connection is going away (peer closed, error, or conn_close
     * finished); free the session here. */
    void (*on_close)(struct conn *c);
    /* An outbound connection finished connecting: err is 0 or an errno. */
    void (*on_connect)(struct conn *c, int err);
    /* A TLS handshake started with tls_start_* finished: err 0 or not. */
    void (*on_tls)(struct conn *c, int err);
};

struct conn {
    int fd;
    const struct conn_ops *ops;
    void *ctx;                          /* the session */
    int kind;                           /* enum listen_kind of its listener */
    unsigned char *in;                  /* fixed input buffer */
    size_t in_len, in_cap;
    unsigned char *out;                 /* fixed output buffer */
    size_t out_len, out_cap;
    int64_t deadline;                   /* monotonic ms; 0 = none */
    int64_t idle_ms;                    /* conn_set_timeout: moved on by every octet that moves */
    uint64_t moved_seen;                /* the kernel's octet counters at the last look (pace.c) */
    int64_t moved_at;                   /* monotonic ms of that look */
    unsigned paused : 1;                /* do not deliver input (waiting for commit) */
    unsigned want_drain : 1;            /* call on_drain when output drains */
    unsigned closing : 1;               /* close once output is flushed */
    unsigned dead : 1;                  /* closed; freed at the end of the turn */
    unsigned eof : 1;                   /* peer closed its side */
    unsigned kicked : 1;                /* on_input pending at end of turn */
    unsigned connecting : 1;            /* outbound connect in progress */
    unsigned lingering : 1;             /* output sent, half-closed, draining input */
    unsigned drain_due : 1;             /* on_drain at the end of the turn (output went out at once) */
    unsigned write_due : 1;             /* on the end-of-turn write list (loop.c) */
    uint32_t events;                    /* epoll events registered */
    struct sockaddr_storage peer;
    char peer_ip[64];
    int peer_loopback;
    struct conn *next, *prev;
    struct conn *kick_next;
    struct conn *write_next;
    void *tls;                          /* SSL *, when TLS is on */
    void *zio;                          /* struct zio, when COMPRESS is on (zio.c) */
};

struct timer {
    int64_t at;                         /* monotonic ms */
    void (*fn)(void *arg);
    void *arg;
    int idx;                            /* heap index, -1 when not armed */
};

typedef void (*loop_accept_fn)(struct conn *c);

int loop_init(void);
void loop_free(void);
/* Binds the listeners of a comma separated "addr:port" list; they take
 * connections after loop_listen_start. */
int loop_listen(const char *spec, int kind, loop_accept_fn on_accept, char *err, size_t errlen);
int loop_listen_start(char *err, size_t errlen);
/* 1 if ss (address and port) reaches one of our own listeners: a next
 * hop there would deliver to ourselves (RFC 5321 5.1). */
int loop_is_own_listener(const struct sockaddr_storage *ss);
void loop_close_listeners(void);
int loop_run(void);                     /* until loop_stop(); returns 0 */
void loop_stop(void);
/* Called at the end of each loop turn, after events were handled (the
 * store's group commit). */
void loop_set_turn_hook(void (*fn)(void));

/* Buffers: in_cap and out_cap are hard caps. */
struct conn *conn_new(int fd, int kind, const struct conn_ops *ops, void *ctx,
                      size_t in_cap, size_t out_cap);
/* Appends to the output buffer; -1 (nothing written) if it does not fit. */
int conn_write(struct conn *c, const void *buf, size_t n);
int conn_printf(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
size_t conn_out_space(const struct conn *c);
void conn_consume(struct conn *c, size_t n);   /* drop n bytes of input */
void conn_close(struct conn *c);        /* flush output, then close */
void conn_abort(struct conn *c);        /* close now, drop output */
void conn_pause(struct conn *c, int on);
void conn_kick(struct conn *c);         /* run on_input again at the end of this turn */
/* An idle timeout, not a deadline: every octet read from or written to
 * the peer starts it again, so a session ends only when nothing moves
 * for ms in either direction (a slow link that still carries data never
 * times out).  0 clears. */
void conn_set_timeout(struct conn *c, int64_t ms);
int conn_flush(struct conn *c);         /* try to write now */

void timer_set(struct timer *t, int64_t ms_from_now, void (*fn)(void *), void *arg);
void timer_cancel(struct timer *t);

/* Outbound: a non-blocking connect; ops->on_connect reports the outcome.
 * NULL if the socket could not even be created (errno says why). */
struct conn *conn_connect(const struct sockaddr_storage *ss, socklen_t len, int kind,
                          const struct conn_ops *ops, void *ctx, size_t in_cap, size_t out_cap);

/* Any other descriptor (UDP, netlink, unix listeners): fn runs when the
 * registered events (EPOLLIN, EPOLLOUT) are ready. */
struct watch {
    int fd;
    uint32_t events;
    void (*fn)(struct watch *w, uint32_t events);
    void *arg;
};
int loop_watch_add(struct watch *w);
int loop_watch_mod(struct watch *w, uint32_t events);
void loop_watch_del(struct watch *w);

/* ------------------------------------------------------------------ zio */

/* COMPRESS DEFLATE between mailnodes (zio.c, modelled on RFC 4978): after
 * zio_start both directions of c are raw deflate streams; what is in
 * c->out already goes out plain, what is in c->in is compressed input. */
int zio_start(struct conn *c);
/* The client's side when it sends commands after COMPRESS without waiting:
 * the peer's next `replies` replies (COMPRESS's, and EHLO's when sent
 * with it) still come plain. */
int zio_start_pipelined(struct conn *c, int replies);
int zio_active(const struct conn *c);
struct zio_stats {
    uint64_t plain_out, raw_out, plain_in, raw_in, cpu_us;
    uint64_t fast_switches;             /* times deflate went to its fast level */
};
const struct zio_stats *zio_stats(const struct conn *c);
void zio_conn_free(struct conn *c);     /* by conn_abort */
/* 1 if compression may be offered to or used with the session's peer:
 * `compress` is on and neither dest nor host is in compress.never. */
int zio_allowed(const char *dest, const char *host);
/* For the loop: plain text moves through these, compressed octets through
 * conn_raw_read/conn_raw_write (TLS or the socket). */
ssize_t zio_io_read(struct conn *c, void *buf, size_t n);
int zio_io_flush(struct conn *c);               /* 0 all sent, 1 would block, -1 error */
int zio_io_pending_in(const struct conn *c);
size_t zio_io_pending_out(const struct conn *c);
ssize_t conn_raw_read(struct conn *c, void *buf, size_t n);
ssize_t conn_raw_write(struct conn *c, const void *buf, size_t n);

/* ----------------------------------------------------------------- pace */

/* TCP on slow links (pace.c).  pace_moved: octets the kernel has moved on
 * the socket (acknowledged plus received), 0 when it cannot tell. */
uint64_t pace_moved(int fd);
/* Outbound sockets: little unsent data in the kernel (TCP_NOTSENT_LOWAT). */
void pace_socket(int fd);
/* A rate hint (octets/s) for a connected socket: SO_MAX_PACING_RATE and a
 * send buffer of about two bandwidth-delay products. */
void pace_rate(int fd, uint64_t bytes_per_s);
/* The `pacing.rate` hint for a destination (dest row name such as
 * "[relayhost]" or a domain, or the peer's host name), octets/s or 0. */
uint64_t pace_rate_for(const char *dest, const char *host);
int pace_conf_check(const struct conf *c, char *err, size_t n);

/* ----------------------------------------------------------------- store */

/* Errors the store reports; the caller maps them to replies. */
#define STORE_ERR   (-1)                /* any failure: 451 4.3.0 */
#define STORE_FULL  (-2)                /* disk full: 452 4.3.1 */
#define STORE_NOTFOUND (-3)
#define STORE_EXISTS (-4)

#define STORE_CHUNK (32 * 1024)         /* raw bytes per stored body chunk */

enum store_mode { STORE_DAEMON, STORE_TOOL };

int store_open(const char *path, enum store_mode mode, char *err, size_t errlen);
void store_close(void);
sqlite3 *store_db(void);                /* for the store_*.c files only */
/* Prepares sql into *slot on first use (kept until store_close), resets it
 * on later uses. */
sqlite3_stmt *store_stmt(sqlite3_stmt **slot, const char *sql);
int store_rc(int sqlite_rc);            /* SQLITE_FULL -> STORE_FULL, else STORE_ERR */
/* Steps a statement that returns no row and resets it: 0, or the error
 * (logged as "database: what: ..."); a fault-injection point. */
int store_step_done(sqlite3_stmt *st, const char *what);

/* Transactions.  The daemon keeps one write transaction per loop turn:
 * store_begin() opens it if needed; store_turn_end() commits it durably
 * and then runs the acknowledgements registered during the turn, so that
 * every message finished in the same turn shares one fsync. */
int store_begin(void);
int store_commit(void);                 /* tool mode: commit now */
void store_rollback(void);
typedef void (*store_ack_fn)(void *arg, int rc);
void store_after_commit(store_ack_fn fn, void *arg);
void store_turn_end(void);
/* fn() returns how many sessions are inside a mail transaction that has
 * not reached its end yet: the group commit may wait for them. */
void store_set_busy_hint(int (*fn)(void));
/* What this turn wrote must be durable at its end (a peer's 250 was
 * recorded: a crash must not make us send the message again). */
void store_commit_soon(void);
/* A delivery outcome was written: outcomes are committed together, when
 * STORE_OUTCOME_BATCH of them wait or the oldest has waited
 * STORE_OUTCOME_MS (a crash resends at most those: at-least-once). */
#define STORE_OUTCOME_BATCH 64
#define STORE_OUTCOME_MS 200
void store_outcome(void);
/* A savepoint around a multi-row call: store_atomic_end(err) undoes every
 * row of it when err < 0 (and returns err), else keeps them. */
int store_atomic_begin(void);
int store_atomic_end(int err);
#ifdef MAILNODE_TEST
extern int store_fault_after;           /* fail the write step after this many (-1: never) */
int store_fault(void);
int store_explain(int (*cb)(void *arg, const char *sql, const char *plan), void *arg);
int store_reprepares(void);
#define STORE_FAULT() store_fault()
#else
#define STORE_FAULT() 0
#endif
int store_in_txn(void);
/* Queue time (store_clock.c): store_clock_load() starts it from the saved
 * offset and the newest stored time (store_open does this);
 * store_clock_save() saves the offset if a clock step changed it. */
int store_clock_load(void);
int store_clock_save(void);

/* Backups (store_backup.c): a consistent copy of a live database by the
 * online backup API, and its restore over the database.  0, or -1 with
 * err filled. */
struct store_backup_info {
    int64_t schema, pages, bytes, messages, mailbox_messages;
};
int store_backup(const char *db_path, const char *file, int64_t bytes_per_sec, struct store_backup_info *info,
                 char *err, size_t errlen);
int store_restore(const char *file, const char *db_path, struct store_backup_info *info, char *err,
                  size_t errlen);

/* A body being written: raw bytes in, compressed chunks out. */
struct store_body {
    int64_t id;
    int64_t size;                       /* raw bytes so far */
    int64_t seq;                        /* next chunk number */
    int err;                            /* sticky STORE_ERR / STORE_FULL */
    int linked;                         /* a message refers to it: keep the rows */
    size_t len;                         /* bytes in buf */
    unsigned char *buf;                 /* STORE_CHUNK bytes */
    crypto_generichash_state hash;
    struct store_body *next;            /* open bodies, for rollback */
};
struct store_body *store_body_new(void);        /* NULL on error */
int store_body_write(struct store_body *b, const void *data, size_t n);
int store_body_finish(struct store_body *b);    /* last chunk, size, hash */
void store_body_free(struct store_body *b);     /* deletes rows unless committed */
struct store_body *store_body_reopen(int64_t id, int64_t size, int64_t nchunks);
int store_body_checkpoint(struct store_body *b);        /* buffered bytes into a chunk now */

/* store_resume.c: partial bodies of interrupted transfers (resume.c). */
struct store_partial {
    int found;
    int64_t body_id, size, nchunks, updated;
    char done_qid[QID_LEN + 1];         /* "" while not yet accepted */
};
int store_partial_get(const char *tid, struct store_partial *p);
/* A new partial body under tid: the body row becomes a partial one. */
int store_partial_new(const char *tid, int64_t body_id);
/* size octets in nchunks chunks are durable with the next commit;
 * chunks after them (written before a crash) are dropped by get. */
int store_partial_save(const char *tid, int64_t size, int64_t nchunks);
/* The transfer became message qid: its octets go, the id stays. */
int store_partial_done(const char *tid, const char *qid, int64_t size);
int store_partial_drop(const char *tid);
/* Partials not touched since before; then the oldest until the
 * octets kept are at most max_octets.  How many went. */
int store_partial_expire(int64_t before, int64_t max_octets);
int64_t store_partial_octets(void);     /* octets kept in partial bodies */
/* The hash of a finished body (crypto_generichash, 32 octets). */
int store_body_hash(int64_t body_id, unsigned char out[32]);

/* resume.c: XRESUME, transfers between mailnodes that go on after a
 * link drop (see the file's header). */
#define RESUME_TID_MAX 120
#define RESUME_MIN_SIZE (64 * 1024)     /* smaller messages are simply sent again */
struct resume;
struct conn;
int resume_tid_parse(const char *tid, unsigned char hash[32]);
/* NULL: no resumption (off, bad id, no room): an ordinary transfer. */
struct resume *resume_begin(const char *tid, struct conn *c, struct resume **owner, int64_t *offset);
void resume_end(struct resume *r, int keep);
int resume_feed(struct resume *r, const void *p, size_t n);
const char *resume_done_qid(const struct resume *r);
int64_t resume_octets(const struct resume *r);
int resume_replay(struct resume *r, int (*emit)(void *arg, const void *buf, size_t n), void *arg);
int resume_done(struct resume *r, const char *qid);
struct store_out_msg;
int resume_tid_make(const struct store_out_msg *m, char *out, size_t n);

/* Reading a body back, chunk by chunk. */
struct store_reader {
    int64_t body_id;
    int64_t seq, nchunks;
    int inline_data;                    /* one piece, in the body row */
    unsigned char *buf;                 /* STORE_CHUNK bytes */
    size_t len, off;
    int err;
};
int store_reader_open(struct store_reader *r, int64_t body_id);
/* Copies up to n bytes; returns bytes copied, 0 at the end, <0 on error. */
ssize_t store_reader_read(struct store_reader *r, void *dst, size_t n);
void store_reader_close(struct store_reader *r);

/* RCPT NOTIFY bits (RFC 3461 4.1). */
#define NOTIFY_SUCCESS 1
#define NOTIFY_FAILURE 2
#define NOTIFY_DELAY   4
#define NOTIFY_NEVER   8

struct store_env {
    char qid[QID_LEN + 1];
    const char *sender;                 /* "" for the null reverse-path */
    const char *envid;                  /* DSN ENVID or NULL */
    int ret_full;                       /* DSN RET=FULL */
    int eightbit;                       /* BODY=8BITMIME or 8-bit seen */
    const char *client;                 /* "host [ip]" or "local" */
    const char *auth_user;              /* or NULL */
    int64_t size;
};

enum route_kind { ROUTE_LOCAL = 1, ROUTE_REMOTE, ROUTE_HOLD };

struct store_rcpt {
    int kind;                           /* enum route_kind */
    int64_t user_id;                    /* ROUTE_LOCAL: mailbox owner */
    char addr[ADDR_MAX];                /* final address after aliases */
    char orcpt[ADDR_MAX + 8];           /* DSN ORCPT ("rfc822;addr") or "" */
    int notify;                         /* NOTIFY_* bits, 0 = default */
    char domain[SMTP_DOMAIN_MAX + 1];   /* destination (lower case) */
};

/* The recipients of one transaction, compact and without duplicates
 * (rcpts.c).  Zero-initialised is empty. */
struct rcpts_ent;
struct rcpts {
    unsigned char *arena;               /* the strings */
    size_t used, cap;
    struct rcpts_ent *ent;
    size_t n, capn;
};
/* 1 added, 0 already there (the same local user or address), -1 no memory. */
int rcpts_add(struct rcpts *l, const struct store_rcpt *r);
int rcpts_has(const struct rcpts *l, const struct store_rcpt *r);
void rcpts_get(const struct rcpts *l, size_t i, struct store_rcpt *r);
const char *rcpts_addr(const struct rcpts *l, size_t i);
int rcpts_kind(const struct rcpts *l, size_t i);
int rcpts_notify(const struct rcpts *l, size_t i);
struct store_rcpt *rcpts_expand(const struct rcpts *l);    /* malloc'd, n routes */
void rcpts_clear(struct rcpts *l);

/* Inserts the message, its queued recipients and its mailbox entries in
 * the current transaction.  b must be finished. */
int store_msg_insert(const struct store_env *env, struct store_body *b,
                     const struct store_rcpt *rcpts, size_t n);

/* Queue administration. */
int store_queue_delete(const char *qid);
int64_t store_queue_count(void);
struct store_status {
    int64_t queued_msgs, queued_rcpts, held_rcpts, mbox_msgs, users;
};
int store_status(struct store_status *st);
/* Small named facts (the last upstream exchange, ...). */
int store_meta_set(const char *key, const char *value);
int store_meta_get(const char *key, char *value, size_t n, int64_t *updated);

/* Per-destination (next hop) delivery state. */
struct store_dest {
    char name[SMTP_DOMAIN_MAX + 1];
    int64_t next_try, backoff, failures, last_try, last_ok, backlog;
    char last_error[512];
};

/* store_ops.c: what the operator's commands ask. */
int64_t store_ops_queued_remote(const char *domain);  /* "" = all; -1 on error */
int store_ops_dests(int relay, int (*cb)(void *arg, const struct store_dest *d), void *arg);
int store_ops_held(int (*cb)(void *arg, const char *domain, int64_t rcpts, int64_t msgs), void *arg);
int64_t store_ops_on_hold(void);                      /* messages stopped by `queue hold` */
struct store_ops_msg {
    int64_t id, received, size, body_id;
    int hold;                           /* stopped by `queue hold` */
    char qid[QID_LEN + 1];
    char sender[ADDR_MAX];
};
struct store_ops_rcpt {
    char addr[ADDR_MAX];
    char dest[SMTP_DOMAIN_MAX + 1];
    int state;                          /* 0 queued, 1 delivered, 2 failed */
    int kind;                           /* enum route_kind */
    int attempts;
    int64_t next_try;                   /* with the destination's backoff */
    int64_t updated;                    /* of the last attempt */
    int dest_failures;                  /* the destination's failed tries in a row */
    char last_error[512];
};
/* Messages with something queued (for domain, if not NULL or ""). */
int store_ops_msgs(const char *domain, int (*cb)(void *arg, const struct store_ops_msg *m), void *arg);
int store_ops_msg_get(const char *qid, struct store_ops_msg *m);   /* STORE_NOTFOUND */
int store_ops_rcpts(int64_t msg_id, int relay, int (*cb)(void *arg, const struct store_ops_rcpt *r), void *arg);
int store_ops_delete_domain(const char *domain, int64_t *rcpts);
/* A queued recipient's last error, its own or its destination's if later
 * (the relayhost's when relay); STORE_NOTFOUND when none. */
int store_ops_rcpt_error(int64_t rcpt_id, int relay, char *err, size_t n, int64_t *when, int *of_dest);
/* The client column of a double bounce (a notification to the postmaster
 * about a notification that could not be delivered). */
#define STORE_DOUBLE_BOUNCE "double-bounce"
int store_ops_is_double_bounce(int64_t msg_id);

/* store_deliver.c: the outbound queue as the scheduler sees it. */
#define STORE_OUT_RCPTS 100             /* recipients per transaction (RFC 5321 4.5.3.1.8) */
struct store_out_rcpt {
    int64_t id;
    char addr[ADDR_MAX];
    char orcpt[ADDR_MAX + 8];
    int notify;
    int attempts;
};
struct store_out_msg {
    int64_t id, body_id, size, received;
    char qid[QID_LEN + 1];
    char sender[ADDR_MAX];
    char envid[101];
    int ret_full, eightbit;
    int nrcpt;
    struct store_out_rcpt *rcpts;       /* nrcpt of them, freed by store_out_free */
};
void store_out_free(struct store_out_msg *m);
/* Destinations (recipient domains) with mail due now. */
int store_due_domains(int64_t now, int (*cb)(void *arg, const char *domain), void *arg);
/* 1 if any remote recipient is due now (smarthost mode). */
int store_any_due(int64_t now);
/* Where a delivery session is in its destination's queue: the
 * (next_try, message id) of the last message it was handed; all zero at
 * the start. */
struct store_cursor {
    int64_t next_try, msg_id;
};
/* The next message after the cursor with recipients of the given kind
 * (ROUTE_REMOTE, or ROUTE_HOLD for held mail) due for domain (NULL: any
 * domain), those recipients only, up to STORE_OUT_RCPTS; advances the
 * cursor.  1 found, 0 none, <0 error. */
int store_out_next(const char *domain, int kind, struct store_cursor *cur, int64_t now, struct store_out_msg *m);
/* The same, among messages of size_lo to size_hi octets only (a session
 * sends its small messages before its large ones). */
int store_out_next_sized(const char *domain, int kind, struct store_cursor *cur, int64_t now, int64_t size_lo,
                         int64_t size_hi, struct store_out_msg *m);
/* Messages held for a hold domain. */
int store_held_count(const char *domain);
enum { RCPT_QUEUED = 0, RCPT_DELIVERED = 1, RCPT_FAILED = 2 };
int store_rcpt_set(int64_t rcpt_id, int state, int64_t next_try, const char *error);
/* Deletes the message if no recipient is left queued; then its body if
 * nothing refers to it.  1 if deleted. */
int store_msg_retire(int64_t msg_id);
int store_dest_get(const char *name, struct store_dest *d);   /* zeroed if absent */
int store_dest_put(const struct store_dest *d);
/* Every destination's backoff (domain NULL) or one's is reset and its
 * recipients made due now, except for held messages. */
int store_flush(const char *domain, int64_t now);
/* Remote recipients queued since before `before` (lifetime), warned or
 * not; cb gets (message id, recipient id). */
int store_expired(int64_t before, int (*cb)(void *arg, int64_t msg_id, int64_t rcpt_id), void *arg);
/* Messages received before `before`, not yet warned about, with queued
 * remote recipients. */
int store_unwarned(int64_t before, int (*cb)(void *arg, int64_t msg_id), void *arg);
int store_msg_set_warned(int64_t msg_id);
/* One message's envelope and its queued remote recipients. */
int store_out_get(int64_t msg_id, struct store_out_msg *m);
int store_queue_hold(const char *qid, int hold);   /* hold or release */

/* Deletes bodies no message or mailbox entry refers to any more: all of
 * them (a scan, for start-up and rare administration), or one. */
int store_gc(void);
int store_gc_body(int64_t body_id);

/* store_admin.c: users, domains, aliases. */
struct store_user {
    int64_t id;
    char name[USER_MAX + 1];
    char pwhash[crypto_pwhash_STRBYTES];
    unsigned char cram[128];            /* sealed CRAM-MD5 secret */
    size_t cram_len;
    int64_t quota;                      /* octets; -1: quota.default, 0: none */
    int64_t bytes, msgs;                /* what the mailbox holds now */
};
int store_user_get(const char *name, struct store_user *u);   /* STORE_NOTFOUND */
int store_user_get_id(int64_t id, struct store_user *u);
int store_user_add(const struct store_user *u);               /* STORE_EXISTS */
int store_user_update(const struct store_user *u);            /* password change */
/* The first user created that can log in (not the holding mailbox). */
int store_user_first(struct store_user *u);                   /* STORE_NOTFOUND */
/* Moves the mailbox of user `from` to user `to` and removes `from`. */
int store_user_adopt(int64_t from, int64_t to);
int store_user_del(const char *name);
int store_user_list(int (*cb)(void *arg, const struct store_user *u), void *arg);
/* The user's own quota in octets, or -1 to follow quota.default. */
int store_user_set_quota(const char *name, int64_t quota);    /* STORE_NOTFOUND */
/* The mailbox usage counters and the user's own quota (one row read). */
int store_user_usage(int64_t id, int64_t *bytes, int64_t *msgs, int64_t *quota);

enum domain_kind { DOMAIN_LOCAL = 1, DOMAIN_HOLD = 2 };
struct store_domain {
    char name[SMTP_DOMAIN_MAX + 1];
    int kind;
    char owner[USER_MAX + 1];
    char host[SMTP_DOMAIN_MAX + 8];
};
int store_domain_get(const char *name, struct store_domain *d);
int store_domain_add(const struct store_domain *d);
int store_domain_del(const char *name);
int store_domain_mod(const struct store_domain *d);   /* in place; STORE_NOTFOUND */
int store_domain_list(int (*cb)(void *arg, const struct store_domain *d), void *arg);

int store_alias_get(const char *name, char *targets, size_t n);
int store_alias_set(const char *name, const char *targets);
int store_alias_del(const char *name);
int store_alias_list(int (*cb)(void *arg, const char *name, const char *targets), void *arg);

/* store_mbox.c: mailboxes.  A mailbox entry is a body shared with the
 * other recipients plus a small per-recipient header prefix
 * (Return-Path); its size is prefix + body in CRLF form. */
struct store_mbox_msg {
    int64_t uid;                        /* stable, never reused */
    int64_t body_id;
    int64_t size;                       /* octets, CRLF, before byte-stuffing */
    int64_t added;
    char qid[QID_LEN + 1];
    char prefix[ADDR_MAX + 64];
};
int store_mbox_list(int64_t user_id, int (*cb)(void *arg, const struct store_mbox_msg *m), void *arg);
int store_mbox_get(int64_t user_id, int64_t uid, struct store_mbox_msg *m);
int store_mbox_delete(int64_t user_id, const int64_t *uids, size_t n);

/* store_imap.c: IMAP folders and message state.  A folder's key is the
 * value of mbox.folder for its messages: 0 for INBOX, else its id. */
#define IMAP_NAME_MAX   200             /* folder name octets */
#define IMAP_KEYWORDS_MAX 1000          /* octets of a message's keyword list */
enum { IMAP_SEEN = 1, IMAP_ANSWERED = 2, IMAP_FLAGGED = 4, IMAP_DELETED = 8, IMAP_DRAFT = 16 };
struct store_folder {
    int64_t id, key;
    char name[IMAP_NAME_MAX + 1];
    int64_t uidvalidity, uidnext, modseq;
    int64_t recent;                     /* uids from here on are \Recent */
    char special[16];                   /* RFC 6154 attribute or "" */
    int subscribed;
};
int store_folder_get(int64_t user_id, const char *name, struct store_folder *f); /* STORE_NOTFOUND */
int store_folder_list(int64_t user_id, int (*cb)(void *arg, const struct store_folder *f), void *arg);
int store_folder_create(int64_t user_id, const char *name);     /* STORE_EXISTS */
/* Deletes the folder and its messages. */
int store_folder_delete(int64_t user_id, const struct store_folder *f);
/* Renames the folder and those below it ("from/..."); INBOX's messages
 * move to a new folder instead (RFC 3501 6.3.5). */
int store_folder_rename(int64_t user_id, const char *from, const char *to);
int store_folder_subscribe(int64_t user_id, const char *name, int on);
/* The messages from f->recent on were announced \Recent: later ones only. */
int store_folder_take_recent(const struct store_folder *f);
/* Counts for STATUS. */
int store_folder_counts(int64_t user_id, const struct store_folder *f, int64_t *messages,
                        int64_t *unseen, int64_t *recent);
/* Octets of the folder's messages flagged \Deleted (RFC 9208 DELETED-STORAGE). */
int store_folder_deleted_bytes(int64_t user_id, int64_t key, int64_t *bytes);
/* The next change number of the folder (flag changes carry it). */
int store_folder_bump(int64_t user_id, int64_t key, int64_t *modseq);
struct store_imap_msg {
    int64_t uid, body_id, size, added, modseq;
    unsigned flags;
    char keywords[IMAP_KEYWORDS_MAX + 1];
    char prefix[ADDR_MAX + 64];
};
/* The uids of a folder in order, into a malloc'd array. */
int store_imap_uids(int64_t user_id, int64_t key, uint32_t **uids, size_t *n);
int store_imap_get(int64_t user_id, int64_t uid, struct store_imap_msg *m);    /* STORE_NOTFOUND */
/* Messages whose flags changed after modseq. */
int store_imap_changed(int64_t user_id, int64_t key, int64_t modseq,
                       int (*cb)(void *arg, const struct store_imap_msg *m), void *arg);
int store_imap_each(int64_t user_id, int64_t key, int (*cb)(void *arg, const struct store_imap_msg *m),
                    void *arg);
/* The messages of a folder with uids in [lo, hi], in order. */
int store_imap_range(int64_t user_id, int64_t key, int64_t lo, int64_t hi,
                     int (*cb)(void *arg, const struct store_imap_msg *m), void *arg);
int store_imap_set_flags(int64_t user_id, int64_t uid, unsigned flags, const char *keywords, int64_t modseq);
/* A copy of the message into folder key; *new_uid gets its uid. */
int store_imap_copy(int64_t user_id, int64_t uid, int64_t key, int64_t *new_uid);
/* A new message from a finished body (APPEND). */
int store_imap_append(int64_t user_id, int64_t key, struct store_body *b, unsigned flags,
                      const char *keywords, int64_t date, int64_t *uid);
/* What FETCH and SEARCH need of a body, computed once (imap_mime.c) and
 * kept: strings are malloc'd, freed by store_imap_cache_free. */
struct store_imap_cache {
    char *envelope, *structure, *body, *parts;
    int64_t sent;
    char *hsubject, *hfrom, *hto, *hcc, *hbcc;
};
int store_imap_cache_get(int64_t body_id, struct store_imap_cache *c);     /* STORE_NOTFOUND */
int store_imap_cache_put(int64_t body_id, const struct store_imap_cache *c);
void store_imap_cache_free(struct store_imap_cache *c);
/* Positions the reader at raw offset off (chunks before it are skipped
 * without being inflated). */
int store_reader_seek(struct store_reader *r, int64_t off);

/* ------------------------------------------------------------------ addr */

struct addr {
    char local[SMTP_LOCAL_MAX * 2 + 3];  /* as written, quotes removed */
    char domain[SMTP_DOMAIN_MAX + 1];    /* lower case; "" for <> and postmaster */
    char full[ADDR_MAX];                 /* local@domain (quoted when needed) or "" */
    int null_path;                       /* <> */
    int ip_literal;
};

/* Parses an RFC 5321 Reverse-path / Forward-path starting at s (n bytes):
 * "<" [A-d-l ":"] Mailbox ">" or "<>" when allow_null.  A source route is
 * accepted and dropped (RFC 5321 appendix C).  *used gets the bytes
 * consumed.  Returns 0, or one of the ADDR_E* codes. */
#define ADDR_ESYNTAX  (-1)               /* 501 5.1.3 / 553 5.1.3 */
#define ADDR_ELOCAL   (-2)               /* local part too long: 553 5.1.3 */
#define ADDR_EDOMAIN  (-3)               /* domain too long or bad */
#define ADDR_EPATH    (-4)               /* path too long: 501 5.1.3 */
int addr_parse_path(const char *s, size_t n, int allow_null, struct addr *a, size_t *used);
/* Parses a bare "local@domain" (the sendmail command line, alias targets). */
int addr_parse_mailbox(const char *s, struct addr *a);
/* 1 if c may appear in an RFC 5321 atom. */
int addr_is_atext(int c);
/* 1 if d (n bytes) is one RFC 5321 Domain (literal_ok: or an address
 * literal), with nothing before or after it. */
int addr_domain_ok(const char *d, size_t n, int literal_ok);

/* ------------------------------------------------------------------ mime */

/* Streaming SMTP DATA decoder: undoes dot-stuffing and finds the end.
 * RFC 5321 4.1.1.4: only CRLF "." CRLF ends the data; bare CR and bare LF
 * are stored as CRLF, so nothing that a relay further on might take for a
 * line end can end a message early or split it ("SMTP smuggling"). */
struct mime_data {
    int state;
    int line_len;                       /* bytes in the current line */
    int long_line;                      /* a line exceeded SMTP_TEXT_MAX */
    int in_header;                      /* still in the header section */
    int hdr_line_start;
    int received;                       /* Received: headers counted */
    int eightbit;                       /* a byte >= 0x80 was seen */
    int64_t size;                       /* decoded bytes */
    char hdr_name[16];                  /* start of the current header line */
    int hdr_name_len;
};
void mime_data_init(struct mime_data *d);
/* Decodes from in[0..n); writes decoded bytes through emit.  Returns the
 * input bytes consumed; *done is set when CRLF.CRLF was consumed. */
typedef int (*mime_emit_fn)(void *arg, const void *buf, size_t n);
size_t mime_data_feed(struct mime_data *d, const unsigned char *in, size_t n,
                      mime_emit_fn emit, void *arg, int *done);
/* The same scanning (Received count, 8-bit, header end) for bytes that are
 * not dot-stuffed: BDAT chunks and the sendmail command. */
void mime_scan(struct mime_data *d, const unsigned char *buf, size_t n);
/* BDAT chunks: CRLF normalisation and scanning without dot handling;
 * mime_raw_finish completes a CR left at the end of the last chunk. */
int mime_raw_feed(struct mime_data *d, const unsigned char *in, size_t n,
                  mime_emit_fn emit, void *arg);
int mime_raw_finish(struct mime_data *d, mime_emit_fn emit, void *arg);

/* ------------------------------------------------------------------ auth */

int auth_init(const char *keyfile);     /* loads or creates the node key (0600) */
void auth_free(void);
/* Fills u->pwhash (Argon2id) and u->cram (sealed CRAM-MD5 secret). */
int auth_set_password(struct store_user *u, const char *password);
int auth_check_password(const struct store_user *u, const char *password); /* 1 ok */
/* Spends the time of one password verification for a name that does not
 * exist, so that timing does not tell which names do (POP3, IMAP). */
void auth_check_no_user(const char *password);
/* A mailbox login with a password (POP3 USER/PASS, IMAP LOGIN): 1 with *u
 * filled when name exists, the password is right and the account is not
 * backing off (limit.c; its failures are then forgotten); 0 when refused,
 * at the same cost for a name that does not exist (name_ok 0: a name too
 * long to exist); -1 when the store cannot answer. */
int auth_login(const char *name, int name_ok, const char *password, struct store_user *u);
/* After a SASL exchange proved user's password: the same answers. */
int auth_sasl_account(const char *user, struct store_user *u);
/* mech is one of the space-separated names in mechs (auth_mechs). */
int auth_mech_listed(const char *mechs, const char *mech);

enum auth_result { AUTH_OK = 0, AUTH_CONTINUE = 1, AUTH_FAIL = -1, AUTH_BADMECH = -2,
                   AUTH_SYNTAX = -3, AUTH_CANCEL = -4 };
struct auth_sasl {
    int mech;
    int step;
    char user[USER_MAX + 1];
    char challenge[128];
};
/* Starts a SASL exchange (RFC 4954 / RFC 5034): mech is "PLAIN", "LOGIN"
 * or "CRAM-MD5"; initial is the initial response (NULL if none, "=" for
 * empty).  AUTH_CONTINUE: send "334 " + out (base64 text).  AUTH_OK:
 * s->user is authenticated. */
int auth_sasl_start(struct auth_sasl *s, const char *mech, const char *initial,
                    char *out, size_t outlen);
/* The next client line ("*" cancels). */
int auth_sasl_step(struct auth_sasl *s, const char *line, char *out, size_t outlen);
/* The client's side: the PLAIN initial response, and the CRAM-MD5 answer
 * to a base64 challenge, both base64 into out.  0 or -1. */
int auth_client_plain(const char *user, const char *password, char *out, size_t n);
int auth_client_cram(const char *user, const char *password, const char *challenge64, char *out, size_t n);
/* Mechanisms to advertise, e.g. "PLAIN LOGIN CRAM-MD5". */
const char *auth_mechs(int cleartext_ok);

/* ------------------------------------------------------------ mime_words */

/* A header field value with its RFC 2047 encoded words decoded to UTF-8,
 * into out (cap octets with the NUL; cut if longer); the length. */
size_t mime_words_decode(const char *in, size_t n, char *out, size_t cap);
/* UTF-8 text folded to lower case (Latin, Greek, Cyrillic; octets that are
 * not UTF-8 kept), for case-insensitive matching; the length. */
size_t mime_utf8_fold(const char *in, size_t n, char *out, size_t cap);

/* ----------------------------------------------------------------- quota */

struct quota {
    int64_t bytes, msgs;                /* what the mailbox holds */
    int64_t limit;                      /* octets in force, 0 = none */
};
/* The limit in force for a user whose own setting is `own` (-1 = default). */
int64_t quota_limit(int64_t own);
int quota_get(int64_t user_id, struct quota *q);
/* 1 if the mailbox takes `add` more octets (0: just not full), 0 if not,
 * <0 on a store error. */
int quota_room(int64_t user_id, int64_t add);

/* ----------------------------------------------------------------- queue */

/* Routing one recipient address: local mailbox(es) through aliases, a
 * hold domain, or remote.  Fills up to max routes. */
#define QUEUE_EUNKNOWN (-10)            /* no such local user: 550 5.1.1 */
#define QUEUE_ELOOP    (-11)            /* alias loop or too deep: 554 5.4.6 */
#define QUEUE_ETOOMANY (-12)            /* alias expands beyond max */
int queue_route(const struct addr *a, struct store_rcpt *out, size_t max, size_t *n);
/* 1 if mail for the domain is ours to take without relay permission
 * (local or hold domain). */
int queue_domain_accepted(const char *domain);
/* 1 if the authenticated user may use a as reverse-path (sender_login_match). */
int queue_sender_owned(const char *user, const struct addr *a);
int queue_domain_is_local(const char *domain);
/* The node's admin (conf `admin`, else the first user): 0, or
 * STORE_NOTFOUND while there is none and postmaster mail is held in the
 * mailbox QUEUE_HOLDING_BOX. */
#define QUEUE_HOLDING_BOX "postmaster"
int queue_admin(struct store_user *u);
/* Hands the holding mailbox over to the admin once one exists; 1 if it
 * did, 0 if there was nothing to do, <0 on a store error. */
int queue_admin_adopt(void);

/* Delivery (queue_deliver.c): the scheduler.  Retry state is kept per
 * destination (the next hop: the relayhost, or the recipient domain for
 * MX delivery); hold domains wait for ETRN/ATRN. */
int queue_start(void);                  /* daemon start: arm the scheduler */
void queue_stop(void);
void queue_kick(void);                  /* new mail: scan soon */
/* Link came up (netlink, flush): every destination's backoff is reset and
 * a run starts at once.  domain NULL: all. */
void queue_flush(const char *domain);
/* Called when a flush run has attempted every eligible message:
 * summary is a human text, one line per destination; failed is the number
 * of destinations that did not take all their mail. */
typedef void (*queue_flush_done_fn)(void *arg, const char *summary, int failed);
/* Like queue_flush, and calls done when the run is over. */
int queue_flush_wait(const char *domain, queue_flush_done_fn done, void *arg);
void queue_flush_cancel(void *arg);     /* the waiter went away */
/* A client connected (not on loopback): a destination backing off because
 * its address was unreachable is tried again now (RFC 5321 4.5.4.1), once
 * per backoff step. */
void queue_peer_seen(const struct conn *c);
/* RFC 3461 6.2: the "delivered" notice for the local mailboxes among
 * rcpts that asked for it (NOTIFY=SUCCESS); written in the transaction of
 * the message itself. */
void queue_notify_delivered(const struct store_env *env, int64_t body_id, const struct store_rcpt *rcpts,
                            size_t n);

/* On-demand relay, upstream side.  ETRN (RFC 1985): release the mail held
 * for a hold domain over a new connection to the domain's host or MX.
 * Returns the number of messages held (>= 0); *started is 0 when a
 * release for that domain is already running. */
int queue_release(const char *domain, int *started);
/* queue_release refusals besides -1 (not a hold domain): */
#define QUEUE_REL_ATRN_ONLY (-10)       /* an owner and no host: only its owner's ATRN releases it */
#define QUEUE_REL_LOOP (-11)            /* its next hop is this node (RFC 5321 5.1) */
/* ATRN (RFC 2645): the connection c turns around and carries the held
 * mail of the domains; done(arg, delivered, error) runs at its end. */
typedef void (*queue_release_done_fn)(void *arg, int delivered, const char *error);
int queue_release_on(struct conn *c, char domains[][SMTP_DOMAIN_MAX + 1], size_t n,
                     queue_release_done_fn done, void *arg);
/* 1 if a release (ETRN or ATRN) of the domain is running. */
int queue_release_busy(const char *domain);

/* ----------------------------------------------------------------- dns */

/* MX and address lookups inside the event loop: c-ares asks the servers
 * of /etc/resolv.conf or the `resolver` key (UDP, TCP when truncated). */
#define DNS_MAX_HOSTS 10
#define DNS_MAX_ADDRS 4
enum dns_status { DNS_OK = 0, DNS_TEMP = 1, DNS_PERM = 2 };
struct dns_host {
    char name[SMTP_DOMAIN_MAX + 1];
    int pref;
    int naddrs;
    struct sockaddr_storage addrs[DNS_MAX_ADDRS];   /* port 0: the caller sets it */
};
struct dns_result {
    int status;                         /* enum dns_status */
    char error[256];                    /* why, for the log and DSNs */
    int nhosts;
    struct dns_host hosts[DNS_MAX_HOSTS];   /* MX preference order, A/AAAA filled */
};
typedef void (*dns_cb)(void *arg, const struct dns_result *r);
struct dns_query;
int dns_init(void);
void dns_free(void);
const char *dns_library_version(void);
/* RFC 5321 5.1: MX records sorted by preference (random among equals),
 * implicit MX (the domain's own A/AAAA) when there is none, RFC 7505 null
 * MX as DNS_PERM, NXDOMAIN as DNS_PERM, everything else DNS_TEMP.  An
 * address literal ("[192.0.2.1]") or a numeric host answers without the
 * network.  The callback never runs before dns_resolve_* returns: every
 * result, even one known at once, is delivered from the event loop, so
 * the caller can store the handle first; it may call dns_resolve_* and
 * dns_cancel from the callback.  NULL only on no memory.  The handle is
 * dead once the callback has returned or dns_cancel was called. */
struct dns_query *dns_resolve_mx(const char *domain, dns_cb cb, void *arg);
/* A/AAAA of one host (a relayhost name): one dns_host in the result. */
struct dns_query *dns_resolve_host(const char *host, dns_cb cb, void *arg);
void dns_cancel(struct dns_query *q);

/* ----------------------------------------------------------------- dsn */

/* Delivery status notifications (RFC 3464 multipart/report, RFC 3461). */
enum dsn_action { DSN_FAILED = 1, DSN_DELAYED, DSN_DELIVERED, DSN_RELAYED };
struct dsn_rcpt {
    const char *addr;                   /* final recipient */
    const char *orcpt;                  /* "rfc822;..." or NULL */
    int action;                         /* enum dsn_action */
    const char *status;                 /* "5.1.1" */
    const char *remote_mta;             /* host name or NULL */
    const char *diagnostic;             /* the peer's reply, "smtp; 550 ..." or NULL */
    int64_t last_attempt;
    int expired;                        /* failed: queue.lifetime ran out */
};
struct dsn_info {
    const char *qid;                    /* of the original message */
    const char *sender;                 /* original reverse-path (never "") */
    const char *envid;                  /* or NULL */
    int ret_full;                       /* RET=FULL: the whole message, else headers */
    int64_t received;                   /* arrival date */
    int64_t body_id;                    /* the original message text */
    const struct dsn_rcpt *rcpts;
    size_t n;
    /* A double bounce: the report goes to `to` (the postmaster) about a
     * notification (body_id) that could not reach its recipients. */
    int double_bounce;
    const char *to;
};
/* Writes the complete notification message (headers and body, CRLF) into
 * out, an open store body; the caller queues it with a null sender. */
int dsn_write(const struct dsn_info *d, struct store_body *out);
/* Makes d a double bounce: the whole failed notification, to the
 * postmaster (written into to[n]), without the original ENVID. */
void dsn_to_postmaster(struct dsn_info *d, char *to, size_t n);

/* -------------------------------------------------------------- mime7 */

/* RFC 6152 3: 8-bit text to a peer without 8BITMIME is converted to 7 bit:
 * each MIME part with 8-bit content and an identity encoding (7bit, 8bit
 * or none) gets Content-Transfer-Encoding: quoted-printable (text) or
 * base64 (other types); multipart structure is followed through nested
 * boundaries; message/rfc822 parts are converted recursively where
 * possible.  Streaming: any split of the input, bounded memory. */
struct mime7;
struct mime7 *mime7_new(void);
/* Converts in[0..n); output through emit.  0, or -1 when the message
 * cannot be converted (then it must bounce, 5.6.3). */
int mime7_feed(struct mime7 *m, const unsigned char *in, size_t n, mime_emit_fn emit, void *arg);
int mime7_finish(struct mime7 *m, mime_emit_fn emit, void *arg);
void mime7_free(struct mime7 *m);

/* ---------------------------------------------------------------- tls */

/* STARTTLS through OpenSSL (RFC 3207, RFC 2595), when built with
 * MAILNODE_TLS; without it tls_available() is 0 and nothing is offered.
 * After tls_start_* the connection's bytes go through TLS transparently
 * (conn_write, c->in); the caller must drop any plaintext it had buffered
 * (the CVE-2011-0411 class of command injection) and restart the
 * protocol (EHLO again). */
int tls_init(void);                     /* loads tls.cert/tls.key if set */
/* An ECDSA P-256 key and a self-signed certificate for name (tls_cert.c),
 * as PEM text in malloc'd strings; -1 and err when it cannot. */
int tls_selfsigned(const char *name, int days, char **cert_pem, char **key_pem, char *err, size_t errlen);
const char *tls_io_error(void);         /* why tls_init failed */
void tls_free(void);
int tls_available(void);                /* server side: a certificate is loaded */
int tls_start_server(struct conn *c);
/* tls_start_server after a server's go-ahead reply, dropping what came in
 * the clear after the command; aborts c and returns -1 on failure. */
int tls_upgrade_server(struct conn *c, const char *proto);
/* verify: 1 = the peer's certificate must verify for host (system store
 * or tls.ca_file), else the handshake fails. */
int tls_start_client(struct conn *c, const char *host, int verify);
int tls_active(const struct conn *c);
int tls_io_handshaking(const struct conn *c);  /* a handshake is under way */
/* The TLS record layer under a connection, for the loop.  c->tls is set by
 * tls_start_server/tls_start_client; from then on the loop moves the
 * connection's bytes through these instead of recv()/send().  read and
 * write answer like recv() and send() (errno EAGAIN: OpenSSL waits for the
 * socket).  While the handshake runs, read_wants_out says whether it waits
 * for the socket to be writable (else readable). */
size_t tls_io_plain(const struct conn *c);      /* cleartext bytes due before the handshake */
void tls_io_plain_sent(struct conn *c, size_t n);
int tls_io_handshake(struct conn *c);           /* 1 done, 0 waiting, -1 failed */
ssize_t tls_io_read(struct conn *c, void *buf, size_t n);
ssize_t tls_io_write(struct conn *c, const void *buf, size_t n);
int tls_io_pending(const struct conn *c);       /* decrypted bytes not yet read */
int tls_io_read_wants_out(const struct conn *c);
int tls_io_write_wants_in(const struct conn *c);
const char *tls_io_error(void);                 /* why tls_init failed */
/* Called by the loop: the handshake finished (err 0) or failed. */
void tls_handshake_done(struct conn *c, int err);
/* Called by conn_abort: frees the connection's TLS state. */
void tls_conn_free(struct conn *c);

/* What both TLS backends (tls.c through OpenSSL, tls_mbedtls.c) keep of a
 * connection, first in their struct tls_conn, so that the loop's side of
 * the record layer, the name checks and the log lines are written once
 * (in tls.c) and c->tls can be read as one. */
struct tls_state {
    /* Bytes at the head of c->out that precede the switch (the 220 or
     * +OK that announced it): they go out in the clear, the handshake
     * starts after them. */
    size_t plain;
    unsigned server : 1;
    unsigned handshaking : 1;
    unsigned established : 1;
    unsigned failed : 1;
    unsigned hs_wants_out : 1;          /* the handshake waits for writable */
    unsigned read_wants_out : 1;        /* a read waits for writable */
    unsigned write_wants_in : 1;        /* a write waits for readable */
    unsigned verify : 1;                /* client: the certificate must verify */
    char host[SMTP_DOMAIN_MAX + 1];     /* client: the name checked */
    char error[200];
};
#ifdef MAILNODE_TLS
void tls_ignore_sigpipe(void);
/* The plain reason (missing, permissions) before the library's vaguer one. */
int tls_readable_file(const char *key, const char *path, char *err, size_t errlen);
/* c speaks TLS from now on; what came in the clear after the command goes. */
void tls_switch(struct conn *c, struct tls_state *t);
int tls_is_ip(const char *host);
/* host ("mx.example.", "[192.0.2.1]", "[IPv6:2001:db8::1]") as a
 * certificate names it: no brackets, no tag, no trailing dot. */
void tls_cert_name(const char *host, char *name, size_t n);
/* The backend's log line for a finished handshake: version, cipher and,
 * for a client, how the server's certificate verified. */
void tls_log_established(const struct conn *c);
#endif

/* ---------------------------------------------------------------- ctl */

/* The control socket (conf->control, mode 0600): `mailnode flush` and
 * queue commands reach the running daemon through it. */
int ctl_start(void);
void ctl_stop(void);
/* A command-line tool's connection to the running daemon, or -1 (errno)
 * when there is none. */
void ctl_tell_queued(const char *qid);   /* sendmail -> daemon: the accepted log line */
int ctl_connect(void);
/* Link watching (netlink on Linux): calls queue_flush(NULL) and poll_kick() when a link,
 * address or route appears. */
int link_watch_start(void);
void link_watch_stop(void);

/* --------------------------------------------------------------- smtpc */

/* One outbound SMTP session carrying a batch for one destination: EHLO
 * (HELO fallback), AUTH, then MAIL/RCPT/BDAT pipelined across messages
 * when the peer offers PIPELINING and CHUNKING, DATA otherwise. */
struct smtpc;
struct smtpc_ops {
    /* The next message to send: 1 and *m filled (the session frees it
     * with store_out_free), or 0 when the batch is over. */
    int (*next)(void *arg, struct store_out_msg *m);
    /* The outcome of one recipient: code 250 (delivered), 4xx (deferred)
     * or 5xx (failed); text is the peer's reply or ours, one line. */
    void (*rcpt_done)(void *arg, const struct store_out_msg *m, int idx, int code, const char *text);
    /* Every recipient of m has its outcome. */
    void (*msg_done)(void *arg, const struct store_out_msg *m);
    /* The session is over.  reached: the peer greeted us and spoke SMTP
     * (SMTPC_LOOP: it greeted with our own name, so it is this node);
     * error: why it ended early, or NULL after a clean QUIT. */
    void (*done)(void *arg, int reached, const char *error);
};
#define SMTPC_LOOP (-1)
struct smtpc_auth {
    const char *user, *password;        /* NULL: no AUTH */
};
enum { SMTPC_TLS_MAY = 0, SMTPC_TLS_REQUIRE, SMTPC_TLS_NONE };
int smtpc_tls_policy(const char *setting);      /* "may", "require", "none" */
struct smtpc *smtpc_start(const struct sockaddr_storage *ss, socklen_t len, const char *peer_name,
                          const struct smtpc_ops *ops, void *arg, const struct smtpc_auth *auth,
                          int tls_policy);
/* The same over a connection that is already open (ATRN turnaround):
 * the peer's 220 greeting comes first. */
struct smtpc *smtpc_attach(struct conn *c, const char *peer_name, const struct smtpc_ops *ops, void *arg);
/* 1 if the peer offered DSN (RFC 3461): it takes NOTIFY and reports itself. */
int smtpc_peer_dsn(const struct smtpc *s);
/* The destination the session serves (dest row name, or the domain of
 * an ATRN release): selects per-destination settings (pacing.rate). */
void smtpc_set_dest(struct smtpc *s, const char *dest);
/* Ends the session at once; done is not called. */
void smtpc_abort(struct smtpc *s);

/* What every SMTP client of this node shares (delivery sessions here and
 * the upstream exchange in poll.c), so that the two cannot drift apart. */
struct smtpc_caps {                     /* what the peer's EHLO offered */
    int pipelining, chunking, eightbitmime, dsn, starttls, atrn;
    int compress;                       /* COMPRESS DEFLATE (zio.c): another mailnode */
    int resume;                         /* XRESUME (resume.c): another mailnode */
    int has_size;
    int64_t size_limit;                 /* 0: no limit announced */
    char auth_mechs[128];
};
/* One EHLO keyword line (the text after "250-" or "250 "). */
void smtpc_caps_keyword(struct smtpc_caps *caps, const char *kw);
/* 1 if the peer offered SASL mechanism mech. */
int smtpc_caps_mech(const struct smtpc_caps *caps, const char *mech);
/* The AUTH mechanism to use with this peer on c: CRAM-MD5 when offered,
 * else PLAIN when offered and the password may travel (under TLS, to this
 * host, or allow_cleartext_auth), else none. */
enum { SMTPC_AUTH_NONE, SMTPC_AUTH_CRAM, SMTPC_AUTH_PLAIN };
int smtpc_auth_choose(const struct smtpc_caps *caps, const struct conn *c);
/* Takes one reply line off c's input.  1: *code, *last (no continuation)
 * and line (CR LF removed, control characters blanked, cut to n - 1);
 * 0: no whole line yet; SMTPC_ELONG: a line longer than the input buffer;
 * SMTPC_EMALFORMED: not a reply line (RFC 5321 4.2). */
#define SMTPC_ELONG      (-1)
#define SMTPC_EMALFORMED (-2)
int smtpc_reply_line(struct conn *c, int *code, int *last, char *line, size_t n);

/* ---------------------------------------------------------------- limit */

/* Per-address limits for clients outside relay_networks (limit.c). */
/* One failure counter per client address and one per account, shared by
 * every protocol that checks passwords (SMTP AUTH, POP3, IMAP). */
void limit_auth_failed(const struct conn *c, const char *user);
void limit_auth_ok(const char *user);
/* 1 if the address has too many recent failures (never for relay_networks). */
int limit_auth_blocked(const struct conn *c);
/* Seconds until the account takes another login attempt (0: now). */
int64_t limit_account_wait(const char *user);
int limit_message_ok(const struct conn *c);
/* current: the address's connections including this one. */
/* NULL if a new connection from peer on a listener of kind may have a
 * slot, else why not (loop.c asks before it makes a connection). */
const char *limit_admit(int kind, const struct sockaddr_storage *peer, int total, int on_listener, int same);

/* ----------------------------------------------------------------- odmr */

/* ETRN (RFC 1985): starts the release and writes the one-line reply. */
void odmr_etrn(const char *arg, char *reply, size_t n);
/* ATRN (RFC 2645): decides a request of user; on 250, domains holds the
 * n domains to release.  The reply line is written either way. */
int odmr_atrn_check(const char *user, const char *arg, char domains[][SMTP_DOMAIN_MAX + 1], size_t max,
                    size_t *n, char *reply, size_t rn);

/* ----------------------------------------------------------------- poll */

/* The field node's upstream exchange (poll.c): push our queue, then ETRN
 * or ATRN.  done gets a summary and a sysexits code. */
typedef void (*poll_done_fn)(void *arg, const char *summary, int exitcode);
int poll_start(void);                   /* daemon: interval timer */
void poll_stop(void);
void poll_kick(void);                   /* link up, interval, flush */
int poll_run(poll_done_fn done, void *arg);
void poll_cancel(void *arg);            /* a waiter went away */
int poll_password(char *buf, size_t n); /* upstream.password_file, one line */

/* ---------------------------------------------------------------- smtpd */

void smtpd_accept(struct conn *c);
/* ATRN client turnaround: serve SMTP on an open connection (greeting
 * first); done(arg, messages accepted, error or NULL) when it ends. */
int smtpd_attach(struct conn *c, void (*done)(void *arg, int accepted, const char *error), void *arg);
int smtpd_busy(void);                   /* sessions inside a mail transaction */
/* `sendmail -bs`: serve SMTP on c for the local user, who counts as
 * authenticated; done as for smtpd_attach. */
int smtpd_local(struct conn *c, const char *user, void (*done)(void *arg, int accepted, const char *error),
                void *arg);

/* ----------------------------------------------------------------- pop3 */

void pop3_accept(struct conn *c);

/* ---------------------------------------------------------------- bundle */

/* Offline bundles between mailnodes (bundle.c; docs/bundle-format.md). */
#define BUNDLE_VERSION     1
#define BUNDLE_KIND_MAIL   1
#define BUNDLE_KIND_RECEIPT 2
#define BUNDLE_KEY_PREFIX  "mnb1"
#define BUNDLE_HDR_SIGNED  208          /* header bytes covered by the signature */
#define BUNDLE_HDR_LEN     (BUNDLE_HDR_SIGNED + 64)
#define BUNDLE_FRAME_MAX   65536        /* plaintext bytes per frame */
#define BUNDLE_DATA_MAX    65536        /* body bytes per DATA record */
#define BUNDLE_RECORD_MAX  (256 * 1024) /* any record (an envelope) */
#define BUNDLE_RCPTS_MAX   1000
#define BUNDLE_ID_LEN      16
/* Record types (the plaintext of a volume is a sequence of them). */
enum { BUNDLE_REC_ENV = 1, BUNDLE_REC_DATA = 2, BUNDLE_REC_END = 3, BUNDLE_REC_ACK = 4,
       BUNDLE_REC_FIN = 5 };
/* Errors of the format layer. */
enum { BUNDLE_ENOTBUNDLE = -20, BUNDLE_EVERSION = -21, BUNDLE_EFORMAT = -22, BUNDLE_ESIG = -23,
       BUNDLE_EKEY = -24, BUNDLE_ECRYPT = -25, BUNDLE_ETRUNC = -26, BUNDLE_ETRAIL = -27,
       BUNDLE_EZLIB = -28, BUNDLE_ERECORD = -29, BUNDLE_EIO = -30, BUNDLE_ENOMEM = -31 };
const char *bundle_strerror(int e);

struct bundle_keys {
    unsigned char sign_pk[crypto_sign_PUBLICKEYBYTES], sign_sk[crypto_sign_SECRETKEYBYTES];
    unsigned char box_pk[crypto_box_PUBLICKEYBYTES], box_sk[crypto_box_SECRETKEYBYTES];
};
/* Loads (or with create, makes) the node's bundle key pair file. */
int bundle_keys_load(const char *path, struct bundle_keys *k, int create, char *err, size_t errlen);
/* "mnb1 BASE64 [comment]": the public keys as one line, and back. */
void bundle_key_line(const unsigned char sign_pk[32], const unsigned char box_pk[32],
                     const char *comment, char *out, size_t n);
int bundle_key_parse(const char *line, unsigned char sign_pk[32], unsigned char box_pk[32]);

struct bundle_header {
    int kind;
    int64_t created;
    unsigned char bundle_id[16];
    uint32_t volume;
    unsigned char sender_sign_pk[32], recipient_box_pk[32];
    unsigned char sealed_key[crypto_box_SEALBYTES + 32];
    unsigned char ss_header[crypto_secretstream_xchacha20poly1305_HEADERBYTES];
    unsigned char signature[crypto_sign_BYTES];
};
void bundle_header_encode(const struct bundle_header *h, unsigned char out[BUNDLE_HDR_SIGNED]);
int bundle_header_decode(const unsigned char *in, size_t n, struct bundle_header *h);

struct bundle_writer;
struct bundle_writer *bundle_writer_open(int fd, const struct bundle_keys *me, const unsigned char peer_box_pk[32],
                                         int kind, const unsigned char bundle_id[16], uint32_t volume);
int bundle_write_record(struct bundle_writer *w, int type, const void *payload, size_t n);
int64_t bundle_bound(int64_t raw);      /* most file bytes raw record bytes can add */
int64_t bundle_writer_size(struct bundle_writer *w);   /* upper bound of the final size so far */
int bundle_writer_sync(struct bundle_writer *w);       /* makes the size exact (Z_SYNC_FLUSH) */
int bundle_writer_finish(struct bundle_writer *w);     /* FIN record and the final frame */
int64_t bundle_writer_bytes(const struct bundle_writer *w);
void bundle_writer_free(struct bundle_writer *w);

typedef ssize_t (*bundle_read_fn)(void *arg, void *buf, size_t n);
/* Reads and decodes the header (raw keeps its bytes for the signature). */
int bundle_reader_header(bundle_read_fn fn, void *arg, struct bundle_header *h,
                         unsigned char raw[BUNDLE_HDR_LEN]);
int bundle_header_verify(const unsigned char raw[BUNDLE_HDR_LEN], const unsigned char sign_pk[32]);
struct bundle_reader;
struct bundle_reader *bundle_reader_open(bundle_read_fn fn, void *arg, const struct bundle_header *h,
                                         const struct bundle_keys *me, int *err);
/* The next record: 0 and *type/payload/n (valid until the next call), 1
 * after FIN, or a BUNDLE_E* error.  FIN is returned only when the record
 * count agrees and nothing follows it. */
int bundle_read_record(struct bundle_reader *r, int *type, const unsigned char **payload, size_t *n);
void bundle_reader_free(struct bundle_reader *r);

struct bundle_env_rcpt {
    char addr[ADDR_MAX];
    char orcpt[ADDR_MAX + 8];            /* as in SMTP: type ";" xtext */
    int notify;
};
struct bundle_env {
    char qid[QID_LEN + 1];              /* the exporting node's queue id */
    int64_t received, size;
    char sender[ADDR_MAX];
    char envid[101];
    int ret_full, eightbit, have_mail;
    int nrcpt;
    struct bundle_env_rcpt rcpts[BUNDLE_RCPTS_MAX];     /* last: parse clears only what is before */
};
int bundle_env_format(const struct store_out_msg *m, char *out, size_t n, size_t *len);
int bundle_env_parse(const unsigned char *p, size_t n, struct bundle_env *e);

struct bundle_msgid {
    char line[1000];
    size_t len;
    int bol, done, found;
    char id[256];
};
void bundle_msgid_init(struct bundle_msgid *m);
void bundle_msgid_feed(struct bundle_msgid *m, const void *buf, size_t n);
void bundle_msgid_finish(struct bundle_msgid *m);
void bundle_identity(char kind, const void *a, size_t alen, const char *b, const char *rcpt,
                     unsigned char out[BUNDLE_ID_LEN]);
void bundle_hex(const unsigned char *p, size_t n, char *out);
/* SMTP-received mail: drops the recipients already delivered by bundle
 * (by Message-ID) and remembers the rest, when the node has peers. */
int bundle_dedup(struct store_body *b, struct store_rcpt *rcpts, size_t *n, const char *qid);

/* store_bundle.c: peers, mail in transit, identities seen, volumes imported. */
struct store_peer {
    int64_t id;
    char name[64];
    unsigned char sign_pk[32], box_pk[32];
    char domains[1024];                 /* comma separated; "" = our upstream: all remote mail */
    int64_t added;
};
int store_peer_add(const struct store_peer *p);         /* STORE_EXISTS */
int store_peer_get(const char *name, struct store_peer *p);
int store_peer_by_key(const unsigned char sign_pk[32], struct store_peer *p);
int store_peer_del(const char *name);
int store_peer_list(int (*cb)(void *arg, const struct store_peer *p), void *arg);
int store_peer_any(void);                               /* 1 if a peer exists */
/* Messages with queued recipients for the peer (after_id, id order),
 * skipping recipients in transit since after `resend_before`; *m as
 * store_out_next fills it.  1 found, 0 none. */
int store_bundle_next(const struct store_peer *p, int64_t after_id, int64_t resend_before,
                      struct store_out_msg *m);
int store_bundle_transit(int64_t rcpt_id, int64_t peer_id, const unsigned char bundle_id[16], int64_t now);
/* A receipt: the peer's in-transit recipients of message qid are
 * delivered.  Returns recipients acknowledged (>= 0). */
int store_bundle_ack(int64_t peer_id, const char *qid);
int store_seen_check(const unsigned char key[BUNDLE_ID_LEN]);   /* 1 seen */
int store_seen_add(const unsigned char key[BUNDLE_ID_LEN], int64_t now);
int store_seen_prune(int64_t before);
int store_volume_seen(const unsigned char bundle_id[16], uint32_t volume);  /* 1 imported */
int store_volume_add(const unsigned char bundle_id[16], uint32_t volume, int64_t peer_id, int64_t now);
/* ----------------------------------------------------------------- imap */

/* The IMAP4rev1 server (RFC 3501) and its extensions: imap.c (session,
 * commands), imap_fetch.c (FETCH, STORE), imap_search.c (SEARCH, sets),
 * imap_mime.c (structure of a message), store_imap.c (SQL). */
void imap_accept(struct conn *c);
int imap_start(void);                   /* daemon: the change watch for IDLE */
void imap_stop(void);

/* A growing string with a hard cap, for responses built in memory. */
#define IMAP_SB_MAX (4 * 1024 * 1024)
struct imap_sb {
    char *s;
    size_t len, cap;
    int err;                            /* out of memory or over the cap */
};
void imap_sb_add(struct imap_sb *b, const void *p, size_t n);
void imap_sb_str(struct imap_sb *b, const char *s);
void imap_sb_printf(struct imap_sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void imap_sb_string(struct imap_sb *b, const char *s, size_t n);  /* quoted or literal */
void imap_sb_nstring(struct imap_sb *b, const char *s);           /* NULL: NIL */
void imap_sb_free(struct imap_sb *b);

struct imap_mime;
struct imap_mime *imap_mime_new(void);
int imap_mime_feed(struct imap_mime *m, const unsigned char *p, size_t n);
int imap_mime_finish(struct imap_mime *m, struct store_imap_cache *out);
void imap_mime_free(struct imap_mime *m);
int imap_mime_param(const char *v, const char *name, char *out, size_t n);
int imap_mime_compute(int64_t body_id, struct store_imap_cache *c);
/* The cache entry of a body, computed now if it has none yet. */
int imap_cache_load(int64_t body_id, struct store_imap_cache *c);
int imap_month(const char *s);          /* "Jan".."Dec" -> 1..12, else 0 */
int64_t imap_date_days(const char *v);  /* RFC 5322 date -> days since the epoch */
int64_t imap_days_of(int64_t t);        /* local date of a time, in days */

/* What the IMAP modules share of a session. */
#define IMAP_TAG_MAX 64
enum imap_state { IMAP_NOTAUTH = 1, IMAP_AUTH = 2, IMAP_SELECTED = 4, IMAP_LOGOUT = 8 };
enum imap_busy { IMAP_IDLE_NONE, IMAP_BUSY_DELAY, IMAP_BUSY_STREAM, IMAP_BUSY_COMMIT, IMAP_BUSY_TLS,
                 IMAP_BUSY_IDLE };
struct imap_view {                      /* the selected folder as this session knows it */
    struct store_folder f;
    uint32_t *uids;                     /* message sequence number n is uids[n - 1] */
    size_t n, cap;
    int readonly;
    int64_t modseq;                     /* folder changes seen up to here */
    int64_t recent_from;                /* uids from here on are \Recent for us */
};
/* A parser over a complete command, literals inline ("{N}" CRLF data). */
struct imap_p {
    const char *s;
    size_t n, i;
};
struct imap {
    struct conn *c;
    struct imap *next, *prev;           /* every session, for IDLE and limits */
    unsigned state;                     /* enum imap_state */
    int busy;                           /* enum imap_busy */
    char tag[IMAP_TAG_MAX + 1];
    struct imap_sb cmd;                 /* the command being read */
    int lit_mode;                       /* literal octets go to: cmd, APPEND, nowhere */
    int64_t lit_left;
    int append_tail;                    /* APPEND's message is in: its line end next */
    char lit_reply[128];                /* the reply once a refused literal was skipped */
    int skipping;                       /* discarding to the end of a refused command */
    int failures;
    struct timer delay;
    int in_sasl;
    struct auth_sasl sasl;
    char mech[16];
    int64_t user_id;
    char user[USER_MAX + 1];
    struct imap_view v;
    struct imap_sb pend;                /* output waiting for room in the connection */
    size_t pend_off;
    int (*pump)(struct imap *s);        /* a streaming reply: 1 done, 0 later, -1 gone */
    void (*job_free)(struct imap *s);
    void *job;
    struct store_body *ab;              /* APPEND: the message being received */
    int64_t akey, adate;
    unsigned aflags;
    char akw[IMAP_KEYWORDS_MAX + 1];
    int64_t auidvalidity;
    struct imap_sb after_commit;        /* the tagged reply due after the commit */
    int condstore;                      /* RFC 7162 3.1: CONDSTORE is enabled */
};
/* imap.c */
void imap_out(struct imap *s, const void *p, size_t n);
void imap_outf(struct imap *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void imap_tagged(struct imap *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The tagged reply waits until this turn's writes are durable. */
void imap_reply_after_commit(struct imap *s, const char *text);
void imap_start_job(struct imap *s, int (*pump)(struct imap *), void (*job_free)(struct imap *), void *job);
int imap_p_sp(struct imap_p *p);
int imap_p_end(struct imap_p *p);       /* only the end is left */
int imap_p_atom(struct imap_p *p, char *out, size_t n);
/* astring/string/nstring into out (a literal may hold NULs: *len). */
int imap_p_astring(struct imap_p *p, char *out, size_t n, size_t *len);
int imap_p_number(struct imap_p *p, int64_t *v);
/* A flag list "(\Seen kw ...)" or one flag; keywords space separated. */
int imap_p_flags(struct imap_p *p, unsigned *flags, char *kw, size_t kwn, int paren_optional);
void imap_flags_fmt(struct imap_sb *b, unsigned flags, const char *kw, int recent);
/* Brings the view up to date: EXISTS, RECENT, flag changes, and EXPUNGE
 * when allowed (RFC 3501 7.4.1: not during FETCH, STORE, SEARCH). */
int imap_sync(struct imap *s, int expunge_ok);
int imap_is_recent(const struct imap *s, int64_t uid);
/* Folder by its IMAP name (INBOX in any case). */
int imap_folder_get(struct imap *s, const char *name, struct store_folder *f);
/* imap_search.c: sequence sets resolved against the view. */
struct imap_set {
    uint32_t (*r)[2];
    size_t n;
};
int imap_p_set(struct imap_p *p, struct imap_set *set);
void imap_set_free(struct imap_set *set);
int imap_set_has(const struct imap_set *set, uint32_t v, uint32_t star);
/* The view indexes a set names, by sequence number or by UID, ascending. */
int imap_set_resolve(const struct imap *s, const struct imap_set *set, int uid, size_t **idx, size_t *n);
void imap_cmd_search(struct imap *s, struct imap_p *p, int uid);
/* imap_mbox.c */
void imap_cmd_select(struct imap *s, struct imap_p *p, int readonly);
void imap_cmd_close(struct imap *s, struct imap_p *p, int expunge);
void imap_cmd_expunge(struct imap *s, struct imap_p *p, int uid);
void imap_cmd_list(struct imap *s, struct imap_p *p, int lsub);
void imap_cmd_create(struct imap *s, struct imap_p *p);
void imap_cmd_delete(struct imap *s, struct imap_p *p);
void imap_cmd_rename(struct imap *s, struct imap_p *p);
void imap_cmd_subscribe(struct imap *s, struct imap_p *p, int on);
void imap_cmd_status(struct imap *s, struct imap_p *p);
void imap_cmd_getquota(struct imap *s, struct imap_p *p);
void imap_cmd_getquotaroot(struct imap *s, struct imap_p *p);
void imap_cmd_setquota(struct imap *s, struct imap_p *p);
int imap_append_begin(struct imap *s, struct imap_p *p, int64_t size, char *reply, size_t rn);
void imap_append_end(struct imap *s);
void imap_view_free(struct imap *s);
/* imap_fetch.c */
void imap_cmd_fetch(struct imap *s, struct imap_p *p, int uid);
void imap_cmd_store(struct imap *s, struct imap_p *p, int uid);
void imap_cmd_copy(struct imap *s, struct imap_p *p, int uid, int move);

/* ------------------------------------------------------------------- cli */

int cli_run(int argc, char **argv);             /* mailnode run */
int cli_sendmail(int argc, char **argv);        /* mailnode sendmail / sendmail */
int cli_queue(int argc, char **argv);
int cli_user(int argc, char **argv);
int cli_domain(int argc, char **argv);
int cli_alias(int argc, char **argv);
int cli_mailbox(int argc, char **argv);
int cli_status(int argc, char **argv);
int cli_flush(int argc, char **argv);           /* mailnode flush [--wait] [DOMAIN] */
int cli_poll(int argc, char **argv);            /* mailnode poll */
int cli_backup(int argc, char **argv);          /* mailnode backup FILE */
int cli_restore(int argc, char **argv);         /* mailnode restore FILE */
int cli_tls(int argc, char **argv);             /* mailnode tls selfsigned */
int cli_key(int argc, char **argv);             /* mailnode key show */
int cli_peer(int argc, char **argv);            /* mailnode peer add|list|del */
int cli_bundle(int argc, char **argv);          /* mailnode bundle export|import */
int cli_bundle_import(int argc, char **argv);   /* bundle_import.c */
int cli_bundle_keys(struct bundle_keys *k, int create);   /* loads bundle.key or says why not */
/* Opens the configured database for a command-line tool; prints an error
 * naming the file and returns a sysexits code on failure. */
int cli_open_store(void);
/* For commands that only read: the database must exist already. */
int cli_open_store_ro(void);
int cli_config(int argc, char **argv);
int cli_sendmail_mode(int mode);        /* 'p' mailq, 'q' sendmail -q, 'i' newaliases */
int cli_sendmail_bs(void);              /* sendmail -bs: SMTP on stdin/stdout (cli_bs.c) */
int cli_db_diagnose(const char *path, char *why, size_t n);
void cli_db_chown(void);
int cli_db_lock(void);                  /* fd, or minus a sysexits code */
void cli_db_lock_note(int fd);          /* pid, start, version, listeners */
int cli_db_daemon(char *buf, size_t n); /* 1 running (buf: its note), 0 not, -1 unknown */

#endif
