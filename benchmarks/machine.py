"""Moved to hemaedge.edge.machine (the run summary on a device needs it too); kept as a re-export
so `from hemaedge.benchmarks import machine` keeps working."""
from hemaedge.edge.machine import cpu_model, describe_machine, device_model, library_versions, one_line  # noqa: F401
