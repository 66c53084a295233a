"""Benchmarks of cblb against no snapshot and dm-snapshot (issue 7).

- :mod:`.workloads` - the fio jobs and the parser of fio's JSON output
- :mod:`.setup`     - loop devices, catalogs and dm-snapshot tables in the guest
- :mod:`.runner`    - the plan of experiments, run step by step with progress
- :mod:`.analysis`  - pure functions: summaries (min/median/max), ratios, targets,
                      the recommendation; used by the report and by the tests
- :mod:`.report`    - results.json -> report.html with PNG figures

Everything that touches the module goes through :class:`cblb.control.Controller`.
bench/README.md explains how to run the benchmark and how to read the report.
"""

SCHEMA_VERSION = 1
