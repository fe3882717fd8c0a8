"""hemaedge: blood-cell classifiers from a desktop GPU to a microscope camera."""

__version__ = "0.1.0"
