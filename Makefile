# The README's two commands: `make run` (the main job) and `make test`. Each installs what it
# needs first (scripts/setup.sh is idempotent: a second run only checks), then builds in build/:
# `run` only the tool, `test` everything.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
PYTHON ?= .venv/bin/python

.PHONY: run test build configure setup bench-docs python-package cuda-wheel clean

# The default job: mHC (n = 4) on the Brown corpus, tiny preset; ends with the validation loss and a sample.
run: configure
	cmake --build $(BUILD) -j $(JOBS) --target mhc_launcher
	$(BUILD)/mhc train --out runs/default --overwrite

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# Against the project environment's torch (.venv, made by setup; CMAKE_FLAGS=-DMHC_PYTHON=… picks another).
configure: setup
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

setup:
	bash scripts/setup.sh

# Regenerates docs/benchmarks.md from `mhc bench layer` on this machine.
bench-docs: build
	bash scripts/benchmarks.sh $(BUILD)/mhc > docs/benchmarks.md.tmp && mv docs/benchmarks.md.tmp docs/benchmarks.md

# A wheel of the Python package (torch-mhc) in dist/, its libmhc built by pip against the project
# environment's torch (PYTHON=… picks another environment's); it installs into environments of the
# same Python and torch major.minor.
python-package: setup
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(PYTHON) -m pip wheel --no-build-isolation --no-deps -w dist ./python

# libmhc with the CUDA ops against the torch 2.14.1 CUDA wheel, compiled, linked and loaded here.
cuda-wheel: setup
	bash scripts/cuda_wheel_build.sh

clean:
	rm -rf $(BUILD)
