"""EAIO benchmarks: `make bench` (python -m bench). Figures are ratios to the raw library
measured in the same run, because the machines are shared and noisy."""
