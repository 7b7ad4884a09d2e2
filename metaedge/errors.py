"""The one error family metaedge raises for problems a user can fix: bad data, bad files, bad arguments."""


class MetaedgeError(Exception):
    """Base of every error metaedge raises on purpose; the CLI turns it into a one-line message and exit code 1."""


class DataError(MetaedgeError):
    """A dataset, image or episode request that cannot be served (corrupt file, too few classes, ...)."""


class CheckpointError(MetaedgeError):
    """A checkpoint or run directory that is missing, incomplete, tampered with or of an unknown version."""


class KernelInputError(MetaedgeError, ValueError):
    """Arrays handed to a kernel with wrong shapes, dtypes or out-of-range labels."""
