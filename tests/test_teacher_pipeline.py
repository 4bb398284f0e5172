"""The whole foundation as a user runs it, against a real S3 API server and a real local Ray:

prepare SynthTalk into S3 → Ray Data → 2-worker Ray Train + DeepSpeed ZeRO-3 teacher →
checkpoint in S3 → a re-run is refused without --resume → resume continues at the saved step →
generate an MP4 with audio from the S3 checkpoint → evaluate it.
"""

import json

import boto3
import numpy as np
import pytest
from PIL import Image

from onestep.checkpoint import checkpoint_names, latest_checkpoint
from onestep.media import decode_video, load_audio
from onestep.prepare import prepare_synthtalk
from onestep.storage import resolve
from onestep.train.engine import lr_lambda
from onestep.train.ray_job import RunExistsError, launch, run_location


def _state(uri: str) -> dict:
    return json.loads(resolve(uri).join("state.json").read_bytes())


def test_teacher_chain_on_s3(ray_cluster, bucket, tiny_config, tmp_path, caplog):
    overrides = {"data.uri": f"s3://{bucket}/synthtalk", "run.root": f"s3://{bucket}/runs",
                 "run.name": "teacher"}
    cfg = tiny_config(**overrides)
    manifest = prepare_synthtalk(cfg.synth, resolve(cfg.data.uri))
    assert manifest["num_clips"] == 16 and len(manifest["shards"]) == 2

    result = launch(cfg)
    assert result.error is None
    assert result.metrics["step"] == 2 and result.metrics["clips_seen"] == 8
    # ZeRO-3 really shards: each of the 2 ranks holds about half of every parameter.
    assert 0.49 < result.metrics["params_local_fraction"] < 0.56
    assert np.isfinite(result.metrics["loss"]) and result.metrics["grad_norm"] > 0
    run = run_location(cfg)
    first = latest_checkpoint(run.uri)
    assert _state(first)["step"] == 2
    files = resolve(first).listdir()
    assert {"config.yaml", "model.safetensors", "engines", "ema"} <= set(files)
    assert resolve(first).join("ema").listdir() == ["generator-rank0.safetensors",
                                                    "generator-rank1.safetensors"]

    # TensorBoard events are in the run's storage, not on whichever node held rank 0.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = resolve(run.uri).join("tensorboard").listdir()
    (tmp_path / events).write_bytes(resolve(run.uri).join("tensorboard", events).read_bytes())
    scalars = EventAccumulator(str(tmp_path / events)).Reload().Tags()["scalars"]
    assert {"teacher/loss", "teacher/lr", "teacher/samples_per_s"} <= set(scalars)

    with pytest.raises(RunExistsError, match="--resume"):
        launch(cfg)
    with pytest.raises(RunExistsError, match="no checkpoint to resume from"):
        launch(tiny_config(**{**overrides, "run.name": "never-ran"}), resume=True)

    # Resumed with a longer schedule and a new peak rate: the config wins over the checkpoint's.
    longer = tiny_config(**overrides, **{"train.total_clips": 16, "train.lr": 2 * cfg.train.lr})
    result = launch(longer, resume=True)
    assert result.error is None and result.metrics["step"] == 4
    assert result.metrics["lr"] == pytest.approx(longer.train.lr * lr_lambda(longer)(4))
    state = _state(latest_checkpoint(run.uri))
    assert state["resumed_at_steps"] == [2] and state["clips_seen"] == 16
    assert len(checkpoint_names(run)) == 3  # num_to_keep

    # The newest checkpoint damaged in storage, and a folder cut short when a driver was killed
    # (never registered): the resume passes over both, continues the previous, removes the cut.
    s3 = boto3.client("s3")
    newest = checkpoint_names(run)[-1]
    shard = f"runs/teacher/{newest}/ema/generator-rank1.safetensors"
    data = bytearray(s3.get_object(Bucket=bucket, Key=shard)["Body"].read())
    data[-3] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=shard, Body=bytes(data))
    cut = "checkpoint_2099-01-01_00-00-00.000000"
    for key in [o["Key"] for o in s3.list_objects_v2(
            Bucket=bucket, Prefix=f"runs/teacher/{newest}/")["Contents"]]:
        if not key.endswith("checksums-rank1.json"):
            s3.copy_object(Bucket=bucket, Key=key.replace(newest, cut),
                           CopySource={"Bucket": bucket, "Key": key})
    result = launch(tiny_config(**overrides, **{"train.total_clips": 20}), resume=True)
    assert result.error is None and result.metrics["step"] == 5
    assert _state(latest_checkpoint(run.uri))["resumed_at_steps"] == [2, 3]
    assert cut not in checkpoint_names(run)
    log = caplog.text
    assert f"not resuming from {cut}: {run.uri}/{cut}/checksums-rank1.json: missing" in log
    assert f"not resuming from {newest}: {run.uri}/{shard[len('runs/teacher/'):]}" in log

    import generate
    import make_sample

    make_sample.main(["--out-dir", str(tmp_path), "--set", "synth.clip_seconds=1.2"])
    out = tmp_path / "out.mp4"
    generate.main(["--checkpoint", run.uri, "--image", str(tmp_path / "face.png"),
                   "--audio", str(tmp_path / "speech.wav"), "--steps", "2", "--out", str(out)])
    frames, fps = decode_video(out.read_bytes())
    assert frames.shape == (30, 32, 32, 3) and fps == 25  # 1.2 s of audio at 25 fps
    assert abs(len(load_audio(out.read_bytes())) / 16000 - 1.2) < 0.06

    import evaluate

    report = tmp_path / "eval"
    evaluate.main(["--checkpoint", f"tiny={run.uri}", "--data", cfg.data.uri, "--clips", "2",
                   "--reader", str(tmp_path / "reader.safetensors"), "--reader-clips", "24",
                   "--out", str(report)])
    results = json.loads(report.with_suffix(".json").read_text())["results"]["tiny"]
    assert results["clips"] == 2 and results["nfe_per_chunk"] == 2 * 2  # 2 steps × audio CFG
    assert results["sync_ground_truth"] > 0.8  # the evaluation itself can see lip-sync
    assert "| tiny |" in report.with_suffix(".md").read_text()
    sheet = Image.open(report.with_suffix(".png"))  # ground truth and the model, one row each
    assert sheet.height == 2 * 32 * 3 and sheet.width > 12 * 32 * 3
