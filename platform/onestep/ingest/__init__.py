"""Real talking-head video → training clips: streaming decode, scene cuts, a tracked face crop,
quality metrics and tiers (jobs/prepare_data.py --ingest). Modules in the order a video goes
through them: stream (decoding), faces (pass 1: where the face is), clips (pass 2: cutting),
quality (per-clip metrics and tier), job (Ray tasks over files, records, manifest)."""
