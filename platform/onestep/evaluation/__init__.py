"""Evaluation on SynthTalk held-out identities: lip-sync, image quality, Fréchet distance, identity,
flicker, NFE and speed (see run.py), with a learned mouth reader as the sync expert."""
