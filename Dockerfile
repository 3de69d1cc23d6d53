# syntax=docker/dockerfile:1
# Two runtime targets (see README "Deploying"):
#   slim  LiteRT serving only, no TensorFlow: serves models with a model.tflite beside them
#   full  with TensorFlow: converts Keras models and falls back to TensorFlow
# Build: docker build --target slim -t webapp:slim .   (or --target full)

# ---- build stage: compilers for any wheel that must be built ------------------
FROM python:3.11-slim AS build
# Debian's package versions move with the base image; pinning them would
# break every rebuild after a security update of the base.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, code later: code changes do not reinstall packages.
# slim leaves out TensorFlow and what only it needs, and scikit-image with its
# scientific stack (only the benchmark's naive baseline uses it): ~230 MB less.
COPY requirements/ requirements/
RUN python -m venv /venv-slim \
 && grep -v -i -E '^(tensorflow|tensorflow_cpu|keras|tf_keras|h5py|ml_dtypes|grpcio|libclang|gast|astunparse|google-pasta|opt_einsum|termcolor|absl-py|wrapt|optree|namex|rich|markdown-it-py|mdurl|Pygments|scikit[-_]image|scipy|networkx|tifffile|lazy[-_]loader)==' requirements/base.txt > /tmp/slim.txt \
 && /venv-slim/bin/pip install --no-cache-dir -r /tmp/slim.txt \
 && python -m venv /venv-full \
 && /venv-full/bin/pip install --no-cache-dir -r requirements/base.txt

# ---- runtime base: no compilers, a non-root user; both targets inherit this --
FROM python:3.11-slim AS runtime
RUN useradd --create-home --uid 10001 app
WORKDIR /app
ENV PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=5000 MODEL_CACHE_DIR=/home/app/cache PATH=/venv/bin:$PATH
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz', timeout=2)"]
# exec: the server is PID 1 and gets SIGTERM itself (it drains, then exits).
CMD ["sh", "-c", "exec python -m webapp serve --host 0.0.0.0 --port \"$PORT\""]

# ---- slim target: LiteRT only ------------------------------------------------
FROM runtime AS slim
COPY --from=build /venv-slim /venv
ENV RUNTIME=litert
COPY --chown=app:app . .
USER 10001

# ---- full target: with TensorFlow ----------------------------------------------
FROM runtime AS full
COPY --from=build /venv-full /venv
ENV RUNTIME=auto
COPY --chown=app:app . .
USER 10001
