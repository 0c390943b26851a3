#!/usr/bin/env python3
"""Prometheus file_sd targets for the local cluster, on stdout.

    scripts/prom-targets.py consul http://127.0.0.1:8500   # passing instances in Consul
    scripts/prom-targets.py static deploy/gateway.yaml     # the config's addresses

Debian's Prometheus is built without Consul discovery, so `make up-cluster`
runs this every few seconds into a file_sd file (deploy/prometheus.yml is the
consul_sd_configs equivalent for an upstream Prometheus build). Each target
group is one service, labelled job=edge|auth|router|adapter|metering.
"""

import json
import re
import sys
import urllib.request

SERVICES = {"auth": 50061, "router": 50062, "adapter": 50063, "metering": 50064}


def from_consul(agent: str) -> list:
    groups = []
    for job in ["edge", *SERVICES]:
        url = f"{agent.rstrip('/')}/v1/health/service/llmgw-{job}?passing"
        with urllib.request.urlopen(url, timeout=5) as reply:
            entries = json.load(reply)
        targets = [f"{e['Service']['Address'] or e['Node']['Address']}:{e['Service']['Port']}" for e in entries]
        groups.append({"targets": sorted(targets), "labels": {"job": job}})
    return groups


def from_config(path: str) -> list:
    """The addresses of the config's `edge.http_addr` and `services:` (or the defaults)."""
    text = open(path, encoding="utf-8").read()
    edge = re.search(r"^\s+http_addr:\s*\"?([^\s\"#]+)", text, re.M)
    groups = [{"targets": [edge.group(1) if edge else "127.0.0.1:8080"], "labels": {"job": "edge"}}]
    for job, port in SERVICES.items():
        found = re.search(rf"^\s+{job}:\s*\{{\s*addr:\s*\"?([^\s\"}}]+)", text, re.M)
        groups.append({"targets": [found.group(1) if found else f"127.0.0.1:{port}"], "labels": {"job": job}})
    return groups


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("consul", "static"):
        print(__doc__, file=sys.stderr)
        return 2
    groups = from_consul(sys.argv[2]) if sys.argv[1] == "consul" else from_config(sys.argv[2])
    print(json.dumps(groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
