# The two commands of the README: `make demo` (set-up, example data, demo training) and `make test`
# (set-up, example data, which the demo-config tests use, then the test suite).
PYTHON ?= python

.PHONY: install data demo test test-fast
install:
	$(PYTHON) -m pip install -r requirements.txt
	$(PYTHON) -m pip install --no-deps --no-build-isolation -e .

data: install
	$(PYTHON) scripts/prepare_example_data.py

demo: data
	$(PYTHON) acla_basicsr/train.py -opt options/train/demo_ACLA_SRx2.yml

test: data
	$(PYTHON) -m pytest tests -q

test-fast: data
	$(PYTHON) -m pytest tests -q -m "not slow"
