"""ldmcli: the conditional image tasks of Latent Diffusion Models, from the command line and from Python.

    import ldmcli
    model, record = ldmcli.load()                       # the embedded txt2img default (or a path, a registry name)
    images = ldmcli.txt2img(model, "a red circle", seeds=[0, 1],
                            settings=ldmcli.SamplerSettings(sampler="dpmpp_2m", steps=20))

The names below are imported on first use, so `import ldmcli` (and `ldm --help`) does not import torch.
"""
from ldmcli.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "load": "ldmcli.loading",
    "SamplerSettings": "ldmcli.sampling.settings",
    "txt2img": "ldmcli.tasks.txt2img",
    "img2img": "ldmcli.tasks.img2img",
    "inpaint": "ldmcli.tasks.inpaint",
    "superres": "ldmcli.tasks.superres",
    "layout2img": "ldmcli.tasks.layout2img",
    "semantic2img": "ldmcli.tasks.semantic2img",
    "sample": "ldmcli.tasks.sample",
    "TASKS": "ldmcli.tasks",
}

__all__ = ["__version__", *_LAZY]

__getattr__ = lazy_exports(__name__, _LAZY)
