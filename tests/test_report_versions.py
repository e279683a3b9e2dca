"""Rows of the same method from different code are different arms of a report, labelled with
their code version (a default that changed must not be pooled with the rows before it)."""

from __future__ import annotations

import pandas as pd

from bench.report import label_arms


def test_rows_of_different_code_versions_are_different_arms():
    rows = pd.DataFrame(
        {
            "mode": "simulate",
            "scenario": "dapo-math",
            "model": "simulator",
            "method": ["ada-est", "ada-est", "uniform", "uniform"],
            "method_name": ["ada-est", "ada-est", "uniform", "uniform"],
            "budget": 2048,
            "prompts_per_step": 256,
            "steps": 1000,
            "frozen": False,
            "seed": [0, 0, 0, 0],
            "code_version": ["0.1.0+aaa", "0.1.0+bbb", "0.1.0+aaa", "0.1.0+bbb"],
        }
    )
    for column, value in (("budget_unit", "rollouts"), ("compute_budget", 0)):
        rows[column] = value  # settings a newer schema may carry
    arms = label_arms(rows)["arm"].tolist()
    assert arms == [
        "ada-est (code_version=0.1.0+aaa)",
        "ada-est (code_version=0.1.0+bbb)",
        "uniform (code_version=0.1.0+aaa)",
        "uniform (code_version=0.1.0+bbb)",
    ]
    same = label_arms(rows[rows["code_version"] == "0.1.0+aaa"])["arm"].tolist()
    assert same == ["ada-est", "uniform"]
