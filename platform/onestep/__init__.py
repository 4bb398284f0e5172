"""onestep: audio-driven talking-avatar diffusion, distilled to one step, on Ray."""

__version__ = "0.1.0"
