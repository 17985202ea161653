#!/usr/bin/env bash
# Installs the Debian packages online-gim needs, when they are missing and we are root with apt.
#   espeak-ng, libespeak-ng1 : the synthetic speech corpus (the embedded default source)
#   libportaudio2            : PortAudio for sounddevice (microphone source)
#   pulseaudio, pulseaudio-utils, libasound2-plugins : the virtual microphone the tests use
#   chromium, chromium-driver: the dashboard's browser test
#   prometheus               : Prometheus and promtool, for the tests of the scrape config, alert rules and dashboard
# Without root or apt it only reports what is missing (the Python parts still install).
set -euo pipefail
packages=(espeak-ng libespeak-ng1 libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins chromium chromium-driver prometheus)
if [ "${1:-}" = "--runtime" ]; then
  packages=(espeak-ng libespeak-ng1 libportaudio2)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: missing Debian packages (install them as root): ${missing[*]}" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the Prometheus service it installs (on :9090, where systemd runs); the tests start
# their own server on a free port, so the one just installed is stopped and disabled.
if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
