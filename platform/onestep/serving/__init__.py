"""Serving: request validation and the generator service behind serve/app.py (no Ray here)."""
