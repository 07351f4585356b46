#!/bin/bash
# notebook-bootstrap: start this instance's notebook server. Synapse Notebook Hub.
#
# Run by notebook-bootstrap.service at every boot, not only the first: the hub issues a new
# API token at every start of a server and writes it to Parameter Store before it starts (or
# launches) the instance, so the container is re-created each time from the parameters.
#
#   notebook-bootstrap start   read /etc/notebook-hub/server.conf and the server's parameters,
#                              mount the home volume, run the notebook container
#   notebook-bootstrap stop    remove the container (at shutdown: the next boot must not find
#                              a container that docker would restart with a stale token)
#   notebook-bootstrap backstop  the idle backstop (notebook-backstop.timer, every 5 minutes):
#                              shut down (the instance stops) once the notebook has been idle
#                              too long; see backstop() below
#
# Secrets (the hub API token) only ever sit in /run/notebook-hub (tmpfs, mode 0700, files
# 0600), reach docker through --env-file, and are never in arguments or logs; the Synapse
# token never comes here at all: the container reads it with the instance role. Never add
# `set -x` to this script.
#
# Needs: bash, curl, the AWS CLI, python3 (cloud-init's own), docker, util-linux, e2fsprogs,
# nvme-cli (Nitro instances).

set -euo pipefail
umask 077

# Tests run the script against a scratch directory with stub commands; on an instance this
# is empty (the unit sets nothing).
readonly ROOT=${NOTEBOOK_BOOTSTRAP_ROOT:-}
readonly CONF=${ROOT}/etc/notebook-hub/server.conf
readonly RUN_DIR=${ROOT}/run/notebook-hub
readonly HOME_MOUNT=${ROOT}/srv/notebook-home
# The backstop's state, on tmpfs: forgotten at every boot.
readonly BACKSTOP_DIR=${ROOT}/run/notebook-backstop
readonly BACKSTOP_LOG=${ROOT}/var/log/notebook-backstop.log
readonly CONTAINER=notebook
readonly CONTAINER_PORT=8888
# The image's sshd (run by the notebook user, so above 1024) and where the instance sees it:
# on its loopback only, beside the host's own sshd if the AMI has one. The hub's relay maps
# the SSH port users ask for (22) to this one (spawner/naming.py: INSTANCE_SSH_PORT).
readonly SSH_CONTAINER_PORT=2222
readonly SSH_INSTANCE_PORT=2222
readonly IMDS=http://169.254.169.254/latest
# jovyan in the Jupyter docker stacks (and the RStudio image's user): owner of a new home.
readonly HOME_UID=1000
readonly HOME_GID=100
# The hub writes the parameters before it launches the instance, but tags them with the
# instance's ARN (which the instance role's policy requires) only once it knows the id.
# Shorter only for tests that want a missing parameter reported soon (the unit sets nothing).
PARAMETER_WAIT_SECONDS=600
if [[ ${NOTEBOOK_PARAMETER_WAIT_SECONDS:-} =~ ^[0-9]{1,4}$ ]]; then
  PARAMETER_WAIT_SECONDS=$NOTEBOOK_PARAMETER_WAIT_SECONDS
fi
readonly PARAMETER_WAIT_SECONDS
readonly DEVICE_WAIT_SECONDS=120

PARAMETER_PATH=""
REGION=""
PORT=8888
HOME_DEVICE=/dev/sdf
INSTANCE_ID=""
IMAGE=""
IMAGE_KIND=""
# Ports of the container the community lets its users reach from their computers (besides
# SSH and the notebook's own), published on the instance's loopback like the notebook's.
APP_PORTS=()

log() {
  printf '%s\n' "$*" >&2
}

# What start() is doing, named when a command fails under `set -e` without a message of its
# own (cleanup() then reports it as die() would).
STEP="starting"
# Whether die() has said why already (in this shell; a subshell's die leaves a mark in
# RUN_DIR): then cleanup() does not say it again less precisely.
GAVE_UP=""

# say_failed WHY: why the start failed, where the hub and an admin look.
say_failed() {
  # <3> is journald's "error" priority.
  printf '<3>%s\n' "$*" >&2
  # And on the serial console, which GetConsoleOutput shows: the hub reads it to tell the user
  # why a start failed. With the time, so that an earlier boot's failure is not taken for
  # this one's (the hub's BOOTSTRAP_FAILED pattern in spawner/bootstrap/__init__.py).
  [[ ! -c ${ROOT}/dev/console ]] ||
    printf 'notebook-bootstrap: failed at %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" \
      >"${ROOT}/dev/console" 2>/dev/null || :
}

# die WHY: give up the start. Only where giving up is meant: in a subshell it leaves a mark
# that silences cleanup()'s report, so never where the caller goes on after a failure
# (`x=$(f) || fallback` with a die in f).
die() {
  say_failed "$*"
  GAVE_UP=1
  [[ ! -d $RUN_DIR ]] || : >"$RUN_DIR/gave-up" 2>/dev/null || :
  exit 1
}

cleanup() {
  local status=$?
  # The env file is only needed by `docker run`; the raw parameter values not even that long.
  rm -f "$RUN_DIR/jupyterhub.env" "$RUN_DIR/jupyterhub-env.json" "$RUN_DIR/config.json" \
    "$RUN_DIR/imds-header" "$RUN_DIR/aws-error" "$RUN_DIR/config-error" \
    "$RUN_DIR/docker-error" "$RUN_DIR"/*.tmp
  if ((status != 0)) && [[ -z $GAVE_UP && ! -e $RUN_DIR/gave-up ]]; then
    say_failed "$STEP failed (exit status $status);" \
      "the unit notebook-bootstrap's journal has the rest"
  fi
  rm -f "$RUN_DIR/gave-up"
}

require_commands() {
  local cmd
  for cmd in aws curl docker python3 blkid findmnt mountpoint mkfs.ext4 resize2fs; do
    command -v "$cmd" >/dev/null || die "required command $cmd is not installed"
  done
}

read_conf() {
  local key value
  [[ -r $CONF ]] || die "$CONF is missing: this instance was not launched by the hub"
  # Parsed, not sourced: the file is data, and nothing in it should be able to run.
  while IFS='=' read -r key value || [[ -n $key ]]; do
    case $key in
      '' | '#'*) ;;
      NOTEBOOK_PARAMETER_PATH) PARAMETER_PATH=$value ;;
      AWS_REGION) REGION=$value ;;
      NOTEBOOK_PORT) PORT=$value ;;
      HOME_DEVICE) HOME_DEVICE=$value ;;
      BACKSTOP_IDLE_SECONDS) ;; # read by backstop()
      *) log "ignoring unknown key ${key:0:40} in $CONF" ;;
    esac
  done <"$CONF"
  [[ $PARAMETER_PATH =~ ^/[A-Za-z0-9_./-]+$ ]] ||
    die "NOTEBOOK_PARAMETER_PATH in $CONF is missing or not a parameter path"
  PARAMETER_PATH=${PARAMETER_PATH%/}
  [[ -z $REGION || $REGION =~ ^[a-z]{2}(-[a-z]+)+-[1-9][0-9]?$ ]] ||
    die "AWS_REGION in $CONF is not a region name"
  if [[ ! $PORT =~ ^[1-9][0-9]{0,4}$ ]] || ((PORT > 65535)); then
    die "NOTEBOOK_PORT in $CONF is not a port number"
  fi
  [[ $HOME_DEVICE =~ ^/dev/[a-z][a-z0-9]+$ ]] || die "HOME_DEVICE in $CONF is not a device name"
}

prepare_run_dir() {
  local fstype
  install -d -m 0700 "$RUN_DIR"
  # Never let a secret reach a persistent disk, even on an image where /run is not tmpfs.
  fstype=$(stat -f -c %T "$RUN_DIR")
  [[ $fstype == tmpfs ]] || die "$RUN_DIR is on $fstype, not tmpfs"
}

imds_token() {
  local token
  token=$(curl -fsS --retry 10 --retry-connrefused --max-time 5 -X PUT \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600' "$IMDS/api/token") ||
    die "the instance metadata service gave no IMDSv2 token"
  # In a header file, so the token is not in curl's arguments (printf is a builtin).
  printf 'X-aws-ec2-metadata-token: %s\n' "$token" >"$RUN_DIR/imds-header"
}

imds_get() {
  curl -fsS --retry 10 --retry-connrefused --max-time 5 -H "@$RUN_DIR/imds-header" \
    "$IMDS/meta-data/$1"
}

read_instance_identity() {
  imds_token
  INSTANCE_ID=$(imds_get instance-id) ||
    die "the instance metadata service did not say the instance id"
  [[ $INSTANCE_ID =~ ^i-[0-9a-f]+$ ]] || die "unexpected instance id from the metadata service"
  if [[ -z $REGION ]]; then
    REGION=$(imds_get placement/region)
  fi
  log "instance $INSTANCE_ID in $REGION, parameters under $PARAMETER_PATH/"
}

# fetch_parameter NAME FILE: the decrypted value of NAME into FILE, retrying until readable.
fetch_parameter() {
  local name=$1 dest=$2 delay=2 deadline=$((SECONDS + PARAMETER_WAIT_SECONDS)) reason
  while true; do
    # --query/--output text and a redirect: the value never passes through an argument.
    if aws ssm get-parameter --region "$REGION" --name "$name" --with-decryption \
      --query Parameter.Value --output text >"$dest.tmp" 2>"$RUN_DIR/aws-error"; then
      mv -f "$dest.tmp" "$dest"
      return 0
    fi
    # one line: the AWS CLI's message may start and end with a line break
    reason=$(tr -s '\n' ' ' <"$RUN_DIR/aws-error" | sed 's/^ *//; s/ *$//' | cut -c1-300)
    if ((SECONDS >= deadline)); then
      die "cannot read parameter $name: $reason"
    fi
    log "parameter $name not readable yet ($reason); retrying in ${delay}s"
    sleep "$delay"
    delay=$((delay < 30 ? delay * 2 : 30))
  done
}

read_parameters() {
  local fields
  fetch_parameter "$PARAMETER_PATH/config" "$RUN_DIR/config.json"
  fetch_parameter "$PARAMETER_PATH/jupyterhub-env" "$RUN_DIR/jupyterhub-env.json"
  # config: {"image": "<ref@sha256:...>", "image_kind": "jupyter"|"rstudio",
  #          "relay_ports": [22, ...], "ssh_authorized_keys": ["ssh-ed25519 AAAA... c", ...]}
  # The keys go to a file the container's sshd reads (mounted read-only; not a secret, but
  # only the hub decides who may log in); one plain public key per line, no options.
  install -d -m 0755 "$RUN_DIR/ssh"
  fields=$(
    python3 - "$RUN_DIR/config.json" "$RUN_DIR/ssh/authorized_keys" \
      "$CONTAINER_PORT" "$SSH_CONTAINER_PORT" "$PORT" 2>"$RUN_DIR/config-error" <<'PY'
import json, os, re, sys
source, keys_file = sys.argv[1], sys.argv[2]
notebook_port, ssh_port, instance_port = map(int, sys.argv[3:6])
config = json.load(open(source, encoding="utf-8"))
image, kind = config.get("image"), config.get("image_kind", "jupyter")
if not isinstance(image, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,511}", image):
    sys.exit("config: 'image' is missing or not an image reference")
if kind not in ("jupyter", "rstudio"):
    sys.exit("config: 'image_kind' must be jupyter or rstudio")
ports = config.get("relay_ports", [22])
if not isinstance(ports, list) or not all(
    isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports
):
    sys.exit("config: 'relay_ports' must be a list of port numbers")
keys = config.get("ssh_authorized_keys", [])
key_line = re.compile(r"(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+ [A-Za-z0-9+/]+={0,2}( [ -~]{0,100})?")
if not isinstance(keys, list) or not all(isinstance(k, str) and key_line.fullmatch(k) for k in keys):
    sys.exit("config: 'ssh_authorized_keys' must be a list of plain public key lines")
fd = os.open(keys_file + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
with os.fdopen(fd, "w", encoding="ascii") as out:
    out.writelines(f"{k}\n" for k in keys)
os.chmod(keys_file + ".tmp", 0o644)
os.replace(keys_file + ".tmp", keys_file)
print(image)
print(kind)
# never empty (a command substitution drops trailing newlines): "ports" and the list
taken = {22, notebook_port, ssh_port, instance_port}  # published already, or the host's
print(" ".join(["ports", *(str(p) for p in sorted(set(ports) - taken))]))
PY
  ) || die "$(tail -n 1 "$RUN_DIR/config-error")"
  IMAGE=${fields%%$'\n'*}
  fields=${fields#*$'\n'}
  IMAGE_KIND=${fields%%$'\n'*}
  read -r -a APP_PORTS <<<"${fields#*$'\n'}"
  APP_PORTS=("${APP_PORTS[@]:1}")
  # jupyterhub-env: a JSON object of the single-user server's environment, as a docker
  # --env-file (KEY=value lines, taken literally). Written 0600 on tmpfs.
  python3 - "$RUN_DIR/jupyterhub-env.json" "$RUN_DIR/jupyterhub.env" "$REGION" <<'PY'
import json, os, re, sys
source, dest, region = sys.argv[1:4]
env = json.load(open(source, encoding="utf-8"))
if not isinstance(env, dict):
    sys.exit("jupyterhub-env: not a JSON object")
env = {"AWS_REGION": region, "AWS_DEFAULT_REGION": region, **env}
lines = []
for key, value in env.items():
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        sys.exit("jupyterhub-env: a variable name is not valid")
    if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
        sys.exit(f"jupyterhub-env: the value of {key} is not a one-line string")
    lines.append(f"{key}={value}\n")
fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w", encoding="utf-8") as out:
    out.writelines(lines)
PY
  rm -f "$RUN_DIR/jupyterhub-env.json" "$RUN_DIR/config.json"
  log "image $IMAGE ($IMAGE_KIND), $(wc -l <"$RUN_DIR/ssh/authorized_keys") SSH key(s)"
}

# remove_container REASON: remove the notebook container, if there is one; REASON is logged.
remove_container() {
  local old
  if old=$(docker container inspect --format '{{.Config.Image}}' "$CONTAINER" 2>/dev/null); then
    log "removing the notebook container of image $old ($1)"
    docker stop --time 30 "$CONTAINER" >/dev/null || true
    docker rm --force "$CONTAINER" >/dev/null
  fi
}

is_block() {
  [[ -b $1 ]]
}

# ebs_device_name DEVICE: the name the block device mapping gave this EBS volume ("sdf"), read
# from its NVMe controller; nothing for a device that is not an EBS volume. EBS puts that name
# in the first 32 bytes of the vendor-specific area (bytes 3072-4095) of the Identify
# Controller data (EBS User Guide, "Amazon EBS and NVMe": `nvme id-ctrl -v` shows it; Amazon
# Linux's ebsnvme-id reads the same field to make its /dev/sdX links). Asking the device, not
# EC2: the instance role has no ec2:DescribeInstances, which would show every user's tags.
ebs_device_name() {
  nvme id-ctrl --raw-binary "$1" 2>/dev/null | python3 -c '
import sys
data = sys.stdin.buffer.read()
if len(data) >= 4096:
    name = data[3072:3104].split(b"\0")[0].strip().decode("ascii", "replace")
    print(name.removeprefix("/dev/"))
' || true
}

# The block device of the home volume. On Nitro instances EBS volumes are NVMe devices whose
# controller names the attachment (above), in whatever order the kernel numbered them; on Xen
# ones the device is sdX or xvdX, and Amazon Linux's udev rules also link sdX to the NVMe.
find_home_device() {
  local device=${ROOT}${HOME_DEVICE} xvd=${ROOT}/dev/xvd${HOME_DEVICE#/dev/sd} nvme name
  # Counted in looks, not seconds: each look waits 2 s, plus what the looks themselves take.
  local wanted=${HOME_DEVICE#/dev/} looks=$((DEVICE_WAIT_SECONDS / 2))
  while true; do
    if command -v nvme >/dev/null; then
      for nvme in "${ROOT}"/dev/nvme[0-9]*n1; do
        is_block "$nvme" || continue
        name=$(ebs_device_name "$nvme")
        if [[ $name == "$wanted" || $name == "xvd${wanted#sd}" ]]; then
          printf '%s\n' "$nvme"
          return 0
        fi
      done
    fi
    if is_block "$device"; then
      readlink -f "$device"
      return 0
    fi
    if is_block "$xvd"; then
      printf '%s\n' "$xvd"
      return 0
    fi
    ((--looks > 0)) || die "home volume $HOME_DEVICE is not attached"
    sleep 2
  done
}

mount_home() {
  local device status=0 fstype nonzero
  install -d -m 0755 "$HOME_MOUNT"
  if mountpoint -q "$HOME_MOUNT"; then
    log "home volume already mounted at $HOME_MOUNT"
    return 0
  fi
  device=$(find_home_device)
  blkid -p "$device" >/dev/null || status=$?
  case $status in
    0) ;;
    2)
      # blkid also answers 2 when it cannot read the device: format only a volume that reads
      # as zeros (a new EBS volume), never one with data blkid does not recognise.
      nonzero=$(head -c 1048576 "$device" | tr -d '\0' | wc -c)
      ((nonzero == 0)) ||
        die "$device has data but no filesystem blkid recognises; refusing to format it"
      log "formatting the new home volume $device"
      mkfs.ext4 -q -L notebook-home -m 0 "$device"
      ;;
    *) die "cannot tell whether $device has a filesystem (blkid exit status $status)" ;;
  esac
  mount -o nodev,nosuid "$device" "$HOME_MOUNT"
  if ((status == 2)); then
    chown "$HOME_UID:$HOME_GID" "$HOME_MOUNT"
  fi
  fstype=$(findmnt -n -o FSTYPE --target "$HOME_MOUNT")
  if [[ $fstype == ext4 ]]; then
    # The volume may have been enlarged while the server was stopped.
    resize2fs "$device" >/dev/null 2>&1 || log "could not grow the filesystem on $device"
  fi
  log "home volume $device mounted at $HOME_MOUNT"
}

pull_image() {
  local attempt registry
  if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    return 0
  fi
  registry=${IMAGE%%/*}
  if [[ $registry =~ ^[0-9]{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$ ]]; then
    # A private ECR registry: log in with the instance role; docker keeps the login in
    # DOCKER_CONFIG, which is on tmpfs, and reads the password from a pipe, not an argument.
    export DOCKER_CONFIG=$RUN_DIR/docker
    aws ecr get-login-password --region "$REGION" |
      docker login --username AWS --password-stdin "$registry" >/dev/null
  fi
  for attempt in 1 2 3 4 5; do
    log "pulling $IMAGE (attempt $attempt)"
    if docker pull --quiet "$IMAGE" >/dev/null 2>"$RUN_DIR/docker-error"; then
      return 0
    fi
    log "$(tail -n 1 "$RUN_DIR/docker-error")"
    ((attempt == 5)) || sleep $((attempt * 10))
  done
  die "cannot pull $IMAGE: $(tail -n 1 "$RUN_DIR/docker-error" | cut -c1-300)"
}

run_container() {
  local port
  local -a args=(
    run --detach --name "$CONTAINER" --restart unless-stopped
    --publish "127.0.0.1:$PORT:$CONTAINER_PORT"
    --publish "127.0.0.1:$SSH_INSTANCE_PORT:$SSH_CONTAINER_PORT"
    --volume "$HOME_MOUNT:/home/jovyan"
    --volume "$RUN_DIR/ssh/authorized_keys:/etc/notebook-ssh/authorized_keys:ro"
    --env-file "$RUN_DIR/jupyterhub.env"
    # jupyter-server writes the hub API token into its runtime dir (jpserver-*.json), by
    # default under the home directory, i.e. on the persistent volume: keep it in memory.
    --tmpfs "/run/jupyter:rw,nosuid,nodev,mode=1777"
    --env JUPYTER_RUNTIME_DIR=/run/jupyter
    --log-driver journald --log-opt tag=notebook
  )
  for port in "${APP_PORTS[@]}"; do
    args+=(--publish "127.0.0.1:$port:$port")
  done
  if command -v nvidia-container-cli >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    args+=(--gpus all)
  fi
  args+=("$IMAGE" jupyterhub-singleuser --ip=0.0.0.0 "--port=$CONTAINER_PORT")
  if [[ $IMAGE_KIND == rstudio ]]; then
    # jupyter-rsession-proxy serves RStudio under /rstudio; open it instead of Jupyter.
    args+=(--ServerApp.default_url=/rstudio)
  fi
  # its error names the cause (an image without jupyterhub-singleuser, a port in use)
  docker "${args[@]}" >/dev/null 2>"$RUN_DIR/docker-error" ||
    die "cannot run the notebook container of $IMAGE: $(tail -n 1 "$RUN_DIR/docker-error" |
      cut -c1-300)"
  log "notebook container started, listening on 127.0.0.1:$PORT"
}

start() {
  rm -f "$RUN_DIR/gave-up" # a mark left by an earlier start of this boot
  trap cleanup EXIT
  STEP="checking the commands it needs"
  require_commands
  STEP="reading $CONF"
  read_conf
  STEP="preparing $RUN_DIR"
  prepare_run_dir
  # First, before the home volume is mounted: a container docker restarted at boot (after an
  # unclean shutdown) would write to the empty mount point, with a token no longer valid. The
  # server may also have been switched to another image while stopped.
  STEP="removing the previous notebook container"
  remove_container "left from the previous start"
  STEP="reading the instance's identity"
  read_instance_identity
  STEP="reading the server's parameters"
  read_parameters
  STEP="mounting the home volume"
  mount_home
  STEP="pulling the image $IMAGE"
  pull_image
  STEP="running the notebook container"
  run_container
}

stop() {
  remove_container "the instance is shutting down"
}

# -- the idle backstop: for when the hub's culler cannot stop an idle server ---------------
# Idle = since the notebook's last_activity (/api/status, asked in the container with its own
# token) or the boot, whichever is later; no answer (no notebook, no hub): the last seen
# stands. Idle for BACKSTOP_IDLE_SECONDS (default 24 h): say why, shut down (= stop).

readonly STATUS_PY='
import json, os, urllib.request as u
from datetime import datetime
e = os.environ
r = u.Request("http://127.0.0.1:8888" + (e.get("JUPYTERHUB_SERVICE_PREFIX") or "/")
    + "api/status", headers={"Authorization": "token " + e.get("JUPYTERHUB_API_TOKEN", "")})
t = json.load(u.urlopen(r, timeout=30))["last_activity"]
print(int(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()))
'

positive() {
  [[ $1 =~ ^[1-9][0-9]{0,9}$ ]]
}

backstop_limit() {
  local key value limit=86400
  while IFS='=' read -r key value; do
    [[ $key != BACKSTOP_IDLE_SECONDS ]] || ! positive "$value" || limit=$value
  done < <(cat "$CONF" 2>/dev/null || true)
  printf '%s\n' "$limit"
}

# The notebook's last activity in epoch seconds, or why not (on stderr).
notebook_last_activity() {
  local answer
  if ! answer=$(docker exec -i "$CONTAINER" python3 - <<<"$STATUS_PY" 2>&1); then
    tr -s '\n' ' ' <<<"$answer" | cut -c1-200 >&2
    return 1
  fi
  answer=${answer##*$'\n'}
  [[ $answer =~ ^[0-9]{1,12}$ ]] || { echo "unexpected answer: ${answer:0:80}" >&2 && false; }
  echo "$answer"
}

backstop() {
  local now uptime boot limit last answered error="" activity idle heard since message
  export TZ=UTC
  now=$EPOCHSECONDS
  read -r uptime _ <"${ROOT}/proc/uptime"
  boot=$((now - ${uptime%.*}))
  limit=$(backstop_limit)
  install -d -m 0700 "$BACKSTOP_DIR"
  last=$(cat "$BACKSTOP_DIR/last-activity" 2>/dev/null || echo 0)
  answered=$(cat "$BACKSTOP_DIR/last-answer" 2>/dev/null || true)
  ((last > boot)) || last=$boot
  if activity=$(notebook_last_activity 2>"$BACKSTOP_DIR/error"); then
    ((activity < now)) || activity=$now
    ((activity < last)) || last=$activity
    answered=$now
    echo "$last" >"$BACKSTOP_DIR/last-activity"
    echo "$now" >"$BACKSTOP_DIR/last-answer"
  else
    error=$(<"$BACKSTOP_DIR/error")
  fi
  idle=$((now - last))
  if ((idle < limit)); then
    log "idle for $idle s of $limit s${error:+; the notebook did not answer: $error}"
    return 0
  fi
  if [[ -z $answered ]]; then
    heard="the notebook has not answered since the boot (${error:-no answer})"
  else
    heard="the notebook answered at $(printf '%(%FT%TZ)T' "$answered")"
    [[ -z $error ]] || heard+=", not since ($error)"
  fi
  since="its last activity"
  ((last > boot)) || since="the boot"
  message="stopping this instance: no notebook activity for $idle s, since $since at"
  message+=" $(printf '%(%FT%TZ)T' "$last") (limit $limit s); $heard"
  log "$message"
  install -d -m 0755 "${BACKSTOP_LOG%/*}"
  printf '%(%FT%TZ)T %s\n' -1 "$message" >>"$BACKSTOP_LOG"
  [[ ! -c ${ROOT}/dev/console ]] || echo "notebook-backstop: $message" >"${ROOT}/dev/console" || :
  shutdown -h now
}

main() {
  case ${1:-start} in
    start) start ;;
    stop) stop ;;
    backstop) backstop ;;
    *) die "usage: notebook-bootstrap [start|stop|backstop]" ;;
  esac
}

# Run, unless sourced (by the tests, which replace a function or two).
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
