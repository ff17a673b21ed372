"""Serving: an OpenAI-style HTTP API over a loaded model, with continuous batching and an optional web page.

`llava-jax serve --model DIR` (`llava_jax.cli.serve`) builds the app of
`llava_jax.serve.app.create_app` around an `Engine` (`batching`), which owns
the model on one thread and admits requests (`jobs`) into free rows of the
running decode (`llava_jax.infer.continuous`) between decode chunks.
"""
