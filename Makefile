# Two commands on a fresh machine (see README):
#   make run    set up .venv and serve the bundled demo model
#   make test   install what the tests need and run them all
# Both are idempotent: the install steps re-run only when the locks change.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: run test test-fast lock clean train-demo system-deps

run: $(VENV)/.base-installed
	$(BIN)/python -m webapp serve

# Two workers (pytest-xdist), each running whole test files: the tests spend
# most of their time waiting on the servers they start, so two at once take
# 13 minutes instead of 23 on 2 cores. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

test: $(VENV)/.test-installed system-deps
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The quick subset while developing (under a minute): `-m quick` modules only.
test-fast: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m quick $(PYTEST_ARGS)

$(VENV)/.python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
	  { echo "Python 3.11 is required (found $$($(PYTHON) --version)); set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	touch $@

# The server, and the Python client package that `webapp predict`/`stream` are
# built on; the client's dependencies are in the lock.
$(VENV)/.base-installed: $(VENV)/.python requirements/base.txt pyproject.toml clients/python/pyproject.toml
	$(PIP) install -r requirements/base.txt
	$(PIP) install --no-deps -e .
	$(PIP) install --no-deps -e ./clients/python
	touch $@

$(VENV)/.test-installed: $(VENV)/.base-installed requirements/test.txt requirements/test-nodeps.txt
	$(PIP) install -r requirements/test.txt
	$(PIP) install --no-deps -r requirements/test-nodeps.txt
	touch $@

# What the tests drive besides Python: headless Chromium and its driver and
# redis-server (Debian packages, installed when missing; needs root, as in CI;
# the tests start their own redis-server on a free port), and
# Node.js with the official Socket.IO client (examples/node, from its lock).
# Another apt (unattended upgrades, a second checkout's `make test`) may hold
# the dpkg lock: wait for it rather than fail.
APT := apt-get -o DPkg::Lock::Timeout=600

system-deps: examples/node/node_modules/.package-lock.json
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { $(APT) update && $(APT) install -y chromium chromium-driver; }
	@command -v redis-server >/dev/null || { $(APT) update && $(APT) install -y redis-server; }

examples/node/node_modules/.package-lock.json: examples/node/package-lock.json
	@command -v node >/dev/null || { $(APT) update && $(APT) install -y nodejs npm; }
	cd examples/node && npm ci --no-audit --no-fund

# Re-resolve the locks from the *.in files (needs the package index).
lock:
	rm -rf /tmp/webapp-lock && $(PYTHON) -m venv /tmp/webapp-lock
	/tmp/webapp-lock/bin/pip install -r requirements/base.in
	{ echo "# Pinned lock of requirements/base.in (Python 3.11, linux x86_64). Regenerate with 'make lock'."; \
	  /tmp/webapp-lock/bin/pip freeze --all | grep -v -E '^(pip|setuptools)=='; } > requirements/base.txt
	/tmp/webapp-lock/bin/pip install -r requirements/test.in
	{ echo "# Pinned lock of requirements/test.in on top of base.txt. Regenerate with 'make lock'."; \
	  echo "-r base.txt"; /tmp/webapp-lock/bin/pip freeze | grep -vxFf requirements/base.txt; } > requirements/test.txt

# Retrain the bundled demo model (about 5 minutes on 2 cores), convert it, and
# give it an int8 file if its top-1 agreement with float holds (webapp/demo/int8.py).
train-demo: $(VENV)/.base-installed
	$(BIN)/python -m webapp.demo.train --out models/shapes
	$(BIN)/python -m webapp.models.runtime.convert models/shapes/model.keras models/shapes/model.tflite --preprocess raw
	$(BIN)/python -m webapp.demo.int8 --out models/shapes

clean:
	rm -rf $(VENV)
