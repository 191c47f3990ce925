"""Serving: export (JSON + weights, SavedModel, OpenVINO IR), inference and the `steeldefect` command."""
