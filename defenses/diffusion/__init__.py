"""Diffusion machinery shared by DiffPure and FreqPure: the VP noise schedule and noise predictors."""
