"""Every `giant` command answers --help (the guide's promise) and user errors are one line."""
from __future__ import annotations

import pytest

from giant import cli


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_unknown_command_and_user_error_exit_2(tmp_path, capsys):
    assert cli.main(["nonsense"]) == 2
    assert cli.main(["reshard", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"giant reshard: error: {tmp_path}: no complete checkpoint to convert" in err


def test_argparse_mistakes_are_one_line(capsys):
    """argparse's own errors follow the contract too: one line naming the option, no usage dump."""
    for argv, named in ((["flops", "vit_b", "--frames", "abc"], "giant flops: error: argument --frames: "),
                        (["pipeline", "plan", "x.yaml", "--nproc", "0"], "giant pipeline plan: error: argument --nproc: "),
                        (["data", "bench", "m.csv", "--bogus"], "giant data: error: unrecognized arguments: --bogus")):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(named) and err.count("\n") == 1 and "usage:" not in err, err


def test_a_missing_launcher_binary_is_named(monkeypatch, tmp_path):
    """Checked before the pipeline file is read: nothing is planned or written."""
    from giant.errors import ConfigError
    from giant.commands import pipeline
    from giant.stages import pipeline_run

    monkeypatch.setattr(pipeline_run.shutil, "which", lambda name: None)
    monkeypatch.setattr(pipeline_run.sys, "executable", str(tmp_path / "python"))
    for launcher in ("srun", "deepspeed"):
        with pytest.raises(ConfigError, match=f"--launcher {launcher}: {launcher} is not on PATH"):
            pipeline.main(["run", str(tmp_path / "absent.yaml"), "--launcher", launcher])
    pipeline_run.check_launcher("torchrun")  # this interpreter: always there
    assert list(tmp_path.iterdir()) == []


def test_a_message_of_several_lines_is_printed_as_one(capsys):
    from giant.console import fail

    assert fail("giant pipeline", "stage 'a': changed\n  revert it, or add --force a\n") == 2
    assert capsys.readouterr().err == "giant pipeline: error: stage 'a': changed; revert it, or add --force a\n"
