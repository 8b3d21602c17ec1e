"""Wiring only: read pipeline.yaml, compose operators and connectors into a Bytewax Dataflow."""
