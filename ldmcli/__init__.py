"""ldmcli: the conditional image tasks of Latent Diffusion Models, from the command line and from Python."""
__version__ = "0.1.0"
