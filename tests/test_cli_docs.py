"""Every CLI command is documented in the README (a user reads it before --help)."""

import argparse
from pathlib import Path

from tinygen.cli.main import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def command_names(parser: argparse.ArgumentParser, prefix: str = "tinygen") -> list[str]:
    names = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}"
                nested = command_names(sub, full)
                names.extend(nested or [full])
    return names


def test_every_command_appears_in_the_readme():
    commands = command_names(build_parser())
    assert len(commands) >= 10
    missing = [c for c in commands if c not in README]
    assert not missing, f"commands without a README entry: {missing}"


def test_importing_tinygen_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, tinygen, tinygen.cli.main as m; m.build_parser(); "
        "heavy = [x for x in ('transformers', 'diffusers', 'peft', 'bitsandbytes', "
        "'matplotlib') if x in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
