import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from fedlease.algorithms.clustering import b_distance_matrix, cluster_clients

LAYERS = ["adapter.l0.query.lora_B", "adapter.l0.value.lora_B", "adapter.l1.query.lora_B",
          "adapter.l1.value.lora_B"]


def planted_clients(groups: list[int], noise=0.3, seed=0):
    """B matrices = group centre + noise; returns the per-client dicts."""
    gen = torch.Generator().manual_seed(seed)
    centres = {g: {k: torch.randn(1, 16, 4, generator=gen) for k in LAYERS} for g in set(groups)}
    return [{k: centres[g][k] + noise * torch.randn(1, 16, 4, generator=gen) for k in LAYERS}
            for g in groups]


@pytest.mark.parametrize("groups", [[0, 0, 1, 1], [0, 0, 0, 1, 1, 1, 2, 2, 2],
                                    [0, 1, 2, 3] * 4, [2, 0, 1, 0, 2, 1]])
def test_planted_groups_are_recovered(groups):
    dist = b_distance_matrix(planted_clients(groups))
    result = cluster_clients(dist, max_clusters=4)
    assert adjusted_rand_score(groups, result.labels) == 1.0
    assert result.num_clusters == len(set(groups))
    assert max(result.silhouette, key=result.silhouette.get) == len(set(groups))


def test_distance_is_cosine_averaged_over_layers_then_types():
    a = {"adapter.l0.query.lora_B": torch.tensor([[1.0, 0.0]]),
         "adapter.l0.value.lora_B": torch.tensor([[1.0, 0.0]]),
         "adapter.l1.query.lora_B": torch.tensor([[1.0, 0.0]])}
    b = {"adapter.l0.query.lora_B": torch.tensor([[0.0, 1.0]]),   # distance 1
         "adapter.l0.value.lora_B": torch.tensor([[-1.0, 0.0]]),  # distance 2
         "adapter.l1.query.lora_B": torch.tensor([[2.0, 0.0]])}   # distance 0
    dist = b_distance_matrix([a, b])
    # query: mean(1, 0) = 0.5; value: 2; then mean over types: 1.25
    assert dist[0, 1] == pytest.approx(1.25)
    assert dist[0, 0] == 0.0 and dist[1, 0] == dist[0, 1]


def test_max_clusters_larger_than_clients():
    dist = b_distance_matrix(planted_clients([0, 0, 1, 1]))
    result = cluster_clients(dist, max_clusters=10)
    assert set(result.silhouette) == {2, 3}  # k = N is not scored (silhouette undefined)
    assert result.num_clusters == 2


def test_two_clients_each_get_an_expert():
    dist = b_distance_matrix(planted_clients([0, 1]))
    assert cluster_clients(dist, max_clusters=4).labels == [0, 1]


def test_identical_clients_share_one_expert():
    same = planted_clients([0], noise=0.0)[0]
    dist = b_distance_matrix([same] * 5)
    result = cluster_clients(dist, max_clusters=4)
    assert result.labels == [0] * 5 and result.silhouette == {}


def test_max_clusters_one_gives_one_expert():
    dist = b_distance_matrix(planted_clients([0, 0, 1, 1]))
    assert cluster_clients(dist, max_clusters=1).labels == [0, 0, 0, 0]


def test_labels_are_numbered_by_first_client():
    dist = b_distance_matrix(planted_clients([1, 1, 0, 0, 2, 2]))
    assert cluster_clients(dist, max_clusters=4).labels == [0, 0, 1, 1, 2, 2]
    assert np.allclose(dist, dist.T)


def test_average_linkage_is_used_where_single_and_complete_differ():
    """Five clients, all distances distinct; with k = 2 the three linkages disagree.
    By hand, every linkage first merges {0, 4} (distance 1). Then
    single:   {0,4}-3 = min(10, 2) = 2 -> {0,3,4}; {0,3,4}-2 = min(7, 5, 3) = 3 -> {0,2,3,4} | {1}
    complete: {0,4}-1 = 9, {0,4}-2 = 7, {0,4}-3 = 10, 1-2 = 4 -> {1,2};
              {0,4}-{1,2} = 9, {0,4}-3 = 10, {1,2}-3 = 8 -> {0,4} | {1,2,3}
    average:  {0,4}-1 = 7.5, {0,4}-2 = 5, {0,4}-3 = 6, 1-2 = 4 -> {1,2};
              {0,4}-{1,2} = 25/4, {0,4}-3 = 6, {1,2}-3 = 13/2 -> {0,3,4} | {1,2}
    """
    distance = np.array([[0, 6, 7, 10, 1],
                         [6, 0, 4, 8, 9],
                         [7, 4, 0, 5, 3],
                         [10, 8, 5, 0, 2],
                         [1, 9, 3, 2, 0]], dtype=float)
    result = cluster_clients(distance, max_clusters=2)
    assert result.labels == [0, 1, 1, 0, 0]
