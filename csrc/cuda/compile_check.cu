// nvcc-only compile gate: instantiates every device kernel of the ops with exactly the storage
// types the ops dispatch (AT_DISPATCH_FLOATING_TYPES_AND2(kHalf, kBFloat16): c10::Half and
// c10::BFloat16, not CUDA's __half / __nv_bfloat16, whose conversions are different code), so the
// device code can be compiled (and checked for register spills) without building the extension.
// Needs only torch's header-only c10/util types, from any torch install (a CPU build too):
//   nvcc -std=c++17 -c csrc/cuda/compile_check.cu -I "$(python -c 'import torch.utils.cpp_extension as c;
//     print(c.include_paths()[0])')" -gencode arch=compute_90,code=sm_90 -Xptxas -v
// Not part of the extension build (setup.py skips this file).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "pool_unpool_kernel.cuh"
#include "settle_epilogue_kernel.cuh"

namespace eqkern {

// One launcher instantiation per storage dtype the torch op dispatches to, with its
// at::opmath_type as the compute type; each instantiates the kernel for all activations.
template bool launch_settle_epilogue<float, float>(float*, const float*, const float*, const float*,
                                                   float, float, int64_t, int64_t, int, cudaStream_t);
template bool launch_settle_epilogue<double, double>(double*, const double*, const double*,
                                                     const double*, double, double, int64_t, int64_t,
                                                     int, cudaStream_t);
template bool launch_settle_epilogue<c10::Half, float>(c10::Half*, const c10::Half*, const c10::Half*,
                                                       const c10::Half*, float, float, int64_t, int64_t,
                                                       int, cudaStream_t);
template bool launch_settle_epilogue<c10::BFloat16, float>(c10::BFloat16*, const c10::BFloat16*,
                                                           const c10::BFloat16*, const c10::BFloat16*,
                                                           float, float, int64_t, int64_t, int,
                                                           cudaStream_t);


// The fused pool + unpool of eqkern::settle / eqkern::hebbian_update, one per storage dtype.
template void launch_pool_unpool<float, float>(const float*, float*, float*, const float*, const float*, float,
                                               PoolGeometry, int, cudaStream_t);
template void launch_pool_unpool<double, double>(const double*, double*, double*, const double*, const double*,
                                                 double, PoolGeometry, int, cudaStream_t);
template void launch_pool_unpool<c10::Half, float>(const c10::Half*, c10::Half*, c10::Half*, const c10::Half*,
                                                   const c10::Half*, float, PoolGeometry, int, cudaStream_t);
template void launch_pool_unpool<c10::BFloat16, float>(const c10::BFloat16*, c10::BFloat16*, c10::BFloat16*,
                                                       const c10::BFloat16*, const c10::BFloat16*, float,
                                                       PoolGeometry, int, cudaStream_t);

}  // namespace eqkern
