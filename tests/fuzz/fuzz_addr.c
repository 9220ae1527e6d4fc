/*
 * fuzz_addr.c: the RFC 5321 path and mailbox parsers (addr.c).
 *
 * The input is handed over as a (pointer, length) pair in a buffer of
 * exactly that size, so a read past the end is an ASan report.  Checked:
 * the parser never claims more bytes than it was given, its results are
 * NUL-terminated and within their limits, and what it produces parses
 * again to the same address (a stored address must be usable on the
 * wire as it is).
 */
#include "../../mailnode.c"
#include "fuzz_common.h"

static void fuzz_check_addr(const struct addr *a)
{
    if (memchr(a->full, '\0', sizeof a->full) == NULL ||
        memchr(a->local, '\0', sizeof a->local) == NULL ||
        memchr(a->domain, '\0', sizeof a->domain) == NULL)
        abort();
    if (strlen(a->full) > SMTP_PATH_MAX - 2)
        abort();
    for (const char *p = a->domain; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            abort();
    for (const char *p = a->full; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            abort();
}

/* The canonical form parses again, to itself. */
static void fuzz_roundtrip(const struct addr *a)
{
    char path[ADDR_MAX + 2];
    struct addr b;
    size_t used;
    int n;

    if (a->null_path || !a->full[0])
        return;
    n = snprintf(path, sizeof path, "<%s>", a->full);
    if (n < 0 || (size_t)n >= sizeof path)
        abort();
    if (addr_parse_path(path, (size_t)n, 0, &b, &used) || used != (size_t)n)
        abort();
    if (strcmp(a->full, b.full) || strcmp(a->domain, b.domain))
        abort();
    /* "<postmaster>" has no domain and no bare form. */
    if (a->domain[0] && addr_parse_mailbox(a->full, &b) || strcmp(a->full, b.full))
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    MN_UNUSED(argc);
    MN_UNUSED(argv);
    fuzz_quiet();
    fuzz_conf(NULL);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct addr a;
    size_t used;
    char *copy;

    for (int allow_null = 0; allow_null <= 1; allow_null++) {
        copy = malloc(size ? size : 1);
        memcpy(copy, data, size);
        memset(&a, 0x55, sizeof a);
        used = (size_t)-1;
        if (addr_parse_path(copy, size, allow_null, &a, &used) == 0) {
            if (used > size || used < 2 || copy[0] != '<' || copy[used - 1] != '>')
                abort();
            if (a.null_path && !allow_null)
                abort();
            fuzz_check_addr(&a);
            fuzz_roundtrip(&a);
        }
        free(copy);
    }

    /* The bare mailbox form takes a C string. */
    copy = malloc(size + 1);
    memcpy(copy, data, size);
    copy[size] = '\0';
    memset(&a, 0x55, sizeof a);
    if (addr_parse_mailbox(copy, &a) == 0) {
        fuzz_check_addr(&a);
        fuzz_roundtrip(&a);
    }
    free(copy);
    return 0;
}
