/*
 * link.c: watching the network come up.  On Linux an rtnetlink socket
 * reports links, addresses and routes as they change; when a link comes
 * up, an address appears or a route is added, the queue gets a flush: the
 * backoff of every destination is reset and a delivery run starts, so mail
 * queued while the satellite or radio link was down leaves the moment it
 * is back rather than at the next retry.
 *
 * Events come in bursts (a link coming up brings a link change, several
 * addresses and routes within milliseconds), so they are coalesced: the
 * first one arms a timer 300 ms out, the ones before it fires are folded
 * in, and runs are at least 2 s apart.  A link that flaps costs one run
 * per 2 s, not one per event.
 *
 * The kernel repeats some notifications without a change (IPv6 addresses
 * and links re-announced when a router advertisement refreshes lifetimes,
 * flag changes on a link that stays up).  Those must not count, or every
 * router advertisement would reset the retry schedule of every down
 * destination; so the module keeps the state of each link and the set of
 * addresses, primed by a dump at start, and reacts to transitions only.
 *
 * Elsewhere link_watch_start does nothing: `mailnode flush` from an
 * interface hook (if-up.d, ppp ip-up) does the same job.
 */
#include "internal.h"

#ifdef __linux__

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <sys/epoll.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>

/* Reads are bounded: a burst larger than the socket buffer overruns
 * (ENOBUFS), which is handled as "something changed". */
#define LINK_READ_BUF     (8 * 1024)
#define LINK_RCVBUF       (256 * 1024)
#define LINK_READS_MAX    64            /* per wake-up, to stay fair to the rest */
#define LINK_DELAY_MS     300           /* let the burst settle */
#define LINK_SPACING_MS   2000          /* at most one run per 2 s */
#define LINK_MAX_IFS      1024
#define LINK_MAX_ADDRS    1024

struct link_if {
    int index;
    unsigned flags;
    char name[IF_NAMESIZE];
};

struct link_addr {
    int index;
    unsigned char family, prefixlen;
    unsigned char addr[16];
};

enum link_dump { LINK_DUMP_NONE, LINK_DUMP_LINKS, LINK_DUMP_ADDRS };

static struct {
    struct watch w;
    uint32_t portid;                    /* ours, for telling dump replies apart */
    uint32_t seq;
    int dump;                           /* enum link_dump in progress */
    uint32_t dump_seq;
    int dump_again;                     /* an overrun during the dump: redo it */
    struct link_if *ifs;
    size_t n_ifs;
    struct link_addr *addrs;
    size_t n_addrs;
    struct timer timer;
    int armed;
    int64_t last_run;                   /* monotonic ms of the last flush */
    int folded;                         /* events folded into the armed run */
    char first[160];                    /* the weightiest event folded in, for the log */
    int weight;                         /* its enum link_weight */
} link_s = { .w = { .fd = -1 }, .timer = { .idx = -1 } };

/* ------------------------------------------------------------- coalescing */

static void link_fire(void *arg)
{
    MN_UNUSED(arg);
    link_s.armed = 0;
    link_s.last_run = util_now_ms();
    if (link_s.folded > 0)
        log_info("link: %s (and %d more change%s); starting a delivery run", link_s.first,
                 link_s.folded, link_s.folded == 1 ? "" : "s");
    else
        log_info("link: %s; starting a delivery run", link_s.first);
    link_s.folded = 0;
    /* A link that came up is the moment to send our queue and to ask the
     * upstream for our mail. */
    queue_flush(NULL);
    poll_kick();
}

/* What an event says, for choosing the log line of a burst: a link
 * coming up explains the addresses and routes that follow it. */
enum link_weight { LINK_W_ROUTE = 1, LINK_W_ADDR, LINK_W_DEFAULT, LINK_W_UP, LINK_W_OVERRUN };

/* what: "link up", "address 10.0.0.2/24", "default route", ...; ifname
 * may be empty. */
static void link_event(const char *what, const char *ifname, int weight)
{
    int64_t now, delay;

    if (link_s.armed) {
        link_s.folded++;
        if (weight > link_s.weight) {
            link_s.weight = weight;
            snprintf(link_s.first, sizeof link_s.first, "%s on %s", what,
                     ifname && *ifname ? ifname : "?");
        }
        return;
    }
    link_s.weight = weight;
    snprintf(link_s.first, sizeof link_s.first, "%s on %s", what, ifname && *ifname ? ifname : "?");
    now = util_now_ms();
    delay = LINK_DELAY_MS;
    if (link_s.last_run && link_s.last_run + LINK_SPACING_MS - now > delay)
        delay = link_s.last_run + LINK_SPACING_MS - now;
    link_s.armed = 1;
    link_s.folded = 0;
    timer_set(&link_s.timer, delay, link_fire, NULL);
}

/* ------------------------------------------------------------ interfaces */

static struct link_if *link_if_find(int index)
{
    for (size_t i = 0; i < link_s.n_ifs; i++)
        if (link_s.ifs[i].index == index)
            return &link_s.ifs[i];
    return NULL;
}

static struct link_if *link_if_add(int index)
{
    struct link_if *l;

    if (link_s.n_ifs == LINK_MAX_IFS)
        return NULL;
    l = realloc(link_s.ifs, (link_s.n_ifs + 1) * sizeof *l);
    if (!l)
        return NULL;
    link_s.ifs = l;
    l = &link_s.ifs[link_s.n_ifs++];
    memset(l, 0, sizeof *l);
    l->index = index;
    return l;
}

static void link_if_del(int index)
{
    struct link_if *l = link_if_find(index);
    if (l)
        *l = link_s.ifs[--link_s.n_ifs];
}

/* The interface's name, from the table or the kernel; "" if unknown. */
static void link_ifname(int index, char name[IF_NAMESIZE])
{
    struct link_if *l = link_if_find(index);

    name[0] = '\0';
    if (l && l->name[0])
        util_strlcpy(name, l->name, IF_NAMESIZE);
    else if (index > 0 && !if_indextoname((unsigned)index, name))
        name[0] = '\0';
}

static int link_is_loopback(int index)
{
    struct link_if *l = link_if_find(index);
    char name[IF_NAMESIZE];

    if (l)
        return (l->flags & IFF_LOOPBACK) != 0;
    link_ifname(index, name);
    return !strcmp(name, "lo");
}

static int link_usable(unsigned flags)
{
    /* IFF_RUNNING is the operational state: carrier present (lower up). */
    return (flags & IFF_UP) && (flags & IFF_RUNNING) && !(flags & IFF_LOOPBACK);
}

static void link_on_link(const struct nlmsghdr *h, int priming)
{
    const struct ifinfomsg *ifi = NLMSG_DATA(h);
    const struct rtattr *a;
    int len = (int)h->nlmsg_len - (int)NLMSG_LENGTH(sizeof *ifi);
    char name[IF_NAMESIZE] = "";
    struct link_if *l;
    int was;

    if (len < 0)
        return;
    for (a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        if (a->rta_type == IFLA_IFNAME && RTA_PAYLOAD(a) > 0) {
            size_t n = RTA_PAYLOAD(a) < IF_NAMESIZE ? RTA_PAYLOAD(a) : IF_NAMESIZE - 1;
            memcpy(name, RTA_DATA(a), n);
            name[n] = '\0';
        }
    }
    if (h->nlmsg_type == RTM_DELLINK) {
        link_if_del(ifi->ifi_index);
        return;
    }
    l = link_if_find(ifi->ifi_index);
    was = l ? link_usable(l->flags) : 0;
    if (!l && !(l = link_if_add(ifi->ifi_index))) {
        /* Table full: without history every "up" counts. */
        if (!priming && link_usable(ifi->ifi_flags))
            link_event("link up", name, LINK_W_UP);
        return;
    }
    l->flags = ifi->ifi_flags;
    if (name[0])
        util_strlcpy(l->name, name, sizeof l->name);
    if (!priming && !was && link_usable(l->flags))
        link_event("link up", l->name, LINK_W_UP);
}

/* ------------------------------------------------------------- addresses */

static int link_addr_find(const struct link_addr *k)
{
    for (size_t i = 0; i < link_s.n_addrs; i++) {
        const struct link_addr *a = &link_s.addrs[i];
        if (a->index == k->index && a->family == k->family && a->prefixlen == k->prefixlen &&
            !memcmp(a->addr, k->addr, sizeof a->addr))
            return (int)i;
    }
    return -1;
}

/* 1 if the address was not known before (or cannot be tracked). */
static int link_addr_add(const struct link_addr *k)
{
    struct link_addr *a;

    if (link_addr_find(k) >= 0)
        return 0;
    if (link_s.n_addrs == LINK_MAX_ADDRS)
        return 1;
    a = realloc(link_s.addrs, (link_s.n_addrs + 1) * sizeof *a);
    if (!a)
        return 1;
    link_s.addrs = a;
    link_s.addrs[link_s.n_addrs++] = *k;
    return 1;
}

static void link_addr_del(const struct link_addr *k)
{
    int i = link_addr_find(k);
    if (i >= 0)
        link_s.addrs[i] = link_s.addrs[--link_s.n_addrs];
}

static void link_on_addr(const struct nlmsghdr *h, int priming)
{
    const struct ifaddrmsg *ifa = NLMSG_DATA(h);
    const struct rtattr *a;
    int len = (int)h->nlmsg_len - (int)NLMSG_LENGTH(sizeof *ifa);
    struct link_addr k;
    unsigned flags;
    int have = 0;
    char ip[INET6_ADDRSTRLEN], what[96], name[IF_NAMESIZE];

    if (len < 0 || (ifa->ifa_family != AF_INET && ifa->ifa_family != AF_INET6))
        return;
    memset(&k, 0, sizeof k);
    k.index = (int)ifa->ifa_index;
    k.family = ifa->ifa_family;
    k.prefixlen = ifa->ifa_prefixlen;
    flags = ifa->ifa_flags;
    for (a = IFA_RTA(ifa); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        size_t alen = ifa->ifa_family == AF_INET ? 4 : 16;
        /* IFA_LOCAL is the address of a point-to-point link's own end;
         * IFA_ADDRESS its peer there, ours elsewhere. */
        if ((a->rta_type == IFA_LOCAL || (a->rta_type == IFA_ADDRESS && !have)) &&
            RTA_PAYLOAD(a) >= alen) {
            memcpy(k.addr, RTA_DATA(a), alen);
            have = 1;
        } else if (a->rta_type == IFA_FLAGS && RTA_PAYLOAD(a) >= sizeof(uint32_t)) {
            memcpy(&flags, RTA_DATA(a), sizeof(uint32_t));
        }
    }
    if (!have)
        return;
    if (h->nlmsg_type == RTM_DELADDR) {
        link_addr_del(&k);
        return;
    }
    /* An IPv6 address becomes usable when duplicate address detection is
     * over; the kernel announces it again then, without the flag. */
    if (flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED))
        return;
    if (!link_addr_add(&k) || priming)
        return;
    /* Host scope (127.0.0.1, ::1) and IPv6 link-local addresses reach no
     * relay. */
    if (ifa->ifa_scope == RT_SCOPE_HOST || (k.family == AF_INET6 && ifa->ifa_scope == RT_SCOPE_LINK) ||
        link_is_loopback(k.index))
        return;
    inet_ntop(k.family, k.addr, ip, sizeof ip);
    snprintf(what, sizeof what, "address %s/%u", ip, k.prefixlen);
    link_ifname(k.index, name);
    link_event(what, name, LINK_W_ADDR);
}

/* ---------------------------------------------------------------- routes */

static void link_on_route(const struct nlmsghdr *h)
{
    const struct rtmsg *rt = NLMSG_DATA(h);
    const struct rtattr *a;
    int len = (int)h->nlmsg_len - (int)NLMSG_LENGTH(sizeof *rt);
    uint32_t table = rt->rtm_table;
    int oif = 0;
    char what[96], dst[INET6_ADDRSTRLEN] = "", name[IF_NAMESIZE] = "";

    if (len < 0 || (rt->rtm_family != AF_INET && rt->rtm_family != AF_INET6))
        return;
    /* Cached clones and non-unicast routes (local, broadcast, multicast,
     * unreachable) say nothing about reaching a relay. */
    if ((rt->rtm_flags & RTM_F_CLONED) || rt->rtm_type != RTN_UNICAST)
        return;
    for (a = RTM_RTA(rt); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        if (a->rta_type == RTA_TABLE && RTA_PAYLOAD(a) >= sizeof(uint32_t))
            memcpy(&table, RTA_DATA(a), sizeof table);
        else if (a->rta_type == RTA_OIF && RTA_PAYLOAD(a) >= sizeof(int))
            memcpy(&oif, RTA_DATA(a), sizeof oif);
        else if (a->rta_type == RTA_DST && RTA_PAYLOAD(a) >= (rt->rtm_family == AF_INET ? 4u : 16u))
            inet_ntop(rt->rtm_family, RTA_DATA(a), dst, sizeof dst);
    }
    if (rt->rtm_dst_len != 0 && table != RT_TABLE_MAIN)
        return;
    if (oif && link_is_loopback(oif))
        return;
    if (rt->rtm_dst_len == 0)
        snprintf(what, sizeof what, "default route (%s)", rt->rtm_family == AF_INET ? "IPv4" : "IPv6");
    else
        snprintf(what, sizeof what, "route %s/%u", dst[0] ? dst : "?", rt->rtm_dst_len);
    if (oif)
        link_ifname(oif, name);
    link_event(what, name, rt->rtm_dst_len == 0 ? LINK_W_DEFAULT : LINK_W_ROUTE);
}

/* ----------------------------------------------------------------- dumps */

/* Asks the kernel for every link or address, to know what is already up. */
static int link_dump_request(int type)
{
    struct {
        struct nlmsghdr h;
        union {
            struct ifinfomsg ifi;
            struct ifaddrmsg ifa;
        } u;
    } req;
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };

    memset(&req, 0, sizeof req);
    req.h.nlmsg_type = (uint16_t)type;
    req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.h.nlmsg_seq = ++link_s.seq;
    if (type == RTM_GETLINK) {
        req.h.nlmsg_len = NLMSG_LENGTH(sizeof req.u.ifi);
        req.u.ifi.ifi_family = AF_UNSPEC;
    } else {
        req.h.nlmsg_len = NLMSG_LENGTH(sizeof req.u.ifa);
        req.u.ifa.ifa_family = AF_UNSPEC;
    }
    if (sendto(link_s.w.fd, &req, req.h.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) {
        log_warn("link: netlink dump request: %s", strerror(errno));
        link_s.dump = LINK_DUMP_NONE;
        return -1;
    }
    link_s.dump = type == RTM_GETLINK ? LINK_DUMP_LINKS : LINK_DUMP_ADDRS;
    link_s.dump_seq = req.h.nlmsg_seq;
    return 0;
}

static void link_dump_start(void)
{
    if (link_s.dump != LINK_DUMP_NONE) {
        link_s.dump_again = 1;
        return;
    }
    link_s.dump_again = 0;
    link_dump_request(RTM_GETLINK);
}

/* The dump in progress ended (NLMSG_DONE or an error). */
static void link_dump_done(void)
{
    if (link_s.dump == LINK_DUMP_LINKS && !link_s.dump_again) {
        link_dump_request(RTM_GETADDR);
        return;
    }
    link_s.dump = LINK_DUMP_NONE;
    if (link_s.dump_again)
        link_dump_start();
}

/* ---------------------------------------------------------------- socket */

static void link_overrun(void)
{
    /* Events were lost: something changed, and the tables may be stale. */
    link_event("netlink overrun (events lost)", "all interfaces", LINK_W_OVERRUN);
    link_dump_start();
}

static void link_parse(const unsigned char *buf, size_t n)
{
    const struct nlmsghdr *h;
    int len = (int)n;

    for (h = (const struct nlmsghdr *)(const void *)buf; NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
        int priming = link_s.dump != LINK_DUMP_NONE && h->nlmsg_pid == link_s.portid &&
                      h->nlmsg_seq == link_s.dump_seq;

        if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) {
            if (priming)
                link_dump_done();
            continue;
        }
        switch (h->nlmsg_type) {
        case RTM_NEWLINK:
        case RTM_DELLINK:
            if (h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct ifinfomsg)))
                link_on_link(h, priming);
            break;
        case RTM_NEWADDR:
        case RTM_DELADDR:
            if (h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct ifaddrmsg)))
                link_on_addr(h, priming);
            break;
        case RTM_NEWROUTE:
            if (!priming && h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct rtmsg)))
                link_on_route(h);
            break;
        default:
            break;
        }
    }
}

static void link_readable(struct watch *w, uint32_t events)
{
    unsigned char buf[LINK_READ_BUF] __attribute__((aligned(NLMSG_ALIGNTO)));

    MN_UNUSED(events);
    for (int i = 0; i < LINK_READS_MAX; i++) {
        struct sockaddr_nl from;
        struct iovec iov = { buf, sizeof buf };
        struct msghdr msg = { .msg_name = &from, .msg_namelen = sizeof from,
                              .msg_iov = &iov, .msg_iovlen = 1 };
        ssize_t r = recvmsg(w->fd, &msg, 0);

        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ENOBUFS) {
                link_overrun();
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                log_warn("link: netlink read: %s", strerror(errno));
            return;
        }
        /* Only the kernel speaks for the network; any local process could
         * send to our port id. */
        if (msg.msg_namelen != sizeof from || from.nl_pid != 0)
            continue;
        /* A message bigger than our buffer: its tail is lost, so count it
         * as a change (no dump: that could be truncated again, for ever). */
        if (msg.msg_flags & MSG_TRUNC) {
            link_event("netlink message cut (too large)", "?", LINK_W_OVERRUN);
            continue;
        }
        link_parse(buf, (size_t)r);
    }
}

int link_watch_start(void)
{
    struct sockaddr_nl sa = { .nl_family = AF_NETLINK };
    socklen_t sl = sizeof sa;
    int fd, size = LINK_RCVBUF;

    if (link_s.w.fd >= 0)
        return 0;
    fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) {
        log_warn("link: netlink socket: %s; link changes are not watched (use `mailnode flush`)",
                 strerror(errno));
        return -1;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size) < 0)
        log_debug("link: SO_RCVBUF: %s", strerror(errno));
    sa.nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE |
                   RTMGRP_IPV6_ROUTE;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) {
        log_warn("link: netlink bind: %s; link changes are not watched (use `mailnode flush`)",
                 strerror(errno));
        close(fd);
        return -1;
    }
    link_s.portid = sa.nl_pid;
    link_s.w.fd = fd;
    link_s.w.events = EPOLLIN;
    link_s.w.fn = link_readable;
    link_s.w.arg = NULL;
    if (loop_watch_add(&link_s.w) < 0) {
        log_warn("link: cannot watch the netlink socket: %s", strerror(errno));
        close(fd);
        link_s.w.fd = -1;
        return -1;
    }
    link_dump_start();
    log_info("link: watching links, addresses and routes");
    return 0;
}

void link_watch_stop(void)
{
    if (link_s.w.fd < 0)
        return;
    timer_cancel(&link_s.timer);
    link_s.armed = 0;
    loop_watch_del(&link_s.w);
    close(link_s.w.fd);
    link_s.w.fd = -1;
    link_s.dump = LINK_DUMP_NONE;
    free(link_s.ifs);
    link_s.ifs = NULL;
    link_s.n_ifs = 0;
    free(link_s.addrs);
    link_s.addrs = NULL;
    link_s.n_addrs = 0;
}

#else /* !__linux__ */

int link_watch_start(void)
{
    return 0;
}

void link_watch_stop(void)
{
}

#endif
