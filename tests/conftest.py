"""Shared fixtures: everything real (HTTP on 127.0.0.1, processes, files), nothing left running."""
