"""Loopback simulators of the venues: the real clients talk to them as they would to the venue."""
