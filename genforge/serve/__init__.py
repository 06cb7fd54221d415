"""Serving: an OpenAI-compatible HTTP API (app.py), its request schemas, the batching worker, and a chat page."""
