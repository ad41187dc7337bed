# One image for every service of docker-compose.yml and deploy/kubernetes/: the API (uvicorn), the Ray head (Serve
# controller), the GPU nodes (model replicas), the consumers, beat and Flower. It is the GPU image: PyPI's Linux
# torch wheel is the CUDA build and the `gpu` extra adds ONNX Runtime's; both fall back to the CPU without a GPU,
# so the same image runs on CPU and GPU nodes.
FROM python:3.11-slim

# OpenCV (mediapipe, insightface) needs libGL and GLib; torch and onnxruntime need OpenMP; ncnn runs Real-ESRGAN
# on the GPU through the Vulkan loader.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 libgomp1 libvulkan1 \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data MODELS_DIR=/models RAY_AUTH_MODE=disabled
WORKDIR /app

# Dependencies in their own layer, installed against empty packages, so that a code change does not reinstall
# torch. The editable install maps the packages to /app, which the next COPY fills. onnxruntime (CPU, which
# insightface requires) and onnxruntime-gpu write the same `onnxruntime` module: removing the CPU package deletes
# those files, so the GPU package is reinstalled over it, at the release just resolved.
COPY pyproject.toml README.md constraints.txt ./
RUN mkdir cli serve tasks deployments \
 && touch cli/__init__.py serve/__init__.py tasks/__init__.py deployments/__init__.py \
 && pip install -c constraints.txt -e '.[gpu]' \
 && ORT_GPU="onnxruntime-gpu==$(python -c 'from importlib.metadata import version; print(version("onnxruntime-gpu"))')" \
 && pip uninstall -y onnxruntime \
 && pip install --no-deps --force-reinstall "$ORT_GPU"
COPY . .

# Named volumes mounted on /data/media and /models take these owners when first created.
RUN useradd --create-home --uid 1000 backendai \
 && mkdir -p /data/media /models \
 && chown -R backendai /data /models
USER backendai

EXPOSE 8000 8265 5555
# docker-compose.yml gives each service its command; alone, the image serves the API under plain uvicorn.
CMD ["backendai", "api", "--host", "0.0.0.0"]
