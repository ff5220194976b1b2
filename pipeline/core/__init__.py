"""The run-time core: plan, input reading, stage groups, pack, manifests, lock, journal, runner."""
