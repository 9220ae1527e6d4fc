/*
 * mailnode: an offline-first store-and-forward mail node.
 *
 * Public face of the program.  Everything else is internal; the one entry
 * point below lets the node be embedded in a larger program (a device's
 * management daemon, say) exactly as the command line runs it.
 */
#ifndef MAILNODE_H
#define MAILNODE_H

#define MAILNODE_VERSION "0.1.0"

#ifdef __cplusplus
extern "C" {
#endif

/* Runs one mailnode command line ("run", "sendmail", "queue", ...) as the
 * mailnode(8) binary would; returns a sysexits(3) code. */
int mailnode_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif
