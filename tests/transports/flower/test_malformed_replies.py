"""A node that sends garbage (a record missing, a non-integer example count, extra fields that
are not JSON, evaluation metrics missing, an unreadable description) is a rejected upload, a
left-out evaluation or a left-out node, never an exception in the ServerApp: the other
clients' run goes on."""

import json

import pytest

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, MetricRecord, RecordDict  # noqa: E402

from fedlease.algorithms import Reply  # noqa: E402
from fedlease.algorithms.messages import MalformedReply  # noqa: E402
from fedlease.algorithms.validation import check_reply  # noqa: E402
from fedlease.errors import ConfigError, RejectedUpload  # noqa: E402
from fedlease.transports.flower.records import read_reply, reply_content  # noqa: E402
from fedlease.transports.flower.server_app import run_on_grid  # noqa: E402
from fedlease.transports.flower.settings import read_run_config  # noqa: E402

from .grid import LoopbackGrid, task_identity  # noqa: E402
from .test_loopback import run_config_for  # noqa: E402

GARBLE_NODE = 2  # partition 1 of the tiny federation: sorted file names -> "animals-1"
GARBLED_CLIENT = "animals-1"


def drop(name):
    def garble(content):
        return RecordDict({k: v for k, v in content.items() if k != name})
    return garble


def with_num_examples(value):
    def garble(content):
        metrics = dict(content["metrics"])
        metrics["num-examples"] = value
        return RecordDict({**dict(content.items()), "metrics": MetricRecord(metrics)})
    return garble


def with_extra(text):
    def garble(content):
        return RecordDict({**dict(content.items()), "extra": ConfigRecord({"fields": text})})
    return garble


GARBLES = {
    "no metrics": (drop("metrics"), "no 'metrics' record"),
    "no arrays": (drop("arrays"), "no 'arrays' record"),
    "num-examples 12.5": (with_num_examples(12.5), "num_examples = 12.5"),
    "no num-examples": (lambda c: RecordDict({**dict(c.items()), "metrics": MetricRecord(
        {k: v for k, v in dict(c["metrics"]).items() if k != "num-examples"})}),
        "no 'num-examples'"),
    "extra not JSON": (with_extra("{cluster: 0"), "JSONDecodeError"),
    "extra of the wrong fields": (with_extra(json.dumps({"cluster": 0, "x": 1})),
                                  "unexpected algorithm fields"),
}


class GarblingGrid(LoopbackGrid):
    """Node ``GARBLE_NODE`` answers ``message_type`` messages with ``garble(content)``."""

    def __init__(self, run_config, num_nodes, message_type, garble):
        super().__init__(run_config, num_nodes)
        self.message_type, self.garble = message_type, garble

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        for reply in replies:
            if reply.metadata.src_node_id == GARBLE_NODE and \
                    reply.metadata.message_type == self.message_type:
                reply.content = self.garble(reply.content)
        return replies


def run_garbled(config, tmp_path, message_type, garble):
    run_config = run_config_for(config, tmp_path)
    grid = GarblingGrid(run_config, 4, message_type, garble)
    flower_config, settings = read_run_config(run_config)
    with task_identity():
        return run_on_grid(grid, flower_config, settings)


@pytest.fixture
def small_config(tiny_config):
    tiny_config.train.batch_size = 24
    tiny_config.federation.rounds = 2
    return tiny_config


@pytest.mark.parametrize("name", list(GARBLES))
def test_a_garbled_train_reply_is_a_rejected_upload(small_config, tmp_path, name):
    garble, reason = GARBLES[name]
    result = run_garbled(small_config, tmp_path, "train", garble)
    for entry in result.history:
        assert GARBLED_CLIENT in entry["rejected"] and reason in entry["rejected"][
            GARBLED_CLIENT]
        assert len(entry["rejected"]) == 1
    assert len(result.history) == 2
    # the others trained and were aggregated: their training metrics are there
    trained = {c for c, m in result.history[-1]["clients"].items() if "train_loss" in m}
    assert trained == set(result.tasks) - {GARBLED_CLIENT}


def test_a_garbled_profile_reply_is_rejected_and_the_client_joins_later(small_config,
                                                                         tmp_path):
    small_config.federation.warmup_rounds = 0
    result = run_garbled(small_config, tmp_path, "query.profile", drop("arrays"))
    assert GARBLED_CLIENT not in result.report["clients"]  # not in the allocation
    assert GARBLED_CLIENT in result.report["assignment"]  # joined by its round-1 embedding


@pytest.mark.parametrize("garble", [drop("info"), with_num_examples(12.5)])
def test_a_node_whose_description_cannot_be_read_is_left_out(small_config, tmp_path, garble):
    result = run_garbled(small_config, tmp_path, "query", garble)
    assert sorted(result.tasks) == ["animals-0", "colors-0", "colors-1"]
    assert all(len(entry["clients"]) == 3 for entry in result.history)


def test_an_evaluation_without_metrics_is_left_out(small_config, tmp_path):
    result = run_garbled(small_config, tmp_path, "evaluate",
                         lambda c: RecordDict({"metrics": MetricRecord({"num-examples": 8})}))
    for entry in result.history:
        assert GARBLED_CLIENT not in entry["clients"] and len(entry["clients"]) == 3


def test_read_reply_keeps_what_it_cannot_read_as_a_reason():
    import torch

    content = reply_content(Reply({"k": torch.ones(2)}, 5, {"loss": 0.5}))
    assert isinstance(read_reply(content), Reply)
    bad = read_reply(RecordDict({"arrays": content["arrays"]}))
    assert isinstance(bad, MalformedReply) and "no 'metrics' record" in bad.reason
    with pytest.raises(RejectedUpload, match="malformed reply: no 'metrics' record"):
        check_reply(bad, {"k": (2,)}, 100.0)


def test_flower_refuses_the_attack_harness(small_config, tmp_path):
    small_config.attack.clients = ["colors-0"]
    with pytest.raises(ConfigError, match="attack.clients"):
        run_garbled(small_config, tmp_path, "train", lambda c: c)
