/*
 * fuzz_sasl.c: SASL exchanges (auth.c) as SMTP AUTH and POP3 AUTH run
 * them: PLAIN, LOGIN and CRAM-MD5, with or without an initial response,
 * then client lines until the exchange ends.  The users exist in a
 * scratch database; alice's password is "secret", so the success paths
 * of PLAIN and LOGIN are reachable from the seeds.
 *
 * Input: byte 0 picks the mechanism (the name as sent, including wrong
 * case and unknown names) and whether the first line is an initial
 * response; the rest is lines separated by LF.  Checked: the challenge
 * text always fits and is NUL-terminated, a finished exchange stays
 * finished, and AUTH_OK names a user that exists.
 */
#include "../../mailnode.c"
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    MN_UNUSED(argc);
    MN_UNUSED(argv);
    fuzz_quiet();
    fuzz_conf(NULL);
    fuzz_store_open();
    return 0;
}

/* The next line of the input (up to LF, or the end) as a C string. */
static char *fuzz_line(const uint8_t **p, const uint8_t *end)
{
    const uint8_t *lf = memchr(*p, '\n', (size_t)(end - *p));
    size_t n = (size_t)((lf ? lf : end) - *p);
    char *s = malloc(n + 1);

    memcpy(s, *p, n);
    s[n] = '\0';
    *p = lf ? lf + 1 : end;
    return s;
}

static void fuzz_check_out(const char *out, size_t cap)
{
    if (!memchr(out, '\0', cap))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *mechs[] = { "PLAIN", "LOGIN", "CRAM-MD5", "plain", "Login", "cram-md5",
                                   "DIGEST-MD5", "" };
    const uint8_t *p, *end = data + size;
    struct auth_sasl s;
    char out[256], *line;
    int rc, steps = 0;

    if (size < 1)
        return 0;
    p = data + 1;
    memset(out, 0x55, sizeof out);
    if (data[0] & 0x80) {
        line = fuzz_line(&p, end);
        rc = auth_sasl_start(&s, mechs[data[0] & 7], line, out, sizeof out);
        free(line);
    } else {
        rc = auth_sasl_start(&s, mechs[data[0] & 7], NULL, out, sizeof out);
    }
    fuzz_check_out(out, sizeof out);
    while (rc == AUTH_CONTINUE && p < end && steps++ < 16) {
        line = fuzz_line(&p, end);
        memset(out, 0x55, sizeof out);
        rc = auth_sasl_step(&s, line, out, sizeof out);
        fuzz_check_out(out, sizeof out);
        free(line);
    }
    if (rc == AUTH_OK) {
        struct store_user u;
        if (store_user_get(s.user, &u))
            abort();
        /* The mechanism is spent: another response is not taken. */
        if (auth_sasl_step(&s, "AGFsaWNlAHNlY3JldA==", out, sizeof out) == AUTH_OK)
            abort();
    }
    if (!memchr(s.user, '\0', sizeof s.user))
        abort();
    if (store_in_txn())
        store_commit();
    return 0;
}
