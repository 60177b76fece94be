"""Energy across nodes: each node meters its own GPUs, rank 0 adds them up per window.

A run whose ranks span several nodes (torchrun or srun, infermeter.engine.launched) gets a
ClusterMeter on rank 0 from `Meter.for_device`: a Meter over rank 0's node, plus the same on
the first rank of every other node, opened, read and closed at the same edges. Outside an
engine call (a profile's window around whole calls) rank 0 sends each edge to the other nodes
as a command and waits for them; inside one (a dataset batch's window around the timed
generation) the edge is a barrier of all ranks and the end a gather over the gloo group.

A window's energy is the sum over all GPUs of all nodes (`energy_per_gpu_j` lists them node by
node). Words to Watts read rank 0's node and multiplied by the node count; where that differs
from the sum the window records it too (`energy_rank0_node_x_nodes_j`), with each node's joules
and window length (`energy_per_node_j`, `energy_node_window_s`). Power timelines (samples),
the thermal warm-up's power and power caps are rank 0's node's only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infermeter.measure.window import EnergyWindow, Window

METER_TIMEOUT_S = 120.0  # a node's meter answers an edge or a reading within this


@dataclass
class NodesWindow(EnergyWindow):
    """An EnergyWindow summed over nodes, with each node's part."""

    nodes: int = 1
    per_node_j: list[float | None] = field(default_factory=list)
    node_window_s: list[float | None] = field(default_factory=list)

    @property
    def rank0_node_x_nodes_j(self) -> float | None:
        """Words to Watts' figure: rank 0's node's joules times the node count."""
        first = self.per_node_j[0] if self.per_node_j else None
        return None if first is None else first * self.nodes

    def as_extra(self) -> dict[str, Any]:
        """EnergyWindow.as_extra plus the node count and each node's joules and window length
        (s); `energy_rank0_node_x_nodes_j` only where Words to Watts' figure differs
        from the sum (relative 1e-9)."""
        extra = {
            **super().as_extra(),
            "nodes": self.nodes,
            "energy_per_node_j": self.per_node_j,
            "energy_node_window_s": self.node_window_s,
        }
        scaled, total = self.rank0_node_x_nodes_j, self.total_j
        if scaled is not None and (total is None or abs(scaled - total) > 1e-9 * abs(total)):
            extra["energy_rank0_node_x_nodes_j"] = scaled
        return extra


def combine(windows: list[EnergyWindow | None]) -> NodesWindow:
    """One window over all nodes from each node's (rank 0's node first; None: a node that
    measured nothing, which leaves the total unknown)."""
    first = windows[0]
    assert first is not None, "rank 0's node always has its window"
    whole = all(w is not None and w.energy_j is not None for w in windows)
    energy = [j for w in windows if w is not None for j in (w.energy_j or [])] if whole else None
    methods = {w.method for w in windows if w is not None}
    method = (methods.pop() if len(methods) == 1 else "counter+integrated") if whole else "none"

    def total(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else float(sum(v for v in values))  # type: ignore[misc]

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return float(np.mean(known)) if known else None

    seconds = first.seconds
    return NodesWindow(
        name=first.name,
        start=first.start,
        end=first.end,
        energy_j=energy,
        method=method,
        integrated_j=total([w.integrated_j if w else None for w in windows]),
        idle_w=total([w.idle_w if w else None for w in windows]),
        mean_power_w=float(sum(energy) / seconds) if energy is not None and seconds > 0 else None,
        sm_util=mean([w.sm_util if w else None for w in windows]),
        mem_util=mean([w.mem_util if w else None for w in windows]),
        short=any(w.short for w in windows if w is not None),
        temperature_c=_extreme(max, [w.temperature_c if w else None for w in windows]),
        sm_clock_mhz=_extreme(min, [w.sm_clock_mhz if w else None for w in windows]),
        nodes=len(windows),
        per_node_j=[w.total_j if w else None for w in windows],
        node_window_s=[w.seconds if w else None for w in windows],
    )


def _extreme(pick: Any, values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(pick(known)) if known else None


class ClusterMeter:
    """Meter's interface over the GPUs of every node of a launched run (rank 0's side).

    `local`: rank 0's node's Meter; `cluster`: the launched job (infermeter.engine.launched);
    `options`: what each other node's first rank builds its own Meter with (interval_s,
    power_field). Whatever is not a window edge or a reading of all nodes (the clock, the
    samples) is rank 0's node's. Raises RankLost where a node stops answering.
    """

    spans_nodes = True

    def __init__(self, local: Any, cluster: Any, options: dict[str, Any] | None = None) -> None:
        self.local, self.cluster = local, cluster
        self.idle_w: float | None = None
        env = cluster.env
        self.nodes = env.nodes
        self._windows = 0
        # Each node's first rank, by what every rank recorded when it joined.
        infos = [cluster.rank_info(r) for r in range(env.world)]
        leaders = {int(i["node"]): int(i["rank"]) for i in infos if int(i["local_rank"]) == 0}
        self.leaders = [leaders[n] for n in sorted(leaders) if leaders[n] != env.rank]
        self._each("open", dict(options or {}))
        self._described = self._each("describe")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    def _each(self, what: str, *args: Any) -> list[Any]:
        """`what` on every node's meter (a command to the others, then rank 0's own); the
        answers node by node, rank 0's first."""
        cluster = self.cluster
        seq = cluster.post(("meter", (what, *args), {}))
        mine = getattr(self.local, what)(*args) if what != "open" else None
        replies = cluster.collect(seq, f"meter {what}", METER_TIMEOUT_S)
        for rank, (status, payload) in replies.items():
            if status != "ok":
                raise RuntimeError(f"the meter of {cluster.name(rank)} failed ({what}):\n{payload}")
        return [mine, *(replies[r][1] for r in self.leaders)]

    # ---- the whole run's figures ---------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Rank 0's node's description, with every node's GPUs (node by node) and notes."""
        parts = self._each("describe")
        out = dict(parts[0])
        out["nodes"] = self.nodes
        out["gpus"] = [
            {**gpu, "node": node}
            for node, part in enumerate(parts)
            for gpu in (part or {}).get("gpus", [])
        ]
        out["notes"] = sorted({n for part in parts if part for n in part.get("notes", [])})
        out["per_node_energy_method"] = [(p or {}).get("energy_method") for p in parts]
        out["samples"] = "rank 0's node's GPUs only"
        return out

    def measure_idle(self, seconds: float = 1.0) -> float | None:
        """Summed idle power (W) of every node's GPUs; None where a node has no reading."""
        parts = self._each("measure_idle", seconds)
        self.idle_w = None if any(p is None for p in parts) else float(sum(parts))
        return self.idle_w

    def start(self) -> ClusterMeter:
        """Start every node's sampler; returns self. Raises RankLost where a node stops
        answering."""
        self._each("start")
        return self

    def stop(self) -> None:
        """Stop every node's sampler (also `close`)."""
        self._each("stop")

    close = stop

    def memory_used_gb(self) -> float | None:
        """The most GPU memory (GB, decimal) any node's meter reads in use; None where no node
        can tell."""
        parts = [p for p in self._each("memory_used_gb") if p is not None]
        return max(parts) if parts else None

    def power_limits_w(self) -> list[float | None]:
        """Every GPU's power limit (W), node by node (None where NVML cannot tell)."""
        return [w for part in self._each("power_limits_w") for w in (part or [])]

    # ---- windows -------------------------------------------------------------------------
    def window(self, name: str = "window") -> Window:
        """A Window (infermeter.measure.window.Window) whose edges reach every node."""
        self._windows += 1
        return Window(self, f"{name}#{self._windows}")  # type: ignore[arg-type]

    def begin(self, name: str, sync: Any = None) -> None:
        """Open window `name` on every node: inside an engine call at the ranks' barrier, else
        as a command each node's first rank answers. Raises RankLost where a node
        stops answering."""
        if self.cluster.in_call:  # the engine's ranks are at a barrier (DriverWindow)
            self.local.begin(name, sync)
            return
        seq = self.cluster.post(("meter", ("begin", name), {}))
        self.local.begin(name, sync)
        self.cluster.collect(seq, "meter begin", METER_TIMEOUT_S)

    def end(self, name: str, sync: Any = None) -> NodesWindow:
        """Close window `name` on every node and return their sum as a NodesWindow (rank 0's
        node first). Raises RankLost where a node stops answering."""
        if self.cluster.in_call:
            mine = self.local.end(name, sync)
            gathered = self.cluster.gather(None) or []
            return combine([mine, *(gathered[r] for r in self.leaders)])
        seq = self.cluster.post(("meter", ("end", name), {}))
        mine = self.local.end(name, sync)
        replies = self.cluster.collect(seq, "meter end", METER_TIMEOUT_S)
        return combine([mine, *(replies[r][1] for r in self.leaders)])
