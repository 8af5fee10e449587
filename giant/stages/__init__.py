"""Stages: each composes models, data and engine into `run(cfg) -> artifacts` and `main(argv)`."""
