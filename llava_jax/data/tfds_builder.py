"""A tensorflow-datasets builder for LLaVA JSON data (optional `tfds` extra; TensorFlow not needed).

`manual_dir` holds the JSON file and the images (paths in the JSON are relative
to it, or to `image_subdir`). Built as ArrayRecord, it is read back with
`tfds.data_source(...)` (or `tfds_source` below) and feeds the same pipeline
as the JSON and packed sources: each record keeps the conversation (JSON text)
and the encoded image bytes. Records are written in the JSON's order (no TFDS
shuffling) so the stored grouping lengths stay aligned.

    builder = LlavaJson(config="mix665k", data_dir=DATA_DIR, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=LLAVA_DIR))
    source = tfds_source(DATA_DIR, config="mix665k")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from llava_jax.data.paths import ImageFileError, read_image_file
from llava_jax.data.sources import JsonSource, MappedSource, word_length

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LlavaJsonConfig(tfds.core.BuilderConfig):
    """Which JSON inside `manual_dir`, and the image folder relative to it."""

    json_name: str = "data.json"
    image_subdir: str = ""


class LlavaJson(tfds.core.GeneratorBasedBuilder):
    """LLaVA-format conversations with their encoded images."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "Conversations as JSON text, images as encoded bytes."}
    BUILDER_CONFIGS: ClassVar[list] = [
        LlavaJsonConfig(
            name="mix665k",
            json_name="llava_v1_5_mix665k.json",
            description="LLaVA-1.5 stage-2 instruction mix",
        ),
        LlavaJsonConfig(
            name="lcs558k",
            json_name="blip_laion_cc_sbu_558k.json",
            description="LLaVA-1.5 stage-1 captions (LCS-558K)",
        ),
        LlavaJsonConfig(name="custom", json_name="data.json", description="manual_dir/data.json"),
    ]
    DEFAULT_CONFIG_NAME = "custom"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the LLaVA JSON file named by the config (e.g. llava_v1_5_mix665k.json) and its "
        "image folders (coco/, gqa/, ocr_vqa/, textvqa/, vg/) in manual_dir."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly: `dataset_info_from_configs` wants package files next to the module.
        return tfds.core.DatasetInfo(
            builder=self,
            description="LLaVA conversations and images (llava_jax).",
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "conversations": tfds.features.Text(),
                    "image": tfds.features.Tensor(shape=(), dtype=np.object_),
                    "image_path": tfds.features.Text(),
                    "has_image": tfds.features.Scalar(dtype=np.bool_),
                }
            ),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        json_path = os.path.join(root, self.builder_config.json_name)
        image_root = os.path.join(root, self.builder_config.image_subdir)
        return {"train": self._generate_examples(json_path, image_root)}

    def _generate_examples(self, json_path: str, image_root: str):
        source = JsonSource(json_path, image_root)
        lengths, skipped = [], []
        for index in range(len(source)):
            example = source[index]
            if example.get("_error"):
                log.warning("tfds: skipping %s: %s", example.get("id"), example["_error"])
                skipped.append([str(example.get("id")), example.get("_reason", "malformed")])
                continue
            image_path = example.get("image")
            image = b""
            if image_path is not None:
                try:
                    image = read_image_file(image_path)  # regular files only, size-capped (data/paths.py)
                except ImageFileError as e:
                    log.warning("tfds: skipping %s: %s", example.get("id"), e)
                    skipped.append([str(example.get("id")), e.reason])
                    continue
            lengths.append(word_length(example))
            yield (
                index,
                {
                    "id": str(example.get("id")),
                    "conversations": json.dumps(example.get("conversations"), ensure_ascii=False),
                    "image": image,
                    "image_path": os.path.relpath(image_path, image_root) if image_path else "",
                    "has_image": image_path is not None,
                },
            )
        self.info.metadata["modality_lengths"] = lengths
        self.info.metadata["skipped"] = skipped


def decode_record(record: dict, index: int = -1) -> dict:
    """A TFDS record -> raw LLaVA example (`image` = encoded bytes or None)."""
    text = record["conversations"]
    try:
        conversations = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return {"id": f"#{index}", "_error": str(e), "_reason": "malformed"}
    sample_id = record["id"]
    return {
        "id": sample_id.decode("utf-8") if isinstance(sample_id, bytes) else str(sample_id),
        "conversations": conversations,
        "image": bytes(record["image"]) if bool(record["has_image"]) else None,
    }


def tfds_source(data_dir: str, *, config: str = "custom", split: str = "train") -> MappedSource:
    """The prepared dataset as a pipeline source (random access through `tfds.data_source`)."""
    source = tfds.data_source(f"llava_json/{config}", data_dir=data_dir, split=split)
    builder = tfds.builder(f"llava_json/{config}", data_dir=data_dir)
    lengths = None
    if split == "train" and builder.info.metadata:
        # Stored per record of the whole split; a sub-split is recomputed on demand.
        lengths = builder.info.metadata.get("modality_lengths")
    return MappedSource(
        source,
        decode_record,
        None if lengths is None else np.asarray(lengths, np.int32),
    )
