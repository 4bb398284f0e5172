"""Write SynthTalk as shards with parallel Ray tasks (a user's own videos: onestep.ingest)."""

from __future__ import annotations

import logging

import ray
from tqdm import tqdm

from onestep.config import SynthConfig
from onestep.shards import synth_source, write_manifest, write_synth_shard
from onestep.storage import Location, check_reachable, resolve

log = logging.getLogger(__name__)


def _run_tasks(refs: list, desc: str) -> list[dict]:
    """Wait for tasks in completion order with a progress bar; results in submission order."""
    index = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit="shard") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results[index[done[0]]] = ray.get(done[0])
            bar.update(1)
    return results


@ray.remote(num_cpus=1)
def _synth_shard(uri: str, endpoint: str, index: int, cfg: SynthConfig) -> dict:
    return write_synth_shard(resolve(uri, endpoint), index, cfg)


def prepare_synthtalk(cfg: SynthConfig, out: Location) -> dict:
    """Generate `cfg.num_clips` SynthTalk clips into shards under `out`; idempotent."""
    check_reachable(out, create=True)
    n_shards = -(-cfg.num_clips // cfg.clips_per_shard)
    refs = [_synth_shard.remote(out.uri, out.endpoint_url, i, cfg) for i in range(n_shards)]
    shards = _run_tasks(refs, f"SynthTalk → {out.uri}")
    skipped = sum(s["skipped"] for s in shards)
    if skipped:
        log.info("%d of %d shards were already complete and were kept", skipped, n_shards)
    return write_manifest(out, shards, synth_source(cfg))
