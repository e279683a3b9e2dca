"""The generation worker process (trainers/gen_worker.py): the protocol, checked with the
transformers backend in the worker (vLLM, the backend it exists for, is not installed here)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import tiny_llama  # noqa: E402

from trainers.backends import GenParams, TransformersBackend  # noqa: E402
from trainers.gen_worker import WorkerBackend, WorkerError  # noqa: E402


def _tiny(path):
    model = tiny_llama(5)
    model.save_pretrained(path)
    return model


def test_worker_generates_what_the_in_process_backend_does_and_takes_new_weights(tmp_path):
    model = _tiny(tmp_path / "m")
    here = TransformersBackend(model, eos_id=39, pad_id=0)
    worker = WorkerBackend("transformers", str(tmp_path / "m"), 0, "fp32", eos_id=39, pad_id=0)
    try:
        assert worker.info["numba_loaded"] is False  # a clean process: vLLM would start there
        prompts, counts = [[1, 2, 3], [4, 5]], [3, 2]
        for params in (GenParams(6, 1.0), GenParams(6, greedy=True)):
            assert worker.generate(prompts, counts, params, 11) == here.generate(
                prompts, counts, params, 11
            )
        greedy = GenParams(6, greedy=True)
        before = worker.generate(prompts, [1, 1], greedy, 0)
        with torch.no_grad():  # an "update": the worker sees it only after sync
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        assert worker.generate(prompts, [1, 1], greedy, 0) == before
        worker.sync(model)
        assert worker.generate(prompts, [1, 1], greedy, 0) == here.generate(
            prompts, [1, 1], greedy, 0
        )
    finally:
        worker.close()
    assert worker._proc.poll() == 0


def test_a_worker_that_cannot_start_reports_why(tmp_path):
    with pytest.raises(WorkerError, match="failed: .*"):
        WorkerBackend("transformers", str(tmp_path / "no-model"), 0, "fp32", eos_id=1, pad_id=0)


def _group_alive(group: int) -> bool:
    import os

    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_stopping_a_worker_stops_the_processes_it_started():
    """vLLM's engine runs in processes the worker starts; killing only the worker left them
    running with their memory. The worker's whole process group goes."""
    import subprocess
    import time

    from trainers.gen_worker import _stop_group

    # a stand-in worker with a grandchild that ignores the end of its parent
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 300 & sleep 300"], start_new_session=True, stdin=subprocess.DEVNULL
    )
    time.sleep(0.3)
    assert _group_alive(proc.pid)
    proc.kill()  # the worker dies; its child lives on in the group
    proc.wait()
    assert _group_alive(proc.pid)
    _stop_group(proc)
    assert not _group_alive(proc.pid)
