#!/usr/bin/env bash
# Install Debian's mosquitto broker if it is missing. The tests start their own broker on a free
# loopback port; the system service is never started.
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then exit 0; fi
echo "[mosquitto] installing Debian's mosquitto package (the tests run it on loopback)" >&2
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
# policy-rc.d 101 keeps the package's init script from starting a system-wide broker
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy" && created=1
fi
$SUDO apt-get update -qq >&2 || true
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto >&2
[ "$created" = 1 ] && $SUDO rm -f "$policy"
exit 0
