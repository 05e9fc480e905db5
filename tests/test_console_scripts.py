"""The python -m faceignite.X commands are installed as console scripts (pyproject.toml)."""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import faceignite.commands as commands
import zygote

ROOT = Path(__file__).resolve().parents[1]


def test_every_console_script_points_at_a_command():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(commands.COMMANDS) | {"faceignite-config"} == set(scripts)
    for name, target in scripts.items():
        module, function = target.split(":")
        assert module == "faceignite.commands", name
        assert getattr(commands, function).__name__ == function, name  # bound to its own command


def test_a_console_script_exits_0_with_a_result_and_2_on_bad_input(tmp_path):
    """main() returns a value to Python callers; the script turns it into exit 0."""
    code = ("import sys; from faceignite import commands; sys.argv = ['faceignite-make-pairs', "
            "*sys.argv[1:]]; sys.exit(commands.make_pairs())")
    bad = zygote.run([sys.executable, "-c", code, str(tmp_path / "missing"),
                      str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "missing" in bad.stderr
    ok = zygote.run([sys.executable, "-c", "import sys; from faceignite import commands; "
                     "sys.exit(commands.config())"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "--center_loss_weight" in ok.stdout
