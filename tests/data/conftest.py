"""Shared fixtures of the data tests: one tokenizer and one small dataset per session."""

import pytest

from tests.data import helpers


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    return helpers.write_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """(json_path, image_root) of 40 stage-2 examples, a quarter text-only."""
    return helpers.write_dataset(str(tmp_path_factory.mktemp("dataset")), n=40)
