# One image for every service of docker-compose.yml: the Ray head (Serve controller, HTTP proxy, API ingress), the
# GPU node (model replicas), the Celery workers, beat and Flower. On Linux, PyPI's torch wheel is the CUDA build,
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
# torch. The editable install maps the packages to /app, which the next COPY fills.
COPY pyproject.toml README.md ./
RUN mkdir serve tasks deployments \
 && touch serve/__init__.py tasks/__init__.py deployments/__init__.py \
 && pip install -e .
COPY . .

# Named volumes mounted on /data/media and /models take these owners when first created.
RUN useradd --create-home --uid 1000 backendai \
 && mkdir -p /data/media /models \
 && chown -R backendai /data /models
USER backendai

EXPOSE 8000 8265 5555
# docker-compose.yml gives each service its command; alone, the image serves the API under plain uvicorn.
CMD ["backendai", "api", "--host", "0.0.0.0"]
