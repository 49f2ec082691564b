"""vlmtrain: fine-tune vision-language models on exactly the tokens they sample."""

__version__ = "0.1.0"
