"""--help says what the user will get: the embedded model's own defaults (as loaded), and the families'."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ldmcli.cli.app import app
from ldmcli.tasks import TASK_NAMES


@pytest.mark.parametrize("task", TASK_NAMES)
def test_help_shows_the_embedded_models_actual_defaults(task):
    from ldmcli.loading import load
    from ldmcli.loading.registry import embedded_defaults
    if embedded_defaults(task) is None:
        pytest.skip("no embedded default")
    model, _ = load(None, task=task, device="cpu")
    cfg = model.cfg
    text = " ".join(CliRunner().invoke(app, [task, "--help"]).stdout.split())
    n = cfg.default_steps_unprompted
    schedule = cfg.default_schedule_unprompted or cfg.default_schedule
    unprompted = f" ({n} {schedule + ' ' if schedule else ''}step{'s' * (n > 1)} without a prompt)" if n else ""
    steps = f"{cfg.default_steps} {cfg.default_schedule + ' ' if cfg.default_schedule else ''}" \
            f"step{'s' * (cfg.default_steps != 1)}"
    assert f"the embedded {task} model, {steps}{unprompted}, guidance {cfg.default_guidance:g}" in text
    assert f"{cfg.image_size}x{cfg.image_size} px" in text and "With --ckpt" in text


def test_help_names_the_superres_views_and_detail_the_embedded_model_uses():
    from ldmcli.cli.options import ENSEMBLE_SIDE
    from ldmcli.loading import load
    from ldmcli.loading.registry import embedded_defaults
    from ldmcli.tasks.superres import ENSEMBLE_PIXELS
    assert ENSEMBLE_SIDE ** 2 == ENSEMBLE_PIXELS
    if embedded_defaults("superres") is None:
        pytest.skip("no embedded default")
    cfg = load(None, task="superres", device="cpu")[0].cfg
    text = " ".join(CliRunner().invoke(app, ["superres", "--help"]).stdout.split())
    views = f"the mean of {cfg.default_ensemble} views" in text
    assert views == (cfg.default_ensemble > 1)
    assert (f"detail {cfg.default_detail:g}," in text) == (cfg.default_match_input and cfg.default_detail != 1)
