#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs them.
# As root it installs the system packages with apt; otherwise it names what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# fonts-wqy-microhei: Chinese glyphs in the browser tests' screenshots
APT_PACKAGES=(mosquitto mosquitto-clients socat mbpoll victoria-metrics chromium chromium-driver fonts-wqy-microhei)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing system packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]"
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
