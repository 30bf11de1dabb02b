#!/usr/bin/env bash
# Print the path of a CPython 3.13.x (>= 3.13.2) interpreter, building one if none is found.
# Home Assistant 2026.2 needs >= 3.13.2; pyenv's 3.13.0 is too old and current HA wants 3.14,
# so we build Debian trixie's 3.13 from its source package into a cache outside the repo.
set -euo pipefail

CACHE="${MLMULE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlmule}"
PREFIX="$CACHE/cpython-3.13"
log() { echo "[python3.13] $*" >&2; }

suitable() {
  # A usable interpreter has the right version and the stdlib modules HA imports.
  "$1" - <<'PY' >/dev/null 2>&1
import sys
assert (3, 13, 2) <= sys.version_info[:3] < (3, 14)
import ssl, sqlite3, ctypes, zlib, lzma, bz2, uuid, venv  # noqa: F401
PY
}

candidates=("${MLMULE_PYTHON313:-}" "$PREFIX/bin/python3.13")
for name in python3.13 python3; do
  candidates+=("$(command -v "$name" 2>/dev/null || true)")
done
for dir in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13.*/bin /usr/local/bin /usr/bin; do
  candidates+=("$dir/python3.13")
done
for py in "${candidates[@]}"; do
  if [ -n "$py" ] && [ -x "$py" ] && suitable "$py"; then
    echo "$py"
    exit 0
  fi
done

# One build at a time: several environments and make targets may ask for it at once.
mkdir -p "$CACHE"
exec 9>"$CACHE/cpython-3.13.lock"
flock 9
if suitable "$PREFIX/bin/python3.13"; then echo "$PREFIX/bin/python3.13"; exit 0; fi

log "no CPython >= 3.13.2 found; building Debian trixie's python3.13 into $PREFIX (about 5 minutes)"
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
SRC_LIST=/etc/apt/sources.list.d/mlmule-trixie-src.sources
if [ ! -f "$SRC_LIST" ]; then
  $SUDO tee "$SRC_LIST" >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
$SUDO apt-get update -qq >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  dpkg-dev build-essential pkg-config libssl-dev libsqlite3-dev libffi-dev zlib1g-dev \
  libbz2-dev liblzma-dev libreadline-dev libncurses-dev uuid-dev libgdbm-dev >&2

BUILD="$CACHE/build"
rm -rf "$BUILD" && mkdir -p "$BUILD"
( cd "$BUILD" && apt-get source -qq python3.13 >&2 )
srcdir=$(find "$BUILD" -maxdepth 1 -type d -name 'python3.13-*' | head -n 1)
[ -n "$srcdir" ] || { log "apt-get source python3.13 produced no source tree"; exit 1; }
(
  cd "$srcdir"
  # Debian disables ensurepip for its system python; a private prefix needs it for venvs
  patch -R -p1 <debian/patches/ensurepip-disabled.diff >"$BUILD/patch.log"
  ./configure --prefix="$PREFIX" --with-ensurepip=install >"$BUILD/configure.log" 2>&1
  make -j"$(nproc)" >"$BUILD/make.log" 2>&1
  make altinstall >"$BUILD/install.log" 2>&1
) || { log "build failed; see logs in $BUILD"; tail -n 30 "$BUILD"/*.log >&2; exit 1; }
rm -rf "$BUILD"
suitable "$PREFIX/bin/python3.13" || { log "built interpreter is not usable"; exit 1; }
log "built $("$PREFIX/bin/python3.13" -V)"
echo "$PREFIX/bin/python3.13"
