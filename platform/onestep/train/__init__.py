"""Training: DeepSpeed engines (engine.py), sharded EMA (ema.py), the loop (loop.py), and the
Ray Train job around it (ray_job.py) — the only place Ray Train and DeepSpeed meet."""
