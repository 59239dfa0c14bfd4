# The README's two commands: `make run` (the main job) and `make test`. Each installs what it
# needs first (scripts/setup.sh is idempotent: a second run only checks), then builds in build/.
BUILD ?= build
JOBS ?= $(shell nproc)

.PHONY: run test build setup bench-docs python-package clean

# The default job: mHC (n = 4) on the Brown corpus, tiny preset; ends with the validation loss and a sample.
run: build
	$(BUILD)/mhc train --out runs/default --overwrite

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

build: setup
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

setup:
	bash scripts/setup.sh

# Regenerates docs/benchmarks.md from `mhc bench layer` on this machine.
bench-docs: build
	bash scripts/benchmarks.sh $(BUILD)/mhc > docs/benchmarks.md.tmp && mv docs/benchmarks.md.tmp docs/benchmarks.md

# Copies the built library into the Python package, so that `pip install ./python` carries it.
python-package: build
	cp $(BUILD)/libmhc.so $(BUILD)/libmhc.torch-version python/mhc/

clean:
	rm -rf $(BUILD)
