/*
 * unit.h: the smallest unit test framework that does the job.
 *
 *   #include "../../mailnode.c"
 *   #include "unit.h"
 *
 *   TEST(parse_size) {
 *       CHECK(conf_parse_size("10M") == 10 * 1024 * 1024);
 *       CHECK_STR(buf, "expected");
 *   }
 *
 *   int main(void) {
 *       RUN(parse_size);
 *       return unit_done();
 *   }
 *
 * RUN prints "ok NAME" or "FAIL NAME: file:line: expression" (the first
 * failed check); every failed check is also printed as a "#" line. A
 * failed check does not stop the test, so one run shows every problem.
 */
#ifndef MAILNODE_UNIT_H
#define MAILNODE_UNIT_H

#include <stdio.h>
#include <string.h>

static int  unit_failures;          /* failed tests so far */
static int  unit_checks_failed;     /* failed checks in the current test */
static char unit_first[512];        /* first failure of the current test */

static inline void unit_fail(const char *file, int line, const char *what)
{
    if (unit_checks_failed++ == 0)
        snprintf(unit_first, sizeof unit_first, "%s:%d: %s", file, line, what);
    printf("#   %s:%d: %s\n", file, line, what);
}

#define CHECK(cond) \
    do { if (!(cond)) unit_fail(__FILE__, __LINE__, "CHECK(" #cond ")"); } while (0)

/* Like CHECK, but says what the values were. */
#define CHECK_INT(got, want) do { \
        long long unit_g_ = (long long)(got), unit_w_ = (long long)(want); \
        if (unit_g_ != unit_w_) { \
            char unit_m_[256]; \
            snprintf(unit_m_, sizeof unit_m_, "%s is %lld, want %lld", #got, unit_g_, unit_w_); \
            unit_fail(__FILE__, __LINE__, unit_m_); \
        } \
    } while (0)

#define CHECK_STR(got, want) do { \
        const char *unit_g_ = (got), *unit_w_ = (want); \
        if (!unit_g_ || !unit_w_ || strcmp(unit_g_, unit_w_) != 0) { \
            char unit_m_[400]; \
            snprintf(unit_m_, sizeof unit_m_, "%s is \"%.150s\", want \"%.150s\"", #got, \
                     unit_g_ ? unit_g_ : "(null)", unit_w_ ? unit_w_ : "(null)"); \
            unit_fail(__FILE__, __LINE__, unit_m_); \
        } \
    } while (0)

#define TEST(name) static void unit_test_##name(void)

#define RUN(name) unit_run(#name, unit_test_##name)

static inline void unit_run(const char *name, void (*fn)(void))
{
    unit_checks_failed = 0;
    fn();
    if (unit_checks_failed == 0) {
        printf("ok %s\n", name);
    } else {
        unit_failures++;
        if (unit_checks_failed > 1)
            printf("FAIL %s: %s (and %d more)\n", name, unit_first, unit_checks_failed - 1);
        else
            printf("FAIL %s: %s\n", name, unit_first);
    }
    fflush(stdout);
}

static inline int unit_done(void)
{
    return unit_failures ? 1 : 0;
}

#endif
