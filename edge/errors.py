"""The one error root of hemaedge, importable on a device (no TensorFlow, nothing else of the project).

Every mistake a user can make, and every input that must not run, raises a subclass of
`HemaedgeError`. The message says what is wrong and what to do, in domain terms (a model, a
bundle, a frame, a store), not in command-line flags: the same error can come from the CLI, a
service or a notebook. The CLI catches the root once (`edge/cli_support.user_errors`) and
prints one `Error: ...` line with exit code 2.
"""
from __future__ import annotations


class HemaedgeError(Exception):
    """A mistake in what was asked or handed over (not a bug): say what and what to do."""


class UsageError(HemaedgeError):
    """Options or arguments that do not make sense together, or values out of range."""


class BundleError(HemaedgeError):
    """A bundle (or model file) that must not run."""


class BackendError(BundleError):
    """The model cannot run here (runtime missing, or model and bundle disagree)."""


class StoreError(HemaedgeError):
    """The device's model store cannot do what was asked."""


class DataError(HemaedgeError):
    """A data set that cannot be used as it is; names the file and the problem."""


class SourceError(HemaedgeError):
    """A frame source (folder, video, camera, stream) that cannot be opened or read."""


class FrameFormatError(HemaedgeError, ValueError):
    """A frame or image that cannot be turned into 8-bit RGB."""


class OutputError(HemaedgeError):
    """A run's output folder or file that cannot be created or written."""
