/*
 * tls_cert.c: a self-signed certificate and its key for a node that has
 * no CA (`mailnode tls selfsigned`), through whichever TLS library the
 * build uses: OpenSSL (tls.c) or mbedTLS (tls_mbedtls.c).
 *
 * The key is ECDSA P-256: small, fast on an ARM board, and accepted by
 * every TLS 1.2 client.  The certificate (RFC 5280) is X.509 v3 with a
 * random 127-bit serial, valid from an hour ago (a peer's clock running a
 * little behind) for the days asked, the name both as the subject's CN
 * and as subjectAltName (dNSName, or iPAddress for an address: clients
 * check only the SAN, RFC 6125 6.4.4), basicConstraints CA:FALSE and
 * keyUsage digitalSignature.  Peers trust it by pinning: the file itself
 * as their CA file, or its SHA-256 fingerprint.
 */
#include "internal.h"

#include <string.h>
#include <time.h>
#include <arpa/inet.h>

#define TLS_CERT_MAX 4096

/* The name as a subjectAltName value: 4 (IPv4) or 16 (IPv6) address
 * bytes, or 0 for a host name. */
static size_t tls_cert_ip(const char *name, unsigned char ip[16])
{
    if (inet_pton(AF_INET, name, ip) == 1)
        return 4;
    if (inet_pton(AF_INET6, name, ip) == 1)
        return 16;
    return 0;
}

#if defined(MAILNODE_TLS) && !defined(MAILNODE_TLS_MBEDTLS)

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

static char *tls_cert_bio_text(BIO *b)
{
    char *data, *out;
    long n = BIO_get_mem_data(b, &data);
    if (n <= 0 || !(out = malloc((size_t)n + 1)))
        return NULL;
    memcpy(out, data, (size_t)n);
    out[n] = 0;
    return out;
}

static int tls_cert_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *e;
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!e)
        return -1;
    int ok = X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    return ok ? 0 : -1;
}

int tls_selfsigned(const char *name, int days, char **cert_pem, char **key_pem, char *err, size_t errlen)
{
    EVP_PKEY *pk = NULL;
    X509 *x = NULL;
    BIGNUM *bn = NULL;
    BIO *cb = NULL, *kb = NULL;
    unsigned char serial[16], ip[16];
    char san[300];
    int rc = -1;

    *cert_pem = *key_pem = NULL;
    randombytes_buf(serial, sizeof serial);
    serial[0] &= 0x7f;                  /* positive (RFC 5280 4.1.2.2) */
    if (tls_cert_ip(name, ip))
        snprintf(san, sizeof san, "IP:%s", name);
    else
        snprintf(san, sizeof san, "DNS:%s", name);
    if (!(pk = EVP_EC_gen("P-256")) || !(x = X509_new()) || !X509_set_version(x, 2) ||
        !(bn = BN_bin2bn(serial, sizeof serial, NULL)) || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) ||
        !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400) || !X509_set_pubkey(x, pk) ||
        !X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                    (const unsigned char *)name, -1, -1, 0) ||
        !X509_set_issuer_name(x, X509_get_subject_name(x)) ||
        tls_cert_ext(x, NID_basic_constraints, "critical,CA:FALSE") ||
        tls_cert_ext(x, NID_key_usage, "critical,digitalSignature") ||
        tls_cert_ext(x, NID_subject_alt_name, san) || !X509_sign(x, pk, EVP_sha256()))
        goto done;
    if (!(cb = BIO_new(BIO_s_mem())) || !(kb = BIO_new(BIO_s_mem())) || !PEM_write_bio_X509(cb, x) ||
        !PEM_write_bio_PrivateKey(kb, pk, NULL, NULL, 0, NULL, NULL))
        goto done;
    *cert_pem = tls_cert_bio_text(cb);
    *key_pem = tls_cert_bio_text(kb);
    rc = *cert_pem && *key_pem ? 0 : -1;
done:
    if (rc) {
        unsigned long e = ERR_peek_last_error();
        snprintf(err, errlen, "%s", e ? ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "OpenSSL error"
                                      : "out of memory");
        free(*cert_pem);
        free(*key_pem);
        *cert_pem = *key_pem = NULL;
    }
    ERR_clear_error();
    BIO_free(cb);
    BIO_free(kb);
    BN_free(bn);
    X509_free(x);
    EVP_PKEY_free(pk);
    return rc;
}

#elif defined(MAILNODE_TLS) && defined(MAILNODE_TLS_MBEDTLS)

#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

static int tls_cert_rng(void *arg, unsigned char *out, size_t n)
{
    MN_UNUSED(arg);
    randombytes_buf(out, n);
    return 0;
}

/* DER of subjectAltName: SEQUENCE { [2] dNSName | [7] iPAddress }.
 * mbedTLS 2.28 has no helper for it.  Returns the length, 0 if too long. */
static size_t tls_cert_san(const char *name, unsigned char *out, size_t cap)
{
    unsigned char ip[16], gn[300];
    size_t iplen = tls_cert_ip(name, ip), vlen = iplen ? iplen : strlen(name), g = 0, o = 0;
    const unsigned char *v = iplen ? ip : (const unsigned char *)name;

    if (vlen > 253)
        return 0;
    gn[g++] = iplen ? 0x87 : 0x82;      /* context-specific [7] / [2], primitive */
    if (vlen > 127)
        gn[g++] = 0x81;
    gn[g++] = (unsigned char)vlen;
    memcpy(gn + g, v, vlen);
    g += vlen;
    if (g + 4 > cap)
        return 0;
    out[o++] = 0x30;                    /* SEQUENCE */
    if (g > 127)
        out[o++] = 0x81;
    out[o++] = (unsigned char)g;
    memcpy(out + o, gn, g);
    return o + g;
}

/* YYYYMMDDhhmmss, as mbedtls_x509write_crt_set_validity wants it. */
static void tls_cert_when(time_t t, char out[64])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, 64, "%04d%02d%02d%02d%02d%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec);
}

int tls_selfsigned(const char *name, int days, char **cert_pem, char **key_pem, char *err, size_t errlen)
{
    mbedtls_pk_context key;
    mbedtls_x509write_cert crt;
    mbedtls_mpi serial;
    unsigned char sbytes[16], san[300];
    char subject[300], from[64], until[64];
    size_t sanlen = tls_cert_san(name, san, sizeof san);
    time_t now = time(NULL);
    int ret = -1;

    *cert_pem = *key_pem = NULL;
    mbedtls_pk_init(&key);
    mbedtls_x509write_crt_init(&crt);
    mbedtls_mpi_init(&serial);
    randombytes_buf(sbytes, sizeof sbytes);
    sbytes[0] &= 0x7f;                  /* positive (RFC 5280 4.1.2.2) */
    tls_cert_when(now - 3600, from);
    tls_cert_when(now + (time_t)days * 86400, until);
    snprintf(subject, sizeof subject, "CN=%s", name);
    *cert_pem = calloc(1, TLS_CERT_MAX);
    *key_pem = calloc(1, TLS_CERT_MAX);
    if (!sanlen || !*cert_pem || !*key_pem)
        goto done;
    if ((ret = mbedtls_pk_setup(&key, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY))) ||
        (ret = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(key), tls_cert_rng, NULL)) ||
        (ret = mbedtls_mpi_read_binary(&serial, sbytes, sizeof sbytes)))
        goto done;
    mbedtls_x509write_crt_set_version(&crt, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_md_alg(&crt, MBEDTLS_MD_SHA256);
    mbedtls_x509write_crt_set_subject_key(&crt, &key);
    mbedtls_x509write_crt_set_issuer_key(&crt, &key);
    if ((ret = mbedtls_x509write_crt_set_serial(&crt, &serial)) ||
        (ret = mbedtls_x509write_crt_set_validity(&crt, from, until)) ||
        (ret = mbedtls_x509write_crt_set_subject_name(&crt, subject)) ||
        (ret = mbedtls_x509write_crt_set_issuer_name(&crt, subject)) ||
        (ret = mbedtls_x509write_crt_set_basic_constraints(&crt, 0, -1)) ||
        (ret = mbedtls_x509write_crt_set_key_usage(&crt, MBEDTLS_X509_KU_DIGITAL_SIGNATURE)) ||
        (ret = mbedtls_x509write_crt_set_extension(&crt, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                                   MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0,
                                                   san, sanlen)) ||
        (ret = mbedtls_x509write_crt_pem(&crt, (unsigned char *)*cert_pem, TLS_CERT_MAX, tls_cert_rng, NULL)) ||
        (ret = mbedtls_pk_write_key_pem(&key, (unsigned char *)*key_pem, TLS_CERT_MAX)))
        goto done;
    ret = 0;
done:
    if (ret) {
        if (ret == -1 || !sanlen)
            snprintf(err, errlen, "%s", sanlen ? "out of memory" : "name too long");
        else
            mbedtls_strerror(ret, err, errlen);
        free(*cert_pem);
        free(*key_pem);
        *cert_pem = *key_pem = NULL;
    }
    mbedtls_mpi_free(&serial);
    mbedtls_x509write_crt_free(&crt);
    mbedtls_pk_free(&key);
    return ret ? -1 : 0;
}

#else /* !MAILNODE_TLS */

int tls_selfsigned(const char *name, int days, char **cert_pem, char **key_pem, char *err, size_t errlen)
{
    unsigned char ip[16];
    MN_UNUSED(days);
    (void)tls_cert_ip(name, ip);
    *cert_pem = *key_pem = NULL;
    snprintf(err, errlen, "this mailnode was built without TLS (make TLS=none)");
    return -1;
}

#endif
