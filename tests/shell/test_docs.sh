#!/usr/bin/env bash
# Keeps the documentation true to the code:
#
#   - every key of the table in src/conf.c has an entry in
#     docs/mailnode.conf.5, with its type and its embedded default;
#   - every command of the table in src/main.c has a section in
#     docs/mailnode.8 and is named in README.md;
#   - `mailnode --help` lists every command, `mailnode CMD --help` exits 0
#     and prints a usage line, and every option those texts show is in
#     mailnode(8);
#   - both man pages render without a groff warning (and, when mandoc is
#     installed, pass `mandoc -Tlint`).
#
# Prints "ok NAME" or "FAIL NAME: reason" per check (see tests/run);
# exits non-zero if anything failed. Run from anywhere.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
BIN=${MAILNODE_BIN:-./mailnode}
CONF_SRC=src/conf.c
MAIN_SRC=src/main.c
MAN8=docs/mailnode.8
MAN5=docs/mailnode.conf.5
README=README.md

failed=0
ok()   { echo "ok $1"; }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
# check NAME PROBLEMS: ok when PROBLEMS is empty, else FAIL with them.
check() {
    if [ -z "$2" ]; then
        ok "$1"
    else
        fail "$1" "$(printf '%s' "$2" | tr '\n' ' ' | sed 's/ *$//' | cut -c1-400)"
    fi
}

for f in "$CONF_SRC" "$MAIN_SRC" "$MAN8" "$MAN5" "$README"; do
    if [ ! -f "$f" ]; then
        fail docs_files "$f is missing"
        echo "# cannot check the documentation without $f" >&2
        exit 1
    fi
done
ok docs_files

# Roff source with \- turned into -, \& dropped: what the reader sees,
# close enough to grep in.
plain() { sed -e 's/\\-/-/g' -e 's/\\&//g' -e 's/\\(aq/'"'"'/g' "$1"; }

# --- configuration keys ------------------------------------------------------

# Lines of the table: { "name", T_TYPE, F(field), count, "default" or NULL },
keys_table=$(sed -n 's/^[[:space:]]*{[[:space:]]*"\([^"]*\)",[[:space:]]*\(T_[A-Z]*\),.*,[[:space:]]*\(NULL\|"[^"]*"\)[[:space:]]*},.*$/\1 \2 \3/p' "$CONF_SRC")
n_keys=$(printf '%s\n' "$keys_table" | grep -c .)
n_lines=$(grep -cE '^[[:space:]]*\{[[:space:]]*"[^"]*",[[:space:]]*T_' "$CONF_SRC")
if [ "$n_keys" -eq 0 ] || [ "$n_keys" -ne "$n_lines" ]; then
    fail docs_conf_table "parsed $n_keys of $n_lines key lines of $CONF_SRC; update this test's pattern"
else
    ok docs_conf_table
fi

man5=$(plain "$MAN5")
missing="" wrong=""
while read -r key type def; do
    [ -n "$key" ] || continue
    # The entry: ".TP", a ".B key" tag line, then its text up to the next
    # .TP/.SS/.SH.
    entry=$(printf '%s\n' "$man5" | awk -v k="$key" '
        prev == ".TP" && $0 == ".B " k { on = 1; next }
        on && /^\.(TP|SS|SH)/ { exit }
        on { print }
        { prev = $0 }')
    if [ -z "$entry" ]; then
        missing="$missing $key"
        continue
    fi
    # What the entry says, as one line without font macros.
    text=$(printf '%s\n' "$entry" | sed -e 's/^\.[A-Z][A-Z]* *//' -e 's/"//g' | tr '\n' ' ')
    case $type in
    T_STR)      want="string|list" ;;
    T_DURATION) want="duration" ;;
    T_SIZE)     want="size" ;;
    T_INT)      want="number" ;;
    T_BOOL)     want="boolean" ;;
    T_DOMAINS)  want="list" ;;
    T_CIDRS)    want="networks" ;;
    *)          want="?" ;;
    esac
    if ! printf '%s' "$text" | grep -qE "^ *\(($want);"; then
        wrong="$wrong $key(type: want $want)"
    fi
    case $def in
    NULL) ;;                                    # derived: described in words
    '""')
        printf '%s' "$text" | grep -qE 'default empty' || wrong="$wrong $key(default: want 'default empty')" ;;
    *)
        d=${def#\"}; d=${d%\"}
        printf '%s' "$text" | grep -qF "default $d" || wrong="$wrong $key(default: want 'default $d')" ;;
    esac
done <<<"$keys_table"
check docs_conf_keys_documented "${missing:+no entry (.TP then .B key) in $MAN5 for:$missing}"
check docs_conf_types_defaults "${wrong:+$MAN5 disagrees with $CONF_SRC:$wrong}"

# A key documented that the code does not know is a mistake too.
known=$(printf '%s\n' "$keys_table" | awk '{ print $1 }')
extra=""
for k in $(printf '%s\n' "$man5" | awk '/^\.SH KEYS/ { on = 1; next } /^\.SH/ { on = 0 }
        on && prev == ".TP" && /^\.B [a-z]/ { print $2 } { prev = $0 }' | sort -u); do
    grep -qxF "$k" <<<"$known" || extra="$extra $k"
done
check docs_conf_no_unknown_keys "${extra:+$MAN5 documents keys $CONF_SRC does not have:$extra}"

# --- commands ------------------------------------------------------------------

commands=$(sed -n 's/^[[:space:]]*{[[:space:]]*"\([a-z]*\)",[[:space:]]*cli_[a-z_]*,.*/\1/p' "$MAIN_SRC")
if [ -z "$commands" ]; then
    fail docs_command_table "no commands parsed from $MAIN_SRC; update this test's pattern"
    commands=""
else
    ok docs_command_table
fi

man8=$(plain "$MAN8")
no_man="" no_readme=""
for c in $commands; do
    grep -qE "^\.SS \"?mailnode $c( |\"|$)" <<<"$man8" || no_man="$no_man $c"
    grep -qE "mailnode $c( |\`|$)" "$README" || no_readme="$no_readme $c"
done
check docs_commands_in_man8 "${no_man:+no section '.SS mailnode CMD' in $MAN8 for:$no_man}"
check docs_commands_in_readme "${no_readme:+'mailnode CMD' not in $README for:$no_readme}"

# --- --help texts ----------------------------------------------------------------

if [ ! -x "$BIN" ]; then
    fail help_binary "$BIN is not built (make)"
else
    # No configuration file: --help must not depend on one.
    out=$(MAILNODE_CONF='' "$BIN" --help 2>&1); rc=$?
    probs=""
    [ "$rc" -eq 0 ] || probs="exit status $rc;"
    grep -q '^usage: mailnode ' <<<"$out" || probs="$probs no 'usage: mailnode' line;"
    for c in $commands; do
        grep -qE "^  $c " <<<"$out" || probs="$probs does not list $c;"
    done
    check help_lists_commands "$probs"

    # Options shown by the help texts, each of which mailnode(8) must show.
    opts=""
    for c in $commands; do
        out=$(MAILNODE_CONF='' "$BIN" "$c" --help 2>&1); rc=$?
        probs=""
        [ "$rc" -eq 0 ] || probs="exit status $rc;"
        grep -qE "^usage: mailnode (\\[-c FILE\\] )?$c( |\$)" <<<"$out" ||
            probs="$probs no 'usage: mailnode $c' line;"
        check "help_$c" "$probs${probs:+ output: $(printf '%s' "$out" | head -c 200)}"
        # --long options anywhere, and -x options that start a help line.
        for o in $(printf '%s\n' "$out" | grep -oE -- '--[a-z][a-z-]+' | sort -u); do
            opts="$opts $c:$o"
        done
        for o in $(printf '%s\n' "$out" | sed -n 's/^  \(-[A-Za-z]\)[ ,].*/\1/p' | sort -u); do
            opts="$opts $c:$o"
        done
    done
    absent=""
    for co in $opts; do
        o=${co#*:}
        [ "$o" = --help ] && continue
        grep -qE -- "(^|[^a-z-])$o([^a-z-]|$)" <<<"$man8" || absent="$absent $co"
    done
    check help_options_in_man8 "${absent:+options of --help texts not in $MAN8:$absent}"
fi

# --- rendering ----------------------------------------------------------------------

if ! command -v groff >/dev/null; then
    fail man_render "groff is not installed (Debian: apt-get install groff-base, or make deps)"
else
    for page in "$MAN8" "$MAN5"; do
        warn=$(groff -man -Tutf8 -ww "$page" 2>&1 >/dev/null)
        check "man_render_$(basename "$page" | tr . _)" "${warn:+groff warns: $warn}"
    done
fi
if command -v mandoc >/dev/null; then
    for page in "$MAN8" "$MAN5"; do
        lint=$(mandoc -Tlint -W warning "$page" 2>&1)
        check "man_lint_$(basename "$page" | tr . _)" "${lint:+mandoc -Tlint: $lint}"
    done
else
    echo "# mandoc is not installed: the lint check is left out (groff's check ran)" >&2
fi

[ "$failed" -eq 0 ]
