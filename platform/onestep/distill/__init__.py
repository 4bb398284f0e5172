"""The math of distillation, in pure PyTorch: few-step student trajectories, the DMD gradient,
adversarial losses and their regularisers. Stages in onestep.stages wire these to engines."""
