"""`python -m ldmcli.train [options]`: the `ldm train` command on its own (e.g. under torchrun)."""
import typer

from ldmcli.train.cli import train_command

if __name__ == "__main__":
    typer.run(train_command)
