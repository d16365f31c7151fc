// The multiprocessor count of a CUDA device, which the launchers use to cap their grids at one
// wave. Queried once per device and cached: cudaDeviceGetAttribute costs a driver call, and the
// settle loop launches its kernels several times per layer and step.
//
// at::cuda::getDeviceProperties caches the same way (a c10::call_once per device in torch's
// CUDAContext.cpp), but its header ATen/cuda/CUDAContext.h includes cuSPARSE/cuBLAS headers that
// the build image's toolkit does not ship, so this keeps to c10/cuda.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <deque>
#include <mutex>
#include <vector>

namespace eqkern {

inline int sm_count(c10::DeviceIndex device) {
  struct Cache {
    std::deque<std::once_flag> flags;  // a deque: once_flag can be neither copied nor moved
    std::vector<int> counts;
  };
  // Sized once (a function-local static is initialised thread-safely) by the visible devices,
  // which do not change during a process. `inline`: one cache for every .cu that includes this.
  static Cache cache{std::deque<std::once_flag>(c10::cuda::device_count()),
                     std::vector<int>(c10::cuda::device_count(), 0)};
  TORCH_CHECK(device >= 0 && static_cast<size_t>(device) < cache.counts.size(), "eqkern: CUDA device index ",
              static_cast<int>(device), " out of range (", cache.counts.size(), " visible devices)");
  // A query that throws leaves its flag unset, so the next call retries instead of caching 0.
  std::call_once(cache.flags[device], [device] {
    int sms = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cache.counts[device] = sms;
  });
  return cache.counts[device];
}

}  // namespace eqkern
