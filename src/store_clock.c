/*
 * store_clock.c: what queue time (util.c) needs from the database: the
 * offset between queue time and the wall clock, kept in meta, and the
 * newest time this node has written, below which queue time never starts.
 */
#include "internal.h"

#include <stdlib.h>

#define CLOCK_META_KEY "clock_offset"

/* The newest stored time, from indexed or small tables only: the newest
 * message (message_received), the newest mailbox entry (its uid is the
 * rowid), the destinations and the meta facts. */
static int64_t store_clock_floor(void)
{
    static sqlite3_stmt *st;
    int64_t floor = 0;

    if (!store_stmt(&st, "SELECT max(coalesce((SELECT max(received) FROM message), 0),"
                         " coalesce((SELECT added FROM mbox WHERE uid=(SELECT max(uid) FROM mbox)), 0),"
                         " coalesce((SELECT max(max(coalesce(last_try, 0), coalesce(last_ok, 0))) FROM dest), 0),"
                         " coalesce((SELECT max(updated) FROM meta), 0))"))
        return 0;
    if (sqlite3_step(st) == SQLITE_ROW)
        floor = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return floor;
}

int store_clock_load(void)
{
    char value[32];
    int64_t offset = 0;

    if (store_meta_get(CLOCK_META_KEY, value, sizeof value, NULL) == 0)
        offset = strtoll(value, NULL, 10);
    util_clock_start(offset, store_clock_floor());
    return 0;
}

int store_clock_save(void)
{
    char value[32];
    int moved;
    int64_t offset = util_clock_offset(&moved);

    if (!moved)
        return 0;
    snprintf(value, sizeof value, "%lld", (long long)offset);
    log_info("queue time is the wall clock %+llds", (long long)offset);
    return store_meta_set(CLOCK_META_KEY, value);
}
