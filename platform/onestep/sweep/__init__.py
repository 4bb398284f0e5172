"""Ray Tune sweeps over the adversarial stage: search space, the Tune job, the report."""
