"""Phase 2 of FedLEASE (docs/method.md): group clients by a distance between them.

Three signals (``federation.allocation``, ``SIGNALS``): the cosine distance of their warm-up LoRA
B matrices (``lora-b``, the paper), the cosine distance of their mean frozen-model representations
(``embedding``), or both (``hybrid``: each matrix divided by its mean off-diagonal distance, then
averaged, so neither signal dominates by its scale; silhouette and average linkage then see both
equally).

Up to ``federation.exact_allocation_clients`` clients the whole N x N distance is clustered;
beyond it the same rule runs on a seeded sample of that many clients and every other client
joins the cluster nearest by the same signal (``nearest_clusters``), so the allocation's time
and memory stay bounded by the sample (and linear in N), never N x N. The matrix is kept (in
the checkpoint, ``clustering.json`` and the dendrogram) only up to ``MATRIX_KEPT_UP_TO`` clients.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from fedlease.registry import Registry

# largest matrix kept with the clustering (checkpoint, clustering.json, dendrogram, heat map):
# 256 clients are 0.5 MiB of float64; beyond it only the per-cluster statistics are kept
MATRIX_KEPT_UP_TO = 256


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
    distance: np.ndarray | None  # [N, N]; None past MATRIX_KEPT_UP_TO clients
    silhouette: dict[int, float]  # k -> score, for every k tried
    # per cluster: its clients, and the mean distance between two of them and to the clients
    # of the other clusters (over the clients the matrix covered: all, or the sample)
    statistics: list[dict] | None = None

    @property
    def num_clusters(self) -> int:
        return max(self.labels) + 1


def cluster_statistics(distance: np.ndarray, labels: list[int]) -> list[dict]:
    """Per cluster: size, mean distance within (between two different members; 0 alone) and
    to the other clusters' members (0 with one cluster)."""
    labels_array = np.asarray(labels)
    stats = []
    for c in range(max(labels) + 1):
        inside = labels_array == c
        size = int(inside.sum())
        within = distance[np.ix_(inside, inside)]
        outside = distance[np.ix_(inside, ~inside)]
        stats.append({"cluster": c, "clients": size,
                      "mean_distance_within": float(within.sum() / (size * (size - 1)))
                      if size > 1 else 0.0,
                      "mean_distance_to_others": float(outside.mean()) if outside.size else 0.0})
    return stats


def allocation_sample(ids: list[str], limit: int, seed: int) -> list[str]:
    """The clients the allocation clusters: all up to ``limit``, else ``limit`` of them drawn
    by a generator of the seed alone (the same on every runner and on a resume), in order."""
    if len(ids) <= limit:
        return list(ids)
    chosen = set(random.Random(f"fedlease-allocation:{seed}").sample(ids, limit))
    return [cid for cid in ids if cid in chosen]


def unit_rows(vectors: list[torch.Tensor]) -> torch.Tensor:
    """The vectors as float64 rows of length 1 (a zero vector stays zero)."""
    vecs = torch.stack([v.reshape(-1).double() for v in vectors])
    return vecs / vecs.norm(dim=1, keepdim=True).clamp(min=1e-12)


def mean_embedding_distance(vectors: list[torch.Tensor], members: list[list[torch.Tensor]],
                            chunk: int = 4096) -> np.ndarray:
    """``[len(vectors), len(members)]``: the mean ``1 - cos`` of each vector to the members of
    each group, as average linkage measures it, in O(N x groups): the mean of ``1 - u . m``
    over unit members ``m`` is ``1 - u . mean(m)``."""
    centroids = torch.stack([unit_rows(group).mean(0) for group in members])
    rows = [1.0 - unit_rows(vectors[i:i + chunk]) @ centroids.T
            for i in range(0, len(vectors), chunk)]
    return torch.cat(rows).clamp(0.0, 2.0).numpy()


def b_distance_between(rows: list[dict[str, torch.Tensor]],
                       columns: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """``[len(rows), len(columns)]``: ``1 - cos(vec B_i, vec B_j)`` per adapted layer, averaged
    over the layers of each module type (the last name component, e.g. ``query``), then over
    module types."""
    names = sorted(rows[0])
    by_type: dict[str, list[str]] = {}
    for name in names:
        by_type.setdefault(name.rsplit(".", 2)[-2], []).append(name)
    per_type = []
    for layer_names in by_type.values():
        per_type.append(torch.stack([
            1.0 - unit_rows([b[name] for b in rows]) @ unit_rows([b[name] for b in columns]).T
            for name in layer_names]).mean(0))
    if not per_type:
        return np.zeros((len(rows), len(columns)))
    return torch.stack(per_type).mean(0).clamp(0.0, 2.0).numpy()


def b_distance_matrix(b_matrices: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """The symmetric matrix of ``b_distance_between`` the clients, zero on the diagonal."""
    return _symmetric(b_distance_between(b_matrices, b_matrices))


def embedding_distance_matrix(vectors: list[torch.Tensor]) -> np.ndarray:
    """``1 - cos(v_i, v_j)`` between the clients' representation vectors."""
    unit = unit_rows(vectors)
    return _symmetric((1.0 - unit @ unit.T).numpy())


def _symmetric(dist: np.ndarray) -> np.ndarray:
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
        return _clustering([0] * n, distance, {})
    if n == 2:
        return _clustering([0, 1], distance, {})
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
    return _clustering(_renumber(candidates[best]), distance, scores)


def _clustering(labels: list[int], distance: np.ndarray, scores: dict) -> Clustering:
    return Clustering(labels, distance if len(labels) <= MATRIX_KEPT_UP_TO else None, scores,
                      cluster_statistics(distance, labels))


def _renumber(labels) -> list[int]:
    """Clusters numbered by their first client, so the numbering is stable."""
    order: dict[int, int] = {}
    return [order.setdefault(int(lab), len(order)) for lab in labels]
