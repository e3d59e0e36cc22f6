# Two commands do all the set-up on a fresh machine:
#   make demo   installs Pollinate into .venv and runs the main job on the synthetic default
#   make test   installs Pollinate with its dev tools into .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test browser-deps lint typecheck clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pollinate simulate --out runs/demo

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

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
