"""Adapters between diffguide denoisers and other libraries' models (diffusers)."""
