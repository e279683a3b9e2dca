"""The command line (click) and orchestration: run configs, process pools, result writing."""
