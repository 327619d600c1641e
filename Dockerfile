# GPU image for expectigrad_tf: TensorFlow 2.21 with CUDA, the fused op built
# with its CUDA kernels, the experiments (package expectigrad_experiments with
# its dependencies, the "experiments" extra) and the demo as the default command.
#
#   docker build -t expectigrad-tf:gpu .
#   docker run --rm --gpus all expectigrad-tf:gpu            # runs expectigrad-demo
#   docker run --rm --gpus all expectigrad-tf:gpu expectigrad-reddi --quick --out-dir /tmp/reddi
#   docker run --rm --gpus all expectigrad-tf:gpu \
#       python -c "import expectigrad_tf; print(expectigrad_tf.fused_status())"
#
# Versions: TensorFlow 2.21's Linux wheels are built against CUDA 12.5.1 and
# cuDNN 9 (tf.sysconfig.get_build_info()), and `tensorflow[and-cuda]` installs
# those CUDA libraries as pip packages inside the virtual environment. The
# build stage takes nvcc from the matching CUDA 12.5.1 devel image. The op
# links CUDA's runtime statically, so the runtime stage needs no toolkit:
# only the CUDA base image (for the NVIDIA container runtime's driver
# hookup). Both stages are Ubuntu 24.04 (Python 3.12), so the venv built in
# the first stage runs unchanged in the second.
#
# GPU architectures of the op's kernels: --build-arg EXPECTIGRAD_CUDA_ARCHS=...
# (default 80;90: A100, H100/H200; PTX for newer GPUs).

############################################################ build stage
FROM nvidia/cuda:12.5.1-devel-ubuntu24.04 AS build

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-dev python3-venv g++ \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# TensorFlow first: the op is compiled against the TensorFlow installed here,
# hence --no-build-isolation below (the same commands as the README).
RUN pip install "tensorflow[and-cuda]==2.21.*" "pybind11>=2.10" "setuptools>=77" wheel numpy

WORKDIR /src
COPY . .

ARG EXPECTIGRAD_CUDA_ARCHS="80;90"
# EXPECTIGRAD_CUDA=1: fail the build rather than silently skip the GPU kernels.
# The "experiments" extra: scikit-learn (the demo's digits), matplotlib,
# tensorflow-datasets and sacrebleu for the expectigrad-* commands. A regular
# (non-editable) install: the runtime stage has no sources, only the venv.
RUN EXPECTIGRAD_CUDA=1 EXPECTIGRAD_CUDA_ARCHS="${EXPECTIGRAD_CUDA_ARCHS}" \
        pip install --no-build-isolation ".[experiments]" \
    && cd / \
    && python -c "import json, pathlib, expectigrad_tf; \
info = json.loads((pathlib.Path(expectigrad_tf.__file__).parent / '_build_info.json').read_text()); \
assert info['cuda'], info; print('expectigrad_tf built:', info)" \
    && expectigrad-demo --help > /dev/null

########################################################## runtime stage
FROM nvidia/cuda:12.5.1-base-ubuntu24.04 AS runtime

ENV DEBIAN_FRONTEND=noninteractive

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/venv /opt/venv

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin expectigrad

WORKDIR /home/expectigrad

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=1

USER expectigrad

CMD ["expectigrad-demo"]
