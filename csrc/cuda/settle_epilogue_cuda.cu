// CUDA kernel of eqkern::settle_epilogue_: the launcher glue; the kernel is in
// settle_epilogue_kernel.cuh. Only c10/cuda headers: ATen/cuda/CUDAContext.h pulls in cuSPARSE and
// cuBLAS headers that the build image's toolkit does not ship.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/settle_epilogue_kernel.cuh"
#include "cuda/sm_count.h"
#include "loop/settle_epilogue_args.h"

namespace eqkern {

void settle_epilogue_cuda(at::Tensor& state, const at::Tensor& bottom_up,
                          const std::optional<at::Tensor>& top_down,
                          const std::optional<at::Tensor>& nudge, double alpha, double gamma,
                          int64_t activation) {
  TORCH_CHECK(state.device().is_cuda(), "eqkern.settle_epilogue_ (CUDA kernel): state is on ",
              state.device());
  // state's device current before anything allocates or launches (a model on cuda:1 runs on cuda:1).
  const c10::cuda::CUDAGuard guard(state.device());
  const SettleOperands ops = prepare_settle_operands(state, bottom_up, top_down, nudge, activation);
  // The current stream, not the default one: torch.compile and user code may run us on a side stream.
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(state.device().index()).stream();
  const int sms = sm_count(state.device().index());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, state.scalar_type(), "settle_epilogue_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool known = launch_settle_epilogue<scalar_t, acc_t>(
        ops.out.mutable_data_ptr<scalar_t>(), ops.bottom_up.const_data_ptr<scalar_t>(),
        data_or_null<scalar_t>(ops.top_down), data_or_null<scalar_t>(ops.nudge),
        static_cast<acc_t>(alpha), static_cast<acc_t>(gamma), activation, ops.out.numel(), sms, stream);
    TORCH_INTERNAL_ASSERT(known, "activation code was validated above");
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  ops.finish(state);
}

TORCH_LIBRARY_IMPL(eqkern, CUDA, m) {
  m.impl("settle_epilogue_", &settle_epilogue_cuda);
}

}  // namespace eqkern
