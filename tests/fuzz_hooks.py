"""Schemathesis hooks for tests/test_api_contract.py (loaded through SCHEMATHESIS_HOOKS).

A JSON Schema cannot say what a decodable PNG or WAV is, so the fuzzer's `image` and `audio`
are random bytes (or a 1-pixel PNG) and it would never get past the media checks. Half of the
generated bodies keep their fuzzed parameters but carry real media instead: short, so that the
cases that reach the generator stay cheap (a session's form: a real portrait).
"""

import dataclasses

import schemathesis
from hypothesis import strategies as st

from conftest import png_bytes, wav_bytes

IMAGES = [(png_bytes((24, 24)), "image/png"), (png_bytes((40, 30), mode="RGBA"), "image/png"),
          (png_bytes((32, 48), fmt="JPEG"), "image/jpeg"),
          (png_bytes((20, 20), fmt="WEBP"), "image/webp")]
AUDIO = [(wav_bytes(0.2, sr=16000, channels=1), "audio/wav"),
         (wav_bytes(0.3, sr=44100), "audio/wav")]


@schemathesis.hook
def flatmap_body(context, body):
    # A multipart body comes as a dict, or wrapped with the content type chosen for each part.
    form = getattr(body, "body", body)
    if not isinstance(form, dict) or "image" not in form:
        return st.just(body)
    sound = "audio" in form  # a generate route's form; POST /v1/sessions has a portrait alone

    def with_media(media):
        (image, image_type), (audio, audio_type) = media
        real = {**form, "image": image, **({"audio": audio} if sound else {})}
        if form is body:
            return real
        types = {**body.content_types, "image": image_type,
                 **({"audio": audio_type} if sound else {})}
        return dataclasses.replace(body, body=real, content_types=types)

    return st.one_of(st.just(body), st.tuples(st.sampled_from(IMAGES),
                                              st.sampled_from(AUDIO)).map(with_media))
