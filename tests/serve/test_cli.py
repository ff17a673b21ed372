"""`llava-jax serve` refuses what cannot serve with exit status 2 and a reason, before opening a port."""

from llava_jax.cli import main


def test_unusable_model_or_options_exit_2(tmp_path, model_dir, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "cannot load model" in capsys.readouterr().err
    assert main(["serve", "--model", model_dir, "--allow-local-images", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["serve", "--model", model_dir, "--max-batch", "0"]) == 2
    assert "--max-batch" in capsys.readouterr().err


def test_demo_examples_are_the_demo_tasks(model):
    from llava_jax.cli.serve import demo_examples, uses_demo_tokenizer

    assert uses_demo_tokenizer(model)  # the test model speaks the synthetic task's vocabulary
    examples = demo_examples(56)
    assert len(examples) == 5 and all(e["image"].startswith("data:image/png;base64,") for e in examples)
    assert all(e["question"].endswith("Answer the question using a single word or phrase.") for e in examples)
