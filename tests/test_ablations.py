"""benchmarks/ablations.py's bookkeeping: equal budgets, rows that accumulate across calls, and
a refusal to mix rows of different setups (the table fills up over several sessions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ablations  # noqa: E402
from _ledger import without_choices  # noqa: E402

METRICS = {"sync": 0.6, "abs_offset_frames": 0.1, "frechet": 0.3, "psnr": 21.0, "ssim": 0.7,
           "identity": 0.97, "flicker": 11.0, "nfe_per_chunk": 1, "compute_s_per_video_s": 0.08}
SETUP = {"student_sha256": "aa", "teacher_sha256": "bb", "reader_sha256": "cc", "data": {},
         "eval_clips": 16, "phase_clips": [640, 640, 1280], "settings": []}


def test_every_row_trains_the_same_clips():
    for key, _, _, overrides in ablations.ROWS:
        sets = dict(s.split("=", 1) for s in ablations.variant_sets(overrides, [640, 640, 1280]))
        phases = json.loads(sets.get("adversarial.phases", "[3, 2, 1]"))
        per, last = int(sets["adversarial.clips_per_phase"]), int(
            sets["adversarial.last_phase_clips"])
        clips = [per] * (len(phases) - 1) + [last or per]
        assert sum(clips) == 2560, key


def test_rows_accumulate_and_the_markdown_lists_what_is_missing(tmp_path):
    path = tmp_path / "ablations.json"
    first = ablations.Ledger(path, SETUP, "python benchmarks/ablations.py a")
    first.record("rows", "tt-direct", {"name": "base: direct 4→1", "train": "python train-1",
                                       "evaluate": "python eval-1", "metrics": METRICS})
    # A later call (another session) sees the row and adds one; nothing is lost.
    second = ablations.Ledger(path, SETUP, "python benchmarks/ablations.py b")
    assert second.has("rows", "tt-direct") and not second.has("rows", "tt-prog")
    second.record("rows", "tt-prog", {"name": "+ step reduction (4→3→2→1)",
                                      "train": "python train-2", "evaluate": "python eval-2",
                                      "metrics": {**METRICS, "sync": 0.7, "frechet": 0.25}})
    data = json.loads(path.read_text())
    assert list(data["rows"]) == ["tt-direct", "tt-prog"]
    md = path.with_suffix(".md").read_text()
    assert "| base: direct 4→1 | 0.600 |" in md and "| + step reduction (4→3→2→1) | 0.700 |" in md
    assert "Not run yet: + dynamic timesteps; + self-compare" in md
    assert ("| progressive beats direct, TurboTalk's recipe without its extras | +0.100 | "
            "-0.050 | yes |") in md
    assert "python train-1" in md and "python eval-2" in md
    assert "](ablations.png)" in md and path.with_suffix(".png").stat().st_size > 0


@pytest.mark.parametrize("field", ["student_sha256", "reader_sha256", "phase_clips"])
def test_rows_of_another_setup_are_refused(tmp_path, field):
    path = tmp_path / "ablations.json"
    ablations.Ledger(path, SETUP, "a").record(
        "rows", "tt-direct", {"name": "base", "train": "t", "evaluate": "e", "metrics": METRICS})
    with pytest.raises(SystemExit, match=f"differs in: {field}"):
        ablations.Ledger(path, {**SETUP, field: "other"}, "b")
    assert json.loads(path.read_text())["rows"]["tt-direct"]["metrics"] == METRICS


def test_rows_rerun_at_other_seeds_show_whether_a_difference_outlasts_reseeding(tmp_path):
    path = tmp_path / "ablations.json"
    ledger = ablations.Ledger(path, SETUP, "a")
    # Progressive ahead of direct on both targets at seed 0, behind on lip-sync at seed 1.
    runs = [(0, "onestep", 0.70, 0.30), (0, "onestep-direct", 0.60, 0.40),
            (1, "onestep", 0.60, 0.30), (1, "onestep-direct", 0.65, 0.35),
            (0, "tt-full", 0.4, 0.5), (0, "tt-full-direct", 0.3, 0.5), (1, "tt-full", 0.4, 0.5)]
    for seed, key, sync, frechet in runs:
        ledger.record("rows", ablations.row_key(key, seed),
                      {"name": key, "train": f"python train-{key}-{seed}", "evaluate": "e",
                       "metrics": {**METRICS, "sync": sync, "frechet": frechet}})
    assert list(json.loads(path.read_text())["rows"])[:4] == [
        "onestep", "onestep-direct", "onestep@seed1", "onestep-direct@seed1"]
    assert ablations.split_key("onestep-direct@seed1") == ("onestep-direct", 1)
    md = path.with_suffix(".md").read_text()
    what = "progressive beats direct, onestep's defaults"
    # The table's row is seed 0's; the seeds section shows both seeds and their spread.
    assert "| progressive 4→3→2→1 (the defaults) | 0.700 |" in md
    assert "| progressive 4→3→2→1 (the defaults) | 0.600 |" not in md
    assert f"| {what} | +0.100 | -0.100 | yes |" in md
    assert f"| {what} | 0 | +0.100 | -0.100 | yes |" in md
    assert f"| {what} | 1 | -0.050 | -0.050 | no |" in md
    assert f"| {what} | mean ± std of 2 | +0.025 ± 0.106 | -0.075 ± 0.035 | 1 of 2 |" in md
    # A comparison with both of its rows at one seed only has no spread to show.
    assert "| progressive beats direct, TurboTalk's full recipe | +0.100 |" in md
    assert "TurboTalk's full recipe | 0 |" not in md and "TurboTalk's full recipe | 1 |" not in md


def test_the_recorded_command_fills_every_row_of_the_table():
    argv = ["--student", "s", "--only", "onestep", "--seed", "2", "--only=tt-gan", "--seed=3",
            "--out", "o"]
    assert without_choices(argv, ("--only", "--seed")) == ["--student", "s", "--out", "o"]


def test_the_fada_report_fills_in_rows_and_guidance_curves(tmp_path):
    import fada

    path = tmp_path / "fada.json"
    ledger = fada.Ledger(path, {"clips": 640, "eval_clips": 16, "settings": []}, "python f")
    ledger.record("references", "teacher", {"name": "teacher (multi-CFG)", "evaluate": "e0",
                                            "metrics": METRICS})
    ledger.record("rows", "cfg-tokens", {"name": fada.ROWS["cfg-tokens"][1], "train": "t1",
                                         "evaluate": "e1", "metrics": METRICS})
    ledger.data["curves"] = {}
    for model, audio, sync in (("teacher", 1.0, 0.5), ("teacher", 6.5, 0.7),
                               ("cfg-tokens", 1.0, 0.55)):
        ledger.record("curves", fada.curve_key(model, audio, 1.0, "audio"),
                      {"model": model, "varied": "audio", "audio": audio, "ref": 1.0,
                       "evaluate": "e", "metrics": {**METRICS, "sync": sync}})
    md = path.with_suffix(".md").read_text()
    assert "| + guidance layer with tokens (FADA-Fast) | 0.600 |" in md
    assert "Not run yet: PeRFlow, high tier only; + moderate and low clips" in md
    assert "| FADA-Fast | 1 | 1 | 0.550 |" in md and "| teacher | 6.5 | 1 | 0.700 |" in md
    assert (tmp_path / "fada-scales.png").stat().st_size > 10_000


def test_osa_lcm_report_shows_the_seams_of_every_model_and_what_is_missing(tmp_path):
    import osa_lcm

    setup = {**SETUP, "long_seconds": 20.0, "long_clips": 2, "clips": 640}
    seams = {**METRICS, "boundary_jump": 1.8, "motion_jump": 2.4}
    ledger = osa_lcm.Ledger(tmp_path / "osa_lcm.json", setup, "python benchmarks/osa_lcm.py a")
    ledger.record("references", "teacher", {"name": "teacher (multi-CFG)", "evaluate": "e-t",
                                            "metrics": {**seams, "boundary_jump": 1.1}})
    ledger.record("rows", "eft", {"name": osa_lcm.ROWS["eft"][1], "train": "python train-eft",
                                  "evaluate": "e-eft", "metrics": seams})
    md = (tmp_path / "osa_lcm.md").read_text()
    assert "seams on 2 generations of 20 s" in md
    assert "| seam: appearance ↓ | seam: motion ↓ |" in md
    assert "| teacher (multi-CFG) | 0.600 |" in md and "| 1.10 | 2.40 |" in md
    assert "| + EFT, sampled from Gaussian (OSA-LCM) | 0.600 |" in md and "| 1.80 | 2.40 |" in md
    assert "Not run yet: LCM (consistency loss only); + avatar discriminator" in md
    assert "python train-eft" in md and "e-eft" in md
    # The rows reports/distill.md takes are rows of their benchmarks.
    import fada

    assert set(osa_lcm.DISTILL_ROWS) <= set(osa_lcm.ROWS)
    assert set(fada.DISTILL_ROWS) <= set(fada.ROWS)
