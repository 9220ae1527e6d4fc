/*
 * fuzz_imap.c: a whole IMAP session (imap*.c) fed with the input as what
 * the client sends: LOGIN/AUTHENTICATE, literals and LITERAL+, then any
 * command against a mailbox that holds plain, multipart and nested
 * messages (refilled when an EXPUNGE emptied it).  The first byte of the
 * input chooses the client address and the size of the pieces the input
 * arrives in (see fuzz_session).  A second target in the same run feeds
 * the input to the MIME structure parser alone (imap_mime.c) and checks
 * that every part it reports lies inside the message.
 */
#include "../../mailnode.c"
#include "fuzz_common.h"

static const char *fuzz_msgs[] = {
    "From: A <a@remote.test>\r\nTo: alice@example.test, \"B\" <b@x>\r\nSubject: one\r\n\r\nHello.\r\n",
    "Subject: parts\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\npre\r\n--b\r\n"
    "Content-Type: text/plain\r\n\r\none\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
    "Subject: inner\r\nContent-Type: multipart/alternative; boundary=c\r\n\r\n--c\r\n\r\nx\r\n"
    "--c--\r\n--b--\r\nepilogue\r\n",
    "Subject: no final line end\r\n\r\nline 1\r\nline 2",
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    MN_UNUSED(argc);
    MN_UNUSED(argv);
    fuzz_quiet();
    fuzz_conf("auth.fail_delay = 0\nauth.max_failures = 3\n");
    if (loop_init())
        fuzz_die("loop_init");
    fuzz_store_open();
    fuzz_mbox_fill(fuzz_msgs, MN_NELEM(fuzz_msgs));
    return 0;
}

/* The parser alone: offsets of every part within the input. */
static void fuzz_mime(const uint8_t *data, size_t size)
{
    struct imap_mime *m = imap_mime_new();
    struct store_imap_cache c;
    size_t off = 0, step = size ? (data[0] % 61) + 1 : 1;

    if (!m)
        fuzz_die("imap_mime_new");
    while (off < size) {
        size_t k = size - off < step ? size - off : step;
        imap_mime_feed(m, data + off, k);
        off += k;
    }
    if (imap_mime_finish(m, &c) == 0) {
        for (const char *p = c.parts; p && *p;) {
            long long h, b, e;
            int parent;
            char t;
            if (sscanf(p, "%d %c %lld %lld %lld", &parent, &t, &h, &b, &e) != 5)
                abort();
            if (h < 0 || h > b || b > e || e > (long long)size)
                abort();
            p = strchr(p, '\n');
            p = p ? p + 1 : NULL;
        }
        store_imap_cache_free(&c);
    }
    imap_mime_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned runs;

    if (++runs % 4096 == 0)
        fuzz_store_reset();
    fuzz_mime(data, size);
    fuzz_mbox_fill(fuzz_msgs, MN_NELEM(fuzz_msgs));
    fuzz_session(data, size, imap_accept, LISTEN_IMAP);
    store_turn_end();
    return 0;
}
