"""The benchmark's modes: how many repetitions, which regions, workloads, devices and
targets, and how long each measured run lasts (``full``, ``quick``, ``tiny``).

:class:`ModeConfig` is one mode; :data:`MODES` names them (``cblb bench``, ``--quick``,
``--tiny``). Nothing here runs anything: the rig (:mod:`.rig`), the experiments
(:mod:`.experiments`) and the plan (:mod:`.runner`) read a mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from .workloads import MiB

SEED_FILE_SIZE = 409600  # the seed's temp-file size, in 512-byte blocks (200 MiB)


@dataclass
class ModeConfig:
    name: str
    reps: int
    sweep_reps: int
    region: dict[str, int]          # bytes per workload
    snapread_region: int
    sweep_region: int
    runtime: float                  # seconds of every measured run (cap or time_based)
    workloads: tuple[str, ...] = ("seq1m", "seq1m8", "rand4k", "db")
    devices: tuple[str, ...] = ("ram", "ssd")
    snapread_reps: int = 3
    tracer_pairs: int = 5           # (unloaded, loaded) pairs of the tracer-cost test
    targets: tuple[str, ...] = ("none", "cblb", "dm4k", "dm64k")
    snapread_targets: tuple[str, ...] = ("cblb", "dm4k")
    fracs: tuple[float, ...] = (0.1, 0.5)
    totals: tuple[int, ...] = (1, 4, 16, 64, 255)
    several: int = 4
    file_sizes: tuple[int, ...] = (2048, 8192, 32768, 131072, SEED_FILE_SIZE)
    max_files_small: int = 2048     # file size of the max-files sweep (1 MiB)
    max_files: tuple[int, ...] = (4, 8, 16, 64)
    warmup: bool = True
    warmup_targets: tuple[str, ...] = ("none", "cblb", "dm4k", "dm64k")
    dm_rewrite: bool = True         # also time dm-snapshot's rewrite pass (no target needs it)
    skip: tuple[tuple[str, str], ...] = ()   # (target, workload) pairs not compared
    totals_several: bool = True     # total=N also with several snapshots at once
    catalog_on_origin: bool = True
    # changed-block tracking's cost: in the first cbt_reps repetitions of the comparison,
    # each workload of cbt_workloads runs once more, the origin tracked (no snapshot), next
    # to its no-snapshot run (the origin untracked), the order alternating by repetition
    cbt_reps: int = 5
    cbt_workloads: tuple[str, ...] = ("seq1m", "rand4k")
    # `cblb cat` of a snapshot (to /dev/null and through a pipe) against dd of the origin
    # (issue 24), on each device set: full mode only
    catstream_reps: int = 0

    @property
    def origin_size(self) -> int:
        """The span of the origin any experiment writes (all start at offset 0)."""
        return max(list(self.region.values()) + [self.snapread_region, self.sweep_region,
                                                 64 * MiB])



# Regions: a first pass must not run out of fresh blocks before ``runtime`` (or must be
# 512 MiB); the guest's ~1.5 GiB of writable RAM holds the origin plus one COW store.
MODES: dict[str, ModeConfig] = {
    "full": ModeConfig("full", reps=5, sweep_reps=3, runtime=10,
                       region={"seq1m": 512 * MiB, "seq1m8": 512 * MiB, "rand4k": 128 * MiB,
                               "db": 128 * MiB},
                       snapread_region=64 * MiB, sweep_region=128 * MiB, snapread_reps=5,
                       tracer_pairs=9, snapread_targets=("cblb", "dm4k", "dm64k"),
                       catstream_reps=3),
    # quick: 2 repetitions, not 3: under emulation one 5 s fio run costs about 9 s, and a
    # dm-snapshot set-up and removal about 7 s more; 3 would not fit 20 minutes. For the
    # same reason changed-block tracking is paired in one repetition and the write hook's
    # cost measured in 4 pairs (not 5).
    "quick": ModeConfig("quick", reps=2, sweep_reps=1, runtime=5, tracer_pairs=4, cbt_reps=1,
                        region={"seq1m": 512 * MiB, "rand4k": 128 * MiB},
                        workloads=("seq1m", "rand4k"),
                        snapread_region=32 * MiB, sweep_region=128 * MiB, snapread_reps=2,
                        snapread_targets=("cblb",), totals=(1, 255), several=2,
                        file_sizes=(2048, SEED_FILE_SIZE), max_files=(4,),
                        warmup_targets=("cblb", "dm4k"), dm_rewrite=False,
                        skip=(("dm64k", "rand4k"),), totals_several=False,
                        catalog_on_origin=False),
    "tiny": ModeConfig("tiny", reps=2, sweep_reps=1, runtime=2,
                       region={"seq1m": 64 * MiB, "rand4k": 16 * MiB},
                       workloads=("seq1m", "rand4k"),
                       snapread_region=16 * MiB, sweep_region=16 * MiB, snapread_reps=1,
                       tracer_pairs=2, snapread_targets=("cblb",), totals=(1, 255),
                       several=2, file_sizes=(2048, SEED_FILE_SIZE), max_files=(1,),
                       warmup=False, catalog_on_origin=False, cbt_reps=1),
}
MIN_BYTES = 512 * MiB   # a run shorter than ``runtime`` must move at least this much
