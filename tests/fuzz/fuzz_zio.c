/*
 * fuzz_zio.c: the inflate path of COMPRESS DEFLATE (zio.c) under an SMTP
 * server session.  The session starts compressed (as after "COMPRESS
 * DEFLATE" and its 220), and the input is what the client sends:
 *
 *   first byte bit 7 clear: the rest goes on the wire as it is, a
 *       compressed stream that is corrupt, truncated, a bomb, or valid by
 *       luck;
 *   first byte bit 7 set: the rest is SMTP text that the harness deflates
 *       (raw, a sync flush after every 97 octets), so that the session
 *       above the inflater is reached with every kind of command.
 *
 * The other bits of the first byte choose the listener, address and piece
 * size as in fuzz_session.  Sanitizers do the checking; the harness checks
 * that no session outlives its connection.
 */
#include "../../mailnode.c"
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    MN_UNUSED(argc);
    MN_UNUSED(argv);
    fuzz_quiet();
    fuzz_conf("auth.fail_delay = 0\nauth.max_failures = 3\nmessage_size_limit = 8K\n"
              "max_recipients = 5\nmax_received = 5\n");
    if (loop_init())
        fuzz_die("loop_init");
    fuzz_store_open();
    return 0;
}

static void fuzz_zio_accept(struct conn *c)
{
    smtpd_accept(c);
    if (!c->dead && zio_start(c))
        abort();
}

/* Raw deflate of in, a sync flush every 97 octets, into a new buffer. */
static uint8_t *fuzz_deflate(const uint8_t *in, size_t n, size_t *outn)
{
    z_stream z;
    size_t cap = n * 2 + 64 + (n / 97 + 1) * 16, used = 0;
    uint8_t *out = malloc(cap);

    memset(&z, 0, sizeof z);
    if (!out || deflateInit2(&z, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        abort();
    for (size_t off = 0; off < n || off == 0; off += 97) {
        size_t k = n - off < 97 ? n - off : 97;
        z.next_in = (Bytef *)(uintptr_t)(in + off);
        z.avail_in = (uInt)k;
        z.next_out = out + used;
        z.avail_out = (uInt)(cap - used);
        if (deflate(&z, Z_SYNC_FLUSH) != Z_OK || z.avail_in)
            abort();
        used = cap - z.avail_out;
        if (n == 0)
            break;
    }
    deflateEnd(&z);
    *outn = used;
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned runs;

    if (size < 1)
        return 0;
    if (++runs % 4096 == 0)
        fuzz_store_reset();
    if (data[0] & 0x80) {
        size_t n;
        uint8_t *z = fuzz_deflate(data + 1, size - 1, &n);
        uint8_t *in = malloc(n + 1);
        if (!in)
            abort();
        in[0] = data[0];
        memcpy(in + 1, z, n);
        fuzz_session(in, n + 1, fuzz_zio_accept, LISTEN_SMTP);
        free(z);
        free(in);
    } else {
        fuzz_session(data, size, fuzz_zio_accept, LISTEN_SMTP);
    }
    if (all_sessions)
        abort();
    return 0;
}
