"""The first call of a command that a launcher (torchrun, srun) may start on every rank.

Where a process sits in the job is infermeter.engine.ranks; what the ranks do once joined is
infermeter.engine.launched.
"""

from __future__ import annotations

import sys
from typing import Any

from infermeter.engine.launched import join, serve
from infermeter.engine.ranks import LaunchEnv, launch_env
from infermeter.errors import UserError
from infermeter.measure.meter import Meter


def node_meter(options: dict[str, Any]) -> Meter:
    """The Meter over this node's GPUs (its ranks' cuda:0 .. local_world - 1), built on a
    node's first rank with rank 0's `options` (interval_s, power_field)."""
    env = launch_env()
    assert env is not None, "a node meter is built on a launched rank"
    return Meter.for_device("cuda", env.local_world, local=True, **options)


def serve_if_follower(tp: int | None = None) -> LaunchEnv | None:
    """The first call of a command that a launcher may start on every rank (profile, energy).
    A rank other than 0 serves rank 0 until it ends, then exits the process with serve's
    status; rank 0 joins the job and gets its LaunchEnv; without a launcher, None. With `tp`
    (the ranks the command's one model runs over), every rank raises UserError where the
    launcher started another number of ranks: rank 0 would otherwise run alone and leave the
    others idle."""
    env = launch_env()
    if env is None:
        return None
    if tp is not None and tp != env.world:
        raise UserError(
            f"{env.launcher} started {env.world} ranks ({env.nodes} node(s) x "
            f"{env.local_world}) and one model runs over all of them: pass --tp {env.world}, "
            f"or launch {tp} rank(s)"
        )
    if env.rank != 0:
        sys.exit(serve(node_meter))
    join(env)
    return env
