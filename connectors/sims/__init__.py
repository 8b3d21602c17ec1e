"""Loopback simulators of the venues' protocols."""
