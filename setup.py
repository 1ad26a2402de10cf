"""Ships the top-level recipes/ and datasets/ inside the wheel, as archdiff/_bundled/recipes and .../datasets.

The folders stay where they are and stay non-importable (a `datasets` package would shadow HF `datasets`);
package_dir maps them in, which pyproject.toml cannot combine with package discovery. Each subfolder is
listed as a data-only package so setuptools ships its files without warning. The rest is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

BUNDLED = {"archdiff._bundled.recipes": "recipes", "archdiff._bundled.datasets": "datasets"}
DATA_PACKAGES = [
    f"{package}{sub}" for package, folder in BUNDLED.items() for sub in ["", *(f".{p}" for p in find_namespace_packages(folder))]
]

setup(
    packages=[*find_namespace_packages(include=["archdiff*"]), *DATA_PACKAGES],  # namespace: archdiff/train has no __init__.py
    package_dir=BUNDLED,
    package_data={**{package: ["*"] for package in DATA_PACKAGES}, "archdiff.serve": ["static/*"]},  # the studio page
)
