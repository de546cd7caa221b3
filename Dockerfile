# convostream: one image for every component; the sub-command picks the role
# (collect, process, command-worker, simulate...). Build from the repository root:
#   docker build -t convostream .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY convostream ./convostream
COPY ingest ./ingest
COPY processors ./processors
COPY schemas ./schemas
COPY simulator ./simulator
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[rocksdb]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CONVOSTREAM_LOG_FORMAT=json
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "convostream[rocksdb]" \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --no-log-init \
        --home-dir /var/lib/convostream --create-home convostream
# The working directory is the processors' state (Faust/RocksDB data): a volume or a PVC.
WORKDIR /var/lib/convostream
USER 10001:10001
EXPOSE 9100
ENTRYPOINT ["convostream"]
CMD ["--help"]
