"""Crane: an HPC workload manager built around cancellation and preemption."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
