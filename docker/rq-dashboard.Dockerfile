# rq-dashboard: queues (labelloop-train, labelloop-predict), workers, jobs and the failed registry
# with each job's reason. constraints.txt pins rq to the version inside the labelloop image.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
COPY docker/constraints.txt /tmp/
RUN pip install -c /tmp/constraints.txt "rq-dashboard==0.9.0" rq && useradd --create-home --uid 1000 rqdash
COPY docker/healthcheck.py /usr/local/bin/labelloop-healthcheck

USER rqdash
EXPOSE 9181
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s \
    CMD ["python", "/usr/local/bin/labelloop-healthcheck", "http", "http://127.0.0.1:9181/0/data/queues.json"]
ENTRYPOINT ["rq-dashboard"]
