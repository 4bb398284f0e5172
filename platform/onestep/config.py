"""One typed config object per job: dataclasses, loaded from YAML, overridden with dotted keys.

A run is described entirely by a `Config`; it is printed at start and saved with every checkpoint
so that any result can be reproduced from the checkpoint alone. Unknown keys are rejected by name
(with the valid keys listed) because a silently ignored typo wastes a GPU-day.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESETS_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and what was expected."""


class Section:
    """A config section. It checks itself: its own fields' values, and what they require of
    other sections (`cfg`, the whole config), so a stage's rules live beside its knobs.

    `positive`, `non_negative` and `fractions` name the fields that cannot train (or generate)
    outside (0, ∞), [0, ∞) and [0, 1]; they are checked before anything divides by them, so a
    wrong value gets its name instead of a ZeroDivisionError. Class attributes, not fields."""

    positive: tuple[str, ...] = ()
    non_negative: tuple[str, ...] = ()
    fractions: tuple[str, ...] = ()

    def check_ranges(self, section: str) -> None:
        for names, ok, expected in (
                (self.positive, lambda v: v > 0, "> 0"),
                (self.non_negative, lambda v: v >= 0, "≥ 0"),
                (self.fractions, lambda v: 0 <= v <= 1, "in [0, 1]")):
            for name in names:
                value = getattr(self, name)
                if not ok(value):
                    raise ConfigError(f"{section}.{name}: expected {expected}, got {value}")

    def check(self, cfg: Config) -> None:
        """Raise a ConfigError naming the key and what was expected."""


def _require(*checks: tuple[bool, str, str]) -> None:
    for ok, key, expected in checks:
        if not ok:
            raise ConfigError(f"{key}: expected {expected}")


@dataclass
class SynthConfig(Section):
    """SynthTalk, the procedural talking-head data set (see onestep.synth)."""

    positive = ("num_clips", "clip_seconds", "resolution", "fps", "sample_rate", "num_identities",
                "clips_per_shard")
    fractions = ("test_identity_fraction", "degraded_fraction")

    num_clips: int = 96
    clip_seconds: float = 2.4
    resolution: int = 32
    fps: int = 25
    sample_rate: int = 16000
    num_identities: int = 24
    test_identity_fraction: float = 0.25
    degraded_fraction: float = 0.2
    background_noise: float = 0.05
    clips_per_shard: int = 16
    seed: int = 0

    def check(self, cfg: Config) -> None:
        step = cfg.codec.factor * cfg.model.patch[1]
        _require((self.resolution % step == 0, "synth.resolution",
                  f"a multiple of codec.factor*model.patch[1] = {step}"))


@dataclass
class IngestConfig(Section):
    """jobs/prepare_data.py --ingest: real talking-head video → face-tracked clips, each with
    quality metrics and a tier (onestep.ingest)."""

    positive = ("detect_fps", "detect_width", "crop_scale", "max_jump")
    non_negative = ("smooth_seconds", "max_sync_offset")
    fractions = ("min_face", "scene_threshold", "test_fraction")

    # Face detections and scene-cut checks per second of video, on frames scaled to
    # `detect_width`: at 480 (16:9) the detector finds faces down to ~7% of the frame's height
    # (small_face needs to see them), at ~0.25 s of one core per detection.
    detect_fps: float = 2.0
    detect_width: int = 480
    # A face whose side is below this fraction of the frame's shorter side is dropped
    # (small_face): upscaled to the training resolution it carries little detail.
    min_face: float = 0.1
    crop_scale: float = 1.8  # the square crop's side over the face's (HDTF-style margin)
    smooth_seconds: float = 0.6  # moving-average window of the crop track
    # Colour-histogram distance (0–1) between consecutive analysed frames that marks a cut.
    scene_threshold: float = 0.35
    # A face moving more than this × its side between two detections is another track.
    max_jump: float = 0.5
    test_fraction: float = 0.1  # videos held out for evaluation (by a hash of their path)
    # A video longer than this is ingested as parts of about this length, one Ray task each (0:
    # one task per video). A face span running over a part's edge is cut there: each edge costs
    # at most one clip's length of footage.
    part_seconds: float = 300.0
    # Quality tiers (FADA's mixed supervision): [high, moderate] thresholds per metric. A clip is
    # `high` when every metric reaches its high threshold, `moderate` when every one reaches its
    # moderate one, else `low`. Sharpness: variance of the Laplacian of the face crop (grey,
    # 128×128, 0–255); face_px: the face's side in source pixels; snr_db: speech over the
    # noise floor of the clip's audio.
    sharpness_tiers: list[float] = field(default_factory=lambda: [150.0, 40.0])
    face_px_tiers: list[float] = field(default_factory=lambda: [192.0, 96.0])
    snr_db_tiers: list[float] = field(default_factory=lambda: [20.0, 10.0])
    # With a lip-sync expert (sync.weights), every clip is scored: its confidence joins the tier
    # thresholds, and a clip whose sound is more than `max_sync_offset` frames off the picture
    # is dropped (out_of_sync). The defaults are on syncnet_v2's scale (talking heads in sync
    # score ~5–8, poorly synced ones under 2); onestep's own expert's confidences are 0–1.
    sync_tiers: list[float] = field(default_factory=lambda: [3.0, 1.5])
    max_sync_offset: int = 3

    def check(self, cfg: Config) -> None:
        _require((self.part_seconds == 0 or self.part_seconds >= 2 * cfg.synth.clip_seconds,
                  "ingest.part_seconds", "0 (whole videos) or at least two clips' length "
                  f"(2 × synth.clip_seconds = {2 * cfg.synth.clip_seconds:g})"),
                 *[(len(t) == 2 and t[0] >= t[1] >= 0, f"ingest.{k}",
                    "[high, moderate] thresholds with high ≥ moderate ≥ 0")
                   for k, t in (("sharpness_tiers", self.sharpness_tiers),
                                ("face_px_tiers", self.face_px_tiers),
                                ("snr_db_tiers", self.snr_db_tiers),
                                ("sync_tiers", self.sync_tiers))])


TIERS = ("high", "moderate", "low")
SYNC_FRAMES = 5  # video frames one lip-sync embedding sees (SyncNet's 0.2 s)


@dataclass
class DataConfig(Section):
    """How shards become training batches (Ray Data) and what one training example is."""

    positive = ("frames", "windows_per_clip", "shuffle_buffer")
    fractions = ("motion_prob",)

    uri: str = "data/synthtalk"  # folder or s3://bucket/prefix holding manifest.json + shards
    frames: int = 8  # F: frames per training window and per generated chunk
    motion_frames: int = 2  # M: leading frames of a chunk conditioned on the previous chunk
    motion_prob: float = 0.5  # fraction of windows trained with motion-frame context
    windows_per_clip: int = 4
    split: str = "train"
    tiers: list[str] = field(default_factory=lambda: list(TIERS))  # quality tiers trained on
    # Ray Data actors that decode clips and cut windows: [min, max] (an autoscaling pool).
    decode_actors: list[int] = field(default_factory=lambda: [1, 2])
    shuffle_buffer: int = 64
    on_corrupt: str = "skip"  # "skip" logs and counts a bad clip; "fail" stops the job
    seed: int = 0

    def check(self, cfg: Config) -> None:
        per = cfg.codec.temporal_factor
        _require(
            (0 <= self.motion_frames < self.frames, "data.motion_frames", "in [0, data.frames)"),
            ((self.frames - 1) % per == 0, "data.frames",
             f"1 + {per}k frames for codec.kind {cfg.codec.kind} (the VAE encodes the first "
             "frame alone, then 4 per latent frame), e.g. 17 or 21"),
            (self.motion_frames == 0 or (self.motion_frames - 1) % per == 0,
             "data.motion_frames", f"0 or 1 + {per}k frames for codec.kind {cfg.codec.kind} "
             "(whole latent frames), e.g. 1 or 5"),
            (self.on_corrupt in ("skip", "fail"), "data.on_corrupt", "'skip' or 'fail'"),
            (bool(self.tiers) and set(self.tiers) <= set(TIERS), "data.tiers",
             f"a non-empty list of {', '.join(TIERS)}"),
            (len(self.decode_actors) == 2 and 1 <= self.decode_actors[0] <= self.decode_actors[1],
             "data.decode_actors", "[min, max] with 1 ≤ min ≤ max"))


@dataclass
class EncodeConfig(Section):
    """jobs/encode.py: clip shards → latent shards, the codec and audio encoder run once per clip
    in a Ray Data actor pool (on a GPU cluster: one GPU per actor)."""

    positive = ("actors", "cpus_per_actor", "references")

    actors: int = 1  # encoder actors (each loads the VAE and the audio encoder once)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    references: int = 4  # reference frames encoded per clip; a training window draws one
    dtype: str = "float16"  # latents as stored ("float32" keeps them bit-exact)

    def check(self, cfg: Config) -> None:
        _require((self.dtype in ("float16", "float32"), "encode.dtype", "'float16' or 'float32'"),
                 (self.gpus_per_actor >= 0, "encode.gpus_per_actor", "≥ 0"))


@dataclass
class AudioConfig(Section):
    """Audio encoder: `logmel` needs no weights; `wav2vec2` loads a local transformers model;
    `mfcc` is SyncNet's input (feature_rate 100), what the lip-sync expert hears."""

    positive = ("sample_rate", "feature_rate")

    encoder: str = "logmel"
    sample_rate: int = 16000
    feature_rate: int = 50  # encoder frames per second (Wav2Vec2's native rate)
    n_mels: int = 40
    wav2vec2_path: str = ""

    def check(self, cfg: Config) -> None:
        _require(
            (self.encoder in ("logmel", "wav2vec2", "mfcc"), "audio.encoder",
             "'logmel', 'wav2vec2' or 'mfcc'"),
            (self.encoder != "mfcc" or self.feature_rate == 100, "audio.feature_rate",
             "100 for audio.encoder mfcc (10 ms steps, as SyncNet's)"),
            (self.feature_rate % cfg.synth.fps == 0, "audio.feature_rate",
             f"a multiple of synth.fps={cfg.synth.fps}"))


# The Wan2.1 VAE's compression in time (its config's scale_factor_temporal).
WAN_VAE_TEMPORAL = 4


@dataclass
class CodecConfig(Section):
    """Latent codec between pixels and the DiT: `space_to_depth` (lossless, weight-free, one
    latent frame per video frame) or `wan_vae` (Wan2.1's causal VAE: 8× in space, 4× in time)."""

    positive = ("factor",)

    kind: str = "space_to_depth"
    factor: int = 2  # spatial compression (wan_vae: 8)
    # wan_vae: the diffusers AutoencoderKLWan folder, or a Wan pipeline folder with vae/
    # (local or s3://); saved with every checkpoint, so exports need it where they are served.
    pretrained: str = ""

    @property
    def temporal_factor(self) -> int:
        """Video frames per latent frame (after the first, which the Wan VAE encodes alone)."""
        return WAN_VAE_TEMPORAL if self.kind == "wan_vae" else 1

    def check(self, cfg: Config) -> None:
        _require(
            (self.kind in ("space_to_depth", "wan_vae"), "codec.kind",
             "'space_to_depth' or 'wan_vae'"),
            (self.kind != "wan_vae" or bool(self.pretrained), "codec.pretrained",
             "a Wan VAE folder (diffusers AutoencoderKLWan, local or s3://) for codec.kind "
             "wan_vae"),
            (self.kind != "wan_vae" or self.factor == 8, "codec.factor",
             "8 for codec.kind wan_vae (its spatial compression)"))


@dataclass
class ModelConfig(Section):
    """The velocity network: onestep's Wan-style DiT (`dit`) or Wan2.1's own (`wan`), both with
    reference, motion-frame and audio conditioning."""

    positive = ("dim", "depth", "heads", "audio_dim", "audio_tokens", "text_dim", "prompt_tokens")
    non_negative = ("audio_context", "ffn_dim", "image_dim")

    kind: str = "dit"
    # wan: a diffusers WanTransformer3DModel folder (or a Wan pipeline folder), local or s3://,
    # that the teacher starts from. Its config.json sets dim, depth, heads, ffn_dim, text_dim,
    # image_dim and patch at launch. Empty: a Wan network of the fields below, initialised fresh.
    pretrained: str = ""
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    patch: list[int] = field(default_factory=lambda: [1, 2, 2])  # (frames, height, width)
    audio_context: int = 2  # TurboTalk Eq. 1: ±k neighbouring audio features per position
    audio_tokens: int = 4  # TurboTalk Eq. 2: adapter tokens per video frame
    audio_dim: int = 128
    ffn_dim: int = 0  # wan: the feed-forward width (0: dim·mlp_ratio)
    text_dim: int = 4096  # wan: width of the prompt's text embedding (umT5-XXL: 4096)
    prompt_tokens: int = 512  # wan: its length in tokens
    image_dim: int = 0  # wan I2V: CLIP token width (1280) for image cross-attention; 0: none
    # wan: umT5 (a transformers UMT5EncoderModel + tokenizer, or a Wan pipeline folder; local or
    # s3://) that embeds `prompt` once at launch into the model's stored text context. Empty:
    # the context the model holds (zeros for a fresh model, its own for a loaded export).
    text_encoder: str = ""
    prompt: str = "a person talking to the camera"
    prompt_embedding: str = ""  # set at launch: where the embedding of `prompt` was stored
    # wan I2V: CLIP's vision tower (transformers CLIPVisionModel + image processor, or a Wan
    # pipeline folder) whose tokens of the reference frame are the image context.
    image_encoder: str = ""
    # FADA §3.3: the student takes the guidance scales (audio, reference) as an input and
    # samples guided at one evaluation per step. "": no such input (CFG costs up to 3
    # evaluations); `scalar`: the scales embedded into the timestep embedding; `layer`: a
    # cross-attention layer after each audio cross-attention over an embedding of the scales;
    # `tokens`: that layer over three learnable tokens combined as Eq. 9 combines its velocities.
    guidance_input: str = ""

    def check(self, cfg: Config) -> None:
        _require(
            (self.dim % self.heads == 0, "model.dim", "divisible by model.heads"),
            ((self.dim // self.heads) % 2 == 0, "model.heads",
             "an even head size (dim/heads) for 3D RoPE"),
            (self.kind in ("dit", "wan"), "model.kind", "'dit' or 'wan'"),
            (not self.pretrained or self.kind == "wan", "model.pretrained",
             "empty unless model.kind is 'wan' (it names a diffusers Wan checkpoint)"),
            (not self.text_encoder or self.kind == "wan", "model.text_encoder",
             "empty unless model.kind is 'wan' (onestep's DiT has no text context)"),
            (not self.image_encoder or self.kind == "wan", "model.image_encoder",
             "empty unless model.kind is 'wan' (an I2V network with image attention)"),
            (self.guidance_input in ("", "scalar", "layer", "tokens"), "model.guidance_input",
             "'', 'scalar', 'layer' or 'tokens'"))


@dataclass
class FlowConfig(Section):
    """Rectified-flow training: timestep distribution and condition dropout for CFG."""

    fractions = ("audio_drop", "all_drop")

    timestep_shift: float = 1.0
    logit_normal: bool = True
    audio_drop: float = 0.1  # drop audio only: learns v(ref, ∅) for the audio CFG term
    all_drop: float = 0.05  # drop audio and reference: learns v(∅, ∅)
    # The mouth is ~5% of a face crop's pixels, so an unweighted loss barely rewards lip-sync
    # (reports/audio_reliance.md). Errors inside mouth_region (top, bottom, left, right as
    # fractions of the frame; SynthTalk's and any face-centred crop's mouth) count mouth_weight×.
    mouth_region: list[float] = field(default_factory=lambda: [0.5, 0.85, 0.3, 0.7])
    mouth_weight: float = 5.0

    def check(self, cfg: Config) -> None:
        _require((_is_region(self.mouth_region), "flow.mouth_region",
                  f"{REGION}, e.g. [0.5, 0.85, 0.3, 0.7]"),
                 (self.mouth_weight > 0, "flow.mouth_weight", "> 0 (1: unweighted)"))


ROLLING_FIRST_CHUNK = ("gaussian", "reference")


@dataclass
class SampleConfig(Section):
    """Sampling: Euler steps and multi-condition CFG (FADA Eq. 9)."""

    positive = ("steps",)
    non_negative = ("audio_scale", "ref_scale")
    fractions = ("rolling_noise",)

    steps: int = 20
    audio_scale: float = 2.0
    ref_scale: float = 1.0
    timestep_shift: float = 1.0
    seed: int = 0
    # Euler steps per equal time window, from noise (a FADA student straightened its flow
    # window by window, PeRFlow); they sum to `steps`. Empty: `steps` uniform steps, shifted.
    window_steps: list[int] = field(default_factory=list)
    # Rolling sampling (OSA-LCM §4.2): every chunk after the first starts from the previous
    # chunk's latent noised to this level, `steps` steps from there. 0: off.
    rolling_noise: float = 0.0
    # Where the first chunk starts when rolling: `gaussian` (the paper's combined rolling
    # sampling) or `reference`, the reference latent repeated over the chunk and noised to
    # `rolling_noise` (its plain rolling sampling, which the appendix finds ghosting).
    rolling_first_chunk: str = "gaussian"

    def check(self, cfg: Config) -> None:
        _require((not self.window_steps or (min(self.window_steps) >= 1
                                            and sum(self.window_steps) == self.steps),
                  "sample.window_steps", f"empty, or step counts ≥ 1 summing to sample.steps="
                  f"{self.steps}"),
                 (self.rolling_first_chunk in ROLLING_FIRST_CHUNK, "sample.rolling_first_chunk",
                  " or ".join(ROLLING_FIRST_CHUNK)),
                 (0 <= self.rolling_noise <= 1, "sample.rolling_noise",
                  "in [0, 1] (0: every chunk from Gaussian noise)"))


@dataclass
class TrainConfig(Section):
    """Optimisation and distribution. Progress is counted in clips so runs survive rescaling."""

    positive = ("num_workers", "cpus_per_worker", "global_batch", "total_clips", "lr",
                "checkpoint_every_clips", "log_every_steps", "torch_threads")
    non_negative = ("warmup_clips", "weight_decay", "grad_clip", "max_failures", "min_workers")
    fractions = ("min_lr_ratio", "ema_decay")

    stage: str = "teacher"
    num_workers: int = 2
    # Elastic when > 0: Ray Train starts with as many workers as fit, at least this many and at
    # most num_workers, and grows the group as nodes join; a restart on another count reshards
    # the checkpoint. 0: exactly num_workers.
    min_workers: int = 0
    use_gpu: bool = False
    cpus_per_worker: int = 1
    zero_stage: int = 3
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    # Recompute each block's activations in backward instead of keeping them (trained networks).
    activation_checkpointing: bool = False
    # ZeRO-3 offload to host memory: Adam states + fp32 masters; and the parameters themselves.
    offload_optimizer: bool = False
    offload_params: bool = False
    global_batch: int = 16
    total_clips: int = 512
    lr: float = 5e-4  # the teacher's; distillation stages set their own (dmd.lr, adversarial.lr)
    warmup_clips: int = 64
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every_clips: int = 256
    # Published exports (<run>/exports/<name>, what generation and Serve load): "bfloat16" halves
    # them. Checkpoints keep the fp32 EMA, which a resume on another worker count restores from.
    export_dtype: str = "float32"
    log_every_steps: int = 5
    max_failures: int = 1
    # Node preemptions (a spot instance reclaimed) a run may restart from, -1 without limit;
    # they do not use up max_failures. On Ray's notice the run checkpoints at once.
    max_preemption_failures: int = -1
    torch_threads: int = 1

    @property
    def worker_counts(self) -> range:
        """Every number of workers the run may train on."""
        return range(self.min_workers or self.num_workers, self.num_workers + 1)

    def check(self, cfg: Config) -> None:
        counts = self.worker_counts
        _require(
            (self.zero_stage in (0, 1, 2, 3), "train.zero_stage", "0, 1, 2 or 3"),
            (not (self.offload_optimizer or self.offload_params) or self.zero_stage == 3,
             "train.zero_stage", "3 when train.offload_optimizer or train.offload_params is on"),
            (self.max_preemption_failures >= -1, "train.max_preemption_failures",
             "≥ 0, or -1 for no limit"),
            (self.min_workers <= self.num_workers, "train.min_workers",
             f"≤ train.num_workers={self.num_workers} (0: not elastic)"),
            (all(self.global_batch % n == 0 for n in counts), "train.global_batch",
             f"divisible by every worker count the run may have ({_counts(counts)}): a "
             f"multiple of {math.lcm(*counts)}"),
            (self.precision in ("auto", "fp32", "bf16"), "train.precision",
             "'auto', 'fp32' or 'bf16'"),
            (self.export_dtype in ("float32", "bfloat16"), "train.export_dtype",
             "'float32' or 'bfloat16'"))


REGION = "[top, bottom, left, right] fractions with top < bottom and left < right"


def _is_region(r: list[float]) -> bool:
    """A box within a frame as [top, bottom, left, right] fractions of its height and width."""
    return len(r) == 4 and 0 <= r[0] < r[1] <= 1 and 0 <= r[2] < r[3] <= 1


def _counts(counts: range) -> str:
    return str(counts.start) if len(counts) == 1 else f"{counts.start}–{counts.stop - 1}"


@dataclass
class DMDConfig(Section):
    """Stage `dmd` (TurboTalk §3.1, DMD2): distribution matching from a frozen teacher."""

    positive = ("lr", "critic_lr")
    non_negative = ("audio_scale", "ref_scale")

    teacher: str = ""  # teacher checkpoint or run (folder or s3://); required by this stage
    student_steps: int = 4  # the student's Euler steps; 1 gives direct 1-step DMD
    critic_steps: int = 5  # two-time-scale: fake-score updates per generator update
    lr: float = 1.0e-4  # generator
    critic_lr: float = 2.0e-4
    audio_scale: float = 2.0  # multi-CFG baked into the real score (FADA Eq. 9)
    ref_scale: float = 1.0
    backward_simulation: bool = True  # student's own trajectory makes its intermediate inputs

    def check(self, cfg: Config) -> None:
        _require((self.student_steps >= 1, "dmd.student_steps", "≥ 1"),
                 (self.critic_steps >= 1, "dmd.critic_steps", "≥ 1"))


@dataclass
class AdversarialConfig(Section):
    """Stage `adversarial` (TurboTalk §3.2–3.4): progressive step reduction with a GAN."""

    positive = ("clips_per_phase", "lr", "disc_lr")
    non_negative = ("warmup_steps", "reg_sigma")

    student: str = ""  # the DMD student (initialises the generator; the self-compare reference)
    # The student's Euler steps and, for one that samples in time windows (a FADA student),
    # its steps per window: read from its export when the stage starts (0, []: not yet read).
    student_steps: int = 0
    student_windows: list[int] = field(default_factory=list)
    # A student that takes guidance scales as an input (a FADA student) trains at scales drawn
    # per sample from these ranges, so the 1-step generator's scales still act.
    audio_scale_range: list[float] = field(default_factory=lambda: [1.0, 4.0])
    ref_scale_range: list[float] = field(default_factory=lambda: [1.0, 2.0])
    teacher: str = ""  # discriminator backbone; empty: the teacher the student was distilled from
    phases: list[int] = field(default_factory=lambda: [3, 2, 1])  # [1]: direct 4→1
    clips_per_phase: int = 4096  # clips per phase (train.total_clips is unused by this stage)
    # The last phase's clips; 0: clips_per_phase. The last (1-step) phase is the hardest; raising
    # this and --resume trains a finished run's last phase on, on the same schedule.
    last_phase_clips: int = 0
    loss: str = "r3gan"  # r3gan (relativistic), hinge or gan (non-saturating)
    dynamic_timesteps: bool = True
    warmup_steps: int = 500  # dynamic-timestep warm-up, in generator updates, per phase
    # Discriminator-only steps at the start of each phase (generator frozen): the zero-initialised
    # head first learns to tell real from generated. Before that its gradients are near zero and
    # noise, which Adam's normalisation turns into full-size generator steps in random directions
    # (reports/distill-notes.md: without it the 3-step student's Fréchet distance tripled).
    disc_warmup_steps: int = 20
    disc_steps: int = 1  # discriminator updates per generator update after it (TTUR, as DMD2)
    self_compare_weight: float = 0.5  # λ; 0 disables self-compare
    # Not in TurboTalk: an MSE (mouth-weighted as flow.mouth_weight) pulling the generator's
    # sample towards the reference's sample of the same noise (progressive distillation's
    # regression target), an anchor that does not depend on how much the discriminator has
    # learned yet. With it and γ = 10 the 1-step keeps the teacher's lip-sync and Fréchet
    # distance; with neither the discriminator ran away in the 2→1 phase (reports/distill.md).
    # 0 disables.
    regression_weight: float = 10.0
    # Weight of the generator's adversarial terms (its GAN loss and, with λ, the self-compare
    # one). 0 leaves the regression as the generator's only objective (the discriminator still
    # trains and is logged): the ablation that asks what the GAN adds.
    gan_weight: float = 1.0
    reg_weight: float = 10.0  # R1/R2 strength (γ); 0 disables
    reg_sigma: float = 0.05  # noise perturbation that approximates the gradient penalty
    # A slow generator and a fast discriminator: the generator should move only where the
    # discriminator has learned something (the same notes).
    lr: float = 2.0e-5  # generator
    disc_lr: float = 1.0e-3
    # The trunk sees its input at t ~ U[low, high]: near-clean features, since added noise hides
    # the fine texture a few-step generator gets wrong.
    disc_timestep: list[float] = field(default_factory=lambda: [0.0, 0.1])

    def phase_clips(self) -> list[int]:
        """Clips each phase trains on."""
        return [self.clips_per_phase] * (len(self.phases) - 1) + [
            self.last_phase_clips or self.clips_per_phase]

    def check(self, cfg: Config) -> None:
        batch, shortest = cfg.train.global_batch, min(self.phase_clips())
        _require(
            (self.loss in ("r3gan", "hinge", "gan"), "adversarial.loss",
             "'r3gan', 'hinge' or 'gan'"),
            (bool(self.phases) and self.phases[-1] >= 1
             and all(a > b for a, b in zip(self.phases, self.phases[1:])),
             "adversarial.phases", "decreasing step counts ≥ 1, e.g. [3, 2, 1]"),
            (self.student_steps == 0 or self.phases[0] < self.student_steps,
             "adversarial.phases", f"to start below the student's {self.student_steps} steps "
             f"({self.student})"),
            (len(self.disc_timestep) == 2
             and 0 <= self.disc_timestep[0] <= self.disc_timestep[1] <= 1,
             "adversarial.disc_timestep", "[low, high] with 0 ≤ low ≤ high ≤ 1"),
            (self.disc_steps >= 1, "adversarial.disc_steps", "≥ 1"),
            *[(len(r) == 2 and 0 <= r[0] <= r[1], f"adversarial.{k}",
               "[low, high] with 0 ≤ low ≤ high")
              for k, r in (("audio_scale_range", self.audio_scale_range),
                           ("ref_scale_range", self.ref_scale_range))],
            *[(getattr(self, k) >= 0, f"adversarial.{k}", "≥ 0 (0: off)")
              for k in ("self_compare_weight", "regression_weight", "gan_weight", "reg_weight",
                        "student_steps")],
            (self.gan_weight + self.regression_weight > 0, "adversarial.gan_weight",
             "> 0 while adversarial.regression_weight is 0 (else the generator has no objective)"),
            (self.last_phase_clips >= 0, "adversarial.last_phase_clips",
             "≥ 0 (0: clips_per_phase)"),
            (0 <= self.disc_warmup_steps * batch < shortest, "adversarial.disc_warmup_steps",
             f"≥ 0 and fewer than a phase's {shortest} clips / train.global_batch={batch} steps "
             "(else the generator never trains)"))


@dataclass
class FADAConfig(Section):
    """Stage `fada` (FADA §3): windowed flow distillation (PeRFlow) from a frozen teacher, with
    a ground-truth loss on lower tiers weighted per sample, and the teacher's multi-CFG
    distilled into the student's guidance input (one evaluation per step)."""

    positive = ("windows", "solver_steps", "lr", "guidance_lr_scale")
    non_negative = ("gt_weight_peak", "gt_rise")

    teacher: str = ""  # teacher checkpoint or run (folder or s3://); required by this stage
    windows: int = 4  # equal time windows the flow is straightened in
    # The exported student's Euler steps per window, from noise. FADA-Fast: 6 steps, 2 in each
    # of the two end windows.
    steps_per_window: list[int] = field(default_factory=lambda: [2, 1, 1, 2])
    solver_steps: int = 6  # teacher Euler steps that solve one window's end point (Eq. 2)
    lr: float = 1.0e-4
    # tokens | layer | scalar: the student learns the teacher's guided flow at scales drawn per
    # sample and takes them as an input (model.guidance_input); none: it learns the unguided
    # flow under condition dropout and samples with multi-CFG, 3 evaluations per step
    # (FADA-Balanced).
    cfg_mode: str = "tokens"
    # The guidance input's learning rate ÷ fada.lr. It starts at zero and Adam moves a weight by
    # about its rate per update, so a short run leaves it near zero: a student that ignores the
    # scales it is given (reports/fada.md, Figures 3–4).
    guidance_lr_scale: float = 1.0
    audio_scale_range: list[float] = field(default_factory=lambda: [1.0, 4.0])
    ref_scale_range: list[float] = field(default_factory=lambda: [1.0, 2.0])
    # Mixed supervision (§3.2): a ground-truth loss on clips of `gt_tiers`, weighted per sample
    # by r = its loss ÷ its teacher-supervised loss. adaptive: rises as
    # gt_weight_peak·(r/gt_peak_ratio)^gt_rise up to gt_peak_ratio, falls linearly to 0 at
    # gt_dead_ratio (clips far from the teacher are likelier bad than valuable); unlimited: the
    # rise only; fixed: gt_weight_peak for every clip; off: teacher supervision alone.
    gt_weighting: str = "adaptive"
    gt_tiers: list[str] = field(default_factory=lambda: ["moderate"])
    gt_weight_peak: float = 0.25
    gt_rise: float = 0.2
    gt_peak_ratio: float = 30.0
    gt_dead_ratio: float = 100.0

    def check(self, cfg: Config) -> None:
        _require(
            (len(self.steps_per_window) == self.windows and min(self.steps_per_window) >= 1,
             "fada.steps_per_window", f"fada.windows={self.windows} step counts ≥ 1"),
            (self.cfg_mode in ("tokens", "layer", "scalar", "none"), "fada.cfg_mode",
             "'tokens', 'layer', 'scalar' or 'none'"),
            *[(len(r) == 2 and 0 <= r[0] <= r[1], f"fada.{k}", "[low, high] with 0 ≤ low ≤ high")
              for k, r in (("audio_scale_range", self.audio_scale_range),
                           ("ref_scale_range", self.ref_scale_range))],
            (self.gt_weighting in ("adaptive", "unlimited", "fixed", "off"),
             "fada.gt_weighting", "'adaptive', 'unlimited', 'fixed' or 'off'"),
            (set(self.gt_tiers) <= set(TIERS), "fada.gt_tiers", f"a list of {', '.join(TIERS)}"),
            (0 < self.gt_peak_ratio < self.gt_dead_ratio, "fada.gt_peak_ratio",
             "> 0 and below fada.gt_dead_ratio"))


OSA_LCM_PHASES = ("adv_lcm", "eft", "ft")


@dataclass
class OSALCMConfig(Section):
    """Stage `osa_lcm` (OSA-LCM §4): adversarial latent consistency distillation from a frozen
    teacher (phase `adv_lcm`), then the editing fine-tune (phase `eft`; phase `ft` is the
    paper's plain fine-tune baseline, see the stage). The paper's loss
    weights and thresholds are lost from our copy of its text; these defaults are LCM's where it
    has one (Huber c, target decay) and ours otherwise."""

    positive = ("steps", "discretisation_steps", "huber_c", "lr", "disc_lr", "disc_width")
    non_negative = ("audio_scale", "fragment_frames", "ref_scale", "adv_weight", "motion_weight",
                    "disc_noise_iterations")
    fractions = ("rolling_noise",)

    teacher: str = ""  # teacher checkpoint or run; required (the ODE and the discriminator)
    phase: str = "adv_lcm"  # adv_lcm | eft | ft
    student: str = ""  # eft, ft: the Adv-LCM export fine-tuned (adv_lcm starts from the teacher)
    steps: int = 1  # the exported student's sampling steps
    discretisation_steps: int = 50  # the teacher ODE's grid from t = 1 to 0
    skip: int = 5  # grid points from t_{n+k} to t_n (the skipping interval k)
    huber_c: float = 0.001  # pseudo-Huber threshold (LCM's)
    audio_scale: float = 2.0  # the teacher's multi-CFG on its ODE step (FADA Eq. 9)
    ref_scale: float = 1.0
    target_decay: float = 0.95  # the target network: EMA of the student (LCM's)
    lr: float = 1.0e-5
    disc_lr: float = 1.0e-4
    adv_weight: float = 0.1  # the generator's adversarial loss (Eq. 5); 0: plain LCM
    motion_weight: float = 1.0  # the motion loss (Eq. 7); 0: off
    disc_layers: list[int] = field(default_factory=lambda: [1, 3])  # teacher blocks read
    disc_width: int = 64  # channels of the discriminator's 3D-convolution heads
    # The discriminator sees real and generated data noised to t ~ U(0, bound); the bound grows
    # from the first value to the second over `disc_noise_iterations` discriminator updates
    # (the progressive forward process, Eq. 6); 0 iterations: the second from the start.
    disc_noise: list[float] = field(default_factory=lambda: [0.05, 0.3])
    disc_noise_iterations: int = 200
    # Phase eft (§4.2): the next fragment is an edit of the previous one noised to t ~ U[low,
    # high] (SDEdit). A training window holds both: data.frames must be 2·F − M for chunks of
    # F = `fragment_frames` frames overlapping by M = data.motion_frames. The export samples
    # chunks of F frames with combined rolling sampling at `rolling_noise`.
    eft_timestep: list[float] = field(default_factory=lambda: [0.5, 0.9])
    # Share of windows trained as a video's start: no past, the reference latent repeated as
    # the previous fragment (the paper: "the probability without any past frames is extremely
    # low"; its value is lost from our copy).
    eft_reference_prob: float = 0.05
    fragment_frames: int = 8
    rolling_noise: float = 0.7

    def check(self, cfg: Config) -> None:
        _require(
            (self.phase in OSA_LCM_PHASES, "osa_lcm.phase", " or ".join(OSA_LCM_PHASES)),
            (self.phase == "adv_lcm" or bool(self.student) or cfg.train.stage != "osa_lcm",
             "osa_lcm.student", f"the Adv-LCM export that phase {self.phase} fine-tunes "
             "(--student)"),
            (1 <= self.skip < self.discretisation_steps, "osa_lcm.skip",
             "in [1, osa_lcm.discretisation_steps)"),
            (len(self.disc_noise) == 2 and 0 <= self.disc_noise[0] <= self.disc_noise[1] <= 1,
             "osa_lcm.disc_noise", "[start, end] with 0 ≤ start ≤ end ≤ 1"),
            (bool(self.disc_layers), "osa_lcm.disc_layers", "a non-empty list of block indices"),
            (0 < self.target_decay < 1, "osa_lcm.target_decay", "in (0, 1)"),
            (len(self.eft_timestep) == 2
             and 0 < self.eft_timestep[0] <= self.eft_timestep[1] <= 1, "osa_lcm.eft_timestep",
             "[low, high] with 0 < low ≤ high ≤ 1"),
            (0 <= self.eft_reference_prob <= 1, "osa_lcm.eft_reference_prob", "in [0, 1]"))

    def check_eft_window(self, cfg: Config) -> None:
        """Training phases eft, ft: a window holds the previous fragment and the next (its export
        samples single fragments, so this is no rule of the config itself)."""
        _require((cfg.data.frames == 2 * self.fragment_frames - cfg.data.motion_frames,
                  "data.frames", f"2 × osa_lcm.fragment_frames − data.motion_frames = "
                  f"{2 * self.fragment_frames - cfg.data.motion_frames} for phase {self.phase} "
                  "(a window "
                  "holds the previous fragment and the next)"))


@dataclass
class ValidationConfig(Section):
    """Held-out scoring while a stage trains: lip-sync and Fréchet distance of the network the
    stage exports, on the data's test split (the mouth reader where there are labels, the
    lip-sync expert, sync.weights, on footage). It is what Tune's early stopping reads, since no
    training loss of an adversarial stage says how good the samples are; and what the collapse
    guards watch (README: Collapse guards)."""

    every_clips: int = 0  # 0: off; else also before the first and after the last step
    clips: int = 4  # held-out clips generated per validation
    steps: int = 0  # sampling steps; 0: the exported model's own
    reader: str = "runs/mouth_reader.safetensors"  # mouth reader (trained once if missing)
    reader_clips: int = 160  # SynthTalk clips to train a missing reader on
    sync_weight: float = 1.0  # val_score = val_frechet + sync_weight × (1 − val_sync); lower wins
    # Collapse guards (onestep.evaluation.collapse): the samples against the teacher's samples of
    # the same clips (the clips themselves for a stage without a teacher). A check arms once it
    # has passed; an armed check that fails is a collapse.
    on_collapse: str = "warn"  # warn | stop (end the stage) | rollback (to the last pass)
    min_motion_ratio: float = 0.25  # frame-to-frame motion ÷ the reference's: static video
    min_std_ratio: float = 0.5  # spatial std ÷ the reference's: solid colour
    max_clipped_excess: float = 0.1  # share of values at 0/255 above the reference's: oversaturated
    max_color_distance: float = 0.4  # colour-histogram total variation to the reference
    min_sync_ratio: float = 0.3  # lip-sync ÷ the reference's: lip-sync lost
    rollback_lr_scale: float = 0.5  # learning rates × this after each rollback
    max_rollbacks: int = 3  # then the stage stops

    def check(self, cfg: Config) -> None:
        _require(
            (self.every_clips >= 0, "validation.every_clips", "≥ 0 (0: off)"),
            (self.clips >= 2, "validation.clips",
             "≥ 2 (the shuffled-audio floor pairs each clip with another)"),
            (self.steps >= 0, "validation.steps", "≥ 0 (0: the model's own)"),
            (self.on_collapse in ("warn", "stop", "rollback"), "validation.on_collapse",
             "'warn', 'stop' or 'rollback'"),
            (0 < self.rollback_lr_scale <= 1, "validation.rollback_lr_scale", "in (0, 1]"),
            (self.max_rollbacks >= 0, "validation.max_rollbacks", "≥ 0"))


@dataclass
class SweepConfig(Section):
    """Ray Tune over any stage (tune/sweep.py), early-stopped by ASHA on validation's
    `val_score`. `space` maps dotted config keys to the values tried: grid search runs every
    combination; random and Bayesian search sample a float key uniformly between its smallest
    and largest value and pick any other key's value from its list. The default is TurboTalk's
    Table 4 on the adversarial stage: the self-compare weight λ × the dynamic-timestep warm-up."""

    name: str = "sweep-adversarial"  # experiment folder under run.root
    space: dict[str, list] = field(default_factory=lambda: {
        "adversarial.self_compare_weight": [0.0, 0.25, 0.5, 1.0, 2.0],
        "adversarial.warmup_steps": [20, 100]})
    search: str = "grid"  # grid | random | bayes (Optuna's TPE)
    num_samples: int = 8  # trials for random and bayes (grid runs every combination once)
    scheduler: str = "asha"  # asha | none
    grace_clips: int = 0  # ASHA: clips before a trial can be stopped; 0: a quarter of a trial
    max_concurrent: int = 0  # 0: as many trials as the cluster's CPUs (or GPUs) fit

    def check(self, cfg: Config) -> None:
        _require(
            (self.search in ("grid", "random", "bayes"), "sweep.search",
             "'grid', 'random' or 'bayes'"),
            (self.scheduler in ("asha", "none"), "sweep.scheduler", "'asha' or 'none'"),
            (self.num_samples >= 1, "sweep.num_samples", "≥ 1"),
            (self.grace_clips >= 0 and self.max_concurrent >= 0,
             "sweep.grace_clips/max_concurrent", "≥ 0 (0: automatic)"))
        self.space = _checked_space(self.space)


@dataclass
class SyncConfig(Section):
    """The lip-sync expert (onestep.sync): an audio-visual embedding pair scored as SyncNet is
    (LSE-C confidence, LSE-D distance, offset). `onestep`: the small expert `jobs/train_sync.py`
    trains on mouth crops; `syncnet_v2`: the original SyncNet (224×224 faces), for numbers
    comparable with papers, from weights converted once by jobs/convert_weights.py syncnet."""

    positive = ("size", "width", "embed_dim", "max_offset", "temperature")
    non_negative = ("train_shift",)

    kind: str = "onestep"
    weights: str = ""  # an export of jobs/train_sync.py, or a converted syncnet_v2 file
    # onestep's expert: the mouth crop it sees ([top, bottom, left, right] fractions of a face
    # crop), the crop's side in pixels, its width and embedding size.
    mouth_region: list[float] = field(default_factory=lambda: [0.45, 0.95, 0.2, 0.8])
    size: int = 32
    width: int = 32
    embed_dim: int = 128
    max_offset: int = 15  # frames searched each way when scoring (SyncNet's evaluations: 15)
    # Training: audio windows shifted up to this many frames are the negatives (and clips of
    # other videos in the batch); the temperature of the InfoNCE loss over cosine similarities.
    train_shift: int = 8
    temperature: float = 0.07

    def check(self, cfg: Config) -> None:
        """Also what stage sync needs of the data and of validation."""
        sync_stage = cfg.train.stage == "sync"
        _require(
            (self.kind in ("onestep", "syncnet_v2"), "sync.kind", "'onestep' or 'syncnet_v2'"),
            (_is_region(self.mouth_region), "sync.mouth_region",
             f"{REGION}, e.g. [0.45, 0.95, 0.2, 0.8]"),
            (not sync_stage or (cfg.audio.encoder == "mfcc"
                                and cfg.data.frames >= SYNC_FRAMES + 2 * self.train_shift),
             "data.frames", f"≥ {SYNC_FRAMES} + 2 × sync.train_shift with audio.encoder mfcc "
             "for stage sync (jobs/train_sync.py sets both)"),
            (not sync_stage or cfg.validation.every_clips == 0, "validation.every_clips",
             "0 for stage sync (it reports its own offset accuracy)"))


@dataclass
class RunConfig(Section):
    """Where the run lives: checkpoints, metrics and exports go under `<root>/<name>`."""

    name: str = ""  # empty: "<stage>-<preset>", e.g. dmd-tiny
    root: str = "runs"  # folder or s3://bucket/prefix
    s3_endpoint_url: str = ""  # S3-compatible store; empty uses AWS_ENDPOINT_URL or AWS itself
    # A checkpoint of another run of the same stage to start from (its step, optimiser and EMA
    # state) instead of from scratch: a branch that probes a change from a point of a run. Once
    # this run has checkpoints of its own, they take precedence.
    branch_from: str = ""


@dataclass
class Config:
    synth: SynthConfig = field(default_factory=SynthConfig)
    data: DataConfig = field(default_factory=DataConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dmd: DMDConfig = field(default_factory=DMDConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    fada: FADAConfig = field(default_factory=FADAConfig)
    osa_lcm: OSALCMConfig = field(default_factory=OSALCMConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def resolution(self) -> int:
        return self.synth.resolution

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> Config:
        """Every section's value ranges, then each section's own checks (cross-field rules no
        single field's type can express)."""
        sections = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]
        for name, section in sections:
            section.check_ranges(name)
        for _, section in sections:
            section.check(self)
        return self


def _checked_space(space: dict[str, list]) -> dict[str, list]:
    """sweep.space with every value as its key's type (YAML reads `1e-3` as a string); a
    ConfigError names a key that is no config field, or a value it does not take."""
    if not space:
        raise ConfigError("sweep.space: expected a mapping of dotted config keys to lists of "
                          "values, e.g. {adversarial.self_compare_weight: [0, 0.5, 1]}")
    for key, values in space.items():
        try:
            field_type(key)
        except ConfigError as e:
            raise ConfigError(f"sweep.space: {e}") from None
        if not values:
            raise ConfigError(f"sweep.space[{key}]: expected a non-empty list of values")
    return {key: [_coerce(v, field_type(key), f"sweep.space[{key}][{i}]")
                  for i, v in enumerate(values)] for key, values in space.items()}


def _field_types(cls: type) -> dict[str, Any]:
    """A section's fields and their types (its range lists are class attributes, not keys)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check a YAML value against a dataclass field type, allowing int→float only."""
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {typ.__name__} fields, got {value!r}")
        return _build(typ, value, key + ".")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_type, item = typing.get_args(typ)
        return {_coerce(k, key_type, key): _coerce(v, item, f"{key}[{k}]")
                for k, v in value.items()}
    if typ is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return list(value)
    if origin is list:
        (item,) = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value}")
    if typ is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if typ in (float, str) and not isinstance(value, typ):
        raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    types = _field_types(cls)
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s}; valid keys under "
            f"{prefix.rstrip('.') or 'the top level'}: {', '.join(types)}")
    kwargs = {k: _coerce(v, types[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], patch: dict[str, Any], cls: type | None = None
           ) -> dict[str, Any]:
    """`patch` over `base`; sections (dataclass fields of `cls`) merge key by key, every other
    value, a mapping such as sweep.space included, is replaced as a whole."""
    cls = cls or Config
    types = _field_types(cls)
    out = dict(base)
    for k, v in patch.items():
        section = types.get(k)
        merge = dataclasses.is_dataclass(section) and isinstance(out.get(k), dict)
        out[k] = _merge(out[k], v, section) if merge and isinstance(v, dict) else v
    return out


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A config saved by an earlier onestep, in today's keys: exports and checkpoints outlive the
    code that wrote them. (sweep.self_compare_weights and sweep.warmup_steps became sweep.space.)
    """
    sweep = data.get("sweep")
    if isinstance(sweep, dict) and {"self_compare_weights", "warmup_steps"} & set(sweep):
        sweep = dict(sweep)
        space = {"adversarial.self_compare_weight": sweep.pop("self_compare_weights", None),
                 "adversarial.warmup_steps": sweep.pop("warmup_steps", None)}
        sweep.setdefault("space", {k: v for k, v in space.items() if v is not None})
        data = {**data, "sweep": sweep}
    return data


def from_dict(data: dict[str, Any]) -> Config:
    return _build(Config, _merge(Config().to_dict(), _upgrade(data))).validate()


def field_type(key: str) -> Any:
    """The type of a dotted config key (`adversarial.lr` → float); a ConfigError names a key
    that is no field, or a whole section."""
    cls: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        types = _field_types(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in types:
            where = ".".join(parts[:i]) or "the top level"
            raise ConfigError(f"unknown config key {key}; valid keys under {where}: "
                              f"{', '.join(types)}")
        cls = types[part]
    if dataclasses.is_dataclass(cls):
        raise ConfigError(f"{key} is a section; name one of its keys: "
                          f"{', '.join(_field_types(cls))}")
    return cls


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of `cfg` with dotted keys set (`{"adversarial.lr": 1e-4}`), checked as --set is."""
    patch: dict[str, Any] = {}
    for key, value in values.items():
        field_type(key)
        node = patch
        *sections, name = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[name] = value
    return from_dict(_merge(cfg.to_dict(), patch))


class YAMLLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans, true and false only. PyYAML reads YAML 1.1, where on,
    off, yes and no are booleans too, so `fada.gt_weighting=off` reached a text field as
    False and was refused."""


YAMLLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
YAMLLoader.add_implicit_resolver("tag:yaml.org,2002:bool",
                                 re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))


def read_yaml(text: str | bytes) -> Any:
    """Config YAML (a file, a saved config, an override's value), see YAMLLoader."""
    return yaml.load(text, Loader=YAMLLoader)  # a SafeLoader: builds plain data only


def parse_override(text: str) -> dict[str, Any]:
    """`model.depth=4` → {"model": {"depth": 4}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. model.depth=4")
    key, raw = text.split("=", 1)
    value = read_yaml(raw) if raw.strip() else ""
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def resolve_config_path(name_or_path: str) -> Path:
    """A preset name (`tiny`, `small`, `base`) or a YAML file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown config preset {name_or_path!r}; presets: {', '.join(names)} "
                          "(or pass a .yaml path)")
    return preset


def _blame(file_data: dict, path: Path) -> str:
    """Who wrote a value the config refuses: the file, unless the file alone is valid (then an
    override broke it)."""
    try:
        from_dict(file_data)
    except ConfigError:
        return str(path)
    return f"--set (on top of {path.name})"


def load_config(name_or_path: str = "tiny", overrides: list[str] | None = None) -> Config:
    """Load a preset or YAML file, apply dotted overrides, validate."""
    path = resolve_config_path(name_or_path)
    try:
        data = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    merged = data
    for text in overrides or []:
        merged = _merge(merged, parse_override(text))
    try:
        cfg = from_dict(merged)
    except ConfigError as e:
        raise ConfigError(f"{_blame(data, path)}: {e}") from None
    if not cfg.run.name:
        cfg.run.name = f"{cfg.train.stage}-{path.stem}"
    return cfg
