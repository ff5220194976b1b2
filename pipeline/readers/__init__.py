"""Readers of an output folder (never written by a run): inspect, audit, leaks, sql, export, verify, card."""
