"""The guard on a retrain's fixed cost (`python -m bench.startup --check`): it reads the recorded
table back and names a cost that grew beyond its spread, and no other."""

from __future__ import annotations

from bench.report import BENCHMARKS_MD, sections
from bench.startup import FLOOR_S, grown, recorded


def test_the_recorded_table_reads_back():
    before = recorded(sections(BENCHMARKS_MD.read_text())["startup"].markdown)
    assert "a local Ray: start" in before and len(before) >= 5
    assert all(low <= median <= high for median, low, high in before.values())


def test_a_cost_that_grew_beyond_its_spread_is_named_and_noise_is_not():
    before = {"a local Ray: start": (5.2, 3.7, 5.5), "Prefect's temporary server: stop": (0.2, 0.2, 0.2)}
    assert grown({"a local Ray: start": 7.0, "Prefect's temporary server: stop": 0.2 + FLOOR_S}, before) == []
    verdicts = grown({"a local Ray: start": 7.4, "Prefect's temporary server: stop": 0.9}, before)
    assert [verdict.split(":")[0] for verdict in verdicts] == ["a local Ray", "Prefect's temporary server"]
