#!/usr/bin/env bash
# Print the path of a CPython 3.14 (>= 3.14.2) interpreter that current Home Assistant can run on,
# building a private one if none is found.
#
# Current Home Assistant needs Python >= 3.14.2, and some of its wheels (fnv-hash-fast, ulid-transform,
# bluetooth-data-tools) need glibc >= 2.41. Debian 12 has neither, and Debian's source pool has no
# python3.14 to build, so we take Debian sid's *binary* packages: python3.14 and the closure of the
# shared libraries it needs (sid's glibc among them), unpacked with `dpkg-deb -x` into a prefix under
# $MLMULE_CACHE. Nothing is installed into the system: apt runs on a private configuration (sources,
# lists, cache, an empty dpkg status) under the cache. The interpreter is then patched with patchelf
# so that it loads the prefix's dynamic loader and libraries instead of the system's.
# The prefix cannot be moved (the loader's path is absolute); it is rebuilt when it stops working.
set -euo pipefail

CACHE="${MLMULE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlmule}"
PREFIX="$CACHE/cpython-3.14"
APTDIR="$CACHE/cpython-3.14-apt"
LIB="$PREFIX/usr/lib/x86_64-linux-gnu"
PY="$PREFIX/usr/bin/python3.14"
log() { echo "[python3.14] $*" >&2; }

suitable() {
  # The right version, the stdlib modules HA imports, and a glibc new enough for HA's wheels.
  "$1" - <<'PY' >/dev/null 2>&1
import platform, sys
assert (3, 14, 2) <= sys.version_info[:3] < (3, 15)
import ssl, sqlite3, ctypes, zlib, lzma, bz2, uuid, venv, ensurepip, zoneinfo  # noqa: F401
libc, version = platform.libc_ver()
assert libc == "glibc" and tuple(map(int, version.split(".")[:2])) >= (2, 41)
PY
}

find_interpreter() {
  local py
  for py in "${MLMULE_PYTHON314:-}" "$PY"; do
    if [ -n "$py" ] && [ -x "$py" ] && suitable "$py"; then
      echo "$py"
      return 0
    fi
  done
  return 1
}

find_interpreter && exit 0

# One build at a time: `make test` may ask for this interpreter from several places at once.
mkdir -p "$CACHE"
exec 9>"$CACHE/cpython-3.14.lock"
flock 9
find_interpreter && exit 0

start=$SECONDS
log "building a private CPython 3.14 from Debian sid's binary packages into $PREFIX"
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
# patchelf rewrites the interpreter; readelf (binutils) checks every library is in the prefix.
if ! command -v patchelf >/dev/null || ! command -v readelf >/dev/null; then
  # wait for another apt (e.g. the 3.13 build's) rather than fail
  $SUDO apt-get -o DPkg::Lock::Timeout=900 update -qq >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq \
    --no-install-recommends patchelf binutils >&2
fi

mkdir -p "$APTDIR/etc" "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
echo "deb http://deb.debian.org/debian sid main" >"$APTDIR/etc/sources.list"
: >"$APTDIR/status"
APT_OPTS=(
  -o "Dir::Etc::SourceList=$APTDIR/etc/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=/dev/null"
  -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR/cache"
  -o "Dir::State::status=$APTDIR/status" -o "Dir::State::extended_states=$APTDIR/extended_states"
  -o "APT::Architecture=amd64" -o "APT::Architectures::=amd64" -o "APT::Sandbox::User=root"
)
nice apt-get "${APT_OPTS[@]}" -qq update >&2

# The closure of the interpreter, venv, headers and libstdc++ (for C++ wheels such as onnxruntime),
# resolved afresh each time because sid moves on. Left out: packages that carry no shared library
# the interpreter or a wheel loads (configuration, data the system already has, toolchain headers,
# debconf and its UI libraries, dpkg and perl).
ROOTS=(python3.14 python3.14-venv python3.14-dev libstdc++6)
NOT_NEEDED='^(debconf|cdebconf|debconf-2\.0|tzdata|netbase|media-types|mime-support|ca-certificates|openssl|openssl-provider-legacy|readline-common|gcc-[0-9]+-base|linux-libc-dev|libc-dev-bin|libc6-dev|libc-dev|libexpat1-dev|zlib1g-dev|libselinux1|libpcre2-8-0|libdebian-installer4|libnewt0\.52|libslang2|libtextwrap1|libc-gconv-modules-extra|perl-base|dpkg|install-info|sensible-utils)$'
mapfile -t packages < <(
  apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances "${ROOTS[@]}" |
    grep -v '^[ <]' | sort -u | grep -Ev "$NOT_NEEDED"
)
log "${#packages[@]} packages: ${packages[*]}"

debs="$APTDIR/debs"
rm -rf "$debs" && mkdir -p "$debs"
(cd "$debs" && nice apt-get "${APT_OPTS[@]}" -qq download "${packages[@]}" 2>&1 |
  grep -v '^W: ' >&2 || true)
[ "$(find "$debs" -name '*.deb' | wc -l)" -eq "${#packages[@]}" ] || { log "download incomplete"; exit 1; }

rm -rf "$PREFIX" && mkdir -p "$PREFIX"
for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$PREFIX"; done
rm -rf "$debs"
[ -x "$PY" ] && [ -e "$LIB/ld-linux-x86-64.so.2" ] || { log "unpacking left no interpreter or loader"; exit 1; }

# The interpreter loads the prefix's loader, and its DT_RPATH (which every library without a
# DT_RUNPATH of its own inherits) is the prefix's library folder. A wheel whose .so has its own
# DT_RUNPATH (onnxruntime) would still find glibc's compat stubs and libstdc++ through the system's
# ld.so.cache; a soname already loaded is never looked up again, so the interpreter preloads them.
preload=()
for soname in libpthread.so.0 libdl.so.2 librt.so.1 libutil.so.1 libstdc++.so.6 libgcc_s.so.1; do
  [ -e "$LIB/$soname" ] && preload+=(--add-needed "$soname")
done
patchelf --set-interpreter "$LIB/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$LIB" "$PY"
[ ${#preload[@]} -eq 0 ] || patchelf "${preload[@]}" "$PY"

# Debian points ensurepip at /usr/share/python-wheels, and Python.h at a multiarch pyconfig.h.
for f in "$PREFIX"/usr/lib/python3.14/_sysconfigdata__*.py "$PREFIX"/usr/lib/python3.14/_sysconfig_vars__*.json; do
  [ -e "$f" ] && sed -i "s#/usr/share/python-wheels/#$PREFIX/usr/share/python-wheels/#" "$f"
done
cp "$PREFIX/usr/include/x86_64-linux-gnu/python3.14/pyconfig.h" "$PREFIX/usr/include/python3.14/pyconfig.h"

# Every library that any object in the prefix needs must be in the prefix.
missing=0
while IFS= read -r -d '' f; do
  head -c4 "$f" 2>/dev/null | grep -q $'\x7fELF' || continue
  for so in $(readelf -d "$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    [ -e "$LIB/$so" ] || { log "$f needs $so, which is not in $LIB"; missing=1; }
  done
done < <(find "$PREFIX/usr/bin" "$PREFIX/usr/lib" -type f \( -name '*.so*' -o -perm -u+x \) -print0)
[ "$missing" = 0 ] || exit 1

suitable "$PY" || { log "the built interpreter is not usable"; "$PY" -VV >&2 || true; exit 1; }
# No library of the system may end up in the process.
"$PY" - "$PREFIX/" <<'PY' >&2
import ssl, sqlite3, ctypes, platform, sys
outside = sorted({line.split()[-1] for line in open("/proc/self/maps")
                  if ".so" in line and not line.split()[-1].startswith(sys.argv[1])})
assert not outside, f"libraries loaded from outside {sys.argv[1]}: {outside}"
print(f"[python3.14] {sys.version.split()[0]}, {platform.libc_ver()}, {ssl.OPENSSL_VERSION}")
PY
log "built in $((SECONDS - start)) s"
echo "$PY"
