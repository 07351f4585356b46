# Two entry points for a fresh machine (see README):
#   make demo   - the whole system on this machine, hub on http://127.0.0.1:8000
#   make test   - lint and the full test suite (unit, integration, browser)
# Each target installs what it needs: a virtualenv with the project, configurable-http-proxy
# from npm into ./node_modules, and Debian's chromium for the browser tests.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test test-oldest-jupyterhub lint bench chaos deps chromium openssh postgresql machines clean

deps: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

# Debian's OpenSSH: the simulated servers run its sshd (with the images' sshd_config), the
# tests drive them with its ssh, scp and sftp. Its service is not started by the install
# where policy-rc.d forbids it (containers); the tests never use it either way.
openssh:
	@{ test -x /usr/sbin/sshd && command -v ssh >/dev/null 2>&1 && command -v sftp >/dev/null 2>&1; } || { \
	  echo "installing Debian's openssh-server and openssh-client for the SSH tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq openssh-server openssh-client; }

# Debian's PostgreSQL: the integration tests and the benchmarks run their hubs on it, as
# production does (each test session starts its own server on loopback with its own data
# directory: tests/integration/postgres.py); the package's own cluster is never used.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing Debian's postgresql for the integration tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql; }

# Debian's systemd-container (systemd-nspawn) and debootstrap: real-boot machines
# (localcloud/machines) boot from a Debian root file system that debootstrap builds once
# (from the Debian archive, about 45 s) into ~/.cache/synapse-notebook-hub/machines.
machines:
	@{ command -v systemd-nspawn >/dev/null 2>&1 && test -x /usr/sbin/debootstrap; } || { \
	  echo "installing Debian's systemd-container and debootstrap for the real-boot machines"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq systemd-container debootstrap; }

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two workers, each taking whole modules (a module's hub and the session's local cloud are
# per worker): most of an integration test is waiting on a boot, a timer or a culler, so two
# streams fit on the two cores CI has. Tests are written to be right under such load.
PYTEST_WORKERS ?= 2

# The oldest JupyterHub the project supports (see test-oldest-jupyterhub); the database
# tests also create its schema and upgrade it to the newest's.
OLDEST_JUPYTERHUB := 5.2.1
OLDEST_DIR := $(VENV)/jupyterhub-$(OLDEST_JUPYTERHUB)

test: deps chromium openssh postgresql machines $(OLDEST_DIR)/.installed lint
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" $(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-oldest-jupyterhub

# The oldest JupyterHub the project supports, as an overlay on the virtualenv (its
# dependencies are a subset of the newest's): the trust suite, the authenticator and the
# spawner's unit tests run again on it, the hub process included (PYTHONPATH is inherited).

$(OLDEST_DIR)/.installed: $(VENV)/.installed
	rm -rf $(OLDEST_DIR)
	$(PY) -m pip install --quiet --no-deps --target $(OLDEST_DIR) jupyterhub==$(OLDEST_JUPYTERHUB)
	touch $@

test-oldest-jupyterhub: deps postgresql $(OLDEST_DIR)/.installed
	PYTHONPATH="$(CURDIR)/$(OLDEST_DIR)" SNH_EXPECT_JUPYTERHUB=$(OLDEST_JUPYTERHUB) \
	  PATH="$(CURDIR)/node_modules/.bin:$$PATH" $(VENV)/bin/pytest -p no:cacheprovider \
	  -n $(PYTEST_WORKERS) --dist loadfile \
	  tests/security tests/authenticator tests/spawner tests/operations --ignore=tests/spawner/ssm \
	  tests/integration/test_server_api.py

# The chaos run: 30 analysts work for 10 minutes through a seeded schedule of faults; it
# prints what was lost (nothing may be) and exits 1 otherwise. SEED=<n> replays a run;
# tests/integration/test_chaos.py is its two-minute version inside make test.
chaos: deps openssh postgresql
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" $(PY) -m chaos $(if $(SEED),--seed $(SEED))

# Benchmarks print figures and the ratios between them, and check their limits (exit 1).
# benchmarks.scale (500 servers) takes about 15 minutes (5 of them waiting for the spawn's
# tunnels to be released before the steady window).
bench: deps openssh postgresql
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" $(PY) -m benchmarks.tunnel; a=$$?; \
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" $(PY) -m benchmarks.spawn; b=$$?; \
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" $(PY) -m benchmarks.scale; c=$$?; \
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" $(PY) -m benchmarks.relay; d=$$?; \
	exit $$((a || b || c || d))

# REAL_BOOT=1: each instance a booted Debian machine running the bootstrap and the notebook
# image itself (README, "Real-boot machines"; root, and a few minutes' build the first time).
demo: deps openssh $(if $(REAL_BOOT),machines)
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" $(PY) -m localcloud $(if $(REAL_BOOT),--real-boot) demo

clean:
	rm -rf $(VENV) node_modules .localcloud .pytest_cache .hypothesis
