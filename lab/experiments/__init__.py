"""Experiments: what `lab experiment` and `lab capacity` run, each backend/mode in a process of its own
through a launcher. `steps` holds what every experiment does (resolve the model once, run one
backend/mode with the collector beside it, write the manifest); `merge` gathers the runs' files into
the run folder; `offline` and `capacity` are the experiments."""
