"""`ldm train`: train the small embedded default models from scratch with ldmcli's own code.

Stage 1 (`autoencoder_stage`): a KL-f4 autoencoder on the data, then (recipes that have the stage) its decoder
fine-tuned with the encoder frozen. Stage 2 (`ldm_stage`): one latent diffusion model
per task on the frozen autoencoder — txt2img, inpaint, superres, layout2img, semantic2img (`recipes`). Data: the
procedural shapes world or a folder of captioned images (`data`). One loop for all stages (`loop`: AdamW, EMA,
clipping, AMP, resumable checkpoints, JSONL log, torchrun/DDP); `export` writes the fp16 defaults that
`ldmcli.loading.checkpoint.load_model` reads; `run.train` ties it together and `cli.train_command` is the subcommand.
Importing this package imports no torch: the submodules do.
"""
