// CUDA kernels of eqkern::settle and eqkern::hebbian_update: the loops of csrc/loop/settle_loop.cpp (ATen
// convolutions: cuDNN) with the CUDA fused passes: the epilogue of settle_epilogue_kernel.cuh and
// the pool/unpool of pool_unpool_kernel.cuh. Only c10/cuda headers (see settle_epilogue_cuda.cu).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/pool_unpool_kernel.cuh"
#include "cuda/settle_epilogue_kernel.cuh"
#include "cuda/sm_count.h"
#include "loop/settle_loop.h"

namespace eqkern {

namespace {

template <typename scalar_t>
const scalar_t* cptr(const at::Tensor* t) {
  return t != nullptr ? t->const_data_ptr<scalar_t>() : nullptr;
}

template <typename scalar_t>
scalar_t* mptr(at::Tensor* t) {
  return t != nullptr ? t->mutable_data_ptr<scalar_t>() : nullptr;
}

void epilogue_dense_cuda(at::Tensor& out, const at::Tensor& u, const at::Tensor* d, const at::Tensor* nudge,
                         double alpha, double gamma, int64_t activation) {
  const c10::DeviceIndex dev = out.device().index();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "settle_cuda_epilogue", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool known = launch_settle_epilogue<scalar_t, acc_t>(
        out.mutable_data_ptr<scalar_t>(), u.const_data_ptr<scalar_t>(), cptr<scalar_t>(d), cptr<scalar_t>(nudge),
        static_cast<acc_t>(alpha), static_cast<acc_t>(gamma), activation, out.numel(), sm_count(dev), stream);
    TORCH_CHECK(known, "eqkern.settle: unknown activation code ", activation);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void pool_unpool_cuda(const at::Tensor& pre, at::Tensor* u, at::Tensor* unp, const at::Tensor* s,
                      const at::Tensor* s_sub, double scale) {
  const at::Tensor* pooled = u != nullptr ? static_cast<const at::Tensor*>(u) : s;
  TORCH_INTERNAL_ASSERT(pooled != nullptr && (unp == nullptr || s != nullptr));
  TORCH_INTERNAL_ASSERT(unp == nullptr || same_layout(*unp, pre));
  TORCH_INTERNAL_ASSERT(s == nullptr || same_layout(*s, *pooled));
  TORCH_INTERNAL_ASSERT(s_sub == nullptr || same_layout(*s_sub, *pooled));
  const PoolGeometry g{pre.size(0),    pre.size(1),    pre.size(2),    pre.size(3),
                       pre.stride(0),  pre.stride(1),  pre.stride(2),  pre.stride(3),
                       pooled->stride(0), pooled->stride(1), pooled->stride(2), pooled->stride(3),
                       pre.stride(1) == 1 && pre.size(1) > 1};
  const c10::DeviceIndex dev = pre.device().index();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(), "settle_cuda_pool_unpool", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_pool_unpool<scalar_t, acc_t>(pre.const_data_ptr<scalar_t>(), mptr<scalar_t>(u), mptr<scalar_t>(unp),
                                        cptr<scalar_t>(s), cptr<scalar_t>(s_sub), static_cast<acc_t>(scale), g,
                                        sm_count(dev), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

const DeviceKernels kCudaKernels{&epilogue_dense_cuda, &pool_unpool_cuda};

const at::Tensor& on_cuda(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cuda(), op, " (CUDA kernel): x is on ", x.device());
  return x;
}

// The device check, then x's device current for the whole call.
struct CudaScope {
  CudaScope(const at::Tensor& x, const char* op) : guard(on_cuda(x, op).device()) {}
  const c10::cuda::CUDAGuard guard;
};

}  // namespace

TORCH_LIBRARY_IMPL(eqkern, CUDA, m) {
  m.impl("settle", &settle_op<kCudaKernels, CudaScope>);
  m.impl("hebbian_update", &hebbian_update_op<kCudaKernels, CudaScope>);
}

}  // namespace eqkern
