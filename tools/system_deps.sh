#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Debian's Chromium (the run report's
# browser test) and opencv-doc (real sample videos for the video tests). Idempotent; run
# as root (CI) or with sudo. `make test` calls it; nothing here is needed to run pipelines.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -d /usr/share/doc/opencv-doc/examples ] || need+=(opencv-doc)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "installing system packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
