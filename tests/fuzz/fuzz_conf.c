/*
 * fuzz_conf.c: the configuration file reader (conf.c): `key = value`
 * lines with every value type (strings, durations, sizes, numbers,
 * booleans, domain lists, CIDR lists).  The input is the file, written
 * to a memfd and read through /proc/self/fd like any other path.  A
 * configuration that loads is used the way the daemon uses it (local
 * domains, relay networks) and freed; one that does not must say why.
 */
#include "../../mailnode.c"
#include "fuzz_common.h"

#include <sys/mman.h>

static int fuzz_fd = -1;
static char fuzz_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    MN_UNUSED(argc);
    MN_UNUSED(argv);
    fuzz_quiet();
    fuzz_fd = memfd_create("mailnode-fuzz.conf", MFD_CLOEXEC);
    if (fuzz_fd < 0)
        fuzz_die("memfd_create");
    snprintf(fuzz_path, sizeof fuzz_path, "/proc/self/fd/%d", fuzz_fd);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct conf c, *saved = conf;
    char err[1024];
    struct sockaddr_storage ss;
    socklen_t sl;

    if (ftruncate(fuzz_fd, 0) || pwrite(fuzz_fd, data, size, 0) != (ssize_t)size)
        fuzz_die("writing the memfd");
    err[0] = '\0';
    if (conf_load(fuzz_path, &c, err, sizeof err) == 0) {
        if (!c.hostname || !c.hostname[0] || !c.database || !c.keyfile || !c.control)
            abort();
        for (int i = 0; i < LISTEN_N; i++)
            if (!c.listen[i])
                abort();
        conf = &c;
        conf_is_local_domain("example.test");
        if (util_sockaddr_parse("127.0.0.1", 25, &ss, &sl) == 0)
            conf_relay_allowed(&ss);
        if (util_sockaddr_parse("2001:db8::1", 25, &ss, &sl) == 0)
            conf_relay_allowed(&ss);
        conf = saved;
    } else if (!err[0] || !memchr(err, '\0', sizeof err)) {
        abort();
    }
    conf_free(&c);
    return 0;
}
