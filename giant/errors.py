"""User-facing errors: one message that names the file/line/key and the fix.

`assert` guards internal invariants only; anything a user can cause raises a GiantError so the
CLI can print one clean line instead of a traceback.
"""


class GiantError(Exception):
    """Base class for errors a user can cause and fix."""


class ConfigError(GiantError):
    """A recipe, override or DeepSpeed JSON is inconsistent or unknown."""


class DataError(GiantError):
    """A manifest, video or dataset problem."""


class CheckpointError(GiantError):
    """A checkpoint is missing, corrupt or belongs to another model."""


class TrainingError(GiantError):
    """Training had to stop (non-finite loss, too many unreadable clips, ...)."""
