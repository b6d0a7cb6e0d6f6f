"""A scraper in a process of its own, as Prometheus is: `python -m tests.perf.scrape_loop URL S`.

Started once, before measuring: it scrapes once straight away, then every S seconds between a
"go" and a "stop" line on stdin, and prints the wall time of each of those scrapes (ms) as JSON.
The benchmark used to start curl from inside the daemon's process for each scrape; each start
forked the daemon (uvloop forks), and the copy-on-write faults that followed made the next
collector passes 12-24 ms long, so the "scraped" phase measured forks as well as scrapes.
"""

from __future__ import annotations

import json
import select
import sys
import time
import urllib.request

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def scrape(url: str) -> float:
    start = time.perf_counter()
    request = urllib.request.Request(url, headers={"Accept": OPENMETRICS})
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    url, every = sys.argv[1], float(sys.argv[2])
    walls: list[float] = []
    # Prometheus scrapes a target from its start: the first render (which builds the encoders
    # and caches of every series, 0.3-0.5 s at 1,000 probes) is not part of the steady state.
    scrape(url)
    if sys.stdin.readline().strip() == "go":
        while True:
            ready, _, _ = select.select([sys.stdin], [], [], every)
            if ready:
                break  # "stop", or the benchmark went away
            walls.append(scrape(url))
    print(json.dumps(walls), flush=True)


if __name__ == "__main__":
    main()
