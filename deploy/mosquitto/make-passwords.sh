#!/usr/bin/env bash
# Create or update the parkguide broker users. Passwords are never stored in
# this repository: each is read from the environment variable named after the
# user (PASS_gateway, PASS_api, PASS_serial_bus_g, ...) or prompted for.
# Usage: make-passwords.sh PASSWORD_FILE USER [USER ...]
# As root, the file is given to the user mosquitto reads it as (PASSWD_OWNER,
# default mosquitto), mode 0600.
set -euo pipefail
file=$1; shift
[[ -f $file ]] || { touch "$file"; chmod 600 "$file"; }
# mosquitto starts as root, then drops to the user 'mosquitto' and reads the file as
# that user: root-owned 0600 would stop it at start ("Unable to open pwfile")
owner=${PASSWD_OWNER:-mosquitto}
if [[ $(id -u) -eq 0 ]] && id "$owner" >/dev/null 2>&1; then
  chown "$owner:" "$file"
  chmod 600 "$file"
fi
for user in "$@"; do
  var="PASS_${user//[-.]/_}"
  pass=${!var:-}
  if [[ -z $pass ]]; then
    read -r -s -p "password for $user: " pass; echo
  fi
  # on stdin, not with -b: a command line is visible to every local user (ps)
  printf '%s\n%s\n' "$pass" "$pass" | mosquitto_passwd "$file" "$user" >/dev/null
done
