"""Opencode's benchmarks: `python -m bench` (see `bench/README.md`).

Each benchmark measures Opencode and a baseline in the same run, on this machine, and reports
the ratio. Not part of the node package: ComfyUI never imports this folder.
"""
