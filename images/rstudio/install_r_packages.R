# R packages of the Synapse Notebook Hub RStudio image, pinned; run by the Dockerfile with
# RETICULATE_PYTHON=/opt/synapser/bin/python and PIP_CONSTRAINT=<synapser-requirements.txt>.
#
# synapser is Sage's R client: it drives the Python synapseclient through reticulate, and its
# configure step asks pip (reticulate::py_install) for synapseclient in the Python reticulate
# uses, here the locked virtual environment /opt/synapser. Its DESCRIPTION caps reticulate at
# 1.28 and rjson at 0.2.21, so those are installed first, at exactly those versions.
# Everything goes into the site library ($R_HOME/library), not the user library under
# /home/jovyan, which the persistent volume hides.

# CRAN as it was on the day of the base image (Posit Package Manager's dated snapshot), so the
# dependencies pulled in along (unpinned by name) are fixed too.
cran <- "https://packagemanager.posit.co/cran/2026-07-28"
# Sage's packages: the r-universe (https) first, then Sage's R archive (RAN), which also keeps
# older versions. Whichever serves it, the version is checked below.
sage <- c("https://sage-bionetworks.r-universe.dev", "http://ran.synapse.org")

pinned <- list(
  list(package = "rjson", version = "0.2.21", repos = cran),
  list(package = "reticulate", version = "1.28", repos = cran),
  list(package = "synapser", version = "2.1.5", repos = c(sage, cran))
)

for (p in pinned) {
  remotes::install_version(
    p$package,
    version = p$version,
    repos = p$repos,
    upgrade = "never",
    lib = .Library
  )
  installed <- as.character(utils::packageVersion(p$package, lib.loc = .Library))
  if (installed != p$version) {
    stop(sprintf("%s %s was installed, not %s", p$package, installed, p$version))
  }
}

# Loading synapser imports synapseclient in /opt/synapser: fail the build, not the first login.
suppressPackageStartupMessages(library(synapser))
reticulate::py_run_string("import boto3, synapseclient")
