# labelloop ML backend and rq worker (one image, two commands). CPU build; for a GPU host start
# from an nvidia/cuda runtime image and install the CUDA torch wheel instead of the CPU one.
FROM python:3.11-slim AS base

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    YOLO_CONFIG_DIR=/tmp/ultralytics \
    YOLO_OFFLINE=1 \
    LABELLOOP_CACHE_DIR=/cache \
    LABELLOOP_HOST=0.0.0.0 \
    LABELLOOP_PORT=9090

RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.14.1" "torchvision==0.29.1"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY labelloop ./labelloop
COPY backend ./backend
COPY connectors ./connectors
COPY sync ./sync
RUN pip install . \
    # Ultralytics pulls opencv-python (needs libGL); the headless build has the same API
    && pip install --force-reinstall --no-deps "opencv-python-headless<5" \
    && useradd --create-home --uid 1000 labelloop \
    && mkdir -p /cache /models && chown labelloop /cache /models

USER labelloop
WORKDIR /home/labelloop
VOLUME ["/cache"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=4)"
ENTRYPOINT ["labelloop"]
CMD ["serve", "--no-rq-worker"]
