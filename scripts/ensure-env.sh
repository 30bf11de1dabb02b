#!/usr/bin/env bash
# Usage: ensure-env.sh ha|ha-newest|companion
# Create (or reuse) the pinned virtualenv for one of the project's environments and print its path.
#   ha         CPython 3.13 (>= 3.13.2), Home Assistant 2026.2.3 (the oldest we support), its test
#              harness, the demo and the lint tools; no torch.
#   ha-newest  CPython 3.14 (a private build, scripts/ensure-python314.sh), the newest Home Assistant
#              that has a matching test harness, and what tests/ha needs.
#   companion  CPython 3.11+, torch 2.13.0 (CPU), onnx, onnxruntime, paho-mqtt; the project installed.
# Environments live outside the repo under $MLMULE_CACHE (default ~/.cache/mlmule/venvs) and are keyed by
# the hash of their pinned requirements, so an up-to-date one is reused and a stale one is rebuilt.
# Concurrent calls for the same kind wait for the one that builds it.
set -euo pipefail

kind="${1:?usage: ensure-env.sh ha|ha-newest|companion}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MLMULE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlmule}"
log() { echo "[env:$kind] $*" >&2; }
# pip warns about every package absent from the local mirror folders; keep the real errors only
quiet_pip() { "$venv/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

case "$kind" in
  ha) python="$("$ROOT/scripts/ensure-python313.sh")" ;;
  ha-newest) python="$("$ROOT/scripts/ensure-python314.sh")" ;;
  companion)
    python=""
    for cand in "${MLMULE_PYTHON311:-}" python3.11 "${PYENV_ROOT:-$HOME/.pyenv}/versions/3.11.7/bin/python3.11" python3.12 python3; do
      p="$(command -v "$cand" 2>/dev/null || true)"
      # torch 2.13.0's CPU wheel on these machines is built for CPython 3.11
      if [ -n "$p" ] && "$p" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then python="$p"; break; fi
    done
    [ -n "$python" ] || { log "no CPython 3.11 found (torch 2.13.0's CPU wheel needs it)"; exit 1; }
    ;;
  *) echo "unknown environment: $kind" >&2; exit 2 ;;
esac

req_in="$ROOT/requirements/$kind.in"
lock="$ROOT/requirements/$kind.lock"
key="$( { cat "$req_in" "$lock"; "$python" -VV; } | sha256sum | cut -c1-12)"
venv="$CACHE/venvs/$kind-$key"

mkdir -p "$CACHE/venvs"
exec 9>"$CACHE/venvs/$kind.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  log "creating $venv with $("$python" -V)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  quiet_pip install -q --upgrade "pip>=24" "setuptools>=70" wheel >&2
  [ -f "$lock" ] || { log "missing $lock: run 'make lock'"; exit 1; }
  quiet_pip install -q -r "$req_in" -c "$lock" >&2
  if [ "$kind" = ha-newest ]; then
    # The private interpreter must load no library of the system's, wheels' native code included.
    "$venv/bin/python" - <<'PY' >&2
import os, sys
import numpy, onnxruntime  # noqa: E401,F401
allowed = tuple(os.path.realpath(p) + "/" for p in (sys.base_prefix, sys.prefix))
outside = sorted({line.split()[-1] for line in open("/proc/self/maps")
                  if ".so" in line and not line.split()[-1].startswith(allowed)})
assert not outside, f"libraries loaded from outside {allowed}: {outside}"
PY
  fi
  touch "$venv/.complete"
  # drop stale environments of the same kind (ha-<key> only, never ha-newest-<key>)
  for old in "$CACHE/venvs/$kind"-????????????; do
    [ "$old" = "$venv" ] || rm -rf "$old"
  done
fi

# Every environment gets the project, editable and without its dependencies: setuptools' import
# finder maps custom_components/mlmule/core to mlmule_core, world/ to mlmule_world and models/ to
# mlmule_models, so edits and new modules are live (the HA environments need mlmule_world for the
# tests, the demo and the benchmark; tests/support/single_core.py keeps one core there). Redo it
# for another checkout.
stamp="$( { echo "$ROOT"; cat "$ROOT/pyproject.toml"; } | sha256sum | cut -c1-16)"
if [ "$(cat "$venv/.project-stamp" 2>/dev/null)" != "$stamp" ]; then
  log "installing the project (editable) from $ROOT"
  quiet_pip install -q --no-deps --no-build-isolation -e "$ROOT" >&2
  echo "$stamp" >"$venv/.project-stamp"
fi
echo "$venv"
