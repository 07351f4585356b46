# shellcheck shell=bash
# Sourced by the Jupyter stack's start.sh (run-hooks.sh, before-notebook.d) in every container
# start, before jupyterhub-singleuser; must not exit or change shell options.
#
# RStudio's R sessions are started by rserver, and R reads Renviron.site at every start: the
# variables synLogin() needs to find the hub's token parameter are written there, so that an R
# session sees them however rserver launched it. Only these names, and only values that are
# parameter names or region names: never a secret (the hub API token stays in the
# environment of the notebook server only).
__snh_renviron() {
  # conda-forge's R: R_HOME is $CONDA_DIR/lib/R. The image's own Renviron.site was saved
  # beside it at build time (Renviron.site.image) and is kept first.
  local renviron=${CONDA_DIR:-/opt/conda}/lib/R/etc/Renviron.site name value
  {
    cat "$renviron.image" 2>/dev/null
    printf '# Written at container start by before-notebook.d/50-synapse-renviron.sh\n'
    printf 'RETICULATE_PYTHON=%s\n' "${RETICULATE_PYTHON:-/opt/synapser/bin/python}"
    for name in SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME AWS_REGION AWS_DEFAULT_REGION; do
      value=${!name-}
      if [[ $value =~ ^[A-Za-z0-9_./-]{1,2048}$ ]]; then
        printf '%s=%s\n' "$name" "$value"
      fi
    done
  } >"$renviron.tmp" && mv -f "$renviron.tmp" "$renviron"
}
__snh_renviron || printf 'before-notebook.d: could not write Renviron.site\n' >&2
unset -f __snh_renviron
