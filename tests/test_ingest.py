"""A user's own talking-head videos → clips in the same shard format (30 fps, 48 kHz, 4:3 in)."""

import io

import av
import numpy as np
import pyarrow.parquet as pq

from onestep.config import SynthConfig
from onestep.media import decode_video, encode_mp4
from onestep.prepare import ingest_videos
from onestep.shards import read_manifest
from onestep.storage import resolve


def _user_video(path, seconds: float, fps: int = 30, sr: int = 48000) -> None:
    n = int(seconds * fps)
    t = np.arange(n)[:, None, None, None]
    frames = np.broadcast_to((t * 4 % 255).astype(np.uint8), (n, 48, 64, 3)).copy()
    audio = 0.3 * np.sin(np.arange(int(seconds * sr)) * 2 * np.pi * 200 / sr).astype(np.float32)
    path.write_bytes(encode_mp4(frames, fps, audio, sr))


def test_ingest_resamples_crops_and_cuts(ray_cluster, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    _user_video(videos / "long.mp4", seconds=2.6)
    _user_video(videos / "short.mp4", seconds=0.5)  # shorter than one clip: skipped, not an error
    cfg = SynthConfig(resolution=32, clip_seconds=1.2)
    out = resolve(str(tmp_path / "shards"))
    manifest = ingest_videos(str(videos), cfg, out)
    assert manifest["num_clips"] == 2 and read_manifest(out)["source"]["kind"] == "videos"
    table = pq.read_table(tmp_path / "shards" / manifest["shards"][0]["name"])
    assert table.column("clip_id").to_pylist() == ["long-0000", "long-0001"]
    mp4 = table.column("mp4")[0].as_py()
    frames, fps = decode_video(mp4)
    assert frames.shape == (30, 32, 32, 3) and fps == 25
    with av.open(io.BytesIO(mp4)) as box:
        assert box.streams.audio[0].codec_context.sample_rate == 16000
    assert len(table.column("audio_pcm16")[0].as_py()) == 2 * 16000 * 1.2
