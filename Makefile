# make demo: create .venv if missing, install, run the demo pipeline on the embedded default.
# make test: same install with test extras, then every test tier.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sllm-installed
SLLM   := $(VENV)/bin/sllm

.PHONY: demo test install clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# torch first, pinned: the pin takes the local CPU wheel here (a looser one pulls CUDA packages)
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(SLLM) submit jobs/demo_sllm_tiny.yaml

# the SLURM tests start a real single-node cluster; its Debian packages are installed here when missing
test: $(STAMP)
	bash scripts/slurm_local.sh install
	bash scripts/browser_deps.sh
	bash scripts/compiler_deps.sh
	bash scripts/tracking_stack.sh install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests -q --durations=40

clean:
	rm -rf runs .pytest_cache
