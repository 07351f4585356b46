#!/bin/bash
# install-hub: install, or upgrade, the Synapse Notebook Hub on its host (Amazon Linux 2023).
#
#   install-hub.sh [--public-url URL] [--client-id ID] [--region REGION] [--hub-id ID]
#                  [--parameter-prefix /PATH] [--parameter-kms-key-id ARN]
#                  [--data-volume-id vol-...] [--client-secret-arn ARN]
#                  [--crypt-key-secret-arn ARN] [--db-url-secret-arn ARN]
#                  [--communities-file PATH] [--admin-contact EMAIL]
#                  [--break-glass-admins NAME,NAME]
#                  [--hub-api-port PORT] [--proxy-port PORT]
#
# Run as root from a checkout of the repository: by the hub host's user data at the first
# boot (hub_config/infrastructure/hub-host.yaml passes every setting from the stacks), and by
# operators after checking out a new ref, with no argument: the settings of the last run are
# kept in /etc/synapse-notebook-hub/install.conf, and an argument replaces one of them.
# Every step is idempotent, so running it again repairs as well as upgrades:
#
#   - a system user synapse-notebook-hub;
#   - the data volume (by its EBS volume id) mounted at /var/lib/synapse-notebook-hub, the
#     hub's state directory, formatted only when it reads as zeros (a new volume), in fstab;
#   - a virtualenv /opt/synapse-notebook-hub/venv with `pip install <checkout>` (and psycopg
#     when a PostgreSQL URL secret is configured), `npm ci` of configurable-http-proxy in the
#     checkout, and /opt/synapse-notebook-hub/current pointing at the checkout;
#   - /etc/synapse-notebook-hub/hub.env (non-secret settings, from hub.env next to this
#     script) and secrets.conf (the secrets' ARNs, never their values);
#   - the systemd units, enabled; the hub restarted (users' servers keep running).
#
# No secret passes through this script: the hub's unit reads them at each start
# (fetch-hub-secrets.sh, into tmpfs). Never add `set -x` to this script.

set -euo pipefail
umask 022

# Tests run the script against a scratch directory with stub commands; on a host it is empty.
readonly ROOT=${SNH_INSTALL_ROOT:-}
readonly HUB_USER=synapse-notebook-hub
readonly PREFIX=${ROOT}/opt/synapse-notebook-hub
readonly VENV=${PREFIX}/venv
readonly CURRENT=${PREFIX}/current
readonly ETC=${ROOT}/etc/synapse-notebook-hub
readonly CONF=${ETC}/install.conf
readonly UNIT_DIR=${ROOT}/etc/systemd/system
readonly FSTAB=${ROOT}/etc/fstab
# The state directory as the host sees it (hub.env and the units name it so).
readonly STATE_DIR=/var/lib/synapse-notebook-hub
readonly STATE_MOUNT=${ROOT}${STATE_DIR}
readonly IMDS=http://169.254.169.254/latest
readonly UNITS=(
  synapse-notebook-hub.service
  synapse-notebook-hub-reaper.service
  synapse-notebook-hub-reaper.timer
)
# The data volume is attached by CloudFormation after the instance starts, or later when the
# host is being replaced (docs/deployment.md): wait for it.
DATA_VOLUME_WAIT_SECONDS=${SNH_DATA_VOLUME_WAIT_SECONDS:-3600}
CHECKOUT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
readonly CHECKOUT

# Settings: name -> value; the order of SETTING_NAMES is the order of install.conf.
declare -A SETTING
readonly SETTING_NAMES=(
  PUBLIC_URL CLIENT_ID ADMIN_CONTACT BREAK_GLASS_ADMINS COMMUNITIES_FILE REGION HUB_ID
  PARAMETER_PREFIX PARAMETER_KMS_KEY_ID HUB_API_PORT PROXY_PORT DATA_VOLUME_ID
  CLIENT_SECRET_ARN CRYPT_KEY_SECRET_ARN DB_URL_SECRET_ARN
)
readonly SECRET_ARN='arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+'
readonly PORT='([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])'
# name -> the pattern its value must match in full; an empty value of an optional setting is
# allowed by its pattern. No pattern lets through a quote, a space or a shell character.
declare -A PATTERN=(
  [PUBLIC_URL]="https?://[A-Za-z0-9.-]+(:$PORT)?"
  [CLIENT_ID]='[0-9]+'
  [ADMIN_CONTACT]='[A-Za-z0-9._%+@-]*'
  # hub user names, comma-separated (SNH_BREAK_GLASS_ADMINS); empty: nobody is full admin
  [BREAK_GLASS_ADMINS]='([a-z0-9][a-z0-9._@-]*(,[a-z0-9][a-z0-9._@-]*)*)?'
  [COMMUNITIES_FILE]='[A-Za-z0-9_][A-Za-z0-9_./-]*\.ya?ml'
  [REGION]='[a-z]{2}(-[a-z]+)+-[1-9][0-9]?'
  [HUB_ID]='[a-z0-9][a-z0-9-]{0,62}'
  [PARAMETER_PREFIX]='(/[A-Za-z0-9_.-]+)+'
  [PARAMETER_KMS_KEY_ID]='(arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/[A-Za-z0-9/_-]+)?'
  [HUB_API_PORT]="$PORT"
  [PROXY_PORT]="$PORT"
  [DATA_VOLUME_ID]='vol-[0-9a-f]{8,17}'
  [CLIENT_SECRET_ARN]="$SECRET_ARN"
  [CRYPT_KEY_SECRET_ARN]="$SECRET_ARN"
  [DB_URL_SECRET_ARN]="($SECRET_ARN)?"
)
declare -A DEFAULT=(
  [ADMIN_CONTACT]=''
  [BREAK_GLASS_ADMINS]=''
  [COMMUNITIES_FILE]=hub_config/communities.yaml
  [HUB_ID]=synapse-notebook-hub
  [PARAMETER_PREFIX]=/synapse-notebook-hub
  [PARAMETER_KMS_KEY_ID]=''
  [HUB_API_PORT]=8081
  [PROXY_PORT]=8000
  [DB_URL_SECRET_ARN]=''
)

log() {
  printf 'install-hub: %s\n' "$*" >&2
}

die() {
  printf 'install-hub: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '3,9p' "${BASH_SOURCE[0]}" | cut -c3- >&2
  exit 2
}

# --- settings -----------------------------------------------------------------------------

read_saved_settings() {
  local key value
  [[ -f $CONF ]] || return 0
  # Parsed, not sourced: the file is data.
  while IFS='=' read -r key value || [[ -n $key ]]; do
    case $key in
      '' | '#'*) ;;
      *)
        [[ $key =~ ^[A-Z_]+$ && -v "PATTERN[$key]" ]] || die "unknown setting ${key:0:40} in $CONF"
        SETTING[$key]=$value
        ;;
    esac
  done <"$CONF"
}

parse_arguments() {
  local option name
  while (($#)); do
    option=$1
    [[ $option == --help || $option == -h ]] && usage
    [[ $option == --* && $# -ge 2 ]] || die "unknown argument ${option:0:40} (see --help)"
    name=${option#--}
    name=${name//-/_}
    name=${name^^}
    [[ $name =~ ^[A-Z_]+$ && -v "PATTERN[$name]" ]] || die "unknown option ${option:0:40} (see --help)"
    SETTING[$name]=$2
    shift 2
  done
}

check_settings() {
  local name option value problems=()
  for name in "${SETTING_NAMES[@]}"; do
    option=${name,,}
    option=--${option//_/-}
    if [[ ! -v "SETTING[$name]" && -v "DEFAULT[$name]" ]]; then
      SETTING[$name]=${DEFAULT[$name]}
    fi
    if [[ ! -v "SETTING[$name]" || (-z ${SETTING[$name]} && ! -v "DEFAULT[$name]") ]]; then
      problems+=("$option is required (no earlier value in $CONF)")
      continue
    fi
    value=${SETTING[$name]}
    if [[ ! $value =~ ^${PATTERN[$name]}$ ]]; then
      problems+=("$option: ${value:0:80} is not valid")
    fi
  done
  value=${SETTING[COMMUNITIES_FILE]:-}
  if [[ $value == *..* ]]; then
    problems+=("--communities-file must stay inside the checkout")
  elif [[ -n $value && ! -f $CHECKOUT/$value ]]; then
    problems+=("--communities-file: $CHECKOUT/$value does not exist")
  fi
  if ((${#problems[@]})); then
    printf 'install-hub: error: %s\n' "${problems[@]}" >&2
    exit 2
  fi
}

save_settings() {
  local name
  install -d -m 0755 "$ETC"
  {
    printf '# Written by install-hub.sh; its arguments override these at the next run.\n'
    for name in "${SETTING_NAMES[@]}"; do
      printf '%s=%s\n' "$name" "${SETTING[$name]}"
    done
  } >"$CONF.tmp"
  chmod 0644 "$CONF.tmp"
  mv -f "$CONF.tmp" "$CONF"
}

# --- system user and data volume ----------------------------------------------------------

require_commands() {
  local cmd
  for cmd in python3.11 npm node curl blkid lsblk mkfs.ext4 mount mountpoint systemctl \
    useradd getent chown; do
    command -v "$cmd" >/dev/null || die "required command $cmd is not installed"
  done
}

create_user() {
  if ! getent passwd "$HUB_USER" >/dev/null; then
    log "creating the system user $HUB_USER"
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
      --shell /sbin/nologin "$HUB_USER"
  fi
}

is_block() {
  [[ -b $1 ]]
}

# The data volume's block device. On Nitro instances an EBS volume is an NVMe device whose
# serial is the volume id without its dash (the same lookup as
# spawner/bootstrap/notebook-bootstrap.sh's find_home_device); on Xen ones /dev/sdf or xvdf.
find_data_device() {
  local serial=${SETTING[DATA_VOLUME_ID]/-/} name byid deadline
  byid=${ROOT}/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${serial}
  deadline=$((SECONDS + DATA_VOLUME_WAIT_SECONDS))
  while true; do
    if is_block "$byid"; then
      readlink -f "$byid"
      return 0
    fi
    name=$(lsblk -dn -o NAME,SERIAL | awk -v s="$serial" '$2 == s { print $1; exit }')
    if [[ -n $name ]] && is_block "${ROOT}/dev/${name}"; then
      printf '%s\n' "${ROOT}/dev/${name}"
      return 0
    fi
    for name in sdf xvdf; do
      if is_block "${ROOT}/dev/${name}"; then
        readlink -f "${ROOT}/dev/${name}"
        return 0
      fi
    done
    ((SECONDS < deadline)) ||
      die "data volume ${SETTING[DATA_VOLUME_ID]} is not attached (waited $DATA_VOLUME_WAIT_SECONDS s)"
    ((SECONDS % 60 > 4)) || log "waiting for data volume ${SETTING[DATA_VOLUME_ID]} to be attached"
    sleep 5
  done
}

mount_data_volume() {
  local device status=0 nonzero uuid
  install -d -m 0755 "$STATE_MOUNT"
  device=$(find_data_device)
  blkid -p "$device" >/dev/null || status=$?
  case $status in
    0) ;;
    2)
      # blkid also answers 2 when it cannot read the device: format only a volume that reads
      # as zeros (a new EBS volume), never one with data blkid does not recognise.
      nonzero=$(head -c 1048576 "$device" | tr -d '\0' | wc -c)
      ((nonzero == 0)) ||
        die "$device has data but no filesystem blkid recognises; refusing to format it"
      log "formatting the new data volume $device"
      mkfs.ext4 -q -L snh-state "$device"
      ;;
    *) die "cannot tell whether $device has a filesystem (blkid exit status $status)" ;;
  esac
  uuid=$(blkid -s UUID -o value "$device")
  [[ $uuid =~ ^[0-9a-fA-F-]+$ ]] || die "no filesystem UUID on $device"
  # One fstab line for the state directory, by UUID (device names may change between boots);
  # nofail: a missing volume must not stop the boot (the hub's unit requires the mount).
  touch "$FSTAB"
  awk -v dir="$STATE_DIR" '$2 != dir' "$FSTAB" >"$FSTAB.tmp"
  printf 'UUID=%s %s ext4 defaults,nofail,nodev,nosuid,noexec 0 2\n' "$uuid" "$STATE_DIR" \
    >>"$FSTAB.tmp"
  chmod 0644 "$FSTAB.tmp"
  mv -f "$FSTAB.tmp" "$FSTAB"
  if mountpoint -q "$STATE_MOUNT"; then
    log "data volume already mounted at $STATE_DIR"
  else
    mount -o nodev,nosuid,noexec "$device" "$STATE_MOUNT"
    log "data volume $device mounted at $STATE_DIR"
  fi
  chown "$HUB_USER:$HUB_USER" "$STATE_MOUNT"
  chmod 0700 "$STATE_MOUNT"
}

# --- software -----------------------------------------------------------------------------

install_software() {
  install -d -m 0755 "$PREFIX"
  if [[ ! -x $VENV/bin/python ]]; then
    log "creating the virtualenv $VENV"
    python3.11 -m venv "$VENV"
  fi
  log "installing the hub from $CHECKOUT"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade "$CHECKOUT"
  if [[ -n ${SETTING[DB_URL_SECRET_ARN]} ]]; then
    # SQLAlchemy's postgresql+psycopg driver, for the database URL in that secret.
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade 'psycopg[binary]>=3.3'
  fi
  log "installing configurable-http-proxy (package-lock.json) in $CHECKOUT"
  npm ci --prefix "$CHECKOUT" --omit=dev --no-audit --no-fund --loglevel=error
  ln -sfn "$CHECKOUT" "$CURRENT"
}

# --- configuration and units --------------------------------------------------------------

# The instance's private address, for SNH_HUB_CONNECT_URL (IMDSv2: a session token first;
# the token goes to curl on its standard input, not in an argument).
private_address() {
  local token address
  token=$(curl -fsS --retry 10 --retry-connrefused --max-time 5 -X PUT \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$IMDS/api/token")
  address=$(curl -fsS --retry 10 --retry-connrefused --max-time 5 -H @- \
    "$IMDS/meta-data/local-ipv4" <<<"X-aws-ec2-metadata-token: $token")
  [[ $address =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] ||
    die "unexpected private address from the instance metadata: ${address:0:40}"
  printf '%s\n' "$address"
}

write_configuration() {
  local line name host
  host=$(private_address)
  install -d -m 0755 "$ETC"
  printf '# Written by install-hub.sh from hub_config/deploy/hub.env; run it again to change.\n' \
    >"$ETC/hub.env.tmp"
  while IFS= read -r line || [[ -n $line ]]; do
    [[ -n $line && $line != '#'* ]] || continue
    for name in "${SETTING_NAMES[@]}"; do
      line=${line//"@$name@"/"${SETTING[$name]}"}
    done
    line=${line//@HUB_HOST@/"$host"}
    [[ $line != *@[A-Z_]*@* ]] || die "hub.env template: unknown placeholder in ${line:0:80}"
    printf '%s\n' "$line" >>"$ETC/hub.env.tmp"
  done <"$CHECKOUT/hub_config/deploy/hub.env"
  chmod 0644 "$ETC/hub.env.tmp"
  mv -f "$ETC/hub.env.tmp" "$ETC/hub.env"
  {
    printf '# Written by install-hub.sh: the ARNs of the hub secrets (never their values),\n'
    printf '# read by fetch-hub-secrets.sh at each start of the hub.\n'
    printf 'CLIENT_SECRET_ARN=%s\n' "${SETTING[CLIENT_SECRET_ARN]}"
    printf 'CRYPT_KEY_SECRET_ARN=%s\n' "${SETTING[CRYPT_KEY_SECRET_ARN]}"
    printf 'DB_URL_SECRET_ARN=%s\n' "${SETTING[DB_URL_SECRET_ARN]}"
  } >"$ETC/secrets.conf.tmp"
  chmod 0644 "$ETC/secrets.conf.tmp"
  mv -f "$ETC/secrets.conf.tmp" "$ETC/secrets.conf"
  log "wrote /etc/synapse-notebook-hub/hub.env (the hub API at http://$host:${SETTING[HUB_API_PORT]})"
}

install_units() {
  local unit
  install -d -m 0755 "$UNIT_DIR"
  for unit in "${UNITS[@]}"; do
    install -m 0644 "$CHECKOUT/hub_config/deploy/$unit" "$UNIT_DIR/$unit"
  done
  systemctl daemon-reload
  systemctl enable synapse-notebook-hub.service synapse-notebook-hub-reaper.timer
  # A restart, not a start: an upgrade must run the new code. Users' servers keep running
  # (cleanup_servers = False) and their tunnels come back on the same ports.
  systemctl restart synapse-notebook-hub.service
  systemctl restart synapse-notebook-hub-reaper.timer
  log "synapse-notebook-hub (re)started; follow it with: journalctl -u synapse-notebook-hub -f"
}

main() {
  read_saved_settings
  parse_arguments "$@"
  check_settings
  [[ -n $ROOT || $EUID -eq 0 ]] || die "run as root"
  require_commands
  save_settings
  create_user
  mount_data_volume
  install_software
  write_configuration
  install_units
}

# Run, unless sourced (by the tests, which replace a function or two).
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
