"""`python -m dlset_jax.evolution_kernel`: builds the CPU kernel now, prints where."""

import sys

from dlset_jax import evolution_kernel


def main() -> int:
    try:
        path = evolution_kernel.build(verbose="-v" in sys.argv)
    except evolution_kernel.KernelUnavailable as e:
        print(
            f"evolution kernel not built: {e}\n"
            "levelset.evolve will use its XLA version on CPU (same results, slower)."
        )
        return 0 if "--strict" not in sys.argv else 1
    print(f"evolution kernel: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
