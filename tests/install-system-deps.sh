#!/usr/bin/env bash
# Installs the Debian packages the test suite and benchmarks run for real, when missing:
# redis-server, chromium (dashboard), wrk (bench), tinyproxy (a forward proxy, tests/test_network.py).
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
command -v wrk >/dev/null || need+=(wrk)
command -v tinyproxy >/dev/null || need+=(tinyproxy)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
