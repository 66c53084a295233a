"""Benchmarks of cblb against no snapshot and dm-snapshot (issue 7).

- :mod:`.runner`      - the plan of experiments, run step by step with progress
- :mod:`.experiments` - one module per experiment (compare, cbt, snapread, ...)
- :mod:`.rig`         - what they stand on: the module loaded, the device sets, the targets
- :mod:`.devices`     - loop devices, null_blk, catalogs and dm-snapshot tables in the guest
- :mod:`.workloads`   - the fio jobs and the parser of fio's JSON output
- :mod:`.modes`       - full, quick and tiny: repetitions, regions, workloads, targets
- :mod:`.probes`      - the machine and kernel the results were measured on
- :mod:`.analysis`    - pure functions: summaries (min/median/max), ratios, targets,
                        the recommendation; used by the report and by the tests
- :mod:`.report`      - results.json -> report.html with PNG figures

The plan calls down into the experiments, they into the rig, the rig into the devices,
modes and workloads, never back up (pyproject.toml's import-linter contracts).
Everything that touches the module goes through :class:`cblb.control.Controller`.
bench/README.md explains how to run the benchmark and how to read the report.
"""

SCHEMA_VERSION = 1
