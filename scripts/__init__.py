"""Generators of the bundled recordings: run as scripts, and imported by the bench from a checkout."""
