#!/bin/sh
# Installs Debian's chromium and chromium-driver for the dashboard's browser tests, if missing.
# Runs apt-get as root directly, or through sudo when available.
set -e
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
  echo "chromium/chromedriver missing and not root: install Debian's chromium and chromium-driver" >&2
  echo "(the browser tests will fail with that message)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
