"""Fine-tuning a BERT checkpoint for a task: sequence classification (a label per note or
sentence) or token classification (labelled character spans), from a labelled table.

* :mod:`.data` (pure Python + numpy): the split by group (patient), label names, BIO tags
  aligned with the fast tokenizer's offsets, model inputs (the predict stage's windows),
  data fingerprints;
* :mod:`.train` (torch): one training process (DDP over gloo/NCCL under TorchDistributor),
  early stopping on the validation loss, the best weights saved as safetensors;
* :mod:`.evaluate`: validation and test metrics of the saved checkpoint through
  :class:`~clinicalbert_spark.encode.Predictor` (what ``jobs/predict.py`` runs), and the
  model card;
* :mod:`.spark`: the labelled table (and spans table) read through Spark.

``jobs/finetune.py`` is the command line; docs/training.md describes it.
"""
