/*
 * conf.c: the configuration file, `key = value` lines with `#` comments,
 * over embedded defaults that serve when there is no file at all.
 */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <pwd.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/stat.h>

MN_PRIVATE struct conf *conf;

enum conf_type { T_STR, T_DURATION, T_SIZE, T_INT, T_BOOL, T_DOMAINS, T_CIDRS };

struct conf_key {
    const char *name;
    enum conf_type type;
    size_t off;                         /* field in struct conf */
    size_t count_off;                   /* for lists: the count field */
    const char *def;                    /* default, parsed like file text */
};

#define F(field) offsetof(struct conf, field)

/* The embedded defaults: loopback listeners on unprivileged ports, so that
 * `mailnode run` works as any user with no file at all. */
static const struct conf_key keys[] = {
    { "hostname", T_STR, F(hostname), 0, NULL },
    { "database", T_STR, F(database), 0, "./mailnode.db" },
    { "keyfile", T_STR, F(keyfile), 0, NULL },
    { "control", T_STR, F(control), 0, NULL },
    { "listen.smtp", T_STR, F(listen[LISTEN_SMTP]), 0, "127.0.0.1:2525" },
    { "listen.submission", T_STR, F(listen[LISTEN_SUBMISSION]), 0, "127.0.0.1:5587" },
    { "listen.odmr", T_STR, F(listen[LISTEN_ODMR]), 0, "" },
    { "listen.pop3", T_STR, F(listen[LISTEN_POP3]), 0, "127.0.0.1:1110" },
    { "listen.imap", T_STR, F(listen[LISTEN_IMAP]), 0, "127.0.0.1:1143" },
    /* Implicit TLS (RFC 8314) needs tls.cert: off unless asked for. */
    { "listen.imaps", T_STR, F(listen[LISTEN_IMAPS]), 0, "" },
    { "local_domains", T_DOMAINS, F(local_domains), F(n_local_domains), NULL },
    { "relay_networks", T_CIDRS, F(relay_networks), F(n_relay_networks), "127.0.0.0/8, ::1/128" },
    { "relayhost", T_STR, F(relayhost), 0, "" },
    { "relayhost.user", T_STR, F(relayhost_user), 0, "" },
    { "relayhost.password_file", T_STR, F(relayhost_password_file), 0, "" },
    { "upstream", T_STR, F(upstream), 0, "" },
    { "upstream.mode", T_STR, F(upstream_mode), 0, "etrn" },
    { "upstream.domains", T_DOMAINS, F(upstream_domains), F(n_upstream_domains), "" },
    { "upstream.user", T_STR, F(upstream_user), 0, "" },
    { "upstream.password_file", T_STR, F(upstream_password_file), 0, "" },
    { "upstream.interval", T_DURATION, F(upstream_interval), 0, "15m" },
    { "retry.initial", T_DURATION, F(retry_initial), 0, "5m" },
    { "retry.max", T_DURATION, F(retry_max), 0, "4h" },
    { "queue.lifetime", T_DURATION, F(queue_lifetime), 0, "5d" },
    { "queue.warn_after", T_DURATION, F(queue_warn_after), 0, "4h" },
    { "resolver", T_STR, F(resolver), 0, "" },
    { "delivery.port", T_INT, F(delivery_port), 0, "25" },
    { "delivery.per_connection", T_INT, F(delivery_per_connection), 0, "1000" },
    { "delivery.parallel", T_INT, F(delivery_parallel), 0, "20" },
    { "delivery.large", T_SIZE, F(delivery_large), 0, "256K" },
    { "resume", T_BOOL, F(resume), 0, "yes" },
    { "resume.lifetime", T_DURATION, F(resume_lifetime), 0, "2d" },
    { "resume.max_size", T_SIZE, F(resume_max_size), 0, "200M" },
    { "smtp.timeout.connect", T_DURATION, F(smtp_timeout_connect), 0, "30s" },
    { "message_size_limit", T_SIZE, F(message_size_limit), 0, "25M" },
    { "max_recipients", T_INT, F(max_recipients), 0, "1000" },
    { "max_recipients.untrusted", T_INT, F(max_recipients_untrusted), 0, "100" },
    { "max_connections", T_INT, F(max_connections), 0, "100" },
    { "max_received", T_INT, F(max_received), 0, "100" },
    { "smtp.timeout.command", T_DURATION, F(smtp_timeout_command), 0, "5m" },
    { "smtp.timeout.data", T_DURATION, F(smtp_timeout_data), 0, "3m" },
    { "pop3.timeout", T_DURATION, F(pop3_timeout), 0, "10m" },
    { "imap.timeout", T_DURATION, F(imap_timeout), 0, "30m" },
    { "imap.max_per_user", T_INT, F(imap_max_per_user), 0, "20" },
    { "quota.default", T_SIZE, F(quota_default), 0, "0" },
    { "auth.fail_delay", T_DURATION, F(auth_fail_delay), 0, "1s" },
    { "auth.max_failures", T_INT, F(auth_max_failures), 0, "5" },
    { "limit.connections_per_ip", T_INT, F(limit_connections_per_ip), 0, "20" },
    { "limit.auth_failures_per_ip", T_INT, F(limit_auth_failures_per_ip), 0, "10" },
    { "limit.auth_failures_per_user", T_INT, F(limit_auth_failures_per_user), 0, "10" },
    { "limit.connections_reserved", T_INT, F(limit_connections_reserved), 0, "10" },
    { "max_connections.smtp", T_INT, F(max_connections_on[LISTEN_SMTP]), 0, "0" },
    { "max_connections.submission", T_INT, F(max_connections_on[LISTEN_SUBMISSION]), 0, "0" },
    { "max_connections.odmr", T_INT, F(max_connections_on[LISTEN_ODMR]), 0, "0" },
    { "max_connections.pop3", T_INT, F(max_connections_on[LISTEN_POP3]), 0, "0" },
    { "max_connections.imap", T_INT, F(max_connections_on[LISTEN_IMAP]), 0, "0" },
    { "max_connections.imaps", T_INT, F(max_connections_on[LISTEN_IMAPS]), 0, "0" },
    /* Off by default: an upstream releasing a held backlog by ETRN arrives
     * from an ordinary Internet address, and must not be throttled. */
    { "limit.messages_per_minute", T_INT, F(limit_messages_per_minute), 0, "0" },
    { "auth.cleartext", T_BOOL, F(allow_cleartext_auth), 0, "no" },
    { "submission.sender_login_match", T_BOOL, F(sender_login_match), 0, "yes" },
    { "vrfy", T_BOOL, F(allow_vrfy), 0, "no" },
    { "expn", T_BOOL, F(allow_expn), 0, "no" },
    { "log", T_STR, F(log_dest), 0, "stderr" },
    { "log.level", T_STR, F(log_level_name), 0, "info" },
    { "user", T_STR, F(run_user), 0, "" },
    /* Who reads postmaster, root, abuse and MAILER-DAEMON mail; empty: the
     * first user created (RFC 5321 4.5.1 requires a postmaster). */
    { "admin", T_STR, F(admin), 0, "" },
    { "tls.cert", T_STR, F(tls_cert), 0, "" },
    { "tls.key", T_STR, F(tls_key), 0, "" },
    { "tls.ca_file", T_STR, F(tls_ca_file), 0, "" },
    { "relayhost.tls", T_STR, F(relayhost_tls), 0, "may" },
    { "upstream.tls", T_STR, F(upstream_tls), 0, "may" },
    { "compress", T_BOOL, F(compress), 0, "yes" },
    { "compress.never", T_DOMAINS, F(compress_never), F(n_compress_never), "" },
    { "bundle.key", T_STR, F(bundle_key), 0, NULL },
    { "bundle.resend_after", T_DURATION, F(bundle_resend_after), 0, "3d" },
    { "pacing.rate", T_DOMAINS, F(pacing_rate), F(n_pacing_rate), "" },
};
#undef F        /* the amalgamation goes on with other modules */

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p) {
        fprintf(stderr, "mailnode: out of memory\n");
        exit(EX_OSERR);
    }
    return p;
}

static void free_value(struct conf *c, const struct conf_key *k)
{
    void *field = (char *)c + k->off;
    if (k->type == T_STR) {
        free(*(char **)field);
        *(char **)field = NULL;
    } else if (k->type == T_DOMAINS) {
        char **list = *(char ***)field;
        size_t n = *(size_t *)((char *)c + k->count_off);
        for (size_t i = 0; i < n; i++)
            free(list[i]);
        free(list);
        *(char ***)field = NULL;
        *(size_t *)((char *)c + k->count_off) = 0;
    } else if (k->type == T_CIDRS) {
        free(*(struct cidr **)field);
        *(struct cidr **)field = NULL;
        *(size_t *)((char *)c + k->count_off) = 0;
    }
}

/* Parses value v for key k into c; returns NULL or what was wrong. */
static const char *set_value(struct conf *c, const struct conf_key *k, const char *v)
{
    void *field = (char *)c + k->off;
    char tmp[4096], *items[256];
    size_t n;

    switch (k->type) {
    case T_STR:
        free_value(c, k);
        *(char **)field = xstrdup(v);
        return NULL;
    case T_DURATION:
        return util_parse_duration(v, field) ? "not a duration (examples: 30s, 5m, 4h, 5d)" : NULL;
    case T_SIZE:
        return util_parse_size(v, field) ? "not a size (examples: 512K, 10M)" : NULL;
    case T_INT: {
        char *end;
        long long x;
        errno = 0;
        x = strtoll(v, &end, 10);
        if (errno || *end || end == v || x < 0)
            return "not a non-negative number";
        *(int64_t *)field = x;
        return NULL;
    }
    case T_BOOL:
        if (!strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "on"))
            *(int *)field = 1;
        else if (!strcasecmp(v, "no") || !strcasecmp(v, "false") || !strcmp(v, "0") || !strcasecmp(v, "off"))
            *(int *)field = 0;
        else
            return "not yes or no";
        return NULL;
    case T_DOMAINS: {
        if (util_strlcpy(tmp, v, sizeof tmp) >= sizeof tmp)
            return "list too long";
        n = util_split_list(tmp, items, MN_NELEM(items));
        char **list = calloc(n ? n : 1, sizeof *list);
        if (!list)
            return "out of memory";
        for (size_t i = 0; i < n; i++) {
            list[i] = xstrdup(items[i]);
            util_lower(list[i]);
            if (strlen(list[i]) > SMTP_DOMAIN_MAX) {
                for (size_t j = 0; j <= i; j++)
                    free(list[j]);
                free(list);
                return "domain name too long";
            }
        }
        free_value(c, k);
        *(char ***)field = list;
        *(size_t *)((char *)c + k->count_off) = n;
        return NULL;
    }
    case T_CIDRS: {
        if (util_strlcpy(tmp, v, sizeof tmp) >= sizeof tmp)
            return "list too long";
        n = util_split_list(tmp, items, MN_NELEM(items));
        struct cidr *list = calloc(n ? n : 1, sizeof *list);
        if (!list)
            return "out of memory";
        for (size_t i = 0; i < n; i++)
            if (util_cidr_parse(items[i], &list[i])) {
                free(list);
                return "not a network (examples: 192.168.1.0/24, ::1/128)";
            }
        free_value(c, k);
        *(struct cidr **)field = list;
        *(size_t *)((char *)c + k->count_off) = n;
        return NULL;
    }
    }
    return "bad key type";
}

static const struct conf_key *find_key(const char *name)
{
    for (size_t i = 0; i < MN_NELEM(keys); i++)
        if (!strcmp(keys[i].name, name))
            return &keys[i];
    return NULL;
}

_Static_assert(MN_NELEM(keys) <= CONF_MAX_KEYS, "raise CONF_MAX_KEYS");

static int conf_is_domain(const char *s);

static int set_defaults(struct conf *c)
{
    char host[256] = "localhost", doms[600];

    for (size_t i = 0; i < MN_NELEM(keys); i++)
        if (keys[i].def && set_value(c, &keys[i], keys[i].def))
            return -1;
    /* A machine name that is no domain name ("my_box") must not make every
     * command fail over a key the file does not even set. */
    if (gethostname(host, sizeof host - 1) || !conf_is_domain(host))
        util_strlcpy(host, "localhost", sizeof host);
    util_lower(host);
    c->hostname = xstrdup(host);
    snprintf(doms, sizeof doms, "localhost, %s", host);
    return set_value(c, find_key("local_domains"), doms) ? -1 : 0;
}

/* Derived paths: the key file and control socket sit beside the database
 * unless placed elsewhere. */
static void derive(struct conf *c)
{
    char buf[4096];
    if (!c->keyfile || !*c->keyfile) {
        free(c->keyfile);
        snprintf(buf, sizeof buf, "%s.key", c->database);
        c->keyfile = xstrdup(buf);
    }
    if (!c->bundle_key || !*c->bundle_key) {
        free(c->bundle_key);
        snprintf(buf, sizeof buf, "%s.bundle-key", c->database);
        c->bundle_key = xstrdup(buf);
    }
    if (!c->control || !*c->control) {
        free(c->control);
        snprintf(buf, sizeof buf, "%s.ctl", c->database);
        c->control = xstrdup(buf);
    }
    c->use_syslog = c->log_dest && !strcmp(c->log_dest, "syslog");
    c->log_level = !strcmp(c->log_level_name, "debug") ? LOG_DEBUG :
                   !strcmp(c->log_level_name, "warning") ? LOG_WARNING : LOG_INFO;
}

/* "#" starts a comment at the start of a line or after white space, in
 * every key alike: "local_domains = a.example # ours" must not make "#"
 * and "ours" domains.  A "#" inside a word (a password file path) stays. */
static void conf_strip_comment(char *line)
{
    for (char *p = line; *p; p++)
        if (*p == '#' && (p == line || *(p - 1) == ' ' || *(p - 1) == '\t')) {
            *p = '\0';
            return;
        }
}

const char *conf_where(const struct conf *c, const char *key, char *buf, size_t n)
{
    const struct conf_key *k = find_key(key);
    int line = k ? c->key_line[k - keys] : 0;

    if (line)
        snprintf(buf, n, "%s:%d: %s", c->path, line, key);
    else
        snprintf(buf, n, "%s: %s (%s)", c->path ? c->path : "configuration", key,
                 c->path ? "not set: the default" : "the default");
    return buf;
}

/* RFC 1035 2.3.1 preferred name syntax (letters, digits, hyphens, dots). */
static int conf_is_domain(const char *s)
{
    size_t label = 0;

    if (!*s || strlen(s) > SMTP_DOMAIN_MAX)
        return 0;
    for (const char *p = s; *p; p++) {
        if (*p == '.') {
            if (!label || p[-1] == '-')
                return 0;
            label = 0;
        } else if (isalnum((unsigned char)*p) || (*p == '-' && label)) {
            if (++label > 63)
                return 0;
        } else {
            return 0;
        }
    }
    return label && s[strlen(s) - 1] != '-';
}

/* host[:port] with host a name, an address or a bracketed address. */
static const char *conf_check_host(const char *v, int port_required)
{
    char host[SMTP_DOMAIN_MAX + 3];
    unsigned char bin[16];
    int port = 25;

    if (util_split_hostport(v, host, sizeof host, &port)) {
        if (port_required || strchr(v, ' ') || util_strlcpy(host, v, sizeof host) >= sizeof host)
            return port_required ? "not host:port" : "not host or host:port";
    }
    if (port < 1)
        return "port must be 1 to 65535";
    size_t l = strlen(host);
    if (host[0] == '[' && l > 2 && host[l - 1] == ']') {
        host[l - 1] = '\0';
        return inet_pton(AF_INET, host + 1, bin) == 1 || inet_pton(AF_INET6, host + 1, bin) == 1
                   ? NULL : "not an address in brackets";
    }
    if (inet_pton(AF_INET6, host, bin) == 1 || conf_is_domain(host))
        return NULL;
    return "not a host name or address";
}

/* A comma separated list of numeric addr:port, as the listeners take. */
static const char *conf_check_listen(const char *v)
{
    char buf[1024], *items[64], host[256];
    struct sockaddr_storage ss;
    socklen_t sl;
    int port;
    size_t n;

    if (util_strlcpy(buf, v, sizeof buf) >= sizeof buf)
        return "list too long";
    n = util_split_list(buf, items, MN_NELEM(items));
    for (size_t i = 0; i < n; i++)
        if (util_split_hostport(items[i], host, sizeof host, &port) || util_sockaddr_parse(host, port, &ss, &sl))
            return "not addr:port with a numeric address (examples: 0.0.0.0:25, [::]:25)";
    return NULL;
}

static const char *conf_one_of(char *v, const char *const *words, size_t n, const char *msg)
{
    util_lower(v);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(v, words[i]))
            return NULL;
    return msg;
}

/* The reason names the file: the value may be relative, or a typo. */
static const char *conf_check_file(const char *v)
{
    static char why[1200];
    struct stat st;
    const char *e = NULL;
    if (stat(v, &st))
        e = errno == ENOENT ? "no such file" : strerror(errno);
    else if (!S_ISREG(st.st_mode))
        e = "not a regular file";
    if (!e)
        return NULL;
    snprintf(why, sizeof why, "%.1024s: %s", v, e);
    return why;
}

/* Checks a value that its type alone does not; NULL when it is fine. */
static const char *conf_check_key(struct conf *c, const char *name)
{
    static const char *const tls_pol[] = { "may", "require", "none" };
    static const char *const modes[] = { "etrn", "atrn" };
    static const char *const logs[] = { "stderr", "syslog" };

    if (!strcmp(name, "hostname"))
        return conf_is_domain(c->hostname) ? NULL : "not a domain name (letters, digits, hyphens, dots)";
    if (!strcmp(name, "database"))
        return c->database[0] ? NULL : "must name a file";
    if (!strcmp(name, "listen.imaps") && c->listen[LISTEN_IMAPS][0] && (!c->tls_cert[0] || !c->tls_key[0]))
        return "needs tls.cert and tls.key";
    if (!strncmp(name, "listen.", 7)) {
        const struct conf_key *k = find_key(name);
        return conf_check_listen(*(char **)((char *)c + k->off));
    }
    if (!strcmp(name, "relayhost"))
        return c->relayhost[0] ? conf_check_host(c->relayhost, 0) : NULL;
    if (!strcmp(name, "upstream"))
        return c->upstream[0] ? conf_check_host(c->upstream, 1) : NULL;
    if (!strcmp(name, "upstream.mode"))
        return conf_one_of(c->upstream_mode, modes, MN_NELEM(modes), "use etrn or atrn");
    if (!strcmp(name, "upstream.domains"))
        return c->upstream[0] && !c->n_upstream_domains ? "empty, but upstream is set: name the domains held there" : NULL;
    if (!strcmp(name, "relayhost.tls"))
        return conf_one_of(c->relayhost_tls, tls_pol, MN_NELEM(tls_pol), "use may, require or none");
    if (!strcmp(name, "upstream.tls"))
        return conf_one_of(c->upstream_tls, tls_pol, MN_NELEM(tls_pol), "use may, require or none");
    if (!strcmp(name, "tls.cert"))
        return c->tls_cert[0] ? conf_check_file(c->tls_cert) : NULL;
    if (!strcmp(name, "tls.key"))
        return !c->tls_key[0] ? NULL : !c->tls_cert[0] ? "set, but tls.cert is not: STARTTLS needs both"
                                                       : conf_check_file(c->tls_key);
    if (!strcmp(name, "tls.ca_file"))
        return c->tls_ca_file[0] ? conf_check_file(c->tls_ca_file) : NULL;
    if (!strcmp(name, "log"))
        return conf_one_of(c->log_dest, logs, MN_NELEM(logs), "use stderr or syslog");
    if (!strcmp(name, "log.level")) {
        static const char *const levels[] = { "warning", "info", "debug" };
        return conf_one_of(c->log_level_name, levels, MN_NELEM(levels), "use warning, info or debug");
    }
    if (!strcmp(name, "user"))
        return c->run_user[0] && !util_getpwnam(c->run_user) ? "no such user (create it, or change `user`)" : NULL;
    if (!strcmp(name, "resolver")) {
        char host[256];
        struct sockaddr_storage ss;
        socklen_t sl;
        int port = 53;
        if (!c->resolver[0])
            return NULL;
        if (util_split_hostport(c->resolver, host, sizeof host, &port))
            util_strlcpy(host, c->resolver, sizeof host);
        return util_sockaddr_parse(host, port, &ss, &sl) ? "not a numeric address[:port]" : NULL;
    }
    if (!strcmp(name, "pacing.rate")) {
        static char why[512];
        if (!pace_conf_check(c, why, sizeof why))
            return NULL;
        return strncmp(why, "pacing.rate: ", 13) ? why : why + 13;
    }
    if (!strcmp(name, "delivery.port"))
        return c->delivery_port < 1 || c->delivery_port > 65535 ? "port must be 1 to 65535" : NULL;
    if (!strcmp(name, "delivery.parallel") || !strcmp(name, "delivery.per_connection") ||
        !strcmp(name, "max_connections"))
        return *(int64_t *)((char *)c + find_key(name)->off) < 1 ? "must be at least 1" : NULL;
    return NULL;
}

/* One pass over every key, for every command: a mistake is reported the
 * same way (FILE:LINE: key: why, exit 78) whichever command meets it. */
static int conf_check(struct conf *c, char *err, size_t errlen)
{
    for (size_t i = 0; i < MN_NELEM(keys); i++) {
        const char *why = conf_check_key(c, keys[i].name);
        char where[4200];
        if (why) {
            snprintf(err, errlen, "%s: %s", conf_where(c, keys[i].name, where, sizeof where), why);
            return -1;
        }
    }
    return 0;
}

int conf_load(const char *path, struct conf *c, char *err, size_t errlen)
{
    FILE *f = NULL;
    char line[4096];
    int lineno = 0;

    memset(c, 0, sizeof *c);
    if (set_defaults(c)) {
        snprintf(err, errlen, "bad embedded defaults");
        return -1;
    }
    if (path) {
        c->path = xstrdup(path);
        f = fopen(path, "r");
        if (!f) {
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            return -1;
        }
        while (fgets(line, sizeof line, f)) {
            char *s, *eq, *key, *val;
            const struct conf_key *k;
            const char *why;

            lineno++;
            if (!strchr(line, '\n') && !feof(f)) {
                snprintf(err, errlen, "%s:%d: line too long", path, lineno);
                goto fail;
            }
            conf_strip_comment(line);
            s = util_trim(line);
            if (!*s)
                continue;
            eq = strchr(s, '=');
            if (!eq) {
                snprintf(err, errlen, "%s:%d: expected `key = value`", path, lineno);
                goto fail;
            }
            *eq = '\0';
            key = util_trim(s);
            val = util_trim(eq + 1);
            k = find_key(key);
            if (!k) {
                snprintf(err, errlen, "%s:%d: unknown key '%s' (see mailnode.conf(5))", path, lineno, key);
                goto fail;
            }
            why = set_value(c, k, val);
            if (why) {
                snprintf(err, errlen, "%s:%d: %s: %s", path, lineno, key, why);
                goto fail;
            }
            c->key_line[k - keys] = lineno;
        }
        fclose(f);
        f = NULL;
    }
    util_lower(c->hostname);
    if (conf_check(c, err, errlen))
        return -1;
    if (!c->key_line[find_key("local_domains") - keys]) {
        /* Implicit: the host name the file gives, not the machine's. */
        char doms[SMTP_DOMAIN_MAX + 16];
        snprintf(doms, sizeof doms, "localhost, %s", c->hostname);
        set_value(c, find_key("local_domains"), doms);
    }
    derive(c);
    return 0;
fail:
    if (f)
        fclose(f);
    return -1;
}

void conf_free(struct conf *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < MN_NELEM(keys); i++)
        free_value(c, &keys[i]);
    free(c->path);
    memset(c, 0, sizeof *c);
}

/* A value written back the way the file would say it. */
static void conf_format(const struct conf *c, const struct conf_key *k, char *out, size_t n)
{
    const void *field = (const char *)c + k->off;
    size_t used = 0, cnt = k->count_off ? *(const size_t *)((const char *)c + k->count_off) : 0;
    int64_t v;

    out[0] = '\0';
    switch (k->type) {
    case T_STR:
        util_strlcpy(out, *(char *const *)field ? *(char *const *)field : "", n);
        return;
    case T_INT:
        snprintf(out, n, "%lld", (long long)*(const int64_t *)field);
        return;
    case T_BOOL:
        util_strlcpy(out, *(const int *)field ? "yes" : "no", n);
        return;
    case T_DURATION: {
        static const struct { int64_t secs; char unit; } u[] = {
            { 604800, 'w' }, { 86400, 'd' }, { 3600, 'h' }, { 60, 'm' } };
        v = *(const int64_t *)field;
        for (size_t i = 0; i < MN_NELEM(u); i++)
            if (v && v % u[i].secs == 0) {
                snprintf(out, n, "%lld%c", (long long)(v / u[i].secs), u[i].unit);
                return;
            }
        snprintf(out, n, "%llds", (long long)v);
        return;
    }
    case T_SIZE: {
        static const struct { int64_t bytes; char unit; } u[] = {
            { 1024LL * 1024 * 1024, 'G' }, { 1024 * 1024, 'M' }, { 1024, 'K' } };
        v = *(const int64_t *)field;
        for (size_t i = 0; i < MN_NELEM(u); i++)
            if (v && v % u[i].bytes == 0) {
                snprintf(out, n, "%lld%c", (long long)(v / u[i].bytes), u[i].unit);
                return;
            }
        snprintf(out, n, "%lld", (long long)v);
        return;
    }
    case T_DOMAINS:
        for (size_t i = 0; i < cnt && used < n; i++)
            used += (size_t)snprintf(out + used, n - used, "%s%s", i ? ", " : "", (*(char **const *)field)[i]);
        return;
    case T_CIDRS:
        for (size_t i = 0; i < cnt && used < n; i++) {
            const struct cidr *r = &(*(struct cidr *const *)field)[i];
            char ip[INET6_ADDRSTRLEN];
            inet_ntop(r->family, r->addr, ip, sizeof ip);
            used += (size_t)snprintf(out + used, n - used, "%s%s/%d", i ? ", " : "", ip, r->bits);
        }
        return;
    }
}

void conf_print(const struct conf *c, FILE *f, int only_set)
{
    char value[4096];

    for (size_t i = 0; i < MN_NELEM(keys); i++) {
        int set = c->key_line[i] != 0;
        if (only_set && !set)
            continue;
        conf_format(c, &keys[i], value, sizeof value);
        fprintf(f, "%s = %s%s\n", keys[i].name, value,
                set ? "" : keys[i].def ? "  # default" : "  # derived");
    }
}

int conf_is_local_domain(const char *domain)
{
    for (size_t i = 0; i < conf->n_local_domains; i++)
        if (!strcasecmp(conf->local_domains[i], domain))
            return 1;
    return 0;
}

int conf_relay_allowed(const struct sockaddr_storage *ss)
{
    for (size_t i = 0; i < conf->n_relay_networks; i++)
        if (util_cidr_match(&conf->relay_networks[i], ss))
            return 1;
    return 0;
}
