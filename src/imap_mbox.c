/*
 * imap_mbox.c: the IMAP commands about mailboxes (RFC 3501 6.3, 6.4.2,
 * 6.4.3): SELECT, EXAMINE, CLOSE, UNSELECT (RFC 3691), EXPUNGE and UID
 * EXPUNGE (RFC 4315), CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE,
 * LIST and LSUB with special-use attributes (RFC 6154), STATUS, APPEND
 * (with APPENDUID, RFC 4315); and the view of the selected mailbox that
 * each session keeps, brought up to date by imap_sync.
 *
 * Folder names are bytes with "/" as the hierarchy separator; INBOX is
 * matched in any case (RFC 3501 5.1).  The view holds the UIDs in
 * sequence order (4 octets a message).  Changes made by others (new mail,
 * POP3 deletions, other IMAP sessions) are found by comparing the view
 * with the folder's current UID list when the folder's change counter
 * moved, so a repeated sync never reports anything twice.
 */
#include "internal.h"

#include <ctype.h>
#include <string.h>
#include <time.h>

/* -------------------------------------------------------------- names */

static void mbox_norm(char *name)
{
    /* RFC 3501 5.1: INBOX is case-insensitive, and so is its prefix. */
    if (!strncasecmp(name, "INBOX", 5) && (name[5] == 0 || name[5] == '/'))
        memcpy(name, "INBOX", 5);
}

int imap_folder_get(struct imap *s, const char *name, struct store_folder *f)
{
    char n[IMAP_NAME_MAX + 1];
    if (util_strlcpy(n, name, sizeof n) >= sizeof n)
        return STORE_NOTFOUND;
    mbox_norm(n);
    return store_folder_get(s->user_id, n, f);
}

/* A name that can be created: printable, no wildcards, no empty level. */
static int mbox_name_ok(const char *n)
{
    size_t len = strlen(n);
    if (!len || len > IMAP_NAME_MAX || n[0] == '/' || n[len - 1] == '/' || strstr(n, "//"))
        return 0;
    for (const char *p = n; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '*' || *p == '%')
            return 0;
    return 1;
}

static int mbox_p_name(struct imap *s, struct imap_p *p, char *out, size_t n)
{
    MN_UNUSED(s);
    if (imap_p_sp(p) || imap_p_astring(p, out, n, NULL))
        return -1;
    mbox_norm(out);
    return 0;
}

/* --------------------------------------------------------------- view */

void imap_view_free(struct imap *s)
{
    free(s->v.uids);
    memset(&s->v, 0, sizeof s->v);
}

int imap_is_recent(const struct imap *s, int64_t uid)
{
    return !s->v.readonly && s->v.recent_from && uid >= s->v.recent_from;
}

static int mbox_uid_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int mbox_has(const uint32_t *v, size_t n, uint32_t uid)
{
    return bsearch(&uid, v, n, sizeof *v, mbox_uid_cmp) != NULL;
}

static size_t mbox_count_recent(const struct imap *s)
{
    size_t r = 0;
    for (size_t i = s->v.n; i > 0 && imap_is_recent(s, s->v.uids[i - 1]); i--)
        r++;
    return r;
}

struct mbox_flagsync {
    struct imap *s;
    struct imap_sb b;
    uint32_t top;                       /* messages above are new: EXISTS told of them */
};

static int mbox_flag_changed(void *arg, const struct store_imap_msg *m)
{
    struct mbox_flagsync *fs = arg;
    struct imap *s = fs->s;
    uint32_t uid = (uint32_t)m->uid;
    uint32_t *hit = bsearch(&uid, s->v.uids, s->v.n, sizeof uid, mbox_uid_cmp);

    if (!hit || uid > fs->top)
        return 0;
    fs->b.len = 0;
    imap_sb_printf(&fs->b, "* %zu FETCH (UID %u FLAGS ", (size_t)(hit - s->v.uids) + 1, uid);
    imap_flags_fmt(&fs->b, m->flags, m->keywords, imap_is_recent(s, m->uid));
    /* RFC 7162 3.2: with CONDSTORE on, flag changes carry MODSEQ. */
    if (s->condstore)
        imap_sb_printf(&fs->b, " MODSEQ (%lld)", (long long)m->modseq);
    imap_sb_str(&fs->b, ")\r\n");
    if (!fs->b.err)
        imap_out(s, fs->b.s, fs->b.len);
    return 0;
}

static void mbox_gone(struct imap *s)
{
    /* The folder was deleted or renamed under this session. */
    imap_outf(s, "* BYE [ALERT] the selected mailbox was deleted or renamed");
    conn_close(s->c);
}

int imap_sync(struct imap *s, int expunge_ok)
{
    struct store_folder f;
    uint32_t *now = NULL;
    size_t n = 0, added = 0;
    int err;

    if (s->state != IMAP_SELECTED || !s->c || s->c->dead)
        return 0;
    err = store_folder_get(s->user_id, s->v.f.name, &f);
    if (err == STORE_NOTFOUND || (!err && (f.id != s->v.f.id || f.uidvalidity != s->v.f.uidvalidity))) {
        mbox_gone(s);
        return -1;
    }
    if (err)
        return err;
    if (f.modseq == s->v.modseq)
        return 0;
    if ((err = store_imap_uids(s->user_id, f.key, &now, &n)))
        return err;
    if (expunge_ok) {
        /* From the end, so that each number is still right when sent. */
        size_t w = s->v.n;
        for (size_t i = s->v.n; i > 0; i--)
            if (!mbox_has(now, n, s->v.uids[i - 1])) {
                imap_outf(s, "* %zu EXPUNGE", i);
                memmove(s->v.uids + i - 1, s->v.uids + i, (w - i) * sizeof *s->v.uids);
                w--;
            }
        s->v.n = w;
    }
    uint32_t top = s->v.n ? s->v.uids[s->v.n - 1] : 0;
    for (size_t i = 0; i < n; i++) {
        if (now[i] <= top)
            continue;
        if (s->v.n == s->v.cap) {
            size_t cap = s->v.cap ? s->v.cap * 2 : 64;
            uint32_t *q = realloc(s->v.uids, cap * sizeof *q);
            if (!q) {
                free(now);
                return STORE_ERR;
            }
            s->v.uids = q;
            s->v.cap = cap;
        }
        s->v.uids[s->v.n++] = now[i];
        added++;
    }
    free(now);
    if (added) {
        imap_outf(s, "* %zu EXISTS", s->v.n);
        imap_outf(s, "* %zu RECENT", mbox_count_recent(s));
        if (!s->v.readonly)
            store_folder_take_recent(&f);
    }
    struct mbox_flagsync fs = { s, { 0 }, top };
    store_imap_changed(s->user_id, f.key, s->v.modseq, mbox_flag_changed, &fs);
    imap_sb_free(&fs.b);
    s->v.modseq = f.modseq;
    s->v.f = f;
    return 0;
}

/* ------------------------------------------------------ select, close */

void imap_cmd_select(struct imap *s, struct imap_p *p, int readonly)
{
    char name[IMAP_NAME_MAX * 2 + 1];
    struct store_folder f;
    int64_t messages, unseen, recent;
    int err;

    if (mbox_p_name(s, p, name, sizeof name)) {
        imap_tagged(s, "BAD usage: %s mailbox", readonly ? "EXAMINE" : "SELECT");
        return;
    }
    /* RFC 7162 3.1.8: SELECT mailbox (CONDSTORE) enables CONDSTORE. */
    if (p->n - p->i == 12 && !strncasecmp(p->s + p->i, " (CONDSTORE)", 12)) {
        p->i += 12;
        s->condstore = 1;
    }
    if (imap_p_end(p)) {
        imap_tagged(s, "BAD usage: %s mailbox [(CONDSTORE)]", readonly ? "EXAMINE" : "SELECT");
        return;
    }
    /* RFC 3501 6.3.1: a failed SELECT leaves no mailbox selected. */
    imap_view_free(s);
    s->state = IMAP_AUTH;
    err = imap_folder_get(s, name, &f);
    if (err == STORE_NOTFOUND) {
        imap_tagged(s, "NO [NONEXISTENT] no such mailbox");
        return;
    }
    if (err || store_folder_counts(s->user_id, &f, &messages, &unseen, &recent) ||
        store_imap_uids(s->user_id, f.key, &s->v.uids, &s->v.n)) {
        imap_tagged(s, "NO [UNAVAILABLE] cannot open the mailbox now");
        imap_view_free(s);
        return;
    }
    s->v.cap = s->v.n;
    s->v.f = f;
    s->v.readonly = readonly;
    s->v.modseq = f.modseq;
    s->v.recent_from = readonly ? 0 : (f.recent ? f.recent : 1);
    if (!readonly && store_folder_take_recent(&f)) {
        imap_tagged(s, "NO [UNAVAILABLE] cannot open the mailbox now");
        imap_view_free(s);
        return;
    }
    s->state = IMAP_SELECTED;
    imap_outf(s, "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)");
    imap_outf(s, "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] flags allowed");
    imap_outf(s, "* %zu EXISTS", s->v.n);
    imap_outf(s, "* %zu RECENT", mbox_count_recent(s));
    imap_outf(s, "* OK [UIDVALIDITY %lld] UIDs valid", (long long)f.uidvalidity);
    imap_outf(s, "* OK [UIDNEXT %lld] predicted next UID", (long long)f.uidnext);
    imap_outf(s, "* OK [HIGHESTMODSEQ %lld] highest", (long long)f.modseq);
    imap_tagged(s, "OK [%s] %s completed", readonly ? "READ-ONLY" : "READ-WRITE",
                readonly ? "EXAMINE" : "SELECT");
}

struct mbox_deleted {
    struct imap *s;
    const struct imap_set *set;         /* UID EXPUNGE: only these */
    int64_t *uids;
    size_t n, cap;
    int err;
};

static int mbox_collect_deleted(void *arg, const struct store_imap_msg *m)
{
    struct mbox_deleted *d = arg;
    if (!(m->flags & IMAP_DELETED) || !mbox_has(d->s->v.uids, d->s->v.n, (uint32_t)m->uid))
        return 0;
    if (d->set && !imap_set_has(d->set, (uint32_t)m->uid, d->s->v.n ? d->s->v.uids[d->s->v.n - 1] : 0))
        return 0;
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        int64_t *q = realloc(d->uids, cap * sizeof *q);
        if (!q) {
            d->err = 1;
            return 1;
        }
        d->uids = q;
        d->cap = cap;
    }
    d->uids[d->n++] = m->uid;
    return 0;
}

/* Removes the \Deleted messages of the view (RFC 3501 6.4.3); with
 * report, an EXPUNGE response for each. */
static int mbox_expunge(struct imap *s, const struct imap_set *set, int report)
{
    struct mbox_deleted d = { s, set, NULL, 0, 0, 0 };
    int err = store_imap_each(s->user_id, s->v.f.key, mbox_collect_deleted, &d);

    if (!err && d.err)
        err = STORE_ERR;
    if (!err && d.n)
        err = store_mbox_delete(s->user_id, d.uids, d.n);
    if (!err && report) {
        for (size_t i = s->v.n; i > 0; i--) {
            int64_t uid = s->v.uids[i - 1];
            int hit = 0;
            for (size_t k = 0; k < d.n && !hit; k++)
                hit = d.uids[k] == uid;
            if (!hit)
                continue;
            imap_outf(s, "* %zu EXPUNGE", i);
            memmove(s->v.uids + i - 1, s->v.uids + i, (s->v.n - i) * sizeof *s->v.uids);
            s->v.n--;
        }
    }
    if (!err && d.n)
        log_info("imap: user=%s expunged %zu from %s", s->user, d.n, s->v.f.name);
    free(d.uids);
    return err;
}

void imap_cmd_close(struct imap *s, struct imap_p *p, int expunge)
{
    int err = 0;
    if (imap_p_end(p)) {
        imap_tagged(s, "BAD %s takes no arguments", expunge ? "CLOSE" : "UNSELECT");
        return;
    }
    /* RFC 3501 6.4.2: CLOSE expunges silently, unless read-only;
     * UNSELECT (RFC 3691) does not. */
    if (expunge && !s->v.readonly)
        err = mbox_expunge(s, NULL, 0);
    imap_view_free(s);
    s->state = IMAP_AUTH;
    if (err) {
        imap_tagged(s, "NO [UNAVAILABLE] the messages could not be expunged");
        return;
    }
    imap_reply_after_commit(s, expunge ? "OK CLOSE completed" : "OK UNSELECT completed");
}

void imap_cmd_expunge(struct imap *s, struct imap_p *p, int uid)
{
    struct imap_set set = { 0 };

    if (uid && (imap_p_sp(p) || imap_p_set(p, &set))) {
        imap_tagged(s, "BAD usage: UID EXPUNGE uid-set");
        return;
    }
    if (imap_p_end(p)) {
        imap_tagged(s, "BAD invalid arguments");
        imap_set_free(&set);
        return;
    }
    if (s->v.readonly) {
        imap_tagged(s, "NO [READ-ONLY] mailbox is read-only");
        imap_set_free(&set);
        return;
    }
    imap_sync(s, 1);
    int err = mbox_expunge(s, uid ? &set : NULL, 1);
    imap_set_free(&set);
    if (err)
        imap_tagged(s, "NO [UNAVAILABLE] the messages could not be expunged");
    else
        imap_reply_after_commit(s, "OK EXPUNGE completed");
}

/* ------------------------------------------------------ list, status */

/* RFC 3501 6.3.8: "*" matches anything, "%" anything but the separator. */
static int mbox_match(const char *pat, const char *name)
{
    for (; *pat; pat++, name++) {
        if (*pat == '*' || *pat == '%') {
            for (const char *q = name;; q++) {
                if (mbox_match(pat + 1, q))
                    return 1;
                if (!*q || (*pat == '%' && *q == '/'))
                    return 0;
            }
        }
        if (*pat != *name)
            return 0;
    }
    return !*name;
}

struct mbox_list {
    struct imap *s;
    const char *pat;
    int lsub;
    char (*names)[IMAP_NAME_MAX + 1];   /* every folder, for \HasChildren */
    size_t n;
};

static int mbox_list_name(void *arg, const struct store_folder *f)
{
    struct mbox_list *l = arg;
    char (*q)[IMAP_NAME_MAX + 1] = realloc(l->names, (l->n + 1) * sizeof *q);
    if (!q)
        return 1;
    l->names = q;
    memcpy(l->names[l->n++], f->name, sizeof f->name);
    return 0;
}

static int mbox_list_one(void *arg, const struct store_folder *f)
{
    struct mbox_list *l = arg;
    struct imap_sb b = { 0 };
    size_t len = strlen(f->name);
    int children = 0;

    if (!mbox_match(l->pat, f->name) || (l->lsub && !f->subscribed))
        return 0;
    for (size_t i = 0; i < l->n && !children; i++)
        children = !strncmp(l->names[i], f->name, len) && l->names[i][len] == '/';
    imap_sb_printf(&b, "* %s (%s", l->lsub ? "LSUB" : "LIST", children ? "\\HasChildren" : "\\HasNoChildren");
    if (f->special[0])
        imap_sb_printf(&b, " %s", f->special);
    imap_sb_str(&b, ") \"/\" ");
    imap_sb_string(&b, f->name, len);
    imap_sb_str(&b, "\r\n");
    if (!b.err)
        imap_out(l->s, b.s, b.len);
    imap_sb_free(&b);
    return 0;
}

/* list-mailbox (RFC 3501 9): an astring, or atom characters with the
 * wildcards. */
static int mbox_p_pattern(struct imap_p *p, char *out, size_t n)
{
    size_t k = 0;
    if (p->i < p->n && (p->s[p->i] == '"' || p->s[p->i] == '{'))
        return imap_p_astring(p, out, n, NULL);
    while (p->i < p->n && p->s[p->i] != ' ' && p->s[p->i] != '(' && p->s[p->i] != ')' &&
           p->s[p->i] != '"' && (unsigned char)p->s[p->i] > 0x20 && (unsigned char)p->s[p->i] < 0x7f) {
        if (k + 1 >= n)
            return -1;
        out[k++] = p->s[p->i++];
    }
    out[k] = 0;
    return k ? 0 : -1;
}

void imap_cmd_list(struct imap *s, struct imap_p *p, int lsub)
{
    char ref[IMAP_NAME_MAX + 1], pat[IMAP_NAME_MAX + 1], full[2 * IMAP_NAME_MAX + 2];
    struct mbox_list l = { s, full, lsub, NULL, 0 };

    if (imap_p_sp(p) || imap_p_astring(p, ref, sizeof ref, NULL) || imap_p_sp(p) ||
        mbox_p_pattern(p, pat, sizeof pat) || imap_p_end(p)) {
        imap_tagged(s, "BAD usage: %s reference mailbox", lsub ? "LSUB" : "LIST");
        return;
    }
    if (!pat[0]) {
        /* RFC 3501 6.3.8: the separator and the root. */
        if (!lsub)
            imap_outf(s, "* LIST (\\Noselect) \"/\" \"\"");
        imap_tagged(s, "OK %s completed", lsub ? "LSUB" : "LIST");
        return;
    }
    snprintf(full, sizeof full, "%s%s", ref, pat);
    mbox_norm(full);
    if (store_folder_list(s->user_id, mbox_list_name, &l) ||
        store_folder_list(s->user_id, mbox_list_one, &l))
        imap_tagged(s, "NO [UNAVAILABLE] cannot list the mailboxes now");
    else
        imap_tagged(s, "OK %s completed", lsub ? "LSUB" : "LIST");
    free(l.names);
}

void imap_cmd_status(struct imap *s, struct imap_p *p)
{
    char name[IMAP_NAME_MAX * 2 + 1], item[32];
    struct store_folder f;
    int64_t messages, unseen, recent;
    struct imap_sb b = { 0 };
    int err;

    if (mbox_p_name(s, p, name, sizeof name) || imap_p_sp(p) || p->i >= p->n || p->s[p->i] != '(') {
        imap_tagged(s, "BAD usage: STATUS mailbox (items)");
        return;
    }
    err = imap_folder_get(s, name, &f);
    if (err == STORE_NOTFOUND) {
        imap_tagged(s, "NO [NONEXISTENT] no such mailbox");
        return;
    }
    if (err || store_folder_counts(s->user_id, &f, &messages, &unseen, &recent)) {
        imap_tagged(s, "NO [UNAVAILABLE] cannot read the mailbox now");
        return;
    }
    imap_sb_str(&b, "* STATUS ");
    imap_sb_string(&b, f.name, strlen(f.name));
    imap_sb_str(&b, " (");
    p->i++;
    for (int first = 1;; first = 0) {
        if (p->i < p->n && p->s[p->i] == ')' && !first)
            break;
        if ((!first && imap_p_sp(p)) || imap_p_atom(p, item, sizeof item))
            goto bad;
        if (!first)
            imap_sb_str(&b, " ");
        if (!strcasecmp(item, "MESSAGES"))
            imap_sb_printf(&b, "MESSAGES %lld", (long long)messages);
        else if (!strcasecmp(item, "RECENT"))
            imap_sb_printf(&b, "RECENT %lld", (long long)recent);
        else if (!strcasecmp(item, "UIDNEXT"))
            imap_sb_printf(&b, "UIDNEXT %lld", (long long)f.uidnext);
        else if (!strcasecmp(item, "UIDVALIDITY"))
            imap_sb_printf(&b, "UIDVALIDITY %lld", (long long)f.uidvalidity);
        else if (!strcasecmp(item, "UNSEEN"))
            imap_sb_printf(&b, "UNSEEN %lld", (long long)unseen);
        else if (!strcasecmp(item, "DELETED-STORAGE")) {
            /* RFC 9208 4.2: what an EXPUNGE would free, in the STORAGE
             * resource's units (1024 octets). */
            int64_t del = 0;
            if (store_folder_deleted_bytes(s->user_id, f.key, &del)) {
                imap_sb_free(&b);
                imap_tagged(s, "NO [UNAVAILABLE] cannot read the mailbox now");
                return;
            }
            imap_sb_printf(&b, "DELETED-STORAGE %lld", (long long)((del + 1023) / 1024));
        } else if (!strcasecmp(item, "HIGHESTMODSEQ")) {
            imap_sb_printf(&b, "HIGHESTMODSEQ %lld", (long long)f.modseq);
            s->condstore = 1;           /* RFC 7162 3.1: a CONDSTORE-enabling command */
        }
        else
            goto bad;
    }
    p->i++;
    if (imap_p_end(p))
        goto bad;
    imap_sb_str(&b, ")\r\n");
    if (!b.err)
        imap_out(s, b.s, b.len);
    imap_sb_free(&b);
    imap_tagged(s, "OK STATUS completed");
    return;
bad:
    imap_sb_free(&b);
    imap_tagged(s, "BAD usage: STATUS mailbox (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)");
}

/* ------------------------------------------- create, delete, rename */

void imap_cmd_create(struct imap *s, struct imap_p *p)
{
    char name[IMAP_NAME_MAX * 2 + 1];
    int err = 0;

    if (mbox_p_name(s, p, name, sizeof name) || imap_p_end(p)) {
        imap_tagged(s, "BAD usage: CREATE mailbox");
        return;
    }
    size_t len = strlen(name);
    if (len && name[len - 1] == '/')
        name[--len] = 0;             /* RFC 3501 6.3.3: a trailing separator is a hint */
    if (!mbox_name_ok(name)) {
        imap_tagged(s, "NO [CANNOT] invalid mailbox name");
        return;
    }
    /* RFC 3501 6.3.3: the superior names are created too. */
    for (char *q = strchr(name, '/'); q && !err; q = strchr(q + 1, '/')) {
        *q = 0;
        err = store_folder_create(s->user_id, name);
        if (err == STORE_EXISTS)
            err = 0;
        *q = '/';
    }
    if (!err)
        err = store_folder_create(s->user_id, name);
    if (err == STORE_EXISTS)
        imap_tagged(s, "NO [ALREADYEXISTS] mailbox exists");
    else if (err)
        imap_tagged(s, "NO [UNAVAILABLE] cannot create the mailbox now");
    else
        imap_reply_after_commit(s, "OK CREATE completed");
}

void imap_cmd_delete(struct imap *s, struct imap_p *p)
{
    char name[IMAP_NAME_MAX * 2 + 1];
    struct store_folder f;
    int err;

    if (mbox_p_name(s, p, name, sizeof name) || imap_p_end(p)) {
        imap_tagged(s, "BAD usage: DELETE mailbox");
        return;
    }
    if (!strcmp(name, "INBOX")) {
        imap_tagged(s, "NO [CANNOT] INBOX cannot be deleted");
        return;
    }
    err = imap_folder_get(s, name, &f);
    if (err == STORE_NOTFOUND) {
        imap_tagged(s, "NO [NONEXISTENT] no such mailbox");
        return;
    }
    if (s->state == IMAP_SELECTED && s->v.f.id == f.id) {
        imap_view_free(s);
        s->state = IMAP_AUTH;
    }
    if (err || (err = store_folder_delete(s->user_id, &f)))
        imap_tagged(s, "NO [UNAVAILABLE] cannot delete the mailbox now");
    else
        imap_reply_after_commit(s, "OK DELETE completed");
}

void imap_cmd_rename(struct imap *s, struct imap_p *p)
{
    char from[IMAP_NAME_MAX * 2 + 1], to[IMAP_NAME_MAX * 2 + 1];
    struct store_folder f;
    int err;

    if (mbox_p_name(s, p, from, sizeof from) || mbox_p_name(s, p, to, sizeof to) || imap_p_end(p)) {
        imap_tagged(s, "BAD usage: RENAME from to");
        return;
    }
    if (!mbox_name_ok(to) || !strcmp(to, "INBOX")) {
        imap_tagged(s, "NO [CANNOT] invalid new name");
        return;
    }
    if ((err = imap_folder_get(s, from, &f)) == STORE_NOTFOUND) {
        imap_tagged(s, "NO [NONEXISTENT] no such mailbox");
        return;
    }
    if (!err && imap_folder_get(s, to, &f) == 0) {
        imap_tagged(s, "NO [ALREADYEXISTS] the new name exists");
        return;
    }
    if (!err)
        err = store_folder_rename(s->user_id, from, to);
    if (err == STORE_EXISTS)
        imap_tagged(s, "NO [ALREADYEXISTS] a mailbox below the new name exists");
    else if (err)
        imap_tagged(s, "NO [UNAVAILABLE] cannot rename the mailbox now");
    else
        imap_reply_after_commit(s, "OK RENAME completed");
}

void imap_cmd_subscribe(struct imap *s, struct imap_p *p, int on)
{
    char name[IMAP_NAME_MAX * 2 + 1];
    int err;

    if (mbox_p_name(s, p, name, sizeof name) || imap_p_end(p)) {
        imap_tagged(s, "BAD usage: %s mailbox", on ? "SUBSCRIBE" : "UNSUBSCRIBE");
        return;
    }
    err = store_folder_subscribe(s->user_id, name, on);
    if (err == STORE_NOTFOUND)
        imap_tagged(s, "NO [NONEXISTENT] no such mailbox");
    else if (err)
        imap_tagged(s, "NO [UNAVAILABLE] cannot change the subscription now");
    else
        imap_reply_after_commit(s, on ? "OK SUBSCRIBE completed" : "OK UNSUBSCRIBE completed");
}

/* -------------------------------------------------------------- quota */

/* RFC 9208: one quota root, "", covers all the user's folders; it exists
 * while a limit is in force (quota.c), with the STORAGE resource in units
 * of 1024 octets.  Limits are the administrator's: no SETQUOTA. */
static int mbox_quota_line(struct imap *s)
{
    struct quota q;

    if (quota_get(s->user_id, &q))
        return -1;
    if (q.limit)
        imap_outf(s, "* QUOTA \"\" (STORAGE %lld %lld)", (long long)((q.bytes + 1023) / 1024),
                  (long long)(q.limit / 1024));
    return q.limit ? 1 : 0;
}

void imap_cmd_getquota(struct imap *s, struct imap_p *p)
{
    char root[IMAP_NAME_MAX + 1];

    if (imap_p_sp(p) || imap_p_astring(p, root, sizeof root, NULL) || imap_p_end(p)) {
        imap_tagged(s, "BAD usage: GETQUOTA root");
        return;
    }
    int r = root[0] ? 0 : mbox_quota_line(s);
    if (r < 0)
        imap_tagged(s, "NO [UNAVAILABLE] cannot read the quota now");
    else if (!r)
        imap_tagged(s, "NO [NONEXISTENT] no such quota root");
    else
        imap_tagged(s, "OK GETQUOTA completed");
}

void imap_cmd_getquotaroot(struct imap *s, struct imap_p *p)
{
    char name[IMAP_NAME_MAX * 2 + 1];
    struct store_folder f;
    struct quota q;
    struct imap_sb b = { 0 };
    int err;

    if (mbox_p_name(s, p, name, sizeof name) || imap_p_end(p)) {
        imap_tagged(s, "BAD usage: GETQUOTAROOT mailbox");
        return;
    }
    err = imap_folder_get(s, name, &f);
    if (err == STORE_NOTFOUND) {
        imap_tagged(s, "NO [NONEXISTENT] no such mailbox");
        return;
    }
    if (err || quota_get(s->user_id, &q)) {
        imap_tagged(s, "NO [UNAVAILABLE] cannot read the quota now");
        return;
    }
    imap_sb_str(&b, "* QUOTAROOT ");
    imap_sb_string(&b, f.name, strlen(f.name));
    imap_sb_str(&b, q.limit ? " \"\"\r\n" : "\r\n");
    if (!b.err)
        imap_out(s, b.s, b.len);
    imap_sb_free(&b);
    if (q.limit)
        mbox_quota_line(s);
    imap_tagged(s, "OK GETQUOTAROOT completed");
}

void imap_cmd_setquota(struct imap *s, struct imap_p *p)
{
    MN_UNUSED(p);
    imap_tagged(s, "NO [NOPERM] quotas are set by the administrator (mailnode user quota)");
}

/* ------------------------------------------------------------- append */

/* date-time (RFC 3501 9): "dd-Mon-yyyy hh:mm:ss +zzzz". */
static int mbox_parse_datetime(const char *s, int64_t *out)
{
    int d, y, hh, mm, ss, z, mon;
    char mname[4], sign;
    struct tm tm;

    if (sscanf(s, "%2d-%3s-%4d %2d:%2d:%2d %c%4d", &d, mname, &y, &hh, &mm, &ss, &sign, &z) != 8)
        return -1;
    mon = imap_month(mname);
    if (!mon || d < 1 || d > 31 || hh > 23 || mm > 59 || ss > 60 || (sign != '+' && sign != '-') ||
        y < 1970 || y > 9999)
        return -1;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = y - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = d;
    tm.tm_hour = hh;
    tm.tm_min = mm;
    tm.tm_sec = ss;
    int64_t t = (int64_t)timegm(&tm);
    int off = (z / 100) * 3600 + (z % 100) * 60;
    *out = sign == '+' ? t - off : t + off;
    return 0;
}

/* APPEND up to its message literal: 1 to receive it, -1 refused (reply
 * holds the answer). */
int imap_append_begin(struct imap *s, struct imap_p *p, int64_t size, char *reply, size_t rn)
{
    char name[IMAP_NAME_MAX * 2 + 1], date[64];
    struct store_folder f;
    int err;

    s->aflags = 0;
    s->akw[0] = 0;
    s->adate = util_now();
    if (mbox_p_name(s, p, name, sizeof name) || imap_p_sp(p))
        goto bad;
    if (p->i < p->n && p->s[p->i] == '(') {
        if (imap_p_flags(p, &s->aflags, s->akw, sizeof s->akw, 0) || imap_p_sp(p))
            goto bad;
    }
    if (p->i < p->n && p->s[p->i] == '"') {
        if (imap_p_astring(p, date, sizeof date, NULL) || mbox_parse_datetime(date, &s->adate) ||
            imap_p_sp(p))
            goto bad;
    }
    if (imap_p_end(p))
        goto bad;
    err = imap_folder_get(s, name, &f);
    if (err == STORE_NOTFOUND) {
        /* RFC 3501 6.3.11: TRYCREATE tells the client CREATE may help. */
        snprintf(reply, rn, "NO [TRYCREATE] no such mailbox");
        return -1;
    }
    if (err) {
        snprintf(reply, rn, "NO [UNAVAILABLE] cannot open the mailbox now");
        return -1;
    }
    if (conf->message_size_limit > 0 && size > conf->message_size_limit) {
        snprintf(reply, rn, "NO [TOOBIG] message larger than %lld octets",
                 (long long)conf->message_size_limit);
        return -1;
    }
    /* RFC 9208 4.3: refused before the literal is sent. */
    err = quota_room(s->user_id, size);
    if (err <= 0) {
        snprintf(reply, rn, err ? "NO [UNAVAILABLE] cannot read the quota now"
                                : "NO [OVERQUOTA] the mailbox is over its quota");
        return -1;
    }
    s->ab = store_body_new();
    if (!s->ab) {
        snprintf(reply, rn, "NO [UNAVAILABLE] cannot store the message now");
        return -1;
    }
    s->akey = f.key;
    s->auidvalidity = f.uidvalidity;
    return 1;
bad:
    snprintf(reply, rn, "BAD usage: APPEND mailbox [(flags)] [date-time] {size}");
    return -1;
}

void imap_append_end(struct imap *s)
{
    struct store_body *b = s->ab;
    int64_t uid = 0;
    int err;
    char text[128];

    s->ab = NULL;
    if (!b) {
        imap_tagged(s, "NO [UNAVAILABLE] cannot store the message now");
        return;
    }
    err = store_body_finish(b);
    int64_t b_id = b->id;
    if (!err)
        err = store_imap_append(s->user_id, s->akey, b, s->aflags,
                                s->akw, s->adate, &uid);
    store_body_free(b);
    if (err) {
        imap_tagged(s, err == STORE_FULL ? "NO [OVERQUOTA] the disk is full"
                                         : "NO [UNAVAILABLE] cannot store the message now");
        return;
    }
    log_info("imap: user=%s appended uid %lld", s->user, (long long)uid);
    struct store_imap_cache c;
    if (imap_mime_compute(b_id, &c) == 0)      /* once, now: see store_index_local */
        store_imap_cache_free(&c);
    if (s->state == IMAP_SELECTED && s->v.f.key == s->akey)
        imap_sync(s, 0);
    /* RFC 4315 3: APPENDUID uidvalidity uid. */
    snprintf(text, sizeof text, "OK [APPENDUID %lld %lld] APPEND completed", (long long)s->auidvalidity,
             (long long)uid);
    imap_reply_after_commit(s, text);
}
