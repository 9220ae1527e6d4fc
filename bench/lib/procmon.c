/*
 * procmon - process-tree probe used by bench/accept.sh
 *
 *   procmon cpu  ROOTPID               print CPU ms of the tree (see below)
 *   procmon pss  ROOTPID               print current PSS (kB) summed over the tree
 *   procmon peak ROOTPID MS OUTFILE    sample the PSS sum every MS milliseconds
 *                                      until SIGTERM/SIGINT or until ROOTPID is
 *                                      gone, then write "PEAK_KB MAXPROCS" to
 *                                      OUTFILE
 *
 * The tree is ROOTPID plus all of its descendants, found by reading the
 * parent pid of every process in /proc at each sample, so children that a
 * server forks on demand (Postfix smtpd, cleanup, smtp, ...) are included.
 *
 * CPU of the tree = sum over live members of utime+stime+cutime+cstime.
 * A child that has exited and been reaped is included in its parent's
 * cutime/cstime, so the figure only grows; the difference between two
 * readings is the CPU the whole tree used in between.
 */
#include <ctype.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAXP 65536

struct pinfo {
    int pid, ppid;
    char state;
    unsigned long long ticks;   /* utime+stime+cutime+cstime */
};

static struct pinfo procs[MAXP];
static int nprocs;
static volatile sig_atomic_t stop_flag;

static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static int read_stat(int pid, struct pinfo *p)
{
    char path[64], buf[1024];
    FILE *f;
    size_t n;
    char *rp;
    unsigned long long ut, st;
    long long cut, cst;
    int ppid;
    char state;

    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (!(f = fopen(path, "r")))
        return -1;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* comm may contain spaces and parentheses: parse after the last ')' */
    if (!(rp = strrchr(buf, ')')))
        return -1;
    if (sscanf(rp + 2, "%c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld",
               &state, &ppid, &ut, &st, &cut, &cst) != 6)
        return -1;
    p->pid = pid;
    p->ppid = ppid;
    p->state = state;
    p->ticks = ut + st + (unsigned long long)(cut > 0 ? cut : 0) +
               (unsigned long long)(cst > 0 ? cst : 0);
    return 0;
}

static void scan(void)
{
    DIR *d = opendir("/proc");
    struct dirent *e;

    nprocs = 0;
    if (!d)
        return;
    while ((e = readdir(d)) && nprocs < MAXP) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        if (read_stat(atoi(e->d_name), &procs[nprocs]) == 0)
            nprocs++;
    }
    closedir(d);
}

/* mark members of the tree rooted at root; returns number of members */
static int mark_tree(int root, char *in)
{
    int i, changed = 1, count = 0;

    for (i = 0; i < nprocs; i++)
        in[i] = procs[i].pid == root;
    while (changed) {
        changed = 0;
        for (i = 0; i < nprocs; i++) {
            int j;
            if (in[i])
                continue;
            for (j = 0; j < nprocs; j++)
                if (in[j] && procs[j].pid == procs[i].ppid) {
                    in[i] = 1;
                    changed = 1;
                    break;
                }
        }
    }
    for (i = 0; i < nprocs; i++)
        count += in[i];
    return count;
}

static long pss_kb(int pid)
{
    char path[64], line[256];
    FILE *f;
    long kb = 0, v;

    snprintf(path, sizeof path, "/proc/%d/smaps_rollup", pid);
    if (!(f = fopen(path, "r")))
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Pss: %ld kB", &v) == 1) {
            kb = v;
            break;
        }
    fclose(f);
    return kb;
}

static int root_alive(int root)
{
    struct pinfo p;
    return read_stat(root, &p) == 0 && p.state != 'Z';
}

static long tree_pss(int root, int *members)
{
    static char in[MAXP];
    long sum = 0;
    int i;

    scan();
    *members = mark_tree(root, in);
    for (i = 0; i < nprocs; i++)
        if (in[i] && procs[i].state != 'Z')
            sum += pss_kb(procs[i].pid);
    return sum;
}

int main(int argc, char **argv)
{
    static char in[MAXP];
    int root, i, members;

    if (argc < 3) {
        fprintf(stderr, "usage: procmon cpu|pss ROOTPID | procmon peak ROOTPID MS OUTFILE\n");
        return 2;
    }
    root = atoi(argv[2]);
    if (strcmp(argv[1], "cpu") == 0) {
        unsigned long long t = 0;
        long hz = sysconf(_SC_CLK_TCK);
        scan();
        mark_tree(root, in);
        for (i = 0; i < nprocs; i++)
            if (in[i])
                t += procs[i].ticks;
        printf("%llu\n", t * 1000ULL / (unsigned long long)(hz > 0 ? hz : 100));
        return 0;
    }
    if (strcmp(argv[1], "pss") == 0) {
        printf("%ld\n", tree_pss(root, &members));
        return 0;
    }
    if (strcmp(argv[1], "peak") == 0 && argc >= 5) {
        long peak = 0, cur;
        int maxm = 0;
        long ms = atol(argv[3]);
        struct timespec ts;
        FILE *out;

        ts.tv_sec = ms / 1000;
        ts.tv_nsec = (ms % 1000) * 1000000L;
        signal(SIGTERM, on_signal);
        signal(SIGINT, on_signal);
        while (!stop_flag && root_alive(root)) {
            cur = tree_pss(root, &members);
            if (cur > peak)
                peak = cur;
            if (members > maxm)
                maxm = members;
            nanosleep(&ts, NULL);
        }
        if (!(out = fopen(argv[4], "w")))
            return 1;
        fprintf(out, "%ld %d\n", peak, maxm);
        fclose(out);
        return 0;
    }
    fprintf(stderr, "procmon: bad arguments\n");
    return 2;
}
