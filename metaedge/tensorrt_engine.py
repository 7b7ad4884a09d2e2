"""Everything that touches TensorRT: building a serialized engine from the ONNX backbone, and running one.

This is the only module that imports `tensorrt`. It is written against the TensorRT 10 Python API
(Builder, OnnxParser, IBuilderConfig, IOptimizationProfile, Runtime, IExecutionContext.execute_async_v3).
It has NOT been run on a machine with TensorRT by the metaedge developers yet: the development machines
cannot install it. `trtexec_command` gives the equivalent command line for building the engine on the board.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaedge.errors import MetaedgeError

INSTALL_HINT = (
    "TensorRT is not importable here. Install it where the engine will run: on a Jetson it comes with JetPack "
    "(python3-libnvinfer); on x86 with an NVIDIA GPU, `pip install tensorrt`. Engines are specific to one GPU "
    "and TensorRT version, so build on the board itself; `--dry-run` prints the trtexec command for that."
)


class TensorRTUnavailable(MetaedgeError):
    """TensorRT (or a CUDA device for it) is not present on this machine."""


@dataclass(frozen=True)
class EngineSettings:
    """Builder settings, from a target profile's `tensorrt` section and the export flags.

    input_shape: (channels, size, size) of one image; batches range over min/opt/max_batch.
    """

    input_name: str
    input_shape: tuple[int, int, int]
    min_batch: int
    opt_batch: int
    max_batch: int
    workspace_mib: int
    fp16: bool
    int8: bool
    dla_core: int | None

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"


def import_tensorrt():
    try:
        import tensorrt as trt  # noqa: PLC0415  (optional dependency, imported only here)
    except ImportError:
        raise TensorRTUnavailable(INSTALL_HINT) from None
    return trt


def trtexec_command(onnx: str | os.PathLike, engine: str | os.PathLike, s: EngineSettings,
                    timing_cache: str = "timing.cache", calibration_cache: str | None = None) -> str:  # fmt: skip
    """The trtexec command line equivalent to `build_engine` with the same settings."""
    dims = lambda b: "x".join(str(d) for d in (b, *s.input_shape))  # noqa: E731
    args = [
        "trtexec", f"--onnx={onnx}", f"--saveEngine={engine}",
        f"--minShapes={s.input_name}:{dims(s.min_batch)}", f"--optShapes={s.input_name}:{dims(s.opt_batch)}",
        f"--maxShapes={s.input_name}:{dims(s.max_batch)}", f"--memPoolSize=workspace:{s.workspace_mib}M",
        f"--timingCacheFile={timing_cache}",
    ]  # fmt: skip
    if s.fp16:
        args.append("--fp16")
    if s.int8:
        args.append("--int8")
        if calibration_cache:
            args.append(f"--calib={calibration_cache}")
    if s.dla_core is not None:
        args += [f"--useDLACore={s.dla_core}", "--allowGPUFallback"]
    return shlex.join(args)


def device_info() -> dict:
    """GPU name, compute capability and TensorRT version: an engine runs only where these match."""
    trt = import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT is installed but no CUDA device is visible to build an engine on")
    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}", "tensorrt": trt.__version__}


def build_engine(onnx_path: str | os.PathLike, settings: EngineSettings, *, timing_cache: Path | None = None,
                 calibration_images: np.ndarray | None = None) -> bytes:  # fmt: skip
    """Parse the ONNX backbone and build a serialized engine.

    calibration_images: float32 (N, C, H, W), already preprocessed, real images for int8 calibration.
    timing_cache: read if present and rewritten after the build, so rebuilds on the same board are fast.
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise MetaedgeError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    shape = lambda b: (b, *settings.input_shape)  # noqa: E731
    profile.set_shape(settings.input_name, shape(settings.min_batch), shape(settings.opt_batch),
                      shape(settings.max_batch))  # fmt: skip
    config.add_optimization_profile(profile)
    if settings.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if settings.int8:
        if calibration_images is None or len(calibration_images) == 0:
            raise MetaedgeError("int8 needs calibration images (--calibration-data)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, calibration_images, settings.opt_batch)
        config.set_calibration_profile(profile)
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise MetaedgeError("TensorRT failed to build the engine (see its log above)")
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _calibrator(trt, images: np.ndarray, batch: int):
    """An entropy calibrator fed from real, preprocessed images held in one CUDA buffer."""
    import torch

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.batches: Iterator[np.ndarray] = (
                images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)
            )
            self.buffer = torch.empty((batch, *images.shape[1:]), dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names):
            chunk = next(self.batches, None)
            if chunk is None:
                return None
            self.buffer.copy_(torch.from_numpy(np.ascontiguousarray(chunk)))
            return [int(self.buffer.data_ptr())]

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache) -> None:
            pass

    return Calibrator()


class EngineRunner:
    """Runs a serialized engine on CUDA: float32 images (N, C, H, W) -> embeddings (N, D), N <= max_batch."""

    def __init__(self, engine: bytes, input_name: str = "images", output_name: str = "embeddings") -> None:
        trt = import_tensorrt()
        import torch

        self._torch = torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine)
        if self.engine is None:
            raise MetaedgeError("TensorRT cannot deserialize the engine (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = input_name, output_name
        self.stream = torch.cuda.Stream()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        torch = self._torch
        # Copy, inference and the output all on one stream: no cross-stream race on the buffers.
        with torch.cuda.stream(self.stream):
            x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to("cuda")
            self.context.set_input_shape(self.input_name, tuple(x.shape))
            shape = tuple(self.context.get_tensor_shape(self.output_name))
            out = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise MetaedgeError("TensorRT inference failed")
            result = out.cpu()  # synchronises the stream
        return result.numpy()
