/* Unit tests of what differs between the architectures mailnode runs on
 * (x86-64, arm64, armhf, and big-endian s390x as a test target;
 * tests/cross/run runs this file under qemu-user): a 64-bit time_t and
 * off_t on 32-bit ARM, byte layouts and digests of integers that are
 * defined byte by byte rather than by the host's byte order or the
 * compiler's struct packing (each test pins the exact bytes, so it fails
 * on whichever byte order the code got wrong), and reads from unaligned
 * buffers. */
#include "../../mailnode.c"
#include "unit.h"

#include <fcntl.h>
#include <stdalign.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* 2039-01-01 00:00:00 UTC and 2100-03-01 00:00:00 UTC: both past the
 * 32-bit time_t limit of 2038-01-19. */
#define T_2039 INT64_C(2177452800)
#define T_2100 INT64_C(4107542400)

TEST(time_t_is_64_bit)
{
    /* armhf builds with -D_TIME_BITS=64 (Makefile CROSS_DEFS): without
     * it this is 4 and every date after January 2038 wraps. */
    CHECK_INT(sizeof(time_t), 8);
    time_t t = (time_t)T_2100;
    CHECK((int64_t)t == T_2100);
    struct tm tm;
    CHECK(gmtime_r(&t, &tm) != NULL);
    CHECK_INT(tm.tm_year + 1900, 2100);
    CHECK_INT(tm.tm_mon, 2);
    CHECK_INT(tm.tm_mday, 1);
    CHECK_INT((int64_t)timegm(&tm), T_2100);
}

TEST(dates_past_2038)
{
    char buf[64];
    setenv("TZ", "UTC", 1);
    tzset();
    util_date(T_2039, buf, sizeof buf);
    CHECK_STR(buf, "Sat, 1 Jan 2039 00:00:00 +0000");
    util_date(T_2100 + 3661, buf, sizeof buf);
    CHECK_STR(buf, "Mon, 1 Mar 2100 01:01:01 +0000");
    /* The clock itself: queue time is 64-bit and not wrapped. */
    CHECK(util_now() > INT64_C(1700000000));
    CHECK(util_now_ms() >= 0);
}

TEST(off_t_is_64_bit)
{
    /* -D_FILE_OFFSET_BITS=64: a database or spool file past 2 GiB on a
     * 32-bit box.  A sparse file costs no space. */
    char path[] = "/tmp/mailnode-abi-XXXXXX";
    int fd = mkstemp(path);
    struct stat st;

    CHECK_INT(sizeof(off_t), 8);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    unlink(path);
    off_t far = (off_t)3 << 30;         /* 3 GiB */
    CHECK(lseek(fd, far, SEEK_SET) == far);
    CHECK(write(fd, "x", 1) == 1);
    CHECK(fstat(fd, &st) == 0 && (int64_t)st.st_size == (int64_t)far + 1);
    close(fd);
}

/* The bundle header is written byte by byte (docs/bundle-format.md), not
 * as a struct: the same bytes on every architecture, whatever the
 * compiler's padding of struct bundle_header or the host's byte order. */
static void fill_header(struct bundle_header *h)
{
    memset(h, 0, sizeof *h);
    h->kind = BUNDLE_KIND_MAIL;
    h->created = T_2100 + 0x0102;
    for (int i = 0; i < 16; i++)
        h->bundle_id[i] = (unsigned char)(0xa0 + i);
    h->volume = 0x01020304u;
    for (int i = 0; i < 32; i++) {
        h->sender_sign_pk[i] = (unsigned char)i;
        h->recipient_box_pk[i] = (unsigned char)(0x40 + i);
    }
    memset(h->sealed_key, 0x5a, sizeof h->sealed_key);
    memset(h->ss_header, 0x6b, sizeof h->ss_header);
}

TEST(bundle_header_layout)
{
    struct bundle_header h, back;
    unsigned char out[BUNDLE_HDR_SIGNED];
    static const unsigned char head[] = {
        'M', 'N', 'B', 'U', 'N', 'D', 'L', 'E',     /* magic */
        BUNDLE_VERSION, BUNDLE_KIND_MAIL, 0, 0,     /* version, kind, flags */
        0x00, 0x00, 0x00, 0x00, 0xf4, 0xd4, 0x20, 0x82, /* created, big-endian */
    };

    fill_header(&h);
    bundle_header_encode(&h, out);
    CHECK(!memcmp(out, head, sizeof head));
    CHECK(out[20] == 0xa0 && out[35] == 0xaf);                          /* id */
    CHECK(out[36] == 1 && out[37] == 2 && out[38] == 3 && out[39] == 4); /* volume */
    CHECK(out[40] == 0 && out[71] == 31);                               /* signer */
    CHECK(out[72] == 0x40 && out[103] == 0x5f);                         /* recipient */
    CHECK(out[104] == 0x5a && out[BUNDLE_HDR_SIGNED - 1] == 0x6b);
    CHECK(BUNDLE_HDR_LEN == BUNDLE_HDR_SIGNED + crypto_sign_BYTES);

    /* Read back from a buffer at an odd address: no aligned loads. */
    unsigned char *raw = malloc(BUNDLE_HDR_LEN + 1);
    CHECK(raw != NULL);
    if (!raw)
        return;
    memcpy(raw + 1, out, BUNDLE_HDR_SIGNED);
    memset(raw + 1 + BUNDLE_HDR_SIGNED, 0x77, crypto_sign_BYTES);
    CHECK_INT(bundle_header_decode(raw + 1, BUNDLE_HDR_LEN, &back), 0);
    CHECK_INT(back.created, h.created);
    CHECK(back.volume == h.volume);
    CHECK(!memcmp(back.bundle_id, h.bundle_id, 16));
    CHECK(!memcmp(back.sealed_key, h.sealed_key, sizeof h.sealed_key));
    CHECK(back.signature[0] == 0x77);
    free(raw);
}

TEST(md5_unaligned)
{
    /* md5.c reads its input bytewise: an odd address gives the same
     * digest (RFC 1321 test vector "abc"). */
    static const unsigned char want[16] = {
        0x90, 0x01, 0x50, 0x98, 0x3c, 0xd2, 0x4f, 0xb0,
        0xd6, 0x96, 0x3f, 0x7d, 0x28, 0xe1, 0x7f, 0x72,
    };
    alignas(8) char buf[80];
    unsigned char d[16];

    for (int off = 0; off < 4; off++) {
        memcpy(buf + off, "abc", 3);
        md5_digest(buf + off, 3, d);
        CHECK(!memcmp(d, want, 16));
    }
}

TEST(sqlite_int64_round_trip)
{
    /* Times and sizes go through SQLite as 64-bit integers on every
     * architecture. */
    sqlite3 *db;
    sqlite3_stmt *st;
    CHECK(sqlite3_open(":memory:", &db) == SQLITE_OK);
    CHECK(sqlite3_prepare_v2(db, "SELECT ?1 + 1", -1, &st, NULL) == SQLITE_OK);
    sqlite3_bind_int64(st, 1, T_2100);
    CHECK(sqlite3_step(st) == SQLITE_ROW);
    CHECK_INT(sqlite3_column_int64(st, 0), T_2100 + 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

TEST(host_byte_order)
{
    /* Says which byte order this run covers (the cross runs' logs show
     * both), and checks the compiler's idea of it against memory. */
    const uint32_t probe = 0x01020304u;
    unsigned char b[4];
    memcpy(b, &probe, 4);
    int big = b[0] == 0x01 && b[1] == 0x02 && b[2] == 0x03 && b[3] == 0x04;
    int little = b[0] == 0x04 && b[1] == 0x03 && b[2] == 0x02 && b[3] == 0x01;
    CHECK(big || little);
    printf("# %s-endian host\n", big ? "big" : "little");
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    CHECK(big);
#elif defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    CHECK(little);
#endif
#if defined(__s390x__)
    CHECK(big);                         /* the big-endian test target */
#endif
}

TEST(bundle_integers_big_endian)
{
    /* Frame lengths, record lengths, the volume number and the creation
     * time (docs/bundle-format.md): most significant byte first, on
     * every host, also at an odd address. */
    unsigned char buf[1 + 8];
    static const unsigned char want64[8] = { 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08 };
    static const unsigned char want32[4] = { 0x0a, 0x0b, 0x0c, 0x0d };

    bundle_put64(buf + 1, UINT64_C(0x0102030405060708));
    CHECK(!memcmp(buf + 1, want64, 8));
    CHECK(bundle_get64(buf + 1) == UINT64_C(0x0102030405060708));
    bundle_put32(buf + 1, 0x0a0b0c0du);
    CHECK(!memcmp(buf + 1, want32, 4));
    CHECK(bundle_get32(buf + 1) == 0x0a0b0c0du);
    bundle_put32(buf + 1, 0xfffffffeu);
    CHECK(bundle_get32(buf + 1) == 0xfffffffeu && buf[1] == 0xff && buf[4] == 0xfe);
}

TEST(resume_rcpt_digest_byte_order)
{
    /* The XRESUME transfer id carries a BLAKE2b-64 digest of the
     * recipient ids, each as 8 bytes least significant first.  Both ends
     * must derive the same id from the same state, also when a database
     * moves to a host of the other byte order: the digest is pinned to
     * what x86-64 and ARM nodes send. */
    struct store_out_rcpt r[2];
    struct store_out_msg m;
    unsigned char rd[8], want[8];
    static const unsigned char bytes[16] = {
        0x01, 0, 0, 0, 0, 0, 0, 0,
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
    };
    char hex[17];

    memset(r, 0, sizeof r);
    memset(&m, 0, sizeof m);
    r[0].id = 1;
    r[1].id = INT64_C(0x0102030405060708);
    m.rcpts = r;
    m.nrcpt = 2;
    resume_rcpt_digest(&m, rd);
    sodium_bin2hex(hex, sizeof hex, rd, sizeof rd);
    CHECK_STR(hex, "2c26351df3689d2d");
    crypto_generichash(want, sizeof want, bytes, sizeof bytes, NULL, 0);
    CHECK(!memcmp(rd, want, 8));
    /* Order matters: the recipients as picked, not a set. */
    r[0].id = INT64_C(0x0102030405060708);
    r[1].id = 1;
    resume_rcpt_digest(&m, rd);
    CHECK(memcmp(rd, want, 8) != 0);
}

TEST(md5_length_bytes)
{
    /* RFC 1321 A.5: 80 octets, so the 64-bit bit count (640 = 0x280)
     * spans two bytes, stored least significant first; the message spans
     * two blocks.  At an odd address too. */
    static const char msg[] =
        "12345678901234567890123456789012345678901234567890123456789012345678901234567890";
    static const unsigned char want[16] = {
        0x57, 0xed, 0xf4, 0xa2, 0x2b, 0xe3, 0xc9, 0x55,
        0xac, 0x49, 0xda, 0x2e, 0x21, 0x07, 0xb6, 0x7a,
    };
    char buf[81];
    unsigned char d[16];

    md5_digest(msg, 80, d);
    CHECK(!memcmp(d, want, 16));
    memcpy(buf + 1, msg, 80);
    md5_digest(buf + 1, 80, d);
    CHECK(!memcmp(d, want, 16));
}

int main(void)
{
    RUN(host_byte_order);
    RUN(time_t_is_64_bit);
    RUN(dates_past_2038);
    RUN(off_t_is_64_bit);
    RUN(bundle_header_layout);
    RUN(md5_unaligned);
    RUN(md5_length_bytes);
    RUN(bundle_integers_big_endian);
    RUN(resume_rcpt_digest_byte_order);
    RUN(sqlite_int64_round_trip);
    return unit_done();
}
