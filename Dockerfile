# convostream: one image for every component; the sub-command picks the role
# (collect, process, command-worker, simulate...). Build from the repository root:
#   docker build -t convostream .
# Dependencies come only from requirements.lock (hash-pinned; `make lock` regenerates it), so
# two builds of one commit install the same bytes. The embedded broker (extra `embedded`) is
# left out: production talks to a real Kafka. Pin the base image further with
#   --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest of your mirror>
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN python -m venv /opt/convostream
COPY requirements.lock /src/requirements.lock
RUN /opt/convostream/bin/pip install --no-cache-dir --require-hashes \
        -r /src/requirements.lock
COPY pyproject.toml README.md /src/
COPY commands /src/commands
COPY convostream /src/convostream
COPY ingest /src/ingest
COPY postcall /src/postcall
COPY processors /src/processors
COPY rules /src/rules
COPY schemas /src/schemas
COPY simulator /src/simulator
COPY upstream /src/upstream
RUN /opt/convostream/bin/pip install --no-cache-dir --no-deps /src

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/convostream/bin:$PATH \
    CONVOSTREAM_LOG_FORMAT=json
COPY --from=build /opt/convostream /opt/convostream
RUN useradd --system --uid 10001 --user-group --no-log-init \
        --home-dir /var/lib/convostream --create-home convostream
# The working directory is the processors' state (Faust/RocksDB data): a volume or a PVC.
WORKDIR /var/lib/convostream
USER 10001:10001
# The operations port of every component; 8090: `convostream webhooks`' receiver.
EXPOSE 9100 8090
ENTRYPOINT ["convostream"]
CMD ["--help"]
