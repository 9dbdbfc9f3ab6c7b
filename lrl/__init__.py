"""lrl: a workbench for speech recognition in low-resource languages."""

__version__ = "0.1.0"
