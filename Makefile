# The two quick-start commands, `make demo` and `make test`, work on a fresh Debian 12
# machine as root: each creates .venv if missing, installs what it needs, then does its job.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests and the demo use: the fixture image is built from
# busybox-static; skopeo and umoci read our images in the interop tests; docker-registry
# (with htpasswd from apache2-utils) is the real registry the tests start; pigz and zstd
# are peers in the processor tests and benchmarks; btrfs-progs makes the loop-backed btrfs
# the snapshot tests use; runc runs the containers; zsh runs the completion script's test;
# containerd (ctr) and stargz-snapshotter (ctr-remote) are the peers that read and write
# eStargz and zstd:chunked layers; fuse3 (libfuse3-3) is what mfusepy serves lazy mounts with.
APT_PACKAGES := busybox-static skopeo umoci docker-registry apache2-utils pigz zstd btrfs-progs runc \
	zsh containerd stargz-snapshotter fuse3

DEMO_DIR := out/demo

.PHONY: all setup apt demo test lint clean bench-venv

all: test

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing (run as root, or apt-get install them)"; exit 1; fi; \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# Byte-compile the tree: start-up time is part of every command's cost, and some
# environments set PYTHONDONTWRITEBYTECODE, so nothing would ever be cached otherwise.
setup: apt $(STAMP)
	@$(BIN)/python -m compileall -q imgpipe formats processors cli >/dev/null

demo: setup
	-umount $(DEMO_DIR)/rootfs 2>/dev/null
	rm -rf $(DEMO_DIR)
	$(BIN)/python -m fixtures.build $(DEMO_DIR)/fixtures
	$(BIN)/imgpipe --root $(DEMO_DIR)/root pull oci:$(DEMO_DIR)/fixtures/layered:layered
	$(BIN)/imgpipe --root $(DEMO_DIR)/root images
	$(BIN)/imgpipe --root $(DEMO_DIR)/root inspect layered
	$(BIN)/imgpipe --root $(DEMO_DIR)/root content verify
	$(BIN)/imgpipe --root $(DEMO_DIR)/root unpack layered
	mkdir -p $(DEMO_DIR)/rootfs
	$(BIN)/imgpipe --root $(DEMO_DIR)/root mount --read-only layered $(DEMO_DIR)/rootfs
	ls -l $(DEMO_DIR)/rootfs
	$(BIN)/imgpipe --root $(DEMO_DIR)/root umount $(DEMO_DIR)/rootfs
	$(BIN)/imgpipe --root $(DEMO_DIR)/root snapshots ls
	$(BIN)/imgpipe --root $(DEMO_DIR)/root run --rm layered echo hello from imgpipe

# The benchmarks time imgpipe as users install it: a regular (not editable) install in a
# venv of its own, run as `.venv-bench/bin/python benchmarks/NAME.py`. The editable
# install's import finder costs every command of .venv ~25 ms (`python -c pass` 46 ms
# there, 20 ms here), which a benchmark would charge to imgpipe.
BENCH_VENV := .venv-bench

bench-venv: setup
	rm -rf $(BENCH_VENV)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q .

# mypy cannot follow setuptools' package-dir mapping (formats/ installs as
# imgpipe.formats), so it checks a tree of symlinks laid out as the installed package.
TYPECHECK := build/typecheck

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check imgpipe formats processors cli
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/imgpipe
	for f in imgpipe/*; do ln -s "$$PWD/$$f" $(TYPECHECK)/imgpipe/; done
	ln -s "$$PWD/formats" $(TYPECHECK)/imgpipe/formats
	ln -s "$$PWD/processors" $(TYPECHECK)/imgpipe/processors
	ln -s "$$PWD/cli" $(TYPECHECK)/imgpipe/cli
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p imgpipe

test: setup lint
	$(BIN)/pytest

clean:
	rm -rf out build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache
