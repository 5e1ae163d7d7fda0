"""The smallest valid specs of each kind, shared by the spec tests (which add or break one thing)."""

HEAD = "apiVersion: gpujob/v1\n"
TRAIN = HEAD + """\
kind: train
data:
  train:
    - dataset: google/fleurs
      config: el_gr
training:
  max_steps: 100
"""
COMMAND = HEAD + "kind: command\ncommand: [echo, hi]\n"
