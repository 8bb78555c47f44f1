"""greet: prints a greeting; the pytool image installs it with pip, without a network."""
import os
import sys


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("GREET_DEFAULT", "world")
    print(f"hello, {name}")
