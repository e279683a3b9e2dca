"""Shared fixtures: a simulated world to drive allocators step by step."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import settings

from allocators.base import PromptStream, Step
from simulator.model import LearningModel, SimulatedSource
from simulator.scenarios import build_world, get_scenario

# CI replays the same examples every run (reproducible); locally hypothesis explores afresh.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


class SimHarness:
    """The contract's loop, one step at a time, on a scenario of the simulator."""

    def __init__(
        self,
        scenario: str = "dapo-math",
        seed: int = 0,
        budget: int = 512,
        prompts_per_step: int = 64,
    ):
        self.scenario = get_scenario(scenario)
        self.world = build_world(self.scenario, seed)
        self.model = LearningModel(self.scenario, self.world)
        self.source = SimulatedSource(self.model, np.random.default_rng([seed, 1]))
        self.stream = PromptStream(self.scenario.num_prompts, np.random.default_rng([seed, 2]))
        self.rng = np.random.default_rng([seed, 3])
        self.budget = budget
        self.prompts_per_step = prompts_per_step
        self.t = 0

    def start(self, allocator):
        allocator.reset(self.scenario.num_prompts, self.rng)
        return allocator

    def step(self, allocator, learn: bool = True):
        step = Step(self.t, self.stream, self.source, self.budget, self.prompts_per_step)
        result = allocator.step(step)
        if learn:
            self.model.learn(result)
        allocator.observe(result)
        self.t += 1
        return result


@pytest.fixture
def harness():
    return SimHarness


def tiny_llama(seed: int = 0):
    """A tiny random Llama (vocabulary 40, 2 layers): milliseconds per forward pass."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()
