"""Data-parallel training: 2 CPU processes (gloo) give the run of 1 process with the same global batch.

Both runs go through the one `train()`; the 2 processes are forked from the test process (no second
import of torch, so the test takes seconds) with the environment torchrun would give them. The
backbone has no dropout, so the only differences left are float summation orders.
"""

import json
import multiprocessing
import os
import socket
import sys
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from docre import distributed
from docre.config import load_config
from docre.trainer import train
from tests.conftest import FIXTURES, build_tiny_backbone
from tests.synthetic import NAMES, planted_docs

ROOT = Path(__file__).resolve().parent.parent
WORLD = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_main(rank: int, port: int, overrides: list[str]) -> None:
    """One torchrun-like worker: the launcher's environment variables, then the training CLI's path."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "LOCAL_WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    try:
        train(load_config(ROOT / "configs/smoke.yaml", overrides))
        distributed.shutdown()  # the owner of the process group (the training command) leaves it
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if row["type"] == "train"]


@pytest.mark.skipif(sys.platform != "linux", reason="forks the worker processes (Linux)")
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    backbone = build_tiny_backbone(tmp_path / "backbone", ["works", "for", "lives", "in", "met", *NAMES], dropout=0.0)
    fixture_docs = json.loads((FIXTURES / "docred_tiny.json").read_text())  # longer than the 64-token window
    (tmp_path / "train.json").write_text(json.dumps(planted_docs(9, seed=1) + fixture_docs))
    (tmp_path / "dev.json").write_text(json.dumps(planted_docs(5, seed=2)))  # 5 documents: uneven shards 3 + 2
    common = [
        f"model.backbone={backbone}", f"data.dir={tmp_path}", "data.train_file=train.json", "data.dev_file=dev.json",
        f"data.test_file={FIXTURES / 'docred_tiny.json'}", "loss.name=atl", "train.epochs=2", "train.grad_accum=2",
        "train.log_every=1", "train.num_threads=1", "train.eval_every=1000",  # dev only at the end: best = final weights
        "train.encoder_lr=1e-3", "train.head_lr=1e-3", f"output_dir={tmp_path / 'runs'}",
    ]
    # 12 documents, global batch 2 x 2 accumulation = 4 per optimizer step: 3 steps per epoch, 6 in all
    single = train(load_config(ROOT / "configs/smoke.yaml", [*common, "train.batch_size=2", "run_name=one"]))

    context = multiprocessing.get_context("fork")  # the children inherit the imported libraries
    port = _free_port()
    workers = [context.Process(target=_rank_main, args=(rank, port, [*common, "train.batch_size=1", "run_name=two"]))
               for rank in range(WORLD)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
    for worker in workers:
        if worker.is_alive():  # a worker stuck in a collective because the other failed
            worker.kill()
            worker.join()
    assert [worker.exitcode for worker in workers] == [0, 0]

    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    assert single["steps"] == 6
    losses_one, losses_two = _losses(one), _losses(two)
    assert len(losses_one) == len(losses_two) == 6  # rank 0 alone writes the metrics
    assert losses_two == pytest.approx(losses_one, rel=1e-5, abs=1e-6)
    assert losses_one[-1] != pytest.approx(losses_one[0], rel=1e-3)  # the weights did move

    weights_one, weights_two = load_file(str(one / "best.safetensors")), load_file(str(two / "best.safetensors"))
    assert weights_one.keys() == weights_two.keys()
    for name, value in weights_one.items():
        torch.testing.assert_close(weights_two[name], value, rtol=1e-4, atol=1e-5, msg=name)
    initial = load_file(str(Path(backbone) / "model.safetensors"))
    moved = max((weights_one[f"encoder.{name}"] - value).abs().max().item()
                for name, value in initial.items() if not name.startswith("pooler."))  # the pooler is dropped
    assert moved > 1e-3  # the comparison is not between two untrained models

    # evaluation sharded over the ranks and gathered back in document order
    for split in ("dev", "test"):
        logits_one = load_file(str(one / f"{split}_logits.safetensors"))
        logits_two = load_file(str(two / f"{split}_logits.safetensors"))
        assert torch.equal(logits_one["pairs_per_doc"], logits_two["pairs_per_doc"])
        torch.testing.assert_close(logits_two["logits"].float(), logits_one["logits"].float(), rtol=1e-2, atol=1e-2)
    results_two = json.loads((two / "results.json").read_text())
    assert results_two["test"]["num_gold"] == single["test"]["num_gold"]
    assert results_two["dev"]["num_gold"] == single["dev"]["num_gold"]
    log = (two / "train.log").read_text()
    assert "effective batch 4 documents (1 per process x 2 processes x 2 accumulation)" in log
    assert log.count("effective batch") == 1  # rank 0 alone logs


def _sweep_rank(rank: int, port: int, overrides: list[str], record: Path) -> None:
    """A torchrun-like worker running the training command's alpha sweep; records how often it
    joined a process group."""
    import torch.distributed as dist

    from docre.sweep import run

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "LOCAL_WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    joined, real = [], dist.init_process_group
    dist.init_process_group = lambda *a, **k: joined.append(1) or real(*a, **k)
    try:
        run(load_config(ROOT / "configs/smoke.yaml", overrides))
        distributed.shutdown()
        (record / f"rank{rank}.json").write_text(json.dumps({"joined": len(joined)}))
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


@pytest.mark.skipif(sys.platform != "linux", reason="forks the worker processes (Linux)")
def test_an_alpha_sweep_under_torchrun_keeps_one_process_group(tmp_path, tiny_backbone):
    overrides = [f"model.backbone={tiny_backbone}", "loss.alpha=auto", "sweep.alpha_grid=[0.5,1]", "train.max_steps=2",
                 "train.batch_size=1", "train.num_threads=1", f"output_dir={tmp_path / 'runs'}", "run_name=sweep"]
    context = multiprocessing.get_context("fork")
    port = _free_port()
    workers = [context.Process(target=_sweep_rank, args=(rank, port, overrides, tmp_path)) for rank in range(WORLD)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
        if worker.is_alive():
            worker.kill()
            worker.join()
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert [json.loads((tmp_path / f"rank{r}.json").read_text())["joined"] for r in range(WORLD)] == [1, 1]
    sweep = json.loads((tmp_path / "runs" / "sweep" / "alpha_sweep.json").read_text())
    assert [row["alpha"] for row in sweep["runs"]] == [8.25, 16.5]
    assert (tmp_path / "runs" / "sweep" / "results.json").is_file()


def test_more_processes_than_gpus_is_one_line(monkeypatch):
    from docre.distributed import init_distributed
    from docre.errors import DocreError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DocreError, match=r"process 3 of this machine has no GPU of its own \(1 visible\): start one "
                                         "process per GPU"):
        init_distributed(torch.device("cuda"))
