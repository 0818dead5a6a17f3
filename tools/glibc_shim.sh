#!/bin/sh
# Runs a virtualenv's Python under Debian 13 (trixie)'s dynamic loader and C/C++ runtime
# where the system glibc is older than 2.39 (tfx 1.21's ml-metadata and
# tensorflow-data-validation ship only manylinux_2_39 wheels). Where glibc >= 2.39 it does
# nothing. See docs/environment.md.
#
#   tools/glibc_shim.sh <python> <venv> <shim folder>
#
# Idempotent: re-running it on a shimmed venv changes nothing. Never run `python -m venv`
# over a shimmed venv afterwards (it restores the symlinks that the wrappers replaced).
set -eu
PYTHON=$1
VENV=$2
SHIM=$3
NEED=2.39

# SHIM_GLIBC_VERSION overrides the detected version (tests of the glibc >= 2.39 path).
glibc=${SHIM_GLIBC_VERSION:-$("$PYTHON" -c 'import os; print(os.confstr("CS_GNU_LIBC_VERSION").split()[-1])' 2>/dev/null \
        || ldd --version 2>/dev/null | head -n 1 | awk '{print $NF}')}
if "$PYTHON" -c "import sys; v=tuple(int(p) for p in '$glibc'.split('.')[:2]); sys.exit(0 if v >= (2, 39) else 1)"; then
    exit 0
fi

ROOT=$(cd "$(dirname "$SHIM")" && pwd)/$(basename "$SHIM")
LOADER=$ROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2   # trixie is merged-/usr
LIBS=$ROOT/usr/lib/x86_64-linux-gnu

if [ ! -x "$LOADER" ]; then
    case $(uname -m) in x86_64) ;; *) echo "glibc shim: only x86_64 is supported, found $(uname -m)" >&2; exit 2;; esac
    state=$ROOT.apt
    rm -rf "$state" "$ROOT.tmp"
    mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/etc/sources.list.d" \
             "$state/etc/preferences.d" "$state/debs" "$ROOT.tmp"
    # The Debian mirror this machine's apt already uses (deb822 .sources or one-line lists),
    # unless SHIM_DEBIAN_MIRROR names one.
    mirror=${SHIM_DEBIAN_MIRROR:-$( { sed -n 's|^URIs:[[:space:]]*\([^[:space:]]*/debian\)/*[[:space:]]*$|\1|p' \
                                          /etc/apt/sources.list.d/*.sources 2>/dev/null
                                      sed -n 's|^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*/debian\)/*[[:space:]].*|\2|p' \
                                          /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null; } | head -n 1)}
    if [ -z "$mirror" ]; then
        echo "glibc shim: no Debian mirror found in /etc/apt; set SHIM_DEBIAN_MIRROR to one (its /debian URL)" >&2
        exit 2
    fi
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
        > "$state/etc/sources.list"
    # A private apt state: own source list, lists, cache and parts folders; the system's apt
    # configuration is never read for sources nor written.
    set -- -o Dir::Etc::SourceList="$state/etc/sources.list" \
           -o Dir::Etc::SourceParts="$state/etc/sources.list.d" \
           -o Dir::Etc::Preferences="$state/etc/preferences" \
           -o Dir::Etc::PreferencesParts="$state/etc/preferences.d" \
           -o Dir::State::Lists="$state/lists" \
           -o Dir::State::Status=/dev/null \
           -o Dir::Cache="$state/cache" \
           -o APT::Architecture=amd64 -o APT::Sandbox::User=root -o Debug::NoLocking=1 -qq
    apt-get "$@" update
    (cd "$state/debs" && apt-get "$@" download libc6 libstdc++6 libgcc-s1)
    for deb in "$state"/debs/*.deb; do dpkg-deb -x "$deb" "$ROOT.tmp"; done
    rm -rf "$ROOT" "$state"
    mv "$ROOT.tmp" "$ROOT"
fi

# Replace bin/python* (symlinks made by venv) with wrappers around the real interpreter.
real=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')
wrapper="#!/bin/sh
# glibc shim (tools/glibc_shim.sh): $real under Debian 13's loader and libraries.
exec \"$LOADER\" --library-path \"$LIBS\" --argv0 \"\$0\" \"$real\" \"\$@\""
for link in "$VENV"/bin/python "$VENV"/bin/python3 "$VENV"/bin/python3.*; do
    [ -e "$link" ] || [ -L "$link" ] || continue
    if [ -L "$link" ] || [ "$(cat "$link")" != "$wrapper" ]; then
        rm -f "$link"
        printf '%s\n' "$wrapper" > "$link"
        chmod +x "$link"
    fi
done
echo "glibc $glibc < $NEED: the venv's Python runs under Debian 13's loader ($ROOT)"
