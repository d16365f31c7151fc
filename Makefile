# Two entry points (see README): `make demo` and `make test`. Both create .venv, install torch and
# eqkern with its C++ (and, where a CUDA toolkit is present, CUDA) extension built, then run.
PYTHON      ?= python3
VENV        ?= .venv
VPY         := $(VENV)/bin/python
# The dev/CI torch: a CUDA build (from local disk here) so that the CUDA kernels compile and link.
TORCH_SPEC  ?= torch==2.14.1 torchvision==0.29.1
DEPS        := numpy tqdm filelock matplotlib ninja setuptools wheel pytest pytest-benchmark import-linter tensorboard
MAX_JOBS    ?= 2
# torch guesses CUDA_HOME from the nvcc on PATH, which is a wrapper script here: name it.
CUDA_HOME   ?= $(if $(wildcard /usr/local/cuda/include/cuda_runtime.h),/usr/local/cuda,)
NATIVE_SRC  := $(shell find csrc -type f) setup.py pyproject.toml

export MAX_JOBS CUDA_HOME

.PHONY: demo test bench gpu-check install clean

$(VENV)/.deps-stamp:
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(TORCH_SPEC) $(DEPS)
	touch $@

$(VENV)/.build-stamp: $(VENV)/.deps-stamp $(NATIVE_SRC)
	$(VPY) -m pip install -q --no-build-isolation -e .
	touch $@

install: $(VENV)/.build-stamp
	$(VPY) -m eqkern info

demo: install
	$(VPY) -m eqkern demo --out runs/demo --overwrite

test: install
	$(VPY) -m pytest tests -q -rs --durations=10
	EQKERN_BENCH_SIZES=tiny-b4 $(VPY) -m pytest bench -q --benchmark-disable

# EQKERN_BENCH_SIZES=vgg5-b128,vgg7r-b128 make bench: a subset of bench/conftest.py's SIZES.
bench: install
	mkdir -p bench/results
	$(VPY) -m pytest bench -q --benchmark-json=bench/results/latest.json
	$(VPY) bench/report.py bench/results/latest.json --png bench/results/latest.png | tee bench/results/latest.md

# On a GPU machine: GPU tests, backend agreement on cuda, compute-sanitizer, benchmarks and the
# Triton register report in < 8 min (scripts/gpu_check.py); without a GPU it stops at once, exit 2.
# Refuses at once, before any install or build, where the driver sees no GPU.
gpu-check:
	@nvidia-smi -L >/dev/null 2>&1 || { echo "make gpu-check: no CUDA GPU visible (nvidia-smi lists none): this check needs one; on a CPU machine run make test" >&2; exit 2; }
	$(MAKE) install
	$(VPY) scripts/gpu_check.py --out bench/results/gpu-check

clean:
	rm -rf build *.egg-info eqkern/_C*.so eqkern/_build_info.json $(VENV)/.build-stamp
