# The README's two commands are `make experiment` and `make test`; both first fetch the data
# sets (sha256-checked) and the ONNX Runtime library, idempotently.
CARGO ?= cargo

.PHONY: setup experiment test bench lint

setup:
	./scripts/setup-data.sh
	./scripts/setup-ort.sh

experiment: setup
	$(CARGO) run --release -- experiment --dataset mnist --corruption label-symmetric:0.4 --seed 1

test: setup
	$(CARGO) test --release

bench: setup
	$(CARGO) run --release -- bench

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings
