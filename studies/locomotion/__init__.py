"""Locomotion diagnostics that read a finished (or partly finished) AEPO run directory."""
