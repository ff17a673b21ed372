"""LLaVA data: CLIP preprocessing, conversation templates, exact-label encoding, grain pipeline.

Light to import: preprocessing, templates and encoding need neither JAX nor
grain; the pipeline and sources load on first use.

    from llava_jax.data import preprocess_image, generation_prompt, encode_example
    from llava_jax.data import DataConfig, create_loader, open_source
"""

from __future__ import annotations

import importlib

from llava_jax.data.conversation import (
    IMAGE_TOKEN,
    TEMPLATES,
    Template,
    generation_prompt,
    get_template,
    move_image_to_front,
    render,
    training_segments,
)
from llava_jax.data.encode import (
    IGNORE_INDEX,
    DataError,
    encode_example,
    tokenizer_image_token,
)
from llava_jax.data.image import (
    CLIP_MEAN,
    CLIP_STD,
    PAD_COLOR,
    expand_to_square,
    load_image,
    preprocess_image,
    preprocess_images,
)

_LAZY = {
    "DataConfig": "llava_jax.data.pipeline",
    "Loader": "llava_jax.data.pipeline",
    "build_dataset": "llava_jax.data.pipeline",
    "create_loader": "llava_jax.data.pipeline",
    "make_global_batch": "llava_jax.data.pipeline",
    "batch_stats": "llava_jax.data.pipeline",
    "estimate_rows": "llava_jax.data.pipeline",
    "stage1_config": "llava_jax.data.pipeline",
    "stage2_config": "llava_jax.data.pipeline",
    "JsonSource": "llava_jax.data.sources",
    "ArrayRecordSource": "llava_jax.data.sources",
    "open_source": "llava_jax.data.sources",
}

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IGNORE_INDEX",
    "IMAGE_TOKEN",
    "PAD_COLOR",
    "TEMPLATES",
    "ArrayRecordSource",
    "DataConfig",
    "DataError",
    "JsonSource",
    "Loader",
    "Template",
    "batch_stats",
    "build_dataset",
    "create_loader",
    "encode_example",
    "estimate_rows",
    "expand_to_square",
    "generation_prompt",
    "get_template",
    "load_image",
    "make_global_batch",
    "move_image_to_front",
    "open_source",
    "preprocess_image",
    "preprocess_images",
    "render",
    "stage1_config",
    "stage2_config",
    "tokenizer_image_token",
    "training_segments",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
