# The labelloop image: one image, three commands (compose.yml runs each as its own service):
#   labelloop serve --no-rq-worker          the ML backend under gunicorn (port 9090)
#   labelloop worker --queues train,predict the rq worker (retrains, background predictions)
#   labelloop sync                          Label Studio / CVAT -> the versioned dataset store
# CPU torch by default. For a GPU host build with the CUDA wheels (they carry the CUDA runtime; the
# host needs the NVIDIA driver and container toolkit):
#   docker build -f docker/labelloop.Dockerfile \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t labelloop/labelloop:0.1.0-cuda .
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    YOLO_CONFIG_DIR=/tmp/ultralytics \
    YOLO_OFFLINE=1 \
    LABELLOOP_CACHE_DIR=/cache \
    LABELLOOP_HOST=0.0.0.0 \
    LABELLOOP_PORT=9090

RUN pip install --index-url "${TORCH_INDEX}" "torch==2.14.1" "torchvision==0.29.1"

WORKDIR /src
COPY pyproject.toml README.md docker/constraints.txt ./
COPY labelloop ./labelloop
COPY backend ./backend
COPY connectors ./connectors
COPY sync ./sync
# `pip install .` builds the same wheel tests/test_packaging.py builds and imports in a clean venv
RUN pip install -c constraints.txt . \
    # Ultralytics pulls opencv-python (needs libGL); the headless build has the same API
    && pip install --force-reinstall --no-deps "opencv-python-headless<5" \
    && useradd --create-home --uid 1000 labelloop \
    && mkdir -p /cache /blobs /models && chown labelloop /cache /blobs /models \
    && rm -rf /src
COPY docker/healthcheck.py /usr/local/bin/labelloop-healthcheck

USER labelloop
WORKDIR /home/labelloop
VOLUME ["/cache", "/blobs"]
EXPOSE 9090
# The backend's check; compose.yml gives the worker and the sync their own (healthcheck.py)
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m \
    CMD ["python", "/usr/local/bin/labelloop-healthcheck", "http", "http://127.0.0.1:9090/health"]
ENTRYPOINT ["labelloop"]
CMD ["serve", "--no-rq-worker"]
