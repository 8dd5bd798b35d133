"""Thin command modules for the concerns that are one module each (``check-config``,
``split``): argument parsing and a call to the typed function, nothing else."""
