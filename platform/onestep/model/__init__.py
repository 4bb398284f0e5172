"""Model code: pure PyTorch, no Ray or DeepSpeed (those live in onestep.train and onestep.serving)."""

from onestep.model.build import build_codec, build_model, count_parameters
from onestep.model.discriminator import Discriminator
from onestep.model.dit import Conditions, VideoDiT
from onestep.model.wan import WanDiT

__all__ = ["Conditions", "Discriminator", "VideoDiT", "WanDiT", "build_codec", "build_model",
           "count_parameters"]
