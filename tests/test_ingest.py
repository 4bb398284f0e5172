"""A user's own talking-head footage → face-tracked clips: rendered here from a real face
photograph (scikit-image's astronaut) moved and scaled across larger frames, with scene cuts, a
two-face scene, an empty scene, a face too small, a blurred (low-quality) face, variable frame
rate and an audio offset; plus files that cannot be used. Ingested from the S3 server as a user
runs it (jobs/prepare_data.py --ingest s3://…)."""

import json
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
from pyarrow.fs import FileSelector, FileType
import pytest

from onestep.media import decode_video, encode_mp4
from onestep.synth.footage import Face, Scene, render_footage

SCENES = [Scene(5.5, [Face((0.3, 0.5, 0.5), (0.65, 0.45, 0.6))]),  # gliding and growing: high
          Scene(3.5, [Face((0.5, 0.5, 0.5), blur=6.0)]),  # soft: low tier
          Scene(2.0, [Face((0.28, 0.5, 0.35)), Face((0.72, 0.5, 0.35))]),  # two speakers
          Scene(1.5, []),  # nobody
          Scene(3.0, [Face((0.5, 0.5, 0.07))])]  # a face too small to train on
TIERS = ["ingest.sharpness_tiers=[100, 40]", "ingest.face_px_tiers=[150, 60]",
         "ingest.snr_db_tiers=[15, 5]", "synth.resolution=64", "ingest.test_fraction=0"]


def _sets(*extra: str) -> list[str]:
    return [a for kv in (*TIERS, *extra) for a in ("--set", kv)]


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    folder = tmp_path_factory.mktemp("footage")
    truth = render_footage(folder / "talk.mp4", SCENES, vfr=True, audio_offset=0.2)
    # Files that cannot be used: each is named in the log and the manifest, the rest goes on.
    data = (folder / "talk.mp4").read_bytes()
    (folder / "cut-off.mp4").write_bytes(data[:len(data) // 3])  # truncated (index at the end)
    (folder / "empty.mov").write_bytes(b"")
    (folder / "notes.webm").write_bytes(b"not a video at all")
    render_footage(folder / "silent.mkv", SCENES[:1], audio=False)
    return folder, truth


def _upload(folder, bucket: str, endpoint: str, prefix: str) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for f in folder.iterdir():
        s3.upload_file(str(f), bucket, f"{prefix}/{f.name}")


def test_ingest_follows_the_face_counts_every_drop_and_tiers_clips(ray_cluster, footage, bucket,
                                                                  s3_endpoint, caplog):
    import prepare_data

    from onestep.data import readable_shards
    from onestep.config import load_config
    from onestep.shards import read_manifest
    from onestep.storage import resolve

    folder, truth = footage
    _upload(folder, bucket, s3_endpoint, "raw")
    out = f"s3://{bucket}/clips"
    # Parts of 8 s: talk.mp4 (15.5 s) is two tasks, the other files one each.
    args = ["--out", out, "--ingest", f"s3://{bucket}/raw", *_sets("ingest.part_seconds=8")]
    prepare_data.main(args)
    manifest = read_manifest(resolve(out))
    assert manifest["source"] == {"kind": "videos", "input": f"s3://{bucket}/raw", "videos": 5}
    # Scene 1 (5.5 s) gives two clips of 2.4 s, the soft face one: tiers as constructed.
    assert manifest["num_clips"] == 3 and manifest["tiers"] == {"high": 2, "low": 1}
    dropped = manifest["dropped_seconds"]
    for reason, seconds in (("several_faces", 2.0), ("no_face", 1.5), ("small_face", 3.0)):
        assert seconds - 1.0 <= dropped[reason] <= seconds + 0.1, (reason, dropped)
    assert dropped["scene_cut"] == pytest.approx(4 * 0.5, abs=0.1)  # the moment before each cut
    skipped = dict(line.split(": ", 1) for line in manifest["skipped_files"])
    assert skipped.keys() == {"cut-off.mp4", "empty.mov", "notes.webm", "silent.mkv"}
    assert skipped.pop("silent.mkv") == "no audio track"
    assert all(why.startswith("not a decodable video") for why in skipped.values()), skipped
    assert "dropped: " in caplog.text and "skipped silent.mkv: no audio track" in caplog.text

    loc = resolve(out)
    rows = [row for shard in manifest["shards"] for row in pq.read_table(
        loc.fs.open_input_file(loc.join(shard["name"]).path)).to_pylist()]
    assert [r["tier"] for r in rows] == ["high", "high", "low"]
    for row in rows:
        start = json.loads(row["source"])["start"]
        for j in range(0, 60, 6):  # the crop follows the face: its centre stays on the face
            (x, y, side), = truth.faces_at(start + j / 25)
            cx, cy = row["crop_x"][j] * truth.width, row["crop_y"][j] * truth.height
            crop = row["crop_size"][j] * truth.height
            assert abs(cx - x) < 0.25 * side and abs(cy - y) < max(0.25 * side, crop / 2 - side)
            assert crop >= side  # the whole face is in it
        frames, fps = decode_video(row["mp4"])
        assert frames.shape == (60, 64, 64, 3) and fps == 25  # 25 fps from a variable rate
        assert len(row["audio_pcm16"]) == 2 * 16000 * 2.4
        assert row["face_px"] > 150 and row["snr_db"] > 15
    assert rows[2]["sharpness"] < 40 < 100 < min(rows[0]["sharpness"], rows[1]["sharpness"])

    # Training reads a selection of tiers, pushed into the Parquet read.
    cfg = load_config("tiny", ["data.tiers=[high]", f"data.uri={out}"])
    assert sum(readable_shards(loc, manifest, "skip", cfg.data).values()) == 2
    cfg = load_config("tiny", ["data.tiers=[low, moderate]", f"data.uri={out}"])
    assert sum(readable_shards(loc, manifest, "skip", cfg.data).values()) == 1

    # Again, as if stopped while talk.mp4's second part ran: every other video has its record
    # and is not redone, nor is talk.mp4's first part; the manifest is the same.
    records = loc.join("videos")
    key = next(i.path for i in loc.fs.get_file_info(FileSelector(records.path))
               if i.type == FileType.Directory)
    loc.fs.delete_file(f"{key}.json")
    loc.fs.delete_file(f"{key}/part-002-of-002-every-8s.json")
    caplog.clear()
    prepare_data.main(args)
    assert "(4 done before; 1 of 2 parts of the others)" in caplog.text
    again = read_manifest(resolve(out))
    assert {k: v for k, v in again.items() if k != "created"} == {
        k: v for k, v in manifest.items() if k != "created"}


def test_a_part_read_from_its_start_is_what_reading_through_gives(footage):
    """A part late in a video seeks to its start: its frames and sound are those a read from
    the beginning gives at the same times (variable frame rate, audio starting 0.2 s late)."""
    from onestep.ingest.stream import AudioReader, frames, probe

    folder, _ = footage
    path = folder / "talk.mp4"
    info = probe(path)
    through = [(t, f) for t, f in frames(path, info.start, 64, 36, step=0.5) if 8 <= t < 11]
    seeked = list(frames(path, info.start, 64, 36, step=0.5, since=8, until=11))
    assert [t for t, _ in seeked] == [t for t, _ in through] and len(seeked) == 6
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(seeked, through))
    whole = AudioReader(path, 16000, info.start, info.audio_start)
    whole.read(0, 8.3)
    part = AudioReader(path, 16000, info.start, info.audio_start, since=8.3)
    a, b = whole.read(8.3, 10.7), part.read(8.3, 10.7)
    # The same samples up to the resampler's phase (AAC frames fall between 16 kHz samples):
    # a fraction of a sample, where one sample off would be many times the difference.
    off = {shift: np.abs(np.roll(b, shift) - a)[16:-16].mean() for shift in (-1, 0, 1)}
    assert np.abs(a).mean() > 0.02 and off[0] < 0.1 * min(off[-1], off[1], np.abs(a).mean())
    whole.close()
    part.close()


def test_nothing_usable_is_one_line_naming_each_file(ray_cluster, tmp_path):
    import prepare_data

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.mp4").write_bytes(b"\x00" * 100)
    n = 30  # a second of video without any face
    frames = np.full((n, 64, 96, 3), 90, np.uint8)
    (tmp_path / "in" / "wall.mp4").write_bytes(encode_mp4(frames, 30, np.zeros(16000, np.float32)))
    with pytest.raises(SystemExit, match=r"no usable clip in 2 video file\(s\): broken.mp4: not a "
                                         r"decodable video .*; wall.mp4: dropped no_face 1.0 s"):
        prepare_data.main(["--out", str(tmp_path / "out"), "--ingest", str(tmp_path / "in")])
    with pytest.raises(SystemExit, match=r"no video files \(.mp4, .mov, .mkv, .webm\) to ingest"):
        prepare_data.main(["--out", str(tmp_path / "out"), "--ingest", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="nowhere: no such folder or prefix"):
        prepare_data.main(["--out", str(tmp_path / "out"), "--ingest", str(tmp_path / "nowhere")])


def test_a_lip_sync_expert_scores_every_clip_and_drops_those_out_of_sync(tmp_path):
    """With sync.weights, each clip carries the expert's confidence and offset, and a clip whose
    sound is further off than ingest.max_sync_offset is dropped (out_of_sync). The shipped expert
    knows SynthTalk's mouths, not this photograph's: what is checked is that the filter drops
    exactly the clips whose offset exceeds the bound."""
    from onestep.config import load_config
    from onestep.ingest.job import ingest_video
    from onestep.storage import resolve
    from test_sync import SHIPPED

    render_footage(tmp_path / "talk.mp4", [Scene(7.5, [Face((0.4, 0.5, 0.5), (0.6, 0.5, 0.55))])])
    records, tables = [], []
    for bound in (15, 0):
        out = resolve(str(tmp_path / f"out-{bound}"))
        cfg = load_config("tiny", ["synth.resolution=64", f"sync.weights={SHIPPED}",
                                   f"ingest.max_sync_offset={bound}"])
        records.append(ingest_video(resolve(str(tmp_path / "talk.mp4")), "talk.mp4", out, cfg))
        tables += [pq.read_table(tmp_path / f"out-{bound}" / shard["name"])
                   for shard in records[-1]["shards"]]
    rows = tables[0].to_pylist()
    assert len(rows) == 3 and "out_of_sync" not in records[0]["dropped"]
    assert all(np.isfinite(r["sync_confidence"]) and abs(r["sync_offset"]) <= 15 for r in rows)
    late = sum(r["sync_offset"] != 0 for r in rows)
    assert records[1]["clips"] == 3 - late
    assert records[1]["dropped"].get("out_of_sync", 0) == pytest.approx(2.4 * late)


def test_evaluate_on_ingested_footage_scores_lip_sync_with_the_expert(footage, tmp_path):
    """Footage has no mouth labels: jobs/evaluate.py scores lip-sync with the expert (LSE-C/D,
    offset; own and another clip's audio), the Fréchet distance in the expert's embedding space,
    and the image metrics against the clip itself; without an expert it says what it needs."""
    import evaluate as evaluate_job

    from onestep.checkpoint import load_export
    from onestep.config import load_config
    from onestep.evaluation.validation import Validator
    from onestep.ingest.job import ingest_video
    from onestep.shards import write_manifest
    from onestep.storage import resolve
    from test_fid import random_inception
    from test_fvd import random_i3d
    from test_identity import onnx_model
    from test_sync import SHIPPED

    folder, _ = footage
    out = resolve(str(tmp_path / "clips"))
    cfg = load_config("tiny", ["ingest.test_fraction=1"])  # the shipped teacher's 32×32
    record = ingest_video(resolve(str(folder / "talk.mp4")), "talk.mp4", out, cfg)
    write_manifest(out, record["shards"],
                   {"kind": "videos", "input": str(folder), "videos": 1})
    teacher = Path(__file__).resolve().parents[1] / "reports" / "pretrained" / "teacher"
    args = ["--checkpoint", f"teacher={teacher}", "--data", out.uri, "--clips", "2",
            "--steps", "2", "--out", str(tmp_path / "eval")]
    with pytest.raises(SystemExit, match="ingested footage has no mouth labels; give a lip-sync "
                                         "expert with --sync"):
        evaluate_job.main(args)
    _, inception = random_inception(tmp_path)  # FID's architecture, random weights
    arcface = onnx_model(tmp_path / "arcface.onnx")  # ArcFace's interface, random weights
    _, i3d = random_i3d(tmp_path)  # FVD's architecture, random weights
    evaluate_job.main(args + ["--sync", str(SHIPPED), "--fid", str(inception), "--fid-stride", "6",
                              "--arcface", str(arcface), "--fvd", str(i3d)])
    report = json.loads((tmp_path / "eval.json").read_text())["results"]["teacher"]
    assert report["clips"] == 2 and "sync" not in report  # no labels, no mouth reader
    for key in ("lse_c", "lse_d", "lse_offset", "lse_c_ground_truth", "lse_c_shuffled_audio",
                "frechet", "fid", "fvd", "identity_arcface", "psnr", "ssim"):
        assert np.isfinite(report[key]), key
    assert report["frechet_features"] == "lip-sync expert video embeddings"
    table = (tmp_path / "eval.md").read_text()
    assert "held-out footage" in table and "| LSE-C ↑ |" in table and "lip-sync corr" not in table
    assert "| ArcFace identity ↑ | identity proxy ↑ |" in table
    assert "| FID ↓ | FVD ↓ |" in table and f"FVD: Kinetics-400 I3D (pytorch-i3d's port) " \
        f"from {i3d}" in table and f"FID: FID's Inception (pt_inception-2015-12-05) from " \
        f"{inception}" in table
    assert (tmp_path / "eval.png").exists()

    # Validation during training scores footage with the same expert (no labels, no reader),
    # and its collapse checks measure against the clips (no teacher given).
    weights, teacher_cfg = load_export(str(teacher))
    validate = Validator(load_config("tiny", [f"data.uri={out.uri}", f"sync.weights={SHIPPED}",
                                              "validation.clips=2", "validation.steps=2"]))
    val = validate(weights, teacher_cfg)
    assert val["val_sync"] == pytest.approx(val["val_lse_c"] / report["lse_c_ground_truth"])
    for key in ("val_score", "val_frechet", "val_motion_ratio", "val_std_ratio",
                "val_clipped_excess", "val_color_distance", "val_sync_ratio"):
        assert np.isfinite(val[key]), key
