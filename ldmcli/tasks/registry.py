"""Every subcommand's batch adapter, registered with the batch runner (imported lazily by ldmcli.cli.runner)."""
from __future__ import annotations

from ldmcli.cli.runner import register


@register("inpaint", required=("image", "mask"))
def _inpaint(model, job, seeds, settings, callback):
    from ldmcli.tasks.inpaint import run_job
    return run_job(model, job, seeds, settings, callback)


@register("superres", required=("image",))
def _superres(model, job, seeds, settings, callback):
    from ldmcli.tasks.superres import run_job
    return run_job(model, job, seeds, settings, callback)


@register("layout2img")
def _layout2img(model, job, seeds, settings, callback):
    from ldmcli.tasks.layout2img import run_job
    return run_job(model, job, seeds, settings, callback)


@register("semantic2img", required=("segmap",))
def _semantic2img(model, job, seeds, settings, callback):
    from ldmcli.tasks.semantic2img import run_job
    return run_job(model, job, seeds, settings, callback)
