"""A run's communication totals, from the ``traffic`` of its rounds (what
``federation.traffic_meter`` counted)."""

from __future__ import annotations


def run_traffic(history: list[dict], num_clients: int) -> dict | None:
    """Run totals: bytes downloaded / uploaded in all, per client of the federation, and per
    client and round over the clients that took part in a round; None for a run recorded
    before traffic was (no round has ``traffic``)."""
    rounds = [entry["traffic"] for entry in history if "traffic" in entry]
    if not rounds:
        return None
    down = sum(r["download"] for r in rounds)
    up = sum(r["upload"] for r in rounds)
    visits = sum(len(r["clients"]) for r in rounds)
    return {"download": down, "upload": up,
            "download_per_client": down / num_clients, "upload_per_client": up / num_clients,
            "download_per_client_round": down / visits if visits else 0.0,
            "upload_per_client_round": up / visits if visits else 0.0}
