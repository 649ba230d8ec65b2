#!/usr/bin/env bash
# Makes sure Debian's Chromium and ChromeDriver are installed (installing the packages when
# missing) and prints ChromeDriver's path, for the studio's browser tests:
#   export SKYREELS_TEST_CHROMEDRIVER=$(tools/test/chromium.sh)
# Idempotent: an installed browser is only checked. Everything it says besides the path goes
# to stderr.
set -euo pipefail

driver="$(command -v chromedriver 2>/dev/null || true)"
browser="$(command -v chromium 2>/dev/null || true)"
if [ -z "$driver" ] || [ -z "$browser" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "chromium.sh: Chromium is not installed; run as root or: sudo apt-get install -y chromium chromium-driver" >&2
    exit 1
  fi
  echo "chromium.sh: installing Chromium and ChromeDriver (Debian packages)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation >&2
  driver="$(command -v chromedriver)"
  browser="$(command -v chromium)"
fi
echo "chromium.sh: $("$browser" --version 2>/dev/null | head -n 1), $("$driver" --version | head -n 1)" >&2
echo "$driver"
