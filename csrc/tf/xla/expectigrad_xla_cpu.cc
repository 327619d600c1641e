// Registers the XLA lowering of ExpectigradApply for XLA:CPU (in the CPU op
// library; its custom-call handler is expectigrad_ffi_cpu.cc).
#include "expectigrad_xla_kernel.h"

namespace tensorflow {
namespace expectigrad_tf {

REGISTER_KERNEL_BUILDER(Name("ExpectigradApply").Device(DEVICE_CPU_XLA_JIT),
                        ExpectigradApplyXlaOp);

}  // namespace expectigrad_tf
}  // namespace tensorflow
