"""SynthTalk: a procedural talking-head data set generated on the fly (no downloads possible)."""

from onestep.synth.clips import Clip, make_clip

__all__ = ["Clip", "make_clip"]
