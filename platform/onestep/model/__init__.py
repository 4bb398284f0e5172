"""Model code: pure PyTorch, no Ray or DeepSpeed (those live in onestep.train and onestep.serving)."""

from onestep.model.build import build_codec, build_model, count_parameters
from onestep.model.discriminator import Discriminator
from onestep.model.dit import Conditions, VideoDiT

__all__ = ["Conditions", "Discriminator", "VideoDiT", "build_codec", "build_model", "count_parameters"]
