"""Generation throughput of `bench train`'s transformers backend against plain `model.generate`.

    python scripts/train_speed.py [--prompts 8] [--n 8] [--max-new-tokens 32] [--repeats 3]

Same prompts (the embedded chain-sum task), same sampling settings (T = 0.7), same model (the
embedded SmolLM2-135M-Instruct unless --model). Three ways to generate one step's samples:

- backend: ``TransformersBackend`` as ``bench train`` uses it (the generation copy in bf16 where
  the CPU has native bf16, every sample of the step in one batched call);
- plain batched: the fp32 model as loaded, one ``model.generate`` over all prompts with
  ``num_return_sequences=n``;
- plain per prompt: the fp32 model, one ``model.generate(num_return_sequences=n)`` per prompt.

Tokens per second = response tokens (up to and including EOS) / wall seconds; the best of
``--repeats`` (the machine is shared: the best run is the least disturbed). Prints a table.
"""

from __future__ import annotations

import time

import click

from bench.errors import run_one_line


@click.command()
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--prompts", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--n", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None)
def main(model, prompts, n, max_new_tokens, repeats, threads):
    import torch

    from trainers.backends import GenParams, TransformersBackend
    from trainers.models import bf16_supported, load_model, load_tokenizer, resolve_model
    from trainers.source import encode_prompts
    from trainers.tasks import chain_sum

    if threads:
        torch.set_num_threads(threads)
    path = resolve_model(model)
    tok = load_tokenizer(path)
    fp32 = load_model(path, torch.float32).eval()
    ids = encode_prompts(tok, chain_sum(0, prompts, 0).train_prompts)
    params = GenParams(max_new_tokens, 0.7)
    dtype = torch.bfloat16 if bf16_supported() else torch.float32
    backend = TransformersBackend(fp32, tok.eos_token_id, tok.pad_token_id, dtype, 128)

    def count(rows):
        total = 0
        for r in rows:
            r = list(r)
            total += r.index(tok.eos_token_id) + 1 if tok.eos_token_id in r else len(r)
        return total

    def plain(batch):
        width = max(map(len, batch))
        x = torch.full((len(batch), width), tok.pad_token_id)
        a = torch.zeros((len(batch), width), dtype=torch.long)
        for i, p in enumerate(batch):
            x[i, width - len(p) :] = torch.tensor(p)
            a[i, width - len(p) :] = 1
        with torch.no_grad():
            out = fp32.generate(
                input_ids=x,
                attention_mask=a,
                do_sample=True,
                temperature=0.7,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_new_tokens,
                num_return_sequences=n,
                pad_token_id=tok.pad_token_id,
            )
        return count(out[:, width:].tolist())

    ways = {
        f"backend ({'bf16' if dtype == torch.bfloat16 else 'fp32'}, one batched call)": lambda k: (
            count(backend.generate(ids, [n] * len(ids), params, k))
        ),
        "plain model.generate (fp32, all prompts, num_return_sequences)": lambda k: plain(ids),
        "plain model.generate (fp32, one call per prompt)": lambda k: sum(plain([p]) for p in ids),
    }
    backend.generate(ids[:1], [2], params, 0)  # warm-up (first-call kernel set-up)
    print(
        f"{prompts} prompts x {n} samples, max {max_new_tokens} new tokens, T=0.7, "
        f"{torch.get_num_threads()} threads, best of {repeats}"
    )
    for name, fn in ways.items():
        best = 0.0
        for k in range(repeats):
            torch.manual_seed(k)
            t0 = time.perf_counter()
            toks = fn(k)
            best = max(best, toks / (time.perf_counter() - t0))
        print(f"  {name:<66} {best:8.1f} tokens/s")


if __name__ == "__main__":
    run_one_line(main.main)
