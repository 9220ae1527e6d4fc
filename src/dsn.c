/*
 * dsn.c: delivery status notifications (RFC 3464 multipart/report,
 * requested and shaped by the DSN extension, RFC 3461).
 *
 * A notification has three parts: a text for people, the
 * message/delivery-status fields for programs, and the original message
 * (RET=FULL) or its header section (RET=HDRS, the default).  The original
 * is streamed out of the store; it is never held whole in memory.
 *
 * Everything that reached us from a peer (reply texts, host names, the
 * xtext of ENVID and ORCPT) is untrusted: control characters become
 * spaces, 8-bit bytes become '?', and long values are folded, so nothing
 * a remote server says can add a header field or end a MIME part.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DSN_FOLD    76      /* RFC 5322 2.1.1: lines SHOULD stay within 78 */
#define DSN_HARD    990     /* RFC 5322 2.1.1: lines MUST stay within 998 */
#define DSN_TEXT_WRAP 72    /* the human-readable part */

struct dsnw {
    struct store_body *out;
    int err;
    int col;                            /* column of the line being written */
};

static void put(struct dsnw *w, const void *p, size_t n)
{
    const unsigned char *s = p;
    if (w->err || !n)
        return;
    w->err = store_body_write(w->out, p, n);
    for (size_t i = 0; i < n; i++)
        w->col = s[i] == '\n' ? 0 : w->col + 1;
}

static void puts_(struct dsnw *w, const char *s)
{
    put(w, s, strlen(s));
}

static void printf_(struct dsnw *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void printf_(struct dsnw *w, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    put(w, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

/* Untrusted text, written as words separated by single spaces: CR, LF and
 * other controls separate words (so peer text cannot start a new header
 * field or a MIME boundary line), bytes >= 0x80 become '?' (the report is
 * US-ASCII).  A line is broken before a word that would pass wrap; the
 * break is CRLF followed by indent, which for a header field is folding
 * whitespace (RFC 5322 2.2.3).  A word longer than a line is cut at
 * DSN_HARD so no line passes 998 octets. */
static void put_words(struct dsnw *w, const char *text, int wrap, const char *indent)
{
    const unsigned char *s = (const unsigned char *)text;
    int first = 1;

    while (*s) {
        size_t len = 0;
        while (*s && (*s <= ' ' || *s == 0x7f))
            s++;
        while (s[len] && s[len] > ' ' && s[len] != 0x7f)
            len++;
        if (!len)
            break;
        if (!first && w->col + 1 + (int)len > wrap)
            printf_(w, "\r\n%s", indent);
        else if (!first)
            put(w, " ", 1);
        first = 0;
        for (size_t i = 0; i < len; i++) {
            unsigned char c = s[i] >= 0x80 ? '?' : s[i];
            if (w->col >= DSN_HARD)
                printf_(w, "\r\n%s", indent);
            put(w, &c, 1);
        }
        s += len;
    }
}

/* "Name: prefix text" with folding, ending in CRLF. */
static void put_field(struct dsnw *w, const char *name, const char *prefix, const char *text)
{
    printf_(w, "%s: %s", name, prefix);
    put_words(w, text, DSN_FOLD, " ");
    puts_(w, "\r\n");
}

/* A paragraph of the human-readable part, wrapped. */
static void put_para(struct dsnw *w, const char *indent, const char *text)
{
    puts_(w, indent);
    put_words(w, text, DSN_TEXT_WRAP, indent);
    puts_(w, "\r\n");
}

/* RFC 3461 4: ENVID and ORCPT travel as xtext ("+XX" for a byte); the
 * report carries the decoded value (RFC 3464 2.2.1, 2.3.1).  Anything
 * that is not a valid "+XX" is kept as it is. */
static void xtext_decode(const char *s, char *out, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; s[i] && j + 1 < n; i++) {
        static const char hex[] = "0123456789ABCDEF";
        const char *h1, *h2;
        if (s[i] == '+' && s[i + 1] && s[i + 2] && (h1 = strchr(hex, s[i + 1])) &&
            (h2 = strchr(hex, s[i + 2]))) {
            unsigned char c = (unsigned char)((h1 - hex) * 16 + (h2 - hex));
            out[j++] = c ? (char)c : ' ';
            i += 2;
        } else {
            out[j++] = s[i];
        }
    }
    out[j] = '\0';
}

/* RFC 3463: class.subject.detail, each 1-3 digits, class 2, 4 or 5. */
static int status_valid(const char *s)
{
    int parts = 0, digits = 0;
    if (!s || (s[0] != '2' && s[0] != '4' && s[0] != '5'))
        return 0;
    for (; *s; s++) {
        if (*s >= '0' && *s <= '9') {
            if (++digits > 3)
                return 0;
        } else if (*s == '.' && digits) {
            parts++;
            digits = 0;
        } else {
            return 0;
        }
    }
    return parts == 2 && digits;
}

static const char *rcpt_status(const struct dsn_rcpt *r)
{
    if (status_valid(r->status))
        return r->status;
    switch (r->action) {
    case DSN_FAILED:
        return "5.0.0";
    case DSN_DELAYED:
        return "4.0.0";
    default:
        return "2.0.0";
    }
}

static const char *action_name(int action)
{
    switch (action) {
    case DSN_FAILED:
        return "failed";
    case DSN_DELAYED:
        return "delayed";
    case DSN_RELAYED:
        return "relayed";
    default:
        return "delivered";
    }
}

/* The diagnostic as given may already carry its type ("smtp; 550 ..."):
 * returns the text after the type, and sets *typed. */
static const char *diag_text(const char *d, int *typed)
{
    size_t i = 0;
    while ((d[i] >= 'a' && d[i] <= 'z') || (d[i] >= 'A' && d[i] <= 'Z') ||
           (d[i] >= '0' && d[i] <= '9') || d[i] == '-')
        i++;
    *typed = i > 0 && d[i] == ';';
    if (!*typed)
        return d;
    for (i++; d[i] == ' ' || d[i] == '\t'; i++)
        ;
    return d + i;
}

static void hex_random(char *out, size_t bytes)
{
    unsigned char r[32];
    if (bytes > sizeof r)
        bytes = sizeof r;
    randombytes_buf(r, bytes);
    sodium_bin2hex(out, bytes * 2 + 1, r, bytes);
}

/* Only letters, digits and the characters in extra: safe in a
 * Message-ID, a boundary, or an address or diagnostic type. */
static void safe_id(const char *s, const char *extra, char *out, size_t n)
{
    size_t j = 0;
    for (; s && *s && j + 1 < n; s++) {
        char c = *s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            strchr(extra, c))
            out[j++] = c;
    }
    out[j] = '\0';
}

/* The type before the ';' of an ORCPT or diagnostic ("rfc822", "smtp"). */
static void type_of(const char *s, size_t tl, char *out, size_t n)
{
    char tmp[32];
    if (tl >= sizeof tmp)
        tl = sizeof tmp - 1;
    memcpy(tmp, s, tl);
    tmp[tl] = '\0';
    safe_id(tmp, "-", out, n);
    util_lower(out);
}

static void duration_text(int64_t secs, char *buf, size_t n)
{
    if (secs >= 86400 && secs % 86400 == 0)
        snprintf(buf, n, "%lld day%s", (long long)(secs / 86400), secs == 86400 ? "" : "s");
    else if (secs >= 3600 && secs % 3600 == 0)
        snprintf(buf, n, "%lld hour%s", (long long)(secs / 3600), secs == 3600 ? "" : "s");
    else if (secs >= 60 && secs % 60 == 0)
        snprintf(buf, n, "%lld minute%s", (long long)(secs / 60), secs == 60 ? "" : "s");
    else
        snprintf(buf, n, "%lld seconds", (long long)secs);
}

/* What the sender can do about a permanent failure, by status subject. */
static const char *failure_advice(const char *status)
{
    if (!strncmp(status + 1, ".1.", 3))
        return "Check the address for typing mistakes and send the message again.";
    if (!strcmp(status + 1, ".2.2"))
        return "The recipient's mailbox is full; try again later or reach the recipient "
               "another way.";
    if (!strcmp(status + 1, ".2.3") || !strcmp(status + 1, ".3.4"))
        return "The message is too large for the receiving system; send it again with "
               "smaller attachments or split it up.";
    if (!strcmp(status + 1, ".6.3"))
        return "The receiving system cannot take 8-bit content and the message could not "
               "be converted; send it again with the attachments encoded by your mail program.";
    if (!strncmp(status + 1, ".7.", 3))
        return "The receiving system refused the message by its policy; the reply above "
               "may say why. Contact the recipient another way.";
    if (!strncmp(status + 1, ".4.", 3))
        return "The destination could not be reached; check the domain of the address.";
    return "If the reason is not clear, forward this report to your postmaster.";
}

/* queue.lifetime ran out (RFC 3463 X.4.7): the last error is the news,
 * and whether trying again can help depends on it. */
static void expired_advice(struct dsnw *w, const char *life)
{
    char buf[512];
    snprintf(buf, sizeof buf,
             "The message could not be delivered within %s, how long this mail system keeps "
             "trying. The last error above says what stood in the way; if it was a "
             "temporary problem, send the message again later.", life);
    put_para(w, "    ", buf);
}

/* The text before the per-recipient lines. */
static void write_intro(struct dsnw *w, const struct dsn_info *d, int worst)
{
    if (d->double_bounce)
        put_para(w, "", "A delivery report sent by this mail system could not be delivered to its "
                        "recipient (the sender of an earlier message). It comes to the postmaster "
                        "instead, once: no report is sent about this one. The reasons are given "
                        "below for each recipient of the report.");
    else if (worst == DSN_FAILED)
        put_para(w, "", "Your message could not be delivered to one or more recipients. "
                        "The reasons are given below for each recipient.");
    else if (worst == DSN_DELAYED)
        put_para(w, "", "Your message has not been delivered yet to one or more recipients. "
                        "This is only a warning: you do not need to send the message again.");
    else
        put_para(w, "", "This is the delivery report you asked for.");
}

static void write_human(struct dsnw *w, const struct dsn_info *d, int worst)
{
    char buf[512], until[64], life[64];
    int64_t deadline = d->received + conf->queue_lifetime;

    int any_delayed = 0;
    for (size_t i = 0; i < d->n; i++)
        if (d->rcpts[i].action == DSN_DELAYED)
            any_delayed = 1;
    util_date(deadline, until, sizeof until);
    duration_text(conf->queue_lifetime, life, sizeof life);
    snprintf(buf, sizeof buf, "This is the mail system at host %s.", conf->hostname);
    put_para(w, "", buf);
    puts_(w, "\r\n");
    write_intro(w, d, worst);
    puts_(w, "\r\n");

    for (size_t i = 0; i < d->n; i++) {
        const struct dsn_rcpt *r = &d->rcpts[i];
        const char *st = rcpt_status(r);

        puts_(w, "<");
        put_words(w, r->addr ? r->addr : "", DSN_TEXT_WRAP, "    ");
        switch (r->action) {
        case DSN_FAILED:
            if (r->expired)
                printf_(w, ">: given up after %s in the queue (status %s).\r\n", life, st);
            else
                printf_(w, ">: delivery failed permanently (status %s).\r\n", st);
            break;
        case DSN_DELAYED:
            printf_(w, ">: delivery is delayed (status %s).\r\n", st);
            break;
        case DSN_RELAYED:
            puts_(w, ">: passed on to a mail system that does not send delivery reports; "
                     "you may not hear more about it.\r\n");
            break;
        default:
            puts_(w, ">: delivered.\r\n");
            break;
        }
        if (r->diagnostic && r->diagnostic[0]) {
            int typed;
            const char *text = diag_text(r->diagnostic, &typed);
            if (r->expired && r->last_attempt > 0) {
                char when[64];
                util_date(r->last_attempt, when, sizeof when);
                printf_(w, "    The last error, %s:\r\n", when);
            } else if (r->remote_mta && r->remote_mta[0]) {
                puts_(w, "    The mail server ");
                put_words(w, r->remote_mta, DSN_TEXT_WRAP, "    ");
                puts_(w, " said:\r\n");
            } else {
                puts_(w, "    Reason:\r\n");
            }
            put_para(w, "      ", text);
        } else if (r->remote_mta && r->remote_mta[0]) {
            puts_(w, "    Mail server: ");
            put_words(w, r->remote_mta, DSN_TEXT_WRAP, "    ");
            puts_(w, "\r\n");
        }
        if (r->action == DSN_FAILED && r->expired)
            expired_advice(w, life);
        else if (r->action == DSN_FAILED)
            put_para(w, "    ", failure_advice(st));
        puts_(w, "\r\n");
    }

    if (any_delayed) {
        snprintf(buf, sizeof buf,
                 "The mail system will keep trying to deliver the message until %s "
                 "(%s after it was received). If it still cannot be delivered by then, "
                 "you will get another report.", until, life);
        put_para(w, "", buf);
        puts_(w, "\r\n");
    }
    if (worst == DSN_FAILED && !d->double_bounce) {
        snprintf(buf, sizeof buf,
                 "If you need help, forward this report to your postmaster. "
                 "Please include the delivery report below.");
        put_para(w, "", buf);
        puts_(w, "\r\n");
    }
    put_para(w, "", d->double_bounce ? "The undeliverable report is attached."
                    : d->ret_full    ? "The original message is attached."
                                     : "The header section of the original message is attached.");
}

static void write_status(struct dsnw *w, const struct dsn_info *d)
{
    char date[64], buf[512];

    put_field(w, "Reporting-MTA", "dns; ", conf->hostname);
    if (d->envid && d->envid[0]) {
        xtext_decode(d->envid, buf, sizeof buf);
        put_field(w, "Original-Envelope-Id", "", buf);
    }
    if (d->received > 0) {
        util_date(d->received, date, sizeof date);
        put_field(w, "Arrival-Date", "", date);
    }
    for (size_t i = 0; i < d->n; i++) {
        const struct dsn_rcpt *r = &d->rcpts[i];
        puts_(w, "\r\n");
        if (r->orcpt && r->orcpt[0]) {
            const char *semi = strchr(r->orcpt, ';');
            if (semi && semi != r->orcpt) {
                char type[32];
                size_t tl = (size_t)(semi - r->orcpt);
                type_of(r->orcpt, tl, type, sizeof type);
                if (!type[0])
                    util_strlcpy(type, "rfc822", sizeof type);
                xtext_decode(semi + 1, buf, sizeof buf);
                char pre[40];
                snprintf(pre, sizeof pre, "%s;", type);
                put_field(w, "Original-Recipient", pre, buf);
            }
        }
        put_field(w, "Final-Recipient", "rfc822; ", r->addr ? r->addr : "");
        put_field(w, "Action", "", action_name(r->action));
        put_field(w, "Status", "", rcpt_status(r));
        if (r->remote_mta && r->remote_mta[0])
            put_field(w, "Remote-MTA", "dns; ", r->remote_mta);
        if (r->diagnostic && r->diagnostic[0]) {
            int typed;
            const char *text = diag_text(r->diagnostic, &typed);
            if (typed) {
                char type[32];
                size_t tl = (size_t)(strchr(r->diagnostic, ';') - r->diagnostic);
                type_of(r->diagnostic, tl, type, sizeof type);
                char pre[40];
                snprintf(pre, sizeof pre, "%s; ", type);
                put_field(w, "Diagnostic-Code", pre, text);
            } else {
                put_field(w, "Diagnostic-Code", "smtp; ", text);
            }
        }
        if (r->last_attempt > 0) {
            util_date(r->last_attempt, date, sizeof date);
            put_field(w, "Last-Attempt-Date", "", date);
        }
        if (r->action == DSN_DELAYED && d->received > 0) {
            util_date(d->received + conf->queue_lifetime, date, sizeof date);
            put_field(w, "Will-Retry-Until", "", date);
        }
    }
}

/* The original message (all of it, or the header section: everything up
 * to the first empty line, RFC 5322 2.1), streamed out of the store.
 * With w NULL it only looks: *eightbit tells whether that text has bytes
 * >= 0x80, so the part can be labelled before it is written. */
static int copy_original(struct dsnw *w, const struct dsn_info *d, int full, int *eightbit)
{
    struct store_reader r;
    unsigned char in[4096], out[4096 + 1];
    int bol = 1, held_cr = 0, stop = 0, last = '\n';
    ssize_t n = 0;
    int rc;

    *eightbit = 0;
    if ((rc = store_reader_open(&r, d->body_id))) {
        store_reader_close(&r);
        return rc;
    }
    while (!stop && (n = store_reader_read(&r, in, sizeof in)) > 0) {
        size_t o = 0;
        for (size_t i = 0; i < (size_t)n; i++) {
            unsigned char c = in[i];
            if (!full && bol) {
                /* a CR at the start of a line is held until we know
                 * whether it begins the empty line */
                if (c == '\r' && !held_cr) {
                    held_cr = 1;
                    continue;
                }
                if (c == '\n') {
                    held_cr = 0;        /* the empty line is not written */
                    stop = 1;
                    break;
                }
            }
            if (held_cr) {
                out[o++] = '\r';
                held_cr = 0;
            }
            if (c >= 0x80)
                *eightbit = 1;
            out[o++] = c;
            bol = c == '\n';
        }
        if (o) {
            last = out[o - 1];
            if (w)
                put(w, out, o);
        }
    }
    rc = n < 0 ? (int)n : 0;
    store_reader_close(&r);
    if (rc)
        return rc;
    if (held_cr) {              /* the text ended in a lone CR */
        if (w)
            puts_(w, "\r");
        last = '\r';
    }
    if (w && last == '\r')
        puts_(w, "\n");
    else if (w && last != '\n')
        puts_(w, "\r\n");
    return w ? w->err : 0;
}

int dsn_write(const struct dsn_info *d, struct store_body *out)
{
    struct dsnw w = { .out = out, .err = 0, .col = 0 };
    char date[64], qid[QID_LEN + 1], rnd[65], boundary[96];
    int worst = DSN_DELIVERED, eightbit = 0, rc;
    const char *subject;

    for (size_t i = 0; i < d->n; i++) {
        int a = d->rcpts[i].action;
        if (a == DSN_FAILED)
            worst = DSN_FAILED;
        else if (a == DSN_DELAYED && worst != DSN_FAILED)
            worst = DSN_DELAYED;
    }
    subject = d->double_bounce       ? "Postmaster notice: undeliverable delivery report"
              : worst == DSN_FAILED  ? "Undelivered Mail Returned to Sender"
              : worst == DSN_DELAYED ? "Delayed Mail (still being retried)"
                                     : "Successful Mail Delivery Report";

    /* Labelling the returned part needs to know about 8-bit bytes before
     * it is written: one extra pass over the text. */
    if ((rc = copy_original(NULL, d, d->ret_full, &eightbit)))
        return rc;

    safe_id(d->qid, "", qid, sizeof qid);
    /* RFC 2046 5.1.1: the boundary must not occur in any part.  "=_" can
     * never start a quoted-printable or base64 line, and 128 random bits
     * make a collision with the returned text beyond reach. */
    hex_random(rnd, 16);
    snprintf(boundary, sizeof boundary, "=_%s.%s", qid, rnd);

    util_date(util_now(), date, sizeof date);
    printf_(&w, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", conf->hostname);
    puts_(&w, "To: <");
    put_words(&w, d->to ? d->to : d->sender ? d->sender : "", DSN_FOLD, " ");
    puts_(&w, ">\r\n");
    put_field(&w, "Subject", "", subject);
    put_field(&w, "Date", "", date);
    hex_random(rnd, 8);
    printf_(&w, "Message-ID: <%s.dsn.%s@%s>\r\n", qid, rnd, conf->hostname);
    /* RFC 3834 5: a notification is never answered automatically. */
    puts_(&w, "Auto-Submitted: auto-replied\r\n");
    puts_(&w, "MIME-Version: 1.0\r\n");
    printf_(&w, "Content-Type: multipart/report; report-type=delivery-status;\r\n"
                "\tboundary=\"%s\"\r\n", boundary);
    /* RFC 2045 6.4: a multipart is labelled with the widest encoding of
     * its parts. */
    if (eightbit)
        puts_(&w, "Content-Transfer-Encoding: 8bit\r\n");
    puts_(&w, "\r\n");
    puts_(&w, "This is a MIME-encapsulated message.\r\n\r\n");

    printf_(&w, "--%s\r\n", boundary);
    puts_(&w, "Content-Description: Notification\r\n");
    puts_(&w, "Content-Type: text/plain; charset=us-ascii\r\n\r\n");
    write_human(&w, d, worst);

    printf_(&w, "\r\n--%s\r\n", boundary);
    puts_(&w, "Content-Description: Delivery report\r\n");
    puts_(&w, "Content-Type: message/delivery-status\r\n\r\n");
    write_status(&w, d);

    printf_(&w, "\r\n--%s\r\n", boundary);
    if (d->ret_full) {
        puts_(&w, d->double_bounce ? "Content-Description: Undelivered report\r\n"
                                   : "Content-Description: Undelivered message\r\n");
        puts_(&w, "Content-Type: message/rfc822\r\n");
    } else {
        puts_(&w, "Content-Description: Message headers\r\n");
        puts_(&w, "Content-Type: text/rfc822-headers\r\n");
    }
    if (eightbit)
        puts_(&w, "Content-Transfer-Encoding: 8bit\r\n");
    puts_(&w, "\r\n");
    if (!w.err && (rc = copy_original(&w, d, d->ret_full, &eightbit)))
        return rc;
    printf_(&w, "\r\n--%s--\r\n", boundary);
    return w.err;
}

void dsn_to_postmaster(struct dsn_info *d, char *to, size_t n)
{
    snprintf(to, n, "postmaster@%s", conf->hostname);
    d->to = to;
    d->double_bounce = 1;
    d->ret_full = 1;
    d->envid = NULL;
}
