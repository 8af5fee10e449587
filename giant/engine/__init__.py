"""Engine layer: DeepSpeed build, precision policy, schedules, checkpoints, step loop, metrics.

Knows nothing about videos; stages hand it a model, batches and a step function.
"""
