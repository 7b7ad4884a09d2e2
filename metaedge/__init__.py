"""metaedge: few-shot image recognition for edge devices."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("metaedge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

from metaedge.errors import CheckpointError, DataError, KernelInputError, MetaedgeError

__all__ = ["CheckpointError", "DataError", "KernelInputError", "MetaedgeError", "Runtime", "__version__"]


def __getattr__(name: str):
    # Lazy: `import metaedge` stays light for training scripts; the runtime pulls in ONNX Runtime and SQLite.
    if name == "Runtime":
        from metaedge.runtime import Runtime

        return Runtime
    if name == "reference":  # metaedge.reference.bundle_path("locate") after a plain `import metaedge`
        import metaedge.reference

        return metaedge.reference
    raise AttributeError(f"module 'metaedge' has no attribute {name!r}")
