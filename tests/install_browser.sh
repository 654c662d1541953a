#!/usr/bin/env bash
# Headless Chromium, its chromedriver and a CJK font from the operating system's packages, for
# tests/test_attention_page.py (Debian/Ubuntu: apt-get, as root or through sudo). Does nothing
# when they are there already; says what to install where it cannot install them.
set -euo pipefail
packages=(chromium chromium-driver fonts-wqy-zenhei)
if command -v chromium >/dev/null && command -v chromedriver >/dev/null && fc-list 2>/dev/null | grep -qi "wqy"; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "tests/install_browser.sh: no apt-get here; install headless Chromium, chromedriver and a CJK font" \
         "(${packages[*]} on Debian) for tests/test_attention_page.py" >&2
    exit 0
fi
sudo=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=(sudo -n); else
        echo "tests/install_browser.sh: not root and no sudo; run: apt-get install ${packages[*]}" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null 2>&1 || {
    "${sudo[@]}" apt-get update -q >/dev/null 2>&1
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null
}
