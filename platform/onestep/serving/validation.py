"""Validate a generation request before any model work. Pure: no Ray, no HTTP framework.

Every rejection is a `RequestError` with the HTTP status and a message that names the field and
what was expected, so the endpoint can answer with a JSON body a client can act on.
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from onestep.media import AudioTooLong, MediaError, load_audio, load_image
from onestep.serving.isolation import ChildLimits, IsolationError, run_isolated

IMAGE_FORMATS = {"PNG", "JPEG", "WEBP"}
AUDIO_CONTAINERS = {"wav", "flac", "mp3", "ogg", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"}
FILES = ("image", "audio")
PARAMETERS = ("steps", "seed", "audio_scale", "ref_scale", "fps", "resolution")
SESSION_PARAMETERS = ("steps", "seed", "audio_scale", "ref_scale", "sample_rate", "audio_format")
SAMPLE_RATES = {8000, 16000, 22050, 24000, 32000, 44100, 48000}  # a live session's PCM16
# A live session's audio messages: PCM16 mono at sample_rate, or a browser MediaRecorder's
# audio/webm;codecs=opus pieces (Opus decodes at 48 kHz).
AUDIO_FORMATS = ("pcm16", "webm")
WEBM_RATE = 48000
SEED_RANGE = (0, 2 ** 31 - 1)
AUDIO_SCALE_RANGE = REF_SCALE_RANGE = (0.0, 20.0)
MIN_RESOLUTION = 16
# What the API documents as integer / number, and nothing else Python's int() and float() take
# ("1_000", " 7", "nan", "inf", other scripts' digits), short enough to parse in constant time.
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_NUMBER = re.compile(r"[+-]?([0-9]{1,18}(\.[0-9]{0,18})?|\.[0-9]{1,18})([eE][+-]?[0-9]{1,3})?")


class RequestError(ValueError):
    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message


@dataclass(frozen=True)
class Limits:
    max_image_mb: float = 10.0
    max_image_megapixels: float = 50.0  # a 48 MP phone photo passes; decoded RGBA ≤ 200 MB
    max_audio_mb: float = 20.0
    max_audio_seconds: float = 60.0
    max_steps: int = 50
    min_fps: int = 5
    max_fps: int = 60
    max_resolution: int = 1024
    # Requests accepted and not yet answered, per ingress replica; one more is answered 429 with
    # Retry-After instead of queueing behind work it would wait minutes for.
    max_pending_requests: int = 48
    # The child process that decodes a request's uploads (validate_isolated): heap it may add,
    # and CPU seconds; past either the request is answered 422 and the child is gone.
    decode_memory_mb: int = 2048
    decode_seconds: float = 20.0
    # resolution² × fps × seconds of a request's video, in millions: 400 is 10 s at 1024² and
    # 40 fps, or a minute at 512² and 25 fps. Frames are resized and encoded chunk by chunk,
    # so this bounds a request's resize and encode time (and its answer's size), not memory.
    max_megapixel_frames: float = 400.0
    # A live session's binary messages (PCM16): 256 KB is 2.7 s at 48 kHz.
    max_audio_message_kb: int = 256


@dataclass
class GenerationRequest:
    image: np.ndarray  # (H, W, 3) uint8 at the model resolution
    audio: np.ndarray  # mono float32 at the model sample rate
    steps: int | None
    seed: int | None
    audio_scale: float | None
    ref_scale: float | None
    fps: int
    resolution: int


@dataclass
class SessionRequest:
    """A live session's opening: the portrait, sampling overrides, the rate of its PCM16 sound."""

    image: np.ndarray  # (H, W, 3) uint8 at the model resolution
    steps: int | None
    seed: int | None
    audio_scale: float | None
    ref_scale: float | None
    sample_rate: int
    audio_format: str = "pcm16"


def _check_size(data: bytes, field: str, max_mb: float) -> None:
    if len(data) > max_mb * 2 ** 20:
        raise RequestError(413, field, f"{len(data) / 2 ** 20:.1f} MB is over the "
                                       f"{max_mb:g} MB limit")
    if not data:
        raise RequestError(422, field, "is empty")


def _image_format(data: bytes, max_megapixels: float) -> str:
    """The format, from the header alone: a 1 MB PNG can claim 20000×20000 pixels (1.6 GB
    decoded), so the size is checked before anything is decoded."""
    try:
        with warnings.catch_warnings():  # PIL warns above its own bomb limit; ours is lower
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise RequestError(413, "image", f"claims over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} "
                                         f"megapixels; the limit is {max_megapixels:g}") from None
    except (UnidentifiedImageError, OSError):
        raise RequestError(415, "image", "is not a readable image; send PNG, JPEG or "
                                         "WebP") from None
    w, h = header.size
    if w * h > max_megapixels * 1e6:
        raise RequestError(413, "image", f"{w}×{h} pixels is over the {max_megapixels:g} "
                                         "megapixel limit")
    return header.format or ""


def _duration_limit(limits: Limits, resolution: int, fps: int) -> tuple[float, str]:
    """The longest audio a request may send, and the limit that sets it: the duration limit, or
    the work budget (resolution² × fps × duration: the pixels the request's video resizes and
    encodes) when that is tighter."""
    by_work = limits.max_megapixel_frames * 1e6 / (resolution ** 2 * fps)
    if by_work < limits.max_audio_seconds:
        return by_work, (f"the {limits.max_megapixel_frames:g} megapixel-frame work budget at "
                         f"{resolution}² pixels and {fps} fps")
    return limits.max_audio_seconds, f"the {limits.max_audio_seconds:g} s limit"


def _audio_container(data: bytes, max_seconds: float, limit: str) -> str:
    """The container, with the duration its header declares checked before decoding: a 3-hour
    FLAC of silence is 2 MB. (A header may not know or may lie: decoding stops at the limit.)"""
    try:
        with av.open(io.BytesIO(data)) as box:
            if not box.streams.audio:
                raise RequestError(415, "audio", "has no audio stream")
            declared = box.duration / av.time_base if box.duration is not None else 0.0
            if declared > max_seconds:
                raise RequestError(422, "audio", f"{declared:.1f} s (its header says) is over "
                                                 f"{limit}: at most {max_seconds:.1f} s")
            return box.format.name
    except av.error.FFmpegError:
        raise RequestError(415, "audio", "is not decodable audio; send WAV, FLAC, MP3, OGG or "
                                         "M4A") from None


def _number(value, field: str, kind, lo, hi):
    if value is None or value == "":
        return None
    pattern, name = (_INTEGER, "an integer") if kind is int else (_NUMBER, "a decimal number")
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise RequestError(422, field, f"expected {name}, got {str(value)[:40]!r}")
    number = kind(value)
    if not lo <= number <= hi:
        raise RequestError(422, field, f"must be in [{lo}, {hi}], got {number}")
    return number


def validate(image: bytes, audio: bytes, params: dict, limits: Limits, resolution: int,
             fps: int, sample_rate: int, stage=lambda field: None) -> GenerationRequest:
    """Check sizes, types, parameters and duration; decode the media. Raises RequestError.

    `stage(field)` is called before the untrusted bytes of `field` reach a decoder, so that a
    decoder crash (see validate_isolated) can be blamed on the right field."""
    _check_size(image, "image", limits.max_image_mb)
    _check_size(audio, "audio", limits.max_audio_mb)
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise RequestError(422, unknown[0], f"unknown parameter; expected {', '.join(PARAMETERS)}")
    steps = _number(params.get("steps"), "steps", int, 1, limits.max_steps)
    seed = _number(params.get("seed"), "seed", int, *SEED_RANGE)
    audio_scale = _number(params.get("audio_scale"), "audio_scale", float, *AUDIO_SCALE_RANGE)
    ref_scale = _number(params.get("ref_scale"), "ref_scale", float, *REF_SCALE_RANGE)
    out_fps = _number(params.get("fps"), "fps", int, limits.min_fps, limits.max_fps) or fps
    out_res = _number(params.get("resolution"), "resolution", int, MIN_RESOLUTION,
                      limits.max_resolution) or resolution
    if out_res % 2:
        raise RequestError(422, "resolution", f"must be even (H.264), got {out_res}")
    max_seconds, limit = _duration_limit(limits, out_res, out_fps)

    stage("image")
    fmt = _image_format(image, limits.max_image_megapixels)
    if fmt not in IMAGE_FORMATS:
        raise RequestError(415, "image", f"format {fmt} is not supported; send PNG, JPEG or WebP")
    stage("audio")
    container = _audio_container(audio, max_seconds, limit)
    if container not in AUDIO_CONTAINERS:
        raise RequestError(415, "audio", f"container {container!r} is not supported; send WAV, "
                                         "FLAC, MP3, OGG or M4A")
    try:
        wave = load_audio(audio, sample_rate, max_seconds=max_seconds)
    except AudioTooLong:
        raise RequestError(422, "audio", f"is over {limit}: at most {max_seconds:.1f} "
                                         "s") from None
    except MediaError as e:
        raise RequestError(422, "audio", str(e).split(": ", 1)[-1]) from None
    seconds = len(wave) / sample_rate
    if seconds < 1.0 / fps:
        raise RequestError(422, "audio", f"{seconds * 1000:.0f} ms is shorter than one frame")
    stage("image")
    try:
        picture = load_image(image, resolution)
    except MediaError as e:
        raise RequestError(422, "image", str(e).split(": ", 1)[-1]) from None
    return GenerationRequest(picture, wave, steps, seed, audio_scale, ref_scale, out_fps,
                             out_res)


def validate_session(image: bytes, params: dict, limits: Limits, resolution: int,
                     stage=lambda field: None) -> SessionRequest:
    """A session's portrait and parameters, checked as `validate` checks a request's."""
    _check_size(image, "image", limits.max_image_mb)
    unknown = sorted(set(params) - set(SESSION_PARAMETERS))
    if unknown:
        raise RequestError(422, unknown[0], "unknown parameter; expected "
                                            f"{', '.join(SESSION_PARAMETERS)}")
    audio_format = params.get("audio_format", "pcm16")
    if audio_format not in AUDIO_FORMATS:
        raise RequestError(422, "audio_format", f"expected one of {', '.join(AUDIO_FORMATS)}, "
                                                f"got {audio_format[:40]!r}")
    default_rate = WEBM_RATE if audio_format == "webm" else 16000
    rate = _number(params.get("sample_rate"), "sample_rate", int, 8000, 48000) or default_rate
    if rate not in SAMPLE_RATES:
        raise RequestError(422, "sample_rate", f"expected one of {sorted(SAMPLE_RATES)} Hz, got "
                                               f"{rate}")
    if audio_format == "webm" and rate != WEBM_RATE:
        raise RequestError(422, "sample_rate", f"webm (Opus) sound is {WEBM_RATE} Hz, got {rate}")
    request = SessionRequest(
        None, _number(params.get("steps"), "steps", int, 1, limits.max_steps),
        _number(params.get("seed"), "seed", int, *SEED_RANGE),
        _number(params.get("audio_scale"), "audio_scale", float, *AUDIO_SCALE_RANGE),
        _number(params.get("ref_scale"), "ref_scale", float, *REF_SCALE_RANGE), rate,
        audio_format)
    stage("image")
    fmt = _image_format(image, limits.max_image_megapixels)
    if fmt not in IMAGE_FORMATS:
        raise RequestError(415, "image", f"format {fmt} is not supported; send PNG, JPEG or WebP")
    try:
        request.image = load_image(image, resolution)
    except MediaError as e:
        raise RequestError(422, "image", str(e).split(": ", 1)[-1]) from None
    return request


def _checked_in_child(check, *args, stage) -> dict:
    """A check as isolation.run_isolated runs it: a RequestError becomes part of the answer."""
    try:
        return dataclasses.asdict(check(*args, stage=stage))
    except RequestError as e:
        return {"error": [e.status, e.field, e.message]}


def _isolated(check, limits: Limits, *args) -> dict:
    """`check(*args)` (validate or validate_session) with the decoders in a limited child
    process: a crash is a 415 and an overrun of memory or time a 422, both naming the field
    being decoded; the caller lives."""
    child = ChildLimits(memory_mb=limits.decode_memory_mb, cpu_s=int(limits.decode_seconds) + 1,
                        wall_s=2 * limits.decode_seconds)  # wall: room for a loaded machine
    try:
        answer = run_isolated(_checked_in_child, check, *args, limits=child)
    except IsolationError as e:
        field = e.stage if e.stage in FILES else "body"
        if e.crashed:
            raise RequestError(415, field, f"is not decodable (the decoder {e})") from None
        raise RequestError(422, field, f"is too expensive to decode: the decoder {e}") from None
    if "error" in answer:
        raise RequestError(*answer["error"])
    return answer


def validate_session_isolated(image: bytes, params: dict, limits: Limits,
                              resolution: int) -> SessionRequest:
    request = SessionRequest(**_isolated(validate_session, limits, image, params, limits,
                                         resolution))
    if request.image.shape != (resolution, resolution, 3):
        raise RequestError(415, "image", f"decoded to an unexpected shape {request.image.shape}")
    return request


def validate_isolated(image: bytes, audio: bytes, params: dict, limits: Limits,
                      resolution: int, fps: int, sample_rate: int) -> GenerationRequest:
    """validate() in a limited child process (`_isolated`)."""
    request = GenerationRequest(**_isolated(validate, limits, image, audio, params, limits,
                                            resolution, fps, sample_rate))
    if request.image.shape != (resolution, resolution, 3):
        raise RequestError(415, "image", f"decoded to an unexpected shape {request.image.shape}")
    if request.audio.ndim != 1:
        raise RequestError(415, "audio", f"decoded to an unexpected shape {request.audio.shape}")
    return request
