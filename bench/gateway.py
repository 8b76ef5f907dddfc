"""Requests through the Envoy gateway, with and without authorization: what
the ``ext_authz`` check costs a request.

    python -m bench.gateway [--runs N] [--duration S]

Two Envoys run ``deploy/envoy/envoy.yaml``, one as it is and one without its
``ext_authz`` filter, both in front of the same upstream: a listener of each
Envoy answering 200 itself, so that the upstream costs next to nothing. The
real server (pinned to the server CPU) authorizes the first one's requests.
h2load (on the load CPU) sends the same ``GET /api/v4/campaigns`` with an
allowed key to each, in alternation, run after run; each figure is the
median of the runs, with its spread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from bench import h2
from bench.envoy import EnvoyProcess, running_envoy
from bench.suite import CLIENTS, LOAD_CPU, ROUTE, STREAMS, create_key, free_port, started

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "envoy" / "envoy.yaml"
LISTEN, UPSTREAM, SERVICE = "port_value: 8000", "port_value: 8080", "port_value: 50051"
FILTER_START = "                  - name: envoy.filters.http.ext_authz\n"
FILTER_END = "                  - name: envoy.filters.http.router\n"
LISTENERS = "  listeners:\n"
READY_TIMEOUT_S = 20.0
_CONNECTION_MANAGER = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)


def _upstream_listener(port: int) -> str:
    """A listener answering every request with 200 itself: the API stand-in."""
    return f"""    - name: upstream
      address:
        socket_address: {{ address: 127.0.0.1, port_value: {port} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": {_CONNECTION_MANAGER}
                stat_prefix: upstream
                route_config:
                  virtual_hosts:
                    - name: upstream
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          direct_response: {{ status: 200, body: {{ inline_string: "ok" }} }}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


def gateway_config(listen: int, service: int, *, authorized: bool) -> str:
    """``deploy/envoy/envoy.yaml`` on ``listen``, authorizing with the server
    on ``service`` (or not at all), in front of its own 200 listener."""
    config = CONFIG.read_text()
    for part in (LISTEN, UPSTREAM, SERVICE, FILTER_START, FILTER_END, LISTENERS):
        assert config.count(part) == 1, part
    upstream = free_port()
    config = (
        config.replace(LISTEN, f"port_value: {listen}")
        .replace(UPSTREAM, f"port_value: {upstream}")
        .replace(SERVICE, f"port_value: {service}")
        .replace(LISTENERS, LISTENERS + _upstream_listener(upstream))
    )
    if not authorized:
        start, end = config.index(FILTER_START), config.index(FILTER_END)
        config = config[:start] + config[end:]
    return config


def _wait_allowed(envoy: EnvoyProcess, url: str, key: str) -> None:
    """Until a request with ``key`` is answered 200 through ``envoy``."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {key}"})
    while True:
        if (exited := envoy.exited()) is not None:
            raise RuntimeError(exited)
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not answered 200 in {READY_TIMEOUT_S:g} s")
        time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints req/s with and without ``ext_authz`` per run, then the medians."""
    parser = argparse.ArgumentParser(prog="python -m bench.gateway")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args(argv)
    with started("gateway", variant="real") as server:
        key = create_key(server, ["campaigns.read"])
        ports = {"ext_authz": free_port(), "no ext_authz": free_port()}
        with (
            running_envoy(
                gateway_config(ports["ext_authz"], server.port, authorized=True)
            ) as authorizing,
            running_envoy(
                gateway_config(ports["no ext_authz"], server.port, authorized=False)
            ) as passing,
        ):
            urls = {name: f"http://127.0.0.1:{port}{ROUTE[1]}" for name, port in ports.items()}
            _wait_allowed(authorizing, urls["ext_authz"], key)
            _wait_allowed(passing, urls["no ext_authz"], key)
            rates: dict[str, list[float]] = {name: [] for name in urls}
            order = list(urls)
            for _ in range(args.runs):
                for name in order:
                    result = h2.run(
                        urls[name],
                        None,
                        clients=CLIENTS,
                        streams=STREAMS,
                        duration=args.duration,
                        cpu=LOAD_CPU,
                        headers=(f"authorization: Bearer {key}",),
                    )
                    assert result.failed == 0 and result.succeeded > 0, result
                    rates[name].append(result.rps)
                order.reverse()
                print(
                    f"ext_authz {rates['ext_authz'][-1]:8,.0f} req/s   "
                    f"no ext_authz {rates['no ext_authz'][-1]:8,.0f} req/s   "
                    f"ratio {rates['ext_authz'][-1] / rates['no ext_authz'][-1]:.3f}",
                    flush=True,
                )
    ratios = [a / b for a, b in zip(rates["ext_authz"], rates["no ext_authz"], strict=True)]
    for name, values in rates.items():
        spread = f"{min(values):,.0f}-{max(values):,.0f}"
        print(f"{name}: median {statistics.median(values):,.0f} req/s ({spread})")
    print(
        f"ext_authz / no ext_authz: median {statistics.median(ratios):.3f} "
        f"({min(ratios):.3f}-{max(ratios):.3f}) over {args.runs} runs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
