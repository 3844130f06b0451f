# The two commands a newcomer needs are `make run` and `make test`; both set themselves up.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: run test bench protos images setup clean shim sandbox

# Snakemake finds executor plugins only when installed for real (not editable).
PLUGIN := plugins/snakemake-executor-plugin-jobnest

$(STAMP): pyproject.toml $(PLUGIN)/pyproject.toml $(wildcard $(PLUGIN)/snakemake_executor_plugin_jobnest/*.py)
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps ./$(PLUGIN)
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(PY) examples/pipeline.py

SHIM := build/shim/libjobnest_exec.so

shim: $(SHIM)

$(SHIM): shim/libjobnest_exec.c shim/exports.map scripts/build-shim.sh
	bash scripts/build-shim.sh $@

SANDBOX := build/shim/jobnest-sandbox

sandbox: $(SANDBOX)

$(SANDBOX): shim/jobnest_sandbox.c scripts/build-sandbox.sh
	bash scripts/build-sandbox.sh $@

test: $(STAMP) $(SHIM) $(SANDBOX)
	bash scripts/test-setup.sh
	$(PY) -m pytest -q --durations=15

images: $(STAMP)
	bash scripts/images.sh

bench: $(STAMP) images $(SHIM) $(SANDBOX)
	bash scripts/slurm-install.sh
	$(PY) bench/run.py

protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=sdk --pyi_out=sdk --grpc_python_out=sdk protos/jobnest/v1/jobnest.proto

clean:
	rm -rf .venv
