"""/metrics in the Prometheus text format (prometheus-client), one registry per app."""

from __future__ import annotations

from typing import Any, Iterator

from flask import Blueprint, Response, current_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cblb.errors import CblbError
from cblb.model import SnapshotState

bp = Blueprint("metrics", __name__)

STATES = [s.value for s in SnapshotState]


def _read_error(why: str) -> InfoMetricFamily:
    info = InfoMetricFamily("cblb_read_error", "why the module's state could not be read")
    info.add_metric([], {"error": why[:500]})
    return info


class CblbCollector:
    """Reads the module at scrape time through the controller; I/O from the History worker."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        ctl = self.app.config["CBLB_CONTROLLER"]
        up = GaugeMetricFamily("cblb_up", "1 if the module's state could be read, every "
                               "device's included")
        try:
            st = ctl.status()
        except (CblbError, OSError, ValueError) as e:
            up.add_metric([], 0)
            yield up
            yield _read_error(str(e))
            return
        bad = [s for s in st.snapshots if s.unreadable]
        up.add_metric([], 0 if bad else 1)
        yield up
        if bad:
            yield _read_error("; ".join(s.error for s in bad))
        yield GaugeMetricFamily("cblb_module_loaded", "1 if cblb_module is loaded",
                                value=1 if st.loaded else 0)
        if st.loaded:
            info = InfoMetricFamily("cblb_module", "cblb_module version")
            info.add_metric([], {"version": st.version or "unknown"})
            yield info
        yield GaugeMetricFamily("cblb_module_total_slots", "snapshot slots (total=N)",
                                value=st.total)
        yield GaugeMetricFamily("cblb_snapshots", "snapshot devices now",
                                value=len(st.snapshots))
        labels = ["name", "origin"]
        fams = {
            "state": GaugeMetricFamily("cblb_snapshot_state", "1 for the snapshot's state",
                                       labels=labels + ["state"]),
            "cow_bytes": GaugeMetricFamily("cblb_snapshot_cow_bytes",
                                           "bytes copied to the temp files so far", labels=labels),
            "store_bytes": GaugeMetricFamily("cblb_snapshot_store_capacity_bytes",
                                             "bytes the temp files can hold in all", labels=labels),
            "files_used": GaugeMetricFamily("cblb_snapshot_temp_files", "temp files created",
                                            labels=labels),
            "max_files": GaugeMetricFamily("cblb_snapshot_temp_files_max", "most temp files",
                                           labels=labels),
            "index_bytes": GaugeMetricFamily("cblb_snapshot_index_bytes",
                                             "memory of the copied-chunk index", labels=labels),
            "start_latency": GaugeMetricFamily("cblb_snapshot_start_seconds",
                                               "time start took, freeze to thaw", labels=labels),
            "start_time": GaugeMetricFamily("cblb_snapshot_start_time_seconds",
                                            "the point in time (unix seconds)", labels=labels),
        }
        for s in st.snapshots:
            lv = [s.name, s.origin]
            for state in STATES:
                fams["state"].add_metric(lv + [state], 1 if s.state.value == state else 0)
            fams["cow_bytes"].add_metric(lv, s.cow_bytes)
            fams["store_bytes"].add_metric(lv, s.store_bytes)
            fams["files_used"].add_metric(lv, s.files_used)
            fams["max_files"].add_metric(lv, s.max_files)
            fams["index_bytes"].add_metric(lv, s.index_bytes)
            fams["start_latency"].add_metric(lv, s.start_latency_us / 1e6)
            fams["start_time"].add_metric(lv, s.start_time_ns / 1e9)
        yield from fams.values()
        tl = ["disk", "generation"]
        track = {
            "sequence": GaugeMetricFamily("cblb_tracking_sequence", "changed-block tracking: "
                                          "sequence number of the origin's last start",
                                          labels=tl),
            "changed": GaugeMetricFamily("cblb_tracking_changed_bytes", "bytes written to the "
                                         "origin since its last start (whole map blocks)",
                                         labels=tl),
            "memory": GaugeMetricFamily("cblb_tracking_memory_bytes", "kernel memory of the "
                                        "origin's two change maps", labels=tl),
        }
        for t in st.tracking:
            lv = [t.disk, t.generation]
            track["sequence"].add_metric(lv, t.sequence)
            track["changed"].add_metric(lv, t.changed_bytes)
            track["memory"].add_metric(lv, t.memory_bytes)
        yield from track.values()
        io = self.app.extensions["cblb_history"].latest_io()
        tput = GaugeMetricFamily("cblb_origin_write_bytes_per_second",
                                 "origin write throughput, last interval", labels=["device"])
        iops = GaugeMetricFamily("cblb_origin_write_iops", "origin writes per second, last "
                                 "interval", labels=["device"])
        for dev, smp in sorted(io.items()):
            tput.add_metric([dev], float(smp.get("write_mb_s", 0.0)) * 1e6)
            iops.add_metric([dev], float(smp.get("write_iops", 0.0)))
        yield tput
        yield iops


def _registry(app: Any) -> CollectorRegistry:
    reg = app.extensions.get("cblb_metrics")
    if reg is None:
        reg = CollectorRegistry(auto_describe=False)
        reg.register(CblbCollector(app))
        app.extensions["cblb_metrics"] = reg
    return reg


@bp.get("/metrics")
def metrics() -> Response:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return Response(generate_latest(_registry(app)), mimetype=None,
                    headers={"Content-Type": CONTENT_TYPE_LATEST})
