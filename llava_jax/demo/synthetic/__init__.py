"""A deterministic synthetic visual-instruction task written in LLaVA's own data formats.

Images hold 1-4 big solid shapes (`SHAPES`) in distinct saturated colours
(`COLORS`) at distinct positions (`POSITIONS`) on a muted background (`scene`).
The text is a small closed language (`language`):

* stage 1 (`blip_laion_cc_sbu_558k.json` layout): a brief-description
  instruction with `<image>` before or after it, and a BLIP-style caption;
* stage 2 (`llava_v1_5_mix665k.json` layout): 1-3 rounds of colour, shape,
  count, position and existence questions, short answers (with LLaVA's
  `SHORT_ANSWER_SUFFIX`) or sentences, detailed descriptions, and text-only
  conversations (no `"image"` key);
* a held-out split in LLaVA's question-file layout, one short question per
  image, types balanced, scored by exact match beside each type's chance level
  (`evaluation`).

`write_synthetic_dataset` writes all three as JSON + image files (`dataset`),
so training reads them through the same pipeline as real data; the matching
tokenizer ships in the package (`synthetic_tokenizer`).
"""

from llava_jax.demo.synthetic.dataset import (
    caption_sample,
    eval_item,
    instruct_sample,
    synthetic_dataset_is_current,
    synthetic_dataset_paths,
    write_synthetic_dataset,
)
from llava_jax.demo.synthetic.evaluation import (
    CHANCE,
    chance_levels,
    load_eval_items,
    normalize_answer,
    score_synthetic,
)
from llava_jax.demo.synthetic.language import (
    CAPTION_INSTRUCTIONS,
    DESCRIPTION_STYLES,
    DETAIL_INSTRUCTIONS,
    POSITION_PHRASES,
    QUESTION_TYPES,
    SHORT_ANSWER_SUFFIX,
    caption,
    describe,
    make_question,
    text_only_round,
)
from llava_jax.demo.synthetic.scene import (
    BACKGROUNDS,
    COLORS,
    MAX_SHAPES,
    POSITIONS,
    SHAPES,
    Scene,
    Shape,
    random_scene,
    render_scene,
    sample_rng,
    sample_scene,
)
from llava_jax.demo.synthetic.tokenizer import (
    IMAGE_TOKEN,
    PAD_TOKEN,
    build_synthetic_tokenizer,
    synthetic_tokenizer,
    synthetic_tokenizer_path,
    tokenizer_corpus,
)

__all__ = [
    "BACKGROUNDS",
    "CAPTION_INSTRUCTIONS",
    "CHANCE",
    "COLORS",
    "DESCRIPTION_STYLES",
    "DETAIL_INSTRUCTIONS",
    "IMAGE_TOKEN",
    "MAX_SHAPES",
    "PAD_TOKEN",
    "POSITIONS",
    "POSITION_PHRASES",
    "QUESTION_TYPES",
    "SHAPES",
    "SHORT_ANSWER_SUFFIX",
    "Scene",
    "Shape",
    "build_synthetic_tokenizer",
    "caption",
    "caption_sample",
    "chance_levels",
    "describe",
    "eval_item",
    "instruct_sample",
    "load_eval_items",
    "make_question",
    "normalize_answer",
    "random_scene",
    "render_scene",
    "sample_rng",
    "sample_scene",
    "score_synthetic",
    "synthetic_dataset_is_current",
    "synthetic_dataset_paths",
    "synthetic_tokenizer",
    "synthetic_tokenizer_path",
    "text_only_round",
    "tokenizer_corpus",
    "write_synthetic_dataset",
]
