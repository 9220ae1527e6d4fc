/*
 * store_ops.c: the queries behind the operator's commands (status, queue
 * list/show/delete, poll's account of what stayed queued).  Read-mostly
 * and kept apart from the delivery path's SQL in store.c and
 * store_deliver.c.
 */
#include "internal.h"

#include <string.h>

/* Remote recipients still queued and not held by `queue hold`: for one
 * destination domain, or ("" ) for every one (all go to the relayhost). */
int64_t store_ops_queued_remote(const char *domain)
{
    static sqlite3_stmt *one, *all;
    sqlite3_stmt *st;
    int64_t n = -1;

    if (domain[0]) {
        st = store_stmt(&one, "SELECT count(*) FROM rcpt WHERE state=0 AND kind=2 AND dest=?"
                              " AND message_id NOT IN (SELECT id FROM message WHERE hold=1)");
        if (st)
            sqlite3_bind_text(st, 1, domain, -1, SQLITE_TRANSIENT);
    } else {
        st = store_stmt(&all, "SELECT count(*) FROM rcpt WHERE state=0 AND kind=2"
                              " AND message_id NOT IN (SELECT id FROM message WHERE hold=1)");
    }
    if (!st)
        return -1;
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return n;
}
