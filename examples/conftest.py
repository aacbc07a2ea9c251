"""The example SLO suite runs from this folder: ``pytest examples``."""
