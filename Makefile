# The two commands of the README. Both create .venv and install onestep on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PYTHONUNBUFFERED := 1

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	DS_BUILD_OPS=0 $(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

# SynthTalk → tiny teacher on local Ray with DeepSpeed ZeRO-3 (2 workers) → sample MP4 → evaluation.
# Re-running continues the same run (idempotent): data shards are kept, training resumes.
demo: $(STAMP)
	$(PY) jobs/prepare_data.py --config tiny --out data/synthtalk
	$(PY) jobs/distill.py --stage teacher --config tiny --resume
	$(PY) jobs/make_sample.py --out-dir demo
	$(PY) jobs/generate.py --checkpoint runs/teacher-tiny --image demo/face.png \
		--audio demo/speech.wav --out demo/sample.mp4
	$(PY) jobs/evaluate.py --checkpoint teacher-tiny=runs/teacher-tiny --data data/synthtalk \
		--clips 4 --out demo/eval

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf data/synthtalk runs demo
