#!/bin/bash
# fetch-hub-secrets: the hub's secrets, from AWS Secrets Manager into an env file on tmpfs.
#
#   fetch-hub-secrets.sh CONF OUTPUT
#
# Run by synapse-notebook-hub.service before every start of the hub (ExecStartPre), as the
# hub's user, with the host's instance role. CONF (/etc/synapse-notebook-hub/secrets.conf,
# written by install-hub.sh) names the secrets by ARN: CLIENT_SECRET_ARN,
# CRYPT_KEY_SECRET_ARN and, optionally, DB_URL_SECRET_ARN. OUTPUT
# (/run/synapse-notebook-hub/secrets.env) receives SYNAPSE_CLIENT_SECRET,
# JUPYTERHUB_CRYPT_KEY and SNH_DB_URL for systemd's EnvironmentFile=, mode 0600.
#
# Reading at every start, rather than once at install, means a rotated secret takes effect
# with `systemctl restart synapse-notebook-hub`, and no secret is ever on a disk: OUTPUT must
# be on tmpfs (the unit's RuntimeDirectory, removed when the hub stops) or nothing is
# written. Values pass through the AWS CLI's standard output and shell variables only, never
# an argument or a log line. Never add `set -x` to this script.
#
# Needs: bash, the AWS CLI (preinstalled on Amazon Linux 2023), coreutils.

set -euo pipefail
umask 077

SECRET_ARN_PATTERN='^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+$'
OUTPUT=""
ERRORS=""

die() {
  # <3> is journald's "error" priority.
  printf '<3>fetch-hub-secrets: %s\n' "$*" >&2
  exit 1
}

cleanup() {
  [[ -z $OUTPUT ]] || rm -f "$OUTPUT.tmp"
  [[ -z $ERRORS ]] || rm -f "$ERRORS"
}

# append NAME ARN [HINT]: the secret ARN's current value as NAME='value' to OUTPUT.tmp.
append() {
  local name=$1 arn=$2 hint=${3:-} region value reason
  IFS=: read -r _ _ _ region _ <<<"$arn"
  if ! value=$(aws secretsmanager get-secret-value --region "$region" --secret-id "$arn" \
    --query SecretString --output text 2>"$ERRORS"); then
    reason=$(tr -s '\n' ' ' <"$ERRORS" | cut -c1-300)
    die "cannot read $name from $arn: $reason${hint:+ - $hint}"
  fi
  if [[ -z $value || $value == None ]]; then
    die "$name in $arn is empty${hint:+ - $hint}"
  fi
  # Single-quoted for EnvironmentFile=: taken literally up to the closing quote. A value with
  # a quote or a line break could not be written so; neither belongs in these values.
  if [[ $value == *"'"* || $value == *$'\n'* || $value == *$'\r'* ]]; then
    die "$name in $arn holds a quote or a line break; store it without"
  fi
  printf "%s='%s'\n" "$name" "$value" >>"$OUTPUT.tmp"
}

main() {
  local conf key value client="" crypt="" db="" dir fstype
  [[ $# -eq 2 ]] || die "usage: fetch-hub-secrets.sh CONF OUTPUT"
  conf=$1
  [[ -r $conf ]] || die "$conf is missing: run hub_config/deploy/install-hub.sh"
  # Parsed, not sourced: the file is data.
  while IFS='=' read -r key value || [[ -n $key ]]; do
    case $key in
      '' | '#'*) ;;
      CLIENT_SECRET_ARN) client=$value ;;
      CRYPT_KEY_SECRET_ARN) crypt=$value ;;
      DB_URL_SECRET_ARN) db=$value ;;
      *) die "unknown key ${key:0:40} in $conf" ;;
    esac
  done <"$conf"
  [[ $client =~ $SECRET_ARN_PATTERN ]] || die "CLIENT_SECRET_ARN in $conf is not a secret ARN"
  [[ $crypt =~ $SECRET_ARN_PATTERN ]] || die "CRYPT_KEY_SECRET_ARN in $conf is not a secret ARN"
  [[ -z $db || $db =~ $SECRET_ARN_PATTERN ]] || die "DB_URL_SECRET_ARN in $conf is not a secret ARN"

  OUTPUT=$2
  dir=$(dirname "$OUTPUT")
  [[ -d $dir ]] || die "$dir does not exist"
  fstype=$(stat -f -c %T "$dir")
  [[ $fstype == tmpfs ]] || die "$dir is on $fstype, not tmpfs: refusing to write secrets there"
  ERRORS=$OUTPUT.errors
  trap cleanup EXIT
  rm -f "$OUTPUT.tmp"
  : >"$OUTPUT.tmp"

  append SYNAPSE_CLIENT_SECRET "$client" \
    "put the Synapse OAuth client secret (docs/deployment.md, step 6): aws secretsmanager put-secret-value --secret-id $client --secret-string file:///dev/stdin"
  append JUPYTERHUB_CRYPT_KEY "$crypt"
  if [[ -n $db ]]; then
    append SNH_DB_URL "$db"
  fi
  mv -f "$OUTPUT.tmp" "$OUTPUT"
}

# Run, unless sourced (by the tests).
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
