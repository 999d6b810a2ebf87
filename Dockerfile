# delving on CUDA, with what train.compile=true needs (gcc/g++, Python headers, nvcc) and the torch
# the Makefile pins. torch 2.14.1's PyPI wheel is built for CUDA 13.0 and brings its own CUDA
# runtime, cuDNN and NCCL, so the base image's toolkit only has to match it (13.0: host driver >= 580).
# An older driver: build another pair, e.g.
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t delving .
#
# Build:  docker build -t delving .
# Train (the entry point is torchrun; outputs land in ./outputs, owned by you):
#   docker run --gpus all --ipc=host --user "$(id -u):$(id -g)" \
#     -v /datasets/imagenet:/datasets/imagenet:ro -v "$PWD/outputs:/workspace/delving/outputs" \
#     delving --standalone --nproc_per_node=gpu -m delving.train experiment=paper_model_c \
#     data.root=/datasets/imagenet run_name=c1
# Other tools: --entrypoint delving-eval (delving-ensemble, delving-report, delving-train, bash).
ARG BASE_IMAGE=nvidia/cuda:13.0.1-devel-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH="torch==2.14.1 torchvision==0.29.1"
ARG TORCH_INDEX_URL=""

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# HOME and the caches are writable by any --user uid (the uid need not exist in the image);
# USER keeps getpass.getuser() from looking the uid up.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    OMP_NUM_THREADS=1 \
    HOME=/tmp/home \
    USER=delving \
    XDG_CACHE_HOME=/tmp/home/.cache \
    TORCHINDUCTOR_CACHE_DIR=/tmp/home/.cache/torchinductor \
    TRITON_CACHE_DIR=/tmp/home/.cache/triton \
    MPLCONFIGDIR=/tmp/home/.config/matplotlib

# Unpinned Ubuntu packages: the base image's tag fixes the release, and its archive drops old versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-dev python3-venv gcc g++ make ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV" \
    && mkdir -p /tmp/home && chmod 1777 /tmp/home

# Layer 1: torch (the heaviest; changes only with the TORCH build arg).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --upgrade pip \
    && pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} ${TORCH}

WORKDIR /workspace/delving

# Layer 2: the other dependencies, read from pyproject.toml alone: a code edit does not rebuild it. With the
# runtime extras `make install` installs (all but dev): the `gpu` extra's TorchCodec decodes
# data.decode_on_device's JPEGs here as in the venv, and `sweep` runs the Optuna sweeps.
COPY pyproject.toml ./
# hadolint ignore=DL3013
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['gpu'] + p['optional-dependencies']['sweep']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Layer 3: the code, installed editable without dependencies (the Hydra configs are read from
# /workspace/delving/configs). outputs/ and multirun/ are writable for runs without a bind mount, and
# whatever the import check left in HOME (matplotlib's font cache) stays writable for any uid.
COPY README.md ./
COPY configs ./configs
COPY scripts ./scripts
COPY src ./src
RUN pip install --no-cache-dir --no-deps -e . \
    && mkdir -p outputs multirun && chmod 1777 outputs multirun \
    && python -c "import delving.models, delving.engine.trainer" \
    && chmod -R a+rwX /tmp/home

# Arguments after the image name go to torchrun; every rank runs `-m delving.train`.
ENTRYPOINT ["torchrun"]
CMD ["--standalone", "--nproc_per_node=gpu", "-m", "delving.train", "experiment=demo"]
