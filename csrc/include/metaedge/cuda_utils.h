// Host-side helpers shared by the CUDA launchers: error checks, device selection, stream scratch.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace metaedge {

// A failed CUDA call is a runtime_error (RuntimeError in Python), not an argument error.
inline void Check(cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    throw std::runtime_error(std::string("metaedge CUDA: ") + what + ": " +
                             cudaGetErrorString(error));
  }
}

// Runs on the device that owns the buffers (not whatever device happens to be current), and
// refuses host pointers outright: a direct caller could otherwise crash the process. `kernel`
// names the entry point in the messages; a 0 pointer is an absent optional buffer and is skipped.
class DeviceGuard {
 public:
  DeviceGuard(const char* kernel, std::initializer_list<std::uintptr_t> pointers) {
    Check(cudaGetDevice(&previous_), "cudaGetDevice");
    int device = -1;
    for (std::uintptr_t pointer : pointers) {
      if (pointer == 0) continue;
      cudaPointerAttributes attributes{};
      Check(cudaPointerGetAttributes(&attributes, reinterpret_cast<const void*>(pointer)),
            "cudaPointerGetAttributes");
      if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged) {
        throw std::invalid_argument(std::string(kernel) + ": a buffer is not CUDA device memory");
      }
      if (device >= 0 && attributes.device != device) {
        throw std::invalid_argument(std::string(kernel) + ": the buffers are on different devices");
      }
      device = attributes.device;
    }
    if (device >= 0 && device != previous_) Check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// Stream-ordered device scratch of `count` T's on the current device, so that concurrent calls on
// different streams never share it: cudaMallocAsync/cudaFreeAsync where the device has memory
// pools, plain cudaMalloc/cudaFree where it has none.
template <class T>
class StreamBuffer {
 public:
  StreamBuffer(std::size_t count, cudaStream_t stream) : stream_(stream) {
    int device = 0;
    int pools = 0;
    Check(cudaGetDevice(&device), "cudaGetDevice");
    Check(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device),
          "cudaDeviceGetAttribute");
    async_ = pools != 0;
    void* raw = nullptr;
    const std::size_t bytes = (count > 0 ? count : 1) * sizeof(T);
    Check(async_ ? cudaMallocAsync(&raw, bytes, stream_) : cudaMalloc(&raw, bytes),
          "allocating device scratch");
    data_ = static_cast<T*>(raw);
  }
  ~StreamBuffer() { async_ ? cudaFreeAsync(data_, stream_) : cudaFree(data_); }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  T* get() const { return data_; }

 private:
  cudaStream_t stream_;
  bool async_ = false;
  T* data_ = nullptr;
};

}  // namespace metaedge
