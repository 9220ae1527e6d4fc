/*
 * fuzz_dns.c: what the resolver keeps of a DNS answer (dns.c).
 *
 * The input is one DNS message as a server could send it, in a buffer of
 * exactly its size, so a read past the end is an ASan report.  It goes
 * through every digest an answer meets in dns.c: the answer-section walk
 * (names expanded by c-ares' ares_expand_name, the CNAME chain followed
 * from the question name, loops cut), the MX records, the A and AAAA
 * records, and then the routing of the exchanges found (order, literals,
 * host-name check).  Checked: counts within their caps, names NUL-terminated, lower
 * case, at most DNS_NAME_MAX long, addresses of the asked family, MX order
 * by preference.  The seed corpus (tests/fuzz/corpus/fuzz_dns, written by
 * tests/fuzz/dns_seeds.py) holds answers as real servers write them and
 * malformed ones: pointer loops and forward pointers, counts that lie,
 * cuts, oversized names, 0x40/0x80 label types.
 */
#include "../../mailnode.c"
#include "fuzz_common.h"

static void fuzz_check_name(const char *s)
{
    if (!memchr(s, '\0', DNS_NAME_MAX + 1) || strlen(s) > DNS_NAME_MAX)
        abort();
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'Z')
            abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    if (sodium_init() < 0)              /* the MX tie-break draws random numbers */
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct dns_mx mx[DNS_MSG_MAX];
    static struct dns_query q;
    struct dns_addr a[DNS_MSG_MAX];
    unsigned char *msg;
    int n = -1, rc;

    if (size > 65535)
        return 0;
    msg = malloc(size ? size : 1);
    if (!msg)
        return 0;
    memcpy(msg, data, size);

    rc = dns_answer_mx(msg, (int)size, mx, DNS_MSG_MAX, &n);
    if (n < 0 || n > DNS_MSG_MAX || (rc != DNS_ANS_OK && n != 0 && rc != DNS_ANS_BAD))
        abort();
    if (rc == DNS_ANS_OK) {
        for (int i = 0; i < n; i++)
            fuzz_check_name(mx[i].host);
        memset(&q, 0, sizeof q);
        query_take_mx(&q, mx, n);
        if (q.nlook < 0 || q.nlook > DNS_MAX_HOSTS)
            abort();
        for (int i = 0; i < q.nlook; i++) {
            fuzz_check_name(q.look[i].name);
            if (!dns_hostname_ok(q.look[i].name) || (i && q.look[i - 1].pref > q.look[i].pref))
                abort();
        }
    }
    for (int fam = 0; fam < 2; fam++) {
        int family = fam ? AF_INET6 : AF_INET;
        n = -1;
        rc = dns_answer_addrs(msg, (int)size, family, a, DNS_MSG_MAX, &n);
        if (n < 0 || n > DNS_MSG_MAX || (rc != DNS_ANS_OK && n != 0))
            abort();
        for (int i = 0; i < n; i++)
            if (a[i].family != family)
                abort();
    }
    free(msg);
    return 0;
}
