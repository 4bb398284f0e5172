"""Evaluate a generator on held-out clips and write JSON + markdown reports.

For each held-out clip (identities never seen in training, with their own audio): generate from
its first clean frame and its audio and compare with the clip. On SynthTalk the mouth is read
from the generated video and compared with the ground truth the audio implies (labels); on any
data, ingested footage included, a lip-sync expert (onestep.sync) scores the video against its
audio as SyncNet does (LSE-C, LSE-D, offset). Baselines computed in the same run bound every
number: the ground-truth video (ceiling) and the generated video scored against another clip's
audio (shuffled, floor).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from onestep.evaluation import metrics as M
from onestep.evaluation.fid import InceptionFeatures
from onestep.evaluation.fvd import I3DFeatures
from onestep.evaluation.identity import ArcFace
from onestep.evaluation.mouth_reader import MouthReader
from onestep.generate import AvatarGenerator, Sampling
from onestep.media import decode_video, pcm16_array
from onestep.shards import read_manifest, shard_uris
from onestep.storage import resolve
from onestep.sync.score import SyncScorer


@dataclass
class EvalClip:
    clip_id: str
    reference: np.ndarray  # (H, W, 3) uint8: first clean frame
    audio: np.ndarray  # float32 at the data set's sample rate
    clean_frames: np.ndarray  # (N, H, W, 3) uint8 ground truth: the clean render, or the clip
    mouth_open: np.ndarray | None  # (N,) ground truth; None for footage without labels


def is_labelled(data_uri: str, endpoint: str = "") -> bool:
    """SynthTalk shards carry mouth labels; ingested footage does not."""
    return read_manifest(resolve(data_uri, endpoint))["source"].get("kind") != "videos"


def load_eval_clips(data_uri: str, endpoint: str = "", split: str = "test", limit: int = 8,
                    labelled: bool = True) -> list[EvalClip]:
    """Held-out clips, read directly from the shards (small); with `labelled`, only clips with
    ground-truth mouth labels, else every clip of the split (ingested footage).

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
            if row["split"] != split or (labelled and (
                    row["mouth_open"] is None
                    or "offset" in json.loads(row["degradations"] or "{}"))):
                continue
            frames, _ = decode_video(row["clean_mp4"] or row["mp4"])
            labels = row["mouth_open"]
            clips.append(EvalClip(row["clip_id"], frames[0], pcm16_array(row["audio_pcm16"]),
                                  frames, None if labels is None
                                  else np.asarray(labels, np.float32)))
            if len(clips) == limit:
                return clips
    if not clips:
        raise ValueError(f"{data_uri}: no {'labelled ' if labelled else ''}clips in split "
                         f"{split!r} to evaluate on")
    return clips


def sync_scores(read: np.ndarray, truth: np.ndarray) -> dict:
    """Lip-sync of a mouth readout (one value per frame) against the ground truth."""
    lag, best = M.best_offset(read, truth)
    return {"sync": M.correlation(read, truth), "offset": lag, "sync_at_offset": best}


def _reader_metrics(read: np.ndarray, read_gt: np.ndarray, truth: np.ndarray) -> dict:
    return {**sync_scores(read, truth), "sync_ground_truth": sync_scores(read_gt, truth)["sync"]}


def _expert_metrics(scorer: SyncScorer, frames: np.ndarray, clean: np.ndarray,
                    audio: np.ndarray, other_audio: np.ndarray) -> dict:
    """LSE-C / LSE-D / offset of the generated video, its ground truth and another clip's audio."""
    mine, truth = scorer.score(frames, audio), scorer.score(clean, audio)
    return {"lse_c": mine.confidence, "lse_d": mine.distance, "lse_offset": abs(mine.offset),
            "lse_c_ground_truth": truth.confidence,
            "lse_c_shuffled_audio": scorer.score(frames, other_audio).confidence}


def evaluate(generator: AvatarGenerator, sampling: Sampling, clips: list[EvalClip],
             reader: MouthReader | None = None, videos: list | None = None,
             scorer: SyncScorer | None = None, fid: InceptionFeatures | None = None,
             arcface: ArcFace | None = None, fvd: I3DFeatures | None = None) -> dict:
    """Metrics over `clips`: the mouth reader's on labelled clips (lip-sync correlation, offset,
    Fréchet distance in its feature space), the lip-sync expert's with a `scorer` (LSE-C, LSE-D,
    offset; the Fréchet distance in its video embedding space when there is no reader), image
    metrics always, FID with `fid` (Inception features of generated vs ground-truth frames), FVD
    with `fvd` (I3D features of their 16-frame windows),
    ArcFace identity similarity to the reference with `arcface` (the thumbnail proxy always).
    Each clip's generated frames are appended to `videos` when it is given (a contact sheet,
    the collapse guards)."""
    labelled = reader is not None and all(c.mouth_open is not None for c in clips)
    if not labelled and scorer is None:
        raise ValueError("these clips have no mouth labels: lip-sync needs an expert "
                         "(sync.weights / --sync)")
    rows, gen_feats, real_feats, readouts = [], [], [], []
    fid_gen, fid_real, fvd_gen, fvd_real = [], [], [], []
    for i, clip in enumerate(clips):
        frames, stats = generator.generate(clip.reference, clip.audio, sampling)
        if videos is not None:
            videos.append(frames)
        n = min(len(frames), len(clip.clean_frames))
        frames, clean = frames[:n], clip.clean_frames[:n]
        row = {"psnr": M.psnr(frames, clean), "ssim": M.ssim(frames, clean),
               "identity": M.identity_similarity(frames, clip.reference),
               "flicker": M.flicker(frames), "flicker_gt": M.flicker(clean),
               "nfe_per_chunk": stats.nfe_per_chunk,
               "compute_s_per_video_s": stats.seconds / (n / generator.fps)}
        if labelled:
            (read, feats), (read_gt, feats_gt) = reader.read(frames), reader.read(clean)
            readouts.append(read)
            row.update(_reader_metrics(read, read_gt, clip.mouth_open[:n]))
        if scorer is not None:
            row.update(_expert_metrics(scorer, frames, clean, clip.audio,
                                       clips[(i + 1) % len(clips)].audio))
            if not labelled:  # the expert's embeddings are the feature space
                feats, feats_gt = (scorer.embed(v, clip.audio)[0].numpy() for v in (frames, clean))
        gen_feats.append(feats)
        real_feats.append(feats_gt)
        if arcface is not None:
            row["identity_arcface"] = arcface.similarity(frames, clip.reference)
        if fid is not None:
            fid_gen.append(fid(frames))
            fid_real.append(fid.real(clip.clip_id, clean))
        if fvd is not None:
            fvd_gen.append(fvd(frames))
            fvd_real.append(fvd.real(clip.clip_id, clean))
        rows.append(row)
    out = {"clips": len(clips), "steps": sampling.steps, "audio_scale": sampling.audio_scale,
           "ref_scale": sampling.ref_scale,
           "frechet": M.frechet_distance(np.concatenate(gen_feats), np.concatenate(real_feats)),
           "frechet_features": "mouth reader" if labelled else "lip-sync expert video embeddings",
           "nfe_per_chunk": int(rows[0]["nfe_per_chunk"])}
    if fid is not None:
        out["fid"] = M.frechet_distance(np.concatenate(fid_gen), np.concatenate(fid_real))
    if fvd is not None:
        out["fvd"] = M.frechet_distance(np.concatenate(fvd_gen), np.concatenate(fvd_real))
    out.update({k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "nfe_per_chunk"})
    if labelled:  # generated video vs another clip's ground truth
        out["sync_shuffled_audio"] = float(np.mean([
            M.correlation(read, clips[(i + 1) % len(clips)].mouth_open)
            for i, read in enumerate(readouts)]))
        out["offset_frames"] = out.pop("offset")
        out["abs_offset_frames"] = float(np.mean([abs(r["offset"]) for r in rows]))
        out.pop("sync_at_offset")
    return out


def long_video_metrics(generator: AvatarGenerator, sampling: Sampling, clips: list[EvalClip],
                       seconds: float, count: int = 2) -> dict:
    """Chunk hand-overs of long generations: the portraits of the first `count` clips, each
    driven by `seconds` of held-out audio (its clip's, then the next clips'), and how much more
    the video jumps where one chunk hands over to the next than inside a chunk, in appearance
    (frame differences) and in motion (their changes); see metrics.boundary_jump. Held-out
    clips are a few seconds long, fewer chunks than a long video has; a one-step student's
    seams show only here."""
    rate = generator.cfg.audio.sample_rate
    need, jumps = int(round(seconds * rate)), {"boundary_jump": [], "motion_jump": []}
    for i in range(min(count, len(clips))):
        audio, j = [], i
        while sum(map(len, audio)) < need:
            audio.append(clips[j % len(clips)].audio)
            j += 1
        chunks = list(generator.stream(clips[i].reference, np.concatenate(audio)[:need],
                                       sampling))
        frames = np.concatenate(chunks)
        starts = np.cumsum([len(c) for c in chunks])[:-1].tolist()
        jumps["boundary_jump"].append(M.boundary_jump(frames, starts, order=1))
        jumps["motion_jump"].append(M.boundary_jump(frames, starts, order=2))
    return {"long_seconds": seconds, "long_chunks": len(chunks),
            **{k: float(np.mean(v)) for k, v in jumps.items()}}


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
         ("lse_c", "LSE-C ↑"), ("lse_c_shuffled_audio", "LSE-C shuffled audio"),
         ("lse_c_ground_truth", "LSE-C ground truth"), ("lse_d", "LSE-D ↓"),
         ("lse_offset", "LSE abs. offset ↓"),
         ("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"), ("frechet", "Fréchet ↓"), ("fid", "FID ↓"),
         ("fvd", "FVD ↓"),
         ("identity_arcface", "ArcFace identity ↑"), ("identity", "identity proxy ↑"),
         ("flicker", "flicker"), ("boundary_jump", "seam: appearance ↓"),
         ("motion_jump", "seam: motion ↓"), ("nfe_per_chunk", "NFE/chunk"),
         ("compute_s_per_video_s", "compute s / video s")]


def markdown_table(results: dict[str, dict]) -> str:
    """One row per model; with several, each row's lip-sync and speed relative to the first
    model's (a distilled student is judged against its teacher, listed first)."""
    first, ref = next(iter(results.items()))
    table = [(k, label) for k, label in TABLE if k in ref]  # the metrics that apply to the data
    sync_key = "sync" if "sync" in ref else "lse_c"
    relative = [f"lip-sync ÷ {first}'s", f"speed-up vs {first}"] if len(results) > 1 else []
    head = "| model | " + " | ".join([label for _, label in table] + relative) + " |"
    lines = [head, "|---" * (len(table) + len(relative) + 1) + "|"]
    for name, r in results.items():
        cells = [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k, _ in table]
        if relative:
            sync = r[sync_key] / ref[sync_key] if ref[sync_key] else float("nan")
            speed = ref["compute_s_per_video_s"] / r["compute_s_per_video_s"]
            cells += [f"{sync:.2f}×", f"{speed:.1f}×"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_path(out: Path, suffix: str) -> Path:
    """<out><suffix>: `out` names the report without its suffix, and may hold dots of its own
    ("eval-noise-0.5"), which Path.with_suffix would take for one."""
    return out.with_name(out.name + suffix)


def write_report(results: dict[str, dict], out: Path, title: str, command: str,
                 notes: str = "") -> None:
    """JSON + markdown, written atomically, with the command that produced them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for suffix, text in (
            (".json", json.dumps({"meta": meta, "results": results}, indent=2)),
            (".md", (f"# {title}\n\nCommand: `{command}`  \nDate: {meta['date']}\n\n"
                    f"{markdown_table(results)}\n\n{notes}\n"))):
        path = report_path(out, suffix)
        tmp = report_path(out, suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
