"""Moved to the data package `hemaedge.train.data` (issue 17: one data reader); this name stays
so `from hemaedge.train.datasets import open_dataset` keeps working."""
from hemaedge.train.data import *  # noqa: F401,F403
from hemaedge.train.data import __all__  # noqa: F401
