# mailnode: build, test and maintenance targets (GNU make).
#
#   make                  build ./mailnode from mailnode.c and the SQLite amalgamation
#   make SQLITE=system    link the system libsqlite3 instead
#   make TLS=none         build without OpenSSL (default: OpenSSL if pkg-config finds it)
#   make SAN=1            build with AddressSanitizer and UBSan
#   make static           ./mailnode-static: static binary, no TLS, stripped,
#                         optimized for size (STATIC_OPT=-O2 for speed)
#   make static TLS=mbedtls   the same with TLS through mbedTLS (TLS=openssl: OpenSSL)
#   make TLS=mbedtls      TLS through mbedTLS instead of OpenSSL
#   make CROSS=aarch64-linux-gnu [static]   cross build (also arm-linux-gnueabihf,
#                         and s390x-linux-gnu: big-endian, a test target only)
#                         into build/<triplet>/mailnode (and mailnode-static)
#   make cross-deps       install (as root) the cross compilers, qemu-user and
#                         the :arm64/:armhf/:s390x libraries the cross builds need
#   make test-cross       unit tests and a protocol smoke test of each cross
#                         build under qemu-user (CROSS_TRIPLETS to choose;
#                         default all three), and of the native static build
#   make deps             install (as root) or list missing Debian packages
#   make run              deps, build, then `./mailnode run` on embedded defaults
#   make test             deps, check-amalgamation, build, then tests/run
#   make amalgamation     regenerate mailnode.c and mailnode.h from src/
#   make check-amalgamation   fail if mailnode.c or mailnode.h is stale
#   make fuzz             build the libFuzzer harnesses (clang) and run each for
#                         FUZZ_SECONDS (default 60) on a copy of its seed corpus
#   make test-valgrind    the protocol tests with the daemon under valgrind
#   make install          install bin/mailnode, the man pages and the systemd unit
#                         under PREFIX (/usr/local); INSTALL_SENDMAIL=1 adds
#                         sbin/sendmail, INSTALL_PROCD=1 the OpenWrt init script
#   make clean            remove build products (keeps the fetched sqlite3.c/.h)
#   make distclean        clean, and remove sqlite3.c/.h too

MAKEFLAGS += --no-builtin-rules
.SUFFIXES:
.DELETE_ON_ERROR:
.DEFAULT_GOAL := all

PKG_CONFIG ?= pkg-config
CFLAGS     ?= -Wall -Wextra -O2 -g
STD_FLAGS  := -std=c11 -D_GNU_SOURCE
SQLITE     ?= amalgamation
SAN        ?= 0

# --- SQLite amalgamation: where it comes from and how it is built --------

SQLITE_VERSION    := 3.54.1
SQLITE_URL        := https://registry.npmjs.org/better-sqlite3/-/better-sqlite3-13.2.0.tgz
SQLITE_TGZ_SHA256 := 40487589df3496f2ee0079d22b73c63fccebe7db0e8ee9a2c42421861e321e0b
SQLITE_TGZ_PATH   := package/deps/sqlite3
SQLITE_C_SHA256   := 75a4760a7b9727a4c4c877aec92eacf39e52a8f2921ce00bd33be6d3a8e8e254
SQLITE_H_SHA256   := d6c84557261893439b341d2e6c35187ae3ea24fbfd843ad94616f72d89242b8c

# mailnode is one thread using one connection, so SQLite's locking, memory
# statistics and extension loading are dead weight. SQLITE_DQS=0: string
# literals in SQL take single quotes only, a double-quoted name that does
# not exist is an error instead of a silent string.
# SQLITE_OMIT_AUTOINIT is left out on purpose: with it, any SQLite call made
# before sqlite3_initialize() crashes (sqlite3_open_v2 segfaults), and the
# gain is one branch per API call.
SQLITE_OPTS := \
	-DSQLITE_THREADSAFE=0 \
	-DSQLITE_DEFAULT_MEMSTATUS=0 \
	-DSQLITE_OMIT_LOAD_EXTENSION \
	-DSQLITE_OMIT_DEPRECATED \
	-DSQLITE_OMIT_SHARED_CACHE \
	-DSQLITE_DQS=0 \
	-DSQLITE_LIKE_DOESNT_MATCH_BLOBS \
	-DSQLITE_MAX_EXPR_DEPTH=0 \
	-DSQLITE_OMIT_PROGRESS_CALLBACK \
	-DSQLITE_DEFAULT_WAL_SYNCHRONOUS=1 \
	-DSQLITE_USE_ALLOCA \
	-DSQLITE_OMIT_JSON
SQLITE_CFLAGS ?= -Os

# --- cross builds ---------------------------------------------------------
# CROSS=<triplet> builds with Debian's <triplet>-gcc against the libraries
# of that architecture (libsodium-dev:arm64 and so on, see `make
# cross-deps`) into build/<triplet>/, never touching ./mailnode.  32-bit
# ARM gets a 64-bit time_t and off_t (glibc's _TIME_BITS=64): a field box
# runs past 2038 and keeps databases over 2 GB.
CROSS ?=
# s390x-linux-gnu is no product: it is the one big-endian target, there
# so that the unit tests check every byte-order assumption on both orders.
CROSS_TRIPLETS ?= aarch64-linux-gnu arm-linux-gnueabihf s390x-linux-gnu
CROSS_DEFS :=
ifneq ($(CROSS),)
ifeq ($(origin CC),default)
CC := $(CROSS)-gcc
endif
# /usr/<triplet>/lib/pkgconfig: the libraries `make cross-deps` unpacks
# into the cross compiler's sysroot (s390x's zlib and OpenSSL).
PKG_CONFIG := PKG_CONFIG_LIBDIR=/usr/lib/$(CROSS)/pkgconfig:/usr/$(CROSS)/lib/pkgconfig:/usr/share/pkgconfig PKG_CONFIG_PATH= pkg-config
ifneq ($(filter arm-% armv7% armhf%,$(CROSS)),)
CROSS_DEFS := -D_FILE_OFFSET_BITS=64 -D_TIME_BITS=64
endif
# How to run the target's programs here: qemu-user with the target's
# libraries, for the tests (tests/cross/run).  The dynamic loader comes
# from the cross sysroot (-L), so the C library must too: the target's
# multiarch libc6 (pulled in by libsodium23:arch) may be another build, and
# a loader with a foreign libc.so.6 breaks at start ("stack smashing
# detected" on s390x).  LD_LIBRARY_PATH puts the sysroot's lib/ first.
QEMU_ARCH  := $(patsubst arm,arm,$(firstword $(subst -, ,$(CROSS))))
CROSS_EXEC := qemu-$(QEMU_ARCH)-static -L /usr/$(CROSS) -E LD_LIBRARY_PATH=/usr/$(CROSS)/lib
endif

# --- configuration --------------------------------------------------------

# `make static` has TLS only when asked for (TLS=mbedtls or TLS=openssl on
# the command line or in the environment).
STATIC_TLS := $(if $(filter command line environment,$(origin TLS)),$(TLS),none)
ifeq ($(origin TLS),undefined)
TLS := $(if $(shell $(PKG_CONFIG) --exists openssl 2>/dev/null && echo y),openssl,none)
endif
ifeq ($(filter $(TLS),openssl mbedtls none),)
$(error TLS=$(TLS): use TLS=openssl, TLS=mbedtls or TLS=none)
endif
ifeq ($(filter $(SQLITE),amalgamation system),)
$(error SQLITE=$(SQLITE): use SQLITE=amalgamation (default) or SQLITE=system)
endif
ifeq ($(filter $(SAN),0 1),)
$(error SAN=$(SAN): use SAN=1 or SAN=0)
endif

# pkg-config names, and the flags to fall back on when pkg-config is absent.
PKGS          := libsodium zlib libcares
PKGS_FALLBACK := -lsodium -lz -lcares
TLS_DEFS      :=
ifeq ($(TLS),openssl)
PKGS          += openssl
PKGS_FALLBACK += -lssl -lcrypto
TLS_DEFS      := -DMAILNODE_TLS
endif
# mbedTLS (Debian's 2.28 ships no pkg-config file): src/tls_mbedtls.c.
MBEDTLS_LIBS  := -lmbedtls -lmbedx509 -lmbedcrypto
TLS_LIBS      :=
ifeq ($(TLS),mbedtls)
TLS_DEFS      := -DMAILNODE_TLS -DMAILNODE_TLS_MBEDTLS
TLS_LIBS      := $(MBEDTLS_LIBS)
endif
ifeq ($(SQLITE),system)
PKGS          += sqlite3
PKGS_FALLBACK += -lsqlite3
SQLITE_OBJ    :=
else
SQLITE_OBJ    := sqlite3.o
endif

PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(or $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null),$(PKGS_FALLBACK))

ifeq ($(SAN),1)
BUILD     := build/san
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -O1
else
BUILD     := build/default
SAN_FLAGS :=
endif

# Where the binaries and the SQLite object go: the top directory for the
# native build, build/<triplet>/ for a cross build.
OUT        := .
ifneq ($(CROSS),)
ifeq ($(SAN),1)
$(error CROSS= and SAN=1 together are not supported)
endif
BUILD      := build/$(CROSS)
OUT        := $(BUILD)
SQLITE_OBJ := $(if $(SQLITE_OBJ),$(BUILD)/sqlite3.o)
endif
MN_BIN     := $(if $(CROSS),$(OUT)/mailnode,mailnode)
STATIC_BIN := $(if $(CROSS),$(OUT)/mailnode-static,mailnode-static)
STATIC_DIR := $(if $(CROSS),$(BUILD)/static,build/static)

# SAN_FLAGS come after CFLAGS so that its -O1 wins.
MN_CFLAGS  := $(strip $(STD_FLAGS) $(CROSS_DEFS) $(CPPFLAGS) $(CFLAGS) $(PKG_CFLAGS) $(TLS_DEFS) $(SAN_FLAGS))
MN_LDFLAGS := $(strip $(LDFLAGS) $(SAN_FLAGS))
MN_LIBS    := $(strip $(PKG_LIBS) $(TLS_LIBS) -lm $(LDLIBS))

# Static build: no sanitizers, stripped, TLS as STATIC_TLS says.
# c-ares is linked statically too (CARES_STATICLIB: no dllimport in ares.h).
STATIC_TLS_DEFS := $(if $(filter openssl,$(STATIC_TLS)),-DMAILNODE_TLS,$(if $(filter mbedtls,$(STATIC_TLS)),-DMAILNODE_TLS -DMAILNODE_TLS_MBEDTLS))
STATIC_PKGS    := libsodium zlib libcares $(if $(filter openssl,$(STATIC_TLS)),openssl)
# Static builds are the small boxes' builds: optimized for size (-Os, as
# OpenWrt builds everything), which also keeps fewer text pages resident.
STATIC_OPT     ?= -Os
STATIC_CFLAGS  := $(strip $(STD_FLAGS) $(CROSS_DEFS) $(CPPFLAGS) $(CFLAGS) $(STATIC_OPT) -DMAILNODE_STATIC -DCARES_STATICLIB $(STATIC_TLS_DEFS) \
		  $(shell $(PKG_CONFIG) --cflags $(STATIC_PKGS) 2>/dev/null))
STATIC_LDFLAGS ?= -s
STATIC_LIBS    := $(if $(filter mbedtls,$(STATIC_TLS)),$(MBEDTLS_LIBS)) \
		  $(or $(shell $(PKG_CONFIG) --static --libs $(STATIC_PKGS) $(if $(SQLITE_OBJ),,sqlite3) 2>/dev/null),\
		  -lsodium -lz -lcares $(if $(filter openssl,$(STATIC_TLS)),-lssl -lcrypto) $(if $(SQLITE_OBJ),,-lsqlite3)) -lm

# --- flag stamps ------------------------------------------------------------
# Each stamp file holds the flags an output was built with and is rewritten
# only when they change, so switching SAN, TLS, SQLITE or CFLAGS rebuilds
# exactly what it affects. Objects of SAN and normal builds live apart in
# build/san and build/default, so switching back and forth costs a link.

MN_STAMP     := $(BUILD)/mailnode.flags
LINK_STAMP   := $(if $(CROSS),$(BUILD),build)/link.flags
SQLITE_STAMP := $(if $(CROSS),$(BUILD),build)/sqlite3.flags
STATIC_STAMP := $(STATIC_DIR)/mailnode.flags

MN_STAMP_TEXT     := $(CC) $(MN_CFLAGS)
LINK_STAMP_TEXT   := $(BUILD) $(SQLITE) $(CC) $(MN_LDFLAGS) $(MN_LIBS)
SQLITE_STAMP_TEXT := $(CC) $(SQLITE_CFLAGS) $(CROSS_DEFS) $(SQLITE_OPTS)
STATIC_STAMP_TEXT := $(CC) $(STATIC_CFLAGS) $(STATIC_LDFLAGS) $(STATIC_LIBS) $(SQLITE)

NO_STAMP_GOALS := clean distclean deps cross-deps test-cross amalgamation check-amalgamation check-modules help run test test-env
ifneq ($(filter-out $(NO_STAMP_GOALS),$(or $(MAKECMDGOALS),all)),)
$(shell mkdir -p $(BUILD) $(STATIC_DIR))
ifneq ($(file <$(MN_STAMP)),$(MN_STAMP_TEXT))
$(file >$(MN_STAMP),$(MN_STAMP_TEXT))
endif
ifneq ($(file <$(LINK_STAMP)),$(LINK_STAMP_TEXT))
$(file >$(LINK_STAMP),$(LINK_STAMP_TEXT))
endif
ifneq ($(file <$(SQLITE_STAMP)),$(SQLITE_STAMP_TEXT))
$(file >$(SQLITE_STAMP),$(SQLITE_STAMP_TEXT))
endif
ifneq ($(file <$(STATIC_STAMP)),$(STATIC_STAMP_TEXT))
$(file >$(STATIC_STAMP),$(STATIC_STAMP_TEXT))
endif
endif

# --- build -----------------------------------------------------------------

.PHONY: all
all: $(MN_BIN)

$(MN_BIN): $(BUILD)/mailnode.o $(SQLITE_OBJ) $(LINK_STAMP) | warn-stale
	$(CC) $(MN_LDFLAGS) -o $@ $(BUILD)/mailnode.o $(SQLITE_OBJ) $(MN_LIBS)

$(BUILD)/mailnode.o: mailnode.c mailnode.h $(if $(SQLITE_OBJ),sqlite3.h) $(MN_STAMP)
	$(CC) $(MN_CFLAGS) -c -o $@ mailnode.c

$(if $(SQLITE_OBJ),$(SQLITE_OBJ),sqlite3.o): sqlite3.c sqlite3.h $(SQLITE_STAMP)
	$(CC) $(SQLITE_CFLAGS) $(CROSS_DEFS) $(SQLITE_OPTS) -c -o $@ sqlite3.c

# Fetched on demand, checked against pinned checksums, never committed.
sqlite3.c sqlite3.h &:
	@SQLITE_URL='$(SQLITE_URL)' SQLITE_TGZ_SHA256=$(SQLITE_TGZ_SHA256) \
	 SQLITE_TGZ_PATH=$(SQLITE_TGZ_PATH) SQLITE_C_SHA256=$(SQLITE_C_SHA256) \
	 SQLITE_H_SHA256=$(SQLITE_H_SHA256) tools/fetch-sqlite.sh

# The amalgamation is committed and never regenerated by a build.
mailnode.c mailnode.h:
	@echo "error: $@ not found; it is generated from src/: run 'make amalgamation'" >&2; exit 1

# A cheap mtime test first; only if src/ looks newer is the content compared.
.PHONY: warn-stale
warn-stale:
	@if [ -d src ] && [ -f mailnode.c ] && \
	    [ -n "$$(find src -type f -newer mailnode.c 2>/dev/null | head -n 1)" ] && \
	    ! tools/amalgamate.sh --check --quiet >/dev/null 2>&1; then \
	    echo "warning: src/ has changed since mailnode.c was generated; run 'make amalgamation' (this build uses the old mailnode.c)" >&2; \
	fi

.PHONY: static
static: $(STATIC_BIN)
	@ls -l $(STATIC_BIN) | awk '{ print "$(STATIC_BIN): " $$5 " bytes" }'

$(STATIC_BIN): $(STATIC_DIR)/mailnode.o $(SQLITE_OBJ) $(STATIC_STAMP) | warn-stale
	$(CC) -static $(LDFLAGS) $(STATIC_LDFLAGS) -o $@ $(STATIC_DIR)/mailnode.o $(SQLITE_OBJ) $(STATIC_LIBS)

$(STATIC_DIR)/mailnode.o: mailnode.c mailnode.h $(if $(SQLITE_OBJ),sqlite3.h) $(STATIC_STAMP)
	$(CC) $(STATIC_CFLAGS) -c -o $@ mailnode.c

# --- amalgamation -------------------------------------------------------------

.PHONY: amalgamation check-amalgamation
amalgamation:
	tools/amalgamate.sh

check-amalgamation:
	tools/amalgamate.sh --check

# --- dependencies, run, test ----------------------------------------------------

.PHONY: deps run test test-run test-env
deps:
	@SQLITE=$(SQLITE) tools/deps.sh

# run and test install packages first, then build in a fresh make, which
# sees the pkg-config flags of what was just installed.
run: deps
	@$(MAKE) --no-print-directory all
	env -u MAILNODE_CONF ./mailnode run

test: deps
	@$(MAKE) --no-print-directory check-amalgamation
	@$(MAKE) --no-print-directory check-modules
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory check-exports
	@$(MAKE) --no-print-directory test-run

# Every module compiles on its own, with exactly the includes it names: in
# the amalgamation a missing include or a leaked macro hides behind an
# earlier module and breaks the day the order changes.
.PHONY: check-modules check-exports
check-modules:
	@for f in src/*.c; do \
		$(CC) $(filter-out $(SAN_FLAGS),$(MN_CFLAGS)) -fsyntax-only -Isrc -I. $$f || \
			{ echo "check-modules: $$f does not compile on its own" >&2; exit 1; }; \
	done

# The program exports mailnode.h's API and main, nothing else: every
# internal function is static in the amalgamation (tools/amalgamate.sh).
check-exports: $(MN_BIN)
	@nm -g --defined-only $(BUILD)/mailnode.o | \
		awk '$$2 ~ /^[A-Z]$$/ && $$3 !~ /^(mailnode_[a-z_]+|main)$$/ { print "check-exports: exported: " $$3; bad = 1 } \
		     END { exit bad }' >&2

# tests/run compiles the unit tests with exactly the flags of ./mailnode.
test-run: export MAILNODE_CC = $(CC)
test-run: export MAILNODE_CFLAGS = $(MN_CFLAGS)
test-run: export MAILNODE_LDFLAGS = $(MN_LDFLAGS)
test-run: export MAILNODE_LIBS = $(MN_LIBS)
test-run: export MAILNODE_SQLITE_OBJ = $(SQLITE_OBJ)
test-run: export MAILNODE_BUILD = $(BUILD)
test-run: export MAILNODE_SAN = $(SAN)
test-run: export MAILNODE_EXEC = $(CROSS_EXEC)
test-run: all
	tests/run

# The protocol tests with the daemon under valgrind (memcheck): any report
# in a daemon's log, or a definite leak at its exit, is a FAIL.
.PHONY: test-valgrind
test-valgrind: all
	@[ "$(SAN)" = 0 ] || { echo "test-valgrind: use a build without SAN=1" >&2; exit 2; }
	@VALGRIND=1 SQLITE=$(SQLITE) tools/deps.sh
	MAILNODE_VALGRIND=1 tests/run proto

# Cross builds: what they need, and their tests under qemu-user.
.PHONY: cross-deps test-cross
cross-deps:
	@CROSS=1 CROSS_TRIPLETS='$(CROSS_TRIPLETS)' SQLITE=$(SQLITE) tools/deps.sh

test-cross: cross-deps
	CROSS_TRIPLETS='$(CROSS_TRIPLETS)' tests/cross/run

# Print the same settings for a standalone tests/run, one KEY=value a line.
test-env:
	$(info MAILNODE_CC=$(CC))
	$(info MAILNODE_CFLAGS=$(MN_CFLAGS))
	$(info MAILNODE_LDFLAGS=$(MN_LDFLAGS))
	$(info MAILNODE_LIBS=$(MN_LIBS))
	$(info MAILNODE_SQLITE_OBJ=$(SQLITE_OBJ))
	$(info MAILNODE_BUILD=$(BUILD))
	$(info MAILNODE_SAN=$(SAN))
	$(info MAILNODE_EXEC=$(CROSS_EXEC))
	$(info MAILNODE_BIN_BUILT=$(abspath $(MN_BIN)))
	@:

# --- fuzzing ----------------------------------------------------------------------
# Each tests/fuzz/fuzz_NAME.c includes the amalgamation and is built with
# clang's libFuzzer, ASan and UBSan into build/fuzz/fuzz_NAME.  `make fuzz`
# runs each one for FUZZ_SECONDS on a copy of tests/fuzz/corpus/fuzz_NAME
# (the committed seeds are never written to) and fails if any of them
# finds a crash, a leak, a sanitizer report or a timeout; what it found
# is left in build/fuzz/artifacts/.  FUZZ_ARGS adds libFuzzer options.

FUZZ_CC        ?= clang
FUZZ_SECONDS   ?= 60
FUZZ_ARGS      ?=
FUZZ_DIR       := build/fuzz
FUZZ_HARNESSES := $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BINS      := $(addprefix $(FUZZ_DIR)/,$(FUZZ_HARNESSES))
FUZZ_CFLAGS    := $(strip $(STD_FLAGS) -DMAILNODE_TEST -I. -g -O1 -fno-omit-frame-pointer \
		  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
		  $(PKG_CFLAGS) $(TLS_DEFS))
FUZZ_RUN_FLAGS := -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=2048 \
		  -max_len=16384 -print_final_stats=1 $(FUZZ_ARGS)

.PHONY: fuzz fuzz-build fuzz-deps
fuzz-deps:
	@FUZZ=1 SQLITE=$(SQLITE) tools/deps.sh

fuzz-build: fuzz-deps
	@$(MAKE) --no-print-directory $(FUZZ_BINS)

# The distribution's c-ares has no sanitizers, so ASan sees its reads only
# through interceptors. To fuzz c-ares' parsers too, build c-ares with
# clang and -fsanitize=address,undefined,fuzzer-no-link and point
# FUZZ_CARES_CFLAGS at its include directories (-I...) and FUZZ_CARES_LIBS
# at its libcares.a; they come before the system's.
FUZZ_CARES_CFLAGS ?=
FUZZ_CARES_LIBS   ?=

$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h mailnode.c mailnode.h \
		$(if $(SQLITE_OBJ),sqlite3.h) $(SQLITE_OBJ)
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) $(FUZZ_CARES_CFLAGS) $(FUZZ_CFLAGS) -o $@ $< $(SQLITE_OBJ) $(LDFLAGS) $(FUZZ_CARES_LIBS) $(MN_LIBS)

fuzz: fuzz-build
	@failed=""; \
	for h in $(FUZZ_HARNESSES); do \
	    rm -rf $(FUZZ_DIR)/corpus/$$h; mkdir -p $(FUZZ_DIR)/corpus/$$h $(FUZZ_DIR)/artifacts; \
	    if [ -d tests/fuzz/corpus/$$h ]; then cp -R tests/fuzz/corpus/$$h/. $(FUZZ_DIR)/corpus/$$h/; fi; \
	    echo "== fuzz $$h ($(FUZZ_SECONDS)s)"; \
	    if ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	       $(FUZZ_DIR)/$$h $(FUZZ_RUN_FLAGS) -artifact_prefix=$(FUZZ_DIR)/artifacts/$$h- \
	       $(FUZZ_DIR)/corpus/$$h >$(FUZZ_DIR)/$$h.log 2>&1; then \
	        grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' \
	            $(FUZZ_DIR)/$$h.log | tr '\n' ' '; echo; \
	    else \
	        tail -n 60 $(FUZZ_DIR)/$$h.log; \
	        echo "FAIL fuzz $$h: see $(FUZZ_DIR)/$$h.log and $(FUZZ_DIR)/artifacts/"; \
	        failed="$$failed $$h"; \
	    fi; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failed:$$failed"; exit 1; fi; \
	echo "fuzz: all $(words $(FUZZ_HARNESSES)) harnesses ran $(FUZZ_SECONDS)s without a finding"

# --- installing ---------------------------------------------------------------------
# PREFIX/bin/mailnode, the man pages under PREFIX/share/man, and with
# INSTALL_SENDMAIL=1 PREFIX/sbin/sendmail as a relative symbolic link to
# the binary (mailnode is the sendmail command when called by that name),
# /usr/lib/sendmail (where old programs look) pointing at it, and
# PREFIX/bin/mailq and PREFIX/bin/newaliases.  The sample configurations
# go to PREFIX/share/doc/mailnode/examples.
# DESTDIR is prepended to every path, for packaging.

PREFIX           ?= /usr/local
DESTDIR          ?=
INSTALL          ?= install
INSTALL_SENDMAIL ?= 0
# Service files: the systemd unit and sysusers entry (INSTALL_SYSTEMD=0 to
# leave them out), the OpenWrt procd init script (INSTALL_PROCD=1).
INSTALL_SYSTEMD  ?= 1
INSTALL_PROCD    ?= 0
SYSTEMD_UNITDIR  ?= $(PREFIX)/lib/systemd/system
SYSUSERS_DIR     ?= $(PREFIX)/lib/sysusers.d
INITD_DIR        ?= /etc/init.d

.PHONY: install
install: all
	$(INSTALL) -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man8 \
		$(DESTDIR)$(PREFIX)/share/man/man5
	$(INSTALL) -m 0755 $(MN_BIN) $(DESTDIR)$(PREFIX)/bin/mailnode
	$(INSTALL) -m 0644 docs/mailnode.8 $(DESTDIR)$(PREFIX)/share/man/man8/mailnode.8
	$(INSTALL) -m 0644 docs/mailnode.conf.5 $(DESTDIR)$(PREFIX)/share/man/man5/mailnode.conf.5
	$(INSTALL) -d $(DESTDIR)$(PREFIX)/share/doc/mailnode/examples
	$(INSTALL) -m 0644 docs/examples/*.conf $(DESTDIR)$(PREFIX)/share/doc/mailnode/examples/
ifeq ($(INSTALL_SENDMAIL),1)
	$(INSTALL) -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)/usr/lib
	ln -sf ../bin/mailnode $(DESTDIR)$(PREFIX)/sbin/sendmail
	ln -sf mailnode $(DESTDIR)$(PREFIX)/bin/mailq
	ln -sf mailnode $(DESTDIR)$(PREFIX)/bin/newaliases
	ln -sf $(PREFIX)/sbin/sendmail $(DESTDIR)/usr/lib/sendmail
endif
ifeq ($(INSTALL_SYSTEMD),1)
	$(INSTALL) -d $(DESTDIR)$(SYSTEMD_UNITDIR) $(DESTDIR)$(SYSUSERS_DIR)
	sed 's|@BINDIR@|$(PREFIX)/bin|g' dist/systemd/mailnode.service.in > $(DESTDIR)$(SYSTEMD_UNITDIR)/mailnode.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_UNITDIR)/mailnode.service
	$(INSTALL) -m 0644 dist/systemd/mailnode.sysusers $(DESTDIR)$(SYSUSERS_DIR)/mailnode.conf
endif
ifeq ($(INSTALL_PROCD),1)
	$(INSTALL) -d $(DESTDIR)$(INITD_DIR)
	sed 's|@BINDIR@|$(PREFIX)/bin|g' dist/openwrt/mailnode.init > $(DESTDIR)$(INITD_DIR)/mailnode
	chmod 0755 $(DESTDIR)$(INITD_DIR)/mailnode
endif

# --- cleaning -----------------------------------------------------------------------

.PHONY: clean distclean help
clean:
	rm -rf build mailnode mailnode-static sqlite3.o
	find tests -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true

distclean: clean
	rm -f sqlite3.c sqlite3.h

help:
	@sed -n 's/^#   \(make.*\)/\1/p' Makefile
