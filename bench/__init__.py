"""Crane benchmark harness (issue 7): ``python -m bench``.

Starts its own local clusters (``crane.local.LocalCluster``) in temporary
directories, runs each scenario of the performance table, prints measured
median / p99 against the target and writes ``bench/results/latest.json``.
"""
