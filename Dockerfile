# wearwatch: one image for the gateway, the worker, the alert console and the simulator.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY wearwatch ./wearwatch
COPY ingest ./ingest
COPY streams ./streams
COPY detectors ./detectors
COPY alerts ./alerts
COPY console ./console
RUN pip install --no-cache-dir . && useradd --system --uid 10001 wearwatch
USER wearwatch
ENTRYPOINT ["wearwatch"]
