"""Sampler accuracy at low NFE: DPM-Solver settings against an exact Gaussian oracle."""
