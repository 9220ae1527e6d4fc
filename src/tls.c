/*
 * tls.c: STARTTLS (RFC 3207) and STLS (RFC 2595) through OpenSSL.
 *
 * A connection that switches to TLS keeps its fixed buffers and its
 * callbacks; only the record layer under them changes.  c->tls points to a
 * struct tls_conn of this file.  The event loop drives everything: the
 * cleartext reply announcing the switch goes out first, then the handshake
 * runs on readiness events (tls_io_handshake), then conn_readable and
 * conn_flush move application data through tls_io_read/tls_io_write, which
 * answer like recv()/send() with errno EAGAIN when OpenSSL needs the socket
 * readable or writable, and record which, so that the loop registers the
 * right epoll events.
 *
 * Built with MAILNODE_TLS_MBEDTLS (make TLS=mbedtls), tls_mbedtls.c has
 * the library's part instead, through mbedTLS.  What does not depend on
 * the library (the loop's view of a connection, struct tls_state, the
 * name a certificate is checked for, the log line of a failed handshake)
 * is here once, for both.
 * Built without MAILNODE_TLS (make TLS=none), the same functions report
 * that TLS is not available: no STARTTLS is offered, and a client that
 * requires TLS keeps its mail queued.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>

/* After the go-ahead to STARTTLS/STLS: RFC 3207 4, RFC 2595 4, RFC 3501
 * 6.2.1 and CVE-2011-0411: what the client sent after the command came in
 * the clear and is no command; it is dropped, never answered inside TLS.
 * On failure the connection is aborted and -1 returned. */
int tls_upgrade_server(struct conn *c, const char *proto)
{
    conn_consume(c, c->in_len);
    if (!tls_start_server(c))
        return 0;
    log_err("%s: %s: cannot start TLS", proto, c->peer_ip);
    conn_abort(c);
    return -1;
}

#ifdef MAILNODE_TLS

/* ------------------------------------------- both backends: the loop side */

/* The socket is written with write(2) (OpenSSL's BIO) or send(2): a peer
 * that reset the connection would raise SIGPIPE, which must not end the
 * daemon (or `mailnode poll`). */
void tls_ignore_sigpipe(void)
{
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
        sa.sa_handler = SIG_IGN;
        sigaction(SIGPIPE, &sa, NULL);
    }
}

int tls_readable_file(const char *key, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s %s: %s", key, path, strerror(errno));
        return -1;
    }
    fclose(f);
    return 0;
}

/* The switch itself: from now on the loop speaks TLS on c.  Plaintext
 * received after the command is dropped here as well as by the caller:
 * it was sent before the handshake, so nothing vouches for it (the
 * CVE-2011-0411 command injection; on the client side, injected replies).
 * conn_consume also makes the loop register the handshake's events. */
void tls_switch(struct conn *c, struct tls_state *t)
{
    c->tls = t;
    conn_consume(c, c->in_len);
}

int tls_is_ip(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* "[192.0.2.1]" address literals are checked as addresses; a trailing
 * dot is not part of the name in a certificate. */
void tls_cert_name(const char *host, char *name, size_t n)
{
    size_t len;

    if (!host)
        host = "";
    if (host[0] == '[') {
        host++;
        if (!strncasecmp(host, "IPv6:", 5))
            host += 5;
    }
    util_strlcpy(name, host, n);
    len = strcspn(name, "]");
    name[len] = 0;
    if (len && name[len - 1] == '.')
        name[--len] = 0;
}

int tls_active(const struct conn *c)
{
    const struct tls_state *t = c->tls;
    return t && t->established && !t->failed;
}

int tls_io_handshaking(const struct conn *c)
{
    const struct tls_state *t = c->tls;
    return t && t->handshaking;
}

size_t tls_io_plain(const struct conn *c)
{
    const struct tls_state *t = c->tls;
    return t ? t->plain : 0;
}

void tls_io_plain_sent(struct conn *c, size_t n)
{
    struct tls_state *t = c->tls;
    t->plain = n < t->plain ? t->plain - n : 0;
}

int tls_io_read_wants_out(const struct conn *c)
{
    const struct tls_state *t = c->tls;
    return t ? (t->handshaking ? t->hs_wants_out : t->read_wants_out) : 0;
}

int tls_io_write_wants_in(const struct conn *c)
{
    const struct tls_state *t = c->tls;
    return t ? (t->handshaking ? !t->hs_wants_out : t->write_wants_in) : 0;
}

void tls_handshake_done(struct conn *c, int err)
{
    const struct tls_state *t = c->tls;

    if (!err && t)
        tls_log_established(c);
    else
        log_warn("tls: handshake with %s%s%s%s failed: %s", t && !t->server ? "server " : "client ",
                 t && t->host[0] ? t->host : "", t && t->host[0] ? " " : "", c->peer_ip,
                 t && t->error[0] ? t->error : "unknown error");
    if (c->ops && c->ops->on_tls)
        c->ops->on_tls(c, err ? -1 : 0);
}

#endif /* MAILNODE_TLS */

#if defined(MAILNODE_TLS) && !defined(MAILNODE_TLS_MBEDTLS)

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct tls_conn {
    struct tls_state s;                 /* first: c->tls is read as one */
    SSL *ssl;
};

static struct {
    int inited;
    SSL_CTX *server;                    /* NULL: no certificate, nothing offered */
    SSL_CTX *client;
    int client_failed;                  /* tls.ca_file could not be loaded */
    char error[512];                    /* why tls_init failed */
} T;

/* The first queued OpenSSL error as text, the queue cleared. */
static void tls_ssl_error(char *buf, size_t n, const char *fallback)
{
    unsigned long e = ERR_peek_last_error();
    if (e) {
        const char *reason = ERR_reason_error_string(e);
        if (reason)
            snprintf(buf, n, "%s", reason);
        else
            ERR_error_string_n(e, buf, n);
    } else {
        snprintf(buf, n, "%s", fallback);
    }
    ERR_clear_error();
}

/* Settings both sides share. */
static int tls_ctx_common(SSL_CTX *ctx)
{
    /* TLS 1.0 and 1.1 are deprecated (RFC 8996). */
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION))
        return -1;
    /* Renegotiation is an old source of trouble (CVE-2009-3555, CPU
     * exhaustion) and no mail client needs it.  A peer that closes the
     * TCP connection without close_notify is an EOF, not an error: SMTP
     * and POP3 end their data with their own terminators. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 SSL_OP_NO_COMPRESSION);
    /* The loop's output buffer moves (memmove after each record) and may
     * grow between retries; one record at a time may go out; idle
     * connections give their 34 KB of record buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    return 0;
}

static int tls_server_ctx(void)
{
    const char *cert = conf->tls_cert, *key = conf->tls_key;
    char why[256];

    if (!cert || !*cert)
        return 0;
    if (!key || !*key)
        key = cert;                     /* one PEM file holding both */
    T.server = SSL_CTX_new(TLS_server_method());
    if (!T.server || tls_ctx_common(T.server)) {
        tls_ssl_error(why, sizeof why, "out of memory");
        snprintf(T.error, sizeof T.error, "TLS server setup failed: %s", why);
        goto fail;
    }
    if (tls_readable_file("tls.cert", cert, T.error, sizeof T.error) ||
        tls_readable_file("tls.key", key, T.error, sizeof T.error))
        goto fail;
    if (SSL_CTX_use_certificate_chain_file(T.server, cert) != 1) {
        tls_ssl_error(why, sizeof why, "unreadable");
        snprintf(T.error, sizeof T.error,
                 "tls.cert %s: cannot load the certificate chain (%s); it must be PEM, "
                 "the server certificate first", cert, why);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(T.server, key, SSL_FILETYPE_PEM) != 1) {
        int mismatch = ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH;
        tls_ssl_error(why, sizeof why, "unreadable");
        if (mismatch)
            snprintf(T.error, sizeof T.error, "tls.key %s does not match the certificate in tls.cert %s",
                     key, cert);
        else
            snprintf(T.error, sizeof T.error, "tls.key %s: cannot load the private key (%s); it must "
                     "be PEM without a passphrase", key, why);
        goto fail;
    }
    if (SSL_CTX_check_private_key(T.server) != 1) {
        tls_ssl_error(why, sizeof why, "mismatch");
        snprintf(T.error, sizeof T.error, "tls.key %s does not match the certificate in tls.cert %s (%s)",
                 key, cert, why);
        goto fail;
    }
    /* One process, no session cache to share, and tickets cost bytes on
     * slow links for resumptions that mail clients rarely make. */
    SSL_CTX_set_session_cache_mode(T.server, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(T.server, 0);
    SSL_CTX_set_options(T.server, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET);
    SSL_CTX_set_dh_auto(T.server, 1);
    return 0;
fail:
    SSL_CTX_free(T.server);
    T.server = NULL;
    return -1;
}

static int tls_client_ctx(void)
{
    const char *ca = conf->tls_ca_file;
    char why[256];

    if (T.client)
        return 0;
    if (T.client_failed)
        return -1;
    T.client = SSL_CTX_new(TLS_client_method());
    if (!T.client || tls_ctx_common(T.client)) {
        tls_ssl_error(why, sizeof why, "out of memory");
        log_err("tls: client setup failed: %s", why);
        goto fail;
    }
    /* The system store, and a private CA (a smarthost's or upstream's)
     * when tls.ca_file names one. */
    if (SSL_CTX_set_default_verify_paths(T.client) != 1)
        log_warn("tls: the system certificate store cannot be loaded; only tls.ca_file is trusted");
    ERR_clear_error();
    if (ca && *ca && SSL_CTX_load_verify_locations(T.client, ca, NULL) != 1) {
        tls_ssl_error(why, sizeof why, "unreadable");
        log_err("tls.ca_file %s: cannot load the CA certificates (%s); TLS to relays is not "
                "possible until it is fixed", ca, why);
        goto fail;
    }
    SSL_CTX_set_session_cache_mode(T.client, SSL_SESS_CACHE_OFF);
    return 0;
fail:
    SSL_CTX_free(T.client);
    T.client = NULL;
    T.client_failed = 1;
    return -1;
}

int tls_init(void)
{
    if (T.inited)
        return T.error[0] ? -1 : 0;
    T.inited = 1;
    T.error[0] = 0;
    tls_ignore_sigpipe();
    if (tls_server_ctx()) {
        log_err("%s", T.error);
        return -1;
    }
    if (T.server)
        log_info("tls: STARTTLS enabled with %s", conf->tls_cert);
    /* A bad tls.ca_file is reported now rather than at the first
     * delivery; it is not fatal: it only stops TLS to relays.  Without
     * one, the client context waits for the first STARTTLS: building it
     * loads OpenSSL's providers, megabytes an idle node does not need. */
    if (conf->tls_ca_file && *conf->tls_ca_file)
        (void)tls_client_ctx();
    return 0;
}

const char *tls_io_error(void)
{
    return T.error;
}

void tls_free(void)
{
    SSL_CTX_free(T.server);
    SSL_CTX_free(T.client);
    memset(&T, 0, sizeof T);
}

int tls_available(void)
{
    return T.server != NULL;
}

static struct tls_conn *tls_attach(struct conn *c, SSL_CTX *ctx)
{
    struct tls_conn *t;

    if (c->tls || c->dead)
        return NULL;
    t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->ssl = SSL_new(ctx);
    if (!t->ssl || SSL_set_fd(t->ssl, c->fd) != 1) {
        char why[128];
        tls_ssl_error(why, sizeof why, "out of memory");
        log_err("tls: cannot start TLS with %s: %s", c->peer_ip, why);
        SSL_free(t->ssl);
        free(t);
        return NULL;
    }
    t->s.handshaking = 1;
    t->s.plain = c->out_len;
    return t;
}

int tls_start_server(struct conn *c)
{
    struct tls_conn *t;

    if (!T.server)
        return -1;
    t = tls_attach(c, T.server);
    if (!t)
        return -1;
    t->s.server = 1;
    SSL_set_accept_state(t->ssl);
    tls_switch(c, &t->s);
    return 0;
}

int tls_start_client(struct conn *c, const char *host, int verify)
{
    struct tls_conn *t;
    char name[SMTP_DOMAIN_MAX + 1];

    tls_ignore_sigpipe();
    if (tls_client_ctx())
        return -1;
    t = tls_attach(c, T.client);
    if (!t)
        return -1;
    tls_cert_name(host, name, sizeof name);
    util_strlcpy(t->s.host, name, sizeof t->s.host);
    t->s.verify = verify ? 1 : 0;
    if (name[0]) {
        int ok;
        if (tls_is_ip(name)) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), name) == 1;
        } else {
            /* RFC 6066 3: SNI carries host names only, never addresses. */
            ok = SSL_set_tlsext_host_name(t->ssl, name) == 1 && SSL_set1_host(t->ssl, name) == 1;
            SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        }
        if (!ok) {
            log_err("tls: cannot set the expected name %s", name);
            SSL_free(t->ssl);
            free(t);
            ERR_clear_error();
            return -1;
        }
    }
    /* Opportunistic TLS (RFC 3207 4.1, RFC 7435) encrypts even when the
     * certificate does not verify; the verification still runs, and its
     * outcome is logged. */
    SSL_set_verify(t->ssl, t->s.verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    SSL_set_connect_state(t->ssl);
    /* The ClientHello is ours to send first. */
    t->s.hs_wants_out = 1;
    tls_switch(c, &t->s);
    return 0;
}


void tls_conn_free(struct conn *c)
{
    struct tls_conn *t = c->tls;

    if (!t)
        return;
    c->tls = NULL;
    /* A clean close says so (close_notify), best effort: the socket is
     * non-blocking and about to be closed. */
    if (c->closing && t->s.established && !t->s.failed) {
        SSL_shutdown(t->ssl);
        ERR_clear_error();
    }
    SSL_free(t->ssl);
    free(t);
}

/* --------------------------------------------------------- loop side */

int tls_io_pending(const struct conn *c)
{
    const struct tls_conn *t = c->tls;
    return t && t->s.established && SSL_pending(t->ssl) > 0;
}

/* Records a fatal error: the OpenSSL reason, or errno for a socket error. */
static void tls_fail(struct tls_conn *t, int ssl_err, int saved_errno)
{
    t->s.failed = 1;
    if (ssl_err == SSL_ERROR_SYSCALL && !ERR_peek_error()) {
        snprintf(t->s.error, sizeof t->s.error, "%s",
                 saved_errno ? strerror(saved_errno) : "connection closed by peer");
        return;
    }
    tls_ssl_error(t->s.error, sizeof t->s.error, "protocol error");
    if (!t->s.server && SSL_get_verify_result(t->ssl) != X509_V_OK) {
        size_t n = strlen(t->s.error);
        snprintf(t->s.error + n, sizeof t->s.error - n, " (%s)",
                 X509_verify_cert_error_string(SSL_get_verify_result(t->ssl)));
    }
}

/* 1: done; 0: waiting for the socket; -1: failed (the reason in the log). */
int tls_io_handshake(struct conn *c)
{
    struct tls_conn *t = c->tls;
    int r, e, saved;

    ERR_clear_error();
    errno = 0;
    r = SSL_do_handshake(t->ssl);
    saved = errno;
    if (r == 1) {
        t->s.handshaking = 0;
        t->s.established = 1;
        return 1;
    }
    e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        t->s.hs_wants_out = 0;
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        t->s.hs_wants_out = 1;
        return 0;
    }
    t->s.handshaking = 0;
    tls_fail(t, e, saved);
    return -1;
}

void tls_log_established(const struct conn *c)
{
    const struct tls_conn *t = c->tls;
    const char *vers = SSL_get_version(t->ssl);
    const char *cipher = SSL_get_cipher_name(t->ssl);

    if (t->s.server) {
        log_info("tls: %s %s with client %s", vers, cipher, c->peer_ip);
    } else {
        long v = SSL_get_verify_result(t->ssl);
        X509 *peer = SSL_get0_peer_certificate(t->ssl);
        log_info("tls: %s %s with server %s [%s], certificate %s%s%s", vers, cipher,
                 t->s.host[0] ? t->s.host : "?", c->peer_ip,
                 peer && v == X509_V_OK ? "verified" : "not verified",
                 peer && v == X509_V_OK ? "" : ": ",
                 !peer ? "none sent" : v == X509_V_OK ? "" : X509_verify_cert_error_string(v));
    }
}

/* Like recv(): bytes, 0 at the end, or -1 with errno EAGAIN (OpenSSL
 * waits for the socket) or another errno (the connection is broken). */
ssize_t tls_io_read(struct conn *c, void *buf, size_t n)
{
    struct tls_conn *t = c->tls;
    int r, e, saved;

    if (t->s.failed) {
        errno = EPROTO;
        return -1;
    }
    if (n > INT32_MAX)
        n = INT32_MAX;
    ERR_clear_error();
    errno = 0;
    r = SSL_read(t->ssl, buf, (int)n);
    saved = errno;
    if (r > 0) {
        t->s.read_wants_out = 0;
        return r;
    }
    e = SSL_get_error(t->ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        t->s.read_wants_out = 0;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        t->s.read_wants_out = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;                       /* close_notify, or EOF (IGNORE_UNEXPECTED_EOF) */
    default:
        tls_fail(t, e, saved);
        log_debug("tls: connection with %s broken: %s", c->peer_ip, t->s.error);
        /* Never EAGAIN or EINTR here: the caller must give up. */
        errno = EPROTO;
        return -1;
    }
}

/* Like send(). */
ssize_t tls_io_write(struct conn *c, const void *buf, size_t n)
{
    struct tls_conn *t = c->tls;
    int r, e, saved;

    if (t->s.failed) {
        errno = EPIPE;
        return -1;
    }
    if (n > INT32_MAX)
        n = INT32_MAX;
    ERR_clear_error();
    errno = 0;
    r = SSL_write(t->ssl, buf, (int)n);
    saved = errno;
    if (r > 0) {
        t->s.write_wants_in = 0;
        return r;
    }
    e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE) {
        t->s.write_wants_in = 0;
        errno = EAGAIN;
        return -1;
    }
    if (e == SSL_ERROR_WANT_READ) {
        t->s.write_wants_in = 1;
        errno = EAGAIN;
        return -1;
    }
    tls_fail(t, e, saved);
    log_debug("tls: connection with %s broken: %s", c->peer_ip, t->s.error);
    errno = EPIPE;
    return -1;
}

#elif !defined(MAILNODE_TLS)

/* Built without OpenSSL: TLS is not available, and the callers behave
 * accordingly (no STARTTLS/STLS offered; `tls = require` defers). */

int tls_init(void)
{
    if (conf->tls_cert && *conf->tls_cert)
        log_warn("tls.cert is set, but this mailnode was built without TLS (make TLS=none): "
                 "STARTTLS is not offered");
    return 0;
}

void tls_free(void)
{
}

int tls_available(void)
{
    return 0;
}

int tls_start_server(struct conn *c)
{
    MN_UNUSED(c);
    return -1;
}

int tls_start_client(struct conn *c, const char *host, int verify)
{
    MN_UNUSED(c);
    MN_UNUSED(host);
    MN_UNUSED(verify);
    return -1;
}

int tls_active(const struct conn *c)
{
    MN_UNUSED(c);
    return 0;
}


void tls_handshake_done(struct conn *c, int err)
{
    if (c->ops && c->ops->on_tls)
        c->ops->on_tls(c, err);
}

void tls_conn_free(struct conn *c)
{
    c->tls = NULL;
}

/* c->tls is never set in this build, so the loop never calls these. */
const char *tls_io_error(void)
{
    return "";
}

int tls_io_handshaking(const struct conn *c)
{
    MN_UNUSED(c);
    return 0;
}

size_t tls_io_plain(const struct conn *c)
{
    MN_UNUSED(c);
    return 0;
}

void tls_io_plain_sent(struct conn *c, size_t n)
{
    MN_UNUSED(c);
    MN_UNUSED(n);
}

int tls_io_handshake(struct conn *c)
{
    MN_UNUSED(c);
    return -1;
}

ssize_t tls_io_read(struct conn *c, void *buf, size_t n)
{
    MN_UNUSED(c);
    MN_UNUSED(buf);
    MN_UNUSED(n);
    errno = EPROTO;
    return -1;
}

ssize_t tls_io_write(struct conn *c, const void *buf, size_t n)
{
    MN_UNUSED(c);
    MN_UNUSED(buf);
    MN_UNUSED(n);
    errno = EPIPE;
    return -1;
}

int tls_io_pending(const struct conn *c)
{
    MN_UNUSED(c);
    return 0;
}

int tls_io_read_wants_out(const struct conn *c)
{
    MN_UNUSED(c);
    return 0;
}

int tls_io_write_wants_in(const struct conn *c)
{
    MN_UNUSED(c);
    return 0;
}

#endif /* MAILNODE_TLS: OpenSSL here, mbedTLS in tls_mbedtls.c, or none */
