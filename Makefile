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

# SynthTalk → on local Ray with DeepSpeed ZeRO-3 (2 workers): tiny teacher → DMD 4-step →
# adversarial 3→2→1-step → one-step sample MP4 → evaluation of the three.
# Re-running continues the same runs (idempotent): data shards are kept, training resumes.
demo: $(STAMP)
	$(PY) jobs/prepare_data.py --config tiny --out data/synthtalk
	$(PY) jobs/distill.py --stage teacher --config tiny --resume
	$(PY) jobs/distill.py --stage dmd --config tiny --teacher runs/teacher-tiny --resume
	$(PY) jobs/distill.py --stage adversarial --config tiny --resume \
		--student runs/dmd-tiny/exports/4step --set adversarial.clips_per_phase=64 \
		--set adversarial.disc_warmup_steps=1
	$(PY) jobs/make_sample.py --out-dir demo
	$(PY) jobs/generate.py --checkpoint runs/adversarial-tiny/exports/1step \
		--image demo/face.png --audio demo/speech.wav --out demo/sample.mp4
	$(PY) jobs/evaluate.py --checkpoint teacher=runs/teacher-tiny \
		--checkpoint 4-step=runs/dmd-tiny/exports/4step \
		--checkpoint 1-step=runs/adversarial-tiny/exports/1step \
		--data data/synthtalk --clips 4 --out demo/eval

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf data/synthtalk runs demo
