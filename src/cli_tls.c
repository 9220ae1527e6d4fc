/*
 * cli_tls.c: `mailnode tls selfsigned`: a key and a self-signed
 * certificate for a node that has no CA (tls_cert.c makes them), written
 * where the node keeps its state, with the lines that put them to use.
 */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CLI_TLS_DAYS_DEFAULT 3650
#define CLI_TLS_DAYS_MAX 20000          /* about 55 years: within a 32-bit long of seconds */

static const char cli_tls_help[] =
    "usage: mailnode tls selfsigned [--cn NAME] [--days N] [-o DIR] [--force]\n"
    "\n"
    "Generates an ECDSA P-256 key and a self-signed certificate for NAME\n"
    "(default: the hostname setting) valid for N days (default 3650), as\n"
    "DIR/tls-cert.pem and DIR/tls-key.pem (mode 0600); DIR defaults to the\n"
    "database's directory. Existing files are kept unless --force is given.\n"
    "Prints the certificate's SHA-256 fingerprint and the tls.cert/tls.key\n"
    "lines for mailnode.conf. Peers trust the node with a copy of\n"
    "tls-cert.pem as their tls.ca_file (or CA file).\n";

/* A host name or an address: what a certificate can name and a peer
 * can ask for. */
static int cli_tls_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return 0;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '.' || *s == '-' || *s == ':'))
            return 0;
    return 1;
}

/* Writes text to path through path.tmp: fsynced, then renamed. */
static int cli_tls_write(const char *path, const char *text, mode_t mode, int force)
{
    char tmp[4096];
    size_t len = strlen(text), off = 0;
    int fd;

    if (!force && access(path, F_OK) == 0) {
        errno = EEXIST;
        return -1;
    }
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return -1;
    if (fchmod(fd, mode))
        goto fail;
    while (off < len) {
        ssize_t k = write(fd, text + off, len - off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            goto fail;
        off += (size_t)k;
    }
    if (fsync(fd) || close(fd)) {
        fd = -1;
        goto fail;
    }
    if (rename(tmp, path)) {
        unlink(tmp);
        return -1;
    }
    return 0;
fail:
    {
        int e = errno;
        if (fd >= 0)
            close(fd);
        unlink(tmp);
        errno = e;
    }
    return -1;
}

/* SHA-256 of the certificate's DER, as AB:CD:... */
static int cli_tls_fingerprint(const char *pem, char *out, size_t n)
{
    const char *b = strstr(pem, "-----BEGIN CERTIFICATE-----"), *e;
    unsigned char der[4096], h[crypto_hash_sha256_BYTES];
    size_t dlen;

    if (!b || n < 3 * sizeof h)
        return -1;
    b = strchr(b, '\n');
    e = b ? strstr(b, "-----END CERTIFICATE-----") : NULL;
    if (!e || sodium_base642bin(der, sizeof der, b + 1, (size_t)(e - b - 1), "\r\n", &dlen, NULL,
                                sodium_base64_VARIANT_ORIGINAL))
        return -1;
    crypto_hash_sha256(h, der, dlen);
    for (size_t i = 0; i < sizeof h; i++)
        snprintf(out + 3 * i, n - 3 * i, "%02X%s", h[i], i + 1 < sizeof h ? ":" : "");
    return 0;
}

static int cli_tls_selfsigned(int argc, char **argv)
{
    const char *name = conf->hostname, *dir = NULL;
    char dbdir[4096], cert_path[4096], key_path[4096], err[256], fp[128];
    char *cert = NULL, *key = NULL, *end;
    long days = CLI_TLS_DAYS_DEFAULT;
    int force = 0, rc;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(cli_tls_help, stdout);
            return EX_OK;
        } else if (!strcmp(a, "--cn") && i + 1 < argc) {
            name = argv[++i];
        } else if (!strcmp(a, "--days") && i + 1 < argc) {
            errno = 0;
            days = strtol(argv[++i], &end, 10);
            if (errno || *end || end == argv[i] || days < 1 || days > CLI_TLS_DAYS_MAX) {
                fprintf(stderr, "mailnode: tls selfsigned: --days %s: a number of days from 1 to %d\n",
                        argv[i], CLI_TLS_DAYS_MAX);
                return EX_USAGE;
            }
        } else if (!strcmp(a, "-o") && i + 1 < argc) {
            dir = argv[++i];
        } else if (!strcmp(a, "--force")) {
            force = 1;
        } else {
            fprintf(stderr, "mailnode: tls selfsigned: unexpected argument %s\n%s", a, cli_tls_help);
            return EX_USAGE;
        }
    }
    if (!name || !cli_tls_name_ok(name)) {
        fprintf(stderr, "mailnode: tls selfsigned: %s%s%s is not a host name or address; give one "
                        "with --cn\n", name ? "\"" : "", name ? name : "no name", name ? "\"" : "");
        return EX_USAGE;
    }
    if (!dir) {
        util_strlcpy(dbdir, conf->database && *conf->database ? conf->database : "./x", sizeof dbdir);
        char *slash = strrchr(dbdir, '/');
        if (!slash)
            util_strlcpy(dbdir, ".", sizeof dbdir);
        else if (slash == dbdir)
            dbdir[1] = 0;
        else
            *slash = 0;
        dir = dbdir;
    }
    if (snprintf(cert_path, sizeof cert_path, "%s/tls-cert.pem", dir) >= (int)sizeof cert_path ||
        snprintf(key_path, sizeof key_path, "%s/tls-key.pem", dir) >= (int)sizeof key_path) {
        fprintf(stderr, "mailnode: tls selfsigned: %s: path too long\n", dir);
        return EX_USAGE;
    }
    if (!force && (access(cert_path, F_OK) == 0 || access(key_path, F_OK) == 0)) {
        fprintf(stderr, "mailnode: tls selfsigned: %s exists; kept (--force replaces it)\n",
                access(key_path, F_OK) == 0 ? key_path : cert_path);
        return EX_CANTCREAT;
    }
    if (tls_selfsigned(name, (int)days, &cert, &key, err, sizeof err)) {
        fprintf(stderr, "mailnode: tls selfsigned: cannot make the certificate: %s\n", err);
        return EX_SOFTWARE;
    }
    rc = EX_OK;
    /* The key first: a certificate never lies around without its key. */
    if (cli_tls_write(key_path, key, 0600, force) || cli_tls_write(cert_path, cert, 0644, force)) {
        fprintf(stderr, "mailnode: tls selfsigned: cannot write %s: %s\n",
                access(key_path, F_OK) == 0 ? cert_path : key_path, strerror(errno));
        rc = EX_CANTCREAT;
    } else {
        printf("wrote %s (self-signed for %s, %ld days) and its key %s\n", cert_path, name, days, key_path);
        if (cli_tls_fingerprint(cert, fp, sizeof fp) == 0)
            printf("SHA-256 fingerprint: %s\n", fp);
        printf("for mailnode.conf:\n  tls.cert = %s\n  tls.key = %s\n"
               "peers that relay to this node trust it with a copy of %s as tls.ca_file\n",
               cert_path, key_path, cert_path);
    }
    sodium_memzero(key, strlen(key));
    free(key);
    free(cert);
    return rc;
}

int cli_tls(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "selfsigned"))
        return cli_tls_selfsigned(argc - 1, argv + 1);
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(cli_tls_help, stdout);
        return EX_OK;
    }
    fputs(cli_tls_help, stderr);
    return EX_USAGE;
}
