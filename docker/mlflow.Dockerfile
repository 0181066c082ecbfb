# The MLflow tracking server and model registry: metadata in PostgreSQL, artifacts (weights, ONNX,
# model cards) on a volume and served through the server (--serve-artifacts), so clients need no
# access to the volume. constraints.txt pins it to the mlflow client inside the labelloop image.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
COPY docker/constraints.txt /tmp/
RUN pip install -c /tmp/constraints.txt mlflow "psycopg[binary]" \
    && useradd --create-home --uid 1000 mlflow \
    && mkdir -p /mlflow/artifacts && chown -R mlflow /mlflow
COPY docker/healthcheck.py /usr/local/bin/labelloop-healthcheck

USER mlflow
VOLUME ["/mlflow/artifacts"]
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s \
    CMD ["python", "/usr/local/bin/labelloop-healthcheck", "http", "http://127.0.0.1:5000/health"]
ENTRYPOINT ["mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
