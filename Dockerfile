# delving on a CUDA PyTorch image. Build: docker build -t delving .
# Run (one node, all GPUs):  docker run --gpus all --ipc=host -v /data/imagenet:/data/imagenet \
#   -v $PWD/outputs:/workspace/delving/outputs delving \
#   --standalone --nproc_per_node=gpu -m delving.train experiment=paper_model_c data.root=/data/imagenet
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /workspace/delving
# Dependencies first (cached layer); the image's torch satisfies torch>=2.3, so it is kept.
COPY pyproject.toml README.md ./
COPY src ./src
COPY configs ./configs
COPY scripts ./scripts
# Editable install: the Hydra configs are read from /workspace/delving/configs.
RUN pip install -e . && python -c "import delving.models, delving.engine.trainer"

# Arguments after the image name go to torchrun; every rank runs `-m delving.train`.
ENTRYPOINT ["torchrun"]
CMD ["--standalone", "--nproc_per_node=gpu", "-m", "delving.train", "experiment=demo"]
