"""The creator API's seed variety: `settings.variety` puts ZTurboSeedVariety in the graph, which the
server runs; a bad value is a 400 naming it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from server.test_creator_routes import real, real_config, run_to_history  # noqa: F401 (fixtures)


def test_variety_goes_into_the_graph_and_runs(real: TestClient) -> None:  # noqa: F811
    settings = {"prompt": "a fox", "width": 32, "height": 32, "steps": 2, "seed": 3, "variety": 0.4}
    graph = real.post("/zturbo/graph", json={"settings": settings}).json()["prompt"]
    assert graph["40"] == {
        "class_type": "ZTurboSeedVariety",
        "inputs": {"model": ["4", 0], "strength": 0.4, "steps_fraction": 0.3},
    }
    entry = run_to_history(real, settings)
    assert entry["status"]["status_str"] == "success", entry["status"]
    bad = real.post("/zturbo/graph", json={"settings": {"prompt": "x", "variety": -1}})
    assert bad.status_code == 400 and "variety: strength must be 0 or more" in bad.json()["error"]["message"]
