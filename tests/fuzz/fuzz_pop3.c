/*
 * fuzz_pop3.c: a whole POP3 session (pop3.c) fed with the input as what
 * the client sends: USER/PASS, AUTH (PLAIN, LOGIN, CRAM-MD5), then
 * STAT, LIST, UIDL, RETR, TOP, DELE, RSET, QUIT against a maildrop that
 * holds a few messages (refilled when a QUIT deleted them).  The first
 * byte of the input chooses the client address and the size of the
 * pieces the input arrives in (see fuzz_session).
 */
#include "../../mailnode.c"
#include "fuzz_common.h"

static const char *fuzz_msgs[] = {
    "From: a@remote.test\r\nTo: alice@example.test\r\nSubject: one\r\n\r\nHello.\r\n",
    "From: b@remote.test\r\nSubject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n",
    "Subject: no final line end\r\n\r\nline 1\r\nline 2\r\nline 3",
    "Subject: long\r\n\r\n"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
    "b\r\nc\r\nd\r\ne\r\nf\r\n",
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned runs;

    if (++runs % 4096 == 0)
        fuzz_store_reset();
    fuzz_mbox_fill(fuzz_msgs, MN_NELEM(fuzz_msgs));
    fuzz_session(data, size, pop3_accept, LISTEN_POP3);
    /* The maildrop lock dies with the session. */
    if (pop3_locks.n)
        abort();
    return 0;
}
