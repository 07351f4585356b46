#!/bin/bash
# build-ami.sh: turn an Amazon Linux 2023 builder instance into the notebook AMI.
#
#   sudo images/ami/build-ami.sh [--bootstrap-dir DIR] IMAGE@sha256:<digest> ...
#
# Run as root on a builder instance launched from an Amazon Linux 2023 AMI, then create the
# image from the instance (`aws ec2 create-image`; images/README.md has every command). It:
#   - installs Docker (AL2023's own package) and enables it; checks every command the
#     bootstrap needs (aws, curl, docker, python3, util-linux, e2fsprogs, nvme-cli) is there;
#   - makes sure the SSM agent (preinstalled on AL2023) is enabled: the hub reaches every
#     notebook through Session Manager;
#   - installs the bootstrap script and its units from spawner/bootstrap/ (the user data writes
#     them again at every launch, so an instance always runs the hub's current bootstrap; these
#     copies are for inspection, and are not enabled: the user data enables them);
#   - pulls the notebook images given as arguments, by digest only (the communities file
#     refers to them by digest, and the bootstrap only pulls what is not there), logging in to
#     ECR with the builder's role; the login is kept in a temporary DOCKER_CONFIG, removed at
#     the end, so no credential stays in the AMI;
#   - cleans what must not be copied into every instance: cloud-init's state (so each
#     instance runs its own user data), logs, package caches, shell history.
#
# Package versions: AL2023 locks its repositories to the release of the AMI it boots from
# ("deterministic upgrades"), so the builder's source AMI id pins Docker and everything else.
#
# Root volume: the AMI's snapshot is as large as the builder's root volume, and no instance
# can have a smaller root volume than its AMI: build on a root volume no larger than the
# smallest root_volume_gb of the communities file (30 GiB by default).

set -euo pipefail
umask 022

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
BOOTSTRAP_DIR=$SCRIPT_DIR/../../spawner/bootstrap
readonly SCRIPT_PATH=/usr/local/sbin/notebook-bootstrap
readonly UNIT_DIR=/etc/systemd/system
readonly -a UNITS=(notebook-bootstrap.service notebook-backstop.service notebook-backstop.timer)
# registry/repository@sha256:<64 hex>, optionally with a tag before the digest.
readonly IMAGE_RE='^[a-z0-9][a-z0-9._:/-]*[a-z0-9](:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?@sha256:[0-9a-f]{64}$'
readonly ECR_RE='^[0-9]{12}\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$'

IMAGES=()
DOCKER_LOGIN_DIR=""

log() {
  printf 'build-ami: %s\n' "$*" >&2
}

die() {
  printf 'build-ami: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  printf 'usage: %s [--bootstrap-dir DIR] IMAGE@sha256:<digest> ...\n' "$0" >&2
  exit 2
}

cleanup() {
  if [[ -n $DOCKER_LOGIN_DIR ]]; then
    rm -rf "$DOCKER_LOGIN_DIR"
  fi
}

parse_args() {
  while (($#)); do
    case $1 in
      --bootstrap-dir)
        (($# >= 2)) || usage
        BOOTSTRAP_DIR=$2
        shift 2
        ;;
      -h | --help) usage ;;
      -*) usage ;;
      *)
        [[ $1 =~ $IMAGE_RE ]] || die "$1 is not an image reference pinned by digest (@sha256:...)"
        IMAGES+=("$1")
        shift
        ;;
    esac
  done
  ((${#IMAGES[@]})) || die "give the notebook images to pre-pull, by digest"
  local unit
  [[ -f $BOOTSTRAP_DIR/notebook-bootstrap.sh ]] ||
    die "$BOOTSTRAP_DIR/notebook-bootstrap.sh not found (use --bootstrap-dir)"
  for unit in "${UNITS[@]}"; do
    [[ -f $BOOTSTRAP_DIR/$unit ]] || die "$BOOTSTRAP_DIR/$unit not found"
  done
}

check_platform() {
  local id="" version=""
  ((EUID == 0)) || die "run as root"
  # shellcheck source=/dev/null
  id=$(. /etc/os-release && printf '%s' "${ID:-}")
  # shellcheck source=/dev/null
  version=$(. /etc/os-release && printf '%s' "${VERSION_ID:-}")
  [[ $id == amzn && $version == 2023 ]] ||
    die "this is ${id:-unknown} ${version:-}, not Amazon Linux 2023"
}

install_docker() {
  log "installing Docker and nvme-cli"
  # nvme-cli: the bootstrap reads the home volume's attachment name from its NVMe controller.
  # The packages the bootstrap needs that AL2023 lacks: spawner/bootstrap/platforms.py (the
  # Amazon Linux / Debian switch) lists them, and a test holds this line to it.
  dnf install --assumeyes --quiet docker nvme-cli
  systemctl enable --now docker.service
  docker version --format 'build-ami: docker {{.Server.Version}}' >&2
}

check_bootstrap_needs() {
  local cmd
  # What notebook-bootstrap's require_commands asks for, plus what its units use.
  for cmd in aws curl docker python3 blkid nvme findmnt mountpoint mkfs.ext4 resize2fs \
    install stat shutdown cloud-init; do
    command -v "$cmd" >/dev/null || die "$cmd is missing from this AMI"
  done
}

enable_ssm_agent() {
  log "enabling the SSM agent"
  systemctl enable amazon-ssm-agent.service
  # Already running when this script runs through Session Manager or Run Command.
  systemctl is-active --quiet amazon-ssm-agent.service || systemctl start amazon-ssm-agent.service
}

install_bootstrap() {
  local unit
  log "installing the bootstrap from $BOOTSTRAP_DIR"
  install -m 0755 -o root -g root "$BOOTSTRAP_DIR/notebook-bootstrap.sh" "$SCRIPT_PATH"
  for unit in "${UNITS[@]}"; do
    install -m 0644 -o root -g root "$BOOTSTRAP_DIR/$unit" "$UNIT_DIR/$unit"
  done
  install -d -m 0755 /etc/notebook-hub
  systemctl daemon-reload
  # Not enabled: without the server.conf that the user data writes, the unit would only fail
  # and retry; the user data enables it (and the backstop timer) at every launch.
}

# region_of_registry REGISTRY: the region of an ECR registry host name, or nothing.
region_of_registry() {
  if [[ $1 =~ $ECR_RE ]]; then
    printf '%s\n' "${BASH_REMATCH[1]}"
  fi
}

pull_images() {
  local image registry region
  local -A logged_in=()
  DOCKER_LOGIN_DIR=$(mktemp -d)
  export DOCKER_CONFIG=$DOCKER_LOGIN_DIR
  for image in "${IMAGES[@]}"; do
    registry=${image%%/*}
    region=$(region_of_registry "$registry")
    if [[ -n $region && -z ${logged_in[$registry]:-} ]]; then
      log "logging in to $registry with this instance's role"
      # The password goes through a pipe, never an argument.
      aws ecr get-login-password --region "$region" |
        docker login --username AWS --password-stdin "$registry" >/dev/null
      logged_in[$registry]=1
    fi
    log "pulling $image"
    docker pull --quiet "$image" >/dev/null
    # The bootstrap skips the pull when this succeeds for the exact reference it is given.
    docker image inspect "$image" >/dev/null || die "$image is not usable after its pull"
  done
  unset DOCKER_CONFIG
  rm -rf "$DOCKER_LOGIN_DIR"
  DOCKER_LOGIN_DIR=""
  docker image ls --digests >&2
}

clean_for_image() {
  log "cleaning up for the image"
  dnf clean all --quiet
  rm -rf /var/cache/dnf/*
  # Every instance must run its own user data: forget this one's, and its logs.
  cloud-init clean --logs
  rm -f /etc/notebook-hub/server.conf
  rm -rf /run/notebook-hub /var/tmp/*
  rm -f /root/.bash_history /home/*/.bash_history
  rm -rf /root/.docker
  journalctl --rotate --quiet || true
  journalctl --vacuum-time=1s --quiet || true
  sync
}

main() {
  trap cleanup EXIT
  parse_args "$@"
  check_platform
  install_docker
  check_bootstrap_needs
  enable_ssm_agent
  install_bootstrap
  pull_images
  clean_for_image
  log "done: create the image from this instance now (aws ec2 create-image, images/README.md)"
}

main "$@"
