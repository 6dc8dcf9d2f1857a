#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs them.
# As root it installs the system packages with apt; otherwise it names what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# fonts-wqy-microhei: Chinese glyphs in the browser tests' screenshots
APT_PACKAGES=(mosquitto mosquitto-clients socat mbpoll victoria-metrics chromium chromium-driver fonts-wqy-microhei)

# Debian 12+ and Ubuntu 23.04+ mark the system Python as externally managed (PEP 668):
# pip refuses to install into it, so the tests get a virtualenv of their own (.venv)
PY=${PYTHON:-python3}
externally_managed() {
  "$PY" -c 'import os, sys, sysconfig
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(
    os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'
}
NEED_VENV=0
if [[ -z "${PYTHON:-}" ]] && externally_managed; then
  NEED_VENV=1
  APT_PACKAGES+=(python3-venv)
fi
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

if ((NEED_VENV)); then
  [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
  PY=.venv/bin/python
  echo "using the virtualenv .venv (the system Python is externally managed)"
fi
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]"
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
