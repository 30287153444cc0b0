#!/usr/bin/env bash
# Make a `chromium` binary available for the HTML render test (headless screenshot).
#
# Does nothing when chromium (or chromium-browser) is already on PATH; otherwise,
# as root, installs Debian's chromium package with apt-get. Prints the binary's
# path on success; exits 1 with a one-line reason when it cannot provide one.
set -euo pipefail

find_chromium() {
    local name
    for name in chromium chromium-browser; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
    done
    return 1
}

if find_chromium; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-chromium: chromium is not on PATH and installing it needs root (apt-get install chromium)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: chromium is not on PATH and apt-get is not available to install it" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# apt's own output goes to stderr so that stdout carries only the binary's path.
if ! { apt-get update -qq && apt-get install -y -qq chromium; } >&2; then
    echo "ensure-chromium: 'apt-get install chromium' failed" >&2
    exit 1
fi

if find_chromium; then
    exit 0
fi
echo "ensure-chromium: chromium was installed but neither chromium nor chromium-browser is on PATH" >&2
exit 1
