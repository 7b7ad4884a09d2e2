"""metaedge: few-shot image recognition for edge devices."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("metaedge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

from metaedge.errors import CheckpointError, DataError, KernelInputError, MetaedgeError

__all__ = ["CheckpointError", "DataError", "KernelInputError", "MetaedgeError", "__version__"]
