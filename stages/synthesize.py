"""Stage synthesize: the built-in synthetic dataset in data/synthetic (Severstal layout)."""

from pathlib import Path

from steeldefect.errors import run
from steeldefect.params import load_params
from steeldefect.synthetic import write_dataset


def main() -> None:
    p = load_params()
    write_dataset(p.synthesize, p.seed, Path("data/synthetic"))


if __name__ == "__main__":
    run(main)
