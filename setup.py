"""Packaging for llava_jax: LLaVA-1.5 in JAX/Flax."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "transformers>=5.24,<5.25",
    "safetensors>=0.8",  # safe_open(backend="pread")
    "sentencepiece",
    "tokenizers",
    "pillow",
    "numpy",
    "ml_collections",
    "tqdm",
    "tensorboardX",
]

EXTRAS = {
    "test": [
        "pytest",
        "pytest-xdist",
        "ruff",
        "tensorboard",
        "tensorflow-datasets==4.9.10",
        "importlib_resources",
        "torch==2.13.0",
        "nbclient",
        "nbformat",
        "ipykernel",
        "scikit-learn",
        "matplotlib",
        "openpyxl",
        "fastapi",
        "uvicorn",
        "httpx",
        "playwright",
    ],
    "eval": ["openpyxl"],  # the MMBench upload file (.xlsx)
    "serve": ["fastapi", "uvicorn"],
    "tfds": ["tensorflow-datasets==4.9.10", "importlib_resources"],
}

setup(
    name="llava_jax",
    version="0.1.0",
    description="LLaVA-1.5 (Improved Baselines with Visual Instruction Tuning) in JAX/Flax",
    packages=find_packages(include=["llava_jax", "llava_jax.*"]),
    package_data={"llava_jax.demo": ["assets/*/*"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["llava-jax=llava_jax.cli:main"]},
)
