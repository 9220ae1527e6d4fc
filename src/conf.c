/*
 * conf.c: the configuration file, `key = value` lines with `#` comments,
 * over embedded defaults that serve when there is no file at all.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

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
    { "user", T_STR, F(run_user), 0, "" },
    { "tls.cert", T_STR, F(tls_cert), 0, "" },
    { "tls.key", T_STR, F(tls_key), 0, "" },
    { "tls.ca_file", T_STR, F(tls_ca_file), 0, "" },
    { "relayhost.tls", T_STR, F(relayhost_tls), 0, "may" },
    { "upstream.tls", T_STR, F(upstream_tls), 0, "may" },
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

static int set_defaults(struct conf *c)
{
    char host[256] = "localhost", doms[600];

    for (size_t i = 0; i < MN_NELEM(keys); i++)
        if (keys[i].def && set_value(c, &keys[i], keys[i].def))
            return -1;
    if (gethostname(host, sizeof host - 1) || !host[0])
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
    if (!c->control || !*c->control) {
        free(c->control);
        snprintf(buf, sizeof buf, "%s.ctl", c->database);
        c->control = xstrdup(buf);
    }
    c->use_syslog = c->log_dest && !strcmp(c->log_dest, "syslog");
}

/* TLS policy towards relays: "may" uses STARTTLS when offered, "require"
 * keeps the mail queued unless TLS comes up with a certificate that
 * verifies, "none" never starts TLS (a relay with a broken TLS stack). */
static int conf_check_tls(struct conf *c, const char *path, char *err, size_t errlen)
{
    static const char *const policies[] = { "may", "require", "none" };
    struct { const char *key; char **val; } pol[] = {
        { "relayhost.tls", &c->relayhost_tls },
        { "upstream.tls", &c->upstream_tls },
    };

    for (size_t i = 0; i < MN_NELEM(pol); i++) {
        size_t j;
        util_lower(*pol[i].val);
        for (j = 0; j < MN_NELEM(policies); j++)
            if (!strcmp(*pol[i].val, policies[j]))
                break;
        if (j == MN_NELEM(policies)) {
            snprintf(err, errlen, "%s: %s = '%s': use may, require or none", path ? path : "defaults",
                     pol[i].key, *pol[i].val);
            return -1;
        }
    }
    if (c->tls_key[0] && !c->tls_cert[0]) {
        snprintf(err, errlen, "%s: tls.key is set but tls.cert is not: STARTTLS needs both",
                 path ? path : "defaults");
        return -1;
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
            s = util_trim(line);
            if (!*s || *s == '#')
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
        }
        fclose(f);
        f = NULL;
    }
    if (!c->hostname[0] || strlen(c->hostname) > SMTP_DOMAIN_MAX) {
        snprintf(err, errlen, "%s: hostname must be a domain name", path ? path : "defaults");
        return -1;
    }
    util_lower(c->hostname);
    if (!c->database[0]) {
        snprintf(err, errlen, "%s: database must name a file", path ? path : "defaults");
        return -1;
    }
    if (conf_check_tls(c, path, err, errlen))
        return -1;
    if (pace_conf_check(c, err, errlen))
        return -1;
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
