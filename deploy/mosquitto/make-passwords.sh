#!/usr/bin/env bash
# Create or update the parkguide broker users. Passwords are never stored in
# this repository: each is read from the environment variable named after the
# user (PASS_gateway, PASS_api, PASS_serial_bus_g, ...) or prompted for.
# Usage: make-passwords.sh PASSWORD_FILE USER [USER ...]
set -euo pipefail
file=$1; shift
[[ -f $file ]] || { touch "$file"; chmod 600 "$file"; }
for user in "$@"; do
  var="PASS_${user//[-.]/_}"
  pass=${!var:-}
  if [[ -z $pass ]]; then
    read -r -s -p "password for $user: " pass; echo
  fi
  mosquitto_passwd -b "$file" "$user" "$pass"
done
