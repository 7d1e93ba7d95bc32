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

# two pytest-xdist workers, one per core (every test process runs torch on one thread, tests/conftest.py); tests
# marked xdist_group run on one worker together; TEST_WORKERS=0 runs the suite in this one process
TEST_WORKERS ?= 2
test: data
	$(PYTHON) -m pytest tests -q -n $(TEST_WORKERS) --dist loadgroup

test-fast: data
	$(PYTHON) -m pytest tests -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow"
