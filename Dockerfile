# The nicflow worker image: the package and its console script, no Temporal binaries (the
# server runs in its own container).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md worker.py alembic.ini ./
COPY nicflow ./nicflow
COPY workflows ./workflows
COPY activities ./activities
COPY migrations ./migrations
COPY kubevirt_sim ./kubevirt_sim
RUN pip install --no-cache-dir .
USER 65534
CMD ["python", "worker.py"]
