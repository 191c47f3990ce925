"""Stage synthesize: the built-in synthetic dataset in data/synthetic (Severstal layout)."""

from steeldefect.data.synthetic import write_dataset
from steeldefect.errors import paths, run
from steeldefect.params import load_params


def main() -> None:
    a, p = paths("out"), load_params()
    write_dataset(p.synthesize, p.seed, a.out)


if __name__ == "__main__":
    run(main)
