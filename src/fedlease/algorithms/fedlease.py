"""FedLEASE: warm-up LoRAs, clients clustered by similarity, one expert per cluster, and an
adaptive top-M router on every client (the method: docs/method.md; all algorithms:
docs/algorithms.md).

Rounds ``1..W`` (warm-up): every client trains its own LoRA from a common seeded init; nothing is
aggregated. After round ``W`` each client uploads its LoRA, the server clusters the clients and
starts expert ``c`` as the sample-weighted mean of the LoRAs of cluster ``c``. Rounds ``W+1..R``:
each client runs all K experts behind its router (2K-1 slots, top K), trains its own expert and
router, and uploads both; expert ``c`` and the router of cluster ``c`` are the sample-weighted
means of the uploads of cluster ``c`` (the reference code takes a plain mean; with equal client
sizes the two agree), or the coordinate-wise median or trimmed mean of them
(``federation.aggregation``, see ``aggregation.py``).

What the clients are clustered by is ``federation.allocation``: the warm-up B matrices
(``lora-b``, the paper), or each client's mean frozen-model representation of its training
examples, uploaded once before round 1 (``embedding``; with ``W = 0`` the experts start from the
common initialisation at once), or both distances combined (``hybrid``); see ``clustering.py``.

A client whose signal did not arrive for the allocation (it dropped out, or a runner that samples
clients did not pick it) is clustered without it; it keeps training its warm-up LoRA and, the
first time it uploads (its LoRA, and its embedding where the signal needs one), joins the nearest
cluster by the same signal, then gets the experts like every other client. Past
``federation.exact_allocation_clients`` the clustering sees a seeded sample of the clients and
the others join the nearest cluster the same way at once (``clustering.py``).

A newcomer (``Algorithm.newcomer``) is placed the same way once: it uploads its signal (its
embedding; under ``lora-b`` the B matrices of a warm-up LoRA trained in its step budget), joins
the nearest cluster and starts from all K experts and its cluster's router, then adapts its head,
expert and router. Before the allocation it starts a warm-up LoRA, as every client does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

import numpy as np
import torch

from fedlease.algorithms.aggregation import effective_trim, warn_untrimmed_clusters
from fedlease.algorithms.base import Algorithm
from fedlease.algorithms.clustering import (
    SIGNALS,
    Clustering,
    allocation_sample,
    b_distance_between,
    b_distance_matrix,
    cluster_clients,
    embedding_distance_matrix,
    mean_embedding_distance,
    mean_offdiagonal,
)
from fedlease.algorithms.messages import (
    EMBEDDING_KEY,
    EMBEDDING_PART,
    Instruction,
    Reply,
    UploadSpec,
)
from fedlease.model.adapted import ADAPTER_PREFIX
from fedlease.model.lora import AdapterLayout, init_router

LORA_PARTS = ["lora_A", "lora_B"]


class FedLEASE(Algorithm):
    name = "fedlease"
    state_fields = ("clustering", "clustered", "cluster_of", "experts", "routers",
                    "embeddings", "distance_scales")
    uses_warmup = True

    @classmethod
    def config_problems(cls, config) -> list[str]:
        """The warm-up must end before the last round; the embedding is known before training,
        so with it no warm-up round is needed."""
        federation = config.federation
        signal = SIGNALS.get(federation.allocation)
        least = signal.least_warmup_rounds if signal else 1
        if least <= federation.warmup_rounds < federation.rounds:
            return []
        return [f"federation.warmup_rounds = {federation.warmup_rounds!r}: expected an integer "
                f"in [{least}, rounds) for allocation = {federation.allocation!r}"]

    def __init__(self, config, clients, adapter_shapes, representation_dim: int = 0):
        super().__init__(config, clients, adapter_shapes, representation_dim)
        self.warmup_rounds = config.federation.warmup_rounds
        self.signal = SIGNALS[config.federation.allocation]
        self.initial_lora = self.init_lora_state()
        self.embeddings: dict[str, torch.Tensor] = {}  # client -> its representation vector
        # hybrid: the mean off-diagonal B and embedding distances the allocation divided by
        self.distance_scales: list[float] = []
        self.clustering: Clustering | None = None
        # the clients the clustering saw, in its order (all, or the sample past
        # exact_allocation_clients); the others are assigned to the nearest cluster
        self.clustered: list[str] = []
        self.cluster_of: dict[str, int] = {}
        self.experts: dict[str, torch.Tensor] = {}  # lora_A/lora_B stacked over experts
        self.routers: list[dict[str, torch.Tensor]] = []  # one per cluster

    def warmup_states(self, rnd, local_states):
        """After the last warm-up round: every client's warm-up LoRA and head (the store
        itself: its states are read one at a time as they are written)."""
        return local_states if rnd == self.warmup_rounds else {}

    @property
    def num_experts(self) -> int:
        return self.clustering.num_clusters

    def layout_for(self, client_id: str) -> AdapterLayout:
        return self.expert_layout(self.cluster_of[client_id])

    def expert_layout(self, expert: int) -> AdapterLayout:
        """The layout of a client of cluster ``expert``: it trains that expert."""
        return AdapterLayout.fedlease(self.num_experts, expert)

    def client_layout_bound(self) -> AdapterLayout:
        """At most ``max_experts`` clusters: that many experts and their router slots."""
        return AdapterLayout.fedlease(self.config.federation.max_experts, 0)

    def assign(self, clustering: Clustering) -> list[int]:
        """The expert of each client, in client order: its cluster."""
        return clustering.labels

    def download(self, after_round: int, clients: Collection[str] | None = None
                 ) -> dict[str, Instruction]:
        if after_round < self.warmup_rounds:
            arrays = self.initial_lora if after_round == 0 else {}
            return {cid: Instruction(dict(arrays), AdapterLayout())
                    for cid in self.client_ids(clients)}
        return {
            cid: Instruction(self.cluster_download(cid), self.layout_for(cid))
            if cid in self.cluster_of
            # a client the allocation left out trains a warm-up LoRA from the common init
            # (with W = 0 no round sent it: its profile upload was rejected)
            else Instruction(dict(self.initial_lora) if after_round == 0 else {},
                             AdapterLayout())
            for cid in self.client_ids(clients)
        }

    def cluster_download(self, client_id: str) -> dict[str, torch.Tensor]:
        """What a clustered client receives (``cluster_start`` of its cluster)."""
        return self.cluster_start(self.cluster_of[client_id])

    def cluster_start(self, cluster: int) -> dict[str, torch.Tensor]:
        """What a client of ``cluster`` receives: every expert and that cluster's router."""
        return {**self.experts, **self.routers[cluster]}

    def cluster_upload(self, client_id: str) -> UploadSpec:
        """What a clustered client uploads: its own expert and its router."""
        return UploadSpec((self.cluster_of[client_id],), (*LORA_PARTS, "router"))

    @classmethod
    def releases_embedding(cls, config) -> bool:
        return SIGNALS[config.federation.allocation].uses_embedding

    def configure_profile(self) -> dict[str, Instruction]:
        """With an embedding signal: every client's representation vector, before round 1."""
        if not self.signal.uses_embedding:
            return {}
        noise = self.config.federation.embedding_noise
        return {c.client_id: Instruction({}, upload=UploadSpec((), (EMBEDDING_PART,), noise),
                                         seed=self.client_seed(0, c.client_id))
                for c in self.clients}

    def aggregate_profile(self, replies: dict[str, Reply]) -> None:
        self.embeddings.update({cid: r.arrays[EMBEDDING_KEY] for cid, r in replies.items()})
        if self.warmup_rounds == 0:  # nothing to wait for: the experts start from the init
            self.allocate_experts({})

    def upload_spec(self, rnd: int, client_id: str) -> UploadSpec | None:
        if rnd < self.warmup_rounds:
            return None
        if client_id not in self.cluster_of:  # the allocation round, or a late client
            missing_embedding = self.signal.uses_embedding and client_id not in self.embeddings
            return UploadSpec((0,), tuple(LORA_PARTS)
                              + ((EMBEDDING_PART,) if missing_embedding else ()),
                              self.config.federation.embedding_noise)
        return self.cluster_upload(client_id)

    def aggregate_fit(self, rnd: int, replies: dict[str, Reply]) -> None:
        for cid, reply in replies.items():  # late clients' embeddings
            if EMBEDDING_KEY in reply.arrays:
                self.embeddings[cid] = reply.arrays[EMBEDDING_KEY]
        if rnd == self.warmup_rounds:
            self.allocate_experts(replies)
        elif rnd > self.warmup_rounds:
            late = {cid: r for cid, r in replies.items() if cid not in self.cluster_of}
            self.aggregate_experts({cid: r for cid, r in replies.items() if cid not in late})
            self.assign_late(late)

    def allocation_distance(self, ids: list[str], replies: dict[str, Reply]) -> np.ndarray:
        """The distance between the clients ``ids`` by the configured signal."""
        b_distance = b_distance_matrix([
            {k: v for k, v in replies[cid].arrays.items() if k.endswith(".lora_B")}
            for cid in ids]) if self.signal.uses_lora_b else None
        e_distance = (embedding_distance_matrix([self.embeddings[cid] for cid in ids])
                      if self.signal.uses_embedding else None)
        if self.signal.uses_lora_b and self.signal.uses_embedding:
            self.distance_scales = [mean_offdiagonal(b_distance), mean_offdiagonal(e_distance)]
        return self.signal.distance(b_distance, e_distance, self.distance_scales)

    def allocate_experts(self, replies: dict[str, Reply]) -> None:
        """Phase 2: cluster the clients by the signal (all of them, or a seeded sample past
        ``exact_allocation_clients`` with the others joining the nearest cluster), one expert
        per cluster (the weighted mean of its members' warm-up LoRAs; the common init without
        any), routers per cluster. Clients without the signal are left out (``assign_late``)."""
        federation = self.config.federation
        ids = [c.client_id for c in self.clients
               if self.signal.has(c.client_id, replies, self.embeddings)]
        if not ids:
            raise RuntimeError(f"expert allocation ({self.signal.name}): no client uploaded what "
                               "it needs (warm-up LoRA or embedding); see the rejected uploads")
        self.clustered = allocation_sample(ids, federation.exact_allocation_clients,
                                           federation.seed)
        self.clustering = cluster_clients(self.allocation_distance(self.clustered, replies),
                                          federation.max_experts)
        self.cluster_of = dict(zip(self.clustered, self.assign(self.clustering), strict=True))
        self.experts = self.start_experts(self.clustered, replies)
        rest = [cid for cid in ids if cid not in self.cluster_of]
        if rest:
            self.assign_nearest(rest, replies)
            self.experts = self.start_experts(ids, replies)
        warn_untrimmed_clusters(federation.aggregation, federation.trim_fraction,
                                self.trim_per_cluster())
        self.routers = self.initial_routers(self.layout_for(ids[0]))

    def start_experts(self, ids: list[str], replies: dict[str, Reply]) -> dict:
        """Expert c: the aggregate of the warm-up LoRAs of cluster c's clients among ``ids``
        (the common init where none uploaded one)."""
        members = [[cid for cid in ids if self.cluster_of[cid] == c and cid in replies]
                   for c in range(self.num_experts)]
        keys = ([k for k in replies[ids[0]].arrays if k != EMBEDDING_KEY]
                if ids[0] in replies else list(self.initial_lora))
        return {
            key: torch.cat([
                self.aggregation([replies[cid].arrays[key] for cid in group],
                                 [replies[cid].num_examples for cid in group])
                if group else self.initial_lora[key]
                for group in members
            ])
            for key in keys
        }

    def initial_routers(self, layout: AdapterLayout) -> list[dict[str, torch.Tensor]]:
        """One seeded router per cluster, with the slots of ``layout``."""
        gen = torch.Generator().manual_seed(self.config.federation.seed + 1)
        return [
            {f"{ADAPTER_PREFIX}{name}.router": init_router(d_in, len(layout.router_slots), gen)
             for name, (d_in, _) in sorted(self.adapter_shapes.items())}
            for _ in range(self.num_experts)
        ]

    def aggregate_experts(self, replies: dict[str, Reply]) -> None:
        """Expert c and router c: sample-weighted means over the replies of cluster c (or the
        rule ``federation.aggregation`` names)."""
        for c in range(self.num_experts):
            group = [cid for cid in replies if self.cluster_of[cid] == c]
            if not group:
                continue  # nobody of this cluster answered: keep its expert as it was
            weights = [replies[cid].num_examples for cid in group]
            for key in replies[group[0]].arrays:
                mean = self.aggregation([replies[cid].arrays[key] for cid in group], weights)
                if key.endswith(".router"):
                    self.routers[c][key] = mean
                else:
                    self.experts[key] = self.experts[key].clone()
                    self.experts[key][c] = mean[0]

    def assign_late(self, replies: dict[str, Reply]) -> None:
        """Clients that missed the allocation join the nearest cluster by the same signal."""
        if replies:
            self.assign_nearest(list(replies), replies)

    def assign_nearest(self, ids: list[str], replies: dict[str, Reply]) -> None:
        """Each of ``ids`` joins the nearest cluster by the signal: the experts' B matrices
        (``lora-b``), the mean embedding distance to the clustered members (``embedding``, as
        average linkage), both scaled as at allocation (hybrid). Linear in ``ids``."""
        nearest = self.distances_to_clusters(
            [replies.get(cid) for cid in ids], [self.embeddings.get(cid) for cid in ids]
        ).argmin(axis=1)
        self.cluster_of.update(zip(ids, (int(c) for c in nearest), strict=True))

    def distances_to_clusters(self, replies: list[Reply | None],
                              embeddings: list[torch.Tensor | None]) -> np.ndarray:
        """``[len(replies), K]``: each client's distance to each cluster by the signal (its
        LoRA upload, its embedding)."""
        return self.signal.distance(
            self._b_distance_to_experts(replies) if self.signal.uses_lora_b else None,
            self._embedding_distance_to_clusters(embeddings) if self.signal.uses_embedding
            else None, self.distance_scales)

    def _b_distance_to_experts(self, replies: list[Reply]) -> np.ndarray:
        b_keys = sorted(k for k in self.experts if k.endswith(".lora_B"))
        expert_bs = [{k: self.experts[k][c : c + 1] for k in b_keys}
                     for c in range(self.num_experts)]
        return b_distance_between([{k: r.arrays[k] for k in b_keys} for r in replies],
                                  expert_bs)

    def _embedding_distance_to_clusters(self, embeddings: list[torch.Tensor]) -> np.ndarray:
        members = [[self.embeddings[m] for m in self.clustered if self.cluster_of[m] == c]
                   for c in range(self.num_experts)]
        return mean_embedding_distance(embeddings, members)

    def newcomer_request(self, steps: int) -> Instruction | None:
        """After the allocation: the newcomer's signal (a warm-up LoRA trained in its
        ``steps``, under ``lora-b`` and ``hybrid``, and its embedding where the signal uses it)."""
        if self.clustering is None:
            return None
        noise = self.config.federation.embedding_noise
        embedding = (EMBEDDING_PART,) if self.signal.uses_embedding else ()
        if not self.signal.uses_lora_b:
            return Instruction({}, upload=UploadSpec((), embedding, noise),
                               seed=self.config.federation.seed)
        return Instruction(dict(self.initial_lora), AdapterLayout(),
                           UploadSpec((0,), (*LORA_PARTS, *embedding), noise),
                           seed=self.config.federation.seed,
                           head_seed=self.config.federation.seed, newcomer_steps=steps)

    def newcomer_start(self, signal: Reply | None, client_id: str | None) -> Instruction:
        """Its cluster's layout over all K experts and that cluster's router; a warm-up LoRA
        from the common init when it has no cluster (before the allocation, or a client of
        the federation whose signal the server lacks)."""
        cluster = self.newcomer_cluster(signal, client_id)
        if cluster is None:
            return Instruction(dict(self.initial_lora), AdapterLayout())
        return Instruction(self.cluster_start(cluster), self.expert_layout(cluster))

    def newcomer_cluster(self, signal: Reply | None, client_id: str | None) -> int | None:
        """The cluster of a client of the federation, or the nearest one to a signal."""
        if self.clustering is None:
            return None
        if client_id is not None:
            return self.cluster_of.get(client_id)
        embedding = signal.arrays.get(EMBEDDING_KEY) if signal is not None else None
        return int(self.distances_to_clusters([signal], [embedding])[0].argmin())

    def server_experts(self) -> dict[str, torch.Tensor]:
        return dict(self.experts)

    def report(self) -> dict:
        if self.clustering is None:
            return {}
        sizes = Counter(self.cluster_of.values())
        return {
            "signal": self.signal.name,
            "clients": self.clustered,
            "assignment": self.cluster_of,
            "num_experts": self.num_experts,
            "silhouette": {str(k): v for k, v in self.clustering.silhouette.items()},
            # per cluster: the statistics of the clients clustered, and how many it holds now
            "clusters": [{**stats, "assigned": sizes[stats["cluster"]]}
                         for stats in self.clustering.statistics or []],
            # the matrix only where it is small (clustering.MATRIX_KEPT_UP_TO clients)
            **({"distance": self.clustering.distance.tolist()}
               if self.clustering.distance is not None else {}),
            **({"trim_per_cluster": self.trim_per_cluster()}
               if self.config.federation.aggregation == "trimmed-mean" else {}),
        }

    def trim_per_cluster(self) -> dict[str, int]:
        """trimmed-mean: the clients left out at each end of each cluster's aggregation."""
        sizes = Counter(self.cluster_of.values())
        return {str(c): effective_trim(sizes[c], self.config.federation.trim_fraction)
                for c in range(self.num_experts)}
