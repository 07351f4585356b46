#!/bin/bash
# smoke-test.sh: start a notebook image the way an instance does, and check it works.
#
#   images/smoke-test.sh IMAGE [jupyter|rstudio]
#
# For an operator, where Docker runs (a laptop, a build machine, an instance of the AMI). It:
#   1. starts IMAGE with the arguments spawner/bootstrap/notebook-bootstrap.sh uses (a scratch
#      home volume at /home/jovyan, the hub's variables from an --env-file, the runtime
#      directory on tmpfs, `jupyterhub-singleuser --ip=0.0.0.0 --port=8888`, and
#      `--ServerApp.default_url=/rstudio` for rstudio);
#   2. waits for the single-user server's /user/smoke/api and checks the X-JupyterHub-Version it
#      answers with against the image's org.synapse.notebook-hub.jupyterhub-version label;
#   3. for rstudio: asks for /user/smoke/rstudio/ with the server's token and checks that
#      RStudio Server answers through jupyter-rsession-proxy;
#   4. logs in to Synapse inside the container, in Python (synapseclient) and for rstudio also
#      in R (synapser), printing the user name, when a token is available:
#        SYNAPSE_AUTH_TOKEN=<personal access token> images/smoke-test.sh IMAGE
#      or, on an instance whose role may read the parameter (what the hub arranges):
#        SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME=/path/synapse-token AWS_REGION=us-east-1 ...
#      Without either, the login step is skipped, with a message.
#
# jupyterhub-singleuser will not run without a hub: at start-up it asks the hub API for its
# version and exits if nobody answers, and it asks the hub who owns every token it is shown.
# So a stand-in hub runs next to it, in a second container of the same image on a private
# network: a few lines of Python that answer those three requests (the API root, the token's
# owner "smoke" with access to this server, and activity reports). Real OAuth sign-in through
# a browser is not tested here; the integration tests of the hub cover that path.
#
# The Synapse token is only ever in this shell's environment and passed to `docker exec` by
# name (--env NAME, which docker copies from its own environment): it is not in an argument,
# the container's configuration or a file. It is a test of the image, not how the hub delivers
# tokens (the hub never sets SYNAPSE_AUTH_TOKEN; see README.md, "The Synapse token inside").
#
# Everything it creates (two containers, a network, the scratch home) is removed on exit.
# Needs: bash, docker, curl.

set -euo pipefail

readonly USER_NAME=smoke
readonly PREFIX=/user/${USER_NAME}/
readonly WAIT_SECONDS=${SMOKE_TEST_WAIT_SECONDS:-180}

IMAGE=${1:-}
KIND=${2:-jupyter}
if [[ -z $IMAGE || $# -gt 2 || ! $KIND =~ ^(jupyter|rstudio)$ ]]; then
  echo "usage: $0 IMAGE [jupyter|rstudio]" >&2
  exit 2
fi

RUN_ID=snh-smoke-$$
NETWORK=$RUN_ID
HUB=$RUN_ID-hub
NOTEBOOK=$RUN_ID-notebook
WORK=$(mktemp -d)
HOME_DIR=$WORK/home
ENV_FILE=$WORK/jupyterhub.env

fail() {
  printf 'FAIL: %s\n' "$*" >&2
  if docker container inspect "$NOTEBOOK" >/dev/null 2>&1; then
    printf -- '--- the last lines of the notebook container log ---\n' >&2
    docker logs --tail 40 "$NOTEBOOK" >&2 || true
  fi
  exit 1
}

cleanup() {
  docker rm --force "$NOTEBOOK" "$HUB" >/dev/null 2>&1 || true
  docker network rm "$NETWORK" >/dev/null 2>&1 || true
  # The container wrote the scratch home as uid 1000: what this user may not remove, a
  # container of the image removes as root.
  if ! rm -rf "$WORK" 2>/dev/null; then
    docker run --rm --user 0 --entrypoint rm --volume "$WORK:/scratch" "$IMAGE" \
      -rf /scratch/home >/dev/null 2>&1 || true
    rm -rf "$WORK" || printf 'could not remove %s\n' "$WORK" >&2
  fi
}

trap cleanup EXIT

# The stand-in hub: GET <api>/ (version check), GET <api>/user (who owns a token: the smoke
# user, with access to its server, for the server's own token), POST <api>/users/*/activity.
readonly HUB_PY='
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import jupyterhub
TOKEN, USER = os.environ["STUB_TOKEN"], os.environ["STUB_USER"]

class Hub(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-JupyterHub-Version", jupyterhub.__version__)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path == "/hub/api":
            return self.reply(200, {"version": jupyterhub.__version__})
        if path == "/hub/api/user":
            if self.headers.get("Authorization", "") != "token " + TOKEN:
                return self.reply(403, {"status": 403, "message": "not the smoke token"})
            return self.reply(200, {
                "kind": "user", "name": USER, "admin": False, "groups": [],
                "scopes": ["access:servers!user=" + USER, "read:users:name!user=" + USER],
            })
        self.reply(404, {"status": 404, "message": "not in the stand-in hub"})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.reply(200 if self.path.endswith("/activity") else 404, {})

    def log_message(self, *args):
        sys.stderr.write("stand-in hub: " + (args[0] % args[1:]) + "\n")

ThreadingHTTPServer(("0.0.0.0", 8081), Hub).serve_forever()
'

random_hex() {
  od -An -tx1 -N16 /dev/urandom | tr -d ' \n'
}

expected_version() {
  docker image inspect --format \
    '{{index .Config.Labels "org.synapse.notebook-hub.jupyterhub-version"}}' "$IMAGE"
}

# http_status URL [curl options...]: the status code, or 000 when nothing answered.
http_status() {
  local url=$1
  shift
  curl -s -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' --max-time 60 "$@" "$url" ||
    true
}

header() {
  tr -d '\r' <"$WORK/headers" | awk -v h="$(tr '[:upper:]' '[:lower:]' <<<"$1"):" \
    'tolower($1) == h { sub(/^[^:]*:[ \t]*/, ""); value = $0 } END { print value }'
}

start_containers() {
  local token=$1 port
  install -d -m 0777 "$HOME_DIR"
  docker network create "$NETWORK" >/dev/null
  docker run --detach --name "$HUB" --network "$NETWORK" --network-alias hub \
    --env STUB_TOKEN="$token" --env STUB_USER="$USER_NAME" --entrypoint python3 \
    "$IMAGE" -c "$HUB_PY" >/dev/null
  # What the hub's spawner puts in the server's jupyterhub-env parameter, pointing at the
  # stand-in. The token is a random one made for this run (0600 file, removed on exit).
  (
    umask 077
    cat >"$ENV_FILE" <<EOF
JUPYTERHUB_API_TOKEN=$token
JPY_API_TOKEN=$token
JUPYTERHUB_CLIENT_ID=jupyterhub-user-$USER_NAME
JUPYTERHUB_API_URL=http://hub:8081/hub/api
JUPYTERHUB_ACTIVITY_URL=http://hub:8081/hub/api/users/$USER_NAME/activity
JUPYTERHUB_BASE_URL=/
JUPYTERHUB_SERVICE_PREFIX=$PREFIX
JUPYTERHUB_SERVICE_URL=http://0.0.0.0:8888$PREFIX
JUPYTERHUB_USER=$USER_NAME
JUPYTERHUB_SERVER_NAME=
JUPYTERHUB_OAUTH_CALLBACK_URL=${PREFIX}oauth_callback
JUPYTERHUB_OAUTH_SCOPES=["access:servers!server=$USER_NAME/", "access:servers!user=$USER_NAME"]
JUPYTERHUB_OAUTH_ACCESS_SCOPES=["access:servers!server=$USER_NAME/", "access:servers!user=$USER_NAME"]
JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES=[]
EOF
  )
  local -a args=(
    run --detach --name "$NOTEBOOK" --network "$NETWORK"
    --publish 127.0.0.1::8888
    --volume "$HOME_DIR:/home/jovyan"
    --env-file "$ENV_FILE"
    --tmpfs "/run/jupyter:rw,nosuid,nodev,mode=1777"
    --env JUPYTER_RUNTIME_DIR=/run/jupyter
  )
  # Passed by name only: docker copies the values from this environment, if set.
  local name
  for name in SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME AWS_REGION AWS_DEFAULT_REGION; do
    if [[ -n ${!name:-} ]]; then
      args+=(--env "$name")
    fi
  done
  args+=("$IMAGE" jupyterhub-singleuser --ip=0.0.0.0 --port=8888)
  if [[ $KIND == rstudio ]]; then
    args+=(--ServerApp.default_url=/rstudio)
  fi
  docker "${args[@]}" >/dev/null
  port=$(docker port "$NOTEBOOK" 8888/tcp | head -n 1)
  BASE=http://${port/0.0.0.0/127.0.0.1}
}

wait_for_api() {
  local deadline=$((SECONDS + WAIT_SECONDS)) status version expected
  while true; do
    status=$(http_status "$BASE${PREFIX}api")
    [[ $status != 200 ]] || break
    if [[ $(docker container inspect --format '{{.State.Running}}' "$NOTEBOOK") != true ]]; then
      fail "the notebook container exited"
    fi
    ((SECONDS < deadline)) || fail "no answer from ${PREFIX}api after ${WAIT_SECONDS}s"
    sleep 2
  done
  version=$(header X-JupyterHub-Version)
  expected=$(expected_version)
  printf 'ok: %sapi answers %s; jupyterhub-singleuser %s\n' "$PREFIX" "$(<"$WORK/body")" \
    "${version:-(no X-JupyterHub-Version header)}"
  if [[ -n $expected && $version != "$expected" ]]; then
    fail "the image's jupyterhub is ${version:-unknown}, its label says $expected"
  fi
}

check_rstudio() {
  local token=$1 status location deadline=$((SECONDS + WAIT_SECONDS))
  # The first request starts rserver (jupyter-server-proxy waits for it to listen).
  while true; do
    status=$(http_status "$BASE${PREFIX}rstudio/" -H "@$WORK/auth-header")
    [[ $status == 000 || $status == 5* ]] || break
    ((SECONDS < deadline)) || fail "RStudio did not answer at ${PREFIX}rstudio/ ($status)"
    sleep 3
  done
  location=$(header Location)
  case $status in
    200) grep -qi rstudio "$WORK/body" || fail "${PREFIX}rstudio/ answered 200 without RStudio" ;;
    30[12378])
      [[ $location != */hub/* ]] || fail "${PREFIX}rstudio/ sent us to the hub: $location"
      ;;
    *) fail "${PREFIX}rstudio/ answered $status" ;;
  esac
  printf 'ok: %srstudio/ is RStudio Server (HTTP %s%s)\n' "$PREFIX" "$status" \
    "${location:+, to $location}"
}

check_login() {
  local -a pass=()
  if [[ -n ${SYNAPSE_AUTH_TOKEN:-} ]]; then
    pass=(--env SYNAPSE_AUTH_TOKEN)
  elif [[ -z ${SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME:-} ]]; then
    printf 'skipped: Synapse login (set SYNAPSE_AUTH_TOKEN, or on an instance'
    printf ' SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME and AWS_REGION)\n'
    return 0
  fi
  docker exec ${pass[@]+"${pass[@]}"} "$NOTEBOOK" python -c '
import synapseclient
syn = synapseclient.Synapse(skip_checks=True)
syn.login(silent=True)
print("ok: synapseclient logged in as", syn.getUserProfile()["userName"])
' || fail "synapseclient could not log in"
  if [[ $KIND == rstudio ]]; then
    docker exec ${pass[@]+"${pass[@]}"} "$NOTEBOOK" Rscript -e '
suppressPackageStartupMessages(library(synapser))
synLogin()
cat("ok: synapser logged in as", synGetUserProfile()$userName, "\n")
' || fail "synapser could not log in"
  fi
}

main() {
  local token
  command -v docker >/dev/null || fail "docker is not installed"
  command -v curl >/dev/null || fail "curl is not installed"
  docker image inspect "$IMAGE" >/dev/null 2>&1 || docker pull --quiet "$IMAGE" >/dev/null ||
    fail "cannot pull $IMAGE"
  token=$(random_hex)
  printf 'Authorization: token %s\n' "$token" >"$WORK/auth-header"
  start_containers "$token"
  printf 'started %s (%s) on %s\n' "$IMAGE" "$KIND" "$BASE"
  wait_for_api
  if [[ $KIND == rstudio ]]; then
    check_rstudio "$token"
  fi
  check_login
  printf 'PASS: %s (%s)\n' "$IMAGE" "$KIND"
}

main
