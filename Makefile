# losslandscape: `make install`, `make demo`, `make test`, `make check`, `make bench`.
#
# Everything the project needs is installed here, into $(VENV). On a cluster,
# load your MPI and parallel-HDF5 modules first; they are used as they are.
# A GPU cluster sets its own torch, e.g. make install TORCH_SPEC='torch==2.6.*'.

PYTHON     ?= python3
VENV       ?= .venv
# The torch this venv was last installed with (written in its torch stamp) unless
# TORCH_SPEC is given, so `make test` after `make install TORCH_SPEC=...` keeps that torch;
# a new venv gets torch==2.13.0.
ifeq ($(origin TORCH_SPEC),undefined)
TORCH_SPEC := $(or $(shell cat $(wildcard $(VENV)/.torch-*) /dev/null 2>/dev/null | head -n 1),torch==2.13.0)
endif
# Pinned so that a new release cannot break a fresh install (h5py is built from
# source against the parallel HDF5, with these build tools).
H5PY_VERSION     ?= 3.16.0
MPI4PY_SPEC      ?= mpi4py==4.1.2
BUILD_TOOLS      ?= numpy==2.4.6 Cython==3.3.1 pkgconfig==1.6.0 setuptools==84.2.1 packaging==26.3 wheel
PYTEST_ARGS      ?=

PY  := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# One torch stamp per TORCH_SPEC (named by its checksum, holding the spec): a new spec,
# or going back to an earlier one, reinstalls torch and everything after it.
STAMP_TORCH := $(VENV)/.torch-$(shell printf '%s' '$(TORCH_SPEC)' | cksum | cut -d ' ' -f 1)
STAMP_H5PY := $(VENV)/.h5py-mpi-$(H5PY_VERSION)
STAMP_DEPS := $(VENV)/.deps

.PHONY: install demo test check bench paper clean-venv
install: $(STAMP_DEPS)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(BUILD_TOOLS)

# torch first and on its own: its pin decides which build (CPU or CUDA) lands.
$(STAMP_TORCH): $(PY) Makefile
	rm -f $(VENV)/.torch $(VENV)/.torch-*
	$(PIP) install $(BUILD_TOOLS) '$(TORCH_SPEC)' '$(MPI4PY_SPEC)'
	printf '%s\n' '$(TORCH_SPEC)' > $@

# h5py against parallel HDF5: only rebuilt when the pin changes (pip caches the wheel).
$(STAMP_H5PY): $(STAMP_TORCH) scripts/find-parallel-hdf5.sh
	@if $(PY) -c "import h5py, sys; sys.exit(not (h5py.get_config().mpi and h5py.__version__ == '$(H5PY_VERSION)'))" 2>/dev/null; then \
		echo "h5py $(H5PY_VERSION) with MPI already installed"; \
	else \
		env_lines=$$(scripts/find-parallel-hdf5.sh) || exit 1; \
		echo "building h5py $(H5PY_VERSION) with: $$(echo $$env_lines)"; \
		env $$env_lines $(PIP) install --no-binary=h5py --no-build-isolation 'h5py==$(H5PY_VERSION)' || exit 1; \
	fi
	$(PY) -c "import h5py; assert h5py.get_config().mpi, 'h5py was built without MPI'"
	touch $@

$(STAMP_DEPS): $(STAMP_H5PY) setup.cfg pyproject.toml
	$(PIP) install -e '.[test]' '$(TORCH_SPEC)' 'h5py==$(H5PY_VERSION)'
	touch $@

LL := $(VENV)/bin/losslandscape
DEMO := out/demo

# Trains once; surfaces resume (a finished one costs a second), so `make demo` can be rerun
# or interrupted and continued.
demo: install
	@if [ ! -f $(DEMO)/train/model_10.pt ]; then \
		rm -f $(DEMO)/surface.h5 $(DEMO)/interp.h5; \
		$(LL) train jobs/demo-train.toml || exit 1; \
	fi
	$(LL) surface jobs/demo-surface.toml
	$(LL) surface jobs/demo-interp.toml
	$(LL) render $(DEMO)/surface.h5 --out $(DEMO)/plots
	$(LL) render $(DEMO)/interp.h5 --out $(DEMO)/plots
	$(LL) summary $(DEMO)/surface.h5
	@echo
	@echo "demo pictures: $(DEMO)/plots/ (open $(DEMO)/plots/surface.html in a browser)"

# The suite on TEST_WORKERS processes (pytest-xdist), a test file to a process: a file's
# fixtures (trained models, the SLURM cluster, the quick paper run) are built once per process.
# The longest files start first (LONGEST_FIRST in tests/helpers.py), in that order.
# Three on two cores: much of the slow tier waits (on mpirun, the SLURM scheduler, a browser).
TEST_WORKERS ?= 3
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The fast tier for the inner loop: everything but real mpirun, SLURM and end-to-end runs.
check: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" $(PYTEST_ARGS)

# The paper's claims at small scale (about an hour on 2 cores; PAPER_SCALE=quick: minutes);
# PAPER_MPI=N runs the surfaces under mpirun -n N. Rerun to continue an interrupted run.
PAPER_SCALE ?= small
PAPER_MPI   ?= 1
paper: install
	$(LL) paper --scale $(PAPER_SCALE) --mpi $(PAPER_MPI) --out out/paper

bench: install
	$(PY) -m tools.bench --out bench.json

clean-venv:
	rm -rf $(VENV)
