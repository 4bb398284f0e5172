# The two commands of the README. Both create .venv and install onestep on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PYTHONUNBUFFERED := 1

# The shipped tiny teacher and the mouth reader its evaluation was scored with (reports/pretrained).
TEACHER := reports/pretrained/teacher
READER := reports/pretrained/mouth_reader.safetensors

.PHONY: demo teacher test install browser lock clean

install: $(STAMP)

# Exact versions from constraints.txt: a new release of DeepSpeed, Ray or PyAV lands only when
# `make lock` takes it and the tests pass with it.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip -c constraints.txt
	DS_BUILD_OPS=0 $(PY) -m pip install -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The shipped teacher → on local Ray with DeepSpeed ZeRO-3 (2 workers): DMD 4-step →
# adversarial 3→2→1-step → a one-step sample MP4 → teacher vs 4-step vs 1-step evaluation and
# contact sheet (demo/eval.md, demo/eval.png). Settings: the `demo` preset.
# Re-running continues the same runs (idempotent): data shards are kept, finished runs skipped.
demo: $(STAMP)
	$(PY) jobs/prepare_data.py --config demo --out data/synthtalk
	$(PY) jobs/distill.py --stage dmd --config demo --teacher $(TEACHER) --resume auto
	$(PY) jobs/distill.py --stage adversarial --config demo --resume auto \
		--student runs/dmd-demo/exports/4step
	$(PY) jobs/make_sample.py --out-dir demo
	$(PY) jobs/generate.py --checkpoint runs/adversarial-demo/exports/1step \
		--image demo/face.png --audio demo/speech.wav --out demo/sample.mp4
	$(PY) jobs/evaluate.py --checkpoint teacher=$(TEACHER) \
		--checkpoint 4-step=runs/dmd-demo/exports/4step \
		--checkpoint 1-step=runs/adversarial-demo/exports/1step \
		--data data/synthtalk --clips 8 --reader $(READER) --out demo/eval
	@echo "demo: evaluation in demo/eval.md, contact sheet demo/eval.png, sample demo/sample.mp4"
	@echo "serve the one-step generator: $(VENV)/bin/serve run serve/config.yaml"

# A tiny teacher of your own, from scratch (tiny preset: a few minutes; the shipped one trained
# for 12k clips, see reports/pretrained/README.md). Distil it with `--teacher runs/teacher-tiny`.
teacher: $(STAMP)
	$(PY) jobs/prepare_data.py --config tiny --out data/synthtalk
	$(PY) jobs/distill.py --stage teacher --config tiny --resume auto

test: $(STAMP) browser
	$(PY) -m pytest -q --durations=20 tests

# The docs-page test drives Debian's Chromium (no browser download); installed here if missing.
browser:
	@command -v chromium >/dev/null || { echo "installing Debian's chromium for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium; }

# Re-resolve every dependency at its newest allowed version into constraints.txt (then run
# `make test` before committing it).
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	DS_BUILD_OPS=0 .lock-venv/bin/pip install -q -e '.[dev]'
	{ sed -n '/^#/p' constraints.txt; .lock-venv/bin/pip freeze --all --exclude-editable; } \
		> constraints.txt.tmp && mv constraints.txt.tmp constraints.txt
	rm -rf .lock-venv

# Data, runs and demo outputs; the shipped models in reports/pretrained stay.
clean:
	rm -rf data/synthtalk runs demo
