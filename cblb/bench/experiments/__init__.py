"""The benchmark's experiments, one module each, named as the ``experiment`` of the records
it writes (results.json's ``runs``):

- :mod:`.compare`   - origin writes under no snapshot, cblb and dm-snapshot: first pass, rewrite
- :mod:`.cbt`       - changed-block tracking: its cost on writes, its kernel memory per TiB
- :mod:`.snapread`  - reads of the origin and of the snapshot (and ``verify``, hashing speed)
- :mod:`.catstream` - ``cblb cat`` of a snapshot against dd of the origin
- :mod:`.tracer`    - the module's write hook on its own: unloaded against loaded
- :mod:`.totals`    - one or several snapshots with the module's ``total=N``
- :mod:`.filesize`  - the temp files' size: start latency, files used, the store's growth
- :mod:`.maxfiles`  - small temp files and ``max_files``: when the store fills
- :mod:`.start`     - start latency of a snapshot of a mounted ext4 origin
- :mod:`.catorigin` - the catalog on the origin's own filesystem

Each is a function of the :class:`~cblb.bench.rig.Rig` and its parameters, called by a step
of the plan (:mod:`cblb.bench.runner`); the experiments never import each other
(pyproject.toml's import-linter contracts).
"""
