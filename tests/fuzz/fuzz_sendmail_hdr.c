/*
 * fuzz_sendmail_hdr.c: what `mailnode sendmail` parses from its input
 * (cli_sendmail.c): the header section (field names, folding, the Unix
 * "From " line, the "." line), the address lists of To:, Cc: and Bcc:
 * taken with -t (display names, comments, quoted strings, groups), the
 * added fields (From: with a -F name), and the body's line ends.
 *
 * Byte 0 sets -i (bit 0) and -t (bit 1); with bit 2 the next line is a
 * -F full name.  The rest is standard input.  Checked: every recipient
 * is a valid address, the kept fields lie inside the header buffer and
 * end in CRLF, and the body spool holds only CRLF line ends.  The address
 * list splitter also gets the whole input, as a command-line argument.
 */
#include "../../mailnode.c"
#include "fuzz_common.h"

#include <sys/mman.h>

static int fuzz_fd = -1;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    MN_UNUSED(argc);
    MN_UNUSED(argv);
    fuzz_quiet();
    fuzz_conf("max_recipients = 50\n");
    fuzz_fd = memfd_create("mailnode-fuzz.stdin", MFD_CLOEXEC);
    if (fuzz_fd < 0)
        fuzz_die("memfd_create");
    return 0;
}

static int fuzz_count_addr(void *arg, const char *addr)
{
    size_t n = strlen(addr);
    /* (a NUL byte in the input can make a unit look empty) */
    if (n > ADDR_MAX + 7)
        abort();
    (*(int *)arg)++;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sendmail *m;
    char name[128] = "";
    const uint8_t *in = data;
    size_t n = size;
    int rc, count = 0;

    if (size < 1)
        return 0;
    in++;
    n--;
    if (data[0] & 4) {
        const uint8_t *lf = memchr(in, '\n', n);
        size_t k = lf ? (size_t)(lf - in) : n;
        if (k >= sizeof name)
            k = sizeof name - 1;
        memcpy(name, in, k);
        name[k] = '\0';
        in += lf ? (size_t)(lf - in) + 1 : n;
        n = size - (size_t)(in - data);
    }
    if (ftruncate(fuzz_fd, 0) || pwrite(fuzz_fd, in, n, 0) != (ssize_t)n ||
        lseek(fuzz_fd, 0, SEEK_SET) != 0)
        fuzz_die("writing the memfd");

    m = sendmail_new(fuzz_fd);
    if (!m)
        fuzz_die("sendmail_new");
    m->ignore_dots = data[0] & 1;
    m->opt_t = (data[0] & 2) != 0;
    m->fullname = name;
    util_strlcpy(m->login, "root@fuzz.test", sizeof m->login);
    rc = sendmail_read(m);
    if (rc == 0) {
        for (size_t i = 0; i < m->nf; i++) {
            const struct sendmail_field *f = &m->f[i];
            if (f->off + f->len > m->hlen || f->len < 2 || f->name_len < 1 ||
                memcmp(m->hdr + f->off + f->len - 2, "\r\n", 2))
                abort();
        }
        for (size_t i = 0; i < m->nrcpt; i++) {
            struct addr a;
            if (addr_parse_mailbox(m->rcpt[i], &a))
                abort();
        }
        util_qid(m->qid);
        if (sendmail_added_fields(m))
            abort();
        if (sendmail_read_body(m) == 0 && m->spfd < 0) {
            for (size_t i = 0; i < m->splen; i++) {
                if (m->sp[i] == '\r' && (i + 1 >= m->splen || m->sp[i + 1] != '\n'))
                    abort();
                if (m->sp[i] == '\n' && (i == 0 || m->sp[i - 1] != '\r'))
                    abort();
            }
        }
    }
    sendmail_free(m);

    /* The same bytes as a recipient argument on the command line. */
    sendmail_addr_list((const char *)in, n, fuzz_count_addr, &count);
    return 0;
}
