"""Evaluation: metrics, localization, plots, and the classical baseline the deep model must beat."""
