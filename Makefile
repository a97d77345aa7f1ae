# Two entry points (see README.md): `make demo` and `make test`. Both build the environment
# (.venv, pinned by pyproject.toml) first if it is missing or out of date.
VENV    ?= .venv
PYTHON  ?= python3
CORES   ?= all
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp

.PHONY: env demo resume report test test-fast bench lint clean gpu-wheels

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
# With a profile (`--profile` in ARGS, or $SNAKEMAKE_PROFILE) the profile's `cores` holds:
# --cores on the command line would override it, and profiles/slurm's `cores` is what ONE job
# may ask SLURM for (the submitting machine's CPU count could leave jobs PENDING for ever).
# `make resume CORES=N ARGS="... --profile ..."` still passes --cores N.
ARGS    ?=
RESUME_PROFILE = $(findstring --profile,$(ARGS))$(SNAKEMAKE_PROFILE)
RESUME_GIVEN   = $(if $(filter command line,$(origin CORES)),--cores $(CORES))
RESUME_CORES   = $(if $(RESUME_PROFILE),$(RESUME_GIVEN),--cores $(CORES))
resume: $(STAMP)
	$(VENV)/bin/snakemake --unlock $(ARGS)
	$(VENV)/bin/snakemake $(RESUME_CORES) --rerun-incomplete --show-failed-logs $(ARGS)

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

# The wheels benchmarks/gpu_check.sh installs on a GPU machine whose Python (3.12, torch
# installed) cannot fetch packages: what xaipipe needs beyond torch, torchvision, NumPy,
# pandas, pyarrow, SciPy, matplotlib and pytest.
GPU_WHEELS := zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 \
	dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2 \
	zict==3.0.0 tornado==6.6.1 toolz==1.2.0 PyWavelets==1.9.0 pytorch-wavelets==1.3.0 \
	pyShearLab-MIND==0.0.3 captum==0.9.0 setuptools==80.9.0
gpu-wheels:
	grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
	    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	    --platform manylinux1_x86_64 -d .whl $(GPU_WHEELS)

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results .snakemake
