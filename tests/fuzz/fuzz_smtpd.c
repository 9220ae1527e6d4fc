/*
 * fuzz_smtpd.c: a whole SMTP server session (smtpd.c) fed with the input
 * as the bytes a client sends: command lines and ESMTP parameters (SIZE,
 * BODY, RET, ENVID, NOTIFY, ORCPT), AUTH exchanges, DATA and BDAT, on the
 * SMTP or the submission listener, from loopback or from outside the
 * relay networks.  The first byte of the input chooses those (see
 * fuzz_session); sanitizers do the checking.
 */
#include "../../mailnode.c"
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    MN_UNUSED(argc);
    MN_UNUSED(argv);
    fuzz_quiet();
    /* No AUTH delays (timers would stall the harness), a small size limit
     * so that 552 is reachable, few recipients so that 452 is. */
    fuzz_conf("auth.fail_delay = 0\nauth.max_failures = 3\nmessage_size_limit = 8K\n"
              "max_recipients = 5\nmax_received = 5\nvrfy = yes\nexpn = yes\n");
    if (loop_init())
        fuzz_die("loop_init");
    fuzz_store_open();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned runs;

    if (++runs % 4096 == 0)
        fuzz_store_reset();
    fuzz_session(data, size, smtpd_accept, LISTEN_SMTP);
    /* Every session was freed with its connection. */
    if (all_sessions)
        abort();
    return 0;
}
