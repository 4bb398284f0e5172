"""The HTTP contract of the generation API: response models and the OpenAPI document.

The request bodies are multipart forms that the endpoint reads itself (so that it can check sizes
and types before decoding anything), which FastAPI cannot see. Their schema is built here from
the same `Limits` and parameter ranges that `validation.validate` enforces, and from the served
model's own defaults, so the document a client generator or an API fuzzer reads is exactly what
the server does. Pure: pydantic and dicts, no Ray, no HTTP framework.
"""

from __future__ import annotations

import copy

from pydantic import BaseModel, Field

from onestep.serving.validation import (
    AUDIO_FORMATS,
    AUDIO_SCALE_RANGE,
    FILES,
    MIN_RESOLUTION,
    PARAMETERS,
    REF_SCALE_RANGE,
    SAMPLE_RATES,
    SEED_RANGE,
    SESSION_PARAMETERS,
    WEBM_RATE,
    Limits,
)

GENERATE_ROUTES = {"/v1/generate": "video/mp4", "/v1/generate/stream": "video/mp2t"}
ERROR_STATUSES = {
    400: "Malformed request: not a multipart form, or its structure is broken.",
    401: "Missing or wrong bearer token.",
    413: "An upload, or the request body, is larger than the server's limit.",
    404: "No such session (closed, timed out, or its replica was lost).",
    415: "An upload is not a supported or decodable image / audio file.",
    422: "A field is missing, unknown or out of range; the error names it.",
    429: "The server has as many requests in progress as it accepts; retry after the "
         "`Retry-After` seconds.",
    500: "Generation failed; the server log has the details under the request id.",
}
IMAGE_TYPES = "image/png, image/jpeg, image/webp"
AUDIO_TYPES = "audio/wav, audio/flac, audio/mpeg, audio/ogg, audio/mp4, audio/webm"


class ErrorDetail(BaseModel):
    field: str = Field(description="the request field at fault (`image`, `steps`, "
                                   "`authorization`, `body`, `server`, …)")
    message: str = Field(description="what was wrong and what was expected")


class ErrorBody(BaseModel):
    """Every non-2xx answer of the API has this body."""

    error: ErrorDetail
    request_id: str = Field(description="also in the `X-Request-ID` header and the server log")


class ModelInfo(BaseModel):
    checkpoint: str
    stage: str = Field(description="the recipe stage that produced the weights")
    steps: int = Field(description="sampling steps used when a request does not set `steps`")
    resolution: int = Field(description="the model's frame size in pixels (square)")
    fps: int
    nfe_per_chunk: int = Field(description="network evaluations per generated chunk")
    chunk_frames: int
    motion_frames: int = Field(description="frames each chunk takes over from the one before")
    audio_scale: float
    ref_scale: float
    guidance_input: bool = Field(description="the model takes the guidance scales as an input "
                                 "(FADA): any scales cost one evaluation per step; otherwise "
                                 "scales other than 1 cost up to 3")
    seed: int = Field(description="noise seed used when a request does not set `seed`")
    sample_rate: int = Field(description="audio is resampled to this rate (Hz) for the model")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class SessionResponse(BaseModel):
    """A live session, opened: where to connect and what will come."""

    session_id: str = Field(description="names the generator replica holding the session")
    ws_url: str = Field(description="the session's WebSocket, relative to this server")
    fps: int
    sample_rate: int = Field(description="the rate of the PCM16 mono messages to send")
    audio_format: str = Field(description="what the socket's binary messages hold: pcm16 or "
                                          "webm")
    first_chunk_frames: int = Field(description="video frames in the first chunk")
    chunk_frames: int = Field(description="video frames in each later chunk")
    mime_type: str = Field(description="the stream's type for MediaSource.addSourceBuffer",
                           examples=['video/mp4; codecs="avc1.64000d, mp4a.40.2"'])


class Health(BaseModel):
    status: str = Field(examples=["ok"])


def error_responses(statuses) -> dict:
    """FastAPI `responses=` entries: each status with the shared error body."""
    return {s: {"model": ErrorBody, "description": ERROR_STATUSES[s]} for s in statuses}


def _mb(value: float) -> str:
    return f"{value:g} MB"


def _fields(limits: Limits, model: dict) -> dict:
    """Every form field of the API, as JSON Schema; `model` is the served model's `ModelInfo`
    as a dict: its settings are the defaults."""
    integer, number = {"type": "integer"}, {"type": "number"}
    properties = {
        "image": {"type": "string", "format": "binary", "contentMediaType": "image/*",
                  "description": f"The portrait: PNG, JPEG or WebP, at most "
                                 f"{_mb(limits.max_image_mb)} and "
                                 f"{limits.max_image_megapixels:g} megapixels; centre-cropped "
                                 "to a square, EXIF orientation applied."},
        "audio": {"type": "string", "format": "binary", "contentMediaType": "audio/*",
                  "description": f"The speech: WAV, FLAC, MP3, OGG, M4A or WebM, any sample "
                                 f"rate, mono or stereo, at most {_mb(limits.max_audio_mb)} and "
                                 f"{limits.max_audio_seconds:g} s, and resolution² × fps × "
                                 f"seconds at most {limits.max_megapixel_frames:g} million. "
                                 "The video is as long as it."},
        "steps": {**integer, "minimum": 1, "maximum": limits.max_steps,
                  "default": model["steps"], "description": "Sampling steps (the model's own "
                                                            "by default)."},
        "seed": {**integer, "minimum": SEED_RANGE[0], "maximum": SEED_RANGE[1],
                 "default": model["seed"], "description": "Noise seed: the same request and "
                                                          "seed give the same video."},
        "audio_scale": {**number, "minimum": AUDIO_SCALE_RANGE[0],
                        "maximum": AUDIO_SCALE_RANGE[1], "default": model["audio_scale"],
                        "description": "Audio guidance scale (multi-condition CFG, or the "
                                       "input of a model with guidance_input)."},
        "ref_scale": {**number, "minimum": REF_SCALE_RANGE[0], "maximum": REF_SCALE_RANGE[1],
                      "default": model["ref_scale"],
                      "description": "Reference (identity) guidance scale."},
        "fps": {**integer, "minimum": limits.min_fps, "maximum": limits.max_fps,
                "default": model["fps"], "description": "Frame rate of the returned video."},
        "resolution": {**integer, "minimum": MIN_RESOLUTION, "maximum": limits.max_resolution,
                       "multipleOf": 2, "default": model["resolution"],
                       "description": "Side of the returned square video in pixels (even, "
                                      "for H.264)."},
        "sample_rate": {**integer, "enum": sorted(SAMPLE_RATES),
                        "description": "Rate of the session's PCM16 mono audio messages (Hz); "
                                       f"16000 by default, {WEBM_RATE} (the only one) for "
                                       "webm."},
        "audio_format": {"type": "string", "enum": list(AUDIO_FORMATS), "default": "pcm16",
                         "description": "The socket's binary messages: PCM16 mono samples, or "
                                        "the pieces of a MediaRecorder's audio/webm;codecs=opus "
                                        "recording, in order."},
    }
    return properties


def _form(properties: dict, files: tuple[str, ...]) -> dict:
    return {
        "required": True,
        "content": {"multipart/form-data": {
            "schema": {"type": "object", "properties": properties,
                       "required": list(files), "additionalProperties": False},
            "encoding": {f: {"contentType": IMAGE_TYPES if f == "image" else AUDIO_TYPES}
                         for f in files},
        }},
    }


def generation_form(limits: Limits, model: dict) -> dict:
    """The multipart body of both generate routes, as JSON Schema (OpenAPI 3.1)."""
    fields = _fields(limits, model)
    return _form({k: fields[k] for k in (*FILES, *PARAMETERS)}, FILES)


def session_form(limits: Limits, model: dict) -> dict:
    """The multipart body of POST /v1/sessions."""
    fields = _fields(limits, model)
    return _form({k: fields[k] for k in ("image", *SESSION_PARAMETERS)}, ("image",))


def openapi_document(base: dict, limits: Limits, model: dict, auth: bool) -> dict:
    """FastAPI's generated document completed with what it cannot know: the multipart bodies
    (from the limits and the model), the binary responses, and the bearer-token scheme (only
    when the server requires a token, so the document says what this deployment does)."""
    doc = copy.deepcopy(base)
    for path, media_type in GENERATE_ROUTES.items():
        operation = doc["paths"][path]["post"]
        operation["requestBody"] = generation_form(limits, model)
        operation["responses"]["200"] = {
            "description": f"The video ({media_type}, H.264 + AAC), as long as the audio.",
            "headers": {"X-Request-ID": {"schema": {"type": "string"},
                                         "description": "also in the server log"}},
            "content": {media_type: {"schema": {"type": "string", "format": "binary",
                                                "contentMediaType": media_type}}}}
    doc["paths"]["/v1/sessions"]["post"]["requestBody"] = session_form(limits, model)
    for path in (*GENERATE_ROUTES, "/v1/sessions"):
        doc["paths"][path]["post"]["responses"]["429"]["headers"] = {
            "Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    for path_item in doc["paths"].values():
        for operation in path_item.values():
            if not auth:
                operation["responses"].pop("401", None)
            elif "401" in operation["responses"]:
                operation["security"] = [{"bearer": []}]
    if auth:
        doc.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "The server's ONESTEP_API_TOKEN."}}
    return doc
