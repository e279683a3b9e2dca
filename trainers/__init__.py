"""GRPO on a real language model (bench train): generation backends, tasks, policy update."""
