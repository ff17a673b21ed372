"""Training: the step, optimizer, loss, checkpoints, metrics and the loop behind `llava-jax train`."""
