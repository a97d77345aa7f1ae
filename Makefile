# Two entry points (see README.md): `make demo` and `make test`. Both build the environment
# (.venv, pinned by pyproject.toml) first if it is missing or out of date.
VENV    ?= .venv
PYTHON  ?= python3
CORES   ?= all
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp

.PHONY: env demo resume report test test-fast bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --show-failed-logs
	$(VENV)/bin/snakemake --report results/report.html

# After a crash, a kill or a lost node: drop the stale lock (only safe when no other snakemake
# runs in this folder), then rerun what is incomplete. Finished shards are kept.
# `make resume ARGS="idgi_tmlr --configfile presets/idgi_tmlr.yaml"`
ARGS    ?=
resume: $(STAMP)
	$(VENV)/bin/snakemake --unlock $(ARGS)
	$(VENV)/bin/snakemake --cores $(CORES) --rerun-incomplete --show-failed-logs $(ARGS)

report: $(STAMP)
	$(VENV)/bin/snakemake --report results/report.html

# The suite runs in TEST_WORKERS pytest-xdist processes (--dist loadgroup: test by test, but
# the files whose tests share the tiny workflow run or the SLURM cluster stay in one process
# each, tests/conftest.py);
# TEST_WORKERS=0 runs it in this process. The slowest tests are listed at the end.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -m "not integration"

bench: $(STAMP)
	$(PY) benchmarks/bench_ig.py
	$(PY) benchmarks/bench_insertion.py
	$(PY) benchmarks/bench_sweep.py
	$(PY) benchmarks/bench_pic.py
	$(PY) benchmarks/bench_dask.py

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results .snakemake
