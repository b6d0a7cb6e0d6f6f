"""One list of metric names (probed/contract.py), obeyed by the exporter, rules and dashboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from probed import contract, dashboard
from tests.test_rules import series_names

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = sorted((ROOT / "tests" / "golden").glob("*.txt"))


def test_the_exporter_matches_the_contract() -> None:
    """Every family in a golden exposition file is in the contract, with its type and labels."""
    assert GOLDEN
    for golden in GOLDEN:
        for line in golden.read_text().splitlines():
            name, kind, labels = [*line.split(" "), ""][:3]
            family = contract.BY_NAME.get(name)
            assert family is not None, f"{golden.name}: {name} is not in probed/contract.py"
            assert family.type == kind, name
            # `probe` and the global static labels (location in the golden runs) come on top;
            # `role` too, on the session families of kinds that hold several kinds of session.
            own = set(labels.split(",")) - {"probe", "location", "role", ""}
            if name in contract.PER_WORKER:  # each worker's, under --workers N
                own.discard("worker")
            assert own == set(family.labels) - {"probe"}, name
            assert family.per_probe == ("probe" in labels.split(",")) or name.startswith(
                "probed_probe_"
            )


def test_family_of_maps_histogram_series() -> None:
    assert (
        contract.family_of("probe_stt_final_seconds_bucket")
        == contract.BY_NAME["probe_stt_final_seconds"]
    )
    assert contract.family_of("probe_success_bucket") is None
    assert contract.family_of("probe_nonexistent_total") is None


def _exprs(board: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_is_generated_and_queries_only_contract_metrics() -> None:
    committed = (ROOT / dashboard.DASHBOARD_FILE).read_text()
    assert committed == dashboard.render(), "regenerate: python -m probed.dashboard --write"
    board = json.loads(committed)
    queried: set[str] = set()
    for expr in _exprs(board):
        queried |= series_names(expr)
    unknown = {n for n in queried if contract.family_of(n) is None}
    assert not unknown, f"dashboard queries names outside the contract: {sorted(unknown)}"
    shown = {f.name for n in queried if (f := contract.family_of(n)) is not None}
    missing = {f.name for f in contract.FAMILIES} - shown
    assert not missing, f"contract families the dashboard does not show: {sorted(missing)}"


def test_dashboard_is_templated_by_probe_and_location() -> None:
    board = dashboard.build()
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "location", "probe"]
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            assert 'location=~"$location"' in expr, expr
            if any(n.startswith("probe_") for n in series_names(expr)):
                assert 'probe=~"$probe"' in expr, expr


def test_dashboard_layout_has_unique_ids_and_no_overlaps() -> None:
    panels = dashboard.build()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, p["title"]
        cells |= mine
    # Latency SLO panels draw the threshold line at the contract's bucket boundary.
    slo_lines = {
        step["value"]
        for p in panels
        for step in p.get("fieldConfig", {})
        .get("defaults", {})
        .get("thresholds", {})
        .get("steps", [])
        if step["value"] is not None
    }
    assert {0.05, 0.5, 1.0} <= slo_lines
