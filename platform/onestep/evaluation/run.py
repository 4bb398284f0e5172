"""Evaluate a generator on held-out SynthTalk clips and write JSON + markdown reports.

For each held-out clip (identities never seen in training, with their own audio): generate from
its first clean frame and its audio, read the mouth from the generated video, and compare with
the ground truth the audio implies. Baselines computed in the same run bound every number:
the ground-truth video (ceiling) and the generated video scored against another clip's audio
(shuffled, floor).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from onestep.evaluation import metrics as M
from onestep.evaluation.mouth_reader import MouthReader
from onestep.generate import AvatarGenerator, Sampling
from onestep.media import decode_video, pcm16_array
from onestep.shards import read_manifest, shard_uris
from onestep.storage import resolve


@dataclass
class EvalClip:
    clip_id: str
    reference: np.ndarray  # (H, W, 3) uint8: first clean frame
    audio: np.ndarray  # float32 at the data set's sample rate
    clean_frames: np.ndarray  # (N, H, W, 3) uint8 ground-truth render
    mouth_open: np.ndarray  # (N,) ground truth


def load_eval_clips(data_uri: str, endpoint: str = "", split: str = "test", limit: int = 8
                    ) -> list[EvalClip]:
    """Held-out clips with ground-truth labels, read directly from the shards (small).

    Clips degraded with an audio/video offset are left out: their audio was shifted after the
    mouth track was drawn, so the labels no longer describe what the audio implies, and a
    generator that follows the audio perfectly would be scored as out of sync."""
    root = resolve(data_uri, endpoint)
    clips: list[EvalClip] = []
    for path in shard_uris(root, read_manifest(root)):
        with root.fs.open_input_file(path) as f:
            table = pq.read_table(f, columns=["clip_id", "mp4", "clean_mp4", "audio_pcm16",
                                              "split", "mouth_open", "degradations"])
        for row in table.to_pylist():
            if (row["split"] != split or row["mouth_open"] is None
                    or "offset" in json.loads(row["degradations"] or "{}")):
                continue
            frames, _ = decode_video(row["clean_mp4"] or row["mp4"])
            clips.append(EvalClip(row["clip_id"], frames[0], pcm16_array(row["audio_pcm16"]),
                                  frames, np.asarray(row["mouth_open"], np.float32)))
            if len(clips) == limit:
                return clips
    if not clips:
        raise ValueError(f"{data_uri}: no labelled clips in split {split!r} to evaluate on")
    return clips


def sync_scores(read: np.ndarray, truth: np.ndarray) -> dict:
    """Lip-sync of a mouth readout (one value per frame) against the ground truth."""
    lag, best = M.best_offset(read, truth)
    return {"sync": M.correlation(read, truth), "offset": lag, "sync_at_offset": best}


def evaluate(generator: AvatarGenerator, sampling: Sampling, clips: list[EvalClip],
             reader: MouthReader, first_video: list | None = None) -> dict:
    """Metrics over `clips`; the first clip's generated frames are appended to `first_video`
    when one is given (for a contact sheet)."""
    rows, gen_feats, real_feats, shuffled, gt_sync = [], [], [], [], []
    readouts = []  # mouth opening read from each generated video
    for clip in clips:
        frames, stats = generator.generate(clip.reference, clip.audio, sampling)
        if first_video is not None and clip is clips[0]:
            first_video.append(frames)
        n = min(len(frames), len(clip.clean_frames))
        frames, clean = frames[:n], clip.clean_frames[:n]
        (read, feats), (read_gt, feats_gt) = reader.read(frames), reader.read(clean)
        readouts.append(read)
        s = sync_scores(read, clip.mouth_open[:n])
        gen_feats.append(feats)
        real_feats.append(feats_gt)
        gt_sync.append(sync_scores(read_gt, clip.mouth_open[:n])["sync"])
        rows.append({**s, "psnr": M.psnr(frames, clean), "ssim": M.ssim(frames, clean),
                     "identity": M.identity_similarity(frames, clip.reference),
                     "flicker": M.flicker(frames), "flicker_gt": M.flicker(clean),
                     "nfe_per_chunk": stats.nfe_per_chunk,
                     "compute_s_per_video_s": stats.seconds / (n / generator.fps)})
    for i, read in enumerate(readouts):  # generated video vs another clip's ground truth
        shuffled.append(M.correlation(read, clips[(i + 1) % len(clips)].mouth_open))
    mean = lambda k: float(np.mean([r[k] for r in rows]))
    return {
        "clips": len(clips), "steps": sampling.steps, "audio_scale": sampling.audio_scale,
        "ref_scale": sampling.ref_scale,
        "sync": mean("sync"), "sync_shuffled_audio": float(np.mean(shuffled)),
        "sync_ground_truth": float(np.mean(gt_sync)),
        "offset_frames": mean("offset"), "abs_offset_frames": float(np.mean(
            [abs(r["offset"]) for r in rows])),
        "psnr": mean("psnr"), "ssim": mean("ssim"),
        "frechet": M.frechet_distance(np.concatenate(gen_feats), np.concatenate(real_feats)),
        "identity": mean("identity"), "flicker": mean("flicker"), "flicker_gt": mean("flicker_gt"),
        "nfe_per_chunk": int(rows[0]["nfe_per_chunk"]),
        "compute_s_per_video_s": mean("compute_s_per_video_s"),
    }


def write_contact_sheet(videos: dict[str, np.ndarray], path: Path, count: int = 12,
                        scale: int = 3) -> None:
    """A PNG with one row of evenly spaced frames per video, named on the left: artefacts,
    colour drift across chunks and a frozen mouth show at a glance what the numbers summarise.
    Labels use matplotlib's DejaVu Sans: Pillow's built-in font lacks arrows such as "4→1"."""
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    n = min(len(v) for v in videos.values())
    picks = np.linspace(0, n - 1, count).round().astype(int)
    h, w = next(iter(videos.values())).shape[1:3]
    label_w, fh, fw = 220, h * scale, w * scale
    sheet = Image.new("RGB", (label_w + count * fw, len(videos) * fh), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 11)
    for row, (name, frames) in enumerate(videos.items()):
        draw.text((6, row * fh + fh // 2 - 6), name, fill="black", font=font)
        for col, i in enumerate(picks):
            tile = Image.fromarray(frames[i]).resize((fw, fh), Image.NEAREST)
            sheet.paste(tile, (label_w + col * fw, row * fh))
    tmp = path.with_suffix(".tmp.png")
    sheet.save(tmp)
    tmp.replace(path)


TABLE = [("sync", "lip-sync corr ↑"), ("sync_shuffled_audio", "shuffled-audio corr"),
         ("sync_ground_truth", "ground-truth corr"), ("abs_offset_frames", "abs. offset (frames) ↓"),
         ("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"), ("frechet", "Fréchet ↓"),
         ("identity", "identity ↑"), ("flicker", "flicker"), ("nfe_per_chunk", "NFE/chunk"),
         ("compute_s_per_video_s", "compute s / video s")]


def markdown_table(results: dict[str, dict]) -> str:
    """One row per model; with several, each row's lip-sync and speed relative to the first
    model's (a distilled student is judged against its teacher, listed first)."""
    first, ref = next(iter(results.items()))
    relative = [f"lip-sync ÷ {first}'s", f"speed-up vs {first}"] if len(results) > 1 else []
    head = "| model | " + " | ".join([label for _, label in TABLE] + relative) + " |"
    lines = [head, "|---" * (len(TABLE) + len(relative) + 1) + "|"]
    for name, r in results.items():
        cells = [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k, _ in TABLE]
        if relative:
            sync = r["sync"] / ref["sync"] if ref["sync"] else float("nan")
            speed = ref["compute_s_per_video_s"] / r["compute_s_per_video_s"]
            cells += [f"{sync:.2f}×", f"{speed:.1f}×"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(results: dict[str, dict], out: Path, title: str, command: str,
                 notes: str = "") -> None:
    """JSON + markdown, written atomically, with the command that produced them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for suffix, text in (
            (".json", json.dumps({"meta": meta, "results": results}, indent=2)),
            (".md", (f"# {title}\n\nCommand: `{command}`  \nDate: {meta['date']}\n\n"
                    f"{markdown_table(results)}\n\n{notes}\n"))):
        path = out.with_suffix(suffix)
        tmp = path.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
