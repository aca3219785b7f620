"""Simulated federations on one machine: phantom hospitals, federations of site stores on
Flower's simulation runtime, and the demo."""
