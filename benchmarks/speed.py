"""Generation speed: the teacher with CFG against distilled students, on the same inputs.

    python benchmarks/speed.py --model teacher=RUN_OR_CKPT@40 --model dmd-4=CKPT \\
        --model 1-step=CKPT --seconds 9.6 --out reports/speed
    python benchmarks/speed.py --untrained small --model teacher=@40 --model 4-step=@4 \\
        --model 1-step=@1 --out reports/speed-small
    python jobs/make_tiny_wan.py --out models/wan-vae-size --vae full
    python benchmarks/speed.py --untrained tiny --set codec.kind=wan_vae \\
        --set codec.pretrained=models/wan-vae-size --set codec.factor=8 --set data.frames=9 \\
        --set data.motion_frames=1 --model teacher=@40 --model 1-step=@1 --out reports/speed-wan-vae

Each --model is NAME=CHECKPOINT[@STEPS]; steps default to the checkpoint's own config (a
student: its step count, no CFG). The model named by --teacher-cfg (default "teacher") samples
with audio and reference CFG 2, three evaluations per step: TurboTalk's 40 steps × 3 = 120 NFE
baseline. With --untrained CONFIG the networks are freshly initialised at that preset's size
(speed does not depend on the weights), e.g. to compare at a GPU resolution; `--set` changes that
preset (e.g. the Wan VAE as the codec).

Every model generates the same portrait + audio (a held-out SynthTalk clip, looped to
--seconds) chunk by chunk with motion frames; the first run of each model is a warm-up. End to
end is the whole AvatarGenerator.generate (audio features, every chunk's sampling, decoding to
frames); decoding latents to frames is also reported on its own (with a VAE it is the floor of
one-step latency), and so is MP4 encoding, the same for every model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _report import header, save

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
from make_sample import held_out_clip  # noqa: E402

from onestep.checkpoint import load_generator, resolve_checkpoint  # noqa: E402
from onestep.config import load_config  # noqa: E402
from onestep.generate import AvatarGenerator, Sampling  # noqa: E402
from onestep.media import encode_mp4  # noqa: E402
from onestep.model import build_model  # noqa: E402


def _model(spec: str, untrained: str | None, teacher: bool, overrides: list[str]):
    """NAME=CKPT[@STEPS] → (name, network, config to sample with)."""
    name, _, rest = spec.partition("=")
    uri, _, steps = rest.partition("@")
    if untrained:
        cfg = load_config(untrained, overrides).validate()
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        if not teacher:  # a student samples without CFG
            cfg.sample.audio_scale = cfg.sample.ref_scale = 1.0
    else:
        model, cfg = load_generator(resolve_checkpoint(uri))
    if steps:
        cfg.sample.steps = int(steps)
    if teacher:
        cfg.sample.audio_scale, cfg.sample.ref_scale = 2.0, 2.0
    return name, model, cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=CKPT[@STEPS]")
    p.add_argument("--teacher-cfg", default="teacher",
                   help="name of the model to run with audio and reference CFG 2 (3 NFE/step)")
    p.add_argument("--untrained", default=None, metavar="CONFIG",
                   help="time freshly initialised networks of this preset instead")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the --untrained preset (repeatable)")
    p.add_argument("--seconds", type=float, default=9.6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="reports/speed")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for spec in args.model:
        name, model, cfg = _model(spec, args.untrained, spec.startswith(args.teacher_cfg + "="),
                                  args.overrides)
        clip = held_out_clip(cfg.synth)
        reps = int(np.ceil(args.seconds * cfg.synth.sample_rate / len(clip.audio)))
        audio = np.tile(clip.audio, reps)[:int(args.seconds * cfg.synth.sample_rate)]
        gen = AvatarGenerator(model, cfg)
        sampling = Sampling.from_config(cfg)
        gen.generate(clip.clean_frames[0], audio[:cfg.synth.sample_rate], sampling)  # warm-up
        times, decode = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            frames, stats = gen.generate(clip.clean_frames[0], audio, sampling)
            times.append(time.perf_counter() - t0)
            decode.append(stats.decode_seconds)
        t0 = time.perf_counter()
        encode_mp4(frames, cfg.synth.fps, audio, cfg.audio.sample_rate)
        encode_s = time.perf_counter() - t0
        video_s = stats.frames / cfg.synth.fps
        wall = statistics.median(times)
        rows.append({"model": name, "steps": sampling.steps, "nfe_per_chunk": stats.nfe_per_chunk,
                     "chunks": stats.chunks, "video_s": video_s, "wall_s": wall,
                     "wall_s_per_video_s": wall / video_s, "real_time_factor": video_s / wall,
                     "decode_s_per_video_s": statistics.median(decode) / video_s,
                     "decode_share": statistics.median(decode) / wall, "codec": cfg.codec.kind,
                     "mp4_encode_s_per_video_s": encode_s / video_s,
                     "resolution": cfg.resolution, "params_m": sum(
                         p.numel() for p in model.parameters()) / 1e6})
        print(f"{name}: {rows[-1]['wall_s_per_video_s']:.3f} s per video s "
              f"({stats.nfe_per_chunk} NFE/chunk)", flush=True)

    base = rows[0]
    for r in rows:
        r["speedup_vs_first"] = base["wall_s"] / r["wall_s"]
        r["nfe_ratio_vs_first"] = base["nfe_per_chunk"] / r["nfe_per_chunk"]
    device = "CPU only (no GPU on this machine)" if not torch.cuda.is_available() else "GPU"
    meta, lines = header("Generation speed: teacher vs distilled students", "speed.py",
                         f"{device}, {args.threads} torch threads")
    lines += [f"Same held-out portrait and {args.seconds:g} s of audio for every model, chunks of "
              f"{cfg.data.frames} frames with {cfg.data.motion_frames} motion frames, "
              f"{cfg.resolution}×{cfg.resolution}; median of {args.repeats} runs after a warm-up. "
              f"Speed-up is end-to-end wall-clock relative to `{base['model']}`.", "",
              f"Codec: `{cfg.codec.kind}`.", "",
              "| model | steps | NFE / chunk | s per video s | real-time factor | speed-up | "
              "NFE ratio | decode s per video s | decode share | MP4 encode s per video s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['steps']} | {r['nfe_per_chunk']} | "
                     f"{r['wall_s_per_video_s']:.4f} | {r['real_time_factor']:.1f}× | "
                     f"{r['speedup_vs_first']:.1f}× | {r['nfe_ratio_vs_first']:.0f}× | "
                     f"{r['decode_s_per_video_s']:.4f} | {100 * r['decode_share']:.0f}% | "
                     f"{r['mp4_encode_s_per_video_s']:.4f} |")
    save(Path(args.out), meta, rows, lines)


if __name__ == "__main__":
    main()
