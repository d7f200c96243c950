# mmfeat: `make demo` sets up .venv, builds the sample corpus and extracts it; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_CORPUS ?= demo-corpus
DEMO_OUTPUT ?= demo-output
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (0: one process, as plain `pytest` runs).
TEST_WORKERS ?= 2

.PHONY: install demo test bench clean espeak-ng

# Installs the pinned dependencies, then runs librosa once so numba writes its
# cache now rather than on the first extraction (about 25 s the first time),
# and compiles the project's modules (where PYTHONDONTWRITEBYTECODE is set,
# every command otherwise compiled them again: about 0.1 s of each start).
$(BIN)/.installed: setup.py
	$(MAKE) espeak-ng
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python -c "import numpy, librosa; librosa.feature.mfcc(y=numpy.zeros(16000, 'float32'), sr=16000)"
	$(BIN)/python -m compileall -q pipelines transforms schemas runners trainer
	touch $@

install: $(BIN)/.installed

# espeak-ng (Debian) synthesises the speech of `make-sample-corpus --speech`, the speech tests and bench/asr.py.
# Installed when apt-get can (root); otherwise those tests skip, saying so.
espeak-ng:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get update -qq && apt-get install -y -qq espeak-ng; } || echo "could not install espeak-ng: the speech tests will be skipped"; \
	  else echo "espeak-ng not installed (apt-get install espeak-ng as root): the speech tests will be skipped"; fi; }

# Prints its own wall time (the install before it excluded).
demo: install
	@start=$$(date +%s); \
	$(BIN)/mmfeat make-sample-corpus $(DEMO_CORPUS) --n 64 --seed 0 && \
	$(BIN)/mmfeat extract --manifest $(DEMO_CORPUS)/manifest.jsonl --output $(DEMO_OUTPUT) --overwrite && \
	$(BIN)/mmfeat compare --cache $(DEMO_OUTPUT) --label label && \
	echo "make demo: $$(( $$(date +%s) - start )) s after the install"

# Most tests keep one core busy (a Beam runner in-process, a fresh interpreter, a small model), so two pytest-xdist
# workers take about 40% off on 2 cores. Each worker takes whole files (--dist loadfile): a module's shared fixture
# (one extraction that several tests assert on) is built once. Tests marked `serial` (processes started at the same
# moment to race each other) run afterwards, alone, so that the other worker's load does not stagger their starts.
# Exit status 5 (no test selected, say by a -k in PYTEST_ARGS) is not a failure. The slowest tests are listed.
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not serial" --durations=15 tests $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/python -m pytest -q -m serial --durations=5 tests $(PYTEST_ARGS) || [ $$? -eq 5 ]

bench: install
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/encode.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/asr.py

clean:
	rm -rf $(DEMO_CORPUS) $(DEMO_OUTPUT) .pytest_cache
