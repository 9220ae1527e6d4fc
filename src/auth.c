/*
 * auth.c: passwords and SASL (RFC 4422) for SMTP AUTH (RFC 4954) and POP3
 * AUTH (RFC 5034): PLAIN (RFC 4616), LOGIN and CRAM-MD5 (RFC 2195).
 *
 * A password is kept twice.  The Argon2id hash serves PLAIN and LOGIN.
 * CRAM-MD5 needs a password equivalent on the server, so its HMAC key is
 * kept too, sealed (XSalsa20-Poly1305) under the node key.  The node key
 * lives in its own file, outside the database: a stolen database alone
 * yields neither passwords nor anything that logs in.
 *
 * This module only computes.  The protocol sessions send the replies,
 * count the failures and add the delays.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* Argon2id cost.  The daemon has one thread and runs on small boxes: every
 * verification stalls every session, so it must stay short (about 20-30
 * ms) and small (8 MiB transient).  Both values are recorded inside each
 * hash string, so raising them later only affects new passwords. */
#define AUTH_PWHASH_OPSLIMIT 3ULL
#define AUTH_PWHASH_MEMLIMIT ((size_t)8 * 1024 * 1024)

#define AUTH_PW_MAX     256             /* longer passwords are refused */
/* RFC 2104 2: HMAC-MD5 pads its key to the 64-byte block; a longer key is
 * replaced by its MD5 digest.  That padded block is the CRAM secret. */
#define CRAM_KEY_LEN    64
#define CRAM_SEALED_LEN (crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + CRAM_KEY_LEN)
/* The longest decoded client response we look at: a PLAIN message holds
 * two names of at most 255 bytes and a password (RFC 4616 2). */
#define AUTH_RESPONSE_MAX 1024

enum { MECH_NONE, MECH_PLAIN, MECH_LOGIN, MECH_CRAM };

/* LOGIN steps; the mechanism has no RFC, these are the usual prompts. */
enum { LOGIN_USER = 1, LOGIN_PASS, LOGIN_PASS_UNKNOWN };

static struct {
    unsigned char key[crypto_secretbox_KEYBYTES];
    int have_key;
    /* Verified against when the user does not exist, so that the time of
     * a failure does not tell which names are users. */
    char dummy_hash[crypto_pwhash_STRBYTES];
    int have_dummy;
} auth_state;

_Static_assert(CRAM_SEALED_LEN <= sizeof(((struct store_user *)0)->cram),
               "sealed CRAM-MD5 secret does not fit in struct store_user");

/* -------------------------------------------------------------- node key */

static int auth_read_key(int fd, const char *keyfile)
{
    struct stat st;
    size_t got = 0;

    if (fstat(fd, &st)) {
        log_err("node key %s: %s", keyfile, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode) || st.st_size != (off_t)sizeof auth_state.key) {
        log_err("node key %s: must be a regular file of exactly %zu bytes, found %lld bytes;"
                " restore it from a backup (or, if no user has a password yet, remove it"
                " and a new one is made)", keyfile, sizeof auth_state.key, (long long)st.st_size);
        return -1;
    }
    /* A loose mode is a warning, not a refusal: the operator may have a
     * reason, and refusing would stop all mail. */
    if (st.st_mode & 077)
        log_warn("node key %s is readable by group or others: run chmod 600 %s", keyfile, keyfile);
    while (got < sizeof auth_state.key) {
        ssize_t n = read(fd, auth_state.key + got, sizeof auth_state.key - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            log_err("node key %s: %s", keyfile, n ? strerror(errno) : "file shrank while reading");
            return -1;
        }
        got += (size_t)n;
    }
    return 0;
}

/* Makes the new directory entry durable too: a key that vanishes in a
 * crash takes every CRAM-MD5 secret with it. */
static void auth_sync_dir(const char *path)
{
    char dir[4096];
    char *slash;
    int fd;

    if (util_strlcpy(dir, path, sizeof dir) >= sizeof dir)
        return;
    slash = strrchr(dir, '/');
    if (!slash)
        util_strlcpy(dir, ".", sizeof dir);
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return;
    if (fsync(fd))
        log_warn("fsync of directory %s: %s", dir, strerror(errno));
    close(fd);
}

/* Creates the key with O_EXCL, so that two processes starting together
 * cannot both create one; the loser reads the winner's.  0 created, 1 it
 * exists already, -1 failed (logged). */
static int auth_create_key(const char *keyfile)
{
    unsigned char key[crypto_secretbox_KEYBYTES];
    size_t done = 0;
    int fd = open(keyfile, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

    if (fd < 0) {
        if (errno == EEXIST)
            return 1;
        log_err("cannot create node key %s: %s", keyfile, strerror(errno));
        return -1;
    }
    crypto_secretbox_keygen(key);
    while (done < sizeof key) {
        ssize_t n = write(fd, key + done, sizeof key - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto fail;
        done += (size_t)n;
    }
    /* The key must be on disk before any secret sealed with it is. */
    if (fsync(fd))
        goto fail;
    close(fd);
    auth_sync_dir(keyfile);
    sodium_memzero(key, sizeof key);
    log_info("created node key %s", keyfile);
    return 0;
fail:
    log_err("cannot write node key %s: %s", keyfile, strerror(errno));
    close(fd);
    unlink(keyfile);
    sodium_memzero(key, sizeof key);
    return -1;
}

int auth_init(const char *keyfile)
{
    int fd, rc;

    auth_free();
    /* O_NONBLOCK: a FIFO in the key's place must not hang the start; it
     * is refused below as not a regular file. */
    fd = open(keyfile, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 && errno == ENOENT) {
        if (auth_create_key(keyfile) < 0)
            return -1;
        fd = open(keyfile, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    }
    if (fd < 0) {
        log_err("cannot open node key %s: %s", keyfile, strerror(errno));
        return -1;
    }
    rc = auth_read_key(fd, keyfile);
    close(fd);
    if (rc) {
        sodium_memzero(auth_state.key, sizeof auth_state.key);
        return -1;
    }
    auth_state.have_key = 1;
    return 0;
}

void auth_free(void)
{
    sodium_memzero(auth_state.key, sizeof auth_state.key);
    auth_state.have_key = 0;
}

/* ------------------------------------------------------------- passwords */

/* 1..256 bytes, no CR or LF: a password must survive being typed as one
 * line into `mailnode user passwd` and sent in a protocol line. */
static int auth_password_ok(const char *pw, size_t len)
{
    if (len < 1 || len > AUTH_PW_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (pw[i] == '\0' || pw[i] == '\r' || pw[i] == '\n')
            return 0;
    return 1;
}

/* The HMAC-MD5 key block of a password (RFC 2104 2). */
static void auth_cram_key(const char *pw, size_t len, unsigned char key[CRAM_KEY_LEN])
{
    memset(key, 0, CRAM_KEY_LEN);
    if (len > CRAM_KEY_LEN)
        md5_digest(pw, len, key);
    else
        memcpy(key, pw, len);
}

static int auth_cram_seal(struct store_user *u, const unsigned char key[CRAM_KEY_LEN])
{
    unsigned char *nonce = u->cram;

    if (!auth_state.have_key) {
        log_err("no node key loaded: cannot store the CRAM-MD5 secret");
        return -1;
    }
    randombytes_buf(nonce, crypto_secretbox_NONCEBYTES);
    if (crypto_secretbox_easy(u->cram + crypto_secretbox_NONCEBYTES, key, CRAM_KEY_LEN, nonce, auth_state.key))
        return -1;
    u->cram_len = CRAM_SEALED_LEN;
    return 0;
}

/* 0 and the key block, or -1 if there is no secret or it does not open
 * under this node key (a different key file, or a tampered row). */
static int auth_cram_open(const struct store_user *u, unsigned char key[CRAM_KEY_LEN])
{
    if (!auth_state.have_key || u->cram_len != CRAM_SEALED_LEN)
        return -1;
    return crypto_secretbox_open_easy(key, u->cram + crypto_secretbox_NONCEBYTES,
                                      u->cram_len - crypto_secretbox_NONCEBYTES, u->cram, auth_state.key);
}

int auth_set_password(struct store_user *u, const char *password)
{
    size_t len = strnlen(password, AUTH_PW_MAX + 1);
    unsigned char key[CRAM_KEY_LEN];
    int rc;

    if (!auth_password_ok(password, len))
        return -1;
    if (crypto_pwhash_str_alg(u->pwhash, password, len, AUTH_PWHASH_OPSLIMIT,
                              AUTH_PWHASH_MEMLIMIT, crypto_pwhash_ALG_ARGON2ID13)) {
        log_err("password hashing failed: out of memory");
        return -1;
    }
    auth_cram_key(password, len, key);
    rc = auth_cram_seal(u, key);
    sodium_memzero(key, sizeof key);
    return rc;
}

static int auth_pw_verify(const struct store_user *u, const char *pw, size_t len)
{
    if (!auth_password_ok(pw, len))
        return 0;
    return crypto_pwhash_str_verify(u->pwhash, pw, len) == 0;
}

int auth_check_password(const struct store_user *u, const char *password)
{
    return auth_pw_verify(u, password, strnlen(password, AUTH_PW_MAX + 1));
}

/* Spends the time of one verification when there is no such user. */
static void auth_dummy_check(const char *pw, size_t len)
{
    if (!auth_state.have_dummy) {
        char junk[32];
        randombytes_buf(junk, sizeof junk);
        if (crypto_pwhash_str_alg(auth_state.dummy_hash, junk, sizeof junk, AUTH_PWHASH_OPSLIMIT,
                                  AUTH_PWHASH_MEMLIMIT, crypto_pwhash_ALG_ARGON2ID13))
            return;
        auth_state.have_dummy = 1;
    }
    if (auth_password_ok(pw, len)) {
        volatile int sink = crypto_pwhash_str_verify(auth_state.dummy_hash, pw, len);
        (void)sink;
    }
}

void auth_check_no_user(const char *password)
{
    auth_dummy_check(password, strnlen(password, AUTH_PW_MAX + 1));
}

int auth_login(const char *name, int name_ok, const char *password, struct store_user *u)
{
    int rc = name_ok ? store_user_get(name, u) : STORE_NOTFOUND;

    if (rc == STORE_NOTFOUND) {
        auth_check_no_user(password);
        return 0;
    }
    if (rc)
        return -1;
    /* An account backing off after many failures takes no password, not
     * even the right one; the answer is the same as for a wrong one. */
    if (auth_check_password(u, password) != 1 || limit_account_wait(name))
        return 0;
    limit_auth_ok(name);
    return 1;
}

int auth_sasl_account(const char *user, struct store_user *u)
{
    int rc = store_user_get(user, u);

    if (rc == STORE_NOTFOUND)
        return 0;
    if (rc)
        return -1;
    if (limit_account_wait(user))
        return 0;
    limit_auth_ok(user);
    return 1;
}

int auth_mech_listed(const char *mechs, const char *mech)
{
    size_t n = strlen(mech);
    for (const char *p = mechs; *p;) {
        while (*p == ' ')
            p++;
        size_t k = strcspn(p, " ");
        if (k == n && !strncasecmp(p, mech, n))
            return 1;
        p += k;
    }
    return 0;
}

/* ------------------------------------------------------------------ SASL */

/* User names are stored lower case, [a-z0-9._-], at most USER_MAX. */
static int auth_user_name(const char *in, size_t len, char out[USER_MAX + 1])
{
    if (len < 1 || len > USER_MAX)
        return -1;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return -1;
        out[i] = c;
    }
    out[len] = '\0';
    return 0;
}

/* Keeps a printable copy of a name that is not a valid user name, for the
 * session's log line: the bytes came off the wire. */
static void auth_note_bad_user(struct auth_sasl *s, const char *in, size_t len)
{
    size_t n = len < USER_MAX ? len : USER_MAX;
    for (size_t i = 0; i < n; i++)
        s->user[i] = (in[i] > 0x20 && in[i] < 0x7f) ? in[i] : '?';
    s->user[n] = '\0';
}

/* Records the claimed name in s->user; 0 if it can be a user, -1 if not. */
static int auth_claim_user(struct auth_sasl *s, const char *in, size_t len)
{
    if (auth_user_name(in, len, s->user) == 0)
        return 0;
    auth_note_bad_user(s, in, len);
    return -1;
}

/* Base64 (RFC 4648 4) with or without the trailing padding: clients
 * differ, and the meaning is the same.  0, or -1 if it is not base64 or
 * does not fit. */
static int auth_b64_decode(const char *in, unsigned char *out, size_t cap, size_t *outlen)
{
    size_t len = strnlen(in, AUTH_RESPONSE_MAX * 2);
    int variant = len % 4 == 0 ? sodium_base64_VARIANT_ORIGINAL
                               : sodium_base64_VARIANT_ORIGINAL_NO_PADDING;
    const char *end = NULL;

    if (len >= AUTH_RESPONSE_MAX * 2)
        return -1;
    if (sodium_base642bin(out, cap, in, len, NULL, outlen, &end, variant) || end != in + len)
        return -1;
    return 0;
}

static int auth_b64_encode(const void *in, size_t len, char *out, size_t outlen)
{
    if (sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL) > outlen)
        return -1;
    sodium_bin2base64(out, outlen, in, len, sodium_base64_VARIANT_ORIGINAL);
    return 0;
}

/* Looks the (already claimed) user up and checks the password; for a name
 * that is no user it spends the same time and fails the same way. */
static int auth_verify_password(struct auth_sasl *s, int name_ok, const char *pw, size_t len)
{
    struct store_user u;
    int rc = STORE_NOTFOUND, ok = 0;

    if (name_ok)
        rc = store_user_get(s->user, &u);
    if (rc == 0) {
        ok = auth_pw_verify(&u, pw, len);
        sodium_memzero(&u, sizeof u);
    } else {
        if (rc != STORE_NOTFOUND)
            log_err("authentication of %s: cannot read the user table", s->user);
        auth_dummy_check(pw, len);
    }
    return ok ? AUTH_OK : AUTH_FAIL;
}

/* RFC 4616 2: message = [authzid] NUL authcid NUL passwd. */
static int auth_plain_response(struct auth_sasl *s, const char *b64)
{
    unsigned char buf[AUTH_RESPONSE_MAX];
    const char *zid, *cid, *pw, *nul1, *nul2, *end;
    size_t len;
    int rc, name_ok;

    if (auth_b64_decode(b64, buf, sizeof buf, &len))
        return AUTH_SYNTAX;
    zid = (const char *)buf;
    end = zid + len;
    nul1 = memchr(zid, '\0', len);
    nul2 = nul1 ? memchr(nul1 + 1, '\0', (size_t)(end - nul1 - 1)) : NULL;
    if (!nul2 || memchr(nul2 + 1, '\0', (size_t)(end - nul2 - 1))) {
        sodium_memzero(buf, sizeof buf);
        return AUTH_SYNTAX;
    }
    cid = nul1 + 1;
    pw = nul2 + 1;
    name_ok = auth_claim_user(s, cid, (size_t)(nul2 - cid)) == 0;
    rc = auth_verify_password(s, name_ok, pw, (size_t)(end - pw));
    /* RFC 4616 2: acting as another identity is not offered, so an
     * authzid other than the authcid itself fails like a bad password. */
    if (rc == AUTH_OK && nul1 != zid) {
        char z[USER_MAX + 1];
        if (auth_user_name(zid, (size_t)(nul1 - zid), z) || strcmp(z, s->user))
            rc = AUTH_FAIL;
    }
    sodium_memzero(buf, sizeof buf);
    return rc;
}

static int auth_login_response(struct auth_sasl *s, const char *b64, char *out, size_t outlen)
{
    unsigned char buf[AUTH_RESPONSE_MAX];
    size_t len;
    int rc;

    if (auth_b64_decode(b64, buf, sizeof buf, &len))
        return AUTH_SYNTAX;
    if (s->step == LOGIN_USER) {
        s->step = auth_claim_user(s, (const char *)buf, len) == 0 ? LOGIN_PASS : LOGIN_PASS_UNKNOWN;
        util_strlcpy(out, "UGFzc3dvcmQ6", outlen);        /* "Password:" */
        return AUTH_CONTINUE;
    }
    rc = auth_verify_password(s, s->step == LOGIN_PASS, (const char *)buf, len);
    sodium_memzero(buf, sizeof buf);
    return rc;
}

/* RFC 2195 2: the challenge has the form of a msg-id, unique per use.
 * The random part is what makes it unique; the host name is cut short if
 * it would not fit. */
static int auth_cram_challenge(struct auth_sasl *s, char *out, size_t outlen)
{
    const char *host = conf && conf->hostname && conf->hostname[0] ? conf->hostname : "localhost";
    char head[64];
    int n = snprintf(head, sizeof head, "<%lu.%lld", (unsigned long)randombytes_random(),
                     (long long)util_now());
    int room = (int)sizeof s->challenge - n - 3;   /* '@', '>', NUL */

    snprintf(s->challenge, sizeof s->challenge, "%s@%.*s>", head, room, host);
    if (auth_b64_encode(s->challenge, strlen(s->challenge), out, outlen))
        return AUTH_FAIL;
    return AUTH_CONTINUE;
}

/* RFC 2195 2: the response is the user name, a space, and the HMAC-MD5
 * of the challenge keyed with the password, as 32 lower-case hex digits. */
static int auth_cram_response(struct auth_sasl *s, const char *b64)
{
    unsigned char buf[AUTH_RESPONSE_MAX], want[16], got[16], key[CRAM_KEY_LEN];
    struct store_user u;
    const char *sp;
    size_t len, glen;
    int name_ok, rc = STORE_NOTFOUND, ok = 0;

    if (auth_b64_decode(b64, buf, sizeof buf - 1, &len))
        return AUTH_SYNTAX;
    buf[len] = '\0';
    sp = memchr(buf, ' ', len);
    if (!sp || (const unsigned char *)sp + 1 + 32 != buf + len ||
        sodium_hex2bin(got, sizeof got, sp + 1, 32, NULL, &glen, NULL) || glen != sizeof got)
        return AUTH_SYNTAX;
    name_ok = auth_claim_user(s, (const char *)buf, (size_t)((const unsigned char *)sp - buf)) == 0;
    if (name_ok)
        rc = store_user_get(s->user, &u);
    if (rc == 0 && auth_cram_open(&u, key) == 0) {
        hmac_md5(key, sizeof key, s->challenge, strlen(s->challenge), want);
        ok = sodium_memcmp(want, got, sizeof want) == 0;
    } else {
        if (rc == 0)
            log_warn("CRAM-MD5 secret of %s cannot be opened with the node key: set the"
                     " password again with `mailnode user passwd %s`", s->user, s->user);
        else if (rc != STORE_NOTFOUND)
            log_err("authentication of %s: cannot read the user table", s->user);
        /* The same work as a real check, so the time tells nothing. */
        hmac_md5(buf, len, s->challenge, strlen(s->challenge), want);
        volatile int sink = sodium_memcmp(want, got, sizeof want);
        (void)sink;
    }
    sodium_memzero(&u, sizeof u);
    sodium_memzero(key, sizeof key);
    sodium_memzero(buf, sizeof buf);
    return ok ? AUTH_OK : AUTH_FAIL;
}

/* Steps a mechanism with one client response (base64 text). */
static int auth_respond(struct auth_sasl *s, const char *b64, char *out, size_t outlen)
{
    int rc;

    switch (s->mech) {
    case MECH_PLAIN:
        rc = auth_plain_response(s, b64);
        break;
    case MECH_LOGIN:
        rc = auth_login_response(s, b64, out, outlen);
        break;
    case MECH_CRAM:
        rc = auth_cram_response(s, b64);
        break;
    default:
        rc = AUTH_SYNTAX;
        break;
    }
    /* Done either way: a CRAM challenge is good for one answer only. */
    if (rc != AUTH_CONTINUE) {
        s->mech = MECH_NONE;
        sodium_memzero(s->challenge, sizeof s->challenge);
    }
    return rc;
}

int auth_sasl_start(struct auth_sasl *s, const char *mech, const char *initial,
                    char *out, size_t outlen)
{
    memset(s, 0, sizeof *s);
    if (outlen)
        out[0] = '\0';
    /* RFC 4422 3.1 names mechanisms in upper case; SMTP and POP3 clients
     * are not always so careful, and nothing is lost by accepting them. */
    if (!strcasecmp(mech, "PLAIN"))
        s->mech = MECH_PLAIN;
    else if (!strcasecmp(mech, "LOGIN"))
        s->mech = MECH_LOGIN;
    else if (!strcasecmp(mech, "CRAM-MD5"))
        s->mech = MECH_CRAM;
    else
        return AUTH_BADMECH;
    /* RFC 4954 4: "=" is an initial response of zero length. */
    if (initial && !strcmp(initial, "="))
        initial = "";
    if (initial && !strcmp(initial, "*"))
        return AUTH_CANCEL;

    switch (s->mech) {
    case MECH_PLAIN:
        if (initial)
            return auth_respond(s, initial, out, outlen);
        return AUTH_CONTINUE;                       /* "334 " and wait */
    case MECH_LOGIN:
        s->step = LOGIN_USER;
        if (initial)
            return auth_respond(s, initial, out, outlen);
        util_strlcpy(out, "VXNlcm5hbWU6", outlen);  /* "Username:" */
        return AUTH_CONTINUE;
    default:
        /* RFC 4954 4: the server speaks first in CRAM-MD5, so an initial
         * response is a protocol error (501). */
        if (initial)
            return AUTH_SYNTAX;
        return auth_cram_challenge(s, out, outlen);
    }
}

int auth_sasl_step(struct auth_sasl *s, const char *line, char *out, size_t outlen)
{
    if (outlen)
        out[0] = '\0';
    /* RFC 4954 4, RFC 5034 4: a lone "*" cancels the exchange. */
    if (!strcmp(line, "*")) {
        s->mech = MECH_NONE;
        sodium_memzero(s->challenge, sizeof s->challenge);
        return AUTH_CANCEL;
    }
    return auth_respond(s, line, out, outlen);
}

const char *auth_mechs(int cleartext_ok)
{
    return cleartext_ok ? "PLAIN LOGIN CRAM-MD5" : "CRAM-MD5";
}

/* ------------------------------------------------------- client side */

int auth_client_plain(const char *user, const char *password, char *out, size_t n)
{
    unsigned char raw[600];
    size_t ul = strlen(user), pl = strlen(password);

    /* RFC 4616: an empty authorization identity, then user and password. */
    if (ul + pl + 2 > sizeof raw || sodium_base64_ENCODED_LEN(ul + pl + 2, sodium_base64_VARIANT_ORIGINAL) > n)
        return -1;
    raw[0] = '\0';
    memcpy(raw + 1, user, ul);
    raw[1 + ul] = '\0';
    memcpy(raw + 2 + ul, password, pl);
    sodium_bin2base64(out, n, raw, ul + pl + 2, sodium_base64_VARIANT_ORIGINAL);
    sodium_memzero(raw, sizeof raw);
    return 0;
}

int auth_client_cram(const char *user, const char *password, const char *challenge64, char *out, size_t n)
{
    unsigned char chal[512], digest[16];
    char hex[33], line[USER_MAX + 300];
    size_t clen;

    /* RFC 2195 2: base64(user SP hex(HMAC-MD5(password, challenge))). */
    if (sodium_base642bin(chal, sizeof chal, challenge64, strlen(challenge64), NULL, &clen, NULL,
                          sodium_base64_VARIANT_ORIGINAL))
        return -1;
    hmac_md5(password, strlen(password), chal, clen, digest);
    sodium_bin2hex(hex, sizeof hex, digest, sizeof digest);
    int l = snprintf(line, sizeof line, "%s %s", user, hex);
    if (l < 0 || (size_t)l >= sizeof line ||
        sodium_base64_ENCODED_LEN((size_t)l, sodium_base64_VARIANT_ORIGINAL) > n)
        return -1;
    sodium_bin2base64(out, n, (unsigned char *)line, (size_t)l, sodium_base64_VARIANT_ORIGINAL);
    return 0;
}
