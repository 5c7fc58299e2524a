"""Phase 2 of FedLEASE (docs/method.md): group clients by a distance between them.

Three signals (``federation.allocation``, ``SIGNALS``): the cosine distance of their warm-up LoRA
B matrices (``lora-b``, the paper), the cosine distance of their mean frozen-model representations
(``embedding``), or both (``hybrid``: each matrix divided by its mean off-diagonal distance, then
averaged, so neither signal dominates by its scale; silhouette and average linkage then see both
equally).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedlease.registry import Registry


@dataclass(frozen=True)
class AllocationSignal:
    """What FedLEASE clusters clients by (``federation.allocation``): the distance it builds,
    whether a client has sent what it needs, and how plots title it."""

    name: str  # federation.allocation
    uses_lora_b: bool  # the clients' warm-up LoRA B matrices (uploaded after the warm-up)
    uses_embedding: bool  # the clients' representation vectors (uploaded before round 1)
    title: str  # what the clients are clustered by, on plots
    distance_name: str  # the distance, on a plot's axis

    @property
    def least_warmup_rounds(self) -> int:
        """B matrices need a warm-up round; an embedding is known before training."""
        return 1 if self.uses_lora_b else 0

    def has(self, client_id: str, lora_uploads, embeddings) -> bool:
        """Whether ``client_id`` sent what the signal needs (its warm-up upload, in
        ``lora_uploads``, and its embedding, in ``embeddings``)."""
        return ((not self.uses_lora_b or client_id in lora_uploads)
                and (not self.uses_embedding or client_id in embeddings))

    def distance(self, b_distance: np.ndarray | None, embedding_distance: np.ndarray | None,
                 scales: list[float]) -> np.ndarray:
        """The distance by this signal from the distances it uses (None: one it does not use);
        both: each divided by its scale in ``scales`` (B's, then the embedding's), averaged."""
        if not self.uses_embedding:
            return b_distance
        if not self.uses_lora_b:
            return embedding_distance
        b_scale, embedding_scale = scales
        return (b_distance / b_scale + embedding_distance / embedding_scale) / 2


SIGNALS: Registry[AllocationSignal] = Registry("federation.allocation", {
    signal.name: signal for signal in (
    AllocationSignal("lora-b", True, False, "their warm-up LoRA B matrices",
                     "1 - cos(B_i, B_j)"),
    AllocationSignal("embedding", False, True, "their mean frozen-model representations",
                     "1 - cos(e_i, e_j)"),
    AllocationSignal("hybrid", True, True, "B matrices and representations (hybrid)",
                     "B and embedding distance, scaled"),
)})


@dataclass
class Clustering:
    labels: list[int]  # cluster of each client, in input order, numbered 0..K-1
    distance: np.ndarray  # [N, N]
    silhouette: dict[int, float]  # k -> score, for every k tried

    @property
    def num_clusters(self) -> int:
        return max(self.labels) + 1


def b_distance_matrix(b_matrices: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """``1 - cos(vec B_i, vec B_j)`` per adapted layer, averaged over the layers of each module
    type (the last name component, e.g. ``query``), then over module types."""
    names = sorted(b_matrices[0])
    by_type: dict[str, list[str]] = {}
    for name in names:
        by_type.setdefault(name.rsplit(".", 2)[-2], []).append(name)
    n = len(b_matrices)
    per_type = []
    for layer_names in by_type.values():
        layer_dists = []
        for name in layer_names:
            vecs = torch.stack([b[name].reshape(-1).double() for b in b_matrices])
            unit = vecs / vecs.norm(dim=1, keepdim=True).clamp(min=1e-12)
            layer_dists.append(1.0 - unit @ unit.T)
        per_type.append(torch.stack(layer_dists).mean(0))
    dist = torch.stack(per_type).mean(0).numpy() if per_type else np.zeros((n, n))
    dist = np.clip((dist + dist.T) / 2, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    return dist


def embedding_distance_matrix(vectors: list[torch.Tensor]) -> np.ndarray:
    """``1 - cos(v_i, v_j)`` between the clients' representation vectors."""
    vecs = torch.stack([v.reshape(-1).double() for v in vectors])
    unit = vecs / vecs.norm(dim=1, keepdim=True).clamp(min=1e-12)
    dist = (1.0 - unit @ unit.T).numpy()
    dist = np.clip((dist + dist.T) / 2, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    return dist


def mean_offdiagonal(distance: np.ndarray) -> float:
    """The mean distance between two different clients (1.0 for fewer than two clients or
    all-zero distances, so dividing by it is always defined)."""
    n = distance.shape[0]
    mean = float(distance.sum() / (n * (n - 1))) if n > 1 else 0.0
    return mean if mean > 0 else 1.0



def cluster_clients(distance: np.ndarray, max_clusters: int, tol: float = 1e-6) -> Clustering:
    """Average-linkage agglomerative clustering for k in 2..min(M_max, N-1), k by silhouette.

    Edge cases, where silhouette is undefined: all clients identical (every distance below
    ``tol``) or ``M_max = 1`` gives one cluster; ``N = 2`` gives one cluster per client.
    """
    # imported here: every client process imports this module but only the server clusters,
    # and scikit-learn takes about a second to import
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import silhouette_score

    n = distance.shape[0]
    if n == 1 or max_clusters == 1 or distance.max() < tol:
        return Clustering([0] * n, distance, {})
    if n == 2:
        return Clustering([0, 1], distance, {})
    scores, candidates = {}, {}
    for k in range(2, min(max_clusters, n - 1) + 1):
        labels = AgglomerativeClustering(
            n_clusters=k, metric="precomputed", linkage="average"
        ).fit_predict(distance)
        if len(set(labels)) < 2:
            continue
        scores[k] = float(silhouette_score(distance, labels, metric="precomputed"))
        candidates[k] = labels
    best = max(scores, key=lambda k: (scores[k], -k))
    return Clustering(_renumber(candidates[best]), distance, scores)


def _renumber(labels) -> list[int]:
    """Clusters numbered by their first client, so the numbering is stable."""
    order: dict[int, int] = {}
    return [order.setdefault(int(lab), len(order)) for lab in labels]
