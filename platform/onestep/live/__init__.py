"""Live sessions: audio streamed in, video streamed out as it is generated (onestep.live)."""
