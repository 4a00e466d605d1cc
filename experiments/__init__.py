"""Entry points, one per experiment: `python -m experiments.<name> --workdir DIR`."""
