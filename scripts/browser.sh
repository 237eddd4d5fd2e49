#!/usr/bin/env bash
# Make sure Debian's chromium is installed: the browser tests (tests/test_ui_browser.py) drive it
# headless through Playwright (pip package in .venv; no Playwright-downloaded browser is used).
# Idempotent: when /usr/bin/chromium is already there this only prints its version.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [[ ! -x $CHROMIUM ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "[browser] $CHROMIUM is missing and this is not root: install Debian's chromium package" >&2
    echo "[browser]   sudo apt-get install -y --no-install-recommends chromium" >&2
    echo "[browser] (without it tests/test_ui_browser.py skips)" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null; then
    echo "[browser] $CHROMIUM is missing and there is no apt-get: install chromium by hand" >&2
    exit 1
  fi
  echo "[browser] installing Debian's chromium"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends chromium; then
    # A fresh container may have no package lists yet.
    apt-get update
    apt-get install -y --no-install-recommends chromium
  fi
fi

# Debian's /usr/bin/chromium is a wrapper script; some /etc/chromium.d snippets print noise on stderr.
version="$("$CHROMIUM" --version 2>/dev/null || true)"
if [[ -z $version ]]; then
  echo "[browser] $CHROMIUM is installed but does not run (--version failed)" >&2
  exit 1
fi
echo "[browser] $version ($CHROMIUM)"
