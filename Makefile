# Two commands do all the set-up on a fresh machine:
#   make demo   installs Pollinate into .venv and runs the main job on the synthetic default
#   make test   installs Pollinate with its dev tools into .venv and runs the test suite
#   (make test-fast: the everyday subset, without the slow end-to-end runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast browser-deps lint typecheck clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# A small synthetic federation with and without user-level DP, the centralized reference and
# a no-federation baseline in one table (runs/demo/summary.md, summary.png), then
# pollinate audit on the private run. A few minutes on two cores.
demo: $(STAMP)
	$(BIN)/pollinate demo --out runs/demo

# The everyday subset: no Flower/Ray runs, no browser, no deployment. `make test` runs all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -q -m "not slow and not ray and not browser and not deployment" --timeout=120

# The browser tests open pages in Debian's headless Chromium; as root (CI) it is installed
# here, elsewhere they are skipped with the reason unless CI is set.
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
		else echo "chromium/chromium-driver missing: the browser tests will be skipped"; fi; \
	fi

test: $(STAMP) browser-deps
	$(BIN)/python -m pytest tests -q --timeout=900

# The example edge app (examples/edge-app): a local web page on the SDK, ML-100K's catalogue
# from DATA_DIR, the encrypted store in runs/edge-app. Open http://127.0.0.1:8765/
.PHONY: edge-app
DATA_DIR ?= ../shared/data
edge-app: $(STAMP)
	$(BIN)/python examples/edge-app/edge_app.py --data-dir $(DATA_DIR) --store runs/edge-app/device.db

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
