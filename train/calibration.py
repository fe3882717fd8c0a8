"""Moved to `hemaedge.train.data.calibration` (issue 17: one data reader); this name stays so
`from hemaedge.train.calibration import ...` keeps working."""
from hemaedge.train.data.calibration import *  # noqa: F401,F403
from hemaedge.train.data.calibration import _round_robin, sample_per_class  # noqa: F401
