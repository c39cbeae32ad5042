"""GPUs (generic resources), pure parts: config parsing, the scheduler's
ledgers and placement, preemption planning, the submission check and the
step spec. No daemons here; tests/test_gpus.py runs them end to end."""

from __future__ import annotations

from typing import Any

import pytest

from crane.config import ConfigError, GpuDevice, parse
from crane.core import events as ev
from crane.core.job import Job
from crane.core.job_machine import JobMachine
from crane.core.ledger import NodeLedger, Request, gres_text, place
from crane.core.preempt import Candidate, NodeFree, Want, plan_preemption
from crane.metrics import gpu_counts
from crane.requests.query import job_view
from crane.requests.submit import check_spec, fits_partition

# --------------------------------------------------------------------------- config


def conf(gres: Any, extra_nodes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    nodes = [{"name": "n1", "cpu": 4, "memory": "4G"}, {"name": "n[2-3]", "cpu": 4, "memory": "4G", "gres": gres}]
    return {"Nodes": nodes + (extra_nodes or []),
            "Partitions": [{"name": "CPU", "nodes": "n1"}, {"name": "GPU", "nodes": "n[2-3]"}]}  # fmt: skip


def test_config_gres_count_and_device_files() -> None:
    cfg = parse(conf([{"name": "gpu", "type": "a100", "count": 2},
                      {"name": "gpu", "type": "v100", "DeviceFileList": ["/dev/nv2"]}]))  # fmt: skip
    assert cfg.nodes["n1"].gpus == []
    assert cfg.nodes["n2"].gpus == [GpuDevice(0, "a100"), GpuDevice(1, "a100"), GpuDevice(2, "v100", "/dev/nv2")]
    assert cfg.nodes["n3"].gpus == cfg.nodes["n2"].gpus  # each node of the range has its own
    assert gres_text([g.type for g in cfg.nodes["n2"].gpus]) == "gpu:a100:2,gpu:v100:1"
    assert gres_text(["", ""]) == "gpu:2" and gres_text([]) == ""
    both = parse(conf([{"name": "gpu", "count": 2, "DeviceFileList": ["/dev/a", "/dev/b"]}]))
    assert [g.path for g in both.nodes["n2"].gpus] == ["/dev/a", "/dev/b"]


@pytest.mark.parametrize(
    ("gres", "error"),
    [
        ({"name": "gpu"}, "Nodes[1].gres: expected a list"),
        ([{"name": "fpga", "count": 1}], "Nodes[1].gres[0].name: unknown generic resource"),
        ([{"name": "gpu", "count": 0}], "Nodes[1].gres[0].count: must be at least 1"),
        ([{"name": "gpu", "count": -1}], "Nodes[1].gres[0].count: must not be negative"),
        ([{"name": "gpu", "count": "two"}], "Nodes[1].gres[0].count: expected int"),
        ([{"name": "gpu", "count": 1}, {"name": "gpu"}], "Nodes[1].gres[1]: needs count or DeviceFileList"),
        ([{"name": "gpu", "count": 1, "colour": 1}], "Nodes[1].gres[0].colour: unknown key"),
        ([{"name": "gpu", "count": 3, "DeviceFileList": ["/dev/a"]}], "Nodes[1].gres[0].count: 3 disagrees"),
        ([{"name": "gpu", "DeviceFileList": ["dev/a"]}], "Nodes[1].gres[0].DeviceFileList: not an absolute path"),
        ([{"name": "gpu", "DeviceFileList": []}], "Nodes[1].gres[0].DeviceFileList: expected a non-empty"),
        ([{"name": "gpu", "type": "a:b", "count": 1}], "Nodes[1].gres[0].type: not a GPU type name"),
        (["gpu:2"], "Nodes[1].gres[0]: needs name"),
    ],
)
def test_config_gres_errors_name_the_key(gres: Any, error: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(conf(gres))
    assert str(e.value).startswith(error), str(e.value)


def test_sample_config_declares_gpus() -> None:
    import os

    from crane.config import load

    cfg = load(os.path.join(os.path.dirname(__file__), "..", "conf", "config.yaml"))
    assert any(n.gpus for n in cfg.nodes.values())


# --------------------------------------------------------------------------- ledgers and placement


def ledger(name: str, types: list[str], cpus: int = 4) -> NodeLedger:
    return NodeLedger(name, cpus, 8 << 30, cpus, 8 << 30, up=True, gpu_types=types, gpus_free=set(range(len(types))))


def req(job_id: int, gpus: int = 0, gpu_type: str = "", cpus: int = 1, exclusive: bool = False,
        nodelist: list[str] | None = None) -> Request:  # fmt: skip
    return Request(job_id, "GPU", cpus, 0, 1, exclusive, nodelist or [], "", 0, 0, gpus, gpu_type)


def test_take_lowest_free_indices_and_give_back() -> None:
    led = ledger("n", ["a100", "a100"])
    assert led.fits(1, 0, False, 1) and led.take(1, 1, 0, False, 1) == [0]
    assert led.take(2, 1, 0, False, 1) == [1]
    assert not led.fits(1, 0, False, 1) and led.fits(1, 0, False)  # CPUs left, no GPU
    assert led.gpu_row() == {"gres": "gpu:a100:2", "gpus": 2, "gpus_used": 2, "gpus_free": 0}
    assert led.give(1)
    assert led.take(3, 1, 0, False, 1) == [0]  # the freed index goes to the next job


def test_type_is_matched_and_any_type_takes_whatever_is_free() -> None:
    led = ledger("n", ["v100", "a100", "a100"])
    assert not led.fits(1, 0, False, 3, "a100")
    assert led.take(1, 1, 0, False, 2, "a100") == [1, 2]
    assert not led.fits(1, 0, False, 1, "a100") and led.fits(1, 0, False, 1, "")
    assert led.take(2, 1, 0, False, 1) == [0]


def test_exclusive_takes_every_gpu_and_a_suspended_job_keeps_them() -> None:
    """Red team: a suspended job lent its GPUs; another job took them and, at
    resume, both ran on the same GPUs. Suspended jobs keep their GPUs now."""
    led = ledger("n", ["", ""])
    assert led.take(1, 1, 0, True) == [0, 1]
    assert led.gpus_free == set()
    led.lend(1, True)
    assert led.gpus_free == set() and led.cpus_free == led.cpus  # cpus lent, GPUs kept
    assert not led.fits(1, 0, False, 1, "")
    led.lend(1, False)
    assert led.gpus_free == set()
    led.give(1)
    assert led.gpus_free == {0, 1}


def test_a_suspend_victim_frees_no_gpus() -> None:
    from crane.core.preempt import Candidate, NodeFree, Want, plan_preemption

    node = NodeFree("n", 4, 0, 0, 0, gpu_types=["a100", "a100"], gpus_free=[])
    victim = Candidate(1, "bg", 0, 0, 0.0, ["n"], 4, 0, False, {"n": [0, 1]}, keeps_gpus=True)
    want = Want(2, 1, 0, 1, False, ["n"], [], gpus=1)
    assert plan_preemption(want, {"n": node}, [victim], lambda c: True) is None
    victim.keeps_gpus = False
    plan = plan_preemption(want, {"n": node}, [victim], lambda c: True)
    assert plan is not None and [v for v in plan.victims] == [1]


def test_recovery_takes_the_recorded_indices() -> None:
    led = ledger("n", ["a100", "a100"])
    assert led.take(7, 1, 0, False, indices=[1]) == [1]
    assert led.gpus_free == {0}


def test_place_skips_nodes_without_enough_gpus() -> None:
    leds = {"c": ledger("c", []), "g1": ledger("g1", ["v100"]), "g2": ledger("g2", ["a100", "a100"])}
    members = list(leds)
    assert place(req(1), leds, members) == ["c"]
    assert place(req(1, 1), leds, members) == ["g1"]
    assert place(req(1, 1, "a100"), leds, members) == ["g2"]
    assert place(req(1, 2), leds, members) == ["g2"]
    assert place(req(1, 3), leds, members) is None
    assert place(req(1, 1, nodelist=["c"]), leds, members) is None


def test_metrics_gpu_counts() -> None:
    a, b = ledger("a", ["", ""]), ledger("b", ["x"])
    a.take(1, 1, 0, False, 1)
    assert gpu_counts([a, b]) == {"used": 1, "free": 2}


# --------------------------------------------------------------------------- preemption planning


def gnode(name: str, types: list[str], free: list[int], cpus_free: int = 0) -> NodeFree:
    return NodeFree(name, 4, 8 << 30, cpus_free, 8 << 30, gpu_types=types, gpus_free=free)


def cand(job_id: int, node: str, gpus: list[int], cpus: int = 1, prio: int = 100, start: float = 0.0) -> Candidate:
    return Candidate(job_id, "Background", prio, 0, start, [node], cpus, 0, False, {node: gpus} if gpus else {})


def gwant(gpus: int, gpu_type: str = "", allowed: tuple[str, ...] = ("g", "c")) -> Want:
    return Want(99, 1, 0, 1, False, list(allowed), [], gpus, gpu_type)


def test_preempts_the_gpu_holder_not_a_cpu_job() -> None:
    # g: 2 GPUs held by job 1 (2 cpus), 2 cpus free; c: no GPUs, job 2 holds all cpus
    nodes = {"g": gnode("g", ["a100", "a100"], [], cpus_free=2), "c": gnode("c", [], [])}
    cands = [cand(1, "g", [0, 1], cpus=2, start=1.0), cand(2, "c", [], cpus=4, start=2.0)]
    plan = plan_preemption(gwant(1), nodes, cands, lambda c: True)
    assert plan is not None and plan.victims == [1] and plan.nodes == ["g"]


def test_a_cpu_only_victim_on_the_gpu_node_is_not_chosen() -> None:
    # g: job 1 (youngest, lowest order) holds the cpus but no GPU, job 2 the GPU
    nodes = {"g": gnode("g", ["a100"], [], cpus_free=2)}
    cands = [cand(1, "g", [], cpus=1, start=5.0), cand(2, "g", [0], cpus=1, start=1.0)]
    plan = plan_preemption(gwant(1, allowed=("g",)), nodes, cands, lambda c: True)
    assert plan is not None and plan.victims == [2]


def test_gpus_of_another_type_are_not_freed_for_nothing() -> None:
    nodes = {"g": gnode("g", ["v100", "a100"], [], cpus_free=2)}
    cands = [cand(1, "g", [0], start=5.0), cand(2, "g", [1], start=1.0)]
    plan = plan_preemption(gwant(1, "a100", allowed=("g",)), nodes, cands, lambda c: True)
    assert plan is not None and plan.victims == [2]
    assert plan_preemption(gwant(1, "h100", allowed=("g",)), nodes, cands, lambda c: True) is None


def test_no_plan_when_the_gpu_holder_may_not_be_preempted() -> None:
    nodes = {"g": gnode("g", ["a100", "a100"], [], cpus_free=2), "c": gnode("c", [], [])}
    cands = [cand(1, "g", [0, 1], prio=9000), cand(2, "c", [], cpus=4)]
    assert plan_preemption(gwant(1), nodes, cands, lambda c: c.job_id != 1) is None


def test_exclusive_victim_frees_every_gpu() -> None:
    nodes = {"g": gnode("g", ["", ""], [])}
    victim = Candidate(1, "Background", 100, 0, 0.0, ["g"], 4, 0, True, {"g": [0, 1]})
    plan = plan_preemption(gwant(2, allowed=("g",)), nodes, [victim], lambda c: True)
    assert plan is not None and plan.victims == [1]


# --------------------------------------------------------------------------- submission, job record


def test_submission_refused_when_no_node_can_ever_satisfy() -> None:
    cfg = parse(conf([{"name": "gpu", "type": "a100", "count": 2}]))
    base = {"argv": ["true"], "partition": "GPU"}
    assert fits_partition({**base, "gpus_per_node": 2, "gpu_type": "a100"}, cfg, "GPU") is None
    assert fits_partition({**base, "gpus_per_node": 2}, cfg, "GPU") is None
    err = fits_partition({**base, "gpus_per_node": 3, "gpu_type": "a100"}, cfg, "GPU")
    assert err == "Requested GPUs (gpu:a100:3 per node) exceed what any node of partition GPU has (2)"
    err = fits_partition({**base, "gpus_per_node": 1, "gpu_type": "v100"}, cfg, "GPU")
    assert err is not None and "gpu:v100:1" in err and "(0)" in err
    assert fits_partition({**base, "gpus_per_node": 1}, cfg, "CPU") is not None
    err = fits_partition({**base, "gpus_per_node": 1, "nodelist": ["n1"]}, cfg, "CPU")
    assert err is not None and "the requested nodes" in err
    assert fits_partition({**base, "gpus_per_node": 2, "nnodes": 2}, cfg, "GPU") is None
    assert fits_partition({**base, "gpus_per_node": 1, "nnodes": 3}, cfg, "GPU") is not None


def test_spec_gpu_fields_are_checked() -> None:
    cfg = parse(conf([{"name": "gpu", "count": 1}]))
    assert check_spec({"argv": ["true"], "gpus_per_node": 1, "gpu_type": "a100"}, cfg) is None
    assert "gpus_per_node" in (check_spec({"argv": ["true"], "gpus_per_node": -1}, cfg) or "")
    assert "must be int" in (check_spec({"argv": ["true"], "gpus_per_node": "1"}, cfg) or "")
    assert check_spec({"argv": ["true"], "gpu_type": "a100"}, cfg) is not None  # a type without a count
    assert check_spec({"argv": ["true"], "gpus_per_node": 1, "gpu_type": "a\x1b[2J"}, cfg) is not None


def job(**kw: Any) -> Job:
    return Job(id=5, name="j", uid=0, user="root", gid=0, account="a", qos="", partition="GPU", **kw)


def test_allocated_keeps_gpu_alloc_and_step_env_names_them() -> None:
    j = job(gpus_per_node=1, gpu_type="a100")
    j.launch = {"argv": ["true"], "env": {"PATH": "/bin"}}
    acts = JobMachine(j).handle(ev.Allocated(["n2"], 1, {"n2": [1]}), 0.0)
    spec = next(a for a in acts if isinstance(a, ev.ToNode)).msg.spec
    assert j.gpu_alloc == {"n2": [1]}
    assert spec["gpus"] == [1]
    assert spec["env"]["CUDA_VISIBLE_DEVICES"] == spec["env"]["CRANE_GPUS"] == spec["env"]["GPU_DEVICE_ORDINAL"] == "1"
    assert Job.from_dict(j.to_dict()).gpu_alloc == {"n2": [1]}  # persisted with the record
    view = job_view(j)
    assert view["gres"] == "gpu:a100:1" and view["gpu_alloc"] == {"n2": [1]}


def test_a_job_without_gpus_gets_no_gpu_env() -> None:
    j = job()
    j.launch = {"argv": ["true"], "env": {}}
    acts = JobMachine(j).handle(ev.Allocated(["n1"], 1), 0.0)
    spec = next(a for a in acts if isinstance(a, ev.ToNode)).msg.spec
    assert spec["gpus"] == [] and "CUDA_VISIBLE_DEVICES" not in spec["env"]
    assert job_view(j)["gres"] == "" and job_view(j)["gpu_alloc"] == {}


def test_launch_step_carries_the_node_device_files() -> None:
    import collections

    from crane.actors.job import JobActor
    from crane.actors.jobs import JobTable
    from crane.actors.node import Send
    from crane.core import messages as m

    class Inbox:  # a node actor's mailbox, as the job table tells it
        def __init__(self) -> None:
            self.told: list[Any] = []

        def tell(self, msg: Any) -> None:
            self.told.append(msg)

    cfg = parse(conf([{"name": "gpu", "DeviceFileList": ["/dev/g0", "/dev/g1"]}]))
    n1, n2 = Inbox(), Inbox()
    table = JobTable(None, None, None, {"n1": n1, "n2": n2}, cfg.nodes, None, None,  # type: ignore[arg-type]
                     collections.Counter(), None)  # type: ignore[arg-type]  # fmt: skip
    actor = JobActor(job(), table)
    actor._to_node(ev.ToNode("n2", m.LaunchStep(5, 1, {"gpus": [1]})))
    actor._to_node(ev.ToNode("n1", m.LaunchStep(5, 1, {"gpus": []})))
    assert isinstance(n2.told[0], Send) and n2.told[0].msg.spec["gpu_devices"] == [[0, "/dev/g0"], [1, "/dev/g1"]]
    assert "gpu_devices" not in n1.told[0].msg.spec  # n1 has no GPUs


def test_metrics_family_crane_gpus() -> None:
    from crane.metrics import LatencyHistogram, families

    snap = {"jobs_by_state": {}, "counters": {}, "messages": {}, "store_queue": 0, "nodes_up": 1,
            "cancel_latency": LatencyHistogram().snapshot(), "gpus": {"used": 1, "free": 2}}  # fmt: skip
    fam = next(f for f in families(snap) if f.name == "crane_gpus")
    assert {s.labels["state"]: s.value for s in fam.samples} == {"used": 1, "free": 2}
