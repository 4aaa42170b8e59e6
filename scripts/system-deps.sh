#!/usr/bin/env bash
# Debian packages the test suite needs. Installed when missing and we are root; otherwise we
# say what is missing. The foundation (Modbus) needs none; later issues add mosquitto and
# influxdb here, and under CI=true a missing one fails the run instead of skipping tests.
set -euo pipefail
needed=(mosquitto openssl)   # later: influxdb iproute2
missing=()
for pkg in "${needed[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
  echo "missing Debian packages: ${missing[*]} (run 'sudo apt-get install ${missing[*]}')" >&2
  [ "${CI:-}" = "true" ] && exit 1
fi
