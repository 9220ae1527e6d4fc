/*
 * tls_mbedtls.c: the functions of tls.c through mbedTLS (make TLS=mbedtls),
 * for the static builds of small boxes: the same STARTTLS/STLS (RFC 3207,
 * RFC 2595) behaviour, the same log lines and errors, a fraction of
 * OpenSSL's size.  tls.c's comments on the loop side hold here too.
 *
 * Randomness comes from libsodium (randombytes_buf), which mailnode has
 * seeded anyway, so no second entropy pool or DRBG is kept.  The system's
 * CA store (a PEM bundle, mbedTLS knows no default) is loaded at the
 * first client handshake, as tls.c does, since a parsed bundle costs
 * hundreds of kilobytes an idle node does not need.
 *
 * On 32-bit builds with a 64-bit time_t the only mbedTLS structure with a
 * time_t (mbedtls_ssl_session) is allocated by the library, never here,
 * so a library built with a 32-bit time_t is safe to link.
 */
#include "internal.h"

#if defined(MAILNODE_TLS) && defined(MAILNODE_TLS_MBEDTLS)

#include <errno.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>

/* PEM bundles of the system's CAs, the first that loads wins. */
static const char *const tls_system_cas[] = {
    "/etc/ssl/certs/ca-certificates.crt",       /* Debian, Ubuntu, OpenWrt ca-bundle */
    "/etc/pki/tls/certs/ca-bundle.crt",         /* Fedora, RHEL */
    "/etc/ssl/cert.pem",                        /* Alpine, BSDs */
};

struct tls_conn {
    struct tls_state s;                 /* first: c->tls is read as one */
    mbedtls_ssl_context ssl;
    int fd;
    size_t wpending;                    /* bytes of a record mbedTLS holds, not yet sent */
    unsigned is_ip : 1;                 /* client: host is an address */
};

static struct {
    int inited;
    int have_server, have_client, client_failed;
    mbedtls_ssl_config server, client;
    mbedtls_x509_crt cert, ca;
    mbedtls_pk_context key;
    char error[512];
} T;

static int tls_rng(void *arg, unsigned char *out, size_t n)
{
    MN_UNUSED(arg);
    randombytes_buf(out, n);
    return 0;
}

static void tls_strerror(int ret, char *buf, size_t n)
{
    char tmp[160];
    mbedtls_strerror(ret, tmp, sizeof tmp);
    snprintf(buf, n, "%s", tmp);
}

/* Settings both sides share: TLS 1.2 at least (RFC 8996), no
 * renegotiation, no session tickets (bytes on slow links for
 * resumptions mail clients rarely make). */
static int tls_conf_common(mbedtls_ssl_config *c, int endpoint)
{
    mbedtls_ssl_config_init(c);
    if (mbedtls_ssl_config_defaults(c, endpoint, MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT))
        return -1;
    mbedtls_ssl_conf_rng(c, tls_rng, NULL);
    mbedtls_ssl_conf_min_version(c, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
#if defined(MBEDTLS_SSL_RENEGOTIATION)
    mbedtls_ssl_conf_renegotiation(c, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
#endif
#if defined(MBEDTLS_SSL_SESSION_TICKETS)
    mbedtls_ssl_conf_session_tickets(c, MBEDTLS_SSL_SESSION_TICKETS_DISABLED);
#endif
    return 0;
}

static int tls_load_key(const char *path)
{
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
    return mbedtls_pk_parse_keyfile(&T.key, path, NULL, tls_rng, NULL);
#else
    return mbedtls_pk_parse_keyfile(&T.key, path, NULL);
#endif
}

static int tls_check_pair(void)
{
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
    return mbedtls_pk_check_pair(&T.cert.pk, &T.key, tls_rng, NULL);
#else
    return mbedtls_pk_check_pair(&T.cert.pk, &T.key);
#endif
}

static int tls_server_conf(void)
{
    const char *cert = conf->tls_cert, *key = conf->tls_key;
    char why[200];
    int ret;

    if (!cert || !*cert)
        return 0;
    if (!key || !*key)
        key = cert;                     /* one PEM file holding both */
    if (tls_readable_file("tls.cert", cert, T.error, sizeof T.error) ||
        tls_readable_file("tls.key", key, T.error, sizeof T.error))
        return -1;
    mbedtls_x509_crt_init(&T.cert);
    mbedtls_pk_init(&T.key);
    T.have_server = 1;                  /* from here on tls_free frees */
    ret = mbedtls_x509_crt_parse_file(&T.cert, cert);
    if (ret) {
        tls_strerror(ret, why, sizeof why);
        snprintf(T.error, sizeof T.error,
                 "tls.cert %s: cannot load the certificate chain (%s); it must be PEM, "
                 "the server certificate first", cert, why);
        return -1;
    }
    ret = tls_load_key(key);
    if (ret) {
        tls_strerror(ret, why, sizeof why);
        snprintf(T.error, sizeof T.error, "tls.key %s: cannot load the private key (%s); it must "
                 "be PEM without a passphrase", key, why);
        return -1;
    }
    if (tls_check_pair()) {
        snprintf(T.error, sizeof T.error, "tls.key %s does not match the certificate in tls.cert %s",
                 key, cert);
        return -1;
    }
    if (tls_conf_common(&T.server, MBEDTLS_SSL_IS_SERVER) ||
        mbedtls_ssl_conf_own_cert(&T.server, &T.cert, &T.key)) {
        snprintf(T.error, sizeof T.error, "TLS server setup failed: out of memory");
        return -1;
    }
    return 0;
}

static int tls_client_conf(void)
{
    const char *ca = conf->tls_ca_file;
    char why[200];
    int ret, system = 0;

    if (T.have_client)
        return 0;
    if (T.client_failed)
        return -1;
    mbedtls_x509_crt_init(&T.ca);
    for (size_t i = 0; i < sizeof tls_system_cas / sizeof *tls_system_cas && !system; i++)
        system = access(tls_system_cas[i], R_OK) == 0 &&
                 mbedtls_x509_crt_parse_file(&T.ca, tls_system_cas[i]) >= 0;
    if (!system)
        log_warn("tls: the system certificate store cannot be loaded; only tls.ca_file is trusted");
    if (ca && *ca && (ret = mbedtls_x509_crt_parse_file(&T.ca, ca)) != 0) {
        tls_strerror(ret, why, sizeof why);
        log_err("tls.ca_file %s: cannot load the CA certificates (%s); TLS to relays is not "
                "possible until it is fixed", ca, why);
        goto fail;
    }
    if (tls_conf_common(&T.client, MBEDTLS_SSL_IS_CLIENT)) {
        log_err("tls: client setup failed: out of memory");
        mbedtls_ssl_config_free(&T.client);
        goto fail;
    }
    /* Opportunistic TLS (RFC 3207 4.1, RFC 7435): the chain is always
     * checked and the outcome logged; tls_io_handshake fails the
     * connections that require it. */
    mbedtls_ssl_conf_authmode(&T.client, MBEDTLS_SSL_VERIFY_OPTIONAL);
    mbedtls_ssl_conf_ca_chain(&T.client, &T.ca, NULL);
    T.have_client = 1;
    return 0;
fail:
    mbedtls_x509_crt_free(&T.ca);
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
    if (tls_server_conf()) {
        log_err("%s", T.error);
        return -1;
    }
    if (T.have_server)
        log_info("tls: STARTTLS enabled with %s", conf->tls_cert);
    if (conf->tls_ca_file && *conf->tls_ca_file)
        (void)tls_client_conf();
    return 0;
}

const char *tls_io_error(void)
{
    return T.error;
}

void tls_free(void)
{
    if (T.have_server) {
        mbedtls_ssl_config_free(&T.server);
        mbedtls_x509_crt_free(&T.cert);
        mbedtls_pk_free(&T.key);
    }
    if (T.have_client) {
        mbedtls_ssl_config_free(&T.client);
        mbedtls_x509_crt_free(&T.ca);
    }
    memset(&T, 0, sizeof T);
}

int tls_available(void)
{
    return T.have_server && !T.error[0];
}

/* The record layer's socket: non-blocking, MSG_NOSIGNAL. */
static int tls_send(void *arg, const unsigned char *buf, size_t n)
{
    struct tls_conn *t = arg;
    ssize_t r = send(t->fd, buf, n, MSG_NOSIGNAL);
    if (r >= 0)
        return (int)r;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return MBEDTLS_ERR_SSL_WANT_WRITE;
    snprintf(t->s.error, sizeof t->s.error, "%s", strerror(errno));
    return errno == EPIPE || errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_SEND_FAILED;
}

static int tls_recv(void *arg, unsigned char *buf, size_t n)
{
    struct tls_conn *t = arg;
    ssize_t r = recv(t->fd, buf, n, 0);
    if (r >= 0)
        return (int)r;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return MBEDTLS_ERR_SSL_WANT_READ;
    snprintf(t->s.error, sizeof t->s.error, "%s", strerror(errno));
    return errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_RECV_FAILED;
}

static struct tls_conn *tls_attach(struct conn *c, const mbedtls_ssl_config *cf)
{
    struct tls_conn *t;

    if (c->tls || c->dead)
        return NULL;
    t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    mbedtls_ssl_init(&t->ssl);
    if (mbedtls_ssl_setup(&t->ssl, cf)) {
        log_err("tls: cannot start TLS with %s: out of memory", c->peer_ip);
        mbedtls_ssl_free(&t->ssl);
        free(t);
        return NULL;
    }
    t->fd = c->fd;
    mbedtls_ssl_set_bio(&t->ssl, t, tls_send, tls_recv, NULL);
    t->s.handshaking = 1;
    t->s.plain = c->out_len;
    return t;
}

static void tls_discard(struct tls_conn *t)
{
    mbedtls_ssl_free(&t->ssl);
    free(t);
}

int tls_start_server(struct conn *c)
{
    struct tls_conn *t;

    if (!tls_available())
        return -1;
    t = tls_attach(c, &T.server);
    if (!t)
        return -1;
    t->s.server = 1;
    tls_switch(c, &t->s);
    return 0;
}

int tls_start_client(struct conn *c, const char *host, int verify)
{
    struct tls_conn *t;
    char name[SMTP_DOMAIN_MAX + 1];

    tls_ignore_sigpipe();
    if (tls_client_conf())
        return -1;
    t = tls_attach(c, &T.client);
    if (!t)
        return -1;
    tls_cert_name(host, name, sizeof name);
    util_strlcpy(t->s.host, name, sizeof t->s.host);
    t->s.verify = verify ? 1 : 0;
    t->is_ip = name[0] && tls_is_ip(name);
    /* RFC 6066 3: SNI carries host names only; an address is checked
     * against the certificate's iPAddress names after the handshake. */
    if (name[0] && !t->is_ip && mbedtls_ssl_set_hostname(&t->ssl, name)) {
        log_err("tls: cannot set the expected name %s", name);
        tls_discard(t);
        return -1;
    }
    t->s.hs_wants_out = 1;                /* the ClientHello is ours to send first */
    tls_switch(c, &t->s);
    return 0;
}

void tls_conn_free(struct conn *c)
{
    struct tls_conn *t = c->tls;

    if (!t)
        return;
    c->tls = NULL;
    if (c->closing && t->s.established && !t->s.failed)
        (void)mbedtls_ssl_close_notify(&t->ssl);   /* best effort */
    tls_discard(t);
}

/* --------------------------------------------------------- loop side */

int tls_io_pending(const struct conn *c)
{
    const struct tls_conn *t = c->tls;
    return t && t->s.established && mbedtls_ssl_get_bytes_avail(&t->ssl) > 0;
}

static void tls_fail(struct tls_conn *t, int ret)
{
    t->s.failed = 1;
    if (t->s.error[0] && (ret == MBEDTLS_ERR_NET_SEND_FAILED || ret == MBEDTLS_ERR_NET_RECV_FAILED ||
                        ret == MBEDTLS_ERR_NET_CONN_RESET))
        return;                         /* the socket's errno, set by tls_send/tls_recv */
    if (ret == MBEDTLS_ERR_SSL_CONN_EOF) {
        snprintf(t->s.error, sizeof t->s.error, "connection closed by peer");
        return;
    }
    tls_strerror(ret, t->s.error, sizeof t->s.error);
}

/* A host given as an address must be one of the certificate's iPAddress
 * subjectAltNames (RFC 5280 4.2.1.6), the check OpenSSL's
 * X509_VERIFY_PARAM_set1_ip makes. */
static int tls_ip_matches(const struct tls_conn *t)
{
    const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(&t->ssl);
    unsigned char want[16];
    size_t wlen = inet_pton(AF_INET, t->s.host, want) == 1 ? 4 : 16;

    if (wlen == 16 && inet_pton(AF_INET6, t->s.host, want) != 1)
        return 0;
    if (!crt)
        return 0;
    for (const mbedtls_x509_sequence *s = &crt->subject_alt_names; s && s->buf.p; s = s->next)
        if ((s->buf.tag & MBEDTLS_ASN1_TAG_VALUE_MASK) == 7 && s->buf.len == wlen &&
            !memcmp(s->buf.p, want, wlen))
            return 1;
    return 0;
}

/* Client: the verification outcome, 0 when the chain and the name hold. */
static uint32_t tls_verify_flags(const struct tls_conn *t)
{
    uint32_t flags = mbedtls_ssl_get_verify_result(&t->ssl);
    if (t->is_ip && !tls_ip_matches(t))
        flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
    return flags;
}

static void tls_verify_text(uint32_t flags, char *buf, size_t n)
{
    char info[256];
    int k = mbedtls_x509_crt_verify_info(info, sizeof info, "", flags);
    while (k > 0 && (info[k - 1] == '\n' || info[k - 1] == ' '))
        info[--k] = 0;
    for (char *p = info; *p; p++)
        if (*p == '\n')
            *p = ';';
    snprintf(buf, n, "%s", k > 0 ? info : "certificate verify failed");
}

int tls_io_handshake(struct conn *c)
{
    struct tls_conn *t = c->tls;
    int r = mbedtls_ssl_handshake(&t->ssl);

    if (r == 0) {
        t->s.handshaking = 0;
        if (!t->s.server && t->s.verify) {
            uint32_t flags = tls_verify_flags(t);
            if (flags) {
                t->s.failed = 1;
                snprintf(t->s.error, sizeof t->s.error, "certificate verify failed (");
                size_t k = strlen(t->s.error);
                tls_verify_text(flags, t->s.error + k, sizeof t->s.error - k - 1);
                util_strlcpy(t->s.error + strlen(t->s.error), ")", sizeof t->s.error - strlen(t->s.error));
                return -1;
            }
        }
        t->s.established = 1;
        return 1;
    }
    if (r == MBEDTLS_ERR_SSL_WANT_READ) {
        t->s.hs_wants_out = 0;
        return 0;
    }
    if (r == MBEDTLS_ERR_SSL_WANT_WRITE) {
        t->s.hs_wants_out = 1;
        return 0;
    }
    t->s.handshaking = 0;
    tls_fail(t, r);
    return -1;
}

void tls_log_established(const struct conn *c)
{
    const struct tls_conn *t = c->tls;
    const char *vers = mbedtls_ssl_get_version(&t->ssl);
    const char *cipher = mbedtls_ssl_get_ciphersuite(&t->ssl);

    if (t->s.server) {
        log_info("tls: %s %s with client %s", vers, cipher, c->peer_ip);
    } else {
        uint32_t flags = tls_verify_flags(t);
        const mbedtls_x509_crt *peer = mbedtls_ssl_get_peer_cert(&t->ssl);
        char why[256] = "";
        if (peer && flags)
            tls_verify_text(flags, why, sizeof why);
        log_info("tls: %s %s with server %s [%s], certificate %s%s%s", vers, cipher,
                 t->s.host[0] ? t->s.host : "?", c->peer_ip,
                 peer && !flags ? "verified" : "not verified",
                 peer && !flags ? "" : ": ", !peer ? "none sent" : why);
    }
}

/* Like recv(): bytes, 0 at the end, -1 with EAGAIN or another errno. */
ssize_t tls_io_read(struct conn *c, void *buf, size_t n)
{
    struct tls_conn *t = c->tls;
    int r;

    if (t->s.failed) {
        errno = EPROTO;
        return -1;
    }
    if (n > INT32_MAX)
        n = INT32_MAX;
    r = mbedtls_ssl_read(&t->ssl, buf, n);
    if (r > 0) {
        t->s.read_wants_out = 0;
        return r;
    }
    switch (r) {
    case MBEDTLS_ERR_SSL_WANT_READ:
        t->s.read_wants_out = 0;
        errno = EAGAIN;
        return -1;
    case MBEDTLS_ERR_SSL_WANT_WRITE:
        t->s.read_wants_out = 1;
        errno = EAGAIN;
        return -1;
    case 0:
    case MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY:
    case MBEDTLS_ERR_SSL_CONN_EOF:      /* TCP closed without close_notify: an EOF, as in tls.c */
        return 0;
    default:
        tls_fail(t, r);
        log_debug("tls: connection with %s broken: %s", c->peer_ip, t->s.error);
        errno = EPROTO;
        return -1;
    }
}

/* Like send().  After WANT_WRITE mbedTLS holds an encrypted record and
 * must be called again with the same bytes; the loop only appends to its
 * buffer, so the head is the same, but it may offer more: offering
 * exactly the held record's length keeps the count returned true. */
ssize_t tls_io_write(struct conn *c, const void *buf, size_t n)
{
    struct tls_conn *t = c->tls;
    int r;

    if (t->s.failed) {
        errno = EPIPE;
        return -1;
    }
    if (t->wpending && n >= t->wpending)
        n = t->wpending;
    if (n > INT32_MAX)
        n = INT32_MAX;
    r = mbedtls_ssl_write(&t->ssl, buf, n);
    if (r >= 0) {
        t->wpending = 0;
        t->s.write_wants_in = 0;
        return r;
    }
    if (r == MBEDTLS_ERR_SSL_WANT_WRITE || r == MBEDTLS_ERR_SSL_WANT_READ) {
        t->wpending = n;
        t->s.write_wants_in = r == MBEDTLS_ERR_SSL_WANT_READ;
        errno = EAGAIN;
        return -1;
    }
    tls_fail(t, r);
    log_debug("tls: connection with %s broken: %s", c->peer_ip, t->s.error);
    errno = EPIPE;
    return -1;
}

#endif /* MAILNODE_TLS && MAILNODE_TLS_MBEDTLS */
