# The README's commands: `make demo` (the main one), `make experiment` and `make test`; each
# first fetches the data sets (sha256-checked), the ONNX Runtime library and, for the tests,
# the Apache Kafka broker jars and the python clients' venv, idempotently.
CARGO ?= cargo

.PHONY: setup setup-kafka setup-prometheus setup-clients setup-peers setup-torch bench-peer demo experiment test bench bench-stream bench-quality bench-prune bench-repair bench-cycles lint lint-py

setup:
	./scripts/setup-data.sh
	./scripts/setup-ort.sh

setup-kafka:
	./scripts/kafka.sh fetch

setup-prometheus:
	./scripts/setup-prometheus.sh

demo: setup
	$(CARGO) run --release -- demo

experiment: setup
	$(CARGO) run --release -- experiment --dataset mnist --corruption label-symmetric:0.4 --seed 1

# Real third-party clients the tests drive rlap with (Triton's HTTP client for the Open
# Inference Protocol; confluent-kafka and numpy for examples/python), pinned, in a project-local
# venv; a no-op once they import. About 30 s the first time.
CLIENTS_PY := .cache/clients/bin/python
setup-clients:
	test -x $(CLIENTS_PY) || python3 -m venv .cache/clients
	$(CLIENTS_PY) -c 'import tritonclient.http, tritonclient.grpc.model_config_pb2, confluent_kafka, numpy' 2>/dev/null || \
	  $(CLIENTS_PY) -m pip install --quiet 'tritonclient[http,grpc]==2.73.0' confluent-kafka==2.16.1 numpy==2.4.6

# Tests that need a real broker use $RLAP_KAFKA_BROKERS, or start one with scripts/kafka.sh;
# the Prometheus end-to-end test runs Debian's prometheus from .cache/prometheus; the client
# tests run python from .cache/clients.
test: setup setup-kafka setup-prometheus setup-clients
	$(CARGO) test --release

bench: setup
	$(CARGO) run --release -- bench

# Throughput, sample->verdict latency and RSS of the daemon against a real local broker.
# The broker's log lives in RAM (/dev/shm) by default, when /dev/shm has 9 GB free (the two
# phases write about 6 GB): on this VM's disk the kernel writes the broker's dirty pages back in
# one burst every ~32 s (vm.dirty_expire_centisecs = 3000), which blocks the co-located broker
# for about a second and sets the p99 (README, "Benchmarks"). BENCH_KAFKA_DIR= (empty) measures
# with the broker on disk. The broker is stopped (and its log removed) on exit and on Ctrl-C.
BENCH_KAFKA_DIR ?= $(shell test "$$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {print $$4}')" -gt 9000000 2>/dev/null && echo /dev/shm/rlap-bench-kafka-$$(id -u)-39092)
bench-stream: setup setup-kafka
	$(CARGO) build --release
	export RLAP_KAFKA_DIR='$(BENCH_KAFKA_DIR)'; \
	  echo "bench-stream: broker log in $${RLAP_KAFKA_DIR:-.cache/kafka/run-39092}"; \
	  trap './scripts/kafka.sh stop 39092' EXIT; trap 'exit 130' INT TERM; \
	  ./scripts/kafka.sh start 39092 && \
	  $(CARGO) run --release -- bench-stream --brokers 127.0.0.1:39092 --json out/bench-stream.json

# The peers of the quality benchmark (cleanlab, scikit-learn's GMM) in a project-local venv.
PEERS_PY := .cache/peers/bin/python
setup-peers:
	test -x $(PEERS_PY) || python3 -m venv .cache/peers
	$(PEERS_PY) -c 'import cleanlab, sklearn' 2>/dev/null || \
	  $(PEERS_PY) -m pip install --quiet scikit-learn==1.9.1 cleanlab==2.9.0

# PyTorch (CPU wheels from PyPI; the Linux wheel pulls its CUDA libraries too, ~5 GB) as the
# speed peer of `rlap bench`, in its own project-local venv.
TORCH_PY := .cache/torch/bin/python
setup-torch:
	test -x $(TORCH_PY) || python3 -m venv .cache/torch
	$(TORCH_PY) -c 'import torch, numpy' 2>/dev/null || \
	  $(TORCH_PY) -m pip install --quiet torch==2.15.0 numpy

# rlap beside PyTorch on this CPU: same models, batches and work, interleaved rounds, medians
# and ratios (README, "Speed"). About 5 min on 2 cores.
bench-peer: setup setup-torch
	$(CARGO) build --release
	$(TORCH_PY) benches/torch_peer.py --json out/bench-peer.json

# Verdict quality against cleanlab and the small-loss GMM on the same labels (README,
# "Verdict quality"): Fashion-MNIST (20,000-sample subsample) and the UCI digits table, six
# noise kinds, the stream and the experiment at 5 and 30 epochs. About 30 min on 2 cores.
bench-quality: setup setup-peers
	$(CARGO) build --release
	$(PEERS_PY) benches/quality.py

# Pruning ablation (README, "Does pruning help?"): RLAP vs random vs no pruning on one partition.
bench-prune: setup
	$(CARGO) build --release
	./scripts/prune-ablation.sh

# Repair against the Oracle (README, "Does the repair work"): F-FT, Retrain, Relabel, Forward, Oracle.
# The human-like rows need `make bench-quality` first (its matrices and the digits CSV).
bench-repair: setup
	$(CARGO) build --release
	./scripts/repair-vs-oracle.sh

# Many cycles on one long stream (README, "Many cycles"): 20+ cycles at a steady 20 % noise,
# with and without regrowing pruned neurons, Fashion-MNIST and MNIST. About 15 min on 2 cores.
bench-cycles: setup
	$(CARGO) build --release
	./scripts/many-cycles.sh

lint: lint-py
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

# The library's module graph (scripts/module_deps.py: no import loop, no upward import) and
# pyflakes over every Python file (a venv in .cache/lint, made once).
LINT_PY := .cache/lint/bin/python
lint-py:
	python3 scripts/module_deps.py
	test -x $(LINT_PY) || python3 -m venv .cache/lint
	$(LINT_PY) -m pyflakes --version >/dev/null 2>&1 || $(LINT_PY) -m pip install -q pyflakes==4.1.0
	$(LINT_PY) -m pyflakes scripts/*.py benches/*.py examples/python/*.py tests/python/*.py docs/experiments/*.py
