/*
 * quota.c: mailbox quotas.  A user's limit is the user's own (`mailnode
 * user quota`), else quota.default; 0 is no limit.  What a mailbox holds
 * is a counter the store keeps by trigger (store.c migration 9), so each
 * check reads one row.
 *
 * Quotas are checked where mail can still be refused without losing it:
 * SMTP RCPT (452 4.2.2, a temporary failure, so the sender retries:
 * RFC 3463 X.2.2 "mailbox full"), IMAP APPEND and COPY (NO [OVERQUOTA],
 * RFC 9208 4.3).  Mail already accepted is always delivered, so a mailbox
 * may end a little over its limit; it then refuses more until mail is
 * deleted (IMAP EXPUNGE, POP3 DELE).
 */
#include "internal.h"

int64_t quota_limit(int64_t own)
{
    if (own >= 0)
        return own;
    return conf->quota_default > 0 ? conf->quota_default : 0;
}

int quota_get(int64_t user_id, struct quota *q)
{
    int64_t own = -1;
    int err = store_user_usage(user_id, &q->bytes, &q->msgs, &own);

    q->limit = err ? 0 : quota_limit(own);
    return err;
}

int quota_room(int64_t user_id, int64_t add)
{
    struct quota q;
    int err = quota_get(user_id, &q);

    if (err)
        return err;
    if (!q.limit)
        return 1;
    /* Full at the limit; a message that would cross it is refused too
     * when its size is known (APPEND, COPY, SMTP SIZE=). */
    return q.bytes < q.limit && (add <= 0 || q.bytes + add <= q.limit);
}
