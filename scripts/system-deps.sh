#!/usr/bin/env bash
# Debian packages the test suite needs. Installed when missing and we are root; otherwise we
# say what is missing. MQTT needs mosquitto (and openssl for its TLS test), BACnet iproute2,
# the InfluxDB store tests influxdb (1.6.7: a private influxd per test). Under CI=true a
# missing one fails the run, never a skip.
set -euo pipefail
needed=(mosquitto openssl iproute2 influxdb)   # iproute2: `ip netns` for the BACnet broadcast test
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
