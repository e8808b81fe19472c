# `make test` and `make run` set up .venv on first use.
PY ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test run bench lint reproduce clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

run: $(STAMP)
	$(BIN)/cellsearch run studies/quickstart.yaml
	$(BIN)/cellsearch leaderboard studies/quickstart.yaml
	$(BIN)/cellsearch export studies/quickstart.yaml --out runs/quickstart/best --force

# every published cell vs torch.nn.LSTM (~10 min on 2 idle cores each) into docs/bench/ with the allocator
# tuned as for training (nn.LSTM at its best: the fair comparison), then into docs/bench/default-malloc/
# with glibc's defaults; on a shared machine e.g. `make bench BENCH_ARGS="--resume --patience 6"`
# re-measures only rounds that other processes disturbed
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/cellsearch bench --all --out docs/bench $(BENCH_ARGS)
	$(BIN)/cellsearch bench --all --allocator default --no-memory --out docs/bench/default-malloc $(BENCH_ARGS)

# every reproduction of docs/REPRODUCTION.md at CPU size (tables + plots into docs/reproduction/)
REPRO_WORKERS ?= 2
reproduce: $(STAMP)
	$(BIN)/cellsearch reproduce all --size cpu --workers $(REPRO_WORKERS) --out docs/reproduction

lint: $(STAMP)
	$(BIN)/ruff check cellsearch plugins tests

clean:
	rm -rf $(VENV) runs .pytest_cache

# the scripted kill checks (issues 12 and 19; not timed tests): SIGKILL at random moments of a SQLite and a
# 2-worker PostgreSQL study (10 repetitions each; PostgreSQL from this machine's server binaries, as .ci/run),
# then a Ray node killed mid-trial (3 repetitions); tables into docs/reliability/ (docs/RELIABILITY.md)
.PHONY: chaos
CHAOS_ARGS ?= --reps 10
chaos: $(STAMP)
	$(BIN)/python scripts/kill_loop.py --backend both $(CHAOS_ARGS) --out docs/reliability/kill_loop.md
	$(BIN)/python scripts/ray_node_kill.py --reps 3 --out docs/reliability/ray_node_kill.md
