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
