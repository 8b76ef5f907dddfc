"""Two builds of the real server driven at once on one core: which is cheaper per check?

    python -m bench.together [--runs N] [--duration S] BEFORE AFTER

BEFORE and AFTER are source trees of this repository (a ``git worktree`` of
another commit, say). Each runs the real server from its own tree, both pinned
to the server CPU, and both are saturated together by their own h2load on the
load CPU. Sharing the core, each gets about half of it, so AFTER / BEFORE
req/s is their ratio of costs per check; a slow phase of this noisy machine
hits both alike, which lets a change of about one per cent show. Which server
starts its load first alternates; running a tree against itself measures what
the method itself favours (a few tenths of a per cent here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from bench.suite import check_body, create_key, saturate_together, started


def main(argv: Sequence[str] | None = None) -> int:
    """Prints AFTER / BEFORE req/s per run, then the median and spread."""
    parser = argparse.ArgumentParser(prog="python -m bench.together")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        servers = [
            stack.enter_context(started(name, variant="real", source=tree.resolve()))
            for name, tree in (("before", args.before), ("after", args.after))
        ]
        bodies = {
            server.name: check_body(create_key(server, ["campaigns.read"])) for server in servers
        }
        ratios = []
        for _ in range(args.runs):
            done = saturate_together(servers, bodies, args.duration)
            ratios.append(done["after"].rps / done["before"].rps)
            print(
                f"before {done['before'].rps:7,.0f} req/s   after {done['after'].rps:7,.0f} req/s"
                f"   after / before {ratios[-1]:.3f}",
                flush=True,
            )
            servers.reverse()
        print(
            f"after / before: median {statistics.median(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f}) over {args.runs} runs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
