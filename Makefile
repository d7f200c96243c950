# mmfeat: `make demo` sets up .venv, builds the sample corpus and extracts it; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_CORPUS ?= demo-corpus
DEMO_OUTPUT ?= demo-output
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

# Installs the pinned dependencies, then runs librosa once so numba writes its
# cache now rather than on the first extraction (about 25 s the first time).
$(BIN)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python -c "import numpy, librosa; librosa.feature.mfcc(y=numpy.zeros(16000, 'float32'), sr=16000)"
	touch $@

install: $(BIN)/.installed

# Prints its own wall time (the install before it excluded).
demo: install
	@start=$$(date +%s); \
	$(BIN)/mmfeat make-sample-corpus $(DEMO_CORPUS) --n 64 --seed 0 && \
	$(BIN)/mmfeat extract --manifest $(DEMO_CORPUS)/manifest.jsonl --output $(DEMO_OUTPUT) --overwrite && \
	$(BIN)/mmfeat compare --cache $(DEMO_OUTPUT) --label label && \
	echo "make demo: $$(( $$(date +%s) - start )) s after the install"

test: install
	$(BIN)/python -m pytest -q tests $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/encode.py
	$(BIN)/python bench/train.py

clean:
	rm -rf $(DEMO_CORPUS) $(DEMO_OUTPUT) .pytest_cache
