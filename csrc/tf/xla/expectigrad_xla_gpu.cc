// Registers the XLA lowering of ExpectigradApply for XLA:GPU. It lives in the
// CUDA library, next to its custom-call handler (expectigrad_ffi_cuda.cc), so
// the lowering exists exactly when the handler does.
#include "expectigrad_xla_kernel.h"

namespace tensorflow {
namespace expectigrad_tf {

REGISTER_KERNEL_BUILDER(Name("ExpectigradApply").Device(DEVICE_GPU_XLA_JIT),
                        ExpectigradApplyXlaOp);

}  // namespace expectigrad_tf
}  // namespace tensorflow
