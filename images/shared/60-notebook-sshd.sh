# shellcheck shell=bash
# Sourced by the Jupyter stack's start.sh (run-hooks.sh, before-notebook.d) in every container
# start, before jupyterhub-singleuser; must not exit or change shell options.
#
# Starts the server's sshd (/etc/notebook-ssh/sshd_config) as the notebook user when the hub
# gave the server at least one public key; else says so and starts nothing. The host key lives
# on the home volume, so that it stays the same from one start of the server to the next
# (users' known_hosts keep working); it is made at the first start.
__snh_sshd() {
  local keys=/etc/notebook-ssh/authorized_keys run=/tmp/notebook-ssh
  local host_key=${HOME:-/home/jovyan}/.ssh/notebook_host_ed25519_key name value
  if [[ ! -s $keys ]]; then
    printf 'before-notebook.d: no SSH keys for this server (add one on the hub'"'"'s SSH keys page); sshd not started\n' >&2
    return 0
  fi
  install -d -m 0700 "$run" "${host_key%/*}" || return 1
  if [[ ! -s $host_key ]]; then
    ssh-keygen -q -t ed25519 -N '' -C "notebook server" -f "$host_key" || return 1
  fi
  {
    # Sessions get the names the notebook's SDKs read, and the trust store the container
    # was given if any (the local cloud's real-boot machines give one), not its whole env.
    for name in SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME AWS_REGION AWS_DEFAULT_REGION \
      AWS_CA_BUNDLE REQUESTS_CA_BUNDLE SSL_CERT_FILE; do
      value=${!name-}
      if [[ $value =~ ^[A-Za-z0-9_./-]{1,2048}$ ]]; then
        printf 'SetEnv %s=%s\n' "$name" "$value"
      fi
    done
  } >"$run/environment.conf" || return 1
  /usr/sbin/sshd -f /etc/notebook-ssh/sshd_config -E "$run/sshd.log" || return 1
  printf 'before-notebook.d: sshd started on port 2222 (%s key(s))\n' "$(wc -l <"$keys")" >&2
}
__snh_sshd || printf 'before-notebook.d: could not start sshd (see /tmp/notebook-ssh/sshd.log)\n' >&2
unset -f __snh_sshd
