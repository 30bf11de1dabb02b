#!/usr/bin/env bash
# Install Debian's chromium if it is missing. The demo test drives it headless through the HA
# environment's Playwright (executable_path=/usr/bin/chromium); Playwright never downloads a browser.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
echo "[chromium] installing Debian's chromium package (the demo test runs it headless)" >&2
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
$SUDO apt-get update -qq >&2 || true
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
[ -x /usr/bin/chromium ] || { echo "[chromium] /usr/bin/chromium is still missing" >&2; exit 1; }
