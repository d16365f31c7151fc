// nvcc-only compile gate: instantiates every settle-epilogue kernel without torch headers, so the
// device code can be compiled (and checked for register spills) on machines without a CUDA torch:
//   nvcc -std=c++17 -c csrc/cuda/compile_check.cu -gencode arch=compute_90,code=sm_90 -Xptxas -v
// Not part of the extension build (setup.py skips this file).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "pool_unpool_kernel.cuh"
#include "settle_epilogue_kernel.cuh"

namespace eqkern {

// One launcher instantiation per storage dtype the torch op dispatches to; each instantiates the
// kernel for all activations.
template bool launch_settle_epilogue<float, float>(float*, const float*, const float*, const float*,
                                                   float, float, int64_t, int64_t, int, cudaStream_t);
template bool launch_settle_epilogue<double, double>(double*, const double*, const double*,
                                                     const double*, double, double, int64_t, int64_t,
                                                     int, cudaStream_t);
template bool launch_settle_epilogue<__half, float>(__half*, const __half*, const __half*,
                                                    const __half*, float, float, int64_t, int64_t,
                                                    int, cudaStream_t);
template bool launch_settle_epilogue<__nv_bfloat16, float>(__nv_bfloat16*, const __nv_bfloat16*,
                                                           const __nv_bfloat16*, const __nv_bfloat16*,
                                                           float, float, int64_t, int64_t, int,
                                                           cudaStream_t);


// The fused pool + unpool of eqkern::settle / eqkern::hebbian_update, one per storage dtype.
template void launch_pool_unpool<float, float>(const float*, float*, float*, const float*, const float*, float,
                                               PoolGeometry, int, cudaStream_t);
template void launch_pool_unpool<double, double>(const double*, double*, double*, const double*, const double*,
                                                 double, PoolGeometry, int, cudaStream_t);
template void launch_pool_unpool<__half, float>(const __half*, __half*, __half*, const __half*, const __half*,
                                                float, PoolGeometry, int, cudaStream_t);
template void launch_pool_unpool<__nv_bfloat16, float>(const __nv_bfloat16*, __nv_bfloat16*, __nv_bfloat16*,
                                                       const __nv_bfloat16*, const __nv_bfloat16*, float,
                                                       PoolGeometry, int, cudaStream_t);

}  // namespace eqkern
