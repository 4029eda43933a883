"""Partial FC: a distributed face-recognition trainer (MXNet symbolic backbones + Horovod)."""
from setuptools import find_packages, setup

setup(
    name="partial-fc",
    version="0.1.0",
    description="Partial FC: sharded, sampled softmax for face recognition at millions of identities",
    python_requires=">=3.11,<3.12",
    # The trainer's package lives in src/; the networks are a sibling top-level package.
    package_dir={"": "src", "symbols": "symbols"},
    packages=find_packages("src") + ["symbols"],
    # Runtime dependencies are pinned and installed by scripts/install.sh (mxnet flavour depends on CUDA).
    install_requires=[],
    entry_points={"console_scripts": ["partial-fc = partial_fc.cli:main"]},
)
