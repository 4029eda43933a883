"""Partial FC: a distributed face-recognition trainer (MXNet symbolic backbones + Horovod)."""
import os

from setuptools import Extension, find_packages, setup


def row_update_extension() -> Extension:
    """The native sampled-row update (src/partial_fc/head/native/row_update.cc), an MXNet operator library.

    It compiles against the lib_api of the mxnet installed in the build environment (scripts/install.sh
    installs the project with --no-build-isolation, after mxnet): the library must match that MXNet."""
    try:
        import mxnet
    except ImportError as e:
        raise SystemExit("setup.py: mxnet must be installed before this project (run scripts/install.sh); "
                         f"the native row update compiles against its lib_api ({e})")
    root = os.path.dirname(mxnet.__file__)
    lib_api = os.path.join(root, "src", "lib_api.cc")
    if not os.path.exists(lib_api):
        raise SystemExit(f"setup.py: {lib_api} is missing; this mxnet build ships no custom-operator API")
    return Extension(
        "partial_fc.head.native._row_update",
        sources=["src/partial_fc/head/native/row_update.cc", "src/partial_fc/head/native/kernels.cc", lib_api],
        include_dirs=[os.path.join(root, "include")],
        language="c++",
        # No FMA contraction: the operator must round exactly as MXNet's own sgd_mom_update.
        extra_compile_args=["-std=c++17", "-O3", "-fopenmp", "-ffp-contract=off"],
        # -Bsymbolic: the library's calls into its own copy of lib_api must stay inside it. Horovod loads its
        # MXNet extension RTLD_GLOBAL, which makes libmxnet's lib_api symbols global; without this flag the
        # operator registered itself into libmxnet's tables instead of its own and crashed MXNet on load.
        extra_link_args=["-fopenmp", "-Wl,-Bsymbolic"],
    )


setup(
    name="partial-fc",
    version="0.1.0",
    description="Partial FC: sharded, sampled softmax for face recognition at millions of identities",
    python_requires=">=3.11,<3.12",
    # The trainer's package lives in src/; the networks are a sibling top-level package.
    package_dir={"": "src", "symbols": "symbols"},
    packages=find_packages("src") + ["symbols"],
    ext_modules=[row_update_extension()],
    # Runtime dependencies are pinned and installed by scripts/install.sh (mxnet flavour depends on CUDA).
    install_requires=[],
    entry_points={"console_scripts": ["partial-fc = partial_fc.cli:main"]},
)
