#!/usr/bin/env bash
# System packages beyond Python: Debian's Chromium (the run report's browser test),
# opencv-doc (real sample videos for the video tests), and fonts-wqy-microhei (the CJK font
# Chinese charts are drawn with: chart_render, charts/fonts.py; also needed on the nodes that
# render charts). Idempotent; run as root (CI) or with sudo. `make test` calls it.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -d /usr/share/doc/opencv-doc/examples ] || need+=(opencv-doc)
[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need+=(fonts-wqy-microhei)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "installing system packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
