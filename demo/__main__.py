"""`python -m demo` (what `make demo` runs): the whole story; see demo/story.py."""

import argparse
import sys
from pathlib import Path

from rich.console import Console

from demo.story import DemoConfig, print_report, run_demo
from services.common.errors import TuneplexError
from services.common.settings import default_home


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    ap.add_argument("--home", type=Path, default=None, help="data directory (TUNEPLEX_HOME)")
    ap.add_argument("--steps", type=int, default=DemoConfig.max_steps, help="training steps")
    args = ap.parse_args(argv)
    console = Console()
    cfg = DemoConfig(home=args.home or default_home(), max_steps=args.steps)
    try:
        result = run_demo(cfg, Console(stderr=True))
    except TuneplexError as exc:
        console.print(f"[bold red]demo failed:[/] {exc.message}", highlight=False)
        return 1
    print_report(cfg, result, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
