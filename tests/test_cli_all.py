"""The ``captum-nave`` tool as a whole: every subcommand listed, help with examples,
exit codes, one-line user errors and ``--debug`` tracebacks, the console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import captum_nave.cli as cli

#: Every subcommand of the tool (issue 7), as typed on the command line.
COMMANDS = ("explain", "compare", "compare-registers", "concepts", "corloc", "report")

#: A user mistake per subcommand, detected before any model is loaded.
MISTAKES = {
    "explain": ["explain", "missing.png"],
    "compare": ["compare", "missing.png"],
    "compare-registers": ["compare-registers", "--model-a", "test_vit", "--model-b", "test_vit4", "missing.png"],
    "concepts": ["concepts", "missing.png"],
    "corloc": ["corloc", "--format", "folder", "--root", "/nonexistent-captum-nave-root"],
    "report": ["report", "missing.png"],
}


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_every_subcommand_is_registered(capsys):
    out = _help(["--help"], capsys)
    for cmd in COMMANDS:
        assert f"    {cmd}" in out, f"{cmd} missing from 'captum-nave --help'"
    for opt in ("--device", "--seed", "--debug"):
        assert opt in out
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_each_help_has_an_example(cmd, capsys):
    out = _help([cmd, "--help"], capsys)
    assert "Example:" in out
    examples = out.split("Example:", 1)[1].strip().splitlines()
    assert examples and examples[0].strip().startswith(f"captum-nave {cmd}")


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: captum-nave" in capsys.readouterr().out


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "--no-such-option"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", COMMANDS)
def test_user_mistake_is_one_line_and_debug_shows_the_traceback(cmd, capsys):
    assert cli.main(MISTAKES[cmd]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("captum-nave: error: "), err
    assert "Traceback" not in "\n".join(err)
    assert cli.main(["--debug", *MISTAKES[cmd]]) == 2
    debug = capsys.readouterr().err
    assert "Traceback (most recent call last)" in debug
    assert debug.strip().splitlines()[-1] == err[0]


def test_internal_errors_and_interrupts_have_their_own_exit_codes(monkeypatch, capsys):
    import captum_nave.report as report

    def boom(*a, **k):
        raise RuntimeError("internal failure\nsecond line")

    monkeypatch.setattr(report, "build_report", boom)
    assert cli.main(["report", "--methods", "nave"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["captum-nave: error: internal failure"]

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "build_report", interrupt)
    assert cli.main(["report", "--methods", "nave"]) == 130
    assert capsys.readouterr().err.strip() == "captum-nave: error: interrupted"


def test_console_script():
    script = Path(sys.executable).parent / "captum-nave"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-c", "import sys; from captum_nave.cli import main; sys.exit(main())"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ok = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120, env=env)
    assert ok.returncode == 0 and all(c in ok.stdout for c in COMMANDS)
    bad = subprocess.run(cmd + ["report", "missing.png"], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "captum-nave: error: image file 'missing.png' does not exist"


_MINIMAL_ARGS = {
    "explain": [], "compare": [], "concepts": [], "report": [], "corloc": ["--merge", "nowhere"],
    "compare-registers": ["img.png", "--model-a", "a", "--model-b", "b"],
}


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("device, message", [
    ("bogus", "--device: expected a torch device such as cpu or cuda:0, got 'bogus'"),
    ("cuda:0", "--device: 'cuda:0' requested but CUDA is not available on this machine"),
])
def test_a_bad_device_is_a_one_line_user_error_for_every_command(cmd, device, message, capsys, tmp_path):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "img.png").write_bytes(b"")  # compare-registers checks that its IMAGE exists first
    args = [str(tmp_path / a) if a == "img.png" else a for a in _MINIMAL_ARGS[cmd]]
    code = cli.main(["--device", device, cmd, *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"captum-nave: error: {message}"), err
    assert not (tmp_path / "o").exists()
