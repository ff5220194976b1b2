"""Data files shipped with the stages (the canonical face model for the landmarks stage)."""
